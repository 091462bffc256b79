//! Positioned I/O on one device. A device knows nothing of stripes, checksums or other devices.
//!
//! The trait is deliberately small and synchronous (`read_at`, `write_at`, `flush`, `size`) so that
//! behaviour can be stacked as decorators: [`FaultyDevice`] wraps any device to inject faults,
//! [`MemDevice`] simulates power loss. A device says "I am gone" with [`DeviceError::Gone`],
//! which the pool treats as a whole-device failure rather than a sector error, and "I am out
//! of reach for now" with [`DeviceError::Unavailable`] (an NBD member: [`NbdDevice`]), which
//! the pool treats as `Gone` for now.

mod faulty;
mod file;
mod memory;
mod metered;
mod nbd;
mod signature;
mod uring;

pub use faulty::{FaultConfig, FaultKind, FaultPlan, FaultyDevice, InjectedFault, PowerCut};
pub use file::{canonical_path, refuse_duplicate_paths, Access, CreatedFiles, FileDevice};
pub use memory::MemDevice;
pub use metered::{DeviceIo, Histogram, Metered, BUCKETS_SECS};
pub use nbd::{
    is_uri, NbdAddress, NbdDevice, NbdOptions, NbdUri, UriError, DEFAULT_PORT as NBD_DEFAULT_PORT,
    TIMEOUT_ENV as NBD_TIMEOUT_ENV,
};
pub use signature::{probe as probe_signature, refuse_signature, Signature};
pub use uring::{
    huge_aligned_room, open_device, open_device_for, open_device_with, run_batch, run_batch_while,
    AlignedBuf, Backend, BatchOp, IoBuf, UringDevice, DIRECT_ALIGN, HUGE_IO_MIN, HUGE_PAGE,
};

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How a [`Device::read_at_within`] ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum ReadWithin {
    /// The bytes are in the caller's buffer.
    Done,
    /// The deadline passed first. The caller's buffer holds nothing meaningful and is never
    /// written after the call returned (the request may still be in flight on the device; its
    /// reply, when it comes, is thrown away). Not an error of the device: it says nothing
    /// about the bytes, only that they were not there in time.
    Late,
}

/// Whether `path` is an NBD (or other) URI rather than a filesystem path: see [`is_uri`].
#[must_use]
pub fn is_uri_path(path: &Path) -> bool {
    path.to_str().is_some_and(is_uri)
}

/// Why a device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The device has vanished (unplugged, ENODEV, removed by a test). Fault it as a whole.
    #[error("device is gone: {0}")]
    Gone(String),
    /// The device is out of reach for now (a member on another host: a request timed out, the
    /// connection was refused or lost, the server went away), and may come back. The device's
    /// [`Device::is_unreachable`] is true meanwhile, which is what the pool's policy for
    /// members away asks; wherever an error alone is matched, this one counts as
    /// [`DeviceError::Gone`].
    #[error("device is unavailable: {0}")]
    Unavailable(String),
    /// An I/O error on some range; the device may still work elsewhere.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl DeviceError {
    /// Convert into a `std::io::Error` for contexts that need one.
    #[must_use]
    pub fn into_io(self) -> std::io::Error {
        match self {
            // Unavailable as Gone, for now (see the variant).
            DeviceError::Gone(why) | DeviceError::Unavailable(why) => {
                std::io::Error::new(std::io::ErrorKind::NotConnected, why)
            }
            DeviceError::Io(err) => err,
        }
    }
}

