//! Scrub and rebuild of a version-4 volume on segments (`Volume::scrub`,
//! `Volume::rebuild_device`; docs/FORMAT.md V4.5, V4.13 step 8), checked against an
//! independent model of the blocks written and of the rows they make:
//! * rot at rest, lost writes, misdirected writes and EIO in data shard-blocks and in
//!   metadata page copies are found by a scrub with exact tallies and repaired to the exact
//!   bytes, in every layout (narrow rows included); a check-only scrub finds the same and
//!   writes no byte (its members refuse writes); lost, torn and misdirected row writes made
//!   by the fault injector (`FaultyDevice`) are found and repaired the same way;
//! * damage beyond the tolerance is reported as unrepairable naming each place, and the rest
//!   of the volume still reads exactly;
//! * a lost member rebuilt onto a blank replacement then serves reads with `tolerance` other
//!   members gone; its page copies equal the lost member's; a rotten source is not copied;
//! * free-pending and freed segments are walked by neither scrub nor rebuild;
//! * a rebuild reads K sources per cell it rebuilds (Reed-Solomon) or one copy (copies), and
//!   more only for a row whose first sources do not verify;
//! * rebuild bytes follow the allocated space; a rebuild stopped after a segment resumes from
//!   the watermark it reported and ends with the same replacement;
//! * an absent member's places are counted, not checked; a rebuild with no device in the
//!   position and a repairing scrub or rebuild of a read-only volume are refused before any
//!   I/O;
//! * the planted `rebuild_skip_verify` and `scrub_skip_crc` are caught;
//! * a 16 TiB volume on sparse files scrubs its few written rows in proportion to them;
//! * map pages only a recovery point names are scrubbed (found, repaired, counted once) and
//!   rebuilt: the recovery point reads back from a replacement and the fewest others.

use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use stripestore::device::{
    DeviceError, FaultPlan, FaultyDevice, FileDevice, MemDevice, SharedDevice,
};
use stripestore::geometry::{Geometry, Layout};
use stripestore::meta::MapOptions;
use stripestore::types::{ShardIndex, SlotId};
use stripestore::volume::{
    Damage, RebuildOptions, RebuildReport, Volume, VolumeOptions, VolumeScrubOptions,
    VolumeScrubReport, BLOCK_BYTES,
};
use stripestore::Error;
#[path = "common/meta.rs"]
mod meta;
use meta::Hooked;

const POOL: [u8; 16] = [0x5c; 16];
const TIMELINE: u64 = 0x5c00;
const DEVICE_BYTES: u64 = 16 << 20;
const B: usize = BLOCK_BYTES;
const PAGE: usize = 16384;

/// The layouts the volume tests use, and rs with more members than its width (a slot then
/// leaves some members out).
const LAYOUTS: [(&str, usize); 5] = [
    ("rs:4+2", 6),
    ("mirror:2", 2),
    ("raid10:2", 4),
    ("rs:2+1", 3),
    ("rs:2+1", 5),
];

fn options() -> VolumeOptions {
    VolumeOptions {
        map: MapOptions {
            depth: 2,
            cache_bytes: 64 * PAGE,
            record_max: Some(4096),
            segment_slots: 4,
            ..MapOptions::default()
        },
        plan_window: 3,
        ..VolumeOptions::default()
    }
}

/// Members as memory devices, each behind a fault plan (EIO, rot at rest) and a hook that
/// counts reads and writes and refuses writes while `refuse` is set.
struct Rig {
    layout: String,
    geometry: Geometry,
    mems: Vec<Arc<MemDevice>>,
    plans: Vec<Arc<Mutex<FaultPlan>>>,
    devices: Vec<Option<SharedDevice>>,
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
    refuse: Arc<AtomicBool>,
}

impl Rig {
    fn new(layout: &str, members: usize) -> Self {
        let parsed: Layout = layout.parse().unwrap();
        let geometry = Geometry::new_v4(parsed, members, 16384, DEVICE_BYTES, 4, 16384).unwrap();
        let read = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let refuse = Arc::new(AtomicBool::new(false));
        let mut mems = Vec::new();
        let mut plans = Vec::new();
        let mut devices = Vec::new();
        for i in 0..members {
            let mem = Arc::new(MemDevice::new(format!("m{i}"), DEVICE_BYTES));
            let (faulty, plan) = FaultyDevice::new(mem.clone(), i as u64);
            devices.push(Some(Self::hooked(
                Arc::new(faulty),
                &read,
                &written,
                &refuse,
            )));
            mems.push(mem);
            plans.push(plan);
        }
        Self {
            layout: layout.to_string(),
            geometry,
            mems,
            plans,
            devices,
            read,
            written,
            refuse,
        }
    }

    fn hooked(
        inner: SharedDevice,
        read: &Arc<AtomicU64>,
        written: &Arc<AtomicU64>,
        refuse: &Arc<AtomicBool>,
    ) -> SharedDevice {
        let (read, written, refuse) = (read.clone(), written.clone(), refuse.clone());
        Hooked::shared(
            inner,
            Some(Arc::new(move |_, len| {
                read.fetch_add(len as u64, Ordering::SeqCst);
            })),
            Some(Arc::new(move |_, bytes: &[u8]| {
                written.fetch_add(bytes.len() as u64, Ordering::SeqCst);
                if refuse.load(Ordering::SeqCst) {
                    return Err(DeviceError::Io(std::io::Error::other("writes refused")));
                }
                Ok(())
            })),
        )
    }

    fn create(&self, options: &VolumeOptions) -> Volume {
        Volume::create(&self.devices, POOL, &self.geometry, TIMELINE, options).unwrap()
    }

    fn tolerance(&self) -> usize {
        self.geometry.tolerance()
    }

    fn images(&self) -> Vec<Vec<u8>> {
        self.mems.iter().map(|m| m.image()).collect()
    }

    /// Cells a row of `n` data blocks writes: its data blocks and parity (rs), or every copy
    /// of its data blocks (mirror, raid10).
    fn cells_of_row(&self, n: usize) -> u64 {
        let k = self.geometry.data_chunks();
        let width = self.geometry.width();
        if self.layout.starts_with("rs") {
            (n + width - k) as u64
        } else {
            (n * (width / k)) as u64
        }
    }

    /// Every written cell of the row holding block `key`, as `(device, offset)`: the block's
    /// own (or its first copy) first, then the others in shard order.
    fn row_cells(&self, volume: &Volume, key: u64) -> Vec<(usize, u64)> {
        let pointer = volume.map().get(&self.devices, key).unwrap();
        let pbn = pointer.address().expect("a written block");
        let k = self.geometry.data_chunks() as u64;
        let rows = self.geometry.chunk_bytes / B as u64;
        let slot = pbn / (k * rows);
        let row = (pbn % (k * rows)) / k;
        let chunk = (pbn % k) as usize;
        let mut shards: Vec<usize> = (0..self.geometry.width()).collect();
        shards.sort_by_key(|s| self.geometry.shard_data_chunk(ShardIndex(*s)) != Some(chunk));
        shards
            .into_iter()
            .map(|s| {
                let (device, at) = self.geometry.shard_location(SlotId(slot), ShardIndex(s));
                (device.0, at + row * B as u64)
            })
            .collect()
    }
}

fn pattern(key: u64, version: u64) -> Vec<u8> {
    meta::block_pattern(key, version)
}

/// What the test wrote: each block's newest bytes, the cells every row wrote, and each
/// write's first key with the data blocks of its last row (to find narrow rows).
#[derive(Default)]
struct Model {
    blocks: BTreeMap<u64, Vec<u8>>,
    cells: u64,
    rows: u64,
}

impl Model {
    /// Write `count` blocks from `first` (whole blocks: rows of K, the last one narrow).
    fn write(&mut self, rig: &Rig, volume: &mut Volume, first: u64, count: u64, version: u64) {
        let bytes: Vec<u8> = (first..first + count)
            .flat_map(|key| pattern(key, version))
            .collect();
        volume
            .write(&rig.devices, first * B as u64, &bytes)
            .unwrap();
        for key in first..first + count {
            self.blocks.insert(key, pattern(key, version));
        }
        let k = rig.geometry.data_chunks() as u64;
        for start in (0..count).step_by(k as usize) {
            let n = k.min(count - start) as usize;
            self.cells += rig.cells_of_row(n);
            self.rows += 1;
        }
    }

