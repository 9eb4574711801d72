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
//! - Commits are by offset, as Kafka's are: a commit at `n` means every record below `n` is
//!   done. It also says what is done above `n` (a [`Completion`], which Kafka and the
//!   embedded log store with the offset and hand back to the partition's next worker) and
//!   lists the records done since the last commit, for backends that remember completion
//!   per record (JetStream acks each one). Either way a restart redelivers only what was not
//!   done (G8).
//! - A partition is handed over, never just dropped: the backend tells the worker through
//!   its [`Tenure`] that the partition is going (or until when it is surely held), and waits
//!   on the [`PartitionHandle`] for the worker to stop and commit before it lets the
//!   partition go, so two owners never deliver one partition at once (G3).
//! - Backpressure is pull-based: a backend buffers only a bounded number of records ahead of
//!   [`PartitionStream::next`]; a consumer that stops pulling stops the fetching.

pub mod completion;
pub mod embedded;
pub mod kafka;
pub mod nats;
mod open;
pub mod partitioner;
pub mod read_ahead;
pub mod stored;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use bytestring::ByteString;
use tokio::sync::{mpsc, oneshot, watch};

pub use completion::Completion;
pub use open::{Broker, OpenError};
pub use stored::SubscriptionStore;

/// A header of a broker record. Values are bytes: Kafka headers are, and foreign producers
/// put anything there. Names are shared text: hookbridge's own are static, and a name read
/// from the embedded log is a slice of the record's buffer, so reading a record allocates
/// nothing per header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub name: ByteString,
    pub value: Bytes,
}

/// Shared bytes as text, without a copy when they are UTF-8 (as everything hookbridge writes
/// is); other bytes are replaced, as `String::from_utf8_lossy` does.
pub fn text(bytes: Bytes) -> ByteString {
    match std::str::from_utf8(&bytes) {
        Ok(_) => ByteString::try_from(bytes).expect("checked as UTF-8"),
        Err(_) => ByteString::from(String::from_utf8_lossy(&bytes).into_owned()),
    }
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
    /// The bytes it holds: value, key and headers.
    pub fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|h| h.name.len() + h.value.len())
            .sum();
        self.value.len() + self.key.as_ref().map_or(0, Bytes::len) + headers
    }

    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| &h.value)
    }
}

impl read_ahead::Weighed for ConsumedRecord {
    fn bytes(&self) -> usize {
        self.size()
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

/// What a commit says about one partition.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// The commit point, and what is done above it.
    pub completion: &'a Completion,
    /// Offsets finished since the last accepted commit (ascending, some may be at or above
    /// the commit point); empty unless the committer is [`Committer::per_record`].
    pub done: &'a [u64],
}

impl Progress<'_> {
    /// Every record below this offset is done.
    pub fn next_offset(&self) -> u64 {
        self.completion.next_offset
    }
}

/// Commits consumed offsets for one consumer group.
#[async_trait]
pub trait Committer: Send + Sync + 'static {
    /// Records the partition's progress. An error means nothing is known to be recorded:
    /// the engine retries with the same progress (and whatever finished since).
    async fn commit(
        &self,
        topic: &str,
        partition: u32,
        progress: Progress<'_>,
    ) -> Result<(), BrokerError>;

    /// Whether this broker remembers completion record by record and so wants
    /// [`Progress::done`] filled in; otherwise it stays empty.
    fn per_record(&self) -> bool {
        false
    }

    /// What the group's last accepted commit of a partition said: for a worker starting on
    /// it, and for the parking topic's partitions, to learn when a parked key's events are
    /// done. `None` when the broker keeps no such thing.
    async fn stored(
        &self,
        _topic: &str,
        _partition: u32,
    ) -> Result<Option<Completion>, BrokerError> {
        Ok(None)
    }

    /// Records of the partition past `committed` (its commit point): the consumer lag, for
    /// metrics. `None` when the broker cannot tell cheaply.
    async fn lag(
        &self,
        topic: &str,
        partition: u32,
        committed: u64,
    ) -> Result<Option<u64>, BrokerError> {
        let _ = (topic, partition, committed);
        Ok(None)
    }

    /// [`Committer::stored`] for a worker taking the partition over. A backend whose
    /// completion writes are fenced by a claim (NATS's parked keys) takes it here, so the
    /// previous owner's later writes are refused.
    async fn resume(&self, topic: &str, partition: u32) -> Result<Option<Completion>, BrokerError> {
        self.stored(topic, partition).await
    }
}

