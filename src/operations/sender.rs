//! Writing to a subscription's resend topic: the copies, what was sent before, the pace.

use std::collections::HashSet;
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
/// operations sent again.
pub async fn sent_before(
    broker: &Broker,
    resend_topic: &str,
) -> Result<HashSet<String>, OperationError> {
    let mut sources = HashSet::new();
    let mut scan = TopicScan::new(broker.reader.clone(), resend_topic).await?;
    while let Some(chunk) = scan.next().await? {
        sources.extend(chunk.iter().filter_map(|r| {
            r.header(resend::HEADER_SOURCE)
                .map(|s| String::from_utf8_lossy(s).into_owned())
        }));
    }
    Ok(sources)
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
