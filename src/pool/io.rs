//! The read and write paths.
//!
//! Read: map entry → read the data shards covering the range → verify each against the map's
//! crc → copy out. On any failure, read every shard, reconstruct, verify the result, rewrite the
//! bad shards in place (self-heal) and count the errors. Unverified bytes are never returned.
//!
//! Write: build the whole new stripe (read-modify-write for a partial one, through the verified
//! read path) → encode → write all shards into a *free* slot in parallel → switch the in-memory
//! map entry. The old slot stays intact until a commit makes the switch durable.

use super::{check_range, MapState, PoolInner};
use crate::codec::shard_checksum;
use crate::device::DeviceError;
use crate::error::{Error, Result};
use crate::format::MapEntry;
use crate::pool::ErrorKind;
use crate::types::{DeviceIndex, Generation, ShardIndex, SlotId};
use rayon::prelude::*;
use std::borrow::Cow;

/// Outcome of fetching one shard.
pub(crate) enum Fetch {
    /// Read and verified.
    Good(Vec<u8>),
    /// Read error or checksum mismatch on an online device (counted; healable).
    Bad(ErrorKind),
    /// The device is out of service.
    Missing,
}

impl PoolInner {
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len(), self.geometry.volume_bytes())?;
        self.rebuild.foreground();
        let stripe_bytes = self.geometry.stripe_data_bytes();
        let mut pieces = Vec::new();
        let mut rest = buf;
        let mut position = offset;
        while !rest.is_empty() {
            let within = position % stripe_bytes;
            let take = usize::try_from((stripe_bytes - within).min(rest.len() as u64))
                .unwrap_or(usize::MAX);
            let (piece, tail) = rest.split_at_mut(take);
            pieces.push((position / stripe_bytes, within, piece));
            position += take as u64;
            rest = tail;
        }
        pieces
            .into_par_iter()
            .try_for_each(|(stripe, within, piece)| {
                let _stripe_guard = self.stripe_lock(stripe).lock();
                self.read_stripe_locked(stripe, within, piece)
            })
    }

    pub(crate) fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        check_range(offset, data.len(), self.geometry.volume_bytes())?;
        self.rebuild.foreground();
        let stripe_bytes = self.geometry.stripe_data_bytes();
        let mut pieces = Vec::new();
        let mut done = 0usize;
        while done < data.len() {
            let position = offset + done as u64;
            let within = position % stripe_bytes;
            let take = usize::try_from((stripe_bytes - within).min((data.len() - done) as u64))
                .unwrap_or(usize::MAX);
            pieces.push((position / stripe_bytes, within, done..done + take));
            done += take;
        }
        // Stripes are independent: write them in parallel. Each task takes one stripe lock and
        // never waits on other pool work while holding it. Not atomic across stripes, like any
        // block device.
        pieces
            .into_par_iter()
            .try_for_each(|(stripe, within, range)| self.write_stripe(stripe, within, &data[range]))
    }

    /// Read part of one stripe; the caller holds the stripe's lock.
    pub(crate) fn read_stripe_locked(
        &self,
        stripe: u64,
        within: u64,
        out: &mut [u8],
    ) -> Result<()> {
        let entry = self.map.lock().map.get(stripe);
        let Some(slot) = entry.slot else {
            out.fill(0); // never written: the volume starts zeroed
            return Ok(());
        };
        let chunk = self.geometry.chunk_bytes;
        let first_chunk = usize::try_from(within / chunk).unwrap_or(0);
        let last_chunk = usize::try_from((within + out.len() as u64 - 1) / chunk).unwrap_or(0);
        // Fast path: one verified shard per needed data chunk. Sequential on purpose: this runs
        // under the stripe lock, and waiting on pool work while holding a lock can deadlock
        // (a waiting rayon worker runs other queued work, which may need the same lock).
        let fetched: Vec<(usize, Fetch)> = (first_chunk..=last_chunk)
            .map(|data_chunk| {
                let shard = self.preferred_shard(data_chunk);
                (shard.0, self.fetch_shard(slot, shard, &entry))
            })
            .collect();
        let chunks: Vec<Vec<u8>> = if fetched.iter().all(|(_, f)| matches!(f, Fetch::Good(_))) {
            fetched
                .into_iter()
                .filter_map(|(_, f)| match f {
                    Fetch::Good(bytes) => Some(bytes),
                    Fetch::Bad(_) | Fetch::Missing => None,
                })
                .collect()
        } else {
            // Slow path; shards already fetched are reused, so no error is counted twice.
            let (shards, _) = self.recover_stripe(stripe, slot, &entry, fetched)?;
            (first_chunk..=last_chunk)
                .map(|c| shards[self.first_shard_of(c)].clone())
                .collect()
        };
        let start = usize::try_from(within - first_chunk as u64 * chunk).unwrap_or(0);
        let mut copied = 0;
        let mut skip = start;
        for bytes in &chunks {
            let piece = &bytes[skip..];
            let n = piece.len().min(out.len() - copied);
            out[copied..copied + n].copy_from_slice(&piece[..n]);
            copied += n;
            skip = 0;
        }
        debug_assert_eq!(copied, out.len(), "copied every requested byte");
        Ok(())
    }

    /// The first shard index carrying `data_chunk`.
    fn first_shard_of(&self, data_chunk: usize) -> usize {
        (0..self.geometry.width())
            .find(|s| self.geometry.shard_data_chunk(ShardIndex(*s)) == Some(data_chunk))
            .unwrap_or(0)
    }

    /// A shard carrying `data_chunk`, preferring one on an online device. For Reed-Solomon
    /// there is exactly one; for mirrors, the first online copy.
    fn preferred_shard(&self, data_chunk: usize) -> ShardIndex {
        let mut candidates = (0..self.geometry.width())
            .filter(|s| self.geometry.shard_data_chunk(ShardIndex(*s)) == Some(data_chunk));
        let first = candidates.clone().next().unwrap_or(0);
        let online = |s: &usize| match self.geometry.layout {
            crate::geometry::Layout::ReedSolomon { .. } => true,
            _ => self.members.get(DeviceIndex(*s)).is_online(),
        };
        ShardIndex(candidates.find(online).unwrap_or(first))
    }

    /// Read one shard and verify it against the map. Errors are counted against the device.
    pub(crate) fn fetch_shard(&self, slot: SlotId, shard: ShardIndex, entry: &MapEntry) -> Fetch {
        let (index, offset) = self.geometry.shard_location(slot, shard);
        let Some(device) = self.members.get(index).device() else {
            return Fetch::Missing;
        };
        let mut bytes = vec![0u8; usize::try_from(self.geometry.chunk_bytes).unwrap_or(0)];
        if let Err(err) = device.read_at(offset, &mut bytes) {
            self.members
                .record_error(index, ErrorKind::Read, Some(offset), &err);
            return Fetch::Bad(ErrorKind::Read);
        }
        let actual = shard_checksum(slot, shard, entry.generation, &bytes);
        if actual != entry.crcs[shard.0]
            && !crate::testing::planted::checksum_verification_skipped()
        {
            let detail = DeviceError::Io(std::io::Error::other(format!(
                "checksum mismatch at offset {offset} (slot {slot}, shard {}): expected {:#010x}, found {actual:#010x}",
                shard.0, entry.crcs[shard.0]
            )));
            self.members
                .record_error(index, ErrorKind::Checksum, Some(offset), &detail);
            return Fetch::Bad(ErrorKind::Checksum);
        }
        Fetch::Good(bytes)
    }

    /// Slow path: fetch every shard, reconstruct the missing ones, verify them, heal the bad
    /// ones on online devices. Returns all shards, each verified, and how many shards on
    /// online devices were damaged (shards of out-of-service devices are not counted).
    /// `known` holds shards the caller already fetched (and counted).
    pub(crate) fn recover_stripe(
        &self,
        stripe: u64,
        slot: SlotId,
        entry: &MapEntry,
        known: Vec<(usize, Fetch)>,
    ) -> Result<(Vec<Vec<u8>>, usize)> {
        let exam = self.examine_stripe(slot, entry, known, true);
        if !exam.recovered {
            return Err(self.unrecoverable(stripe, slot, &exam));
        }
        let damaged = exam.damaged().count();
        Ok((exam.shards, damaged))
    }

    /// The error for a stripe `exam` could not recover.
    pub(crate) fn unrecoverable(&self, stripe: u64, slot: SlotId, exam: &Examination) -> Error {
        let failed: Vec<usize> = (0..exam.outcomes.len())
            .filter(|s| !matches!(exam.outcomes[*s], ShardOutcome::Good))
            .collect();
        Error::Unrecoverable {
            stripe,
            volume_offset: stripe * self.geometry.stripe_data_bytes(),
            good: exam.outcomes.len() - failed.len(),
            needed: self.codec.shards_needed(),
            lost_devices: failed
                .iter()
                .map(|s| {
                    let (index, _) = self.geometry.shard_location(slot, ShardIndex(*s));
                    self.members.get(index).path()
                })
                .collect(),
        }
    }

    /// The careful path: fetch every shard not in `known`, reconstruct what is missing or bad,
    /// verify the result against the map, and (if `heal`) rewrite the damaged shards on their
    /// devices. Reports what happened to each shard, for reads and for scrub's accounting.
    pub(crate) fn examine_stripe(
        &self,
        slot: SlotId,
        entry: &MapEntry,
        known: Vec<(usize, Fetch)>,
        heal: bool,
    ) -> Examination {
        let width = self.geometry.width();
        let chunk = usize::try_from(self.geometry.chunk_bytes).unwrap_or(0);
        let mut prior: Vec<Option<Fetch>> = (0..width).map(|_| None).collect();
        for (shard, fetch) in known {
            prior[shard] = Some(fetch);
        }
        let fetched: Vec<Fetch> = prior
            .into_iter()
            .enumerate()
            .map(|(shard, prior)| {
                prior.unwrap_or_else(|| self.fetch_shard(slot, ShardIndex(shard), entry))
            })
            .collect();
        let outcomes: Vec<ShardOutcome> = fetched
            .iter()
            .map(|f| match f {
                Fetch::Good(_) => ShardOutcome::Good,
                Fetch::Bad(kind) => ShardOutcome::Damaged(*kind),
                Fetch::Missing => ShardOutcome::Missing,
            })
            .collect();
        let mut present: Vec<bool> = fetched
            .iter()
            .map(|f| matches!(f, Fetch::Good(_)))
            .collect();
        let bad: Vec<usize> = (0..width).filter(|s| !present[*s]).collect();
        let mut shards: Vec<Vec<u8>> = fetched
            .into_iter()
            .map(|f| match f {
                Fetch::Good(bytes) => bytes,
                Fetch::Bad(_) | Fetch::Missing => vec![0u8; chunk],
            })
            .collect();
        let reconstructed = !bad.is_empty() && self.codec.reconstruct(&mut shards, &mut present);
        // Pair assertion: everything we rebuilt must match the map's checksum, or we refuse.
        let recovered = bad.is_empty()
            || (reconstructed
                && bad.iter().all(|s| {
                    shard_checksum(slot, ShardIndex(*s), entry.generation, &shards[*s])
                        == entry.crcs[*s]
                }));
        let mut healed = vec![false; width];
        if recovered && heal {
            for shard in &bad {
                if matches!(outcomes[*shard], ShardOutcome::Damaged(_)) {
                    healed[*shard] = self.heal_shard(slot, ShardIndex(*shard), &shards[*shard]);
                }
            }
        }
        Examination {
            shards,
            outcomes,
            recovered,
            healed,
        }
    }

    /// Rewrite a verified shard in place. Safe without a commit: the bytes are exactly what the
    /// durable map already says is there.
    fn heal_shard(&self, slot: SlotId, shard: ShardIndex, bytes: &[u8]) -> bool {
        let (index, offset) = self.geometry.shard_location(slot, shard);
        let member = self.members.get(index);
        let Some(device) = member.device() else {
            return false;
        };
        match device.write_at(offset, bytes) {
            Ok(()) => {
                member
                    .errors
                    .repaired
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(device = %member.path(), offset, slot = slot.0, shard = shard.0, "healed shard");
                true
            }
            Err(err) => {
                self.members
                    .record_error(index, ErrorKind::Write, Some(offset), &err);
                false
            }
        }
    }

    /// Whether the layout can still serve every stripe with the devices online, less `extra`.
    pub(crate) fn available_without(&self, extra: Option<DeviceIndex>) -> bool {
        let online: Vec<bool> = self
            .members
            .data
            .iter()
            .map(|m| m.is_online() && Some(m.index) != extra)
            .collect();
        match self.geometry.layout {
            crate::geometry::Layout::ReedSolomon { parity, .. } => {
                online.iter().filter(|o| !**o).count() <= parity
            }
            crate::geometry::Layout::Mirror { copies }
            | crate::geometry::Layout::Raid10 { copies } => {
                online.chunks(copies).all(|group| group.iter().any(|o| *o))
            }
        }
    }

    /// How many more devices could fail, now, without losing data.
    pub(crate) fn remaining_tolerance(&self) -> usize {
        let online: Vec<bool> = self.members.data.iter().map(|m| m.is_online()).collect();
        match self.geometry.layout {
            crate::geometry::Layout::ReedSolomon { parity, .. } => {
                parity.saturating_sub(online.iter().filter(|o| !**o).count())
            }
            crate::geometry::Layout::Mirror { copies }
            | crate::geometry::Layout::Raid10 { copies } => online
                .chunks(copies)
                .map(|group| group.iter().filter(|o| **o).count().saturating_sub(1))
                .min()
                .unwrap_or(0),
        }
    }

    /// Check that enough devices remain for new data to be written with the layout.
    pub(crate) fn check_available(&self) -> Result<()> {
        if self.available_without(None) {
            Ok(())
        } else {
            Err(Error::PoolUnavailable {
                layout: self.geometry.layout.to_string(),
                tolerated: self.geometry.tolerance(),
                lost_devices: self.members.lost(),
            })
        }
    }

    /// Write part of one stripe copy-on-write.
    fn write_stripe(&self, stripe: u64, within: u64, data: &[u8]) -> Result<()> {
        loop {
            self.check_available()?;
            let stripe_guard = self.stripe_lock(stripe).lock();
            let Some(slot) = self.map.lock().free.pop() else {
                // No free slot: a commit releases the slots that overwrites made obsolete.
                // (Other writers may hold the rest of the reserve for a moment; let them finish.)
                drop(stripe_guard);
                self.commit()?;
                std::thread::yield_now();
                continue;
            };
            let result = self.write_stripe_into(stripe, within, data, SlotId(slot));
            if result.is_err() {
                self.map.lock().free.push(slot);
            }
            return result;
        }
    }

    pub(crate) fn write_stripe_into(
        &self,
        stripe: u64,
        within: u64,
        data: &[u8],
        slot: SlotId,
    ) -> Result<()> {
        let stripe_bytes = usize::try_from(self.geometry.stripe_data_bytes()).unwrap_or(0);
        let chunk = usize::try_from(self.geometry.chunk_bytes).unwrap_or(0);
        let content: Cow<'_, [u8]> = if within == 0 && data.len() == stripe_bytes {
            Cow::Borrowed(data) // full-stripe write: no read-modify-write
        } else {
            let mut whole = vec![0u8; stripe_bytes];
            self.read_stripe_locked(stripe, 0, &mut whole)?;
            let start = usize::try_from(within).unwrap_or(0);
            whole[start..start + data.len()].copy_from_slice(data);
            Cow::Owned(whole)
        };
        let parity = self.codec.encode_parity(&content, chunk);
        let width = self.geometry.width();
        let shard_bytes = |shard: usize| -> &[u8] {
            match self.geometry.shard_data_chunk(ShardIndex(shard)) {
                Some(c) => &content[c * chunk..(c + 1) * chunk],
                None => &parity[shard - self.geometry.data_chunks()],
            }
        };
        // Held from taking a generation until the entry is installed: attaching a replacement
        // waits for such writes, so every stripe with a generation below the replacement's
        // start is visible in the map by then (and gets rebuilt), and every later one writes the
        // replacement itself.
        let _attach_guard = self.attach_lock.read();
        let generation = {
            let mut state = self.map.lock();
            state.next_generation += 1;
            Generation(state.next_generation)
        };
        // Sequential under the stripe lock (see `read_stripe_locked`); requests spanning several
        // stripes get their parallelism across stripes instead.
        let crcs: Vec<u32> = (0..width)
            .map(|s| shard_checksum(slot, ShardIndex(s), generation, shard_bytes(s)))
            .collect();
        let mut written: Vec<bool> = (0..width)
            .map(|shard| {
                let (index, offset) = self.geometry.shard_location(slot, ShardIndex(shard));
                self.members.write_shard(index, offset, shard_bytes(shard))
            })
            .collect();
        let lost: Vec<usize> = (0..width).filter(|s| !written[*s]).collect();
        if !lost.is_empty() {
            // Enough shards must have landed for the stripe to be readable; otherwise refuse
            // the write and keep the old stripe (its slot was not touched).
            let mut scratch: Vec<Vec<u8>> = (0..width).map(|s| shard_bytes(s).to_vec()).collect();
            if !self.codec.reconstruct(&mut scratch, &mut written) {
                self.check_available()?;
                return Err(Error::PoolUnavailable {
                    layout: self.geometry.layout.to_string(),
                    tolerated: self.geometry.tolerance(),
                    lost_devices: self.members.lost(),
                });
            }
        }
        let entry = MapEntry {
            slot: Some(slot),
            generation,
            crcs,
        };
        let mut state = self.map.lock();
        install(&mut state, stripe, &entry);
        Ok(())
    }
}

