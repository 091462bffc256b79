//! Discard (TRIM) and allocation status: discarded ranges read as zeros and the rest is
//! unchanged, on every layout, across a reopen; whole stripes give their slots back (a volume
//! can be filled, discarded and filled again without a reopen); rebuild and scrub touch only the
//! data that remains; bad ranges and read-only pools are refused with nothing changed. Crashes
//! around discards are in `tests/crash_consistency.rs`, discards racing writes and crashes in
//! the simulation.

use crate::common;

use common::*;
use rand::Rng;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use stripestore::device::MemDevice;
use stripestore::geometry::Geometry;
use stripestore::pool::Extent;
use stripestore::testing::{mem_devices, random_bytes, rng, shared, Model};
use stripestore::{Error, OpenOptions, Pool};

fn manual() -> OpenOptions {
    OpenOptions {
        background_rebuild: false,
        ..OpenOptions::default()
    }
}

/// Discard `len` bytes at `offset` in the pool and in the model.
fn discard(pool: &Pool, model: &mut Model, offset: u64, len: u64) {
    pool.discard(offset, len)
        .unwrap_or_else(|e| panic!("discard of {len} bytes at {offset}: {e}"));
    model.write(offset, &vec![0u8; len as usize]);
}

/// Every whole stripe inside `[offset, offset + len)` is reported unallocated.
fn assert_unallocated_inside(pool: &Pool, offset: u64, len: u64) {
    let stripe = pool.geometry().stripe_data_bytes();
    let first = offset.div_ceil(stripe) * stripe;
    let end = (offset + len) / stripe * stripe;
    if first >= end {
        return;
    }
    let extents = pool.allocation(first, end - first).unwrap();
    assert_eq!(
        extents,
        vec![Extent {
            offset: first,
            length: end - first,
            allocated: false
        }],
        "whole stripes of a discarded range hold no slot"
    );
}

#[test]
fn discarded_ranges_read_as_zeros_and_the_rest_is_unchanged_across_a_reopen() {
    each_layout(
        4100,
        "discarded_ranges_read_as_zeros",
        |layout, devices, rng, _| {
            let mems = mem_devices(devices, DEVICE_BYTES);
            let pool = Pool::create(shared(&mems), vec![], &options(layout)).unwrap();
            let size = pool.size();
            let stripe = pool.geometry().stripe_data_bytes();
            let mut model = Model::new(size);
            let data = random_bytes(rng, size as usize);
            pool.write_at(0, &data).unwrap();
            model.write(0, &data);
            pool.flush().unwrap();
            // Aligned whole stripes, an unaligned range spanning several, one inside a
            // stripe, and one crossing a single boundary.
            let ranges = [
                (2 * stripe, 3 * stripe),
                (7 * stripe + 100, 4 * stripe + 1000),
                (13 * stripe + 5, 17),
                (16 * stripe - 10, 20),
                (size - stripe - 1, stripe + 1),
            ];
            for (offset, len) in ranges {
                discard(&pool, &mut model, offset, len);
                assert_unallocated_inside(&pool, offset, len);
            }
            for _ in 0..20 {
                let len = rng.gen_range(1..4 * stripe);
                let offset = rng.gen_range(0..size - len);
                discard(&pool, &mut model, offset, len);
                assert_unallocated_inside(&pool, offset, len);
            }
            verify(&pool, &model);
            let allocated = pool.status().allocated_bytes;
            assert!(allocated < size, "discard gave stripes back");
            pool.close().unwrap();
            let pool = reopen(&mems);
            verify(&pool, &model);
            assert_eq!(
                pool.status().allocated_bytes,
                allocated,
                "the unmapping was durable"
            );
            // Discarded stripes are writable again, and a discard of never-written space is
            // a no-op.
            let data = random_bytes(rng, 3 * stripe as usize);
            pool.write_at(2 * stripe, &data).unwrap();
            model.write(2 * stripe, &data);
            pool.discard(2 * stripe, stripe).unwrap();
            pool.discard(2 * stripe, stripe).unwrap();
            model.write(2 * stripe, &vec![0u8; stripe as usize]);
            verify(&pool, &model);
            pool.close().unwrap();
        },
    );
}

