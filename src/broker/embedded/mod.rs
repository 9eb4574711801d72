//! `broker.kind: embedded`: a durable, partitioned log inside the hookbridge process, so
//! `hookbridge serve` needs no server to run.
//!
//! - [`log`]: the on-disk layout (fjall).
//! - [`writer`]: the one thread that writes, group-committing appends with one fsync.
//! - [`reader`]: per-partition tasks that feed consumer groups.
//!
//! One process owns a data directory at a time: a lock file makes a second `hookbridge
//! serve` on the same directory fail at start-up instead of corrupting it. Scaling past one
//! node means switching `broker.kind` to Kafka or NATS.

mod browse;
mod log;
mod reader;
mod stored;
mod writer;

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use self::log::Log;
use self::writer::{Op, Topics, Writer};
use super::{
    BrokerError, Committer, Completion, ConsumedRecord, Progress, Publisher, Receipt, Record,
    StartFrom, Subscriber, Subscription,
};
use crate::config::EmbeddedConfig;

/// Operations queued for the writer before publishers wait (backpressure on the ingress).
const WRITER_QUEUE: usize = 16 * 1024;
/// How often retention runs.
const RETENTION_INTERVAL: Duration = Duration::from_secs(30);

pub struct EmbeddedBroker {
    dir: PathBuf,
    log: Log,
    ops: mpsc::Sender<Op>,
    topics: Topics,
    closed: std::sync::atomic::AtomicBool,
    _lock: File,
}

impl EmbeddedBroker {
    /// Opens (creating if needed) the log in `config.dir` and starts its writer and
    /// retention. Fails if another process holds the directory.
    pub fn open(config: &EmbeddedConfig) -> Result<Arc<EmbeddedBroker>, BrokerError> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| {
            BrokerError::Storage(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let lock = lock_dir(&dir)?;
        let log = Log::open(&dir)?;
        let topics: Topics = Arc::new(RwLock::new(HashMap::new()));
        let writer = Writer::open(log.clone(), config.partitions, topics.clone())?;
        let (ops, rx) = mpsc::channel(WRITER_QUEUE);
        std::thread::Builder::new()
            .name("embedded-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| BrokerError::Storage(format!("cannot start the log writer: {e}")))?;

        let retention = (
            config.retention.max_age.map(|d| d.0),
            config.retention.max_bytes.map(|b| b.0),
        );
        if retention != (None, None) {
            let ops = ops.downgrade();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(RETENTION_INTERVAL);
                loop {
                    tick.tick().await;
                    let Some(ops) = ops.upgrade() else { return };
                    let (max_age, max_bytes) = retention;
                    if ops
                        .send(Op::Retention { max_age, max_bytes })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
        Ok(Arc::new(EmbeddedBroker {
            dir,
            log,
            ops,
            topics,
            closed: false.into(),
            _lock: lock,
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The partition count of a topic, if it exists.
    pub fn partitions(&self, topic: &str) -> Option<u32> {
        self.topics
            .read()
            .expect("topics lock")
            .get(topic)
            .map(|t| t.partitions)
    }

    /// Reads up to `max` records of one partition from `from` on, outside any consumer
    /// group (for inspection tools and tests).
    pub fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Vec<ConsumedRecord>, BrokerError> {
        self.log
            .read(&Arc::from(topic), partition, from, max, usize::MAX)
    }

    /// Every retained record of a topic, partition by partition.
    pub fn read_topic(&self, topic: &str) -> Result<Vec<ConsumedRecord>, BrokerError> {
        let mut all = Vec::new();
        for p in 0..self.partitions(topic).unwrap_or(0) {
            let mut from = 0;
            loop {
                let chunk = self.read(topic, p, from, 1024)?;
                let Some(last) = chunk.last() else { break };
                from = last.offset + 1;
                all.extend(chunk);
            }
        }
        Ok(all)
    }

    /// Runs one retention pass now instead of waiting for the next tick.
    pub async fn enforce_retention(
        &self,
        max_age: Option<Duration>,
        max_bytes: Option<u64>,
    ) -> Result<(), BrokerError> {
        self.ops
            .send(Op::Retention { max_age, max_bytes })
            .await
            .map_err(|_| BrokerError::Closed)?;
        self.call(|reply| Op::Flush { reply }).await
    }

    /// The committed offset of a consumer group on a partition.
    pub fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, BrokerError> {
        self.log.committed(group, topic, partition)
    }

    async fn call<T>(&self, op: impl FnOnce(oneshot::Sender<T>) -> Op) -> Result<T, BrokerError> {
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(op(reply))
            .await
            .map_err(|_| BrokerError::Closed)?;
        answer.await.map_err(|_| BrokerError::Closed)
    }
}

/// Takes the data directory's lock file, recording our pid in it for the error message a
/// second process gets.
fn lock_dir(dir: &Path) -> Result<File, BrokerError> {
    let path = dir.join("hookbridge.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| BrokerError::Storage(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(BrokerError::Locked(format!(
                "data dir {} is in use by another hookbridge process (pid {}); the embedded broker serves one process at a time",
                dir.display(),
                holder.trim()
            )));
        }
        Err(TryLockError::Error(e)) => {
            return Err(BrokerError::Storage(format!(
                "cannot lock {}: {e}",
                path.display()
            )));
        }
    }
    let write_pid = |file: &mut File| -> std::io::Result<()> {
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.sync_all()
    };
    write_pid(&mut file)
        .map_err(|e| BrokerError::Storage(format!("cannot write {}: {e}", path.display())))?;
    Ok(file)
}

#[async_trait]
impl Publisher for EmbeddedBroker {
    async fn ensure_topics(&self, topics: &[String]) -> Result<(), BrokerError> {
        let topics = topics.to_vec();
        self.call(|reply| Op::EnsureTopics { topics, reply })
            .await?
    }

    async fn publish(&self, record: Record) -> Result<Receipt, BrokerError> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(BrokerError::Closed);
        }
        self.call(|reply| Op::Append { record, reply }).await?
    }

    async fn check(&self) -> Result<(), BrokerError> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(BrokerError::Closed);
        }
        // The writer answering a flush proves it is alive and the disk accepts writes.
        self.call(|reply| Op::Flush { reply }).await
    }

