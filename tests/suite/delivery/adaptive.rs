//! `concurrency: adaptive` (the default): requests on the wire follow what the receiver can
//! take. A receiver that serves at most N at once and refuses the rest with 429 sees
//! hookbridge settle at N within seconds, from a `max_in_flight` ten times that, and again
//! when N falls; one that can take more than `max_in_flight` gets `max_in_flight`. And a
//! 429 or 503 with `Retry-After` holds every attempt of the subscription, not only that
//! event's.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::backend::Backend;
use crate::support::receiver::{Received, Receiver, Reply};
use crate::support::*;

const TOKEN: &str = "adaptive-admin-token-0123456789";
/// How long the receiver takes to serve one request.
const SERVICE: Duration = Duration::from_millis(50);

/// A receiver that serves at most `capacity` requests at once, each in [`SERVICE`], and
/// answers 429 to any past that (without `Retry-After`).
fn serve_at_most(receiver: &Receiver, capacity: Arc<AtomicUsize>) {
    let busy_until: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    receiver.answer(move |_, _| {
        let now = Instant::now();
        let mut busy = busy_until.lock().unwrap();
        busy.retain(|until| *until > now);
        if busy.len() < capacity.load(Ordering::SeqCst) {
            busy.push_back(now + SERVICE);
            Reply {
                status: 200,
                delay: SERVICE,
                retry_after: None,
            }
        } else {
            Reply::status(429)
        }
    });
}

