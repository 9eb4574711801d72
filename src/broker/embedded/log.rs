//! The on-disk layout of the embedded log, on fjall.
//!
//! fjall was chosen over redb by measurement (bench/storage-choice, BENCHMARKS.md): on
//! fsync'd group commits of 1 KiB records it appended 2.3–2.9× faster, because a commit is
//! one sequential journal write instead of copy-on-write B-tree pages.
//!
//! Keyspaces:
//! - `records`: `topic \0 partition(u32 BE) offset(u64 BE)` → [`StoredRecord`]. Big-endian
//!   numbers make byte order offset order, so a partition is one contiguous, ordered range.
//! - `offsets`: `group \0 topic \0 partition(u32 BE)` → next offset to read (u64 BE).
//! - `meta`: `topic \0 name` → partition count (u32 BE); `stats \0 topic \0 partition` →
//!   first retained offset and retained bytes (u64 BE each), for size-based retention.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fjall::{
    AbstractTree, Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode,
};

use crate::broker::{BrokerError, Completion, ConsumedRecord, RecordHeader};

/// A record as stored: everything but its position, which the key holds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredRecord {
    #[prost(int64, tag = "1")]
    pub timestamp_ms: i64,
    #[prost(bytes = "bytes", optional, tag = "2")]
    pub key: Option<Bytes>,
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<StoredHeader>,
    #[prost(bytes = "bytes", tag = "4")]
    pub value: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredHeader {
    /// Read as bytes (a `string`'s wire format), so that the name is a slice of the stored
    /// record rather than a copy; see [`crate::broker::text`].
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// Where a partition's retained records start and how many bytes they hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionStats {
    pub first_offset: u64,
    pub bytes: u64,
}

#[derive(Clone)]
pub struct Log {
    pub db: Database,
    pub records: Keyspace,
    pub offsets: Keyspace,
    pub meta: Keyspace,
    /// The admin API's subscriptions, by name (see `broker::stored`).
    pub subscriptions: Keyspace,
}

/// The block cache, shared by every keyspace.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// The records' memtable: about a second of writes at full ingest rate.
const RECORDS_MEMTABLE_BYTES: u64 = 16 * 1024 * 1024;
/// fjall's flush and compaction threads. One: with two or more, fjall's first worker hands
/// every compaction request back to the queue to stay free for flushes, and under
/// sustained writes it spins doing so: with one, CPU per ingested webhook fell from 34–39 µs
/// to 26–29 µs (BENCHMARKS.md).
const BACKGROUND_WORKERS: usize = 1;
/// Offsets and topic metadata: tiny, rewritten in place.
///
/// Never raise this or `RECORDS_MEMTABLE_BYTES`: fjall keeps each keyspace's memtable size
/// from when the log was made, and a log made with a smaller one would be sealed by fjall
/// before `Log::hold_write_buffer` does, asked again on every batch (the stall it prevents).
const SMALL_MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;
/// Records at least this large are kept in blob files beside the tree, which holds only
/// where they are. Compactions then rewrite keys and pointers, not values: with 256 KiB
/// records in the tree, a compaction held hundreds of MiB of them (537 MiB at the peak of a
/// 1,500-record redrive, by heaptrack) and wrote each record several times over. Set when
/// the keyspace is created: a log made before keeps its layout.
const SEPARATE_VALUES_FROM: u32 = 16 * 1024;
/// Full records' memtables waiting for their flush beyond which the writer waits.
const MAX_SEALED_MEMTABLES: usize = 2;
/// How often a waiting writer looks whether a flush has caught up.
const FLUSH_POLL: Duration = Duration::from_millis(5);
/// How long a writer waits for flushes at most, before it writes on regardless.
const HOLD_AT_MOST: Duration = Duration::from_secs(10);

pub fn storage_error(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Storage(e.to_string())
}

impl Log {
    pub fn open(dir: &Path) -> Result<Log, BrokerError> {
        // Memory is bounded by the memtables (written records not yet flushed to a segment)
        // and the block cache. fjall's defaults (64 MiB memtables, 32 MiB cache) are sized
        // for a database; a log is written once and read once, soon after, so smaller ones
        // cost little and keep RSS low under sustained writes (G7, BENCHMARKS.md).
        let db = Database::builder(dir.join("log"))
            .cache_size(CACHE_BYTES)
            .worker_threads(BACKGROUND_WORKERS)
            .open()
            .map_err(storage_error)?;
        let small = |bytes: u64| move || KeyspaceCreateOptions::default().max_memtable_size(bytes);
        let records = db
            .keyspace("records", || {
                small(RECORDS_MEMTABLE_BYTES)().with_kv_separation(Some(
                    KvSeparationOptions::default().separation_threshold(SEPARATE_VALUES_FROM),
                ))
            })
            .map_err(storage_error)?;
        let offsets = db
            .keyspace("offsets", small(SMALL_MEMTABLE_BYTES))
            .map_err(storage_error)?;
        let meta = db
            .keyspace("meta", small(SMALL_MEMTABLE_BYTES))
            .map_err(storage_error)?;
        let subscriptions = db
            .keyspace("subscriptions", small(SMALL_MEMTABLE_BYTES))
            .map_err(storage_error)?;
        Ok(Log {
            db,
            records,
            offsets,
            meta,
            subscriptions,
        })
    }

