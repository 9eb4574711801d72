//! Writing to a subscription's resend topic: the copies, what was sent before, the pace.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::broker::{Broker, ConsumedRecord, Record};
use crate::delivery::{copy_record, resend};

use super::scan::TopicScan;
use super::{Operation, OperationError};

/// `topic/partition/offset`: where an original record sits.
pub fn source(record: &ConsumedRecord) -> String {
    format!("{}/{}/{}", record.topic, record.partition, record.offset)
}

/// The sources the resend topic holds copies of (within its retention): what earlier
/// operations sent again. Kept per source partition as ranges of offsets, so that even
/// millions of copies (a whole dead-letter topic redriven) are a handful of ranges.
#[derive(Debug, Default)]
pub struct SentBefore {
    /// Per source topic and partition: the start of each range of offsets sent, and its
    /// end (exclusive).
    ranges: HashMap<(String, u32), BTreeMap<u64, u64>>,
}

impl SentBefore {
    /// Reads the resend topic's copies.
    pub async fn read(broker: &Broker, resend_topic: &str) -> Result<SentBefore, OperationError> {
        let mut sent = SentBefore::default();
        let mut scan = TopicScan::new(broker.reader.clone(), resend_topic).await?;
        while let Some(chunk) = scan.next().await? {
            for source in chunk.iter().filter_map(|r| r.header(resend::HEADER_SOURCE)) {
                if let Some((topic, partition, offset)) = parse_source(source) {
                    sent.insert(topic, partition, offset);
                }
            }
        }
        Ok(sent)
    }

    /// Whether a copy of `record` was sent before.
    pub fn contains(&self, record: &ConsumedRecord) -> bool {
        let key = (record.topic.to_string(), record.partition);
        self.ranges.get(&key).is_some_and(|ranges| {
            ranges
                .range(..=record.offset)
                .next_back()
                .is_some_and(|(_, &end)| record.offset < end)
        })
    }

    fn insert(&mut self, topic: &str, partition: u32, offset: u64) {
        let ranges = self
            .ranges
            .entry((topic.to_string(), partition))
            .or_default();
        let (mut start, mut end) = (offset, offset + 1);
        if let Some((&before, &before_end)) = ranges.range(..=offset).next_back()
            && before_end >= offset
        {
            start = before;
            end = end.max(before_end);
        }
        if let Some(after_end) = ranges.remove(&end) {
            end = after_end;
        }
        ranges.insert(start, end);
    }
}

/// `topic/partition/offset`, as [`source`] wrote it.
fn parse_source(source: &[u8]) -> Option<(&str, u32, u64)> {
    let source = std::str::from_utf8(source).ok()?;
    let (rest, offset) = source.rsplit_once('/')?;
    let (topic, partition) = rest.rsplit_once('/')?;
    Some((topic, partition.parse().ok()?, offset.parse().ok()?))
}

/// The copy of `original` (an event with webhook id `id`) for the resend topic.
pub fn copy(
    operation: &Operation,
    resend_topic: &str,
    original: &ConsumedRecord,
    id: &str,
) -> Record {
    let headers = vec![
        (resend::HEADER_OPERATION, operation.id.clone()),
        (resend::HEADER_SOURCE, source(original)),
        (resend::HEADER_BY, operation.requested_by.clone()),
        (resend::HEADER_AT, operation.started_at.clone()),
        (resend::HEADER_ID, id.to_string()),
    ];
    // Unique per operation: a broker that deduplicates by record id (JetStream) keeps a
    // second, forced operation's copy.
    let record_id = format!("{id}.resend.{}", operation.id);
    copy_record(original, resend_topic, "hb-resend-", record_id, headers)
}

/// Writes records one after the other (so a key's records keep their order), at most
/// `rate` per second, retrying each until the broker takes it. Stops early, without error,
/// when the operation is cancelled.
pub struct Sender {
    broker: Broker,
    interval: Option<Duration>,
    next_at: tokio::time::Instant,
}

impl Sender {
    pub fn new(broker: Broker, rate: Option<f64>) -> Sender {
        Sender {
            broker,
            interval: rate
                .filter(|r| *r > 0.0)
                .map(|r| Duration::from_secs_f64(1.0 / r)),
            next_at: tokio::time::Instant::now(),
        }
    }

    /// False if the operation was cancelled before the record was taken.
    pub async fn send(&mut self, operation: &Operation, record: Record) -> bool {
        if let Some(interval) = self.interval {
            tokio::select! {
                _ = tokio::time::sleep_until(self.next_at) => {}
                _ = operation.cancelled() => return false,
            }
            self.next_at = self.next_at.max(tokio::time::Instant::now() - interval) + interval;
        }
        let mut wait = Duration::from_millis(100);
        loop {
            if operation.is_cancelled() {
                return false;
            }
            match self.broker.publisher.publish(record.clone()).await {
                Ok(_) => {
                    operation.update(|p| p.sent += 1);
                    return true;
                }
                Err(e) => {
                    tracing::warn!(operation = %operation.id, topic = %record.topic, error = %e, "cannot write to the resend topic; retrying");
                    operation.update(|p| p.errors += 1);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = operation.cancelled() => return false,
                    }
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_sent_before_are_ranges_however_they_arrive() {
        let mut sent = SentBefore::default();
        for offset in [5, 7, 6, 9, 1, 2, 3, 4, 100] {
            sent.insert("dlq", 0, offset);
        }
        assert_eq!(
            sent.ranges[&("dlq".to_string(), 0)],
            BTreeMap::from([(1, 8), (9, 10), (100, 101)])
        );
        let record = |partition, offset| ConsumedRecord {
            topic: "dlq".into(),
            partition,
            offset,
            timestamp_ms: 0,
            key: None,
            headers: Vec::new(),
            value: Default::default(),
        };
        for offset in [1, 7, 9, 100] {
            assert!(sent.contains(&record(0, offset)), "{offset}");
        }
        for offset in [0, 8, 10, 99, 101] {
            assert!(!sent.contains(&record(0, offset)), "{offset}");
        }
        assert!(!sent.contains(&record(1, 5)), "another partition");
    }
}
