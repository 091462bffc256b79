//! What scrub and rebuild share, below both of them and below the pool: the narrow interface
//! through which they reach a stripe ([`StripeAccess`]), the vocabulary of that interface (a
//! live stripe snapshot, what an examination found), coalescing chunk offsets into runs, and
//! the pacing of a sequence of steps ([`Pacer`]).
//!
//! Owns: nothing stateful; definitions only. Must not touch: the pool (no `crate::pool`
//! import: the pool implements these traits, and `scrub` and `rebuild` drive their work through
//! them), the map, commits, members. Dependencies point one way:
//! `pool` → `scrub`, `rebuild` → `maintenance` → `types`, `error`, `format`, `geometry`,
//! `codec`, `device`.

use crate::codec::Codec;
use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::format::MapEntry;
use crate::geometry::Geometry;
use crate::types::{DeviceIndex, ShardIndex, SlotId, StripeId};
use std::time::{Duration, Instant};

/// How often scrub and rebuild progress is persisted by default.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// How long background work yields to foreground I/O each time.
pub(crate) const YIELD: Duration = Duration::from_millis(2);

/// The part of a pool that scrub and rebuild both use: geometry and codec, member state, the
/// member devices to read from, one stripe under its lock, the careful examination of a
/// stripe, checksum verification and commits. Implemented by the pool.
pub(crate) trait StripeAccess: Sync {
    /// The pool's geometry.
    fn geometry(&self) -> &Geometry;
    /// The pool's codec (consistency checks, reconstruction).
    fn codec(&self) -> &Codec;
    /// Whether data member `device` is in service.
    fn is_online(&self, device: DeviceIndex) -> bool;
    /// Last known path of data member `device` (for reports and logs).
    fn device_path(&self, device: DeviceIndex) -> String;
    /// The device of data member `device` to read from, if it is in service.
    fn member_device(&self, device: DeviceIndex) -> Option<SharedDevice>;
    /// Whether foreground I/O ran very recently (background work then yields).
    fn foreground_recent(&self) -> bool;
    /// Make every write so far durable (a pool commit).
    ///
    /// # Errors
    /// As the pool's commit.
    fn commit(&self) -> Result<()>;
    /// Run `work` with `stripe`'s lock held, given its current map entry.
    fn with_stripe_locked<R>(&self, stripe: StripeId, work: impl FnOnce(MapEntry) -> R) -> R;
    /// The careful path reads use: fetch every shard of the stripe in `slot`, reconstruct what
    /// is missing or bad, verify it, and (if `heal`) rewrite damaged shards in place; each
    /// damaged shard is counted against its device once. Call it under the stripe's lock.
    fn examine(&self, stripe: StripeId, slot: SlotId, entry: &MapEntry, heal: bool) -> Examined;
    /// Whether a whole `shard` of the stripe in `slot` matches the checksums of `entry`.
    fn shard_verifies(
        &self,
        slot: SlotId,
        entry: &MapEntry,
        shard: ShardIndex,
        bytes: &[u8],
    ) -> bool;
}

/// A stripe as the map held it in a slot at one moment.
#[derive(Debug, Clone)]
pub(crate) struct LiveStripe {
    /// The logical stripe.
    pub(crate) stripe: StripeId,
    /// The physical slot holding it.
    pub(crate) slot: SlotId,
    /// Its map entry (generation, checksums).
    pub(crate) entry: MapEntry,
}

impl LiveStripe {
    /// Whether `entry` (the stripe's entry now) still names this slot and generation.
    pub(crate) fn unchanged(&self, entry: &MapEntry) -> bool {
        entry.slot == Some(self.slot) && entry.generation == self.entry.generation
    }
}

/// Why a shard failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DamageKind {
    /// I/O error on read.
    Read,
    /// I/O error on write.
    Write,
    /// Content did not verify.
    Checksum,
}

/// What the careful path found for one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShardFinding {
    /// Read and verified.
    Good,
    /// Its device is out of service.
    Missing,
    /// Read error or checksum mismatch (counted against the device).
    Damaged(DamageKind),
}

/// The result of [`StripeAccess::examine`].
pub(crate) struct Examined {
    /// Every shard's content; all verified when `failure` is `None`.
    pub(crate) shards: Vec<Vec<u8>>,
    /// Per shard, what the fetch found.
    pub(crate) findings: Vec<ShardFinding>,
    /// Per shard, whether it was rewritten on its device.
    pub(crate) healed: Vec<bool>,
    /// Why the stripe could not be recovered (`None`: every shard is known and verified).
    pub(crate) failure: Option<Error>,
}

impl Examined {
    /// Whether every shard is now known and verified.
    pub(crate) fn recovered(&self) -> bool {
        self.failure.is_none()
    }
}

/// Split sorted chunk offsets into runs of adjacent chunks.
pub(crate) fn runs(offsets: &[u64], chunk_bytes: u64) -> Vec<&[u64]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=offsets.len() {
        if i == offsets.len() || offsets[i] != offsets[i - 1] + chunk_bytes {
            if start < i {
                out.push(&offsets[start..i]);
            }
            start = i;
        }
    }
    out
}

/// Paces a sequence of background steps (rebuild, scrub): rate limit, foreground yield,
/// checkpoint cadence.
#[derive(Debug)]
pub struct Pacer {
    started: Instant,
    bytes: u64,
    last_checkpoint: Instant,
}

impl Default for Pacer {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            bytes: 0,
            last_checkpoint: Instant::now(),
        }
    }
}

impl Pacer {
    /// Whether the next step should checkpoint (about once a second).
    pub fn checkpoint_due(&mut self) -> bool {
        self.checkpoint_due_every(CHECKPOINT_INTERVAL)
    }
    /// Whether the next step should checkpoint, at most every `interval`.
    pub fn checkpoint_due_every(&mut self, interval: Duration) -> bool {
        if self.last_checkpoint.elapsed() >= interval {
            self.last_checkpoint = Instant::now();
            true
        } else {
            false
        }
    }
    /// How long to wait after a step that moved `bytes`, at `rate` bytes per second (`None`:
    /// unlimited), yielding if foreground I/O ran recently.
    pub(crate) fn after_step(
        &mut self,
        rate: Option<u64>,
        foreground_recent: bool,
        bytes: u64,
    ) -> Duration {
        self.bytes += bytes;
        let mut wait = Duration::ZERO;
        if let Some(rate) = rate {
            #[allow(clippy::cast_precision_loss)]
            let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            wait = due.saturating_sub(self.started.elapsed());
        }
        if foreground_recent {
            wait = wait.max(YIELD);
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_at_gaps() {
        let offsets = [0, 4096, 8192, 16384, 20480, 40960];
        let runs = runs(&offsets, 4096);
        assert_eq!(
            runs,
            vec![&[0, 4096, 8192][..], &[16384, 20480][..], &[40960][..]]
        );
        assert!(super::runs(&[], 4096).is_empty());
    }
}
