//! One assigned partition: records fan out into lanes, lanes run concurrently, and the
//! commit tracker commits what is done.
//!
//! Lanes by `ordering`: `key` gives each partition key its own lane (records without a key
//! are unordered), `partition` one lane for the whole partition, `none` a lane per record.
//! At most `buffer` records are held per partition (queued in lanes or in flight); when the
//! buffer is full, the worker stops pulling from the broker, which stops fetching (G7).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::commit::CommitTracker;
use super::event::Event;
use super::lane::{self, Outcome};
use super::subscription::SubscriptionRuntime;
use crate::broker::PartitionStream;
use crate::config::OrderingMode;

/// How often a partition commits its progress while it runs.
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);

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
    let mut tracker = CommitTracker::default();
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

    loop {
        tokio::select! {
            biased;
            _ = super::stopped(&mut stop) => break,
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
                let Some(record) = record else { break };
                tracker.track(record.offset);
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
                if let Some(next) = tracker.take_commit()
                    && let Err(e) = stream.commit(next).await {
                        tracing::warn!(subscription = %sub.name, %topic, partition, error = %e, "commit failed; will retry");
                    }
            }
        }
    }

    // Revoked or stopping: no new records. Each lane has one event started; attempts on the
    // wire finish (bounded by the request timeout), waits and backoffs are abandoned, and
    // queued events were never started. Everything not done is redelivered later.
    let _ = release.send(true);
    let mut active = lanes.queued.len();
    let deadline = tokio::time::sleep(sub.timeout + Duration::from_secs(1));
    tokio::pin!(deadline);
    while active > 0 {
        tokio::select! {
            Some((_, offset, outcome)) = done_rx.recv() => {
                active -= 1;
                if outcome != Outcome::Abandoned {
                    tracker.done(offset);
                }
            }
            _ = &mut deadline => break,
        }
    }
    running.abort_all();
    if let Some(next) = tracker.take_commit()
        && let Err(e) = stream.commit(next).await
    {
        tracing::warn!(subscription = %sub.name, %topic, partition, error = %e, "final commit failed");
    }
    tracing::info!(subscription = %sub.name, %topic, partition, pending = tracker.pending(), "partition released");
}
