//! The scrub of a format-version-4 pool in chunks, in the background (docs/FORMAT.md V4.13,
//! "Stage 3"), checked against an independent model of the bytes written:
//! * a pass paused after a chunk keeps a segment cursor, survives a reopen, and resumed finds
//!   the rest: the rot found over both runs is exactly the rot planted, all repaired;
//! * a cancel ends it and records it canceled; a rate limit holds it back;
//! * segments freed and taken again between the pass's walk and its chunks are skipped (and
//!   counted), so a healthy pool shows no damage and keeps its bytes; the planted
//!   `scrub_without_skip` is caught by the same check;
//! * writes go on beside a background pass and read back exactly;
//! * one claim: a foreground scrub is refused while a background one runs;
//! * a pass interrupted by a close resumes by itself when the pool opens with background work;
//! * a read-only open resumes a repairing pass as check-only and writes nothing.

mod common;

use common::{random_writes, verify};
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stripestore::device::{Device, FaultPlan, MemDevice, SharedDevice};
use stripestore::pool::{FormatVersion, ScrubEnd, ScrubOptions, ScrubProgress, ScrubReport};
use stripestore::testing::{mem_devices, random_bytes, shared, small_v4, Model, PlantedBugs};
use stripestore::{CreateOptions, Error, Layout, OpenOptions, Pool};

const DEVICE_BYTES: u64 = 16 << 20;

fn v4_options(layout: &str) -> CreateOptions {
    let layout: Layout = layout.parse().unwrap();
    let mut options = CreateOptions::new(layout);
    options.chunk_bytes = 16384;
    options.format = FormatVersion::V4(small_v4());
    options.open = open_options(false);
    options
}

fn open_options(background: bool) -> OpenOptions {
    OpenOptions {
        map_cache_bytes: 64 * 16384,
        background_rebuild: background,
        ..OpenOptions::default()
    }
}

/// Chunks of a fixed number of segments and a checkpoint after each (independent of timing).
fn stepwise(check_only: bool, resume: bool) -> ScrubOptions {
    ScrubOptions {
        check_only,
        resume,
        checkpoint_interval: Some(Duration::ZERO),
        ..ScrubOptions::default()
    }
}

fn images(mems: &[Arc<MemDevice>]) -> Vec<Vec<u8>> {
    mems.iter().map(|m| m.image()).collect()
}

/// A pool of `layout` holding `bytes` of random data from offset 0, flushed.
fn filled(devices: Vec<SharedDevice>, layout: &str, bytes: usize, seed: u64) -> (Pool, Model) {
    let pool = Pool::create(devices, vec![], &v4_options(layout)).unwrap();
    let mut rng = stripestore::testing::rng(seed);
    let mut model = Model::new(pool.size());
    let data = random_bytes(&mut rng, bytes);
    pool.write_at(0, &data).unwrap();
    model.write(0, &data);
    pool.flush().unwrap();
    (pool, model)
}

/// Rot one byte in each of `cells` distinct 4 KiB cells of member `member`'s data area
/// (within the first `span` bytes of it).
fn rot(pool: &Pool, plan: &parking_lot::Mutex<FaultPlan>, span: u64, cells: usize, seed: u64) {
    let mut rng = stripestore::testing::rng(seed);
    let data_offset = pool.geometry().data_offset;
    let mut at = std::collections::BTreeSet::new();
    while at.len() < cells {
        at.insert(rng.gen_range(0..span / 4096));
    }
    for cell in at {
        plan.lock().rot_at_rest(data_offset + cell * 4096 + 100, 3);
    }
}

