//! The data path of format version 4 (docs/FORMAT.md, V4.2, V4.3, V4.6): a volume of logical
//! 4 KiB blocks written copy-on-write into **rows** of fresh data slots, with the block
//! pointers, rows and commits kept by the paged map ([`MapStore`]).
//!
//! * A write packs its blocks into rows of K (the last one narrow when fewer remain), computes
//!   each row's parity over 4 KiB shard-blocks and the crc of every shard-block, writes the
//!   rows with one request per device per run of consecutive rows, then notes the rows in the
//!   map and points each block at its new place. A row is never rewritten, so there is no
//!   read-modify-write of parity and no write hole; a write of less than a block reads the
//!   old block first (verified).
//! * A read takes each block's pointer and reads the one shard-block it names, verified
//!   against the pointer's crc (for mirrors, whichever copy is read). When it fails, the other
//!   copies, or the rest of the row (each shard-block verified against the row's recorded
//!   crcs) rebuild it; the result must match the pointer's crc before it is returned, and the
//!   bad places are healed (not on a read-only volume). Too few good shards is
//!   [`Error::UnrecoverableBlock`], never other bytes.
//! * `flush` flushes the members (the rows are then durable) and commits the map (one log
//!   record, or a tree sync).
//! * `scrub` walks the allocated segments: every written shard-block checked against its
//!   row's crc and every copy of every referenced metadata page against its parent, the bad
//!   ones rewritten from what verifies (not when check-only); `rebuild_device` rebuilds what
//!   one position holds onto a replacement, segment by segment, resumable from a watermark
//!   (`scrub.rs`, `rebuild.rs`; FORMAT.md V4.13 step 8, volume part). Page copies are read
//!   and rewritten only through the map's page store, checked against their parents.
//!
//! Owns: packing blocks into rows, the rows' bytes on the devices, verification,
//! reconstruction and heal of data blocks, and the volume's size. Does not own and must not
//! touch: metadata pages, the log and the rings (the map's), superblocks, membership and the
//! fault policy (the pool decides what a device error means: this module reports it, naming
//! device and offset, and writes nothing more for that request).
//!
//! * Writes make room first: the data cleaner (`clean.rs`, FORMAT.md V4.13 step 7) copies
//!   the live blocks of mostly dead data segments into fresh rows, so overwrites never run
//!   the volume out of segments.
//!
//! Not yet here (docs/FORMAT.md V4.13): the packer that groups concurrent small writes (step
//! 6) and a cleaner that runs beside writers (its compare-and-swap, epoch pins), and the
//! pool's part of step 8 (attach as a commit boundary, the watermark
//! in the superblocks, epoch pins, pacing, swap-in).

mod clean;
mod observe;
mod place;
mod read;
mod rebuild;
mod scrub;

pub use observe::{MemberProblem, Observer, ProblemKind};
pub use place::BLOCK_BYTES;
pub use rebuild::{RebuildOptions, RebuildPlan, RebuildProgress, RebuildReport};
pub use scrub::{Damage, ScrubPlan, VolumeScrubOptions, VolumeScrubReport};

use crate::codec::Codec;
use crate::device::{run_batch, BatchOp, SharedDevice};
use crate::error::{Error, Result};
use crate::geometry::Geometry;
use crate::meta::{CommitReport, MapOptions, MapStore, SyncReport};
use place::{runs, Piece, Rows};
use std::collections::hash_map::{Entry, HashMap};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

const BLOCK: u64 = BLOCK_BYTES as u64;

