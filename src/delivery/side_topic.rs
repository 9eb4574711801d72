//! Side topics: the topics delivery itself writes to, beside the ones it reads. Dead
//! letters and parked events are copies of a consumed record, made and published here the
//! same way; an operator's resent events are copies made here too (`operations` writes
//! them at its own pace).

use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use tokio_util::sync::CancellationToken;

use super::runtime::SubscriptionRuntime;
use crate::broker::{ConsumedRecord, Receipt, Record, RecordHeader};
use crate::envelope;

/// A copy of a record for a topic hookbridge writes (dead letters, parked and resent
/// events): key, value and headers unchanged, but for the headers starting with `prefix`
/// and the record id, which the copy sets anew, followed by `headers`.
pub fn copy(
    original: &ConsumedRecord,
    topic: &str,
    prefix: &str,
    record_id: String,
    headers: Vec<(&'static str, String)>,
) -> Record {
    let mut copied: Vec<RecordHeader> = original
        .headers
        .iter()
        .filter(|h| !h.name.starts_with(prefix) && h.name != envelope::HEADER_RECORD_ID)
        .cloned()
        .collect();
    copied.extend(
        std::iter::once((envelope::HEADER_RECORD_ID, record_id))
            .chain(headers)
            .map(|(name, value)| RecordHeader {
                name: ByteString::from_static(name),
                value: Bytes::from(value),
            }),
    );
    Record {
        topic: topic.to_string(),
        key: original.key.clone(),
        headers: copied,
        value: original.value.clone(),
    }
}

/// Publishes a record the delivery engine writes (a dead letter, a parked event), retrying
/// with backoff until the broker takes it; `None` if asked to stop first.
pub async fn publish(
    sub: &SubscriptionRuntime,
    record: Record,
    stop: &CancellationToken,
) -> Option<Receipt> {
    let mut wait = Duration::from_millis(100);
    loop {
        match sub.publisher.publish(record.clone()).await {
            Ok(receipt) => return Some(receipt),
            Err(e) => {
                tracing::error!(subscription = %sub.name, topic = %record.topic, error = %e, "publish failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return None,
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}
