//! The items of one pass over the allocated segments (a rebuild, a resync, a scrub), in
//! segment order, planned a window at a time (docs/FORMAT.md V4.13, "Plans in windows").
//!
//! At the start a pass keeps what names its items: a bitset of the data segments (the rule
//! of `SegmentTable::data_segments`) with the open data segment's fill pointer, and, from a
//! first walk of every tree (the *census*), each metadata segment holding referenced pages
//! with how many. The pages themselves are found a window at a time: the next run of items
//! whose cost (1 per data segment, the census count per metadata segment) fits the budget,
//! by a walk that keeps only pages in the window's metadata segments. When the census finds
//! few enough pages it keeps them, and the pass needs no other walk.
//!
//! Owns: which segments a pass visits, in what order, and the pages of its metadata items.
//! Does not own and must not touch: what a pass does with them (`rebuild.rs`, `scrub.rs`),
//! the openings token, locks, anything on a device (a walk only reads).

use super::scrub::Work;
use super::Volume;
use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::meta::{slots_of, Openings, PageRef, SegmentBits, SegmentShape};
use std::collections::{BTreeMap, BTreeSet};

/// The entries a window holds at most by default: 256 Ki (about 12 MiB of pages at 48 bytes
/// each, 8 MiB of items at 32).
pub(crate) const WINDOW_ENTRIES: usize = 256 << 10;

/// The items of a pass from its first segment on, and the window being worked through.
#[derive(Debug)]
pub(super) struct PassItems {
    shape: SegmentShape,
    /// Data segments at the start.
    data: SegmentBits,
    /// The open data segment at the start and its fill pointer.
    open_data: Option<(u64, u64)>,
    /// Metadata segments holding referenced pages at the census, with how many (a leaf
    /// reached from two trees counted twice: only a window's size depends on it).
    meta: BTreeMap<u64, u32>,
    /// The pass's first segment.
    from: u64,
    /// The items of the current window.
    window: Vec<Work>,
    /// The next item of the window.
    at: usize,
    /// Every item below this segment is in a window planned so far.
    planned_to: u64,
    /// Entries a window takes at most (at least one item).
    budget: usize,
    /// Bytes the walks read and nobody was told of yet.
    walked: u64,
    /// Interior pages a window walk could not descend from (no copy verifies), listed by
    /// that window whatever their segment, so the damage that hides pages below them is
    /// found then; never listed again in this pass.
    listed_early: BTreeSet<PageKey>,
    /// Those of the current window whose own segment lies elsewhere: checked (or copied)
    /// before the window's first item, whatever that item's fate (a skipped item must not
    /// take them along).
    early: Vec<PageRef>,
    /// Items from the pass's first segment on, and below it (counted once, at the start).
    total: u64,
    below: u64,
}

/// What tells two listings of a page apart: page number, level, first key, the pointer.
type PageKey = (Option<u64>, u8, u64, [u8; 16]);

fn page_key(page: &PageRef) -> PageKey {
    (
        page.mpn(),
        page.level,
        page.first_key,
        page.pointer.encode(),
    )
}

/// Sort `pages` by [`page_key`], keeping the first listed of equal ones (the map's tree
/// before the others, as a whole walk lists them).
fn merge(pages: &mut Vec<PageRef>) {
    pages.sort_by_key(page_key);
    pages.dedup_by(|b, a| page_key(a) == page_key(b));
}

