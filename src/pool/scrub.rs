//! Scrub: a whole-pool verification pass that finds silent damage before a second fault makes
//! it fatal.
//!
//! It walks the physical slots in order (so each device is read sequentially, one read per run
//! of adjacent live chunks, all devices at once), checks every chunk of every live stripe against
//! the map's checksum (data, parity and every mirror copy, which normal reads do not all touch),
//! and checks that the parity or copies agree with the data. Anything suspect is re-examined
//! under the stripe's lock through the same careful path reads use, which counts each damaged
//! chunk against its device exactly once and (unless check-only) rewrites it with verified
//! content.
//!
//! Progress is checkpointed in the superblocks about once a second (the slot watermark and the
//! findings so far), so a scrub interrupted by a crash, a kill or a pause resumes where it was.
//! No lock is held while reading: a slot freed and reused by a concurrent write reads back with
//! the wrong checksum (checksums are bound to the slot's generation), is re-examined under the
//! lock, seen to have moved, and skipped — its new content was written after the scrub started.

use super::io::ShardOutcome;
use super::{ErrorKind, PoolInner};
use crate::error::{Error, Result};
use crate::format::{
    DamagedRange, DeviceScrubCounters, MapEntry, ScrubCheckpoint, ScrubOutcome, ScrubSummary,
    ScrubTally,
};
use crate::rebuild::Pacer;
use crate::types::{DeviceIndex, ShardIndex, SlotId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::Instant;

/// While foreground I/O is active, a scrub waits this many times as long as its last step took
/// before the next: it then uses at most a quarter of the time, and requests keep most of the
/// devices and cores (measured by `bench-scrub`).
const FOREGROUND_BACKOFF: u32 = 3;
/// Physical slots examined per step (256 slots of 16 KiB chunks: 4 MiB per device). Up to
/// three steps are in memory at once (verifying, queued, being read).
const SLOTS_PER_STEP: u64 = 256;

/// How to run a scrub.
#[derive(Debug, Clone, Default)]
pub struct ScrubOptions {
    /// Count damage but do not rewrite anything.
    pub check_only: bool,
    /// Read rate limit in bytes per second (`None`: as fast as the devices allow, still
    /// yielding to foreground I/O).
    pub rate_bytes_per_s: Option<u64>,
    /// Continue the interrupted scrub recorded in the superblocks, if there is one (its mode
    /// wins over `check_only`). Otherwise a new scrub starts and replaces any checkpoint.
    pub resume: bool,
    /// How often progress is checkpointed (`None`: about once a second). `Some(ZERO)`
    /// checkpoints after every step, which makes the scrub's writes independent of timing (the
    /// simulation needs that to replay a seed exactly).
    pub checkpoint_interval: Option<std::time::Duration>,
}

/// Where a scrub run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScrubEnd {
    /// Every live slot verified.
    Completed,
    /// Paused on request; the checkpoint is kept (`resume` continues it).
    Paused,
    /// Canceled on request; the checkpoint is discarded.
    Canceled,
    /// Stopped because the pool closed; resumed when it opens with background work on (or
    /// with `resume`).
    Interrupted,
}

/// One device's line of a scrub report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceScrubReport {
    /// Layout position.
    pub index: usize,
    /// Device path.
    pub path: String,
    /// Counters.
    #[serde(flatten)]
    pub counters: DeviceScrubCounters,
}

/// What a scrub found (over all its runs, when resumed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScrubReport {
    /// How this run ended.
    pub end: ScrubEnd,
    /// Whether damage was repaired (`false`: check-only).
    pub repair: bool,
    /// The slot this run started from (0 unless it resumed a checkpoint).
    pub resumed_from_slot: u64,
    /// Bytes this run read from the devices.
    pub bytes_read_this_run: u64,
    /// Seconds spent scanning over all runs.
    pub scan_secs: u64,
    /// Stripes verified.
    pub stripes_checked: u64,
    /// Damaged chunks found (checksum and I/O errors).
    pub bad_shards: u64,
    /// Stripes whose chunks verified but whose parity or copies disagreed.
    pub inconsistent_stripes: u64,
    /// Stripes whose data could not be reconstructed.
    pub unrepairable_stripes: u64,
    /// The volume ranges they cover (the first 64; the count above is exact).
    pub damaged: Vec<DamagedRange>,
    /// Per device.
    pub devices: Vec<DeviceScrubReport>,
    /// Sums over the devices.
    pub totals: DeviceScrubCounters,
}

