//! The crate's error type. Every variant says which device, which offset and what happened;
//! corruption is kept apart from I/O failure. This module never logs and never decides retries.

use std::path::PathBuf;

/// Result alias for the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, with enough context to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call on a member device failed and redundancy could not hide it.
    #[error("device {device}: I/O error at byte offset {offset}: {source}")]
    Io {
        /// The device's name (its path, or `mem3` for an in-memory device).
        device: String,
        /// Byte offset on that device.
        offset: u64,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A path could not be opened or created.
    #[error("cannot open {}: {source}", .path.display())]
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The layout string could not be understood.
    #[error("invalid layout {input:?}: {reason} (expected mirror:N, raid10:N or rs:K+M)")]
    InvalidLayout {
        /// What the user gave.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Options that cannot work together (device count, sizes, chunk size ...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// `create` found a stripestore superblock on a device and `force` was not set.
    #[error("{device} already holds a superblock of pool {pool}; refusing to overwrite it without --force")]
    DeviceInUse {
        /// The device.
        device: String,
        /// The pool UUID found there.
        pool: String,
    },
    /// A device about to be labelled carries a known signature (a filesystem, swap, an
    /// encrypted volume, a volume manager's label, a partition table) and force was not given.
    #[error("{device} holds {found} (magic at byte {offset}); use --force to overwrite")]
    ForeignSignature {
        /// The device.
        device: String,
        /// What was found: `an ext4 filesystem`.
        found: String,
        /// Byte offset of the magic that identified it.
        offset: u64,
    },
    /// A device given as a new member, spare or returning member already serves this pool in
    /// another role; force cannot override this (it would destroy the pool's own data).
    #[error("{device} is already {role} of this pool")]
    AlreadyMember {
        /// The device.
        device: String,
        /// What it is in this pool: `a member (data position 1)`, `a spare`.
        role: String,
    },
    /// No valid superblock copy on a device given to `open`.
    #[error("{device} is not a stripestore device: {reason}")]
    NotAMember {
        /// The device.
        device: String,
        /// What was found instead.
        reason: String,
    },
    /// Devices given to `open` belong to different pools.
    #[error("{device} belongs to pool {found}, but {other} belongs to pool {expected}; refusing to mix pools")]
    MixedPools {
        /// The odd device out.
        device: String,
        /// Its pool.
        found: String,
        /// A device of the pool being opened.
        other: String,
        /// The pool being opened.
        expected: String,
    },
    /// A device is too small for the layout and chunk size.
    #[error("{device} is too small: {size} bytes, need at least {needed}")]
    DeviceTooSmall {
        /// The device.
        device: String,
        /// Its size.
        size: u64,
        /// What is needed.
        needed: u64,
    },
    /// A request reaches outside the volume.
    #[error("request out of range: offset {offset} + length {length} exceeds the volume size {volume_bytes}")]
    OutOfRange {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        length: u64,
        /// Volume size.
        volume_bytes: u64,
    },
    /// Too many shards of a stripe are lost or corrupt: the data cannot be returned.
    #[error("unrecoverable data in stripe {stripe} (volume offset {volume_offset}): {good} good shards, {needed} needed; lost or corrupt on: {}", .lost_devices.join(", "))]
    Unrecoverable {
        /// Logical stripe.
        stripe: u64,
        /// First volume byte of that stripe.
        volume_offset: u64,
        /// Shards that verified.
        good: usize,
        /// Shards needed.
        needed: usize,
        /// Devices whose shard was missing, unreadable or corrupt.
        lost_devices: Vec<String>,
    },
    /// More devices are faulted than the layout tolerates; writes and commits stop.
    #[error("pool unavailable: layout {layout} tolerates {tolerated} lost devices, but these are lost: {}", .lost_devices.join(", "))]
    PoolUnavailable {
        /// The layout.
        layout: String,
        /// How many device losses it tolerates.
        tolerated: usize,
        /// The lost devices.
        lost_devices: Vec<String>,
    },
    /// Members are missing, and the ones present might all be outdated: a missing member may
    /// have been written after them. Opening anyway could roll back flushed writes.
    #[error("only {present} of {total} data members are present and they cannot prove they hold the newest data: a missing member ({}) may have been written after them; find the missing devices, or open with --force-degraded (CLI) or OpenOptions::force (library) to accept the risk", .missing.join(", "))]
    CannotProveCurrent {
        /// Data members present.
        present: usize,
        /// Data members in the layout.
        total: usize,
        /// Members recorded as online but not found.
        missing: Vec<String>,
    },
    /// The pool was opened read-only (to look, never to change a byte) and was asked to change.
    #[error("the pool is open read-only: {operation} needs a read-write open")]
    ReadOnly {
        /// What was asked.
        operation: &'static str,
    },
    /// Pool metadata (superblocks or stripe map) is unusable on every device.
    #[error("corrupt metadata: {0}")]
    CorruptMetadata(String),
}
