//! Consuming from Kafka: a consumer group per subscription, its assignment turned into
//! partition streams.
//!
//! Every assigned partition gets its own librdkafka queue (`split_partition_queue`, done in
//! the rebalance callback *before* the partition is assigned, so no message of it ever
//! reaches the shared consumer queue) and a pump task that moves records from that queue
//! into the partition's bounded channel. Backpressure is the pump waiting for room: while it
//! waits it stops taking from the partition queue, the queue fills to
//! `queued.min.messages` / `queued.max.messages.kbytes`, and librdkafka stops fetching that
//! partition (G7) while the others flow on.
//!
//! Why not `pause`/`resume`: pausing a partition purges what librdkafka has prefetched for
//! it, and after `resume` the fetcher went on from its own fetch position, not from the
//! last record handed out; records in between were silently skipped, and the commit
//! tracker then committed past them (found by the benchmark; `tests/suite/brokers/kafka.rs` holds the
//! regression test). Not taking from a queue has no such edge.
//!
//! The driver task owns the shared consumer queue, which then carries only rebalance
//! callbacks and errors.
//!
//! Handover: a revocation does not return from the rebalance callback before the
//! partitions' workers have stopped and committed (bounded by `REVOKE_WAIT`), so the next
//! owner starts after the last attempt of this one and from its last commit: no two
//! replicas deliver one partition at once (G3). Commits therefore do not go through the
//! driver (it is the thread waiting in the callback): each is a synchronous commit on a
//! blocking thread, its result checked, and refused by the group coordinator when this
//! member's generation is stale.
//!
//! Completion (G8): each commit carries, in its metadata, what is done above the commit
//! point (`broker::completion`), and a partition's next worker reads it back with the
//! committed offset, so what was delivered behind a failing key is not delivered again.

use crate::broker::read_ahead;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::runtime::RuntimeFlavor;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::client::{base_config, kafka_error, with_properties};
use crate::broker::{
    BrokerError, Committer, Completion, ConsumedRecord, PartitionEvent, PartitionHandle,
    PartitionStream, Progress, RecordHeader, StartFrom, Subscription,
};
use crate::config::{KAFKA_MAX_POLL_INTERVAL, KafkaConfig};

/// Kafka brokers refuse commit metadata longer than `offset.metadata.max.bytes` (4096 by
/// default); past this the completion stored with a commit is cut short (see
/// `broker::completion`).
const COMMIT_METADATA_MAX: usize = 3072;
/// How long reading a partition's high watermark (for the lag metric) may take.
const LAG_TIMEOUT: Duration = Duration::from_secs(2);
/// How long reading a partition's committed offset may take.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a revocation waits for the partitions' workers to stop and commit: a worker
/// lets its attempts on the wire run for the subscription's `timeout` (at most
/// `MAX_ATTEMPT_TIMEOUT`) + 1 s and retries its last commit for 5 s, so this is only
/// reached by a worker that is stuck. Past it the partitions are lost (their workers stop
/// at once) and go; the next owner redelivers what was not committed. A minute under
/// librdkafka's rebalance timeout (`KAFKA_MAX_POLL_INTERVAL`), so that the member is back
/// in the group in time.
const REVOKE_WAIT: Duration = KAFKA_MAX_POLL_INTERVAL.saturating_sub(Duration::from_secs(60));

type TopicPartition = (Arc<str>, u32);
type GroupConsumer = StreamConsumer<GroupContext>;
type PartitionQueue = StreamPartitionQueue<GroupContext>;

/// A partition this process owns: the task feeding its stream, and the worker's handle.
struct Owned {
    pump: AbortHandle,
    handle: PartitionHandle,
}

/// The partitions this process owns.
type Pumps = Arc<Mutex<HashMap<TopicPartition, Owned>>>;

/// The consumer, for the context and the committer: set right after it is created.
/// Weak, because the consumer owns the context.
type ConsumerCell = Arc<OnceLock<Weak<GroupConsumer>>>;