/// Reads topics outside any consumer group, for the operator's tools: dead-letter listings,
/// redrives and replays. Nothing is committed and no group is joined.
///
/// Offsets are the backend's own: dense per partition on Kafka and the embedded log;
/// JetStream stream sequences on NATS, which a stream's partitions share (so a partition's
/// offsets have gaps, and [`TopicReader::dense`] is false).
#[async_trait]
pub trait TopicReader: Send + Sync + 'static {
    /// How many partitions the topic has.
    async fn partitions(&self, topic: &str) -> Result<u32, BrokerError>;

    /// The partition's retained range: its oldest record's offset, and one past its newest
    /// (the offset the next record gets).
    async fn bounds(&self, topic: &str, partition: u32) -> Result<(u64, u64), BrokerError>;

    /// The offset of the partition's first record stored at or after `timestamp_ms`
    /// (milliseconds since the Unix epoch); the end of the partition if there is none.
    async fn offset_at(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<u64, BrokerError>;

    /// Up to `max` records of the partition from `from` on and below `end`, in order. None
    /// at all means none is left below `end`; fewer than `max` does not.
    async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        end: u64,
        max: usize,
    ) -> Result<Vec<ConsumedRecord>, BrokerError>;

    /// Whether a partition's offsets are consecutive, so that `end - from` counts records.
    fn dense(&self) -> bool {
        true
    }
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
    /// This process now owns the partition. It gives it up through the stream's
    /// [`Tenure`]; the stream's end (`next()` answering `None`) means the same.
    Assigned(PartitionStream),
}

/// How long the worker of a partition may go on delivering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tenure {
    /// Owned. `until`: the ownership is only known to hold until then (a lease that was
    /// not renewed since); past it the worker must have stopped delivering.
    Held { until: Option<Instant> },
    /// Being handed over: stop taking records, let the attempts on the wire finish within
    /// the subscription's grace, commit, and drop the stream. `until` as for `Held`: a
    /// lease still renewed while the worker lets go, and past which it must have stopped
    /// all the same.
    Revoked { until: Option<Instant> },
    /// Taken by another owner already (a lease found taken or expired, a handover that
    /// waited too long): stop at once, attempts on the wire included.
    Lost,
}

impl Tenure {
    /// Until when the partition is surely held, if that is bounded.
    pub fn held_until(self) -> Option<Instant> {
        match self {
            Tenure::Held { until } | Tenure::Revoked { until } => until,
            Tenure::Lost => Some(Instant::now()),
        }
    }
}

/// Sleeps until `at`, or forever without one: a deadline that may not be set, for a
/// `select!` arm.
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The backend's side of an assigned partition: it renews or revokes the tenure and learns
/// when the worker has let go.
pub struct PartitionHandle {
    tenure: watch::Sender<Tenure>,
    released: oneshot::Receiver<()>,
}

impl PartitionHandle {
    /// The ownership is confirmed until `until` (a renewed lease), while it is held or
    /// being handed over.
    pub fn hold_until(&self, until: Instant) {
        self.tenure.send_if_modified(|tenure| match tenure {
            Tenure::Held { .. } => {
                *tenure = Tenure::Held { until: Some(until) };
                true
            }
            Tenure::Revoked { .. } => {
                *tenure = Tenure::Revoked { until: Some(until) };
                true
            }
            Tenure::Lost => false,
        });
    }