impl PassItems {
    /// Plan a pass from segment `from` on with windows of at most `budget` entries: the
    /// census walk (keeping its pages when they fit), with `devices` to read through.
    ///
    /// # Errors
    /// What the map returns when it cannot say which pages exist; corrupt metadata when a
    /// segment holds data rows and referenced metadata pages.
    pub(super) fn plan(
        volume: &Volume,
        devices: &[Option<SharedDevice>],
        from: u64,
        budget: usize,
    ) -> Result<Self> {
        let table = volume.map.segments();
        let shape = table.shape();
        let (data, open_data) = table.data_segment_bits();
        let budget = budget.max(1);
        let data_items = usize::try_from(data.count_from(from)).unwrap_or(usize::MAX);
        // Pages kept by the census while they fit beside the data items.
        let mut room = budget.checked_sub(data_items);
        let mut kept: Vec<PageRef> = Vec::new();
        let mut meta: BTreeMap<u64, u32> = BTreeMap::new();
        let walked = volume.map.visit_page_refs(devices, &mut |page, _| {
            let Some(mpn) = page.mpn() else {
                return;
            };
            let segment = shape.of_page(mpn);
            let count = meta.entry(segment).or_default();
            *count = count.saturating_add(1);
            if segment < from {
                return;
            }
            match room.as_mut() {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    kept.push(page);
                }
                Some(_) => {
                    room = None;
                    kept = Vec::new();
                }
                None => {}
            }
        })?;
        if let Some(segment) = meta.keys().find(|segment| data.contains(**segment)) {
            return Err(Error::corrupt_metadata(format!(
                "segment {segment} holds data rows and referenced metadata pages"
            )));
        }
        let mut items = Self {
            shape,
            data,
            open_data,
            meta,
            from,
            window: Vec::new(),
            at: 0,
            planned_to: from,
            budget,
            walked,
            listed_early: BTreeSet::new(),
            early: Vec::new(),
            total: 0,
            below: 0,
        };
        items.total = items.data.count_from(from) + items.meta.range(from..).count() as u64;
        items.below = items.data.count_from(0) - items.data.count_from(from)
            + items.meta.range(..from).count() as u64;
        if room.is_some() {
            items.window = items.build(from, shape.segments, kept);
            items.planned_to = shape.segments;
        }
        Ok(items)
    }

    /// The first item at or after `segment` not yet in a window (by the start's bitset and
    /// the census).
    fn next_item_from(&self, segment: u64) -> Option<u64> {
        let data = self.data.next_from(segment);
        let meta = self.meta.range(segment..).next().map(|(s, _)| *s);
        match (data, meta) {
            (Some(d), Some(m)) => Some(d.min(m)),
            (d, m) => d.or(m),
        }
    }

    /// The items of segments `lo..hi` in order, with the pages of their metadata items from
    /// `pages` (sorted here; a page listed twice with the same pointer kept once, in the
    /// order found: the map's tree before the others, as a whole walk lists them).
    fn build(&self, lo: u64, hi: u64, mut pages: Vec<PageRef>) -> Vec<Work> {
        merge(&mut pages);
        let mut pages = pages.into_iter().peekable();
        let mut work = Vec::new();
        let mut at = lo;
        while let Some(segment) = self.next_item_from(at).filter(|s| *s < hi) {
            if self.data.contains(segment) {
                let first = segment * self.shape.segment_slots;
                let slots = slots_of(segment, self.open_data, self.shape.segment_slots);
                work.push(Work::Data {
                    segment,
                    slots: first..first + slots,
                });
            } else {
                let of = |p: &PageRef| p.mpn().map(|mpn| self.shape.of_page(mpn));
                while pages.next_if(|p| of(p) < Some(segment)).is_some() {}
                let mut list = Vec::new();
                while let Some(page) = pages.next_if(|p| of(p) == Some(segment)) {
                    list.push(page);
                }
                work.push(Work::Metadata {
                    segment,
                    pages: list,
                });
            }
            at = segment + 1;
        }
        work
    }

    /// Make sure an item is at hand, planning the next window when the current one is done.
    /// `false`: the pass has no item left.
    ///
    /// # Errors
    /// What the map returns when the window's walk cannot say which pages exist.
    pub(super) fn ready(
        &mut self,
        volume: &Volume,
        devices: &[Option<SharedDevice>],
        openings: Option<&Openings>,
    ) -> Result<bool> {
        while self.at >= self.window.len() && self.planned_to < self.shape.segments {
            self.plan_window(volume, devices, openings)?;
        }
        Ok(self.at < self.window.len())
    }

    /// The next window: the items from `planned_to` whose cost fits the budget (at least
    /// one), with their pages from a walk (none when it holds no metadata item). The walk
    /// keeps the pages of the window's metadata segments not taken since the pass began
    /// (`openings`: what a segment taken since holds the pass skips, and its pages could
    /// outgrow the census), merging a page listed twice as it goes (recovery points made
    /// since the census list their leaves again), and lists here every interior page whose
    /// subtree it could not walk.
    ///
    /// # Errors
    /// What the map returns when the walk cannot say which pages exist; corrupt metadata
    /// when a data segment of the start, not taken since, holds referenced pages.
    fn plan_window(
        &mut self,
        volume: &Volume,
        devices: &[Option<SharedDevice>],
        openings: Option<&Openings>,
    ) -> Result<()> {
        let lo = self.planned_to;
        let mut hi = self.shape.segments;
        let mut cost = 0usize;
        let mut at = lo;
        while let Some(segment) = self.next_item_from(at) {
            let item = if self.data.contains(segment) {
                1
            } else {
                self.meta.get(&segment).map_or(1, |c| *c as usize)
            };
            if cost > 0 && cost.saturating_add(item) > self.budget {
                hi = segment;
                break;
            }
            cost = cost.saturating_add(item);
            at = segment + 1;
        }
        let mut pages = Vec::new();
        let mut blocked = Vec::new();
        if self.meta.range(lo..hi).next().is_some() {
            let (meta, data, shape) = (&self.meta, &self.data, self.shape);
            let taken = |segment: u64| openings.is_some_and(|o| o.taken(segment));
            let mut limit = self.budget.saturating_mul(2).max(1024);
            let mut corrupt = None;
            let from = self.from;
            self.walked += volume.map.visit_page_refs(devices, &mut |page, walked| {
                let Some(segment) = page.mpn().map(|mpn| shape.of_page(mpn)) else {
                    return;
                };
                // (As any page: none of a segment before the pass's first or taken since.)
                if segment < from || taken(segment) {
                    return;
                }
                if !walked {
                    blocked.push(page);
                }
                if !(lo..hi).contains(&segment) {
                    return;
                }
                if meta.contains_key(&segment) {
                    pages.push(page);
                    if pages.len() >= limit {
                        merge(&mut pages);
                        limit = limit.max(pages.len().saturating_mul(2));
                    }
                } else if data.contains(segment) {
                    corrupt = Some(segment);
                }
            })?;
            if let Some(segment) = corrupt {
                return Err(Error::corrupt_metadata(format!(
                    "segment {segment} holds data rows and referenced metadata pages"
                )));
            }
        }
        // Pages an earlier window listed early are not listed again; an interior page this
        // walk could not descend from is listed now (once): with its own segment's item when
        // that is in this window, else before the window's first item.
        pages.retain(|p| !self.listed_early.contains(&page_key(p)));
        merge(&mut pages);
        merge(&mut blocked);
        let mut early = Vec::new();
        for page in blocked {
            let key = page_key(&page);
            if self.listed_early.contains(&key) {
                continue;
            }
            self.listed_early.insert(key);
            if pages.binary_search_by_key(&key, page_key).is_err() {
                early.push(page);
            }
        }
        self.early = early;
        self.window = self.build(lo, hi, pages);
        self.at = 0;
        self.planned_to = hi;
        Ok(())
    }

    /// The items of the current window not done yet (call [`PassItems::ready`] first).
    pub(super) fn pending(&self) -> &[Work] {
        self.window.get(self.at..).unwrap_or(&[])
    }

    /// The first `count` pending items are done.
    pub(super) fn advance(&mut self, count: usize) {
        self.at = (self.at + count).min(self.window.len());
    }

    /// The segment of the next item (`None`: the pass is done): every allocated segment of
    /// the pass below it was visited.
    pub(super) fn next_segment(&self) -> Option<u64> {
        match self.window.get(self.at) {
            Some(item) => Some(item.segment()),
            None => self.first_unplanned(),
        }
    }

    /// The first item no window planned so far holds.
    fn first_unplanned(&self) -> Option<u64> {
        (self.planned_to < self.shape.segments)
            .then(|| self.next_item_from(self.planned_to))
            .flatten()
    }

    /// Where a pass stopped right after the pending item at `index` resumes: the next item's
    /// segment, or the one after that item's when none follows.
    pub(super) fn after(&self, index: usize) -> u64 {
        let pending = self.pending();
        match pending.get(index + 1) {
            Some(next) => next.segment(),
            None => self.first_unplanned().unwrap_or_else(|| {
                pending
                    .get(index)
                    .map_or(self.planned_to, |i| i.segment() + 1)
            }),
        }
    }

    /// Items of the pass (from its first segment on).
    pub(super) fn total(&self) -> u64 {
        self.total
    }

    /// Items below the pass's first segment (a resumed rebuild counts them done).
    pub(super) fn below(&self) -> u64 {
        self.below
    }

    /// Pages listed early by the current window (see `early`), to check or copy before its
    /// next item; [`PassItems::early_done`] once they were.
    pub(super) fn early(&self) -> &[PageRef] {
        &self.early
    }

    /// The early pages were checked or copied.
    pub(super) fn early_done(&mut self) {
        self.early.clear();
    }

    /// Bytes the walks read since the last call.
    pub(super) fn take_walked(&mut self) -> u64 {
        std::mem::take(&mut self.walked)
    }
}
