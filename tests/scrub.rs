//! Scrub: exact damage accounting per device, repair on disk, check-only, unrepairable damage
//! with its offsets, parity/copy consistency, resume after pause or kill without re-reading,
//! background scrub beside foreground writes (no false alarms), pause/cancel/resume API.
//!
//! The pools are format version 4 (`options`), the format `create` makes: a scrub there
//! checks every 4 KiB shard-block of every written row (and every copy of every referenced
//! metadata page), so damage is planted in, and counted by, shard-blocks. Where a block's
//! row lives is asked of `Pool::block_locations` and checked against the placement
//! docs/FORMAT.md documents (see `row_places`).

use crate::common;

use common::*;
use parking_lot::Mutex;
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use stripestore::device::{Device, FaultPlan, FaultyDevice, MemDevice, SharedDevice};
use stripestore::pool::ShardLocation;
use stripestore::testing::{mem_devices, random_bytes, shared, Model};
use stripestore::{OpenOptions, Pool, ScrubEnd, ScrubOptions};

/// A 4 KiB block: one row's shard-block on each shard, the unit a v4 scrub checks.
const BLOCK: u64 = 4096;
/// A metadata page (16 KiB), kept as `tolerance + 1` copies on distinct members.
const PAGE: u64 = 16384;

/// How the v4 suites open their pools, and no member faulted for its errors.
fn quiet() -> OpenOptions {
    OpenOptions {
        error_threshold: u64::MAX,
        background_rebuild: false,
        ..v4_open_options()
    }
}

/// A scrub in chunks of a fixed number of segments, its checkpoint recorded after each
/// (independent of timing: a 50 ms chunk can cover a whole small pool).
fn stepwise() -> ScrubOptions {
    ScrubOptions {
        checkpoint_interval: Some(std::time::Duration::ZERO),
        ..ScrubOptions::default()
    }
}

/// Rows per slot: a slot of `chunk_bytes` chunks holds one row per 4 KiB of chunk.
fn rows_per_slot(pool: &Pool) -> u64 {
    pool.geometry().chunk_bytes / BLOCK
}

/// The row holding volume byte `offset` of data written by whole aligned stripes: its slot
/// and its shard-blocks, shard by shard. The places are `Pool::block_locations`'s, each
/// checked against docs/FORMAT.md: a stripe write fills one slot, its blocks row-major (block
/// `q` of the stripe is in row `q / K`, data chunk `q mod K`); row `r` of slot `s` is 4 KiB
/// block `r` of every shard; shard `j` of slot `s` is, for rs:K+M on D members, in cell
/// `c = s × width + j` of the row-major grid, on member `(c + c / D) mod D` at row `c / D` of
/// the data area, and for mirror and raid10 on member `j` at row `s`. Data chunks: shards
/// `0..K` of rs, shard `j` of raid10:N carries chunk `j / N`, every mirror copy chunk 0.
fn row_places(pool: &Pool, offset: u64) -> (u64, Vec<ShardLocation>) {
    let geometry = pool.geometry();
    let (chunk, width, devices) = (geometry.chunk_bytes, geometry.width(), geometry.devices);
    let k = geometry.data_chunks() as u64;
    let in_stripe = offset % geometry.stripe_data_bytes() / BLOCK;
    let row = in_stripe / k;
    let places = pool.block_locations(offset);
    assert_eq!(places.len(), width, "block at {offset}: {places:?}");
    let layout = geometry.layout.to_string();
    let first = places[0];
    let first_row = (first.offset - geometry.data_offset) / chunk;
    let slot = if layout.starts_with("rs:") {
        let cell = first_row * devices as u64
            + (first.device as u64 + devices as u64 - first_row % devices as u64) % devices as u64;
        assert_eq!(cell % width as u64, 0, "block at {offset}: {places:?}");
        cell / width as u64
    } else {
        first_row
    };
    for (j, place) in places.iter().enumerate() {
        let (device, grid_row, data_chunk) = if layout.starts_with("rs:") {
            let cell = slot * width as u64 + j as u64;
            let grid_row = cell / devices as u64;
            let device = ((cell + grid_row) % devices as u64) as usize;
            (device, grid_row, (j < k as usize).then_some(j))
        } else if layout.starts_with("raid10:") {
            (j, slot, Some(j / (width / k as usize)))
        } else {
            (j, slot, Some(0))
        };
        let want = ShardLocation {
            shard: j,
            device,
            offset: geometry.data_offset + grid_row * chunk + row * BLOCK,
            data_chunk,
        };
        assert_eq!(*place, want, "block at {offset}: shard {j} of slot {slot}");
    }
    (slot, places)
}

