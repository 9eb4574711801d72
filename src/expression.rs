//! CEL expressions over an event (`filter.expression`, `transform.expression`): compiled
//! once when a config is loaded, so a mistake is refused at start naming its position, and
//! evaluated per event over the variables below.
//!
//! | variable | value |
//! | --- | --- |
//! | `type`, `source`, `id` | text (empty when the record has none) |
//! | `key` | the partition key as text, `null` when the event has none |
//! | `time` | when it was received, RFC 3339 text in UTC (`2026-12-05T09:00:00.123Z`): compares as text |
//! | `headers` | the original request's headers, lower-case names, repeated ones joined with `, ` |
//! | `body` | the body parsed as JSON, `null` when it is not JSON |
//!
//! The body is parsed, and the headers gathered, only for expressions that name them.

use std::collections::HashMap;
use std::sync::Arc;

use cel::{Context, Env, Program, Value};

/// The variables an expression may name.
const VARIABLES: [&str; 7] = ["type", "key", "source", "id", "time", "headers", "body"];

#[derive(Debug, thiserror::Error)]
pub enum ExpressionError {
    #[error("does not compile: {0}")]
    Syntax(String),
    #[error("names `{0}`, which is not one of type, key, source, id, time, headers, body")]
    UnknownVariable(String),
    #[error("failed on this event: {0}")]
    Evaluation(String),
    #[error("gave {0}, where a bool was wanted")]
    NotABool(String),
    #[error("gave a value that is not JSON: {0}")]
    NotJson(String),
}

/// A compiled expression.
pub struct Expression {
    program: Program,
    /// CEL's standard functions, made once: making them per event cost more than the
    /// rest of a delivery.
    functions: Arc<Env>,
    reads_body: bool,
    reads_headers: bool,
}

/// One event as an expression sees it.
pub struct Variables<'a> {
    pub r#type: &'a str,
    pub key: Option<&'a str>,
    pub source: &'a str,
    pub id: &'a str,
    pub time: String,
    /// Name and value of each header, in order.
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: &'a [u8],
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Expression")
    }
}

impl Expression {
    pub fn compile(source: &str) -> Result<Expression, ExpressionError> {
        let program = Program::compile(source).map_err(|errors| {
            let said: Vec<String> = errors
                .errors
                .iter()
                .map(|e| format!("line {}, column {}: {}", e.pos.0, e.pos.1 + 1, e.msg))
                .collect();
            ExpressionError::Syntax(said.join("; "))
        })?;
        let references = program.references();
        let names = references.variables();
        if let Some(unknown) = names.iter().find(|name| !VARIABLES.contains(name)) {
            return Err(ExpressionError::UnknownVariable(unknown.to_string()));
        }
        let (reads_body, reads_headers) = (names.contains(&"body"), names.contains(&"headers"));
        drop(references);
        Ok(Expression {
            functions: Arc::new(Env::stdlib()),
            reads_body,
            reads_headers,
            program,
        })
    }

    /// Whether it names `headers` (which only a whole envelope holds).
    pub fn reads_headers(&self) -> bool {
        self.reads_headers
    }

