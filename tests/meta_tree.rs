//! The paged map of format version 4 (`stripestore::meta::MapStore`), checked against a plain
//! model (a `BTreeMap` of what each key was last set to):
//! * random sets with syncs forced by a tiny page cache read back exactly, before and after a
//!   reopen, and unset keys read as holes;
//! * one change followed by a sync writes exactly `depth` pages per copy (the path), never the
//!   map, however large the map already is;
//! * a power cut at every device operation of a sync leaves the map exactly as of the previous
//!   sync or exactly as of this one (never a mix, never an unreadable page);
//! * no sync writes over a copy of a page that the durable tree or the tree before it references
//!   (the planted bugs `release_before_root_durable` and `release_at_t_plus_1` do, and are
//!   caught), and the usage table equals a recount from the trees after every reopen.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use stripestore::device::{MemDevice, PowerCut, SharedDevice};
use stripestore::format::v4::BlockPointer;
use stripestore::geometry::{Geometry, Layout};
use stripestore::meta::{MapOptions, MapStore, ReleaseRule};

use crate::meta;
use meta::{Hooked, Lcg};
use stripestore::testing::MetaWriter as Writer;

const POOL: [u8; 16] = [0x77; 16];
const TIMELINE: u64 = 0xabc;
const DEVICE_BYTES: u64 = 16 << 20;

fn geometry(layout: &str, members: usize) -> Geometry {
    sized(layout, members, DEVICE_BYTES)
}

fn sized(layout: &str, members: usize, bytes: u64) -> Geometry {
    let layout: Layout = layout.parse().unwrap();
    Geometry::new_v4(layout, members, 16384, bytes, 4, 16384).unwrap()
}

fn put(
    writer: &mut Writer,
    map: &mut MapStore,
    devices: &[Option<SharedDevice>],
    key: u64,
) -> stripestore::Result<BlockPointer> {
    Ok(writer.write(map, devices, &[key])?[0])
}

fn check(
    map: &MapStore,
    devices: &[Option<SharedDevice>],
    model: &BTreeMap<u64, BlockPointer>,
    probes: &[u64],
) -> Result<(), String> {
    for (key, expected) in model {
        let found = map
            .get(devices, *key)
            .map_err(|e| format!("key {key}: {e}"))?;
        if found != *expected {
            return Err(format!("key {key}: {found:?}, expected {expected:?}"));
        }
    }
    for key in probes {
        if !model.contains_key(key) {
            let found = map
                .get(devices, *key)
                .map_err(|e| format!("key {key}: {e}"))?;
            if !found.is_hole() {
                return Err(format!("unset key {key} reads {found:?}"));
            }
        }
    }
    Ok(())
}

/// Members of `bytes` in memory and map options with four pages of cache per level of a tree
/// of `depth`: `depth` may be dirty, so sets force syncs and reads evict.
fn small_cache_rig(
    layout: &str,
    members: usize,
    depth: u8,
    bytes: u64,
) -> (Geometry, Vec<Option<SharedDevice>>, MapOptions) {
    let geometry = sized(layout, members, bytes);
    let devices: Vec<Option<SharedDevice>> = (0..members)
        .map(|i| Some(Arc::new(MemDevice::new(format!("m{i}"), bytes)) as SharedDevice))
        .collect();
    let options = MapOptions {
        cache_bytes: 4 * usize::from(depth) * 16384,
        depth,
        segment_slots: 4,
        ..MapOptions::default()
    };
    (geometry, devices, options)
}

