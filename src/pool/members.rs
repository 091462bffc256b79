//! The device state table: which member devices are online, which are being replaced, the
//! spares, their error counters, and the superblock that records it all.
//!
//! The fault policy lives here (see the README's "Fault policy" for the reasons):
//! * a device that is **gone**, or whose **write or flush failed** (its content is then unknown),
//!   is *faulted*: taken out of service, and the fault persisted at once (superblock generation
//!   plus one on every remaining member), so when it comes back it is recognised as stale and never
//!   trusted for data. A write failure faults only while the pool stays available without the
//!   device; otherwise the device is *degraded* instead and keeps serving what it holds;
//! * **read and checksum errors** never fault: past `error_threshold` of them within
//!   `error_window` the device is *degraded* ("too many errors"), stays in service (every read
//!   it serves is verified, so it cannot return wrong bytes) and is replaced by a spare if there
//!   is one. Damage is then exactly what it destroyed, never a whole member;
//! * a **read-only** open (status, check, metrics, read, check-only scrub) records nothing:
//!   states change in memory for this process, and no byte is written.
//!
//! A data position can have a *replacement* being filled (from a spare, a new device, or the same
//! device coming back online): it receives every new write at once, and is read from only after
//! the rebuild has filled it and swapped it in.

use crate::device::{DeviceError, SharedDevice};
use crate::error::{Error, Result};
use crate::format::{Member, MemberState, PoolUuid, Role, Superblock};
use crate::geometry::Layout;
use crate::types::DeviceIndex;
use parking_lot::{Mutex, RwLock};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When errors change a device's state (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultPolicy {
    /// Read/checksum errors within `error_window` that mark a device degraded.
    pub error_threshold: u64,
    /// The window of that rate (ZFS's `checksum_t`).
    pub error_window: Duration,
    /// Record nothing on the devices (a read-only open).
    pub read_only: bool,
    /// How long a member that stopped answering stays unavailable before it is faulted
    /// (docs/FORMAT.md V4.16 §3).
    pub unavailable_grace: Duration,
    /// How long a member that answers again must go on answering before it is resynced.
    pub returning_quiet: Duration,
    /// Members may be marked unavailable (format version 4: resync by birth).
    pub unavailable_allowed: bool,
    /// Protections switched off by a test (feature `testing`).
    #[cfg(feature = "testing")]
    pub planted: crate::pool::PlantedBugs,
}

/// Error counters of one device, as shown by `status`.
#[derive(Debug, Default)]
pub struct ErrorCounters {
    /// Reads that failed with an I/O error.
    pub read: AtomicU64,
    /// Writes or flushes that failed.
    pub write: AtomicU64,
    /// Chunks whose content did not match the map's checksum.
    pub checksum: AtomicU64,
    /// Chunks rewritten with reconstructed content (self-heal).
    pub repaired: AtomicU64,
}

/// Who a device is: its UUID (identity) and last known path (a hint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Device UUID.
    pub uuid: PoolUuid,
    /// Last known path or name.
    pub path: String,
    /// Its failure domain, in pools that have them (docs/FORMAT.md V4.16).
    pub domain: Option<String>,
}

impl Identity {
    /// Whether `name` names this device: its UUID, its recorded path as written, or the same
    /// file as that path (`d4`, `./d4` and `/srv/pool/d4` name one device).
    #[must_use]
    pub fn is_named(&self, name: &str) -> bool {
        if self.path == name || self.uuid.to_string() == name {
            return true;
        }
        let canonical = |path: &str| crate::device::canonical_path(std::path::Path::new(path));
        !name.is_empty() && canonical(name) == canonical(&self.path)
    }
}

/// A device being filled to take over a data position.
#[derive(Debug)]
pub struct Replacement {
    /// The new device's identity.
    pub identity: Identity,
    /// The device.
    pub device: SharedDevice,
    /// Rebuild watermark: every live physical slot below it is on the device. (Slot order,
    /// not stripe order, so the rebuild reads and writes each device sequentially however
    /// copy-on-write has scattered the stripes.)
    pub next_slot: AtomicU64,
    /// The watermark as last made durable (the replacement flushed up to it); this is what the
    /// superblocks record.
    pub durable_slot: AtomicU64,
    /// Stripes written at or after this generation were written with the replacement attached.
    pub start_generation: u64,
    /// Bytes read from other devices by the rebuild (this run).
    pub bytes_read: AtomicU64,
    /// Bytes written to the replacement by the rebuild (this run).
    pub bytes_written: AtomicU64,
    /// Bytes the rebuild has to write in this run (computed when it starts or resumes).
    pub total_bytes: AtomicU64,
    /// When this run started.
    pub started: Instant,
    /// Whether it came from the spare list (it goes back there, marked faulted, if abandoned).
    pub from_spare: bool,
    /// Filled and flushed: every metadata write (checkpoint, log record) goes to it too, so
    /// that it holds the map before it is named the member.
    pub receives_metadata: AtomicBool,
    /// Holding the map as well: the superblocks name it the member from now on.
    pub complete: AtomicBool,
    /// Chunks it could not be given because their stripe is beyond repair (this run).
    pub lost_chunks: AtomicU64,
    /// Format version 4: why a write or flush of the pool's own I/O failed on it (through
    /// the fill device, `fill.rs`); the rebuild abandons it before its next chunk.
    pub fill_failed: parking_lot::Mutex<Option<String>>,
    /// Format version 4: the member itself come back after being away; only rows and pages
    /// born at or after this sequence are copied (docs/FORMAT.md V4.16 §4).
    pub resync_from: Option<u64>,
}

impl Replacement {
    /// A replacement whose rebuild starts (or resumes) at `next_slot`.
    #[must_use]
    pub fn new(
        identity: Identity,
        device: SharedDevice,
        next_slot: u64,
        start_generation: u64,
        from_spare: bool,
    ) -> Self {
        Self {
            identity,
            device,
            next_slot: AtomicU64::new(next_slot),
            durable_slot: AtomicU64::new(next_slot),
            start_generation,
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            total_bytes: AtomicU64::new(0),
            started: Instant::now(),
            from_spare,
            receives_metadata: AtomicBool::new(false),
            complete: AtomicBool::new(false),
            lost_chunks: AtomicU64::new(0),
            fill_failed: parking_lot::Mutex::new(None),
            resync_from: None,
        }
    }

    /// The same, copying only what was born at or after `sequence` (`None`: everything).
    #[must_use]
    pub fn resyncing_from(self, sequence: Option<u64>) -> Self {
        Self {
            resync_from: sequence,
            ..self
        }
    }
}

