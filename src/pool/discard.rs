//! Discard (TRIM) and allocation status: the thin-volume part of the pool.
//!
//! A logical stripe whose map entry has no slot was never written and reads as zeros
//! (`format::map`, `UNWRITTEN`). Discard puts whole stripes back in that state: their entry
//! loses its slot through the same path as an overwrite (`io::install`), so the old slot is
//! released only once the commit that records the unmapping is durable, and a crash before that
//! commit leaves the old data (each stripe old or zeros, never a mix). The log record carries
//! the unmapped entry exactly as it carries a written one (slot `u64::MAX`), which every build
//! since format version 1 replays as "never written": no new record kind, no version bump
//! (docs/FORMAT.md, "Discard").
//!
//! Parts of stripes at the edges of a range are written as zeros (read-modify-write, as a write
//! of zeros would), unless the stripe holds no data already.
//!
//! Owns: the discard path and the allocation query. Must not touch: the commit protocol (it
//! only leaves entries in the dirty set, as writes do), devices.

use super::PoolInner;
use crate::error::{Error, Result};
use crate::format::MapEntry;
use crate::types::{Generation, StripeId};

/// Whole stripes unmapped per acquisition of the stripe locks and the map mutex: bounds how long
/// a large discard holds writers off.
const UNMAP_BATCH_STRIPES: u64 = 4096;
/// Stripes looked at per acquisition of the map mutex by [`PoolInner::allocation`].
const SCAN_BATCH_STRIPES: u64 = 65536;

/// A run of the volume in one allocation state (what `NBD_CMD_BLOCK_STATUS` reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Volume offset of the run.
    pub offset: u64,
    /// Its length in bytes (never zero).
    pub length: u64,
    /// Whether the run holds written data. `false`: unwritten (never written, or discarded);
    /// it reads as zeros and uses no slot.
    pub allocated: bool,
}

impl PoolInner {
    /// See [`crate::Pool::discard`]. The range was checked by the caller.
    pub(crate) fn discard(&self, offset: u64, length: u64) -> Result<()> {
        if length == 0 {
            return Ok(());
        }
        if let Some(rows) = self.rows() {
            let _foreground = self.rebuild.foreground();
            return self.rows_discard(rows, offset, length);
        }
        // As a write: with too few members to make the change durable, refuse it before
        // unmapping anything.
        self.check_available()?;
        let _foreground = self.rebuild.foreground();
        let stripe_bytes = self.geometry.stripe_data_bytes();
        let end = offset + length;
        let first_whole = offset.div_ceil(stripe_bytes);
        let end_whole = end / stripe_bytes;
        if first_whole >= end_whole {
            // Within one stripe, or across one boundary with no whole stripe inside.
            let boundary = (offset / stripe_bytes + 1) * stripe_bytes;
            if boundary < end {
                self.zero_part(offset, boundary - offset)?;
                return self.zero_part(boundary, end - boundary);
            }
            return self.zero_part(offset, length);
        }
        let whole_start = first_whole * stripe_bytes;
        let whole_end = end_whole * stripe_bytes;
        if offset < whole_start {
            self.zero_part(offset, whole_start - offset)?;
        }
        let mut stripe = first_whole;
        while stripe < end_whole {
            let batch_end = (stripe + UNMAP_BATCH_STRIPES).min(end_whole);
            self.unmap_stripes(StripeId(stripe), StripeId(batch_end));
            stripe = batch_end;
        }
        if whole_end < end {
            self.zero_part(whole_end, end - whole_end)?;
        }
        Ok(())
    }

    /// Zero `length` bytes at `offset`, all within one stripe: nothing to do if the stripe holds
    /// no data, else a read-modify-write of zeros.
    fn zero_part(&self, offset: u64, length: u64) -> Result<()> {
        let stripe_bytes = self.geometry.stripe_data_bytes();
        let stripe = StripeId(offset / stripe_bytes);
        debug_assert!(
            (offset + length - 1) / stripe_bytes == stripe.0,
            "an edge lies within one stripe"
        );
        if self.map.lock().map.slot(stripe).is_none() {
            // Unwritten already: reads as zeros. (A write racing this discard may land
            // either side of it, as with any two concurrent requests.)
            return Ok(());
        }
        // Less than one stripe: the write path builds a whole stripe for it anyway.
        let zeros = vec![0u8; usize::try_from(length).unwrap_or(0)];
        self.write_at(offset, &zeros)
    }

