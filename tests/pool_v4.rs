//! The pool on format version 4, stage 1 (docs/FORMAT.md V4.13, "Step 5b, second part"):
//! create and open through the pool, reads and writes through the volume, the superblock's
//! map parameters, degraded service with a member missing, member errors reaching the fault
//! policy, a member that fails a metadata write, a power cut; the rebuild of stage 2 (the
//! background scrub of stage 3 is in `pool_v4_scrub.rs`).

mod common;

use common::{faulty_members, random_writes, verify, CacheLoss, Volatile};
use rand::Rng;
use std::sync::Arc;
use stripestore::device::{Device, FaultKind, FaultyDevice, MemDevice, SharedDevice};
use stripestore::pool::Extent;
use stripestore::pool::FormatVersion;
use stripestore::testing::{mem_devices, random_bytes, shared, small_v4, CrashModel, Model};
use stripestore::{CreateOptions, Error, Layout, OpenOptions, Pool};

const DEVICE_BYTES: u64 = 16 << 20;

const LAYOUTS: [(&str, usize); 4] = [
    ("rs:4+2", 6),
    ("mirror:2", 2),
    ("raid10:2", 4),
    ("rs:2+1", 3),
];

use common::{v4_open_options as open_options, v4_options};

/// What writer threads wrote last, block by block, merged (each thread writes its own blocks).
fn last_written(
    threads: Vec<std::thread::JoinHandle<std::collections::BTreeMap<u64, Vec<u8>>>>,
) -> std::collections::BTreeMap<u64, Vec<u8>> {
    let mut expected = std::collections::BTreeMap::new();
    for thread in threads {
        expected.extend(thread.join().unwrap());
    }
    expected
}

/// Every 4 KiB block of `expected` reads back as written.
fn reads_back(pool: &Pool, expected: &std::collections::BTreeMap<u64, Vec<u8>>, label: &str) {
    for (block, data) in expected {
        let mut back = vec![0u8; 4096];
        pool.read_at(block * 4096, &mut back).unwrap();
        assert!(back == *data, "{label}: block {block}");
    }
}

/// v4 options on files of DEVICE_BYTES with segments of 32 slots, so that a scrub or a
/// rebuild reads a segment in several groups of slots.
fn v4_file_options(layout: &str) -> CreateOptions {
    let mut options = v4_options(layout);
    options.device_bytes = Some(DEVICE_BYTES);
    options.format = FormatVersion::V4(stripestore::pool::V4Options {
        segment_slots: 32,
        ..small_v4()
    });
    options
}

fn check_only_scrub(pool: &Pool) -> stripestore::pool::ScrubReport {
    let options = stripestore::pool::ScrubOptions {
        check_only: true,
        ..Default::default()
    };
    pool.scrub_with(&options, |_| {}).unwrap()
}

fn images(mems: &[Arc<MemDevice>]) -> Vec<Vec<u8>> {
    mems.iter()
        .map(|m| m.peek(0, usize::try_from(m.size()).unwrap()))
        .collect()
}

/// In every layout: random writes read back exactly before and after a close and reopen,
/// the superblocks say version 4 with the map parameters chosen, and status counts what is
/// allocated.
#[test]
fn a_v4_pool_reads_back_across_reopen_in_every_layout() {
    for (i, (layout, count)) in LAYOUTS.into_iter().enumerate() {
        let mut rng = stripestore::testing::rng(0x4000 + i as u64);
        let mems = mem_devices(count, DEVICE_BYTES);
        let pool = Pool::create(shared(&mems), vec![], &v4_options(layout)).unwrap();
        assert!(pool.size() > 0, "{layout}");
        assert_eq!(pool.status().allocated_bytes, 0, "{layout}");
        let mut model = Model::new(pool.size());
        random_writes(&pool, &mut model, &mut rng, 150);
        verify(&pool, &model);
        pool.flush().unwrap();
        let allocated = pool.status().allocated_bytes;
        assert!(
            allocated > 0 && allocated <= pool.size(),
            "{layout}: {allocated} of {}",
            pool.size()
        );
        let size = pool.size();
        pool.close().unwrap();
        let label = stripestore::pool::read_label(mems[0].as_ref())
            .unwrap()
            .unwrap();
        assert_eq!(label.format_version, 4, "{layout}");
        let params = label.map.expect("map parameters");
        assert_eq!(params.segment_slots, 4);
        assert_eq!(params.uberblock_slots, 4);
        assert_eq!(params.log_half_bytes, 64 << 10);
        assert_eq!(params.min_depth, 2);
        assert_eq!(label.volume_bytes, size);
        let pool = Pool::open(shared(&mems), &open_options()).unwrap();
        assert_eq!(pool.size(), size, "{layout}");
        verify(&pool, &model);
        random_writes(&pool, &mut model, &mut rng, 50);
        pool.discard(0, 3 * 4096 + 100).unwrap();
        model.write(0, &vec![0u8; 3 * 4096 + 100]);
        pool.close().unwrap();
        let pool = Pool::open(shared(&mems), &open_options()).unwrap();
        verify(&pool, &model);
        // Block status: the discarded whole blocks are unallocated.
        let extents = pool.allocation(0, 3 * 4096).unwrap();
        assert_eq!(extents.len(), 1, "{layout}: {extents:?}");
        assert!(!extents[0].allocated, "{layout}: {extents:?}");
        pool.close().unwrap();
    }
}

/// A v4 pool opens and serves with a member missing (reads rebuilt from the others, writes
/// and flushes go on), and reads back exactly after another reopen.
#[test]
fn a_v4_pool_serves_with_a_member_missing() {
    for (layout, count) in LAYOUTS {
        let mut rng = stripestore::testing::rng(0x4100);
        let mems = mem_devices(count, DEVICE_BYTES);
        let pool = Pool::create(shared(&mems), vec![], &v4_options(layout)).unwrap();
        let mut model = Model::new(pool.size());
        random_writes(&pool, &mut model, &mut rng, 100);
        pool.close().unwrap();
        let missing = count - 1;
        let present: Vec<SharedDevice> = shared(&mems)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| *i != missing)
            .map(|(_, d)| d)
            .collect();
        // With one of two mirrors missing the members present cannot prove they are current
        // (the v3 rule, unchanged): the operator says so.
        let forced = OpenOptions {
            force: true,
            ..open_options()
        };
        let pool = Pool::open(present.clone(), &forced).unwrap();
        verify(&pool, &model);
        random_writes(&pool, &mut model, &mut rng, 60);
        pool.flush().unwrap();
        verify(&pool, &model);
        pool.close().unwrap();
        let pool = Pool::open(present, &forced).unwrap();
        verify(&pool, &model);
        let status = pool.status();
        assert!(
            status.devices[missing].state != "ONLINE",
            "{layout}: {:?}",
            status.devices[missing]
        );
        pool.close().unwrap();
    }
}

