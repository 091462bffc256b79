//! Writes queued with nobody waiting (`Pool::write_queued`, what the NBD server does with a
//! client's writes): every write is told its outcome exactly once, after it landed; the later
//! of two queued writes of a block wins; a write refused at once is told before the call
//! returns and writes nothing; the leader's office handed to the caller is run (also when the
//! caller only drops it); a leader that panics fails the queued writes instead of leaving them
//! waiting. Bytes are checked against a model of each writer's writes, in the order queued.

mod common;

use common::{v4_open_options as open_options, v4_options};
use parking_lot::{Condvar, Mutex};
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use stripestore::device::SharedDevice;
use stripestore::pool::WriteDone;
use stripestore::testing::{mem_devices, shared};
use stripestore::{Error, Pool, Result};

const DEVICE_BYTES: u64 = 16 << 20;

/// The outcomes told, by tag.
#[derive(Default)]
struct Collect {
    told: Mutex<HashMap<u64, Vec<Result<()>>>>,
    changed: Condvar,
}

impl WriteDone for Collect {
    fn done(&self, tag: u64, outcome: Result<()>) {
        self.told.lock().entry(tag).or_default().push(outcome);
        self.changed.notify_all();
    }
}

impl Collect {
    /// Wait (at most a minute) until `count` writes are told; the outcomes.
    fn wait_for(&self, count: usize) -> HashMap<u64, Vec<Result<()>>> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut told = self.told.lock();
        while told.len() < count {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(
                !left.is_zero(),
                "only {} of {count} queued writes were told their outcome within a minute",
                told.len()
            );
            self.changed.wait_for(&mut told, left);
        }
        std::mem::take(&mut *told)
    }
}

/// Queue `data` at `offset` under `tag`; the leader's office, when it comes to this caller,
/// is run here (every third time only dropped, which runs it too).
fn queue(pool: &Pool, sink: &Arc<dyn WriteDone>, offset: u64, data: Vec<u8>, tag: u64) {
    if let Some(duty) = pool.write_queued(offset, data, sink, tag) {
        if tag.is_multiple_of(3) {
            drop(duty);
        } else {
            duty.run();
        }
    }
}

