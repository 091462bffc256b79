//! The pool: the public API, and the only module that combines devices, geometry, format and
//! codec.
//!
//! Concurrency: each logical stripe has a lock (hashed into a fixed table) held across its
//! read or its read-modify-write, so a stripe's slot cannot change under a reader. A commit
//! (`flush`) takes the meta mutex (one commit at a time), snapshots the dirty map entries under
//! the map mutex, and then does its device I/O while writers go on filling the next epoch.
//! Lock order: meta mutex → map mutex; stripe lock → map mutex. Device I/O is never done under
//! the map mutex.

mod admin;
mod away;
mod batch;
mod commit;
mod copy;
mod discard;
mod fill;
mod flush_group;
mod handle;
mod import;
mod io;
mod maintenance;
mod members;
mod open;
#[cfg(feature = "testing")]
mod planted;
mod policy;
#[cfg(test)]
mod rebuild_race_tests;
mod reclaim;
mod recovery;
mod replacement;
mod requests;
mod rows;
mod rows_rebuild;
mod rows_scrub;
#[cfg(test)]
mod scrub_tests;
mod send;
mod status;

pub use crate::rebuild::{RebuildProgress, StepOutcome};
pub use crate::scrub::{DeviceScrubReport, ScrubEnd, ScrubOptions, ScrubProgress, ScrubReport};
pub use admin::{Cleared, ClearedState};
pub use away::AwayOutcome;
pub use copy::{CopyProgress, CopyReport};
pub use discard::Extent;
pub use handle::{PoolHandle, PoolRef};
pub use import::{find_pools, FoundDevice, FoundPool};
pub use maintenance::ShardLocation;
pub use members::{
    DeviceFault, ErrorCounters, ErrorKind, FaultPolicy, Identity, MemberDevice, Members,
    Replacement, RetiredDevice, Spare,
};
#[cfg(feature = "testing")]
pub(crate) use open::allow_stripe_map_writes;
pub use open::{clear_label, read_label};
#[cfg(feature = "testing")]
pub use planted::PlantedBugs;
pub use policy::{expired as expired_recovery_points, PolicyPoint, Retention, SnapshotPolicy};
pub use reclaim::{DeletingPoint, ReclaimReport};
pub use recovery::RecoveryPointInfo;
pub use requests::{Request, RequestMetrics};
pub use rows::{FormatVersion, V4Options, WriteDone};
pub use send::{ChangedRange, ReadSeek, ReceivePhase, ReceiveReport, SendReport};
pub use status::{DeviceStatus, PoolHealth, PoolStatus, RecoveryPointsStatus, STATUS_EVENTS};

/// Run `work` with the pool's device-parallel work on this thread done one device after
/// another, in order (what a deterministic simulation needs); restored afterwards.
#[cfg(feature = "testing")]
pub(crate) fn run_sequentially<R>(work: impl FnOnce() -> R) -> R {
    let before = parallel::is_sequential();
    parallel::set_sequential(true);
    let result = work();
    parallel::set_sequential(before);
    result
}

// Lower modules the pool drives (named here so the pool's files reach them as `super::…`).
use crate::parallel;
use crate::scrub;

use crate::codec::Codec;
use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::format::{PoolUuid, StripeMap};
use crate::geometry::{Geometry, Layout};
use crate::types::{SlotId, StripeId};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Default chunk size: small enough that a 4 KiB overwrite does not rewrite megabytes, large
/// enough that sequential I/O issues big requests.
pub const DEFAULT_CHUNK_BYTES: u64 = 16 * 1024;
/// Default checksum block: one crc32c per 4 KiB of every shard, so a 4 KiB read fetches and
/// verifies 4 KiB, not a whole chunk (costs 4 bytes of map memory per 4 KiB of device).
pub const DEFAULT_CHECKSUM_BYTES: u64 = 4096;
/// Default number of read/checksum errors within [`DEFAULT_ERROR_WINDOW`] after which a device
/// is marked degraded (ZFS's `checksum_n`).
pub const DEFAULT_ERROR_THRESHOLD: u64 = 10;
/// Default window of that error rate (ZFS's `checksum_t`).
pub const DEFAULT_ERROR_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);
const STRIPE_LOCKS: usize = 256;
/// Default cap of a v4 pool's map cache: 256 MiB. Map leaves take 4 MiB per GiB written, so
/// this holds the whole map of 64 GiB written; a bigger map is paged, and the cap, not the
/// volume, bounds memory (docs/FORMAT.md V4.9).
pub const DEFAULT_MAP_CACHE_BYTES: usize = 256 << 20;

/// How long a member that stopped answering may be away before it is faulted: 10 minutes,
/// Ceph's `mon_osd_down_out_interval` (docs/FORMAT.md V4.16 §3).
pub const DEFAULT_UNAVAILABLE_GRACE: std::time::Duration = std::time::Duration::from_secs(600);
/// How long a returning member must keep answering before it is resynced (V4.16 §7).
pub const DEFAULT_RETURNING_QUIET: std::time::Duration = std::time::Duration::from_secs(2);

