//! Recovery points of a volume (docs/FORMAT.md V4.10a, V4.10b): take one (a map sync that
//! freezes the map), list them, read one, say what one alone holds, and delete one. Its blocks are read through the volume's
//! verified read path (crc from its pointer, rebuilt from the row and healed when bad), so a
//! recovery point is as well protected as live data: its rows are the live rows it shares,
//! and the hold rule keeps every row and page it names.
//!
//! Owns: the volume's entry points for recovery points. Does not own: their records, the
//! hold rule and their trees (the map's), names and retention (the pool's, step 4).

use super::Volume;
use crate::device::SharedDevice;
use crate::error::Result;
use crate::meta::{
    DeleteProgress, DeleteStep, DiffRun, IncomingPoint, PointUsage, RecoveryPoint, RecoveryPointMap,
};

impl Volume {
    /// Take recovery point `name` of everything written so far (the rows are flushed and the
    /// map synced: it is durable when this returns). Nothing may be on the devices for a
    /// write (the pool's exclusive lock gives that).
    ///
    /// # Errors
    /// A read-only volume; what [`crate::meta::MapStore::create_recovery_point`] returns.
    pub fn create_recovery_point(
        &mut self,
        devices: &[Option<SharedDevice>],
        name: &str,
    ) -> Result<RecoveryPoint> {
        self.writable("create a recovery point")?;
        // The rows written so far are flushed by the sync's first step (before its record).
        self.map.create_recovery_point(devices, name)
    }

    /// Delete recovery point `name` in the caller's thread: what it alone holds is freed
    /// (its segments come back by the map's release rule), durably when this returns
    /// (deletes asked for before it run first). Nothing may be on the devices for a write.
    ///
    /// # Errors
    /// A read-only volume; what [`crate::meta::MapStore::delete_recovery_point`] returns.
    pub fn delete_recovery_point(
        &mut self,
        devices: &[Option<SharedDevice>],
        name: &str,
    ) -> Result<PointUsage> {
        self.writable("delete a recovery point")?;
        let freed = self.map.delete_recovery_point(devices, name)?;
        self.cleaner.forget_pins();
        Ok(freed)
    }

    /// Ask for recovery point `name` to be deleted (FORMAT.md V4.10e): durable when this
    /// returns, nothing freed yet; [`Volume::delete_step`] frees its space.
    ///
    /// # Errors
    /// A read-only volume; what [`crate::meta::MapStore::request_delete`] returns.
    pub fn request_delete(&mut self, devices: &[Option<SharedDevice>], name: &str) -> Result<()> {
        self.writable("delete a recovery point")?;
        self.map.request_delete(devices, name)
    }

    /// Whether recovery point `name` may be deleted (writes nothing).
    ///
    /// # Errors
    /// What [`crate::meta::MapStore::deletable`] returns.
    pub fn check_delete(&self, name: &str) -> Result<()> {
        self.map.deletable(name).map(|_| ())
    }

    /// One step of the delete that runs next, reading at most about `budget` of its pages
    /// (`None`: no delete is waiting).
    ///
    /// # Errors
    /// A read-only volume; what [`crate::meta::MapStore::delete_step`] returns.
    pub fn delete_step(
        &mut self,
        devices: &[Option<SharedDevice>],
        budget: usize,
    ) -> Result<Option<DeleteStep>> {
        self.writable("delete a recovery point")?;
        let mut step = self.map.delete_step(devices, budget)?;
        if let Some(step) = &mut step {
            if step.done {
                self.cleaner.forget_pins();
            }
            step.progress = self.progress_in_volume(step.progress);
        }
        Ok(step)
    }

    /// The recovery points being deleted, in the order they run, with their progress.
    #[must_use]
    pub fn deletes(&self) -> Vec<(String, DeleteProgress)> {
        self.map
            .deletes()
            .into_iter()
            .map(|(name, progress)| (name, self.progress_in_volume(progress)))
            .collect()
    }

    /// A delete's progress over the volume's blocks (the map's keys may be many times more:
    /// beyond the volume they are holes the walk passes at once).
    fn progress_in_volume(&self, progress: DeleteProgress) -> DeleteProgress {
        DeleteProgress {
            cursor: progress.cursor.min(self.blocks),
            keys: self.blocks,
            ..progress
        }
    }

    /// Roll the live volume back to recovery point `name`, keeping every recovery point and
    /// the state before (as an automatic one, returned, unless it already is one). Durable
    /// when this returns. Nothing may be on the devices for a write.
    ///
    /// # Errors
    /// A read-only volume; what [`crate::meta::MapStore::rollback_to`] returns.
    pub fn rollback_to(
        &mut self,
        devices: &[Option<SharedDevice>],
        name: &str,
    ) -> Result<Option<RecoveryPoint>> {
        self.writable("roll back")?;
        let automatic = self.map.rollback_to(devices, name)?;
        self.cleaner.forget_pins();
        Ok(automatic)
    }

    /// Put a hold on recovery point `name` (`hold`) or take one off; returns its holds.
    ///
    /// # Errors
    /// A read-only volume; what [`crate::meta::MapStore::hold_recovery_point`] returns.
    pub fn hold_recovery_point(
        &mut self,
        devices: &[Option<SharedDevice>],
        name: &str,
        hold: bool,
    ) -> Result<u32> {
        self.writable("hold or release a recovery point")?;
        self.map.hold_recovery_point(devices, name, hold)
    }

    /// What recovery point `name` alone holds now (what deleting it frees).
    /// Reads pages; writes nothing.
    ///
    /// # Errors
    /// What [`crate::meta::MapStore::recovery_point_usage`] returns.
    pub fn recovery_point_usage(
        &self,
        devices: &[Option<SharedDevice>],
        name: &str,
    ) -> Result<PointUsage> {
        self.map.recovery_point_usage(devices, name)
    }

