//! The pool's data path on format version 4 (docs/FORMAT.md V4.13, "Step 5b, second part"):
//! a [`Volume`] of rows and the paged map behind a reader-writer lock. Reads share it;
//! writes, discards and flushes take it alone (a tree sync a write runs stops reads while it
//! runs).
//!
//! Owns: the volume of a v4 pool and its lock (taken only through `read_volume` and
//! `write_volume`, which count waiting threads, so that a write leader hands it over between
//! groups), the queue of small writes and who leads it (writers that wait, and writes queued
//! for a sink with nobody waiting: `WriteDone`, FORMAT.md V4.6 "Queued writes with nobody
//! waiting"), the map parameters recorded in its superblocks, and the decision the map asks for
//! when a member fails a metadata write (`tolerate`: go on without it once the fault policy
//! took it out of service). Does not own: membership, superblocks
//! and the fault policy (`members.rs`: the volume's member problems go there unchanged), the
//! v3 stripe map (a v4 pool has none: its scrub and rebuild go through `rows_scrub.rs` and
//! `rows_rebuild.rs`), the scrub's and the rebuild's policies.

use super::{CreateOptions, OpenOptions, PoolInner};
use crate::device::DeviceError;
use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::format::v4::LeafFormat;
use crate::format::{MapParams, PoolUuid};
use crate::geometry::Geometry;
use crate::meta::{MapOptions, StatesRecorded, Tolerate};
use crate::pool::{DeviceFault, Members};
use crate::types::DeviceIndex;
use crate::volume::{
    EncodedWrite, GroupWrite, InService, MemberNames, MemberProblem, Observer, ProblemKind,
    RowEncoder, Volume, VolumeOptions, WriteGroup, BLOCK_BYTES,
};
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// Blocks one [`PoolInner::allocation`] call looks at one by one on a v4 pool (64 MiB of
/// volume; runs the map holds no page for are skipped whole and not counted): the answer then
/// covers a prefix of a longer range, as `NBD_CMD_BLOCK_STATUS` allows.
const ALLOCATION_SCAN_BLOCKS: u64 = 16384;

/// Options of a format-version-4 pool chosen at create (recorded in its superblocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V4Options {
    /// Slots per segment (the unit of allocation and cleaning).
    pub segment_slots: u64,
    /// Slots of each uberblock ring.
    pub uberblock_slots: u64,
    /// Bytes of each intent-log half.
    pub log_half_bytes: u64,
    /// Depth of the map tree (keys: 1024^depth).
    pub min_depth: u8,
    /// Most pages one tree sync writes (`None`: computed from the pool's size, FORMAT.md V4.2).
    pub sync_pages_max: Option<usize>,
    /// Largest log record (`None`: min(1 MiB, log half / 8)).
    pub record_max: Option<usize>,
    /// Map leaves in sectors verified one by one (docs/FORMAT.md V4.17), so that a read
    /// whose leaf is not cached reads 4 KiB of it, not 16. `false` makes the pool as builds
    /// before V4.17 did (16-byte leaf records, whole-leaf reads): for tests of such pools and
    /// for measuring the difference.
    pub sectored_leaves: bool,
}

impl Default for V4Options {
    fn default() -> Self {
        Self {
            segment_slots: 64,
            uberblock_slots: 128,
            log_half_bytes: 8 << 20,
            min_depth: 4,
            sync_pages_max: None,
            record_max: None,
            sectored_leaves: true,
        }
    }
}

impl V4Options {
    /// These options as a pool on members of `device_bytes` gets them: each size is a
    /// ceiling, lowered (never raised) so that a small member keeps most of its bytes for
    /// data. Every value is recorded in the superblocks, so an open reads what the create
    /// chose (docs/FORMAT.md V4.2, "Small members"). `slots` is the number of slots the
    /// member's geometry holds with the fitted log and rings (`None`: fit those two only;
    /// the create calls it once for each).
    ///
    /// * Each intent-log half: at most 1/64 of the member (64 KiB at least). A 4 MiB member
    ///   gets 64 KiB; members of 512 MiB and more get the full 8 MiB.
    /// * Each uberblock ring: one slot per 2 MiB of member (4 at least): 128 from 256 MiB.
    /// * Segments: at least 256 of them when the slots allow, each of a power of two slots
    ///   (4 at least). The hard reserve is about 25 segments whatever their size (V4.6), so
    ///   64-slot segments on 256 MiB members took two fifths of a rs:4+2 pool; 256 segments
    ///   keep it near a tenth.
    #[must_use]
    pub fn fitted(&self, device_bytes: u64, slots: Option<u64>) -> Self {
        let log_cap = (device_bytes / 64 / 4096 * 4096).max(64 << 10);
        let ring_cap = (device_bytes / (2 << 20)).max(4);
        let segment_cap = slots.map_or(u64::MAX, |slots| 1 << (slots / 256).max(4).ilog2());
        Self {
            log_half_bytes: self.log_half_bytes.min(log_cap),
            uberblock_slots: self.uberblock_slots.min(ring_cap),
            segment_slots: self.segment_slots.min(segment_cap),
            ..*self
        }
    }
}

/// Which on-disk format a new pool gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatVersion {
    /// Stripes rewritten whole, the map in memory (versions 1 to 3): kept for pools created
    /// before version 4 was the default, and asked for by name.
    V3,
    /// Rows and the paged map (docs/FORMAT.md, version 4), with these options: the default.
    V4(V4Options),
}

impl Default for FormatVersion {
    fn default() -> Self {
        Self::V4(V4Options::default())
    }
}

