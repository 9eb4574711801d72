//! No secret from the config reaches a log line, even at `RUST_LOG=trace`, the admin API
//! (`/v1/config`, status), `/metrics`, nor the `Debug` output of the config: verifier
//! secrets and tokens, signing secrets, credentials in a subscription URL and the secrets
//! receivers put in its path and query (Slack's, Discord's), a subscription's static
//! headers, broker properties and the admin token.

use std::time::Duration;

use crate::support::receiver::Receiver;
use crate::support::*;

const GITHUB: &str = "gh-SECRET-4f1c9a";

const TOKEN: &str = "tok-SECRET-8b2e71";

const SIGNING: &str = "whsec_c2lnbmluZy1TRUNSRVQtOWQzZjAw"; // base64 of "signing-SECRET-9d3f00"
const URL_PASSWORD: &str = "url-SECRET-e05b13";
/// In the URL's path, as Slack's incoming webhooks have it.
const URL_PATH: &str = "path-SECRET-5c7d21";
const URL_QUERY: &str = "query-SECRET-0f4e98";

const ADMIN: &str = "adm-SECRET-66c0de";

const NATS_PASSWORD: &str = "nats-SECRET-2d8f55";

const PROPERTY: &str = "prop-SECRET-3a9d7e";

const HEADER: &str = "hdr-SECRET-71be4c";

fn secrets() -> [&'static str; 11] {
    [
        NATS_PASSWORD,
        URL_PATH,
        URL_QUERY,
        GITHUB,
        TOKEN,
        SIGNING,
        "c2lnbmluZy1TRUNSRVQtOWQzZjAw",
        URL_PASSWORD,
        ADMIN,
        PROPERTY,
        HEADER,
    ]
}

fn config(dir: &std::path::Path, receiver_port: u16) -> String {
    format!(
        r#"broker:
  kind: embedded
  embedded: {{ dir: '{}', partitions: 1 }}
  kafka: {{ properties: {{ sasl.password: {PROPERTY} }} }}
  nats: {{ url: "nats://hb:{NATS_PASSWORD}@127.0.0.1:4222" }}
server:
  listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
  admin_token: {ADMIN}
routes:
  - name: gh
    topic: events
    verify: {{ kind: github, secret: {GITHUB} }}
  - name: tok
    topic: events
    verify: {{ kind: token, header: X-Token, value: {TOKEN} }}
subscriptions:
  - name: out
    topics: [events]
    url: http://user:{URL_PASSWORD}@127.0.0.1:{receiver_port}/services/T000/{URL_PATH}?token={URL_QUERY}
    signing: {{ secret: {SIGNING} }}
    headers: {{ X-Api-Key: {HEADER} }}
"#,
        dir.join("data").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_at_trace_level() {
    let receiver = Receiver::start().await;
    let port: u16 = receiver
        .url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/hook")
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Trace level for this server only: the suite's other tests share the process.
    let server = Hookbridge::start_with_env(
        dir.path(),
        &config(dir.path(), port),
        &[],
        &[("RUST_LOG", "trace")],
    );
    let client = http_client();
    let body = br#"{"hello":"world"}"#;
    let signed = client
        .post(server.hook_url("gh"))
        .header("X-Hub-Signature-256", github_signature(GITHUB, body))
        .header("X-GitHub-Event", "push")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 202);
    let forged = client
        .post(server.hook_url("gh"))
        .header("X-Hub-Signature-256", github_signature("wrong", body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let token = client
        .post(server.hook_url("tok"))
        .header("X-Token", TOKEN)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 202);
    receiver
        .wait_for("both deliveries", Duration::from_secs(30), |r| r.len() >= 2)
        .await;
    // The receiver got what it should: the URL's credentials.
    let got = &receiver.received()[0];
    assert!(got.header("authorization").starts_with("Basic "));
    assert_eq!(got.header("x-api-key"), HEADER);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut shown = String::new();
    for path in [
        "/v1/config",
        "/v1/subscriptions",
        "/v1/subscriptions/out",
        "/metrics",
    ] {
        let response = client
            .get(format!("{}{path}", server.admin))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{path}");
        shown.push_str(&response.text().await.unwrap());
    }
    assert!(shown.contains("127.0.0.1"), "the URL's host is shown");
    for secret in secrets() {
        assert!(
            !shown.contains(secret),
            "{secret} is shown by the admin listener"
        );
    }

    let logs = server.log_text();
    assert!(logs.len() > 10_000, "trace logging is on");
    for secret in secrets() {
        assert!(
            !logs.contains(secret),
            "{secret} appears in the log:\n{}",
            logs.lines()
                .filter(|l| l.contains(secret))
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn no_secret_appears_in_the_configs_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), 9);
    let config = hookbridge::config::load_str("f.yaml", &text, &|_| None).unwrap();
    let debug = format!("{config:?}");
    for secret in secrets() {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
}

#[test]
fn a_bad_subscription_url_is_named_without_its_password() {
    let text =
        "subscriptions:\n  - { name: s, topics: [t], url: 'ftp://me:pw-SECRET-0a1b@host/hook' }\n";
    let error = hookbridge::config::load_str("f.yaml", text, &|_| None).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("subscriptions[0].url"), "{message}");
    assert!(message.contains("ftp://***@host/…"), "{message}");
    assert!(!message.contains("pw-SECRET-0a1b"), "{message}");
    assert!(!format!("{error:?}").contains("pw-SECRET-0a1b"));
}
