//! Reading the embedded log outside any consumer group (see [`TopicReader`]).
//!
//! The time index is the log itself: offsets are assigned in write order and each record
//! keeps the time it was written, so within a partition timestamps do not go down and the
//! first record at or after an instant is found by binary search over the offsets.

use std::sync::Arc;

use async_trait::async_trait;

use super::EmbeddedBroker;
use crate::broker::{BrokerError, ConsumedRecord, TopicReader};

/// Bytes of records one read of a scan returns, at most (one record always): an operation
/// over large records holds a few MiB at a time, not its whole chunk of them.
const CHUNK_BYTES: usize = 4 * 1024 * 1024;

impl EmbeddedBroker {
    fn known_partitions(&self, topic: &str) -> Result<u32, BrokerError> {
        self.partitions(topic)
            .ok_or_else(|| BrokerError::Rejected(format!("topic {topic} does not exist")))
    }

    fn timestamp_at(
        &self,
        topic: &Arc<str>,
        partition: u32,
        offset: u64,
    ) -> Result<Option<i64>, BrokerError> {
        Ok(self
            .log
            .read(topic, partition, offset, 1, usize::MAX)?
            .first()
            .map(|record| record.timestamp_ms))
    }
}

#[async_trait]
impl TopicReader for EmbeddedBroker {
    async fn partitions(&self, topic: &str) -> Result<u32, BrokerError> {
        self.known_partitions(topic)
    }

    async fn bounds(&self, topic: &str, partition: u32) -> Result<(u64, u64), BrokerError> {
        self.known_partitions(topic)?;
        let first = self.log.stats(topic, partition)?.first_offset;
        Ok((first, self.log.next_offset(topic, partition)?))
    }

    async fn offset_at(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<u64, BrokerError> {
        let (mut low, mut high) = self.bounds(topic, partition).await?;
        let topic: Arc<str> = Arc::from(topic);
        // The first offset in [low, high) whose record is at or after the instant.
        while low < high {
            let middle = low + (high - low) / 2;
            match self.timestamp_at(&topic, partition, middle)? {
                Some(at) if at >= timestamp_ms => high = middle,
                _ => low = middle + 1,
            }
        }
        Ok(low)
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        end: u64,
        max: usize,
    ) -> Result<Vec<ConsumedRecord>, BrokerError> {
        if from >= end {
            return Ok(Vec::new());
        }
        let max = max.min((end - from).try_into().unwrap_or(usize::MAX));
        let mut records = self
            .log
            .read(&Arc::from(topic), partition, from, max, CHUNK_BYTES)?;
        records.retain(|record| record.offset < end);
        Ok(records)
    }
}