/// Writes of at most this many bytes wait in the queue to be written in a group; larger ones
/// are written alone. Large sequential writes gain from groups too: the writes queued at QD8
/// of 1 MiB go to the devices as one batch with one map update pass, where one at a time
/// left the devices idle during each write's map work (measured over NBD: 140–183 MiB/s
/// written alone, see README "Format version 4").
const GROUPED_WRITE_MAX: usize = 4 << 20;
/// Most bytes one group carries (the rows of one group are one batch of device requests).
const GROUP_BYTES_MAX: usize = 8 << 20;
/// Most bytes of a group of encoded writes (or any group while others are on the devices):
/// up to [`crate::volume::PIPELINE_UNITS`] such groups are on the devices at once, each
/// acknowledged as it lands (FORMAT.md V4.6, "Several groups on the devices").
const GROUP_PIPELINED_BYTES: usize = 2 << 20;
/// How much a leader goes on writing for others once its own write is carried, in multiples
/// of its own write: its caller then waits about as long as behind eight more writes of its
/// size (a 4 KiB writer 32 KiB, a 1 MiB writer 8 MiB), while a stream of large writes keeps
/// the pipeline full instead of draining it at every hand-over (measured, 1 MiB writes at
/// depth 8: 454–517 MiB/s on mirror:2 without it, 548–604 with 64 MiB; 4 KiB mirror writes
/// over NBD: 26.3k IOPS without it, 22.5k with 64 MiB).
const LEAD_BUDGET_WRITES: usize = 8;

/// Where the outcome of a queued write goes ([`crate::Pool::write_queued`]): told once per
/// write, after the write landed (its bytes are in the map and read back) or failed.
///
/// It is told on the thread that carried the write, a pool's write leader, which may hold the
/// volume's lock meanwhile: `done` must be quick (note the outcome, wake a thread) and must
/// not call the pool.
pub trait WriteDone: Send + Sync {
    /// The write queued with `tag` has its outcome.
    fn done(&self, tag: u64, outcome: Result<()>);
}

/// A write waiting in the queue, and its outcome once a group carried it.
struct Queued {
    payload: Payload,
    outcome: Mutex<Option<Result<()>>>,
    waiter: Waiter,
}

/// Who waits for a queued write's outcome.
enum Waiter {
    /// A thread, parked: unparked when its write has its outcome (in `outcome`), or when it
    /// is first in the queue and nobody leads (so that it leads).
    Thread(std::thread::Thread),
    /// Nobody: the outcome goes to `sink` under `tag`, once (`told`). Such a write has no
    /// thread to lead for it, so a leader does not give up while one is queued.
    Sink {
        sink: Arc<dyn WriteDone>,
        tag: u64,
        started: std::time::Instant,
        told: std::sync::atomic::AtomicBool,
    },
}

impl Queued {
    /// Give it its outcome (the first one given counts) and wake its writer or tell its sink.
    fn finish(&self, outcome: Result<()>) {
        match &self.waiter {
            Waiter::Thread(writer) => {
                let mut slot = self.outcome.lock();
                if slot.is_none() {
                    *slot = Some(outcome);
                }
                drop(slot);
                writer.unpark();
            }
            Waiter::Sink {
                sink, tag, told, ..
            } => {
                if !told.swap(true, Ordering::AcqRel) {
                    sink.done(*tag, outcome);
                }
            }
        }
    }

    /// The thread waiting for it, if one does.
    fn writer(&self) -> Option<&std::thread::Thread> {
        match &self.waiter {
            Waiter::Thread(writer) => Some(writer),
            Waiter::Sink { .. } => None,
        }
    }
}

/// What a queued write carries.
enum Payload {
    /// Its bytes (packed with others under the lock).
    Bytes { offset: u64, data: Vec<u8> },
    /// Its rows, encoded by its writer before it queued (docs/FORMAT.md V4.6, "Large writes").
    Encoded(EncodedWrite),
}

impl Payload {
    fn len(&self) -> usize {
        match self {
            Payload::Bytes { data, .. } => data.len(),
            Payload::Encoded(e) => e.len(),
        }
    }

    fn as_write(&self) -> GroupWrite<'_> {
        match self {
            Payload::Bytes { offset, data } => GroupWrite::Bytes {
                offset: *offset,
                data,
            },
            Payload::Encoded(e) => GroupWrite::Encoded(e),
        }
    }
}

/// The rebuild passes under way on a v4 pool: per position, the replacement and the plan
/// from one walk of the map (`rows_rebuild.rs`).
pub(crate) type RebuildPlans =
    std::collections::BTreeMap<usize, (Arc<super::Replacement>, crate::volume::RebuildPlan)>;

/// The v4 engine of a pool.
pub(crate) struct RowsEngine {
    /// Taken through [`RowsEngine::read_volume`] and [`RowsEngine::write_volume`], which
    /// count the threads waiting for it: a write leader hands it over to them between groups.
    volume: RwLock<Volume>,
    /// Threads waiting for `volume` (a write leader that sees one stops taking groups and
    /// hands the lock over fairly, then goes on: reads, flushes, scrub and status are not held
    /// up behind a stream of queued writes).
    waiting: std::sync::atomic::AtomicUsize,
    pub(crate) params: MapParams,
    /// Small writes waiting to be written: one writer at a time leads, writing every write
    /// queued by then in one group (FORMAT.md V4.6, "Packer policy"), so concurrent 4 KiB
    /// writes share rows instead of each taking a narrow row; the others sleep (parked) until
    /// their write has an outcome, and only its own writer is woken then (with a condition
    /// variable every landing woke every waiting writer: README, Performance, "Landing in
    /// runs, one wake-up per write").
    queue: Mutex<Queue>,
    /// Encodes a writer's rows before it queues (the volume's codec and row arithmetic, which
    /// never change).
    encoder: RowEncoder,
    /// Bytes of the volume (asked by every request's range check: not behind the volume's
    /// lock, which a tree sync holds for a while).
    bytes: AtomicU64,
    /// The plans of the rebuild passes under way, by position, each with the replacement it
    /// fills; held by a rebuild step, so the background driver and a caller's steps take
    /// turns.
    pub(crate) rebuilding: Mutex<RebuildPlans>,
    /// Planted (feature `testing`, [`crate::Pool::plant_leader_panic`]): the next write
    /// leader panics while it lands a group (once).
    #[cfg(feature = "testing")]
    pub(crate) planted_leader_panic: std::sync::atomic::AtomicBool,
    /// Planted (feature `testing`, [`crate::Pool::plant_flush_panic`]): the next flush's
    /// commit panics after it flushed the members, before its log record (once).
    #[cfg(feature = "testing")]
    pub(crate) planted_flush_panic: std::sync::atomic::AtomicBool,
    /// Test hook (feature `testing`, [`crate::Pool::pause_leader_before_giving_up`]):
    /// milliseconds the next leader waits between its last group and giving up (once).
    #[cfg(feature = "testing")]
    pub(crate) leader_pause_ms: AtomicU64,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Arc<Queued>>,
    /// A writer is writing groups (it gives up only with the queue empty).
    leading: bool,
    /// The thread leading, unparked when a write is queued (it may be waiting for its oldest
    /// unit on the devices: the new write goes out at once).
    leader: Option<std::thread::Thread>,
}

