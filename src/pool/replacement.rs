//! Replacements: attaching a device to take over a data position (by hand or from the spares),
//! estimating what its rebuild will copy, swapping it in once filled, persisting the rebuild
//! watermarks, and reporting progress. These change members and superblocks, so they are the
//! pool's; what to copy and how is `crate::rebuild`'s, which reaches the pool through
//! `RebuildTarget` (implemented in `maintenance`).
//!
//! Owns: a replacement's life as a member-to-be. Must not hold: the rebuild's copying (batches,
//! sources, reconstruction), which lives in `crate::rebuild`.

use super::{Identity, PoolInner, Replacement};
use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::rebuild::{needs_rebuild, shards_on, RebuildProgress};
use crate::types::DeviceIndex;
use std::sync::atomic::Ordering;
use std::sync::Arc;

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
            return Err(Error::NotInPool {
                name: index.0.to_string(),
                role: "data position",
            });
        }
        if device.size() < self.geometry.device_bytes {
            return Err(Error::DeviceTooSmall {
                device: device.name(),
                size: device.size(),
                needed: self.geometry.device_bytes,
            });
        }
        if let Some(rows) = self.rows() {
            return self.rows_attach(rows, index, identity, device, from_spare, None);
        }
        if let Some(existing) = self.members.get(index).replacement() {
            return Err(Error::Busy(format!(
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
            self.rebuild_started(index, &replacement);
        }
        self.members.record_everywhere_or_name()?;
        Ok(())
    }

    /// Say and record that `replacement` started filling position `index`.
    pub(crate) fn rebuild_started(&self, index: DeviceIndex, replacement: &Replacement) {
        let total = replacement.total_bytes.load(Ordering::Relaxed);
        tracing::info!(index = index.0, device = %replacement.identity.path, total_bytes = total, "rebuild started");
        self.note(
            crate::format::EventKind::RebuildStart,
            &replacement.identity.path,
            &format!(
                "replacing {} (data position {}){}, {} to copy",
                self.members.get(index).path(),
                index.0,
                if replacement.from_spare {
                    super::status::FROM_SPARES
                } else {
                    ""
                },
                crate::types::human_bytes(total)
            ),
        );
    }

    /// Count the bytes the rebuild of `index` will write from its watermark on.
    pub(crate) fn estimate_total(&self, index: DeviceIndex, replacement: &Replacement) {
        if let Some(rows) = self.rows() {
            let total = self.rows_rebuild_estimate(&rows.read_volume());
            replacement.total_bytes.store(total, Ordering::Relaxed);
            return;
        }
        let from = replacement.next_slot.load(Ordering::Acquire);
        let state = self.map.lock();
        let mut total = 0u64;
        for stripe in state.map.written_stripes() {
            let entry = state.map.get(stripe);
            if let Some(slot) = entry.slot.filter(|s| s.0 >= from) {
                if needs_rebuild(replacement, entry.generation) {
                    total += shards_on(&self.geometry, slot, index).len() as u64
                        * self.geometry.chunk_bytes;
                }
            }
        }
        replacement.total_bytes.store(total, Ordering::Relaxed);
    }

    /// Attach an available spare to every faulted or degraded position that has no
    /// replacement yet (a degraded member keeps serving while the spare is filled, so
    /// redundancy never drops). Members taken offline by an administrator are left alone.
    pub(crate) fn assign_spares(&self) {
        if self.members.read_only() {
            return;
        }
        // Faulted positions first (they have lost their redundancy), then degraded ones. A
        // member an administrator took offline is never replaced automatically: it is meant
        // to come back (`online`), or to be replaced by hand (`replace`).
        // A member away is expected back within its grace period (FORMAT.md V4.16): no spare
        // until that ends.
        let faulted = self.members.data.iter().filter(|m| {
            !m.is_online()
                && m.away().is_none()
                && m.fault_reason().as_deref() != Some(super::admin::OFFLINE_REASON)
        });
        let degraded = self
            .members
            .data
            .iter()
            .filter(|m| m.is_online() && m.degraded_reason().is_some());
        for member in faulted.chain(degraded) {
            if member.replacement().is_some() {
                continue;
            }
            // Only a spare whose failure domain keeps the placement rule there.
            let Some((identity, device)) = self.members.take_spare_by(|id| {
                #[cfg(feature = "testing")]
                if self.members.planted().domains_ignored {
                    return true;
                }
                self.domain_allows(member.index, id.domain.as_deref())
                    .is_ok()
            }) else {
                if !self.members.spares().is_empty() && self.has_domains() {
                    tracing::warn!(
                        index = member.index.0,
                        "no spare in a failure domain that keeps the placement rule"
                    );
                }
                continue;
            };
            // A rebuild onto a spare is an event a policy may take a recovery point before.
            self.before_event("rebuild");
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

    /// Persist the rebuild watermarks: replacements flushed first, then the superblocks.
    pub(crate) fn checkpoint_rebuilds(&self) -> Result<()> {
        if self.rows().is_some() {
            // A v4 rebuild records no watermark: after a crash it starts over (FORMAT.md
            // V4.13, stage 2); what is recorded is the replacement itself.
            self.members.record_everywhere_or_name()?;
            return Ok(());
        }
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
        self.members.record_everywhere_or_name()?;
        Ok(())
    }

    /// Swap the rebuilt replacement in; `false` if it was abandoned during the last step.
    ///
    /// Order, so that a crash at any point leaves a pool that knows where every flushed byte
    /// is: (1) flush the new device; (2) mark it complete and commit a checkpoint, which now
    /// goes to the new device too; (3) write the superblocks naming it the member; (4) only
    /// then swap it in memory. Until (4) every write still goes to both the old member and the
    /// replacement, so whichever one the superblocks name after a crash holds it.
    pub(crate) fn finish_rebuild(
        &self,
        index: DeviceIndex,
        replacement: &Replacement,
    ) -> Result<bool> {
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
        let landed = self.record_on(&replacement.device);
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
        self.rebuilt(index, replacement, &old);
        Ok(true)
    }

    /// Write the superblocks; `Err` unless the write landed on `device` (a replacement about
    /// to be named the member must hold its own superblock).
    pub(crate) fn record_on(&self, device: &SharedDevice) -> Result<()> {
        let failures = self.members.write_superblocks()?;
        match failures
            .into_iter()
            .find(|(name, _)| *name == device.name())
        {
            Some((name, err)) => Err(Error::Io {
                device: name,
                offset: None,
                source: err.into_io(),
            }),
            None => Ok(()),
        }
    }

    /// Say and record that `replacement` took over position `index` from `old`.
    pub(crate) fn rebuilt(&self, index: DeviceIndex, replacement: &Replacement, old: &Identity) {
        tracing::warn!(
            index = index.0,
            device = %replacement.identity.path,
            replaced = old.path,
            bytes = replacement.bytes_written.load(Ordering::Relaxed),
            "rebuild complete; the new device is a full member"
        );
        self.note(
            crate::format::EventKind::RebuildFinish,
            &replacement.identity.path,
            &format!(
                "replaced {} (data position {}){}: {} written in {}s, {} chunks lost",
                old.path,
                index.0,
                if replacement.from_spare {
                    super::status::FROM_SPARES
                } else {
                    ""
                },
                crate::types::human_bytes(replacement.bytes_written.load(Ordering::Relaxed)),
                replacement.started.elapsed().as_secs(),
                replacement.lost_chunks.load(Ordering::Relaxed)
            ),
        );
        // The event and the bytes rebuilt, recorded at the rebuild's end.
        if let Err(err) = self.members.record_everywhere_or_name() {
            tracing::error!(%err, "could not record the finished rebuild in the superblocks");
        }
    }

    pub(crate) fn rebuild_progress(&self) -> Vec<RebuildProgress> {
        self.members
            .data
            .iter()
            .filter_map(|member| member.replacement().map(|r| self.progress_of(member, &r)))
            .collect()
    }

    pub(crate) fn progress_of(
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
