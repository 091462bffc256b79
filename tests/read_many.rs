//! Reads taken together (`Pool::read_many`, what the NBD server does with the read requests a
//! client sent together): every layout, on a pool with blocks to heal and blocks lost, against
//! a twin pool that received the same reads one by one (`Pool::read_at`):
//!
//! * every read's outcome is its own and the same as alone: the model's bytes, or the same
//!   error (a block nothing can return fails only its own read; a read out of range fails
//!   before any I/O; a read off block boundaries, an empty one and repeated blocks are served);
//! * what was found and repaired is counted the same (per member: read, checksum and repair
//!   tallies; the volume's counters of blocks read, bad, rebuilt, healed and lost), and what
//!   was healed reads back clean on both;
//! * a read error under one read costs only that read, never its neighbour on the device;
//! * over NBD, pipelined reads sent in one piece are answered each with its own data or error.

use crate::common;

use common::*;
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::Arc;
use stripestore::device::{FaultPlan, FaultyDevice, MemDevice, SharedDevice};
use stripestore::nbd::client::Client;
use stripestore::nbd::proto::{cmd, errno};
use stripestore::nbd::ServeOptions;
use stripestore::testing::nbd::BackgroundServer;
use stripestore::testing::{mem_devices, random_bytes, rng, seed, shared, Model};
use stripestore::{Error, Pool};

const BLOCK: u64 = 4096;

/// Every block's row, named by its first shard-block (member, byte offset).
fn row_of(pool: &Pool, key: u64) -> (usize, u64) {
    let places = pool.block_locations(key * BLOCK);
    assert!(!places.is_empty(), "block {key} is written");
    (places[0].device, places[0].offset)
}

/// A pool written whole from `seed`, then damaged: on the first `tolerance` members every
/// shard-block of the rows holding blocks `0..64` (healable: each such row keeps enough on the
/// other members), and every shard-block of the row of block `lost` on every member. Returns
/// the pool, its members, the model and the blocks lost (those of that row).
fn damaged_pool(
    layout: &str,
    devices: usize,
    seed: u64,
    lost: u64,
) -> (Pool, Vec<Arc<MemDevice>>, Model, BTreeSet<u64>) {
    let mems = mem_devices(devices, DEVICE_BYTES);
    let pool = Pool::create(shared(&mems), vec![], &options(layout)).unwrap();
    let mut rng = rng(seed);
    let mut model = Model::new(pool.size());
    let data = random_bytes(&mut rng, pool.size() as usize);
    pool.write_at(0, &data).unwrap();
    model.write(0, &data);
    pool.flush().unwrap();
    let tolerance = pool.status().tolerance;
    let junk = vec![0xA5u8; BLOCK as usize];
    for key in 0..64 {
        for place in pool.block_locations(key * BLOCK) {
            if place.device < tolerance {
                mems[place.device].poke(place.offset, &junk);
            }
        }
    }
    let lost_row = row_of(&pool, lost);
    let lost_blocks: BTreeSet<u64> = (0..pool.size() / BLOCK)
        .filter(|key| row_of(&pool, *key) == lost_row)
        .collect();
    for place in pool.block_locations(lost * BLOCK) {
        mems[place.device].poke(place.offset, &junk);
    }
    (pool, mems, model, lost_blocks)
}

/// Per member: (read errors, checksum errors, repaired chunks); then the volume's counters
/// but the count of reads served together.
fn tallies(pool: &Pool) -> (Vec<(u64, u64, u64)>, stripestore::volume::VolumeCounters) {
    let members = pool
        .status()
        .devices
        .iter()
        .map(|d| (d.read_errors, d.checksum_errors, d.repaired_chunks))
        .collect();
    let mut volume = pool.volume_counters().expect("a version-4 pool");
    volume.reads_together = 0;
    (members, volume)
}

