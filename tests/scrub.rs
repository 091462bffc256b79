//! Scrub: exact damage accounting per device, repair on disk, check-only, unrepairable damage
//! with its offsets, parity/copy consistency, resume after pause or kill without re-reading,
//! background scrub beside foreground writes (no false alarms), pause/cancel/resume API.

mod common;

use common::*;
use parking_lot::Mutex;
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use stripestore::device::{Device, FaultPlan, FaultyDevice, MemDevice, SharedDevice};
use stripestore::testing::{mem_devices, random_bytes, shared, Model};
use stripestore::{OpenOptions, Pool, ScrubEnd, ScrubOptions};

fn quiet() -> OpenOptions {
    OpenOptions {
        error_threshold: u64::MAX,
        background_rebuild: false,
        ..OpenOptions::default()
    }
}

fn fill(pool: &Pool, model: &mut Model, rng: &mut rand_chacha::ChaCha8Rng, bytes: u64) {
    let data = random_bytes(rng, bytes as usize);
    pool.write_at(0, &data).unwrap();
    model.write(0, &data);
    pool.flush().unwrap();
}

/// A chunk's device, offset and bytes before it was damaged.
type Original = (usize, u64, Vec<u8>);

/// Damage chosen chunks by flipping a bit; returns the expected per-device checksum errors.
fn rot(
    pool: &Pool,
    mems: &[Arc<MemDevice>],
    rng: &mut rand_chacha::ChaCha8Rng,
    stripes: u64,
    per_stripe: usize,
) -> (BTreeMap<usize, u64>, Vec<Original>) {
    let mut expected = BTreeMap::new();
    let mut originals = Vec::new();
    for stripe in 0..stripes {
        if !rng.gen_bool(0.4) {
            continue;
        }
        let mut shards = pool.shard_locations(stripestore::types::StripeId(stripe));
        for _ in 0..per_stripe {
            let shard = shards.remove(rng.gen_range(0..shards.len()));
            originals.push((
                shard.device,
                shard.offset,
                mems[shard.device].peek(shard.offset, CHUNK_BYTES as usize),
            ));
            mems[shard.device].flip_bit(shard.offset + rng.gen_range(0..CHUNK_BYTES), rng.gen());
            *expected.entry(shard.device).or_insert(0) += 1;
        }
    }
    (expected, originals)
}

#[test]
fn scrub_finds_exactly_the_damaged_chunks_per_device_repairs_them_and_is_clean_after() {
    each_layout(
        7100,
        "scrub_finds_exactly_the_damaged_chunks_per_device_repairs_them_and_is_clean_after",
        |layout, devices, rng, _seed| {
            let mems = mem_devices(devices, DEVICE_BYTES);
            let pool = Pool::create(shared(&mems), vec![], &options(layout)).unwrap();
            let mut model = Model::new(pool.size());
            let stripe_bytes = pool.geometry().stripe_data_bytes();
            let stripes = pool.size() / 2 / stripe_bytes;
            fill(&pool, &mut model, rng, stripes * stripe_bytes);
            // Live chunks per device: what a scrub must read and verify there.
            let mut live = vec![0u64; devices];
            for stripe in 0..stripes {
                for shard in pool.shard_locations(stripestore::types::StripeId(stripe)) {
                    live[shard.device] += CHUNK_BYTES;
                }
            }
            let tolerance = pool.geometry().tolerance();
            let (expected, originals) = rot(&pool, &mems, rng, stripes, tolerance);
            let damaged: u64 = expected.values().sum();
            assert!(damaged > 0);
            drop(pool);
            let pool = Pool::open(shared(&mems), &quiet()).unwrap();

            // Check-only first: everything is found, nothing is written.
            let check = common::check_only_scrub(&pool);
            assert_eq!(check.end, ScrubEnd::Completed);
            assert_eq!(check.totals.checksum_errors, damaged, "{layout}: {check:?}");
            assert_eq!(check.totals.repaired, 0, "{layout}");
            assert_eq!(check.unrepairable_stripes, 0, "{layout}");
            for (device, offset, original) in &originals {
                assert_ne!(
                    &mems[*device].peek(*offset, CHUNK_BYTES as usize),
                    original,
                    "{layout}: check-only must not repair"
                );
            }

            let report = pool.scrub().unwrap();
            assert_eq!(report.bad_shards, damaged, "{layout}: {report:?}");
            assert_eq!(report.totals.repaired, damaged, "{layout}");
            assert_eq!(report.totals.io_errors, 0, "{layout}");
            assert_eq!(report.unrepairable_stripes, 0, "{layout}");
            assert_eq!(report.stripes_checked, stripes, "{layout}");
            for device in &report.devices {
                let want = expected.get(&device.index).copied().unwrap_or(0);
                assert_eq!(
                    device.counters.checksum_errors, want,
                    "{layout}: device {}",
                    device.index
                );
                assert_eq!(
                    device.counters.repaired, want,
                    "{layout}: device {}",
                    device.index
                );
                // Every live chunk on the device was read and verified once.
                assert_eq!(
                    device.counters.bytes_scanned, live[device.index],
                    "{layout}: device {} bytes",
                    device.index
                );
            }
            for (device, offset, original) in &originals {
                assert_eq!(
                    &mems[*device].peek(*offset, CHUNK_BYTES as usize),
                    original,
                    "{layout}: device {device} offset {offset} not repaired on disk"
                );
            }
            let again = pool.scrub().unwrap();
            assert!(!again.found_damage(), "{layout}: second scrub {again:?}");
            verify(&pool, &model);
        },
    );
}

