//! Reads of a version-4 volume: each block's one shard-block, verified against its pointer;
//! another copy or the rest of the row when that fails; the heal of what was found bad.
//!
//! A run of shard-blocks that are consecutive blocks of the caller's buffer is read straight
//! into it (when the member can take that memory as it is: `O_DIRECT` wants it 4 KiB aligned),
//! verified there and never copied; other runs go through a run buffer of this thread's. A
//! block that fails in place is recovered over itself; a read that fails leaves no byte in the
//! caller's buffer that did not verify (`tests/read_fills.rs`).

use super::place::{runs, BlockPlace, Piece};
use super::{MemberProblem, ProblemKind, Volume, BLOCK, BLOCK_BYTES};
use crate::device::{
    run_batch, run_batch_while, AlignedBuf, BatchOp, DeviceError, ReadWithin, SharedDevice,
};
use crate::error::{Error, Result};
use crate::format::v4::BlockPointer;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Bytes of each copy a mirror read takes from one copy before the next copy's turn.
const COPY_SPREAD_BYTES: u64 = 256 << 10;

/// Hedged reads (docs/FORMAT.md V4.16 §7): a shard read on a member that keeps read
/// deadlines ([`crate::device::Device::reads_within`]) gives up after [`hedge_deadline`] when
/// the row's other shards can answer, and the block is rebuilt from them. The deadline is
/// `HEDGE_FACTOR` × the member's p99 read latency (its histogram's bucket bound, once it saw
/// 100 reads), at least [`HEDGE_MIN`] and at most [`HEDGE_MAX`]; [`HEDGE_UNKNOWN`] before
/// anything is known. Four times the p99: a healthy member's reads are hedged about never
/// (a reconstruction reads K shards instead of one, so a hedge must be rare unless the member
/// really is slow); 20 ms at least: below it a scheduler hiccup on a loaded host would be
/// taken for a slow member; a second at most: past it waiting costs more than any rebuild.
const HEDGE_FACTOR: u32 = 4;
/// The least hedge deadline.
pub const HEDGE_MIN: Duration = Duration::from_millis(20);
/// The hedge deadline of a member whose latency is not known yet.
pub const HEDGE_UNKNOWN: Duration = Duration::from_millis(50);
/// The most hedge deadline.
pub const HEDGE_MAX: Duration = Duration::from_secs(1);

/// The hedge deadline of a member whose p99 read latency is `p99` (`None`: not known).
#[must_use]
pub fn hedge_deadline(p99: Option<Duration>) -> Duration {
    p99.map_or(HEDGE_UNKNOWN, |p99| {
        p99.saturating_mul(HEDGE_FACTOR).clamp(HEDGE_MIN, HEDGE_MAX)
    })
}

/// A block to read: where it goes in the caller's buffer, its pointer and its place.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    index: usize,
    key: u64,
    pointer: BlockPointer,
    place: BlockPlace,
}

/// A read of [`Volume::read_many`] waiting for its round: its blocks' pointers (looked up
/// once) and the rows they are in.
struct Pending {
    read: usize,
    /// On block boundaries: it joins its round's batch.
    whole: bool,
    pointers: Vec<(u64, BlockPointer)>,
    rows: Vec<(u64, u16)>,
}

/// A block whose first read failed: which of the wanted, and the shard tried with why
/// (`None`: no copy of it was present to try).
type Failed = (usize, Option<(usize, Problem)>);

/// A recovered block and the verified content of each bad place to heal.
#[derive(Debug)]
struct Found {
    bytes: Vec<u8>,
    heal: Vec<(usize, Vec<u8>)>,
}

/// Why a shard-block could not serve a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    /// Its member is not present.
    Absent,
    /// The read failed (an I/O error).
    Unreadable,
    /// Its hedged read was late (docs/FORMAT.md V4.16 §7): not a fault of the member, nothing
    /// to heal; read again without a deadline if the rest of the row cannot answer.
    Late,
    /// It was read and failed its crc.
    Checksum {
        /// The crc the pointer or the row records.
        expected: u32,
        /// The crc of what was read.
        found: u32,
    },
}

/// What was found while rebuilding one block.
#[derive(Debug, Default)]
struct Tally {
    /// Each shard-block that was absent, unreadable or bad: `member M at byte B: why`.
    lost: Vec<String>,
    /// Shards to heal: unreadable or bad on a present member (a rewrite also remaps a bad
    /// sector).
    bad: Vec<usize>,
    /// Sources that verified, and how many the block needs (1 copy; K shards of a row).
    good: usize,
    needed: usize,
    /// The row's crcs are not recorded (or name another birth): nothing to rebuild from.
    row_unknown: bool,
}

impl Tally {
    fn note(&mut self, volume: &Volume, want: &Wanted, shard: usize, problem: Problem) {
        if !matches!(problem, Problem::Absent | Problem::Late) {
            volume
                .counters
                .bad_shard_blocks
                .fetch_add(1, Ordering::Relaxed);
            self.bad.push(shard);
        }
        let (device, offset) = volume
            .rows
            .shard_block(want.place.slot, shard, want.place.row);
        if let Problem::Checksum { expected, found } = problem {
            volume.report(&MemberProblem {
                member: device.0,
                offset,
                slot: want.place.slot,
                shard,
                kind: ProblemKind::Checksum { expected, found },
            });
        }
        let why = match problem {
            Problem::Absent => "absent",
            Problem::Late => "late (no answer within the hedge deadline)",
            Problem::Unreadable => "I/O error",
            Problem::Checksum { .. } => "checksum mismatch",
        };
        self.lost.push(format!(
            "{} at byte {offset}: {why}",
            volume.member_name(device.0)
        ));
    }
}

/// One shard-block of a row: where it lives and what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardBlockPlace {
    /// The shard of the row.
    pub shard: usize,
    /// The member (layout position) it is on.
    pub member: usize,
    /// Its byte offset on the member.
    pub offset: u64,
    /// The data chunk it carries (`None` for parity).
    pub data_chunk: Option<usize>,
}

impl Volume {
    /// Where the row holding logical block `key` lives: each shard-block of that row, in
    /// shard order; `None` when the block was never written, is trimmed, or is out of
    /// range. For diagnostics, tools and fault-injection tests; reads the map only.
    ///
    /// # Errors
    /// As [`crate::meta::MapStore::get`]: the block's map page cannot be read.
    pub fn block_row_places(
        &self,
        devices: &[Option<SharedDevice>],
        key: u64,
    ) -> Result<Option<Vec<ShardBlockPlace>>> {
        if key >= self.blocks {
            return Ok(None);
        }
        let Some(pbn) = self.map.visible(devices, key)?.address() else {
            return Ok(None);
        };
        let place = self.rows.place(pbn);
        let width = self.rows.geometry().width();
        Ok(Some(
            (0..width)
                .map(|s| {
                    let (device, offset) = self.rows.shard_block(place.slot, s, place.row);
                    ShardBlockPlace {
                        shard: s,
                        member: device.0,
                        offset,
                        data_chunk: self.rows.chunk_of(s),
                    }
                })
                .collect(),
        ))
    }

    /// Read `buf.len()` bytes at byte `offset` of the volume.
    ///
    /// # Errors
    /// [`Error::OutOfRange`] (before any I/O); [`Error::UnrecoverableBlock`] for a block no
    /// copy or reconstruction can return (never other bytes); [`Error::MetadataLost`] or
    /// [`Error::CorruptMetadata`] when the map cannot say where a block is.
    pub fn read(
        &self,
        devices: &[Option<SharedDevice>],
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        // While a receive is unfinished the volume reads as it was before it (FORMAT.md
        // V4.10d): its base's tree, or zeros for a full stream.
        self.read_of(devices, offset, buf, &|key| self.map.visible(devices, key))
    }

