//! Segments and their usage table (docs/FORMAT.md, V4.4 "SUT record", V4.8 "One durable
//! state"): which segments hold data or metadata, how many of their blocks or pages are still
//! referenced, which are free, and when a segment no tree references may be written again.
//!
//! Owns: the resident usage array (the counts **as of the last tree sync's boundary**, never
//! later), the delta journal of the changes since that boundary, the fold that applies the
//! journal at a sync, the free set, the fill pointers of the open data and metadata segments,
//! and the release of free-pending segments by the rule of [`ReleaseRule`].
//!
//! Does not own, and must not touch: the trees (the map store computes which pages a sync
//! writes and frees and tells this table), devices, encodings other than the SUT record.
//!
//! Step 5 of the plan, as implemented: the map store holds its lock through a sync, so the
//! journal is one delta per segment since the last boundary (the per-sequence journals of
//! V4.8 come with syncs that overlap writers). Segments opened since the boundary are known
//! from the journal itself: a segment with a nonzero delta, or opened by this process, is not
//! free whatever the array says.

use crate::error::{Error, Result};
use crate::format::v4::{SegmentState, SutRecord, SUT_RECORDS_PER_PAGE};
use crate::geometry::Geometry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// When a segment a sync `t` freed may be written again: the correct rule, or a planted bug.
///
/// The tree of uberblock `t − 1` still references what sync `t` freed, and `open --rewind`
/// opens the tree before the newest. So the segment may be reused only when `t + 1` is durable
/// (then `t − 1` is no longer the one before the newest); FORMAT.md V4.8 step 6 waits one sync
/// more, `t + 2`, as a margin against a newest uberblock lost with its acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseRule {
    /// Once uberblock `t + 2` is durable (correct).
    AfterTwoSyncs,
    /// Planted bug `release_at_t_plus_1`: once the freeing sync's own uberblock `t` (one past
    /// `t − 1`, the last tree that references it) is durable, while a rewind may still open
    /// `t − 1`.
    AfterOneSync,
    /// Planted bug `release_before_root_durable`: at once, before the new root is durable.
    AtOnce,
}

/// Leaf fanout of the usage tree: 2048 records of 8 bytes.
pub const SUT_LEAF_BITS: u32 = 11;
const PER_LEAF: u64 = SUT_RECORDS_PER_PAGE as u64;

/// What a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data,
    Metadata,
}

/// A set of segment numbers as one bit each (512 KiB at 2^22 segments), taken lowest first.
#[derive(Debug, Clone)]
struct FreeSet {
    words: Vec<u64>,
    count: u64,
    /// No free segment below `lowest_word * 64`.
    lowest_word: usize,
}

impl FreeSet {
    fn full(segments: u64) -> Self {
        let mut words = vec![u64::MAX; usize::try_from(segments.div_ceil(64)).unwrap_or(0)];
        if !segments.is_multiple_of(64) {
            if let Some(last) = words.last_mut() {
                *last = (1u64 << (segments % 64)) - 1;
            }
        }
        Self {
            words,
            count: segments,
            lowest_word: 0,
        }
    }

    fn place(segment: u64) -> (usize, u64) {
        (
            usize::try_from(segment / 64).unwrap_or(usize::MAX),
            1 << (segment % 64),
        )
    }

    fn remove(&mut self, segment: u64) {
        let (word, bit) = Self::place(segment);
        if let Some(w) = self.words.get_mut(word) {
            if *w & bit != 0 {
                *w &= !bit;
                self.count -= 1;
            }
        }
    }

    fn insert(&mut self, segment: u64) {
        let (word, bit) = Self::place(segment);
        if let Some(w) = self.words.get_mut(word) {
            if *w & bit == 0 {
                *w |= bit;
                self.count += 1;
                self.lowest_word = self.lowest_word.min(word);
            }
        }
    }

    fn pop_first(&mut self) -> Option<u64> {
        while let Some(&w) = self.words.get(self.lowest_word) {
            if w != 0 {
                let segment = self.lowest_word as u64 * 64 + u64::from(w.trailing_zeros());
                self.remove(segment);
                return Some(segment);
            }
            self.lowest_word += 1;
        }
        None
    }
}

/// Segment sizes of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentShape {
    /// Slots per segment.
    pub segment_slots: u64,
    /// Segments in the data area (its tail of fewer than `segment_slots` slots is unused).
    pub segments: u64,
    /// Metadata pages per segment.
    pub pages_per_segment: u64,
    /// Data blocks (4 KiB) per segment.
    pub blocks_per_segment: u64,
}

impl SegmentShape {
    /// The shape of `geometry` cut into segments of `segment_slots` slots.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a segment size outside 1..=255 slots or a data area with
    /// fewer than 4 segments.
    pub fn new(geometry: &Geometry, segment_slots: u64) -> Result<Self> {
        if !(1..=255).contains(&segment_slots) {
            return Err(Error::InvalidConfig(format!(
                "{segment_slots} slots per segment: between 1 and 255"
            )));
        }
        let segments = geometry.slots / segment_slots;
        if segments < 4 {
            return Err(Error::InvalidConfig(format!(
                "{} slots make {segments} segments of {segment_slots}: at least 4 are needed",
                geometry.slots
            )));
        }
        let rows = (geometry.chunk_bytes / 4096).max(1);
        Ok(Self {
            segment_slots,
            segments,
            pages_per_segment: segment_slots * geometry.pages_per_slot(),
            blocks_per_segment: segment_slots * geometry.data_chunks() as u64 * rows,
        })
    }

    /// The segment of data block `pbn`.
    #[must_use]
    pub fn of_block(&self, pbn: u64) -> u64 {
        pbn / self.blocks_per_segment
    }

    /// The segment of data slot `slot`.
    #[must_use]
    pub fn of_slot(&self, slot: u64) -> u64 {
        slot / self.segment_slots
    }

    /// The segment of metadata page `mpn`.
    #[must_use]
    pub fn of_page(&self, mpn: u64) -> u64 {
        mpn / self.pages_per_segment
    }
}

