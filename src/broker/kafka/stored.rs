//! The admin API's subscriptions in a compacted topic of one partition (see
//! `broker::stored`): a record per write keyed by the name, a tombstone per delete. Every
//! replica reads the partition from its start when its end has moved since the last read,
//! and keeps the latest record of each name; compaction keeps the topic about as small as
//! the set of subscriptions.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Mutex, OnceCell};

use super::KafkaTopicReader;
use super::producer::{KafkaProducer, create_missing};
use crate::broker::stored::KAFKA_TOPIC;
use crate::broker::{BrokerError, Record, SubscriptionStore, TopicReader};
use crate::config::KafkaConfig;

/// Records read per request while the partition is read again.
const CHUNK: usize = 1000;

pub struct KafkaSubscriptionStore {
    config: KafkaConfig,
    producer: KafkaProducer,
    /// Its own reader: the operators' reads do not wait on it, nor it on them.
    reader: KafkaTopicReader,
    created: OnceCell<()>,
    /// The partition's end when last read, and what it held.
    read: Mutex<(u64, BTreeMap<String, Bytes>)>,
}

impl KafkaSubscriptionStore {
    pub fn new(
        config: &KafkaConfig,
        producer: KafkaProducer,
    ) -> Result<KafkaSubscriptionStore, BrokerError> {
        Ok(KafkaSubscriptionStore {
            config: config.clone(),
            producer,
            reader: KafkaTopicReader::new(config)?,
            created: OnceCell::new(),
            read: Mutex::default(),
        })
    }

    /// The topic, created compacted on first use.
    async fn topic(&self) -> Result<(), BrokerError> {
        self.created
            .get_or_try_init(|| async {
                let topics = [KAFKA_TOPIC.to_string()];
                create_missing(
                    &self.config,
                    &self.producer,
                    &topics,
                    1,
                    &[("cleanup.policy", "compact")],
                )
                .await
            })
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl SubscriptionStore for KafkaSubscriptionStore {
    async fn load(&self) -> Result<BTreeMap<String, Bytes>, BrokerError> {
        self.topic().await?;
        let mut read = self.read.lock().await;
        let (start, end) = self.reader.bounds(KAFKA_TOPIC, 0).await?;
        if end == read.0 {
            return Ok(read.1.clone());
        }
        let mut all = BTreeMap::new();
        let mut from = start;
        while from < end {
            let records = self.reader.read(KAFKA_TOPIC, 0, from, end, CHUNK).await?;
            let Some(last) = records.last() else { break };
            from = last.offset + 1;
            for record in records {
                let Some(key) = record.key else { continue };
                let name = String::from_utf8_lossy(&key).into_owned();
                match record.value.is_empty() {
                    true => all.remove(&name),
                    false => all.insert(name, record.value),
                };
            }
        }
        *read = (end, all.clone());
        Ok(all)
    }

    async fn put(&self, name: &str, value: Bytes) -> Result<(), BrokerError> {
        self.topic().await?;
        self.producer
            .publish(Record {
                topic: KAFKA_TOPIC.to_string(),
                key: Some(Bytes::copy_from_slice(name.as_bytes())),
                headers: Vec::new(),
                value,
            })
            .await
            .map(|_| ())
    }

    async fn delete(&self, name: &str) -> Result<(), BrokerError> {
        self.topic().await?;
        self.producer
            .publish_tombstone(KAFKA_TOPIC, name.as_bytes())
            .await
    }
}
