//! Sectored map leaves (docs/FORMAT.md V4.17), on a map tree over memory members, checked
//! against what each key was set to:
//! * a lookup whose leaf is not cached reads one 4 KiB sector of it (counted on the members),
//!   a second lookup in that sector reads nothing, one in another sector of the leaf reads
//!   the whole leaf once, and a pool made without sectored leaves reads the whole 16 KiB
//!   leaf as before;
//! * a copy of a leaf that is rotten, lost (an older leaf at its place), misdirected (another
//!   leaf's bytes) or torn (one sector of the older leaf) is never served: the read answers from
//!   the other copy and heals the bad one, and a store that must not write leaves it alone;
//! * a leaf whose sector crc is wrong on every copy (its records right) is served and
//!   resealed, by a read and by a scrub's read of the copies, not lost;
//! * a sector cached before its leaf was rewritten is not served afterwards (the planted bug
//!   `stale_sectors` serves it, and this test sees the old pointer then);
//! * a pool records the leaf format in its map parameters, and a pool made without it reads
//!   and writes through reopen as before.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use stripestore::device::{MemDevice, SharedDevice};
use stripestore::format::v4::{BlockPointer, LeafFormat, Tree, PAGE_BYTES, SECTOR_BYTES};
use stripestore::geometry::Geometry;
use stripestore::meta::{PageCache, PageKey, PageRef, PageStore, RadixTree};

use crate::meta;
use meta::{volume_geometry, Hooked, Lcg};

const POOL: [u8; 16] = [0x5e; 16];
const MEMBER_BYTES: u64 = 32 << 20;
const DEPTH: u8 = 2;

/// Requests the members heard: `(member, offset, bytes)`.
type Reads = Arc<Mutex<Vec<(usize, u64, usize)>>>;

struct Rig {
    mems: Vec<Arc<MemDevice>>,
    devices: Vec<Option<SharedDevice>>,
    reads: Reads,
    geometry: Geometry,
    next_mpn: u64,
    birth: u64,
}

impl Rig {
    /// mirror:2, so every page has two copies, one per member.
    fn new() -> Self {
        let mems: Vec<Arc<MemDevice>> = (0..2)
            .map(|i| Arc::new(MemDevice::new(format!("m{i}"), MEMBER_BYTES)))
            .collect();
        let reads: Reads = Arc::default();
        let devices = mems
            .iter()
            .enumerate()
            .map(|(i, mem)| {
                let reads = Arc::clone(&reads);
                Some(Hooked::shared(
                    Arc::clone(mem) as SharedDevice,
                    Some(Arc::new(move |offset, bytes| {
                        reads.lock().unwrap().push((i, offset, bytes));
                    })),
                    None,
                ))
            })
            .collect();
        Self {
            mems,
            devices,
            reads,
            geometry: volume_geometry("mirror:2", 2, MEMBER_BYTES),
            next_mpn: 0,
            birth: 1,
        }
    }

    fn store(&self, format: LeafFormat) -> PageStore {
        PageStore::new(POOL, self.geometry.clone())
            .unwrap()
            .with_leaf_format(format)
    }

    /// A view of the map whose durable root is `root`, through a cache of its own.
    fn tree(&self, store: PageStore, root: BlockPointer) -> RadixTree {
        let cache = Arc::new(PageCache::<PageKey>::new(256 * PAGE_BYTES).with_pinned(|k| k.1 >= 2));
        RadixTree::new(POOL, Tree::Map, DEPTH, root, cache, store).unwrap()
    }

    fn sync(&mut self, tree: &mut RadixTree) -> BlockPointer {
        self.birth += 1;
        let mut next = self.next_mpn;
        let outcome = tree
            .sync(
                &self.devices,
                self.birth,
                &mut || {
                    next += 1;
                    Some(next - 1)
                },
                &mut |_, _| {},
            )
            .unwrap();
        self.next_mpn = next;
        outcome.root
    }

    /// Reads the members heard since the last call, by size.
    fn take_reads(&self) -> (usize, usize) {
        let reads: Vec<_> = self.reads.lock().unwrap().drain(..).collect();
        let sectors = reads.iter().filter(|r| r.2 == SECTOR_BYTES).count();
        let pages = reads.iter().filter(|r| r.2 == PAGE_BYTES).count();
        assert_eq!(
            sectors + pages,
            reads.len(),
            "only pages and sectors: {reads:?}"
        );
        (sectors, pages)
    }

