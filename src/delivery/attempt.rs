//! One delivery attempt: sign, POST, classify the answer.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use http::header::{HeaderName, HeaderValue};

use super::client::{Answer, SendError};
use super::payload::Payload;
use super::retry::parse_retry_after;
use super::subscription::{Settings, SubscriptionRuntime};
use crate::{metrics, standard_webhooks, tracecontext};
use tracing::Instrument;

/// What an attempt says about the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// 2xx: delivered.
    Delivered { status: u16 },
    /// 408, 425, 429, 5xx, a timeout or a connection error: try again later.
    Retry {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
    /// Any other answer: retrying cannot help.
    Permanent { status: u16, error: String },
}

pub async fn attempt(
    sub: &SubscriptionRuntime,
    settings: &Settings,
    id: &str,
    traceparent: &str,
    payload: &Payload,
    attempt: u32,
) -> AttemptResult {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut headers = payload.headers.clone();
    let mut put = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    put("webhook-id", id);
    put("webhook-timestamp", &timestamp.to_string());
    if !settings.secrets.is_empty() {
        put(
            "webhook-signature",
            &standard_webhooks::signature_header(&settings.secrets, id, timestamp, &payload.body),
        );
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
    let traceparent =
        tracecontext::traceparent_of(&span).unwrap_or_else(|| traceparent.to_string());
    if !traceparent.is_empty() {
        put("traceparent", &traceparent);
    }
    put("hookbridge-attempt", &attempt.to_string());
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

fn classify(status: StatusCode, retry_after: Option<Duration>) -> AttemptResult {
    let code = status.as_u16();
    if status.is_success() {
        return AttemptResult::Delivered { status: code };
    }
    let error = format!("HTTP {status}");
    match code {
        408 | 425 | 429 | 500..=599 => AttemptResult::Retry {
            status: Some(code),
            error,
            // Only 429 and 503 carry a meaningful Retry-After for a webhook sender.
            retry_after: if matches!(code, 429 | 503) {
                retry_after
            } else {
                None
            },
        },
        _ => AttemptResult::Permanent {
            status: code,
            error,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert!(matches!(
            classify(StatusCode::NO_CONTENT, None),
            AttemptResult::Delivered { status: 204 }
        ));
        for code in [408, 425, 429, 500, 502, 503, 504] {
            assert!(
                matches!(
                    classify(StatusCode::from_u16(code).unwrap(), None),
                    AttemptResult::Retry { .. }
                ),
                "{code}"
            );
        }
        for code in [301, 400, 401, 404, 410, 422] {
            assert!(
                matches!(
                    classify(StatusCode::from_u16(code).unwrap(), None),
                    AttemptResult::Permanent { .. }
                ),
                "{code}"
            );
        }
        let after = Some(Duration::from_secs(3));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, after),
            AttemptResult::Retry {
                retry_after: Some(_),
                ..
            }
        ));
        assert!(matches!(
            classify(StatusCode::INTERNAL_SERVER_ERROR, after),
            AttemptResult::Retry {
                retry_after: None,
                ..
            }
        ));
    }
}