/// Rot on a member is rebuilt on read, healed, and counted against that member by the fault
/// policy (the volume's member problems reach `Members::record_error`).
#[test]
fn rot_on_a_v4_member_is_healed_and_counted_against_it() {
    let mems = mem_devices(6, DEVICE_BYTES);
    let (devices, plans) = faulty_members(&mems, 77);
    let mut options = v4_options("rs:4+2");
    options.open.error_threshold = 1_000_000;
    let pool = Pool::create(devices.clone(), vec![], &options).unwrap();
    let mut rng = stripestore::testing::rng(0x4200);
    let data = random_bytes(&mut rng, 4 << 20);
    pool.write_at(0, &data).unwrap();
    pool.flush().unwrap();
    // Rot in member 1's data area (past its fixed areas).
    let data_offset = pool.geometry().data_offset;
    let mut rotted = 0;
    {
        let mut plan = plans[1].lock();
        for _ in 0..40 {
            let offset = data_offset + rng.gen_range(0..(2u64 << 20));
            plan.rot_at_rest(offset, rng.gen_range(0..8));
            rotted += 1;
        }
    }
    assert!(rotted > 0);
    let mut back = vec![0u8; data.len()];
    pool.read_at(0, &mut back).unwrap();
    assert!(back == data, "rotted bytes returned");
    let checksum_errors = pool.status().devices[1].checksum_errors;
    assert!(checksum_errors > 0, "no checksum error counted on member 1");
    let others: u64 = pool
        .status()
        .devices
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, d)| d.checksum_errors + d.read_errors + d.write_errors)
        .sum();
    assert_eq!(others, 0, "errors counted against healthy members");
    // Healed: a second read finds nothing more.
    pool.read_at(0, &mut back).unwrap();
    assert!(back == data);
    assert_eq!(pool.status().devices[1].checksum_errors, checksum_errors);
    pool.close().unwrap();
}

/// A member that fails a metadata write (a log record, an uberblock, a page copy, or any
/// write) is taken out of service while the pool can lose it, and the operation goes on
/// without it: every flush succeeds, nothing flushed is lost, before and after a reopen.
#[test]
fn a_member_failing_a_metadata_write_is_faulted_and_the_pool_goes_on() {
    for area in ["log", "uberblock rings", "anywhere"] {
        let mems = mem_devices(6, DEVICE_BYTES);
        let (devices, plans) = faulty_members(&mems, 91);
        let pool = Pool::create(devices.clone(), vec![], &v4_options("rs:4+2")).unwrap();
        let geometry = pool.geometry().clone();
        let region = match area {
            "log" => geometry.log_offset..geometry.data_offset,
            "uberblock rings" => {
                let [a, _] = geometry.uberblock_rings();
                a..a + 4 * 4096
            }
            _ => 0..DEVICE_BYTES,
        };
        let mut rng = stripestore::testing::rng(0x4300);
        let mut model = Model::new(pool.size());
        for round in 0..12 {
            if round == 4 {
                let mut plan = plans[3].lock();
                plan.set_region(region.clone());
                plan.arm(FaultKind::WriteError, 1);
            }
            // Small rounds are log records; large ones do not fit one and run a tree sync.
            let writes = if round % 2 == 0 { 10 } else { 200 };
            for _ in 0..writes {
                let offset = rng.gen_range(0..pool.size() / 4096 - 2) * 4096;
                let data = random_bytes(&mut rng, 8192);
                pool.write_at(offset, &data).unwrap();
                model.write(offset, &data);
            }
            pool.flush()
                .unwrap_or_else(|e| panic!("{area}, round {round}: {e}"));
        }
        assert_eq!(
            plans[3].lock().count(FaultKind::WriteError),
            1,
            "{area}: the fault was not injected"
        );
        assert_ne!(pool.status().devices[3].state, "ONLINE", "{area}");
        verify(&pool, &model);
        pool.close().unwrap();
        let pool = Pool::open(devices, &open_options()).unwrap();
        verify(&pool, &model);
        pool.close().unwrap();
    }
}

/// When the member that fails a metadata write cannot be lost (the pool is at its
/// tolerance), the flush fails naming it, later writes are refused with that error, reads go
/// on, and a reopen finds the last flushed state exactly.
#[test]
fn a_metadata_write_failure_the_pool_cannot_absorb_stops_writes_and_loses_nothing_flushed() {
    let mems = mem_devices(3, DEVICE_BYTES);
    let pool = Pool::create(shared(&mems), vec![], &v4_options("rs:2+1")).unwrap();
    let mut rng = stripestore::testing::rng(0x4500);
    let mut model = Model::new(pool.size());
    random_writes(&pool, &mut model, &mut rng, 60);
    pool.close().unwrap();
    // Member 2 is away: the pool runs without redundancy, and member 1 fails its next log
    // write.
    let (faulty, plan) = FaultyDevice::new(mems[1].clone(), 7);
    let faulty = Arc::new(faulty);
    let devices: Vec<SharedDevice> = vec![mems[0].clone(), faulty.clone()];
    let forced = OpenOptions {
        force: true,
        ..open_options()
    };
    let pool = Pool::open(devices.clone(), &forced).unwrap();
    verify(&pool, &model);
    let flushed = model.clone();
    pool.write_at(0, &[9u8; 8192]).unwrap();
    {
        let mut plan = plan.lock();
        let geometry = pool.geometry();
        plan.set_region(geometry.log_offset..geometry.data_offset);
        plan.arm(FaultKind::WriteError, 1);
    }
    let err = pool.flush().unwrap_err();
    assert!(err.to_string().contains("mem1"), "{err}");
    let refused = pool.write_at(8192, &[1u8; 4096]).unwrap_err();
    assert!(!refused.to_string().is_empty());
    // Reads go on (the block written before the failed flush reads either way: it was not
    // flushed; the rest is the flushed state).
    let mut back = vec![0u8; 4096];
    pool.read_at(1 << 20, &mut back).unwrap();
    assert!(back[..] == flushed.read(1 << 20, 4096)[..]);
    pool.simulate_power_loss();
    let pool = Pool::open(devices, &forced).unwrap();
    let mut all = vec![0u8; usize::try_from(pool.size()).unwrap()];
    pool.read_at(0, &mut all).unwrap();
    assert!(all[8192..] == flushed.read(8192, all.len() - 8192)[..]);
    let head = &all[..8192];
    assert!(
        head == flushed.read(0, 8192) || head == [9u8; 8192],
        "block 0 is neither old nor new"
    );
    pool.close().unwrap();
}