    /// The expression's value for one event.
    pub fn evaluate(&self, event: &Variables<'_>) -> Result<Value, ExpressionError> {
        let mut context = Context::with_env(self.functions.clone());
        context.add_variable_from_value("type", event.r#type);
        context.add_variable_from_value("source", event.source);
        context.add_variable_from_value("id", event.id);
        context.add_variable_from_value("time", event.time.as_str());
        context.add_variable_from_value("key", event.key.map_or(Value::Null, Value::from));
        if self.reads_headers {
            let mut headers: HashMap<String, String> = HashMap::new();
            for (name, value) in &event.headers {
                headers
                    .entry(name.to_ascii_lowercase())
                    .and_modify(|joined| {
                        joined.push_str(", ");
                        joined.push_str(value);
                    })
                    .or_insert_with(|| value.to_string());
            }
            context.add_variable_from_value("headers", headers);
        }
        if self.reads_body {
            let body = serde_json::from_slice::<serde_json::Value>(event.body)
                .map_or(Value::Null, from_json);
            context.add_variable_from_value("body", body);
        }
        self.program
            .execute(&context)
            .map_err(|e| ExpressionError::Evaluation(e.to_string()))
    }

    /// The expression's value for a filter.
    pub fn matches(&self, event: &Variables<'_>) -> Result<bool, ExpressionError> {
        match self.evaluate(event)? {
            Value::Bool(matched) => Ok(matched),
            other => Err(ExpressionError::NotABool(format!("{other:?}"))),
        }
    }

    /// The expression's value as JSON, for a transform.
    pub fn to_json(&self, event: &Variables<'_>) -> Result<serde_json::Value, ExpressionError> {
        let value = self.evaluate(event)?;
        value
            .json()
            .map_err(|e| ExpressionError::NotJson(e.to_string()))
    }
}

/// A JSON value as CEL's: whole numbers are `int` where they fit (as literals in an
/// expression are, so `body.amount * 100` needs no conversion), other numbers `double`.
fn from_json(json: serde_json::Value) -> Value {
    use serde_json::Value as Json;
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(int), _) => Value::Int(int),
            (None, Some(uint)) => Value::UInt(uint),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::from(s),
        Json::Array(items) => Value::from(items.into_iter().map(from_json).collect::<Vec<_>>()),
        Json::Object(fields) => Value::from(
            fields
                .into_iter()
                .map(|(name, value)| (name, from_json(value)))
                .collect::<HashMap<_, _>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(body: &[u8]) -> Variables<'_> {
        Variables {
            r#type: "invoice.paid",
            key: Some("customer-1"),
            source: "billing",
            id: "id-1",
            time: "2026-12-05T09:00:00Z".into(),
            headers: vec![("X-Tenant", "acme"), ("x-tenant", "beta")],
            body,
        }
    }

    #[test]
    fn a_filter_reads_the_events_fields_body_and_headers() {
        let filter = Expression::compile(
            r#"type.startsWith("invoice.") && body.amount > 100 && key == "customer-1""#,
        )
        .unwrap();
        assert!(filter.matches(&event(br#"{"amount": 150}"#)).unwrap());
        assert!(!filter.matches(&event(br#"{"amount": 50}"#)).unwrap());
        let headers = Expression::compile(r#"headers["x-tenant"] == "acme, beta""#).unwrap();
        assert!(headers.reads_headers());
        assert!(headers.matches(&event(b"")).unwrap());
        let time = Expression::compile(r#"time >= "2026-12-05T00:00:00Z""#).unwrap();
        assert!(time.matches(&event(b"")).unwrap());
    }

    #[test]
    fn a_body_that_is_not_json_is_null_and_a_missing_field_an_error() {
        let null = Expression::compile("body == null").unwrap();
        assert!(null.matches(&event(b"not json")).unwrap());
        let amount = Expression::compile("body.amount > 100").unwrap();
        assert!(matches!(
            amount.matches(&event(b"{}")),
            Err(ExpressionError::Evaluation(_))
        ));
        let guarded = Expression::compile("has(body.amount) && body.amount > 100").unwrap();
        assert!(!guarded.matches(&event(b"{}")).unwrap());
    }

    #[test]
    fn mistakes_are_refused_when_compiled_naming_where() {
        let said = Expression::compile("type ==").unwrap_err().to_string();
        assert!(said.contains("line 1, column"), "{said}");
        let said = Expression::compile("bdy.amount > 1")
            .unwrap_err()
            .to_string();
        assert!(said.contains("`bdy`"), "{said}");
        let not_bool = Expression::compile("body.amount").unwrap();
        assert!(matches!(
            not_bool.matches(&event(br#"{"amount": 1}"#)),
            Err(ExpressionError::NotABool(_))
        ));
    }

    #[test]
    fn a_transform_gives_json() {
        let transform =
            Expression::compile(r#"{"kind": type, "cents": body.amount * 100, "tags": ["a"]}"#)
                .unwrap();
        let json = transform.to_json(&event(br#"{"amount": 2}"#)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "invoice.paid", "cents": 200, "tags": ["a"]})
        );
    }
}