    /// [`Volume::read`] with the pointers `lookup` gives.
    pub(super) fn read_of(
        &self,
        devices: &[Option<SharedDevice>],
        offset: u64,
        buf: &mut [u8],
        lookup: &dyn Fn(u64) -> Result<BlockPointer>,
    ) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let first = offset / BLOCK;
        let end = (offset + buf.len() as u64).div_ceil(BLOCK);
        let head = usize::try_from(offset - first * BLOCK).unwrap_or(0);
        if head == 0 && buf.len().is_multiple_of(BLOCK_BYTES) {
            return self.read_blocks_of(devices, first, buf, lookup);
        }
        let mut blocks = vec![0u8; usize::try_from((end - first) * BLOCK).unwrap_or(0)];
        self.read_blocks_of(devices, first, &mut blocks, lookup)?;
        buf.copy_from_slice(&blocks[head..head + buf.len()]);
        Ok(())
    }

    /// Read whole blocks `first..` into `out`: one request per run of consecutive
    /// shard-blocks of a device, each block verified, the failed ones recovered.
    pub(super) fn read_blocks(
        &self,
        devices: &[Option<SharedDevice>],
        first: u64,
        out: &mut [u8],
    ) -> Result<()> {
        self.read_blocks_of(devices, first, out, &|key| self.map.get(devices, key))
    }

    /// [`Volume::read_blocks`] with the pointers `lookup` gives (the live map's, or a
    /// recovery point's).
    pub(super) fn read_blocks_of(
        &self,
        devices: &[Option<SharedDevice>],
        first: u64,
        out: &mut [u8],
        lookup: &dyn Fn(u64) -> Result<BlockPointer>,
    ) -> Result<()> {
        let count = out.len() / BLOCK_BYTES;
        let mut pointers = Vec::with_capacity(count);
        for index in 0..count {
            let key = first + index as u64;
            pointers.push((key, lookup(key)?));
        }
        self.read_pointers(devices, &pointers, out)
    }

    /// Several reads at once (the requests an NBD connection has received together), each
    /// outcome its own, in order, and every outcome, byte and tally as if the reads had come
    /// one by one. The reads are served in rounds: a round takes, in order, every read that
    /// shares no row with an earlier read not served yet, so two reads of one row are served
    /// in their order and a heal made for one read cannot change what another of its round
    /// finds. The whole-block reads of a round go to the devices in one batch, as one read's
    /// blocks do (never merged into one request across reads: an I/O error costs only the
    /// read it hit), and each read's failed blocks are recovered on their own; a read off
    /// block boundaries is served alone in its round. A read out of range fails before any
    /// I/O, a map lookup that fails fails only its read. All of it under the caller's lock:
    /// callers bound the number and size of the reads (the NBD server: 16 of 64 KiB at most).
    pub fn read_many(
        &self,
        devices: &[Option<SharedDevice>],
        reads: &mut [(u64, &mut [u8])],
    ) -> Vec<Result<()>> {
        let mut outcomes: Vec<Result<()>> = Vec::with_capacity(reads.len());
        let mut pending: Vec<Pending> = Vec::new();
        for (i, (offset, buf)) in reads.iter().enumerate() {
            let checked = self.check_range(*offset, buf.len() as u64);
            if checked.is_err() || buf.is_empty() {
                outcomes.push(checked);
                continue;
            }
            outcomes.push(Ok(()));
            let first = offset / BLOCK;
            let end = (offset + buf.len() as u64).div_ceil(BLOCK);
            let mut pointers = Vec::new();
            let looked = (first..end).try_for_each(|key| {
                pointers.push((key, self.map.visible(devices, key)?));
                Ok(())
            });
            if let Err(error) = looked {
                outcomes[i] = Err(error);
                continue;
            }
            let rows = pointers
                .iter()
                .filter(|(_, pointer)| !pointer.reads_zeros())
                .filter_map(|(_, pointer)| pointer.address())
                .map(|pbn| {
                    let place = self.rows.place(pbn);
                    (place.slot, place.row)
                })
                .collect();
            pending.push(Pending {
                read: i,
                whole: offset % BLOCK == 0 && buf.len().is_multiple_of(BLOCK_BYTES),
                pointers,
                rows,
            });
        }
        while !pending.is_empty() {
            // Rows of this round's reads and of the earlier reads left for a later round.
            let mut taken = std::collections::HashSet::new();
            let mut round = Vec::new();
            let mut later = Vec::new();
            for read in pending {
                let free = read.rows.iter().all(|row| !taken.contains(row));
                taken.extend(read.rows.iter().copied());
                if free {
                    round.push(read);
                } else {
                    later.push(read);
                }
            }
            pending = later;
            self.read_round(devices, reads, &mut outcomes, &round);
        }
        outcomes
    }

    /// One round of [`Volume::read_many`]: reads that share no row.
    fn read_round(
        &self,
        devices: &[Option<SharedDevice>],
        reads: &mut [(u64, &mut [u8])],
        outcomes: &mut [Result<()>],
        round: &[Pending],
    ) {
        let mut pointers = Vec::new();
        let mut groups = Vec::new();
        let mut whole = Vec::new();
        for read in round.iter().filter(|read| read.whole) {
            let start = pointers.len();
            pointers.extend_from_slice(&read.pointers);
            groups.push(start..pointers.len());
            whole.push(read.read);
        }
        if whole.len() > 1 {
            self.counters
                .reads_together
                .fetch_add(whole.len() as u64, Ordering::Relaxed);
        }
        if !pointers.is_empty() {
            // A buffer this thread kept, not zeroed and 4 KiB aligned (its runs are read into
            // it in place): every block of a read that succeeds is written by the read (data
            // verified or recovered, zeros for a hole), and a read that fails copies nothing.
            // Before, each round allocated and zeroed a fresh buffer (a megabyte for sixteen
            // 64 KiB reads).
            let mut slab = RunBuffers::new([pointers.len() * BLOCK_BYTES]);
            let out = slab.targets().swap_remove(0);
            let results = self.read_pointers_grouped(devices, &pointers, out, &groups);
            for ((i, range), result) in whole.iter().zip(&groups).zip(results) {
                match result {
                    Ok(()) => reads[*i]
                        .1
                        .copy_from_slice(&out[range.start * BLOCK_BYTES..range.end * BLOCK_BYTES]),
                    Err(error) => outcomes[*i] = Err(error),
                }
            }
        }
        for read in round.iter().filter(|read| !read.whole) {
            let (offset, buf) = &mut reads[read.read];
            let first = *offset / BLOCK;
            let lookup = |key: u64| {
                let at = usize::try_from(key - first).unwrap_or(usize::MAX);
                read.pointers
                    .get(at)
                    .map(|(_, pointer)| *pointer)
                    .ok_or_else(|| Error::corrupt_metadata("a block outside its read"))
            };
            outcomes[read.read] = self.read_of(devices, *offset, buf, &lookup);
        }
    }

    /// Read the block each `(key, pointer)` names into the next 4 KiB of `out` (zeros for a
    /// pointer that reads zeros), verified against the pointer, failed ones recovered.
    pub(super) fn read_pointers(
        &self,
        devices: &[Option<SharedDevice>],
        pointers: &[(u64, BlockPointer)],
        out: &mut [u8],
    ) -> Result<()> {
        let whole = 0..pointers.len();
        self.read_pointers_grouped(devices, pointers, out, std::slice::from_ref(&whole))
            .into_iter()
            .find(Result::is_err)
            .unwrap_or(Ok(()))
    }

    /// [`Volume::read_pointers`] for several reads whose blocks are the `groups` (ranges of
    /// `pointers`, in order, not overlapping): one batch of first reads for all, then each
    /// group's failed blocks recovered on their own, each group's outcome its own.
    fn read_pointers_grouped(
        &self,
        devices: &[Option<SharedDevice>],
        pointers: &[(u64, BlockPointer)],
        out: &mut [u8],
        groups: &[std::ops::Range<usize>],
    ) -> Vec<Result<()>> {
        let mut wanted = Vec::with_capacity(pointers.len());
        for (index, (block, (key, pointer))) in
            out.chunks_mut(BLOCK_BYTES).zip(pointers).enumerate()
        {
            match pointer.address() {
                Some(pbn) if !pointer.reads_zeros() => wanted.push(Wanted {
                    index,
                    key: *key,
                    pointer: *pointer,
                    place: self.rows.place(pbn),
                }),
                _ => block.fill(0),
            }
        }
        let mut pieces = Vec::with_capacity(wanted.len());
        let mut missing = Vec::new();
        for (w, want) in wanted.iter().enumerate() {
            match self.first_copy(devices, want) {
                Some(shard) => {
                    let (device, offset) =
                        self.rows
                            .shard_block(want.place.slot, shard, want.place.row);
                    pieces.push(Piece {
                        device: device.0,
                        offset,
                        index: w,
                    });
                }
                None => missing.push(w),
            }
        }
        let mut failed: Vec<Failed> = missing.into_iter().map(|w| (w, None)).collect();
        // The shard each wanted block verified from, for a recovery of its row to reuse.
        let mut verified: Vec<Option<usize>> = vec![None; wanted.len()];
        // The group of block `index` of `out` (the groups are in order).
        let group_of = |index: usize| groups.partition_point(|range| range.end <= index);
        // Requests are merged within a read only: a failed request fails every block in it,
        // and one read's bad sector must not cost another read anything.
        let runs = if groups.len() == 1 {
            runs(pieces)
        } else {
            let mut by_group: Vec<Vec<Piece>> = vec![Vec::new(); groups.len()];
            for piece in pieces {
                by_group[group_of(wanted[piece.index].index)].push(piece);
            }
            by_group.into_iter().flat_map(runs).collect()
        };
        // A run whose blocks are consecutive blocks of `out` is read straight into its place
        // there (`in_place`: where it starts), no copy afterwards; any other into a run buffer.
        let in_place: Vec<Option<usize>> = runs
            .iter()
            .map(|run| in_place(devices, run, |piece| wanted[piece.index].index, out))
            .collect();
        let mut buffers =
            RunBuffers::new(runs.iter().zip(&in_place).map(|(run, place)| match place {
                Some(_) => 0,
                None => run.len() * BLOCK_BYTES,
            }));
        // Pieces are only planned on present members, so every run has its request.
        let results = {
            let mut targets = targets_in(out, &runs, &in_place, buffers.targets());
            read_runs_into(devices, &runs, &mut targets, |run| {
                self.first_read_hedge(devices, &wanted, run)
            })
        };
        self.report_read_errors(&runs, &results, |piece| {
            let want = &wanted[piece.index];
            (want.place.slot, self.shard_at(want, piece.device))
        });
        // Blocks read in place that failed: their bytes in `out` are not data until recovered.
        let mut unverified_in_place = Vec::new();
        for (((run, buffer), result), place) in
            runs.iter().zip(&buffers).zip(&results).zip(&in_place)
        {
            if matches!(result.outcome, Some(Ok(ReadWithin::Late))) {
                tracing::debug!(
                    member = run[0].device,
                    offset = run[0].offset,
                    blocks = run.len(),
                    "hedged read late: rebuilding from the rest of the row"
                );
            }
            for (i, piece) in run.iter().enumerate() {
                let want = &wanted[piece.index];
                let shard = self.shard_at(want, piece.device);
                let at = want.index * BLOCK_BYTES..(want.index + 1) * BLOCK_BYTES;
                let bytes = match place {
                    Some(_) => &out[at.clone()],
                    None => &buffer[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES],
                };
                let problem = if result.block_late(i) {
                    Problem::Late
                } else if !result.block_read(i) {
                    Problem::Unreadable
                } else if self.verifies(want, shard, bytes) {
                    if place.is_none() {
                        out[at].copy_from_slice(&buffer[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES]);
                    }
                    verified[piece.index] = Some(shard);
                    continue;
                } else {
                    self.mismatch(want, shard, bytes)
                };
                if place.is_some() {
                    unverified_in_place.push(want.index);
                }
                failed.push((piece.index, Some((shard, problem))));
            }
        }
        drop(buffers);
        self.counters
            .blocks_read
            .fetch_add(wanted.len() as u64, Ordering::Relaxed);
        let mut outcomes: Vec<Result<()>> = groups.iter().map(|_| Ok(())).collect();
        if self.rows.shards_of(0).len() == 1 {
            let mut by_group: Vec<Vec<Failed>> = vec![Vec::new(); groups.len()];
            for (w, tried) in failed {
                by_group[group_of(wanted[w].index)].push((w, tried));
            }
            for (outcome, failed) in outcomes.iter_mut().zip(by_group) {
                if !failed.is_empty() {
                    *outcome = self.recover_rows(devices, &wanted, &verified, failed, out);
                }
            }
        } else {
            for (w, tried) in failed {
                let want = &wanted[w];
                let outcome = &mut outcomes[group_of(want.index)];
                // A read stops at its first block nothing can return, as when it came alone.
                if outcome.is_ok() {
                    let block = &mut out[want.index * BLOCK_BYTES..(want.index + 1) * BLOCK_BYTES];
                    *outcome = self.recover(devices, want, tried, block);
                }
            }
        }
        // A read that fails returns no bytes that did not verify: what a bad block read in
        // place left in `out` is cleared (a read that succeeds recovered every such block).
        for index in unverified_in_place {
            if outcomes[group_of(index)].is_err() {
                out[index * BLOCK_BYTES..(index + 1) * BLOCK_BYTES].fill(0);
            }
        }
        outcomes
    }

    /// Reed-Solomon: return the blocks whose first read failed (`failed`: which of `wanted`,
    /// and the shard tried with why) row by row. Every other shard-block of their rows is read
    /// in one batch (one request per run of a device: a degraded sequential read reads each
    /// row once, in large requests, not 4 KiB at a time per block), verified against the
    /// row's crcs; each row is reconstructed once, each block checked against its pointer;
    /// every shard-block found bad or unreadable on a present member is healed with its
    /// rebuilt content. The first block nothing can return is the error, naming what was
    /// found in its row.
    ///
    /// A shard-block the first read already returned and verified (`verified[w]`: the shard
    /// wanted block `w` verified from, of the row's birth) is not read again: its bytes are
    /// taken from `out` and checked against the row's crcs like the others. A degraded
    /// sequential read of rs:4+2 then reads the two parity blocks of a row, not five.
    fn recover_rows(
        &self,
        devices: &[Option<SharedDevice>],
        wanted: &[Wanted],
        verified: &[Option<usize>],
        failed: Vec<Failed>,
        out: &mut [u8],
    ) -> Result<()> {
        let width = self.rows.geometry().width();
        let mut by_row: BTreeMap<(u64, u16), Vec<Failed>> = BTreeMap::new();
        for (w, tried) in failed {
            let place = wanted[w].place;
            by_row
                .entry((place.slot, place.row))
                .or_default()
                .push((w, tried));
        }
        let mut rows = Vec::with_capacity(by_row.len());
        // Blocks whose row has no crcs recorded for their birth: nothing to rebuild them
        // from (each is named once the others are done).
        let mut unknown: Vec<Failed> = Vec::new();
        for ((slot, row), blocks) in by_row {
            let recorded = self.map.row_crcs(devices, slot, row)?;
            let (fit, stale): (Vec<Failed>, Vec<Failed>) =
                blocks.into_iter().partition(|(w, _)| {
                    recorded
                        .as_ref()
                        .is_some_and(|(birth, _, _)| wanted[*w].pointer.birth() == *birth)
                });
            unknown.extend(stale);
            if !fit.is_empty() {
                rows.push((fit, recorded));
            }
        }
        // Shard-blocks of these rows the first read verified: (slot, row) -> (shard, which).
        let mut known: BTreeMap<(u64, u16), Vec<(usize, usize)>> = BTreeMap::new();
        for (w, shard) in verified.iter().enumerate() {
            if let Some(shard) = shard {
                let place = wanted[w].place;
                known
                    .entry((place.slot, place.row))
                    .or_default()
                    .push((*shard, w));
            }
        }
        // The shard-blocks to read: of rows whose crcs are recorded for their blocks' birth,
        // every written one on a present member but those already tried and those the first
        // read returned (copied here: `reused` holds them, `reuse` says whose they are).
        let mut pieces = Vec::new();
        let mut reuse: Vec<usize> = Vec::new();
        let mut reused: Vec<u8> = Vec::new();
        // Per row, how many shards can answer beyond the K it needs (never-written ones,
        // reused ones and those read here): a hedged read of one of them may be late.
        let mut spare = vec![0usize; rows.len()];
        for (r, (blocks, recorded)) in rows.iter().enumerate() {
            let Some((birth, n, _)) = recorded else {
                continue;
            };
            let place = wanted[blocks[0].0].place;
            let row_known = known.get(&(place.slot, place.row));
            for s in 0..width {
                let tried = blocks.iter().any(|(_, t)| t.is_some_and(|(x, _)| x == s));
                if tried {
                    continue;
                }
                if self.rows.unwritten(s, *n) {
                    spare[r] += 1;
                    continue;
                }
                let had = row_known.and_then(|k| {
                    k.iter()
                        .find(|(shard, w)| *shard == s && wanted[*w].pointer.birth() == *birth)
                });
                if let Some((_, w)) = had {
                    let at = wanted[*w].index * BLOCK_BYTES;
                    reused.extend_from_slice(&out[at..at + BLOCK_BYTES]);
                    reuse.push(r * width + s);
                    spare[r] += 1;
                    continue;
                }
                let piece = self.present_piece(devices, place.slot, s, place.row, r * width + s);
                spare[r] += usize::from(piece.is_some());
                pieces.extend(piece);
            }
            spare[r] = spare[r].saturating_sub(self.rows.k());
        }
        let runs = runs(pieces);
        // A run is hedged when every row it serves can answer without it; a late one is
        // waited for below if its row ends up short all the same.
        let (buffers, results) = read_runs_hedged(devices, &runs, |run| {
            let within = self.hedge_within(devices, run.first()?.device)?;
            run.iter()
                .all(|piece| spare[piece.index / width] > 0)
                .then_some(within)
        });
        // What each piece read: its bytes, or `None` when its request failed.
        let mut read: BTreeMap<usize, Option<&[u8]>> = reuse
            .iter()
            .zip(reused.chunks_exact(BLOCK_BYTES))
            .map(|(at, bytes)| (*at, Some(bytes)))
            .collect();
        self.report_read_errors(&runs, &results, |piece| {
            let (blocks, _) = &rows[piece.index / width];
            (wanted[blocks[0].0].place.slot, piece.index % width)
        });
        // Pieces whose hedged read was late: not read, not failed.
        let mut late: std::collections::BTreeSet<usize> = std::collections::BTreeSet::new();
        for ((run, buffer), result) in runs.iter().zip(&buffers).zip(&results) {
            for (i, piece) in run.iter().enumerate() {
                if result.block_late(i) {
                    late.insert(piece.index);
                    continue;
                }
                let bytes = &buffer[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES];
                read.insert(piece.index, result.block_read(i).then_some(bytes));
            }
        }
        for (r, (blocks, recorded)) in rows.iter().enumerate() {
            let first = &wanted[blocks[0].0];
            let place = first.place;
            let mut tally = Tally {
                needed: self.rows.k(),
                ..Tally::default()
            };
            for (w, tried) in blocks {
                if let Some((shard, problem)) = tried {
                    tally.note(self, &wanted[*w], *shard, *problem);
                }
            }
            // Every row kept has crcs recorded for its blocks' birth (sorted out above).
            let Some((birth, n, crcs)) = recorded else {
                tally.row_unknown = true;
                return Err(unrecoverable(self, first, &tally));
            };
            let mut shards = vec![vec![0u8; BLOCK_BYTES]; width];
            let mut present = vec![false; width];
            // Shards whose hedged read was late: the first read's, then this one's.
            let mut waiting: Vec<usize> = blocks
                .iter()
                .filter_map(|(_, t)| match t {
                    Some((x, Problem::Late)) => Some(*x),
                    _ => None,
                })
                .collect();
            waiting.dedup();
            for s in 0..width {
                if self.rows.unwritten(s, *n) {
                    present[s] = true;
                    continue;
                }
                if blocks.iter().any(|(_, t)| t.is_some_and(|(x, _)| x == s)) {
                    continue;
                }
                if late.contains(&(r * width + s)) {
                    waiting.push(s);
                    continue;
                }
                match read.get(&(r * width + s)) {
                    None => tally.note(self, first, s, Problem::Absent),
                    Some(None) => tally.note(self, first, s, Problem::Unreadable),
                    Some(Some(bytes)) => {
                        let found = self.rows.crc(place.slot, s, place.row, *birth, bytes);
                        if found == crcs[s] {
                            shards[s].copy_from_slice(bytes);
                            present[s] = true;
                        } else {
                            let expected = crcs[s];
                            tally.note(self, first, s, Problem::Checksum { expected, found });
                        }
                    }
                }
            }
            // Too few answered in time: wait for the late ones (no deadline now), as many as
            // the row needs. Each is checked against the row's crcs like the others.
            let mut good = present.iter().filter(|p| **p).count();
            for s in waiting {
                if good >= tally.needed {
                    break;
                }
                match self.read_shard(devices, place, s) {
                    Ok(bytes) => {
                        let found = self.rows.crc(place.slot, s, place.row, *birth, &bytes);
                        if found == crcs[s] {
                            shards[s] = bytes;
                            present[s] = true;
                            good += 1;
                        } else {
                            let expected = crcs[s];
                            tally.note(self, first, s, Problem::Checksum { expected, found });
                        }
                    }
                    Err(problem) => tally.note(self, first, s, problem),
                }
            }
            tally.good = present.iter().filter(|p| **p).count();
            if tally.good < tally.needed || !self.codec.reconstruct(&mut shards, &mut present) {
                return Err(unrecoverable(self, first, &tally));
            }
            for (w, _) in blocks {
                let want = &wanted[*w];
                let bytes = &shards[want.place.chunk];
                if !self.verifies(want, want.place.chunk, bytes) {
                    return Err(unrecoverable(self, want, &tally));
                }
                out[want.index * BLOCK_BYTES..(want.index + 1) * BLOCK_BYTES]
                    .copy_from_slice(bytes);
                self.counters.rebuilt_blocks.fetch_add(1, Ordering::Relaxed);
            }
            for s in &tally.bad {
                if self
                    .rows
                    .crc(place.slot, *s, place.row, *birth, &shards[*s])
                    == crcs[*s]
                {
                    self.heal(devices, place, *s, &shards[*s]);
                }
            }
        }
        if let Some((w, tried)) = unknown.first() {
            let want = &wanted[*w];
            let mut tally = Tally {
                needed: self.rows.k(),
                row_unknown: true,
                ..Tally::default()
            };
            if let Some((shard, problem)) = tried {
                tally.note(self, want, *shard, *problem);
            }
            return Err(unrecoverable(self, want, &tally));
        }
        Ok(())
    }

    /// Tell the owner of every failed request of `runs` (`place_of`: a piece's slot and shard):
    /// of a request read again block by block, each block that failed again, at its own
    /// offset; else the request's error, at its first block (also when none failed again but a
    /// hedged retry gave up on some: the error may be theirs). A request whose blocks all read
    /// when asked again found nothing to count (as a scrub's cell-by-cell reads): it is
    /// logged, naming the member and the request.
    fn report_read_errors(
        &self,
        runs: &[Vec<Piece>],
        results: &HedgedResults,
        place_of: impl Fn(&Piece) -> (u64, usize),
    ) {
        for (run, result) in runs.iter().zip(results) {
            let (Some(Err(error)), Some(first)) = (&result.outcome, run.first()) else {
                continue;
            };
            let mut failed: Vec<(&Piece, &DeviceError)> = match &result.blocks {
                Some(blocks) => run
                    .iter()
                    .zip(blocks)
                    .filter_map(|(piece, outcome)| outcome.as_ref().err().map(|e| (piece, e)))
                    .collect(),
                None => vec![(first, error)],
            };
            // Blocks a hedged retry gave up on may hold the error: it is the request's then.
            if failed.is_empty() && (0..run.len()).any(|i| result.block_late(i)) {
                failed.push((first, error));
            }
            if failed.is_empty() {
                tracing::warn!(
                    member = first.device,
                    offset = first.offset,
                    blocks = run.len(),
                    %error,
                    "a read request failed, then each of its blocks read on its own"
                );
            }
            for (piece, error) in failed {
                let (slot, shard) = place_of(piece);
                self.report(&MemberProblem {
                    member: piece.device,
                    offset: piece.offset,
                    slot,
                    shard,
                    kind: ProblemKind::Read(error),
                });
            }
        }
    }

    /// The copy of a block to read first: among the shards that carry its chunk, the first
    /// present one from a copy chosen by the slot's 256 KiB-wide group of slots (spreading
    /// mirror reads over the copies while a sequential read stays one request of at least
    /// 256 KiB per copy; chosen by row, as until 2026-12-04, every request was 4 KiB and a
    /// sequential mirror read ran at a quarter of the disk).
    fn first_copy(&self, devices: &[Option<SharedDevice>], want: &Wanted) -> Option<usize> {
        let shards = self.rows.shards_of(want.place.chunk);
        let copies = shards.len();
        let spread = (COPY_SPREAD_BYTES / self.rows.geometry().chunk_bytes).max(1);
        let start = usize::try_from(want.place.slot / spread % copies as u64).unwrap_or(0);
        (0..copies)
            .map(|c| shards.start + (start + c) % copies)
            .find(|s| {
                let (device, _) = self.rows.shard_block(want.place.slot, *s, want.place.row);
                devices.get(device.0).is_some_and(Option::is_some)
            })
    }

    /// The hedge deadline of a shard read on member `device` (`None`: no deadline: the member
    /// does not keep them, or hedging is switched off).
    fn hedge_within(&self, devices: &[Option<SharedDevice>], device: usize) -> Option<Duration> {
        #[cfg(feature = "testing")]
        if self.hedge_disabled {
            return None;
        }
        let device = devices.get(device)?.as_ref()?;
        device
            .reads_within()
            .then(|| hedge_deadline(device.read_p99()))
    }

    /// The hedge deadline of a first read's run (see [`hedge_deadline`]): when its member keeps
    /// deadlines and every block of it can be answered without that member (another copy,
    /// or K other shards of its row, on present members); `None` otherwise (wait as long as
    /// the member takes).
    fn first_read_hedge(
        &self,
        devices: &[Option<SharedDevice>],
        wanted: &[Wanted],
        run: &[Piece],
    ) -> Option<Duration> {
        let device = run.first()?.device;
        let within = self.hedge_within(devices, device)?;
        let width = self.rows.geometry().width();
        let present = |want: &Wanted, s: usize| {
            let (d, _) = self.rows.shard_block(want.place.slot, s, want.place.row);
            d.0 != device && devices.get(d.0).is_some_and(Option::is_some)
        };
        run.iter()
            .all(|piece| {
                let want = &wanted[piece.index];
                if self.rows.shards_of(0).len() == 1 {
                    (0..width).filter(|s| present(want, *s)).count() >= self.rows.k()
                } else {
                    self.rows
                        .shards_of(want.place.chunk)
                        .any(|s| present(want, s))
                }
            })
            .then_some(within)
    }

    /// The shard of a block's chunk that lives on `device`.
    fn shard_at(&self, want: &Wanted, device: usize) -> usize {
        let shards = self.rows.shards_of(want.place.chunk);
        shards
            .clone()
            .find(|s| {
                self.rows
                    .shard_block(want.place.slot, *s, want.place.row)
                    .0
                     .0
                    == device
            })
            .unwrap_or(shards.start)
    }

    /// Whether `bytes` read from `shard` are the block the pointer names.
    fn verifies(&self, want: &Wanted, shard: usize, bytes: &[u8]) -> bool {
        #[cfg(feature = "testing")]
        if self.skip_block_verification {
            return true;
        }
        let place = want.place;
        self.rows
            .crc(place.slot, shard, place.row, want.pointer.birth(), bytes)
            == want.pointer.crc()
    }

    /// The problem of `bytes` read from `shard` that did not verify against the pointer.
    fn mismatch(&self, want: &Wanted, shard: usize, bytes: &[u8]) -> Problem {
        let place = want.place;
        Problem::Checksum {
            expected: want.pointer.crc(),
            found: self
                .rows
                .crc(place.slot, shard, place.row, want.pointer.birth(), bytes),
        }
    }

    /// Return a block whose first copy failed (`tried`, with why) or could not be read, from
    /// another copy or the rest of its row; heal what was bad.
    fn recover(
        &self,
        devices: &[Option<SharedDevice>],
        want: &Wanted,
        tried: Option<(usize, Problem)>,
        block: &mut [u8],
    ) -> Result<()> {
        let mut tally = Tally::default();
        if let Some((shard, problem)) = tried {
            tally.note(self, want, shard, problem);
        }
        let late = matches!(tried, Some((_, Problem::Late)));
        let tried = tried.map(|(shard, _)| shard);
        // Mirror and raid10 only: Reed-Solomon blocks go through `recover_rows`.
        let mut found = self.recover_from_copies(devices, want, tried, &mut tally);
        if found.is_none() && late {
            // No other copy answered: wait for the late one (no deadline now).
            if let Some(shard) = tried {
                found = match self.read_shard(devices, want.place, shard) {
                    Ok(bytes) if self.verifies(want, shard, &bytes) => Some(Found {
                        bytes,
                        heal: Vec::new(),
                    }),
                    Ok(bytes) => {
                        tally.note(self, want, shard, self.mismatch(want, shard, &bytes));
                        None
                    }
                    Err(problem) => {
                        tally.note(self, want, shard, problem);
                        None
                    }
                };
            }
        }
        let Some(found) = found else {
            return Err(unrecoverable(self, want, &tally));
        };
        block.copy_from_slice(&found.bytes);
        self.counters.rebuilt_blocks.fetch_add(1, Ordering::Relaxed);
        for (shard, bytes) in found.heal {
            self.heal(devices, want.place, shard, &bytes);
        }
        Ok(())
    }

    /// Read shard-block `shard` of the block's row.
    fn read_shard(
        &self,
        devices: &[Option<SharedDevice>],
        place: BlockPlace,
        shard: usize,
    ) -> std::result::Result<Vec<u8>, Problem> {
        let (device, offset) = self.rows.shard_block(place.slot, shard, place.row);
        let Some(Some(device)) = devices.get(device.0) else {
            return Err(Problem::Absent);
        };
        let mut bytes = vec![0u8; BLOCK_BYTES];
        if let Err(error) = device.read_at(offset, &mut bytes) {
            self.report(&MemberProblem {
                member: device_index(&self.rows, place, shard),
                offset,
                slot: place.slot,
                shard,
                kind: ProblemKind::Read(&error),
            });
            return Err(Problem::Unreadable);
        }
        Ok(bytes)
    }

    /// Mirror and raid10: the first other copy that verifies; every copy found bad or
    /// unreadable on a present member is healed with it.
    fn recover_from_copies(
        &self,
        devices: &[Option<SharedDevice>],
        want: &Wanted,
        tried: Option<usize>,
        tally: &mut Tally,
    ) -> Option<Found> {
        let shards = self.rows.shards_of(want.place.chunk);
        tally.needed = 1;
        let mut good = None;
        for shard in shards.clone() {
            if Some(shard) == tried {
                continue;
            }
            match self.read_shard(devices, want.place, shard) {
                Ok(bytes) if self.verifies(want, shard, &bytes) => {
                    good = Some(bytes);
                    break;
                }
                Ok(bytes) => tally.note(self, want, shard, self.mismatch(want, shard, &bytes)),
                Err(problem) => tally.note(self, want, shard, problem),
            }
        }
        tally.good = shards.len() - tally.lost.len();
        let bytes = good?;
        let heal = tally.bad.iter().map(|s| (*s, bytes.clone())).collect();
        Some(Found { bytes, heal })
    }

    /// Rewrite a bad shard-block with its verified content (not on a read-only volume).
    fn heal(
        &self,
        devices: &[Option<SharedDevice>],
        place: BlockPlace,
        shard: usize,
        bytes: &[u8],
    ) {
        if self.read_only {
            return;
        }
        let (device, offset) = self.rows.shard_block(place.slot, shard, place.row);
        let Some(Some(device)) = devices.get(device.0) else {
            return;
        };
        match device.write_at(offset, bytes) {
            Ok(()) => {
                self.counters
                    .healed_shard_blocks
                    .fetch_add(1, Ordering::Relaxed);
                self.report(&MemberProblem {
                    member: device_index(&self.rows, place, shard),
                    offset,
                    slot: place.slot,
                    shard,
                    kind: ProblemKind::Healed,
                });
            }
            Err(e) => {
                tracing::warn!(device = %device.name(), offset, error = %e, "heal write failed");
                self.counters.heal_failures.fetch_add(1, Ordering::Relaxed);
                self.report(&MemberProblem {
                    member: device_index(&self.rows, place, shard),
                    offset,
                    slot: place.slot,
                    shard,
                    kind: ProblemKind::Write(&e),
                });
            }
        }
    }
}

