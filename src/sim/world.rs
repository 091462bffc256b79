//! The simulated machine: devices (in-memory medium → fault injector → power switch), the
//! pool, the model, and the step executor with its checks.

use super::{Op, RunReport, SimConfig, Stats, Violation};
use crate::device::{
    Device, FaultConfig, FaultKind, FaultPlan, FaultyDevice, MemDevice, PowerCut, SharedDevice,
};
use crate::error::{Error, Result};
use crate::geometry::Layout;
use crate::testing::{random_bytes, rng, CrashModel};
use crate::{CreateOptions, OpenOptions, Pool, PoolStatus};
use parking_lot::Mutex;
use rand::Rng;
use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

mod away;
mod classes;
mod points;
mod replica;

const POWER_ON: i64 = i64::MAX / 2;
/// Spares kept available at most (each costs a device image).
const SPARES_MAX: usize = 2;

/// One simulated disk.
struct Disk {
    name: String,
    mem: Arc<MemDevice>,
    plan: Arc<Mutex<FaultPlan>>,
    handle: SharedDevice,
    /// A fault was injected into it (it counts against the damage budget while a member).
    damaged: bool,
    /// The simulation made it unreachable (docs/FORMAT.md V4.16 §3) and it is not back in
    /// service yet: the pool may mark it away, or fault it when the grace period ends.
    away: bool,
    /// A flush succeeded while the pool showed it UNAVAILABLE: the superblocks record it
    /// away, so every open while it does not answer must show it so.
    recorded_away: bool,
    /// Its resync (or full copy) was started: once it is in service again, `tolerance`
    /// other members are lost and every byte must read back.
    resync_pending: bool,
}

struct World<'a> {
    config: &'a SimConfig,
    disks: Vec<Disk>,
    pool: Option<Pool>,
    model: CrashModel,
    countdown: Arc<AtomicI64>,
    /// Where injected faults may land on each device.
    region: Range<u64>,
    tolerance: usize,
    stats: Stats,
    spares_made: usize,
    /// The range of the latest write, read back after every step.
    last_write: Option<(u64, usize)>,
    /// Another pool's members (made on first use), for devices the pool must refuse.
    foreign: Vec<Arc<MemDevice>>,
    /// Fresh devices made for healthy replaces.
    fresh_made: usize,
    /// Armed by a healthy replace: the power-cut countdown the replacement's next flush (the
    /// first request of the swap-in) sets; [`classes::DISARMED`] otherwise.
    swap_in_cut: Arc<AtomicI64>,
    /// The recovery points the pool must have, oldest first, with their content.
    points: Vec<points::SimPoint>,
    /// Recovery points deleted (or released) to make room while the power was being cut in
    /// a crash's burst: whether the delete landed is known after the reopen.
    points_limbo: Vec<points::SimPoint>,
    /// Recovery points taken so far (their names are `rp0`, `rp1`, …).
    points_made: u64,
    /// Verifies so far that read a recovery point back (which one is read turns).
    points_checked: u64,
    /// The pool recovery points are sent to and received in (made on first use).
    replica: Option<replica::Replica>,
    /// The failure domain of each data position at create (empty: no domains).
    domains: Vec<String>,
    /// The positions of a failure domain lost whole right now ([`Op::DomainLoss`]): damage
    /// confined to them is within what the pool must survive.
    domain_out: Option<BTreeSet<usize>>,
}

type Check = std::result::Result<(), String>;

pub(super) fn run(config: &SimConfig, ops: &[Op]) -> Result<RunReport> {
    let mut world = World::create(config)?;
    let mut violation = None;
    let mut seen: HashMap<u32, u64> = HashMap::new();
    for (step, op) in ops.iter().enumerate() {
        // Fault decisions are keyed on the op itself (and how many identical ops came before),
        // not on its index: dropping unrelated ops while shrinking leaves them unchanged.
        let key = crc32c::crc32c(format!("{op:?}").as_bytes());
        let nth = seen.entry(key).or_insert(0);
        *nth += 1;
        let epoch = (u64::from(key) << 32) | *nth;
        for disk in &world.disks {
            disk.plan.lock().set_epoch(epoch);
        }
        *world.stats.ops.entry(op.name().to_string()).or_default() += 1;
        let outcome = world
            .step(op)
            .and_then(|()| world.check_no_spontaneous_faults())
            .and_then(|()| world.check_domain_rule())
            .and_then(|()| world.settle_away(epoch))
            .and_then(|()| world.spot_check(op));
        if let Err(message) = outcome {
            violation = Some(Violation {
                step,
                op: op.clone(),
                message,
            });
            break;
        }
        if matches!(op, Op::BeyondTolerance { .. }) {
            break;
        }
    }
    if let Some(pool) = world.pool.take() {
        pool.simulate_power_loss();
    }
    let mut stats = std::mem::take(&mut world.stats);
    stats.runs = 1;
    stats.violations = u64::from(violation.is_some());
    for disk in &world.disks {
        let plan = disk.plan.lock();
        for kind in FaultKind::ALL {
            let count = plan.count(kind) as u64;
            if count > 0 {
                *stats.faults.entry(kind.name().to_string()).or_default() += count;
            }
        }
    }
    Ok(RunReport { stats, violation })
}

fn is_clear(err: &Error) -> bool {
    matches!(
        err,
        Error::Unrecoverable { .. }
            | Error::UnrecoverableBlock { .. }
            | Error::MetadataLost { .. }
            | Error::PoolUnavailable { .. }
    )
}

impl<'a> World<'a> {
    /// A clear error beyond the tolerance ([`is_clear`]); while a device does not answer, also
    /// the I/O error of a member the pool could not mark away (it cannot lose it: docs/FORMAT.md
    /// V4.16 §7, F1). Found by the first campaign with members away: a write beyond the
    /// tolerance then fails with `Io` naming the silent member rather than `PoolUnavailable`
    /// (`AwayBeyond` on mirror:2, one op); reported, accepted here until the pool says it.
    fn is_clear_now(&self, err: &Error) -> bool {
        is_clear(err)
            || (matches!(err, Error::Io { .. })
                && self.disks.iter().any(|d| d.mem.is_unreachable()))
    }

