//! The admin listener (`server.admin_listen`): liveness and readiness for orchestrators,
//! Prometheus metrics, and the operator's `/v1` API behind `server.admin_token` and closed
//! to web pages ([`browser`]):
//!
//! - [`subscriptions`]: where each subscription stands on this replica; pause and resume.
//! - [`manage`]: subscriptions made, replaced and deleted through the API.
//! - [`auth`] and [`principal`]: who asks: the operator, or a tenant that sees only its
//!   own subscriptions.
//! - [`operations`]: dead letters, redrive and replay (see `crate::operations`).
//!
//! Everything under `/v1` answers JSON, and problem+json (RFC 9457) when it refuses.

mod auth;
mod browser;
mod manage;
mod operations;
mod principal;
mod state;
mod subscriptions;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::problem::Problem;
use state::not_found;

pub use state::{AdminState, ConfigVersion};

/// A readiness probe that waits longer than this reports the broker as not ready.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router(state: Arc<AdminState>) -> Router {
    let v1 = Router::new()
        .route("/openapi.json", get(openapi))
        .route("/config", get(config))
        .route("/subscriptions", get(subscriptions::list))
        .route(
            "/subscriptions/{name}",
            get(subscriptions::show)
                .put(manage::put)
                .delete(manage::delete),
        )
        .route("/subscriptions/{name}/pause", post(subscriptions::pause))
        .route("/subscriptions/{name}/resume", post(subscriptions::resume))
        .route("/subscriptions/{name}/replay", post(operations::replay))
        .route("/dead-letters/{name}", get(operations::list_dead_letters))
        .route("/attempts/{name}", get(operations::list_attempts))
        .route("/dead-letters/{name}/redrive", post(operations::redrive))
        .route(
            "/dead-letters/{name}/{id}",
            get(operations::show_dead_letter),
        )
        .route("/operations", get(operations::list_operations))
        .route(
            "/operations/{id}",
            get(operations::show_operation).delete(operations::cancel_operation),
        )
        .fallback(|| async { not_found("no such admin route".into()) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        // Outermost: a browser's request is refused before its token is looked at.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            browser::refuse_browsers,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/v1", v1)
        .with_state(state)
}

/// The API's OpenAPI document, `docs/openapi.json`.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// `GET /v1/openapi.json`.
async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// `GET /v1/config`: the running config, secrets redacted, with its hash and load time;
/// the operator's only.
async fn config(
    State(state): State<Arc<AdminState>>,
    axum::Extension(principal): axum::Extension<principal::Principal>,
) -> Response {
    match principal.operator_only() {
        Ok(()) => axum::Json(state.live().shown()).into_response(),
        Err(problem) => problem.into_response(),
    }
}

async fn metrics() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        crate::metrics::encode(),
    )
        .into_response()
}

/// Ready when the broker accepts writes; a load balancer then sends webhooks here.
async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let not_ready = |detail: String| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
            detail,
        )
        .into_response()
    };
    match tokio::time::timeout(READINESS_TIMEOUT, state.broker.publisher.check()).await {
        Ok(Ok(())) => "ready\n".into_response(),
        Ok(Err(e)) => not_ready(e.to_string()),
        Err(_) => not_ready(format!(
            "the broker did not answer within {READINESS_TIMEOUT:?}"
        )),
    }
}
