//! Extractors: the event type, partition key and idempotency key of a webhook, from a
//! header, a JSON pointer into the body, or a constant.

use axum::http::{HeaderMap, HeaderName, StatusCode};
use serde_json::Value;

use crate::config::{ExtractorConfig, IdempotencyConfig};
use crate::problem::Problem;

#[derive(Debug, Clone)]
enum Source {
    Header(HeaderName),
    Json(String),
    Value(String),
}

/// One compiled extractor; `what` names it in error messages ("event type", "key").
#[derive(Debug, Clone)]
pub struct Extractor {
    what: &'static str,
    source: Source,
    default: Option<String>,
    required: bool,
}

impl Extractor {
    pub fn from_config(what: &'static str, config: &ExtractorConfig) -> Extractor {
        let source = match (&config.header, &config.json, &config.value) {
            (Some(h), _, _) => {
                Source::Header(HeaderName::from_bytes(h.as_bytes()).expect("validated header"))
            }
            (_, Some(pointer), _) => Source::Json(pointer.clone()),
            (_, _, Some(value)) => Source::Value(value.clone()),
            _ => unreachable!("validated: exactly one source"),
        };
        Extractor {
            what,
            source,
            default: config.default.clone(),
            required: true,
        }
    }

    pub fn idempotency(config: &IdempotencyConfig) -> Extractor {
        let source = match (&config.header, &config.json) {
            (Some(h), _) => {
                Source::Header(HeaderName::from_bytes(h.as_bytes()).expect("validated header"))
            }
            (_, Some(pointer)) => Source::Json(pointer.clone()),
            _ => unreachable!("validated: exactly one source"),
        };
        Extractor {
            what: "idempotency key",
            source,
            default: None,
            required: config.required,
        }
    }

    /// The extracted value; `Ok(None)` when absent and not required.
    pub fn extract(
        &self,
        headers: &HeaderMap,
        body: &JsonBody<'_>,
    ) -> Result<Option<String>, Problem> {
        let found = match &self.source {
            Source::Value(v) => return Ok(Some(v.clone())),
            Source::Header(name) => match headers.get(name) {
                None => None,
                Some(v) => Some(
                    v.to_str()
                        .map_err(|_| {
                            Problem::bad_request(
                                "malformed-header",
                                format!("header {name} is not visible ASCII"),
                            )
                        })?
                        .to_string(),
                ),
            },
            Source::Json(pointer) => {
                let document = body.parsed()?;
                match document.pointer(pointer) {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => Some(v.to_string()),
                    Some(_) => {
                        return Err(Problem::unprocessable(
                            "extractor-not-scalar",
                            format!(
                                "the {} at JSON pointer {pointer} is an object or array, not a string or number",
                                self.what
                            ),
                        ));
                    }
                }
            }
        };
        match (found, &self.default) {
            // The value becomes a broker header (NATS headers cannot hold line breaks) and a
            // header of every delivery, so control characters are refused on every backend.
            (Some(v), _) if v.chars().any(char::is_control) => Err(Problem::unprocessable(
                "extractor-control-character",
                format!(
                    "the {} holds a control character (such as a line break), which cannot travel in a header",
                    self.what
                ),
            )),
            (Some(v), _) => Ok(Some(v)),
            (None, Some(default)) => Ok(Some(default.clone())),
            (None, None) if !self.required => Ok(None),
            (None, None) => Err(self.missing()),
        }
    }

    fn missing(&self) -> Problem {
        match &self.source {
            Source::Header(name) => {
                let kind = if self.what == "idempotency key" {
                    "missing-idempotency-key"
                } else {
                    "missing-header"
                };
                Problem::bad_request(kind, format!("the {} header {name} is missing", self.what))
            }
            Source::Json(pointer) => Problem::unprocessable(
                "extractor-missing",
                format!("the JSON body has no {} at pointer {pointer}", self.what),
            ),
            Source::Value(_) => unreachable!("constants are never missing"),
        }
    }
}

/// The request body, parsed as JSON at most once and only if an extractor asks.
pub struct JsonBody<'a> {
    bytes: &'a [u8],
    content_type: Option<&'a str>,
    parsed: std::cell::OnceCell<Result<Value, Problem>>,
}

impl<'a> JsonBody<'a> {
    pub fn new(bytes: &'a [u8], content_type: Option<&'a str>) -> Self {
        JsonBody {
            bytes,
            content_type,
            parsed: std::cell::OnceCell::new(),
        }
    }

    fn parsed(&self) -> Result<&Value, Problem> {
        self.parsed
            .get_or_init(|| {
                if let Some(ct) = self.content_type {
                    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
                    if !(essence == "application/json" || essence.ends_with("+json")) {
                        return Err(Problem::new(
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            "json-required",
                            "JSON body required",
                            format!("this route reads fields from a JSON body, but the content-type is {ct}"),
                        ));
                    }
                }
                serde_json::from_slice(self.bytes)
                    .map_err(|e| Problem::unprocessable("invalid-json", format!("the body is not valid JSON: {e}")))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::config::ExtractorConfig;

    fn extractor(json: Option<&str>, header: Option<&str>) -> Extractor {
        Extractor::from_config(
            "key",
            &ExtractorConfig {
                header: header.map(str::to_string),
                json: json.map(str::to_string),
                value: None,
                default: None,
            },
        )
    }

    proptest! {
        /// Any body, JSON or not, under any content type, through a JSON pointer: a value
        /// or a problem, never a panic; and no accepted value holds a control character.
        #[test]
        fn any_body_through_a_pointer(
            body in proptest::collection::vec(any::<u8>(), 0..256),
            content_type in proptest::option::of(".{0,30}"),
            pointer in "(/[a-z0-9~]{0,6}){1,3}",
        ) {
            let extractor = extractor(Some(&pointer), None);
            let json = JsonBody::new(&body, content_type.as_deref());
            if let Ok(Some(value)) = extractor.extract(&HeaderMap::new(), &json) {
                prop_assert!(!value.chars().any(char::is_control));
            }
        }

        /// JSON documents with arbitrary strings at the pointer, control characters
        /// included.
        #[test]
        fn any_string_at_the_pointer(text in "\\PC{0,20}[\\x00-\\x1f\\x7f]?\\PC{0,20}") {
            let body = serde_json::json!({ "k": text }).to_string();
            let extractor = extractor(Some("/k"), None);
            let json = JsonBody::new(body.as_bytes(), Some("application/json"));
            match extractor.extract(&HeaderMap::new(), &json) {
                Ok(Some(value)) => prop_assert_eq!(&value, &text),
                Ok(None) => prop_assert!(false, "a present value"),
                Err(problem) => prop_assert!(text.chars().any(char::is_control), "{problem:?}"),
            }
        }

        /// Any header value bytes.
        #[test]
        fn any_header_value(value in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut headers = HeaderMap::new();
            if let Ok(value) = http::HeaderValue::from_bytes(&value) {
                headers.insert("x-key", value);
            }
            let extractor = extractor(None, Some("X-Key"));
            let _ = extractor.extract(&headers, &JsonBody::new(b"", None));
        }
    }
}
