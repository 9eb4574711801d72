//! Checks serde cannot make: names the brokers would reject, duplicates, URLs, secrets,
//! bounds. Every problem is collected, so one run of `check-config` shows them all.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use super::{
    Config, ExtractorConfig, PayloadMode, Problem, Secret, SubscriptionConfig, VerifyConfig,
    redact_url,
};
use crate::standard_webhooks;

pub fn check(config: &Config) -> Vec<Problem> {
    let mut problems = Problems::default();
    check_broker(config, &mut problems);
    check_server(config, &mut problems);
    let mut route_names = HashSet::new();
    for (i, route) in config.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        problems.name(&format!("{at}.name"), &route.name, "route");
        if !route_names.insert(route.name.as_str()) {
            problems.add(
                format!("{at}.name"),
                format!("route `{}` is defined twice", route.name),
            );
        }
        problems.topic(&format!("{at}.topic"), &route.topic);
        check_verify(&format!("{at}.verify"), &route.verify, &mut problems);
        if let Some(extractor) = &route.event_type {
            check_extractor(&format!("{at}.event_type"), extractor, &mut problems);
        }
        if let Some(extractor) = &route.key {
            check_extractor(&format!("{at}.key"), extractor, &mut problems);
        }
        if let Some(idem) = &route.idempotency {
            let path = format!("{at}.idempotency");
            match (&idem.header, &idem.json) {
                (Some(header), None) => problems.header(&format!("{path}.header"), header),
                (None, Some(pointer)) => problems.pointer(&format!("{path}.json"), pointer),
                _ => problems.add(path, "set exactly one of `header` or `json`"),
            }
        }
        problems.positive(&format!("{at}.publish_timeout"), route.publish_timeout.0);
        for (j, header) in route.drop_headers.iter().enumerate() {
            problems.header(&format!("{at}.drop_headers[{j}]"), header);
        }
    }
    let mut subscription_names = HashSet::new();
    for (i, sub) in config.subscriptions.iter().enumerate() {
        let at = format!("subscriptions[{i}]");
        problems.name(&format!("{at}.name"), &sub.name, "subscription");
        if !subscription_names.insert(sub.name.as_str()) {
            problems.add(
                format!("{at}.name"),
                format!("subscription `{}` is defined twice", sub.name),
            );
        }
        check_subscription(&at, sub, &mut problems);
        if let Some(tenant) = config
            .server
            .tenants
            .iter()
            .find(|t| sub.name.starts_with(&format!("{}.", t.name)))
        {
            // A tenant's subscriptions are named so: one of the file's would shadow one.
            problems.add(
                format!("{at}.name"),
                format!(
                    "`{}.` begins the names of tenant `{}`'s subscriptions; give this one another name",
                    tenant.name, tenant.name
                ),
            );
        }
    }
    problems.0
}

/// The checks of one subscription on its own, its keys named as within it (`url`,
/// `retry.max_attempts`): for one given to the admin API.
pub fn subscription(sub: &SubscriptionConfig) -> Vec<Problem> {
    let mut problems = Problems::default();
    problems.name("name", &sub.name, "subscription");
    check_subscription("", sub, &mut problems);
    problems
        .0
        .into_iter()
        .map(|p| Problem::new(p.path.trim_start_matches('.'), p.message))
        .collect()
}

fn check_broker(config: &Config, problems: &mut Problems) {
    let broker = &config.broker;
    problems.partitions("broker.embedded.partitions", broker.embedded.partitions);
    problems.partitions("broker.kafka.partitions", broker.kafka.partitions);
    problems.partitions("broker.nats.partitions", broker.nats.partitions);
    if broker.kafka.replication_factor < 1 {
        problems.add("broker.kafka.replication_factor", "must be at least 1");
    }
    if broker.kafka.bootstrap_servers.trim().is_empty() {
        problems.add("broker.kafka.bootstrap_servers", "is empty");
    }
    check_kafka_properties(&broker.kafka.properties, problems);
    // A cluster is several URLs, comma-separated.
    for url in broker.nats.url.expose().split(',').map(str::trim) {
        if !(url.starts_with("nats://") || url.starts_with("tls://")) {
            problems.add(
                "broker.nats.url",
                format!("`{}` is not a nats:// or tls:// URL", redact_url(url)),
            );
        }
    }
    check_nats_auth(&broker.nats.auth, problems);
    problems.cert_and_key(
        "broker.nats.tls",
        &broker.nats.tls.cert,
        &broker.nats.tls.key,
    );
    if broker.nats.lease.0 < std::time::Duration::from_secs(1) {
        problems.add("broker.nats.lease", "must be at least 1s");
    }
    if broker.embedded.dir.as_os_str().is_empty() {
        problems.add("broker.embedded.dir", "is empty");
    }
    if let Some(age) = broker.embedded.retention.max_age {
        problems.positive("broker.embedded.retention.max_age", age.0);
    }
    if broker
        .embedded
        .retention
        .max_bytes
        .is_some_and(|b| b.0 == 0)
    {
        problems.add("broker.embedded.retention.max_bytes", "must be more than 0");
    }
}