/// Options for [`Pool::create`].
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Redundancy layout.
    pub layout: Layout,
    /// Chunk size (multiple of 4 KiB).
    pub chunk_bytes: u64,
    /// Checksum block size (multiple of 4 KiB dividing the chunk size): the smallest piece a
    /// read can fetch and verify on its own. Equal to the chunk: least map memory.
    pub checksum_bytes: u64,
    /// Use at most this many bytes of each device (default: the smallest device's size).
    pub device_bytes: Option<u64>,
    /// Overwrite devices that hold another pool's superblock.
    pub force: bool,
    /// The on-disk format (version 3 by default while the pool moves to version 4; a v4
    /// pool ignores `checksum_bytes`: its checksum block is 4 KiB).
    pub format: FormatVersion,
    /// Options that also apply when opening.
    pub open: OpenOptions,
    /// Failure domains (docs/FORMAT.md V4.16): empty, or one per data device (in order) then
    /// one per spare; create refuses a set whose loss of one domain would lose data.
    pub domains: Vec<String>,
}

impl CreateOptions {
    /// Defaults for `layout`.
    #[must_use]
    pub fn new(layout: Layout) -> Self {
        Self {
            layout,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            checksum_bytes: DEFAULT_CHECKSUM_BYTES,
            device_bytes: None,
            force: false,
            format: FormatVersion::default(),
            open: OpenOptions::default(),
            domains: Vec::new(),
        }
    }
}

/// Options for [`Pool::open`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Read/checksum errors within `error_window` after which a device is marked degraded (it
    /// stays in service; see [`FaultPolicy`]).
    pub error_threshold: u64,
    /// The window of that error rate.
    pub error_window: std::time::Duration,
    /// Look, never change: open the members `O_RDONLY` with a shared lock, write no byte (no
    /// commit, no superblock, no fault record, no heal), refuse writes with
    /// [`Error::ReadOnly`], run no background work. What `status`, `check`, `metrics`, `read`
    /// and `scrub --check-only` use.
    pub read_only: bool,
    /// Run rebuilds in a background thread while the pool is open, and resume a scrub that was
    /// interrupted (not paused) when the pool was last open. Off: call [`Pool::rebuild_step`]
    /// or [`Pool::run_rebuilds`] and [`Pool::scrub_with`] yourself (tests, the CLI).
    pub background_rebuild: bool,
    /// Attach an available spare to a faulted position automatically.
    pub auto_replace: bool,
    /// Rebuild rate limit in bytes per second (`None`: as fast as the devices allow, still
    /// yielding to foreground I/O).
    pub rebuild_rate_bytes_per_s: Option<u64>,
    /// Open even when members are missing and the ones present cannot prove they hold the
    /// newest data (see [`Error::CannotProveCurrent`]).
    pub force: bool,
    /// Format version 4: bytes of metadata pages the map's cache may hold (interior pages
    /// stay resident beyond it, docs/FORMAT.md V4.9).
    pub map_cache_bytes: usize,
    /// Format version 4: how long a member that stopped answering (a remote export whose
    /// host is cut off) stays unavailable, expected back and resynced by what changed,
    /// before it is faulted and replaced (docs/FORMAT.md V4.16; Ceph's down → out interval).
    pub unavailable_grace: std::time::Duration,
    /// How long a member that answers again must go on answering before it is resynced.
    pub returning_quiet: std::time::Duration,
    /// Format version 4: the most entries (a data segment, a referenced metadata page) a
    /// rebuild's or a scrub's plan holds at once; a pass over more walks the map a window at
    /// a time (docs/FORMAT.md V4.13, "Plans in windows"). 0: the default, 256 Ki (about
    /// 20 MB). Smaller values cost more walks (tests use them to cross windows).
    pub plan_window_entries: usize,
    /// Protections a test switches off in this pool (feature `testing` only).
    #[cfg(feature = "testing")]
    pub planted: crate::pool::PlantedBugs,
}

impl OpenOptions {
    /// How member devices are opened for these options.
    #[must_use]
    pub fn access(&self) -> crate::device::Access {
        if self.read_only {
            crate::device::Access::ReadOnly
        } else {
            crate::device::Access::ReadWrite
        }
    }

    /// The fault policy these options give.
    #[must_use]
    pub fn fault_policy(&self) -> FaultPolicy {
        FaultPolicy {
            error_threshold: self.error_threshold,
            error_window: self.error_window,
            read_only: self.read_only,
            unavailable_grace: self.unavailable_grace,
            returning_quiet: self.returning_quiet,
            unavailable_allowed: true,
            #[cfg(feature = "testing")]
            planted: self.planted,
        }
    }
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            error_threshold: DEFAULT_ERROR_THRESHOLD,
            error_window: DEFAULT_ERROR_WINDOW,
            read_only: false,
            background_rebuild: true,
            auto_replace: true,
            rebuild_rate_bytes_per_s: None,
            force: false,
            map_cache_bytes: DEFAULT_MAP_CACHE_BYTES,
            unavailable_grace: DEFAULT_UNAVAILABLE_GRACE,
            returning_quiet: DEFAULT_RETURNING_QUIET,
            plan_window_entries: 0,
            #[cfg(feature = "testing")]
            planted: crate::pool::PlantedBugs::default(),
        }
    }
}

/// Mutable map state, behind one mutex.
#[derive(Debug)]
pub(crate) struct MapState {
    pub(crate) map: StripeMap,
    pub(crate) next_generation: u64,
    /// Slots that hold nothing the durable map references: free to write.
    pub(crate) free: Vec<u64>,
    /// Stripes changed since the last commit snapshot, with the slot the previous map still
    /// points at. That slot is released only once the commit that stops referencing it is
    /// durable.
    pub(crate) dirty: BTreeMap<StripeId, Option<u64>>,
    /// Slots that a failed commit may have referenced on some device: released only after the
    /// next successful commit.
    pub(crate) orphans: Vec<u64>,
    /// Physical slot → the stripe last installed there (a hint: valid only where that stripe's
    /// entry still names the slot). Lets a rebuild walk the devices in slot order.
    pub(crate) owner: Vec<u64>,
    /// Slots that must not be handed out again before the next commit even if their stripe is
    /// rewritten, because a failed commit may have recorded them on some device.
    pub(crate) held: std::collections::HashSet<u64>,
    /// The same, for slots a rebuild batch is copying (kept apart so the batch's cleanup cannot
    /// release a failed commit's hold).
    pub(crate) held_for_rebuild: std::collections::HashSet<u64>,
    /// Slots a commit released while a rebuild held them: free once the rebuild releases them
    /// (commits run while a rebuild step copies; the step must not see a slot it is copying
    /// handed out and overwritten on the replacement).
    pub(crate) freed_while_held: Vec<u64>,
}