/// The usage table of one pool.
#[derive(Debug)]
pub struct SegmentTable {
    shape: SegmentShape,
    rule: ReleaseRule,
    /// The records as of the last boundary, one box of 2048 per leaf, `None` for a leaf of
    /// free segments (an empty pool holds nothing).
    leaves: Vec<Option<Box<[SutRecord]>>>,
    /// Count changes since the last boundary.
    journal: BTreeMap<u64, i64>,
    /// Segments that got any count change since the last fold (even if it netted to 0).
    noted: BTreeSet<u64>,
    /// Segments opened since the last boundary, and what for.
    opened: BTreeMap<u64, Kind>,
    /// Segments that may be taken: state free in the array, nothing journalled, not opened.
    free: FreeSet,
    /// Segments whose record the next fold must settle though nothing was journalled on them
    /// (closed open segments, segments released from free-pending, an open data segment
    /// found at load).
    settle: BTreeSet<u64>,
    /// Free-pending segments by the txg of the sync that freed them.
    pending: VecDeque<(u64, Vec<u64>)>,
    /// The free-pending segments that held data (what the data cleaner has won and waits
    /// for).
    pending_data: BTreeSet<u64>,
    /// The open data segment and its next slot.
    open_data: Option<(u64, u64)>,
    /// The open metadata segment and its next page.
    open_meta: Option<(u64, u64)>,
    /// Leaves whose records changed since they were last handed to the tree.
    dirty: BTreeSet<u64>,
    /// Free segments only syncs (metadata) may take (FORMAT.md V4.6, "The hard reserve").
    reserve: u64,
    /// The syncs' share of the reserve (`3 × S_sync`).
    sync_share: u64,
    /// The txg of the last fold (or of the durable table loaded).
    last_fold: u64,
    /// Folds keep a fully handed-out open data segment open (the map still writes rows of
    /// its last slot).
    hold_open_data: bool,
    /// Data segments opened by this process (only goes up).
    data_opened: u64,
    /// Segments holding rows handed out and not yet noted, with how many holds each: a write
    /// unit on the devices while earlier ones land (FORMAT.md V4.6, "Several groups on the
    /// devices"). No release frees a held segment; it stays pending until the hold is gone.
    held: BTreeMap<u64, u32>,
    /// Planted bug `release_held_segment`: releases ignore the holds.
    ignore_holds: bool,
    /// The openings tokens of the passes under way (FORMAT.md V4.13, stage 3, "Tokens, not a
    /// switch"): each segment taken sets its bit in every one still held.
    watchers: Vec<Weak<OpeningBits>>,
}

/// A bit per segment, set when the segment is taken (shared by a pass's [`Openings`] and the
/// segment table, which holds it weakly).
#[derive(Debug)]
struct OpeningBits {
    segments: u64,
    words: Vec<AtomicU64>,
}

impl OpeningBits {
    fn new(segments: u64) -> Self {
        let words = usize::try_from(segments.div_ceil(64)).unwrap_or(0);
        Self {
            segments,
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn set(&self, segment: u64) {
        if let Some(word) = usize::try_from(segment / 64)
            .ok()
            .and_then(|w| self.words.get(w))
        {
            word.fetch_or(1 << (segment % 64), Ordering::Relaxed);
        }
    }
}

/// One pass's record of the segments taken since it began ([`SegmentTable::watch_openings`]):
/// 2^22 segments (16 TiB) cost 512 KiB. Dropping it ends the noting.
#[derive(Debug)]
pub struct Openings {
    bits: Arc<OpeningBits>,
}

impl Openings {
    /// Whether `segment` was taken since the token was made (`true` for a segment beyond the
    /// table: nothing can be said of it, so nothing may be assumed).
    #[must_use]
    pub fn taken(&self, segment: u64) -> bool {
        if segment >= self.bits.segments {
            return true;
        }
        usize::try_from(segment / 64)
            .ok()
            .and_then(|w| self.bits.words.get(w))
            .is_none_or(|word| word.load(Ordering::Relaxed) & (1 << (segment % 64)) != 0)
    }
}

/// One bit per segment of a pool (see [`SegmentTable::data_segment_bits`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentBits {
    segments: u64,
    words: Vec<u64>,
}

impl SegmentBits {
    /// No segment set, for a pool of `segments`.
    #[must_use]
    pub fn new(segments: u64) -> Self {
        Self {
            segments,
            words: vec![0; usize::try_from(segments.div_ceil(64)).unwrap_or(0)],
        }
    }

    /// Set `segment` (one beyond the pool is ignored).
    pub fn set(&mut self, segment: u64) {
        if segment >= self.segments {
            return;
        }
        if let Some(word) = usize::try_from(segment / 64)
            .ok()
            .and_then(|w| self.words.get_mut(w))
        {
            *word |= 1 << (segment % 64);
        }
    }

    /// Whether `segment` is set.
    #[must_use]
    pub fn contains(&self, segment: u64) -> bool {
        usize::try_from(segment / 64)
            .ok()
            .and_then(|w| self.words.get(w))
            .is_some_and(|word| word & (1 << (segment % 64)) != 0)
    }

    /// The first set segment at or after `from`.
    #[must_use]
    pub fn next_from(&self, from: u64) -> Option<u64> {
        if from >= self.segments {
            return None;
        }
        let mut w = usize::try_from(from / 64).ok()?;
        let mut word = self.words.get(w)? & (u64::MAX << (from % 64));
        loop {
            if word != 0 {
                return Some(w as u64 * 64 + u64::from(word.trailing_zeros()));
            }
            w += 1;
            word = *self.words.get(w)?;
        }
    }

    /// The set segments from `from` on, in order.
    pub fn iter_from(&self, from: u64) -> impl Iterator<Item = u64> + '_ {
        let mut at = from;
        std::iter::from_fn(move || {
            let found = self.next_from(at)?;
            at = found + 1;
            Some(found)
        })
    }

    /// Set segments at or after `from` (a population count of the words from there).
    #[must_use]
    pub fn count_from(&self, from: u64) -> u64 {
        let Ok(first) = usize::try_from(from / 64) else {
            return 0;
        };
        let Some(head) = self.words.get(first) else {
            return 0;
        };
        let head = u64::from((head & (u64::MAX << (from % 64))).count_ones());
        head + self.words[first + 1..]
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum::<u64>()
    }
}

/// Slots of data segment `segment` that may hold rows: all of them, but the open data
/// segment's stop at its fill pointer (`open`, from [`SegmentTable::data_segment_bits`]).
#[must_use]
pub fn slots_of(segment: u64, open: Option<(u64, u64)>, segment_slots: u64) -> u64 {
    match open {
        Some((at, next)) if at == segment => next,
        _ => segment_slots,
    }
}

