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
use crate::meta::{PointUsage, RecoveryPoint};

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

    /// Delete recovery point `name`: what it alone holds is freed (its segments come back
    /// by the map's release rule), durably when this returns. Nothing may be on the devices
    /// for a write.
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
        let map = self.map.recovery_point_map(name)?;
        self.read_of(devices, offset, buf, &|key| map.get(devices, key))
    }
}
