//! Who a `/v1` request is from: the operator (`server.admin_token`) or a tenant
//! (`server.tenants[].token`), by its bearer token.
//!
//! Compared in constant time, and as SHA-256 digests so that neither the bytes that match
//! nor the token's length shows in the time an answer takes; every token is compared, so
//! the time does not tell which one matched either. Without an admin token the routes are
//! open to the operator, which `serve` allows only on a loopback listener and without
//! tenants (see `config::validate`).

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::principal::Principal;
use super::state::{AdminState, digest};
use crate::crypto::constant_time_eq;
use crate::problem::Problem;
use std::sync::Arc;

pub async fn require_token(
    State(state): State<Arc<AdminState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let live = state.live();
    let Some(expected) = state.token_digest() else {
        request.extensions_mut().insert(Principal::Operator);
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
        None => "this route needs `Authorization: Bearer <server.admin_token or a tenant's token>`",
        Some(token) => {
            let presented = digest(token);
            let mut principal = None;
            if constant_time_eq(&presented, &expected) {
                principal = Some(Principal::Operator);
            }
            for (tenant_digest, tenant) in &live.tenants {
                if constant_time_eq(&presented, tenant_digest) && principal.is_none() {
                    principal = Some(Principal::Tenant(tenant.clone()));
                }
            }
            match principal {
                Some(principal) => {
                    request.extensions_mut().insert(principal);
                    return next.run(request).await;
                }
                None => "the bearer token is neither server.admin_token nor a tenant's",
            }
        }
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