/// A member that stopped answering and is expected back (docs/FORMAT.md V4.16 §3, §7).
#[derive(Debug, Clone)]
pub struct Away {
    /// What the superblocks record.
    pub record: crate::format::Unavailable,
    /// Its device, kept for probing (not in service); `None` when it was not found at open.
    pub device: Option<SharedDevice>,
    /// When the grace period ends (in this process; at least a minute after an open).
    pub deadline: Instant,
    /// When the probes began to succeed, if they do.
    pub answering_since: Option<Instant>,
    /// Labels its device took in resyncs that were abandoned: it answers as one of them.
    pub relabelled: Vec<crate::format::PoolUuid>,
    /// The newest superblock generation this process tried to write to it and never heard
    /// back about (the write may have landed, its reply lost), when newer than
    /// `record.generation`: a device returning with a generation up to it is the member
    /// with the content it left with (only the in-doubt superblock landed). Kept in memory
    /// only: after a restart such a device is copied in full.
    pub in_doubt_generation: Option<u64>,
}

/// One data position of the layout.
#[derive(Debug)]
pub struct MemberDevice {
    /// Layout position.
    pub index: DeviceIndex,
    identity: RwLock<Identity>,
    device: RwLock<Option<SharedDevice>>,
    online: AtomicBool,
    fault_reason: Mutex<Option<String>>,
    /// Why it is degraded (in service, but with too many errors), if it is.
    degraded: Mutex<Option<String>>,
    /// When its recent read/checksum errors happened (at most `error_threshold` kept).
    recent_errors: Mutex<VecDeque<Instant>>,
    /// Away and expected back, if it is (out of service meanwhile).
    away: Mutex<Option<Away>>,
    /// The newest superblock generation written to its device (at least one of the two
    /// copies), as far as this process knows: what it must still hold when it returns.
    superblock_generation: AtomicU64,
    /// The newest superblock generation whose writes to its device both failed: in doubt
    /// (a request whose reply was lost may have landed).
    superblock_attempted: AtomicU64,
    /// Error counters.
    pub errors: ErrorCounters,
    /// I/O counters and latencies of whichever device serves this position.
    pub io: Arc<crate::device::DeviceIo>,
    replacement: RwLock<Option<Arc<Replacement>>>,
}

impl MemberDevice {
    /// Position `index` as recorded in `member`, served by `device` if it was found (else
    /// out of service for `missing`: why it could not be opened).
    pub(crate) fn new(
        index: usize,
        member: &Member,
        device: Option<SharedDevice>,
        missing: &str,
    ) -> Self {
        let reason = match (&member.state, &device) {
            (MemberState::Faulted { reason }, _) => Some(reason.clone()),
            (_, None) => Some(format!("missing: {missing}")),
            (_, Some(_)) => None,
        };
        let degraded = match &member.state {
            MemberState::Degraded { reason } => Some(reason.clone()),
            _ => None,
        };
        let io = Arc::new(crate::device::DeviceIo::default());
        let device = device.map(|device| crate::device::Metered::wrap(device, &io));
        let kept = device.clone();
        Self {
            index: DeviceIndex(index),
            identity: RwLock::new(Identity {
                uuid: member.uuid,
                path: member.path.clone(),
                domain: member.domain.clone(),
            }),
            online: AtomicBool::new(reason.is_none()),
            device: RwLock::new(if reason.is_none() { device } else { None }),
            away: Mutex::new(
                member
                    .unavailable
                    .filter(|_| matches!(member.state, MemberState::Faulted { .. }))
                    .map(|record| Away {
                        record,
                        device: kept,
                        deadline: Instant::now(),
                        answering_since: None,
                        relabelled: Vec::new(),
                        in_doubt_generation: None,
                    }),
            ),
            superblock_generation: AtomicU64::new(0),
            superblock_attempted: AtomicU64::new(0),
            fault_reason: Mutex::new(reason),
            degraded: Mutex::new(degraded),
            recent_errors: Mutex::new(VecDeque::new()),
            errors: ErrorCounters::default(),
            io,
            replacement: RwLock::new(None),
        }
    }
    /// Whether the device is in service.
    #[must_use]
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }
    /// Why it is out of service, if it is.
    #[must_use]
    pub fn fault_reason(&self) -> Option<String> {
        self.fault_reason.lock().clone()
    }
    /// Away and expected back, if it is.
    #[must_use]
    pub fn away(&self) -> Option<Away> {
        self.away.lock().clone()
    }
    /// Why it is degraded (in service with too many errors), if it is.
    #[must_use]
    pub fn degraded_reason(&self) -> Option<String> {
        self.degraded.lock().clone()
    }
    /// The device handle, if online.
    #[must_use]
    pub fn device(&self) -> Option<SharedDevice> {
        if self.is_online() {
            self.device.read().clone()
        } else {
            None
        }
    }
    /// Its identity.
    #[must_use]
    pub fn identity(&self) -> Identity {
        self.identity.read().clone()
    }
    /// Its last known path.
    #[must_use]
    pub fn path(&self) -> String {
        self.identity.read().path.clone()
    }
    /// The replacement being filled, if any.
    #[must_use]
    pub fn replacement(&self) -> Option<Arc<Replacement>> {
        self.replacement.read().clone()
    }

    fn member_records(&self) -> Vec<Member> {
        let identity = self.identity();
        let mut records = vec![Member {
            uuid: identity.uuid,
            role: Role::Data {
                index: self.index.0,
            },
            state: match (self.fault_reason(), self.degraded_reason()) {
                (Some(reason), _) => MemberState::Faulted { reason },
                (None, Some(reason)) => MemberState::Degraded { reason },
                (None, None) => MemberState::Online,
            },
            path: identity.path,
            domain: identity.domain,
            unavailable: self.away().map(|a| a.record),
        }];
        if let Some(replacement) = self.replacement() {
            if replacement.complete.load(Ordering::Acquire) {
                // Filled and flushed, with the map on it: it is recorded as the member before
                // it takes over in memory, so a crash in between keeps it (see
                // `PoolInner::finish_rebuild`).
                return vec![Member {
                    uuid: replacement.identity.uuid,
                    role: Role::Data {
                        index: self.index.0,
                    },
                    state: MemberState::Online,
                    path: replacement.identity.path.clone(),
                    domain: replacement.identity.domain.clone(),
                    unavailable: None,
                }];
            }
            records.push(Member {
                uuid: replacement.identity.uuid,
                role: Role::Data {
                    index: self.index.0,
                },
                state: MemberState::Rebuilding {
                    // Only progress already flushed: a superblock written for any reason (a
                    // fault, a spare added) may land on other devices before the replacement's
                    // own data is durable.
                    next_slot: replacement.durable_slot.load(Ordering::Acquire),
                    start_generation: replacement.start_generation,
                    resync_from_sequence: replacement.resync_from,
                },
                path: replacement.identity.path.clone(),
                domain: replacement.identity.domain.clone(),
                unavailable: None,
            });
        }
        records
    }
}

/// A spare: recorded in the pool, holding no data until a rebuild uses it.
#[derive(Debug, Clone)]
pub struct Spare {
    /// Identity.
    pub identity: Identity,
    /// The device, if it was found.
    pub device: Option<SharedDevice>,
    /// Why it cannot be used, if it cannot.
    pub fault: Option<String>,
}