impl ScrubReport {
    /// The report of a scrub that found `tally` (the paths of data positions from `path`), with
    /// nothing known about this run's own reads (`resumed_from_slot`, `bytes_read_this_run`
    /// zero): also how a client rebuilds a report from a pool's recorded summary.
    #[must_use]
    pub fn from_tally(
        end: ScrubEnd,
        repair: bool,
        scan_secs: u64,
        tally: &ScrubTally,
        path: impl Fn(usize) -> String,
    ) -> Self {
        let totals = tally.totals();
        Self {
            end,
            repair,
            resumed_from_slot: 0,
            bytes_read_this_run: 0,
            scan_secs,
            stripes_checked: tally.stripes_checked,
            bad_shards: totals.checksum_errors + totals.io_errors,
            inconsistent_stripes: tally.inconsistent_stripes,
            unrepairable_stripes: tally.unrepairable_stripes,
            damaged: tally.damaged.clone(),
            devices: tally
                .devices
                .iter()
                .enumerate()
                .map(|(index, counters)| DeviceScrubReport {
                    index,
                    path: path(index),
                    counters: counters.clone(),
                })
                .collect(),
            totals,
        }
    }

    /// Whether anything was wrong at all. (Chunks on members out of service are not damage
    /// the scrub found: they are counted in `bytes_skipped` and the report says they were not
    /// verified; the pool's state already shows those members.)
    #[must_use]
    pub fn found_damage(&self) -> bool {
        self.bad_shards > 0 || self.inconsistent_stripes > 0 || self.unrepairable_stripes > 0
    }

    /// Whether some data could not be reconstructed.
    #[must_use]
    pub fn found_data_loss(&self) -> bool {
        self.unrepairable_stripes > 0
    }
}

/// A scrub's progress, for `status`, progress bars and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScrubProgress {
    /// Running now in this process (`false`: interrupted or paused, as recorded on disk).
    pub running: bool,
    /// Paused on request.
    pub paused: bool,
    /// Repairing or check-only.
    pub repair: bool,
    /// When the scrub started, seconds since the Unix epoch.
    pub started_unix_secs: u64,
    /// Physical slots below this are verified.
    pub next_slot: u64,
    /// Physical slots in the pool.
    pub slots: u64,
    /// Bytes verified so far (all runs).
    pub scanned_bytes: u64,
    /// Bytes to verify in all (estimate: the live chunks when this run started, plus what
    /// earlier runs verified).
    pub total_bytes: u64,
    /// This run's read rate, bytes per second.
    pub rate_bytes_per_s: u64,
    /// Estimated seconds to go.
    pub eta_secs: Option<u64>,
    /// Findings so far.
    pub tally: ScrubTally,
}

const RUN: u8 = 0;
const PAUSE: u8 = 1;
const CANCEL: u8 = 2;
const STOP: u8 = 3;

/// What another thread asks of a running scrub.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ScrubRequest {
    /// Stop and keep the checkpoint, marked paused (not resumed automatically).
    Pause,
    /// Stop and discard the checkpoint.
    Cancel,
    /// Stop and keep the checkpoint for the next open (the pool is closing).
    Stop,
}

/// The pool's scrub state: at most one scrub runs at a time; any thread can pause or cancel it.
#[derive(Debug, Default)]
pub(crate) struct ScrubControl {
    active: AtomicBool,
    command: AtomicU8,
    rate_bytes_per_s: AtomicU64,
    progress: Mutex<Option<ScrubProgress>>,
    /// The checkpoint `scrub_begin` chose for the claimed scrub (its progress is shown from
    /// the claim on), taken by the run.
    claimed: Mutex<Option<ScrubCheckpoint>>,
}

impl ScrubControl {
    /// Ask the running scrub to stop after its current step; returns whether one is running.
    pub(crate) fn request(&self, request: ScrubRequest) -> bool {
        let command = match request {
            ScrubRequest::Pause => PAUSE,
            ScrubRequest::Cancel => CANCEL,
            ScrubRequest::Stop => STOP,
        };
        self.command.store(command, Ordering::Release);
        self.active.load(Ordering::Acquire)
    }
    pub(crate) fn set_rate(&self, rate: Option<u64>) {
        self.rate_bytes_per_s
            .store(rate.unwrap_or(0), Ordering::Relaxed);
    }
    pub(crate) fn live_progress(&self) -> Option<ScrubProgress> {
        self.progress.lock().clone()
    }
}

/// Where one shard of a stripe lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ShardLocation {
    /// Shard index within the stripe.
    pub shard: usize,
    /// Data member holding it.
    pub device: usize,
    /// Byte offset on that device.
    pub offset: u64,
    /// The data chunk it carries (`None` for parity).
    pub data_chunk: Option<usize>,
}

/// A live slot of one scrub step.
struct Item {
    stripe: u64,
    slot: SlotId,
    entry: MapEntry,
}

/// Verdict on one item from the sequential pass.
enum Verdict {
    /// Every present chunk verified and the stripe is consistent: bytes verified per device.
    Clean,
    /// Something failed: re-examine under the stripe lock.
    Suspect,
    /// Chunks verify, but parity/copies disagree with the data.
    Inconsistent,
}

