//! Silent and loud device faults: bit rot, torn writes, lost writes, misdirected writes, read
//! errors on some sectors, a device that vanishes. Every read must return the model's bytes,
//! the damage must be counted and healed on disk.

use crate::common;

use common::*;
use parking_lot::Mutex;
use rand::Rng;
use std::sync::Arc;
use stripestore::device::{FaultKind, FaultPlan, FaultyDevice, MemDevice, SharedDevice};
use stripestore::pool::ShardLocation;
use stripestore::testing::{mem_devices, random_bytes, rng, seed, shared, Model, SeedGuard};
use stripestore::{OpenOptions, Pool};

fn no_threshold() -> OpenOptions {
    OpenOptions {
        error_threshold: u64::MAX,
        ..OpenOptions::default()
    }
}

/// Fill the whole volume with random data through the pool and the model.
fn fill(pool: &Pool, model: &mut Model, rng: &mut rand_chacha::ChaCha8Rng) {
    let data = random_bytes(rng, pool.size() as usize);
    pool.write_at(0, &data).unwrap();
    model.write(0, &data);
    pool.flush().unwrap();
}

/// Bytes of a logical block and of a row's shard-block in format version 4, the format these
/// pools are.
const BLOCK: u64 = 4096;

/// Every row holding a block of the whole (written) volume, once, in volume order: its
/// shard-blocks as `Pool::block_locations` gives them (one per shard: member and offset).
fn written_rows(pool: &Pool) -> Vec<Vec<ShardLocation>> {
    let mut seen = std::collections::BTreeSet::new();
    let mut rows = Vec::new();
    for key in 0..pool.size() / BLOCK {
        let row = pool.block_locations(key * BLOCK);
        assert_eq!(row.len(), pool.geometry().width(), "block {key}: {row:?}");
        if seen.insert((row[0].device, row[0].offset)) {
            rows.push(row);
        }
    }
    rows
}

#[test]
fn bit_rot_is_detected_healed_on_disk_and_counted_exactly() {
    each_layout(
        3000,
        "bit_rot_is_detected_healed_on_disk_and_counted_exactly",
        |layout, devices, rng, _seed| {
            let mems = mem_devices(devices, DEVICE_BYTES);
            let pool = Pool::create(shared(&mems), vec![], &options(layout)).unwrap();
            let mut model = Model::new(pool.size());
            fill(&pool, &mut model, rng);
            let tolerance = pool.geometry().tolerance();
            // Corrupt up to `tolerance` shard-blocks in a third of the rows, remembering the
            // good bytes.
            let mut damaged = Vec::new();
            for row in written_rows(&pool) {
                if !rng.gen_bool(0.33) {
                    continue;
                }
                let mut shards = row;
                let count = rng.gen_range(1..=tolerance);
                for _ in 0..count {
                    let shard = shards.remove(rng.gen_range(0..shards.len()));
                    let at = shard.offset + rng.gen_range(0..BLOCK);
                    let original = mems[shard.device].peek(shard.offset, BLOCK as usize);
                    mems[shard.device].flip_bit(at, rng.gen());
                    damaged.push((shard.device, shard.offset, original));
                }
            }
            assert!(!damaged.is_empty());
            drop(pool);
            let pool = Pool::open(shared(&mems), &no_threshold()).unwrap();
            verify(&pool, &model);
            let report = pool.scrub().unwrap();
            assert!(report.unrepairable_stripes == 0, "{layout}: {report:?}");
            let status = pool.status();
            assert_eq!(
                status.total_checksum_errors(),
                damaged.len() as u64,
                "{layout}: every damaged shard-block is counted once (read or scrub), none twice"
            );
            assert_eq!(status.total_repaired(), damaged.len() as u64, "{layout}");
            for (device, offset, original) in &damaged {
                assert_eq!(
                    &mems[*device].peek(*offset, BLOCK as usize),
                    original,
                    "{layout}: shard-block at device {device} offset {offset} not healed on disk"
                );
            }
            assert_eq!(
                pool.scrub().unwrap().bad_shards,
                0,
                "{layout}: second scrub must be clean"
            );
            verify(&pool, &model);
        },
    );
}

type Plan = Arc<Mutex<FaultPlan>>;

/// Build a pool whose devices are wrapped in fault injectors.
fn faulty_pool(layout: &str, devices: usize, seed: u64) -> (Pool, Vec<Arc<MemDevice>>, Vec<Plan>) {
    let mems = mem_devices(devices, DEVICE_BYTES);
    let mut plans = Vec::new();
    let wrapped: Vec<SharedDevice> = mems
        .iter()
        .enumerate()
        .map(|(i, mem)| {
            let (dev, plan) = FaultyDevice::new(mem.clone() as SharedDevice, seed + i as u64);
            plans.push(plan);
            Arc::new(dev) as SharedDevice
        })
        .collect();
    let mut opts = options(layout);
    opts.open = no_threshold();
    let pool = Pool::create(wrapped, vec![], &opts).unwrap();
    let data_region = pool.geometry().data_offset..pool.geometry().data_end();
    for plan in &plans {
        plan.lock().set_region(data_region.clone());
    }
    (pool, mems, plans)
}

