//! The pool's metrics in the Prometheus text exposition format (version 0.0.4): what
//! `GET /metrics` and `stripestore metrics` print.
//!
//! Owns: metric names, HELP/TYPE lines, labels and their escaping. Reads only what the public
//! `Pool` API gives (a [`PoolStatus`] snapshot, `Pool::device_io`, `Pool::request_metrics`); a
//! scrape does no device I/O. Must not touch: pool internals, HTTP (`server.rs`), the counters
//! themselves (the pool and `crate::device::metered` keep them).
//!
//! Why not the `prometheus-client` crate: measured with prometheus-client 0.24.1 on these
//! families, it cannot write this exposition unchanged. (1) It writes OpenMetrics: a counter
//! registered as `x` gets `# TYPE x counter` and samples `x_total`, one registered as `x_total`
//! gets samples `x_total_total`, so the HELP/TYPE lines of all 11 counter families here would
//! change (and served as `text/plain; version=0.0.4`, Prometheus would then see those samples
//! untyped). (2) It writes label values unescaped: a device path `a"b\c<newline>d` came out
//! verbatim, an exposition no parser accepts. (3) Its bucket bounds are printed by `dtoa`: the
//! `le="1"` bucket of each of the 2 + 2 × devices histograms becomes `le="1.0"`, a different
//! series. (4) It appends a period to every HELP text. (5) Its `Histogram` takes a lock per
//! observation, while these are counted with relaxed atomics on the I/O path. Working around
//! (1)-(4) would mean custom encoders for every family, more code than this writer, which only
//! writes (it parses nothing untrusted).

use crate::device::{DeviceIo, Histogram, BUCKETS_SECS};
use crate::pool::{DeviceStatus, PoolHealth, PoolStatus, RequestMetrics, RetiredDevice};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Escape a label value (backslash, quote, newline), as the exposition format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Writes `# HELP` / `# TYPE` once per metric family, then samples.
struct Exposition {
    out: String,
    /// `pool="<uuid>"`, the label every sample carries.
    pool: String,
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

    /// A family with one sample, labelled with the pool only.
    fn pool_gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, "gauge", help);
        let pool = self.pool.clone();
        self.sample(name, &pool, value);
    }

    /// A family with one sample per label set.
    fn column(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
        self.family(name, kind, help);
        for (labels, value) in samples {
            self.sample(name, labels, value);
        }
    }

    /// `_bucket` (cumulative, ending with +Inf), `_sum` and `_count` lines for one label set.
    fn histogram(&mut self, name: &str, labels: &str, histogram: &Histogram) {
        let mut cumulative = 0;
        for (i, count) in histogram.buckets().iter().enumerate() {
            cumulative += count;
            let le = BUCKETS_SECS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                self.out,
                "{name}_bucket{{{labels}{}le=\"{le}\"}} {cumulative}",
                if labels.is_empty() { "" } else { "," }
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(self.out, "{name}_sum{braces} {}", histogram.sum_secs());
        let _ = writeln!(self.out, "{name}_count{braces} {cumulative}");
    }
}

/// Render the pool's metrics in the Prometheus text format: `status` a snapshot, `devices` the
/// per-position I/O counters (`Pool::device_io`), `requests` the volume's request counters.
#[must_use]
pub fn render(
    status: &PoolStatus,
    devices: &[(String, Arc<DeviceIo>)],
    requests: &RequestMetrics,
) -> String {
    let mut e = Exposition {
        out: String::new(),
        pool: format!("pool=\"{}\"", label(&status.pool)),
    };
    pool_families(&mut e, status);
    device_state_families(&mut e, status);
    pool_counter_families(&mut e, status);
    device_io_families(&mut e, devices, &status.retired);
    request_families(&mut e, status, requests);
    rebuild_families(&mut e, status);
    scrub_families(&mut e, status);
    recovery_point_families(&mut e, status);
    e.out
}

/// Recovery points (format version 4 only): how many, how many held, and when the newest
/// was taken (only when there is one).
fn recovery_point_families(e: &mut Exposition, status: &PoolStatus) {
    let Some(points) = &status.recovery_points else {
        return;
    };
    e.pool_gauge(
        "stripestore_recovery_points",
        "Recovery points (snapshots) the pool keeps.",
        points.count,
    );
    e.pool_gauge(
        "stripestore_recovery_points_held",
        "Recovery points with a hold (not deleted until released).",
        points.held,
    );
    e.pool_gauge(
        "stripestore_recovery_points_deleting",
        "Recovery points being deleted whose space has not all come back (the reclaim backlog).",
        points.deleting.len(),
    );
    if let Some(bytes) = points.held_data_bytes {
        e.pool_gauge(
            "stripestore_recovery_points_held_data_bytes",
            "Data the recovery points hold (and deletes have not yet given back) beyond what \
             the live volume names.",
            bytes,
        );
    }
    if let Some(created) = points.newest_created {
        e.pool_gauge(
            "stripestore_recovery_point_newest_timestamp_seconds",
            "When the newest recovery point was taken (Unix time).",
            created,
        );
    }
}