/// All members plus the superblock template.
#[derive(Debug)]
pub struct Members {
    /// Data positions, in layout order.
    pub data: Vec<MemberDevice>,
    spares: Mutex<Vec<Spare>>,
    superblock: Mutex<Superblock>,
    /// Serialises whole superblock updates, so a later generation can never be overwritten by
    /// an earlier one that was still being written.
    superblock_writer: Mutex<()>,
    layout: Layout,
    policy: FaultPolicy,
    /// Held while deciding whether an error takes a device out of service, so two devices
    /// failing at once cannot both be faulted past the layout's tolerance.
    deciding: Mutex<()>,
    /// Devices swapped out of a position in this process, with their counters at that moment:
    /// so the pool's totals (and each device's series) never go down when a member is
    /// replaced (see [`Members::counters`]).
    retired: Mutex<Vec<RetiredDevice>>,
    /// Bytes written by rebuilds of this process that are no longer attached (finished or
    /// abandoned); the attached ones' are added live.
    rebuilt_bytes: AtomicU64,
    /// Scrubs finished in this process.
    scrubs: AtomicU64,
    /// The cumulative counters the superblock recorded when the pool was opened.
    base: crate::format::PoolCounters,
    /// The cumulative counters as the superblocks last recorded them.
    persisted: Mutex<crate::format::PoolCounters>,
    /// Events logged since the superblocks were last written.
    events_unpersisted: AtomicBool,
    /// Per data position: every row and page born before this sequence is durable on the
    /// member (advanced after each flush that succeeded while it was in service and not
    /// degraded; docs/FORMAT.md V4.16 §3, §7). What a member marked unavailable keeps.
    durable_below: Vec<AtomicU64>,
    /// Members' leavings of service counted (docs/FORMAT.md V4.16 §7, review F3), and how
    /// many of them the superblocks are known to record: while `states_owed` is ahead, no
    /// commit or tree sync goes on until a record succeeds. Counters, not a flag: a record
    /// in flight must not let a commit through before it has landed (review of 2026-12-07).
    /// A leaving is counted after the member's state changed (so a record that saw the count
    /// wrote that state) and before its device is dropped (so a commit that no longer writes
    /// to it sees the count).
    states_owed: AtomicU64,
    states_recorded: AtomicU64,
    /// Per data position: the member failed a flush outside a commit (a superblock write's):
    /// the writes still in its cache may be gone, and the flush error that said so was taken
    /// by that flush, so no later commit may vouch for them. Set once; while such a member is
    /// in service the pool refuses commits until it is reopened (`rows_flush`).
    flush_failed: Vec<AtomicBool>,
}

/// A device that served a data position in this process and was swapped out (replaced), with
/// its counters when it left: kept so counters never go down.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetiredDevice {
    /// The position it served.
    pub index: usize,
    /// Its path then.
    pub path: String,
    /// Its UUID.
    pub uuid: String,
    /// Read I/O errors.
    pub read_errors: u64,
    /// Write/flush errors.
    pub write_errors: u64,
    /// Checksum mismatches.
    pub checksum_errors: u64,
    /// Chunks healed on it.
    pub repaired_chunks: u64,
    /// Read requests of its position until then.
    pub reads: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Write requests.
    pub writes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Flushes.
    pub flushes: u64,
    /// Hedged reads given up on as late.
    pub late_reads: u64,
}

impl Members {
    pub(crate) fn new(
        data: Vec<MemberDevice>,
        spares: Vec<Spare>,
        superblock: Superblock,
        layout: Layout,
        policy: FaultPolicy,
    ) -> Self {
        let persisted = superblock.history.counters;
        // The grace left after an open: what remains of it, and at least a minute (a server
        // that starts a little after the pool is not faulted at once; FORMAT.md V4.16 §7).
        let now = crate::types::now_unix_secs();
        for member in &data {
            if let Some(away) = member.away.lock().as_mut() {
                let gone_for = Duration::from_secs(now.saturating_sub(away.record.since_unix_secs));
                let left = policy.unavailable_grace.saturating_sub(gone_for);
                let floor = Duration::from_secs(60).min(policy.unavailable_grace);
                away.deadline = Instant::now() + left.max(floor);
            }
        }
        let durable_below = data.iter().map(|_| AtomicU64::new(0)).collect();
        let flush_failed = data.iter().map(|_| AtomicBool::new(false)).collect();
        for member in &data {
            member
                .superblock_generation
                .store(superblock.generation, Ordering::Release);
        }
        // Resync by birth needs version 4's births; a version-3 member is faulted as before.
        let policy = FaultPolicy {
            unavailable_allowed: policy.unavailable_allowed && superblock.map.is_some(),
            ..policy
        };
        Self {
            durable_below,
            states_owed: AtomicU64::new(0),
            states_recorded: AtomicU64::new(0),
            flush_failed,
            data,
            spares: Mutex::new(spares),
            superblock: Mutex::new(superblock),
            superblock_writer: Mutex::new(()),
            layout,
            policy,
            deciding: Mutex::new(()),
            retired: Mutex::new(Vec::new()),
            rebuilt_bytes: AtomicU64::new(0),
            scrubs: AtomicU64::new(0),
            base: persisted,
            persisted: Mutex::new(persisted),
            events_unpersisted: AtomicBool::new(false),
        }
    }

    /// The pool's cumulative counters: what the superblock recorded at open plus everything
    /// counted since by this process (members in service, devices swapped out, rebuilds,
    /// scrubs). Never goes down while the pool is open.
    #[must_use]
    pub fn counters(&self) -> crate::format::PoolCounters {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        // Under the retired lock: a swap moves a member's counts into the retired list under
        // it, so they are never seen twice or not at all.
        let retired = self.retired.lock();
        let mut totals = self.base_counters();
        for member in &self.data {
            totals.read_errors += load(&member.errors.read);
            totals.write_errors += load(&member.errors.write);
            totals.checksum_errors += load(&member.errors.checksum);
            totals.repaired_chunks += load(&member.errors.repaired);
            if let Some(replacement) = member.replacement() {
                totals.rebuilt_bytes += load(&replacement.bytes_written);
            }
        }
        for device in retired.iter() {
            totals.read_errors += device.read_errors;
            totals.write_errors += device.write_errors;
            totals.checksum_errors += device.checksum_errors;
            totals.repaired_chunks += device.repaired_chunks;
        }
        totals.rebuilt_bytes += load(&self.rebuilt_bytes);
        totals.scrubs += load(&self.scrubs);
        totals
    }

    /// The counters as recorded when the pool was opened.
    fn base_counters(&self) -> crate::format::PoolCounters {
        self.base
    }

    /// Devices swapped out of a position in this process.
    #[must_use]
    pub fn retired(&self) -> Vec<RetiredDevice> {
        self.retired.lock().clone()
    }

    /// Count a finished scrub.
    pub(crate) fn count_scrub(&self) {
        self.scrubs.fetch_add(1, Ordering::Relaxed);
    }

