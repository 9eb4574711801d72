//! CEL over the event (`filter.expression`, `transform.expression`): a filter on the body
//! delivers exactly the matching events, in key order, and the others never hold up their
//! key; a transform's value arrives as the JSON body, signed as sent; an event a transform
//! fails on is dead-lettered with the reason; a mistake in either is refused at start,
//! naming the key and where.

use std::time::Duration;

use crate::support::delivery::config;
use crate::support::receiver::{Receiver, Reply, assert_first_deliveries_in_order, seq_of};
use crate::support::scrape::{scrape, value};
use crate::support::*;

/// Posts `{key, seq, amount?}` events of `event_type`.
async fn post_event(server: &Hookbridge, event_type: &str, body: serde_json::Value) {
    let response = http_client()
        .post(server.hook_url("events"))
        .header("x-type", event_type)
        .header("x-tenant", "acme")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

/// Three keys, each a run of invoices above and below 100 and other types. An event the
/// filter lets through that was not meant to would get a 500 (and, retried, hold its key);
/// the filter is not allowed to let one through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_on_the_body_delivers_exactly_the_matching_events_in_key_order() {
    let receiver = Receiver::start().await;
    receiver.answer(|_, body| {
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        Reply::status(if json["amount"].as_i64().unwrap_or(0) > 100 {
            200
        } else {
            500
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        "  - name: big-invoices\n    topics: [events]\n    url: {}\n    filter: {{ expression: 'type.startsWith(\"invoice.\") && body.amount > 100 && headers[\"x-tenant\"] == \"acme\"' }}\n",
        receiver.url
    );
    let server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let mut wanted = Vec::new();
    let (mut skipped, mut failed) = (0, 0);
    for seq in 0..90u64 {
        let key = format!("k{}", seq % 3);
        let amount = (seq * 37) % 200;
        let (event_type, body) = match seq % 5 {
            // No amount at all: the expression fails on it (counted, not delivered).
            4 => {
                failed += 1;
                ("invoice.paid", serde_json::json!({"key": key, "seq": seq}))
            }
            3 => {
                skipped += 1;
                (
                    "customer.created",
                    serde_json::json!({"key": key, "seq": seq, "amount": 500}),
                )
            }
            _ => {
                if amount > 100 {
                    wanted.push(seq);
                } else {
                    skipped += 1;
                }
                (
                    "invoice.paid",
                    serde_json::json!({"key": key, "seq": seq, "amount": amount}),
                )
            }
        };
        post_event(&server, event_type, body).await;
    }
    receiver
        .wait_for("every matching event", Duration::from_secs(30), |r| {
            r.len() >= wanted.len()
        })
        .await;
    // Nothing else comes after them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let received = receiver.received();
    let mut seqs: Vec<u64> = received.iter().map(|r| seq_of(r).1).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, wanted, "exactly the matching events, once each");
    assert!(received.iter().all(|r| r.ok()), "none refused");
    assert_first_deliveries_in_order(&received);
    let (_, metrics) = scrape(&server.admin).await;
    let filtered = |outcome| {
        value(
            &metrics,
            "hookbridge_filtered_total",
            &[("subscription", "big-invoices"), ("outcome", outcome)],
        )
    };
    assert_eq!(filtered("skipped"), skipped as f64);
    assert_eq!(filtered("error"), failed as f64);
}

/// A transform's value is the body, as JSON, signed over what is sent; an event it fails on
/// (no `amount` to multiply) is dead-lettered saying so, and the key's next event follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transform_is_the_body_sent_and_signed_and_its_failure_a_dead_letter() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        "  - name: reshaped\n    topics: [events]\n    url: {}\n    signing: {{ secret: {SECRET} }}\n    transform: {{ expression: '{{\"key\": key, \"seq\": body.seq, \"cents\": body.amount * 100, \"kind\": type}}' }}\n",
        receiver.url
    );
    let server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    post_event(
        &server,
        "invoice.paid",
        serde_json::json!({"key": "k", "seq": 0, "amount": 12}),
    )
    .await;
    post_event(
        &server,
        "invoice.paid",
        serde_json::json!({"key": "k", "seq": 1}),
    )
    .await;
    post_event(
        &server,
        "invoice.paid",
        serde_json::json!({"key": "k", "seq": 2, "amount": 3}),
    )
    .await;
    receiver
        .wait_for("the two that transform", Duration::from_secs(20), |r| {
            r.len() >= 2
        })
        .await;
    let received = receiver.received();
    assert_eq!(
        received[0].json(),
        serde_json::json!({"key": "k", "seq": 0, "cents": 1200, "kind": "invoice.paid"})
    );
    assert_eq!(received[1].json()["cents"], 300);
    for r in &received {
        assert_eq!(r.header("content-type"), "application/json");
        assert!(
            super::payload::signature_ok(SECRET, r),
            "signed over the transformed body"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let letters = loop {
        let page = admin_get(&server.admin, "/v1/dead-letters/reshaped", "").await;
        if page["dead_letters"]
            .as_array()
            .is_some_and(|l| !l.is_empty())
        {
            break page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dead-lettered: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let letter = &letters["dead_letters"][0];
    let error = letter["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("transform.expression failed on this event"),
        "{letter}"
    );
}

#[test]
fn a_mistaken_expression_is_refused_at_start_naming_the_key_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let subs = "  - name: s\n    topics: [events]\n    url: http://127.0.0.1:9/\n    filter: { expression: 'type == ' }\n";
    let said = refused_at_start(&config(dir.path(), subs));
    assert_names(
        &said,
        "subscriptions[0].filter.expression",
        "line 1, column",
    );
    let subs = "  - name: s\n    topics: [events]\n    url: http://127.0.0.1:9/\n    transform: { expression: 'bdy.amount' }\n";
    let said = refused_at_start(&config(dir.path(), subs));
    assert_names(&said, "subscriptions[0].transform.expression", "`bdy`");
    let subs = "  - name: s\n    topics: [events]\n    url: http://127.0.0.1:9/\n    payload: envelope_json\n    transform: { expression: 'body' }\n";
    let said = refused_at_start(&config(dir.path(), subs));
    assert_names(&said, "subscriptions[0].transform", "envelope_json");
}

/// A record that says it holds an envelope but does not decode is dead-lettered as
/// undeliverable, whatever the filter: a filter cannot read it, so it does not get to drop
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_does_not_decode_is_dead_lettered_not_filtered_out() {
    use hookbridge::broker::{Publisher, Record, RecordHeader};
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open_log(dir.path());
        let record = Record {
            topic: "events".into(),
            key: Some(bytes::Bytes::from_static(b"k")),
            headers: vec![RecordHeader {
                name: hookbridge::envelope::HEADER_CONTENT_TYPE.into(),
                value: hookbridge::envelope::RECORD_CONTENT_TYPE
                    .as_bytes()
                    .to_vec()
                    .into(),
            }],
            value: bytes::Bytes::from_static(b"\xff\xff not an envelope"),
        };
        log.publish(record).await.unwrap();
        log.close().await;
    }
    let subs = format!(
        "  - name: picky\n    topics: [events]\n    url: {}\n    filter: {{ types: [\"invoice.*\"], expression: 'headers[\"x-tenant\"] == \"acme\"' }}\n",
        receiver.url
    );
    let server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = admin_get(&server.admin, "/v1/dead-letters/picky", "").await;
        if page["dead_letters"]
            .as_array()
            .is_some_and(|l| l.len() == 1)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dead-lettered: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(receiver.count(), 0);
}
