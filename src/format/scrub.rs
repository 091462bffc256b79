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
    /// Damaged chunks that were reconstructed but could not be rewritten (the write failed,
    /// or the scrub only checks or the pool is read-only). With `repaired` and
    /// `unrepairable`, every error is accounted for exactly once:
    /// `checksum_errors + io_errors == repaired + unrepairable + not_rewritten`.
    #[serde(default)]
    pub not_rewritten: u64,
    /// Bytes of chunks this device should have been verified for but could not be, because it
    /// was out of service (faulted, missing, offline) when the scrub reached them.
    #[serde(default)]
    pub bytes_skipped: u64,
}

impl DeviceScrubCounters {
    /// Whether every error landed in exactly one outcome: repaired, unrepairable or not
    /// rewritten (the invariant a scrub's tally keeps).
    #[must_use]
    pub fn errors_accounted(&self) -> bool {
        self.checksum_errors + self.io_errors
            == self.repaired + self.unrepairable + self.not_rewritten
    }

    /// Add another tally's counts.
    pub fn add(&mut self, other: &Self) {
        self.bytes_scanned += other.bytes_scanned;
        self.checksum_errors += other.checksum_errors;
        self.io_errors += other.io_errors;
        self.repaired += other.repaired;
        self.unrepairable += other.unrepairable;
        self.not_rewritten += other.not_rewritten;
        self.bytes_skipped += other.bytes_skipped;
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
    /// Format version 4: allocated segments a pass did not check because they were taken
    /// again since its walk, or were free when it reached them (what they held then was
    /// written after the pass began, or is dead). Absent in older superblocks.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub segments_skipped: u64,
    /// Format version 4: live 4 KiB blocks whose data could not be rebuilt (each also in
    /// `damaged`, up to its cap). `unrepairable_stripes` counts the places (shard-blocks and
    /// page copies) that stay bad. Absent in older superblocks.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lost_blocks: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde passes a reference
fn is_zero(value: &u64) -> bool {
    *value == 0
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

    /// Record a stripe whose data is lost. Ranges stay sorted by offset, and a range that
    /// touches or overlaps one already listed is merged into it (its devices joined), so damage
    /// over many adjacent stripes reads as one range.
    pub fn add_damaged(&mut self, range: DamagedRange) {
        self.unrepairable_stripes += 1;
        self.list_damaged(range);
    }

    /// Record a lost block of a format-version-4 pool (`range`: its 4 KiB), listed and merged
    /// as [`ScrubTally::add_damaged`] does.
    pub fn add_lost_block(&mut self, range: DamagedRange) {
        self.lost_blocks += 1;
        self.list_damaged(range);
    }

    fn list_damaged(&mut self, range: DamagedRange) {
        let end = |r: &DamagedRange| r.volume_offset + r.length;
        let at = self
            .damaged
            .partition_point(|r| end(r) < range.volume_offset);
        let overlaps = self
            .damaged
            .get(at)
            .is_some_and(|next| next.volume_offset <= end(&range));
        if overlaps {
            {
                let next = &mut self.damaged[at];
                let merged_end = end(next).max(end(&range));
                next.volume_offset = next.volume_offset.min(range.volume_offset);
                next.length = merged_end - next.volume_offset;
                for device in range.devices {
                    if !next.devices.contains(&device) {
                        next.devices.push(device);
                    }
                }
                next.devices.sort();
            }
            {
                // It may now reach the range after it.
                while at + 1 < self.damaged.len()
                    && self.damaged[at + 1].volume_offset <= end(&self.damaged[at])
                {
                    let following = self.damaged.remove(at + 1);
                    let current = &mut self.damaged[at];
                    let merged_end = end(current).max(end(&following));
                    current.length = merged_end - current.volume_offset;
                    for device in following.devices {
                        if !current.devices.contains(&device) {
                            current.devices.push(device);
                        }
                    }
                    current.devices.sort();
                }
            }
        } else if self.damaged.len() < MAX_RECORDED_RANGES {
            let mut range = range;
            range.devices.sort();
            range.devices.dedup();
            self.damaged.insert(at, range);
        }
        // (Beyond the cap: counted in `unrepairable_stripes`, not listed.)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(offset: u64, length: u64, devices: &[&str]) -> DamagedRange {
        DamagedRange {
            volume_offset: offset,
            length,
            devices: devices.iter().map(|d| (*d).to_string()).collect(),
        }
    }

    /// Stripes found out of order, adjacent ones and repeats: sorted, merged, devices joined,
    /// and every stripe still counted.
    #[test]
    fn damaged_ranges_are_sorted_and_merged() {
        let mut tally = ScrubTally::new(3);
        tally.add_damaged(range(300, 100, &["b"]));
        tally.add_damaged(range(100, 100, &["a", "b"]));
        tally.add_damaged(range(1000, 100, &["c"]));
        tally.add_damaged(range(200, 100, &["c", "a"]));
        tally.add_damaged(range(0, 50, &["a"]));
        assert_eq!(tally.unrepairable_stripes, 5);
        assert_eq!(
            tally.damaged,
            vec![
                range(0, 50, &["a"]),
                range(100, 300, &["a", "b", "c"]),
                range(1000, 100, &["c"]),
            ]
        );
        // A range bridging two listed ones merges all three.
        tally.add_damaged(range(50, 50, &["d"]));
        assert_eq!(tally.damaged[0], range(0, 400, &["a", "b", "c", "d"]));
        assert_eq!(tally.damaged.len(), 2);
    }

    /// The v4 scrub cursor and the skipped-segment count (2026-12-04) are optional: a
    /// checkpoint recorded before them decodes with neither (and so resumes as a scrub over
    /// slots, never misread as a cursor); without them nothing is written, so a v3 superblock's
    /// bytes are unchanged; with them they round-trip.
    #[test]
    fn the_v4_scrub_cursor_is_optional_in_a_recorded_checkpoint() {
        let old = r#"{"started_unix_secs":7,"repair":true,"paused":false,"next_slot":5,"scan_secs":1,"tally":{"devices":[],"stripes_checked":3,"inconsistent_stripes":0,"unrepairable_stripes":0,"damaged":[]}}"#;
        let checkpoint: ScrubCheckpoint = serde_json::from_str(old).unwrap();
        assert_eq!(checkpoint.segments, None);
        assert_eq!(checkpoint.tally.segments_skipped, 0);
        assert_eq!(checkpoint.tally.lost_blocks, 0);
        assert_eq!(checkpoint.next_slot, 5);
        assert_eq!(
            serde_json::to_string(&checkpoint).unwrap(),
            old,
            "v3 bytes unchanged"
        );
        let mut v4 = checkpoint;
        v4.next_slot = 0;
        v4.segments = Some(SegmentCursor {
            next_segment: 9,
            timeline: 3,
        });
        v4.tally.segments_skipped = 2;
        v4.tally.lost_blocks = 5;
        let text = serde_json::to_string(&v4).unwrap();
        assert!(
            text.contains(r#""segments":{"next_segment":9,"timeline":3}"#),
            "{text}"
        );
        assert!(text.contains(r#""segments_skipped":2"#), "{text}");
        assert!(text.contains(r#""lost_blocks":5"#), "{text}");
        let back: ScrubCheckpoint = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v4);
    }

    /// A tally does not refuse a field it does not know: a build from before `lost_blocks`
    /// (2026-12-05) reads a newer tally the same way, dropping the count and keeping the
    /// ranges. Lost blocks count in `lost_blocks`, not in `unrepairable_stripes`, and are
    /// listed and merged like damaged stripes.
    #[test]
    fn lost_blocks_are_counted_apart_and_a_tally_reads_past_fields_it_does_not_know() {
        let newer = r#"{"devices":[],"stripes_checked":1,"inconsistent_stripes":0,"unrepairable_stripes":3,"damaged":[],"lost_blocks":2,"a_later_counter":7}"#;
        let tally: ScrubTally = serde_json::from_str(newer).unwrap();
        assert_eq!((tally.unrepairable_stripes, tally.lost_blocks), (3, 2));
        let mut tally = ScrubTally::new(1);
        tally.add_lost_block(range(4096, 4096, &["b"]));
        tally.add_lost_block(range(0, 4096, &["a"]));
        assert_eq!((tally.lost_blocks, tally.unrepairable_stripes), (2, 0));
        assert_eq!(tally.damaged, vec![range(0, 8192, &["a", "b"])]);
    }

    /// Tallies recorded before `not_rewritten` and `bytes_skipped` existed still decode (as 0),
    /// so superblocks of pools scrubbed by older builds stay readable.
    #[test]
    fn an_older_tally_without_the_new_counters_decodes() {
        let old = r#"{"bytes_scanned":4096,"checksum_errors":2,"io_errors":0,"repaired":2,"unrepairable":0}"#;
        let counters: DeviceScrubCounters = serde_json::from_str(old).unwrap();
        assert_eq!(counters.repaired, 2);
        assert_eq!((counters.not_rewritten, counters.bytes_skipped), (0, 0));
        assert!(counters.errors_accounted());
    }

    /// Past the cap, ranges are counted but not listed; merging still works.
    #[test]
    fn the_list_is_capped_and_the_count_exact() {
        let mut tally = ScrubTally::new(1);
        for i in 0..(MAX_RECORDED_RANGES as u64 + 10) {
            tally.add_damaged(range(i * 1000, 10, &["a"]));
        }
        assert_eq!(tally.damaged.len(), MAX_RECORDED_RANGES);
        assert_eq!(tally.unrepairable_stripes, MAX_RECORDED_RANGES as u64 + 10);
        tally.add_damaged(range(10, 10, &["b"]));
        assert_eq!(tally.damaged[0], range(0, 20, &["a", "b"]));
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
    /// Every live physical slot below this has been verified (format version 3; 0 on a
    /// version-4 pool, whose cursor is `segments`).
    pub next_slot: u64,
    /// Seconds spent scanning so far (over all runs).
    pub scan_secs: u64,
    /// Findings so far.
    pub tally: ScrubTally,
    /// Where a scrub of a version-4 pool stands (docs/FORMAT.md V4.13, stage 3); absent on
    /// version 3 and in superblocks written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<SegmentCursor>,
}

/// The cursor of a scrub of a version-4 pool: every allocated segment below `next_segment`
/// was checked (or skipped, taken again since the pass's walk, or free), on the map's
/// timeline `timeline` (after a rewind the pass starts over).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentCursor {
    /// The next segment to check.
    pub next_segment: u64,
    /// The map's timeline the pass ran on.
    pub timeline: u64,
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