    /// Count the bytes a rebuild wrote once its replacement is no longer attached.
    pub(crate) fn count_rebuilt(&self, replacement: &Replacement) {
        self.rebuilt_bytes.fetch_add(
            replacement.bytes_written.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }

    /// Add `event` to the log; the next [`Members::write_superblocks`] persists it. Nothing is
    /// kept on a read-only open (it records nothing).
    pub(crate) fn record_event(&self, kind: crate::format::EventKind, device: &str, detail: &str) {
        if self.policy.read_only {
            return;
        }
        let event = crate::format::Event::new(crate::types::now_unix_secs(), kind, device, detail);
        self.superblock.lock().history.push(event);
        // An `open` alone does not make a clean close write the superblocks: it rides with the
        // next write. (A superblock write per open would move the generation on every open,
        // and equal generations are how two members that each went on alone are caught.)
        if kind != crate::format::EventKind::Open {
            self.events_unpersisted.store(true, Ordering::Release);
        }
    }

    /// The event log and the counters as they stand (the counters include this process's
    /// increments not yet persisted).
    #[must_use]
    pub fn history(&self) -> crate::format::History {
        let mut history = self.superblock.lock().history.clone();
        history.counters = self.counters();
        history
    }

    /// Whether events were logged or counts made since the superblocks last recorded them
    /// (a clean close then writes them).
    pub(crate) fn history_unpersisted(&self) -> bool {
        !self.policy.read_only
            && (self.events_unpersisted.load(Ordering::Acquire)
                || self.counters() != *self.persisted.lock())
    }

    /// Whether this is a read-only open (nothing is ever written).
    #[must_use]
    pub fn read_only(&self) -> bool {
        self.policy.read_only
    }

    /// Protections a test switched off in this pool.
    #[cfg(feature = "testing")]
    pub(crate) fn planted(&self) -> crate::pool::PlantedBugs {
        self.policy.planted
    }

    /// Whether every stripe stays available with the members in service, less `extra`.
    #[must_use]
    pub fn available_without(&self, extra: Option<DeviceIndex>) -> bool {
        let in_service: Vec<bool> = self
            .data
            .iter()
            .map(|m| m.is_online() && Some(m.index) != extra)
            .collect();
        self.layout.available_with(&in_service)
    }

    /// The member at `index`.
    #[must_use]
    pub fn get(&self, index: DeviceIndex) -> &MemberDevice {
        &self.data[index.0]
    }

    /// Record where a forced open forked the pool's history (docs/FORMAT.md, "Forks"): written
    /// with the open's superblocks, kept while a member it left out is away.
    pub fn note_fork(&self, fork: Option<crate::format::Fork>) {
        if let Some(fork) = fork {
            self.superblock.lock().forks.push(fork);
        }
    }

    /// The fork point of a recorded fork that left out device `uuid`, if its superblock at
    /// `generation` shows it went on after it (a branch of the pool's history).
    #[must_use]
    pub fn diverged_from(&self, uuid: PoolUuid, generation: u64) -> Option<u64> {
        self.superblock
            .lock()
            .forks
            .iter()
            .find(|fork| fork.diverged(uuid, generation))
            .map(|fork| fork.from_generation)
    }

    /// Current superblock generation.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.superblock.lock().generation
    }

    /// The scrub state as recorded (or to be recorded by the next superblock write).
    pub(crate) fn scrub_record(&self) -> crate::format::ScrubRecord {
        self.superblock.lock().scrub.clone()
    }

    /// Change the scrub state; the next [`Members::write_superblocks`] persists it.
    pub(crate) fn update_scrub_record(&self, change: impl FnOnce(&mut crate::format::ScrubRecord)) {
        change(&mut self.superblock.lock().scrub);
    }

    /// A copy of the spare list.
    #[must_use]
    pub fn spares(&self) -> Vec<Spare> {
        self.spares.lock().clone()
    }

    /// Take the first usable spare `matches` accepts out of the spare list.
    pub(crate) fn take_spare_by(
        &self,
        matches: impl Fn(&Identity) -> bool,
    ) -> Option<(Identity, SharedDevice)> {
        let mut spares = self.spares.lock();
        let position = spares
            .iter()
            .position(|s| matches(&s.identity) && s.fault.is_none() && s.device.is_some())?;
        let spare = spares.remove(position);
        Some((spare.identity, spare.device?))
    }

    /// Take the spare with this identity out of the spare list, usable or not (a faulted
    /// spare can be removed too), keeping its place so it can be put back there.
    pub(crate) fn remove_spare_by(
        &self,
        matches: impl Fn(&Identity) -> bool,
    ) -> Option<(usize, Spare)> {
        let mut spares = self.spares.lock();
        let position = spares.iter().position(|s| matches(&s.identity))?;
        Some((position, spares.remove(position)))
    }

    /// Put a spare back at `position` of the list (undoing [`Members::remove_spare_by`]).
    pub(crate) fn restore_spare(&self, position: usize, spare: Spare) {
        let mut spares = self.spares.lock();
        let position = position.min(spares.len());
        spares.insert(position, spare);
    }

    /// Add a spare (already labelled) to the list.
    pub(crate) fn push_spare(&self, spare: Spare) {
        self.spares.lock().push(spare);
    }

    /// Names of data members that are out of service.
    #[must_use]
    pub fn lost(&self) -> Vec<String> {
        self.data
            .iter()
            .filter(|m| !m.is_online())
            .map(MemberDevice::path)
            .collect()
    }

    /// Find a data member by path (as recorded, or any path to the same file), layout index
    /// or UUID.
    #[must_use]
    pub fn find(&self, name: &str) -> Option<DeviceIndex> {
        if let Ok(index) = name.parse::<usize>() {
            return (index < self.data.len()).then_some(DeviceIndex(index));
        }
        self.data
            .iter()
            .find(|m| m.identity().is_named(name))
            .map(|m| m.index)
    }

    /// Take `index` out of service for `reason` and persist that in the superblocks.
    /// Idempotent: a device already faulted stays faulted with its first reason.
    pub fn fault(&self, index: DeviceIndex, reason: &str) {
        if self.mark_faulted(index, reason) {
            self.persist("the fault");
        }
    }

    /// Take `index` out of service for `reason` only if every stripe stays available without
    /// it, deciding under the same lock as the fault policy (so a write fault elsewhere cannot
    /// slip in between the check and the fault). Returns whether it was taken out.
    pub(crate) fn fault_if_available(&self, index: DeviceIndex, reason: &str) -> bool {
        let decision = self.deciding.lock();
        if !self.available_without(Some(index)) {
            return false;
        }
        let changed = self.mark_faulted(index, reason);
        drop(decision);
        if changed {
            self.persist("the fault");
        }
        true
    }

    /// Note that every row and page born before `sequence` is durable on each member in
    /// service and not degraded (after a flush that succeeded on all of them).
    pub(crate) fn note_durable(&self, sequence: u64) {
        for (member, durable) in self.data.iter().zip(&self.durable_below) {
            if member.is_online() && member.degraded_reason().is_none() {
                durable.fetch_max(sequence, Ordering::AcqRel);
            }
        }
    }