/// The leader's office, given up when it is dropped: on return, and on a panic while leading
/// (after the volume's lock is released). Then every write of a group it took and did not
/// land gets [`Error::ThreadPanicked`], the volume refuses further changes until the pool is
/// reopened (its state in memory may be half changed), and the writers waiting are woken: no
/// writer waits for ever behind a leader that is gone.
struct Leading<'a> {
    rows: &'a RowsEngine,
    /// The groups taken and not landed yet.
    taken: std::cell::RefCell<Vec<Arc<QueuedGroup>>>,
    /// The office was given up already (the normal way, under the queue's lock).
    given_up: std::cell::Cell<bool>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                "the write leader panicked; writes are refused until the pool is reopened"
            );
            self.rows.write_volume().fail();
            for group in self.taken.get_mut().drain(..) {
                for queued in &group.0 {
                    queued.finish(Err(Error::ThreadPanicked {
                        thread: "write leader",
                    }));
                }
            }
        }
        if !self.given_up.get() {
            let mut queue = self.rows.queue.lock();
            // Queued writes without a thread of their own would wait for ever: the volume
            // refuses writes now (a panic failed it), so they fail.
            let (told, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut queue.pending)
                .into_iter()
                .partition(|q| q.writer().is_none());
            queue.pending = kept;
            give_up(&mut queue);
            drop(queue);
            for queued in told {
                queued.finish(Err(Error::ThreadPanicked {
                    thread: "write leader",
                }));
            }
        }
    }
}

/// A leader gives up its office (under the queue's lock): the writer of the oldest write
/// still queued that has a thread leads next (it holds the queue's lock from looking at
/// `leading` to sleeping, and an unpark before its park is kept).
fn give_up(queue: &mut Queue) {
    queue.leading = false;
    queue.leader = None;
    if let Some(next) = queue.pending.iter().find_map(|q| q.writer()) {
        next.unpark();
    }
}

impl std::fmt::Debug for RowsEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowsEngine")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// The geometry of a new v4 pool, and the options [fitted](V4Options::fitted) to its members.
pub(crate) fn geometry(
    options: &CreateOptions,
    v4: &V4Options,
    devices: usize,
    device_bytes: u64,
) -> Result<(Geometry, V4Options)> {
    let areas = v4.fitted(device_bytes, None);
    let geometry = Geometry::new_v4(
        options.layout,
        devices,
        options.chunk_bytes,
        device_bytes,
        areas.uberblock_slots,
        areas.log_half_bytes,
    )?;
    let fitted = v4.fitted(device_bytes, Some(geometry.slots));
    Ok((geometry, fitted))
}

/// The geometry a v4 superblock describes.
pub(crate) fn recorded_geometry(
    layout: crate::geometry::Layout,
    devices: usize,
    chunk_bytes: u64,
    device_bytes: u64,
    params: &MapParams,
) -> Result<Geometry> {
    let geometry = Geometry::new_v4(
        layout,
        devices,
        chunk_bytes,
        device_bytes,
        params.uberblock_slots,
        params.log_half_bytes,
    )?;
    if params.metadata_copies != geometry.metadata_copies() as u64 {
        return Err(Error::corrupt_metadata(format!(
            "map parameter metadata_copies = {} but layout {layout} keeps {} copies of a page",
            params.metadata_copies,
            geometry.metadata_copies()
        )));
    }
    Ok(geometry)
}

fn volume_options(params: &MapParams, options: &OpenOptions) -> VolumeOptions {
    let map = MapOptions {
        cache_bytes: options.map_cache_bytes,
        depth: params.min_depth,
        segment_slots: params.segment_slots,
        sync_pages_max: Some(usize::try_from(params.sync_pages_max).unwrap_or(usize::MAX)),
        record_max: Some(usize::try_from(params.record_max).unwrap_or(usize::MAX)),
        read_only: options.read_only,
        leaf_format: leaf_format(params.sectored_leaves),
        ..MapOptions::default()
    };
    let mut volume = VolumeOptions::with_map(map);
    volume.plan_window = options.plan_window_entries;
    with_planted(volume, options)
}

/// The leaf format a pool's map parameters (or create options) name.
fn leaf_format(sectored: bool) -> LeafFormat {
    if sectored {
        LeafFormat::Sectored
    } else {
        LeafFormat::Plain
    }
}

