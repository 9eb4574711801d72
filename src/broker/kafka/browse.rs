//! Reading Kafka topics outside any consumer group (see [`TopicReader`]): one
//! `BaseConsumer` that is assigned the partition it reads, never subscribed, never
//! committing. librdkafka's calls block, so each runs on the blocking pool, one at a time
//! (an assignment is the consumer's whole state).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::client::{base_config, kafka_error, with_properties};
use super::consumer::to_record;
use crate::broker::{BrokerError, ConsumedRecord, TopicReader};
use crate::config::KafkaConfig;

/// One metadata, watermark or offsets-for-times request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A read that gets nothing for this long although records remain gives up.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

pub struct KafkaTopicReader {
    consumer: Arc<Mutex<BaseConsumer>>,
}

impl KafkaTopicReader {
    pub fn new(config: &KafkaConfig) -> Result<KafkaTopicReader, BrokerError> {
        let mut client = base_config(config);
        // A group id is required of a consumer, though this one never joins the group.
        client.set("group.id", "hookbridge.reader");
        client.set("enable.auto.commit", "false");
        client.set("enable.auto.offset.store", "false");
        client.set("enable.partition.eof", "false");
        // An offset retention removed since reads from the oldest record kept.
        client.set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer = with_properties(client, config)
            .create()
            .map_err(kafka_error)?;
        Ok(KafkaTopicReader {
            consumer: Arc::new(Mutex::new(consumer)),
        })
    }

    /// Runs `call` with the consumer on the blocking pool.
    async fn with_consumer<T: Send + 'static>(
        &self,
        call: impl FnOnce(&BaseConsumer) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, BrokerError> {
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || call(&consumer.lock().expect("reader lock")))
            .await
            .map_err(|_| BrokerError::Closed)?
    }
}

#[async_trait]
impl TopicReader for KafkaTopicReader {
    async fn partitions(&self, topic: &str) -> Result<u32, BrokerError> {
        let topic = topic.to_string();
        self.with_consumer(move |consumer| {
            let metadata = consumer
                .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
                .map_err(kafka_error)?;
            // `Rejected` only when the broker says there is no such topic; other errors
            // (no leader yet, say) may pass.
            let gone = || BrokerError::Rejected(format!("topic {topic} does not exist"));
            match metadata.topics().first() {
                Some(t) => match t.error().map(RDKafkaErrorCode::from) {
                    None if !t.partitions().is_empty() => Ok(t.partitions().len() as u32),
                    None | Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Err(gone()),
                    Some(code) => Err(BrokerError::Unavailable(format!("topic {topic}: {code}"))),
                },
                None => Err(gone()),
            }
        })
        .await
    }

    async fn bounds(&self, topic: &str, partition: u32) -> Result<(u64, u64), BrokerError> {
        let topic = topic.to_string();
        self.with_consumer(move |consumer| {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition as i32, REQUEST_TIMEOUT)
                .map_err(kafka_error)?;
            Ok((low.max(0) as u64, high.max(0) as u64))
        })
        .await
    }

    async fn offset_at(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<u64, BrokerError> {
        let name = topic.to_string();
        let found = self
            .with_consumer(move |consumer| {
                let topic = name;
                let mut wanted = TopicPartitionList::new();
                wanted
                    .add_partition_offset(&topic, partition as i32, Offset::Offset(timestamp_ms))
                    .map_err(kafka_error)?;
                let found = consumer
                    .offsets_for_times(wanted, REQUEST_TIMEOUT)
                    .map_err(kafka_error)?;
                let element = found
                    .find_partition(&topic, partition as i32)
                    .ok_or_else(|| {
                        BrokerError::Unavailable("no answer for the partition".into())
                    })?;
                element.error().map_err(kafka_error)?;
                Ok(match element.offset() {
                    Offset::Offset(offset) if offset >= 0 => Some(offset as u64),
                    _ => None,
                })
            })
            .await?;
        // No record at or after the instant: the broker answers -1, meaning the end.
        match found {
            Some(offset) => Ok(offset),
            None => Ok(self.bounds(topic, partition).await?.1),
        }
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        end: u64,
        max: usize,
    ) -> Result<Vec<ConsumedRecord>, BrokerError> {
        if from >= end || max == 0 {
            return Ok(Vec::new());
        }
        let topic = topic.to_string();
        self.with_consumer(move |consumer| {
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(&topic, partition as i32, Offset::Offset(from as i64))
                .map_err(kafka_error)?;
            consumer.assign(&assignment).map_err(kafka_error)?;
            let mut records = Vec::new();
            let mut quiet_since = Instant::now();
            let mut next = from;
            while records.len() < max && next < end {
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(message)) => {
                        quiet_since = Instant::now();
                        let record = to_record(&message);
                        next = record.offset + 1;
                        if record.offset >= end {
                            break;
                        }
                        records.push(record);
                    }
                    Some(Err(e)) => return Err(kafka_error(e)),
                    // Records below `end` were retained when `end` was read; they may have
                    // been deleted since (retention), then nothing more comes.
                    None if quiet_since.elapsed() > READ_TIMEOUT => {
                        return Err(BrokerError::Unavailable(format!(
                            "no record of {topic}/{partition} from offset {next} within {READ_TIMEOUT:?}"
                        )));
                    }
                    None => {}
                }
            }
            let _ = consumer.unassign();
            Ok(records)
        })
        .await
    }
}
