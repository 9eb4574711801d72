//! A subscription at run time: its HTTP client, signing keys, limits, breaker and where
//! its partitions stand. Every later step of delivery reads it; it reads none of them.
//!
//! Everything here is per subscription (G4): a slow or dead endpoint fills only its own
//! in-flight slots, rate limit and breaker, never another subscription's.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::header::HeaderName;
use tokio::sync::watch;

use super::breaker::{Breaker, BreakerState};
use super::client::{ClientOptions, WebhookClient};
use super::event::{Decode, Event};
use super::filter::Filter;
use super::key_locks::KeyLocks;
use super::limit::{LimitStatus, Limiter};
use super::progress::PartitionProgress;
use super::retry::RetryPolicy;
use super::status::{LastError, PartitionStatus, StatusBoard};
use crate::broker::{Broker, Publisher, TopicReader};
use crate::config::{
    AttemptLogMode, ConcurrencyMode, OrderingMode, PayloadMode, SubscriptionConfig,
};
use crate::egress::EgressGuard;
use crate::expression::Expression;
use crate::metrics;
use crate::standard_webhooks;

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("subscription `{subscription}`: cannot build its HTTP client: {reason}")]
    Client {
        subscription: String,
        reason: String,
    },
}

pub struct SubscriptionRuntime {
    pub name: String,
    /// Its Prometheus series.
    pub metrics: metrics::SubscriptionMetrics,
    pub topics: Vec<String>,
    pub ordering: OrderingMode,
    /// Requests on the wire, across all partitions (`concurrency`, `max_in_flight`), and
    /// a receiver's `Retry-After` hold.
    pub in_flight: Limiter,
    /// One event of a key on its way at a time, whichever topic it came from.
    pub key_locks: KeyLocks,
    /// What the partitions delivered here have done (for unparking, and replays).
    pub progress: PartitionProgress,
    /// Records a partition worker holds at most (queued in lanes or in flight).
    pub buffer: usize,
    pub dead_letter_topic: String,
    /// Where keys failing longer than `park_after` go on retrying (see `parking`).
    pub parking_topic: String,
    /// Where redriven and replayed events come from (see `resend`).
    pub resend_topic: String,
    /// Where its attempts are logged (see `attempt_log`).
    pub attempt_topic: String,
    pub publisher: Arc<dyn Publisher>,
    /// Reads topics outside the group: a former parking topic's events, to carry over.
    pub reader: Arc<dyn TopicReader>,
    /// Where its partitions stand, for the admin API.
    pub board: Arc<StatusBoard>,
    /// True while an operator has paused delivery: no attempt starts and no record is
    /// pulled, but the partitions stay owned.
    pub paused: watch::Sender<bool>,
    /// What a reloaded config may change while the subscription runs.
    settings: RwLock<Arc<Settings>>,
    /// The config it runs, to tell what a new one changes.
    config: RwLock<SubscriptionConfig>,
}

/// The part of a subscription a config reload changes in place, without leaving the
/// consumer group: each attempt reads it afresh, so an event retrying against a URL that
/// moved goes to the new one on its next attempt.
pub struct Settings {
    pub client: WebhookClient,
    pub timeout: Duration,
    pub secrets: Vec<standard_webhooks::Secret>,
    pub payload: PayloadMode,
    pub forward_headers: Vec<HeaderName>,
    /// How much of each envelope the payload needs.
    pub decode: Decode,
    pub filter: Option<Filter>,
    /// `transform.expression`: its value is the body sent.
    pub transform: Option<Expression>,
    pub rate_limit: Option<DefaultDirectRateLimiter>,
    /// `rate_limit` as configured: per second, burst.
    pub rate: Option<(f64, u32)>,
    pub breaker: Breaker,
    pub retry: RetryPolicy,
    pub park_after: Duration,
    pub max_in_flight: usize,
    pub concurrency: ConcurrencyMode,
    pub attempt_log: AttemptLogMode,
}

