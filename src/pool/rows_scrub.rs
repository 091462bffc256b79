//! The scrub of a format-version-4 pool (docs/FORMAT.md V4.13, "Stage 3"): the pool's side of
//! a scrub over segments, which `crate::scrub` drives (claim, pacing, pause, cancel, rate,
//! checkpoints, the report) through [`SegmentScrub`].
//!
//! * **Plan** (the volume's exclusive lock, then the shared one): the pass takes its openings
//!   token, then walks the map once (`Volume::scrub_plan`), from the checkpoint's cursor on.
//! * **Chunks** (the shared lock: reads go on, writes wait at most a chunk): the plan goes on
//!   (`Volume::scrub_planned`) for a budget of time or of segments, with the members in
//!   service as they are now (fetched for every chunk: a swap-in or a fault between chunks is
//!   seen), skipping segments taken again since the walk or free now; repairs are written,
//!   not flushed. What a chunk found is added to the scrub's tally per member.
//! * A pool beyond its tolerance ends the chunk with `PoolUnavailable` before any read.
//! * Before a checkpoint, every member in service is flushed (the repairs written so far
//!   become durable); a member whose flush fails goes through the fault policy, and the pass
//!   stops only if the pool must keep it.
//!
//! Owns: the pass's openings token and plan, the translation from the volume's scrub reports
//! to the scrub's tally, and the settling flush (whose failures it hands to the fault policy).
//! Must not touch: what a chunk checks and how (`crate::volume::Volume::scrub_planned`), the
//! scrub record and its policy (`crate::scrub`).

use super::rows::RowsEngine;
use super::{DeviceFault, PoolInner};
use crate::error::{Error, Result};
use crate::format::{DamagedRange, ScrubTally};
use crate::scrub::{ChunkBudget, SegmentChunk, SegmentScrub};
use crate::types::DeviceIndex;
use crate::volume::{ScrubPlan, VolumeScrubOptions, VolumeScrubReport, BLOCK_BYTES};
use std::time::Instant;

/// A scrub pass over the segments of a v4 pool.
pub(crate) struct RowsScrub<'a> {
    pool: &'a PoolInner,
    rows: &'a RowsEngine,
    plan: Option<ScrubPlan>,
}

impl<'a> RowsScrub<'a> {
    pub(crate) fn new(pool: &'a PoolInner, rows: &'a RowsEngine) -> Self {
        Self {
            pool,
            rows,
            plan: None,
        }
    }
}

impl SegmentScrub for RowsScrub<'_> {
    fn plan(&mut self, from_segment: u64) -> Result<()> {
        self.pool.check_available()?;
        let mut volume = self.rows.write_volume();
        let openings = volume.watch_openings();
        let volume = parking_lot::RwLockWriteGuard::downgrade(volume);
        let devices = self.pool.volume_devices();
        self.plan = Some(volume.scrub_plan(&devices, openings, from_segment)?);
        Ok(())
    }

    fn chunk(
        &mut self,
        repair: bool,
        budget: ChunkBudget,
        tally: &mut ScrubTally,
    ) -> Result<SegmentChunk> {
        let Some(plan) = self.plan.as_mut() else {
            return Ok(SegmentChunk {
                bytes_read: 0,
                next_segment: None,
            });
        };
        self.pool.check_available()?;
        let volume = self.rows.read_volume();
        let devices = self.pool.volume_devices();
        let started = Instant::now();
        let mut segments = 0u64;
        let found = volume.scrub_planned(
            &devices,
            &VolumeScrubOptions {
                check_only: !repair,
            },
            plan,
            &mut || {
                segments += 1;
                match budget {
                    ChunkBudget::Time(budget) => started.elapsed() < budget,
                    ChunkBudget::Segments(count) => segments < count,
                }
            },
        )?;
        let next_segment = plan.next_segment();
        drop(volume);
        add_to_tally(tally, &found, &|device| {
            self.pool.members.get(DeviceIndex(device)).path()
        });
        // One line per place at info (a dead member has thousands), one warning per chunk
        // that found data it could not rebuild; the error is the pass's summary at its end.
        for damage in &found.unrepairable {
            tracing::info!(?damage, "scrub: a place stays bad");
        }
        let lost: u64 = found.members.iter().map(|m| m.unrepairable).sum();
        if lost > 0 {
            tracing::warn!(
                lost_blocks = found.lost_blocks.len(),
                places = lost,
                "scrub: places whose data could not be rebuilt from redundancy"
            );
        }
        Ok(SegmentChunk {
            bytes_read: found.bytes_read,
            next_segment,
        })
    }

    fn settle(&mut self) -> Result<()> {
        let members = &self.pool.members;
        for member in &members.data {
            let Some(device) = member.device() else {
                continue;
            };
            if let Err(err) = device.flush() {
                // The fault policy decides (damage stays local): a member it takes out of
                // service needs no durable repairs; one it must keep leaves the pass
                // unable to say its repairs are durable.
                members.record_error(member.index, None, DeviceFault::Write(&err));
                if member.is_online() {
                    return Err(Error::Io {
                        device: device.name(),
                        offset: None,
                        source: err.into_io(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Add what one chunk found to the scrub's tally: per member, rows and pages checked as the
/// "stripes" of a v3 tally, places that could not be rebuilt as its unrepairable stripes,
/// the segments skipped, and each lost block as a damaged volume range (merged with its
/// neighbours by the tally) naming the members (`path`) whose shard-blocks failed.
fn add_to_tally(tally: &mut ScrubTally, found: &VolumeScrubReport, path: &dyn Fn(usize) -> String) {
    for (index, counters) in found.members.iter().enumerate() {
        if let Some(device) = tally.devices.get_mut(index) {
            device.add(counters);
        }
    }
    tally.stripes_checked += found.rows + found.pages;
    tally.unrepairable_stripes += found.members.iter().map(|m| m.unrepairable).sum::<u64>();
    tally.segments_skipped += found.segments_skipped;
    for (block, on) in &found.lost_blocks {
        let mut devices: Vec<String> = on.iter().map(|&d| path(d)).collect();
        devices.sort();
        devices.dedup();
        tally.add_lost_block(DamagedRange {
            volume_offset: block * BLOCK_BYTES as u64,
            length: BLOCK_BYTES as u64,
            devices,
        });
    }
}
