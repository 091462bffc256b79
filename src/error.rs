//! The crate's error type. A variant about a device names it, and the byte offset where there
//! is one (`None` where there is none: a flush has no offset); corruption (a checksum that did
//! not match, [`Corruption`]) is kept apart from I/O failure; a runtime state that refuses a
//! request (busy, closing) is a variant of its own, not a configuration error. This module
//! never logs and never decides retries.

use std::path::PathBuf;

/// Result alias for the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, with enough context to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call on a member device failed and redundancy could not hide it.
    #[error("device {device}: I/O error{}: {source}", at_offset(*.offset))]
    Io {
        /// The device's name (its path, or `mem3` for an in-memory device).
        device: String,
        /// Byte offset on that device (`None` for a flush, which has none).
        offset: Option<u64>,
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
    /// A member or spare named in a request is not in this pool.
    #[error("no {role} {name:?} in this pool (give its last known path, its index or its UUID)")]
    NotInPool {
        /// What the request named.
        name: String,
        /// `data member` or `usable spare`.
        role: &'static str,
    },
    /// A member is not in the state the request needs (already online, offline on purpose,
    /// not the member it is said to be).
    #[error("{device} is {reason}")]
    WrongState {
        /// The member or device.
        device: String,
        /// Its state, and why the request does not apply to it: `already online`.
        reason: String,
    },
    /// Another operation holds what this one needs (a scrub is running, a position is being
    /// replaced). Retry when it is done.
    #[error("busy: {0}")]
    Busy(String),

    /// A recovery point that does not exist, or a name that cannot name a new one (taken,
    /// or not of the allowed characters and length), or no key left for one.
    #[error("recovery point {name:?}: {reason}")]
    RecoveryPoint {
        /// The name asked for.
        name: String,
        /// Why the request does not apply.
        reason: String,
    },

    /// A receive began and did not finish: until it is finished (`receive` with the same
    /// stream) or aborted (`receive --abort`), the volume reads as it was before it, and
    /// nothing else may change it.
    #[error(
        "{operation}: the receive of recovery point {name:?} is unfinished (the volume reads \
         as it was before it); finish it by receiving the same stream again, or abort it \
         (`receive --abort`)"
    )]
    ReceiveUnfinished {
        /// What was refused.
        operation: String,
        /// The recovery point being received.
        name: String,
    },

    /// A send stream that is not whole and correct: refused before anything is written.
    #[error("stream, at byte {at}: {reason}")]
    Stream {
        /// Where in the stream, in bytes from its start.
        at: u64,
        /// What is wrong.
        reason: String,
    },

    /// An operation this build does not run on this pool's format yet.
    #[error(
        "{operation} is not supported on a format-version-{version} pool by this build: {reason}"
    )]
    Unsupported {
        /// What was asked.
        operation: String,
        /// The pool's format version.
        version: u32,
        /// Why, and what to do instead.
        reason: String,
    },
    /// The pool is closing: no new work starts.
    #[error("the pool is closing")]
    Closing,
    /// A worker thread of the pool (scrub, rebuild) panicked; its work was not finished.
    #[error("the {thread} thread panicked; its work was not finished")]
    ThreadPanicked {
        /// Which thread.
        thread: &'static str,
    },
    /// No free slot to write into, after commits released what they could.
    #[error("no free slot: {0}")]
    NoFreeSlot(String),
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
        stripe: crate::types::StripeId,
        /// First volume byte of that stripe.
        volume_offset: u64,
        /// Shards that verified.
        good: usize,
        /// Shards needed.
        needed: usize,
        /// Devices whose shard was missing, unreadable or corrupt.
        lost_devices: Vec<String>,
    },
    /// A 4 KiB block of a format-version-4 volume whose copy and reconstruction sources are
    /// too few that verify: the block cannot be returned (never other bytes in its place).
    #[error("unrecoverable block at volume offset {volume_offset} (row {row} of slot {slot}): {good} good shards, {needed} needed; lost or corrupt on: {}", .lost_devices.join(", "))]
    UnrecoverableBlock {
        /// First volume byte of the block.
        volume_offset: u64,
        /// Data slot of its row.
        slot: u64,
        /// Its row in the slot.
        row: u16,
        /// Shard-blocks of the row that verified.
        good: usize,
        /// Shard-blocks needed.
        needed: usize,
        /// Devices (with byte offset) whose shard-block was missing, unreadable or corrupt.
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
        /// Members recorded in service (online or degraded) but not found.
        missing: Vec<String>,
    },
    /// The pool was opened read-only (to look, never to change a byte) and was asked to change.
    #[error("the pool is open read-only: {operation} needs a read-write open")]
    ReadOnly {
        /// What was asked.
        operation: &'static str,
    },
    /// Pool metadata (superblocks or stripe map) is unusable, or contradicts itself.
    #[error("corrupt metadata{}{}: {reason}", on_device(.device.as_deref()), at_offset(*.offset))]
    CorruptMetadata {
        /// The device the metadata was read from, where one is to blame.
        device: Option<String>,
        /// Byte offset of that metadata on the device, where known.
        offset: Option<u64>,
        /// What is wrong.
        reason: String,
    },
    /// A metadata page (format version 4) failed verification on every copy: exactly the keys
    /// it covers are unreadable; nothing older is ever returned in its place.
    #[error("metadata page {mpn} (tree {tree}, level {level}) is lost on every copy ({copies}): keys {first_key}..{} cannot be read", .first_key.saturating_add(*.keys))]
    MetadataLost {
        /// Tree id (0 = the map).
        tree: u8,
        /// Level of the page (1 = leaf).
        level: u8,
        /// First key the page covers.
        first_key: u64,
        /// Keys it covers.
        keys: u64,
        /// Its metadata page number.
        mpn: u64,
        /// What each copy's device said, in copy order.
        copies: String,
    },
    /// A copied range read back from the pool copied into differs from what the source
    /// returned (`Pool::copy_from`).
    #[error("the copy of volume bytes {offset}..{} reads back differently from the source", .offset + .length)]
    CopyMismatch {
        /// Volume offset of the range.
        offset: u64,
        /// Its length.
        length: u64,
    },
    /// Two devices hold two branches of the pool's history: a forced open went on without one
    /// that could have been current and it went on too (docs/FORMAT.md, "Forks"), or both
    /// claim the same superblock generation with different member states. Either may hold
    /// flushed writes the other never saw; neither can be trusted blindly.
    #[error("split brain: {device} (superblock generation {generation}) and {other} (generation {other_generation}) hold two branches of the pool's history (a forced open went on without one, and it went on too, or both claim one generation with different members): each may hold flushed writes the other never saw, and nothing was changed. Keep one branch: copy out what you need from the other with a read-only open, wipe its devices (`stripestore labelclear DEVICE`), then open the branch you keep (--force-degraded, or OpenOptions::force)")]
    SplitBrain {
        /// One of the members in conflict.
        device: String,
        /// Its superblock generation.
        generation: u64,
        /// The other.
        other: String,
        /// The other's superblock generation.
        other_generation: u64,
    },
}

impl Error {
    /// Corrupt metadata that no single device is to blame for (it contradicts itself, or every
    /// copy is bad).
    #[must_use]
    pub fn corrupt_metadata(reason: impl Into<String>) -> Self {
        Self::CorruptMetadata {
            device: None,
            offset: None,
            reason: reason.into(),
        }
    }
}

/// A checksum that did not match: which device, where, and what was expected and found. Kept
/// apart from I/O errors: the device answered, but with the wrong bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device {device}: checksum mismatch at byte offset {offset} (slot {slot}, shard {shard}): expected {expected:#010x}, found {found:#010x}")]
pub struct Corruption {
    /// The device.
    pub device: String,
    /// Byte offset on the device of the checksum block that failed.
    pub offset: u64,
    /// The physical stripe slot.
    pub slot: u64,
    /// The shard of the stripe.
    pub shard: usize,
    /// The crc32c the map records.
    pub expected: u32,
    /// The crc32c of what the device returned.
    pub found: u32,
}

fn at_offset(offset: Option<u64>) -> String {
    offset.map_or_else(String::new, |offset| format!(" at byte offset {offset}"))
}

fn on_device(device: Option<&str>) -> String {
    device.map_or_else(String::new, |device| format!(" on {device}"))
}
