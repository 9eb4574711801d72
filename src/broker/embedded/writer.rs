//! The single writer of the embedded log: one thread that group-commits.
//!
//! Every mutation (appends, offset commits, topic creation, retention) is an [`Op`] sent to
//! this thread. It takes whatever has queued up, writes it as one fjall batch, fsyncs once
//! and answers everyone: a burst of N concurrent webhooks costs one fsync, not N, which is
//! where the embedded broker's throughput comes from. Owning all writes in one thread also
//! makes offset assignment race-free without locks.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fjall::PersistMode;
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};

use super::log::{self, Log, PartitionStats, StoredHeader, StoredRecord, storage_error};
use crate::broker::partitioner::Partitioner;
use crate::broker::{BrokerError, Receipt, Record};

/// At most this many operations share one commit; bounds the latency of the first of them.
const MAX_BATCH_OPS: usize = 4096;
/// A commit slower than this is logged (at debug): the tail latency of every 202 behind it.
const SLOW_COMMIT: Duration = Duration::from_millis(20);
/// Records removed per retention pass and partition, so retention never stalls appends long.
const RETENTION_STEP: usize = 10_000;

pub enum Op {
    Append {
        record: Record,
        reply: oneshot::Sender<Result<Receipt, BrokerError>>,
    },
    Commit {
        group: String,
        topic: String,
        partition: u32,
        /// See `log::encode_cursor`.
        cursor: Vec<u8>,
        reply: oneshot::Sender<Result<(), BrokerError>>,
    },
    EnsureTopics {
        topics: Vec<String>,
        reply: oneshot::Sender<Result<(), BrokerError>>,
    },
    Retention {
        max_age: Option<Duration>,
        max_bytes: Option<u64>,
    },
    /// Answered once everything queued before it is durable.
    Flush { reply: oneshot::Sender<()> },
    /// Like `Flush`, then the writer stops and closes the log; later operations fail.
    Close { reply: oneshot::Sender<()> },
}

/// What readers need to know about a topic: its partitions and a watch per partition that
/// carries the partition's next offset (so a reader knows when there is more to read).
pub struct TopicHandle {
    pub partitions: u32,
    pub high_water: Vec<watch::Sender<u64>>,
    /// First retained offset per partition, for consumers that start from the earliest.
    pub first_offset: Vec<watch::Sender<u64>>,
}

pub type Topics = Arc<RwLock<HashMap<String, Arc<TopicHandle>>>>;

struct PartitionState {
    next_offset: u64,
    stats: PartitionStats,
}

struct TopicState {
    partitions: Vec<PartitionState>,
    handle: Arc<TopicHandle>,
}

pub struct Writer {
    log: Log,
    default_partitions: u32,
    partitioner: Partitioner,
    topics: HashMap<String, TopicState>,
    shared: Topics,
}

impl Writer {
    /// Loads every topic's state from disk.
    pub fn open(log: Log, default_partitions: u32, shared: Topics) -> Result<Writer, BrokerError> {
        let mut writer = Writer {
            log,
            default_partitions,
            partitioner: Partitioner::default(),
            topics: HashMap::new(),
            shared,
        };
        for (topic, partitions) in writer.log.topics()? {
            writer.load_topic(&topic, partitions)?;
        }
        Ok(writer)
    }

    /// Runs until every sender is gone or a `Close` arrives.
    pub fn run(mut self, mut ops: mpsc::Receiver<Op>) {
        let mut batch = Vec::with_capacity(MAX_BATCH_OPS);
        while let Some(first) = ops.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH_OPS {
                match ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            // A close is answered only once the log is flushed and this thread has let go
            // of it, so whoever closed may reopen the directory at once.
            let (closes, rest): (Vec<Op>, Vec<Op>) = batch
                .drain(..)
                .partition(|op| matches!(op, Op::Close { .. }));
            batch = rest;
            let closers: Vec<oneshot::Sender<()>> = closes
                .into_iter()
                .filter_map(|op| match op {
                    Op::Close { reply } => Some(reply),
                    _ => None,
                })
                .collect();
            if !closers.is_empty() {
                // Refuse what arrives from now on; answer it rather than leave it hanging.
                ops.close();
                while let Ok(op) = ops.try_recv() {
                    batch.push(op);
                }
            }
            self.apply(&mut batch);
            if !closers.is_empty() {
                if let Err(e) = self.log.flush() {
                    tracing::warn!(error = %e, "flushing the embedded log on close failed; the next start replays its journal");
                }
                drop(self);
                for reply in closers {
                    let _ = reply.send(());
                }
                return;
            }
            // After the batch is answered, before the next is taken.
            if let Err(e) = self.log.hold_write_buffer() {
                tracing::warn!(error = %e, "sealing the embedded log's memtable failed");
            }
        }
    }

