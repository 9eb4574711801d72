//! TLS on the connections hookbridge makes and accepts, with certificates made here:
//! subscribers behind a private CA or demanding a client certificate (`subscriptions[].tls`,
//! its files replaced on disk while hookbridge runs), static headers on every attempt
//! (`subscriptions[].headers`), the ingress over HTTPS
//! (`server.tls`) with a certificate replaced on disk, and bad files refused at start-up
//! naming the key.

use std::path::Path;
use std::time::Duration;

use crate::support::receiver::Receiver;
use crate::support::scrape::{scrape, value};
use crate::support::tls::{Ca, server_config};
use crate::support::*;

async fn attempts(server: &Hookbridge, subscription: &str, outcome: &str) -> f64 {
    let (_, text) = scrape(&server.admin).await;
    value(
        &text,
        "hookbridge_delivery_attempts_total",
        &[("subscription", subscription), ("outcome", outcome)],
    )
}

async fn wait_attempts(server: &Hookbridge, subscription: &str, outcome: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while attempts(server, subscription, outcome).await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no {outcome} attempt of {subscription}; log:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts three events, waits for three deliveries and for a failed handshake of `refused`,
/// then a little more, so that anything delivered by mistake would have arrived.
async fn deliver_three(server: &Hookbridge, receiver: &Receiver, refused: &str) {
    post_accepted(server, 3, |seq| format!("k{seq}")).await;
    receiver
        .wait_for("three deliveries", Duration::from_secs(30), |r| {
            r.len() >= 3
        })
        .await;
    wait_attempts(server, refused, "connect_error").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_behind_a_private_ca_is_reached_with_its_ca_and_headers_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("receivers' private CA");
    let receiver = Receiver::start_tls(server_config(&ca.server(), None)).await;
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let subs = [
        subscription(
            "trusting",
            "tls-events",
            &receiver.url,
            &format!(
                "    tls: {{ ca: {} }}\n    headers: {{ X-Api-Key: \"${{TEST_API_KEY}}\", Authorization: Bearer static-token }}\n",
                yaml_path(&ca_path)
            ),
        ),
        // The same receiver without its CA: every attempt fails the handshake.
        subscription("untrusting", "tls-events", &receiver.url, RETRY_WITHOUT_END),
    ]
    .concat();
    let server = Hookbridge::start_with_env(
        dir.path(),
        &events_config(
            &format!(
                "  kind: embedded\n  embedded: {{ dir: '{}', partitions: 2 }}\n",
                dir.path().join("data").display()
            ),
            "tls-events",
            &subs,
        ),
        &[],
        &[("TEST_API_KEY", "key-from-the-environment")],
    );
    deliver_three(&server, &receiver, "untrusting").await;
    let received = receiver.received();
    assert_eq!(
        received.len(),
        3,
        "only the subscription with the CA gets through"
    );
    for r in &received {
        assert_eq!(r.header("x-api-key"), "key-from-the-environment");
        assert_eq!(r.header("authorization"), "Bearer static-token");
        assert!(!r.header("webhook-id").is_empty());
    }
    assert_eq!(attempts(&server, "untrusting", "delivered").await, 0.0);
    let log = server.log_text();
    assert!(
        log.contains("UnknownIssuer") || log.contains("invalid peer certificate"),
        "the verifier's reason is logged; log:\n{log}"
    );
    assert!(!log.contains("key-from-the-environment"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_demanding_a_client_certificate_gets_one_with_cert_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let servers = Ca::new("receivers' CA");
    let clients = Ca::new("clients' CA");
    let receiver = Receiver::start_tls(server_config(&servers.server(), Some(&clients))).await;
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, servers.pem()).unwrap();
    let (cert, key) = clients.client("hookbridge").write(dir.path(), "client");
    let subs = [
        subscription(
            "mutual",
            "mtls-events",
            &receiver.url,
            &format!(
                "    tls: {{ ca: {}, cert: {}, key: {} }}\n",
                yaml_path(&ca_path),
                yaml_path(&cert),
                yaml_path(&key)
            ),
        ),
        // Trusts the receiver but has no certificate to show: refused by the receiver.
        subscription(
            "anonymous",
            "mtls-events",
            &receiver.url,
            &format!(
                "    tls: {{ ca: {} }}\n{RETRY_WITHOUT_END}",
                yaml_path(&ca_path)
            ),
        ),
    ]
    .concat();
    let server = Hookbridge::start(
        dir.path(),
        &events_config(
            &format!(
                "  kind: embedded\n  embedded: {{ dir: '{}', partitions: 2 }}\n",
                dir.path().join("data").display()
            ),
            "mtls-events",
            &subs,
        ),
    );
    deliver_three(&server, &receiver, "anonymous").await;
    assert_eq!(
        receiver.count(),
        3,
        "only the subscription with a certificate"
    );
    assert_eq!(attempts(&server, "anonymous", "delivered").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribers_replaced_ca_and_client_certificate_are_used_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (receivers, clients) = (Ca::new("receivers' new CA"), Ca::new("clients' new CA"));
    let receiver = Receiver::start_tls(server_config(&receivers.server(), Some(&clients))).await;
    // The subscription starts with material from the CAs before: its handshakes fail.
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, Ca::new("receivers' old CA").pem()).unwrap();
    let (cert, key) = Ca::new("clients' old CA")
        .client("hookbridge")
        .write(dir.path(), "client");
    let server = Hookbridge::start(
        dir.path(),
        &with_admin_token(
            &events_config(
                &format!(
                    "  kind: embedded\n  embedded: {{ dir: '{}', partitions: 2 }}\n",
                    dir.path().join("data").display()
                ),
                "rotated-events",
                &subscription(
                    "rotated",
                    "rotated-events",
                    &receiver.url,
                    &format!(
                        "    tls: {{ ca: {}, cert: {}, key: {} }}\n{RETRY_WITHOUT_END}",
                        yaml_path(&ca_path),
                        yaml_path(&cert),
                        yaml_path(&key)
                    ),
                ),
            ),
            "admin-token",
        ),
    );
    post_accepted(&server, 1, |_| "k".into()).await;
    wait_attempts(&server, "rotated", "connect_error").await;
    // The subscription's last error, as `hookbridge status` shows it.
    let until_failing_with = |what: &'static str| {
        let server = &server;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let status =
                    admin_get(&server.admin, "/v1/subscriptions/rotated", "admin-token").await;
                let error = status["last_error"]["error"].to_string();
                if error.contains(what) {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the last error is not `{what}`: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    until_failing_with("UnknownIssuer").await;

    // The receiver's CA replaces the old one: the server is trusted now, and refuses the
    // old client certificate itself.
    std::fs::write(&ca_path, receivers.pem()).unwrap();
    until_failing_with("received fatal alert").await;
    assert_eq!(receiver.count(), 0);

    // A renewed client certificate, in place: the next connection shows it.
    let renewed = clients.client("hookbridge");
    std::fs::write(&key, &renewed.key).unwrap();
    std::fs::write(&cert, &renewed.cert).unwrap();
    receiver
        .wait_for(
            "the delivery after the renewal",
            Duration::from_secs(30),
            |r| r.len() == 1,
        )
        .await;
}

/// `curl` over HTTPS: `--cacert` trusts only `ca`; prints the HTTP version and status.
fn curl(url: &str, ca: &Path, http2: bool) -> std::process::Output {
    std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg(if http2 { "--http2" } else { "--http1.1" })
        .arg("--cacert")
        .arg(ca)
        .args([
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"key":"k","seq":1}"#,
        ])
        .arg(url)
        .output()
        .expect("curl runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_serves_https_and_takes_a_replaced_certificate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = Ca::new("first CA");
    let (cert, key) = first.server().write(dir.path(), "ingress");
    let first_ca = dir.path().join("first-ca.pem");
    std::fs::write(&first_ca, first.pem()).unwrap();
    let config = base_config(dir.path()).replace(
        "  max_body: 64KiB\n",
        &format!(
            "  max_body: 64KiB\n  tls: {{ cert: {}, key: {} }}\nroutes:\n  - name: events\n    topic: https-events\n    verify: {{ kind: none }}\n",
            yaml_path(&cert),
            yaml_path(&key)
        ),
    );
    let server = Hookbridge::start(dir.path(), &config);
    let url = server
        .hook_url("events")
        .replace("http://127.0.0.1", "https://localhost");
    for http2 in [false, true] {
        let out = curl(&url, &first_ca, http2);
        let said = String::from_utf8_lossy(&out.stdout);
        let expected = if http2 { "2 202" } else { "1.1 202" };
        assert_eq!(said, expected, "{}", String::from_utf8_lossy(&out.stderr));
    }
    // Plain HTTP to an HTTPS port gets nothing useful.
    assert!(
        http_client()
            .post(server.hook_url("events"))
            .body("{}")
            .send()
            .await
            .is_err()
    );

    // cert-manager renews: a certificate from another CA replaces the files in place.
    let second = Ca::new("second CA");
    let second_ca = dir.path().join("second-ca.pem");
    std::fs::write(&second_ca, second.pem()).unwrap();
    let renewed = second.server();
    std::fs::write(&key, &renewed.key).unwrap();
    std::fs::write(&cert, &renewed.cert).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = curl(&url, &second_ca, false);
        if String::from_utf8_lossy(&out.stdout) == "1.1 202" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was not served: {}; log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And the old one is gone.
    let out = curl(&url, &first_ca, false);
    assert_ne!(String::from_utf8_lossy(&out.stdout), "1.1 202");
}

/// `hookbridge check-config` on `config`: its exit success and what it printed.
fn check_config(dir: &Path, config: &str) -> (bool, String) {
    let path = dir.join("check.yaml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn bad_tls_files_and_headers_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("a CA");
    let (cert, key) = ca.server().write(dir.path(), "good");
    let (_, other_key) = ca.server().write(dir.path(), "other");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let with_sub = |extra: &str| {
        format!(
            "{}routes: []\nsubscriptions:\n{}",
            base_config(dir.path()),
            subscription("out", "t", "https://localhost:1/hook", extra)
        )
    };
    let cases = [
        (
            with_sub(&format!("    tls: {{ ca: {} }}\n", yaml_path(&missing))),
            "subscriptions[0].tls.ca",
            "cannot read",
        ),
        (
            with_sub(&format!("    tls: {{ ca: {} }}\n", yaml_path(&garbage))),
            "subscriptions[0].tls.ca",
            "holds no PEM certificate",
        ),
        (
            with_sub(&format!(
                "    tls: {{ cert: {}, key: {} }}\n",
                yaml_path(&cert),
                yaml_path(&other_key)
            )),
            "subscriptions[0].tls.key",
            "does not match the certificate",
        ),
        (
            with_sub(&format!("    tls: {{ cert: {} }}\n", yaml_path(&cert))),
            "subscriptions[0].tls",
            "set both `cert` and `key`",
        ),
        (
            with_sub("    headers: { webhook-signature: forged }\n"),
            "subscriptions[0].headers.webhook-signature",
            "set by hookbridge",
        ),
        (
            with_sub("    headers: { \"bad header\": x }\n"),
            "subscriptions[0].headers.bad header",
            "not a valid HTTP header name",
        ),
        (
            format!(
                "{}  tls: {{ cert: {}, key: {} }}\nroutes: []\n",
                base_config(dir.path()),
                yaml_path(&cert),
                yaml_path(&garbage)
            ),
            "server.tls.key",
            "holds no PEM private key",
        ),
    ];
    for (config, key, message) in cases {
        let (ok, said) = check_config(dir.path(), &config);
        assert!(!ok, "{key} accepted:\n{config}");
        assert!(
            said.contains(key) && said.contains(message),
            "expected `{key}` and `{message}` in:\n{said}"
        );
    }
    // The good pair passes.
    let (ok, said) = check_config(
        dir.path(),
        &format!(
            "{}  tls: {{ cert: {}, key: {} }}\nroutes: []\n",
            base_config(dir.path()),
            yaml_path(&cert),
            yaml_path(&key)
        ),
    );
    assert!(ok, "{said}");
}
