//! Test support shared by `tests/`, `benches/`, the fuzz targets and the `simulate` command
//! (feature `testing`): a reference model of the volume, in-memory device sets, seeds that are
//! printed on failure so any run can be replayed, and the bugs a test may plant in one pool.
//!
//! The pool reads only [`PlantedBugs`], and only in a build with the feature.

mod meta;
pub mod nbd;
pub use crate::pool::PlantedBugs;
pub use meta::MetaWriter;

use crate::device::{MemDevice, SharedDevice};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::sync::Arc;

/// The reference model: a plain byte vector, the volume as it should read.
#[derive(Debug, Clone)]
pub struct Model {
    bytes: Vec<u8>,
}

impl Model {
    /// A zeroed volume of `size` bytes.
    #[must_use]
    pub fn new(size: u64) -> Self {
        Self {
            bytes: vec![0; usize::try_from(size).unwrap_or(0)],
        }
    }
    /// Apply a write.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let start = usize::try_from(offset).unwrap_or(0);
        self.bytes[start..start + data.len()].copy_from_slice(data);
    }
    /// Expected content of a range.
    #[must_use]
    pub fn read(&self, offset: u64, len: usize) -> &[u8] {
        let start = usize::try_from(offset).unwrap_or(0);
        &self.bytes[start..start + len]
    }
    /// Size.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    /// True for a zero-sized model.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// For crash tests: every version each 4 KiB block of the volume may legitimately hold.
/// After a flush a block has exactly one allowed version; each unflushed write adds one.
#[derive(Debug, Clone)]
pub struct CrashModel {
    /// The volume as the latest writes left it.
    pub latest: Model,
    allowed: HashMap<u64, Vec<u64>>,
}

/// Block size the crash model reasons in.
pub const CRASH_BLOCK_BYTES: u64 = 4096;

fn hash_block(bytes: &[u8]) -> u64 {
    // Two crc32c with different seeds: a 64-bit fingerprint, plenty for test comparisons.
    let low = crc32c::crc32c(bytes);
    let high = crc32c::crc32c_append(0x9E37_79B9, bytes);
    (u64::from(high) << 32) | u64::from(low)
}

impl CrashModel {
    /// A zeroed volume.
    #[must_use]
    pub fn new(size: u64) -> Self {
        Self {
            latest: Model::new(size),
            allowed: HashMap::new(),
        }
    }
    /// Record a write (not yet flushed).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let first = offset / CRASH_BLOCK_BYTES;
        let last = (offset + data.len() as u64 - 1) / CRASH_BLOCK_BYTES;
        for block in first..=last {
            let before = hash_block(
                self.latest
                    .read(block * CRASH_BLOCK_BYTES, CRASH_BLOCK_BYTES as usize),
            );
            self.allowed.entry(block).or_insert_with(|| vec![before]);
        }
        self.latest.write(offset, data);
        for block in first..=last {
            let after = hash_block(
                self.latest
                    .read(block * CRASH_BLOCK_BYTES, CRASH_BLOCK_BYTES as usize),
            );
            if let Some(versions) = self.allowed.get_mut(&block) {
                versions.push(after);
            }
        }
    }
    /// A flush returned: only the latest version of every block is allowed now.
    pub fn flushed(&mut self) {
        self.allowed.clear();
    }
    /// Check what a pool read back for the whole volume after a crash. Returns the first
    /// offending block. On success, adopts `actual` as the new state (all flushed).
    ///
    /// # Errors
    /// A description of the first block that holds a version never written there.
    pub fn check_after_crash(&mut self, actual: &[u8]) -> Result<(), String> {
        for (index, block) in actual.chunks(CRASH_BLOCK_BYTES as usize).enumerate() {
            let block_id = index as u64;
            let found = hash_block(block);
            let ok = match self.allowed.get(&block_id) {
                Some(versions) => versions.contains(&found),
                None => block == self.latest.read(block_id * CRASH_BLOCK_BYTES, block.len()),
            };
            if !ok {
                return Err(format!(
                    "block {block_id} (volume offset {}) holds content that was never written there{}",
                    block_id * CRASH_BLOCK_BYTES,
                    if self.allowed.contains_key(&block_id) { " (it had unflushed writes)" } else { " (it was flushed)" }
                ));
            }
        }
        self.latest = Model {
            bytes: actual.to_vec(),
        };
        self.allowed.clear();
        Ok(())
    }
}

/// Let the calling thread create format-version-3 pools and open them for writing (`true`),
/// or refuse both again (`false`). A build refuses them (docs/FORMAT.md, "Earlier versions");
/// the tests of version 3's own engine, the simulation of it and the tests that make
/// version-3 pools to copy from switch it on for their thread. Other threads are not affected.
pub fn allow_format_3_writes(on: bool) {
    crate::pool::allow_stripe_map_writes(on);
}

/// Format-version-4 parameters near the test minimums (docs/FORMAT.md V4.2): segments of 4
/// slots, rings of 4 uberblocks, 64 KiB log halves, a depth of 2, records of 4 KiB, so a pool
/// on 16 MiB devices wraps its rings and log halves and reuses segments.
#[must_use]
pub fn small_v4() -> crate::pool::V4Options {
    crate::pool::V4Options {
        segment_slots: 4,
        uberblock_slots: 4,
        log_half_bytes: 64 << 10,
        min_depth: 2,
        sync_pages_max: None,
        record_max: Some(4096),
        sectored_leaves: true,
    }
}

/// `count` in-memory devices of `size` bytes named `mem0`, `mem1`, ...
#[must_use]
pub fn mem_devices(count: usize, size: u64) -> Vec<Arc<MemDevice>> {
    (0..count)
        .map(|i| Arc::new(MemDevice::new(format!("mem{i}"), size)))
        .collect()
}

/// Upcast a list of in-memory devices to shared trait objects.
#[must_use]
pub fn shared(devices: &[Arc<MemDevice>]) -> Vec<SharedDevice> {
    devices
        .iter()
        .map(|d| Arc::clone(d) as SharedDevice)
        .collect()
}

/// The seed for a randomized test: `STRIPESTORE_SEED` if set, else `default`.
#[must_use]
pub fn seed(default: u64) -> u64 {
    std::env::var("STRIPESTORE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Prints how to replay a seeded test if the test panics while this guard lives.
#[derive(Debug)]
pub struct SeedGuard {
    /// The seed.
    pub seed: u64,
    /// Test name.
    pub name: &'static str,
}

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{} failed; reproduce with STRIPESTORE_SEED={} cargo test {}",
                self.name, self.seed, self.name
            );
        }
    }
}

/// Run `work` with the pool's device-parallel paths (commits, superblock writes, multi-stripe
/// writes, rebuild batches) issued one request after another in a fixed order on one worker
/// thread, as the simulation does. For tests that cut power at an exact device operation
/// ([`crate::device::PowerCut`]): without it, which device's request is the k-th depends on
/// thread scheduling, and a failing window could not be replayed.
///
/// A panic in `work` is passed on. If the worker thread cannot be started, `work` runs on the
/// calling thread with only the device-parallel paths in order (a warning is logged).
pub fn deterministic<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
        Ok(threads) => threads.install(|| crate::pool::run_sequentially(work)),
        Err(err) => {
            tracing::warn!(%err, "no worker thread for a deterministic run; multi-stripe writes may interleave");
            crate::pool::run_sequentially(work)
        }
    }
}

/// A seeded generator.
#[must_use]
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `len` random bytes.
pub fn random_bytes(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rng.fill(&mut bytes[..]);
    bytes
}