/// The pool's planted bugs that have a counterpart in the volume or its map (feature
/// `testing`): skipped checksum verification of blocks and of pages, a commit that does not
/// flush the rows first, segments released before the root that frees them is durable, a
/// scrub that checks segments taken again since its walk, rows encoded without parity,
/// blocks recovery points hold counted off.
#[cfg(feature = "testing")]
fn with_planted(mut volume: VolumeOptions, options: &OpenOptions) -> VolumeOptions {
    volume.skip_block_verification = options.planted.skip_checksum_verification;
    volume.hedge_disabled = options.planted.hedge_disabled;
    volume.commit_before_rows_durable = options.planted.skip_commit_data_flush;
    volume.map.skip_page_verification = options.planted.skip_page_checksum_verification;
    volume.scrub_without_skip = options.planted.scrub_without_skip;
    volume.encode_without_parity = options.planted.encode_without_parity;
    volume.map.drop_held_block = options.planted.drop_held_block;
    volume.map.abort_keeps_blocks = options.planted.abort_keeps_blocks;
    volume.map.receive_reads_live = options.planted.receive_reads_live;
    volume.map.allocation_hint_late = options.planted.allocation_hint_late;
    volume.map.delete_cursor_ignored = options.planted.delete_cursor_ignored;
    volume.map.stale_sectors = options.planted.stale_sectors;
    if options.planted.release_before_root_durable {
        volume.map.release = crate::meta::ReleaseRule::AtOnce;
    }
    volume
}

#[cfg(not(feature = "testing"))]
fn with_planted(volume: VolumeOptions, _: &OpenOptions) -> VolumeOptions {
    volume
}

/// Create the volume of a new v4 pool and the map parameters to record.
pub(crate) fn create(
    devices: &[Option<SharedDevice>],
    pool: PoolUuid,
    geometry: &Geometry,
    v4: &V4Options,
    options: &OpenOptions,
) -> Result<(Volume, MapParams)> {
    let map = MapOptions {
        cache_bytes: options.map_cache_bytes,
        depth: v4.min_depth,
        segment_slots: v4.segment_slots,
        sync_pages_max: v4.sync_pages_max,
        record_max: v4.record_max,
        leaf_format: leaf_format(v4.sectored_leaves),
        ..MapOptions::default()
    };
    let sectored_leaves = map.leaf_format == LeafFormat::Sectored;
    let volume = Volume::create(
        devices,
        pool.0,
        geometry,
        1,
        &with_planted(VolumeOptions::with_map(map), options),
    )?;
    let params = MapParams {
        page_bytes: crate::format::v4::PAGE_BYTES as u64,
        segment_slots: v4.segment_slots,
        log_half_bytes: geometry.log_half_bytes(),
        record_max: volume.map().record_max() as u64,
        uberblock_slots: v4.uberblock_slots,
        // What the creating cache lets one sync dirty, but never below the least an open
        // accepts (a pool made with a map cache under 32 pages could not be opened again).
        sync_pages_max: (volume.map().sync_page_limit() as u64).max(MapParams::MIN_SYNC_PAGES),
        min_depth: v4.min_depth,
        metadata_copies: geometry.metadata_copies() as u64,
        timeline: 1,
        recovery_points: false,
        received_streams: false,
        // The map counts from its first uberblock (docs/FORMAT.md V4.10f).
        referenced_counts: true,
        paced_deletes: false,
        failure_domains: false,
        sectored_leaves,
    };
    Ok((volume, params))
}

impl RowsEngine {
    /// A write ready for the queue: encoded here, on the writer's thread, while the group
    /// ahead is on the devices, when it is of whole rows (the volume checks the range again
    /// under the lock).
    fn queued(&self, offset: u64, data: &[u8]) -> Arc<Queued> {
        let payload = match self.encoder.encode(offset, data) {
            Some(encoded) => Payload::Encoded(encoded),
            None => Payload::Bytes {
                offset,
                data: data.to_vec(),
            },
        };
        Arc::new(Queued {
            payload,
            outcome: Mutex::new(None),
            waiter: Waiter::Thread(std::thread::current()),
        })
    }

    /// A write for the queue whose outcome goes to `sink` (its bytes kept, not copied, when
    /// they are not encoded here).
    fn queued_for(
        &self,
        offset: u64,
        data: Vec<u8>,
        sink: Arc<dyn WriteDone>,
        tag: u64,
        started: std::time::Instant,
    ) -> Arc<Queued> {
        let payload = match self.encoder.encode(offset, &data) {
            Some(encoded) => Payload::Encoded(encoded),
            None => Payload::Bytes { offset, data },
        };
        Arc::new(Queued {
            payload,
            outcome: Mutex::new(None),
            waiter: Waiter::Sink {
                sink,
                tag,
                started,
                told: std::sync::atomic::AtomicBool::new(false),
            },
        })
    }

    /// The engine of a volume just created or opened.
    pub(crate) fn new(volume: Volume, params: MapParams) -> Self {
        Self {
            bytes: AtomicU64::new(volume.volume_bytes()),
            encoder: volume.encoder(),
            volume: RwLock::new(volume),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            params,
            queue: Mutex::new(Queue::default()),
            rebuilding: Mutex::new(RebuildPlans::default()),
            #[cfg(feature = "testing")]
            planted_leader_panic: std::sync::atomic::AtomicBool::new(false),
            #[cfg(feature = "testing")]
            planted_flush_panic: std::sync::atomic::AtomicBool::new(false),
            #[cfg(feature = "testing")]
            leader_pause_ms: AtomicU64::new(0),
        }
    }

    /// Open the volume of a v4 pool.
    pub(crate) fn open(
        devices: &[Option<SharedDevice>],
        pool: PoolUuid,
        geometry: &Geometry,
        params: MapParams,
        options: &OpenOptions,
    ) -> Result<Self> {
        let volume = Volume::open(
            devices,
            pool.0,
            geometry,
            params.timeline,
            &volume_options(&params, options),
        )?;
        Ok(Self::new(volume, params))
    }

