//! Damage stays as small as it is: a fault costs what it destroyed, never more.
//!
//! * localized damage on more members than the layout tolerates loses exactly the stripes it
//!   destroyed: no member is faulted for it, the scrub lists the lost ranges (sorted, merged,
//!   with device names), its tallies add up, and every other byte reads back exact;
//! * data errors degrade a member (it keeps serving), at a rate, not a lifetime count; a write
//!   failure faults a member only while the pool can lose it; `clear` brings members back;
//! * a bad sector under a large read costs its own block: found, rebuilt, healed or lost, and
//!   named, alone (the request that failed is asked again block by block);
//! * a faulted member that comes back is resynced, not trusted;
//! * a read-only open changes no byte, whatever it finds.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use stripestore::device::{Device, FaultKind, FaultyDevice, MemDevice, SharedDevice};
use stripestore::pool::{ClearedState, ShardLocation};
use stripestore::testing::{mem_devices, random_bytes, rng, seed, shared, Model};
use stripestore::{Error, Layout, OpenOptions, Pool, ScrubOptions};

fn fill(pool: &Pool, model: &mut Model, rng: &mut rand_chacha::ChaCha8Rng) {
    let data = random_bytes(rng, pool.size() as usize);
    pool.write_at(0, &data).unwrap();
    model.write(0, &data);
    pool.flush().unwrap();
}

fn manual() -> OpenOptions {
    OpenOptions {
        background_rebuild: false,
        auto_replace: false,
        ..OpenOptions::default()
    }
}

fn images(mems: &[Arc<MemDevice>]) -> Vec<Vec<u8>> {
    mems.iter().map(|m| m.image()).collect()
}

/// Bytes of a logical block, of a row's shard-block and of a checksum block in format
/// version 4, the format these pools are.
const BLOCK: u64 = 4096;

/// The volume blocks of logical stripes `stripes` (volume ranges of `stripe_data_bytes`).
fn blocks_of(pool: &Pool, stripes: Range<u64>) -> Range<u64> {
    let per_stripe = pool.geometry().stripe_data_bytes() / BLOCK;
    stripes.start * per_stripe..stripes.end * per_stripe
}

/// Overwrite, on each of `devices`, every shard-block of the rows that hold volume blocks
/// `blocks` (where `Pool::block_locations` says they are), with bytes that cannot verify.
/// Returns the places damaged: (member, byte offset), each once.
fn damage_rows(
    pool: &Pool,
    mems: &[Arc<MemDevice>],
    blocks: Range<u64>,
    devices: &[usize],
) -> BTreeSet<(usize, u64)> {
    let mut damaged = BTreeSet::new();
    for key in blocks {
        let row = pool.block_locations(key * BLOCK);
        assert!(
            !row.is_empty(),
            "block {key} is written: damage must hit it"
        );
        for place in row {
            if devices.contains(&place.device) && damaged.insert((place.device, place.offset)) {
                let junk = vec![0xA5u8 ^ (key as u8); BLOCK as usize];
                mems[place.device].poke(place.offset, &junk);
            }
        }
    }
    damaged
}

/// One block of the volume and the row that holds it.
struct BlockRow {
    /// Every shard-block of the row (one per shard, `Pool::block_locations`).
    row: Vec<ShardLocation>,
    /// The ones that carry this block: its data shard-block (rs), or every copy of it
    /// (mirror, raid10).
    own: Vec<ShardLocation>,
}

/// Where every block of the volume is, found before any damage while the members hold what
/// `model` says: a row's data shard-blocks hold their blocks' bytes as written, so a block's
/// own shard-blocks are the data ones whose bytes are the block's.
fn block_rows(pool: &Pool, mems: &[Arc<MemDevice>], model: &Model) -> Vec<BlockRow> {
    (0..pool.size() / BLOCK)
        .map(|key| {
            let row = pool.block_locations(key * BLOCK);
            assert_eq!(row.len(), pool.geometry().width(), "block {key}: {row:?}");
            let bytes = model.read(key * BLOCK, BLOCK as usize);
            let own: Vec<ShardLocation> = row
                .iter()
                .filter(|p| {
                    p.data_chunk.is_some() && mems[p.device].peek(p.offset, BLOCK as usize) == bytes
                })
                .copied()
                .collect();
            // Exactly the shard-blocks of one data chunk: one for rs, every copy otherwise.
            assert!(!own.is_empty(), "block {key}: no shard-block holds it");
            let chunk = own[0].data_chunk;
            assert_eq!(
                own.len(),
                row.iter().filter(|p| p.data_chunk == chunk).count(),
                "block {key}: {row:?}"
            );
            BlockRow { row, own }
        })
        .collect()
}

