//! The running subscriptions: started from the config, reloaded with the least
//! disturbance, stopped within a grace.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::runtime::{Change, DeliveryError, Settings, SubscriptionRuntime};
use super::subscription;
use crate::broker::Broker;
use crate::config::{Config, Source, SubscriptionConfig};
use crate::egress::EgressGuard;

/// One running subscription: its runtime, its stop signal, its task. Dropped without
/// `stop` (a start-up that fails half-way), it still stops: the guard cancels its token.
struct Running {
    runtime: Arc<SubscriptionRuntime>,
    stop: DropGuard,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops taking records, lets attempts on the wire finish within `grace`, commits what
    /// is done; abandons the rest after it (redelivered later).
    async fn stop(mut self, grace: Duration) {
        self.stop.disarm().cancel();
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            tracing::warn!(subscription = %self.runtime.name, "delivery did not stop within the shutdown timeout; abandoning in-flight work");
            self.task.abort();
        }
    }
}

/// What a reload did to the subscriptions, by name.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Delivery settings taken in place.
    pub updated: Vec<String>,
    /// Left their group and joined it again (topics, ordering, dead-letter or parking topic).
    pub rejoined: Vec<String>,
}

/// Why `sub` could not be delivered as configured, if so: its HTTP client cannot be built
/// (a URL the client refuses, a TLS file missing). The key at fault and the reason.
pub fn unbuildable(sub: &SubscriptionConfig, config: &Config) -> Option<(&'static str, String)> {
    let egress = match sub.source {
        Source::Config => config.server.egress.config_guard(),
        Source::Api { .. } => Some(config.server.egress.guard()),
    };
    let Err(DeliveryError::Client { reason, .. }) = Settings::from_config(sub, egress) else {
        return None;
    };
    let key = match reason.split(':').next().unwrap_or_default() {
        "url" => "url",
        header if header.starts_with("header") => "headers",
        _ => "tls",
    };
    Some((key, reason))
}

/// Leaves out of `config` the subscriptions made through the API that cannot be built
/// (stored before a check that refuses them now, say), adding them to `left_out`: one of
/// them must not keep the others, and the file's, from running.
pub fn leave_out_unbuildable(config: &mut Config, left_out: &mut Vec<(String, String)>) {
    let snapshot = config.clone();
    config.subscriptions.retain(|sub| {
        if sub.source == Source::Config {
            return true;
        }
        match unbuildable(sub, &snapshot) {
            None => true,
            Some((_, reason)) => {
                left_out.push((sub.name.clone(), reason));
                false
            }
        }
    });
}

/// The running subscriptions.
pub struct Delivery {
    broker: Broker,
    /// Where the config file's subscriptions may deliver (`server.egress`, fixed while
    /// running: a change needs a restart).
    egress: Option<Arc<EgressGuard>>,
    /// Where the admin API's subscriptions may deliver: always guarded.
    api_egress: Arc<EgressGuard>,
    running: tokio::sync::Mutex<BTreeMap<String, Running>>,
}

impl Delivery {
    pub fn start(config: &Config, broker: Broker) -> Result<Delivery, DeliveryError> {
        let mut delivery = Delivery {
            broker,
            egress: config.server.egress.config_guard(),
            api_egress: config.server.egress.guard(),
            running: Default::default(),
        };
        let mut running = BTreeMap::new();
        for sub in &config.subscriptions {
            running.insert(
                sub.name.clone(),
                delivery.launch(delivery.runtime(sub)?, None),
            );
        }
        delivery.running = tokio::sync::Mutex::new(running);
        Ok(delivery)
    }

    fn runtime(
        &self,
        config: &SubscriptionConfig,
    ) -> Result<Arc<SubscriptionRuntime>, DeliveryError> {
        Ok(Arc::new(SubscriptionRuntime::from_config(
            config,
            &self.broker,
            self.guard(config),
        )?))
    }

    /// The egress guard of `config`'s deliveries, by where it was defined.
    fn guard(&self, config: &SubscriptionConfig) -> Option<Arc<EgressGuard>> {
        match config.source {
            Source::Config => self.egress.clone(),
            Source::Api { .. } => Some(self.api_egress.clone()),
        }
    }

