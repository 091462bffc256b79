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

/// What the shared suites create: format version 4 (`v4_options`), the format `create`
/// makes. Version 3 is for tests about version 3 itself (`v3_options`).
pub fn options(layout: &str) -> CreateOptions {
    v4_options(layout)
}

/// Format version 3's stripe path with 4 KiB chunks (small stripes in small members): for
/// tests about version 3 pools (the copy out of them, their own stripe path).
/// A build refuses to create or write version-3 pools; this switches the test machinery's
/// permission on for the calling thread.
pub fn v3_options(layout: &str) -> CreateOptions {
    stripestore::testing::allow_format_3_writes(true);
    let layout: Layout = layout.parse().unwrap();
    let mut options = CreateOptions::new(layout);
    options.chunk_bytes = CHUNK_BYTES;
    options.format = stripestore::pool::FormatVersion::V3;
    options
}

/// Format version 4 near the test minimums (`small_v4`), 16 KiB chunks, a map cache of 64
/// pages: what the v4 pool suites create.
pub fn v4_options(layout: &str) -> CreateOptions {
    let layout: Layout = layout.parse().unwrap();
    let mut options = CreateOptions::new(layout);
    options.chunk_bytes = 16384;
    options.format = stripestore::pool::FormatVersion::V4(stripestore::testing::small_v4());
    options.open = v4_open_options();
    options
}

/// How the v4 pool suites open their pools: a map cache of 64 pages.
pub fn v4_open_options() -> stripestore::OpenOptions {
    stripestore::OpenOptions {
        map_cache_bytes: 64 * 16384,
        ..stripestore::OpenOptions::default()
    }
}

/// A whole check-only scrub of `pool` in the foreground (it writes nothing).
pub fn check_only_scrub(pool: &Pool) -> stripestore::pool::ScrubReport {
    pool.scrub_with(
        &stripestore::pool::ScrubOptions {
            check_only: true,
            ..stripestore::pool::ScrubOptions::default()
        },
        |_| {},
    )
    .unwrap()
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

/// Every byte of the volume against the model, as a result (for tests that must see a planted
/// bug fail): the first failed read or differing piece.
#[allow(dead_code)]
pub fn reads_as(pool: &Pool, model: &Model) -> Result<(), String> {
    let piece = 256 * 1024;
    let mut offset = 0;
    while offset < pool.size() {
        let len = piece.min(pool.size() - offset) as usize;
        let mut buf = vec![0u8; len];
        pool.read_at(offset, &mut buf)
            .map_err(|e| format!("read at {offset}: {e}"))?;
        if buf != model.read(offset, len) {
            return Err(format!("bytes differ in the piece at {offset}"));
        }
        offset += len as u64;
    }
    Ok(())
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

/// How a device's volatile cache fares when power is lost (see [`Volatile::lose_power`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLoss {
    /// Every write since the device's last flush is lost.
    DropAll,
    /// Every write since the last flush had reached the medium.
    KeepAll,
    /// [`MemDevice::crash`] with this seed: each 4 KiB sector of each unflushed write survives
    /// with probability 1/2.
    Seeded(u64),
}

impl std::fmt::Display for CacheLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheLoss::DropAll => write!(f, "unflushed writes dropped"),
            CacheLoss::KeepAll => write!(f, "unflushed writes kept"),
            CacheLoss::Seeded(seed) => write!(f, "unflushed writes kept at random (seed {seed})"),
        }
    }
}

/// A [`MemDevice`] that remembers what each unflushed write overwrote, so a power loss can
/// drop *all* unflushed writes (not only the random half [`MemDevice::crash`] drops).
#[derive(Debug)]
pub struct Volatile {
    pub mem: Arc<MemDevice>,
    undo: std::sync::Mutex<Vec<(u64, Vec<u8>)>>,
}