    /// Whether a member left service and the superblocks may not record it yet.
    pub(crate) fn state_unrecorded(&self) -> bool {
        self.states_owed.load(Ordering::Acquire) > self.states_recorded.load(Ordering::Acquire)
    }

    /// Record every member's state on every member in service: `true` when done (the
    /// leavings counted before it began are then recorded).
    pub(crate) fn record_states(&self) -> bool {
        self.record_states_or_name().is_ok()
    }

    /// As [`Members::record_states`], naming what stopped it (as
    /// [`Members::record_everywhere_or_name`]).
    pub(crate) fn record_states_or_name(&self) -> Result<()> {
        let seen = self.states_owed.load(Ordering::Acquire);
        self.record_everywhere_or_name()?;
        self.states_recorded.fetch_max(seen, Ordering::AcqRel);
        Ok(())
    }

    /// Count a member's leaving of service (see `states_owed`).
    fn owe_states(&self) {
        self.states_owed.fetch_add(1, Ordering::AcqRel);
    }

    /// Mark `index` unavailable (docs/FORMAT.md V4.16 §3, §7): out of service, expected
    /// back, its content exact for every birth below its `durable_below` (0 when it was
    /// degraded: a failed write of it is below no known sequence). Only when the pool may
    /// use it (format version 4) and every stripe stays available without it; `false`
    /// otherwise, and the caller applies the ordinary policy.
    fn mark_unavailable(&self, index: DeviceIndex, why: &str) -> bool {
        if !self.policy.unavailable_allowed || self.policy.read_only {
            return false;
        }
        let decision = self.deciding.lock();
        let member = self.get(index);
        if member.fault_reason.lock().is_some() {
            return true;
        }
        if !self.available_without(Some(index)) {
            return false;
        }
        #[allow(unused_mut)]
        let mut since = if member.degraded_reason().is_some() {
            0
        } else {
            self.durable_below[index.0].load(Ordering::Acquire)
        };
        #[cfg(feature = "testing")]
        if self.policy.planted.resync_since_late {
            since += 1;
        }
        let record = crate::format::Unavailable {
            since_sequence: since,
            since_unix_secs: crate::types::now_unix_secs(),
            generation: member.superblock_generation.load(Ordering::Acquire),
        };
        let attempted = member.superblock_attempted.load(Ordering::Acquire);
        let device = member.device.read().clone();
        *member.away.lock() = Some(Away {
            record,
            device,
            deadline: Instant::now() + self.policy.unavailable_grace,
            answering_since: None,
            relabelled: Vec::new(),
            in_doubt_generation: (attempted > record.generation).then_some(attempted),
        });
        let reason = format!("unavailable: {why}");
        {
            *member.fault_reason.lock() = Some(reason.clone());
            member.online.store(false, Ordering::Release);
        }
        self.owe_states();
        *member.device.write() = None;
        drop(decision);
        tracing::warn!(device = %member.path(), index = index.0, since, "device unavailable; the pool serves without it until it returns or the grace period ends");
        self.record_event(crate::format::EventKind::Fault, &member.path(), &reason);
        self.record_states();
        true
    }

    /// Mark `index`, missing at a writable open, away with every birth below `since` on it
    /// (see `open::away_at_open`); the open records it in the superblocks.
    pub(crate) fn away_at_open(&self, index: DeviceIndex, since: u64) {
        if !self.policy.unavailable_allowed || self.policy.read_only {
            return;
        }
        let member = self.get(index);
        let record = crate::format::Unavailable {
            since_sequence: since,
            since_unix_secs: crate::types::now_unix_secs(),
            generation: self.generation(),
        };
        *member.away.lock() = Some(Away {
            record,
            device: None,
            deadline: Instant::now() + self.policy.unavailable_grace,
            answering_since: None,
            relabelled: Vec::new(),
            in_doubt_generation: None,
        });
        let reason = {
            let mut current = member.fault_reason.lock();
            let reason = format!(
                "unavailable: {}",
                current.as_deref().unwrap_or("not answering at open")
            );
            *current = Some(reason.clone());
            reason
        };
        tracing::warn!(device = %member.path(), index = index.0, since, "member not answering at open: unavailable, resynced by what changed if it returns within the grace period");
        self.record_event(crate::format::EventKind::Fault, &member.path(), &reason);
    }

    /// Put `index`, recorded away, back in service at open with its own `device` (already
    /// metered: the one kept in its [`Away`]), because it holds every commit (docs/FORMAT.md
    /// V4.16 §3, "Away members that hold every commit"). In memory; a writable open records it.
    pub(crate) fn revive_at_open(&self, index: DeviceIndex, device: SharedDevice) {
        let member = self.get(index);
        member.away.lock().take();
        *member.device.write() = Some(device);
        *member.fault_reason.lock() = None;
        member.online.store(true, Ordering::Release);
    }

    /// Forget that `index` was away (it is faulted for good, or back in service).
    pub(crate) fn clear_away(&self, index: DeviceIndex) -> Option<Away> {
        self.get(index).away.lock().take()
    }

    /// Note a successful or failed probe of an away member; returns the record and whether
    /// it has answered for `returning_quiet` (then it is to be resynced).
    pub(crate) fn probed(&self, index: DeviceIndex, answered: bool) -> Option<(Away, bool)> {
        let mut away = self.get(index).away.lock();
        let state = away.as_mut()?;
        if !answered {
            state.answering_since = None;
            return Some((state.clone(), false));
        }
        let since = *state.answering_since.get_or_insert_with(Instant::now);
        let back = since.elapsed() >= self.policy.returning_quiet;
        Some((state.clone(), back))
    }

    /// Change why `index` is out of service (it already is).
    pub(crate) fn set_fault_reason(&self, index: DeviceIndex, reason: &str) {
        let member = self.get(index);
        let mut current = member.fault_reason.lock();
        if current.is_some() {
            *current = Some(reason.to_string());
        }
    }

    /// The fault policy.
    pub(crate) fn policy(&self) -> &FaultPolicy {
        &self.policy
    }

    /// Take `index` out of service in memory; `false` if it already was.
    fn mark_faulted(&self, index: DeviceIndex, reason: &str) -> bool {
        let member = self.get(index);
        {
            let mut current = member.fault_reason.lock();
            if current.is_some() {
                return false;
            }
            *current = Some(reason.to_string());
            member.online.store(false, Ordering::Release);
        }
        tracing::warn!(device = %member.path(), index = index.0, reason, "device faulted");
        self.owe_states();
        *member.device.write() = None;
        let kind = if reason == super::admin::OFFLINE_REASON {
            crate::format::EventKind::Offline
        } else {
            crate::format::EventKind::Fault
        };
        self.record_event(kind, &member.path(), reason);
        true
    }

