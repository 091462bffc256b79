//! Administration: replacing, offlining and onlining members, adding spares, and driving
//! rebuilds from the caller's thread. Every change is recorded in the superblocks.

use super::{Identity, Pool, PoolInner, RebuildProgress, Spare, StepOutcome};
use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::format::{EventKind, PoolUuid};
use crate::rebuild::Pacer;
use crate::types::DeviceIndex;

impl PoolInner {
    /// Log an event (persisted with the next superblock write).
    pub(crate) fn note(&self, kind: EventKind, device: &str, detail: &str) {
        self.members.record_event(kind, device, detail);
    }

    fn member_index(&self, name: &str) -> Result<DeviceIndex> {
        self.members.find(name).ok_or_else(|| Error::NotInPool {
            name: name.to_string(),
            role: "data member",
        })
    }

    /// What the device with UUID `uuid` is in this pool, if anything: a data member (in
    /// service or not), a replacement being rebuilt, or a spare.
    fn role_of(&self, uuid: PoolUuid) -> Option<String> {
        for member in &self.members.data {
            if member.identity().uuid == uuid {
                return Some(format!("a member (data position {})", member.index.0));
            }
            if member
                .replacement()
                .is_some_and(|r| r.identity.uuid == uuid)
            {
                return Some(format!(
                    "the replacement being rebuilt for data position {}",
                    member.index.0
                ));
            }
        }
        self.members
            .spares()
            .iter()
            .any(|s| s.identity.uuid == uuid)
            .then(|| "a spare".to_string())
    }

    /// Whether a spare of failure domain `domain` fits this pool: a domain exactly when the
    /// members have them, and a good name.
    fn check_spare_domain(&self, domain: Option<&str>) -> Result<()> {
        let with_domains = self.has_domains();
        match domain {
            Some(name) if with_domains => {
                crate::geometry::check_domain_name(name).map_err(Error::InvalidConfig)
            }
            Some(name) => Err(Error::InvalidConfig(format!(
                "failure domain {name:?} for a spare of a pool without failure domains"
            ))),
            None if with_domains => Err(Error::InvalidConfig(
                "this pool's members have failure domains: give the spare one (--domain)".into(),
            )),
            None => Ok(()),
        }
    }

    /// Whether the pool's members carry failure domains.
    pub(crate) fn has_domains(&self) -> bool {
        self.members
            .data
            .iter()
            .any(|m| m.identity().domain.is_some())
    }

    /// Whether data position `index` may be served by a device of failure domain `domain`,
    /// the other positions keeping theirs (docs/FORMAT.md V4.16, section 2); always in a pool
    /// without domains.
    ///
    /// # Errors
    /// The rule's message, or that the device has no domain.
    pub(crate) fn domain_allows(&self, index: DeviceIndex, domain: Option<&str>) -> Result<()> {
        if !self.has_domains() {
            return Ok(());
        }
        let Some(domain) = domain else {
            return Err(Error::InvalidConfig(format!(
                "data position {} needs a device with a failure domain",
                index.0
            )));
        };
        // Each other position as its member, or as its replacement being filled (either may
        // be what serves it when the dust settles): every mix must keep the rule (found by the
        // simulation, seed 2100070: two spares, each fine alone, together too many in one).
        let choices: Vec<Vec<String>> = self
            .members
            .data
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if i == index.0 {
                    return vec![domain.to_string()];
                }
                let mut options = vec![m.identity().domain.unwrap_or_default()];
                if let Some(replacement) = m.replacement() {
                    let future = replacement.identity.domain.clone().unwrap_or_default();
                    if !options.contains(&future) {
                        options.push(future);
                    }
                }
                options
            })
            .collect();
        let mixes: usize = choices.iter().map(Vec::len).product();
        for mix in 0..mixes {
            let mut rest = mix;
            let domains: Vec<&str> = choices
                .iter()
                .map(|options| {
                    let pick = &options[rest % options.len()];
                    rest /= options.len();
                    pick.as_str()
                })
                .collect();
            crate::geometry::check_domains(&self.geometry, &domains)
                .map_err(Error::InvalidConfig)?;
        }
        Ok(())
    }

    /// Check a device about to be labelled as a new member, spare or relabelled member: one
    /// that serves this pool in any role is refused always; another pool's superblock or a
    /// foreign signature (filesystem, partition table ...) is refused unless forced.
    fn check_new_device(&self, device: &SharedDevice, force: bool) -> Result<()> {
        if let Ok(sb) = super::open::read_superblock(device.as_ref()) {
            if sb.pool_uuid == self.uuid {
                if let Some(role) = self.role_of(sb.device_uuid) {
                    return Err(Error::AlreadyMember {
                        device: device.name(),
                        role,
                    });
                }
            }
        }
        if force {
            return Ok(());
        }
        if let Some(pool) = super::open::superblock_owner(device.as_ref()) {
            return Err(Error::DeviceInUse {
                device: device.name(),
                pool,
            });
        }
        crate::device::refuse_signature(device.as_ref())
    }
}

