//! Memory of a format-version-4 pool stays under its map cache cap plus what is resident by
//! design, whatever the workload (issue 13; docs/FORMAT.md V4.9, V4.13 step 10): random 4 KiB
//! writes uniform over a 16 TiB volume (rs:4+2 on six 4 TiB sparse files), each one touching
//! a map leaf no earlier write touched, with a flush every 32, then a whole scrub and a
//! rebuild of one member, while the process's resident set is sampled. Alone in its file:
//! the resident set is the whole test process's.

use rand::Rng;
use std::path::PathBuf;
use stripestore::pool::{FormatVersion, V4Options};
use stripestore::{CreateOptions, Layout, OpenOptions, Pool};

const TIB: u64 = 1 << 40;
const CACHE: usize = 32 << 20;
/// Enough writes that their leaves (16 KiB each, one per write) are ten times the cap.
const WRITES: u64 = 20_000;

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// `count` sparse files of 4 TiB in a temporary directory under /var/tmp (on disk, where /tmp
/// may be a RAM filesystem).
fn sparse_files(prefix: &str, count: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .unwrap();
    let paths: Vec<PathBuf> = (0..count)
        .map(|i| dir.path().join(format!("d{i}")))
        .collect();
    for path in &paths {
        std::fs::File::create(path)
            .unwrap()
            .set_len(4 * TIB)
            .unwrap();
    }
    (dir, paths)
}

#[test]
fn random_writes_over_16_tib_stay_under_the_map_cache_cap() {
    let (_dir, paths) = sparse_files("stripestore-rss-", 6);
    let layout: Layout = "rs:4+2".parse().unwrap();
    let mut options = CreateOptions::new(layout);
    options.format = FormatVersion::V4(V4Options::default());
    options.open.map_cache_bytes = CACHE;
    options.open.background_rebuild = false;
    let pool = Pool::create_paths(&paths, &[], &options).unwrap();
    assert!(pool.size() > 14 * TIB, "{}", pool.size());
    let baseline = resident_bytes();
    let mut rng = stripestore::testing::rng(0x5300);
    let blocks = pool.size() / 4096;
    let mut peak = baseline;
    let mut written = Vec::new();
    let block = vec![0x5au8; 4096];
    for i in 0..WRITES {
        let key = rng.gen_range(0..blocks);
        pool.write_at(key * 4096, &block).unwrap();
        written.push(key);
        if i % 32 == 31 {
            pool.flush().unwrap();
        }
        if i % 250 == 0 {
            peak = peak.max(resident_bytes());
        }
    }
    pool.flush().unwrap();
    peak = peak.max(resident_bytes());
    // Resident by design beside the cap (FORMAT.md V4.9): the map's interior pages (at most
    // one level-2 page per 4 GiB of volume: 4,096 of 16 KiB at 16 TiB, 64 MiB) and 48 MiB for
    // buffers and the usage records of the segments written. Without the cap the leaves
    // alone would be 20,000 × 16 KiB = 312 MiB.
    let allowed = CACHE as u64 + (64 << 20) + (48 << 20);
    eprintln!(
        "resident: {} MiB before the writes, peak {} MiB (allowed growth {} MiB)",
        baseline >> 20,
        peak >> 20,
        allowed >> 20
    );
    assert!(
        peak - baseline.min(peak) <= allowed,
        "resident set grew by {} MiB, more than the cap and what is resident by design ({} MiB)",
        (peak - baseline) >> 20,
        allowed >> 20
    );
    // And every write reads back after a reopen.
    pool.close().unwrap();
    let mut open = options.open.clone();
    open.map_cache_bytes = CACHE;
    // Plans in windows of 4,096 entries (docs/FORMAT.md V4.13): the scrub and the rebuild
    // below walk the map in several windows, as a full 16 TiB volume's passes do.
    open.plan_window_entries = 4096;
    let pool = Pool::open_paths(&paths, &open).unwrap();
    let mut back = vec![0u8; 4096];
    for key in written.iter().step_by(97) {
        pool.read_at(key * 4096, &mut back).unwrap();
        assert!(back == block, "block {key}");
    }
    // A whole scrub and a rebuild of one member, sampled the same way: each walks every
    // referenced page (20,000 leaves and their copies) and reads every written row, and
    // stays within the same bound, their plans held a window at a time.
    let sampled_peak = std::sync::atomic::AtomicU64::new(peak);
    let sample = || {
        sampled_peak.fetch_max(resident_bytes(), std::sync::atomic::Ordering::Relaxed);
    };
    let report = pool
        .scrub_with(&stripestore::pool::ScrubOptions::default(), |_| sample())
        .unwrap();
    assert!(!report.found_damage(), "{report:?}");
    sample();
    let spare = paths[0].with_file_name("spare");
    std::fs::File::create(&spare)
        .unwrap()
        .set_len(4 * TIB)
        .unwrap();
    let fresh = stripestore::device::open_device(&spare, None).unwrap();
    pool.replace(&paths[1].to_string_lossy(), fresh, false)
        .unwrap();
    let done = pool.run_rebuilds(|_| sample()).unwrap();
    assert_eq!(done.len(), 1);
    sample();
    let peak = sampled_peak.into_inner();
    eprintln!(
        "resident: peak {} MiB through the scrub and the rebuild",
        peak >> 20
    );
    assert!(
        peak - baseline.min(peak) <= allowed,
        "resident set grew by {} MiB through a scrub and a rebuild, more than the cap and what \
         is resident by design ({} MiB)",
        (peak - baseline) >> 20,
        allowed >> 20
    );
    for key in written.iter().step_by(89) {
        pool.read_at(key * 4096, &mut back).unwrap();
        assert!(back == block, "block {key} after the rebuild");
    }
    pool.close().unwrap();
}