    async fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        // Everything queued before this is written and answered; then the writer exits.
        let _ = self.call(|reply| Op::Close { reply }).await;
    }
}

#[async_trait]
impl Subscriber for EmbeddedBroker {
    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
        start: StartFrom,
    ) -> Result<Subscription, BrokerError> {
        self.ensure_topics(topics).await?;
        let committer: Arc<dyn Committer> = Arc::new(GroupCommitter {
            group: group.to_string(),
            ops: self.ops.clone(),
            log: self.log.clone(),
        });
        let handles: Vec<(String, Arc<writer::TopicHandle>)> = {
            let known = self.topics.read().expect("topics lock");
            topics
                .iter()
                .filter_map(|t| known.get(t).map(|h| (t.clone(), h.clone())))
                .collect()
        };
        reader::start(self.log.clone(), group, handles, start, committer)
    }
}

/// Commits a consumer group's cursors through the writer, batched with its appends.
struct GroupCommitter {
    group: String,
    ops: mpsc::Sender<Op>,
    log: Log,
}

#[async_trait]
impl Committer for GroupCommitter {
    async fn commit(
        &self,
        topic: &str,
        partition: u32,
        progress: Progress<'_>,
    ) -> Result<(), BrokerError> {
        let (reply, answer) = oneshot::channel();
        let op = Op::Commit {
            group: self.group.clone(),
            topic: topic.to_string(),
            partition,
            cursor: log::encode_cursor(progress.completion),
            reply,
        };
        self.ops.send(op).await.map_err(|_| BrokerError::Closed)?;
        answer.await.map_err(|_| BrokerError::Closed)?
    }

    async fn stored(&self, topic: &str, partition: u32) -> Result<Option<Completion>, BrokerError> {
        self.log.cursor(&self.group, topic, partition)
    }

    async fn lag(
        &self,
        topic: &str,
        partition: u32,
        committed: u64,
    ) -> Result<Option<u64>, BrokerError> {
        let end = self.log.next_offset(topic, partition)?;
        Ok(Some(end.saturating_sub(committed)))
    }
}
