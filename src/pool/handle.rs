//! A pool's background scrub thread, and the handle front ends hold on a pool without keeping
//! it open ([`PoolHandle`], upgraded per request to a [`PoolRef`]).
//!
//! Owns: the scrub-thread slot shared by [`Pool`](super::Pool) and its handles (one background
//! scrub at a time; none starts once the pool is closing), and the public read, scrub-control
//! and administration surface a front end (the HTTP endpoint) needs. Must not touch: HTTP,
//! rendering, or any front end (they depend on the pool, never the reverse); the scrub itself
//! (`scrub.rs`).

use super::scrub::{ScrubOptions, ScrubProgress, ScrubReport, ScrubRequest};
use super::{PoolInner, PoolStatus, RequestMetrics};
use crate::device::DeviceIo;
use crate::error::{Error, Result};
use parking_lot::Mutex;
use std::sync::{Arc, Weak};

/// The background scrub thread of a pool, shared by the pool and its handles.
pub(crate) type ScrubThread = Arc<Mutex<ScrubSlot>>;

/// A pool's background scrub thread, and whether the pool is closing (then no scrub starts: a
/// front end can still hold the pool for a moment after the pool joined its scrub).
#[derive(Debug, Default)]
pub(crate) struct ScrubSlot {
    pub(crate) handle: Option<std::thread::JoinHandle<Result<ScrubReport>>>,
    pub(crate) closed: bool,
}

/// Start a scrub of `inner` in a background thread kept in `thread`.
pub(crate) fn start_scrub(
    inner: &Arc<PoolInner>,
    thread: &ScrubThread,
    options: &ScrubOptions,
) -> Result<()> {
    let mut slot = thread.lock();
    if slot.closed {
        return Err(Error::InvalidConfig("the pool is closing".into()));
    }
    inner.scrub_begin(options)?;
    let pool = Arc::clone(inner);
    let options = options.clone();
    let spawned = std::thread::Builder::new()
        .name("stripestore-scrub".into())
        .spawn(move || pool.scrub_body(&options, &mut |_| {}));
    match spawned {
        Ok(handle) => {
            // A handle left by an earlier scrub belongs to a finished thread (scrub_begin
            // refuses while one runs); dropping it detaches nothing that still runs.
            slot.handle = Some(handle);
            Ok(())
        }
        Err(err) => {
            inner.scrub_abort_begin();
            Err(Error::InvalidConfig(format!(
                "cannot start the scrub thread: {err}"
            )))
        }
    }
}

impl PoolInner {
    /// Path and I/O counters of every data position, in layout order.
    pub(crate) fn device_io(&self) -> Vec<(String, Arc<DeviceIo>)> {
        self.members
            .data
            .iter()
            .map(|m| (m.path(), Arc::clone(&m.io)))
            .collect()
    }
}

/// A handle on an open pool that does not keep it open: what a front end that outlives a
/// request (the HTTP endpoint's thread) holds. Get one with [`Pool::handle`](super::Pool::handle).
#[derive(Debug, Clone)]
pub struct PoolHandle {
    pub(crate) inner: Weak<PoolInner>,
    pub(crate) scrub_thread: ScrubThread,
}

impl PoolHandle {
    /// The pool, for the length of one request; `None` once it is closed.
    #[must_use]
    pub fn upgrade(&self) -> Option<PoolRef> {
        Some(PoolRef {
            inner: self.inner.upgrade()?,
            scrub_thread: Arc::clone(&self.scrub_thread),
        })
    }
}

/// An open pool as a front end sees it while answering one request (see [`PoolHandle`]). Holding
/// it does not stop the pool from closing: once closed, no scrub starts through it.
pub struct PoolRef {
    pub(super) inner: Arc<PoolInner>,
    scrub_thread: ScrubThread,
}

impl std::fmt::Debug for PoolRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolRef")
            .field("uuid", &self.inner.uuid.to_string())
            .finish_non_exhaustive()
    }
}

impl PoolRef {
    /// As [`Pool::status`](super::Pool::status).
    #[must_use]
    pub fn status(&self) -> PoolStatus {
        self.inner.status()
    }

    /// As [`Pool::device_io`](super::Pool::device_io).
    #[must_use]
    pub fn device_io(&self) -> Vec<(String, Arc<DeviceIo>)> {
        self.inner.device_io()
    }

    /// As [`Pool::request_metrics`](super::Pool::request_metrics).
    #[must_use]
    pub fn request_metrics(&self) -> &RequestMetrics {
        &self.inner.requests
    }

    /// As [`Pool::start_scrub`](super::Pool::start_scrub).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if a scrub is already running or the pool is closing (see
    /// [`PoolRef::is_closing`]).
    pub fn start_scrub(&self, options: &ScrubOptions) -> Result<()> {
        start_scrub(&self.inner, &self.scrub_thread, options)
    }

    /// As [`Pool::pause_scrub`](super::Pool::pause_scrub).
    pub fn pause_scrub(&self) -> bool {
        self.inner.scrub.request(ScrubRequest::Pause)
    }

    /// As [`Pool::cancel_scrub`](super::Pool::cancel_scrub).
    ///
    /// # Errors
    /// [`Error::Io`] if the superblocks cannot be written.
    pub fn cancel_scrub(&self) -> Result<bool> {
        self.inner.cancel_scrub()
    }

