//! Diff, send and receive through the pool (docs/FORMAT.md V4.10d): the diff names exactly
//! the ranges a model says changed; full and incremental streams round trip byte-exact into
//! pools of other layouts and chain; and every bad stream or precondition is refused with
//! every member's bytes unchanged.

use crate::common;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use stripestore::device::MemDevice;
use stripestore::pool::{ChangedRange, ReceiveReport};
use stripestore::testing::{mem_devices, shared};
use stripestore::{Error, Pool};

use common::{v4_open_options as open_options, v4_options};

const B: usize = 4096;

/// Block `key` at `version` (0: zeros).
fn block(key: u64, version: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; B];
    if version == 0 {
        return bytes;
    }
    for (i, chunk) in bytes.chunks_mut(16).enumerate() {
        chunk[..8].copy_from_slice(&key.to_le_bytes());
        chunk[8..].copy_from_slice(&(version.wrapping_mul(0x9e37) ^ i as u64).to_le_bytes());
    }
    bytes
}

/// The live volume's model: the version each written block holds (absent or 0: zeros).
type Model = BTreeMap<u64, u64>;

struct Source {
    pool: Pool,
    live: Model,
    points: BTreeMap<String, Model>,
    version: u64,
}

impl Source {
    fn new(layout: &str, members: usize, bytes: u64) -> (Self, Vec<Arc<MemDevice>>) {
        let mems = mem_devices(members, bytes);
        let pool = Pool::create(shared(&mems), vec![], &v4_options(layout)).unwrap();
        (
            Self {
                pool,
                live: Model::new(),
                points: BTreeMap::new(),
                version: 0,
            },
            mems,
        )
    }

    fn write(&mut self, keys: impl IntoIterator<Item = u64>) {
        for key in keys {
            self.version += 1;
            self.pool
                .write_at(key * B as u64, &block(key, self.version))
                .unwrap();
            self.live.insert(key, self.version);
        }
        self.pool.flush().unwrap();
    }

    /// Write block `key` again with the bytes it holds (a new pointer, the same content).
    fn rewrite_same(&mut self, key: u64) {
        let version = self.live.get(&key).copied().unwrap_or(0);
        self.pool
            .write_at(key * B as u64, &block(key, version))
            .unwrap();
        self.pool.flush().unwrap();
    }

    fn discard(&mut self, first: u64, count: u64) {
        self.pool
            .discard(first * B as u64, count * B as u64)
            .unwrap();
        for key in first..first + count {
            self.live.insert(key, 0);
        }
        self.pool.flush().unwrap();
    }

    fn point(&mut self, name: &str) {
        self.pool.create_recovery_point(name).unwrap();
        self.points.insert(name.to_string(), self.live.clone());
    }

    fn send(&self, to: &str, from: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        let report = self.pool.send(to, from, &mut out, &mut |_| {}).unwrap();
        assert_eq!(report.stream_bytes, out.len() as u64);
        out
    }
}

fn version(model: &Model, key: u64) -> u64 {
    model.get(&key).copied().unwrap_or(0)
}

/// Every block of `0..blocks` of `read` is as `model` says.
fn exact(
    model: &Model,
    blocks: u64,
    read: &dyn Fn(u64, &mut [u8]) -> stripestore::Result<()>,
) -> Result<(), String> {
    let mut all = vec![0u8; blocks as usize * B];
    read(0, &mut all).map_err(|e| e.to_string())?;
    for key in 0..blocks {
        let at = key as usize * B;
        if all[at..at + B] != block(key, version(model, key))[..] {
            return Err(format!(
                "block {key} does not read version {}",
                version(model, key)
            ));
        }
    }
    Ok(())
}

fn receive(pool: &Pool, stream: &[u8]) -> stripestore::Result<ReceiveReport> {
    pool.receive(&mut Cursor::new(stream.to_vec()), &mut |_, _| {})
}

fn diff(pool: &Pool, from: Option<&str>, to: &str) -> Vec<ChangedRange> {
    let mut ranges = Vec::new();
    pool.diff_recovery_points(from, to, &mut |r| {
        ranges.push(r);
        Ok(())
    })
    .unwrap();
    ranges
}

/// The blocks the ranges cover, with whether each reads zeros.
fn blocks_of(ranges: &[ChangedRange]) -> BTreeMap<u64, bool> {
    let mut out = BTreeMap::new();
    let mut end = 0;
    for r in ranges {
        assert!(
            r.offset >= end,
            "ranges out of order or overlapping: {ranges:?}"
        );
        assert!(r.length > 0 && r.offset % B as u64 == 0 && r.length % B as u64 == 0);
        end = r.offset + r.length;
        for key in r.offset / B as u64..end / B as u64 {
            out.insert(key, r.zeros);
        }
    }
    out
}