/// The pool as a whole: state, tolerance, sizes.
fn pool_families(e: &mut Exposition, status: &PoolStatus) {
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
        let labels = format!(
            "{},layout=\"{}\",state=\"{state}\"",
            e.pool,
            label(&status.layout)
        );
        e.sample(
            "stripestore_pool_state",
            &labels,
            u8::from(status.health == health),
        );
    }
    e.pool_gauge(
        "stripestore_pool_remaining_tolerance",
        "Further device losses the pool survives now.",
        status.remaining_tolerance,
    );
    e.pool_gauge(
        "stripestore_volume_bytes",
        "Size of the logical volume.",
        status.volume_bytes,
    );
    e.pool_gauge(
        "stripestore_allocated_bytes",
        "Bytes of the volume that hold written stripes.",
        status.allocated_bytes,
    );
}

/// Per member (replacements being rebuilt are left out): state and error counters, from the
/// status.
fn device_state_families(e: &mut Exposition, status: &PoolStatus) {
    let pool = e.pool.clone();
    let device_labels = |d: &DeviceStatus| {
        format!(
            "{pool},device=\"{}\",index=\"{}\"",
            label(&d.path),
            d.index
                .map_or_else(|| "spare".to_string(), |i| i.to_string())
        )
    };
    let members: Vec<&DeviceStatus> = status
        .devices
        .iter()
        .filter(|d| d.replacing.is_none())
        .collect();
    let column = |f: &dyn Fn(&DeviceStatus) -> u64| -> Vec<(String, u64)> {
        members.iter().map(|d| (device_labels(d), f(d))).collect()
    };
    e.column(
        "stripestore_device_online",
        "gauge",
        "1 if the device is in service.",
        &column(&|d| u64::from(d.state == "ONLINE" || d.state == "DEGRADED")),
    );
    e.column(
        "stripestore_device_degraded",
        "gauge",
        "1 if the device is in service but marked DEGRADED (too many errors within the window).",
        &column(&|d| u64::from(d.state == "DEGRADED")),
    );
    e.column(
        "stripestore_device_unavailable",
        "gauge",
        "1 if the device stopped answering and is expected back (UNAVAILABLE, or RESYNCING: \
         being given what changed while it was away).",
        &column(&|d| u64::from(d.state == "UNAVAILABLE" || d.state == "RESYNCING")),
    );
    e.column(
        "stripestore_device_away_seconds",
        "gauge",
        "Seconds since an UNAVAILABLE or RESYNCING device stopped answering (0 otherwise).",
        &column(&|d| d.away_secs.unwrap_or(0)),
    );
    e.column(
        "stripestore_device_grace_left_seconds",
        "gauge",
        "Seconds before an UNAVAILABLE device is faulted and replaced if it does not return \
         (0 otherwise).",
        &column(&|d| d.grace_left_secs.unwrap_or(0)),
    );
    // Counters per device: the members', plus those of devices swapped out of a position in
    // this process (a device replaced keeps its series at its last value; one that comes back
    // at the same path and position continues from there), so no series goes down.
    let mut counted: Vec<(String, [u64; 4])> = members
        .iter()
        .map(|d| {
            (
                device_labels(d),
                [
                    d.read_errors,
                    d.write_errors,
                    d.checksum_errors,
                    d.repaired_chunks,
                ],
            )
        })
        .collect();
    for r in &status.retired {
        let labels = format!("{pool},device=\"{}\",index=\"{}\"", label(&r.path), r.index);
        let values = [
            r.read_errors,
            r.write_errors,
            r.checksum_errors,
            r.repaired_chunks,
        ];
        match counted.iter_mut().find(|(l, _)| *l == labels) {
            Some((_, sum)) => {
                for (total, value) in sum.iter_mut().zip(values) {
                    *total += value;
                }
            }
            None => counted.push((labels, values)),
        }
    }
    let errors: Vec<(String, u64)> = counted
        .iter()
        .flat_map(|(labels, values)| {
            ["read", "write", "checksum"]
                .into_iter()
                .zip(*values)
                .map(move |(kind, value)| (format!("{labels},kind=\"{kind}\""), value))
        })
        .collect();
    e.column(
        "stripestore_device_errors_total",
        "counter",
        "Device errors seen by this process, by kind (a replaced device's series stays at its last value).",
        &errors,
    );
    let repaired: Vec<(String, u64)> = counted
        .iter()
        .map(|(labels, values)| (labels.clone(), values[3]))
        .collect();
    e.column(
        "stripestore_device_repaired_chunks_total",
        "counter",
        "Chunks rewritten with reconstructed content (self-heal and scrub).",
        &repaired,
    );
}

