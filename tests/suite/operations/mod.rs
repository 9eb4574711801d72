//! The operator's admin API and CLI, on every backend, each verb run as the `hookbridge`
//! binary runs it for an operator: only with the bearer token; pause and resume;
//! dead-letter listing and redrive (with a progress bar in a real terminal, and Ctrl-C);
//! replay from a time; the API's OpenAPI document; `listen`, a receiver to try a subscription.

mod attempts;
mod listen;
mod openapi;
mod pause;
mod redrive;
mod replay;
mod stored;
mod tenants;
mod token;

use std::process::{Command, Output};

use crate::support::backend::Backend;
use crate::support::receiver::{Receiver, seq_of};
use crate::support::*;
use serde_json::Value;

const TOKEN: &str = "test-admin-token-0123456789";

/// Runs `hookbridge ARGS --admin-url ADMIN` with the admin token in its environment.
async fn cli(admin: &str, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .args(["--admin-url", admin])
        .env("HOOKBRIDGE_ADMIN_TOKEN", TOKEN);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// Runs a verb with `--output json`; it must succeed.
async fn cli_json(admin: &str, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    let out = cli(admin, &args).await;
    assert!(
        out.status.success(),
        "hookbridge {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "hookbridge {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A config of `subs` on `backend`, the admin API behind [`TOKEN`].
fn config(backend: &Backend, topic: &str, subs: &str) -> String {
    with_admin_token(&events_config(&backend.broker(2), topic, subs), TOKEN)
}

/// Posts event `seq` with key `key` and type `event_type`.
async fn post(server: &Hookbridge, key: &str, seq: u64, event_type: &str) {
    let response = http_client()
        .post(server.hook_url("events"))
        .header("X-Type", event_type)
        .header("Idempotency-Key", seq.to_string())
        .json(&serde_json::json!({"key": key, "seq": seq}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

/// The seqs delivered successfully, in arrival order.
fn delivered(receiver: &Receiver) -> Vec<(String, u64)> {
    receiver
        .received()
        .iter()
        .filter(|r| r.ok())
        .map(seq_of)
        .collect()
}

/// The subscription's consumer lag as `status` reports it, summed over its partitions.
async fn lag(admin: &str, name: &str) -> (bool, u64) {
    let status = cli_json(admin, &["status", name]).await;
    let sub = &status["replicas"][0]["subscriptions"][0];
    let lag = sub["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["lag"].as_u64())
        .sum();
    (sub["paused"] == true, lag)
}
