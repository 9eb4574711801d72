//! Subscriptions made through the admin API: stored in the broker, run by every replica
//! within 5 s of a `PUT` on one of them, found again when every replica restarts, and
//! stopped by a `DELETE` the way a reload removes one (nothing delivered after it, nothing
//! delivered twice). On NATS and Kafka with two replicas; the embedded log is one process.
//!
//! The Kafka broker and its `hookbridge.subscriptions` topic are shared by every test of a
//! run: each test's subscriptions belong to a tenant of its own, which no other test's
//! replicas know, so they leave them out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{TOKEN, delivered, post};
use crate::support::backend::Backend;
use crate::support::receiver::Receiver;
use crate::support::*;
use serde_json::{Value, json};

/// A tenant name no other test uses.
pub fn tenant_name() -> String {
    format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[20..])
}

/// `config` with tenants `(name, token, topic globs)` and the admin token [`TOKEN`];
/// deliveries of API-made subscriptions may reach loopback addresses when `loopback`.
pub fn with_tenants(config: &str, tenants: &[(&str, &str, &str)], loopback: bool) -> String {
    let mut server = format!("  admin_listen: 127.0.0.1:0\n  admin_token: {TOKEN}\n  tenants:\n");
    for (name, token, globs) in tenants {
        server.push_str(&format!(
            "    - {{ name: {name}, token: {token}, topics: [\"{globs}\"] }}\n"
        ));
    }
    if loopback {
        server.push_str("  egress: { allow_networks: [127.0.0.0/8] }\n");
    }
    config.replace("  admin_listen: 127.0.0.1:0\n", &server)
}

/// `PUT /v1/subscriptions/{name}` with `token`: the status and the JSON answered.
pub async fn put(admin: &str, token: &str, name: &str, spec: &Value) -> (u16, Value) {
    let response = http_client()
        .put(format!("{admin}/v1/subscriptions/{name}"))
        .bearer_auth(token)
        .json(spec)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A request to `path` with `token`: the status and the JSON answered, if any.
pub async fn call(method: &str, admin: &str, token: &str, path: &str) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let response = http_client()
        .request(method, format!("{admin}{path}"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until subscription `name` runs (or, `false`, is gone) on the replica at `admin`.
async fn wait_running(admin: &str, token: &str, name: &str, running: bool, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, view) = call("GET", admin, token, &format!("/v1/subscriptions/{name}")).await;
        let runs = status == 200 && view["running"] == true;
        let gone = status == 404;
        if (running && runs) || (!running && gone) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not {} on {admin} within {within:?}: {status} {view}",
            if running { "run" } else { "stop" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `name` runs (or is gone) on every replica, at most 5 s.
async fn wait_everywhere(servers: &[Hookbridge], token: &str, name: &str, running: bool) {
    for server in servers {
        wait_running(&server.admin, token, name, running, Duration::from_secs(5)).await;
    }
}

/// Posts events `seqs` (keys `k0`..`k2`) to the replicas in turn, and waits until every
/// event from 0 to the last of them is delivered.
async fn post_and_deliver(servers: &[Hookbridge], receiver: &Receiver, seqs: std::ops::Range<u64>) {
    for seq in seqs.clone() {
        let server = &servers[seq as usize % servers.len()];
        post(server, &format!("k{}", seq % 3), seq, "test").await;
    }
    receiver
        .wait_for(
            &format!("events up to {}", seqs.end),
            Duration::from_secs(60),
            |r| crate::support::receiver::all_delivered(r, 0..seqs.end),
        )
        .await;
}

async fn stored_subscriptions_run_on_every_replica_and_outlive_restarts(
    backend: Backend,
    replicas: usize,
) {
    let topic = unique("stored");
    let tenant = tenant_name();
    let token = format!("{tenant}-token-0123456789");
    let receiver = Receiver::start().await;
    let config = with_tenants(
        &events_config(&backend.broker(2), &topic, "  []\n"),
        &[(&tenant, &token, &topic)],
        true,
    );
    let dirs: Vec<tempfile::TempDir> = (0..replicas)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let start = |dir: &tempfile::TempDir| Hookbridge::start(dir.path(), &config);
    let mut servers: Vec<Hookbridge> = dirs.iter().map(start).collect();

    let spec = json!({ "topics": [topic], "url": receiver.url });
    let (status, view) = put(&servers[0].admin, &token, "orders", &spec).await;
    assert_eq!(status, 201, "{view}");
    assert_eq!(view["name"], "orders");
    assert_eq!(view["source"], "api");
    assert_eq!(view["tenant"], tenant.as_str());
    assert_eq!(view["running"], true, "it runs here once answered: {view}");
    assert_eq!(view["group"], format!("hookbridge.{tenant}.orders"));
    wait_everywhere(&servers, &token, "orders", true).await;
    let (status, _) = put(&servers[0].admin, &token, "orders", &spec).await;
    assert_eq!(status, 200, "a second PUT replaces");
    post_and_deliver(&servers, &receiver, 0..10).await;

    // Every replica restarts: the subscription is found again in the broker.
    for server in &mut servers {
        server.terminate();
    }
    servers = dirs.iter().map(start).collect();
    wait_everywhere(&servers, &token, "orders", true).await;
    post_and_deliver(&servers, &receiver, 10..20).await;

    // Deleted on the last replica: stopped on every one, nothing more delivered.
    let last = &servers[replicas - 1].admin;
    let (status, _) = call("DELETE", last, &token, "/v1/subscriptions/orders").await;
    assert_eq!(status, 204);
    wait_everywhere(&servers, &token, "orders", false).await;
    for seq in 20..30 {
        post(&servers[0], &format!("k{}", seq % 3), seq, "test").await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut times: HashMap<u64, usize> = HashMap::new();
    for (_, seq) in delivered(&receiver) {
        *times.entry(seq).or_default() += 1;
    }
    assert!(
        times.keys().all(|seq| *seq < 20),
        "nothing is delivered after the DELETE: {times:?}"
    );
    assert!(
        times.values().all(|n| *n == 1),
        "nothing is delivered twice: {times:?}"
    );
    let (status, _) = call("DELETE", last, &token, "/v1/subscriptions/orders").await;
    assert_eq!(status, 404, "a second DELETE finds nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_subscriptions_outlive_a_restart_on_embedded() {
    stored_subscriptions_run_on_every_replica_and_outlive_restarts(Backend::embedded(), 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_subscriptions_run_on_every_replica_and_outlive_restarts_on_nats() {
    stored_subscriptions_run_on_every_replica_and_outlive_restarts(Backend::nats(), 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_subscriptions_run_on_every_replica_and_outlive_restarts_on_kafka() {
    stored_subscriptions_run_on_every_replica_and_outlive_restarts(Backend::kafka(), 2).await;
}
