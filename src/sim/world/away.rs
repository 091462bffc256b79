//! Members beyond one machine (docs/FORMAT.md V4.16, issue 18), as ops: a member that stops
//! answering and comes back (resynced by what was born since it left, or faulted when its
//! grace period ends), more members away than the layout tolerates, and a whole failure
//! domain lost at once; after every step, spares sit only where the domains allow.

use super::{Check, World};
use crate::device::Device;
use crate::geometry::Layout;
use crate::pool::AwayOutcome;
use crate::testing::{random_bytes, rng};
use crate::PoolStatus;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};

/// The failure domain of each data position for `layout` on `devices`: as many positions per
/// domain as the rule of docs/FORMAT.md V4.16 §2 lets one domain lose (rs:4+2 on three
/// domains of two, raid10 pairs across two domains, one member per domain for a mirror).
pub(super) fn domains_for(layout: Layout, devices: usize) -> Vec<String> {
    (0..devices)
        .map(|p| {
            let domain = match layout {
                Layout::Mirror { .. } => p,
                Layout::Raid10 { copies } => p % copies,
                Layout::ReedSolomon { parity, .. } => p / parity.clamp(1, 2),
            };
            format!("host{domain}")
        })
        .collect()
}

impl World<'_> {
    /// The member entry (not a replacement) served by `disk`, if it is one.
    fn member_of<'s>(
        &self,
        status: &'s PoolStatus,
        disk: usize,
    ) -> Option<&'s crate::pool::DeviceStatus> {
        status
            .devices
            .iter()
            .find(|d| d.replacing.is_none() && d.path == self.disks[disk].name)
    }

    /// Whether a replacement (a rebuild, a resync) is being filled at `position`.
    fn filling(status: &PoolStatus, position: usize) -> bool {
        status
            .devices
            .iter()
            .any(|d| d.replacing.is_some() && d.index == Some(position))
    }

    /// After a flush or a close that succeeded: the members the pool shows away are recorded
    /// so in the superblocks (docs/FORMAT.md V4.16 §7, F3).
    pub(super) fn note_recorded_away(&mut self) {
        if let Some(pool) = self.pool.as_ref() {
            let status = pool.status();
            self.note_recorded_away_in(&status);
        }
    }

    pub(super) fn note_recorded_away_in(&mut self, status: &PoolStatus) {
        for device in &status.devices {
            if device.replacing.is_none() && device.state == "UNAVAILABLE" {
                if let Some(disk) = self.disk(&device.path) {
                    self.disks[disk].recorded_away = true;
                }
            }
        }
    }

    /// After an open: a member recorded away that still does not answer is shown away (not
    /// online, not faulted: its grace period runs on across the open).
    pub(super) fn check_away_after_open(&self) -> Check {
        let Some(pool) = self.pool.as_ref() else {
            return Ok(());
        };
        let status = pool.status();
        for (disk, d) in self.disks.iter().enumerate() {
            if !d.recorded_away || !d.mem.is_unreachable() {
                continue;
            }
            if let Some(member) = self.member_of(&status, disk) {
                // (Replaced by hand while away: the replacement decides what it is.)
                let replaced = member.index.is_some_and(|p| Self::filling(&status, p));
                if member.state != "UNAVAILABLE" && !replaced {
                    return Err(format!(
                        "{} was recorded away and does not answer, but the open shows it {} ({})",
                        d.name,
                        member.state,
                        member.reason.clone().unwrap_or_default()
                    ));
                }
            }
        }
        Ok(())
    }

    /// With failure domains: the placement the pool is heading for (each position's member,
    /// or the replacement being filled there) keeps the rule, so a spare was attached, or a
    /// replace accepted, only where its domain allows (docs/FORMAT.md V4.16 §2).
    pub(super) fn check_domain_rule(&mut self) -> Check {
        if self.domains.is_empty() {
            return Ok(());
        }
        let Some(pool) = self.pool.as_ref() else {
            return Ok(());
        };
        let status = pool.status();
        let geometry = pool.geometry().clone();
        let mut placed: Vec<Option<String>> = vec![None; self.config.devices];
        for device in &status.devices {
            let Some(position) = device.index.filter(|p| *p < placed.len()) else {
                continue;
            };
            if device.replacing.is_some() || placed[position].is_none() {
                placed[position].clone_from(&device.domain);
            }
        }
        let domains: Vec<&str> = placed.iter().map(|d| d.as_deref().unwrap_or("")).collect();
        crate::geometry::check_domains(&geometry, &domains).map_err(|why| {
            format!("DOMAIN RULE BROKEN: the members and replacements sit in domains {domains:?}: {why}")
        })?;
        *self
            .stats
            .classes
            .entry("domain-rule-checked".into())
            .or_default() += 1;
        Ok(())
    }

    /// After every step: a device the simulation made unreachable that is in service again
    /// (resynced, copied, or never noticed) counts as healthy from now on, and one whose
    /// resync ran is checked with `tolerance` other members lost (what the resync missed
    /// would read wrong or fail then: planted `resync_since_late`).
    pub(super) fn settle_away(&mut self, epoch: u64) -> Check {
        let Some(pool) = self.pool.as_ref() else {
            return Ok(());
        };
        let status = pool.status();
        let mut check = None;
        for disk in 0..self.disks.len() {
            if !self.disks[disk].away || self.disks[disk].mem.is_unreachable() {
                continue;
            }
            let member = self.member_of(&status, disk).cloned();
            let back = match &member {
                // No longer a member (replaced while away).
                None => true,
                Some(m) => {
                    matches!(m.state.as_str(), "ONLINE" | "DEGRADED")
                        && !m.index.is_some_and(|p| Self::filling(&status, p))
                }
            };
            if !back {
                continue;
            }
            let d = &mut self.disks[disk];
            d.away = false;
            d.recorded_away = false;
            if std::mem::take(&mut d.resync_pending) && check.is_none() {
                check = member.and_then(|m| m.index);
            }
        }
        match check {
            Some(position) => {
                let mut rng = rng(epoch ^ 0xA3A1);
                self.check_losing_members_keeping(&mut rng, Some(position))
                    .map_err(|e| format!("after a member away was resynced: {e}"))?;
                *self
                    .stats
                    .classes
                    .entry("resync-lost-members-check".into())
                    .or_default() += 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// One round of the pool's watch over members away; a member faulted for its grace
    /// period is no longer recorded away.
    fn watch(&mut self) -> std::result::Result<Vec<AwayOutcome>, String> {
        let outcomes = self.pool()?.watch_away();
        let status = self.pool()?.status();
        for outcome in &outcomes {
            if let AwayOutcome::Faulted { index } = outcome {
                let path = status
                    .devices
                    .iter()
                    .find(|d| d.replacing.is_none() && d.index == Some(*index))
                    .map(|d| d.path.clone());
                if let Some(disk) = path.and_then(|p| self.disk(&p)) {
                    self.disks[disk].recorded_away = false;
                }
                *self.stats.classes.entry("grace-ended".into()).or_default() += 1;
            }
        }
        Ok(outcomes)
    }

    /// [`Op::Away`](super::super::Op::Away).
    pub(super) fn away(&mut self, position: u8, writes: u8, seed: u64) -> Check {
        if !self.config.format4 || self.pool.is_none() {
            return self.skip();
        }
        let Some(disk) = self.fault_target(position) else {
            return self.skip();
        };
        let status = self.pool()?.status();
        let index = self.member_of(&status, disk).and_then(|m| m.index);
        if index.is_none_or(|p| Self::filling(&status, p)) {
            return self.skip();
        }
        self.disks[disk].away = true;
        self.disks[disk].mem.set_unreachable(true);
        self.count("away");
        let mut rng = rng(seed);
        for _ in 0..writes {
            let len = rng.gen_range(1..64 * 1024);
            let (offset, len) = self.clamp(rng.gen(), len);
            let data = random_bytes(&mut rng, len);
            self.write(offset, &data)?;
        }
        Ok(())
    }

    /// [`Op::Back`](super::super::Op::Back).
    pub(super) fn back(&mut self, pick: u8, seed: u64) -> Check {
        // Devices made unreachable and not yet back in service (some answer already: given
        // at an open while still recorded away).
        let unreachable: Vec<usize> = (0..self.disks.len())
            .filter(|d| self.disks[*d].away)
            .collect();
        if unreachable.is_empty() || self.pool.is_none() {
            return self.skip();
        }
        let disk = unreachable[usize::from(pick) % unreachable.len()];
        let mut rng = rng(seed);
        if rng.gen_bool(0.3) {
            // The watch may come round before it answers (its grace period may end).
            self.watch()?;
        }
        self.disks[disk].mem.set_unreachable(false);
        self.count("back");
        self.bring_back(disk)?;
        if rng.gen_bool(0.5) {
            // The resync (or the rebuild onto a spare) to its end; otherwise the rebuild
            // steps, crashes and reopens of the ops that follow meet it part-way.
            self.rebuild_all()?;
        }
        Ok(())
    }

    /// `disk` answers again: the pool's watch resyncs it (after a reopen that gives it, when
    /// the pool was opened without it), faults it when its grace period is over, or, faulted
    /// as missing at an open, it is cleared with its device (copied in full).
    fn bring_back(&mut self, disk: usize) -> Check {
        for attempt in 0..2 {
            let status = self.pool()?.status();
            let Some(member) = self.member_of(&status, disk).cloned() else {
                self.count("back-after-replaced");
                return Ok(());
            };
            let Some(index) = member.index else {
                return Ok(());
            };
            if Self::filling(&status, index) {
                return Ok(());
            }
            match member.state.as_str() {
                "UNAVAILABLE" => {
                    let outcomes = self.watch()?;
                    match outcomes.iter().find(|o| away_index(o) == index) {
                        Some(AwayOutcome::Resyncing { .. }) => {
                            self.disks[disk].resync_pending = true;
                            self.count("back-resync");
                            return Ok(());
                        }
                        Some(AwayOutcome::CopiedInFull { .. }) => {
                            self.disks[disk].resync_pending = true;
                            self.count("back-copied-in-full");
                            return Ok(());
                        }
                        Some(AwayOutcome::Faulted { .. }) => return Ok(()),
                        Some(AwayOutcome::StillAway { .. }) | None if attempt == 0 => {
                            // Opened without it while it did not answer: the pool has no
                            // device to probe; an open that is given it has.
                            self.count("back-reopen");
                            self.reopen()?;
                        }
                        // A resync abandoned on a device with injected faults (a write it
                        // failed) leaves the device labelled as that replacement: the watch
                        // no longer takes it for the member (seed 202, mirror:3); it waits
                        // for its grace period. Only a healthy device must come back.
                        Some(AwayOutcome::StillAway { .. }) | None if self.disks[disk].damaged => {
                            self.count("back-refused-after-abandoned-resync");
                            return Ok(());
                        }
                        other => {
                            return Err(format!(
                                "{} answers again and was given at the open, but the watch says {other:?}",
                                self.disks[disk].name
                            ))
                        }
                    }
                }
                "FAULTED" => {
                    // Missing at an open (not recorded away), or its grace period ended and
                    // no spare took over: cleared with its own device, copied in full.
                    let within = self.within_tolerance();
                    let handle = self.disks[disk].handle.clone();
                    return match self.pool()?.clear_with(&member.path, handle) {
                        Ok(()) => {
                            self.disks[disk].resync_pending = true;
                            self.count("back-cleared");
                            Ok(())
                        }
                        // After a resync abandoned on a device with injected faults, the
                        // device is labelled as that replacement and refused (seed 2100002).
                        Err(_) if self.disks[disk].damaged => {
                            self.count("back-refused-after-abandoned-resync");
                            Ok(())
                        }
                        Err(err) if within => Err(format!(
                            "clearing {} come back failed within tolerance: {err}",
                            member.path
                        )),
                        Err(_) => Ok(()),
                    };
                }
                // Never noticed (nothing reached it while it did not answer).
                _ => {
                    self.count("back-unnoticed");
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// [`Op::AwayBeyond`](super::super::Op::AwayBeyond).
    pub(super) fn away_beyond(&mut self, position: u8, seed: u64) -> Check {
        if !self.config.format4 || self.pool.is_none() || !self.within_tolerance() {
            return self.skip();
        }
        let status = self.pool()?.status();
        if status.devices.iter().any(|d| d.replacing.is_some()) {
            return self.skip();
        }
        // Only members away before it, no injected damage: a member kept while it failed
        // writes beyond the tolerance is behind where the pool went on without it, which
        // with a faulty member beside it is two faults in one stripe (found at once by seed 3,
        // raid10:2, rot on one member of a pair: the other one's stale map page and the
        // rotted copy left a page lost, and the later writes beyond the tolerance made
        // read-backs meaningless).
        let injected = status.devices.iter().any(|d| {
            (d.replacing.is_none() && d.state == "FAULTED")
                || self.disk(&d.path).is_some_and(|x| self.disks[x].damaged)
        });
        if injected {
            return self.skip();
        }
        let mut damaged = self.damaged_positions(&status);
        let devices = self.config.devices;
        let mut extras = Vec::new();
        let mut p = usize::from(position) % devices;
        for _ in 0..devices {
            if damaged.len() > self.tolerance {
                break;
            }
            if !damaged.contains(&p) {
                let disk = status
                    .devices
                    .iter()
                    .find(|d| d.replacing.is_none() && d.index == Some(p))
                    .and_then(|d| self.disk(&d.path))
                    .filter(|d| !self.disks[*d].plan.lock().is_gone());
                if let Some(disk) = disk {
                    self.disks[disk].away = true;
                    self.disks[disk].mem.set_unreachable(true);
                    extras.push(disk);
                    damaged.insert(p);
                }
            }
            p = (p + 1) % devices;
        }
        if damaged.len() <= self.tolerance {
            for disk in extras {
                self.disks[disk].mem.set_unreachable(false);
            }
            return self.skip();
        }
        self.count("away-beyond");
        // Beyond the tolerance: writes and flushes succeed or fail clearly (a flush that
        // succeeds is held to it by the check after the power cut).
        let mut rng = rng(seed);
        for _ in 0..rng.gen_range(1..=4) {
            let len = rng.gen_range(1..64 * 1024);
            let (offset, len) = self.clamp(rng.gen(), len);
            let data = random_bytes(&mut rng, len);
            // (Not read back: a write refused here is in the model's latest bytes; the
            // check is after the power cut, against what was flushed.)
            self.write(offset, &data)?;
        }
        self.flush()?;
        // They answer again; the power is cut and the pool opened with them: every block holds
        // a version written since the last flush that succeeded.
        for disk in &extras {
            self.disks[*disk].mem.set_unreachable(false);
        }
        self.crash(rng.gen(), None)
            .map_err(|e| format!("after members away beyond the tolerance came back: {e}"))?;
        // One of them may have been marked away (the first, while the pool could lose it).
        for disk in extras {
            self.bring_back(disk)?;
        }
        Ok(())
    }

    /// [`Op::DomainLoss`](super::super::Op::DomainLoss).
    pub(super) fn domain_loss(&mut self, pick: u8, seed: u64) -> Check {
        if self.domains.is_empty() || self.pool.is_none() {
            return self.skip();
        }
        let status = self.pool()?.status();
        if status.devices.iter().any(|d| d.replacing.is_some()) {
            return self.skip();
        }
        let mut by_domain: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        for device in status.devices.iter().filter(|d| d.replacing.is_none()) {
            if let (Some(p), Some(domain)) = (device.index, device.domain.clone()) {
                by_domain.entry(domain).or_default().insert(p);
            }
        }
        let Some((domain, positions)) = by_domain
            .iter()
            .nth(usize::from(pick) % by_domain.len().max(1))
            .map(|(d, p)| (d.clone(), p.clone()))
        else {
            return self.skip();
        };
        // The rule promises the loss of one domain, nothing more: other damage must lie in it.
        if !self.damaged_positions(&status).is_subset(&positions) {
            return self.skip();
        }
        let lost: Vec<usize> = status
            .devices
            .iter()
            .filter(|d| d.replacing.is_none() && d.index.is_some_and(|p| positions.contains(&p)))
            .filter_map(|d| self.disk(&d.path))
            .filter(|d| !self.disks[*d].plan.lock().is_gone())
            .collect();
        self.domain_out = Some(positions.clone());
        self.count("domain-loss");
        for disk in &lost {
            self.disks[*disk].away = true;
            self.disks[*disk].mem.set_unreachable(true);
        }
        let when = format!("with failure domain {domain} (positions {positions:?}) lost");
        let mut rng = rng(seed);
        for _ in 0..rng.gen_range(1..=6) {
            let len = rng.gen_range(1..64 * 1024);
            let (offset, len) = self.clamp(rng.gen(), len);
            let data = random_bytes(&mut rng, len);
            self.write(offset, &data)
                .map_err(|e| format!("{when}: {e}"))?;
        }
        self.flush().map_err(|e| format!("{when}: {e}"))?;
        if rng.gen_bool(0.3) {
            self.crash(rng.gen(), None)
                .map_err(|e| format!("{when}: {e}"))?;
        }
        self.verify(&when)?;
        // The domain answers again: resynced (or copied), every byte checked.
        for disk in &lost {
            self.disks[*disk].mem.set_unreachable(false);
        }
        for disk in &lost {
            self.bring_back(*disk)?;
        }
        self.rebuild_all()
            .map_err(|e| format!("after failure domain {domain} came back: {e}"))?;
        self.domain_out = None;
        Ok(())
    }
}

fn away_index(outcome: &AwayOutcome) -> usize {
    match outcome {
        AwayOutcome::StillAway { index }
        | AwayOutcome::Resyncing { index, .. }
        | AwayOutcome::CopiedInFull { index, .. }
        | AwayOutcome::Faulted { index } => *index,
    }
}
