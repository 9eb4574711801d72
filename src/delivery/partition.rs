//! One assigned partition: records fan out into lanes, lanes run concurrently, and the
//! commit tracker commits what is done.
//!
//! One task per partition: each busy lane's event is a future this worker polls itself
//! (no task spawned, joined and reported through a channel per event), and the worker's
//! own calls to the broker (commits, lag reads, parked-key reviews) are futures on their
//! way beside them, so that a slow commit does not hold up the lanes.
//!
//! Lanes by `ordering`: `key` gives each partition key its own lane (records without a key
//! are unordered), `partition` one lane for the whole partition, `none` a lane per record.
//! At most `buffer` records are held per partition (queued in lanes or in flight); when the
//! buffer is full, the worker stops pulling from the broker, which stops fetching (G7). A key
//! that keeps failing holds only its own records: the others go on through their lanes and
//! are committed past it, until its queued records fill the buffer.
//!
//! Parking: a key failing longer than `retry.park_after` moves to the parking topic with
//! its queued and later events, so the commit point moves on (see [`super::parking`]).
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
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;

use super::commit::{CommitTracker, Pending};
use super::event::Event;
use super::lane::{self, Outcome};
use super::parking::{self, ParkedKeys, Review};
use super::subscription::SubscriptionRuntime;
use crate::broker::{
    BrokerError, Completion, PartitionCalls, PartitionStream, Progress, Tenure, sleep_until,
};
use crate::config::OrderingMode;
use crate::metrics::{self, GaugeShare};

/// How often a partition commits its progress while it runs.
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// How often the partition's consumer lag is read for `hookbridge_consumer_lag`.
const LAG_INTERVAL: Duration = Duration::from_secs(2);
/// How often a partition with parked keys looks whether their parked events are done.
const UNPARK_INTERVAL: Duration = Duration::from_secs(1);
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
    /// Events of draining parked keys, waiting for the key's parked events to be done.
    draining: HashMap<Bytes, VecDeque<Event>>,
}

/// An event on its way through its lane: the lane, the record's offset, how it ended.
type LaneRun = Pin<Box<dyn Future<Output = (LaneKey, u64, Outcome)> + Send>>;

/// A broker call (a commit, a lag read, a parked-key review) the worker has on its way while
/// its lanes go on: at most one of each kind at a time.
type Call<T> = Option<Pin<Box<dyn Future<Output = T> + Send>>>;

/// A lag read: the commit point it was read against, and the lag.
type LagRead = (Option<u64>, Result<Option<u64>, BrokerError>);

/// Waits for `call` to finish and clears it; never finishes when there is none.
async fn finished<T>(call: &mut Call<T>) -> T {
    let Some(running) = call else {
        return std::future::pending().await;
    };
    let output = running.await;
    *call = None;
    output
}

