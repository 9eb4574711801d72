//! The commit tracker: which offset a partition may commit, and what is done above it.
//!
//! Records finish out of order (lanes run concurrently), but a commit says "everything below
//! this offset is done", so it may only advance to the oldest record still pending. The
//! tracker keeps only the pending offsets (a sorted set) and the newest offset taken: a
//! finished record is forgotten at once, so the memory behind a key that keeps failing is
//! the partition's pending records (bounded by its buffer), not everything that finished
//! after it (G7).
//!
//! That same small state says what is done above the commit point: every record taken and
//! not pending. It goes with each commit as a [`Completion`], which the broker stores, and
//! a partition's next worker (after a crash, a restart or a move) starts from the stored one:
//! it skips the records it says are done, and until it has read past them it keeps their
//! knowledge in its own commits, so nothing delivered behind a failing key is sent again
//! (G8).
//!
//! A commit is only counted once the broker accepted it: `take` hands out the progress to
//! commit, `accepted` confirms it, and a failed commit is simply taken again on the next
//! tick, with whatever finished meanwhile.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::broker::completion::{Completion, ParkedKey};
use crate::broker::{BrokerError, PartitionCalls, Progress};

/// How often a partition commits its progress while it runs.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(200);

/// A commit on its way to the broker.
pub type Committing =
    Pin<Box<dyn Future<Output = (PendingCommit, Result<(), BrokerError>)> + Send>>;

