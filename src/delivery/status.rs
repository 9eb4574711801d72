//! What an operator sees of a running subscription (`GET /v1/subscriptions`): the partitions
//! this replica delivers and where each stands, the subscriber's last error, and whether
//! delivery is paused.
//!
//! Partition workers write their row on each lag tick (every 2 s) and take it away when they
//! let the partition go; lanes note each failed attempt. Reading is a snapshot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

use crate::rfc3339::rfc3339;

/// One partition this replica delivers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: u32,
    /// The commit point: every record below it is done. `None` before the first commit.
    pub committed: Option<u64>,
    /// The partition's end, as of the last lag reading, when the broker tells it cheaply.
    pub end: Option<u64>,
    /// Records past the commit point, as of the last lag reading.
    pub lag: Option<u64>,
    /// Records the worker holds: queued in lanes or in flight.
    pub held: usize,
    pub parked_keys: usize,
}

/// The subscriber's last failed attempt.
#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    pub at: String,
    pub event_id: String,
    /// The HTTP status, if the subscriber answered.
    pub status: Option<u16>,
    pub error: String,
}

/// The partitions' rows and the last error of one subscription.
#[derive(Debug, Default)]
pub struct StatusBoard {
    partitions: Mutex<BTreeMap<(String, u32), PartitionStatus>>,
    last_error: Mutex<Option<LastError>>,
}

impl StatusBoard {
    /// The row of a partition a worker starts on; the row goes when the guard is dropped.
    pub fn partition(self: &Arc<Self>, topic: &str, partition: u32) -> PartitionRow {
        let key = (topic.to_string(), partition);
        self.partitions.lock().expect("status lock").insert(
            key.clone(),
            PartitionStatus {
                topic: topic.to_string(),
                partition,
                ..PartitionStatus::default()
            },
        );
        PartitionRow {
            board: self.clone(),
            key,
        }
    }

    pub fn failed(&self, event_id: &str, status: Option<u16>, error: &str) {
        *self.last_error.lock().expect("status lock") = Some(LastError {
            at: rfc3339(SystemTime::now()),
            event_id: event_id.to_string(),
            status,
            error: error.to_string(),
        });
    }

    pub fn partitions(&self) -> Vec<PartitionStatus> {
        self.partitions
            .lock()
            .expect("status lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn last_error(&self) -> Option<LastError> {
        self.last_error.lock().expect("status lock").clone()
    }
}

/// A partition worker's row on the board.
pub struct PartitionRow {
    board: Arc<StatusBoard>,
    key: (String, u32),
}

impl PartitionRow {
    pub fn update(&self, update: impl FnOnce(&mut PartitionStatus)) {
        if let Some(row) = self
            .board
            .partitions
            .lock()
            .expect("status lock")
            .get_mut(&self.key)
        {
            update(row);
        }
    }
}

impl Drop for PartitionRow {
    fn drop(&mut self) {
        self.board
            .partitions
            .lock()
            .expect("status lock")
            .remove(&self.key);
    }
}
