//! Every layout: random writes of random sizes and offsets against an in-memory model, across
//! close and reopen; lose up to the tolerated number of devices and read back byte-exact; lose
//! one more and get a clear error.

use crate::common;

use common::*;
use stripestore::testing::{shared, Model};
use stripestore::{Error, OpenOptions, Pool};

#[test]
fn random_writes_match_model_across_reopen_for_every_layout() {
    each_layout(
        1000,
        "random_writes_match_model_across_reopen_for_every_layout",
        |layout, devices, rng, _seed| {
            let (pool, mems) = mem_pool(layout, devices);
            let mut model = Model::new(pool.size());
            random_writes(&pool, &mut model, rng, 60);
            verify(&pool, &model);
            pool.close().unwrap();
            let pool = reopen(&mems);
            verify(&pool, &model);
            random_writes(&pool, &mut model, rng, 60);
            pool.flush().unwrap();
            random_writes(&pool, &mut model, rng, 20);
            drop(pool); // drop flushes
            let pool = reopen(&mems);
            verify(&pool, &model);
            assert_eq!(
                pool.status().total_checksum_errors(),
                0,
                "{layout}: clean pool reported errors"
            );
        },
    );
}

#[test]
fn survives_losing_tolerated_devices_and_fails_clearly_beyond() {
    each_layout(
        2000,
        "survives_losing_tolerated_devices_and_fails_clearly_beyond",
        |layout, devices, rng, _seed| {
            let (pool, mems) = mem_pool(layout, devices);
            let tolerance = pool.geometry().tolerance();
            let mut model = Model::new(pool.size());
            random_writes(&pool, &mut model, rng, 80);
            pool.close().unwrap();

            // Lose `tolerance` devices (for raid10, one whole mirror group minus one copy): they
            // vanish while the pool is open, and the pool reconstructs.
            let pool = reopen(&mems);
            for mem in mems.iter().take(tolerance) {
                mem.set_gone(true);
            }
            verify(&pool, &model);
            // Writes continue degraded and read back too.
            random_writes(&pool, &mut model, rng, 10);
            verify(&pool, &model);
            let status = pool.status();
            assert_eq!(
                status
                    .devices
                    .iter()
                    .filter(|d| d.state == "FAULTED")
                    .count(),
                tolerance.min(devices),
                "{layout}: lost devices must be faulted"
            );
            pool.close().unwrap();

            // Reopen without the lost devices: still byte-exact.
            let survivors: Vec<_> = mems[tolerance..].to_vec();
            let pool = Pool::open(shared(&survivors), &OpenOptions::default()).unwrap();
            verify(&pool, &model);

            // One more loss than tolerated. For raid10 the next device is the other copy of the
            // first mirror group, so that group's data is gone.
            mems[tolerance].set_gone(true);
            let mut buf = vec![0u8; pool.size() as usize];
            let err = pool
                .read_at(0, &mut buf)
                .expect_err("must not read beyond tolerance");
            // Version 4 reads block by block: the error is the first block that cannot be
            // rebuilt, and every such block's row has a shard-block on mem0 (lost first).
            match &err {
                Error::UnrecoverableBlock {
                    lost_devices,
                    good,
                    needed,
                    ..
                } => {
                    assert!(good < needed, "{layout}: {err}");
                    // Each entry is a place (device, byte offset, what failed): one of them
                    // names the device as the pool knows it.
                    assert!(
                        lost_devices.iter().any(|d| names(d, "mem0")),
                        "{layout}: {err}"
                    );
                }
                other => panic!("{layout}: expected UnrecoverableBlock, got {other}"),
            }
            let message = err.to_string();
            assert!(
                names(&message, "mem0"),
                "error must name lost devices: {message}"
            );
            let err = pool.write_at(0, &[1u8; 10]).expect_err("writes must stop");
            assert!(
                matches!(err, Error::PoolUnavailable { .. }),
                "{layout}: {err}"
            );
            // No byte of `buf` was handed out as data: the read failed as a whole.
            pool.simulate_power_loss();
        },
    );
}

/// Whether `text` names device `name` as a word of its own (not inside another word).
fn names(text: &str, name: &str) -> bool {
    text.split(|c: char| !c.is_alphanumeric() && c != '_' && c != '-')
        .any(|word| word == name)
}

/// Many threads doing multi-stripe reads and writes at once, and one request spanning
/// thousands of stripes: no deadlock (a worker must never wait on pool work while it holds a
/// stripe or commit lock), and every thread's region reads back exactly.
#[test]
fn concurrent_io_from_many_threads_and_huge_requests() {
    use rand::Rng;
    let (pool, mems) = mem_pool("rs:4+2", 6);
    let pool = std::sync::Arc::new(pool);
    let stripe = pool.geometry().stripe_data_bytes() as usize;
    let region = pool.size() as usize / 8;
    std::thread::scope(|scope| {
        for thread in 0..8usize {
            let pool = pool.clone();
            scope.spawn(move || {
                let mut rng = stripestore::testing::rng(thread as u64);
                let base = thread * region;
                let mut model = vec![0u8; region];
                for round in 0..60 {
                    let len = rng.gen_range(1..3 * stripe).min(region);
                    let at = rng.gen_range(0..=region - len);
                    let data = stripestore::testing::random_bytes(&mut rng, len);
                    pool.write_at((base + at) as u64, &data).unwrap();
                    model[at..at + len].copy_from_slice(&data);
                    if round % 10 == 0 {
                        pool.flush().unwrap();
                    }
                    let mut back = vec![0u8; len];
                    pool.read_at((base + at) as u64, &mut back).unwrap();
                    assert_eq!(back, &model[at..at + len]);
                }
                let mut all = vec![0u8; region];
                pool.read_at(base as u64, &mut all).unwrap();
                assert!(all == model, "thread {thread} region differs");
            });
        }
    });
    drop(pool);
    // One write over the whole volume of a mirror: thousands of stripes in one request.
    let (pool, _) = mem_pool("mirror:2", 2);
    let data =
        stripestore::testing::random_bytes(&mut stripestore::testing::rng(9), pool.size() as usize);
    pool.write_at(0, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    pool.read_at(0, &mut back).unwrap();
    assert!(back == data);
    drop(mems);
}
