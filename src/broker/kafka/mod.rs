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

pub use browse::KafkaTopicReader;

use std::sync::Arc;

use async_trait::async_trait;

use super::{BrokerError, Publisher, Receipt, Record, StartFrom, Subscriber, Subscription};
use crate::config::KafkaConfig;

pub struct KafkaBroker {
    config: KafkaConfig,
    producer: producer::KafkaProducer,
}

impl KafkaBroker {
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
        consumer::subscribe(&self.config, group, topics, start)
    }
}
