//! Deleting recovery points in the background (docs/FORMAT.md V4.10e): asking for a delete
//! returns at once; a *reclaim* thread runs its steps, each under the volume's exclusive lock
//! for a few milliseconds, then sleeps several times as long, so foreground I/O keeps most of
//! its rate. `Pool::reclaim` runs them to the end in the caller's thread instead.
//!
//! Owns: the thread and its pace. Does not own: what a step frees or how it is made durable
//! (the map's), nor the order deletes run in (one walk at a time, the map decides).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use super::{Pool, PoolInner};
use crate::error::Result;
use crate::meta::{DeleteProgress, DeleteStep, DELETE_STEP_PAGES};

/// The reclaim thread sleeps this many times what a step took.
const DEFAULT_PACE: u32 = 8;

/// A recovery point being deleted, as `status` and `snapshot list` show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeletingPoint {
    /// Its name (taken until it is gone).
    pub name: String,
    /// Volume blocks its walk has passed (0: waiting for the one before it).
    pub blocks_walked: u64,
    /// The volume's blocks.
    pub blocks: u64,
    /// Data bytes freed so far.
    pub freed_data_bytes: u64,
    /// Metadata bytes freed so far (16 KiB pages, stored on `tolerance + 1` members).
    pub freed_metadata_bytes: u64,
}

impl DeletingPoint {
    fn of(name: String, progress: DeleteProgress) -> Self {
        Self {
            name,
            blocks_walked: progress.cursor,
            blocks: progress.keys,
            freed_data_bytes: progress.freed.blocks * crate::volume::BLOCK_BYTES as u64,
            freed_metadata_bytes: progress.freed.pages * crate::format::v4::PAGE_BYTES as u64,
        }
    }

    /// How far its walk has come, 0 to 100.
    #[must_use]
    pub fn percent(&self) -> f64 {
        if self.blocks == 0 {
            return 100.0;
        }
        self.blocks_walked as f64 * 100.0 / self.blocks as f64
    }
}

/// What [`Pool::reclaim`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReclaimReport {
    /// Steps run.
    pub steps: u64,
    /// The recovery points whose delete ended, with what each freed in all (data bytes,
    /// metadata bytes).
    pub deleted: Vec<(String, u64, u64)>,
}

/// The reclaim thread's handle: woken when a delete is asked for, stopped with the pool.
pub(crate) struct ReclaimThread {
    shared: Arc<Wake>,
    handle: std::thread::JoinHandle<()>,
}

/// What the pool and its reclaim thread share.
#[derive(Default)]
pub(crate) struct Wake {
    stop: AtomicBool,
    asked: Mutex<bool>,
    bell: Condvar,
    /// Sleep after a step, as a multiple of what the step took (8: at most a ninth of the
    /// time under the volume's exclusive lock).
    pace: AtomicU32,
    /// Pages of a recovery point a step reads at most (0: [`DELETE_STEP_PAGES`]).
    step_pages: AtomicUsize,
}

impl Wake {
    fn ring(&self) {
        if let Ok(mut asked) = self.asked.lock() {
            *asked = true;
        }
        self.bell.notify_all();
    }

    /// Wait until rung, stopped or `timeout`; whether it was rung.
    fn wait(&self, timeout: Duration) -> bool {
        let Ok(asked) = self.asked.lock() else {
            return false;
        };
        let Ok((mut asked, _)) = self.bell.wait_timeout_while(asked, timeout, |asked| {
            !*asked && !self.stop.load(Ordering::SeqCst)
        }) else {
            return false;
        };
        std::mem::take(&mut *asked)
    }
}

impl ReclaimThread {
    pub(crate) fn start(inner: Weak<PoolInner>, shared: Arc<Wake>) -> Option<Self> {
        let thread_shared = Arc::clone(&shared);
        match std::thread::Builder::new()
            .name("reclaim".into())
            .spawn(move || run(&inner, &thread_shared))
        {
            Ok(handle) => Some(Self { shared, handle }),
            Err(err) => {
                tracing::error!(%err, "no reclaim thread: deletes wait for `snapshot reclaim`");
                None
            }
        }
    }

    pub(crate) fn stop(self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.ring();
        if self.handle.join().is_err() {
            tracing::error!("the reclaim thread panicked");
        }
    }
}

fn run(inner: &Weak<PoolInner>, shared: &Wake) {
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Some(pool) = inner.upgrade() else {
            return;
        };
        let started = Instant::now();
        let outcome = pool.reclaim_step();
        drop(pool);
        let took = started.elapsed();
        match outcome {
            Ok(Some(step)) => {
                if step.done {
                    tracing::info!(
                        name = %step.name,
                        blocks = step.progress.freed.blocks,
                        pages = step.progress.freed.pages,
                        "recovery point deleted"
                    );
                }
                let pace = match shared.pace.load(Ordering::SeqCst) {
                    0 => DEFAULT_PACE,
                    pace => pace,
                };
                let rest = (took * pace).max(Duration::from_millis(5));
                shared.wait(rest);
            }
            Ok(None) => {
                // Nothing waiting: sleep until a delete is asked for (or a while, in case
                // one came from elsewhere, a replayed pool say).
                shared.wait(Duration::from_secs(5));
            }
            Err(err) => {
                tracing::warn!(%err, "a reclaim step failed; it is tried again later");
                shared.wait(Duration::from_secs(5));
            }
        }
    }
}