    /// Where copy `copy` of page `mpn` lives: (member, offset).
    fn place(&self, mpn: u64, copy: usize) -> (usize, u64) {
        let (device, offset) = self.geometry.page_copies(mpn).unwrap()[copy];
        (device.0, offset)
    }

    fn bytes_at(&self, member: usize, offset: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        self.mems[member].read_at_raw(offset, &mut bytes);
        bytes
    }
}

trait RawRead {
    fn read_at_raw(&self, offset: u64, buf: &mut [u8]);
}

impl RawRead for MemDevice {
    fn read_at_raw(&self, offset: u64, buf: &mut [u8]) {
        use stripestore::device::Device;
        self.read_at(offset, buf).unwrap();
    }
}

fn pointer(rng: &mut Lcg) -> BlockPointer {
    BlockPointer::written(
        1 + rng.next() % (1 << 30),
        1 + rng.next() % 1000,
        0,
        rng.next() as u32,
    )
}

/// 48 keys, each in its own leaf, at an offset that puts them in every sector.
fn spread_keys() -> Vec<u64> {
    (0..48u64).map(|i| i * 1024 * 5 + (i * 97) % 1024).collect()
}

/// A map holding `keys` (one sync), its root and the model.
fn written_map(
    rig: &mut Rig,
    format: LeafFormat,
    keys: &[u64],
) -> (BlockPointer, BTreeMap<u64, BlockPointer>) {
    let mut tree = rig.tree(rig.store(format), BlockPointer::hole(DEPTH));
    let mut rng = Lcg(keys.len() as u64);
    let mut model = BTreeMap::new();
    for key in keys {
        let p = pointer(&mut rng);
        tree.set(&rig.devices, *key, p).unwrap();
        model.insert(*key, p);
    }
    let root = rig.sync(&mut tree);
    (root, model)
}

#[test]
fn a_cold_lookup_reads_one_sector_and_a_plain_leaf_is_read_whole() {
    for format in [LeafFormat::Sectored, LeafFormat::Plain] {
        let mut rig = Rig::new();
        let keys = spread_keys();
        let (root, model) = written_map(&mut rig, format, &keys);
        let tree = rig.tree(rig.store(format), root);
        rig.take_reads();
        for (key, expected) in &model {
            assert_eq!(
                tree.get(&rig.devices, *key).unwrap(),
                *expected,
                "{format:?} key {key}"
            );
        }
        let (sectors, pages) = rig.take_reads();
        match format {
            // One sector per leaf; the root page once (then resident).
            LeafFormat::Sectored => assert_eq!((sectors, pages), (keys.len(), 1)),
            LeafFormat::Plain => assert_eq!((sectors, pages), (0, keys.len() + 1)),
        }
        // Again: everything cached.
        for (key, expected) in &model {
            assert_eq!(tree.get(&rig.devices, *key).unwrap(), *expected);
        }
        assert_eq!(rig.take_reads(), (0, 0), "{format:?}");
        if format == LeafFormat::Sectored {
            // A key in the same sector reads nothing more (a hole here); the first key of the
            // next sector reads the whole leaf (the reads are walking it), after which its
            // other sectors read nothing; a key in another sector, not its first, reads that
            // sector alone.
            for key in &keys {
                let same = key ^ 1;
                if !model.contains_key(&same) {
                    assert!(tree.get(&rig.devices, same).unwrap().is_hole());
                }
            }
            assert_eq!(rig.take_reads(), (0, 0));
            let (walked, apart): (Vec<u64>, Vec<u64>) =
                keys.iter().partition(|key| (**key % 1024) / 256 < 3);
            for key in &walked {
                let next = (key & !255) + 256;
                assert!(tree.get(&rig.devices, next).unwrap().is_hole());
                let elsewhere = (key & !1023) | ((key + 700) & 1023);
                assert!(tree.get(&rig.devices, elsewhere).unwrap().is_hole());
            }
            assert_eq!(rig.take_reads(), (0, walked.len()));
            for key in &apart {
                let other = (key & !1023) | 5;
                assert!(tree.get(&rig.devices, other).unwrap().is_hole());
            }
            assert_eq!(rig.take_reads(), (apart.len(), 0));
        }
    }
}

