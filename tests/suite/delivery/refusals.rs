//! Which answers are about the endpoint and which about one event (`retry.dead_letter_on`):
//! events the receiver refuses (400 by default) are dead-lettered without opening the
//! breaker, so the others flow at full rate; an endpoint whose credentials broke (401 to
//! everything) is retried like any failing endpoint and gets every event once it recovers,
//! none dead-lettered meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::delivery::{config, post};
use crate::support::receiver::{Receiver, Reply, all_delivered, assert_first_deliveries_in_order};
use crate::support::*;

/// Twenty events in a row answered 400, then a hundred good ones: the refused ones are
/// dead-lettered, and the breaker (10 failures by default) never opens, so the good ones
/// do not wait its 10 s cool-down.
#[tokio::test]
async fn refused_events_are_dead_lettered_without_opening_the_breaker() {
    let receiver = Receiver::start().await;
    receiver.answer(|_, body| {
        let refused = serde_json::from_slice::<serde_json::Value>(body).unwrap()["refused"] == true;
        Reply::status(if refused { 400 } else { 200 })
    });
    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        "  - name: refusing\n    topics: [events]\n    url: {}\n    max_in_flight: 1\n",
        receiver.url
    );
    let server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let client = http_client();
    for seq in 0..20 {
        post(
            &client,
            &server,
            "test",
            serde_json::json!({"key": format!("r{seq}"), "seq": seq, "refused": true}),
        )
        .await;
    }
    receiver
        .wait_for("the refused events", Duration::from_secs(20), |r| {
            r.len() >= 20
        })
        .await;
    let good_from = Instant::now();
    for seq in 100..200 {
        post(
            &client,
            &server,
            "test",
            serde_json::json!({"key": format!("g{seq}"), "seq": seq}),
        )
        .await;
    }
    receiver
        .wait_for("the good events", Duration::from_secs(60), |r| {
            all_delivered(r, 100..200)
        })
        .await;
    let took = good_from.elapsed();
    assert!(
        !server.log_text().contains("circuit breaker open"),
        "refusals of single events do not open the breaker; the log:\n{}",
        server.log_text()
    );
    assert!(
        took < Duration::from_secs(8),
        "the good events flowed at once, not after a cool-down: {took:?}"
    );
    let refused = receiver
        .received()
        .iter()
        .filter(|r| r.status == 400)
        .count();
    assert_eq!(refused, 20, "each refused event was tried once");
}

/// An endpoint answering 401 to everything for two minutes (its credentials broke, then
/// were mended): under the default `dead_letter_on`, every event is retried, parks and
/// retries on, and is delivered once the endpoint recovers; none is dead-lettered.
#[tokio::test]
async fn an_endpoint_refusing_everyone_for_two_minutes_gets_every_event_after() {
    const EVENTS: u64 = 40;
    let receiver = Receiver::start().await;
    let broken = Arc::new(AtomicBool::new(true));
    let refusing = broken.clone();
    receiver.answer(move |_, _| {
        Reply::status(if refusing.load(Ordering::SeqCst) {
            401
        } else {
            200
        })
    });
    let dir = tempfile::tempdir().unwrap();
    // The default policy but for the longest backoff, so that the events come back within
    // seconds of the recovery rather than the default ten minutes.
    let subs = format!(
        "  - name: credentials\n    topics: [events]\n    url: {}\n    retry: {{ max_backoff: 5s }}\n",
        receiver.url
    );
    let mut server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let client = http_client();
    for seq in 0..EVENTS {
        post(
            &client,
            &server,
            "test",
            serde_json::json!({"key": format!("k{}", seq % 8), "seq": seq}),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(120)).await;
    let refused = receiver.count();
    assert!(refused >= 8, "the endpoint was tried: {refused} requests");
    broken.store(false, Ordering::SeqCst);
    receiver
        .wait_for(
            "every event after the recovery",
            Duration::from_secs(90),
            |r| all_delivered(r, 0..EVENTS),
        )
        .await;
    assert_first_deliveries_in_order(&receiver.received());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(server.terminate().success());
    let dead = read_topic(dir.path(), "hookbridge.dlq.credentials").await;
    assert!(dead.is_empty(), "{} dead-lettered", dead.len());
}
