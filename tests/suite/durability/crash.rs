//! G1 under fire: the server is killed with SIGKILL (or stopped with SIGTERM) in the middle
//! of a 10,000-request concurrent load. Every request that got 202 must be in the log after
//! a restart; no request that was rejected may be.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use hookbridge::envelope::Envelope;

const REQUESTS: usize = 10_000;

const CONCURRENCY: usize = 64;

/// Every this-many-th request carries a wrong token and must be rejected.
const BAD_EVERY: usize = 10;

fn config(dir: &std::path::Path) -> String {
    base_config(dir)
        + r#"
routes:
  - name: load
    topic: webhooks.load
    verify: { kind: token, header: X-Token, value: right }
    key: { json: /key }
    idempotency: { header: Idempotency-Key }
"#
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Accepted,
    Rejected(u16),
    /// No HTTP answer (the process died): the webhook may or may not be stored, and the
    /// sender must retry it. Its idempotency key keeps the retry's id equal.
    NoAnswer,
}

/// Sends the load, calling `interrupt` once `interrupt_after` requests were accepted.
async fn load(
    url: String,
    interrupt_after: usize,
    interrupt: impl FnOnce() + Send + 'static,
) -> Vec<Outcome> {
    let client = http_client_builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(vec![Outcome::NoAnswer; REQUESTS]));
    let interrupt = Arc::new(Mutex::new(Some(interrupt)));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (client, url, next, accepted, outcomes, interrupt) = (
            client.clone(),
            url.clone(),
            next.clone(),
            accepted.clone(),
            outcomes.clone(),
            interrupt.clone(),
        );
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= REQUESTS {
                    return;
                }
                let token = if n % BAD_EVERY == 0 { "wrong" } else { "right" };
                let response = client
                    .post(&url)
                    .header("x-token", token)
                    .header("idempotency-key", format!("req-{n}"))
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"n":{n},"key":"k{}"}}"#, n % 97))
                    .send()
                    .await;
                let outcome = match response {
                    Ok(r) if r.status() == 202 => Outcome::Accepted,
                    Ok(r) => Outcome::Rejected(r.status().as_u16()),
                    Err(_) => Outcome::NoAnswer,
                };
                if outcome == Outcome::Accepted
                    && accepted.fetch_add(1, Ordering::Relaxed) + 1 == interrupt_after
                    && let Some(interrupt) = interrupt.lock().unwrap().take()
                {
                    // Blocking: the kill must happen while the other workers keep sending.
                    tokio::task::spawn_blocking(interrupt);
                }
                outcomes.lock().unwrap()[n] = outcome;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    Arc::try_unwrap(outcomes).unwrap().into_inner().unwrap()
}

/// `n` of every stored request, with how often it is stored.
async fn stored(dir: &std::path::Path) -> HashMap<usize, usize> {
    let mut seen = HashMap::new();
    for record in read_topic(dir, "webhooks.load").await {
        let envelope = Envelope::from_record(&record).unwrap().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&envelope.body).unwrap();
        *seen
            .entry(body["n"].as_u64().unwrap() as usize)
            .or_insert(0) += 1;
    }
    seen
}

fn check(outcomes: &[Outcome], stored: &HashMap<usize, usize>) -> (usize, usize, usize) {
    let (mut accepted, mut rejected, mut unanswered) = (0, 0, 0);
    for (n, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Outcome::Accepted => {
                accepted += 1;
                assert_eq!(
                    stored.get(&n),
                    Some(&1),
                    "request {n} got 202 but is not in the log exactly once"
                );
            }
            Outcome::Rejected(status) => {
                rejected += 1;
                assert_eq!(*status, 401, "request {n}");
                assert_eq!(
                    n % BAD_EVERY,
                    0,
                    "request {n} was valid but rejected with {status}"
                );
                assert!(
                    !stored.contains_key(&n),
                    "request {n} was rejected but is in the log"
                );
            }
            Outcome::NoAnswer => unanswered += 1,
        }
    }
    assert!(
        stored.values().all(|&count| count == 1),
        "no request is stored twice"
    );
    (accepted, rejected, unanswered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Mutex::new(Hookbridge::start(
        dir.path(),
        &config(dir.path()),
    )));
    let url = server.lock().unwrap().hook_url("load");
    let victim = server.clone();
    let outcomes = load(url, 2_000, move || victim.lock().unwrap().kill()).await;

    // Restarting on the same data dir recovers the log and serves again.
    let mut server = Hookbridge::start(dir.path(), &config(dir.path()));
    let after = http_client()
        .post(server.hook_url("load"))
        .header("x-token", "right")
        .header("content-type", "application/json")
        .body(r#"{"n":999999,"key":"after"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 202, "the restarted server accepts webhooks");
    assert!(server.terminate().success());

    let stored = stored(dir.path()).await;
    assert!(stored.contains_key(&999_999));
    let (accepted, rejected, unanswered) = check(&outcomes, &stored);
    let unanswered_stored = outcomes
        .iter()
        .enumerate()
        .filter(|(n, o)| **o == Outcome::NoAnswer && stored.contains_key(n))
        .count();
    eprintln!(
        "kill -9 after 2000 accepted: {accepted} accepted (all stored), {rejected} rejected (none stored), \
         {unanswered} without answer ({unanswered_stored} of them stored before the kill)"
    );
    assert!(accepted >= 2_000);
    assert!(unanswered > 0, "the kill happened mid-load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Hookbridge::start(dir.path(), &config(dir.path()));
    let pid = server.pid();
    let outcomes = load(server.hook_url("load"), 2_000, move || {
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
    })
    .await;
    assert!(
        server.wait().success(),
        "SIGTERM exits 0:\n{}",
        server.log_text()
    );

    let stored = stored(dir.path()).await;
    let (accepted, _, unanswered) = check(&outcomes, &stored);
    eprintln!(
        "SIGTERM after 2000 accepted: {accepted} accepted, {unanswered} refused during shutdown"
    );
    assert!(accepted >= 2_000);
}
