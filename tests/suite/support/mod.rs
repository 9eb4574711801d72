//! Test support, shared by the suite's modules: the real `hookbridge` binary as a
//! subprocess, and the signing schemes of the senders it verifies, implemented here from
//! their published descriptions (not with hookbridge's own code, so a shared mistake cannot
//! pass unnoticed). Beside them: the brokers (`backend`, `kafka`, `nats`), the HTTP
//! receiver (`receiver`), `/metrics` (`scrape`), certificates (`tls`) and the delivery
//! tests' setup on the embedded log (`delivery`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub mod backend;
pub mod delivery;
pub mod kafka;
pub mod nats;
pub mod receiver;
pub mod scrape;
pub mod tls;

pub use nats::NatsServer;

pub const BIN: &str = env!("CARGO_BIN_EXE_hookbridge");

/// A running `hookbridge serve`.
pub struct Hookbridge {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT` of the ingress.
    pub ingress: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    pub admin: String,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Hookbridge {
    /// Writes `config` to `dir/config.yaml` and starts the binary on it. The config should
    /// listen on port 0; the bound ports are read from the start-up log line.
    pub fn start(dir: &Path, config: &str) -> Hookbridge {
        Hookbridge::start_with(dir, config, &[])
    }

    /// Like `start`, with more arguments for `serve` (e.g. `--role ingress`).
    pub fn start_with(dir: &Path, config: &str, args: &[&str]) -> Hookbridge {
        Hookbridge::start_with_env(dir, config, args, &[])
    }

    /// Like `start_with`, with more environment variables.
    pub fn start_with_env(
        dir: &Path,
        config: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Hookbridge {
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, config).expect("write config");
        Hookbridge::start_file(&config_path, args, envs)
    }

    /// Starts `hookbridge serve` on the config file at `config_path`, which the test may
    /// change while it runs.
    pub fn start_file(config_path: &Path, args: &[&str], envs: &[(&str, &str)]) -> Hookbridge {
        let mut child = Command::new(BIN)
            .args(["serve", "--log-format", "json", "--config"])
            .arg(config_path)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("HOOKBRIDGE_TEST_LOG")
                    .unwrap_or_else(|_| "info,fjall=warn,lsm_tree=warn".into()),
            )
            // Last, so a test's own RUST_LOG wins.
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hookbridge");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (bound_tx, bound_rx) = mpsc::channel();
        let lines = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                    && event["message"] == "hookbridge is serving"
                {
                    let addr = |k: &str| event[k].as_str().unwrap_or_default().to_string();
                    let _ = bound_tx.send((addr("ingress"), addr("admin")));
                }
                lines.lock().unwrap().push(line);
            }
        });
        let (ingress, admin) = match bound_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(bound) => bound,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "hookbridge did not start; its log:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        Hookbridge {
            child: Some(child),
            ingress: format!("http://{ingress}"),
            admin: format!("http://{admin}"),
            logs,
        }
    }

    /// How many partitions this replica has been given so far (its parking partitions
    /// included), by the engine's log line.
    pub fn assigned(&self) -> usize {
        self.log_text().matches("partition assigned").count()
    }

    /// Waits until this replica has been given `partitions` partitions, at most a minute.
    pub async fn wait_assigned(&self, partitions: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.assigned() < partitions {
            assert!(
                Instant::now() < deadline,
                "timed out waiting: {what}; its log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn hook_url(&self, route: &str) -> String {
        format!("{}/hooks/{route}", self.ingress)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9`: no chance to flush or answer anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.pid().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        self.wait()
    }

    /// Waits for the process to exit by itself (after a signal sent elsewhere).
    pub fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "hookbridge did not exit within 60s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

impl Drop for Hookbridge {
    fn drop(&mut self) {
        // HOOKBRIDGE_TEST_LOGS=DIR keeps every instance's log, for a failure to be read.
        if let Ok(dir) = std::env::var("HOOKBRIDGE_TEST_LOGS") {
            let name = format!("{}.log", self.ingress.replace([':', '/'], "_"));
            let _ = std::fs::write(Path::new(&dir).join(name), self.log_text());
        }
        self.kill();
    }
}

/// The common head of a test config: the embedded broker in `dir`, ports chosen by the OS.
pub fn base_config(dir: &Path) -> String {
    format!(
        "broker:\n  kind: embedded\n  embedded: {{ dir: '{}', partitions: 4 }}\nserver:\n  listen: 127.0.0.1:0\n  admin_listen: 127.0.0.1:0\n  max_body: 64KiB\n",
        dir.join("data").display()
    )
}

