//! The rebuild of a format-version-4 pool (docs/FORMAT.md V4.13, "Stage 2"): a replacement
//! attached to a position is filled while the volume stays in use, in chunks, then swapped in.
//!
//! * **Attach** (the volume's exclusive lock): the volume is flushed with the members as they
//!   are, so every row and page issued before is durable on its sources; the replacement is
//!   recorded (superblocks); from then on every write the volume makes reaches it through the
//!   fill device (`fill.rs`).
//! * **Chunks** (the shared lock: reads go on, writes wait at most a chunk, or the walk that
//!   starts a pass): a pass is planned from one walk of the map (`Volume::rebuild_plan`), and
//!   each chunk goes on with it (`Volume::rebuild_planned`) until a budget of segments (a
//!   step) or of time (a long step) is spent, skipping segments taken again since the walk.
//! * **Swap-in** (the exclusive lock): two tree syncs that must reach the replacement (the
//!   newest uberblock and a fresh log half on it), then the superblocks name it the member
//!   (the write must land on it), then the position switches to it in memory.
//! * A replacement that failed a write (the fill device records it) is abandoned before the
//!   next chunk; nothing else is held back. After a crash the rebuild starts over at segment 0
//!   (nothing of its progress is recorded on v4).
//!
//! Owns: the v4 replacement's life from attach to swap-in. Must not touch: what a chunk copies
//! and how (`crate::volume::Volume::rebuild_device`), membership records (`members.rs`), the
//! v3 rebuild (`replacement.rs`, `crate::rebuild`).

