//! Commits: making the map durable, which is what `flush` means.
//!
//! 1. under the map mutex, snapshot the dirty entries (encoded as a log record, or as a whole
//!    checkpoint when the log is full) and start a new epoch; writers continue meanwhile;
//! 2. flush every data device: the snapshot's stripes were fully written before they were
//!    installed in the map, so their shards are durable now;
//! 3. write the record (or checkpoint, into each device's older checkpoint area) to every data
//!    device and flush again;
//! 4. only now release the slots the snapshot's entries replaced.
//!
//! A crash before step 3 completes leaves the previous map, whose slots were never touched; after
//! it, the new map, whose data was already durable. Recovery replays at most one log's worth of
//! records after the newest checkpoint, so it is bounded by the log size, not the pool size.
//!
//! Epochs: a stripe rewritten after the snapshot is in the *new* dirty set, so the slot the
//! in-flight commit points it at is kept until the *next* commit, never freed early.

use super::{MapState, PoolInner};
use crate::error::{Error, Result};
use crate::format::{encode_checkpoint, encode_log_record, log_record_bytes, CheckpointHeader};
use crate::pool::DeviceFault;
use crate::types::{DeviceIndex, StripeId};
use parking_lot::Mutex;
use std::collections::BTreeMap;

/// What one commit writes, taken atomically from the map.
struct Snapshot {
    /// Stripe → slot its previous entry pointed at.
    replaced: BTreeMap<StripeId, Option<u64>>,
    /// Orphans of earlier failed commits.
    orphans: Vec<u64>,
    /// The encoded metadata and whether it is a checkpoint (else a log record).
    bytes: Vec<u8>,
    checkpoint: bool,
}

impl PoolInner {
    /// Make every completed write durable (see module docs).
    pub(crate) fn commit(&self) -> Result<()> {
        self.commit_with(false)
    }

    /// A commit that writes a whole checkpoint even if the log has room: used when a new
    /// member joins, so it holds the map like every other member.
    pub(crate) fn commit_with(&self, force_checkpoint: bool) -> Result<()> {
        if self.members.read_only() {
            // Nothing can be dirty (writes are refused), and nothing is ever written.
            return Ok(());
        }
        if let Some(rows) = self.rows() {
            return self.rows_flush(rows);
        }
        let mut meta = self.meta.lock();
        let sequence = meta.sequence + 1;
        let snapshot = {
            let mut state = self.map.lock();
            if state.dirty.is_empty() && !force_checkpoint {
                drop(state);
                drop(meta);
                let failed = self.members.flush_all();
                return if failed.is_empty() {
                    Ok(())
                } else {
                    Err(self.unavailable_with(failed.into_iter().map(|(device, _)| device)))
                };
            }
            let stripes: Vec<StripeId> = state.dirty.keys().copied().collect();
            let record_bytes = log_record_bytes(stripes.len(), self.geometry.crcs_per_entry());
            let checkpoint =
                force_checkpoint || meta.log_used + record_bytes > self.geometry.log_bytes;
            let bytes = if checkpoint {
                self.encode_checkpoint(&state, sequence)
            } else {
                encode_log_record(
                    self.uuid,
                    sequence,
                    state.next_generation,
                    &state.map,
                    &stripes,
                )
            };
            Snapshot {
                replaced: std::mem::take(&mut state.dirty),
                orphans: std::mem::take(&mut state.orphans),
                bytes,
                checkpoint,
            }
        };
        let started = std::time::Instant::now();
        let result = self.write_snapshot(&mut meta, &snapshot);
        tracing::debug!(
            sequence,
            stripes = snapshot.replaced.len(),
            checkpoint = snapshot.checkpoint,
            elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            ok = result.is_ok(),
            "commit"
        );
        meta.sequence += u64::from(result.is_ok());
        // Still under the meta mutex: a concurrent flush must not see an empty dirty set while a
        // failed commit's entries are being put back.
        let mut state = self.map.lock();
        let result = match result {
            Ok(()) => {
                let released = snapshot.replaced.into_values().flatten();
                for slot in released.chain(snapshot.orphans) {
                    // A slot a rebuild step is copying becomes free when the step releases it.
                    if state.held_for_rebuild.contains(&slot) {
                        state.freed_while_held.push(slot);
                    } else {
                        state.free.push(slot);
                    }
                }
                // The committed record supersedes any failed one at this log position.
                state.held.retain(|_| false);
                // Hand out the lowest slots first, so a sequential overwrite lands as ascending
                // device offsets (friendlier to write-back and disks) instead of in reverse.
                state.free.sort_unstable_by(|a, b| b.cmp(a));
                Ok(())
            }
            Err(err) => {
                restore_after_failed_commit(&mut state, snapshot);
                Err(err)
            }
        };
        drop(state);
        drop(meta);
        result
    }

