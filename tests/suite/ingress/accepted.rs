//! The ingress against the real binary: signed webhooks from each scheme become envelopes
//! on the embedded log, byte for byte, and every bad request is rejected with its exact
//! status and a problem+json body, publishing nothing.

mod common;

use std::collections::HashMap;

use common::*;
use hookbridge::broker::partitioner::partition_for_key;
use hookbridge::envelope::Envelope;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn config(dir: &std::path::Path) -> String {
    base_config(dir)
        + r#"
routes:
  - name: github
    topic: webhooks.github
    verify: { kind: github, secret: gh-secret }
    event_type: { header: X-GitHub-Event }
    key: { json: /repository/full_name }
    idempotency: { header: X-GitHub-Delivery, required: true }
  - name: stripe
    topic: webhooks.stripe
    verify: { kind: stripe, secret: whsec_stripe_test, tolerance: 5m }
    event_type: { json: /type }
    key: { json: /data/object/customer }
    idempotency: { json: /id }
  - name: slack
    topic: webhooks.slack
    verify: { kind: slack, secret: slack-signing-secret }
    event_type: { json: /event/type }
    key: { json: /team_id }
    idempotency: { json: /event_id }
  - name: standard
    topic: webhooks.standard
    verify: { kind: standard_webhooks, secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw }
    event_type: { json: /type }
    idempotency: { header: webhook-id }
  - name: spec-vector
    topic: webhooks.standard
    # The spec's vector was signed in 2021: accept it by widening the tolerance.
    verify: { kind: standard_webhooks, secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, tolerance: 100000d }
    idempotency: { header: webhook-id }
  - name: shopify
    topic: webhooks.shopify
    verify: { kind: hmac_sha256, secret: shpss_secret, header: X-Shopify-Hmac-Sha256, encoding: base64 }
    event_type: { header: X-Shopify-Topic }
    key: { header: X-Shopify-Shop-Domain }
  - name: internal
    topic: webhooks.internal
    verify: { kind: token, header: X-Api-Key, value: tok-123 }
    event_type: { value: internal.event }
    drop_headers: [X-Internal-Trace]
  - name: demo
    topic: webhooks.demo
    verify: { kind: none }
    event_type: { header: X-Event-Type, default: demo }
"#
}

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

/// One request the ingress must reject.
struct BadCase {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    problem: &'static str,
}

