//! The configuration contract (ARCHITECTURE.md §3): the YAML file an operator writes.
//!
//! This module holds only the shape of the file and its defaults. `load` turns a file into
//! a [`Config`] (environment substitution, parsing, key paths in errors) and `validate`
//! checks what serde cannot (duplicates, names the brokers reject, URLs, secrets).
//! Runtime components take the parts they need from here and build their own state; they
//! never hold on to the YAML.

mod load;
mod secret;
mod stored;
pub mod units;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use load::{ConfigError, Problem, load_file, load_str, yaml_tree};
pub use secret::{CredentialedUrl, Secret, redact_url};
pub use stored::{SpecError, StoredSubscription};
pub use units::{ByteSize, ConfigDuration, StatusMatch};

/// The default configuration: the embedded broker and a `demo` route. `hookbridge serve`
/// without `--config` runs on this, so it works on a machine with nothing else installed.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/hookbridge.yaml");
/// How the compiled-in default is named in error messages.
pub const DEFAULT_CONFIG_NAME: &str = "<built-in config/hookbridge.yaml>";

/// The longest a subscription's `timeout` may be. Handing a partition over waits for the
/// attempts on the wire, so a request allowed to take longer would hold every rebalance
/// and handover of its group that long (Kafka's revocation waits `timeout` + a commit,
/// under `max.poll.interval.ms`).
pub const MAX_ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The least `max.poll.interval.ms` a Kafka consumer may have (librdkafka's rebalance
/// timeout): a revocation waits for the attempts on the wire, up to `MAX_ATTEMPT_TIMEOUT`
/// and the last commits, and the member must be back in the group within it.
pub const KAFKA_MAX_POLL_INTERVAL: std::time::Duration =
    MAX_ATTEMPT_TIMEOUT.saturating_add(std::time::Duration::from_secs(90));

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub broker: BrokerConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionConfig>,
}

impl Config {
    /// Every topic the config names: routes', subscriptions', dead-letter, parking and
    /// resend topics, each once.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.routes.iter().map(|r| r.topic.clone()).collect();
        for sub in &self.subscriptions {
            topics.extend(sub.topics.iter().cloned());
            topics.push(sub.dead_letter_topic());
            topics.push(sub.parking_topic());
            topics.push(sub.resend_topic());
            if sub.attempt_log != AttemptLogMode::Off {
                topics.push(sub.attempt_topic());
            }
        }
        topics.sort();
        topics.dedup();
        topics
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerKind {
    #[default]
    Embedded,
    Kafka,
    Nats,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    #[serde(default)]
    pub kind: BrokerKind,
    #[serde(default)]
    pub embedded: EmbeddedConfig,
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub nats: NatsConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    #[serde(default = "defaults::data_dir")]
    pub dir: PathBuf,
    /// Partitions of topics the embedded broker creates.
    #[serde(default = "defaults::partitions", deserialize_with = "units::number")]
    pub partitions: u32,
    #[serde(default)]
    pub retention: RetentionConfig,
}

/// How long the embedded log keeps records, whatever consumers have read (as Kafka's
/// `retention.ms` / `retention.bytes`, per partition).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    #[serde(default = "defaults::retention_age")]
    pub max_age: Option<ConfigDuration>,
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    #[serde(default = "defaults::kafka_bootstrap")]
    pub bootstrap_servers: String,
    #[serde(default = "defaults::partitions", deserialize_with = "units::number")]
    pub partitions: u32,
    #[serde(
        default = "defaults::replication_factor",
        deserialize_with = "units::number"
    )]
    pub replication_factor: i16,
    /// Passed through to librdkafka as they are (SASL, TLS, tuning). Values are redacted
    /// in `Debug` output: many are passwords and keys.
    #[serde(default)]
    pub properties: BTreeMap<String, Secret>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    #[serde(default = "defaults::nats_url")]
    pub url: CredentialedUrl,
    #[serde(default = "defaults::partitions", deserialize_with = "units::number")]
    pub partitions: u32,
    /// How long a replica's claim on a partition lasts without renewal: a dead replica's
    /// partitions move to the others within this.
    #[serde(default = "defaults::lease")]
    pub lease: ConfigDuration,
    /// How hookbridge proves itself to the server: at most one way.
    #[serde(default)]
    pub auth: NatsAuthConfig,
    /// `ca` to trust the server's private CA; `cert` + `key` when the server verifies
    /// clients (`--tlsverify`). Either makes TLS required.
    #[serde(default)]
    pub tls: TlsConfig,
}

