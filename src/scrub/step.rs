//! The scrub's step machine: what one step reads (the live slots of a range, one read per run
//! of adjacent chunks on every device) and what it does with it (verify every chunk and the
//! stripe's consistency, re-examine what is suspect, rewrite what disagrees), tallied into the
//! scrub's checkpoint, whose `next_slot` is the cursor (a scrub over segments, format version
//! 4, moves its `segments` cursor instead, chunk by chunk: [`Scrubber::advance`]).
//!
//! Owns: the cursor and the tally while a scrub runs ([`Scrubber`]), the verdicts and the
//! per-device accounting. Must not touch: pool internals (everything goes through
//! [`ScrubTarget`]), the superblocks (the driver in `run` persists the checkpoint), pacing.

use super::{progress_of, ScrubProgress, ScrubTarget};
use crate::format::{DamagedRange, ScrubCheckpoint, ScrubTally};
use crate::maintenance::{DamageKind, LiveStripe, ShardFinding};
use crate::types::{DeviceIndex, ShardIndex, SlotId};
use std::time::Instant;

/// A running scrub: its checkpoint (cursor `next_slot` and the tally) and what this run did.
pub(crate) struct Scrubber {
    /// Where the scrub is and what it found (over all runs).
    pub(super) checkpoint: ScrubCheckpoint,
    /// The slot this run started from.
    pub(super) resumed_from_slot: u64,
    /// The segment this run started from (format version 4).
    pub(super) resumed_from_segment: Option<u64>,
    /// Bytes earlier runs verified.
    previously_scanned: u64,
    /// Seconds earlier runs spent.
    previous_secs: u64,
    /// Bytes of live chunks from the resume point when this run started.
    remaining: u64,
    /// When this run started.
    started: Instant,
    /// Bytes this run read.
    pub(super) read_this_run: u64,
    /// Whether this run rewrote a stripe (then every checkpoint commits first).
    pub(super) rewrote: bool,
}

/// What one step did.
pub(crate) struct Stepped {
    /// Bytes it read from the devices.
    pub(crate) bytes_read: u64,
    /// Progress after it.
    pub(crate) progress: ScrubProgress,
}

impl Scrubber {
    /// A run continuing `checkpoint`, with `remaining` bytes of live chunks ahead of it.
    pub(crate) fn new(checkpoint: ScrubCheckpoint, remaining: u64) -> Self {
        Self {
            resumed_from_slot: checkpoint.next_slot,
            resumed_from_segment: checkpoint.segments.map(|c| c.next_segment),
            previously_scanned: checkpoint.tally.totals().bytes_scanned,
            previous_secs: checkpoint.scan_secs,
            remaining,
            started: Instant::now(),
            read_this_run: 0,
            rewrote: false,
            checkpoint,
        }
    }

    /// Verify what one step read, re-examine anything suspect, advance the cursor past it.
    pub(crate) fn step(&mut self, target: &impl ScrubTarget, read: &ReadStep) -> Stepped {
        let repair = self.checkpoint.repair;
        let result = verify_step(target, read, repair, &mut self.checkpoint.tally);
        self.read_this_run += result.bytes_read;
        self.rewrote |= result.rewrote;
        self.checkpoint.next_slot = read.to.0;
        self.stepped(target, result.bytes_read)
    }

    /// Account for one chunk of a scrub over segments (its findings are in the tally
    /// already): move the cursor to `next_segment` (`None`: the pass is done).
    pub(crate) fn advance(
        &mut self,
        target: &impl ScrubTarget,
        bytes_read: u64,
        next_segment: Option<u64>,
    ) -> Stepped {
        self.read_this_run += bytes_read;
        if let (Some(cursor), Some(next)) = (self.checkpoint.segments.as_mut(), next_segment) {
            cursor.next_segment = next;
        }
        self.stepped(target, bytes_read)
    }

    /// What a step or chunk that read `bytes_read` did, with the progress after it.
    fn stepped(&mut self, target: &impl ScrubTarget, bytes_read: u64) -> Stepped {
        self.note_time();
        let progress = progress_of(
            target,
            &self.checkpoint,
            self.previously_scanned + self.remaining,
            self.checkpoint.tally.totals().bytes_scanned - self.previously_scanned,
            self.started,
        );
        Stepped {
            bytes_read,
            progress,
        }
    }

    /// Bring the checkpoint's scanning time up to now.
    pub(crate) fn note_time(&mut self) {
        self.checkpoint.scan_secs = self.previous_secs + self.started.elapsed().as_secs();
    }
}