impl Volatile {
    pub fn new(mem: Arc<MemDevice>) -> Self {
        Self {
            mem,
            undo: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Power is lost: the unflushed writes fare as `loss` says; afterwards the live image is
    /// the durable one.
    pub fn lose_power(&self, loss: CacheLoss) {
        let mut undo = self.undo.lock().unwrap();
        match loss {
            CacheLoss::DropAll => {
                self.mem.crash(0);
                for (offset, old) in undo.drain(..).rev() {
                    self.mem.poke(offset, &old);
                }
            }
            CacheLoss::KeepAll => {
                self.mem.flush().unwrap();
                undo.clear();
            }
            CacheLoss::Seeded(seed) => {
                self.mem.crash(seed);
                undo.clear();
            }
        }
    }
}

impl Device for Volatile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.mem.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        let mut undo = self.undo.lock().unwrap();
        if offset
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= self.mem.size())
        {
            undo.push((offset, self.mem.peek(offset, buf.len())));
        }
        self.mem.write_at(offset, buf)
    }
    fn flush(&self) -> Result<(), DeviceError> {
        let mut undo = self.undo.lock().unwrap();
        self.mem.flush()?;
        undo.clear();
        Ok(())
    }
    fn size(&self) -> u64 {
        self.mem.size()
    }
    fn name(&self) -> String {
        self.mem.name()
    }
}

/// A copy-on-write view of a device image: reads see the image plus this view's own writes,
/// which never reach the image. Cheap to make many of (one per member subset checked).
#[derive(Debug)]
pub struct Snapshot {
    name: String,
    base: Arc<Vec<u8>>,
    pages: std::sync::Mutex<std::collections::HashMap<u64, Vec<u8>>>,
}

const SNAPSHOT_PAGE: u64 = 4096;

impl Snapshot {
    pub fn new(name: String, base: Arc<Vec<u8>>) -> Self {
        Self {
            name,
            base,
            pages: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn check(&self, offset: u64, len: usize) -> Result<(), DeviceError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.base.len() as u64 => Ok(()),
            _ => Err(DeviceError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{}: range {offset}+{len} beyond the device", self.name),
            ))),
        }
    }

    /// Each page-aligned piece of `offset..offset+len`: (page, offset in page, offset in the
    /// request, length).
    fn pieces(offset: u64, len: usize) -> Vec<(u64, usize, usize, usize)> {
        let mut out = Vec::new();
        let mut done = 0usize;
        while done < len {
            let at = offset + done as u64;
            let page = at / SNAPSHOT_PAGE;
            let within = (at % SNAPSHOT_PAGE) as usize;
            let take = (SNAPSHOT_PAGE as usize - within).min(len - done);
            out.push((page, within, done, take));
            done += take;
        }
        out
    }
}

impl Device for Snapshot {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.check(offset, buf.len())?;
        let pages = self.pages.lock().unwrap();
        for (page, within, at, take) in Self::pieces(offset, buf.len()) {
            let dst = &mut buf[at..at + take];
            match pages.get(&page) {
                Some(bytes) => dst.copy_from_slice(&bytes[within..within + take]),
                None => {
                    let start = (page * SNAPSHOT_PAGE) as usize + within;
                    dst.copy_from_slice(&self.base[start..start + take]);
                }
            }
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        self.check(offset, buf.len())?;
        let mut pages = self.pages.lock().unwrap();
        for (page, within, at, take) in Self::pieces(offset, buf.len()) {
            let bytes = pages.entry(page).or_insert_with(|| {
                let start = (page * SNAPSHOT_PAGE) as usize;
                let end = (start + SNAPSHOT_PAGE as usize).min(self.base.len());
                let mut bytes = self.base[start..end].to_vec();
                bytes.resize(SNAPSHOT_PAGE as usize, 0);
                bytes
            });
            bytes[within..within + take].copy_from_slice(&buf[at..at + take]);
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), DeviceError> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.base.len() as u64
    }
    fn name(&self) -> String {
        self.name.clone()
    }
}

