//! One assigned partition: records fan out into lanes, lanes run concurrently, and the
//! commit tracker commits what is done.
//!
//! Lanes by `ordering`: `key` gives each partition key its own lane (records without a key
//! are unordered), `partition` one lane for the whole partition, `none` a lane per record.
//! At most `buffer` records are held per partition (queued in lanes or in flight); when the
//! buffer is full, the worker stops pulling from the broker, which stops fetching (G7). A key
//! that keeps failing holds only its own records: the others go on through their lanes and
//! are committed past it, until its queued records fill the buffer.
//!
//! Resumption: a worker starts from what the partition's last commit said was done (see
//! [`super::commit`]), so records finished behind a failing key before a crash or a move
//! are skipped, not sent again (G8).
//!
//! Handover: when the partition is revoked (or the process stops), the worker stops taking
//! records and starting attempts, lets the attempts on the wire finish within the
//! subscription's grace, commits what is done (retried until the broker accepts it, for a
//! bounded time) and only then drops its stream, which tells the backend that it may let
//! the partition go. A tenure known only `until` some instant (a lease not renewed since)
//! fences the worker: at that instant it abandons everything, attempts on the wire included,
//! so it has stopped before another replica may start.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::commit::CommitTracker;
use super::event::Event;
use super::lane::{self, Outcome};
use super::subscription::SubscriptionRuntime;
use crate::broker::{Completion, PartitionStream, Progress, Tenure, sleep_until};
use crate::config::OrderingMode;

/// How often a partition commits its progress while it runs.
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// How long the last commit of a partition is retried before the partition is let go
/// anyway (the next owner then redelivers what it could not record).
const FINAL_COMMIT_FOR: Duration = Duration::from_secs(5);

/// Why a partition worker stopped taking records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The process is stopping.
    Shutdown,
    /// The backend hands the partition to another owner.
    Revoked,
    /// The ownership could not be confirmed in time: stop at once.
    Fenced,
    /// The broker ended the stream.
    StreamEnded,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LaneKey {
    Key(Bytes),
    Partition,
    Record(u64),
}

/// Lanes with an event in flight, each with the events waiting behind it.
struct Lanes {
    queued: HashMap<LaneKey, VecDeque<Event>>,
}