/// librdkafka properties hookbridge's guarantees rest on: the assignment that gives
/// partition `p` of every topic of a subscription to one replica (ARCHITECTURE §6.1), and a
/// rebalance timeout that outlasts a handover's wait for the attempts on the wire.
fn check_kafka_properties(properties: &BTreeMap<String, Secret>, problems: &mut Problems) {
    for key in [
        "partition.assignment.strategy",
        "group.protocol",
        "group.remote.assignor",
    ] {
        if properties.contains_key(key) {
            problems.add(
                format!("broker.kafka.properties.{key}"),
                "is hookbridge's to set: replicas share a subscription's partitions by number (range assignment)",
            );
        }
    }
    let least = super::KAFKA_MAX_POLL_INTERVAL.as_millis();
    if let Some(value) = properties.get("max.poll.interval.ms")
        && value
            .expose()
            .trim()
            .parse::<u128>()
            .is_ok_and(|ms| ms < least)
    {
        problems.add(
            "broker.kafka.properties.max.poll.interval.ms",
            format!("must be at least {least} (a handover waits for the attempts on the wire, up to the longest timeout)"),
        );
    }
}

/// At most one way to authenticate, each complete. The creds file is read with the other
/// files (`crate::preflight::check_files`).
fn check_nats_auth(auth: &super::NatsAuthConfig, problems: &mut Problems) {
    if auth.ways() > 1 {
        problems.add(
            "broker.nats.auth",
            "set at most one of `creds`, `nkey_seed`, `user` + `password`, `token`",
        );
    }
    if auth.user.is_some() != auth.password.is_some() {
        problems.add("broker.nats.auth", "set both `user` and `password`");
    }
    if let Some(seed) = &auth.nkey_seed
        && nkeys::KeyPair::from_seed(seed.expose()).is_err()
    {
        // Never the value itself: it is a private key.
        problems.add(
            "broker.nats.auth.nkey_seed",
            "is not an nkey seed (a user seed starts with `SU`)",
        );
    }
}

fn check_server(config: &Config, problems: &mut Problems) {
    let server = &config.server;
    // Port 0 asks the OS for a free port, so two of them never collide.
    if server.listen == server.admin_listen && server.listen.port() != 0 {
        problems.add(
            "server.admin_listen",
            format!("is the same address as server.listen ({})", server.listen),
        );
    }
    // The /v1 admin routes pause delivery and send events again: open only to this host.
    if !server.admin_listen.ip().is_loopback() && server.admin_token.is_empty() {
        problems.add(
            "server.admin_token",
            format!(
                "is empty while server.admin_listen ({}) is not a loopback address: anyone who can reach it could pause subscriptions and resend events; set a token (HOOKBRIDGE_ADMIN_TOKEN in the default config) or listen on 127.0.0.1",
                server.admin_listen
            ),
        );
    }
    if server.max_body.0 == 0 {
        problems.add("server.max_body", "must be more than 0");
    }
    problems.positive("server.shutdown_timeout", server.shutdown_timeout.0);
    problems.positive("server.read_timeout", server.read_timeout.0);
    problems.positive("server.idle_timeout", server.idle_timeout.0);
    for (i, network) in server.egress.allow_networks.iter().enumerate() {
        if let Err(e) = crate::egress::Network::parse(network) {
            problems.add(format!("server.egress.allow_networks[{i}]"), e.to_string());
        }
    }
    if server.max_connections == 0 {
        problems.add("server.max_connections", "must be at least 1");
    }
    problems.cert_and_key("server.tls", &server.tls.cert, &server.tls.key);
    check_tenants(server, problems);
}