pub async fn run(
    sub: Arc<SubscriptionRuntime>,
    mut stream: PartitionStream,
    mut stop: watch::Receiver<bool>,
) {
    let (topic, partition) = (stream.topic.clone(), stream.partition);
    tracing::info!(subscription = %sub.name, %topic, partition, "partition assigned");
    let mut tenure = stream.tenure();
    let calls = stream.calls();
    let resumed = resumed(&sub, &stream).await;
    // Keys of this partition park (see `parking`) unless it is a parking partition itself,
    // or the subscription orders by partition or not at all.
    let is_parking = *topic == *sub.parking_topic;
    let is_resend = *topic == *sub.resend_topic;
    let parks = sub.ordering == OrderingMode::Key && !is_parking;
    let mut parked = match &resumed {
        Some(resumed) if parks => ParkedKeys::resumed(&resumed.parked),
        _ => ParkedKeys::default(),
    };
    // Asked once: for the tracker, and for the partition's row (see the lag read below).
    let per_record = calls.per_record();
    let mut tracker = CommitTracker::new(per_record, resumed);
    // This worker's shares of the subscription's gauges, taken back when it ends.
    let label = metrics::subscription(&sub.name);
    let mut owned = GaugeShare::new(
        metrics::metrics()
            .partitions_owned
            .get_or_create(&label)
            .clone(),
    );
    owned.set(1);
    let mut parked_gauge =
        GaugeShare::new(metrics::metrics().parked_keys.get_or_create(&label).clone());
    if !parked.is_empty() {
        tracing::info!(subscription = %sub.name, %topic, partition, parked = parked.len(), "parked keys resumed");
        tracker.set_parked(parked.snapshot());
        parked_gauge.set(parked.len() as i64);
    }
    let mut lanes = Lanes {
        queued: HashMap::new(),
        draining: HashMap::new(),
    };
    // The events on their way, one per busy lane, polled by this task: no task is spawned
    // per event, and a finished one is seen here without a channel.
    let mut running: FuturesUnordered<LaneRun> = FuturesUnordered::new();
    let mut committing: Call<(Pending, Result<(), BrokerError>)> = None;
    let mut reading_lag: Call<LagRead> = None;
    let mut reviewing: Call<Vec<(u32, Completion)>> = None;
    let mut held = 0usize;
    let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lag_tick = tokio::time::interval(LAG_INTERVAL);
    lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lag_labels = metrics::SubscriptionPartition {
        subscription: sub.name.clone(),
        topic: topic.to_string(),
        partition,
    };
    let mut unpark_tick = tokio::time::interval(UNPARK_INTERVAL);
    unpark_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // This partition's row in `GET /v1/subscriptions`, gone when the worker ends.
    let row = sub.board.partition(&topic, partition);
    // Paused, the worker pulls no records (lanes start no attempts either, see `lane`).
    let mut paused = sub.paused.subscribe();
    // Lanes stop on shutdown and on revocation alike, so they get their own signal.
    let (release, released) = watch::channel(false);

    // Starts the lane's next event: to the subscriber, or to the parking topic when its key
    // is parked.
    let start = |lane: LaneKey,
                 event: Event,
                 running: &mut FuturesUnordered<LaneRun>,
                 parked: &mut ParkedKeys| {
        let (sub, mut stop) = (sub.clone(), released.clone());
        let key = match &lane {
            LaneKey::Key(key) if parks => Some(key),
            _ => None,
        };
        // A draining key's events wait in `draining`, so a parked one started here forwards.
        let forward = key.is_some_and(|key| parked.contains(key));
        let park_after = (key.is_some() && parked.has_room()).then(|| sub.settings().park_after);
        running.push(Box::pin(async move {
            let outcome = if forward {
                lane::park(&sub, &event, event.prior_attempts, &mut stop).await
            } else {
                lane::deliver(&sub, &event, &mut stop, park_after).await
            };
            (lane, event.record.offset, outcome)
        }));
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
            Some((lane, offset, outcome)) = running.next(), if !running.is_empty() => {
                held -= 1;
                if outcome == Outcome::Abandoned {
                    continue;
                }
                if let (Outcome::Parked(receipt), LaneKey::Key(key)) = (outcome, &lane) {
                    parked.sent(key, receipt);
                    tracker.set_parked(parked.snapshot());
                    parked_gauge.set(parked.len() as i64);
                }
                tracker.done(offset);
                // The lane's next event starts only now: per-key order.
                let queue = lanes.queued.get_mut(&lane).expect("a finished event's lane exists");
                match queue.pop_front() {
                    Some(next) => start(lane, next, &mut running, &mut parked),
                    None => { lanes.queued.remove(&lane); }
                }
            }
            Ok(()) = paused.changed() => {}
            record = stream.next(), if held < sub.buffer && !*paused.borrow() => {
                let Some(record) = record else { break Ending::StreamEnded };
                if tracker.is_empty() {
                    tracing::debug!(subscription = %sub.name, %topic, partition, offset = record.offset, "first record");
                }
                if !tracker.track(record.offset) {
                    // Done before this worker started (G8): not sent again.
                    continue;
                }
                let settings = sub.settings();
                let mut event = Event::from_record(record, settings.decode);
                if is_parking {
                    parking::restore(&mut event);
                } else if is_resend {
                    super::resend::restore(&mut event);
                }
                if !settings.wants(&event) {
                    tracker.done(event.record.offset);
                    continue;
                }
                held += 1;
                let lane = match (sub.ordering, event.key()) {
                    (OrderingMode::Key, Some(key)) => LaneKey::Key(key.clone()),
                    (OrderingMode::Partition, _) => LaneKey::Partition,
                    _ => LaneKey::Record(event.record.offset),
                };
                if let LaneKey::Key(key) = &lane
                    && parks
                    && parked.is_draining(key)
                {
                    // Waits until the key's parked events are done (see `parking`).
                    lanes.draining.entry(key.clone()).or_default().push_back(event);
                    continue;
                }
                match lanes.queued.get_mut(&lane) {
                    // The lane is busy: the event waits its turn.
                    Some(queue) => queue.push_back(event),
                    None => {
                        lanes.queued.insert(lane.clone(), VecDeque::new());
                        start(lane, event, &mut running, &mut parked);
                    }
                }
            }
            (pending, result) = finished(&mut committing) => match result {
                Ok(()) => tracker.accepted(&pending),
                Err(e) => tracing::warn!(subscription = %sub.name, %topic, partition, error = %e, "commit failed; will retry"),
            },
            stored = finished(&mut reviewing) => {
                let review = review_parked(&sub, &stream, &mut parked, &lanes, stored);
                if !review.unparked.is_empty() {
                    tracker.set_parked(parked.snapshot());
                    parked_gauge.set(parked.len() as i64);
                }
                // Events that waited for their key to drain start now: directly if it was
                // unparked, to the parking topic if it drained too long.
                for key in review.unparked.into_iter().chain(review.forward_again) {
                    let Some(mut waiting) = lanes.draining.remove(&key) else { continue };
                    let Some(first) = waiting.pop_front() else { continue };
                    let lane = LaneKey::Key(key);
                    lanes.queued.insert(lane.clone(), waiting);
                    start(lane, first, &mut running, &mut parked);
                }
            }
            (committed, lag) = finished(&mut reading_lag) => {
                let lag = match lag {
                    Ok(lag) => lag,
                    Err(e) => {
                        tracing::debug!(subscription = %sub.name, %topic, partition, error = %e, "cannot read the consumer lag");
                        None
                    }
                };
                if let Some(lag) = lag {
                    metrics::metrics().consumer_lag.get_or_create(&lag_labels).set(lag as i64);
                }
                row.update(|row| {
                    row.committed = committed;
                    row.lag = lag;
                    // JetStream's sequences run across a stream's partitions: no end follows
                    // from a count there.
                    row.end = lag.filter(|_| !per_record).map(|lag| committed.unwrap_or(0) + lag);
                    row.held = held;
                    row.parked_keys = parked.len();
                });
            }
            _ = unpark_tick.tick(), if !parked.is_empty() && reviewing.is_none() => {
                let partitions = parked.idle_partitions(|key| lanes.is_busy(key));
                reviewing = Some(Box::pin(read_parking_partitions(calls.clone(), sub.parking_topic.clone(), partitions)));
            }
            _ = commit_tick.tick(), if committing.is_none() => {
                if let Some(pending) = tracker.take() {
                    committing = Some(Box::pin(commit(calls.clone(), pending)));
                }
            }
            _ = lag_tick.tick(), if reading_lag.is_none() => {
                let committed = tracker.commit_point();
                let calls = calls.clone();
                reading_lag = Some(Box::pin(async move {
                    (committed, calls.lag(committed.unwrap_or(0)).await)
                }));
            }
        }
    };
    // Another replica reports this partition's lag from now on.
    metrics::metrics().consumer_lag.remove(&lag_labels);

    // No new records and no new attempts. Each lane has one event started; attempts on the
    // wire finish within the grace (waits and backoffs are abandoned at once), queued events
    // were never started. Everything not done is redelivered by the next owner.
    let _ = release.send(true);
    let grace = match ending {
        Ending::Fenced => Duration::ZERO,
        _ => sub.settings().timeout + Duration::from_secs(1),
    };
    let mut deadline = Instant::now() + grace;
    if let Some(fence) = tenure.borrow().held_until() {
        deadline = deadline.min(fence);
    }
    while !running.is_empty() {
        tokio::select! {
            Some((_, offset, outcome)) = running.next() => {
                if outcome != Outcome::Abandoned {
                    tracker.done(offset);
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => break,
        }
    }
    // Whatever is still running now is cut off: after a fence it must not go on.
    let abandoned = running.len();
    drop(running);
    if ending == Ending::Fenced {
        tracing::warn!(subscription = %sub.name, %topic, partition, abandoned, "partition ownership not confirmed in time; stopped delivering it");
    }
    // A commit on its way finishes first, so that commits reach the broker in order.
    let final_commit_by = Instant::now() + FINAL_COMMIT_FOR;
    if let Some(on_its_way) = committing.take()
        && let Ok((pending, Ok(()))) = tokio::time::timeout(FINAL_COMMIT_FOR, on_its_way).await
    {
        tracker.accepted(&pending);
    }
    while let Some(pending) = tracker.take() {
        match commit(calls.clone(), pending).await {
            (pending, Ok(())) => {
                tracker.accepted(&pending);
                break;
            }
            (_, Err(e)) if Instant::now() >= final_commit_by => {
                tracing::warn!(subscription = %sub.name, %topic, partition, error = %e, "final commit failed; the next owner redelivers what it did not record");
                break;
            }
            (_, Err(_)) => tokio::time::sleep(COMMIT_INTERVAL).await,
        }
    }
    tracing::info!(subscription = %sub.name, %topic, partition, ?ending, pending = tracker.pending(), skipped_as_done = tracker.skipped(), "partition released");
    // Dropping the stream tells the backend that this worker has let go.
    drop(stream);
}

impl Lanes {
    /// Whether the key's lane has an event on its way.
    fn is_busy(&self, key: &Bytes) -> bool {
        self.queued.contains_key(&LaneKey::Key(key.clone()))
    }
}

/// Reads what is done on the parking partitions where parked keys are idle (see
/// `ParkedKeys::review`); a partition that cannot be read in time is left for the next look.
async fn read_parking_partitions(
    calls: PartitionCalls,
    parking_topic: String,
    partitions: Vec<u32>,
) -> Vec<(u32, Completion)> {
    let mut stored = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let read = tokio::time::timeout(UNPARK_INTERVAL, calls.stored(&parking_topic, partition));
        if let Ok(Ok(Some(done))) = read.await {
            stored.push((partition, done));
        }
    }
    stored
}