    /// Writes the memtables out, so the next start has no journal to replay into memory.
    pub fn flush(&self) -> Result<(), BrokerError> {
        for (_, keyspace, _) in self.memtable_sizes() {
            keyspace.rotate_memtable_and_wait().map_err(storage_error)?;
        }
        Ok(())
    }

    /// Seals every full memtable, and bounds the records not yet flushed
    /// to about `1 + MAX_SEALED_MEMTABLES` memtables.
    ///
    /// Left to itself, fjall seals a full memtable on its background worker, behind
    /// whatever that worker is doing, and that is not safe to wait for:
    /// - memory: during a long compaction the active memtable kept growing (1 GiB of
    ///   256 KiB records written, about 900 MiB resident until the worker caught up);
    /// - liveness: every write batch that finds a keyspace's memtable over its size queues
    ///   another request to seal it on the worker's bounded queue (1,000). During a long
    ///   compaction a busy log fills that queue, with the small keyspaces' requests too
    ///   (each batch writes its partitions' stats to `meta`); the worker, coming back to a
    ///   request, seals the memtable and then waits to queue the flush on its own full
    ///   queue: for ever, and every append behind it (seen under the benchmark's raw
    ///   publishing: the worker and this thread both parked in that send).
    ///
    /// Sealed here, right after the batch that filled it, no memtable is ever found full by
    /// a second batch, so fjall asks at most once per memtable. Waiting while too many
    /// sealed records memtables wait for their flush holds the memory whatever the worker's
    /// pace; appends wait meanwhile, as a broker's producers do when its disk falls behind.
    pub fn hold_write_buffer(&self) -> Result<(), BrokerError> {
        for (_, keyspace, size) in self.memtable_sizes() {
            if keyspace.tree.active_memtable().size() > size {
                keyspace.rotate_memtable().map_err(storage_error)?;
            }
        }
        let started = std::time::Instant::now();
        while self.records.sealed_memtable_count() > MAX_SEALED_MEMTABLES {
            // A flush that failed stopped fjall's worker and poisoned the database: nothing
            // will flush again, and the commits that follow say why. Nor is anyone kept
            // waiting past `HOLD_AT_MOST` on a worker that is merely slow.
            let poisoned = self.db.persist(PersistMode::Buffer).is_err();
            if poisoned || started.elapsed() >= HOLD_AT_MOST {
                tracing::warn!(
                    poisoned,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "embedded log appends go on while memtables still wait for their flush"
                );
                break;
            }
            std::thread::sleep(FLUSH_POLL);
        }
        let waited = started.elapsed();
        if waited >= FLUSH_POLL * 20 {
            tracing::debug!(
                waited_ms = waited.as_millis() as u64,
                "embedded log appends waited for a memtable flush"
            );
        }
        Ok(())
    }

