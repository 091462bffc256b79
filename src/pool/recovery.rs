//! Recovery points of a pool (docs/FORMAT.md V4.10a, V4.10b): the pool's entry points for
//! taking, listing, reading, holding and deleting them, under the volume's lock as every
//! write (exclusive: nothing is in flight while one is taken or deleted) or read (shared).
//!
//! Owns: the superblock gate that makes builds without recovery points refuse the pool
//! before the first is taken, and the listing's sizes. Does not own: the records, the hold
//! rule and the trees (the map's), nor the blocks' bytes (the volume's).

use super::rows::RowsEngine;
use super::{Pool, PoolInner, PoolRef};
use crate::error::{Error, Result};
use crate::meta::RecoveryPoint;

/// A recovery point as a pool lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecoveryPointInfo {
    /// Its name.
    pub name: String,
    /// Never reused within the pool.
    pub guid: u64,
    /// When it was taken, seconds since the Unix epoch.
    pub created: u64,
    /// The map sequence it froze (its blocks are born at or before it).
    pub sequence: u64,
    /// Holds (a held recovery point is not deleted).
    pub holds: u32,
    /// Taken automatically (the state before a rollback).
    pub automatic: bool,
    /// The data it names, shared or not (4 KiB per written block; docs/FORMAT.md V4.10f):
    /// what a full `send` of it carries. `None` on a pool made before the count was kept.
    pub referenced_data_bytes: Option<u64>,
    /// Bytes its delete frees: data blocks no other recovery point or the live volume
    /// names (4 KiB each), counting writes not yet synced. `None` while the recovery point
    /// next to it is half deleted (known once that delete is done).
    pub unique_data_bytes: Option<u64>,
    /// Metadata its delete frees: map pages no other tree names (16 KiB each, stored on
    /// `tolerance + 1` members); `None` as above.
    pub unique_metadata_bytes: Option<u64>,
}

impl PoolInner {
    /// The v4 engine, or the refusal a v3 pool gets.
    pub(super) fn recovery_engine(&self, operation: &str) -> Result<&RowsEngine> {
        self.rows().ok_or_else(|| Error::Unsupported {
            operation: operation.to_string(),
            version: 3,
            reason: "recovery points need format version 4 (the paged map); copy the volume \
                     into a version-4 pool"
                .into(),
        })
    }
}

impl PoolInner {
    /// See [`Pool::create_recovery_point`].
    pub(crate) fn create_recovery_point(&self, name: &str) -> Result<RecoveryPoint> {
        let inner = self;
        inner.writable("create a recovery point")?;
        let rows = inner.recovery_engine("creating a recovery point")?;
        inner.check_available()?;
        crate::format::v4::check_recovery_name(name).map_err(|reason| Error::RecoveryPoint {
            name: name.to_string(),
            reason,
        })?;
        inner.members.enable_recovery_points()?;
        let mut volume = rows.write_volume();
        let result = volume.create_recovery_point(&inner.write_devices(), name);
        inner.unavailable_if_failed(&volume, result)
    }

    /// See [`Pool::recovery_points`].
    pub(crate) fn recovery_points(&self) -> Result<Vec<RecoveryPointInfo>> {
        let inner = self;
        let rows = inner.recovery_engine("listing recovery points")?;
        let volume = rows.read_volume();
        let devices = inner.volume_devices();
        let mut points = volume.recovery_points();
        points.sort_by_key(|p| p.sequence);
        points
            .into_iter()
            .map(|p| {
                // Next to a half-deleted recovery point the figure waits for that delete.
                let usage = match volume.recovery_point_usage(&devices, &p.name) {
                    Ok(usage) => Some(usage),
                    Err(Error::RecoveryPoint { .. }) => None,
                    Err(err) => return Err(err),
                };
                Ok(RecoveryPointInfo {
                    name: p.name,
                    guid: p.guid,
                    created: p.created,
                    sequence: p.sequence,
                    holds: p.holds,
                    automatic: p.automatic,
                    referenced_data_bytes: p
                        .referenced
                        .map(|b| b * crate::volume::BLOCK_BYTES as u64),
                    unique_data_bytes: usage.map(|u| u.blocks * crate::volume::BLOCK_BYTES as u64),
                    unique_metadata_bytes: usage
                        .map(|u| u.pages * crate::format::v4::PAGE_BYTES as u64),
                })
            })
            .collect()
    }