    /// The recovery points, by key.
    #[must_use]
    pub fn recovery_points(&self) -> Vec<RecoveryPoint> {
        self.map.recovery_points()
    }

    /// Read `buf.len()` bytes at `offset` of recovery point `name`, as the volume was when it
    /// was taken. The range is checked before any I/O.
    ///
    /// # Errors
    /// [`crate::Error::OutOfRange`]; [`crate::Error::RecoveryPoint`] when there is none of
    /// that name; what [`Volume::read`] returns.
    pub fn read_recovery_point(
        &self,
        devices: &[Option<SharedDevice>],
        name: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.read_point_map(devices, &self.map.recovery_point_map(name)?, offset, buf)
    }

    /// Read `buf.len()` bytes at `offset` through recovery point map `map` (one map for many
    /// reads: a send). The range is checked before any I/O.
    ///
    /// # Errors
    /// As [`Volume::read_recovery_point`].
    pub fn read_point_map(
        &self,
        devices: &[Option<SharedDevice>],
        map: &RecoveryPointMap,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        self.read_of(devices, offset, buf, &|key| map.get(devices, key))
    }

    /// The map of recovery point `name`, for [`Volume::read_point_map`].
    ///
    /// # Errors
    /// [`crate::Error::RecoveryPoint`] when there is none of that name.
    pub fn recovery_point_map(&self, name: &str) -> Result<RecoveryPointMap> {
        self.map.recovery_point_map(name)
    }

    /// The runs of blocks whose content may differ between `from` (`None`: an empty volume)
    /// and `to`, in ascending order, to `visit`. Reads pages; writes nothing.
    ///
    /// # Errors
    /// What [`crate::meta::MapStore::diff_recovery_points`] returns.
    pub fn diff_recovery_points(
        &self,
        devices: &[Option<SharedDevice>],
        from: Option<&str>,
        to: &str,
        visit: &mut dyn FnMut(DiffRun) -> Result<()>,
    ) -> Result<()> {
        self.map.diff_recovery_points(devices, from, to, visit)
    }

    /// The unfinished receive, if there is one.
    #[must_use]
    pub fn unfinished_receive(&self) -> Option<IncomingPoint> {
        self.map.unfinished_receive()
    }

    /// Whether a receive of `incoming` may begin (or resume, when it is the unfinished one).
    /// Writes nothing.
    ///
    /// # Errors
    /// What [`crate::meta::MapStore::check_receivable`] returns.
    pub fn check_receivable(&self, incoming: &IncomingPoint) -> Result<()> {
        match self.map.unfinished_receive() {
            Some(r)
                if r.guid == incoming.guid
                    && r.base_guid == incoming.base_guid
                    && r.name == incoming.name =>
            {
                Ok(())
            }
            _ => self.map.check_receivable(incoming),
        }
    }

    /// Begin (or resume) receiving `incoming`: the checks again, under the
    /// volume's lock, and the receive record in tree 3 unless it is the unfinished one.
    /// Afterwards only [`Volume::receive_write`] and [`Volume::receive_discard`] change the
    /// volume's content, until [`Volume::finish_receive`] or [`Volume::abort_receive`].
    ///
    /// # Errors
    /// A read-only volume; what [`crate::meta::MapStore::begin_receive`] returns.
    pub fn begin_receive(
        &mut self,
        devices: &[Option<SharedDevice>],
        incoming: &IncomingPoint,
    ) -> Result<()> {
        self.writable("receive")?;
        self.check_receivable(incoming)?;
        if self.map.unfinished_receive().is_none() {
            self.map.begin_receive(devices, incoming)?;
        }
        Ok(())
    }

    /// A write of the unfinished receive (whole blocks of its stream).
    ///
    /// # Errors
    /// [`crate::Error::RecoveryPoint`] when no receive is unfinished; what
    /// [`Volume::write`] returns.
    pub fn receive_write(
        &mut self,
        devices: &[Option<SharedDevice>],
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        self.as_receive(|volume| volume.write(devices, offset, data))
    }

    /// A discard of the unfinished receive (a zeros record of its stream).
    ///
    /// # Errors
    /// As [`Volume::receive_write`].
    pub fn receive_discard(
        &mut self,
        devices: &[Option<SharedDevice>],
        offset: u64,
        length: u64,
    ) -> Result<()> {
        self.as_receive(|volume| volume.discard(devices, offset, length))
    }

    fn as_receive(&mut self, write: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        if self.map.unfinished_receive().is_none() {
            return Err(crate::Error::RecoveryPoint {
                name: String::new(),
                reason: "no receive is unfinished".into(),
            });
        }
        self.receive_active = true;
        let outcome = write(self);
        self.receive_active = false;
        outcome
    }

    /// Finish the receive once its writes are committed: the received recovery point is
    /// recorded, durably when this returns.
    ///
    /// # Errors
    /// What [`crate::meta::MapStore::finish_receive`] returns.
    pub fn finish_receive(&mut self, devices: &[Option<SharedDevice>]) -> Result<RecoveryPoint> {
        self.writable("receive")?;
        // The sync makes the receive's writes durable first (rows flushed, then logged).
        self.map.finish_receive(devices)
    }

    /// Abort the unfinished receive: what it wrote is freed, exactly, and the volume is as
    /// it was before it (durably when this returns).
    ///
    /// # Errors
    /// A read-only volume; what [`crate::meta::MapStore::abort_receive`] returns.
    pub fn abort_receive(&mut self, devices: &[Option<SharedDevice>]) -> Result<PointUsage> {
        self.writable("abort a receive")?;
        let freed = self.map.abort_receive(devices)?;
        self.cleaner.forget_pins();
        Ok(freed)
    }
}
