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
//!
//! Owns: the scrub's public types ([`ScrubOptions`], [`ScrubReport`], [`ScrubProgress`] ...,
//! re-exported by `pool`), the one-scrub-at-a-time control (`ScrubControl`: claim, pause,
//! cancel, rate, live progress), the step machine (`step::Scrubber`: cursor, tally, what each
//! step verified) and its driver (`run`: read-ahead, pacing, checkpoints, the report).
//!
//! Must not touch: the pool's internals. Everything it needs from a pool goes through
//! `ScrubTarget` (and the shared `maintenance::StripeAccess`), which the pool implements; this module
//! imports nothing from `crate::pool` (only `maintenance`, `parallel`, `types`, `error`,
//! `format`, `geometry`, `codec`, `device`). It holds no lock of the pool's itself: stripe
//! locks, the map, the free list and commits stay behind the interface.

mod run;
mod step;

use crate::error::{Error, Result};
use crate::format::{
    DamagedRange, DeviceScrubCounters, PoolUuid, ScrubCheckpoint, ScrubOutcome, ScrubRecord,
    ScrubSummary, ScrubTally, SegmentCursor,
};
use crate::maintenance::LiveStripe;
pub(crate) use crate::maintenance::StripeAccess;
use crate::types::{DeviceIndex, SlotId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// While foreground I/O is active, a scrub waits this many times as long as its last step took
/// before the next: it then uses at most a quarter of the time, and requests keep most of the
/// devices and cores (measured by `bench-scrub`).
const FOREGROUND_BACKOFF: u32 = 3;
/// Physical slots examined per step (256 slots of 16 KiB chunks: 4 MiB per device). Up to
/// three steps are in memory at once (verifying, queued, being read).
const SLOTS_PER_STEP: u64 = 256;

/// How long one chunk of a scrub over segments holds the volume's shared lock (writes wait
/// at most this long, plus one segment).
const SEGMENT_CHUNK_TIME: Duration = Duration::from_millis(50);
/// Segments one chunk checks when the scrub must be deterministic (a checkpoint after every
/// chunk, as the simulation asks).
const SEGMENT_CHUNK_COUNT: u64 = 4;

/// How much one chunk of a scrub over segments does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ChunkBudget {
    /// Segments until this much time is spent (the last one is finished).
    Time(Duration),
    /// This many segments (independent of timing).
    Segments(u64),
}

/// What one chunk of a scrub over segments did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegmentChunk {
    /// Bytes it read from the members.
    pub(crate) bytes_read: u64,
    /// Where the pass goes on (`None`: every segment was visited).
    pub(crate) next_segment: Option<u64>,
}

/// A scrub over segments (a version-4 pool, docs/FORMAT.md V4.13, stage 3): the target plans
/// a pass from one walk of its map and runs it in chunks, adding what each finds to the
/// tally; the driver (`run::run_segments`) paces, checkpoints and reports it as it does a
/// scrub over slots.
pub(crate) trait SegmentScrub {
    /// Plan the pass from one walk of the map, from `from_segment` on.
    ///
    /// # Errors
    /// The map cannot say which pages exist (the error names the page), or the pool is
    /// beyond its tolerance.
    fn plan(&mut self, from_segment: u64) -> Result<()>;
    /// Check (and repair, if `repair`) one chunk of the planned pass; its findings are added
    /// to `tally`. Repairs are written, not yet flushed.
    ///
    /// # Errors
    /// As `plan`.
    fn chunk(
        &mut self,
        repair: bool,
        budget: ChunkBudget,
        tally: &mut ScrubTally,
    ) -> Result<SegmentChunk>;
    /// Make every repair written so far durable (flush the members): done before a checkpoint
    /// records the cursor past them.
    ///
    /// # Errors
    /// A member's flush error, naming it.
    fn settle(&mut self) -> Result<()>;
}