/// A rebuild of one member of a 16 TiB pool (rs:4+2 on six 4 TiB sparse files) holding a few
/// MiB costs what it holds: the bytes written onto the new device are the member's share of
/// the data plus its metadata copies, never proportional to the volume; and with two more
/// original members gone the data reads back exactly from the new device and the others.
#[test]
fn a_rebuild_at_16_tib_writes_what_the_member_holds() {
    let (_dir, paths) = sparse_files("stripestore-rebuild16-", 7);
    let mut options = CreateOptions::new("rs:4+2".parse().unwrap());
    options.format = FormatVersion::V4(V4Options::default());
    options.open.background_rebuild = false;
    let pool = Pool::create_paths(&paths[..6], &[], &options).unwrap();
    let mut rng = stripestore::testing::rng(0x5400);
    let mut written = Vec::new();
    for i in 0..5u64 {
        let offset = (i * 3 * TIB + rng.gen_range(0..TIB)) / 4096 * 4096;
        let data = stripestore::testing::random_bytes(&mut rng, 1 << 20);
        pool.write_at(offset, &data).unwrap();
        written.push((offset, data));
    }
    pool.flush().unwrap();
    let fresh = stripestore::device::open_device(&paths[6], None).unwrap();
    pool.replace(&paths[2].to_string_lossy(), fresh, false)
        .unwrap();
    let done = pool.run_rebuilds(|_| {}).unwrap();
    assert_eq!(done.len(), 1);
    // 5 MiB of data: the member's share is a quarter (plus parity), and its copies of the
    // pages naming it; 64 MiB bounds it with room, against 4 TiB the device spans.
    assert!(
        done[0].done_bytes < 64 << 20,
        "{} bytes rebuilt for 5 MiB of data",
        done[0].done_bytes
    );
    pool.close().unwrap();
    let forced = OpenOptions {
        force: true,
        background_rebuild: false,
        ..OpenOptions::default()
    };
    let keep: Vec<PathBuf> = [3, 4, 5, 6].iter().map(|i| paths[*i].clone()).collect();
    let pool = Pool::open_paths(&keep, &forced).unwrap();
    for (offset, data) in &written {
        let mut back = vec![0u8; data.len()];
        pool.read_at(*offset, &mut back).unwrap();
        assert!(back == *data, "the data at {offset} did not survive");
    }
}

