//! Every layout: random writes of random sizes and offsets against an in-memory model, across
//! close and reopen; lose up to the tolerated number of devices and read back byte-exact; lose
//! one more and get a clear error.

mod common;

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
            match &err {
                Error::Unrecoverable { lost_devices, .. } => {
                    assert!(lost_devices.iter().any(|d| d == "mem0"), "{layout}: {err}");
                }
                other => panic!("{layout}: expected Unrecoverable, got {other}"),
            }
            let message = err.to_string();
            assert!(
                message.contains("mem0"),
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