    /// The volume, shared (a thread that has to wait is counted while it does).
    pub(crate) fn read_volume(&self) -> RwLockReadGuard<'_, Volume> {
        self.counted(|| self.volume.try_read(), || self.volume.read())
    }

    /// The volume, alone (a thread that has to wait is counted while it does).
    pub(crate) fn write_volume(&self) -> RwLockWriteGuard<'_, Volume> {
        self.counted(|| self.volume.try_write(), || self.volume.write())
    }

    /// A guard taken at once (`try_take`), or by waiting (`take`) counted in `waiting`.
    fn counted<G>(&self, try_take: impl FnOnce() -> Option<G>, take: impl FnOnce() -> G) -> G {
        if let Some(guard) = try_take() {
            return guard;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let guard = take();
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    /// Whether a thread waits for the volume.
    fn others_waiting(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// Bytes of the volume.
    pub(crate) fn volume_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Serve exactly `bytes` (see [`Volume::limit_bytes`]); `false` if they do not fit.
    pub(crate) fn limit_bytes(&self, bytes: u64) -> bool {
        let fits = self.write_volume().limit_bytes(bytes);
        if fits {
            self.bytes.store(bytes, Ordering::Relaxed);
        }
        fits
    }
}

/// The next group from the queue, in arrival order: at most `max_bytes` (and at least one
/// write).
fn take_group(queue: &mut Vec<Arc<Queued>>, max_bytes: usize) -> Vec<Arc<Queued>> {
    let mut bytes = 0;
    let mut count = 0;
    for queued in queue.iter() {
        if count > 0 && bytes + queued.payload.len() > max_bytes {
            break;
        }
        bytes += queued.payload.len();
        count += 1;
    }
    queue.drain(..count).collect()
}

/// Writes taken from the queue together, as the volume's pipeline carries them.
struct QueuedGroup(Vec<Arc<Queued>>);

impl WriteGroup for QueuedGroup {
    fn writes(&self) -> Vec<GroupWrite<'_>> {
        self.0.iter().map(|q| q.payload.as_write()).collect()
    }
}

/// The hook that decides about a member failing a metadata write or flush: the fault policy
/// counts a write error (the member is faulted, durably, when the pool can lose it, else
/// kept in service as degraded), and the map goes on without it only if it is now out of
/// service and every member still in service holds that in its superblocks (written and
/// flushed). Otherwise the map fails the operation and must be reopened: the pool then refuses
/// writes with that error (reads go on), never silently rolling back acknowledged writes.
pub(crate) fn tolerate(inner: Weak<PoolInner>) -> Tolerate {
    Tolerate(Arc::new(
        move |member: usize, offset: Option<u64>, error: &DeviceError| {
            let Some(inner) = inner.upgrade() else {
                return false;
            };
            if member >= inner.geometry.devices {
                return false;
            }
            let index = DeviceIndex(member);
            if super::fill::is_refusal(error) {
                // The fill device of a position out of service refused it (`fill.rs`): the
                // member is recorded out of service by the attach; the replacement's own
                // failures are its own.
                return true;
            }
            tracing::warn!(member, ?offset, %error, "a member failed a metadata write");
            inner
                .members
                .record_error(index, offset, DeviceFault::Write(error));
            if inner.members.get(index).is_online() {
                return false;
            }
            // Going on without it is safe only once every member still in service durably
            // records it out of service: otherwise, after a crash, it could be opened as
            // current and, alone, roll back the commit it missed (simulation seed 7072).
            // A member that fails that superblock write goes the same way (simulation seed 7292:
            // one flaky superblock write must not stop a pool that can lose both).
            inner.members.record_everywhere()
        },
    ))
}

/// The check every commit and tree sync of the map makes before it writes: a member that
/// left service is recorded so on every member in service first (written now if it is
/// owed), or nothing is made durable and the caller hears that the pool is unavailable
/// (FORMAT.md V4.16 §3, review (5); a flush made the same check before it took the volume's
/// lock, tree syncs inside writes, the cleaner, close and recovery points did not).
pub(crate) fn states_recorded(inner: Weak<PoolInner>) -> StatesRecorded {
    StatesRecorded(Arc::new(move || {
        let Some(inner) = inner.upgrade() else {
            return Ok(());
        };
        inner.record_owed_states()
    }))
}

/// Whether a member is still written to by the volume: in service, or a position whose
/// replacement is being filled (its writes go to the replacement, `fill.rs`).
pub(crate) fn in_service(inner: Weak<PoolInner>) -> InService {
    InService(Arc::new(move |member: usize| {
        let Some(inner) = inner.upgrade() else {
            return true;
        };
        if member >= inner.geometry.devices {
            return true;
        }
        let member = inner.members.get(DeviceIndex(member));
        member.is_online() || member.replacement().is_some()
    }))
}

/// Names the volume's members by their devices' paths (as the pool records them now).
pub(crate) fn member_names(inner: Weak<PoolInner>) -> MemberNames {
    MemberNames(Arc::new(move |position: usize| match inner.upgrade() {
        Some(inner) if position < inner.geometry.devices => {
            inner.members.get(DeviceIndex(position)).path()
        }
        _ => format!("member {position}"),
    }))
}

/// An observer that hands the volume's member problems to the pool's fault policy.
pub(crate) fn observer(inner: Weak<PoolInner>) -> Observer {
    Observer(Arc::new(move |problem: &MemberProblem<'_>| {
        if let Some(inner) = inner.upgrade() {
            record(&inner.members, problem, &inner.geometry);
        }
    }))
}

