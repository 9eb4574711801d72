//! The attempt log (`attempt_log`), searched through `GET /v1/attempts/{sub}` and
//! `hookbridge attempts`: "every failed attempt of key K in the last hour" and "every
//! attempt of event X", on every backend; and a `kill -9` loses no record of an event whose
//! completion was committed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::{TOKEN, cli_json, config, post};
use crate::support::backend::Backend;
use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

/// A receiver that fails each event of key `failing` twice (500), then takes it.
fn fail_twice(receiver: &Receiver, failing: &'static str) {
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    receiver.answer(move |headers, body| {
        let body: Value = serde_json::from_slice(body).unwrap_or_default();
        let id = headers["webhook-id"].to_str().unwrap().to_string();
        let mut seen = seen.lock().unwrap();
        let tries = seen.entry(id).or_default();
        *tries += 1;
        match body["key"] == failing && *tries <= 2 {
            true => Reply::status(500),
            false => Reply::status(200),
        }
    });
}

async fn search(server: &Hookbridge, name: &str, query: &str) -> Vec<Value> {
    let page = admin_get(
        &server.admin,
        &format!("/v1/attempts/{name}?{query}"),
        TOKEN,
    )
    .await;
    page["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("no attempts in {page}"))
        .clone()
}

async fn the_log_answers_by_key_and_by_event(backend: Backend) {
    let topic = unique("attempts");
    let receiver = Receiver::start().await;
    fail_twice(&receiver, "K");
    let dir = tempfile::tempdir().unwrap();
    let extra = "    attempt_log: all\n    retry: { initial_backoff: 50ms, max_backoff: 100ms }\n";
    let subs = subscription(&topic, &topic, &receiver.url, extra);
    let server = Hookbridge::start(dir.path(), &config(&backend, &topic, &subs));
    post(&server, "K", 0, "test").await;
    for seq in 1..6 {
        post(&server, &format!("k{seq}"), seq, "test").await;
    }
    receiver
        .wait_for("all 6", Duration::from_secs(60), |r| {
            crate::support::receiver::all_delivered(r, 0..6)
        })
        .await;
    let failed = search(&server, &topic, "key=K&status=failed").await;
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(failed[0]["attempt"], 2, "newest first: {failed:?}");
    assert_eq!(failed[1]["attempt"], 1);
    assert!(failed.iter().all(|a| a["status"] == 500 && a["key"] == "K"));
    assert!(failed[0]["replica"].as_str().unwrap().contains('/'));

    let id = failed[0]["id"].as_str().unwrap();
    let every = search(&server, &topic, &format!("id={id}")).await;
    let outcomes: Vec<&str> = every
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["delivered", "failed", "failed"], "{every:?}");
    assert_eq!(every[0]["offset"], failed[0]["offset"]);

    // The CLI asks the same, its `--since` a span ago.
    let page = cli_json(
        &server.admin,
        &[
            "attempts", &topic, "--key", "K", "--status", "5xx", "--since", "1h",
        ],
    )
    .await;
    assert_eq!(page["attempts"].as_array().unwrap().len(), 2, "{page}");
    let none = search(
        &server,
        &topic,
        "key=K&status=5xx&since=2099-01-01T00:00:00Z",
    )
    .await;
    assert!(none.is_empty(), "nothing after `since`");
    // Pages of 4, each after the one before, hold every attempt once, newest first.
    let (mut seen, mut before) = (Vec::new(), String::new());
    loop {
        let page = admin_get(
            &server.admin,
            &format!("/v1/attempts/{topic}?limit=4{before}"),
            TOKEN,
        )
        .await;
        let attempts = page["attempts"].as_array().unwrap();
        assert!(attempts.len() <= 4, "a page holds `limit`");
        seen.extend(attempts.iter().cloned());
        match page["next"].as_str() {
            Some(next) => before = format!("&before={next}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 8, "6 deliveries and 2 failures: {seen:?}");
    let ats: Vec<i64> = seen.iter().map(|a| a["at_ms"].as_i64().unwrap()).collect();
    assert!(
        ats.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {ats:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_the_attempt_log_answers_by_key_and_by_event() {
    the_log_answers_by_key_and_by_event(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_the_attempt_log_answers_by_key_and_by_event() {
    the_log_answers_by_key_and_by_event(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_the_attempt_log_answers_by_key_and_by_event() {
    the_log_answers_by_key_and_by_event(Backend::kafka()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_loses_no_record_of_a_committed_event() {
    let backend = Backend::embedded();
    let topic = unique("attempts-crash");
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let subs = subscription(&topic, &topic, &receiver.url, "    attempt_log: all\n");
    let config = config(&backend, &topic, &subs);
    let mut server = Hookbridge::start(dir.path(), &config);
    for seq in 0..200 {
        post(&server, &format!("k{}", seq % 20), seq, "test").await;
    }
    // Killed while delivering: some events delivered and committed, some delivered and
    // not committed (those are delivered again after the restart), some not yet sent.
    receiver
        .wait_for("some deliveries", Duration::from_secs(30), |r| {
            r.len() >= 50
        })
        .await;
    server.kill();
    let server = Hookbridge::start(dir.path(), &config);
    receiver
        .wait_for("all 200", Duration::from_secs(60), |r| {
            crate::support::receiver::all_delivered(r, 0..200)
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let logged = search(
        &server,
        &topic,
        "status=delivered&limit=1000&since=2020-01-01T00:00:00Z",
    )
    .await;
    let logged: std::collections::HashSet<&str> =
        logged.iter().map(|a| a["id"].as_str().unwrap()).collect();
    let delivered: std::collections::HashSet<String> = receiver
        .received()
        .iter()
        .filter(|r| r.ok())
        .map(|r| r.header("webhook-id").to_string())
        .collect();
    let missing: Vec<&String> = delivered
        .iter()
        .filter(|id| !logged.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "every event delivered has its delivery logged: {} missing",
        missing.len()
    );
}
