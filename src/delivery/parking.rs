//! The parking topic: where a key that keeps failing goes on retrying, so its partition's
//! commit point can move on (G8).
//!
//! A lane whose event has failed for longer than `retry.park_after` sends it to the
//! subscription's parking topic, and the key is *parked*: its queued events, and its later
//! events as they arrive, follow it there, in order, each one done on the partition as soon
//! as the parking topic has it. The subscription's group reads the parking topic like any of
//! its topics, so the parked events are delivered by the same lanes, retries, breaker and
//! completion tracking, and are dead-lettered by `max_attempts`/`max_age` like any other.
//! A parking partition never parks again: its keys retry in place there.
//!
//! The key stays parked until the last event it sent is done on the parking topic (the
//! group's stored completion of that parking partition says so), and only then do its new
//! events go to the subscriber directly: no event of a key is sent before an earlier one is
//! done, across the switch in both directions. A key whose events keep coming would never
//! see its last one done while each new one follows it there, so once the parking topic is
//! seen delivering the key's events again, the key *drains*: its new events wait on the
//! partition instead, until the parked ones are done (then they go directly) or until
//! `park_after` passes without that (then they follow to the parking topic after all).
//! Which keys are parked ([`super::parked_keys`]) is stored with every commit of the
//! partition, so it holds across restarts and moves too, and so does where their events
//! went: when the parking topic changes, what is left in the former one is carried over
//! ([`super::parking_carry`]).
//!
//! A parked copy is the original record, value and headers unchanged, plus `hb-parked-*`
//! headers that keep what the copy must not lose: the webhook id and arrival time of a
//! foreign record (otherwise derived from where it sits), and the attempts made so far.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytestring::ByteString;
use tokio_util::sync::CancellationToken;

use super::event::Event;
use super::runtime::SubscriptionRuntime;
use super::side_topic;
use crate::broker::{ConsumedRecord, Receipt, Record};

const HEADER_ID: &str = "hb-parked-id";
const HEADER_RECEIVED_AT: &str = "hb-parked-received-at";
const HEADER_ATTEMPTS: &str = "hb-parked-attempts";
const HEADER_FROM: &str = "hb-parked-from";

/// The parked copy of an event.
pub fn record(sub: &SubscriptionRuntime, event: &Event, attempts: u32) -> Record {
    let received_ms = event
        .received_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let from = format!(
        "{}/{}/{}",
        event.record.topic, event.record.partition, event.record.offset
    );
    let headers = vec![
        (HEADER_ID, event.id.to_string()),
        (HEADER_RECEIVED_AT, received_ms.to_string()),
        (HEADER_ATTEMPTS, attempts.to_string()),
        (HEADER_FROM, from),
    ];
    // Parking one event again (after a restart) is the same record: brokers that
    // deduplicate (JetStream's Nats-Msg-Id) keep one.
    let record_id = format!("{}.park.{}", event.id, sub.name);
    side_topic::copy(
        &event.record,
        &sub.parking_topic,
        "hb-parked-",
        record_id,
        headers,
    )
}

/// Whether a record of a parking topic is the parked copy of an event of `topic`'s
/// `partition`.
pub fn came_from(record: &ConsumedRecord, topic: &str, partition: u32) -> bool {
    record.header(HEADER_FROM).is_some_and(|from| {
        let prefix = format!("{topic}/{partition}/");
        from.starts_with(prefix.as_bytes())
    })
}

/// A parked copy, read from a former parking topic, for the current one: unchanged, so it
/// keeps what it kept (and a broker that deduplicates keeps one of two carries).
pub fn copy_over(sub: &SubscriptionRuntime, record: &ConsumedRecord) -> Record {
    Record {
        topic: sub.parking_topic.clone(),
        key: record.key.clone(),
        headers: record.headers.clone(),
        value: record.value.clone(),
    }
}

/// An event read from the parking topic takes back what its copy kept: its webhook id, its
/// arrival time (for `max_age`) and the attempts made before it was parked.
pub fn restore(event: &mut Event) {
    let text = |name: &str| {
        event
            .record
            .header(name)
            .and_then(|v| ByteString::try_from(v.clone()).ok())
    };
    if let Some(id) = text(HEADER_ID).filter(|id| !id.is_empty()) {
        event.id = id;
    }
    if let Some(at) = text(HEADER_RECEIVED_AT)
        .and_then(|v| v.parse::<u64>().ok())
        .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
    {
        event.received_at = at.min(SystemTime::now());
    }
    if let Some(attempts) = text(HEADER_ATTEMPTS).and_then(|v| v.parse().ok()) {
        event.prior_attempts = attempts;
    }
}

/// Sends the event to the parking topic, retrying until the broker takes it; `None` if
/// asked to stop first (the event then stays pending on its partition).
pub async fn publish(
    sub: &SubscriptionRuntime,
    event: &Event,
    attempts: u32,
    stop: &CancellationToken,
) -> Option<Receipt> {
    let receipt = side_topic::publish(sub, record(sub, event, attempts), stop).await?;
    tracing::debug!(subscription = %sub.name, id = %event.id, partition = receipt.partition, offset = receipt.offset, "event parked");
    Some(receipt)
}
