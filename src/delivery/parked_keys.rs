//! A partition's parked keys (see [`super::parking`]): which keys are parked, where their
//! last parked event went, and whether their new events follow it there, wait for it
//! (draining), or go to the subscriber again (unparked). Stored with every commit of the
//! partition as 64-bit digests, at most `MAX_PARKED`, each with the parking topic its
//! events went to: the subscription's parking topic may change, and keys parked in a former
//! one are carried over to it ([`super::parking_carry`]) before the partition is delivered.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::broker::completion::{MAX_PARKED, ParkedKey, key_hash};
use crate::broker::{Completion, Receipt};

/// A partition's parked keys.
#[derive(Debug, Default)]
pub struct ParkedKeys {
    /// The subscription's parking topic, where keys parked from now on go.
    topic: Arc<str>,
    keys: HashMap<u64, Parked>,
    /// The places taken in the set: its keys, and events that decided to park and have
    /// not come back yet. Shared with the lanes, which take a place when they park.
    room: ParkingRoom,
}

/// The places in a partition's parked set, `MAX_PARKED` in all, so that the set never
/// outgrows what a commit stores. A lane takes one at the moment its event parks (not
/// before: a key that may never fail holds none); a key that finds none retries in place
/// and tries again at its next failure.
#[derive(Debug, Clone, Default)]
pub struct ParkingRoom {
    taken: Arc<AtomicUsize>,
}

impl ParkingRoom {
    /// Takes a place; false when every place is taken.
    pub fn take(&self) -> bool {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < MAX_PARKED).then_some(taken + 1)
            })
            .is_ok()
    }

    /// Gives `n` places back: keys unparked, or an event that took one and did not park.
    pub fn give_back(&self, n: usize) {
        let _ = self
            .taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                Some(taken.saturating_sub(n))
            });
    }
}

#[derive(Debug)]
struct Parked {
    /// The key, once one of its events was seen since this worker started.
    key: Option<Bytes>,
    /// The parking topic its events went to.
    topic: Arc<str>,
    partition: u32,
    last: u64,
    /// `last` when the parking partition was last looked at.
    seen_last: Option<u64>,
    /// Since when the key's new events wait for its parked ones instead of following them.
    draining_since: Option<Instant>,
}

