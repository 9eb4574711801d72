//! One event of a key on its way at a time, across the partitions a subscription delivers
//! in this process (under `ordering: partition`, one event of a partition number).
//!
//! A key's live events share one lane of one partition, but its redriven and replayed
//! events come from the resend topic, read by another partition's worker, and a parked
//! key's from the parking topic. Partition `p` of every topic of a subscription is given
//! to one replica (NATS leases and Kafka's range assignment alike, see
//! ARCHITECTURE §6.1), and a key lands on the same partition number of each topic, so all
//! of a key's events are delivered by one process: this lock makes them one lane there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::OwnedMutexGuard;

/// What one event at a time is on its way for: a key, or under `ordering: partition` a
/// partition number (of the subscription's topics, live, parking and resend alike).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ordered {
    Key(Bytes),
    Partition(u32),
}

/// A key's turn, and how many events hold or wait for it.
type Turn = (Arc<tokio::sync::Mutex<()>>, usize);

/// The keys with an event on its way (or waiting for one to finish).
#[derive(Default)]
pub struct KeyLocks {
    keys: Mutex<HashMap<Ordered, Turn>>,
}

/// Held while one event of the key is on its way; the next waits for it to drop.
pub struct KeyLock<'a> {
    locks: &'a KeyLocks,
    key: Ordered,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyLocks {
    /// Waits until no other event of `key` is on its way, and takes its place. Waiters
    /// are served in the order they came.
    pub async fn lock(&self, key: &Ordered) -> KeyLock<'_> {
        let lock = {
            let mut keys = self.keys.lock().expect("key locks");
            let (lock, users) = keys.entry(key.clone()).or_default();
            *users += 1;
            lock.clone()
        };
        // Made before the wait, so that a wait given up (its future dropped) still counts
        // itself out.
        let mut held = KeyLock {
            locks: self,
            key: key.clone(),
            guard: None,
        };
        held.guard = Some(lock.lock_owned().await);
        held
    }

    /// How many keys have an event on its way or waiting (for tests of the bound).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.lock().expect("key locks").len()
    }
}

impl Drop for KeyLock<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut keys = self.locks.keys.lock().expect("key locks");
        // Forgotten once nobody holds or waits for it: the map holds only keys in use.
        if let Some((_, users)) = keys.get_mut(&self.key) {
            *users -= 1;
            if *users == 0 {
                keys.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_event_of_a_key_at_a_time_and_nothing_kept_after() {
        let locks = Arc::new(KeyLocks::default());
        let key = Ordered::Key(Bytes::from_static(b"k"));
        let first = locks.lock(&key).await;
        let waiting = {
            let (locks, key) = (locks.clone(), key.clone());
            tokio::spawn(async move {
                let _second = locks.lock(&key).await;
            })
        };
        // Another key is not held up.
        drop(
            locks
                .lock(&Ordered::Key(Bytes::from_static(b"other")))
                .await,
        );
        drop(locks.lock(&Ordered::Partition(0)).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "the second waits for the first");
        drop(first);
        waiting.await.unwrap();
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn a_wait_given_up_is_forgotten() {
        let locks = KeyLocks::default();
        let key = Ordered::Key(Bytes::from_static(b"k"));
        let first = locks.lock(&key).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(10), locks.lock(&key)).await;
        assert!(gave_up.is_err());
        drop(first);
        assert_eq!(locks.len(), 0);
    }
}