/// Read every run (one request each, all submitted together) into its own aligned buffer (so
/// that O_DIRECT members read into it without a bounce copy); per run, how its request went
/// (`None`: its member is absent, nothing was asked).
pub(super) fn read_runs(
    devices: &[Option<SharedDevice>],
    runs: &[Vec<Piece>],
) -> (RunBuffers, RunResults) {
    let (buffers, results, ()) = read_runs_while(devices, runs, || ());
    (buffers, results)
}

/// [`read_runs`], with a deadline on the runs `hedge` gives one: those are read on their own
/// with [`crate::device::Device::read_at_within`] while the others are on the devices
/// together. Per run, how its request went (`Late`: its buffer holds nothing meaningful).
///
/// A request of several blocks that failed on a range (an I/O error, not a member gone or
/// away) is asked again block by block, all such blocks in one batch: one bad sector then
/// costs its own block, never the others its request carried (they are not rebuilt, healed,
/// counted bad or lost, and an error names the block that is).
pub(super) fn read_runs_hedged(
    devices: &[Option<SharedDevice>],
    runs: &[Vec<Piece>],
    hedge: impl Fn(&[Piece]) -> Option<Duration>,
) -> (RunBuffers, HedgedResults) {
    let mut buffers = RunBuffers::new(runs.iter().map(|run| run.len() * BLOCK_BYTES));
    let results = {
        let mut targets = buffers.targets();
        read_runs_into(devices, runs, &mut targets, hedge)
    };
    (buffers, results)
}