#[test]
fn sector_errors_are_counted_as_io_errors_and_repaired() {
    let seed = stripestore::testing::seed(7200);
    let _guard = stripestore::testing::SeedGuard {
        seed,
        name: "sector_errors_are_counted_as_io_errors_and_repaired",
    };
    let mut rng = stripestore::testing::rng(seed);
    let mems = mem_devices(6, DEVICE_BYTES);
    let mut plans: Vec<Arc<Mutex<FaultPlan>>> = Vec::new();
    let wrapped: Vec<SharedDevice> = mems
        .iter()
        .enumerate()
        .map(|(i, mem)| {
            let (device, plan) = FaultyDevice::new(mem.clone() as SharedDevice, seed + i as u64);
            plans.push(plan);
            Arc::new(device) as SharedDevice
        })
        .collect();
    let mut opts = options("rs:4+2");
    opts.open = quiet();
    let pool = Pool::create(wrapped, vec![], &opts).unwrap();
    let mut model = Model::new(pool.size());
    fill(&pool, &mut model, &mut rng, pool.size() / 4);
    // Three unreadable chunks on device 1, one on device 4, in different stripes.
    let mut expected = [0u64; 6];
    for stripe in [0u64, 3, 7, 11] {
        let on = if stripe == 11 { 4 } else { 1 };
        let shard = pool
            .shard_locations(stripestore::types::StripeId(stripe))
            .into_iter()
            .find(|s| s.device == on)
            .unwrap();
        plans[on]
            .lock()
            .add_bad_read_range(shard.offset..shard.offset + CHUNK_BYTES);
        expected[on] += 1;
    }
    let report = pool.scrub().unwrap();
    for device in &report.devices {
        assert_eq!(
            device.counters.io_errors, expected[device.index],
            "{report:?}"
        );
        assert_eq!(device.counters.checksum_errors, 0);
    }
    assert_eq!(report.totals.repaired, 4, "rewritten over the bad sectors");
    for plan in &plans {
        plan.lock().clear();
    }
    verify(&pool, &model);
}