/// A power cut (every unflushed write dropped, or kept at random) loses nothing flushed and
/// leaves every block of an unflushed write old or new, in every layout.
#[test]
fn a_power_cut_loses_nothing_flushed_on_v4() {
    for (layout, count) in LAYOUTS {
        for loss in [CacheLoss::DropAll, CacheLoss::Seeded(5), CacheLoss::KeepAll] {
            let mut rng = stripestore::testing::rng(0x4400);
            let mems = mem_devices(count, DEVICE_BYTES);
            let volatile: Vec<Arc<Volatile>> = mems
                .iter()
                .map(|m| Arc::new(Volatile::new(m.clone())))
                .collect();
            let devices: Vec<SharedDevice> =
                volatile.iter().map(|v| v.clone() as SharedDevice).collect();
            let pool = Pool::create(devices.clone(), vec![], &v4_options(layout)).unwrap();
            let mut model = CrashModel::new(pool.size());
            for round in 0..6 {
                for _ in 0..20 {
                    let len = rng.gen_range(1..40_000usize);
                    let offset = rng.gen_range(0..pool.size() - len as u64);
                    let data = random_bytes(&mut rng, len);
                    pool.write_at(offset, &data).unwrap();
                    model.write(offset, &data);
                }
                if round % 2 == 0 {
                    pool.flush().unwrap();
                    model.flushed();
                }
            }
            pool.simulate_power_loss();
            for v in &volatile {
                v.lose_power(loss);
            }
            let pool = Pool::open(devices, &open_options()).unwrap();
            let mut all = vec![0u8; usize::try_from(pool.size()).unwrap()];
            pool.read_at(0, &mut all).unwrap();
            model
                .check_after_crash(&all)
                .unwrap_or_else(|e| panic!("{layout}, {loss}: {e}"));
            pool.close().unwrap();
        }
    }
}

/// Replace on a v4 pool, for a member lost and for a healthy one, in every layout, with
/// writes and flushes between the rebuild's steps: the new device holds the position's rows,
/// page copies and the newest uberblock, so the volume reads back exactly from it and the
/// other survivors once `tolerance` further original members are gone (across a reopen); a
/// spare given to `replace_with_spare` works the same.
#[test]
fn replace_on_v4_rebuilds_the_position_onto_the_new_device() {
    for (i, (layout, count)) in LAYOUTS.into_iter().enumerate() {
        let mut rng = stripestore::testing::rng(0x4800 + i as u64);
        let mems = mem_devices(count, DEVICE_BYTES);
        let spare = Arc::new(MemDevice::new("spare", DEVICE_BYTES));
        let mut options = v4_options(layout);
        options.open.auto_replace = false;
        let mut all: Vec<SharedDevice> = shared(&mems);
        let pool =
            Pool::create(all.clone(), vec![spare.clone() as SharedDevice], &options).unwrap();
        let mut model = Model::new(pool.size());
        random_writes(&pool, &mut model, &mut rng, 120);
        // Position 0 is lost; it is replaced by a new device.
        pool.offline("mem0").unwrap();
        random_writes(&pool, &mut model, &mut rng, 30);
        let fresh = Arc::new(MemDevice::new("fresh", DEVICE_BYTES));
        pool.replace("mem0", fresh.clone() as SharedDevice, false)
            .unwrap();
        // The volume stays in use while the replacement is filled, a few segments at a time.
        while pool.status().devices[0].state != "ONLINE" {
            random_writes(&pool, &mut model, &mut rng, 5);
            pool.flush().unwrap();
            pool.rebuild_step(false).unwrap();
        }
        verify(&pool, &model);
        // A healthy member is replaced by the spare, with writes during its rebuild.
        let last = format!("mem{}", count - 1);
        pool.replace_with_spare(&last, "spare").unwrap();
        random_writes(&pool, &mut model, &mut rng, 30);
        pool.run_rebuilds(|_| {}).unwrap();
        assert_eq!(pool.status().devices[count - 1].state, "ONLINE", "{layout}");
        assert!(pool.rebuild_progress().is_empty(), "{layout}");
        random_writes(&pool, &mut model, &mut rng, 30);
        pool.close().unwrap();
        all[0] = fresh.clone();
        all[count - 1] = spare.clone();
        // Lose `tolerance` original members that were not replaced: the new devices must
        // carry their positions.
        let tolerance: usize = layout.parse::<Layout>().unwrap().tolerance();
        let keep: Vec<SharedDevice> = all
            .iter()
            .enumerate()
            .filter(|(p, _)| {
                *p == 0 || *p == count - 1 || (1..count - 1).take(tolerance).all(|q| q != *p)
            })
            .map(|(_, d)| d.clone())
            .collect();
        let lost = count - keep.len();
        let forced = OpenOptions {
            force: true,
            ..open_options()
        };
        let pool = Pool::open(keep, &forced).unwrap();
        verify(&pool, &model);
        eprintln!("{layout}: replaced 2 positions, then read back with {lost} originals lost");
        pool.close().unwrap();
    }
}

/// A v4 rebuild onto a file (io_uring, segments of 32 slots) fills the position: after two
/// more original members are lost (their files deleted, so no scan finds them), every byte
/// reads back.
#[test]
fn a_v4_rebuild_on_files_fills_the_position_and_reads_back_with_two_more_lost() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<std::path::PathBuf> = (0..6).map(|i| dir.path().join(format!("d{i}"))).collect();
    let mut options = v4_file_options("rs:4+2");
    options.open.auto_replace = false;
    let pool = Pool::create_paths(&paths, &[], &options).unwrap();
    let mut rng = stripestore::testing::rng(0x4830);
    let mut model = Model::new(pool.size());
    // 3 MiB at the start (48 slots of rows), then random writes over the rest.
    let data = random_bytes(&mut rng, 3 << 20);
    pool.write_at(0, &data).unwrap();
    model.write(0, &data);
    random_writes(&pool, &mut model, &mut rng, 60);
    let lost = paths[0].display().to_string();
    pool.offline(&lost).unwrap();
    random_writes(&pool, &mut model, &mut rng, 20);
    let fresh = dir.path().join("fresh");
    let device = stripestore::device::open_device(&fresh, Some(DEVICE_BYTES)).unwrap();
    pool.replace(&lost, device, false).unwrap();
    pool.run_rebuilds(|_| {}).unwrap();
    assert_eq!(pool.status().devices[0].state, "ONLINE");
    verify(&pool, &model);
    pool.close().unwrap();
    // The fresh file and three originals: members 1 and 2 are lost (and the lost member 0).
    for lost in &paths[..3] {
        std::fs::remove_file(lost).unwrap();
    }
    let keep = [fresh, paths[3].clone(), paths[4].clone(), paths[5].clone()];
    let forced = OpenOptions {
        force: true,
        ..open_options()
    };
    let pool = Pool::open_paths(&keep, &forced).unwrap();
    verify(&pool, &model);
    pool.close().unwrap();
}