/// The written extents of a sparse file from `from` on (SEEK_DATA / SEEK_HOLE).
fn data_extents(path: &std::path::Path, from: u64) -> Vec<(u64, u64)> {
    use std::os::unix::io::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    let fd = file.as_raw_fd();
    let mut extents = Vec::new();
    let mut at = i64::try_from(from).unwrap();
    loop {
        // SAFETY: `fd` is an open descriptor owned by `file`, which outlives these calls;
        // lseek takes no pointers.
        let start = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if start < 0 {
            return extents; // ENXIO: no data beyond
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        assert!(end > start);
        extents.push((start as u64, end as u64));
        at = end;
    }
}

/// A scrub of a 16 TiB v4 pool holding 16 MiB: it reads in proportion to the data, not to the
/// 4 TiB members; paused after its first chunk and resumed, it finds the one rotten cell a
/// member holds, repairs it, and every byte reads back; the process stays small.
#[test]
fn a_scrub_at_16_tib_reads_what_is_written_and_repairs_across_a_pause() {
    use stripestore::pool::{ScrubEnd, ScrubOptions};
    let (_dir, paths) = sparse_files("stripestore-scrub16-", 6);
    let mut options = CreateOptions::new("rs:4+2".parse().unwrap());
    options.format = FormatVersion::V4(V4Options::default());
    options.open.background_rebuild = false;
    options.open.map_cache_bytes = CACHE;
    let pool = Pool::create_paths(&paths, &[], &options).unwrap();
    let data_offset = pool.geometry().data_offset;
    let mut rng = stripestore::testing::rng(0x5500);
    let marker = *b"scrub16-marker-!";
    let mut written = Vec::new();
    // 16 MiB in pieces far apart: several segments, so the pass has more than one chunk.
    for i in 0..16u64 {
        let offset = (i * TIB * 7 / 8 + rng.gen_range(0..TIB / 2)) / 4096 * 4096;
        let mut data = stripestore::testing::random_bytes(&mut rng, 1 << 20);
        if i == 7 {
            data[..16].copy_from_slice(&marker);
        }
        pool.write_at(offset, &data).unwrap();
        written.push((offset, data));
    }
    pool.close().unwrap();

    // Rot one byte of the cell holding the marker (a data chunk of rs is stored as written).
    let mut rotten = None;
    'search: for (member, path) in paths.iter().enumerate() {
        for (start, end) in data_extents(path, data_offset) {
            let file = std::fs::File::open(path).unwrap();
            let mut bytes = vec![0u8; usize::try_from(end - start).unwrap()];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, start).unwrap();
            if let Some(at) = bytes.windows(16).position(|w| w == marker) {
                rotten = Some((member, start + at as u64));
                break 'search;
            }
        }
    }
    let (member, at) = rotten.expect("the marker's cell on a member");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&paths[member])
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0x42], at + 100).unwrap();
    drop(file);

    let open = OpenOptions {
        background_rebuild: false,
        map_cache_bytes: CACHE,
        ..OpenOptions::default()
    };
    let pool = Pool::open_paths(&paths, &open).unwrap();
    let stepwise = |resume| ScrubOptions {
        resume,
        checkpoint_interval: Some(std::time::Duration::ZERO),
        ..ScrubOptions::default()
    };
    let mut chunks = 0;
    let first = pool
        .scrub_with(&stepwise(false), |_| {
            chunks += 1;
            if chunks == 1 {
                pool.pause_scrub();
            }
        })
        .unwrap();
    assert_eq!(first.end, ScrubEnd::Paused);
    pool.close().unwrap();
    let pool = Pool::open_paths(&paths, &open).unwrap();
    let rest = pool.scrub_with(&stepwise(true), |_| {}).unwrap();
    assert_eq!(rest.end, ScrubEnd::Completed);
    assert_eq!(rest.totals.checksum_errors, 1, "{rest:?}");
    assert_eq!(rest.devices[member].counters.repaired, 1, "{rest:?}");
    assert!(
        first.bytes_read_this_run + rest.bytes_read_this_run < 64 << 20,
        "read {} + {} bytes for 16 MiB of data",
        first.bytes_read_this_run,
        rest.bytes_read_this_run
    );
    assert!(
        resident_bytes() < CACHE as u64 + (256 << 20),
        "resident {} bytes",
        resident_bytes()
    );
    for (offset, data) in &written {
        let mut back = vec![0u8; data.len()];
        pool.read_at(*offset, &mut back).unwrap();
        assert!(back == *data, "the data at {offset}");
    }
    let again = pool.scrub_with(&stepwise(false), |_| {}).unwrap();
    assert!(!again.found_damage(), "{again:?}");
    pool.close().unwrap();
}
