//! The data cleaner (docs/FORMAT.md V4.6 "Cleaner", "Pacing", "The hard reserve"; V4.13
//! step 7): rows are never rewritten, so an overwrite leaves a dead block behind, and a data
//! segment comes back only when no pointer names any block in it. The cleaner copies the live
//! blocks of a mostly dead segment into fresh rows and points their owners at the copies;
//! the segment's count then reaches 0, the next sync's fold makes it free-pending, and it is
//! free two syncs later (the map's release rule, unchanged).
//!
//! * **Liveness**: the victim's rows (noted since the last sync, else its slot summary) name
//!   each block's owner and the pointer it was given. A block is live iff the owner's pointer
//!   is still exactly that one (address, birth and crc): the compare of FORMAT's
//!   compare-and-swap. The volume is borrowed exclusively for a whole victim, so nothing can
//!   move the owner between that compare and the install; the swap half comes with a cleaner
//!   that runs beside writers (the packer, step 6).
//! * **Copies are verified reads**: each live block is read through the read path against
//!   its pointer (rebuilt from its row when bad, and healed), so cleaning never turns a rotten
//!   block into a good-looking one.
//! * **Victims**: the closed data segment with the fewest referenced blocks (greedy; the
//!   slot summary keeps no age for cost-benefit) among those with at least K dead blocks
//!   (the copies are batched in whole rows and end in one narrow row at most, so every
//!   victim gives back at least one block more than it takes), skipping segments the
//!   cleaner could not empty (a block lost beyond the tolerance, or a count the rows do not
//!   explain: reported, not retried while the segment stays in use).
//! * **Pacing**: writes keep `free + emptied + pending data ≥ reserve + margin` (emptied:
//!   data segments no block references, free-pending at the next fold and free two syncs
//!   later), cleaning at most four victims per
//!   data segment opened. A write that would take the hard reserve cleans a victim and runs a
//!   sync until enough is free (writer stall, counted); it is refused with
//!   [`Error::NoFreeSlot`] only when no victim is left and syncs release nothing.
//!
//! * **Recovery points** (FORMAT.md V4.10a): a victim holding a block a recovery point
//!   names cannot empty until blocks can be forwarded, so it is skipped before anything is
//!   copied (one slot record tells a segment written whole before the newest recovery
//!   point), and `NoFreeSlot` says how many such segments there are.
//!
//! Owns: choosing victims, the liveness compare, relocation and pacing. Does not own: the
//! counts and the release of segments (the map's), the rows' bytes (written by the volume's
//! write path, read by its read path).

use super::{Volume, BLOCK_BYTES};
use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::format::v4::BlockPointer;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

/// Blocks relocated per read + write batch (1 MiB).
const RELOCATE_BATCH: usize = 256;

/// What the cleaner remembers between writes.
#[derive(Debug, Default)]
pub(super) struct CleanerState {
    /// Data segments opened when the pacing last looked.
    seen_opened: u64,
    /// Victims whose count stayed above 0 after cleaning: not chosen again.
    stuck: BTreeSet<u64>,
    /// Victims holding blocks a recovery point names (FORMAT.md V4.10a): they cannot empty
    /// until forwarding exists, so nothing is copied out of them (also in `stuck`).
    pinned: BTreeSet<u64>,
}

impl CleanerState {
    /// Forget the victims found pinned by recovery points (one was deleted: they may empty
    /// now) and the stuck ones with them (a stuck victim may have been pinned).
    pub(super) fn forget_pins(&mut self) {
        self.pinned.clear();
        self.stuck.clear();
    }
}

impl Volume {
    /// Free segments kept beyond the hard reserve before writes wait (FORMAT.md V4.6,
    /// "Pacing": `max(16, 2 % of segments)`, bounded by a thirty-second of the segments so a
    /// small pool's cleaning headroom (a sixteenth) can always provide it).
    fn clean_margin(&self) -> u64 {
        let segments = self.map.segments().shape().segments;
        (segments / 50).max(16).min(segments / 32).max(2)
    }

    /// Whether a write that opens at most `segments` data segments has room without cleaning
    /// or syncing: free segments beyond the reserve and the cleaner's margin.
    pub(super) fn room_is_plenty(&self, segments: u64) -> bool {
        let table = self.map.segments();
        table.free_segments() >= table.data_floor() + self.clean_margin() + segments
    }

