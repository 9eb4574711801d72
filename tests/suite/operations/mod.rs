//! The operator's admin API and CLI, on every backend: pause and resume, dead-letter
//! listing and redrive, replay from a time; the bearer token; the progress bar in a real
//! terminal. Every verb runs as the `hookbridge` binary does for an operator.

mod common;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::backend::Backend;
use common::receiver::{Receiver, Reply, seq_of};
use common::*;
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

// ---------------------------------------------------------------------------------------
// The bearer token.

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

// ---------------------------------------------------------------------------------------
// Pause and resume.

async fn pause_keeps_the_lag_growing_and_resume_drains_it(backend: Backend) {
    let topic = unique("paused");
    backend.create_topics(&topic, 2);
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(
        dir.path(),
        &config(
            &backend,
            &topic,
            &subscription(&topic, &topic, &receiver.url, ""),
        ),
    );
    for seq in 0..10 {
        post(&server, &format!("k{}", seq % 5), seq, "test").await;
    }
    receiver
        .wait_for("the first 10", Duration::from_secs(30), |r| r.len() >= 10)
        .await;

    let paused = cli(&server.admin, &["pause", &topic]).await;
    assert!(paused.status.success(), "{paused:?}");
    assert!(String::from_utf8_lossy(&paused.stdout).contains("paused"));
    for seq in 10..30 {
        post(&server, &format!("k{}", seq % 5), seq, "test").await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (is_paused, lag) = lag(&server.admin, &topic).await;
        assert!(is_paused);
        if lag >= 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lag grows while paused: {lag}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(receiver.count(), 10, "nothing is delivered while paused");

    let resumed = cli_json(&server.admin, &["resume", &topic]).await;
    assert_eq!(resumed["replicas"][0]["subscription"]["paused"], false);
    receiver
        .wait_for("all 30 after resume", Duration::from_secs(30), |r| {
            common::receiver::all_delivered(r, 0..30)
        })
        .await;
    common::receiver::assert_first_deliveries_in_order(&receiver.received());
    let deadline = Instant::now() + Duration::from_secs(20);
    while lag(&server.admin, &topic).await.1 > 0 {
        assert!(Instant::now() < deadline, "the lag falls back to 0");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_pause_keeps_the_lag_growing_and_resume_drains_it() {
    pause_keeps_the_lag_growing_and_resume_drains_it(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_pause_keeps_the_lag_growing_and_resume_drains_it() {
    pause_keeps_the_lag_growing_and_resume_drains_it(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_pause_keeps_the_lag_growing_and_resume_drains_it() {
    pause_keeps_the_lag_growing_and_resume_drains_it(Backend::kafka()).await;
}

// ---------------------------------------------------------------------------------------
// Dead letters and redrive.

/// 24 events (keys k0..k2, types alternating `invoice.paid` and `order.created`) that a
/// broken receiver refuses with 400: all dead-lettered.
async fn dead_lettered(
    backend: &Backend,
) -> (
    Hookbridge,
    Receiver,
    Arc<AtomicBool>,
    String,
    tempfile::TempDir,
) {
    let topic = unique("redriven");
    backend.create_topics(&topic, 2);
    let receiver = Receiver::start().await;
    let broken = Arc::new(AtomicBool::new(true));
    let refusing = broken.clone();
    receiver.answer(move |_, _| {
        Reply::status(if refusing.load(Ordering::SeqCst) {
            400
        } else {
            200
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(
        dir.path(),
        // Refusals count against the breaker; it would slow the test down, not change it.
        &config(
            backend,
            &topic,
            &subscription(
                &topic,
                &topic,
                &receiver.url,
                "    breaker: { failures: 1000 }\n",
            ),
        ),
    );
    for seq in 0..24 {
        let event_type = if seq % 2 == 0 {
            "invoice.paid"
        } else {
            "order.created"
        };
        post(&server, &format!("k{}", seq % 3), seq, event_type).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = cli_json(&server.admin, &["dlq", "list", &topic, "--limit", "1000"]).await;
        let listed = page["dead_letters"].as_array().unwrap().len();
        if listed == 24 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "24 dead letters listed, not {listed}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    (server, receiver, broken, topic, dir)
}

async fn redrive_sends_exactly_the_matching_dead_letters_once_in_key_order(backend: Backend) {
    let (server, receiver, broken, topic, _dir) = dead_lettered(&backend).await;
    let admin = server.admin.clone();

    // Listing pages through them, each with what happened to it.
    let first = cli_json(&admin, &["dlq", "list", &topic, "--limit", "10"]).await;
    assert_eq!(first["dead_letters"].as_array().unwrap().len(), 10);
    let next = first["next"].as_str().expect("a next page").to_string();
    let second = cli_json(
        &admin,
        &["dlq", "list", &topic, "--limit", "100", "--after", &next],
    )
    .await;
    assert_eq!(second["dead_letters"].as_array().unwrap().len(), 14);
    assert_eq!(second["next"], Value::Null);
    let letter = &first["dead_letters"][0];
    assert_eq!(letter["last_status"], 400);
    assert_eq!(letter["attempts"], 1);
    assert_eq!(letter["topic"], topic.as_str());
    let shown = cli_json(
        &admin,
        &["dlq", "show", &topic, letter["id"].as_str().unwrap()],
    )
    .await;
    assert_eq!(shown["id"], letter["id"]);
    assert!(
        shown["body"]["seq"].is_u64() && shown["event"]["type"] == letter["event_type"],
        "the event in full: {shown}"
    );

    broken.store(false, Ordering::SeqCst);
    let refused_before = receiver.count();

    // A dry run counts and sends nothing.
    let dry = cli_json(&admin, &["dlq", "redrive", &topic, "--dry-run"]).await;
    assert_eq!(
        (
            dry["state"].as_str(),
            dry["matched"].as_u64(),
            dry["sent"].as_u64()
        ),
        (Some("done"), Some(24), Some(0))
    );

    // Invoices of keys k1 and k2: seqs 2, 4, 8, 10, 14, 16, 20, 22.
    let wanted: Vec<u64> = (0..24u64).filter(|s| s % 2 == 0 && s % 3 != 0).collect();
    let redrive = cli_json(
        &admin,
        &[
            "dlq",
            "redrive",
            &topic,
            "--type",
            "invoice.*",
            "--key",
            "k1",
            "--key",
            "k2",
            "--rate",
            "100",
        ],
    )
    .await;
    assert_eq!(redrive["state"], "done", "{redrive}");
    assert_eq!(redrive["matched"], wanted.len());
    assert_eq!(redrive["sent"], wanted.len());
    receiver
        .wait_for("the redriven events", Duration::from_secs(30), |r| {
            r.iter().filter(|r| r.ok()).count() >= wanted.len()
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = delivered(&receiver);
    let mut seqs: Vec<u64> = got.iter().map(|(_, s)| *s).collect();
    seqs.sort();
    assert_eq!(seqs, wanted, "exactly the matching ones, once each");
    for key in ["k1", "k2"] {
        let order: Vec<u64> = got
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, s)| *s)
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "{key} in order: {order:?}"
        );
    }
    assert_eq!(receiver.count(), refused_before + wanted.len());

    // The same redrive again sends nothing; forced, it does.
    let again = cli_json(
        &admin,
        &[
            "dlq",
            "redrive",
            &topic,
            "--type",
            "invoice.*",
            "--key",
            "k1",
            "--key",
            "k2",
        ],
    )
    .await;
    assert_eq!(
        (again["sent"].as_u64(), again["skipped"].as_u64()),
        (Some(0), Some(wanted.len() as u64))
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        receiver.count(),
        refused_before + wanted.len(),
        "nothing resent"
    );
    let forced = cli_json(
        &admin,
        &[
            "dlq",
            "redrive",
            &topic,
            "--id",
            &got[0].1.to_string(),
            "--force",
        ],
    )
    .await;
    // Ids are envelope ids, not seqs: a made-up id matches nothing.
    assert_eq!(forced["matched"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_redrive_sends_exactly_the_matching_dead_letters_once_in_key_order() {
    redrive_sends_exactly_the_matching_dead_letters_once_in_key_order(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_redrive_sends_exactly_the_matching_dead_letters_once_in_key_order() {
    redrive_sends_exactly_the_matching_dead_letters_once_in_key_order(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_redrive_sends_exactly_the_matching_dead_letters_once_in_key_order() {
    redrive_sends_exactly_the_matching_dead_letters_once_in_key_order(Backend::kafka()).await;
}

// ---------------------------------------------------------------------------------------
// Replay.

async fn replay_from_a_time_reaches_that_subscription_only(backend: Backend) {
    let topic = unique("replayed");
    backend.create_topics(&topic, 2);
    let (replayed, other) = (Receiver::start().await, Receiver::start().await);
    let subs = format!(
        "{}{}",
        subscription(&format!("{topic}-a"), &topic, &replayed.url, ""),
        subscription(&format!("{topic}-b"), &topic, &other.url, "")
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(dir.path(), &config(&backend, &topic, &subs));
    for seq in 0..10 {
        post(&server, &format!("k{}", seq % 3), seq, "test").await;
    }
    replayed
        .wait_for("the first 10", Duration::from_secs(30), |r| r.len() >= 10)
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let since = hookbridge::rfc3339::rfc3339(SystemTime::now());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for seq in 10..20 {
        post(&server, &format!("k{}", seq % 3), seq, "test").await;
    }
    for receiver in [&replayed, &other] {
        receiver
            .wait_for("all 20", Duration::from_secs(30), |r| r.len() >= 20)
            .await;
    }

    let replay = cli_json(
        &server.admin,
        &["replay", &format!("{topic}-a"), "--since", &since],
    )
    .await;
    assert_eq!(replay["state"], "done", "{replay}");
    assert_eq!(
        (replay["matched"].as_u64(), replay["sent"].as_u64()),
        (Some(10), Some(10))
    );
    replayed
        .wait_for("the replayed 10", Duration::from_secs(30), |r| {
            r.len() >= 30
        })
        .await;
    // Live events after the replay: delivered once, the cursor did not move back.
    for seq in 20..25 {
        post(&server, &format!("k{}", seq % 3), seq, "test").await;
    }
    other
        .wait_for("the live 5", Duration::from_secs(30), |r| r.len() >= 25)
        .await;
    replayed
        .wait_for("the live 5", Duration::from_secs(30), |r| r.len() >= 35)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let again: Vec<(String, u64)> = delivered(&replayed)[20..].to_vec();
    let mut replayed_seqs: Vec<u64> = again.iter().map(|(_, s)| *s).filter(|s| *s < 20).collect();
    replayed_seqs.sort();
    assert_eq!(
        replayed_seqs,
        (10..20).collect::<Vec<_>>(),
        "exactly the events after `since`"
    );
    for key in ["k0", "k1", "k2"] {
        let order: Vec<u64> = again
            .iter()
            .filter(|(k, s)| k == key && *s < 20)
            .map(|(_, s)| *s)
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "{key} replayed in order: {order:?}"
        );
    }
    assert_eq!(
        replayed.count(),
        35,
        "every live event once, the replayed ten again"
    );
    assert_eq!(other.count(), 25, "the other subscription saw no replay");

    let repeat = cli_json(
        &server.admin,
        &["replay", &format!("{topic}-a"), "--since", &since],
    )
    .await;
    assert_eq!(
        (repeat["sent"].as_u64(), repeat["skipped"].as_u64()),
        (Some(5), Some(10)),
        "only the live five are new"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_replay_from_a_time_reaches_that_subscription_only() {
    replay_from_a_time_reaches_that_subscription_only(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_replay_from_a_time_reaches_that_subscription_only() {
    replay_from_a_time_reaches_that_subscription_only(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_replay_from_a_time_reaches_that_subscription_only() {
    replay_from_a_time_reaches_that_subscription_only(Backend::kafka()).await;
}

// ---------------------------------------------------------------------------------------
// The human output in a real terminal.

/// `hookbridge dlq redrive` in a tmux pane: a progress bar with rate and ETA while it runs,
/// then the summary.
#[tokio::test(flavor = "multi_thread")]
async fn redrive_shows_a_progress_bar_in_a_terminal() {
    let backend = Backend::embedded();
    let (server, _receiver, broken, topic, _dir) = dead_lettered(&backend).await;
    broken.store(false, Ordering::SeqCst);
    let session = unique("hb");
    let command = format!(
        "HOOKBRIDGE_ADMIN_TOKEN={TOKEN} {BIN} dlq redrive {topic} --rate 6 --admin-url {}; sleep 60",
        server.admin
    );
    let started = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "150",
            "-y",
            "10",
            &command,
        ])
        .status()
        .expect("tmux is installed (scripts/test installs it)");
    assert!(started.success());
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &self.0])
                .status();
        }
    }
    let _kill = Kill(session.clone());
    let capture = || {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &session])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut saw_bar = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    let screen = loop {
        let screen = capture();
        if screen.contains("redrive [") && screen.contains("ETA") && screen.contains("/24") {
            saw_bar.get_or_insert(screen.clone());
        }
        if screen.contains(" done: 24 matched, 24 sent") {
            break screen;
        }
        assert!(
            Instant::now() < deadline,
            "the redrive ends in the pane: {screen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let bar =
        saw_bar.unwrap_or_else(|| panic!("a progress bar while it ran; at the end: {screen}"));
    eprintln!("{bar}");
    assert!(bar.contains("/s"), "the rate: {bar}");
}

/// Ctrl-C stops a redrive and says how far it got; a second run sends only the rest.
#[tokio::test(flavor = "multi_thread")]
async fn interrupted_redrive_stops_and_the_next_sends_the_rest() {
    let backend = Backend::embedded();
    let (server, receiver, broken, topic, _dir) = dead_lettered(&backend).await;
    broken.store(false, Ordering::SeqCst);
    let before = receiver.count();
    let mut child = Command::new(BIN)
        .args([
            "dlq",
            "redrive",
            &topic,
            "--rate",
            "5",
            "--output",
            "json",
            "--admin-url",
            &server.admin,
        ])
        .env("HOOKBRIDGE_ADMIN_TOKEN", TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    receiver
        .wait_for("a few redriven", Duration::from_secs(30), |r| {
            r.len() >= before + 3
        })
        .await;
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let out = Arc::new(Mutex::new(None));
    let waited = out.clone();
    tokio::task::spawn_blocking(move || {
        let mut stdout = String::new();
        use std::io::Read;
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let status = child.wait().unwrap();
        *waited.lock().unwrap() = Some((status, stdout));
    })
    .await
    .unwrap();
    let (status, stdout) = out.lock().unwrap().take().unwrap();
    assert!(status.success(), "a clean stop");
    let stopped: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(stopped["state"], "cancelled", "{stopped}");
    let sent = stopped["sent"].as_u64().unwrap();
    assert!((3..24).contains(&sent), "stopped part way: {sent}");

    let rest = cli_json(&server.admin, &["dlq", "redrive", &topic]).await;
    assert_eq!(
        (rest["sent"].as_u64(), rest["skipped"].as_u64()),
        (Some(24 - sent), Some(sent))
    );
    receiver
        .wait_for("every dead letter once", Duration::from_secs(30), |r| {
            common::receiver::all_delivered(r, 0..24)
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.count(), before + 24, "none twice");
}