/// One device's reads for a step: runs of adjacent chunks, sorted by offset.
struct DeviceRuns {
    runs: Vec<(u64, Vec<u8>)>,
}

impl DeviceRuns {
    fn chunk(&self, offset: u64, chunk: usize) -> Option<&[u8]> {
        let i = self.runs.partition_point(|(start, _)| *start <= offset);
        let (start, bytes) = self.runs.get(i.checked_sub(1)?)?;
        let at = usize::try_from(offset - start).ok()?;
        bytes.get(at..at + chunk)
    }
}

impl PoolInner {
    /// Claim the pool's one scrub slot. Done before a background thread starts, so a pause
    /// requested right after `start_scrub` returns is not lost.
    pub(crate) fn scrub_begin(&self, options: &ScrubOptions) -> Result<()> {
        if self.scrub.active.swap(true, Ordering::AcqRel) {
            return Err(Error::InvalidConfig("a scrub is already running".into()));
        }
        self.scrub.command.store(RUN, Ordering::Release);
        self.scrub.set_rate(options.rate_bytes_per_s);
        // Shown as running from now on, not only after the first step (which can take
        // seconds): `scrub --url` takes a scrub that is not running for one that ended.
        let checkpoint = self.scrub_checkpoint(options);
        if checkpoint.repair {
            if let Err(err) = self.writable("scrub (with repair; --check-only only looks)") {
                self.scrub.active.store(false, Ordering::Release);
                return Err(err);
            }
        }
        let total =
            checkpoint.tally.totals().bytes_scanned + self.live_bytes_from(checkpoint.next_slot);
        *self.scrub.progress.lock() =
            Some(self.scrub_progress_of(&checkpoint, total, 0, Instant::now()));
        *self.scrub.claimed.lock() = Some(checkpoint);
        Ok(())
    }

    /// Release the slot claimed by `scrub_begin` without running.
    pub(crate) fn scrub_abort_begin(&self) {
        self.scrub.claimed.lock().take();
        *self.scrub.progress.lock() = None;
        self.scrub.active.store(false, Ordering::Release);
    }

    /// Where a scrub with `options` starts: the recorded checkpoint if resuming one that fits
    /// this pool, else a new scrub.
    fn scrub_checkpoint(&self, options: &ScrubOptions) -> ScrubCheckpoint {
        let devices = self.members.data.len();
        let recorded = self
            .members
            .scrub_record()
            .in_progress
            .filter(|checkpoint| {
                // A checkpoint that does not fit this pool cannot be resumed (never index by it).
                let fits = checkpoint.tally.devices.len() == devices
                    && checkpoint.next_slot <= self.geometry.slots;
                if !fits {
                    tracing::warn!(
                        "ignoring a scrub checkpoint that does not match the pool's shape"
                    );
                }
                fits
            });
        match recorded.filter(|_| options.resume) {
            Some(mut checkpoint) => {
                checkpoint.paused = false;
                tracing::info!(
                    next_slot = checkpoint.next_slot,
                    "resuming the scrub from its checkpoint"
                );
                checkpoint
            }
            None => ScrubCheckpoint {
                started_unix_secs: super::open::now_unix_secs(),
                repair: !options.check_only,
                paused: false,
                next_slot: 0,
                scan_secs: 0,
                tally: ScrubTally::new(devices),
            },
        }
    }

    /// Run a claimed scrub to its end (or until paused/canceled). `observe` is called after
    /// every step with the progress so far.
    pub(crate) fn scrub_body(
        &self,
        options: &ScrubOptions,
        observe: &mut dyn FnMut(&ScrubProgress),
    ) -> Result<ScrubReport> {
        let result = self.scrub_run(options, observe);
        self.scrub.claimed.lock().take();
        *self.scrub.progress.lock() = None;
        self.scrub.active.store(false, Ordering::Release);
        result
    }

    /// Cancel the running scrub after its current step, or discard the checkpoint of an
    /// interrupted one (see `Pool::cancel_scrub`).
    pub(crate) fn cancel_scrub(&self) -> Result<bool> {
        if self.scrub.request(ScrubRequest::Cancel) {
            return Ok(true);
        }
        self.discard_scrub_checkpoint()
    }

    /// The running scrub's progress, else the recorded one of an interrupted or paused scrub.
    pub(crate) fn scrub_progress(&self) -> Option<ScrubProgress> {
        self.scrub
            .live_progress()
            .or_else(|| self.recorded_scrub_progress())
    }

    /// Drop the checkpoint of an interrupted scrub, recording it as canceled. Returns whether
    /// there was one.
    pub(crate) fn discard_scrub_checkpoint(&self) -> Result<bool> {
        let Some(checkpoint) = self.members.scrub_record().in_progress else {
            return Ok(false);
        };
        let summary = summary_of(&checkpoint, ScrubOutcome::Canceled);
        self.persist_scrub(|record| {
            record.in_progress = None;
            record.last = Some(summary);
        })?;
        Ok(true)
    }

