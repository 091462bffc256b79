//! `status`: a snapshot of health, devices and counters, printable like `zpool status` and
//! serialisable as JSON.

use super::PoolInner;
use crate::types::{human_bytes, utc_time};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::Ordering;

/// Overall health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PoolHealth {
    /// Every data member online.
    Online,
    /// Some members lost, data still fully available.
    Degraded,
    /// More members lost than the layout tolerates: some data cannot be read.
    Faulted,
}

/// One device's line in the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Layout position (`None` for a spare).
    pub index: Option<usize>,
    /// Last known path.
    pub path: String,
    /// Device UUID.
    pub uuid: String,
    /// `ONLINE`, `DEGRADED` (in service, but too many errors: see the fault policy),
    /// `FAULTED`, `OFFLINE` (taken out on purpose), `REBUILDING`, or for spares `AVAIL` /
    /// `FAULTED`.
    pub state: String,
    /// Why it is faulted, offline or degraded.
    pub reason: Option<String>,
    /// Read I/O errors.
    pub read_errors: u64,
    /// Write/flush errors.
    pub write_errors: u64,
    /// Checksum mismatches.
    pub checksum_errors: u64,
    /// Chunks healed on this device.
    pub repaired_chunks: u64,
    /// For a device being rebuilt: the device it replaces.
    pub replacing: Option<String>,
}

/// A snapshot of the pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Pool UUID.
    pub pool: String,
    /// Health.
    pub health: PoolHealth,
    /// Layout.
    pub layout: String,
    /// Volume size.
    pub volume_bytes: u64,
    /// Bytes of the volume that have been written (stripe granularity).
    pub allocated_bytes: u64,
    /// Chunk size.
    pub chunk_bytes: u64,
    /// Checksum block size (what one crc32c covers).
    pub checksum_bytes: u64,
    /// Device losses the layout tolerates.
    pub tolerance: usize,
    /// Further device losses the pool survives in its current state (0: redundancy exhausted).
    pub remaining_tolerance: usize,
    /// Last durable commit sequence.
    pub commit_sequence: u64,
    /// Superblock generation.
    pub superblock_generation: u64,
    /// Data members.
    pub devices: Vec<DeviceStatus>,
    /// Spares.
    pub spares: Vec<DeviceStatus>,
    /// Rebuilds in progress.
    pub rebuilds: Vec<super::RebuildProgress>,
    /// I/O backends of the members in service (`io_uring+O_DIRECT`, `io_uring`, `pread`, ...).
    pub io_backend: String,
    /// A scrub running, paused or interrupted.
    pub scrub: Option<super::ScrubProgress>,
    /// The last scrub that finished or was canceled.
    pub last_scrub: Option<crate::format::ScrubSummary>,
}

impl PoolStatus {
    /// Sum of checksum errors over all devices.
    #[must_use]
    pub fn total_checksum_errors(&self) -> u64 {
        self.devices.iter().map(|d| d.checksum_errors).sum()
    }
    /// Sum of healed chunks over all devices.
    #[must_use]
    pub fn total_repaired(&self) -> u64 {
        self.devices.iter().map(|d| d.repaired_chunks).sum()
    }
}