#[test]
fn allocation_reports_runs_that_cover_the_range_exactly() {
    let (pool, _mems) = mem_pool("rs:4+2", 6);
    let stripe = pool.geometry().stripe_data_bytes();
    // Format version 4 maps each 4 KiB block on its own (docs/FORMAT.md V4.1): a write of one
    // byte allocates the one block that holds it, not its stripe.
    let block = 4096;
    pool.write_at(stripe, &vec![7u8; 2 * stripe as usize])
        .unwrap();
    pool.write_at(5 * stripe + 1, &[1]).unwrap();
    let extents = pool.allocation(100, 6 * stripe).unwrap();
    let expected = vec![
        Extent {
            offset: 100,
            length: stripe - 100,
            allocated: false,
        },
        Extent {
            offset: stripe,
            length: 2 * stripe,
            allocated: true,
        },
        Extent {
            offset: 3 * stripe,
            length: 2 * stripe,
            allocated: false,
        },
        Extent {
            offset: 5 * stripe,
            length: block,
            allocated: true,
        },
        Extent {
            offset: 5 * stripe + block,
            length: stripe - block + 100,
            allocated: false,
        },
    ];
    assert_eq!(extents, expected);
    assert_eq!(
        pool.allocation_limited(100, 6 * stripe, 2).unwrap(),
        expected[..2]
    );
    assert_eq!(pool.allocation(0, 0).unwrap(), vec![]);
    // Discarding a written stripe turns its run back into a hole, at once.
    pool.discard(stripe, stripe).unwrap();
    assert_eq!(
        pool.allocation(stripe, stripe).unwrap(),
        vec![Extent {
            offset: stripe,
            length: stripe,
            allocated: false
        }]
    );
    assert_eq!(
        pool.allocation(2 * stripe, stripe).unwrap(),
        vec![Extent {
            offset: 2 * stripe,
            length: stripe,
            allocated: true
        }]
    );
    // And a discard of one block inside a written stripe makes exactly that block a hole.
    pool.discard(2 * stripe + block, block).unwrap();
    assert_eq!(
        pool.allocation(2 * stripe, stripe).unwrap(),
        vec![
            Extent {
                offset: 2 * stripe,
                length: block,
                allocated: true
            },
            Extent {
                offset: 2 * stripe + block,
                length: block,
                allocated: false
            },
            Extent {
                offset: 2 * stripe + 2 * block,
                length: stripe - 2 * block,
                allocated: true
            },
        ]
    );
}

#[test]
fn bad_ranges_and_read_only_pools_are_refused_and_nothing_changes() {
    let (pool, mems) = mem_pool("mirror:2", 2);
    let size = pool.size();
    let data = random_bytes(&mut rng(5), size as usize);
    pool.write_at(0, &data).unwrap();
    pool.flush().unwrap();
    for (offset, len) in [(size, 1), (size - 1, 2), (u64::MAX, 2), (1, u64::MAX)] {
        match pool.discard(offset, len) {
            Err(Error::OutOfRange {
                offset: o,
                length: l,
                volume_bytes,
            }) => assert_eq!((o, l, volume_bytes), (offset, len, size)),
            other => panic!("discard of {len} at {offset}: {other:?}"),
        }
        assert!(pool.allocation(offset, len).is_err());
    }
    pool.discard(size, 0).unwrap();
    let mut model = Model::new(size);
    model.write(0, &data);
    verify(&pool, &model);
    pool.close().unwrap();
    let read_only = OpenOptions {
        read_only: true,
        ..manual()
    };
    let pool = Pool::open(shared(&mems), &read_only).unwrap();
    assert!(matches!(pool.discard(0, 4096), Err(Error::ReadOnly { .. })));
    verify(&pool, &model);
    assert_eq!(pool.status().allocated_bytes, size);
}

#[test]
fn discarded_stripes_give_their_slots_back_without_a_reopen() {
    // Fill every logical stripe (all slots but the copy-on-write reserve), discard everything,
    // fill it again, three times over: only possible if each discard's commit released the
    // slots. A leak would leave the writer waiting for a free slot forever, so it runs in a
    // thread with a deadline.
    let (pool, _mems) = mem_pool("rs:2+1", 3);
    let pool = Arc::new(pool);
    let worker = Arc::clone(&pool);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let size = worker.size();
        let mut rng = rng(9);
        for round in 0..3 {
            let data = random_bytes(&mut rng, size as usize);
            worker.write_at(0, &data).unwrap();
            worker.flush().unwrap();
            let mut back = vec![0u8; size as usize];
            worker.read_at(0, &mut back).unwrap();
            assert!(back == data, "round {round}: the volume reads back");
            worker.discard(0, size).unwrap();
            worker.flush().unwrap();
            assert_eq!(worker.status().allocated_bytes, 0);
        }
        done.send(()).unwrap();
    });
    finished
        .recv_timeout(Duration::from_secs(120))
        .expect("refilling a discarded volume must not run out of slots");
}