impl SegmentTable {
    /// Every segment free (a new pool).
    #[must_use]
    pub fn new(shape: SegmentShape, rule: ReleaseRule) -> Self {
        let leaves = usize::try_from(shape.segments.div_ceil(PER_LEAF)).unwrap_or(0);
        Self {
            shape,
            rule,
            leaves: (0..leaves).map(|_| None).collect(),
            journal: BTreeMap::new(),
            noted: BTreeSet::new(),
            opened: BTreeMap::new(),
            free: FreeSet::full(shape.segments),
            settle: BTreeSet::new(),
            pending: VecDeque::new(),
            pending_data: BTreeSet::new(),
            open_data: None,
            open_meta: None,
            dirty: BTreeSet::new(),
            reserve: 0,
            sync_share: 0,
            last_fold: 0,
            hold_open_data: false,
            data_opened: 0,
            held: BTreeMap::new(),
            ignore_holds: false,
            watchers: Vec::new(),
        }
    }

    /// The table of a durable uberblock `txg` from its usage leaves `(first segment, page)`.
    /// A free-pending segment freed by sync `t` (its low 16 bits stored) becomes free once
    /// uberblock `t + 2` is durable; an open metadata segment is written on from its fill
    /// pointer; an open data segment is closed (a new one is opened for the next write).
    ///
    /// # Errors
    /// [`Error::CorruptMetadata`] for a leaf that does not decode, records past the last
    /// segment that are not free, or two open metadata segments.
    pub fn load(
        shape: SegmentShape,
        rule: ReleaseRule,
        txg: u64,
        pages_per_slot: u64,
        leaves: &[(u64, std::sync::Arc<Vec<u8>>)],
    ) -> Result<Self> {
        let mut table = Self::new(shape, rule);
        let mut pending: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (first, page) in leaves {
            let leaf = first / PER_LEAF;
            let records =
                SutRecord::decode_page(page, usize::try_from(shape.segment_slots).unwrap_or(0))
                    .map_err(|e| {
                        Error::corrupt_metadata(format!("usage leaf of segment {first}: {e}"))
                    })?;
            for (i, record) in records.iter().enumerate() {
                let segment = first + i as u64;
                if segment >= shape.segments {
                    if *record != SutRecord::FREE {
                        return Err(Error::corrupt_metadata(format!(
                            "usage record of segment {segment}, past the last ({})",
                            shape.segments
                        )));
                    }
                    continue;
                }
                match record.state {
                    SegmentState::Free => continue,
                    SegmentState::FreePending => {
                        let low = u64::from(record.freed_txg_low);
                        // The largest txg ≤ the durable one with these low bits.
                        let freed =
                            txg.checked_sub(txg.wrapping_sub(low) & 0xFFFF)
                                .ok_or_else(|| {
                                    Error::corrupt_metadata(format!(
                                        "segment {segment} freed at a txg ending in {low}, after \
                                     txg {txg}"
                                    ))
                                })?;
                        pending.entry(freed).or_default().push(segment);
                        // What it held is not recorded: counted as data, so it is never
                        // taken as parked metadata (the safe side of the floors).
                        table.pending_data.insert(segment);
                    }
                    SegmentState::OpenData => {
                        table.settle.insert(segment);
                    }
                    SegmentState::OpenMetadata => {
                        if table.open_meta.is_some() {
                            return Err(Error::corrupt_metadata(format!(
                                "two open metadata segments (the second is {segment})"
                            )));
                        }
                        table.open_meta =
                            Some((segment, u64::from(record.slots_used) * pages_per_slot));
                    }
                    _ => {}
                }
                table.free.remove(segment);
            }
            if let Some(slot) = usize::try_from(leaf)
                .ok()
                .and_then(|leaf| table.leaves.get_mut(leaf))
            {
                *slot = Some(records.into_boxed_slice());
            } else if records.iter().any(|r| *r != SutRecord::FREE) {
                return Err(Error::corrupt_metadata(format!(
                    "usage leaf of segment {first} past the last segment"
                )));
            }
        }
        for (freed, segments) in pending {
            table.pending.push_back((freed, segments));
        }
        table.last_fold = txg;
        table.release_until(txg);
        Ok(table)
    }

    /// The segment sizes.
    #[must_use]
    pub fn shape(&self) -> SegmentShape {
        self.shape
    }

    /// The record of `segment` as of the last boundary.
    #[must_use]
    pub fn record(&self, segment: u64) -> SutRecord {
        usize::try_from(segment / PER_LEAF)
            .ok()
            .and_then(|leaf| self.leaves.get(leaf))
            .and_then(Option::as_ref)
            .map_or(SutRecord::FREE, |records| {
                records[(segment % PER_LEAF) as usize]
            })
    }

    fn record_mut(&mut self, segment: u64) -> &mut SutRecord {
        let leaf = usize::try_from(segment / PER_LEAF).unwrap_or(usize::MAX);
        let records = self.leaves[leaf]
            .get_or_insert_with(|| vec![SutRecord::FREE; SUT_RECORDS_PER_PAGE].into_boxed_slice());
        &mut records[(segment % PER_LEAF) as usize]
    }

    /// Segments that may be taken now.
    #[must_use]
    pub fn free_segments(&self) -> u64 {
        self.free.count
    }

    /// Free-pending segments (freed by one of the last two syncs).
    #[must_use]
    pub fn pending_segments(&self) -> u64 {
        self.pending.iter().map(|(_, s)| s.len() as u64).sum()
    }

    /// A count change of `delta` on data block `pbn`'s segment, under the open sequence.
    pub fn block_delta(&mut self, pbn: u64, delta: i64) {
        let segment = self.shape.of_block(pbn);
        self.note(segment, delta);
    }

    /// A count change of `delta` on metadata page `mpn`'s segment (made by a sync).
    pub fn page_delta(&mut self, mpn: u64, delta: i64) {
        let segment = self.shape.of_page(mpn);
        if self.rule == ReleaseRule::AtOnce && delta < 0 {
            // Planted bug `release_before_root_durable`: a page the sync in progress stops
            // referencing counts off at once, and its segment is free at 0, while the durable
            // tree still names it.
            let open = self.open_meta.is_some_and(|(s, _)| s == segment);
            let record = self.record_mut(segment);
            record.referenced = record.referenced.saturating_sub(1);
            if record.referenced == 0 && !open {
                *record = SutRecord::FREE;
                self.dirty.insert(segment / PER_LEAF * PER_LEAF);
                self.free.insert(segment);
            }
            return;
        }
        self.note(segment, delta);
    }

