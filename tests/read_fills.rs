//! A read writes every byte it returns: `Pool::read_at`, `Pool::read_many` and
//! `Pool::read_recovery_point` into buffers full of junk give the model's bytes exactly, over
//! written data, blocks never written, discarded ranges and ranges off block boundaries, on
//! format versions 4 and 3. The NBD server and the pool's run buffers rely on it: they reuse
//! their buffers for the next request without zeroing them first, so a read that left a byte
//! untouched would send the previous request's bytes. Over NBD, a connection whose threads
//! have just served data then serves holes of the same size: zeros, never the data again.

use rand::Rng;
use std::sync::Arc;
use stripestore::nbd::client::Client;
use stripestore::nbd::ServeOptions;
use stripestore::pool::FormatVersion;
use stripestore::testing::nbd::BackgroundServer;
use stripestore::testing::{mem_devices, random_bytes, rng, seed, shared, small_v4, Model};
use stripestore::{CreateOptions, Pool};

const BLOCK: u64 = 4096;
const JUNK: u8 = 0xA5;

/// A pool on memory devices (`format`: 4 with small parameters, or 3), with the model of its
/// volume: random writes over the first part, discards inside some of them, the rest never
/// written.
fn written_pool(layout: &str, members: usize, v3: bool, seed: u64) -> (Pool, Model) {
    let mut options = CreateOptions::new(layout.parse().unwrap());
    options.chunk_bytes = 16 << 10;
    options.open.background_rebuild = false;
    if v3 {
        stripestore::testing::allow_format_3_writes(true);
        options.format = FormatVersion::V3;
    } else {
        options.format = FormatVersion::V4(small_v4());
    }
    let pool = Pool::create(shared(&mem_devices(members, 16 << 20)), vec![], &options).unwrap();
    let mut model = Model::new(pool.size());
    let mut rng = rng(seed);
    let span = pool.size() / 2;
    for _ in 0..40 {
        let offset = rng.gen_range(0..span - (256 << 10));
        let len = rng.gen_range(1..(256 << 10));
        let data = random_bytes(&mut rng, len);
        pool.write_at(offset, &data).unwrap();
        model.write(offset, &data);
    }
    for _ in 0..8 {
        let first = rng.gen_range(0..span / BLOCK - 64);
        let blocks = rng.gen_range(1..64);
        pool.discard(first * BLOCK, blocks * BLOCK).unwrap();
        model.write(first * BLOCK, &vec![0; (blocks * BLOCK) as usize]);
    }
    (pool, model)
}

/// Random ranges over the whole volume (written, discarded and never written), some whole
/// blocks, some not.
fn ranges(size: u64, seed: u64, count: usize) -> Vec<(u64, usize)> {
    let mut rng = rng(seed);
    (0..count)
        .map(|i| {
            let len = rng.gen_range(1..(192usize << 10));
            let offset = rng.gen_range(0..size - len as u64);
            if i % 2 == 0 {
                // Whole blocks.
                let first = offset / BLOCK;
                let blocks = (len as u64).div_ceil(BLOCK).min(size / BLOCK - first);
                (first * BLOCK, (blocks * BLOCK) as usize)
            } else {
                (offset, len)
            }
        })
        .collect()
}

fn check_reads(pool: &Pool, model: &Model, seed: u64, what: &str) {
    for (offset, len) in ranges(pool.size(), seed, 60) {
        let mut buf = vec![JUNK; len];
        pool.read_at(offset, &mut buf).unwrap();
        assert!(
            buf == model.read(offset, len),
            "{what}: read_at({offset}, {len}) differs from the model"
        );
    }
    let wanted = ranges(pool.size(), seed + 1, 12);
    let mut buffers: Vec<Vec<u8>> = wanted.iter().map(|(_, len)| vec![JUNK; *len]).collect();
    let mut reads: Vec<(u64, &mut [u8])> = wanted
        .iter()
        .zip(buffers.iter_mut())
        .map(|((offset, _), buf)| (*offset, &mut buf[..]))
        .collect();
    for outcome in pool.read_many(&mut reads) {
        outcome.unwrap();
    }
    for ((offset, len), buf) in wanted.iter().zip(&buffers) {
        assert!(
            buf[..] == *model.read(*offset, *len),
            "{what}: read_many at {offset}, {len} bytes differs from the model"
        );
    }
}

