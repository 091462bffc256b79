//! A whole-pool verification pass: read every shard of every written stripe (data, parity and
//! every mirror copy, which normal reads do not all touch), heal what fails. It goes through
//! the same verified recovery path as reads, stripe by stripe under the stripe lock, so it
//! runs safely beside foreground I/O.

use super::PoolInner;
use crate::types::{DeviceIndex, ShardIndex};
use serde::Serialize;

/// What a scrub found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScrubReport {
    /// Written stripes examined.
    pub stripes_checked: u64,
    /// Shards that failed verification (and were healed unless listed below).
    pub bad_shards: u64,
    /// Stripes that could not be reconstructed (more damage than redundancy).
    pub unrecoverable_stripes: Vec<u64>,
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

impl PoolInner {
    pub(crate) fn scrub(&self) -> ScrubReport {
        let stripes: Vec<u64> = self.map.lock().map.written_stripes().collect();
        let mut report = ScrubReport::default();
        for stripe in stripes {
            let _guard = self.stripe_lock(stripe).lock();
            let entry = self.map.lock().map.get(stripe);
            let Some(slot) = entry.slot else { continue };
            report.stripes_checked += 1;
            match self.recover_stripe(stripe, slot, &entry, Vec::new()) {
                Ok((_, bad)) => report.bad_shards += bad as u64,
                Err(err) => {
                    tracing::error!(%err, "scrub: stripe unrecoverable");
                    report.unrecoverable_stripes.push(stripe);
                }
            }
        }
        report
    }

    pub(crate) fn shard_locations(&self, stripe: u64) -> Vec<ShardLocation> {
        if stripe >= self.geometry.stripes {
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