/// Silent write faults on `tolerance` devices during a random workload: the data must read
/// back exactly, faults must be detected, and after a scrub the pool is clean on disk, proven
/// by losing the *other* devices and reading everything from the once-faulty ones.
fn silent_write_faults(kind: FaultKind, base_seed: u64, name: &'static str) {
    for (i, (layout, devices)) in layouts().into_iter().enumerate() {
        let seed = seed(base_seed + i as u64);
        let _guard = SeedGuard { seed, name };
        let mut rng = rng(seed);
        let (pool, mems, plans) = faulty_pool(layout, devices, seed);
        let tolerance = pool.geometry().tolerance();
        let mut model = Model::new(pool.size());
        for plan in plans.iter().take(tolerance) {
            plan.lock().set_random(0.2, &[kind]);
        }
        random_writes(&pool, &mut model, &mut rng, 150);
        pool.flush().unwrap();
        let injected: usize = plans.iter().map(|p| p.lock().count(kind)).sum();
        assert!(injected > 0, "{layout}: no {kind:?} was injected");
        for plan in &plans {
            plan.lock().clear();
        }
        verify(&pool, &model);
        let report = pool.scrub().unwrap();
        assert!(report.unrepairable_stripes == 0, "{layout}: {report:?}");
        let status = pool.status();
        assert!(
            status.total_checksum_errors() > 0,
            "{layout}: {kind:?} went unnoticed"
        );
        assert_eq!(
            status.total_checksum_errors(),
            status.total_repaired(),
            "{layout}: every detected error healed"
        );
        assert_eq!(
            pool.scrub().unwrap().bad_shards,
            0,
            "{layout}: healed on disk"
        );
        // Independent check of the healing: lose every device that never had a fault (as many
        // as tolerated) and read everything from the rest.
        for mem in mems.iter().skip(tolerance).take(tolerance) {
            mem.set_gone(true);
        }
        verify(&pool, &model);
        pool.simulate_power_loss();
    }
}

#[test]
fn lost_writes_are_caught_by_the_map_checksum() {
    silent_write_faults(
        FaultKind::LostWrite,
        4000,
        "lost_writes_are_caught_by_the_map_checksum",
    );
}

#[test]
fn torn_writes_are_detected_and_healed() {
    silent_write_faults(
        FaultKind::TornWrite,
        5000,
        "torn_writes_are_detected_and_healed",
    );
}

#[test]
fn misdirected_writes_are_detected_at_both_ends() {
    silent_write_faults(
        FaultKind::MisdirectedWrite,
        6000,
        "misdirected_writes_are_detected_at_both_ends",
    );
}

#[test]
fn sector_read_errors_are_reconstructed_and_counted() {
    each_layout(
        7000,
        "sector_read_errors_are_reconstructed_and_counted",
        |layout, devices, rng, seed| {
            let (pool, _mems, plans) = faulty_pool(layout, devices, seed);
            let mut model = Model::new(pool.size());
            fill(&pool, &mut model, rng);
            // Bad sectors on device 0 over a part of the data area.
            let start = pool.geometry().data_offset + 8 * CHUNK_BYTES;
            plans[0]
                .lock()
                .add_bad_read_range(start..start + 64 * CHUNK_BYTES);
            verify(&pool, &model);
            let report = pool.scrub().unwrap();
            assert!(report.unrepairable_stripes == 0);
            let status = pool.status();
            assert!(
                status.devices[0].read_errors > 0,
                "{layout}: read errors counted"
            );
            assert_eq!(
                status.devices[0].state, "ONLINE",
                "{layout}: data errors below the rate keep it in service; its counters show them"
            );
            assert!(status.devices[0].reason.is_none(), "{layout}: not faulted");
            verify(&pool, &model);
        },
    );
}

/// Errors past the rate mark the device DEGRADED, never FAULTED: it keeps serving (every
/// read it returns is verified), the state survives a reopen, and the data stays exact.
#[test]
fn error_rate_degrades_a_device_that_keeps_serving() {
    let (layout, devices) = ("rs:4+2", 6);
    let mems = mem_devices(devices, DEVICE_BYTES);
    let mut opts = options(layout);
    opts.open.error_threshold = 5;
    let pool = Pool::create(shared(&mems), vec![], &opts).unwrap();
    let mut rng = rng(seed(8000));
    let mut model = Model::new(pool.size());
    fill(&pool, &mut model, &mut rng);
    // Rot every shard-block of device 3 (one in each row of rs:4+2 on six members); the
    // reads meet the data ones, not the parity ones.
    let mut rotten_data = 0u64;
    for row in written_rows(&pool) {
        for shard in row.iter().filter(|shard| shard.device == 3) {
            mems[3].flip_bit(shard.offset + 5, 1);
            rotten_data += u64::from(shard.data_chunk.is_some());
        }
    }
    verify(&pool, &model);
    let status = pool.status();
    assert_eq!(status.devices[3].state, "DEGRADED");
    assert!(status.devices[3]
        .reason
        .as_deref()
        .unwrap()
        .contains("too many errors"));
    assert_eq!(status.remaining_tolerance, 2, "still counted as redundancy");
    // Every rotten shard-block the reads met was healed on the way: reading again finds
    // nothing more.
    let healed = status.devices[3].repaired_chunks;
    assert_eq!(healed, status.devices[3].checksum_errors);
    // Each rotten data shard-block was met once by the reads, and no other.
    assert_eq!(healed, rotten_data);
    verify(&pool, &model);
    assert_eq!(pool.status().devices[3].checksum_errors, healed);
    // Persisted: after a reopen it is still degraded, still a member, still serving.
    pool.close().unwrap();
    let pool = Pool::open(shared(&mems), &OpenOptions::default()).unwrap();
    assert_eq!(pool.status().devices[3].state, "DEGRADED");
    verify(&pool, &model);
}