#[test]
fn damage_beyond_redundancy_is_reported_with_its_offsets_and_the_rest_is_repaired() {
    let mems = mem_devices(6, DEVICE_BYTES);
    let pool = Pool::create(shared(&mems), vec![], &options("rs:4+2")).unwrap();
    let mut rng = stripestore::testing::rng(7300);
    let mut model = Model::new(pool.size());
    fill(&pool, &mut model, &mut rng, pool.size() / 4);
    let stripe_bytes = pool.geometry().stripe_data_bytes();
    // Stripe 5: three chunks rotten (one more than rs:4+2 survives). Stripe 9: one (repairable).
    for (stripe, count) in [(5u64, 3usize), (9, 1)] {
        for shard in pool
            .shard_locations(stripestore::types::StripeId(stripe))
            .into_iter()
            .take(count)
        {
            mems[shard.device].flip_bit(shard.offset + 100, 3);
        }
    }
    let lost_devices: Vec<String> = pool
        .shard_locations(stripestore::types::StripeId(5))
        .into_iter()
        .take(3)
        .map(|s| mems[s.device].name())
        .collect();
    let report = pool.scrub().unwrap();
    assert!(report.found_data_loss());
    assert_eq!(report.unrepairable_stripes, 1, "{report:?}");
    assert_eq!(report.damaged.len(), 1);
    assert_eq!(report.damaged[0].volume_offset, 5 * stripe_bytes);
    assert_eq!(report.damaged[0].length, stripe_bytes);
    let mut named = report.damaged[0].devices.clone();
    named.sort();
    let mut want = lost_devices.clone();
    want.sort();
    assert_eq!(named, want);
    assert_eq!(report.totals.checksum_errors, 4);
    assert_eq!(report.totals.repaired, 1);
    assert_eq!(report.totals.unrepairable, 3);
    // The lost stripe fails loudly; everything else reads back exactly.
    let mut buf = vec![0u8; stripe_bytes as usize];
    assert!(matches!(
        pool.read_at(5 * stripe_bytes, &mut buf),
        Err(stripestore::Error::Unrecoverable { .. })
    ));
    for stripe in (0..pool.size() / stripe_bytes).filter(|s| *s != 5) {
        pool.read_at(stripe * stripe_bytes, &mut buf).unwrap();
        assert_eq!(
            buf,
            model.read(stripe * stripe_bytes, buf.len()),
            "stripe {stripe}"
        );
    }
    // The result is recorded for `status` and `check`.
    let last = pool.status().last_scrub.expect("last scrub recorded");
    assert_eq!(last.tally.unrepairable_stripes, 1);
}

fn counting_pool(mems: &[Arc<MemDevice>], counter: &Arc<AtomicU64>, background: bool) -> Pool {
    let devices: Vec<SharedDevice> = mems
        .iter()
        .map(|m| {
            Arc::new(CountingDevice {
                inner: m.clone(),
                read: Arc::clone(counter),
            }) as SharedDevice
        })
        .collect();
    let options = OpenOptions {
        background_rebuild: background,
        ..quiet()
    };
    Pool::open(devices, &options).unwrap()
}

#[test]
fn a_paused_scrub_resumes_after_reopen_without_rereading_what_it_verified() {
    let mems = mem_devices(6, DEVICE_BYTES * 4);
    let pool = Pool::create(shared(&mems), vec![], &options("rs:4+2")).unwrap();
    let mut rng = stripestore::testing::rng(7400);
    let mut model = Model::new(pool.size());
    let stripes = pool.size() * 3 / 4 / pool.geometry().stripe_data_bytes();
    fill(
        &pool,
        &mut model,
        &mut rng,
        stripes * pool.geometry().stripe_data_bytes(),
    );
    // Damage early and late in the volume: counted once across both runs.
    for stripe in [1, stripes - 2] {
        let shard = pool.shard_locations(stripestore::types::StripeId(stripe))[0];
        mems[shard.device].flip_bit(shard.offset + 7, 1);
    }
    drop(pool);

    // A full scrub's data bytes, measured on a copy-free count: every live chunk once.
    let counter = Arc::new(AtomicU64::new(0));
    let pool = counting_pool(&mems, &counter, false);
    let mut steps = 0;
    let first = pool
        .scrub_with(&ScrubOptions::default(), |_| {
            steps += 1;
            if steps == 3 {
                pool.pause_scrub();
            }
        })
        .unwrap();
    assert_eq!(first.end, ScrubEnd::Paused);
    let verified_before = first.totals.bytes_scanned;
    assert!(verified_before > 0 && first.bytes_read_this_run == verified_before);
    pool.close().unwrap();

    let counter = Arc::new(AtomicU64::new(0));
    let pool = counting_pool(&mems, &counter, false);
    let recorded = pool.scrub_progress().expect("checkpoint recorded");
    assert!(recorded.paused && !recorded.running);
    assert_eq!(recorded.scanned_bytes, verified_before);
    let before = counter.load(Ordering::Relaxed);
    let second = pool
        .scrub_with(
            &ScrubOptions {
                resume: true,
                ..ScrubOptions::default()
            },
            |_| {},
        )
        .unwrap();
    let read_by_resume = counter.load(Ordering::Relaxed) - before;
    assert_eq!(second.end, ScrubEnd::Completed);
    assert!(second.resumed_from_slot > 0);
    let all_live = stripes * 6 * CHUNK_BYTES;
    assert_eq!(
        second.totals.bytes_scanned, all_live,
        "both runs together cover every chunk once"
    );
    assert_eq!(second.totals.checksum_errors, 2, "{second:?}");
    // The resumed run read exactly what the first had not verified, plus a careful re-read of
    // each damaged stripe it met (6 chunks each), and nothing else.
    let met = second.totals.checksum_errors - first.totals.checksum_errors;
    assert_eq!(
        read_by_resume,
        all_live - verified_before + met * 6 * CHUNK_BYTES,
        "resume re-read verified data"
    );
    assert_eq!(second.totals.repaired, 2);
    assert!(
        pool.scrub_progress().is_none(),
        "checkpoint cleared at the end"
    );
    verify(&pool, &model);
}