impl Pool {
    /// Replace data member `old` (last known path, index or UUID) with a new `device`. Works for
    /// a healthy member too: the new device is filled while the old one keeps serving, then
    /// swapped in, so redundancy is kept throughout. The copy runs in the background thread, or
    /// through [`Pool::run_rebuilds`].
    ///
    /// # Errors
    /// [`Error::NotInPool`] for an unknown member, [`Error::Busy`] for one already being replaced;
    /// [`Error::AlreadyMember`] if `device` serves this pool already (even with `force`);
    /// [`Error::DeviceInUse`] if `device` holds a stripestore superblock and `force` is false;
    /// [`Error::ForeignSignature`] if it holds a filesystem, partition table or another known
    /// signature and `force` is false; [`Error::DeviceTooSmall`].
    pub fn replace(&self, old: &str, device: SharedDevice, force: bool) -> Result<()> {
        self.inner.replace(old, device, force)
    }

    /// Replace data member `old` with the pool's spare named `spare` (path or UUID).
    ///
    /// # Errors
    /// As [`Pool::replace`], and [`Error::NotInPool`] if there is no such usable spare.
    pub fn replace_with_spare(&self, old: &str, spare: &str) -> Result<()> {
        self.inner.replace_with_spare(old, spare)
    }

    /// Take data member `name` out of service on purpose (recorded on disk). Refused if the pool
    /// would then lose data availability.
    ///
    /// # Errors
    /// [`Error::NotInPool`] for an unknown member; [`Error::PoolUnavailable`] if taking it
    /// out would leave too few devices.
    pub fn offline(&self, name: &str) -> Result<()> {
        self.inner.offline(name)
    }

    /// Fault data member `name` now (recorded on disk): stop waiting for a member that is
    /// UNAVAILABLE (docs/FORMAT.md V4.16, "the explicit command"), or take a member in
    /// service out for good. Spares then take over (with auto-replace), unlike [`Pool::offline`],
    /// which means "it comes back".
    ///
    /// # Errors
    /// [`Error::NotInPool`]; [`Error::PoolUnavailable`] if a member in service cannot be lost;
    /// [`Error::WrongState`] if it is faulted or offline already; [`Error::ReadOnly`].
    pub fn fault_member(&self, name: &str) -> Result<()> {
        self.inner.fault_member(name)
    }

    /// Bring faulted member `name` back with `device`: the same disk coming back (its
    /// superblock names this pool and this position's device), or an unlabelled one. Its
    /// content is outdated either way, so it is relabelled and rebuilt like a new device, then
    /// swapped in.
    ///
    /// # Errors
    /// [`Error::WrongState`] if the member is not faulted or the device is not it, [`Error::Busy`] if it is already being replaced;
    /// [`Error::AlreadyMember`] if `device` serves this pool in another role (even with
    /// `force`); [`Error::DeviceInUse`] / [`Error::ForeignSignature`] for another pool's
    /// device or a known signature, unless `force`; [`Error::DeviceTooSmall`].
    pub fn online(&self, name: &str, device: SharedDevice, force: bool) -> Result<()> {
        self.inner.online(name, device, force)
    }