/// How a volume is kept.
#[derive(Debug, Clone, Default)]
pub struct VolumeOptions {
    /// The map's options (cache, depth, segment size, log record size, read-only).
    pub map: MapOptions,
    /// Planted bug `skip_block_verification`: reads return a shard-block's bytes without
    /// checking them against the pointer's crc.
    #[cfg(feature = "testing")]
    pub skip_block_verification: bool,
    /// Planted bug `commit_before_rows_durable`: a flush commits the map without flushing
    /// the members first, so a record can name rows a power cut then loses.
    #[cfg(feature = "testing")]
    pub commit_before_rows_durable: bool,
    /// Planted bug `cleaner_install_without_cas`: the cleaner copies every block its
    /// victim's rows hold and points the owner at the copy without checking that the owner's
    /// pointer still names that block, so an overwritten block's old bytes come back.
    #[cfg(feature = "testing")]
    pub cleaner_install_without_cas: bool,
    /// Planted bug `rebuild_skip_verify`: a rebuild trusts what it reads and what it
    /// reconstructs, writing a shard-block onto the replacement without checking its sources
    /// or the result against the row's crcs.
    #[cfg(feature = "testing")]
    pub rebuild_skip_verify: bool,
    /// Planted bug `scrub_skip_crc`: a scrub reads every shard-block and takes it as good
    /// without checking its crc (it still finds unreadable ones).
    #[cfg(feature = "testing")]
    pub scrub_skip_crc: bool,
    /// Planted bug `scrub_without_skip`: a scrub pass in chunks checks (and repairs) the
    /// segments its walk found even when they were freed or taken again since, writing what
    /// the walk saw over what they hold now.
    #[cfg(feature = "testing")]
    pub scrub_without_skip: bool,
}

impl VolumeOptions {
    /// These map options, every protection on.
    #[must_use]
    pub fn with_map(map: MapOptions) -> Self {
        #[allow(clippy::needless_update)] // the planted bugs exist with feature `testing` only
        Self {
            map,
            ..Self::default()
        }
    }
}

/// Counters of a volume's data path since it was opened (they only go up).
#[derive(Debug, Default)]
struct Counters {
    blocks_written: AtomicU64,
    rows_written: AtomicU64,
    narrow_rows: AtomicU64,
    blocks_read: AtomicU64,
    bad_shard_blocks: AtomicU64,
    rebuilt_blocks: AtomicU64,
    healed_shard_blocks: AtomicU64,
    heal_failures: AtomicU64,
    unrecoverable_blocks: AtomicU64,
    cleaned_segments: AtomicU64,
    relocated_blocks: AtomicU64,
    cleaner_syncs: AtomicU64,
    /// Per member: row writes it failed.
    member_write_errors: Vec<AtomicU64>,
}

/// A snapshot of a volume's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeCounters {
    /// Logical blocks written into rows.
    pub blocks_written: u64,
    /// Rows written.
    pub rows_written: u64,
    /// Rows with fewer than K data blocks.
    pub narrow_rows: u64,
    /// Logical blocks read from the devices (holes and zeros not counted).
    pub blocks_read: u64,
    /// Shard-blocks that were unreadable or failed their crc when read.
    pub bad_shard_blocks: u64,
    /// Blocks returned from another copy or rebuilt from their row.
    pub rebuilt_blocks: u64,
    /// Bad shard-blocks rewritten with their verified content.
    pub healed_shard_blocks: u64,
    /// Heal writes that failed (the block was still returned correct).
    pub heal_failures: u64,
    /// Blocks that could not be returned.
    pub unrecoverable_blocks: u64,
    /// Data segments the cleaner emptied (each is free two syncs after the next one).
    pub cleaned_segments: u64,
    /// Live blocks the cleaner copied out of its victims.
    pub relocated_blocks: u64,
    /// Syncs a write waited for because every free segment outside the hard reserve was
    /// taken (the cleaner's emptied segments come back only through syncs).
    pub cleaner_syncs: u64,
    /// Per member: row writes it failed (the rows were kept on the others).
    pub member_write_errors: Vec<u64>,
}

/// A volume of format version 4 over its members (`None`: a member that is absent).
#[derive(Debug)]
pub struct Volume {
    rows: Rows,
    codec: Codec,
    map: MapStore,
    blocks: u64,
    read_only: bool,
    counters: Counters,
    cleaner: clean::CleanerState,
    observer: Option<Observer>,
    #[cfg(feature = "testing")]
    skip_block_verification: bool,
    #[cfg(feature = "testing")]
    commit_before_rows_durable: bool,
    #[cfg(feature = "testing")]
    cleaner_install_without_cas: bool,
    #[cfg(feature = "testing")]
    rebuild_skip_verify: bool,
    #[cfg(feature = "testing")]
    scrub_skip_crc: bool,
    #[cfg(feature = "testing")]
    scrub_without_skip: bool,
}

