//! Publishing to Kafka: one idempotent producer for the whole process. librdkafka batches
//! every in-flight publish (linger) into shared produce requests, so concurrent webhooks
//! share broker round trips; each still resolves on its own delivery report.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use super::client::{base_config, kafka_error, with_properties};
use super::refusal::RefusalWatch;
use crate::broker::{BrokerError, Receipt, Record};
use crate::config::KafkaConfig;

/// How long metadata and admin requests may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct KafkaProducer {
    producer: FutureProducer<RefusalWatch>,
    /// What the producer's connections were refused, if anything.
    refusals: RefusalWatch,
}

impl KafkaProducer {
    /// How many partitions each of `topics` has, of those that exist (blocking).
    pub fn partition_counts(&self, topics: &[String]) -> Result<Vec<(String, usize)>, BrokerError> {
        let mut counts = topic_partitions(&self.producer, &self.refusals)?;
        counts.retain(|(name, _)| topics.contains(name));
        Ok(counts)
    }

    pub fn new(config: &KafkaConfig) -> Result<KafkaProducer, BrokerError> {
        let mut client = base_config(config);
        client
            // Durable and exactly-once per partition: acks from all in-sync replicas, and
            // retries that cannot duplicate or reorder.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // The Java client's partitioner, so keys land where any Kafka producer puts them.
            .set("partitioner", "murmur2_random")
            // Batch concurrent webhooks for a few milliseconds: one produce request each.
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", "30000");
        let refusals = RefusalWatch::default();
        let producer = with_properties(client, config)
            .create_with_context(refusals.clone())
            .map_err(kafka_error)?;
        Ok(KafkaProducer { producer, refusals })
    }

    pub async fn publish(&self, record: Record) -> Result<Receipt, BrokerError> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for header in &record.headers {
            headers = headers.insert(Header {
                key: &header.name,
                value: Some(header.value.as_ref()),
            });
        }
        let mut future = FutureRecord::to(&record.topic)
            .payload(record.value.as_ref())
            .headers(headers);
        if let Some(key) = &record.key {
            future = future.key(key.as_ref());
        }
        match self.producer.send(future, Timeout::Never).await {
            Ok(delivery) => Ok(Receipt {
                partition: delivery.partition as u32,
                offset: delivery.offset as u64,
            }),
            Err((e, _)) => Err(kafka_error(e)),
        }
    }

    /// Publishes a tombstone (a record without a value) for `key`: a compacted topic keeps
    /// nothing of the key once compacted.
    pub async fn publish_tombstone(&self, topic: &str, key: &[u8]) -> Result<(), BrokerError> {
        let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).key(key);
        match self.producer.send(record, Timeout::Never).await {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(kafka_error(e)),
        }
    }

    /// Asks the cluster for its metadata: reachable and answering.
    pub async fn check(&self) -> Result<(), BrokerError> {
        let client = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            client
                .client()
                .fetch_metadata(None, Duration::from_secs(2))
                .map(|_| ())
        })
        .await
        .map_err(kafka_error)?
        .map_err(kafka_error)
    }

    pub async fn flush(&self) {
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30))).await;
    }
}

/// Creates the topics that do not exist yet with `broker.kafka.partitions` and
/// `replication_factor`; existing topics are left as they are. As the first request
/// `serve` makes, it is also where a broker refusing hookbridge's credentials or TLS stops
/// start-up, naming the settings and the broker's reason.
pub async fn ensure_topics(
    config: &KafkaConfig,
    producer: &KafkaProducer,
    topics: &[String],
) -> Result<(), BrokerError> {
    create_missing(config, producer, topics, config.partitions, &[]).await
}

/// Creates `topics` that do not exist yet with `partitions` and the topic configs
/// `settings` (`cleanup.policy=compact`, say).
pub async fn create_missing(
    config: &KafkaConfig,
    producer: &KafkaProducer,
    topics: &[String],
    partitions: u32,
    settings: &[(&str, &str)],
) -> Result<(), BrokerError> {
    // Metadata calls block: run them off the async threads.
    let (client, refusals) = (producer.producer.clone(), producer.refusals.clone());
    let existing: Vec<String> =
        tokio::task::spawn_blocking(move || topic_partitions(&client, &refusals))
            .await
            .map_err(kafka_error)??
            .into_iter()
            .map(|(name, _)| name)
            .collect();
    let admin: AdminClient<DefaultClientContext> = with_properties(base_config(config), config)
        .create()
        .map_err(kafka_error)?;
    let missing: Vec<&String> = topics.iter().filter(|t| !existing.contains(t)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| {
            settings.iter().fold(
                NewTopic::new(
                    t,
                    partitions as i32,
                    TopicReplication::Fixed(config.replication_factor as i32),
                ),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(kafka_error)?;
    for result in results {
        match result {
            Ok(topic) => {
                tracing::info!(%topic, partitions, "created Kafka topic")
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BrokerError::Rejected(format!(
                    "cannot create topic {topic}: {code}"
                )));
            }
        }
    }
    Ok(())
}

/// The cluster's topics and their partition counts. Asks in short rounds, so that a
/// refused authentication or handshake ends the wait as soon as librdkafka reports it.
fn topic_partitions(
    producer: &FutureProducer<RefusalWatch>,
    refusals: &RefusalWatch,
) -> Result<Vec<(String, usize)>, BrokerError> {
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    loop {
        match producer
            .client()
            .fetch_metadata(None, Duration::from_secs(1))
        {
            Ok(metadata) => {
                refusals.clear();
                return Ok(metadata
                    .topics()
                    .iter()
                    .map(|t| (t.name().to_string(), t.partitions().len()))
                    .collect());
            }
            Err(e) => {
                if let Some(refusal) = refusals.refusal() {
                    return Err(refusal);
                }
                if Instant::now() >= deadline {
                    return Err(kafka_error(e));
                }
            }
        }
    }
}