    fn scrub_run(
        &self,
        options: &ScrubOptions,
        observe: &mut dyn FnMut(&ScrubProgress),
    ) -> Result<ScrubReport> {
        let mut checkpoint = self
            .scrub
            .claimed
            .lock()
            .take()
            .unwrap_or_else(|| self.scrub_checkpoint(options));
        let span = tracing::info_span!("scrub", pool = %self.uuid, repair = checkpoint.repair);
        let _span = span.enter();
        let resumed_from_slot = checkpoint.next_slot;
        let previously_scanned = checkpoint.tally.totals().bytes_scanned;
        let previous_secs = checkpoint.scan_secs;
        let remaining = self.live_bytes_from(checkpoint.next_slot);
        tracing::info!(
            from_slot = resumed_from_slot,
            bytes = remaining,
            "scrub started"
        );
        self.persist_scrub(|record| record.in_progress = Some(checkpoint.clone()))?;
        let started = Instant::now();
        let mut pacer = Pacer::default();
        let mut read_this_run = 0u64;
        let mut rewrote = false;
        // One thread reads ahead (a step in the channel, one being read) while this one
        // verifies, so the devices are never idle waiting for checksums. Dropping the receiver
        // stops the reader at its next step.
        let slots = self.geometry.slots;
        let first = checkpoint.next_slot;
        let end = std::thread::scope(|scope| -> Result<ScrubEnd> {
            let (sender, receiver) = std::sync::mpsc::sync_channel::<ReadStep>(1);
            let sequential = super::parallel::is_sequential();
            scope.spawn(move || {
                super::parallel::set_sequential(sequential);
                let mut from = first;
                while from < slots {
                    let to = (from + SLOTS_PER_STEP).min(slots);
                    if sender.send(self.read_step(from, to)).is_err() {
                        return;
                    }
                    from = to;
                }
            });
            loop {
                match self.scrub.command.load(Ordering::Acquire) {
                    PAUSE => return Ok(ScrubEnd::Paused),
                    CANCEL => return Ok(ScrubEnd::Canceled),
                    STOP => return Ok(ScrubEnd::Interrupted),
                    _ => {}
                }
                let step_started = Instant::now();
                let Ok(read) = receiver.recv() else {
                    return Ok(ScrubEnd::Completed);
                };
                let step = self.verify_step(&read, checkpoint.repair, &mut checkpoint.tally);
                read_this_run += step.bytes_read;
                rewrote |= step.rewrote;
                checkpoint.next_slot = read.to;
                checkpoint.scan_secs = previous_secs + started.elapsed().as_secs();
                let progress = self.scrub_progress_of(
                    &checkpoint,
                    previously_scanned + remaining,
                    checkpoint.tally.totals().bytes_scanned - previously_scanned,
                    started,
                );
                *self.scrub.progress.lock() = Some(progress.clone());
                observe(&progress);
                if pacer.checkpoint_due_every(
                    options
                        .checkpoint_interval
                        .unwrap_or(crate::rebuild::CHECKPOINT_INTERVAL),
                ) {
                    if rewrote {
                        // Rewritten stripes must be durable before the watermark passes them.
                        self.commit()?;
                    }
                    self.persist_scrub(|record| record.in_progress = Some(checkpoint.clone()))?;
                }
                let rate = match self.scrub.rate_bytes_per_s.load(Ordering::Relaxed) {
                    0 => None,
                    rate => Some(rate),
                };
                let mut wait = pacer.after_step(rate, &self.rebuild, step.bytes_read);
                if self.rebuild.foreground_recent() {
                    wait = wait.max(step_started.elapsed() * FOREGROUND_BACKOFF);
                }
                // In slices, so a pause or cancel is honoured promptly even at a low rate.
                let until = Instant::now() + wait;
                while self.scrub.command.load(Ordering::Acquire) == RUN {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    std::thread::sleep(left.min(std::time::Duration::from_millis(20)));
                }
            }
        })?;
        if rewrote {
            self.commit()?;
        }
        checkpoint.scan_secs = previous_secs + started.elapsed().as_secs();
        match end {
            ScrubEnd::Paused | ScrubEnd::Interrupted => {
                checkpoint.paused = end == ScrubEnd::Paused;
                self.persist_scrub(|record| record.in_progress = Some(checkpoint.clone()))?;
            }
            ScrubEnd::Completed | ScrubEnd::Canceled => {
                let outcome = if end == ScrubEnd::Completed {
                    ScrubOutcome::Completed
                } else {
                    ScrubOutcome::Canceled
                };
                let summary = summary_of(&checkpoint, outcome);
                self.persist_scrub(|record| {
                    record.in_progress = None;
                    record.last = Some(summary);
                })?;
            }
        }
        let report = self.scrub_report(end, &checkpoint, resumed_from_slot, read_this_run);
        let totals = &report.totals;
        if report.found_data_loss() {
            tracing::error!(
                ?end,
                checksum_errors = totals.checksum_errors,
                io_errors = totals.io_errors,
                repaired = totals.repaired,
                unrepairable_stripes = report.unrepairable_stripes,
                "scrub finished with damage left"
            );
        } else if report.found_damage() {
            tracing::warn!(
                repair = report.repair,
                ?end,
                checksum_errors = totals.checksum_errors,
                io_errors = totals.io_errors,
                repaired = totals.repaired,
                inconsistent = report.inconsistent_stripes,
                "scrub found damage; repaired unless check-only"
            );
        } else {
            tracing::info!(?end, bytes = totals.bytes_scanned, "scrub finished clean");
        }
        Ok(report)
    }

