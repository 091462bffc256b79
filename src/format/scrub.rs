//! Scrub state kept in the superblocks: the checkpoint of a scrub in progress (so a restart
//! resumes instead of re-reading everything) and the summary of the last finished one (so
//! `status` and `check` can report it long after the scrub ran).
//!
//! It rides in the superblock's JSON (optional, `serde(default)`), so superblocks written before
//! scrubs were recorded still decode. The superblock has 64 KiB; the list of damaged ranges is
//! capped at [`MAX_RECORDED_RANGES`] (the count stays exact).

use serde::{Deserialize, Serialize};

/// Damaged ranges listed in a checkpoint or summary; the count beyond this is still exact.
pub const MAX_RECORDED_RANGES: usize = 64;

/// Per-device scrub counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceScrubCounters {
    /// Bytes of chunks read and verified on this device.
    pub bytes_scanned: u64,
    /// Chunks whose content did not match the map's checksum.
    pub checksum_errors: u64,
    /// Chunks that could not be read (I/O error).
    pub io_errors: u64,
    /// Chunks rewritten with verified content.
    pub repaired: u64,
    /// Damaged chunks in stripes that could not be reconstructed (more damage than redundancy).
    pub unrepairable: u64,
}

impl DeviceScrubCounters {
    /// Add another tally's counts.
    pub fn add(&mut self, other: &Self) {
        self.bytes_scanned += other.bytes_scanned;
        self.checksum_errors += other.checksum_errors;
        self.io_errors += other.io_errors;
        self.repaired += other.repaired;
        self.unrepairable += other.unrepairable;
    }
}

/// A range of the volume whose data could not be reconstructed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamagedRange {
    /// Volume byte offset.
    pub volume_offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// Devices whose chunks of it failed.
    pub devices: Vec<String>,
}

/// What a scrub has found so far; checkpointed, and the body of the final report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubTally {
    /// Per data position (layout order).
    pub devices: Vec<DeviceScrubCounters>,
    /// Stripes verified.
    pub stripes_checked: u64,
    /// Stripes whose chunks all verified but whose parity or copies disagreed with the data
    /// (rewritten from the data when repairing).
    pub inconsistent_stripes: u64,
    /// Stripes that could not be reconstructed.
    pub unrepairable_stripes: u64,
    /// The first [`MAX_RECORDED_RANGES`] of them.
    pub damaged: Vec<DamagedRange>,
}

impl ScrubTally {
    /// An empty tally for `devices` data positions.
    #[must_use]
    pub fn new(devices: usize) -> Self {
        Self {
            devices: vec![DeviceScrubCounters::default(); devices],
            ..Self::default()
        }
    }

    /// Counts over all devices.
    #[must_use]
    pub fn totals(&self) -> DeviceScrubCounters {
        let mut total = DeviceScrubCounters::default();
        for device in &self.devices {
            total.add(device);
        }
        total
    }

    /// Record a stripe whose data is lost.
    pub fn add_damaged(&mut self, range: DamagedRange) {
        self.unrepairable_stripes += 1;
        if self.damaged.len() < MAX_RECORDED_RANGES {
            self.damaged.push(range);
        }
    }
}

/// A scrub in progress, as of its last checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubCheckpoint {
    /// When the scrub started, seconds since the Unix epoch.
    pub started_unix_secs: u64,
    /// Repairing (`true`) or check-only.
    pub repair: bool,
    /// Paused by request: not resumed automatically when the pool opens.
    pub paused: bool,
    /// Every live physical slot below this has been verified.
    pub next_slot: u64,
    /// Seconds spent scanning so far (over all runs).
    pub scan_secs: u64,
    /// Findings so far.
    pub tally: ScrubTally,
}

/// How a scrub ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScrubOutcome {
    /// Every live slot was verified.
    Completed,
    /// Stopped by request before the end; its checkpoint was discarded.
    Canceled,
}

/// The last finished scrub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubSummary {
    /// How it ended.
    pub outcome: ScrubOutcome,
    /// Repairing or check-only.
    pub repair: bool,
    /// Start, seconds since the Unix epoch.
    pub started_unix_secs: u64,
    /// End, seconds since the Unix epoch.
    pub finished_unix_secs: u64,
    /// Seconds spent scanning (excludes time paused or not running).
    pub scan_secs: u64,
    /// Findings.
    pub tally: ScrubTally,
}

/// The scrub part of a superblock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubRecord {
    /// A scrub that has not finished (running when the pool was last open, or paused).
    pub in_progress: Option<ScrubCheckpoint>,
    /// The last scrub that finished or was canceled.
    pub last: Option<ScrubSummary>,
}