impl Parked {
    fn new(key: Option<Bytes>, topic: Arc<str>, partition: u32, last: u64) -> Parked {
        Parked {
            key,
            topic,
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

/// Keys parked in a former parking topic's partition, to carry over to the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stranded {
    pub topic: Arc<str>,
    pub partition: u32,
    /// The keys' digests, each with the offset of its last event there.
    pub keys: HashMap<u64, u64>,
}

impl ParkedKeys {
    /// No key parked; keys parked from now on go to `topic`.
    pub fn new(topic: &str) -> ParkedKeys {
        ParkedKeys {
            topic: Arc::from(topic),
            ..ParkedKeys::default()
        }
    }

    /// The keys a previous owner stored with its last commit; `topic` is the subscription's
    /// parking topic now (and was, for keys stored without one).
    pub fn resumed(parked: &[ParkedKey], topic: &str) -> ParkedKeys {
        let topic: Arc<str> = Arc::from(topic);
        ParkedKeys {
            keys: parked
                .iter()
                .map(|p| {
                    let in_topic = p.topic.clone().unwrap_or_else(|| topic.clone());
                    (p.key, Parked::new(None, in_topic, p.partition, p.last))
                })
                .collect(),
            room: ParkingRoom {
                taken: Arc::new(AtomicUsize::new(parked.len())),
            },
            topic,
        }
    }

    /// Keys parked in another topic than the current parking topic, by partition there.
    pub fn stranded(&self) -> Vec<Stranded> {
        let mut stranded: Vec<Stranded> = Vec::new();
        for (&key, p) in self.keys.iter().filter(|(_, p)| p.topic != self.topic) {
            match stranded
                .iter_mut()
                .find(|s| s.topic == p.topic && s.partition == p.partition)
            {
                Some(s) => {
                    s.keys.insert(key, p.last);
                }
                None => stranded.push(Stranded {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    keys: HashMap::from([(key, p.last)]),
                }),
            }
        }
        stranded
    }

    /// A stranded key's events not done yet were copied to the current parking topic, the
    /// last at `receipt`; with `None`, none was left to copy: the key is unparked.
    pub fn moved(&mut self, key: u64, receipt: Option<Receipt>) {
        match receipt {
            Some(receipt) => {
                if let Some(parked) = self.keys.get_mut(&key) {
                    *parked = Parked::new(
                        parked.key.take(),
                        self.topic.clone(),
                        receipt.partition,
                        receipt.offset,
                    );
                }
            }
            None => {
                if self.keys.remove(&key).is_some() {
                    self.room.give_back(1);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The set's places, for the lanes: an event parks only with a place taken.
    pub fn room(&self) -> ParkingRoom {
        self.room.clone()
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

    /// `key`'s event went to the parking topic at `receipt`; a key not parked yet fills the
    /// place its event took (`ParkingRoom::take`). A key parked already keeps
    /// what the reviews learnt about it: a key whose events keep coming is forwarding all
    /// the time, and would otherwise never be seen making progress there, so never drain.
    pub fn sent(&mut self, key: &Bytes, receipt: Receipt) {
        let parked = self
            .keys
            .entry(key_hash(key))
            .or_insert_with(|| Parked::new(None, self.topic.clone(), 0, 0));
        parked.key.get_or_insert_with(|| key.clone());
        parked.topic = self.topic.clone();
        parked.partition = receipt.partition;
        parked.last = receipt.offset;
    }

    /// The parking partitions to look at: those of parked keys with nothing on the way
    /// there (`busy` says whether a key has an event in its lane).
    pub fn idle_partitions(&self, busy: impl Fn(&Bytes) -> bool) -> Vec<u32> {
        let mut partitions: Vec<u32> = self
            .keys
            .values()
            .filter(|p| p.topic == self.topic && !p.key.as_ref().is_some_and(&busy))
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
        let mut unparked = 0;
        self.keys.retain(|_, p| {
            let elsewhere = p.topic != self.topic || p.partition != partition;
            if elsewhere || p.key.as_ref().is_some_and(&busy) {
                return true;
            }
            if done.is_done(p.last) {
                review.unparked.extend(p.key.clone());
                unparked += 1;
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
        self.room.give_back(unparked);
        review
    }

    /// What goes with the partition's commits.
    pub fn snapshot(&self) -> Vec<ParkedKey> {
        let mut parked: Vec<ParkedKey> = self
            .keys
            .iter()
            .map(|(&key, p)| ParkedKey {
                key,
                topic: Some(p.topic.clone()),
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
        let mut parked = ParkedKeys::new("park");
        assert!(parked.room().take(), "a place for A");
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

    #[test]
    fn keys_parked_in_a_former_parking_topic_are_stranded_until_carried_over() {
        let stored = |key, last| ParkedKey {
            key,
            topic: Some(Arc::from("park.old")),
            partition: 2,
            last,
        };
        let mut parked = ParkedKeys::resumed(&[stored(1, 10), stored(2, 11)], "park.new");
        let stranded = parked.stranded();
        assert_eq!(stranded.len(), 1, "{stranded:?}");
        assert_eq!(stranded[0].keys, HashMap::from([(1, 10), (2, 11)]));
        assert!(
            parked.idle_partitions(|_| false).is_empty(),
            "not reviewed against the new topic's partitions"
        );
        parked.moved(1, Some(receipt(40)));
        parked.moved(2, None);
        assert!(parked.stranded().is_empty());
        let snapshot = parked.snapshot();
        assert_eq!(snapshot.len(), 1, "key 2 had nothing left: unparked");
        assert_eq!(snapshot[0].topic.as_deref(), Some("park.new"));
        assert_eq!(snapshot[0].last, 40);
        assert!(parked.room().take(), "key 2's place is free again");
    }

    #[test]
    fn the_parked_set_has_max_parked_places_given_back_when_keys_unpark() {
        let mut parked = ParkedKeys::new("park");
        let room = parked.room();
        for n in 0..MAX_PARKED as u64 {
            assert!(room.take(), "place {n}");
            parked.sent(&Bytes::from(n.to_string()), receipt(n));
        }
        assert!(!room.take(), "every place is taken");
        let idle = |_: &Bytes| false;
        let review = parked.review(0, &Completion::at(1), idle, Duration::from_secs(60));
        assert_eq!(review.unparked, vec![Bytes::from("0")]);
        assert!(room.take(), "an unparked key's place is free again");
        assert!(!room.take());
    }
}