    fn note(&mut self, segment: u64, delta: i64) {
        // A segment with something journalled is not free, whatever the array says (a
        // replayed record names rows of a segment opened after the boundary), nor about to
        // be freed (after a rewind, the older table may still hold it free-pending).
        self.free.remove(segment);
        self.unpend(segment);
        self.noted.insert(segment);
        let entry = self.journal.entry(segment).or_insert(0);
        *entry += delta;
        if *entry == 0 {
            self.journal.remove(&segment);
        }
    }

    /// Go on writing data in `segment` from slot `next` (after an open: the open data segment
    /// of the durable table, or the segment of the newest replayed row). Its record is
    /// settled by the next fold as open; slots from `next` on may hold rows no commit named,
    /// which are overwritten.
    pub fn resume_data(&mut self, segment: u64, next: u64) {
        if segment >= self.shape.segments || next >= self.shape.segment_slots {
            return;
        }
        if let Some((old, _)) = self.open_data {
            self.settle.insert(old);
        }
        self.free.remove(segment);
        self.settle.remove(&segment);
        self.opened.insert(segment, Kind::Data);
        self.note_take(segment);
        self.open_data = Some((segment, next));
    }

    /// Planted bug `sut_decrement_at_write_time`: take one off `pbn`'s segment in the
    /// resident array at once, and free the segment when it reaches 0, as if the durable
    /// trees no longer pointed into it.
    pub fn decrement_now(&mut self, pbn: u64) {
        let segment = self.shape.of_block(pbn);
        let open = self.open_data.is_some_and(|(s, _)| s == segment);
        let record = self.record_mut(segment);
        record.referenced = record.referenced.saturating_sub(1);
        if record.referenced == 0 && !open {
            *record = SutRecord::FREE;
            self.dirty.insert(segment / PER_LEAF * PER_LEAF);
            self.free.insert(segment);
        }
    }

    fn take(&mut self, kind: Kind) -> Option<u64> {
        let segment = self.free.pop_first()?;
        self.opened.insert(segment, kind);
        self.note_take(segment);
        Some(segment)
    }

    fn note_take(&mut self, segment: u64) {
        self.watchers.retain(|watcher| match watcher.upgrade() {
            Some(bits) => {
                bits.set(segment);
                true
            }
            None => false,
        });
    }

    /// Start noting, for one pass, which segments are taken from now on: the token's bit of
    /// a segment is set when it is taken (a pass planned from one walk of the map skips such
    /// segments). Dropping the token ends its noting; other passes keep theirs.
    ///
    /// Every take goes through `&mut self`, that is the volume's exclusive lock: a pass that
    /// registers under that lock and then walks under the shared one sees every take after
    /// its walk in its token, and no segment is taken while a chunk of it checks and repairs
    /// under the shared lock. A step that takes segments beside readers (the overlapping sync
    /// or a cleaner beside writers, FORMAT.md V4.8 and V4.6) must first wait for a take gate
    /// that such chunks hold shared (FORMAT.md V4.13, stage 3, "Built").
    pub fn watch_openings(&mut self) -> Openings {
        let bits = Arc::new(OpeningBits::new(self.shape.segments));
        self.watchers.push(Arc::downgrade(&bits));
        Openings { bits }
    }

    /// Keep the last `segments` free segments for metadata, `sync_share` of them (`3 ×
    /// S_sync`) for the pages of the sync being written and of the two whose frees are not
    /// released yet: data never takes them, the data cleaner only the part above
    /// `sync_share` and three open segments.
    pub fn set_reserve(&mut self, segments: u64, sync_share: u64) {
        self.reserve = segments;
        self.sync_share = sync_share.min(segments);
    }

    /// Metadata segments waiting for their release, counted as part of the syncs' share (at
    /// most two of its three syncs): the reserve is there for the pages of syncs in flight,
    /// and these are exactly those pages, coming back without any cleaning. Requiring the
    /// whole reserve free beside them would count those syncs twice (measured: a full
    /// rs:4+2 test pool had 6 of its 24 reserve segments parked so, and its data, with every
    /// remaining dead block in segments too full to clean, could not get one back).
    ///
    /// What comes back when matters (review of step 7, finding 1): segments freed by the
    /// newest sync come back only after two more syncs, so they cannot stand in for the
    /// next sync's pages. With `r1` metadata segments back after the next sync and `r2`
    /// after the one after it, the syncs' share still needed free is `max(S, 2S − r1, 3S −
    /// r1 − r2)`; what is parked is `3S` less that.
    fn parked(&self) -> u64 {
        let s = self.sync_share / 3;
        let (mut r1, mut r2) = (0u64, 0u64);
        for (txg, segments) in &self.pending {
            let metadata = segments
                .iter()
                .filter(|segment| !self.pending_data.contains(segment))
                .count() as u64;
            if *txg >= self.last_fold {
                r2 += metadata;
            } else {
                r1 += metadata;
            }
        }
        (r1 + r2).min(s + r1).min(2 * s)
    }

    /// Free segments a data write must leave: the reserve less what of it is parked.
    #[must_use]
    pub fn data_floor(&self) -> u64 {
        self.reserve - self.parked()
    }

    /// Free segments the data cleaner must leave: the syncs' share and three open segments,
    /// less what of it is parked.
    #[must_use]
    pub fn cleaner_floor(&self) -> u64 {
        (self.sync_share + 3).min(self.reserve) - self.parked()
    }

    /// Data segments opened by this process so far.
    #[must_use]
    pub fn data_segments_opened(&self) -> u64 {
        self.data_opened
    }

    /// The hard reserve, in segments.
    #[must_use]
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// A fresh slot in the open data segment (a new segment is opened when it is full);
    /// `None` when no segment outside the hard reserve is free.
    pub fn data_slot(&mut self) -> Option<u64> {
        self.data_slot_above(self.data_floor())
    }

