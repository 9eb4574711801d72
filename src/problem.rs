//! RFC 9457 problem details: the body of every refusal, the ingress's and the admin API's.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// A rejection. `kind` is a stable slug that becomes the problem `type`
/// (`urn:hookbridge:problem:<kind>`), so clients and tests can match on it.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Each wrong part of a request: `{ "key": ..., "message": ... }`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<serde_json::Value>>,
    #[serde(skip)]
    retry_after: Option<u64>,
    #[serde(skip)]
    allow: Option<&'static str>,
    #[serde(skip)]
    close: bool,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        kind: &str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            type_uri: format!("urn:hookbridge:problem:{kind}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            instance: None,
            route: None,
            errors: None,
            retry_after: None,
            allow: None,
            close: false,
        }
    }

    pub fn at(mut self, instance: impl Into<String>, route: Option<&str>) -> Problem {
        self.instance = Some(instance.into());
        self.route = route.map(str::to_string);
        self
    }

    /// Each wrong part of a request, as the `errors` member.
    pub fn with_errors(mut self, errors: Vec<serde_json::Value>) -> Problem {
        self.errors = Some(errors);
        self
    }

    /// For 503s: when the sender should try again.
    pub fn retry_after(mut self, seconds: u64) -> Problem {
        self.retry_after = Some(seconds);
        self
    }

    /// For 405s: the methods the resource does accept.
    pub fn allow(mut self, methods: &'static str) -> Problem {
        self.allow = Some(methods);
        self
    }

    /// For rejections made before the request body was read: the connection cannot be
    /// reused (the unread body is still on it), so the client is told to close it instead
    /// of sending its next request into a connection the server is about to drop.
    pub fn closing(mut self) -> Problem {
        self.close = true;
        self
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-route",
            "Unknown route",
            detail,
        )
    }

    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "verification-failed",
            "Webhook verification failed",
            detail,
        )
    }

    pub fn bad_request(kind: &str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, kind, "Bad request", detail)
    }

    pub fn unprocessable(kind: &str, detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            kind,
            "Unprocessable webhook",
            detail,
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).expect("problem serializes");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(methods) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(methods));
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Boxed, as the error of a helper whose `Result` would otherwise be large.
impl IntoResponse for Box<Problem> {
    fn into_response(self) -> Response {
        (*self).into_response()
    }
}