    /// As [`Pool::scrub_progress`](super::Pool::scrub_progress).
    #[must_use]
    pub fn scrub_progress(&self) -> Option<ScrubProgress> {
        self.inner.scrub_progress()
    }

    /// As [`Pool::offline`](super::Pool::offline).
    ///
    /// # Errors
    /// As [`Pool::offline`](super::Pool::offline).
    pub fn offline(&self, name: &str) -> Result<()> {
        self.inner.offline(name)
    }

    /// As [`Pool::fault_member`](super::Pool::fault_member).
    ///
    /// # Errors
    /// As [`Pool::fault_member`](super::Pool::fault_member).
    pub fn fault_member(&self, name: &str) -> Result<()> {
        self.inner.fault_member(name)
    }

    /// As [`Pool::online`](super::Pool::online).
    ///
    /// # Errors
    /// As [`Pool::online`](super::Pool::online).
    pub fn online(
        &self,
        name: &str,
        device: crate::device::SharedDevice,
        force: bool,
    ) -> Result<()> {
        self.inner.online(name, device, force)
    }

    /// As [`Pool::replace`](super::Pool::replace).
    ///
    /// # Errors
    /// As [`Pool::replace`](super::Pool::replace).
    pub fn replace(
        &self,
        old: &str,
        device: crate::device::SharedDevice,
        force: bool,
    ) -> Result<()> {
        self.inner.replace(old, device, force)
    }

    /// As [`Pool::replace_with_spare`](super::Pool::replace_with_spare).
    ///
    /// # Errors
    /// As [`Pool::replace_with_spare`](super::Pool::replace_with_spare).
    pub fn replace_with_spare(&self, old: &str, spare: &str) -> Result<()> {
        self.inner.replace_with_spare(old, spare)
    }

    /// As [`Pool::add_spare`](super::Pool::add_spare).
    ///
    /// # Errors
    /// As [`Pool::add_spare`](super::Pool::add_spare).
    /// With `domain`, as [`Pool::add_spare_in`](super::Pool::add_spare_in).
    pub fn add_spare(
        &self,
        device: crate::device::SharedDevice,
        force: bool,
        domain: Option<&str>,
    ) -> Result<()> {
        self.inner
            .add_spare(device, force, domain.map(str::to_string))
    }

    /// As [`Pool::remove_spare`](super::Pool::remove_spare).
    ///
    /// # Errors
    /// As [`Pool::remove_spare`](super::Pool::remove_spare).
    pub fn remove_spare(&self, name: &str) -> Result<()> {
        self.inner.remove_spare(name)
    }

    /// As [`Pool::clear`](super::Pool::clear).
    ///
    /// # Errors
    /// As [`Pool::clear`](super::Pool::clear).
    pub fn clear(&self, name: Option<&str>) -> Result<Vec<super::Cleared>> {
        self.inner.clear(name)
    }

    /// As [`Pool::clear_with`](super::Pool::clear_with).
    ///
    /// # Errors
    /// As [`Pool::clear_with`](super::Pool::clear_with).
    pub fn clear_with(&self, name: &str, device: crate::device::SharedDevice) -> Result<()> {
        self.inner.clear_with(name, device)
    }

    /// The pool's device size: what a new device or spare must hold.
    #[must_use]
    pub fn device_bytes(&self) -> u64 {
        self.inner.geometry.device_bytes
    }

    /// Whether the pool is closing (or closed): no scrub starts any more.
    #[must_use]
    pub fn is_closing(&self) -> bool {
        self.scrub_thread.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{mem_devices, shared};
    use crate::{CreateOptions, Pool, ScrubOptions};

    fn pool() -> Pool {
        let mems = mem_devices(6, 4 << 20);
        let mut options = CreateOptions::new("rs:4+2".parse().unwrap());
        options.chunk_bytes = 4096;
        // A version-3 pool (its own engine): the test machinery's switch.
        crate::testing::allow_format_3_writes(true);
        options.format = crate::pool::FormatVersion::V3;
        options.open.background_rebuild = false;
        let pool = Pool::create(shared(&mems), vec![], &options).unwrap();
        pool.write_at(0, &vec![0x42; pool.size() as usize]).unwrap();
        pool.flush().unwrap();
        pool
    }

    /// A front end may hold the pool (an upgraded handle) while the pool is closed: a scrub
    /// asked for then must not start a thread nobody joins, writing the superblocks of a closed
    /// pool and keeping its devices open.
    #[test]
    fn no_scrub_starts_through_a_handle_once_the_pool_is_closed() {
        let pool = pool();
        let handle = pool.handle();
        let held = handle.upgrade().unwrap(); // as the HTTP thread's upgrade would
        assert!(!held.is_closing());
        pool.close().unwrap();
        assert!(held.is_closing());
        assert!(held.start_scrub(&ScrubOptions::default()).is_err());
        let leaked = handle.scrub_thread.lock().handle.take();
        let leaked = leaked.is_some_and(|thread| {
            let _ = thread.join();
            true
        });
        assert!(!leaked, "a scrub thread was started on a closed pool");
        assert!(held.inner.scrub.live_progress().is_none());
        drop(held);
        assert!(handle.upgrade().is_none(), "closed and released");
    }
}
