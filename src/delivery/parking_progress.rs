//! What the parking partitions this process delivers have done, as their last accepted
//! commits said: where a parked key's review looks first.
//!
//! The broker's stored completion says the same after a commit, except on JetStream, whose
//! stored form is the consumer's ack floor alone: one parked key that keeps failing holds
//! the floor, and every key parked after it would look not done and stay parked. A key's
//! parking partition is delivered by the process that delivers the key's own partition
//! (partitions are shared by number, ARCHITECTURE §6.1), so its worker's knowledge is at
//! hand; the broker is asked only when this process does not deliver that partition.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::broker::Completion;

#[derive(Default)]
pub struct ParkingProgress {
    accepted: Mutex<HashMap<u32, Completion>>,
}

impl ParkingProgress {
    /// A commit of parking partition `partition` was accepted.
    pub fn accepted(&self, partition: u32, completion: &Completion) {
        self.accepted
            .lock()
            .expect("parking progress")
            .insert(partition, completion.clone());
    }

    /// The partition's worker let it go: what it knew may be overtaken elsewhere.
    pub fn forget(&self, partition: u32) {
        self.accepted
            .lock()
            .expect("parking progress")
            .remove(&partition);
    }

    /// What the partition's worker here last committed, if it is delivered here.
    pub fn of(&self, partition: u32) -> Option<Completion> {
        self.accepted
            .lock()
            .expect("parking progress")
            .get(&partition)
            .cloned()
    }
}