/// One hookbridge on the embedded log with the `events` route and no subscription; the
/// test makes its subscription through the admin API once the backlog is in.
async fn with_backlog(events: u64) -> (Hookbridge, tempfile::TempDir, String) {
    let backend = Backend::embedded();
    let topic = unique("adaptive");
    let config = events_config(&backend.broker(4), &topic, "  []\n").replace(
        "  admin_listen: 127.0.0.1:0\n",
        &format!(
            "  admin_listen: 127.0.0.1:0\n  admin_token: {TOKEN}\n  egress: {{ allow_networks: [127.0.0.0/8] }}\n"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(dir.path(), &config);
    let ingresses = Arc::new(Mutex::new(vec![server.ingress.clone()]));
    let backlog = (0..events)
        .map(|seq| (format!("k{}", seq % 1000), seq))
        .collect();
    post_events(ingresses, backlog, 64, Duration::ZERO).await;
    std::mem::forget(backend);
    (server, dir, topic)
}

async fn subscribe(server: &Hookbridge, topic: &str, url: &str, extra: Value) {
    let mut spec = json!({
        "topics": [topic],
        "url": url,
        "max_in_flight": 200,
        "retry": { "initial_backoff": "200ms", "max_backoff": "1s", "max_attempts": 1000 },
        "breaker": { "failures": 1000000 },
    });
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let response = http_client()
        .put(format!("{}/v1/subscriptions/adaptive", server.admin))
        .bearer_auth(TOKEN)
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
}

async fn concurrency_max(server: &Hookbridge) -> Value {
    admin_get(&server.admin, "/v1/subscriptions/adaptive", TOKEN).await["max_in_flight"].clone()
}

async fn limit(server: &Hookbridge) -> Value {
    admin_get(&server.admin, "/v1/subscriptions/adaptive", TOKEN).await["concurrency"].clone()
}

/// Waits until the limit is within `range` past slow start, on three samples in a row
/// (300 ms), at most `within`; the time it took.
async fn settles(
    server: &Hookbridge,
    range: std::ops::RangeInclusive<u64>,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    let mut in_range = 0;
    loop {
        let concurrency = limit(server).await;
        let settled = concurrency["limit"]
            .as_u64()
            .is_some_and(|l| range.contains(&l))
            // At `max_in_flight` slow start has nothing left to find.
            && (concurrency["limit"] == concurrency_max(server).await
                || !matches!(concurrency["reason"].as_str(), Some("start" | "slow_start")));
        in_range = if settled { in_range + 1 } else { 0 };
        if in_range == 3 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "the limit did not settle in {range:?} within {within:?}: {concurrency}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Of the requests that arrived between `from` and `to`: how many were refused (429),
/// and how many served per second.
fn window(received: &[Received], from: Instant, to: Instant) -> (f64, f64) {
    let in_window: Vec<&Received> = received
        .iter()
        .filter(|r| r.at >= from && r.at < to)
        .collect();
    let refused = in_window.iter().filter(|r| r.status == 429).count();
    let served = in_window.iter().filter(|r| r.status == 200).count();
    let seconds = (to - from).as_secs_f64();
    (
        refused as f64 / in_window.len().max(1) as f64,
        served as f64 / seconds,
    )
}

/// Watches the limit for `long`, sampling it; its least and most.
async fn watch(server: &Hookbridge, long: Duration) -> (u64, u64) {
    let until = Instant::now() + long;
    let (mut least, mut most) = (u64::MAX, 0);
    while Instant::now() < until {
        let l = limit(server).await["limit"].as_u64().unwrap();
        (least, most) = (least.min(l), most.max(l));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (least, most)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_limit_finds_the_receivers_capacity_and_follows_it_down() {
    let (server, _dir, topic) = with_backlog(8000).await;
    let receiver = Receiver::start().await;
    let capacity = Arc::new(AtomicUsize::new(20));
    serve_at_most(&receiver, capacity.clone());
    subscribe(&server, &topic, &receiver.url, json!({})).await;

    let took = settles(&server, 16..=24, Duration::from_secs(5)).await;
    // Settled: it stays near 20, refusals are rare and the receiver is kept busy.
    let from = Instant::now();
    let (least, most) = watch(&server, Duration::from_secs(4)).await;
    let (refused, rate) = window(&receiver.received(), from, Instant::now());
    let capacity_rate = 20.0 / SERVICE.as_secs_f64();
    assert!(
        least >= 16 && most <= 24,
        "settled after {took:?}, then between {least} and {most}"
    );
    assert!(
        refused < 0.02,
        "{:.1}% of attempts refused",
        refused * 100.0
    );
    assert!(
        rate >= 0.85 * capacity_rate,
        "{rate:.0}/s served of a capacity of {capacity_rate:.0}/s"
    );

    // The receiver can now take 5 at once: followed within 5 s.
    capacity.store(5, Ordering::SeqCst);
    settles(&server, 1..=6, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (refused, _) = window(&receiver.received(), from, Instant::now());
    assert!(
        refused < 0.05,
        "{:.1}% of attempts refused after the fall",
        refused * 100.0
    );
    let concurrency = limit(&server).await;
    assert_eq!(concurrency["mode"], "adaptive");
    assert!(
        concurrency["baseline_ms"].as_f64().unwrap() >= 40.0,
        "{concurrency}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_takes_more_gets_max_in_flight() {
    let (server, _dir, topic) = with_backlog(3000).await;
    let receiver = Receiver::start().await;
    serve_at_most(&receiver, Arc::new(AtomicUsize::new(usize::MAX)));
    subscribe(
        &server,
        &topic,
        &receiver.url,
        json!({ "max_in_flight": 48 }),
    )
    .await;
    settles(&server, 48..=48, Duration::from_secs(5)).await;
    receiver
        .wait_for("a round at the limit", Duration::from_secs(10), |_| true)
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.on_the_wire() < 40 {
        assert!(
            Instant::now() < deadline,
            "the receiver never saw the limit's requests at once"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_holds_every_attempt_of_the_subscription() {
    let (server, _dir, topic) = with_backlog(0).await;
    let receiver = Receiver::start().await;
    // The first request is refused for 3 s; every other is served.
    let first = Arc::new(AtomicUsize::new(0));
    receiver.answer(move |_, _| {
        if first.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply {
                status: 503,
                delay: Duration::ZERO,
                retry_after: Some(3),
            }
        } else {
            Reply::status(200)
        }
    });
    // A `Retry-After` is honoured up to `retry.max_backoff`.
    let retry = json!({ "retry": { "initial_backoff": "200ms", "max_backoff": "10s" } });
    subscribe(&server, &topic, &receiver.url, retry).await;
    let ingresses = Arc::new(Mutex::new(vec![server.ingress.clone()]));
    post_events(ingresses.clone(), vec![("a".into(), 0)], 1, Duration::ZERO).await;
    receiver
        .wait_for("the refusal", Duration::from_secs(10), |r| !r.is_empty())
        .await;
    let refused_at = receiver.received()[0].at;
    let others = (1..20).map(|seq| (format!("k{}", seq % 4), seq)).collect();
    post_events(ingresses, others, 4, Duration::ZERO).await;
    receiver
        .wait_for("all 20", Duration::from_secs(20), |r| {
            crate::support::receiver::all_delivered(r, 0..20)
        })
        .await;
    let received = receiver.received();
    let next = received[1].at;
    assert!(
        next.duration_since(refused_at) >= Duration::from_millis(2900),
        "nothing reached the receiver for 3 s: the next came after {:?}",
        next.duration_since(refused_at)
    );
    crate::support::receiver::assert_first_deliveries_in_order(&received);
}

/// A receiver that never refuses but queues: `workers` serve one request at a time each,
/// in [`SERVICE`], and a request waits for the first free one. Past `workers` at once, more
/// requests only wait longer: latency grows, throughput does not.
fn queue_past(receiver: &Receiver, workers: usize) {
    let free_at: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(vec![Instant::now(); workers]));
    receiver.answer(move |_, _| {
        let now = Instant::now();
        let mut free_at = free_at.lock().unwrap();
        let first = (0..free_at.len()).min_by_key(|&i| free_at[i]).unwrap();
        let done = free_at[first].max(now) + SERVICE;
        free_at[first] = done;
        Reply {
            status: 200,
            delay: done - now,
            retry_after: None,
        }
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn the_limit_settles_where_latency_stops_buying_throughput() {
    let (server, _dir, topic) = with_backlog(8000).await;
    let receiver = Receiver::start().await;
    queue_past(&receiver, 20);
    subscribe(&server, &topic, &receiver.url, json!({})).await;
    // Past 20 at once, latency grows with the load: the limit stops within the latency
    // tolerance of the knee (1.5 times the baseline: 30).
    settles(&server, 14..=36, Duration::from_secs(10)).await;
    let from = Instant::now();
    let (least, most) = watch(&server, Duration::from_secs(4)).await;
    let (_, rate) = window(&receiver.received(), from, Instant::now());
    let capacity_rate = 20.0 / SERVICE.as_secs_f64();
    assert!(least >= 10 && most <= 40, "between {least} and {most}");
    assert!(
        rate >= 0.85 * capacity_rate,
        "{rate:.0}/s served of a capacity of {capacity_rate:.0}/s"
    );
    assert_eq!(limit(&server).await["reason"], "latency");
}
