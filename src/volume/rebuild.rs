//! Rebuild of one layout position of a version-4 volume onto a replacement device
//! (docs/FORMAT.md V4.5, "Rebuild"; V4.13 step 8): every allocated segment in order, free and
//! free-pending ones skipped, so the bytes written follow the allocated space.
//!
//! * A data segment: every written row with a shard-block on the position has it rebuilt from
//!   what one reconstruction needs (K of the row's other shard-blocks, or one sibling copy),
//!   each checked against the row's recorded crc, and the result checked against the target's
//!   own crc before it is written; a row whose first sources do not give it reads every other
//!   cell it has. Never-written cells of narrow rows are not written.
//! * Data segments may go in batches (`RebuildOptions::segments_at_once`): their slots are cut
//!   into parts that a few threads pull, each reading its part in one batch and writing it in
//!   one, so reads and writes overlap across parts.
//! * A metadata segment: every referenced page with a copy on the position gets it from a
//!   sibling copy that verifies against the parent's crc.
//!
//! The caller's part (the pool's, V4.5 "Rebuild boundary"): flush before the rebuild starts,
//! so every row it copies is durable on its sources and named by a commit, and pass the
//! replacement in the position to every later write. Rows written after the start go to
//! every present member, the replacement included ([`Volume::write`] writes each
//! shard-block whose member is `Some`), so they need no copying (a row the walk has not
//! passed yet is copied again, the same bytes); rows written before are found here (the map
//! notes a row when it is written, so a row not yet flushed is found too). The boundary as a
//! commit (attach with a sequence bump) and the watermark in the superblocks belong to the
//! pool; here a rebuild can be stopped after any segment (the progress callback) and resumed
//! from the segment it names.
//!
//! Owns: the walk of one position and its writes. Does not own and must not touch: the map's
//! pages other than copying a verified copy onto the position, pointers, the log,
//! superblocks, membership.

use super::pass::PassItems;
use super::place::Piece;
use super::scrub::{Cell, Damage, RowRead, Work};
use super::{write_runs, Volume, BLOCK_BYTES};
use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::meta::{CopyProblem, Openings, PageRef, WrittenRow};
use crate::types::DeviceIndex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

/// What to rebuild.
#[derive(Debug, Clone, Default)]
pub struct RebuildOptions {
    /// The layout position (member index) the replacement serves.
    pub position: usize,
    /// The watermark: segments below this one are taken as done (a resumed rebuild).
    pub from_segment: u64,
    /// The member the replacement takes over from, when it is still in service: a source of
    /// its own shards and page copies (each verified like any other), so that a place the
    /// other members cannot give is copied from it rather than lost when it is retired.
    pub old: Option<SharedDevice>,
    /// A resync (docs/FORMAT.md V4.16 §4): the device at the position is the member itself
    /// come back, exact for everything born before this sequence; only rows and page copies
    /// born at or after it are copied. 0: everything (a rebuild).
    pub min_birth: u64,
    /// The most data segments rebuilt together, their parts pulled by a few threads so that
    /// reads and writes overlap (0 or 1: one at a time). Up to `FIRST_BATCH` (8) a batch is
    /// exactly this many (deterministic steps); above, a batch starts at 8 and is then sized
    /// from the rate the last batches wrote at, so that a batch of dense segments takes about
    /// `BATCH_TIME` (25 ms). The progress callback hears of each segment once the batch is
    /// done, so a stop takes effect at the end of a batch.
    pub segments_at_once: usize,
}

/// A rebuild pass planned from one walk of the map ([`Volume::rebuild_plan`]), and where it
/// stands.
#[derive(Debug)]
pub struct RebuildPlan {
    /// The allocated segments from the watermark on, a window at a time
    /// (docs/FORMAT.md V4.13, "Plans in windows").
    items: PassItems,
    /// Items done, those below the watermark included.
    done: u64,
    /// The segments taken since the walk began, which are skipped (`None`: a pass under one
    /// lock, where nothing is taken meanwhile).
    openings: Option<Openings>,
    /// Data segments the next batch takes (0: not chosen yet), kept from step to step.
    batch: usize,
}

impl RebuildPlan {
    /// Whether every segment of the plan was visited.
    #[must_use]
    pub fn done(&self) -> bool {
        self.items.next_segment().is_none()
    }
}

