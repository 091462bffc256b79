//! `stripestore bench-smallwrite`: 4 KiB random writes on the data path of format version 4
//! (`stripestore::volume`) against the member device's best, in one run.
//!
//! * **Raw**: fio, `io_uring`, direct, 4 KiB random writes at the queue depth given, over one
//!   whole preallocated member file (with `--fsync=N` in the fsync case): what one disk does.
//!   Every member file is written whole first (see [`write_whole`]), as a disk is.
//! * **Library**: a `Volume` on the six (or two) preallocated member files opened with
//!   io_uring and `O_DIRECT`, written with groups of `depth / 2` random 4 KiB writes (the
//!   steady state of a server at that depth, docs/FORMAT.md V4.6 "Packer policy": half the
//!   requests are being acknowledged and re-issued while the other half are on the devices),
//!   a flush after every N writes in the fsync case. At the end a sample of blocks is read
//!   back and compared with what was last written to them.
//!
//! * **Soak** (`--fill P`): the volume is first written sequentially to P % of its blocks,
//!   then overwritten at random over that span, so that the data cleaner must keep giving
//!   segments back (docs/FORMAT.md V4.6 "Cleaner"): IOPS per interval (`--interval`), the
//!   group latencies, the blocks the cleaner moved per block written, the syncs writes
//!   waited for, and at the end every block of the span read back and compared.
//!
//! * **NBD** (`--nbd`): a format-version-4 *pool* created on the same member files, served
//!   by the project's NBD server on a Unix socket in this process, written by fio's `nbd`
//!   engine with the raw baseline's pattern, depth and fsync setting: the mounted path, where
//!   the pool groups the writes queued while a group is on the disks (docs/FORMAT.md V4.13,
//!   step 5b). fio's completion latencies p50 and p99 are reported.
//! * **A minimal server on the same path** (with `--nbd`, when nbdkit is installed): nbdkit's
//!   `file` plugin serving the raw baseline's one member file (no redundancy; its default
//!   cache, so its writes land in the page cache and a flush is one `fdatasync`) on a Unix
//!   socket, written by the same fio `nbd` job: what fio's `nbd` engine and a server that only
//!   passes requests to a file carry on this machine. Not a bound (buffered writes can beat
//!   raw direct ones): a reference that tells the client's and the socket's cost from ours.

use crate::bench::spread;
use crate::fio::{self, Job, Pattern, Target};
use crate::nbdkit::{self, Nbdkit};
use crate::served::Served;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use stripestore::device::{open_device, SharedDevice};
use stripestore::geometry::{Geometry, Layout};
use stripestore::types::parse_size;
use stripestore::volume::{Volume, VolumeOptions, BLOCK_BYTES};

const POOL: [u8; 16] = *b"bench-smallwrite";
const TIMELINE: u64 = 0x736d_616c_6c00;
const CHUNK: u64 = 16 << 10;
const UBERBLOCK_SLOTS: u64 = 128;
const LOG_HALF: u64 = 8 << 20;
const SAMPLE: usize = 512;

