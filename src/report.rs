//! Human-readable reports: the pool's status as text, like `zpool status` (`Display` for
//! [`PoolStatus`]). A presentation layer beside the front ends: it reads only the public
//! status snapshot.
//!
//! Owns: the wording and layout of the status text. Must not touch: the pool (it gets a
//! snapshot, never a pool), devices, anything that writes.

use crate::format::Event;
use crate::pool::{DeviceStatus, PoolHealth, PoolStatus, ScrubProgress};
use crate::types::{human_bytes, utc_time};
use std::fmt;

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
        if let Some(rebuild) = &self.last_rebuild {
            writeln!(
                f,
                "rebuild: last finished {}: {} {}",
                rebuild.time, rebuild.device, rebuild.detail
            )?;
        }
        if self.no_spare_left {
            writeln!(
                f,
                "  warn: redundancy was restored by the last rebuild, but no spare is left for the next failure: add one (`stripestore spare add`)"
            )?;
        }
        if let Some(points) = self
            .recovery_points
            .as_ref()
            .filter(|p| p.count > 0 || !p.deleting.is_empty())
        {
            writeln!(
                f,
                "points: {} recovery point{} ({} held), newest {} taken {}{} (`stripestore snapshot list`)",
                points.count,
                if points.count == 1 { "" } else { "s" },
                points.held,
                points.newest.as_deref().unwrap_or("?"),
                points
                    .newest_created
                    .map_or_else(|| "?".to_string(), crate::types::utc_time),
                points.held_data_bytes.map_or_else(String::new, |b| format!(
                    ", {} of data held by them",
                    crate::types::human_bytes(b)
                ))
            )?;
        }
        for (i, d) in self
            .recovery_points
            .iter()
            .flat_map(|p| p.deleting.iter())
            .enumerate()
        {
            writeln!(
                f,
                "reclaim: recovery point {} being deleted, {}: {} of data freed so far",
                d.name,
                if i == 0 {
                    format!("{:.0}% walked", d.percent())
                } else {
                    "waiting for the one before".to_string()
                },
                crate::types::human_bytes(d.freed_data_bytes)
            )?;
        }
        if let Some(name) = self
            .recovery_points
            .as_ref()
            .and_then(|p| p.unfinished_receive.as_ref())
        {
            writeln!(
                f,
                "  warn: the receive of recovery point {name} is unfinished: the volume reads as before it and refuses writes; receive the same stream again to finish it, or `stripestore receive --abort`"
            )?;
        }
        writeln!(f, "config:\n")?;
        // A DOMAIN column in pools with failure domains.
        let domains = self
            .devices
            .iter()
            .chain(&self.spares)
            .any(|d| d.domain.is_some());
        writeln!(
            f,
            "\t{:<40} {:<8} {:>5} {:>5} {:>5} {:>8}{}",
            "NAME",
            "STATE",
            "READ",
            "WRITE",
            "CKSUM",
            "REPAIRED",
            if domains { "  DOMAIN" } else { "" }
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
                "\t  {:<38} {:<10} {:>5} {:>5} {:>5} {:>8}{}{}",
                name,
                d.state,
                d.read_errors,
                d.write_errors,
                d.checksum_errors,
                d.repaired_chunks,
                match (&d.domain, domains) {
                    (Some(domain), _) => format!("  {domain}"),
                    (None, true) => "  -".to_string(),
                    (None, false) => String::new(),
                },
                d.reason
                    .as_ref()
                    .map(|r| match (d.away_secs, d.grace_left_secs) {
                        (Some(away), Some(left)) if d.state == "UNAVAILABLE" => format!(
                            "  ({r}; away {away} s, faulted in {left} s unless it returns)"
                        ),
                        (Some(away), _) => format!("  ({r}; away {away} s)"),
                        _ => format!("  ({r})"),
                    })
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
            writeln!(f, "\nerrors: No known data errors")?;
        } else {
            writeln!(
                f,
                "\nerrors: {errors} device errors seen, {} chunks repaired",
                self.total_repaired()
            )?;
        }
        write_events(f, &self.events)
    }
}

/// The last events of the log, one per line.
fn write_events(f: &mut fmt::Formatter<'_>, events: &[Event]) -> fmt::Result {
    if events.is_empty() {
        return Ok(());
    }
    writeln!(
        f,
        "events: (the last {}; `stripestore events` lists them all)",
        events.len()
    )?;
    for event in events {
        writeln!(f, "\t{}", event_line(event))?;
    }
    Ok(())
}

/// One event as a line: time, kind, device, detail (and how often an `open` repeated).
#[must_use]
pub fn event_line(event: &Event) -> String {
    let mut line = format!("{}  {:<14}", event.time, event.kind.name());
    match (event.device.is_empty(), event.detail.is_empty()) {
        (false, false) => line.push_str(&format!(" {}: {}", event.device, event.detail)),
        (false, true) => line.push_str(&format!(" {}", event.device)),
        (true, false) => line.push_str(&format!(" {}", event.detail)),
        (true, true) => {}
    }
    if event.count > 1 {
        line.push_str(&format!(" ({} times)", event.count));
    }
    line
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
fn write_scrub_progress(f: &mut fmt::Formatter<'_>, scrub: &ScrubProgress) -> fmt::Result {
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
