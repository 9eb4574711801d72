//! Reading a whole topic in order, partition after partition, a chunk at a time: what
//! every operation does with the dead-letter, resend or source topics.

use std::sync::Arc;

use crate::broker::{BrokerError, ConsumedRecord, TopicReader};

/// Records read per request: all an operation holds at once (64 records of 256 KiB are
/// 16 MiB), whatever the topic's size.
pub const CHUNK: usize = 64;

/// Where a scan is: each partition is read from its start (or a given position) to the end
/// it had when the scan reached it.
pub struct TopicScan {
    reader: Arc<dyn TopicReader>,
    topic: String,
    partitions: u32,
    partition: u32,
    /// The next offset to read and the end, in the current partition; `None` before it
    /// is opened.
    range: Option<(u64, u64)>,
    /// Where to start in the first partition instead of its start.
    start_at: Option<u64>,
    /// Where each partition ends for this scan, instead of its end when reached.
    ends: Option<Vec<u64>>,
}

impl TopicScan {
    /// Every retained record of `topic`.
    pub async fn new(reader: Arc<dyn TopicReader>, topic: &str) -> Result<TopicScan, BrokerError> {
        TopicScan::after(reader, topic, None).await
    }

    /// The records after `position` (`partition`, `offset`): the rest of that partition,
    /// then the partitions after it.
    pub async fn after(
        reader: Arc<dyn TopicReader>,
        topic: &str,
        position: Option<(u32, u64)>,
    ) -> Result<TopicScan, BrokerError> {
        let partitions = reader.partitions(topic).await?;
        Ok(TopicScan {
            reader,
            topic: topic.to_string(),
            partitions,
            partition: position.map_or(0, |(p, _)| p),
            range: None,
            start_at: position.map(|(_, offset)| offset + 1),
            ends: None,
        })
    }

    /// Every record of `topic` below `ends` (one per partition, as [`TopicScan::ends`] gave
    /// them): the same records a scan read before, and none written since.
    pub async fn until(
        reader: Arc<dyn TopicReader>,
        topic: &str,
        ends: Vec<u64>,
    ) -> Result<TopicScan, BrokerError> {
        let mut scan = TopicScan::new(reader, topic).await?;
        scan.ends = Some(ends);
        Ok(scan)
    }

    /// Where each partition of the topic ends now.
    pub async fn ends(&self) -> Result<Vec<u64>, BrokerError> {
        let mut ends = Vec::with_capacity(self.partitions as usize);
        for partition in 0..self.partitions {
            ends.push(self.reader.bounds(&self.topic, partition).await?.1);
        }
        Ok(ends)
    }

    /// The next records in order; `None` once every partition is read.
    pub async fn next(&mut self) -> Result<Option<Vec<ConsumedRecord>>, BrokerError> {
        while self.partition < self.partitions {
            let (from, end) = match self.range {
                Some(range) => range,
                None => {
                    let (first, end_now) = self.reader.bounds(&self.topic, self.partition).await?;
                    let end = self
                        .ends
                        .as_ref()
                        .and_then(|ends| ends.get(self.partition as usize).copied())
                        .map_or(end_now, |end| end.min(end_now));
                    let from = self.start_at.take().map_or(first, |at| at.max(first));
                    (from, end)
                }
            };
            let chunk = self
                .reader
                .read(&self.topic, self.partition, from, end, CHUNK)
                .await?;
            match chunk.last() {
                Some(last) => {
                    self.range = Some((last.offset + 1, end));
                    return Ok(Some(chunk));
                }
                None => {
                    self.partition += 1;
                    self.range = None;
                }
            }
        }
        Ok(None)
    }
}