#[test]
fn background_scrub_beside_foreground_writes_raises_no_false_alarms() {
    each_layout(
        7500,
        "background_scrub_beside_foreground_writes_raises_no_false_alarms",
        |layout, devices, rng, _seed| {
            let mems = mem_devices(devices, DEVICE_BYTES);
            let pool = Pool::create(shared(&mems), vec![], &options(layout)).unwrap();
            let mut model = Model::new(pool.size());
            fill(&pool, &mut model, rng, pool.size());
            for _ in 0..4 {
                pool.start_scrub(&ScrubOptions::default()).unwrap();
                random_writes(&pool, &mut model, rng, 60);
                if rng.gen_bool(0.5) {
                    pool.flush().unwrap();
                }
                let report = pool.wait_scrub().unwrap().unwrap();
                assert!(!report.found_damage(), "{layout}: false alarm {report:?}");
            }
            assert_eq!(pool.status().total_checksum_errors(), 0, "{layout}");
            verify(&pool, &model);
        },
    );
}

#[test]
fn closing_interrupts_a_background_scrub_and_opening_resumes_it() {
    let mems = mem_devices(6, DEVICE_BYTES * 4);
    let pool = Pool::create(shared(&mems), vec![], &options("rs:4+2")).unwrap();
    let mut rng = stripestore::testing::rng(7600);
    let mut model = Model::new(pool.size());
    fill(&pool, &mut model, &mut rng, pool.size());
    // Slow enough to still be running when the pool closes.
    pool.start_scrub(&ScrubOptions {
        rate_bytes_per_s: Some(8 << 20),
        ..ScrubOptions::default()
    })
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(pool.scrub_progress().unwrap().running);
    pool.close().unwrap();

    let pool = Pool::open(shared(&mems), &quiet()).unwrap();
    let recorded = pool.scrub_progress().unwrap();
    assert!(
        !recorded.running && !recorded.paused,
        "interrupted, not paused"
    );
    assert!(recorded.scanned_bytes > 0 && recorded.scanned_bytes < recorded.total_bytes);
    drop(pool);
    // With background work on, opening resumes it; `set_scrub_rate` lifts the limit.
    let pool = Pool::open(
        shared(&mems),
        &OpenOptions {
            error_threshold: u64::MAX,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let report = pool.wait_scrub().expect("resumed at open").unwrap();
    assert_eq!(report.end, ScrubEnd::Completed);
    assert!(report.resumed_from_slot > 0);
    assert_eq!(
        report.totals.bytes_scanned,
        pool.size() / pool.geometry().stripe_data_bytes() * 6 * CHUNK_BYTES
    );
    verify(&pool, &model);

    // Cancel: a running scrub stops and its checkpoint is gone.
    pool.start_scrub(&ScrubOptions {
        rate_bytes_per_s: Some(4 << 20),
        ..ScrubOptions::default()
    })
    .unwrap();
    assert!(pool.cancel_scrub().unwrap());
    let canceled = pool.wait_scrub().unwrap().unwrap();
    assert_eq!(canceled.end, ScrubEnd::Canceled);
    assert!(pool.scrub_progress().is_none());
    assert_eq!(
        pool.status().last_scrub.unwrap().outcome,
        stripestore::format::ScrubOutcome::Canceled
    );
}
