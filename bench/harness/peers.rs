//! Side by side with the tool a user would install instead (`--peers`).
//!
//! Each system gets the same events (size, count, keys), the same load generator and the
//! same receiver, and is measured the same way:
//!
//! - **throughput**: `--events` webhooks sent closed loop; the rate in, and the rate out
//!   from the first request sent to the last delivery the receiver counted;
//! - **latency**: an open-loop run at each `--peer-rate` for `--duration`, end to end from
//!   when each request was due to its arrival at the receiver (no coordinated omission);
//! - **cost**: CPU seconds of every process the system needs (hookbridge and its broker;
//!   Svix server, PostgreSQL and Redis; Outpost, RabbitMQ, PostgreSQL and Redis) per
//!   delivered event, and the peak of their summed proportional set size (PSS, so
//!   PostgreSQL's shared memory counts once).
//!
//! hookbridge delivers with `ordering: key` (per-key order); neither Svix nor Outpost orders
//! deliveries. The peers are not built or fetched here: `scripts/bench-peers` says how,
//! starts the servers they need and passes their binaries in.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::Method;
use axum::http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};

use super::load::{self, HttpClient, Load, Receiver};
use super::process::Hookbridge;
use super::stats::Latencies;

/// What `--peers` measures, from the command line.
pub struct PeerArgs {
    pub systems: Vec<String>,
    pub svix_server: Option<PathBuf>,
    pub svix_db_dsn: String,
    pub svix_redis_dsn: String,
    pub outpost_server: Option<PathBuf>,
    pub outpost_postgres_url: String,
    pub outpost_redis_url: String,
    pub outpost_rabbitmq_url: String,
    pub events: u64,
    /// The open-loop rates, per second, one latency run each.
    pub rates: Vec<u64>,
    pub duration: Duration,
    pub concurrency: usize,
    pub body_size: usize,
    pub keys: usize,
}

/// The processes whose CPU and memory a system costs: its own, and those of the broker,
/// database and cache it needs. Processes named in `commands` are found afresh at every
/// reading, so PostgreSQL's per-connection backends are counted as they come.
struct Footprint {
    pids: Vec<u32>,
    commands: Vec<&'static str>,
}

impl Footprint {
    fn pids(&self) -> Vec<u32> {
        let mut pids = self.pids.clone();
        if !self.commands.is_empty() {
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                    continue;
                };
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if self.commands.contains(&comm.trim()) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// CPU seconds so far, children reaped included (a PostgreSQL backend that exited).
    fn cpu_seconds(&self) -> f64 {
        self.pids().into_iter().map(cpu_with_children).sum()
    }

    fn pss_mib(&self) -> f64 {
        self.pids().into_iter().map(pss_mib).sum()
    }
}

fn cpu_with_children(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0.0))
                .collect()
        })
        .unwrap_or_default();
    // utime, stime, cutime, cstime: fields 14-17 of the line, 11-14 after the ')'.
    let ticks: f64 = fields.iter().skip(11).take(4).sum();
    ticks / super::process::clock_ticks_per_second()
}

