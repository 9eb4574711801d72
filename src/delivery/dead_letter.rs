//! The dead-letter topic: where an event goes when it cannot be delivered, so its partition
//! can move on without losing it.
//!
//! A dead letter is the original record, value and headers unchanged (so redriving it is
//! republishing it), plus `hb-dlq-*` headers that say what happened.

use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use super::event::Event;
use super::resend;
use super::runtime::SubscriptionRuntime;
use super::side_topic;
use crate::broker::Record;
use crate::rfc3339::rfc3339;

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
    let record_id = match event.record.header(resend::HEADER_OPERATION) {
        Some(operation) => format!(
            "{}.dlq.{}.{}",
            event.id,
            sub.name,
            String::from_utf8_lossy(operation)
        ),
        None => format!("{}.dlq.{}", event.id, sub.name),
    };
    side_topic::copy(
        &event.record,
        &sub.dead_letter_topic,
        "hb-dlq-",
        record_id,
        headers,
    )
}

/// Publishes a dead letter, retrying until the broker takes it: an event is only done (and
/// its offset committable) once its dead letter is durable. Returns false if asked to stop
/// first, in which case the event stays uncommitted and is redelivered later.
pub async fn publish(
    sub: &SubscriptionRuntime,
    event: &Event,
    failure: &Failure,
    stop: &CancellationToken,
) -> bool {
    let Some(receipt) = side_topic::publish(sub, record(sub, event, failure), stop).await else {
        return false;
    };
    tracing::warn!(
        subscription = %sub.name, id = %event.id, attempts = failure.attempts,
        last_error = %failure.last_error, dead_letter_topic = %sub.dead_letter_topic,
        partition = receipt.partition, offset = receipt.offset, "event dead-lettered"
    );
    true
}