    /// Mark `index` degraded (in service, not trusted to stay healthy) and persist it.
    fn degrade(&self, index: DeviceIndex, reason: &str) {
        let member = self.get(index);
        {
            let mut current = member.degraded.lock();
            if current.is_some() || member.fault_reason.lock().is_some() {
                return;
            }
            *current = Some(reason.to_string());
        }
        tracing::warn!(device = %member.path(), index = index.0, reason, "device degraded; it stays in service");
        self.record_event(crate::format::EventKind::Degraded, &member.path(), reason);
        self.persist("the degraded state");
    }

    /// Write the superblocks after a state change, logging (not returning) a failure.
    fn persist(&self, what: &str) {
        if let Err(err) = self.write_superblocks() {
            tracing::error!(%err, "could not record {what} in the superblocks");
        }
    }

    /// Forget `index`'s degraded state and its recent errors (the lifetime counters stay):
    /// `clear` for a member that is in service. Returns whether it was degraded.
    pub(crate) fn clear_degraded(&self, index: DeviceIndex) -> bool {
        let member = self.get(index);
        member.recent_errors.lock().clear();
        member.degraded.lock().take().is_some()
    }

    /// Count an I/O or checksum error against a device and apply the fault policy (module
    /// docs). `offset` is the device byte offset of the failed request (`None` for a flush).
    pub fn record_error(&self, index: DeviceIndex, offset: Option<u64>, detail: DeviceFault<'_>) {
        let kind = detail.kind();
        let member = self.get(index);
        // Every error is an event with its device and offset; state changes are warnings.
        tracing::info!(device = %member.path(), index = index.0, ?kind, offset, %detail, "device error");
        let counter = match kind {
            ErrorKind::Read => &member.errors.read,
            ErrorKind::Write => &member.errors.write,
            ErrorKind::Checksum => &member.errors.checksum,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // A member that does not answer (its device says so, whatever path the error took)
        // is away, not failed, when the pool can go on without it (FORMAT.md V4.16).
        let unreachable = matches!(
            detail,
            DeviceFault::Read(DeviceError::Unavailable(_))
                | DeviceFault::Write(DeviceError::Unavailable(_))
        ) || member
            .device
            .read()
            .as_ref()
            .is_some_and(|d| d.is_unreachable());
        if unreachable && self.mark_unavailable(index, &detail.to_string()) {
            return;
        }
        if detail.is_gone() {
            // It cannot serve anything any more: out of service, whatever the layout says.
            self.fault(index, &format!("device gone: {detail}"));
        } else if kind == ErrorKind::Write {
            let decision = self.deciding.lock();
            if self.available_without(Some(index)) {
                let changed = self.mark_faulted(index, &format!("write failed: {detail}"));
                drop(decision);
                if changed {
                    self.persist("the fault");
                }
            } else {
                drop(decision);
                self.degrade(
                    index,
                    &format!(
                        "write errors ({detail}); kept in service because the pool cannot lose it"
                    ),
                );
            }
        } else if let Some(within) = self.errors_within_window(member) {
            #[cfg(feature = "testing")]
            if self.policy.planted.fault_on_data_errors {
                // Planted bug (tests only): the old policy, faulting for data errors.
                self.fault(index, &format!("too many errors ({within})"));
                return;
            }
            self.degrade(
                index,
                &format!(
                    "too many errors ({} read/checksum errors within {} s)",
                    within,
                    self.policy.error_window.as_secs()
                ),
            );
        }
    }

    /// Note one read/checksum error of `member`; `Some(count)` once `error_threshold` of them
    /// fall within `error_window`.
    fn errors_within_window(&self, member: &MemberDevice) -> Option<u64> {
        let now = Instant::now();
        let mut recent = member.recent_errors.lock();
        recent.push_back(now);
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.error_window)
        {
            recent.pop_front();
        }
        let threshold = usize::try_from(self.policy.error_threshold).unwrap_or(usize::MAX);
        while recent.len() > threshold.max(1) {
            recent.pop_front();
        }
        (recent.len() >= threshold).then_some(recent.len() as u64)
    }

    /// Attach `replacement` to position `index` and record it in the superblocks.
    pub(crate) fn attach_replacement(&self, index: DeviceIndex, replacement: Arc<Replacement>) {
        *self.get(index).replacement.write() = Some(replacement);
    }

    /// Give up on the replacement of `index` (its device failed); the position stays as it was.
    pub(crate) fn abandon_replacement(&self, index: DeviceIndex, reason: &str) {
        let replacement = {
            // (The retired lock, so `counters` never sees its bytes neither attached nor
            // counted.)
            let _counting = self.retired.lock();
            let Some(replacement) = self.get(index).replacement.write().take() else {
                return;
            };
            self.count_rebuilt(&replacement);
            replacement
        };
        tracing::error!(device = %replacement.identity.path, reason, "replacement abandoned");
        // A resync abandoned on the member's own device left that device labelled as the
        // replacement: it is still recognised when it answers again, and copied in full then
        // (what the cut-short copy left on it is not known).
        if let Some(away) = self.get(index).away.lock().as_mut() {
            away.relabelled.push(replacement.identity.uuid);
        }
        // A spare stays on record as a faulted spare, so the operator sees it; a device given
        // for a replace or online is simply dropped (the command reported the error).
        if replacement.from_spare {
            self.push_spare(Spare {
                identity: replacement.identity.clone(),
                device: None,
                fault: Some(format!("abandoned during rebuild: {reason}")),
            });
        }
        if let Err(err) = self.write_superblocks() {
            tracing::error!(%err, "could not record the abandoned replacement");
        }
    }

    /// The rebuild of `index` onto `rebuilt` is complete and flushed: it becomes the member.
    /// `None` (nothing changes) if `rebuilt` is no longer the attached replacement: it was
    /// abandoned meanwhile, and another one, not yet filled, may have been attached since.
    pub(crate) fn swap_in_replacement(
        &self,
        index: DeviceIndex,
        rebuilt: &Replacement,
    ) -> Option<Identity> {
        let member = self.get(index);
        // (The retired lock: `counters` sees the position's counts either before or after
        // they move to the retired list, never twice or not at all.)
        let mut retired = self.retired.lock();
        // (The caller holds the meta mutex and the attach lock: no write or commit can look at
        // this position while it changes hands.)
        let replacement = {
            let mut attached = member.replacement.write();
            if !attached
                .as_deref()
                .is_some_and(|current| std::ptr::eq(current, rebuilt))
            {
                return None;
            }
            attached.take()?
        };
        let old = member.identity();
        retired.push(Self::retire(member, &old));
        self.count_rebuilt(&replacement);
        drop(retired);
        *member.identity.write() = replacement.identity.clone();
        *member.device.write() = Some(crate::device::Metered::wrap(
            Arc::clone(&replacement.device),
            &member.io,
        ));
        *member.fault_reason.lock() = None;
        *member.degraded.lock() = None;
        member.away.lock().take();
        member.recent_errors.lock().clear();
        member.online.store(true, Ordering::Release);
        Some(old)
    }

