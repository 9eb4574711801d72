//! What the partitions this process delivers have done, as their last accepted commits
//! said: where a parked key's review looks first (its parking partition), and what a
//! replayed event waits for (its original's live partition, see `resend`).
//!
//! The broker's stored completion says the same after a commit, except on JetStream, whose
//! stored form is the consumer's ack floor alone: one parked key that keeps failing holds
//! the floor, and every key parked after it would look not done and stay parked. A key's
//! parking and resend partitions are delivered by the process that delivers the key's own
//! partition (partitions are shared by number, ARCHITECTURE §6.1), so its worker's
//! knowledge is at hand; the broker is asked only when this process does not deliver that
//! partition.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::broker::Completion;

type Unit = (Arc<str>, u32);

#[derive(Default)]
pub struct PartitionProgress {
    accepted: Mutex<HashMap<Unit, Completion>>,
}

impl PartitionProgress {
    /// A commit of `topic`'s `partition` was accepted.
    pub fn accepted(&self, topic: &Arc<str>, partition: u32, completion: &Completion) {
        self.accepted
            .lock()
            .expect("partition progress")
            .insert((topic.clone(), partition), completion.clone());
    }

    /// The partition's worker let it go: what it knew may be overtaken elsewhere.
    pub fn forget(&self, topic: &Arc<str>, partition: u32) {
        self.accepted
            .lock()
            .expect("partition progress")
            .remove(&(topic.clone(), partition));
    }

    /// What the partition's worker here last committed, if it is delivered here.
    pub fn of(&self, topic: &str, partition: u32) -> Option<Completion> {
        self.accepted
            .lock()
            .expect("partition progress")
            .get(&(Arc::from(topic), partition))
            .cloned()
    }
}
