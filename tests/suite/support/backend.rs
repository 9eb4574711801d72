//! The brokers a test can run hookbridge on, each a real one: the embedded log in a
//! temporary directory, a private nats-server, the Kafka-protocol broker scripts/test starts,
//! and librdkafka's mock cluster (for group faults).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::receiver::Receiver;
use super::{NatsServer, events_config, kafka_bootstrap, nats_broker, unique};

/// The `broker:` section for a backend, with `partitions` partitions.
pub enum Backend {
    Embedded(tempfile::TempDir),
    Nats(NatsServer),
    Kafka(String),
    /// librdkafka's mock cluster, in this process: a real group coordinator over sockets.
    KafkaMock(rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>),
}

impl Backend {
    pub fn embedded() -> Backend {
        Backend::Embedded(tempfile::tempdir().unwrap())
    }
    pub fn nats() -> Backend {
        Backend::Nats(NatsServer::start())
    }
    pub fn kafka() -> Backend {
        Backend::Kafka(kafka_bootstrap())
    }
    pub fn kafka_mock() -> Backend {
        Backend::KafkaMock(rdkafka::mocking::MockCluster::new(3).unwrap())
    }

    /// Creates the topics a subscription named after its topic needs (its own, its
    /// dead-letter, parking and resend topics), where the broker does not let hookbridge create them
    /// (the mock cluster).
    pub fn create_topics(&self, topic: &str, partitions: i32) {
        if let Backend::KafkaMock(mock) = self {
            mock.create_topic(topic, partitions, 1).unwrap();
            mock.create_topic(&format!("hookbridge.dlq.{topic}"), 1, 1)
                .unwrap();
            mock.create_topic(&format!("hookbridge.park.{topic}"), partitions, 1)
                .unwrap();
            mock.create_topic(&format!("hookbridge.resend.{topic}"), partitions, 1)
                .unwrap();
        }
    }

    /// The first offset of `topic`'s partition that `group` has not committed as done, read
    /// as an operator would (the embedded log's own store, the JetStream consumer's ack
    /// floor, the group's committed offset). The embedded log is read from its files: the
    /// replica using it must have stopped.
    pub async fn commit_point(&self, group: &str, topic: &str, partition: u32) -> u64 {
        match self {
            Backend::Embedded(dir) => super::open_log(dir.path())
                .committed(group, topic, partition)
                .unwrap()
                .unwrap_or(0),
            Backend::Nats(nats) => {
                let name = hookbridge::broker::nats::consumer_name(group, topic, partition);
                let info = nats_stream(nats, topic)
                    .await
                    .consumer_info(&name)
                    .await
                    .unwrap();
                // JetStream sequences start at 1; offsets here are sequences.
                info.ack_floor.stream_sequence + 1
            }
            Backend::Kafka(_) | Backend::KafkaMock(_) => {
                use rdkafka::consumer::{BaseConsumer, Consumer};
                let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", self.bootstrap())
                    .set("group.id", group)
                    .create()
                    .unwrap();
                let mut wanted = rdkafka::TopicPartitionList::new();
                wanted.add_partition(topic, partition as i32);
                let committed = consumer
                    .committed_offsets(wanted, std::time::Duration::from_secs(10))
                    .unwrap();
                match committed
                    .find_partition(topic, partition as i32)
                    .map(|e| e.offset())
                {
                    Some(rdkafka::Offset::Offset(next)) if next >= 0 => next as u64,
                    _ => 0,
                }
            }
        }
    }