/// [`read_runs_hedged`] into the caller's `targets`, one per run and exactly its size (a run
/// buffer, or the run's place in a read's own buffer).
fn read_runs_into(
    devices: &[Option<SharedDevice>],
    runs: &[Vec<Piece>],
    targets: &mut [&mut [u8]],
    hedge: impl Fn(&[Piece]) -> Option<Duration>,
) -> HedgedResults {
    let mut results: HedgedResults = Vec::with_capacity(runs.len());
    results.resize_with(runs.len(), RunRead::default);
    let mut ops = Vec::with_capacity(runs.len());
    let mut issued = Vec::with_capacity(runs.len());
    let mut hedged = Vec::new();
    for (r, (run, buffer)) in runs.iter().zip(targets.iter_mut()).enumerate() {
        if let Some(Some(device)) = run.first().and_then(|p| devices.get(p.device)) {
            match hedge(run) {
                Some(within) => {
                    results[r].within = Some(within);
                    hedged.push((r, device, run[0].offset, buffer, within));
                }
                None => {
                    ops.push(BatchOp::read(device.as_ref(), run[0].offset, buffer));
                    issued.push(r);
                }
            }
        }
    }
    let late = run_batch_while(&mut ops, || {
        hedged
            .into_iter()
            .map(|(r, device, offset, buffer, within)| {
                (r, device.read_at_within(offset, buffer, within))
            })
            .collect::<Vec<_>>()
    });
    for (r, outcome) in late {
        results[r].outcome = Some(outcome);
    }
    for (op, r) in ops.into_iter().zip(issued) {
        results[r].outcome = Some(op.result.map(|()| ReadWithin::Done));
    }
    read_blocks_again(devices, runs, targets, &mut results);
    results
}

