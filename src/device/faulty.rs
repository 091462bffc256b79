//! A decorator that injects faults into any device, deterministically from a seed.
//!
//! This is the only place faults are made. Faults belong to one instance (no globals), so tests
//! run in parallel. Write faults are *silent* where real disks are silent: a lost, torn or
//! misdirected write still returns `Ok`, which is exactly what checksums must catch.

use super::{Device, DeviceError};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

/// Granularity at which a torn write tears.
const TEAR_BYTES: usize = 512;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The write is acknowledged but never reaches the medium.
    LostWrite,
    /// Only the first half (rounded down to 512-byte sectors, at least one) of the write lands.
    TornWrite,
    /// The write lands at another offset inside the fault region instead of its own.
    MisdirectedWrite,
    /// The write fails with EIO.
    WriteError,
    /// A read failed with EIO (from a sticky bad range).
    ReadError,
}

/// A fault that was injected, for tests to count against what the pool reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFault {
    /// What happened.
    pub kind: FaultKind,
    /// Intended offset.
    pub offset: u64,
    /// Length of the request.
    pub len: usize,
    /// Where a misdirected write actually landed.
    pub landed_at: Option<u64>,
}

/// The schedule of faults for one device. Shared with the test through an `Arc`.
#[derive(Debug)]
pub struct FaultPlan {
    rng: ChaCha8Rng,
    /// Only writes starting inside this byte range are candidates for write faults.
    region: Range<u64>,
    /// Faults to apply to the next writes in `region`, in order.
    armed: VecDeque<FaultKind>,
    /// Probability that any write in `region` gets a random fault from `random_kinds`.
    random_probability: f64,
    random_kinds: Vec<FaultKind>,
    /// Reads overlapping these ranges fail with EIO.
    bad_read_ranges: Vec<Range<u64>>,
    /// Every fault injected so far.
    pub injected: Vec<InjectedFault>,
}

impl FaultPlan {
    /// A plan that injects nothing until told to; `seed` drives every random choice.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            region: 0..u64::MAX,
            armed: VecDeque::new(),
            random_probability: 0.0,
            random_kinds: Vec::new(),
            bad_read_ranges: Vec::new(),
            injected: Vec::new(),
        }
    }
    /// Restrict write faults to writes starting in `region` (e.g. the data area).
    pub fn set_region(&mut self, region: Range<u64>) {
        self.region = region;
    }
    /// Apply `kind` to each of the next `count` writes in the region.
    pub fn arm(&mut self, kind: FaultKind, count: usize) {
        self.armed.extend(std::iter::repeat_n(kind, count));
    }
    /// Give each write in the region a fault with `probability`, kind chosen from `kinds`.
    pub fn set_random(&mut self, probability: f64, kinds: &[FaultKind]) {
        self.random_probability = probability;
        self.random_kinds = kinds.to_vec();
    }
    /// Make reads overlapping `range` fail with EIO until cleared.
    pub fn add_bad_read_range(&mut self, range: Range<u64>) {
        self.bad_read_ranges.push(range);
    }
    /// Stop injecting anything.
    pub fn clear(&mut self) {
        self.armed.clear();
        self.random_probability = 0.0;
        self.bad_read_ranges.clear();
    }
    /// How many faults of `kind` were injected.
    #[must_use]
    pub fn count(&self, kind: FaultKind) -> usize {
        self.injected.iter().filter(|f| f.kind == kind).count()
    }

    fn next_write_fault(&mut self, offset: u64) -> Option<FaultKind> {
        if !self.region.contains(&offset) {
            return None;
        }
        if let Some(kind) = self.armed.pop_front() {
            return Some(kind);
        }
        if self.random_probability > 0.0
            && !self.random_kinds.is_empty()
            && self.rng.gen_bool(self.random_probability)
        {
            let pick = self.rng.gen_range(0..self.random_kinds.len());
            return Some(self.random_kinds[pick]);
        }
        None
    }
}

/// Wraps a device and applies a [`FaultPlan`] to its I/O.
#[derive(Debug)]
pub struct FaultyDevice {
    inner: Arc<dyn Device>,
    plan: Arc<Mutex<FaultPlan>>,
}

impl FaultyDevice {
    /// Wrap `inner`; the returned plan handle controls the faults.
    #[must_use]
    pub fn new(inner: Arc<dyn Device>, seed: u64) -> (Self, Arc<Mutex<FaultPlan>>) {
        let plan = Arc::new(Mutex::new(FaultPlan::new(seed)));
        (
            Self {
                inner,
                plan: Arc::clone(&plan),
            },
            plan,
        )
    }
}