/// The pool's cumulative counters: persisted in its superblocks, so they continue across
/// restarts and never go down when a member is replaced.
fn pool_counter_families(e: &mut Exposition, status: &PoolStatus) {
    let pool = e.pool.clone();
    let c = &status.counters;
    e.column(
        "stripestore_pool_errors_total",
        "counter",
        "Device errors of the pool's members since the pool was created, by kind (persisted; increments since the last superblock write are lost in a crash).",
        &[
            (format!("{pool},kind=\"read\""), c.read_errors),
            (format!("{pool},kind=\"write\""), c.write_errors),
            (format!("{pool},kind=\"checksum\""), c.checksum_errors),
        ],
    );
    e.column(
        "stripestore_pool_rebuilt_bytes_total",
        "counter",
        "Bytes written onto replacements by rebuilds since the pool was created (persisted).",
        &[(pool.clone(), c.rebuilt_bytes)],
    );
    e.column(
        "stripestore_pool_scrubs_total",
        "counter",
        "Scrubs finished since the pool was created (persisted).",
        &[(pool, c.scrubs)],
    );
}

/// Per data position: requests, bytes and latency of whichever device serves it.
///
/// A position's counters continue across a replacement under the new device's label; the
/// replaced device's series stays at its value when it left (`retired`), so no series goes
/// down. (Latency histograms are not kept for replaced devices.)
fn device_io_families(
    e: &mut Exposition,
    devices: &[(String, Arc<DeviceIo>)],
    retired: &[RetiredDevice],
) {
    let labels: Vec<String> = devices
        .iter()
        .enumerate()
        .map(|(i, (name, _))| format!("{},device=\"{}\",index=\"{i}\"", e.pool, label(name)))
        .collect();
    let mut gone: Vec<(String, &RetiredDevice)> = Vec::new();
    for r in retired {
        let key = format!(
            "{},device=\"{}\",index=\"{}\"",
            e.pool,
            label(&r.path),
            r.index
        );
        if !labels.contains(&key) {
            // The last time it left counts (the counters only grew meanwhile).
            gone.retain(|(k, _)| *k != key);
            gone.push((key, r));
        }
    }
    let column = |f: &dyn Fn(&DeviceIo) -> u64, g: &dyn Fn(&RetiredDevice) -> u64| {
        labels
            .iter()
            .zip(devices)
            .map(|(labels, (_, io))| (labels.clone(), f(io)))
            .chain(gone.iter().map(|(key, r)| (key.clone(), g(r))))
            .collect::<Vec<(String, u64)>>()
    };
    type Live = fn(&DeviceIo) -> u64;
    type Gone = fn(&RetiredDevice) -> u64;
    for (name, help, counter, retired) in [
        (
            "stripestore_device_read_requests_total",
            "Read requests sent to the device.",
            (|io: &DeviceIo| load(&io.reads)) as Live,
            (|r: &RetiredDevice| r.reads) as Gone,
        ),
        (
            "stripestore_device_read_bytes_total",
            "Bytes read from the device.",
            |io| load(&io.read_bytes),
            |r| r.read_bytes,
        ),
        (
            "stripestore_device_late_reads_total",
            "Hedged reads of the device given up on as late (answered from the rest of the row; not errors).",
            |io| load(&io.late_reads),
            |r| r.late_reads,
        ),
        (
            "stripestore_device_write_requests_total",
            "Write requests sent to the device.",
            |io| load(&io.writes),
            |r| r.writes,
        ),
        (
            "stripestore_device_written_bytes_total",
            "Bytes written to the device.",
            |io| load(&io.write_bytes),
            |r| r.write_bytes,
        ),
        (
            "stripestore_device_flushes_total",
            "Flushes sent to the device.",
            |io| load(&io.flushes),
            |r| r.flushes,
        ),
    ] {
        e.column(name, "counter", help, &column(&counter, &retired));
    }
    for (name, help, histogram) in [
        (
            "stripestore_device_read_duration_seconds",
            "Latency of device reads.",
            (|io: &DeviceIo| &io.read_latency) as fn(&DeviceIo) -> &Histogram,
        ),
        (
            "stripestore_device_write_duration_seconds",
            "Latency of device writes.",
            |io| &io.write_latency,
        ),
    ] {
        e.family(name, "histogram", help);
        for (labels, (_, io)) in labels.iter().zip(devices) {
            e.histogram(name, labels, histogram(io));
        }
    }
}