/// Positioned block I/O on one device. Implementations must be safe to call from many threads.
pub trait Device: Send + Sync + fmt::Debug {
    /// Fill `buf` from the device starting at byte `offset`.
    ///
    /// # Errors
    /// [`DeviceError::Io`] for an I/O error on the range, [`DeviceError::Gone`] if the device
    /// vanished, [`DeviceError::Unavailable`] if it is out of reach for now (NBD members).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError>;
    /// [`Device::read_at`], giving up waiting after `within`: [`ReadWithin::Late`] then, and
    /// `buf` is not written after the call returned. For hedged reads (docs/FORMAT.md V4.16
    /// §7): a reader with redundancy to answer from does not wait on a slow member.
    ///
    /// The default has no deadline: it reads and says [`ReadWithin::Done`]. A device that
    /// keeps deadlines says so with [`Device::reads_within`]; decorators forward both.
    ///
    /// # Errors
    /// As for `read_at`.
    fn read_at_within(
        &self,
        offset: u64,
        buf: &mut [u8],
        within: Duration,
    ) -> Result<ReadWithin, DeviceError> {
        let _ = within;
        self.read_at(offset, buf).map(|()| ReadWithin::Done)
    }
    /// Whether [`Device::read_at_within`] keeps its deadline (an NBD member, a test device
    /// made slow); false for the default, which waits as long as `read_at` takes.
    fn reads_within(&self) -> bool {
        false
    }
    /// The read latency a hedge deadline can be based on: most reads of this device finished
    /// within it (the pool's [`Metered`] gives its p99 once it has seen enough reads); `None`
    /// when nothing is known.
    fn read_p99(&self) -> Option<Duration> {
        None
    }
    /// Write all of `buf` at byte `offset`. Not durable until [`Device::flush`] returns.
    ///
    /// # Errors
    /// As for `read_at`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError>;
    /// Barrier: every write that completed before this call is durable when it returns `Ok`.
    ///
    /// # Errors
    /// As for `read_at`; a failed flush means durability of earlier writes is unknown.
    fn flush(&self) -> Result<(), DeviceError>;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// A name for messages and the pool's member list: the path, or e.g. `mem2`.
    fn name(&self) -> String;
    /// The I/O backend, for `status`: `io_uring+O_DIRECT`, `io_uring`, `pread`, `memory`, ...
    fn io_backend(&self) -> &'static str {
        "other"
    }
    /// Whether the device is known not to answer for now (a remote export whose connection is
    /// down, timed out or refused), as opposed to failing (docs/FORMAT.md V4.16): the pool then
    /// marks it unavailable rather than faulted. Decorators forward it.
    fn is_unreachable(&self) -> bool {
        false
    }
    /// This device as an io_uring device, so [`run_batch`] can submit its requests together
    /// with other devices'. Decorators must keep the default (`None`): their requests have to go
    /// through their own `read_at`/`write_at`.
    fn as_uring(&self) -> Option<&UringDevice> {
        None
    }
    /// Whether reading into memory that is not 4 KiB aligned costs this device a bounce copy
    /// (an `O_DIRECT` file or block device): a caller then reads into an aligned buffer of its
    /// own rather than straight into such memory. Decorators that pass reads to one device
    /// delegate it.
    fn wants_aligned_memory(&self) -> bool {
        self.as_uring().is_some_and(UringDevice::is_direct)
    }
    /// Told by [`run_batch`] about each request it sent straight to [`Device::as_uring`]'s
    /// device: a decorator that only observes (metrics) delegates `as_uring` and counts here.
    fn batched(&self, _request: Batched) {}
    /// Told by [`flush_each`] that it flushed [`Device::as_uring`]'s device directly.
    fn flushed_together(&self) {}
}

/// One request [`run_batch`] completed on a device's io_uring device (see [`Device::batched`]).
#[derive(Debug, Clone, Copy)]
pub struct Batched {
    /// A write (else a read).
    pub write: bool,
    /// Bytes requested.
    pub bytes: u64,
    /// From submission to completion.
    pub latency: std::time::Duration,
    /// Whether it succeeded.
    pub ok: bool,
}

/// A shared device handle, as held by the pool.
pub type SharedDevice = Arc<dyn Device>;

/// The fewest devices [`flush_each`] flushes together on io_uring. Measured with
/// `bench-smallwrite --nbd --fsync-every 32`, old and new alternated (2026-12-05): six member
/// files flushed together raised the library's rs:4+2 writes with a flush every 32 by a fifth
/// (10.6k and 11.5k IOPS to 13.4k and 13.8k); two (mirror:2) gained nothing and lost over NBD
/// (the kernel's worker hand-off costs more than one `fdatasync` of about 60 µs here), and
/// threads of our own to flush six side by side lost everywhere on these two cores.
pub const FLUSH_TOGETHER_MIN: usize = 3;

/// Flush every device of `devices` (`None` entries are skipped and give `None`); each one's
/// outcome, in order.
///
/// When [`FLUSH_TOGETHER_MIN`] or more are given and every one is a real device on io_uring (a
/// file or a block device, possibly behind an observing decorator), their flushes go to the
/// kernel together on this thread's ring and run side by side. Otherwise (fewer, or memory,
/// fault-injecting or simulated devices) one after another in order, so that a simulation
/// stays deterministic.
#[must_use]
pub fn flush_each(devices: &[Option<SharedDevice>]) -> Vec<Option<Result<(), DeviceError>>> {
    let present: Vec<&UringDevice> = devices
        .iter()
        .flatten()
        .filter_map(|d| d.as_uring())
        .collect();
    if present.len() >= FLUSH_TOGETHER_MIN && present.len() == devices.iter().flatten().count() {
        if let Some(outcomes) = uring::flush_together(&present) {
            let mut outcomes = outcomes.into_iter();
            return devices
                .iter()
                .map(|device| {
                    let device = device.as_ref()?;
                    device.flushed_together();
                    outcomes.next()
                })
                .collect();
        }
    }
    devices
        .iter()
        .map(|device| device.as_ref().map(|d| d.flush()))
        .collect()
}
