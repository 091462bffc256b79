//! Counters of the requests made to the volume (what its users see): latency per operation,
//! bytes read and written, failures. Kept by the pool on its request path; front ends read
//! them through `Pool::request_metrics`.
//!
//! Owns: [`RequestMetrics`] and how a request is measured. Must not touch: rendering (the
//! front end's), devices (their counters are `crate::device::DeviceIo`).

use crate::device::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counters of the requests made to the volume (what users see).
#[derive(Debug, Default)]
pub struct RequestMetrics {
    /// Read latency (whole request, all stripes).
    pub read: Histogram,
    /// Write latency (until the data is in the devices, not durable).
    pub write: Histogram,
    /// Flush (commit) latency.
    pub flush: Histogram,
    /// Bytes returned by successful reads.
    pub read_bytes: AtomicU64,
    /// Bytes accepted by successful writes.
    pub written_bytes: AtomicU64,
    /// Requests that failed, by operation: read, write, flush.
    pub failed: [AtomicU64; 3],
    /// Commits run for flushes: fewer than the flushes (the `flush` histogram's count) when
    /// flushes arriving together share one (group commit).
    pub flush_commits: AtomicU64,
}

/// Which request a timing belongs to.
#[derive(Debug, Clone, Copy)]
pub enum Request {
    /// `read_at`.
    Read,
    /// `write_at`.
    Write,
    /// `flush`.
    Flush,
}

impl RequestMetrics {
    /// Time `work`, count its bytes if it succeeds.
    pub fn measure<T, E>(
        &self,
        request: Request,
        bytes: usize,
        work: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = work();
        self.record(request, bytes, started, result.is_ok());
        result
    }

    /// Count a request that started at `started` and ended now, `ok` or failed (a queued
    /// write is measured so: from its call to its outcome, on whichever thread carried it).
    pub(crate) fn record(&self, request: Request, bytes: usize, started: Instant, ok: bool) {
        let (histogram, counter, failed) = match request {
            Request::Read => (&self.read, Some(&self.read_bytes), &self.failed[0]),
            Request::Write => (&self.write, Some(&self.written_bytes), &self.failed[1]),
            Request::Flush => (&self.flush, None, &self.failed[2]),
        };
        histogram.observe(started.elapsed());
        match (ok, counter) {
            (true, Some(counter)) => {
                counter.fetch_add(bytes as u64, Ordering::Relaxed);
            }
            (true, None) => {}
            (false, _) => {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