fn check_tenants(server: &super::ServerConfig, problems: &mut Problems) {
    if !server.tenants.is_empty() && server.admin_token.is_empty() {
        problems.add(
            "server.tenants",
            "need server.admin_token: without it the admin API is open to anyone who reaches it, and a tenant's token would bound nothing",
        );
    }
    let mut names = HashSet::new();
    let mut tokens = HashSet::from([server.admin_token.expose()]);
    for (i, tenant) in server.tenants.iter().enumerate() {
        let at = format!("server.tenants[{i}]");
        problems.name(&format!("{at}.name"), &tenant.name, "tenant");
        if tenant.name.contains('.') {
            // `<tenant>.<subscription>` must split one way only.
            problems.add(format!("{at}.name"), "a tenant name may not hold `.`");
        }
        if !names.insert(tenant.name.as_str()) {
            problems.add(
                format!("{at}.name"),
                format!("tenant `{}` is defined twice", tenant.name),
            );
        }
        problems.secret(&format!("{at}.token"), tenant.token.expose());
        if !tenant.token.is_empty() && !tokens.insert(tenant.token.expose()) {
            problems.add(
                format!("{at}.token"),
                "is the token of server.admin_token or of another tenant: each needs its own",
            );
        }
        if tenant.topics.is_empty() {
            problems.add(format!("{at}.topics"), "names no topic glob");
        }
        for (j, glob) in tenant.topics.iter().enumerate() {
            if glob.is_empty()
                || !glob
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*' | '?'))
            {
                problems.add(
                    format!("{at}.topics[{j}]"),
                    format!("`{glob}`: a topic glob may only hold letters, digits, `-`, `_`, `.`, `*` and `?`"),
                );
            }
        }
    }
}

fn check_verify(path: &str, verify: &VerifyConfig, problems: &mut Problems) {
    match verify {
        VerifyConfig::None => {}
        VerifyConfig::Token { header, value } => {
            problems.header(&format!("{path}.header"), header);
            problems.secret(&format!("{path}.value"), value.expose());
        }
        VerifyConfig::HmacSha256 { secret, header, .. } => {
            problems.secret(&format!("{path}.secret"), secret.expose());
            problems.header(&format!("{path}.header"), header);
        }
        VerifyConfig::Github { secret } => {
            problems.secret(&format!("{path}.secret"), secret.expose())
        }
        VerifyConfig::Stripe { secret, tolerance } | VerifyConfig::Slack { secret, tolerance } => {
            problems.secret(&format!("{path}.secret"), secret.expose());
            problems.positive(&format!("{path}.tolerance"), tolerance.0);
        }
        VerifyConfig::StandardWebhooks { secret, tolerance } => {
            problems.webhook_secret(&format!("{path}.secret"), secret.expose());
            problems.positive(&format!("{path}.tolerance"), tolerance.0);
        }
    }
}

fn check_extractor(path: &str, extractor: &ExtractorConfig, problems: &mut Problems) {
    match (&extractor.header, &extractor.json, &extractor.value) {
        (Some(header), None, None) => problems.header(&format!("{path}.header"), header),
        (None, Some(pointer), None) => problems.pointer(&format!("{path}.json"), pointer),
        (None, None, Some(_)) => {
            if extractor.default.is_some() {
                problems.add(
                    format!("{path}.default"),
                    "a constant `value` needs no default",
                );
            }
        }
        _ => problems.add(path, "set exactly one of `header`, `json` or `value`"),
    }
}