/// How one copy of a leaf goes bad.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// One byte of the sector flipped.
    Rot,
    /// The older version of the leaf where the new one should be (the new write lost).
    Lost,
    /// Another leaf's bytes (a write meant elsewhere).
    Misdirected,
    /// The sector holding the key from the older version, the rest new (a torn write).
    Torn,
    /// One bit of the sector's own crc flipped: the parent's crc (which reads the sector crcs
    /// as zero) still matches, so only the whole leaf's check of each sector crc finds it.
    CrcField,
}

#[test]
fn a_bad_copy_of_a_leaf_is_never_served_and_a_read_heals_it_unless_it_must_not_write() {
    for damage in [
        Damage::Rot,
        Damage::Lost,
        Damage::Misdirected,
        Damage::Torn,
        Damage::CrcField,
    ] {
        for heal in [true, false] {
            let mut rig = Rig::new();
            let keys = spread_keys();
            let (old_root, _) = written_map(&mut rig, LeafFormat::Sectored, &keys);
            // A second version of every leaf (new pointers for every key).
            let mut tree = rig.tree(rig.store(LeafFormat::Sectored), old_root);
            let mut rng = Lcg(99);
            let mut model = BTreeMap::new();
            for key in &keys {
                let p = pointer(&mut rng);
                tree.set(&rig.devices, *key, p).unwrap();
                model.insert(*key, p);
            }
            let root = rig.sync(&mut tree);
            let leaves_of = |rig: &Rig, root: &BlockPointer| {
                let view = rig.tree(rig.store(LeafFormat::Sectored), *root);
                view.pointers_at(&rig.devices, DEPTH, 0, root)
                    .unwrap()
                    .unwrap()
            };
            let old_leaves = leaves_of(&rig, &old_root);
            let new_leaves = leaves_of(&rig, &root);
            let key = keys[7];
            let leaf = (key / 1024) as usize;
            let sector = (key % 1024) as usize / 256;
            let new_mpn = new_leaves[leaf].address().unwrap();
            let old_mpn = old_leaves[leaf].address().unwrap();
            let other_mpn = new_leaves[(keys[8] / 1024) as usize].address().unwrap();
            let (member, offset) = rig.place(new_mpn, 0);
            let good = rig.bytes_at(member, offset, PAGE_BYTES);
            let mut bad = good.clone();
            let at = sector * SECTOR_BYTES;
            match damage {
                Damage::Rot => bad[at + 100] ^= 0x10,
                Damage::Lost => {
                    let (m, o) = rig.place(old_mpn, 0);
                    bad = rig.bytes_at(m, o, PAGE_BYTES);
                }
                Damage::Misdirected => {
                    let (m, o) = rig.place(other_mpn, 0);
                    bad = rig.bytes_at(m, o, PAGE_BYTES);
                }
                Damage::Torn => {
                    let (m, o) = rig.place(old_mpn, 0);
                    let old = rig.bytes_at(m, o, PAGE_BYTES);
                    bad[at..at + SECTOR_BYTES].copy_from_slice(&old[at..at + SECTOR_BYTES]);
                }
                Damage::CrcField => bad[at + SECTOR_BYTES - 2] ^= 0x04,
            }
            assert_ne!(bad, good, "{damage:?}");
            {
                use stripestore::device::Device;
                rig.mems[member].write_at(offset, &bad).unwrap();
            }
            let store = rig.store(LeafFormat::Sectored);
            let store = if heal { store } else { store.without_healing() };
            let view = rig.tree(store, root);
            assert_eq!(
                view.get(&rig.devices, key).unwrap(),
                model[&key],
                "{damage:?} heal {heal}"
            );
            let now = rig.bytes_at(member, offset, PAGE_BYTES);
            if heal {
                assert_eq!(now, good, "{damage:?}: the bad copy is rewritten");
            } else {
                assert_eq!(
                    now, bad,
                    "{damage:?}: a store that must not write changed a copy"
                );
            }
            // Every other key of the map still reads what was set.
            for (k, expected) in &model {
                assert_eq!(view.get(&rig.devices, *k).unwrap(), *expected, "{damage:?}");
            }
        }
    }
}

