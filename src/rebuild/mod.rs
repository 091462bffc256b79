//! Rebuild: filling a replacement device so it can take over a data position, and the
//! background driver that does it while the pool is open.
//!
//! The stripe map says exactly which stripes hold data, so a rebuild visits only those, in
//! slot order, one batch per step (`step::Rebuild`); its cost scales with live data, not with
//! device size. For each stripe with a shard on the position the shard is fetched from the
//! device being replaced if that one is still healthy, otherwise reconstructed from the others,
//! verified against the map, and written to the replacement at the same offset. When the
//! watermark reaches the end, the replacement is flushed and swapped in.
//!
//! The driver is a thread that attaches spares to faulted positions and runs steps, paced by a
//! rate limit and yielding to foreground I/O, and checkpoints the watermarks about once a
//! second. Policy (defaults a user would accept): no fixed rate limit; whenever foreground I/O
//! happened in the last 20 ms, the rebuild sleeps 2 ms before its next step, so a busy volume
//! keeps most of the devices' bandwidth while the rebuild still makes steady progress between
//! requests.
//!
//! Owns: what to copy and how (the step machine in `step`: batches, sources, reconstruction,
//! verification, the per-stripe fallback), the rebuild's public types ([`RebuildProgress`],
//! [`StepOutcome`], re-exported by `pool`), its settings and the foreground clock
//! ([`RebuildControl`]), and the background thread ([`Background`]).
//!
//! Must not touch: the pool's internals. Everything it needs goes through `RebuildTarget`
//! (and the shared `maintenance::StripeAccess`), which the pool implements: the replacement's
//! state (watermark, counters: `Filling`) lives with the pool's members, because foreground writes
//! and commits use it too; attaching a replacement, swapping it in and persisting the
//! watermarks are the pool's (they change members and superblocks). This module imports
//! nothing from `crate::pool` (only `maintenance`, `parallel`, `types`, `error`, `format`,
//! `geometry`, `codec`).

mod step;

pub(crate) use step::{long_step, needs_rebuild, shards_on, step};