/// Where run `run` can be read straight into `out`: the block of `out` it starts at, when its
/// pieces are consecutive blocks of `out` (`block_of` says which block of `out` a piece is)
/// and its member can read into that memory as it is: a member that
/// [`wants_aligned_memory`](crate::device::Device::wants_aligned_memory) (an `O_DIRECT` one)
/// only when the address is 4 KiB aligned, else io_uring would bounce the read through a new
/// buffer (an allocation and the copy this saves).
fn in_place(
    devices: &[Option<SharedDevice>],
    run: &[Piece],
    block_of: impl Fn(&Piece) -> usize,
    out: &[u8],
) -> Option<usize> {
    let first = block_of(run.first()?);
    let consecutive = run
        .iter()
        .enumerate()
        .all(|(i, p)| block_of(p) == first + i);
    let end = (first + run.len()) * BLOCK_BYTES;
    if !consecutive || end > out.len() {
        return None;
    }
    let device = devices.get(run[0].device)?.as_ref()?;
    let direct = device.wants_aligned_memory();
    let aligned = out[first * BLOCK_BYTES..]
        .as_ptr()
        .align_offset(crate::device::DIRECT_ALIGN)
        == 0;
    (aligned || !direct).then_some(first)
}

/// Each run's target for [`read_runs_into`]: its place in `out` where `in_place` gives one
/// (the places are disjoint: every block of `out` is one piece's at most), else its buffer.
fn targets_in<'a>(
    out: &'a mut [u8],
    runs: &[Vec<Piece>],
    in_place: &[Option<usize>],
    buffers: Vec<&'a mut [u8]>,
) -> Vec<&'a mut [u8]> {
    let mut places: Vec<(usize, usize)> = in_place
        .iter()
        .enumerate()
        .filter_map(|(r, place)| place.map(|first| (first, r)))
        .collect();
    places.sort_unstable();
    let mut from_out: Vec<Option<&'a mut [u8]>> = Vec::new();
    from_out.resize_with(runs.len(), || None);
    let mut rest = out;
    let mut at = 0;
    for (first, r) in places {
        debug_assert!(first * BLOCK_BYTES >= at, "runs read in place overlap");
        let len = runs[r].len() * BLOCK_BYTES;
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(first * BLOCK_BYTES - at);
        let (mine, tail) = tail.split_at_mut(len);
        from_out[r] = Some(mine);
        rest = tail;
        at = first * BLOCK_BYTES + len;
    }
    from_out
        .into_iter()
        .zip(buffers)
        .map(|(place, buffer)| place.unwrap_or(buffer))
        .collect()
}

