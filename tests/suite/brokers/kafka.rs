//! The Kafka backend against Apache Kafka (the node scripts/test starts, its address in
//! HOOKBRIDGE_TEST_KAFKA): webhooks become envelopes on murmur2 partitions, a
//! record another service produced becomes a webhook, and a backlog held back behind a
//! stalled receiver flows again without a gap.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::support::kafka::{bootstrap, config};
use crate::support::receiver::{Receiver, Reply, assert_first_deliveries_in_order, seq_of};
use crate::support::*;
use hookbridge::broker::partitioner::partition_for_key;
use hookbridge::envelope::Envelope;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};

async fn read_all(
    bootstrap: &str,
    topic: &str,
    count: usize,
) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < count {
        assert!(
            Instant::now() < deadline,
            "read {} of {count} records from {topic}",
            out.len()
        );
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        {
            out.push(message.detach());
        }
    }
    out
}

/// Creates a topic the way another service would, before hookbridge is pointed at it.
async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .unwrap();
    let new_topic = rdkafka::admin::NewTopic::new(
        topic,
        partitions,
        rdkafka::admin::TopicReplication::Fixed(1),
    );
    let results = admin
        .create_topics([&new_topic], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();
    for result in results {
        result.unwrap_or_else(|(name, e)| panic!("creating topic {name}: {e}"));
    }
}