    /// Record scrub state in the superblocks of every member.
    fn persist_scrub(&self, change: impl FnOnce(&mut crate::format::ScrubRecord)) -> Result<()> {
        self.members.update_scrub_record(change);
        self.members.write_superblocks()?;
        Ok(())
    }

    /// Bytes of live chunks (all shards) in slots `from..`.
    fn live_bytes_from(&self, from: u64) -> u64 {
        let state = self.map.lock();
        let live = (from..self.geometry.slots)
            .filter(|slot| state.stripe_in(*slot).is_some())
            .count() as u64;
        live * self.geometry.width() as u64 * self.geometry.chunk_bytes
    }

    fn scrub_progress_of(
        &self,
        checkpoint: &ScrubCheckpoint,
        total: u64,
        scanned_this_run: u64,
        started: Instant,
    ) -> ScrubProgress {
        let scanned = checkpoint.tally.totals().bytes_scanned;
        let rate = crate::types::bytes_per_s(scanned_this_run, started.elapsed());
        let total = total.max(scanned);
        ScrubProgress {
            running: true,
            paused: false,
            repair: checkpoint.repair,
            started_unix_secs: checkpoint.started_unix_secs,
            next_slot: checkpoint.next_slot,
            slots: self.geometry.slots,
            scanned_bytes: scanned,
            total_bytes: total,
            rate_bytes_per_s: rate,
            eta_secs: (rate > 0).then(|| (total - scanned) / rate),
            tally: checkpoint.tally.clone(),
        }
    }

    /// The progress recorded on disk for a scrub that is not running in this process.
    pub(crate) fn recorded_scrub_progress(&self) -> Option<ScrubProgress> {
        let checkpoint = self.members.scrub_record().in_progress?;
        let scanned = checkpoint.tally.totals().bytes_scanned;
        let total = scanned + self.live_bytes_from(checkpoint.next_slot);
        Some(ScrubProgress {
            running: false,
            paused: checkpoint.paused,
            repair: checkpoint.repair,
            started_unix_secs: checkpoint.started_unix_secs,
            next_slot: checkpoint.next_slot,
            slots: self.geometry.slots,
            scanned_bytes: scanned,
            total_bytes: total,
            rate_bytes_per_s: 0,
            eta_secs: None,
            tally: checkpoint.tally,
        })
    }

    fn scrub_report(
        &self,
        end: ScrubEnd,
        checkpoint: &ScrubCheckpoint,
        resumed_from_slot: u64,
        bytes_read_this_run: u64,
    ) -> ScrubReport {
        let mut report = ScrubReport::from_tally(
            end,
            checkpoint.repair,
            checkpoint.scan_secs,
            &checkpoint.tally,
            |index| self.members.get(DeviceIndex(index)).path(),
        );
        report.resumed_from_slot = resumed_from_slot;
        report.bytes_read_this_run = bytes_read_this_run;
        report
    }

    /// Snapshot the live slots in `from..to` and read all their chunks.
    fn read_step(&self, from: u64, to: u64) -> ReadStep {
        let items: Vec<Item> = {
            let state = self.map.lock();
            (from..to)
                .filter_map(|slot| {
                    let stripe = state.stripe_in(slot)?;
                    Some(Item {
                        stripe,
                        slot: SlotId(slot),
                        entry: state.map.get(stripe),
                    })
                })
                .collect()
        };
        let devices = if items.is_empty() {
            Vec::new()
        } else {
            self.read_items(&items)
        };
        ReadStep { to, items, devices }
    }

