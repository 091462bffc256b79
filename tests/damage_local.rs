//! Damage stays as small as it is: a fault costs what it destroyed, never more.
//!
//! * localized damage on more members than the layout tolerates loses exactly the stripes it
//!   destroyed: no member is faulted for it, the scrub lists the lost ranges (sorted, merged,
//!   with device names), its tallies add up, and every other byte reads back exact;
//! * data errors degrade a member (it keeps serving), at a rate, not a lifetime count; a write
//!   failure faults a member only while the pool can lose it; `clear` brings members back;
//! * a faulted member that comes back is resynced, not trusted;
//! * a read-only open changes no byte, whatever it finds.

mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use stripestore::device::{Device, FaultKind, FaultyDevice, MemDevice, SharedDevice};
use stripestore::pool::ClearedState;
use stripestore::testing::{mem_devices, random_bytes, rng, seed, shared, Model};
use stripestore::{Error, OpenOptions, Pool, ScrubOptions};

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

/// Overwrite, on each of `devices`, every chunk that stripes `stripes` keep there, with bytes
/// that cannot verify. Returns how many chunks were damaged per device.
fn damage_stripes(
    pool: &Pool,
    mems: &[Arc<MemDevice>],
    stripes: std::ops::Range<u64>,
    devices: &[usize],
) -> Vec<u64> {
    let mut per_device = vec![0u64; mems.len()];
    for stripe in stripes {
        for shard in pool.shard_locations(stripestore::types::StripeId(stripe)) {
            if devices.contains(&shard.device) {
                let junk = vec![0xA5u8 ^ (stripe as u8); CHUNK_BYTES as usize];
                mems[shard.device].poke(shard.offset, &junk);
                per_device[shard.device] += 1;
            }
        }
    }
    per_device
}

/// rs:4+2 and raid10 with damage on tolerance + 1 members over a few adjacent stripes: only
/// those stripes are lost. Everything else reads back exact, before and after a reopen; no
/// member is faulted; the scrub's tallies add up and its ranges are one merged, named range.
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
        let stripe_bytes = pool.geometry().stripe_data_bytes();
        // Every stripe keeps a chunk on each victim (raid10: both copies of one group).
        let stripes: Vec<u64> = (10..50).collect();
        assert_eq!(stripes.len(), 40, "{layout}");
        let mut lost = Vec::new();
        for stripe in &stripes {
            damage_stripes(&pool, &mems, *stripe..*stripe + 1, &victims);
            lost.push(*stripe);
        }
        let report = pool.scrub_with(&ScrubOptions::default(), |_| {}).unwrap();
        // No member is faulted for data errors; the pool stays available and writable.
        for device in &pool.status().devices {
            assert_ne!(device.state, "FAULTED", "{layout}: {device:?}");
        }
        assert_eq!(report.unrepairable_stripes, lost.len() as u64, "{layout}");
        // Tallies add up: every error is repaired, unrepairable or (not here) not rewritten.
        for device in &report.devices {
            let c = &device.counters;
            assert!(c.errors_accounted(), "{layout}: {device:?}");
            assert_eq!(c.bytes_skipped, 0, "{layout}: {device:?}");
        }
        // Lost ranges: sorted, merged where stripes are adjacent, each naming the victims.
        let mut expected: Vec<(u64, u64)> = Vec::new();
        for stripe in &lost {
            let start = stripe * stripe_bytes;
            match expected.last_mut() {
                Some((s, len)) if *s + *len == start => *len += stripe_bytes,
                _ => expected.push((start, stripe_bytes)),
            }
        }
        let got: Vec<(u64, u64)> = report
            .damaged
            .iter()
            .map(|r| (r.volume_offset, r.length))
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
        check_stripes(layout, &pool, &model, &lost);
        // Still writable: overwrite a lost stripe and it is whole again.
        let fresh = random_bytes(&mut rng, stripe_bytes as usize);
        pool.write_at(lost[0] * stripe_bytes, &fresh).unwrap();
        model.write(lost[0] * stripe_bytes, &fresh);
        pool.flush().unwrap();
        lost.remove(0);
        drop(pool);
        let pool = Pool::open(shared(&mems), &manual()).unwrap();
        check_stripes(layout, &pool, &model, &lost);
    }
}

/// Every stripe in `lost` fails to read (never returns bytes); every other one is exact.
fn check_stripes(layout: &str, pool: &Pool, model: &Model, lost: &[u64]) {
    let stripe_bytes = pool.geometry().stripe_data_bytes();
    for stripe in 0..pool.geometry().stripes {
        let mut buf = vec![0u8; stripe_bytes as usize];
        let result = pool.read_at(stripe * stripe_bytes, &mut buf);
        if lost.contains(&stripe) {
            assert!(
                matches!(result, Err(Error::Unrecoverable { .. })),
                "{layout}: stripe {stripe} must fail, not return bytes: {result:?}"
            );
        } else {
            result.unwrap_or_else(|e| panic!("{layout}: stripe {stripe}: {e}"));
            assert_eq!(
                buf,
                model.read(stripe * stripe_bytes, stripe_bytes as usize),
                "{layout}: stripe {stripe}"
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
            damage_stripes(&pool, &mems, stripe..stripe + 1, &[3]);
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
    damage_stripes(&pool, &mems, 40..80, &[3]);
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
    damage_stripes(&pool, &mems, 80..90, &[3]);
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
    damage_stripes(&pool, &mems, 5..60, &[1]);
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
