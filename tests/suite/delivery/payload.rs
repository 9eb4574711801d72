//! The delivery engine against the real binary and a real HTTP receiver: signatures, order
//! under failure, no head-of-line blocking, dead letters, crash recovery, bounded memory,
//! rate limits and Retry-After.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::receiver::{Received, Receiver, Reply, assert_first_deliveries_in_order, seq_of};
use common::*;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const SECRET_NEW: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_OLD: &str = "whsec_dGVzdC1vbGQtc2VjcmV0LWtleS0xMjM0NQ==";

/// A route `events` on topic `events` (type from X-Type, key from /key) plus `subs`.
fn config(dir: &std::path::Path, subs: &str) -> String {
    base_config(dir)
        + r#"
routes:
  - name: events
    topic: events
    verify: { kind: none }
    event_type: { header: X-Type, default: test }
    key: { json: /key }
subscriptions:
"# + subs
}

async fn post(
    client: &reqwest::Client,
    server: &Hookbridge,
    event_type: &str,
    body: serde_json::Value,
) -> String {
    let response = client
        .post(server.hook_url("events"))
        .header("x-type", event_type)
        .header("x-custom", "kept")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Verifies a Standard Webhooks signature independently of hookbridge.
fn signature_ok(secret: &str, received: &Received) -> bool {
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(
        format!(
            "{}.{}.",
            received.header("webhook-id"),
            received.header("webhook-timestamp")
        )
        .as_bytes(),
    );
    mac.update(&received.body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    received
        .header("webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

#[tokio::test]
async fn deliveries_are_signed_and_shaped_per_payload_mode() {
    let (raw, json, ce) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        r#"  - name: raw
    topics: [events]
    url: {}
    signing: {{ secrets: [{SECRET_NEW}, {SECRET_OLD}] }}
    forward_headers: [X-Custom]
  - name: json
    topics: [events]
    url: {}
    payload: envelope_json
    filter: {{ types: ["order.*"] }}
  - name: ce
    topics: [events]
    url: {}
    payload: cloudevents
"#,
        raw.url, json.url, ce.url
    );
    let server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let client = http_client();
    let id1 = post(
        &client,
        &server,
        "order.created",
        serde_json::json!({"key": "k1", "n": 1}),
    )
    .await;
    let id2 = post(
        &client,
        &server,
        "user.deleted",
        serde_json::json!({"key": "k2", "n": 2}),
    )
    .await;

    raw.wait_for("two raw deliveries", Duration::from_secs(20), |r| {
        r.len() >= 2
    })
    .await;
    ce.wait_for("two cloudevents deliveries", Duration::from_secs(20), |r| {
        r.len() >= 2
    })
    .await;
    json.wait_for("one filtered delivery", Duration::from_secs(20), |r| {
        !r.is_empty()
    })
    .await;

    let now = unix_now();
    for r in raw.received() {
        assert!(signature_ok(SECRET_NEW, &r), "signed with the new secret");
        assert!(
            signature_ok(SECRET_OLD, &r),
            "and with the old one while rotating"
        );
        assert!(!signature_ok("whsec_d3Jvbmc=", &r));
        assert!((r.header("webhook-timestamp").parse::<i64>().unwrap() - now).abs() < 60);
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.header("x-custom"), "kept", "forward_headers");
        assert_eq!(r.header("hookbridge-source"), "events");
        assert_eq!(r.header("hookbridge-attempt"), "1");
    }
    let by_id: HashMap<String, Received> = raw
        .received()
        .into_iter()
        .map(|r| (r.header("webhook-id").to_string(), r))
        .collect();
    assert_eq!(
        by_id[&id1].json(),
        serde_json::json!({"key": "k1", "n": 1}),
        "raw body untouched"
    );
    assert_eq!(by_id[&id1].header("hookbridge-event-type"), "order.created");
    assert_eq!(by_id[&id2].header("hookbridge-event-type"), "user.deleted");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let json_got = json.received();
    assert_eq!(
        json_got.len(),
        1,
        "the type filter let only order.* through"
    );
    let envelope = json_got[0].json();
    assert_eq!(envelope["id"], id1);
    assert_eq!(envelope["source"], "events");
    assert_eq!(envelope["type"], "order.created");
    assert_eq!(envelope["key"], "k1");
    assert_eq!(envelope["method"], "POST");
    assert_eq!(envelope["path"], "/hooks/events");
    assert_eq!(
        STANDARD.decode(envelope["body"].as_str().unwrap()).unwrap(),
        br#"{"key":"k1","n":1}"#
    );
    assert!(envelope["receivedAt"].as_str().unwrap().ends_with('Z'));
    assert!(
        envelope["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "x-custom" && h["value"] == "kept")
    );
    assert_eq!(
        json_got[0].header("webhook-signature"),
        "",
        "unsigned without signing config"
    );

    let ce_got: HashMap<String, Received> = ce
        .received()
        .into_iter()
        .map(|r| (r.header("ce-id").to_string(), r))
        .collect();
    let c = &ce_got[&id1];
    assert_eq!(c.header("ce-specversion"), "1.0");
    assert_eq!(c.header("ce-type"), "order.created");
    assert_eq!(c.header("ce-source"), "/hookbridge/events");
    assert_eq!(c.header("ce-subject"), "k1");
    assert!(c.header("ce-time").starts_with("20"));
    assert_eq!(c.header("webhook-id"), id1);
    assert_eq!(c.json(), serde_json::json!({"key": "k1", "n": 1}));
}

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

#[tokio::test]
async fn failures_are_dead_lettered_and_the_commit_moves_past_them() {
    let receiver = Receiver::start().await;
    receiver.answer(|headers, _| {
        Reply::status(
            match headers
                .get("hookbridge-event-type")
                .map(|v| v.to_str().unwrap())
            {
                Some("bad-request") => 400,
                Some("server-error") => 500,
                _ => 200,
            },
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        "  - name: dl\n    topics: [events]\n    url: {}\n    ordering: partition\n    retry: {{ initial_backoff: 10ms, max_backoff: 20ms, max_attempts: 3 }}\n",
        receiver.url
    );
    let mut server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let client = http_client();
    // One key, so all three share a partition (and a lane: the good one waits its turn).
    let bad = post(
        &client,
        &server,
        "bad-request",
        serde_json::json!({"key": "same"}),
    )
    .await;
    let failing = post(
        &client,
        &server,
        "server-error",
        serde_json::json!({"key": "same"}),
    )
    .await;
    let good = post(&client, &server, "fine", serde_json::json!({"key": "same"})).await;
    receiver
        .wait_for(
            "the good event after both failures",
            Duration::from_secs(20),
            |r| r.iter().any(|r| r.ok()),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await; // a commit interval
    assert!(server.terminate().success());

    let attempts = |id: &str| {
        receiver
            .received()
            .iter()
            .filter(|r| r.header("webhook-id") == id)
            .count()
    };
    assert_eq!(attempts(&bad), 1, "a 400 is permanent");
    assert_eq!(attempts(&failing), 3, "a 500 is retried up to max_attempts");
    assert_eq!(attempts(&good), 1);

    let dead = read_topic(dir.path(), "hookbridge.dlq.dl").await;
    assert_eq!(dead.len(), 2);
    for (record, (id, status, tries)) in dead
        .iter()
        .zip([(&bad, "400", "1"), (&failing, "500", "3")])
    {
        let envelope = hookbridge::envelope::Envelope::from_record(record)
            .expect("the envelope itself")
            .unwrap();
        assert_eq!(&envelope.id, id);
        let header = |name: &str| String::from_utf8(record.header(name).unwrap().to_vec()).unwrap();
        assert_eq!(header("hb-dlq-last-status"), status);
        assert_eq!(header("hb-dlq-attempts"), tries);
        assert!(header("hb-dlq-last-error").contains(status));
        assert_eq!(header("hb-dlq-subscription"), "dl");
        assert_eq!(header("hb-dlq-topic"), "events");
    }
    let partition = hookbridge::broker::partitioner::partition_for_key(b"same", 4);
    let events = read_topic(dir.path(), "events").await;
    let last = events
        .iter()
        .filter(|r| r.partition == partition)
        .map(|r| r.offset)
        .max()
        .unwrap();
    let broker = open_log(dir.path());
    assert_eq!(
        broker
            .committed("hookbridge.dl", "events", partition)
            .unwrap(),
        Some(last + 1),
        "committed past all three"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_delivery_redelivers_everything_in_order() {
    const EVENTS: u64 = 2_000;
    let receiver = Receiver::start().await;
    // The receiver answers the first quarter, then holds every request: the process is
    // killed mid-delivery however fast or slow the machine is.
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    receiver.answer(move |_, _| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        Reply {
            status: 200,
            delay: if n < EVENTS as usize / 4 {
                Duration::from_millis(5)
            } else {
                Duration::from_secs(600)
            },
            retry_after: None,
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        "  - name: crashy\n    topics: [events]\n    url: {}\n    max_in_flight: 4\n",
        receiver.url
    );
    let mut server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let client = http_client();
    for seq in 0..EVENTS {
        let body = serde_json::json!({"key": format!("k{}", seq % 20), "seq": seq});
        client
            .post(server.hook_url("events"))
            .json(&body)
            .send()
            .await
            .unwrap();
    }
    receiver
        .wait_for("a quarter delivered", Duration::from_secs(60), |r| {
            r.len() >= EVENTS as usize / 4
        })
        .await;
    server.kill();
    let before_restart = receiver.count();
    assert!(
        before_restart < EVENTS as usize * 3 / 4,
        "killed mid-delivery"
    );
    receiver.answer(|_, _| Reply::status(200));

    let _server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    receiver
        .wait_for(
            "every event after the restart",
            Duration::from_secs(120),
            |r| r.iter().map(seq_of).collect::<HashSet<_>>().len() >= EVENTS as usize,
        )
        .await;
    let received = receiver.received();
    assert_first_deliveries_in_order(&received);
    let ids: HashMap<u64, HashSet<String>> = received.iter().fold(HashMap::new(), |mut m, r| {
        m.entry(seq_of(r).1)
            .or_default()
            .insert(r.header("webhook-id").to_string());
        m
    });
    assert!(
        ids.values().all(|set| set.len() == 1),
        "a redelivery carries the same webhook-id"
    );
    eprintln!(
        "{EVENTS} events: {before_restart} requests before kill -9, {} in all, {} redelivered",
        received.len(),
        received.len() - EVENTS as usize
    );
}

#[tokio::test]
async fn rate_limit_holds_and_retry_after_is_honoured() {
    let receiver = Receiver::start().await;
    let first_429 = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let seen = first_429.clone();
    receiver.answer(move |headers, _| {
        let id = headers["webhook-id"].to_str().unwrap().to_string();
        if headers["hookbridge-event-type"] == "throttled" && seen.lock().unwrap().insert(id) {
            return Reply {
                status: 429,
                delay: Duration::ZERO,
                retry_after: Some(2),
            };
        }
        Reply::status(200)
    });
    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        "  - name: limited\n    topics: [events]\n    url: {}\n    ordering: none\n    rate_limit: {{ per_second: 50, burst: 1 }}\n    filter: {{ types: [paced] }}\n  - name: polite\n    topics: [events]\n    url: {}\n    filter: {{ types: [throttled] }}\n    retry: {{ initial_backoff: 10ms, max_backoff: 20ms }}\n",
        receiver.url, receiver.url
    );
    let server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let client = http_client();
    let throttled = post(
        &client,
        &server,
        "throttled",
        serde_json::json!({"key": "t"}),
    )
    .await;
    for seq in 0..150 {
        post(
            &client,
            &server,
            "paced",
            serde_json::json!({"key": format!("p{seq}"), "seq": seq}),
        )
        .await;
    }
    receiver
        .wait_for(
            "150 paced and the throttled one",
            Duration::from_secs(30),
            |r| {
                r.iter()
                    .filter(|r| r.header("hookbridge-event-type") == "paced")
                    .count()
                    >= 150
                    && r.iter()
                        .filter(|r| r.header("webhook-id") == throttled)
                        .count()
                        >= 2
            },
        )
        .await;
    let received = receiver.received();
    let paced: Vec<Instant> = received
        .iter()
        .filter(|r| r.header("hookbridge-event-type") == "paced")
        .map(|r| r.at)
        .collect();
    let span = paced.last().unwrap().duration_since(paced[0]);
    let rate = (paced.len() - 1) as f64 / span.as_secs_f64();
    eprintln!("rate limit 50/s: measured {rate:.1}/s over {span:?}");
    assert!(
        (45.0..=55.0).contains(&rate),
        "within 10% of 50/s: {rate:.1}"
    );

    let tries: Vec<Instant> = received
        .iter()
        .filter(|r| r.header("webhook-id") == throttled)
        .map(|r| r.at)
        .collect();
    let gap = tries[1].duration_since(tries[0]);
    assert!(
        gap >= Duration::from_millis(1950) && gap < Duration::from_secs(4),
        "Retry-After: 2 honoured: {gap:?}"
    );
}

/// Fills the `events` topic of a data dir with `n` foreign records (as any producer would),
/// starts hookbridge on it with a subscriber that never answers, and returns the peak RSS
/// over a few seconds of trying to deliver.
async fn peak_rss_with_backlog(n: usize) -> u64 {
    use hookbridge::broker::{Publisher, Record};
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open_log(dir.path());
        let mut pending = tokio::task::JoinSet::new();
        for i in 0..n {
            let log = log.clone();
            pending.spawn(async move {
                let record = Record {
                    topic: "events".into(),
                    key: Some(bytes::Bytes::from(format!("key-{}", i % 1000))),
                    headers: vec![],
                    value: bytes::Bytes::from(vec![b'x'; 512]),
                };
                log.publish(record).await.unwrap();
            });
            if pending.len() >= 2_000 {
                pending.join_next().await;
            }
        }
        while pending.join_next().await.is_some() {}
        log.close().await;
    }
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", stalled.local_addr().unwrap());
    let sockets = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = stalled.accept().await {
            held.push(socket);
        }
    });
    let subs =
        format!("  - name: stalled\n    topics: [events]\n    url: {url}\n    timeout: 60s\n");
    let server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let mut peak = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(rss_bytes(server.pid()));
    }
    sockets.abort();
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_does_not_grow_with_the_backlog() {
    const MIB: u64 = 1 << 20;
    let small = peak_rss_with_backlog(10).await;
    let large = peak_rss_with_backlog(200_000).await;
    eprintln!(
        "peak RSS behind a stalled subscriber: {} MiB with 10 events, {} MiB with 200,000",
        small / MIB,
        large / MIB
    );
    // 200,000 events of 512 bytes are about 100 MiB of payload. What may be held is the
    // storage engine's fixed budget (a 16 MiB memtable and a 16 MiB block cache, filled by
    // any backlog bigger than they are) and each partition's read-ahead and lane buffer.
    assert!(
        large < 64 * MIB,
        "peak RSS {} MiB over the 64 MiB bound",
        large / MIB
    );
    assert!(
        large < small + 32 * MIB,
        "{} MiB vs {} MiB: memory grew with the backlog",
        large / MIB,
        small / MIB
    );
}

#[tokio::test]
async fn foreign_records_are_delivered_as_they_are() {
    use hookbridge::broker::{Publisher, Record, RecordHeader};
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open_log(dir.path());
        let record = Record {
            topic: "orders".into(),
            key: Some(bytes::Bytes::from_static(b"o-1")),
            headers: vec![
                RecordHeader {
                    name: "content-type".into(),
                    value: bytes::Bytes::from_static(b"application/xml"),
                },
                RecordHeader {
                    name: "x-origin".into(),
                    value: bytes::Bytes::from_static(b"erp"),
                },
            ],
            value: bytes::Bytes::from_static(b"<order id='1'/>"),
        };
        log.publish(record).await.unwrap();
        log.close().await;
    }
    let subs = format!(
        "  - name: erp\n    topics: [orders]\n    url: {}\n    forward_headers: [X-Origin]\n  - name: erp-json\n    topics: [orders]\n    url: {}\n    payload: envelope_json\n",
        receiver.url, receiver.url
    );
    let mut server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    receiver
        .wait_for("both deliveries", Duration::from_secs(20), |r| r.len() >= 2)
        .await;
    let received = receiver.received();
    let raw = received
        .iter()
        .find(|r| r.header("content-type") == "application/xml")
        .expect("raw delivery");
    assert_eq!(&raw.body[..], b"<order id='1'/>");
    assert_eq!(
        raw.header("x-origin"),
        "erp",
        "record headers forward like request headers"
    );
    assert_eq!(raw.header("hookbridge-source"), "orders");
    let json = received
        .iter()
        .find(|r| r.header("content-type") == "application/json")
        .unwrap()
        .json();
    assert_eq!(
        json["attributes"]["x-origin"], "erp",
        "record headers become attributes"
    );
    assert_eq!(json["key"], "o-1");
    let id = raw.header("webhook-id").to_string();
    assert_eq!(
        json["id"],
        id.as_str(),
        "the id derives from where the record sits"
    );

    // After a restart with the offsets reset, the same record gets the same id.
    server.kill();
    let receiver2 = Receiver::start().await;
    let subs = format!(
        "  - name: erp-again\n    topics: [orders]\n    url: {}\n",
        receiver2.url
    );
    let _server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    receiver2
        .wait_for("redelivery", Duration::from_secs(20), |r| !r.is_empty())
        .await;
    assert_eq!(receiver2.received()[0].header("webhook-id"), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_delivery_commits_what_is_done() {
    const EVENTS: u64 = 1_000;
    let receiver = Receiver::start().await;
    receiver.answer(|_, _| Reply {
        status: 200,
        delay: Duration::from_millis(20),
        retry_after: None,
    });
    let dir = tempfile::tempdir().unwrap();
    // One lane per partition, so what is done is always a contiguous run and can be
    // committed whole. (With per-key lanes, events finished past one still queued in another
    // lane are repeated after a restart: an offset commit cannot skip a gap.)
    let subs = format!(
        "  - name: graceful\n    topics: [events]\n    url: {}\n    ordering: partition\n    max_in_flight: 4\n",
        receiver.url
    );
    let mut server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let client = http_client();
    for seq in 0..EVENTS {
        let body = serde_json::json!({"key": format!("k{}", seq % 10), "seq": seq});
        client
            .post(server.hook_url("events"))
            .json(&body)
            .send()
            .await
            .unwrap();
    }
    receiver
        .wait_for("some deliveries", Duration::from_secs(60), |r| {
            r.len() >= 200
        })
        .await;
    let stopping = Instant::now();
    assert!(
        server.terminate().success(),
        "SIGTERM exits 0:\n{}",
        server.log_text()
    );
    let stop_took = stopping.elapsed();
    let before = receiver.count();
    assert!(before < EVENTS as usize, "stopped mid-delivery");

    let _server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    receiver
        .wait_for("the rest after the restart", Duration::from_secs(60), |r| {
            r.iter().map(seq_of).collect::<HashSet<_>>().len() >= EVENTS as usize
        })
        .await;
    let redelivered = receiver.count() - EVENTS as usize;
    eprintln!(
        "SIGTERM after {before} deliveries: stopped in {stop_took:?}, {redelivered} redelivered after the restart"
    );
    // Attempts on the wire finished and their offsets were committed before the exit.
    assert_eq!(redelivered, 0);
    assert!(stop_took < Duration::from_secs(5));
}

/// The delivery client's edges: an answer slower than `timeout` is a failed attempt and is
/// retried; a redirect is not followed (it is an answer like any other 3xx: permanent, so
/// the event is dead-lettered and the redirect target never sees it); credentials in the
/// URL travel as basic authorization, not in the request line.
#[tokio::test]
async fn slow_answers_time_out_redirects_are_not_followed_and_url_credentials_are_sent() {
    let receiver = Receiver::start().await;
    let slow_seen = Arc::new(AtomicUsize::new(0));
    let seen = slow_seen.clone();
    receiver.answer(move |headers, _| {
        match headers
            .get("hookbridge-event-type")
            .map(|v| v.to_str().unwrap())
        {
            // The first attempt answers after the 1 s timeout, the second at once.
            Some("slow") if seen.fetch_add(1, Ordering::SeqCst) == 0 => Reply {
                status: 200,
                delay: Duration::from_secs(3),
                retry_after: None,
            },
            Some("moved") => Reply::status(302),
            _ => Reply::status(200),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let url = receiver
        .url
        .replacen("http://", "http://hook%40user:p%3Ass@", 1);
    let subs = format!(
        "  - name: edges\n    topics: [events]\n    url: {url}\n    timeout: 1s\n    retry: {{ initial_backoff: 10ms, max_backoff: 20ms, max_attempts: 3 }}\n"
    );
    let mut server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let client = http_client();
    let slow = post(&client, &server, "slow", serde_json::json!({"key": "a"})).await;
    let moved = post(&client, &server, "moved", serde_json::json!({"key": "b"})).await;
    receiver
        .wait_for(
            "the slow event's second attempt",
            Duration::from_secs(20),
            |r| {
                r.iter().any(|r| {
                    r.header("webhook-id") == slow && r.header("hookbridge-attempt") == "2"
                })
            },
        )
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await; // a commit interval
    assert!(server.terminate().success());

    let received = receiver.received();
    let of = |id: &str| -> Vec<&Received> {
        received
            .iter()
            .filter(|r| r.header("webhook-id") == id)
            .collect()
    };
    // The receiver logs a request when it answers; the timed-out first attempt was
    // dropped before that, so only the counter saw it.
    assert_eq!(
        slow_seen.load(Ordering::SeqCst),
        2,
        "the slow answer counts as a failed attempt"
    );
    let attempts: Vec<&str> = of(&slow)
        .iter()
        .map(|r| r.header("hookbridge-attempt"))
        .collect();
    assert_eq!(attempts, ["2"]);
    assert_eq!(of(&moved).len(), 1, "a 302 is not followed or retried");
    let expected = format!("Basic {}", STANDARD.encode("hook@user:p:ss"));
    for r in &received {
        assert_eq!(r.header("authorization"), expected);
    }

    let dead = read_topic(dir.path(), "hookbridge.dlq.edges").await;
    assert_eq!(dead.len(), 1);
    let header = |name: &str| String::from_utf8(dead[0].header(name).unwrap().to_vec()).unwrap();
    assert_eq!(header("hb-dlq-last-status"), "302");
    assert_eq!(header("hb-dlq-attempts"), "1");
}
