//! The rebuild's step machine: one step copies the live slots of the next range (from the
//! watermark) onto a replacement, then advances the watermark; the last step swaps the
//! replacement in.
//!
//! A batch holds commits off throughout ([`RebuildTarget::without_commits`]): no slot that is
//! live now can be freed and reused by a foreground write before the batch has written it.
//! Slot contents never change while live (copy-on-write), so no stripe lock is needed for the
//! batch: every source chunk is read with one read per run of adjacent chunks on each device,
//! verified, reconstructed if the position's own device is out of service, verified again, and
//! written with one write per run on the replacement. Anything that fails verification goes
//! through the per-stripe path, which takes the stripe's lock and the careful examination reads
//! use.
//!
//! Writes that land during the rebuild go to the replacement directly (the pool's write path
//! does that): a stripe whose generation is at least the replacement's start generation is
//! skipped. The watermark is checkpointed (by the pool) after the replacement is flushed, so a
//! crash resumes from the last checkpoint.
//!
//! Owns: the choice of what to copy and from where, reconstruction and verification of a
//! batch, the per-stripe fallback. Must not touch: pool internals (everything goes through
//! [`RebuildTarget`]); the replacement's state other than through [`Filling`].

use super::{Filling, RebuildTarget, StepOutcome};
use crate::error::Result;
use crate::geometry::{Geometry, Layout};
use crate::maintenance::{LiveStripe, ShardFinding};
use crate::types::{DeviceIndex, Generation, ShardIndex, SlotId, StripeId};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Physical slots per rebuild step: 512 slots of 16 KiB chunks are 8 MiB per device. A step
/// holds commits off, so it is kept short; measured on this machine, 1024 and 2048 were no
/// faster.
const SLOTS_PER_STEP: u64 = 512;
/// Sub-batches of a step processed concurrently.
const SUB_BATCHES: usize = 4;

/// Rebuild the next batch of stripes of every running rebuild. `checkpoint` persists the
/// watermarks (flush the replacements, then write the superblocks) after the batch.
///
/// # Errors
/// A replacement's write failed (it is abandoned), or a swap-in or the checkpoint failed.
pub(crate) fn step<T: RebuildTarget>(target: &T, checkpoint: bool) -> Result<StepOutcome> {
    let mut outcome = StepOutcome::default();
    for index in (0..target.geometry().devices).map(DeviceIndex) {
        let Some(fill) = target.fill_of(index) else {
            continue;
        };
        let rebuild = Rebuild {
            target,
            index,
            fill,
        };
        let (from, to) = rebuild.next_range();
        let _span = tracing::debug_span!("rebuild_step", index = index.0, device = %rebuild.fill.path(), from = from.0, to = to.0).entered();
        let stepped = rebuild.step(from, to)?;
        outcome.written_bytes += stepped.written;
        match stepped.after {
            After::Running | After::Replaced => outcome.running += 1,
            After::Completed(last) => outcome.completed.push(*last),
            After::Abandoned => {}
        }
    }
    if checkpoint && outcome.running > 0 {
        target.checkpoint()?;
    }
    Ok(outcome)
}

/// One rebuild: filling `fill` to take over position `index`. Its cursor (the watermark) and
/// counters live in `fill`, which the pool's write path and checkpoints share.
pub(crate) struct Rebuild<'a, T: RebuildTarget> {
    target: &'a T,
    index: DeviceIndex,
    fill: Arc<T::Fill>,
}

/// What one step of a rebuild did.
struct Stepped {
    /// Bytes written to the replacement.
    written: u64,
    /// Where the rebuild is now.
    after: After,
}

/// Where a rebuild is after a step.
enum After {
    /// More slots to copy.
    Running,
    /// Filled and swapped in; its final progress.
    Completed(Box<crate::rebuild::RebuildProgress>),
    /// Abandoned during its last step, and another replacement attached (it starts next step).
    Replaced,
    /// Abandoned during its last step.
    Abandoned,
}

/// One live slot of a rebuild batch.
struct BatchItem {
    live: LiveStripe,
    targets: Vec<ShardIndex>,
    sources: Vec<ShardIndex>,
}