/// The live slots of one step and what was read of them.
pub(crate) struct ReadStep {
    /// End of the step's slot range.
    pub(crate) to: SlotId,
    items: Vec<LiveStripe>,
    devices: Vec<DeviceRuns>,
}

/// One device's reads for a step: runs of adjacent chunks, sorted by offset.
struct DeviceRuns {
    runs: Vec<(u64, Vec<u8>)>,
}

impl DeviceRuns {
    fn chunk(&self, offset: u64, chunk: usize) -> Option<&[u8]> {
        let i = self.runs.partition_point(|(start, _)| *start <= offset);
        let (start, bytes) = self.runs.get(i.checked_sub(1)?)?;
        let at = usize::try_from(offset - start).ok()?;
        bytes.get(at..at + chunk)
    }
}

/// Verdict on one item from the sequential pass.
enum Verdict {
    /// Every present chunk verified and the stripe is consistent: bytes verified per device.
    Clean,
    /// Something failed: re-examine under the stripe lock.
    Suspect,
    /// Chunks verify, but parity/copies disagree with the data.
    Inconsistent,
}

/// What one scrub step did.
#[derive(Debug, Default)]
struct StepResult {
    bytes_read: u64,
    rewrote: bool,
}

/// Snapshot the live slots in `from..to` and read all their chunks.
pub(crate) fn read_step(target: &impl ScrubTarget, from: SlotId, to: SlotId) -> ReadStep {
    let items = target.live_stripes(from, to);
    let devices = if items.is_empty() {
        Vec::new()
    } else {
        read_items(target, &items)
    };
    ReadStep { to, items, devices }
}

/// Read every chunk of `items` from every online device, one read per run of adjacent
/// chunks, all devices in parallel. A run that fails to read is left out (its items are
/// then re-examined chunk by chunk, which counts the error exactly).
fn read_items(target: &impl ScrubTarget, items: &[LiveStripe]) -> Vec<DeviceRuns> {
    let geometry = target.geometry();
    let mut offsets: Vec<Vec<u64>> = vec![Vec::new(); geometry.devices];
    for item in items {
        for shard in 0..geometry.width() {
            let (device, offset) = geometry.shard_location(item.slot, ShardIndex(shard));
            offsets[device.0].push(offset);
        }
    }
    let indexed: Vec<(usize, Vec<u64>)> = offsets.into_iter().enumerate().collect();
    crate::parallel::each(&indexed, |(device, offsets)| {
        let mut sorted = offsets.clone();
        sorted.sort_unstable();
        sorted.dedup();
        let mut runs = Vec::new();
        let Some(handle) = target.member_device(DeviceIndex(*device)) else {
            return DeviceRuns { runs };
        };
        let chunk = geometry.chunk_bytes;
        for run in crate::maintenance::runs(&sorted, chunk) {
            let mut buf = vec![0u8; usize::try_from(run.len() as u64 * chunk).unwrap_or(0)];
            match handle.read_at(run[0], &mut buf) {
                Ok(()) => runs.push((run[0], buf)),
                Err(err) => {
                    tracing::debug!(device, offset = run[0], %err, "scrub run read failed; re-examining chunk by chunk");
                }
            }
        }
        DeviceRuns { runs }
    })
}