/// Makes one commit; the tracker counts it only once accepted (`CommitTracker::accepted`).
pub async fn send(
    calls: PartitionCalls,
    pending: PendingCommit,
) -> (PendingCommit, Result<(), BrokerError>) {
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

#[derive(Debug, Default)]
pub struct CommitTracker {
    /// Whether the broker wants to hear of every finished record (see
    /// `Committer::per_record`); otherwise only the commit point and completion are kept.
    per_record: bool,
    /// Records taken from the partition and not done yet.
    pending: BTreeSet<u64>,
    /// One past the newest offset taken.
    next_taken: Option<u64>,
    /// Finished since the last accepted commit, in finishing order (per-record brokers).
    done: Vec<u64>,
    /// How many records finished, ever: a commit is due when this moved.
    finished: u64,
    /// What the broker last accepted: the commit point, and `finished` and
    /// `parked_changes` at the time.
    committed: Option<(u64, u64, u64)>,
    /// The previous owner's completion, while records it knew of are still to be read.
    resumed: Option<Completion>,
    /// The commit point the partition resumed from, if it had one.
    resumed_at: Option<u64>,
    /// Records skipped because the previous owner had finished them.
    skipped: u64,
    /// The partition's parked keys, stored with each commit.
    parked: Vec<ParkedKey>,
    /// How often they changed: a commit is due when this moved too.
    parked_changes: u64,
}

/// A commit to make: the offset below which everything is done, what is done above it, and
/// the records finished since the last accepted commit.
#[derive(Debug, PartialEq, Eq)]
pub struct PendingCommit {
    pub completion: Completion,
    pub done: Vec<u64>,
    finished: u64,
    parked_changes: u64,
}

impl PendingCommit {
    pub fn next_offset(&self) -> u64 {
        self.completion.next_offset
    }
}

impl CommitTracker {
    /// `resumed`: what the broker stored with the partition's last commit.
    pub fn new(per_record: bool, resumed: Option<Completion>) -> CommitTracker {
        CommitTracker {
            per_record,
            resumed_at: resumed.as_ref().map(|r| r.next_offset),
            resumed: resumed.filter(Completion::knows_more),
            ..CommitTracker::default()
        }
    }

    /// Registers a record taken from the partition (offsets must increase). False when the
    /// stored completion says it was done before: it is counted done and must not be
    /// delivered again.
    pub fn track(&mut self, offset: u64) -> bool {
        debug_assert!(self.next_taken.is_none_or(|next| next <= offset));
        self.next_taken = Some(offset + 1);
        let done_before = match &self.resumed {
            Some(resumed) => {
                let done = resumed.is_done(offset);
                if offset + 1 >= resumed.known_until {
                    self.resumed = None;
                }
                done
            }
            None => false,
        };
        if done_before {
            self.skipped += 1;
            self.finished += 1;
            return false;
        }
        self.pending.insert(offset);
        true
    }

    /// Marks a record done (delivered, filtered out or dead-lettered).
    pub fn done(&mut self, offset: u64) {
        if self.pending.remove(&offset) {
            self.finished += 1;
            if self.per_record {
                self.done.push(offset);
            }
        }
    }

    /// What is done: below the oldest pending record, and above it all but the pending ones
    /// (plus what the previous owner knew beyond what was read again so far).
    fn completion(&self) -> Option<Completion> {
        let Some(next_taken) = self.next_taken else {
            return self.untouched();
        };
        let mut completion = Completion {
            next_offset: self.pending.first().copied().unwrap_or(next_taken),
            known_until: next_taken,
            open: self.pending.iter().copied().collect(),
            parked: self.parked.clone(),
        };
        if let Some(resumed) = &self.resumed {
            completion.known_until = resumed.known_until;
            completion
                .open
                .extend(resumed.open.iter().filter(|&&o| o >= next_taken));
        }
        Some(completion)
    }

    /// Before any record is taken, what the partition resumed with, but its parked keys as
    /// they are now: keys carried over from a former parking topic, or unparked, are
    /// committed even while no record comes (or a restart would carry them again).
    fn untouched(&self) -> Option<Completion> {
        if self.parked_changes == 0 {
            return None;
        }
        let mut completion = match &self.resumed {
            Some(resumed) => resumed.clone(),
            None => Completion::at(self.resumed_at?),
        };
        completion.parked = self.parked.clone();
        Some(completion)
    }

    /// The progress to commit now, if there is any news since the last accepted commit.
    /// Stays the same (growing with what finishes) until [`CommitTracker::accepted`].
    pub fn take(&mut self) -> Option<PendingCommit> {
        let completion = self.completion()?;
        let news = (completion.next_offset, self.finished, self.parked_changes);
        if self.committed == Some(news) && self.done.is_empty() {
            return None;
        }
        self.done.sort_unstable();
        Some(PendingCommit {
            completion,
            done: self.done.clone(),
            finished: self.finished,
            parked_changes: self.parked_changes,
        })
    }

    /// The broker accepted `commit`.
    pub fn accepted(&mut self, commit: &PendingCommit) {
        self.committed = Some((commit.next_offset(), commit.finished, commit.parked_changes));
        // Only what the commit carried: records may have finished while it was on its way.
        self.done.retain(|o| commit.done.binary_search(o).is_err());
    }

    /// The partition's parked keys changed: they go with the next commit.
    pub fn set_parked(&mut self, parked: Vec<ParkedKey>) {
        self.parked = parked;
        self.parked_changes += 1;
    }

    /// The last commit point the broker accepted, or the one this partition resumed from.
    pub fn commit_point(&self) -> Option<u64> {
        self.committed
            .map(|(next, _, _)| next)
            .or(self.resumed.as_ref().map(|r| r.next_offset))
    }

    /// Whether no record was taken yet.
    pub fn is_empty(&self) -> bool {
        self.next_taken.is_none()
    }

    /// Records taken but not yet done.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Records not delivered again because the previous owner had finished them.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(t: &mut CommitTracker) -> Option<u64> {
        let pending = t.take()?;
        t.accepted(&pending);
        Some(pending.next_offset())
    }

    #[test]
    fn parked_keys_changed_before_any_record_is_taken_are_committed() {
        let parked = |last| ParkedKey {
            key: 7,
            topic: None,
            partition: 0,
            last,
        };
        let resumed = Completion {
            parked: vec![parked(3)],
            ..Completion::at(40)
        };
        let mut t = CommitTracker::new(false, Some(resumed));
        assert_eq!(t.take(), None, "nothing new");
        t.set_parked(vec![parked(9)]);
        let pending = t.take().expect("the changed keys are committed");
        assert_eq!(
            pending.next_offset(),
            40,
            "at the commit point it resumed from"
        );
        assert_eq!(pending.completion.parked, vec![parked(9)]);
        t.accepted(&pending);
        assert_eq!(t.take(), None);
    }

    #[test]
    fn advances_only_past_contiguous_done_records() {
        let mut t = CommitTracker::new(true, None);
        for o in [5, 6, 7, 9] {
            t.track(o);
        }
        t.done(6);
        let pending = t.take().unwrap();
        assert_eq!(
            (pending.next_offset(), pending.done),
            (5, vec![6]),
            "5 is still pending; 6 is reported done"
        );
        assert_eq!(pending.completion.open, vec![5, 7, 9]);
        assert_eq!(pending.completion.known_until, 10);
        t.done(5);
        assert_eq!(commit(&mut t), Some(7));
        assert_eq!(t.take(), None, "unchanged");
        t.done(9);
        assert_eq!(t.take().map(|p| p.next_offset()), Some(7), "7 is pending");
        t.done(7);
        assert_eq!(
            commit(&mut t),
            Some(10),
            "gaps in offsets (retention, compaction) are fine"
        );
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn a_commit_that_was_not_accepted_is_taken_again_with_what_finished_since() {
        let mut t = CommitTracker::new(true, None);
        for o in 0..4 {
            t.track(o);
        }
        t.done(0);
        t.done(2);
        let first = t.take().unwrap();
        assert_eq!((first.next_offset(), first.done.clone()), (1, vec![0, 2]));
        // Not accepted; meanwhile 1 finishes.
        t.done(1);
        let again = t.take().unwrap();
        assert_eq!(
            (again.next_offset(), again.done.clone()),
            (3, vec![0, 1, 2])
        );
        // A commit accepted while more finished: only what it carried is forgotten.
        t.done(3);
        t.accepted(&again);
        let last = t.take().unwrap();
        assert_eq!((last.next_offset(), last.done.clone()), (4, vec![3]));
    }

    #[test]
    fn memory_behind_a_pending_record_is_only_the_pending_records() {
        let mut t = CommitTracker::new(true, None);
        t.track(0); // never finishes
        for o in 1..100_000 {
            t.track(o);
            t.done(o);
            if o % 1_000 == 0 {
                assert_eq!(commit(&mut t), Some(0));
            }
        }
        assert_eq!(t.pending(), 1);
        assert!(t.done.len() < 1_000, "finished records are forgotten");
        t.done(0);
        assert_eq!(commit(&mut t), Some(100_000));
    }

    #[test]
    fn a_broker_without_per_record_memory_still_commits_what_finishes_above_the_point() {
        let mut t = CommitTracker::new(false, None);
        t.track(0);
        t.track(1);
        assert_eq!(commit(&mut t), Some(0));
        assert_eq!(t.take(), None, "nothing new");
        t.done(1);
        let pending = t.take().expect("1 finished: the completion changed");
        assert_eq!(pending.completion.open, vec![0]);
        assert!(pending.done.is_empty(), "not a per-record broker");
    }

    #[test]
    fn a_resumed_partition_skips_what_was_done_and_keeps_knowing_it_until_read_again() {
        // The previous owner: 10 pending behind a failing key, 11..=2000 done but 1500.
        let stored = Completion {
            next_offset: 10,
            known_until: 2_001,
            open: vec![10, 1_500],
            parked: Vec::new(),
        };
        let mut t = CommitTracker::new(false, Some(stored.clone()));
        assert!(t.track(10), "open: delivered again");
        for o in 11..500 {
            assert!(!t.track(o), "{o} was done");
        }
        // Read only up to 499 so far: the commit still carries what lies beyond.
        let pending = t.take().unwrap();
        assert_eq!(pending.completion, stored);
        for o in 500..1_500 {
            assert!(!t.track(o));
        }
        assert!(t.track(1_500));
        for o in 1_501..=2_000 {
            assert!(!t.track(o));
        }
        assert!(t.track(2_001), "past what was known: new");
        assert_eq!(t.skipped(), 1_989);
        t.done(10);
        t.done(2_001);
        assert_eq!(commit(&mut t), Some(1_500));
        t.done(1_500);
        assert_eq!(commit(&mut t), Some(2_002));
    }
}
