//! The commit tracker: which offset a partition may commit.
//!
//! Records finish out of order (lanes run concurrently), but a commit says "everything below
//! this offset is done", so it may only advance past a contiguous run of finished records.
//! Offsets are tracked in arrival order, which is offset order, so the pending window is a
//! sorted deque: marking is a binary search, advancing pops from the front.

use std::collections::VecDeque;

#[derive(Debug, Default)]
pub struct CommitTracker {
    /// (offset, done) for every record taken from the partition and not yet committed past.
    window: VecDeque<(u64, bool)>,
    /// The next offset to commit: every record below it is done.
    committable: Option<u64>,
    /// What was last committed, so unchanged positions are not committed again.
    committed: Option<u64>,
}

impl CommitTracker {
    /// Registers a record taken from the partition (offsets must increase).
    pub fn track(&mut self, offset: u64) {
        debug_assert!(self.window.back().is_none_or(|(last, _)| *last < offset));
        self.window.push_back((offset, false));
    }

    /// Marks a record done (delivered, filtered out or dead-lettered).
    pub fn done(&mut self, offset: u64) {
        if let Ok(i) = self.window.binary_search_by_key(&offset, |(o, _)| *o) {
            self.window[i].1 = true;
        }
        while let Some(&(offset, true)) = self.window.front() {
            self.window.pop_front();
            self.committable = Some(offset + 1);
        }
    }

    /// The offset to commit now, if it moved since the last commit.
    pub fn take_commit(&mut self) -> Option<u64> {
        match self.committable {
            Some(next) if self.committed != Some(next) => {
                self.committed = Some(next);
                Some(next)
            }
            _ => None,
        }
    }

    /// Records taken but not yet done.
    pub fn pending(&self) -> usize {
        self.window.iter().filter(|(_, done)| !done).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_only_past_contiguous_done_records() {
        let mut t = CommitTracker::default();
        for o in [5, 6, 7, 9] {
            t.track(o);
        }
        t.done(6);
        assert_eq!(t.take_commit(), None, "5 is still pending");
        t.done(5);
        assert_eq!(t.take_commit(), Some(7));
        assert_eq!(t.take_commit(), None, "unchanged");
        t.done(9);
        assert_eq!(t.take_commit(), None, "7 is pending");
        t.done(7);
        assert_eq!(
            t.take_commit(),
            Some(10),
            "gaps in offsets (retention, compaction) are fine"
        );
        assert_eq!(t.pending(), 0);
    }
}