/// Bytes of a metadata page, and of a data block (one cell of a row).
const PAGE: u64 = 16 * 1024;
const BLOCK: u64 = 4096;

/// The data slot and the 4 KiB cell on `device` of the row holding volume byte `offset`
/// (`None` when the block holds nothing). For layouts whose width is the member count
/// (mirror:N on N, rs:K+M on K+M), every slot is one chunk row of every member, so the slot
/// is that row's number.
fn cell_of(pool: &Pool, offset: u64, device: usize) -> Option<(u64, u64)> {
    let geometry = pool.geometry();
    assert_eq!(geometry.width(), geometry.devices);
    pool.block_locations(offset)
        .into_iter()
        .find(|l| l.device == device)
        .map(|l| {
            (
                (l.offset - geometry.data_offset) / geometry.chunk_bytes,
                l.offset,
            )
        })
}

/// Slots in a segment, the unit v4 allocates and frees (the test minimum, `small_v4`).
fn segment_slots() -> u64 {
    let opts = options("rs:4+2");
    assert!(
        matches!(opts.format, stripestore::pool::FormatVersion::V4(v) if v.segment_slots == 4),
        "the suites create v4 pools with 4-slot segments"
    );
    4
}

/// What a rebuild of position `victim` must do on a v4 pool, worked out from the layout and
/// the members' bytes rather than from the rebuild (docs/FORMAT.md V4.5, "Rebuild"):
/// * every written row of a data segment that still holds live data has its cell on the
///   position rebuilt (4 KiB written, K = 4 cells of other members read: rs:4+2). Segments
///   whose every block was discarded are free and skipped; a segment keeps all its rows,
///   dead ones too, while one live block holds it.
/// * every referenced metadata page with a copy on the position gets it from a sibling copy
///   (16 KiB read, 16 KiB written);
/// * and the pass starts by walking the trees: each interior page is read once (16 KiB).
///
/// `written` maps every block ever written to its (slot, cell on the victim); `live` is the
/// blocks that still hold data. Returns `(data cells, pages copied, interior pages)`.
fn rebuild_work(
    mems: &[Arc<MemDevice>],
    geometry: &Geometry,
    victim: usize,
    written: &[(u64, u64)],
    live: &[(u64, u64)],
) -> (u64, u64, u64) {
    let segment = |slot: u64| slot / segment_slots();
    let held: BTreeSet<u64> = live.iter().map(|(slot, _)| segment(*slot)).collect();
    let cells: BTreeSet<u64> = written
        .iter()
        .filter(|(slot, _)| held.contains(&segment(*slot)))
        .map(|(_, cell)| *cell)
        .collect();
    let (on_victim, interior) = pages_on_position(mems, geometry, victim);
    (cells.len() as u64, on_victim, interior)
}