/// NATS credentials, each as the NATS server and its tools name them.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsAuthConfig {
    /// A `.creds` file (user JWT + nkey seed), as operator-mode servers and managed NATS
    /// hand out; read again on every (re)connect, so a rotated file is picked up.
    #[serde(default)]
    pub creds: Option<PathBuf>,
    /// A user nkey seed (`SU...`).
    #[serde(default)]
    pub nkey_seed: Option<Secret>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub token: Option<Secret>,
}

impl NatsAuthConfig {
    /// How many ways to authenticate are (even partly) set: `creds`, `nkey_seed`,
    /// `user` + `password`, `token`. At most one is valid; none means anonymous.
    pub fn ways(&self) -> usize {
        [
            self.creds.is_some(),
            self.nkey_seed.is_some(),
            self.user.is_some() || self.password.is_some(),
            self.token.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    #[serde(default = "defaults::admin_listen")]
    pub admin_listen: SocketAddr,
    #[serde(default = "defaults::max_body")]
    pub max_body: ByteSize,
    /// Bearer token for the `/v1/*` admin routes; empty means none is required.
    #[serde(default)]
    pub admin_token: Secret,
    /// How long a graceful shutdown waits for in-flight work before it gives up.
    #[serde(default = "defaults::shutdown_timeout")]
    pub shutdown_timeout: ConfigDuration,
    /// A request's head and its body must each arrive within this: a slow sender gets a
    /// 408 (or, before its head is complete, a closed connection) instead of holding the
    /// ingress.
    #[serde(default = "defaults::read_timeout")]
    pub read_timeout: ConfigDuration,
    /// An ingress connection with no request open for this long is closed (HTTP/1 or
    /// HTTP/2), so idle connections cannot hold `max_connections`.
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: ConfigDuration,
    /// Ingress connections open at once; past it new senders wait to be accepted.
    #[serde(
        default = "defaults::max_connections",
        deserialize_with = "units::number"
    )]
    pub max_connections: u32,
    /// `cert` and `key`: the ingress serves HTTPS (HTTP/1.1 and HTTP/2 by ALPN).
    #[serde(default)]
    pub tls: ServerTlsConfig,
    /// Which addresses deliveries may reach (see `crate::egress`).
    #[serde(default)]
    pub egress: EgressConfig,
    /// Application teams that manage their own subscriptions through the admin API.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
}

/// `server.tenants[]`: a team whose token manages only its own subscriptions (stored as
/// `<name>.<subscription>`), on the topics its globs allow.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    pub token: Secret,
    /// Globs on topic names (`*` any run of characters, `?` one character).
    pub topics: Vec<String>,
}

impl TenantConfig {
    /// Whether the tenant's globs allow `topic`.
    pub fn allows(&self, topic: &str) -> bool {
        self.topics
            .iter()
            .any(|glob| crate::glob::matches(glob, topic))
    }
}

/// `server.egress`: the guard on where deliveries connect.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// CIDRs deliveries may reach although they are loopback, private or link-local.
    #[serde(default)]
    pub allow_networks: Vec<String>,
    /// Guard the config file's own subscriptions too (they are the operator's, so not by
    /// default).
    #[serde(default)]
    pub guard_config: bool,
}

impl EgressConfig {
    /// The guard for the config file's subscriptions: none unless `guard_config`.
    pub fn config_guard(&self) -> Option<std::sync::Arc<crate::egress::EgressGuard>> {
        self.guard_config.then(|| self.guard())
    }

