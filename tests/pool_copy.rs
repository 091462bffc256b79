//! `Pool::copy_from` (`create --copy-from`): a volume copied into a new pool, the way out of
//! format version 3 (docs/FORMAT.md V4.12) and a change of layout by copy. Every test checks
//! the target's bytes against a model written independently of the copy, and the source's
//! devices byte for byte against their images from before (a copy writes nothing to it).

use crate::common;

use common::{random_writes, reads_as, v3_options, v4_open_options, v4_options};
use rand::Rng;
use std::sync::Arc;
use stripestore::device::{Device, MemDevice};
use stripestore::testing::{mem_devices, shared, Model};
use stripestore::{Error, OpenOptions, Pool};

/// The source pool opened as the CLI opens it: read-only.
fn look(mems: &[Arc<MemDevice>]) -> Pool {
    let options = OpenOptions {
        read_only: true,
        ..OpenOptions::default()
    };
    Pool::open(shared(mems), &options).unwrap()
}

/// The written bytes and runs of `pool` (whole volume, runs merged across calls), counted
/// independently of the copy.
fn written_bytes_and_runs(pool: &Pool) -> (u64, u64) {
    let mut at = 0;
    let mut written = 0;
    let mut runs = 0;
    let mut run_end = None;
    while at < pool.size() {
        let extents = pool.allocation(at, pool.size() - at).unwrap();
        for extent in &extents {
            if extent.allocated {
                written += extent.length;
                if run_end != Some(extent.offset) {
                    runs += 1;
                }
                run_end = Some(extent.offset + extent.length);
            }
        }
        let last = extents.last().unwrap();
        at = last.offset + last.length;
    }
    (written, runs)
}

/// A version-3 volume (random writes, a discarded range) copied into a version-4 pool of
/// another layout, in windows of 1 MiB: the target reads exactly as the model (zeros past the
/// source's end), before and after a reopen; the report accounts for every byte of the
/// source; progress walks the volume in order; the source's devices are unchanged.
#[test]
fn a_v3_volume_copies_into_a_v4_pool_of_another_layout_byte_exact() {
    for (from, from_devices, to, to_devices) in [
        ("mirror:2", 2, "rs:4+2", 6),
        ("rs:4+2", 6, "mirror:3", 3),
        ("raid10:2", 4, "rs:2+1", 3),
    ] {
        let mut rng = stripestore::testing::rng(0x19c0 + from_devices as u64);
        let targets = mem_devices(to_devices, 24 << 20);
        let target = Pool::create(shared(&targets), vec![], &v4_options(to)).unwrap();
        let sources = mem_devices(from_devices, 4 << 20);
        let source = Pool::create(shared(&sources), vec![], &v3_options(from)).unwrap();
        assert!(
            target.size() >= source.size(),
            "{to} {} < {from} {}",
            target.size(),
            source.size()
        );
        let mut model = Model::new(target.size());
        random_writes(&source, &mut model, &mut rng, 60);
        // A discarded range reads as zeros in the source, and so in the copy.
        let hole = source.size() / 3;
        source.discard(hole, 256 << 10).unwrap();
        model.write(hole, &vec![0u8; 256 << 10]);
        source.flush().unwrap();
        source.close().unwrap();
        let images: Vec<Vec<u8>> = sources.iter().map(|m| m.image()).collect();

        let source = look(&sources);
        let (written, runs) = written_bytes_and_runs(&source);
        let mut seen = Vec::new();
        let report = target
            .copy_from_in_windows(&source, 1 << 20, |p| seen.push(*p))
            .unwrap();
        assert_eq!(report.volume_bytes, source.size());
        assert_eq!(report.copied_bytes, written, "{from} -> {to}: {report:?}");
        // Runs that go on across the 1 MiB windows count once.
        assert_eq!(report.extents, runs, "{from} -> {to}: {report:?}");
        assert_eq!(report.copied_bytes + report.unwritten_bytes, source.size());
        assert!(report.unwritten_bytes >= 256 << 10, "{report:?}");
        let windows = source.size().div_ceil(1 << 20) as usize;
        assert_eq!(seen.len(), windows, "one progress report per window");
        assert!(seen.windows(2).all(|w| w[0].done_bytes < w[1].done_bytes));
        assert_eq!(seen.last().unwrap().done_bytes, source.size());
        assert_eq!(seen.last().unwrap().copied_bytes, written);
        reads_as(&target, &model).unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
        source.close().unwrap();
        target.close().unwrap();
        for (mem, image) in sources.iter().zip(&images) {
            assert!(
                mem.image() == *image,
                "the copy wrote to source member {}",
                mem.name()
            );
        }
        let target = Pool::open(shared(&targets), &v4_open_options()).unwrap();
        reads_as(&target, &model).unwrap_or_else(|e| panic!("{from} -> {to} reopened: {e}"));
        target.close().unwrap();
    }
}