/// Shared by the rebalance callbacks (which run inside the driver's `recv`) and the driver.
struct GroupContext {
    group: String,
    /// The consumer itself: splitting a partition queue needs it.
    consumer: ConsumerCell,
    /// Queues split in `pre_rebalance` for partitions being assigned, taken in
    /// `post_rebalance` once the assignment is in place.
    splitting: Mutex<HashMap<TopicPartition, PartitionQueue>>,
    pumps: Pumps,
    events: mpsc::UnboundedSender<PartitionEvent>,
    committer: Arc<dyn Committer>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                // Split before librdkafka starts fetching, so that every message of the
                // partition arrives in its own queue, in order.
                let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
                    return;
                };
                let mut splitting = self.splitting.lock().expect("splitting lock");
                for element in partitions.elements() {
                    match consumer.split_partition_queue(element.topic(), element.partition()) {
                        Some(queue) => {
                            splitting.insert(
                                topic_partition(element.topic(), element.partition()),
                                queue,
                            );
                        }
                        None => tracing::error!(
                            group = %self.group,
                            topic = element.topic(),
                            partition = element.partition(),
                            "could not open the partition's queue; its records will not be delivered by this replica"
                        ),
                    }
                }
            }
            // Revocation: the workers stop, finish what is on the wire and commit before
            // the partitions go (see the module's comment).
            Rebalance::Revoke(partitions) => {
                let revoked: Vec<(TopicPartition, Owned)> = {
                    let mut pumps = self.pumps.lock().expect("pumps lock");
                    partitions
                        .elements()
                        .iter()
                        .filter_map(|element| {
                            let tp = topic_partition(element.topic(), element.partition());
                            pumps.remove(&tp).map(|owned| (tp, owned))
                        })
                        .collect()
                };
                for (tp, owned) in &revoked {
                    tracing::info!(group = %self.group, topic = %tp.0, partition = tp.1, "partition revoked; handing it over");
                    owned.handle.revoke();
                }
                let handles = revoked
                    .into_iter()
                    .map(|(_, owned)| {
                        owned.pump.abort();
                        owned.handle
                    })
                    .collect();
                wait_released(&self.group, handles);
            }
            Rebalance::Error(_) => {}
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                let mut splitting = self.splitting.lock().expect("splitting lock");
                let mut pumps = self.pumps.lock().expect("pumps lock");
                for element in partitions.elements() {
                    let tp = topic_partition(element.topic(), element.partition());
                    let Some(queue) = splitting.remove(&tp) else {
                        continue;
                    };
                    let (tx, rx) = read_ahead::channel();
                    let pump = tokio::spawn(pump(queue, tx)).abort_handle();
                    let (stream, handle) =
                        PartitionStream::new(tp.0.clone(), tp.1, rx, self.committer.clone());
                    if let Some(previous) = pumps.insert(tp, Owned { pump, handle }) {
                        previous.pump.abort();
                        previous.handle.revoke();
                    }
                    let _ = self.events.send(PartitionEvent::Assigned(stream));
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                tracing::warn!(group = %self.group, error = %e, "rebalance error")
            }
        }
    }
}

/// Blocks the rebalance callback until the revoked partitions' workers have let go, at most
/// `REVOKE_WAIT`. The callback runs on a runtime thread (inside the driver's `recv`), so the
/// wait hands that thread's other tasks to the rest of the runtime first.
fn wait_released(group: &str, handles: Vec<PartitionHandle>) {
    let mut handles: Vec<PartitionHandle> = handles
        .into_iter()
        .filter_map(|mut h| (!h.is_released()).then_some(h))
        .collect();
    if handles.is_empty() {
        return;
    }
    let runtime = match tokio::runtime::Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == RuntimeFlavor::MultiThread => runtime,
        _ => {
            tracing::warn!(%group, "cannot wait for the revoked partitions' workers here; the next owner may redeliver in-flight events");
            return;
        }
    };
    let started = std::time::Instant::now();
    let all_released = tokio::task::block_in_place(|| {
        runtime.block_on(async {
            let deadline = tokio::time::Instant::now() + REVOKE_WAIT;
            let mut all = true;
            for handle in &mut handles {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                all &= handle.released(left).await;
            }
            all
        })
    });
    if all_released {
        tracing::info!(%group, partitions = handles.len(), took = ?started.elapsed(), "revoked partitions handed over");
    } else {
        tracing::warn!(%group, "revoked partitions' workers did not stop within {REVOKE_WAIT:?}; stopping them at once and letting the partitions go");
        for handle in &handles {
            handle.lose();
        }
    }
}