/// rs:4+2, mirror:2 and raid10:2 with damage on tolerance + 1 members over the rows of a few
/// adjacent stripes of the volume: exactly the blocks whose own shard-blocks were destroyed
/// beyond what their row can rebuild are lost (on rs, a row's damaged parity or a data
/// shard-block still on a good member costs nothing). Everything else reads back exact,
/// before and after a reopen; no member is faulted; the scrub's tallies are exact and add up,
/// and its ranges are the lost blocks, merged where adjacent, naming the failed members.
#[test]
fn localized_damage_beyond_tolerance_costs_only_the_damaged_stripes() {
    for (layout, devices, victims) in [
        ("rs:4+2", 6, vec![0usize, 1, 2]),
        ("mirror:2", 2, vec![0, 1]),
        ("raid10:2", 4, vec![0, 1]),
    ] {
        let mems = mem_devices(devices, DEVICE_BYTES);
        let pool = Pool::create(shared(&mems), vec![], &options(layout)).unwrap();
        let mut rng = rng(seed(110));
        let mut model = Model::new(pool.size());
        fill(&pool, &mut model, &mut rng);
        drop(pool);
        let pool = Pool::open(shared(&mems), &manual()).unwrap();
        let k = pool.geometry().data_chunks();
        let copies = matches!(
            pool.geometry().layout,
            Layout::Mirror { .. } | Layout::Raid10 { .. }
        );
        let places = block_rows(&pool, &mems, &model);
        // The rows of stripes 10..20: few enough that every lost range is listed (the list
        // keeps 64).
        let blocks = blocks_of(&pool, 10..20);
        // Every such row keeps a shard-block on each victim (rs:4+2: three of its six, one
        // more than its parity; mirror: both copies; raid10: both copies of one group).
        for key in blocks.clone() {
            for victim in &victims {
                assert!(
                    places[key as usize].row.iter().any(|p| p.device == *victim),
                    "{layout}: block {key}"
                );
            }
        }
        let damaged = damage_rows(&pool, &mems, blocks.clone(), &victims);
        let rows_hit: BTreeSet<(usize, u64)> = blocks
            .clone()
            .map(|key| {
                let first = places[key as usize].row[0];
                (first.device, first.offset)
            })
            .collect();
        assert_eq!(damaged.len(), rows_hit.len() * victims.len(), "{layout}");
        // What the damage costs, from the rows alone: a shard-block is rebuilt from K good
        // ones of its row (rs) or from a good copy of its chunk (mirror, raid10); a block is
        // lost when none of its own shard-blocks is good or can be rebuilt.
        let good = |p: &ShardLocation| !damaged.contains(&(p.device, p.offset));
        let rebuildable = |row: &[ShardLocation], p: &ShardLocation| {
            if copies {
                row.iter().any(|q| q.data_chunk == p.data_chunk && good(q))
            } else {
                row.iter().filter(|q| good(q)).count() >= k
            }
        };
        let lost: Vec<u64> = (0..places.len() as u64)
            .filter(|key| {
                let at = &places[*key as usize];
                at.own.iter().all(|p| !good(p) && !rebuildable(&at.row, p))
            })
            .collect();
        assert!(!lost.is_empty(), "{layout}: the damage must lose blocks");
        // Per member: the places damaged, and those of them nothing can rebuild (each row
        // counted once).
        let mut bad_on = vec![0u64; devices];
        let mut unrepairable_on = vec![0u64; devices];
        let mut seen = BTreeSet::new();
        for at in &places {
            if !seen.insert((at.row[0].device, at.row[0].offset)) {
                continue;
            }
            for p in at.row.iter().filter(|p| !good(p)) {
                bad_on[p.device] += 1;
                if !rebuildable(&at.row, p) {
                    unrepairable_on[p.device] += 1;
                }
            }
        }
        assert_eq!(bad_on.iter().sum::<u64>(), damaged.len() as u64, "{layout}");

        let report = pool.scrub_with(&ScrubOptions::default(), |_| {}).unwrap();
        // No member is faulted for data errors; the pool stays available and writable.
        for device in &pool.status().devices {
            assert_ne!(device.state, "FAULTED", "{layout}: {device:?}");
        }
        // Version 4 counts the places that stay bad as its unrepairable "stripes", and the
        // blocks they cost as lost blocks.
        assert_eq!(
            report.unrepairable_stripes,
            unrepairable_on.iter().sum::<u64>(),
            "{layout}"
        );
        assert_eq!(report.lost_blocks, lost.len() as u64, "{layout}");
        // Tallies add up: every error is repaired, unrepairable or (not here) not rewritten,
        // and each member's are exactly the places damaged on it.
        for device in &report.devices {
            let c = &device.counters;
            assert!(c.errors_accounted(), "{layout}: {device:?}");
            assert_eq!(c.bytes_skipped, 0, "{layout}: {device:?}");
            assert_eq!(c.io_errors, 0, "{layout}: {device:?}");
            assert_eq!(
                c.checksum_errors, bad_on[device.index],
                "{layout}: {device:?}"
            );
            assert_eq!(
                c.unrepairable, unrepairable_on[device.index],
                "{layout}: {device:?}"
            );
            assert_eq!(c.not_rewritten, 0, "{layout}: {device:?}");
        }
        // Lost ranges: sorted, merged where blocks are adjacent, each naming every member
        // whose shard-block of a lost block's row failed.
        let mut expected: Vec<(u64, u64, Vec<String>)> = Vec::new();
        for key in &lost {
            let start = key * BLOCK;
            let names = places[*key as usize]
                .row
                .iter()
                .filter(|p| !good(p))
                .map(|p| mems[p.device].name());
            match expected.last_mut() {
                Some((s, len, on)) if *s + *len == start => {
                    *len += BLOCK;
                    on.extend(names);
                }
                _ => expected.push((start, BLOCK, names.collect())),
            }
            if let Some((_, _, on)) = expected.last_mut() {
                on.sort();
                on.dedup();
            }
        }
        assert!(
            expected.len() <= stripestore::format::MAX_RECORDED_RANGES,
            "{layout}: {} ranges, more than a scrub lists",
            expected.len()
        );
        let got: Vec<(u64, u64, Vec<String>)> = report
            .damaged
            .iter()
            .map(|r| (r.volume_offset, r.length, r.devices.clone()))
            .collect();
        assert_eq!(got, expected, "{layout}");
        for range in &report.damaged {
            assert!(!range.devices.is_empty(), "{layout}: {range:?}");
            for victim in &victims {
                assert!(
                    range.devices.contains(&mems[*victim].name()),
                    "{layout}: {range:?}"
                );
            }
        }
        check_blocks(layout, &pool, &model, &lost);
        // Still writable: overwrite a lost block and it is whole again.
        let fresh = random_bytes(&mut rng, BLOCK as usize);
        pool.write_at(lost[0] * BLOCK, &fresh).unwrap();
        model.write(lost[0] * BLOCK, &fresh);
        pool.flush().unwrap();
        let mut lost = lost;
        lost.remove(0);
        drop(pool);
        let pool = Pool::open(shared(&mems), &manual()).unwrap();
        check_blocks(layout, &pool, &model, &lost);
    }
}

