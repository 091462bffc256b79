//! Recovery points in the simulation (docs/FORMAT.md V4.10a, V4.10b, V4.10e; format version 4):
//! taken, held and released, deleted (at once or a step at a time) and read at random among
//! the other steps, and checked against
//! a model that keeps every recovery point's content: after every verify (reopens, crashes,
//! scrubs, rebuilds, subsets, read-only looks) the pool lists exactly the model's recovery
//! points with their holds, and one of them (in turn) reads back whole, exactly.

use super::{is_clear, Check, World};
use crate::error::Error;
use crate::testing::Model;

/// Recovery points kept at most (each is a copy of the volume in the model).
const POINTS_MAX: usize = 4;

/// A recovery point the model knows: its name, content and whether it is held.
pub(super) struct SimPoint {
    pub(super) name: String,
    pub(super) content: Model,
    held: bool,
}

impl World<'_> {
    /// `Op::RecoveryPointCreate`: take one (when fewer than [`POINTS_MAX`] exist and the pool
    /// is within its tolerance); its content is what was written before it (it flushes).
    pub(super) fn point_create(&mut self) -> Check {
        if self.pool.is_none() || self.points.len() >= POINTS_MAX || !self.within_tolerance() {
            return self.skip();
        }
        let name = format!("rp{}", self.points_made);
        self.points_made += 1;
        match self.pool()?.create_recovery_point(&name) {
            Ok(point) if point.name == name => {
                self.model.flushed();
                self.points.push(SimPoint {
                    name,
                    content: self.model.latest.clone(),
                    held: false,
                });
                Ok(())
            }
            Ok(point) => Err(format!("asked for {name}, got {}", point.name)),
            // A member that fails the gate's superblock write or the sync: refused clearly.
            // The commit may have reached some members: the listing says.
            Err(err) if is_clear(&err) || matches!(err, Error::Io { .. }) => {
                let content = self.model.latest.clone();
                self.reconcile_points(Some((name, content)))
            }
            Err(err) => Err(format!(
                "create of recovery point {name}: an unclear error: {err}"
            )),
        }
    }

    /// Whether [`World::with_room`] can make room: recovery points to delete, or deletes
    /// asked for whose space has not come back yet.
    pub(super) fn room_can_be_made(&self) -> bool {
        !self.points.is_empty() || self.pool.as_ref().is_some_and(|p| !p.deletes().is_empty())
    }

    /// Run `request`; while it is refused for want of room and recovery points are kept,
    /// make room as an operator would (delete the oldest, releasing it first if held) and run
    /// it again. What recovery points hold cannot be reclaimed until they are deleted
    /// (docs/FORMAT.md V4.10a, "Capacity cliff"): a pool written over while they are kept
    /// runs out of room with logical space left, and says so (`NoFreeSlot`, naming them).
    pub(super) fn with_room(
        &mut self,
        request: impl Fn(&crate::Pool) -> crate::Result<()>,
    ) -> crate::Result<()> {
        loop {
            let Some(pool) = self.pool.as_ref() else {
                return Err(Error::Closing);
            };
            match request(pool) {
                // Deletes asked for and not yet run to their end hold space: run them first
                // (`snapshot reclaim`), as an operator would.
                Err(Error::NoFreeSlot(why)) if !pool.deletes().is_empty() => {
                    *self
                        .stats
                        .faults
                        .entry("recovery-points-reclaimed-for-room".into())
                        .or_default() += 1;
                    if let Err(e) = pool.reclaim(&mut |_| {}) {
                        if self.countdown.load(std::sync::atomic::Ordering::SeqCst) <= 0 {
                            return Err(Error::NoFreeSlot(why));
                        }
                        return Err(e);
                    }
                }
                Err(Error::NoFreeSlot(why)) if !self.points.is_empty() => {
                    *self
                        .stats
                        .faults
                        .entry("recovery-point-deleted-for-room".into())
                        .or_default() += 1;
                    // The oldest that can go: not one where two lines part (a newer one
                    // always can: nothing follows the newest of a line but the live map).
                    let mut deleted = None;
                    for index in 0..self.points.len() {
                        let (name, held) =
                            (self.points[index].name.clone(), self.points[index].held);
                        let pool = self.pool.as_ref().ok_or(Error::Closing)?;
                        let released = if held {
                            pool.hold_recovery_point(&name, false).map(|_| ())
                        } else {
                            Ok(())
                        };
                        let outcome = released.and_then(|()| pool.delete_recovery_point(&name));
                        if self.countdown.load(std::sync::atomic::Ordering::SeqCst) <= 0 {
                            // The power was cut meanwhile (a crash's burst): whether the
                            // release and the delete landed is known after the reopen.
                            let point = self.points.remove(index);
                            self.points_limbo.push(point);
                            return Err(Error::NoFreeSlot(why));
                        }
                        if held {
                            self.points[index].held = false;
                        }
                        match outcome {
                            Ok(_) => {
                                deleted = Some(index);
                                break;
                            }
                            Err(Error::RecoveryPoint { reason, .. })
                                if reason.contains("lines part") => {}
                            Err(e) => {
                                return Err(Error::InvalidConfig(format!(
                                    "out of room ({why}), and recovery point {name} could not \
                                     be deleted: {e}"
                                )))
                            }
                        }
                    }
                    match deleted {
                        Some(index) => {
                            self.points.remove(index);
                        }
                        None => {
                            return Err(Error::InvalidConfig(format!(
                                "out of room ({why}), and no recovery point could be deleted"
                            )))
                        }
                    }
                }
                other => return other,
            }
        }
    }

    /// `Op::RecoveryPointDelete`: delete the `pick`-th recovery point not held.
    pub(super) fn point_delete(&mut self, pick: u8) -> Check {
        let free: Vec<usize> = (0..self.points.len())
            .filter(|i| !self.points[*i].held)
            .collect();
        if self.pool.is_none() || free.is_empty() {
            return self.skip();
        }
        let index = free[usize::from(pick) % free.len()];
        let name = self.points[index].name.clone();
        // Half the deletes are asked for and left to run a step or two at a time (FORMAT.md
        // V4.10e): a crash, a fault or any other operation may come between their steps,
        // and the next delete, rollback or receive runs what is left first.
        let outcome = if pick % 2 == 1 {
            self.pool()?.request_delete(&name).and_then(|()| {
                for _ in 0..(pick / 2) % 3 {
                    self.pool.as_ref().ok_or(Error::Closing)?.reclaim_step()?;
                }
                Ok(crate::meta::PointUsage::default())
            })
        } else {
            self.pool()?.delete_recovery_point(&name)
        };
        match outcome {
            Ok(_) => {
                self.points.remove(index);
                Ok(())
            }
            // Where two lines part (after a rollback): refused, clearly, and nothing changes.
            Err(Error::RecoveryPoint { reason, .. }) if reason.contains("lines part") => {
                self.reconcile_points(None)
            }
            // A request may have landed before a step failed: the listing says.
            Err(err) if is_clear(&err) || matches!(err, Error::Io { .. }) => {
                self.reconcile_points(None)
            }
            Err(err) => Err(format!(
                "delete of recovery point {name}: an unclear error: {err}"
            )),
        }
    }

    /// `Op::RecoveryPointHold`: hold the `pick`-th recovery point, or release it if held; a
    /// held one must refuse a delete, naming the hold, and change nothing.
    pub(super) fn point_hold(&mut self, pick: u8) -> Check {
        if self.pool.is_none() || self.points.is_empty() {
            return self.skip();
        }
        let index = usize::from(pick) % self.points.len();
        let (name, held) = (self.points[index].name.clone(), self.points[index].held);
        if held {
            match self.pool()?.delete_recovery_point(&name) {
                Err(Error::RecoveryPoint { reason, .. })
                    if reason.contains("held") || reason.contains("lines part") => {}
                other => return Err(format!("a delete of held {name} gave {other:?}")),
            }
        }
        match self.pool()?.hold_recovery_point(&name, !held) {
            Ok(holds) if holds == u32::from(!held) => {
                self.points[index].held = !held;
                Ok(())
            }
            Ok(holds) => Err(format!("{name}: {holds} holds after a hold or release")),
            Err(err) if is_clear(&err) || matches!(err, Error::Io { .. }) => {
                self.reconcile_points(None)
            }
            Err(err) => Err(format!(
                "hold of recovery point {name}: an unclear error: {err}"
            )),
        }
    }

    /// `Op::RecoveryPointRollback`: roll back to the `pick`-th recovery point (within the
    /// tolerance, with room for one more recovery point). The volume then reads its copy; the
    /// automatic recovery point the pool returns holds the state before. After a refusal the
    /// whole volume is read: it must be exactly the state before or the recovery point's.
    pub(super) fn point_rollback(&mut self, pick: u8) -> Check {
        if self.pool.is_none()
            || self.points.is_empty()
            || self.points.len() >= POINTS_MAX
            || !self.within_tolerance()
        {
            return self.skip();
        }
        let index = usize::from(pick) % self.points.len();
        let name = self.points[index].name.clone();
        let target = self.points[index].content.clone();
        match self.pool()?.rollback_to(&name) {
            Ok(automatic) => {
                // Everything before was made durable by the rollback's first sync.
                self.model.flushed();
                let before = std::mem::replace(&mut self.model.latest, target);
                self.model.flushed();
                if let Some(point) = automatic {
                    self.points.push(SimPoint {
                        name: point.name,
                        content: before,
                        held: false,
                    });
                }
                self.verify_points("after a rollback")
            }
            Err(err) if is_clear(&err) || matches!(err, Error::Io { .. }) => {
                let before = self.model.latest.clone();
                let size = usize::try_from(self.model.latest.len()).unwrap_or(0);
                let mut volume = vec![0u8; size];
                if self.pool()?.read_at(0, &mut volume).is_err() {
                    return Ok(());
                }
                if volume == target.read(0, size) {
                    self.model.latest = target;
                    self.model.flushed();
                } else if volume != self.model.latest.read(0, size) {
                    return Err(format!(
                        "after a refused rollback to {name}, the volume is neither the state \
                         before nor the recovery point's"
                    ));
                }
                self.reconcile_after_rollback(before)
            }
            Err(err) => Err(format!("rollback to {name}: an unclear error: {err}")),
        }
    }

    /// After a refused rollback: an automatic recovery point the pool lists that the model
    /// does not know must read exactly the state `before`; the model adopts it.
    fn reconcile_after_rollback(&mut self, before: Model) -> Check {
        let Some(listed) = self.listed_points()? else {
            return Ok(());
        };
        let known: Vec<String> = self.points.iter().map(|p| p.name.clone()).collect();
        let fresh: Vec<String> = listed
            .iter()
            .filter(|(name, _)| !known.contains(name) && name.starts_with("before-rollback-"))
            .map(|(name, _)| name.clone())
            .collect();
        for name in fresh {
            self.points.push(SimPoint {
                name,
                content: before.clone(),
                held: false,
            });
            let index = self.points.len() - 1;
            let size = before.len();
            self.point_compare(index, 0, usize::try_from(size).unwrap_or(0))?;
        }
        self.reconcile_points(None)
    }

    /// `Op::RecoveryPointRead`: read a range of the `pick`-th recovery point and compare.
    pub(super) fn point_read(&mut self, pick: u8, offset: u64, len: u32) -> Check {
        if self.pool.is_none() || self.points.is_empty() {
            return self.skip();
        }
        let index = usize::from(pick) % self.points.len();
        let (offset, len) = self.clamp(offset, len);
        self.point_compare(index, offset, len)
    }

    fn point_compare(&mut self, index: usize, offset: u64, len: usize) -> Check {
        let within = self.within_tolerance();
        let name = self.points[index].name.clone();
        let mut buf = vec![0u8; len];
        match self.pool()?.read_recovery_point(&name, offset, &mut buf) {
            Ok(()) => {
                self.stats.checked_reads += 1;
                let expected = self.points[index].content.read(offset, len);
                match buf.iter().zip(expected).position(|(a, b)| a != b) {
                    None => Ok(()),
                    Some(at) => Err(format!(
                        "WRONG BYTES: recovery point {name}, read of {len} bytes at {offset} \
                         differs from the model at volume byte {}",
                        offset + at as u64
                    )),
                }
            }
            Err(err) if within => Err(format!(
                "recovery point {name}: read of {len} bytes at {offset} failed within tolerance: \
                 {err}"
            )),
            Err(err) if is_clear(&err) => Ok(()),
            Err(err) => Err(format!(
                "recovery point {name}: a read failed with an unclear error: {err}"
            )),
        }
    }

    /// After a refused create, delete or hold: adopt what the pool lists (a create may have
    /// committed on enough members before the error; `maybe` is its name and content). Every
    /// other recovery point must be listed as the model has it.
    fn reconcile_points(&mut self, maybe: Option<(String, Model)>) -> Check {
        let Some(listed) = self.listed_points()? else {
            return Ok(());
        };
        if let Some((name, content)) = maybe {
            if listed.iter().any(|(n, _)| *n == name) {
                self.model.flushed();
                self.points.push(SimPoint {
                    name,
                    content,
                    held: false,
                });
            }
        }
        self.points
            .retain(|p| listed.iter().any(|(name, _)| *name == p.name));
        for point in &mut self.points {
            if let Some((_, holds)) = listed.iter().find(|(n, _)| *n == point.name) {
                point.held = *holds > 0;
            }
        }
        self.check_listing(&listed, "after a refused request")
    }

    /// The pool's recovery points `(name, holds)`, oldest first; `None` when the listing
    /// fails clearly beyond the tolerance.
    fn listed_points(&mut self) -> std::result::Result<Option<Vec<(String, u32)>>, String> {
        let within = self.within_tolerance();
        match self.pool()?.recovery_points() {
            Ok(points) => Ok(Some(
                points.into_iter().map(|p| (p.name, p.holds)).collect(),
            )),
            Err(err) if !within && is_clear(&err) => Ok(None),
            Err(err) => Err(format!("the recovery points cannot be listed: {err}")),
        }
    }

    fn check_listing(&self, listed: &[(String, u32)], when: &str) -> Check {
        let model: Vec<(String, u32)> = self
            .points
            .iter()
            .map(|p| (p.name.clone(), u32::from(p.held)))
            .collect();
        if listed == model {
            Ok(())
        } else {
            Err(format!(
                "{when}: the pool lists recovery points {listed:?}, the model has {model:?}"
            ))
        }
    }

    /// Part of every verify: the listing equals the model's, and one recovery point (in
    /// turn) reads back whole.
    pub(super) fn verify_points(&mut self, when: &str) -> Check {
        if self.pool.is_none() || !self.config.format4 {
            return Ok(());
        }
        let Some(listed) = self.listed_points()? else {
            return Ok(());
        };
        if !self.points_limbo.is_empty() {
            // Deleted while the power was cut: back if the delete did not land, with the
            // holds the pool lists (a release may not have landed either).
            for point in std::mem::take(&mut self.points_limbo) {
                if listed.iter().any(|(name, _)| *name == point.name) {
                    self.points.push(point);
                }
            }
            for point in &mut self.points {
                if let Some((_, holds)) = listed.iter().find(|(name, _)| *name == point.name) {
                    point.held = *holds > 0;
                }
            }
            self.points
                .sort_by_key(|p| listed.iter().position(|(name, _)| *name == p.name));
        }
        self.check_listing(&listed, when)?;
        if self.points.is_empty() {
            return Ok(());
        }
        let index = usize::try_from(self.points_checked % self.points.len() as u64).unwrap_or(0);
        self.points_checked += 1;
        let size = self.model.latest.len();
        let piece = 256 * 1024;
        let mut offset = 0;
        while offset < size {
            let len = usize::try_from(piece.min(size - offset)).unwrap_or(0);
            self.point_compare(index, offset, len)
                .map_err(|e| format!("{when}: {e}"))?;
            offset += len as u64;
        }
        Ok(())
    }
}
