//! The broker abstraction: what the ingress publishes to and the delivery engine reads from.
//!
//! The shapes follow what Kafka (rdkafka) and NATS JetStream both offer, so a backend is a
//! thin adapter:
//! - [`Publisher::publish`] resolves on the broker's durable ack. Many calls are in flight at
//!   once and a backend batches them into shared round trips (librdkafka's linger, pipelined
//!   JetStream PubAcks, the embedded log's group commit).
//! - [`Subscriber::subscribe`] joins a consumer group and yields [`PartitionEvent`]s: a
//!   partition assigned to this process arrives as an ordered [`PartitionStream`] (a Kafka
//!   assignment; a NATS partition lease), and leaves again as a revocation.
//! - Commits are by offset, as Kafka's are: `commit(n)` means every record below `n` is done.
//! - Backpressure is pull-based: a backend buffers only a bounded number of records ahead of
//!   [`PartitionStream::next`]; a consumer that stops pulling stops the fetching.

pub mod embedded;
pub mod kafka;
pub mod nats;
pub mod partitioner;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

/// A header of a broker record. Values are bytes: Kafka headers are, and foreign producers
/// put anything there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub name: String,
    pub value: Bytes,
}

/// A record to publish.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub key: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
    pub value: Bytes,
}

/// Where a published record was durably stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub partition: u32,
    pub offset: u64,
}

/// A record read from a partition.
#[derive(Debug, Clone)]
pub struct ConsumedRecord {
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: u64,
    /// When the broker stored it, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
    pub value: Bytes,
}

impl ConsumedRecord {
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| &h.value)
    }
}

/// Where a consumer group that has committed nothing yet starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The oldest record still retained.
    #[default]
    Earliest,
    /// Only records published from now on.
    Latest,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached or refused the request for now; retrying may succeed.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker rejected the request and retrying will not help.
    #[error("broker rejected the request: {0}")]
    Rejected(String),
    /// Local storage of the embedded broker failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// The data directory is held by another process.
    #[error("{0}")]
    Locked(String),
    /// The broker handle was shut down.
    #[error("broker is shut down")]
    Closed,
}

#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Creates missing topics (with the backend's configured partition count).
    async fn ensure_topics(&self, topics: &[String]) -> Result<(), BrokerError>;

    /// Publishes one record and resolves once the broker has durably acknowledged it.
    async fn publish(&self, record: Record) -> Result<Receipt, BrokerError>;

    /// Whether the broker is reachable and accepting writes right now (for `/readyz`).
    async fn check(&self) -> Result<(), BrokerError>;

    /// Waits for every publish in flight, then stops accepting new ones.
    async fn close(&self);
}

#[async_trait]
pub trait Subscriber: Send + Sync + 'static {
    /// Joins `group` on `topics`. Partitions arrive through the returned subscription as this
    /// process is given them; dropping it leaves the group.
    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
        start: StartFrom,
    ) -> Result<Subscription, BrokerError>;
}

/// Commits consumed offsets for one consumer group.
#[async_trait]
pub trait Committer: Send + Sync + 'static {
    /// Records that every record of `topic`/`partition` below `next_offset` is done.
    async fn commit(
        &self,
        topic: &str,
        partition: u32,
        next_offset: u64,
    ) -> Result<(), BrokerError>;
}

/// A consumer group membership: the partitions that come and go.
pub struct Subscription {
    events: mpsc::Receiver<PartitionEvent>,
    /// Kept so the backend's group session lives as long as the subscription.
    _session: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl Subscription {
    pub fn new(
        events: mpsc::Receiver<PartitionEvent>,
        session: Option<Box<dyn std::any::Any + Send + Sync>>,
    ) -> Self {
        Subscription {
            events,
            _session: session,
        }
    }

    /// The next assignment change; `None` once the subscription has ended.
    pub async fn next_event(&mut self) -> Option<PartitionEvent> {
        self.events.recv().await
    }
}

pub enum PartitionEvent {
    Assigned(PartitionStream),
    /// This process no longer owns the partition: its stream has ended, and the engine
    /// should finish or abandon in-flight work and commit what is done.
    Revoked {
        topic: Arc<str>,
        partition: u32,
    },
}

/// The ordered records of one assigned partition.
pub struct PartitionStream {
    pub topic: Arc<str>,
    pub partition: u32,
    records: mpsc::Receiver<ConsumedRecord>,
    committer: Arc<dyn Committer>,
}

impl PartitionStream {
    /// `records` must be bounded: its capacity is how far the backend reads ahead.
    pub fn new(
        topic: Arc<str>,
        partition: u32,
        records: mpsc::Receiver<ConsumedRecord>,
        committer: Arc<dyn Committer>,
    ) -> Self {
        PartitionStream {
            topic,
            partition,
            records,
            committer,
        }
    }

    /// The next record in partition order; `None` when the partition was revoked or the
    /// subscription closed.
    pub async fn next(&mut self) -> Option<ConsumedRecord> {
        self.records.recv().await
    }

    /// Commits `next_offset` for this partition.
    pub async fn commit(&self, next_offset: u64) -> Result<(), BrokerError> {
        self.committer
            .commit(&self.topic, self.partition, next_offset)
            .await
    }

    pub fn committer(&self) -> Arc<dyn Committer> {
        self.committer.clone()
    }
}
