//! Scale-out: one subscription delivered by 1, 2 and 4 replicas against a receiver that is
//! the bottleneck (`--only scale-out`; NATS and Kafka, whose replicas share partitions).
//!
//! The receiver answers every request after 40 ms, so a replica with `max_in_flight: 8`
//! delivers at most 8 / 40 ms = 200 events/s, and R replicas at most R × 200/s: the rate
//! with R replicas, over R times the rate with one, says how evenly the partitions of the
//! live topic spread (8 partitions, 400 keys over them). One key, `k-parked`, is answered
//! 500 throughout: with `park_after: 2s` it is parked and retried from the parking topic
//! (a breaker that never opens keeps it retrying), so the parking topic is busy, and the
//! parking and resend topics' partitions are shared out with the live topic's.
//!
//! For each replica count, on a fresh topic and subscription (a Kafka group of its own):
//! a backlog is published through an ingress-only hookbridge (enough for the replicas to
//! stay busy through start-up and the window), the replicas are started at once (each its
//! own data dir and ports), the harness waits until the partitions of all three topics are
//! held once each, evenly, for a second (each replica's `GET /v1/subscriptions/{name}`),
//! then counts the 200s the receiver answers over `--scale-window`. A live partition with
//! no lag left at the end means a replica ran dry inside the window (printed as a warning).
//! `HOOKBRIDGE_BENCH_LOGS=DIR` keeps every replica's log there.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{Method, Request};
use http_body_util::{BodyExt, Full};

use super::load::{self, Behaviour, HttpClient, Receiver};
use super::process::Hookbridge;

/// The scenario's title, which `--only` matches.
pub const TITLE: &str = "scale-out: replicas against a slow receiver";
const MAX_IN_FLIGHT: usize = 8;
const RECEIVER_DELAY: Duration = Duration::from_millis(40);
const PARTITIONS: u32 = 8;
const KEYS: u64 = 400;
const FAILING_KEY: &str = "k-parked";
/// One event in this many is the failing key's.
const FAILING_EVERY: u64 = 50;
/// The backlog covers the window and this much more at the ceiling rate: start-up, the
/// wait for the partitions, and partitions holding fewer keys than their share.
const BACKLOG_HEADROOM: Duration = Duration::from_secs(30);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the partitions must stay put to count as settled.
const SETTLE_HOLD: Duration = Duration::from_secs(1);

/// The most one replica can deliver: its in-flight budget over the receiver's delay.
fn replica_ceiling() -> f64 {
    MAX_IN_FLIGHT as f64 / RECEIVER_DELAY.as_secs_f64()
}

/// The receiver this scenario delivers to.
pub async fn receiver() -> Receiver {
    Receiver::start_with(Behaviour {
        delay: RECEIVER_DELAY,
        failing_key: Some(FAILING_KEY.into()),
        arrivals: true,
    })
    .await
}

pub struct Settings {
    pub replicas: Vec<usize>,
    pub window: Duration,
    pub body_size: usize,
    pub concurrency: usize,
}

/// One replica count's result.
pub struct Measurement {
    pub backend: String,
    pub replicas: usize,
    pub rate: f64,
    pub settled_after: Option<f64>,
    /// Live partitions held by each replica at the end of the window.
    pub live_spread: String,
    /// Whether a live partition ran dry inside the window.
    pub drained: bool,
}

/// Every replica count on one backend; `broker_yaml` is the `broker:` section replicas run.
pub async fn run(
    name: &str,
    broker_yaml: &str,
    receiver: &Receiver,
    settings: &Settings,
) -> Vec<Measurement> {
    let mut rows = Vec::new();
    for &replicas in &settings.replicas {
        println!("{name} / {TITLE}, {replicas} replica(s)");
        match measure(name, broker_yaml, receiver, settings, replicas).await {
            Ok(row) => rows.push(row),
            Err(e) => println!("    failed: {e:#}"),
        }
    }
    rows
}

/// The partitions one replica holds, as its admin API shows them.
#[derive(Clone, Debug, PartialEq)]
struct Held {
    topic: String,
    partition: u32,
    lag: Option<u64>,
    parked_keys: u64,
}

