//! The pool's side of scrub and rebuild: `PoolInner` implements the narrow interfaces those
//! modules drive their work through ([`StripeAccess`], [`ScrubTarget`], [`RebuildTarget`], and
//! [`Filling`] on a [`Replacement`]), and the pool's own entry points to a scrub (claim, run,
//! cancel, progress) and to a rebuild step hand the work to `crate::scrub` and
//! `crate::rebuild`.
//! Also where a stripe's shards live ([`ShardLocation`]), for diagnostics.
//!
//! Owns: the translation from pool internals (map, stripe locks, free list, members, commits,
//! superblocks) to those interfaces. Must not hold: scrub or rebuild policy and accounting
//! (they live in `crate::scrub` and `crate::rebuild`; this file only answers their questions
//! and does their I/O).

use super::io::ShardOutcome;
use super::{ErrorKind, PoolInner, Replacement};
use crate::codec::Codec;
use crate::device::{run_batch, BatchOp, SharedDevice};
use crate::error::{Error, Result};
use crate::format::{MapEntry, PoolUuid, ScrubRecord};
use crate::geometry::Geometry;
use crate::maintenance::{DamageKind, Examined, LiveStripe, ShardFinding, StripeAccess};
use crate::rebuild::{Filling, RebuildControl, RebuildProgress, RebuildTarget, StepOutcome};
use crate::scrub::{
    RecordChange, ScrubOptions, ScrubProgress, ScrubReport, ScrubTarget, SegmentScrub,
};
use crate::types::{DeviceIndex, Generation, ShardIndex, SlotId, StripeId};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl StripeAccess for PoolInner {
    fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    fn codec(&self) -> &Codec {
        &self.codec
    }

    fn is_online(&self, device: DeviceIndex) -> bool {
        self.members.get(device).is_online()
    }

    fn device_path(&self, device: DeviceIndex) -> String {
        self.members.get(device).path()
    }

    fn member_device(&self, device: DeviceIndex) -> Option<SharedDevice> {
        self.members.get(device).device()
    }

    fn foreground_recent(&self) -> bool {
        self.rebuild.foreground_recent()
    }

    fn commit(&self) -> Result<()> {
        PoolInner::commit(self)
    }

    fn with_stripe_locked<R>(&self, stripe: StripeId, work: impl FnOnce(MapEntry) -> R) -> R {
        let _guard = self.stripe_lock(stripe).lock();
        let entry = self.map.lock().map.get(stripe);
        work(entry)
    }

    fn examine(&self, stripe: StripeId, slot: SlotId, entry: &MapEntry, heal: bool) -> Examined {
        let exam = self.examine_stripe(slot, entry, Vec::new(), heal);
        let failure = (!exam.recovered).then(|| self.unrecoverable(stripe, slot, &exam));
        let findings = exam
            .outcomes
            .iter()
            .map(|outcome| match outcome {
                ShardOutcome::Good => ShardFinding::Good,
                ShardOutcome::Missing => ShardFinding::Missing,
                ShardOutcome::Damaged(kind) => ShardFinding::Damaged(match kind {
                    ErrorKind::Read => DamageKind::Read,
                    ErrorKind::Write => DamageKind::Write,
                    ErrorKind::Checksum => DamageKind::Checksum,
                }),
            })
            .collect();
        Examined {
            shards: exam.shards,
            findings,
            healed: exam.healed,
            failure,
        }
    }

    fn shard_verifies(
        &self,
        slot: SlotId,
        entry: &MapEntry,
        shard: ShardIndex,
        bytes: &[u8],
    ) -> bool {
        PoolInner::shard_verifies(self, slot, entry, shard.0, bytes)
    }
}

impl ScrubTarget for PoolInner {
    fn pool_uuid(&self) -> PoolUuid {
        self.uuid
    }

    fn writable(&self, operation: &'static str) -> Result<()> {
        PoolInner::writable(self, operation)
    }

    fn live_stripes(&self, from: SlotId, to: SlotId) -> Vec<LiveStripe> {
        let state = self.map.lock();
        (from.0..to.0)
            .filter_map(|slot| {
                let stripe = state.stripe_in(SlotId(slot))?;
                Some(LiveStripe {
                    stripe,
                    slot: SlotId(slot),
                    entry: state.map.get(stripe),
                })
            })
            .collect()
    }

