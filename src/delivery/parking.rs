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
//! Which keys are parked is stored with every commit of the partition, so it holds across
//! restarts and moves too.
//!
//! A parked copy is the original record, value and headers unchanged, plus `hb-parked-*`
//! headers that keep what the copy must not lose: the webhook id and arrival time of a
//! foreign record (otherwise derived from where it sits), and the attempts made so far.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use bytestring::ByteString;

use super::dead_letter;
use super::event::Event;
use super::subscription::SubscriptionRuntime;
use crate::broker::completion::{MAX_PARKED, ParkedKey, key_hash};
use crate::broker::{Completion, Receipt, Record};

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
    dead_letter::copy(
        &event.record,
        &sub.parking_topic,
        "hb-parked-",
        record_id,
        headers,
    )
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
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Receipt> {
    let receipt = dead_letter::publish_until_taken(sub, record(sub, event, attempts), stop).await?;
    tracing::debug!(subscription = %sub.name, id = %event.id, partition = receipt.partition, offset = receipt.offset, "event parked");
    Some(receipt)
}

/// A partition's parked keys.
#[derive(Debug, Default)]
pub struct ParkedKeys {
    keys: HashMap<u64, Parked>,
}

#[derive(Debug)]
struct Parked {
    /// The key, once one of its events was seen since this worker started.
    key: Option<Bytes>,
    partition: u32,
    last: u64,
    /// `last` when the parking partition was last looked at.
    seen_last: Option<u64>,
    /// Since when the key's new events wait for its parked ones instead of following them.
    draining_since: Option<Instant>,
}

impl Parked {
    fn new(key: Option<Bytes>, partition: u32, last: u64) -> Parked {
        Parked {
            key,
            partition,
            last,
            seen_last: None,
            draining_since: None,
        }
    }
}

/// What one look at a parking partition changed.
#[derive(Debug, Default)]
pub struct Review {
    /// Keys whose parked events are all done: unparked.
    pub unparked: Vec<Bytes>,
    /// Keys that drained too long: their waiting events follow to the parking topic.
    pub forward_again: Vec<Bytes>,
}

impl ParkedKeys {
    /// The keys a previous owner stored with its last commit.
    pub fn resumed(parked: &[ParkedKey]) -> ParkedKeys {
        ParkedKeys {
            keys: parked
                .iter()
                .map(|p| (p.key, Parked::new(None, p.partition, p.last)))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether another key may be parked.
    pub fn has_room(&self) -> bool {
        self.keys.len() < MAX_PARKED
    }

    /// Whether `key` is parked: its events go to the parking topic, or wait while it
    /// drains.
    pub fn contains(&mut self, key: &Bytes) -> bool {
        self.get(key).is_some()
    }

    /// Whether `key` is draining: its events wait on the partition.
    pub fn is_draining(&mut self, key: &Bytes) -> bool {
        self.get(key).is_some_and(|p| p.draining_since.is_some())
    }

    fn get(&mut self, key: &Bytes) -> Option<&mut Parked> {
        if self.keys.is_empty() {
            return None;
        }
        let parked = self.keys.get_mut(&key_hash(key))?;
        parked.key.get_or_insert_with(|| key.clone());
        Some(parked)
    }

    /// `key`'s event went to the parking topic at `receipt`. A key parked already keeps
    /// what the reviews learnt about it: a key whose events keep coming is forwarding all
    /// the time, and would otherwise never be seen making progress there, so never drain.
    pub fn sent(&mut self, key: &Bytes, receipt: Receipt) {
        let parked = self
            .keys
            .entry(key_hash(key))
            .or_insert_with(|| Parked::new(None, receipt.partition, receipt.offset));
        parked.key.get_or_insert_with(|| key.clone());
        parked.partition = receipt.partition;
        parked.last = receipt.offset;
    }

    /// The parking partitions to look at: those of parked keys with nothing on the way
    /// there (`busy` says whether a key has an event in its lane).
    pub fn idle_partitions(&self, busy: impl Fn(&Bytes) -> bool) -> Vec<u32> {
        let mut partitions: Vec<u32> = self
            .keys
            .values()
            .filter(|p| !p.key.as_ref().is_some_and(&busy))
            .map(|p| p.partition)
            .collect();
        partitions.sort_unstable();
        partitions.dedup();
        partitions
    }

    /// Looks at the keys parked on `partition`, given what is `done` there: a key with
    /// nothing on its way (`busy` says whether its lane has an event out) whose last parked
    /// event is done is unparked; a key whose earlier parked events got done since the last
    /// look starts draining; one that drained longer than `patience` forwards again.
    pub fn review(
        &mut self,
        partition: u32,
        done: &Completion,
        busy: impl Fn(&Bytes) -> bool,
        patience: Duration,
    ) -> Review {
        let mut review = Review::default();
        self.keys.retain(|_, p| {
            if p.partition != partition || p.key.as_ref().is_some_and(&busy) {
                return true;
            }
            if done.is_done(p.last) {
                review.unparked.extend(p.key.clone());
                return false;
            }
            match p.draining_since {
                Some(since) if since.elapsed() > patience => {
                    p.draining_since = None;
                    review.forward_again.extend(p.key.clone());
                }
                None if p.seen_last.is_some_and(|seen| done.is_done(seen)) => {
                    p.draining_since = Some(Instant::now());
                }
                _ => {}
            }
            p.seen_last = Some(p.last);
            true
        });
        review
    }

    /// What goes with the partition's commits.
    pub fn snapshot(&self) -> Vec<ParkedKey> {
        let mut parked: Vec<ParkedKey> = self
            .keys
            .iter()
            .map(|(&key, p)| ParkedKey {
                key,
                partition: p.partition,
                last: p.last,
            })
            .collect();
        parked.sort_unstable_by_key(|p| p.key);
        parked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(offset: u64) -> Receipt {
        Receipt {
            partition: 0,
            offset,
        }
    }

    #[test]
    fn a_key_whose_events_keep_coming_drains_once_the_parking_topic_catches_up() {
        let key = Bytes::from_static(b"A");
        let idle = |_: &Bytes| false;
        let mut parked = ParkedKeys::default();
        parked.sent(&key, receipt(10));
        // First look: nothing done there yet.
        parked.review(0, &Completion::at(0), idle, Duration::from_secs(60));
        // More events follow before the next look, while the parking topic delivers the
        // ones seen at the first look.
        parked.sent(&key, receipt(11));
        parked.sent(&key, receipt(12));
        let review = parked.review(0, &Completion::at(11), idle, Duration::from_secs(60));
        assert!(
            review.unparked.is_empty(),
            "its last parked event is not done yet"
        );
        assert!(
            parked.is_draining(&key),
            "its new events wait for the parked ones"
        );
        // Once the last one is done there, the key is back on the normal path.
        let review = parked.review(0, &Completion::at(13), idle, Duration::from_secs(60));
        assert_eq!(review.unparked, vec![key.clone()]);
        assert!(!parked.contains(&key));
    }
}