impl MapState {
    /// A map state for `map`, with the reverse index built from it.
    pub(crate) fn new(map: StripeMap, slots: u64, next_generation: u64, free: Vec<u64>) -> Self {
        let mut owner = vec![u64::MAX; usize::try_from(slots).unwrap_or(0)];
        for stripe in map.written_stripes() {
            if let Some(slot) = map.slot(stripe) {
                if let Some(o) = owner.get_mut(usize::try_from(slot.0).unwrap_or(usize::MAX)) {
                    *o = stripe.0;
                }
            }
        }
        Self {
            map,
            next_generation,
            free,
            dirty: BTreeMap::new(),
            orphans: Vec::new(),
            owner,
            held: std::collections::HashSet::new(),
            held_for_rebuild: std::collections::HashSet::new(),
            freed_while_held: Vec::new(),
        }
    }

    pub(crate) fn set_owner(&mut self, slot: SlotId, stripe: StripeId) {
        if let Some(o) = self
            .owner
            .get_mut(usize::try_from(slot.0).unwrap_or(usize::MAX))
        {
            *o = stripe.0;
        }
    }

    /// The stripe whose current entry lives in `slot`, if any.
    pub(crate) fn stripe_in(&self, slot: SlotId) -> Option<StripeId> {
        let stripe = StripeId(*self.owner.get(usize::try_from(slot.0).ok()?)?);
        (stripe.0 != u64::MAX && self.map.slot(stripe) == Some(slot)).then_some(stripe)
    }
}

/// Where the next metadata record goes.
#[derive(Debug)]
pub(crate) struct MetaCursor {
    /// Sequence number of the last durable commit.
    pub(crate) sequence: u64,
    /// Bytes of the log used since the last checkpoint.
    pub(crate) log_used: u64,
    /// Per data device: which checkpoint area to write next (the one not holding the newest).
    pub(crate) next_checkpoint: Vec<usize>,
}

pub(crate) struct PoolInner {
    pub(crate) geometry: Geometry,
    pub(crate) codec: Codec,
    pub(crate) uuid: PoolUuid,
    pub(crate) members: Members,
    pub(crate) map: Mutex<MapState>,
    pub(crate) meta: Mutex<MetaCursor>,
    pub(crate) stripe_locks: Vec<Mutex<()>>,
    /// Rebuild pacing and policy, shared with the background driver.
    pub(crate) rebuild: crate::rebuild::RebuildControl,
    /// Writes hold it shared from taking a generation to installing their entry; attaching a
    /// replacement takes it exclusively (see `io::write_stripe_into`).
    pub(crate) attach_lock: parking_lot::RwLock<()>,
    /// The running scrub, if any (one at a time).
    pub(crate) scrub: scrub::ScrubControl,
    /// Latency and byte counters of the volume's requests.
    pub(crate) requests: RequestMetrics,
    /// Flushes that arrive while one commits share the next commit.
    pub(crate) flushes: flush_group::FlushGroup,
    /// The data path of a format-version-4 pool (then `map` and `meta` are empty and unused).
    pub(crate) rows: Option<rows::RowsEngine>,
    /// The recovery-point policy set by [`Pool::set_snapshot_policy`] (its events part).
    pub(crate) policy: Mutex<Option<policy::SnapshotPolicy>>,
    /// Rings the reclaim thread when a delete is asked for; holds its pace.
    pub(crate) reclaim_wake: Arc<reclaim::Wake>,
}

impl PoolInner {
    /// Bytes of the logical volume.
    pub(crate) fn volume_bytes(&self) -> u64 {
        match &self.rows {
            Some(rows) => rows.volume_bytes(),
            None => self.geometry.volume_bytes(),
        }
    }

    /// Refuse `operation` on a read-only open.
    pub(crate) fn writable(&self, operation: &'static str) -> Result<()> {
        if self.members.read_only() {
            Err(Error::ReadOnly { operation })
        } else {
            Ok(())
        }
    }

    /// Write the superblocks if events were logged or counts made since they were last
    /// written (a clean close): what a crash would lose.
    pub(crate) fn persist_history(&self) -> Result<()> {
        if self.members.history_unpersisted() {
            self.members.record_everywhere_or_name()?;
        }
        Ok(())
    }

    pub(crate) fn stripe_lock(&self, stripe: StripeId) -> &Mutex<()> {
        &self.stripe_locks[self.stripe_lock_index(stripe)]
    }

    /// Which lock of the table guards `stripe` (locks are taken in ascending index order when
    /// several are held).
    pub(crate) fn stripe_lock_index(&self, stripe: StripeId) -> usize {
        usize::try_from(stripe.0 % STRIPE_LOCKS as u64).unwrap_or(0)
    }
}