#[test]
fn a_diff_names_exactly_the_blocks_written_or_trimmed_between_two_recovery_points() {
    for (layout, members) in [("rs:4+2", 6), ("mirror:2", 2)] {
        let (mut src, _mems) = Source::new(layout, members, 16 << 20);
        src.write(0..300);
        src.point("a");
        // Touched after "a": overwrites, a rewrite of the same bytes, a trim, new blocks, and
        // a trim of blocks never written (no change).
        let mut touched: BTreeMap<u64, bool> = BTreeMap::new();
        src.write((0..300).step_by(7));
        for key in (0..300).step_by(7) {
            touched.insert(key, false);
        }
        src.rewrite_same(100);
        touched.insert(100, false);
        src.discard(200, 5);
        for key in 200..205 {
            touched.insert(key, true);
        }
        src.write(400..420);
        for key in 400..420 {
            touched.insert(key, false);
        }
        src.discard(600, 4);
        src.point("b");
        assert_eq!(
            blocks_of(&diff(&src.pool, Some("a"), "b")),
            touched,
            "{layout}"
        );
        // The other way: the same blocks; zeros where "a" had none.
        let back = blocks_of(&diff(&src.pool, Some("b"), "a"));
        assert_eq!(
            back.keys().collect::<Vec<_>>(),
            touched.keys().collect::<Vec<_>>()
        );
        assert!(
            back.iter().all(|(k, z)| *z == (*k >= 400)),
            "{layout}: {back:?}"
        );
        // From nothing: every written block of "b", and no zeros.
        let full = blocks_of(&diff(&src.pool, None, "b"));
        let written: BTreeMap<u64, bool> = src.points["b"]
            .iter()
            .filter(|(_, v)| **v != 0)
            .map(|(k, _)| (*k, false))
            .collect();
        assert_eq!(full, written, "{layout}");
        // A recovery point against itself: nothing.
        assert!(diff(&src.pool, Some("b"), "b").is_empty());
        assert!(matches!(
            src.pool
                .diff_recovery_points(Some("nope"), "b", &mut |_| Ok(())),
            Err(Error::RecoveryPoint { .. })
        ));
    }
}

#[test]
fn full_and_incremental_streams_round_trip_into_other_layouts_and_chain() {
    let (mut src, _mems) = Source::new("rs:4+2", 6, 16 << 20);
    let blocks = src.pool.size() / B as u64;
    src.write(0..500);
    src.discard(50, 10);
    src.point("a");
    src.write((0..900).step_by(5));
    src.discard(300, 40);
    src.rewrite_same(1);
    src.point("b");
    src.write(800..1000);
    src.point("c");
    src.write(0..10);
    for (layout, members, bytes) in [("mirror:2", 2, 96 << 20), ("raid10:2", 4, 48 << 20)] {
        let mems = mem_devices(members, bytes);
        let target = Pool::create(shared(&mems), vec![], &v4_options(layout)).unwrap();
        assert!(target.size() >= src.pool.size(), "{layout}");
        let gate = |mems: &[Arc<MemDevice>]| {
            shared(mems).iter().all(|d| {
                let label = stripestore::pool::read_label(d.as_ref()).unwrap().unwrap();
                label.map.unwrap().received_streams
            })
        };
        assert!(!gate(&mems), "{layout}: the receive gate before any");
        let full = receive(&target, &src.send("a", None)).unwrap();
        assert!(gate(&mems), "{layout}: the receive gate on every member");
        assert_eq!(
            (full.name.as_str(), full.base_guid, full.resumed),
            ("a", 0, false)
        );
        exact(&src.points["a"], blocks, &|o, b| target.read_at(o, b))
            .unwrap_or_else(|e| panic!("{layout} after a: {e}"));
        let ab = receive(&target, &src.send("b", Some("a"))).unwrap();
        assert!(ab.zero_bytes >= 40 * B as u64, "{layout}: {ab:?}");
        exact(&src.points["b"], blocks, &|o, b| target.read_at(o, b))
            .unwrap_or_else(|e| panic!("{layout} after b: {e}"));
        receive(&target, &src.send("c", Some("b"))).unwrap();
        exact(&src.points["c"], blocks, &|o, b| target.read_at(o, b))
            .unwrap_or_else(|e| panic!("{layout} after c: {e}"));
        // Every received recovery point reads as the sender's, with its guid and time.
        let mine = src.pool.recovery_points().unwrap();
        let theirs = target.recovery_points().unwrap();
        assert_eq!(theirs.len(), 3);
        for (m, t) in mine.iter().zip(&theirs) {
            assert_eq!((&m.name, m.guid, m.created), (&t.name, t.guid, t.created));
            exact(&src.points[&t.name], blocks, &|o, b| {
                target.read_recovery_point(&t.name, o, b)
            })
            .unwrap_or_else(|e| panic!("{layout} {}: {e}", t.name));
        }
        let scrub = common::check_only_scrub(&target);
        assert_eq!(
            (scrub.bad_shards, scrub.unrepairable_stripes),
            (0, 0),
            "{layout}"
        );
        // And back: the target sends "c" whole, into a pool of the first layout.
        let mems = mem_devices(6, 32 << 20);
        let again = Pool::create(shared(&mems), vec![], &v4_options("rs:4+2")).unwrap();
        let mut out = Vec::new();
        target.send("c", None, &mut out, &mut |_| {}).unwrap();
        receive(&again, &out).unwrap();
        exact(&src.points["c"], blocks, &|o, b| again.read_at(o, b))
            .unwrap_or_else(|e| panic!("{layout} back: {e}"));
    }
}