    fn create(config: &'a SimConfig) -> Result<Self> {
        let countdown = Arc::new(AtomicI64::new(POWER_ON));
        let mut world = Self {
            config,
            disks: Vec::new(),
            pool: None,
            model: CrashModel::new(0),
            countdown,
            region: 0..u64::MAX,
            tolerance: config.layout.tolerance(),
            stats: Stats::default(),
            spares_made: 0,
            last_write: None,
            foreign: Vec::new(),
            fresh_made: 0,
            swap_in_cut: Arc::new(AtomicI64::new(classes::DISARMED)),
            points: Vec::new(),
            points_limbo: Vec::new(),
            points_made: 0,
            points_checked: 0,
            replica: None,
            domains: if config.format4 && config.domains {
                away::domains_for(config.layout, config.devices)
            } else {
                Vec::new()
            },
            domain_out: None,
        };
        let handles: Vec<SharedDevice> = (0..config.devices)
            .map(|i| world.new_disk(format!("d{i}")))
            .collect();
        let mut options = CreateOptions::new(config.layout);
        options.chunk_bytes = config.chunk_bytes;
        options.open = Self::open_options(config, false, false);
        options.format = Self::format(config);
        options.domains.clone_from(&world.domains);
        let pool = Pool::create(handles, vec![], &options)?;
        // Deletes a leaf at a time: the simulation's small volumes then have deletes part-way
        // (docs/FORMAT.md V4.10e) for writes, crashes and faults to fall between.
        pool.set_reclaim_step_pages(1);
        let geometry = pool.geometry();
        world.region = if config.metadata_faults {
            0..geometry.device_bytes
        } else {
            geometry.data_offset..geometry.data_end()
        };
        for disk in &world.disks {
            disk.plan.lock().set_region(world.region.clone());
        }
        world.model = CrashModel::new(pool.size());
        world.pool = Some(pool);
        Ok(world)
    }

    /// The format of the run's pools (the pool under test and any foreign pool it meets):
    /// version 4 with the smallest sizes, so that small members hold many segments, or 3.
    pub(crate) fn format(config: &SimConfig) -> crate::pool::FormatVersion {
        if config.format4 {
            crate::pool::FormatVersion::V4(crate::pool::V4Options {
                segment_slots: 4,
                uberblock_slots: 4,
                log_half_bytes: 16384,
                min_depth: 2,
                sync_pages_max: None,
                record_max: Some(4096),
                // Both leaf codecs (docs/FORMAT.md V4.17): one seed in four runs a pool made as
                // builds before sectored leaves made it.
                sectored_leaves: config.seed % 4 != 3,
            })
        } else {
            // Version 3's own engine, under test: the machinery's switch for this thread (a
            // build refuses version-3 writes), set where the run's pools are made.
            crate::testing::allow_format_3_writes(true);
            crate::pool::FormatVersion::V3
        }
    }

    fn open_options(config: &SimConfig, force: bool, read_only: bool) -> OpenOptions {
        OpenOptions {
            // Heal single errors; a device that keeps failing is marked degraded.
            error_threshold: crate::pool::DEFAULT_ERROR_THRESHOLD,
            // A window no run outlasts: whether errors degrade a device must not depend on
            // how fast this machine is, or a seed would not replay.
            error_window: std::time::Duration::from_secs(24 * 3600),
            read_only,
            background_rebuild: false,
            auto_replace: true,
            rebuild_rate_bytes_per_s: None,
            force,
            // 32 pages: evictions and cold reads of the map in every run.
            map_cache_bytes: if config.format4 {
                32 * 16384
            } else {
                crate::pool::DEFAULT_MAP_CACHE_BYTES
            },
            // Members away (docs/FORMAT.md V4.16): the default grace (no run outlasts it), or
            // none at all for some seeds; back at the first probe that answers.
            unavailable_grace: if config.short_grace {
                std::time::Duration::ZERO
            } else {
                crate::pool::DEFAULT_UNAVAILABLE_GRACE
            },
            returning_quiet: std::time::Duration::ZERO,
            // Rebuild and scrub plans in windows (docs/FORMAT.md V4.13): one seed in three
            // plans windows of 1 to 24 entries, so passes cross windows while writes, syncs
            // and recovery points change the trees between them; the others keep the default
            // (one walk for the whole pass at these sizes).
            plan_window_entries: if config.seed % 3 == 1 {
                1 + (config.seed / 3 % 24) as usize
            } else {
                0
            },
            planted: config.planted,
        }
    }

    fn new_disk(&mut self, name: String) -> SharedDevice {
        self.new_disk_with(name, false)
    }

    /// A new disk; with `swap_in_trigger`, its flushes can start a power-cut countdown (see
    /// [`World::swap_in_cut`]).
    fn new_disk_with(&mut self, name: String, swap_in_trigger: bool) -> SharedDevice {
        let index = self.disks.len() as u64;
        let mem = Arc::new(MemDevice::new(name.clone(), self.config.device_bytes));
        let (faulty, plan) = FaultyDevice::new(
            Arc::clone(&mem) as SharedDevice,
            self.config.seed ^ (index + 1).wrapping_mul(0x2545_F491_4F6C_DD1D),
        );
        plan.lock().set_region(self.region.clone());
        let mut handle: SharedDevice = Arc::new(PowerCut::new(
            Arc::new(faulty) as SharedDevice,
            Arc::clone(&self.countdown),
        ));
        if swap_in_trigger {
            handle = Arc::new(classes::SwapInTrigger {
                inner: handle,
                armed: Arc::clone(&self.swap_in_cut),
                countdown: Arc::clone(&self.countdown),
            });
        }
        self.disks.push(Disk {
            name,
            mem,
            plan,
            handle: Arc::clone(&handle),
            damaged: false,
            away: false,
            recorded_away: false,
            resync_pending: false,
        });
        handle
    }

    fn pool(&self) -> std::result::Result<&Pool, String> {
        self.pool
            .as_ref()
            .ok_or_else(|| "the pool is not open".to_string())
    }

    fn disk(&self, name: &str) -> Option<usize> {
        self.disks.iter().position(|d| d.name == name)
    }

    /// Positions that may hold bad data: faulted, or served by a device with injected faults.
    fn damaged_positions(&self, status: &PoolStatus) -> BTreeSet<usize> {
        let mut damaged = BTreeSet::new();
        for device in &status.devices {
            let Some(position) = device.index else {
                continue;
            };
            let injected = self
                .disk(&device.path)
                .is_some_and(|d| self.disks[d].damaged);
            let faulted = device.replacing.is_none() && device.state == "FAULTED";
            // Out of service while away or being resynced, or not answering (yet unnoticed).
            let away = device.replacing.is_none()
                && (matches!(device.state.as_str(), "UNAVAILABLE" | "RESYNCING")
                    || self
                        .disk(&device.path)
                        .is_some_and(|d| self.disks[d].mem.is_unreachable()));
            if injected || faulted || away {
                damaged.insert(position);
            }
        }
        damaged
    }