/// A redundant block volume over several devices. `Send + Sync`: share it with `Arc` and do
/// I/O from many threads.
///
/// Dropping a pool flushes it (best effort, errors are logged); call [`Pool::close`] to see
/// the result.
pub struct Pool {
    inner: Arc<PoolInner>,
    background: Mutex<Option<crate::rebuild::Background>>,
    /// A scrub started with [`Pool::start_scrub`] (or resumed at open, or started over HTTP).
    scrub_thread: handle::ScrubThread,
    flush_on_drop: AtomicBool,
    /// The thread of a recovery-point policy ([`Pool::set_snapshot_policy`]).
    policy_thread: Mutex<Option<policy::PolicyThread>>,
    /// Runs the steps of deletes asked for (docs/FORMAT.md V4.10e), paced.
    reclaim_thread: Mutex<Option<reclaim::ReclaimThread>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The map can be millions of entries; print what identifies the pool.
        f.debug_struct("Pool")
            .field("uuid", &self.inner.uuid.to_string())
            .field("layout", &self.inner.geometry.layout.to_string())
            .field("volume_bytes", &self.inner.volume_bytes())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Create a new pool on `devices` (data members, in layout order) and `spares`.
    ///
    /// # Errors
    /// [`Error::DeviceInUse`] if a device holds a stripestore superblock and `force` is not set;
    /// [`Error::ForeignSignature`] if one holds a filesystem, partition table or another known
    /// signature and `force` is not set (nothing is written to any device then);
    /// [`Error::InvalidConfig`]/[`Error::DeviceTooSmall`] for an impossible geometry;
    /// [`Error::Io`] if the initial metadata cannot be written.
    pub fn create(
        devices: Vec<SharedDevice>,
        spares: Vec<SharedDevice>,
        options: &CreateOptions,
    ) -> Result<Self> {
        Ok(Self::wrap(open::create(devices, spares, options)?))
    }

    /// Create a pool on files or block devices (files are created when `device_bytes` is set).
    /// If it fails, files it created are removed again and files it grew are cut back.
    ///
    /// # Errors
    /// As [`Pool::create`], plus [`Error::Open`]; [`Error::InvalidConfig`] if a path is given
    /// twice (checked before anything is opened).
    pub fn create_paths(
        paths: &[PathBuf],
        spares: &[PathBuf],
        options: &CreateOptions,
    ) -> Result<Self> {
        crate::device::refuse_duplicate_paths(paths.iter().chain(spares).map(PathBuf::as_path))?;
        // A failed create leaves no file it created behind (nor one it grew, grown).
        let mut files = crate::device::CreatedFiles::new();
        let mut open = |path: &PathBuf| files.open_device(path, options.device_bytes);
        let devices = paths.iter().map(&mut open).collect::<Result<Vec<_>>>()?;
        let spares = spares.iter().map(&mut open).collect::<Result<Vec<_>>>()?;
        let pool = Self::create(devices, spares, options)?;
        files.keep();
        Ok(pool)
    }

    /// Open a pool from the given member devices only (missing members are faulted).
    ///
    /// # Errors
    /// [`Error::NotAMember`], [`Error::MixedPools`] for bad device sets (a faulted or
    /// stale member is left out with a warning, not refused);
    /// [`Error::CorruptMetadata`] if no device has a usable stripe map.
    pub fn open(devices: Vec<SharedDevice>, options: &OpenOptions) -> Result<Self> {
        Ok(Self::wrap(open::open(
            devices,
            open::Discover::No,
            options,
        )?))
    }

    /// Open a pool from one or more member paths; the other members are found by identity,
    /// at their recorded paths or in those paths' directories (see
    /// [`Pool::open_paths_scanning`]).
    ///
    /// # Errors
    /// As [`Pool::open`], plus [`Error::Open`] for a given path that cannot be opened;
    /// [`Error::InvalidConfig`] if a path is given twice (checked before anything is opened).
    pub fn open_paths(paths: &[PathBuf], options: &OpenOptions) -> Result<Self> {
        Self::open_paths_scanning(paths, &[], options)
    }

