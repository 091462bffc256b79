//! `stripestore scrub`: run (or resume) a scrub with a progress bar, print a per-device report,
//! and exit with a code a script can act on.

use super::{open_pool, open_pool_to_look, Progress};
use std::path::PathBuf;
use stripestore::types::human_bytes;
use stripestore::{ScrubEnd, ScrubOptions, ScrubReport};

/// Exit codes of `scrub` (documented in the README).
pub mod exit {
    /// Nothing wrong.
    pub const CLEAN: u8 = 0;
    /// Damage found; all of it repaired (or repairable, with `--check-only`).
    pub const REPAIRED: u8 = 1;
    /// Data that redundancy could not reconstruct.
    pub const UNREPAIRABLE: u8 = 2;
    /// The scrub could not run (bad arguments, pool cannot be opened, I/O failure on metadata).
    pub const FAILED: u8 = 3;
}

/// Arguments of `scrub`.
pub struct ScrubArgs {
    pub pool: Vec<PathBuf>,
    pub check_only: bool,
    pub rate: Option<u64>,
    pub resume: bool,
    pub cancel: bool,
    pub json: bool,
}

/// Run the command; returns the exit code (failures to run are errors, mapped to 3 by the caller).
pub fn run(args: &ScrubArgs) -> Result<u8, Box<dyn std::error::Error>> {
    // A check-only scrub only looks: read-only, so it writes no byte (and so keeps no
    // checkpoint: an interrupted one starts over).
    let pool = if args.check_only && !args.cancel && !args.resume {
        open_pool_to_look(&args.pool)?
    } else {
        open_pool(&args.pool)?
    };
    if args.cancel {
        let had = pool.cancel_scrub()?;
        eprintln!(
            "{}",
            if had {
                "scrub: the interrupted scrub was canceled"
            } else {
                "scrub: no interrupted scrub to cancel"
            }
        );
        pool.close()?;
        return Ok(exit::CLEAN);
    }
    let recorded = pool.scrub_progress();
    match (&recorded, args.resume) {
        (Some(p), true) => eprintln!(
            "scrub: resuming at {:.1}% ({} of {} verified before)",
            percent(p.scanned_bytes, p.total_bytes),
            human_bytes(p.scanned_bytes),
            human_bytes(p.total_bytes)
        ),
        (Some(p), false) => eprintln!(
            "scrub: an interrupted scrub ({:.1}% done) is replaced by a new one; use --resume to continue it instead",
            percent(p.scanned_bytes, p.total_bytes)
        ),
        (None, true) => eprintln!("scrub: nothing to resume; starting a new scrub"),
        (None, false) => {}
    }
    let options = ScrubOptions {
        check_only: args.check_only,
        rate_bytes_per_s: args.rate,
        resume: args.resume,
        ..ScrubOptions::default()
    };
    let mut bar: Option<Progress> = None;
    let report = pool.scrub_with(&options, |progress| {
        let bar = bar.get_or_insert_with(|| {
            let mut bar = Progress::new("scrubbing", progress.total_bytes);
            bar.set_done(progress.scanned_bytes);
            bar
        });
        bar.set_total(progress.total_bytes);
        bar.set_done(progress.scanned_bytes);
    })?;
    if let Some(bar) = bar {
        bar.finish();
    }
    pool.close()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(exit_code(&report))
}

/// The exit code for a finished report.
pub fn exit_code(report: &ScrubReport) -> u8 {
    if report.found_data_loss() {
        exit::UNREPAIRABLE
    } else if report.found_damage() {
        exit::REPAIRED
    } else {
        exit::CLEAN
    }
}

#[allow(clippy::cast_precision_loss)]
fn percent(done: u64, total: u64) -> f64 {
    done as f64 * 100.0 / total.max(1) as f64
}