    /// A fresh data slot as [`SegmentTable::data_slot`], opening a new segment only while
    /// more than `floor` are free (the cleaner may dig into the hard reserve: its
    /// relocations are what gives segments back).
    pub fn data_slot_above(&mut self, floor: u64) -> Option<u64> {
        if let Some((segment, next)) = self.open_data {
            if next < self.shape.segment_slots {
                self.open_data = Some((segment, next + 1));
                return Some(segment * self.shape.segment_slots + next);
            }
            self.settle.insert(segment);
        }
        if self.free.count <= floor {
            return None;
        }
        let segment = self.take(Kind::Data)?;
        self.data_opened += 1;
        self.open_data = Some((segment, 1));
        Some(segment * self.shape.segment_slots)
    }

    /// A fresh metadata page number in the open metadata segment; `None` when no segment is
    /// free.
    pub fn page(&mut self) -> Option<u64> {
        if let Some((segment, next)) = self.open_meta {
            if next < self.shape.pages_per_segment {
                self.open_meta = Some((segment, next + 1));
                return Some(segment * self.shape.pages_per_segment + next);
            }
            self.settle.insert(segment);
        }
        let segment = self.take(Kind::Metadata)?;
        self.open_meta = Some((segment, 1));
        Some(segment * self.shape.pages_per_segment)
    }

    /// Apply the journal to the array at the boundary of sync `txg` (called until it returns
    /// no new dirty leaf; each call applies what was journalled since the previous one) and
    /// set every touched segment's state: the open segments stay open with their fill
    /// pointers, a segment that reached 0 becomes free-pending with `txg`, a free-pending one
    /// freed at or before `txg − 2` becomes free. Returns the leaves changed (first segment of
    /// each) since the last call.
    ///
    /// # Errors
    /// [`Error::CorruptMetadata`] when a count would go below zero or past 2^32 (a pointer
    /// dropped twice, or the durable state disagrees with the trees).
    pub fn fold(&mut self, txg: u64, pages_per_slot: u64) -> Result<Vec<u64>> {
        self.last_fold = txg;
        // A full open segment is closed here, so that its record does not stay "open" (not
        // while the map still writes rows of its last slot: it is closed when the map asks
        // for a slot after it).
        if let Some((segment, _)) = self
            .open_data
            .filter(|(_, next)| *next >= self.shape.segment_slots && !self.hold_open_data)
        {
            self.settle.insert(segment);
            self.open_data = None;
        }
        if let Some((segment, _)) = self
            .open_meta
            .filter(|(_, next)| *next >= self.shape.pages_per_segment)
        {
            self.settle.insert(segment);
            self.open_meta = None;
        }
        let mut touched: BTreeSet<u64> = self.journal.keys().copied().collect();
        touched.append(&mut self.noted.clone());
        touched.extend(self.opened.keys().copied());
        touched.extend(self.open_data.map(|(s, _)| s));
        touched.extend(self.open_meta.map(|(s, _)| s));
        touched.append(&mut self.settle);
        let lag = self.lag();
        let journal = std::mem::take(&mut self.journal);
        for segment in touched {
            let before = self.record(segment);
            let delta = journal.get(&segment).copied().unwrap_or(0);
            let count = i64::from(before.referenced) + delta;
            let count = u32::try_from(count).map_err(|_| {
                Error::corrupt_metadata(format!(
                    "segment {segment}: {} referenced {delta:+} at txg {txg}",
                    before.referenced
                ))
            })?;
            let kind = match before.state {
                SegmentState::OpenMetadata | SegmentState::FullMetadata => Kind::Metadata,
                SegmentState::Free | SegmentState::FreePending => {
                    self.opened.get(&segment).copied().unwrap_or(Kind::Data)
                }
                _ => Kind::Data,
            };
            let mut after = SutRecord {
                referenced: count,
                ..SutRecord::FREE
            };
            if let Some((_, next)) = self.open_data.filter(|(s, _)| *s == segment) {
                after.state = SegmentState::OpenData;
                after.slots_used = u8::try_from(next).unwrap_or(u8::MAX);
            } else if let Some((_, next)) = self.open_meta.filter(|(s, _)| *s == segment) {
                after.state = SegmentState::OpenMetadata;
                after.slots_used =
                    u8::try_from(next.div_ceil(pages_per_slot.max(1))).unwrap_or(u8::MAX);
            } else if count > 0 {
                after.state = match kind {
                    Kind::Data => SegmentState::FullData,
                    Kind::Metadata => SegmentState::FullMetadata,
                };
            } else if before.state == SegmentState::FreePending
                && !self.noted.contains(&segment)
                && !self.opened.contains_key(&segment)
            {
                // Not pending any more: released in memory, so the record says free too.
                if self
                    .freed_at(segment)
                    .is_none_or(|freed| freed + lag <= txg)
                {
                    after.state = SegmentState::Free;
                } else {
                    after = before;
                }
            } else if before.state == SegmentState::Free
                && !self.opened.contains_key(&segment)
                && !self.noted.contains(&segment)
            {
                after = before;
            } else {
                // It held something (or was opened since the boundary) and nothing refers
                // to it now.
                after.state = SegmentState::FreePending;
                after.freed_txg_low = (txg & 0xFFFF) as u16;
                self.pend(segment, txg);
                if kind == Kind::Data {
                    self.pending_data.insert(segment);
                }
            }
            if count > 0 {
                // Referenced again (after a rewind, rows replayed into a segment the older
                // table had freed): never released by an old freeing.
                self.unpend(segment);
            }
            if after != before {
                *self.record_mut(segment) = after;
                self.dirty.insert(segment / PER_LEAF * PER_LEAF);
            }
        }
        self.noted.clear();
        // Segments no longer open nor journalled are settled; the open ones stay noted.
        let open: Vec<u64> = [self.open_data, self.open_meta]
            .iter()
            .flatten()
            .map(|(s, _)| *s)
            .collect();
        self.opened.retain(|s, _| open.contains(s));
        Ok(std::mem::take(&mut self.dirty).into_iter().collect())
    }

    fn freed_at(&self, segment: u64) -> Option<u64> {
        self.pending
            .iter()
            .find(|(_, segments)| segments.contains(&segment))
            .map(|(txg, _)| *txg)
    }

    fn unpend(&mut self, segment: u64) {
        self.pending_data.remove(&segment);
        for (_, segments) in &mut self.pending {
            segments.retain(|s| *s != segment);
        }
        self.pending.retain(|(_, segments)| !segments.is_empty());
    }

