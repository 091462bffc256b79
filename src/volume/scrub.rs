//! Scrub of a version-4 volume on segments (docs/FORMAT.md V4.5, "Scrub of data segments" and
//! "Scrub of metadata"; V4.13 step 8): every allocated segment in order, free and
//! free-pending ones skipped, so the cost follows the allocated space, not the volume size.
//!
//! * A data segment: every written row of every slot the map records (rows noted since the
//!   last sync, else the slot summary), every written shard-block of it (data and parity; the
//!   never-written cells of a narrow row are not read) checked against the row's recorded crc
//!   (V4.3 seed). A bad or unreadable shard-block is rebuilt from the row's verified shards,
//!   checked against its own crc, and rewritten in place.
//! * A metadata segment: every page the trees reference in it (found from the parents by
//!   [`MapStore::page_refs`]), every copy checked against its parent's crc; bad copies are
//!   rewritten from one that verifies.
//!
//! Check-only writes no byte to any device. The row machinery here (reading a slot's rows
//! whole, rebuilding cells from verified shards) is shared with the rebuild of a position
//! (`rebuild.rs`).
//!
//! Owns: walking allocated segments, checking and repairing rows and page copies in place,
//! the scrub's tallies. Does not own and must not touch: which pages exist or what they say
//! (the map's: pages are read and rewritten through its [`PageStore`]), pointers, the log,
//! superblocks, and the fault policy (every damage is in the report naming its place, and a
//! row cell's failed read, failed crc or failed rewrite also goes to the volume's observer, as
//! on the data path: the pool decides what it means for a member; a page copy's are in the
//! report only, as the page store reports no member problems).
//!
//! [`MapStore::page_refs`]: crate::meta::MapStore::page_refs
//! [`PageStore`]: crate::meta::PageStore

use super::pass::PassItems;
use super::place::{runs, Piece};
use super::read::RunResults;
use super::{write_runs, MemberProblem, ProblemKind, Volume, BLOCK_BYTES};
use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::format::v4::BlockPointer;
use crate::format::DeviceScrubCounters;
use crate::meta::{CopyProblem, Openings, PageRef, WrittenRow};
use crate::types::DeviceIndex;

/// Slots a scrub reads in one batch while it checks the batch before (8 slots of rs:4+2 with
/// 64 KiB chunks: 3 MiB; a segment of 64 slots is eight such batches, so the devices read
/// while the CPU verifies: before, each segment was read whole and then verified, and the
/// two took turns).
const SCRUB_READ_SLOTS: usize = 8;

/// The rows of some slots and the runs of requests that read them ([`Volume::read_slots`]).
struct PlannedSlots {
    read: Vec<Vec<RowRead>>,
    slot_of: Vec<u64>,
    rows_max: usize,
    runs: Vec<Vec<Piece>>,
}

/// A group of slots as read: the plan, the runs' buffers and outcomes.
type ReadGroup = (PlannedSlots, super::read::RunBuffers, RunResults);

/// How a scrub runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolumeScrubOptions {
    /// Find and report damage, repair nothing: no byte is written to any device.
    pub check_only: bool,
}

/// A scrub pass planned from one walk of the map ([`Volume::scrub_plan`]) and run in chunks
/// ([`Volume::scrub_planned`]), and where it stands (docs/FORMAT.md V4.13, stage 3).
#[derive(Debug)]
pub struct ScrubPlan {
    /// The allocated segments from the pass's first on, a window at a time
    /// (docs/FORMAT.md V4.13, "Plans in windows").
    items: PassItems,
    /// The segments taken since the walk began, which are skipped (`None`: a pass under one
    /// lock, where nothing is taken meanwhile).
    openings: Option<Openings>,
}

impl ScrubPlan {
    /// Whether every segment of the plan was visited.
    #[must_use]
    pub fn done(&self) -> bool {
        self.items.next_segment().is_none()
    }

    /// The segment the pass goes on with (`None`: done): every allocated segment below it
    /// was checked or skipped by the rules of the pass.
    #[must_use]
    pub fn next_segment(&self) -> Option<u64> {
        self.items.next_segment()
    }

    /// Allocated segments the pass visits in all (from its first segment on).
    #[must_use]
    pub fn segments(&self) -> u64 {
        self.items.total()
    }
}