/// The human report, in the style of `zpool status`'s scan section.
pub fn render(report: &ScrubReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let totals = &report.totals;
    let verb = match report.end {
        ScrubEnd::Completed if totals.bytes_skipped > 0 => "completed, NOT all verified",
        ScrubEnd::Completed => "completed",
        ScrubEnd::Paused => "paused (resume with --resume)",
        ScrubEnd::Canceled => "canceled",
        ScrubEnd::Interrupted => "interrupted (resume with --resume)",
    };
    // A version-4 pass (it has a segment cursor) counts rows and page copies where version 3
    // counts stripes, and shard-blocks where version 3 counts chunks.
    let v4 = report.resumed_from_segment.is_some();
    let (checked, piece, lost) = if v4 {
        (
            "rows and metadata pages",
            "places (4K shard-blocks, page copies)",
            "places",
        )
    } else {
        ("stripes", "chunks", "stripes")
    };
    let _ = writeln!(
        out,
        "scrub {verb}: {} in {} {checked} verified in {}s{}",
        human_bytes(totals.bytes_scanned),
        report.stripes_checked,
        report.scan_secs,
        if report.repair { "" } else { " (check only)" }
    );
    let inconsistent = if v4 {
        String::new()
    } else {
        format!(", {} inconsistent stripes", report.inconsistent_stripes)
    };
    let _ = writeln!(
        out,
        "  {} checksum errors, {} I/O errors, {} {piece} repaired{inconsistent}, {} {lost} unrepairable",
        totals.checksum_errors,
        totals.io_errors,
        totals.repaired,
        report.unrepairable_stripes
    );
    if totals.not_rewritten > 0 {
        let _ = writeln!(
            out,
            "  {} damaged chunks were reconstructed but not rewritten ({})",
            totals.not_rewritten,
            if report.repair {
                "their rewrite failed"
            } else {
                "check only"
            }
        );
    }
    if report.segments_skipped > 0 {
        let _ = writeln!(
            out,
            "  {} segments not checked: taken again or freed since the pass began (what they hold now is newer than the pass)",
            report.segments_skipped
        );
    }
    if let Some(segment) = report.resumed_from_segment.filter(|s| *s > 0) {
        let _ = writeln!(out, "  this run resumed at segment {segment}");
    }
    if totals.bytes_skipped > 0 {
        let skipped: Vec<String> = report
            .devices
            .iter()
            .filter(|d| d.counters.bytes_skipped > 0)
            .map(|d| format!("{} on {}", human_bytes(d.counters.bytes_skipped), d.path))
            .collect();
        let _ = writeln!(
            out,
            "  NOT VERIFIED: {} (device out of service when the scrub reached it)",
            skipped.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\n  {:<40} {:>10} {:>10} {:>6} {:>6} {:>9} {:>12}",
        "DEVICE", "SCANNED", "SKIPPED", "CKSUM", "IO", "REPAIRED", "UNREPAIRABLE"
    );
    for device in &report.devices {
        let c = &device.counters;
        let _ = writeln!(
            out,
            "  {:<40} {:>10} {:>10} {:>6} {:>6} {:>9} {:>12}",
            device.path,
            human_bytes(c.bytes_scanned),
            human_bytes(c.bytes_skipped),
            c.checksum_errors,
            c.io_errors,
            c.repaired,
            c.unrepairable
        );
    }
    if !report.damaged.is_empty() {
        let _ = writeln!(out, "\nunrepairable data (volume byte ranges):");
        for range in &report.damaged {
            let _ = writeln!(
                out,
                "  offset {} length {} (damaged on {})",
                range.volume_offset,
                range.length,
                range.devices.join(", ")
            );
        }
        if report.lost_blocks > 0 {
            let listed = if report.damaged.len() >= stripestore::format::MAX_RECORDED_RANGES {
                format!(" (the first {} ranges are listed)", report.damaged.len())
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  {} lost in all: {} blocks of 4 KiB{listed}",
                human_bytes(report.lost_blocks * 4096),
                report.lost_blocks
            );
        } else if report.unrepairable_stripes > report.damaged.len() as u64 {
            let _ = writeln!(
                out,
                "  ... and {} more stripes",
                report.unrepairable_stripes - report.damaged.len() as u64
            );
        }
    }
    out
}