/// A rebuild after writing `stripes` whole stripes and discarding the first `trimmed` of them:
/// `(bytes read, bytes written onto the spare, data bytes among those written)`, each checked
/// against what [`rebuild_work`] says it must be.
fn rebuild_bytes(stripes: u64, trimmed: u64) -> (u64, u64, u64) {
    let victim = 2;
    let mems = mem_devices(6, DEVICE_BYTES);
    let spare = Arc::new(MemDevice::new("spare", DEVICE_BYTES));
    let mut opts = options("rs:4+2");
    opts.open = manual();
    let pool = Pool::create(shared(&mems), shared(&[spare]), &opts).unwrap();
    let stripe = pool.geometry().stripe_data_bytes();
    let mut model = Model::new(pool.size());
    let data = random_bytes(&mut rng(3), (stripes * stripe) as usize);
    pool.write_at(0, &data).unwrap();
    model.write(0, &data);
    pool.flush().unwrap();
    let cells = |from: u64| -> Vec<(u64, u64)> {
        (from * stripe / BLOCK..stripes * stripe / BLOCK)
            .map(|b| cell_of(&pool, b * BLOCK, victim).expect("a written block has a row"))
            .collect()
    };
    let written = cells(0);
    discard(&pool, &mut model, 0, trimmed * stripe);
    pool.flush().unwrap();
    for b in 0..trimmed * stripe / BLOCK {
        assert!(
            cell_of(&pool, b * BLOCK, victim).is_none(),
            "block {b} was discarded"
        );
    }
    let live = cells(trimmed);
    let geometry = pool.geometry().clone();
    let (data_cells, pages, interior) = rebuild_work(&mems, &geometry, victim, &written, &live);
    pool.fault_device(victim, "test: lost");
    pool.attach_spares();
    // The estimate is the live data's share of the position (1/K of the allocated bytes);
    // on v4 it leaves out the page copies (src/pool/rows_rebuild.rs, `rows_rebuild_estimate`).
    assert_eq!(
        pool.rebuild_progress()[0].total_bytes,
        (stripes - trimmed) * stripe / 4,
        "the estimate at the attach"
    );
    let completed = pool.run_rebuilds(|_| {}).unwrap();
    assert_eq!(completed.len(), 1);
    let progress = completed[0].clone();
    assert_eq!(
        progress.done_bytes, progress.total_bytes,
        "the estimate is exact"
    );
    let data_bytes = data_cells * BLOCK;
    assert_eq!(
        progress.done_bytes,
        data_bytes + pages * PAGE,
        "written onto the spare: {data_cells} cells and {pages} page copies"
    );
    assert_eq!(
        progress.read_bytes,
        4 * data_bytes + (pages + interior) * PAGE,
        "read from the other members: K cells per rebuilt cell, one copy per copied page, \
         {interior} interior pages walked"
    );
    verify(&pool, &model);
    pool.close().unwrap();
    (progress.read_bytes, progress.done_bytes, data_bytes)
}

#[test]
fn rebuild_after_a_trim_reads_and_writes_only_the_remaining_data() {
    // 48 whole stripes fill 12 segments of 4 slots (each slot one stripe); the first 36
    // discarded empty 9 of them. The data a rebuild moves is a quarter; the metadata pages it
    // copies besides are accounted exactly in `rebuild_bytes`.
    let (full_read, full_written, full_data) = rebuild_bytes(48, 0);
    let (trimmed_read, trimmed_written, trimmed_data) = rebuild_bytes(48, 36);
    assert!(full_written > 0 && full_read > 0);
    assert_eq!(full_data, 48 * 4 * BLOCK, "every row of 48 slots");
    assert_eq!(trimmed_data * 4, full_data, "data written onto the spare");
    assert!(
        trimmed_written < full_written && trimmed_read < full_read,
        "({trimmed_read}, {trimmed_written}) against ({full_read}, {full_written})"
    );
}

#[test]
fn scrub_checks_only_the_stripes_that_remain() {
    // On v4 a scrub checks rows and metadata pages (each counted in `stripes_checked`): every
    // written row of each data segment still allocated, every cell of it read (3 on mirror:3),
    // and every copy of each referenced page, after one walk of the interior pages.
    let (pool, mems) = mem_pool("mirror:3", 3);
    let stripe = pool.geometry().stripe_data_bytes();
    let blocks = 20 * stripe / BLOCK;
    pool.write_at(0, &vec![3u8; 20 * stripe as usize]).unwrap();
    pool.flush().unwrap();
    let rows_of = |pool: &Pool, blocks: &[u64]| -> BTreeSet<u64> {
        blocks
            .iter()
            .map(|b| cell_of(pool, b * BLOCK, 0).expect("a written block").0)
            .collect()
    };
    let all: Vec<u64> = (0..blocks).collect();
    let written: Vec<(u64, u64)> = all
        .iter()
        .map(|b| cell_of(&pool, b * BLOCK, 0).unwrap())
        .collect();
    let expected = |pool: &Pool, live: &[u64]| -> (u64, u64) {
        let held: BTreeSet<u64> = rows_of(pool, live)
            .into_iter()
            .map(|slot| slot / segment_slots())
            .collect();
        let rows = written
            .iter()
            .filter(|(slot, _)| held.contains(&(slot / segment_slots())))
            .count() as u64;
        let (pages, interior) = referenced_pages(&mems, pool.geometry());
        let pages = pages.len() as u64;
        (
            rows + pages,
            interior * PAGE + rows * 3 * BLOCK + pages * 3 * PAGE,
        )
    };
    let before = pool.scrub().unwrap();
    assert_eq!(
        (before.stripes_checked, before.bytes_read_this_run),
        expected(&pool, &all)
    );
    assert!(before.stripes_checked >= 80, "20 stripes of 4 rows");
    pool.discard(stripe / 2, 12 * stripe).unwrap();
    // The segments the discard emptied become free at the next tree sync (docs/FORMAT.md
    // V4.4, the usage table's state 6); this small discard's commit is a log record, so the
    // sync is the close's.
    pool.close().unwrap();
    let pool = reopen(&mems);
    // Blocks 2..50 are gone (the discard is per 4 KiB block); blocks 0, 1 and 50..80 remain.
    // A segment (4 slots of 4 rows: 16 blocks here) holding only discarded blocks is free and
    // not checked; one holding a live block is checked whole.
    let live: Vec<u64> = (0..2).chain(50..blocks).collect();
    for b in 2..50 {
        assert!(
            cell_of(&pool, b * BLOCK, 0).is_none(),
            "block {b} was discarded"
        );
    }
    let after = pool.scrub().unwrap();
    assert_eq!(
        (after.stripes_checked, after.bytes_read_this_run),
        expected(&pool, &live)
    );
    assert!(after.stripes_checked < before.stripes_checked);
}