/// A chunk to write to the replacement: device offset and bytes.
type Cell = (u64, Vec<u8>);

impl<T: RebuildTarget> Rebuild<'_, T> {
    /// The slot range of the next step: from the watermark, at most `SLOTS_PER_STEP` slots.
    fn next_range(&self) -> (SlotId, SlotId) {
        let from = self.fill.watermark().0;
        let to = (from + SLOTS_PER_STEP).min(self.target.geometry().slots);
        (SlotId(from), SlotId(to))
    }

    /// Copy the live slots in `from..to`, advance the watermark to `to`, and at the end swap
    /// the replacement in.
    fn step(&self, from: SlotId, to: SlotId) -> Result<Stepped> {
        let written = self.copy_slots(from, to)?;
        tracing::debug!(written, "rebuild step done");
        self.fill.set_watermark(to);
        if to.0 < self.target.geometry().slots {
            return Ok(Stepped {
                written,
                after: After::Running,
            });
        }
        let last = self.target.progress(self.index, &self.fill);
        let after = if self.target.swap_in(self.index, &self.fill)? {
            After::Completed(Box::new(last))
        } else if self.target.fill_of(self.index).is_some() {
            After::Replaced
        } else {
            After::Abandoned
        };
        Ok(Stepped { written, after })
    }

    /// Rebuild the live slots in `from..to` onto the replacement, with one read per run of
    /// adjacent source chunks on each device and one write per run on the replacement, commits
    /// held off throughout.
    fn copy_slots(&self, from: SlotId, to: SlotId) -> Result<u64> {
        let target = self.target;
        let geometry = target.geometry();
        target.without_commits(|| {
            // Work: every live slot in range whose stripe still needs copying. A stripe
            // rewritten twice within one epoch frees its previous slot at once; the slots are
            // held so none is handed out (and its cell on the replacement overwritten by a new
            // stripe) before this batch has written it.
            let live = target.hold_live_stripes(from, to, |live| {
                needs_rebuild(&*self.fill, live.entry.generation)
                    && !shards_on(geometry, live.slot, self.index).is_empty()
            });
            if live.is_empty() {
                return Ok(0);
            }
            let slots: Vec<SlotId> = live.iter().map(|live| live.slot).collect();
            let items: Vec<BatchItem> = live
                .into_iter()
                .map(|live| {
                    let targets = shards_on(geometry, live.slot, self.index);
                    let sources = self.sources(live.slot, &targets);
                    BatchItem {
                        live,
                        targets,
                        sources,
                    }
                })
                .collect();
            // A few sub-batches at once, so one's reads overlap another's reconstruction and
            // writes.
            let parts: Vec<&[BatchItem]> = items
                .chunks(items.len().div_ceil(SUB_BATCHES).max(1))
                .collect();
            let result = crate::parallel::each(&parts, |part| self.copy_items(part))
                .into_iter()
                .sum::<Result<u64>>();
            target.release_held(&slots);
            result
        })
    }

    /// Which shards to read to produce `targets`: the targets themselves if the device being
    /// replaced is still healthy, else K online shards (Reed-Solomon) or one online copy each.
    fn sources(&self, slot: SlotId, targets: &[ShardIndex]) -> Vec<ShardIndex> {
        let geometry = self.target.geometry();
        let width = geometry.width();
        let online = |shard: usize| {
            let (device, _) = geometry.shard_location(slot, ShardIndex(shard));
            self.target.is_online(device)
        };
        let is_target = |shard: usize| targets.contains(&ShardIndex(shard));
        if targets.iter().all(|t| online(t.0)) {
            return targets.to_vec();
        }
        match geometry.layout {
            Layout::ReedSolomon { .. } => (0..width)
                .filter(|s| !is_target(*s) && online(*s))
                .take(self.target.codec().shards_needed())
                .map(ShardIndex)
                .collect(),
            Layout::Mirror { .. } | Layout::Raid10 { .. } => targets
                .iter()
                .filter_map(|t| {
                    let group = geometry.shard_data_chunk(*t);
                    (0..width)
                        .find(|s| {
                            !is_target(*s)
                                && online(*s)
                                && geometry.shard_data_chunk(ShardIndex(*s)) == group
                        })
                        .map(ShardIndex)
                })
                .collect(),
        }
    }

    /// The I/O of one sub-batch (see `copy_slots`): read, produce, write; items that fail
    /// verification go the per-stripe way.
    fn copy_items(&self, items: &[BatchItem]) -> Result<u64> {
        let cells = self.read_sources(items);
        // Verify, reconstruct and verify again, per slot, split over the cores.
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let parts: Vec<&[BatchItem]> = items.chunks(items.len().div_ceil(cores).max(1)).collect();
        let produced: Vec<std::result::Result<Vec<Cell>, StripeId>> =
            crate::parallel::each(&parts, |part| {
                part.iter()
                    .map(|item| self.produce(item, &cells).ok_or(item.live.stripe))
                    .collect::<Vec<_>>()
            })
            .into_iter()
            .flatten()
            .collect();
        let mut outputs: Vec<Cell> = Vec::new();
        let mut fallback = Vec::new();
        for result in produced {
            match result {
                Ok(cells) => outputs.extend(cells),
                Err(stripe) => fallback.push(stripe),
            }
        }
        let mut written = self.write_runs(outputs)?;
        if !fallback.is_empty() {
            tracing::info!(
                stripes = fallback.len(),
                "rebuild: batch items that failed verification go the per-stripe way"
            );
        }
        for stripe in fallback {
            written += self.copy_stripe(stripe)?;
        }
        Ok(written)
    }

    /// Read every source chunk of `items`, coalesced into runs per device, in parallel across
    /// devices. A run that fails to read is left out: its items fall back to the per-stripe
    /// path, which reads shard by shard and counts the error exactly.
    fn read_sources(&self, items: &[BatchItem]) -> BTreeMap<(usize, u64), Vec<u8>> {
        let geometry = self.target.geometry();
        let chunk = usize::try_from(geometry.chunk_bytes).unwrap_or(0);
        let wanted = source_offsets(geometry, items);
        let cells: BTreeMap<(usize, u64), Vec<u8>> =
            crate::parallel::each(&wanted, |(device, offsets)| {
                let device = *device;
                let mut out = Vec::new();
                let Some(handle) = self.target.member_device(DeviceIndex(device)) else {
                    return out;
                };
                for run in crate::maintenance::runs(offsets, geometry.chunk_bytes) {
                    let mut buf = vec![0u8; run.len() * chunk];
                    if let Err(err) = handle.read_at(run[0], &mut buf) {
                        tracing::debug!(device, offset = run[0], %err, "rebuild run read failed");
                        continue;
                    }
                    for (i, offset) in run.iter().enumerate() {
                        out.push(((device, *offset), buf[i * chunk..(i + 1) * chunk].to_vec()));
                    }
                }
                out
            })
            .into_iter()
            .flatten()
            .collect();
        self.fill
            .count_read(cells.len() as u64 * geometry.chunk_bytes);
        cells
    }

    /// Produce the target shards of one batch item from the cells read, or `None` if anything
    /// is missing or fails verification (the caller then takes the per-stripe path).
    fn produce(
        &self,
        item: &BatchItem,
        cells: &BTreeMap<(usize, u64), Vec<u8>>,
    ) -> Option<Vec<Cell>> {
        let target = self.target;
        let geometry = target.geometry();
        let (slot, entry) = (item.live.slot, &item.live.entry);
        let width = geometry.width();
        let chunk = usize::try_from(geometry.chunk_bytes).ok()?;
        let mut shards = vec![vec![0u8; chunk]; width];
        let mut present = vec![false; width];
        for shard in &item.sources {
            let (device, offset) = geometry.shard_location(slot, *shard);
            let bytes = cells.get(&(device.0, offset))?;
            if !target.shard_verifies(slot, entry, *shard, bytes) {
                return None;
            }
            shards[shard.0].copy_from_slice(bytes);
            present[shard.0] = true;
        }
        if !item.targets.iter().all(|t| present[t.0])
            && !target.codec().reconstruct(&mut shards, &mut present)
        {
            return None;
        }
        item.targets
            .iter()
            .map(|t| {
                let verified = target.shard_verifies(slot, entry, *t, &shards[t.0]);
                verified.then(|| (geometry.shard_location(slot, *t).1, shards[t.0].clone()))
            })
            .collect()
    }

    /// Write `outputs` to the replacement, one write per run of adjacent cells. Returns the
    /// bytes written.
    fn write_runs(&self, mut outputs: Vec<Cell>) -> Result<u64> {
        let chunk_bytes = self.target.geometry().chunk_bytes;
        let chunk = usize::try_from(chunk_bytes).unwrap_or(0);
        outputs.sort_unstable_by_key(|(offset, _)| *offset);
        let mut written = 0u64;
        let offsets: Vec<u64> = outputs.iter().map(|(o, _)| *o).collect();
        let mut position = 0;
        for run in crate::maintenance::runs(&offsets, chunk_bytes) {
            let mut buf = Vec::with_capacity(run.len() * chunk);
            for (_, bytes) in &outputs[position..position + run.len()] {
                buf.extend_from_slice(bytes);
            }
            position += run.len();
            self.target
                .fill_write(self.index, &self.fill, run[0], &buf)?;
            written += buf.len() as u64;
        }
        self.fill.count_written(written);
        Ok(written)
    }

    /// The slow, careful path for one stripe (a batch item failed verification), under the
    /// stripe's lock: read every shard, heal what is bad, reconstruct. A stripe beyond repair
    /// does not stop the rebuild: a target shard that still verifies on the old member is
    /// copied (the new member keeps all the stripe still has), one that does not is counted
    /// lost, and the rebuild goes on.
    fn copy_stripe(&self, stripe: StripeId) -> Result<u64> {
        let target = self.target;
        let geometry = target.geometry();
        target.with_stripe_locked(stripe, |entry| {
            let Some(slot) = entry.slot else { return Ok(0) };
            if !needs_rebuild(&*self.fill, entry.generation) {
                return Ok(0);
            }
            let targets = shards_on(geometry, slot, self.index);
            if targets.is_empty() {
                return Ok(0);
            }
            let exam = target.examine(stripe, slot, &entry, true);
            self.fill
                .count_read(geometry.width() as u64 * geometry.chunk_bytes);
            if let Some(error) = &exam.failure {
                tracing::info!(%error, "rebuild: stripe beyond repair; copying what still verifies");
            }
            let mut written = 0;
            for shard in targets {
                if !exam.recovered() && exam.findings[shard.0] != ShardFinding::Good {
                    self.fill.count_lost();
                    continue;
                }
                let (_, offset) = geometry.shard_location(slot, shard);
                self.target
                    .fill_write(self.index, &self.fill, offset, &exam.shards[shard.0])?;
                written += geometry.chunk_bytes;
            }
            self.fill.count_written(written);
            Ok(written)
        })
    }
}

/// Device → sorted, distinct offsets of every source chunk of `items`.
fn source_offsets(geometry: &Geometry, items: &[BatchItem]) -> Vec<(usize, Vec<u64>)> {
    let mut wanted: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for item in items {
        for shard in &item.sources {
            let (device, offset) = geometry.shard_location(item.live.slot, *shard);
            wanted.entry(device.0).or_default().push(offset);
        }
    }
    wanted
        .into_iter()
        .map(|(device, mut offsets)| {
            offsets.sort_unstable();
            offsets.dedup();
            (device, offsets)
        })
        .collect()
}

/// The shards of the stripe in `slot` that live on position `index`.
pub(crate) fn shards_on(geometry: &Geometry, slot: SlotId, index: DeviceIndex) -> Vec<ShardIndex> {
    (0..geometry.width())
        .map(ShardIndex)
        .filter(|s| geometry.shard_location(slot, *s).0 == index)
        .collect()
}

/// Whether a stripe written at `generation` still has to be copied to the replacement.
pub(crate) fn needs_rebuild(fill: &impl Filling, generation: Generation) -> bool {
    generation < fill.start_generation()
}
