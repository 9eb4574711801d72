//! hookbridge's end-to-end benchmark: one command, every backend, every scenario, with the
//! baselines that say how close hookbridge comes to what the machine and broker allow.
//!
//!   scripts/bench                          # all backends found on this machine
//!   scripts/bench --backends embedded --duration 5s
//!   scripts/bench --backends nats,kafka --only scale-out   # replicas, slow receiver (scale.rs)
//!   scripts/bench --results FILE           # also every result as a JSON line (results.rs)
//!
//! For each backend it starts hookbridge (the release binary next to this one), drives its
//! ingress with a keep-alive HTTP/1.1 load generator, runs the receiver, and prints
//! webhooks/s in, deliveries/s out, ingest and end-to-end latency percentiles, and the CPU
//! seconds and peak RSS of the hookbridge process. Baselines run in the same process under
//! the same load: a bare axum handler (the HTTP limit), a raw client publishing the same
//! records to the broker (the broker limit), and a bare HTTP client posting to the same
//! receiver (the delivery limit).

mod load;
mod peers;
mod process;
mod results;
mod scale;
mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use hookbridge::broker::{Publisher, Record};
use load::{Load, Receiver};
use process::{Hookbridge, Server};
use stats::Latencies;

#[derive(Parser, Debug)]
#[command(
    name = "hookbridge-bench",
    about = "End-to-end throughput and latency of hookbridge, against its limits"
)]
struct Args {
    /// Backends to measure: embedded, nats (starts nats-server), kafka (on --kafka-bootstrap,
    /// which scripts/bench starts).
    #[arg(long, value_delimiter = ',', default_values = ["embedded", "nats", "kafka"])]
    backends: Vec<String>,
    /// How long each scenario sends load.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Concurrent connections of the load generator (closed loop).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 512)]
    body_size: usize,
    /// Distinct partition keys.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Rates of the open-loop latency scenarios, requests per second: one scenario each,
    /// requests sent on a fixed schedule whatever the answers do, latency counted from when
    /// each was due (no coordinated omission).
    #[arg(long, value_delimiter = ',', default_values_t = [100, 350, 2000, 5000])]
    rates: Vec<u64>,
    /// Run only the scenarios whose title contains one of these words (e.g. `backlog`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Delivery alone again with this line added to the subscription (e.g. `filter: {
    /// expression: 'body.t > 0' }`; several keys on lines of their own), once per round,
    /// alternating with the plain one, two rounds: the CPU per event each adds. Repeatable.
    #[arg(long = "subscription", value_name = "YAML")]
    subscription_extras: Vec<String>,
    /// The Kafka cluster to measure on (scripts/bench starts an Apache Kafka node).
    #[arg(long)]
    kafka_bootstrap: Option<String>,
    /// The PID of that Kafka node, when it runs on this machine: its CPU and memory count
    /// for hookbridge on Kafka in the peers comparison (scripts/bench-peers passes it).
    #[arg(long)]
    kafka_pid: Option<u32>,
    /// Measure nothing: serve the bare handler (the HTTP limit: `POST /hooks/{route}`
    /// answered 202 unread) on this address until Ctrl-C, for an outside load generator
    /// such as wrk to compare with hookbridge under the same load.
    #[arg(long, value_name = "ADDR")]
    serve_bare: Option<std::net::SocketAddr>,
    /// Measure these systems side by side instead of the scenarios above: `svix` (needs
    /// --svix-server), `outpost` (needs --outpost-server), `embedded`, `nats`, `kafka`
    /// (hookbridge on each). `scripts/bench-peers` runs this with builds of the peers.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Svix server's binary, for `--peers svix`.
    #[arg(long, value_name = "PATH")]
    svix_server: Option<std::path::PathBuf>,
    /// PostgreSQL database Svix uses (created, empty, by scripts/bench-peers).
    #[arg(
        long,
        default_value = "postgresql://svix_bench:svix_bench@127.0.0.1:5432/svix_bench"
    )]
    svix_db_dsn: String,
    /// Redis Svix uses for its queue and cache.
    #[arg(long, default_value = "redis://127.0.0.1:6379/9")]
    svix_redis_dsn: String,
    /// Hookdeck Outpost's `outpost-server` binary, for `--peers outpost`; its CLI `outpost`,
    /// beside it, applies the migrations.
    #[arg(long, value_name = "PATH")]
    outpost_server: Option<std::path::PathBuf>,
    /// PostgreSQL database Outpost logs events and attempts to (created, empty, by
    /// scripts/bench-peers).
    #[arg(
        long,
        default_value = "postgres://outpost_bench:outpost_bench@127.0.0.1:5432/outpost_bench?sslmode=disable"
    )]
    outpost_postgres_url: String,
    /// Redis Outpost keeps its tenants, destinations and retries in, as
    /// `redis://HOST:PORT/DATABASE`.
    #[arg(long, default_value = "redis://127.0.0.1:6379/10")]
    outpost_redis_url: String,
    /// RabbitMQ Outpost's delivery and log queues live on.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672")]
    outpost_rabbitmq_url: String,
    /// Events of each peer's throughput run (closed loop).
    #[arg(long, default_value_t = 20_000)]
    events: u64,
    /// Rates of each peer's open-loop latency runs, per second (each for --duration; a
    /// comma-separated list, e.g. `100,200,500`, draws latency against rate).
    #[arg(long = "peer-rate", value_delimiter = ',', default_values_t = [200])]
    peer_rates: Vec<u64>,
    /// Replica counts of the scale-out scenario (`--only scale-out`; NATS and Kafka).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4])]
    scale_replicas: Vec<usize>,
    /// How long the scale-out scenario counts deliveries, once the replicas hold their
    /// partitions.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    scale_window: Duration,
    /// Also write every result as a JSON line to this file (`scripts/plots` draws from it;
    /// see bench/harness/results.rs).
    #[arg(long, value_name = "FILE")]
    results: Option<std::path::PathBuf>,
}