    /// Add a spare device to the pool.
    ///
    /// # Errors
    /// [`Error::AlreadyMember`] if it serves this pool already (even with `force`);
    /// [`Error::DeviceInUse`] / [`Error::ForeignSignature`] if it holds a stripestore
    /// superblock or another known signature and `force` is false; [`Error::DeviceTooSmall`].
    pub fn add_spare(&self, device: SharedDevice, force: bool) -> Result<()> {
        self.inner.add_spare(device, force, None)
    }

    /// [`Pool::add_spare`] in failure domain `domain` (docs/FORMAT.md V4.16): needed, and only
    /// allowed, in a pool whose members have domains. Automatic replacement attaches a spare
    /// only where its domain keeps the placement rule.
    ///
    /// # Errors
    /// As [`Pool::add_spare`]; [`Error::InvalidConfig`] for a bad name, or a domain given to a
    /// pool without domains (or none to a pool with them).
    pub fn add_spare_in(&self, device: SharedDevice, force: bool, domain: &str) -> Result<()> {
        self.inner
            .add_spare(device, force, Some(domain.to_string()))
    }

    /// Remove spare `name` (its recorded path or UUID) from the pool: the superblocks stop
    /// listing it. Its own label is left as it is (wipe it with `labelclear`); the next open
    /// sees it as a former device of this pool and leaves it out.
    ///
    /// # Errors
    /// [`Error::Busy`] if a rebuild is filling that spare (it is no longer a spare but a
    /// replacement; wait for it, or replace the member again); [`Error::NotInPool`] if the pool
    /// has no such spare; [`Error::ReadOnly`] on a read-only open; the superblock write's error
    /// (the spare is then kept).
    pub fn remove_spare(&self, name: &str) -> Result<()> {
        self.inner.remove_spare(name)
    }

    /// Attach an available spare to every faulted position that has none yet (what
    /// auto-replace does on its own).
    pub fn attach_spares(&self) {
        self.inner.assign_spares();
    }

    /// Progress of every rebuild in progress.
    #[must_use]
    pub fn rebuild_progress(&self) -> Vec<RebuildProgress> {
        self.inner.rebuild_progress()
    }

    /// Set the rebuild rate limit in bytes per second (`None`: unlimited).
    pub fn set_rebuild_rate(&self, bytes_per_s: Option<u64>) {
        self.inner.rebuild.set_rate(bytes_per_s);
    }

    /// One deterministic rebuild step from the caller's thread: attach spares to faulted
    /// positions (if auto-replace is on), then rebuild the next batch of stripes of every running
    /// rebuild. `checkpoint` persists the watermarks afterwards.
    ///
    /// # Errors
    /// [`Error::Unrecoverable`] if a stripe cannot be reconstructed; [`Error::Io`] if the new
    /// device fails (the rebuild is then abandoned).
    pub fn rebuild_step(&self, checkpoint: bool) -> Result<StepOutcome> {
        self.rebuild_step_of(checkpoint, false)
    }

    /// [`Pool::rebuild_step`], or a longer step (`long`: what `run_rebuilds` takes at once).
    fn rebuild_step_of(&self, checkpoint: bool, long: bool) -> Result<StepOutcome> {
        self.inner.writable("rebuild")?;
        if self.inner.rebuild.auto_replace() {
            self.inner.assign_spares();
        }
        if long {
            self.inner.rebuild_long_step(checkpoint)
        } else {
            self.inner.rebuild_step(checkpoint)
        }
    }

    /// Run every pending rebuild to completion on the caller's thread, honouring the rate limit
    /// and checkpointing about once a second; `on_progress` is called after every step.
    ///
    /// # Errors
    /// As [`Pool::rebuild_step`].
    /// Returns the final progress of every rebuild it completed.
    pub fn run_rebuilds(
        &self,
        mut on_progress: impl FnMut(&[RebuildProgress]),
    ) -> Result<Vec<RebuildProgress>> {
        let mut pacer = Pacer::default();
        let mut completed = Vec::new();
        loop {
            let checkpoint = pacer.checkpoint_due();
            let outcome = self.rebuild_step_of(checkpoint, true)?;
            completed.extend(outcome.completed.iter().cloned());
            let mut progress = self.inner.rebuild_progress();
            progress.extend(outcome.completed);
            on_progress(&progress);
            if outcome.running == 0 {
                return Ok(completed);
            }
            std::thread::sleep(pacer.after_step(
                self.inner.rebuild.rate(),
                self.inner.rebuild.foreground_recent(),
                outcome.written_bytes,
            ));
        }
    }