    /// Verify what one step read; re-examine anything suspect.
    fn verify_step(&self, read: &ReadStep, repair: bool, tally: &mut ScrubTally) -> StepResult {
        let (items, devices) = (&read.items, &read.devices);
        let mut result = StepResult::default();
        if items.is_empty() {
            return result;
        }
        let chunk = usize::try_from(self.geometry.chunk_bytes).unwrap_or(0);
        result.bytes_read = devices
            .iter()
            .flat_map(|d| d.runs.iter().map(|(_, bytes)| bytes.len() as u64))
            .sum();
        // Verify on every core; items are independent.
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let parts: Vec<&[Item]> = items.chunks(items.len().div_ceil(cores).max(1)).collect();
        let verdicts: Vec<Verdict> = super::parallel::each(&parts, |part| {
            part.iter()
                .map(|item| self.judge(item, devices, chunk))
                .collect::<Vec<_>>()
        })
        .into_iter()
        .flatten()
        .collect();
        for (item, verdict) in items.iter().zip(verdicts) {
            match verdict {
                Verdict::Clean => {
                    tally.stripes_checked += 1;
                    for shard in 0..self.geometry.width() {
                        let (device, _) =
                            self.geometry.shard_location(item.slot, ShardIndex(shard));
                        let counters = &mut tally.devices[device.0];
                        if self.members.get(device).is_online() {
                            counters.bytes_scanned += self.geometry.chunk_bytes;
                        } else {
                            counters.bytes_skipped += self.geometry.chunk_bytes;
                        }
                    }
                }
                Verdict::Suspect => self.scrub_stripe_carefully(item, repair, tally),
                Verdict::Inconsistent => {
                    result.rewrote |= self.scrub_inconsistent(item, repair, tally);
                }
            }
        }
        result
    }

    /// Read every chunk of `items` from every online device, one read per run of adjacent
    /// chunks, all devices in parallel. A run that fails to read is left out (its items are
    /// then re-examined chunk by chunk, which counts the error exactly).
    fn read_items(&self, items: &[Item]) -> Vec<DeviceRuns> {
        let devices = self.members.data.len();
        let mut offsets: Vec<Vec<u64>> = vec![Vec::new(); devices];
        for item in items {
            for shard in 0..self.geometry.width() {
                let (device, offset) = self.geometry.shard_location(item.slot, ShardIndex(shard));
                offsets[device.0].push(offset);
            }
        }
        let indexed: Vec<(usize, Vec<u64>)> = offsets.into_iter().enumerate().collect();
        super::parallel::each(&indexed, |(device, offsets)| {
            let mut sorted = offsets.clone();
            sorted.sort_unstable();
            sorted.dedup();
            let mut runs = Vec::new();
            let Some(handle) = self.members.get(DeviceIndex(*device)).device() else {
                return DeviceRuns { runs };
            };
            let chunk = self.geometry.chunk_bytes;
            for run in super::rebuild::runs(&sorted, chunk) {
                let mut buf = vec![0u8; usize::try_from(run.len() as u64 * chunk).unwrap_or(0)];
                match handle.read_at(run[0], &mut buf) {
                    Ok(()) => runs.push((run[0], buf)),
                    Err(err) => {
                        tracing::debug!(device, offset = run[0], %err, "scrub run read failed; re-examining chunk by chunk");
                    }
                }
            }
            DeviceRuns { runs }
        })
    }

    /// Check one item against what the step read.
    fn judge(&self, item: &Item, devices: &[DeviceRuns], chunk: usize) -> Verdict {
        let width = self.geometry.width();
        let mut shards: Vec<&[u8]> = Vec::with_capacity(width);
        for shard in 0..width {
            let (device, offset) = self.geometry.shard_location(item.slot, ShardIndex(shard));
            if !self.members.get(device).is_online() {
                continue; // not verifiable; the stripe is still checked as far as it can be
            }
            let Some(bytes) = devices[device.0].chunk(offset, chunk) else {
                return Verdict::Suspect;
            };
            if !self.shard_verifies(item.slot, &item.entry, shard, bytes) {
                return Verdict::Suspect;
            }
            shards.push(bytes);
        }
        if shards.len() == width && !self.codec.consistent(&shards) {
            return Verdict::Inconsistent;
        }
        Verdict::Clean
    }

