//! The admin API answers 401 problem+json to a request without the bearer token (or with a
//! wrong one, of any length or scheme) and does nothing; health, readiness and metrics stay
//! open; the CLI without the token says why.

use std::process::Command;

use super::{TOKEN, config};
use crate::support::backend::Backend;
use crate::support::receiver::Receiver;
use crate::support::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_needs_the_token_and_does_nothing_without_it() {
    let topic = unique("auth");
    let receiver = Receiver::start().await;
    let backend = Backend::embedded();
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(
        dir.path(),
        &config(
            &backend,
            &topic,
            &subscription("audited", &topic, &receiver.url, ""),
        ),
    );
    let client = http_client();
    let pause = format!("{}/v1/subscriptions/audited/pause", server.admin);
    let wrong_same_length: String = TOKEN.chars().rev().collect();
    for (what, authorization) in [
        ("no token", None),
        (
            "a wrong token of the same length",
            Some(format!("Bearer {wrong_same_length}")),
        ),
        (
            "a token of another length",
            Some(format!("Bearer {TOKEN}x")),
        ),
        ("another scheme", Some(format!("Basic {TOKEN}"))),
    ] {
        let mut request = client.post(&pause);
        if let Some(authorization) = &authorization {
            request = request.header("authorization", authorization);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{what}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
        assert!(
            response.headers().contains_key("www-authenticate"),
            "{what}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(
            problem["type"], "urn:hookbridge:problem:unauthorized",
            "{what}"
        );
    }
    // Nothing happened: the subscription is not paused.
    let status = admin_get(&server.admin, "/v1/subscriptions/audited", TOKEN).await;
    assert_eq!(status["paused"], false);
    // Health, readiness and metrics stay open to probes and scrapers.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = client
            .get(format!("{}{path}", server.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    // The CLI without the token says why.
    let out = Command::new(BIN)
        .args(["status", "--admin-url", &server.admin])
        .env_remove("HOOKBRIDGE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("Bearer"),
        "{stderr}"
    );
}