/// Every block in `lost` fails to read (never returns bytes, and says which block); every
/// other block of the volume is exact.
fn check_blocks(layout: &str, pool: &Pool, model: &Model, lost: &[u64]) {
    for key in 0..pool.size() / BLOCK {
        let mut buf = vec![0u8; BLOCK as usize];
        let result = pool.read_at(key * BLOCK, &mut buf);
        if lost.contains(&key) {
            assert!(
                matches!(result, Err(Error::UnrecoverableBlock { volume_offset, .. })
                    if volume_offset == key * BLOCK),
                "{layout}: block {key} must fail, not return bytes: {result:?}"
            );
        } else {
            result.unwrap_or_else(|e| panic!("{layout}: block {key}: {e}"));
            assert_eq!(
                buf,
                model.read(key * BLOCK, BLOCK as usize),
                "{layout}: block {key}"
            );
        }
    }
}

/// Errors make a member DEGRADED once `error_threshold` fall within `error_window`, never
/// FAULTED; it keeps serving, the state is persisted, and `clear` brings it back to ONLINE.
/// Errors spread wider apart than the window never degrade it.
#[test]
fn data_errors_degrade_at_a_rate_and_clear_brings_the_member_back() {
    let mems = mem_devices(6, DEVICE_BYTES);
    let pool = Pool::create(shared(&mems), vec![], &options("rs:4+2")).unwrap();
    let mut rng = rng(seed(120));
    let mut model = Model::new(pool.size());
    fill(&pool, &mut model, &mut rng);
    drop(pool);
    let rate = |window: Duration| OpenOptions {
        error_threshold: 5,
        error_window: window,
        ..manual()
    };
    let stripes = 0..40u64;
    // Slow errors: a window so short that five never fall within it.
    {
        let pool = Pool::open(shared(&mems), &rate(Duration::from_millis(1))).unwrap();
        for stripe in stripes.clone() {
            let blocks = blocks_of(&pool, stripe..stripe + 1);
            damage_rows(&pool, &mems, blocks, &[3]);
            std::thread::sleep(Duration::from_millis(3));
            let mut buf = vec![0u8; pool.geometry().stripe_data_bytes() as usize];
            let at = stripe * pool.geometry().stripe_data_bytes();
            pool.read_at(at, &mut buf).unwrap();
        }
        let status = pool.status();
        assert!(status.devices[3].checksum_errors >= 5);
        assert_eq!(status.devices[3].state, "ONLINE", "{status}");
    }
    // Fast errors: degraded, not faulted; it keeps serving.
    let pool = Pool::open(shared(&mems), &rate(Duration::from_secs(600))).unwrap();
    damage_rows(&pool, &mems, blocks_of(&pool, 40..80), &[3]);
    verify(&pool, &model);
    let status = pool.status();
    assert_eq!(status.devices[3].state, "DEGRADED", "{status}");
    assert!(status.devices[3]
        .reason
        .as_deref()
        .unwrap()
        .contains("too many errors"));
    assert_eq!(
        status.remaining_tolerance, 2,
        "a degraded member still counts"
    );
    let before = pool.status().devices[3].checksum_errors;
    damage_rows(&pool, &mems, blocks_of(&pool, 80..90), &[3]);
    verify(&pool, &model);
    assert!(
        pool.status().devices[3].checksum_errors > before,
        "a degraded member is still read"
    );
    drop(pool);
    // Persisted, and `clear` ends it (also persisted).
    let pool = Pool::open(shared(&mems), &manual()).unwrap();
    assert_eq!(pool.status().devices[3].state, "DEGRADED");
    let cleared = pool.clear(None).unwrap();
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].index, 3);
    assert_eq!(cleared[0].state, ClearedState::Online);
    assert_eq!(pool.status().devices[3].state, "ONLINE");
    drop(pool);
    let pool = Pool::open(shared(&mems), &manual()).unwrap();
    assert_eq!(pool.status().devices[3].state, "ONLINE");
    assert_eq!(pool.status().health.to_string(), "ONLINE");
    verify(&pool, &model);
}