    fn live_bytes_from(&self, from: SlotId) -> u64 {
        if self.rows().is_some() {
            return 0; // no stripe map: a scrub over segments counts with segment_bytes_from
        }
        let state = self.map.lock();
        let live = (from.0..self.geometry.slots)
            .filter(|slot| state.stripe_in(SlotId(*slot)).is_some())
            .count() as u64;
        live * self.geometry.width() as u64 * self.geometry.chunk_bytes
    }

    fn rewrite_stripe(
        &self,
        live: &LiveStripe,
        repair: bool,
        found: &mut dyn FnMut(),
    ) -> Result<bool> {
        let stripe = live.stripe;
        let unchanged = || live.unchanged(&self.map.lock().map.get(stripe));
        let mut guard = self.stripe_lock(stripe).lock();
        if !unchanged() {
            return Ok(false);
        }
        found();
        if !repair {
            return Ok(false);
        }
        let mut data = vec![0u8; usize::try_from(self.geometry.stripe_data_bytes()).unwrap_or(0)];
        let mut commits = 0;
        let rewritten = loop {
            if let Err(err) = self.read_stripe_locked(stripe, 0, &mut data) {
                break Err(err);
            }
            let Some(slot) = self.map.lock().free.pop() else {
                // No free slot: a commit releases obsolete ones. It must not run under the
                // stripe lock; afterwards, a stripe rewritten meanwhile is fresh and done.
                if commits == 2 {
                    break Err(Error::NoFreeSlot(
                        "none left to rewrite an inconsistent stripe".into(),
                    ));
                }
                commits += 1;
                drop(guard);
                PoolInner::commit(self)?;
                guard = self.stripe_lock(stripe).lock();
                if !unchanged() {
                    return Ok(false);
                }
                continue;
            };
            let result = self.write_stripe_into(stripe, 0, &data, SlotId(slot));
            if result.is_err() {
                self.map.lock().free.push(slot);
            }
            break result;
        };
        drop(guard);
        rewritten.map(|()| true)
    }

    fn segment_timeline(&self) -> Option<u64> {
        self.rows().map(|rows| rows.read_volume().map().timeline())
    }

    fn segment_scrub(&self) -> Option<Box<dyn SegmentScrub + '_>> {
        self.rows()
            .map(|rows| Box::new(super::rows_scrub::RowsScrub::new(self, rows)) as Box<_>)
    }

    fn segment_bytes_from(&self, segment: u64) -> u64 {
        let Some(rows) = self.rows() else {
            return 0;
        };
        let k = self
            .geometry
            .layout
            .data_chunks(self.geometry.devices)
            .max(1) as u64;
        let width = self.geometry.width() as u64;
        rows.read_volume().allocated_bytes_from(segment) / k * width
    }

    fn scrub_record(&self) -> ScrubRecord {
        self.members.scrub_record()
    }

    fn persist_scrub(&self, change: RecordChange) -> Result<()> {
        if let RecordChange::Ended(summary) = &change {
            let totals = summary.tally.totals();
            self.members.count_scrub();
            self.note(
                crate::format::EventKind::ScrubFinish,
                "",
                &format!(
                    "{} {}: found {} damaged chunks, repaired {}, {} unrepairable stripes",
                    if summary.repair {
                        "scrub"
                    } else {
                        "check-only scrub"
                    },
                    match summary.outcome {
                        crate::format::ScrubOutcome::Completed => "completed",
                        crate::format::ScrubOutcome::Canceled => "canceled",
                    },
                    totals.checksum_errors + totals.io_errors,
                    totals.repaired,
                    summary.tally.unrepairable_stripes
                ),
            );
        }
        self.members
            .update_scrub_record(|record| change.apply(record));
        self.members.record_everywhere_or_name()?;
        Ok(())
    }
}

impl RebuildTarget for PoolInner {
    type Fill = Replacement;

    fn long_step(&self, checkpoint: bool) -> Result<StepOutcome> {
        self.rebuild_long_step(checkpoint)
    }

    fn control(&self) -> &RebuildControl {
        &self.rebuild
    }

