//! The resend topic (`hookbridge.resend.<subscription>`): where an operator's redrive of
//! dead letters and replay of past events put the events to send again. Only the
//! subscription's own group reads it, so they reach that subscription and no other; they
//! are delivered like any event (in key order, retried, parked, dead-lettered), so a
//! redrive is as durable as a webhook (see `operations`).
//!
//! A resent copy is the original record, value and headers unchanged, plus `hb-resend-*`
//! headers: the operation, where the original sits, who asked and when, and the event's
//! webhook id (a foreign record's id is derived from where it sits, which a copy changes).
//!
//! A replayed copy never overtakes its original: one of an event not delivered yet (its
//! key failing, or its partition changing hands) waits until the original is done on its
//! live partition and its key is not parked there, so the key's events are first sent in
//! publish order. (A redriven dead letter's original is done: it was dead-lettered.)

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use bytestring::ByteString;
use tokio_util::sync::CancellationToken;

use super::event::Event;
use super::runtime::SubscriptionRuntime;
use crate::broker::PartitionCalls;
use crate::broker::completion::key_hash;

/// How often a replayed copy looks again whether its original is done.
const ORIGINAL_POLL: Duration = Duration::from_secs(1);

/// Where a resent event's original sits, when that is a partition of one of the
/// subscription's topics (a replay's; a redrive's original is a dead letter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
}

impl Original {
    pub fn of(event: &Event, topics: &[String]) -> Option<Original> {
        let source = event.record.header(HEADER_SOURCE)?;
        let source = std::str::from_utf8(source).ok()?;
        let (rest, offset) = source.rsplit_once('/')?;
        let (topic, partition) = rest.rsplit_once('/')?;
        if !topics.iter().any(|t| t == topic) {
            return None;
        }
        Some(Original {
            topic: topic.to_string(),
            partition: partition.parse().ok()?,
            offset: offset.parse().ok()?,
        })
    }

    /// Waits until the original is done on its partition and `key` is not parked there,
    /// as this process's worker of that partition knows it, or else the group's last
    /// commit; false if asked to stop first.
    pub async fn wait_until_done(
        &self,
        sub: &SubscriptionRuntime,
        calls: &PartitionCalls,
        key: Option<&Bytes>,
        stop: &CancellationToken,
    ) -> bool {
        let parked_key = key.map(|k| key_hash(k));
        loop {
            let done = match sub.progress.of(&self.topic, self.partition) {
                Some(done) => Some(done),
                None => calls
                    .stored(&self.topic, self.partition)
                    .await
                    .ok()
                    .flatten(),
            };
            if done.is_some_and(|done| {
                done.is_done(self.offset) && !done.parked.iter().any(|p| Some(p.key) == parked_key)
            }) {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep(ORIGINAL_POLL) => {}
                _ = stop.cancelled() => return false,
            }
        }
    }
}

/// The operation that resent the event.
pub const HEADER_OPERATION: &str = "hb-resend-operation";
/// Where the original sits: `<topic>/<partition>/<offset>`.
pub const HEADER_SOURCE: &str = "hb-resend-source";
/// Who asked (as the operator's client said).
pub const HEADER_BY: &str = "hb-resend-by";
/// When the operation started (RFC 3339).
pub const HEADER_AT: &str = "hb-resend-at";
/// The event's webhook id.
pub const HEADER_ID: &str = "hb-resend-id";

/// An event read from the resend topic takes back its webhook id, and starts afresh: its
/// retries and `max_age` count from when it was resent, not from its first arrival.
pub fn restore(event: &mut Event) {
    if let Some(id) = event
        .record
        .header(HEADER_ID)
        .and_then(|v| ByteString::try_from(v.clone()).ok())
        .filter(|id| !id.is_empty())
    {
        event.id = id;
    }
    let resent = super::event::record_time(&event.record);
    event.received_at = resent.min(SystemTime::now());
    event.prior_attempts = 0;
}