#[test]
fn every_read_writes_every_byte_it_returns_on_format_4() {
    let seed = seed(0x5EAD_F111);
    for (layout, members) in [("mirror:2", 2), ("rs:4+2", 6)] {
        let (pool, mut model) = written_pool(layout, members, false, seed);
        check_reads(&pool, &model, seed + 10, layout);
        // A recovery point, then the live volume changed: both read exactly.
        pool.create_recovery_point("before").unwrap();
        let point = model.clone();
        let mut rng = rng(seed + 20);
        for _ in 0..10 {
            let offset = rng.gen_range(0..pool.size() - (64 << 10));
            let len = rng.gen_range(1..(64 << 10));
            let data = random_bytes(&mut rng, len);
            pool.write_at(offset, &data).unwrap();
            model.write(offset, &data);
        }
        check_reads(&pool, &model, seed + 30, layout);
        for (offset, len) in ranges(pool.size(), seed + 40, 40) {
            let mut buf = vec![JUNK; len];
            pool.read_recovery_point("before", offset, &mut buf)
                .unwrap();
            assert!(
                buf == point.read(offset, len),
                "{layout}: recovery point read at {offset}, {len} bytes differs"
            );
        }
    }
}

#[test]
fn every_read_writes_every_byte_it_returns_on_format_3() {
    let seed = seed(0x5EAD_F333);
    for (layout, members) in [("mirror:2", 2), ("rs:4+2", 6)] {
        let (pool, model) = written_pool(layout, members, true, seed);
        check_reads(&pool, &model, seed + 10, layout);
    }
}

/// Over NBD, reads of data then of holes of the same size (1 MiB, served alone, and 64 KiB,
/// taken together), pipelined so that several of the connection's threads serve each kind:
/// every hole reads as zeros.
#[test]
fn a_served_hole_never_returns_an_earlier_reads_bytes() {
    let seed = seed(0x5EAD_F444);
    let mut options = CreateOptions::new("mirror:2".parse().unwrap());
    options.open.background_rebuild = false;
    options.format = FormatVersion::V4(small_v4());
    let pool = Arc::new(Pool::create(shared(&mem_devices(2, 24 << 20)), vec![], &options).unwrap());
    // The first 8 MiB written, the rest never.
    let data = random_bytes(&mut rng(seed), 8 << 20);
    pool.write_at(0, &data).unwrap();
    let server = BackgroundServer::start(Arc::clone(&pool), ServeOptions::default()).unwrap();
    let stream = std::net::TcpStream::connect(server.addr).unwrap();
    let mut client = Client::connect(stream, "").unwrap();
    // 1 MiB reads (each served alone) and 64 KiB ones (taken together, one reply buffer for
    // all the reads a thread takes).
    for (round, read) in [
        (0u64, 1u32 << 20),
        (1, 1 << 20),
        (2, 64 << 10),
        (3, 64 << 10),
    ] {
        let count = (8u64 << 20) / u64::from(read);
        // Eight reads of data in flight, then eight of holes.
        for kind in [0u64, 1] {
            let offsets: std::collections::HashMap<u64, u64> = (0..8u64)
                .map(|i| {
                    let at = (i * count / 8 + round) % count;
                    let offset = kind * (8 << 20) + at * u64::from(read);
                    let cookie = client
                        .send(stripestore::nbd::proto::cmd::READ, 0, offset, read, &[])
                        .unwrap();
                    (cookie, offset)
                })
                .collect();
            for _ in 0..offsets.len() {
                let reply = client.receive().unwrap();
                assert_eq!(reply.errno, 0, "round {round}: a read failed");
                let bytes = reply.data;
                let offset = offsets[&reply.cookie];
                let zeros = vec![0u8; read as usize];
                let expected: &[u8] = if kind == 0 {
                    &data[offset as usize..offset as usize + read as usize]
                } else {
                    &zeros
                };
                assert!(
                    bytes == expected,
                    "round {round}: the read at {offset} is not what the volume holds"
                );
            }
        }
    }
}

/// `outcome` is the loss of a block whose every copy (or shard) holds `marker`, and no block of
/// the failed read's buffer `buf` holds the marker.
fn assert_lost_and_cleared(outcome: &stripestore::Result<()>, buf: &[u8], marker: u8, what: &str) {
    assert!(
        matches!(outcome, Err(stripestore::Error::UnrecoverableBlock { .. })),
        "{what}: a block with every copy or shard overwritten is lost, got {outcome:?}"
    );
    for (i, block) in buf.chunks(BLOCK as usize).enumerate() {
        assert!(
            !block.iter().all(|b| *b == marker),
            "{what}: block {i} of a failed read holds bytes that did not verify"
        );
    }
}