    /// See [`Pool::recovery_points_supported`].
    pub(crate) fn recovery_points_supported(&self) -> Result<()> {
        self.recovery_engine("recovery points").map(|_| ())
    }

    /// See [`Pool::recovery_point_summary`].
    #[must_use]
    pub(crate) fn recovery_point_summary(&self) -> (usize, Option<u64>) {
        let Some(rows) = self.rows() else {
            return (0, None);
        };
        let points = rows.read_volume().recovery_points();
        (points.len(), points.iter().map(|p| p.created).max())
    }

    /// See [`Pool::read_recovery_point`].
    pub(crate) fn read_recovery_point(
        &self,
        name: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let inner = self;
        let rows = inner.recovery_engine("reading a recovery point")?;
        let volume = rows.read_volume();
        volume.read_recovery_point(&inner.volume_devices(), name, offset, buf)
    }

    /// See [`Pool::delete_recovery_point`].
    pub(crate) fn delete_recovery_point(&self, name: &str) -> Result<crate::meta::PointUsage> {
        let inner = self;
        inner.writable("delete a recovery point")?;
        let rows = inner.recovery_engine("deleting a recovery point")?;
        inner.check_available()?;
        // A refusal writes nothing: the checks come before the gate.
        rows.read_volume().check_delete(name)?;
        inner.members.enable_paced_deletes()?;
        let mut volume = rows.write_volume();
        let result = volume.delete_recovery_point(&inner.write_devices(), name);
        inner.unavailable_if_failed(&volume, result)
    }

    /// See [`Pool::rollback_to`].
    pub(crate) fn rollback_to(&self, name: &str) -> Result<Option<RecoveryPoint>> {
        let inner = self;
        inner.writable("roll back")?;
        let rows = inner.recovery_engine("rolling back")?;
        inner.check_available()?;
        let mut volume = rows.write_volume();
        let result = volume.rollback_to(&inner.write_devices(), name);
        inner.unavailable_if_failed(&volume, result)
    }

    /// See [`Pool::hold_recovery_point`].
    pub(crate) fn hold_recovery_point(&self, name: &str, hold: bool) -> Result<u32> {
        let inner = self;
        inner.writable(if hold {
            "hold a recovery point"
        } else {
            "release a recovery point"
        })?;
        let rows = inner.recovery_engine("holding a recovery point")?;
        inner.check_available()?;
        let mut volume = rows.write_volume();
        let result = volume.hold_recovery_point(&inner.write_devices(), name, hold);
        inner.unavailable_if_failed(&volume, result)
    }
}

impl Pool {
    /// Take recovery point `name` of everything written so far: the writes before it are
    /// made durable and the map frozen as it stands (one tree sync; nothing is copied). The
    /// first one also records the recovery-point gate in every member's superblocks.
    ///
    /// # Errors
    /// [`Error::ReadOnly`]; [`Error::Unsupported`] on a version-3 pool;
    /// [`Error::RecoveryPoint`] for a name not allowed or taken;
    /// [`Error::PoolUnavailable`] with too few members; an [`Error::Io`] of the gate. After
    /// any error, list: a create whose commit reached some members may exist.
    pub fn create_recovery_point(&self, name: &str) -> Result<RecoveryPoint> {
        self.inner.create_recovery_point(name)
    }

    /// The recovery points, oldest first, with what each alone holds (a walk of what it
    /// changed, read-only).
    ///
    /// # Errors
    /// [`Error::Unsupported`] on a version-3 pool; a page that cannot be read.
    pub fn recovery_points(&self) -> Result<Vec<RecoveryPointInfo>> {
        self.inner.recovery_points()
    }

    /// Whether this pool can keep recovery points (format version 4), as the refusal the
    /// others give (a command line checks it on a read-only open first, so that a refused
    /// request opens nothing for writing).
    ///
    /// # Errors
    /// [`Error::Unsupported`] on a version-3 pool.
    pub fn recovery_points_supported(&self) -> Result<()> {
        self.inner.recovery_points_supported()
    }

