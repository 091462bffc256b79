//! An in-memory device for tests and benchmarks that models a volatile write cache.
//!
//! It keeps two images: `live` (what reads see) and `durable` (what survives power loss), plus
//! the writes made since the last flush. [`MemDevice::crash`] keeps an arbitrary, seeded subset
//! of those unflushed writes *per 4 KiB sector* (so writes can tear and be reordered) and
//! throws the rest away, like a disk losing power with data in its cache.

use super::{Device, DeviceError, ReadWithin};
use crate::types::SECTOR_BYTES;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

#[derive(Debug)]
struct Images {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Writes since the last flush, in issue order: (offset, bytes).
    unflushed: Vec<(u64, Vec<u8>)>,
    gone: bool,
    unreachable: bool,
    /// How long each request takes ([`MemDevice::set_delay`]).
    delay: Duration,
}

/// A RAM-backed device with crash simulation.
#[derive(Debug)]
pub struct MemDevice {
    name: String,
    size: u64,
    images: Mutex<Images>,
}

impl MemDevice {
    /// A zero-filled device of `size` bytes.
    #[must_use]
    pub fn new(name: impl Into<String>, size: u64) -> Self {
        let len = usize::try_from(size).unwrap_or(usize::MAX);
        Self {
            name: name.into(),
            size,
            images: Mutex::new(Images {
                live: vec![0; len],
                durable: vec![0; len],
                unflushed: Vec::new(),
                gone: false,
                unreachable: false,
                delay: Duration::ZERO,
            }),
        }
    }

    /// Simulate power loss: each sector of each unflushed write survives with probability 1/2
    /// (decided by `seed`), then the live image becomes the durable one.
    ///
    /// Each decision is keyed on the sector and how many unflushed writes touched it before, not
    /// on the order of writes to other sectors, so threads writing different places in any
    /// order leave the same image for the same seed.
    pub fn crash(&self, seed: u64) {
        let mut touched: std::collections::HashMap<usize, u64> = std::collections::HashMap::new();
        let mut images = self.images.lock();
        let unflushed = std::mem::take(&mut images.unflushed);
        for (offset, bytes) in unflushed {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            let sector = usize::try_from(SECTOR_BYTES).unwrap_or(4096);
            let mut pos = 0;
            while pos < bytes.len() {
                // Sector-aligned pieces, so a sector is either old or new (torn across sectors).
                let abs = start + pos;
                let piece = (sector - abs % sector).min(bytes.len() - pos);
                let nth = touched.entry(abs / sector).or_insert(0);
                *nth += 1;
                let key = seed ^ ((abs / sector) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                if ChaCha8Rng::seed_from_u64(key ^ nth.rotate_left(40)).gen_bool(0.5) {
                    images.durable[abs..abs + piece].copy_from_slice(&bytes[pos..pos + piece]);
                }
                pos += piece;
            }
        }
        let durable = images.durable.clone();
        images.live = durable;
    }

    /// Make the device stop answering as a remote export does when its host is cut off
    /// (every call fails with a timeout and [`Device::is_unreachable`] says so), or answer
    /// again with its content as it was.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.images.lock().unreachable = unreachable;
    }

    /// Make every request (read, write, flush) take `delay` longer, as a slow or overloaded
    /// remote member does (zero: as fast as memory again). A [`Device::read_at_within`] whose
    /// deadline is shorter says [`ReadWithin::Late`] when the deadline passes.
    pub fn set_delay(&self, delay: Duration) {
        self.images.lock().delay = delay;
    }

    /// Sleep the request delay, outside the lock.
    fn pause(&self) -> Duration {
        let delay = self.images.lock().delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        delay
    }

    /// Make the device vanish (every call fails with `Gone`) or come back.
    pub fn set_gone(&self, gone: bool) {
        self.images.lock().gone = gone;
    }

    /// Overwrite bytes on the medium directly (both images), bypassing the cache: for tests
    /// that simulate bit rot or a foreign writer.
    pub fn poke(&self, offset: u64, bytes: &[u8]) {
        let mut images = self.images.lock();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        images.live[start..start + bytes.len()].copy_from_slice(bytes);
        images.durable[start..start + bytes.len()].copy_from_slice(bytes);
    }

    /// Read bytes straight from the live image.
    #[must_use]
    pub fn peek(&self, offset: u64, len: usize) -> Vec<u8> {
        let images = self.images.lock();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        images.live[start..start + len].to_vec()
    }

    /// Flip one bit on the medium (bit rot).
    pub fn flip_bit(&self, offset: u64, bit: u8) {
        let mut byte = self.peek(offset, 1);
        byte[0] ^= 1 << (bit % 8);
        self.poke(offset, &byte);
    }

