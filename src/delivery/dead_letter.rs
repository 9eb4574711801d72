//! The dead-letter topic: where an event goes when it cannot be delivered, so its partition
//! can move on without losing it.
//!
//! A dead letter is the original record, value and headers unchanged (so redriving it is
//! republishing it), plus `hb-dlq-*` headers that say what happened.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use bytestring::ByteString;

use super::event::Event;
use super::payload::rfc3339;
use super::subscription::SubscriptionRuntime;
use crate::broker::{ConsumedRecord, Receipt, Record, RecordHeader};
use crate::envelope;

/// Why an event was given up on.
#[derive(Debug, Clone)]
pub struct Failure {
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: String,
}

pub fn record(sub: &SubscriptionRuntime, event: &Event, failure: &Failure) -> Record {
    let mut headers = vec![
        ("hb-dlq-subscription", sub.name.clone()),
        ("hb-dlq-id", event.id.to_string()),
        ("hb-dlq-topic", event.record.topic.to_string()),
        ("hb-dlq-partition", event.record.partition.to_string()),
        ("hb-dlq-offset", event.record.offset.to_string()),
        ("hb-dlq-attempts", failure.attempts.to_string()),
    ];
    if let Some(status) = failure.last_status {
        headers.push(("hb-dlq-last-status", status.to_string()));
    }
    headers.push(("hb-dlq-last-error", failure.last_error.clone()));
    headers.push(("hb-dlq-failed-at", rfc3339(SystemTime::now())));
    // Two subscriptions dead-lettering one envelope into one topic are two records; one
    // subscription dead-lettering it again (after a restart) is the same record.
    // A resent event failing again is a new dead letter, not the first one repeated.
    let record_id = match event.record.header(super::resend::HEADER_OPERATION) {
        Some(operation) => format!(
            "{}.dlq.{}.{}",
            event.id,
            sub.name,
            String::from_utf8_lossy(operation)
        ),
        None => format!("{}.dlq.{}", event.id, sub.name),
    };
    copy(
        &event.record,
        &sub.dead_letter_topic,
        "hb-dlq-",
        record_id,
        headers,
    )
}

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

/// Publishes a dead letter, retrying until the broker takes it: an event is only done (and
/// its offset committable) once its dead letter is durable. Returns false if asked to stop
/// first, in which case the event stays uncommitted and is redelivered later.
pub async fn publish(
    sub: &SubscriptionRuntime,
    event: &Event,
    failure: &Failure,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let Some(receipt) = publish_until_taken(sub, record(sub, event, failure), stop).await else {
        return false;
    };
    tracing::warn!(
        subscription = %sub.name, id = %event.id, attempts = failure.attempts,
        last_error = %failure.last_error, dead_letter_topic = %sub.dead_letter_topic,
        partition = receipt.partition, offset = receipt.offset, "event dead-lettered"
    );
    true
}

/// Publishes a record the delivery engine writes (a dead letter, a parked event), retrying
/// with backoff until the broker takes it; `None` if asked to stop first.
pub async fn publish_until_taken(
    sub: &SubscriptionRuntime,
    record: Record,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Receipt> {
    let mut wait = Duration::from_millis(100);
    loop {
        match sub.publisher.publish(record.clone()).await {
            Ok(receipt) => return Some(receipt),
            Err(e) => {
                tracing::error!(subscription = %sub.name, topic = %record.topic, error = %e, "publish failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = super::stopped(stop) => return None,
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}