    /// `zpool clear`: forget the errors of member `name` (every member if `None`). A degraded
    /// member (in service) is back to online at once: every read it serves is verified anyway.
    /// A member faulted by errors or a transient failure is not trusted blindly: give its
    /// device (normally the same disk, back again) with [`Pool::clear_with`], which resyncs it.
    /// Members taken offline on purpose stay offline (use [`Pool::online`]).
    ///
    /// # Errors
    /// [`Error::ReadOnly`]; [`Error::NotInPool`] for an unknown member;
    /// [`Error::CorruptMetadata`] if the superblocks cannot be written.
    pub fn clear(&self, name: Option<&str>) -> Result<Vec<Cleared>> {
        self.inner.clear(name)
    }

    /// Clear faulted member `name` by resyncing it from `device`, which must be that member
    /// itself (this pool's superblock, with the member's own device UUID) come back: it is
    /// rebuilt in place from redundancy (only live data is copied), then swapped back in.
    ///
    /// # Errors
    /// [`Error::ReadOnly`]; [`Error::WrongState`] if `name` is not faulted or `device` is not
    /// that member; as [`Pool::online`].
    pub fn clear_with(&self, name: &str, device: SharedDevice) -> Result<()> {
        self.inner.clear_with(name, device)
    }
}

impl PoolInner {
    /// See [`Pool::replace`].
    pub(crate) fn replace(&self, old: &str, device: SharedDevice, force: bool) -> Result<()> {
        self.writable("replace")?;
        let index = self.member_index(old)?;
        self.check_new_device(&device, force)?;
        self.before_event("replace");
        // A new disk in the old one's place: the same failure domain.
        let identity = Identity {
            uuid: PoolUuid::random(),
            path: device.name(),
            domain: self.members.get(index).identity().domain,
        };
        self.note(
            EventKind::Replace,
            &self.members.get(index).path(),
            &format!("by new device {}", identity.path),
        );
        self.attach_replacement(index, identity, device, false)
    }

    /// See [`Pool::replace_with_spare`].
    pub(crate) fn replace_with_spare(&self, old: &str, spare: &str) -> Result<()> {
        self.writable("replace")?;
        let index = self.member_index(old)?;
        if let Some(chosen) = self
            .members
            .spares()
            .into_iter()
            .find(|s| s.identity.is_named(spare))
        {
            self.domain_allows(index, chosen.identity.domain.as_deref())?;
        }
        self.before_event("replace");
        let (identity, device) = self
            .members
            .take_spare_by(|id| id.is_named(spare))
            .ok_or_else(|| Error::NotInPool {
                name: spare.to_string(),
                role: "usable spare",
            })?;
        self.note(
            EventKind::Replace,
            &self.members.get(index).path(),
            &format!("by spare {}", identity.path),
        );
        let result = self.attach_replacement(index, identity.clone(), device.clone(), true);
        if result.is_err() {
            self.members.push_spare(Spare {
                identity,
                device: Some(device),
                fault: None,
            });
        }
        result
    }

    /// See [`Pool::offline`].
    pub(crate) fn offline(&self, name: &str) -> Result<()> {
        self.writable("offline")?;
        let index = self.member_index(name)?;
        if !self.members.fault_if_available(index, OFFLINE_REASON) {
            return Err(self.unavailable_without(index));
        }
        Ok(())
    }

    /// Why `index` cannot be taken out of service: the pool would then lack what its layout
    /// needs, with the members it would have lost.
    fn unavailable_without(&self, index: DeviceIndex) -> Error {
        let mut lost = self.members.lost();
        lost.push(self.members.get(index).path());
        Error::PoolUnavailable {
            layout: self.geometry.layout.to_string(),
            tolerated: self.geometry.tolerance(),
            lost_devices: lost,
        }
    }

