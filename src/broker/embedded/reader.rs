//! Feeds a consumer group: one task per partition reads the log from the group's committed
//! offset and hands records to the partition's bounded channel.
//!
//! The channel is the read-ahead bound: when the engine stops pulling, the task blocks on
//! `send` and reads nothing more, so a stalled subscriber costs a [`read_ahead`] channel's
//! worth of memory per partition however long the backlog grows. New records are noticed through the
//! writer's high-water watch, not by polling.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::log::Log;
use super::writer::TopicHandle;
use crate::broker::read_ahead;
use crate::broker::{
    BrokerError, Committer, ConsumedRecord, PartitionEvent, PartitionHandle, PartitionStream,
    StartFrom, Subscription,
};

/// Records read from disk per read, at most.
const READ_CHUNK: usize = 128;
/// Bytes read from disk per read, at most (one record is always read): what a reader
/// waiting for room in the read-ahead still holds.
const READ_CHUNK_BYTES: usize = 1024 * 1024;
/// At most this many records behind the high-water mark, a read is done inline on the
/// async worker instead of the blocking pool. Records at the tail were just written: they
/// sit in the memtable (or in a table the OS still caches), so reading them takes
/// microseconds, less than handing the read to a blocking thread and back. Those two
/// thread wake-ups were most of an event's CPU at ordinary rates, where every event wakes
/// idle threads (on a VM, an idle vCPU). A backlog may need the disk: the blocking pool.
const TAIL_INLINE: u64 = 32;

/// Stops the readers when the subscription is dropped. The partition handles are kept so
/// the workers' tenure stays held: one process owns every partition of the embedded log.
struct Readers {
    tasks: Vec<JoinHandle<()>>,
    _handles: Vec<PartitionHandle>,
}

impl Drop for Readers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub fn start(
    log: Log,
    group: &str,
    topics: Vec<(String, Arc<TopicHandle>)>,
    start: StartFrom,
    committer: Arc<dyn Committer>,
) -> Result<Subscription, BrokerError> {
    let total: usize = topics.iter().map(|(_, h)| h.partitions as usize).sum();
    let (events, events_rx) = mpsc::channel(total.max(1));
    let mut tasks = Vec::with_capacity(total);
    let mut handles = Vec::with_capacity(total);
    // Every partition belongs to this process: the embedded broker has one member per group.
    for (topic, handle) in topics {
        let topic: Arc<str> = Arc::from(topic);
        for partition in 0..handle.partitions {
            let from = match log.committed(group, &topic, partition)? {
                Some(offset) => offset,
                None => match start {
                    StartFrom::Earliest => *handle.first_offset[partition as usize].borrow(),
                    StartFrom::Latest => *handle.high_water[partition as usize].borrow(),
                },
            };
            let (tx, rx) = read_ahead::channel();
            let (stream, partition_handle) =
                PartitionStream::new(topic.clone(), partition, rx, committer.clone());
            handles.push(partition_handle);
            events
                .try_send(PartitionEvent::Assigned(stream))
                .expect("events channel sized for every partition");
            let reader = PartitionReader {
                log: log.clone(),
                topic: topic.clone(),
                partition,
                handle: handle.clone(),
                next: from,
                tx,
            };
            tasks.push(tokio::spawn(reader.run()));
        }
    }
    Ok(Subscription::new(
        events_rx,
        Some(Box::new(Readers {
            tasks,
            _handles: handles,
        })),
    ))
}

struct PartitionReader {
    log: Log,
    topic: Arc<str>,
    partition: u32,
    handle: Arc<TopicHandle>,
    next: u64,
    tx: read_ahead::RecordSender<ConsumedRecord>,
}

impl PartitionReader {
    async fn run(mut self) {
        let mut high_water = self.handle.high_water[self.partition as usize].subscribe();
        loop {
            let high = *high_water.borrow_and_update();
            if self.next >= high {
                tokio::select! {
                    changed = high_water.changed() => if changed.is_err() { return },
                    _ = self.tx.closed() => return,
                }
                continue;
            }
            let partition = self.partition;
            let read = if high - self.next <= TAIL_INLINE {
                self.log.read(
                    &self.topic,
                    partition,
                    self.next,
                    READ_CHUNK,
                    READ_CHUNK_BYTES,
                )
            } else {
                let (log, topic, from) = (self.log.clone(), self.topic.clone(), self.next);
                match tokio::task::spawn_blocking(move || {
                    log.read(&topic, partition, from, READ_CHUNK, READ_CHUNK_BYTES)
                })
                .await
                {
                    Ok(read) => read,
                    Err(_) => return,
                }
            };
            let chunk = match read {
                Ok(chunk) => chunk,
                Err(e) => {
                    tracing::error!(topic = %self.topic, partition, error = %e, "reading the embedded log failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            let Some(first) = chunk.first() else {
                // Everything up to the high-water mark was removed by retention.
                self.next = high;
                continue;
            };
            if first.offset > self.next {
                tracing::warn!(
                    topic = %self.topic, partition, wanted = self.next, oldest = first.offset,
                    "records were removed by retention before this group read them; skipping ahead"
                );
            }
            for record in chunk {
                self.next = record.offset + 1;
                if self.tx.send(record).await.is_err() {
                    return;
                }
            }
        }
    }
}
