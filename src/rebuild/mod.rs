//! The background rebuild driver: a thread that attaches spares to faulted positions and calls
//! the pool's rebuild step, paced by a rate limit and yielding to foreground I/O, and checkpoints
//! the watermarks about once a second. The rebuild itself (what to copy, how, and when the new
//! device becomes a member) lives in the pool; this module owns only pacing and the thread.
//!
//! Policy (defaults a user would accept): no fixed rate limit; whenever foreground I/O happened
//! in the last 20 ms, the rebuild sleeps 2 ms before its next step, so a busy volume keeps most
//! of the devices' bandwidth while the rebuild still makes steady progress between requests.

use crate::pool::{OpenOptions, PoolInner};
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

/// Rebuild settings and the foreground activity clock, shared by the pool and the driver.
#[derive(Debug)]
pub struct RebuildControl {
    rate_bytes_per_s: AtomicU64,
    auto_replace: AtomicBool,
    background: bool,
    epoch: Instant,
    last_foreground_ns: AtomicU64,
}

impl RebuildControl {
    pub(crate) fn new(options: &OpenOptions) -> Self {
        Self {
            rate_bytes_per_s: AtomicU64::new(options.rebuild_rate_bytes_per_s.unwrap_or(0)),
            auto_replace: AtomicBool::new(options.auto_replace),
            background: options.background_rebuild && !options.read_only,
            epoch: Instant::now(),
            last_foreground_ns: AtomicU64::new(0),
        }
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
    /// Note that a foreground request is running.
    pub(crate) fn foreground(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_foreground_ns.store(now, Ordering::Relaxed);
    }
    pub(crate) fn foreground_recent(&self) -> bool {
        let last = Duration::from_nanos(self.last_foreground_ns.load(Ordering::Relaxed));
        last > Duration::ZERO && self.epoch.elapsed().saturating_sub(last) < FOREGROUND_WINDOW
    }
}

/// The running background thread.
#[derive(Debug)]
pub struct Background {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Background {
    pub(crate) fn start(pool: Arc<PoolInner>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("stripestore-rebuild".into())
            .spawn(move || drive(&pool, &flag));
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

fn drive(pool: &PoolInner, stop: &AtomicBool) {
    let mut pacer = Pacer::default();
    let mut running = false;
    while !stop.load(Ordering::Acquire) {
        if pool.rebuild.auto_replace() {
            pool.assign_spares();
        }
        if pool.rebuild_progress().is_empty() {
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
        match pool.rebuild_step(checkpoint) {
            Ok(outcome) => {
                let wait = pacer.after_step(
                    pool.rebuild.rate(),
                    pool.rebuild.foreground_recent(),
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
        let options = OpenOptions {
            rebuild_rate_bytes_per_s: Some(100 << 20),
            ..OpenOptions::default()
        };
        let control = RebuildControl::new(&options);
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
        control.foreground();
        assert_eq!(
            pacer.after_step(control.rate(), control.foreground_recent(), 1 << 20),
            crate::maintenance::YIELD
        );
    }
}