/// A plain producer: records made by something other than hookbridge.
fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_become_envelopes_on_murmur2_partitions() {
    let bootstrap = bootstrap();
    let topic = unique("ingest");
    let dir = tempfile::tempdir().unwrap();
    let mut server = Hookbridge::start(dir.path(), &config(&bootstrap, &topic, "  []\n"));
    let client = http_client();
    let mut sent = HashMap::new();
    for i in 0..40 {
        let body = serde_json::json!({"key": format!("customer-{}", i % 9), "n": i});
        let response = client
            .post(server.hook_url("events"))
            .header("x-type", "order.created")
            .header("idempotency-key", format!("delivery-{i}"))
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
        let id = response.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        sent.insert(id, body);
    }
    assert!(server.terminate().success());

    for message in read_all(&bootstrap, &topic, 40).await {
        let headers: HashMap<String, Vec<u8>> = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            headers["content-type"],
            b"application/x-protobuf; proto=hookbridge.v1.Envelope"
        );
        assert_eq!(headers["hb-type"], b"order.created");
        let envelope: Envelope = prost::Message::decode(message.payload().unwrap()).unwrap();
        assert_eq!(headers["hb-id"], envelope.id.as_bytes());
        let body = &sent[&envelope.id];
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&envelope.body).unwrap(),
            *body
        );
        assert_eq!(envelope.source, "events");
        assert_eq!(envelope.r#type, "order.created");
        assert_eq!(envelope.key, body["key"].as_str().unwrap());
        assert_eq!(envelope.idempotency_key, format!("delivery-{}", body["n"]));
        assert_eq!(
            envelope.traceparent,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(message.key().unwrap(), envelope.key.as_bytes());
        assert_eq!(
            message.partition() as u32,
            partition_for_key(envelope.key.as_bytes(), 4),
            "murmur2 partition"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_record_becomes_a_webhook() {
    let bootstrap = bootstrap();
    let receiver = Receiver::start().await;
    let (topic, foreign) = (unique("unused"), unique("foreign"));
    // The other service's topic exists before hookbridge is pointed at it.
    create_topic(&bootstrap, &foreign, 4).await;
    let producer = producer(&bootstrap);
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "content-type",
            value: Some("text/csv"),
        })
        .insert(Header {
            key: "x-origin",
            value: Some("billing-service"),
        });
    producer
        .send(
            FutureRecord::to(&foreign)
                .key("acct-7")
                .payload("a,b,c\n1,2,3\n")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        "  - name: {}\n    topics: [{foreign}]\n    url: {}\n    forward_headers: [X-Origin]\n",
        unique("sub"),
        receiver.url
    );
    let _server = Hookbridge::start(dir.path(), &config(&bootstrap, &topic, &subs));
    receiver
        .wait_for("the foreign record", Duration::from_secs(30), |r| {
            !r.is_empty()
        })
        .await;
    let got = &receiver.received()[0];
    assert_eq!(&got.body[..], b"a,b,c\n1,2,3\n");
    assert_eq!(got.header("content-type"), "text/csv");
    assert_eq!(got.header("x-origin"), "billing-service");
    assert!(!got.header("webhook-id").is_empty());
}

/// A backlog many times larger than every buffer on the way (librdkafka's partition
/// queues, the partition channels, the engine's lanes), behind a receiver that stalls for
/// a while and then answers: partitions are held back while their streams are full, and
/// when they flow again no record is skipped (G2) and per-key order holds. Holding a
/// partition back with pause/resume lost records here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_behind_a_stalled_receiver_is_delivered_without_gaps() {
    const EVENTS: u64 = 20_000;
    let bootstrap = bootstrap();
    let (topic, sub) = (unique("backlog"), unique("backlog-sub"));
    create_topic(&bootstrap, &topic, 4).await;
    let producer = producer(&bootstrap);
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(2_000) {
        let sends = chunk.iter().map(|&seq| {
            let key = format!("k{}", seq % 40);
            let payload = serde_json::json!({"key": key, "seq": seq}).to_string();
            let (producer, topic) = (&producer, &topic);
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
            }
        });
        for sent in futures_util::future::join_all(sends).await {
            sent.unwrap();
        }
    }

    // Every request that arrives in the first seconds waits until then.
    let receiver = Receiver::start().await;
    let release = Instant::now() + Duration::from_secs(4);
    receiver.answer(move |_, _| Reply {
        status: 200,
        delay: release.saturating_duration_since(Instant::now()),
        retry_after: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let subs = format!(
        "  - name: {sub}\n    topics: [{topic}]\n    url: {}\n",
        receiver.url
    );
    let server = Hookbridge::start(dir.path(), &config(&bootstrap, &unique("unused"), &subs));

    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = (0, Instant::now());
    loop {
        let delivered: HashSet<u64> = receiver
            .received()
            .iter()
            .filter(|r| r.ok())
            .map(|r| seq_of(r).1)
            .collect();
        if delivered.len() == EVENTS as usize {
            break;
        }
        if delivered.len() != last.0 {
            last = (delivered.len(), Instant::now());
        }
        // Stuck for 15 s with records missing: they were skipped, not slow.
        if Instant::now() > deadline || last.1.elapsed() > Duration::from_secs(15) {
            let missing: Vec<u64> = (0..EVENTS)
                .filter(|s| !delivered.contains(s))
                .take(20)
                .collect();
            panic!(
                "{} of {EVENTS} delivered; first missing: {missing:?}\nlog:\n{}",
                delivered.len(),
                server.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = receiver.received();
    assert_first_deliveries_in_order(&received);
    eprintln!(
        "backlog of {EVENTS} behind a receiver stalled 4 s: all delivered, {} requests in all",
        received.len()
    );
}

/// A subscription whose topic has another partition count than the parking and resend
/// topics hookbridge creates: the replicas cannot keep a key's events together, and the
/// log says so, naming the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_of_unequal_partition_counts_are_named_at_start() {
    let bootstrap = bootstrap();
    let topic = unique("uneven");
    create_topic(&bootstrap, &topic, 3).await;
    let receiver = Receiver::start().await;
    let subs = subscription(&topic, &topic, &receiver.url, "");
    let dir = tempfile::tempdir().unwrap();
    // Its own topics get `partitions: 4`.
    let server = Hookbridge::start(dir.path(), &config(&bootstrap, &topic, &subs));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log_text().contains("different partition counts") {
        assert!(
            Instant::now() < deadline,
            "a warning about the partition counts; the log:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warning = server
        .log_text()
        .lines()
        .find(|l| l.contains("different partition counts"))
        .unwrap()
        .to_string();
    assert!(
        warning.contains(&format!("(\\\"{topic}\\\", 3)")) && warning.contains("4)"),
        "the counts are named: {warning}"
    );
}
