//! A decorator that injects faults into any device, deterministically from a seed.
//!
//! This is the only place faults are made. Faults belong to one instance (no globals), so tests
//! run in parallel. Write faults are *silent* where real disks are silent: a lost, torn or
//! misdirected write still returns `Ok`, which is exactly what checksums must catch.
//!
//! What a [`FaultPlan`] can do to one device:
//! * write faults ([`FaultKind::LostWrite`], [`FaultKind::TornWrite`],
//!   [`FaultKind::MisdirectedWrite`], [`FaultKind::WriteError`]), armed for the next writes or
//!   drawn at random with a probability;
//! * latent sector errors: reads of chosen or random ranges fail with EIO until a write covers
//!   the range (a disk remaps a pending sector when it is rewritten);
//! * silent bit flips, transient on the way back from a read ([`FaultKind::ReadBitFlip`]) or
//!   at rest on the medium until overwritten ([`FaultKind::RotAtRest`]);
//! * a slow device (added latency), and fail-stop (the device vanishes: every call returns
//!   [`DeviceError::Gone`]), now or after a number of operations.
//!
//! Power loss is not made here: [`super::MemDevice::crash`] drops unflushed writes, and
//! [`PowerCut`] stops the machine at an exact operation.
//!
//! Random decisions are *keyed*: each is drawn from the plan's seed, the current epoch (set by
//! the caller, e.g. a simulation step), the request's offset and length, and how many requests
//! with that offset and length came before in the epoch. So the outcome does not depend on how
//! threads interleave requests to different places, and a seeded run replays exactly. (The
//! bytes written are deliberately not part of the key: metadata holds random UUIDs.)

use super::{Device, DeviceError, ReadWithin};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// Granularity at which a torn write tears, and of random latent sector errors.
const TEAR_BYTES: usize = 512;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// The write is acknowledged but never reaches the medium.
    LostWrite,
    /// Only the first half (rounded down to 512-byte sectors, at least one) of the write lands.
    TornWrite,
    /// The write lands at another offset inside the fault region instead of its own.
    MisdirectedWrite,
    /// The write fails with EIO.
    WriteError,
    /// A read failed with EIO (from a sticky bad range: a latent sector error).
    ReadError,
    /// One bit of the data returned by a read was flipped on the way (the medium is intact).
    ReadBitFlip,
    /// One bit flipped on the medium; every read sees it until the byte is overwritten.
    RotAtRest,
    /// The device vanished; every later call fails with [`DeviceError::Gone`].
    FailStop,
    /// The request was delayed (slow device).
    Latency,
}

impl FaultKind {
    /// Every kind, in a fixed order (for tables and parsing).
    pub const ALL: [FaultKind; 9] = [
        FaultKind::LostWrite,
        FaultKind::TornWrite,
        FaultKind::MisdirectedWrite,
        FaultKind::WriteError,
        FaultKind::ReadError,
        FaultKind::ReadBitFlip,
        FaultKind::RotAtRest,
        FaultKind::FailStop,
        FaultKind::Latency,
    ];
    /// The kinds a write can suffer ([`FaultPlan::arm`], [`FaultPlan::set_random`]).
    pub const WRITE: [FaultKind; 4] = [
        FaultKind::LostWrite,
        FaultKind::TornWrite,
        FaultKind::MisdirectedWrite,
        FaultKind::WriteError,
    ];

    /// A short name for tables and command lines (`lost`, `torn`, `misdirected`, ...).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::LostWrite => "lost",
            FaultKind::TornWrite => "torn",
            FaultKind::MisdirectedWrite => "misdirected",
            FaultKind::WriteError => "write-error",
            FaultKind::ReadError => "read-error",
            FaultKind::ReadBitFlip => "read-flip",
            FaultKind::RotAtRest => "rot",
            FaultKind::FailStop => "fail-stop",
            FaultKind::Latency => "slow",
        }
    }

    /// The kind called `name` (see [`FaultKind::name`]).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
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