    /// See [`Pool::fault_member`].
    pub(crate) fn fault_member(&self, name: &str) -> Result<()> {
        self.writable("fault")?;
        let index = self.member_index(name)?;
        if self.members.clear_away(index).is_some() {
            self.members.set_fault_reason(index, FAULT_REASON);
            self.note(
                EventKind::Fault,
                &self.members.get(index).path(),
                FAULT_REASON,
            );
            self.members.record_everywhere_or_name()?;
        } else if !self.members.get(index).is_online() {
            return Err(Error::WrongState {
                device: name.to_string(),
                reason: "already out of service".into(),
            });
        } else if !self.members.fault_if_available(index, FAULT_REASON) {
            return Err(self.unavailable_without(index));
        }
        if self.rebuild.auto_replace() {
            self.assign_spares();
        }
        Ok(())
    }

    /// See [`Pool::online`].
    pub(crate) fn online(&self, name: &str, device: SharedDevice, force: bool) -> Result<()> {
        self.writable("online")?;
        let index = self.member_index(name)?;
        let member = self.members.get(index);
        if member.is_online() {
            return Err(Error::WrongState {
                device: name.to_string(),
                reason: "already online".into(),
            });
        }
        let found = super::open::read_superblock(device.as_ref()).ok();
        let returning = found.as_ref().is_some_and(|sb| {
            sb.pool_uuid == self.uuid && sb.device_uuid == member.identity().uuid
        });
        if let (Some(sb), true, false) = (&found, returning, force) {
            self.refuse_branch(&device, sb)?;
        }
        if !returning {
            self.check_new_device(&device, force)?;
        }
        // Bringing a member back rebuilds it: an event a policy takes a recovery point before.
        self.before_event("rebuild");
        let identity = Identity {
            uuid: PoolUuid::random(),
            path: device.name(),
            domain: member.identity().domain,
        };
        self.note(
            EventKind::Online,
            &member.path(),
            &format!("brought back from {}; resynced before use", identity.path),
        );
        self.attach_replacement(index, identity, device, false)
    }

    /// See [`Pool::add_spare`].
    pub(crate) fn add_spare(
        &self,
        device: SharedDevice,
        force: bool,
        domain: Option<String>,
    ) -> Result<()> {
        self.writable("spare add")?;
        self.check_spare_domain(domain.as_deref())?;
        self.check_new_device(&device, force)?;
        if device.size() < self.geometry.device_bytes {
            return Err(Error::DeviceTooSmall {
                device: device.name(),
                size: device.size(),
                needed: self.geometry.device_bytes,
            });
        }
        let identity = Identity {
            uuid: PoolUuid::random(),
            path: device.name(),
            domain,
        };
        self.members.push_spare(Spare {
            identity: identity.clone(),
            device: Some(device),
            fault: None,
        });
        self.note(
            EventKind::SpareAdded,
            &identity.path,
            &identity.uuid.to_string(),
        );
        if let Err(err) = self.members.write_superblocks() {
            // Not recorded anywhere (the superblock could not be encoded, e.g. paths too long
            // for its 64 KiB): keeping it in memory would make every later superblock write
            // fail too, so faults would stop being recorded.
            self.members.take_spare_by(|id| id.uuid == identity.uuid);
            return Err(err);
        }
        Ok(())
    }

    /// See [`Pool::remove_spare`].
    pub(crate) fn remove_spare(&self, name: &str) -> Result<()> {
        self.writable("spare remove")?;
        let named = |identity: &Identity| identity.is_named(name);
        let Some((position, spare)) = self.members.remove_spare_by(named) else {
            let rebuilding = self.members.data.iter().find(|member| {
                member
                    .replacement()
                    .is_some_and(|r| r.from_spare && named(&r.identity))
            });
            return Err(match rebuilding {
                Some(member) => Error::Busy(format!(
                    "spare {name} is being rebuilt onto for data position {}; it can be removed once it is no longer in use",
                    member.index.0
                )),
                None => Error::NotInPool {
                    name: name.to_string(),
                    role: "spare",
                },
            });
        };
        self.note(
            EventKind::SpareRemoved,
            &spare.identity.path,
            &spare.identity.uuid.to_string(),
        );
        if let Err(err) = self.members.write_superblocks() {
            self.members.restore_spare(position, spare);
            return Err(err);
        }
        Ok(())
    }

