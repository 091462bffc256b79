//! The data path of format version 4 (docs/FORMAT.md, V4.2, V4.3, V4.6): a volume of logical
//! 4 KiB blocks written copy-on-write into **rows** of fresh data slots, with the block
//! pointers, rows and commits kept by the paged map ([`MapStore`]).
//!
//! * A write packs its blocks into rows of K (the last one narrow when fewer remain), computes
//!   each row's parity over 4 KiB shard-blocks and the crc of every shard-block, writes the
//!   rows with one request per device per run of consecutive rows, then notes the rows in the
//!   map and points each block at its new place. The shard-blocks are staged once, into a
//!   reused aligned buffer laid out request by request, part by part while the previous part
//!   is on the devices; a write of whole rows comes already encoded by its writer's thread
//!   (`encode.rs`), and only its crcs are seeded here (docs/FORMAT.md V4.6, "Large writes");
//!   the pointers of each run of consecutive blocks change in one walk of the map per leaf
//!   (`MapStore::set_run`). A row is never rewritten, so there is no read-modify-write of
//!   parity and no write hole; a write of less than a block reads the old block first
//!   (verified).
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
//! * Recovery points (`recovery.rs`, FORMAT.md V4.10a, step 1): taken as a map sync, listed,
//!   and read through their own map, block by block through the same verified read path.
//! * Writes make room first: the data cleaner (`clean.rs`, FORMAT.md V4.13 step 7) copies
//!   the live blocks of mostly dead data segments into fresh rows, so overwrites never run
//!   the volume out of segments.
//!
//! Not yet here (docs/FORMAT.md V4.13): the packer that groups concurrent small writes (step
//! 6) and a cleaner that runs beside writers (its compare-and-swap, epoch pins), and the
//! pool's part of step 8 (attach as a commit boundary, the watermark
//! in the superblocks, epoch pins, pacing, swap-in).

mod clean;
mod encode;
mod observe;
mod pass;
mod pipeline;
mod place;
mod read;
mod rebuild;
mod recovery;
mod scrub;

pub use encode::{EncodedWrite, RowEncoder};
pub use observe::{InService, MemberNames, MemberProblem, Observer, ProblemKind};
pub use pipeline::{WriteGroup, PIPELINE_UNITS};
pub use place::BLOCK_BYTES;
pub use read::ShardBlockPlace;
pub use rebuild::{RebuildOptions, RebuildPlan, RebuildProgress, RebuildReport};
pub use scrub::{Damage, ScrubPlan, VolumeScrubOptions, VolumeScrubReport};

use crate::codec::Codec;
use crate::codec::MAX_SHARDS;
use crate::device::{run_batch_while, AlignedBuf, BatchOp, SharedDevice};
use crate::error::{Error, Result};
use crate::format::v4::row_checksum_of_block_crc;
use crate::geometry::Geometry;
use crate::meta::{CommitReport, MapOptions, MapStore, SyncReport};
use place::{runs, Piece, Rows};
use std::collections::hash_map::{Entry, HashMap};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

const BLOCK: u64 = BLOCK_BYTES as u64;
/// The least cleaning headroom, in segments, whatever the volume's size (docs/FORMAT.md V4.2):
/// a sixteenth of a small data area is a few segments, fewer than the open streams and the
/// cleaner's own margin take, and a full volume could then not be overwritten.
const HEADROOM_MIN_SEGMENTS: u64 = 4;