fn check_subscription(at: &str, sub: &SubscriptionConfig, problems: &mut Problems) {
    if sub.topics.is_empty() {
        problems.add(format!("{at}.topics"), "names no topic");
    }
    for (j, topic) in sub.topics.iter().enumerate() {
        problems.topic(&format!("{at}.topics[{j}]"), topic);
    }
    // Parsed as the delivery client parses it (stricter than `http::Uri`: a port past
    // 65535, say), so that no URL passes here that delivery cannot use.
    match url::Url::parse(sub.url.expose()) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
        Ok(_) => problems.add(
            format!("{at}.url"),
            format!("`{}` is not an http:// or https:// URL", sub.url),
        ),
        Err(e) => problems.add(
            format!("{at}.url"),
            format!("`{}` is not an http:// or https:// URL: {e}", sub.url),
        ),
    }
    if let Some(filter) = &sub.filter {
        if filter.types.is_empty() && filter.expression.is_none() {
            problems.add(
                format!("{at}.filter"),
                "has neither `types` nor `expression`; leave `filter` out to deliver every event",
            );
        }
        if let Some(expression) = &filter.expression
            && let Err(e) = crate::expression::Expression::compile(expression)
        {
            problems.add(format!("{at}.filter.expression"), e.to_string());
        }
        for (j, glob) in filter.types.iter().enumerate() {
            if glob.is_empty() {
                problems.add(format!("{at}.filter.types[{j}]"), "is empty");
            }
        }
    }
    if let Some(expression) = &sub.transform.expression {
        if let Err(e) = crate::expression::Expression::compile(expression) {
            problems.add(format!("{at}.transform.expression"), e.to_string());
        }
        if sub.payload == PayloadMode::EnvelopeJson {
            problems.add(
                format!("{at}.transform"),
                "replaces the body, which `payload: envelope_json` does not send alone; use `payload: raw` or `cloudevents`",
            );
        }
    }
    if let Some(signing) = &sub.signing {
        let secrets = signing.all_secrets();
        if secrets.is_empty() {
            problems.add(format!("{at}.signing"), "set `secret` or `secrets`");
        }
        if signing.secret.is_some() {
            problems.webhook_secret(
                &format!("{at}.signing.secret"),
                signing.secret.as_ref().map_or("", Secret::expose),
            );
        }
        for (j, secret) in signing.secrets.iter().flatten().enumerate() {
            problems.webhook_secret(&format!("{at}.signing.secrets[{j}]"), secret.expose());
        }
    }
    for (j, header) in sub.forward_headers.iter().enumerate() {
        problems.header(&format!("{at}.forward_headers[{j}]"), header);
    }
    if sub.max_in_flight == 0 {
        problems.add(format!("{at}.max_in_flight"), "must be at least 1");
    }
    if let Some(rate) = &sub.rate_limit {
        if !(rate.per_second.is_finite() && rate.per_second > 0.0) {
            problems.add(format!("{at}.rate_limit.per_second"), "must be more than 0");
        }
        if rate.burst == Some(0) {
            problems.add(format!("{at}.rate_limit.burst"), "must be at least 1");
        }
    }
    problems.positive(&format!("{at}.timeout"), sub.timeout.0);
    if sub.timeout.0 > super::MAX_ATTEMPT_TIMEOUT {
        problems.add(
            format!("{at}.timeout"),
            format!(
                "must be at most {}s (a partition's handover waits for the attempts on the wire)",
                super::MAX_ATTEMPT_TIMEOUT.as_secs()
            ),
        );
    }
    let retry = &sub.retry;
    if retry.max_attempts == 0 {
        problems.add(format!("{at}.retry.max_attempts"), "must be at least 1");
    }
    problems.positive(
        &format!("{at}.retry.initial_backoff"),
        retry.initial_backoff.0,
    );
    problems.positive(&format!("{at}.retry.max_age"), retry.max_age.0);
    problems.positive(&format!("{at}.retry.park_after"), retry.park_after.0);
    if retry.initial_backoff > retry.max_backoff {
        problems.add(
            format!("{at}.retry.max_backoff"),
            "is shorter than retry.initial_backoff",
        );
    }
    if sub.breaker.failures == 0 {
        problems.add(format!("{at}.breaker.failures"), "must be at least 1");
    }
    problems.positive(&format!("{at}.breaker.cool_down"), sub.breaker.cool_down.0);
    let dead_letter = sub.dead_letter_topic();
    problems.topic(&format!("{at}.dead_letter_topic"), &dead_letter);
    if sub.topics.contains(&dead_letter) {
        problems.add(
            format!("{at}.dead_letter_topic"),
            format!(
                "`{dead_letter}` is also a topic of this subscription; dead letters would loop"
            ),
        );
    }
    let parking = sub.parking_topic();
    problems.topic(&format!("{at}.parking_topic"), &parking);
    if sub.topics.contains(&parking) || parking == dead_letter {
        problems.add(
            format!("{at}.parking_topic"),
            format!(
                "`{parking}` is also a topic or the dead-letter topic of this subscription; parked events would be delivered twice"
            ),
        );
    }
    check_static_headers(at, sub, problems);
    // The files themselves are read where they are mounted: at start-up and by
    // `check-config` (`crate::preflight::check_files`).
    problems.cert_and_key(&format!("{at}.tls"), &sub.tls.cert, &sub.tls.key);
    let resend = sub.resend_topic();
    if sub.topics.contains(&resend) || [&dead_letter, &parking].contains(&&resend) {
        problems.add(
            format!("{at}.topics"),
            format!(
                "`{resend}` is this subscription's resend topic (redrives and replays); it cannot be one of its topics, its dead-letter or its parking topic"
            ),
        );
    }
}