/// What the careful path found for one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShardOutcome {
    /// Read and verified.
    Good,
    /// Its device is out of service.
    Missing,
    /// Read error or checksum mismatch (counted against the device).
    Damaged(ErrorKind),
}

/// The result of [`PoolInner::examine_stripe`].
pub(crate) struct Examination {
    /// Every shard's content; all verified when `recovered`.
    pub(crate) shards: Vec<Vec<u8>>,
    /// Per shard, what the fetch found.
    pub(crate) outcomes: Vec<ShardOutcome>,
    /// Whether every shard is now known and verified.
    pub(crate) recovered: bool,
    /// Per shard, whether it was rewritten on its device.
    pub(crate) healed: Vec<bool>,
}

impl Examination {
    /// Shards that failed on an online device, with the kind of failure.
    pub(crate) fn damaged(&self) -> impl Iterator<Item = (usize, ErrorKind)> + '_ {
        self.outcomes
            .iter()
            .enumerate()
            .filter_map(|(shard, outcome)| match outcome {
                ShardOutcome::Damaged(kind) => Some((shard, *kind)),
                ShardOutcome::Good | ShardOutcome::Missing => None,
            })
    }
}

/// Point `stripe` at its new entry and account for the slot it leaves.
fn install(state: &mut MapState, stripe: u64, entry: &MapEntry) {
    let previous = state.map.slot(stripe).map(|s| s.0);
    state.map.set(stripe, entry);
    if let Some(slot) = entry.slot {
        state.set_owner(slot.0, stripe);
    }
    match state.dirty.get(&stripe) {
        // Already rewritten since the last commit: the previous slot was never durable-
        // referenced, so it is free right away.
        // (Unless something else may still point at it: then it waits for the next commit.)
        Some(_) => {
            if let Some(slot) = previous {
                if state.held.contains(&slot) || state.held_for_rebuild.contains(&slot) {
                    state.orphans.push(slot);
                } else {
                    state.free.push(slot);
                }
            }
        }
        // First change since the last commit: the durable map still points at `previous`;
        // it is released when the next commit lands.
        None => {
            state.dirty.insert(stripe, previous);
        }
    }
}