#[test]
fn a_discard_racing_partial_writes_on_the_same_stripes_never_brings_old_data_back() {
    // Every stripe starts full of 0xaa. One thread writes 100 bytes of 0x55 at byte 10 of each
    // stripe (a read-modify-write), another discards all the stripes at once. Whichever comes
    // first on a stripe, afterwards it reads as zeros with, at most, the 0x55 bytes: never
    // 0xaa (an unmapping lost under a read-modify-write would bring it back).
    for seed in 0..4u64 {
        let (pool, mems) = mem_pool("rs:4+2", 6);
        let pool = Arc::new(pool);
        let stripe = pool.geometry().stripe_data_bytes();
        let stripes = 64u64;
        pool.write_at(0, &vec![0xaa; (stripes * stripe) as usize])
            .unwrap();
        pool.flush().unwrap();
        let writer = {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || {
                // Start from a different stripe each round, so the two meet in different places.
                for i in 0..stripes {
                    let s = (i + seed * 17) % stripes;
                    pool.write_at(s * stripe + 10, &[0x55; 100]).unwrap();
                }
            })
        };
        pool.discard(0, stripes * stripe).unwrap();
        writer.join().unwrap();
        let check = |pool: &Pool, when: &str| {
            for s in 0..stripes {
                let mut buf = vec![0u8; stripe as usize];
                pool.read_at(s * stripe, &mut buf).unwrap();
                let written = buf[10..110].iter().all(|&b| b == 0x55);
                let zero = buf[10..110].iter().all(|&b| b == 0);
                assert!(written || zero, "{when}: stripe {s} holds a mix");
                assert!(
                    buf[..10].iter().chain(&buf[110..]).all(|&b| b == 0),
                    "{when}: stripe {s} outside the written bytes is not zero"
                );
            }
        };
        check(&pool, "after the race");
        let pool = Arc::into_inner(pool).expect("the writer is done");
        pool.close().unwrap();
        check(&reopen(&mems), "after a reopen");
    }
}

#[test]
fn a_pool_that_lost_too_many_members_refuses_a_discard_and_unmaps_nothing() {
    let (pool, mems) = mem_pool("rs:2+1", 3);
    let stripe = pool.geometry().stripe_data_bytes();
    pool.write_at(0, &vec![9u8; 8 * stripe as usize]).unwrap();
    pool.flush().unwrap();
    mems[0].set_gone(true);
    mems[1].set_gone(true);
    // The write notices the losses (faulting what it can) and fails.
    assert!(pool.write_at(0, &[1u8; 10]).is_err());
    let before = pool.allocation(0, pool.size()).unwrap();
    match pool.discard(0, 4 * stripe) {
        Err(Error::PoolUnavailable { .. }) => {}
        other => panic!("discard on an unavailable pool: {other:?}"),
    }
    assert_eq!(pool.allocation(0, pool.size()).unwrap(), before);
    pool.simulate_power_loss();
}