/// Every row of the first `stripes` stripes (written whole from offset 0): per stripe, its
/// rows in order.
fn stripe_rows(pool: &Pool, stripes: u64) -> Vec<Vec<Vec<ShardLocation>>> {
    let stripe_bytes = pool.geometry().stripe_data_bytes();
    let k = pool.geometry().data_chunks() as u64;
    (0..stripes)
        .map(|stripe| {
            (0..rows_per_slot(pool))
                .map(|row| row_places(pool, stripe * stripe_bytes + row * k * BLOCK).1)
                .collect()
        })
        .collect()
}

fn fill(pool: &Pool, model: &mut Model, rng: &mut rand_chacha::ChaCha8Rng, bytes: u64) {
    let data = random_bytes(rng, bytes as usize);
    pool.write_at(0, &data).unwrap();
    model.write(0, &data);
    pool.flush().unwrap();
}

/// A shard-block's device, offset and bytes before it was damaged.
type Original = (usize, u64, Vec<u8>);

/// Damage chosen shard-blocks by flipping a bit: in about four stripes of ten, `per_row`
/// shard-blocks of one row; returns the expected per-device checksum errors (one per damaged
/// shard-block: each is checked once, against its row's crc).
fn rot(
    mems: &[Arc<MemDevice>],
    rng: &mut rand_chacha::ChaCha8Rng,
    rows: &[Vec<Vec<ShardLocation>>],
    per_row: usize,
) -> (BTreeMap<usize, u64>, Vec<Original>) {
    let mut expected = BTreeMap::new();
    let mut originals = Vec::new();
    for stripe in rows {
        if !rng.gen_bool(0.4) {
            continue;
        }
        let mut places = stripe[rng.gen_range(0..stripe.len())].clone();
        for _ in 0..per_row {
            let place = places.remove(rng.gen_range(0..places.len()));
            originals.push((
                place.device,
                place.offset,
                mems[place.device].peek(place.offset, BLOCK as usize),
            ));
            mems[place.device].flip_bit(place.offset + rng.gen_range(0..BLOCK), rng.gen());
            *expected.entry(place.device).or_insert(0) += 1;
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
            let rows = stripe_rows(&pool, stripes);
            let row_count: u64 = rows.iter().map(|r| r.len() as u64).sum();
            assert_eq!(row_count, stripes * rows_per_slot(&pool), "{layout}");
            // Live data per device: one shard-block of every written row, which a scrub must
            // read and verify there (besides the metadata pages' copies).
            let mut live = vec![0u64; devices];
            for row in rows.iter().flatten() {
                for place in row {
                    live[place.device] += BLOCK;
                }
            }
            let tolerance = pool.geometry().tolerance();
            let (expected, originals) = rot(&mems, rng, &rows, tolerance);
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
                    &mems[*device].peek(*offset, BLOCK as usize),
                    original,
                    "{layout}: check-only must not repair"
                );
            }

            let report = pool.scrub().unwrap();
            assert_eq!(report.bad_shards, damaged, "{layout}: {report:?}");
            assert_eq!(report.totals.repaired, damaged, "{layout}");
            assert_eq!(report.totals.io_errors, 0, "{layout}");
            assert_eq!(report.unrepairable_stripes, 0, "{layout}");
            // Rows and metadata pages are what a v4 scrub checks: every written row, and the
            // pages the trees reference, the same in both passes.
            let pages = report
                .stripes_checked
                .checked_sub(row_count)
                .unwrap_or_else(|| panic!("{layout}: fewer checked than {row_count} rows"));
            assert!(pages > 0, "{layout}: no metadata page checked");
            assert_eq!(check.stripes_checked, report.stripes_checked, "{layout}");
            let mut metadata = 0;
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
                // Every live shard-block on the device was read and verified once; the rest
                // is whole copies of metadata pages.
                let pages_here = device
                    .counters
                    .bytes_scanned
                    .checked_sub(live[device.index])
                    .unwrap_or_else(|| panic!("{layout}: device {} {report:?}", device.index));
                assert_eq!(
                    pages_here % PAGE,
                    0,
                    "{layout}: device {} bytes",
                    device.index
                );
                metadata += pages_here;
                assert_eq!(
                    device.counters.bytes_scanned,
                    check.devices[device.index].counters.bytes_scanned,
                    "{layout}: device {} bytes, check-only and repairing",
                    device.index
                );
            }
            // Every copy of every page once: tolerance + 1 copies of each.
            assert_eq!(
                metadata,
                pages * (tolerance as u64 + 1) * PAGE,
                "{layout}: metadata bytes"
            );
            for (device, offset, original) in &originals {
                assert_eq!(
                    &mems[*device].peek(*offset, BLOCK as usize),
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
    // Three unreadable shard-blocks (4 KiB sectors) on device 1, one on device 4, in rows of
    // different stripes; the sectors beside them read well.
    let stripe_bytes = pool.geometry().stripe_data_bytes();
    let mut expected = [0u64; 6];
    for stripe in [0u64, 3, 7, 11] {
        let on = if stripe == 11 { 4 } else { 1 };
        let row = stripe % rows_per_slot(&pool);
        let k = pool.geometry().data_chunks() as u64;
        let (_, places) = row_places(&pool, stripe * stripe_bytes + row * k * BLOCK);
        let place = places.into_iter().find(|s| s.device == on).unwrap();
        plans[on]
            .lock()
            .add_bad_read_range(place.offset..place.offset + BLOCK);
        expected[on] += 1;
    }
    let report = pool.scrub().unwrap();
    for device in &report.devices {
        assert_eq!(
            device.counters.io_errors, expected[device.index],
            "{report:?}"
        );
        assert_eq!(device.counters.checksum_errors, 0);
        assert_eq!(
            device.counters.repaired, expected[device.index],
            "{report:?}"
        );
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
    // Row 1 of stripe 5: its blocks 4..8, data chunks 0..4 on shards 0..4. Rotten on shards
    // 0, 1 and 2 (one more than rs:4+2 survives): their three blocks are lost, the fourth
    // and the parity verify. Row 2 of stripe 9: one shard-block rotten (repairable).
    let lost_row = 5 * stripe_bytes + 4 * BLOCK;
    for (offset, count) in [(lost_row, 3usize), (9 * stripe_bytes + 8 * BLOCK, 1)] {
        for place in row_places(&pool, offset).1.into_iter().take(count) {
            mems[place.device].flip_bit(place.offset + 100, 3);
        }
    }
    let lost_devices: Vec<String> = row_places(&pool, lost_row)
        .1
        .into_iter()
        .take(3)
        .map(|s| mems[s.device].name())
        .collect();
    let report = pool.scrub().unwrap();
    assert!(report.found_data_loss());
    // On version 4 the count is of the places (shard-blocks) that stay bad.
    assert_eq!(report.unrepairable_stripes, 3, "{report:?}");
    assert_eq!(report.lost_blocks, 3, "{report:?}");
    assert_eq!(report.damaged.len(), 1);
    assert_eq!(report.damaged[0].volume_offset, lost_row);
    assert_eq!(report.damaged[0].length, 3 * BLOCK);
    let mut named = report.damaged[0].devices.clone();
    named.sort();
    let mut want = lost_devices.clone();
    want.sort();
    assert_eq!(named, want);
    assert_eq!(report.totals.checksum_errors, 4);
    assert_eq!(report.totals.repaired, 1);
    assert_eq!(report.totals.unrepairable, 3);
    // The lost blocks fail loudly, naming themselves; everything else reads back exactly.
    let mut block = vec![0u8; BLOCK as usize];
    for lost in 0..3 {
        let at = lost_row + lost * BLOCK;
        match pool.read_at(at, &mut block) {
            Err(stripestore::Error::UnrecoverableBlock { volume_offset, .. }) => {
                assert_eq!(volume_offset, at);
            }
            other => panic!("lost block at {at}: {other:?}"),
        }
    }
    let mut buf = vec![0u8; stripe_bytes as usize];
    for stripe in (0..pool.size() / stripe_bytes).filter(|s| *s != 5) {
        pool.read_at(stripe * stripe_bytes, &mut buf).unwrap();
        assert_eq!(
            buf,
            model.read(stripe * stripe_bytes, buf.len()),
            "stripe {stripe}"
        );
    }
    for at in (5 * stripe_bytes..6 * stripe_bytes)
        .step_by(BLOCK as usize)
        .filter(|at| !(lost_row..lost_row + 3 * BLOCK).contains(at))
    {
        pool.read_at(at, &mut block).unwrap();
        assert_eq!(block, model.read(at, block.len()), "block at {at}");
    }
    // The result is recorded for `status` and `check`.
    let last = pool.status().last_scrub.expect("last scrub recorded");
    assert_eq!(last.tally.unrepairable_stripes, 3);
    assert_eq!(last.tally.lost_blocks, 3);
    assert_eq!(last.tally.damaged, report.damaged);
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
    let stripe_bytes = pool.geometry().stripe_data_bytes();
    let stripes = pool.size() * 3 / 4 / stripe_bytes;
    fill(&pool, &mut model, &mut rng, stripes * stripe_bytes);
    let rows = stripes * rows_per_slot(&pool);
    // Damage early and late in the volume: counted once across both runs. Each is one
    // shard-block of the first row of its stripe, in the segment of that row's slot.
    let segment_slots = stripestore::testing::small_v4().segment_slots;
    let mut damaged_segments = Vec::new();
    for stripe in [1, stripes - 2] {
        let (slot, places) = row_places(&pool, stripe * stripe_bytes);
        mems[places[0].device].flip_bit(places[0].offset + 7, 1);
        damaged_segments.push(slot / segment_slots);
    }
    drop(pool);

    // What one whole pass reads: the walk of the trees' interior pages, then every written
    // row's shard-blocks and every copy of every referenced page, each once (check-only,
    // on a pool opened as the paused one is).
    let counter = Arc::new(AtomicU64::new(0));
    let pool = counting_pool(&mems, &counter, false);
    let opened = counter.load(Ordering::Relaxed);
    let whole = common::check_only_scrub(&pool);
    let whole_read = counter.load(Ordering::Relaxed) - opened;
    assert!(
        whole_read >= whole.bytes_read_this_run,
        "{whole_read} {whole:?}"
    );
    assert_eq!(whole.totals.checksum_errors, 2, "{whole:?}");
    let pages = whole.stripes_checked - rows;
    let all_live = rows * 6 * BLOCK + pages * 3 * PAGE;
    assert_eq!(whole.totals.bytes_scanned, all_live, "{whole:?}");
    let walk = whole.bytes_read_this_run - all_live;
    drop(pool);

    let counter = Arc::new(AtomicU64::new(0));
    let pool = counting_pool(&mems, &counter, false);
    let mut steps = 0;
    let first = pool
        .scrub_with(&stepwise(), |_| {
            steps += 1;
            if steps == 3 {
                pool.pause_scrub();
            }
        })
        .unwrap();
    assert_eq!(first.end, ScrubEnd::Paused);
    let verified_before = first.totals.bytes_scanned;
    assert!(verified_before > 0 && first.bytes_read_this_run == verified_before + walk);
    let next = pool
        .scrub_progress()
        .and_then(|p| p.next_segment)
        .expect("a segment cursor");
    // The first run found the damage below its cursor, and only that.
    let below = damaged_segments.iter().filter(|s| **s < next).count() as u64;
    assert_eq!(
        below, 1,
        "one damaged place on each side: {damaged_segments:?} {next}"
    );
    assert_eq!(first.totals.checksum_errors, below, "{first:?}");
    pool.close().unwrap();

    let counter = Arc::new(AtomicU64::new(0));
    let pool = counting_pool(&mems, &counter, false);
    let recorded = pool.scrub_progress().expect("checkpoint recorded");
    assert!(recorded.paused && !recorded.running);
    assert_eq!(recorded.scanned_bytes, verified_before);
    assert_eq!(recorded.next_segment, Some(next));
    let before = counter.load(Ordering::Relaxed);
    let second = pool
        .scrub_with(
            &ScrubOptions {
                resume: true,
                ..stepwise()
            },
            |_| {},
        )
        .unwrap();
    let read_by_resume = counter.load(Ordering::Relaxed) - before;
    assert_eq!(second.end, ScrubEnd::Completed);
    assert_eq!(second.resumed_from_segment, Some(next));
    assert_eq!(
        second.totals.bytes_scanned, all_live,
        "both runs together cover every shard-block and page copy once"
    );
    assert_eq!(second.totals.checksum_errors, 2, "{second:?}");
    // The resumed run read exactly what the first had not verified, plus the walk of the
    // interior pages that plans it, and nothing else.
    assert_eq!(
        second.bytes_read_this_run,
        all_live - verified_before + walk,
        "resume re-read verified data"
    );
    // At the members too (where the map's own reads of slot-summary pages also land): at
    // most a whole pass's reads less what the first run verified.
    assert!(
        read_by_resume >= second.bytes_read_this_run
            && read_by_resume + verified_before <= whole_read,
        "the members saw {read_by_resume} bytes read by the resume, a whole pass {whole_read}"
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
    let rows = pool.size() / pool.geometry().stripe_data_bytes() * rows_per_slot(&pool);
    // Slow enough to still be running when the pool closes: the rate is kept between chunks,
    // and a chunk of a few segments (not of 50 ms, which covers this whole pool at once).
    pool.start_scrub(&ScrubOptions {
        rate_bytes_per_s: Some(8 << 20),
        ..stepwise()
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
    let cursor = recorded.next_segment.expect("a segment cursor");
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
    assert!(cursor > 0);
    assert_eq!(report.resumed_from_segment, Some(cursor), "{report:?}");
    // Both runs together: every written row's six shard-blocks and the three copies of every
    // referenced page, once.
    let pages = report.stripes_checked - rows;
    assert_eq!(
        report.totals.bytes_scanned,
        rows * 6 * BLOCK + pages * 3 * PAGE,
        "{report:?}"
    );
    verify(&pool, &model);

    // Cancel: a running scrub stops and its checkpoint is gone.
    pool.start_scrub(&ScrubOptions {
        rate_bytes_per_s: Some(4 << 20),
        ..stepwise()
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