use super::rows::RowsEngine;
use super::{Identity, PoolInner, Replacement};
use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::rebuild::{RebuildProgress, StepOutcome};
use crate::types::DeviceIndex;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Segments one deterministic step copies (`Pool::rebuild_step`: the simulation's unit).
const STEP_SEGMENTS: u64 = 2;
/// How long one long step (the background driver's, `run_rebuilds`') holds the shared lock.
const LONG_STEP_BUDGET: Duration = Duration::from_millis(50);
/// The most data segments a long step rebuilds together (`RebuildOptions::segments_at_once`;
/// below it a batch is sized to take about 25 ms at the rate the last one wrote at): its
/// budget is checked between batches.
const LONG_STEP_BATCH: usize = 64;

impl PoolInner {
    /// Attach `device` to replace position `index` of a v4 pool and record it; the copy runs
    /// in later steps (the background driver, `Pool::run_rebuilds`, `Pool::rebuild_step`).
    ///
    /// # Errors
    /// [`Error::Busy`] when the position already has a replacement; the flush's error, or the
    /// new device's when its map areas cannot be cleared (nothing is attached then);
    /// [`Error::PoolUnavailable`] when the attach cannot be recorded on every member in
    /// service (it is abandoned).
    pub(crate) fn rows_attach(
        &self,
        rows: &RowsEngine,
        index: DeviceIndex,
        identity: Identity,
        device: SharedDevice,
        from_spare: bool,
        resync_from: Option<u64>,
    ) -> Result<()> {
        self.check_available()?;
        let mut volume = rows.write_volume();
        if let Some(existing) = self.members.get(index).replacement() {
            return Err(Error::Busy(format!(
                "position {} is already being replaced by {}",
                index.0, existing.identity.path
            )));
        }
        // Every row and page issued so far is durable on its sources before the replacement
        // is attached: the chunks copy them from there.
        let flushed = volume.flush(&self.write_devices()).map(|_| ());
        self.unavailable_if_failed(&volume, flushed)?;
        // Nothing the device held before (an uberblock or log record of this pool from an
        // earlier life, a forced open ago) may ever be read as this pool's once it serves.
        clear_map_areas(&self.geometry, &device)?;
        let replacement = Arc::new(
            Replacement::new(identity, device, 0, 0, from_spare).resyncing_from(resync_from),
        );
        replacement
            .total_bytes
            .store(self.rows_rebuild_estimate(&volume), Ordering::Relaxed);
        self.members
            .attach_replacement(index, Arc::clone(&replacement));
        drop(volume);
        self.rebuild_started(index, &replacement);
        // Every member in service records it (and the position's state): from now on the
        // fault policy does not record again what the fill device's position refuses.
        if !self.members.record_everywhere() {
            self.members
                .abandon_replacement(index, "its attach could not be recorded on every member");
            return Err(self.unavailable_with(std::iter::empty()));
        }
        Ok(())
    }

    /// At a writable open of a v4 pool recorded mid-rebuild: each replacement starts over
    /// at segment 0 with its map areas cleared (a device whose areas cannot be written is
    /// abandoned, recorded).
    pub(crate) fn rows_restart_rebuilds(&self) {
        for member in &self.members.data {
            let Some(replacement) = member.replacement() else {
                continue;
            };
            replacement.next_slot.store(0, Ordering::Release);
            replacement.durable_slot.store(0, Ordering::Release);
            if let Err(err) = clear_map_areas(&self.geometry, &replacement.device) {
                self.members
                    .abandon_replacement(member.index, &format!("its map areas: {err}"));
            }
        }
    }

    /// What a rebuild of one position writes, about: the allocated bytes times the position's
    /// share of a row (all of it on a mirror, `1/K` on `rs:K+M`); metadata copies are not
    /// counted.
    pub(crate) fn rows_rebuild_estimate(&self, volume: &crate::volume::Volume) -> u64 {
        let share = self
            .geometry
            .layout
            .data_chunks(self.geometry.devices)
            .max(1) as u64;
        volume.allocated_bytes() / share
    }

    /// One rebuild step of a v4 pool: every attached replacement gets one chunk (`long`: a
    /// time budget; else [`STEP_SEGMENTS`] segments), and a replacement whose copy is done is
    /// swapped in. A replacement that failed a write is abandoned first.
    ///
    /// # Errors
    /// What the chunk or the swap-in returns other than a failure of the replacement itself
    /// (which abandons it).
    pub(crate) fn rows_rebuild_step(&self, rows: &RowsEngine, long: bool) -> Result<StepOutcome> {
        let mut plans = rows.rebuilding.lock();
        let mut outcome = StepOutcome::default();
        for member in &self.members.data {
            let Some(replacement) = member.replacement() else {
                continue;
            };
            let index = member.index;
            if let Some(why) = replacement.fill_failed.lock().clone() {
                self.members.abandon_replacement(index, &why);
                continue;
            }
            let done = match self.rows_chunk(rows, &mut plans, index, &replacement, long) {
                Ok((written, done)) => {
                    outcome.written_bytes += written;
                    done
                }
                Err(Error::Io {
                    device,
                    offset,
                    source,
                }) if device == replacement.device.name() => {
                    let why = match offset {
                        Some(offset) => format!("write at byte offset {offset}: {source}"),
                        None => source.to_string(),
                    };
                    self.members.abandon_replacement(index, &why);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !done {
                outcome.running += 1;
                continue;
            }
            let progress = self.progress_of(member, &replacement);
            if self.rows_swap_in(rows, index, &replacement)? {
                outcome.completed.push(RebuildProgress {
                    done_bytes: replacement.bytes_written.load(Ordering::Relaxed),
                    ..progress
                });
            }
        }
        // Passes of replacements abandoned or swapped in are over (dropping a plan ends its
        // noting of openings).
        plans.retain(|position, (of, _)| {
            self.members
                .get(DeviceIndex(*position))
                .replacement()
                .is_some_and(|current| Arc::ptr_eq(&current, of))
        });
        Ok(outcome)
    }

    /// Copy one chunk onto `replacement` from where its pass stands: `(bytes written, whether
    /// the copy is done)`. A pass is planned from one walk of the map, under the shared lock
    /// right after the pass takes its openings token (review of stage 2, finding 3: a walk per
    /// chunk made a rebuild quadratic in the map's size).
    fn rows_chunk(
        &self,
        rows: &RowsEngine,
        plans: &mut super::rows::RebuildPlans,
        index: DeviceIndex,
        replacement: &Arc<Replacement>,
        long: bool,
    ) -> Result<(u64, bool)> {
        // Sources: the members in service (the read list, never another position's
        // replacement), the old member at the position included when it still serves. The
        // copy goes to the replacement directly: its failure is the chunk's.
        let mut devices = self.volume_devices();
        let old = devices[index.0].take();
        devices[index.0] = Some(Arc::clone(&replacement.device));
        let options = crate::volume::RebuildOptions {
            position: index.0,
            from_segment: 0,
            old,
            min_birth: replacement.resync_from.unwrap_or(0),
            // A deterministic step is one batch of a fixed size (the simulation goes through
            // batches too; up to 8 segments a batch is never sized by timing).
            segments_at_once: if long {
                LONG_STEP_BATCH
            } else {
                STEP_SEGMENTS as usize
            },
        };
        let planned = plans
            .get(&index.0)
            .is_some_and(|(of, _)| Arc::ptr_eq(of, replacement));
        let volume = if planned {
            rows.read_volume()
        } else {
            let mut volume = rows.write_volume();
            let openings = volume.watch_openings();
            let volume = parking_lot::RwLockWriteGuard::downgrade(volume);
            let plan = volume.rebuild_plan(&devices, &options, openings)?;
            plans.insert(index.0, (Arc::clone(replacement), plan));
            volume
        };
        let Some((_, plan)) = plans.get_mut(&index.0) else {
            return Ok((0, false));
        };
        let started = Instant::now();
        let mut segments = 0u64;
        let report = volume.rebuild_planned(&devices, &options, plan, &mut |_| {
            segments += 1;
            if long {
                started.elapsed() < LONG_STEP_BUDGET
            } else {
                segments < STEP_SEGMENTS
            }
        })?;
        let done = plan.done();
        drop(volume);
        replacement
            .bytes_written
            .fetch_add(report.bytes_written, Ordering::Relaxed);
        replacement
            .bytes_read
            .fetch_add(report.bytes_read, Ordering::Relaxed);
        replacement
            .lost_chunks
            .fetch_add(report.unrepairable.len() as u64, Ordering::Relaxed);
        for damage in &report.unrepairable {
            tracing::error!(?damage, device = %replacement.identity.path, "a place of the position could not be rebuilt");
        }
        replacement
            .next_slot
            .store(report.resume_from.unwrap_or(u64::MAX), Ordering::Release);
        Ok((report.bytes_written, done))
    }

    /// Make the filled `replacement` the member of position `index` (module docs); `false`
    /// when it was abandoned instead (its device failed on the way).
    fn rows_swap_in(
        &self,
        rows: &RowsEngine,
        index: DeviceIndex,
        replacement: &Arc<Replacement>,
    ) -> Result<bool> {
        let mut volume = rows.write_volume();
        let still_attached = self
            .members
            .get(index)
            .replacement()
            .is_some_and(|current| Arc::ptr_eq(&current, replacement));
        if !still_attached {
            return Ok(false);
        }
        let devices = self.write_devices();
        // The newest uberblock and a fresh log half on every member and on the replacement
        // (a sync flushes the members and logs what no commit did first, so no flush is
        // needed before it); twice, so that the tree before the newest and the log chain
        // after it (what `open --rewind` reads) are whole on the replacement too.
        for _ in 0..2 {
            let synced = volume.sync(&devices).map(|_| ());
            self.unavailable_if_failed(&volume, synced)?;
        }
        if let Some(why) = replacement.fill_failed.lock().clone() {
            drop(volume);
            self.members.abandon_replacement(index, &why);
            return Ok(false);
        }
        // It holds the volume: the superblocks name it the member, and must land on it.
        replacement.complete.store(true, Ordering::Release);
        if let Err(err) = self.record_on(&replacement.device) {
            replacement.complete.store(false, Ordering::Release);
            drop(volume);
            self.members
                .abandon_replacement(index, &format!("its superblock: {err}"));
            return Ok(false);
        }
        let Some(old) = self.members.swap_in_replacement(index, replacement) else {
            return Ok(false);
        };
        drop(volume);
        self.rebuilt(index, replacement, &old);
        Ok(true)
    }
}

/// Zero both uberblock rings and both log halves of `device` and flush: a device that was a
/// member of this pool before (taken out, a forced open ago) may hold uberblocks and records
/// with txgs and sequences the pool has since used again, and open trusts those areas on
/// every member.
///
/// # Errors
/// The device's write or flush error (the attach is refused, nothing else changed).
pub(crate) fn clear_map_areas(
    geometry: &crate::geometry::Geometry,
    device: &SharedDevice,
) -> Result<()> {
    let ring_bytes = geometry.uberblock_slots * crate::geometry::UBERBLOCK_SLOT_BYTES;
    let areas = geometry
        .uberblock_rings()
        .map(|start| (start, ring_bytes))
        .into_iter()
        .chain(
            geometry
                .log_halves()
                .map(|start| (start, geometry.log_half_bytes())),
        );
    let zeros = vec![0u8; 1 << 20];
    let io = |offset: u64, e: crate::device::DeviceError| Error::Io {
        device: device.name(),
        offset: Some(offset),
        source: e.into_io(),
    };
    for (start, bytes) in areas {
        let mut at = start;
        while at < start + bytes {
            let len = usize::try_from((start + bytes - at).min(zeros.len() as u64))
                .unwrap_or(zeros.len());
            device.write_at(at, &zeros[..len]).map_err(|e| io(at, e))?;
            at += len as u64;
        }
    }
    device.flush().map_err(|e| io(0, e))
}
