//! hookbridge against NATS servers that do not take anonymous plaintext clients: a private
//! nats-server per test with, in turn, a user and password, a token, an nkey, a `.creds`
//! file of an operator/account/user set made here, TLS with a private CA, and TLS that
//! demands a client certificate. Each: webhooks in, deliveries out; with wrong credentials
//! `serve` fails at start naming the key and the server's answer.

use std::path::Path;
use std::time::Duration;

use crate::support::receiver::Receiver;
use crate::support::tls::Ca;
use crate::support::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A config on NATS at `url` with `extra` under `broker.nats` (indented four spaces).
fn config(url: &str, topic: &str, receiver: &str, extra: &str) -> String {
    events_config(
        &format!("  kind: nats\n  nats:\n    url: \"{url}\"\n    partitions: 2\n{extra}"),
        topic,
        &subscription("out", topic, receiver, ""),
    )
}

/// Webhooks in, deliveries out, through a server that demands what `extra` gives; returns
/// hookbridge's log.
async fn delivers(url: &str, extra: &str, envs: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let topic = unique("auth");
    let server = Hookbridge::start_with_env(
        dir.path(),
        &config(url, &topic, &receiver.url, extra),
        &[],
        envs,
    );
    post_accepted(&server, 3, |_| "k".into()).await;
    receiver
        .wait_for("three deliveries", Duration::from_secs(60), |r| {
            r.len() >= 3
        })
        .await;
    server.log_text()
}

