//! The device state table: which member devices are online, their error counters, and the
//! superblock that records it all. Faulting a device is persisted at once (superblock
//! generation + 1 on every remaining member), so a faulted device that comes back later is
//! recognised as stale and never trusted for data again.

use crate::device::{DeviceError, SharedDevice};
use crate::error::{Error, Result};
use crate::format::{Member, MemberState, PoolUuid, Role, Superblock};
use crate::types::DeviceIndex;
use parking_lot::{Mutex, RwLock};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Error counters of one device, as shown by `status`.
#[derive(Debug, Default)]
pub struct ErrorCounters {
    /// Reads that failed with an I/O error.
    pub read: AtomicU64,
    /// Writes or flushes that failed.
    pub write: AtomicU64,
    /// Chunks whose content did not match the map's checksum.
    pub checksum: AtomicU64,
    /// Chunks rewritten with reconstructed content (self-heal).
    pub repaired: AtomicU64,
}

/// One data member or spare.
#[derive(Debug)]
pub struct MemberDevice {
    /// Device UUID (its identity; the path is only a hint).
    pub uuid: PoolUuid,
    /// Role in the pool.
    pub role: Role,
    /// Last known path or name.
    pub path: String,
    device: RwLock<Option<SharedDevice>>,
    online: AtomicBool,
    fault_reason: Mutex<Option<String>>,
    /// Error counters.
    pub errors: ErrorCounters,
}

impl MemberDevice {
    pub(crate) fn new(member: &Member, device: Option<SharedDevice>) -> Self {
        let reason = match (&member.state, &device) {
            (MemberState::Faulted { reason }, _) => Some(reason.clone()),
            (MemberState::Online, None) => Some("missing: device not found at open".into()),
            (MemberState::Online, Some(_)) => None,
        };
        Self {
            uuid: member.uuid,
            role: member.role,
            path: member.path.clone(),
            online: AtomicBool::new(reason.is_none()),
            device: RwLock::new(if reason.is_none() { device } else { None }),
            fault_reason: Mutex::new(reason),
            errors: ErrorCounters::default(),
        }
    }
    /// Whether the device is in service.
    #[must_use]
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }
    /// Why it is out of service, if it is.
    #[must_use]
    pub fn fault_reason(&self) -> Option<String> {
        self.fault_reason.lock().clone()
    }
    /// The device handle, if online.
    #[must_use]
    pub fn device(&self) -> Option<SharedDevice> {
        if self.is_online() {
            self.device.read().clone()
        } else {
            None
        }
    }
    fn member_record(&self) -> Member {
        Member {
            uuid: self.uuid,
            role: self.role,
            state: match self.fault_reason() {
                Some(reason) => MemberState::Faulted { reason },
                None => MemberState::Online,
            },
            path: self.path.clone(),
        }
    }
}

/// All members plus the superblock template.
#[derive(Debug)]
pub struct Members {
    /// Data members, by layout position.
    pub data: Vec<MemberDevice>,
    /// Spares.
    pub spares: Vec<MemberDevice>,
    superblock: Mutex<Superblock>,
    /// Serialises whole superblock updates, so a later generation can never be overwritten by
    /// an earlier one that was still being written.
    superblock_writer: Mutex<()>,
    error_threshold: u64,
}

impl Members {
    pub(crate) fn new(
        data: Vec<MemberDevice>,
        spares: Vec<MemberDevice>,
        superblock: Superblock,
        error_threshold: u64,
    ) -> Self {
        Self {
            data,
            spares,
            superblock: Mutex::new(superblock),
            superblock_writer: Mutex::new(()),
            error_threshold,
        }
    }

    /// The member at `index`.
    #[must_use]
    pub fn get(&self, index: DeviceIndex) -> &MemberDevice {
        &self.data[index.0]
    }