impl Settings {
    pub fn from_config(
        config: &SubscriptionConfig,
        egress: Option<Arc<EgressGuard>>,
    ) -> Result<Settings, DeliveryError> {
        // An endpoint that redirects is misconfigured: the client does not follow, since
        // following would send signed payloads somewhere nobody configured.
        let client = WebhookClient::new(ClientOptions {
            url: config.url.expose(),
            timeout: config.timeout.0,
            max_idle: config.max_in_flight as usize,
            headers: &config.headers,
            tls_key: "tls",
            tls: &config.tls,
            egress,
        })
        .map_err(|e| DeliveryError::Client {
            subscription: config.name.clone(),
            reason: e.to_string(),
        })?;
        let rate = config.rate_limit.as_ref().map(|rate| {
            let burst = rate
                .burst
                .unwrap_or_else(|| rate.per_second.ceil() as u32)
                .max(1);
            (rate.per_second, burst)
        });
        let rate_limit = rate.map(|(per_second, burst)| {
            let period = Duration::from_secs_f64(1.0 / per_second);
            let quota = Quota::with_period(period)
                .expect("validated rate")
                .allow_burst(burst.try_into().expect("burst >= 1"));
            RateLimiter::direct(quota)
        });
        let filter = config.filter.as_ref().map(Filter::new);
        let transform = config
            .transform
            .expression
            .as_deref()
            .map(|e| Expression::compile(e).expect("validated expression"));
        let signing = config
            .signing
            .as_ref()
            .map(|s| s.all_secrets())
            .unwrap_or_default();
        Ok(Settings {
            client,
            timeout: config.timeout.0,
            secrets: signing
                .iter()
                .map(|s| standard_webhooks::Secret::parse(s.expose()).expect("validated secret"))
                .collect(),
            payload: config.payload,
            decode: if config.payload == PayloadMode::EnvelopeJson
                || !config.forward_headers.is_empty()
                || filter.as_ref().is_some_and(Filter::reads_headers)
                || transform.as_ref().is_some_and(Expression::reads_headers)
            {
                Decode::Full
            } else {
                Decode::Head
            },
            forward_headers: config
                .forward_headers
                .iter()
                .map(|h| HeaderName::from_bytes(h.as_bytes()).expect("validated header"))
                .collect(),
            filter,
            transform,
            rate_limit,
            rate,
            breaker: Breaker::new(config.breaker.failures, config.breaker.cool_down.0),
            retry: RetryPolicy::from_config(&config.retry),
            park_after: config.retry.park_after.0,
            max_in_flight: config.max_in_flight as usize,
            concurrency: config.concurrency,
            attempt_log: config.attempt_log,
        })
    }

    /// Whether the event passes the subscription's filter. One the expression fails on is
    /// not delivered (counted, and said at debug level: it may be every event of a kind).
    pub fn wants(&self, event: &Event, metrics: &metrics::SubscriptionMetrics) -> bool {
        let Some(filter) = &self.filter else {
            return true;
        };
        match filter.wants(event) {
            Ok(true) => true,
            Ok(false) => {
                metrics.filtered_skipped.inc();
                false
            }
            Err(e) => {
                tracing::debug!(id = %event.id, error = %e, "filter.expression failed on an event; not delivered");
                metrics.filtered_error.inc();
                false
            }
        }
    }
}

/// What a new config of a running subscription asks of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// Delivery settings only: applied in place.
    Settings,
    /// Its topics, ordering, dead-letter or parking topic: it leaves and rejoins its group.
    Rejoin,
}

/// A subscription's state as `GET /v1/subscriptions/{name}` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SubscriptionStatus {
    pub name: String,
    pub group: String,
    pub topics: Vec<String>,
    /// The endpoint, without credentials or query (which may carry a token).
    pub url: String,
    pub paused: bool,
    pub in_flight: usize,
    pub max_in_flight: usize,
    /// The limit on requests on the wire, why it last changed, and any `Retry-After` hold.
    pub concurrency: LimitStatus,
    /// `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    pub rate_limit: Option<RateStatus>,
    pub last_error: Option<LastError>,
    /// The partitions this replica delivers, its parking and resend topics' included.
    pub partitions: Vec<PartitionStatus>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RateStatus {
    pub per_second: f64,
    pub burst: u32,
}

