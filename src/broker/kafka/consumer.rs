//! Consuming from Kafka: a consumer group per subscription, its assignment turned into
//! partition streams.
//!
//! One driver task per subscription owns the `StreamConsumer`. It routes each message to
//! its partition's bounded channel; when a channel is full it pauses that partition (the
//! fetcher stops, G7) and keeps the few messages already fetched until there is room, then
//! resumes. Rebalance callbacks (cooperative-sticky: only the moved partitions) open and
//! close partition streams. Commits from the engine come back to the driver, which owns
//! the consumer, and go out asynchronously.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use super::{base_config, kafka_error, with_properties};
use crate::broker::{
    BrokerError, Committer, ConsumedRecord, PartitionEvent, PartitionStream, RecordHeader,
    StartFrom, Subscription,
};
use crate::config::KafkaConfig;

/// Records buffered ahead of the engine, per partition.
const READ_AHEAD: usize = 256;
/// How often paused partitions are checked for room.
const RESUME_CHECK: Duration = Duration::from_millis(20);

type TopicPartition = (Arc<str>, u32);

/// What the driver knows of one assigned partition.
struct Assigned {
    records: mpsc::Sender<ConsumedRecord>,
    /// Messages fetched while the channel was full, in order.
    overflow: VecDeque<ConsumedRecord>,
    paused: bool,
}

/// Shared by the rebalance callbacks (which run inside `recv`) and the driver.
struct GroupContext {
    group: String,
    assigned: Mutex<HashMap<TopicPartition, Assigned>>,
    events: mpsc::UnboundedSender<PartitionEvent>,
    committer: Arc<dyn Committer>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Revocation: end the streams before the partitions go, so the engine stops taking
        // records and commits what it finished (a commit that arrives after the partition
        // moved is refused, and the new owner redelivers from the last commit: G2 holds).
        if let Rebalance::Revoke(partitions) = rebalance {
            let mut assigned = self.assigned.lock().expect("assignment lock");
            for element in partitions.elements() {
                let tp: TopicPartition = (Arc::from(element.topic()), element.partition() as u32);
                if assigned.remove(&tp).is_some() {
                    tracing::info!(group = %self.group, topic = %tp.0, partition = tp.1, "partition revoked");
                    let _ = self.events.send(PartitionEvent::Revoked {
                        topic: tp.0,
                        partition: tp.1,
                    });
                }
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                let mut assigned = self.assigned.lock().expect("assignment lock");
                for element in partitions.elements() {
                    let tp: TopicPartition =
                        (Arc::from(element.topic()), element.partition() as u32);
                    let (tx, rx) = mpsc::channel(READ_AHEAD);
                    assigned.insert(
                        tp.clone(),
                        Assigned {
                            records: tx,
                            overflow: VecDeque::new(),
                            paused: false,
                        },
                    );
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

/// Stops the driver when the subscription is dropped.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
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
    let context = GroupContext {
        group: group.to_string(),
        assigned: Mutex::new(HashMap::new()),
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
        // Bound what librdkafka prefetches per partition (G7).
        .set("queued.max.messages.kbytes", "16384");
    let consumer: StreamConsumer<GroupContext> = with_properties(client, config)
        .create_with_context(context)
        .map_err(kafka_error)?;
    let topic_names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_names).map_err(kafka_error)?;
    let driver = tokio::spawn(drive(Arc::new(consumer), commits_rx));

    // Assignment events arrive unbounded (there are never more than the partitions);
    // the subscription's contract is a bounded receiver, so forward them.
    let (bounded_tx, bounded_rx) = mpsc::channel(1024);
    let forward = tokio::spawn(forward_events(events_rx, bounded_tx));
    Ok(Subscription::new(
        bounded_rx,
        Some(Box::new((Driver(driver), Driver(forward)))),
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

async fn drive(
    consumer: Arc<StreamConsumer<GroupContext>>,
    mut commits: mpsc::UnboundedReceiver<CommitRequest>,
) {
    let mut resume_check = tokio::time::interval(RESUME_CHECK);
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
                Ok(message) => route(&consumer, &message),
                Err(e) => {
                    tracing::warn!(error = %e, "Kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            _ = resume_check.tick() => drain_paused(&consumer),
        }
    }
}

fn route(consumer: &StreamConsumer<GroupContext>, message: &BorrowedMessage<'_>) {
    let record = to_record(message);
    let tp: TopicPartition = (record.topic.clone(), record.partition);
    let mut assigned = consumer.context().assigned.lock().expect("assignment lock");
    // A message of a partition revoked a moment ago: its new owner reads it again.
    let Some(state) = assigned.get_mut(&tp) else {
        return;
    };
    if state.overflow.is_empty() {
        match state.records.try_send(record) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Closed(_)) => return,
            Err(mpsc::error::TrySendError::Full(record)) => state.overflow.push_back(record),
        }
    } else {
        state.overflow.push_back(record);
    }
    if !state.paused {
        state.paused = true;
        set_paused(consumer, &tp, true);
    }
}

/// Moves held messages into channels with room again, and resumes emptied partitions.
fn drain_paused(consumer: &StreamConsumer<GroupContext>) {
    let mut assigned = consumer.context().assigned.lock().expect("assignment lock");
    for (tp, state) in assigned.iter_mut().filter(|(_, s)| s.paused) {
        while let Some(record) = state.overflow.pop_front() {
            match state.records.try_send(record) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(record)) => {
                    state.overflow.push_front(record);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    state.overflow.clear();
                    break;
                }
            }
        }
        if state.overflow.is_empty() {
            state.paused = false;
            set_paused(consumer, tp, false);
        }
    }
}

fn set_paused(
    consumer: &StreamConsumer<GroupContext>,
    (topic, partition): &TopicPartition,
    paused: bool,
) {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, *partition as i32);
    let result = if paused {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    if let Err(e) = result {
        tracing::warn!(%topic, partition, paused, error = %e, "pause/resume failed");
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
