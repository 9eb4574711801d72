//! Every bad request, one table of cases (a bad or missing signature, a stale timestamp, a
//! wrong method or route, a body too large, an extractor that finds nothing...), is
//! rejected with its exact status and problem type, and publishes nothing.

use super::{SPEC_SECRET, config};
use crate::support::*;
use hookbridge::envelope::Envelope;

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