/// Reviews the parked keys against what their parking partitions had done (see
/// `ParkedKeys::review`). Whether a key is busy is asked now, not when the reads started.
fn review_parked(
    sub: &SubscriptionRuntime,
    stream: &PartitionStream,
    parked: &mut ParkedKeys,
    lanes: &Lanes,
    stored: Vec<(u32, Completion)>,
) -> Review {
    let mut review = Review::default();
    for (partition, done) in stored {
        let one = parked.review(
            partition,
            &done,
            |key| lanes.is_busy(key),
            sub.settings().park_after,
        );
        review.unparked.extend(one.unparked);
        review.forward_again.extend(one.forward_again);
    }
    if !review.unparked.is_empty() {
        tracing::info!(subscription = %sub.name, topic = %stream.topic, partition = stream.partition, unparked = review.unparked.len(), still_parked = parked.len(), "parked keys recovered; their new events go to the subscriber directly");
    }
    review
}

/// What the partition's last commit said was done, so that it is not delivered again.
/// Retried for a while; without it the partition is delivered from its commit point (which
/// is safe, only not as economical).
async fn resumed(sub: &SubscriptionRuntime, stream: &PartitionStream) -> Option<Completion> {
    let give_up = Instant::now() + FINAL_COMMIT_FOR;
    let calls = stream.calls();
    loop {
        match calls.resumed().await {
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

/// Makes one commit; the tracker counts it only once accepted (`CommitTracker::accepted`).
async fn commit(calls: PartitionCalls, pending: Pending) -> (Pending, Result<(), BrokerError>) {
    tracing::debug!(
        topic = calls.topic(),
        partition = calls.partition(),
        next_offset = pending.next_offset(),
        open = pending.completion.open.len(),
        done = pending.done.len(),
        "commit"
    );
    let result = calls
        .commit(Progress {
            completion: &pending.completion,
            done: &pending.done,
        })
        .await;
    (pending, result)
}
