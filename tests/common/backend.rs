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
    /// dead-letter and parking topics), where the broker does not let hookbridge create them
    /// (the mock cluster).
    pub fn create_topics(&self, topic: &str, partitions: i32) {
        if let Backend::KafkaMock(mock) = self {
            mock.create_topic(topic, partitions, 1).unwrap();
            mock.create_topic(&format!("hookbridge.dlq.{topic}"), 1, 1)
                .unwrap();
            mock.create_topic(&format!("hookbridge.park.{topic}"), partitions, 1)
                .unwrap();
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
            // kept out of the picture (see README, "Kafka"): a fetch from an offset inside a
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
