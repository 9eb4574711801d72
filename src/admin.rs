//! The admin listener (`server.admin_listen`): liveness and readiness for orchestrators,
//! and Prometheus metrics.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::broker::Publisher;
use crate::ingress::problem::Problem;

/// A readiness probe that waits longer than this reports the broker as not ready.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router(publisher: Arc<dyn Publisher>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(publisher)
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
async fn readyz(State(publisher): State<Arc<dyn Publisher>>) -> Response {
    let not_ready = |detail: String| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
            detail,
        )
        .into_response()
    };
    match tokio::time::timeout(READINESS_TIMEOUT, publisher.check()).await {
        Ok(Ok(())) => "ready\n".into_response(),
        Ok(Err(e)) => not_ready(e.to_string()),
        Err(_) => not_ready(format!(
            "the broker did not answer within {READINESS_TIMEOUT:?}"
        )),
    }
}