    /// Every block reads exactly its newest bytes (unwritten ones zeros) through `devices`.
    fn check(&self, volume: &Volume, devices: &[Option<SharedDevice>]) -> Result<(), String> {
        let span = self.blocks.keys().last().map_or(0, |k| k + 2);
        for key in 0..span {
            let mut found = vec![0u8; B];
            volume
                .read(devices, key * B as u64, &mut found)
                .map_err(|e| format!("block {key}: {e}"))?;
            let expected = self.blocks.get(&key).cloned().unwrap_or_else(|| vec![0; B]);
            if found != expected {
                return Err(format!("block {key}: wrong bytes"));
            }
        }
        Ok(())
    }
}

/// A volume with rows in several segments: full and narrow rows, rows from before the last
/// sync (in the slot summary) and after it (noted in memory), overwritten blocks, blocks in
/// several map leaves. Flushed.
fn filled(rig: &Rig, options: &VolumeOptions) -> (Volume, Model) {
    let mut volume = rig.create(options);
    let mut model = Model::default();
    let k = rig.geometry.data_chunks() as u64;
    let span = volume.volume_bytes() / B as u64;
    assert!(span > 2700, "{}: a volume of {span} blocks", rig.layout);
    model.write(rig, &mut volume, 0, 12 * k + 1, 1);
    model.write(rig, &mut volume, 1030, 1, 1);
    model.write(rig, &mut volume, 2050, k + 1, 1);
    volume.flush(&rig.devices).unwrap();
    volume.sync(&rig.devices).unwrap();
    model.write(rig, &mut volume, 5, 1, 2);
    model.write(rig, &mut volume, 2600, 2 * k, 1);
    volume.flush(&rig.devices).unwrap();
    (volume, model)
}

/// Keys in distinct rows of the fill (each in a row of its own write).
fn keys_in_distinct_rows(rig: &Rig) -> Vec<u64> {
    let k = rig.geometry.data_chunks() as u64;
    vec![0, 2 * k, 4 * k, 1030, 2050, 2600, 6 * k, 12 * k]
}

fn scrub(volume: &Volume, rig: &Rig, check_only: bool) -> VolumeScrubReport {
    volume
        .scrub(&rig.devices, &VolumeScrubOptions { check_only })
        .unwrap()
}

/// One of each data fault, in distinct rows, each within the tolerance: rot at rest (a bit),
/// a lost write (the place keeps stale zeros), a misdirected write (one row's cell lands on
/// another row's place, its own place keeps stale zeros: two bad cells) and an EIO. Returns
/// the bad places.
fn damage_data(rig: &Rig, volume: &Volume) -> BTreeSet<(usize, u64)> {
    let keys = keys_in_distinct_rows(rig);
    let cell = |i: usize| rig.row_cells(volume, keys[i])[0];
    let mut bad = BTreeSet::new();
    let (d, at) = cell(0);
    rig.plans[d].lock().rot_at_rest(at + 100, 3);
    bad.insert((d, at));
    let (d, at) = cell(1);
    rig.mems[d].poke(at, &[0u8; B]);
    bad.insert((d, at));
    let (from_d, from_at) = cell(2);
    let (to_d, to_at) = cell(3);
    let bytes = rig.mems[from_d].peek(from_at, B);
    rig.mems[to_d].poke(to_at, &bytes);
    rig.mems[from_d].poke(from_at, &[0u8; B]);
    bad.insert((from_d, from_at));
    bad.insert((to_d, to_at));
    // The last row's parity (rs) or second copy: not the block's own place.
    let cells = rig.row_cells(volume, keys[5]);
    let (d, at) = cells[cells.len() - 1];
    rig.plans[d].lock().add_bad_read_range(at..at + B as u64);
    bad.insert((d, at));
    bad
}

#[test]
fn scrub_finds_and_repairs_every_data_fault_with_exact_tallies_and_check_only_writes_nothing() {
    for (layout, members) in LAYOUTS {
        let rig = Rig::new(layout, members);
        let (volume, model) = filled(&rig, &options());
        let clean = scrub(&volume, &rig, true);
        assert_eq!(
            clean.shard_blocks_checked, model.cells,
            "{layout}: {clean:?}"
        );
        assert_eq!(clean.rows, model.rows, "{layout}");
        assert_eq!(clean.shard_blocks_bad, 0, "{layout}");
        assert!(clean.unrepairable.is_empty(), "{layout}");
        let intact = rig.images();
        let bad = damage_data(&rig, &volume);
        let damaged = rig.images();

        // Check-only: finds every bad place, writes nothing (the members refuse writes).
        rig.refuse.store(true, Ordering::SeqCst);
        let before = rig.written.load(Ordering::SeqCst);
        let found = scrub(&volume, &rig, true);
        rig.refuse.store(false, Ordering::SeqCst);
        assert_eq!(
            rig.written.load(Ordering::SeqCst),
            before,
            "{layout}: a check-only scrub wrote"
        );
        assert!(rig.images() == damaged, "{layout}");
        assert_eq!(found.shard_blocks_checked, model.cells, "{layout}");
        assert_eq!(
            found.shard_blocks_bad,
            bad.len() as u64,
            "{layout}: {found:?}"
        );
        assert_eq!(
            (
                found.shard_blocks_repaired,
                found.shard_blocks_unrepairable,
                found.bytes_written
            ),
            (0, 0, 0),
            "{layout}"
        );

        // Repair: the same places, every one rewritten with its exact bytes.
        let repaired = scrub(&volume, &rig, false);
        assert_eq!(repaired.shard_blocks_bad, bad.len() as u64, "{layout}");
        assert_eq!(repaired.shard_blocks_repaired, bad.len() as u64, "{layout}");
        assert_eq!(
            repaired.shard_blocks_unrepairable, 0,
            "{layout}: {repaired:?}"
        );
        assert_eq!(repaired.bytes_written, (bad.len() * B) as u64, "{layout}");
        assert!(
            rig.images() == intact,
            "{layout}: the repair did not restore the exact bytes"
        );
        let again = scrub(&volume, &rig, true);
        assert_eq!(
            again.shard_blocks_bad, 0,
            "{layout}: rot at rest or EIO left behind"
        );
        model.check(&volume, &rig.devices).unwrap();
        // With the pages cached, what the report counts is what the members were asked for.
        let start = rig.read.load(Ordering::SeqCst);
        let counted = scrub(&volume, &rig, true);
        assert_eq!(
            rig.read.load(Ordering::SeqCst) - start,
            counted.bytes_read,
            "{layout}: bytes read"
        );
    }
}

/// One of each metadata fault on distinct referenced pages, one copy each (within every
/// layout's tolerance): rot, lost, misdirected (two pages), EIO. The bad places.
fn damage_pages(rig: &Rig, volume: &Volume) -> BTreeSet<(usize, u64)> {
    let (pages, _) = volume.map().page_refs(&rig.devices).unwrap();
    let mut mpns: Vec<u64> = pages.iter().filter_map(|p| p.mpn()).collect();
    mpns.sort_unstable();
    assert!(mpns.len() >= 5, "{}: {} pages", rig.layout, mpns.len());
    let copy = |i: usize, c: usize| {
        let (d, at) = rig.geometry.page_copies(mpns[i]).unwrap()[c];
        (d.0, at)
    };
    let mut bad = BTreeSet::new();
    let (d, at) = copy(0, 0);
    rig.plans[d].lock().rot_at_rest(at + 5000, 6);
    bad.insert((d, at));
    let (d, at) = copy(1, 1);
    rig.mems[d].poke(at, &[0u8; PAGE]);
    bad.insert((d, at));
    let (from_d, from_at) = copy(2, 0);
    let (to_d, to_at) = copy(3, 1);
    let bytes = rig.mems[from_d].peek(from_at, PAGE);
    rig.mems[to_d].poke(to_at, &bytes);
    rig.mems[from_d].poke(from_at, &[0u8; PAGE]);
    bad.insert((from_d, from_at));
    bad.insert((to_d, to_at));
    let (d, at) = copy(4, 0);
    rig.plans[d].lock().add_bad_read_range(at..at + PAGE as u64);
    bad.insert((d, at));
    bad
}