/// The longest a limit (bare handler, bare client, raw publish) is measured for.
const LIMIT_DURATION: Duration = Duration::from_secs(10);

fn parse_duration(text: &str) -> Result<Duration, String> {
    hookbridge::config::units::parse_duration(text)
}

/// One printed result line.
struct Row {
    backend: String,
    scenario: String,
    /// The open-loop rate, per second; `None` for a closed loop.
    rate: Option<u64>,
    sent: Option<load::Sent>,
    delivered_per_s: Option<f64>,
    e2e: Option<Latencies>,
    cpu_s: Option<f64>,
    peak_rss: Option<f64>,
    /// Limits to print this result's ratio to, by name.
    baselines: Vec<(&'static str, f64)>,
    /// Events the process handled, for its CPU time per event.
    events: Option<u64>,
}

impl Row {
    /// A measured limit: only its load-generator numbers.
    fn limit(backend: &str, scenario: &str, sent: load::Sent) -> Row {
        Row {
            backend: backend.to_string(),
            scenario: scenario.to_string(),
            rate: None,
            sent: Some(sent),
            delivered_per_s: None,
            e2e: None,
            cpu_s: None,
            peak_rss: None,
            baselines: Vec::new(),
            events: None,
        }
    }

    /// The row as a `--results` line: a limit has no delivery, CPU or memory.
    fn record(&mut self) {
        let kind = if self.cpu_s.is_none() {
            "limit"
        } else {
            "scenario"
        };
        let in_per_s = self
            .sent
            .as_ref()
            .map(|s| s.ok as f64 / s.elapsed.as_secs_f64());
        let cpu_us_per_event = match (self.cpu_s, self.events) {
            (Some(cpu), Some(n)) if n > 0 => Some(cpu * 1e6 / n as f64),
            _ => None,
        };
        results::record(serde_json::json!({
            "kind": kind,
            "backend": self.backend,
            "scenario": self.scenario,
            "rate": self.rate,
            "in_per_s": in_per_s,
            "failed": self.sent.as_ref().map(|s| s.failed),
            "ingest_ms": self.sent.as_mut().map(|s| results::latencies(&mut s.latencies)),
            "out_per_s": self.delivered_per_s,
            "e2e_ms": self.e2e.as_mut().map(results::latencies),
            "cpu_us_per_event": cpu_us_per_event,
            "peak_rss_mib": self.peak_rss,
        }));
    }

