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
//!
//! The subscriptions made through the admin API join the file's in the same way: every
//! replica reads them from the broker's store each second (at once on the replica that
//! took the request) and applies a change as it applies a file's, so all replicas run them
//! within a couple of seconds and a restart finds them again. The file's config stays what
//! a file reload checks and compares; what runs is the file's with the stored ones that can
//! run beside it (`Config::with_stored`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminState, ConfigVersion};
use crate::broker::{Publisher, SubscriptionStore};
use crate::config::{self, Config, StoredSubscription};
use crate::delivery::Delivery;
use crate::ingress::Ingress;
use crate::metrics::metrics;

/// How often the file and the stored subscriptions are read.
const POLL: Duration = Duration::from_secs(1);
/// A read of the stored subscriptions that takes longer is given up until the next.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The file's config alone.
    pub from_file: Config,
    /// The stored subscriptions as last applied.
    pub stored: Vec<StoredSubscription>,
    /// What runs: the file's config with the stored subscriptions that can run.
    pub running: Config,
    pub ingress: Arc<Ingress>,
    pub delivery: Option<Arc<Delivery>>,
    pub admin: Arc<AdminState>,
    pub publisher: Arc<dyn Publisher>,
    pub store: StoreWatch,
}

/// The store of subscriptions as the reloader reads it, and what it last said went wrong.
pub struct StoreWatch {
    pub store: Arc<dyn SubscriptionStore>,
    /// Entries that cannot be read, as last logged.
    unreadable: Vec<String>,
    /// What went wrong at the last read, as logged.
    problem: Option<String>,
}

impl StoreWatch {
    pub fn new(store: Arc<dyn SubscriptionStore>) -> StoreWatch {
        StoreWatch {
            store,
            unreadable: Vec::new(),
            problem: None,
        }
    }

    /// Logs `problem` unless it is the one logged last.
    fn problem(&mut self, problem: String) {
        if self.problem.as_ref() != Some(&problem) {
            tracing::error!(%problem, "stored subscriptions");
            self.problem = Some(problem);
        }
    }
}

/// The stored subscriptions as read, and the names of entries that cannot be read as
/// one (written by something else), which are left out.
#[derive(Debug, Default, PartialEq)]
pub struct Stored {
    pub subscriptions: Vec<StoredSubscription>,
    pub unreadable: Vec<String>,
}