#[test]
fn scrub_finds_and_repairs_every_page_copy_fault_and_check_only_writes_nothing() {
    for (layout, members) in LAYOUTS {
        let rig = Rig::new(layout, members);
        let (mut volume, model) = filled(&rig, &options());
        volume.sync(&rig.devices).unwrap();
        let clean = scrub(&volume, &rig, true);
        let copies = rig.geometry.metadata_copies() as u64;
        assert_eq!(clean.page_copies_checked, clean.pages * copies, "{layout}");
        assert_eq!(clean.page_copies_bad, 0, "{layout}");
        assert!(clean.metadata_segments >= 1, "{layout}");
        let intact = rig.images();
        let bad = damage_pages(&rig, &volume);
        let damaged = rig.images();

        rig.refuse.store(true, Ordering::SeqCst);
        let before = rig.written.load(Ordering::SeqCst);
        let found = scrub(&volume, &rig, true);
        rig.refuse.store(false, Ordering::SeqCst);
        assert_eq!(
            rig.written.load(Ordering::SeqCst),
            before,
            "{layout}: a check-only scrub wrote"
        );
        assert!(rig.images() == damaged, "{layout}");
        assert_eq!(
            found.page_copies_bad,
            bad.len() as u64,
            "{layout}: {found:?}"
        );
        assert_eq!(found.shard_blocks_bad, 0, "{layout}");
        assert_eq!(
            (found.page_copies_repaired, found.page_copies_unrepairable),
            (0, 0)
        );

        let repaired = scrub(&volume, &rig, false);
        assert_eq!(repaired.page_copies_bad, bad.len() as u64, "{layout}");
        assert_eq!(
            repaired.page_copies_repaired,
            bad.len() as u64,
            "{layout}: {repaired:?}"
        );
        assert_eq!(
            repaired.bytes_written,
            (bad.len() * PAGE) as u64,
            "{layout}"
        );
        assert!(
            rig.images() == intact,
            "{layout}: page copies not restored exactly"
        );
        assert_eq!(scrub(&volume, &rig, true).page_copies_bad, 0, "{layout}");
        // A fresh open reads the repaired pages (nothing cached).
        drop(volume);
        let reopened =
            Volume::open(&rig.devices, POOL, &rig.geometry, TIMELINE, &options()).unwrap();
        model.check(&reopened, &rig.devices).unwrap();
        drop(reopened);

        // A bad copy of a slot-summary leaf, met by a check-only scrub of a volume that has
        // not cached it: still no write (the summary is read without healing).
        let (pages, _) = {
            let volume =
                Volume::open(&rig.devices, POOL, &rig.geometry, TIMELINE, &options()).unwrap();
            volume.map().page_refs(&rig.devices).unwrap()
        };
        let leaf = pages
            .iter()
            .find(|p| p.tree.id() == 1 && p.level == 1)
            .expect("a slot-summary leaf");
        let places = rig.geometry.page_copies(leaf.mpn().unwrap()).unwrap();
        let (d, at) = places[0];
        rig.mems[d.0].poke(at, &[0x5a; PAGE]);
        let volume = Volume::open(&rig.devices, POOL, &rig.geometry, TIMELINE, &options()).unwrap();
        rig.refuse.store(true, Ordering::SeqCst);
        let before = rig.written.load(Ordering::SeqCst);
        let found = scrub(&volume, &rig, true);
        rig.refuse.store(false, Ordering::SeqCst);
        assert_eq!(
            rig.written.load(Ordering::SeqCst),
            before,
            "{layout}: a check-only scrub healed a summary page"
        );
        assert_eq!(found.page_copies_bad, 1, "{layout}: {found:?}");
        assert_eq!(found.shard_blocks_checked, model.cells, "{layout}");
        // Every copy of it lost: its slots' rows cannot be known, the rest is scrubbed.
        for (d, at) in &places {
            rig.mems[d.0].poke(*at, &[0x5a; PAGE]);
        }
        let volume = Volume::open(&rig.devices, POOL, &rig.geometry, TIMELINE, &options()).unwrap();
        let found = scrub(&volume, &rig, false);
        assert!(found.slots_unknown > 0, "{layout}: {found:?}");
        assert_eq!(
            found.page_copies_unrepairable,
            places.len() as u64,
            "{layout}"
        );
        assert_eq!(found.unrepairable.len(), places.len(), "{layout}");
    }
}

#[test]
fn damage_beyond_the_tolerance_is_reported_unrepairable_by_place_and_the_rest_reads() {
    for (layout, members) in LAYOUTS {
        let rig = Rig::new(layout, members);
        let (volume, model) = filled(&rig, &options());
        let key = 2 * rig.geometry.data_chunks() as u64;
        // Data: tolerance + 1 places of one row (every copy of the block for mirrors).
        let cells = rig.row_cells(&volume, key);
        let copies = rig.geometry.width() / rig.geometry.data_chunks();
        let lost: BTreeSet<(usize, u64)> = if layout.starts_with("rs") {
            cells[..=rig.tolerance()].iter().copied().collect()
        } else {
            cells[..copies].iter().copied().collect()
        };
        for (d, at) in &lost {
            rig.mems[*d].poke(*at, &[0x3c; B]);
        }
        let report = scrub(&volume, &rig, false);
        let named: BTreeSet<(usize, u64)> = report
            .unrepairable
            .iter()
            .map(|d| match d {
                Damage::ShardBlock { device, offset, .. } => (*device, *offset),
                Damage::PageCopy { .. } => panic!("{layout}: a page reported: {d:?}"),
            })
            .collect();
        assert_eq!(named, lost, "{layout}: {report:?}");
        assert_eq!(report.shard_blocks_bad, lost.len() as u64, "{layout}");
        assert_eq!(
            report.shard_blocks_unrepairable,
            lost.len() as u64,
            "{layout}"
        );
        assert_eq!(report.shard_blocks_repaired, 0, "{layout}");
        let mut buf = vec![0u8; B];
        match volume.read(&rig.devices, key * B as u64, &mut buf) {
            Err(Error::UnrecoverableBlock { .. }) => {}
            other => panic!("{layout}: expected UnrecoverableBlock, got {other:?}"),
        }
        let mut rest = Model {
            blocks: model.blocks.clone(),
            ..Model::default()
        };
        // Every block whose own cell (or a copy) survives still reads exactly.
        let k = rig.geometry.data_chunks() as u64;
        let row_first = key - key % k;
        for other in row_first..row_first + k {
            let own = rig.row_cells(&volume, other)[0];
            if lost.contains(&own) {
                rest.blocks.remove(&other);
            }
        }
        assert!(!rest.blocks.contains_key(&key));
        for (other, bytes) in &rest.blocks {
            volume
                .read(&rig.devices, other * B as u64, &mut buf)
                .unwrap_or_else(|e| panic!("{layout}: block {other}: {e}"));
            assert_eq!(&buf, bytes, "{layout}: block {other}");
        }

        // Metadata: every copy of one map leaf.
        let rig = Rig::new(layout, members);
        let (mut volume, model) = filled(&rig, &options());
        volume.sync(&rig.devices).unwrap();
        let (pages, _) = volume.map().page_refs(&rig.devices).unwrap();
        let leaf = pages
            .iter()
            .find(|p| p.tree.id() == 0 && p.level == 1 && p.first_key == 1024)
            .expect("the leaf of keys 1024..2048");
        let mpn = leaf.mpn().unwrap();
        let places: BTreeSet<(usize, u64)> = rig
            .geometry
            .page_copies(mpn)
            .unwrap()
            .into_iter()
            .map(|(d, at)| (d.0, at))
            .collect();
        for (d, at) in &places {
            rig.mems[*d].poke(*at, &[0x99; PAGE]);
        }
        let report = scrub(&volume, &rig, false);
        let named: BTreeSet<(usize, u64)> = report
            .unrepairable
            .iter()
            .map(|d| match d {
                Damage::PageCopy {
                    mpn: m,
                    tree,
                    level,
                    device,
                    offset,
                    ..
                } => {
                    assert_eq!((*m, *tree, *level), (mpn, 0, 1), "{layout}");
                    (*device, *offset)
                }
                Damage::ShardBlock { .. } => panic!("{layout}: a shard-block reported: {d:?}"),
            })
            .collect();
        assert_eq!(named, places, "{layout}");
        assert_eq!(report.page_copies_unrepairable, places.len() as u64);
        drop(volume);
        let reopened =
            Volume::open(&rig.devices, POOL, &rig.geometry, TIMELINE, &options()).unwrap();
        for (key, bytes) in &model.blocks {
            let read = reopened.read(&rig.devices, key * B as u64, &mut buf);
            if (1024..2048).contains(key) {
                assert!(
                    matches!(read, Err(Error::MetadataLost { .. })),
                    "{layout}: block {key}: {read:?}"
                );
            } else {
                read.unwrap_or_else(|e| panic!("{layout}: block {key}: {e}"));
                assert_eq!(&buf, bytes, "{layout}: block {key}");
            }
        }
    }
}