pub async fn run(
    sub: Arc<SubscriptionRuntime>,
    mut stream: PartitionStream,
    mut stop: watch::Receiver<bool>,
) {
    let (topic, partition) = (stream.topic.clone(), stream.partition);
    tracing::info!(subscription = %sub.name, %topic, partition, "partition assigned");
    let mut tenure = stream.tenure();
    let resumed = resumed(&sub, &stream).await;
    let mut tracker = CommitTracker::new(stream.per_record(), resumed);
    let mut lanes = Lanes {
        queued: HashMap::new(),
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(LaneKey, u64, Outcome)>();
    let mut running: JoinSet<()> = JoinSet::new();
    let mut held = 0usize;
    let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Lanes stop on shutdown and on revocation alike, so they get their own signal.
    let (release, released) = watch::channel(false);

    let start = |lane: LaneKey, event: Event, running: &mut JoinSet<()>| {
        let (sub, done, mut stop) = (sub.clone(), done_tx.clone(), released.clone());
        running.spawn(async move {
            let outcome = lane::deliver(&sub, &event, &mut stop).await;
            let _ = done.send((lane, event.record.offset, outcome));
        });
    };

    let ending = loop {
        let fence = tenure.borrow().held_until();
        tokio::select! {
            biased;
            _ = super::stopped(&mut stop) => break Ending::Shutdown,
            changed = tenure.changed() => {
                if changed.is_err() || *tenure.borrow_and_update() == Tenure::Revoked {
                    break Ending::Revoked;
                }
            }
            _ = sleep_until(fence), if fence.is_some() => break Ending::Fenced,
            Some((lane, offset, outcome)) = done_rx.recv() => {
                held -= 1;
                // Reap finished tasks: a JoinSet keeps each one until it is joined.
                while running.try_join_next().is_some() {}
                if outcome == Outcome::Abandoned {
                    continue;
                }
                tracker.done(offset);
                // The lane's next event starts only now: per-key order.
                let queue = lanes.queued.get_mut(&lane).expect("a finished event's lane exists");
                match queue.pop_front() {
                    Some(next) => start(lane, next, &mut running),
                    None => { lanes.queued.remove(&lane); }
                }
            }
            record = stream.next(), if held < sub.buffer => {
                let Some(record) = record else { break Ending::StreamEnded };
                if tracker.is_empty() {
                    tracing::debug!(subscription = %sub.name, %topic, partition, offset = record.offset, "first record");
                }
                if !tracker.track(record.offset) {
                    // Done before this worker started (G8): not sent again.
                    continue;
                }
                let event = Event::from_record(record, sub.decode);
                if !sub.wants(&event) {
                    tracker.done(event.record.offset);
                    continue;
                }
                held += 1;
                let lane = match (sub.ordering, event.key()) {
                    (OrderingMode::Key, Some(key)) => LaneKey::Key(key.clone()),
                    (OrderingMode::Partition, _) => LaneKey::Partition,
                    _ => LaneKey::Record(event.record.offset),
                };
                match lanes.queued.get_mut(&lane) {
                    // The lane is busy: the event waits its turn.
                    Some(queue) => queue.push_back(event),
                    None => {
                        lanes.queued.insert(lane.clone(), VecDeque::new());
                        start(lane, event, &mut running);
                    }
                }
            }
            _ = commit_tick.tick() => {
                if let Err(e) = commit(&stream, &mut tracker).await {
                    tracing::warn!(subscription = %sub.name, %topic, partition, error = %e, "commit failed; will retry");
                }
            }
        }
    };

    // No new records and no new attempts. Each lane has one event started; attempts on the
    // wire finish within the grace (waits and backoffs are abandoned at once), queued events
    // were never started. Everything not done is redelivered by the next owner.
    let _ = release.send(true);
    let grace = match ending {
        Ending::Fenced => Duration::ZERO,
        _ => sub.timeout + Duration::from_secs(1),
    };
    let mut deadline = Instant::now() + grace;
    if let Some(fence) = tenure.borrow().held_until() {
        deadline = deadline.min(fence);
    }
    let mut active = lanes.queued.len();
    while active > 0 {
        tokio::select! {
            Some((_, offset, outcome)) = done_rx.recv() => {
                active -= 1;
                if outcome != Outcome::Abandoned {
                    tracker.done(offset);
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => break,
        }
    }
    // Whatever is still running now is cut off: after a fence it must not go on.
    running.abort_all();
    if ending == Ending::Fenced {
        tracing::warn!(subscription = %sub.name, %topic, partition, abandoned = active, "partition ownership not confirmed in time; stopped delivering it");
    }
    let final_commit_by = Instant::now() + FINAL_COMMIT_FOR;
    loop {
        match commit(&stream, &mut tracker).await {
            Ok(()) => break,
            Err(e) if Instant::now() >= final_commit_by => {
                tracing::warn!(subscription = %sub.name, %topic, partition, error = %e, "final commit failed; the next owner redelivers what it did not record");
                break;
            }
            Err(_) => tokio::time::sleep(COMMIT_INTERVAL).await,
        }
    }
    tracing::info!(subscription = %sub.name, %topic, partition, ?ending, pending = tracker.pending(), skipped_as_done = tracker.skipped(), "partition released");
    // Dropping the stream tells the backend that this worker has let go.
    drop(stream);
}

/// What the partition's last commit said was done, so that it is not delivered again.
/// Retried for a while; without it the partition is delivered from its commit point (which
/// is safe, only not as economical).
async fn resumed(sub: &SubscriptionRuntime, stream: &PartitionStream) -> Option<Completion> {
    let give_up = Instant::now() + FINAL_COMMIT_FOR;
    loop {
        match stream.resumed().await {
            Ok(resumed) => {
                if let Some(known) = resumed.as_ref().filter(|c| c.knows_more()) {
                    tracing::info!(subscription = %sub.name, topic = %stream.topic, partition = stream.partition, next_offset = known.next_offset, known_until = known.known_until, open = known.open.len(), "resuming: records done above the commit point are skipped");
                }
                return resumed;
            }
            Err(e) if Instant::now() >= give_up => {
                tracing::warn!(subscription = %sub.name, topic = %stream.topic, partition = stream.partition, error = %e, "cannot read what the last commit said was done; delivering from the commit point");
                return None;
            }
            Err(_) => tokio::time::sleep(COMMIT_INTERVAL).await,
        }
    }
}

/// Commits what the tracker has to commit, if anything; counted only once accepted.
async fn commit(
    stream: &PartitionStream,
    tracker: &mut CommitTracker,
) -> Result<(), crate::broker::BrokerError> {
    let Some(pending) = tracker.take() else {
        return Ok(());
    };
    tracing::debug!(topic = %stream.topic, partition = stream.partition, next_offset = pending.next_offset(), open = pending.completion.open.len(), done = pending.done.len(), "commit");
    stream
        .commit(Progress {
            completion: &pending.completion,
            done: &pending.done,
        })
        .await?;
    tracker.accepted(&pending);
    Ok(())
}