/// Progress after each segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildProgress {
    /// Allocated segments done (those below the watermark included).
    pub segments_done: u64,
    /// Allocated segments in all.
    pub segments_total: u64,
    /// The watermark to resume from: every allocated segment below it is done.
    pub next_segment: u64,
}

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Allocated segments in all.
    pub segments_total: u64,
    /// Allocated segments done (those below the watermark included).
    pub segments_done: u64,
    /// Where to resume when the callback stopped the rebuild (`None`: finished).
    pub resume_from: Option<u64>,
    /// Shard-blocks rebuilt, verified and written onto the position.
    pub shard_blocks_written: u64,
    /// Page copies written onto the position.
    pub page_copies_written: u64,
    /// Sources (shard-blocks or page copies on other members) found unreadable or bad; scrub
    /// repairs them.
    pub sources_bad: u64,
    /// Data slots whose rows cannot be known (their slot-summary page is lost on every copy):
    /// not rebuilt.
    pub slots_unknown: u64,
    /// Bytes read from the other members (the walk of the interior pages included;
    /// slot-summary pages the map reads into its cache are not counted).
    pub bytes_read: u64,
    /// Bytes written onto the position.
    pub bytes_written: u64,
    /// Shard-blocks read from the other members (or the old one) to rebuild the data cells:
    /// K per cell rebuilt for Reed-Solomon, one per cell for copies, more only where a
    /// source did not verify.
    pub source_blocks_read: u64,
    /// Places of the position that could not be rebuilt, named.
    pub unrepairable: Vec<Damage>,
}

impl RebuildReport {
    /// Add what `part` (the same rebuild's work on some slots) did.
    fn absorb(&mut self, part: RebuildReport) {
        self.shard_blocks_written += part.shard_blocks_written;
        self.page_copies_written += part.page_copies_written;
        self.sources_bad += part.sources_bad;
        self.slots_unknown += part.slots_unknown;
        self.bytes_read += part.bytes_read;
        self.bytes_written += part.bytes_written;
        self.source_blocks_read += part.source_blocks_read;
        self.unrepairable.extend(part.unrepairable);
    }
}

/// Threads a batch's parts are rebuilt on, each pulling the next part when it is done with
/// one, so that one part's reads are on the devices while another's cells are written
/// (measured: one slot at a time, a few small dependent requests each, rebuilt at 0.03 of the
/// spare's raw write throughput, `bench-rebuild --format 4`; eight threads each with an
/// eighth of one segment, all joined before the next segment, at 0.12-0.3).
const SLOT_THREADS: usize = 8;

/// Bytes of the position one part rebuilds (whole slots, at least one, at most a segment's):
/// read in one batch, rebuilt, and written in one. Its reads are K times this for
/// Reed-Solomon, so the threads hold at most `SLOT_THREADS` × (K + 1) × this at once whatever
/// the chunk size. (`bench-rebuild --format 4 --layout rs:4+2`, 16 KiB chunks, 2026-12-06:
/// parts of 128 KiB 140-154 MiB/s, 256 KiB 143-146, 512 KiB 176-200; four, six, eight and
/// twelve threads within the noise.)
const PART_BYTES: u64 = 512 << 10;

/// Data segments a batch of a rebuild starts with, and the most a batch takes when the caller
/// allows no more (`RebuildOptions::segments_at_once` up to this: fixed batches, no timing).
pub(crate) const FIRST_BATCH: usize = 8;

/// About how long one batch of dense segments should take. Every batch ends with all its
/// threads joined (its progress is then reported), so the devices idle for a moment between
/// batches: longer batches idle less often, shorter ones let a stop (and the step budget of
/// the caller, which is checked between batches) take effect sooner. Measured
/// (`bench-rebuild --layout L --device-size 1G --dir /dev/shm/... --spare-dir /var/tmp/...`,
/// sources in memory, the spare on the disk, 2026-12-06): fixed batches of 8 segments against
/// 32, alternated, rs:4+2 731-758 against 815-856 MiB/s, mirror:2 1,413-1,439 against
/// 1,640-1,673; 64 and 32 within the noise of each other.
pub(crate) const BATCH_TIME: std::time::Duration = std::time::Duration::from_millis(25);