/// Serve `reads` (offset, length) together on `together` and one by one on `alone`, check
/// that each outcome is the same on both (bytes the model's, errors the same text), and
/// return the outcomes.
fn compare(
    what: &str,
    together: &Pool,
    alone: &Pool,
    model: &Model,
    reads: &[(u64, usize)],
) -> Vec<Result<(), Error>> {
    let mut buffers: Vec<Vec<u8>> = reads.iter().map(|(_, len)| vec![0u8; *len]).collect();
    let outcomes = {
        let mut parts: Vec<(u64, &mut [u8])> = reads
            .iter()
            .zip(buffers.iter_mut())
            .map(|((offset, _), buf)| (*offset, &mut buf[..]))
            .collect();
        together.read_many(&mut parts)
    };
    assert_eq!(outcomes.len(), reads.len());
    for (((offset, len), buf), outcome) in reads.iter().zip(&buffers).zip(&outcomes) {
        let mut own = vec![0u8; *len];
        let single = alone.read_at(*offset, &mut own);
        let what = format!("{what}: read of {len} bytes at {offset}");
        match (outcome, &single) {
            (Ok(()), Ok(())) => assert!(
                buf == model.read(*offset, *len),
                "{what}: not the bytes written"
            ),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{what}"),
            _ => panic!("{what}: together {outcome:?}, alone {single:?}"),
        }
    }
    outcomes
}

#[test]
fn reads_taken_together_answer_each_as_alone_with_the_same_tallies() {
    each_layout(7100, "read_many", |layout, devices, rng, seed| {
        let lost = 200;
        let (together, _, model, lost_blocks) = damaged_pool(layout, devices, seed, lost);
        let (alone, _, _, _) = damaged_pool(layout, devices, seed, lost);
        let size = together.size();
        let blocks = size / BLOCK;
        // The reads, as (offset, length): 4 KiB reads mostly over the damaged blocks (rows
        // shared between reads, blocks read twice), larger ones, one over the lost row, one
        // beyond the end, one off block boundaries, an empty one.
        let mut reads: Vec<(u64, usize)> = (0..48)
            .map(|_| (rng.gen_range(0..80) * BLOCK, BLOCK as usize))
            .collect();
        reads.extend((0..8).map(|_| (rng.gen_range(0..blocks - 4) * BLOCK, 16 << 10)));
        reads.push((lost * BLOCK, BLOCK as usize));
        reads.push(((lost - 1) * BLOCK, 3 * BLOCK as usize));
        reads.push((size, BLOCK as usize));
        reads.push((size - BLOCK, 2 * BLOCK as usize));
        reads.push((3 * BLOCK + 100, 5000));
        reads.push((0, 0));
        reads.shuffle(rng);
        let outcomes = compare(layout, &together, &alone, &model, &reads);
        for ((offset, len), outcome) in reads.iter().zip(&outcomes) {
            let what = format!("{layout}: read of {len} bytes at {offset}");
            let touches_lost = (*offset / BLOCK..(*offset + *len as u64).div_ceil(BLOCK))
                .any(|key| lost_blocks.contains(&key));
            let beyond = *offset + *len as u64 > size;
            match outcome {
                Ok(()) => assert!(!touches_lost && !beyond, "{what}: returned"),
                Err(error) => {
                    assert_eq!(
                        matches!(error, Error::OutOfRange { .. }),
                        beyond,
                        "{what}: {error}"
                    );
                    assert_eq!(
                        matches!(error, Error::UnrecoverableBlock { .. }),
                        touches_lost && !beyond,
                        "{what}: {error}"
                    );
                }
            }
        }
        assert!(
            together.volume_counters().unwrap().reads_together > 0,
            "{layout}: no read was served together"
        );
        let found = tallies(&together);
        assert_eq!(found, tallies(&alone), "{layout}: tallies");
        assert!(found.1.unrecoverable_blocks > 0, "{layout}: {found:?}");
        let checksum: u64 = found.0.iter().map(|t| t.1).sum();
        let repaired: u64 = found.0.iter().map(|t| t.2).sum();
        assert!(
            checksum > 0 && repaired > 0,
            "{layout}: nothing found: {found:?}"
        );
        // What was healed reads clean: the same reads again find nothing new on either pool.
        for pool in [&together, &alone] {
            for key in 0..80 {
                let mut buf = vec![0u8; BLOCK as usize];
                pool.read_at(key * BLOCK, &mut buf).unwrap();
                assert!(
                    buf == model.read(key * BLOCK, BLOCK as usize),
                    "{layout}: block {key}"
                );
            }
        }
        assert_eq!(
            tallies(&together),
            tallies(&alone),
            "{layout}: tallies after"
        );
    });
}