/// A config for a broker test: `broker` is the body of the `broker:` section, then loopback
/// listeners, one `events` route on `topic` (no verification, type from `X-Type`, key from
/// the body's `/key`, idempotency from `Idempotency-Key`) and the `subs` YAML list.
pub fn events_config(broker: &str, topic: &str, subs: &str) -> String {
    format!(
        r#"broker:
{broker}server:
  listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
routes:
  - name: events
    topic: {topic}
    verify: {{ kind: none }}
    event_type: {{ header: X-Type, default: test }}
    key: {{ json: /key }}
    idempotency: {{ header: Idempotency-Key }}
    publish_timeout: 2s
subscriptions:
{subs}"#
    )
}

/// One entry of the `subs` list of [`events_config`]: subscription `name` on `topic`,
/// posting to `url`, followed by `extra` (indented YAML lines, each ending in a newline).
pub fn subscription(name: &str, topic: &str, url: &str, extra: &str) -> String {
    format!("  - name: {name}\n    topics: [{topic}]\n    url: {url}\n{extra}")
}

/// `config` (from [`events_config`]) with its `/v1` admin API behind `token`.
pub fn with_admin_token(config: &str, token: &str) -> String {
    config.replace(
        "  admin_listen: 127.0.0.1:0\n",
        &format!("  admin_listen: 127.0.0.1:0\n  admin_token: {token}\n"),
    )
}

/// The body of a `broker:` section for NATS at `url`: `partitions` partitions and a 2 s
/// lease, so partitions move within seconds when a replica dies.
pub fn nats_broker(url: &str, partitions: u32) -> String {
    format!("  kind: nats\n  nats: {{ url: \"{url}\", partitions: {partitions}, lease: 2s }}\n")
}

/// Subscription keys that keep retrying a failing event for the whole test, quickly and
/// without the breaker ever opening: for tests where one key fails on purpose.
pub const RETRY_WITHOUT_END: &str = "    breaker: { failures: 1000000 }\n    retry: { initial_backoff: 50ms, max_backoff: 200ms, max_attempts: 1000000, max_age: 1h }\n";

/// Opens a stopped server's data dir. A handle dropped just before may still be closing its
/// files, so opening is retried for a moment.
pub fn open_log(dir: &Path) -> Arc<hookbridge::broker::embedded::EmbeddedBroker> {
    let config = hookbridge::config::EmbeddedConfig {
        dir: dir.join("data"),
        partitions: 4,
        retention: hookbridge::config::RetentionConfig {
            max_age: None,
            max_bytes: None,
        },
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match hookbridge::broker::embedded::EmbeddedBroker::open(&config) {
            Ok(broker) => return broker,
            Err(e) if Instant::now() > deadline => panic!("cannot open the log: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Every record of `topic` in a stopped server's data dir.
pub async fn read_topic(dir: &Path, topic: &str) -> Vec<hookbridge::broker::ConsumedRecord> {
    open_log(dir).read_topic(topic).expect("read topic")
}

pub fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(hmac_sha256(secret.as_bytes(), body))
    )
}

/// Stripe: `Stripe-Signature: t=<ts>,v1=<hex HMAC-SHA256 of "<ts>.<body>">`.
pub fn stripe_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let signed = [format!("{timestamp}.").as_bytes(), body].concat();
    format!(
        "t={timestamp},v1={}",
        hex::encode(hmac_sha256(secret.as_bytes(), &signed))
    )
}

/// Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:<ts>:<body>">`.
pub fn slack_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let signed = [format!("v0:{timestamp}:").as_bytes(), body].concat();
    format!(
        "v0={}",
        hex::encode(hmac_sha256(secret.as_bytes(), &signed))
    )
}

/// Standard Webhooks: `v1,<base64 HMAC-SHA256 of "<id>.<ts>.<body>">`, keyed with the
/// base64-decoded part of a `whsec_` secret.
pub fn standard_webhooks_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let signed = [format!("{id}.{timestamp}.").as_bytes(), body].concat();
    format!("v1,{}", STANDARD.encode(hmac_sha256(&key, &signed)))
}

/// Shopify-style: base64 HMAC-SHA256 of the body.
pub fn base64_body_hmac(secret: &str, body: &[u8]) -> String {
    STANDARD.encode(hmac_sha256(secret.as_bytes(), body))
}

/// An HTTP client for tests. reqwest is built without a default TLS backend (hookbridge
/// installs ring's), so the tests install it too.
pub fn http_client() -> reqwest::Client {
    http_client_builder().build().unwrap()
}