/// A running replica and what it keeps until it stops.
struct Replica {
    process: Hookbridge,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

async fn measure(
    name: &str,
    broker_yaml: &str,
    receiver: &Receiver,
    settings: &Settings,
    replicas: usize,
) -> anyhow::Result<Measurement> {
    let topic = format!("scale-{}", uuid::Uuid::now_v7().simple());
    let topics = [
        topic.clone(),
        format!("hookbridge.park.{topic}"),
        format!("hookbridge.resend.{topic}"),
    ];
    let events =
        (replica_ceiling() * replicas as f64 * (settings.window + BACKLOG_HEADROOM).as_secs_f64())
            .ceil() as u64;
    publish_backlog(broker_yaml, &topic, events, settings).await?;

    receiver.take_arrivals();
    let failed_before = receiver.failed();
    let started = Instant::now();
    let running = start_replicas(name, broker_yaml, &topic, &receiver.url, replicas).await?;
    let client = load::http_client(replicas);
    let admins: Vec<String> = running.iter().map(|r| r.process.admin.clone()).collect();
    let settled = wait_settled(&client, &admins, &topic, &topics).await;
    let settled_after = settled
        .as_ref()
        .map(|(at, _)| at.duration_since(started).as_secs_f64());
    let settled = settled.map(|(_, held)| held);
    match &settled {
        Some(held) => println!(
            "    settled {:.1}s after start: {}",
            settled_after.unwrap_or(0.0),
            describe(held, &topics)
        ),
        None => println!(
            "    NOT settled within {}s: {}",
            SETTLE_TIMEOUT.as_secs(),
            describe(&holdings(&client, &admins, &topic).await, &topics)
        ),
    }

    let from = load::now_us();
    tokio::time::sleep(settings.window).await;
    let to = load::now_us();
    let end = holdings(&client, &admins, &topic).await;
    let failed = receiver.failed() - failed_before;
    let logs: Vec<String> = running
        .iter()
        .map(|r| std::fs::read_to_string(&r.log).unwrap_or_default())
        .collect();
    stop_replicas(running).await;

    let arrivals = receiver.take_arrivals();
    let in_window: Vec<u64> = arrivals
        .iter()
        .copied()
        .filter(|t| (from..to).contains(t))
        .collect();
    let span_s = (to - from) as f64 / 1e6;
    let rate = in_window.len() as f64 / span_s;
    let per_second: Vec<String> = (0..span_s.floor() as u64)
        .map(|s| {
            let bin = from + s * 1_000_000..from + (s + 1) * 1_000_000;
            in_window
                .iter()
                .filter(|t| bin.contains(t))
                .count()
                .to_string()
        })
        .collect();
    println!(
        "    delivered {} in the {span_s:.1}s window: {rate:.0}/s ({:.2}x the ceiling, {replicas} × {:.0}/s); {} in all",
        in_window.len(),
        rate / (replicas as f64 * replica_ceiling()),
        replica_ceiling(),
        arrivals.len()
    );
    println!("    per second: {}", per_second.join(" "));
    if let Some(start) = &settled
        && !same_partitions(start, &end)
    {
        println!(
            "    partitions moved during the window; at its end: {}",
            describe(&end, &topics)
        );
    }
    let drained = report_end(&end, &topics[0], failed, &logs);
    Ok(Measurement {
        backend: name.to_string(),
        replicas,
        rate,
        settled_after,
        live_spread: end
            .iter()
            .map(|held| {
                held.iter()
                    .filter(|h| h.topic == topics[0])
                    .count()
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("+"),
        drained,
    })
}

/// Prints what the replicas held at the window's end: the failing key's attempts and where
/// it is parked, the live partitions' smallest lag, and each replica's log's partition
/// lines. Returns whether a live partition had run dry.
fn report_end(end: &[Vec<Held>], live: &str, failed: u64, logs: &[String]) -> bool {
    let parked: Vec<String> = end
        .iter()
        .enumerate()
        .filter_map(|(i, held)| {
            let keys: u64 = held.iter().map(|h| h.parked_keys).sum();
            (keys > 0).then(|| format!("r{} {keys}", i + 1))
        })
        .collect();
    let lags: Vec<u64> = end
        .iter()
        .flatten()
        .filter(|h| h.topic == live)
        .filter_map(|h| h.lag)
        .collect();
    let min_lag = lags.iter().min().copied();
    println!(
        "    {FAILING_KEY}: {failed} attempts answered 500 in the window; parked keys: {}; smallest live lag at the end: {}",
        if parked.is_empty() {
            "none".to_string()
        } else {
            parked.join(", ")
        },
        min_lag.map_or("unknown".to_string(), |l| l.to_string())
    );
    let lines: Vec<String> = logs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let count = |message: &str| {
                text.lines()
                    .filter(|l| l.contains(&format!(r#""message":"{message}""#)))
                    .count()
            };
            format!(
                "r{} {}/{}",
                i + 1,
                count("partition assigned"),
                count("partition released")
            )
        })
        .collect();
    println!(
        "    log lines \"partition assigned\"/\"partition released\" by the window's end: {}",
        lines.join(", ")
    );
    let drained = min_lag == Some(0);
    if drained {
        println!(
            "    WARNING: a live partition ran dry inside the window; the rate is a lower bound"
        );
    }
    drained
}

/// The hookbridge config: the route the backlog is published through, and the subscription
/// when `url` is given.
fn config(broker_yaml: &str, topic: &str, url: Option<&str>) -> String {
    let mut yaml = broker_yaml.to_string();
    yaml.push_str(&format!(
        "server: {{ listen: 127.0.0.1:0, admin_listen: 127.0.0.1:0 }}\nroutes:\n  - name: bench\n    topic: {topic}\n    verify: {{ kind: none }}\n    event_type: {{ value: bench }}\n    key: {{ json: /key }}\n"
    ));
    match url {
        Some(url) => yaml.push_str(&format!(
            "subscriptions:\n  - name: {topic}\n    topics: [{topic}]\n    url: {url}\n    ordering: key\n    max_in_flight: {MAX_IN_FLIGHT}\n    timeout: 10s\n    retry: {{ park_after: 2s, initial_backoff: 100ms, max_backoff: 500ms, max_attempts: 1000000, max_age: 1h }}\n    breaker: {{ failures: 1000000 }}\n"
        )),
        None => yaml.push_str("subscriptions: []\n"),
    }
    yaml
}

/// Event `n` of the backlog: one of 400 keys in turn, or every 50th the failing key.
fn body(n: u64, size: usize) -> Vec<u8> {
    let key = if n % FAILING_EVERY == FAILING_EVERY - 1 {
        FAILING_KEY.to_string()
    } else {
        format!("key-{}", n % KEYS)
    };
    let head = format!(r#"{{"key":"{key}","t":{},"pad":""#, load::now_us());
    let mut body = head.into_bytes();
    let pad = size.saturating_sub(body.len() + 2);
    body.extend(std::iter::repeat_n(b'x', pad));
    body.extend_from_slice(b"\"}");
    body
}

/// Publishes `events` through an ingress-only hookbridge, which then stops.
async fn publish_backlog(
    broker_yaml: &str,
    topic: &str,
    events: u64,
    settings: &Settings,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Hookbridge::start(dir.path(), &config(broker_yaml, topic, None))?;
    let send = load::http_sender(
        load::http_client(settings.concurrency),
        format!("{}/hooks/bench", server.ingress),
    );
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..settings.concurrency {
        let (send, next, ok, failed) = (send.clone(), next.clone(), ok.clone(), failed.clone());
        let size = settings.body_size;
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= events {
                    break;
                }
                let counter = if send(body(n, size)).await {
                    &ok
                } else {
                    &failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while workers.join_next().await.is_some() {}
    tokio::task::spawn_blocking(move || server.stop()).await?;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "    backlog: {ok} events ({KEYS} keys, every {FAILING_EVERY}th {FAILING_KEY}) published in {:.1}s{}",
        started.elapsed().as_secs_f64(),
        if failed > 0 {
            format!(" [{failed} failed]")
        } else {
            String::new()
        }
    );
    anyhow::ensure!(
        failed == 0,
        "{failed} events of the backlog were not accepted"
    );
    Ok(())
}

/// Starts the replicas at once, each in its own directory with its own ports.
async fn start_replicas(
    backend: &str,
    broker_yaml: &str,
    topic: &str,
    url: &str,
    replicas: usize,
) -> anyhow::Result<Vec<Replica>> {
    let keep = std::env::var_os("HOOKBRIDGE_BENCH_LOGS").map(PathBuf::from);
    let mut starting = Vec::new();
    for i in 1..=replicas {
        let dir = tempfile::tempdir()?;
        let log = match &keep {
            Some(keep) => {
                std::fs::create_dir_all(keep)?;
                keep.join(format!("{backend}-{replicas}r-{i}-{topic}.log"))
            }
            None => dir.path().join("hookbridge.log"),
        };
        let yaml = config(broker_yaml, topic, Some(url));
        starting.push(tokio::task::spawn_blocking(move || {
            Hookbridge::start_logged(dir.path(), &yaml, Some(&log)).map(|process| Replica {
                process,
                log,
                _dir: dir,
            })
        }));
    }
    let mut running = Vec::new();
    let mut error = None;
    for start in starting {
        match start.await? {
            Ok(replica) => running.push(replica),
            Err(e) => error = Some(e),
        }
    }
    if let Some(e) = error {
        stop_replicas(running).await;
        return Err(e);
    }
    Ok(running)
}

async fn stop_replicas(running: Vec<Replica>) {
    let stopping: Vec<_> = running
        .into_iter()
        .map(|replica| tokio::task::spawn_blocking(move || replica.process.stop()))
        .collect();
    for stop in stopping {
        let _ = stop.await;
    }
}

/// What each replica holds; a replica that does not answer holds nothing.
async fn holdings(client: &HttpClient, admins: &[String], name: &str) -> Vec<Vec<Held>> {
    let mut all = Vec::new();
    for admin in admins {
        all.push(
            fetch_held(client, &format!("{admin}/v1/subscriptions/{name}"))
                .await
                .unwrap_or_default(),
        );
    }
    all
}

async fn fetch_held(client: &HttpClient, url: &str) -> anyhow::Result<Vec<Held>> {
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.method_mut() = Method::GET;
    *request.uri_mut() = url.parse()?;
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(request)).await??;
    let body = response.into_body().collect().await?.to_bytes();
    let status: serde_json::Value = serde_json::from_slice(&body)?;
    let rows = status["partitions"].as_array().cloned().unwrap_or_default();
    Ok(rows
        .iter()
        .map(|row| Held {
            topic: row["topic"].as_str().unwrap_or_default().to_string(),
            partition: row["partition"].as_u64().unwrap_or(u64::MAX) as u32,
            lag: row["lag"].as_u64(),
            parked_keys: row["parked_keys"].as_u64().unwrap_or(0),
        })
        .collect())
}

/// Waits until every partition of the three topics is held by exactly one replica, each
/// replica holding its fair share of each topic, and it stays so for [`SETTLE_HOLD`].
/// Returns when they first held them so and what they hold, or `None` after
/// [`SETTLE_TIMEOUT`].
async fn wait_settled(
    client: &HttpClient,
    admins: &[String],
    name: &str,
    topics: &[String; 3],
) -> Option<(Instant, Vec<Vec<Held>>)> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut since: Option<(Instant, Vec<Vec<Held>>)> = None;
    while Instant::now() < deadline {
        let now = holdings(client, admins, name).await;
        if !settled(&now, topics) {
            since = None;
        } else if let Some((at, before)) = &since {
            if !same_partitions(before, &now) {
                since = Some((Instant::now(), now));
            } else if at.elapsed() >= SETTLE_HOLD {
                return Some((*at, now));
            }
        } else {
            since = Some((Instant::now(), now));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

fn settled(holdings: &[Vec<Held>], topics: &[String; 3]) -> bool {
    let replicas = holdings.len() as u32;
    let (fewest, most) = (PARTITIONS / replicas, PARTITIONS.div_ceil(replicas));
    topics.iter().all(|topic| {
        let mut seen = vec![0u32; PARTITIONS as usize];
        let shares_fair = holdings.iter().all(|held| {
            let mine: Vec<u32> = held
                .iter()
                .filter(|h| h.topic == *topic)
                .map(|h| h.partition)
                .collect();
            for &p in &mine {
                if let Some(count) = seen.get_mut(p as usize) {
                    *count += 1;
                }
            }
            (fewest..=most).contains(&(mine.len() as u32))
        });
        shares_fair && seen.iter().all(|&count| count == 1)
    })
}

/// Whether two readings have every replica holding the same partitions.
fn same_partitions(a: &[Vec<Held>], b: &[Vec<Held>]) -> bool {
    let key = |held: &Vec<Held>| {
        let mut k: Vec<(String, u32)> = held
            .iter()
            .map(|h| (h.topic.clone(), h.partition))
            .collect();
        k.sort();
        k
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| key(x) == key(y))
}

/// `r1 live 0,1 park 0,1 resend 0,1 | r2 ...`.
fn describe(holdings: &[Vec<Held>], topics: &[String; 3]) -> String {
    holdings
        .iter()
        .enumerate()
        .map(|(i, held)| {
            let mut by_topic: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
            for h in held {
                let slot = topics.iter().position(|t| *t == h.topic).unwrap_or(3);
                by_topic.entry(slot).or_default().push(h.partition);
            }
            let parts: Vec<String> = ["live", "park", "resend", "other"]
                .iter()
                .enumerate()
                .filter_map(|(slot, label)| {
                    let mut ps = by_topic.get(&slot).cloned().unwrap_or_default();
                    ps.sort_unstable();
                    (slot < 3 || !ps.is_empty()).then(|| {
                        let ps: Vec<String> = ps.iter().map(u32::to_string).collect();
                        format!("{label} [{}]", ps.join(","))
                    })
                })
                .collect();
            format!("r{} {}", i + 1, parts.join(" "))
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The results table: rate and efficiency, rate(R) / (R × rate(1)), per backend.
pub fn print_table(rows: &[Measurement]) {
    if rows.is_empty() {
        return;
    }
    println!(
        "\n== {TITLE}: max_in_flight {MAX_IN_FLIGHT}, receiver {} ms, {PARTITIONS} partitions, {KEYS} keys + {FAILING_KEY} failing",
        RECEIVER_DELAY.as_millis()
    );
    println!(
        "{:<8} {:>8} {:>8} {:>11} {:>9} {:>16}",
        "backend", "replicas", "rate/s", "efficiency", "settled", "live partitions"
    );
    for row in rows {
        let one = rows
            .iter()
            .find(|r| r.backend == row.backend && r.replicas == 1)
            .map(|r| r.rate);
        let efficiency = one
            .filter(|one| *one > 0.0)
            .map(|one| row.rate / (row.replicas as f64 * one));
        record(row, efficiency);
        let efficiency = efficiency.map_or("-".to_string(), |e| format!("{e:.2}"));
        println!(
            "{:<8} {:>8} {:>8.0} {:>11} {:>9} {:>16}{}",
            row.backend,
            row.replicas,
            row.rate,
            efficiency,
            row.settled_after
                .map_or("no".to_string(), |s| format!("{s:.1}s")),
            row.live_spread,
            if row.drained { "  (ran dry)" } else { "" }
        );
    }
}

/// The row as a `--results` line.
fn record(row: &Measurement, efficiency: Option<f64>) {
    super::results::record(serde_json::json!({
        "kind": "scale-out",
        "backend": row.backend,
        "replicas": row.replicas,
        "rate_per_s": row.rate,
        "ceiling_per_s": row.replicas as f64 * replica_ceiling(),
        "efficiency": efficiency,
        "settled_after_s": row.settled_after,
        "live_spread": row.live_spread,
        "drained": row.drained,
    }));
}
