//! Helpers shared by the integration tests.
#![allow(dead_code)]

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use stripestore::device::{Device, DeviceError, MemDevice};
use stripestore::testing::{mem_devices, random_bytes, shared, Model};
use stripestore::{CreateOptions, Layout, OpenOptions, Pool};

/// Every layout the issue names, with a device count that suits it (the simulation's list).
pub fn layouts() -> Vec<(&'static str, usize)> {
    stripestore::sim::LAYOUTS.to_vec()
}

/// Run `body` once per layout, each with its own seed (`base + index`, or `STRIPESTORE_SEED`),
/// printing how to replay it if the body panics.
pub fn each_layout(
    base: u64,
    name: &'static str,
    mut body: impl FnMut(&'static str, usize, &mut ChaCha8Rng, u64),
) {
    for (i, (layout, devices)) in layouts().into_iter().enumerate() {
        let seed = stripestore::testing::seed(base + i as u64);
        let _guard = stripestore::testing::SeedGuard { seed, name };
        let mut rng = stripestore::testing::rng(seed);
        body(layout, devices, &mut rng, seed);
    }
}

pub const DEVICE_BYTES: u64 = 4 << 20;
pub const CHUNK_BYTES: u64 = 4096;

pub fn options(layout: &str) -> CreateOptions {
    let layout: Layout = layout.parse().unwrap();
    let mut options = CreateOptions::new(layout);
    options.chunk_bytes = CHUNK_BYTES;
    options
}

/// A fresh pool on in-memory devices.
pub fn mem_pool(layout: &str, devices: usize) -> (Pool, Vec<Arc<MemDevice>>) {
    let mems = mem_devices(devices, DEVICE_BYTES);
    let pool = Pool::create(shared(&mems), vec![], &options(layout)).unwrap();
    (pool, mems)
}

pub fn reopen(mems: &[Arc<MemDevice>]) -> Pool {
    Pool::open(shared(mems), &OpenOptions::default()).unwrap()
}

/// Random writes of random sizes and offsets, mirrored into the model.
pub fn random_writes(pool: &Pool, model: &mut Model, rng: &mut ChaCha8Rng, count: usize) {
    let size = pool.size();
    for _ in 0..count {
        let len = match rng.gen_range(0..4) {
            0 => rng.gen_range(1..512),
            1 => rng.gen_range(1..20_000),
            2 => pool.geometry().stripe_data_bytes() as usize,
            _ => rng.gen_range(1..100_000),
        };
        let len = len.min(size as usize);
        let offset = if rng.gen_bool(0.3) {
            // stripe-aligned, to exercise the full-stripe path
            let stripe = pool.geometry().stripe_data_bytes();
            rng.gen_range(0..=(size - len as u64) / stripe) * stripe
        } else {
            rng.gen_range(0..=size - len as u64)
        };
        let offset = offset.min(size - len as u64);
        let data = random_bytes(rng, len);
        pool.write_at(offset, &data).unwrap();
        model.write(offset, &data);
    }
}

/// Read the whole volume and compare with the model, in pieces so a mismatch is located.
pub fn verify(pool: &Pool, model: &Model) {
    let size = pool.size();
    let piece = 256 * 1024;
    let mut offset = 0;
    while offset < size {
        let len = piece.min(size - offset) as usize;
        let mut buf = vec![0u8; len];
        pool.read_at(offset, &mut buf)
            .unwrap_or_else(|e| panic!("read at {offset} failed: {e}"));
        if buf != model.read(offset, len) {
            let first = buf
                .iter()
                .zip(model.read(offset, len))
                .position(|(a, b)| a != b)
                .unwrap();
            panic!(
                "volume differs from the model at byte {}",
                offset + first as u64
            );
        }
        offset += len as u64;
    }
}

/// Counts the bytes read through it (to prove what a read or a resumed scrub fetches).
#[derive(Debug)]
pub struct CountingDevice {
    pub inner: stripestore::device::SharedDevice,
    pub read: Arc<AtomicU64>,
}

impl Device for CountingDevice {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
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

/// Where `tool` is installed: on `PATH`, or in /usr/sbin or /sbin (not on every user's PATH).
pub fn find_tool(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// Whether `test` can go on: every tool is installed, or a test that needs it prints a
/// `SKIPPED` line and returns. With `STRIPESTORE_REQUIRE_TOOLS=1` (CI, which installs them all)
/// a missing tool fails the test instead.
pub fn tools_or_skip(test: &str, tools: &[&str]) -> bool {
    match tools.iter().find(|tool| find_tool(tool).is_none()) {
        None => true,
        Some(missing) => {
            skip_or_fail(test, &format!("{missing} is not installed"));
            false
        }
    }
}

/// Print `SKIPPED test: why`, or fail with it under `STRIPESTORE_REQUIRE_TOOLS=1`.
pub fn skip_or_fail(test: &str, why: &str) {
    assert!(
        std::env::var("STRIPESTORE_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "{test}: {why}, and STRIPESTORE_REQUIRE_TOOLS=1"
    );
    println!("SKIPPED {test}: {why}");
}