/// A member whose writes fail is faulted while the pool can lose it; once it cannot, the next
/// one is degraded and kept, and the pool stays available.
#[test]
fn a_write_failure_faults_only_within_tolerance() {
    let mems = mem_devices(3, DEVICE_BYTES);
    let mut plans = Vec::new();
    let devices: Vec<SharedDevice> = mems
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (device, plan) = FaultyDevice::new(m.clone() as SharedDevice, 7 + i as u64);
            plans.push(plan);
            Arc::new(device) as SharedDevice
        })
        .collect();
    let pool = Pool::create(devices, vec![], &options("rs:2+1")).unwrap();
    let mut rng = rng(seed(130));
    let mut model = Model::new(pool.size());
    fill(&pool, &mut model, &mut rng);
    let fail_writes = |device: usize| {
        plans[device]
            .lock()
            .set_random(1.0, &[FaultKind::WriteError])
    };
    fail_writes(1);
    let data = random_bytes(&mut rng, 100_000);
    pool.write_at(12_345, &data).unwrap();
    model.write(12_345, &data);
    pool.flush().unwrap();
    let status = pool.status();
    assert_eq!(status.devices[1].state, "FAULTED", "{status}");
    // A second member failing writes cannot be faulted: rs:2+1 would lose data.
    fail_writes(2);
    let result = pool.write_at(500_000, &data);
    let status = pool.status();
    assert_eq!(status.devices[2].state, "DEGRADED", "{status}");
    assert!(status.devices[2]
        .reason
        .as_deref()
        .unwrap()
        .contains("cannot lose it"));
    // The write could not land on enough members: refused, not acknowledged; the old data
    // stays readable.
    assert!(result.is_err(), "{result:?}");
    verify(&pool, &model);
}

/// A member faulted while the pool went on is stale: `clear_with` given that same device
/// resyncs it from redundancy (not trusting its content) and brings it back; another device
/// is refused.
#[test]
fn clearing_a_faulted_member_resyncs_it() {
    let mems = mem_devices(6, DEVICE_BYTES);
    let pool = Pool::create(shared(&mems), vec![], &options("rs:4+2")).unwrap();
    let mut rng = rng(seed(140));
    let mut model = Model::new(pool.size());
    fill(&pool, &mut model, &mut rng);
    drop(pool);
    let pool = Pool::open(shared(&mems), &manual()).unwrap();
    pool.fault_device(2, "transient: cable pulled");
    // Written while it was away: the member's copy is outdated.
    let data = random_bytes(&mut rng, 300_000);
    pool.write_at(4096, &data).unwrap();
    model.write(4096, &data);
    pool.flush().unwrap();
    let cleared = pool.clear(Some("2")).unwrap();
    assert!(matches!(cleared[0].state, ClearedState::NeedsDevice { .. }));
    let other = Arc::new(MemDevice::new("other", DEVICE_BYTES));
    assert!(pool.clear_with("2", other as SharedDevice).is_err());
    pool.clear_with("2", mems[2].clone() as SharedDevice)
        .unwrap();
    pool.run_rebuilds(|_| {}).unwrap();
    let status = pool.status();
    assert_eq!(status.devices[2].state, "ONLINE", "{status}");
    drop(pool);
    // It holds the new data: lose two others and read everything.
    let survivors: Vec<SharedDevice> = [0usize, 2, 4, 5]
        .iter()
        .map(|i| mems[*i].clone() as SharedDevice)
        .collect();
    let pool = Pool::open(survivors, &manual()).unwrap();
    verify(&pool, &model);
}

/// A read-only open writes nothing, whatever it finds: damage (counted, not healed), a
/// missing member (shown, not recorded), a check-only scrub; writes are refused.
#[test]
fn a_read_only_open_changes_no_byte() {
    let mems = mem_devices(6, DEVICE_BYTES);
    let pool = Pool::create(shared(&mems), vec![], &options("rs:4+2")).unwrap();
    let mut rng = rng(seed(150));
    let mut model = Model::new(pool.size());
    fill(&pool, &mut model, &mut rng);
    damage_rows(&pool, &mems, blocks_of(&pool, 5..60), &[1]);
    drop(pool);
    let look = OpenOptions {
        read_only: true,
        error_threshold: 3,
        ..OpenOptions::default()
    };
    let before = images(&mems);
    {
        // One member missing too.
        let present: Vec<SharedDevice> = [0usize, 1, 2, 3, 4]
            .iter()
            .map(|i| mems[*i].clone() as SharedDevice)
            .collect();
        let pool = Pool::open(present, &look).unwrap();
        verify(&pool, &model);
        let status = pool.status();
        assert!(status.devices[1].checksum_errors > 0);
        assert_eq!(status.devices[5].state, "FAULTED");
        let _ = stripestore::endpoint::metrics_text(&pool);
        let report = common::check_only_scrub(&pool);
        assert!(report.totals.checksum_errors > 0);
        assert!(report.totals.bytes_skipped > 0, "member 5 was not verified");
        assert!(matches!(
            pool.write_at(0, b"x"),
            Err(Error::ReadOnly { .. })
        ));
        assert!(matches!(pool.scrub(), Err(Error::ReadOnly { .. })));
        assert!(matches!(pool.offline("0"), Err(Error::ReadOnly { .. })));
        assert!(matches!(pool.clear(None), Err(Error::ReadOnly { .. })));
        pool.flush().unwrap();
        pool.close().unwrap();
    }
    assert!(images(&mems) == before, "a read-only open changed bytes");
    // A read-write open afterwards still sees every member as it was.
    let pool = Pool::open(shared(&mems), &manual()).unwrap();
    assert!(pool.status().devices.iter().all(|d| d.state != "FAULTED"));
    verify(&pool, &model);
}