impl PoolInner {
    pub(crate) fn status(&self) -> PoolStatus {
        let counters = |errors: Option<&super::ErrorCounters>| {
            let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            errors.map_or((0, 0, 0, 0), |e| {
                (
                    load(&e.read),
                    load(&e.write),
                    load(&e.checksum),
                    load(&e.repaired),
                )
            })
        };
        let mut devices = Vec::new();
        for member in &self.members.data {
            let identity = member.identity();
            let (state, reason) = match (member.fault_reason(), member.degraded_reason()) {
                (Some(reason), _) if reason == super::admin::OFFLINE_REASON => {
                    ("OFFLINE", Some(reason))
                }
                (Some(reason), _) => ("FAULTED", Some(reason)),
                // In service, but with too many errors: shown until `clear` or replacement.
                (None, Some(reason)) => ("DEGRADED", Some(reason)),
                // In service; errors it returned (and were healed) show in its counters.
                (None, None) => ("ONLINE", None),
            };
            let (read_errors, write_errors, checksum_errors, repaired_chunks) =
                counters(Some(&member.errors));
            devices.push(DeviceStatus {
                index: Some(member.index.0),
                path: identity.path,
                uuid: identity.uuid.to_string(),
                state: state.to_string(),
                reason,
                read_errors,
                write_errors,
                checksum_errors,
                repaired_chunks,
                replacing: None,
            });
            if let Some(replacement) = member.replacement() {
                devices.push(DeviceStatus {
                    index: Some(member.index.0),
                    path: replacement.identity.path.clone(),
                    uuid: replacement.identity.uuid.to_string(),
                    state: "REBUILDING".to_string(),
                    reason: None,
                    read_errors: 0,
                    write_errors: 0,
                    checksum_errors: 0,
                    repaired_chunks: 0,
                    replacing: Some(member.path()),
                });
            }
        }
        let health = if self.check_available().is_err() {
            PoolHealth::Faulted
        } else if self
            .members
            .data
            .iter()
            .any(|m| !m.is_online() || m.degraded_reason().is_some())
        {
            PoolHealth::Degraded
        } else {
            PoolHealth::Online
        };
        let spares = self
            .members
            .spares()
            .into_iter()
            .map(|spare| DeviceStatus {
                index: None,
                path: spare.identity.path,
                uuid: spare.identity.uuid.to_string(),
                state: if spare.fault.is_some() {
                    "FAULTED"
                } else {
                    "AVAIL"
                }
                .to_string(),
                reason: spare.fault,
                read_errors: 0,
                write_errors: 0,
                checksum_errors: 0,
                repaired_chunks: 0,
                replacing: None,
            })
            .collect();
        let written = self.map.lock().map.written_stripes().count() as u64;
        PoolStatus {
            pool: self.uuid.to_string(),
            health,
            layout: self.geometry.layout.to_string(),
            volume_bytes: self.geometry.volume_bytes(),
            allocated_bytes: written * self.geometry.stripe_data_bytes(),
            chunk_bytes: self.geometry.chunk_bytes,
            checksum_bytes: self.geometry.checksum_bytes,
            tolerance: self.geometry.tolerance(),
            remaining_tolerance: self.remaining_tolerance(),
            commit_sequence: self.meta.lock().sequence,
            superblock_generation: self.members.generation(),
            devices,
            spares,
            rebuilds: self.rebuild_progress(),
            io_backend: self.io_backends(),
            scrub: self
                .scrub
                .live_progress()
                .or_else(|| self.recorded_scrub_progress()),
            last_scrub: self.members.scrub_record().last,
        }
    }
}

impl fmt::Display for PoolHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolHealth::Online => "ONLINE",
            PoolHealth::Degraded => "DEGRADED",
            PoolHealth::Faulted => "FAULTED",
        })
    }
}

