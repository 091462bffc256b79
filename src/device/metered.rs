//! Per-device I/O counters: [`DeviceIo`] (requests, bytes, flushes, latency [`Histogram`]s)
//! and the [`Metered`] decorator that fills them. The pool keeps one [`DeviceIo`] per layout
//! position and wraps whichever device serves it; front ends read the counters through
//! `Pool::device_io`.
//!
//! Owns: the counters and how an observation is recorded (a few relaxed atomic adds per request,
//! no lock, no background thread). Must not touch: rendering (the exposition format belongs to
//! the front end, `crate::endpoint`), pools, stripes.

use super::{Device, DeviceError, ReadWithin, SharedDevice};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Upper bounds of the latency buckets, in seconds (50 µs .. 2.5 s, then +Inf): from a page-cache
/// hit to a disk that is dying slowly.
pub const BUCKETS_SECS: [f64; 15] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// A latency histogram with fixed buckets (cumulative when rendered).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; BUCKETS_SECS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Record one observation.
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS_SECS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(BUCKETS_SECS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Observations per bucket, not cumulative, in the order of [`BUCKETS_SECS`]; the last
    /// one counts what fell above every bound (+Inf).
    #[must_use]
    pub fn buckets(&self) -> [u64; BUCKETS_SECS.len() + 1] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }

    /// The upper bound of the bucket the `q` quantile (0..=1) of the observations falls in;
    /// `None` with fewer than `least` observations, or when it falls above every bound.
    #[must_use]
    pub fn quantile_bound(&self, q: f64, least: u64) -> Option<Duration> {
        let buckets = self.buckets();
        let total: u64 = buckets.iter().sum();
        if total == 0 || total < least {
            return None;
        }
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, bound) in buckets.iter().zip(BUCKETS_SECS) {
            seen += bucket;
            if seen >= rank {
                return Some(Duration::from_secs_f64(bound));
            }
        }
        None
    }

    /// Sum of the observations, in seconds.
    #[must_use]
    pub fn sum_secs(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let secs = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        secs
    }
}

/// I/O counters of one device position.
#[derive(Debug, Default)]
pub struct DeviceIo {
    /// Read requests.
    pub reads: AtomicU64,
    /// Bytes read.
    pub read_bytes: AtomicU64,
    /// Write requests.
    pub writes: AtomicU64,
    /// Bytes written.
    pub write_bytes: AtomicU64,
    /// Flushes.
    pub flushes: AtomicU64,
    /// Hedged reads given up on because their deadline passed first
    /// ([`ReadWithin::Late`]; not errors, and not in `reads` nor the latency histogram).
    pub late_reads: AtomicU64,
    /// Read latency.
    pub read_latency: Histogram,
    /// Write latency.
    pub write_latency: Histogram,
}

/// A device decorator that counts and times every request into a [`DeviceIo`].
#[derive(Debug)]
pub struct Metered {
    inner: SharedDevice,
    io: Arc<DeviceIo>,
}

impl Metered {
    /// Wrap `inner`; its traffic is added to `io`.
    #[must_use]
    pub fn wrap(inner: SharedDevice, io: &Arc<DeviceIo>) -> SharedDevice {
        Arc::new(Self {
            inner,
            io: Arc::clone(io),
        })
    }
}

impl Metered {
    /// Count a read that started at `started` and ended now: its latency, and its bytes if
    /// it succeeded.
    fn count_read(&self, started: Instant, ok: bool, bytes: usize) {
        self.io.read_latency.observe(started.elapsed());
        self.io.reads.fetch_add(1, Ordering::Relaxed);
        if ok {
            self.io
                .read_bytes
                .fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }
}

impl Device for Metered {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let started = Instant::now();
        let result = self.inner.read_at(offset, buf);
        self.count_read(started, result.is_ok(), buf.len());
        result
    }
    fn read_at_within(
        &self,
        offset: u64,
        buf: &mut [u8],
        within: Duration,
    ) -> Result<ReadWithin, DeviceError> {
        let started = Instant::now();
        let result = self.inner.read_at_within(offset, buf, within);
        if let Ok(ReadWithin::Late) = result {
            // Its latency is unknown (above `within`): kept out of the histogram, which a
            // hedge deadline is based on (a slow member's deadline must not creep up after
            // its own late reads).
            self.io.late_reads.fetch_add(1, Ordering::Relaxed);
            return result;
        }
        self.count_read(started, result.is_ok(), buf.len());
        result
    }
    fn reads_within(&self) -> bool {
        self.inner.reads_within()
    }
    /// The p99 of this position's reads, once 100 were seen (the bucket's upper bound).
    fn read_p99(&self) -> Option<Duration> {
        self.io
            .read_latency
            .quantile_bound(0.99, 100)
            .or_else(|| self.inner.read_p99())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        let started = Instant::now();
        let result = self.inner.write_at(offset, buf);
        self.io.write_latency.observe(started.elapsed());
        self.io.writes.fetch_add(1, Ordering::Relaxed);
        if result.is_ok() {
            self.io
                .write_bytes
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        result
    }
    fn flush(&self) -> Result<(), DeviceError> {
        self.io.flushes.fetch_add(1, Ordering::Relaxed);
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
    fn io_backend(&self) -> &'static str {
        self.inner.io_backend()
    }
    fn is_unreachable(&self) -> bool {
        self.inner.is_unreachable()
    }
    // Observing only: batched io_uring requests go to the inner device and are counted here.
    fn as_uring(&self) -> Option<&super::UringDevice> {
        self.inner.as_uring()
    }
    fn flushed_together(&self) {
        self.io.flushes.fetch_add(1, Ordering::Relaxed);
    }
    fn batched(&self, request: super::Batched) {
        let (latency, count, bytes) = if request.write {
            (
                &self.io.write_latency,
                &self.io.writes,
                &self.io.write_bytes,
            )
        } else {
            (&self.io.read_latency, &self.io.reads, &self.io.read_bytes)
        };
        latency.observe(request.latency);
        count.fetch_add(1, Ordering::Relaxed);
        if request.ok {
            bytes.fetch_add(request.bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_each_observation_in_its_bucket() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(5));
        let buckets = h.buckets();
        assert_eq!(buckets[0], 1, "<= 50 µs");
        assert_eq!(buckets[4], 1, "<= 1 ms");
        assert_eq!(buckets[BUCKETS_SECS.len()], 1, "+Inf");
        assert_eq!(h.count(), 3);
        assert!((h.sum_secs() - 5.000_71).abs() < 1e-9, "{}", h.sum_secs());
        assert_eq!(h.quantile_bound(0.5, 4), None, "too few");
        assert_eq!(
            h.quantile_bound(0.3, 1),
            Some(Duration::from_secs_f64(0.000_05))
        );
        assert_eq!(
            h.quantile_bound(0.6, 1),
            Some(Duration::from_secs_f64(0.001))
        );
        assert_eq!(h.quantile_bound(0.99, 1), None, "above every bound");
    }
}
