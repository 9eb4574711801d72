//! Delivery from JetStream: partitions shared among replicas by leases ([`super::leases`]),
//! each held partition read by a durable pull consumer ([`super::reader`]) whose messages
//! are acked one by one as the engine finishes them.
//!
//! Why per-message acks (`AckPolicy::Explicit`): acking "everything up to here" would either
//! hold every later message behind one key that keeps failing (the server stops sending at
//! `max_ack_pending`) or ack that key's messages before they are delivered. Acked one by one,
//! a failing key holds only its own messages, and the consumer's ack state is exactly what
//! was delivered: a restart or a new owner gets only the messages not yet done (G8).
//!
//! Messages this replica holds unacked are kept alive with progress acks (`+WPI`) at every
//! lease renewal, so the server redelivers nothing while the owner works on them, however long
//! a key retries; `ack_wait` is half the lease period.
//!
//! Handover without overlap (G3):
//! - The owner's tenure is bounded by its last lease renewal: the engine fences itself (stops
//!   delivering) and the reader stops pulling three quarters of a lease period after the last
//!   renewal that succeeded, before the lease can expire and another replica take it.
//! - A partition handed over on purpose (over the fair share) stays leased and renewed until its worker
//!   has finished what is on the wire and acked what is done; then the lease is deleted.
//! - A new owner that finds messages still unacked (delivered to the previous owner, whether it
//!   handed over or died) waits one `ack_wait` before its first pull: by then the server
//!   redelivers those first, in order, ahead of anything newer.

use crate::broker::read_ahead;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::Subject;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::leases;
use super::names::{consumer_name, stream_name, subject};
use super::parked::ParkedStore;
use super::reader::{Reader, Unacked, Unit};
use crate::broker::{
    BrokerError, Committer, Completion, PartitionEvent, PartitionHandle, PartitionStream, Progress,
    StartFrom, Subscription,
};

/// Messages delivered and not yet acked, per partition, before the server holds back.
const MAX_ACK_PENDING: i64 = 2048;
/// How long a handed-over partition's reader may take to end its last pull.
const READER_STOP_WAIT: Duration = Duration::from_secs(10);

struct Context {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    store: kv::Store,
    group: String,
    member: String,
    start: StartFrom,
    lease: Duration,
    pending: Unacked,
    committer: Arc<dyn Committer>,
    events: mpsc::Sender<PartitionEvent>,
}

impl Context {
    /// How long the server waits for an ack (or a progress ack) before redelivering.
    fn ack_wait(&self) -> Duration {
        self.lease / 2
    }

    /// How long after a renewal was sent the partition is surely still ours: the lease
    /// expires a lease period after the server stored the renewal, and a quarter of the
    /// period is kept as margin for clocks, scheduling and the request's own time.
    fn fence(&self, renewed_at: Instant) -> Instant {
        renewed_at + self.lease * 3 / 4
    }
}

struct Held {
    key: String,
    revision: u64,
    handle: PartitionHandle,
    reader: JoinHandle<()>,
    /// Handed over or lost: the worker is stopping; the lease goes once it has.
    releasing: Option<Release>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// Ours until deleted: renewed until the worker has let go.
    HandOver,
    /// Somebody else's already (or expired): nothing to renew or delete.
    Lost,
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
    parked: ParkedStore,
    group: &str,
    topics: &[String],
    partitions: u32,
    lease: Duration,
    start: StartFrom,
) -> Subscription {
    let (events, events_rx) = mpsc::channel(1024);
    let pending: Unacked = Arc::default();
    let context = Context {
        committer: Arc::new(AckCommitter {
            client: client.clone(),
            jetstream: jetstream.clone(),
            group: group.to_string(),
            pending: pending.clone(),
            parked,
        }),
        client,
        jetstream,
        store,
        group: group.to_string(),
        member: uuid::Uuid::now_v7().simple().to_string(),
        start,
        lease,
        pending,
        events,
    };
    let topics: Vec<Arc<str>> = topics.iter().map(|t| Arc::from(t.as_str())).collect();
    let manager = tokio::spawn(manage(context, topics, partitions));
    Subscription::new(events_rx, Some(Box::new(Manager(manager))))
}