    /// The guard of every subscription made through the admin API.
    pub fn guard(&self) -> std::sync::Arc<crate::egress::EgressGuard> {
        let allow = self
            .allow_networks
            .iter()
            .map(|n| crate::egress::Network::parse(n).expect("validated network"))
            .collect();
        std::sync::Arc::new(crate::egress::EgressGuard::new(allow))
    }
}

/// The ingress's certificate chain and private key, as PEM files, re-read when they
/// change (see `crate::tls`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl ServerTlsConfig {
    pub fn is_empty(&self) -> bool {
        self.cert.is_none() && self.key.is_none()
    }
}

/// A client's TLS material, as PEM files: `ca` (trusted in addition to the system's roots)
/// and `cert` + `key` (its certificate, for mutual TLS). The files are re-read when they
/// change (see `crate::tls`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl TlsConfig {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Served at `POST /hooks/{name}`.
    pub name: String,
    pub topic: String,
    pub verify: VerifyConfig,
    #[serde(default)]
    pub event_type: Option<ExtractorConfig>,
    #[serde(default)]
    pub key: Option<ExtractorConfig>,
    #[serde(default)]
    pub idempotency: Option<IdempotencyConfig>,
    #[serde(default = "defaults::publish_timeout")]
    pub publish_timeout: ConfigDuration,
    /// Request headers left out of the envelope, on top of the hop-by-hop ones,
    /// `authorization`, `cookie` and the header a `token` verifier reads.
    #[serde(default)]
    pub drop_headers: Vec<String>,
}

/// How a route authenticates its sender.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum VerifyConfig {
    /// Anyone may post. For internal senders behind other protection, and demos.
    None,
    /// A shared token in a header, compared in constant time.
    Token { header: String, value: Secret },
    /// HMAC-SHA256 of the body in a header (Shopify and many others).
    HmacSha256 {
        secret: Secret,
        header: String,
        #[serde(default)]
        prefix: String,
        #[serde(default)]
        encoding: SignatureEncoding,
    },
    /// GitHub's `X-Hub-Signature-256: sha256=<hex>`.
    Github { secret: Secret },
    /// Stripe's `Stripe-Signature: t=...,v1=...`.
    Stripe {
        secret: Secret,
        #[serde(default = "defaults::tolerance")]
        tolerance: ConfigDuration,
    },
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    StandardWebhooks {
        secret: Secret,
        #[serde(default = "defaults::tolerance")]
        tolerance: ConfigDuration,
    },
    /// Slack's `X-Slack-Signature: v0=<hex>` over `v0:<timestamp>:<body>`.
    Slack {
        secret: Secret,
        #[serde(default = "defaults::tolerance")]
        tolerance: ConfigDuration,
    },
}

impl VerifyConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyConfig::None => "none",
            VerifyConfig::Token { .. } => "token",
            VerifyConfig::HmacSha256 { .. } => "hmac_sha256",
            VerifyConfig::Github { .. } => "github",
            VerifyConfig::Stripe { .. } => "stripe",
            VerifyConfig::StandardWebhooks { .. } => "standard_webhooks",
            VerifyConfig::Slack { .. } => "slack",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureEncoding {
    #[default]
    Hex,
    Base64,
}

/// Where a value comes from: exactly one of `header`, `json` (a JSON pointer into the
/// body) or `value` (a constant).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractorConfig {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub json: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    /// Used when the header or pointer is absent; without it, absence is a 422.
    #[serde(default)]
    pub default: Option<String>,
}

