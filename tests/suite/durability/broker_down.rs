//! Kafka down (librdkafka's mock cluster): while the broker cannot acknowledge, the ingress
//! answers 503 with Retry-After, never 202; once it is back, webhooks are accepted and
//! delivered again.

use std::time::{Duration, Instant};

use crate::support::kafka::config;
use crate::support::receiver::{Receiver, seq_of};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_means_503_and_delivery_resumes_when_it_is_back() {
    use rdkafka::mocking::MockCluster;
    let mock = MockCluster::new(1).unwrap();
    let topic = "faults";
    mock.create_topic(topic, 4, 1).unwrap();
    mock.create_topic("hookbridge.dlq.faulty", 1, 1).unwrap();
    mock.create_topic("hookbridge.park.faulty", 4, 1).unwrap();
    mock.create_topic("hookbridge.resend.faulty", 4, 1).unwrap();
    mock.create_topic("hookbridge.attempts.faulty", 4, 1)
        .unwrap();
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        "  - name: faulty\n    topics: [{topic}]\n    url: {}\n",
        receiver.url
    );
    let yaml = config(&mock.bootstrap_servers(), topic, &subs)
        .replace("publish_timeout: 2s", "publish_timeout: 1s");
    let _server = Hookbridge::start(dir.path(), &yaml);
    let client = http_client();
    let post = |seq: u64| {
        let (client, url) = (client.clone(), _server.hook_url("events"));
        async move {
            let body = serde_json::json!({"key": "k", "seq": seq});
            let response = client.post(url).json(&body).send().await.unwrap();
            (
                response.status().as_u16(),
                response.headers().get("retry-after").is_some(),
            )
        }
    };

    assert_eq!(post(0).await.0, 202);
    receiver
        .wait_for("the first delivery", Duration::from_secs(30), |r| {
            !r.is_empty()
        })
        .await;

    mock.broker_down(1).unwrap();
    let mut refused = 0;
    for seq in 1..=5 {
        let (status, retry_after) = post(seq).await;
        assert_ne!(status, 202, "no 202 while the broker cannot acknowledge");
        assert_eq!(status, 503);
        assert!(retry_after);
        refused += 1;
    }
    mock.broker_up(1).unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let accepted = loop {
        let (status, _) = post(100).await;
        if status == 202 {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(accepted, "ingress accepts again once the broker is back");
    receiver
        .wait_for("delivery after the outage", Duration::from_secs(60), |r| {
            r.iter().any(|r| seq_of(r).1 == 100)
        })
        .await;
    eprintln!("broker down: {refused} requests refused with 503; delivery resumed after broker_up");
}
