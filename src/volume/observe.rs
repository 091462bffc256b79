//! What a volume tells its owner about its members: every failed read, every shard-block that
//! failed its crc and every failed write, with the member and byte offset, so the owner's
//! fault policy (error thresholds, degraded and faulted members) sees what the volume saw.
//!
//! Owns: the shape of those reports. Does not decide anything: what an error means for a
//! member is the owner's (the pool's `Members::record_error`).

use crate::device::DeviceError;
use std::sync::Arc;

/// What went wrong on a member.
#[derive(Debug)]
pub enum ProblemKind<'a> {
    /// A read failed.
    Read(&'a DeviceError),
    /// A write failed.
    Write(&'a DeviceError),
    /// A shard-block was read and failed its crc.
    Checksum {
        /// The crc its pointer or its row records.
        expected: u32,
        /// The crc of what the member returned.
        found: u32,
    },
    /// A bad shard-block was rewritten in place with its verified bytes (by a read or a
    /// scrub): not a problem but its repair, which the owner counts as one.
    Healed,
}

/// One problem of one member.
#[derive(Debug)]
pub struct MemberProblem<'a> {
    /// Position of the member.
    pub member: usize,
    /// Byte offset on the member of the request or shard-block.
    pub offset: u64,
    /// The slot it belongs to.
    pub slot: u64,
    /// The shard of the slot.
    pub shard: usize,
    /// What went wrong.
    pub kind: ProblemKind<'a>,
}

/// Hears of every member problem (called on the thread that met it, without volume locks
/// beyond the caller's).
#[derive(Clone)]
pub struct Observer(pub Arc<dyn Fn(&MemberProblem<'_>) + Send + Sync>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// Names a member by its position (the owner's device path), for the errors and reports
/// that list members: a user knows `/dev/sdc`, not "member 2".
#[derive(Clone)]
pub struct MemberNames(pub Arc<dyn Fn(usize) -> String + Send + Sync>);

impl std::fmt::Debug for MemberNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemberNames")
    }
}

/// Says whether a member is still in service (the owner's fault policy may take one out while
/// rows are on it): a landing counts a piece written on a member taken out of service since as
/// not written, so a row is noted only if it is readable without it (FORMAT.md V4.6, "Several
/// groups on the devices").
#[derive(Clone)]
pub struct InService(pub Arc<dyn Fn(usize) -> bool + Send + Sync>);

impl std::fmt::Debug for InService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InService")
    }
}