/// A per-device fault configuration, e.g. drawn from a seed by [`FaultConfig::random`] and
/// applied with [`FaultPlan::configure`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    /// Probability that a write (in the region) gets a fault drawn from `write_kinds`.
    pub write_probability: f64,
    /// Kinds of write faults to draw from (only [`FaultKind::WRITE`] kinds make sense).
    pub write_kinds: Vec<FaultKind>,
    /// Probability that a read comes back with one bit flipped.
    pub read_flip_probability: f64,
    /// Probability that a request is delayed by `latency`.
    pub latency_probability: f64,
    /// The added latency.
    pub latency: Duration,
    /// How many random latent-sector-error ranges to place in the region.
    pub bad_ranges: usize,
    /// How many random bits to flip at rest in the region.
    pub rot_bits: usize,
    /// The device vanishes after this many more operations.
    pub fail_after_ops: Option<u64>,
}

impl FaultConfig {
    /// A random configuration, drawn from `seed`, using only the kinds in `allowed`. Rates are
    /// kept low enough that a device keeps mostly working (a few percent of requests).
    #[must_use]
    pub fn random(seed: u64, allowed: &[FaultKind]) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let has = |kind| allowed.contains(&kind);
        let write_kinds: Vec<FaultKind> = FaultKind::WRITE
            .into_iter()
            .filter(|kind| has(*kind) && rng.gen_bool(0.7))
            .collect();
        Self {
            write_probability: if write_kinds.is_empty() {
                0.0
            } else {
                rng.gen_range(0.01..0.08)
            },
            write_kinds,
            read_flip_probability: if has(FaultKind::ReadBitFlip) {
                rng.gen_range(0.0..0.03)
            } else {
                0.0
            },
            latency_probability: if has(FaultKind::Latency) {
                rng.gen_range(0.0..0.02)
            } else {
                0.0
            },
            latency: Duration::from_micros(rng.gen_range(10..200)),
            bad_ranges: if has(FaultKind::ReadError) {
                rng.gen_range(0..4)
            } else {
                0
            },
            rot_bits: if has(FaultKind::RotAtRest) {
                rng.gen_range(0..6)
            } else {
                0
            },
            fail_after_ops: (has(FaultKind::FailStop) && rng.gen_bool(0.2))
                .then(|| rng.gen_range(50..5000)),
        }
    }
}

/// What [`FaultPlan`] keys a random decision on, besides the request.
#[derive(Debug, Clone, Copy)]
enum Salt {
    Write = 1,
    ReadFlip = 2,
    Latency = 3,
}