/// The runs of `results` whose request failed on a range, with more than one block: each of
/// their blocks read again on its own, into its place in the run's buffer, all in one batch;
/// a hedged run's blocks one after another with its deadline, the rest of them late from the
/// first that is (a slow member's retries cost one deadline more at most, never one each).
fn read_blocks_again(
    devices: &[Option<SharedDevice>],
    runs: &[Vec<Piece>],
    buffers: &mut [&mut [u8]],
    results: &mut [RunRead],
) {
    let mut ops = Vec::new();
    let mut whose = Vec::new();
    for (r, (run, buffer)) in runs.iter().zip(buffers.iter_mut()).enumerate() {
        let result = &mut results[r];
        if run.len() < 2 || !matches!(result.outcome, Some(Err(DeviceError::Io(_)))) {
            continue;
        }
        let Some(Some(device)) = run.first().and_then(|p| devices.get(p.device)) else {
            continue;
        };
        let blocks = run.iter().zip(buffer.chunks_mut(BLOCK_BYTES));
        match result.within {
            Some(within) => {
                let mut each = Vec::with_capacity(run.len());
                for (piece, block) in blocks {
                    let late = matches!(each.last(), Some(Ok(ReadWithin::Late)));
                    each.push(if late {
                        Ok(ReadWithin::Late)
                    } else {
                        device.read_at_within(piece.offset, block, within)
                    });
                }
                result.blocks = Some(each);
            }
            None => {
                for (piece, block) in blocks {
                    ops.push(BatchOp::read(device.as_ref(), piece.offset, block));
                    whose.push(r);
                }
            }
        }
    }
    if ops.is_empty() {
        return;
    }
    run_batch(&mut ops);
    for (op, r) in ops.into_iter().zip(whose) {
        results[r]
            .blocks
            .get_or_insert_with(Vec::new)
            .push(op.result.map(|()| ReadWithin::Done));
    }
}