/// A write leader that panics while it lands a group (planted) costs the writes it carried a
/// clear error, never a writer waiting for ever; the pool then refuses writes, still serves
/// reads, and after a reopen every block reads its old or its new bytes, nothing else.
#[test]
fn a_write_leader_that_panics_fails_its_writes_and_no_writer_waits_for_ever() {
    let mems = mem_devices(6, DEVICE_BYTES);
    let pool = Arc::new(Pool::create(shared(&mems), vec![], &v4_options("rs:4+2")).unwrap());
    let mut rng = stripestore::testing::rng(0x4840);
    let data = random_bytes(&mut rng, 64 << 10);
    pool.write_at(0, &data).unwrap();
    pool.flush().unwrap();
    pool.plant_leader_panic();
    let writers: Vec<_> = (0..8u64)
        .map(|t| {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || pool.write_at((16 + t) * 4096, &[t as u8 + 1; 4096]))
        })
        .collect();
    // Joined on a thread of its own: a writer waiting for ever fails the test, not the suite.
    let (sent, outcomes) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let joined: Vec<_> = writers.into_iter().map(|w| w.join()).collect();
        let _ = sent.send(joined);
    });
    let joined = outcomes
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("a writer still waits a minute after the leader panicked");
    let panicked = joined.iter().filter(|j| j.is_err()).count();
    assert_eq!(panicked, 1, "the planted panic happens once, in the leader");
    for outcome in joined.iter().flatten() {
        assert!(outcome.is_err(), "a write was acknowledged: {outcome:?}");
    }
    // Writes are refused now; reads go on.
    assert!(pool.write_at(0, &[7; 4096]).is_err());
    let mut back = vec![0u8; data.len()];
    pool.read_at(0, &mut back).unwrap();
    assert!(back == data);
    let pool = Arc::into_inner(pool).unwrap();
    drop(pool);
    let pool = Pool::open(shared(&mems), &open_options()).unwrap();
    pool.read_at(0, &mut back).unwrap();
    assert!(back == data, "flushed data after the reopen");
    for t in 0..8u64 {
        let mut block = vec![0u8; 4096];
        pool.read_at((16 + t) * 4096, &mut block).unwrap();
        assert!(
            block == vec![0u8; 4096] || block == vec![t as u8 + 1; 4096],
            "block {}: neither its old nor its new bytes",
            16 + t
        );
    }
    pool.close().unwrap();
}

/// The size in the superblocks is the volume's: a pool recorded smaller than this build would
/// make it is served at the recorded size; one recorded larger than this build leaves room
/// for is refused naming both sizes, with nothing written.
#[test]
fn the_recorded_volume_size_is_the_authority() {
    let mems = mem_devices(3, DEVICE_BYTES);
    let pool = Pool::create(shared(&mems), vec![], &v4_options("rs:2+1")).unwrap();
    let size = pool.size();
    pool.close().unwrap();
    let relabel = |volume_bytes: u64| {
        for mem in &mems {
            let mut label = stripestore::pool::read_label(mem.as_ref())
                .unwrap()
                .unwrap();
            label.volume_bytes = volume_bytes;
            label.generation += 1;
            let bytes = label.encode().unwrap();
            mem.write_at(0, &bytes).unwrap();
            mem.write_at(mem.size() - bytes.len() as u64, &bytes)
                .unwrap();
        }
    };
    relabel(size - 8 * 4096);
    let pool = Pool::open(shared(&mems), &open_options()).unwrap();
    assert_eq!(pool.size(), size - 8 * 4096);
    pool.close().unwrap();
    relabel(size + 4096);
    let before = images(&mems);
    let err = Pool::open(shared(&mems), &open_options()).unwrap_err();
    assert!(
        matches!(err, Error::Unsupported { .. })
            && err.to_string().contains(&(size + 4096).to_string()),
        "{err}"
    );
    assert!(images(&mems) == before, "a refused open wrote");
}

/// Concurrent small writes are written in groups (one writer leads, the others sleep until
/// their write is carried): from 8 threads, each rewriting its own blocks many times, every
/// block reads back as the last write its thread made, before and after a reopen (how many
/// writes shared a group depends on timing and is not asserted).
#[test]
fn concurrent_small_writes_are_grouped_and_read_back() {
    let mems = mem_devices(6, DEVICE_BYTES);
    let pool = Arc::new(Pool::create(shared(&mems), vec![], &v4_options("rs:4+2")).unwrap());
    let blocks = pool.size() / 4096;
    // Each thread owns the blocks `b` with `b % 8 == thread` and writes each many times;
    // the last write of each block is remembered.
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || {
                let mut rng = stripestore::testing::rng(0x4600 + t);
                let mut last = std::collections::BTreeMap::new();
                for _ in 0..400 {
                    let block = rng.gen_range(0..blocks / 8) * 8 + t;
                    let data = random_bytes(&mut rng, 4096);
                    pool.write_at(block * 4096, &data).unwrap();
                    last.insert(block, data);
                }
                last
            })
        })
        .collect();
    let expected = last_written(threads);
    pool.flush().unwrap();
    reads_back(&pool, &expected, "");
    let pool = Arc::into_inner(pool).unwrap();
    pool.close().unwrap();
    let pool = Pool::open(shared(&mems), &open_options()).unwrap();
    reads_back(&pool, &expected, "after a reopen");
    pool.close().unwrap();
}

/// Eight writers of whole rows on files (io_uring, so each unit of the leader's pipeline is on
/// the devices from a thread of its own while earlier ones land: FORMAT.md V4.6, "Several
/// groups on the devices"), each in its own blocks, many times over: every block reads its
/// last write, before and after a reopen, and a check-only scrub finds nothing.
#[test]
fn concurrent_whole_row_writes_on_files_go_through_the_pipeline_and_read_back() {
    for (layout, members) in [("rs:4+2", 6), ("mirror:2", 2)] {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<std::path::PathBuf> = (0..members)
            .map(|i| dir.path().join(format!("d{i}")))
            .collect();
        let mut options = v4_options(layout);
        options.device_bytes = Some(DEVICE_BYTES);
        let pool = Arc::new(Pool::create_paths(&paths, &[], &options).unwrap());
        let k = pool.geometry().data_chunks() as u64;
        let row = k * 4096;
        // Thread `t` owns the rows `r` with `r / 8 % 8 == t` (runs of eight rows).
        let rows = pool.size() / row / 64 * 64;
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    let mut rng = stripestore::testing::rng(0x9100 + t);
                    let mut last = std::collections::BTreeMap::new();
                    for _ in 0..120 {
                        let run = rng.gen_range(0..rows / 64) * 64 + t * 8;
                        let first = run + rng.gen_range(0..8);
                        let count = rng.gen_range(1..=run + 8 - first);
                        let data = random_bytes(&mut rng, (count * row) as usize);
                        pool.write_at(first * row, &data).unwrap();
                        for (i, block) in data.chunks(4096).enumerate() {
                            last.insert(first * k + i as u64, block.to_vec());
                        }
                    }
                    last
                })
            })
            .collect();
        let expected = last_written(threads);
        pool.flush().unwrap();
        reads_back(&pool, &expected, layout);
        let pool = Arc::into_inner(pool).unwrap();
        pool.close().unwrap();
        let pool = Pool::open_paths(&paths, &open_options()).unwrap();
        reads_back(&pool, &expected, layout);
        let scrub = check_only_scrub(&pool);
        assert_eq!(
            (scrub.bad_shards, scrub.unrepairable_stripes),
            (0, 0),
            "{layout}: {scrub:?}"
        );
        pool.close().unwrap();
    }
}

