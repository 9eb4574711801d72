//! Replay from a time: one subscription gets exactly the events since then again, in order
//! per key, while live events go on once each; other subscriptions see no replay.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use super::{cli_json, config, delivered, post};
use crate::support::backend::Backend;
use crate::support::receiver::{Receiver, Reply, seq_of};
use crate::support::*;

async fn replay_from_a_time_reaches_that_subscription_only(backend: Backend) {
    let topic = unique("replayed");
    let (replayed, other) = (Receiver::start().await, Receiver::start().await);
    let subs = format!(
        "{}{}",
        subscription(&format!("{topic}-a"), &topic, &replayed.url, ""),
        subscription(&format!("{topic}-b"), &topic, &other.url, "")
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(dir.path(), &config(&backend, &topic, &subs));
    for seq in 0..10 {
        post(&server, &format!("k{}", seq % 3), seq, "test").await;
    }
    replayed
        .wait_for("the first 10", Duration::from_secs(30), |r| r.len() >= 10)
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let since = hookbridge::rfc3339(SystemTime::now());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for seq in 10..20 {
        post(&server, &format!("k{}", seq % 3), seq, "test").await;
    }
    for receiver in [&replayed, &other] {
        receiver
            .wait_for("all 20", Duration::from_secs(30), |r| r.len() >= 20)
            .await;
    }

    let replay = cli_json(
        &server.admin,
        &["replay", &format!("{topic}-a"), "--since", &since],
    )
    .await;
    assert_eq!(replay["state"], "done", "{replay}");
    assert_eq!(
        (replay["matched"].as_u64(), replay["sent"].as_u64()),
        (Some(10), Some(10))
    );
    replayed
        .wait_for("the replayed 10", Duration::from_secs(30), |r| {
            r.len() >= 30
        })
        .await;
    // Live events after the replay: delivered once, the cursor did not move back.
    for seq in 20..25 {
        post(&server, &format!("k{}", seq % 3), seq, "test").await;
    }
    other
        .wait_for("the live 5", Duration::from_secs(30), |r| r.len() >= 25)
        .await;
    replayed
        .wait_for("the live 5", Duration::from_secs(30), |r| r.len() >= 35)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let again: Vec<(String, u64)> = delivered(&replayed)[20..].to_vec();
    let mut replayed_seqs: Vec<u64> = again.iter().map(|(_, s)| *s).filter(|s| *s < 20).collect();
    replayed_seqs.sort();
    assert_eq!(
        replayed_seqs,
        (10..20).collect::<Vec<_>>(),
        "exactly the events after `since`"
    );
    for key in ["k0", "k1", "k2"] {
        let order: Vec<u64> = again
            .iter()
            .filter(|(k, s)| k == key && *s < 20)
            .map(|(_, s)| *s)
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "{key} replayed in order: {order:?}"
        );
    }
    assert_eq!(
        replayed.count(),
        35,
        "every live event once, the replayed ten again"
    );
    assert_eq!(other.count(), 25, "the other subscription saw no replay");

    let repeat = cli_json(
        &server.admin,
        &["replay", &format!("{topic}-a"), "--since", &since],
    )
    .await;
    assert_eq!(
        (repeat["sent"].as_u64(), repeat["skipped"].as_u64()),
        (Some(5), Some(10)),
        "only the live five are new"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_replay_from_a_time_reaches_that_subscription_only() {
    replay_from_a_time_reaches_that_subscription_only(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_replay_from_a_time_reaches_that_subscription_only() {
    replay_from_a_time_reaches_that_subscription_only(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_replay_from_a_time_reaches_that_subscription_only() {
    replay_from_a_time_reaches_that_subscription_only(Backend::kafka()).await;
}

/// A replay of events not yet delivered (their key's first event is failing, the rest wait
/// behind it): the replayed copies wait for their originals, so the key's events are first
/// sent in publish order, not the replayed later ones before the live earlier ones.
async fn a_replay_never_overtakes_the_events_it_copies(backend: Backend) {
    let topic = unique("overtaken");
    let receiver = Receiver::start().await;
    let failing = Arc::new(AtomicBool::new(true));
    let fails = failing.clone();
    receiver.answer(move |_, _| match fails.load(Ordering::SeqCst) {
        true => Reply::status(500),
        false => Reply::status(200),
    });
    let name = format!("{topic}-a");
    let retry = "    retry: { initial_backoff: 50ms, max_backoff: 200ms, max_attempts: 1000000, max_age: 1h }\n    breaker: { failures: 1000000 }\n";
    let subs = subscription(&name, &topic, &receiver.url, retry);
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(dir.path(), &config(&backend, &topic, &subs));
    for seq in 0..2 {
        post(&server, "K", seq, "test").await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let since = hookbridge::rfc3339(SystemTime::now());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for seq in 2..5 {
        post(&server, "K", seq, "test").await;
    }
    let replay = cli_json(&server.admin, &["replay", &name, "--since", &since]).await;
    assert_eq!(replay["sent"].as_u64(), Some(3), "{replay}");
    // The replayed copies are on their way while K's first event still fails.
    tokio::time::sleep(Duration::from_secs(2)).await;
    failing.store(false, Ordering::SeqCst);
    receiver
        .wait_for(
            "every event, and the replayed three again",
            Duration::from_secs(30),
            |r| r.iter().filter(|r| r.ok()).count() >= 8,
        )
        .await;
    let mut first_sent: Vec<u64> = Vec::new();
    for (_, seq) in receiver.received().iter().map(seq_of) {
        if !first_sent.contains(&seq) {
            first_sent.push(seq);
        }
    }
    assert_eq!(
        first_sent,
        (0..5).collect::<Vec<_>>(),
        "K's events first sent in order"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_a_replay_never_overtakes_the_events_it_copies() {
    a_replay_never_overtakes_the_events_it_copies(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_a_replay_never_overtakes_the_events_it_copies() {
    a_replay_never_overtakes_the_events_it_copies(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_a_replay_never_overtakes_the_events_it_copies() {
    a_replay_never_overtakes_the_events_it_copies(Backend::kafka()).await;
}
