//! The ingress's request path, route to publish: any route, headers and body through
//! verification and extraction get an answer below 500 (a refusal is a 4xx), never a panic.
//! The broker is a stand-in that takes every record.
//!
//! Input: one byte choosing the route, header lines (`name:value`), a blank line, the body
//! (fuzz/seeds.py writes signed requests for each route in this form).
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use hookbridge::broker::{BrokerError, Publisher, Receipt, Record};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const ROUTES: [&str; 8] = [
    "github", "stripe", "slack", "standard", "shopify", "internal", "demo", "nowhere",
];

const CONFIG: &str = r#"
routes:
  - name: github
    topic: t
    verify: { kind: github, secret: gh-secret }
    event_type: { header: X-GitHub-Event }
    key: { json: /repository/full_name }
    idempotency: { header: X-GitHub-Delivery, required: true }
  - name: stripe
    topic: t
    verify: { kind: stripe, secret: whsec_stripe_test, tolerance: 5m }
    event_type: { json: /type }
    key: { json: /data/object/customer }
    idempotency: { json: /id }
  - name: slack
    topic: t
    verify: { kind: slack, secret: slack-signing-secret }
    event_type: { json: /event/type }
  - name: standard
    topic: t
    verify: { kind: standard_webhooks, secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, tolerance: 100000d }
    idempotency: { header: webhook-id }
  - name: shopify
    topic: t
    verify: { kind: hmac_sha256, secret: shpss_secret, header: X-Shopify-Hmac-Sha256, encoding: base64 }
    key: { header: X-Shopify-Shop-Domain }
  - name: internal
    topic: t
    verify: { kind: token, header: X-Api-Key, value: tok-123 }
  - name: demo
    topic: t
    verify: { kind: none }
    event_type: { header: X-Event-Type, default: demo }
    key: { json: /key }
    idempotency: { header: Idempotency-Key }
"#;

/// Takes every record at once.
struct Taken;

#[async_trait::async_trait]
impl Publisher for Taken {
    async fn ensure_topics(&self, _: &[String]) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn publish(&self, _: Record) -> Result<Receipt, BrokerError> {
        Ok(Receipt {
            partition: 0,
            offset: 0,
        })
    }
    async fn check(&self) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn close(&self) {}
}

struct Bed {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

fn bed() -> &'static Bed {
    static BED: OnceLock<Bed> = OnceLock::new();
    BED.get_or_init(|| {
        let config = hookbridge::config::load_str("fuzz.yaml", CONFIG, &|_| None)
            .expect("the fuzzed config loads");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let router =
            runtime.block_on(async { hookbridge::Ingress::new(&config, Arc::new(Taken)).router() });
        Bed { runtime, router }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&route, rest)) = data.split_first() else {
        return;
    };
    // Header lines, a blank line, then the body.
    let split = rest
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(rest.len());
    let (head, body) = (&rest[..split], rest.get(split + 2..).unwrap_or_default());
    let mut request = http::Request::post(format!(
        "/hooks/{}",
        ROUTES[usize::from(route) % ROUTES.len()]
    ));
    for line in head.split(|&b| b == b'\n') {
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name),
                http::HeaderValue::from_bytes(value),
            ) {
                request = request.header(name, value);
            }
        }
    }
    // What the listener adds to every request it serves.
    let peer = std::net::SocketAddr::from(([203, 0, 113, 7], 40_000));
    request = request.extension(axum::extract::ConnectInfo(peer));
    let Ok(request) = request.body(Body::from(body.to_vec())) else {
        return;
    };
    let bed = bed();
    let response = bed
        .runtime
        .block_on(bed.router.clone().oneshot(request))
        .expect("infallible");
    assert!(
        response.status().as_u16() < 500,
        "answered {}",
        response.status()
    );
});