/// A place scrub or rebuild could not make good, named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// A shard-block of a data row.
    ShardBlock {
        /// The data slot.
        slot: u64,
        /// The row in the slot.
        row: u16,
        /// The shard of the row.
        shard: usize,
        /// The member (layout position) it is on.
        device: usize,
        /// Its byte offset on the member.
        offset: u64,
        /// What was wrong, and why it could not be repaired.
        why: String,
    },
    /// A copy of a metadata page.
    PageCopy {
        /// The tree the page belongs to.
        tree: u8,
        /// Its level (1 = leaf).
        level: u8,
        /// The first key it covers.
        first_key: u64,
        /// Its page number.
        mpn: u64,
        /// The member (layout position) the copy is on.
        device: usize,
        /// Its byte offset on the member.
        offset: u64,
        /// What was wrong, and why it could not be repaired.
        why: String,
    },
}

/// What a scrub found and did. Shard-blocks and page copies on an absent member are not
/// checked (counted in `absent`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeScrubReport {
    /// Data segments walked.
    pub data_segments: u64,
    /// Metadata segments walked (those holding a referenced page).
    pub metadata_segments: u64,
    /// Written rows checked.
    pub rows: u64,
    /// Shard-blocks read and checked against their row's crc.
    pub shard_blocks_checked: u64,
    /// Shard-blocks unreadable or failing their crc.
    pub shard_blocks_bad: u64,
    /// Bad shard-blocks rewritten with their rebuilt, verified content.
    pub shard_blocks_repaired: u64,
    /// Bad shard-blocks that could not be rebuilt or rewritten (each in `unrepairable`).
    pub shard_blocks_unrepairable: u64,
    /// Referenced metadata pages.
    pub pages: u64,
    /// Page copies read and checked against their parent's crc.
    pub page_copies_checked: u64,
    /// Page copies unreadable or failing the parent's crc.
    pub page_copies_bad: u64,
    /// Bad copies rewritten from a copy that verifies.
    pub page_copies_repaired: u64,
    /// Bad copies no copy could repair, or whose rewrite failed (each in `unrepairable`).
    pub page_copies_unrepairable: u64,
    /// Shard-blocks and page copies on absent members (not checked).
    pub absent: u64,
    /// Segments of a planned pass skipped because they were taken again since its walk, or
    /// are free or free-pending now (their content is not what the walk saw, or is dead).
    pub segments_skipped: u64,
    /// Data slots whose rows cannot be known (their slot-summary page is lost on every
    /// copy, which the metadata part reports): not checked.
    pub slots_unknown: u64,
    /// Bytes the scrub read from the members (the walk of the interior pages included;
    /// slot-summary pages the map reads into its cache are not counted).
    pub bytes_read: u64,
    /// Bytes written to the members (0 when check-only).
    pub bytes_written: u64,
    /// Every place that stays bad, named.
    pub unrepairable: Vec<Damage>,
    /// The volume's blocks that were lost: `(logical block, layout positions of its
    /// shard-blocks that failed)` for each data block the live map still points at whose
    /// bytes no redundancy could rebuild, in the order found. Blocks overwritten since (dead
    /// places) and parity are not lost data.
    pub lost_blocks: Vec<(u64, Vec<usize>)>,
    /// Per member (by position): bytes verified and skipped, errors found and what became of
    /// each (`DeviceScrubCounters::errors_accounted` holds for every member: each error is
    /// repaired, unrepairable, or not rewritten (check-only, or the rewrite failed)).
    pub members: Vec<DeviceScrubCounters>,
}

impl VolumeScrubReport {
    fn member(&mut self, device: usize) -> &mut DeviceScrubCounters {
        if self.members.len() <= device {
            self.members
                .resize_with(device + 1, DeviceScrubCounters::default);
        }
        &mut self.members[device]
    }
}

/// One allocated segment's work, in segment order.
#[derive(Debug)]
pub(super) enum Work {
    /// A data segment: the slots that may hold rows.
    Data {
        segment: u64,
        slots: std::ops::Range<u64>,
    },
    /// A metadata segment: its referenced pages, by page number.
    Metadata { segment: u64, pages: Vec<PageRef> },
}

impl Work {
    pub(super) fn segment(&self) -> u64 {
        match self {
            Work::Data { segment, .. } | Work::Metadata { segment, .. } => *segment,
        }
    }
}

