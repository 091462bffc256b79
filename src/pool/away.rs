//! Members away (docs/FORMAT.md V4.16 §3, §7): a member that stopped answering is out of
//! service and expected back. Here it is probed; when it has answered for the quiet period and
//! is the same member with the same content (pool and device UUIDs, the superblock generation
//! it had when it left, its size), it is resynced: attached to its own position as a
//! replacement that copies only what was born since it left. When the grace period ends first,
//! it is faulted for good and spares take over.
//!
//! Owns: the probe, the decision (resync, full copy, or fault) and when it is taken. Does not
//! own: marking a member away (the fault policy, `members.rs`), the copy itself (the rebuild of
//! `rows_rebuild.rs` with `Replacement::resync_from`), the superblock encoding.

use super::{Identity, PoolInner};
use crate::device::{Access, SharedDevice};
use crate::format::{EventKind, PoolUuid};
use crate::types::DeviceIndex;
use std::path::Path;
use std::time::Instant;

/// What one round of [`PoolInner::watch_away`] did, per member away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwayOutcome {
    /// It did not answer (or not for the quiet period yet); the grace period runs on.
    StillAway {
        /// Its position.
        index: usize,
    },
    /// It answered as itself with its content: a resync copying what was born since
    /// `from_sequence` was attached.
    Resyncing {
        /// Its position.
        index: usize,
        /// The first birth copied.
        from_sequence: u64,
    },
    /// It answered, but not with the content it left with: copied in full.
    CopiedInFull {
        /// Its position.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The grace period ended: faulted for good.
    Faulted {
        /// Its position.
        index: usize,
    },
}

impl PoolInner {
    /// One round over the members away: fault those whose grace period ended, probe the
    /// others, and resync one that has answered for the quiet period. Nothing on a read-only
    /// open.
    pub(crate) fn watch_away(&self) -> Vec<AwayOutcome> {
        let mut outcomes = Vec::new();
        if self.members.read_only() || self.rows().is_none() {
            return outcomes;
        }
        for member in &self.members.data {
            let Some(away) = member.away() else {
                continue;
            };
            if member.replacement().is_some() {
                continue; // being resynced (or replaced) already
            }
            let index = member.index;
            if Instant::now() >= away.deadline {
                outcomes.push(self.fault_away(index));
                continue;
            }
            let device = away.device.clone().or_else(|| reopen(&member.path()));
            let verdict = device
                .as_ref()
                .map(|d| self.returning(d.as_ref(), index, &away));
            let answered = matches!(verdict, Some(Ok(_)));
            let Some((_, back)) = self.members.probed(index, answered) else {
                continue;
            };
            match (verdict, device) {
                (Some(Ok(same_content)), Some(device)) if back => {
                    outcomes.push(self.resync(index, device, &away, same_content));
                }
                _ => outcomes.push(AwayOutcome::StillAway { index: index.0 }),
            }
        }
        outcomes
    }

    /// Whether `device` is this pool's member at `index` answering again: `Ok(true)` with the
    /// content it left with (its superblock generation is the one recorded, or one this
    /// process tried to write to it as it left and never heard back about), `Ok(false)` as
    /// itself but with another generation (a restored or rolled-back export: copy in full),
    /// `Err` when it does not answer or is not that member.
    pub(super) fn returning(
        &self,
        device: &dyn crate::device::Device,
        index: DeviceIndex,
        away: &super::members::Away,
    ) -> Result<bool, String> {
        // The read itself reconnects a remote device (at its backoff pace).
        let sb = super::open::read_superblock(device)?;
        if device.is_unreachable() {
            return Err("unreachable".into());
        }
        let identity = self.members.get(index).identity();
        if sb.pool_uuid == self.uuid && away.relabelled.contains(&sb.device_uuid) {
            // Its resync was abandoned part-way: copied in full this time.
            return Ok(false);
        }
        if sb.pool_uuid != self.uuid || sb.device_uuid != identity.uuid {
            return Err(format!(
                "its superblock names device {} of pool {}",
                sb.device_uuid, sb.pool_uuid
            ));
        }
        if device.size() < self.geometry.device_bytes {
            return Err(format!(
                "it is smaller ({} bytes) than before",
                device.size()
            ));
        }
        // Its own generation, or one whose write to it was in doubt when it left (the write
        // landed, its reply was lost): the pool wrote it, and its data is as it left.
        let in_doubt = away.in_doubt_generation.unwrap_or(away.record.generation);
        Ok((away.record.generation..=in_doubt).contains(&sb.generation))
    }