/// What a scrub needs of a pool beyond [`StripeAccess`]: the live slots, rewriting a stripe
/// whose parity or copies disagree, and its record in the superblocks. Implemented by the pool.
pub(crate) trait ScrubTarget: StripeAccess {
    /// The pool's UUID (for the scrub's log span).
    fn pool_uuid(&self) -> PoolUuid;
    /// Refuse `operation` if the pool was opened read-only.
    ///
    /// # Errors
    /// [`Error::ReadOnly`].
    fn writable(&self, operation: &'static str) -> Result<()>;
    /// Snapshot the live slots in `from..to`, in slot order.
    fn live_stripes(&self, from: SlotId, to: SlotId) -> Vec<LiveStripe>;
    /// Bytes of live chunks (all shards) in slots `from..`.
    fn live_bytes_from(&self, from: SlotId) -> u64;
    /// The map's timeline when the pool scrubs over segments (format version 4), else
    /// `None` (a scrub over slots).
    fn segment_timeline(&self) -> Option<u64>;
    /// A scrub over segments of this pool (format version 4), else `None`.
    fn segment_scrub(&self) -> Option<Box<dyn SegmentScrub + '_>>;
    /// Bytes a scrub over segments reads from `segment` on (an estimate: the written data
    /// blocks, all shards or copies).
    fn segment_bytes_from(&self, segment: u64) -> u64;
    /// Under the stripe's lock: if `live` still holds the stripe, call `found` and, if
    /// `repair`, rewrite the stripe from its verified data into a fresh slot (a commit frees
    /// slots when none is free; it runs with the lock released). Returns whether it was
    /// rewritten (`false`: moved meanwhile, or not repairing).
    ///
    /// # Errors
    /// The rewrite failed (the stripe stays as it was).
    fn rewrite_stripe(
        &self,
        live: &LiveStripe,
        repair: bool,
        found: &mut dyn FnMut(),
    ) -> Result<bool>;
    /// The scrub record of the superblocks.
    fn scrub_record(&self) -> ScrubRecord;
    /// Change the scrub record and write it to every member's superblock.
    ///
    /// # Errors
    /// The superblocks cannot be written.
    fn persist_scrub(&self, change: RecordChange) -> Result<()>;
}

/// A change to the scrub record of the superblocks.
#[derive(Debug, Clone)]
pub(crate) enum RecordChange {
    /// A scrub is in progress, as of this checkpoint (the last summary is kept).
    Checkpoint(ScrubCheckpoint),
    /// The scrub ended: no scrub in progress, this is the last one.
    Ended(ScrubSummary),
}

impl RecordChange {
    /// Apply to `record`.
    pub(crate) fn apply(self, record: &mut ScrubRecord) {
        match self {
            Self::Checkpoint(checkpoint) => record.in_progress = Some(checkpoint),
            Self::Ended(summary) => {
                record.in_progress = None;
                record.last = Some(summary);
            }
        }
    }
}

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
    /// Format version 4: the segment this run started from (`Some(0)` for a new pass).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_from_segment: Option<u64>,
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
    /// Format version 4: live 4 KiB blocks whose data could not be rebuilt (in `damaged`,
    /// merged, up to its cap); `unrepairable_stripes` counts the places that stay bad.
    #[serde(default)]
    pub lost_blocks: u64,
    /// Format version 4: allocated segments not checked because they were taken again since
    /// the pass's walk or were free when it reached them (see [`ScrubTally`]).
    pub segments_skipped: u64,
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
            resumed_from_segment: None,
            bytes_read_this_run: 0,
            scan_secs,
            stripes_checked: tally.stripes_checked,
            bad_shards: totals.checksum_errors + totals.io_errors,
            inconsistent_stripes: tally.inconsistent_stripes,
            unrepairable_stripes: tally.unrepairable_stripes,
            damaged: tally.damaged.clone(),
            lost_blocks: tally.lost_blocks,
            segments_skipped: tally.segments_skipped,
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
    /// Physical slots below this are verified (format version 3).
    pub next_slot: u64,
    /// Physical slots in the pool.
    pub slots: u64,
    /// Allocated segments below this are verified (format version 4; `None` on version 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_segment: Option<u64>,
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

/// A pool's scrub state: at most one scrub runs at a time; any thread can pause or cancel it.
#[derive(Debug, Default)]
pub(crate) struct ScrubControl {
    active: AtomicBool,
    command: AtomicU8,
    rate_bytes_per_s: AtomicU64,
    progress: Mutex<Option<ScrubProgress>>,
    /// The checkpoint `begin` chose for the claimed scrub (its progress is shown from the
    /// claim on), taken by the run.
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

    /// The rate limit (`None`: unlimited).
    fn rate(&self) -> Option<u64> {
        match self.rate_bytes_per_s.load(Ordering::Relaxed) {
            0 => None,
            rate => Some(rate),
        }
    }

    /// What another thread asked for, if anything: how the run ends then.
    fn requested_end(&self) -> Option<ScrubEnd> {
        match self.command.load(Ordering::Acquire) {
            PAUSE => Some(ScrubEnd::Paused),
            CANCEL => Some(ScrubEnd::Canceled),
            STOP => Some(ScrubEnd::Interrupted),
            _ => None,
        }
    }