    /// Take `member`'s error counters (it is being swapped out; it was `old`), zeroing them
    /// for the device taking over: the caller puts them in the retired list under the lock
    /// [`Members::counters`] reads them with.
    fn retire(member: &MemberDevice, old: &Identity) -> RetiredDevice {
        let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RetiredDevice {
            index: member.index.0,
            path: old.path.clone(),
            uuid: old.uuid.to_string(),
            read_errors: take(&member.errors.read),
            write_errors: take(&member.errors.write),
            checksum_errors: take(&member.errors.checksum),
            repaired_chunks: take(&member.errors.repaired),
            reads: load(&member.io.reads),
            read_bytes: load(&member.io.read_bytes),
            writes: load(&member.io.writes),
            write_bytes: load(&member.io.write_bytes),
            flushes: load(&member.io.flushes),
            late_reads: load(&member.io.late_reads),
        }
    }

    /// Flush every online data member and replacement in parallel; a failed flush faults the
    /// device (or abandons the replacement). Returns the members whose flush failed but that
    /// are still in service (the pool could not lose them, so they were only degraded): what
    /// they were sent may not be durable, so a commit must not count on it.
    pub fn flush_all(&self) -> Vec<(String, DeviceError)> {
        if self.policy.read_only {
            return Vec::new();
        }
        super::parallel::each(&self.data, |member| {
            let i = member.index.0;
            let mut failed = None;
            if let Some(device) = member.device() {
                if let Err(err) = device.flush() {
                    self.record_error(DeviceIndex(i), None, DeviceFault::Write(&err));
                    if member.is_online() {
                        failed = Some((member.path(), err));
                    }
                }
            }
            if let Some(replacement) = member.replacement() {
                if let Err(err) = replacement.device.flush() {
                    self.abandon_replacement(DeviceIndex(i), &format!("flush failed: {err}"));
                }
            }
            failed
        })
        .into_iter()
        .flatten()
        .collect()
    }

    /// Write the superblocks until every data member in service holds them: a member whose
    /// write fails is handed to the fault policy as a write error (out of service when the
    /// pool can lose it) and the write is repeated without it. `true` once a write reached
    /// every data member still in service; `false` when a member that failed stays in service
    /// (the pool cannot lose it) or the superblock cannot be encoded. Failures on replacements
    /// and spares do not count: neither is read as a member.
    pub(crate) fn record_everywhere(&self) -> bool {
        self.record_everywhere_or_name().is_ok()
    }

    /// As [`Members::record_everywhere`], naming what stopped it: the member whose write
    /// failed and stays in service, or the superblock's own error. How every recorded change
    /// is written (a scrub's record, a fault, a clear, an attached replacement, the history):
    /// a member whose superblock write fails has the error counted and goes to the fault
    /// policy, never silently behind the others.
    pub(crate) fn record_everywhere_or_name(&self) -> Result<()> {
        let refused = |device: String, why: String| Error::Io {
            device,
            offset: None,
            source: std::io::Error::other(why),
        };
        for _ in 0..=self.data.len() {
            let failures = self.write_superblocks()?;
            let mut blamed = false;
            for (name, err) in &failures {
                let failing = self
                    .data
                    .iter()
                    .find(|m| m.is_online() && m.device().is_some_and(|d| d.name() == *name));
                if let Some(member) = failing {
                    self.record_error(member.index, None, DeviceFault::Write(err));
                    if member.is_online() {
                        return Err(refused(
                            name.clone(),
                            format!(
                                "{err} (the pool cannot lose this member, so its superblocks \
                                 must take the write)"
                            ),
                        ));
                    }
                    blamed = true;
                }
            }
            if !blamed {
                return Ok(());
            }
        }
        Err(refused(
            "members".into(),
            "members kept failing the superblock write".into(),
        ))
    }

    /// Record in every member's superblocks that the pool has recovery points (docs/FORMAT.md
    /// V4.10a, "Older builds"), once, before the first is taken: a build that does not keep
    /// them then refuses the pool by the field's name instead of writing over them.
    ///
    /// # Errors
    /// [`Error::Unsupported`] on a pool without map parameters (version 3); [`Error::Io`]
    /// naming a member whose superblocks could not be written and that the pool cannot lose
    /// (no recovery point may be taken then: that member, alone, would open under an older
    /// build). A member the pool can lose is taken out of service instead, and the gate is
    /// recorded on the others.
    pub(crate) fn enable_recovery_points(&self) -> Result<()> {
        self.enable_map_gate(|map| &mut map.recovery_points)
    }

    /// Record the receive gate (docs/FORMAT.md V4.10d) in every member's superblocks, and
    /// the recovery-point gate with it, before the first receive writes anything.
    ///
    /// # Errors
    /// As [`Members::enable_recovery_points`].
    pub(crate) fn enable_received_streams(&self) -> Result<()> {
        self.enable_map_gate(|map| &mut map.recovery_points)?;
        self.enable_map_gate(|map| &mut map.received_streams)
    }

    /// Record the background-delete gate (docs/FORMAT.md V4.10e) in every member's
    /// superblocks before the first recovery point is asked to be deleted.
    ///
    /// # Errors
    /// As [`Members::enable_recovery_points`].
    pub(crate) fn enable_paced_deletes(&self) -> Result<()> {
        self.enable_map_gate(|map| &mut map.paced_deletes)
    }

    /// Set one of the map's gates in the superblock and write it to every member (nothing
    /// is written when it is set already). A write that fails leaves it unset in memory, so
    /// a retry writes it again (a member without it must not be passed over).
    fn enable_map_gate(
        &self,
        gate: impl Fn(&mut crate::format::MapParams) -> &mut bool,
    ) -> Result<()> {
        {
            let mut template = self.superblock.lock();
            match template.map.as_mut() {
                None => {
                    return Err(Error::Unsupported {
                        operation: "a recovery point".into(),
                        version: template.format_version,
                        reason: "recovery points need format version 4 (the paged map)".into(),
                    })
                }
                Some(map) => {
                    let set = gate(map);
                    if *set {
                        return Ok(());
                    }
                    *set = true;
                }
            }
        }
        // Every data member in service must hold it: one whose write fails is handed to the
        // fault policy (out of service when the pool can lose it, so a failing member costs
        // itself, not the operation) and the write goes on without it.
        if let Err(err) = self.record_everywhere_or_name() {
            if let Some(map) = self.superblock.lock().map.as_mut() {
                *gate(map) = false;
            }
            return Err(err);
        }
        Ok(())
    }