/// The sector crcs are the only part of a leaf its parent's crc does not cover: wrong on every
/// copy (a sealing bug, or rot on each), the records still verify and are served, and the
/// copies are resealed, rather than the leaf being lost (damage stays as small as it is).
#[test]
fn a_leaf_whose_sector_crc_is_wrong_on_every_copy_is_served_and_resealed_not_lost() {
    for heal in [true, false] {
        let mut rig = Rig::new();
        let keys = spread_keys();
        let (root, model) = written_map(&mut rig, LeafFormat::Sectored, &keys);
        let view = rig.tree(rig.store(LeafFormat::Sectored), root);
        let leaves = view
            .pointers_at(&rig.devices, DEPTH, 0, &root)
            .unwrap()
            .unwrap();
        let key = keys[5];
        let leaf_at = (key / 1024) as usize;
        let leaf = leaves[leaf_at];
        let sector = (key % 1024) as usize / 256;
        let mpn = leaf.address().unwrap();
        let places = [rig.place(mpn, 0), rig.place(mpn, 1)];
        let good = rig.bytes_at(places[0].0, places[0].1, PAGE_BYTES);
        for (copy, (member, offset)) in places.iter().enumerate() {
            let mut bad = rig.bytes_at(*member, *offset, PAGE_BYTES);
            bad[sector * SECTOR_BYTES + SECTOR_BYTES - 1 - copy] ^= 0x20;
            use stripestore::device::Device;
            rig.mems[*member].write_at(*offset, &bad).unwrap();
        }
        // A scrub's read of the copies (never writes): every copy a fault, the page resealed.
        let page = PageRef {
            tree: Tree::Map,
            level: 1,
            first_key: leaf_at as u64 * 1024,
            keys: 1024,
            pointer: leaf,
        };
        let read = rig
            .store(LeafFormat::Sectored)
            .read_copies(&rig.devices, &page, &|_| true, true)
            .unwrap();
        assert_eq!(read.faults.len(), 2, "both copies are damaged");
        assert_eq!(read.page.as_deref(), Some(&good[..]), "resealed as written");
        let store = rig.store(LeafFormat::Sectored);
        let store = if heal { store } else { store.without_healing() };
        let view = rig.tree(store, root);
        assert_eq!(view.get(&rig.devices, key).unwrap(), model[&key]);
        for (copy, (member, offset)) in places.iter().enumerate() {
            let now = rig.bytes_at(*member, *offset, PAGE_BYTES);
            assert_eq!(now == good, heal, "copy {copy}, heal {heal}");
        }
        for (k, expected) in &model {
            assert_eq!(view.get(&rig.devices, *k).unwrap(), *expected);
        }
    }
}

#[test]
fn a_sector_cached_before_its_leaf_was_rewritten_is_not_served() {
    for planted in [false, true] {
        let mut rig = Rig::new();
        let keys = spread_keys();
        let (root, model) = written_map(&mut rig, LeafFormat::Sectored, &keys);
        let store = rig.store(LeafFormat::Sectored);
        let store = if planted {
            store.with_planted_stale_sectors()
        } else {
            store
        };
        let mut tree = rig.tree(store, root);
        let key = keys[3];
        // Cold: the sector is read and kept.
        assert_eq!(tree.get(&rig.devices, key).unwrap(), model[&key]);
        // A new pointer: the whole leaf is read to change it, and written by the sync.
        let newer = BlockPointer::written(123_456, 77, 0, 0xfeed);
        tree.set(&rig.devices, key, newer).unwrap();
        rig.sync(&mut tree);
        // The leaf leaves the cache (evicted); the sector read before stays.
        tree.cache().forget_clean(&(Tree::Map.id(), 1, key & !1023));
        let found = tree.get(&rig.devices, key).unwrap();
        if planted {
            assert_eq!(
                found, model[&key],
                "the planted bug serves the stale sector"
            );
        } else {
            assert_eq!(found, newer);
        }
    }
}

