//! The setup of the delivery tests on the embedded log: one `events` route on topic `events`
//! (no verification, type from `X-Type`, key from the body's `/key`), the subscriptions
//! given, and posting an event to it.

use super::{Hookbridge, base_config};

/// A route `events` on topic `events` (type from X-Type, key from /key) plus `subs`.
pub fn config(dir: &std::path::Path, subs: &str) -> String {
    base_config(dir)
        + r#"
routes:
  - name: events
    topic: events
    verify: { kind: none }
    event_type: { header: X-Type, default: test }
    key: { json: /key }
subscriptions:
"# + subs
}

pub async fn post(
    client: &reqwest::Client,
    server: &Hookbridge,
    event_type: &str,
    body: serde_json::Value,
) -> String {
    let response = client
        .post(server.hook_url("events"))
        .header("x-type", event_type)
        .header("x-custom", "kept")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}
