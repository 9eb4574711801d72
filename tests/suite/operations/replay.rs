//! Replay from a time: one subscription gets exactly the events since then again, in order
//! per key, while live events go on once each; other subscriptions see no replay.

use std::time::{Duration, SystemTime};

use super::{cli_json, config, delivered, post};
use crate::support::backend::Backend;
use crate::support::receiver::Receiver;
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