    /// Runs `runtime`'s subscription, once `previous` (the one it replaces, given `grace`)
    /// has stopped: its group's partitions are let go before they are taken again.
    fn launch(
        &self,
        runtime: Arc<SubscriptionRuntime>,
        previous: Option<(Running, Duration)>,
    ) -> Running {
        let stop = CancellationToken::new();
        let (sub, subscriber, stopped) = (
            runtime.clone(),
            self.broker.subscriber.clone(),
            stop.clone(),
        );
        let task = tokio::spawn(async move {
            if let Some((previous, grace)) = previous {
                previous.stop(grace).await;
            }
            if !stopped.is_cancelled() {
                subscription::run(sub, subscriber, stopped).await;
            }
        });
        Running {
            runtime,
            stop: stop.drop_guard(),
            task,
        }
    }

    /// The running subscription `name`.
    pub async fn subscription(&self, name: &str) -> Option<Arc<SubscriptionRuntime>> {
        self.running
            .lock()
            .await
            .get(name)
            .map(|r| r.runtime.clone())
    }

    /// Runs `config`'s subscriptions instead of the current ones, disturbing as little as
    /// possible: unchanged ones are not touched; new delivery settings are taken in place
    /// (no rebalance, nothing redelivered); a change of topics, ordering, dead-letter or
    /// parking topic stops the subscription (within `grace`, committing what is done) and
    /// starts it again in its group; removed ones stop the same way, added ones start.
    /// Every new runtime is built before anything stops, so a config that cannot run
    /// changes nothing. The running set is held only while it changes, not while
    /// subscriptions stop, so status and pause answer meanwhile (a rejoining subscription's
    /// new runtime is in place at once, started when the old one has stopped).
    pub async fn reload(
        &self,
        config: &Config,
        grace: Duration,
    ) -> Result<Reloaded, DeliveryError> {
        let mut running = self.running.lock().await;
        let mut reloaded = Reloaded::default();
        // Everything the new config needs is built first (a URL that cannot be a client
        // fails here), so a config that cannot run changes nothing.
        let mut starting = Vec::new();
        let mut updating = Vec::new();
        for sub in &config.subscriptions {
            match running.get(&sub.name).map(|r| r.runtime.change(sub)) {
                None => starting.push((self.runtime(sub)?, false)),
                Some(Change::Rejoin) => starting.push((self.runtime(sub)?, true)),
                Some(Change::Settings) => {
                    updating.push((sub, Settings::from_config(sub, self.guard(sub))?));
                }
                Some(Change::None) => {}
            }
        }
        for (sub, settings) in updating {
            running[&sub.name].runtime.apply(settings, sub);
            reloaded.updated.push(sub.name.clone());
        }
        let wanted: Vec<&str> = config
            .subscriptions
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        let gone: Vec<String> = running
            .keys()
            .filter(|name| !wanted.contains(&name.as_str()))
            .cloned()
            .collect();
        let mut removed = Vec::new();
        for name in gone {
            if let Some(old) = running.remove(&name) {
                removed.push(old.stop(grace));
                tracing::info!(subscription = %name, "subscription removed");
                reloaded.removed.push(name);
            }
        }
        for (runtime, rejoin) in starting {
            let name = runtime.name.clone();
            let previous = match running.remove(&name).filter(|_| rejoin) {
                Some(old) => {
                    // An operator's pause is the subscription's, not its runtime's: it goes on.
                    runtime.set_paused(old.runtime.is_paused());
                    tracing::info!(subscription = %name, "subscription rejoining its group with its new topics or ordering");
                    reloaded.rejoined.push(name.clone());
                    Some((old, grace))
                }
                None => {
                    tracing::info!(subscription = %name, "subscription added");
                    reloaded.added.push(name.clone());
                    None
                }
            };
            running.insert(name, self.launch(runtime, previous));
        }
        drop(running);
        futures_util::future::join_all(removed).await;
        Ok(reloaded)
    }

    /// Stops taking records, lets attempts on the wire finish within `grace`, commits what
    /// is done. Whatever is not done is redelivered after the restart (G2).
    pub async fn shutdown(&self, grace: Duration) {
        let running = std::mem::take(&mut *self.running.lock().await);
        let stopping = running.into_values().map(|r| r.stop(grace));
        futures_util::future::join_all(stopping).await;
    }
}