/// What was found of one shard-block of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Cell {
    /// Read, and it verifies (or, for a rebuild, rebuilt and verified).
    Good,
    /// A never-written data chunk of a narrow row: zeros, never read.
    Unwritten,
    /// Not asked for.
    NotRead,
    /// Its member is absent.
    Absent,
    /// The read failed.
    Unreadable(String),
    /// Read, and it fails its crc.
    Bad,
}

impl Cell {
    fn is_source(&self) -> bool {
        matches!(self, Cell::Good | Cell::Unwritten)
    }

    pub(super) fn is_damage(&self) -> bool {
        matches!(self, Cell::Unreadable(_) | Cell::Bad)
    }

    pub(super) fn why(&self) -> String {
        match self {
            Cell::Unreadable(e) => format!("I/O error: {e}"),
            Cell::Bad => "checksum mismatch".into(),
            Cell::Absent => "member absent".into(),
            Cell::Good | Cell::Unwritten | Cell::NotRead => "good".into(),
        }
    }
}

/// One written row of a slot, read: its record and, per shard, the bytes and what was found.
#[derive(Debug)]
pub(super) struct RowRead {
    pub(super) row: u16,
    pub(super) birth: u64,
    pub(super) n: usize,
    pub(super) crcs: Vec<u32>,
    /// Per shard, the bytes read: one block for a cell that was read, empty for the others
    /// (not asked for, never written, absent): nothing is allocated or zeroed for them.
    pub(super) bytes: Vec<Vec<u8>>,
    pub(super) cells: Vec<Cell>,
    /// `(owner, pointer)` of each data block, as the map recorded the row.
    pub(super) blocks: Vec<(u64, BlockPointer)>,
}

impl Volume {
    /// Scrub every allocated segment: check every written shard-block and every copy of every
    /// referenced metadata page, and (unless check-only) rewrite what is bad from what
    /// verifies. Data written since the last flush is scrubbed too (its rows are noted).
    ///
    /// # Errors
    /// [`Error::ReadOnly`] for a repairing scrub of a read-only volume; [`Error::Io`] or
    /// [`Error::CorruptMetadata`] when the map cannot say which rows or pages exist (a
    /// summary page or an interior page that does not decode). Damage to rows and page
    /// copies is not an error: it is in the report.
    pub fn scrub(
        &self,
        devices: &[Option<SharedDevice>],
        options: &VolumeScrubOptions,
    ) -> Result<VolumeScrubReport> {
        if !options.check_only {
            self.writable("scrub with repair")?;
        }
        let mut plan = self.plan_scrub(devices, None, 0)?;
        self.scrub_planned(devices, options, &mut plan, &mut || true)
    }

    /// One walk of the map for a scrub pass in chunks, from `from_segment` on (a resumed
    /// pass). `openings` is the pass's token ([`Volume::watch_openings`], taken under the
    /// exclusive lock before this walk, which then runs under the shared one): a chunk skips
    /// a segment taken again since the walk (docs/FORMAT.md V4.13, stage 3).
    ///
    /// # Errors
    /// What the map returns when it cannot say which pages exist.
    pub fn scrub_plan(
        &self,
        devices: &[Option<SharedDevice>],
        openings: Openings,
        from_segment: u64,
    ) -> Result<ScrubPlan> {
        self.plan_scrub(devices, Some(openings), from_segment)
    }

    fn plan_scrub(
        &self,
        devices: &[Option<SharedDevice>],
        openings: Option<Openings>,
        from_segment: u64,
    ) -> Result<ScrubPlan> {
        let items = PassItems::plan(self, devices, from_segment, self.plan_window)?;
        Ok(ScrubPlan { items, openings })
    }

    /// Go on with `plan`: scrub segment after segment while `keep_going` (asked after each)
    /// says so. A segment taken again since the walk, or free or free-pending now, is skipped
    /// (counted). Repairs are written, not flushed: whoever records progress past them
    /// flushes the members first.
    ///
    /// # Errors
    /// As [`Volume::scrub`]. The plan keeps its place: the segment that failed is not done.
    pub fn scrub_planned(
        &self,
        devices: &[Option<SharedDevice>],
        options: &VolumeScrubOptions,
        plan: &mut ScrubPlan,
        keep_going: &mut dyn FnMut() -> bool,
    ) -> Result<VolumeScrubReport> {
        if !options.check_only {
            self.writable("scrub with repair")?;
        }
        let mut report = VolumeScrubReport {
            members: vec![DeviceScrubCounters::default(); devices.len()],
            bytes_read: plan.items.take_walked(),
            ..VolumeScrubReport::default()
        };
        let outcome = self.scrub_work(devices, options, plan, keep_going, &mut report);
        report.bytes_read += plan.items.take_walked();
        outcome?;
        Ok(report)
    }