impl Volume {
    /// A new, empty volume: the map's uberblock 0 on every member (rows are written later).
    ///
    /// # Errors
    /// [`Error::DeviceTooSmall`] when no logical block fits beside the reserves; what
    /// [`MapStore::create`] returns.
    pub fn create(
        devices: &[Option<SharedDevice>],
        pool: [u8; 16],
        geometry: &Geometry,
        timeline: u64,
        options: &VolumeOptions,
    ) -> Result<Self> {
        let map = MapStore::create(devices, pool, geometry, timeline, &options.map)?;
        Self::assemble(geometry, map, options)
    }

    /// Open the volume: the map's newest uberblock with its log replayed.
    ///
    /// # Errors
    /// What [`MapStore::open`] returns.
    pub fn open(
        devices: &[Option<SharedDevice>],
        pool: [u8; 16],
        geometry: &Geometry,
        timeline: u64,
        options: &VolumeOptions,
    ) -> Result<Self> {
        let map = MapStore::open(devices, pool, geometry, timeline, &options.map)?;
        Self::assemble(geometry, map, options)
    }

    fn assemble(geometry: &Geometry, map: MapStore, options: &VolumeOptions) -> Result<Self> {
        let blocks = Self::volume_blocks(geometry, &map);
        if blocks == 0 {
            return Err(Error::DeviceTooSmall {
                device: "smallest member".into(),
                size: geometry.device_bytes,
                needed: geometry.device_bytes * 2,
            });
        }
        Ok(Self {
            rows: Rows::new(geometry),
            codec: Codec::new(geometry.layout, geometry.devices)?,
            map,
            blocks,
            read_only: options.map.read_only,
            counters: Counters {
                member_write_errors: (0..geometry.devices).map(|_| AtomicU64::new(0)).collect(),
                ..Counters::default()
            },
            cleaner: clean::CleanerState::default(),
            observer: None,
            #[cfg(feature = "testing")]
            skip_block_verification: options.skip_block_verification,
            #[cfg(feature = "testing")]
            commit_before_rows_durable: options.commit_before_rows_durable,
            #[cfg(feature = "testing")]
            cleaner_install_without_cas: options.cleaner_install_without_cas,
            #[cfg(feature = "testing")]
            rebuild_skip_verify: options.rebuild_skip_verify,
            #[cfg(feature = "testing")]
            scrub_skip_crc: options.scrub_skip_crc,
            #[cfg(feature = "testing")]
            scrub_without_skip: options.scrub_without_skip,
        })
    }

    /// Logical blocks of the volume (docs/FORMAT.md V4.2): the data area less a sixteenth of
    /// cleaning headroom, the metadata allowance (1/32, or 1/16 when pages have four or more
    /// copies) and the hard reserve, in whole stripes, and no more than the map's keys.
    fn volume_blocks(geometry: &Geometry, map: &MapStore) -> u64 {
        let k = geometry.data_chunks() as u64;
        let per_slot = k * (geometry.chunk_bytes / BLOCK).max(1);
        let shape = map.segments().shape();
        let data = shape.segments * shape.blocks_per_segment;
        let allowance = if geometry.metadata_copies() >= 4 {
            data / 16
        } else {
            data / 32
        };
        let reserve = map.segments().reserve() * shape.blocks_per_segment;
        let blocks = data
            .saturating_sub(data / 16)
            .saturating_sub(allowance)
            .saturating_sub(reserve);
        (blocks - blocks % per_slot).min(map.keys())
    }

    /// Tell `observer` of every member problem from now on (docs in `observe.rs`).
    pub fn set_observer(&mut self, observer: Observer) {
        self.observer = Some(observer);
    }

