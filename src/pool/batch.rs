//! A stripe's shard I/O as one batch across its members, and reusable per-thread buffers.
//!
//! The shards of one stripe are read or written with one [`run_batch`] call: on io_uring
//! devices the kernel works on every member at once, and the calling thread waits only for the
//! kernel, never for other pool work (so holding the stripe lock meanwhile cannot deadlock, see
//! `parallel.rs`). Devices without io_uring (memory devices, fault decorators) are served one
//! after another, as before.
//!
//! Buffers: each thread keeps aligned scratch buffers (one for reads, one for a stripe being
//! written, one for parity) that grow to the largest stripe seen and are then reused, so a
//! healthy read or a write allocates no data buffers in steady state, and `O_DIRECT` can use
//! them in place. A re-entrant use (never expected) falls back to a fresh buffer.

use super::io::Fetch;
use super::PoolInner;
use crate::device::{run_batch, AlignedBuf, BatchOp, SharedDevice};
use crate::error::Corruption;
use crate::format::MapEntry;
use crate::pool::{DeviceFault, ErrorKind};
use crate::types::{DeviceIndex, ShardIndex, SlotId};
use std::cell::RefCell;

/// What became of one shard of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Got {
    /// Read and verified against the map.
    Good,
    /// Read error or checksum mismatch (counted against the device).
    Bad(ErrorKind),
    /// The device is out of service.
    Missing,
}

impl Got {
    /// As the read path's `Fetch`, owning `bytes` if good.
    pub(crate) fn into_fetch(self, bytes: Vec<u8>) -> Fetch {
        match self {
            Got::Good => Fetch::Good(bytes),
            Got::Bad(kind) => Fetch::Bad(kind),
            Got::Missing => Fetch::Missing,
        }
    }

    /// As the read path's `Fetch`, with a copy of `bytes` if good.
    pub(crate) fn into_fetch_copied(self, bytes: &[u8]) -> Fetch {
        match self {
            Got::Good => Fetch::Good(bytes.to_vec()),
            Got::Bad(kind) => Fetch::Bad(kind),
            Got::Missing => Fetch::Missing,
        }
    }
}

/// One shard, or a part of it, to read and verify.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShardRead<'a> {
    /// The stripe's physical slot.
    pub slot: SlotId,
    /// Its map entry (generation and checksums).
    pub entry: &'a MapEntry,
    /// Which shard.
    pub shard: usize,
    /// Where in the shard the read starts: a checksum block boundary. The buffer given with
    /// it says how many bytes (whole checksum blocks).
    pub start: usize,
}

impl<'a> ShardRead<'a> {
    /// The whole of `shard`.
    pub(crate) fn whole(slot: SlotId, entry: &'a MapEntry, shard: usize) -> Self {
        Self {
            slot,
            entry,
            shard,
            start: 0,
        }
    }
}

/// Which per-thread scratch buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scratch {
    /// Shards read for a request.
    Read,
    /// A whole stripe being written.
    Stripe,
    /// The parity of a stripe being written.
    Parity,
}

thread_local! {
    static SCRATCH: [RefCell<AlignedBuf>; 3] = [
        RefCell::new(AlignedBuf::zeroed(0)),
        RefCell::new(AlignedBuf::zeroed(0)),
        RefCell::new(AlignedBuf::zeroed(0)),
    ];
}

/// Run `work` with this thread's `which` scratch buffer, at least `len` bytes long (contents
/// unspecified; `work` gets exactly `len` bytes).
pub(crate) fn with_scratch<R>(which: Scratch, len: usize, work: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|cells| {
        let cell = &cells[which as usize];
        if let Ok(mut buf) = cell.try_borrow_mut() {
            if buf.len() < len {
                *buf = AlignedBuf::zeroed(len);
            }
            work(&mut buf[..len])
        } else {
            work(&mut AlignedBuf::zeroed(len))
        }
    })
}