/// Headers hookbridge sets itself on every attempt: a static header cannot replace them
/// (the signature covers `webhook-id` and `webhook-timestamp`; the others are the
/// protocol's or the trace's).
const OWN_HEADERS: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "traceparent",
    "hookbridge-attempt",
];

fn check_static_headers(at: &str, sub: &SubscriptionConfig, problems: &mut Problems) {
    for (name, value) in &sub.headers {
        let key = format!("{at}.headers.{name}");
        let Ok(header) = http::HeaderName::from_bytes(name.as_bytes()) else {
            problems.add(key, format!("`{name}` is not a valid HTTP header name"));
            continue;
        };
        if OWN_HEADERS.contains(&header.as_str()) {
            problems.add(
                key,
                "is set by hookbridge on every attempt; it cannot be replaced",
            );
            continue;
        }
        if header == http::header::AUTHORIZATION && sub.url.expose().contains('@') {
            problems.add(
                key.clone(),
                "is also given by the URL's user info; set one of the two",
            );
        }
        // The value is a secret: the message says what is wrong, never what it is.
        if http::HeaderValue::from_str(value.expose()).is_err() {
            problems.add(
                key,
                "holds a character an HTTP header value cannot (a line break or a control character)",
            );
        }
    }
}

/// Collects problems, with one helper per kind of check so messages stay uniform.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem::new(path, message));
    }

    /// Route and subscription names appear in URLs, consumer group and topic names.
    fn name(&mut self, path: &str, name: &str, what: &str) {
        if name.is_empty() || name.len() > 128 {
            self.add(path, format!("a {what} name must have 1 to 128 characters"));
        } else if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            self.add(
                path,
                format!("`{name}`: a {what} name may only hold letters, digits, `-`, `_` and `.`"),
            );
        }
    }

    /// The strictest of the backends' rules (Kafka's): NATS and the embedded log accept
    /// every name Kafka does.
    fn topic(&mut self, path: &str, topic: &str) {
        if topic.is_empty() || topic.len() > 249 {
            self.add(path, "a topic name must have 1 to 249 characters");
        } else if topic == "." || topic == ".." {
            self.add(path, format!("`{topic}` is not a valid topic name"));
        } else if !topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            self.add(
                path,
                format!("`{topic}`: a topic name may only hold letters, digits, `-`, `_` and `.`"),
            );
        } else if topic.starts_with('.') || topic.ends_with('.') || topic.contains("..") {
            // NATS subjects are `<topic>.<partition>`: empty tokens are not allowed there.
            self.add(
                path,
                format!("`{topic}`: a topic name may not start or end with `.` or hold `..`"),
            );
        }
    }

    fn header(&mut self, path: &str, name: &str) {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.add(path, format!("`{name}` is not a valid HTTP header name"));
        }
    }

    fn pointer(&mut self, path: &str, pointer: &str) {
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            self.add(
                path,
                format!("`{pointer}` is not a JSON pointer; it must start with `/` (e.g. `/type`)"),
            );
        }
    }

    fn secret(&mut self, path: &str, secret: &str) {
        if secret.trim().is_empty() {
            self.add(
                path,
                "the secret is empty (is its environment variable set?)",
            );
        }
    }

    fn webhook_secret(&mut self, path: &str, secret: &str) {
        if secret.trim().is_empty() {
            self.secret(path, secret);
        } else if let Err(e) = standard_webhooks::Secret::parse(secret) {
            self.add(path, e.to_string());
        }
    }

    /// A certificate goes with its key: both or neither.
    fn cert_and_key(&mut self, path: &str, cert: &Option<PathBuf>, key: &Option<PathBuf>) {
        if cert.is_some() != key.is_some() {
            self.add(path, "set both `cert` and `key`, or neither");
        }
    }

    fn positive(&mut self, path: &str, duration: Duration) {
        if duration.is_zero() {
            self.add(path, "must be longer than 0");
        }
    }

    fn partitions(&mut self, path: &str, partitions: u32) {
        if !(1..=4096).contains(&partitions) {
            self.add(path, "must be between 1 and 4096");
        }
    }
}