    /// Current superblock generation.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.superblock.lock().generation
    }

    /// Names of data members that are out of service.
    #[must_use]
    pub fn lost(&self) -> Vec<String> {
        self.data
            .iter()
            .filter(|m| !m.is_online())
            .map(|m| m.path.clone())
            .collect()
    }

    /// Take `index` out of service for `reason` and persist that in the superblocks.
    /// Idempotent: a device already faulted stays faulted with its first reason.
    pub fn fault(&self, index: DeviceIndex, reason: &str) {
        let member = self.get(index);
        {
            let mut current = member.fault_reason.lock();
            if current.is_some() {
                return;
            }
            *current = Some(reason.to_string());
            member.online.store(false, Ordering::Release);
        }
        tracing::warn!(device = %member.path, index = index.0, reason, "device faulted");
        *member.device.write() = None;
        if let Err(err) = self.write_superblocks() {
            tracing::error!(%err, "could not record the fault in the superblocks");
        }
    }

    /// Count an I/O or checksum error against a device; fault it past the threshold, or at
    /// once if the device is gone or a write failed (its content is then unknown).
    pub fn record_error(&self, index: DeviceIndex, kind: ErrorKind, detail: &DeviceError) {
        let member = self.get(index);
        let counter = match kind {
            ErrorKind::Read => &member.errors.read,
            ErrorKind::Write => &member.errors.write,
            ErrorKind::Checksum => &member.errors.checksum,
        };
        let count = counter.fetch_add(1, Ordering::Relaxed) + 1;
        let total = member.errors.read.load(Ordering::Relaxed)
            + member.errors.checksum.load(Ordering::Relaxed);
        if matches!(detail, DeviceError::Gone(_)) {
            self.fault(index, &format!("device gone: {detail}"));
        } else if kind == ErrorKind::Write {
            self.fault(index, &format!("write failed: {detail}"));
        } else if total >= self.error_threshold {
            self.fault(
                index,
                &format!(
                    "too many errors ({total} read/checksum errors, threshold {})",
                    self.error_threshold
                ),
            );
        } else {
            tracing::info!(device = %member.path, ?kind, count, %detail, "device error");
        }
    }

    /// Flush every online data member in parallel; a failed flush faults the device.
    pub fn flush_all(&self) {
        self.data.par_iter().enumerate().for_each(|(i, member)| {
            if let Some(device) = member.device() {
                if let Err(err) = device.flush() {
                    self.record_error(DeviceIndex(i), ErrorKind::Write, &err);
                }
            }
        });
    }

    /// Write the superblock (generation + 1) to every online member and spare: copy A on all,
    /// flush, then copy B on all, flush. A crash at any point leaves one valid copy per device.
    /// Returns the devices where a write failed (their other copy may still be valid).
    ///
    /// # Errors
    /// [`Error::CorruptMetadata`] if the superblock cannot be encoded.
    pub fn write_superblocks(&self) -> Result<Vec<(String, DeviceError)>> {
        let _writer = self.superblock_writer.lock();
        let mut template = self.superblock.lock();
        template.generation += 1;
        template.members = self
            .data
            .iter()
            .chain(&self.spares)
            .map(MemberDevice::member_record)
            .collect();
        let targets: Vec<(SharedDevice, Vec<u8>)> = self
            .data
            .iter()
            .chain(&self.spares)
            .filter_map(|member| {
                let device = member.device()?;
                let mut superblock = template.clone();
                superblock.device_uuid = member.uuid;
                Some(superblock.encode().map(|bytes| (device, bytes)))
            })
            .collect::<std::result::Result<_, String>>()
            .map_err(Error::CorruptMetadata)?;
        drop(template);
        let mut failures = Vec::new();
        for copy in 0..2 {
            let failed: Vec<(String, DeviceError)> = targets
                .par_iter()
                .filter_map(|(device, bytes)| {
                    let offset = if copy == 0 {
                        0
                    } else {
                        super::open::superblock_b_offset(device.as_ref())
                    };
                    let result = device.write_at(offset, bytes).and_then(|()| device.flush());
                    result.err().map(|err| (device.name(), err))
                })
                .collect();
            failures.extend(failed);
        }
        for (device, err) in &failures {
            tracing::warn!(%device, %err, "superblock write failed");
        }
        Ok(failures)
    }
}

/// Which counter an error goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// I/O error on read.
    Read,
    /// I/O error on write or flush.
    Write,
    /// Content did not verify.
    Checksum,
}
