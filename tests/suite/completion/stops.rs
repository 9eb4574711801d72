//! The process stopping mid-delivery, on the embedded log (the shutdown's deadline on Kafka
//! too): after `kill -9` every event that was not done is delivered again, in order per key
//! and with its webhook-id; after SIGTERM the attempts on the wire finish, what is done is
//! committed and nothing comes again, within `server.shutdown_timeout`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::backend::Backend;
use crate::support::delivery::config;
use crate::support::receiver::{Receiver, Reply, assert_first_deliveries_in_order, seq_of};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_delivery_redelivers_everything_in_order() {
    const EVENTS: u64 = 2_000;
    let receiver = Receiver::start().await;
    // The receiver answers the first quarter, then holds every request: the process is
    // killed mid-delivery however fast or slow the machine is.
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    receiver.answer(move |_, _| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        Reply {
            status: 200,
            delay: if n < EVENTS as usize / 4 {
                Duration::from_millis(5)
            } else {
                Duration::from_secs(600)
            },
            retry_after: None,
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        "  - name: crashy\n    topics: [events]\n    url: {}\n    max_in_flight: 4\n",
        receiver.url
    );
    let mut server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let client = http_client();
    for seq in 0..EVENTS {
        let body = serde_json::json!({"key": format!("k{}", seq % 20), "seq": seq});
        client
            .post(server.hook_url("events"))
            .json(&body)
            .send()
            .await
            .unwrap();
    }
    receiver
        .wait_for("a quarter delivered", Duration::from_secs(60), |r| {
            r.len() >= EVENTS as usize / 4
        })
        .await;
    server.kill();
    let before_restart = receiver.count();
    assert!(
        before_restart < EVENTS as usize * 3 / 4,
        "killed mid-delivery"
    );
    receiver.answer(|_, _| Reply::status(200));

    let _server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    receiver
        .wait_for(
            "every event after the restart",
            Duration::from_secs(120),
            |r| {
                r.iter()
                    .filter(|r| !r.abandoned)
                    .map(seq_of)
                    .collect::<HashSet<_>>()
                    .len()
                    >= EVENTS as usize
            },
        )
        .await;
    let received = receiver.received();
    assert_first_deliveries_in_order(&received);
    let ids: HashMap<u64, HashSet<String>> = received.iter().fold(HashMap::new(), |mut m, r| {
        m.entry(seq_of(r).1)
            .or_default()
            .insert(r.header("webhook-id").to_string());
        m
    });
    assert!(
        ids.values().all(|set| set.len() == 1),
        "a redelivery carries the same webhook-id"
    );
    eprintln!(
        "{EVENTS} events: {before_restart} requests before kill -9, {} in all, {} redelivered",
        received.len(),
        received.iter().filter(|r| !r.abandoned).count() - EVENTS as usize
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_delivery_commits_what_is_done() {
    const EVENTS: u64 = 1_000;
    let receiver = Receiver::start().await;
    receiver.answer(|_, _| Reply {
        status: 200,
        delay: Duration::from_millis(20),
        retry_after: None,
    });
    let dir = tempfile::tempdir().unwrap();
    // One lane per partition, so what is done is always a contiguous run and can be
    // committed whole. (With per-key lanes, events finished past one still queued in another
    // lane are repeated after a restart: an offset commit cannot skip a gap.)
    let subs = format!(
        "  - name: graceful\n    topics: [events]\n    url: {}\n    ordering: partition\n    max_in_flight: 4\n",
        receiver.url
    );
    let mut server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let client = http_client();
    for seq in 0..EVENTS {
        let body = serde_json::json!({"key": format!("k{}", seq % 10), "seq": seq});
        client
            .post(server.hook_url("events"))
            .json(&body)
            .send()
            .await
            .unwrap();
    }
    receiver
        .wait_for("some deliveries", Duration::from_secs(60), |r| {
            r.len() >= 200
        })
        .await;
    let stopping = Instant::now();
    assert!(
        server.terminate().success(),
        "SIGTERM exits 0:\n{}",
        server.log_text()
    );
    let stop_took = stopping.elapsed();
    let before = receiver.count();
    assert!(before < EVENTS as usize, "stopped mid-delivery");

    let _server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    receiver
        .wait_for("the rest after the restart", Duration::from_secs(60), |r| {
            r.iter()
                .filter(|r| !r.abandoned)
                .map(seq_of)
                .collect::<HashSet<_>>()
                .len()
                >= EVENTS as usize
        })
        .await;
    let redelivered = receiver.count() - EVENTS as usize;
    eprintln!(
        "SIGTERM after {before} deliveries: stopped in {stop_took:?}, {redelivered} redelivered after the restart"
    );
    // Attempts on the wire finished and their offsets were committed before the exit.
    assert_eq!(redelivered, 0);
    assert!(stop_took < Duration::from_secs(5));
}

/// SIGTERM while slow senders hold ingress requests open and deliveries hang on their
/// receiver: the phases of the shutdown (ingress, delivery, flush) share one deadline,
/// `server.shutdown_timeout`, so the process is gone within it and a second (the last
/// resort's), not after the sum of them, and each phase says what it took or that it was
/// given up.
async fn sigterm_exits_within_the_shutdown_timeout(backend: Backend, timeout: Duration) {
    let receiver = Receiver::start().await;
    receiver.answer(|_, _| Reply {
        status: 200,
        delay: Duration::from_secs(600),
        retry_after: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("stopping");
    let subs = format!(
        // `fixed`: all 16 on the wire at once (an adaptive limit starts at 8 and grows
        // only on answers, which a hanging receiver never gives).
        "  - name: hanging\n    topics: [{topic}]\n    url: {}\n    timeout: 5m\n    max_in_flight: 16\n    concurrency: fixed\n",
        receiver.url
    );
    let config = events_config(&backend.broker(4), &topic, &subs).replace(
        "  admin_listen: 127.0.0.1:0\n",
        &format!(
            "  admin_listen: 127.0.0.1:0\n  shutdown_timeout: {}s\n  read_timeout: 60s\n",
            timeout.as_secs()
        ),
    );
    let mut server = Hookbridge::start(dir.path(), &config);
    // A busy delivery: every lane's attempt on the wire, more events queued behind them.
    post_accepted(&server, 200, |seq| format!("k{}", seq % 40)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.on_the_wire() < 16 {
        assert!(Instant::now() < deadline, "the attempts are on the wire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Senders that sent half a request and wait.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut sender =
            tokio::net::TcpStream::connect(server.ingress.trim_start_matches("http://"))
                .await
                .unwrap();
        use tokio::io::AsyncWriteExt;
        sender.write_all(b"POST /hooks/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"key\":")
            .await
            .unwrap();
        slow.push(sender);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    tokio::task::block_in_place(|| server.terminate());
    let took = started.elapsed();
    let log = server.log_text();
    assert!(
        took < timeout + Duration::from_millis(1_500),
        "exited {took:?} after SIGTERM, with shutdown_timeout: {timeout:?}:\n{log}"
    );
    for phase in ["ingress", "delivery", "broker flush"] {
        assert!(
            log.lines()
                .any(|line| line.contains("shutdown phase") && line.contains(phase)),
            "the {phase} phase is logged:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_shutdown_timeout_whatever_is_still_running() {
    sigterm_exits_within_the_shutdown_timeout(Backend::embedded(), Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sigterm_exits_within_the_shutdown_timeout_whatever_is_still_running() {
    sigterm_exits_within_the_shutdown_timeout(Backend::kafka(), Duration::from_secs(10)).await;
}