    /// The recovery points' names, oldest first (none on a version-3 pool); no page is read.
    #[must_use]
    pub fn recovery_point_names(&self) -> Vec<String> {
        let Some(rows) = self.inner.rows() else {
            return Vec::new();
        };
        let mut points = rows.read_volume().recovery_points();
        points.sort_by_key(|p| p.sequence);
        points.into_iter().map(|p| p.name).collect()
    }

    /// How many recovery points the pool has, and the newest one's creation time (none on
    /// a version-3 pool); no page is read.
    #[must_use]
    pub fn recovery_point_summary(&self) -> (usize, Option<u64>) {
        self.inner.recovery_point_summary()
    }

    /// Read `buf.len()` bytes at `offset` of recovery point `name`, as the volume was then.
    ///
    /// # Errors
    /// [`Error::OutOfRange`] (checked before any I/O); [`Error::Unsupported`] on a version-3
    /// pool; [`Error::RecoveryPoint`] when there is none of that name; what a read returns.
    pub fn read_recovery_point(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.read_recovery_point(name, offset, buf)
    }

    /// Delete recovery point `name`: what it alone holds is freed (durably when this
    /// returns; the segments come back two tree syncs later).
    ///
    /// # Errors
    /// [`Error::ReadOnly`]; [`Error::Unsupported`] on a version-3 pool;
    /// [`Error::RecoveryPoint`] when there is none of that name or it is held.
    pub fn delete_recovery_point(&self, name: &str) -> Result<crate::meta::PointUsage> {
        self.inner.delete_recovery_point(name)
    }

    /// Roll the volume back to recovery point `name`: it reads as it did then. Every
    /// recovery point is kept (newer ones too), and the state before the rollback becomes an
    /// automatic recovery point (returned), unless the newest on the live line already is
    /// that state. Writes made before the call are made durable first.
    ///
    /// # Errors
    /// [`Error::ReadOnly`]; [`Error::Unsupported`] on a version-3 pool;
    /// [`Error::RecoveryPoint`] when there is none of that name; after any other error, list.
    pub fn rollback_to(&self, name: &str) -> Result<Option<RecoveryPoint>> {
        self.inner.rollback_to(name)
    }

    /// Put a hold on recovery point `name` (`hold`), or take one off. Returns its holds.
    ///
    /// # Errors
    /// [`Error::ReadOnly`]; [`Error::Unsupported`] on a version-3 pool;
    /// [`Error::RecoveryPoint`] when there is none of that name, or a release finds no hold.
    pub fn hold_recovery_point(&self, name: &str, hold: bool) -> Result<u32> {
        self.inner.hold_recovery_point(name, hold)
    }
}

impl Pool {
    /// Recount the usage of every tree (the live map, the recovery points' maps, the
    /// summary, the usage table, tree 3) against the usage table, and the live count of
    /// named blocks against the live map (docs/FORMAT.md V4.10a, V4.10f): a leak or a block
    /// freed while named shows as a difference. The map must be as the last tree sync left
    /// it (after an open that replayed nothing, or a clean close and open); reads every page
    /// of every tree (a bad copy met on the way is rewritten with the good bytes, as any read
    /// does).
    ///
    /// # Errors
    /// [`Error::CorruptMetadata`] naming the first difference; [`Error::InvalidConfig`] when
    /// the map changed since the last sync; [`Error::Unsupported`] on a version-3 pool; what
    /// a page read returns.
    pub fn check_usage(&self) -> Result<()> {
        let rows = self.inner.recovery_engine("recounting the usage")?;
        let volume = rows.read_volume();
        volume.map().check_usage(&self.inner.volume_devices())
    }
}

/// What a front end that holds a [`PoolRef`] may do with recovery points: the HTTP endpoint's
/// `POST /snapshot` and `POST /snapshot/delete` (control on).
impl PoolRef {
    /// Take recovery point `name`, as [`Pool::create_recovery_point`].
    ///
    /// # Errors
    /// As [`Pool::create_recovery_point`].
    pub fn create_recovery_point(&self, name: &str) -> Result<RecoveryPoint> {
        self.inner.create_recovery_point(name)
    }

    /// Ask for recovery point `name` to be deleted, as [`Pool::request_delete`]: the served
    /// pool's reclaim thread frees its space.
    ///
    /// # Errors
    /// As [`Pool::request_delete`].
    pub fn request_delete(&self, name: &str) -> Result<()> {
        self.inner.request_delete(name)
    }
}
