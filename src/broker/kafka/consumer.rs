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
//! tracker then committed past them (found by the benchmark; `tests/kafka.rs` holds the
//! regression test). Not taking from a queue has no such edge.
//!
//! The driver task owns the shared consumer queue, which then carries only rebalance
//! callbacks and errors, and the commits: the engine's commits come back to it and go out
//! asynchronously.

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
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use super::{base_config, kafka_error, with_properties};
use crate::broker::{
    BrokerError, Committer, ConsumedRecord, PartitionEvent, PartitionStream, RecordHeader,
    StartFrom, Subscription,
};
use crate::config::KafkaConfig;

/// Records buffered ahead of the engine, per partition, on top of librdkafka's own queue.
const READ_AHEAD: usize = 256;

type TopicPartition = (Arc<str>, u32);
type GroupConsumer = StreamConsumer<GroupContext>;
type PartitionQueue = StreamPartitionQueue<GroupContext>;

/// The partitions this process owns: each one's pump task, by partition.
type Pumps = Arc<Mutex<HashMap<TopicPartition, AbortHandle>>>;

/// Shared by the rebalance callbacks (which run inside the driver's `recv`) and the driver.
struct GroupContext {
    group: String,
    /// The consumer itself, set right after it is created: splitting a partition queue
    /// needs it. Weak, because the consumer owns this context.
    consumer: OnceLock<Weak<GroupConsumer>>,
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
            // Revocation: end the streams before the partitions go, so the engine stops
            // taking records and commits what it finished (a commit that arrives after the
            // partition moved is refused, and the new owner redelivers from the last
            // commit: G2 holds).
            Rebalance::Revoke(partitions) => {
                let mut pumps = self.pumps.lock().expect("pumps lock");
                for element in partitions.elements() {
                    let tp = topic_partition(element.topic(), element.partition());
                    if let Some(pump) = pumps.remove(&tp) {
                        pump.abort();
                        tracing::info!(group = %self.group, topic = %tp.0, partition = tp.1, "partition revoked");
                        let _ = self.events.send(PartitionEvent::Revoked {
                            topic: tp.0,
                            partition: tp.1,
                        });
                    }
                }
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
                    let (tx, rx) = mpsc::channel(READ_AHEAD);
                    let pump = tokio::spawn(pump(queue, tx));
                    if let Some(previous) = pumps.insert(tp.clone(), pump.abort_handle()) {
                        previous.abort();
                    }
                    let stream = PartitionStream::new(tp.0, tp.1, rx, self.committer.clone());
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

fn topic_partition(topic: &str, partition: i32) -> TopicPartition {
    (Arc::from(topic), partition as u32)
}

/// Moves one partition's records from its librdkafka queue into its stream's channel,
/// waiting while the channel is full (which is what stops the fetching).
async fn pump(queue: PartitionQueue, records: mpsc::Sender<ConsumedRecord>) {
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

/// A commit request from the engine to the driver.
struct CommitRequest {
    topic: String,
    partition: u32,
    next_offset: u64,
    reply: oneshot::Sender<Result<(), BrokerError>>,
}

struct DriverCommitter {
    requests: mpsc::UnboundedSender<CommitRequest>,
}

#[async_trait]
impl Committer for DriverCommitter {
    async fn commit(
        &self,
        topic: &str,
        partition: u32,
        next_offset: u64,
    ) -> Result<(), BrokerError> {
        let (reply, answer) = oneshot::channel();
        let request = CommitRequest {
            topic: topic.to_string(),
            partition,
            next_offset,
            reply,
        };
        self.requests
            .send(request)
            .map_err(|_| BrokerError::Closed)?;
        answer.await.map_err(|_| BrokerError::Closed)?
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
        let pumps: Vec<AbortHandle> = match self.pumps.lock() {
            Ok(mut pumps) => pumps.drain().map(|(_, pump)| pump).collect(),
            Err(_) => Vec::new(),
        };
        for pump in pumps {
            pump.abort();
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
    let (commits_tx, commits_rx) = mpsc::unbounded_channel();
    let pumps = Pumps::default();
    let context = GroupContext {
        group: group.to_string(),
        consumer: OnceLock::new(),
        splitting: Mutex::default(),
        pumps: pumps.clone(),
        events: events_tx,
        committer: Arc::new(DriverCommitter {
            requests: commits_tx,
        }),
    };
    let mut client = base_config(config);
    client
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("partition.assignment.strategy", "cooperative-sticky")
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
    let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
    let topic_names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_names).map_err(kafka_error)?;
    let driver = tokio::spawn(drive(consumer, commits_rx));

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

/// Serves the shared consumer queue (rebalance callbacks run inside `recv`) and commits.
async fn drive(consumer: Arc<GroupConsumer>, mut commits: mpsc::UnboundedReceiver<CommitRequest>) {
    loop {
        tokio::select! {
            Some(request) = commits.recv() => {
                let mut offsets = TopicPartitionList::new();
                let result = offsets
                    .add_partition_offset(&request.topic, request.partition as i32, Offset::Offset(request.next_offset as i64))
                    .and_then(|_| consumer.commit(&offsets, CommitMode::Async))
                    .map_err(kafka_error);
                let _ = request.reply.send(result);
            }
            message = consumer.recv() => match message {
                // Every assigned partition has its own queue, so a message here is one
                // fetched for a partition that has since been revoked: its owner reads it
                // again from the committed offset.
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
            },
        }
    }
}

fn to_record(message: &BorrowedMessage<'_>) -> ConsumedRecord {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| RecordHeader {
                    name: h.key.to_string(),
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
