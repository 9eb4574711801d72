//! The request a subscriber receives, per `payload` mode:
//! - `raw`: the original body and content-type, with `hookbridge-event-type`,
//!   `hookbridge-source` and the original headers named in `forward_headers`;
//! - `envelope_json`: the whole envelope in the proto3 JSON mapping;
//! - `cloudevents`: CloudEvents 1.0 HTTP binary mode (`ce-*` headers, original body).

use std::time::UNIX_EPOCH;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use bytestring::ByteString;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use super::event::Event;
use super::runtime::Settings;
use crate::config::PayloadMode;
use crate::envelope::Envelope;
use crate::expression::ExpressionError;
use crate::rfc3339::rfc3339;

/// Body and headers of a delivery, the same for every attempt (the signature, timestamp and
/// attempt number are added per attempt).
pub struct Payload {
    pub headers: HeaderMap,
    pub body: Bytes,
}

const HOOKBRIDGE_EVENT_TYPE: HeaderName = HeaderName::from_static("hookbridge-event-type");
const HOOKBRIDGE_SOURCE: HeaderName = HeaderName::from_static("hookbridge-source");
const CE_SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");
const CE_ID: HeaderName = HeaderName::from_static("ce-id");
const CE_SOURCE: HeaderName = HeaderName::from_static("ce-source");
const CE_TYPE: HeaderName = HeaderName::from_static("ce-type");
const CE_TIME: HeaderName = HeaderName::from_static("ce-time");
const CE_SUBJECT: HeaderName = HeaderName::from_static("ce-subject");

/// A header value sharing `text`'s bytes (for an envelope, the record's buffer) instead of
/// copying them; none unless it is visible ASCII, as `HeaderValue::from_str` requires.
pub fn shared_value(text: &ByteString) -> Option<HeaderValue> {
    let visible = text
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
    visible
        .then(|| HeaderValue::from_maybe_shared(text.as_bytes().clone()).ok())
        .flatten()
}

/// The payload of `event` by the subscription's settings: its payload mode, then its
/// transform, whose value (as JSON) replaces the body. An error when the transform fails on
/// the event: retrying cannot help. The event is decoded further first if these settings
/// need more of its envelope than it was read with (a reload while it waited).
pub fn of(settings: &Settings, event: &mut Event) -> Result<Payload, ExpressionError> {
    event.decode_for(settings.decode);
    let mut payload = build(settings.payload, event, &settings.forward_headers);
    if let Some(transform) = &settings.transform {
        let json = transform.to_json(&event.variables())?;
        payload.body = Bytes::from(serde_json::to_vec(&json).expect("JSON serializes"));
        payload
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    Ok(payload)
}

pub fn build(mode: PayloadMode, event: &Event, forward_headers: &[HeaderName]) -> Payload {
    let mut headers = HeaderMap::with_capacity(8 + forward_headers.len());
    let mut put = |name: HeaderName, value: Option<HeaderValue>| {
        if let Some(value) = value {
            headers.insert(name, value);
        }
    };
    let text = |value: &str| HeaderValue::from_str(value).ok();
    let body = match mode {
        PayloadMode::Raw => {
            put(CONTENT_TYPE, shared_value(&event.content_type));
            if !event.event_type.is_empty() {
                put(HOOKBRIDGE_EVENT_TYPE, shared_value(&event.event_type));
            }
            put(HOOKBRIDGE_SOURCE, shared_value(&event.source));
            for name in forward_headers {
                for value in original_header_values(event, name) {
                    if let Ok(value) = HeaderValue::from_bytes(&value) {
                        headers.append(name.clone(), value);
                    }
                }
            }
            event.body.clone()
        }
        PayloadMode::EnvelopeJson => {
            put(
                CONTENT_TYPE,
                Some(HeaderValue::from_static("application/json")),
            );
            let json = match &event.envelope {
                Some(envelope) => envelope_json(envelope),
                None => foreign_envelope_json(event),
            };
            Bytes::from(serde_json::to_vec(&json).expect("JSON serializes"))
        }
        PayloadMode::Cloudevents => {
            put(CONTENT_TYPE, shared_value(&event.content_type));
            put(CE_SPECVERSION, Some(HeaderValue::from_static("1.0")));
            put(CE_ID, shared_value(&event.id));
            put(CE_SOURCE, text(&format!("/hookbridge/{}", event.source)));
            put(
                CE_TYPE,
                if event.event_type.is_empty() {
                    Some(HeaderValue::from_static("hookbridge.webhook"))
                } else {
                    shared_value(&event.event_type)
                },
            );
            put(CE_TIME, text(&rfc3339(event.received_at)));
            if let Some(key) = event.key() {
                put(CE_SUBJECT, text(&String::from_utf8_lossy(key)));
            }
            event.body.clone()
        }
    };
    Payload { headers, body }
}

/// Values of an original request header (envelope) or record header (foreign record).
fn original_header_values(event: &Event, name: &HeaderName) -> Vec<Vec<u8>> {
    match &event.envelope {
        Some(envelope) => envelope
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name.as_str()))
            .map(|h| {
                if h.raw_value.is_empty() {
                    h.value.clone().into_bytes()
                } else {
                    h.raw_value.to_vec()
                }
            })
            .collect(),
        None => event
            .record
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name.as_str()))
            .map(|h| h.value.to_vec())
            .collect(),
    }
}

