//! Failed attempts: a permanent refusal (4xx) is dead-lettered at once and a server error
//! after its retries, with what happened in the dead letter's headers, and the commit moves
//! past both; an answer slower than `timeout` is a failed attempt and is retried; a redirect
//! is an answer (retried, not followed); credentials in the URL travel as basic
//! authorization.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::delivery::{config, post};
use crate::support::receiver::{Received, Receiver, Reply};
use crate::support::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

#[tokio::test]
async fn failures_are_dead_lettered_and_the_commit_moves_past_them() {
    let receiver = Receiver::start().await;
    receiver.answer(|headers, _| {
        Reply::status(
            match headers
                .get("hookbridge-event-type")
                .map(|v| v.to_str().unwrap())
            {
                Some("bad-request") => 400,
                Some("server-error") => 500,
                _ => 200,
            },
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        "  - name: dl\n    topics: [events]\n    url: {}\n    ordering: partition\n    retry: {{ initial_backoff: 10ms, max_backoff: 20ms, max_attempts: 3 }}\n",
        receiver.url
    );
    let mut server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let client = http_client();
    // One key, so all three share a partition (and a lane: the good one waits its turn).
    let bad = post(
        &client,
        &server,
        "bad-request",
        serde_json::json!({"key": "same"}),
    )
    .await;
    let failing = post(
        &client,
        &server,
        "server-error",
        serde_json::json!({"key": "same"}),
    )
    .await;
    let good = post(&client, &server, "fine", serde_json::json!({"key": "same"})).await;
    receiver
        .wait_for(
            "the good event after both failures",
            Duration::from_secs(20),
            |r| r.iter().any(|r| r.ok()),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await; // a commit interval
    assert!(server.terminate().success());

    let attempts = |id: &str| {
        receiver
            .received()
            .iter()
            .filter(|r| r.header("webhook-id") == id)
            .count()
    };
    assert_eq!(attempts(&bad), 1, "a 400 is permanent");
    assert_eq!(attempts(&failing), 3, "a 500 is retried up to max_attempts");
    assert_eq!(attempts(&good), 1);

    let dead = read_topic(dir.path(), "hookbridge.dlq.dl").await;
    assert_eq!(dead.len(), 2);
    for (record, (id, status, tries)) in dead
        .iter()
        .zip([(&bad, "400", "1"), (&failing, "500", "3")])
    {
        let envelope = hookbridge::envelope::Envelope::from_record(record)
            .expect("the envelope itself")
            .unwrap();
        assert_eq!(&envelope.id, id);
        let header = |name: &str| String::from_utf8(record.header(name).unwrap().to_vec()).unwrap();
        assert_eq!(header("hb-dlq-last-status"), status);
        assert_eq!(header("hb-dlq-attempts"), tries);
        assert!(header("hb-dlq-last-error").contains(status));
        assert_eq!(header("hb-dlq-subscription"), "dl");
        assert_eq!(header("hb-dlq-topic"), "events");
    }
    let partition = hookbridge::broker::partitioner::partition_for_key(b"same", 4);
    let events = read_topic(dir.path(), "events").await;
    let last = events
        .iter()
        .filter(|r| r.partition == partition)
        .map(|r| r.offset)
        .max()
        .unwrap();
    let broker = open_log(dir.path());
    assert_eq!(
        broker
            .committed("hookbridge.dl", "events", partition)
            .unwrap(),
        Some(last + 1),
        "committed past all three"
    );
}

/// The delivery client's edges: an answer slower than `timeout` is a failed attempt and is
/// retried; a redirect is not followed (it is an answer like any other 3xx: the endpoint
/// failing, so it is retried, then dead-lettered, and the redirect target never sees it);
/// credentials in the
/// URL travel as basic authorization, not in the request line.
#[tokio::test]
async fn slow_answers_time_out_redirects_are_not_followed_and_url_credentials_are_sent() {
    let receiver = Receiver::start().await;
    let slow_seen = Arc::new(AtomicUsize::new(0));
    let seen = slow_seen.clone();
    receiver.answer(move |headers, _| {
        match headers
            .get("hookbridge-event-type")
            .map(|v| v.to_str().unwrap())
        {
            // The first attempt answers after the 1 s timeout, the second at once.
            Some("slow") if seen.fetch_add(1, Ordering::SeqCst) == 0 => Reply {
                status: 200,
                delay: Duration::from_secs(3),
                retry_after: None,
            },
            Some("moved") => Reply::status(302),
            _ => Reply::status(200),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let url = receiver
        .url
        .replacen("http://", "http://hook%40user:p%3Ass@", 1);
    let subs = format!(
        "  - name: edges\n    topics: [events]\n    url: {url}\n    timeout: 1s\n    retry: {{ initial_backoff: 10ms, max_backoff: 20ms, max_attempts: 3 }}\n"
    );
    let mut server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let client = http_client();
    let slow = post(&client, &server, "slow", serde_json::json!({"key": "a"})).await;
    let moved = post(&client, &server, "moved", serde_json::json!({"key": "b"})).await;
    receiver
        .wait_for(
            "the slow event's second attempt and the moved one's third",
            Duration::from_secs(20),
            |r| {
                r.iter().any(|r| {
                    r.header("webhook-id") == slow && r.header("hookbridge-attempt") == "2"
                }) && r.iter().any(|r| {
                    r.header("webhook-id") == moved && r.header("hookbridge-attempt") == "3"
                })
            },
        )
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await; // a commit interval
    assert!(server.terminate().success());

    let received = receiver.received();
    let of = |id: &str| -> Vec<&Received> {
        received
            .iter()
            .filter(|r| r.header("webhook-id") == id)
            .collect()
    };
    // hookbridge gave up on the first attempt at its timeout and went away mid-flight: the
    // receiver saw it abandoned, not answered; the second was answered.
    assert_eq!(
        slow_seen.load(Ordering::SeqCst),
        2,
        "the slow answer counts as a failed attempt"
    );
    let mut attempts: Vec<(&str, bool)> = of(&slow)
        .iter()
        .map(|r| (r.header("hookbridge-attempt"), r.abandoned))
        .collect();
    attempts.sort();
    assert_eq!(attempts, [("1", true), ("2", false)]);
    assert_eq!(of(&moved).len(), 3, "a 302 is not followed, and retried");
    let expected = format!("Basic {}", STANDARD.encode("hook@user:p:ss"));
    for r in &received {
        assert_eq!(r.header("authorization"), expected);
    }

    let dead = read_topic(dir.path(), "hookbridge.dlq.edges").await;
    assert_eq!(dead.len(), 1);
    let header = |name: &str| String::from_utf8(dead[0].header(name).unwrap().to_vec()).unwrap();
    assert_eq!(header("hb-dlq-last-status"), "302");
    assert_eq!(header("hb-dlq-attempts"), "3");
}