fn pss_mib(pid: u32) -> f64 {
    super::process::kib_field_mib(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// One system under test, started and ready: where to send, how, and what it costs.
struct System {
    name: String,
    /// What a user gets: "per key" or "none".
    ordering: &'static str,
    url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    wrap: fn(Vec<u8>) -> Vec<u8>,
    footprint: Footprint,
    /// Keeps the processes alive; dropping it stops them.
    _running: Running,
}

enum Running {
    Hookbridge(
        Option<Hookbridge>,
        #[allow(dead_code)] super::Backend,
        #[allow(dead_code)] tempfile::TempDir,
    ),
    /// A peer's server process (Svix, Outpost), and the directory it runs in, if its own.
    Peer(Child, #[allow(dead_code)] Option<tempfile::TempDir>),
}

impl Drop for Running {
    fn drop(&mut self) {
        match self {
            Running::Hookbridge(server, _, _) => {
                if let Some(server) = server.take() {
                    server.stop();
                }
            }
            Running::Peer(child, _) => {
                // A graceful stop (Svix's waits out its queue's long poll) is not needed here.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// One measured run of one system.
struct Outcome {
    sent: load::Sent,
    delivered: u64,
    /// First request sent to last delivery.
    span_s: f64,
    e2e: Latencies,
    cpu_s: f64,
    peak_mib: f64,
}

impl Outcome {
    fn cpu_us_per_event(&self) -> f64 {
        self.cpu_s * 1e6 / self.delivered.max(1) as f64
    }
}

/// One system's runs: closed loop, then one open-loop run per rate.
struct Measured {
    name: String,
    ordering: &'static str,
    throughput: Outcome,
    latency: Vec<(u64, Outcome)>,
}

pub async fn run(args: PeerArgs, bench: &super::Args) -> anyhow::Result<()> {
    let receiver = Receiver::start().await;
    let client = load::http_client(args.concurrency);
    let rates: Vec<String> = args.rates.iter().map(|r| format!("{r}/s")).collect();
    println!(
        "peers: {} events closed loop over {} connections, then {} open loop for {:.0}s; {} B bodies, {} keys",
        args.events,
        args.concurrency,
        rates.join(", "),
        args.duration.as_secs_f64(),
        args.body_size,
        args.keys
    );
    let mut rows = Vec::new();
    for name in &args.systems {
        let system = match start(name, &args, bench, &receiver, &client).await {
            Ok(system) => system,
            Err(e) => {
                println!("\n== {name}: not measured ({e:#})");
                continue;
            }
        };
        println!("\n== {}", system.name);
        warm_up(&system, &args, &client, &receiver).await;
        let mut throughput = measure(&system, &args, &client, &receiver, None).await;
        report("throughput", &throughput);
        record(name, &system, None, &mut throughput);
        let mut latency = Vec::new();
        for &rate in &args.rates {
            let mut outcome = measure(&system, &args, &client, &receiver, Some(rate)).await;
            report(&format!("open loop {rate}/s"), &outcome);
            record(name, &system, Some(rate), &mut outcome);
            latency.push((rate, outcome));
        }
        rows.push(Measured {
            name: system.name.clone(),
            ordering: system.ordering,
            throughput,
            latency,
        });
        drop(system);
    }
    print_table(&args.rates, rows);
    Ok(())
}

/// The summary: one row per system, the latency columns once per rate.
fn print_table(rates: &[u64], rows: Vec<Measured>) {
    let mut header =
        "\n| system | ordering | in /s | delivered /s | CPU µs per event | peak memory (PSS) |"
            .to_string();
    let mut rule = "| --- | --- | ---: | ---: | ---: | ---: |".to_string();
    for rate in rates {
        header.push_str(&format!(
            " e2e at {rate}/s p50 / p99 / p99.9 / max ms | CPU µs per event at {rate}/s |"
        ));
        rule.push_str(" --- | ---: |");
    }
    println!("{header}");
    println!("{rule}");
    for Measured {
        name,
        ordering,
        throughput,
        mut latency,
    } in rows
    {
        let in_rate = throughput.sent.ok as f64 / throughput.sent.elapsed.as_secs_f64();
        let out_rate = throughput.delivered as f64 / throughput.span_s.max(0.001);
        let peak = latency
            .iter()
            .map(|(_, l)| l.peak_mib)
            .fold(throughput.peak_mib, f64::max);
        let mut line = format!(
            "| {name} | {ordering} | {in_rate:.0} | {out_rate:.0} ({} of {}) | {:.0} | {peak:.0} MiB |",
            throughput.delivered,
            throughput.sent.ok,
            throughput.cpu_us_per_event(),
        );
        for (_, outcome) in &mut latency {
            let e2e = outcome
                .e2e
                .percentiles()
                .map(|[p50, _, p99, p999, max]| {
                    format!("{p50:.1} / {p99:.1} / {p999:.1} / {max:.1}")
                })
                .unwrap_or_else(|| "-".into());
            line.push_str(&format!(" {e2e} | {:.0} |", outcome.cpu_us_per_event()));
        }
        println!("{line}");
    }
}

/// One run as a `--results` line; `rate` is `None` for the closed loop.
fn record(name: &str, system: &System, rate: Option<u64>, outcome: &mut Outcome) {
    super::results::record(serde_json::json!({
        "kind": "peer",
        "system": name,
        "label": system.name,
        "ordering": system.ordering,
        "rate": rate,
        "sent": outcome.sent.ok,
        "failed": outcome.sent.failed,
        "in_per_s": outcome.sent.ok as f64 / outcome.sent.elapsed.as_secs_f64(),
        "delivered": outcome.delivered,
        "delivered_per_s": outcome.delivered as f64 / outcome.span_s.max(0.001),
        "ingest_ms": super::results::latencies(&mut outcome.sent.latencies),
        "e2e_ms": super::results::latencies(&mut outcome.e2e),
        "cpu_us_per_event": outcome.cpu_us_per_event(),
        "peak_pss_mib": outcome.peak_mib,
    }));
}

fn report(title: &str, outcome: &Outcome) {
    let mut e2e = outcome.e2e.clone();
    let mut ingest = outcome.sent.latencies.clone();
    println!("  {title}");
    println!(
        "    in        {} sent ({} failed), {:.0}/s",
        outcome.sent.ok,
        outcome.sent.failed,
        outcome.sent.ok as f64 / outcome.sent.elapsed.as_secs_f64()
    );
    println!("    ingest    {}", ingest.summary());
    println!(
        "    delivered {} in {:.1}s, {:.0}/s",
        outcome.delivered,
        outcome.span_s,
        outcome.delivered as f64 / outcome.span_s.max(0.001)
    );
    println!("    e2e       {}", e2e.summary());
    println!(
        "    cost      {:.1} CPU s, {:.0} µs CPU per event, peak {:.0} MiB PSS",
        outcome.cpu_s,
        outcome.cpu_us_per_event(),
        outcome.peak_mib
    );
}

async fn start(
    name: &str,
    args: &PeerArgs,
    bench: &super::Args,
    receiver: &Receiver,
    client: &HttpClient,
) -> anyhow::Result<System> {
    if name == "svix" {
        let binary = args
            .svix_server
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--svix-server PATH is needed (scripts/bench-peers)"))?;
        return start_svix(binary, args, receiver, client).await;
    }
    if name == "outpost" {
        let binary = args.outpost_server.as_deref().ok_or_else(|| {
            anyhow::anyhow!("--outpost-server PATH is needed (scripts/bench-peers)")
        })?;
        return start_outpost(binary, args, receiver, client).await;
    }
    let backend = super::backend(name, bench).await?;
    let dir = tempfile::tempdir()?;
    let topic = format!("peers-{}", uuid::Uuid::now_v7().simple());
    let server = Hookbridge::start(
        dir.path(),
        &super::config(
            &backend,
            dir.path(),
            &topic,
            Some(super::Subscribed {
                url: &receiver.url,
                ordering: "key",
                extra: "",
            }),
        ),
    )?;
    let mut pids = vec![server.pid()];
    pids.extend(backend.server_pid());
    if name == "kafka" {
        pids.extend(bench.kafka_pid);
    }
    Ok(System {
        name: format!("hookbridge, {}", backend_label(name)),
        ordering: "per key",
        url: format!("{}/hooks/bench", server.ingress),
        headers: Vec::new(),
        wrap: |body| body,
        footprint: Footprint {
            pids,
            commands: Vec::new(),
        },
        _running: Running::Hookbridge(Some(server), backend, dir),
    })
}

fn backend_label(name: &str) -> &str {
    match name {
        "embedded" => "embedded log",
        "nats" => "NATS JetStream (+ nats-server)",
        "kafka" => "Apache Kafka (+ the Kafka node)",
        other => other,
    }
}

/// Starts Svix server (API and worker in one process, as its docs run it) on PostgreSQL and
/// Redis, creates an application with one endpoint at the receiver, and returns how to send
/// it messages.
async fn start_svix(
    binary: &Path,
    args: &PeerArgs,
    receiver: &Receiver,
    client: &HttpClient,
) -> anyhow::Result<System> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let env = [
        ("SVIX_JWT_SECRET", "hookbridge-bench-jwt-secret".to_string()),
        (
            "SVIX_MAIN_SECRET",
            "hookbridge-bench-main-secret".to_string(),
        ),
        ("SVIX_DB_DSN", args.svix_db_dsn.clone()),
        ("SVIX_REDIS_DSN", args.svix_redis_dsn.clone()),
        ("SVIX_QUEUE_TYPE", "redis".to_string()),
        ("SVIX_CACHE_TYPE", "redis".to_string()),
        ("SVIX_LISTEN_ADDRESS", format!("127.0.0.1:{port}")),
        // Svix refuses private and loopback destinations unless allowed (its SSRF guard).
        ("SVIX_WHITELIST_SUBNETS", "[127.0.0.1/32]".to_string()),
        // Below PostgreSQL's max_connections (100 on a default install).
        ("SVIX_DB_POOL_MAX_SIZE", "30".to_string()),
        // Its default (info) logs a line per delivery; RUST_LOG overrides its level, and
        // hookbridge runs at warn here too.
        ("RUST_LOG", "warn".to_string()),
    ];
    let command = |verb: &[&str]| {
        let mut command = Command::new(binary);
        command
            .args(verb)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        command
    };
    let migrate = command(&["migrate"]).output()?;
    anyhow::ensure!(
        migrate.status.success(),
        "svix-server migrate failed: {}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let token = command(&["jwt", "generate"]).output()?;
    let token = String::from_utf8_lossy(&token.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Token (Bearer): "))
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("svix-server jwt generate printed no token"))?;
    let child = command(&[])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = child.id();
    let running = Running::Peer(child, None);
    let base = format!("http://127.0.0.1:{port}");
    wait_for_port(port, "svix-server").await?;
    let authorization = HeaderValue::try_from(format!("Bearer {token}"))?;
    let app = send_json(
        client,
        Method::POST,
        &format!("{base}/api/v1/app/"),
        &authorization,
        serde_json::json!({ "name": "hookbridge-bench" }),
    )
    .await?;
    let app_id = app["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no application id in {app}"))?
        .to_string();
    send_json(
        client,
        Method::POST,
        &format!("{base}/api/v1/app/{app_id}/endpoint/"),
        &authorization,
        serde_json::json!({ "url": receiver.url, "description": "hookbridge-bench receiver" }),
    )
    .await?;
    Ok(System {
        name: "Svix server (+ PostgreSQL, Redis)".into(),
        ordering: "none",
        url: format!("{base}/api/v1/app/{app_id}/msg/"),
        headers: vec![(AUTHORIZATION, authorization)],
        wrap: svix_message,
        footprint: Footprint {
            pids: vec![pid],
            commands: vec!["postgres", "redis-server"],
        },
        _running: running,
    })
}

/// The same event as a Svix message: its payload is the body hookbridge would receive.
fn svix_message(body: Vec<u8>) -> Vec<u8> {
    let mut message = br#"{"eventType":"bench","payload":"#.to_vec();
    message.extend_from_slice(&body);
    message.push(b'}');
    message
}

/// The tenant all of Outpost's events are published for.
const OUTPOST_TENANT: &str = "hookbridge-bench";

/// Starts Hookdeck Outpost (`outpost-server`: API, delivery and log services in one
/// process, as `outpost serve` runs it) on RabbitMQ, PostgreSQL and Redis, creates a tenant
/// with one webhook destination at the receiver, and returns how to publish to it.
async fn start_outpost(
    binary: &Path,
    args: &PeerArgs,
    receiver: &Receiver,
    client: &HttpClient,
) -> anyhow::Result<System> {
    let cli = binary.with_file_name("outpost");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let (redis_host, redis_port, redis_database) = redis_parts(&args.outpost_redis_url)?;
    let api_key = "hookbridge-bench-api-key";
    let env = [
        ("API_PORT", port.to_string()),
        ("API_KEY", api_key.to_string()),
        ("API_JWT_SECRET", "hookbridge-bench-jwt-secret".to_string()),
        // 32 bytes: an AES-256 key for the destinations' secrets at rest.
        (
            "AES_ENCRYPTION_SECRET",
            "hookbridge-bench-aes-secret-0032".to_string(),
        ),
        ("REDIS_HOST", redis_host),
        ("REDIS_PORT", redis_port),
        ("REDIS_PASSWORD", String::new()),
        ("REDIS_DATABASE", redis_database),
        ("POSTGRES_URL", args.outpost_postgres_url.clone()),
        ("RABBITMQ_SERVER_URL", args.outpost_rabbitmq_url.clone()),
        // Its default is 1 of each at a time; 100 is what Outpost's own load tests run
        // (loadtest/infra, the "small" profile).
        ("PUBLISH_MAX_CONCURRENCY", "100".to_string()),
        ("DELIVERY_MAX_CONCURRENCY", "100".to_string()),
        ("LOG_MAX_CONCURRENCY", "100".to_string()),
        // Its default (info) logs a line per event published and per delivery; hookbridge
        // and Svix run at warn here too.
        ("LOG_LEVEL", "warn".to_string()),
        ("GIN_MODE", "release".to_string()),
        // No usage reports to Hookdeck nor errors to Sentry from a benchmark.
        ("DISABLE_TELEMETRY", "true".to_string()),
    ];
    // Outpost reads `.env` and `config/outpost.yaml` from its working directory: an empty
    // one, so only the environment above configures it.
    let dir = tempfile::tempdir()?;
    let command = |program: &Path| {
        let mut command = Command::new(program);
        command
            .current_dir(dir.path())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        command
    };
    let migrate = command(&cli).args(["migrate", "apply", "--yes"]).output()?;
    anyhow::ensure!(
        migrate.status.success(),
        "outpost migrate apply failed: {}{}",
        String::from_utf8_lossy(&migrate.stdout),
        String::from_utf8_lossy(&migrate.stderr)
    );
    let child = command(binary)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = child.id();
    let running = Running::Peer(child, Some(dir));
    let base = format!("http://127.0.0.1:{port}/api/v1");
    wait_for_port(port, "outpost-server").await?;
    let authorization = HeaderValue::try_from(format!("Bearer {api_key}"))?;
    send_json(
        client,
        Method::PUT,
        &format!("{base}/tenants/{OUTPOST_TENANT}"),
        &authorization,
        serde_json::json!({}),
    )
    .await?;
    send_json(
        client,
        Method::POST,
        &format!("{base}/tenants/{OUTPOST_TENANT}/destinations"),
        &authorization,
        serde_json::json!({
            "type": "webhook",
            "topics": ["*"],
            "config": { "url": receiver.url },
        }),
    )
    .await?;
    Ok(System {
        name: "Outpost (+ RabbitMQ, PostgreSQL, Redis)".into(),
        ordering: "none",
        url: format!("{base}/publish"),
        headers: vec![(AUTHORIZATION, authorization)],
        wrap: outpost_event,
        footprint: Footprint {
            pids: vec![pid],
            // RabbitMQ is the Erlang VM with its port mapper and child helper.
            commands: vec![
                "postgres",
                "redis-server",
                "beam.smp",
                "epmd",
                "erl_child_setup",
            ],
        },
        _running: running,
    })
}

/// `redis://HOST:PORT/DATABASE` as Outpost's three settings.
fn redis_parts(url: &str) -> anyhow::Result<(String, String, String)> {
    let parts = url.strip_prefix("redis://").and_then(|rest| {
        let (address, database) = rest.split_once('/')?;
        let (host, port) = address.rsplit_once(':')?;
        Some((host.to_string(), port.to_string(), database.to_string()))
    });
    parts.ok_or_else(|| anyhow::anyhow!("{url}: not redis://HOST:PORT/DATABASE"))
}

/// The same event as an Outpost publish: its data is the body hookbridge would receive
/// (Outpost delivers `data` as the webhook's body), its key a metadata field (sent as a
/// header), one tenant, one topic.
fn outpost_event(body: Vec<u8>) -> Vec<u8> {
    let key = body
        .strip_prefix(br#"{"key":""#)
        .and_then(|rest| rest.split(|&b| b == b'"').next())
        .unwrap_or_default();
    let mut event =
        format!(r#"{{"tenant_id":"{OUTPOST_TENANT}","topic":"bench","metadata":{{"key":""#)
            .into_bytes();
    event.extend_from_slice(key);
    event.extend_from_slice(br#""},"data":"#);
    event.extend_from_slice(&body);
    event.push(b'}');
    event
}

async fn wait_for_port(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "{what} did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn send_json(
    client: &HttpClient,
    method: Method,
    url: &str,
    authorization: &HeaderValue,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let request = axum::http::Request::builder()
        .method(method.clone())
        .uri(url)
        .header(AUTHORIZATION, authorization)
        .header("content-type", "application/json")
        .body(Full::new(body.to_string().into()))?;
    let response = client.request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.is_success(),
        "{method} {url}: {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    Ok(serde_json::from_slice(&bytes)?)
}

/// Connections opened, the topic or application's first events through, and nothing left
/// in flight before measuring.
async fn warm_up(system: &System, args: &PeerArgs, client: &HttpClient, receiver: &Receiver) {
    let load = Load {
        concurrency: args.concurrency,
        rate: None,
        body_size: args.body_size,
        keys: args.keys,
        duration: Duration::from_secs(2),
        count: Some(1000),
    };
    let sent = load::run(&load, sender(system, client)).await;
    drain(receiver, sent.ok, Duration::from_secs(60)).await;
    receiver.take();
}

fn sender(
    system: &System,
    client: &HttpClient,
) -> impl Fn(Vec<u8>) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    load::http_sender_with(
        client.clone(),
        system.url.clone(),
        system.headers.clone(),
        system.wrap,
    )
}

/// Waits until `expected` deliveries arrived, or none came for 15 s, or `limit` passed.
async fn drain(receiver: &Receiver, expected: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut last = (receiver.received(), Instant::now());
    while receiver.received() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = receiver.received();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(15) {
            break;
        }
    }
}

/// One run: closed loop of `--events` (rate `None`) or open loop at `rate` for
/// `--duration`; every delivery waited for.
async fn measure(
    system: &System,
    args: &PeerArgs,
    client: &HttpClient,
    receiver: &Receiver,
    rate: Option<u64>,
) -> Outcome {
    let load = Load {
        concurrency: args.concurrency,
        rate,
        body_size: args.body_size,
        keys: args.keys,
        duration: match rate {
            Some(_) => args.duration,
            None => Duration::from_secs(600),
        },
        count: if rate.is_none() {
            Some(args.events)
        } else {
            None
        },
    };
    receiver.take();
    let cpu_before = system.footprint.cpu_seconds();
    let stop = Arc::new(AtomicBool::new(false));
    let peak = {
        let footprint = Footprint {
            pids: system.footprint.pids.clone(),
            commands: system.footprint.commands.clone(),
        };
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0.0f64;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(footprint.pss_mib());
                std::thread::sleep(Duration::from_millis(200));
            }
            peak
        })
    };
    let started_us = load::now_us();
    let sent = load::run(&load, sender(system, client)).await;
    drain(receiver, sent.ok, Duration::from_secs(600)).await;
    let cpu_s = system.footprint.cpu_seconds() - cpu_before;
    stop.store(true, Ordering::Relaxed);
    let peak_mib = peak.join().unwrap_or(0.0);
    let last_us = receiver.last_at_us();
    let (delivered, e2e) = receiver.take();
    Outcome {
        sent,
        delivered,
        span_s: last_us.saturating_sub(started_us) as f64 / 1e6,
        e2e,
        cpu_s,
        peak_mib,
    }
}
