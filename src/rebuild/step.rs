//! The rebuild's step machine: one step copies the live slots of the next range (from the
//! watermark) onto a replacement, then advances the watermark; the last step swaps the
//! replacement in.
//!
//! A step holds the live slots it copies ([`RebuildTarget::hold_live_stripes`]): none is
//! handed out again before the step has written it, even if a commit releases it meanwhile.
//! Slot contents never change while live (copy-on-write), so no stripe lock is needed for the
//! batch, and commits and foreground writes go on during a step. A step's slots are cut into batches that go through a three-stage pipeline: reader
//! threads read the next batches' source chunks (one io_uring submission across the devices,
//! requests of up to 1 MiB over runs of adjacent chunks, into aligned buffers so `O_DIRECT`
//! uses them in place), the step's thread verifies and produces the current batch, and
//! writer threads write the previous ones (each batch one submission of up-to-1-MiB writes per run of
//! adjacent cells on the replacement). Sources are picked by a fixed preference of devices,
//! so each device is read in long contiguous runs. Mirror and raid10 shards are copied from a
//! sibling copy as they are, checked against the map; Reed-Solomon shards are reconstructed
//! and checked. Anything missing or failing verification goes through the per-stripe path,
//! which takes the stripe's lock and the careful examination reads use.
//!
//! Writes that land during the rebuild go to the replacement directly (the pool's write path
//! does that): a stripe whose generation is at least the replacement's start generation is
//! skipped. The watermark is checkpointed (by the pool) after the replacement is flushed, so a
//! crash resumes from the last checkpoint.
//!
//! Owns: the choice of what to copy and from where, the batch pipeline, reconstruction and
//! verification of a batch, the per-stripe fallback. Must not touch: pool internals
//! (everything goes through [`RebuildTarget`]); the replacement's state other than through
//! [`Filling`].

use super::{Filling, RebuildTarget, StepOutcome};
use crate::device::{run_batch, AlignedBuf, BatchOp, SharedDevice};
use crate::error::Result;
use crate::geometry::{Geometry, Layout};
use crate::maintenance::{LiveStripe, ShardFinding};
use crate::types::{DeviceIndex, Generation, ShardIndex, SlotId, StripeId};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// Physical slots per rebuild step (`Pool::rebuild_step`): 512 slots of 16 KiB chunks are
/// 8 MiB per device.
const SLOTS_PER_STEP: u64 = 512;
/// Bytes per device of a long step (at least `SLOTS_PER_STEP` slots), what `run_rebuilds` and
/// the background driver take at once: the pipeline drains at the end of every step (its
/// first batch is read with nothing written meanwhile, its last written with nothing read),
/// so longer steps keep the devices busy; 32 MiB per device is four times `SLOTS_PER_STEP`
/// of 16 KiB chunks. Commits are not held off during a step (the slots it copies are held
/// instead), and it yields to foreground I/O between its batches.
const LONG_STEP_BYTES_PER_DEVICE: u64 = 32 << 20;
/// Bytes per device of one batch of the pipeline (at least one slot): 128 slots of 16 KiB
/// chunks, four batches per step.
const BATCH_BYTES_PER_DEVICE: u64 = 2 << 20;
/// Largest single device request: a run of adjacent chunks longer than this is cut, so each
/// device has several requests queued rather than one huge one.
const REQUEST_BYTES_MAX: u64 = 1 << 20;
/// Reader threads of the pipeline: two batches' reads in flight at once, so the devices have
/// a queue while the first batch of a step is read and while a batch is produced.
const READERS: usize = 2;
/// Batches being written to the replacement at once (each one io_uring submission on its own
/// thread): one batch's requests alone leave the disk idle between submissions.
const WRITES_IN_FLIGHT: usize = 2;

/// Rebuild the next batch of stripes of every running rebuild. `checkpoint` persists the
/// watermarks (flush the replacements, then write the superblocks) after the batch.
///
/// # Errors
/// A replacement's write failed (it is abandoned), or a swap-in or the checkpoint failed.
pub(crate) fn step<T: RebuildTarget>(target: &T, checkpoint: bool) -> Result<StepOutcome> {
    step_slots(target, checkpoint, SLOTS_PER_STEP)
}