    fn print(mut self) {
        self.record();
        let in_per_s = self
            .sent
            .as_ref()
            .map(|s| s.ok as f64 / s.elapsed.as_secs_f64());
        let ingest = self
            .sent
            .as_mut()
            .map(|s| s.latencies.summary())
            .unwrap_or_else(|| "-".into());
        let failed = self.sent.as_ref().map(|s| s.failed).unwrap_or(0);
        println!("{} / {}", self.backend, self.scenario);
        if let Some(rate) = in_per_s {
            let ratios: Vec<String> = self
                .baselines
                .iter()
                .filter(|(_, base)| *base > 0.0)
                .map(|(name, base)| format!("{:.2}x {name}", rate / base))
                .collect();
            let ratio = if ratios.is_empty() {
                String::new()
            } else {
                format!("  ({})", ratios.join(", "))
            };
            println!(
                "    in      {rate:>9.0}/s{ratio}{}",
                if failed > 0 {
                    format!("  [{failed} failed]")
                } else {
                    String::new()
                }
            );
            println!("    ingest  {ingest}");
        }
        if let Some(rate) = self.delivered_per_s {
            println!("    out     {rate:>9.0}/s");
        }
        if let Some(mut e2e) = self.e2e {
            println!("    e2e     {}", e2e.summary());
        }
        if let (Some(cpu), Some(rss)) = (self.cpu_s, self.peak_rss) {
            // CPU time per event varies far less than throughput on a shared machine.
            let per_event = match self.events {
                Some(n) if n > 0 => format!(", {:.0} µs CPU per event", cpu * 1e6 / n as f64),
                _ => String::new(),
            };
            println!("    process {cpu:.1} CPU s, peak RSS {rss:.0} MiB{per_event}");
        }
    }
}

/// Samples the RSS of a process until stopped; returns the peak and a per-second series.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(f64, Vec<f64>)> {
    std::thread::spawn(move || {
        let (mut peak, mut series) = (0.0f64, Vec::new());
        let mut tick = 0;
        while !stop.load(Ordering::Relaxed) {
            let rss = process::rss_mib(pid);
            peak = peak.max(rss);
            if tick % 10 == 0 {
                series.push(rss);
            }
            tick += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        (peak, series)
    })
}

struct Backend {
    /// The `broker:` section of the config.
    broker_yaml: String,
    /// The `broker:` section for replicas sharing a subscription (scale-out); `None` where
    /// one process owns the log.
    replicas_yaml: Option<String>,
    raw: Arc<RawPublisher>,
    _server: Option<Server>,
}

impl Backend {
    /// The broker process this run started, if any (its CPU counts for hookbridge's peers
    /// comparison).
    fn server_pid(&self) -> Option<u32> {
        self._server.as_ref().map(Server::pid)
    }
}

/// The broker limit: the same records published by a plain client.
enum RawPublisher {
    /// The log, and the directory it lives in (removed when the run ends).
    Embedded(
        Arc<hookbridge::broker::embedded::EmbeddedBroker>,
        #[allow(dead_code)] tempfile::TempDir,
    ),
    Nats(async_nats::jetstream::Context),
    Kafka(rdkafka::producer::FutureProducer),
}

impl RawPublisher {
    async fn publish(&self, topic: &str, key: String, body: Vec<u8>) -> bool {
        match self {
            RawPublisher::Embedded(log, _) => {
                let record = Record {
                    topic: topic.into(),
                    key: Some(key.into()),
                    headers: vec![],
                    value: body.into(),
                };
                log.publish(record).await.is_ok()
            }
            RawPublisher::Nats(js) => match js.publish(format!("{topic}.0"), body.into()).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            },
            RawPublisher::Kafka(producer) => {
                let record = rdkafka::producer::FutureRecord::to(topic)
                    .key(&key)
                    .payload(&body);
                producer.send(record, Duration::from_secs(10)).await.is_ok()
            }
        }
    }
}

