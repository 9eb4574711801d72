//! A key or event type with a line break (or another control character) in it is refused
//! with 422 problem+json on every backend alike, since NATS headers cannot carry it;
//! nothing is published and the ingress goes on serving.

use std::time::Duration;

use crate::support::backend::Backend;
use crate::support::receiver::{Receiver, seq_of};
use crate::support::*;

/// A key or event type with a line break in it is refused with 422 problem+json on every
/// backend alike (NATS headers cannot carry it), nothing is published, and the ingress
/// goes on serving.
async fn line_breaks_in_extracted_values_are_refused(backend: Backend) {
    let topic = unique("crlf");
    let receiver = Receiver::start().await;
    let subs = format!(
        "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n",
        receiver.url
    );
    let dir = tempfile::tempdir().unwrap();
    let config = events_config(&backend.broker(1), &topic, &subs).replace(
        "event_type: { header: X-Type, default: test }",
        "event_type: { json: /type }",
    );
    let server = Hookbridge::start(dir.path(), &config);
    let client = http_client();
    for (what, body) in [
        (
            "key with CR LF",
            serde_json::json!({"key": "a\r\nInjected: 1", "type": "t", "seq": 1}),
        ),
        (
            "key with LF",
            serde_json::json!({"key": "a\nb", "type": "t", "seq": 2}),
        ),
        (
            "type with CR",
            serde_json::json!({"key": "k", "type": "t\rx", "seq": 3}),
        ),
        (
            "type with NUL",
            serde_json::json!({"key": "k", "type": "t\u{0}", "seq": 4}),
        ),
    ] {
        let response = client
            .post(server.hook_url("events"))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: the connection was dropped: {e}"));
        assert_eq!(response.status(), 422, "{what}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            problem["type"], "urn:hookbridge:problem:extractor-control-character",
            "{what}: {problem}"
        );
    }
    let fine = serde_json::json!({"key": "k", "type": "t", "seq": 5});
    let response = client
        .post(server.hook_url("events"))
        .json(&fine)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    receiver
        .wait_for("the one good event", Duration::from_secs(30), |r| {
            !r.is_empty()
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seqs: Vec<u64> = receiver.received().iter().map(|r| seq_of(r).1).collect();
    assert_eq!(seqs, vec![5], "nothing refused was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_line_breaks_in_extracted_values_are_refused() {
    line_breaks_in_extracted_values_are_refused(Backend::embedded()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_line_breaks_in_extracted_values_are_refused() {
    line_breaks_in_extracted_values_are_refused(Backend::nats()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_line_breaks_in_extracted_values_are_refused() {
    line_breaks_in_extracted_values_are_refused(Backend::kafka()).await;
}
