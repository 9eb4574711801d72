//! `broker.kind: kafka`: librdkafka through rdkafka.
//!
//! - [`producer`]: an idempotent `FutureProducer` (`acks=all`, murmur2 partitioner) whose
//!   delivery reports are the ingress's durable acks; topic creation with the AdminClient.
//! - [`consumer`]: one `StreamConsumer` per subscription in group `hookbridge.<name>`,
//!   range assignment (per topic, partition `p` of every topic to one member), manual
//!   commits, a librdkafka queue per assigned
//!   partition that is simply not read while its stream is full (backpressure);
//!   assignments and revocations become partition streams.
//!
//! - [`refusal`]: the producer's client context, which remembers a refused SASL login or
//!   TLS handshake so that start-up stops with the broker's reason.
//!
//! - [`client`]: what every client starts from, and the operator's properties over it.
//!
//! `broker.kafka.properties` go to librdkafka as they are (SASL, TLS, tuning), applied
//! last so an operator can override any default set here.

mod browse;
mod client;
mod consumer;
mod producer;
mod refusal;
mod stored;

pub use browse::KafkaTopicReader;
pub use stored::KafkaSubscriptionStore;

use std::sync::Arc;

use async_trait::async_trait;

use super::{BrokerError, Publisher, Receipt, Record, StartFrom, Subscriber, Subscription};
use crate::config::KafkaConfig;

pub struct KafkaBroker {
    config: KafkaConfig,
    producer: producer::KafkaProducer,
}

impl KafkaBroker {
    /// Where the admin API's subscriptions are kept, on this broker's producer.
    pub fn subscription_store(&self) -> Result<KafkaSubscriptionStore, BrokerError> {
        KafkaSubscriptionStore::new(&self.config, self.producer.clone())
    }

    pub fn connect(config: &KafkaConfig) -> Result<Arc<KafkaBroker>, BrokerError> {
        let producer = producer::KafkaProducer::new(config)?;
        Ok(Arc::new(KafkaBroker {
            config: config.clone(),
            producer,
        }))
    }
}

#[async_trait]
impl Publisher for KafkaBroker {
    async fn ensure_topics(&self, topics: &[String]) -> Result<(), BrokerError> {
        producer::ensure_topics(&self.config, &self.producer, topics).await
    }

    async fn publish(&self, record: Record) -> Result<Receipt, BrokerError> {
        self.producer.publish(record).await
    }

    async fn check(&self) -> Result<(), BrokerError> {
        self.producer.check().await
    }

    async fn close(&self) {
        self.producer.flush().await;
    }
}

#[async_trait]
impl Subscriber for KafkaBroker {
    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
        start: StartFrom,
    ) -> Result<Subscription, BrokerError> {
        self.check_partition_counts(group, topics);
        consumer::subscribe(&self.config, group, topics, start)
    }
}

impl KafkaBroker {
    /// Warns when a group's topics have different partition counts. Range assignment gives
    /// partition `p` of every topic to one replica, and a key lands on the same `p` of each
    /// topic only when their counts are equal: otherwise a key's resent or parked events may
    /// be delivered by another replica than its live ones, and at the same time.
    fn check_partition_counts(&self, group: &str, topics: &[String]) {
        let (producer, group, topics) = (self.producer.clone(), group.to_string(), topics.to_vec());
        tokio::task::spawn_blocking(move || match producer.partition_counts(&topics) {
            Ok(counts) if counts.windows(2).any(|w| w[0].1 != w[1].1) => {
                tracing::warn!(%group, ?counts, "the group's topics have different partition counts: a key's live, parked and resent events may be delivered by different replicas at once; give them one count (hookbridge creates its own topics with broker.kafka.partitions)");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(%group, error = %e, "cannot read the topics' partition counts")
            }
        });
    }
}
