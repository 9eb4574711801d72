//! G3 within a replica: per key, events are delivered in publish order whatever fails, and a
//! key that keeps failing holds back only its own events: not the other keys of its
//! partition (20,000 of them go by on every backend), not other subscriptions.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::backend::Backend;
use crate::support::delivery::{config, post};
use crate::support::receiver::{
    Receiver, Reply, all_delivered, any_delivered_of, assert_first_deliveries_in_order, seq_of,
};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_under_random_failures() {
    const KEYS: usize = 50;
    const PER_KEY: u64 = 200;
    let receiver = Receiver::start().await;
    receiver.answer(|_, _| {
        let fail = rand::random::<f64>() < 0.3;
        let delay = if rand::random::<f64>() < 0.1 {
            Duration::from_millis(rand::random_range(1..20))
        } else {
            Duration::ZERO
        };
        Reply {
            status: if fail { 500 } else { 200 },
            delay,
            retry_after: None,
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        "  - name: ordered\n    topics: [events]\n    url: {}\n    ordering: key\n    max_in_flight: 64\n    retry: {{ initial_backoff: 5ms, max_backoff: 50ms, max_attempts: 1000 }}\n    breaker: {{ failures: 100000 }}\n",
        receiver.url
    );
    let server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));

    // Each key's events are published one after the other, so publish order per key is
    // known; the keys publish concurrently.
    let client = http_client();
    let mut publishers = tokio::task::JoinSet::new();
    for k in 0..KEYS {
        let (client, url) = (client.clone(), server.hook_url("events"));
        publishers.spawn(async move {
            for seq in 0..PER_KEY {
                let body = serde_json::json!({"key": format!("key-{k}"), "seq": seq});
                let response = client.post(&url).json(&body).send().await.unwrap();
                assert_eq!(response.status(), 202);
            }
        });
    }
    while let Some(done) = publishers.join_next().await {
        done.unwrap();
    }

    let total = KEYS * PER_KEY as usize;
    receiver
        .wait_for("every event delivered", Duration::from_secs(240), |r| {
            r.iter()
                .filter(|r| r.ok())
                .map(seq_of)
                .collect::<HashSet<_>>()
                .len()
                >= total
        })
        .await;

    let received = receiver.received();
    let mut first_success: HashMap<String, Vec<u64>> = HashMap::new();
    let mut successes: HashMap<(String, u64), usize> = HashMap::new();
    let mut attempts = 0;
    for r in &received {
        attempts += 1;
        if !r.ok() {
            continue;
        }
        let (key, seq) = seq_of(r);
        let count = successes.entry((key.clone(), seq)).or_default();
        *count += 1;
        if *count == 1 {
            first_success.entry(key).or_default().push(seq);
        }
    }
    for (key, seqs) in &first_success {
        assert_eq!(
            seqs,
            &(0..PER_KEY).collect::<Vec<_>>(),
            "{key}: first deliveries in publish order"
        );
    }
    let duplicates: usize = successes.values().map(|c| c - 1).sum();
    let failures = received.iter().filter(|r| !r.ok()).count();
    eprintln!(
        "{total} events, {attempts} attempts ({failures} failed by the receiver), {duplicates} duplicate deliveries"
    );
    assert_eq!(successes.len(), total, "every event delivered");
    // Without a crash a delivery is only repeated after a failed attempt.
    assert_eq!(duplicates, 0);
}

#[tokio::test]
async fn a_failing_key_does_not_hold_back_its_partition_and_a_dead_endpoint_not_other_subscriptions()
 {
    let receiver = Receiver::start().await;
    receiver.answer(|_, body| {
        let body: serde_json::Value = serde_json::from_slice(body).unwrap();
        Reply::status(if body["key"] == "poison" { 500 } else { 200 })
    });
    // A subscriber that takes connections and never answers.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stalled_url = format!("http://{}/hook", stalled.local_addr().unwrap());
    let held = Arc::new(AtomicUsize::new(0));
    let counter = held.clone();
    tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = stalled.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            sockets.push(socket);
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        "  - name: live
    topics: [events]
    url: {}
    retry: {{ initial_backoff: 2s, max_backoff: 2s, max_attempts: 4 }}
    breaker: {{ failures: 100000 }}
  - name: dead
    topics: [events]
    url: {stalled_url}
    timeout: 30s
    max_in_flight: 4
",
        receiver.url
    );
    let server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let client = http_client();
    // The poison key's events first, then 100 events on keys of the same partition.
    let poison_partition = hookbridge::broker::partitioner::partition_for_key(b"poison", 4);
    let neighbours: Vec<String> = (0..)
        .map(|i| format!("n{i}"))
        .filter(|k| {
            hookbridge::broker::partitioner::partition_for_key(k.as_bytes(), 4) == poison_partition
        })
        .take(10)
        .collect();
    let started = Instant::now();
    for seq in 0..3 {
        post(
            &client,
            &server,
            "t",
            serde_json::json!({"key": "poison", "seq": seq}),
        )
        .await;
    }
    for seq in 0..100u64 {
        let key = &neighbours[seq as usize % neighbours.len()];
        post(
            &client,
            &server,
            "t",
            serde_json::json!({"key": key, "seq": seq}),
        )
        .await;
    }
    receiver
        .wait_for("the neighbours' events", Duration::from_secs(30), |r| {
            r.iter().filter(|r| r.ok()).count() >= 100
        })
        .await;
    let neighbours_done = started.elapsed();
    let poison_attempts = receiver.received().iter().filter(|r| !r.ok()).count();
    eprintln!(
        "100 neighbour events delivered in {neighbours_done:?}; poison attempts by then: {poison_attempts}"
    );
    assert!(
        poison_attempts < 4,
        "the neighbours did not wait for the poison key's retries to run out"
    );
    assert!(
        neighbours_done < Duration::from_secs(3),
        "the live subscription was not slowed by the dead one"
    );
    assert!(
        held.load(Ordering::Relaxed) <= 4,
        "the dead subscription holds at most max_in_flight connections"
    );
}