use crate::device::AlignedBuf;
use crate::error::Result;
use crate::maintenance::{LiveStripe, StripeAccess};
use crate::types::{DeviceIndex, Generation, SlotId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Pacing of rebuild (and scrub) steps.
pub use crate::maintenance::Pacer;
/// How often rebuild watermarks are persisted.
pub use crate::maintenance::CHECKPOINT_INTERVAL;
/// Foreground I/O this recent makes the rebuild yield.
const FOREGROUND_WINDOW: Duration = Duration::from_millis(20);
/// How often an idle driver looks for work (faulted devices, new spares).
const IDLE_POLL: Duration = Duration::from_millis(100);

/// What a rebuild needs of a pool beyond [`StripeAccess`]: the replacement attached to a
/// position, the live slots of a batch (held so none is reused before the batch has copied
/// it), writing to the replacement, swapping it in, persisting the watermarks. Implemented by
/// the pool.
pub(crate) trait RebuildTarget: StripeAccess {
    /// A replacement being filled.
    type Fill: Filling;
    /// The rebuild settings and the foreground clock.
    fn control(&self) -> &RebuildControl;
    /// Attach an available spare to every faulted or degraded position without a replacement.
    fn assign_spares(&self);
    /// Probe members away, resync one come back, fault one whose grace period ended
    /// (docs/FORMAT.md V4.16); nothing by default.
    fn watch_away(&self) {}
    /// The replacement attached to position `index`, if one is.
    fn fill_of(&self, index: DeviceIndex) -> Option<Arc<Self::Fill>>;
    /// The progress of `fill`'s rebuild of position `index`.
    fn progress(&self, index: DeviceIndex, fill: &Self::Fill) -> RebuildProgress;
    /// The live slots in `from..to` that `wanted` keeps, in slot order, held so that none is
    /// handed out again (and its cell on the replacement overwritten) until released, even if
    /// a commit releases it meanwhile.
    fn hold_live_stripes(
        &self,
        from: SlotId,
        to: SlotId,
        wanted: impl FnMut(&LiveStripe) -> bool,
    ) -> Vec<LiveStripe>;
    /// Release slots held by `hold_live_stripes`.
    fn release_held(&self, slots: &[SlotId]);
    /// Write `bytes` at `offset` of `fill`, the replacement of `index`.
    ///
    /// # Errors
    /// [`crate::Error::Io`] if the write fails; the replacement is then abandoned.
    fn fill_write(
        &self,
        index: DeviceIndex,
        fill: &Self::Fill,
        offset: u64,
        bytes: &[u8],
    ) -> Result<()>;
    /// Write each `(offset, bytes)` of `writes` to `fill`, the replacement of `index`, all
    /// submitted together (one io_uring batch where the device has one).
    ///
    /// # Errors
    /// [`crate::Error::Io`] naming the first write that failed; the replacement is then
    /// abandoned.
    fn fill_writes(
        &self,
        index: DeviceIndex,
        fill: &Self::Fill,
        writes: &[(u64, &[u8])],
    ) -> Result<()>;
    /// Flush the filled `fill` and make it the member at `index`; `false` if it was abandoned
    /// meanwhile.
    ///
    /// # Errors
    /// The flush, the commit or the superblock write failed (the old member stays).
    fn swap_in(&self, index: DeviceIndex, fill: &Self::Fill) -> Result<bool>;
    /// Persist every rebuild's watermark (replacements flushed, then the superblocks).
    ///
    /// # Errors
    /// The commit or the superblock write failed.
    fn checkpoint(&self) -> Result<()>;
    /// One long step of every rebuild (what the background driver runs): [`long_step`] unless
    /// the pool rebuilds otherwise (a format-version-4 pool copies segments of rows).
    ///
    /// # Errors
    /// As [`long_step`].
    fn long_step(&self, checkpoint: bool) -> Result<StepOutcome>
    where
        Self: Sized,
    {
        long_step(self, checkpoint)
    }
}

/// A replacement's rebuild state: its watermark and counters (kept by the pool's members).
pub(crate) trait Filling: Send + Sync {
    /// The replacement's last known path.
    fn path(&self) -> &str;
    /// Every live slot below this is on the replacement.
    fn watermark(&self) -> SlotId;
    /// Advance the watermark.
    fn set_watermark(&self, slot: SlotId);
    /// Stripes written at or after this generation were written with the replacement attached.
    fn start_generation(&self) -> Generation;
    /// Count bytes read from the other devices.
    fn count_read(&self, bytes: u64);
    /// Count bytes written to the replacement.
    fn count_written(&self, bytes: u64);
    /// Count a chunk that could not be rebuilt (its stripe is beyond repair).
    fn count_lost(&self);
}

/// The progress of every rebuild in progress, in position order.
pub(crate) fn progress<T: RebuildTarget>(target: &T) -> Vec<RebuildProgress> {
    (0..target.geometry().devices)
        .map(DeviceIndex)
        .filter_map(|index| {
            target
                .fill_of(index)
                .map(|fill| target.progress(index, &fill))
        })
        .collect()
}

/// Progress of one rebuild, for `status` and the API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RebuildProgress {
    /// Data position being rebuilt.
    pub index: usize,
    /// The device being replaced.
    pub replacing: String,
    /// The device being filled.
    pub device: String,
    /// Bytes written to the new device in this run.
    pub done_bytes: u64,
    /// Bytes this run has to write in all.
    pub total_bytes: u64,
    /// Bytes read from the other devices in this run.
    pub read_bytes: u64,
    /// Physical slots below this are done.
    pub next_slot: u64,
    /// Physical slots in the pool.
    pub slots: u64,
    /// Average rate of this run, bytes per second.
    pub rate_bytes_per_s: u64,
    /// Estimated seconds to go.
    pub eta_secs: Option<u64>,
    /// Chunks that could not be rebuilt (their stripe had more damage than redundancy): the
    /// same data is already lost on the pool; the rebuild goes on past it.
    pub lost_chunks: u64,
}

/// What one rebuild step did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepOutcome {
    /// Bytes written to replacements.
    pub written_bytes: u64,
    /// Final progress of the rebuilds that completed in this step.
    pub completed: Vec<RebuildProgress>,
    /// Rebuilds still running after this step.
    pub running: usize,
}