/// A scrub of a v4 pool on files (io_uring: each group of slots is read while the group
/// before is checked and repaired) finds rot spread over many groups, repairs every rotted
/// cell to its exact bytes, and a second scrub finds nothing.
#[test]
fn a_scrub_on_files_repairs_rot_in_every_group_of_slots_to_the_exact_bytes() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<std::path::PathBuf> = (0..6).map(|i| dir.path().join(format!("d{i}"))).collect();
    let pool = Pool::create_paths(&paths, &[], &v4_file_options("rs:4+2")).unwrap();
    let mut rng = stripestore::testing::rng(0x4710);
    // 3 MiB over rows of 4 x 16 KiB chunks: 48 slots, in segments of 32 read eight at a
    // time.
    let data = random_bytes(&mut rng, 3 << 20);
    pool.write_at(0, &data).unwrap();
    pool.flush().unwrap();
    let data_offset = pool.geometry().data_offset;
    pool.close().unwrap();
    // Rot behind the pool's back: three bytes in each of 24 distinct cells of member 4's
    // first 768 KiB of rows (the span the 48 slots take on it).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&paths[4])
        .unwrap();
    let mut cells = std::collections::BTreeSet::new();
    while cells.len() < 24 {
        cells.insert(rng.gen_range(0..(768u64 << 10) / 4096));
    }
    let mut intact = Vec::new();
    for cell in &cells {
        let at = data_offset + cell * 4096;
        let mut block = vec![0u8; 4096];
        file.read_exact_at(&mut block, at).unwrap();
        let mut bad = block.clone();
        for b in &mut bad[100..103] {
            *b ^= 0x5a;
        }
        file.write_all_at(&bad, at).unwrap();
        intact.push((at, block));
    }
    file.sync_all().unwrap();
    let pool = Pool::open_paths(&paths, &open_options()).unwrap();
    let repaired = pool.scrub().unwrap();
    let found = repaired.devices[4].counters.checksum_errors;
    assert!(found > 0 && found <= 24, "{repaired:?}");
    assert_eq!(repaired.devices[4].counters.repaired, found, "{repaired:?}");
    assert!(!repaired.found_data_loss(), "{repaired:?}");
    let again = pool.scrub().unwrap();
    assert!(!again.found_damage(), "{again:?}");
    let mut back = vec![0u8; data.len()];
    pool.read_at(0, &mut back).unwrap();
    assert!(back == data);
    pool.close().unwrap();
    // Every rotted cell the rows use holds its exact bytes again.
    let mut healed = 0;
    for (at, block) in &intact {
        let mut now = vec![0u8; 4096];
        file.read_exact_at(&mut now, *at).unwrap();
        healed += usize::from(now == *block);
    }
    assert_eq!(healed as u64, found, "cells healed to their exact bytes");
}

/// A scrub of a v4 pool finds rot on one member's data rows, counts it against that member
/// only, repairs it (a second scrub finds nothing); a check-only scrub first finds the same
/// and writes no byte; every error is accounted for exactly once per member.
#[test]
fn a_v4_scrub_finds_repairs_and_counts_rot_per_member() {
    let mems = mem_devices(6, DEVICE_BYTES);
    let (devices, plans) = faulty_members(&mems, 500);
    let pool = Pool::create(devices, vec![], &v4_options("rs:4+2")).unwrap();
    let mut rng = stripestore::testing::rng(0x4700);
    let data = random_bytes(&mut rng, 3 << 20);
    pool.write_at(0, &data).unwrap();
    pool.flush().unwrap();
    let clean = pool.scrub().unwrap();
    assert!(!clean.found_damage(), "{clean:?}");
    assert!(clean.stripes_checked > 0);
    // Rot at rest in member 4's rows: one byte in each of 12 distinct 4 KiB cells.
    let data_offset = pool.geometry().data_offset;
    let mut cells = std::collections::BTreeSet::new();
    while cells.len() < 12 {
        cells.insert(rng.gen_range(0..(1u64 << 20) / 4096));
    }
    for cell in &cells {
        plans[4]
            .lock()
            .rot_at_rest(data_offset + cell * 4096 + 100, 3);
    }
    let before = images(&mems);
    let looked = check_only_scrub(&pool);
    // The rot is in the fault layer, not the images; the scrub's record goes to the
    // superblocks (the first and last 64 KiB) of a read-write pool, nothing else changes.
    let body = |images: Vec<Vec<u8>>| -> Vec<Vec<u8>> {
        images
            .into_iter()
            .map(|image| image[64 << 10..image.len() - (64 << 10)].to_vec())
            .collect()
    };
    assert!(
        body(images(&mems)) == body(before),
        "a check-only scrub wrote data or metadata"
    );
    let rotted_cells_in_use = looked.devices[4].counters.checksum_errors;
    assert!(rotted_cells_in_use > 0, "{looked:?}");
    assert!(rotted_cells_in_use <= 12);
    for (i, device) in looked.devices.iter().enumerate() {
        assert!(
            device.counters.errors_accounted(),
            "member {i}: {:?}",
            device.counters
        );
        if i != 4 {
            assert_eq!(
                device.counters.checksum_errors + device.counters.io_errors,
                0,
                "member {i}"
            );
        }
    }
    assert_eq!(
        looked.devices[4].counters.not_rewritten,
        rotted_cells_in_use
    );
    assert_eq!(looked.totals.repaired, 0);
    let repaired = pool.scrub().unwrap();
    assert_eq!(
        repaired.devices[4].counters.checksum_errors,
        rotted_cells_in_use
    );
    assert_eq!(repaired.devices[4].counters.repaired, rotted_cells_in_use);
    assert!(!repaired.found_data_loss());
    let again = pool.scrub().unwrap();
    assert!(!again.found_damage(), "{again:?}");
    let mut back = vec![0u8; data.len()];
    pool.read_at(0, &mut back).unwrap();
    assert!(back == data);
    pool.close().unwrap();
    // Looking never writes: a check-only scrub of a read-only open changes no byte at all.
    let before = images(&mems);
    let look = Pool::open(
        shared(&mems),
        &OpenOptions {
            read_only: true,
            ..open_options()
        },
    )
    .unwrap();
    let report = check_only_scrub(&look);
    assert!(!report.found_damage(), "{report:?}");
    look.close().unwrap();
    assert!(
        images(&mems) == before,
        "a read-only check-only scrub wrote"
    );
}

