//! Checksum blocks: a read fetches and verifies only the 4 KiB blocks it returns, damage in one
//! block is caught by exactly the reads that touch it (and healed from redundancy), and a pool
//! with one checksum per chunk still works the old way. Bytes are always checked against a model.

use crate::common;

use common::CountingDevice;
use rand::Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use stripestore::device::{MemDevice, SharedDevice};
use stripestore::testing::{mem_devices, random_bytes, shared, Model};
use stripestore::{CreateOptions, Error, OpenOptions, Pool};

const CHUNK: u64 = 64 * 1024;
const BLOCK: u64 = 4096;

/// A pool of `layout` with 64 KiB chunks and `checksum` blocks, filled with random data, then
/// reopened on counting devices. Returns the pool, the memory devices, the read counter and
/// the model of the volume.
fn filled_pool(
    layout: &str,
    devices: usize,
    checksum: u64,
    seed: u64,
) -> (Pool, Vec<Arc<MemDevice>>, Arc<AtomicU64>, Model) {
    let mems = mem_devices(devices, 8 << 20);
    let mut options = CreateOptions::new(layout.parse().unwrap());
    options.chunk_bytes = CHUNK;
    options.checksum_bytes = checksum;
    // Checksum blocks other than 4 KiB are version 3's (version 4's block is 4 KiB).
    stripestore::testing::allow_format_3_writes(true);
    options.format = stripestore::pool::FormatVersion::V3;
    options.open.background_rebuild = false;
    let pool = Pool::create(shared(&mems), vec![], &options).unwrap();
    let mut model = Model::new(pool.size());
    let mut rng = stripestore::testing::rng(seed);
    let data = random_bytes(&mut rng, pool.size() as usize);
    pool.write_at(0, &data).unwrap();
    model.write(0, &data);
    pool.close().unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let counted: Vec<SharedDevice> = mems
        .iter()
        .map(|m| {
            Arc::new(CountingDevice {
                inner: m.clone(),
                read: Arc::clone(&counter),
            }) as SharedDevice
        })
        .collect();
    let open = OpenOptions {
        background_rebuild: false,
        error_threshold: u64::MAX,
        ..OpenOptions::default()
    };
    let pool = Pool::open(counted, &open).unwrap();
    (pool, mems, counter, model)
}

/// Bytes the devices delivered for one read of `len` bytes at `offset`, which must equal the
/// model.
fn read_cost(pool: &Pool, counter: &AtomicU64, model: &Model, offset: u64, len: usize) -> u64 {
    let before = counter.load(Ordering::Relaxed);
    let mut buf = vec![0u8; len];
    pool.read_at(offset, &mut buf).unwrap();
    assert!(
        buf == model.read(offset, len),
        "wrong bytes at {offset}+{len}"
    );
    counter.load(Ordering::Relaxed) - before
}

#[test]
fn small_reads_fetch_only_the_blocks_they_return() {
    for (layout, devices) in [("rs:4+2", 6), ("mirror:2", 2), ("raid10:2", 4)] {
        let (pool, _mems, counter, model) = filled_pool(layout, devices, BLOCK, 1);
        let mut rng = stripestore::testing::rng(2);
        let blocks = pool.size() / BLOCK;
        for _ in 0..200 {
            let offset = rng.gen_range(0..blocks) * BLOCK;
            assert_eq!(
                read_cost(&pool, &counter, &model, offset, 4096),
                BLOCK,
                "{layout}: aligned 4 KiB read at {offset}"
            );
        }
        // Unaligned reads fetch the blocks that cover them, no more.
        assert_eq!(read_cost(&pool, &counter, &model, 5000, 100), BLOCK);
        assert_eq!(read_cost(&pool, &counter, &model, 4000, 200), 2 * BLOCK);
        // Across a chunk boundary: the last block of one chunk and the first of the next.
        assert_eq!(
            read_cost(&pool, &counter, &model, CHUNK - 100, 200),
            2 * BLOCK
        );
        // A whole chunk costs a whole chunk.
        assert_eq!(
            read_cost(&pool, &counter, &model, CHUNK, CHUNK as usize),
            CHUNK
        );
        assert_eq!(pool.status().total_checksum_errors(), 0);
    }
}