    /// How many records `topic`'s partition holds (the next offset to be written; on
    /// JetStream, where sequences start at 1, the last sequence + 1). Like `commit_point`,
    /// the embedded log is read from its files.
    pub async fn end_offset(&self, topic: &str, partition: u32) -> u64 {
        match self {
            Backend::Embedded(dir) => super::open_log(dir.path())
                .read_topic(topic)
                .unwrap()
                .iter()
                .filter(|r| r.partition == partition)
                .map(|r| r.offset + 1)
                .max()
                .unwrap_or(0),
            Backend::Nats(nats) => {
                // A stream per topic, a subject per partition (src/broker/nats/mod.rs).
                let subject = hookbridge::broker::nats::subject(topic, partition);
                let stream = nats_stream(nats, topic).await;
                match stream.get_last_raw_message_by_subject(&subject).await {
                    Ok(last) => last.sequence + 1,
                    Err(_) => 0,
                }
            }
            Backend::Kafka(_) | Backend::KafkaMock(_) => {
                use rdkafka::consumer::{BaseConsumer, Consumer};
                let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", self.bootstrap())
                    .create()
                    .unwrap();
                let (_, high) = consumer
                    .fetch_watermarks(topic, partition as i32, std::time::Duration::from_secs(10))
                    .unwrap();
                high as u64
            }
        }
    }

    fn bootstrap(&self) -> String {
        match self {
            Backend::Kafka(bootstrap) => bootstrap.clone(),
            Backend::KafkaMock(mock) => mock.bootstrap_servers(),
            _ => panic!("not a Kafka backend"),
        }
    }

    pub fn broker(&self, partitions: u32) -> String {
        match self {
            Backend::Embedded(dir) => format!(
                "  kind: embedded\n  embedded: {{ dir: '{}', partitions: {partitions} }}\n",
                dir.path().join("data").display()
            ),
            Backend::Nats(nats) => nats_broker(&nats.url(), partitions),
            // Two faults of Tansu 0.6.0, the Kafka-protocol broker these tests run on, are
            // kept out of the picture (see docs/testing.md, "Tansu's faults"): a fetch from an offset inside a
            // record batch skips the rest of that batch, so every record gets a batch of its
            // own; and its cooperative rebalance hands a partition to a new member before the
            // old one has revoked it, so the eager protocol is used.
            Backend::Kafka(bootstrap) => format!(
                "  kind: kafka\n  kafka:\n    bootstrap_servers: \"{bootstrap}\"\n    partitions: {partitions}\n    properties: {{ partition.assignment.strategy: range, batch.num.messages: \"1\" }}\n"
            ),
            Backend::KafkaMock(mock) => format!(
                "  kind: kafka\n  kafka: {{ bootstrap_servers: \"{}\", partitions: {partitions} }}\n",
                mock.bootstrap_servers()
            ),
        }
    }
}

/// The JetStream stream hookbridge keeps `topic` in, through a client of its own.
async fn nats_stream(nats: &NatsServer, topic: &str) -> async_nats::jetstream::stream::Stream {
    let client = async_nats::connect(nats.url()).await.unwrap();
    async_nats::jetstream::new(client)
        .get_stream(hookbridge::broker::nats::stream_name(topic))
        .await
        .unwrap()
}

/// One subscription on a fresh topic whose receiver answers 500 to key A's events while
/// `a_fails` is set (200 to everything else).
pub struct FailingKey {
    pub topic: String,
    pub receiver: Receiver,
    pub a_fails: Arc<AtomicBool>,
    /// The config: `backend`'s broker, the `events` route, the subscription.
    pub config: String,
}

impl FailingKey {
    /// `settings`: the subscription's YAML lines after its name, topics and URL.
    pub async fn start(backend: &Backend, partitions: u32, settings: &str) -> FailingKey {
        let topic = unique("orders");
        backend.create_topics(&topic, partitions as i32);
        let receiver = Receiver::start().await;
        let a_fails = Arc::new(AtomicBool::new(true));
        receiver.fail_key_while("A", a_fails.clone());
        let subs = format!(
            "  - name: {topic}\n    topics: [{topic}]\n    url: {}\n{settings}",
            receiver.url
        );
        let config = events_config(&backend.broker(partitions), &topic, &subs);
        FailingKey {
            topic,
            receiver,
            a_fails,
            config,
        }
    }

    /// Key A recovers.
    pub fn recover(&self) {
        self.a_fails
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}