    fn pend(&mut self, segment: u64, txg: u64) {
        match self.pending.back_mut() {
            Some((at, segments)) if *at == txg => segments.push(segment),
            _ => self.pending.push_back((txg, vec![segment])),
        }
        if self.rule == ReleaseRule::AtOnce {
            // Planted bug `release_before_root_durable`: reusable before the new root is.
            self.release_until(txg);
        }
    }

    /// Uberblock `txg` is durable on the members: segments freed at or before `txg − 2` (by
    /// the correct rule) may be taken again.
    pub fn durable(&mut self, txg: u64) {
        self.release_until(txg);
    }

    fn lag(&self) -> u64 {
        match self.rule {
            ReleaseRule::AfterTwoSyncs => 2,
            ReleaseRule::AfterOneSync | ReleaseRule::AtOnce => 0,
        }
    }

    fn release_until(&mut self, txg: u64) {
        let lag = self.lag();
        // Held segments due for release stay pending, retried at the next release.
        let mut kept: Option<(u64, Vec<u64>)> = None;
        while let Some((freed, _)) = self.pending.front() {
            if freed + lag > txg {
                break;
            }
            if let Some((freed, segments)) = self.pending.pop_front() {
                for segment in segments {
                    if self.held.contains_key(&segment) && !self.ignore_holds {
                        kept.get_or_insert((freed, Vec::new())).1.push(segment);
                        continue;
                    }
                    self.pending_data.remove(&segment);
                    // Belt and braces: never free a segment something still counts on.
                    let counted = self.record(segment).referenced > 0
                        || self.journal.contains_key(&segment)
                        || self.opened.contains_key(&segment);
                    if !counted {
                        self.free.insert(segment);
                        self.settle.insert(segment);
                    }
                }
            }
        }
        if let Some(kept) = kept {
            self.pending.push_front(kept);
        }
    }

    /// Hold `segment` against release: it holds rows handed out for a write unit still on
    /// the devices (not noted yet), which a sync run meanwhile sees as unreferenced.
    pub fn hold(&mut self, segment: u64) {
        *self.held.entry(segment).or_insert(0) += 1;
    }

