//! Power loss at any instant. A seeded countdown cuts the power after a random number of device
//! writes/flushes (in the middle of a stripe write, a commit, a checkpoint, or recovery itself),
//! then every device loses a random subset of its unflushed writes. After reopening (with one
//! device lost, as well): every flushed block reads back exactly, every unflushed block reads
//! back as one of the versions written to it since the last flush, and nothing is unreadable.
//! The `crash_discard_*` tests mix discards (TRIM) into the workload: a discarded block reads as
//! zeros once flushed, and as its old content or zeros before.

use crate::common;

use common::*;
use rand::Rng;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use stripestore::device::{MemDevice, PowerCut, SharedDevice};
use stripestore::testing::{mem_devices, random_bytes, rng, seed, CrashModel, SeedGuard};
use stripestore::{OpenOptions, Pool};

const POWER_ON: i64 = i64::MAX / 2;

fn iterations() -> u64 {
    std::env::var("STRIPESTORE_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

fn wrap(mems: &[Arc<MemDevice>], countdown: &Arc<AtomicI64>) -> Vec<SharedDevice> {
    mems.iter()
        .map(|m| {
            Arc::new(PowerCut::new(m.clone() as SharedDevice, countdown.clone())) as SharedDevice
        })
        .collect()
}

/// Random writes (and discards, if `discards`) until power goes off or `count` are done; the
/// model learns each write or discard that was issued with power on (a discard as a write of
/// zeros), and each flush that completed with power on.
fn workload(
    pool: &Pool,
    model: &mut CrashModel,
    rng: &mut rand_chacha::ChaCha8Rng,
    countdown: &AtomicI64,
    (count, discards): (usize, bool),
) {
    let size = pool.size();
    let stripe = pool.geometry().stripe_data_bytes();
    for _ in 0..count {
        if countdown.load(Ordering::SeqCst) <= 0 {
            return;
        }
        if rng.gen_bool(0.15) {
            let result = pool.flush();
            if result.is_ok() && countdown.load(Ordering::SeqCst) > 0 {
                model.flushed();
            }
            continue;
        }
        if discards && rng.gen_bool(0.25) {
            let len = rng.gen_range(1..4 * stripe);
            let offset = rng.gen_range(0..=size - len);
            model.write(offset, &vec![0u8; len as usize]);
            if pool.discard(offset, len).is_err() {
                return;
            }
            continue;
        }
        let len = if rng.gen_bool(0.3) {
            stripe as usize
        } else {
            rng.gen_range(1..3 * stripe as usize)
        };
        let offset = rng.gen_range(0..=size - len as u64);
        let data = random_bytes(rng, len);
        model.write(offset, &data);
        if pool.write_at(offset, &data).is_err() {
            return;
        }
    }
}

fn read_all(pool: &Pool) -> Vec<u8> {
    let mut buf = vec![0u8; pool.size() as usize];
    pool.read_at(0, &mut buf)
        .expect("after a crash every block must be readable");
    buf
}

/// One test per layout so they run in parallel; each runs many seeded iterations.
macro_rules! crash_tests {
    ($($name:ident: $index:expr, $discards:expr,)*) => {$(
        #[test]
        fn $name() {
            power_loss_at_random_points_never_loses_flushed_data_even_with_a_device_lost($index, $discards, stringify!($name));
        }
    )*};
}

crash_tests! {
    crash_mirror2: 0, false,
    crash_mirror3: 1, false,
    crash_raid10: 2, false,
    crash_rs2p1: 3, false,
    crash_rs4p2: 4, false,
    crash_rs4p2_on_7: 5, false,
    crash_rs3p3: 6, false,
    crash_discard_mirror2: 0, true,
    crash_discard_rs2p1: 3, true,
    crash_discard_rs4p2: 4, true,
}

fn power_loss_at_random_points_never_loses_flushed_data_even_with_a_device_lost(
    l: usize,
    discards: bool,
    name: &'static str,
) {
    let (layout, devices) = layouts()[l];
    {
        for iteration in 0..iterations() {
            let seed = seed(10_000 + l as u64 * 1000 + u64::from(discards) * 500 + iteration);
            let _guard = SeedGuard { seed, name };
            let mut rng = rng(seed);
            let mems = mem_devices(devices, DEVICE_BYTES);
            let countdown = Arc::new(AtomicI64::new(POWER_ON));
            let pool = Pool::create(wrap(&mems, &countdown), vec![], &options(layout)).unwrap();
            let mut model = CrashModel::new(pool.size());
            workload(&pool, &mut model, &mut rng, &countdown, (30, discards));
            pool.flush().unwrap();
            model.flushed();
            let mut pool = Some(pool);
            // Several crash rounds; later rounds may cut power during recovery itself.
            for round in 0..3u64 {
                let current = pool.take().expect("pool is open at the start of a round");
                countdown.store(rng.gen_range(1..400), Ordering::SeqCst);
                workload(&current, &mut model, &mut rng, &countdown, (60, discards));
                current.simulate_power_loss();
                for (i, mem) in mems.iter().enumerate() {
                    mem.crash(seed ^ (round << 32) ^ i as u64);
                }
                // Power back on; maybe cut it again while the pool recovers.
                let cut_during_recovery = rng.gen_bool(0.3);
                countdown.store(
                    if cut_during_recovery {
                        rng.gen_range(1..20)
                    } else {
                        POWER_ON
                    },
                    Ordering::SeqCst,
                );
                let reopened =
                    Pool::open(wrap(&mems, &countdown), &OpenOptions::default()).unwrap();
                if cut_during_recovery {
                    reopened.simulate_power_loss();
                    for (i, mem) in mems.iter().enumerate() {
                        mem.crash(seed ^ (round << 40) ^ i as u64);
                    }
                    countdown.store(POWER_ON, Ordering::SeqCst);
                    let again =
                        Pool::open(wrap(&mems, &countdown), &OpenOptions::default()).unwrap();
                    model
                        .check_after_crash(&read_all(&again))
                        .unwrap_or_else(|e| panic!("{layout} round {round}: {e}"));
                    pool = Some(again);
                } else {
                    model
                        .check_after_crash(&read_all(&reopened))
                        .unwrap_or_else(|e| panic!("{layout} round {round}: {e}"));
                    pool = Some(reopened);
                }
            }
            // Finally: crash with unflushed writes, then lose a device. Flushed data must
            // survive both together: this is where a RAID write hole would show.
            let current = pool.take().expect("pool is open");
            countdown.store(rng.gen_range(1..400), Ordering::SeqCst);
            workload(&current, &mut model, &mut rng, &countdown, (60, discards));
            current.simulate_power_loss();
            for (i, mem) in mems.iter().enumerate() {
                mem.crash(seed ^ (9 << 48) ^ i as u64);
            }
            countdown.store(POWER_ON, Ordering::SeqCst);
            let victim = rng.gen_range(0..devices);
            let survivors: Vec<Arc<MemDevice>> = mems
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != victim)
                .map(|(_, m)| m.clone())
                .collect();
            // The operator knows the victim is dead: for mirrors, the survivors alone cannot prove
            // they are current (see `Error::CannotProveCurrent`), so this open is forced.
            let forced = OpenOptions {
                force: true,
                ..OpenOptions::default()
            };
            let pool = Pool::open(wrap(&survivors, &countdown), &forced).unwrap();
            model
                .check_after_crash(&read_all(&pool))
                .unwrap_or_else(|e| panic!("{layout} after crash and losing device {victim}: {e}"));
            // And the degraded pool keeps working.
            let data = random_bytes(&mut rng, 10_000);
            pool.write_at(123, &data).unwrap();
            pool.flush().unwrap();
            let mut back = vec![0u8; data.len()];
            pool.read_at(123, &mut back).unwrap();
            assert_eq!(back, data);
        }
    }
}
