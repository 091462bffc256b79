//! Metadata page numbers: which are free, and when a page a sync stopped referencing may be
//! written again (docs/FORMAT.md, V4.8 "Release").
//!
//! A page that uberblock `x` references and the next tree no longer does becomes allocatable
//! only once uberblock `x + 2` is durable: uberblocks `x + 1` and `x + 2`, the two that an open
//! (or an explicit `--rewind` to the older) may use, then reference none of it. Freeing earlier
//! lets a new page overwrite one that an openable tree still names.
//!
//! Step 3 of the implementation plan: the free set is kept in memory and rebuilt at open from the
//! trees (the persisted segment usage table replaces that walk in step 5).

use std::collections::VecDeque;
use std::ops::Range;

/// When pages freed by a sync become allocatable (the correct rule, or a planted bug).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseRule {
    /// Once uberblock `x + 2` is durable (correct).
    AfterTwoSyncs,
    /// Planted bug `release_at_t_plus_1`: once uberblock `x + 1` is durable.
    AfterOneSync,
    /// Planted bug `release_before_root_durable`: at once, before the new root is durable.
    AtOnce,
}

/// Allocator of metadata page numbers in a range.
#[derive(Debug, Clone)]
pub struct MpnAllocator {
    range: Range<u64>,
    used: Vec<u64>,
    in_use: u64,
    cursor: u64,
    pending: VecDeque<(u64, Vec<u64>)>,
    rule: ReleaseRule,
}

impl MpnAllocator {
    /// Every page of `range` free.
    #[must_use]
    pub fn new(range: Range<u64>, rule: ReleaseRule) -> Self {
        let words = usize::try_from((range.end - range.start).div_ceil(64)).unwrap_or(0);
        Self {
            cursor: range.start,
            range,
            used: vec![0; words],
            in_use: 0,
            pending: VecDeque::new(),
            rule,
        }
    }

    fn bit(&self, mpn: u64) -> (usize, u64) {
        let at = mpn - self.range.start;
        (
            usize::try_from(at / 64).unwrap_or(usize::MAX),
            1 << (at % 64),
        )
    }

    /// Whether `mpn` is allocated (or waiting for release).
    #[must_use]
    pub fn is_used(&self, mpn: u64) -> bool {
        if !self.range.contains(&mpn) {
            return false;
        }
        let (word, bit) = self.bit(mpn);
        self.used[word] & bit != 0
    }

    /// Record `mpn` as in use (a page a durable tree references, found at open). False if it
    /// was already in use or is outside the range: two references to one page, or a pointer
    /// outside the metadata area, which the caller reports as corrupt metadata.
    pub fn mark_used(&mut self, mpn: u64) -> bool {
        if !self.range.contains(&mpn) || self.is_used(mpn) {
            return false;
        }
        let (word, bit) = self.bit(mpn);
        self.used[word] |= bit;
        self.in_use += 1;
        true
    }

    /// The lowest free page number, taken; `None` when every page is in use or waiting for
    /// release. Lowest-first keeps the metadata compact at the start of its area (and reuses a
    /// released page at once, which is what lets the tests see a page released too early).
    pub fn alloc(&mut self) -> Option<u64> {
        let start_word = usize::try_from((self.cursor - self.range.start) / 64).unwrap_or(0);
        for word in start_word..self.used.len() {
            if self.used[word] == u64::MAX {
                continue;
            }
            let bit = u64::from((!self.used[word]).trailing_zeros());
            let mpn = self.range.start + word as u64 * 64 + bit;
            if mpn >= self.range.end {
                return None;
            }
            self.cursor = self.range.start + word as u64 * 64;
            if self.mark_used(mpn) {
                return Some(mpn);
            }
        }
        None
    }

    /// A page the sync in progress stopped referencing while the durable tree still does.
    /// Correct rules only note it (it is passed again to [`MpnAllocator::free_after`]); the
    /// planted bug `release_before_root_durable` makes it allocatable at once.
    pub fn dropped_in_sync(&mut self, mpn: u64) {
        if self.rule == ReleaseRule::AtOnce {
            self.release(&[mpn]);
        }
    }

    /// Pages uberblock `referenced_by` references and the next tree (now durable) does not.
    pub fn free_after(&mut self, referenced_by: u64, mpns: Vec<u64>) {
        if self.rule == ReleaseRule::AtOnce {
            self.release(&mpns);
        } else if !mpns.is_empty() {
            self.pending.push_back((referenced_by, mpns));
        }
    }

    /// Uberblock `txg` is durable on the members: release what may now be reused.
    pub fn durable(&mut self, txg: u64) {
        let lag = match self.rule {
            ReleaseRule::AfterTwoSyncs => 2,
            ReleaseRule::AfterOneSync | ReleaseRule::AtOnce => 1,
        };
        while let Some((referenced_by, _)) = self.pending.front() {
            if referenced_by.saturating_add(lag) > txg {
                break;
            }
            if let Some((_, mpns)) = self.pending.pop_front() {
                self.release(&mpns);
            }
        }
    }

    fn release(&mut self, mpns: &[u64]) {
        for &mpn in mpns {
            if self.is_used(mpn) {
                self.cursor = self.cursor.min(mpn);
                let (word, bit) = self.bit(mpn);
                self.used[word] &= !bit;
                self.in_use -= 1;
            }
        }
    }

    /// Pages in use or waiting for release.
    #[must_use]
    pub fn in_use(&self) -> u64 {
        self.in_use
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_pages_wait_for_two_more_durable_uberblocks() {
        let mut alloc = MpnAllocator::new(10..14, ReleaseRule::AfterTwoSyncs);
        let taken: Vec<u64> = (0..4).filter_map(|_| alloc.alloc()).collect();
        assert_eq!(taken, [10, 11, 12, 13]);
        assert_eq!(alloc.alloc(), None);
        alloc.free_after(5, vec![11, 12]);
        alloc.durable(6);
        assert_eq!(
            alloc.alloc(),
            None,
            "uberblock 6 durable: 5 may still be opened by rewind"
        );
        alloc.durable(7);
        assert_eq!(alloc.alloc(), Some(11));
        assert_eq!(alloc.alloc(), Some(12));
        assert!(!alloc.mark_used(12), "a page referenced twice");
        assert!(!alloc.mark_used(99), "outside the range");
    }

    #[test]
    fn the_planted_rules_release_early() {
        let mut early = MpnAllocator::new(0..2, ReleaseRule::AfterOneSync);
        early.alloc();
        early.alloc();
        early.free_after(5, vec![0]);
        early.durable(6);
        assert_eq!(early.alloc(), Some(0));
        let mut at_once = MpnAllocator::new(0..1, ReleaseRule::AtOnce);
        at_once.alloc();
        at_once.dropped_in_sync(0);
        assert_eq!(at_once.alloc(), Some(0));
        let mut correct = MpnAllocator::new(0..1, ReleaseRule::AfterTwoSyncs);
        correct.alloc();
        correct.dropped_in_sync(0);
        assert_eq!(correct.alloc(), None);
    }
}