async fn backend(name: &str, args: &Args) -> anyhow::Result<Backend> {
    match name {
        "embedded" => {
            let dir = tempfile::tempdir()?;
            let log = hookbridge::broker::embedded::EmbeddedBroker::open(
                &hookbridge::config::EmbeddedConfig {
                    dir: dir.path().join("raw"),
                    partitions: 8,
                    retention: Default::default(),
                },
            )?;
            Ok(Backend {
                broker_yaml:
                    "broker:\n  kind: embedded\n  embedded: { dir: __DIR__/data, partitions: 8 }\n"
                        .into(),
                replicas_yaml: None,
                raw: Arc::new(RawPublisher::Embedded(log, dir)),
                _server: None,
            })
        }
        "nats" => {
            let server = Server::start("nats-server", |port, dir| {
                vec![
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                    "-js".into(),
                    "-sd".into(),
                    dir.display().to_string(),
                ]
            })?;
            let url = format!("nats://127.0.0.1:{}", server.port);
            let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
            js.get_or_create_stream(async_nats::jetstream::stream::Config {
                name: "rawbench".into(),
                subjects: vec!["rawbench.*".into()],
                ..Default::default()
            })
            .await?;
            Ok(Backend {
                broker_yaml: format!(
                    "broker:\n  kind: nats\n  nats: {{ url: \"{url}\", partitions: 8 }}\n"
                ),
                // A short lease, so that replicas joining settle within seconds.
                replicas_yaml: Some(format!(
                    "broker:\n  kind: nats\n  nats: {{ url: \"{url}\", partitions: 8, lease: 2s }}\n"
                )),
                raw: Arc::new(RawPublisher::Nats(js)),
                _server: Some(server),
            })
        }
        "kafka" => {
            let Some(bootstrap) = args.kafka_bootstrap.clone() else {
                anyhow::bail!(
                    "no Kafka to measure on: pass --kafka-bootstrap (scripts/bench starts one)"
                );
            };
            let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "5")
                .set("compression.type", "lz4")
                .create()?;
            let config = hookbridge::config::KafkaConfig {
                bootstrap_servers: bootstrap.clone(),
                partitions: 8,
                ..Default::default()
            };
            let admin = hookbridge::broker::kafka::KafkaBroker::connect(&config)?;
            admin.ensure_topics(&["rawbench".to_string()]).await?;
            let broker_yaml = format!(
                "broker:\n  kind: kafka\n  kafka: {{ bootstrap_servers: \"{bootstrap}\", partitions: 8 }}\n"
            );
            Ok(Backend {
                replicas_yaml: Some(broker_yaml.clone()),
                broker_yaml,
                raw: Arc::new(RawPublisher::Kafka(producer)),
                _server: None,
            })
        }
        other => anyhow::bail!("unknown backend {other}"),
    }
}

/// The benchmark's subscription: where it posts, its ordering, one more line of its config.
#[derive(Clone, Copy)]
pub struct Subscribed<'a> {
    pub url: &'a str,
    pub ordering: &'a str,
    pub extra: &'a str,
}

fn config(
    backend: &Backend,
    dir: &std::path::Path,
    topic: &str,
    subscription: Option<Subscribed<'_>>,
) -> String {
    let mut yaml = backend
        .broker_yaml
        .replace("__DIR__", &dir.display().to_string());
    yaml.push_str(&format!(
        "server: {{ listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0 }}\nroutes:\n  - name: bench\n    topic: {topic}\n    verify: {{ kind: none }}\n    event_type: {{ value: bench }}\n    key: {{ json: /key }}\n"
    ));
    match subscription {
        Some(Subscribed {
            url,
            ordering,
            extra,
        }) => yaml.push_str(&format!(
            "subscriptions:\n  - name: {topic}\n    topics: [{topic}]\n    url: {url}\n    ordering: {ordering}\n    max_in_flight: 128\n    timeout: 60s\n{}",
            if extra.is_empty() { String::new() } else { format!("    {}\n", extra.replace('\n', "\n    ")) }
        )),
        None => yaml.push_str("subscriptions: []\n"),
    }
    yaml
}

struct Measured {
    sent: load::Sent,
    delivered_per_s: Option<f64>,
    e2e: Option<Latencies>,
    /// Deliveries the receiver got while measured.
    delivered: u64,
    cpu_s: f64,
    peak_rss: f64,
    rss_series: Vec<f64>,
    /// Records appended per fsync of the embedded log while the load ran.
    per_sync: Option<f64>,
}