    /// Write the superblock (generation + 1) to every online member, replacement and spare:
    /// copy A on all, flush, then copy B on all, flush. A crash at any point leaves one valid
    /// copy per device. Returns the devices where a write failed (their other copy may still
    /// be valid).
    ///
    /// # Errors
    /// [`Error::CorruptMetadata`] if the superblock cannot be encoded.
    pub fn write_superblocks(&self) -> Result<Vec<(String, DeviceError)>> {
        let (failures, flushes_failed) = self.write_superblocks_once()?;
        // A member whose superblock flush failed may also have lost writes still in its cache,
        // whose flush error this flush has now taken: a later flush that succeeds cannot
        // vouch for them. When the pool can lose it, it leaves service at once (it is rebuilt,
        // as for a failed write: the failure costs the member, not the pool; a member that
        // does not answer is left to the away policy, V4.16). Otherwise it is marked, so that
        // no commit is acknowledged while it is in service. (Marking it alone, whatever the
        // tolerance, made every later flush of the pool fail for one member's error:
        // simulation seed 5501238.)
        for name in flushes_failed {
            let Some(index) = self
                .data
                .iter()
                .position(|m| m.device().is_some_and(|d| d.name() == name))
            else {
                continue;
            };
            let member = &self.data[index];
            let unreachable = member
                .device
                .read()
                .as_ref()
                .is_some_and(|d| d.is_unreachable());
            if !unreachable
                && self.fault_if_available(
                    DeviceIndex(index),
                    &format!("flush failed: {name}: writes in its cache may be lost"),
                )
            {
                continue;
            }
            if let Some(flag) = self.flush_failed.get(index) {
                flag.store(true, Ordering::Release);
            }
        }
        Ok(failures)
    }

    /// Whether a member in service failed a flush outside a commit since the pool was opened
    /// (see the field): writes before it may be gone from it.
    pub(crate) fn unflushed_lost(&self) -> bool {
        self.data
            .iter()
            .zip(&self.flush_failed)
            .any(|(member, failed)| failed.load(Ordering::Acquire) && member.is_online())
    }

    /// [`Members::write_superblocks`] under the writer's lock: the failures, and the devices
    /// whose failure was their flush.
    fn write_superblocks_once(&self) -> Result<SuperblockFailures> {
        if self.policy.read_only {
            return Ok((Vec::new(), Vec::new())); // a read-only open records nothing
        }
        let _writer = self.superblock_writer.lock();
        let spares = self.spares();
        let counters = self.counters();
        self.events_unpersisted.store(false, Ordering::Release);
        let mut template = self.superblock.lock();
        template.generation += 1;
        template.history.counters = counters;
        template.members = self
            .data
            .iter()
            .flat_map(MemberDevice::member_records)
            .chain(spares.iter().map(|s| Member {
                uuid: s.identity.uuid,
                role: Role::Spare,
                state: match &s.fault {
                    Some(reason) => MemberState::Faulted {
                        reason: reason.clone(),
                    },
                    None => MemberState::Online,
                },
                path: s.identity.path.clone(),
                domain: s.identity.domain.clone(),
                unavailable: None,
            }))
            .collect();
        // A fork is recorded while a member it left out has not rejoined.
        let members = template.members.clone();
        template.forks = std::mem::take(&mut template.forks)
            .into_iter()
            .filter_map(|fork| fork.still_away(&members))
            .collect();
        let mut devices: Vec<(PoolUuid, SharedDevice)> = Vec::new();
        for member in &self.data {
            if let Some(device) = member.device() {
                devices.push((member.identity().uuid, device));
            }
            if let Some(replacement) = member.replacement() {
                devices.push((replacement.identity.uuid, Arc::clone(&replacement.device)));
            }
        }
        for spare in &spares {
            if let (Some(device), None) = (&spare.device, &spare.fault) {
                devices.push((spare.identity.uuid, Arc::clone(device)));
            }
        }
        let targets: Vec<(SharedDevice, Vec<u8>)> = devices
            .into_iter()
            .map(|(uuid, device)| {
                let mut superblock = template.clone();
                superblock.device_uuid = uuid;
                superblock.encode().map(|bytes| (device, bytes))
            })
            .collect::<std::result::Result<_, String>>()
            .map_err(Error::corrupt_metadata)?;
        let generation = template.generation;
        drop(template);
        let mut failures = Vec::new();
        let mut flushes_failed = Vec::new();
        for copy in 0..2 {
            let failed: Vec<(String, DeviceError, bool)> =
                super::parallel::each(&targets, |(device, bytes)| {
                    let offset = if copy == 0 {
                        0
                    } else {
                        super::open::superblock_b_offset(device.as_ref())
                    };
                    match device.write_at(offset, bytes) {
                        Err(err) => Some((device.name(), err, false)),
                        Ok(()) => device.flush().err().map(|err| (device.name(), err, true)),
                    }
                })
                .into_iter()
                .flatten()
                .collect();
            for (name, err, flush) in failed {
                if flush {
                    flushes_failed.push(name.clone());
                }
                failures.push((name, err));
            }
        }
        for (device, err) in &failures {
            tracing::warn!(%device, %err, "superblock write failed");
        }
        // A member holds this generation if at least one of its two copies was written (a
        // read takes the newest copy that verifies); when both failed it may hold it or not.
        for member in &self.data {
            if let Some(device) = member.device() {
                let name = device.name();
                let held = if failures.iter().filter(|(d, _)| *d == name).count() < 2 {
                    &member.superblock_generation
                } else {
                    &member.superblock_attempted
                };
                held.store(generation, Ordering::Release);
            }
        }
        *self.persisted.lock() = counters;
        Ok((failures, flushes_failed))
    }
}

/// What a superblock write failed on: `(device, error)` for every failed write or flush, and
/// the devices whose failure was the flush.
type SuperblockFailures = (Vec<(String, DeviceError)>, Vec<String>);

/// Which counter an error goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// I/O error on read.
    Read,
    /// I/O error on write or flush.
    Write,
    /// Content did not verify.
    Checksum,
}

/// One error on one device, typed: the device failed a request, or answered with bytes whose
/// checksum did not match.
#[derive(Debug, Clone, Copy)]
pub enum DeviceFault<'a> {
    /// A read failed.
    Read(&'a DeviceError),
    /// A write or flush failed.
    Write(&'a DeviceError),
    /// A read returned bytes that did not verify.
    Checksum(&'a crate::error::Corruption),
}

impl DeviceFault<'_> {
    /// The counter it goes to.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            DeviceFault::Read(_) => ErrorKind::Read,
            DeviceFault::Write(_) => ErrorKind::Write,
            DeviceFault::Checksum(_) => ErrorKind::Checksum,
        }
    }

    fn is_gone(&self) -> bool {
        matches!(
            self,
            // Unavailable (a member out of reach over NBD) as Gone: the policy for members
            // away asks the device (`is_unreachable`) before this is consulted.
            DeviceFault::Read(DeviceError::Gone(_) | DeviceError::Unavailable(_))
                | DeviceFault::Write(DeviceError::Gone(_) | DeviceError::Unavailable(_))
        )
    }
}

impl std::fmt::Display for DeviceFault<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceFault::Read(err) | DeviceFault::Write(err) => err.fmt(f),
            DeviceFault::Checksum(corruption) => corruption.fmt(f),
        }
    }
}