/// The data segments the next batch takes, in `1..=most`: `batch` as it is when `most` is at
/// most [`FIRST_BATCH`] (fixed batches) or when the last batch wrote nothing (segments
/// skipped, or a resync's old rows: no measure of the devices); otherwise as many segments as
/// the last batch's rate (`wrote` bytes in `took`) writes in [`BATCH_TIME`] when each is dense
/// (`segment_bytes`, what a segment can hold on the position), at most twice `batch`. Sized
/// by bytes rather than by the time the last batch took, so that a run of empty segments does
/// not grow the batch that then meets dense ones.
fn next_batch(
    batch: usize,
    (wrote, took): (u64, std::time::Duration),
    segment_bytes: u64,
    most: usize,
) -> usize {
    let most = most.max(1);
    if most <= FIRST_BATCH || wrote == 0 || segment_bytes == 0 {
        return batch.clamp(1, most);
    }
    let per_second = wrote as f64 / took.as_secs_f64().max(1e-6);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let fits = (per_second * BATCH_TIME.as_secs_f64() / segment_bytes as f64) as usize;
    fits.min(batch.saturating_mul(2)).clamp(1, most)
}

impl Volume {
    /// Rebuild everything position `options.position` holds onto the device `devices` has
    /// there (a blank replacement), from the other members, segment by segment from
    /// `options.from_segment`. `progress` hears of every segment done and returns `false` to
    /// stop (the report then says where to resume).
    ///
    /// The caller must have flushed every write before it (the rows it copies are then
    /// durable on their sources), and must pass the replacement in that position to every
    /// write made meanwhile (those rows then reach it directly).
    ///
    /// # Errors
    /// [`Error::ReadOnly`]; [`Error::InvalidConfig`] when the position is not a member or no
    /// device is there; [`Error::Io`] naming the device and offset when a write to the
    /// replacement fails (the rebuild stops there; resume after the segment last reported);
    /// what the map returns when it cannot say which rows or pages exist.
    pub fn rebuild_device(
        &self,
        devices: &[Option<SharedDevice>],
        options: &RebuildOptions,
        progress: &mut dyn FnMut(&RebuildProgress) -> bool,
    ) -> Result<RebuildReport> {
        let sources = self.rebuild_sources(devices, options)?;
        let mut plan = self.plan_rebuild(&sources, options, None)?;
        self.rebuild_planned(devices, options, &mut plan, progress)
    }

    /// One walk of the map for a rebuild pass in chunks: every allocated segment with what it
    /// holds (the data segments' slots, the metadata segments' referenced pages). `openings`
    /// is the pass's token ([`Volume::watch_openings`], taken under the exclusive lock before
    /// this walk): a chunk skips a segment taken again since the walk, whose content reached
    /// the replacement directly (docs/FORMAT.md V4.13, stage 2, review finding 3).
    ///
    /// # Errors
    /// What the map returns when it cannot say which pages exist.
    pub fn rebuild_plan(
        &self,
        devices: &[Option<SharedDevice>],
        options: &RebuildOptions,
        openings: Openings,
    ) -> Result<RebuildPlan> {
        let sources = self.rebuild_sources(devices, options)?;
        self.plan_rebuild(&sources, options, Some(openings))
    }

    fn plan_rebuild(
        &self,
        sources: &[Option<SharedDevice>],
        options: &RebuildOptions,
        openings: Option<Openings>,
    ) -> Result<RebuildPlan> {
        let items = PassItems::plan(self, sources, options.from_segment, self.plan_window)?;
        Ok(RebuildPlan {
            done: items.below(),
            items,
            openings,
            batch: 0,
        })
    }

    /// Where a rebuild reads: `devices` with the old member (if it serves) at the position.
    fn rebuild_sources(
        &self,
        devices: &[Option<SharedDevice>],
        options: &RebuildOptions,
    ) -> Result<Vec<Option<SharedDevice>>> {
        self.writable("rebuild")?;
        let position = options.position;
        if !matches!(devices.get(position), Some(Some(_))) {
            return Err(Error::InvalidConfig(format!(
                "rebuild of position {position}: no device is there (members: {})",
                self.rows.geometry().devices
            )));
        }
        // Never the replacement, which holds nothing yet.
        let mut sources = devices.to_vec();
        sources[position] = options.old.clone();
        Ok(sources)
    }