/// A read that fails returns no bytes that did not verify. The pool reads runs of blocks
/// straight into the caller's buffer when they are consecutive blocks of it (no run buffer, no
/// copy), so a block that fails its check sits there until it is recovered; when nothing can
/// recover it, the read fails and the block's place holds no byte of what was read (here:
/// every copy, or every shard of the row, overwritten with a marker).
#[test]
fn a_read_that_fails_leaves_no_unverified_bytes_in_its_buffer() {
    const MARKER: u8 = 0x3C;
    let seed = seed(0xBAD_B10C);
    for (layout, members) in [("mirror:2", 2), ("rs:4+2", 6)] {
        let mut options = CreateOptions::new(layout.parse().unwrap());
        options.chunk_bytes = 16 << 10;
        options.open.background_rebuild = false;
        options.format = FormatVersion::V4(small_v4());
        let mems = mem_devices(members, 16 << 20);
        let pool = Pool::create(shared(&mems), vec![], &options).unwrap();
        let data = random_bytes(&mut rng(seed), 1 << 20);
        pool.write_at(0, &data).unwrap();
        pool.flush().unwrap();
        let bad = 100 * BLOCK;
        let places = pool.block_locations(bad);
        assert!(!places.is_empty(), "{layout}: block 100 is written");
        for place in &places {
            mems[place.device].poke(place.offset, &[MARKER; BLOCK as usize]);
        }
        // Sixteen blocks around it, into a buffer of junk: the read fails, naming the block.
        let start = bad - 4 * BLOCK;
        let mut buf = vec![JUNK; 16 * BLOCK as usize];
        let outcome = pool.read_at(start, &mut buf);
        assert_lost_and_cleared(&outcome, &buf, MARKER, layout);
        // The other blocks still read exactly, alone.
        let mut head = vec![JUNK; 4 * BLOCK as usize];
        pool.read_at(start, &mut head).unwrap();
        assert!(head[..] == data[start as usize..bad as usize], "{layout}");
    }
}

/// The same on files opened with `O_DIRECT` (io_uring), where a run is read in place only into
/// 4 KiB aligned memory: a bad copy under an aligned and an unaligned buffer is recovered over
/// itself (its other copy), and a block lost on both copies fails the read with no byte of it in
/// the buffer.
#[test]
fn reads_in_place_on_direct_members_recover_or_clear_a_bad_block() {
    use std::os::unix::fs::FileExt;
    use stripestore::device::{open_device, AlignedBuf, SharedDevice};
    const MARKER: u8 = 0x3C;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let paths: Vec<_> = (0..2).map(|i| dir.path().join(format!("d{i}"))).collect();
    let devices: Vec<SharedDevice> = paths
        .iter()
        .map(|p| open_device(p, Some(16 << 20)).unwrap())
        .collect();
    println!(
        "backend {}, wants aligned memory: {}",
        devices[0].io_backend(),
        devices[0].wants_aligned_memory()
    );
    let mut options = CreateOptions::new("mirror:2".parse().unwrap());
    options.open.background_rebuild = false;
    options.format = FormatVersion::V4(small_v4());
    let pool = Pool::create(devices, vec![], &options).unwrap();
    let data = random_bytes(&mut rng(seed(0xD1_2EC7)), 1 << 20);
    pool.write_at(0, &data).unwrap();
    pool.flush().unwrap();
    let poke = |key: u64, copies: &[usize]| {
        let places = pool.block_locations(key * BLOCK);
        assert_eq!(places.len(), 2, "block {key} has two copies");
        for place in places.iter().filter(|p| copies.contains(&p.device)) {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&paths[place.device])
                .unwrap();
            file.write_all_at(&[MARKER; BLOCK as usize], place.offset)
                .unwrap();
            file.sync_all().unwrap();
        }
    };
    // One block bad on each copy: whichever copy a read takes first, one of them is bad there.
    poke(100, &[0]);
    poke(101, &[1]);
    let mut aligned = AlignedBuf::zeroed(64 * BLOCK as usize);
    aligned.fill(JUNK);
    pool.read_at(64 * BLOCK, &mut aligned).unwrap();
    assert!(
        aligned[..] == data[64 * BLOCK as usize..128 * BLOCK as usize],
        "aligned read over bad copies differs"
    );
    poke(110, &[0]);
    poke(111, &[1]);
    let mut unaligned = vec![JUNK; 64 * BLOCK as usize + 1];
    pool.read_at(64 * BLOCK, &mut unaligned[1..]).unwrap();
    assert!(
        unaligned[1..] == data[64 * BLOCK as usize..128 * BLOCK as usize],
        "unaligned read over bad copies differs"
    );
    // Both copies bad: the read fails and leaves nothing of them.
    poke(200, &[0, 1]);
    let mut buf = AlignedBuf::zeroed(16 * BLOCK as usize);
    buf.fill(JUNK);
    let outcome = pool.read_at(196 * BLOCK, &mut buf);
    assert_lost_and_cleared(&outcome, &buf, MARKER, "mirror:2 on O_DIRECT files");
}