fn topic_partition(topic: &str, partition: i32) -> TopicPartition {
    (Arc::from(topic), partition as u32)
}

/// Moves one partition's records from its librdkafka queue into its stream's channel,
/// waiting while the channel is full (which is what stops the fetching).
async fn pump(queue: PartitionQueue, records: read_ahead::RecordSender<ConsumedRecord>) {
    loop {
        // Converted at once: a borrowed message must not live across an await.
        let received = queue.recv().await.map(|message| to_record(&message));
        match received {
            Ok(record) => {
                if records.send(record).await.is_err() {
                    return; // the stream was dropped
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Kafka partition queue error");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Commits synchronously on a blocking thread, straight on the consumer: see the module's
/// comment for why not through the driver.
struct DirectCommitter {
    consumer: ConsumerCell,
}

impl DirectCommitter {
    /// The group's consumer, unless the subscription has ended.
    fn consumer(&self) -> Result<Arc<GroupConsumer>, BrokerError> {
        self.consumer
            .get()
            .and_then(Weak::upgrade)
            .ok_or(BrokerError::Closed)
    }
}

#[async_trait]
impl Committer for DirectCommitter {
    async fn commit(
        &self,
        topic: &str,
        partition: u32,
        progress: Progress<'_>,
    ) -> Result<(), BrokerError> {
        let consumer = self.consumer()?;
        let mut offsets = TopicPartitionList::new();
        {
            let mut element = offsets.add_partition(topic, partition as i32);
            element
                .set_offset(Offset::Offset(progress.next_offset() as i64))
                .map_err(kafka_error)?;
            element.set_metadata(progress.completion.to_text(COMMIT_METADATA_MAX));
        }
        tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync))
            .await
            .map_err(|_| BrokerError::Closed)?
            .map_err(kafka_error)
    }

    async fn lag(
        &self,
        topic: &str,
        partition: u32,
        committed: u64,
    ) -> Result<Option<u64>, BrokerError> {
        let consumer = self.consumer()?;
        let topic = topic.to_string();
        let watermarks = tokio::task::spawn_blocking(move || {
            consumer.fetch_watermarks(&topic, partition as i32, LAG_TIMEOUT)
        })
        .await
        .map_err(|_| BrokerError::Closed)?
        .map_err(kafka_error)?;
        Ok(Some((watermarks.1.max(0) as u64).saturating_sub(committed)))
    }

    async fn stored(&self, topic: &str, partition: u32) -> Result<Option<Completion>, BrokerError> {
        let consumer = self.consumer()?;
        let mut wanted = TopicPartitionList::new();
        wanted.add_partition(topic, partition as i32);
        let committed = tokio::task::spawn_blocking(move || {
            consumer.committed_offsets(wanted, COMMITTED_TIMEOUT)
        })
        .await
        .map_err(|_| BrokerError::Closed)?
        .map_err(kafka_error)?;
        let Some(element) = committed.find_partition(topic, partition as i32) else {
            return Ok(None);
        };
        element.error().map_err(kafka_error)?;
        Ok(match element.offset() {
            Offset::Offset(next_offset) if next_offset >= 0 => Some(Completion::from_text(
                next_offset as u64,
                element.metadata(),
            )),
            _ => None,
        })
    }
}

/// The tasks of one subscription; dropping it stops them all, which drops the consumer
/// (each task holds it) and so leaves the group.
struct Session {
    driver: tokio::task::JoinHandle<()>,
    forward: tokio::task::JoinHandle<()>,
    pumps: Pumps,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
        self.forward.abort();
        // Taken out first: the last pump to go may drop the consumer, whose close runs the
        // revocation callback, which takes this lock.
        let owned: Vec<Owned> = match self.pumps.lock() {
            Ok(mut pumps) => pumps.drain().map(|(_, owned)| owned).collect(),
            Err(_) => Vec::new(),
        };
        for owned in owned {
            owned.pump.abort();
        }
    }
}

pub fn subscribe(
    config: &KafkaConfig,
    group: &str,
    topics: &[String],
    start: StartFrom,
) -> Result<Subscription, BrokerError> {
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let pumps = Pumps::default();
    let cell = ConsumerCell::default();
    let context = GroupContext {
        group: group.to_string(),
        consumer: cell.clone(),
        splitting: Mutex::default(),
        pumps: pumps.clone(),
        events: events_tx,
        committer: Arc::new(DirectCommitter {
            consumer: cell.clone(),
        }),
    };
    let mut client = base_config(config);
    client
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Range assigns each topic's partitions on their own, in ranges, in member order:
        // every topic spreads evenly over the replicas, and partition `p` of every topic
        // of the subscription goes to one replica, so a key's live, parked and resent
        // events meet in one process (`delivery::key_locks`). Cooperative-sticky balances
        // the count of partitions over all topics together: one replica could get all the
        // live partitions and another only side topics'. Range is an eager protocol (each
        // rebalance takes every partition back first); the revocation waits for the
        // workers as before.
        .set("partition.assignment.strategy", "range")
        .set(
            "auto.offset.reset",
            match start {
                StartFrom::Earliest => "earliest",
                StartFrom::Latest => "latest",
            },
        )
        // A replica that dies is noticed within this, and its partitions move.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set(
            "max.poll.interval.ms",
            KAFKA_MAX_POLL_INTERVAL.as_millis().to_string(),
        )
        // A fetch waits at most this long for data: brokers that answer a fetch only when
        // the wait expires (rather than as soon as data arrives) would otherwise add up to
        // librdkafka's default 500 ms to every delivery.
        .set("fetch.wait.max.ms", "50")
        // What librdkafka prefetches per partition queue before it stops fetching it (G7),
        // and how soon it looks again once the pump has taken from a full queue (the
        // default, 1 s, would stall a partition that is only briefly behind).
        .set("queued.min.messages", "1000")
        .set("queued.max.messages.kbytes", "1024")
        .set("fetch.queue.backoff.ms", "20");
    let consumer: Arc<GroupConsumer> = Arc::new(
        with_properties(client, config)
            .create_with_context(context)
            .map_err(kafka_error)?,
    );
    let _ = cell.set(Arc::downgrade(&consumer));
    let topic_names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_names).map_err(kafka_error)?;
    let driver = tokio::spawn(drive(consumer));

    // Assignment events arrive unbounded (there are never more than the partitions);
    // the subscription's contract is a bounded receiver, so forward them.
    let (bounded_tx, bounded_rx) = mpsc::channel(1024);
    let forward = tokio::spawn(forward_events(events_rx, bounded_tx));
    Ok(Subscription::new(
        bounded_rx,
        Some(Box::new(Session {
            driver,
            forward,
            pumps,
        })),
    ))
}

async fn forward_events(
    mut from: mpsc::UnboundedReceiver<PartitionEvent>,
    to: mpsc::Sender<PartitionEvent>,
) {
    while let Some(event) = from.recv().await {
        if to.send(event).await.is_err() {
            return;
        }
    }
}

/// Serves the shared consumer queue: rebalance callbacks run inside `recv`.
async fn drive(consumer: Arc<GroupConsumer>) {
    loop {
        match consumer.recv().await {
            // Every assigned partition has its own queue, so a message here is one fetched
            // for a partition that has since been revoked: its owner reads it again from the
            // committed offset.
            Ok(message) => tracing::debug!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                "dropped a message of a partition not split"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "Kafka consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

pub(super) fn to_record(message: &BorrowedMessage<'_>) -> ConsumedRecord {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| RecordHeader {
                    name: h.key.into(),
                    value: Bytes::copy_from_slice(h.value.unwrap_or_default()),
                })
                .collect()
        })
        .unwrap_or_default();
    ConsumedRecord {
        topic: Arc::from(message.topic()),
        partition: message.partition() as u32,
        offset: message.offset() as u64,
        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
        key: message.key().map(Bytes::copy_from_slice),
        headers,
        value: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
    }
}