fn bad(
    name: &'static str,
    route: &str,
    headers: Vec<(&'static str, String)>,
    body: &[u8],
    status: u16,
    problem: &'static str,
) -> BadCase {
    BadCase {
        name,
        method: "POST",
        path: format!("/hooks/{route}"),
        headers,
        body: body.to_vec(),
        status,
        problem,
    }
}

fn json() -> (&'static str, String) {
    ("content-type", "application/json".to_string())
}

fn bad_cases() -> Vec<BadCase> {
    let now = unix_now();
    let gh_body = br#"{"repository":{"full_name":"octo/hello"}}"#;
    let gh = |extra: Vec<(&'static str, String)>| {
        let mut headers = vec![
            json(),
            ("x-github-event", "push".to_string()),
            ("x-github-delivery", "d-1".to_string()),
        ];
        headers.extend(extra);
        headers
    };
    let gh_sig = |body: &[u8]| ("x-hub-signature-256", github_signature("gh-secret", body));
    let stripe_body =
        br#"{"id":"evt_1","type":"charge.succeeded","data":{"object":{"customer":"cus_1"}}}"#;
    let slack_body = br#"{"team_id":"T1","event_id":"Ev1","event":{"type":"message"}}"#;
    let std_body = br#"{"type":"a.b"}"#;
    let std_headers = |id: &str, ts: i64, sig: String| {
        vec![
            json(),
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sig),
        ]
    };
    let big = vec![b'x'; 64 * 1024 + 1];

    vec![
        bad("unknown route", "nope", vec![], b"{}", 404, "unknown-route"),
        BadCase {
            name: "path outside /hooks",
            method: "POST",
            path: "/webhooks/demo".into(),
            headers: vec![],
            body: b"{}".to_vec(),
            status: 404,
            problem: "unknown-route",
        },
        BadCase {
            name: "GET on a route",
            method: "GET",
            path: "/hooks/demo".into(),
            headers: vec![],
            body: vec![],
            status: 405,
            problem: "method-not-allowed",
        },
        BadCase {
            name: "PUT on a route",
            method: "PUT",
            path: "/hooks/demo".into(),
            headers: vec![],
            body: b"{}".to_vec(),
            status: 405,
            problem: "method-not-allowed",
        },
        BadCase {
            name: "GET on an unknown route",
            method: "GET",
            path: "/hooks/nope".into(),
            headers: vec![],
            body: vec![],
            status: 404,
            problem: "unknown-route",
        },
        bad(
            "github: no signature",
            "github",
            gh(vec![]),
            gh_body,
            401,
            "verification-failed",
        ),
        bad(
            "github: wrong secret",
            "github",
            gh(vec![(
                "x-hub-signature-256",
                github_signature("other", gh_body),
            )]),
            gh_body,
            401,
            "verification-failed",
        ),
        bad(
            "github: tampered body",
            "github",
            gh(vec![gh_sig(gh_body)]),
            br#"{"repository":{"full_name":"evil/x"}}"#,
            401,
            "verification-failed",
        ),
        bad(
            "github: signature without sha256=",
            "github",
            gh(vec![("x-hub-signature-256", hex::encode([1u8; 32]))]),
            gh_body,
            401,
            "verification-failed",
        ),
        bad(
            "github: sha1 header only",
            "github",
            gh(vec![("x-hub-signature", "sha1=0123".into())]),
            gh_body,
            401,
            "verification-failed",
        ),
        bad(
            "stripe: no header",
            "stripe",
            vec![json()],
            stripe_body,
            401,
            "verification-failed",
        ),
        bad(
            "stripe: stale timestamp",
            "stripe",
            vec![
                json(),
                (
                    "stripe-signature",
                    stripe_signature("whsec_stripe_test", now - 600, stripe_body),
                ),
            ],
            stripe_body,
            401,
            "verification-failed",
        ),
        bad(
            "stripe: timestamp from the future",
            "stripe",
            vec![
                json(),
                (
                    "stripe-signature",
                    stripe_signature("whsec_stripe_test", now + 600, stripe_body),
                ),
            ],
            stripe_body,
            401,
            "verification-failed",
        ),
        bad(
            "stripe: no v1 signature",
            "stripe",
            vec![json(), ("stripe-signature", format!("t={now}"))],
            stripe_body,
            401,
            "verification-failed",
        ),
        bad(
            "slack: stale timestamp",
            "slack",
            vec![
                json(),
                ("x-slack-request-timestamp", (now - 3600).to_string()),
                (
                    "x-slack-signature",
                    slack_signature("slack-signing-secret", now - 3600, slack_body),
                ),
            ],
            slack_body,
            401,
            "verification-failed",
        ),
        bad(
            "slack: wrong secret",
            "slack",
            vec![
                json(),
                ("x-slack-request-timestamp", now.to_string()),
                (
                    "x-slack-signature",
                    slack_signature("nope", now, slack_body),
                ),
            ],
            slack_body,
            401,
            "verification-failed",
        ),
        bad(
            "slack: no timestamp",
            "slack",
            vec![
                json(),
                (
                    "x-slack-signature",
                    slack_signature("slack-signing-secret", now, slack_body),
                ),
            ],
            slack_body,
            401,
            "verification-failed",
        ),
        bad(
            "standard webhooks: no webhook-id",
            "standard",
            vec![
                json(),
                ("webhook-timestamp", now.to_string()),
                (
                    "webhook-signature",
                    standard_webhooks_signature(SPEC_SECRET, "m1", now, std_body),
                ),
            ],
            std_body,
            401,
            "verification-failed",
        ),
        bad(
            "standard webhooks: signed for another id",
            "standard",
            std_headers(
                "m2",
                now,
                standard_webhooks_signature(SPEC_SECRET, "m1", now, std_body),
            ),
            std_body,
            401,
            "verification-failed",
        ),
        bad(
            "standard webhooks: stale",
            "standard",
            std_headers(
                "m1",
                now - 900,
                standard_webhooks_signature(SPEC_SECRET, "m1", now - 900, std_body),
            ),
            std_body,
            401,
            "verification-failed",
        ),
        bad(
            "standard webhooks: spec vector outside tolerance",
            "standard",
            std_headers(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".into(),
            ),
            br#"{"test": 2432232314}"#,
            401,
            "verification-failed",
        ),
        bad(
            "token: wrong",
            "internal",
            vec![("x-api-key", "tok-124".into())],
            b"x",
            401,
            "verification-failed",
        ),
        bad(
            "token: missing",
            "internal",
            vec![],
            b"x",
            401,
            "verification-failed",
        ),
        bad(
            "hmac: not base64",
            "shopify",
            vec![
                ("x-shopify-hmac-sha256", "***".into()),
                ("x-shopify-topic", "t".into()),
                ("x-shopify-shop-domain", "s".into()),
            ],
            b"x",
            401,
            "verification-failed",
        ),
        bad(
            "body over the limit (Content-Length)",
            "demo",
            vec![],
            &big,
            413,
            "body-too-large",
        ),
        bad(
            "key from JSON, body is text/plain",
            "github",
            vec![
                ("content-type", "text/plain".into()),
                ("x-github-event", "push".into()),
                ("x-github-delivery", "d".into()),
                gh_sig(b"plain"),
            ],
            b"plain",
            415,
            "json-required",
        ),
        bad(
            "key from JSON, body is broken JSON",
            "github",
            gh(vec![gh_sig(b"{\"repository\":")]),
            b"{\"repository\":",
            422,
            "invalid-json",
        ),
        bad(
            "key pointer absent",
            "github",
            gh(vec![gh_sig(b"{\"zen\":\"hi\"}")]),
            b"{\"zen\":\"hi\"}",
            422,
            "extractor-missing",
        ),
        bad(
            "key pointer at an object",
            "github",
            gh(vec![gh_sig(br#"{"repository":{"full_name":{"a":1}}}"#)]),
            br#"{"repository":{"full_name":{"a":1}}}"#,
            422,
            "extractor-not-scalar",
        ),
        bad(
            "required idempotency header missing",
            "github",
            vec![json(), ("x-github-event", "push".into()), gh_sig(gh_body)],
            gh_body,
            400,
            "missing-idempotency-key",
        ),
        bad(
            "required event type header missing",
            "github",
            vec![json(), ("x-github-delivery", "d".into()), gh_sig(gh_body)],
            gh_body,
            400,
            "missing-header",
        ),
    ]
}

/// A chunked request whose body passes the limit only after several chunks.
async fn send_chunked_over_limit(server: &Hookbridge) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.ingress.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "POST /hooks/demo HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'y'; 16 * 1024];
    for _ in 0..8 {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if stream.write_all(&framed).await.is_err() {
            break; // The server may close as soon as the limit is passed.
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test]
async fn bad_requests_get_precise_problems_and_publish_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Hookbridge::start(dir.path(), &config(dir.path()));
    let client = http_client();

    // One good request, so "unchanged" is checked against a log that has something in it.
    let good = client
        .post(server.hook_url("demo"))
        .body("good")
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), 202);
    let good_id = good.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let cases = bad_cases();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for case in &cases {
        let mut request = client.request(
            case.method.parse().unwrap(),
            format!("{}{}", server.ingress, case.path),
        );
        for (name, value) in &case.headers {
            request = request.header(*name, value);
        }
        let response = request.body(case.body.clone()).send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let retry_or_allow = response
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_string());
        let closes = response
            .headers()
            .get("connection")
            .is_some_and(|v| v == "close");
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let expected_type = format!("urn:hookbridge:problem:{}", case.problem);
        if status != case.status
            || content_type.as_deref() != Some("application/problem+json")
            || body["type"] != expected_type.as_str()
            || body["status"] != case.status
            || body["detail"].as_str().is_none_or(str::is_empty)
            || body["title"].as_str().is_none_or(str::is_empty)
        {
            failures.push(format!(
                "{}: got {status} {content_type:?} {body}",
                case.name
            ));
        }
        if case.status == 405 && retry_or_allow.as_deref() != Some("POST") {
            failures.push(format!("{}: 405 without `Allow: POST`", case.name));
        }
        // Rejected before the body was read: the connection must not be reused.
        if [404, 405, 413].contains(&case.status) && !closes {
            failures.push(format!(
                "{}: {} without `Connection: close`",
                case.name, case.status
            ));
        }
    }

    let (status, head, body) = send_chunked_over_limit(&server).await;
    if status != 413
        || !head.contains("content-type: application/problem+json")
        || !body.contains("body-too-large")
    {
        failures.push(format!(
            "chunked body over the limit: got {status}\n{head}\n{body}"
        ));
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len() + 1,
        failures.join("\n")
    );

    assert!(server.terminate().success());
    let demo = read_topic(dir.path(), "webhooks.demo").await;
    assert_eq!(demo.len(), 1, "only the good request is in the log");
    assert_eq!(
        Envelope::from_record(&demo[0]).unwrap().unwrap().id,
        good_id
    );
    for topic in [
        "webhooks.github",
        "webhooks.stripe",
        "webhooks.slack",
        "webhooks.standard",
        "webhooks.shopify",
        "webhooks.internal",
    ] {
        assert!(
            read_topic(dir.path(), topic).await.is_empty(),
            "{topic} is untouched"
        );
    }
}