impl fmt::Display for PoolStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  pool: {}", self.pool)?;
        writeln!(f, " state: {}", self.health)?;
        let note = match self.health {
            PoolHealth::Online => "all devices online; data fully redundant.".to_string(),
            PoolHealth::Degraded => "one or more devices are faulted, offline or degraded; reads reconstruct from redundancy. Replace a faulted device (`replace`), bring an offline one back (`online`), and `clear` a degraded one once its cause is fixed (or replace it).".to_string(),
            PoolHealth::Faulted => format!("more devices lost than {} tolerates ({}); affected data cannot be read.", self.layout, self.tolerance),
        };
        writeln!(f, "status: {note}")?;
        writeln!(
            f,
            "layout: {} (survives {} lost device{}), chunk {}, checksum per {}",
            self.layout,
            self.tolerance,
            if self.tolerance == 1 { "" } else { "s" },
            human_bytes(self.chunk_bytes),
            human_bytes(self.checksum_bytes)
        )?;
        writeln!(
            f,
            "  size: {} volume, {} written, commit {}, generation {}",
            human_bytes(self.volume_bytes),
            human_bytes(self.allocated_bytes),
            self.commit_sequence,
            self.superblock_generation
        )?;
        writeln!(f, "    io: {}", self.io_backend)?;
        for rebuild in &self.rebuilds {
            #[allow(clippy::cast_precision_loss)]
            let percent = if rebuild.total_bytes == 0 {
                100.0
            } else {
                rebuild.done_bytes as f64 * 100.0 / rebuild.total_bytes as f64
            };
            writeln!(
                f,
                "  scan: rebuild of {} onto {} in progress: {} of {} ({percent:.1}%), {}/s, {} to go",
                rebuild.replacing,
                rebuild.device,
                human_bytes(rebuild.done_bytes),
                human_bytes(rebuild.total_bytes),
                human_bytes(rebuild.rate_bytes_per_s),
                rebuild
                    .eta_secs
                    .map_or_else(|| "unknown time".to_string(), |s| format!("{s}s"))
            )?;
        }
        if let Some(scrub) = &self.scrub {
            write_scrub_progress(f, scrub)?;
        } else if let Some(last) = &self.last_scrub {
            write_last_scrub(f, last)?;
        }
        writeln!(f, "config:\n")?;
        writeln!(
            f,
            "\t{:<40} {:<8} {:>5} {:>5} {:>5} {:>8}",
            "NAME", "STATE", "READ", "WRITE", "CKSUM", "REPAIRED"
        )?;
        writeln!(f, "\t{:<40} {:<8}", self.layout, self.health.to_string())?;
        let line = |f: &mut fmt::Formatter<'_>, d: &DeviceStatus| {
            let name = if d.replacing.is_some() {
                format!("  {}", d.path)
            } else {
                d.path.clone()
            };
            writeln!(
                f,
                "\t  {:<38} {:<10} {:>5} {:>5} {:>5} {:>8}{}",
                name,
                d.state,
                d.read_errors,
                d.write_errors,
                d.checksum_errors,
                d.repaired_chunks,
                d.reason
                    .as_ref()
                    .map(|r| format!("  ({r})"))
                    .unwrap_or_default()
            )
        };
        for device in &self.devices {
            line(f, device)?;
        }
        if !self.spares.is_empty() {
            writeln!(f, "\tspares")?;
            for device in &self.spares {
                line(f, device)?;
            }
        }
        let errors: u64 = self
            .devices
            .iter()
            .map(|d| d.read_errors + d.write_errors + d.checksum_errors)
            .sum();
        if errors == 0 {
            writeln!(f, "\nerrors: No known data errors")
        } else {
            writeln!(
                f,
                "\nerrors: {errors} device errors seen, {} chunks repaired",
                self.total_repaired()
            )
        }
    }
}

#[allow(clippy::cast_precision_loss)]
fn percent(done: u64, total: u64) -> f64 {
    if total == 0 {
        100.0
    } else {
        done as f64 * 100.0 / total as f64
    }
}

/// `scan:` lines for a scrub running, paused or interrupted.
fn write_scrub_progress(f: &mut fmt::Formatter<'_>, scrub: &super::ScrubProgress) -> fmt::Result {
    let what = if scrub.running {
        "in progress"
    } else if scrub.paused {
        "paused"
    } else {
        "interrupted (resume with `scrub --resume`)"
    };
    let totals = scrub.tally.totals();
    writeln!(
        f,
        "  scan: scrub {what} since {}\n\t{} of {} verified ({:.1}%){}, {} repaired, {} errors",
        utc_time(scrub.started_unix_secs),
        human_bytes(scrub.scanned_bytes),
        human_bytes(scrub.total_bytes),
        percent(scrub.scanned_bytes, scrub.total_bytes),
        if scrub.running {
            format!(
                " at {}/s, {} to go",
                human_bytes(scrub.rate_bytes_per_s),
                scrub
                    .eta_secs
                    .map_or_else(|| "unknown time".to_string(), |s| format!("{s}s"))
            )
        } else {
            String::new()
        },
        totals.repaired,
        totals.checksum_errors + totals.io_errors
    )
}

/// `scan:` line for the last finished scrub, like zpool's "scrub repaired 0B in ... with 0 errors".
fn write_last_scrub(f: &mut fmt::Formatter<'_>, last: &crate::format::ScrubSummary) -> fmt::Result {
    let totals = last.tally.totals();
    let outcome = match last.outcome {
        crate::format::ScrubOutcome::Completed => "scrub",
        crate::format::ScrubOutcome::Canceled => "scrub canceled;",
    };
    writeln!(
        f,
        "  scan: {outcome} {} {} chunks in {}s with {} errors ({} unrepairable stripes) on {}",
        if last.repair {
            "repaired"
        } else {
            "found (check only)"
        },
        if last.repair {
            totals.repaired
        } else {
            totals.checksum_errors + totals.io_errors
        },
        last.scan_secs,
        totals.checksum_errors + totals.io_errors,
        last.tally.unrepairable_stripes,
        utc_time(last.finished_unix_secs)
    )
}
