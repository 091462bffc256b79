//! Rebuild: filling a replacement device so it can take over a data position.
//!
//! The stripe map says exactly which stripes hold data, so a rebuild visits only those, in
//! stripe order, one batch per [`PoolInner::rebuild_step`]; its cost scales with live data, not
//! with device size. For each stripe with a shard on the position (under the stripe's lock, so it
//! cannot change meanwhile) the shard is fetched from the device being replaced if that one is
//! still healthy, otherwise reconstructed from the others, verified against the map, and written
//! to the replacement at the same offset.
//!
//! Writes that land during the rebuild go to the replacement directly (see `Members::write_shard`):
//! a stripe whose generation is at least the replacement's `start_generation` is skipped. The
//! watermark (`next_stripe`) is checkpointed in the superblocks after the replacement is flushed,
//! so a crash resumes from the last checkpoint. When the watermark reaches the end, the
//! replacement is flushed and swapped in, and the superblocks record it as the member.

use super::{Identity, PoolInner, Replacement};
use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::types::{DeviceIndex, ShardIndex, SlotId};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Stripes per rebuild step.
const STRIPES_PER_STEP: u64 = 128;

/// Progress of one rebuild, for `status` and the API.
#[derive(Debug, Clone, Serialize, PartialEq)]
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
    /// Stripes below this are done.
    pub next_stripe: u64,
    /// Stripes in the pool.
    pub stripes: u64,
    /// Average rate of this run, bytes per second.
    pub rate_bytes_per_s: u64,
    /// Estimated seconds to go.
    pub eta_secs: Option<u64>,
}

/// What one rebuild step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepOutcome {
    /// Bytes written to replacements.
    pub written_bytes: u64,
    /// Rebuilds that completed in this step.
    pub completed: usize,
    /// Rebuilds still running after this step.
    pub running: usize,
}