/// Replace member `position` with a blank device, rebuild onto it, and return the report,
/// the lost member's image and the replacement.
fn lose_and_rebuild(
    rig: &mut Rig,
    volume: &Volume,
    position: usize,
    from: u64,
    stop_after: Option<u64>,
) -> (RebuildReport, Vec<u8>, Arc<MemDevice>) {
    let (lost, blank) = lose(rig, position);
    let report = rebuild(rig, volume, position, from, stop_after);
    (report, lost, blank)
}

/// Replace member `position` with a blank device: the lost member's image and the blank.
fn lose(rig: &mut Rig, position: usize) -> (Vec<u8>, Arc<MemDevice>) {
    let lost = rig.mems[position].image();
    let blank = Arc::new(MemDevice::new(format!("spare{position}"), DEVICE_BYTES));
    rig.devices[position] = Some(Rig::hooked(
        blank.clone(),
        &rig.read,
        &rig.written,
        &rig.refuse,
    ));
    rig.mems[position] = blank.clone();
    (lost, blank)
}

fn rebuild(
    rig: &Rig,
    volume: &Volume,
    position: usize,
    from: u64,
    stop_after: Option<u64>,
) -> RebuildReport {
    rebuild_batched(rig, volume, position, (from, 1), stop_after)
}

/// A rebuild from segment `from` with `at_once` data segments per batch, stopped when the
/// callback has heard of `stop_after` segments.
fn rebuild_batched(
    rig: &Rig,
    volume: &Volume,
    position: usize,
    (from, at_once): (u64, usize),
    stop_after: Option<u64>,
) -> RebuildReport {
    let mut seen = 0;
    volume
        .rebuild_device(
            &rig.devices,
            &RebuildOptions {
                position,
                from_segment: from,
                old: None,
                min_birth: 0,
                segments_at_once: at_once,
            },
            &mut |progress| {
                seen += 1;
                assert!(progress.segments_done <= progress.segments_total);
                stop_after.is_none_or(|n| seen < n)
            },
        )
        .unwrap()
}

/// Every member but `position` and `tolerance` others that serve it is absent: the reads
/// must come from the replacement.
fn without_others(rig: &Rig, position: usize) -> Vec<Option<SharedDevice>> {
    let mut devices = rig.devices.clone();
    let mut gone = 0;
    for (i, device) in devices.iter_mut().enumerate() {
        if i != position && gone < rig.tolerance() {
            *device = None;
            gone += 1;
        }
    }
    devices
}

#[test]
fn a_member_rebuilt_onto_a_blank_replacement_serves_reads_with_tolerance_others_gone() {
    for (layout, members) in LAYOUTS {
        for position in [0, members - 1] {
            // Flushed, not synced: the newest rows are known from the log, not the summary.
            let mut rig = Rig::new(layout, members);
            let (volume, model) = filled(&rig, &options());
            let (pages, _) = volume.map().page_refs(&rig.devices).unwrap();
            let written_before = rig.written.load(Ordering::SeqCst);
            let (report, lost, spare) = lose_and_rebuild(&mut rig, &volume, position, 0, None);
            assert!(report.unrepairable.is_empty(), "{layout}: {report:?}");
            assert_eq!(report.resume_from, None);
            assert_eq!(report.segments_done, report.segments_total);
            assert_eq!(
                rig.written.load(Ordering::SeqCst) - written_before,
                report.bytes_written,
                "{layout}: bytes written"
            );
            // Every 4 KiB the rebuild wrote holds the lost member's bytes.
            let image = spare.image();
            for at in (0..image.len()).step_by(B) {
                if image[at..at + B] != [0u8; B][..] {
                    assert!(image[at..at + B] == lost[at..at + B], "{layout}: byte {at}");
                }
            }
            // Every page copy on the position is the lost member's.
            let mut copies = 0;
            for page in &pages {
                for (d, at) in rig.geometry.page_copies(page.mpn().unwrap()).unwrap() {
                    if d.0 == position {
                        let at = at as usize;
                        assert!(
                            image[at..at + PAGE] == lost[at..at + PAGE],
                            "{layout}: page copy at {at}"
                        );
                        copies += 1;
                    }
                }
            }
            assert_eq!(report.page_copies_written, copies, "{layout}");
            // Data: the replacement and the fewest others serve every block exactly.
            model
                .check(&volume, &without_others(&rig, position))
                .unwrap_or_else(|e| panic!("{layout} position {position}: {e}"));
            // Metadata: a volume opened afresh (read-only, nothing cached but what the open
            // reads) finds every map page it needs on the replacement and the fewest others.
            let mut read_only = options();
            read_only.map.read_only = true;
            let fresh =
                Volume::open(&rig.devices, POOL, &rig.geometry, TIMELINE, &read_only).unwrap();
            model
                .check(&fresh, &without_others(&rig, position))
                .unwrap_or_else(|e| panic!("{layout} position {position}, fresh: {e}"));
            drop(fresh);
            // Rows written after the rebuild reach the replacement too.
            let mut model = model;
            let mut volume = volume;
            model.write(&rig, &mut volume, 700, 3, 4);
            volume.flush(&rig.devices).unwrap();
            model
                .check(&volume, &without_others(&rig, position))
                .unwrap_or_else(|e| panic!("{layout} position {position}: {e}"));
        }
    }
}

/// A rebuild reads what one reconstruction needs: K shard-blocks per cell of a full row for
/// Reed-Solomon, the one sibling copy for copies (raid10 included), never every other cell
/// of the row; a rotten source among the first read makes its row read the rest.
#[test]
fn a_rebuild_reads_k_sources_per_cell_and_the_rest_only_for_a_row_that_needs_them() {
    for (layout, members) in LAYOUTS {
        let mut rig = Rig::new(layout, members);
        let mut volume = rig.create(&options());
        let mut model = Model::default();
        let k = rig.geometry.data_chunks() as u64;
        // Full rows only, one write each.
        for row in 0..24 {
            model.write(&rig, &mut volume, row * k * 3, k, 1);
        }
        volume.flush(&rig.devices).unwrap();
        volume.sync(&rig.devices).unwrap();
        let per_cell = if layout.starts_with("rs") { k } else { 1 };
        let position = members - 1;
        let read_before = rig.read.load(Ordering::SeqCst);
        let (report, _, _) = lose_and_rebuild(&mut rig, &volume, position, 0, None);
        assert!(report.unrepairable.is_empty(), "{layout}: {report:?}");
        assert!(report.shard_blocks_written > 0, "{layout}: {report:?}");
        assert_eq!(
            report.source_blocks_read,
            per_cell * report.shard_blocks_written,
            "{layout}: sources read for {} cells",
            report.shard_blocks_written
        );
        assert!(
            rig.read.load(Ordering::SeqCst) - read_before >= report.source_blocks_read * B as u64,
            "{layout}: the count is of reads the members saw"
        );
        model
            .check(&volume, &without_others(&rig, position))
            .unwrap_or_else(|e| panic!("{layout}: {e}"));
        // Within the tolerance, a rotten source first read: its row reads the others.
        if rig.tolerance() < 2 {
            continue;
        }
        let cells = rig.row_cells(&volume, 0);
        let (lost, _) = cells[cells.len() - 1];
        let rotten = cells.iter().find(|(d, _)| *d != lost).copied().unwrap();
        rig.mems[rotten.0].poke(rotten.1 + 8, &[0xee; 8]);
        let (again, _, _) = lose_and_rebuild(&mut rig, &volume, lost, 0, None);
        assert!(again.unrepairable.is_empty(), "{layout}: {again:?}");
        assert_eq!(again.sources_bad, 1, "{layout}: {again:?}");
        let width = rig.geometry.width() as u64;
        assert_eq!(
            again.source_blocks_read,
            per_cell * again.shard_blocks_written + (width - 1),
            "{layout}: one row read again, every cell but the lost one"
        );
        model
            .check(&volume, &without_others(&rig, lost))
            .unwrap_or_else(|e| panic!("{layout}: {e}"));
    }
}