fn record(members: &Members, problem: &MemberProblem<'_>, geometry: &Geometry) {
    let index = DeviceIndex(problem.member);
    if problem.member >= geometry.devices {
        return;
    }
    let offset = Some(problem.offset);
    if let ProblemKind::Read(error) | ProblemKind::Write(error) = &problem.kind {
        if super::fill::is_refusal(error) {
            // The fill device of a position out of service refused a read or a write
            // (`fill.rs`): no member is there to blame.
            return;
        }
    }
    match &problem.kind {
        ProblemKind::Read(error) => members.record_error(index, offset, DeviceFault::Read(error)),
        ProblemKind::Write(error) => members.record_error(index, offset, DeviceFault::Write(error)),
        ProblemKind::Checksum { expected, found } => {
            let corruption = crate::error::Corruption {
                device: members.get(index).path(),
                offset: problem.offset,
                slot: problem.slot,
                shard: problem.shard,
                expected: *expected,
                found: *found,
            };
            members.record_error(index, offset, DeviceFault::Checksum(&corruption));
        }
        // A repair in place, counted and logged as a v3 heal is (`status`'s REPAIRED; an
        // info event with its device and offset, README "Logging").
        ProblemKind::Healed => {
            let member = members.get(index);
            member
                .errors
                .repaired
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(device = %member.path(), offset = problem.offset, slot = problem.slot, shard = problem.shard, "healed shard-block");
        }
    }
}

impl PoolInner {
    /// The v4 engine (`None` on a v3 pool).
    pub(crate) fn rows(&self) -> Option<&RowsEngine> {
        self.rows.as_ref()
    }

    /// The members as the volume's reads see them: each position's device while it is in
    /// service.
    pub(crate) fn volume_devices(&self) -> Vec<Option<SharedDevice>> {
        self.members.data.iter().map(|m| m.device()).collect()
    }

    /// The members as the volume's writes see them: as [`PoolInner::volume_devices`], with a
    /// fill device at every position whose replacement is being filled, so that rows, pages,
    /// log records and uberblocks written meanwhile reach it too (`fill.rs`).
    pub(crate) fn write_devices(&self) -> Vec<Option<SharedDevice>> {
        self.members
            .data
            .iter()
            .map(|m| match m.replacement() {
                Some(replacement) => Some(super::fill::FillDevice::shared(m.device(), replacement)),
                None => m.device(),
            })
            .collect()
    }

    pub(crate) fn rows_read(&self, rows: &RowsEngine, offset: u64, buf: &mut [u8]) -> Result<()> {
        let volume = rows.read_volume();
        volume.read(&self.volume_devices(), offset, buf)
    }

    /// A write. A small one is queued and written in a group with every other queued by the
    /// time a writer holds the volume's lock: the writer that takes the lock first writes them
    /// all, and the others find their outcome when they take it in turn.
    pub(crate) fn rows_write(&self, rows: &RowsEngine, offset: u64, data: &[u8]) -> Result<()> {
        self.check_available()?;
        if !Self::rows_queues(data.len()) {
            let mut volume = rows.write_volume();
            // The members as they are once the lock is held (a fault while waiting is seen).
            let result = volume.write(&self.write_devices(), offset, data);
            return self.unavailable_if_failed(&volume, result);
        }
        let mine = rows.queued(offset, data);
        self.carry(rows, std::slice::from_ref(&mine));
        let outcome = mine.outcome.lock().take();
        outcome.unwrap_or(Err(Error::ThreadPanicked {
            thread: "write leader",
        }))
    }

    /// Several writes queued together, as concurrent writers' would be, then carried: the
    /// simulation's way to put several groups in the pipeline from one thread (feature
    /// `testing`). One outcome per write, in order.
    #[cfg(feature = "testing")]
    pub(crate) fn rows_write_together(
        &self,
        rows: &RowsEngine,
        writes: &[(u64, &[u8])],
    ) -> Vec<Result<()>> {
        if self.check_available().is_err() {
            return writes.iter().map(|_| self.check_available()).collect();
        }
        let queued: Vec<Arc<Queued>> = writes
            .iter()
            .map(|(offset, data)| rows.queued(*offset, data))
            .collect();
        self.carry(rows, &queued);
        queued
            .iter()
            .map(|q| {
                let outcome = q.outcome.lock().take();
                outcome.unwrap_or(Err(Error::ThreadPanicked {
                    thread: "write leader",
                }))
            })
            .collect()
    }

    /// Queue `writes` and return once the last has an outcome, leading whenever no other
    /// writer does.
    fn carry(&self, rows: &RowsEngine, writes: &[Arc<Queued>]) {
        let Some(last) = writes.last() else {
            return;
        };
        let mut queue = rows.queue.lock();
        queue.pending.extend(writes.iter().cloned());
        if let Some(leader) = &queue.leader {
            leader.unpark();
        }
        loop {
            if last.outcome.lock().is_some() {
                return;
            }
            if queue.leading {
                // Woken by the leader when this write has its outcome, or when the leader
                // gives up with it first in the queue; a wake-up between here and the park is
                // kept (and a spurious one only looks again).
                drop(queue);
                std::thread::park();
                queue = rows.queue.lock();
                continue;
            }
            queue.leading = true;
            queue.leader = Some(std::thread::current());
            drop(queue);
            self.lead_groups(rows, Some(last));
            queue = rows.queue.lock();
        }
    }

    /// Queue a write whose outcome goes to `sink` under `tag` (see
    /// [`crate::Pool::write_queued`]). `true`: nobody led, the office is now the caller's
    /// and it must call [`PoolInner::rows_lead_queued`] (no other writer takes it meanwhile).
    pub(crate) fn rows_write_queued(
        &self,
        rows: &RowsEngine,
        offset: u64,
        data: Vec<u8>,
        sink: Arc<dyn WriteDone>,
        tag: u64,
        started: std::time::Instant,
    ) -> bool {
        let queued = rows.queued_for(offset, data, sink, tag, started);
        let mut queue = rows.queue.lock();
        queue.pending.push(queued);
        if queue.leading {
            if let Some(leader) = &queue.leader {
                leader.unpark();
            }
            return false;
        }
        // Leading from now on; the thread that leads is named when it starts.
        queue.leading = true;
        true
    }

