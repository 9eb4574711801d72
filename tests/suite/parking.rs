//! Parked keys (G8): a key failing longer than `retry.park_after` moves to the parking topic
//! with its later events, the partition's other keys and its commit point move on, and once
//! the key recovers its events flow on the normal path again, never out of order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::backend::{Backend, FailingKey};
use crate::support::receiver::{Receiver, Reply, all_delivered, any_delivered_of, seq_of};
use crate::support::*;

/// Retries quickly and without end, and parks a key after one second of failing.
const PARK_QUICKLY: &str = "    breaker: { failures: 1000000 }\n    retry: { initial_backoff: 50ms, max_backoff: 200ms, max_attempts: 1000000, max_age: 1h, park_after: 1s }\n";

/// One partition; key A fails for a while, is parked, recovers; its events keep arriving
/// throughout, among events of other keys.
async fn a_parked_key_recovers_in_order_while_its_events_keep_arriving(backend: Backend) {
    const EVENTS: u64 = 1_000;
    let topic = unique("orders");
    let receiver = Receiver::start().await;
    // A fails for its first 3 seconds of attempts, then recovers.
    let first_failure = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let failing_since = first_failure.clone();
    receiver.answer(move |_, body| {
        let body: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        if body["key"] != "A" {
            return Reply::status(200);
        }
        let since = *failing_since
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
        if since.elapsed() < Duration::from_secs(3) {
            Reply::status(500)
        } else {
            Reply::status(200)
        }
    });
    let subs = format!(
        "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n{PARK_QUICKLY}",
        receiver.url
    );
    let config = events_config(&backend.broker(1), &topic, &subs);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Hookbridge::start(dir.path(), &config);
    let ingresses = Arc::new(std::sync::Mutex::new(vec![server.ingress.clone()]));

    // Every fifth event is A's, about 100 events a second.
    let key = |seq: u64| {
        if seq.is_multiple_of(5) {
            "A".to_string()
        } else {
            format!("k{}", seq % 7)
        }
    };
    let events: Vec<(String, u64)> = (0..EVENTS).map(|s| (key(s), s)).collect();
    post_events(ingresses, events, 1, Duration::from_millis(10)).await;
    // A recovered about 3 s into the 10 s of traffic: it is back on the normal path while
    // its events are still arriving, not only once they stop.
    let log = server.log_text();
    assert!(log.contains("parking it"), "A was parked:\n{log}");
    assert!(
        log.contains("parked keys recovered"),
        "A went back to the normal path while its events kept arriving:\n{log}"
    );
    receiver
        .wait_for("every event", Duration::from_secs(90), |r| {
            all_delivered(r, 0..EVENTS)
        })
        .await;

    let received = receiver.received();
    // A's events answered 2xx exactly once each, in publish order.
    let a_delivered: Vec<u64> = received
        .iter()
        .filter(|r| r.ok() && seq_of(r).0 == "A")
        .map(|r| seq_of(r).1)
        .collect();
    let a_published: Vec<u64> = (0..EVENTS).filter(|s| s % 5 == 0).collect();
    assert_eq!(a_delivered, a_published, "A's events, once each, in order");
    // No request of A started before the previous one was answered.
    support::receiver::assert_no_overlap_per_key(&received);
    // The other keys never waited for A: each was delivered at its first attempt.
    let others_late = received
        .iter()
        .filter(|r| seq_of(r).0 != "A" && !r.ok())
        .count();
    assert_eq!(others_late, 0, "other keys never failed");
    server.terminate();
    let failed = received.iter().filter(|r| !r.ok()).count();
    eprintln!(
        "A parked after failing, recovered, {} events of A delivered in order ({failed} failed attempts)",
        a_delivered.len()
    );
}