    /// Let `tolerate` decide about members that fail a metadata write or flush (see
    /// [`crate::meta::Tolerate`]).
    pub fn set_tolerate(&mut self, tolerate: crate::meta::Tolerate) {
        self.map.set_tolerate(tolerate);
    }

    /// Note, for one pass planned from one walk of the map ([`Volume::rebuild_plan`],
    /// [`Volume::scrub_plan`]), which segments are taken from now on; dropping the token ends
    /// it. Take it under the exclusive lock, then walk under the shared one.
    pub fn watch_openings(&mut self) -> crate::meta::Openings {
        self.map.watch_openings()
    }

    /// The hook set by [`Volume::set_tolerate`], if any.
    #[must_use]
    pub fn tolerate(&self) -> Option<crate::meta::Tolerate> {
        self.map.tolerate()
    }

    /// The observer, if one was set.
    #[must_use]
    pub fn observer(&self) -> Option<Observer> {
        self.observer.clone()
    }

    /// Report a member problem to the observer, if there is one.
    pub(super) fn report(&self, problem: &MemberProblem<'_>) {
        if let Some(observer) = &self.observer {
            (observer.0)(problem);
        }
    }

    /// Serve exactly `bytes` (a multiple of 4 KiB), the size recorded when the volume was
    /// made, if that fits what this build computes; `false` (nothing changed) if it does not.
    pub fn limit_bytes(&mut self, bytes: u64) -> bool {
        if !bytes.is_multiple_of(BLOCK) || bytes / BLOCK > self.blocks {
            return false;
        }
        self.blocks = bytes / BLOCK;
        true
    }