/// Runs one scenario against a fresh hookbridge process.
async fn scenario(
    backend: &Backend,
    receiver: &Receiver,
    load: &Load,
    ordering: Option<&str>,
    stalled: bool,
) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let topic = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let subscription = ordering.map(|ordering| Subscribed {
        url: &receiver.url,
        ordering,
        extra: "",
    });
    let server = Hookbridge::start(
        dir.path(),
        &config(backend, dir.path(), &topic, subscription),
    )?;
    receiver.stall(stalled);
    receiver.take();
    let client = load::http_client(load.concurrency);
    let url = format!("{}/hooks/bench", server.ingress);
    // Warm up connections and the broker's topic before measuring.
    let _ = load::run(
        &Load {
            duration: Duration::from_millis(500),
            ..load.clone()
        },
        load::http_sender(client.clone(), url.clone()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.take();

    let cpu_before = server.cpu_seconds();
    let syncs_before = server_syncs(&server);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(server.pid(), stop.clone());
    let started_us = load::now_us();
    let sent = load::run(load, load::http_sender(client, url)).await;
    let per_sync = match (syncs_before, server_syncs(&server)) {
        (Some((s0, a0)), Some((s1, a1))) if s1 > s0 => Some((a1 - a0) / (s1 - s0)),
        _ => None,
    };

    let mut delivered_per_s = None;
    let mut delivered = 0;
    let mut e2e = None;
    if ordering.is_some() && !stalled {
        // Drain: wait until the deliveries stop coming.
        let mut last = receiver.received();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = receiver.received();
            if now == last || now >= sent.ok {
                break;
            }
            last = now;
        }
        let (count, latencies) = receiver.take();
        let span_s = (receiver.last_at_us().saturating_sub(started_us)) as f64 / 1e6;
        delivered_per_s = Some(count as f64 / span_s.max(0.001));
        delivered = count;
        e2e = Some(latencies);
    }
    let cpu_s = server.cpu_seconds() - cpu_before;
    stop.store(true, Ordering::Relaxed);
    let (peak_rss, rss_series) = sampler.join().expect("sampler");
    receiver.stall(false);
    server.stop();
    Ok(Measured {
        sent,
        delivered_per_s,
        delivered,
        e2e,
        cpu_s,
        peak_rss,
        rss_series,
        per_sync,
    })
}

/// The embedded log's fsyncs and the records they made durable, so far.
fn server_syncs(server: &Hookbridge) -> Option<(f64, f64)> {
    let syncs = server.metric("hookbridge_embedded_log_syncs_total").ok()?;
    let appends = server
        .metric("hookbridge_embedded_log_appends_total")
        .ok()?;
    Some((syncs, appends))
}

