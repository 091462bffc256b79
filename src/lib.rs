//! # stripestore
//!
//! A storage redundancy layer: one logical volume striped across several devices with
//! mirroring (`mirror:N`, `raid10:N`) or Reed-Solomon erasure coding (`rs:K+M`).
//!
//! * Every checksum block (4 KiB by default) of every chunk has a crc32c that lives in the pool's
//!   **stripe map**, apart from the data, and is bound to the chunk's physical slot, shard index,
//!   block index and write generation. Every read verifies the blocks it returns; a failure is
//!   reconstructed from redundancy, returned correct, and healed in place.
//! * Writes are **copy-on-write at stripe granularity**: a stripe is always written whole into a
//!   free physical slot, and the map is switched to it only by a commit (`flush`). This removes
//!   the RAID write hole for every layout. See `docs/FORMAT.md` for the on-disk format and why.
//!
//! Layering (dependencies point down only):
//! front ends (`nbd`, `endpoint`: HTTP metrics, status and control; `report`: the status text;
//! they use the public `Pool` API only) → `pool` (public API, I/O, map, commits, members) → `scrub`, `rebuild` (their
//! work, as step machines over the narrow interfaces `pool` implements) → `maintenance` (the
//! shared interface and pacing), `parallel` → `format`, `codec`, `geometry`, `device`, `nbd_wire`
//! (the NBD protocol and client, used by `nbd` and by the NBD device backend) →
//! `types`, `error`. No module depends on one above it.
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod codec;
pub mod device;
pub mod endpoint;
pub mod error;
pub mod format;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod geometry;
pub(crate) mod maintenance;
pub mod meta;
pub mod nbd;
pub mod nbd_wire;
pub(crate) mod parallel;
pub mod pool;
pub mod rebuild;
pub mod report;
pub mod scrub;
#[cfg(feature = "testing")]
pub mod sim;
#[cfg(feature = "testing")]
pub mod testing;
pub mod types;
pub mod volume;

pub use error::{Corruption, Error, Result};
pub use geometry::Layout;
pub use pool::{
    CreateOptions, OpenOptions, Pool, PoolStatus, ScrubEnd, ScrubOptions, ScrubProgress,
    ScrubReport,
};