/// Each run's outcome in [`read_runs_hedged`].
pub(super) type HedgedResults = Vec<RunRead>;

/// How the request of one run of [`read_runs_hedged`] went.
#[derive(Debug, Default)]
pub(super) struct RunRead {
    /// The request's outcome (`None`: no request was made, its member is not present).
    pub outcome: Option<std::result::Result<ReadWithin, DeviceError>>,
    /// When the request failed on a range and the run has several blocks: each block's own
    /// read, in order.
    pub blocks: Option<Vec<std::result::Result<ReadWithin, DeviceError>>>,
    /// The run's deadline, when it was hedged.
    pub within: Option<Duration>,
}

impl RunRead {
    /// How block `i` of the run was read: its own read when the run's request failed and was
    /// asked again block by block, else the request's.
    fn block(&self, i: usize) -> Option<&std::result::Result<ReadWithin, DeviceError>> {
        match (&self.outcome, &self.blocks) {
            (Some(Err(_)), Some(blocks)) => blocks.get(i),
            (outcome, _) => outcome.as_ref(),
        }
    }

    /// Whether block `i` of the run was read whole: only then may its bytes in the run's
    /// buffer be checked and used.
    pub fn block_read(&self, i: usize) -> bool {
        matches!(self.block(i), Some(Ok(ReadWithin::Done)))
    }

    /// Whether block `i`'s hedged read was late (its bytes are not there; not a fault).
    pub fn block_late(&self, i: usize) -> bool {
        matches!(self.block(i), Some(Ok(ReadWithin::Late)))
    }
}

/// Each run's outcome (`None`: no request was made, its member is not present).
pub(super) type RunResults = Vec<Option<std::result::Result<(), DeviceError>>>;

/// [`read_runs`], running `meanwhile` while the requests are on the devices (see
/// [`crate::device::run_batch_while`]); its outcome too.
pub(super) fn read_runs_while<R>(
    devices: &[Option<SharedDevice>],
    runs: &[Vec<Piece>],
    meanwhile: impl FnOnce() -> R,
) -> (RunBuffers, RunResults, R) {
    let mut buffers = RunBuffers::new(runs.iter().map(|run| run.len() * BLOCK_BYTES));
    let mut results = Vec::with_capacity(runs.len());
    let mut ops = Vec::with_capacity(runs.len());
    let mut issued = Vec::with_capacity(runs.len());
    let mut targets = buffers.targets();
    for (r, (run, buffer)) in runs.iter().zip(targets.iter_mut()).enumerate() {
        if let Some(Some(device)) = run.first().and_then(|p| devices.get(p.device)) {
            ops.push(BatchOp::read(device.as_ref(), run[0].offset, buffer));
            issued.push(r);
        }
    }
    let outcome = run_batch_while(&mut ops, meanwhile);
    results.resize_with(runs.len(), || None);
    for (op, r) in ops.into_iter().zip(issued) {
        results[r] = Some(op.result);
    }
    (buffers, results, outcome)
}

/// Most slabs of finished run reads one thread keeps for its next reads, and most bytes of
/// capacity: 4 MiB, two huge pages or one slab of up to 4 MiB (a scrub's read of a group
/// while it checks the one before: a 3 MiB group of rs:4+2 at 64 KiB chunks fits once). A
/// server runs a thread per connection, so this bounds what readers hold idle.
const RUN_SLABS_KEPT: usize = 2;
const RUN_SLAB_BYTES_KEPT: usize = 2 * crate::device::HUGE_PAGE;

thread_local! {
    /// Slabs of finished run reads, for this thread's next ones: a reader's steady state
    /// allocates none (tests/hot_path_alloc.rs).
    static RUN_SLABS: RefCell<Vec<AlignedBuf>> = const { RefCell::new(Vec::new()) };
}

/// A slab of `len` bytes for the runs of one read: one this thread kept if one is large
/// enough, holding whatever an earlier read left in it (not zeroed: a block's bytes are used
/// only when a read of them succeeded, the run's request or the block's own when the request
/// failed and was asked again block by block, and only once they verified against its pointer
/// or row, so no earlier byte can be taken for data), else a new zeroed one: in huge pages
/// from 256 KiB ([`AlignedBuf::for_io`]), so that on a disk that spends a ring descriptor per
/// physically contiguous piece of a request (virtio-blk without indirect descriptors) a run
/// is one piece per 2 MiB rather than one per 4 KiB page.
fn run_slab(len: usize) -> AlignedBuf {
    let kept =
        RUN_SLABS.try_with(|kept| AlignedBuf::take_fitting(&mut *kept.try_borrow_mut().ok()?, len));
    match kept {
        Ok(Some(slab)) => slab,
        _ => AlignedBuf::for_io(len),
    }
}

