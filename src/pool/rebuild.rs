//! Rebuild: filling a replacement device so it can take over a data position.
//!
//! The stripe map says exactly which stripes hold data, so a rebuild visits only those, in
//! stripe order, one batch per [`PoolInner::rebuild_step`]; its cost scales with live data, not
//! with device size. For each stripe with a shard on the position (under the stripe's lock, so it
//! cannot change meanwhile) the shard is fetched from the device being replaced if that one is
//! still healthy, otherwise reconstructed from the others, verified against the map, and written
//! to the replacement at the same offset.
//!
//! Writes that land during the rebuild go to the replacement directly (see `PoolInner::write_batch`):
//! a stripe whose generation is at least the replacement's `start_generation` is skipped. The
//! watermark (`next_slot`) is checkpointed in the superblocks after the replacement is flushed,
//! so a crash resumes from the last checkpoint. When the watermark reaches the end, the
//! replacement is flushed and swapped in, and the superblocks record it as the member.

use super::{Identity, PoolInner, Replacement};
use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::format::MapEntry;
use crate::types::{DeviceIndex, ShardIndex, SlotId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Physical slots per rebuild step: 512 slots of 16 KiB chunks are 8 MiB per device. A step
/// holds the meta mutex (commits wait), so it is kept short; measured on this machine, 1024 and
/// 2048 were no faster.
const SLOTS_PER_STEP: u64 = 512;
/// Sub-batches of a step processed concurrently.
const SUB_BATCHES: usize = 4;

/// Progress of one rebuild, for `status` and the API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RebuildProgress {
    /// Data position being rebuilt.
    pub index: usize,
    /// The device being replaced.
    pub replacing: String,
    /// The device being filled.
    pub device: String,
    /// Bytes written to the new device in this run.
    pub done_bytes: u64,
    /// Bytes this run has to write in all.
    pub total_bytes: u64,
    /// Bytes read from the other devices in this run.
    pub read_bytes: u64,
    /// Physical slots below this are done.
    pub next_slot: u64,
    /// Physical slots in the pool.
    pub slots: u64,
    /// Average rate of this run, bytes per second.
    pub rate_bytes_per_s: u64,
    /// Estimated seconds to go.
    pub eta_secs: Option<u64>,
    /// Chunks that could not be rebuilt (their stripe had more damage than redundancy): the
    /// same data is already lost on the pool; the rebuild goes on past it.
    pub lost_chunks: u64,
}

/// What one rebuild step did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepOutcome {
    /// Bytes written to replacements.
    pub written_bytes: u64,
    /// Final progress of the rebuilds that completed in this step.
    pub completed: Vec<RebuildProgress>,
    /// Rebuilds still running after this step.
    pub running: usize,
}

impl PoolInner {
    /// Start replacing position `index` with `device` (already labelled as a member of this pool
    /// by the caller's superblock write).
    pub(crate) fn attach_replacement(
        &self,
        index: DeviceIndex,
        identity: Identity,
        device: SharedDevice,
        from_spare: bool,
    ) -> Result<()> {
        if index.0 >= self.members.data.len() {
            return Err(Error::InvalidConfig(format!(
                "no data position {}",
                index.0
            )));
        }
        if device.size() < self.geometry.device_bytes {
            return Err(Error::DeviceTooSmall {
                device: device.name(),
                size: device.size(),
                needed: self.geometry.device_bytes,
            });
        }
        if let Some(existing) = self.members.get(index).replacement() {
            return Err(Error::InvalidConfig(format!(
                "position {} is already being replaced by {}",
                index.0, existing.identity.path
            )));
        }
        {
            // Wait for writes that hold a generation but have not installed their entry yet;
            // then, under the map lock, every generation handed out after this point belongs
            // to a write that sees the replacement attached.
            let _no_writes_in_flight = self.attach_lock.write();
            let state = self.map.lock();
            let replacement =
                Replacement::new(identity, device, 0, state.next_generation + 1, from_spare);
            self.members
                .attach_replacement(index, Arc::new(replacement));
        }
        if let Some(replacement) = self.members.get(index).replacement() {
            self.estimate_total(index, &replacement);
            tracing::info!(index = index.0, device = %replacement.identity.path, total_bytes = replacement.total_bytes.load(Ordering::Relaxed), "rebuild started");
        }
        self.members.write_superblocks()?;
        Ok(())
    }