    /// Every keyspace, named, with the memtable size it is sealed at (the one it was made
    /// with). `subscriptions` is written by the admin API, not by the writer's thread, rarely
    /// enough that fjall's requests for it cannot fill the queue; sealing it in
    /// `hold_write_buffer` too costs nothing.
    fn memtable_sizes(&self) -> [(&'static str, &Keyspace, u64); 4] {
        [
            ("records", &self.records, RECORDS_MEMTABLE_BYTES),
            ("offsets", &self.offsets, SMALL_MEMTABLE_BYTES),
            ("meta", &self.meta, SMALL_MEMTABLE_BYTES),
            ("subscriptions", &self.subscriptions, SMALL_MEMTABLE_BYTES),
        ]
    }

    /// Every topic with its partition count.
    pub fn topics(&self) -> Result<Vec<(String, u32)>, BrokerError> {
        let mut topics = Vec::new();
        for item in self.meta.prefix(b"topic\0") {
            let (key, value) = item.into_inner().map_err(storage_error)?;
            let name = String::from_utf8_lossy(&key[b"topic\0".len()..]).into_owned();
            topics.push((name, read_u32(&value)));
        }
        Ok(topics)
    }

    /// The offset the next record of a partition gets: one past the last one stored.
    pub fn next_offset(&self, topic: &str, partition: u32) -> Result<u64, BrokerError> {
        match self
            .records
            .prefix(partition_prefix(topic, partition))
            .next_back()
        {
            Some(item) => {
                let key = item.key().map_err(storage_error)?;
                Ok(read_u64(&key[key.len() - 8..]) + 1)
            }
            None => Ok(self.stats(topic, partition)?.first_offset),
        }
    }

    pub fn stats(&self, topic: &str, partition: u32) -> Result<PartitionStats, BrokerError> {
        Ok(
            match self
                .meta
                .get(stats_key(topic, partition))
                .map_err(storage_error)?
            {
                Some(v) => PartitionStats {
                    first_offset: read_u64(&v[..8]),
                    bytes: read_u64(&v[8..16]),
                },
                None => PartitionStats::default(),
            },
        )
    }

    pub fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, BrokerError> {
        Ok(self
            .cursor(group, topic, partition)?
            .map(|cursor| cursor.next_offset))
    }

    /// A consumer group's cursor on a partition: its commit point and what is done above it.
    pub fn cursor(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<Completion>, BrokerError> {
        let value = self
            .offsets
            .get(offset_key(group, topic, partition))
            .map_err(storage_error)?;
        Ok(value.map(|v| decode_cursor(&v)))
    }

    /// Up to `max` records of a partition from `from` on, in offset order, stopping once
    /// they hold `max_bytes` (at least one record is read).
    pub fn read(
        &self,
        topic: &Arc<str>,
        partition: u32,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<ConsumedRecord>, BrokerError> {
        let start = record_key(topic, partition, from);
        let end = record_key(topic, partition, u64::MAX);
        let mut out = Vec::new();
        let mut bytes = 0;
        for item in self.records.range(start..=end).take(max) {
            if bytes >= max_bytes {
                break;
            }
            let (key, value) = item.into_inner().map_err(storage_error)?;
            bytes += value.len();
            // One copy of the stored bytes, which the record's key, header values and value
            // then share; decoded from a slice, each of them was copied on its own.
            let stored: StoredRecord =
                prost::Message::decode(Bytes::copy_from_slice(&value)).map_err(storage_error)?;
            out.push(ConsumedRecord {
                topic: topic.clone(),
                partition,
                offset: read_u64(&key[key.len() - 8..]),
                timestamp_ms: stored.timestamp_ms,
                key: stored.key,
                headers: stored
                    .headers
                    .into_iter()
                    .map(|h| RecordHeader {
                        name: crate::broker::text(h.name),
                        value: h.value,
                    })
                    .collect(),
                value: stored.value,
            });
        }
        Ok(out)
    }
}

pub fn partition_prefix(topic: &str, partition: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + 13);
    key.extend_from_slice(topic.as_bytes());
    key.push(0);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

pub fn record_key(topic: &str, partition: u32, offset: u64) -> Vec<u8> {
    let mut key = partition_prefix(topic, partition);
    key.extend_from_slice(&offset.to_be_bytes());
    key
}

pub fn offset_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(group.len() + topic.len() + 6);
    key.extend_from_slice(group.as_bytes());
    key.push(0);
    key.extend_from_slice(&partition_prefix(topic, partition));
    key
}

pub fn topic_key(topic: &str) -> Vec<u8> {
    [b"topic\0".as_slice(), topic.as_bytes()].concat()
}

pub fn stats_key(topic: &str, partition: u32) -> Vec<u8> {
    [b"stats\0".as_slice(), &partition_prefix(topic, partition)].concat()
}

pub fn encode_stats(stats: PartitionStats) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&stats.first_offset.to_be_bytes());
    out[8..].copy_from_slice(&stats.bytes.to_be_bytes());
    out
}

/// A cursor is stored as its commit point (8 bytes, big-endian) followed by the varint form
/// of what is done above it; cursors written before completion was kept are the 8 bytes
/// alone.
pub fn encode_cursor(completion: &Completion) -> Vec<u8> {
    let mut value = completion.next_offset.to_be_bytes().to_vec();
    value.extend(completion.encode(usize::MAX));
    value
}

fn decode_cursor(value: &[u8]) -> Completion {
    let next_offset = read_u64(value);
    Completion::decode(next_offset, &value[8..]).unwrap_or_else(|| {
        tracing::warn!(
            next_offset,
            "unreadable cursor; delivering from its commit point"
        );
        Completion::at(next_offset)
    })
}

fn read_u64(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"))
}

fn read_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After each write batch every memtable the writer fills is within its size, so no
    /// second batch finds one full and asks fjall's worker again (see `hold_write_buffer`:
    /// those requests, piling up during a long compaction, once filled the worker's queue
    /// and stopped the log for good).
    #[test]
    fn no_memtable_is_left_full_after_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let value = vec![7u8; 1024];
        for number in 0..300u32 {
            let mut batch = log.db.batch();
            for i in 0..64u32 {
                let key = (number * 64 + i).to_be_bytes();
                for keyspace in [&log.records, &log.offsets, &log.meta] {
                    batch.insert(keyspace, key, value.as_slice());
                }
            }
            batch.commit().unwrap();
            log.hold_write_buffer().unwrap();
            for (name, keyspace, size) in log.memtable_sizes() {
                let active = keyspace.tree.active_memtable().size();
                assert!(
                    active <= size,
                    "after batch {number}, the {name} memtable holds {active} bytes, over its {size}"
                );
            }
        }
    }
}