    /// Go on with `plan` from where it stopped, segment by segment from
    /// `options.from_segment` (as [`Volume::rebuild_device`]); `progress` returns `false` to
    /// stop (the plan keeps its place, and the report says where to resume).
    ///
    /// # Errors
    /// As [`Volume::rebuild_device`].
    pub fn rebuild_planned(
        &self,
        devices: &[Option<SharedDevice>],
        options: &RebuildOptions,
        plan: &mut RebuildPlan,
        progress: &mut dyn FnMut(&RebuildProgress) -> bool,
    ) -> Result<RebuildReport> {
        let sources = self.rebuild_sources(devices, options)?;
        let position = options.position;
        let replacement = devices[position]
            .as_ref()
            .map(|d| d.name())
            .unwrap_or_default();
        let mut report = RebuildReport {
            segments_total: plan.items.below() + plan.items.total(),
            segments_done: plan.done,
            bytes_read: plan.items.take_walked(),
            ..RebuildReport::default()
        };
        // A plan is kept from step to step, and steps of two kinds share it: never more than
        // this step allows.
        let most = options.segments_at_once.max(1);
        plan.batch = if plan.batch == 0 {
            FIRST_BATCH.min(most)
        } else {
            plan.batch.clamp(1, most)
        };
        let shape = self.map.segments().shape();
        let segment_bytes = shape.segment_slots * self.rows.geometry().chunk_bytes;
        // Each page copy born at or after `min_birth` (all of them for a rebuild).
        let copy_pages = |pages: &[PageRef], report: &mut RebuildReport| -> Result<()> {
            for page in pages
                .iter()
                .filter(|p| p.pointer.birth() >= options.min_birth)
            {
                self.rebuild_page((&sources, devices), position, &replacement, page, report)?;
            }
            Ok(())
        };
        while plan.items.ready(self, &sources, plan.openings.as_ref())? {
            // A batch: the next metadata segment alone, or up to `plan.batch` data segments
            // (skipped ones count) of the window, whose slots are rebuilt together.
            let batch_started = std::time::Instant::now();
            let written_before = report.bytes_written;
            // Interior pages a window walk could not descend from, listed early whatever
            // the segment they lie in (docs/FORMAT.md V4.13, "Plans in windows").
            copy_pages(plan.items.early(), &mut report)?;
            plan.items.early_done();
            let pending = plan.items.pending();
            let data = matches!(pending[0], Work::Data { .. });
            let mut end = 1;
            if data {
                while end < pending.len()
                    && end < plan.batch
                    && matches!(pending[end], Work::Data { .. })
                {
                    end += 1;
                }
            }
            let openings = plan.openings.as_ref();
            let skipped = |item: &Work| {
                item.segment() < options.from_segment
                    || openings.is_some_and(|openings| openings.taken(item.segment()))
            };
            let part_slots = (PART_BYTES / self.rows.geometry().chunk_bytes).max(1);
            let mut parts = Vec::new();
            for item in pending[..end].iter().filter(|item| !skipped(item)) {
                match item {
                    Work::Data { slots, .. } => {
                        parts.extend(
                            (slots.start..slots.end)
                                .step_by(usize::try_from(part_slots).unwrap_or(1))
                                .map(|from| from..(from + part_slots).min(slots.end)),
                        );
                    }
                    Work::Metadata { pages, .. } => copy_pages(pages, &mut report)?,
                }
            }
            // The parts are pulled by a few threads, so that one part's reads are on the
            // devices while another's rebuilt cells are written; a failed write stops the
            // pulling (the rebuild stops there).
            let failed = AtomicBool::new(false);
            let done = crate::parallel::pulled(&parts, SLOT_THREADS, |part| {
                if failed.load(Ordering::Relaxed) {
                    return Ok(RebuildReport::default());
                }
                let mut report = RebuildReport::default();
                let outcome = self.rebuild_slots(
                    (&sources, devices),
                    (position, options.min_birth),
                    &replacement,
                    part.clone(),
                    &mut report,
                );
                if outcome.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                outcome.map(|()| report)
            });
            for part in done {
                report.absorb(part?);
            }
            if data {
                plan.batch = next_batch(
                    plan.batch,
                    (
                        report.bytes_written - written_before,
                        batch_started.elapsed(),
                    ),
                    segment_bytes,
                    most,
                );
            }
            let mut stop = false;
            for i in 0..end {
                plan.done += 1;
                report.segments_done = plan.done;
                stop |= !progress(&RebuildProgress {
                    segments_done: report.segments_done,
                    segments_total: report.segments_total,
                    next_segment: plan.items.after(i),
                });
            }
            let resume = plan.items.after(end - 1);
            plan.items.advance(end);
            report.bytes_read += plan.items.take_walked();
            if stop && !plan.done() {
                report.resume_from = Some(resume);
                return Ok(report);
            }
        }
        Ok(report)
    }