/// `mem` with both uberblock rings zeroed, behind a fault injector failing every write into
/// the first ring.
fn rings_lost_and_unwritable(
    mem: &Arc<MemDevice>,
    rings: &[std::ops::Range<u64>; 2],
) -> SharedDevice {
    for ring in rings {
        mem.poke(ring.start, &vec![0u8; 4 * 4096]);
    }
    let (faulty, plan) = FaultyDevice::new(mem.clone(), 3);
    {
        let mut plan = plan.lock();
        plan.set_region(rings[0].clone());
        plan.arm(FaultKind::WriteError, 16);
    }
    Arc::new(faulty)
}

/// A writable open gives every member in service the uberblock it opened (docs/FORMAT.md
/// V4.8, "Recovery at open", step 4). A member that cannot take it is taken out of service
/// and that is recorded before anything is served, when the pool can lose it; when it cannot,
/// the open is refused naming the member. Either way the data reads back exactly.
#[test]
fn a_member_that_cannot_be_brought_up_to_date_at_open_is_faulted_or_the_open_refused() {
    let mems = mem_devices(6, DEVICE_BYTES);
    let pool = Pool::create(shared(&mems), vec![], &v4_options("rs:4+2")).unwrap();
    let mut rng = stripestore::testing::rng(0x4700);
    let mut model = Model::new(pool.size());
    random_writes(&pool, &mut model, &mut rng, 60);
    let geometry = pool.geometry().clone();
    pool.close().unwrap();
    let rings = geometry
        .uberblock_rings()
        .map(|start| start..start + 4 * 4096);
    // Member 4 lost its rings and fails every write into them.
    let mut devices = shared(&mems);
    devices[4] = rings_lost_and_unwritable(&mems[4], &rings);
    let pool = Pool::open(devices.clone(), &open_options()).unwrap();
    let status = pool.status();
    assert_ne!(status.devices[4].state, "ONLINE", "{:?}", status.devices[4]);
    assert_eq!(status.devices[4].write_errors, 1, "{:?}", status.devices[4]);
    verify(&pool, &model);
    pool.simulate_power_loss();
    // The fault was recorded in the others' superblocks before anything was served.
    let pool = Pool::open(shared(&mems), &open_options()).unwrap();
    assert_ne!(pool.status().devices[4].state, "ONLINE");
    verify(&pool, &model);
    pool.close().unwrap();

    // At its tolerance the pool cannot lose the member: the open is refused, naming it.
    let mems = mem_devices(3, DEVICE_BYTES);
    let pool = Pool::create(shared(&mems), vec![], &v4_options("rs:2+1")).unwrap();
    let mut model = Model::new(pool.size());
    random_writes(&pool, &mut model, &mut rng, 30);
    pool.close().unwrap();
    let devices: Vec<SharedDevice> =
        vec![mems[0].clone(), rings_lost_and_unwritable(&mems[1], &rings)];
    let forced = OpenOptions {
        force: true,
        ..open_options()
    };
    match Pool::open(devices, &forced) {
        Err(Error::PoolUnavailable { lost_devices, .. }) => {
            assert!(lost_devices.iter().any(|d| d == "mem1"), "{lost_devices:?}");
        }
        other => panic!("an open that cannot bring mem1 up to date gave {other:?}"),
    }
    // Without the failing member's writes failing, the same open goes on and reads exactly.
    let devices: Vec<SharedDevice> = vec![mems[0].clone(), mems[1].clone()];
    let pool = Pool::open(devices, &forced).unwrap();
    verify(&pool, &model);
    pool.close().unwrap();
}

/// A replacement being filled is no copy a read can use: with mirror:2 at its tolerance (one
/// member lost, a spare being filled in its place), a write the last member fails is refused,
/// never acknowledged on the strength of the spare's copy alone (review of stage 2, finding
/// 1), and the flushed volume reads back exactly.
#[test]
fn a_write_that_reaches_only_the_replacement_is_not_acknowledged() {
    let mems = mem_devices(2, DEVICE_BYTES);
    let (devices, plans) = faulty_members(&mems, 17);
    let spare = Arc::new(MemDevice::new("spare", DEVICE_BYTES));
    let mut options = v4_options("mirror:2");
    options.open.auto_replace = false;
    options.open.background_rebuild = false;
    let pool = Pool::create(devices, vec![spare.clone() as SharedDevice], &options).unwrap();
    let mut rng = stripestore::testing::rng(0x4900);
    let mut model = Model::new(pool.size());
    random_writes(&pool, &mut model, &mut rng, 40);
    pool.flush().unwrap();
    pool.offline("mem1").unwrap();
    pool.replace_with_spare("mem1", "spare").unwrap();
    assert_eq!(
        pool.rebuild_progress().len(),
        1,
        "the spare is being filled"
    );
    let geometry = pool.geometry().clone();
    {
        let mut plan = plans[0].lock();
        plan.set_region(geometry.data_offset..DEVICE_BYTES);
        plan.arm(FaultKind::WriteError, 64);
    }
    let refused = pool.write_at(1 << 20, &[7u8; 8192]);
    assert!(
        refused.is_err(),
        "a write only the replacement holds was acknowledged"
    );
    assert!(plans[0].lock().count(FaultKind::WriteError) > 0);
    plans[0].lock().clear();
    // What the fill device refused at the position out of service is counted against nobody.
    random_writes(&pool, &mut model, &mut rng, 10);
    pool.flush().unwrap();
    let out = &pool.status().devices[1];
    assert_eq!((out.read_errors, out.write_errors), (0, 0), "{out:?}");
    pool.run_rebuilds(|_| {}).unwrap();
    let mut back = vec![0u8; 8192];
    pool.read_at(1 << 20, &mut back).unwrap();
    assert!(
        back[..] == model.read(1 << 20, 8192)[..],
        "the refused write changed the volume"
    );
    verify(&pool, &model);
    pool.close().unwrap();
}