    fn assign_spares(&self) {
        PoolInner::assign_spares(self);
    }

    fn watch_away(&self) {
        PoolInner::watch_away(self);
    }

    fn fill_of(&self, index: DeviceIndex) -> Option<Arc<Replacement>> {
        self.members.get(index).replacement()
    }

    fn progress(&self, index: DeviceIndex, fill: &Replacement) -> RebuildProgress {
        self.progress_of(self.members.get(index), fill)
    }

    fn hold_live_stripes(
        &self,
        from: SlotId,
        to: SlotId,
        mut wanted: impl FnMut(&LiveStripe) -> bool,
    ) -> Vec<LiveStripe> {
        let mut state = self.map.lock();
        let held: Vec<LiveStripe> = (from.0..to.0)
            .filter_map(|slot| {
                let stripe = state.stripe_in(SlotId(slot))?;
                let live = LiveStripe {
                    stripe,
                    slot: SlotId(slot),
                    entry: state.map.get(stripe),
                };
                wanted(&live).then_some(live)
            })
            .collect();
        state
            .held_for_rebuild
            .extend(held.iter().map(|live| live.slot.0));
        held
    }

    fn release_held(&self, slots: &[SlotId]) {
        let mut state = self.map.lock();
        for slot in slots {
            state.held_for_rebuild.remove(&slot.0);
        }
        // Slots a commit released meanwhile are free now.
        let state = &mut *state;
        let held = &state.held_for_rebuild;
        let (still_held, free): (Vec<u64>, Vec<u64>) = state
            .freed_while_held
            .iter()
            .partition(|slot| held.contains(slot));
        state.freed_while_held = still_held;
        state.free.extend(free);
    }

    fn fill_write(
        &self,
        index: DeviceIndex,
        fill: &Replacement,
        offset: u64,
        bytes: &[u8],
    ) -> Result<()> {
        fill.device.write_at(offset, bytes).map_err(|err| {
            self.members
                .abandon_replacement(index, &format!("write failed: {err}"));
            Error::Io {
                device: fill.identity.path.clone(),
                offset: Some(offset),
                source: err.into_io(),
            }
        })
    }

    fn fill_writes(
        &self,
        index: DeviceIndex,
        fill: &Replacement,
        writes: &[(u64, &[u8])],
    ) -> Result<()> {
        let mut ops: Vec<BatchOp<'_>> = writes
            .iter()
            .map(|(offset, bytes)| BatchOp::write(fill.device.as_ref(), *offset, bytes))
            .collect();
        run_batch(&mut ops);
        let failed = ops
            .into_iter()
            .find_map(|op| op.result.err().map(|err| (op.offset, err)));
        let Some((offset, err)) = failed else {
            return Ok(());
        };
        self.members
            .abandon_replacement(index, &format!("write failed: {err}"));
        Err(Error::Io {
            device: fill.identity.path.clone(),
            offset: Some(offset),
            source: err.into_io(),
        })
    }

    fn swap_in(&self, index: DeviceIndex, fill: &Replacement) -> Result<bool> {
        self.finish_rebuild(index, fill)
    }

    fn checkpoint(&self) -> Result<()> {
        self.checkpoint_rebuilds()
    }
}

impl Filling for Replacement {
    fn path(&self) -> &str {
        &self.identity.path
    }

    fn watermark(&self) -> SlotId {
        SlotId(self.next_slot.load(Ordering::Acquire))
    }

    fn set_watermark(&self, slot: SlotId) {
        self.next_slot.store(slot.0, Ordering::Release);
    }

    fn start_generation(&self) -> Generation {
        Generation(self.start_generation)
    }

    fn count_read(&self, bytes: u64) {
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
    }

    fn count_written(&self, bytes: u64) {
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
    }

    fn count_lost(&self) {
        self.lost_chunks.fetch_add(1, Ordering::Relaxed);
    }
}

/// The pool's entry point to a rebuild step (`Pool::rebuild_step` and `run_rebuilds` use it;
/// the background driver calls `crate::rebuild::step` itself).
impl PoolInner {
    /// Rebuild the next batch of stripes of every running rebuild. `checkpoint` persists the
    /// watermarks (flush the replacements, then write the superblocks) after the batch.
    pub(crate) fn rebuild_step(&self, checkpoint: bool) -> Result<StepOutcome> {
        if let Some(rows) = self.rows() {
            return self.rows_rebuild_step(rows, false);
        }
        crate::rebuild::step(self, checkpoint)
    }

