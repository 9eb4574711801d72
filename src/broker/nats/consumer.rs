//! Delivery from JetStream: partitions shared among replicas by leases, each held
//! partition read by a durable pull consumer and acked up to the engine's commit point.
//!
//! When a replica takes a partition it resets the partition's consumer to its ack floor
//! (the last contiguously acked message): whatever the previous owner had in flight is
//! redelivered at once, rather than after the server's `ack_wait`. Within one owner the
//! server never needs to redeliver (the engine retries by itself), so `ack_wait` is long
//! and only `max_ack_pending` bounds what is outstanding.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{KEY_HEADER, leases, stream_name, subject};
use crate::broker::{
    BrokerError, Committer, ConsumedRecord, PartitionEvent, PartitionStream, RecordHeader,
    StartFrom, Subscription,
};

/// Records buffered ahead of the engine, per partition.
const READ_AHEAD: usize = 256;
/// Messages one pull request asks for.
const PULL_BATCH: usize = 256;
/// How long an unfilled pull request waits on the server. Also how soon a request lost to
/// a server restart is replaced: the client gives up on it 5 s after it expires.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// Messages delivered and not yet acked, per partition, before the server holds back.
const MAX_ACK_PENDING: i64 = 2048;
/// The engine retries by itself; the server only redelivers to a new owner (see above).
const ACK_WAIT: Duration = Duration::from_secs(3600);

type Unit = (Arc<str>, u32);

/// Reply subjects of delivered, unacked messages, per partition, in stream order.
type Pending = Arc<Mutex<HashMap<Unit, VecDeque<(u64, Subject)>>>>;

struct Context {
    jetstream: jetstream::Context,
    store: kv::Store,
    group: String,
    member: String,
    start: StartFrom,
    pending: Pending,
    committer: Arc<dyn Committer>,
    events: mpsc::Sender<PartitionEvent>,
}

struct Held {
    key: String,
    revision: u64,
    reader: JoinHandle<()>,
}

/// Stops the lease manager (and with it the readers) when the subscription is dropped.
struct Manager(JoinHandle<()>);

