//! What the admin routes work with: the running subscriptions, the broker, the operations,
//! and the part of the config a reload changes (the token, the subscriptions, the version).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use axum::http::StatusCode;
use sha2::{Digest, Sha256};

use crate::config::{Config, SubscriptionConfig};
use crate::delivery::{Delivery, SubscriptionRuntime};
use crate::problem::Problem;

/// What the admin routes work with.
pub struct AdminState {
    /// The subscriptions this replica delivers; `None` with `--role ingress`.
    delivery: Option<Arc<Delivery>>,
    /// What a config reload changes.
    live: RwLock<Arc<Live>>,
    /// The broker as the operations read and write it.
    pub(super) broker: crate::broker::Broker,
    pub(super) operations: crate::operations::Operations,
}

/// The admin side of the running config.
pub(super) struct Live {
    /// SHA-256 of `server.admin_token`; `None` when no token is set.
    token_digest: Option<[u8; 32]>,
    /// Every subscription the config names, by name.
    configs: BTreeMap<String, SubscriptionConfig>,
    /// `GET /v1/config`.
    pub(super) shown: serde_json::Value,
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
        broker: crate::broker::Broker,
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

    pub(super) fn live(&self) -> Arc<Live> {
        self.live.read().expect("live lock").clone()
    }

    pub(super) fn token_digest(&self) -> Option<[u8; 32]> {
        self.live().token_digest
    }

    /// The configured subscription `name`.
    pub(super) fn configured(&self, name: &str) -> Option<SubscriptionConfig> {
        self.live().configs.get(name).cloned()
    }

    /// The running subscriptions.
    pub(super) async fn running(&self) -> Vec<Arc<SubscriptionRuntime>> {
        match &self.delivery {
            Some(delivery) => delivery.subscriptions().await,
            None => Vec::new(),
        }
    }

    /// The running subscription `name`, or the problem to answer.
    pub(super) async fn subscription(
        &self,
        name: &str,
    ) -> Result<Arc<SubscriptionRuntime>, Box<Problem>> {
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
            token_digest: (!token.is_empty()).then(|| digest(token)),
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

pub(super) fn not_found(detail: String) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
}

/// SHA-256 of a token: tokens are compared as digests (see `auth`).
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}
