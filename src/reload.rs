//! Live configuration: `serve` watches its config file and reloads it on change or SIGHUP.
//!
//! The file is read every second (unless `HOOKBRIDGE_CONFIG_WATCH=signal`: SIGHUP only)
//! (through its symlinks, so the atomic swap of a mounted
//! ConfigMap's `..data` link is seen like any edit) and acted on once its text is the same
//! on two reads in a row, so a file caught half-written waits for the rest. A new text is
//! validated whole, as `check-config` would; an invalid one, or one that changes what
//! cannot change while running, is refused, logged and counted, and the running config
//! stays. Otherwise each part takes only its own changes: the ingress swaps its routes at
//! once, delivery touches only the subscriptions that changed (see `Delivery::reload`), the
//! admin API takes the new token.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminState, ConfigVersion};
use crate::broker::Publisher;
use crate::config::{self, Config};
use crate::delivery::Delivery;
use crate::ingress::Ingress;
use crate::metrics::metrics;

/// How often the file is read.
const POLL: Duration = Duration::from_secs(1);

/// The config file as `serve` read it.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// `None` for the built-in default, which never changes.
    pub path: Option<PathBuf>,
    /// How messages name it.
    pub name: String,
    pub text: String,
}

impl ConfigFile {
    pub fn version(&self) -> ConfigVersion {
        ConfigVersion {
            source: self.name.clone(),
            hash: hash(&self.text),
            loaded_at: crate::rfc3339::rfc3339(SystemTime::now()),
        }
    }
}

pub fn hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    Applied,
    Unchanged,
    Refused(String),
}

/// The parts of a running `serve` that a reload changes.
pub struct Reloader {
    pub file: ConfigFile,
    pub running: Config,
    pub ingress: Arc<Ingress>,
    pub delivery: Option<Arc<Delivery>>,
    pub admin: Arc<AdminState>,
    pub publisher: Arc<dyn Publisher>,
}

/// Keys whose change needs a restart: the broker, the listeners, their limits and TLS
/// files, the egress guard. Named in a refusal.
fn restart_only(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.server, &new.server);
    let checks: [(&'static str, bool); 11] = [
        ("broker.kind", old.broker.kind != new.broker.kind),
        (
            "broker.embedded",
            old.broker.embedded != new.broker.embedded,
        ),
        ("broker.kafka", old.broker.kafka != new.broker.kafka),
        ("broker.nats", old.broker.nats != new.broker.nats),
        ("server.listen", a.listen != b.listen),
        ("server.admin_listen", a.admin_listen != b.admin_listen),
        ("server.read_timeout", a.read_timeout != b.read_timeout),
        ("server.idle_timeout", a.idle_timeout != b.idle_timeout),
        (
            "server.max_connections",
            a.max_connections != b.max_connections,
        ),
        // Which files; their contents are re-read on their own when they change.
        ("server.tls", a.tls != b.tls),
        ("server.egress", a.egress != b.egress),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(key, _)| key)
        .collect()
}

impl Reloader {
    /// Reloads on every change of the file and on SIGHUP, until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let Some(path) = self.file.path.clone() else {
            return;
        };
        let mut hangup = hangup_signal();
        // `HOOKBRIDGE_CONFIG_WATCH=signal`: only SIGHUP reloads, for files edited in place
        // in several steps.
        let polling = std::env::var("HOOKBRIDGE_CONFIG_WATCH").as_deref() != Ok("signal");
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The text seen on the last read, to act only on one that holds still; and the last
        // one tried, so a refused text is refused once, not every second.
        let mut seen = self.file.text.clone();
        let mut tried = self.file.text.clone();
        loop {
            let forced = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick(), if polling => false,
                _ = hangup.recv() => true,
            };
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(text) => text,
                Err(e) => {
                    if forced {
                        tracing::warn!(config = %self.file.name, error = %e, "cannot read the config file; the running config stays");
                    }
                    continue;
                }
            };
            let settled = text == seen;
            seen = text.clone();
            if forced || (settled && text != tried) {
                tried = text.clone();
                self.reload(text).await;
            }
        }
    }

    /// Validates `text` and applies it, or refuses it.
    pub async fn reload(&mut self, text: String) -> ReloadOutcome {
        let outcome = self.apply(text).await;
        let m = metrics();
        match &outcome {
            ReloadOutcome::Applied => {
                m.config_reloads
                    .get_or_create(&reload_outcome("applied"))
                    .inc();
                m.config_last_reload_successful.set(1);
            }
            ReloadOutcome::Unchanged => {}
            ReloadOutcome::Refused(why) => {
                m.config_reloads
                    .get_or_create(&reload_outcome("refused"))
                    .inc();
                m.config_last_reload_successful.set(0);
                tracing::error!(config = %self.file.name, problem = %why, "config reload refused; the running config stays");
            }
        }
        outcome
    }

    async fn apply(&mut self, text: String) -> ReloadOutcome {
        if text == self.file.text {
            return ReloadOutcome::Unchanged;
        }
        let env = |name: &str| std::env::var(name).ok();
        let new = match config::load_str(&self.file.name, &text, &env) {
            Ok(new) => new,
            Err(e) => return ReloadOutcome::Refused(format!("{e:#}")),
        };
        let fixed = restart_only(&self.running, &new);
        if !fixed.is_empty() {
            return ReloadOutcome::Refused(format!(
                "{} cannot change while hookbridge runs; restart it to apply them",
                fixed.join(", ")
            ));
        }
        // New topics exist before anything publishes to or reads them.
        if let Err(e) = self.publisher.ensure_topics(&new.topics()).await {
            return ReloadOutcome::Refused(format!("cannot create the new config's topics: {e}"));
        }
        if let Some(delivery) = &self.delivery {
            match delivery.reload(&new, new.server.shutdown_timeout.0).await {
                Ok(changed) => tracing::info!(
                    added = ?changed.added, removed = ?changed.removed,
                    updated = ?changed.updated, rejoined = ?changed.rejoined,
                    "subscriptions reloaded"
                ),
                Err(e) => return ReloadOutcome::Refused(e.to_string()),
            }
        }
        self.ingress.reload(&new);
        self.file.text = text;
        let version = self.file.version();
        self.admin.reload(&new, &version);
        tracing::info!(config = %self.file.name, hash = %version.hash, routes = new.routes.len(), subscriptions = new.subscriptions.len(), "config reloaded");
        self.running = new;
        ReloadOutcome::Applied
    }
}

fn reload_outcome(outcome: &'static str) -> crate::metrics::OutcomeLabel {
    crate::metrics::OutcomeLabel { outcome }
}

/// SIGHUP, as a stream of unit events; never on other platforms.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            signal.recv().await;
            return;
        }
        std::future::pending::<()>().await
    }
}

fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    {
        Hangup {
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        }
    }
    #[cfg(not(unix))]
    Hangup {}
}