    fn write_snapshot(&self, meta: &mut super::MetaCursor, snapshot: &Snapshot) -> Result<()> {
        #[cfg(feature = "testing")]
        let skip_flush = self.members.planted().skip_commit_data_flush;
        #[cfg(not(feature = "testing"))]
        let skip_flush = false;
        if !skip_flush {
            // A member still in service whose flush failed may not hold the snapshot's
            // stripes durably, and the pool cannot do without it: the commit fails (its
            // entries go back to the dirty set), rather than acknowledge what may be lost.
            let failed = self.members.flush_all();
            if !failed.is_empty() {
                return Err(self.unavailable_with(failed.into_iter().map(|(device, _)| device)));
            }
        }
        self.check_available()?;
        if snapshot.checkpoint {
            self.write_checkpoint_bytes(meta, &snapshot.bytes)
        } else {
            let offset = self.geometry.log_offset + meta.log_used;
            self.write_metadata_everywhere(|_| (offset, &snapshot.bytes))?;
            meta.log_used += snapshot.bytes.len() as u64;
            Ok(())
        }
    }

    fn encode_checkpoint(&self, state: &MapState, sequence: u64) -> Vec<u8> {
        encode_checkpoint(
            self.uuid,
            CheckpointHeader {
                sequence,
                next_generation: state.next_generation,
            },
            &state.map,
        )
    }

    /// Write the whole map as checkpoint `sequence` into each device's older checkpoint area,
    /// then restart the log. Used at create and open, when no writer runs.
    pub(crate) fn write_checkpoint(
        &self,
        meta: &mut super::MetaCursor,
        sequence: u64,
    ) -> Result<()> {
        let bytes = self.encode_checkpoint(&self.map.lock(), sequence);
        self.write_checkpoint_bytes(meta, &bytes)
    }

    fn write_checkpoint_bytes(&self, meta: &mut super::MetaCursor, bytes: &[u8]) -> Result<()> {
        let offsets = self.geometry.checkpoint_offsets;
        let targets = meta.next_checkpoint.clone();
        self.write_metadata_everywhere(|index| (offsets[targets[index.0]], bytes))?;
        for area in &mut meta.next_checkpoint {
            *area = 1 - *area;
        }
        meta.log_used = 0;
        Ok(())
    }

    /// Write one metadata buffer to every online data device and flush. A device that fails is
    /// faulted; the commit stands as long as the pool still has enough devices.
    fn write_metadata_everywhere<'a>(
        &self,
        place: impl Fn(DeviceIndex) -> (u64, &'a [u8]) + Sync,
    ) -> Result<()> {
        let failed: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let landed: usize = super::parallel::each(&self.members.data, |member| {
            let index = member.index;
            let (offset, bytes) = place(index);
            // A replacement that is complete is about to be (or already is, on disk) the
            // member: it must hold every map the members hold (see `finish_rebuild`).
            if let Some(replacement) = member.replacement().filter(|r| {
                r.receives_metadata
                    .load(std::sync::atomic::Ordering::Acquire)
            }) {
                let device = &replacement.device;
                if let Err(err) = device.write_at(offset, bytes).and_then(|()| device.flush()) {
                    self.members
                        .abandon_replacement(index, &format!("metadata write failed: {err}"));
                }
            }
            let Some(device) = member.device() else {
                return 0;
            };
            match device.write_at(offset, bytes).and_then(|()| device.flush()) {
                Ok(()) => 1,
                Err(err) => {
                    self.members
                        .record_error(index, Some(offset), DeviceFault::Write(&err));
                    failed.lock().push(member.path());
                    0
                }
            }
        })
        .into_iter()
        .sum();
        if landed == 0 {
            // Every member failed the write just now (faulted, or degraded where the pool could
            // not lose them): the pool cannot make anything durable.
            return Err(self.unavailable_with(failed.into_inner()));
        }
        self.check_available()
    }
}

impl PoolInner {
    /// `PoolUnavailable` naming the members out of service and `failing` (members still in
    /// service whose writes or flushes just failed, so nothing durable can be made with them).
    pub(crate) fn unavailable_with(&self, failing: impl IntoIterator<Item = String>) -> Error {
        let mut lost = self.members.lost();
        for device in failing {
            if !lost.contains(&device) {
                lost.push(device);
            }
        }
        Error::PoolUnavailable {
            layout: self.geometry.layout.to_string(),
            tolerated: self.geometry.tolerance(),
            lost_devices: lost,
        }
    }
}

/// A commit failed part-way: its record may be on some devices. Put its entries back in the
/// dirty set so the next commit covers them, and keep every slot it may reference out of reuse.
fn restore_after_failed_commit(state: &mut MapState, snapshot: Snapshot) {
    state.orphans.extend(snapshot.orphans);
    for (stripe, previous) in snapshot.replaced {
        match state.dirty.get(&stripe) {
            // Rewritten since the snapshot: the slot the failed record named is now only
            // referenced by that (possibly partial) record: keep it until a commit succeeds.
            Some(after_snapshot) => {
                if let Some(slot) = *after_snapshot {
                    state.orphans.push(slot);
                }
                state.dirty.insert(stripe, previous);
            }
            // Not rewritten since: the map still names the slot the failed record named.
            // Should the stripe be rewritten before a commit succeeds, that slot must not be
            // reused at once: the partial record may name it on some device.
            None => {
                if let Some(slot) = state.map.slot(stripe) {
                    state.held.insert(slot.0);
                }
                state.dirty.insert(stripe, previous);
            }
        }
    }
}