    /// Rebuild the cells of `slots` on `position`, read in one batch and written in one.
    /// `(sources, devices)`: where the slots are read from, and where their cells are written
    /// (the replacement at `position`).
    fn rebuild_slots(
        &self,
        (sources, devices): (&[Option<SharedDevice>], &[Option<SharedDevice>]),
        (position, min_birth): (usize, u64),
        replacement: &str,
        slots: std::ops::Range<u64>,
        report: &mut RebuildReport,
    ) -> Result<()> {
        let width = self.rows.geometry().width();
        // A slot never uses a member twice: at most one shard of it is on the position.
        let target_of =
            |slot: u64| (0..width).find(|s| self.rows.shard_block(slot, *s, 0).0 .0 == position);
        let mut wanted = Vec::new();
        let mut targets = BTreeMap::new();
        for slot in slots {
            let Some(target) = target_of(slot) else {
                continue;
            };
            // Without healing: a rebuild writes only what it reports (scrub heals the
            // summary).
            let rows = match self.map.slot_rows(sources, slot, false) {
                Ok(rows) => rows,
                // Its summary page is lost on every copy (the page is named where it lies).
                Err(Error::MetadataLost { .. }) => {
                    report.slots_unknown += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // A resync copies only what was born since the member left (V4.16 §4).
            let rows: Vec<_> = rows.into_iter().filter(|r| r.birth >= min_birth).collect();
            if rows.is_empty() {
                continue;
            }
            if rows.iter().all(|r| self.rows.unwritten(target, r.n)) {
                continue;
            }
            targets.insert(slot, target);
            wanted.push((slot, rows));
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let verify = !self.planted_rebuild_skips_verify();
        let old = sources[position].is_some();
        // First read only what one rebuild of a row needs (the old member's own cell, or K
        // sources: one sibling copy for copies); a row whose cell this does not give is read
        // again, every cell it has.
        let first: BTreeMap<u64, Vec<usize>> = targets
            .iter()
            .map(|(&slot, &target)| (slot, self.first_sources(sources, slot, target, old)))
            .collect();
        let (mut read, bytes_read) = self.read_slots(
            sources,
            wanted,
            &|slot, s| first.get(&slot).is_some_and(|first| first.contains(&s)),
            verify,
        );
        report.bytes_read += bytes_read;
        report.source_blocks_read += bytes_read / BLOCK_BYTES as u64;
        // `wanted` was built in slot order, as `targets` iterates.
        let mut built: Vec<Vec<Option<Vec<u8>>>> = targets
            .iter()
            .zip(read.iter_mut())
            .map(|((&slot, &target), rows)| {
                rows.iter_mut()
                    .map(|row| self.target_cell(slot, row, target, verify))
                    .collect()
            })
            .collect();
        let again: Vec<(u64, Vec<WrittenRow>)> = targets
            .iter()
            .zip(read.iter().zip(&built))
            .filter_map(|((&slot, &target), (rows, built))| {
                let short: Vec<WrittenRow> = rows
                    .iter()
                    .zip(built)
                    .filter(|(row, built)| {
                        built.is_none()
                            && row.cells[target] != Cell::Unwritten
                            && row.cells.contains(&Cell::NotRead)
                    })
                    .map(|(row, _)| WrittenRow {
                        row: row.row,
                        birth: row.birth,
                        n: row.n,
                        crcs: row.crcs.clone(),
                        blocks: row.blocks.clone(),
                    })
                    .collect();
                (!short.is_empty()).then_some((slot, short))
            })
            .collect();
        if !again.is_empty() {
            let slots_again: Vec<u64> = again.iter().map(|(slot, _)| *slot).collect();
            let (reread, bytes_read) = self.read_slots(
                sources,
                again,
                &|slot, s| old || targets.get(&slot) != Some(&s),
                verify,
            );
            report.bytes_read += bytes_read;
            report.source_blocks_read += bytes_read / BLOCK_BYTES as u64;
            // Each row read again replaces its first read (it has every cell the first had).
            let mut reread = slots_again.into_iter().zip(reread).peekable();
            for (((&slot, &target), rows), built) in
                targets.iter().zip(read.iter_mut()).zip(built.iter_mut())
            {
                let Some((_, fresh)) = reread.next_if(|(at, _)| *at == slot) else {
                    continue;
                };
                for mut fresh_row in fresh {
                    if let Some(r) = rows.iter().position(|r| r.row == fresh_row.row) {
                        // A source found bad by the first read and not by the second (a
                        // transient error) is still counted: the final count is of the
                        // cells either read found bad.
                        report.sources_bad += rows[r]
                            .cells
                            .iter()
                            .zip(&fresh_row.cells)
                            .filter(|(first, again)| first.is_damage() && !again.is_damage())
                            .count() as u64;
                        built[r] = self.target_cell(slot, &mut fresh_row, target, verify);
                        rows[r] = fresh_row;
                    }
                }
            }
        }
        let mut pieces = Vec::new();
        let mut blocks = Vec::new();
        for (((&slot, &target), rows), built) in targets.iter().zip(&read).zip(built) {
            for (row, built) in rows.iter().zip(built) {
                report.sources_bad += row.cells.iter().filter(|c| c.is_damage()).count() as u64;
                if row.cells[target] == Cell::Unwritten {
                    continue;
                }
                let (device, offset) = self.rows.shard_block(slot, target, row.row);
                match built {
                    Some(bytes) => {
                        pieces.push(Piece {
                            device: device.0,
                            offset,
                            index: pieces.len(),
                        });
                        blocks.extend_from_slice(&bytes);
                    }
                    None => {
                        let lost: Vec<String> = row
                            .cells
                            .iter()
                            .enumerate()
                            .filter(|(s, c)| {
                                *s != target && !matches!(c, Cell::Good | Cell::Unwritten)
                            })
                            .map(|(s, c)| {
                                let (d, at) = self.rows.shard_block(slot, s, row.row);
                                format!("{} at byte {at}: {}", self.member_name(d.0), c.why())
                            })
                            .collect();
                        report.unrepairable.push(Damage::ShardBlock {
                            slot,
                            row: row.row,
                            shard: target,
                            device: device.0,
                            offset,
                            why: format!(
                                "too few verified sources to rebuild it (n = {}; lost: {})",
                                row.n,
                                lost.join(", ")
                            ),
                        });
                    }
                }
            }
        }
        if pieces.is_empty() {
            return Ok(());
        }
        if let Some(failure) = write_runs(devices, &pieces, &blocks).into_iter().next() {
            return Err(Error::Io {
                device: replacement.to_string(),
                offset: Some(failure.offset),
                source: failure.error.into_io(),
            });
        }
        report.shard_blocks_written += pieces.len() as u64;
        report.bytes_written += blocks.len() as u64;
        Ok(())
    }

    /// The bytes of shard `target` of a read row: the old member's own cell when it was read
    /// and verifies, else rebuilt from the row's sources; `None` for a never-written cell or
    /// when too few sources verify.
    fn target_cell(
        &self,
        slot: u64,
        row: &mut RowRead,
        target: usize,
        verify: bool,
    ) -> Option<Vec<u8>> {
        match row.cells[target] {
            Cell::Unwritten => None,
            Cell::Good => Some(row.bytes[target].clone()),
            _ => self.rebuild_cell(slot, row, target, verify),
        }
    }

    /// The shards of `slot` a rebuild of its shard `target` reads first: the old member's own
    /// cell when it serves; otherwise the first sibling copy of the target's chunk on a
    /// present member (copies), or the first K shards other than the target on present
    /// members (Reed-Solomon: a row needs K, never-written cells counting as zeros).
    fn first_sources(
        &self,
        sources: &[Option<SharedDevice>],
        slot: u64,
        target: usize,
        old: bool,
    ) -> Vec<usize> {
        if old {
            return vec![target];
        }
        let present = |s: &usize| {
            *s != target
                && sources
                    .get(self.rows.shard_block(slot, *s, 0).0 .0)
                    .is_some_and(Option::is_some)
        };
        if self.codec.parity_chunks() == 0 {
            self.rows
                .chunk_of(target)
                .map(|chunk| self.rows.shards_of(chunk).filter(present).take(1).collect())
                .unwrap_or_default()
        } else {
            (0..self.rows.geometry().width())
                .filter(present)
                .take(self.rows.k())
                .collect()
        }
    }

    /// `(sources, devices)` as for `rebuild_slots`.
    fn rebuild_page(
        &self,
        (sources, devices): (&[Option<SharedDevice>], &[Option<SharedDevice>]),
        position: usize,
        replacement: &str,
        page: &PageRef,
        report: &mut RebuildReport,
    ) -> Result<()> {
        let Some(mpn) = page.mpn() else {
            return Ok(());
        };
        let Some((device, offset)) = self
            .rows
            .geometry()
            .page_copies(mpn)
            .and_then(|copies| copies.into_iter().find(|(d, _)| d.0 == position))
        else {
            return Ok(());
        };
        let store = self.map.page_store();
        // The old member's own copy first when it serves (a sibling otherwise).
        let read = match sources[position] {
            Some(_) => {
                store.read_copies(sources, page, &|d: DeviceIndex| d.0 == position, false)?
            }
            None => store.read_copies(sources, page, &|d: DeviceIndex| d.0 != position, false)?,
        };
        let read = match (&read.page, &sources[position]) {
            (None, Some(_)) => {
                store.read_copies(sources, page, &|d: DeviceIndex| d.0 != position, false)?
            }
            _ => read,
        };
        report.bytes_read += read.bytes_read;
        report.sources_bad += read
            .faults
            .iter()
            .filter(|f| f.problem != CopyProblem::Missing)
            .count() as u64;
        let Some(bytes) = read.page else {
            report.unrepairable.push(Damage::PageCopy {
                tree: page.tree.id(),
                level: page.level,
                first_key: page.first_key,
                mpn,
                device: device.0,
                offset,
                why: format!(
                    "no sibling copy verifies: {}",
                    read.faults
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            });
            return Ok(());
        };
        match store.write_copy(devices, device, offset, &bytes) {
            Ok(()) => {
                report.page_copies_written += 1;
                report.bytes_written += bytes.len() as u64;
                Ok(())
            }
            Err(problem) => Err(Error::Io {
                device: replacement.to_string(),
                offset: Some(offset),
                source: std::io::Error::other(format!("page copy {mpn}: {problem:?}")),
            }),
        }
    }

    fn planted_rebuild_skips_verify(&self) -> bool {
        #[cfg(feature = "testing")]
        return self.rebuild_skip_verify;
        #[cfg(not(feature = "testing"))]
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_batch_fits_the_rate_the_last_one_wrote_at_and_stays_within_its_bounds() {
        let segment = 512 << 10;
        let ms = Duration::from_millis;
        // 1 GB/s: 25 ms hold about 48 dense segments of 512 KiB; growth at most doubles.
        let gbs = (1_000_000_000 / 40, ms(25));
        assert_eq!(next_batch(8, gbs, segment, 64), 16);
        assert_eq!(next_batch(32, gbs, segment, 64), 47);
        assert_eq!(next_batch(47, gbs, segment, 32), 32);
        // A slow device: 100 MB/s fits 4 segments; a slow batch shrinks at once.
        let slow = (100_000_000 / 40, ms(25));
        assert_eq!(next_batch(64, slow, segment, 64), 4);
        assert_eq!(next_batch(64, (1, ms(1000)), segment, 64), 1);
        // Nothing written (skipped or old segments): no measure, the batch stays.
        assert_eq!(next_batch(16, (0, ms(1)), segment, 64), 16);
        // Up to FIRST_BATCH the caller's batch is fixed, whatever the timing.
        assert_eq!(next_batch(2, gbs, segment, 2), 2);
        assert_eq!(next_batch(2, slow, segment, 2), 2);
        assert_eq!(next_batch(8, (1, ms(1000)), segment, 8), 8);
        assert_eq!(next_batch(16, gbs, segment, 0), 1);
    }
}