/// `pool` (closed) reopened on its members behind fault plans, without the members `absent`
/// (the pool opens degraded).
fn behind_faults(
    pool: Pool,
    mems: &[Arc<MemDevice>],
    absent: &[usize],
) -> (Pool, Vec<Arc<parking_lot::Mutex<FaultPlan>>>) {
    drop(pool);
    let mut plans = Vec::new();
    let mut devices: Vec<SharedDevice> = Vec::new();
    for (i, mem) in mems.iter().enumerate() {
        let (device, plan) = FaultyDevice::new(Arc::clone(mem) as SharedDevice, i as u64);
        plans.push(plan);
        if !absent.contains(&i) {
            devices.push(Arc::new(device));
        }
    }
    let open = stripestore::OpenOptions {
        background_rebuild: false,
        auto_replace: false,
        // The members left out are not there to prove the others current: the test knows.
        force: !absent.is_empty(),
        ..v4_open_options()
    };
    (Pool::open(devices, &open).unwrap(), plans)
}

/// Two blocks whose shard-blocks lie side by side on a member that is not in `absent` (a
/// batch would read both in one request): (block, other block, member, byte offset of the
/// first).
fn side_by_side(
    pool: &Pool,
    mems: &[Arc<MemDevice>],
    model: &Model,
    from: u64,
    absent: &[usize],
) -> (u64, u64, usize, u64) {
    let own = |key: u64, device: usize, offset: u64| {
        mems[device].peek(offset, BLOCK as usize) == model.read(key * BLOCK, BLOCK as usize)
    };
    let blocks = pool.size() / BLOCK;
    (from..blocks)
        .find_map(|key| {
            pool.block_locations(key * BLOCK).iter().find_map(|p| {
                if absent.contains(&p.device)
                    || p.data_chunk.is_none()
                    || !own(key, p.device, p.offset)
                {
                    return None;
                }
                (key + 1..(key + 9).min(blocks)).find_map(|other| {
                    pool.block_locations(other * BLOCK)
                        .iter()
                        .any(|q| {
                            q.device == p.device
                                && q.offset == p.offset + BLOCK
                                && own(other, q.device, q.offset)
                        })
                        .then_some((key, other, p.device, p.offset))
                })
            })
        })
        .expect("two blocks side by side on a member")
}

/// Members absent beyond what the damaged blocks' rows can spare, and a bad sector under one
/// block: that block's read fails, its neighbour on the device (read in the same batch, and
/// merged into one request by a batch that merged across reads) is returned, and the
/// tallies are those of the reads one by one.
#[test]
fn a_read_error_under_one_read_costs_only_that_read() {
    let seed = seed(7110);
    let _guard = stripestore::testing::SeedGuard {
        seed,
        name: "read_many_io_error",
    };
    for (layout, devices, absent) in [("mirror:2", 2, vec![1usize]), ("rs:4+2", 6, vec![4, 5])] {
        let (pool, mems, model, _) = damaged_pool(layout, devices, seed, 66);
        let (key, other, device, offset) = side_by_side(&pool, &mems, &model, 80, &absent);
        let (together, plans) = behind_faults(pool, &mems, &absent);
        let (alone, alone_plans) = {
            let (pool, mems, _, _) = damaged_pool(layout, devices, seed, 66);
            behind_faults(pool, &mems, &absent)
        };
        for plans in [&plans, &alone_plans] {
            plans[device]
                .lock()
                .add_bad_read_range(offset..offset + BLOCK);
        }
        let reads = [
            (key * BLOCK, BLOCK as usize),
            (other * BLOCK, BLOCK as usize),
            ((key + 40) * BLOCK, BLOCK as usize),
        ];
        let ok: Vec<bool> = compare(layout, &together, &alone, &model, &reads)
            .iter()
            .map(Result::is_ok)
            .collect();
        assert_eq!(
            ok,
            vec![false, true, true],
            "{layout}: block {key} on member {device} at {offset}"
        );
        assert!(
            together.volume_counters().unwrap().reads_together >= 2,
            "{layout}"
        );
        assert_eq!(tallies(&together), tallies(&alone), "{layout}: tallies");
        assert!(
            tallies(&together).0[device].0 > 0,
            "{layout}: the read error is counted"
        );
    }
}