    fn load_topic(&mut self, topic: &str, partitions: u32) -> Result<(), BrokerError> {
        let mut states = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let stats = self.log.stats(topic, p)?;
            let next_offset = self.log.next_offset(topic, p)?.max(stats.first_offset);
            states.push(PartitionState { next_offset, stats });
        }
        let handle = Arc::new(TopicHandle {
            partitions,
            high_water: states
                .iter()
                .map(|s| watch::Sender::new(s.next_offset))
                .collect(),
            first_offset: states
                .iter()
                .map(|s| watch::Sender::new(s.stats.first_offset))
                .collect(),
        });
        self.shared
            .write()
            .expect("topics lock")
            .insert(topic.to_string(), handle.clone());
        self.topics.insert(
            topic.to_string(),
            TopicState {
                partitions: states,
                handle,
            },
        );
        Ok(())
    }

    fn apply(&mut self, batch: &mut Vec<Op>) {
        let mut write = self.log.db.batch();
        let mut created: Vec<String> = Vec::new();
        // Offsets handed out in this batch, to roll back if the commit fails.
        let mut touched: HashMap<(String, u32), (u64, PartitionStats)> = HashMap::new();
        let mut appended = 0u64;
        let now_ms = now_ms();

        let mut results: Vec<Result<Option<Receipt>, BrokerError>> =
            Vec::with_capacity(batch.len());
        for op in batch.iter_mut() {
            let result = match op {
                // The publisher gave up (its deadline passed and the sender got a 503):
                // storing the record now would only make a duplicate of the sender's retry.
                Op::Append { reply, .. } if reply.is_closed() => Err(BrokerError::Closed),
                Op::Append { record, .. } => {
                    appended += 1;
                    self.stage_append(&mut write, &mut created, &mut touched, record, now_ms)
                        .map(Some)
                }
                Op::Commit {
                    group,
                    topic,
                    partition,
                    cursor,
                    ..
                } => {
                    write.insert(
                        &self.log.offsets,
                        log::offset_key(group, topic, *partition),
                        cursor.as_slice(),
                    );
                    Ok(None)
                }
                Op::EnsureTopics { topics, .. } => {
                    for topic in topics.iter() {
                        self.stage_topic(&mut write, &mut created, topic);
                    }
                    Ok(None)
                }
                Op::Retention { max_age, max_bytes } => self
                    .stage_retention(&mut write, &mut touched, *max_age, *max_bytes, now_ms)
                    .map(|_| None),
                Op::Flush { .. } => Ok(None),
                Op::Close { .. } => unreachable!("close is handled by run"),
            };
            results.push(result);
        }
        for (topic, partition) in touched.keys() {
            let stats = self.topics[topic].partitions[*partition as usize].stats;
            write.insert(
                &self.log.meta,
                log::stats_key(topic, *partition),
                log::encode_stats(stats),
            );
        }

        // Appends must be on disk before anyone is told so. Cursor commits and retention ride
        // along handed to the OS but not synced: they survive a crash of this process; a
        // power loss may lose the last ones, which means delivering again what they recorded
        // (or deleting again).
        let synced = appended > 0 || !created.is_empty();
        let mode = if synced {
            PersistMode::SyncAll
        } else {
            PersistMode::Buffer
        };
        let started = Instant::now();
        let committed = write.durability(Some(mode)).commit().map_err(storage_error);
        let took = started.elapsed();
        if took >= SLOW_COMMIT {
            // Almost always the disk's fsync waiting behind other writes (the engine's own
            // flushes and compactions, or a neighbour's): every append in it waited too.
            tracing::debug!(
                took_ms = took.as_millis() as u64,
                ops = batch.len(),
                synced,
                "slow embedded log commit"
            );
        }

        if let Err(e) = &committed {
            tracing::error!(error = %e, "embedded log commit failed");
            for ((topic, partition), (next, stats)) in &touched {
                let state = &mut self
                    .topics
                    .get_mut(topic)
                    .expect("touched topic")
                    .partitions[*partition as usize];
                state.next_offset = *next;
                state.stats = *stats;
            }
            for topic in &created {
                self.topics.remove(topic);
                self.shared.write().expect("topics lock").remove(topic);
            }
        } else {
            if synced {
                let metrics = crate::metrics::metrics();
                metrics.embedded_log_syncs.inc();
                metrics.embedded_log_appends.inc_by(appended);
            }
            for (topic, partition) in touched.keys() {
                let state = &self.topics[topic].partitions[*partition as usize];
                let handle = &self.topics[topic].handle;
                handle.high_water[*partition as usize].send_replace(state.next_offset);
                handle.first_offset[*partition as usize].send_replace(state.stats.first_offset);
            }
        }

        for (op, result) in batch.drain(..).zip(results) {
            let result = match (&committed, result) {
                (Err(e), _) => Err(BrokerError::Storage(e.to_string())),
                (Ok(()), r) => r,
            };
            match op {
                Op::Append { reply, .. } => {
                    let _ = reply.send(result.map(|r| r.expect("appends yield receipts")));
                }
                Op::Commit { reply, .. } | Op::EnsureTopics { reply, .. } => {
                    let _ = reply.send(result.map(|_| ()));
                }
                Op::Flush { reply } => {
                    let _ = reply.send(());
                }
                Op::Close { .. } => unreachable!("close is handled by run"),
                Op::Retention { .. } => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "embedded log retention failed");
                    }
                }
            }
        }
    }

    /// Creates a topic in this batch if it does not exist yet.
    fn stage_topic(
        &mut self,
        write: &mut fjall::OwnedWriteBatch,
        created: &mut Vec<String>,
        topic: &str,
    ) {
        if self.topics.contains_key(topic) {
            return;
        }
        let partitions = self.default_partitions;
        write.insert(
            &self.log.meta,
            log::topic_key(topic),
            partitions.to_be_bytes(),
        );
        let states: Vec<PartitionState> = (0..partitions)
            .map(|_| PartitionState {
                next_offset: 0,
                stats: PartitionStats::default(),
            })
            .collect();
        let handle = Arc::new(TopicHandle {
            partitions,
            high_water: states.iter().map(|_| watch::Sender::new(0)).collect(),
            first_offset: states.iter().map(|_| watch::Sender::new(0)).collect(),
        });
        self.shared
            .write()
            .expect("topics lock")
            .insert(topic.to_string(), handle.clone());
        self.topics.insert(
            topic.to_string(),
            TopicState {
                partitions: states,
                handle,
            },
        );
        created.push(topic.to_string());
    }

    fn stage_append(
        &mut self,
        write: &mut fjall::OwnedWriteBatch,
        created: &mut Vec<String>,
        touched: &mut HashMap<(String, u32), (u64, PartitionStats)>,
        record: &mut Record,
        now_ms: i64,
    ) -> Result<Receipt, BrokerError> {
        // Topics are created on first use, as Kafka's auto.create.topics.enable does.
        self.stage_topic(write, created, &record.topic);
        let topic = self
            .topics
            .get_mut(&record.topic)
            .expect("topic just ensured");
        let partition = self
            .partitioner
            .partition(record.key.as_deref(), topic.partitions.len() as u32);
        let state = &mut topic.partitions[partition as usize];
        touched
            .entry((record.topic.clone(), partition))
            .or_insert((state.next_offset, state.stats));

        let offset = state.next_offset;
        let stored = StoredRecord {
            timestamp_ms: now_ms,
            key: record.key.take(),
            headers: std::mem::take(&mut record.headers)
                .into_iter()
                .map(|h| StoredHeader {
                    name: h.name.into_bytes(),
                    value: h.value,
                })
                .collect(),
            value: std::mem::take(&mut record.value),
        };
        let value = stored.encode_to_vec();
        state.stats.bytes += value.len() as u64;
        state.next_offset += 1;
        write.insert(
            &self.log.records,
            log::record_key(&record.topic, partition, offset),
            value,
        );
        Ok(Receipt { partition, offset })
    }

    /// Deletes, from the head of each partition, records older than `max_age` or beyond
    /// `max_bytes`, a bounded number per pass.
    fn stage_retention(
        &mut self,
        write: &mut fjall::OwnedWriteBatch,
        touched: &mut HashMap<(String, u32), (u64, PartitionStats)>,
        max_age: Option<Duration>,
        max_bytes: Option<u64>,
        now_ms: i64,
    ) -> Result<(), BrokerError> {
        let cutoff_ms = max_age.map(|age| now_ms - age.as_millis() as i64);
        for (name, topic) in self.topics.iter_mut() {
            let topic_name: Arc<str> = Arc::from(name.as_str());
            for (p, state) in topic.partitions.iter_mut().enumerate() {
                let p = p as u32;
                let over_size =
                    |stats: &PartitionStats| max_bytes.is_some_and(|max| stats.bytes > max);
                if cutoff_ms.is_none() && !over_size(&state.stats) {
                    continue;
                }
                let mut removed = 0;
                let before = (state.next_offset, state.stats);
                while removed < RETENTION_STEP && state.stats.first_offset < state.next_offset {
                    let head =
                        self.log
                            .read(&topic_name, p, state.stats.first_offset, 1, usize::MAX)?;
                    let Some(record) = head.into_iter().next() else {
                        break;
                    };
                    let too_old = cutoff_ms.is_some_and(|cutoff| record.timestamp_ms < cutoff);
                    if !too_old && !over_size(&state.stats) {
                        break;
                    }
                    let size = self
                        .log
                        .records
                        .size_of(log::record_key(name, p, record.offset))
                        .map_err(storage_error)?;
                    write.remove(&self.log.records, log::record_key(name, p, record.offset));
                    state.stats.bytes = state
                        .stats
                        .bytes
                        .saturating_sub(u64::from(size.unwrap_or(0)));
                    state.stats.first_offset = record.offset + 1;
                    removed += 1;
                }
                if removed > 0 {
                    tracing::debug!(topic = %name, partition = p, removed, "retention removed records");
                    touched.entry((name.clone(), p)).or_insert(before);
                }
            }
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