    /// Lead, with the office [`PoolInner::rows_write_queued`] gave: write queued groups until
    /// no write without a thread of its own is queued.
    pub(crate) fn rows_lead_queued(&self, rows: &RowsEngine) {
        rows.queue.lock().leader = Some(std::thread::current());
        self.lead_groups(rows, None);
    }

    /// Whether a write that is small enough to be queued goes through the queue.
    pub(crate) fn rows_queues(data_len: usize) -> bool {
        data_len <= GROUPED_WRITE_MAX
    }

    /// Write queued groups through the volume's pipeline (FORMAT.md V4.6, "Several groups on
    /// the devices") while any are queued, at most [`LEAD_BUDGET_WRITES`] times the size of
    /// `mine` more once `mine` is carried (no more at all without `mine`); then give up
    /// leading under the queue's lock and wake the writer of the oldest write still queued,
    /// which leads next: no writer waits behind an endless stream of others' writes. A queued
    /// write whose outcome goes to a sink has no writer to lead for it: the leader goes on
    /// while one is queued.
    fn lead_groups(&self, rows: &RowsEngine, mine: Option<&Queued>) {
        // Declared before the volume's lock, so that on a panic it runs after the lock is
        // given up (see `Leading`).
        let leading = Leading {
            rows,
            taken: std::cell::RefCell::new(Vec::new()),
            given_up: std::cell::Cell::new(false),
        };
        let budget = mine.map_or(0, |m| LEAD_BUDGET_WRITES * m.payload.len());
        let mine_done = || mine.is_none_or(|m| m.outcome.lock().is_some());
        let mut after_mine = 0usize;
        let mut volume = rows.write_volume();
        loop {
            let mut taken_now = 0usize;
            volume.write_pipelined(
                // The members as they are at each placement and landing (a fault meanwhile is
                // seen: nothing more goes to a member taken out of service).
                &|| self.write_devices(),
                |in_flight| {
                    // Someone waits for the volume: let the groups in flight land, then hand
                    // it over (at least one group each time, so that writes go on too).
                    if taken_now > 0 && rows.others_waiting() {
                        return None;
                    }
                    let mut queue = rows.queue.lock();
                    let sinks_queued = queue.pending.iter().any(|q| q.writer().is_none());
                    if mine_done() && after_mine >= budget && !sinks_queued {
                        return None;
                    }
                    // Encoded writes are pipelined: smaller groups then, so that each is
                    // acknowledged as it lands while the others are on the devices.
                    let pipelined = queue
                        .pending
                        .first()
                        .is_some_and(|q| matches!(q.payload, Payload::Encoded(_)));
                    let max = if pipelined || in_flight {
                        GROUP_PIPELINED_BYTES
                    } else {
                        GROUP_BYTES_MAX
                    };
                    let group = take_group(&mut queue.pending, max);
                    if group.is_empty() {
                        return None;
                    }
                    taken_now += 1;
                    if mine_done() {
                        after_mine += group.iter().map(|q| q.payload.len()).sum::<usize>();
                    }
                    let group = Arc::new(QueuedGroup(group));
                    leading.taken.borrow_mut().push(Arc::clone(&group));
                    Some(group)
                },
                |volume, group, outcomes| {
                    #[cfg(feature = "testing")]
                    if rows.planted_leader_panic.swap(false, Ordering::Relaxed) {
                        panic!("planted: the write leader panics while it lands a group");
                    }
                    for (queued, outcome) in group.0.iter().zip(outcomes) {
                        let outcome = self.unavailable_if_failed(volume, outcome);
                        if let Waiter::Sink { started, .. } = &queued.waiter {
                            self.requests.record(
                                super::Request::Write,
                                queued.payload.len(),
                                *started,
                                outcome.is_ok(),
                            );
                        }
                        queued.finish(outcome);
                    }
                    leading
                        .taken
                        .borrow_mut()
                        .retain(|taken| !std::ptr::eq(Arc::as_ptr(taken), group));
                },
            );
            if rows.others_waiting() {
                // A fair hand-over: the waiting threads have the volume, then this leader
                // takes it back.
                RwLockWriteGuard::bump(&mut volume);
            }
            #[cfg(feature = "testing")]
            {
                let pause = rows.leader_pause_ms.swap(0, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(pause));
            }
            let mut queue = rows.queue.lock();
            // Its own write not carried yet (the leader stopped for a waiting thread), or a
            // write without a thread of its own still queued (queued after the last group was
            // taken, or left when the leader stopped): the leader goes on.
            if !mine_done() || queue.pending.iter().any(|q| q.writer().is_none()) {
                continue;
            }
            give_up(&mut queue);
            leading.given_up.set(true);
            break;
        }
        drop(volume);
        drop(leading);
    }

    pub(crate) fn rows_discard(&self, rows: &RowsEngine, offset: u64, length: u64) -> Result<()> {
        self.check_available()?;
        let mut volume = rows.write_volume();
        let result = volume.discard(&self.write_devices(), offset, length);
        self.unavailable_if_failed(&volume, result)
    }

    /// A metadata write failed on a member the pool could not take out of service (the map
    /// is then failed and refuses every change until the pool is reopened): the pool is
    /// unavailable for writes, which is what the caller hears, naming that member beside
    /// those already lost (as a v3 commit that cannot reach enough members). Any other
    /// error is returned as it is.
    pub(crate) fn unavailable_if_failed<T>(&self, volume: &Volume, result: Result<T>) -> Result<T> {
        match result {
            Err(error) if volume.map().failed() => {
                let device = match &error {
                    Error::Io { device, .. } => Some(device.clone()),
                    Error::CorruptMetadata {
                        device: Some(device),
                        ..
                    } => Some(device.clone()),
                    _ => None,
                };
                tracing::error!(%error, "the map could not write its metadata; writes are refused until the pool is reopened");
                Err(self.unavailable_with(device))
            }
            other => other,
        }
    }

