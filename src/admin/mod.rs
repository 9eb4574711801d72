//! The admin listener (`server.admin_listen`): liveness and readiness for orchestrators,
//! Prometheus metrics, and the operator's `/v1` API behind `server.admin_token`:
//!
//! - [`subscriptions`]: where each subscription stands on this replica; pause and resume.
//! - [`operations`]: dead letters, redrive and replay (see `crate::operations`).
//!
//! Everything under `/v1` answers JSON, and problem+json (RFC 9457) when it refuses.

mod auth;
mod operations;
mod subscriptions;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::config::{Config, SubscriptionConfig};
use crate::delivery::{Delivery, SubscriptionRuntime};
use crate::ingress::problem::Problem;

/// A readiness probe that waits longer than this reports the broker as not ready.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// What the admin routes work with.
pub struct AdminState {
    /// The subscriptions this replica delivers; `None` with `--role ingress`.
    delivery: Option<Arc<Delivery>>,
    /// What a config reload changes.
    live: RwLock<Arc<Live>>,
    /// The broker as the operations read and write it.
    broker: crate::operations::Broker,
    operations: crate::operations::Operations,
}

/// The admin side of the running config.
struct Live {
    /// SHA-256 of `server.admin_token`; `None` when no token is set.
    token_digest: Option<[u8; 32]>,
    /// Every subscription the config names, by name.
    configs: BTreeMap<String, SubscriptionConfig>,
    /// `GET /v1/config`.
    shown: serde_json::Value,
}

/// The running config as `GET /v1/config` shows it.
#[derive(Debug, Clone)]
pub struct ConfigVersion {
    /// Where it was read from.
    pub source: String,
    /// SHA-256 of the file's text, hex.
    pub hash: String,
    pub loaded_at: String,
}

impl AdminState {
    pub fn new(
        config: &Config,
        version: &ConfigVersion,
        broker: crate::operations::Broker,
        delivery: Option<Arc<Delivery>>,
    ) -> AdminState {
        AdminState {
            delivery,
            live: RwLock::new(Arc::new(Live::new(config, version))),
            broker,
            operations: Default::default(),
        }
    }

    /// Takes a reloaded config: its token, subscriptions and version.
    pub fn reload(&self, config: &Config, version: &ConfigVersion) {
        *self.live.write().expect("live lock") = Arc::new(Live::new(config, version));
    }

    fn live(&self) -> Arc<Live> {
        self.live.read().expect("live lock").clone()
    }

    fn token_digest(&self) -> Option<[u8; 32]> {
        self.live().token_digest
    }

    /// The configured subscription `name`.
    fn configured(&self, name: &str) -> Option<SubscriptionConfig> {
        self.live().configs.get(name).cloned()
    }

    /// The running subscriptions.
    async fn running(&self) -> Vec<Arc<SubscriptionRuntime>> {
        match &self.delivery {
            Some(delivery) => delivery.subscriptions().await,
            None => Vec::new(),
        }
    }

    /// The running subscription `name`, or the problem to answer.
    async fn subscription(&self, name: &str) -> Result<Arc<SubscriptionRuntime>, Box<Problem>> {
        if let Some(delivery) = &self.delivery
            && let Some(sub) = delivery.subscription(name).await
        {
            return Ok(sub);
        }
        if self.configured(name).is_some() {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "not-delivered-here",
                "Not delivered by this process",
                format!(
                    "subscription `{name}` is configured, but this process does not deliver (--role ingress); ask a delivery replica"
                ),
            )
            .into());
        }
        Err(not_found(format!("no subscription is named `{name}`")).into())
    }
}

impl Live {
    fn new(config: &Config, version: &ConfigVersion) -> Live {
        let token = config.server.admin_token.expose();
        Live {
            token_digest: (!token.is_empty()).then(|| auth::digest(token)),
            configs: config
                .subscriptions
                .iter()
                .map(|s| (s.name.clone(), s.clone()))
                .collect(),
            shown: serde_json::json!({
                "source": version.source,
                "hash": version.hash,
                "loaded_at": version.loaded_at,
                // Secrets serialize as `<redacted>`, URLs without their passwords.
                "config": config,
            }),
        }
    }
}

fn not_found(detail: String) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
}

pub fn router(state: Arc<AdminState>) -> Router {
    let v1 = Router::new()
        .route("/config", get(config))
        .route("/subscriptions", get(subscriptions::list))
        .route("/subscriptions/{name}", get(subscriptions::show))
        .route("/subscriptions/{name}/pause", post(subscriptions::pause))
        .route("/subscriptions/{name}/resume", post(subscriptions::resume))
        .route("/subscriptions/{name}/replay", post(operations::replay))
        .route("/dead-letters/{name}", get(operations::list_dead_letters))
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
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/v1", v1)
        .with_state(state)
}

/// `GET /v1/config`: the running config, secrets redacted, with its hash and load time.
async fn config(State(state): State<Arc<AdminState>>) -> Response {
    axum::Json(state.live().shown.clone()).into_response()
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
