//! One delivery attempt: sign, POST, classify the answer.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytestring::ByteString;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::client::{Answer, SendError};
use super::payload::{Payload, shared_value};
use super::retry::parse_retry_after;
use super::runtime::{Settings, SubscriptionRuntime};
use crate::{metrics, standard_webhooks, tracecontext};
use tracing::Instrument;

/// What an attempt says about the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// 2xx: delivered.
    Delivered { status: u16 },
    /// Any other answer, a timeout or a connection error: the endpoint is failing; try
    /// again later.
    Retry {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
    /// An answer of `retry.dead_letter_on`: the receiver refuses this event, and retrying
    /// cannot help.
    Permanent { status: u16, error: String },
}

/// Headers an attempt adds to its payload's (id, timestamp, signature, traceparent, attempt
/// number): the attempt's map is made with room for them and for the client's, so that
/// adding them does not grow it.
const ATTEMPT_HEADERS: usize = 5;

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const HOOKBRIDGE_ATTEMPT: HeaderName = HeaderName::from_static("hookbridge-attempt");

pub async fn attempt(
    sub: &SubscriptionRuntime,
    settings: &Settings,
    id: &ByteString,
    traceparent: &ByteString,
    payload: &Payload,
    attempt: u32,
) -> AttemptResult {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    // A new map rather than a clone of the payload's: a clone has no room for what the
    // attempt adds. The payload's values share their bytes, so copying them over is cheap.
    let mut headers = HeaderMap::with_capacity(
        payload.headers.len() + ATTEMPT_HEADERS + settings.client.added_headers(),
    );
    for (name, value) in &payload.headers {
        headers.append(name.clone(), value.clone());
    }
    if let Some(id) = shared_value(id) {
        headers.insert(WEBHOOK_ID, id);
    }
    headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
    if !settings.secrets.is_empty() {
        let signature =
            standard_webhooks::signature_header(&settings.secrets, id, timestamp, &payload.body);
        if let Ok(signature) = HeaderValue::from_str(&signature) {
            headers.insert(WEBHOOK_SIGNATURE, signature);
        }
    }
    // The attempt's CLIENT span; its context is what the subscriber receives when traces
    // are exported, else the event's own trace context goes on unchanged.
    let span = tracing::info_span!(
        "attempt",
        otel.name = "POST",
        otel.kind = "client",
        http.request.method = "POST",
        hookbridge.attempt = attempt,
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    let traceparent = match tracecontext::traceparent_of(&span) {
        Some(exported) => HeaderValue::from_str(&exported).ok(),
        None if traceparent.is_empty() => None,
        None => shared_value(traceparent),
    };
    if let Some(traceparent) = traceparent {
        headers.insert(TRACEPARENT, traceparent);
    }
    headers.insert(HOOKBRIDGE_ATTEMPT, HeaderValue::from(attempt));
    let m = &sub.metrics;
    m.in_flight.inc();
    let started = Instant::now();
    let sent = settings
        .client
        .post(headers, payload.body.clone())
        .instrument(span.clone())
        .await;
    match &sent {
        Ok(answer) => span.record("http.response.status_code", answer.status.as_u16()),
        Err(SendError::Timeout(_)) => span.record("error.type", "timeout"),
        Err(SendError::Failed(_)) => span.record("error.type", "connect_error"),
        Err(SendError::EgressDenied(_)) => span.record("error.type", "egress_denied"),
    };
    m.in_flight.dec();
    m.attempt_duration
        .observe(metrics::seconds(started.elapsed()));
    let (result, outcome) = match sent {
        Ok(Answer {
            status,
            retry_after,
        }) => {
            let result = classify(
                status,
                retry_after
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after),
                |code| settings.retry.refuses_the_event(code),
            );
            let outcome = match result {
                AttemptResult::Delivered { .. } => &m.attempts_delivered,
                AttemptResult::Retry { .. } => &m.attempts_retry,
                AttemptResult::Permanent { .. } => &m.attempts_failed,
            };
            (result, outcome)
        }
        Err(e) => {
            let outcome = match e {
                SendError::Timeout(_) => &m.attempts_timeout,
                SendError::Failed(_) => &m.attempts_connect_error,
                SendError::EgressDenied(_) => &m.attempts_egress_denied,
            };
            let result = AttemptResult::Retry {
                status: None,
                error: e.to_string(),
                retry_after: None,
            };
            (result, outcome)
        }
    };
    outcome.inc();
    result
}

/// `refuses_the_event`: whether a status is one of `retry.dead_letter_on`.
fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    refuses_the_event: impl Fn(u16) -> bool,
) -> AttemptResult {
    let code = status.as_u16();
    if status.is_success() {
        return AttemptResult::Delivered { status: code };
    }
    let error = format!("HTTP {status}");
    if refuses_the_event(code) {
        return AttemptResult::Permanent {
            status: code,
            error,
        };
    }
    AttemptResult::Retry {
        status: Some(code),
        error,
        // Only 429 and 503 carry a meaningful Retry-After for a webhook sender.
        retry_after: if matches!(code, 429 | 503) {
            retry_after
        } else {
            None
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryConfig;

    fn classified(code: u16, retry_after: Option<Duration>) -> AttemptResult {
        let defaults = RetryConfig::default();
        classify(StatusCode::from_u16(code).unwrap(), retry_after, |code| {
            defaults.dead_letter_on.iter().any(|m| m.matches(code))
        })
    }

    #[test]
    fn statuses_by_the_default_policy() {
        assert!(matches!(
            classified(204, None),
            AttemptResult::Delivered { status: 204 }
        ));
        // The endpoint failing, misrouted or refusing whoever calls: retried.
        for code in [301, 401, 403, 404, 408, 410, 425, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classified(code, None), AttemptResult::Retry { .. }),
                "{code}"
            );
        }
        // The event refused: dead-lettered at once.
        for code in [400, 413, 415, 422] {
            assert!(
                matches!(classified(code, None), AttemptResult::Permanent { .. }),
                "{code}"
            );
        }
        let after = Some(Duration::from_secs(3));
        assert!(matches!(
            classified(429, after),
            AttemptResult::Retry {
                retry_after: Some(_),
                ..
            }
        ));
        assert!(matches!(
            classified(500, after),
            AttemptResult::Retry {
                retry_after: None,
                ..
            }
        ));
    }
}