impl PoolInner {
    /// One step of the delete that runs next (`None`: nothing is waiting).
    pub(crate) fn reclaim_step(&self) -> Result<Option<DeleteStep>> {
        let budget = match self.reclaim_wake.step_pages.load(Ordering::SeqCst) {
            0 => DELETE_STEP_PAGES,
            pages => pages,
        };
        self.reclaim_step_of(budget)
    }

    fn reclaim_step_of(&self, budget: usize) -> Result<Option<DeleteStep>> {
        let Some(rows) = self.rows() else {
            return Ok(None);
        };
        if rows.read_volume().deletes().is_empty() {
            return Ok(None);
        }
        self.writable("delete a recovery point")?;
        self.check_available()?;
        let mut volume = rows.write_volume();
        let result = volume.delete_step(&self.write_devices(), budget);
        self.unavailable_if_failed(&volume, result)
    }

    /// See [`Pool::request_delete`].
    pub(crate) fn request_delete(&self, name: &str) -> Result<()> {
        self.writable("delete a recovery point")?;
        let rows = self.recovery_engine("deleting a recovery point")?;
        self.check_available()?;
        // A refusal writes nothing: the checks come before the gate.
        rows.read_volume().check_delete(name)?;
        self.members.enable_paced_deletes()?;
        let mut volume = rows.write_volume();
        let result = volume.request_delete(&self.write_devices(), name);
        self.unavailable_if_failed(&volume, result)?;
        self.reclaim_wake.ring();
        Ok(())
    }

    /// The recovery points being deleted (none on a version-3 pool).
    pub(crate) fn deletes(&self) -> Vec<DeletingPoint> {
        self.rows().map_or_else(Vec::new, |rows| {
            rows.read_volume()
                .deletes()
                .into_iter()
                .map(|(name, progress)| DeletingPoint::of(name, progress))
                .collect()
        })
    }
}

impl Pool {
    /// Ask for recovery point `name` to be deleted and return at once: it is unseen from now
    /// on (its name stays taken until it is gone), and its space comes back in the
    /// background, a step at a time, paced (this pool's reclaim thread, when background work
    /// is on), resumed after a crash. [`Pool::deletes`] shows the progress;
    /// [`Pool::reclaim`] runs it to the end now.
    ///
    /// # Errors
    /// [`crate::Error::ReadOnly`]; [`crate::Error::Unsupported`] on a version-3 pool;
    /// [`crate::Error::RecoveryPoint`] when there is none of that name, it is held or being
    /// deleted, or lines part at it.
    pub fn request_delete(&self, name: &str) -> Result<()> {
        self.inner.request_delete(name)
    }

    /// One step of the delete that runs next, in the caller's thread: where it stands
    /// after, and whether it ended (`None`: nothing is waiting).
    ///
    /// # Errors
    /// [`crate::Error::ReadOnly`]; a page that cannot be read; what a sync returns.
    pub fn reclaim_step(&self) -> Result<Option<(DeletingPoint, bool)>> {
        Ok(self
            .inner
            .reclaim_step()?
            .map(|step| (DeletingPoint::of(step.name, step.progress), step.done)))
    }

    /// The recovery points being deleted, in the order they run.
    #[must_use]
    pub fn deletes(&self) -> Vec<DeletingPoint> {
        self.inner.deletes()
    }

    /// Run every delete asked for to its end in the caller's thread, telling `progress`
    /// after each step.
    ///
    /// # Errors
    /// [`crate::Error::ReadOnly`]; a page that cannot be read; what a sync returns.
    pub fn reclaim(&self, progress: &mut dyn FnMut(&DeletingPoint)) -> Result<ReclaimReport> {
        let mut report = ReclaimReport::default();
        while let Some(step) = self.inner.reclaim_step()? {
            report.steps += 1;
            let point = DeletingPoint::of(step.name.clone(), step.progress);
            progress(&point);
            if step.done {
                report.deleted.push((
                    step.name,
                    point.freed_data_bytes,
                    point.freed_metadata_bytes,
                ));
            }
        }
        Ok(report)
    }

    /// The reclaim thread's pace: after each step it sleeps `factor` times what the step
    /// took (default 8: at most a ninth of the time under the volume's exclusive lock).
    pub fn set_reclaim_pace(&self, factor: u32) {
        self.inner
            .reclaim_wake
            .pace
            .store(factor.max(1), Ordering::SeqCst);
    }

    /// How much one step does: it reads at most about `pages` pages of the recovery point
    /// (then stops at a leaf's end). Default 128: a few milliseconds under the lock.
    pub fn set_reclaim_step_pages(&self, pages: usize) {
        self.inner
            .reclaim_wake
            .step_pages
            .store(pages.max(1), Ordering::SeqCst);
    }
}
