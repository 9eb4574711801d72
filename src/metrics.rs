//! Prometheus metrics, served as OpenMetrics text at `GET /metrics` on the admin listener.
//!
//! The names and labels are a contract: dashboards and the Helm chart's PrometheusRule rely
//! on them. Label values stay bounded: route and subscription names from the config, HTTP
//! statuses, outcomes and reasons from fixed lists, topics and partitions the config
//! names; never keys, ids or URLs.
//!
//! One process-wide set (`metrics()`), as Prometheus clients usually keep one registry: the
//! ingress and the delivery engine record into it without it being threaded through every
//! constructor, and the admin listener encodes it.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry, Unit};

/// The content type of `encode()`'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets in seconds, 0.5 ms to 60 s: a webhook's publish and a subscriber's
/// answer both span that range.
fn latency_buckets() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0,
    ])
}

/// End to end includes retries and backlogs: up to hours.
fn end_to_end_buckets() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        300.0, 900.0, 3600.0, 14400.0, 86400.0,
    ])
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabel {
    pub subscription: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionOutcome {
    pub subscription: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionReason {
    pub subscription: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionPartition {
    pub subscription: String,
    pub topic: String,
    pub partition: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric hookbridge exports.
pub struct Metrics {
    registry: Registry,
    pub ingress_requests: Family<RouteStatus, Counter>,
    pub ingress_publish_duration: HistogramFamily<RouteLabel>,
    pub delivery_attempts: Family<SubscriptionOutcome, Counter>,
    pub delivery_attempt_duration: HistogramFamily<SubscriptionLabel>,
    pub delivery_end_to_end: HistogramFamily<SubscriptionLabel>,
    pub delivered: Family<SubscriptionLabel, Counter>,
    pub dead_letters: Family<SubscriptionReason, Counter>,
    pub filtered: Family<SubscriptionOutcome, Counter>,
    pub consumer_lag: Family<SubscriptionPartition, Gauge>,
    pub in_flight: Family<SubscriptionLabel, Gauge>,
    pub concurrency_limit: Family<SubscriptionLabel, Gauge>,
    pub parked_keys: Family<SubscriptionLabel, Gauge>,
    pub breaker_open: Family<SubscriptionLabel, Gauge>,
    pub partitions_owned: Family<SubscriptionLabel, Gauge>,
    pub spans_exported: Counter,
    pub spans_dropped: Family<ReasonLabel, Counter>,
    pub config_reloads: Family<OutcomeLabel, Counter>,
    pub config_last_reload_successful: Gauge,
    pub embedded_log_syncs: Counter,
    pub embedded_log_appends: Counter,
    /// Set once, at 1 with the version as its label; kept only to be exported.
    _build_info: Family<VersionLabel, Gauge>,
    process: ProcessMetrics,
}

/// The conventional `process_*` metrics, read from /proc at each scrape.
#[derive(Default)]
struct ProcessMetrics {
    cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    resident_memory_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time_seconds: Gauge,
}

impl Metrics {
    /// Every series, registered under `hookbridge_` with its help text; the struct is the
    /// list of what hookbridge exports.
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let r = registry.sub_registry_with_prefix("hookbridge");
        let config_last_reload_successful = Gauge::default();
        config_last_reload_successful.set(1);
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        Metrics {
            ingress_requests: add(
                r,
                "ingress_requests",
                "Webhook requests answered, by route and HTTP status",
                Family::default(),
            ),
            ingress_publish_duration: add_seconds(
                r,
                "ingress_publish_duration",
                "From the start of a webhook's publish to the broker's durable ack",
                Family::new_with_constructor(latency_buckets),
            ),
            delivery_attempts: add(
                r,
                "delivery_attempts",
                "Delivery attempts, by outcome: delivered, retry (a retryable HTTP status), \
                 failed (a status retrying cannot help), timeout, connect_error, egress_denied \
                 (an address server.egress does not let deliveries reach)",
                Family::default(),
            ),
            delivery_attempt_duration: add_seconds(
                r,
                "delivery_attempt_duration",
                "One delivery attempt, request sent to answer (or timeout)",
                Family::new_with_constructor(latency_buckets),
            ),
            delivery_end_to_end: add_seconds(
                r,
                "delivery_end_to_end",
                "From the broker's timestamp of an event to its delivery",
                Family::new_with_constructor(end_to_end_buckets),
            ),
            delivered: add(
                r,
                "delivered",
                "Events delivered (a 2xx answer)",
                Family::default(),
            ),
            dead_letters: add(
                r,
                "dead_letters",
                "Events sent to the dead-letter topic, by reason: failed (a status retrying \
                 cannot help), exhausted (retries or max_age used up), undeliverable (the record \
                 cannot be decoded)",
                Family::default(),
            ),
            filtered: add(
                r,
                "filtered",
                "Events the subscription's filter kept from delivery, by outcome: skipped (no \
                 match), error (filter.expression failed on the event)",
                Family::default(),
            ),
            consumer_lag: add(
                r,
                "consumer_lag",
                "Records of a partition this replica owns that are not yet delivered and committed",
                Family::default(),
            ),
            in_flight: add(
                r,
                "in_flight",
                "Delivery requests on the wire",
                Family::default(),
            ),
            concurrency_limit: add(
                r,
                "delivery_concurrency_limit",
                "Delivery requests a subscription may have on the wire now (adaptive: what the receiver was found to take; fixed: max_in_flight)",
                Family::default(),
            ),
            parked_keys: add(
                r,
                "parked_keys",
                "Keys parked by this replica's partitions (their events go on from the parking topic)",
                Family::default(),
            ),
            breaker_open: add(
                r,
                "breaker_open",
                "1 while the subscription's circuit breaker is open or probing",
                Family::default(),
            ),
            partitions_owned: add(
                r,
                "partitions_owned",
                "Partitions this replica delivers, the parking topic's included",
                Family::default(),
            ),
            spans_exported: add(
                r,
                "trace_spans_exported",
                "Spans the OTLP collector accepted (when OTEL_EXPORTER_OTLP_ENDPOINT is set)",
                Counter::default(),
            ),
            spans_dropped: add(
                r,
                "trace_spans_dropped",
                "Spans lost, by reason: queue_full (the export queue, OTEL_BSP_MAX_QUEUE_SIZE, \
                 was full: the collector is slow or down), export_failed (the collector refused \
                 or could not be reached)",
                Family::default(),
            ),
            config_reloads: add(
                r,
                "config_reloads",
                "Config reloads (file change or SIGHUP), by outcome: applied, refused",
                Family::default(),
            ),
            config_last_reload_successful: add(
                r,
                "config_last_reload_successful",
                "0 while the last reload attempt was refused (the running config is older than the file)",
                config_last_reload_successful,
            ),
            embedded_log_syncs: add(
                r,
                "embedded_log_syncs",
                "Commits of the embedded log that waited for the disk (fsync): one per group \
                 of appends written together",
                Counter::default(),
            ),
            embedded_log_appends: add(
                r,
                "embedded_log_appends",
                "Records appended to the embedded log; divided by hookbridge_embedded_log_syncs_total, \
                 how many share an fsync",
                Counter::default(),
            ),
            _build_info: add(r, "build_info", "hookbridge's version", build_info),
            process: ProcessMetrics::registered(&mut registry),
            registry,
        }
    }
}

/// Registers `metric` with its help text and hands it back.
fn add<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

/// [`add`], for a metric counted in seconds.
fn add_seconds<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register_with_unit(name, help, Unit::Seconds, metric.clone());
    metric
}

impl ProcessMetrics {
    /// The conventional `process_*` series, registered without hookbridge's prefix.
    fn registered(registry: &mut Registry) -> ProcessMetrics {
        let process = ProcessMetrics::default();
        registry.register_with_unit(
            "process_cpu",
            "User and system CPU time spent",
            Unit::Seconds,
            process.cpu_seconds.clone(),
        );
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory size",
            Unit::Bytes,
            process.resident_memory_bytes.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            process.open_fds.clone(),
        );
        registry.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            process.max_fds.clone(),
        );
        registry.register_with_unit(
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Unit::Seconds,
            process.start_time_seconds.clone(),
        );
        process
    }
}

pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// The OpenMetrics text of every metric, the process's read fresh.
pub fn encode() -> String {
    let m = metrics();
    m.process.refresh();
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &m.registry)
        .expect("writing to a String cannot fail");
    out
}

/// A gauge share held by one owner (a partition worker): what it adds is taken back when it
/// is dropped, so a revoked partition's parked keys or ownership do not linger in the sum.
pub struct GaugeShare {
    gauge: Gauge,
    held: i64,
}

impl GaugeShare {
    pub fn new(gauge: Gauge) -> GaugeShare {
        GaugeShare { gauge, held: 0 }
    }

    /// This owner's part is now `value`.
    pub fn set(&mut self, value: i64) {
        self.gauge.inc_by(value - self.held);
        self.held = value;
    }
}

impl Drop for GaugeShare {
    fn drop(&mut self) {
        self.gauge.dec_by(self.held);
    }
}

/// One subscription's series, looked up once: an attempt then records into them without
/// hashing labels.
pub struct SubscriptionMetrics {
    pub attempts_delivered: Counter,
    pub attempts_retry: Counter,
    pub attempts_failed: Counter,
    pub attempts_timeout: Counter,
    pub attempts_connect_error: Counter,
    pub attempts_egress_denied: Counter,
    pub attempt_duration: Histogram,
    pub end_to_end: Histogram,
    pub delivered: Counter,
    pub dead_letters_failed: Counter,
    pub dead_letters_exhausted: Counter,
    pub dead_letters_undeliverable: Counter,
    pub filtered_skipped: Counter,
    pub filtered_error: Counter,
    pub in_flight: Gauge,
    pub concurrency_limit: Gauge,
    pub breaker_open: Gauge,
}