#[test]
fn a_sector_counts_its_held_bytes_and_bookkeeping_against_the_cache_cap() {
    // The cap counts 64-byte units (docs/FORMAT.md V4.17a): four pages are 1,024; a page
    // 256; a held sector its length + 128 bytes of bookkeeping, rounded up.
    let cache = PageCache::<PageKey>::new(4 * PAGE_BYTES);
    let whole = || Arc::new(vec![0u8; SECTOR_BYTES + 16]); // 4,240 bytes: 67 units
    for i in 0..15u64 {
        assert!(cache.insert_sector((0, 0, i * 256), whole()));
    }
    let stats = cache.stats();
    assert_eq!((stats.sectors, stats.evictions), (15, 0));
    assert_eq!(stats.bytes(), 15 * 67 * 64);
    // The sixteenth passes the cap (16 × 67 > 1,024): one goes.
    assert!(cache.insert_sector((0, 0, 15 * 256), whole()));
    let stats = cache.stats();
    assert_eq!((stats.sectors, stats.evictions), (15, 1));
    // A page takes 256 units: eleven whole sectors stay beside it (256 + 11 × 67 = 993).
    assert!(cache.insert_clean((0, 1, 0), Arc::new(vec![0u8; PAGE_BYTES])));
    let stats = cache.stats();
    assert_eq!((stats.sectors, stats.clean), (11, 1));
    assert!(stats.bytes() <= 4 * PAGE_BYTES);
    // Compact sectors of a sector written in order (1,060 bytes: 19 units): 53 fit where 15
    // whole ones did.
    let compact = PageCache::<PageKey>::new(4 * PAGE_BYTES);
    for i in 0..53u64 {
        assert!(compact.insert_sector((0, 0, i * 256), Arc::new(vec![0u8; 1060])));
    }
    let stats = compact.stats();
    assert_eq!(
        (stats.sectors, stats.evictions, stats.bytes()),
        (53, 0, 53 * 19 * 64)
    );
    assert!(compact.insert_sector((0, 0, 53 * 256), Arc::new(vec![0u8; 1060])));
    assert_eq!(compact.stats().evictions, 1);
    // A sparse one (one block among holes, 72 bytes): 4 units.
    assert!(compact.insert_sector((0, 0, 99 * 256), Arc::new(vec![0u8; 72])));
    let before = compact.stats();
    // A sector under a key holding one replaces it, counted at the new one's size (a whole
    // form over the sparse one: 67 units for 4); a page under the key is kept.
    let key = (0, 0, 99 * 256);
    assert!(compact.insert_sector(key, Arc::new(vec![1u8; SECTOR_BYTES + 16])));
    assert_eq!(compact.get(&key).unwrap().0.len(), SECTOR_BYTES + 16);
    let after = compact.stats();
    assert_eq!(
        after.sectors,
        before.sectors - (after.evictions - before.evictions) as usize
    );
    assert_eq!(
        after.bytes() + (after.evictions - before.evictions) as usize * 19 * 64,
        before.bytes() - 4 * 64 + 67 * 64
    );
    assert!(after.bytes() <= 4 * PAGE_BYTES);
    assert!(!cache.insert_sector((0, 1, 0), whole()));
    assert_eq!(cache.get(&(0, 1, 0)).unwrap().0.len(), PAGE_BYTES);
}

#[test]
fn a_pool_records_its_leaf_format_and_one_made_without_sectors_works_as_before() {
    use stripestore::pool::{CreateOptions, FormatVersion, OpenOptions, Pool};
    for sectored in [true, false] {
        let mems = stripestore::testing::mem_devices(6, 16 << 20);
        let devices: Vec<SharedDevice> = mems.iter().map(|m| m.clone() as SharedDevice).collect();
        let mut options = CreateOptions::new("rs:4+2".parse().unwrap());
        options.format = FormatVersion::V4(stripestore::pool::V4Options {
            sectored_leaves: sectored,
            ..stripestore::testing::small_v4()
        });
        options.open.map_cache_bytes = 16 * PAGE_BYTES;
        let pool = Pool::create(devices.clone(), vec![], &options).unwrap();
        let mut rng = Lcg(5);
        let blocks = pool.size() / 4096;
        let mut model = BTreeMap::new();
        for version in 0..300u64 {
            let block = rng.next() % blocks;
            let data = meta::block_pattern(block, version);
            pool.write_at(block * 4096, &data).unwrap();
            model.insert(block, data);
            if version % 50 == 0 {
                pool.flush().unwrap();
            }
        }
        pool.flush().unwrap();
        drop(pool);
        // The superblock's JSON names the field only for a sectored pool.
        let head = mems[0].image()[..64 << 10].to_vec();
        let named = head.windows(15).any(|w| w == b"sectored_leaves");
        assert_eq!(named, sectored);
        let open = OpenOptions {
            map_cache_bytes: 16 * PAGE_BYTES,
            ..OpenOptions::default()
        };
        let pool = Pool::open(devices, &open).unwrap();
        for (block, data) in &model {
            let mut back = vec![0u8; 4096];
            pool.read_at(block * 4096, &mut back).unwrap();
            assert!(back == *data, "sectored {sectored}: block {block}");
        }
    }
}