    /// Record a member's leaving of service that the superblocks may not hold yet (every
    /// commit and tree sync asks first: FORMAT.md V4.16 §7, review F3, and §3 review (5)).
    ///
    /// # Errors
    /// [`Error::PoolUnavailable`] (nothing may be made durable until the record is written),
    /// its lost members including the one whose superblock write failed and that the pool
    /// cannot lose (the simulation's seed 7002076 found a bare I/O error here beyond the
    /// tolerance, which it rightly counts unclear).
    pub(crate) fn record_owed_states(&self) -> Result<()> {
        if !self.members.state_unrecorded() {
            return Ok(());
        }
        self.members.record_states_or_name().map_err(|error| {
            tracing::error!(%error, "a member's leaving of service could not be recorded; nothing is made durable until it is");
            let failing = match error {
                Error::Io { device, .. } => Some(device),
                _ => None,
            };
            self.unavailable_with(failing)
        })
    }

    /// A flush: the volume's (members flushed, then the map committed). A member that fails
    /// a metadata write or flush is taken out of service by the tolerance hook when the pool
    /// can lose it, and the flush goes on without it.
    pub(crate) fn rows_flush(&self, rows: &RowsEngine) -> Result<()> {
        // Beyond the tolerance nothing can be made durable: say so, as for a write.
        self.check_available()?;
        // A member that left service is recorded so before any commit goes on without it:
        // otherwise a crash could reopen it as current (FORMAT.md V4.16 §7, review F3).
        self.record_owed_states()?;
        let mut volume = rows.write_volume();
        if self.members.unflushed_lost() {
            // A flush error on a member the pool cannot lose was taken by a superblock write:
            // what the member held in its cache may be gone, so no commit may say otherwise.
            volume.fail();
            return self.unavailable_if_failed(
                &volume,
                Err(Error::corrupt_metadata(
                    "a member the pool cannot lose failed a flush outside a commit: writes since the last commit may not be on it; reopen the pool",
                )),
            );
        }
        let devices = self.write_devices();
        let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            #[cfg(feature = "testing")]
            if rows.planted_flush_panic.swap(false, Ordering::Relaxed) {
                // Half a commit: the members flushed, no log record.
                let _ = volume.map().flush_members(&devices);
                panic!("planted: a flush's commit panics before its log record");
            }
            volume.flush(&devices).map(|_| ())
        }));
        let result = match flushed {
            Ok(result) => result,
            Err(panic) => {
                // The map may be half changed: refuse every later change (as a write leader
                // that panics does) rather than let the next flush commit it.
                volume.fail();
                std::panic::resume_unwind(panic);
            }
        };
        if result.is_ok() {
            // Every row and page born before the sequence the map hands out next was written
            // before this flush (under the volume's exclusive lock: nothing is in flight),
            // which succeeded on every member still in service (V4.16 §3, "S, exactly"). Not
            // "the sequence committed + 1": a flush with nothing to commit takes no sequence,
            // and the rows written next are still born in it (simulation seed 2200028).
            self.members.note_durable(volume.map().next_sequence());
        }
        self.unavailable_if_failed(&volume, result)
    }

    /// At a clean close of a writable v4 pool: a tree sync after the last commit, so that the
    /// next open replays no log and every pointer is in the tree (not in the overlay a replay
    /// builds in memory). Costs the pages the commits since the last sync dirtied.
    pub(crate) fn rows_close_sync(&self) -> Result<()> {
        let Some(rows) = self.rows() else {
            return Ok(());
        };
        if self.members.read_only() {
            return Ok(());
        }
        let mut volume = rows.write_volume();
        let synced = volume.sync(&self.write_devices()).map(|_| ());
        self.unavailable_if_failed(&volume, synced)
    }

    /// See [`crate::Pool::allocation`] for a v4 pool: per 4 KiB block, whether its pointer
    /// reads zeros, for at most [`ALLOCATION_SCAN_BLOCKS`] blocks looked at one by one; from
    /// a block that reads zeros, the map's next key that may not ([`crate::meta::MapStore::next_visible`])
    /// ends the unwritten run at once, so a sparse volume answers for terabytes per call.
    pub(crate) fn rows_allocation(
        &self,
        rows: &RowsEngine,
        offset: u64,
        length: u64,
        max_extents: usize,
    ) -> Vec<super::Extent> {
        let block = BLOCK_BYTES as u64;
        let devices = self.volume_devices();
        let volume = rows.read_volume();
        let map = volume.map();
        let end = offset + length;
        let first = offset / block;
        let stop = (end - 1) / block + 1;
        let mut extents: Vec<super::Extent> = Vec::new();
        let mut key = first;
        let mut looked = 0;
        // Whether the last block looked at read zeros: only then is the next data key asked for
        // (in written data the next block is usually written too).
        let mut after_zeros = true;
        while key < stop && looked < ALLOCATION_SCAN_BLOCKS {
            if after_zeros {
                // A map page that cannot be read gives no hint: the blocks are looked at one
                // by one (and then count as allocated).
                let next = map
                    .next_visible(&devices, key)
                    .map_or(key, |next| next.map_or(stop, |n| n.clamp(key, stop)));
                if next > key {
                    let from = (key * block).max(offset);
                    let to = (next * block).min(end);
                    if !super::discard::extend_runs(&mut extents, from..to, false, max_extents) {
                        return extents;
                    }
                    key = next;
                    continue;
                }
            }
            // A block whose pointer cannot be read counts as allocated (it is not known to
            // read zeros).
            let allocated = map
                .visible(&devices, key)
                .map_or(true, |p| !p.reads_zeros());
            let from = (key * block).max(offset);
            let to = ((key + 1) * block).min(end);
            if !super::discard::extend_runs(&mut extents, from..to, allocated, max_extents) {
                return extents;
            }
            after_zeros = !allocated;
            key += 1;
            looked += 1;
        }
        extents
    }
}