/// Four threads queue writes into regions of their own (blocks written several times, sizes
/// from 1 byte to 64 KiB, unaligned too) while two threads write the plain way; every queued
/// write is told `Ok` exactly once, and every byte reads back as the model of the writes in
/// the order each thread made them says (on version 4 and version 3).
#[test]
fn queued_writes_are_told_once_and_read_back_in_the_order_queued() {
    for (layout, devices, v4, files) in [
        ("rs:4+2", 6, true, false),
        ("mirror:2", 2, true, false),
        ("raid10:2", 4, true, false),
        ("rs:2+1", 3, false, false),
        // On files (io_uring where the kernel has it), as a server's members are.
        ("rs:4+2", 6, true, true),
        ("mirror:2", 2, true, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let members = |fresh: bool| -> Vec<SharedDevice> {
            (0..devices)
                .map(|i| {
                    let path = dir.path().join(format!("d{i}"));
                    let size = fresh.then_some(DEVICE_BYTES);
                    stripestore::device::open_device(&path, size).unwrap()
                })
                .collect()
        };
        let mems = mem_devices(devices, DEVICE_BYTES);
        let devices_now = |fresh: bool| if files { members(fresh) } else { shared(&mems) };
        // Version 3 does not queue writes (`queues_write` is false there, and a queued write
        // is written at once): its row checks that, and that the bytes are right all the same.
        let options = if v4 {
            v4_options(layout)
        } else {
            common::v3_options(layout)
        };
        let pool = Arc::new(Pool::create(devices_now(true), vec![], &options).unwrap());
        assert_eq!(pool.queues_write(4096), v4, "{layout}");
        let collect = Arc::new(Collect::default());
        let sink: Arc<dyn WriteDone> = collect.clone();
        let region = 1u64 << 20;
        let per_thread = 150u64;
        let threads: Vec<_> = (0..6u64)
            .map(|t| {
                let pool = Arc::clone(&pool);
                let sink = Arc::clone(&sink);
                std::thread::spawn(move || {
                    let mut rng = stripestore::testing::rng(0x9_0000 + t);
                    let mut model = vec![0u8; region as usize];
                    let base = t * region;
                    for i in 0..per_thread {
                        // Few distinct blocks, so that blocks are written several times
                        // while earlier writes of them are still queued.
                        let len = match rng.gen_range(0..4) {
                            0 => rng.gen_range(1..4096),
                            1 => 4096,
                            2 => 16384,
                            _ => 65536,
                        };
                        let at = rng.gen_range(0..64u64) * 4096 + rng.gen_range(0..2u64) * 511;
                        let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                        model[at as usize..at as usize + len].copy_from_slice(&data);
                        if t < 4 {
                            queue(&pool, &sink, base + at, data, t * 1000 + i);
                        } else {
                            pool.write_at(base + at, &data).unwrap();
                        }
                    }
                    model
                })
            })
            .collect();
        let models: Vec<Vec<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let told = collect.wait_for(4 * per_thread as usize);
        assert_eq!(told.len(), 4 * per_thread as usize, "{layout}: tags told");
        for (tag, outcomes) in &told {
            assert_eq!(outcomes.len(), 1, "{layout}: write {tag} told {outcomes:?}");
            assert!(outcomes[0].is_ok(), "{layout}: write {tag}: {outcomes:?}");
        }
        let check = |pool: &Pool, when: &str| {
            for (t, model) in models.iter().enumerate() {
                let mut back = vec![0u8; region as usize];
                pool.read_at(t as u64 * region, &mut back).unwrap();
                let first = back.iter().zip(model).position(|(a, b)| a != b);
                assert_eq!(
                    first, None,
                    "{layout} (files: {files}) {when}: thread {t}, first wrong byte"
                );
            }
        };
        check(&pool, "before the reopen");
        pool.flush().unwrap();
        drop(Arc::into_inner(pool).unwrap());
        let open = if v4 {
            open_options()
        } else {
            stripestore::OpenOptions::default()
        };
        let pool = Pool::open(devices_now(false), &open).unwrap();
        check(&pool, "after the reopen");
        pool.close().unwrap();
    }
}

/// A queued write out of range, or on a read-only pool, is told its error before the call
/// returns, and no byte of any member changes.
#[test]
fn a_refused_queued_write_is_told_at_once_and_writes_nothing() {
    let mems = mem_devices(6, DEVICE_BYTES);
    let pool = Pool::create(shared(&mems), vec![], &v4_options("rs:4+2")).unwrap();
    pool.flush().unwrap();
    let before: Vec<Vec<u8>> = mems.iter().map(|m| m.image()).collect();
    let collect = Arc::new(Collect::default());
    let sink: Arc<dyn WriteDone> = collect.clone();
    let size = pool.size();
    let duty = pool.write_queued(size - 100, vec![1; 4096], &sink, 1);
    assert!(duty.is_none(), "a refused write gives no office");
    drop(duty);
    let told = collect.told.lock().remove(&1);
    assert!(
        matches!(told.as_deref(), Some([Err(Error::OutOfRange { .. })])),
        "told {told:?}"
    );
    let after: Vec<Vec<u8>> = mems.iter().map(|m| m.image()).collect();
    assert!(before == after, "a refused write changed a member");
    pool.close().unwrap();
    // Read-only: refused at once too.
    let read_only = Pool::open(
        shared(&mems),
        &stripestore::OpenOptions {
            read_only: true,
            ..open_options()
        },
    )
    .unwrap();
    let before: Vec<Vec<u8>> = mems.iter().map(|m| m.image()).collect();
    assert!(read_only.write_queued(0, vec![2; 4096], &sink, 2).is_none());
    let told = collect.told.lock().remove(&2);
    assert!(matches!(told.as_deref(), Some([Err(_)])), "told {told:?}");
    drop(read_only);
    let after: Vec<Vec<u8>> = mems.iter().map(|m| m.image()).collect();
    assert!(
        before == after,
        "a refused write on a read-only pool changed a member"
    );
}

/// A leader that panics while it lands a group (planted) fails every queued write it carried
/// and every one still queued: each is told an error, none waits for ever; the pool then
/// refuses writes, and after a reopen every block reads its old or its new bytes.
#[test]
fn a_leader_that_panics_fails_the_queued_writes_and_none_waits_for_ever() {
    let mems = mem_devices(2, DEVICE_BYTES);
    let pool = Arc::new(Pool::create(shared(&mems), vec![], &v4_options("mirror:2")).unwrap());
    let piece = 256usize << 10;
    let count = 24u64;
    let old = vec![9u8; piece * count as usize];
    pool.write_at(0, &old).unwrap();
    pool.flush().unwrap();
    pool.plant_leader_panic();
    let collect = Arc::new(Collect::default());
    let sink: Arc<dyn WriteDone> = collect.clone();
    // The first write gets the office; it is run only once every write is queued, so that
    // the leader takes them in several groups and some are still queued when it panics.
    let duty = pool
        .write_queued(0, vec![0; piece], &sink, 0)
        .expect("nobody leads: the office is the first caller's");
    for tag in 1..count {
        let other = pool.write_queued(tag * piece as u64, vec![tag as u8; piece], &sink, tag);
        assert!(other.is_none(), "a second office while the first is held");
    }
    // Run on a thread of its own (as the NBD server's leading thread does): the panic ends
    // that thread, not the test.
    let panicked = std::thread::scope(|scope| scope.spawn(move || duty.run()).join().is_err());
    assert!(panicked, "the planted panic happened in the leader");
    let told = collect.wait_for(count as usize);
    for (tag, outcomes) in &told {
        assert_eq!(outcomes.len(), 1, "write {tag} told {outcomes:?}");
    }
    let failed = told.values().filter(|o| o[0].is_err()).count();
    assert!(
        failed as u64 == count,
        "{failed} of {count} queued writes failed; every one the leader took or left queued must"
    );
    assert!(pool.write_at(0, &[1; 4096]).is_err(), "writes are refused");
    drop(Arc::into_inner(pool).unwrap());
    let pool = Pool::open(shared(&mems), &open_options()).unwrap();
    let mut back = vec![0u8; piece];
    for tag in 0..count {
        pool.read_at(tag * piece as u64, &mut back).unwrap();
        // Nothing was flushed after the old bytes: each piece is old or new, nothing else.
        assert!(
            back == vec![9u8; piece] || back == vec![tag as u8; piece],
            "piece {tag}: neither its old nor its new bytes"
        );
    }
    pool.close().unwrap();
}

/// A write queued after the leader took its last group, while it still holds the office (its
/// writer leaves it to the leader and returns), is carried before the leader gives up: it is
/// told, and reads back.
#[test]
fn a_write_queued_as_the_leader_finishes_is_carried_not_stranded() {
    let mems = mem_devices(2, DEVICE_BYTES);
    let pool = Pool::create(shared(&mems), vec![], &v4_options("mirror:2")).unwrap();
    let collect = Arc::new(Collect::default());
    let sink: Arc<dyn WriteDone> = collect.clone();
    pool.pause_leader_before_giving_up(Duration::from_millis(300));
    let duty = pool
        .write_queued(0, vec![1; 4096], &sink, 1)
        .expect("nobody leads: the office is the first caller's");
    std::thread::scope(|scope| {
        let leader = scope.spawn(move || duty.run());
        // Well inside the leader's pause (its one write takes far less than 100 ms here).
        std::thread::sleep(Duration::from_millis(100));
        let other = pool.write_queued(8192, vec![2; 4096], &sink, 2);
        assert!(other.is_none(), "the leader still holds the office");
        leader.join().unwrap();
    });
    let told = collect.wait_for(2);
    assert!(told[&1][0].is_ok() && told[&2][0].is_ok(), "told {told:?}");
    let mut back = vec![0u8; 4096];
    pool.read_at(8192, &mut back).unwrap();
    assert!(back == vec![2; 4096], "the late write reads back");
    pool.close().unwrap();
}

/// Many writes queued while one caller holds the leader's office, then carried: the leader
/// takes them in groups of up to 2 MiB, so on files (io_uring) the large units are written on
/// threads of their own while the next ones are placed (several units on the devices at once).
/// Every write is told `Ok` once and the bytes read back as the writes applied in the order
/// queued, before and after a reopen (a unit thread that skips its writes fails it: planted).
#[test]
fn writes_queued_behind_a_held_office_land_in_order_with_units_in_flight() {
    for (layout, devices) in [("rs:4+2", 6), ("mirror:2", 2)] {
        let dir = tempfile::tempdir().unwrap();
        let members = |fresh: bool| -> Vec<SharedDevice> {
            (0..devices)
                .map(|i| {
                    let path = dir.path().join(format!("d{i}"));
                    stripestore::device::open_device(&path, fresh.then_some(4 * DEVICE_BYTES))
                        .unwrap()
                })
                .collect()
        };
        let pool = Pool::create(members(true), vec![], &v4_options(layout)).unwrap();
        let collect = Arc::new(Collect::default());
        let sink: Arc<dyn WriteDone> = collect.clone();
        let mut rng = stripestore::testing::rng(0x9_1000 + devices as u64);
        // 128 places of 256 KiB, each write at the start of one: 128 writes in a row never
        // share a block (so that their groups are pipelined), later ones overwrite them.
        let place = 256usize << 10;
        let places = 128usize;
        let span = place * places;
        let mut order: Vec<usize> = (0..places).collect();
        let mut model = vec![0u8; span];
        let count = 300u64;
        let mut duty = None;
        for tag in 0..count {
            if (tag as usize).is_multiple_of(places) {
                for i in (1..places).rev() {
                    order.swap(i, rng.gen_range(0..=i));
                }
            }
            let len = [16384usize, 65536, 131072, 262144][rng.gen_range(0..4)];
            let at = order[tag as usize % places] * place;
            let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            model[at..at + len].copy_from_slice(&data);
            let office = pool.write_queued(at as u64, data, &sink, tag);
            match (office, duty.is_some()) {
                (Some(office), false) => duty = Some(office),
                (None, true) => {}
                (office, held) => panic!(
                    "write {tag}: office {} while one is held: {held}",
                    office.is_some()
                ),
            }
        }
        duty.expect("the first write got the office").run();
        let told = collect.wait_for(count as usize);
        for (tag, outcomes) in &told {
            assert!(
                outcomes.len() == 1 && outcomes[0].is_ok(),
                "{layout}: write {tag} told {outcomes:?}"
            );
        }
        let mut back = vec![0u8; span];
        pool.read_at(0, &mut back).unwrap();
        let first = back.iter().zip(&model).position(|(a, b)| a != b);
        assert_eq!(first, None, "{layout}: first wrong byte before the reopen");
        pool.close().unwrap();
        let pool = Pool::open(members(false), &open_options()).unwrap();
        pool.read_at(0, &mut back).unwrap();
        let first = back.iter().zip(&model).position(|(a, b)| a != b);
        assert_eq!(first, None, "{layout}: first wrong byte after the reopen");
        pool.close().unwrap();
    }
}

/// A stream of queued writes that never lets the queue empty does not hold up the rest: a
/// flush, a read and a status each get the volume within a bound while the stream goes on
/// (the leader hands the volume's lock over to waiting threads between groups), and the
/// stream's writes all land.
#[test]
fn a_stream_of_queued_writes_does_not_hold_up_reads_flushes_or_status() {
    let mems = mem_devices(2, DEVICE_BYTES);
    let pool = Pool::create(shared(&mems), vec![], &v4_options("mirror:2")).unwrap();
    pool.write_at(1 << 20, &[5; 4096]).unwrap();
    // Every member request takes 2 ms: a group is on the devices for a while, so the feeder
    // keeps writes queued behind it all the time.
    for mem in &mems {
        mem.set_delay(Duration::from_millis(2));
    }
    let collect = Arc::new(Collect::default());
    let sink: Arc<dyn WriteDone> = collect.clone();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let queued = std::sync::atomic::AtomicU64::new(0);
    let mut slowest = Duration::ZERO;
    std::thread::scope(|scope| {
        let feeder = scope.spawn(|| {
            let mut leaders = Vec::new();
            let mut tag = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let told = collect.told.lock().len() as u64;
                // Far more in flight than one group takes: writes are queued while every
                // group is on the devices, so the queue is never empty when one lands.
                if tag - told >= 256 {
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                let at = (tag % 200) * 4096;
                if let Some(duty) = pool.write_queued(at, vec![tag as u8; 4096], &sink, tag) {
                    leaders.push(scope.spawn(move || duty.run()));
                }
                tag += 1;
                queued.store(tag, std::sync::atomic::Ordering::SeqCst);
            }
            leaders.into_iter().for_each(|l| l.join().unwrap());
        });
        std::thread::sleep(Duration::from_millis(200));
        // The looking runs on a thread of its own: held up for ever, it fails the test (the
        // stream is stopped, which lets it finish) instead of hanging it.
        let (sent, rounds) = std::sync::mpsc::channel();
        let pool_ref = &pool;
        scope.spawn(move || {
            for round in 0..5 {
                let started = std::time::Instant::now();
                let mut back = vec![0u8; 4096];
                pool_ref.read_at(1 << 20, &mut back).unwrap();
                assert!(back == vec![5; 4096], "round {round}: the read's bytes");
                let read = started.elapsed();
                pool_ref.flush().unwrap();
                let flushed = started.elapsed();
                assert!(!pool_ref.status().devices.is_empty());
                let _ = sent.send((round, read, flushed, started.elapsed()));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        for _ in 0..5 {
            let outcome = rounds.recv_timeout(Duration::from_secs(5));
            let Ok((round, read, flushed, looked)) = outcome else {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
                panic!("a read, flush and status waited over 5 s behind the queued writes");
            };
            slowest = slowest.max(looked);
            assert!(
                read < Duration::from_secs(1) && flushed < Duration::from_secs(2),
                "round {round}: read after {read:?}, flush after {flushed:?}, behind the writes"
            );
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        feeder.join().unwrap();
    });
    let count = queued.load(std::sync::atomic::Ordering::SeqCst);
    assert!(count > 100, "the stream queued only {count} writes");
    let told = collect.wait_for(count as usize);
    assert!(told.values().all(|o| o.len() == 1 && o[0].is_ok()));
    println!("{count} writes streamed; slowest read + flush + status {slowest:?}");
    for mem in &mems {
        mem.set_delay(Duration::ZERO);
    }
    pool.close().unwrap();
}