/// The buffers of one read of runs: one slab holding every run's bytes one after another
/// (each run's range in it, a multiple of the block size, so every run starts aligned for
/// `O_DIRECT`; a run read in place elsewhere has an empty range), given back to the thread
/// that drops it (up to [`RUN_SLABS_KEPT`] and [`RUN_SLAB_BYTES_KEPT`]).
pub(super) struct RunBuffers {
    slab: AlignedBuf,
    ranges: Vec<std::ops::Range<usize>>,
}

impl RunBuffers {
    /// Room for runs of these byte lengths.
    fn new(lens: impl IntoIterator<Item = usize>) -> Self {
        let mut at = 0;
        let ranges: Vec<std::ops::Range<usize>> = lens
            .into_iter()
            .map(|len| {
                let range = at..at + len;
                at += len;
                range
            })
            .collect();
        Self {
            slab: if at == 0 {
                AlignedBuf::empty()
            } else {
                run_slab(at)
            },
            ranges,
        }
    }

    /// Each run's bytes, writable, one slice per run.
    fn targets(&mut self) -> Vec<&mut [u8]> {
        let mut rest: &mut [u8] = &mut self.slab;
        let mut at = 0;
        let mut out = Vec::with_capacity(self.ranges.len());
        for range in &self.ranges {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(range.start - at);
            let (mine, tail) = tail.split_at_mut(range.len());
            out.push(mine);
            rest = tail;
            at = range.end;
        }
        out
    }

    /// Each run's bytes in run order.
    pub(super) fn iter(&self) -> RunBytes<'_> {
        RunBytes {
            slab: &self.slab,
            ranges: self.ranges.iter(),
        }
    }
}

/// Each run's bytes of a [`RunBuffers`], in run order.
pub(super) struct RunBytes<'a> {
    slab: &'a [u8],
    ranges: std::slice::Iter<'a, std::ops::Range<usize>>,
}

impl<'a> Iterator for RunBytes<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        self.ranges.next().map(|range| &self.slab[range.clone()])
    }
}

impl<'a> IntoIterator for &'a RunBuffers {
    type Item = &'a [u8];
    type IntoIter = RunBytes<'a>;
    fn into_iter(self) -> RunBytes<'a> {
        self.iter()
    }
}

impl Drop for RunBuffers {
    fn drop(&mut self) {
        let slab = std::mem::replace(&mut self.slab, AlignedBuf::empty());
        if slab.capacity() == 0 {
            return;
        }
        let _ = RUN_SLABS.try_with(|kept| {
            let Ok(mut kept) = kept.try_borrow_mut() else {
                return;
            };
            // Keep the largest: a full store gives up smaller slabs for a larger one (two
            // small slabs kept first must not make every later large read map anew).
            if slab.capacity() > RUN_SLAB_BYTES_KEPT {
                return;
            }
            kept.push(slab);
            kept.sort_unstable_by_key(|b| std::cmp::Reverse(b.capacity()));
            let mut bytes = 0;
            let fits = kept
                .iter()
                .take(RUN_SLABS_KEPT)
                .take_while(|b| {
                    bytes += b.capacity();
                    bytes <= RUN_SLAB_BYTES_KEPT
                })
                .count();
            kept.truncate(fits);
        });
    }
}

/// The member holding shard-block `shard` of `place`'s row.
fn device_index(rows: &super::place::Rows, place: BlockPlace, shard: usize) -> usize {
    rows.shard_block(place.slot, shard, place.row).0 .0
}

/// The error for a block nothing could return.
fn unrecoverable(volume: &Volume, want: &Wanted, tally: &Tally) -> Error {
    volume
        .counters
        .unrecoverable_blocks
        .fetch_add(1, Ordering::Relaxed);
    let mut lost_devices = tally.lost.clone();
    if tally.row_unknown {
        lost_devices.push("the row's checksums are not recorded for this block's birth".into());
    }
    Error::UnrecoverableBlock {
        volume_offset: want.key * BLOCK,
        slot: want.place.slot,
        row: want.place.row,
        good: tally.good,
        needed: tally.needed,
        lost_devices,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where run `r`'s bytes start (to tell which slab a read was given).
    fn start_of(buffers: &mut RunBuffers, r: usize) -> usize {
        buffers.targets()[r].as_ptr() as usize
    }

    #[test]
    fn a_thread_keeps_its_large_slab_through_small_reads_and_runs_start_aligned() {
        std::thread::spawn(|| {
            let mut large = RunBuffers::new([BLOCK_BYTES * 64, 0, BLOCK_BYTES * 192]);
            let at = start_of(&mut large, 0);
            assert_eq!(at % crate::device::DIRECT_ALIGN, 0);
            assert_eq!(
                start_of(&mut large, 2),
                at + 64 * BLOCK_BYTES,
                "one after another"
            );
            assert!(
                large.targets()[1].is_empty(),
                "a run read in place has no bytes here"
            );
            let lens: Vec<usize> = large.iter().map(<[u8]>::len).collect();
            assert_eq!(lens, [64 * BLOCK_BYTES, 0, 192 * BLOCK_BYTES]);
            drop(large);
            let kept = || {
                RUN_SLABS.with(|k| {
                    k.borrow()
                        .iter()
                        .map(AlignedBuf::capacity)
                        .collect::<Vec<_>>()
                })
            };
            assert_eq!(kept().len(), 1);
            let large_capacity = kept()[0];
            // Two small reads at once, each given back: the first takes the large slab (the
            // only one), the second a new one; both come back and are kept.
            let small = (
                RunBuffers::new([BLOCK_BYTES]),
                RunBuffers::new([2 * BLOCK_BYTES]),
            );
            drop(small);
            assert_eq!(kept().len(), 2, "{:?}", kept());
            assert!(kept().contains(&large_capacity), "{:?}", kept());
            let mut again = RunBuffers::new([BLOCK_BYTES * 256]);
            assert_eq!(
                start_of(&mut again, 0),
                at,
                "the large slab was kept and reused"
            );
            // A full store of small slabs, then a large one given back: it is kept and a
            // small one gives way.
            let fresh = RunBuffers::new([BLOCK_BYTES * 200]);
            let smalls = (
                RunBuffers::new([BLOCK_BYTES]),
                RunBuffers::new([BLOCK_BYTES]),
            );
            drop(smalls);
            assert_eq!(kept().len(), 2);
            assert!(
                kept().iter().all(|c| *c < BLOCK_BYTES * 200),
                "{:?}",
                kept()
            );
            drop(fresh);
            assert_eq!(kept().len(), 2);
            assert!(
                kept()[0] >= BLOCK_BYTES * 200,
                "a full store of small slabs gives one up for the larger: {:?}",
                kept()
            );
            // Best fit: a small read takes the small slab, not the large one beside it.
            let small = RunBuffers::new([BLOCK_BYTES]);
            assert_eq!(kept().len(), 1);
            assert!(kept()[0] >= BLOCK_BYTES * 200, "{:?}", kept());
            drop(small);
            drop(again);
            // Nothing at all: no slab.
            let mut none = RunBuffers::new([0, 0]);
            assert!(none.targets().iter().all(|t| t.is_empty()));
        })
        .join()
        .unwrap();
    }
}