    /// Whether the run should go on (nothing was requested).
    fn running(&self) -> bool {
        self.command.load(Ordering::Acquire) == RUN
    }

    fn show(&self, progress: ScrubProgress) {
        *self.progress.lock() = Some(progress);
    }

    /// Claim the pool's one scrub slot. Done before a background thread starts, so a pause
    /// requested right after the scrub is started is not lost.
    pub(crate) fn begin(&self, target: &impl ScrubTarget, options: &ScrubOptions) -> Result<()> {
        if self.active.swap(true, Ordering::AcqRel) {
            return Err(Error::Busy("a scrub is already running".into()));
        }
        self.command.store(RUN, Ordering::Release);
        self.set_rate(options.rate_bytes_per_s);
        // Shown as running from now on, not only after the first step (which can take
        // seconds): `scrub --url` takes a scrub that is not running for one that ended.
        let (mut checkpoint, resumed) = checkpoint_for(target, options);
        if checkpoint.repair {
            if let Err(err) = target.writable("scrub (with repair; --check-only only looks)") {
                if !resumed {
                    self.active.store(false, Ordering::Release);
                    return Err(err);
                }
                // A repairing pass resumed on a read-only open goes on check-only (FORMAT.md
                // V4.13, stage 3, R11): it records nothing there, and its checkpoint stays as
                // it was for a writable open.
                tracing::info!("resuming a repairing scrub check-only: the pool is read-only");
                checkpoint.repair = false;
            }
        }
        let total = checkpoint.tally.totals().bytes_scanned + remaining_bytes(target, &checkpoint);
        self.show(progress_of(target, &checkpoint, total, 0, Instant::now()));
        *self.claimed.lock() = Some(checkpoint);
        Ok(())
    }

    /// Release the slot claimed by `begin` without running.
    pub(crate) fn abort_begin(&self) {
        self.claimed.lock().take();
        *self.progress.lock() = None;
        self.active.store(false, Ordering::Release);
    }

    /// Run a claimed scrub to its end (or until paused/canceled). `observe` is called after
    /// every step with the progress so far.
    pub(crate) fn run(
        &self,
        target: &impl ScrubTarget,
        options: &ScrubOptions,
        observe: &mut dyn FnMut(&ScrubProgress),
    ) -> Result<ScrubReport> {
        let checkpoint = self
            .claimed
            .lock()
            .take()
            .unwrap_or_else(|| checkpoint_for(target, options).0);
        let result = match target.segment_scrub() {
            Some(segments) => {
                let budget = if options.checkpoint_interval == Some(Duration::ZERO) {
                    ChunkBudget::Segments(SEGMENT_CHUNK_COUNT)
                } else {
                    ChunkBudget::Time(SEGMENT_CHUNK_TIME)
                };
                run::run_segments(target, self, options, checkpoint, segments, budget, observe)
            }
            None => run::run(target, self, options, checkpoint, observe),
        };
        self.claimed.lock().take();
        *self.progress.lock() = None;
        self.active.store(false, Ordering::Release);
        result
    }

    /// Cancel the running scrub after its current step, or discard the checkpoint of an
    /// interrupted one (see `Pool::cancel_scrub`).
    pub(crate) fn cancel(&self, target: &impl ScrubTarget) -> Result<bool> {
        if self.request(ScrubRequest::Cancel) {
            return Ok(true);
        }
        discard_checkpoint(target)
    }