    fn within_tolerance(&self) -> bool {
        self.pool
            .as_ref()
            .is_some_and(|pool| self.survivable(&self.damaged_positions(&pool.status())))
    }

    /// Whether the pool must survive damage at `damaged`: at most `tolerance` positions, or
    /// all of them in the one failure domain lost whole.
    fn survivable(&self, damaged: &BTreeSet<usize>) -> bool {
        damaged.len() <= self.tolerance
            || self
                .domain_out
                .as_ref()
                .is_some_and(|domain| damaged.is_subset(domain))
    }

    /// The device in service at `position` that a new fault may hit, if the budget allows.
    fn fault_target(&self, position: u8) -> Option<usize> {
        let status = self.pool.as_ref()?.status();
        let position = usize::from(position) % self.config.devices;
        let member = status
            .devices
            .iter()
            .find(|d| d.index == Some(position) && d.replacing.is_none())?;
        if matches!(
            member.state.as_str(),
            "FAULTED" | "UNAVAILABLE" | "RESYNCING"
        ) {
            return None;
        }
        let disk = self.disk(&member.path)?;
        if self.disks[disk].plan.lock().is_gone() || self.disks[disk].mem.is_unreachable() {
            return None;
        }
        let damaged = self.damaged_positions(&status);
        (self.disks[disk].damaged || damaged.len() < self.tolerance).then_some(disk)
    }

    /// A faulted position whose device the harness did not damage means the pool gave up on a
    /// healthy device: a bug.
    fn check_no_spontaneous_faults(&self) -> Check {
        let Some(pool) = self.pool.as_ref() else {
            return Ok(());
        };
        for device in pool.status().devices {
            if device.state == "UNAVAILABLE" && device.replacing.is_none() {
                if let Some(disk) = self.disk(&device.path) {
                    if !self.disks[disk].away {
                        return Err(format!(
                            "the pool took {} for away although it was never made unreachable: {}",
                            device.path,
                            device.reason.unwrap_or_default()
                        ));
                    }
                }
            }
            if device.state != "FAULTED" || device.replacing.is_some() {
                continue;
            }
            if let Some(disk) = self.disk(&device.path) {
                // (A member away is faulted when its grace period ends, or when it was not
                // answering at an open.)
                if !self.disks[disk].damaged && !self.disks[disk].away {
                    return Err(format!(
                        "the pool faulted {} although no fault was injected into it: {}",
                        device.path,
                        device.reason.unwrap_or_default()
                    ));
                }
            }
        }
        Ok(())
    }

    fn clamp(&self, offset: u64, len: u32) -> (u64, usize) {
        let size = self.model.latest.len();
        let offset = offset % size;
        let len = u64::from(len).clamp(1, size - offset);
        (offset, usize::try_from(len).unwrap_or(1))
    }