    /// Bytes of data blocks the map references now (each written block once; trimmed and
    /// never-written blocks hold none).
    #[must_use]
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated_bytes_from(0)
    }

    /// As [`Volume::allocated_bytes`], of the data segments from `segment` on.
    #[must_use]
    pub fn allocated_bytes_from(&self, segment: u64) -> u64 {
        let segments = self.map.segments();
        segments
            .data_segments()
            .into_iter()
            .filter(|(s, _)| *s >= segment)
            .map(|(s, _)| segments.referenced_now(s))
            .sum::<u64>()
            * BLOCK
    }

    /// Bytes of the volume.
    #[must_use]
    pub fn volume_bytes(&self) -> u64 {
        self.blocks * BLOCK
    }

    /// The map (pointers, rows, segments).
    #[must_use]
    pub fn map(&self) -> &MapStore {
        &self.map
    }

    /// The geometry.
    #[must_use]
    pub fn geometry(&self) -> &Geometry {
        self.rows.geometry()
    }

    /// The counters so far.
    #[must_use]
    pub fn counters(&self) -> VolumeCounters {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        VolumeCounters {
            blocks_written: get(&c.blocks_written),
            rows_written: get(&c.rows_written),
            narrow_rows: get(&c.narrow_rows),
            blocks_read: get(&c.blocks_read),
            bad_shard_blocks: get(&c.bad_shard_blocks),
            rebuilt_blocks: get(&c.rebuilt_blocks),
            healed_shard_blocks: get(&c.healed_shard_blocks),
            heal_failures: get(&c.heal_failures),
            unrecoverable_blocks: get(&c.unrecoverable_blocks),
            cleaned_segments: get(&c.cleaned_segments),
            relocated_blocks: get(&c.relocated_blocks),
            cleaner_syncs: get(&c.cleaner_syncs),
            member_write_errors: c.member_write_errors.iter().map(get).collect(),
        }
    }

    /// Refuse a request that does not lie inside the volume (before any I/O).
    fn check_range(&self, offset: u64, length: u64) -> Result<()> {
        let volume_bytes = self.volume_bytes();
        if offset
            .checked_add(length)
            .is_none_or(|end| end > volume_bytes)
        {
            return Err(Error::OutOfRange {
                offset,
                length,
                volume_bytes,
            });
        }
        Ok(())
    }

    fn writable(&self, operation: &'static str) -> Result<()> {
        if self.read_only {
            Err(Error::ReadOnly { operation })
        } else {
            Ok(())
        }
    }

    /// Refuse to write rows the present members cannot hold with at least one copy of every
    /// chunk (more members absent than the layout tolerates).
    fn check_available(&self, devices: &[Option<SharedDevice>]) -> Result<()> {
        let geometry = self.rows.geometry();
        let present: Vec<bool> = (0..geometry.devices)
            .map(|d| devices.get(d).is_some_and(Option::is_some))
            .collect();
        if geometry.layout.available_with(&present) {
            return Ok(());
        }
        Err(Error::PoolUnavailable {
            layout: geometry.layout.to_string(),
            tolerated: geometry.tolerance(),
            lost_devices: present
                .iter()
                .enumerate()
                .filter(|(_, p)| !**p)
                .map(|(d, _)| format!("member {d}"))
                .collect(),
        })
    }

    /// Whether a row of `n` data blocks whose shard `s` landed when `landed(s)` can be read
    /// whole: every written chunk has a copy (mirror, raid10), or K shards are there, the
    /// never-written chunks of a narrow row counting as zeros (rs).
    fn row_readable(&self, n: usize, landed: impl Fn(usize) -> bool) -> bool {
        let width = self.rows.geometry().width();
        if self.codec.parity_chunks() == 0 {
            (0..n).all(|j| self.rows.shards_of(j).any(&landed))
        } else {
            (0..width)
                .filter(|s| self.rows.unwritten(*s, n) || landed(*s))
                .count()
                >= self.rows.k()
        }
    }

    /// Write `data` at byte `offset` of the volume (durable at the next [`Volume::flush`]).
    /// On an error every block of the range reads either its old or its new content.
    ///
    /// # Errors
    /// [`Error::OutOfRange`] (before any I/O), [`Error::ReadOnly`], [`Error::PoolUnavailable`]
    /// with too many members absent, [`Error::NoFreeSlot`] when no segment is free for data,
    /// [`Error::Io`] naming the device and offset of a failed write, and what a read of a
    /// partly written block returns.
    pub fn write(
        &mut self,
        devices: &[Option<SharedDevice>],
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        self.write_group(devices, &[(offset, data)])
    }

    /// Write a group of requests together: their blocks packed into shared rows, in the order
    /// given (where two overlap, the later one's bytes win). This is what a server does with
    /// the writes queued while the previous group was on the devices (docs/FORMAT.md V4.6,
    /// "Packer policy"): eight queued 4 KiB writes on rs:4+2 become two full rows, one
    /// request per member.
    ///
    /// # Errors
    /// As [`Volume::write`]; every range is checked before any I/O.
    pub fn write_group(
        &mut self,
        devices: &[Option<SharedDevice>],
        writes: &[(u64, &[u8])],
    ) -> Result<()> {
        for (offset, data) in writes {
            self.check_range(*offset, data.len() as u64)?;
        }
        self.writable("write")?;
        if writes.iter().all(|(_, data)| data.is_empty()) {
            return Ok(());
        }
        self.check_available(devices)?;
        let whole = |(offset, data): &(u64, &[u8])| {
            offset.is_multiple_of(BLOCK) && data.len().is_multiple_of(BLOCK_BYTES)
        };
        if let [(offset, data)] = writes {
            if whole(&(*offset, data)) {
                let first = offset / BLOCK;
                let keys: Vec<u64> = (first..first + (data.len() / BLOCK_BYTES) as u64).collect();
                return self.write_blocks(devices, &keys, data);
            }
        }
        if writes.iter().all(whole) {
            // Whole blocks, none written twice (the common group: the writes a server had
            // queued): one copy into a contiguous buffer, no block-by-block assembly.
            let mut keys = Vec::new();
            for (offset, data) in writes {
                let first = offset / BLOCK;
                keys.extend(first..first + (data.len() / BLOCK_BYTES) as u64);
            }
            let mut seen: HashSet<u64> = HashSet::with_capacity(keys.len());
            if keys.iter().all(|key| seen.insert(*key)) {
                let mut bytes = Vec::with_capacity(keys.len() * BLOCK_BYTES);
                for (_, data) in writes {
                    bytes.extend_from_slice(data);
                }
                return self.write_blocks(devices, &keys, &bytes);
            }
        }
        let mut blocks: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut keys = Vec::new();
        for (offset, data) in writes {
            let end = offset + data.len() as u64;
            for key in offset / BLOCK..end.div_ceil(BLOCK) {
                let start = (key * BLOCK).max(*offset);
                let stop = ((key + 1) * BLOCK).min(end);
                let block = match blocks.entry(key) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(entry) => {
                        let mut block = vec![0u8; BLOCK_BYTES];
                        if stop - start < BLOCK {
                            self.read_blocks(devices, key, &mut block)?;
                        }
                        keys.push(key);
                        entry.insert(block)
                    }
                };
                let at = |x: u64, base: u64| usize::try_from(x - base).unwrap_or(0);
                block[at(start, key * BLOCK)..at(stop, key * BLOCK)]
                    .copy_from_slice(&data[at(start, *offset)..at(stop, *offset)]);
            }
        }
        let mut bytes = Vec::with_capacity(keys.len() * BLOCK_BYTES);
        for key in &keys {
            if let Some(block) = blocks.get(key) {
                bytes.extend_from_slice(block);
            }
        }
        self.write_blocks(devices, &keys, &bytes)
    }

    /// Write whole blocks (`keys[i]` gets `blocks[i × 4 KiB..]`) into fresh rows and point
    /// the blocks at them, at most a segment's worth at a time, each after the cleaner has
    /// made room for it.
    fn write_blocks(
        &mut self,
        devices: &[Option<SharedDevice>],
        keys: &[u64],
        blocks: &[u8],
    ) -> Result<()> {
        let per_segment =
            usize::try_from(self.map.segments().shape().blocks_per_segment).unwrap_or(usize::MAX);
        for (keys, blocks) in keys
            .chunks(per_segment)
            .zip(blocks.chunks(per_segment * BLOCK_BYTES))
        {
            // This part opens at most two segments: the rest of the open one and one more.
            self.make_room(devices, 2)?;
            self.put_rows(devices, keys, blocks, false)?;
        }
        Ok(())
    }

    /// Write whole blocks into fresh rows (the cleaner's relocations: `cleaner`, which may
    /// take segments from the hard reserve) and point the blocks at them.
    fn put_rows(
        &mut self,
        devices: &[Option<SharedDevice>],
        keys: &[u64],
        blocks: &[u8],
        cleaner: bool,
    ) -> Result<()> {
        let k = self.rows.k();
        let width = self.rows.geometry().width();
        let birth = self.map.next_sequence();
        let count = blocks.len() / BLOCK_BYTES;
        // Rows of K blocks (the last narrow): their places, then their shard-blocks.
        let mut planned = Vec::with_capacity(count.div_ceil(k));
        for start in (0..count).step_by(k) {
            match self.map.next_row_for(cleaner) {
                Ok(place) => planned.push((place, start, k.min(count - start))),
                Err(e) => {
                    // Rows handed out for this write will not be noted: no later row of
                    // their slot may be (rows reach a slot record in order).
                    if !planned.is_empty() {
                        self.map.abandon_open_slot();
                    }
                    return Err(e);
                }
            }
        }
        let mut shards = vec![0u8; planned.len() * width * BLOCK_BYTES];
        let mut crcs = vec![0u32; planned.len() * width];
        let mut pieces = Vec::with_capacity(planned.len() * width);
        // One row's data chunks (a narrow row's missing ones zero) and parity, reused.
        let mut data = vec![0u8; k * BLOCK_BYTES];
        let mut parity_bytes = vec![0u8; self.codec.parity_chunks() * BLOCK_BYTES];
        for (i, ((slot, row), start, n)) in planned.iter().enumerate() {
            let row_bytes = &mut shards[i * width * BLOCK_BYTES..(i + 1) * width * BLOCK_BYTES];
            data[..n * BLOCK_BYTES]
                .copy_from_slice(&blocks[start * BLOCK_BYTES..(start + n) * BLOCK_BYTES]);
            data[n * BLOCK_BYTES..].fill(0);
            self.codec
                .encode_parity_into(&data, BLOCK_BYTES, &mut parity_bytes);
            for s in 0..width {
                let bytes = match self.rows.chunk_of(s) {
                    Some(j) => &data[j * BLOCK_BYTES..(j + 1) * BLOCK_BYTES],
                    None => {
                        let p = s - k;
                        &parity_bytes[p * BLOCK_BYTES..(p + 1) * BLOCK_BYTES]
                    }
                };
                row_bytes[s * BLOCK_BYTES..(s + 1) * BLOCK_BYTES].copy_from_slice(bytes);
                if self.rows.unwritten(s, *n) {
                    continue;
                }
                crcs[i * width + s] = self.rows.crc(*slot, s, *row, birth, bytes);
                let (device, at) = self.rows.shard_block(*slot, s, *row);
                if devices.get(device.0).is_some_and(Option::is_some) {
                    pieces.push(Piece {
                        device: device.0,
                        offset: at,
                        index: i * width + s,
                    });
                }
            }
        }
        // A member that fails a write is left behind like an absent one while every row stays
        // readable without it (its stale places fail their crcs and are rebuilt and healed
        // when read); the pool's fault policy sees the error counts. Beyond the tolerance
        // the write fails and its rows are never noted.
        let failures = write_runs(devices, &pieces, &shards);
        if !failures.is_empty() {
            for failure in &failures {
                if let Some(count) = self.counters.member_write_errors.get(failure.member) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(
                    device = %failure.name, offset = failure.offset, error = %failure.error,
                    "row write failed on a member"
                );
                let first = failure.pieces.first().copied().unwrap_or(0);
                let slot = planned
                    .get(first / width)
                    .map_or(0, |((slot, _), _, _)| *slot);
                let shard = first % width;
                self.report(&MemberProblem {
                    member: failure.member,
                    offset: failure.offset,
                    slot,
                    shard,
                    kind: ProblemKind::Write(&failure.error),
                });
            }
            let failed: HashSet<usize> = failures
                .iter()
                .flat_map(|f| f.pieces.iter().copied())
                .collect();
            let landed: HashSet<usize> = pieces
                .iter()
                .map(|p| p.index)
                .filter(|i| !failed.contains(i))
                .collect();
            let readable = planned
                .iter()
                .enumerate()
                .all(|(i, (_, _, n))| self.row_readable(*n, |s| landed.contains(&(i * width + s))));
            if !readable {
                self.map.abandon_open_slot();
                if let Some(failure) = failures.into_iter().next() {
                    return Err(Error::Io {
                        device: failure.name,
                        offset: Some(failure.offset),
                        source: failure.error.into_io(),
                    });
                }
            }
        }
        // Every row is noted before any pointer changes: a sync that a pointer change runs
        // then finds every row of this write already noted.
        for (i, ((slot, row), start, n)) in planned.iter().enumerate() {
            let owners = keys[*start..start + n].to_vec();
            let row_crcs = crcs[i * width..(i + 1) * width].to_vec();
            self.map.note_row(*slot, *row, birth, owners, row_crcs)?;
        }
        for ((slot, row), start, n) in &planned {
            for b in 0..*n {
                let pbn = self.rows.pbn(*slot, *row, b);
                self.map.set(devices, keys[start + b], pbn)?;
            }
            self.counters.rows_written.fetch_add(1, Ordering::Relaxed);
            if *n < k {
                self.counters.narrow_rows.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.counters
            .blocks_written
            .fetch_add(count as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Make the byte range read zeros (a trim: whole blocks lose their rows, partial blocks
    /// at the ends are written with zeros). Durable at the next flush.
    ///
    /// # Errors
    /// As [`Volume::write`].
    pub fn discard(
        &mut self,
        devices: &[Option<SharedDevice>],
        offset: u64,
        length: u64,
    ) -> Result<()> {
        self.check_range(offset, length)?;
        self.writable("discard")?;
        if length == 0 {
            return Ok(());
        }
        let end = offset + length;
        let first_whole = offset.div_ceil(BLOCK);
        let end_whole = end / BLOCK;
        if first_whole >= end_whole {
            return self.write(
                devices,
                offset,
                &vec![0u8; usize::try_from(length).unwrap_or(0)],
            );
        }
        let zeros = |bytes: u64| vec![0u8; usize::try_from(bytes).unwrap_or(0)];
        if offset < first_whole * BLOCK {
            self.write(devices, offset, &zeros(first_whole * BLOCK - offset))?;
        }
        if end > end_whole * BLOCK {
            self.write(devices, end_whole * BLOCK, &zeros(end - end_whole * BLOCK))?;
        }
        for key in first_whole..end_whole {
            // A block that already reads zeros (never written, or trimmed) is left alone: a
            // discard of an unwritten range dirties no page.
            if !self.map.get(devices, key)?.reads_zeros() {
                self.map.trim(devices, key)?;
            }
        }
        Ok(())
    }

    /// Make every write and discard so far durable: flush the members (the rows), then commit
    /// the map (a log record, or a tree sync when it does not fit).
    ///
    /// # Errors
    /// [`Error::Io`] for a member that cannot be flushed; what [`MapStore::commit`] returns
    /// (the volume must then be reopened).
    pub fn flush(&mut self, devices: &[Option<SharedDevice>]) -> Result<CommitReport> {
        self.writable("flush")?;
        #[cfg(feature = "testing")]
        if self.commit_before_rows_durable {
            return self.map.commit(devices);
        }
        self.map.flush_members(devices)?;
        self.map.commit(devices)
    }

    /// Make every change durable by a tree sync (the log starts over in the other half).
    ///
    /// # Errors
    /// What [`MapStore::sync`] returns.
    pub fn sync(&mut self, devices: &[Option<SharedDevice>]) -> Result<SyncReport> {
        self.writable("sync")?;
        self.map.sync(devices)
    }
}

/// A row write that failed on one member.
#[derive(Debug)]
struct WriteFailure {
    /// The pieces (`row × width + shard`) of the failed request.
    pieces: Vec<usize>,
    member: usize,
    name: String,
    offset: u64,
    error: crate::device::DeviceError,
}

/// Write every piece (4 KiB of `bytes` at `index × 4 KiB`), one request per run, all runs
/// submitted together (io_uring where the device has it); every failure, named.
fn write_runs(
    devices: &[Option<SharedDevice>],
    pieces: &[Piece],
    bytes: &[u8],
) -> Vec<WriteFailure> {
    let runs = runs(pieces.to_vec());
    let buffers: Vec<Vec<u8>> = runs
        .iter()
        .map(|run| {
            let mut buffer = Vec::with_capacity(run.len() * BLOCK_BYTES);
            for p in run {
                buffer
                    .extend_from_slice(&bytes[p.index * BLOCK_BYTES..(p.index + 1) * BLOCK_BYTES]);
            }
            buffer
        })
        .collect();
    let mut ops = Vec::with_capacity(runs.len());
    let mut issued = Vec::with_capacity(runs.len());
    for (run, buffer) in runs.iter().zip(&buffers) {
        if let Some(Some(device)) = run.first().and_then(|p| devices.get(p.device)) {
            ops.push(BatchOp::write(device.as_ref(), run[0].offset, buffer));
            issued.push(run);
        }
    }
    run_batch(&mut ops);
    ops.into_iter()
        .zip(issued)
        .filter_map(|(op, run)| {
            op.result.err().map(|e| WriteFailure {
                pieces: run.iter().map(|p| p.index).collect(),
                member: run[0].device,
                name: op.device.name(),
                offset: op.offset,
                error: e,
            })
        })
        .collect()
}