/// The sender's delivery id, from which the envelope id is derived.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub json: Option<String>,
    /// Reject requests without it (400) instead of giving them a fresh id.
    #[serde(default, deserialize_with = "units::boolean")]
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    pub name: String,
    pub topics: Vec<String>,
    pub url: CredentialedUrl,
    #[serde(default)]
    pub filter: Option<FilterConfig>,
    #[serde(default)]
    pub transform: TransformConfig,
    #[serde(default)]
    pub signing: Option<SigningConfig>,
    #[serde(default)]
    pub forward_headers: Vec<String>,
    #[serde(default)]
    pub payload: PayloadMode,
    #[serde(default)]
    pub ordering: OrderingMode,
    #[serde(
        default = "defaults::max_in_flight",
        deserialize_with = "units::number"
    )]
    pub max_in_flight: u32,
    /// `adaptive`: requests on the wire follow the receiver's capacity, between 1 and
    /// `max_in_flight`; `fixed`: `max_in_flight`.
    #[serde(default)]
    pub concurrency: ConcurrencyMode,
    /// Which attempts are written to `hookbridge.attempts.<name>`, to be searched.
    #[serde(default)]
    pub attempt_log: AttemptLogMode,
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default = "defaults::delivery_timeout")]
    pub timeout: ConfigDuration,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Default: `hookbridge.dlq.<name>`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Where a key failing longer than `retry.park_after` goes on retrying (G8). Default:
    /// `hookbridge.park.<name>`.
    #[serde(default)]
    pub parking_topic: Option<String>,
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Static headers sent with every attempt (an `Authorization` the receiver demands, an
    /// API key): values are secrets, never logged or shown.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// `ca` to trust a private CA besides the system's roots; `cert` + `key` for mutual TLS.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Where it was defined: the operator's file, or the admin API. Not a key of the file.
    #[serde(skip)]
    pub source: Source,
}

/// Where a subscription was defined.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Source {
    /// The operator's config file.
    #[default]
    Config,
    /// The admin API, by the operator (`tenant: None`) or by a tenant.
    Api { tenant: Option<String> },
}

/// The circuit breaker: after `failures` consecutive failed attempts, no request goes to
/// the endpoint for `cool_down`; then one probe decides.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    #[serde(
        default = "defaults::breaker_failures",
        deserialize_with = "units::number"
    )]
    pub failures: u32,
    #[serde(default = "defaults::breaker_cool_down")]
    pub cool_down: ConfigDuration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: defaults::breaker_failures(),
            cool_down: defaults::breaker_cool_down(),
        }
    }
}

impl SubscriptionConfig {
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("hookbridge.dlq.{}", self.name))
    }

    /// Where an operator's redrives and replays put the events this subscription sends
    /// again; only its own group reads it.
    pub fn resend_topic(&self) -> String {
        format!("hookbridge.resend.{}", self.name)
    }

    /// Where its attempts are written (`attempt_log`).
    pub fn attempt_topic(&self) -> String {
        format!("hookbridge.attempts.{}", self.name)
    }

    pub fn parking_topic(&self) -> String {
        self.parking_topic
            .clone()
            .unwrap_or_else(|| format!("hookbridge.park.{}", self.name))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Globs on the event type (`*` any run of characters, `?` one character).
    #[serde(default)]
    pub types: Vec<String>,
    /// CEL over the event (see `expression`): true delivers it. With `types`, both must
    /// hold.
    #[serde(default)]
    pub expression: Option<String>,
}

/// `transform: {}` (the default) sends the body as it came.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// CEL over the event (see `expression`) whose value (a map, list or string) is sent
    /// as the JSON body.
    #[serde(default)]
    pub expression: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Several secrets while rotating: every one signs, the receiver accepts any.
    #[serde(default)]
    pub secrets: Option<Vec<Secret>>,
}