/// `serve` on a config it must refuse at start: its error output.
fn refused(url: &str, extra: &str) -> String {
    refused_at_start(&config(url, "refused", "http://127.0.0.1:9/hook", extra))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password() {
    let nats = NatsServer::start_with(vec![
        "--user".into(),
        "hb".into(),
        "--pass".into(),
        "s3cret-pass".into(),
    ]);
    delivers(
        &nats.url(),
        "    auth: { user: hb, password: \"${NATS_PASSWORD}\" }\n",
        &[("NATS_PASSWORD", "s3cret-pass")],
    )
    .await;
    let said = refused(&nats.url(), "    auth: { user: hb, password: wrong }\n");
    assert_names(&said, "broker.nats.auth", "authorization violation");
    assert!(
        !said.contains("wrong"),
        "the password is not repeated:\n{said}"
    );
    let said = refused(&nats.url(), "");
    assert_names(&said, "broker.nats.auth", "demands credentials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token() {
    let nats = NatsServer::start_with(vec!["--auth".into(), "t0ken-value".into()]);
    delivers(&nats.url(), "    auth: { token: t0ken-value }\n", &[]).await;
    let said = refused(&nats.url(), "    auth: { token: not-it }\n");
    assert_names(&said, "broker.nats.auth", "authorization violation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey() {
    let user = nkeys::KeyPair::new_user();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nats.conf");
    std::fs::write(
        &file,
        format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let nats = NatsServer::start_with(vec!["-c".into(), file.display().to_string()]);
    delivers(
        &nats.url(),
        &format!("    auth: {{ nkey_seed: {} }}\n", user.seed().unwrap()),
        &[],
    )
    .await;
    let stranger = nkeys::KeyPair::new_user();
    let said = refused(
        &nats.url(),
        &format!("    auth: {{ nkey_seed: {} }}\n", stranger.seed().unwrap()),
    );
    assert_names(&said, "broker.nats.auth", "authorization violation");
}

/// A JWT as NATS encodes them: `ed25519-nkey` signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": uuid::Uuid::now_v7().simple().to_string().to_uppercase(),
        "iat": unix_now(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{claims}");
    let signature = URL_SAFE_NO_PAD.encode(issuer.sign(signed.as_bytes()).unwrap());
    format!("{signed}.{signature}")
}

fn creds(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n************************* IMPORTANT *************************\nNKEY Seed printed below can be used to sign and prove identity.\n\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

/// An operator-mode set made here: the operator, the account hookbridge's users belong
/// to, and the system account JetStream in operator mode needs.
struct OperatorMode {
    operator: nkeys::KeyPair,
    account: nkeys::KeyPair,
    system: nkeys::KeyPair,
}

impl OperatorMode {
    fn new() -> OperatorMode {
        OperatorMode {
            operator: nkeys::KeyPair::new_operator(),
            account: nkeys::KeyPair::new_account(),
            system: nkeys::KeyPair::new_account(),
        }
    }

    /// nats-server's config trusting the operator, with both accounts preloaded in a memory
    /// resolver; the account revokes the `revoked` users' JWTs issued so far.
    fn conf(&self, revoked: &[String]) -> String {
        let operator_jwt = jwt(
            &self.operator,
            &self.operator.public_key(),
            "operator",
            serde_json::json!({ "type": "operator", "version": 2 }),
        );
        let unlimited = serde_json::json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
            "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
        });
        let revocations: serde_json::Map<String, serde_json::Value> = revoked
            .iter()
            .map(|user| (user.clone(), (unix_now() + 1).into()))
            .collect();
        let account_jwt = jwt(
            &self.operator,
            &self.account.public_key(),
            "hookbridge",
            serde_json::json!({
                "limits": unlimited, "revocations": revocations, "type": "account", "version": 2
            }),
        );
        let system_jwt = jwt(
            &self.operator,
            &self.system.public_key(),
            "SYS",
            serde_json::json!({ "type": "account", "version": 2 }),
        );
        format!(
            "operator: {operator_jwt}\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {account_jwt}\n  {}: {system_jwt}\n}}\n",
            self.system.public_key(),
            self.account.public_key(),
            self.system.public_key()
        )
    }

    /// The `.creds` text of `user` in the account.
    fn user_creds(&self, user: &nkeys::KeyPair) -> String {
        let user_jwt = jwt(
            &self.account,
            &user.public_key(),
            "hookbridge",
            serde_json::json!({ "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2 }),
        );
        creds(&user_jwt, &user.seed().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_file_of_an_operator_mode_server() {
    let set = OperatorMode::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nats.conf");
    std::fs::write(&file, set.conf(&[])).unwrap();
    let nats = NatsServer::start_with(vec!["-c".into(), file.display().to_string()]);
    let creds_path = dir.path().join("hookbridge.creds");
    std::fs::write(&creds_path, set.user_creds(&nkeys::KeyPair::new_user())).unwrap();
    delivers(
        &nats.url(),
        &format!("    auth: {{ creds: {} }}\n", yaml_path(&creds_path)),
        &[],
    )
    .await;

    // A user of another account the server does not know.
    let stranger = nkeys::KeyPair::new_user();
    let other_account = nkeys::KeyPair::new_account();
    let stranger_jwt = jwt(
        &other_account,
        &stranger.public_key(),
        "stranger",
        serde_json::json!({ "type": "user", "version": 2 }),
    );
    let stranger_path = dir.path().join("stranger.creds");
    std::fs::write(
        &stranger_path,
        creds(&stranger_jwt, &stranger.seed().unwrap()),
    )
    .unwrap();
    let said = refused(
        &nats.url(),
        &format!("    auth: {{ creds: {} }}\n", yaml_path(&stranger_path)),
    );
    assert_names(&said, "broker.nats.auth", "authorization violation");

    // A creds file that is not one is named before any connection.
    let garbage = dir.path().join("garbage.creds");
    std::fs::write(&garbage, "hello\n").unwrap();
    let said = refused(
        &nats.url(),
        &format!("    auth: {{ creds: {} }}\n", yaml_path(&garbage)),
    );
    assert_names(&said, "broker.nats.auth.creds", "not a .creds file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_creds_file_is_read_at_the_next_connect() {
    let set = OperatorMode::new();
    let dir = tempfile::tempdir().unwrap();
    let conf_path = dir.path().join("nats.conf");
    std::fs::write(&conf_path, set.conf(&[])).unwrap();
    let mut nats = NatsServer::start_with(vec!["-c".into(), conf_path.display().to_string()]);
    let first = nkeys::KeyPair::new_user();
    let creds_path = dir.path().join("hookbridge.creds");
    std::fs::write(&creds_path, set.user_creds(&first)).unwrap();
    let auth = format!("    auth: {{ creds: {} }}\n", yaml_path(&creds_path));
    let receiver = Receiver::start().await;
    let server = Hookbridge::start(
        dir.path(),
        &config(&nats.url(), "renewed", &receiver.url, &auth),
    );
    post_accepted(&server, 2, |seq| format!("k{seq}")).await;
    receiver
        .wait_for("two deliveries", Duration::from_secs(30), |r| r.len() >= 2)
        .await;

    // The credentials are renewed: a new user in the file, the old one revoked by the
    // account, and the server restarted, so every client connects again.
    let old_creds = dir.path().join("old.creds");
    std::fs::copy(&creds_path, &old_creds).unwrap();
    std::fs::write(&creds_path, set.user_creds(&nkeys::KeyPair::new_user())).unwrap();
    std::fs::write(&conf_path, set.conf(&[first.public_key()])).unwrap();
    nats.restart();
    let said = refused(
        &nats.url(),
        &format!("    auth: {{ creds: {} }}\n", yaml_path(&old_creds)),
    );
    assert_names(&said, "broker.nats.auth", "authorization violation");

    // hookbridge reconnects with the file as it is now: accepted and delivered again.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let response = http_client()
            .post(server.hook_url("events"))
            .json(&serde_json::json!({ "key": "after", "seq": 2 }))
            .send()
            .await
            .unwrap();
        if response.status() == 202 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not accepted after the renewal; log:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    receiver
        .wait_for(
            "the delivery after the renewal",
            Duration::from_secs(30),
            |r| r.len() >= 3,
        )
        .await;
}

/// nats-server with TLS from `ca`; with `verify`, clients must show a certificate `ca` signed.
fn tls_server(dir: &Path, ca: &Ca, verify: bool) -> NatsServer {
    let (cert, key) = ca.server().write(dir, "nats");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let mut args = vec![
        "--tls".to_string(),
        "--tlscert".into(),
        cert.display().to_string(),
        "--tlskey".into(),
        key.display().to_string(),
    ];
    if verify {
        args.extend([
            "--tlsverify".to_string(),
            "--tlscacert".into(),
            ca_path.display().to_string(),
        ]);
    }
    NatsServer::start_with(args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("NATS CA");
    let nats = tls_server(dir.path(), &ca, false);
    let url = format!("tls://localhost:{}", nats.port);
    let ca_path = dir.path().join("ca.pem");
    delivers(
        &url,
        &format!("    tls: {{ ca: {} }}\n", yaml_path(&ca_path)),
        &[],
    )
    .await;
    // Without the CA the server's certificate is not trusted.
    let said = refused(&url, "");
    assert_names(&said, "broker.nats.tls", "unknownissuer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_demanding_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("NATS CA");
    let nats = tls_server(dir.path(), &ca, true);
    let url = format!("tls://localhost:{}", nats.port);
    let ca_path = dir.path().join("ca.pem");
    let (cert, key) = ca.client("hookbridge").write(dir.path(), "client");
    delivers(
        &url,
        &format!(
            "    tls: {{ ca: {}, cert: {}, key: {} }}\n",
            yaml_path(&ca_path),
            yaml_path(&cert),
            yaml_path(&key)
        ),
        &[],
    )
    .await;
    let said = refused(
        &url,
        &format!("    tls: {{ ca: {} }}\n", yaml_path(&ca_path)),
    );
    // Without a certificate to show, the server ends the handshake.
    assert_names(&said, "broker.nats.tls", "certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_reaches_the_logs_at_trace_level() {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nats.conf");
    std::fs::write(
        &file,
        format!(
            "authorization {{ users = [ {{ user: hb, password: pw-SECRET-5e1a }}, {{ nkey: \"{}\" }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let nats = NatsServer::start_with(vec!["-c".into(), file.display().to_string()]);
    let trace = [("RUST_LOG", "trace")];
    let mut logs = delivers(
        &nats.url(),
        "    auth: { user: hb, password: pw-SECRET-5e1a }\n",
        &trace,
    )
    .await;
    logs += &delivers(
        &nats.url(),
        &format!("    auth: {{ nkey_seed: {seed} }}\n"),
        &trace,
    )
    .await;
    let tokened = NatsServer::start_with(vec!["--auth".into(), "tok-SECRET-90c4".into()]);
    logs += &delivers(
        &tokened.url(),
        "    auth: { token: tok-SECRET-90c4 }\n",
        &trace,
    )
    .await;
    assert!(logs.len() > 10_000, "trace logging is on");
    for secret in ["pw-SECRET-5e1a", seed.as_str(), "tok-SECRET-90c4"] {
        assert!(
            !logs.contains(secret),
            "a credential appears in the log: {}",
            logs.lines()
                .find(|l| l.contains(secret))
                .unwrap_or_default()
        );
    }
}