/// A pass paused after its second chunk keeps its segment cursor across a close and reopen;
/// resumed, it checks only the rest, and the rot found over both runs is all the rot there
/// is (a full check-only pass before counts it), every piece of it repaired once.
#[test]
fn a_paused_v4_scrub_resumes_across_a_reopen_and_its_tally_adds_up() {
    let mems = mem_devices(6, DEVICE_BYTES);
    let (devices, plans) = common::faulty_members(&mems, 0x5c00);
    let (pool, model) = filled(devices.clone(), "rs:4+2", 4 << 20, 0x5c01);
    rot(&pool, &plans[2], 1 << 20, 16, 0x5c02);
    let looked = pool.scrub_with(&stepwise(true, false), |_| {}).unwrap();
    let rotten = looked.devices[2].counters.checksum_errors;
    assert!(rotten > 0, "{looked:?}");
    assert_eq!(looked.totals.checksum_errors, rotten, "only member 2 rots");

    let mut chunks = 0;
    let first = pool
        .scrub_with(&stepwise(false, false), |_: &ScrubProgress| {
            chunks += 1;
            if chunks == 2 {
                assert!(pool.pause_scrub(), "the pass runs");
            }
        })
        .unwrap();
    assert_eq!(first.end, ScrubEnd::Paused);
    let cursor = pool.scrub_progress().expect("a paused pass is recorded");
    assert!(cursor.paused && !cursor.running);
    let next = cursor.next_segment.expect("a segment cursor");
    assert!(next > 0, "{cursor:?}");
    assert_eq!(cursor.next_slot, 0, "v3's cursor stays untouched");
    let found_first = first.totals.checksum_errors;
    assert!(
        found_first > 0 && found_first < rotten,
        "the first run found some rot, not all: {first:?}"
    );
    pool.close().unwrap();

    let pool = Pool::open(devices, &open_options(false)).unwrap();
    let recorded = pool.scrub_progress().expect("recorded across the reopen");
    assert_eq!(recorded.next_segment, Some(next));
    let rest = pool.scrub_with(&stepwise(false, true), |_| {}).unwrap();
    assert_eq!(rest.end, ScrubEnd::Completed);
    assert!(rest.repair, "the resumed pass keeps its mode");
    assert_eq!(
        rest.totals.checksum_errors, rotten,
        "both runs together found every rotten cell once: {rest:?}"
    );
    assert_eq!(rest.totals.repaired, rotten);
    assert!(rest.totals.bytes_scanned >= looked.totals.bytes_scanned);
    assert!(
        rest.bytes_read_this_run < looked.bytes_read_this_run,
        "the resumed run read only the rest"
    );
    assert!(
        pool.scrub_progress().is_none(),
        "a completed pass leaves no checkpoint"
    );
    let again = pool.scrub_with(&stepwise(true, false), |_| {}).unwrap();
    assert!(!again.found_damage(), "{again:?}");
    verify(&pool, &model);
    pool.close().unwrap();
}

/// A cancel ends the pass after its chunk and records it canceled; a rate limit holds a
/// pass back to about the rate.
#[test]
fn a_v4_scrub_can_be_canceled_and_is_held_to_its_rate() {
    let mems = mem_devices(6, DEVICE_BYTES);
    let (pool, _) = filled(shared(&mems), "rs:4+2", 3 << 20, 0x5c03);
    let canceled = pool
        .scrub_with(&stepwise(true, false), |_| {
            pool.cancel_scrub().unwrap();
        })
        .unwrap();
    assert_eq!(canceled.end, ScrubEnd::Canceled);
    assert!(pool.scrub_progress().is_none());
    let last = pool.history();
    assert!(
        last.events
            .iter()
            .any(|e| e.detail.contains("check-only scrub canceled")),
        "the cancel is in the events"
    );

    let rate = 3 << 19;
    let options = ScrubOptions {
        check_only: true,
        rate_bytes_per_s: Some(rate),
        ..stepwise(true, false)
    };
    let mut largest_chunk = 0u64;
    let mut scanned = 0u64;
    let started = Instant::now();
    let report = pool
        .scrub_with(&options, |progress| {
            largest_chunk = largest_chunk.max(progress.scanned_bytes - scanned);
            scanned = progress.scanned_bytes;
        })
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(report.end, ScrubEnd::Completed);
    // Every chunk but the last waits until the bytes so far are due at the rate.
    let paced = report.bytes_read_this_run.saturating_sub(2 * largest_chunk);
    assert!(paced > rate, "enough to pace: {report:?}");
    let due = Duration::from_secs_f64(paced as f64 / rate as f64);
    assert!(
        elapsed >= due,
        "{elapsed:?} for {paced} bytes at {rate} B/s"
    );
    pool.close().unwrap();
}

/// Overwrite everything the pool holds a few times, and small pieces of it, flushing: tree
/// syncs and the cleaner free and take again the segments a pass's walk saw.
fn churn(pool: &Pool, model: &mut Model, bytes: usize, rounds: usize, seed: u64) {
    let mut rng = stripestore::testing::rng(seed);
    for _ in 0..rounds {
        let data = random_bytes(&mut rng, bytes);
        pool.write_at(0, &data).unwrap();
        model.write(0, &data);
        for _ in 0..SMALL {
            let at = rng.gen_range(0..bytes as u64 / 4096) * 4096;
            let piece = random_bytes(&mut rng, 4096);
            pool.write_at(at, &piece).unwrap();
            model.write(at, &piece);
            pool.flush().unwrap();
        }
    }
}
const SMALL: usize = 16;
const ROUNDS_AFTER_WALK: usize = 3;