#[test]
fn random_sets_read_back_exactly_through_evictions_syncs_and_reopen() {
    // Keys are sparse (600 over 4,096 leaves: a 16 KiB leaf per 4 KiB block), so metadata
    // outweighs data 4 to 1: members of 32 MiB hold it with room for the segments the cleaner
    // needs.
    let bytes = 2 * DEVICE_BYTES;
    for (layout, members, depth) in [("rs:4+2", 6, 2), ("mirror:2", 2, 3), ("raid10:2", 4, 2)] {
        let (geometry, devices, options) = small_cache_rig(layout, members, depth, bytes);
        let mut map = MapStore::create(&devices, POOL, &geometry, TIMELINE, &options).unwrap();
        let mut model = BTreeMap::new();
        let mut rng = Lcg(depth as u64);
        // Keys clustered in the first 4 Mi blocks so that the tree fits the small devices.
        let keys = map.keys().min(1 << 22);
        let mut probes = Vec::new();
        let mut writer = Writer::new(&geometry);
        for version in 1..=600 {
            let key = rng.next() % keys;
            let pointer = if version % 17 == 0 {
                map.trim(&devices, key).unwrap()
            } else {
                put(&mut writer, &mut map, &devices, key).unwrap()
            };
            assert_eq!(pointer.is_zero(), version % 17 == 0);
            model.insert(key, pointer);
            probes.push(rng.next() % keys);
            if version % 97 == 0 {
                map.sync(&devices).unwrap();
            }
        }
        check(&map, &devices, &model, &probes)
            .unwrap_or_else(|e| panic!("{layout} before reopen: {e}"));
        map.sync(&devices).unwrap();
        map.check_usage(&devices)
            .unwrap_or_else(|e| panic!("{layout} before reopen: {e}"));
        let usage = map.segments().in_use();
        drop(map);
        let map = MapStore::open(&devices, POOL, &geometry, TIMELINE, &options).unwrap();
        check(&map, &devices, &model, &probes)
            .unwrap_or_else(|e| panic!("{layout} after reopen: {e}"));
        assert_eq!(
            map.segments().in_use(),
            usage,
            "open read another usage table than the sync wrote"
        );
        map.check_usage(&devices)
            .unwrap_or_else(|e| panic!("{layout} after reopen: {e}"));
        // Another timeline's uberblocks are not this pool's.
        assert!(MapStore::open(&devices, POOL, &geometry, TIMELINE + 1, &options).is_err());
    }
}