/// A member smaller than the pool's device size is refused at open (its second superblock
/// would land inside the data area), and nothing is written.
#[test]
fn a_shrunk_member_is_refused_at_open() {
    let mems = mem_devices(4, DEVICE_BYTES);
    let pool = Pool::create(shared(&mems), vec![], &options("rs:2+2")).unwrap();
    drop(pool);
    let short = Arc::new(MemDevice::new("short", DEVICE_BYTES - 64 * 1024));
    short.poke(0, &mems[1].peek(0, (DEVICE_BYTES - 64 * 1024) as usize));
    let mut given: Vec<SharedDevice> = shared(&mems);
    given[1] = short.clone();
    let before = images(&mems);
    let err = Pool::open(given, &manual()).unwrap_err();
    assert!(
        matches!(err, Error::DeviceTooSmall { ref device, .. } if device == "short"),
        "{err}"
    );
    assert!(images(&mems) == before);
}

/// A spare whose path would push the superblock past its 64 KiB is refused, and the pool
/// keeps recording faults afterwards (the spare was not kept in memory).
#[test]
fn a_spare_that_cannot_be_recorded_is_not_kept() {
    let mems = mem_devices(4, DEVICE_BYTES);
    let pool = Pool::create(shared(&mems), vec![], &options("rs:2+2")).unwrap();
    let long = Arc::new(MemDevice::new("s".repeat(70 * 1024), DEVICE_BYTES));
    assert!(pool.add_spare(long as SharedDevice, false).is_err());
    assert!(pool.status().spares.is_empty());
    let generation = pool.status().superblock_generation;
    pool.fault_device(0, "test");
    assert_eq!(pool.status().superblock_generation, generation + 1);
    drop(pool);
    let pool = Pool::open(shared(&mems), &manual()).unwrap();
    assert_eq!(pool.status().devices[0].state, "FAULTED");
}

/// A member's next superblock write (copy A, at offset 0) fails.
fn fail_next_superblock_write(plan: &parking_lot::Mutex<stripestore::device::FaultPlan>) {
    let mut plan = plan.lock();
    plan.set_region(0..stripestore::geometry::SUPERBLOCK_BYTES);
    plan.arm(FaultKind::WriteError, 1);
}

/// A member whose superblock write fails while the pool records a change (here a scrub's
/// record) has the error counted and goes to the fault policy: out of service
/// when the pool can lose it (the change is recorded on the others), and otherwise the
/// operation fails naming it, the member staying in service (degraded) with its write error
/// counted.
/// Before, the failure was dropped: no count, and the member silently kept an older
/// superblock than the others.
#[test]
fn a_member_failing_the_superblock_write_of_a_recorded_change_is_counted_and_faulted_or_named() {
    let mut rng = rng(seed(0x5b01));
    let mems = mem_devices(6, 16 << 20);
    let (devices, plans) = faulty_members(&mems, 0x5b01);
    let pool = Pool::create(devices.clone(), vec![], &v4_options("rs:4+2")).unwrap();
    let mut model = Model::new(pool.size());
    fill(&pool, &mut model, &mut rng);
    fail_next_superblock_write(&plans[1]);
    pool.scrub().unwrap();
    assert_eq!(
        plans[1].lock().count(FaultKind::WriteError),
        1,
        "not injected"
    );
    let status = pool.status();
    assert_eq!(status.devices[1].state, "FAULTED", "{status}");
    assert!(status.devices[1].write_errors >= 1, "{status}");
    for i in [0, 2, 3, 4, 5] {
        assert_eq!(status.devices[i].state, "ONLINE", "member {i}: {status}");
        let label = stripestore::pool::read_label(mems[i].as_ref())
            .unwrap()
            .unwrap();
        assert!(
            label.scrub.last.is_some(),
            "member {i} lacks the scrub record"
        );
    }
    verify(&pool, &model);
    pool.close().unwrap();

    // At its tolerance (rs:2+1 with one member faulted) the member cannot be lost: the
    // recorded change fails naming it, and it stays in service with the error counted.
    let mems = mem_devices(3, 16 << 20);
    let (devices, plans) = faulty_members(&mems, 0x5b02);
    let pool = Pool::create(devices, vec![], &v4_options("rs:2+1")).unwrap();
    let mut model = Model::new(pool.size());
    fill(&pool, &mut model, &mut rng);
    pool.fault_member("mem0").unwrap();
    fail_next_superblock_write(&plans[2]);
    match pool.scrub() {
        Err(Error::Io { device, .. }) => assert_eq!(device, "mem2"),
        other => panic!("a member the pool cannot lose failing the record: {other:?}"),
    }
    let status = pool.status();
    // In service, marked degraded by its write error.
    assert_eq!(status.devices[2].state, "DEGRADED", "{status}");
    assert!(status.devices[2].write_errors >= 1, "{status}");
    verify(&pool, &model);
}