impl Drop for Manager {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[allow(clippy::too_many_arguments)]
pub fn subscribe(
    client: async_nats::Client,
    jetstream: jetstream::Context,
    store: kv::Store,
    group: &str,
    topics: &[String],
    partitions: u32,
    lease: Duration,
    start: StartFrom,
) -> Subscription {
    let (events, events_rx) = mpsc::channel(1024);
    let pending: Pending = Arc::default();
    let context = Context {
        committer: Arc::new(AckCommitter {
            client,
            pending: pending.clone(),
        }),
        jetstream,
        store,
        group: group.to_string(),
        member: uuid::Uuid::now_v7().simple().to_string(),
        start,
        pending,
        events,
    };
    let units: Vec<Unit> = topics
        .iter()
        .flat_map(|t| (0..partitions).map(move |p| (Arc::<str>::from(t.as_str()), p)))
        .collect();
    let manager = tokio::spawn(manage(context, units, lease));
    Subscription::new(events_rx, Some(Box::new(Manager(manager))))
}

/// The lease loop: heartbeat, renew, shed what is over the fair share, take what is free.
async fn manage(ctx: Context, units: Vec<Unit>, lease: Duration) {
    let mut held: HashMap<Unit, Held> = HashMap::new();
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Start the search for free partitions at a member-specific place, so replicas that
    // start together do not all race for the same ones.
    let offset = ctx.member.bytes().map(usize::from).sum::<usize>() % units.len().max(1);
    loop {
        tick.tick().await;
        if let Err(e) = leases::heartbeat(&ctx.store, &ctx.group, &ctx.member).await {
            tracing::warn!(group = %ctx.group, error = %e, "lease heartbeat failed");
            continue;
        }
        let mut lost = Vec::new();
        for (unit, lease) in held.iter_mut() {
            match leases::renew(&ctx.store, &lease.key, &ctx.member, lease.revision).await {
                Ok(Some(revision)) => lease.revision = revision,
                Ok(None) => lost.push(unit.clone()),
                Err(e) => {
                    tracing::warn!(group = %ctx.group, key = %lease.key, error = %e, "lease renewal failed")
                }
            }
        }
        for unit in lost {
            tracing::warn!(group = %ctx.group, topic = %unit.0, partition = unit.1, "partition lease lost");
            if let Some(lease) = held.remove(&unit) {
                stop(&ctx, unit, lease).await;
            }
        }
        // A reader that ended while its lease is held (it panicked) gives its partition
        // back. It is not taken again before the next tick, so the engine has a moment to
        // finish the partition's in-flight events before they are read again from the ack
        // floor.
        let ended: Vec<Unit> = held
            .iter()
            .filter(|(_, lease)| lease.reader.is_finished())
            .map(|(unit, _)| unit.clone())
            .collect();
        for unit in &ended {
            let lease = held.remove(unit).expect("present");
            let key = lease.key.clone();
            stop(&ctx, unit.clone(), lease).await;
            leases::release(&ctx.store, &key).await;
        }

        let members = match leases::members(&ctx.store, &ctx.group).await {
            Ok(members) => members,
            Err(e) => {
                tracing::warn!(group = %ctx.group, error = %e, "listing group members failed");
                continue;
            }
        };
        let fair_share = units.len().div_ceil(members);
        while held.len() > fair_share {
            let unit = held.keys().max().cloned().expect("held is not empty");
            let lease = held.remove(&unit).expect("present");
            tracing::info!(group = %ctx.group, topic = %unit.0, partition = unit.1, members, "handing a partition over");
            let key = lease.key.clone();
            stop(&ctx, unit, lease).await;
            leases::release(&ctx.store, &key).await;
        }
        for i in 0..units.len() {
            if held.len() >= fair_share {
                break;
            }
            let unit = &units[(i + offset) % units.len()];
            if held.contains_key(unit) || ended.contains(unit) {
                continue;
            }
            let key = leases::lease_key(&ctx.group, &unit.0, unit.1);
            match leases::acquire(&ctx.store, &key, &ctx.member).await {
                Ok(Some(revision)) => match start_reader(&ctx, unit.clone()).await {
                    Ok(reader) => {
                        held.insert(
                            unit.clone(),
                            Held {
                                key,
                                revision,
                                reader,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::warn!(group = %ctx.group, topic = %unit.0, partition = unit.1, error = %e, "cannot read partition");
                        leases::release(&ctx.store, &key).await;
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(group = %ctx.group, error = %e, "acquiring a lease failed")
                }
            }
        }
    }
}

async fn stop(ctx: &Context, unit: Unit, lease: Held) {
    lease.reader.abort();
    ctx.pending.lock().expect("pending lock").remove(&unit);
    let _ = ctx
        .events
        .send(PartitionEvent::Revoked {
            topic: unit.0,
            partition: unit.1,
        })
        .await;
}

/// Opens the partition's durable consumer at its ack floor and starts feeding a stream.
///
/// The reader pulls one bounded batch at a time (`PULL_BATCH` messages, expiring after
/// `PULL_EXPIRES`) rather than async-nats's continuous `messages()` stream. That stream keeps
/// its own count of messages requested and not yet received, and in the benchmark a
/// partition draining a backlog at full speed ended up with no request open on the server
/// while the count said there was: no messages, no heartbeats, the partition stalled
/// until it was reopened (BENCHMARKS.md). A batch either fills, expires (the server says
/// so), or is given up 5 s after it should have expired; then the next is requested.
async fn start_reader(ctx: &Context, unit: Unit) -> Result<JoinHandle<()>, BrokerError> {
    let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(e.to_string());
    let (topic, partition) = (unit.0.clone(), unit.1);
    let stream = ctx
        .jetstream
        .get_stream(stream_name(&topic))
        .await
        .map_err(|e| unavailable(&e))?;
    let name = format!(
        "{}-{}-p{partition}",
        stream_name(&ctx.group),
        stream_name(&topic)
    );
    let deliver_policy = match stream.consumer_info(&name).await {
        Ok(info) => {
            let floor = info.ack_floor.stream_sequence;
            stream
                .delete_consumer(&name)
                .await
                .map_err(|e| unavailable(&e))?;
            if floor == 0 {
                info.config.deliver_policy
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: floor + 1,
                }
            }
        }
        Err(_) => match ctx.start {
            StartFrom::Earliest => DeliverPolicy::All,
            StartFrom::Latest => DeliverPolicy::New,
        },
    };
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(name),
            filter_subject: subject(&topic, partition),
            // Acking a message acks every earlier one: a commit is one ack per partition.
            ack_policy: AckPolicy::All,
            ack_wait: ACK_WAIT,
            max_ack_pending: MAX_ACK_PENDING,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(&e))?;
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    ctx.pending
        .lock()
        .expect("pending lock")
        .insert(unit.clone(), VecDeque::new());
    let stream = PartitionStream::new(topic.clone(), partition, rx, ctx.committer.clone());
    let _ = ctx.events.send(PartitionEvent::Assigned(stream)).await;
    tracing::info!(group = %ctx.group, %topic, partition, "partition lease taken");

    let pending = ctx.pending.clone();
    Ok(tokio::spawn(async move {
        loop {
            let mut batch = match consumer
                .batch()
                .max_messages(PULL_BATCH)
                .expires(PULL_EXPIRES)
                .messages()
                .await
            {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(%topic, partition, error = %e, "JetStream pull request failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            while let Some(message) = batch.next().await {
                let message = match message {
                    Ok(message) => message,
                    Err(e) => {
                        tracing::warn!(%topic, partition, error = %e, "JetStream pull ended with an error");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        break;
                    }
                };
                let Ok(info) = message.info() else { continue };
                let (sequence, published) = (info.stream_sequence, info.published);
                let headers: Vec<RecordHeader> = message
                    .headers
                    .iter()
                    .flat_map(|headers| headers.iter())
                    .flat_map(|(name, values)| {
                        values.iter().map(move |v| RecordHeader {
                            // One allocation: `to_string` would format, then copy again.
                            name: AsRef::<str>::as_ref(name).to_ascii_lowercase(),
                            value: Bytes::copy_from_slice(v.as_str().as_bytes()),
                        })
                    })
                    .collect();
                let key = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(KEY_HEADER))
                    .map(|v| Bytes::copy_from_slice(v.as_str().as_bytes()));
                let record = ConsumedRecord {
                    topic: topic.clone(),
                    partition,
                    offset: sequence,
                    timestamp_ms: (published.unix_timestamp_nanos() / 1_000_000) as i64,
                    key,
                    headers,
                    value: message.payload.clone(),
                };
                if let Some(reply) = message.reply.clone()
                    && let Some(queue) = pending
                        .lock()
                        .expect("pending lock")
                        .get_mut(&(topic.clone(), partition))
                {
                    queue.push_back((sequence, reply));
                }
                if tx.send(record).await.is_err() {
                    return;
                }
            }
        }
    }))
}

/// Commits by acking the last delivered message below the commit point: the consumer's
/// `AckPolicy::All` acks every earlier one with it, so a commit costs one message to the
/// server per partition rather than one per record.
struct AckCommitter {
    client: async_nats::Client,
    pending: Pending,
}

#[async_trait]
impl Committer for AckCommitter {
    async fn commit(
        &self,
        topic: &str,
        partition: u32,
        next_offset: u64,
    ) -> Result<(), BrokerError> {
        let last: Option<Subject> = {
            let mut pending = self.pending.lock().expect("pending lock");
            let Some(queue) = pending.get_mut(&(Arc::from(topic), partition)) else {
                // The partition moved to another replica; it redelivers from its ack floor.
                return Err(BrokerError::Rejected(format!(
                    "{topic}/{partition} is no longer held"
                )));
            };
            let mut last = None;
            while queue
                .front()
                .is_some_and(|(sequence, _)| *sequence < next_offset)
            {
                last = queue.pop_front().map(|(_, reply)| reply);
            }
            last
        };
        if let Some(reply) = last {
            self.client
                .publish(reply, Bytes::from_static(b"+ACK"))
                .await
                .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        }
        Ok(())
    }
}