/// Rows known only from the replayed log (written and flushed after the last sync, then the
/// volume reopened: their segments are free in the durable usage table and were opened by
/// another process) are scrubbed and rebuilt like any others: a scrub after the reopen
/// checks as many rows as before it, and a member rebuilt after the reopen serves every block
/// with `tolerance` others gone. Found by the v4 pool simulation (seed 5004: a replace after
/// a reopen left rows off the new device).
#[test]
fn rows_known_only_from_the_replayed_log_are_scrubbed_and_rebuilt() {
    for (layout, members) in LAYOUTS {
        let mut rig = Rig::new(layout, members);
        let (mut volume, mut model) = filled(&rig, &options());
        // Enough rows after the last sync to open data segments it never recorded.
        model.write(&rig, &mut volume, 100, 200, 3);
        volume.flush(&rig.devices).unwrap();
        let rows_before = scrub(&volume, &rig, true).rows;
        drop(volume);
        let volume = Volume::open(&rig.devices, POOL, &rig.geometry, TIMELINE, &options()).unwrap();
        let rows_after = scrub(&volume, &rig, true).rows;
        assert_eq!(
            rows_after, rows_before,
            "{layout}: rows scrubbed after the reopen"
        );
        let position = members - 1;
        let (report, _, _) = lose_and_rebuild(&mut rig, &volume, position, 0, None);
        assert!(report.unrepairable.is_empty(), "{layout}: {report:?}");
        model
            .check(&volume, &without_others(&rig, position))
            .unwrap_or_else(|e| panic!("{layout}: {e}"));
    }
}

#[test]
fn rebuild_bytes_follow_the_allocated_space() {
    for (layout, members) in LAYOUTS {
        // One block written: one row, a few pages.
        let mut rig = Rig::new(layout, members);
        let mut volume = rig.create(&options());
        let mut model = Model::default();
        model.write(&rig, &mut volume, 17, 1, 1);
        volume.flush(&rig.devices).unwrap();
        volume.sync(&rig.devices).unwrap();
        let position = rig.row_cells(&volume, 17).first().map(|(d, _)| *d).unwrap();
        let (small, _, _) = lose_and_rebuild(&mut rig, &volume, position, 0, None);
        assert_eq!(small.shard_blocks_written, 1, "{layout}: {small:?}");
        assert_eq!(
            small.bytes_written,
            B as u64 + small.page_copies_written * PAGE as u64,
            "{layout}"
        );
        assert!(
            small.bytes_written < DEVICE_BYTES / 100,
            "{layout}: {} bytes for one block",
            small.bytes_written
        );
        assert!(small.bytes_read < DEVICE_BYTES / 50, "{layout}: {small:?}");
        // A position that holds only a never-written cell of the row (K > 1): nothing of it
        // is written.
        if rig.geometry.data_chunks() > 1 {
            let mut rig = Rig::new(layout, members);
            let mut volume = rig.create(&options());
            Model::default().write(&rig, &mut volume, 17, 1, 1);
            volume.flush(&rig.devices).unwrap();
            let cells = rig.row_cells(&volume, 17);
            let copies = rig.geometry.width() / rig.geometry.data_chunks();
            let (unwritten, at) = if layout.starts_with("rs") {
                cells[1]
            } else {
                cells[copies]
            };
            let (report, _, spare) = lose_and_rebuild(&mut rig, &volume, unwritten, 0, None);
            assert_eq!(report.shard_blocks_written, 0, "{layout}: {report:?}");
            assert!(report.unrepairable.is_empty(), "{layout}: {report:?}");
            assert!(spare.peek(at, B) == vec![0u8; B], "{layout}");
        }
        // A fuller volume rebuilds more, in proportion to its rows on the position.
        let mut rig = Rig::new(layout, members);
        let (mut volume, _) = filled(&rig, &options());
        volume.sync(&rig.devices).unwrap();
        let (full, _, _) = lose_and_rebuild(&mut rig, &volume, position, 0, None);
        assert!(
            full.shard_blocks_written > small.shard_blocks_written,
            "{layout}"
        );
        assert_eq!(
            full.bytes_written,
            full.shard_blocks_written * B as u64 + full.page_copies_written * PAGE as u64,
            "{layout}"
        );
    }
}

#[test]
fn a_rebuild_stopped_after_a_segment_resumes_from_its_watermark() {
    // `filled`, then a run of data segments (four of 16 K blocks each), synced.
    let filled_with_a_run = |rig: &Rig| {
        let (mut volume, mut model) = filled(rig, &options());
        let k = rig.geometry.data_chunks() as u64;
        model.write(rig, &mut volume, 200, 64 * k, 3);
        volume.flush(&rig.devices).unwrap();
        volume.sync(&rig.devices).unwrap();
        volume
    };
    for (layout, members) in LAYOUTS {
        let position = members - 1;
        // A straight rebuild, for the image to reach.
        let mut rig = Rig::new(layout, members);
        let volume = filled_with_a_run(&rig);
        let (straight, _, spare) = lose_and_rebuild(&mut rig, &volume, position, 0, None);
        let target = spare.image();
        assert!(straight.segments_total >= 3, "{layout}: {straight:?}");
        // Batches of segments: the same image; a stop takes effect at the end of a batch.
        for at_once in [1, 2, 3] {
            let mut rig = Rig::new(layout, members);
            let volume = filled_with_a_run(&rig);
            let (_, spare) = lose(&mut rig, position);
            let half = straight.segments_total / 2;
            let first = rebuild_batched(&rig, &volume, position, (0, at_once), Some(half));
            let watermark = first.resume_from.expect("stopped after one batch");
            assert!(
                (half..half + at_once as u64).contains(&first.segments_done),
                "{layout}, {at_once} at once: {first:?}"
            );
            if at_once == 3 {
                // This fill's data segments come in runs: a batch spans the stop.
                assert!(first.segments_done > half, "{layout}: {first:?}");
            }
            assert!(spare.image() != target, "{layout}: one batch rebuilt all");
            // As after a restart: the volume opened again (nothing cached) without the
            // replacement, which is then handed to the resumed rebuild.
            drop(volume);
            let mut without = rig.devices.clone();
            without[position] = None;
            let volume = Volume::open(&without, POOL, &rig.geometry, TIMELINE, &options()).unwrap();
            let written = rig.written.load(Ordering::SeqCst);
            let second = rebuild_batched(&rig, &volume, position, (watermark, at_once), None);
            assert_eq!(
                rig.written.load(Ordering::SeqCst) - written,
                second.bytes_written,
                "{layout}: bytes written"
            );
            assert_eq!(second.resume_from, None);
            assert_eq!(second.segments_done, second.segments_total);
            assert_eq!(
                spare.image(),
                target,
                "{layout}, {at_once} at once: the resumed rebuild differs"
            );
            assert_eq!(
                first.bytes_written + second.bytes_written,
                straight.bytes_written,
                "{layout}, {at_once} at once: the resumed rebuild redid segments below its \
                 watermark"
            );
        }
    }
}

/// Rot the cell of another member in a row the position holds a cell of, then rebuild the
/// position: `Ok` when the replacement holds exactly the lost member's bytes.
fn rebuild_with_a_rotten_source(
    layout: &str,
    members: usize,
    options: &VolumeOptions,
) -> Result<(), String> {
    let mut rig = Rig::new(layout, members);
    let (mut volume, _) = filled(&rig, options);
    volume.sync(&rig.devices).unwrap();
    let cells = rig.row_cells(&volume, 0);
    let (position, at) = cells[cells.len() - 1];
    // The row's first cell: a data cell (rs) or the first copy of the same chunk as the
    // position's cell for mirrors when the row has one chunk.
    let source = if layout.starts_with("rs") {
        cells[0]
    } else {
        let copies = rig.geometry.width() / rig.geometry.data_chunks();
        cells[cells.len() - copies]
    };
    assert_ne!(source.0, position);
    rig.mems[source.0].poke(source.1 + 8, &[0xee; 8]);
    let (report, lost, spare) = lose_and_rebuild(&mut rig, &volume, position, 0, None);
    let image = spare.image();
    let place = at as usize..at as usize + B;
    if rig.tolerance() >= 2 {
        // The lost member and one rotten source: within the tolerance, rebuilt exactly.
        if image[place.clone()] != lost[place.clone()] || !report.unrepairable.is_empty() {
            return Err(format!(
                "{layout}: the replacement got wrong bytes at {at} ({report:?})"
            ));
        }
    } else {
        // Beyond the tolerance: reported by place, and nothing written there.
        let named = report.unrepairable.iter().any(|d| {
            matches!(d, Damage::ShardBlock { device, offset, .. }
                if *device == position && *offset == at)
        });
        if !named || image[place.clone()] != [0u8; B][..] {
            return Err(format!(
                "{layout}: a cell with too few verified sources was written at {at} \
                 ({report:?})"
            ));
        }
    }
    if report.sources_bad != 1 {
        return Err(format!("{layout}: the rotten source went unnoticed"));
    }
    Ok(())
}

