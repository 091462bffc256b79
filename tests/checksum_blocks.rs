//! Checksum blocks: a read fetches and verifies only the 4 KiB blocks it returns, damage in one
//! block is caught by exactly the reads that touch it (and healed from redundancy), and a pool
//! with one checksum per chunk still works the old way. Bytes are always checked against a model.

mod common;

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
        // For mirrors, damage the copy the read will use: balanced reads take copy
        // `stripe % copies` (in service). For rs:4+2, the one shard of data chunk 1.
        let location = if layout.starts_with("mirror") {
            pool.shard_locations(stripe)[(stripe % 2) as usize]
        } else {
            pool.shard_locations(stripe)
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
        let location = pool.shard_locations(stripe)[shard];
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
    let locations = pool.shard_locations(stripe);
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