/// The lease loop: heartbeat, renew (and keep held messages alive), let go of what was
/// handed over, shed what is over the fair share, take what is free.
///
/// Partitions are shared by number: partition `p` of every topic of the group goes to one
/// member, which holds all of their leases or none. So each topic spreads evenly over the
/// members (the parking and resend topics never take a member's share of the live ones), and
/// a key, which lands on the same number in every topic, has its live, parked and resent
/// events delivered by one process (`delivery::key_locks`). The lease keys stay one per
/// topic and partition, so members that share by topic and partition still exclude these.
async fn manage(ctx: Context, topics: Vec<Arc<str>>, partitions: u32) {
    let mut held: HashMap<Unit, Held> = HashMap::new();
    // Numbers whose readers could not start, and when.
    let mut failed: HashMap<u32, Instant> = HashMap::new();
    let (mut last_members, mut settling_until) = (0, Instant::now());
    let mut tick = tokio::time::interval(ctx.lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Start the search for free partitions at a member-specific place, so replicas that
    // start together do not all race for the same ones.
    let offset = ctx.member.bytes().map(u32::from).sum::<u32>() % partitions.max(1);
    loop {
        tick.tick().await;
        if let Err(e) = leases::heartbeat(&ctx.store, &ctx.group, &ctx.member).await {
            tracing::warn!(group = %ctx.group, error = %e, "lease heartbeat failed");
        }
        renew_all(&ctx, &mut held).await;
        finish_releases(&ctx, &mut held).await;
        let members = match leases::members(&ctx.store, &ctx.group).await {
            Ok(members) => members,
            Err(e) => {
                tracing::warn!(group = %ctx.group, error = %e, "listing group members failed");
                continue;
            }
        };
        // The share is `ceil(numbers / members)`, but when a member joins, every member
        // sheds down to `floor` (at least one) and takes no more for a lease period, so
        // that the new one finds numbers free (keeping the larger share, 4 numbers over 3
        // members would stay 2, 2 and 0); then the numbers left are taken up to the
        // larger share.
        if members > last_members {
            settling_until = Instant::now() + ctx.lease;
        }
        last_members = members;
        let fair_share = if Instant::now() < settling_until {
            (partitions / members as u32).max(1) as usize
        } else {
            partitions.div_ceil(members as u32) as usize
        };
        hand_over_broken_numbers(&ctx, &mut held, topics.len());
        let mut whole = whole_numbers(&held, topics.len());
        whole.sort_unstable();
        while whole.len() > fair_share {
            let number = whole.pop().expect("more than the share");
            tracing::info!(group = %ctx.group, partition = number, members, "handing a partition over");
            hand_over(&mut held, number);
        }
        failed.retain(|_, at: &mut Instant| at.elapsed() < ctx.lease * 5);
        for i in 0..partitions {
            if whole_numbers(&held, topics.len()).len() >= fair_share {
                break;
            }
            let number = (i + offset) % partitions;
            if !held.keys().any(|unit| unit.1 == number)
                && !failed.contains_key(&number)
                && !take(&ctx, &mut held, &topics, number).await
            {
                // Not taken again for a while: a topic that cannot be read would have its
                // number's other topics started and stopped on every tick.
                failed.insert(number, Instant::now());
            }
        }
    }
}

/// The partition numbers whose every topic's lease this member holds and delivers.
fn whole_numbers(held: &HashMap<Unit, Held>, topics: usize) -> Vec<u32> {
    let mut active: HashMap<u32, usize> = HashMap::new();
    for (unit, lease) in held {
        if lease.releasing.is_none() {
            *active.entry(unit.1).or_default() += 1;
        }
    }
    active
        .into_iter()
        .filter_map(|(number, count)| (count == topics).then_some(number))
        .collect()
}

/// A number of which one topic's partition was lost or ended is handed over whole, so that
/// a member holds every topic of a number or none.
fn hand_over_broken_numbers(ctx: &Context, held: &mut HashMap<Unit, Held>, topics: usize) {
    let whole = whole_numbers(held, topics);
    let broken: Vec<u32> = held
        .iter()
        .filter(|(unit, lease)| lease.releasing.is_none() && !whole.contains(&unit.1))
        .map(|(unit, _)| unit.1)
        .collect();
    for number in broken {
        tracing::info!(group = %ctx.group, partition = number, "a topic of the partition was let go; handing the rest over");
        hand_over(held, number);
    }
}

/// Asks the workers of every topic's partition `number` to hand it over.
fn hand_over(held: &mut HashMap<Unit, Held>, number: u32) {
    for (unit, lease) in held.iter_mut() {
        if unit.1 == number && lease.releasing.is_none() {
            lease.handle.revoke();
            lease.releasing = Some(Release::HandOver);
        }
    }
}

/// Takes partition `number` of every topic: all of their leases, or none (what was taken
/// is given back when one is held by someone else); then starts their readers. False when
/// a reader could not start (the number is given back whole).
async fn take(
    ctx: &Context,
    held: &mut HashMap<Unit, Held>,
    topics: &[Arc<str>],
    number: u32,
) -> bool {
    let asked_at = Instant::now();
    let mut taken: Vec<(Unit, String, u64)> = Vec::new();
    for topic in topics {
        let key = leases::lease_key(&ctx.group, topic, number);
        match leases::acquire(&ctx.store, &key, &ctx.member).await {
            Ok(Some(revision)) => taken.push(((topic.clone(), number), key, revision)),
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(group = %ctx.group, error = %e, "acquiring a lease failed");
                break;
            }
        }
    }
    if taken.len() < topics.len() {
        for (_, key, _) in taken {
            leases::release(&ctx.store, &key).await;
        }
        return true;
    }
    let mut taken = taken.into_iter();
    while let Some((unit, key, revision)) = taken.next() {
        match start_reader(ctx, unit.clone(), asked_at).await {
            Ok((handle, reader)) => {
                held.insert(
                    unit,
                    Held {
                        key,
                        revision,
                        handle,
                        reader,
                        releasing: None,
                    },
                );
            }
            Err(e) => {
                // The number goes whole: the topics started are handed over, the others
                // given back before they start.
                tracing::warn!(group = %ctx.group, topic = %unit.0, partition = unit.1, error = %e, "cannot read partition; giving its partition number back");
                leases::release(&ctx.store, &key).await;
                for (_, key, _) in taken.by_ref() {
                    leases::release(&ctx.store, &key).await;
                }
                hand_over(held, number);
                return false;
            }
        }
    }
    true
}