/// How a volume is kept.
#[derive(Debug, Clone, Default)]
pub struct VolumeOptions {
    /// The map's options (cache, depth, segment size, log record size, read-only).
    pub map: MapOptions,
    /// The most entries a rebuild's or a scrub's plan holds at once (0: the default,
    /// [`pass::WINDOW_ENTRIES`]; docs/FORMAT.md V4.13, "Plans in windows").
    pub plan_window: usize,
    /// Planted bug `skip_block_verification`: reads return a shard-block's bytes without
    /// checking them against the pointer's crc.
    #[cfg(feature = "testing")]
    pub skip_block_verification: bool,
    /// Planted bug `hedge_disabled`: reads wait on a slow member however long it takes,
    /// never giving up on it for the rest of the row (docs/FORMAT.md V4.16 §7).
    #[cfg(feature = "testing")]
    pub hedge_disabled: bool,
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
    /// Planted bug `encode_without_parity`: writes encoded before the lock leave their rows'
    /// parity zero, with crcs that match the zeros, so rebuilding a shard from such a row
    /// gives other bytes (which the pointer's crc then refuses).
    #[cfg(feature = "testing")]
    pub encode_without_parity: bool,
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
    reads_together: AtomicU64,
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
    /// Reads served in one batch with at least one other ([`Volume::read_many`]).
    pub reads_together: u64,
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
    codec: std::sync::Arc<Codec>,
    map: MapStore,
    blocks: u64,
    read_only: bool,
    /// The most entries a pass's plan holds at once ([`VolumeOptions::plan_window`]).
    plan_window: usize,
    /// Set only inside [`Volume::receive_write`] and [`Volume::receive_discard`] (which hold
    /// the volume exclusively): the write is the receive's own (FORMAT.md V4.10d).
    receive_active: bool,
    counters: Counters,
    cleaner: clean::CleanerState,
    observer: Option<Observer>,
    /// The members' names for errors (none: "member N").
    names: Option<MemberNames>,
    /// Whether a member is still in service (none: every member written is).
    in_service: Option<InService>,
    /// The shard-blocks of the rows being written, laid out run by run (reused: large
    /// buffers allocated per write cost a page fault and a zeroing per 4 KiB); as large as
    /// the largest write so far, at most a segment's rows.
    staging: AlignedBuf,
    #[cfg(feature = "testing")]
    skip_block_verification: bool,
    #[cfg(feature = "testing")]
    hedge_disabled: bool,
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
    #[cfg(feature = "testing")]
    encode_without_parity: bool,
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
            codec: std::sync::Arc::new(Codec::new(geometry.layout, geometry.devices)?),
            map,
            blocks,
            read_only: options.map.read_only,
            plan_window: if options.plan_window == 0 {
                pass::WINDOW_ENTRIES
            } else {
                options.plan_window
            },
            receive_active: false,
            counters: Counters {
                member_write_errors: (0..geometry.devices).map(|_| AtomicU64::new(0)).collect(),
                ..Counters::default()
            },
            cleaner: clean::CleanerState::default(),
            observer: None,
            names: None,
            in_service: None,
            staging: AlignedBuf::zeroed(0),
            #[cfg(feature = "testing")]
            skip_block_verification: options.skip_block_verification,
            #[cfg(feature = "testing")]
            hedge_disabled: options.hedge_disabled,
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
            #[cfg(feature = "testing")]
            encode_without_parity: options.encode_without_parity,
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
        let headroom = (data / 16).max(HEADROOM_MIN_SEGMENTS * shape.blocks_per_segment);
        let blocks = data
            .saturating_sub(headroom)
            .saturating_sub(allowance)
            .saturating_sub(reserve);
        (blocks - blocks % per_slot).min(map.keys())
    }

    /// Tell `observer` of every member problem from now on (docs in `observe.rs`).
    pub fn set_observer(&mut self, observer: Observer) {
        self.observer = Some(observer);
    }

    /// Let `in_service` say which members are still in service when rows land (see
    /// [`InService`]).
    pub fn set_in_service(&mut self, in_service: InService) {
        self.in_service = Some(in_service);
    }

    /// Let `tolerate` decide about members that fail a metadata write or flush (see
    /// [`crate::meta::Tolerate`]).
    pub fn set_tolerate(&mut self, tolerate: crate::meta::Tolerate) {
        self.map.set_tolerate(tolerate);
    }

    /// Let `gate` decide whether a commit or tree sync may write now (see
    /// [`crate::meta::StatesRecorded`]).
    pub fn set_states_recorded(&mut self, gate: crate::meta::StatesRecorded) {
        self.map.set_states_recorded(gate);
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

    /// Name members with `names` in errors and reports from now on.
    pub fn set_member_names(&mut self, names: MemberNames) {
        self.names = Some(names);
    }

    /// Member `position`'s name: its device as the owner knows it, or "member N".
    #[must_use]
    pub fn member_name(&self, position: usize) -> String {
        self.names
            .as_ref()
            .map_or_else(|| format!("member {position}"), |names| (names.0)(position))
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

    /// Refuse every change from now on ([`MapStore::fail`]): a thread panicked while it
    /// changed the volume, so its state in memory cannot be vouched for. Reads go on.
    pub fn fail(&mut self) {
        self.map.fail();
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

    /// What a writer needs to encode its write before it holds the lock
    /// ([`Volume::write_writes`] takes the result).
    #[must_use]
    pub fn encoder(&self) -> RowEncoder {
        let encoder = RowEncoder::new(self.rows.clone(), std::sync::Arc::clone(&self.codec));
        #[cfg(feature = "testing")]
        let encoder = encoder.with_planted_no_parity(self.encode_without_parity);
        encoder
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
            reads_together: get(&c.reads_together),
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

    /// [`Volume::writable`], for what changes the volume's content: refused too while a
    /// receive is unfinished (FORMAT.md V4.10d), except the receive's own writes. Flushes,
    /// scrub repairs and rebuilds change no content and go on.
    fn content_writable(&self, operation: &'static str) -> Result<()> {
        self.writable(operation)?;
        match self.map.unfinished_receive() {
            Some(receive) if !self.receive_active => Err(Error::ReceiveUnfinished {
                operation: operation.to_string(),
                name: receive.name,
            }),
            _ => Ok(()),
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
                .map(|(d, _)| self.member_name(d))
                .collect(),
        })
    }

    /// The piece of I/O for shard `shard` of row `row` of `slot`, numbered `index`, when its
    /// member is present.
    fn present_piece(
        &self,
        devices: &[Option<SharedDevice>],
        slot: u64,
        shard: usize,
        row: u16,
        index: usize,
    ) -> Option<Piece> {
        let (device, offset) = self.rows.shard_block(slot, shard, row);
        devices
            .get(device.0)
            .is_some_and(Option::is_some)
            .then_some(Piece {
                device: device.0,
                offset,
                index,
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
        let writes: Vec<GroupWrite<'_>> = writes
            .iter()
            .map(|(offset, data)| GroupWrite::Bytes {
                offset: *offset,
                data,
            })
            .collect();
        self.write_writes(devices, &writes)
    }

    /// As [`Volume::write_group`], with writes encoded before the lock among them
    /// ([`RowEncoder::encode`]). A group of encoded writes only, none writing a block twice,
    /// goes as it is (each write's rows one after another, no staging); any other group is
    /// packed and staged as [`Volume::write_group`] does, with the same bytes.
    ///
    /// # Errors
    /// As [`Volume::write`]; every range is checked before any I/O.
    pub fn write_writes(
        &mut self,
        devices: &[Option<SharedDevice>],
        writes: &[GroupWrite<'_>],
    ) -> Result<()> {
        for write in writes {
            self.check_range(write.offset(), write.len() as u64)?;
        }
        self.content_writable("write")?;
        if writes.iter().all(|w| w.len() == 0) {
            return Ok(());
        }
        self.check_available(devices)?;
        if let Some(keys) = distinct_keys(writes) {
            // Whole blocks, none twice (the common group: the writes a server had queued).
            if let Some(encoded) = encoded_only(writes) {
                return self.write_encoded(devices, &encoded);
            }
            // Taken where they are, no block-by-block assembly.
            let blocks: Vec<&[u8]> = writes.iter().flat_map(GroupWrite::blocks).collect();
            return self.write_blocks(devices, &keys, &blocks);
        }
        let mut blocks: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut keys = Vec::new();
        for write in writes {
            let GroupWrite::Bytes { offset, data } = *write else {
                // Encoded: whole blocks, each replacing what earlier writes gave its block.
                let first = write.offset() / BLOCK;
                for (key, block) in (first..).zip(write.blocks()) {
                    match blocks.entry(key) {
                        Entry::Occupied(mut entry) => entry.get_mut().copy_from_slice(block),
                        Entry::Vacant(entry) => {
                            keys.push(key);
                            entry.insert(block.to_vec());
                        }
                    }
                }
                continue;
            };
            let end = offset + data.len() as u64;
            for key in offset / BLOCK..end.div_ceil(BLOCK) {
                let start = (key * BLOCK).max(offset);
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
                    .copy_from_slice(&data[at(start, offset)..at(stop, offset)]);
            }
        }
        // Every key has its block (both were filled together above).
        let ordered: Vec<&[u8]> = keys
            .iter()
            .filter_map(|key| blocks.get(key).map(Vec::as_slice))
            .collect();
        self.write_blocks(devices, &keys, &ordered)
    }

    /// Write encoded writes (none writing a block twice), at most a segment's worth of rows
    /// at a time, each after the cleaner has made room for it.
    fn write_encoded(
        &mut self,
        devices: &[Option<SharedDevice>],
        writes: &[&EncodedWrite],
    ) -> Result<()> {
        for batch in self.segment_batches(writes) {
            let batch: Vec<(&EncodedWrite, std::ops::Range<usize>)> = batch
                .into_iter()
                .map(|(w, rows)| (writes[w], rows))
                .collect();
            self.make_room(devices, 2)?;
            self.put_encoded(devices, &batch)?;
        }
        Ok(())
    }

    /// The rows of `writes`, in order, cut into batches of at most a segment's worth: each
    /// `(write, its rows)`.
    fn segment_batches(&self, writes: &[&EncodedWrite]) -> Vec<UnitBatch> {
        let k = self.rows.k();
        let per_segment = usize::try_from(self.map.segments().shape().blocks_per_segment)
            .unwrap_or(usize::MAX)
            / k;
        let per_segment = per_segment.max(1);
        let mut batches = Vec::new();
        let mut batch: UnitBatch = Vec::new();
        let mut rows_in_batch = 0;
        for (w, write) in writes.iter().enumerate() {
            let mut row = 0;
            while row < write.rows() {
                let take = (write.rows() - row).min(per_segment - rows_in_batch);
                batch.push((w, row..row + take));
                rows_in_batch += take;
                row += take;
                if rows_in_batch == per_segment {
                    batches.push(std::mem::take(&mut batch));
                    rows_in_batch = 0;
                }
            }
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        batches
    }

    /// Place and write the rows `rows` of each encoded write of `batch` (in order) and point
    /// their blocks at them.
    fn put_encoded(
        &mut self,
        devices: &[Option<SharedDevice>],
        batch: &[(&EncodedWrite, std::ops::Range<usize>)],
    ) -> Result<()> {
        let unit = self.place_encoded(devices, batch)?;
        let failures = unit.requests.write(devices, batch);
        self.land_unit(devices, unit, failures)
    }

    /// Place the rows `rows` of each encoded write of `batch` (in order): their places, the
    /// rows' crcs from the blocks' plain crcs, and one request per run of consecutive places,
    /// each a list of slices of the writes' buffers. Nothing is written or noted yet.
    fn place_encoded(
        &mut self,
        devices: &[Option<SharedDevice>],
        batch: &[(&EncodedWrite, std::ops::Range<usize>)],
    ) -> Result<PlacedUnit> {
        let k = self.rows.k();
        let width = self.rows.geometry().width();
        let birth = self.map.next_sequence();
        let mut keys = Vec::new();
        // Per row of the batch: which write, which of its rows.
        let mut sources = Vec::new();
        for (w, (write, rows)) in batch.iter().enumerate() {
            let first = write.first_key();
            keys.extend(first + (rows.start * k) as u64..first + (rows.end * k) as u64);
            sources.extend(rows.clone().map(|r| (w, r)));
        }
        let planned = self.plan_rows(sources.len() * k, false)?;
        let mut crcs = vec![0u32; planned.len() * width];
        let mut pieces = Vec::with_capacity(planned.len() * width);
        // Where each piece's bytes are: (write, block of its buffer).
        let mut places = vec![(0, 0); planned.len() * width];
        for (i, (((slot, row), _, _), (w, r))) in planned.iter().zip(&sources).enumerate() {
            let write = batch[*w].0;
            for s in 0..width {
                let index = i * width + s;
                crcs[index] = row_checksum_of_block_crc(
                    *slot,
                    self.rows.seed_chunk(s),
                    u32::from(*row),
                    birth,
                    write.block_crc(*r, s),
                );
                places[index] = (*w, write.position(*r, s));
                pieces.extend(self.present_piece(devices, *slot, s, *row, index));
            }
        }
        // One request per run: its pieces, where consecutive in one write's buffer, as one
        // slice (`writev`).
        let runs = runs(pieces);
        let spans = runs
            .iter()
            .map(|run| {
                let mut spans = Vec::new();
                let mut from = places[run[0].index];
                let mut count = 0;
                for piece in run {
                    let (w, p) = places[piece.index];
                    if (w, p) != (from.0, from.1 + count) {
                        spans.push((from.0, from.1, count));
                        (from, count) = ((w, p), 0);
                    }
                    count += 1;
                }
                spans.push((from.0, from.1, count));
                spans
            })
            .collect();
        let held = self
            .map
            .hold_slots(planned.iter().map(|((slot, _), _, _)| *slot));
        Ok(PlacedUnit {
            keys,
            planned,
            birth,
            crcs,
            requests: std::sync::Arc::new(UnitRequests { runs, spans }),
            held,
        })
    }

    /// Land a unit [`Volume::place_encoded`] placed, once its requests came back with
    /// `failures`: see [`Volume::land_rows`]. Its segments' holds are dropped either way.
    fn land_unit(
        &mut self,
        devices: &[Option<SharedDevice>],
        unit: PlacedUnit,
        failures: Vec<WriteFailure>,
    ) -> Result<()> {
        let PlacedUnit {
            keys,
            planned,
            birth,
            crcs,
            requests,
            held,
        } = unit;
        let landed = self.land_rows(
            devices,
            &keys,
            &planned,
            birth,
            &crcs,
            &requests.runs,
            failures,
        );
        self.map.unhold_segments(&held);
        landed
    }

    /// Write whole blocks (`keys[i]` gets `blocks[i]`, 4 KiB) into fresh rows and point the
    /// blocks at them, at most a segment's worth at a time, each after the cleaner has made
    /// room for it.
    fn write_blocks(
        &mut self,
        devices: &[Option<SharedDevice>],
        keys: &[u64],
        blocks: &[&[u8]],
    ) -> Result<()> {
        let per_segment =
            usize::try_from(self.map.segments().shape().blocks_per_segment).unwrap_or(usize::MAX);
        for (keys, blocks) in keys.chunks(per_segment).zip(blocks.chunks(per_segment)) {
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
        blocks: &[&[u8]],
        cleaner: bool,
    ) -> Result<()> {
        let birth = self.map.next_sequence();
        let planned = self.plan_rows(blocks.len(), cleaner)?;
        let (crcs, failures, runs) = self.stage_and_write(devices, &planned, blocks, birth);
        if self.staging.len() > STAGING_KEPT_BYTES {
            // A write larger than a group, or a cleaner's batch: not kept for the next.
            self.staging = AlignedBuf::zeroed(0);
        }
        self.land_rows(devices, keys, &planned, birth, &crcs, &runs, failures)
    }

    /// Places for `count` blocks in rows of K (the last narrow): per row, its slot and row, its
    /// first block and its data blocks.
    fn plan_rows(&mut self, count: usize, cleaner: bool) -> Result<Vec<PlannedRow>> {
        let k = self.rows.k();
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
        Ok(planned)
    }

    /// After the `planned` rows' requests (`runs`) were sent and `failures` came back: report
    /// the failures, and unless a row cannot be read without the members that failed, note
    /// the rows (with `crcs`) and point `keys` at their blocks.
    #[allow(clippy::too_many_arguments)] // the outcome of one row write, taken apart by its steps
    fn land_rows(
        &mut self,
        devices: &[Option<SharedDevice>],
        keys: &[u64],
        planned: &[PlannedRow],
        birth: u64,
        crcs: &[u32],
        runs: &[Vec<Piece>],
        failures: Vec<WriteFailure>,
    ) -> Result<()> {
        let k = self.rows.k();
        let width = self.rows.geometry().width();
        let count: usize = planned.iter().map(|(_, _, n)| n).sum();
        // A member that fails a write is left behind like an absent one while every row stays
        // readable without it (its stale places fail their crcs and are rebuilt and healed
        // when read); the pool's fault policy sees the error counts. Beyond the tolerance
        // the write fails and its rows are never noted.
        let pieces: Vec<Piece> = runs.iter().flatten().copied().collect();
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
        // Members the fault policy took out of service since the requests were made (these
        // failures, an earlier landing's): what they hold is not read.
        let gone: Vec<usize> = match &self.in_service {
            Some(in_service) => (0..devices.len()).filter(|m| !(in_service.0)(*m)).collect(),
            None => Vec::new(),
        };
        let gone_pieces: Vec<usize> = pieces
            .iter()
            .filter(|p| gone.contains(&p.device))
            .map(|p| p.index)
            .collect();
        if !failures.is_empty() || !gone_pieces.is_empty() {
            let failed: HashSet<usize> = failures
                .iter()
                .flat_map(|f| f.pieces.iter().copied())
                .chain(gone_pieces)
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
                let member = gone.first().copied().unwrap_or(0);
                return Err(Error::Io {
                    device: devices
                        .get(member)
                        .and_then(Option::as_ref)
                        .map_or_else(|| self.member_name(member), |d| d.name()),
                    offset: None,
                    source: std::io::Error::other(
                        "the member was taken out of service while this write was on it, and \
                         the rows are not readable without it",
                    ),
                });
            }
        }
        // Every row is noted before any pointer changes: a sync that a pointer change runs
        // then finds every row of this write already noted.
        for (i, ((slot, row), start, n)) in planned.iter().enumerate() {
            let owners = keys[*start..start + n].to_vec();
            let row_crcs = crcs[i * width..(i + 1) * width].to_vec();
            self.map.note_row(*slot, *row, birth, owners, row_crcs)?;
        }
        // The pointers change in the order the blocks were placed (where a group writes a
        // block twice, the later wins), each run of consecutive blocks at once.
        let mut run_first = 0u64;
        let mut run_pbns: Vec<u64> = Vec::with_capacity(count);
        for ((slot, row), start, n) in planned {
            for b in 0..*n {
                let key = keys[start + b];
                if !run_pbns.is_empty() && key != run_first + run_pbns.len() as u64 {
                    self.map.set_run(devices, run_first, &run_pbns)?;
                    run_pbns.clear();
                }
                if run_pbns.is_empty() {
                    run_first = key;
                }
                run_pbns.push(self.rows.pbn(*slot, *row, b));
            }
        }
        self.map.set_run(devices, run_first, &run_pbns)?;
        let narrow = planned.iter().filter(|(_, _, n)| *n < k).count();
        self.counters
            .rows_written
            .fetch_add(planned.len() as u64, Ordering::Relaxed);
        self.counters
            .narrow_rows
            .fetch_add(narrow as u64, Ordering::Relaxed);
        self.counters
            .blocks_written
            .fetch_add(count as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Encode, checksum and write the `planned` rows (`planned[i]`: the place of row `i`, its
    /// first block in `blocks`, its data blocks), part by part: while one part's requests are
    /// on the devices, the next part is staged (the volume's lock is held meanwhile, so this
    /// overlap is what keeps both the cores and the devices busy). Each shard-block to write
    /// gets 4 KiB of the staging buffer: a part's blocks of present members first, in the
    /// order of its runs, so that each run is one aligned slice that goes to its device
    /// without a copy; those of absent members after (their parity is still computed and
    /// their crcs recorded). Returns every shard-block's crc (`row × width + shard`, 0 where
    /// not written), the failed requests, and the runs written.
    fn stage_and_write(
        &mut self,
        devices: &[Option<SharedDevice>],
        planned: &[PlannedRow],
        blocks: &[&[u8]],
        birth: u64,
    ) -> (Vec<u32>, Vec<WriteFailure>, Vec<Vec<Piece>>) {
        let width = self.rows.geometry().width();
        let rows_per_part = WRITE_PART_BLOCKS.div_ceil(self.rows.k()).max(1);
        let mut parts = Vec::with_capacity(planned.len().div_ceil(rows_per_part));
        for (p, rows) in planned.chunks(rows_per_part).enumerate() {
            let first = p * rows_per_part;
            let mut pieces = Vec::with_capacity(rows.len() * width);
            let mut absent = Vec::new();
            for (i, ((slot, row), _, n)) in rows.iter().enumerate() {
                for s in 0..width {
                    if self.rows.unwritten(s, *n) {
                        continue;
                    }
                    let index = (first + i) * width + s;
                    match self.present_piece(devices, *slot, s, *row, index) {
                        Some(piece) => pieces.push(piece),
                        None => absent.push(index),
                    }
                }
            }
            let runs = runs(pieces);
            let order: Vec<usize> = runs
                .iter()
                .flatten()
                .map(|p| p.index)
                .chain(absent)
                .collect();
            parts.push(WritePart {
                first,
                rows,
                runs,
                order,
            });
        }
        let staged: usize = parts.iter().map(|p| p.order.len()).sum();
        if self.staging.len() < staged * BLOCK_BYTES {
            self.staging = AlignedBuf::zeroed(staged * BLOCK_BYTES);
        }
        let mut crcs = vec![0u32; planned.len() * width];
        let mut regions: Vec<(&mut [u8], &mut [u32])> = Vec::with_capacity(parts.len());
        let mut bytes_left = &mut self.staging[..staged * BLOCK_BYTES];
        let mut crcs_left = &mut crcs[..];
        for part in &parts {
            let (bytes, rest) = bytes_left.split_at_mut(part.order.len() * BLOCK_BYTES);
            let (part_crcs, crc_rest) = crcs_left.split_at_mut(part.rows.len() * width);
            regions.push((bytes, part_crcs));
            (bytes_left, crcs_left) = (rest, crc_rest);
        }
        let (rows, codec) = (&self.rows, &self.codec);
        let mut failures = Vec::new();
        if let (Some(part), Some((bytes, part_crcs))) = (parts.first(), regions.first_mut()) {
            part.stage(rows, codec, blocks, birth, bytes, part_crcs);
        }
        for (p, part) in parts.iter().enumerate() {
            let (done, rest) = regions.split_at_mut(p + 1);
            let written = &done[p].0;
            let mut at = 0;
            let buffers: Vec<&[u8]> = part
                .runs
                .iter()
                .map(|run| {
                    let bytes = &written[at * BLOCK_BYTES..(at + run.len()) * BLOCK_BYTES];
                    at += run.len();
                    bytes
                })
                .collect();
            let next = parts.get(p + 1).zip(rest.first_mut());
            failures.extend(submit_runs_while(devices, &part.runs, &buffers, || {
                if let Some((next, (bytes, part_crcs))) = next {
                    next.stage(rows, codec, blocks, birth, bytes, part_crcs);
                }
            }));
        }
        drop(regions);
        let runs = parts.into_iter().flat_map(|p| p.runs).collect();
        (crcs, failures, runs)
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
        self.content_writable("discard")?;
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
    /// [`Error::Io`] for a member that cannot be flushed and is not tolerated, or what
    /// [`MapStore::commit`] returns: either way the volume must then be reopened.
    pub fn flush(&mut self, devices: &[Option<SharedDevice>]) -> Result<CommitReport> {
        self.writable("flush")?;
        #[cfg(feature = "testing")]
        if self.commit_before_rows_durable {
            return self.map.commit(devices);
        }
        if let Err(error) = self.map.flush_members(devices) {
            // A member the pool cannot lose failed its flush: the writes in its cache may be
            // gone, and its next flush would succeed without them (the error is reported
            // once), so a later commit must not vouch for them: the map refuses every commit
            // until it is reopened.
            self.map.fail();
            return Err(error);
        }
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

/// A row placed for a write: its (slot, row), its first block among the write's blocks, and
/// how many data blocks it carries (K, or fewer for a narrow row).
type PlannedRow = ((u64, u16), usize, usize);

/// One write of a group: its bytes, or the same encoded before the lock.
#[derive(Debug, Clone, Copy)]
pub enum GroupWrite<'a> {
    /// `data` at byte `offset`.
    Bytes {
        /// Byte offset in the volume.
        offset: u64,
        /// The bytes.
        data: &'a [u8],
    },
    /// A write encoded by [`RowEncoder::encode`].
    Encoded(&'a EncodedWrite),
}

impl<'a> GroupWrite<'a> {
    fn offset(&self) -> u64 {
        match self {
            GroupWrite::Bytes { offset, .. } => *offset,
            GroupWrite::Encoded(e) => e.offset(),
        }
    }

    fn len(&self) -> usize {
        match self {
            GroupWrite::Bytes { data, .. } => data.len(),
            GroupWrite::Encoded(e) => e.len(),
        }
    }

    /// Its 4 KiB blocks in order (whole blocks only).
    fn blocks(&self) -> Vec<&'a [u8]> {
        match self {
            GroupWrite::Bytes { data, .. } => data.chunks_exact(BLOCK_BYTES).collect(),
            GroupWrite::Encoded(e) => e.data_blocks(),
        }
    }
}

/// The logical blocks `writes` write, in order, when every write is of whole aligned blocks
/// and no block is written twice; `None` otherwise.
fn distinct_keys(writes: &[GroupWrite<'_>]) -> Option<Vec<u64>> {
    let whole = |write: &GroupWrite<'_>| {
        write.offset().is_multiple_of(BLOCK) && write.len().is_multiple_of(BLOCK_BYTES)
    };
    if !writes.iter().all(whole) {
        return None;
    }
    let mut keys = Vec::new();
    for write in writes {
        let first = write.offset() / BLOCK;
        keys.extend(first..first + (write.len() / BLOCK_BYTES) as u64);
    }
    let mut seen: HashSet<u64> = HashSet::with_capacity(keys.len());
    keys.iter().all(|key| seen.insert(*key)).then_some(keys)
}

/// The encoded writes of `writes`, when every one is encoded.
fn encoded_only<'w>(writes: &[GroupWrite<'w>]) -> Option<Vec<&'w EncodedWrite>> {
    writes
        .iter()
        .map(|w| match w {
            GroupWrite::Encoded(e) => Some(*e),
            GroupWrite::Bytes { .. } => None,
        })
        .collect()
}

/// Largest staging buffer a volume keeps between writes: a group's shards (8 MiB of data is
/// 12 MiB of shards on rs:4+2, 24 MiB on mirror:3).
const STAGING_KEPT_BYTES: usize = 32 << 20;

/// Data blocks per part of a write (1 MiB): one part is staged while the one before is on
/// the devices.
const WRITE_PART_BLOCKS: usize = 256;

/// Data blocks below which staging rows is not worth another thread (256 KiB).
const STAGE_SPLIT_BLOCKS: usize = 64;

/// Consecutive rows of one write, staged and written together.
struct WritePart<'p> {
    /// Index of its first row in the write.
    first: usize,
    rows: &'p [PlannedRow],
    /// Its requests (pieces indexed `row × width + shard` over the whole write).
    runs: Vec<Vec<Piece>>,
    /// Which shard-block each 4 KiB of its staging region holds: the runs' pieces in order,
    /// then those of absent members.
    order: Vec<usize>,
}

impl WritePart<'_> {
    /// Fill `bytes` (this part's staging region) and `crcs` (its rows' crcs), its rows split
    /// over the cores when there are enough.
    fn stage(
        &self,
        rows: &Rows,
        codec: &Codec,
        blocks: &[&[u8]],
        birth: u64,
        bytes: &mut [u8],
        crcs: &mut [u32],
    ) {
        let width = rows.geometry().width();
        let base = self.first * width;
        let mut places: Vec<Option<&mut [u8]>> =
            (0..self.rows.len() * width).map(|_| None).collect();
        for (index, place) in self.order.iter().zip(bytes.chunks_exact_mut(BLOCK_BYTES)) {
            places[index - base] = Some(place);
        }
        let data_blocks: usize = self.rows.iter().map(|(_, _, n)| n).sum();
        let splits = (data_blocks / STAGE_SPLIT_BLOCKS).clamp(1, crate::parallel::cores());
        let rows_per_split = self.rows.len().div_ceil(splits).max(1);
        let mut work: Vec<StageRows<'_, '_>> = places
            .chunks_mut(rows_per_split * width)
            .zip(crcs.chunks_mut(rows_per_split * width))
            .zip(self.rows.chunks(rows_per_split))
            .map(|((places, crcs), planned)| StageRows {
                planned,
                places,
                crcs,
            })
            .collect();
        crate::parallel::each_mut(&mut work, |part| part.stage(rows, codec, blocks, birth));
    }
}

/// Some consecutive rows of one write, staged by one thread: their places in the staging
/// buffer and their crcs, both indexed by `row × width + shard` from the first of them.
struct StageRows<'p, 'b> {
    planned: &'p [PlannedRow],
    places: &'p mut [Option<&'b mut [u8]>],
    crcs: &'p mut [u32],
}

impl StageRows<'_, '_> {
    fn stage(&mut self, rows: &Rows, codec: &Codec, blocks: &[&[u8]], birth: u64) {
        static ZEROS: [u8; BLOCK_BYTES] = [0; BLOCK_BYTES];
        let k = rows.k();
        let width = rows.geometry().width();
        let m = codec.parity_chunks();
        for (i, ((slot, row), start, n)) in self.planned.iter().enumerate() {
            let mut data: [&[u8]; MAX_SHARDS] = [&ZEROS; MAX_SHARDS];
            for (j, block) in blocks[*start..start + n].iter().enumerate() {
                data[j] = block;
            }
            let mut parity: [&mut [u8]; MAX_SHARDS] = std::array::from_fn(|_| &mut [][..]);
            // Copies of one chunk (mirror, raid10) share a seed and so a crc.
            let mut chunk_crc: [Option<u32>; MAX_SHARDS] = [None; MAX_SHARDS];
            for s in 0..width {
                let index = i * width + s;
                let Some(place) = self.places[index].take() else {
                    continue; // not staged: a never-written chunk of a narrow row
                };
                match rows.chunk_of(s) {
                    Some(j) => {
                        place.copy_from_slice(data[j]);
                        self.crcs[index] = *chunk_crc[j]
                            .get_or_insert_with(|| rows.crc(*slot, s, *row, birth, place));
                    }
                    None => parity[s - k] = place,
                }
            }
            if m > 0 {
                codec.encode_parity_sep(&data[..k], &mut parity[..m]);
                for (p, bytes) in parity[..m].iter().enumerate() {
                    self.crcs[i * width + k + p] = rows.crc(*slot, k + p, *row, birth, bytes);
                }
            }
        }
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

/// Rows of encoded writes placed, their crcs computed and their requests laid out, not yet
/// landed (FORMAT.md V4.6, "Several groups on the devices"): its segments are held until it
/// lands or is given up.
struct PlacedUnit {
    /// The logical block of each data block, in row order.
    keys: Vec<u64>,
    planned: Vec<PlannedRow>,
    birth: u64,
    /// Every shard-block's row checksum (`row × width + shard`).
    crcs: Vec<u32>,
    /// Its requests (shared with the thread that writes them).
    requests: std::sync::Arc<UnitRequests>,
    /// The segments held for it.
    held: Vec<u64>,
}

/// The requests of a [`PlacedUnit`]: one per run of consecutive places on one member, and
/// where each run's bytes are.
struct UnitRequests {
    runs: Vec<Vec<Piece>>,
    /// Per run: `(write of the batch, first shard-block of its buffer, count)`.
    spans: Vec<Vec<(usize, usize, usize)>>,
}

/// The writes of one unit, as `(write of its group, its rows)`.
type UnitBatch = Vec<(usize, std::ops::Range<usize>)>;

impl UnitRequests {
    /// Write the runs from the buffers of `batch` (the batch the unit was placed from);
    /// every failure, named.
    fn write(
        &self,
        devices: &[Option<SharedDevice>],
        batch: &[(&EncodedWrite, std::ops::Range<usize>)],
    ) -> Vec<WriteFailure> {
        let slices: Vec<Vec<&[u8]>> = self
            .spans
            .iter()
            .map(|spans| {
                spans
                    .iter()
                    .map(|(w, from, count)| batch[*w].0.span(*from, *count))
                    .collect()
            })
            .collect();
        submit_vectored(devices, &self.runs, &slices)
    }
}

impl PlacedUnit {
    /// Give it up unlanded (a unit placed before it failed to land): its rows are left
    /// unreferenced, as a failed write's.
    fn discard(self, map: &mut MapStore) {
        map.unhold_segments(&self.held);
    }
}

/// Write every piece (4 KiB of `bytes` at `index × 4 KiB`), one request per run, all runs
/// submitted together (io_uring where the device has it); every failure, named.
fn write_runs(
    devices: &[Option<SharedDevice>],
    pieces: &[Piece],
    bytes: &[u8],
) -> Vec<WriteFailure> {
    let runs = runs(pieces.to_vec());
    // Aligned, so that O_DIRECT members take them without another copy.
    let buffers: Vec<AlignedBuf> = runs
        .iter()
        .map(|run| {
            let mut buffer = AlignedBuf::zeroed(run.len() * BLOCK_BYTES);
            for (place, p) in buffer.chunks_exact_mut(BLOCK_BYTES).zip(run) {
                place.copy_from_slice(&bytes[p.index * BLOCK_BYTES..(p.index + 1) * BLOCK_BYTES]);
            }
            buffer
        })
        .collect();
    let buffers: Vec<&[u8]> = buffers.iter().map(|b| &b[..]).collect();
    submit_runs(devices, &runs, &buffers)
}

/// Write each run from its buffer (`buffers[r]` for `runs[r]`), one request per run, all
/// submitted together; every failure, named.
fn submit_runs(
    devices: &[Option<SharedDevice>],
    runs: &[Vec<Piece>],
    buffers: &[&[u8]],
) -> Vec<WriteFailure> {
    submit_runs_while(devices, runs, buffers, || ())
}

/// As [`submit_runs`], running `meanwhile` on this thread while the requests are on the
/// devices (see [`run_batch_while`]).
fn submit_runs_while(
    devices: &[Option<SharedDevice>],
    runs: &[Vec<Piece>],
    buffers: &[&[u8]],
    meanwhile: impl FnOnce(),
) -> Vec<WriteFailure> {
    let mut ops = Vec::with_capacity(runs.len());
    let mut issued = Vec::with_capacity(runs.len());
    for (run, buffer) in runs.iter().zip(buffers) {
        if let Some(Some(device)) = run.first().and_then(|p| devices.get(p.device)) {
            ops.push(BatchOp::write(device.as_ref(), run[0].offset, buffer));
            issued.push(run);
        }
    }
    run_batch_while(&mut ops, meanwhile);
    failures_of(ops, &issued)
}

/// As [`submit_runs`], each run written from several slices (`slices[r]` for `runs[r]`).
fn submit_vectored(
    devices: &[Option<SharedDevice>],
    runs: &[Vec<Piece>],
    slices: &[Vec<&[u8]>],
) -> Vec<WriteFailure> {
    let mut ops = Vec::with_capacity(runs.len());
    let mut issued = Vec::with_capacity(runs.len());
    for (run, slices) in runs.iter().zip(slices) {
        if let Some(Some(device)) = run.first().and_then(|p| devices.get(p.device)) {
            ops.push(BatchOp::write_vectored(
                device.as_ref(),
                run[0].offset,
                slices,
            ));
            issued.push(run);
        }
    }
    run_batch_while(&mut ops, || ());
    failures_of(ops, &issued)
}

/// The failed requests of a batch of row writes (`issued[i]`: the run of `ops[i]`), named.
fn failures_of(ops: Vec<BatchOp<'_>>, issued: &[&Vec<Piece>]) -> Vec<WriteFailure> {
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