    fn scrub_work(
        &self,
        devices: &[Option<SharedDevice>],
        options: &VolumeScrubOptions,
        plan: &mut ScrubPlan,
        keep_going: &mut dyn FnMut() -> bool,
        report: &mut VolumeScrubReport,
    ) -> Result<()> {
        while plan.items.ready(self, devices, plan.openings.as_ref())? {
            // Interior pages a window walk could not descend from, listed early whatever
            // the segment they lie in (docs/FORMAT.md V4.13, "Plans in windows").
            for page in plan.items.early() {
                self.scrub_page(devices, page, options, report)?;
            }
            plan.items.early_done();
            let item = &plan.items.pending()[0];
            let segment = item.segment();
            let segments = self.map.segments();
            let stale = plan.openings.as_ref().is_some_and(|o| o.taken(segment))
                || segments.is_free(segment)
                || segments.is_pending(segment);
            if stale && !self.planted_scrub_without_skip() {
                report.segments_skipped += 1;
            } else {
                match item {
                    Work::Data { slots, .. } => {
                        report.data_segments += 1;
                        self.scrub_slots(devices, slots.clone(), options, report)?;
                    }
                    Work::Metadata { pages, .. } => {
                        report.metadata_segments += 1;
                        for page in pages {
                            self.scrub_page(devices, page, options, report)?;
                        }
                    }
                }
            }
            plan.items.advance(1);
            if !plan.done() && !keep_going() {
                break;
            }
        }
        Ok(())
    }

    /// Read the written rows of `slots` (each from [`crate::meta::MapStore::slot_rows`]), the
    /// shards `wanted` accepts (asked with the slot), in one batch of requests: one per run of
    /// consecutive cells of a member, across slots (a failed run read again cell by cell, to
    /// name exactly the unreadable ones), each cell checked against its row's crc unless
    /// `verify` is off. Never-written cells are neither read nor asked for. Returns the rows of
    /// each slot, in order, and the bytes read.
    pub(super) fn read_slots(
        &self,
        devices: &[Option<SharedDevice>],
        slots: Vec<(u64, Vec<WrittenRow>)>,
        wanted: &dyn Fn(u64, usize) -> bool,
        verify: bool,
    ) -> (Vec<Vec<RowRead>>, u64) {
        let planned = self.plan_slots(devices, slots, wanted);
        let (buffers, results) = super::read::read_runs(devices, &planned.runs);
        self.finish_slots(devices, planned, &buffers, results, verify)
    }

    /// The first part of [`Volume::read_slots`]: the rows of `slots` with their cells, and the
    /// runs of requests that read them.
    fn plan_slots(
        &self,
        devices: &[Option<SharedDevice>],
        slots: Vec<(u64, Vec<WrittenRow>)>,
        wanted: &dyn Fn(u64, usize) -> bool,
    ) -> PlannedSlots {
        let width = self.rows.geometry().width();
        let mut read: Vec<Vec<RowRead>> = Vec::with_capacity(slots.len());
        let mut slot_of = Vec::with_capacity(slots.len());
        let mut pieces = Vec::new();
        // A piece's index: (slot's place, row's place, shard), packed.
        let rows_max = slots.iter().map(|(_, rows)| rows.len()).max().unwrap_or(0);
        for (i, (slot, rows)) in slots.into_iter().enumerate() {
            let mut in_slot = Vec::with_capacity(rows.len());
            for (r, written) in rows.into_iter().enumerate() {
                let WrittenRow {
                    row,
                    birth,
                    n,
                    crcs,
                    blocks,
                } = written;
                let mut cells = vec![Cell::NotRead; width];
                for (s, cell) in cells.iter_mut().enumerate() {
                    if self.rows.unwritten(s, n) {
                        *cell = Cell::Unwritten;
                        continue;
                    }
                    if !wanted(slot, s) {
                        continue;
                    }
                    let (device, offset) = self.rows.shard_block(slot, s, row);
                    if devices.get(device.0).is_some_and(Option::is_some) {
                        pieces.push(Piece {
                            device: device.0,
                            offset,
                            index: (i * rows_max + r) * width + s,
                        });
                    } else {
                        *cell = Cell::Absent;
                    }
                }
                in_slot.push(RowRead {
                    row,
                    birth,
                    n,
                    crcs,
                    bytes: vec![Vec::new(); width],
                    cells,
                    blocks,
                });
            }
            read.push(in_slot);
            slot_of.push(slot);
        }
        PlannedSlots {
            read,
            slot_of,
            rows_max,
            runs: runs(pieces),
        }
    }