    /// Attach the member come back as its own replacement: only what was born since it left
    /// when its content is the one it left with, everything otherwise.
    fn resync(
        &self,
        index: DeviceIndex,
        device: SharedDevice,
        away: &super::members::Away,
        same_content: bool,
    ) -> AwayOutcome {
        let member = self.members.get(index);
        let identity = member.identity();
        let from = same_content.then_some(away.record.since_sequence);
        let path = identity.path.clone();
        let detail = match from {
            Some(s) => format!("answers again; resynced from sequence {s} (what changed while away)"),
            None => format!(
                "answers again, but with superblock generation other than {} (restored or rolled back?): copied in full",
                away.record.generation
            ),
        };
        tracing::warn!(device = %path, index = index.0, "{detail}");
        self.note(EventKind::Online, &path, &detail);
        let replacement = Identity {
            uuid: PoolUuid::random(),
            path: device.name(),
            domain: identity.domain,
        };
        let Some(rows) = self.rows() else {
            return AwayOutcome::StillAway { index: index.0 };
        };
        match self.rows_attach(rows, index, replacement, device, false, from) {
            Ok(()) => match from {
                Some(from_sequence) => AwayOutcome::Resyncing {
                    index: index.0,
                    from_sequence,
                },
                None => AwayOutcome::CopiedInFull {
                    index: index.0,
                    reason: detail,
                },
            },
            Err(err) => {
                tracing::error!(%err, device = %path, "could not start the resync; it stays away");
                AwayOutcome::StillAway { index: index.0 }
            }
        }
    }

    /// `clear --device` of a member away: resync it now from `device` if it is that member
    /// answering (by what changed when its content is the one it left with).
    pub(crate) fn resync_away_now(
        &self,
        index: DeviceIndex,
        device: SharedDevice,
    ) -> crate::error::Result<()> {
        let Some(away) = self.members.get(index).away() else {
            return Err(crate::error::Error::WrongState {
                device: device.name(),
                reason: "not away".into(),
            });
        };
        let same = self
            .returning(device.as_ref(), index, &away)
            .map_err(|reason| crate::error::Error::WrongState {
                device: device.name(),
                reason: format!("not this member answering again: {reason}"),
            })?;
        match self.resync(index, device.clone(), &away, same) {
            AwayOutcome::StillAway { .. } => Err(crate::error::Error::WrongState {
                device: device.name(),
                reason: "the resync could not be started (see the log)".into(),
            }),
            _ => Ok(()),
        }
    }

    /// The grace period of `index` ended: faulted for good (spares take over).
    fn fault_away(&self, index: DeviceIndex) -> AwayOutcome {
        let grace = self.members.policy().unavailable_grace.as_secs();
        if let Some(away) = self.members.clear_away(index) {
            let reason = format!(
                "unavailable for more than {grace} s (since {})",
                crate::types::rfc3339(away.record.since_unix_secs)
            );
            self.members.set_fault_reason(index, &reason);
            self.note(EventKind::Fault, &self.members.get(index).path(), &reason);
            if let Err(err) = self.members.write_superblocks() {
                tracing::error!(%err, "could not record the fault in the superblocks");
            }
        }
        if self.rebuild.auto_replace() {
            self.assign_spares();
        }
        AwayOutcome::Faulted { index: index.0 }
    }
}

/// The device at `path` opened again (an NBD export reconnects), if it can be.
fn reopen(path: &str) -> Option<SharedDevice> {
    crate::device::open_device_for(Path::new(path), Access::ReadWrite).ok()
}

impl super::Pool {
    /// One round of the watch over members away (what the background thread does every
    /// tenth of a second): fault those whose grace period ended, probe the others, resync
    /// one that has answered for the quiet period. For tests and pools without background
    /// work; see docs/FORMAT.md V4.16.
    #[must_use]
    pub fn watch_away(&self) -> Vec<AwayOutcome> {
        self.inner.watch_away()
    }
}
