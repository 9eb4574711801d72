//! Letting a partition go: when it is revoked, fenced or the process stops, its worker
//! stops taking records and starting attempts, lets the attempts on the wire finish within
//! the subscription's grace, commits what is done (retried until the broker accepts it, for
//! a bounded time), and only then drops its stream, which tells the backend that it may let
//! the partition go. A fenced worker (its tenure known only until an instant that came)
//! abandons everything at once, attempts on the wire included, so it has stopped before
//! another replica may start.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::commit::{self, CommitTracker, Committing};
use super::lane::Outcome;
use super::lanes::{Finished, LaneKey, Lanes};
use super::parked_keys::ParkedKeys;
use super::runtime::SubscriptionRuntime;
use crate::broker::{PartitionStream, Tenure};

/// How long the last commit of a partition is retried before the partition is let go
/// anyway (the next owner then redelivers what it could not record).
pub const FINAL_COMMIT_FOR: Duration = Duration::from_secs(5);

/// Why a partition worker stopped taking records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The process is stopping.
    Shutdown,
    /// The backend hands the partition to another owner.
    Revoked,
    /// The ownership could not be confirmed in time: stop at once.
    Fenced,
    /// Another owner has the partition already: stop at once.
    Lost,
    /// The broker ended the stream.
    StreamEnded,
}

/// What a worker lets go of.
pub struct Handback {
    pub stream: PartitionStream,
    pub tenure: watch::Receiver<Tenure>,
    pub lanes: Lanes,
    pub tracker: CommitTracker,
    /// The parked keys: an event on its way may still park.
    pub parked: ParkedKeys,
    /// A commit still on its way.
    pub committing: Option<Committing>,
}

/// Lets the partition go after `ending` (see the module's doc).
pub async fn release(sub: &SubscriptionRuntime, handback: Handback, ending: Ending) {
    let Handback {
        stream,
        mut tenure,
        mut lanes,
        mut tracker,
        mut parked,
        committing,
    } = handback;
    let (topic, partition) = (stream.topic.clone(), stream.partition);
    lanes.stop();
    let grace = match ending {
        Ending::Fenced | Ending::Lost => Duration::ZERO,
        _ => sub.settings().timeout + Duration::from_secs(1),
    };
    let grace_ends = Instant::now() + grace;
    finish_on_the_wire(
        &mut lanes,
        &mut tracker,
        &mut parked,
        &mut tenure,
        grace_ends,
    )
    .await;
    // Whatever is still on its way now is cut off: after a fence it must not go on.
    let abandoned = lanes.on_their_way();
    drop(lanes);
    match ending {
        Ending::Fenced => {
            tracing::warn!(subscription = %sub.name, %topic, partition, abandoned, "partition ownership not confirmed in time; stopped delivering it")
        }
        Ending::Lost => {
            tracing::warn!(subscription = %sub.name, %topic, partition, abandoned, "partition taken by another owner; stopped delivering it at once")
        }
        _ => {}
    }
    final_commit(sub, &stream, &mut tracker, committing).await;
    tracing::info!(subscription = %sub.name, %topic, partition, ?ending, pending = tracker.pending(), skipped_as_done = tracker.skipped(), "partition released");
    // Dropping the stream tells the backend that this worker has let go.
    drop(stream);
}

/// Lets the attempts on the wire finish until `grace_ends`, or until the tenure's fence
/// (a lease renewed while the worker lets go moves it on; one lost brings it to now);
/// each lane has one event on its way, and those that stopped at a wait come back
/// abandoned at once.
async fn finish_on_the_wire(
    lanes: &mut Lanes,
    tracker: &mut CommitTracker,
    parked: &mut ParkedKeys,
    tenure: &mut watch::Receiver<Tenure>,
    grace_ends: Instant,
) {
    let mut tenure_open = true;
    while lanes.on_their_way() > 0 {
        let fence = tenure.borrow_and_update().held_until();
        let deadline = fence.map_or(grace_ends, |fence| fence.min(grace_ends));
        tokio::select! {
            finished = lanes.finished() => {
                settle(tracker, parked, &finished);
            }
            _ = tokio::time::sleep_until(deadline.into()) => break,
            changed = tenure.changed(), if tenure_open => {
                tenure_open = changed.is_ok();
            }
        }
    }
}

/// What an event that finished its lane did to the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Stopped before it was done: not counted, redelivered by the next owner.
    Abandoned,
    /// Delivered or dead-lettered.
    Done,
    /// Sent to the parking topic: its key is parked.
    Parked,
}

/// Counts a finished event, while the worker runs and while it lets go alike: a parked
/// event is recorded as parked (it goes with the next commit) before it counts as done, so
/// that no commit says it is done without saying its key is parked; an abandoned one is
/// not counted.
pub fn settle(
    tracker: &mut CommitTracker,
    parked: &mut ParkedKeys,
    (lane, offset, outcome): &Finished,
) -> Settled {
    let settled = match (outcome, lane) {
        (Outcome::Abandoned, _) => return Settled::Abandoned,
        (Outcome::Parked(receipt), LaneKey::Key(key)) => {
            parked.sent(key, *receipt);
            tracker.set_parked(parked.snapshot());
            Settled::Parked
        }
        _ => Settled::Done,
    };
    tracker.done(*offset);
    settled
}

/// Commits what is done, a commit still on its way first, so that commits reach the broker
/// in order; retried until accepted or `FINAL_COMMIT_FOR` has passed.
async fn final_commit(
    sub: &SubscriptionRuntime,
    stream: &PartitionStream,
    tracker: &mut CommitTracker,
    committing: Option<Committing>,
) {
    let final_commit_by = Instant::now() + FINAL_COMMIT_FOR;
    if let Some(on_its_way) = committing
        && let Ok((pending, Ok(()))) = tokio::time::timeout(FINAL_COMMIT_FOR, on_its_way).await
    {
        tracker.accepted(&pending);
    }
    let calls = stream.calls();
    while let Some(pending) = tracker.take() {
        match commit::send(calls.clone(), pending).await {
            (pending, Ok(())) => {
                tracker.accepted(&pending);
                break;
            }
            (_, Err(e)) if Instant::now() >= final_commit_by => {
                tracing::warn!(subscription = %sub.name, topic = %stream.topic, partition = stream.partition, error = %e, "final commit failed; the next owner redelivers what it did not record");
                break;
            }
            (_, Err(_)) => tokio::time::sleep(commit::COMMIT_INTERVAL).await,
        }
    }
}