/// A target smaller than the source, or one that holds data, is refused before any byte is
/// copied: its devices are unchanged, and so are the source's.
#[test]
fn a_copy_into_a_smaller_or_used_pool_is_refused_and_changes_nothing() {
    let mut rng = stripestore::testing::rng(0x19c8);
    let sources = mem_devices(2, 16 << 20);
    let source = Pool::create(shared(&sources), vec![], &v4_options("mirror:2")).unwrap();
    let mut model = Model::new(source.size());
    random_writes(&source, &mut model, &mut rng, 20);
    source.flush().unwrap();
    source.close().unwrap();
    let source = look(&sources);
    let source_images: Vec<Vec<u8>> = sources.iter().map(|m| m.image()).collect();

    let small = mem_devices(2, 8 << 20);
    let target = Pool::create(shared(&small), vec![], &v4_options("mirror:2")).unwrap();
    target.flush().unwrap();
    let images: Vec<Vec<u8>> = small.iter().map(|m| m.image()).collect();
    match target.copy_from(&source, |_| {}) {
        Err(Error::InvalidConfig(reason)) => assert!(reason.contains("smaller"), "{reason}"),
        other => panic!("a smaller target: {other:?}"),
    }
    assert!(small.iter().zip(&images).all(|(m, i)| m.image() == *i));
    target.close().unwrap();

    let used = mem_devices(2, 16 << 20);
    let target = Pool::create(shared(&used), vec![], &v4_options("mirror:2")).unwrap();
    target.write_at(8192, b"already here").unwrap();
    target.flush().unwrap();
    let images: Vec<Vec<u8>> = used.iter().map(|m| m.image()).collect();
    match target.copy_from(&source, |_| {}) {
        Err(Error::InvalidConfig(reason)) => assert!(reason.contains("holds"), "{reason}"),
        other => panic!("a target with data: {other:?}"),
    }
    assert!(used.iter().zip(&images).all(|(m, i)| m.image() == *i));
    let mut back = [0u8; 12];
    target.read_at(8192, &mut back).unwrap();
    assert_eq!(&back, b"already here");
    target.close().unwrap();
    source.close().unwrap();
    assert!(sources
        .iter()
        .zip(&source_images)
        .all(|(m, i)| m.image() == *i));
}

/// A block of a version-3 source (the copy is the way out of version 3) lost on both copies
/// stops the copy with the source's error naming its volume offset; the windows before it
/// were copied, flushed and read back exactly.
#[test]
fn a_block_lost_in_the_source_stops_the_copy_naming_its_offset() {
    let mut rng = stripestore::testing::rng(0x19c9);
    let sources = mem_devices(2, 4 << 20);
    let source = Pool::create(shared(&sources), vec![], &v3_options("mirror:2")).unwrap();
    let size = source.size();
    let data = stripestore::testing::random_bytes(&mut rng, size as usize);
    source.write_at(0, &data).unwrap();
    source.flush().unwrap();
    let lost_at = (2 << 20) + 4096;
    for location in source.block_locations(lost_at) {
        sources[location.device].poke(location.offset, &[0x5a; 64]);
    }
    source.close().unwrap();
    let source = look(&sources);
    let targets = mem_devices(3, 16 << 20);
    let target = Pool::create(shared(&targets), vec![], &v4_options("mirror:3")).unwrap();
    let mut reached = 0;
    let outcome = target.copy_from_in_windows(&source, 1 << 20, |p| reached = p.done_bytes);
    match outcome {
        Err(Error::Unrecoverable { volume_offset, .. }) => {
            assert!(
                volume_offset <= lost_at && lost_at < volume_offset + 4096,
                "named {volume_offset}, lost {lost_at}"
            );
        }
        other => panic!("a lost block: {other:?}"),
    }
    assert_eq!(
        reached,
        2 << 20,
        "the windows before the lost block were done"
    );
    let mut copied = vec![0u8; 2 << 20];
    target.read_at(0, &mut copied).unwrap();
    assert!(
        copied == data[..2 << 20],
        "the windows before the lost block"
    );
}