/// A TCP stream whose writes wait until it is read from: requests sent one by one reach the
/// server in one piece, so it finds them received together.
struct Corked {
    stream: std::net::TcpStream,
    pending: Vec<u8>,
}

impl Read for Corked {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.pending.is_empty() {
            self.stream.write_all(&self.pending)?;
            self.pending.clear();
        }
        self.stream.read(buf)
    }
}

impl Write for Corked {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn pipelined_reads_over_nbd_are_answered_each_with_its_own_data_or_error() {
    let seed = seed(7120);
    let _guard = stripestore::testing::SeedGuard {
        seed,
        name: "read_many_nbd",
    };
    let mut rng = rng(seed);
    for (layout, devices) in [("rs:4+2", 6), ("mirror:2", 2)] {
        let lost = 300;
        let (pool, _mems, model, lost_blocks) = damaged_pool(layout, devices, seed, lost);
        let pool = Arc::new(pool);
        let server = BackgroundServer::start(Arc::clone(&pool), ServeOptions::default()).unwrap();
        let stream = std::net::TcpStream::connect(server.addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        let mut client = Client::connect(
            Corked {
                stream,
                pending: Vec::new(),
            },
            "",
        )
        .unwrap();
        let blocks = pool.size() / BLOCK;
        for round in 0..8 {
            // 40 reads in one piece: more than one batch of 16, some of the lost row, some
            // of blocks to heal, some 64 KiB and one larger (served on its own).
            let mut sent = std::collections::HashMap::new();
            for i in 0..40u64 {
                let (key, len) = match (i + round) % 10 {
                    0 => (lost, BLOCK as u32),
                    1 => (rng.gen_range(0..blocks - 16), 64 << 10),
                    2 if i == 2 => (rng.gen_range(0..blocks - 64), 256 << 10),
                    3 | 4 => (rng.gen_range(0..64), BLOCK as u32),
                    _ => (rng.gen_range(0..blocks), BLOCK as u32),
                };
                let cookie = client.send(cmd::READ, 0, key * BLOCK, len, &[]).unwrap();
                sent.insert(cookie, (key, len));
            }
            for _ in 0..sent.len() {
                let reply = client.receive().unwrap();
                let (key, len) = sent.remove(&reply.cookie).expect("a reply per cookie");
                let offset = key * BLOCK;
                let touches_lost = (key..(offset + u64::from(len)).div_ceil(BLOCK))
                    .any(|k| lost_blocks.contains(&k));
                if touches_lost {
                    assert_eq!(
                        reply.errno,
                        errno::EIO,
                        "{layout}: read of lost block {key}"
                    );
                    assert!(reply.data.is_empty(), "{layout}: data with an error");
                } else {
                    assert_eq!(reply.errno, 0, "{layout}: read at block {key}");
                    assert!(
                        reply.data == model.read(offset, len as usize),
                        "{layout}: wrong data for the read at block {key} ({len} bytes)"
                    );
                }
            }
        }
        drop(client);
        server.stop().unwrap();
        assert!(
            pool.volume_counters().unwrap().reads_together > 0,
            "{layout}: the server took no reads together"
        );
    }
}