    /// Asks the worker to hand the partition over (within what its lease still holds).
    pub fn revoke(&self) {
        self.tenure.send_if_modified(|tenure| match *tenure {
            Tenure::Held { until } => {
                *tenure = Tenure::Revoked { until };
                true
            }
            Tenure::Revoked { .. } | Tenure::Lost => false,
        });
    }

    /// Tells the worker that the partition is no longer its own: it stops at once.
    pub fn lose(&self) {
        let _ = self.tenure.send(Tenure::Lost);
    }

    /// Whether the worker has let go (stopped delivering and made its last commit).
    pub fn is_released(&mut self) -> bool {
        !matches!(
            self.released.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        )
    }

    /// Waits until the worker has let go, at most `timeout`; false if it had not by then.
    pub async fn released(&mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, &mut self.released)
            .await
            .is_ok()
    }
}

/// The ordered records of one assigned partition.
pub struct PartitionStream {
    pub topic: Arc<str>,
    pub partition: u32,
    records: read_ahead::RecordReceiver<ConsumedRecord>,
    calls: PartitionCalls,
    tenure: watch::Receiver<Tenure>,
    /// Dropped with the stream, which tells the backend the worker has let go.
    _released: oneshot::Sender<()>,
}

impl PartitionStream {
    /// `records` is the receiving end of a [`read_ahead::channel`], whose bounds are how
    /// far the backend reads ahead.
    pub fn new(
        topic: Arc<str>,
        partition: u32,
        records: read_ahead::RecordReceiver<ConsumedRecord>,
        committer: Arc<dyn Committer>,
    ) -> (PartitionStream, PartitionHandle) {
        let (tenure_tx, tenure) = watch::channel(Tenure::Held { until: None });
        let (released_tx, released) = oneshot::channel();
        let stream = PartitionStream {
            calls: PartitionCalls {
                topic: topic.clone(),
                partition,
                committer,
            },
            topic,
            partition,
            records,
            tenure,
            _released: released_tx,
        };
        let handle = PartitionHandle {
            tenure: tenure_tx,
            released,
        };
        (stream, handle)
    }

    /// The next record in partition order; `None` when the partition was revoked or the
    /// subscription closed.
    pub async fn next(&mut self) -> Option<ConsumedRecord> {
        self.records.recv().await
    }

    /// The partition's commits and reads of stored progress, as a handle of their own, so
    /// that a worker can have one on its way while it goes on taking records.
    pub fn calls(&self) -> PartitionCalls {
        self.calls.clone()
    }

    /// The partition's tenure, to watch for renewal and revocation.
    pub fn tenure(&self) -> watch::Receiver<Tenure> {
        self.tenure.clone()
    }
}

/// What a partition's worker asks its group's committer, for that partition.
#[derive(Clone)]
pub struct PartitionCalls {
    topic: Arc<str>,
    partition: u32,
    committer: Arc<dyn Committer>,
}

impl PartitionCalls {
    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Records the partition's progress.
    pub async fn commit(&self, progress: Progress<'_>) -> Result<(), BrokerError> {
        self.committer
            .commit(&self.topic, self.partition, progress)
            .await
    }

    /// Whether the broker wants every finished record in [`Progress::done`].
    pub fn per_record(&self) -> bool {
        self.committer.per_record()
    }

    /// What the partition's last accepted commit said was done.
    pub async fn resumed(&self) -> Result<Option<Completion>, BrokerError> {
        self.committer.resume(&self.topic, self.partition).await
    }

    /// What the group's last accepted commit of another partition said was done.
    pub async fn stored(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Option<Completion>, BrokerError> {
        self.committer.stored(topic, partition).await
    }

    /// Records past `committed`, the partition's commit point (see [`Committer::lag`]).
    pub async fn lag(&self, committed: u64) -> Result<Option<u64>, BrokerError> {
        self.committer
            .lag(&self.topic, self.partition, committed)
            .await
    }
}