/// A repairing pass whose segments are freed and taken again after its walk, on a healthy
/// pool: what it finds and what the pool holds afterwards.
fn scrub_across_reuse(planted: PlantedBugs) -> Result<ScrubReport, String> {
    let mems = mem_devices(6, DEVICE_BYTES);
    let mut options = v4_options("rs:4+2");
    options.open.planted = planted;
    let pool = Pool::create(shared(&mems), vec![], &options).unwrap();
    let mut model = Model::new(pool.size());
    // Most of the pool, so that the churn cycles through every segment (the lowest free
    // segment is taken first).
    let bytes = usize::try_from(pool.size() / 4096 * 9 / 10 * 4096).unwrap();
    churn(&pool, &mut model, bytes, 1, 0x5c04);
    let mut churned = false;
    let report = pool
        .scrub_with(&stepwise(false, false), |_| {
            if !churned {
                churned = true;
                churn(&pool, &mut model, bytes, ROUNDS_AFTER_WALK, 0x5c05);
            }
        })
        .map_err(|e| format!("the scrub failed: {e}"))?;
    if report.found_damage() {
        return Err(format!("a healthy pool showed damage: {report:?}"));
    }
    let check = pool.scrub_with(&stepwise(true, false), |_| {}).unwrap();
    if check.found_damage() {
        return Err(format!("the pass damaged the pool: {check:?}"));
    }
    let mut back = vec![0u8; bytes];
    pool.read_at(0, &mut back).map_err(|e| e.to_string())?;
    if back != model.read(0, bytes) {
        return Err("wrong bytes after the pass".into());
    }
    pool.close().unwrap();
    Ok(report)
}

#[test]
fn segments_taken_again_since_the_walk_are_skipped_and_the_planted_scrub_without_skip_is_caught() {
    let report = scrub_across_reuse(PlantedBugs::default()).unwrap();
    assert!(
        report.segments_skipped > 0,
        "the churn took again segments the walk saw: {report:?}"
    );
    assert_eq!(report.end, ScrubEnd::Completed);
    let planted = scrub_across_reuse(PlantedBugs {
        scrub_without_skip: true,
        ..PlantedBugs::default()
    });
    match planted {
        Err(why) => assert!(
            why.starts_with("a healthy pool showed damage")
                || why.starts_with("the pass damaged the pool")
                || why.starts_with("wrong bytes"),
            "caught for another reason: {why}"
        ),
        Ok(report) => panic!("the planted bug went unnoticed: {report:?}"),
    }
}

/// Random writes from another thread while background passes run: every byte reads back,
/// no pass sees damage; a foreground scrub meanwhile is refused (one claim).
#[test]
fn writes_beside_a_background_v4_scrub_read_back_and_one_scrub_runs_at_a_time() {
    let mems = mem_devices(6, DEVICE_BYTES);
    let (pool, model) = filled(shared(&mems), "rs:4+2", 2 << 20, 0x5c06);
    let pool = Arc::new(pool);
    let model = Arc::new(parking_lot::Mutex::new(model));
    let writer = {
        let (pool, model) = (Arc::clone(&pool), Arc::clone(&model));
        std::thread::spawn(move || {
            let mut rng = stripestore::testing::rng(0x5c07);
            for round in 0..6 {
                random_writes(&pool, &mut model.lock(), &mut rng, 40);
                if round % 2 == 0 {
                    pool.flush().unwrap();
                }
            }
        })
    };
    let mut passes = 0;
    while !writer.is_finished() || passes == 0 {
        // Slow at first, so it surely still runs when the second scrub asks.
        pool.start_scrub(&ScrubOptions {
            rate_bytes_per_s: Some(1 << 20),
            ..ScrubOptions::default()
        })
        .unwrap();
        let busy = pool.scrub_with(&ScrubOptions::default(), |_| {});
        assert!(
            matches!(busy, Err(Error::Busy(_))),
            "a second scrub ran beside the first: {busy:?}"
        );
        pool.set_scrub_rate(None);
        let report = pool.wait_scrub().unwrap().unwrap();
        assert_eq!(report.end, ScrubEnd::Completed);
        assert!(!report.found_damage(), "{report:?}");
        passes += 1;
    }
    writer.join().unwrap();
    verify(&pool, &model.lock());
    Arc::try_unwrap(pool).unwrap().close().unwrap();
}