#[test]
fn a_device_vanishing_mid_workload_is_faulted_and_io_continues() {
    each_layout(
        9000,
        "a_device_vanishing_mid_workload_is_faulted_and_io_continues",
        |layout, devices, rng, _seed| {
            let mems = mem_devices(devices, DEVICE_BYTES);
            let pool = Pool::create(shared(&mems), vec![], &options(layout)).unwrap();
            let mut model = Model::new(pool.size());
            random_writes(&pool, &mut model, rng, 40);
            let victim = rng.gen_range(0..devices);
            mems[victim].set_gone(true);
            random_writes(&pool, &mut model, rng, 40);
            pool.flush().unwrap();
            verify(&pool, &model);
            let status = pool.status();
            assert_eq!(status.devices[victim].state, "FAULTED", "{layout}");
            assert_eq!(status.health, stripestore::pool::PoolHealth::Degraded);
            drop(pool);
            let pool = reopen_without(&mems, victim);
            verify(&pool, &model);
        },
    );
}

fn reopen_without(mems: &[Arc<MemDevice>], victim: usize) -> Pool {
    let rest: Vec<_> = mems
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, m)| m.clone())
        .collect();
    Pool::open(shared(&rest), &OpenOptions::default()).unwrap()
}

/// A degraded member is in service: it receives every write. One missing at open is as
/// likely to hold newer data as a missing online member, so a stale member alone must not be
/// able to roll the pool back by recording the others as degraded (simulation seed 1003,
/// mirror:3: a member faulted after all three were degraded opened alone, from its old map).
#[test]
fn a_stale_member_cannot_open_alone_when_the_missing_ones_are_degraded() {
    let mems = mem_devices(2, DEVICE_BYTES);
    let mut opts = options("mirror:2");
    opts.open.error_threshold = 1;
    let pool = Pool::create(shared(&mems), vec![], &opts).unwrap();
    let old = vec![1u8; 65536];
    pool.write_at(0, &old).unwrap();
    pool.flush().unwrap();
    // Rot one copy on each member, in different rows (blocks 0 and 1: a mirror's row is one
    // block): the scrub heals them from the other copy and the errors degrade both members
    // (in service, recorded on disk).
    let mut rotten = 0;
    for block in 0..2u64 {
        for shard in pool.block_locations(block * BLOCK) {
            if shard.device == block as usize {
                mems[shard.device].flip_bit(shard.offset + 5, 1);
                rotten += 1;
            }
        }
    }
    assert_eq!(rotten, 2, "one copy of each block rotted");
    pool.scrub().unwrap();
    let status = pool.status();
    assert!(
        status.devices.iter().all(|d| d.state == "DEGRADED"),
        "{status}"
    );
    // Member 1 is lost; member 0 goes on alone with newer flushed data.
    pool.fault_device(1, "test: unplugged");
    let new = vec![2u8; 65536];
    pool.write_at(0, &new).unwrap();
    pool.flush().unwrap();
    pool.close().unwrap();
    // Member 1's own superblock records member 0 as degraded, which it cannot tell from
    // one that went on without it: refused, naming the missing member.
    let stale: Vec<SharedDevice> = vec![mems[1].clone() as SharedDevice];
    match Pool::open(stale, &OpenOptions::default()) {
        Err(err @ stripestore::Error::CannotProveCurrent { .. }) => {
            assert!(err.to_string().contains("mem0"), "{err}");
        }
        Err(err) => panic!("refused with another error: {err}"),
        Ok(pool) => {
            let mut buf = vec![0u8; 65536];
            let read = pool.read_at(0, &mut buf);
            panic!(
                "a stale member opened alone (reading {}): flushed data rolled back",
                match read {
                    Ok(()) if buf == old => "the old bytes".to_string(),
                    Ok(()) => "other bytes".to_string(),
                    Err(err) => format!("an error: {err}"),
                }
            );
        }
    }
    // With member 0 present, member 1 is recognised as stale and the newest data is served.
    let pool = Pool::open(shared(&mems), &OpenOptions::default()).unwrap();
    assert_eq!(pool.status().devices[1].state, "FAULTED");
    let mut buf = vec![0u8; 65536];
    pool.read_at(0, &mut buf).unwrap();
    assert_eq!(buf, new);
}