    /// Whether any segment is held for a write unit still on the devices.
    #[must_use]
    pub fn any_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Drop one hold of `segment` (its unit landed, or was discarded: what it noted keeps the
    /// segment referenced; if nothing, the next release may free it).
    pub fn unhold(&mut self, segment: u64) {
        if let Some(count) = self.held.get_mut(&segment) {
            *count -= 1;
            if *count == 0 {
                self.held.remove(&segment);
            }
        }
    }

    /// Planted bug `release_held_segment`: releases ignore [`SegmentTable::hold`].
    pub fn ignore_holds(&mut self, ignore: bool) {
        self.ignore_holds = ignore;
    }

    /// Full metadata segments worth emptying, fewest referenced pages first, as `(page
    /// numbers, referenced)`: those at most half referenced, or, when fewer than an eighth
    /// of the segments (at least 4) are free, any with a dead page.
    #[must_use]
    pub fn metadata_victims(&self) -> Vec<(std::ops::Range<u64>, u64)> {
        let scarce = self.free.count < (self.shape.segments / 8).max(4);
        let per = self.shape.pages_per_segment;
        let mut victims: Vec<(std::ops::Range<u64>, u64)> = self
            .in_use()
            .into_iter()
            .filter(|(_, count, state)| {
                *state == SegmentState::FullMetadata
                    && (u64::from(*count) * 2 <= per || (scarce && u64::from(*count) < per))
            })
            .map(|(segment, count, _)| (segment * per..(segment + 1) * per, u64::from(count)))
            .collect();
        victims.sort_by_key(|(range, count)| (*count, range.start));
        victims
    }

    /// Blocks (or pages) of `segment` referenced now: the boundary's count plus what was
    /// journalled since.
    #[must_use]
    pub fn referenced_now(&self, segment: u64) -> u64 {
        let base = i64::from(self.record(segment).referenced);
        let now = base + self.journal.get(&segment).copied().unwrap_or(0);
        u64::try_from(now).unwrap_or(0)
    }

    /// Whether `segment` holds data rows and is closed (not the open data segment), not free
    /// and not waiting for its release: what the data cleaner may empty.
    /// The free-pending segments as one set (not a scan of the pending lists per segment).
    fn pending_set(&self) -> BTreeSet<u64> {
        self.pending
            .iter()
            .flat_map(|(_, segments)| segments.iter().copied())
            .collect()
    }

    fn closed_data(&self, segment: u64, pending: &BTreeSet<u64>) -> bool {
        let data = match self.opened.get(&segment) {
            Some(Kind::Data) => true,
            Some(Kind::Metadata) => false,
            None => matches!(
                self.record(segment).state,
                SegmentState::OpenData | SegmentState::FullData
            ),
        };
        data && self.open_data.is_none_or(|(open, _)| open != segment)
            && !self.is_free(segment)
            && !pending.contains(&segment)
    }

    /// Segments that could hold data now: those recorded at the boundary and those opened
    /// since (no walk of the free ones).
    fn candidate_segments(&self) -> impl Iterator<Item = u64> + '_ {
        let recorded = self.leaves.iter().enumerate().flat_map(|(leaf, records)| {
            records.iter().flat_map(move |records| {
                records
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.state != SegmentState::Free)
                    .map(move |(i, _)| leaf as u64 * PER_LEAF + i as u64)
            })
        });
        let opened = self
            .opened
            .iter()
            .filter(|(s, kind)| {
                **kind == Kind::Data && self.record(**s).state == SegmentState::Free
            })
            .map(|(s, _)| *s);
        recorded.chain(opened)
    }

    /// The data cleaner's next victim (FORMAT.md V4.6, "Cleaner"): the closed data segment
    /// with the fewest referenced blocks among those with at least `min_dead` blocks not
    /// referenced and at least one referenced (greedy: the slot summary keeps no age), not in
    /// `skip`, as `(segment, referenced now)`.
    #[must_use]
    pub fn data_victim(&self, skip: &BTreeSet<u64>, min_dead: u64) -> Option<(u64, u64)> {
        let capacity = self.shape.blocks_per_segment;
        let pending = self.pending_set();
        self.candidate_segments()
            .filter(|s| !skip.contains(s) && self.closed_data(*s, &pending))
            .map(|s| (s, self.referenced_now(s)))
            .filter(|(_, count)| *count > 0 && *count + min_dead <= capacity)
            .min_by_key(|(s, count)| (*count, *s))
    }

    /// Free-pending segments that held data.
    #[must_use]
    pub fn pending_data_segments(&self) -> u64 {
        self.pending_data.len() as u64
    }

    /// Closed data segments no block references any more: free-pending at the next sync's
    /// fold, free two syncs after it (space already won that only syncs hand out).
    #[must_use]
    pub fn emptied_data_segments(&self) -> u64 {
        let pending = self.pending_set();
        self.candidate_segments()
            .filter(|s| self.closed_data(*s, &pending) && self.referenced_now(*s) == 0)
            .count() as u64
    }

    /// Whether `segment` may be taken now (free in memory).
    #[must_use]
    pub fn is_free(&self, segment: u64) -> bool {
        let (word, bit) = FreeSet::place(segment);
        self.free.words.get(word).is_some_and(|w| w & bit != 0)
    }

    /// Whether `segment` waits for its release (freed by one of the last syncs).
    #[must_use]
    pub fn is_pending(&self, segment: u64) -> bool {
        self.freed_at(segment).is_some()
    }

    /// Keep (or no longer keep) a fully handed-out open data segment open through folds: the
    /// map still hands out rows of its last slot.
    pub fn hold_open_data(&mut self, hold: bool) {
        self.hold_open_data = hold;
    }

    /// The open data segment when every slot of it was handed out (the next fold closes it
    /// unless it is held open).
    #[must_use]
    pub fn open_data_full(&self) -> Option<u64> {
        self.open_data
            .filter(|(_, next)| *next >= self.shape.segment_slots)
            .map(|(segment, _)| segment)
    }

    /// The open data and metadata segments (hints for the uberblock).
    #[must_use]
    pub fn open_segments(&self) -> (Option<u64>, Option<u64>) {
        (
            self.open_data.map(|(s, _)| s),
            self.open_meta.map(|(s, _)| s),
        )
    }

    /// The 16 KiB usage leaf starting at segment `first`, as the array holds it.
    #[must_use]
    pub fn leaf_page(&self, first: u64) -> Vec<u8> {
        let records: Vec<SutRecord> = (first..first + PER_LEAF).map(|s| self.record(s)).collect();
        SutRecord::encode_page(&records)
    }

    /// The segments that hold data now, in order, each with how many of its slots may hold
    /// rows (scrub and rebuild walk these, FORMAT.md V4.5): those the last boundary records
    /// as open or full data (or being cleaned) that are neither free nor waiting for release
    /// in memory, those opened for data since, and those whose count grew since (rows of a
    /// replayed log in segments the previous process opened). The open data segment's slots stop at
    /// its fill pointer; a slot past it holds no row of this use of the segment.
    #[must_use]
    pub fn data_segments(&self) -> Vec<(u64, u64)> {
        let (bits, open) = self.data_segment_bits();
        bits.iter_from(0)
            .map(|segment| (segment, slots_of(segment, open, self.shape.segment_slots)))
            .collect()
    }

    /// The data segments of [`SegmentTable::data_segments`] as one bit per segment (512 KiB
    /// at 16 TiB, where the list would be 2^22 entries), with the open data segment and its
    /// fill pointer: what a pass keeps of its data items (docs/FORMAT.md V4.13, "Plans in
    /// windows"). Scans the records in place: nothing of the size of the table is built.
    #[must_use]
    pub fn data_segment_bits(&self) -> (SegmentBits, Option<(u64, u64)>) {
        let pending = self.pending_set();
        let mut bits = SegmentBits::new(self.shape.segments);
        for (leaf, records) in self.leaves.iter().enumerate() {
            let Some(records) = records else { continue };
            for (i, record) in records.iter().enumerate() {
                let segment = leaf as u64 * PER_LEAF + i as u64;
                if matches!(
                    record.state,
                    SegmentState::OpenData | SegmentState::FullData | SegmentState::BeingCleaned
                ) && !self.is_free(segment)
                    && !pending.contains(&segment)
                {
                    bits.set(segment);
                }
            }
        }
        for (segment, kind) in &self.opened {
            if *kind == Kind::Data {
                bits.set(*segment);
            }
        }
        // Segments that gained blocks since the boundary: data rows a replayed record names
        // (opened by the process before this one, so neither recorded nor in `opened`).
        // Between syncs only data blocks are counted, so a positive journal is data.
        for (segment, delta) in &self.journal {
            if *delta > 0 && !pending.contains(segment) {
                bits.set(*segment);
            }
        }
        (bits, self.open_data)
    }

    /// `(segment, referenced, state)` of every segment that is not free, for the invariant
    /// checks (counts recomputed from the trees must equal these).
    #[must_use]
    pub fn in_use(&self) -> Vec<(u64, u32, SegmentState)> {
        let mut found = Vec::new();
        for (leaf, records) in self.leaves.iter().enumerate() {
            let Some(records) = records else { continue };
            for (i, record) in records.iter().enumerate() {
                if record.state != SegmentState::Free {
                    found.push((
                        leaf as u64 * PER_LEAF + i as u64,
                        record.referenced,
                        record.state,
                    ));
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_bits_find_and_count_what_was_set_and_nothing_beyond_the_pool() {
        let mut bits = SegmentBits::new(130);
        for segment in [0, 5, 63, 64, 127, 129, 130, 191] {
            bits.set(segment);
        }
        let set: Vec<u64> = bits.iter_from(0).collect();
        assert_eq!(set, vec![0, 5, 63, 64, 127, 129]);
        for from in 0..=131 {
            let expected = set.iter().filter(|s| **s >= from).count() as u64;
            assert_eq!(bits.count_from(from), expected, "from {from}");
            assert_eq!(
                bits.next_from(from),
                set.iter().copied().find(|s| *s >= from),
                "from {from}"
            );
        }
        assert!(bits.contains(64) && !bits.contains(65) && !bits.contains(130));
    }
    use crate::geometry::Layout;
    use std::sync::Arc;

    fn shape() -> SegmentShape {
        let layout: Layout = "rs:4+2".parse().unwrap();
        let geometry = Geometry::new_v4(layout, 6, 16384, 16 << 20, 4, 16384).unwrap();
        SegmentShape::new(&geometry, 4).unwrap()
    }

    #[test]
    fn a_segment_goes_open_full_pending_and_free_two_syncs_after_it_emptied() {
        let shape = shape();
        assert_eq!((shape.pages_per_segment, shape.blocks_per_segment), (8, 64));
        let mut table = SegmentTable::new(shape, ReleaseRule::AfterTwoSyncs);
        let free = table.free_segments();
        let slot = table.data_slot().unwrap();
        assert_eq!(slot, 0, "lowest first");
        table.block_delta(0, 1);
        table.block_delta(1, 1);
        table.fold(1, 2).unwrap();
        assert_eq!(table.record(0).state, SegmentState::OpenData);
        assert_eq!(
            (table.record(0).referenced, table.record(0).slots_used),
            (2, 1)
        );
        for _ in 1..4 {
            table.data_slot().unwrap();
        }
        // The next slot opens segment 1; segment 0 is closed by the next fold.
        assert_eq!(table.data_slot().unwrap(), 4);
        table.fold(2, 2).unwrap();
        assert_eq!(table.record(0).state, SegmentState::FullData);
        table.block_delta(0, -1);
        table.block_delta(1, -1);
        table.fold(3, 2).unwrap();
        assert_eq!(table.record(0).state, SegmentState::FreePending);
        assert_eq!(table.record(0).freed_txg_low, 3);
        table.durable(3);
        table.durable(4);
        assert_eq!(table.free_segments(), free - 2, "held until uberblock 5");
        table.durable(5);
        assert_eq!(table.free_segments(), free - 1);
        table.fold(6, 2).unwrap();
        assert_eq!(
            table.record(0),
            SutRecord::FREE,
            "the next sync records it free"
        );
        // A count below zero is corrupt, never wrapped.
        table.block_delta(64, -1);
        assert!(table.fold(7, 2).is_err());
    }

    /// A segment whose only rows are on the devices (handed out, not noted) reaches 0 at a
    /// fold and goes free-pending; held, no release frees it, and the unit's landing (a +1)
    /// keeps it; a hold dropped without landing lets the next release free it.
    #[test]
    fn a_held_segment_is_never_released_and_is_kept_by_its_landing() {
        for (ignore, lands) in [(false, true), (false, false), (true, true)] {
            let mut table = SegmentTable::new(shape(), ReleaseRule::AfterTwoSyncs);
            table.ignore_holds(ignore);
            let free = table.free_segments();
            for _ in 0..4 {
                table.data_slot().unwrap(); // segment 0, every slot handed out
            }
            table.hold(0);
            table.fold(1, 2).unwrap(); // closed with nothing referenced
            assert_eq!(table.record(0).state, SegmentState::FreePending);
            for txg in 1..=5 {
                table.durable(txg);
            }
            if ignore {
                // The planted bug: released under the unit's rows.
                assert!(table.is_free(0));
                continue;
            }
            assert!(!table.is_free(0), "held: never released");
            assert_eq!(table.free_segments(), free - 1);
            if lands {
                table.block_delta(0, 1);
                table.unhold(0);
                table.fold(6, 2).unwrap();
                table.durable(6);
                table.durable(7);
                table.durable(8);
                assert_eq!(table.record(0).state, SegmentState::FullData);
                assert_eq!(table.record(0).referenced, 1);
                assert!(!table.is_free(0));
            } else {
                table.unhold(0);
                table.durable(6);
                assert!(table.is_free(0), "given up: released at the next release");
                table.fold(7, 2).unwrap();
                assert_eq!(table.record(0), SutRecord::FREE);
            }
        }
    }

    /// Each pass's token notes the segments taken after it was made, whatever other passes
    /// do: dropping one (a rebuild ending) neither stops nor clears another (a scrub's).
    #[test]
    fn each_pass_notes_the_segments_taken_since_it_began_until_it_is_dropped() {
        let mut table = SegmentTable::new(shape(), ReleaseRule::AfterTwoSyncs);
        table.data_slot().unwrap(); // segment 0, before any pass
        let rebuild = table.watch_openings();
        for _ in 0..4 {
            table.data_slot().unwrap(); // the last one opens segment 1
        }
        let scrub = table.watch_openings();
        assert!(!rebuild.taken(0) && rebuild.taken(1));
        assert!(!scrub.taken(1), "taken before the scrub's pass began");
        drop(rebuild);
        for _ in 0..4 {
            table.data_slot().unwrap(); // segment 2
        }
        assert!(
            scrub.taken(2),
            "the rebuild's end did not stop the scrub's noting"
        );
        assert!(!scrub.taken(0) && !scrub.taken(3));
        assert_eq!(table.watchers.len(), 1, "a dropped token is forgotten");
        assert!(
            scrub.taken(table.shape().segments),
            "beyond the table: assume taken"
        );
    }

    #[test]
    fn a_freeing_txg_is_rebuilt_from_its_low_bits_across_the_wrap() {
        let shape = shape();
        let mut records = vec![SutRecord::FREE; SUT_RECORDS_PER_PAGE];
        records[3] = SutRecord {
            freed_txg_low: 0xFFFF,
            ..SutRecord::FREE
        };
        records[3].state = SegmentState::FreePending;
        records[5] = SutRecord {
            referenced: 2,
            state: SegmentState::OpenMetadata,
            slots_used: 1,
            freed_txg_low: 0,
        };
        let leaf = Arc::new(SutRecord::encode_page(&records));
        let all = shape.segments;
        // Durable txg 0x1_0000: segment 3 was freed by txg 0xFFFF, one sync ago.
        let table = SegmentTable::load(
            shape,
            ReleaseRule::AfterTwoSyncs,
            0x1_0000,
            2,
            &[(0, Arc::clone(&leaf))],
        )
        .unwrap();
        assert_eq!(table.free_segments(), all - 2);
        assert_eq!(table.pending_segments(), 1);
        assert_eq!(table.open_segments(), (None, Some(5)));
        let mut table = table;
        assert_eq!(
            table.page(),
            Some(5 * 8 + 2),
            "the open segment goes on after its fill"
        );
        table.durable(0x1_0001);
        assert_eq!(table.free_segments(), all - 1, "0xFFFF + 2 is durable");
        // A freeing txg after the durable one cannot be rebuilt: refused.
        assert!(SegmentTable::load(shape, ReleaseRule::AfterTwoSyncs, 3, 2, &[(0, leaf)]).is_err());
    }
}