/// A background pass stopped by a close is resumed by itself at the next open with
/// background work on, from its cursor, and completes.
#[test]
fn a_v4_scrub_interrupted_by_a_close_resumes_at_the_next_open() {
    let mems = mem_devices(6, DEVICE_BYTES);
    let (pool, model) = filled(shared(&mems), "rs:4+2", 3 << 20, 0x5c08);
    let full = pool.scrub_with(&stepwise(true, false), |_| {}).unwrap();
    pool.start_scrub(&ScrubOptions {
        rate_bytes_per_s: Some(1 << 20),
        ..stepwise(true, false)
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool
        .scrub_progress()
        .and_then(|p| p.next_segment)
        .unwrap_or(0)
        == 0
    {
        assert!(Instant::now() < deadline, "the pass never moved");
        std::thread::sleep(Duration::from_millis(5));
    }
    pool.close().unwrap();
    let pool = Pool::open(shared(&mems), &open_options(true)).unwrap();
    let report = pool.wait_scrub().expect("resumed by itself").unwrap();
    assert_eq!(report.end, ScrubEnd::Completed);
    assert!(!report.repair, "check-only, as it began");
    assert!(
        report.resumed_from_segment.is_some_and(|s| s > 0),
        "resumed from its cursor: {report:?}"
    );
    assert!(
        report.bytes_read_this_run < full.bytes_read_this_run,
        "the resumed run read only the rest"
    );
    assert_eq!(
        report.totals.bytes_scanned, full.totals.bytes_scanned,
        "both runs together scanned what one pass does"
    );
    assert!(pool.scrub_progress().is_none());
    verify(&pool, &model);
    pool.close().unwrap();
}

/// A read-only open asked to resume a repairing pass runs it check-only and writes no byte
/// (not even its record); the damage stays for a writable open to repair.
#[test]
fn a_read_only_open_resumes_a_repairing_v4_scrub_as_check_only_and_writes_nothing() {
    let mems = mem_devices(6, DEVICE_BYTES);
    let (devices, plans) = common::faulty_members(&mems, 0x5c00);
    let (pool, _) = filled(devices.clone(), "rs:4+2", 3 << 20, 0x5c09);
    let mut chunks = 0;
    let first = pool
        .scrub_with(&stepwise(false, false), |_| {
            chunks += 1;
            if chunks == 1 {
                pool.pause_scrub();
            }
        })
        .unwrap();
    assert_eq!(first.end, ScrubEnd::Paused);
    pool.close().unwrap();
    // Rot in cells of the first 3 MiB of member 1's data area (some of them written rows).
    let read_only = OpenOptions {
        read_only: true,
        ..open_options(false)
    };
    let pool = Pool::open(devices.clone(), &read_only).unwrap();
    rot(&pool, &plans[1], 3 << 20, 8, 0x5c0a);
    let before = images(&mems);
    let looked = pool.scrub_with(&stepwise(false, true), |_| {}).unwrap();
    assert_eq!(looked.end, ScrubEnd::Completed);
    assert!(!looked.repair, "forced check-only");
    assert!(looked.totals.checksum_errors > 0, "{looked:?}");
    assert_eq!(looked.totals.repaired, 0);
    assert!(images(&mems) == before, "a read-only scrub wrote");
    pool.close().unwrap();
    assert!(images(&mems) == before, "a read-only close wrote");
}

/// A member whose flushes fail while `failing` is set.
#[derive(Debug)]
struct FlushFails {
    inner: SharedDevice,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl stripestore::device::Device for FlushFails {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), stripestore::device::DeviceError> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), stripestore::device::DeviceError> {
        self.inner.write_at(offset, buf)
    }
    fn flush(&self) -> Result<(), stripestore::device::DeviceError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(stripestore::device::DeviceError::Io(std::io::Error::other(
                "flush refused",
            )));
        }
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
}