impl SigningConfig {
    pub fn all_secrets(&self) -> Vec<Secret> {
        let mut all: Vec<Secret> = self.secret.iter().cloned().collect();
        all.extend(self.secrets.iter().flatten().cloned());
        all
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadMode {
    #[default]
    Raw,
    EnvelopeJson,
    Cloudevents,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderingMode {
    #[default]
    Key,
    Partition,
    None,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptLogMode {
    Off,
    /// Every attempt that did not deliver.
    #[default]
    Failures,
    All,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConcurrencyMode {
    #[default]
    Adaptive,
    Fixed,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(deserialize_with = "units::number")]
    pub per_second: f64,
    #[serde(default, deserialize_with = "optional_number")]
    pub burst: Option<u32>,
}

fn optional_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    units::number(d).map(Some)
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default = "defaults::initial_backoff")]
    pub initial_backoff: ConfigDuration,
    #[serde(default = "defaults::max_backoff")]
    pub max_backoff: ConfigDuration,
    #[serde(default = "defaults::max_attempts", deserialize_with = "units::number")]
    pub max_attempts: u32,
    #[serde(default = "defaults::max_age")]
    pub max_age: ConfigDuration,
    /// A key still failing this long is parked (G8).
    #[serde(default = "defaults::park_after")]
    pub park_after: ConfigDuration,
    /// Answers that refuse the event itself, not the endpoint failing: the event is
    /// dead-lettered at once, and the breaker counts the answer as the endpoint's (it is up
    /// and answering). Every other answer but 2xx is retried and counts against the
    /// breaker, 401 and 404 included (credentials or a route that broke come back).
    #[serde(default = "defaults::dead_letter_on")]
    pub dead_letter_on: Vec<StatusMatch>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: defaults::initial_backoff(),
            max_backoff: defaults::max_backoff(),
            max_attempts: defaults::max_attempts(),
            max_age: defaults::max_age(),
            park_after: defaults::park_after(),
            dead_letter_on: defaults::dead_letter_on(),
        }
    }
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            dir: defaults::data_dir(),
            partitions: defaults::partitions(),
            retention: RetentionConfig::default(),
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age: defaults::retention_age(),
            max_bytes: None,
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: defaults::kafka_bootstrap(),
            partitions: defaults::partitions(),
            replication_factor: defaults::replication_factor(),
            properties: BTreeMap::new(),
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: defaults::nats_url(),
            partitions: defaults::partitions(),
            lease: defaults::lease(),
            auth: NatsAuthConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: defaults::listen(),
            admin_listen: defaults::admin_listen(),
            max_body: defaults::max_body(),
            admin_token: Secret::default(),
            shutdown_timeout: defaults::shutdown_timeout(),
            read_timeout: defaults::read_timeout(),
            idle_timeout: defaults::idle_timeout(),
            max_connections: defaults::max_connections(),
            tls: ServerTlsConfig::default(),
            egress: EgressConfig::default(),
            tenants: Vec::new(),
        }
    }
}

/// Every default of the contract, in one place.
mod defaults {
    use super::{ByteSize, ConfigDuration, CredentialedUrl, StatusMatch};
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::time::Duration;

    pub fn data_dir() -> PathBuf {
        PathBuf::from("./data")
    }
    pub fn partitions() -> u32 {
        8
    }
    pub fn retention_age() -> Option<ConfigDuration> {
        Some(ConfigDuration(Duration::from_secs(7 * 86_400)))
    }
    pub fn replication_factor() -> i16 {
        1
    }
    pub fn kafka_bootstrap() -> String {
        "127.0.0.1:9092".into()
    }
    pub fn nats_url() -> CredentialedUrl {
        CredentialedUrl::new("nats://127.0.0.1:4222")
    }
    pub fn lease() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(10))
    }
    pub fn listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 8080))
    }
    pub fn admin_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9090))
    }
    pub fn max_body() -> ByteSize {
        ByteSize(1 << 20)
    }
    pub fn shutdown_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(30))
    }
    pub fn read_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(10))
    }
    pub fn idle_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(60))
    }
    pub fn max_connections() -> u32 {
        4096
    }
    pub fn publish_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(5))
    }
    pub fn tolerance() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(300))
    }
    pub fn max_in_flight() -> u32 {
        64
    }
    pub fn delivery_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(10))
    }
    pub fn initial_backoff() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(1))
    }
    pub fn max_backoff() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(600))
    }
    pub fn max_attempts() -> u32 {
        12
    }
    pub fn breaker_failures() -> u32 {
        10
    }
    pub fn breaker_cool_down() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(10))
    }
    pub fn max_age() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(86_400))
    }

    pub fn park_after() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(60))
    }

    /// Bad request, too large, unsupported media type, unprocessable: the receiver read the
    /// event and will not take it, however often it comes.
    pub fn dead_letter_on() -> Vec<StatusMatch> {
        [400, 413, 415, 422].map(StatusMatch::Code).to_vec()
    }
}