#[test]
fn one_checksum_per_chunk_reads_whole_chunks() {
    let (pool, _mems, counter, model) = filled_pool("rs:4+2", 6, CHUNK, 3);
    assert_eq!(pool.status().checksum_bytes, CHUNK);
    assert_eq!(read_cost(&pool, &counter, &model, 5000, 100), CHUNK);
    assert_eq!(
        read_cost(&pool, &counter, &model, 3 * CHUNK + 8192, 4096),
        CHUNK
    );
}

/// Rot in one block of a chunk: reads of the chunk's other blocks return their bytes without
/// noticing (they never see it); the first read that touches the block counts one checksum
/// error on the right device, returns the right bytes, and rewrites the chunk on disk; a scrub
/// afterwards is clean.
#[test]
fn rot_in_one_block_is_caught_by_the_reads_that_touch_it_and_healed() {
    for (layout, devices) in [("rs:4+2", 6), ("mirror:2", 2)] {
        let (pool, mems, counter, model) = filled_pool(layout, devices, BLOCK, 4);
        let stripe = 5u64;
        let stripe_bytes = pool.geometry().stripe_data_bytes();
        // For mirrors, damage the copy the read will use: copies take turns by runs of 1 MiB
        // of stripes, so copy `stripe / run % copies` serves it. For rs:4+2, the one shard of
        // data chunk 1.
        let location = if layout.starts_with("mirror") {
            let run = ((1 << 20) / stripe_bytes).max(1);
            pool.shard_locations(stripestore::types::StripeId(stripe))[(stripe / run % 2) as usize]
        } else {
            pool.shard_locations(stripestore::types::StripeId(stripe))
                .into_iter()
                .find(|l| l.data_chunk == Some(1))
                .unwrap()
        };
        let data_chunk = location.data_chunk.unwrap() as u64;
        let chunk_start = stripe * stripe_bytes + data_chunk * CHUNK;
        let damaged_block = 9u64;
        let original = mems[location.device].peek(location.offset, CHUNK as usize);
        let mut rotten = original[(damaged_block * BLOCK) as usize..][..16].to_vec();
        rotten[3] ^= 0x20;
        mems[location.device].poke(location.offset + damaged_block * BLOCK + 3, &rotten[3..4]);

        for block in [0, 8, 10, 15] {
            read_cost(&pool, &counter, &model, chunk_start + block * BLOCK, 4096);
        }
        assert_eq!(
            pool.status().total_checksum_errors(),
            0,
            "{layout}: untouched blocks verify on their own"
        );
        read_cost(
            &pool,
            &counter,
            &model,
            chunk_start + damaged_block * BLOCK + 100,
            50,
        );
        let status = pool.status();
        assert_eq!(status.total_checksum_errors(), 1, "{layout}: {status}");
        assert_eq!(
            status.devices[location.device].checksum_errors, 1,
            "{layout}: counted on the damaged device"
        );
        assert_eq!(status.total_repaired(), 1, "{layout}");
        assert_eq!(
            mems[location.device].peek(location.offset, CHUNK as usize),
            original,
            "{layout}: healed on disk"
        );
        let report = pool.scrub().unwrap();
        assert!(!report.found_damage(), "{layout}: {report:?}");
        let mut all = vec![0u8; pool.size() as usize];
        pool.read_at(0, &mut all).unwrap();
        assert!(all == model.read(0, all.len()), "{layout}: whole volume");
    }
}