/// One step of SplitMix64: a cheap, well-mixing hash for building decision keys.
fn mix(state: u64, value: u64) -> u64 {
    let mut z = (state ^ value).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The schedule of faults for one device. Shared with the test through an `Arc`.
#[derive(Debug)]
pub struct FaultPlan {
    seed: u64,
    /// Sequential generator for choices the caller makes in a fixed order (random ranges).
    rng: ChaCha8Rng,
    /// Set by the caller (e.g. the simulation step); part of every decision key.
    epoch: u64,
    /// How many times each decision key was seen in this epoch.
    seen: HashMap<u64, u32>,
    /// Only writes starting inside this byte range are candidates for write faults.
    region: Range<u64>,
    /// Faults to apply to the next writes in `region`, in order.
    armed: VecDeque<FaultKind>,
    /// Probability that any write in `region` gets a random fault from `random_kinds`.
    random_probability: f64,
    random_kinds: Vec<FaultKind>,
    /// Reads overlapping these ranges fail with EIO.
    bad_read_ranges: Vec<Range<u64>>,
    read_flip_probability: f64,
    /// Bits flipped at rest: byte offset → XOR mask applied to every read of that byte.
    rot: BTreeMap<u64, u8>,
    latency_probability: f64,
    latency: Duration,
    gone: bool,
    ops_until_fail: Option<u64>,
    /// Every fault injected so far.
    pub injected: Vec<InjectedFault>,
}

impl FaultPlan {
    /// A plan that injects nothing until told to; `seed` drives every random choice.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            epoch: 0,
            seen: HashMap::new(),
            region: 0..u64::MAX,
            armed: VecDeque::new(),
            random_probability: 0.0,
            random_kinds: Vec::new(),
            bad_read_ranges: Vec::new(),
            read_flip_probability: 0.0,
            rot: BTreeMap::new(),
            latency_probability: 0.0,
            latency: Duration::ZERO,
            gone: false,
            ops_until_fail: None,
            injected: Vec::new(),
        }
    }
    /// Restrict write faults, random bad ranges and random rot to `region` (e.g. the data area).
    pub fn set_region(&mut self, region: Range<u64>) {
        self.region = region;
    }
    /// Start a new epoch: random decisions from here on are keyed on it (see the module doc).
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.seen.clear();
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
    /// Make reads overlapping `range` fail with EIO until a write covers it or the plan is
    /// cleared.
    pub fn add_bad_read_range(&mut self, range: Range<u64>) {
        self.bad_read_ranges.push(range);
    }
    /// Place `count` random latent-sector-error ranges of 1 to `max_sectors` 512-byte sectors in
    /// the region. Returns them.
    pub fn add_random_bad_ranges(&mut self, count: usize, max_sectors: u64) -> Vec<Range<u64>> {
        let mut added = Vec::new();
        let sector = TEAR_BYTES as u64;
        for _ in 0..count {
            let Some(span) = self.region_span() else {
                break;
            };
            let sectors = self.rng.gen_range(1..=max_sectors.max(1));
            let start =
                span.start + self.rng.gen_range(0..(span.end - span.start) / sector) * sector;
            let range = start..(start + sectors * sector).min(span.end);
            self.bad_read_ranges.push(range.clone());
            added.push(range);
        }
        added
    }
    /// Return reads with one random bit flipped, with `probability` each (the medium is intact).
    pub fn set_read_flips(&mut self, probability: f64) {
        self.read_flip_probability = probability;
    }
    /// Flip bit `bit` of the byte at `offset` on the medium: reads see it until a write
    /// covers the byte.
    pub fn rot_at_rest(&mut self, offset: u64, bit: u8) {
        *self.rot.entry(offset).or_insert(0) ^= 1 << (bit % 8);
        self.injected.push(InjectedFault {
            kind: FaultKind::RotAtRest,
            offset,
            len: 1,
            landed_at: None,
        });
    }
    /// Flip `count` random bits at rest inside the region. Returns their offsets.
    pub fn rot_random(&mut self, count: usize) -> Vec<u64> {
        let mut offsets = Vec::new();
        for _ in 0..count {
            let Some(span) = self.region_span() else {
                break;
            };
            let offset = self.rng.gen_range(span.clone());
            let bit = self.rng.gen_range(0..8);
            self.rot_at_rest(offset, bit);
            offsets.push(offset);
        }
        offsets
    }
    /// Delay each request by `latency` with `probability` (a slow device).
    pub fn set_latency(&mut self, probability: f64, latency: Duration) {
        self.latency_probability = probability;
        self.latency = latency;
    }
    /// Make the device vanish now (fail-stop).
    pub fn fail_stop(&mut self) {
        if !self.gone {
            self.gone = true;
            self.injected.push(InjectedFault {
                kind: FaultKind::FailStop,
                offset: 0,
                len: 0,
                landed_at: None,
            });
        }
    }
    /// Make the device vanish after `ops` more requests (reads, writes and flushes).
    pub fn fail_after(&mut self, ops: u64) {
        self.ops_until_fail = Some(ops);
    }
    /// True once the device has vanished.
    #[must_use]
    pub fn is_gone(&self) -> bool {
        self.gone
    }
    /// Apply a per-device configuration (on top of what is already set).
    pub fn configure(&mut self, config: &FaultConfig) {
        self.set_random(config.write_probability, &config.write_kinds);
        self.set_read_flips(config.read_flip_probability);
        self.set_latency(config.latency_probability, config.latency);
        self.add_random_bad_ranges(config.bad_ranges, 16);
        self.rot_random(config.rot_bits);
        if let Some(ops) = config.fail_after_ops {
            self.fail_after(ops);
        }
    }
    /// Stop injecting anything new (rot already on the medium stays; a vanished device stays
    /// gone).
    pub fn clear(&mut self) {
        self.armed.clear();
        self.random_probability = 0.0;
        self.bad_read_ranges.clear();
        self.read_flip_probability = 0.0;
        self.latency_probability = 0.0;
        self.ops_until_fail = None;
    }
    /// How many faults of `kind` were injected.
    #[must_use]
    pub fn count(&self, kind: FaultKind) -> usize {
        self.injected.iter().filter(|f| f.kind == kind).count()
    }

    fn region_span(&self) -> Option<Range<u64>> {
        (self.region.end > self.region.start + TEAR_BYTES as u64 && self.region.end != u64::MAX)
            .then(|| self.region.clone())
    }

    /// A generator for one decision about one request, independent of request order.
    fn keyed(&mut self, salt: Salt, offset: u64, len: usize, content: u32) -> ChaCha8Rng {
        let key = [
            self.epoch,
            salt as u64,
            offset,
            len as u64,
            u64::from(content),
        ]
        .into_iter()
        .fold(self.seed, mix);
        let nth = self.seen.entry(key).or_insert(0);
        *nth += 1;
        ChaCha8Rng::seed_from_u64(mix(key, u64::from(*nth)))
    }

    /// Counts one request against a pending fail-stop; `Err(Gone)` once the device vanished.
    fn admit(&mut self, name: &str) -> Result<(), DeviceError> {
        if let Some(left) = self.ops_until_fail {
            if left == 0 {
                self.ops_until_fail = None;
                self.fail_stop();
            } else {
                self.ops_until_fail = Some(left - 1);
            }
        }
        if self.gone {
            return Err(DeviceError::Gone(format!("{name}: injected fail-stop")));
        }
        Ok(())
    }

    /// How long to delay this request (zero for most).
    fn delay(&mut self, offset: u64, len: usize) -> Duration {
        if self.latency_probability <= 0.0 {
            return Duration::ZERO;
        }
        let probability = self.latency_probability.min(1.0);
        if self
            .keyed(Salt::Latency, offset, len, 0)
            .gen_bool(probability)
        {
            self.injected.push(InjectedFault {
                kind: FaultKind::Latency,
                offset,
                len,
                landed_at: None,
            });
            self.latency
        } else {
            Duration::ZERO
        }
    }

    fn next_write_fault(&mut self, offset: u64, len: usize) -> Option<FaultKind> {
        if !self.region.contains(&offset) {
            return None;
        }
        if let Some(kind) = self.armed.pop_front() {
            return Some(kind);
        }
        if self.random_probability > 0.0 && !self.random_kinds.is_empty() {
            let mut rng = self.keyed(Salt::Write, offset, len, 0);
            if rng.gen_bool(self.random_probability.min(1.0)) {
                let pick = rng.gen_range(0..self.random_kinds.len());
                return Some(self.random_kinds[pick]);
            }
        }
        None
    }

    /// Bytes `range` were rewritten on the medium: rot there is gone, and bad ranges it covers
    /// are remapped.
    fn landed(&mut self, range: Range<u64>) {
        let rotted: Vec<u64> = self.rot.range(range.clone()).map(|(at, _)| *at).collect();
        for at in rotted {
            self.rot.remove(&at);
        }
        self.bad_read_ranges
            .retain(|bad| !(range.start <= bad.start && bad.end <= range.end));
    }

    /// Apply rot and transient flips to bytes just read from `offset`.
    fn corrupt_read(&mut self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        for (at, mask) in self.rot.range(offset..end) {
            if let Some(byte) = buf.get_mut(usize::try_from(at - offset).unwrap_or(usize::MAX)) {
                *byte ^= mask;
            }
        }
        if self.read_flip_probability > 0.0 && !buf.is_empty() {
            let mut rng = self.keyed(Salt::ReadFlip, offset, buf.len(), 0);
            if rng.gen_bool(self.read_flip_probability.min(1.0)) {
                let at = rng.gen_range(0..buf.len());
                buf[at] ^= 1 << rng.gen_range(0..8);
                self.injected.push(InjectedFault {
                    kind: FaultKind::ReadBitFlip,
                    offset: offset + at as u64,
                    len: buf.len(),
                    landed_at: None,
                });
            }
        }
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

/// Sleep outside the plan's lock, so a slow device does not serialize other devices' tests.
fn pause(delay: Duration) {
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
}

impl FaultyDevice {
    /// The plan's say on a read of `len` bytes at `offset`: an injected error, or how long
    /// to delay it.
    fn admit_read(&self, offset: u64, len: usize) -> Result<Duration, DeviceError> {
        let mut plan = self.plan.lock();
        plan.admit(&self.inner.name())?;
        let end = offset + len as u64;
        if plan
            .bad_read_ranges
            .iter()
            .any(|r| r.start < end && offset < r.end)
        {
            plan.injected.push(InjectedFault {
                kind: FaultKind::ReadError,
                offset,
                len,
                landed_at: None,
            });
            return Err(eio("read", offset));
        }
        Ok(plan.delay(offset, len))
    }
}

impl Device for FaultyDevice {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let delay = self.admit_read(offset, buf.len())?;
        pause(delay);
        self.inner.read_at(offset, buf)?;
        self.plan.lock().corrupt_read(offset, buf);
        Ok(())
    }

    /// A read the plan delays past `within` is [`ReadWithin::Late`] after `within` (the
    /// inner device is not asked); otherwise the inner device's deadline is what is left.
    fn read_at_within(
        &self,
        offset: u64,
        buf: &mut [u8],
        within: Duration,
    ) -> Result<ReadWithin, DeviceError> {
        let delay = self.admit_read(offset, buf.len())?;
        if delay > within {
            pause(within);
            return Ok(ReadWithin::Late);
        }
        pause(delay);
        let outcome = self
            .inner
            .read_at_within(offset, buf, within.saturating_sub(delay))?;
        if outcome == ReadWithin::Done {
            self.plan.lock().corrupt_read(offset, buf);
        }
        Ok(outcome)
    }

    /// When the inner device keeps deadlines, or the plan delays requests.
    fn reads_within(&self) -> bool {
        self.inner.reads_within() || self.plan.lock().latency_probability > 0.0
    }

    fn read_p99(&self) -> Option<Duration> {
        self.inner.read_p99()
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        let mut plan = self.plan.lock();
        plan.admit(&self.inner.name())?;
        let delay = plan.delay(offset, buf.len());
        let end = offset + buf.len() as u64;
        let Some(kind) = plan.next_write_fault(offset, buf.len()) else {
            let result = self.inner.write_at(offset, buf);
            if result.is_ok() {
                plan.landed(offset..end);
            }
            drop(plan);
            pause(delay);
            return result;
        };
        let mut record = InjectedFault {
            kind,
            offset,
            len: buf.len(),
            landed_at: None,
        };
        let result = match kind {
            FaultKind::LostWrite => Ok(()),
            FaultKind::TornWrite => {
                // Disks tear at their physical sector size, often 512 bytes.
                let keep = (buf.len() / 2 / TEAR_BYTES).max(1) * TEAR_BYTES;
                let keep = keep.min(buf.len());
                let landed = self.inner.write_at(offset, &buf[..keep]);
                if landed.is_ok() {
                    plan.landed(offset..offset + keep as u64);
                }
                landed
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
                    let mut rng = plan.keyed(Salt::Write, offset, buf.len(), u32::MAX);
                    let mut other = rng.gen_range(0..places - 1);
                    if other >= own {
                        other += 1;
                    }
                    let target = region.start + other * len;
                    record.landed_at = Some(target);
                    let landed = self.inner.write_at(target, buf);
                    if landed.is_ok() {
                        plan.landed(target..target + len);
                    }
                    landed
                }
            }
            // Any other kind armed for a write fails it.
            _ => Err(eio("write", offset)),
        };
        plan.injected.push(record);
        drop(plan);
        pause(delay);
        result
    }

    fn flush(&self) -> Result<(), DeviceError> {
        let delay = {
            let mut plan = self.plan.lock();
            plan.admit(&self.inner.name())?;
            plan.delay(u64::MAX, 0)
        };
        pause(delay);
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
    fn is_unreachable(&self) -> bool {
        self.inner.is_unreachable()
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

    #[test]
    fn rot_flips_and_latent_errors_heal_on_rewrite_fail_stop_counts_down() {
        let mem = Arc::new(MemDevice::new("m", 64 * 1024));
        let (dev, plan) = FaultyDevice::new(mem.clone(), 2);
        dev.write_at(0, &[7; 8192]).unwrap();
        plan.lock().rot_at_rest(100, 1);
        let mut buf = [0u8; 8];
        dev.read_at(96, &mut buf).unwrap();
        assert_eq!(buf[4], 7 ^ 2, "rot is seen on read");
        assert_eq!(mem.peek(100, 1)[0], 7, "the wrapped device is untouched");
        dev.write_at(0, &[8; 4096]).unwrap();
        dev.read_at(96, &mut buf).unwrap();
        assert_eq!(buf, [8; 8], "a rewrite clears rot");

        plan.lock().add_bad_read_range(4096..4608);
        assert!(dev.read_at(4096, &mut buf).is_err());
        dev.write_at(4096, &[9; 4096]).unwrap();
        dev.read_at(4096, &mut buf).unwrap();
        assert_eq!(buf, [9; 8], "a rewrite remaps a latent sector error");

        plan.lock().set_read_flips(1.0);
        dev.read_at(4096, &mut buf).unwrap();
        assert_eq!(buf.iter().map(|b| (b ^ 9).count_ones()).sum::<u32>(), 1);
        plan.lock().set_read_flips(0.0);

        plan.lock().set_latency(1.0, Duration::from_micros(1));
        dev.flush().unwrap();
        assert_eq!(plan.lock().count(FaultKind::Latency), 1);

        plan.lock().fail_after(2);
        dev.read_at(0, &mut buf).unwrap();
        dev.read_at(0, &mut buf).unwrap();
        assert!(matches!(
            dev.read_at(0, &mut buf),
            Err(DeviceError::Gone(_))
        ));
        assert!(matches!(dev.flush(), Err(DeviceError::Gone(_))));
        assert_eq!(plan.lock().count(FaultKind::FailStop), 1);
    }

    #[test]
    fn random_decisions_do_not_depend_on_request_order() {
        let outcome = |order: &[u64]| {
            let mem = Arc::new(MemDevice::new("m", 256 * 1024));
            let (dev, plan) = FaultyDevice::new(mem, 3);
            plan.lock().set_random(0.5, &[FaultKind::LostWrite]);
            for at in order {
                dev.write_at(at * 4096, &[*at as u8; 4096]).unwrap();
            }
            let mut lost: Vec<u64> = plan.lock().injected.iter().map(|f| f.offset).collect();
            lost.sort_unstable();
            lost
        };
        let forward: Vec<u64> = (0..32).collect();
        let backward: Vec<u64> = (0..32).rev().collect();
        let lost = outcome(&forward);
        assert!(!lost.is_empty() && lost.len() < 32);
        assert_eq!(lost, outcome(&backward));
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
    fn read_at_within(
        &self,
        offset: u64,
        buf: &mut [u8],
        within: Duration,
    ) -> Result<ReadWithin, DeviceError> {
        self.inner.read_at_within(offset, buf, within)
    }
    fn reads_within(&self) -> bool {
        self.inner.reads_within()
    }
    fn read_p99(&self) -> Option<Duration> {
        self.inner.read_p99()
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
    fn is_unreachable(&self) -> bool {
        self.inner.is_unreachable()
    }
}