    /// A longer rebuild step (what `run_rebuilds` and the background driver take at once).
    pub(crate) fn rebuild_long_step(&self, checkpoint: bool) -> Result<StepOutcome> {
        if let Some(rows) = self.rows() {
            return self.rows_rebuild_step(rows, true);
        }
        crate::rebuild::long_step(self, checkpoint)
    }
}

/// The pool's entry points to a scrub (the HTTP endpoint and `Pool` use these).
impl PoolInner {
    /// Claim the pool's one scrub slot. Done before a background thread starts, so a pause
    /// requested right after `start_scrub` returns is not lost.
    pub(crate) fn scrub_begin(&self, options: &ScrubOptions) -> Result<()> {
        self.scrub.begin(self, options)
    }

    /// Release the slot claimed by `scrub_begin` without running.
    pub(crate) fn scrub_abort_begin(&self) {
        self.scrub.abort_begin();
    }

    /// Run a claimed scrub to its end (or until paused/canceled). `observe` is called after
    /// every step with the progress so far.
    pub(crate) fn scrub_body(
        &self,
        options: &ScrubOptions,
        observe: &mut dyn FnMut(&ScrubProgress),
    ) -> Result<ScrubReport> {
        self.scrub.run(self, options, observe)
    }

    /// Cancel the running scrub after its current step, or discard the checkpoint of an
    /// interrupted one (see `Pool::cancel_scrub`).
    pub(crate) fn cancel_scrub(&self) -> Result<bool> {
        self.scrub.cancel(self)
    }

    /// The running scrub's progress, else the recorded one of an interrupted or paused scrub.
    pub(crate) fn scrub_progress(&self) -> Option<ScrubProgress> {
        self.scrub.progress(self)
    }

    /// The progress recorded on disk for a scrub that is not running in this process.
    pub(crate) fn recorded_scrub_progress(&self) -> Option<ScrubProgress> {
        crate::scrub::recorded_progress(self)
    }

    pub(crate) fn shard_locations(&self, stripe: StripeId) -> Vec<ShardLocation> {
        if stripe.0 >= self.geometry.stripes || self.rows().is_some() {
            return Vec::new();
        }
        let Some(slot) = self.map.lock().map.slot(stripe) else {
            return Vec::new();
        };
        (0..self.geometry.width())
            .map(|shard| {
                let (DeviceIndex(device), offset) =
                    self.geometry.shard_location(slot, ShardIndex(shard));
                ShardLocation {
                    shard,
                    device,
                    offset,
                    data_chunk: self.geometry.shard_data_chunk(ShardIndex(shard)),
                }
            })
            .collect()
    }
}

impl PoolInner {
    /// Where the shards holding volume byte `offset` live: on format version 4 the
    /// shard-blocks of the row holding its 4 KiB block (`offset` on the member is the
    /// shard-block's), on version 3 the shards of its stripe. Empty when nothing was written
    /// there, or the map cannot say.
    pub(crate) fn block_locations(&self, offset: u64) -> Vec<ShardLocation> {
        let Some(rows) = self.rows() else {
            let stripe = offset / self.geometry.stripe_data_bytes().max(1);
            return self.shard_locations(StripeId(stripe));
        };
        let volume = rows.read_volume();
        let key = offset / crate::volume::BLOCK_BYTES as u64;
        match volume.block_row_places(&self.volume_devices(), key) {
            Ok(Some(places)) => places
                .into_iter()
                .map(|place| ShardLocation {
                    shard: place.shard,
                    device: place.member,
                    offset: place.offset,
                    data_chunk: place.data_chunk,
                })
                .collect(),
            Ok(None) | Err(_) => Vec::new(),
        }
    }
}

/// Where one shard of a stripe lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ShardLocation {
    /// Shard index within the stripe.
    pub shard: usize,
    /// Data member holding it.
    pub device: usize,
    /// Byte offset on that device.
    pub offset: u64,
    /// The data chunk it carries (`None` for parity).
    pub data_chunk: Option<usize>,
}