/// Scrub verifies every block, so rot in a block no read touched is found by it.
#[test]
fn scrub_finds_rot_in_any_block() {
    let (pool, mems, _counter, model) = filled_pool("rs:4+2", 6, BLOCK, 5);
    let mut rng = stripestore::testing::rng(6);
    let mut damaged = std::collections::BTreeSet::new();
    for stripe in [0u64, 3, 7, 11] {
        let shard = rng.gen_range(0..6);
        let location = pool.shard_locations(stripestore::types::StripeId(stripe))[shard];
        let at = location.offset + rng.gen_range(0..CHUNK);
        let mut byte = mems[location.device].peek(at, 1);
        byte[0] ^= 0x01;
        mems[location.device].poke(at, &byte);
        damaged.insert((location.device, location.offset));
    }
    let report = pool.scrub().unwrap();
    assert_eq!(report.bad_shards as usize, damaged.len(), "{report:?}");
    assert!(!pool.scrub().unwrap().found_damage());
    let mut all = vec![0u8; pool.size() as usize];
    pool.read_at(0, &mut all).unwrap();
    assert!(all == model.read(0, all.len()));
}

#[test]
fn a_checksum_block_that_does_not_divide_the_chunk_is_refused_and_writes_nothing() {
    for checksum in [0, 2048, 12 * 1024, 128 * 1024] {
        let mems = mem_devices(6, 8 << 20);
        let before: Vec<Vec<u8>> = mems.iter().map(|m| m.peek(0, 1 << 20)).collect();
        let mut options = CreateOptions::new("rs:4+2".parse().unwrap());
        options.chunk_bytes = CHUNK;
        options.checksum_bytes = checksum;
        stripestore::testing::allow_format_3_writes(true);
        options.format = stripestore::pool::FormatVersion::V3;
        let err = Pool::create(shared(&mems), vec![], &options).unwrap_err();
        assert!(
            matches!(err, Error::InvalidConfig(_)),
            "{checksum}: {err:?}"
        );
        assert!(err.to_string().contains("checksum block"), "{err}");
        let after: Vec<Vec<u8>> = mems.iter().map(|m| m.peek(0, 1 << 20)).collect();
        assert!(before == after, "{checksum}: devices untouched");
    }
}

/// With a device out of service, a Reed-Solomon read within one chunk fetches only the needed
/// blocks of k other shards and reconstructs just those; rot in one of them sends the read to
/// the careful path, which still returns the right bytes and heals the rotten shard.
#[test]
fn degraded_small_reads_reconstruct_only_their_blocks() {
    let (pool, mems, counter, model) = filled_pool("rs:4+2", 6, BLOCK, 7);
    let stripe = 5u64;
    let stripe_bytes = pool.geometry().stripe_data_bytes();
    let locations = pool.shard_locations(stripestore::types::StripeId(stripe));
    let lost = locations
        .iter()
        .find(|l| l.data_chunk == Some(2))
        .unwrap()
        .device;
    pool.fault_device(lost, "test: taken out of service");
    let chunk_start = stripe * stripe_bytes + 2 * CHUNK;
    for block in [0u64, 7, 15] {
        assert_eq!(
            read_cost(&pool, &counter, &model, chunk_start + block * BLOCK, 4096),
            4 * BLOCK,
            "k = 4 sources, one block each"
        );
    }
    assert_eq!(
        read_cost(&pool, &counter, &model, chunk_start + 4000, 200),
        4 * 2 * BLOCK
    );
    // A read spanning two chunks reconstructs whole shards.
    assert_eq!(
        read_cost(&pool, &counter, &model, chunk_start - 100, 200),
        4 * CHUNK
    );
    assert_eq!(pool.status().total_checksum_errors(), 0);

    // Rot block 7 of another data shard of the stripe: the degraded read of block 7 needs it.
    let source = locations.iter().find(|l| l.data_chunk == Some(0)).unwrap();
    let original = mems[source.device].peek(source.offset, CHUNK as usize);
    let at = source.offset + 7 * BLOCK + 11;
    let mut byte = mems[source.device].peek(at, 1);
    byte[0] ^= 0x04;
    mems[source.device].poke(at, &byte);
    read_cost(&pool, &counter, &model, chunk_start + 7 * BLOCK, 4096);
    let status = pool.status();
    assert_eq!(status.total_checksum_errors(), 1, "{status}");
    assert_eq!(status.devices[source.device].checksum_errors, 1);
    assert_eq!(status.total_repaired(), 1);
    assert_eq!(
        mems[source.device].peek(source.offset, CHUNK as usize),
        original,
        "healed on disk"
    );
    let mut all = vec![0u8; pool.size() as usize];
    pool.read_at(0, &mut all).unwrap();
    assert!(all == model.read(0, all.len()), "whole volume, degraded");
}

