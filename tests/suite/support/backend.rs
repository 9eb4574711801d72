//! The brokers a test can run hookbridge on, each a real one: the embedded log in a
//! temporary directory, a private nats-server, the Apache Kafka node scripts/test starts.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::receiver::Receiver;
use super::{NatsServer, events_config, kafka_bootstrap, nats_broker, unique};

/// The `broker:` section for a backend, with `partitions` partitions.
pub enum Backend {
    Embedded(tempfile::TempDir),
    Nats(NatsServer),
    Kafka(String),
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
            Backend::Kafka(_) => {
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
            Backend::Kafka(_) => {
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
            Backend::Kafka(bootstrap) => format!(
                "  kind: kafka\n  kafka: {{ bootstrap_servers: \"{bootstrap}\", partitions: {partitions} }}\n"
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
