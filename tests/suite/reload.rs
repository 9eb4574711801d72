//! Live configuration: the config file changes under a running `serve`, the way a mounted
//! ConfigMap does (a new timestamped directory, then the `..data` symlink swapped), while
//! webhooks keep coming and being delivered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::backend::Backend;
use crate::support::receiver::{Received, Receiver, Reply, seq_of};
use crate::support::scrape::{scrape, value};
use crate::support::*;
use serde_json::Value;

const TOKEN: &str = "reload-admin-token";

const OLD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

const NEW_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// A directory laid out as Kubernetes mounts a ConfigMap: `config.yaml` → `..data/config.yaml`,
/// `..data` → the current timestamped directory.
struct ConfigMapDir {
    root: PathBuf,
    version: u32,
}

impl ConfigMapDir {
    fn new(root: &Path, text: &str) -> ConfigMapDir {
        let mut dir = ConfigMapDir {
            root: root.to_path_buf(),
            version: 0,
        };
        dir.write(text);
        std::os::unix::fs::symlink("..data/config.yaml", root.join("config.yaml")).unwrap();
        dir
    }

    fn path(&self) -> PathBuf {
        self.root.join("config.yaml")
    }

    /// A new version, swapped in atomically as the kubelet does.
    fn write(&mut self, text: &str) {
        self.version += 1;
        let name = format!("..2026_12_02_{:04}", self.version);
        std::fs::create_dir(self.root.join(&name)).unwrap();
        std::fs::write(self.root.join(&name).join("config.yaml"), text).unwrap();
        let tmp = self.root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.root.join("..data")).unwrap();
    }
}

fn signed(secrets: &str) -> String {
    format!("    signing: {{ secrets: [{secrets}] }}\n")
}

fn config(backend: &Backend, topic: &str, subs: &str, extra_route: bool) -> String {
    let mut text = with_admin_token(&events_config(&backend.broker(2), topic, subs), TOKEN);
    if extra_route {
        text = text.replace(
            "subscriptions:\n",
            &format!("  - name: second\n    topic: {topic}-second\n    verify: {{ kind: none }}\nsubscriptions:\n"),
        );
    }
    text
}

/// Waits until `/v1/config` reports another hash than `before`.
async fn wait_reloaded(admin: &str, before: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shown = admin_get(admin, "/v1/config", TOKEN).await;
        if shown["hash"] != before {
            return shown;
        }
        assert!(Instant::now() < deadline, "the new config is taken");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Seqs delivered successfully, counted.
fn delivered(received: &[Received]) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for r in received.iter().filter(|r| r.ok()) {
        *counts.entry(seq_of(r).1).or_default() += 1;
    }
    counts
}

