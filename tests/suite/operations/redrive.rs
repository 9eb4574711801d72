//! Dead letters: listed page by page and shown whole; a redrive sends exactly the matching
//! ones, once each, in key order (a dry run sends nothing, a repeat sends nothing new); in a
//! terminal it shows a progress bar; interrupted, it stops and the next run sends the rest.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{TOKEN, cli_json, config, delivered, post};
use crate::support;
use crate::support::backend::Backend;
use crate::support::receiver::{self, Receiver, Reply};
use crate::support::*;
use serde_json::Value;

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
            support::receiver::all_delivered(r, 0..24)
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.count(), before + 24, "none twice");
}

/// Dead letters of a key redriven while the same key's live events flow: the resent and the
/// live events of one key are one lane's, never two requests of the key on the wire at once.
async fn redriven_and_live_events_of_a_key_never_overlap(backend: Backend, ordering: &str) {
    const DEAD: u64 = 30;
    const LIVE: std::ops::Range<u64> = 100..250;
    let topic = unique("redrive-race");
    let receiver = Receiver::start().await;
    let broken = Arc::new(AtomicBool::new(true));
    let refusing = broken.clone();
    receiver.answer(move |_, _| Reply {
        status: if refusing.load(Ordering::SeqCst) {
            400
        } else {
            200
        },
        delay: Duration::from_millis(20),
        retry_after: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let server = Hookbridge::start(
        dir.path(),
        &config(
            &backend,
            &topic,
            &subscription(
                &topic,
                &topic,
                &receiver.url,
                &format!(
                    "    max_in_flight: 8\n    ordering: {ordering}\n    breaker: {{ failures: 1000 }}\n"
                ),
            ),
        ),
    );
    for seq in 0..DEAD {
        post(&server, "k", seq, "test").await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = cli_json(&server.admin, &["dlq", "list", &topic, "--limit", "1000"]).await;
        if page["dead_letters"].as_array().unwrap().len() == DEAD as usize {
            break;
        }
        assert!(Instant::now() < deadline, "{DEAD} dead letters listed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    broken.store(false, Ordering::SeqCst);

    // The key's live events flow while its dead letters are redriven.
    let live = {
        let ingress = server.hook_url("events");
        tokio::spawn(async move {
            for seq in LIVE {
                let response = http_client()
                    .post(&ingress)
                    .header("X-Type", "test")
                    .json(&serde_json::json!({"key": "k", "seq": seq}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let redrive = cli_json(&server.admin, &["dlq", "redrive", &topic]).await;
    assert_eq!(redrive["sent"], DEAD, "{redrive}");
    live.await.unwrap();
    let wanted = (DEAD + LIVE.end - LIVE.start) as usize;
    receiver
        .wait_for(
            "every redriven and live event",
            Duration::from_secs(60),
            |r| {
                r.iter()
                    .filter(|r| r.ok())
                    .map(receiver::seq_of)
                    .collect::<std::collections::HashSet<_>>()
                    .len()
                    >= wanted
            },
        )
        .await;
    receiver::assert_no_overlap_per_key(&receiver.received());
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_redriven_and_live_events_of_a_key_never_overlap() {
    redriven_and_live_events_of_a_key_never_overlap(Backend::embedded(), "key").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_redriven_and_live_events_of_a_key_never_overlap() {
    redriven_and_live_events_of_a_key_never_overlap(Backend::nats(), "key").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_redriven_and_live_events_of_a_key_never_overlap() {
    redriven_and_live_events_of_a_key_never_overlap(Backend::kafka(), "key").await;
}

/// Under `ordering: partition` the resend partition waits for its live partition's event on
/// its way, and the other way round, as a key's do under `ordering: key`.
#[tokio::test(flavor = "multi_thread")]
async fn embedded_redriven_and_live_events_never_overlap_under_partition_ordering() {
    redriven_and_live_events_of_a_key_never_overlap(Backend::embedded(), "partition").await;
}

/// A redrive of many large dead letters (400 of 256 KiB, 100 MiB in all;
/// `HOOKBRIDGE_REDRIVE_LETTERS` sets another count) reads them a chunk at a time: the
/// process's memory grows by less than 64 MiB, in a dry run and in the redrive itself. At
/// 10,000 (2.5 GiB) it held 94 MiB before and 120 MiB during; before the embedded log
/// bounded its memtables and kept large values out of its compactions, 3.8 GiB before and
/// 6.4 GiB during (ARCHITECTURE.md §9, "embedded log memory").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_of_large_dead_letters_holds_a_chunk_not_all_of_them() {
    let letters: u64 = std::env::var("HOOKBRIDGE_REDRIVE_LETTERS").map_or(400, |n| {
        n.parse().expect("HOOKBRIDGE_REDRIVE_LETTERS is a count")
    });
    let topic = unique("large");
    let receiver = Receiver::start().await;
    receiver.answer(|_, _| Reply::status(400));
    let dir = tempfile::tempdir().unwrap();
    let subs = subscription(
        &topic,
        &topic,
        &receiver.url,
        "    breaker: { failures: 100000 }\n",
    );
    let text = config(&Backend::embedded(), &topic, &subs).replace(
        "  admin_listen: 127.0.0.1:0\n",
        "  admin_listen: 127.0.0.1:0\n  max_body: 512KiB\n",
    );
    let server = Hookbridge::start(dir.path(), &text);
    let padding = "x".repeat(256 * 1024);
    let client = http_client();
    // Sent as a sender would: a 503 (the log's disk behind its writes) is tried again.
    let mut busy = 0;
    let sending_by = Instant::now() + Duration::from_secs(120 + letters / 10);
    for seq in 0..letters {
        let body = serde_json::json!({"key": format!("k{}", seq % 7), "seq": seq, "pad": padding});
        loop {
            let response = client
                .post(server.hook_url("events"))
                .json(&body)
                .send()
                .await
                .unwrap();
            if response.status() != 503 {
                assert_eq!(response.status(), 202);
                break;
            }
            busy += 1;
            assert!(Instant::now() < sending_by, "still 503 after {busy} tries");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120 + letters / 10);
    loop {
        let dry = cli_json(&server.admin, &["dlq", "redrive", &topic, "--dry-run"]).await;
        if dry["matched"].as_u64() == Some(letters) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "every event dead-lettered: {dry}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    receiver.answer(|_, _| Reply::status(200));
    let before = rss_mib(server.pid());
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, pid) = (peak.clone(), sampling.clone(), server.pid());
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                peak.fetch_max(rss_mib(pid), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let dry = cli_json(&server.admin, &["dlq", "redrive", &topic, "--dry-run"]).await;
    assert_eq!(dry["matched"].as_u64(), Some(letters), "{dry}");
    let redrive = cli_json(&server.admin, &["dlq", "redrive", &topic]).await;
    assert_eq!(redrive["sent"].as_u64(), Some(letters), "{redrive}");
    sampling.store(false, Ordering::SeqCst);
    sampler.await.unwrap();
    let grew = peak.load(Ordering::SeqCst).saturating_sub(before);
    assert!(
        grew < 64,
        "memory grew by {grew} MiB over {before} MiB during the redrive of {} MiB of dead letters",
        letters / 4
    );
    eprintln!(
        "a redrive of {letters} dead letters of 256 KiB: RSS {before} MiB before, at most {} MiB during ({busy} 503s while they were sent)",
        before + grew
    );
}