#[test]
fn a_rotten_source_is_not_copied_and_the_planted_rebuild_skip_verify_is_caught() {
    let planted = VolumeOptions {
        rebuild_skip_verify: true,
        ..options()
    };
    for (layout, members) in LAYOUTS {
        rebuild_with_a_rotten_source(layout, members, &options()).unwrap();
        let caught = rebuild_with_a_rotten_source(layout, members, &planted);
        assert!(caught.is_err(), "{layout}: the planted bug went unnoticed");
        println!(
            "planted rebuild_skip_verify, {layout}: {}",
            caught.unwrap_err()
        );
    }
}

/// Rot one data cell and scrub (check-only): `Ok` when the scrub reports exactly that place
/// bad.
fn scrub_finds_one_rotten_cell(
    layout: &str,
    members: usize,
    options: &VolumeOptions,
) -> Result<(), String> {
    let rig = Rig::new(layout, members);
    let (volume, _) = filled(&rig, options);
    let (d, at) = rig.row_cells(&volume, 0)[0];
    rig.mems[d].poke(at, &[0x42; B]);
    let report = scrub(&volume, &rig, true);
    if report.shard_blocks_bad != 1 {
        return Err(format!(
            "{layout}: {} bad shard-blocks found, 1 rotten ({report:?})",
            report.shard_blocks_bad
        ));
    }
    Ok(())
}

#[test]
fn the_planted_scrub_skip_crc_is_caught() {
    let planted = VolumeOptions {
        scrub_skip_crc: true,
        ..options()
    };
    for (layout, members) in LAYOUTS {
        scrub_finds_one_rotten_cell(layout, members, &options()).unwrap();
        let caught = scrub_finds_one_rotten_cell(layout, members, &planted);
        assert!(caught.is_err(), "{layout}: the planted bug went unnoticed");
    }
}

#[test]
fn a_16_tib_volume_on_sparse_files_scrubs_and_rebuilds_its_few_rows_in_proportion() {
    let dir = tempfile::tempdir().unwrap();
    let member_bytes = 4u64 << 40;
    let files: Vec<SharedDevice> = (0..6)
        .map(|i| {
            let file =
                FileDevice::open_or_create(&dir.path().join(format!("m{i}")), Some(member_bytes))
                    .unwrap();
            Arc::new(file) as SharedDevice
        })
        .collect();
    let devices: Vec<Option<SharedDevice>> = files.iter().cloned().map(Some).collect();
    let geometry = Geometry::new_v4(
        "rs:4+2".parse().unwrap(),
        6,
        16384,
        member_bytes,
        128,
        8 << 20,
    )
    .unwrap();
    let options = VolumeOptions {
        map: MapOptions {
            cache_bytes: 64 << 20,
            ..MapOptions::default()
        },
        ..VolumeOptions::default()
    };
    let mut volume = Volume::create(&devices, POOL, &geometry, TIMELINE, &options).unwrap();
    let size = volume.volume_bytes();
    assert!(size > 14 << 40, "volume of {size} bytes");
    let ends = [0u64, size / 2 / B as u64, size / B as u64 - 9];
    for (i, key) in ends.iter().enumerate() {
        let bytes: Vec<u8> = (0..9).flat_map(|j| pattern(key + j, i as u64)).collect();
        let count = (size / B as u64 - key).min(9) as usize;
        volume
            .write(&devices, key * B as u64, &bytes[..count * B])
            .unwrap();
    }
    volume.flush(&devices).unwrap();
    volume.sync(&devices).unwrap();
    let started = std::time::Instant::now();
    let report = volume
        .scrub(&devices, &VolumeScrubOptions { check_only: true })
        .unwrap();
    let took = started.elapsed();
    println!("16 TiB volume, 27 blocks written: scrub in {took:?}: {report:?}");
    // 3 writes of 9 blocks: rows of 4, 4 and 1, each 4 + 2 or 1 + 2 cells.
    assert_eq!(report.rows, 9, "{report:?}");
    assert_eq!(report.shard_blocks_checked, 3 * (6 + 6 + 3));
    assert_eq!(
        report.data_segments, 1,
        "one open data segment takes every row"
    );
    assert!(
        report.bytes_read < 8 << 20,
        "{} bytes read to scrub 27 blocks of a 16 TiB volume",
        report.bytes_read
    );
    assert!(took.as_secs() < 20, "the scrub took {took:?}");
    // One cell rotten on a member: found and repaired.
    let pointer = volume.map().get(&devices, ends[1]).unwrap();
    let pbn = pointer.address().unwrap();
    let slot = pbn / (4 * 4);
    let row = (pbn % 16) / 4;
    let (d, at) = geometry.shard_location(SlotId(slot), ShardIndex((pbn % 4) as usize));
    files[d.0]
        .write_at(at + row * B as u64, &[0x17; B])
        .unwrap();
    let repaired = volume
        .scrub(&devices, &VolumeScrubOptions { check_only: false })
        .unwrap();
    assert_eq!(
        (repaired.shard_blocks_bad, repaired.shard_blocks_repaired),
        (1, 1)
    );
    let mut buf = vec![0u8; B];
    volume.read(&devices, ends[1] * B as u64, &mut buf).unwrap();
    assert_eq!(buf, pattern(ends[1], 1));
    // A rebuild of member 5 writes its cells of those rows and its page copies, no more.
    let rebuilt = volume
        .rebuild_device(
            &devices,
            &RebuildOptions {
                position: 5,
                from_segment: 0,
                old: None,
                min_birth: 0,
                segments_at_once: 1,
            },
            &mut |_| true,
        )
        .unwrap();
    println!("rebuild of member 5: {rebuilt:?}");
    assert!(rebuilt.unrepairable.is_empty());
    assert!(
        rebuilt.bytes_written < 8 << 20,
        "{} bytes written to rebuild a member of 4 TiB holding 9 rows",
        rebuilt.bytes_written
    );
}

#[test]
fn an_absent_member_is_counted_not_checked_and_refusals_come_before_any_io() {
    for (layout, members) in LAYOUTS {
        let mut rig = Rig::new(layout, members);
        let (mut volume, model) = filled(&rig, &options());
        volume.sync(&rig.devices).unwrap();
        let whole = scrub(&volume, &rig, true);
        rig.devices[members - 1] = None;
        let report = scrub(&volume, &rig, false);
        assert!(report.absent > 0, "{layout}: {report:?}");
        assert_eq!(
            report.shard_blocks_checked + report.page_copies_checked + report.absent,
            whole.shard_blocks_checked + whole.page_copies_checked,
            "{layout}: every place is checked or counted absent"
        );
        assert_eq!(
            (
                report.shard_blocks_bad,
                report.page_copies_bad,
                report.bytes_written
            ),
            (0, 0, 0),
            "{layout}"
        );
        assert!(report.unrepairable.is_empty(), "{layout}");
        model.check(&volume, &rig.devices).unwrap();
        let refused = volume.rebuild_device(
            &rig.devices,
            &RebuildOptions {
                position: members - 1,
                from_segment: 0,
                old: None,
                min_birth: 0,
                segments_at_once: 1,
            },
            &mut |_| true,
        );
        assert!(
            matches!(refused, Err(Error::InvalidConfig(_))),
            "{layout}: {refused:?}"
        );
    }
    // A read-only volume: a check-only scrub runs, a repairing one and a rebuild are refused
    // before any I/O.
    let rig = Rig::new("rs:4+2", 6);
    drop(filled(&rig, &options()));
    let mut read_only = options();
    read_only.map.read_only = true;
    let volume = Volume::open(&rig.devices, POOL, &rig.geometry, TIMELINE, &read_only).unwrap();
    let before = rig.written.load(Ordering::SeqCst);
    assert_eq!(scrub(&volume, &rig, true).shard_blocks_bad, 0);
    let repair = volume.scrub(&rig.devices, &VolumeScrubOptions { check_only: false });
    assert!(matches!(repair, Err(Error::ReadOnly { .. })), "{repair:?}");
    let rebuild = volume.rebuild_device(&rig.devices, &RebuildOptions::default(), &mut |_| true);
    assert!(
        matches!(rebuild, Err(Error::ReadOnly { .. })),
        "{rebuild:?}"
    );
    assert_eq!(rig.written.load(Ordering::SeqCst), before);
}