/// The members of `mems` but `absent`, each behind a fault plan, opened as a pool (forced
/// when members are left out: the test knows they hold nothing newer). Plans by position.
fn open_behind_faults(
    mems: &[Arc<MemDevice>],
    absent: &[usize],
) -> (
    Pool,
    Vec<Arc<parking_lot::Mutex<stripestore::device::FaultPlan>>>,
) {
    let (devices, plans) = faulty_members(mems, 900);
    let present: Vec<SharedDevice> = devices
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !absent.contains(i))
        .map(|(_, d)| d)
        .collect();
    let open = OpenOptions {
        force: !absent.is_empty(),
        ..manual()
    };
    (Pool::open(present, &open).unwrap(), plans)
}

/// Per member its read errors, and the volume's counters: what a read found and repaired.
fn found(pool: &Pool) -> (Vec<u64>, stripestore::volume::VolumeCounters) {
    let errors = pool
        .status()
        .devices
        .iter()
        .map(|d| d.read_errors)
        .collect();
    (errors, pool.volume_counters().expect("a version-4 pool"))
}

/// What changed between two [`found`]: read errors per member; shard-blocks found bad,
/// blocks rebuilt, shard-blocks healed, blocks lost.
fn found_since(
    before: &(Vec<u64>, stripestore::volume::VolumeCounters),
    after: &(Vec<u64>, stripestore::volume::VolumeCounters),
) -> Found {
    let errors = after.0.iter().zip(&before.0).map(|(a, b)| a - b).collect();
    let (a, b) = (&after.1, &before.1);
    (
        errors,
        [
            a.bad_shard_blocks - b.bad_shard_blocks,
            a.rebuilt_blocks - b.rebuilt_blocks,
            a.healed_shard_blocks - b.healed_shard_blocks,
            a.unrecoverable_blocks - b.unrecoverable_blocks,
        ],
    )
}

/// A shard-block among `candidates` (places of blocks of `range`) on a member not in
/// `absent` with a neighbour on each side on that member that `neighbours` also holds: a read
/// of the range asks for it inside a longer request, neither first nor last.
fn inside_a_run(
    candidates: &[(u64, ShardLocation)],
    neighbours: &[ShardLocation],
    absent: &[usize],
) -> (u64, ShardLocation) {
    let has = |device: usize, offset: u64| {
        neighbours
            .iter()
            .any(|q| q.device == device && q.offset == offset)
    };
    *candidates
        .iter()
        .find(|(_, p)| {
            !absent.contains(&p.device)
                && has(p.device, p.offset - BLOCK)
                && has(p.device, p.offset + BLOCK)
        })
        .expect("a shard-block inside a run of the read")
}

/// What a read found ([`found_since`]): read errors per member, then shard-blocks found bad,
/// blocks rebuilt, shard-blocks healed and blocks lost.
type Found = (Vec<u64>, [u64; 4]);

/// `read` on `pool` twice, each giving `expected`: first as it is, then with a bad sector
/// under `place`; what each found ([`found_since`]).
fn clean_then_bad(
    pool: &Pool,
    plans: &[Arc<parking_lot::Mutex<stripestore::device::FaultPlan>>],
    place: &ShardLocation,
    read: &dyn Fn() -> Result<Vec<u8>, Error>,
    expected: &[u8],
    what: &str,
) -> (Found, Found) {
    let before = found(pool);
    assert_eq!(read().unwrap(), expected, "{what}: clean");
    let clean = found_since(&before, &found(pool));
    plans[place.device]
        .lock()
        .add_bad_read_range(place.offset..place.offset + BLOCK);
    let before = found(pool);
    assert_eq!(read().unwrap(), expected, "{what}: with a bad sector");
    (clean, found_since(&before, &found(pool)))
}