/// At 16 TiB (rs:4+2 on six 4 TiB sparse files, source and target): a pool holding four
/// runs of 1 MiB far apart is copied in proportion to what it holds. The whole volume's
/// allocation takes at most two calls (map pages never written are skipped whole; looking at
/// 64 MiB per call took 237,000 and the copy 438 s), the report accounts for every byte, and
/// the runs read back exactly from the new pool.
#[test]
fn a_copy_at_16_tib_walks_only_what_is_written() {
    const TIB: u64 = 1 << 40;
    let dir = tempfile::Builder::new()
        .prefix("stripestore-copy16-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let files = |name: &str| -> Vec<std::path::PathBuf> {
        (0..6)
            .map(|i| {
                let path = dir.path().join(format!("{name}{i}"));
                std::fs::File::create(&path)
                    .unwrap()
                    .set_len(4 * TIB)
                    .unwrap();
                path
            })
            .collect()
    };
    let mut options = stripestore::CreateOptions::new("rs:4+2".parse().unwrap());
    options.format = stripestore::pool::FormatVersion::V4(stripestore::pool::V4Options::default());
    options.open.map_cache_bytes = 16 << 20;
    let sources = files("a");
    let source = Pool::create_paths(&sources, &[], &options).unwrap();
    let mut rng = stripestore::testing::rng(0x19ca);
    let mut written = Vec::new();
    for i in 0..4u64 {
        let offset = (i * 3 * TIB + rng.gen_range(0..TIB)) / 4096 * 4096;
        let data = stripestore::testing::random_bytes(&mut rng, 1 << 20);
        source.write_at(offset, &data).unwrap();
        written.push((offset, data));
    }
    source.flush().unwrap();
    source.close().unwrap();
    let looking = OpenOptions {
        read_only: true,
        map_cache_bytes: 16 << 20,
        ..OpenOptions::default()
    };
    let source = Pool::open_paths(&sources, &looking).unwrap();
    let mut calls = 0;
    let mut at = 0;
    while at < source.size() {
        calls += 1;
        let last = *source
            .allocation(at, source.size() - at)
            .unwrap()
            .last()
            .unwrap();
        at = last.offset + last.length;
    }
    assert!(calls <= 2, "{calls} calls for {} bytes", source.size());
    let target = Pool::create_paths(&files("b"), &[], &options).unwrap();
    let report = target.copy_from(&source, |_| {}).unwrap();
    assert_eq!(report.copied_bytes, 4 << 20, "{report:?}");
    assert_eq!(report.extents, 4, "{report:?}");
    assert_eq!(report.unwritten_bytes, source.size() - (4 << 20));
    for (offset, data) in &written {
        let mut back = vec![0u8; data.len()];
        target.read_at(*offset, &mut back).unwrap();
        assert!(back == *data, "the run at {offset}");
    }
    target.close().unwrap();
    source.close().unwrap();
}

/// A build writes version 4 only: a version-3 pool opened for writing, and a version-3 create,
/// are refused with an error naming both versions and the copy, and change no byte; the same
/// pool opened read-only reads back what was written (what the copy needs).
#[test]
fn a_version_3_pool_is_refused_for_writing_and_read_read_only() {
    let mems = mem_devices(2, 4 << 20);
    let data = vec![0x5a_u8; 65536];
    let pool = Pool::create(shared(&mems), vec![], &v3_options("mirror:2")).unwrap();
    pool.write_at(4096, &data).unwrap();
    pool.close().unwrap();
    // From here on as a program linking the library: no test switch.
    stripestore::testing::allow_format_3_writes(false);
    let images: Vec<Vec<u8>> = mems.iter().map(|m| m.image()).collect();
    let err = Pool::open(shared(&mems), &OpenOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(
        text.contains("format-version-1 pool")
            && text.contains("format version 4")
            && text.contains("--copy-from")
            && (text.contains("mem0") || text.contains("mem1")),
        "{text}"
    );
    let fresh = mem_devices(2, 4 << 20);
    let err = Pool::create(shared(&fresh), vec![], &v3_options_without_switch()).unwrap_err();
    assert!(
        matches!(err, Error::Unsupported { version: 3, .. }),
        "{err}"
    );
    assert!(fresh.iter().all(|m| m.image().iter().all(|b| *b == 0)));
    let looking = OpenOptions {
        read_only: true,
        ..OpenOptions::default()
    };
    let pool = Pool::open(shared(&mems), &looking).unwrap();
    let mut buf = vec![0u8; data.len()];
    pool.read_at(4096, &mut buf).unwrap();
    assert!(buf == data);
    drop(pool);
    let after: Vec<Vec<u8>> = mems.iter().map(|m| m.image()).collect();
    assert!(
        after == images,
        "a refused or read-only open changed a byte"
    );
}

/// [`v3_options`] with the test switch turned off again (what a program asking for version 3
/// gets).
fn v3_options_without_switch() -> stripestore::CreateOptions {
    let options = v3_options("mirror:2");
    stripestore::testing::allow_format_3_writes(false);
    options
}