    /// Count the bytes the rebuild of `index` will write from its watermark on.
    pub(crate) fn estimate_total(&self, index: DeviceIndex, replacement: &Replacement) {
        let from = replacement.next_slot.load(Ordering::Acquire);
        let state = self.map.lock();
        let mut total = 0u64;
        for stripe in state.map.written_stripes() {
            let entry = state.map.get(stripe);
            if let Some(slot) = entry.slot.filter(|s| s.0 >= from) {
                if needs_rebuild(replacement, entry.generation.0) {
                    total += self.shards_on(slot, index).len() as u64 * self.geometry.chunk_bytes;
                }
            }
        }
        replacement.total_bytes.store(total, Ordering::Relaxed);
    }

    fn shards_on(&self, slot: SlotId, index: DeviceIndex) -> Vec<ShardIndex> {
        (0..self.geometry.width())
            .map(ShardIndex)
            .filter(|s| self.geometry.shard_location(slot, *s).0 == index)
            .collect()
    }

    /// Attach an available spare to every faulted or degraded position that has no
    /// replacement yet (a degraded member keeps serving while the spare is filled, so
    /// redundancy never drops).
    pub(crate) fn assign_spares(&self) {
        if self.members.read_only() {
            return;
        }
        // Faulted positions first (they have lost their redundancy), then degraded ones.
        let faulted = self.members.data.iter().filter(|m| !m.is_online());
        let degraded = self
            .members
            .data
            .iter()
            .filter(|m| m.is_online() && m.degraded_reason().is_some());
        for member in faulted.chain(degraded) {
            if member.replacement().is_some() {
                continue;
            }
            let Some((identity, device)) = self.members.take_spare() else {
                return;
            };
            let path = identity.path.clone();
            if let Err(err) =
                self.attach_replacement(member.index, identity.clone(), device.clone(), true)
            {
                tracing::error!(%err, spare = %path, "could not start a rebuild onto the spare");
                self.members.push_spare(super::Spare {
                    identity,
                    device: Some(device),
                    fault: Some(format!("unusable: {err}")),
                });
            } else {
                tracing::warn!(index = member.index.0, spare = %path, "spare attached; rebuilding in the background");
            }
        }
    }

    /// Rebuild the next batch of stripes of every running rebuild. `checkpoint` persists the
    /// watermarks (flush the replacements, then write the superblocks) after the batch.
    pub(crate) fn rebuild_step(&self, checkpoint: bool) -> Result<StepOutcome> {
        let mut outcome = StepOutcome::default();
        for member in &self.members.data {
            let Some(replacement) = member.replacement() else {
                continue;
            };
            let from = replacement.next_slot.load(Ordering::Acquire);
            let to = (from + SLOTS_PER_STEP).min(self.geometry.slots);
            let _span = tracing::debug_span!("rebuild_step", index = member.index.0, device = %replacement.identity.path, from, to).entered();
            let written = self.rebuild_slots(member.index, &replacement, from, to)?;
            tracing::debug!(written, "rebuild step done");
            outcome.written_bytes += written;
            replacement.next_slot.store(to, Ordering::Release);
            if to >= self.geometry.slots {
                let last = self.progress_of(member, &replacement);
                if self.finish_rebuild(member.index, &replacement)? {
                    outcome.completed.push(last);
                } else if member.replacement().is_some() {
                    outcome.running += 1; // another replacement took its place; it starts next step
                }
            } else {
                outcome.running += 1;
            }
        }
        if checkpoint && outcome.running > 0 {
            self.checkpoint_rebuilds()?;
        }
        Ok(outcome)
    }