/// [`step`] over a longer range: `LONG_STEP_BYTES_PER_DEVICE` per device.
///
/// # Errors
/// As [`step`].
pub(crate) fn long_step<T: RebuildTarget>(target: &T, checkpoint: bool) -> Result<StepOutcome> {
    let chunk = target.geometry().chunk_bytes.max(1);
    step_slots(
        target,
        checkpoint,
        (LONG_STEP_BYTES_PER_DEVICE / chunk).max(SLOTS_PER_STEP),
    )
}

/// [`step`] over at most `slots` physical slots per rebuild.
fn step_slots<T: RebuildTarget>(target: &T, checkpoint: bool, slots: u64) -> Result<StepOutcome> {
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
        let (from, to) = rebuild.next_range(slots);
        let _span = tracing::debug_span!("rebuild_step", index = index.0, device = %rebuild.fill.path(), from = from.0, to = to.0).entered();
        let stepped = rebuild.step(from, to)?;
        outcome.written_bytes += stepped.written;
        match stepped.after {
            After::Running | After::Replaced => outcome.running += 1,
            After::Completed(last) => outcome.completed.push(*last),
            After::Abandoned => {}
        }
    }
    if outcome.running == 0 {
        // No rebuild left: give the batch buffers back.
        target.control().buffers().clear();
    } else if checkpoint {
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

/// The source chunks of one batch, as read: every request's bytes in one aligned buffer,
/// request after request.
struct SourceReads {
    buffer: AlignedBuf,
    /// Per request: whether it succeeded.
    ok: Vec<bool>,
    /// (device, chunk offset) → (request, byte offset in `buffer`).
    index: HashMap<(usize, u64), (usize, usize)>,
    /// Bytes of one chunk.
    chunk: usize,
}

impl SourceReads {
    /// The bytes read for the chunk at `offset` of `device`, if its request succeeded.
    fn get(&self, device: DeviceIndex, offset: u64) -> Option<&[u8]> {
        let (request, at) = *self.index.get(&(device.0, offset))?;
        if !*self.ok.get(request)? {
            return None;
        }
        self.buffer.get(at..at + self.chunk)
    }
}

/// The target cells of one batch, produced into one aligned buffer in item order (each item's
/// targets one after another), ready to be written to the replacement.
struct Outputs {
    buffer: AlignedBuf,
    /// Per cell, in buffer order: its offset on the replacement, and whether it was produced
    /// and verified (an item that failed goes the per-stripe way; its cells are not written).
    cells: Vec<(u64, bool)>,
}

/// Reusable buffers of one producing thread: one chunk per shard of a stripe.
struct Scratch {
    shards: Vec<Vec<u8>>,
    present: Vec<bool>,
}

impl<T: RebuildTarget> Rebuild<'_, T> {
    /// The slot range of the next step: from the watermark, at most `slots` slots.
    fn next_range(&self, slots: u64) -> (SlotId, SlotId) {
        let from = self.fill.watermark().0;
        let to = (from + slots.max(1)).min(self.target.geometry().slots);
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

    /// Rebuild the live slots in `from..to` onto the replacement: batch by batch, the next
    /// batches' reads in flight while the current one is produced and written.
    ///
    /// The live slots are held meanwhile (none is handed out again, even if a commit releases
    /// it, until the step is done), so commits and foreground writes go on: a stripe rewritten
    /// during the step lands in another slot, and the pool's write path puts it on the
    /// replacement itself; what the step copies from the old slot is then dead but harmless,
    /// since that slot's cell on the replacement is not reused before the hold is released.
    fn copy_slots(&self, from: SlotId, to: SlotId) -> Result<u64> {
        let target = self.target;
        let geometry = target.geometry();
        // Work: every live slot in range whose stripe still needs copying.
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
        let per_batch =
            usize::try_from((BATCH_BYTES_PER_DEVICE / geometry.chunk_bytes.max(1)).max(1))
                .unwrap_or(1);
        let batches: Vec<&[BatchItem]> = items.chunks(per_batch).collect();
        let result = self.pipeline(&batches);
        target.release_held(&slots);
        result
    }

    /// Run `batches` through the pipeline: `READERS` reader threads read the next batches
    /// while this thread produces batch i and up to `WRITES_IN_FLIGHT` writer threads write
    /// the batches before it to the replacement. A batch's per-stripe fallbacks run once every
    /// write before them has completed and none is in flight, and a failed write stops
    /// everything after it.
    /// Runs in order on this thread alone where work must be sequential (the simulation) or
    /// there is one batch.
    fn pipeline(&self, batches: &[&[BatchItem]]) -> Result<u64> {
        if batches.len() <= 1 || crate::parallel::is_sequential() {
            let mut written = 0;
            for batch in batches {
                let reads = self.read_sources(batch);
                let (outputs, fallback) = self.produce_batch(batch, &reads);
                self.buffers().give(reads.buffer);
                written += self.write_runs(outputs)?;
                written += self.copy_fallback(&fallback)?;
            }
            return Ok(written);
        }
        let readers = READERS.clamp(1, batches.len());
        std::thread::scope(|scope| {
            // Reader `j` reads batches j, j + readers, ...; each has one batch waiting in its
            // channel while it fetches its next.
            let mut receivers = Vec::with_capacity(readers);
            let mut handles = Vec::with_capacity(readers);
            for first in 0..readers {
                let (sender, receiver) = std::sync::mpsc::sync_channel::<SourceReads>(1);
                receivers.push(receiver);
                handles.push(scope.spawn(move || {
                    for batch in batches.iter().skip(first).step_by(readers) {
                        if sender.send(self.read_sources(batch)).is_err() {
                            // The step stopped (a replacement write failed).
                            return;
                        }
                    }
                }));
            }
            // Wait for a batch's write, then run its fallbacks with no other write in flight.
            let join =
                |writing: std::thread::ScopedJoinHandle<'_, Result<u64>>| match writing.join() {
                    Ok(result) => result,
                    // A panic in a writer is a bug; re-raise it on this thread.
                    Err(panic) => std::panic::resume_unwind(panic),
                };
            let settle = |writes: &mut VecDeque<(_, Vec<StripeId>)>| -> Result<u64> {
                let Some((writing, fallback)) = writes.pop_front() else {
                    return Ok(0);
                };
                let written = join(writing)?;
                // Nothing is queued behind a batch with fallbacks (see below): no other write
                // is in flight now.
                Ok(written + self.copy_fallback(&fallback)?)
            };
            let mut written = 0;
            let mut outcome = Ok(());
            let mut writes = VecDeque::new();
            for (i, batch) in batches.iter().enumerate() {
                // A reader that stopped early panicked; its join below re-raises it.
                let Ok(reads) = receivers[i % readers].recv() else {
                    break;
                };
                if i > 0 && self.target.control().foreground_recent() {
                    // The driver's yield between steps, between the batches of a long one.
                    std::thread::sleep(crate::maintenance::YIELD);
                }
                let (outputs, fallback) = self.produce_batch(batch, &reads);
                self.buffers().give(reads.buffer);
                // At most `WRITES_IN_FLIGHT` batches being written, and none queued behind a
                // batch with fallbacks (they run when it is settled, with no write in flight).
                while writes.len() >= WRITES_IN_FLIGHT
                    || writes
                        .iter()
                        .any(|(_, f): &(_, Vec<StripeId>)| !f.is_empty())
                {
                    match settle(&mut writes) {
                        Ok(bytes) => written += bytes,
                        Err(err) => {
                            outcome = Err(err);
                            break;
                        }
                    }
                }
                if outcome.is_err() {
                    break;
                }
                writes.push_back((scope.spawn(move || self.write_runs(outputs)), fallback));
            }
            while !writes.is_empty() {
                match settle(&mut writes) {
                    Ok(bytes) => written += bytes,
                    Err(err) => {
                        outcome = outcome.and(Err(err));
                        break;
                    }
                }
            }
            // Writes still queued after an error: wait for them (their results do not matter:
            // the replacement is abandoned).
            for (writing, _) in writes {
                let _ = join(writing);
            }
            drop(receivers);
            for handle in handles {
                if let Err(panic) = handle.join() {
                    // A panic in a reader is a bug; re-raise it on this thread.
                    std::panic::resume_unwind(panic);
                }
            }
            outcome.map(|()| written)
        })
    }

    /// Which shards to read to produce `targets`: the targets themselves if the device being
    /// replaced is still healthy, else K online shards (Reed-Solomon) or one online copy each.
    /// Among the candidates, devices are preferred in a fixed order (the ones after the
    /// position being rebuilt, cyclically), so consecutive slots read the same devices and
    /// every device is read in long runs.
    fn sources(&self, slot: SlotId, targets: &[ShardIndex]) -> Vec<ShardIndex> {
        let geometry = self.target.geometry();
        let width = geometry.width();
        let devices = geometry.devices;
        let device_of = |shard: usize| geometry.shard_location(slot, ShardIndex(shard)).0;
        let online = |shard: usize| self.target.is_online(device_of(shard));
        let preference = |shard: usize| (device_of(shard).0 + devices - self.index.0) % devices;
        let is_target = |shard: usize| targets.contains(&ShardIndex(shard));
        if targets.iter().all(|t| online(t.0)) {
            return targets.to_vec();
        }
        match geometry.layout {
            Layout::ReedSolomon { .. } => {
                let mut candidates: Vec<usize> = (0..width)
                    .filter(|s| !is_target(*s) && online(*s))
                    .collect();
                candidates.sort_by_key(|s| preference(*s));
                candidates
                    .into_iter()
                    .take(self.target.codec().shards_needed())
                    .map(ShardIndex)
                    .collect()
            }
            Layout::Mirror { .. } | Layout::Raid10 { .. } => targets
                .iter()
                .filter_map(|t| {
                    let group = geometry.shard_data_chunk(*t);
                    (0..width)
                        .filter(|s| {
                            !is_target(*s)
                                && online(*s)
                                && geometry.shard_data_chunk(ShardIndex(*s)) == group
                        })
                        .min_by_key(|s| preference(*s))
                        .map(ShardIndex)
                })
                .collect(),
        }
    }

    /// The rebuild's batch buffers.
    fn buffers(&self) -> &crate::rebuild::BufferCache {
        self.target.control().buffers()
    }

    /// Produce the target cells of one batch whose sources are `reads` into one buffer, split
    /// over the cores; the stripes of items missing a source or failing verification come
    /// back apart, for the per-stripe way.
    fn produce_batch(&self, items: &[BatchItem], reads: &SourceReads) -> (Outputs, Vec<StripeId>) {
        let geometry = self.target.geometry();
        let width = geometry.width();
        let chunk = reads.chunk;
        let cells: usize = items.iter().map(|item| item.targets.len()).sum();
        let mut buffer = self.buffers().take(cells * chunk);
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        // Each part: its items and the part of the buffer their cells go to.
        let mut parts: Vec<parking_lot::Mutex<(&[BatchItem], &mut [u8])>> = Vec::new();
        let mut rest: &mut [u8] = &mut buffer[..cells * chunk];
        for part in items.chunks(items.len().div_ceil(cores).max(1)) {
            let bytes = part.iter().map(|item| item.targets.len()).sum::<usize>() * chunk;
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(bytes);
            parts.push(parking_lot::Mutex::new((part, head)));
            rest = tail;
        }
        let produced: Vec<bool> = crate::parallel::each(&parts, |part| {
            let mut part = part.lock();
            let (items, out) = &mut *part;
            let mut scratch = Scratch {
                shards: vec![vec![0u8; chunk]; width],
                present: vec![false; width],
            };
            let mut at = 0;
            items
                .iter()
                .map(|item| {
                    let bytes = item.targets.len() * chunk;
                    let ok = self.produce(item, reads, &mut scratch, &mut out[at..at + bytes]);
                    at += bytes;
                    ok
                })
                .collect::<Vec<_>>()
        })
        .into_iter()
        .flatten()
        .collect();
        drop(parts);
        let mut outputs = Outputs {
            buffer,
            cells: Vec::with_capacity(cells),
        };
        let mut fallback = Vec::new();
        for (item, ok) in items.iter().zip(produced) {
            if !ok {
                fallback.push(item.live.stripe);
            }
            outputs.cells.extend(
                item.targets
                    .iter()
                    .map(|t| (geometry.shard_location(item.live.slot, *t).1, ok)),
            );
        }
        (outputs, fallback)
    }

    /// Copy `stripes` (batch items that failed) the per-stripe way. Returns the bytes written.
    fn copy_fallback(&self, stripes: &[StripeId]) -> Result<u64> {
        if !stripes.is_empty() {
            tracing::info!(
                stripes = stripes.len(),
                "rebuild: batch items that failed verification go the per-stripe way"
            );
        }
        let mut written = 0;
        for stripe in stripes {
            written += self.copy_stripe(*stripe)?;
        }
        Ok(written)
    }

    /// Read every source chunk of `items` with one batch of requests across the devices: one
    /// request per run of adjacent chunks (cut at `REQUEST_BYTES_MAX`), into aligned buffers.
    /// A request that fails is left out: its items fall back to the per-stripe path, which
    /// reads shard by shard and counts the error exactly.
    fn read_sources(&self, items: &[BatchItem]) -> SourceReads {
        let geometry = self.target.geometry();
        let chunk_bytes = geometry.chunk_bytes;
        let chunk = usize::try_from(chunk_bytes).unwrap_or(0);
        let per_request =
            usize::try_from((REQUEST_BYTES_MAX / chunk_bytes.max(1)).max(1)).unwrap_or(1);
        // (device handle, offset, bytes) of each request; its bytes follow the previous
        // request's in the batch's buffer.
        let mut requests: Vec<(SharedDevice, u64, usize)> = Vec::new();
        let mut index = HashMap::new();
        let mut total = 0;
        for (device, offsets) in source_offsets(geometry, items) {
            let Some(handle) = self.target.member_device(DeviceIndex(device)) else {
                continue;
            };
            for run in crate::maintenance::runs(&offsets, chunk_bytes) {
                for piece in run.chunks(per_request) {
                    for (i, offset) in piece.iter().enumerate() {
                        index.insert((device, *offset), (requests.len(), total + i * chunk));
                    }
                    requests.push((Arc::clone(&handle), piece[0], piece.len() * chunk));
                    total += piece.len() * chunk;
                }
            }
        }
        let mut buffer = self.buffers().take(total);
        let mut rest: &mut [u8] = &mut buffer[..total];
        let mut ops: Vec<BatchOp<'_>> = Vec::with_capacity(requests.len());
        for (handle, offset, len) in &requests {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(*len);
            ops.push(BatchOp::read(&**handle, *offset, head));
            rest = tail;
        }
        run_batch(&mut ops);
        let mut read = 0u64;
        let ok: Vec<bool> = ops
            .iter()
            .map(|op| match &op.result {
                Ok(()) => {
                    read += op.len() as u64;
                    true
                }
                Err(err) => {
                    tracing::debug!(device = %op.device.name(), offset = op.offset, %err, "rebuild source read failed");
                    false
                }
            })
            .collect();
        drop(ops);
        self.fill.count_read(read);
        SourceReads {
            buffer,
            ok,
            index,
            chunk,
        }
    }

    /// Produce the target shards of one batch item from the chunks read into `out` (one
    /// chunk per target, in order); `false` if anything is missing or fails verification (the
    /// caller then takes the per-stripe path). Every byte produced has been checked against
    /// the map's checksums of its target shard.
    fn produce(
        &self,
        item: &BatchItem,
        reads: &SourceReads,
        scratch: &mut Scratch,
        out: &mut [u8],
    ) -> bool {
        let target = self.target;
        let geometry = target.geometry();
        let (slot, entry) = (item.live.slot, &item.live.entry);
        let source_bytes = |shard: ShardIndex| {
            let (device, offset) = geometry.shard_location(slot, shard);
            reads.get(device, offset)
        };
        let chunk = reads.chunk;
        if let Layout::Mirror { .. } | Layout::Raid10 { .. } = geometry.layout {
            // A copy: each target is the bytes of a source of its own chunk (itself, if its
            // device is still healthy), checked against the target's checksums.
            return item
                .targets
                .iter()
                .zip(out.chunks_mut(chunk))
                .all(|(t, cell)| {
                    let group = geometry.shard_data_chunk(*t);
                    let Some(source) = item
                        .sources
                        .iter()
                        .find(|s| geometry.shard_data_chunk(**s) == group)
                    else {
                        return false;
                    };
                    let Some(bytes) = source_bytes(*source) else {
                        return false;
                    };
                    if !target.shard_verifies(slot, entry, *t, bytes) {
                        return false;
                    }
                    cell.copy_from_slice(bytes);
                    true
                });
        }
        let Scratch { shards, present } = scratch;
        present.iter_mut().for_each(|p| *p = false);
        // The sources are not verified one by one: only the target is, after reconstruction.
        // That is as strict: the code is MDS, so a target is a combination of any K shards
        // with no zero coefficient, and a wrong byte in one source makes the same byte of the
        // target wrong; the target's checksums then fail and the stripe goes the per-stripe
        // way (which finds, counts and heals the bad source). It saves K checksum passes per
        // chunk, most of the rebuild's CPU time once its I/O is batched.
        for shard in &item.sources {
            let Some(bytes) = source_bytes(*shard) else {
                return false;
            };
            shards[shard.0].copy_from_slice(bytes);
            present[shard.0] = true;
        }
        if !item.targets.iter().all(|t| present[t.0])
            && !target.codec().reconstruct(shards, present)
        {
            return false;
        }
        item.targets
            .iter()
            .zip(out.chunks_mut(chunk))
            .all(|(t, cell)| {
                if !target.shard_verifies(slot, entry, *t, &shards[t.0]) {
                    return false;
                }
                cell.copy_from_slice(&shards[t.0]);
                true
            })
    }

    /// Write the produced cells of `outputs` to the replacement with one batch of requests:
    /// one per run of adjacent cells (cut at `REQUEST_BYTES_MAX`), straight from the batch's
    /// aligned buffer. Returns the bytes written.
    fn write_runs(&self, outputs: Outputs) -> Result<u64> {
        let chunk_bytes = self.target.geometry().chunk_bytes;
        let chunk = usize::try_from(chunk_bytes).unwrap_or(0);
        let per_request =
            usize::try_from((REQUEST_BYTES_MAX / chunk_bytes.max(1)).max(1)).unwrap_or(1);
        let cells = &outputs.cells;
        let mut writes: Vec<(u64, &[u8])> = Vec::new();
        let mut i = 0;
        while i < cells.len() {
            if !cells[i].1 {
                i += 1;
                continue;
            }
            let start = i;
            i += 1;
            while i < cells.len()
                && cells[i].1
                && cells[i].0 == cells[i - 1].0 + chunk_bytes
                && i - start < per_request
            {
                i += 1;
            }
            writes.push((cells[start].0, &outputs.buffer[start * chunk..i * chunk]));
        }
        let result = if writes.is_empty() {
            Ok(0)
        } else {
            self.target
                .fill_writes(self.index, &self.fill, &writes)
                .map(|()| writes.iter().map(|(_, bytes)| bytes.len() as u64).sum())
        };
        drop(writes);
        self.buffers().give(outputs.buffer);
        let written = result?;
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