    /// Re-examine a suspect stripe under its lock and account for every chunk.
    fn scrub_stripe_carefully(&self, item: &Item, repair: bool, tally: &mut ScrubTally) {
        let _guard = self.stripe_lock(item.stripe).lock();
        let entry = self.map.lock().map.get(item.stripe);
        if entry.slot != Some(item.slot) || entry.generation != item.entry.generation {
            return; // rewritten since the step started: the new copy is fresh
        }
        let exam = self.examine_stripe(item.slot, &entry, Vec::new(), repair);
        tally.stripes_checked += 1;
        let mut damaged_devices = Vec::new();
        for (shard, outcome) in exam.outcomes.iter().enumerate() {
            let (device, offset) = self.geometry.shard_location(item.slot, ShardIndex(shard));
            let counters = &mut tally.devices[device.0];
            match outcome {
                ShardOutcome::Missing => {
                    // Out of service: not verified, and part of the loss if the stripe is lost.
                    counters.bytes_skipped += self.geometry.chunk_bytes;
                    damaged_devices.push(format!(
                        "{} (out of service)",
                        self.members.get(device).path()
                    ));
                    continue;
                }
                ShardOutcome::Good => {}
                ShardOutcome::Damaged(kind) => {
                    if *kind == ErrorKind::Read {
                        counters.io_errors += 1;
                    } else {
                        counters.checksum_errors += 1;
                    }
                    // Each error lands in exactly one of these.
                    if exam.healed[shard] {
                        counters.repaired += 1;
                    } else if !exam.recovered {
                        counters.unrepairable += 1;
                    } else {
                        counters.not_rewritten += 1;
                    }
                    let path = self.members.get(device).path();
                    tracing::info!(device = %path, offset, stripe = item.stripe, ?kind, repaired = exam.healed[shard], "scrub: damaged chunk");
                    damaged_devices.push(path);
                }
            }
            counters.bytes_scanned += self.geometry.chunk_bytes;
        }
        if !exam.recovered {
            // One event per stripe at info (the report lists the merged ranges; the summary at
            // the end is the error).
            let error = self.unrecoverable(item.stripe, item.slot, &exam);
            tracing::info!(%error, "scrub: stripe unrecoverable");
            damaged_devices.sort();
            damaged_devices.dedup();
            tally.add_damaged(DamagedRange {
                volume_offset: item.stripe * self.geometry.stripe_data_bytes(),
                length: self.geometry.stripe_data_bytes(),
                devices: damaged_devices,
            });
        }
    }

    /// A stripe whose chunks verify but disagree: the data chunks are what was written (their
    /// checksums say so), so the stripe is rewritten from them. Returns whether it was.
    fn scrub_inconsistent(&self, item: &Item, repair: bool, tally: &mut ScrubTally) -> bool {
        let unchanged = || {
            let entry = self.map.lock().map.get(item.stripe);
            entry.slot == Some(item.slot) && entry.generation == item.entry.generation
        };
        let mut guard = self.stripe_lock(item.stripe).lock();
        if !unchanged() {
            return false;
        }
        tally.stripes_checked += 1;
        tally.inconsistent_stripes += 1;
        tracing::error!(
            stripe = item.stripe,
            slot = item.slot.0,
            "scrub: parity or copies disagree with verified data"
        );
        if !repair {
            return false;
        }
        let mut data = vec![0u8; usize::try_from(self.geometry.stripe_data_bytes()).unwrap_or(0)];
        let mut commits = 0;
        let rewritten = loop {
            if let Err(err) = self.read_stripe_locked(item.stripe, 0, &mut data) {
                break Err(err);
            }
            let Some(slot) = self.map.lock().free.pop() else {
                // No free slot: a commit releases obsolete ones. It must not run under the
                // stripe lock; afterwards, a stripe rewritten meanwhile is fresh and done.
                if commits == 2 {
                    break Err(Error::InvalidConfig(
                        "no free slot to rewrite an inconsistent stripe".into(),
                    ));
                }
                commits += 1;
                drop(guard);
                if let Err(err) = self.commit() {
                    tracing::error!(%err, stripe = item.stripe, "scrub: could not rewrite the inconsistent stripe");
                    return false;
                }
                guard = self.stripe_lock(item.stripe).lock();
                if !unchanged() {
                    return false;
                }
                continue;
            };
            let result = self.write_stripe_into(item.stripe, 0, &data, SlotId(slot));
            if result.is_err() {
                self.map.lock().free.push(slot);
            }
            break result;
        };
        drop(guard);
        match rewritten {
            Ok(()) => true,
            Err(err) => {
                tracing::error!(%err, stripe = item.stripe, "scrub: could not rewrite the inconsistent stripe");
                false
            }
        }
    }

    pub(crate) fn shard_locations(&self, stripe: u64) -> Vec<ShardLocation> {
        if stripe >= self.geometry.stripes {
            return Vec::new();
        }
        let Some(slot) = self.map.lock().map.slot(stripe) else {
            return Vec::new();
        };
        (0..self.geometry.width())
            .map(|shard| {
                let (DeviceIndex(device), offset) =
                    self.geometry.shard_location(slot, ShardIndex(shard));
                ShardLocation {
                    shard,
                    device,
                    offset,
                    data_chunk: self.geometry.shard_data_chunk(ShardIndex(shard)),
                }
            })
            .collect()
    }
}

/// The last-scrub record for a scrub ending now.
fn summary_of(checkpoint: &ScrubCheckpoint, outcome: ScrubOutcome) -> ScrubSummary {
    ScrubSummary {
        outcome,
        repair: checkpoint.repair,
        started_unix_secs: checkpoint.started_unix_secs,
        finished_unix_secs: super::open::now_unix_secs(),
        scan_secs: checkpoint.scan_secs,
        tally: checkpoint.tally.clone(),
    }
}