/// Arguments of `stripestore bench-smallwrite`.
#[derive(clap::Args, Debug)]
pub struct BenchSmallwriteArgs {
    /// Layouts (rs:K+M on K+M members, mirror:N on N), comma-separated.
    #[arg(long, default_value = "rs:4+2,mirror:2", value_delimiter = ',')]
    layouts: Vec<String>,
    /// Size of each member file (preallocated).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    member_size: u64,
    /// Bytes of the volume the random writes cover.
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    span: u64,
    /// Queue depth of the raw baseline; the library writes groups of half of it.
    #[arg(long, default_value = "16")]
    depth: u32,
    /// Flush after every N writes; 0 = never (comma-separated: each is measured).
    #[arg(long, default_value = "0,32", value_delimiter = ',')]
    fsync_every: Vec<u32>,
    /// Seconds per measurement.
    #[arg(long, default_value = "5")]
    seconds: f64,
    /// Soak: fill this percentage of the volume first and overwrite that span (0: a fresh
    /// volume and `--span`).
    #[arg(long, default_value = "0", value_parser = clap::value_parser!(u64).range(0..=100))]
    fill: u64,
    /// Seconds per throughput interval reported.
    #[arg(long, default_value = "1")]
    interval: f64,
    /// Repetitions (medians and min–max are reported).
    #[arg(long, default_value = "3")]
    runs: usize,
    /// Where the member files go (default: a temporary directory under /var/tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also measure the mounted path: a v4 pool on the same members served over NBD, written
    /// by fio's `nbd` engine (needs fio with the `nbd` engine).
    #[arg(long)]
    nbd: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// One measurement of the library path.
#[derive(Debug, Clone, Default, Serialize)]
struct LibraryRun {
    /// IOPS in each interval of the measurement.
    interval_iops: Vec<f64>,
    /// Blocks the cleaner copied per block written by the benchmark.
    relocated_per_write: f64,
    /// Syncs writes waited for (free segments at the reserve).
    cleaner_syncs: u64,
    /// Blocks read back and compared at the end.
    checked_blocks: u64,
    iops: f64,
    group_p50_us: f64,
    group_p99_us: f64,
    blocks_per_row: f64,
    narrow_rows: f64,
    /// Tree syncs per 1000 writes (a sync runs when the dirty pages reach the pool's
    /// `sync_pages_max`, or a flush's record does not fit).
    syncs_per_1000: f64,
}

/// The figures of one layout and fsync setting over all runs.
#[derive(Debug, Serialize)]
struct Case {
    layout: String,
    fsync_every: u32,
    depth: u32,
    group: usize,
    raw_iops: Vec<f64>,
    /// Writes per fsync fio issued on the raw file, per run (with `--fsync-every`).
    raw_writes_per_sync: Vec<f64>,
    library: Vec<LibraryRun>,
    ratio_median: f64,
    /// fio over NBD against a v4 pool (with `--nbd`): IOPS, p50 and p99 per run.
    nbd: Vec<NbdRun>,
    /// fio over NBD against nbdkit's `file` plugin on the raw member file (with `--nbd` and
    /// nbdkit installed), per run.
    nbdkit_file: Vec<NbdRun>,
}

/// One measurement of the mounted path.
#[derive(Debug, Clone, Serialize)]
struct NbdRun {
    iops: f64,
    p50_us: f64,
    p99_us: f64,
    /// Writes per NBD flush fio issued (with `--fsync-every`).
    #[serde(skip_serializing_if = "Option::is_none")]
    writes_per_sync: Option<f64>,
}

impl NbdRun {
    /// The progress line of run `run` (from 0) of `who` against the raw figure of that run.
    fn report(&self, layout: &str, fsync_every: u32, run: usize, who: &str, raw_iops: f64) {
        eprintln!(
            "bench-smallwrite: {layout} fsync every {fsync_every}: run {}: {who} {:.0} IOPS ({:.2} of raw), p50 {:.0} us, p99 {:.0} us",
            run + 1,
            self.iops,
            self.iops / raw_iops,
            self.p50_us,
            self.p99_us
        );
    }

