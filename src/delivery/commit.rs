//! The commit tracker: which offset a partition may commit, and what finished since the
//! last commit.
//!
//! Records finish out of order (lanes run concurrently), but a commit says "everything below
//! this offset is done", so it may only advance to the oldest record still pending. The
//! tracker keeps only the pending offsets (a sorted set) and the newest offset taken: a
//! finished record is forgotten at once, so the memory behind a key that keeps failing is
//! the partition's pending records (bounded by its buffer), not everything that finished
//! after it (G7).
//!
//! A commit is only counted once the broker accepted it: `take` hands out the progress to
//! commit, `accepted` confirms it, and a failed commit is simply taken again on the next
//! tick, with whatever finished meanwhile.

use std::collections::BTreeSet;

#[derive(Debug, Default)]
pub struct CommitTracker {
    /// Whether the broker wants to hear of every finished record (see
    /// `Committer::per_record`); otherwise only the commit point is kept.
    per_record: bool,
    /// Records taken from the partition and not done yet.
    pending: BTreeSet<u64>,
    /// One past the newest offset taken.
    next_taken: Option<u64>,
    /// Finished since the last accepted commit, in finishing order.
    done: Vec<u64>,
    /// What the broker last accepted.
    committed: Option<u64>,
}

/// A commit to make: the offset below which everything is done, and the records finished
/// since the last accepted commit.
#[derive(Debug, PartialEq, Eq)]
pub struct Pending {
    pub next_offset: u64,
    pub done: Vec<u64>,
}

impl CommitTracker {
    pub fn new(per_record: bool) -> CommitTracker {
        CommitTracker {
            per_record,
            ..CommitTracker::default()
        }
    }

    /// Registers a record taken from the partition (offsets must increase).
    pub fn track(&mut self, offset: u64) {
        debug_assert!(self.next_taken.is_none_or(|next| next <= offset));
        self.pending.insert(offset);
        self.next_taken = Some(offset + 1);
    }

    /// Marks a record done (delivered, filtered out or dead-lettered).
    pub fn done(&mut self, offset: u64) {
        if self.pending.remove(&offset) && self.per_record {
            self.done.push(offset);
        }
    }

    /// The offset below which every taken record is done.
    fn next_offset(&self) -> Option<u64> {
        self.pending.first().copied().or(self.next_taken)
    }

    /// The progress to commit now, if there is any news since the last accepted commit.
    /// Stays the same (growing with what finishes) until [`CommitTracker::accepted`].
    pub fn take(&mut self) -> Option<Pending> {
        let next_offset = self.next_offset()?;
        if self.committed == Some(next_offset) && self.done.is_empty() {
            return None;
        }
        self.done.sort_unstable();
        Some(Pending {
            next_offset,
            done: self.done.clone(),
        })
    }

    /// The broker accepted `commit`.
    pub fn accepted(&mut self, commit: &Pending) {
        self.committed = Some(commit.next_offset);
        // Only what the commit carried: records may have finished while it was on its way.
        self.done.retain(|o| commit.done.binary_search(o).is_err());
    }

    /// Whether no record was taken yet.
    pub fn is_empty(&self) -> bool {
        self.next_taken.is_none()
    }

    /// Records taken but not yet done.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(t: &mut CommitTracker) -> Option<u64> {
        let pending = t.take()?;
        t.accepted(&pending);
        Some(pending.next_offset)
    }

    #[test]
    fn advances_only_past_contiguous_done_records() {
        let mut t = CommitTracker::new(true);
        for o in [5, 6, 7, 9] {
            t.track(o);
        }
        t.done(6);
        assert_eq!(
            t.take(),
            Some(Pending {
                next_offset: 5,
                done: vec![6]
            }),
            "5 is still pending; 6 is reported done"
        );
        t.done(5);
        assert_eq!(commit(&mut t), Some(7));
        assert_eq!(t.take(), None, "unchanged");
        t.done(9);
        assert_eq!(t.take().map(|p| p.next_offset), Some(7), "7 is pending");
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
        let mut t = CommitTracker::new(true);
        for o in 0..4 {
            t.track(o);
        }
        t.done(0);
        t.done(2);
        let first = t.take().unwrap();
        assert_eq!((first.next_offset, first.done.clone()), (1, vec![0, 2]));
        // Not accepted; meanwhile 1 finishes.
        t.done(1);
        let again = t.take().unwrap();
        assert_eq!((again.next_offset, again.done.clone()), (3, vec![0, 1, 2]));
        // A commit accepted while more finished: only what it carried is forgotten.
        t.done(3);
        t.accepted(&again);
        let last = t.take().unwrap();
        assert_eq!((last.next_offset, last.done.clone()), (4, vec![3]));
    }

    #[test]
    fn memory_behind_a_pending_record_is_only_the_pending_records() {
        let mut t = CommitTracker::new(true);
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
}