#[test]
fn free_pending_and_freed_segments_are_skipped_by_scrub_and_rebuild() {
    for (layout, members) in LAYOUTS {
        let mut rig = Rig::new(layout, members);
        let mut volume = rig.create(&options());
        let k = rig.geometry.data_chunks() as u64;
        // One segment's worth (4 slots of 4 rows of K), then a few rows in the next one.
        let per_segment = 4 * 4 * k;
        let mut dead = Model::default();
        dead.write(&rig, &mut volume, 0, per_segment, 1);
        let mut live = Model::default();
        live.write(&rig, &mut volume, 2000, 2 * k + 1, 1);
        volume.flush(&rig.devices).unwrap();
        volume.sync(&rig.devices).unwrap();
        let both = scrub(&volume, &rig, true);
        assert_eq!(both.data_segments, 2, "{layout}: {both:?}");
        assert_eq!(
            both.shard_blocks_checked,
            dead.cells + live.cells,
            "{layout}"
        );
        // Every block of the first segment trimmed: free-pending after the next sync, free
        // two syncs later; neither is walked.
        volume
            .discard(&rig.devices, 0, per_segment * B as u64)
            .unwrap();
        volume.flush(&rig.devices).unwrap();
        for sync in 0..3 {
            volume.sync(&rig.devices).unwrap();
            let report = scrub(&volume, &rig, true);
            assert_eq!(report.data_segments, 1, "{layout} sync {sync}: {report:?}");
            assert_eq!(report.rows, live.rows, "{layout} sync {sync}");
            assert_eq!(
                report.shard_blocks_checked, live.cells,
                "{layout} sync {sync}"
            );
        }
        let position = members - 1;
        let (report, _, _) = lose_and_rebuild(&mut rig, &volume, position, 0, None);
        assert!(
            report.shard_blocks_written <= live.rows,
            "{layout}: {report:?}"
        );
        assert!(report.unrepairable.is_empty(), "{layout}");
        let mut expected = live;
        for key in 0..per_segment {
            expected.blocks.insert(key, vec![0u8; B]);
        }
        expected
            .check(&volume, &without_others(&rig, position))
            .unwrap_or_else(|e| panic!("{layout}: {e}"));
    }
}

#[test]
fn lost_torn_and_misdirected_row_writes_made_by_the_fault_injector_are_repaired_by_scrub() {
    use stripestore::device::FaultKind;
    for (layout, members) in LAYOUTS {
        for kind in [
            FaultKind::LostWrite,
            FaultKind::TornWrite,
            FaultKind::MisdirectedWrite,
        ] {
            let rig = Rig::new(layout, members);
            let (mut volume, mut model) = filled(&rig, &options());
            let k = rig.geometry.data_chunks() as u64;
            // The next write member 0 gets in its data area (one cell of the next row).
            {
                let mut plan = rig.plans[0].lock();
                plan.set_region(rig.geometry.data_offset..DEVICE_BYTES - (1 << 20));
                plan.arm(kind, 1);
            }
            model.write(&rig, &mut volume, 900, k, 7);
            volume.flush(&rig.devices).unwrap();
            assert_eq!(rig.plans[0].lock().count(kind), 1, "{layout} {kind:?}");
            let found = scrub(&volume, &rig, true);
            let bad = found.shard_blocks_bad + found.page_copies_bad;
            if kind != FaultKind::MisdirectedWrite {
                assert_eq!(
                    (found.shard_blocks_bad, found.page_copies_bad),
                    (1, 0),
                    "{layout} {kind:?}: {found:?}"
                );
            } else {
                // Its own place keeps stale bytes; where it landed may be bad too.
                assert!((1..=2).contains(&bad), "{layout} {kind:?}: {found:?}");
            }
            let repaired = scrub(&volume, &rig, false);
            assert_eq!(
                repaired.shard_blocks_repaired + repaired.page_copies_repaired,
                bad,
                "{layout} {kind:?}: {repaired:?}"
            );
            assert!(repaired.unrepairable.is_empty(), "{layout} {kind:?}");
            let again = scrub(&volume, &rig, true);
            assert_eq!(
                again.shard_blocks_bad + again.page_copies_bad,
                0,
                "{layout} {kind:?}"
            );
            // Reads now take the repaired cell (no rebuild needed) and every block is exact.
            let rebuilt = volume.counters().rebuilt_blocks;
            model.check(&volume, &rig.devices).unwrap();
            assert_eq!(
                volume.counters().rebuilt_blocks,
                rebuilt,
                "{layout} {kind:?}"
            );
        }
    }
}

/// A healthy member being replaced is a source of its own shards and page copies
/// (`RebuildOptions::old`): on mirror:2 with the other member's content wiped, a rebuild of
/// position 0 without it can rebuild nothing, and with it rebuilds everything; after a sync the
/// replacement alone opens the volume and every block reads back (simulation seed 9001
/// swapped an empty spare in for the only copy).
#[test]
fn a_member_still_serving_is_a_source_of_its_own_rebuild() {
    let rig = Rig::new("mirror:2", 2);
    let (mut volume, model) = filled(&rig, &options());
    volume.sync(&rig.devices).unwrap();
    // Member 1 loses everything it held.
    rig.mems[1].poke(0, &vec![0u8; usize::try_from(DEVICE_BYTES).unwrap()]);
    let fresh: SharedDevice = Arc::new(MemDevice::new("fresh", DEVICE_BYTES));
    let devices = vec![Some(fresh.clone()), rig.devices[1].clone()];
    let without = volume
        .rebuild_device(
            &devices,
            &RebuildOptions {
                position: 0,
                from_segment: 0,
                old: None,
                min_birth: 0,
                segments_at_once: 1,
            },
            &mut |_| true,
        )
        .unwrap();
    assert!(
        !without.unrepairable.is_empty(),
        "with no source left, places are reported unrepairable"
    );
    let with = volume
        .rebuild_device(
            &devices,
            &RebuildOptions {
                position: 0,
                from_segment: 0,
                old: rig.devices[0].clone(),
                min_birth: 0,
                segments_at_once: 1,
            },
            &mut |_| true,
        )
        .unwrap();
    assert!(with.unrepairable.is_empty(), "{:?}", with.unrepairable);
    assert!(with.shard_blocks_written > 0 && with.page_copies_written > 0);
    // The newest uberblock on the replacement (the pool's swap-in does this), then it alone.
    volume.sync(&devices).unwrap();
    drop(volume);
    let alone = vec![Some(fresh), None];
    let volume = Volume::open(&alone, POOL, &rig.geometry, TIMELINE, &options()).unwrap();
    model.check(&volume, &alone).unwrap();
}

/// Every block of recovery point `name` reads exactly `blocks` (others zeros) through
/// `devices`.
fn check_point(
    volume: &Volume,
    devices: &[Option<SharedDevice>],
    name: &str,
    blocks: &BTreeMap<u64, Vec<u8>>,
) -> Result<(), String> {
    let span = blocks.keys().last().map_or(0, |k| k + 2);
    for key in 0..span {
        let mut found = vec![0u8; B];
        volume
            .read_recovery_point(devices, name, key * B as u64, &mut found)
            .map_err(|e| format!("recovery point {name}, block {key}: {e}"))?;
        let expected = blocks.get(&key).cloned().unwrap_or_else(|| vec![0; B]);
        if found != expected {
            return Err(format!("recovery point {name}, block {key}: wrong bytes"));
        }
    }
    Ok(())
}