    /// Open a pool from one or more member paths, finding the other members by identity (pool
    /// and device UUID), wherever they are now: at their recorded paths, else among the files
    /// and block devices in the directories of the given and recorded paths and in `scan`
    /// (directories, or devices). A member found elsewhere is used there; a read-write open
    /// records its new path in the superblocks (a read-only one only says so).
    ///
    /// # Errors
    /// As [`Pool::open_paths`].
    pub fn open_paths_scanning(
        paths: &[PathBuf],
        scan: &[PathBuf],
        options: &OpenOptions,
    ) -> Result<Self> {
        crate::device::refuse_duplicate_paths(paths.iter().map(PathBuf::as_path))?;
        let access = options.access();
        let devices = paths
            .iter()
            .map(|path| crate::device::open_device_for(path, access))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::wrap(open::open(
            devices,
            open::Discover::Scan(scan),
            options,
        )?))
    }

    fn wrap(inner: PoolInner) -> Self {
        let inner = Arc::new(inner);
        if let Some(rows) = inner.rows() {
            let mut volume = rows.write_volume();
            volume.set_observer(rows::observer(Arc::downgrade(&inner)));
            volume.set_member_names(rows::member_names(Arc::downgrade(&inner)));
            volume.set_tolerate(rows::tolerate(Arc::downgrade(&inner)));
            volume.set_states_recorded(rows::states_recorded(Arc::downgrade(&inner)));
            volume.set_in_service(rows::in_service(Arc::downgrade(&inner)));
            // Everything the opened map names is durable on every member in service
            // (FORMAT.md V4.16 §3, "S, exactly").
            inner.members.note_durable(volume.map().next_sequence());
        }
        let background = inner
            .rebuild
            .background_enabled()
            .then(|| crate::rebuild::Background::start(Arc::clone(&inner)));
        // Deletes asked for (now or before a crash) run in the background on a writable
        // version-4 pool.
        let reclaim = (inner.rebuild.background_enabled()
            && inner.rows().is_some()
            && inner.writable("reclaim").is_ok())
        .then(|| {
            reclaim::ReclaimThread::start(Arc::downgrade(&inner), Arc::clone(&inner.reclaim_wake))
        })
        .flatten();
        let resume_scrub = inner.rebuild.background_enabled()
            && inner
                .members
                .scrub_record()
                .in_progress
                .is_some_and(|checkpoint| {
                    !checkpoint.paused && scrub::resumable(inner.as_ref(), &checkpoint)
                });
        let pool = Self {
            inner,
            background: Mutex::new(background),
            scrub_thread: Arc::new(Mutex::new(handle::ScrubSlot::default())),
            flush_on_drop: AtomicBool::new(true),
            policy_thread: Mutex::new(None),
            reclaim_thread: Mutex::new(reclaim),
        };
        if resume_scrub {
            let options = ScrubOptions {
                resume: true,
                ..ScrubOptions::default()
            };
            if let Err(err) = pool.start_scrub(&options) {
                tracing::error!(%err, "could not resume the interrupted scrub");
            }
        }
        pool
    }

    /// Stop background work: the rebuild driver, and a background scrub (paused, so its
    /// checkpoint survives and it resumes next time).
    fn stop_background(&self) {
        if let Some(thread) = self.policy_thread.lock().take() {
            thread.stop();
        }
        if let Some(thread) = self.reclaim_thread.lock().take() {
            thread.stop();
        }
        if let Some(background) = self.background.lock().take() {
            background.stop();
        }
        // Closed under the lock, so the HTTP endpoint (which may still hold the pool for a
        // moment) starts no scrub after this one is joined.
        let thread = {
            let mut slot = self.scrub_thread.lock();
            slot.closed = true;
            slot.handle.take()
        };
        if let Some(thread) = thread {
            self.inner.scrub.request(scrub::ScrubRequest::Stop);
            if thread.join().is_err() {
                tracing::error!("the scrub thread panicked");
            }
        }
    }

    /// Size of the logical volume in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.inner.volume_bytes()
    }

    /// The pool's geometry.
    #[must_use]
    pub fn geometry(&self) -> &Geometry {
        &self.inner.geometry
    }

    /// Read `buf.len()` bytes at volume offset `offset`. Every byte returned was verified
    /// against its checksum; damaged copies are reconstructed and healed on the way.
    ///
    /// # Errors
    /// [`Error::OutOfRange`]; [`Error::Unrecoverable`] when too many shards of a stripe are lost.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let bytes = buf.len();
        self.inner
            .requests
            .measure(Request::Read, bytes, || self.inner.read_at(offset, buf))
    }

    /// Several reads at once, each `(offset, buffer)` as [`Pool::read_at`], one outcome per
    /// read in order: what a server does with the requests a client sent together. On format
    /// version 4 the blocks of all of them go to the devices in one batch (one submission, one
    /// wake-up; reads of a row an earlier read of the call also reads wait for a later round)
    /// and each read still fails or succeeds on its own: a read out of range fails before any
    /// I/O, a block nothing can return or a failed request fails only its read, and every
    /// block is counted, healed and reported as if the reads had come one by one
    /// ([`crate::volume::Volume::read_many`]). The members are those in service when the
    /// call begins, as for concurrent reads. The volume's read lock is held throughout:
    /// bound what one call asks (the NBD server takes 16 reads of 64 KiB at most).
    pub fn read_many(&self, reads: &mut [(u64, &mut [u8])]) -> Vec<Result<()>> {
        let started = std::time::Instant::now();
        let outcomes = self.inner.read_many(reads);
        for ((_, buf), outcome) in reads.iter().zip(&outcomes) {
            self.inner
                .requests
                .record(Request::Read, buf.len(), started, outcome.is_ok());
        }
        outcomes
    }

    /// Write `data` at volume offset `offset`. Not durable until [`Pool::flush`] returns; until
    /// then a crash leaves each stripe either old or new.
    ///
    /// # Errors
    /// [`Error::OutOfRange`]; [`Error::PoolUnavailable`] when too many devices are lost;
    /// [`Error::Unrecoverable`] when a partial write needs old data that is lost.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        check_range(offset, data.len(), self.size())?;
        self.inner.writable("write")?;
        self.inner.requests.measure(Request::Write, data.len(), || {
            self.inner.write_at(offset, data)
        })
    }

    /// The data path's counters since the pool was opened (format version 4; `None` on
    /// version 3): blocks read and written, bad shard-blocks found, blocks rebuilt and
    /// healed, reads served together. They only go up.
    #[must_use]
    pub fn volume_counters(&self) -> Option<crate::volume::VolumeCounters> {
        self.inner.rows().map(|rows| rows.read_volume().counters())
    }

    /// Whether [`Pool::read_many`] reads in one batch (format version 4) rather than one read
    /// after the other (a server then spreads reads over its threads instead).
    #[must_use]
    pub fn reads_together(&self) -> bool {
        self.inner.rows().is_some()
    }

    /// Whether [`Pool::write_queued`] queues a write of `bytes` (a small write on a
    /// format-version-4 pool) rather than writing it on the caller's thread.
    #[must_use]
    pub fn queues_write(&self, bytes: usize) -> bool {
        self.inner.rows().is_some() && PoolInner::rows_queues(bytes)
    }

    /// Write `data` at volume offset `offset` as [`Pool::write_at`] does, but without waiting:
    /// `sink` is told the outcome under `tag` once the write landed or failed (exactly once;
    /// a write refused at once is told before this returns). A server writes so what a client
    /// sends while earlier writes are on the devices, with no thread waiting per write.
    ///
    /// On a format-version-4 pool a small write is queued and carried in a group by the
    /// pool's write leader. When no writer leads, the office is the caller's: the
    /// [`LeadDuty`] returned must be run, on this thread or another that may block for a
    /// while (it is run when dropped, too). Other writes are written here, then told.
    #[must_use = "queued writes wait until the duty is run (dropping it runs it here)"]
    pub fn write_queued(
        &self,
        offset: u64,
        data: Vec<u8>,
        sink: &Arc<dyn WriteDone>,
        tag: u64,
    ) -> Option<LeadDuty<'_>> {
        let started = std::time::Instant::now();
        let checked = check_range(offset, data.len(), self.size())
            .and_then(|()| self.inner.writable("write"));
        let queue = self
            .inner
            .rows()
            .filter(|_| PoolInner::rows_queues(data.len()));
        match (checked, queue) {
            (Ok(()), Some(rows)) if self.inner.check_available().is_ok() => {
                drop(self.inner.rebuild.foreground());
                self.inner
                    .rows_write_queued(rows, offset, data, Arc::clone(sink), tag, started)
                    .then(|| LeadDuty { pool: self })
            }
            (Ok(()), _) => {
                let outcome = self.write_at(offset, &data);
                sink.done(tag, outcome);
                None
            }
            (Err(err), _) => {
                self.inner
                    .requests
                    .record(Request::Write, data.len(), started, false);
                sink.done(tag, Err(err));
                None
            }
        }
    }

    /// Plant a bug (feature `testing`): the next write leader of a format-version-4 pool
    /// panics while it lands a group (once). The writes it carried fail with
    /// [`Error::ThreadPanicked`], the pool refuses writes until it is reopened, and no writer
    /// waits for ever. Does nothing on version 3.
    #[cfg(feature = "testing")]
    pub fn plant_leader_panic(&self) {
        if let Some(rows) = self.inner.rows() {
            rows.planted_leader_panic
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Plant a bug (feature `testing`): the next flush of a format-version-4 pool panics in
    /// its commit (once), after flushing the members and before writing its log record. The
    /// pool then refuses writes and flushes until it is reopened, and a flush waiting on that
    /// commit does not wait for ever. Does nothing on version 3.
    #[cfg(feature = "testing")]
    pub fn plant_flush_panic(&self) {
        if let Some(rows) = self.inner.rows() {
            rows.planted_flush_panic
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Test hook (feature `testing`): the next write leader of a format-version-4 pool waits
    /// `pause` between taking its last group and giving up its office (once), so that a test
    /// can queue a write in that window. Does nothing on version 3.
    #[cfg(feature = "testing")]
    pub fn pause_leader_before_giving_up(&self, pause: std::time::Duration) {
        if let Some(rows) = self.inner.rows() {
            let ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
            rows.leader_pause_ms
                .store(ms, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Several writes queued together, as concurrent writers' would be, then carried in
    /// groups (on a format-version-4 pool, through the writer's pipeline: docs/FORMAT.md V4.6,
    /// "Several groups on the devices"); one after another on version 3. The simulation's way
    /// to put several groups on the devices from one thread. One outcome per write.
    #[cfg(feature = "testing")]
    pub fn write_together(&self, writes: &[(u64, &[u8])]) -> Vec<Result<()>> {
        let Some(rows) = self.inner.rows() else {
            return writes.iter().map(|(o, d)| self.write_at(*o, d)).collect();
        };
        let checked: Vec<Result<()>> = writes
            .iter()
            .map(|(o, d)| {
                check_range(*o, d.len(), self.size()).and_then(|()| self.inner.writable("write"))
            })
            .collect();
        let fine: Vec<(u64, &[u8])> = writes
            .iter()
            .zip(&checked)
            .filter(|(_, c)| c.is_ok())
            .map(|(w, _)| *w)
            .collect();
        let _foreground = self.inner.rebuild.foreground();
        let mut outcomes = self.inner.rows_write_together(rows, &fine).into_iter();
        checked
            .into_iter()
            .map(|c| c.and_then(|()| outcomes.next().unwrap_or(Ok(()))))
            .collect()
    }

    /// Discard `length` bytes at volume offset `offset` (TRIM): afterwards the range reads as
    /// zeros. Whole stripes inside the range become unwritten: they hold no slot (their slots
    /// are released by the next [`Pool::flush`], exactly as an overwrite releases the old slot)
    /// and rebuild and scrub skip them. Parts of stripes at the edges are written as zeros.
    /// Like a write, not durable until [`Pool::flush`] returns; until then a crash leaves each
    /// stripe either as it was or discarded.
    ///
    /// # Errors
    /// [`Error::OutOfRange`] (checked before anything is done); [`Error::ReadOnly`];
    /// [`Error::PoolUnavailable`] when too many devices are lost (nothing is unmapped then);
    /// as [`Pool::write_at`] for the edges.
    pub fn discard(&self, offset: u64, length: u64) -> Result<()> {
        discard::check_span(offset, length, self.size())?;
        self.inner.writable("discard")?;
        self.inner.discard(offset, length)
    }

    /// Which parts of `[offset, offset + length)` hold written data, as runs in volume order
    /// covering the range exactly (stripe granularity, clipped to the range). An unallocated
    /// run reads as zeros. See [`Pool::allocation_limited`] to bound the answer. On a
    /// format-version-4 pool the granularity is 4 KiB and one call looks at 16,384 blocks
    /// (64 MiB) one by one at most, skipping whole what the map holds no page for: the runs
    /// may then cover a prefix of a longer range (ask again from its end).
    ///
    /// # Errors
    /// [`Error::OutOfRange`].
    pub fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        self.allocation_limited(offset, length, usize::MAX)
    }

    /// As [`Pool::allocation`], stopping after `max_extents` runs (they then cover a prefix of
    /// the range, each run whole).
    ///
    /// # Errors
    /// [`Error::OutOfRange`].
    pub fn allocation_limited(
        &self,
        offset: u64,
        length: u64,
        max_extents: usize,
    ) -> Result<Vec<Extent>> {
        discard::check_span(offset, length, self.size())?;
        Ok(self.inner.allocation(offset, length, max_extents))
    }

    /// Barrier: every write completed before this call survives power loss once it returns.
    ///
    /// Flushes called from several threads at once share commits: one that arrives while a
    /// commit runs waits for the next commit to start and succeed, and runs it if nobody else
    /// does (group commit).
    ///
    /// # Errors
    /// [`Error::PoolUnavailable`] when too few devices are left to make the data durable with
    /// the layout; [`Error::CorruptMetadata`] if the map cannot be written anywhere.
    pub fn flush(&self) -> Result<()> {
        let _foreground = self.inner.rebuild.foreground();
        self.inner.requests.measure(Request::Flush, 0, || {
            self.inner.flushes.flush(|| {
                self.inner
                    .requests
                    .flush_commits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.inner.commit()
            })
        })
    }

    /// Path and I/O counters (requests, bytes, latency) of every data position, in layout
    /// order: what a front end renders as per-device metrics.
    #[must_use]
    pub fn device_io(&self) -> Vec<(String, Arc<crate::device::DeviceIo>)> {
        self.inner.device_io()
    }

    /// Latency and byte counters of the requests made to the volume.
    #[must_use]
    pub fn request_metrics(&self) -> &RequestMetrics {
        &self.inner.requests
    }

    /// A handle that does not keep the pool open, for a front end that outlives a request
    /// (the HTTP endpoint): see [`PoolHandle`].
    #[must_use]
    pub fn handle(&self) -> PoolHandle {
        PoolHandle {
            inner: Arc::downgrade(&self.inner),
            scrub_thread: Arc::clone(&self.scrub_thread),
        }
    }

    /// Health, devices and counters.
    #[must_use]
    pub fn status(&self) -> PoolStatus {
        self.inner.status()
    }

    /// The pool's event log (newest last) and cumulative counters, as recorded in its
    /// superblocks plus what this process has logged and counted since.
    #[must_use]
    pub fn history(&self) -> crate::format::History {
        self.inner.members.history()
    }

    /// Flush and close.
    ///
    /// # Errors
    /// As [`Pool::flush`].
    pub fn close(self) -> Result<()> {
        self.flush_on_drop.store(false, Ordering::Relaxed);
        self.stop_background();
        self.inner.commit()?;
        self.inner.rows_close_sync()?;
        if !self.inner.rebuild_progress().is_empty() {
            self.inner.checkpoint_rebuilds()?;
        }
        self.inner.persist_history()?;
        Ok(())
    }

    /// Verify every chunk of every written stripe (data, parity, all copies) and that parity
    /// and copies agree with the data, repair what fails, and report, in the calling thread.
    /// Foreground I/O may continue meanwhile. Same as [`Pool::scrub_with`] with defaults.
    ///
    /// # Errors
    /// As [`Pool::scrub_with`].
    pub fn scrub(&self) -> Result<ScrubReport> {
        self.scrub_with(&ScrubOptions::default(), |_| {})
    }

    /// Run a scrub in the calling thread until it completes or another thread pauses or
    /// cancels it ([`Pool::pause_scrub`], [`Pool::cancel_scrub`]). `observe` sees the progress
    /// after every step. Progress is checkpointed in the superblocks about once a second.
    ///
    /// # Errors
    /// [`Error::Busy`] if a scrub is already running; [`Error::Io`] if the checkpoint
    /// cannot be written. Damage found is in the report, not an error.
    pub fn scrub_with(
        &self,
        options: &ScrubOptions,
        mut observe: impl FnMut(&ScrubProgress),
    ) -> Result<ScrubReport> {
        self.inner.scrub_begin(options)?;
        self.inner.scrub_body(options, &mut observe)
    }

    /// Start a scrub in a background thread (see [`Pool::scrub_with`]); follow it with
    /// [`Pool::scrub_progress`], stop it with [`Pool::pause_scrub`] / [`Pool::cancel_scrub`],
    /// collect its report with [`Pool::wait_scrub`]. Closing the pool pauses it; with
    /// background work enabled, opening the pool again resumes it.
    ///
    /// # Errors
    /// [`Error::Busy`] if a scrub is already running.
    pub fn start_scrub(&self, options: &ScrubOptions) -> Result<()> {
        handle::start_scrub(&self.inner, &self.scrub_thread, options)
    }

    /// Wait for the background scrub to end; `None` if none was started.
    pub fn wait_scrub(&self) -> Option<Result<ScrubReport>> {
        let thread = self.scrub_thread.lock().handle.take()?;
        Some(
            thread
                .join()
                .unwrap_or(Err(Error::ThreadPanicked { thread: "scrub" })),
        )
    }

    /// Pause the running scrub after its current step; its checkpoint is kept (resume with
    /// [`ScrubOptions::resume`]). Returns whether a scrub was running.
    pub fn pause_scrub(&self) -> bool {
        self.inner.scrub.request(scrub::ScrubRequest::Pause)
    }

    /// Cancel the running scrub after its current step, or discard the checkpoint of an
    /// interrupted one; either way the last-scrub record says "canceled". Returns whether there
    /// was a scrub to cancel.
    ///
    /// # Errors
    /// [`Error::Io`] if the superblocks cannot be written.
    pub fn cancel_scrub(&self) -> Result<bool> {
        self.inner.cancel_scrub()
    }

    /// Change the running scrub's rate limit (bytes per second, `None`: unlimited).
    pub fn set_scrub_rate(&self, bytes_per_s: Option<u64>) {
        self.inner.scrub.set_rate(bytes_per_s);
    }

    /// Progress of the running scrub, or of an interrupted or paused one as recorded on disk.
    #[must_use]
    pub fn scrub_progress(&self) -> Option<ScrubProgress> {
        self.inner.scrub_progress()
    }

    /// Where the shards of logical stripe `stripe` of a format-version-3 pool live (empty if
    /// never written, out of range, or on version 4, which has no stripes: see
    /// [`Pool::block_locations`]): for diagnostics, tools and fault-injection tests.
    #[must_use]
    pub fn shard_locations(&self, stripe: StripeId) -> Vec<ShardLocation> {
        self.inner.shard_locations(stripe)
    }

    /// Where the shards holding volume byte `offset` live: on format version 4 the 4 KiB
    /// shard-blocks of the row holding its block, on version 3 the chunks of its stripe
    /// (as [`Pool::shard_locations`]). Empty if never written or out of range: for
    /// diagnostics, tools and fault-injection tests.
    #[must_use]
    pub fn block_locations(&self, offset: u64) -> Vec<ShardLocation> {
        self.inner.block_locations(offset)
    }

    /// Take a data member out of service (as if it had failed), recording it on disk.
    pub fn fault_device(&self, index: usize, reason: &str) {
        // (On a read-only open the fault holds for this process only: nothing is recorded.)
        if index < self.inner.members.data.len() {
            self.inner
                .members
                .fault(crate::types::DeviceIndex(index), reason);
        }
    }

    /// Drop the pool *without* flushing, as a power cut would: for crash tests.
    #[doc(hidden)]
    pub fn simulate_power_loss(self) {
        self.flush_on_drop.store(false, Ordering::Relaxed);
        self.stop_background();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop_background();
        if self.flush_on_drop.load(Ordering::Relaxed) {
            if let Err(err) = self.inner.commit() {
                tracing::error!(%err, "flush on drop failed");
            } else if let Err(err) = self.inner.persist_history() {
                tracing::error!(%err, "could not record the pool's events and counters on drop");
            }
        }
    }
}

/// The write leader's office, handed to a caller of [`Pool::write_queued`] when nobody led:
/// run it (or drop it, which runs it) on a thread that may block while it writes the queued
/// groups. Until then no other writer leads, so queued writes wait for it.
#[derive(Debug)]
pub struct LeadDuty<'p> {
    pool: &'p Pool,
}

impl LeadDuty<'_> {
    /// Lead: write queued groups until no queued write is left without a thread of its own.
    pub fn run(self) {
        drop(self);
    }
}

impl Drop for LeadDuty<'_> {
    fn drop(&mut self) {
        if let Some(rows) = self.pool.inner.rows() {
            self.pool.inner.rows_lead_queued(rows);
        }
    }
}

/// Error helper: a request outside the volume.
fn check_range(offset: u64, length: usize, volume_bytes: u64) -> Result<()> {
    let end = offset.checked_add(length as u64);
    match end {
        Some(end) if end <= volume_bytes => Ok(()),
        _ => Err(Error::OutOfRange {
            offset,
            length: length as u64,
            volume_bytes,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Pool>();
    }

    /// A rebuild yields to foreground I/O on a v4 pool too: its reads, writes and discards
    /// mark the foreground clock the rebuild's pacing looks at (they went to the v4 engine
    /// before marking it, so a v4 rebuild never yielded).
    #[test]
    fn v4_requests_mark_the_foreground_for_the_rebuild_to_yield() {
        let devices: Vec<crate::device::SharedDevice> = (0..3)
            .map(|i| {
                Arc::new(crate::device::MemDevice::new(format!("m{i}"), 16 << 20))
                    as crate::device::SharedDevice
            })
            .collect();
        let mut options = CreateOptions::new("rs:2+1".parse().unwrap());
        options.chunk_bytes = 16384;
        options.format = FormatVersion::V4(crate::testing::small_v4());
        options.open.background_rebuild = false;
        let pool = Pool::create(devices, vec![], &options).unwrap();
        let requests: [&dyn Fn(&Pool); 3] = [
            &|pool| pool.write_at(0, &[1u8; 4096]).unwrap(),
            &|pool| pool.read_at(0, &mut [0u8; 4096]).unwrap(),
            &|pool| pool.discard(0, 4096).unwrap(),
        ];
        for request in requests {
            let before = pool.inner.rebuild.last_foreground_ns();
            // The clock counts nanoseconds: make sure it moves.
            std::thread::sleep(std::time::Duration::from_millis(1));
            request(&pool);
            assert!(pool.inner.rebuild.last_foreground_ns() > before);
        }
    }
}