fn assert_each_once_in_order(received: &[Received], seqs: u64, what: &str) {
    let counts = delivered(received);
    let missing: Vec<u64> = (0..seqs).filter(|s| !counts.contains_key(s)).collect();
    let repeated: Vec<(&u64, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(missing.is_empty(), "{what}: lost {missing:?}");
    assert!(repeated.is_empty(), "{what}: delivered twice {repeated:?}");
    support::receiver::assert_first_deliveries_in_order(received);
}

async fn subscriptions_change_live_under_load(backend: Backend) {
    let topic = unique("live");
    let untouched = Receiver::start().await;
    let (moved_from, moved_to) = (Receiver::start().await, Receiver::start().await);
    let removed = Receiver::start().await;
    let added = Receiver::start().await;
    let rotated = Receiver::start().await;
    let widened = Receiver::start().await;
    let before = [
        subscription("untouched", &topic, &untouched.url, ""),
        subscription("moved", &topic, &moved_from.url, ""),
        subscription("removed", &topic, &removed.url, ""),
        subscription("rotated", &topic, &rotated.url, &signed(OLD_SECRET)),
        subscription("widened", &topic, &widened.url, ""),
    ]
    .concat();
    let after = [
        subscription("untouched", &topic, &untouched.url, ""),
        subscription("moved", &topic, &moved_to.url, "    max_in_flight: 2\n"),
        subscription(
            "rotated",
            &topic,
            &rotated.url,
            &signed(&format!("{NEW_SECRET}, {OLD_SECRET}")),
        ),
        subscription("added", &topic, &added.url, ""),
        format!(
            "  - name: widened\n    topics: [{topic}, {topic}-second]\n    url: {}\n",
            widened.url
        ),
    ]
    .concat();
    let dir = tempfile::tempdir().unwrap();
    let mut files = ConfigMapDir::new(dir.path(), &config(&backend, &topic, &before, false));
    let server = Hookbridge::start_file(&files.path(), &[], &[]);
    let first = admin_get(&server.admin, "/v1/config", TOKEN).await;
    assert_eq!(
        first["config"]["subscriptions"].as_array().unwrap().len(),
        5
    );
    assert_eq!(
        first["config"]["subscriptions"][3]["signing"]["secrets"][0], "<redacted>",
        "secrets are not shown"
    );

    // Webhooks all along: 10 keys, about 100 a second, every answer counted.
    let (sent, failed, done) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let load = {
        let (sent, failed, done) = (sent.clone(), failed.clone(), done.clone());
        let url = server.hook_url("events");
        tokio::spawn(async move {
            let client = http_client();
            let mut seq = 0u64;
            while !done.load(Ordering::SeqCst) {
                let response = client
                    .post(&url)
                    .header("Idempotency-Key", seq.to_string())
                    .json(&serde_json::json!({"key": format!("k{}", seq % 10), "seq": seq}))
                    .send()
                    .await;
                if !matches!(&response, Ok(r) if r.status() == 202) {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                seq += 1;
                sent.store(seq, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    files.write(&config(&backend, &topic, &after, true));
    let reloaded = wait_reloaded(&server.admin, first["hash"].as_str().unwrap()).await;
    let removed_at = removed.count();
    let rotated_at = rotated.count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let moved_status = admin_get(&server.admin, "/v1/subscriptions/moved", TOKEN).await;
    assert_eq!(moved_status["max_in_flight"], 2, "{moved_status}");
    // Shown as scheme, host and port only.
    let moved_to_authority = moved_to.url.trim_end_matches("/hook");
    assert_eq!(
        moved_status["url"],
        format!("{moved_to_authority}/…"),
        "{moved_status}"
    );
    let second = http_client()
        .post(server.hook_url("second"))
        .json(&serde_json::json!({"key": "x", "seq": 1_000_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 202, "the added route serves");

    // A config that is not valid, and one that changes what needs a restart: both refused,
    // the running one stays.
    files.write("routes: [\n");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let listen_moved = config(&backend, &topic, &after, true)
        .replace("  listen: 127.0.0.1:0\n", "  listen: 127.0.0.1:1\n");
    files.write(&listen_moved);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = admin_get(&server.admin, "/v1/config", TOKEN).await;
    assert_eq!(still["hash"], reloaded["hash"], "the running config stays");
    let (_, metrics) = scrape(&server.admin).await;
    assert_eq!(
        value(
            &metrics,
            "hookbridge_config_reloads_total",
            &[("outcome", "refused")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &metrics,
            "hookbridge_config_reloads_total",
            &[("outcome", "applied")]
        ),
        1.0
    );
    assert_eq!(
        value(&metrics, "hookbridge_config_last_reload_successful", &[]),
        0.0
    );
    let log = server.log_text();
    let summary: Value = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|event| event["message"] == "subscriptions reloaded")
        .expect("a reload summary");
    assert_eq!(
        (
            summary["added"].as_str(),
            summary["removed"].as_str(),
            summary["updated"].as_str(),
            summary["rejoined"].as_str()
        ),
        (
            Some("[\"added\"]"),
            Some("[\"removed\"]"),
            Some("[\"moved\", \"rotated\"]"),
            Some("[\"widened\"]")
        ),
        "only what changed is touched: {summary}"
    );
    assert!(log.contains("invalid YAML"), "the refusal says why");
    assert!(
        log.contains("server.listen cannot change while hookbridge runs"),
        "names the key"
    );
    let ready = http_client()
        .get(format!("{}/readyz", server.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "ready throughout");

    tokio::time::sleep(Duration::from_secs(1)).await;
    done.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let total = sent.load(Ordering::SeqCst);
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no webhook refused while reloading"
    );
    eprintln!("{total} webhooks sent across the reloads");

    for (receiver, what) in [
        (&untouched, "untouched"),
        (&added, "added"),
        (&rotated, "rotated"),
    ] {
        receiver
            .wait_for(what, Duration::from_secs(60), |r| {
                support::receiver::all_delivered(r, 0..total)
            })
            .await;
    }
    let moved_done = || {
        let mut all = moved_from.received();
        all.extend(moved_to.received());
        all
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !support::receiver::all_delivered(&moved_done(), 0..total) {
        assert!(
            Instant::now() < deadline,
            "every event reaches the moved subscription"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert_each_once_in_order(&untouched.received(), total, "untouched");
    assert_each_once_in_order(&added.received(), total, "added");
    assert_each_once_in_order(&rotated.received(), total, "rotated");
    // Its topics changed: it rejoined its group, committing first, so nothing came twice,
    // and it reads the new topic too.
    assert_each_once_in_order(&widened.received(), total, "widened");
    assert!(
        widened.received().iter().any(|r| seq_of(r).1 == 1_000_000),
        "the rejoined subscription reads its new topic"
    );
    // The moved subscription went on where it was: nothing twice across its two URLs, and
    // its first URL got nothing after the reload took.
    let moved: Vec<Received> = {
        let mut all = moved_from.received();
        all.sort_by_key(|r| r.at);
        let mut to = moved_to.received();
        to.sort_by_key(|r| r.at);
        all.extend(to);
        all
    };
    assert_each_once_in_order(&moved, total, "moved");
    assert!(!moved_to.received().is_empty(), "the new URL took over");
    assert_eq!(
        removed.count(),
        removed_at,
        "the removed subscription stopped"
    );
    // After the rotation, deliveries carry a signature with the new secret.
    let last = rotated.received().into_iter().last().unwrap();
    assert!(rotated.count() > rotated_at);
    let (id, timestamp) = (last.header("webhook-id"), last.header("webhook-timestamp"));
    let expected =
        standard_webhooks_signature(NEW_SECRET, id, timestamp.parse().unwrap(), &last.body);
    assert!(
        last.header("webhook-signature")
            .split(' ')
            .any(|s| s == expected),
        "signed with the new secret: {}",
        last.header("webhook-signature")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_subscriptions_change_live_under_load() {
    subscriptions_change_live_under_load(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_subscriptions_change_live_under_load() {
    subscriptions_change_live_under_load(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_subscriptions_change_live_under_load() {
    subscriptions_change_live_under_load(Backend::kafka()).await;
}

/// SIGHUP reloads at once; with `HOOKBRIDGE_CONFIG_WATCH=signal` nothing else does.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_and_signal_mode_waits_for_it() {
    let backend = Backend::embedded();
    let topic = unique("hup");
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        config(
            &backend,
            &topic,
            &subscription("s", &topic, &receiver.url, ""),
            false,
        ),
    )
    .unwrap();
    let server = Hookbridge::start_file(&path, &[], &[("HOOKBRIDGE_CONFIG_WATCH", "signal")]);
    let first = admin_get(&server.admin, "/v1/config", TOKEN).await;
    // Edited in place: not taken until SIGHUP.
    std::fs::write(
        &path,
        config(
            &backend,
            &topic,
            &subscription("s", &topic, &receiver.url, ""),
            true,
        ),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        admin_get(&server.admin, "/v1/config", TOKEN).await["hash"],
        first["hash"]
    );
    let not_yet = http_client()
        .post(server.hook_url("second"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(not_yet.status(), 404);
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    wait_reloaded(&server.admin, first["hash"].as_str().unwrap()).await;
    let now = http_client()
        .post(server.hook_url("second"))
        .json(&serde_json::json!({"key": "k", "seq": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(now.status(), 202, "the route SIGHUP brought in serves");
}

/// A reload that makes a subscription rejoin its group while one of its attempts hangs:
/// stopping the old one waits for that attempt (up to `shutdown_timeout`), but status and
/// pause answer meanwhile, and a pause asked for then holds the rejoined subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_pause_answer_while_a_reload_waits_for_a_stopping_subscription() {
    let topic = unique("waited");
    let receiver = Receiver::start().await;
    receiver.answer(|_, _| crate::support::receiver::Reply {
        status: 200,
        delay: Duration::from_secs(600),
        retry_after: None,
    });
    let subs = |ordering: &str| {
        subscription(
            &topic,
            &topic,
            &receiver.url,
            &format!("    ordering: {ordering}\n    timeout: 5m\n"),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let backend = Backend::embedded();
    let write = |ordering: &str| {
        let text = config(&backend, &topic, &subs(ordering), false).replace(
            "  admin_listen: 127.0.0.1:0\n",
            "  admin_listen: 127.0.0.1:0\n  shutdown_timeout: 8s\n",
        );
        std::fs::write(&path, text).unwrap();
    };
    write("key");
    let server = Hookbridge::start_file(&path, &[], &[]);
    support::post_accepted(&server, 1, |_| "k".into()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.on_the_wire() == 0 {
        assert!(Instant::now() < deadline, "the attempt hangs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    write("partition");
    // The file is seen within a second or two; stopping the old subscription then takes
    // the 8 s of its shutdown timeout.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let asked = Instant::now();
    let status = http_client()
        .get(format!("{}/v1/subscriptions", server.admin))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("status answers during the reload");
    assert!(status.status().is_success());
    let paused = http_client()
        .post(format!("{}/v1/subscriptions/{topic}/pause", server.admin))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("pause answers during the reload");
    assert!(paused.status().is_success(), "{}", paused.status());
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    // Once the old subscription has stopped, the rejoined one is paused.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let shown = admin_get(&server.admin, &format!("/v1/subscriptions/{topic}"), TOKEN).await;
    assert_eq!(shown["paused"], true, "{shown}");
}

/// Events read before a reload asked for more of their envelope (`forward_headers` on one
/// subscription, `envelope_json` on another) are sent as the new settings say, not as what
/// was decoded for the old ones.
#[tokio::test(flavor = "multi_thread")]
async fn events_waiting_through_a_reload_are_sent_as_the_new_payload_settings_say() {
    let topic = unique("repayload");
    let (raw, json) = (Receiver::start().await, Receiver::start().await);
    for receiver in [&raw, &json] {
        receiver.answer(|_, _| Reply::status(503));
    }
    let subs = |raw_extra: &str, json_extra: &str| {
        let retrying = "    breaker: { failures: 1000000 }\n    retry: { initial_backoff: 100ms, max_backoff: 200ms, max_attempts: 1000000, max_age: 1h }\n";
        subscription(
            &format!("{topic}-raw"),
            &topic,
            &raw.url,
            &format!("{retrying}{raw_extra}"),
        ) + &subscription(
            &format!("{topic}-json"),
            &topic,
            &json.url,
            &format!("{retrying}{json_extra}"),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let backend = Backend::embedded();
    std::fs::write(&path, config(&backend, &topic, &subs("", ""), false)).unwrap();
    let server = Hookbridge::start_file(&path, &[], &[]);
    let client = http_client();
    for seq in 0..3 {
        let response = client
            .post(server.hook_url("events"))
            .header("X-Tenant", "acme")
            .json(&serde_json::json!({"key": format!("k{seq}"), "seq": seq}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while raw.received().len() < 6 || json.received().len() < 6 {
        assert!(Instant::now() < deadline, "every event is being retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let before = admin_get(&server.admin, "/v1/config", TOKEN).await["hash"].clone();
    let reloaded = subs(
        "    forward_headers: [X-Tenant]\n",
        "    payload: envelope_json\n",
    );
    std::fs::write(&path, config(&backend, &topic, &reloaded, false)).unwrap();
    wait_reloaded(&server.admin, before.as_str().unwrap()).await;
    // Taken only as the new settings shape them: an attempt built before the swap and
    // still on its way is refused too, and tried again.
    raw.answer(|headers, _| match headers.contains_key("x-tenant") {
        true => Reply::status(200),
        false => Reply::status(503),
    });
    json.answer(|_, body| {
        let envelope: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        match envelope["source"] == "events" {
            true => Reply::status(200),
            false => Reply::status(503),
        }
    });

    let delivered_ids = |receiver: &Receiver| {
        let received = receiver.received();
        let ids: std::collections::BTreeSet<String> = received
            .iter()
            .filter(|r| r.ok())
            .map(|r| r.header("webhook-id").to_string())
            .collect();
        ids.len()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered_ids(&raw) < 3 || delivered_ids(&json) < 3 {
        assert!(Instant::now() < deadline, "every event is delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in raw.received().iter().filter(|r| r.ok()) {
        assert_eq!(r.header("x-tenant"), "acme", "forwarded: {:?}", r.headers);
    }
    for r in json.received().iter().filter(|r| r.ok()) {
        let envelope = r.json();
        assert_eq!(
            envelope["id"],
            r.header("webhook-id"),
            "an envelope: {envelope}"
        );
        assert_eq!(envelope["source"], "events", "{envelope}");
    }
}