/// Key A fails at a high rate for the whole first run: it is parked and every event of
/// the partition is done (delivered or parked), so the commit point is at the end; the
/// parked key survives a restart (its new events still follow it to the parking topic);
/// when A recovers, its events arrive exactly in publish order.
async fn a_parked_key_stays_parked_across_a_restart(backend: Backend) {
    const FIRST: u64 = 1_000;
    const SECOND: u64 = 200;
    let scenario = FailingKey::start(&backend, 1, PARK_QUICKLY).await;
    let (topic, receiver, config) = (&scenario.topic, &scenario.receiver, &scenario.config);
    let key = |seq: u64| {
        if seq.is_multiple_of(2) {
            "A".to_string()
        } else {
            format!("k{}", seq % 9)
        }
    };
    let others_delivered = |r: &[support::receiver::Received], seqs: std::ops::Range<u64>| {
        all_delivered(r, seqs.filter(|s| s % 2 == 1))
    };

    let dir = tempfile::tempdir().unwrap();
    let mut server = Hookbridge::start(dir.path(), config);
    let ingresses = Arc::new(std::sync::Mutex::new(vec![server.ingress.clone()]));
    // A's first event fails until A is parked; then the rest at full speed.
    post_events(ingresses.clone(), vec![(key(0), 0)], 1, Duration::ZERO).await;
    receiver
        .wait_for("A failing", Duration::from_secs(60), |r| {
            r.iter().any(|r| !r.ok())
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // One at a time: publish order is seq order, which the receiver checks.
    let events: Vec<(String, u64)> = (1..FIRST).map(|s| (key(s), s)).collect();
    post_events(ingresses, events, 1, Duration::ZERO).await;
    receiver
        .wait_for("the other keys' events", Duration::from_secs(120), |r| {
            others_delivered(r, 0..FIRST)
        })
        .await;
    // Every event of the partition is delivered or parked: the commit point reaches the end.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.terminate();
    let log = server.log_text();
    assert!(log.contains("parking it"), "A was parked:\n{log}");
    if let Backend::Embedded(data) = &backend {
        let log = open_log(data.path());
        let group = format!("hookbridge.{topic}");
        assert_eq!(
            log.committed(&group, topic, 0).unwrap(),
            Some(FIRST),
            "the commit point moved past A's events"
        );
        let parked = log.read_topic(&format!("hookbridge.park.{topic}")).unwrap();
        assert!(
            parked.len() as u64 >= FIRST / 2,
            "the parking topic holds A's backlog: {}",
            parked.len()
        );
    }

    let restarted_dir = tempfile::tempdir().unwrap();
    let mut restarted = Hookbridge::start(restarted_dir.path(), config);
    let ingresses = Arc::new(std::sync::Mutex::new(vec![restarted.ingress.clone()]));
    let events: Vec<(String, u64)> = (FIRST..FIRST + SECOND).map(|s| (key(s), s)).collect();
    post_events(ingresses, events, 1, Duration::ZERO).await;
    receiver
        .wait_for(
            "the other keys' events after the restart",
            Duration::from_secs(120),
            |r| others_delivered(r, FIRST..FIRST + SECOND),
        )
        .await;
    scenario.recover();
    receiver
        .wait_for(
            "A's events, once A recovers",
            Duration::from_secs(120),
            |r| all_delivered(r, 0..FIRST + SECOND),
        )
        .await;
    let a_delivered: Vec<u64> = receiver
        .received()
        .iter()
        .filter(|r| r.ok() && seq_of(r).0 == "A")
        .map(|r| seq_of(r).1)
        .collect();
    let a_published: Vec<u64> = (0..FIRST + SECOND).filter(|s| s % 2 == 0).collect();
    assert_eq!(
        a_delivered, a_published,
        "A's events, once each, in publish order across the restart"
    );
    restarted.terminate();
}

/// Key A fails for the whole test while half of 20,000 events are A's, posted as fast as
/// the ingress takes them: A is parked, the other keys are delivered, the replica's memory
/// stays flat from the first quarter to the end, the partition's commit point reaches the
/// end (every event delivered or parked) and the parking topic's partition holds A's backlog.
async fn a_key_failing_throughout_keeps_memory_flat_and_the_commit_point_moving(backend: Backend) {
    const EVENTS: u64 = 20_000;
    const QUARTER: u64 = EVENTS / 4;
    let scenario = FailingKey::start(&backend, 1, PARK_QUICKLY).await;
    let (topic, receiver, config) = (&scenario.topic, &scenario.receiver, &scenario.config);
    let key = |seq: u64| {
        if seq.is_multiple_of(2) {
            "A".to_string()
        } else {
            format!("k{}", seq % 9)
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = Hookbridge::start(dir.path(), config);
    let ingresses = Arc::new(std::sync::Mutex::new(vec![server.ingress.clone()]));
    post_events(ingresses.clone(), vec![(key(0), 0)], 1, Duration::ZERO).await;
    receiver
        .wait_for("A failing", Duration::from_secs(60), |r| {
            r.iter().any(|r| !r.ok())
        })
        .await;
    let mut rss = Vec::new();
    for quarter in 0..4 {
        let seqs = (quarter * QUARTER).max(1)..(quarter + 1) * QUARTER;
        let events: Vec<(String, u64)> = seqs.clone().map(|s| (key(s), s)).collect();
        post_events(ingresses.clone(), events, 16, Duration::ZERO).await;
        receiver
            .wait_for("the other keys' events", Duration::from_secs(120), |r| {
                all_delivered(r, seqs.clone().filter(|s| s % 2 == 1))
            })
            .await;
        rss.push(rss_mib(server.pid()));
    }
    assert!(
        !any_delivered_of(&receiver.received(), "A"),
        "A failed throughout"
    );
    let metrics = http_client()
        .get(format!("{}/metrics", server.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let parked = format!("hookbridge_parked_keys{{subscription=\"{topic}\"}} 1");
    assert!(
        metrics.lines().any(|line| line == parked),
        "the metrics count A as parked:\n{metrics}"
    );
    // Every event is delivered or parked: the commit point reaches the end, as the next
    // commit ticks record it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(server.terminate().success());
    let group = format!("hookbridge.{topic}");
    let parking = format!("hookbridge.park.{topic}");
    let next = backend.commit_point(&group, topic, 0).await;
    // JetStream's sequences start at 1, other offsets at 0.
    let end = if matches!(backend, Backend::Nats(_)) {
        EVENTS + 1
    } else {
        EVENTS
    };
    assert_eq!(next, end, "the commit point moved past A's events");
    let parked_from = backend.commit_point(&group, &parking, 0).await;
    let parked_to = backend.end_offset(&parking, 0).await;
    eprintln!(
        "a key failing throughout, {EVENTS} events: RSS by quarter {rss:?} MiB; commit point {next}; parking partition from {parked_from} to {parked_to}"
    );
    assert!(
        parked_to - parked_from >= EVENTS / 2,
        "the parking topic holds A's backlog: {parked_from}..{parked_to}"
    );
    // The embedded log keeps its own bounded memory in the process: memtables and a block
    // cache (src/broker/embedded/log.rs, 40 MiB at most), filling as the 30,000 records
    // (A's twice) are written. Elsewhere the broker's memory is not the replica's.
    let storage_budget = if matches!(backend, Backend::Embedded(_)) {
        40
    } else {
        0
    };
    assert!(
        rss[3] <= rss[0] + 16 + storage_budget,
        "memory stays flat while A's backlog grows on the parking topic: {rss:?} MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_parked_key_stays_parked_across_a_restart() {
    a_parked_key_stays_parked_across_a_restart(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_parked_key_stays_parked_across_a_restart() {
    a_parked_key_stays_parked_across_a_restart(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_parked_key_stays_parked_across_a_restart() {
    a_parked_key_stays_parked_across_a_restart(Backend::kafka()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_key_failing_throughout_keeps_memory_flat_and_the_commit_point_moving() {
    a_key_failing_throughout_keeps_memory_flat_and_the_commit_point_moving(Backend::embedded())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_key_failing_throughout_keeps_memory_flat_and_the_commit_point_moving() {
    a_key_failing_throughout_keeps_memory_flat_and_the_commit_point_moving(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_key_failing_throughout_keeps_memory_flat_and_the_commit_point_moving() {
    a_key_failing_throughout_keeps_memory_flat_and_the_commit_point_moving(Backend::kafka()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_parked_key_recovers_in_order_while_its_events_keep_arriving() {
    a_parked_key_recovers_in_order_while_its_events_keep_arriving(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_parked_key_recovers_in_order_while_its_events_keep_arriving() {
    a_parked_key_recovers_in_order_while_its_events_keep_arriving(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_parked_key_recovers_in_order_while_its_events_keep_arriving() {
    a_parked_key_recovers_in_order_while_its_events_keep_arriving(Backend::kafka()).await;
}

/// 150 keys fail at once, more than a partition's stored parked set holds (64): the ones
/// that park are remembered across a graceful restart, the others wait in place, and every
/// key's events still arrive in publish order once the receiver recovers, those posted after
/// the restart included.
async fn more_keys_fail_at_once_than_the_parked_set_holds(backend: Backend) {
    const KEYS: u64 = 150;
    let topic = unique("shard");
    let receiver = Receiver::start().await;
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fails = failing.clone();
    receiver.answer(move |_, body| {
        let body: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let key = body["key"].as_str().unwrap_or_default();
        if key.starts_with('f') && fails.load(std::sync::atomic::Ordering::Relaxed) {
            Reply::status(503)
        } else {
            Reply::status(200)
        }
    });
    let subs = format!(
        "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n    max_in_flight: 256\n{PARK_QUICKLY}",
        receiver.url
    );
    let config = events_config(&backend.broker(1), &topic, &subs);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Hookbridge::start(dir.path(), &config);
    // Two events of each failing key, then events of healthy keys.
    let round = |r: u64| (0..KEYS).map(move |k| (format!("f{k}"), r * KEYS + k));
    let events: Vec<(String, u64)> = round(0).chain(round(1)).collect();
    let ingresses = Arc::new(std::sync::Mutex::new(vec![server.ingress.clone()]));
    post_events(ingresses, events, 16, Duration::ZERO).await;
    // Failing for longer than park_after: the keys that may park have parked, as many as
    // the stored set holds.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let parked = server.log_text().matches("parking it").count();
    assert!(
        (1..=64).contains(&parked),
        "{parked} keys parked; the stored set holds 64"
    );
    assert!(server.terminate().success(), "SIGTERM: clean exit");
    // The embedded log lives in the backend's directory, not the replica's.
    let restarted_dir = tempfile::tempdir().unwrap();
    let restarted = Hookbridge::start(restarted_dir.path(), &config);
    // A third event of each key after the restart; then the receiver recovers.
    let ingresses = Arc::new(std::sync::Mutex::new(vec![restarted.ingress.clone()]));
    post_events(ingresses, round(2).collect(), 16, Duration::ZERO).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    failing.store(false, std::sync::atomic::Ordering::Relaxed);
    receiver
        .wait_for("every event", Duration::from_secs(120), |r| {
            all_delivered(r, 0..3 * KEYS)
        })
        .await;
    support::receiver::assert_first_deliveries_in_order(&receiver.received());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_more_keys_fail_at_once_than_the_parked_set_holds() {
    more_keys_fail_at_once_than_the_parked_set_holds(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_more_keys_fail_at_once_than_the_parked_set_holds() {
    more_keys_fail_at_once_than_the_parked_set_holds(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_more_keys_fail_at_once_than_the_parked_set_holds() {
    more_keys_fail_at_once_than_the_parked_set_holds(Backend::kafka()).await;
}

/// A key parks while its partition is being let go (SIGTERM during the attempt after which
/// it parks): the park is recorded with the last commit like any other, so the next owner
/// keeps the key parked and its later event waits for the parked one. (Not on NATS: there
/// the SIGTERM was seen ending the attempt on the wire at once, so nothing parks.)
async fn a_park_during_release_is_kept(backend: Backend) {
    let topic = unique("release");
    let receiver = Receiver::start().await;
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (seen, failing) = (
        attempts.clone(),
        Arc::new(std::sync::atomic::AtomicBool::new(true)),
    );
    let fails = failing.clone();
    // A's attempts are answered 503 after two seconds while `failing`.
    receiver.answer(move |_, body| {
        let body: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        if body["key"] != "A" {
            return Reply::status(200);
        }
        if !fails.load(std::sync::atomic::Ordering::Relaxed) {
            // Answered slowly, so that two of A's requests at once would show.
            return Reply {
                delay: Duration::from_millis(300),
                ..Reply::status(200)
            };
        }
        seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Reply {
            delay: Duration::from_secs(2),
            ..Reply::status(503)
        }
    });
    let subs = format!(
        "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n    timeout: 10s\n{PARK_QUICKLY}",
        receiver.url
    );
    let config = events_config(&backend.broker(1), &topic, &subs);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Hookbridge::start(dir.path(), &config);
    let ingresses = Arc::new(std::sync::Mutex::new(vec![server.ingress.clone()]));
    post_events(
        ingresses,
        vec![("A".into(), 0), ("A".into(), 1)],
        1,
        Duration::ZERO,
    )
    .await;
    // The second attempt is on the wire: it fails two seconds after the first failure,
    // past park_after, so A parks when it comes back, while the partition is let go.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while attempts.load(std::sync::atomic::Ordering::Relaxed) < 2 {
        assert!(std::time::Instant::now() < deadline, "A's second attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.terminate().success(), "SIGTERM: clean exit");
    assert!(
        server.log_text().contains("parking it"),
        "A parked while its partition was let go:\n{}",
        server.log_text()
    );
    failing.store(false, std::sync::atomic::Ordering::Relaxed);
    let restarted_dir = tempfile::tempdir().unwrap();
    let _restarted = Hookbridge::start(restarted_dir.path(), &config);
    receiver
        .wait_for("both of A's events", Duration::from_secs(60), |r| {
            all_delivered(r, 0..2)
        })
        .await;
    // A's second event is not sent before its first was delivered (G3).
    let received = receiver.received();
    let delivered_0 = received
        .iter()
        .filter(|r| r.ok() && seq_of(r).1 == 0)
        .map(|r| r.finished)
        .min()
        .unwrap();
    let sent_1 = received
        .iter()
        .filter(|r| seq_of(r).1 == 1)
        .map(|r| r.at)
        .min()
        .unwrap();
    assert!(
        sent_1 >= delivered_0,
        "A's event 1 was sent {:?} before event 0 was delivered",
        delivered_0 - sent_1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_park_during_release_is_kept() {
    a_park_during_release_is_kept(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_park_during_release_is_kept() {
    a_park_during_release_is_kept(Backend::kafka()).await;
}

/// NATS keeps a partition's parked keys in a KV entry and its completion in per-message
/// acks: two writes. A parked event's message must not be acked before its key is recorded
/// as parked, or a crash between the two forgets the park while the event is gone from the
/// partition, and the key's next event is delivered before it. Here the entry's write is
/// refused (another owner claimed it, as after a takeover), the replica is killed, and on
/// restart the parked event is still ahead of the key's next one.
#[tokio::test(flavor = "multi_thread")]
async fn nats_a_park_is_recorded_before_its_event_is_acked() {
    use hookbridge::broker::nats::parked::ParkedStore;
    let nats = NatsServer::start();
    let topic = unique("acked");
    let receiver = Receiver::start().await;
    let failing = failing_then_slow_below(&receiver, 1, Duration::from_millis(1500));
    let subs = format!(
        "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n{PARK_QUICKLY}",
        receiver.url
    );
    let config = events_config(&nats_broker(&nats.url(), 1), &topic, &subs);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Hookbridge::start(dir.path(), &config);
    server
        .wait_assigned(3, "the replica holds its partitions")
        .await;
    // Another owner claims the partition's parked keys: this replica's writes are refused.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let thief = ParkedStore::open(&js, &format!("hookbridge.{topic}"))
        .await
        .unwrap();
    thief.claim(&topic, 0).await.unwrap();
    support::post_accepted(&server, 1, |_| "K".into()).await;
    logged(&server, "parking it", "the key parked").await;
    // Commits go every half second; give a few the time to ack, or to try.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.kill();

    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let server = Hookbridge::start(dir.path(), &config);
    server
        .wait_assigned(3, "the restarted replica holds its partitions")
        .await;
    post_one(&server, "K", 1).await;
    receiver
        .wait_for("both events delivered", Duration::from_secs(30), |r| {
            all_delivered(r, 0..2)
        })
        .await;
    assert_first_delivered_in_order(
        &receiver,
        0..2,
        "the parked event was delivered before the key's next one",
    );
}

/// Two keys parked on one parking partition, the first parked failing on: the second,
/// once it recovers, is unparked, though the first's parked event is still not done ahead
/// of it (on NATS that event holds the parking consumer's ack floor, which alone cannot
/// tell that a later event is done).
async fn a_key_recovers_while_one_parked_before_it_still_fails(backend: Backend) {
    const TOKEN: &str = "unpark-admin-token-0123456789";
    let topic = unique("unpark");
    let receiver = Receiver::start().await;
    let b_fails = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let b_failing = b_fails.clone();
    receiver.answer(move |_, body| {
        let body: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let failing = body["key"] == "A"
            || (body["key"] == "B" && b_failing.load(std::sync::atomic::Ordering::SeqCst));
        Reply::status(if failing { 500 } else { 200 })
    });
    let subs = format!(
        "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n{PARK_QUICKLY}",
        receiver.url
    );
    let config = with_admin_token(&events_config(&backend.broker(1), &topic, &subs), TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(dir.path(), &config);
    let parked = || async {
        let status = admin_get(&server.admin, &format!("/v1/subscriptions/{topic}"), TOKEN).await;
        status["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|row| row["topic"] == topic.as_str())
            .map(|row| row["parked_keys"].as_u64().unwrap_or_default())
            .sum::<u64>()
    };
    let wait_parked = |n: u64, what: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        while parked().await != n {
            assert!(
                Instant::now() < deadline,
                "{what}: {} parked",
                parked().await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let post = |key: &'static str, seq: u64| {
        let url = server.hook_url("events");
        async move {
            let response = http_client()
                .post(url)
                .json(&serde_json::json!({"key": key, "seq": seq}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
        }
    };
    post("A", 0).await;
    wait_parked(1, "A parked").await;
    post("B", 1).await;
    wait_parked(2, "B parked behind A").await;
    b_fails.store(false, std::sync::atomic::Ordering::SeqCst);
    receiver
        .wait_for("B's parked event", Duration::from_secs(30), |r| {
            all_delivered(r, [1])
        })
        .await;
    wait_parked(1, "B unparked while A still fails").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_a_key_recovers_while_one_parked_before_it_still_fails() {
    a_key_recovers_while_one_parked_before_it_still_fails(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_a_key_recovers_while_one_parked_before_it_still_fails() {
    a_key_recovers_while_one_parked_before_it_still_fails(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_a_key_recovers_while_one_parked_before_it_still_fails() {
    a_key_recovers_while_one_parked_before_it_still_fails(Backend::kafka()).await;
}

/// A key parked under `ordering: key`, and the subscription's ordering changed to
/// `partition` by a live reload: the key stays parked until its parked events are done, so
/// its next event is not delivered before them (the new ordering parks no key, but it
/// does not forget those parked before).
async fn a_parked_key_keeps_its_order_across_a_change_of_ordering(backend: Backend) {
    let topic = unique("reordered");
    let receiver = Receiver::start().await;
    let failing = failing_then_slow_below(&receiver, 2, Duration::from_millis(700));
    let subs = |ordering: &str| {
        format!(
            "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n    ordering: {ordering}\n{PARK_QUICKLY}",
            receiver.url
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let config = |ordering: &str| events_config(&backend.broker(1), &topic, &subs(ordering));
    std::fs::write(&path, config("key")).unwrap();
    let server = Hookbridge::start_file(&path, &[], &[]);
    support::post_accepted(&server, 2, |_| "K".into()).await;
    logged(&server, "parking it", "the key parked").await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    std::fs::write(&path, config("partition")).unwrap();
    logged(
        &server,
        "subscription rejoining",
        "the subscription rejoined with its new ordering",
    )
    .await;
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    post_one(&server, "K", 2).await;
    receiver
        .wait_for("the three events", Duration::from_secs(30), |r| {
            all_delivered(r, 0..3)
        })
        .await;
    assert_first_delivered_in_order(&receiver, 0..3, "K's events first delivered in order");
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_a_parked_key_keeps_its_order_across_a_change_of_ordering() {
    a_parked_key_keeps_its_order_across_a_change_of_ordering(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_a_parked_key_keeps_its_order_across_a_change_of_ordering() {
    a_parked_key_keeps_its_order_across_a_change_of_ordering(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_a_parked_key_keeps_its_order_across_a_change_of_ordering() {
    a_parked_key_keeps_its_order_across_a_change_of_ordering(Backend::kafka()).await;
}

/// How the parking topic changes.
#[derive(PartialEq)]
enum Change {
    Reload,
    Restart,
    /// A restart, after an operator deleted the former parking topic (NATS).
    RestartWithoutTheFormer,
}

/// A key parked with five events, then the subscription's parking topic changed (by a live
/// reload, or in the config of a restart): the parked events are carried over to the new
/// parking topic, so all of them are delivered once the receiver recovers, in order,
/// before the key's next event. Had an operator deleted the former parking topic, its
/// events are gone with it, but the key's next event is still delivered.
async fn parked_events_follow_a_change_of_parking_topic(backend: Backend, change: Change) {
    let topic = unique("moved");
    let receiver = Receiver::start().await;
    let failing = failing_then_slow_below(&receiver, 0, Duration::ZERO);
    let subs = |parking: &str| {
        format!(
            "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n    parking_topic: {topic}.{parking}\n{PARK_QUICKLY}",
            receiver.url
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let config = |parking: &str| events_config(&backend.broker(1), &topic, &subs(parking));
    std::fs::write(&path, config("first")).unwrap();
    let mut server = Hookbridge::start_file(&path, &[], &[]);
    support::post_accepted(&server, 5, |_| "K".into()).await;
    logged(&server, "parking it", "the key parked").await;
    // Its five events on the first parking topic, and committed on the live one.
    tokio::time::sleep(Duration::from_secs(2)).await;

    std::fs::write(&path, config("second")).unwrap();
    if change != Change::Reload {
        server.terminate();
        if change == Change::RestartWithoutTheFormer {
            let Backend::Nats(nats) = &backend else {
                panic!("deleted through JetStream")
            };
            let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
            let former = hookbridge::broker::nats::stream_name(&format!("{topic}.first"));
            js.delete_stream(former).await.unwrap();
        }
        server = Hookbridge::start_file(&path, &[], &[]);
    } else {
        logged(
            &server,
            "subscription rejoining",
            "the subscription rejoined with its new parking topic",
        )
        .await;
    }
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    post_one(&server, "K", 5).await;
    if change == Change::RestartWithoutTheFormer {
        receiver
            .wait_for("the next event", Duration::from_secs(45), |r| {
                all_delivered(r, 5..6)
            })
            .await;
        assert!(
            server
                .log_text()
                .contains("the former parking topic is gone")
        );
        return;
    }
    receiver
        .wait_for("the six events", Duration::from_secs(45), |r| {
            all_delivered(r, 0..6)
        })
        .await;
    assert_first_delivered_in_order(&receiver, 0..6, "K's events first delivered in order");
    support::receiver::assert_no_overlap_per_key(&receiver.received());
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_parked_events_follow_a_change_of_parking_topic_on_reload() {
    parked_events_follow_a_change_of_parking_topic(Backend::embedded(), Change::Reload).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_parked_events_follow_a_change_of_parking_topic_across_a_restart() {
    parked_events_follow_a_change_of_parking_topic(Backend::embedded(), Change::Restart).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_parked_events_follow_a_change_of_parking_topic_on_reload() {
    parked_events_follow_a_change_of_parking_topic(Backend::nats(), Change::Reload).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_parked_events_follow_a_change_of_parking_topic_across_a_restart() {
    parked_events_follow_a_change_of_parking_topic(Backend::kafka(), Change::Restart).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_a_deleted_former_parking_topic_does_not_hold_the_partition() {
    parked_events_follow_a_change_of_parking_topic(
        Backend::nats(),
        Change::RestartWithoutTheFormer,
    )
    .await;
}

/// A key failing on two topics of one subscription: its event on the first parks, and the
/// parking topic retries it, holding the key (one event of a key at a time). The key's event
/// on the second topic, waiting for its turn that long, parks too, instead of waiting (with
/// the key's later events) until the first one is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_waiting_park_after_for_its_key_parks() {
    const TOKEN: &str = "waiting-admin-token-0123456789";
    let receiver = Receiver::start().await;
    receiver.answer(|_, _| Reply::status(500));
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{base}routes:
  - {{ name: first, topic: first, verify: {{ kind: none }}, key: {{ json: /key }} }}
  - {{ name: second, topic: second, verify: {{ kind: none }}, key: {{ json: /key }} }}
subscriptions:
  - name: both
    topics: [first, second]
    url: {url}
{PARK_QUICKLY}"#,
        base = with_admin_token(&base_config(dir.path()), TOKEN),
        url = receiver.url
    );
    let server = Hookbridge::start(dir.path(), &config);
    let post = |route: &str| {
        let url = server.hook_url(route);
        async move {
            let response = http_client()
                .post(url)
                .json(&serde_json::json!({"key": "K", "seq": 0}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
        }
    };
    let parked_on = |topic: &'static str| {
        let admin = server.admin.clone();
        async move {
            let status = admin_get(&admin, "/v1/subscriptions/both", TOKEN).await;
            status["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|row| row["topic"] == topic)
                .map(|row| row["parked_keys"].as_u64().unwrap_or_default())
                .sum::<u64>()
        }
    };
    post("first").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while parked_on("first").await == 0 {
        assert!(Instant::now() < deadline, "K parked on the first topic");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    post("second").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while parked_on("second").await == 0 {
        assert!(
            Instant::now() < deadline,
            "K's event on the second topic parked after waiting for its turn; the log:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Answers 500 while the returned flag is set; then 200, after `delay` for the events
/// with a seq under `slow_below` (the parked ones take their time, so a later event sent
/// past them would be answered first).
fn failing_then_slow_below(
    receiver: &Receiver,
    slow_below: u64,
    delay: Duration,
) -> Arc<std::sync::atomic::AtomicBool> {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fails = failing.clone();
    receiver.answer(move |_, body| {
        let seq = serde_json::from_slice::<serde_json::Value>(body).unwrap_or_default()["seq"]
            .as_u64()
            .unwrap_or_default();
        if fails.load(std::sync::atomic::Ordering::SeqCst) {
            return Reply::status(500);
        }
        Reply {
            status: 200,
            delay: if seq < slow_below {
                delay
            } else {
                Duration::ZERO
            },
            retry_after: None,
        }
    });
    failing
}

/// Waits (30 s at most) until the server's log says `text`.
async fn logged(server: &Hookbridge, text: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.log_text().contains(text) {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Posts one event of `key` and checks it was accepted.
async fn post_one(server: &Hookbridge, key: &str, seq: u64) {
    let response = http_client()
        .post(server.hook_url("events"))
        .json(&serde_json::json!({"key": key, "seq": seq}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

/// The first successful deliveries of `seqs` came in that order.
fn assert_first_delivered_in_order(receiver: &Receiver, seqs: std::ops::Range<u64>, what: &str) {
    let delivered: Vec<u64> = receiver
        .received()
        .iter()
        .filter(|r| r.ok())
        .map(|r| seq_of(r).1)
        .collect();
    let first: Vec<usize> = seqs
        .map(|seq| delivered.iter().position(|s| *s == seq).unwrap())
        .collect();
    assert!(
        first.windows(2).all(|w| w[0] < w[1]),
        "{what}: {delivered:?}"
    );
}
