//! Commits: making the map durable, which is what `flush` means.
//!
//! 1. flush every data device: the new stripes' shards are durable;
//! 2. append one log record with the changed map entries to every data device (or, when the log
//!    is full, write a whole checkpoint to each device's older checkpoint area and restart the
//!    log), then flush again;
//! 3. only now release the slots the old entries pointed at.
//!
//! A crash before step 2 completes leaves the old map, whose slots were never touched; after it,
//! the new map, whose data was already durable. Recovery replays at most one log's worth of
//! records after the newest checkpoint, so it is bounded by the log size, not the pool size.

use super::PoolInner;
use crate::error::{Error, Result};
use crate::format::{encode_checkpoint, encode_log_record, log_record_bytes, CheckpointHeader};
use crate::pool::ErrorKind;
use crate::types::DeviceIndex;
use rayon::prelude::*;

impl PoolInner {
    /// Make every completed write durable (see module docs).
    pub(crate) fn commit(&self) -> Result<()> {
        let _exclusive = self.commit_lock.write();
        self.members.flush_all();
        let (stripes, next_generation) = {
            let state = self.map.lock();
            if state.dirty.is_empty() {
                return Ok(());
            }
            let stripes: Vec<u64> = state.dirty.keys().copied().collect();
            (stripes, state.next_generation)
        };
        self.check_available()?;
        let width = self.geometry.width();
        let mut meta = self.meta.lock();
        let sequence = meta.sequence + 1;
        let record_bytes = log_record_bytes(stripes.len(), width);
        if meta.log_used + record_bytes <= self.geometry.log_bytes {
            let bytes = {
                let state = self.map.lock();
                encode_log_record(self.uuid, sequence, next_generation, &state.map, &stripes)
            };
            let offset = self.geometry.log_offset + meta.log_used;
            self.write_metadata_everywhere(|_| (offset, &bytes))?;
            meta.log_used += record_bytes;
        } else {
            self.write_checkpoint(&mut meta, sequence)?;
        }
        meta.sequence = sequence;
        drop(meta);
        let mut state = self.map.lock();
        let released: Vec<u64> = std::mem::take(&mut state.dirty)
            .into_values()
            .flatten()
            .collect();
        state.free.extend(released);
        Ok(())
    }

    /// Write the whole map as checkpoint `sequence` into each device's older checkpoint area,
    /// then restart the log. The caller holds the commit lock (or is opening the pool).
    pub(crate) fn write_checkpoint(
        &self,
        meta: &mut super::MetaCursor,
        sequence: u64,
    ) -> Result<()> {
        let bytes = {
            let state = self.map.lock();
            encode_checkpoint(
                self.uuid,
                CheckpointHeader {
                    sequence,
                    next_generation: state.next_generation,
                },
                &state.map,
            )
        };
        let offsets = self.geometry.checkpoint_offsets;
        let targets = meta.next_checkpoint.clone();
        self.write_metadata_everywhere(|index| (offsets[targets[index.0]], &bytes))?;
        for area in &mut meta.next_checkpoint {
            *area = 1 - *area;
        }
        meta.log_used = 0;
        Ok(())
    }

    /// Write one metadata buffer to every online data device and flush. A device that fails is
    /// faulted; the commit stands as long as the pool still has enough devices.
    fn write_metadata_everywhere<'a>(
        &self,
        place: impl Fn(DeviceIndex) -> (u64, &'a [u8]) + Sync,
    ) -> Result<()> {
        let landed: usize = self
            .members
            .data
            .par_iter()
            .enumerate()
            .map(|(i, member)| {
                let index = DeviceIndex(i);
                let Some(device) = member.device() else {
                    return 0;
                };
                let (offset, bytes) = place(index);
                match device.write_at(offset, bytes).and_then(|()| device.flush()) {
                    Ok(()) => 1,
                    Err(err) => {
                        self.members.record_error(index, ErrorKind::Write, &err);
                        0
                    }
                }
            })
            .sum();
        if landed == 0 {
            return Err(Error::CorruptMetadata(
                "the stripe map could not be written to any device".into(),
            ));
        }
        self.check_available()
    }
}