    /// Make room for a write that opens at most `segments` data segments: clean while free
    /// and returning segments fall below the reserve plus the margin, and sync (cleaning a
    /// victim before each) while the write would otherwise take the reserve.
    ///
    /// # Errors
    /// [`Error::NoFreeSlot`] when no victim is left and three syncs release nothing the
    /// write may take; what a sync, a read or a write of the cleaner returns.
    pub(super) fn make_room(
        &mut self,
        devices: &[Option<SharedDevice>],
        segments: u64,
    ) -> Result<()> {
        if self.room_is_plenty(segments) {
            return Ok(());
        }
        let margin = self.clean_margin();
        let table = self.map.segments();
        let (free, reserve) = (table.free_segments(), table.data_floor());
        let opened = table.data_segments_opened();
        if opened == self.cleaner.seen_opened && free >= reserve + segments {
            // Already balanced for the segment being filled.
            return Ok(());
        }
        self.cleaner.seen_opened = opened;
        // At most a few victims per segment opened: the pacing spreads the cleaning over
        // the writes.
        for _ in 0..4 {
            let table = self.map.segments();
            // Free-pending metadata segments are not counted: every sync frees some as it
            // takes new ones, which never adds up to free space.
            let coming = table.emptied_data_segments() + table.pending_data_segments();
            if table.free_segments() + coming >= table.data_floor() + margin + segments
                || !self.clean_one(devices)?
            {
                break;
            }
        }
        // What was emptied comes back only through syncs (the third after a segment's count
        // reached 0 releases it). Sync until enough is free.
        let mut fruitless = 0;
        // Each victim gives back at least K + 1 blocks three syncs after it was cleaned, so a
        // correct volume needs at most about two segments' worth of victims; a cleaner that
        // does not get there is wrong, and the write is refused rather than spin.
        let shape = self.map.segments().shape();
        let bound = 16 + 2 * shape.blocks_per_segment / (self.rows.k() as u64 + 1);
        for _ in 0..bound {
            let table = self.map.segments();
            let (free, reserve) = (table.free_segments(), table.data_floor());
            if free >= reserve + segments {
                return Ok(());
            }
            // Data segments already emptied come back through syncs alone; a victim is
            // cleaned only when they would not be enough (each costs a victim's live blocks).
            let coming = table.pending_data_segments() + table.emptied_data_segments();
            let cleaned = free + coming < reserve + segments && self.clean_one(devices)?;
            self.counters.cleaner_syncs.fetch_add(1, Ordering::Relaxed);
            self.map.sync(devices)?;
            if cleaned || self.map.segments().free_segments() > free {
                fruitless = 0;
            } else if fruitless == 3 {
                let table = self.map.segments();
                let deleting = self.map.deletes().len();
                return Err(Error::NoFreeSlot(format!(
                    "no data segment is free outside the hard reserve of {} segments ({} of it \
                     waiting for release; {} free, {} waiting for release in all) and the \
                     cleaner found none to empty ({} held by recovery points){}",
                    table.reserve(),
                    table.reserve() - table.data_floor(),
                    table.free_segments(),
                    table.pending_segments(),
                    self.cleaner.pinned.len(),
                    if deleting > 0 {
                        format!(
                            "; {deleting} recovery point(s) being deleted hold space that comes \
                             back as their delete runs (`snapshot reclaim`)"
                        )
                    } else {
                        String::new()
                    }
                )));
            } else {
                fruitless += 1;
            }
        }
        let table = self.map.segments();
        Err(Error::NoFreeSlot(format!(
            "the cleaner ran {bound} victims and syncs and still no data segment is free \
             outside the hard reserve of {} segments ({} of it waiting for release; {} free, \
             {} waiting for release in all)",
            table.reserve(),
            table.reserve() - table.data_floor(),
            table.free_segments(),
            table.pending_segments()
        )))
    }