/// The live slots of one step and what was read of them.
struct ReadStep {
    /// End of the step's slot range.
    to: u64,
    items: Vec<Item>,
    devices: Vec<DeviceRuns>,
}

/// What one scrub step did.
#[derive(Debug, Default)]
struct StepResult {
    bytes_read: u64,
    rewrote: bool,
}

#[cfg(test)]
mod tests {
    use crate::codec::block_checksum;
    use crate::testing::{mem_devices, shared};
    use crate::types::{ShardIndex, SlotId};
    use crate::{CreateOptions, Pool};

    /// A parity shard or second copy that matches its checksum but disagrees with the data (as
    /// if the encoder had been wrong when it was written) is caught by the consistency check and the
    /// stripe is rewritten from its verified data.
    fn inconsistent_stripe_is_found_and_rewritten(layout: &str, devices: usize, shard: usize) {
        let mems = mem_devices(devices, 4 << 20);
        let mut options = CreateOptions::new(layout.parse().unwrap());
        options.chunk_bytes = 4096;
        let pool = Pool::create(shared(&mems), vec![], &options).unwrap();
        let stripe_bytes = pool.geometry().stripe_data_bytes() as usize;
        let data: Vec<u8> = (0..stripe_bytes * 3).map(|i| (i * 7 % 251) as u8).collect();
        pool.write_at(0, &data).unwrap();
        pool.flush().unwrap();
        // Stripe 1: replace one shard with other bytes *and* make the map's checksum agree
        // (a 4 KiB chunk is one checksum block, so the shard's checksum is `crcs[shard]`).
        let location = pool.shard_locations(1)[shard];
        let forged = vec![0x5a; 4096];
        mems[location.device].poke(location.offset, &forged);
        {
            let mut state = pool.inner.map.lock();
            let mut entry = state.map.get(1);
            let slot: SlotId = entry.slot.unwrap();
            entry.crcs[shard] =
                block_checksum(slot, ShardIndex(shard), 0, entry.generation, &forged);
            state.map.set(1, &entry);
        }
        let report = pool.scrub().unwrap();
        assert_eq!(report.inconsistent_stripes, 1, "{layout}: {report:?}");
        assert_eq!(
            report.bad_shards, 0,
            "{layout}: every chunk matched its checksum"
        );
        assert!(report.found_damage());
        let again = pool.scrub().unwrap();
        assert!(!again.found_damage(), "{layout}: rewritten: {again:?}");
        let mut back = vec![0u8; data.len()];
        pool.read_at(0, &mut back).unwrap();
        assert_eq!(back, data, "{layout}: data unchanged by the rewrite");
    }

    #[test]
    fn inconsistent_parity_is_found_and_the_stripe_rewritten() {
        inconsistent_stripe_is_found_and_rewritten("rs:4+2", 6, 5);
    }

    #[test]
    fn disagreeing_mirror_copies_are_found_and_the_stripe_rewritten() {
        inconsistent_stripe_is_found_and_rewritten("mirror:2", 2, 1);
    }
}

#[cfg(test)]
mod no_free_slot_tests {
    use crate::codec::block_checksum;
    use crate::testing::{mem_devices, shared};
    use crate::types::ShardIndex;
    use crate::{CreateOptions, Pool};

    /// With every free slot taken, the rewrite of an inconsistent stripe commits to free some;
    /// when none come free it gives up with a log line instead of spinning, and the stripe is
    /// still reported.
    #[test]
    fn an_inconsistent_stripe_with_no_free_slot_is_reported_not_spun_on() {
        let mems = mem_devices(6, 4 << 20);
        let mut options = CreateOptions::new("rs:4+2".parse().unwrap());
        options.chunk_bytes = 4096;
        let pool = Pool::create(shared(&mems), vec![], &options).unwrap();
        pool.write_at(0, &vec![0x11; 3 * 16384]).unwrap();
        pool.flush().unwrap();
        let location = pool.shard_locations(1)[5];
        let forged = vec![0x5a; 4096];
        mems[location.device].poke(location.offset, &forged);
        let taken: Vec<u64> = {
            let mut state = pool.inner.map.lock();
            let mut entry = state.map.get(1);
            entry.crcs[5] = block_checksum(
                entry.slot.unwrap(),
                ShardIndex(5),
                0,
                entry.generation,
                &forged,
            );
            state.map.set(1, &entry);
            std::mem::take(&mut state.free)
        };
        let report = pool.scrub().unwrap();
        assert_eq!(report.inconsistent_stripes, 1, "{report:?}");
        // Give the slots back: the next scrub rewrites it.
        pool.inner.map.lock().free = taken;
        assert_eq!(pool.scrub().unwrap().inconsistent_stripes, 1);
        assert!(!pool.scrub().unwrap().found_damage());
    }
}
