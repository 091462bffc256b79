//! The read and write paths.
//!
//! Read: map entry → read the data shards covering the range → verify each against the map's
//! crc → copy out. On any failure, read every shard, reconstruct, verify the result, rewrite the
//! bad shards in place (self-heal) and count the errors. Unverified bytes are never returned.
//!
//! Write: build the whole new stripe (read-modify-write for a partial one, through the verified
//! read path) → encode → write all shards into a *free* slot in parallel → switch the in-memory
//! map entry. The old slot stays intact until a commit makes the switch durable.

use super::batch::{with_scratch, Got, Scratch, ShardRead};
use super::{check_range, MapState, PoolInner};
use crate::device::DIRECT_ALIGN;
use crate::error::{Error, Result};
use crate::format::MapEntry;
use crate::pool::{DeviceFault, ErrorKind};
use crate::types::{DeviceIndex, Generation, ShardIndex, SlotId, StripeId};
use rayon::prelude::*;

/// Mirror copies take turns serving reads by runs of this many bytes of volume.
const BALANCE_RUN_BYTES: u64 = 1 << 20;

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
    /// [`crate::Pool::read_many`]: on version 4 one batch for every read; on version 3 one
    /// read after the other.
    pub(crate) fn read_many(&self, reads: &mut [(u64, &mut [u8])]) -> Vec<Result<()>> {
        let Some(rows) = self.rows() else {
            return reads
                .iter_mut()
                .map(|(offset, buf)| self.read_at(*offset, buf))
                .collect();
        };
        let _foreground = self.rebuild.foreground();
        let volume = rows.read_volume();
        volume.read_many(&self.volume_devices(), reads)
    }

    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len(), self.volume_bytes())?;
        // Foreground I/O: a rebuild between its steps yields to it (v3 and v4 alike).
        let _foreground = self.rebuild.foreground();
        if let Some(rows) = self.rows() {
            return self.rows_read(rows, offset, buf);
        }
        let stripe_bytes = self.geometry.stripe_data_bytes();
        let mut pieces = Vec::new();
        let mut rest = buf;
        let mut position = offset;
        while !rest.is_empty() {
            let within = position % stripe_bytes;
            let take = usize::try_from((stripe_bytes - within).min(rest.len() as u64))
                .unwrap_or(usize::MAX);
            let (piece, tail) = rest.split_at_mut(take);
            pieces.push((StripeId(position / stripe_bytes), within, piece));
            position += take as u64;
            rest = tail;
        }
        // Stripes go in groups whose fast-path shard reads fill about one io_uring round, so a
        // large request keeps every member busy with many requests in flight, not just one
        // stripe per rayon worker. A group takes its stripe locks in ascending lock order (so two
        // groups cannot deadlock) and never waits on other pool work while holding them.
        let per_group = self.stripes_per_group(self.geometry.data_chunks());
        let mut groups: Vec<Vec<Piece<'_>>> = Vec::new();
        for piece in pieces {
            match groups.last_mut() {
                Some(group) if group.len() < per_group => group.push(piece),
                _ => groups.push(vec![piece]),
            }
        }
        let read_group = |mut group: Vec<Piece<'_>>| {
            let mut locks: Vec<usize> = group.iter().map(|p| self.stripe_lock_index(p.0)).collect();
            locks.sort_unstable();
            locks.dedup();
            let _guards: Vec<_> = locks.iter().map(|i| self.stripe_locks[*i].lock()).collect();
            self.read_stripes_locked(&mut group, true)
        };
        // One group: on the caller's thread. Handing it to rayon would funnel every caller's
        // small reads through rayon's few workers (measured: a quarter of the raw random-read
        // rate with 16 callers).
        if groups.len() == 1 {
            return groups.into_iter().try_for_each(read_group);
        }
        groups.into_par_iter().try_for_each(read_group)
    }

    pub(crate) fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        check_range(offset, data.len(), self.volume_bytes())?;
        let _foreground = self.rebuild.foreground();
        if let Some(rows) = self.rows() {
            return self.rows_write(rows, offset, data);
        }
        let stripe_bytes = self.geometry.stripe_data_bytes();
        let mut pieces = Vec::new();
        let mut done = 0usize;
        while done < data.len() {
            let position = offset + done as u64;
            let within = position % stripe_bytes;
            let take = usize::try_from((stripe_bytes - within).min((data.len() - done) as u64))
                .unwrap_or(usize::MAX);
            pieces.push((StripeId(position / stripe_bytes), within, done..done + take));
            done += take;
        }
        // Stripes are independent: write them in parallel. Whole stripes go in groups (as for
        // reads) whose shard writes are one io_uring batch; partial stripes one at a time. A
        // task never waits on other pool work while holding stripe locks. Not atomic across
        // stripes, like any block device.
        let full = usize::try_from(stripe_bytes).unwrap_or(usize::MAX);
        let (whole, partial): (Vec<_>, Vec<_>) = pieces
            .into_iter()
            .partition(|(_, within, range)| *within == 0 && range.len() == full);
        let per_group = self.stripes_per_group(self.geometry.width());
        let groups: Vec<Vec<(StripeId, &[u8])>> = whole
            .chunks(per_group)
            .map(|g| {
                g.iter()
                    .map(|(stripe, _, range)| (*stripe, &data[range.clone()]))
                    .collect()
            })
            .collect();
        let mut tasks: Vec<WriteTask<'_>> = groups.into_iter().map(WriteTask::Whole).collect();
        tasks.extend(
            partial
                .into_iter()
                .map(|(stripe, within, range)| WriteTask::Part(stripe, within, &data[range])),
        );
        let run = |task: WriteTask<'_>| match task {
            WriteTask::Whole(group) => self.write_group(&group),
            WriteTask::Part(stripe, within, bytes) => self.write_stripe(stripe, within, bytes),
        };
        if tasks.len() == 1 {
            return tasks.into_iter().try_for_each(run);
        }
        tasks.into_par_iter().try_for_each(run)
    }

    /// How many stripes go in one batch when each needs `requests` device requests: about one
    /// ring's worth (64), and at most 8 MiB of data so the per-thread scratch buffers stay small.
    fn stripes_per_group(&self, requests: usize) -> usize {
        let by_ring = 64 / requests.max(1);
        let by_bytes = (8 << 20) / self.geometry.stripe_data_bytes().max(1);
        by_ring
            .min(usize::try_from(by_bytes).unwrap_or(usize::MAX))
            .clamp(1, 32)
    }

    /// Write whole stripes `group` (stripe, its data) copy-on-write with one batch of shard
    /// writes. Falls back to one stripe at a time when free slots run short.
    fn write_group(&self, group: &[(StripeId, &[u8])]) -> Result<()> {
        self.check_available()?;
        let mut locks: Vec<usize> = group
            .iter()
            .map(|(s, _)| self.stripe_lock_index(*s))
            .collect();
        locks.sort_unstable();
        locks.dedup();
        let guards: Vec<_> = locks.iter().map(|i| self.stripe_locks[*i].lock()).collect();
        let slots: Option<Vec<u64>> = {
            let mut state = self.map.lock();
            (state.free.len() >= group.len())
                .then(|| (0..group.len()).filter_map(|_| state.free.pop()).collect())
        };
        let Some(slots) = slots else {
            drop(guards);
            return group
                .iter()
                .try_for_each(|(stripe, bytes)| self.write_stripe(*stripe, 0, bytes));
        };
        let stripe_bytes = usize::try_from(self.geometry.stripe_data_bytes()).unwrap_or(0);
        let chunk = usize::try_from(self.geometry.chunk_bytes).unwrap_or(0);
        let parity_bytes = self.codec.parity_chunks() * chunk;
        // O_DIRECT wants aligned buffers: copy the caller's bytes into this thread's aligned
        // scratch buffer if they are not (cheaper than a bounce buffer per shard).
        let copy = self.any_direct()
            && group
                .iter()
                .any(|(_, bytes)| bytes.as_ptr().align_offset(DIRECT_ALIGN) != 0);
        let scratch_bytes = if copy { group.len() * stripe_bytes } else { 0 };
        let results = with_scratch(Scratch::Stripe, scratch_bytes, |aligned| {
            let contents: Vec<&[u8]> = if copy {
                for (i, (_, bytes)) in group.iter().enumerate() {
                    aligned[i * stripe_bytes..(i + 1) * stripe_bytes].copy_from_slice(bytes);
                }
                aligned.chunks(stripe_bytes.max(1)).collect()
            } else {
                group.iter().map(|(_, bytes)| *bytes).collect()
            };
            with_scratch(Scratch::Parity, group.len() * parity_bytes, |parity| {
                for (i, content) in contents.iter().enumerate() {
                    let range = i * parity_bytes..(i + 1) * parity_bytes;
                    self.codec
                        .encode_parity_into(content, chunk, &mut parity[range]);
                }
                let encoded: Vec<Encoded<'_>> = group
                    .iter()
                    .zip(&slots)
                    .zip(&contents)
                    .enumerate()
                    .map(|(i, (((stripe, _), slot), content))| {
                        let range = i * parity_bytes..(i + 1) * parity_bytes;
                        (*stripe, SlotId(*slot), *content, &parity[range])
                    })
                    .collect();
                self.write_encoded(&encoded)
            })
        });
        let mut first_error = None;
        for (result, slot) in results.into_iter().zip(slots) {
            if let Err(err) = result {
                self.map.lock().free.push(slot);
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Read part of one stripe; the caller holds the stripe's lock.
    pub(crate) fn read_stripe_locked(
        &self,
        stripe: StripeId,
        within: u64,
        out: &mut [u8],
    ) -> Result<()> {
        self.read_stripes_locked(&mut [(stripe, within, out)], false)
    }

    /// Read parts of several stripes; the caller holds their locks. Fast path: for each needed
    /// data chunk, only the checksum blocks covering the requested bytes, verified, all
    /// stripes' reads as one batch into this thread's scratch buffer (the batch waits only for
    /// the kernel, never for other pool work, so it is safe under the stripe locks; see
    /// `parallel.rs`). A stripe with a needed device out of service reads k shards and
    /// reconstructs; one with a bad block takes the slow path. `balance`: mirror copies take
    /// turns (else the first copy in service is read, which scrub's rewrite of disagreeing
    /// copies relies on).
    fn read_stripes_locked(&self, pieces: &mut [Piece<'_>], balance: bool) -> Result<()> {
        let chunk = self.geometry.chunk_bytes;
        let chunk_len = usize::try_from(chunk).unwrap_or(0);
        let sums = crate::codec::ShardSums::of_geometry(&self.geometry);
        let entries: Vec<MapEntry> = {
            let state = self.map.lock();
            pieces.iter().map(|p| state.map.get(p.0)).collect()
        };
        let mut items: Vec<ShardRead<'_>> = Vec::new();
        // Per item: where its bytes are in the scratch buffer (offset, length), and which of
        // them the caller asked for (skip, take).
        let mut placed: Vec<(usize, usize, usize, usize)> = Vec::new();
        let mut scratch_len = 0usize;
        // Per piece: its items in `items` (None: not on the fast path).
        let mut fast: Vec<Option<std::ops::Range<usize>>> = vec![None; pieces.len()];
        let mut degraded: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, (stripe, within, out)) in pieces.iter_mut().enumerate() {
            let entry = &entries[i];
            let Some(slot) = entry.slot else {
                out.fill(0); // never written: the volume starts zeroed
                continue;
            };
            let (chunks, _) = chunk_span(*within, out.len(), chunk);
            let shards: Vec<usize> = chunks
                .clone()
                .map(|data_chunk| self.preferred_shard(data_chunk, *stripe, balance).0)
                .collect();
            if let Some(sources) = self.degraded_sources(slot, &shards) {
                degraded.push((i, sources));
                continue;
            }
            let first = items.len();
            let wanted = usize::try_from(*within).unwrap_or(0)
                ..usize::try_from(*within).unwrap_or(0) + out.len();
            for (data_chunk, shard) in chunks.zip(shards) {
                let chunk_start = data_chunk * chunk_len;
                let from = wanted.start.max(chunk_start) - chunk_start;
                let to = wanted.end.min(chunk_start + chunk_len) - chunk_start;
                let blocks = sums.covering(from, to - from);
                items.push(ShardRead {
                    slot,
                    entry,
                    shard,
                    start: blocks.start,
                });
                placed.push((scratch_len, blocks.len(), from - blocks.start, to - from));
                scratch_len += blocks.len();
            }
            fast[i] = Some(first..items.len());
        }
        let slow: Vec<(usize, Vec<(usize, Fetch)>)> =
            with_scratch(Scratch::Read, scratch_len, |buf| {
                let mut views: Vec<&mut [u8]> = Vec::with_capacity(items.len());
                let mut rest = &mut buf[..];
                for (_, len, _, _) in &placed {
                    let (view, tail) = rest.split_at_mut(*len);
                    views.push(view);
                    rest = tail;
                }
                let got = self.fetch_batch(&items, views);
                let mut slow = Vec::new();
                for (i, (_, _, out)) in pieces.iter_mut().enumerate() {
                    let Some(mine) = fast[i].clone() else {
                        continue;
                    };
                    if got[mine.clone()].iter().all(|g| *g == Got::Good) {
                        let mut copied = 0;
                        let fits = placed[mine.clone()].iter().all(|(offset, _, skip, take)| {
                            let from = offset + skip;
                            let to = out.get_mut(copied..copied + take);
                            let Some((to, read)) = to.zip(buf.get(from..from + take)) else {
                                return false;
                            };
                            to.copy_from_slice(read);
                            copied += take;
                            true
                        });
                        if fits && copied == out.len() {
                            continue;
                        }
                        // The pieces did not cover the request exactly (unreachable by
                        // construction): read it the slow way rather than return bytes it did
                        // not read.
                    }
                    // Whole shards already read are handed on; a part read good is read again
                    // whole; a bad one is handed on as bad (its error is counted once).
                    let fetched: Vec<(usize, Fetch)> = mine
                        .filter_map(|item| {
                            let (offset, len, _, _) = placed[item];
                            match got[item] {
                                Got::Good if len != chunk_len => None,
                                got => Some((
                                    items[item].shard,
                                    got.into_fetch_copied(&buf[offset..offset + len]),
                                )),
                            }
                        })
                        .collect();
                    slow.push((i, fetched));
                }
                slow
            });
        for (i, sources) in degraded {
            let (stripe, within, out) = &mut pieces[i];
            let (chunks, start) = chunk_span(*within, out.len(), chunk);
            let slot = entries[i].slot.unwrap_or(SlotId(0));
            self.read_degraded(*stripe, slot, &entries[i], &sources, chunks, start, out)?;
        }
        for (i, fetched) in slow {
            let (stripe, within, out) = &mut pieces[i];
            let (chunks, start) = chunk_span(*within, out.len(), chunk);
            let slot = entries[i].slot.unwrap_or(SlotId(0));
            // Slow path; shards already fetched are reused, so no error is counted twice.
            let (shards, _) = self.recover_stripe(*stripe, slot, &entries[i], fetched)?;
            self.copy_out(*stripe, &shards, 0, chunks, start, out)?;
        }
        Ok(())
    }

    /// Reed-Solomon with a needed data shard on a device out of service: the k shards to read
    /// instead (the data shards in service, then parity), or `None` when the fast path applies.
    fn degraded_sources(&self, slot: SlotId, needed: &[usize]) -> Option<Vec<usize>> {
        let crate::geometry::Layout::ReedSolomon { data, .. } = self.geometry.layout else {
            return None;
        };
        let online = |shard: usize| {
            let (index, _) = self.geometry.shard_location(slot, ShardIndex(shard));
            self.members.get(index).is_online()
        };
        if needed.iter().all(|s| online(*s)) {
            return None;
        }
        let sources: Vec<usize> = (0..self.geometry.width())
            .filter(|s| online(*s))
            .take(data)
            .collect();
        (sources.len() == data).then_some(sources)
    }

    /// Degraded read: fetch exactly `sources` (k shards) in one batch and reconstruct the rest.
    /// Reed-Solomon works byte by byte, so a read within one chunk fetches and reconstructs
    /// only the checksum blocks it needs from each source. Anything bad among them goes to the
    /// full slow path, which reads whole shards and heals.
    #[allow(clippy::too_many_arguments)]
    fn read_degraded(
        &self,
        stripe: StripeId,
        slot: SlotId,
        entry: &MapEntry,
        sources: &[usize],
        chunks: std::ops::RangeInclusive<usize>,
        start: usize,
        out: &mut [u8],
    ) -> Result<()> {
        let width = self.geometry.width();
        let chunk = usize::try_from(self.geometry.chunk_bytes).unwrap_or(0);
        let sums = crate::codec::ShardSums::of_geometry(&self.geometry);
        // The part of every shard to work on: the blocks covering the request if it lies in
        // one chunk, else whole shards.
        let part = if chunks.start() == chunks.end() {
            sums.covering(start, out.len())
        } else {
            0..chunk
        };
        let mut shards: Vec<Vec<u8>> = vec![vec![0u8; part.len()]; width];
        let got = {
            let mut views: Vec<&mut [u8]> = Vec::with_capacity(sources.len());
            for (shard, bytes) in shards.iter_mut().enumerate() {
                if sources.contains(&shard) {
                    views.push(bytes);
                }
            }
            let items: Vec<ShardRead<'_>> = sources
                .iter()
                .map(|s| ShardRead {
                    slot,
                    entry,
                    shard: *s,
                    start: part.start,
                })
                .collect();
            self.fetch_batch(&items, views)
        };
        if got.iter().all(|g| *g == Got::Good) {
            let mut present: Vec<bool> = (0..width).map(|s| sources.contains(&s)).collect();
            if self.codec.reconstruct(&mut shards, &mut present) {
                let verified = chunks.clone().all(|c| {
                    let s = self.first_shard_of(c);
                    sums.verify(
                        slot,
                        ShardIndex(s),
                        entry.generation,
                        part.start,
                        &shards[s],
                        sums.of(&entry.crcs, s),
                    )
                    .is_ok()
                });
                if verified {
                    return self.copy_out(stripe, &shards, part.start, chunks, start, out);
                }
            }
        }
        // Whole shards read are handed on; a part read good is read again whole.
        let known: Vec<(usize, Fetch)> = sources
            .iter()
            .zip(got)
            .filter(|(_, got)| part.len() == chunk || *got != Got::Good)
            .map(|(shard, got)| (*shard, got.into_fetch_copied(&shards[*shard])))
            .collect();
        let (all, _) = self.recover_stripe(stripe, slot, entry, known)?;
        self.copy_out(stripe, &all, 0, chunks, start, out)
    }

    /// Copy the requested range out of shards that each hold their shard's bytes from `base`
    /// on: data chunks `chunks`, from byte `start` of the first (`start >= base`). Shards that
    /// do not hold the whole range (unreachable by construction) are an error naming the
    /// stripe, never a buffer left partly unwritten.
    fn copy_out(
        &self,
        stripe: StripeId,
        shards: &[Vec<u8>],
        base: usize,
        chunks: std::ops::RangeInclusive<usize>,
        start: usize,
        out: &mut [u8],
    ) -> Result<()> {
        let wanted = out.len();
        let short = || {
            Error::corrupt_metadata(format!(
                "stripe {}: the shards read do not hold the {wanted} bytes requested from byte {start}",
                stripe.0
            ))
        };
        let mut skip = start.checked_sub(base).ok_or_else(short)?;
        let chunks: Vec<&Vec<u8>> = chunks.map(|c| &shards[self.first_shard_of(c)]).collect();
        let mut copied = 0;
        for bytes in chunks {
            let piece = bytes.get(skip..).ok_or_else(short)?;
            let n = piece.len().min(out.len() - copied);
            out[copied..copied + n].copy_from_slice(&piece[..n]);
            copied += n;
            skip = 0;
        }
        if copied == out.len() {
            Ok(())
        } else {
            Err(short())
        }
    }

    /// The first shard index carrying `data_chunk`.
    fn first_shard_of(&self, data_chunk: usize) -> usize {
        (0..self.geometry.width())
            .find(|s| self.geometry.shard_data_chunk(ShardIndex(*s)) == Some(data_chunk))
            .unwrap_or(0)
    }

    /// A shard carrying `data_chunk`, on an online device if there is one. For Reed-Solomon
    /// there is exactly one; for mirrors, with `balance` the online copies take turns by
    /// stripe, so sequential reads use every copy's device; else the first online copy.
    fn preferred_shard(&self, data_chunk: usize, stripe: StripeId, balance: bool) -> ShardIndex {
        let width = self.geometry.width();
        let carries =
            |s: &usize| self.geometry.shard_data_chunk(ShardIndex(*s)) == Some(data_chunk);
        let first = (0..width).find(carries).unwrap_or(0);
        if matches!(
            self.geometry.layout,
            crate::geometry::Layout::ReedSolomon { .. }
        ) {
            return ShardIndex(first);
        }
        let online = |s: &usize| self.members.get(DeviceIndex(*s)).is_online();
        let copies = (0..width).filter(carries).filter(online).count() as u64;
        if copies == 0 {
            return ShardIndex(first);
        }
        // Copies take turns by runs of about 1 MiB of stripes, not stripe by stripe: each
        // device then reads contiguous runs rather than every other chunk.
        let run = (BALANCE_RUN_BYTES / self.geometry.stripe_data_bytes().max(1)).max(1);
        let turn = if balance {
            usize::try_from(stripe.0 / run % copies).unwrap_or(0)
        } else {
            0
        };
        ShardIndex(
            (0..width)
                .filter(carries)
                .filter(online)
                .nth(turn)
                .unwrap_or(first),
        )
    }

    /// Slow path: fetch every shard, reconstruct the missing ones, verify them, heal the bad
    /// ones on online devices. Returns all shards, each verified, and how many shards on
    /// online devices were damaged (shards of out-of-service devices are not counted).
    /// `known` holds shards the caller already fetched (and counted).
    pub(crate) fn recover_stripe(
        &self,
        stripe: StripeId,
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
    pub(crate) fn unrecoverable(
        &self,
        stripe: StripeId,
        slot: SlotId,
        exam: &Examination,
    ) -> Error {
        let failed: Vec<usize> = (0..exam.outcomes.len())
            .filter(|s| !matches!(exam.outcomes[*s], ShardOutcome::Good))
            .collect();
        Error::Unrecoverable {
            stripe,
            volume_offset: stripe.0 * self.geometry.stripe_data_bytes(),
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
        // Everything not fetched yet, as one batch.
        let wanted: Vec<usize> = (0..width).filter(|s| prior[*s].is_none()).collect();
        let mut buffers: Vec<Vec<u8>> = vec![vec![0u8; chunk]; wanted.len()];
        let items: Vec<ShardRead<'_>> = wanted
            .iter()
            .map(|s| ShardRead::whole(slot, entry, *s))
            .collect();
        let got = self.fetch_batch(&items, buffers.iter_mut().map(Vec::as_mut_slice).collect());
        for ((shard, got), bytes) in wanted.into_iter().zip(got).zip(buffers) {
            prior[shard] = Some(got.into_fetch(bytes));
        }
        let fetched: Vec<Fetch> = prior
            .into_iter()
            .map(|prior| prior.unwrap_or(Fetch::Missing))
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
                && bad
                    .iter()
                    .all(|s| self.shard_verifies(slot, entry, *s, &shards[*s])));
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

    /// Whether a whole `shard` of the stripe in `slot` matches the checksums of `entry`.
    pub(crate) fn shard_verifies(
        &self,
        slot: SlotId,
        entry: &MapEntry,
        shard: usize,
        bytes: &[u8],
    ) -> bool {
        let sums = crate::codec::ShardSums::of_geometry(&self.geometry);
        sums.matches(
            slot,
            ShardIndex(shard),
            entry.generation,
            bytes,
            sums.of(&entry.crcs, shard),
        )
    }

    /// Rewrite a verified shard in place. Safe without a commit: the bytes are exactly what the
    /// durable map already says is there.
    fn heal_shard(&self, slot: SlotId, shard: ShardIndex, bytes: &[u8]) -> bool {
        if self.members.read_only() {
            return false; // looking never writes: the damage is counted, and healed next time
        }
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
                    .record_error(index, Some(offset), DeviceFault::Write(&err));
                false
            }
        }
    }

    /// Whether the layout can still serve every stripe with the devices online, less `extra`.
    pub(crate) fn available_without(&self, extra: Option<DeviceIndex>) -> bool {
        self.members.available_without(extra)
    }

    /// How many more devices could fail, now, without losing data.
    pub(crate) fn remaining_tolerance(&self) -> usize {
        let online: Vec<bool> = self.members.data.iter().map(|m| m.is_online()).collect();
        self.geometry.layout.remaining_tolerance_with(&online)
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
    fn write_stripe(&self, stripe: StripeId, within: u64, data: &[u8]) -> Result<()> {
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
        stripe: StripeId,
        within: u64,
        data: &[u8],
        slot: SlotId,
    ) -> Result<()> {
        let stripe_bytes = usize::try_from(self.geometry.stripe_data_bytes()).unwrap_or(0);
        let chunk = usize::try_from(self.geometry.chunk_bytes).unwrap_or(0);
        let full = within == 0 && data.len() == stripe_bytes;
        // Use the caller's bytes in place for a full-stripe write unless O_DIRECT wants an
        // aligned copy; otherwise build the stripe in this thread's scratch buffer.
        let in_place =
            full && (data.as_ptr().align_offset(DIRECT_ALIGN) == 0 || !self.any_direct());
        let scratch_bytes = if in_place { 0 } else { stripe_bytes };
        with_scratch(Scratch::Stripe, scratch_bytes, |whole| {
            let content: &[u8] = if in_place {
                data
            } else if full {
                whole.copy_from_slice(data);
                whole
            } else {
                // Read-modify-write through the verified read path.
                self.read_stripe_locked(stripe, 0, whole)?;
                let start = usize::try_from(within).unwrap_or(0);
                whole[start..start + data.len()].copy_from_slice(data);
                whole
            };
            let parity_bytes = self.codec.parity_chunks() * chunk;
            with_scratch(Scratch::Parity, parity_bytes, |parity| {
                self.codec.encode_parity_into(content, chunk, parity);
                let mut results = self.write_encoded(&[(stripe, slot, content, parity)]);
                results.pop().unwrap_or(Ok(()))
            })
        })
    }

    /// Write encoded stripes, each to its slot, with one batch of shard writes, and install
    /// them in the map. One result per stripe.
    fn write_encoded(&self, stripes: &[Encoded<'_>]) -> Vec<Result<()>> {
        let chunk = usize::try_from(self.geometry.chunk_bytes).unwrap_or(0);
        let width = self.geometry.width();
        let lists: Vec<(SlotId, Vec<&[u8]>)> = stripes
            .iter()
            .map(|(_, slot, content, parity)| {
                let shards = (0..width)
                    .map(
                        |shard| match self.geometry.shard_data_chunk(ShardIndex(shard)) {
                            Some(c) => &content[c * chunk..(c + 1) * chunk],
                            None => {
                                let p = shard - self.geometry.data_chunks();
                                &parity[p * chunk..(p + 1) * chunk]
                            }
                        },
                    )
                    .collect();
                (*slot, shards)
            })
            .collect();
        // Held from taking a generation until the entry is installed: attaching a replacement
        // waits for such writes, so every stripe with a generation below the replacement's
        // start is visible in the map by then (and gets rebuilt), and every later one writes the
        // replacement itself.
        let _attach_guard = self.attach_lock.read();
        let generations: Vec<Generation> = {
            let mut state = self.map.lock();
            stripes
                .iter()
                .map(|_| {
                    state.next_generation += 1;
                    Generation(state.next_generation)
                })
                .collect()
        };
        let sums = crate::codec::ShardSums::of_geometry(&self.geometry);
        let crcs: Vec<Vec<u32>> = lists
            .iter()
            .zip(&generations)
            .map(|((slot, shards), generation)| {
                let mut crcs = Vec::with_capacity(self.geometry.crcs_per_entry());
                for (s, bytes) in shards.iter().enumerate() {
                    sums.compute_into(*slot, ShardIndex(s), *generation, bytes, &mut crcs);
                }
                crcs
            })
            .collect();
        // All shards of all stripes as one batch: the members work in parallel when they are
        // io_uring devices (the thread waits only for the kernel, so this is safe under the
        // stripe locks).
        let written = self.write_batch(&lists);
        let mut results = Vec::with_capacity(stripes.len());
        let mut installs = Vec::with_capacity(stripes.len());
        for ((((stripe, slot, _, _), (_, shards)), mut written), (generation, crcs)) in stripes
            .iter()
            .zip(&lists)
            .zip(written)
            .zip(generations.into_iter().zip(crcs))
        {
            if written.iter().any(|w| !*w) {
                // Enough shards must have landed for the stripe to be readable; otherwise
                // refuse the write and keep the old stripe (its slot was not touched).
                let mut scratch: Vec<Vec<u8>> = shards.iter().map(|s| s.to_vec()).collect();
                if !self.codec.reconstruct(&mut scratch, &mut written) {
                    results.push(self.check_available().and(Err(Error::PoolUnavailable {
                        layout: self.geometry.layout.to_string(),
                        tolerated: self.geometry.tolerance(),
                        lost_devices: self.members.lost(),
                    })));
                    continue;
                }
            }
            let entry = MapEntry {
                slot: Some(*slot),
                generation,
                crcs,
            };
            installs.push((*stripe, entry));
            results.push(Ok(()));
        }
        let mut state = self.map.lock();
        for (stripe, entry) in &installs {
            install(&mut state, *stripe, entry);
        }
        results
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

/// One encoded stripe ready to write: (stripe, slot, its data, its parity).
type Encoded<'a> = (StripeId, SlotId, &'a [u8], &'a [u8]);

/// Work of a write request: a group of whole stripes, or part of one stripe.
enum WriteTask<'a> {
    Whole(Vec<(StripeId, &'a [u8])>),
    Part(StripeId, u64, &'a [u8]),
}

/// Part of a request within one stripe: (stripe, byte offset within its data, the bytes).
type Piece<'a> = (StripeId, u64, &'a mut [u8]);

/// The data chunks a range of `len` bytes at `within` of a stripe's data covers, and where the
/// range starts within the first of them.
fn chunk_span(within: u64, len: usize, chunk: u64) -> (std::ops::RangeInclusive<usize>, usize) {
    let first = usize::try_from(within / chunk).unwrap_or(0);
    let last = usize::try_from((within + len as u64).saturating_sub(1) / chunk).unwrap_or(0);
    let start = usize::try_from(within - first as u64 * chunk).unwrap_or(0);
    (first..=last, start)
}

/// Point `stripe` at its new entry (a slot, or none for a discarded stripe) and account for the
/// slot it leaves.
pub(super) fn install(state: &mut MapState, stripe: StripeId, entry: &MapEntry) {
    let previous = state.map.slot(stripe).map(|s| s.0);
    state.map.set(stripe, entry);
    if let Some(slot) = entry.slot {
        state.set_owner(slot, stripe);
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
