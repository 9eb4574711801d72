//! CEL over an event, as filters and transforms run it: whatever the expression and the
//! body (a sender controls the body), compiling and evaluating give a value or an error,
//! never a panic.
//!
//! Input: the expression, a newline, the body.
#![no_main]

use hookbridge::expression::{Expression, Variables};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let Ok(source) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let body = data.get(split + 1..).unwrap_or_default();
    let Ok(expression) = Expression::compile(source) else {
        return;
    };
    let event = Variables {
        r#type: "invoice.paid",
        key: Some("customer-1"),
        source: "billing",
        id: "id-1",
        time: "2026-12-05T09:00:00.000Z".into(),
        headers: vec![("x-tenant", "acme")],
        body,
    };
    let _ = expression.matches(&event);
    let _ = expression.to_json(&event);
});