fn images(mems: &[Arc<MemDevice>]) -> Vec<Vec<u8>> {
    mems.iter().map(|m| m.image()).collect()
}

#[test]
fn bad_streams_and_unmet_preconditions_are_refused_with_nothing_written() {
    let (mut src, _mems) = Source::new("mirror:2", 2, 16 << 20);
    src.write(0..64);
    src.point("a");
    src.write(10..30);
    src.discard(40, 4);
    src.point("b");
    src.write(100..110);
    src.point("c");
    let mems = mem_devices(2, 16 << 20);
    let target = Pool::create(shared(&mems), vec![], &v4_options("mirror:2")).unwrap();
    receive(&target, &src.send("a", None)).unwrap();
    let good = src.send("b", Some("a"));
    let before = images(&mems);
    // Compared after all of them (an image is the whole device); each one is refused.
    let refused = |stream: &[u8], what: &str| match receive(&target, stream) {
        Ok(r) => panic!("{what}: received {r:?}"),
        Err(e) => e,
    };
    // Every byte of the header and the first record's head, and every 61st byte after.
    let head_end = 512 + 48;
    for at in (0..head_end).chain((head_end..good.len()).step_by(61)) {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        refused(&bad, &format!("flip at {at}"));
    }
    for len in [
        0,
        100,
        511,
        512,
        530,
        560,
        good.len() / 2,
        good.len() - 48,
        good.len() - 1,
    ] {
        let e = refused(&good[..len], &format!("cut at {len}"));
        assert!(matches!(e, Error::Stream { .. }), "cut at {len}: {e}");
    }
    // A stream for another base, a full stream into a pool with data, the same twice.
    let e = refused(&src.send("c", Some("b")), "base b");
    assert!(e.to_string().contains("lacks"), "{e}");
    let e = refused(&src.send("b", None), "full into data");
    assert!(e.to_string().contains("full stream"), "{e}");
    assert!(images(&mems) == before, "a refusal wrote");
    receive(&target, &good).unwrap();
    let before = images(&mems);
    let e = receive(&target, &good).unwrap_err();
    assert!(e.to_string().contains("already has"), "{e}");
    // A target changed since the base is refused, and told to roll back.
    target.write_at(0, &[7u8; B]).unwrap();
    target.flush().unwrap();
    let changed = images(&mems);
    assert!(changed != before);
    let e = receive(&target, &src.send("c", Some("b"))).unwrap_err();
    assert!(e.to_string().contains("roll back"), "{e}");
    assert!(images(&mems) == changed, "a refusal wrote");
    // A target too small for the volume.
    let small = mem_devices(2, 8 << 20);
    let tiny = Pool::create(shared(&small), vec![], &v4_options("mirror:2")).unwrap();
    let before = images(&small);
    let e = receive(&tiny, &src.send("a", None)).unwrap_err();
    assert!(matches!(e, Error::Stream { .. }), "{e}");
    assert!(images(&small) == before);
}