    /// Copy of the whole live image.
    #[must_use]
    pub fn image(&self) -> Vec<u8> {
        self.images.lock().live.clone()
    }

    fn timed_out(&self) -> DeviceError {
        DeviceError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{}: no answer (unreachable)", self.name),
        ))
    }

    fn range(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>, DeviceError> {
        let end = offset
            .checked_add(len as u64)
            .filter(|end| *end <= self.size);
        match end {
            Some(end) => Ok(usize::try_from(offset).unwrap_or(usize::MAX)
                ..usize::try_from(end).unwrap_or(usize::MAX)),
            None => Err(DeviceError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: range {offset}+{len} beyond device size {}",
                    self.name, self.size
                ),
            ))),
        }
    }
}

impl Device for MemDevice {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.pause();
        self.read_now(offset, buf)
    }
    /// Late after `within` when the request delay is longer (the bytes are not read).
    fn read_at_within(
        &self,
        offset: u64,
        buf: &mut [u8],
        within: Duration,
    ) -> Result<ReadWithin, DeviceError> {
        let delay = self.images.lock().delay;
        if delay > within {
            std::thread::sleep(within);
            return Ok(ReadWithin::Late);
        }
        self.read_at(offset, buf).map(|()| ReadWithin::Done)
    }
    /// While a request delay is set.
    fn reads_within(&self) -> bool {
        !self.images.lock().delay.is_zero()
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        self.pause();
        self.write_now(offset, buf)
    }
    fn flush(&self) -> Result<(), DeviceError> {
        self.pause();
        self.flush_now()
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn io_backend(&self) -> &'static str {
        "memory"
    }
    fn is_unreachable(&self) -> bool {
        self.images.lock().unreachable
    }
}

impl MemDevice {
    fn read_now(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let range = self.range(offset, buf.len())?;
        let images = self.images.lock();
        if images.gone {
            return Err(DeviceError::Gone(format!("{} was removed", self.name)));
        }
        if images.unreachable {
            return Err(self.timed_out());
        }
        buf.copy_from_slice(&images.live[range]);
        Ok(())
    }
    fn write_now(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        let range = self.range(offset, buf.len())?;
        let mut images = self.images.lock();
        if images.gone {
            return Err(DeviceError::Gone(format!("{} was removed", self.name)));
        }
        if images.unreachable {
            return Err(self.timed_out());
        }
        images.live[range].copy_from_slice(buf);
        images.unflushed.push((offset, buf.to_vec()));
        Ok(())
    }
    fn flush_now(&self) -> Result<(), DeviceError> {
        let mut images = self.images.lock();
        if images.gone {
            return Err(DeviceError::Gone(format!("{} was removed", self.name)));
        }
        if images.unreachable {
            return Err(self.timed_out());
        }
        let unflushed = std::mem::take(&mut images.unflushed);
        for (offset, bytes) in unflushed {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            images.durable[start..start + bytes.len()].copy_from_slice(&bytes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushed_survives_crash_unflushed_may_not() {
        let dev = MemDevice::new("m", 64 * 1024);
        dev.write_at(0, &[1; 4096]).unwrap();
        dev.flush().unwrap();
        dev.write_at(0, &[2; 8192]).unwrap();
        dev.crash(7);
        let mut buf = vec![0; 8192];
        dev.read_at(0, &mut buf).unwrap();
        assert!(buf[..4096].iter().all(|b| *b == 1) || buf[..4096].iter().all(|b| *b == 2));
        assert!(buf[4096..].iter().all(|b| *b == 0) || buf[4096..].iter().all(|b| *b == 2));
        // Over many seeds both outcomes occur, so the simulation really drops writes.
        let mut outcomes = std::collections::HashSet::new();
        for seed in 0..32 {
            let dev = MemDevice::new("m", 8192);
            dev.write_at(0, &[9; 4096]).unwrap();
            dev.crash(seed);
            outcomes.insert(dev.peek(0, 1)[0]);
        }
        assert_eq!(outcomes.len(), 2);
    }

    #[test]
    fn gone_and_out_of_range_are_errors() {
        let dev = MemDevice::new("m", 4096);
        let mut buf = [0u8; 8];
        assert!(matches!(
            dev.read_at(4090, &mut buf),
            Err(DeviceError::Io(_))
        ));
        dev.set_gone(true);
        assert!(matches!(
            dev.read_at(0, &mut buf),
            Err(DeviceError::Gone(_))
        ));
        assert!(matches!(dev.flush(), Err(DeviceError::Gone(_))));
    }
}
