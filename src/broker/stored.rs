//! Where the subscriptions made through the admin API are kept: in the broker itself, so
//! that every replica reads the same ones and they outlive every replica's restart. A
//! Kafka compacted topic, a NATS KV bucket, the embedded log's own keyspace; by full name,
//! the latest write of a name winning.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;

use super::BrokerError;

/// Kafka: a compacted topic of one partition, a record per write keyed by the name.
pub const KAFKA_TOPIC: &str = "hookbridge.subscriptions";
/// NATS: a KV bucket, a key per name.
pub const NATS_BUCKET: &str = "hookbridge_subscriptions";

#[async_trait]
pub trait SubscriptionStore: Send + Sync + 'static {
    /// Every stored subscription, by name.
    async fn load(&self) -> Result<BTreeMap<String, Bytes>, BrokerError>;

    /// Stores `value` under `name`, durably, replacing what was there.
    async fn put(&self, name: &str, value: Bytes) -> Result<(), BrokerError>;

    /// Removes `name`, durably.
    async fn delete(&self, name: &str) -> Result<(), BrokerError>;
}