    /// See [`Pool::clear`].
    pub(crate) fn clear(&self, name: Option<&str>) -> Result<Vec<Cleared>> {
        self.writable("clear")?;
        let indexes = match name {
            Some(name) => vec![self.member_index(name)?],
            None => self.members.data.iter().map(|m| m.index).collect(),
        };
        let mut cleared = Vec::new();
        for index in indexes {
            let member = self.members.get(index);
            let was_degraded = self.members.clear_degraded(index);
            let state = match member.fault_reason() {
                None if was_degraded => ClearedState::Online,
                None => continue,
                Some(reason) if reason == OFFLINE_REASON => ClearedState::StillOffline,
                Some(reason) => ClearedState::NeedsDevice { reason },
            };
            if state == ClearedState::Online {
                self.note(EventKind::Clear, &member.path(), "errors cleared; online");
            }
            cleared.push(Cleared {
                index: index.0,
                path: member.path(),
                state,
            });
        }
        if cleared.iter().any(|c| c.state == ClearedState::Online) {
            self.members.record_everywhere_or_name()?;
        }
        Ok(cleared)
    }

    /// See [`Pool::clear_with`].
    /// Refuse to resync over `device` (a member given back, its superblock `sb`) when a forced
    /// open left it out and it went on after (docs/FORMAT.md, "Forks"): a branch whose flushed
    /// writes the resync would overwrite.
    fn refuse_branch(&self, device: &SharedDevice, sb: &crate::format::Superblock) -> Result<()> {
        match self.members.diverged_from(sb.device_uuid, sb.generation) {
            Some(from) => Err(Error::SplitBrain {
                device: device.name(),
                generation: sb.generation,
                other: "this pool".into(),
                other_generation: from,
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn clear_with(&self, name: &str, device: SharedDevice) -> Result<()> {
        self.writable("clear")?;
        let index = self.member_index(name)?;
        let member = self.members.get(index);
        if member.is_online() {
            self.clear(Some(name))?;
            return Ok(());
        }
        if member.fault_reason().as_deref() == Some(OFFLINE_REASON) {
            return Err(Error::WrongState {
                device: name.to_string(),
                reason: "offline on purpose; bring it back with `online`".into(),
            });
        }
        if member.away().is_some() {
            // Away and given back by hand: resynced by what changed, as the watch would.
            return self.resync_away_now(index, device);
        }
        let identity = member.identity();
        match super::open::read_superblock(device.as_ref()) {
            Ok(sb) if sb.pool_uuid == self.uuid && sb.device_uuid == identity.uuid => {
                self.refuse_branch(&device, &sb)?;
            }
            Ok(sb) => {
                return Err(Error::WrongState {
                    device: device.name(),
                    reason: format!(
                        "not member {} of this pool (its superblock names device {} of pool {}); use replace for another device",
                        identity.path, sb.device_uuid, sb.pool_uuid
                    ),
                })
            }
            Err(reason) => {
                return Err(Error::WrongState {
                    device: device.name(),
                    reason: format!(
                        "not member {} of this pool: {reason}; use replace for another device",
                        identity.path
                    ),
                })
            }
        }
        tracing::warn!(device = %device.name(), index = index.0, "clearing a faulted member: it is resynced from redundancy before it serves again");
        self.note(
            EventKind::Clear,
            &identity.path,
            "faulted member given back; resynced from redundancy before use",
        );
        self.attach_replacement(
            index,
            Identity {
                uuid: PoolUuid::random(),
                path: device.name(),
                domain: identity.domain.clone(),
            },
            device,
            false,
        )?;
        self.members.clear_degraded(index);
        Ok(())
    }
}

/// The reason recorded for a member faulted with [`Pool::fault_member`].
pub(crate) const FAULT_REASON: &str = "faulted by administrator";

/// The reason recorded for a member taken out of service with [`Pool::offline`].
pub(crate) const OFFLINE_REASON: &str = "offline by administrator";

/// What [`Pool::clear`] did for one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleared {
    /// Its position.
    pub index: usize,
    /// Its last known path.
    pub path: String,
    /// What it is now.
    pub state: ClearedState,
}

/// See [`Cleared`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClearedState {
    /// It was degraded and is online again (its errors forgotten).
    Online,
    /// It is faulted: its device must be given back ([`Pool::clear_with`]) to be resynced.
    NeedsDevice {
        /// Why it was faulted.
        reason: String,
    },
    /// Taken offline on purpose: `online` brings it back.
    StillOffline,
}

#[cfg(test)]
mod spare_remove_tests {
    use crate::device::{MemDevice, SharedDevice};
    use crate::error::Error;
    use crate::testing::{mem_devices, shared};
    use crate::{CreateOptions, OpenOptions, Pool};
    use std::sync::Arc;

    const DEVICE_BYTES: u64 = 4 << 20;

    fn pool_with_spares() -> (Vec<Arc<MemDevice>>, Vec<Arc<MemDevice>>, Pool) {
        let mems = mem_devices(2, DEVICE_BYTES);
        let spares: Vec<Arc<MemDevice>> = ["spare-a", "spare-b"]
            .iter()
            .map(|name| Arc::new(MemDevice::new(*name, DEVICE_BYTES)))
            .collect();
        let mut options = CreateOptions::new("mirror:2".parse().unwrap());
        options.chunk_bytes = 4096;
        // A version-3 pool (its own engine): the test machinery's switch.
        crate::testing::allow_format_3_writes(true);
        options.format = crate::pool::FormatVersion::V3;
        let pool = Pool::create(shared(&mems), shared(&spares), &options).unwrap();
        (mems, spares, pool)
    }

    #[test]
    fn a_removed_spare_is_no_longer_listed_even_after_reopening() {
        let (mems, spares, pool) = pool_with_spares();
        pool.write_at(0, &[7u8; 8192]).unwrap();
        let uuid = pool.status().spares[1].uuid.clone();
        pool.remove_spare("spare-a").unwrap();
        pool.remove_spare(&uuid).unwrap();
        assert!(pool.status().spares.is_empty(), "{}", pool.status());
        pool.close().unwrap();
        let devices: Vec<SharedDevice> = shared(&mems).into_iter().chain(shared(&spares)).collect();
        let pool = Pool::open(devices, &OpenOptions::default()).unwrap();
        assert!(pool.status().spares.is_empty(), "{}", pool.status());
        let mut back = [0u8; 8192];
        pool.read_at(0, &mut back).unwrap();
        assert_eq!(back, [7u8; 8192]);
        pool.close().unwrap();
    }

    #[test]
    fn an_unknown_spare_or_a_data_member_is_not_in_pool() {
        let (_mems, _spares, pool) = pool_with_spares();
        for name in ["nonexistent", "mem0", "0"] {
            let err = pool.remove_spare(name).unwrap_err();
            assert!(matches!(err, Error::NotInPool { .. }), "{name}: {err}");
        }
        assert_eq!(pool.status().spares.len(), 2);
        pool.close().unwrap();
    }

    #[test]
    fn a_spare_being_rebuilt_onto_is_busy() {
        let (_mems, _spares, pool) = pool_with_spares();
        pool.write_at(0, &[1u8; 65536]).unwrap();
        pool.replace_with_spare("mem1", "spare-a").unwrap();
        let err = pool.remove_spare("spare-a").unwrap_err();
        assert!(matches!(err, Error::Busy(_)), "{err}");
        // The other spare is still free to go.
        pool.remove_spare("spare-b").unwrap();
        pool.run_rebuilds(|_| {}).unwrap();
        // Once swapped in it is a data member, not a spare.
        let err = pool.remove_spare("spare-a").unwrap_err();
        assert!(matches!(err, Error::NotInPool { .. }), "{err}");
        pool.close().unwrap();
    }

    #[test]
    fn a_read_only_open_refuses() {
        let (mems, spares, pool) = pool_with_spares();
        pool.close().unwrap();
        let devices: Vec<SharedDevice> = shared(&mems).into_iter().chain(shared(&spares)).collect();
        let options = OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        };
        let pool = Pool::open(devices, &options).unwrap();
        let err = pool.remove_spare("spare-a").unwrap_err();
        assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
        pool.close().unwrap();
    }
}