/// A pass that fails ends paused at the last checkpoint it recorded, and returns the error:
/// when the pool goes beyond its tolerance between chunks (`PoolUnavailable`), and when the
/// flush that must make its repairs durable before a checkpoint fails on a member the pool
/// cannot lose (the cursor then never passes repairs a power cut could still lose; the pool
/// commits nothing more until it is reopened, and the reopened pool resumes the pass).
#[test]
fn a_failed_v4_scrub_ends_paused_at_its_last_checkpoint() {
    // Beyond the tolerance after the second chunk.
    let mems = mem_devices(6, DEVICE_BYTES);
    let (pool, _) = filled(shared(&mems), "rs:4+2", 3 << 20, 0x5c0b);
    let mut chunks = 0;
    let mut cursor = None;
    let failed = pool.scrub_with(&stepwise(true, false), |progress| {
        chunks += 1;
        if chunks == 2 {
            cursor = progress.next_segment;
            for index in 0..3 {
                pool.fault_device(index, "taken out by the test");
            }
        }
    });
    assert!(
        matches!(failed, Err(Error::PoolUnavailable { .. })),
        "{failed:?}"
    );
    let recorded = pool.scrub_progress().expect("recorded");
    assert!(recorded.paused && !recorded.running);
    assert!(cursor.is_some_and(|c| c > 0));
    assert_eq!(
        recorded.next_segment, cursor,
        "paused at the last checkpoint"
    );
    drop(pool);

    // The settling flush before the second chunk's checkpoint fails on a member the pool
    // cannot lose (two others are out already): the pass cannot make its repairs durable.
    let mems = mem_devices(6, DEVICE_BYTES);
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let devices: Vec<SharedDevice> = shared(&mems)
        .into_iter()
        .enumerate()
        .map(|(i, inner)| {
            if i != 2 {
                return inner;
            }
            Arc::new(FlushFails {
                inner,
                failing: Arc::clone(&failing),
            }) as SharedDevice
        })
        .collect();
    let (pool, model) = filled(devices.clone(), "rs:4+2", 3 << 20, 0x5c0c);
    pool.fault_device(0, "taken out by the test");
    pool.fault_device(1, "taken out by the test");
    let mut chunks = 0;
    let mut cursor = None;
    let failed = pool.scrub_with(&stepwise(false, false), |progress| {
        chunks += 1;
        // The first chunk's checkpoint is recorded after this call, the second's fails.
        if chunks == 1 {
            cursor = progress.next_segment;
        }
        if chunks == 2 {
            failing.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    assert!(
        matches!(&failed, Err(Error::Io { device, .. }) if device == "mem2"),
        "{failed:?}"
    );
    let status = pool.status();
    assert!(
        status.devices[2].state.contains("DEGRADED"),
        "kept in service, marked: {:?}",
        status.devices[2]
    );
    let recorded = pool.scrub_progress().expect("recorded");
    assert!(recorded.paused);
    assert_eq!(
        recorded.next_segment, cursor,
        "the cursor stays before the repairs not made durable"
    );
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    // A device reports a failed flush once: what it dropped is gone and its next flush would
    // succeed, so the pool makes nothing durable any more until it is reopened.
    assert!(
        matches!(pool.flush(), Err(Error::PoolUnavailable { .. })),
        "a flush after a failed one on a member the pool cannot lose"
    );
    drop(pool);
    let pool = Pool::open(devices, &open_options(false)).unwrap();
    let recorded = pool
        .scrub_progress()
        .expect("still recorded after the reopen");
    assert_eq!(recorded.next_segment, cursor);
    let rest = pool.scrub_with(&stepwise(false, true), |_| {}).unwrap();
    assert_eq!(rest.end, ScrubEnd::Completed);
    assert!(!pool
        .scrub_with(&stepwise(true, false), |_| {})
        .unwrap()
        .found_damage());
    verify(&pool, &model);
    pool.close().unwrap();
}

/// A member that dies (fail-stop) unnoticed once a pass has begun (its start recorded): the
/// pass's reads find it gone, the fault policy takes it out of service, and the pass completes
/// within the tolerance, its unreadable cells counted against that member only; every byte
/// reads back. One that died before the pass is found by the pass's first superblock record
/// instead (its write error counted, the member out of service), and the pass skips its cells.
#[test]
fn a_member_found_dead_by_a_v4_scrub_is_faulted_and_the_pass_completes() {
    for (layout, before) in [
        ("rs:4+2", false),
        ("raid10:2", false),
        ("rs:4+2", true),
        ("raid10:2", true),
    ] {
        let count = if layout == "raid10:2" { 4 } else { 6 };
        let mems = mem_devices(count, DEVICE_BYTES);
        let (devices, plans) = common::faulty_members(&mems, 0x5c00);
        let (pool, model) = filled(devices, layout, 2 << 20, 0x5c0e);
        if before {
            plans[1].lock().fail_stop();
        } else {
            // Past the pass's first record (copies A and B of the superblock, each written
            // and flushed: four requests), at its first read.
            plans[1].lock().fail_after(4);
        }
        let report = pool
            .scrub_with(&stepwise(false, false), |_| {})
            .unwrap_or_else(|e| panic!("{layout}: {e}"));
        assert_eq!(report.end, ScrubEnd::Completed, "{layout}");
        assert!(!report.found_data_loss(), "{layout}: {report:?}");
        let status = pool.status();
        if before {
            assert_eq!(
                report.devices[1].counters.io_errors, 0,
                "{layout}: {report:?}"
            );
            assert!(
                report.devices[1].counters.bytes_skipped > 0,
                "{layout}: {report:?}"
            );
            assert!(status.devices[1].write_errors >= 1, "{layout}: {status}");
        } else {
            assert!(
                report.devices[1].counters.io_errors > 0,
                "{layout}: {report:?}"
            );
        }
        for (i, device) in report.devices.iter().enumerate() {
            if i != 1 {
                assert_eq!(device.counters.io_errors, 0, "{layout}: member {i}");
            }
        }
        assert!(
            status.devices[1].state.contains("FAULTED"),
            "{layout}: {:?}",
            status.devices[1]
        );
        verify(&pool, &model);
        pool.close().unwrap();
    }
}

/// Damage beyond the tolerance (the same 1 MiB of three of six rs:4+2 members, over rows of
/// live and of overwritten data): the scrub lists as lost exactly the blocks a read cannot
/// return (an independent oracle: every 4 KiB of the volume read back), merged into
/// ranges, each naming only damaged members, and counts them; blocks overwritten since
/// their damaged rows were written are not lost data and are not listed.
#[test]
fn a_v4_scrub_lists_as_lost_exactly_the_blocks_reads_cannot_return() {
    let mems = mem_devices(6, DEVICE_BYTES);
    let (pool, mut model) = filled(shared(&mems), "rs:4+2", 4 << 20, 0x1057);
    // Every third block of the first 2 MiB again: the rows first written there, at the
    // start of the data area, hold dead blocks beside live ones (their segments stay).
    let mut rng = stripestore::testing::rng(0x1058);
    for key in (0..512u64).step_by(3) {
        let again = random_bytes(&mut rng, 4096);
        pool.write_at(key * 4096, &again).unwrap();
        model.write(key * 4096, &again);
    }
    pool.flush().unwrap();
    let data_offset = pool.geometry().data_offset;
    for mem in &mems[..3] {
        mem.poke(data_offset, &random_bytes(&mut rng, 1 << 20));
    }
    let report = common::check_only_scrub(&pool);
    // The oracle: which blocks a read cannot return (a read returns the model's bytes or
    // fails; nothing else).
    let mut lost: Vec<u64> = Vec::new();
    let mut block = vec![0u8; 4096];
    for key in 0..(4 << 20) / 4096u64 {
        match pool.read_at(key * 4096, &mut block) {
            Ok(()) => assert!(
                block == model.read(key * 4096, 4096),
                "block {key} read back other bytes"
            ),
            Err(Error::UnrecoverableBlock { .. }) => lost.push(key),
            Err(e) => panic!("block {key}: {e}"),
        }
    }
    assert!(lost.len() > 16, "the damage lost data: {}", lost.len());
    let mut expected: Vec<(u64, u64)> = Vec::new();
    for key in &lost {
        match expected.last_mut() {
            Some((start, length)) if *start + *length == key * 4096 => *length += 4096,
            _ => expected.push((key * 4096, 4096)),
        }
    }
    let got: Vec<(u64, u64)> = report
        .damaged
        .iter()
        .map(|r| (r.volume_offset, r.length))
        .collect();
    let cap = stripestore::format::MAX_RECORDED_RANGES;
    assert_eq!(got, expected[..expected.len().min(cap)], "lost ranges");
    assert_eq!(report.lost_blocks, lost.len() as u64);
    let damaged: Vec<String> = mems[..3].iter().map(|m| m.name()).collect();
    for range in &report.damaged {
        assert!(
            !range.devices.is_empty() && range.devices.iter().all(|d| damaged.contains(d)),
            "{range:?} names a member that was not damaged"
        );
    }
}