/// The proto3 JSON mapping of an envelope (lowerCamelCase names, default values left out,
/// bytes as base64, the timestamp as RFC 3339), written out for this one message rather
/// than generated, to keep a JSON code generator out of the build.
pub fn envelope_json(envelope: &Envelope) -> Value {
    let mut out = Map::new();
    let mut text = |name: &str, value: &str| {
        if !value.is_empty() {
            out.insert(name.into(), Value::String(value.into()));
        }
    };
    text("id", &envelope.id);
    text("source", &envelope.source);
    text("type", &envelope.r#type);
    text("key", &envelope.key);
    text("method", &envelope.method);
    text("path", &envelope.path);
    text("query", &envelope.query);
    text("contentType", &envelope.content_type);
    text("idempotencyKey", &envelope.idempotency_key);
    text("traceparent", &envelope.traceparent);
    text("tracestate", &envelope.tracestate);
    text("remoteAddr", &envelope.remote_addr);
    if let Some(t) = &envelope.received_at {
        let time =
            UNIX_EPOCH + std::time::Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
        out.insert("receivedAt".into(), Value::String(rfc3339(time)));
    }
    if !envelope.headers.is_empty() {
        let headers = envelope
            .headers
            .iter()
            .map(|h| {
                let mut header = Map::new();
                header.insert("name".into(), Value::String(h.name.clone()));
                if !h.value.is_empty() {
                    header.insert("value".into(), Value::String(h.value.clone()));
                }
                if !h.raw_value.is_empty() {
                    header.insert(
                        "rawValue".into(),
                        Value::String(STANDARD.encode(&h.raw_value)),
                    );
                }
                Value::Object(header)
            })
            .collect();
        out.insert("headers".into(), Value::Array(headers));
    }
    if !envelope.body.is_empty() {
        out.insert(
            "body".into(),
            Value::String(STANDARD.encode(&envelope.body)),
        );
    }
    if !envelope.attributes.is_empty() {
        let mut attributes: Vec<_> = envelope.attributes.iter().collect();
        attributes.sort();
        out.insert(
            "attributes".into(),
            Value::Object(
                attributes
                    .into_iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        );
    }
    Value::Object(out)
}

/// A foreign record in the envelope's shape: its headers become attributes.
fn foreign_envelope_json(event: &Event) -> Value {
    let attributes: Map<String, Value> = event
        .record
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                Value::String(String::from_utf8_lossy(&h.value).into_owned()),
            )
        })
        .collect();
    json!({
        "id": event.id,
        "source": event.source,
        "type": event.event_type,
        "key": event.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
        "receivedAt": rfc3339(event.received_at),
        "contentType": event.content_type,
        "body": STANDARD.encode(&event.body),
        "attributes": attributes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_json_uses_proto3_names_and_omits_defaults() {
        let envelope = Envelope {
            id: "e1".into(),
            source: "github".into(),
            content_type: "application/json".into(),
            body: Bytes::from_static(b"{}"),
            received_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 5_000_000,
            }),
            ..Default::default()
        };
        let json = envelope_json(&envelope);
        assert_eq!(
            json,
            json!({"id": "e1", "source": "github", "contentType": "application/json", "body": "e30=", "receivedAt": "1970-01-01T00:00:00.005Z"})
        );
    }
}
