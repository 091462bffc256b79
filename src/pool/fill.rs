//! The fill device of a format-version-4 rebuild (docs/FORMAT.md V4.13, "Stage 2"): what the
//! volume is given at a position whose replacement is being filled, so that every row, page,
//! log record and uberblock written while the rebuild runs reaches the replacement too.
//!
//! Owns: fanning a write or flush out to the member (when it is still in service) and the
//! replacement, and keeping the replacement's failures away from the request: a failure there
//! is recorded on the replacement (`Replacement::fill_failed`) and the rebuild abandons it. The
//! request's result is the member's (with no member, the position is already counted lost, so
//! the pool is exactly as redundant as without a replacement).
//!
//! Must not touch: membership and superblocks (the rebuild in `rows_rebuild.rs` decides), and
//! reads of the replacement: it is never a source before it is swapped in. With no member, a
//! read fails with [`NOT_READABLE`], which the fault policy does not count.

use super::Replacement;
use crate::device::{Device, DeviceError, SharedDevice};
use std::sync::Arc;

/// What a read of a position without a member in service says while its replacement is
/// filled (the map then reads another copy of the page).
pub(crate) const NOT_READABLE: &str = "not readable while its replacement is being rebuilt";

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
}

impl Device for FillDevice {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        match &self.member {
            Some(member) => member.read_at(offset, buf),
            None => Err(DeviceError::Io(std::io::Error::other(format!(
                "{}: {NOT_READABLE}",
                self.replacement.identity.path
            )))),
        }
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        let theirs = self.member.as_ref().map(|m| m.write_at(offset, buf));
        self.on_replacement(
            || format!("write at byte offset {offset}"),
            |r| r.write_at(offset, buf),
        );
        theirs.unwrap_or(Ok(()))
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