impl SubscriptionMetrics {
    pub fn new(name: &str) -> SubscriptionMetrics {
        let m = metrics();
        let label = subscription(name);
        let attempts = |outcome| {
            m.delivery_attempts
                .get_or_create(&SubscriptionOutcome {
                    subscription: name.to_string(),
                    outcome,
                })
                .clone()
        };
        let dead_letters = |reason| {
            m.dead_letters
                .get_or_create(&SubscriptionReason {
                    subscription: name.to_string(),
                    reason,
                })
                .clone()
        };
        let filtered = |outcome| {
            m.filtered
                .get_or_create(&SubscriptionOutcome {
                    subscription: name.to_string(),
                    outcome,
                })
                .clone()
        };
        SubscriptionMetrics {
            attempts_delivered: attempts("delivered"),
            attempts_retry: attempts("retry"),
            attempts_failed: attempts("failed"),
            attempts_timeout: attempts("timeout"),
            attempts_connect_error: attempts("connect_error"),
            attempts_egress_denied: attempts("egress_denied"),
            attempt_duration: m.delivery_attempt_duration.get_or_create(&label).clone(),
            end_to_end: m.delivery_end_to_end.get_or_create(&label).clone(),
            delivered: m.delivered.get_or_create(&label).clone(),
            dead_letters_failed: dead_letters("failed"),
            dead_letters_exhausted: dead_letters("exhausted"),
            dead_letters_undeliverable: dead_letters("undeliverable"),
            filtered_skipped: filtered("skipped"),
            filtered_error: filtered("error"),
            in_flight: m.in_flight.get_or_create(&label).clone(),
            concurrency_limit: m.concurrency_limit.get_or_create(&label).clone(),
            breaker_open: m.breaker_open.get_or_create(&label).clone(),
        }
    }
}

/// Labels of one subscription.
pub fn subscription(name: &str) -> SubscriptionLabel {
    SubscriptionLabel {
        subscription: name.to_string(),
    }
}

/// Seconds, for histograms.
pub fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl ProcessMetrics {
    /// Reads /proc/self (Linux); elsewhere the values stay 0.
    fn refresh(&self) {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return;
        };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as i64;
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            let total = (utime + stime) as f64 / ticks;
            let delta = total - self.cpu_seconds.get();
            if delta > 0.0 {
                self.cpu_seconds.inc_by(delta);
            }
        }
        if let Some(rss_pages) = field(24) {
            self.resident_memory_bytes.set(rss_pages as i64 * page);
        }
        if let (Some(start_ticks), Some(boot)) = (field(22), boot_time()) {
            self.start_time_seconds
                .set(boot + (start_ticks as f64 / ticks) as i64);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct passed.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            self.max_fds.set(limit.rlim_cur.min(i64::MAX as u64) as i64);
        }
    }
}

/// The system's boot time, seconds since the Unix epoch (`btime` of /proc/stat).
fn boot_time() -> Option<i64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}