    /// Power goes off: the pool is dropped without closing, every disk loses what it had not
    /// made durable (seeded per disk from `seed`), and the power-cut countdown is disarmed.
    pub(super) fn power_cut(&mut self, seed: u64) {
        if let Some(pool) = self.pool.take() {
            pool.simulate_power_loss();
        }
        for (i, disk) in self.disks.iter().enumerate() {
            disk.mem
                .crash(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9));
        }
        self.countdown.store(POWER_ON, Ordering::SeqCst);
    }

    /// Close the pool (what it flushed is now the model's durable state) and open it again.
    fn reopen(&mut self) -> Check {
        let status = self.close_pool()?;
        self.open(&status)?;
        self.verify_usage("after reopen")?;
        self.verify("after reopen")
    }

    /// Add a new spare disk (up to `SPARES_MAX`).
    fn add_spare(&mut self) -> Check {
        let pool = self.pool()?;
        if pool.status().spares.len() >= SPARES_MAX {
            self.stats.skipped += 1;
            return Ok(());
        }
        let within = self.within_tolerance();
        self.spares_made += 1;
        let handle = self.new_disk(format!("s{}", self.spares_made));
        let added = if self.domains.is_empty() {
            self.pool()?.add_spare(handle, false)
        } else {
            // Every third in a domain of its own; the others in a member's domain, where only
            // some positions may take it (docs/FORMAT.md V4.16 §2).
            let domain = if self.spares_made.is_multiple_of(3) {
                "spare-host".to_string()
            } else {
                self.domains[self.spares_made % self.domains.len()].clone()
            };
            self.pool()?.add_spare_in(handle, false, &domain)
        };
        match added {
            Ok(()) => Ok(()),
            Err(err) if within => Err(format!("add spare failed within tolerance: {err}")),
            Err(_) => Ok(()),
        }
    }

    /// One rebuild step.
    fn rebuild_once(&mut self) -> Check {
        let within = self.within_tolerance();
        match self.pool()?.rebuild_step(true) {
            Ok(outcome) => {
                self.stats.rebuilds_completed += outcome.completed.len() as u64;
                Ok(())
            }
            Err(err) if within => Err(format!("rebuild step failed within tolerance: {err}")),
            Err(_) => Ok(()),
        }
    }

    /// Rebuild until no rebuild is running, then verify everything.
    fn rebuild_all(&mut self) -> Check {
        let within = self.within_tolerance();
        for _ in 0..100_000 {
            match self.pool()?.rebuild_step(true) {
                Ok(outcome) => {
                    self.stats.rebuilds_completed += outcome.completed.len() as u64;
                    if outcome.running == 0 {
                        break;
                    }
                }
                Err(err) if within => {
                    return Err(format!("rebuild failed within tolerance: {err}"))
                }
                Err(_) => break,
            }
        }
        self.verify("after rebuild")
    }

    /// A whole scrub with repair, then verify everything.
    fn scrub(&mut self) -> Check {
        let within = self.within_tolerance();
        // Checkpoints after every step, not every second: the writes a scrub makes
        // must not depend on how fast this machine is, or a seed would not replay.
        let options = crate::ScrubOptions {
            checkpoint_interval: Some(std::time::Duration::ZERO),
            ..crate::ScrubOptions::default()
        };
        match self.pool()?.scrub_with(&options, |_| {}) {
            Ok(report) => {
                self.stats.scrub_bad_shards += report.bad_shards;
                if within && report.unrepairable_stripes > 0 {
                    return Err(format!(
                        "scrub found {} unrepairable stripes within tolerance",
                        report.unrepairable_stripes
                    ));
                }
            }
            Err(err) if within => return Err(format!("scrub failed within tolerance: {err}")),
            Err(_) => {}
        }
        self.verify("after scrub")
    }

    /// A repairing scrub in chunks with writes and a flush between two of its chunks (see
    /// [`Op::ScrubBeside`]); within the tolerance it must end completed with nothing
    /// unrepairable, and every byte must read back.
    fn scrub_beside(&mut self, pause_after: u8, writes: u8, reopen: bool, seed: u64) -> Check {
        let within = self.within_tolerance();
        let mut rng = rng(seed);
        let planned: Vec<(u64, Vec<u8>)> = (0..writes)
            .map(|_| {
                let (offset, len) = self.clamp(
                    rng.gen_range(0..u64::from(u32::MAX)),
                    rng.gen_range(1..64 * 1024),
                );
                (offset, random_bytes(&mut rng, len))
            })
            .collect();
        let options = crate::ScrubOptions {
            checkpoint_interval: Some(std::time::Duration::ZERO),
            ..crate::ScrubOptions::default()
        };
        let pool = self.pool()?;
        let mut chunks = 0u8;
        let mut outcomes = Vec::new();
        let mut flushed = None;
        let scrubbed = pool.scrub_with(&options, |_| {
            chunks += 1;
            if chunks == pause_after {
                outcomes = planned
                    .iter()
                    .map(|(offset, data)| pool.write_at(*offset, data))
                    .collect();
                // A flush, so that syncs free and take again segments the pass walked.
                flushed = Some(pool.flush());
            }
            if reopen && chunks == pause_after.saturating_add(1) {
                pool.pause_scrub();
            }
        });
        // Out of room for recovery points (see `with_room`): from the first refused write on,
        // again in order with room made, then flushed again (the flush above came before).
        if let Some(first) = outcomes
            .iter()
            .position(|o| matches!(o, Err(Error::NoFreeSlot(_))))
            .filter(|_| self.room_can_be_made())
        {
            for (i, (offset, data)) in planned.iter().enumerate().skip(first) {
                outcomes[i] = self.with_room(|pool| pool.write_at(*offset, data));
            }
            flushed = Some(self.pool()?.flush());
        }
        // The writes the scrub's chunks made room for: the model learns them in order.
        for ((offset, data), outcome) in planned.iter().zip(outcomes) {
            self.model.write(*offset, data);
            self.last_write = Some((*offset, data.len()));
            match outcome {
                Ok(()) => {}
                Err(err) if within => {
                    return Err(format!(
                        "a write beside a scrub failed within tolerance: {err}"
                    ))
                }
                Err(err) if self.is_clear_now(&err) => {}
                Err(err) => return Err(format!("write failed with an unclear error: {err}")),
            }
        }
        match flushed {
            Some(Ok(())) => self.model.flushed(),
            Some(Err(err)) if within => {
                return Err(format!(
                    "a flush beside a scrub failed within tolerance: {err}"
                ))
            }
            Some(Err(_)) | None => {}
        }
        let mut report = match scrubbed {
            Ok(report) => report,
            Err(err) if within => return Err(format!("scrub failed within tolerance: {err}")),
            Err(_) => return self.verify("after a failed scrub"),
        };
        if report.end == crate::pool::ScrubEnd::Paused {
            if reopen {
                self.reopen()?;
            }
            let resume = crate::ScrubOptions {
                resume: true,
                ..options
            };
            report = match self.pool()?.scrub_with(&resume, |_| {}) {
                Ok(report) => report,
                Err(err) if within => {
                    return Err(format!("the resumed scrub failed within tolerance: {err}"))
                }
                Err(_) => return self.verify("after a failed resumed scrub"),
            };
        }
        self.stats.scrub_bad_shards += report.bad_shards;
        if within && report.end != crate::pool::ScrubEnd::Completed {
            return Err(format!("the scrub ended {:?}, not completed", report.end));
        }
        if within && report.unrepairable_stripes > 0 {
            return Err(format!(
                "scrub found {} unrepairable places within tolerance",
                report.unrepairable_stripes
            ));
        }
        self.verify("after a scrub beside writes")
    }

    fn step(&mut self, op: &Op) -> Check {
        match op {
            Op::Write {
                offset,
                len,
                data_seed,
            } => {
                let (offset, len) = self.clamp(*offset, *len);
                let data = random_bytes(&mut rng(*data_seed), len);
                self.write(offset, &data)
            }
            Op::WriteTogether { writes } => {
                let writes: Vec<(u64, Vec<u8>)> = writes
                    .iter()
                    .map(|(offset, len, seed)| {
                        let (offset, len) = self.clamp(*offset, *len);
                        (offset, random_bytes(&mut rng(*seed), len))
                    })
                    .collect();
                self.write_together(&writes)
            }
            Op::Discard { offset, len } => {
                let (offset, len) = self.clamp(*offset, *len);
                self.discard(offset, len)
            }
            Op::Read { offset, len } => {
                let (offset, len) = self.clamp(*offset, *len);
                self.read_and_compare(offset, len)
            }
            Op::Flush => self.flush(),
            Op::Verify => self.verify("verify"),
            Op::RecoveryPointCreate => self.point_create(),
            Op::RecoveryPointDelete { pick } => self.point_delete(*pick),
            Op::RecoveryPointHold { pick } => self.point_hold(*pick),
            Op::RecoveryPointRead { pick, offset, len } => self.point_read(*pick, *offset, *len),
            Op::RecoveryPointRollback { pick } => self.point_rollback(*pick),
            Op::Replicate { pick, cut, seed } => self.replicate(*pick, *cut, *seed),
            Op::Away {
                device,
                writes,
                seed,
            } => self.away(*device, *writes, *seed),
            Op::Back { pick, seed } => self.back(*pick, *seed),
            Op::AwayBeyond { device, seed } => self.away_beyond(*device, *seed),
            Op::DomainLoss { pick, seed } => self.domain_loss(*pick, *seed),
            Op::Reopen => self.reopen(),
            Op::Crash { seed, cut_after } => self.crash(*seed, *cut_after),
            Op::FailStop { device } => self.inject(*device, |plan| plan.fail_stop()),
            Op::Rot { device, count } => self.inject(*device, |plan| {
                plan.rot_random(usize::from(*count));
            }),
            Op::LatentErrors { device, count } => self.inject(*device, |plan| {
                plan.add_random_bad_ranges(usize::from(*count), 16);
            }),
            Op::Configure { device, seed } => {
                let mut allowed = self.config.faults.kinds.clone();
                // Rot and latent errors have their own ops; keep the configuration to the rest.
                allowed.retain(|k| !matches!(k, FaultKind::RotAtRest | FaultKind::ReadError));
                let config = FaultConfig::random(*seed, &allowed);
                self.inject(*device, |plan| plan.configure(&config))
            }
            Op::AddSpare => self.add_spare(),
            Op::ReplaceWithSpare { device } => self.replace(*device),
            Op::RebuildStep => self.rebuild_once(),
            Op::Rebuild => self.rebuild_all(),
            Op::Scrub => self.scrub(),
            Op::ScrubBeside {
                pause_after,
                writes,
                reopen,
                seed,
            } => self.scrub_beside(*pause_after, *writes, *reopen, *seed),
            Op::BeyondTolerance { seed } => self.beyond_tolerance(*seed),
            Op::LocalDamage {
                stripe,
                count,
                seed,
            } => self.local_damage(*stripe, *count, *seed),
            Op::ReplaceHealthy {
                device,
                cut_after,
                seed,
            } => self.replace_healthy(*device, *cut_after, *seed),
            Op::AdminWithBadDevice {
                action,
                kind,
                device,
            } => self.admin_with_bad_device(*action, *kind, *device),
            Op::OpenSubset { seed } => self.open_subset(*seed),
            Op::ReadOnlyLook { seed } => self.read_only_look(*seed),
        }
    }

    /// After every step (but the last, which leaves the pool beyond repair), read back what the
    /// latest write touched.
    fn spot_check(&mut self, op: &Op) -> Check {
        match (self.last_write, op) {
            (_, Op::BeyondTolerance { .. }) | (None, _) => Ok(()),
            (Some((offset, len)), _) => self
                .read_and_compare(offset, len)
                .map_err(|e| format!("read-back of the latest write: {e}")),
        }
    }

    fn within_tolerance_of(&self, pool: &Pool) -> bool {
        self.survivable(&self.damaged_positions(&pool.status()))
    }

    fn inject(&mut self, position: u8, fault: impl FnOnce(&mut FaultPlan)) -> Check {
        let Some(disk) = self.fault_target(position) else {
            self.stats.skipped += 1;
            return Ok(());
        };
        self.disks[disk].damaged = true;
        fault(&mut self.disks[disk].plan.lock());
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Check {
        let within = self.within_tolerance();
        self.model.write(offset, data);
        self.last_write = Some((offset, data.len()));
        match self.with_room(|pool| pool.write_at(offset, data)) {
            Ok(()) => Ok(()),
            Err(err) if within => Err(format!(
                "write of {} bytes at {offset} failed within tolerance: {err}",
                data.len()
            )),
            Err(err) if self.is_clear_now(&err) => Ok(()),
            Err(err) => Err(format!("write failed with an unclear error: {err}")),
        }
    }

    /// Writes queued together (see [`Op::WriteTogether`]): each checked as [`World::write`]
    /// checks one.
    fn write_together(&mut self, writes: &[(u64, Vec<u8>)]) -> Check {
        let within = self.within_tolerance();
        for (offset, data) in writes {
            self.model.write(*offset, data);
            self.last_write = Some((*offset, data.len()));
        }
        let borrowed: Vec<(u64, &[u8])> = writes.iter().map(|(o, d)| (*o, d.as_slice())).collect();
        // Half of them as a server queues a client's writes (nobody waits; outcomes told to
        // a sink), the other half as waiting writers queue theirs: the same queue and leader.
        let queued = writes
            .first()
            .is_some_and(|(o, d)| (o / 4096 + d.len() as u64) % 2 == 1);
        let mut outcomes = if queued {
            write_queued_all(self.pool()?, &borrowed)
        } else {
            self.pool()?.write_together(&borrowed)
        };
        // Out of room for recovery points: from the first refused write on, again in order
        // (a later write over an earlier one must still win), with room made.
        if let Some(first) = outcomes
            .iter()
            .position(|o| matches!(o, Err(Error::NoFreeSlot(_))))
            .filter(|_| self.room_can_be_made())
        {
            for (i, (offset, data)) in writes.iter().enumerate().skip(first) {
                outcomes[i] = self.with_room(|pool| pool.write_at(*offset, data));
            }
        }
        for ((offset, data), outcome) in writes.iter().zip(outcomes) {
            match outcome {
                Ok(()) => {}
                Err(err) if within => {
                    return Err(format!(
                    "write of {} bytes at {offset} (of {} together) failed within tolerance: {err}",
                    data.len(),
                    writes.len()
                ))
                }
                Err(err) if self.is_clear_now(&err) => {}
                Err(err) => return Err(format!("write failed with an unclear error: {err}")),
            }
        }
        Ok(())
    }

    /// Discard a range: the model learns zeros there (a discarded block reads as zeros, and
    /// after a crash as its old content or zeros).
    fn discard(&mut self, offset: u64, len: usize) -> Check {
        let within = self.within_tolerance();
        self.model.write(offset, &vec![0u8; len]);
        self.last_write = Some((offset, len));
        match self.with_room(|pool| pool.discard(offset, len as u64)) {
            Ok(()) => Ok(()),
            Err(err) if within => Err(format!(
                "discard of {len} bytes at {offset} failed within tolerance: {err}"
            )),
            Err(err) if self.is_clear_now(&err) => Ok(()),
            Err(err) => Err(format!("discard failed with an unclear error: {err}")),
        }
    }

    fn flush(&mut self) -> Check {
        let within = self.within_tolerance();
        match self.pool()?.flush() {
            Ok(()) => {
                self.model.flushed();
                self.note_recorded_away();
                Ok(())
            }
            Err(err) if within => Err(format!("flush failed within tolerance: {err}")),
            Err(_) => Ok(()),
        }
    }

    /// Read a range and compare it with the model: about half the ranges (by a hash of the
    /// range, so a replay does the same) in one piece (`Pool::read_at`), the others cut at its 4 KiB boundaries into reads taken together
    /// (`Pool::read_many`, as the NBD server takes the requests a client sent together), the
    /// whole blocks first (they go in one batch) and the ragged ends last, each piece
    /// judged on its own.
    fn read_and_compare(&mut self, offset: u64, len: usize) -> Check {
        let within = self.within_tolerance();
        let together = self.config.reads_together
            && ((offset / 4096) ^ len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 63 == 1;
        let mut pieces: Vec<(u64, usize)> = Vec::new();
        let mut ragged = Vec::new();
        let mut at = offset;
        let end = offset + len as u64;
        while at < end {
            let next = ((at / 4096 + 1) * 4096).min(end);
            let piece = (at, usize::try_from(next - at).unwrap_or(0));
            if together && at.is_multiple_of(4096) && next.is_multiple_of(4096) {
                pieces.push(piece);
            } else {
                ragged.push(piece);
            }
            at = next;
        }
        if !together || pieces.is_empty() {
            pieces = vec![(offset, len)];
            ragged.clear();
        }
        pieces.extend(ragged);
        let mut buffers: Vec<Vec<u8>> = pieces.iter().map(|(_, len)| vec![0u8; *len]).collect();
        let outcomes = {
            let pool = self.pool()?;
            if pieces.len() == 1 {
                vec![pool.read_at(offset, &mut buffers[0])]
            } else {
                let mut parts: Vec<(u64, &mut [u8])> = pieces
                    .iter()
                    .zip(buffers.iter_mut())
                    .map(|((at, _), buf)| (*at, &mut buf[..]))
                    .collect();
                pool.read_many(&mut parts)
            }
        };
        // A read counts as checked when it came back whole and was compared, as in one piece.
        let mut checked = true;
        for (((offset, len), buf), outcome) in pieces.iter().zip(&buffers).zip(outcomes) {
            let (offset, len) = (*offset, *len);
            match outcome {
                Ok(()) => {
                    let expected = self.model.latest.read(offset, len);
                    if let Some(at) = buf.iter().zip(expected).position(|(a, b)| a != b) {
                        return Err(format!(
                            "WRONG BYTES: read of {len} bytes at {offset} differs from the model at volume byte {}",
                            offset + at as u64
                        ));
                    }
                }
                Err(err) if within => {
                    return Err(format!(
                        "read of {len} bytes at {offset} failed within tolerance: {err}"
                    ))
                }
                Err(err) if self.is_clear_now(&err) => checked = false,
                Err(err) => return Err(format!("read failed with an unclear error: {err}")),
            }
        }
        self.stats.checked_reads += u64::from(checked);
        Ok(())
    }

    fn verify(&mut self, when: &str) -> Check {
        let size = self.model.latest.len();
        let piece = 256 * 1024;
        let mut offset = 0;
        while offset < size {
            let len = usize::try_from(piece.min(size - offset)).unwrap_or(0);
            self.read_and_compare(offset, len)
                .map_err(|e| format!("{when}: {e}"))?;
            offset += len as u64;
        }
        self.verify_allocation(when)?;
        self.verify_points(when)
    }

    /// Within the tolerance: no run `Pool::allocation` reports unwritten holds a byte the
    /// model says is not zero (what `nbdcopy`, `qemu-img convert` and `create --copy-from`
    /// skip would be lost in the copy).
    fn verify_allocation(&mut self, when: &str) -> Check {
        if !self.within_tolerance() {
            return Ok(());
        }
        let Some(pool) = self.pool.as_ref() else {
            return Ok(());
        };
        let size = self.model.latest.len();
        let mut at = 0;
        while at < size {
            let extents = pool
                .allocation(at, size - at)
                .map_err(|e| format!("{when}: allocation at {at} failed: {e}"))?;
            let Some(last) = extents.last() else {
                return Err(format!("{when}: allocation at {at} answered nothing"));
            };
            let reached = last.offset + last.length;
            for extent in extents.iter().filter(|e| !e.allocated) {
                let len = usize::try_from(extent.length).unwrap_or(0);
                let bytes = self.model.latest.read(extent.offset, len);
                if let Some(i) = bytes.iter().position(|b| *b != 0) {
                    return Err(format!(
                        "{when}: HOLE OVER DATA: allocation reports {} bytes at {} unwritten, but the model holds data at volume byte {}",
                        extent.length,
                        extent.offset,
                        extent.offset + i as u64
                    ));
                }
            }
            if reached <= at {
                return Err(format!("{when}: allocation at {at} did not advance"));
            }
            at = reached;
        }
        Ok(())
    }

    /// Format version 4, within the tolerance, right after a clean close and open (the map
    /// is as its last sync left it): the recount of every tree equals the usage table
    /// (nothing leaked, nothing freed while named; docs/FORMAT.md V4.10a, V4.10e, V4.10f).
    fn verify_usage(&mut self, when: &str) -> Check {
        if !self.config.format4 || !self.within_tolerance() {
            return Ok(());
        }
        let Some(pool) = self.pool.as_ref() else {
            return Ok(());
        };
        match pool.check_usage() {
            Ok(()) => Ok(()),
            Err(Error::CorruptMetadata { reason, .. }) => Err(format!(
                "{when}: LEAK or DOUBLE FREE: the usage recount disagrees: {reason}"
            )),
            Err(_) => Ok(()),
        }
    }

    /// The devices to open the pool with: members and spares in service, not vanished.
    fn open_candidates(&self, status: Option<&PoolStatus>) -> Vec<usize> {
        let mut names: Vec<String> = match status {
            Some(status) => status
                .devices
                .iter()
                .filter(|d| d.replacing.is_some() || d.state != "FAULTED")
                .chain(status.spares.iter().filter(|s| s.state != "FAULTED"))
                .map(|d| d.path.clone())
                .collect(),
            None => self.disks.iter().map(|d| d.name.clone()).collect(),
        };
        names.dedup();
        names
            .iter()
            .filter_map(|name| self.disk(name))
            .filter(|d| !self.disks[*d].plan.lock().is_gone())
            // A device that does not answer cannot be given (its superblock cannot be read).
            .filter(|d| !self.disks[*d].mem.is_unreachable())
            .collect()
    }

    /// Open the pool again, as an operator would: leave out devices the pool refuses as stale
    /// or foreign (only acceptable for damaged ones), force when the present members cannot
    /// prove they are current.
    fn open_with(&mut self, candidates: Vec<usize>) -> Check {
        self.open_with_mode(candidates, false)
    }

    /// As [`World::open_with`], read-only if asked.
    fn open_with_mode(&mut self, candidates: Vec<usize>, read_only: bool) -> Check {
        self.open_refusing(candidates, read_only, &BTreeSet::new())
    }

    /// As [`World::open_with_mode`]; the pool may also refuse the devices in `refusable`.
    fn open_refusing(
        &mut self,
        mut candidates: Vec<usize>,
        read_only: bool,
        refusable: &BTreeSet<usize>,
    ) -> Check {
        let mut force = false;
        for _ in 0..64 {
            let handles: Vec<SharedDevice> = candidates
                .iter()
                .map(|d| Arc::clone(&self.disks[*d].handle))
                .collect();
            match Pool::open(handles, &Self::open_options(self.config, force, read_only)) {
                Ok(pool) => {
                    pool.set_reclaim_step_pages(1);
                    self.pool = Some(pool);
                    return self.check_away_after_open();
                }
                Err(Error::CannotProveCurrent { .. }) if !force => {
                    self.stats.forced_opens += 1;
                    force = true;
                }
                Err(Error::NotAMember { device, .. }) => match self.disk(&device) {
                    Some(d) if self.disks[d].damaged || refusable.contains(&d) => {
                        self.stats.refused_at_open += 1;
                        candidates.retain(|c| *c != d);
                    }
                    _ => return Err(format!("open refused healthy device {device}")),
                },
                Err(err) => return Err(format!("open failed: {err}")),
            }
        }
        Err("open kept refusing devices".into())
    }

    fn open(&mut self, status: &PoolStatus) -> Check {
        let candidates = self.open_candidates(Some(status));
        self.open_with(candidates)
    }

    fn crash(&mut self, seed: u64, cut_after: Option<u32>) -> Check {
        let mut rng = rng(seed);
        let status = self.pool()?.status();
        *self.stats.faults.entry("crash".into()).or_default() += 1;
        if let Some(cut) = cut_after {
            // A burst of writes and flushes; the power fails after `cut` device requests.
            *self.stats.faults.entry("power-cut".into()).or_default() += 1;
            self.countdown.store(i64::from(cut), Ordering::SeqCst);
            let stripe = self.pool()?.geometry().stripe_data_bytes();
            for _ in 0..12 {
                if self.countdown.load(Ordering::SeqCst) <= 0 {
                    break;
                }
                if rng.gen_bool(0.25) {
                    let flushed = self.pool()?.flush().is_ok();
                    if flushed && self.countdown.load(Ordering::SeqCst) > 0 {
                        self.model.flushed();
                    }
                    continue;
                }
                let len = rng.gen_range(1..3 * stripe) as u32;
                let (offset, len) = self.clamp(rng.gen(), len);
                // Discards race the writes of the burst and the power cut.
                let outcome = if rng.gen_bool(0.2) {
                    self.discard(offset, len)
                } else {
                    let data = random_bytes(&mut rng, len);
                    self.write(offset, &data)
                };
                if self.countdown.load(Ordering::SeqCst) <= 0 {
                    // The power died during it: the devices dropped its writes while the
                    // process went on, so what it read back (its own metadata, say) and
                    // answered does not count; the check is after the reopen.
                    continue;
                }
                outcome?;
            }
        }
        self.power_cut(seed);
        self.open(&status)?;
        self.check_after_crash()
    }

    /// After a crash and a reopen: the whole volume reads (within the tolerance) and every
    /// block holds a version written since the last flush.
    fn check_after_crash(&mut self) -> Check {
        let within = self.within_tolerance();
        let mut volume = vec![0u8; usize::try_from(self.model.latest.len()).unwrap_or(0)];
        match self.pool()?.read_at(0, &mut volume) {
            Ok(()) => {}
            Err(err) if within => {
                return Err(format!(
                    "after a crash, the volume does not read within tolerance: {err}"
                ))
            }
            Err(err) if self.is_clear_now(&err) => return Ok(()),
            Err(err) => return Err(format!("after a crash, an unclear error: {err}")),
        }
        self.stats.checked_reads += 1;
        self.model
            .check_after_crash(&volume)
            .map_err(|e| format!("after a crash: {e}"))?;
        self.verify_points("after a crash")
    }

    fn replace(&mut self, position: u8) -> Check {
        let pool = self.pool()?;
        let status = pool.status();
        let Some(spare) = status.spares.iter().find(|s| s.state == "AVAIL") else {
            self.stats.skipped += 1;
            return Ok(());
        };
        let busy: BTreeSet<usize> = status
            .devices
            .iter()
            .filter(|d| d.replacing.is_some())
            .filter_map(|d| d.index)
            .collect();
        let damaged = self.damaged_positions(&status);
        let target = damaged
            .iter()
            .copied()
            .find(|p| !busy.contains(p))
            .unwrap_or(usize::from(position) % self.config.devices);
        if busy.contains(&target) {
            self.stats.skipped += 1;
            return Ok(());
        }
        let Some(member) = status
            .devices
            .iter()
            .find(|d| d.index == Some(target) && d.replacing.is_none())
        else {
            return Err(format!("no member at position {target}"));
        };
        let within = damaged.len() <= self.tolerance;
        // With failure domains, a spare whose domain would break the rule at the target must
        // be refused (docs/FORMAT.md V4.16 §2; `--force` does not override it), with every
        // other position counted as its member or as the replacement being filled there
        // (seed 2100070).
        let allowed = self.domains.is_empty() || {
            let choices: Vec<Vec<&str>> = (0..self.config.devices)
                .map(|p| {
                    if p == target {
                        return vec![spare.domain.as_deref().unwrap_or("")];
                    }
                    let mut options: Vec<&str> = Vec::new();
                    for d in status.devices.iter().filter(|d| d.index == Some(p)) {
                        let domain = d.domain.as_deref().unwrap_or("");
                        if !options.contains(&domain) {
                            options.push(domain);
                        }
                    }
                    options
                })
                .collect();
            let mixes: usize = choices.iter().map(|o| o.len().max(1)).product();
            (0..mixes).all(|mix| {
                let mut rest = mix;
                let domains: Vec<&str> = choices
                    .iter()
                    .map(|options| {
                        let pick = options.get(rest % options.len().max(1)).copied();
                        rest /= options.len().max(1);
                        pick.unwrap_or("")
                    })
                    .collect();
                crate::geometry::check_domains(pool.geometry(), &domains).is_ok()
            })
        };
        let replaced = pool.replace_with_spare(&member.path, &spare.path);
        if !allowed {
            self.stats.skipped += 1;
            return match replaced {
                Ok(()) => Err(format!(
                    "DOMAIN RULE BROKEN: replacing {} with spare {} (domain {:?}) was accepted",
                    member.path, spare.path, spare.domain
                )),
                Err(_) => Ok(()),
            };
        }
        match replaced {
            Ok(()) => Ok(()),
            Err(err) if within => Err(format!(
                "replacing {} with spare {} failed within tolerance: {err}",
                member.path, spare.path
            )),
            Err(_) => Ok(()),
        }
    }

    /// Fail positions until one more than the tolerance is damaged; then every stripe with at
    /// most `tolerance` shards on damaged positions must read back exactly, the others must
    /// read exactly or fail clearly, and writes and flushes must succeed or fail clearly.
    fn beyond_tolerance(&mut self, seed: u64) -> Check {
        let mut rng = rng(seed);
        for _ in 0..64 {
            let status = self.pool()?.status();
            let damaged = self.damaged_positions(&status);
            if damaged.len() > self.tolerance {
                break;
            }
            let healthy: Vec<usize> = (0..self.config.devices)
                .filter(|p| !damaged.contains(p))
                .collect();
            let Some(position) = healthy.get(rng.gen_range(0..healthy.len().max(1))) else {
                break;
            };
            let Some(member) = status
                .devices
                .iter()
                .find(|d| d.index == Some(*position) && d.replacing.is_none())
            else {
                break;
            };
            let Some(disk) = self.disk(&member.path) else {
                break;
            };
            self.disks[disk].damaged = true;
            self.disks[disk].plan.lock().fail_stop();
        }
        let status = self.pool()?.status();
        let damaged = self.damaged_positions(&status);
        if damaged.len() <= self.tolerance {
            self.stats.skipped += 1;
            return Ok(());
        }
        let pool = self.pool()?;
        let geometry = pool.geometry().clone();
        let stripe_bytes = geometry.stripe_data_bytes();
        let mut unaffected_ok = 0;
        let mut failed_clearly = 0;
        if self.config.format4 {
            // Format version 4 places each block in a row of its own slot, which the pool
            // does not show, so no range is known to be unaffected: every read either returns
            // the model's bytes or fails clearly.
            let size = pool.size();
            let piece = 64 * 1024;
            let mut offset = 0;
            while offset < size {
                let len = usize::try_from(piece.min(size - offset)).unwrap_or(0);
                let mut buf = vec![0u8; len];
                match pool.read_at(offset, &mut buf) {
                    Ok(()) if buf != self.model.latest.read(offset, len) => {
                        return Err(format!(
                            "WRONG BYTES beyond tolerance at volume offset {offset} (damaged positions {damaged:?})"
                        ));
                    }
                    Ok(()) => {}
                    Err(err) if self.is_clear_now(&err) => failed_clearly += 1,
                    Err(err) => return Err(format!("offset {offset}: unclear error: {err}")),
                }
                offset += piece;
            }
        }
        for stripe in 0..geometry.stripes {
            if self.config.format4 {
                break;
            }
            let locations = pool.shard_locations(crate::types::StripeId(stripe));
            let affected = match geometry.layout {
                Layout::ReedSolomon { parity, .. } => {
                    locations
                        .iter()
                        .filter(|l| damaged.contains(&l.device))
                        .count()
                        > parity
                }
                Layout::Mirror { .. } | Layout::Raid10 { .. } => {
                    // Some data chunk with no copy on an undamaged position.
                    (0..geometry.data_chunks()).any(|chunk| {
                        !locations
                            .iter()
                            .any(|l| l.data_chunk == Some(chunk) && !damaged.contains(&l.device))
                    }) && !locations.is_empty()
                }
            };
            let offset = stripe * stripe_bytes;
            let len = usize::try_from(stripe_bytes).unwrap_or(0);
            let mut buf = vec![0u8; len];
            match pool.read_at(offset, &mut buf) {
                Ok(()) => {
                    if buf != self.model.latest.read(offset, len) {
                        return Err(format!(
                            "WRONG BYTES beyond tolerance: stripe {stripe} (damaged positions {damaged:?})"
                        ));
                    }
                    if !affected {
                        unaffected_ok += 1;
                    }
                }
                Err(err) if !affected => {
                    return Err(format!(
                        "stripe {stripe} has at most {} shards on damaged positions {damaged:?} but failed: {err}",
                        self.tolerance
                    ))
                }
                Err(err) if self.is_clear_now(&err) => failed_clearly += 1,
                Err(err) => return Err(format!("stripe {stripe}: unclear error: {err}")),
            }
        }
        let data = random_bytes(&mut rng, usize::try_from(stripe_bytes).unwrap_or(0));
        // Out of room while recovery points are kept is a clear refusal too (it names them;
        // `with_room` would delete one, but nothing is repaired beyond the tolerance). A point
        // whose delete was asked for holds its space until the delete has run (the refusal
        // says so): seed 4400869, mirror:2, found by the campaign of 2026-12-06 14:00.
        let keeps_points = !self.points.is_empty() || !pool.deletes().is_empty();
        match pool.write_at(0, &data) {
            Ok(()) => {}
            Err(err) if self.is_clear_now(&err) => {}
            Err(Error::NoFreeSlot(_)) if keeps_points => {}
            Err(err) => return Err(format!("write beyond tolerance: unclear error: {err}")),
        }
        let flushed = pool.flush();
        self.stats.unaffected_stripes_ok += unaffected_ok;
        self.stats.affected_stripes_failed_clearly += failed_clearly;
        match flushed {
            Ok(()) => Ok(()),
            Err(err) if self.is_clear_now(&err) => Ok(()),
            Err(err) => Err(format!("flush beyond tolerance: unclear error: {err}")),
        }
    }
}

/// `writes` queued with [`Pool::write_queued`] (a sink told each outcome), the leader's office
/// that the first one gets run once all are queued, so that they are carried in groups as a
/// served client's are; one outcome per write, in order.
fn write_queued_all(pool: &Pool, writes: &[(u64, &[u8])]) -> Vec<Result<()>> {
    struct Told(Mutex<Vec<Option<Result<()>>>>);
    impl crate::pool::WriteDone for Told {
        fn done(&self, tag: u64, outcome: Result<()>) {
            let mut told = self.0.lock();
            if let Some(slot) = usize::try_from(tag).ok().and_then(|t| told.get_mut(t)) {
                *slot = Some(outcome);
            }
        }
    }
    let told = Arc::new(Told(Mutex::new(writes.iter().map(|_| None).collect())));
    let sink: Arc<dyn crate::pool::WriteDone> = told.clone();
    let mut office = None;
    for (tag, (offset, data)) in writes.iter().enumerate() {
        if let Some(duty) = pool.write_queued(*offset, data.to_vec(), &sink, tag as u64) {
            // Only the first one to find nobody leading gets it (it is held until the end).
            office.get_or_insert(duty);
        }
    }
    drop(office);
    let outcomes = std::mem::take(&mut *told.0.lock());
    outcomes
        .into_iter()
        .map(|outcome| {
            outcome.unwrap_or(Err(Error::ThreadPanicked {
                thread: "write leader (a queued write was never told)",
            }))
        })
        .collect()
}