/// Every subset of `items` with exactly `size` elements, in lexicographic order.
pub fn subsets<T: Clone>(items: &[T], size: usize) -> Vec<Vec<T>> {
    if size == 0 {
        return vec![Vec::new()];
    }
    if items.len() < size {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, first) in items.iter().enumerate() {
        for mut rest in subsets(&items[i + 1..], size - 1) {
            rest.insert(0, first.clone());
            out.push(rest);
        }
    }
    out
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

/// Run `program` with `args`, feeding it `stdin` (or nothing), and collect its output.
pub fn run_program(
    mut command: std::process::Command,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(data) = stdin {
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// The `stripestore` command, logging at `log` (`error`, `warn`, ...). Cargo builds the binary
/// for the command's own tests only: those in `tests/command/`.
pub fn stripestore_command(log: &str) -> std::process::Command {
    let Some(program) = option_env!("CARGO_BIN_EXE_stripestore") else {
        panic!("the stripestore binary is there for the tests in tests/command/ only");
    };
    let mut command = std::process::Command::new(program);
    command.env("STRIPESTORE_LOG", log);
    command
}

/// Members behind fault plans (seeds `seed`, `seed + 1`, ...): `(devices, plans)`.
pub fn faulty_members(
    mems: &[Arc<MemDevice>],
    seed: u64,
) -> (
    Vec<stripestore::device::SharedDevice>,
    Vec<Arc<parking_lot::Mutex<stripestore::device::FaultPlan>>>,
) {
    mems.iter()
        .enumerate()
        .map(|(i, m)| {
            let (faulty, plan) = stripestore::device::FaultyDevice::new(m.clone(), seed + i as u64);
            (Arc::new(faulty) as stripestore::device::SharedDevice, plan)
        })
        .unzip()
}

/// The metadata pages the newest tree sync on `mems` references (docs/FORMAT.md V4.4, V4.8),
/// found from the members' bytes alone, not through the pool: the uberblock with the highest
/// txg in ring A of any member, then every page reachable from its roots. Interior pages
/// (level 2 and up) are read from their copy 0 and decoded as 1024 pointers; leaves (level 1)
/// hold records and name no page. Returns the page numbers and how many are interior.
pub fn referenced_pages(
    mems: &[Arc<MemDevice>],
    geometry: &stripestore::geometry::Geometry,
) -> (std::collections::BTreeSet<u64>, u64) {
    use stripestore::format::v4::{PointerPage, Uberblock, PAGE_BYTES, UBERBLOCK_MAGIC};
    let ring = geometry.uberblock_rings()[0];
    let newest = mems
        .iter()
        .flat_map(|m| (0..geometry.uberblock_slots).map(move |i| m.peek(ring + i * 4096, 4096)))
        .filter(|bytes| bytes[..8] == UBERBLOCK_MAGIC[..])
        .filter_map(|bytes| {
            let mut pool = [0u8; 16];
            pool.copy_from_slice(&bytes[16..32]);
            Uberblock::decode(&bytes, pool).ok()
        })
        .max_by_key(|u| u.txg)
        .expect("a version 4 pool has an uberblock");
    let mut pages = std::collections::BTreeSet::new();
    let mut interior = 0;
    let mut stack = newest.roots.to_vec();
    while let Some(pointer) = stack.pop() {
        let Some(mpn) = pointer.address() else {
            continue;
        };
        if !pages.insert(mpn) || pointer.level() < 2 {
            continue;
        }
        interior += 1;
        let (device, offset) = geometry.page_copies(mpn).unwrap()[0];
        let bytes = mems[device.0].peek(offset, PAGE_BYTES);
        let page = PointerPage::decode(&bytes, pointer.level()).unwrap();
        stack.extend(page.pointers().iter().copied());
    }
    (pages, interior)
}

/// Of the pages [`referenced_pages`] finds, how many have a copy on data position `position`,
/// and how many pages are interior (what a rebuild of that position copies and walks).
pub fn pages_on_position(
    mems: &[Arc<MemDevice>],
    geometry: &stripestore::geometry::Geometry,
    position: usize,
) -> (u64, u64) {
    let (pages, interior) = referenced_pages(mems, geometry);
    let on_position = pages
        .iter()
        .filter(|mpn| {
            geometry
                .page_copies(**mpn)
                .unwrap()
                .iter()
                .any(|(d, _)| d.0 == position)
        })
        .count() as u64;
    (on_position, interior)
}
