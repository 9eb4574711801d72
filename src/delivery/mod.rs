//! Delivery (DESIGN.md §5): events on topics become signed, retried, ordered webhooks.
//!
//! The data path, one module per step:
//! [`subscription`] joins a consumer group and gets partition streams →
//! [`partition`] fans records out into lanes and tracks commits ([`commit`]) →
//! [`lane`] delivers one event at a time, retrying in place ([`retry`], [`breaker`]) →
//! [`attempt`] signs and POSTs the request [`payload`] built → done, or [`dead_letter`], or,
//! for a key failing too long, [`parking`].
//!
//! One engine serves every broker: it only sees the `Subscriber` and `Publisher` traits.

mod attempt;
mod breaker;
mod client;
mod commit;
mod dead_letter;
mod event;
mod filter;
mod lane;
mod parking;
mod partition;
mod payload;
pub mod resend;
mod retry;
mod status;
mod subscription;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::broker::{Publisher, Subscriber};
use crate::config::Config;

pub use dead_letter::copy as copy_record;
pub use event::{Decode, Event};
pub use filter::TypeFilter;
pub use payload::{envelope_json, rfc3339};
pub use status::{LastError, PartitionStatus};
pub use subscription::{RateStatus, SubscriptionRuntime, SubscriptionStatus};

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("subscription `{subscription}`: cannot build its HTTP client: {reason}")]
    Client {
        subscription: String,
        reason: String,
    },
}

/// The running subscriptions.
pub struct Delivery {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    subscriptions: Vec<Arc<subscription::SubscriptionRuntime>>,
}

impl Delivery {
    pub fn start(
        config: &Config,
        subscriber: Arc<dyn Subscriber>,
        publisher: Arc<dyn Publisher>,
    ) -> Result<Delivery, DeliveryError> {
        // rustls is built without a default crypto provider; ring is the one linked in.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut subscriptions = Vec::new();
        for sub in &config.subscriptions {
            let runtime = Arc::new(subscription::SubscriptionRuntime::from_config(
                sub,
                publisher.clone(),
            )?);
            subscriptions.push(runtime.clone());
            tasks.spawn(subscription::run(
                runtime,
                subscriber.clone(),
                stopped.clone(),
            ));
        }
        Ok(Delivery {
            stop,
            tasks,
            subscriptions,
        })
    }

    /// The running subscriptions, for the admin API.
    pub fn subscriptions(&self) -> Vec<Arc<subscription::SubscriptionRuntime>> {
        self.subscriptions.clone()
    }

    /// Stops taking records, lets attempts on the wire finish within `grace`, commits what
    /// is done. Whatever is not done is redelivered after the restart (G2).
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let all_done = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all_done).await.is_err() {
            tracing::warn!(
                "delivery did not stop within the shutdown timeout; abandoning in-flight work"
            );
            self.tasks.abort_all();
        }
    }
}

/// Resolves once `stop` says so (or its sender is gone). Keeps the watch guard out of the
/// caller's future, which must stay `Send`.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