fn eio(what: &str, offset: u64) -> DeviceError {
    DeviceError::Io(std::io::Error::other(format!(
        "injected {what} error at offset {offset}"
    )))
}

impl Device for FaultyDevice {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        {
            let mut plan = self.plan.lock();
            let end = offset + buf.len() as u64;
            if plan
                .bad_read_ranges
                .iter()
                .any(|r| r.start < end && offset < r.end)
            {
                plan.injected.push(InjectedFault {
                    kind: FaultKind::ReadError,
                    offset,
                    len: buf.len(),
                    landed_at: None,
                });
                return Err(eio("read", offset));
            }
        }
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        let mut plan = self.plan.lock();
        let Some(kind) = plan.next_write_fault(offset) else {
            drop(plan);
            return self.inner.write_at(offset, buf);
        };
        let mut record = InjectedFault {
            kind,
            offset,
            len: buf.len(),
            landed_at: None,
        };
        let result = match kind {
            FaultKind::LostWrite => Ok(()),
            FaultKind::WriteError | FaultKind::ReadError => Err(eio("write", offset)),
            FaultKind::TornWrite => {
                // Disks tear at their physical sector size, often 512 bytes.
                let keep = (buf.len() / 2 / TEAR_BYTES).max(1) * TEAR_BYTES;
                let keep = keep.min(buf.len());
                self.inner.write_at(offset, &buf[..keep])
            }
            FaultKind::MisdirectedWrite => {
                // Land a whole number of requests away, inside the region, never on itself.
                let region = plan.region.clone();
                let span = region.end.min(self.inner.size()) - region.start;
                let len = buf.len() as u64;
                let places = span / len.max(1);
                if places < 2 {
                    Ok(())
                } else {
                    let own = (offset - region.start) / len;
                    let mut other = plan.rng.gen_range(0..places - 1);
                    if other >= own {
                        other += 1;
                    }
                    let target = region.start + other * len;
                    record.landed_at = Some(target);
                    self.inner.write_at(target, buf)
                }
            }
        };
        plan.injected.push(record);
        result
    }

    fn flush(&self) -> Result<(), DeviceError> {
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;

    #[test]
    fn lost_torn_and_misdirected_writes_are_silent_but_real() {
        let mem = Arc::new(MemDevice::new("m", 64 * 1024));
        let (dev, plan) = FaultyDevice::new(mem.clone(), 1);
        plan.lock().arm(FaultKind::LostWrite, 1);
        dev.write_at(0, &[1; 8192]).unwrap();
        assert_eq!(mem.peek(0, 1)[0], 0);

        plan.lock().arm(FaultKind::TornWrite, 1);
        dev.write_at(0, &[2; 8192]).unwrap();
        assert_eq!(mem.peek(0, 1)[0], 2);
        assert_eq!(mem.peek(4095, 1)[0], 2);
        assert_eq!(mem.peek(4096, 1)[0], 0);

        plan.lock().arm(FaultKind::MisdirectedWrite, 1);
        dev.write_at(8192, &[3; 8192]).unwrap();
        assert_eq!(mem.peek(8192, 1)[0], 0);
        let landed = plan.lock().injected[2].landed_at.unwrap();
        assert_ne!(landed, 8192);
        assert_eq!(mem.peek(landed, 1)[0], 3);

        plan.lock().add_bad_read_range(100..200);
        let mut buf = [0u8; 4];
        assert!(dev.read_at(150, &mut buf).is_err());
        assert!(dev.read_at(300, &mut buf).is_ok());
        assert_eq!(plan.lock().count(FaultKind::ReadError), 1);
    }
}

/// Simulates a power cut at an exact point: after `countdown` more writes or flushes (counted
/// across every device sharing the counter), all writes and flushes are silently dropped, as if
/// the machine had stopped there. Combine with [`super::MemDevice::crash`] to also lose the
/// unflushed writes issued before the cut.
#[derive(Debug)]
pub struct PowerCut {
    inner: Arc<dyn Device>,
    countdown: Arc<std::sync::atomic::AtomicI64>,
}

impl PowerCut {
    /// Wrap `inner`, sharing `countdown` with the other devices of the machine.
    #[must_use]
    pub fn new(inner: Arc<dyn Device>, countdown: Arc<std::sync::atomic::AtomicI64>) -> Self {
        Self { inner, countdown }
    }

    /// True once power is off (the operation must be dropped).
    fn power_is_off(&self) -> bool {
        self.countdown
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            <= 0
    }
}

impl Device for PowerCut {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        if self.power_is_off() {
            return Ok(());
        }
        self.inner.write_at(offset, buf)
    }
    fn flush(&self) -> Result<(), DeviceError> {
        if self.power_is_off() {
            return Ok(());
        }
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
}