    /// fio's `nbd` engine writing random 4 KiB blocks at the bench's depth (with its fsync
    /// setting) over `span_bytes` of the export on `socket`.
    fn measure(
        socket: PathBuf,
        span_bytes: u64,
        dir: &Path,
        args: &BenchSmallwriteArgs,
        fsync_every: u32,
    ) -> Result<Self, String> {
        let outcome = Job {
            pattern: Pattern::RandWrite {
                fsync_every: (fsync_every > 0).then_some(fsync_every),
            },
            block_bytes: BLOCK_BYTES as u64,
            queue_depth: args.depth,
            target: Target::Nbd {
                socket,
                span_bytes,
                connections: 1,
            },
            seconds: Some(args.seconds),
            mixed_with: None,
        }
        .run(dir)
        .map_err(|e| e.to_string())?;
        Ok(Self {
            iops: outcome.iops,
            p50_us: outcome.p50_us,
            p99_us: outcome.p99_us,
            writes_per_sync: outcome.writes_per_sync,
        })
    }
}

/// A v4 pool created on `paths` (over whatever they hold), served on a Unix socket in `dir`,
/// written by fio's `nbd` engine like the raw baseline.
fn nbd_run(
    layout: Layout,
    paths: &[PathBuf],
    dir: &Path,
    args: &BenchSmallwriteArgs,
    fsync_every: u32,
) -> Result<NbdRun, String> {
    use std::sync::Arc;
    use stripestore::pool::{CreateOptions, FormatVersion, Pool, V4Options};
    let mut options = CreateOptions::new(layout);
    options.chunk_bytes = CHUNK;
    options.force = true;
    options.format = FormatVersion::V4(V4Options::default());
    options.open.background_rebuild = false;
    let pool = Arc::new(Pool::create_paths(paths, &[], &options).map_err(|e| e.to_string())?);
    let span = args.span.min(pool.size()) / BLOCK_BYTES as u64 * BLOCK_BYTES as u64;
    let socket = dir.join("bench-smallwrite.sock");
    let served =
        Served::start(&pool, &socket, "bench-smallwrite-server").map_err(|e| e.to_string())?;
    let measured = NbdRun::measure(socket, span, dir, args, fsync_every);
    let finished = served.finish();
    let measured = measured?;
    finished.map_err(|e| e.to_string())?;
    match Arc::try_unwrap(pool) {
        Ok(pool) => pool.close().map_err(|e| e.to_string())?,
        Err(_) => return Err("the pool is still shared after the server stopped".into()),
    }
    Ok(measured)
}

/// The same fio job over NBD against nbdkit's `file` plugin serving `file` (its default
/// cache), on a Unix socket in `dir`: the mounted path with a server that does nothing but
/// pass requests to one file. Its dirty pages are written back before it returns.
fn nbdkit_file_run(
    file: &Path,
    dir: &Path,
    args: &BenchSmallwriteArgs,
    fsync_every: u32,
) -> Result<NbdRun, String> {
    let socket = dir.join("bench-smallwrite-nbdkit.sock");
    let kit = Nbdkit::start(&socket, &["file".into(), file.as_os_str().to_owned()])?;
    let measured = NbdRun::measure(
        socket,
        args.span.min(args.member_size),
        dir,
        args,
        fsync_every,
    );
    drop(kit);
    // nbdkit wrote into the page cache: the span's worth of dirty pages of a member file,
    // which the kernel would write back about 30 s later, in the middle of whatever is
    // measured then (the library's run, the pool's, the next case's raw baseline). Written
    // back now, outside every timing, and dropped (where allowed), so that the direct writes
    // that follow meet no cached page of that file either.
    let measured = measured?;
    std::fs::File::open(file)
        .and_then(|f| f.sync_data())
        .map_err(|e| format!("cannot write back {}: {e}", file.display()))?;
    super::bench::drop_caches();
    Ok(measured)
}

fn members_of(layout: Layout) -> usize {
    match layout {
        Layout::Mirror { copies } => copies,
        Layout::Raid10 { copies } => 2 * copies,
        Layout::ReedSolomon { data, parity } => data + parity,
    }
}

/// Create `count` preallocated member files in `dir` (fio's raw baseline is a preallocated
/// file: a sparse one adds filesystem allocation to every first write).
fn preallocate(dir: &Path, count: usize, bytes: u64) -> Result<Vec<PathBuf>, String> {
    (0..count)
        .map(|i| {
            let path = dir.join(format!("member{i}"));
            let ran = Command::new("fallocate")
                .args(["-l", &bytes.to_string()])
                .arg(&path)
                .output()
                .map_err(|e| format!("fallocate (util-linux) could not run: {e}"))?;
            if !ran.status.success() {
                return Err(format!(
                    "fallocate {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&ran.stderr).trim()
                ));
            }
            Ok(path)
        })
        .collect()
}

/// Write every member file whole, once, before anything is measured: a preallocated extent
/// that was never written costs ext4 a conversion (a journal update) at its first write, and
/// an `fdatasync` after such writes commits the journal. Measured here with fio, 4 KiB
/// random writes at depth 16 on a 1 GiB file: 42k IOPS freshly preallocated against 53k once
/// written whole; with an fsync every 32 writes 20k against 35k (sync latency 1.56 against
/// 0.64 ms). The raw baseline wrote over the first member file while it was still fresh, so
/// its first run carried that cost and the ratios of that run were flattered; a block device
/// (what a pool runs on) has no such cost. Now every file, the raw one included, is written
/// first, so both sides meet the disk at its best.
fn write_whole(paths: &[PathBuf], dir: &Path, bytes: u64) -> Result<(), String> {
    Job {
        pattern: Pattern::SeqWrite,
        block_bytes: 1 << 20,
        queue_depth: 8,
        target: Target::EachFile {
            paths: paths.to_vec(),
            span_bytes: bytes,
            direct: true,
        },
        seconds: None,
        mixed_with: None,
    }
    .run(dir)
    .map(|_| ())
    .map_err(|e| format!("writing the member files whole: {e}"))
}

/// The bytes of block `key` written as version `tag`.
fn block_of(key: u64, tag: u64, out: &mut [u8]) {
    let mut x = key.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ tag.wrapping_add(1);
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// Random 4 KiB writes in groups for `seconds` on a fresh volume over `paths`.
fn library_run(
    layout: Layout,
    paths: &[PathBuf],
    args: &BenchSmallwriteArgs,
    fsync_every: u32,
    seed: u64,
) -> Result<LibraryRun, String> {
    let devices: Vec<Option<SharedDevice>> = paths
        .iter()
        .map(|p| open_device(p, None).map(Some))
        .collect::<stripestore::Result<_>>()
        .map_err(|e| e.to_string())?;
    let geometry = Geometry::new_v4(
        layout,
        paths.len(),
        CHUNK,
        args.member_size,
        UBERBLOCK_SLOTS,
        LOG_HALF,
    )
    .map_err(|e| e.to_string())?;
    let mut volume = Volume::create(
        &devices,
        POOL,
        &geometry,
        TIMELINE,
        &VolumeOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    let volume_blocks = volume.volume_bytes() / BLOCK_BYTES as u64;
    let blocks = if args.fill > 0 {
        volume_blocks * args.fill / 100
    } else {
        args.span / BLOCK_BYTES as u64
    }
    .min(volume_blocks);
    if blocks == 0 {
        return Err("the span holds no block".into());
    }
    let group = (args.depth as usize / 2).max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut last: HashMap<u64, u64> = HashMap::new();
    if args.fill > 0 {
        fill(&mut volume, &devices, blocks, &mut last)?;
    }
    let before = volume.counters();
    let mut buffers = vec![vec![0u8; BLOCK_BYTES]; group];
    let mut latencies = Vec::new();
    let mut written = 0u64;
    let mut since_flush = 0u32;
    let txg_before = volume.map().txg();
    let deadline = Duration::from_secs_f64(args.seconds);
    let interval = Duration::from_secs_f64(args.interval.max(0.01));
    let mut interval_iops = Vec::new();
    let (mut mark, mut mark_written) = (Instant::now(), 0u64);
    let started = Instant::now();
    while started.elapsed() < deadline {
        if mark.elapsed() >= interval {
            interval_iops.push((written - mark_written) as f64 / mark.elapsed().as_secs_f64());
            (mark, mark_written) = (Instant::now(), written);
        }
        let keys: Vec<u64> = (0..group).map(|_| rng.gen_range(0..blocks)).collect();
        for (key, buffer) in keys.iter().zip(buffers.iter_mut()) {
            written += 1;
            block_of(*key, written, buffer);
            last.insert(*key, written);
        }
        let requests: Vec<(u64, &[u8])> = keys
            .iter()
            .zip(&buffers)
            .map(|(key, buffer)| (key * BLOCK_BYTES as u64, buffer.as_slice()))
            .collect();
        let at = Instant::now();
        volume
            .write_group(&devices, &requests)
            .map_err(|e| e.to_string())?;
        since_flush += group as u32;
        if fsync_every > 0 && since_flush >= fsync_every {
            volume.flush(&devices).map_err(|e| e.to_string())?;
            since_flush = 0;
        }
        latencies.push(at.elapsed().as_secs_f64() * 1e6);
    }
    let elapsed = started.elapsed().as_secs_f64();
    volume.flush(&devices).map_err(|e| e.to_string())?;
    // Honesty check: a sample of blocks (the whole span in a soak) reads back as last
    // written.
    let mut expected = vec![0u8; BLOCK_BYTES];
    let mut found = vec![0u8; BLOCK_BYTES];
    let sample = if args.fill > 0 { last.len() } else { SAMPLE };
    for (key, tag) in last.iter().take(sample) {
        block_of(*key, *tag, &mut expected);
        volume
            .read(&devices, key * BLOCK_BYTES as u64, &mut found)
            .map_err(|e| e.to_string())?;
        if found != expected {
            return Err(format!("block {key} does not read back as last written"));
        }
    }
    latencies.sort_by(f64::total_cmp);
    let counters = volume.counters();
    Ok(LibraryRun {
        interval_iops,
        relocated_per_write: (counters.relocated_blocks - before.relocated_blocks) as f64
            / written.max(1) as f64,
        cleaner_syncs: counters.cleaner_syncs - before.cleaner_syncs,
        checked_blocks: sample.min(last.len()) as u64,
        iops: written as f64 / elapsed,
        group_p50_us: percentile(&latencies, 0.5),
        group_p99_us: percentile(&latencies, 0.99),
        blocks_per_row: counters.blocks_written as f64 / counters.rows_written.max(1) as f64,
        narrow_rows: counters.narrow_rows as f64 / counters.rows_written.max(1) as f64,
        syncs_per_1000: (volume.map().txg() - txg_before) as f64 * 1000.0 / written.max(1) as f64,
    })
}

/// Write blocks `0..blocks` sequentially (1 MiB writes), flushed: the soak's starting point.
fn fill(
    volume: &mut Volume,
    devices: &[Option<SharedDevice>],
    blocks: u64,
    last: &mut HashMap<u64, u64>,
) -> Result<(), String> {
    const RUN: u64 = 256;
    let mut data = vec![0u8; RUN as usize * BLOCK_BYTES];
    let mut first = 0;
    while first < blocks {
        let count = RUN.min(blocks - first);
        for (i, block) in data
            .chunks_mut(BLOCK_BYTES)
            .take(count as usize)
            .enumerate()
        {
            block_of(first + i as u64, 0, block);
            last.insert(first + i as u64, 0);
        }
        volume
            .write(
                devices,
                first * BLOCK_BYTES as u64,
                &data[..count as usize * BLOCK_BYTES],
            )
            .map_err(|e| format!("fill at block {first}: {e}"))?;
        first += count;
    }
    volume.flush(devices).map_err(|e| e.to_string())?;
    Ok(())
}

/// Median, min and max of `ours / raw`, run by run.
fn ratio_spread(raw: &[f64], ours: &[f64]) -> (f64, f64, f64) {
    let ratios: Vec<f64> = raw.iter().zip(ours).map(|(raw, ours)| ours / raw).collect();
    spread(&ratios)
}

/// Run the benchmark.
///
/// # Errors
/// fio missing (or without io_uring), a member that cannot be made, a failed write or a
/// block that does not read back.
pub fn run(args: &BenchSmallwriteArgs) -> Result<(), String> {
    let version = if args.nbd {
        fio::available(&["io_uring", "nbd"])?
    } else {
        fio::available(&["io_uring"])?
    };
    let base = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let nbdkit = if args.nbd {
        match nbdkit::version() {
            Ok(version) => Some(version),
            Err(why) => {
                eprintln!(
                    "warning: {why}; the mounted path is measured without nbdkit's reference"
                );
                None
            }
        }
    } else {
        None
    };
    let mut cases = Vec::new();
    for name in &args.layouts {
        let layout: Layout = name
            .parse()
            .map_err(|e: stripestore::Error| e.to_string())?;
        let dir = tempfile::Builder::new()
            .prefix("stripestore-bench-smallwrite-")
            .tempdir_in(&base)
            .map_err(|e| format!("{}: {e}", base.display()))?;
        let paths = preallocate(dir.path(), members_of(layout), args.member_size)?;
        write_whole(&paths, dir.path(), args.member_size)?;
        for fsync_every in &args.fsync_every {
            let mut case = Case {
                layout: name.clone(),
                fsync_every: *fsync_every,
                depth: args.depth,
                group: (args.depth as usize / 2).max(1),
                raw_iops: Vec::new(),
                raw_writes_per_sync: Vec::new(),
                library: Vec::new(),
                ratio_median: 0.0,
                nbd: Vec::new(),
                nbdkit_file: Vec::new(),
            };
            for run in 0..args.runs {
                let raw = Job {
                    pattern: Pattern::RandWrite {
                        fsync_every: (*fsync_every > 0).then_some(*fsync_every),
                    },
                    block_bytes: BLOCK_BYTES as u64,
                    queue_depth: args.depth,
                    target: Target::EachFile {
                        paths: vec![paths[0].clone()],
                        span_bytes: args.member_size,
                        direct: true,
                    },
                    seconds: Some(args.seconds),
                    mixed_with: None,
                }
                .run(dir.path())
                .map_err(|e| e.to_string())?;
                if nbdkit.is_some() {
                    // Before the library and the pool write over the member files: the
                    // file nbdkit serves is the raw baseline's, as fio left it.
                    let reference = nbdkit_file_run(&paths[0], dir.path(), args, *fsync_every)?;
                    if !args.json {
                        reference.report(name, *fsync_every, run, "nbdkit file", raw.iops);
                    }
                    case.nbdkit_file.push(reference);
                }
                let ours = library_run(layout, &paths, args, *fsync_every, run as u64 + 1)?;
                if !args.json {
                    eprintln!(
                        "bench-smallwrite: {name} fsync every {fsync_every}: run {}: raw {:.0} IOPS, volume {:.0} IOPS ({:.2})",
                        run + 1,
                        raw.iops,
                        ours.iops,
                        ours.iops / raw.iops
                    );
                }
                if !args.json && args.fill > 0 {
                    let (median, lo, hi) = spread(&ours.interval_iops);
                    eprintln!(
                        "bench-smallwrite: soak at {} %: IOPS per {} s interval: median {median:.0}, min {lo:.0}, max {hi:.0} ({} intervals); cleaner moved {:.2} blocks per block written; {} syncs waited for; {} blocks read back exactly",
                        args.fill,
                        args.interval,
                        ours.interval_iops.len(),
                        ours.relocated_per_write,
                        ours.cleaner_syncs,
                        ours.checked_blocks
                    );
                }
                if args.nbd {
                    let served = nbd_run(layout, &paths, dir.path(), args, *fsync_every)?;
                    if !args.json {
                        served.report(name, *fsync_every, run, "NBD", raw.iops);
                    }
                    case.nbd.push(served);
                }
                case.raw_iops.push(raw.iops);
                case.raw_writes_per_sync.extend(raw.writes_per_sync);
                case.library.push(ours);
            }
            let ratios: Vec<f64> = case
                .raw_iops
                .iter()
                .zip(&case.library)
                .map(|(raw, ours)| ours.iops / raw)
                .collect();
            case.ratio_median = spread(&ratios).0;
            cases.push(case);
        }
    }
    if args.json {
        let report = serde_json::json!({
            "fio": version,
            "nbdkit": nbdkit,
            "raw_buffers": super::fio::raw_buffers(),
            "cases": cases
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!(
        "{:<9} {:>6} {:>22} {:>22} {:>18} {:>16} {:>10}",
        "layout",
        "fsync",
        "raw IOPS (min-max)",
        "volume IOPS (min-max)",
        "ratio (min-max)",
        "group p50/p99 us",
        "blocks/row"
    );
    for case in &cases {
        let (raw, raw_lo, raw_hi) = spread(&case.raw_iops);
        let iops: Vec<f64> = case.library.iter().map(|r| r.iops).collect();
        let (ours, lo, hi) = spread(&iops);
        let (_, r_lo, r_hi) = ratio_spread(&case.raw_iops, &iops);
        let median = |field: fn(&LibraryRun) -> f64| {
            spread(&case.library.iter().map(field).collect::<Vec<_>>()).0
        };
        let p50 = median(|r| r.group_p50_us);
        let p99 = median(|r| r.group_p99_us);
        let syncs = median(|r| r.syncs_per_1000);
        let per_row = median(|r| r.blocks_per_row);
        println!(
            "{:<9} {:>6} {:>8.0} ({:.0}-{:.0}) {:>8.0} ({:.0}-{:.0}) {:>6.2} ({:.2}-{:.2}) {:>7.0}/{:<8.0} {:>10.2} {:>10.1}",
            case.layout,
            if case.fsync_every == 0 { "none".to_string() } else { case.fsync_every.to_string() },
            raw,
            raw_lo,
            raw_hi,
            ours,
            lo,
            hi,
            case.ratio_median,
            r_lo,
            r_hi,
            p50,
            p99,
            per_row,
            syncs
        );
    }
    if args.nbd {
        println!(
            "\n{:<9} {:>6} {:>22} {:>18} {:>18} {:>22} {:>26} {:>18}",
            "layout",
            "fsync",
            "NBD IOPS (min-max)",
            "ratio (min-max)",
            "p50/p99 us",
            "writes/flush raw, NBD",
            "nbdkit file IOPS (of raw)",
            "NBD / nbdkit"
        );
        for case in &cases {
            let iops: Vec<f64> = case.nbd.iter().map(|r| r.iops).collect();
            let (ours, lo, hi) = spread(&iops);
            let (ratio, r_lo, r_hi) = ratio_spread(&case.raw_iops, &iops);
            let p50 = spread(&case.nbd.iter().map(|r| r.p50_us).collect::<Vec<_>>()).0;
            let p99 = spread(&case.nbd.iter().map(|r| r.p99_us).collect::<Vec<_>>()).0;
            let served: Vec<f64> = case.nbd.iter().filter_map(|r| r.writes_per_sync).collect();
            let per_sync = if served.is_empty() || case.raw_writes_per_sync.is_empty() {
                "-".to_string()
            } else {
                format!(
                    "{:.1}, {:.1}",
                    spread(&case.raw_writes_per_sync).0,
                    spread(&served).0
                )
            };
            let kit: Vec<f64> = case.nbdkit_file.iter().map(|r| r.iops).collect();
            let (reference, of_reference) = if kit.is_empty() {
                ("-".to_string(), "-".to_string())
            } else {
                let (kit_median, _, _) = spread(&kit);
                let (kit_ratio, _, _) = ratio_spread(&case.raw_iops, &kit);
                let (ours_of, lo_of, hi_of) = ratio_spread(&kit, &iops);
                (
                    format!("{kit_median:.0} ({kit_ratio:.2})"),
                    format!("{ours_of:.2} ({lo_of:.2}-{hi_of:.2})"),
                )
            };
            println!(
                "{:<9} {:>6} {:>8.0} ({:.0}-{:.0}) {:>6.2} ({:.2}-{:.2}) {:>7.0}/{:<8.0} {:>22} {:>26} {:>18}",
                case.layout,
                if case.fsync_every == 0 {
                    "none".to_string()
                } else {
                    case.fsync_every.to_string()
                },
                ours,
                lo,
                hi,
                ratio,
                r_lo,
                r_hi,
                p50,
                p99,
                per_sync,
                reference,
                of_reference
            );
        }
    }
    println!("(fio {version}; raw = one member file, io_uring, direct, QD{}; the volume writes groups of {}{})", args.depth, (args.depth as usize / 2).max(1), if args.nbd { "; NBD = a v4 pool on the same members served by this process, fio's nbd engine at the same depth; writes/flush: what fio's --fsync issued, counted in its report; nbdkit file = the same fio job against nbdkit's file plugin on the raw member file (its default cache: buffered), a minimal server on the same path" } else { "" });
    Ok(())
}