/// A rebuild cut by a power loss starts over at the next open (nothing of its progress is
/// recorded on v4) and then runs in the background thread while writes go on; once it is
/// done, the volume reads back exactly with another original member gone.
#[test]
fn a_v4_rebuild_cut_by_a_power_loss_starts_over_and_finishes_in_the_background() {
    let mems = mem_devices(3, DEVICE_BYTES);
    let spare = Arc::new(MemDevice::new("spare", DEVICE_BYTES));
    let mut options = v4_options("rs:2+1");
    options.open.auto_replace = false;
    options.open.background_rebuild = false;
    let pool = Pool::create(shared(&mems), vec![spare.clone() as SharedDevice], &options).unwrap();
    let mut rng = stripestore::testing::rng(0x4a00);
    let mut model = Model::new(pool.size());
    random_writes(&pool, &mut model, &mut rng, 80);
    pool.flush().unwrap();
    pool.offline("mem2").unwrap();
    pool.replace_with_spare("mem2", "spare").unwrap();
    for _ in 0..2 {
        random_writes(&pool, &mut model, &mut rng, 5);
        pool.rebuild_step(false).unwrap();
    }
    pool.flush().unwrap();
    pool.simulate_power_loss();

    let mut devices = shared(&mems);
    devices.push(spare.clone());
    let background = OpenOptions {
        background_rebuild: true,
        ..open_options()
    };
    let pool = Pool::open(devices, &background).unwrap();
    assert_eq!(pool.rebuild_progress().len(), 1, "the rebuild is resumed");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !pool.rebuild_progress().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the background rebuild never ended"
        );
        random_writes(&pool, &mut model, &mut rng, 2);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(pool.status().devices[2].state, "ONLINE");
    assert_eq!(pool.status().devices[2].path, "spare");
    verify(&pool, &model);
    pool.close().unwrap();
    // mem0 is lost: the spare carries position 2.
    let forced = OpenOptions {
        force: true,
        ..open_options()
    };
    let pool = Pool::open(vec![mems[1].clone(), spare.clone()], &forced).unwrap();
    verify(&pool, &model);
    pool.close().unwrap();
}

/// `CreateOptions::new` gives format version 4 with sizes for large members; on small ones
/// the create lowers them (docs/FORMAT.md V4.2, "Small members"): each log half at most
/// 1/64 of the member, an uberblock slot per 2 MiB, and segments small enough for 256 of
/// them, so the hard reserve (about 25 segments) leaves most of the member for data. What
/// was chosen is recorded in the superblocks and read back at open; every layout holds and
/// returns a volume written whole. Members of 2 GiB (sparse files) keep the sizes as given.
#[test]
fn default_v4_sizes_are_fitted_to_small_members_and_kept_on_large_ones() {
    let defaults = match CreateOptions::new(Layout::Mirror { copies: 2 }).format {
        FormatVersion::V4(v4) => v4,
        FormatVersion::V3 => panic!("the default format is 4"),
    };
    for (layout, count) in LAYOUTS {
        let member = 16u64 << 20;
        let mems = mem_devices(count, member);
        let options = CreateOptions::new(layout.parse().unwrap());
        let pool = Pool::create(shared(&mems), vec![], &options).unwrap();
        let map = stripestore::pool::read_label(mems[0].as_ref())
            .unwrap()
            .unwrap()
            .map
            .unwrap();
        assert_eq!(map.log_half_bytes, member / 64, "{layout}");
        assert_eq!(map.uberblock_slots, member / (2 << 20), "{layout}");
        let slots = pool.geometry().slots;
        assert!(
            map.segment_slots == 4 || slots / map.segment_slots >= 256,
            "{layout}: {} slots in segments of {}",
            slots,
            map.segment_slots
        );
        assert!(map.segment_slots < defaults.segment_slots, "{layout}");
        // Most of what the layout can hold is volume.
        let geometry = pool.geometry();
        let raw_data =
            member * count as u64 * geometry.data_chunks() as u64 / geometry.width() as u64;
        assert!(
            pool.size() * 10 >= raw_data * 7,
            "{layout}: a volume of {} from {raw_data} bytes of data space",
            pool.size()
        );
        let mut rng = stripestore::testing::rng(0xf17);
        let data = random_bytes(&mut rng, pool.size() as usize);
        pool.write_at(0, &data).unwrap();
        pool.close().unwrap();
        let pool = Pool::open(shared(&mems), &OpenOptions::default()).unwrap();
        let mut back = vec![0u8; data.len()];
        pool.read_at(0, &mut back).unwrap();
        assert!(back == data, "{layout}: the volume reads back");
    }
    // Large members (sparse files; create writes only the fixed areas and the first pages).
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<std::path::PathBuf> = (0..6).map(|i| dir.path().join(format!("d{i}"))).collect();
    let mut options = CreateOptions::new("rs:4+2".parse().unwrap());
    options.device_bytes = Some(2 << 30);
    let pool = Pool::create_paths(&paths, &[], &options).unwrap();
    pool.close().unwrap();
    let device = stripestore::device::FileDevice::open(&paths[0]).unwrap();
    let map = stripestore::pool::read_label(&device)
        .unwrap()
        .unwrap()
        .map
        .unwrap();
    assert_eq!(
        (map.log_half_bytes, map.uberblock_slots, map.segment_slots),
        (
            defaults.log_half_bytes,
            defaults.uberblock_slots,
            defaults.segment_slots
        )
    );
}

/// Repairs in place are counted per member as on version 3 (`status`'s REPAIRED): a read that
/// meets a rotten data shard-block rewrites it and counts one repair on its member; a scrub
/// that rewrites rotten parity (which no read touches) counts one each too. Rot is planted
/// where `Pool::block_locations` says the rows are, one place per row, on members 0 and 1.
#[test]
fn heals_by_reads_and_by_the_scrub_count_as_repairs_on_their_members() {
    let mems = mem_devices(6, DEVICE_BYTES);
    let pool = Pool::create(shared(&mems), vec![], &v4_options("rs:4+2")).unwrap();
    let mut rng = stripestore::testing::rng(0x4ea1);
    let data = random_bytes(&mut rng, 2 << 20);
    pool.write_at(0, &data).unwrap();
    pool.flush().unwrap();
    let flip = |member: usize, offset: u64| {
        let byte = mems[member].peek(offset + 100, 1)[0];
        mems[member].poke(offset + 100, &[byte ^ 0x10]);
    };
    // Data shard-blocks of rows 64 KiB apart (distinct rows), each on member 0 or 1.
    let mut data_rot = [0u64; 2];
    let mut parity_rot = [0u64; 2];
    for (i, offset) in (0..32u64).map(|i| (i, i * 65536)) {
        let locations = pool.block_locations(offset);
        assert_eq!(locations.len(), 6, "row of block {offset}");
        let member = (i % 2) as usize;
        let wanted_data = i < 16;
        if let Some(place) = locations
            .iter()
            .find(|l| l.device == member && l.data_chunk.is_some() == wanted_data)
        {
            flip(member, place.offset);
            if wanted_data {
                data_rot[member] += 1;
            } else {
                parity_rot[member] += 1;
            }
        }
    }
    assert!(data_rot.iter().sum::<u64>() > 0 && parity_rot.iter().sum::<u64>() > 0);
    let repaired = |pool: &Pool| -> Vec<u64> {
        pool.status().devices[..2]
            .iter()
            .map(|d| d.repaired_chunks)
            .collect()
    };
    let mut back = vec![0u8; data.len()];
    pool.read_at(0, &mut back).unwrap();
    assert!(back == data);
    assert_eq!(repaired(&pool), data_rot.to_vec(), "heals by reads");
    let report = pool.scrub().unwrap();
    assert_eq!(report.totals.repaired, parity_rot.iter().sum::<u64>());
    assert_eq!(
        repaired(&pool),
        vec![data_rot[0] + parity_rot[0], data_rot[1] + parity_rot[1]],
        "and the scrub's"
    );
}

