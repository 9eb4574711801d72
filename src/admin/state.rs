//! What the admin routes work with: the running subscriptions, the broker, the operations,
//! and the part of the config a reload changes (the token, the subscriptions, the version).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokio::sync::Notify;

use axum::http::StatusCode;
use sha2::{Digest, Sha256};

use super::principal::Principal;
use crate::config::{Config, Source, StoredSubscription, SubscriptionConfig, TenantConfig};
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
    /// Woken when this replica changed the stored subscriptions, for the reloader to read
    /// them at once.
    stored_changed: Arc<Notify>,
}

/// The admin side of the running config.
pub(super) struct Live {
    /// SHA-256 of `server.admin_token`; `None` when no token is set.
    token_digest: Option<[u8; 32]>,
    /// SHA-256 of each tenant's token, with its config.
    pub(super) tenants: Vec<([u8; 32], TenantConfig)>,
    /// What runs: the file's config with the stored subscriptions that can run.
    pub(super) running: Config,
    /// The subscriptions made through the API, by name, as last read from the store.
    pub(super) stored: BTreeMap<String, StoredSubscription>,
    /// Stored ones that do not run, and why.
    pub(super) left_out: BTreeMap<String, String>,
    pub(super) version: ConfigVersion,
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
        stored: &[StoredSubscription],
        left_out: Vec<(String, String)>,
        version: &ConfigVersion,
        broker: crate::broker::Broker,
        delivery: Option<Arc<Delivery>>,
    ) -> AdminState {
        AdminState {
            delivery,
            live: RwLock::new(Arc::new(Live::new(
                config,
                stored,
                left_out,
                version.clone(),
            ))),
            broker,
            operations: Default::default(),
            stored_changed: Arc::default(),
        }
    }

    /// Takes what now runs: its token, tenants, subscriptions, and the stored ones.
    pub fn reload(
        &self,
        config: &Config,
        stored: &[StoredSubscription],
        left_out: Vec<(String, String)>,
    ) {
        let mut live = self.live.write().expect("live lock");
        *live = Arc::new(Live::new(config, stored, left_out, live.version.clone()));
    }

    /// Takes the version of a reloaded file.
    pub fn reload_version(&self, version: &ConfigVersion) {
        let mut live = self.live.write().expect("live lock");
        let stored: Vec<StoredSubscription> = live.stored.values().cloned().collect();
        let left_out = live
            .left_out
            .iter()
            .map(|(n, w)| (n.clone(), w.clone()))
            .collect();
        *live = Arc::new(Live::new(&live.running, &stored, left_out, version.clone()));
    }

    /// What the reloader waits on besides its tick (see `stored_changed`).
    pub fn stored_changed(&self) -> Arc<Notify> {
        self.stored_changed.clone()
    }

    /// Asks the reloader to read the stored subscriptions now.
    pub(super) fn read_stored_now(&self) {
        self.stored_changed.notify_one();
    }

    pub(super) fn live(&self) -> Arc<Live> {
        self.live.read().expect("live lock").clone()
    }

    pub(super) fn token_digest(&self) -> Option<[u8; 32]> {
        self.live().token_digest
    }

    /// The configured subscription `name`.
    pub(super) fn configured(&self, name: &str) -> Option<SubscriptionConfig> {
        self.live()
            .running
            .subscriptions
            .iter()
            .find(|s| s.name == name)
            .cloned()
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
    fn new(
        config: &Config,
        stored: &[StoredSubscription],
        left_out: Vec<(String, String)>,
        version: ConfigVersion,
    ) -> Live {
        let token = config.server.admin_token.expose();
        Live {
            token_digest: (!token.is_empty()).then(|| digest(token)),
            tenants: config
                .server
                .tenants
                .iter()
                .map(|t| (digest(t.token.expose()), t.clone()))
                .collect(),
            running: config.clone(),
            stored: stored.iter().map(|s| (s.name.clone(), s.clone())).collect(),
            left_out: left_out.into_iter().collect(),
            version,
        }
    }

    /// `GET /v1/config`: the file's config (the API's subscriptions are not in it), secrets
    /// redacted, with its hash and load time.
    pub(super) fn shown(&self) -> serde_json::Value {
        let mut config = self.running.clone();
        config
            .subscriptions
            .retain(|s| s.source == crate::config::Source::Config);
        serde_json::json!({
            "source": self.version.source,
            "hash": self.version.hash,
            "loaded_at": self.version.loaded_at,
            // Secrets serialize as `<redacted>`, URLs without their passwords.
            "config": config,
        })
    }
}

pub(super) fn not_found(detail: String) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
}

/// SHA-256 of a token: tokens are compared as digests (see `auth`).
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl AdminState {
    /// Whether `principal` owns the subscription named `full` (configured, running or
    /// stored).
    pub(super) fn owns(&self, principal: &Principal, full: &str) -> bool {
        let live = self.live();
        let source = match live.running.subscriptions.iter().find(|s| s.name == full) {
            Some(sub) => Some(sub.source.clone()),
            None => live.stored.get(full).map(|entry| Source::Api {
                tenant: entry.tenant.clone(),
            }),
        };
        source.is_some_and(|source| principal.owns(&source))
    }

    /// The full name of the subscription `name` (as `principal` names it) if it may see it:
    /// configured, running or stored, and its own; otherwise the 404 of no such name, so
    /// that nothing shows whether another's exists.
    pub(super) fn owned(&self, principal: &Principal, name: &str) -> Result<String, Box<Problem>> {
        let full = principal.full_name(name);
        match self.owns(principal, &full) {
            true => Ok(full),
            false => Err(not_found(format!("no subscription is named `{name}`")).into()),
        }
    }
}