#[test]
fn a_receive_stopped_by_a_bad_record_found_late_leaves_the_volume_as_it_was_until_resumed_or_aborted(
) {
    let (mut src, _mems) = Source::new("rs:4+2", 6, 16 << 20);
    let blocks = src.pool.size() / B as u64;
    src.write(0..300);
    src.point("a");
    src.write((0..600).step_by(3));
    src.point("b");
    let mems = mem_devices(2, 96 << 20);
    let target = Pool::create(shared(&mems), vec![], &v4_options("mirror:2")).unwrap();
    receive(&target, &src.send("a", None)).unwrap();
    let good = src.send("b", Some("a"));
    // A stream that passes the check and goes bad before the apply reads its middle: the
    // reader changes its bytes after the first pass.
    let mut stream = FlipOnSecondPass {
        bytes: good.clone(),
        at: good.len() / 2,
        pos: 0,
        passes: 0,
    };
    let e = target.receive(&mut stream, &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, Error::Stream { .. }), "{e}");
    let unfinished = target.unfinished_receive().unwrap();
    assert_eq!(unfinished.name, "b");
    // Status says so, in its fields and its text.
    let status = target.status();
    assert_eq!(
        status
            .recovery_points
            .as_ref()
            .unwrap()
            .unfinished_receive
            .as_deref(),
        Some("b")
    );
    assert!(status
        .to_string()
        .contains("receive of recovery point b is unfinished"));
    // The volume reads as it was; writes and recovery-point changes are refused.
    exact(&src.points["a"], blocks, &|o, b| target.read_at(o, b)).unwrap();
    assert!(matches!(
        target.write_at(0, &[1u8; B]),
        Err(Error::ReceiveUnfinished { .. })
    ));
    assert!(matches!(
        target.create_recovery_point("x"),
        Err(Error::ReceiveUnfinished { .. })
    ));
    // Reopened (read-only too), the same.
    drop(target);
    let read_only = stripestore::OpenOptions {
        read_only: true,
        ..open_options()
    };
    let before = images(&mems);
    let target = Pool::open(shared(&mems), &read_only).unwrap();
    exact(&src.points["a"], blocks, &|o, b| target.read_at(o, b)).unwrap();
    drop(target);
    assert!(images(&mems) == before, "a read-only open wrote");
    let target = Pool::open(shared(&mems), &open_options()).unwrap();
    assert!(target.unfinished_receive().is_some());
    // Resumed with the same stream: it finishes, and reads as "b".
    let report = receive(&target, &good).unwrap();
    assert!(report.resumed);
    exact(&src.points["b"], blocks, &|o, b| target.read_at(o, b)).unwrap();
    assert!(target.unfinished_receive().is_none());
    // Stopped again on the next stream, then aborted: as it was, and the space back.
    src.write(0..700);
    src.point("c");
    let bc = src.send("c", Some("b"));
    let allocated_before = allocated(&target);
    let mut stream = FlipOnSecondPass {
        bytes: bc.clone(),
        at: bc.len() - 100,
        pos: 0,
        passes: 0,
    };
    target.receive(&mut stream, &mut |_, _| {}).unwrap_err();
    assert!(
        allocated(&target) > allocated_before,
        "the stopped receive wrote nothing"
    );
    let freed = target.abort_receive().unwrap();
    assert!(freed.blocks > 0);
    assert!(target.unfinished_receive().is_none());
    exact(&src.points["b"], blocks, &|o, b| target.read_at(o, b)).unwrap();
    assert_eq!(allocated(&target), allocated_before, "the abort leaked");
    receive(&target, &bc).unwrap();
    exact(&src.points["c"], blocks, &|o, b| target.read_at(o, b)).unwrap();
}

/// Bytes of data blocks the pool holds (live and for recovery points), after a flush: what
/// a leak would raise.
fn allocated(pool: &Pool) -> u64 {
    pool.flush().unwrap();
    pool.status().allocated_bytes
}

/// A stream whose byte `at` changes after the first read through (a file changed between the
/// check and the apply).
struct FlipOnSecondPass {
    bytes: Vec<u8>,
    at: usize,
    pos: usize,
    passes: usize,
}

impl std::io::Read for FlipOnSecondPass {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.bytes.len() - self.pos);
        buf[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl std::io::Seek for FlipOnSecondPass {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let to = match to {
            std::io::SeekFrom::Start(to) => to,
            std::io::SeekFrom::Current(0) => return Ok(self.pos as u64),
            _ => return Err(std::io::Error::other("only to a position, or where it is")),
        };
        self.passes += 1;
        if self.passes == 1 {
            self.bytes[self.at] ^= 1;
        }
        self.pos = usize::try_from(to).unwrap();
        Ok(to)
    }
}
