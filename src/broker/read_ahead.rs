//! How far a backend reads ahead of a partition's worker: a channel bounded in records and
//! in bytes.
//!
//! A bound in records alone is a bound in memory only while records are small: 256 records
//! of 256 KiB each are 64 MiB per partition, and a subscription reads several partitions
//! of several topics. The byte budget holds the memory whatever the records' size; a record
//! larger than the whole budget still passes, alone.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// What the byte budget counts of a record.
pub trait Weighed {
    fn bytes(&self) -> usize;
}

/// Records read ahead of a partition's worker, at most.
pub const RECORDS: usize = 256;
/// Bytes of records read ahead of a partition's worker, at most (one record always passes).
pub const BYTES: usize = 4 * 1024 * 1024;

/// A bounded channel of records for one partition's stream.
pub fn channel<R: Weighed>() -> (RecordSender<R>, RecordReceiver<R>) {
    let (tx, rx) = mpsc::channel(RECORDS);
    let budget = Arc::new(Semaphore::new(BYTES));
    (RecordSender { tx, budget }, RecordReceiver { rx })
}

/// The backend's end: waits while the worker's end holds the budget's worth.
pub struct RecordSender<R> {
    tx: mpsc::Sender<(R, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
}

impl<R> Clone for RecordSender<R> {
    fn clone(&self) -> Self {
        RecordSender {
            tx: self.tx.clone(),
            budget: self.budget.clone(),
        }
    }
}

/// The stream was dropped: the partition's worker has let go.
#[derive(Debug)]
pub struct Closed;

impl<R: Weighed> RecordSender<R> {
    /// Hands `record` on, once there is room for it in records and in bytes.
    pub async fn send(&self, record: R) -> Result<(), Closed> {
        let bytes = record.bytes().clamp(1, BYTES) as u32;
        let permit = tokio::select! {
            permit = self.budget.clone().acquire_many_owned(bytes) => permit.map_err(|_| Closed)?,
            _ = self.tx.closed() => return Err(Closed),
        };
        self.tx.send((record, permit)).await.map_err(|_| Closed)
    }

    /// Resolves when the stream is dropped.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The partition stream's end: a record's bytes leave the budget as it is taken.
pub struct RecordReceiver<R> {
    rx: mpsc::Receiver<(R, OwnedSemaphorePermit)>,
}

impl<R> RecordReceiver<R> {
    pub async fn recv(&mut self) -> Option<R> {
        self.rx.recv().await.map(|(record, _permit)| record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Record {
        offset: u64,
        bytes: usize,
    }

    impl Weighed for Record {
        fn bytes(&self) -> usize {
            self.bytes
        }
    }

    fn record(offset: u64, bytes: usize) -> Record {
        Record { offset, bytes }
    }

    #[tokio::test]
    async fn large_records_wait_for_the_byte_budget_and_one_larger_than_it_passes_alone() {
        let (tx, mut rx) = channel();
        let quarter = BYTES / 4;
        for offset in 0..4 {
            tx.send(record(offset, quarter)).await.unwrap();
        }
        let fifth = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            tx.send(record(4, quarter)),
        )
        .await;
        assert!(fifth.is_err(), "a fifth quarter of the budget waited");
        assert_eq!(rx.recv().await.unwrap().offset, 0);
        tx.send(record(4, quarter)).await.unwrap();
        for offset in 1..5 {
            assert_eq!(rx.recv().await.unwrap().offset, offset);
        }
        tx.send(record(5, BYTES * 3)).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().offset, 5);
    }

    #[tokio::test]
    async fn a_sender_waiting_for_room_ends_when_the_stream_is_dropped() {
        let (tx, rx) = channel();
        tx.send(record(0, BYTES)).await.unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(record(1, BYTES)).await }
        });
        drop(rx);
        assert!(waiting.await.unwrap().is_err());
    }
}