    /// Unmap whole stripes `from..to` (fewer than [`UNMAP_BATCH_STRIPES`]): each entry loses its
    /// slot as an overwrite would replace it, so the commit protocol records the change and
    /// releases the slot once that record is durable.
    fn unmap_stripes(&self, from: StripeId, to: StripeId) {
        let mut locks: Vec<usize> = (from.0..to.0)
            .map(|s| self.stripe_lock_index(StripeId(s)))
            .collect();
        locks.sort_unstable();
        locks.dedup();
        let _guards: Vec<_> = locks.iter().map(|i| self.stripe_locks[*i].lock()).collect();
        // Held as a write holds it from taking a generation to installing its entry (see
        // `io::write_encoded`), so attaching a replacement sees every unmapping or none of it.
        let _attach_guard = self.attach_lock.read();
        #[cfg(feature = "testing")]
        let unlogged = self.members.planted().skip_discard_log;
        let width = self.geometry.crcs_per_entry();
        let mut state = self.map.lock();
        for stripe in (from.0..to.0).map(StripeId) {
            if state.map.slot(stripe).is_none() {
                continue; // never written, or discarded since: nothing to record
            }
            state.next_generation += 1;
            let entry = MapEntry {
                slot: None,
                generation: Generation(state.next_generation),
                crcs: vec![0; width],
            };
            // Planted bug `skip_discard_log`: the entry loses its slot in memory, and the slot
            // is released at the next commit as if that commit recorded the change, but it
            // does not: after a crash or a reopen the durable map names the old slot again
            // (old data back, or a slot reused since: a checksum that cannot verify).
            #[cfg(feature = "testing")]
            if unlogged {
                if let Some(old) = state.map.slot(stripe) {
                    state.orphans.push(old.0);
                }
                state.map.set(stripe, &entry);
                continue;
            }
            super::io::install(&mut state, stripe, &entry);
        }
    }

    /// See [`crate::Pool::allocation`]. The range was checked by the caller.
    pub(crate) fn allocation(&self, offset: u64, length: u64, max_extents: usize) -> Vec<Extent> {
        let mut extents: Vec<Extent> = Vec::new();
        if length == 0 || max_extents == 0 {
            return extents;
        }
        if let Some(rows) = self.rows() {
            return self.rows_allocation(rows, offset, length, max_extents);
        }
        let stripe_bytes = self.geometry.stripe_data_bytes();
        let end = offset + length;
        let mut stripe = offset / stripe_bytes;
        let last = (end - 1) / stripe_bytes;
        while stripe <= last {
            let batch_end = (stripe + SCAN_BATCH_STRIPES).min(last + 1);
            let allocated: Vec<bool> = {
                let state = self.map.lock();
                (stripe..batch_end)
                    .map(|s| state.map.slot(StripeId(s)).is_some())
                    .collect()
            };
            for (s, allocated) in (stripe..batch_end).zip(allocated) {
                let from = (s * stripe_bytes).max(offset);
                let to = ((s + 1) * stripe_bytes).min(end);
                if !extend_runs(&mut extents, from..to, allocated, max_extents) {
                    return extents;
                }
            }
            stripe = batch_end;
        }
        extents
    }
}

/// Add `range` in state `allocated` to `extents` (merged into the last run when it is in the
/// same state); `false`, with nothing added, when that would make more than `max_extents`.
pub(crate) fn extend_runs(
    extents: &mut Vec<Extent>,
    range: std::ops::Range<u64>,
    allocated: bool,
    max_extents: usize,
) -> bool {
    match extents.last_mut() {
        Some(run) if run.allocated == allocated => run.length += range.end - range.start,
        _ => {
            if extents.len() == max_extents {
                return false;
            }
            extents.push(Extent {
                offset: range.start,
                length: range.end - range.start,
                allocated,
            });
        }
    }
    true
}

/// Check that `[offset, offset + length)` lies in a volume of `volume_bytes`.
pub(crate) fn check_span(offset: u64, length: u64, volume_bytes: u64) -> Result<()> {
    match offset.checked_add(length) {
        Some(end) if end <= volume_bytes => Ok(()),
        _ => Err(Error::OutOfRange {
            offset,
            length,
            volume_bytes,
        }),
    }
}
