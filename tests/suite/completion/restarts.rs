//! G8: a crash, a restart or a partition moving to another replica redelivers only what was
//! not done yet, on every backend, whatever key keeps failing in front of it.
//!
//! JetStream remembers completion by its per-message acks; Kafka by the completion stored in
//! each commit's metadata (on Apache Kafka, which keeps it with the committed offset); the
//! embedded log by its cursor.

use std::sync::Arc;
use std::time::Duration;

use crate::support;
use crate::support::backend::{Backend, FailingKey};
use crate::support::receiver::{all_delivered, assert_first_deliveries_in_order, seq_of};
use crate::support::*;

/// Events of other keys published behind the failing key's first one.
const OTHERS: u64 = 2_000;

/// The failing key's events: its first, before all the others, and three after them.
const FAILING: [u64; 4] = [0, OTHERS + 1, OTHERS + 2, OTHERS + 3];

/// One partition; key A answered 500 until the test lets it recover; 2,000 events of 50
/// other keys delivered past it; `kill -9`; a new process delivers none of the 2,000 again,
/// then A's events in order once A recovers.
async fn a_restart_redelivers_nothing_delivered_behind_a_failing_key(backend: Backend) {
    let scenario = FailingKey::start(&backend, 1, RETRY_WITHOUT_END).await;
    let (receiver, config) = (&scenario.receiver, &scenario.config);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Hookbridge::start(dir.path(), config);
    let ingresses = Arc::new(std::sync::Mutex::new(vec![server.ingress.clone()]));
    post_events(ingresses.clone(), vec![("A".into(), 0)], 1, Duration::ZERO).await;
    let others: Vec<(String, u64)> = (1..=OTHERS).map(|s| (format!("k{}", s % 50), s)).collect();
    post_events(ingresses.clone(), others, 8, Duration::ZERO).await;
    let later_a: Vec<(String, u64)> = FAILING[1..].iter().map(|&s| ("A".into(), s)).collect();
    post_events(ingresses, later_a, 1, Duration::ZERO).await;
    receiver
        .wait_for("every other event", Duration::from_secs(120), |r| {
            all_delivered(r, 1..=OTHERS)
        })
        .await;
    // What finished goes out with the next commit tick (200 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.kill();
    let before = receiver.count();

    let restarted_dir = tempfile::tempdir().unwrap();
    let mut restarted = Hookbridge::start(restarted_dir.path(), config);
    // The new process owns the partition once it retries A (after a lease expiry on NATS,
    // the dead member's session timeout on Kafka); any redelivery would come with it.
    receiver
        .wait_for(
            "A retried by the new process",
            Duration::from_secs(90),
            |r| r[before..].iter().any(|r| seq_of(r).1 == 0),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again: Vec<u64> = receiver.received()[before..]
        .iter()
        .map(|r| seq_of(r).1)
        .filter(|seq| !FAILING.contains(seq))
        .collect();
    // Nothing of the 2,000 was in flight at the kill: every one had been answered and
    // committed a second before, so none may come again.
    assert!(
        again.is_empty(),
        "{} of {OTHERS} delivered again after kill -9, e.g. {:?}\n{}",
        again.len(),
        &again[..again.len().min(10)],
        restarted.log_text()
    );

    scenario.recover();
    receiver
        .wait_for(
            "A's events, once A recovers",
            Duration::from_secs(60),
            |r| all_delivered(r, FAILING),
        )
        .await;
    assert_first_deliveries_in_order(&receiver.received());
    let a_order: Vec<u64> = receiver
        .received()
        .iter()
        .filter(|r| r.ok() && seq_of(r).0 == "A")
        .map(|r| seq_of(r).1)
        .collect();
    assert_eq!(
        a_order, FAILING,
        "A's events, each answered 2xx once, in order"
    );
    eprintln!(
        "kill -9 behind a failing key: 0 of {OTHERS} delivered again; A delivered in order after it recovered"
    );
    restarted.terminate();
}

/// Two replicas, four partitions, a steady load of 50 keys and key A failing throughout
/// (parked after 2 s); three times one replica is stopped with SIGTERM and started again,
/// the next round once the restarted replica has taken its share back (as a rollout waits
/// for each new replica). Nothing is lost, every key's events arrive in publish order, no
/// two requests of a key overlap, and each rolling restart repeats at most what was in
/// flight.
///
/// Why the wait: a replica stopped while its group rebalances may have its last commits
/// refused (the coordinator accepts a generation's commits only until the next one is
/// chosen), and the next owner would then repeat what it could not record.
async fn a_rolling_restart_repeats_at_most_what_was_in_flight(backend: Backend) {
    const MAX_IN_FLIGHT: u64 = 16;
    /// Each replica's share: two topics (the subscription's and its parking topic) of four
    /// partitions, between two replicas.
    const SHARE: usize = 4;
    let settings = format!(
        "    max_in_flight: {MAX_IN_FLIGHT}\n    breaker: {{ failures: 1000000 }}\n    retry: {{ initial_backoff: 50ms, max_backoff: 200ms, max_attempts: 1000000, max_age: 1h, park_after: 2s }}\n"
    );
    let scenario = FailingKey::start(&backend, 4, &settings).await;
    let (receiver, config) = (&scenario.receiver, &scenario.config);
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas: Vec<Hookbridge> = dirs
        .iter()
        .map(|dir| Hookbridge::start(dir.path(), config))
        .collect();
    for replica in &replicas {
        replica
            .wait_assigned(SHARE, "each replica takes its share")
            .await;
    }
    let ingresses = Arc::new(std::sync::Mutex::new(
        replicas
            .iter()
            .map(|r| r.ingress.clone())
            .collect::<Vec<_>>(),
    ));
    // One at a time (publish order is seq order), about 100 a second, until the rounds are
    // over; every tenth is A's.
    let key = |seq: u64| {
        if seq.is_multiple_of(10) {
            "A".to_string()
        } else {
            format!("k{}", seq % 50)
        }
    };
    let rounds_over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let (ingresses, rounds_over) = (ingresses.clone(), rounds_over.clone());
        async move {
            let mut next = 0;
            while !rounds_over.load(std::sync::atomic::Ordering::SeqCst) {
                let chunk: Vec<(String, u64)> = (next..next + 100).map(|s| (key(s), s)).collect();
                post_events(ingresses.clone(), chunk, 1, Duration::from_millis(8)).await;
                next += 100;
            }
            next
        }
    });
    for round in 0..3 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let which = round % 2;
        let old = replicas[which].ingress.clone();
        ingresses.lock().unwrap().retain(|i| *i != old);
        assert!(replicas[which].terminate().success(), "SIGTERM: clean exit");
        replicas[which] = Hookbridge::start(dirs[which].path(), config);
        ingresses
            .lock()
            .unwrap()
            .push(replicas[which].ingress.clone());
        replicas[which]
            .wait_assigned(SHARE, "the restarted replica takes its share")
            .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    rounds_over.store(true, std::sync::atomic::Ordering::SeqCst);
    let events = load.await.unwrap();
    let others: Vec<u64> = (0..events).filter(|s| s % 10 != 0).collect();
    receiver
        .wait_for("every other key's event", Duration::from_secs(120), |r| {
            all_delivered(r, others.iter().copied())
        })
        .await;
    scenario.recover();
    receiver
        .wait_for(
            "A's events, once A recovers",
            Duration::from_secs(120),
            |r| all_delivered(r, 0..events),
        )
        .await;
    let received = receiver.received();
    support::receiver::assert_no_overlap_per_key(&received);
    assert_first_deliveries_in_order(&received);
    let delivered: Vec<u64> = received
        .iter()
        .filter(|r| r.ok())
        .map(|r| seq_of(r).1)
        .collect();
    let repeated = delivered.len() as u64 - events;
    let mut seen = std::collections::HashSet::new();
    let twice: Vec<u64> = delivered
        .iter()
        .copied()
        .filter(|s| !seen.insert(*s))
        .collect();
    eprintln!("delivered twice, e.g.: {:?}", &twice[..twice.len().min(20)]);
    eprintln!(
        "{events} events through three rolling restarts with A failing: {repeated} delivered twice"
    );
    assert!(
        repeated <= 3 * MAX_IN_FLIGHT,
        "{repeated} events delivered again through three restarts (in flight at most {MAX_IN_FLIGHT} each)"
    );
    for replica in &mut replicas {
        replica.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_rolling_restart_repeats_at_most_what_was_in_flight() {
    a_rolling_restart_repeats_at_most_what_was_in_flight(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_rolling_restart_repeats_at_most_what_was_in_flight() {
    a_rolling_restart_repeats_at_most_what_was_in_flight(Backend::kafka()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_restart_redelivers_nothing_delivered_behind_a_failing_key() {
    a_restart_redelivers_nothing_delivered_behind_a_failing_key(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_a_restart_redelivers_nothing_delivered_behind_a_failing_key() {
    a_restart_redelivers_nothing_delivered_behind_a_failing_key(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_restart_redelivers_nothing_delivered_behind_a_failing_key() {
    a_restart_redelivers_nothing_delivered_behind_a_failing_key(Backend::kafka()).await;
}