    /// Rebuild the live slots in `from..to` onto the replacement of `index`, with one read per
    /// run of adjacent source chunks on each device and one write per run on the replacement.
    ///
    /// The meta mutex is held throughout: no commit can complete, so no slot that is live now
    /// can be freed and reused by a foreground write before this batch has written it. Slot
    /// contents never change while live (copy-on-write), so no stripe lock is needed; anything
    /// that fails verification goes through the per-stripe path, which takes the lock.
    fn rebuild_slots(
        &self,
        index: DeviceIndex,
        replacement: &Replacement,
        from: u64,
        to: u64,
    ) -> Result<u64> {
        let _no_commit = self.meta.lock();
        // Work: every live slot in range whose stripe still needs copying, with its sources.
        let items: Vec<BatchItem> = {
            let mut state = self.map.lock();
            let items = self.batch_items(&state, index, replacement, from, to);
            // A stripe rewritten twice within one epoch frees its previous slot at once; hold
            // these so none is handed out (and its cell on the replacement overwritten by a new
            // stripe) before this batch has written it.
            state
                .held_for_rebuild
                .extend(items.iter().map(|item| item.slot.0));
            items
        };
        if items.is_empty() {
            return Ok(0);
        }
        // A few sub-batches at once, so one's reads overlap another's reconstruction and writes.
        let parts: Vec<&[BatchItem]> = items
            .chunks(items.len().div_ceil(SUB_BATCHES).max(1))
            .collect();
        let result =
            super::parallel::each(&parts, |part| self.rebuild_items(index, replacement, part))
                .into_iter()
                .sum::<Result<u64>>();
        let mut state = self.map.lock();
        for item in &items {
            state.held_for_rebuild.remove(&item.slot.0);
        }
        result
    }

    /// The live slots in `from..to` that the replacement of `index` still needs, with the
    /// shards to read for each.
    fn batch_items(
        &self,
        state: &super::MapState,
        index: DeviceIndex,
        replacement: &Replacement,
        from: u64,
        to: u64,
    ) -> Vec<BatchItem> {
        (from..to)
            .filter_map(|slot| {
                let stripe = state.stripe_in(slot)?;
                let entry = state.map.get(stripe);
                if !needs_rebuild(replacement, entry.generation.0) {
                    return None;
                }
                let targets = self.shards_on(SlotId(slot), index);
                if targets.is_empty() {
                    return None;
                }
                let sources = self.rebuild_sources(SlotId(slot), &targets);
                Some(BatchItem {
                    stripe,
                    slot: SlotId(slot),
                    entry,
                    targets,
                    sources,
                })
            })
            .collect()
    }