/// Requests made to the volume, and the repairs they caused.
fn request_families(e: &mut Exposition, status: &PoolStatus, requests: &RequestMetrics) {
    let pool = e.pool.clone();
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
        "stripestore_flush_commits_total",
        "counter",
        "Commits run for flushes; fewer than the flushes when flushes arriving together share one.",
    );
    e.sample(
        "stripestore_flush_commits_total",
        &pool,
        load(&requests.flush_commits),
    );
    let failures: Vec<(String, u64)> = ["read", "write", "flush"]
        .iter()
        .zip(&requests.failed)
        .map(|(op, failed)| (format!("{pool},op=\"{op}\""), load(failed)))
        .collect();
    e.column(
        "stripestore_request_failures_total",
        "counter",
        "Volume requests that returned an error.",
        &failures,
    );
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
        e.histogram(
            "stripestore_request_duration_seconds",
            &format!("{pool},op=\"{op}\""),
            histogram,
        );
    }
    e.family(
        "stripestore_checksum_repairs_total",
        "counter",
        "Chunks healed from redundancy (self-heal and scrub) since the pool was created (persisted in the superblocks; never goes down when a member is replaced).",
    );
    e.sample(
        "stripestore_checksum_repairs_total",
        &pool,
        status.counters.repaired_chunks,
    );
}

/// Running rebuilds, one sample each.
fn rebuild_families(e: &mut Exposition, status: &PoolStatus) {
    let labels: Vec<String> = status
        .rebuilds
        .iter()
        .map(|r| {
            format!(
                "{},index=\"{}\",device=\"{}\"",
                e.pool,
                r.index,
                label(&r.device)
            )
        })
        .collect();
    let column = |f: &dyn Fn(&crate::pool::RebuildProgress) -> u64| -> Vec<(String, u64)> {
        labels
            .iter()
            .zip(&status.rebuilds)
            .map(|(labels, r)| (labels.clone(), f(r)))
            .collect()
    };
    e.column(
        "stripestore_rebuild_done_bytes",
        "gauge",
        "Bytes written by each running rebuild.",
        &column(&|r| r.done_bytes),
    );
    e.column(
        "stripestore_rebuild_total_bytes",
        "gauge",
        "Bytes each running rebuild has to write.",
        &column(&|r| r.total_bytes),
    );
}

/// The current scrub, and the last one's result once there is one.
fn scrub_families(e: &mut Exposition, status: &PoolStatus) {
    e.pool_gauge(
        "stripestore_scrub_running",
        "1 while a scrub runs in this process.",
        u8::from(status.scrub.as_ref().is_some_and(|s| s.running)),
    );
    e.pool_gauge(
        "stripestore_scrub_scanned_bytes",
        "Bytes verified by the current (or interrupted) scrub.",
        status.scrub.as_ref().map_or(0, |s| s.scanned_bytes),
    );
    e.pool_gauge(
        "stripestore_scrub_total_bytes",
        "Bytes the current (or interrupted) scrub has to verify.",
        status.scrub.as_ref().map_or(0, |s| s.total_bytes),
    );
    let Some(last) = &status.last_scrub else {
        return;
    };
    let totals = last.tally.totals();
    e.pool_gauge(
        "stripestore_last_scrub_end_timestamp_seconds",
        "When the last scrub finished (Unix time).",
        last.finished_unix_secs,
    );
    e.pool_gauge(
        "stripestore_last_scrub_errors",
        "Damaged chunks the last scrub found.",
        totals.checksum_errors + totals.io_errors,
    );
    e.pool_gauge(
        "stripestore_last_scrub_repaired_chunks",
        "Chunks the last scrub repaired.",
        totals.repaired,
    );
    e.pool_gauge(
        "stripestore_last_scrub_unrepairable_stripes",
        "Stripes the last scrub could not reconstruct.",
        last.tally.unrepairable_stripes,
    );
    e.pool_gauge(
        "stripestore_last_scrub_segments_skipped",
        "Format version 4: allocated segments the last scrub did not check, taken again or freed after its pass began (0 on version 3).",
        last.tally.segments_skipped,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(5));
        let mut e = Exposition {
            out: String::new(),
            pool: String::new(),
        };
        e.histogram("x", "op=\"read\"", &h);
        let out = e.out;
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
