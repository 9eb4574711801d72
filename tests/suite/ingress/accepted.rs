//! Signed webhooks from each scheme (GitHub, Stripe, Slack, Standard Webhooks, Shopify-style
//! HMAC, a static token, none) are verified and become envelopes on the embedded log, byte
//! for byte, with their type, key and idempotency key; a sender's retry is stored once.

use std::collections::HashMap;

use super::{SPEC_SECRET, config};
use crate::support::*;
use hookbridge::broker::partitioner::partition_for_key;
use hookbridge::envelope::Envelope;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// What was sent, to compare with what was stored.
struct Sent {
    route: &'static str,
    topic: &'static str,
    id: String,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
    query: &'static str,
    event_type: &'static str,
    key: &'static str,
    idempotency_key: String,
}

async fn post(
    client: &reqwest::Client,
    server: &Hookbridge,
    route: &str,
    query: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> reqwest::Response {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let url = if query.is_empty() {
        server.hook_url(route)
    } else {
        format!("{}?{query}", server.hook_url(route))
    };
    client
        .post(url)
        .headers(map)
        .body(body.to_vec())
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn signed_webhooks_become_envelopes_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Hookbridge::start(dir.path(), &config(dir.path()));
    let client = http_client();
    for probe in ["healthz", "readyz"] {
        let response = client
            .get(format!("{}/{probe}", server.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "/{probe}");
    }
    let now = unix_now();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut sent = Vec::new();

    let mut send =
        async |route: &'static str,
               topic: &'static str,
               query: &'static str,
               mut headers: Vec<(&'static str, String)>,
               body: Vec<u8>,
               (event_type, key, idempotency_key): (&'static str, &'static str, String)| {
            headers.push(("traceparent", traceparent.to_string()));
            headers.push(("x-multi", "first".into()));
            headers.push(("x-multi", "second".into()));
            let response = post(&client, &server, route, query, &headers, &body).await;
            let status = response.status();
            let text = response.text().await.unwrap();
            assert_eq!(status, 202, "{route}: {text}");
            let id = serde_json::from_str::<serde_json::Value>(&text).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            let headers = headers
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            sent.push(Sent {
                route,
                topic,
                id,
                body,
                headers,
                query,
                event_type,
                key,
                idempotency_key,
            });
        };

    let body = br#"{"action":"opened","repository":{"full_name":"octo/hello"}}"#.to_vec();
    send(
        "github",
        "webhooks.github",
        "src=gh&x=%20y",
        vec![
            ("content-type", "application/json".into()),
            ("x-github-event", "pull_request".into()),
            (
                "x-github-delivery",
                "72d3162e-cc78-11e3-81ab-4c9367dc0958".into(),
            ),
            ("x-hub-signature-256", github_signature("gh-secret", &body)),
            ("authorization", "Bearer must-not-be-stored".into()),
            ("cookie", "session=must-not-be-stored".into()),
        ],
        body,
        (
            "pull_request",
            "octo/hello",
            "72d3162e-cc78-11e3-81ab-4c9367dc0958".into(),
        ),
    )
    .await;

    let body = br#"{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","type":"invoice.paid","data":{"object":{"customer":"cus_9s6XKzkNRiz8i3"}}}"#.to_vec();
    send(
        "stripe",
        "webhooks.stripe",
        "",
        vec![
            ("content-type", "application/json; charset=utf-8".into()),
            (
                "stripe-signature",
                stripe_signature("whsec_stripe_test", now, &body),
            ),
        ],
        body,
        (
            "invoice.paid",
            "cus_9s6XKzkNRiz8i3",
            "evt_1NG8Du2eZvKYlo2CUI79vXWy".into(),
        ),
    )
    .await;

    let body = br#"{"team_id":"T061EG9R6","event_id":"Ev0PV52K21","event":{"type":"app_mention","text":"hi"}}"#.to_vec();
    send(
        "slack",
        "webhooks.slack",
        "",
        vec![
            ("content-type", "application/json".into()),
            ("x-slack-request-timestamp", now.to_string()),
            (
                "x-slack-signature",
                slack_signature("slack-signing-secret", now, &body),
            ),
        ],
        body,
        ("app_mention", "T061EG9R6", "Ev0PV52K21".into()),
    )
    .await;

    let body = br#"{"type":"invoice.created","data":{"n":1}}"#.to_vec();
    send(
        "standard",
        "webhooks.standard",
        "",
        vec![
            ("content-type", "application/json".into()),
            ("webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W".into()),
            ("webhook-timestamp", now.to_string()),
            (
                "webhook-signature",
                format!(
                    "v1,Zm9v {}",
                    standard_webhooks_signature(
                        SPEC_SECRET,
                        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
                        now,
                        &body
                    )
                ),
            ),
        ],
        body,
        (
            "invoice.created",
            "",
            "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W".into(),
        ),
    )
    .await;

    // The Standard Webhooks specification's own test vector, as published.
    send(
        "spec-vector",
        "webhooks.standard",
        "",
        vec![
            ("content-type", "application/json".into()),
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek".into()),
            ("webhook-timestamp", "1614265330".into()),
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".into(),
            ),
        ],
        br#"{"test": 2432232314}"#.to_vec(),
        ("", "", "msg_p5jXN8AQM9LWM0D4loKWxJek".into()),
    )
    .await;

    // Not JSON, not UTF-8: the body must still arrive untouched.
    let body: Vec<u8> = (0u8..=255).chain([0, 0xff, 0xfe]).collect();
    send(
        "shopify",
        "webhooks.shopify",
        "",
        vec![
            ("content-type", "application/octet-stream".into()),
            ("x-shopify-topic", "orders/create".into()),
            ("x-shopify-shop-domain", "shop.example.com".into()),
            (
                "x-shopify-hmac-sha256",
                base64_body_hmac("shpss_secret", &body),
            ),
        ],
        body,
        ("orders/create", "shop.example.com", String::new()),
    )
    .await;

    send(
        "internal",
        "webhooks.internal",
        "",
        vec![
            ("content-type", "text/plain".into()),
            ("x-api-key", "tok-123".into()),
            ("x-internal-trace", "dropped-by-config".into()),
        ],
        b"plain text payload".to_vec(),
        ("internal.event", "", String::new()),
    )
    .await;

    // A sender's retry of the same delivery gets the same id (G5).
    let body = br#"{"action":"closed","repository":{"full_name":"octo/hello"}}"#.to_vec();
    let retry_headers = [
        ("content-type", "application/json".to_string()),
        ("x-github-event", "pull_request".into()),
        ("x-github-delivery", "delivery-retried".into()),
        ("x-hub-signature-256", github_signature("gh-secret", &body)),
    ];
    let first = post(&client, &server, "github", "", &retry_headers, &body)
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let again = post(&client, &server, "github", "", &retry_headers, &body)
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(first["id"], again["id"], "a retried delivery keeps its id");

    let status = server.terminate();
    assert!(
        status.success(),
        "graceful shutdown exits 0: {status:?}\n{}",
        server.log_text()
    );

    let mut stored: HashMap<String, (hookbridge::broker::ConsumedRecord, Envelope)> =
        HashMap::new();
    let mut records = 0;
    for topic in [
        "webhooks.github",
        "webhooks.stripe",
        "webhooks.slack",
        "webhooks.standard",
        "webhooks.shopify",
        "webhooks.internal",
    ] {
        for record in read_topic(dir.path(), topic).await {
            let envelope = Envelope::from_record(&record)
                .expect("an envelope record")
                .expect("decodes");
            stored.insert(envelope.id.clone(), (record, envelope));
            records += 1;
        }
    }
    // The retried delivery was accepted twice: two records, one id (receivers deduplicate).
    assert_eq!(records, sent.len() + 2, "every accepted webhook is stored");
    assert_eq!(stored.len(), sent.len() + 1);

    for s in &sent {
        let (record, env) = stored
            .get(&s.id)
            .unwrap_or_else(|| panic!("{}: id {} not in the log", s.route, s.id));
        assert_eq!(&*record.topic, s.topic);
        assert_eq!(env.source, s.route);
        assert_eq!(env.r#type, s.event_type, "{}", s.route);
        assert_eq!(env.key, s.key, "{}", s.route);
        assert_eq!(env.idempotency_key, s.idempotency_key, "{}", s.route);
        assert_eq!(env.method, "POST");
        assert_eq!(env.path, format!("/hooks/{}", s.route));
        assert_eq!(env.query, s.query);
        assert_eq!(
            env.body.as_ref(),
            s.body.as_slice(),
            "{}: body byte for byte",
            s.route
        );
        assert_eq!(env.traceparent, traceparent);
        assert!(
            env.remote_addr.starts_with("127.0.0.1:"),
            "{}",
            env.remote_addr
        );
        let received = env.received_at.as_ref().unwrap().seconds;
        assert!(
            (received - now).abs() < 120,
            "received_at {received} is now"
        );
        let content_type = s.headers.iter().find(|(k, _)| k == "content-type").unwrap();
        assert_eq!(env.content_type, content_type.1);

        // Every header kept, multi-valued in order, credentials and hop-by-hop ones gone.
        for (name, value) in &s.headers {
            let dropped = ["authorization", "cookie", "x-api-key", "x-internal-trace"]
                .contains(&name.as_str());
            let values: Vec<&str> = env
                .headers
                .iter()
                .filter(|h| &h.name == name)
                .map(|h| h.value.as_str())
                .collect();
            if dropped {
                assert!(
                    values.is_empty(),
                    "{}: header {name} must not be stored",
                    s.route
                );
            } else {
                assert!(
                    values.contains(&value.as_str()),
                    "{}: header {name}: {values:?}",
                    s.route
                );
            }
        }
        let multi: Vec<&str> = env
            .headers
            .iter()
            .filter(|h| h.name == "x-multi")
            .map(|h| h.value.as_str())
            .collect();
        assert_eq!(multi, ["first", "second"]);
        assert!(
            env.headers
                .iter()
                .all(|h| h.name != "connection" && h.name != "transfer-encoding")
        );

        // The record around the envelope: key, headers, and murmur2 partitioning.
        assert_eq!(record.header("hb-id").unwrap().as_ref(), s.id.as_bytes());
        assert_eq!(
            record.header("content-type").unwrap().as_ref(),
            b"application/x-protobuf; proto=hookbridge.v1.Envelope"
        );
        if s.key.is_empty() {
            assert!(record.key.is_none());
        } else {
            assert_eq!(record.key.as_deref(), Some(s.key.as_bytes()));
            assert_eq!(
                record.partition,
                partition_for_key(s.key.as_bytes(), 4),
                "{}: partition is murmur2 of the key",
                s.route
            );
        }
        if !s.event_type.is_empty() {
            assert_eq!(
                record.header("hb-type").unwrap().as_ref(),
                s.event_type.as_bytes()
            );
        }
    }
}