    /// Device → sorted, distinct offsets of every source chunk of `items`.
    fn source_offsets(&self, items: &[BatchItem]) -> Vec<(usize, Vec<u64>)> {
        let mut wanted: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for item in items {
            for shard in &item.sources {
                let (device, offset) = self.geometry.shard_location(item.slot, *shard);
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

    /// The I/O of one rebuild batch (see `rebuild_slots`).
    fn rebuild_items(
        &self,
        index: DeviceIndex,
        replacement: &Replacement,
        items: &[BatchItem],
    ) -> Result<u64> {
        let chunk = usize::try_from(self.geometry.chunk_bytes).unwrap_or(0);
        // Read every source chunk, coalesced into runs per device, in parallel across devices.
        let wanted = self.source_offsets(items);
        let cells: BTreeMap<(usize, u64), Vec<u8>> =
            super::parallel::each(&wanted, |(device, offsets)| {
                let device = *device;
                let member = self.members.get(DeviceIndex(device));
                let mut out = Vec::new();
                let Some(handle) = member.device() else {
                    return out;
                };
                for run in runs(offsets, self.geometry.chunk_bytes) {
                    let mut buf = vec![0u8; run.len() * chunk];
                    if let Err(err) = handle.read_at(run[0], &mut buf) {
                        // Leave the cells out: the items fall back to the per-stripe path,
                        // which reads shard by shard and counts the error exactly.
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
        let read: u64 = cells.len() as u64 * self.geometry.chunk_bytes;
        replacement.bytes_read.fetch_add(read, Ordering::Relaxed);
        // Verify, reconstruct and verify again, per slot, split over the cores.
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let parts: Vec<&[BatchItem]> = items.chunks(items.len().div_ceil(cores).max(1)).collect();
        let produced: Vec<std::result::Result<Vec<Cell>, u64>> =
            super::parallel::each(&parts, |part| {
                part.iter()
                    .map(|item| self.rebuild_from_cells(item, &cells).ok_or(item.stripe))
                    .collect::<Vec<_>>()
            })
            .into_iter()
            .flatten()
            .collect();
        let mut outputs: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut fallback = Vec::new();
        for result in produced {
            match result {
                Ok(cells) => outputs.extend(cells),
                Err(stripe) => fallback.push(stripe),
            }
        }
        outputs.sort_unstable_by_key(|(offset, _)| *offset);
        let mut written = 0u64;
        let offsets: Vec<u64> = outputs.iter().map(|(o, _)| *o).collect();
        let mut position = 0;
        for run in runs(&offsets, self.geometry.chunk_bytes) {
            let mut buf = Vec::with_capacity(run.len() * chunk);
            for (_, bytes) in &outputs[position..position + run.len()] {
                buf.extend_from_slice(bytes);
            }
            position += run.len();
            if let Err(err) = replacement.device.write_at(run[0], &buf) {
                self.members
                    .abandon_replacement(index, &format!("write failed: {err}"));
                return Err(Error::Io {
                    device: replacement.identity.path.clone(),
                    offset: Some(run[0]),
                    source: err.into_io(),
                });
            }
            written += buf.len() as u64;
        }
        replacement
            .bytes_written
            .fetch_add(written, Ordering::Relaxed);
        if !fallback.is_empty() {
            tracing::info!(
                stripes = fallback.len(),
                "rebuild: batch items that failed verification go the per-stripe way"
            );
        }
        for stripe in fallback {
            written += self.rebuild_stripe(index, replacement, stripe)?;
        }
        Ok(written)
    }

    /// Which shards to read to produce `targets`: the targets themselves if the device being
    /// replaced is still healthy, else K online shards (Reed-Solomon) or one online copy each.
    fn rebuild_sources(&self, slot: SlotId, targets: &[ShardIndex]) -> Vec<ShardIndex> {
        let width = self.geometry.width();
        let online = |shard: usize| {
            let (device, _) = self.geometry.shard_location(slot, ShardIndex(shard));
            self.members.get(device).is_online()
        };
        let is_target = |shard: usize| targets.contains(&ShardIndex(shard));
        if targets.iter().all(|t| online(t.0)) {
            return targets.to_vec();
        }
        match self.geometry.layout {
            crate::geometry::Layout::ReedSolomon { .. } => (0..width)
                .filter(|s| !is_target(*s) && online(*s))
                .take(self.codec.shards_needed())
                .map(ShardIndex)
                .collect(),
            crate::geometry::Layout::Mirror { .. } | crate::geometry::Layout::Raid10 { .. } => {
                targets
                    .iter()
                    .filter_map(|t| {
                        let group = self.geometry.shard_data_chunk(*t);
                        (0..width)
                            .find(|s| {
                                !is_target(*s)
                                    && online(*s)
                                    && self.geometry.shard_data_chunk(ShardIndex(*s)) == group
                            })
                            .map(ShardIndex)
                    })
                    .collect()
            }
        }
    }

    /// Produce the target shards of one batch item from the cells read, or `None` if anything
    /// is missing or fails verification (the caller then takes the per-stripe path).
    fn rebuild_from_cells(
        &self,
        item: &BatchItem,
        cells: &BTreeMap<(usize, u64), Vec<u8>>,
    ) -> Option<Vec<(u64, Vec<u8>)>> {
        let width = self.geometry.width();
        let chunk = usize::try_from(self.geometry.chunk_bytes).ok()?;
        let mut shards = vec![vec![0u8; chunk]; width];
        let mut present = vec![false; width];
        for shard in &item.sources {
            let (device, offset) = self.geometry.shard_location(item.slot, *shard);
            let bytes = cells.get(&(device.0, offset))?;
            if !self.shard_verifies(item.slot, &item.entry, shard.0, bytes) {
                return None;
            }
            shards[shard.0].copy_from_slice(bytes);
            present[shard.0] = true;
        }
        if !item.targets.iter().all(|t| present[t.0])
            && !self.codec.reconstruct(&mut shards, &mut present)
        {
            return None;
        }
        item.targets
            .iter()
            .map(|t| {
                let verified = self.shard_verifies(item.slot, &item.entry, t.0, &shards[t.0]);
                verified.then(|| {
                    (
                        self.geometry.shard_location(item.slot, *t).1,
                        shards[t.0].clone(),
                    )
                })
            })
            .collect()
    }

    /// Persist the rebuild watermarks: replacements flushed first, then the superblocks.
    pub(crate) fn checkpoint_rebuilds(&self) -> Result<()> {
        // Capture the watermarks first: everything below them was written before the commit's
        // flush (which covers replacements, and abandons one whose flush fails).
        let watermarks: Vec<(Arc<Replacement>, u64)> = self
            .members
            .data
            .iter()
            .filter_map(|member| member.replacement())
            .map(|r| {
                let watermark = r.next_slot.load(Ordering::Acquire);
                (r, watermark)
            })
            .collect();
        // The batches skipped slots the in-memory map had already moved away from; the durable
        // map must not still point at one of them, or a crash would resume past a slot that was
        // never copied. A commit makes the durable map at least as new as every batch saw.
        self.commit()?;
        for (replacement, watermark) in watermarks {
            replacement.durable_slot.store(watermark, Ordering::Release);
        }
        self.members.write_superblocks()?;
        Ok(())
    }

    fn rebuild_stripe(
        &self,
        index: DeviceIndex,
        replacement: &Replacement,
        stripe: u64,
    ) -> Result<u64> {
        let _guard = self.stripe_lock(stripe).lock();
        let entry = self.map.lock().map.get(stripe);
        let Some(slot) = entry.slot else { return Ok(0) };
        if !needs_rebuild(replacement, entry.generation.0) {
            return Ok(0);
        }
        let targets = self.shards_on(slot, index);
        if targets.is_empty() {
            return Ok(0);
        }
        // The slow, careful path (a batch item failed verification): read every shard, heal
        // what is bad, reconstruct. A stripe beyond repair does not stop the rebuild: a target
        // shard that still verifies on the old member is copied (the new member keeps all the
        // stripe still has), one that does not is counted lost, and the rebuild goes on.
        let exam = self.examine_stripe(slot, &entry, Vec::new(), true);
        replacement.bytes_read.fetch_add(
            self.geometry.width() as u64 * self.geometry.chunk_bytes,
            Ordering::Relaxed,
        );
        if !exam.recovered {
            tracing::info!(error = %self.unrecoverable(stripe, slot, &exam), "rebuild: stripe beyond repair; copying what still verifies");
        }
        let shards = exam.shards;
        let mut written = 0;
        for shard in targets {
            if !exam.recovered && exam.outcomes[shard.0] != super::io::ShardOutcome::Good {
                replacement.lost_chunks.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let (_, offset) = self.geometry.shard_location(slot, shard);
            if let Err(err) = replacement.device.write_at(offset, &shards[shard.0]) {
                self.members
                    .abandon_replacement(index, &format!("write failed: {err}"));
                return Err(Error::Io {
                    device: replacement.identity.path.clone(),
                    offset: Some(offset),
                    source: err.into_io(),
                });
            }
            written += self.geometry.chunk_bytes;
        }
        replacement
            .bytes_written
            .fetch_add(written, Ordering::Relaxed);
        Ok(written)
    }

    /// Swap the rebuilt replacement in; `false` if it was abandoned during the last step.
    ///
    /// Order, so that a crash at any point leaves a pool that knows where every flushed byte
    /// is: (1) flush the new device; (2) mark it complete and commit a checkpoint, which now
    /// goes to the new device too; (3) write the superblocks naming it the member; (4) only
    /// then swap it in memory. Until (4) every write still goes to both the old member and the
    /// replacement, so whichever one the superblocks name after a crash holds it.
    fn finish_rebuild(&self, index: DeviceIndex, replacement: &Replacement) -> Result<bool> {
        replacement.device.flush().map_err(|err| Error::Io {
            device: replacement.identity.path.clone(),
            offset: None,
            source: err.into_io(),
        })?;
        let still_attached = |member: &super::MemberDevice| {
            member
                .replacement()
                .is_some_and(|current| std::ptr::eq(current.as_ref(), replacement))
        };
        if !still_attached(self.members.get(index)) {
            tracing::warn!(index = index.0, device = %replacement.identity.path, "rebuild target was abandoned during its last step; not swapped in");
            return Ok(false);
        }
        // (2) the map onto it: from here every metadata write goes to it too.
        replacement.receives_metadata.store(true, Ordering::Release);
        if let Err(err) = self.commit_with(true) {
            replacement
                .receives_metadata
                .store(false, Ordering::Release);
            return Err(err);
        }
        // (3) it holds the map: name it the member. The superblock must land on it (and the
        // write must not have been refused), or the old member stays.
        replacement.complete.store(true, Ordering::Release);
        let landed = self.members.write_superblocks().and_then(|failures| {
            match failures
                .into_iter()
                .find(|(device, _)| *device == replacement.device.name())
            {
                Some((device, err)) => Err(Error::Io {
                    device,
                    offset: None,
                    source: err.into_io(),
                }),
                None => Ok(()),
            }
        });
        if let Err(err) = landed {
            replacement.complete.store(false, Ordering::Release);
            replacement
                .receives_metadata
                .store(false, Ordering::Release);
            return Err(err);
        }
        // (4) in memory, with no write or commit in flight.
        let swapped = {
            let _no_commit = self.meta.lock();
            let _no_writes = self.attach_lock.write();
            self.members.swap_in_replacement(index, replacement)
        };
        let Some(old) = swapped else {
            tracing::warn!(index = index.0, device = %replacement.identity.path, "rebuild target was abandoned while it was recorded; not swapped in");
            return Ok(false);
        };
        tracing::warn!(
            index = index.0,
            device = %replacement.identity.path,
            replaced = old.path,
            bytes = replacement.bytes_written.load(Ordering::Relaxed),
            "rebuild complete; the new device is a full member"
        );
        Ok(true)
    }

    pub(crate) fn rebuild_progress(&self) -> Vec<RebuildProgress> {
        self.members
            .data
            .iter()
            .filter_map(|member| member.replacement().map(|r| self.progress_of(member, &r)))
            .collect()
    }

    fn progress_of(
        &self,
        member: &super::MemberDevice,
        replacement: &Replacement,
    ) -> RebuildProgress {
        let done = replacement.bytes_written.load(Ordering::Relaxed);
        let total = replacement.total_bytes.load(Ordering::Relaxed).max(done);
        let rate = crate::types::bytes_per_s(done, replacement.started.elapsed());
        RebuildProgress {
            index: member.index.0,
            replacing: member.path(),
            device: replacement.identity.path.clone(),
            done_bytes: done,
            total_bytes: total,
            read_bytes: replacement.bytes_read.load(Ordering::Relaxed),
            next_slot: replacement.next_slot.load(Ordering::Relaxed),
            slots: self.geometry.slots,
            rate_bytes_per_s: rate,
            eta_secs: (rate > 0).then(|| (total - done) / rate),
            lost_chunks: replacement.lost_chunks.load(Ordering::Relaxed),
        }
    }
}

/// A chunk to write to the replacement: device offset and bytes.
type Cell = (u64, Vec<u8>);

/// One live slot of a rebuild batch.
struct BatchItem {
    stripe: u64,
    slot: SlotId,
    entry: MapEntry,
    targets: Vec<ShardIndex>,
    sources: Vec<ShardIndex>,
}

/// Split sorted chunk offsets into runs of adjacent chunks.
pub(crate) fn runs(offsets: &[u64], chunk_bytes: u64) -> Vec<&[u64]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=offsets.len() {
        if i == offsets.len() || offsets[i] != offsets[i - 1] + chunk_bytes {
            if start < i {
                out.push(&offsets[start..i]);
            }
            start = i;
        }
    }
    out
}

/// Whether a stripe written at `generation` still has to be copied to the replacement.
fn needs_rebuild(replacement: &Replacement, generation: u64) -> bool {
    generation < replacement.start_generation
}