/// `Pool::allocation` on a sparse v4 volume of several GiB (rs:4+2 on six 2 GiB sparse files):
/// runs of written 4 KiB blocks scattered over it, partial-block writes, and 4 KiB-aligned
/// discards cutting into them. The reported runs equal a model of which blocks hold written
/// data, exactly, before any flush (the changes only in the log's overlay and dirty pages),
/// after a flush and after a reopen; and the map pages never written are skipped whole, so
/// the whole volume is answered in one or two calls (looking at 64 MiB per call took over a
/// hundred).
#[test]
fn allocation_of_a_sparse_volume_matches_the_written_blocks_and_skips_unwritten_pages() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<std::path::PathBuf> = (0..6).map(|i| dir.path().join(format!("d{i}"))).collect();
    let mut options = v4_options("rs:4+2");
    options.device_bytes = Some(2 << 30);
    options.format = FormatVersion::V4(stripestore::pool::V4Options::default());
    let pool = Pool::create_paths(&paths, &[], &options).unwrap();
    let blocks = pool.size() / 4096;
    let mut written = vec![false; usize::try_from(blocks).unwrap()];
    let mut rng = stripestore::testing::rng(0x1a11);
    for _ in 0..40 {
        let count = rng.gen_range(1..=64u64);
        let first = rng.gen_range(0..blocks - count);
        let data = random_bytes(&mut rng, (count * 4096) as usize);
        pool.write_at(first * 4096, &data).unwrap();
        written[first as usize..(first + count) as usize].fill(true);
    }
    for _ in 0..10 {
        // A few bytes inside a block: the whole block holds data.
        let block = rng.gen_range(0..blocks);
        pool.write_at(block * 4096 + 100, &[0xa5; 7]).unwrap();
        written[block as usize] = true;
    }
    let check = |pool: &Pool, written: &[bool], when: &str| {
        let mut expected: Vec<Extent> = Vec::new();
        for (block, &allocated) in written.iter().enumerate() {
            match expected.last_mut() {
                Some(last) if last.allocated == allocated => last.length += 4096,
                _ => expected.push(Extent {
                    offset: block as u64 * 4096,
                    length: 4096,
                    allocated,
                }),
            }
        }
        let mut reported: Vec<Extent> = Vec::new();
        let mut calls = 0;
        let mut at = 0;
        while at < pool.size() {
            calls += 1;
            for extent in pool.allocation(at, pool.size() - at).unwrap() {
                at = extent.offset + extent.length;
                match reported.last_mut() {
                    Some(last) if last.allocated == extent.allocated => {
                        last.length += extent.length;
                    }
                    _ => reported.push(extent),
                }
            }
        }
        assert_eq!(reported, expected, "{when}");
        assert!(
            calls <= 2,
            "{when}: {calls} calls for {} bytes",
            pool.size()
        );
    };
    check(&pool, &written, "before a flush");
    for _ in 0..12 {
        let count = rng.gen_range(1..=48u64);
        let first = rng.gen_range(0..blocks - count);
        pool.discard(first * 4096, count * 4096).unwrap();
        written[first as usize..(first + count) as usize].fill(false);
    }
    check(&pool, &written, "after discards, before a flush");
    pool.flush().unwrap();
    check(&pool, &written, "after a flush");
    pool.close().unwrap();
    let pool = Pool::open_paths(&paths, &open_options()).unwrap();
    check(&pool, &written, "after a reopen");
    // Flushed changes that only the log holds: an open after a power cut replays them into
    // the map's overlay, over the synced tree (writes over unwritten keys, trims over
    // written ones).
    for _ in 0..10 {
        let count = rng.gen_range(1..=32u64);
        let first = rng.gen_range(0..blocks - count);
        pool.write_at(
            first * 4096,
            &random_bytes(&mut rng, (count * 4096) as usize),
        )
        .unwrap();
        written[first as usize..(first + count) as usize].fill(true);
        let count = rng.gen_range(1..=32u64);
        let first = rng.gen_range(0..blocks - count);
        pool.discard(first * 4096, count * 4096).unwrap();
        written[first as usize..(first + count) as usize].fill(false);
    }
    let live: Vec<u64> = (0..blocks).filter(|&b| written[b as usize]).collect();
    for &block in live.iter().step_by(7).take(20) {
        pool.discard(block * 4096, 4096).unwrap();
        written[block as usize] = false;
    }
    pool.flush().unwrap();
    // And a few blocks written into a stretch the tree has no page for, flushed in a small
    // record: after the power cut only the overlay knows them.
    let lonely = (4096..blocks - 4096)
        .step_by(1024)
        .find(|&b| {
            written[(b - 2048) as usize..(b + 2048) as usize]
                .iter()
                .all(|w| !w)
        })
        .unwrap();
    pool.write_at(lonely * 4096, &random_bytes(&mut rng, 3 * 4096))
        .unwrap();
    written[lonely as usize..lonely as usize + 3].fill(true);
    pool.flush().unwrap();
    pool.simulate_power_loss();
    // Read-only (what `create --copy-from` and `status` use): the overlay stays undrained.
    let looking = OpenOptions {
        read_only: true,
        ..open_options()
    };
    let pool = Pool::open_paths(&paths, &looking).unwrap();
    check(
        &pool,
        &written,
        "read-only after a power cut, replayed from the log",
    );
    pool.close().unwrap();
    let pool = Pool::open_paths(&paths, &open_options()).unwrap();
    check(&pool, &written, "after a power cut, replayed from the log");
    pool.close().unwrap();
}