impl SubscriptionRuntime {
    pub fn from_config(
        config: &SubscriptionConfig,
        broker: &Broker,
        egress: Option<Arc<EgressGuard>>,
    ) -> Result<SubscriptionRuntime, DeliveryError> {
        let settings = Settings::from_config(config, egress)?;
        let metrics = metrics::SubscriptionMetrics::new(&config.name);
        Ok(SubscriptionRuntime {
            name: config.name.clone(),
            topics: config.topics.clone(),
            ordering: config.ordering,
            in_flight: Limiter::new(
                settings.concurrency,
                settings.max_in_flight,
                metrics.concurrency_limit.clone(),
            ),
            metrics,
            key_locks: KeyLocks::default(),
            progress: PartitionProgress::default(),
            buffer: (config.max_in_flight as usize * 4).max(256),
            dead_letter_topic: config.dead_letter_topic(),
            parking_topic: config.parking_topic(),
            resend_topic: config.resend_topic(),
            attempt_topic: config.attempt_topic(),
            publisher: broker.publisher.clone(),
            reader: broker.reader.clone(),
            board: Arc::default(),
            paused: watch::Sender::new(false),
            settings: RwLock::new(Arc::new(settings)),
            config: RwLock::new(config.clone()),
        })
    }

    /// The delivery settings now.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.read().expect("settings lock").clone()
    }

    /// What running `config` instead of the current one takes.
    pub fn change(&self, config: &SubscriptionConfig) -> Change {
        let current = self.config.read().expect("config lock");
        if *current == *config {
            Change::None
        } else if current.topics != config.topics
            || current.ordering != config.ordering
            || current.dead_letter_topic() != config.dead_letter_topic()
            || current.parking_topic() != config.parking_topic()
        {
            Change::Rejoin
        } else {
            Change::Settings
        }
    }

    /// Takes new delivery settings in place (see [`Change::Settings`]), built from `config`:
    /// attempts started from now on use them; the partitions, their lanes and commits go on
    /// untouched.
    pub fn apply(self: &Arc<Self>, settings: Settings, config: &SubscriptionConfig) {
        // Free slots go now; those of requests on the wire as they come back.
        self.in_flight
            .configure(settings.concurrency, settings.max_in_flight);
        *self.settings.write().expect("settings lock") = Arc::new(settings);
        *self.config.write().expect("config lock") = config.clone();
        tracing::info!(subscription = %self.name, "delivery settings reloaded");
    }

    /// Pauses or resumes delivery; true if that changed anything.
    pub fn set_paused(&self, paused: bool) -> bool {
        let changed = self.paused.send_replace(paused) != paused;
        if changed {
            tracing::info!(subscription = %self.name, paused, "delivery {}", if paused { "paused" } else { "resumed" });
        }
        changed
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Waits while delivery is paused.
    pub async fn unpaused(&self) {
        let mut paused = self.paused.subscribe();
        let _ = paused.wait_for(|paused| !*paused).await;
    }

    pub fn status(&self) -> SubscriptionStatus {
        let settings = self.settings();
        SubscriptionStatus {
            name: self.name.clone(),
            group: self.group(),
            topics: self.topics.clone(),
            url: settings.client.shown(),
            paused: self.is_paused(),
            in_flight: self.in_flight.in_flight(),
            max_in_flight: settings.max_in_flight,
            concurrency: self.in_flight.status(),
            breaker: match settings.breaker.state() {
                BreakerState::Closed => "closed",
                BreakerState::Open => "open",
                BreakerState::HalfOpen => "half_open",
            },
            rate_limit: settings
                .rate
                .map(|(per_second, burst)| RateStatus { per_second, burst }),
            last_error: self.board.last_error(),
            partitions: self.board.partitions(),
        }
    }

    pub fn group(&self) -> String {
        format!("hookbridge.{}", self.name)
    }

    /// The topics the group reads: the subscription's, its parking topic and its resend
    /// topic, whose events it delivers like any others.
    pub fn group_topics(&self) -> Vec<String> {
        let mut topics = self.topics.clone();
        topics.push(self.parking_topic.clone());
        topics.push(self.resend_topic.clone());
        topics
    }
}
