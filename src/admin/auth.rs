//! The bearer token of the `/v1` admin routes (`server.admin_token`).
//!
//! Compared in constant time, and as SHA-256 digests so that neither the bytes that match
//! nor the token's length shows in the time an answer takes. Without a token the routes
//! are open, which `serve` allows only on a loopback listener (see `config::validate`).

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::state::{AdminState, digest};
use crate::crypto::constant_time_eq;
use crate::problem::Problem;
use std::sync::Arc;

pub async fn require_token(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = state.token_digest() else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let detail = match presented {
        None => "this route needs `Authorization: Bearer <server.admin_token>`",
        Some(token) if constant_time_eq(&digest(token), &expected) => {
            return next.run(request).await;
        }
        Some(_) => "the bearer token is not server.admin_token",
    };
    let mut response = Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Unauthorized",
        detail,
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"hookbridge-admin\""),
    );
    response
}
