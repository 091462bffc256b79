//! Monitoring: counters and latency histograms kept by the pool, rendered in the Prometheus text
//! exposition format (version 0.0.4), and a minimal HTTP endpoint that serves them.
//!
//! Everything is lock-free atomics updated on the I/O path (a few relaxed adds per request), so
//! metrics cost nothing measurable and need no background thread. Rendering takes a status
//! snapshot; a scrape does no device I/O.

pub mod http;

pub use http::{MetricsServer, Request as HttpRequest, Response as HttpResponse};

use crate::device::{Device, DeviceError, SharedDevice};
use crate::pool::{PoolHealth, PoolStatus};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Upper bounds of the latency buckets, in seconds (50 µs .. 2.5 s, then +Inf): from a page-cache
/// hit to a disk that is dying slowly.
const BUCKETS_SECS: [f64; 15] = [
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

    /// `_bucket`, `_sum` and `_count` lines for one label set.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = BUCKETS_SECS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{}le=\"{le}\"}} {cumulative}",
                if labels.is_empty() { "" } else { "," }
            );
        }
        #[allow(clippy::cast_precision_loss)]
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
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

impl Device for Metered {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let started = Instant::now();
        let result = self.inner.read_at(offset, buf);
        self.io.read_latency.observe(started.elapsed());
        self.io.reads.fetch_add(1, Ordering::Relaxed);
        if result.is_ok() {
            self.io
                .read_bytes
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        result
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
    // Observing only: batched io_uring requests go to the inner device and are counted here.
    fn as_uring(&self) -> Option<&crate::device::UringDevice> {
        self.inner.as_uring()
    }
    fn batched(&self, request: crate::device::Batched) {
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
        let (histogram, counter, failed) = match request {
            Request::Read => (&self.read, Some(&self.read_bytes), &self.failed[0]),
            Request::Write => (&self.write, Some(&self.written_bytes), &self.failed[1]),
            Request::Flush => (&self.flush, None, &self.failed[2]),
        };
        histogram.observe(started.elapsed());
        match (&result, counter) {
            (Ok(_), Some(counter)) => {
                counter.fetch_add(bytes as u64, Ordering::Relaxed);
            }
            (Ok(_), None) => {}
            (Err(_), _) => {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }
}

/// Escape a label value (backslash, quote, newline), as the exposition format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes `# HELP` / `# TYPE` once per metric family, then samples.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }
    /// A family with one sample per device.
    fn per_device(&mut self, name: &str, kind: &str, help: &str, devices: &[(String, u64)]) {
        self.family(name, kind, help);
        for (labels, value) in devices {
            self.sample(name, labels, value);
        }
    }
}

/// Render the pool's metrics in the Prometheus text format.
#[must_use]
pub fn render(
    status: &PoolStatus,
    devices: &[(String, Arc<DeviceIo>)],
    requests: &RequestMetrics,
) -> String {
    let mut e = Exposition { out: String::new() };
    let pool = format!("pool=\"{}\"", label(&status.pool));

    e.family(
        "stripestore_pool_state",
        "gauge",
        "1 for the pool's current state (online, degraded, faulted), 0 for the others.",
    );
    for (state, health) in [
        ("online", PoolHealth::Online),
        ("degraded", PoolHealth::Degraded),
        ("faulted", PoolHealth::Faulted),
    ] {
        e.sample(
            "stripestore_pool_state",
            &format!(
                "{pool},layout=\"{}\",state=\"{state}\"",
                label(&status.layout)
            ),
            u8::from(status.health == health),
        );
    }
    e.family(
        "stripestore_pool_remaining_tolerance",
        "gauge",
        "Further device losses the pool survives now.",
    );
    e.sample(
        "stripestore_pool_remaining_tolerance",
        &pool,
        status.remaining_tolerance,
    );
    e.family(
        "stripestore_volume_bytes",
        "gauge",
        "Size of the logical volume.",
    );
    e.sample("stripestore_volume_bytes", &pool, status.volume_bytes);
    e.family(
        "stripestore_allocated_bytes",
        "gauge",
        "Bytes of the volume that hold written stripes.",
    );
    e.sample("stripestore_allocated_bytes", &pool, status.allocated_bytes);

    // Per device: state and error counters from the status, I/O from the meters.
    let device_labels = |d: &crate::pool::DeviceStatus| {
        format!(
            "{pool},device=\"{}\",index=\"{}\"",
            label(&d.path),
            d.index
                .map_or_else(|| "spare".to_string(), |i| i.to_string())
        )
    };
    let members: Vec<&crate::pool::DeviceStatus> = status
        .devices
        .iter()
        .filter(|d| d.replacing.is_none())
        .collect();
    let column = |f: &dyn Fn(&crate::pool::DeviceStatus) -> u64| -> Vec<(String, u64)> {
        members.iter().map(|d| (device_labels(d), f(d))).collect()
    };
    e.per_device(
        "stripestore_device_online",
        "gauge",
        "1 if the device is in service.",
        &column(&|d| u64::from(d.state == "ONLINE" || d.state == "DEGRADED")),
    );
    e.per_device(
        "stripestore_device_degraded",
        "gauge",
        "1 if the device is in service but marked DEGRADED (too many errors within the window).",
        &column(&|d| u64::from(d.state == "DEGRADED")),
    );
    e.family(
        "stripestore_device_errors_total",
        "counter",
        "Device errors since the pool was opened, by kind.",
    );
    for d in &members {
        for (kind, value) in [
            ("read", d.read_errors),
            ("write", d.write_errors),
            ("checksum", d.checksum_errors),
        ] {
            e.sample(
                "stripestore_device_errors_total",
                &format!("{},kind=\"{kind}\"", device_labels(d)),
                value,
            );
        }
    }
    e.per_device(
        "stripestore_device_repaired_chunks_total",
        "counter",
        "Chunks rewritten with reconstructed content (self-heal and scrub).",
        &column(&|d| d.repaired_chunks),
    );
    let io_labels =
        |name: &str, i: usize| format!("{pool},device=\"{}\",index=\"{i}\"", label(name));
    let io_column = |f: &dyn Fn(&DeviceIo) -> u64| -> Vec<(String, u64)> {
        devices
            .iter()
            .enumerate()
            .map(|(i, (name, io))| (io_labels(name, i), f(io)))
            .collect()
    };
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    e.per_device(
        "stripestore_device_read_requests_total",
        "counter",
        "Read requests sent to the device.",
        &io_column(&|io| load(&io.reads)),
    );
    e.per_device(
        "stripestore_device_read_bytes_total",
        "counter",
        "Bytes read from the device.",
        &io_column(&|io| load(&io.read_bytes)),
    );
    e.per_device(
        "stripestore_device_write_requests_total",
        "counter",
        "Write requests sent to the device.",
        &io_column(&|io| load(&io.writes)),
    );
    e.per_device(
        "stripestore_device_written_bytes_total",
        "counter",
        "Bytes written to the device.",
        &io_column(&|io| load(&io.write_bytes)),
    );
    e.per_device(
        "stripestore_device_flushes_total",
        "counter",
        "Flushes sent to the device.",
        &io_column(&|io| load(&io.flushes)),
    );
    e.family(
        "stripestore_device_read_duration_seconds",
        "histogram",
        "Latency of device reads.",
    );
    for (i, (name, io)) in devices.iter().enumerate() {
        io.read_latency.render(
            &mut e.out,
            "stripestore_device_read_duration_seconds",
            &io_labels(name, i),
        );
    }
    e.family(
        "stripestore_device_write_duration_seconds",
        "histogram",
        "Latency of device writes.",
    );
    for (i, (name, io)) in devices.iter().enumerate() {
        io.write_latency.render(
            &mut e.out,
            "stripestore_device_write_duration_seconds",
            &io_labels(name, i),
        );
    }

    // Requests to the volume.
    e.family(
        "stripestore_read_bytes_total",
        "counter",
        "Bytes returned by volume reads.",
    );
    e.sample(
        "stripestore_read_bytes_total",
        &pool,
        load(&requests.read_bytes),
    );
    e.family(
        "stripestore_written_bytes_total",
        "counter",
        "Bytes accepted by volume writes.",
    );
    e.sample(
        "stripestore_written_bytes_total",
        &pool,
        load(&requests.written_bytes),
    );
    e.family(
        "stripestore_request_failures_total",
        "counter",
        "Volume requests that returned an error.",
    );
    for (i, op) in ["read", "write", "flush"].iter().enumerate() {
        e.sample(
            "stripestore_request_failures_total",
            &format!("{pool},op=\"{op}\""),
            load(&requests.failed[i]),
        );
    }
    e.family(
        "stripestore_request_duration_seconds",
        "histogram",
        "Latency of volume requests.",
    );
    for (op, histogram) in [
        ("read", &requests.read),
        ("write", &requests.write),
        ("flush", &requests.flush),
    ] {
        histogram.render(
            &mut e.out,
            "stripestore_request_duration_seconds",
            &format!("{pool},op=\"{op}\""),
        );
    }
    e.family(
        "stripestore_checksum_repairs_total",
        "counter",
        "Chunks healed from redundancy since the pool was opened.",
    );
    e.sample(
        "stripestore_checksum_repairs_total",
        &pool,
        status.total_repaired(),
    );

    // Rebuild and scrub.
    e.family(
        "stripestore_rebuild_done_bytes",
        "gauge",
        "Bytes written by each running rebuild.",
    );
    for r in &status.rebuilds {
        e.sample(
            "stripestore_rebuild_done_bytes",
            &format!(
                "{pool},index=\"{}\",device=\"{}\"",
                r.index,
                label(&r.device)
            ),
            r.done_bytes,
        );
    }
    e.family(
        "stripestore_rebuild_total_bytes",
        "gauge",
        "Bytes each running rebuild has to write.",
    );
    for r in &status.rebuilds {
        e.sample(
            "stripestore_rebuild_total_bytes",
            &format!(
                "{pool},index=\"{}\",device=\"{}\"",
                r.index,
                label(&r.device)
            ),
            r.total_bytes,
        );
    }
    e.family(
        "stripestore_scrub_running",
        "gauge",
        "1 while a scrub runs in this process.",
    );
    e.sample(
        "stripestore_scrub_running",
        &pool,
        u8::from(status.scrub.as_ref().is_some_and(|s| s.running)),
    );
    e.family(
        "stripestore_scrub_scanned_bytes",
        "gauge",
        "Bytes verified by the current (or interrupted) scrub.",
    );
    e.sample(
        "stripestore_scrub_scanned_bytes",
        &pool,
        status.scrub.as_ref().map_or(0, |s| s.scanned_bytes),
    );
    e.family(
        "stripestore_scrub_total_bytes",
        "gauge",
        "Bytes the current (or interrupted) scrub has to verify.",
    );
    e.sample(
        "stripestore_scrub_total_bytes",
        &pool,
        status.scrub.as_ref().map_or(0, |s| s.total_bytes),
    );
    if let Some(last) = &status.last_scrub {
        let totals = last.tally.totals();
        e.family(
            "stripestore_last_scrub_end_timestamp_seconds",
            "gauge",
            "When the last scrub finished (Unix time).",
        );
        e.sample(
            "stripestore_last_scrub_end_timestamp_seconds",
            &pool,
            last.finished_unix_secs,
        );
        e.family(
            "stripestore_last_scrub_errors",
            "gauge",
            "Damaged chunks the last scrub found.",
        );
        e.sample(
            "stripestore_last_scrub_errors",
            &pool,
            totals.checksum_errors + totals.io_errors,
        );
        e.family(
            "stripestore_last_scrub_repaired_chunks",
            "gauge",
            "Chunks the last scrub repaired.",
        );
        e.sample(
            "stripestore_last_scrub_repaired_chunks",
            &pool,
            totals.repaired,
        );
        e.family(
            "stripestore_last_scrub_unrepairable_stripes",
            "gauge",
            "Stripes the last scrub could not reconstruct.",
        );
        e.sample(
            "stripestore_last_scrub_unrepairable_stripes",
            &pool,
            last.tally.unrepairable_stripes,
        );
    }
    e.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(5));
        let mut out = String::new();
        h.render(&mut out, "x", "op=\"read\"");
        assert!(
            out.contains("x_bucket{op=\"read\",le=\"0.00005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{op=\"read\",le=\"0.001\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{op=\"read\",le=\"2.5\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{op=\"read\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_count{op=\"read\"} 3\n"), "{out}");
        assert!(out.contains("x_sum{op=\"read\"} 5.00071\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
