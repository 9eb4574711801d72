//! Pause and resume: a paused subscription delivers nothing while its lag grows; resumed, it
//! drains the lag in order.

use std::time::{Duration, Instant};

use super::{cli, cli_json, config, lag, post};
use crate::support;
use crate::support::backend::Backend;
use crate::support::receiver::Receiver;
use crate::support::*;

async fn pause_keeps_the_lag_growing_and_resume_drains_it(backend: Backend) {
    let topic = unique("paused");
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(
        dir.path(),
        &config(
            &backend,
            &topic,
            &subscription(&topic, &topic, &receiver.url, ""),
        ),
    );
    for seq in 0..10 {
        post(&server, &format!("k{}", seq % 5), seq, "test").await;
    }
    receiver
        .wait_for("the first 10", Duration::from_secs(30), |r| r.len() >= 10)
        .await;

    let paused = cli(&server.admin, &["pause", &topic]).await;
    assert!(paused.status.success(), "{paused:?}");
    assert!(String::from_utf8_lossy(&paused.stdout).contains("paused"));
    for seq in 10..30 {
        post(&server, &format!("k{}", seq % 5), seq, "test").await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (is_paused, lag) = lag(&server.admin, &topic).await;
        assert!(is_paused);
        if lag >= 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lag grows while paused: {lag}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(receiver.count(), 10, "nothing is delivered while paused");

    let resumed = cli_json(&server.admin, &["resume", &topic]).await;
    assert_eq!(resumed["replicas"][0]["subscription"]["paused"], false);
    receiver
        .wait_for("all 30 after resume", Duration::from_secs(30), |r| {
            support::receiver::all_delivered(r, 0..30)
        })
        .await;
    support::receiver::assert_first_deliveries_in_order(&receiver.received());
    let deadline = Instant::now() + Duration::from_secs(20);
    while lag(&server.admin, &topic).await.1 > 0 {
        assert!(Instant::now() < deadline, "the lag falls back to 0");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_pause_keeps_the_lag_growing_and_resume_drains_it() {
    pause_keeps_the_lag_growing_and_resume_drains_it(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_pause_keeps_the_lag_growing_and_resume_drains_it() {
    pause_keeps_the_lag_growing_and_resume_drains_it(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_pause_keeps_the_lag_growing_and_resume_drains_it() {
    pause_keeps_the_lag_growing_and_resume_drains_it(Backend::kafka()).await;
}

/// A paused subscription whose config changes so that it leaves and rejoins its group (a
/// new dead-letter topic here) stays paused: an operator's pause is not undone by a reload.
#[tokio::test(flavor = "multi_thread")]
async fn a_pause_outlives_a_reload_that_rejoins_the_group() {
    let backend = Backend::embedded();
    let topic = unique("paused-reload");
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let with = |extra: &str| {
        config(
            &backend,
            &topic,
            &subscription(&topic, &topic, &receiver.url, extra),
        )
    };
    std::fs::write(&path, with("")).unwrap();
    let server = Hookbridge::start_file(&path, &[], &[]);
    let paused = cli(&server.admin, &["pause", &topic]).await;
    assert!(paused.status.success(), "{paused:?}");

    std::fs::write(&path, with("    dead_letter_topic: elsewhere\n")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log_text().contains("subscription rejoining") {
        assert!(Instant::now() < deadline, "the subscription rejoined");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for seq in 0..5 {
        post(&server, "k", seq, "test").await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        lag(&server.admin, &topic).await.0,
        "still paused after the reload"
    );
    assert_eq!(receiver.count(), 0, "nothing delivered while paused");
    let resumed = cli_json(&server.admin, &["resume", &topic]).await;
    assert_eq!(resumed["replicas"][0]["subscription"]["paused"], false);
    receiver
        .wait_for("all 5 after resume", Duration::from_secs(30), |r| {
            support::receiver::all_delivered(r, 0..5)
        })
        .await;
}