/// Rebuild settings and the foreground activity clock, shared by the pool and the driver.
#[derive(Debug)]
pub struct RebuildControl {
    rate_bytes_per_s: AtomicU64,
    auto_replace: AtomicBool,
    background: bool,
    epoch: Instant,
    last_foreground_ns: AtomicU64,
    /// Foreground requests running now (a request waiting behind a maintenance step that
    /// holds the volume's lock longer than [`FOREGROUND_WINDOW`] is foreground all along).
    in_flight: AtomicU64,
    /// The batch buffers of the running rebuilds, kept between batches and steps.
    buffers: BufferCache,
}

/// Aligned buffers kept between the batches and steps of a rebuild, so that each batch reads
/// into and writes from memory that is already mapped: a fresh buffer costs a page fault per
/// 4 KiB page on first touch (in the kernel's copy for a buffered read, which then leaves
/// io_uring's fast path for a worker thread) and is zeroed and unmapped again each batch.
/// Emptied when no rebuild is running.
#[derive(Debug, Default)]
pub(crate) struct BufferCache {
    free: Mutex<Vec<AlignedBuf>>,
}

/// Buffers the cache keeps at most: the pipeline has at most this many batches' buffers
/// alive at once (reads: two in the readers' channels, two being read, one being produced;
/// writes: two in flight, one being produced).
const CACHED_BUFFERS: usize = 8;

impl BufferCache {
    /// A buffer of at least `len` bytes (the smallest cached one that is big enough, else a new
    /// one); its contents are unspecified.
    pub(crate) fn take(&self, len: usize) -> AlignedBuf {
        let mut free = self.free.lock();
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, buffer)| buffer.len() >= len)
            .min_by_key(|(_, buffer)| buffer.len())
            .map(|(i, _)| i);
        match best {
            Some(i) => free.swap_remove(i),
            None => {
                drop(free);
                AlignedBuf::for_io(len)
            }
        }
    }

    /// Keep `buffer` for a later batch (dropped if the cache is full).
    pub(crate) fn give(&self, buffer: AlignedBuf) {
        let mut free = self.free.lock();
        if free.len() < CACHED_BUFFERS {
            free.push(buffer);
        }
    }

    /// Drop every cached buffer.
    pub(crate) fn clear(&self) {
        self.free.lock().clear();
    }
}

impl RebuildControl {
    /// Settings: the rate limit (`None`: unlimited), whether spares are attached on their own,
    /// whether the background driver runs.
    pub(crate) fn new(rate: Option<u64>, auto_replace: bool, background: bool) -> Self {
        Self {
            rate_bytes_per_s: AtomicU64::new(rate.unwrap_or(0)),
            auto_replace: AtomicBool::new(auto_replace),
            background,
            epoch: Instant::now(),
            last_foreground_ns: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            buffers: BufferCache::default(),
        }
    }
    /// The rebuilds' batch buffers.
    pub(crate) fn buffers(&self) -> &BufferCache {
        &self.buffers
    }
    pub(crate) fn background_enabled(&self) -> bool {
        self.background
    }
    /// The rate limit (`None`: unlimited).
    #[must_use]
    pub fn rate(&self) -> Option<u64> {
        match self.rate_bytes_per_s.load(Ordering::Relaxed) {
            0 => None,
            rate => Some(rate),
        }
    }
    pub(crate) fn set_rate(&self, rate: Option<u64>) {
        self.rate_bytes_per_s
            .store(rate.unwrap_or(0), Ordering::Relaxed);
    }
    pub(crate) fn auto_replace(&self) -> bool {
        self.auto_replace.load(Ordering::Relaxed)
    }
    /// Note that a foreground request starts; it counts as running until the guard is
    /// dropped (and as recent for [`FOREGROUND_WINDOW`] after). A v4 chunk holds the volume's
    /// lock for up to 50 ms: a write that arrived at its start must still be seen at its end.
    #[must_use = "the request is foreground while the guard lives"]
    pub(crate) fn foreground(&self) -> Foreground<'_> {
        self.note_foreground();
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Foreground { control: self }
    }
    fn note_foreground(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_foreground_ns.store(now, Ordering::Relaxed);
    }
    /// When foreground I/O was last noted (nanoseconds since the control was made; 0: never).
    #[cfg(test)]
    pub(crate) fn last_foreground_ns(&self) -> u64 {
        self.last_foreground_ns.load(Ordering::Relaxed)
    }
    pub(crate) fn foreground_recent(&self) -> bool {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return true;
        }
        let last = Duration::from_nanos(self.last_foreground_ns.load(Ordering::Relaxed));
        last > Duration::ZERO && self.epoch.elapsed().saturating_sub(last) < FOREGROUND_WINDOW
    }
}