/// Verify what one step read; re-examine anything suspect.
fn verify_step(
    target: &impl ScrubTarget,
    read: &ReadStep,
    repair: bool,
    tally: &mut ScrubTally,
) -> StepResult {
    let (items, devices) = (&read.items, &read.devices);
    let mut result = StepResult::default();
    if items.is_empty() {
        return result;
    }
    let geometry = target.geometry();
    let chunk = usize::try_from(geometry.chunk_bytes).unwrap_or(0);
    result.bytes_read = devices
        .iter()
        .flat_map(|d| d.runs.iter().map(|(_, bytes)| bytes.len() as u64))
        .sum();
    // Verify on every core; items are independent.
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    let parts: Vec<&[LiveStripe]> = items.chunks(items.len().div_ceil(cores).max(1)).collect();
    let verdicts: Vec<Verdict> = crate::parallel::each(&parts, |part| {
        part.iter()
            .map(|item| judge(target, item, devices, chunk))
            .collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect();
    for (item, verdict) in items.iter().zip(verdicts) {
        match verdict {
            Verdict::Clean => {
                tally.stripes_checked += 1;
                for shard in 0..geometry.width() {
                    let (device, _) = geometry.shard_location(item.slot, ShardIndex(shard));
                    let counters = &mut tally.devices[device.0];
                    if target.is_online(device) {
                        counters.bytes_scanned += geometry.chunk_bytes;
                    } else {
                        counters.bytes_skipped += geometry.chunk_bytes;
                    }
                }
            }
            Verdict::Suspect => scrub_stripe_carefully(target, item, repair, tally),
            Verdict::Inconsistent => {
                result.rewrote |= scrub_inconsistent(target, item, repair, tally);
            }
        }
    }
    result
}

/// Check one item against what the step read.
fn judge(
    target: &impl ScrubTarget,
    item: &LiveStripe,
    devices: &[DeviceRuns],
    chunk: usize,
) -> Verdict {
    let geometry = target.geometry();
    let width = geometry.width();
    let mut shards: Vec<&[u8]> = Vec::with_capacity(width);
    for shard in 0..width {
        let (device, offset) = geometry.shard_location(item.slot, ShardIndex(shard));
        if !target.is_online(device) {
            continue; // not verifiable; the stripe is still checked as far as it can be
        }
        let Some(bytes) = devices[device.0].chunk(offset, chunk) else {
            return Verdict::Suspect;
        };
        if !target.shard_verifies(item.slot, &item.entry, ShardIndex(shard), bytes) {
            return Verdict::Suspect;
        }
        shards.push(bytes);
    }
    if shards.len() == width && !target.codec().consistent(&shards) {
        return Verdict::Inconsistent;
    }
    Verdict::Clean
}

/// Re-examine a suspect stripe under its lock and account for every chunk.
fn scrub_stripe_carefully(
    target: &impl ScrubTarget,
    item: &LiveStripe,
    repair: bool,
    tally: &mut ScrubTally,
) {
    target.with_stripe_locked(item.stripe, |entry| {
        if !item.unchanged(&entry) {
            return; // rewritten since the step started: the new copy is fresh
        }
        let exam = target.examine(item.stripe, item.slot, &entry, repair);
        tally.stripes_checked += 1;
        let geometry = target.geometry();
        let mut damaged_devices = Vec::new();
        for (shard, finding) in exam.findings.iter().enumerate() {
            let (device, offset) = geometry.shard_location(item.slot, ShardIndex(shard));
            let counters = &mut tally.devices[device.0];
            match finding {
                ShardFinding::Missing => {
                    // Out of service: not verified, and part of the loss if the stripe is lost.
                    counters.bytes_skipped += geometry.chunk_bytes;
                    damaged_devices.push(format!("{} (out of service)", target.device_path(device)));
                    continue;
                }
                ShardFinding::Good => {}
                ShardFinding::Damaged(kind) => {
                    if *kind == DamageKind::Read {
                        counters.io_errors += 1;
                    } else {
                        counters.checksum_errors += 1;
                    }
                    // Each error lands in exactly one of these.
                    if exam.healed[shard] {
                        counters.repaired += 1;
                    } else if !exam.recovered() {
                        counters.unrepairable += 1;
                    } else {
                        counters.not_rewritten += 1;
                    }
                    let path = target.device_path(device);
                    tracing::info!(device = %path, offset, stripe = item.stripe.0, ?kind, repaired = exam.healed[shard], "scrub: damaged chunk");
                    damaged_devices.push(path);
                }
            }
            counters.bytes_scanned += geometry.chunk_bytes;
        }
        if let Some(error) = &exam.failure {
            // One event per stripe at info (the report lists the merged ranges; the summary at
            // the end is the error).
            tracing::info!(%error, "scrub: stripe unrecoverable");
            damaged_devices.sort();
            damaged_devices.dedup();
            tally.add_damaged(DamagedRange {
                volume_offset: item.stripe.0 * geometry.stripe_data_bytes(),
                length: geometry.stripe_data_bytes(),
                devices: damaged_devices,
            });
        }
    });
}

/// A stripe whose chunks verify but disagree: the data chunks are what was written (their
/// checksums say so), so the stripe is rewritten from them. Returns whether it was.
fn scrub_inconsistent(
    target: &impl ScrubTarget,
    item: &LiveStripe,
    repair: bool,
    tally: &mut ScrubTally,
) -> bool {
    let mut found = || {
        tally.stripes_checked += 1;
        tally.inconsistent_stripes += 1;
        tracing::error!(
            stripe = item.stripe.0,
            slot = item.slot.0,
            "scrub: parity or copies disagree with verified data"
        );
    };
    match target.rewrite_stripe(item, repair, &mut found) {
        Ok(rewritten) => rewritten,
        Err(err) => {
            tracing::error!(%err, stripe = item.stripe.0, "scrub: could not rewrite the inconsistent stripe");
            false
        }
    }
}