/// One bad sector under a large read costs its own shard-block, never the others its request
/// carried: a request that fails on a range is asked again block by block. On every layout,
/// healthy: the 256 KiB read returns the model's bytes, and against the same read without the
/// fault exactly one read error on the member, one bad shard-block, one block rebuilt, one
/// healed; then the same on rs:4+2 with a member absent, the bad sector under a parity
/// shard-block that only the row's rebuild reads (no block more rebuilt than without it).
/// Beyond what its row can spare, the read fails naming that block's row and the sector, one
/// block counted lost, and the rest of the range reads back exact.
#[test]
fn a_bad_sector_under_a_large_read_costs_only_its_own_block() {
    let range = 64u64..128;
    let read = |pool: &Pool| {
        let mut buf = vec![0u8; ((range.end - range.start) * BLOCK) as usize];
        pool.read_at(range.start * BLOCK, &mut buf).map(|()| buf)
    };
    for (layout, devices) in [("rs:4+2", 6), ("mirror:2", 2), ("raid10:2", 4)] {
        let mems = mem_devices(devices, DEVICE_BYTES);
        let pool = Pool::create(shared(&mems), vec![], &options(layout)).unwrap();
        let mut rng = rng(seed(130));
        let mut model = Model::new(pool.size());
        fill(&pool, &mut model, &mut rng);
        let rows = block_rows(&pool, &mems, &model);
        drop(pool);
        let expected = model.read(
            range.start * BLOCK,
            ((range.end - range.start) * BLOCK) as usize,
        );
        let owns: Vec<(u64, ShardLocation)> = range
            .clone()
            .flat_map(|key| rows[key as usize].own.iter().map(move |p| (key, *p)))
            .collect();
        let all_own: Vec<ShardLocation> = owns.iter().map(|(_, p)| *p).collect();

        // Healthy: each copy of a block inside a run, in turn (a mirror reads one of them).
        let (key, _) = inside_a_run(&owns, &all_own, &[]);
        let (pool, plans) = open_behind_faults(&mems, &[]);
        let mut hit = 0;
        for place in &rows[key as usize].own {
            let (baseline, (errors, counts)) = clean_then_bad(
                &pool,
                &plans,
                place,
                &|| read(&pool),
                expected,
                &format!("{layout}: block {key}"),
            );
            plans[place.device].lock().clear();
            assert_eq!(baseline.1, [0; 4], "{layout}: a clean read finds nothing");
            if errors[place.device] == 0 {
                // This copy was not the one read: nothing else may have been found either.
                assert_eq!(counts, [0; 4], "{layout}: block {key} at {place:?}");
                continue;
            }
            hit += 1;
            let mut one = vec![0u64; devices];
            one[place.device] = 1;
            assert_eq!(errors, one, "{layout}: block {key} at {place:?}");
            assert_eq!(counts, [1, 1, 1, 0], "{layout}: block {key} at {place:?}");
            // Healed: the same read again finds nothing.
            let before = found(&pool);
            assert_eq!(read(&pool).unwrap(), expected, "{layout}");
            assert_eq!(found_since(&before, &found(&pool)).1, [0; 4], "{layout}");
        }
        assert!(hit >= 1, "{layout}: no copy of block {key} was read");
        drop(pool);

        if layout == "rs:4+2" {
            // A member absent: the rows of its blocks are rebuilt, their parity read then.
            let absent = 0usize;
            let rebuilt: Vec<u64> = range
                .clone()
                .filter(|k| rows[*k as usize].own.iter().any(|p| p.device == absent))
                .collect();
            let parity: Vec<(u64, ShardLocation)> = rebuilt
                .iter()
                .flat_map(|k| {
                    let row = &rows[*k as usize].row;
                    row.iter()
                        .filter(|p| p.data_chunk.is_none())
                        .map(move |p| (*k, *p))
                })
                .collect();
            let parity_places: Vec<ShardLocation> = parity.iter().map(|(_, p)| *p).collect();
            let (key, place) = inside_a_run(&parity, &parity_places, &[absent]);
            let (pool, plans) = open_behind_faults(&mems, &[absent]);
            let (baseline, (errors, counts)) = clean_then_bad(
                &pool,
                &plans,
                &place,
                &|| read(&pool),
                expected,
                &format!("{layout} degraded: block {key}"),
            );
            let mut one = vec![0u64; devices];
            one[place.device] = 1;
            assert_eq!(
                errors, one,
                "{layout} degraded: parity of block {key} at {place:?}"
            );
            assert_eq!(
                counts,
                [1, baseline.1[1], 1, 0],
                "{layout} degraded: parity of block {key} at {place:?} (clean: {baseline:?})"
            );
            drop(pool);
        }

        // Beyond what the row can spare: every member but the block's own absent on a
        // mirror; two others on rs:4+2.
        let (key, place) = inside_a_run(&owns, &all_own, &[]);
        let absent: Vec<usize> = if layout == "rs:4+2" {
            (0..devices)
                .filter(|d| *d != place.device)
                .take(2)
                .collect()
        } else {
            rows[key as usize]
                .own
                .iter()
                .map(|p| p.device)
                .filter(|d| *d != place.device)
                .collect()
        };
        let row_of_key = &rows[key as usize].row;
        let in_row = |k: u64| rows[k as usize].row == *row_of_key;
        let (pool, plans) = open_behind_faults(&mems, &absent);
        plans[place.device]
            .lock()
            .add_bad_read_range(place.offset..place.offset + BLOCK);
        let before = found(&pool);
        let err = read(&pool).expect_err("a block is lost");
        let (errors, counts) = found_since(&before, &found(&pool));
        let Error::UnrecoverableBlock { volume_offset, .. } = &err else {
            panic!("{layout}: {err}");
        };
        assert!(
            in_row(volume_offset / BLOCK),
            "{layout}: the error names block {} outside the row of block {key}: {err}",
            volume_offset / BLOCK
        );
        assert!(
            err.to_string()
                .contains(&format!("at byte {}: I/O error", place.offset)),
            "{layout}: {err}"
        );
        assert_eq!(errors[place.device], 1, "{layout}: {errors:?}");
        assert_eq!(
            counts[0], 1,
            "{layout}: one shard-block found bad: {counts:?}"
        );
        assert_eq!(counts[2], 0, "{layout}: nothing to heal: {counts:?}");
        assert_eq!(counts[3], 1, "{layout}: one block lost: {counts:?}");
        if layout != "rs:4+2" {
            assert_eq!(
                counts[1], 0,
                "{layout}: no copy to rebuild from: {counts:?}"
            );
        }
        for k in range.clone().filter(|k| !in_row(*k)) {
            let mut buf = vec![0u8; BLOCK as usize];
            pool.read_at(k * BLOCK, &mut buf).unwrap();
            assert_eq!(
                buf,
                model.read(k * BLOCK, BLOCK as usize),
                "{layout}: block {k}"
            );
        }
    }
}

/// Fails (EIO) every read of more than one block that covers byte `at`; serves single blocks.
#[derive(Debug)]
struct FailsLongReads {
    inner: SharedDevice,
    at: u64,
}