#[test]
fn one_change_and_a_sync_write_the_path_once_per_copy_never_the_map() {
    // Members of 48 MiB: 45 segments of 64 slots, room for 300 leaves beside the hard reserve
    // (segments of 64 slots keep the metadata cleaner out of the count: none is half dead).
    let bytes = 3 * DEVICE_BYTES;
    let geometry = sized("rs:4+2", 6, bytes);
    let counter = Arc::new(AtomicU64::new(0));
    let devices: Vec<Option<SharedDevice>> = (0..6)
        .map(|i| {
            let counter = counter.clone();
            Some(Hooked::shared(
                Arc::new(MemDevice::new(format!("m{i}"), bytes)),
                None,
                Some(Arc::new(move |_, buf: &[u8]| {
                    // Counts 16 KiB writes: metadata pages.
                    if buf.len() == 16384 {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(())
                })),
            ))
        })
        .collect();
    let options = MapOptions {
        depth: 3,
        ..MapOptions::default()
    };
    let mut map = MapStore::create(&devices, POOL, &geometry, TIMELINE, &options).unwrap();
    let mut writer = Writer::new(&geometry);
    // A map of 300 leaves spread over the key space.
    for i in 0..300u64 {
        put(&mut writer, &mut map, &devices, i * 3000).unwrap();
    }
    map.sync(&devices).unwrap();
    assert!(map.referenced_pages(&devices).unwrap().len() > 300);
    for round in 0..3u64 {
        counter.store(0, Ordering::SeqCst);
        put(&mut writer, &mut map, &devices, 123_456 + round).unwrap();
        let report = map.sync(&devices).unwrap();
        // Σ depth over the trees: the map's path (leaf, level 2, root), the slot summary's
        // (the record of the row written: depth 2 for this pool's slots) and the usage
        // table's (one page: depth 1 for its segments).
        let depths: usize = map.depths().iter().map(|d| usize::from(*d)).sum();
        assert_eq!(map.depths(), [3, 2, 1]);
        assert_eq!(report.pages_written, depths, "one path per tree");
        assert_eq!(
            counter.load(Ordering::SeqCst),
            depths as u64 * 3,
            "{depths} pages × 3 copies (rs:4+2)"
        );
        assert_eq!(report.pages_freed, depths, "the old paths");
        map.check_usage(&devices).unwrap();
    }
    // A sync with nothing changed writes at most the usage leaf (segments whose release came
    // due); the next one writes no page, only the uberblock.
    let settling = map.sync(&devices).unwrap().pages_written;
    assert!(
        settling <= 1,
        "{settling} pages written with nothing changed"
    );
    counter.store(0, Ordering::SeqCst);
    assert_eq!(map.sync(&devices).unwrap().pages_written, 0);
    assert_eq!(counter.load(Ordering::SeqCst), 0);
}

/// Build a map, sync it (state A), change it (state B), and cut the power at device operation
/// `cut` of the second sync; then open and compare with A and B. `Err` names a violation.
fn power_cut_run(cut: i64, seed: u64, release: ReleaseRule, width: u64) -> Result<bool, String> {
    let geometry = geometry("rs:4+2", 6);
    let countdown = Arc::new(AtomicI64::new(i64::MAX));
    let mems: Vec<Arc<MemDevice>> = (0..6)
        .map(|i| Arc::new(MemDevice::new(format!("m{i}"), DEVICE_BYTES)))
        .collect();
    let devices: Vec<Option<SharedDevice>> = mems
        .iter()
        .map(|m| Some(Arc::new(PowerCut::new(m.clone(), countdown.clone())) as SharedDevice))
        .collect();
    // Small segments, taken lowest first, so that freed ones are reused at once under the
    // planted rules.
    let options = MapOptions {
        depth: 2,
        cache_bytes: 64 * 16384,
        segment_slots: 4,
        release,
        ..MapOptions::default()
    };
    let mut map = MapStore::create(&devices, POOL, &geometry, TIMELINE, &options)
        .map_err(|e| e.to_string())?;
    let mut model = BTreeMap::new();
    let mut writer = Writer::new(&geometry);
    for round in 1..=4u64 {
        for i in 0..width {
            let key = (i * 1500 + round * 7) % map.keys();
            let pointer = put(&mut writer, &mut map, &devices, key).map_err(|e| e.to_string())?;
            model.insert(key, pointer);
        }
        map.sync(&devices).map_err(|e| e.to_string())?;
    }
    let state_a = model.clone();
    // Change every leaf the last sync wrote (their pages die in this sync) and some new ones.
    for i in 0..width {
        let key = (i * 1500 + 29) % map.keys();
        let pointer = put(&mut writer, &mut map, &devices, key).map_err(|e| e.to_string())?;
        model.insert(key, pointer);
    }
    for i in 0..width {
        let key = (i * 2500 + 11) % map.keys();
        let pointer = put(&mut writer, &mut map, &devices, key).map_err(|e| e.to_string())?;
        model.insert(key, pointer);
    }
    let state_b = model;
    countdown.store(cut, Ordering::SeqCst);
    let finished = map.sync(&devices).is_ok() && countdown.load(Ordering::SeqCst) > 0;
    drop(map);
    for (i, mem) in mems.iter().enumerate() {
        mem.crash(seed.wrapping_add(i as u64));
    }
    let plain: Vec<Option<SharedDevice>> = mems
        .iter()
        .map(|m| Some(m.clone() as SharedDevice))
        .collect();
    let reopened = MapStore::open(&plain, POOL, &geometry, TIMELINE, &options)
        .map_err(|e| format!("open: {e}"))?;
    let probes: Vec<u64> = (0..64).map(|i| i * 997 % reopened.keys()).collect();
    let as_a = check(&reopened, &plain, &state_a, &probes);
    let as_b = check(&reopened, &plain, &state_b, &probes);
    match (as_a, as_b) {
        (Ok(()), _) | (_, Ok(())) => Ok(finished),
        (Err(a), Err(b)) => Err(format!("neither state: as A: {a}; as B: {b}")),
    }
}

#[test]
fn a_power_cut_anywhere_in_a_sync_leaves_the_previous_or_the_new_map() {
    let mut cut = 0;
    loop {
        let mut finished = false;
        for seed in [1, 2] {
            finished = power_cut_run(cut, seed, ReleaseRule::AfterTwoSyncs, 6)
                .unwrap_or_else(|e| panic!("cut at op {cut}, seed {seed}: {e}"));
        }
        if finished {
            break;
        }
        cut += 1;
        assert!(cut < 200, "the sync never finished");
    }
    assert!(cut > 10, "the sweep covered {cut} operations");
}

/// A random workload of sets, trims and syncs (with reopens) on members that watch every
/// 16 KiB write: a write over a copy of a page that the durable tree or the tree before it
/// references, before the next uberblock, is a violation (FORMAT.md V4.8 "Release": the
/// newest tree must survive a cut sync, and the one before it a rewind). `Err` names the first.
fn overwrite_watch(release: ReleaseRule, seed: u64) -> Result<(), String> {
    let geometry = geometry("rs:4+2", 6);
    let protected: Arc<Mutex<HashSet<(usize, u64)>>> = Arc::default();
    let violation: Arc<Mutex<Option<String>>> = Arc::default();
    let devices: Vec<Option<SharedDevice>> = (0..6)
        .map(|i| {
            let protected = protected.clone();
            let violation = violation.clone();
            Some(Hooked::shared(
                Arc::new(MemDevice::new(format!("m{i}"), DEVICE_BYTES)),
                None,
                Some(Arc::new(move |offset, buf: &[u8]| {
                    if buf.len() == 16384 && protected.lock().unwrap().contains(&(i, offset)) {
                        violation.lock().unwrap().get_or_insert_with(|| {
                            format!(
                                "member {i}: a page of an openable tree at {offset} overwritten"
                            )
                        });
                    }
                    Ok(())
                })),
            ))
        })
        .collect();
    // A cache large enough that no write forces a sync of its own: the watch learns the
    // openable trees after each sync the test runs.
    let options = MapOptions {
        depth: 2,
        cache_bytes: 512 * 16384,
        segment_slots: 4,
        sync_pages_max: Some(128),
        release,
        ..MapOptions::default()
    };
    let protect = |map: &MapStore, previous: &mut Vec<u64>| -> Result<(), String> {
        let current = map.referenced_pages(&devices).map_err(|e| e.to_string())?;
        let mut places = protected.lock().unwrap();
        places.clear();
        for mpn in current.iter().chain(previous.iter()) {
            for (device, offset) in geometry.page_copies(*mpn).unwrap_or_default() {
                places.insert((device.0, offset));
            }
        }
        *previous = current;
        Ok(())
    };
    let mut map = MapStore::create(&devices, POOL, &geometry, TIMELINE, &options)
        .map_err(|e| e.to_string())?;
    let mut writer = Writer::new(&geometry);
    let mut rng = Lcg(seed);
    let mut previous = Vec::new();
    for step in 0..400u64 {
        let key = rng.next() % 40_000;
        let txg = map.txg();
        if step % 13 == 0 {
            map.trim(&devices, key).map_err(|e| e.to_string())?;
        } else {
            let keys: Vec<u64> = (0..1 + rng.next() % 5).map(|i| key + i * 900).collect();
            writer
                .write(&mut map, &devices, &keys)
                .map_err(|e| e.to_string())?;
        }
        assert_eq!(
            map.txg(),
            txg,
            "a write synced by itself: the watch would be stale"
        );
        if rng.next().is_multiple_of(4) {
            map.sync(&devices).map_err(|e| e.to_string())?;
            protect(&map, &mut previous)?;
        }
        if step % 97 == 96 {
            map.sync(&devices).map_err(|e| e.to_string())?;
            protect(&map, &mut previous)?;
            drop(map);
            map = MapStore::open(&devices, POOL, &geometry, TIMELINE, &options)
                .map_err(|e| e.to_string())?;
            writer = Writer::new(&geometry);
            map.check_usage(&devices).map_err(|e| e.to_string())?;
        }
        if let Some(found) = violation.lock().unwrap().take() {
            return Err(format!("step {step}: {found}"));
        }
    }
    map.sync(&devices).map_err(|e| e.to_string())?;
    map.check_usage(&devices).map_err(|e| e.to_string())
}

#[test]
fn no_sync_writes_over_a_page_an_openable_tree_references_and_planted_early_releases_do() {
    for seed in [1, 2, 3] {
        overwrite_watch(ReleaseRule::AfterTwoSyncs, seed)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
    for planted in [ReleaseRule::AtOnce, ReleaseRule::AfterOneSync] {
        assert!(
            [1, 2, 3]
                .iter()
                .any(|seed| overwrite_watch(planted, *seed).is_err()),
            "{planted:?}: pages of an openable tree were overwritten, unnoticed"
        );
    }
}

/// Every key of `model` maps to the data block the model gives, born when its row was noted.
fn check_blocks(
    map: &MapStore,
    devices: &[Option<SharedDevice>],
    model: &BTreeMap<u64, (u64, u64)>,
) -> Result<(), String> {
    for (key, (pbn, birth)) in model {
        let found = map
            .get(devices, *key)
            .map_err(|e| format!("key {key}: {e}"))?;
        if found.address() != Some(*pbn) || found.birth() != *birth {
            return Err(format!(
                "key {key}: {found:?}, expected block {pbn} born at {birth}"
            ));
        }
    }
    Ok(())
}

#[test]
fn runs_of_keys_set_at_once_read_back_count_usage_and_replay_as_keys_set_one_by_one() {
    // Runs of up to 1,200 consecutive keys from near leaf boundaries (1,024 keys a leaf), so
    // that most cross one or two; a cache of four pages a level forces syncs in the middle of
    // runs; half the runs overwrite keys already set (their old blocks must be counted out).
    let bytes = 6 * DEVICE_BYTES;
    for (layout, members, depth) in [("rs:4+2", 6, 2), ("mirror:2", 2, 3)] {
        let (geometry, devices, options) = small_cache_rig(layout, members, depth, bytes);
        let mut map = MapStore::create(&devices, POOL, &geometry, TIMELINE, &options).unwrap();
        let mut model: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let mut rng = Lcg(depth as u64 + 7);
        let mut writer = Writer::new(&geometry);
        let leaves = 6u64;
        for round in 0..24u64 {
            let first = if round % 2 == 1 && !model.is_empty() {
                // Over keys already set.
                let keys: Vec<u64> = model.keys().copied().collect();
                keys[(rng.next() as usize) % keys.len()]
            } else {
                (rng.next() % leaves) * 1024 + 1024 - rng.next() % 300
            };
            let count = 1 + rng.next() % 1200;
            let birth = map.next_sequence();
            let pbns = writer.write_run(&mut map, &devices, first, count).unwrap();
            for (key, pbn) in (first..).zip(pbns) {
                model.insert(key, (pbn, birth));
            }
            check_blocks(&map, &devices, &model)
                .unwrap_or_else(|e| panic!("{layout} after run {round}: {e}"));
            if round % 5 == 4 {
                map.commit(&devices).unwrap();
            }
        }
        // The last changes only in the log: a reopen replays them.
        map.commit(&devices).unwrap();
        drop(map);
        let mut map = MapStore::open(&devices, POOL, &geometry, TIMELINE, &options).unwrap();
        check_blocks(&map, &devices, &model)
            .unwrap_or_else(|e| panic!("{layout} after a replay: {e}"));
        map.sync(&devices).unwrap();
        map.check_usage(&devices)
            .unwrap_or_else(|e| panic!("{layout} usage after runs: {e}"));
        // A run crossing a leaf is one the tree refuses; the map splits it.
        let first = 3 * 1024 - 10;
        let birth = map.next_sequence();
        let pbns = writer.write_run(&mut map, &devices, first, 20).unwrap();
        for (key, pbn) in (first..).zip(pbns) {
            model.insert(key, (pbn, birth));
        }
        map.sync(&devices).unwrap();
        drop(map);
        let map = MapStore::open(&devices, POOL, &geometry, TIMELINE, &options).unwrap();
        check_blocks(&map, &devices, &model)
            .unwrap_or_else(|e| panic!("{layout} after a reopen: {e}"));
        map.check_usage(&devices)
            .unwrap_or_else(|e| panic!("{layout} usage after a reopen: {e}"));
    }
}

/// A pool whose newest uberblock names a root of tree 4 or 5 (deadlists, forwarding), as a
/// later build would write, or a tree 3 (recovery points) of a depth this build does not
/// write: this build refuses to open it, naming the tree, and writes nothing (a sync would
/// have written holes over those roots and the blocks they hold would have been counted
/// free). An empty tree 3 as older builds record it (a hole of depth 1) opens, and so does
/// the uberblock as written.
#[test]
fn an_uberblock_naming_trees_this_build_does_not_keep_is_refused_and_nothing_is_written() {
    let (geometry, devices, options) = small_cache_rig("rs:4+2", 6, 2, DEVICE_BYTES);
    let mut map = MapStore::create(&devices, POOL, &geometry, TIMELINE, &options).unwrap();
    let mut writer = Writer::new(&geometry);
    for key in 0..40 {
        put(&mut writer, &mut map, &devices, key).unwrap();
    }
    map.sync(&devices).unwrap();
    drop(map);
    let rings = stripestore::meta::Rings::read(&devices, &geometry, POOL).unwrap();
    let (newest, _) = rings.newest(TIMELINE).unwrap().unwrap();
    // Trees 4 and 5 (deadlists, forwarding) are a later build's; tree 3 (recovery points)
    // of a depth other than 2 is no tree this build writes.
    for (tree, depth) in [(4, 1), (5, 1), (3, 1), (3, 3)] {
        let mut later = newest.clone();
        later.depths[tree] = depth;
        later.roots[tree] = BlockPointer::written(12_345, newest.s_sync, depth, 7);
        assert!(stripestore::meta::write_uberblock(&devices, &geometry, &later).is_empty());
        let before = meta::member_images(&devices);
        let Err(err) = MapStore::open(&devices, POOL, &geometry, TIMELINE, &options) else {
            panic!("tree {tree}: a pool naming a root of tree {tree} opened");
        };
        let expected = if tree == 3 {
            matches!(err, stripestore::Error::CorruptMetadata { .. })
                && err.to_string().contains("recovery-point tree of depth")
        } else {
            matches!(err, stripestore::Error::Unsupported { .. })
                && err.to_string().contains(&format!("tree {tree}"))
        };
        assert!(expected, "tree {tree}: {err}");
        assert!(
            meta::member_images(&devices) == before,
            "tree {tree}: the refused open wrote"
        );
    }
    // A pool made before recovery points records an empty tree 3 as a hole of depth 1.
    let mut older = newest.clone();
    older.depths[3] = 1;
    older.roots[3] = BlockPointer::hole(1);
    assert!(stripestore::meta::write_uberblock(&devices, &geometry, &older).is_empty());
    let map = MapStore::open(&devices, POOL, &geometry, TIMELINE, &options).unwrap();
    assert!(map.recovery_points().is_empty());
    drop(map);
    assert!(stripestore::meta::write_uberblock(&devices, &geometry, &newest).is_empty());
    MapStore::open(&devices, POOL, &geometry, TIMELINE, &options).unwrap();
}