/// Delivery alone: a backlog is ingested with no subscription, then hookbridge restarts
/// with one and the time to deliver the whole backlog is measured.
async fn delivery_only(
    backend: &Backend,
    receiver: &Receiver,
    load: &Load,
    ordering: &str,
    extra: &str,
) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let topic = format!("bench-{}", uuid::Uuid::now_v7().simple());
    let server = Hookbridge::start(dir.path(), &config(backend, dir.path(), &topic, None))?;
    let client = load::http_client(load.concurrency);
    let sent = load::run(
        load,
        load::http_sender(client, format!("{}/hooks/bench", server.ingress)),
    )
    .await;
    server.stop();

    receiver.stall(false);
    receiver.take();
    let started_us = load::now_us();
    let server = Hookbridge::start(
        dir.path(),
        &config(
            backend,
            dir.path(),
            &topic,
            Some(Subscribed {
                url: &receiver.url,
                ordering,
                extra,
            }),
        ),
    )?;
    let cpu_before = server.cpu_seconds();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(server.pid(), stop.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let mut last = (0, std::time::Instant::now());
    while receiver.received() < sent.ok && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = receiver.received();
        if now != last.0 {
            last = (now, std::time::Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    // The rate is over the drain itself, first delivery to last: start-up (a consumer
    // group's join, say) is printed apart, since on a short backlog it would dominate.
    let (first_us, last_us) = (receiver.first_at_us(), receiver.last_at_us());
    let (count, _) = receiver.take();
    let startup_s = first_us.saturating_sub(started_us) as f64 / 1e6;
    let span_s = last_us.saturating_sub(first_us) as f64 / 1e6;
    let cpu_s = server.cpu_seconds() - cpu_before;
    stop.store(true, Ordering::Relaxed);
    let (peak_rss, rss_series) = sampler.join().expect("sampler");
    server.stop();
    println!(
        "    backlog of {} events delivered: {count}, first after {startup_s:.1}s (start-up), all {span_s:.1}s later",
        sent.ok
    );
    Ok(Measured {
        sent,
        delivered_per_s: Some(count as f64 / span_s.max(0.001)),
        delivered: count,
        e2e: None,
        cpu_s,
        peak_rss,
        rss_series,
        per_sync: None,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(addr) = args.serve_bare {
        let url = load::bare_handler_at(addr).await;
        println!("bare handler at {url}; Ctrl-C stops it");
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    load::now_us();
    if let Some(path) = &args.results {
        results::open(path)?;
    }
    if !args.peers.is_empty() {
        let peers = peers::PeerArgs {
            systems: args.peers.clone(),
            svix_server: args.svix_server.clone(),
            svix_db_dsn: args.svix_db_dsn.clone(),
            svix_redis_dsn: args.svix_redis_dsn.clone(),
            outpost_server: args.outpost_server.clone(),
            outpost_postgres_url: args.outpost_postgres_url.clone(),
            outpost_redis_url: args.outpost_redis_url.clone(),
            outpost_rabbitmq_url: args.outpost_rabbitmq_url.clone(),
            events: args.events,
            rates: args.peer_rates.clone(),
            duration: args.duration,
            concurrency: args.concurrency,
            body_size: args.body_size,
            keys: args.keys,
        };
        return peers::run(peers, &args).await;
    }
    let load = Load {
        concurrency: args.concurrency,
        rate: None,
        body_size: args.body_size,
        keys: args.keys,
        duration: args.duration,
        count: None,
    };
    println!(
        "hookbridge-bench: {} per scenario, {} connections, {} B bodies, {} keys, open-loop rates {:?}/s",
        humantime(args.duration),
        args.concurrency,
        args.body_size,
        args.keys,
        args.rates
    );
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        memory()
    );

    let receiver = Receiver::start().await;
    let client = load::http_client(args.concurrency);
    let scale_receiver = if selected(&args, scale::TITLE) {
        Some(scale::receiver().await)
    } else {
        None
    };
    let mut scale_rows = Vec::new();
    for name in &args.backends {
        match backend(name, &args).await {
            Ok(backend) => {
                println!("\n== {name}");
                if others_selected(&args) {
                    measure(name, &backend, &args, &load, &receiver, &client).await;
                }
                if let Some(slow) = &scale_receiver {
                    scale_rows.extend(scale_out(name, &backend, &args, slow).await);
                }
            }
            Err(e) => println!("\n== {name}: skipped ({e:#})"),
        }
    }
    scale::print_table(&scale_rows);
    Ok(())
}

/// The scale-out scenario on one backend, where replicas can share a subscription.
async fn scale_out(
    name: &str,
    backend: &Backend,
    args: &Args,
    receiver: &Receiver,
) -> Vec<scale::Measurement> {
    let Some(broker_yaml) = &backend.replicas_yaml else {
        println!(
            "{name} / {}: skipped (one process owns the log: no replicas)",
            scale::TITLE
        );
        return Vec::new();
    };
    let settings = scale::Settings {
        replicas: args.scale_replicas.clone(),
        window: args.scale_window,
        body_size: args.body_size,
        concurrency: args.concurrency,
    };
    scale::run(name, broker_yaml, receiver, &settings).await
}

/// One scenario of a backend: its title, the subscription's ordering (none: ingest only),
/// whether the subscriber stalls, and an open-loop rate.
type Run = (String, Option<&'static str>, bool, Option<u64>);

/// The scenarios, in the order they run.
fn runs(args: &Args) -> Vec<Run> {
    let mut runs: Vec<Run> = vec![
        ("ingest only".into(), None, false, None),
        (
            "ingest + delivery, ordering: key".into(),
            Some("key"),
            false,
            None,
        ),
        (
            "ingest + delivery, ordering: none".into(),
            Some("none"),
            false,
            None,
        ),
    ];
    for &rate in &args.rates {
        runs.push((
            format!("open loop at {rate}/s, ordering: key"),
            Some("key"),
            false,
            Some(rate),
        ));
    }
    runs.push((
        "stalled subscriber, growing backlog".into(),
        Some("key"),
        true,
        None,
    ));
    runs
}

/// Whether `--only` selects the scenario titled `title`.
fn selected(args: &Args, title: &str) -> bool {
    args.only.is_empty() || args.only.iter().any(|w| title.contains(w.as_str()))
}

/// The title of the delivery-alone scenario, which runs after [`runs`].
const DELIVERY_ALONE: &str = "delivery alone, from a backlog, ordering: key";

/// Whether `--only` selects any scenario [`measure`] runs (else its limits are skipped too).
fn others_selected(args: &Args) -> bool {
    selected(args, DELIVERY_ALONE) || runs(args).iter().any(|run| selected(args, &run.0))
}

/// Every scenario of one backend, after its limits.
async fn measure(
    name: &str,
    backend: &Backend,
    args: &Args,
    load: &Load,
    receiver: &Receiver,
    client: &load::HttpClient,
) {
    // The limits are measured again right before each backend's scenarios: on a shared
    // machine they drift by tens of percent over a few minutes.
    // A limit is a rate: ten seconds measure it as well as five minutes would.
    let limits = Load {
        duration: load.duration.min(LIMIT_DURATION),
        ..load.clone()
    };
    let (http_rate, delivery_rate) = baselines(&limits, client, receiver).await;
    let raw = {
        let publisher = backend.raw.clone();
        load::run(&limits, move |body: Vec<u8>| {
            let publisher = publisher.clone();
            let key = format!("key-{}", load::now_us() % 1000);
            Box::pin(async move { publisher.publish("rawbench", key, body).await })
                as std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        })
        .await
    };
    let raw_rate = raw.ok as f64 / raw.elapsed.as_secs_f64();
    Row::limit(
        name,
        "raw client publishing to the broker (broker limit)",
        raw,
    )
    .print();
    // Ingest is bounded by the lower of the two limits; both ratios are printed.
    let ingest_baselines = if name == "embedded" {
        vec![("HTTP limit", http_rate)]
    } else {
        vec![("broker limit", raw_rate), ("HTTP limit", http_rate)]
    };
    for (title, ordering, stalled, rate) in runs(args) {
        if !selected(args, &title) {
            continue;
        }
        let load = Load {
            rate,
            ..load.clone()
        };
        match scenario(backend, receiver, &load, ordering, stalled).await {
            Ok(m) => {
                let row = Scenario {
                    title,
                    rate,
                    stalled,
                };
                print_scenario(name, row, m, &ingest_baselines, delivery_rate)
            }
            Err(e) => println!("{name} / {title}: failed: {e:#}"),
        }
    }
    let title = DELIVERY_ALONE;
    if selected(args, title) && !args.subscription_extras.is_empty() {
        subscription_costs(name, backend, args, load, receiver).await;
    } else if selected(args, title) {
        match delivery_only(backend, receiver, load, "key", "").await {
            Ok(m) => print_delivery_alone(name, &m, delivery_rate),
            Err(e) => println!("{name} / {title}: failed: {e:#}"),
        }
    }
}

/// Delivery alone with each `--subscription` line and without, alternating over two rounds
/// (so drift on a shared machine falls on all alike): CPU per event, and what each line
/// adds to the plain subscription's.
async fn subscription_costs(
    name: &str,
    backend: &Backend,
    args: &Args,
    load: &Load,
    receiver: &Receiver,
) {
    let variants: Vec<&str> = std::iter::once("")
        .chain(args.subscription_extras.iter().map(String::as_str))
        .collect();
    let mut per_event = vec![Vec::new(); variants.len()];
    for round in 1..=2 {
        for (i, extra) in variants.iter().enumerate() {
            let label = if extra.is_empty() {
                "plain".to_string()
            } else {
                extra.replace('\n', "; ")
            };
            match delivery_only(backend, receiver, load, "key", extra).await {
                Ok(m) => {
                    let us = m.cpu_s * 1e6 / m.delivered.max(1) as f64;
                    println!(
                        "{name} / {DELIVERY_ALONE} / round {round} / {label}: {} delivered, {:.0}/s, {us:.1} µs CPU per event",
                        m.delivered,
                        m.delivered_per_s.unwrap_or(0.0)
                    );
                    per_event[i].push(us);
                }
                Err(e) => println!("{name} / {label}: failed: {e:#}"),
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let plain = mean(&per_event[0]);
    println!("\n| subscription | µs CPU per event (rounds) | added to plain |");
    println!("| --- | --- | --- |");
    for (extra, us) in variants.iter().zip(&per_event) {
        if us.is_empty() {
            continue;
        }
        let rounds: Vec<String> = us.iter().map(|u| format!("{u:.1}")).collect();
        println!(
            "| {} | {} | {:+.1} |",
            if extra.is_empty() {
                "plain".to_string()
            } else {
                extra.replace('\n', "; ")
            },
            rounds.join(" · "),
            mean(us) - plain
        );
    }
}

/// Delivery alone's result, against the delivery limit.
fn print_delivery_alone(name: &str, m: &Measured, delivery_rate: f64) {
    let rate = m.delivered_per_s.unwrap_or(0.0);
    let cpu_us_per_event = m.cpu_s * 1e6 / m.delivered.max(1) as f64;
    results::record(serde_json::json!({
        "kind": "scenario",
        "backend": name,
        "scenario": DELIVERY_ALONE,
        "rate": null,
        "out_per_s": rate,
        "delivered": m.delivered,
        "delivery_limit_per_s": delivery_rate,
        "cpu_us_per_event": cpu_us_per_event,
        "peak_rss_mib": m.peak_rss,
    }));
    println!("{name} / {DELIVERY_ALONE}");
    println!(
        "    out     {rate:>9.0}/s  ({:.2}x delivery limit)",
        rate / delivery_rate
    );
    println!(
        "    process {:.1} CPU s, peak RSS {:.0} MiB, {cpu_us_per_event:.0} µs CPU per event",
        m.cpu_s, m.peak_rss,
    );
}

/// Which of [`runs`] a result is of.
struct Scenario {
    title: String,
    rate: Option<u64>,
    stalled: bool,
}

/// One scenario's row, with its ratio to the delivery limit and, for a stalled
/// subscriber, the RSS series.
fn print_scenario(
    name: &str,
    Scenario {
        title,
        rate,
        stalled,
    }: Scenario,
    m: Measured,
    ingest_baselines: &[(&'static str, f64)],
    delivery_rate: f64,
) {
    let backlog = stalled.then(|| {
        m.rss_series
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    });
    let delivered = m.delivered_per_s;
    let per_sync = m.per_sync;
    // Each event is ingested and, with a subscription, delivered: the CPU per event covers
    // both.
    Row {
        backend: name.to_string(),
        scenario: title,
        rate,
        events: Some(m.sent.ok),
        sent: Some(m.sent),
        delivered_per_s: delivered,
        e2e: m.e2e,
        cpu_s: Some(m.cpu_s),
        peak_rss: Some(m.peak_rss),
        baselines: ingest_baselines.to_vec(),
    }
    .print();
    if let Some(rate) = delivered {
        println!("    out/delivery limit {:.2}x", rate / delivery_rate);
    }
    if let Some(per_sync) = per_sync {
        println!("    embedded log: {per_sync:.1} appends per fsync");
    }
    if let Some(series) = backlog {
        println!("    RSS each second (MiB): {series}");
    }
}

/// Measures the HTTP limit (a bare axum handler answering 202) and the delivery limit (a
/// bare client posting to the receiver) under the same load, and prints them.
async fn baselines(load: &Load, client: &load::HttpClient, receiver: &Receiver) -> (f64, f64) {
    let http = load::run(
        load,
        load::http_sender(client.clone(), load::bare_handler().await),
    )
    .await;
    let http_rate = http.ok as f64 / http.elapsed.as_secs_f64();
    Row::limit(
        "baseline",
        "bare axum handler answering 202 (HTTP limit)",
        http,
    )
    .print();
    let delivery = load::run(
        load,
        load::http_sender(client.clone(), receiver.url.clone()),
    )
    .await;
    let delivery_rate = delivery.ok as f64 / delivery.elapsed.as_secs_f64();
    receiver.take();
    Row::limit(
        "baseline",
        "bare HTTP client posting to the receiver (delivery limit)",
        delivery,
    )
    .print();
    (http_rate, delivery_rate)
}

fn humantime(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn memory() -> String {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| format!("{:.0} GiB RAM", kb / 1048576.0))
        .unwrap_or_default()
}