    /// The second part of [`Volume::read_slots`]: the cells of `planned` filled from what its
    /// runs read (`buffers`, `results`; a failed run read again cell by cell), each checked
    /// against its row's crc unless `verify` is off; the rows and the bytes read.
    fn finish_slots(
        &self,
        devices: &[Option<SharedDevice>],
        planned: PlannedSlots,
        buffers: &super::read::RunBuffers,
        results: RunResults,
        verify: bool,
    ) -> (Vec<Vec<RowRead>>, u64) {
        let width = self.rows.geometry().width();
        let PlannedSlots {
            mut read,
            slot_of,
            rows_max,
            runs,
        } = planned;
        let results: Vec<Option<std::result::Result<(), String>>> = results
            .into_iter()
            .map(|r| r.map(|r| r.map_err(|e| e.to_string())))
            .collect();
        let mut bytes_read = 0;
        for ((run, buffer), result) in runs.iter().zip(buffers).zip(results) {
            bytes_read += buffer.len() as u64;
            let run_ok = matches!(result, Some(Ok(())));
            for (i, piece) in run.iter().enumerate() {
                let (place, s) = (piece.index / width, piece.index % width);
                let (at, r) = (place / rows_max, place % rows_max);
                let slot = slot_of[at];
                let row = &mut read[at][r];
                if run_ok {
                    row.bytes[s] = buffer[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES].to_vec();
                } else {
                    // Cell by cell, to tell the unreadable sectors from the others.
                    let Some(Some(device)) = devices.get(piece.device) else {
                        row.cells[s] = Cell::Absent;
                        continue;
                    };
                    bytes_read += BLOCK_BYTES as u64;
                    row.bytes[s] = vec![0u8; BLOCK_BYTES];
                    if let Err(e) = device.read_at(piece.offset, &mut row.bytes[s]) {
                        // The owner's fault policy hears of it (a member gone is taken out
                        // of service), as for a read of the data path.
                        self.report(&MemberProblem {
                            member: piece.device,
                            offset: piece.offset,
                            slot,
                            shard: s,
                            kind: ProblemKind::Read(&e),
                        });
                        row.cells[s] = Cell::Unreadable(e.to_string());
                        continue;
                    }
                }
                let good = !verify || {
                    let found = self.rows.crc(slot, s, row.row, row.birth, &row.bytes[s]);
                    if found != row.crcs[s] {
                        self.report(&MemberProblem {
                            member: piece.device,
                            offset: piece.offset,
                            slot,
                            shard: s,
                            kind: ProblemKind::Checksum {
                                expected: row.crcs[s],
                                found,
                            },
                        });
                    }
                    found == row.crcs[s]
                };
                row.cells[s] = if good { Cell::Good } else { Cell::Bad };
            }
        }
        (read, bytes_read)
    }