/// Reads the stored subscriptions.
pub async fn read_stored(store: &dyn SubscriptionStore) -> Result<Stored, String> {
    let entries: BTreeMap<String, bytes::Bytes> =
        match tokio::time::timeout(STORE_TIMEOUT, store.load()).await {
            Ok(Ok(entries)) => entries,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {STORE_TIMEOUT:?}")),
        };
    let mut stored = Stored::default();
    for (name, value) in entries {
        match serde_json::from_slice::<StoredSubscription>(&value) {
            Ok(entry) if entry.name == name => stored.subscriptions.push(entry),
            Ok(_) | Err(_) => stored.unreadable.push(name),
        }
    }
    Ok(stored)
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
    /// Reloads on every change of the file and on SIGHUP, and applies every change of the
    /// stored subscriptions, until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let path = self.file.path.clone();
        let mut hangup = hangup_signal();
        // `HOOKBRIDGE_CONFIG_WATCH=signal`: only SIGHUP reloads, for files edited in place
        // in several steps.
        let polling =
            path.is_some() && std::env::var("HOOKBRIDGE_CONFIG_WATCH").as_deref() != Ok("signal");
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stored_changed = self.admin.stored_changed();
        // The text seen on the last read, to act only on one that holds still; and the last
        // one tried, so a refused text is refused once, not every second.
        let mut seen = self.file.text.clone();
        let mut tried = self.file.text.clone();
        loop {
            let (file_tick, forced) = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => (polling, false),
                _ = hangup.recv() => (path.is_some(), true),
                _ = stored_changed.notified() => (false, false),
            };
            if let Some(path) = path.as_ref().filter(|_| file_tick)
                && let Some(text) = self.read_file(path, forced).await
            {
                let settled = text == seen;
                seen = text.clone();
                if forced || (settled && text != tried) {
                    tried = text.clone();
                    self.reload(text).await;
                }
            }
            self.read_store().await;
        }
    }

    /// The config file's text; `None` if it cannot be read (said when asked by SIGHUP).
    async fn read_file(&self, path: &std::path::Path, forced: bool) -> Option<String> {
        match tokio::fs::read_to_string(path).await {
            Ok(text) => Some(text),
            Err(e) => {
                if forced {
                    tracing::warn!(config = %self.file.name, error = %e, "cannot read the config file; the running config stays");
                }
                None
            }
        }
    }

    /// Reads the stored subscriptions and applies them if they changed. What goes wrong is
    /// logged when it starts or changes, not every second.
    async fn read_store(&mut self) {
        let read = match read_stored(self.store.store.as_ref()).await {
            Ok(read) => read,
            Err(e) => {
                self.store.problem(format!("cannot read the stored subscriptions ({e}); the running ones stay until they can be read"));
                return;
            }
        };
        if read.unreadable != self.store.unreadable {
            for name in &read.unreadable {
                tracing::warn!(subscription = %name, "a stored subscription cannot be read; it is left out");
            }
            self.store.unreadable = read.unreadable;
        }
        let stored = read.subscriptions;
        if stored == self.stored {
            self.store.problem = None;
            return;
        }
        let (running, left_out) = self.from_file.with_stored(&stored);
        match self.apply_running(running, &stored, left_out).await {
            Ok(()) => {
                tracing::info!(stored = stored.len(), "stored subscriptions applied");
                self.stored = stored;
                self.store.problem = None;
            }
            Err(why) => self.store.problem(format!(
                "the stored subscriptions cannot be applied ({why}); the running ones stay"
            )),
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
        let (running, left_out) = new.with_stored(&self.stored);
        let stored = self.stored.clone();
        if let Err(why) = self.apply_running(running, &stored, left_out).await {
            return ReloadOutcome::Refused(why);
        }
        self.file.text = text;
        self.from_file = new;
        let version = self.file.version();
        self.admin.reload_version(&version);
        tracing::info!(config = %self.file.name, hash = %version.hash, routes = self.running.routes.len(), subscriptions = self.running.subscriptions.len(), "config reloaded");
        ReloadOutcome::Applied
    }

    /// Runs `new` (the file's config with the stored subscriptions that can run; those
    /// left out and why in `left_out`) instead of what runs.
    async fn apply_running(
        &mut self,
        mut new: Config,
        stored: &[StoredSubscription],
        mut left_out: Vec<(String, String)>,
    ) -> Result<(), String> {
        crate::delivery::leave_out_unbuildable(&mut new, &mut left_out);
        for (name, why) in &left_out {
            tracing::warn!(subscription = %name, problem = %why, "a stored subscription is left out");
        }
        if new == self.running {
            // Only what is left out changed (another deployment's tenants on a shared
            // broker, say): nothing to start or stop.
            self.admin.reload(&new, stored, left_out);
            return Ok(());
        }
        // New topics exist before anything publishes to or reads them.
        if let Err(e) = self.publisher.ensure_topics(&new.topics()).await {
            return Err(format!("cannot create the new config's topics: {e}"));
        }
        if let Some(delivery) = &self.delivery {
            match delivery.reload(&new, new.server.shutdown_timeout.0).await {
                Ok(changed) => tracing::info!(
                    added = ?changed.added, removed = ?changed.removed,
                    updated = ?changed.updated, rejoined = ?changed.rejoined,
                    "subscriptions reloaded"
                ),
                Err(e) => return Err(e.to_string()),
            }
        }
        self.ingress.reload(&new);
        self.admin.reload(&new, stored, left_out);
        self.running = new;
        Ok(())
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