/// Rewrite both superblock copies of every device with `checksum_bytes` set to `value`.
fn set_superblock_checksum_bytes(mems: &[Arc<MemDevice>], value: Option<u64>) {
    use stripestore::device::Device;
    use stripestore::format::Superblock;
    for mem in mems {
        let copy_b = mem.size() - 64 * 1024;
        for at in [0, copy_b] {
            let mut superblock = Superblock::decode(&mem.peek(at, 64 * 1024)).unwrap();
            superblock.checksum_bytes = value;
            mem.poke(at, &superblock.encode().unwrap());
        }
    }
}

/// A pool made before checksum blocks has no `checksum_bytes` in its superblock (and one crc
/// per chunk, which is what a pool made with `checksum_bytes` = chunk has): it opens, reads,
/// takes partial writes, scrubs clean and heals rot, and keeps its superblock without the
/// field, so the older build that made it can still open it.
#[test]
fn a_pool_without_checksum_bytes_in_its_superblock_works_the_old_way() {
    let (pool, mems, counter, mut model) = filled_pool("rs:4+2", 6, CHUNK, 7);
    pool.close().unwrap();
    drop(counter);
    set_superblock_checksum_bytes(&mems, None);
    let open = OpenOptions {
        background_rebuild: false,
        error_threshold: u64::MAX,
        ..OpenOptions::default()
    };
    let pool = Pool::open(shared(&mems), &open).unwrap();
    assert_eq!(pool.status().checksum_bytes, CHUNK);
    common::verify(&pool, &model);
    let mut rng = stripestore::testing::rng(8);
    common::random_writes(&pool, &mut model, &mut rng, 20);
    pool.flush().unwrap();
    // Rot in one block of a data chunk: found by a small read elsewhere in the chunk (the
    // checksum covers the whole chunk), healed.
    let location = pool.shard_locations(stripestore::types::StripeId(2))[0];
    let mut byte = mems[location.device].peek(location.offset + 40_000, 1);
    byte[0] ^= 0x80;
    mems[location.device].poke(location.offset + 40_000, &byte);
    let stripe_bytes = pool.geometry().stripe_data_bytes();
    let mut buf = vec![0u8; 100];
    pool.read_at(2 * stripe_bytes + 10, &mut buf).unwrap();
    assert!(buf == model.read(2 * stripe_bytes + 10, 100));
    assert_eq!(pool.status().total_checksum_errors(), 1);
    assert!(!pool.scrub().unwrap().found_damage());
    pool.close().unwrap();
    let pool = Pool::open(shared(&mems), &open).unwrap();
    common::verify(&pool, &model);
    pool.close().unwrap();
    for mem in &mems {
        let superblock = stripestore::format::Superblock::decode(&mem.peek(0, 64 * 1024)).unwrap();
        assert_eq!(
            superblock.checksum_bytes, None,
            "still an old-format superblock"
        );
    }
}

/// A superblock whose `checksum_bytes` is nonsense (zero, not whole sectors, not dividing the
/// chunk, huge) or merely not the pool's (another valid block size gives another map layout)
/// is refused at open with an error, never a panic, and nothing is written.
#[test]
fn a_bad_checksum_bytes_in_the_superblock_is_refused_at_open() {
    for value in [
        0,
        1,
        2048,
        12 * 1024,
        2 * CHUNK,
        1 << 63,
        u64::MAX,
        8192,
        CHUNK,
    ] {
        let (pool, mems, _counter, _model) = filled_pool("rs:4+2", 6, BLOCK, 9);
        pool.close().unwrap();
        set_superblock_checksum_bytes(&mems, Some(value));
        let before: Vec<Vec<u8>> = mems.iter().map(|m| m.peek(0, 8 << 20)).collect();
        let err = Pool::open(shared(&mems), &OpenOptions::default()).unwrap_err();
        assert!(
            matches!(err, Error::InvalidConfig(_) | Error::CorruptMetadata { .. }),
            "{value}: {err:?}"
        );
        let after: Vec<Vec<u8>> = mems.iter().map(|m| m.peek(0, 8 << 20)).collect();
        assert!(before == after, "{value}: devices untouched");
    }
}