    /// Rebuild shard `target` of a read row from its sources (cells good or never written),
    /// and check the result against the target's recorded crc unless `verify` is off. `None`
    /// when too few sources verify, or the result does not. The row is borrowed mutably only
    /// to lend its sources to the codec, which reads them: no cell of the row changes (the
    /// target and any other cell that is not a source are rebuilt into buffers of their own,
    /// never-written cells read as zeros from one).
    pub(super) fn rebuild_cell(
        &self,
        slot: u64,
        row: &mut RowRead,
        target: usize,
        verify: bool,
    ) -> Option<Vec<u8>> {
        let width = self.rows.geometry().width();
        let bytes = if self.codec.parity_chunks() == 0 {
            // Copies: any verified sibling copy of the target's chunk.
            let chunk = self.rows.chunk_of(target)?;
            let source = self
                .rows
                .shards_of(chunk)
                .find(|s| *s != target && row.cells[*s] == Cell::Good)?;
            row.bytes[source].clone()
        } else {
            let present: Vec<bool> = (0..width)
                .map(|s| s != target && row.cells[s].is_source())
                .collect();
            if present.iter().filter(|p| **p).count() < self.rows.k() {
                return None;
            }
            // Read from the row: its good cells. Scratch (zeros) for never-written cells and
            // for the cells rebuilt but not wanted; the target's own buffer.
            let RowRead { cells, bytes, .. } = &mut *row;
            let scratched = |s: usize| s != target && (!present[s] || cells[s] == Cell::Unwritten);
            let others = (0..width).filter(|s| scratched(*s)).count();
            let mut out = vec![0u8; BLOCK_BYTES];
            let mut scratch = vec![0u8; others * BLOCK_BYTES];
            let mut spare = scratch.chunks_mut(BLOCK_BYTES);
            let mut out_view = Some(out.as_mut_slice());
            let mut views: Vec<&mut [u8]> = Vec::with_capacity(width);
            for (s, cell) in bytes.iter_mut().enumerate() {
                let view = if s == target {
                    out_view.take()?
                } else if scratched(s) {
                    spare.next()?
                } else {
                    cell.as_mut_slice()
                };
                views.push(view);
            }
            if !self.codec.reconstruct_views(&mut views, &present, target) {
                return None;
            }
            drop(views);
            out
        };
        let verified =
            !verify || self.rows.crc(slot, target, row.row, row.birth, &bytes) == row.crcs[target];
        verified.then_some(bytes)
    }

