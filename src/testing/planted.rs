//! Test-only switches that disable one protection, so the simulation can prove it notices
//! (`tests/simulation_planted.rs`). Each is one relaxed atomic load on the hot path, false in
//! every production run: nothing in the crate ever sets it.

use std::sync::atomic::{AtomicBool, Ordering};

static SKIP_CHECKSUM_VERIFICATION: AtomicBool = AtomicBool::new(false);

/// Plant a bug: shard reads stop verifying checksums (process-wide). For tests only.
#[doc(hidden)]
pub fn plant_skip_checksum_verification(on: bool) {
    SKIP_CHECKSUM_VERIFICATION.store(on, Ordering::Relaxed);
}

/// True while the planted bug is active (read by the pool's shard read path).
#[doc(hidden)]
#[inline]
#[must_use]
pub fn checksum_verification_skipped() -> bool {
    SKIP_CHECKSUM_VERIFICATION.load(Ordering::Relaxed)
}

static SKIP_COMMIT_DATA_FLUSH: AtomicBool = AtomicBool::new(false);

/// Plant a bug: a commit writes the map without first flushing the stripes it names
/// (process-wide). For tests only.
#[doc(hidden)]
pub fn plant_skip_commit_data_flush(on: bool) {
    SKIP_COMMIT_DATA_FLUSH.store(on, Ordering::Relaxed);
}

/// True while that planted bug is active (read by the pool's commit path).
#[doc(hidden)]
#[inline]
#[must_use]
pub fn commit_data_flush_skipped() -> bool {
    SKIP_COMMIT_DATA_FLUSH.load(Ordering::Relaxed)
}

static FAULT_ON_DATA_ERRORS: AtomicBool = AtomicBool::new(false);

/// Plant a bug: read and checksum errors past the threshold fault the device (the policy before
/// issue 11) instead of marking it degraded (process-wide). For tests only.
#[doc(hidden)]
pub fn plant_fault_on_data_errors(on: bool) {
    FAULT_ON_DATA_ERRORS.store(on, Ordering::Relaxed);
}

/// True while that planted bug is active (read by the fault policy, `Members::record_error`).
#[doc(hidden)]
#[inline]
#[must_use]
pub fn data_errors_fault() -> bool {
    FAULT_ON_DATA_ERRORS.load(Ordering::Relaxed)
}