pub fn http_client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// The Apache Kafka node the test command started (HOOKBRIDGE_TEST_KAFKA). A missing
/// broker fails the test: it never skips.
pub fn kafka_bootstrap() -> String {
    let addr = std::env::var("HOOKBRIDGE_TEST_KAFKA")
        .expect("HOOKBRIDGE_TEST_KAFKA is not set: run scripts/test, which starts Apache Kafka");
    std::net::TcpStream::connect_timeout(&addr.parse().expect("host:port"), Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("the Kafka broker at {addr} is not reachable: {e}"));
    addr
}

/// A loopback port free right now, for a server the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A path as a quoted YAML scalar, for a file the config names.
pub fn yaml_path(path: &Path) -> String {
    format!("'{}'", path.display())
}

/// Posts `n` events `{"key": key(seq), "seq": seq}` to the `events` route; each must be
/// accepted (202) at once.
pub async fn post_accepted(server: &Hookbridge, n: u64, key: impl Fn(u64) -> String) {
    let client = http_client();
    for seq in 0..n {
        let response = client
            .post(server.hook_url("events"))
            .json(&serde_json::json!({ "key": key(seq), "seq": seq }))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{}", server.log_text());
    }
}

/// `hookbridge serve` on a config it must refuse at start (within 30 s): its error output.
pub fn refused_at_start(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    match exited {
        Some(status) => assert!(!status.success(), "serve exited 0; it said:\n{stderr}"),
        None => panic!("serve kept running on a config it should refuse; it said:\n{stderr}"),
    }
    stderr
}

/// Asserts that an error output names `key` and contains `answer` (any case).
pub fn assert_names(said: &str, key: &str, answer: &str) {
    assert!(
        said.contains(key) && said.to_lowercase().contains(answer),
        "expected `{key}` and `{answer}` in:\n{said}"
    );
}

/// `GET` of an admin API path with the bearer `token`: the JSON answered.
pub async fn admin_get(admin: &str, path: &str, token: &str) -> serde_json::Value {
    http_client()
        .get(format!("{admin}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A name no other test run uses (the Kafka broker is shared).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// Posts `{"key": .., "seq": ..}` events to the `events` route of whichever ingress in
/// `ingresses` takes them (a replica may be stopping), `concurrency` at a time, with the
/// seq as idempotency key so a retried post keeps its envelope id. Every event ends up
/// accepted (202), or the call panics.
///
/// A key's events are posted one after the other, each once the one before was accepted:
/// their order in `events` is then the order the broker stored them in, which is the order
/// per key the tests check deliveries against. (Posted concurrently, a later event of a key
/// could overtake an earlier one whose request was slower or retried.)
pub async fn post_events(
    ingresses: Arc<Mutex<Vec<String>>>,
    events: Vec<(String, u64)>,
    concurrency: usize,
    pause: Duration,
) {
    use futures_util::StreamExt;
    let client = http_client();
    // Each event waits for the acceptance of its key's previous one.
    let mut previous: std::collections::HashMap<String, tokio::sync::oneshot::Receiver<()>> =
        Default::default();
    let events: Vec<_> = events
        .into_iter()
        .map(|(key, seq)| {
            let (accepted, accepted_rx) = tokio::sync::oneshot::channel();
            let after = previous.insert(key.clone(), accepted_rx);
            (key, seq, after, accepted)
        })
        .collect();
    futures_util::stream::iter(events)
        .for_each_concurrent(concurrency, |(key, seq, after, accepted)| {
            let (client, ingresses) = (client.clone(), ingresses.clone());
            async move {
                if let Some(after) = after {
                    let _ = after.await;
                }
                let body = serde_json::json!({"key": key, "seq": seq});
                let deadline = Instant::now() + Duration::from_secs(60);
                for attempt in 0.. {
                    let targets = ingresses.lock().unwrap().clone();
                    let url = format!(
                        "{}/hooks/events",
                        targets[(seq as usize + attempt) % targets.len()]
                    );
                    let sent = client
                        .post(&url)
                        .header("Idempotency-Key", seq.to_string())
                        .json(&body)
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                    if matches!(&sent, Ok(r) if r.status() == 202) {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "event {seq} was never accepted: {sent:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let _ = accepted.send(());
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        })
        .await;
}

/// The resident memory of process `pid`, in bytes (0 once it is gone).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// The resident memory of process `pid`, in MiB.
pub fn rss_mib(pid: u32) -> u64 {
    rss_bytes(pid) / (1024 * 1024)
}
