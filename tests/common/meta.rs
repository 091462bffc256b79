//! Helpers shared by the format-version-4 map tests (`meta_tree.rs`, `meta_log.rs`): a seeded
//! generator and a device that lets a test watch or refuse requests on the way to a member.
#![allow(dead_code)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use stripestore::device::{Device, DeviceError, MemDevice, PowerCut, SharedDevice};

/// The four layouts the volume suites run on, with their smallest member counts.
pub const VOLUME_LAYOUTS: [(&str, usize); 4] = [
    ("rs:4+2", 6),
    ("mirror:2", 2),
    ("raid10:2", 4),
    ("rs:2+1", 3),
];

/// A version-4 geometry of 16 KiB chunks on members of `device_bytes`, with the test
/// minimums (4-slot uberblock rings, 16 KiB log halves).
pub fn volume_geometry(
    layout: &str,
    members: usize,
    device_bytes: u64,
) -> stripestore::geometry::Geometry {
    let layout: stripestore::geometry::Layout = layout.parse().unwrap();
    stripestore::geometry::Geometry::new_v4(layout, members, 16384, device_bytes, 4, 16384).unwrap()
}

/// A volume near the test minimums: a map of depth 2, 64 cached pages, 4 KiB records,
/// segments of 4 slots.
pub fn volume_options() -> stripestore::volume::VolumeOptions {
    stripestore::volume::VolumeOptions {
        map: stripestore::meta::MapOptions {
            depth: 2,
            cache_bytes: 64 * 16384,
            record_max: Some(4096),
            segment_slots: 4,
            ..stripestore::meta::MapOptions::default()
        },
        ..stripestore::volume::VolumeOptions::default()
    }
}

/// Every byte of every member, in member order (for comparisons byte for byte).
pub fn member_images(devices: &[Option<SharedDevice>]) -> Vec<Vec<u8>> {
    devices
        .iter()
        .map(|d| {
            let d = d.as_ref().expect("every member present");
            let mut all = vec![0u8; d.size() as usize];
            d.read_at(0, &mut all).expect("a member reads whole");
            all
        })
        .collect()
}

/// The 4 KiB of version `version` of block `key`: a pattern no other (key, version) shares.
pub fn block_pattern(key: u64, version: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; 4096];
    let mut x =
        key.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version.wrapping_mul(0xd1b5_4a32_d192_ed03);
    for chunk in bytes.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    bytes
}

/// A small seeded generator (the same sequence on every machine).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// What a [`Hooked`] device hears of each request: `(offset, bytes)`; a write hook may refuse.
pub type ReadHook = Arc<dyn Fn(u64, usize) + Send + Sync>;
pub type WriteHook = Arc<dyn Fn(u64, &[u8]) -> Result<(), DeviceError> + Send + Sync>;

/// Passes every request to `inner`, telling the hooks first.
pub struct Hooked {
    pub inner: SharedDevice,
    pub on_read: Option<ReadHook>,
    pub on_write: Option<WriteHook>,
}

impl std::fmt::Debug for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hooked({})", self.inner.name())
    }
}

impl Hooked {
    pub fn shared(
        inner: SharedDevice,
        on_read: Option<ReadHook>,
        on_write: Option<WriteHook>,
    ) -> SharedDevice {
        Arc::new(Self {
            inner,
            on_read,
            on_write,
        })
    }
}

impl Device for Hooked {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        if let Some(hook) = &self.on_read {
            hook(offset, buf.len());
        }
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        if let Some(hook) = &self.on_write {
            hook(offset, buf)?;
        }
        self.inner.write_at(offset, buf)
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

/// Members as memory devices, seen through one shared power switch: `cut_after(n)` lets `n`
/// more device operations through, `crash(seed)` powers off (each member keeps a random part
/// of what it did not flush) and on again.
pub struct PowerMembers {
    pub mems: Vec<Arc<MemDevice>>,
    pub countdown: Arc<AtomicI64>,
    pub devices: Vec<Option<SharedDevice>>,
}

impl PowerMembers {
    pub fn new(members: usize, bytes: u64) -> Self {
        let mems: Vec<Arc<MemDevice>> = (0..members)
            .map(|i| Arc::new(MemDevice::new(format!("m{i}"), bytes)))
            .collect();
        let countdown = Arc::new(AtomicI64::new(i64::MAX));
        let devices = mems
            .iter()
            .map(|m| Some(Arc::new(PowerCut::new(m.clone(), countdown.clone())) as SharedDevice))
            .collect();
        Self {
            mems,
            countdown,
            devices,
        }
    }

    /// Power off now: every member keeps a random part of what it did not flush; power on.
    pub fn crash(&self, seed: u64) {
        for (i, mem) in self.mems.iter().enumerate() {
            mem.crash(seed.wrapping_mul(31).wrapping_add(i as u64));
        }
        self.countdown.store(i64::MAX, Ordering::SeqCst);
    }

    pub fn cut_after(&self, operations: i64) {
        self.countdown.store(operations, Ordering::SeqCst);
    }

    pub fn power_was_cut(&self) -> bool {
        self.countdown.load(Ordering::SeqCst) <= 0
    }

    pub fn images(&self) -> Vec<Vec<u8>> {
        self.mems.iter().map(|m| m.image()).collect()
    }
}