    /// Empty one victim: copy its live blocks into fresh rows. `false`: no segment is worth
    /// cleaning.
    fn clean_one(&mut self, devices: &[Option<SharedDevice>]) -> Result<bool> {
        // A segment number freed since it was found stuck may be a victim again.
        let table = self.map.segments();
        let returned = |s: &u64| !table.is_free(*s) && !table.is_pending(*s);
        self.cleaner.stuck.retain(returned);
        self.cleaner.pinned.retain(returned);
        let table = self.map.segments();
        // A victim's live blocks fill at most the rest of the open segment and one more.
        if table.free_segments() < table.cleaner_floor() + 2 {
            return Ok(false);
        }
        // Its copies end in one narrow row at most (up to K − 1 blocks of it unused): a
        // victim with K dead blocks gives back at least one block more than it takes.
        let min_dead = self.rows.k() as u64;
        let (victim, live) = loop {
            let table = self.map.segments();
            let Some((victim, counted)) = table.data_victim(&self.cleaner.stuck, min_dead) else {
                return Ok(false);
            };
            // A block counted but not live, or live and born at or before S_head, is named
            // by a recovery point: the victim cannot empty (FORMAT.md V4.10a), so nothing is
            // copied out of it. A segment written whole before the newest recovery point is
            // told from one slot record, without looking its blocks up.
            let s_head = self.map.recovery_head();
            let live = if s_head > 0 && self.written_before(devices, victim, s_head)? {
                None
            } else {
                Some(self.live_blocks(devices, victim)?)
            };
            let movable = live.filter(|live| {
                s_head == 0
                    || (counted <= live.len() as u64
                        && live.iter().all(|(_, p)| p.birth() > s_head))
            });
            if let Some(live) = movable {
                break (victim, live);
            }
            self.cleaner.pinned.insert(victim);
            self.cleaner.stuck.insert(victim);
        };
        // Whole rows per batch: one narrow row per victim at most.
        let k = self.rows.k();
        for batch in live.chunks(RELOCATE_BATCH / k * k) {
            let mut bytes = vec![0u8; batch.len() * BLOCK_BYTES];
            let mut keys: Vec<u64> = batch.iter().map(|(key, _)| *key).collect();
            if let Err(e) = self.read_pointers(devices, batch, &mut bytes) {
                if !matches!(
                    e,
                    Error::UnrecoverableBlock { .. } | Error::MetadataLost { .. }
                ) {
                    return Err(e);
                }
                // A block lost beyond the layout's tolerance stays where it is (reads of it
                // keep failing, naming it); the others move, and the victim, still counted,
                // is not chosen again. Damage stays as small as it is.
                (keys, bytes) = self.readable(devices, batch)?;
            }
            if keys.is_empty() {
                continue;
            }
            let blocks: Vec<&[u8]> = bytes.chunks_exact(BLOCK_BYTES).collect();
            self.put_rows(devices, &keys, &blocks, true)?;
            self.counters
                .relocated_blocks
                .fetch_add(keys.len() as u64, Ordering::Relaxed);
        }
        let left = self.map.segments().referenced_now(victim);
        if left == 0 {
            self.counters
                .cleaned_segments
                .fetch_add(1, Ordering::Relaxed);
        } else {
            tracing::warn!(
                segment = victim,
                referenced = left,
                "the cleaner copied every block the segment's rows say is live, yet blocks \
                 are still counted in it; it is not cleaned again"
            );
            self.cleaner.stuck.insert(victim);
        }
        Ok(true)
    }

    /// Whether the newest row of data segment `segment` was born at or before `s_head` (so
    /// every row of it was: a segment's slots and rows are written in order).
    fn written_before(
        &self,
        devices: &[Option<SharedDevice>],
        segment: u64,
        s_head: u64,
    ) -> Result<bool> {
        let slots = self.map.segments().shape().segment_slots;
        for slot in (segment * slots..(segment + 1) * slots).rev() {
            if let Some(newest) = self.map.slot_rows(devices, slot, true)?.last() {
                return Ok(newest.birth <= s_head);
            }
        }
        Ok(false)
    }

    /// The blocks of `batch` that can be read, one by one, with their bytes; the others are
    /// logged with the error that names them.
    fn readable(
        &self,
        devices: &[Option<SharedDevice>],
        batch: &[(u64, BlockPointer)],
    ) -> Result<(Vec<u64>, Vec<u8>)> {
        let mut keys = Vec::with_capacity(batch.len());
        let mut bytes = Vec::with_capacity(batch.len() * BLOCK_BYTES);
        let mut block = vec![0u8; BLOCK_BYTES];
        for one in batch {
            match self.read_pointers(devices, std::slice::from_ref(one), &mut block) {
                Ok(()) => {
                    keys.push(one.0);
                    bytes.extend_from_slice(&block);
                }
                Err(e @ (Error::UnrecoverableBlock { .. } | Error::MetadataLost { .. })) => {
                    tracing::warn!(block = one.0, error = %e, "the cleaner leaves a block it cannot read in place");
                }
                Err(e) => return Err(e),
            }
        }
        Ok((keys, bytes))
    }

    /// The live blocks of `victim` as `(owner, pointer)`, sorted by owner (a cleaned region
    /// reads back in logical order).
    fn live_blocks(
        &self,
        devices: &[Option<SharedDevice>],
        victim: u64,
    ) -> Result<Vec<(u64, BlockPointer)>> {
        let slots = self.map.segments().shape().segment_slots;
        let mut live = Vec::new();
        for slot in victim * slots..(victim + 1) * slots {
            for row in self.map.slot_rows(devices, slot, true)? {
                for (owner, pointer) in row.blocks {
                    if owner >= self.blocks {
                        continue;
                    }
                    #[cfg(feature = "testing")]
                    if self.cleaner_install_without_cas {
                        live.push((owner, pointer));
                        continue;
                    }
                    match self.map.get(devices, owner) {
                        Ok(now) if now == pointer => live.push((owner, pointer)),
                        Ok(_) => {}
                        // The owner's map page is lost: the block cannot be judged, so it
                        // stays (the victim keeps its count and is not chosen again).
                        Err(Error::MetadataLost { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        live.sort_by_key(|(owner, _)| *owner);
        Ok(live)
    }
}