    /// Scrub the written rows of `slots` (a data segment's), read in one batch (the cells of
    /// consecutive slots on a member in one request), each slot then checked and repaired.
    fn scrub_slots(
        &self,
        devices: &[Option<SharedDevice>],
        slots: std::ops::Range<u64>,
        options: &VolumeScrubOptions,
        report: &mut VolumeScrubReport,
    ) -> Result<()> {
        let mut wanted = Vec::new();
        for slot in slots {
            let rows = match self.map.slot_rows(devices, slot, !options.check_only) {
                Ok(rows) => rows,
                // Its summary page is lost on every copy: the metadata part names the page;
                // the slot's rows cannot be known.
                Err(Error::MetadataLost { .. }) => {
                    report.slots_unknown += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !rows.is_empty() {
                wanted.push((slot, rows));
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let verify = !self.planted_scrub_skips_crc();
        // Read in groups of SCRUB_READ_SLOTS slots, each group's requests on the devices while
        // the group before is checked and repaired (on io_uring; elsewhere one after the
        // other, in the same order).
        let mut groups: Vec<Vec<(u64, Vec<WrittenRow>)>> = Vec::new();
        for slot in wanted {
            match groups.last_mut() {
                Some(group) if group.len() < SCRUB_READ_SLOTS => group.push(slot),
                _ => groups.push(vec![slot]),
            }
        }
        let mut before: Option<ReadGroup> = None;
        for group in groups {
            let planned = self.plan_slots(devices, group, &|_, _| true);
            let check = |before: Option<ReadGroup>, report: &mut VolumeScrubReport| {
                before.map_or(Ok(()), |b| {
                    self.check_group(devices, b, verify, options, report)
                })
            };
            let earlier = before.take();
            let (buffers, results, checked) =
                super::read::read_runs_while(devices, &planned.runs, || check(earlier, report));
            checked?;
            before = Some((planned, buffers, results));
        }
        if let Some(last) = before {
            self.check_group(devices, last, verify, options, report)?;
        }
        Ok(())
    }

    /// Fill, verify and check one group of slots read by [`Volume::scrub_slots`].
    fn check_group(
        &self,
        devices: &[Option<SharedDevice>],
        (planned, buffers, results): ReadGroup,
        verify: bool,
        options: &VolumeScrubOptions,
        report: &mut VolumeScrubReport,
    ) -> Result<()> {
        let slots = planned.slot_of.clone();
        let (read, bytes_read) = self.finish_slots(devices, planned, &buffers, results, verify);
        report.bytes_read += bytes_read;
        for (slot, mut read) in slots.into_iter().zip(read) {
            self.scrub_read_slot(devices, slot, &mut read, options, report)?;
        }
        Ok(())
    }

    /// Check the cells of `slot` as read, and rewrite the bad ones that can be rebuilt
    /// (unless check-only).
    fn scrub_read_slot(
        &self,
        devices: &[Option<SharedDevice>],
        slot: u64,
        read: &mut [RowRead],
        options: &VolumeScrubOptions,
        report: &mut VolumeScrubReport,
    ) -> Result<()> {
        let width = self.rows.geometry().width();
        let mut pieces = Vec::new();
        let mut repaired = Vec::new();
        // Shard-blocks nothing could rebuild: (row's place in `read`, shard, member).
        let mut lost_cells: Vec<(usize, usize, usize)> = Vec::new();
        for (place, row) in read.iter_mut().enumerate() {
            report.rows += 1;
            for s in 0..width {
                let cell = &row.cells[s].clone();
                let (device, offset) = self.rows.shard_block(slot, s, row.row);
                let block = BLOCK_BYTES as u64;
                match cell {
                    Cell::Absent => {
                        report.absent += 1;
                        report.member(device.0).bytes_skipped += block;
                    }
                    Cell::Unwritten | Cell::NotRead => {}
                    Cell::Good => {
                        report.shard_blocks_checked += 1;
                        report.member(device.0).bytes_scanned += block;
                    }
                    Cell::Bad | Cell::Unreadable(_) => {
                        report.shard_blocks_checked += 1;
                        report.shard_blocks_bad += 1;
                        let member = report.member(device.0);
                        member.bytes_scanned += block;
                        if matches!(cell, Cell::Bad) {
                            member.checksum_errors += 1;
                        } else {
                            member.io_errors += 1;
                        }
                        match self.rebuild_cell(slot, row, s, true) {
                            Some(_) if options.check_only => {
                                report.member(device.0).not_rewritten += 1;
                            }
                            Some(bytes) => {
                                pieces.push(Piece {
                                    device: device.0,
                                    offset,
                                    index: repaired.len(),
                                });
                                repaired.push((row.row, s, cell.why(), bytes));
                            }
                            None => {
                                lost_cells.push((place, s, device.0));
                                report.shard_blocks_unrepairable += 1;
                                report.member(device.0).unrepairable += 1;
                                report.unrepairable.push(Damage::ShardBlock {
                                    slot,
                                    row: row.row,
                                    shard: s,
                                    device: device.0,
                                    offset,
                                    why: format!(
                                        "{}; too few of the row's {width} shard-blocks verify \
                                         to rebuild it",
                                        cell.why()
                                    ),
                                });
                            }
                        }
                    }
                }
            }
        }
        self.note_lost_blocks(devices, read, &lost_cells, report)?;
        if pieces.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(repaired.len() * BLOCK_BYTES);
        for (_, _, _, block) in &repaired {
            bytes.extend_from_slice(block);
        }
        let failures = write_runs(devices, &pieces, &bytes);
        let mut failed = vec![None; repaired.len()];
        for failure in failures {
            self.report(&MemberProblem {
                member: failure.member,
                offset: failure.offset,
                slot,
                shard: failure.pieces.first().map_or(0, |i| repaired[*i].1),
                kind: ProblemKind::Write(&failure.error),
            });
            for index in &failure.pieces {
                failed[*index] = Some(failure.error.to_string());
            }
        }
        for (piece, ((row, shard, why, _), failure)) in
            pieces.iter().zip(repaired.iter().zip(failed))
        {
            match failure {
                None => {
                    report.shard_blocks_repaired += 1;
                    report.member(piece.device).repaired += 1;
                    report.bytes_written += BLOCK_BYTES as u64;
                    self.report(&MemberProblem {
                        member: piece.device,
                        offset: piece.offset,
                        slot,
                        shard: *shard,
                        kind: ProblemKind::Healed,
                    });
                }
                Some(error) => {
                    report.shard_blocks_unrepairable += 1;
                    report.member(piece.device).not_rewritten += 1;
                    report.unrepairable.push(Damage::ShardBlock {
                        slot,
                        row: *row,
                        shard: *shard,
                        device: piece.device,
                        offset: piece.offset,
                        why: format!("{why}; the rewrite failed: {error}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// The live data blocks among the shard-blocks of `lost_cells` (places in `read`): a
    /// data chunk's shard that could not be rebuilt lost its block (for a mirror, no copy
    /// verified), unless the owner's pointer has moved on since the row was written. Each
    /// is named with every member whose shard-block of the row failed: together they are
    /// why the row could not be rebuilt.
    fn note_lost_blocks(
        &self,
        devices: &[Option<SharedDevice>],
        read: &[RowRead],
        lost_cells: &[(usize, usize, usize)],
        report: &mut VolumeScrubReport,
    ) -> Result<()> {
        let k = self.rows.geometry().data_chunks() as u64;
        let mut found: Vec<u64> = Vec::new();
        for &(place, shard, _) in lost_cells {
            let Some(chunk) = self.rows.chunk_of(shard) else {
                continue;
            };
            let Some(&(owner, pointer)) = read[place]
                .blocks
                .iter()
                .find(|(_, p)| p.address().is_some_and(|pbn| pbn % k == chunk as u64))
            else {
                continue;
            };
            if found.contains(&owner) {
                continue;
            }
            found.push(owner);
            let live = match self.map.get(devices, owner) {
                Ok(now) => now == pointer,
                // Its map page is lost: the scrub's metadata part reports that page.
                Err(Error::MetadataLost { .. }) => false,
                Err(e) => return Err(e),
            };
            if live {
                // A row's shards are on distinct members: no member twice.
                let on: Vec<usize> = lost_cells
                    .iter()
                    .filter(|(p, _, _)| *p == place)
                    .map(|(_, _, device)| *device)
                    .collect();
                report.lost_blocks.push((owner, on));
            }
        }
        Ok(())
    }

    fn scrub_page(
        &self,
        devices: &[Option<SharedDevice>],
        page: &PageRef,
        options: &VolumeScrubOptions,
        report: &mut VolumeScrubReport,
    ) -> Result<()> {
        report.pages += 1;
        let store = self.map.page_store();
        let read = store.read_copies(devices, page, &|_| true, true)?;
        report.bytes_read += read.bytes_read;
        let absent = read
            .faults
            .iter()
            .filter(|f| f.problem == CopyProblem::Missing)
            .count() as u64;
        report.absent += absent;
        report.page_copies_checked += read.tried.len() as u64 - absent;
        let page_bytes = crate::format::v4::PAGE_BYTES as u64;
        for (_, device, _) in &read.tried {
            let missing = read
                .faults
                .iter()
                .any(|f| f.device == *device && f.problem == CopyProblem::Missing);
            let member = report.member(device.0);
            if missing {
                member.bytes_skipped += page_bytes;
            } else {
                member.bytes_scanned += page_bytes;
            }
        }
        let mpn = page.mpn().unwrap_or(u64::MAX);
        let damage = |device: DeviceIndex, offset: u64, why: String| Damage::PageCopy {
            tree: page.tree.id(),
            level: page.level,
            first_key: page.first_key,
            mpn,
            device: device.0,
            offset,
            why,
        };
        for fault in read
            .faults
            .iter()
            .filter(|f| f.problem != CopyProblem::Missing)
        {
            report.page_copies_bad += 1;
            let member = report.member(fault.device.0);
            if matches!(fault.problem, CopyProblem::Io(_)) {
                member.io_errors += 1;
            } else {
                member.checksum_errors += 1;
            }
            let why = fault.to_string();
            match &read.page {
                Some(_) if options.check_only => {
                    report.member(fault.device.0).not_rewritten += 1;
                }
                Some(good) => match store.write_copy(devices, fault.device, fault.offset, good) {
                    Ok(()) => {
                        report.page_copies_repaired += 1;
                        report.member(fault.device.0).repaired += 1;
                        report.bytes_written += good.len() as u64;
                    }
                    Err(problem) => {
                        report.page_copies_unrepairable += 1;
                        report.member(fault.device.0).not_rewritten += 1;
                        report.unrepairable.push(damage(
                            fault.device,
                            fault.offset,
                            format!("{why}; {problem:?}"),
                        ));
                    }
                },
                None => {
                    report.page_copies_unrepairable += 1;
                    report.member(fault.device.0).unrepairable += 1;
                    report.unrepairable.push(damage(
                        fault.device,
                        fault.offset,
                        format!("{why}; no copy verifies"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn planted_scrub_without_skip(&self) -> bool {
        #[cfg(feature = "testing")]
        return self.scrub_without_skip;
        #[cfg(not(feature = "testing"))]
        false
    }

    fn planted_scrub_skips_crc(&self) -> bool {
        #[cfg(feature = "testing")]
        return self.scrub_skip_crc;
        #[cfg(not(feature = "testing"))]
        false
    }
}