/// Random rot (up to the layout's tolerance of shards per stripe, one or two blocks each),
/// then random reads of every size: every read returns the model's bytes, and each damaged
/// shard is counted exactly once, by the read that found it (which heals it) or by the scrub
/// afterwards, however the reads cut across checksum blocks and chunks.
#[test]
fn every_damaged_shard_is_counted_once_by_reads_and_scrub() {
    const SMALL_CHUNK: u64 = 16 * 1024;
    for (layout, devices) in [
        ("rs:4+2", 6),
        ("rs:2+1", 3),
        ("mirror:2", 2),
        ("raid10:2", 4),
    ] {
        for seed in 0..3u64 {
            let mems = mem_devices(devices, 4 << 20);
            let mut options = CreateOptions::new(layout.parse().unwrap());
            options.chunk_bytes = SMALL_CHUNK;
            options.checksum_bytes = BLOCK;
            stripestore::testing::allow_format_3_writes(true);
            options.format = stripestore::pool::FormatVersion::V3;
            options.open.background_rebuild = false;
            let pool = Pool::create(shared(&mems), vec![], &options).unwrap();
            let mut rng = stripestore::testing::rng(100 + seed);
            let mut model = Model::new(pool.size());
            let data = random_bytes(&mut rng, pool.size() as usize);
            pool.write_at(0, &data).unwrap();
            model.write(0, &data);
            pool.close().unwrap();
            let open = OpenOptions {
                background_rebuild: false,
                error_threshold: u64::MAX,
                ..OpenOptions::default()
            };
            let pool = Pool::open(shared(&mems), &open).unwrap();
            let mut damaged = std::collections::BTreeSet::new();
            for stripe in 0..pool.geometry().stripes {
                let locations = pool.shard_locations(stripestore::types::StripeId(stripe));
                let mut shards: Vec<usize> = (0..locations.len()).collect();
                for _ in 0..rng.gen_range(0..=pool.geometry().tolerance()) {
                    let location = locations[shards.swap_remove(rng.gen_range(0..shards.len()))];
                    for _ in 0..rng.gen_range(1..=2) {
                        let at = location.offset + rng.gen_range(0..SMALL_CHUNK);
                        let mut byte = mems[location.device].peek(at, 1);
                        byte[0] ^= 0x10;
                        mems[location.device].poke(at, &byte);
                    }
                    damaged.insert((location.device, location.offset));
                }
            }
            for _ in 0..300 {
                let len = match rng.gen_range(0..3) {
                    0 => rng.gen_range(1..5000),
                    1 => rng.gen_range(1..40_000),
                    _ => rng.gen_range(1..200_000),
                }
                .min(pool.size() as usize);
                let offset = rng.gen_range(0..=pool.size() - len as u64);
                let mut buf = vec![0u8; len];
                pool.read_at(offset, &mut buf).unwrap();
                assert!(
                    buf == model.read(offset, len),
                    "{layout} seed {seed}: wrong bytes at {offset}+{len}"
                );
            }
            let by_reads = pool.status().total_checksum_errors();
            let report = pool.scrub().unwrap();
            assert_eq!(
                by_reads + report.bad_shards,
                damaged.len() as u64,
                "{layout} seed {seed}: {by_reads} by reads + {} by scrub",
                report.bad_shards
            );
            assert!(
                !pool.scrub().unwrap().found_damage(),
                "{layout} seed {seed}"
            );
            common::verify(&pool, &model);
        }
    }
}