/// One partition; key A fails until every other event is delivered. 20,000 events of 50
/// other keys go through the same partition meanwhile, then A recovers and is delivered
/// in order.
async fn a_failing_key_holds_only_its_own_events(backend: Backend) {
    const OTHERS: u64 = 20_000;
    let topic = unique("poison");
    let receiver = Receiver::start().await;
    let healed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failing = healed.clone();
    receiver.answer(move |_, body| {
        let key: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let is_a = key["key"] == "A";
        Reply::status(
            if is_a && !failing.load(std::sync::atomic::Ordering::SeqCst) {
                500
            } else {
                200
            },
        )
    });
    let subs = format!(
        "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n    max_in_flight: 32\n{RETRY_WITHOUT_END}",
        receiver.url
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(
        dir.path(),
        &events_config(&backend.broker(1), &topic, &subs),
    );
    let ingresses = Arc::new(Mutex::new(vec![server.ingress.clone()]));

    // A's events: the first one before any other, then one every 2,000.
    let mut events = vec![("A".to_string(), 0)];
    for seq in 1..=OTHERS {
        events.push((format!("k{}", seq % 50), seq));
        if seq % 2_000 == 0 {
            events.push(("A".to_string(), OTHERS + seq / 2_000));
        }
    }
    let a_seqs: Vec<u64> = events
        .iter()
        .filter(|(k, _)| k == "A")
        .map(|(_, s)| *s)
        .collect();
    // A's first event goes first, alone, so every other event is behind it.
    post_events(ingresses.clone(), events[..1].to_vec(), 1, Duration::ZERO).await;
    post_events(ingresses.clone(), events[1..].to_vec(), 16, Duration::ZERO).await;

    let started = Instant::now();
    let mut peak_rss = 0;
    let deadline = started + Duration::from_secs(240);
    while !all_delivered(&receiver.received(), 1..=OTHERS) {
        peak_rss = peak_rss.max(rss_mib(server.pid()));
        let delivered = receiver.received().iter().filter(|r| r.ok()).count();
        assert!(
            Instant::now() < deadline,
            "every other key is delivered while A fails: {delivered} of {OTHERS}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !any_delivered_of(&receiver.received(), "A"),
        "A was failing all along"
    );
    eprintln!(
        "{OTHERS} events of other keys delivered past a failing key in {:?}, peak RSS {peak_rss} MiB",
        started.elapsed()
    );
    healed.store(true, std::sync::atomic::Ordering::SeqCst);
    receiver
        .wait_for(
            "A's events, once A recovers",
            Duration::from_secs(60),
            |r| all_delivered(r, a_seqs.iter().copied()),
        )
        .await;
    let received = receiver.received();
    assert_first_deliveries_in_order(&received);
    let a_order: Vec<u64> = received
        .iter()
        .filter(|r| r.ok() && seq_of(r).0 == "A")
        .map(|r| seq_of(r).1)
        .collect();
    assert_eq!(a_order, a_seqs, "A delivered once each, in publish order");
    assert!(
        peak_rss < 200,
        "memory stays bounded behind a failing key: {peak_rss} MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_failing_key_holds_only_its_own_events() {
    a_failing_key_holds_only_its_own_events(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_failing_key_holds_only_its_own_events() {
    a_failing_key_holds_only_its_own_events(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_failing_key_holds_only_its_own_events() {
    a_failing_key_holds_only_its_own_events(Backend::kafka()).await;
}