impl Device for FailsLongReads {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), stripestore::device::DeviceError> {
        let end = offset + buf.len() as u64;
        if buf.len() as u64 > BLOCK && offset <= self.at && self.at < end {
            return Err(std::io::Error::other("EIO on a long request").into());
        }
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), stripestore::device::DeviceError> {
        self.inner.write_at(offset, buf)
    }
    fn flush(&self) -> Result<(), stripestore::device::DeviceError> {
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
}

/// A freshly filled rs:4+2 pool of six members, for reads of blocks 64..128.
struct FilledRs {
    mems: Vec<Arc<MemDevice>>,
    model: Model,
    /// The own shard-block of every block of 64..128.
    owns: Vec<(u64, ShardLocation)>,
    /// A block of them whose shard-block a read of the range asks for inside a longer
    /// request, and that place.
    key: u64,
    place: ShardLocation,
}

fn filled_rs(seed_no: u64) -> FilledRs {
    let mems = mem_devices(6, DEVICE_BYTES);
    let pool = Pool::create(shared(&mems), vec![], &options("rs:4+2")).unwrap();
    let mut rng = rng(seed(seed_no));
    let mut model = Model::new(pool.size());
    fill(&pool, &mut model, &mut rng);
    let rows = block_rows(&pool, &mems, &model);
    drop(pool);
    let owns: Vec<(u64, ShardLocation)> = (64u64..128)
        .flat_map(|key| rows[key as usize].own.iter().map(move |p| (key, *p)))
        .collect();
    let all_own: Vec<ShardLocation> = owns.iter().map(|(_, p)| *p).collect();
    let (key, place) = inside_a_run(&owns, &all_own, &[]);
    FilledRs {
        mems,
        model,
        owns,
        key,
        place,
    }
}

/// Read blocks 64..128 whole and check them against `model`.
fn read_range_exact(pool: &Pool, model: &Model, what: &str) {
    let mut buf = vec![0u8; (64 * BLOCK) as usize];
    pool.read_at(64 * BLOCK, &mut buf).unwrap();
    assert_eq!(buf, model.read(64 * BLOCK, buf.len()), "{what}");
}

/// A request that fails whole while each of its blocks then reads found nothing: the read
/// returns the model's bytes, and nothing is counted bad, rebuilt, healed or lost, and no
/// read error is counted on the member (as a scrub's cell-by-cell reads count none).
#[test]
fn a_request_that_fails_whole_but_reads_block_by_block_costs_nothing() {
    let FilledRs {
        mems,
        model,
        key,
        place,
        ..
    } = filled_rs(131);
    let devices: Vec<SharedDevice> = mems
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let inner = Arc::clone(m) as SharedDevice;
            if i == place.device {
                Arc::new(FailsLongReads {
                    inner,
                    at: place.offset,
                }) as SharedDevice
            } else {
                inner
            }
        })
        .collect();
    let pool = Pool::open(devices, &manual()).unwrap();
    let before = found(&pool);
    read_range_exact(&pool, &model, &format!("block {key}"));
    let (errors, counts) = found_since(&before, &found(&pool));
    assert_eq!(errors, vec![0; 6], "block {key} at {place:?}");
    assert_eq!(counts, [0; 4], "block {key} at {place:?}");
}

/// A hedged request (its member keeps read deadlines) that fails on a range is asked again
/// block by block with its deadline, and the blocks after the first late one are not asked:
/// a slow member costs one deadline more, not one per block. The read returns the model's
/// bytes (the late blocks rebuilt from their rows), the request's error is counted once (the
/// blocks not asked may hold it), nothing is found bad, healed or lost.
#[test]
fn a_hedged_request_that_fails_is_asked_again_until_a_block_is_late() {
    let FilledRs {
        mems,
        model,
        owns,
        key,
        place,
    } = filled_rs(132);
    let on_member = owns
        .iter()
        .filter(|(_, p)| p.device == place.device)
        .count();
    assert!(
        on_member > 2,
        "{on_member} blocks on member {}",
        place.device
    );
    let (pool, plans) = open_behind_faults(&mems, &[]);
    {
        let mut plan = plans[place.device].lock();
        plan.add_bad_read_range(place.offset..place.offset + BLOCK);
        plan.set_latency(1.0, Duration::from_millis(300));
    }
    let before = found(&pool);
    read_range_exact(&pool, &model, &format!("block {key}"));
    let (errors, counts) = found_since(&before, &found(&pool));
    // The request that failed, then the blocks of it asked again (each delayed past the
    // deadline until the first is late).
    let injected = plans[place.device].lock().injected.clone();
    let failed = injected
        .iter()
        .find(|f| f.kind == FaultKind::ReadError && f.len as u64 > BLOCK)
        .expect("the request covering the bad sector failed");
    let asked_again = injected
        .iter()
        .filter(|f| {
            f.kind == FaultKind::Latency
                && f.len as u64 == BLOCK
                && (failed.offset..failed.offset + failed.len as u64).contains(&f.offset)
        })
        .count();
    assert_eq!(
        asked_again, 1,
        "block {key} at {place:?}: blocks of the failed request asked again: {injected:?}"
    );
    let mut one = vec![0u64; 6];
    one[place.device] = 1;
    assert_eq!(errors, one, "block {key} at {place:?}");
    assert_eq!(counts[0], 0, "late blocks are not bad: {counts:?}");
    assert_eq!(counts[2], 0, "nothing healed: {counts:?}");
    assert_eq!(counts[3], 0, "nothing lost: {counts:?}");
}