impl PoolInner {
    /// Read `items` in one batch, item `i` into `bufs[i]` (as many bytes as the buffer holds,
    /// from the item's start), and verify each against its map entry's checksums. Errors are
    /// counted against their devices.
    pub(crate) fn fetch_batch(&self, items: &[ShardRead<'_>], bufs: Vec<&mut [u8]>) -> Vec<Got> {
        let located: Vec<(DeviceIndex, u64, Option<SharedDevice>)> = items
            .iter()
            .map(|item| {
                let (index, offset) = self
                    .geometry
                    .shard_location(item.slot, ShardIndex(item.shard));
                (index, offset, self.members.get(index).device())
            })
            .collect();
        let mut ops: Vec<BatchOp<'_>> = Vec::with_capacity(items.len());
        let mut which: Vec<usize> = Vec::with_capacity(items.len());
        let mut got = vec![Got::Missing; items.len()];
        for (i, (((_, offset, device), buf), item)) in
            located.iter().zip(bufs).zip(items).enumerate()
        {
            if let Some(device) = device {
                ops.push(BatchOp::read(
                    device.as_ref(),
                    *offset + item.start as u64,
                    buf,
                ));
                which.push(i);
            }
        }
        run_batch(&mut ops);
        let sums = crate::codec::ShardSums::of_geometry(&self.geometry);
        for (op, i) in ops.into_iter().zip(which) {
            let (index, offset, _) = &located[i];
            let item = &items[i];
            let at = *offset + item.start as u64;
            got[i] = match (op.result, op.buf) {
                (Err(err), _) => {
                    self.members
                        .record_error(*index, Some(at), DeviceFault::Read(&err));
                    Got::Bad(ErrorKind::Read)
                }
                (Ok(()), crate::device::IoBuf::Read(bytes)) => {
                    let verified = sums.verify(
                        item.slot,
                        ShardIndex(item.shard),
                        item.entry.generation,
                        item.start,
                        bytes,
                        sums.of(&item.entry.crcs, item.shard),
                    );
                    match verified {
                        Ok(()) => Got::Good,
                        #[cfg(feature = "testing")]
                        Err(_) if self.members.planted().skip_checksum_verification => Got::Good,
                        Err(bad) => {
                            let at = *offset + bad.offset as u64;
                            let corruption = Corruption {
                                device: self.members.get(*index).path(),
                                offset: at,
                                slot: item.slot.0,
                                shard: item.shard,
                                expected: bad.expected,
                                found: bad.found,
                            };
                            self.members.record_error(
                                *index,
                                Some(at),
                                DeviceFault::Checksum(&corruption),
                            );
                            Got::Bad(ErrorKind::Checksum)
                        }
                    }
                }
                (Ok(()), crate::device::IoBuf::Write(_) | crate::device::IoBuf::WriteV(_)) => {
                    Got::Bad(ErrorKind::Read)
                }
            };
        }
        got
    }

    /// Write every shard of every stripe in `stripes` (slot, shard bytes by shard index), in
    /// one batch, to the device in service and to a replacement being filled (rebuild.rs
    /// relies on it). Returns per stripe and shard whether the device in service took it. A
    /// failing replacement is abandoned; a failing device has the error recorded.
    pub(crate) fn write_batch(&self, stripes: &[(SlotId, Vec<&[u8]>)]) -> Vec<Vec<bool>> {
        // (stripe, shard, is the replacement, device, offset)
        let mut targets: Vec<(usize, usize, bool, SharedDevice, u64)> = Vec::new();
        for (i, (slot, shards)) in stripes.iter().enumerate() {
            for shard in 0..shards.len() {
                let (index, offset) = self.geometry.shard_location(*slot, ShardIndex(shard));
                let member = self.members.get(index);
                if let Some(replacement) = member.replacement() {
                    targets.push((i, shard, true, replacement.device.clone(), offset));
                }
                if let Some(device) = member.device() {
                    targets.push((i, shard, false, device, offset));
                }
            }
        }
        let mut ops: Vec<BatchOp<'_>> = targets
            .iter()
            .map(|(i, shard, _, device, offset)| {
                BatchOp::write(device.as_ref(), *offset, stripes[*i].1[*shard])
            })
            .collect();
        run_batch(&mut ops);
        let mut written: Vec<Vec<bool>> = stripes
            .iter()
            .map(|(_, shards)| vec![false; shards.len()])
            .collect();
        for (op, (i, shard, replacement, _, offset)) in ops.into_iter().zip(&targets) {
            let (index, _) = self
                .geometry
                .shard_location(stripes[*i].0, ShardIndex(*shard));
            match (op.result, replacement) {
                (Ok(()), false) => written[*i][*shard] = true,
                (Ok(()), true) => {}
                (Err(err), false) => {
                    self.members
                        .record_error(index, Some(*offset), DeviceFault::Write(&err));
                }
                (Err(err), true) => self
                    .members
                    .abandon_replacement(index, &format!("write failed: {err}")),
            }
        }
        written
    }

    /// Whether any member in service uses `O_DIRECT` (then buffers should be aligned).
    pub(crate) fn any_direct(&self) -> bool {
        self.members.data.iter().any(|m| {
            m.device().is_some_and(|d| {
                d.as_uring()
                    .is_some_and(crate::device::UringDevice::is_direct)
            })
        })
    }

    /// The distinct I/O backends of the members in service, e.g. `io_uring+O_DIRECT`.
    pub(crate) fn io_backends(&self) -> String {
        let mut names: Vec<&'static str> = self
            .members
            .data
            .iter()
            .filter_map(|m| m.device().map(|d| d.io_backend()))
            .collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    }
}
