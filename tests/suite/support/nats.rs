//! The NATS tests' config and JetStream reads: a private nats-server with four partitions,
//! the topic's stream as hookbridge made it, messages published straight to its subjects,
//! and a server reached through a proxy that can stall.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use hookbridge::broker::nats::stream_name;

use super::receiver::{Receiver, Reply};
use super::{NatsServer, StallableProxy, events_config, nats_broker, unique};

pub fn config(nats: &NatsServer, topic: &str, subs: &str) -> String {
    events_config(&nats_broker(&nats.url(), 4), topic, subs)
}

/// A JetStream client, once hookbridge has created the topic's stream.
pub async fn stream_created(nats: &NatsServer, topic: &str) -> jetstream::Context {
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while js.get_stream(stream_name(topic)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "hookbridge created the stream of {topic}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    js
}

/// Every message of a topic's stream, read by a plain client.
pub async fn stream_messages(nats: &NatsServer, topic: &str) -> Vec<jetstream::Message> {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let mut stream = js.get_stream(stream_name(topic)).await.unwrap();
    let count = stream.info().await.unwrap().state.messages as usize;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while out.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        out.push(message);
    }
    out
}

/// Publishes `events` foreign messages (`{"key", "seq"}` bodies over `keys` keys, the key in
/// `Hb-Key`) straight to the subjects of `topic`'s `partitions`, once hookbridge has made its
/// stream, and waits until JetStream has stored them all.
pub async fn publish_foreign(
    nats: &NatsServer,
    topic: &str,
    events: u64,
    keys: u64,
    partitions: u32,
) {
    use hookbridge::broker::nats::stream_name;
    use hookbridge::broker::partitioner::partition_for_key;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(10);
    while js.get_stream(stream_name(topic)).await.is_err() {
        assert!(Instant::now() < deadline, "the stream exists");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut acks = Vec::new();
    for seq in 0..events {
        let key = format!("k{}", seq % keys);
        let partition = partition_for_key(key.as_bytes(), partitions);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Hb-Key", key.as_str());
        let body = serde_json::json!({"key": key, "seq": seq}).to_string();
        acks.push(
            js.publish_with_headers(format!("{topic}.{partition}"), headers, body.into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// A private nats-server reached through a proxy that can stall, a receiver answering 200
/// after a delay, and a subscription (named as its topic) delivering to it.
pub struct Proxied {
    pub nats: NatsServer,
    pub proxy: StallableProxy,
    pub topic: String,
    pub receiver: Receiver,
    pub subs: String,
}

impl Proxied {
    pub async fn start(prefix: &str, answer_after: Duration, max_in_flight: u32) -> Proxied {
        let nats = NatsServer::start();
        let proxy = StallableProxy::start(nats.port).await;
        let topic = unique(prefix);
        let receiver = Receiver::start().await;
        receiver.answer(move |_, _| Reply {
            status: 200,
            delay: answer_after,
            retry_after: None,
        });
        let subs = format!(
            "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n    max_in_flight: {max_in_flight}\n",
            receiver.url
        );
        Proxied {
            nats,
            proxy,
            topic,
            receiver,
            subs,
        }
    }
}