/// Renews every lease still ours and extends its worker's tenure; a lease found taken
/// fences its worker at once. After a renewal, the partition's held messages get a
/// progress ack, so the server does not redeliver them while this owner works on them.
async fn renew_all(ctx: &Context, held: &mut HashMap<Unit, Held>) {
    for (unit, lease) in held.iter_mut() {
        if lease.releasing == Some(Release::Lost) {
            continue;
        }
        let sent_at = Instant::now();
        match leases::renew(&ctx.store, &lease.key, &ctx.member, lease.revision).await {
            Ok(Some(revision)) => {
                lease.revision = revision;
                lease.handle.hold_until(ctx.fence(sent_at));
                keep_alive(ctx, unit).await;
            }
            Ok(None) => {
                tracing::warn!(group = %ctx.group, topic = %unit.0, partition = unit.1, "partition lease lost; stopping its delivery");
                lease.handle.lose();
                lease.releasing = Some(Release::Lost);
            }
            // The tenure is not extended: the worker fences itself when it runs out.
            Err(e) => {
                tracing::warn!(group = %ctx.group, key = %lease.key, error = %e, "lease renewal failed")
            }
        }
    }
}

/// Sends a progress ack for every message of the partition delivered and not yet acked.
async fn keep_alive(ctx: &Context, unit: &Unit) {
    let replies: Vec<Subject> = ctx
        .pending
        .lock()
        .expect("pending lock")
        .get(unit)
        .map(|messages| messages.values().cloned().collect())
        .unwrap_or_default();
    for reply in replies {
        if ctx
            .client
            .publish(reply, Bytes::from_static(b"+WPI"))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Lets go of the partitions whose workers have stopped (or whose reader died): the reader
/// ends its last pull, the lease is deleted if it is still ours.
async fn finish_releases(ctx: &Context, held: &mut HashMap<Unit, Held>) {
    // A reader that ended by itself (it panicked) hands its partition over too.
    for (unit, lease) in held.iter_mut() {
        if lease.releasing.is_none() && lease.reader.is_finished() {
            tracing::warn!(group = %ctx.group, topic = %unit.0, partition = unit.1, "partition reader ended; handing the partition over");
            lease.handle.revoke();
            lease.releasing = Some(Release::HandOver);
        }
    }
    let done: Vec<Unit> = held
        .iter_mut()
        .filter_map(|(unit, lease)| {
            (lease.releasing.is_some() && lease.handle.is_released()).then_some(unit)
        })
        .cloned()
        .collect();
    for unit in done {
        let lease = held.remove(&unit).expect("present");
        // The reader stops pulling once the tenure is revoked and ends its open pull
        // request first, so no message reaches this replica after the lease is gone.
        let mut reader = lease.reader;
        if tokio::time::timeout(READER_STOP_WAIT, &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
        ctx.pending.lock().expect("pending lock").remove(&unit);
        if lease.releasing == Some(Release::HandOver) {
            leases::release(&ctx.store, &lease.key).await;
        }
        tracing::info!(group = %ctx.group, topic = %unit.0, partition = unit.1, "partition lease given up");
    }
}

/// Opens the partition's durable consumer and starts feeding a stream.
async fn start_reader(
    ctx: &Context,
    unit: Unit,
    leased_at: Instant,
) -> Result<(PartitionHandle, JoinHandle<()>), BrokerError> {
    let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(e.to_string());
    let (topic, partition) = (unit.0.clone(), unit.1);
    let stream = ctx
        .jetstream
        .get_stream(stream_name(&topic))
        .await
        .map_err(|e| unavailable(&e))?;
    let name = consumer_name(&ctx.group, &topic, partition);
    let mut deliver_policy = match ctx.start {
        StartFrom::Earliest => DeliverPolicy::All,
        StartFrom::Latest => DeliverPolicy::New,
    };
    let (mut unacked, mut usable_as_is, mut resume_floor) = (0, false, 0);
    match stream.consumer_info(&name).await {
        Ok(info) if info.config.ack_policy == AckPolicy::Explicit => {
            (unacked, usable_as_is) = (info.num_ack_pending, true);
            resume_floor = info.delivered.stream_sequence;
            // Made under another `broker.nats.lease`: the consumer (which outlives the
            // process) takes this one's ack wait, or held messages would be redelivered
            // under their owner between two renewals.
            if info.config.ack_wait != ctx.ack_wait() {
                deliver_policy = info.config.deliver_policy;
                usable_as_is = false;
            }
        }
        // A consumer of an earlier layout (acked cumulatively): start a new one where its
        // acks ended. Its unacked messages are delivered again.
        Ok(info) => {
            let floor = info.ack_floor.stream_sequence;
            stream
                .delete_consumer(&name)
                .await
                .map_err(|e| unavailable(&e))?;
            deliver_policy = if floor == 0 {
                info.config.deliver_policy
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: floor + 1,
                }
            };
        }
        Err(_) => {}
    }
    let consumer = if usable_as_is {
        stream
            .get_consumer::<pull::Config>(&name)
            .await
            .map_err(|e| unavailable(&e))?
    } else {
        stream
            .create_consumer(pull::Config {
                durable_name: Some(name),
                filter_subject: subject(&topic, partition),
                ack_policy: AckPolicy::Explicit,
                ack_wait: ctx.ack_wait(),
                max_ack_pending: MAX_ACK_PENDING,
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&e))?
    };
    let (tx, rx) = read_ahead::channel();
    ctx.pending
        .lock()
        .expect("pending lock")
        .insert(unit.clone(), BTreeMap::new());
    let (stream, handle) =
        PartitionStream::new(topic.clone(), partition, rx, ctx.committer.clone());
    handle.hold_until(ctx.fence(leased_at));
    let reader = Reader {
        client: ctx.client.clone(),
        jetstream: ctx.jetstream.clone(),
        consumer,
        resume_floor,
        unacked,
        ack_wait: ctx.ack_wait(),
        unit: unit.clone(),
        records: tx,
        pending: ctx.pending.clone(),
        tenure: stream.tenure(),
        pull_expires: ctx.lease / 5,
    };
    let _ = ctx.events.send(PartitionEvent::Assigned(stream)).await;
    tracing::info!(group = %ctx.group, %topic, partition, unacked, "partition lease taken");
    Ok((handle, tokio::spawn(reader.run())))
}

/// Acks each finished message on its own (see the module's comment), and keeps each
/// partition's parked keys in a KV bucket (the acks cannot carry them).
struct AckCommitter {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    group: String,
    pending: Unacked,
    parked: ParkedStore,
}

impl AckCommitter {
    /// The consumer's ack floor: everything at or below it is acked.
    async fn ack_floor(&self, topic: &str, partition: u32) -> Result<u64, BrokerError> {
        // Never read yet: nothing is done.
        Ok(self
            .consumer_info(topic, partition)
            .await?
            .map_or(0, |info| info.ack_floor.stream_sequence))
    }

    /// The partition consumer's state; `None` before it was first created.
    async fn consumer_info(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Option<jetstream::consumer::Info>, BrokerError> {
        let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(e.to_string());
        let stream = self
            .jetstream
            .get_stream(stream_name(topic))
            .await
            .map_err(|e| unavailable(&e))?;
        match stream
            .consumer_info(consumer_name(&self.group, topic, partition))
            .await
        {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(&e)),
        }
    }
}

#[async_trait]
impl Committer for AckCommitter {
    async fn commit(
        &self,
        topic: &str,
        partition: u32,
        progress: Progress<'_>,
    ) -> Result<(), BrokerError> {
        let unit: Unit = (Arc::from(topic), partition);
        let replies: Vec<(u64, Subject)> = {
            let pending = self.pending.lock().expect("pending lock");
            let Some(messages) = pending.get(&unit) else {
                // Let go already: its unacked messages go to the next owner.
                return Ok(());
            };
            progress
                .done
                .iter()
                .filter_map(|sequence| Some((*sequence, messages.get(sequence)?.clone())))
                .collect()
        };
        // The parked keys first: a parked event's message acked before its key is recorded
        // as parked would, after a crash between the two writes, be gone from the
        // partition while its key is not parked, and the key's next event would go before
        // it. Refused, nothing is acked; the commit is tried again.
        self.parked
            .write(topic, partition, &progress.completion.parked)
            .await?;
        for (sequence, reply) in replies {
            self.client
                .publish(reply, Bytes::from_static(b"+ACK"))
                .await
                .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            if let Some(messages) = self.pending.lock().expect("pending lock").get_mut(&unit) {
                messages.remove(&sequence);
            }
        }
        Ok(())
    }

    fn per_record(&self) -> bool {
        true
    }

    /// Not delivered to the consumer yet plus delivered and not acknowledged: the server
    /// counts it, so `committed` (a stream sequence here) is not needed.
    async fn lag(
        &self,
        topic: &str,
        partition: u32,
        _committed: u64,
    ) -> Result<Option<u64>, BrokerError> {
        Ok(self
            .consumer_info(topic, partition)
            .await?
            .map(|info| info.num_pending + info.num_ack_pending as u64))
    }

    /// The consumer's ack floor and the partition's parked keys.
    async fn stored(&self, topic: &str, partition: u32) -> Result<Option<Completion>, BrokerError> {
        let floor = self.ack_floor(topic, partition).await?;
        let parked = self.parked.keys(topic, partition).await?;
        Ok(Some(Completion {
            parked,
            ..Completion::at(floor + 1)
        }))
    }

    /// As `stored`, claiming the partition's parked keys for this replica (see `parked`).
    async fn resume(&self, topic: &str, partition: u32) -> Result<Option<Completion>, BrokerError> {
        let floor = self.ack_floor(topic, partition).await?;
        let parked = self.parked.claim(topic, partition).await?;
        Ok(Some(Completion {
            parked,
            ..Completion::at(floor + 1)
        }))
    }
}