/// Map pages only a recovery point names (the live map rewrote every one of its leaves after
/// the create) are scrubbed: one rotten copy of each is found and repaired, exactly as many as
/// were rotted; then a member is rebuilt onto a blank replacement and the recovery point
/// reads back exactly from it and the fewest others, in a volume opened afresh too (its
/// pages were copied to the replacement, not only the live tree's).
#[test]
fn pages_only_a_recovery_point_names_are_scrubbed_and_rebuilt() {
    for (layout, members) in LAYOUTS {
        let mut rig = Rig::new(layout, members);
        let (mut volume, model) = filled(&rig, &options());
        volume.create_recovery_point(&rig.devices, "then").unwrap();
        let (pages, _) = volume.map().page_refs(&rig.devices).unwrap();
        let point_pages: BTreeSet<u64> = pages
            .iter()
            .filter(|p| p.tree.id() == 0)
            .filter_map(|p| p.mpn())
            .collect();
        let then = model.blocks.clone();
        // Every written key again: every leaf and the root of the live map are copied.
        let mut live = model;
        let k = rig.geometry.data_chunks() as u64;
        for (first, count) in [(0, 12 * k + 1), (1030, 1), (2050, k + 1), (2600, 2 * k)] {
            live.write(&rig, &mut volume, first, count, 9);
        }
        volume.flush(&rig.devices).unwrap();
        volume.sync(&rig.devices).unwrap();
        let (now, _) = volume.map().page_refs(&rig.devices).unwrap();
        let listed: Vec<u64> = now.iter().filter_map(|p| p.mpn()).collect();
        for mpn in &point_pages {
            assert_eq!(
                listed.iter().filter(|m| *m == mpn).count(),
                1,
                "{layout}: page {mpn} of the recovery point listed once"
            );
        }
        let mut rotted = 0u64;
        for (i, mpn) in point_pages.iter().enumerate() {
            let copies = rig.geometry.page_copies(*mpn).unwrap();
            let (d, at) = copies[i % copies.len()];
            let mut bytes = rig.mems[d.0].peek(at, PAGE);
            bytes[100] ^= 0x40;
            rig.mems[d.0].poke(at, &bytes);
            rotted += 1;
        }
        let found = scrub(&volume, &rig, false);
        assert_eq!(found.page_copies_bad, rotted, "{layout}: {found:?}");
        assert_eq!(found.page_copies_repaired, rotted, "{layout}: {found:?}");
        assert_eq!(scrub(&volume, &rig, true).page_copies_bad, 0, "{layout}");
        check_point(&volume, &rig.devices, "then", &then)
            .unwrap_or_else(|e| panic!("{layout}: {e}"));
        live.check(&volume, &rig.devices)
            .unwrap_or_else(|e| panic!("{layout}: {e}"));

        let position = members - 1;
        let (report, _, _) = lose_and_rebuild(&mut rig, &volume, position, 0, None);
        assert!(report.unrepairable.is_empty(), "{layout}: {report:?}");
        let fewest = without_others(&rig, position);
        check_point(&volume, &fewest, "then", &then)
            .unwrap_or_else(|e| panic!("{layout} after the rebuild: {e}"));
        let mut read_only = options();
        read_only.map.read_only = true;
        drop(volume);
        let fresh = Volume::open(&rig.devices, POOL, &rig.geometry, TIMELINE, &read_only).unwrap();
        check_point(&fresh, &fewest, "then", &then)
            .unwrap_or_else(|e| panic!("{layout} after the rebuild, fresh: {e}"));
        live.check(&fresh, &fewest)
            .unwrap_or_else(|e| panic!("{layout} after the rebuild, fresh: {e}"));
    }
}

/// [`filled`] with plans in windows of `window` entries (0: the default), then six more
/// writes each synced apart, so that the pages referenced lie in several metadata segments.
fn filled_apart(rig: &Rig, window: usize) -> (Volume, Model) {
    let windowed = VolumeOptions {
        plan_window: window,
        ..options()
    };
    let (mut volume, mut model) = filled(rig, &windowed);
    for (i, key) in [10u64, 1500, 2300, 40, 2700, 1100].into_iter().enumerate() {
        model.write(rig, &mut volume, key, 1, 3 + i as u64);
        volume.flush(&rig.devices).unwrap();
        volume.sync(&rig.devices).unwrap();
    }
    (volume, model)
}

/// A pass planned in windows (docs/FORMAT.md V4.13, "Plans in windows") visits exactly what a
/// pass planned by one walk does: the same segments, rows, pages and copies checked, the same
/// bytes rebuilt onto the same places; only the walks' reads grow (one walk per window with
/// metadata in it). Windows of 1 and 3 entries against the default, every layout; the
/// replacement holds the same bytes whatever the window.
#[test]
fn a_pass_in_windows_visits_exactly_what_one_walk_does() {
    for (layout, members) in LAYOUTS {
        let mut reports = Vec::new();
        for window in [0, 1, 3] {
            let mut rig = Rig::new(layout, members);
            let (volume, _) = filled_apart(&rig, window);
            let mut scrubbed = scrub(&volume, &rig, true);
            let position = members - 1;
            let (mut rebuilt, _, spare) = lose_and_rebuild(&mut rig, &volume, position, 0, None);
            assert!(rebuilt.unrepairable.is_empty(), "{layout}: {rebuilt:?}");
            assert_eq!(rebuilt.segments_done, rebuilt.segments_total);
            let walks = (scrubbed.bytes_read, rebuilt.bytes_read);
            scrubbed.bytes_read = 0;
            rebuilt.bytes_read = 0;
            reports.push((window, scrubbed, rebuilt, walks, spare.image()));
        }
        let (_, one_scrub, one_rebuild, one_walk, one_image) = &reports[0];
        assert!(one_scrub.metadata_segments > 1, "{layout}: {one_scrub:?}");
        assert!(one_scrub.data_segments > 1, "{layout}: {one_scrub:?}");
        for (window, scrubbed, rebuilt, walks, image) in &reports[1..] {
            assert_eq!(scrubbed, one_scrub, "{layout}, scrub, window {window}");
            assert_eq!(rebuilt, one_rebuild, "{layout}, rebuild, window {window}");
            // The same bytes at the same places on the replacement.
            assert!(
                image == one_image,
                "{layout}, window {window}: the replacement differs from one walk's"
            );
            assert!(
                walks.0 > one_walk.0 && walks.1 > one_walk.1,
                "{layout}, window {window}: walks read {walks:?}, one walk {one_walk:?}"
            );
        }
    }
}

/// An interior page that rots on every copy after a pass in windows went past its segment
/// hides the pages below it from the later windows' walks: that window lists it (once), so
/// the scrub reports it unrepairable instead of going quietly past what it could not reach
/// (docs/FORMAT.md V4.13, "Plans in windows"; the review's blocker).
#[test]
fn an_interior_page_lost_after_its_window_is_reported_by_the_window_it_hides_pages_from() {
    let rig = Rig::new("mirror:2", 2);
    let (mut volume, _) = filled_apart(&rig, 1);
    let root = volume.map().root();
    assert!(root.level() >= 2, "the map's root is a leaf");
    let mpn = root.address().unwrap();
    let shape = volume.map().segments().shape();
    let segment = shape.of_page(mpn);
    // Leaves below the root in metadata segments after the root's.
    let (pages, _) = volume.map().page_refs(&rig.devices).unwrap();
    assert!(
        pages
            .iter()
            .any(|p| p.level == 1 && p.mpn().is_some_and(|m| shape.of_page(m) > segment)),
        "no leaf lies after the root's segment {segment}"
    );
    let openings = volume.watch_openings();
    let mut plan = volume.scrub_plan(&rig.devices, openings, 0).unwrap();
    let options = VolumeScrubOptions { check_only: true };
    let mut first = volume
        .scrub_planned(&rig.devices, &options, &mut plan, &mut || false)
        .unwrap();
    while plan.next_segment().is_some_and(|next| next <= segment) {
        let more = volume
            .scrub_planned(&rig.devices, &options, &mut plan, &mut || false)
            .unwrap();
        first.page_copies_unrepairable += more.page_copies_unrepairable;
    }
    assert_eq!(first.page_copies_unrepairable, 0, "{first:?}");
    // Every copy of the root rots.
    for (device, offset) in rig.geometry.page_copies(mpn).unwrap() {
        rig.plans[device.0].lock().rot_at_rest(offset + 200, 1);
    }
    let rest = volume
        .scrub_planned(&rig.devices, &options, &mut plan, &mut || true)
        .unwrap();
    assert!(plan.done());
    let root_reported = rest
        .unrepairable
        .iter()
        .filter(|d| matches!(d, Damage::PageCopy { mpn: m, .. } if *m == mpn))
        .count();
    assert_eq!(root_reported, 2, "{rest:?}");
}