    /// The running scrub's progress, else the recorded one of an interrupted or paused scrub.
    pub(crate) fn progress(&self, target: &impl ScrubTarget) -> Option<ScrubProgress> {
        self.live_progress().or_else(|| recorded_progress(target))
    }
}

/// Drop the checkpoint of an interrupted scrub, recording it as canceled. Returns whether
/// there was one.
pub(crate) fn discard_checkpoint(target: &impl ScrubTarget) -> Result<bool> {
    let Some(checkpoint) = target.scrub_record().in_progress else {
        return Ok(false);
    };
    let summary = summary_of(&checkpoint, ScrubOutcome::Canceled);
    target.persist_scrub(RecordChange::Ended(summary))?;
    Ok(true)
}

/// The progress recorded on disk for a scrub that is not running in this process.
pub(crate) fn recorded_progress(target: &impl ScrubTarget) -> Option<ScrubProgress> {
    let checkpoint = target.scrub_record().in_progress?;
    let scanned = checkpoint.tally.totals().bytes_scanned;
    let total = scanned + remaining_bytes(target, &checkpoint);
    Some(ScrubProgress {
        running: false,
        paused: checkpoint.paused,
        repair: checkpoint.repair,
        started_unix_secs: checkpoint.started_unix_secs,
        next_slot: checkpoint.next_slot,
        slots: target.geometry().slots,
        next_segment: checkpoint.segments.map(|c| c.next_segment),
        scanned_bytes: scanned,
        total_bytes: total,
        rate_bytes_per_s: 0,
        eta_secs: None,
        tally: checkpoint.tally,
    })
}

/// Bytes a scrub at `checkpoint` has still to read (an estimate).
fn remaining_bytes(target: &impl ScrubTarget, checkpoint: &ScrubCheckpoint) -> u64 {
    match checkpoint.segments {
        Some(cursor) => target.segment_bytes_from(cursor.next_segment),
        None => target.live_bytes_from(SlotId(checkpoint.next_slot)),
    }
}

/// Where a scrub with `options` starts: the recorded checkpoint if resuming one that fits
/// this pool (and `true`), else a new scrub.
fn checkpoint_for(target: &impl ScrubTarget, options: &ScrubOptions) -> (ScrubCheckpoint, bool) {
    let devices = target.geometry().devices;
    let timeline = target.segment_timeline();
    let recorded = target.scrub_record().in_progress.filter(|checkpoint| {
        // A checkpoint that does not fit this pool cannot be resumed (never index by it), nor
        // a pass over segments of another timeline (the map was rewound since: it saw a map
        // that no longer is).
        let fits = resumable(target, checkpoint);
        if !fits {
            tracing::warn!(
                "ignoring a recorded scrub checkpoint that does not fit the pool's shape or its \
                 map's timeline: a new scrub starts"
            );
        }
        fits
    });
    match recorded.filter(|_| options.resume) {
        Some(mut checkpoint) => {
            checkpoint.paused = false;
            tracing::info!(
                next_slot = checkpoint.next_slot,
                next_segment = checkpoint.segments.map(|c| c.next_segment),
                "resuming the scrub from its checkpoint"
            );
            (checkpoint, true)
        }
        None => (
            ScrubCheckpoint {
                started_unix_secs: crate::types::now_unix_secs(),
                repair: !options.check_only,
                paused: false,
                next_slot: 0,
                scan_secs: 0,
                tally: ScrubTally::new(devices),
                segments: timeline.map(|timeline| SegmentCursor {
                    next_segment: 0,
                    timeline,
                }),
            },
            false,
        ),
    }
}

/// Whether `checkpoint` (recorded in the superblocks) can be resumed by this pool: its shape
/// fits, and a pass over segments ran on the map's current timeline.
pub(crate) fn resumable(target: &impl ScrubTarget, checkpoint: &ScrubCheckpoint) -> bool {
    checkpoint.tally.devices.len() == target.geometry().devices
        && checkpoint.next_slot <= target.geometry().slots
        && checkpoint.segments.map(|c| c.timeline) == target.segment_timeline()
}

/// A running scrub's progress as of `checkpoint`.
fn progress_of(
    target: &impl ScrubTarget,
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
        slots: target.geometry().slots,
        next_segment: checkpoint.segments.map(|c| c.next_segment),
        scanned_bytes: scanned,
        total_bytes: total,
        rate_bytes_per_s: rate,
        eta_secs: (rate > 0).then(|| (total - scanned) / rate),
        tally: checkpoint.tally.clone(),
    }
}

/// The last-scrub record for a scrub ending now.
fn summary_of(checkpoint: &ScrubCheckpoint, outcome: ScrubOutcome) -> ScrubSummary {
    ScrubSummary {
        outcome,
        repair: checkpoint.repair,
        started_unix_secs: checkpoint.started_unix_secs,
        finished_unix_secs: crate::types::now_unix_secs(),
        scan_secs: checkpoint.scan_secs,
        tally: checkpoint.tally.clone(),
    }
}

/// The report of a scrub that ended with `checkpoint`.
fn report_of(
    target: &impl ScrubTarget,
    end: ScrubEnd,
    checkpoint: &ScrubCheckpoint,
    (resumed_from_slot, resumed_from_segment): (u64, Option<u64>),
    bytes_read_this_run: u64,
) -> ScrubReport {
    let mut report = ScrubReport::from_tally(
        end,
        checkpoint.repair,
        checkpoint.scan_secs,
        &checkpoint.tally,
        |index| target.device_path(DeviceIndex(index)),
    );
    report.resumed_from_slot = resumed_from_slot;
    report.resumed_from_segment = resumed_from_segment;
    report.bytes_read_this_run = bytes_read_this_run;
    report
}
