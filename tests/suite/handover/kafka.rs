//! Kafka consumer groups: two replicas split the partitions; one is killed with -9 mid
//! delivery and its partitions come back (to the survivor once the dead member's session
//! expires, or to the restarted replica), every event is delivered in order per key, and a
//! replica that joins later resumes from the committed offsets.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::kafka::{bootstrap, config};
use crate::support::receiver::{Receiver, Reply, assert_first_deliveries_in_order, seq_of};
use crate::support::*;

/// How the killed replica's partitions come back.
#[derive(Clone, Copy, PartialEq)]
enum Takeover {
    /// The survivor takes them when the dead member's session expires.
    Survivor,
    /// The killed replica is restarted and the group rebalances.
    Restart,
}

/// Two replicas of one subscription split the partitions; one is killed with SIGKILL in
/// the middle of delivery; every event is delivered, per-key order holds, and a restarted
/// replica resumes from the committed offsets.
async fn replicas_survive_kill_9(
    bootstrap: String,
    topic: String,
    sub: String,
    takeover: Takeover,
) {
    const EVENTS: u64 = 600;
    const KEYS: u64 = 24;
    let receiver = Receiver::start().await;
    // About 80 deliveries a second in all: slow enough to kill one replica mid-delivery.
    receiver.answer(|_, _| Reply {
        status: 200,
        delay: Duration::from_millis(50),
        retry_after: None,
    });
    let subs = format!(
        "  - name: {sub}\n    topics: [{topic}]\n    url: {}\n    max_in_flight: 2\n",
        receiver.url
    );
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let yaml = config(&bootstrap, &topic, &subs);
    let mut a = Hookbridge::start(dir_a.path(), &yaml);
    let b = Hookbridge::start(dir_b.path(), &yaml);
    let assigned = |server: &Hookbridge| server.log_text().matches("partition assigned").count();
    // Both members are in the group before the load starts (joining takes a rebalance or
    // two, slower on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(30);
    while (assigned(&a) == 0 || assigned(&b) == 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Each key's events posted in order, the keys side by side: all 600 are in within a
    // fraction of the delivery time, so the kill below lands mid-delivery however long
    // each publish takes (one after the other, 600 acks took as long as most deliveries).
    let client = http_client();
    let posts = (0..KEYS).map(|key| {
        let (client, a, b) = (&client, &a, &b);
        async move {
            for seq in (key..EVENTS).step_by(KEYS as usize) {
                let body = serde_json::json!({"key": format!("k{key}"), "seq": seq});
                let target = if seq % 2 == 0 { a } else { b };
                let response = client
                    .post(target.hook_url("events"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
            }
        }
    });
    futures_util::future::join_all(posts).await;
    receiver
        .wait_for("a fifth delivered", Duration::from_secs(60), |r| {
            r.len() >= EVENTS as usize / 5
        })
        .await;
    assert!(
        assigned(&a) >= 1 && assigned(&b) >= 1,
        "both replicas own partitions: a={} b={}",
        assigned(&a),
        assigned(&b)
    );
    a.kill();
    let killed_at = receiver.count();
    assert!(
        killed_at < EVENTS as usize * 3 / 4,
        "killed mid-delivery ({killed_at} delivered)"
    );
    let restarted = (takeover == Takeover::Restart).then(|| Hookbridge::start(dir_a.path(), &yaml));

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let delivered = receiver
            .received()
            .iter()
            .filter(|r| r.ok())
            .map(seq_of)
            .collect::<HashSet<_>>()
            .len();
        if delivered >= EVENTS as usize {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{delivered} of {EVENTS} delivered after the kill; the survivor's log:\n{}",
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = receiver.received();
    assert_first_deliveries_in_order(&received);
    let redelivered = received.iter().filter(|r| !r.abandoned).count() - EVENTS as usize;
    eprintln!(
        "kill -9 of one replica after {killed_at} deliveries: {redelivered} redelivered, all {EVENTS} delivered"
    );

    // A (re)started replica joins and resumes from the committed offsets: nothing that was
    // delivered and committed comes again.
    let before = receiver.count();
    let a = restarted.unwrap_or_else(|| Hookbridge::start(dir_a.path(), &yaml));
    // A cooperative join takes two rebalances, which took over 30 s with both cores busy
    // on other brokers.
    let deadline = Instant::now() + Duration::from_secs(90);
    while assigned(&a) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        assigned(&a) >= 1,
        "the restarted replica gets partitions:\n{}",
        a.log_text()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        receiver.count(),
        before,
        "resumed from committed offsets, nothing redelivered"
    );
}

/// The killed replica is restarted: it resumes from the committed offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_a_real_broker_survive_kill_9() {
    replicas_survive_kill_9(
        bootstrap(),
        unique("shared"),
        unique("shared-sub"),
        Takeover::Restart,
    )
    .await;
}

/// The survivor takes over the dead replica's partitions once its session expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_survivor_takes_over_a_killed_replicas_partitions() {
    replicas_survive_kill_9(
        bootstrap(),
        unique("takeover"),
        unique("takeover-sub"),
        Takeover::Survivor,
    )
    .await;
}