impl PoolInner {
    /// Start replacing position `index` with `device` (already labelled as a member of this pool
    /// by the caller's superblock write). `since_generation` is 0 for a new device.
    pub(crate) fn attach_replacement(
        &self,
        index: DeviceIndex,
        identity: Identity,
        device: SharedDevice,
        since_generation: u64,
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
            // Under the map lock, so every generation handed out after this point belongs to a
            // write that will see the replacement attached.
            let state = self.map.lock();
            let replacement = Replacement::new(
                identity,
                device,
                0,
                since_generation,
                state.next_generation + 1,
                from_spare,
            );
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
        let from = replacement.next_stripe.load(Ordering::Acquire);
        let state = self.map.lock();
        let mut total = 0u64;
        for stripe in state.map.written_stripes().filter(|s| *s >= from) {
            let entry = state.map.get(stripe);
            if let Some(slot) = entry.slot {
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

    /// Attach an available spare to every faulted position that has no replacement yet.
    pub(crate) fn assign_spares(&self) {
        for member in &self.members.data {
            if member.is_online() || member.replacement().is_some() {
                continue;
            }
            let Some((identity, device)) = self.members.take_spare() else {
                return;
            };
            let path = identity.path.clone();
            if let Err(err) =
                self.attach_replacement(member.index, identity.clone(), device.clone(), 0, true)
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
            let from = replacement.next_stripe.load(Ordering::Acquire);
            let to = (from + STRIPES_PER_STEP).min(self.geometry.stripes);
            // Stripes are independent: rebuild the batch in parallel for queue depth.
            let written: Vec<u64> = {
                use rayon::prelude::*;
                (from..to)
                    .into_par_iter()
                    .map(|stripe| self.rebuild_stripe(member.index, &replacement, stripe))
                    .collect::<Result<_>>()?
            };
            outcome.written_bytes += written.iter().sum::<u64>();
            replacement.next_stripe.store(to, Ordering::Release);
            if to >= self.geometry.stripes {
                self.finish_rebuild(member.index, &replacement)?;
                outcome.completed += 1;
            } else {
                outcome.running += 1;
            }
        }
        if checkpoint && outcome.running > 0 {
            self.checkpoint_rebuilds()?;
        }
        Ok(outcome)
    }

    /// Persist the rebuild watermarks: replacements flushed first, then the superblocks.
    pub(crate) fn checkpoint_rebuilds(&self) -> Result<()> {
        self.members.flush_all();
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
        let (shards, read) = self.shards_for_rebuild(stripe, slot, &entry, &targets)?;
        replacement.bytes_read.fetch_add(read, Ordering::Relaxed);
        let mut written = 0;
        for shard in targets {
            let (_, offset) = self.geometry.shard_location(slot, shard);
            if let Err(err) = replacement.device.write_at(offset, &shards[shard.0]) {
                self.members
                    .abandon_replacement(index, &format!("write failed: {err}"));
                return Err(Error::Io {
                    device: replacement.identity.path.clone(),
                    offset,
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

    /// Fetch just enough shards to produce `targets` (the device being replaced itself if it is
    /// still healthy, else K shards or one other copy), verify, reconstruct. Any failure falls
    /// back to the full recovery path, which also heals what it finds. Returns every shard (at
    /// least the targets filled and verified) and the bytes read.
    fn shards_for_rebuild(
        &self,
        stripe: u64,
        slot: SlotId,
        entry: &crate::format::MapEntry,
        targets: &[ShardIndex],
    ) -> Result<(Vec<Vec<u8>>, u64)> {
        use super::io::Fetch;
        use rayon::prelude::*;
        let width = self.geometry.width();
        let chunk = usize::try_from(self.geometry.chunk_bytes).unwrap_or(0);
        let online = |shard: usize| {
            let (device, _) = self.geometry.shard_location(slot, ShardIndex(shard));
            self.members.get(device).is_online()
        };
        let is_target = |shard: usize| targets.contains(&ShardIndex(shard));
        let sources: Vec<usize> = if targets.iter().all(|t| online(t.0)) {
            targets.iter().map(|t| t.0).collect()
        } else {
            match self.geometry.layout {
                crate::geometry::Layout::ReedSolomon { .. } => (0..width)
                    .filter(|s| !is_target(*s) && online(*s))
                    .take(self.codec.shards_needed())
                    .collect(),
                crate::geometry::Layout::Mirror { .. } | crate::geometry::Layout::Raid10 { .. } => targets
                    .iter()
                    .filter_map(|t| {
                        let group = self.geometry.shard_data_chunk(*t);
                        (0..width).find(|s| {
                            !is_target(*s)
                                && online(*s)
                                && self.geometry.shard_data_chunk(ShardIndex(*s)) == group
                        })
                    })
                    .collect(),
            }
        };
        let fetched: Vec<(usize, Fetch)> = sources
            .par_iter()
            .map(|s| (*s, self.fetch_shard(slot, ShardIndex(*s), entry)))
            .collect();
        let mut read = fetched.len() as u64 * self.geometry.chunk_bytes;
        if fetched.iter().all(|(_, f)| matches!(f, Fetch::Good(_))) {
            let mut shards = vec![vec![0u8; chunk]; width];
            let mut present = vec![false; width];
            for (shard, fetch) in &fetched {
                if let Fetch::Good(bytes) = fetch {
                    shards[*shard].copy_from_slice(bytes);
                    present[*shard] = true;
                }
            }
            let complete = targets.iter().all(|t| present[t.0])
                || self.codec.reconstruct(&mut shards, &mut present);
            let verified = complete
                && targets.iter().all(|t| {
                    crate::codec::shard_checksum(slot, *t, entry.generation, &shards[t.0])
                        == entry.crcs[t.0]
                });
            if verified {
                return Ok((shards, read));
            }
        }
        read += (width - fetched.len()) as u64 * self.geometry.chunk_bytes;
        let (shards, _) = self.recover_stripe(stripe, slot, entry, fetched)?;
        Ok((shards, read))
    }

    fn finish_rebuild(&self, index: DeviceIndex, replacement: &Replacement) -> Result<()> {
        replacement.device.flush().map_err(|err| Error::Io {
            device: replacement.identity.path.clone(),
            offset: 0,
            source: err.into_io(),
        })?;
        let old = self.members.swap_in_replacement(index);
        // The new member must hold the map too before anything relies on it.
        self.commit_with(true)?;
        self.members.write_superblocks()?;
        tracing::warn!(
            index = index.0,
            device = %replacement.identity.path,
            replaced = old.map(|o| o.path).unwrap_or_default(),
            bytes = replacement.bytes_written.load(Ordering::Relaxed),
            "rebuild complete; the new device is a full member"
        );
        Ok(())
    }

    pub(crate) fn rebuild_progress(&self) -> Vec<RebuildProgress> {
        self.members
            .data
            .iter()
            .filter_map(|member| {
                let replacement = member.replacement()?;
                let done = replacement.bytes_written.load(Ordering::Relaxed);
                let total = replacement.total_bytes.load(Ordering::Relaxed).max(done);
                let secs = replacement.started.elapsed().as_secs_f64();
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss
                )]
                let rate = if secs > 0.0 {
                    (done as f64 / secs) as u64
                } else {
                    0
                };
                Some(RebuildProgress {
                    index: member.index.0,
                    replacing: member.path(),
                    device: replacement.identity.path.clone(),
                    done_bytes: done,
                    total_bytes: total,
                    read_bytes: replacement.bytes_read.load(Ordering::Relaxed),
                    next_stripe: replacement.next_stripe.load(Ordering::Relaxed),
                    stripes: self.geometry.stripes,
                    rate_bytes_per_s: rate,
                    eta_secs: (rate > 0).then(|| (total - done) / rate),
                })
            })
            .collect()
    }
}

/// Whether a stripe written at `generation` still has to be copied to the replacement.
fn needs_rebuild(replacement: &Replacement, generation: u64) -> bool {
    generation >= replacement.since_generation && generation < replacement.start_generation
}
