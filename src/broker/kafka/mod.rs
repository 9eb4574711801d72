//! `broker.kind: kafka`: librdkafka through rdkafka.
//!
//! - [`producer`]: an idempotent `FutureProducer` (`acks=all`, murmur2 partitioner) whose
//!   delivery reports are the ingress's durable acks; topic creation with the AdminClient.
//! - [`consumer`]: one `StreamConsumer` per subscription in group `hookbridge.<name>`,
//!   cooperative-sticky assignment, manual commits, a librdkafka queue per assigned
//!   partition that is simply not read while its stream is full (backpressure);
//!   assignments and revocations become partition streams.
//!
//! - [`refusal`]: the producer's client context, which remembers a refused SASL login or
//!   TLS handshake so that start-up stops with the broker's reason.
//!
//! `broker.kafka.properties` go to librdkafka as they are (SASL, TLS, tuning), applied
//! last so an operator can override any default set here.

mod browse;
mod consumer;
mod producer;
mod refusal;

pub use browse::KafkaTopicReader;

use std::sync::Arc;

use async_trait::async_trait;
use rdkafka::ClientConfig;

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

/// The client settings every hookbridge Kafka client starts from.
fn base_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.bootstrap_servers);
    client.set("client.id", "hookbridge");
    client
}

/// Applies `broker.kafka.properties` over the defaults.
fn with_properties(mut client: ClientConfig, config: &KafkaConfig) -> ClientConfig {
    for (key, value) in &config.properties {
        client.set(key, value.expose());
    }
    client
}

fn kafka_error(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
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
