//! What arrives at a subscriber: each payload mode's shape (raw, envelope JSON,
//! CloudEvents), Standard Webhooks signatures while a secret rotates, forwarded headers, a
//! type filter, and a record written by another producer delivered as it is, with an id
//! that derives from where it sits.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::delivery::{config, post};
use crate::support::receiver::{Received, Receiver};
use crate::support::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const SECRET_NEW: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

const SECRET_OLD: &str = "whsec_dGVzdC1vbGQtc2VjcmV0LWtleS0xMjM0NQ==";

/// Verifies a Standard Webhooks signature independently of hookbridge.
pub(super) fn signature_ok(secret: &str, received: &Received) -> bool {
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(
        format!(
            "{}.{}.",
            received.header("webhook-id"),
            received.header("webhook-timestamp")
        )
        .as_bytes(),
    );
    mac.update(&received.body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    received
        .header("webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

#[tokio::test]
async fn deliveries_are_signed_and_shaped_per_payload_mode() {
    let (raw, json, ce) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        r#"  - name: raw
    topics: [events]
    url: {}
    signing: {{ secrets: [{SECRET_NEW}, {SECRET_OLD}] }}
    forward_headers: [X-Custom]
  - name: json
    topics: [events]
    url: {}
    payload: envelope_json
    filter: {{ types: ["order.*"] }}
  - name: ce
    topics: [events]
    url: {}
    payload: cloudevents
"#,
        raw.url, json.url, ce.url
    );
    let server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    let client = http_client();
    let id1 = post(
        &client,
        &server,
        "order.created",
        serde_json::json!({"key": "k1", "n": 1}),
    )
    .await;
    let id2 = post(
        &client,
        &server,
        "user.deleted",
        serde_json::json!({"key": "k2", "n": 2}),
    )
    .await;

    raw.wait_for("two raw deliveries", Duration::from_secs(20), |r| {
        r.len() >= 2
    })
    .await;
    ce.wait_for("two cloudevents deliveries", Duration::from_secs(20), |r| {
        r.len() >= 2
    })
    .await;
    json.wait_for("one filtered delivery", Duration::from_secs(20), |r| {
        !r.is_empty()
    })
    .await;

    let now = unix_now();
    for r in raw.received() {
        assert!(signature_ok(SECRET_NEW, &r), "signed with the new secret");
        assert!(
            signature_ok(SECRET_OLD, &r),
            "and with the old one while rotating"
        );
        assert!(!signature_ok("whsec_d3Jvbmc=", &r));
        assert!((r.header("webhook-timestamp").parse::<i64>().unwrap() - now).abs() < 60);
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.header("x-custom"), "kept", "forward_headers");
        assert_eq!(r.header("hookbridge-source"), "events");
        assert_eq!(r.header("hookbridge-attempt"), "1");
    }
    let by_id: HashMap<String, Received> = raw
        .received()
        .into_iter()
        .map(|r| (r.header("webhook-id").to_string(), r))
        .collect();
    assert_eq!(
        by_id[&id1].json(),
        serde_json::json!({"key": "k1", "n": 1}),
        "raw body untouched"
    );
    assert_eq!(by_id[&id1].header("hookbridge-event-type"), "order.created");
    assert_eq!(by_id[&id2].header("hookbridge-event-type"), "user.deleted");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let json_got = json.received();
    assert_eq!(
        json_got.len(),
        1,
        "the type filter let only order.* through"
    );
    let envelope = json_got[0].json();
    assert_eq!(envelope["id"], id1);
    assert_eq!(envelope["source"], "events");
    assert_eq!(envelope["type"], "order.created");
    assert_eq!(envelope["key"], "k1");
    assert_eq!(envelope["method"], "POST");
    assert_eq!(envelope["path"], "/hooks/events");
    assert_eq!(
        STANDARD.decode(envelope["body"].as_str().unwrap()).unwrap(),
        br#"{"key":"k1","n":1}"#
    );
    assert!(envelope["receivedAt"].as_str().unwrap().ends_with('Z'));
    assert!(
        envelope["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "x-custom" && h["value"] == "kept")
    );
    assert_eq!(
        json_got[0].header("webhook-signature"),
        "",
        "unsigned without signing config"
    );

    let ce_got: HashMap<String, Received> = ce
        .received()
        .into_iter()
        .map(|r| (r.header("ce-id").to_string(), r))
        .collect();
    let c = &ce_got[&id1];
    assert_eq!(c.header("ce-specversion"), "1.0");
    assert_eq!(c.header("ce-type"), "order.created");
    assert_eq!(c.header("ce-source"), "/hookbridge/events");
    assert_eq!(c.header("ce-subject"), "k1");
    assert!(c.header("ce-time").starts_with("20"));
    assert_eq!(c.header("webhook-id"), id1);
    assert_eq!(c.json(), serde_json::json!({"key": "k1", "n": 1}));
}

#[tokio::test]
async fn foreign_records_are_delivered_as_they_are() {
    use hookbridge::broker::{Publisher, Record, RecordHeader};
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open_log(dir.path());
        let record = Record {
            topic: "orders".into(),
            key: Some(bytes::Bytes::from_static(b"o-1")),
            headers: vec![
                RecordHeader {
                    name: "content-type".into(),
                    value: bytes::Bytes::from_static(b"application/xml"),
                },
                RecordHeader {
                    name: "x-origin".into(),
                    value: bytes::Bytes::from_static(b"erp"),
                },
            ],
            value: bytes::Bytes::from_static(b"<order id='1'/>"),
        };
        log.publish(record).await.unwrap();
        log.close().await;
    }
    let subs = format!(
        "  - name: erp\n    topics: [orders]\n    url: {}\n    forward_headers: [X-Origin]\n  - name: erp-json\n    topics: [orders]\n    url: {}\n    payload: envelope_json\n",
        receiver.url, receiver.url
    );
    let mut server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    receiver
        .wait_for("both deliveries", Duration::from_secs(20), |r| r.len() >= 2)
        .await;
    let received = receiver.received();
    let raw = received
        .iter()
        .find(|r| r.header("content-type") == "application/xml")
        .expect("raw delivery");
    assert_eq!(&raw.body[..], b"<order id='1'/>");
    assert_eq!(
        raw.header("x-origin"),
        "erp",
        "record headers forward like request headers"
    );
    assert_eq!(raw.header("hookbridge-source"), "orders");
    let json = received
        .iter()
        .find(|r| r.header("content-type") == "application/json")
        .unwrap()
        .json();
    assert_eq!(
        json["attributes"]["x-origin"], "erp",
        "record headers become attributes"
    );
    assert_eq!(json["key"], "o-1");
    let id = raw.header("webhook-id").to_string();
    assert_eq!(
        json["id"],
        id.as_str(),
        "the id derives from where the record sits"
    );

    // After a restart with the offsets reset, the same record gets the same id.
    server.kill();
    let receiver2 = Receiver::start().await;
    let subs = format!(
        "  - name: erp-again\n    topics: [orders]\n    url: {}\n",
        receiver2.url
    );
    let _server = Hookbridge::start(dir.path(), &config(dir.path(), &subs));
    receiver2
        .wait_for("redelivery", Duration::from_secs(20), |r| !r.is_empty())
        .await;
    assert_eq!(receiver2.received()[0].header("webhook-id"), id);
}
