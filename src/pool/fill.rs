//! The fill device of a format-version-4 rebuild (docs/FORMAT.md V4.13, "Stage 2"): what the
//! volume is given at a position whose replacement is being filled, so that every row, page,
//! log record and uberblock written while the rebuild runs reaches the replacement too.
//!
//! Owns: fanning a write or flush out to the member (when it is still in service) and the
//! replacement, and keeping the replacement's failures away from the request: a failure there
//! is recorded on the replacement (`Replacement::fill_failed`) and the rebuild abandons it. The
//! request's result is the member's.
//!
//! Must not touch: membership and superblocks (the rebuild in `rows_rebuild.rs` decides), and
//! reads of the replacement: it is never a source before it is swapped in. With no member, a
//! read, and a write (after it reached the replacement), fail with [`NOT_A_MEMBER`], which
//! the fault policy does not count: a write must never count as landed on a copy no read
//! can reach.

use super::Replacement;
use crate::device::{Device, DeviceError, SharedDevice};
use std::sync::Arc;

/// What a read or write of a position without a member in service says while its
/// replacement is filled (the map then reads another copy of the page; a write is not
/// counted as landed there).
pub(crate) const NOT_A_MEMBER: &str =
    "the position's replacement is being rebuilt: not a member yet";

/// Whether `error` is a fill device's refusal at a position with no member in service (not a
/// device's failure: the fault policy counts nothing for it).
pub(crate) fn is_refusal(error: &DeviceError) -> bool {
    matches!(error, DeviceError::Io(e) if e.to_string().ends_with(NOT_A_MEMBER))
}

/// A position's member (if in service) and its replacement, written together.
#[derive(Debug)]
pub(crate) struct FillDevice {
    member: Option<SharedDevice>,
    replacement: Arc<Replacement>,
}

impl FillDevice {
    pub(crate) fn shared(
        member: Option<SharedDevice>,
        replacement: Arc<Replacement>,
    ) -> SharedDevice {
        Arc::new(Self {
            member,
            replacement,
        })
    }

    /// Run `request` on the replacement unless it already failed; record a failure.
    fn on_replacement(
        &self,
        what: impl FnOnce() -> String,
        request: impl FnOnce(&SharedDevice) -> Result<(), DeviceError>,
    ) {
        if self.replacement.fill_failed.lock().is_some() {
            return;
        }
        if let Err(e) = request(&self.replacement.device) {
            let what = what();
            tracing::warn!(device = %self.replacement.identity.path, %e, what, "the replacement failed a write; its rebuild is abandoned");
            self.replacement
                .fill_failed
                .lock()
                .get_or_insert_with(|| format!("{what}: {e}"));
        }
    }

    fn not_a_member(&self) -> DeviceError {
        DeviceError::Io(std::io::Error::other(format!(
            "{}: {NOT_A_MEMBER}",
            self.replacement.identity.path
        )))
    }
}

impl Device for FillDevice {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        match &self.member {
            Some(member) => member.read_at(offset, buf),
            None => Err(self.not_a_member()),
        }
    }

    fn read_at_within(
        &self,
        offset: u64,
        buf: &mut [u8],
        within: std::time::Duration,
    ) -> Result<crate::device::ReadWithin, DeviceError> {
        match &self.member {
            Some(member) => member.read_at_within(offset, buf, within),
            None => Err(self.not_a_member()),
        }
    }

    fn reads_within(&self) -> bool {
        self.member.as_ref().is_some_and(|m| m.reads_within())
    }

    fn wants_aligned_memory(&self) -> bool {
        self.member
            .as_ref()
            .is_some_and(|m| m.wants_aligned_memory())
    }

    fn read_p99(&self) -> Option<std::time::Duration> {
        self.member.as_ref().and_then(|m| m.read_p99())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        let theirs = self.member.as_ref().map(|m| m.write_at(offset, buf));
        self.on_replacement(
            || format!("write at byte offset {offset}"),
            |r| r.write_at(offset, buf),
        );
        // Without a member the write never counts as landed at the position (the replacement
        // is no source before its swap-in): the volume hears a failure, which the fault
        // policy does not count against the member out of service (review of stage 2,
        // finding 1: a row must not be taken as readable from a copy no read can reach).
        theirs.unwrap_or_else(|| Err(self.not_a_member()))
    }

    fn flush(&self) -> Result<(), DeviceError> {
        let theirs = self.member.as_ref().map(|m| m.flush());
        self.on_replacement(|| "flush".to_string(), |r| r.flush());
        theirs.unwrap_or(Ok(()))
    }

    fn size(&self) -> u64 {
        self.member
            .as_ref()
            .map_or_else(|| self.replacement.device.size(), |m| m.size())
    }

    fn name(&self) -> String {
        self.member
            .as_ref()
            .map_or_else(|| self.replacement.identity.path.clone(), |m| m.name())
    }
}