/// A foreground request running ([`RebuildControl::foreground`]).
#[derive(Debug)]
pub(crate) struct Foreground<'a> {
    control: &'a RebuildControl,
}

impl Drop for Foreground<'_> {
    fn drop(&mut self) {
        self.control.note_foreground();
        self.control.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The running background thread.
#[derive(Debug)]
pub struct Background {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Background {
    pub(crate) fn start<T: RebuildTarget + Send + 'static>(pool: Arc<T>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("stripestore-rebuild".into())
            .spawn(move || drive(pool.as_ref(), &flag));
        match handle {
            Ok(handle) => Self { stop, handle },
            Err(err) => {
                tracing::error!(%err, "cannot start the rebuild thread; rebuilds run only on request");
                let handle = std::thread::spawn(|| {});
                Self { stop, handle }
            }
        }
    }

    /// Ask the thread to stop after its current step and wait for it.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.handle.thread().unpark();
        if self.handle.join().is_err() {
            tracing::error!("the rebuild thread panicked");
        }
    }
}

fn sleep_unless_stopped(stop: &AtomicBool, total: Duration) {
    let deadline = Instant::now() + total;
    while !stop.load(Ordering::Acquire) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        // Woken early by `Background::stop`.
        std::thread::park_timeout(left);
    }
}

fn drive<T: RebuildTarget>(pool: &T, stop: &AtomicBool) {
    let mut pacer = Pacer::default();
    let mut running = false;
    while !stop.load(Ordering::Acquire) {
        pool.watch_away();
        if pool.control().auto_replace() {
            pool.assign_spares();
        }
        if progress(pool).is_empty() {
            if running {
                running = false;
            }
            sleep_unless_stopped(stop, IDLE_POLL);
            continue;
        }
        if !running {
            running = true;
            pacer = Pacer::default();
        }
        let checkpoint = pacer.checkpoint_due();
        match pool.long_step(checkpoint) {
            Ok(outcome) => {
                let control = pool.control();
                let wait = pacer.after_step(
                    control.rate(),
                    control.foreground_recent(),
                    outcome.written_bytes,
                );
                sleep_unless_stopped(stop, wait);
            }
            Err(err) => {
                tracing::error!(%err, "rebuild step failed; retrying in a second");
                sleep_unless_stopped(stop, Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_holds_the_rate_and_yields_to_foreground() {
        let control = RebuildControl::new(Some(100 << 20), true, true);
        let mut pacer = Pacer::default();
        // 50 MiB at 100 MiB/s must take about half a second from the start.
        let wait = pacer.after_step(control.rate(), control.foreground_recent(), 50 << 20);
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Unlimited and idle: no wait; right after foreground I/O: a short yield.
        control.set_rate(None);
        assert_eq!(
            pacer.after_step(control.rate(), control.foreground_recent(), 1 << 20),
            Duration::ZERO
        );
        drop(control.foreground());
        assert_eq!(
            pacer.after_step(control.rate(), control.foreground_recent(), 1 << 20),
            crate::maintenance::YIELD
        );
    }

    /// A request that waits longer than the window (behind a v4 chunk holding the volume's
    /// lock for 50 ms) is foreground until it ends (not only for the window after it began).
    #[test]
    fn a_request_in_flight_is_foreground_however_long_it_waits() {
        let control = RebuildControl::new(None, true, true);
        assert!(!control.foreground_recent());
        let request = control.foreground();
        std::thread::sleep(FOREGROUND_WINDOW * 3);
        assert!(control.foreground_recent(), "in flight beyond the window");
        drop(request);
        std::thread::sleep(FOREGROUND_WINDOW * 2);
        assert!(!control.foreground_recent(), "idle since the window");
    }
}
