//! `stripestore bench`: the pool against the raw devices it sits on, in one run.
//!
//! For each layout: make (or take) the devices, measure them raw — sequential 1 MiB writes and
//! reads, then random 4 KiB reads, each run concurrently on all devices — then create a pool on
//! them (one extra device as the spare) and measure sequential write, sequential read, random
//! 4 KiB read, degraded read (one device taken offline), rebuild onto the spare, and scrub.
//! Raw and pool I/O go through the same backend (`open_device`: io_uring with `O_DIRECT` where
//! the filesystem allows it), so the page cache does not flatter either side.
//!
//! Each figure is given as MiB/s (IOPS for random reads), as a ratio to the raw figure that
//! bounds it (see [`bound`]), and per core: bytes per CPU-second of this process, which on
//! memory-backed devices (`--dir /dev/shm`) compares with the memcpy figure measured first.

use super::CliResult;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use stripestore::device::{open_device, AlignedBuf, SharedDevice};
use stripestore::{CreateOptions, Layout, Pool};

/// Bytes per sequential request.
const SEQ_REQUEST: usize = 1 << 20;
/// Bytes per random read.
const RANDOM_REQUEST: usize = 4096;

/// What `stripestore bench` was asked to do (its command-line arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Layouts, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "mirror:2,raid10:2,rs:4+2,rs:8+3"
    )]
    pub layouts: Vec<String>,
    /// Size of each device file (larger: closer to the disk's steady state, slower).
    #[arg(long = "device-size", value_name = "SIZE", value_parser = super::parse_size, default_value = "64M")]
    pub device_bytes: u64,
    /// Chunk size of the pools.
    #[arg(long = "chunk-size", value_name = "SIZE", value_parser = super::parse_size, default_value = "64K")]
    pub chunk_bytes: u64,
    /// Checksum block of the pools (the chunk size gives one checksum per chunk, as before
    /// 4K blocks).
    #[arg(long = "checksum-size", value_name = "SIZE", value_parser = super::parse_size, default_value = "4K")]
    pub checksum_bytes: u64,
    /// Directory for the device files (default: a temporary directory under /var/tmp;
    /// /dev/shm measures the CPU cost on memory-backed files).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Use these devices instead of files (each layout uses as many as it needs plus one
    /// spare). THEIR CONTENTS ARE DESTROYED. Several per flag (`--device A B C`) or the flag
    /// repeated.
    #[arg(long = "device", value_name = "PATH", num_args = 1..)]
    pub devices: Vec<PathBuf>,
    /// Required with --device: confirms that their contents may be destroyed.
    #[arg(long, requires = "devices")]
    pub force: bool,
    /// Threads issuing random 4 KiB reads (raw and pool alike).
    #[arg(long, default_value = "16")]
    pub threads: usize,
    /// Seconds each random-read phase runs.
    #[arg(long, default_value = "1.5")]
    pub random_seconds: f64,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
struct Figure {
    /// What was measured.
    metric: &'static str,
    /// MiB/s (IOPS for random reads).
    value: f64,
    /// `MiB/s` or `IOPS`.
    unit: &'static str,
    /// The raw figure that bounds it, in the same unit.
    bound: f64,
    /// How the bound was derived.
    bound_is: String,
    /// value / bound.
    ratio: f64,
    /// MiB per CPU-second of this process (all threads), for throughput figures.
    per_core_mib_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
struct Raw {
    devices: usize,
    backend: String,
    seq_write_mib_s: f64,
    seq_read_mib_s: f64,
    random_read_iops: f64,
}

#[derive(Debug, Clone, Serialize)]
struct LayoutReport {
    layout: String,
    devices: usize,
    volume_bytes: u64,
    raw: Raw,
    pool: Vec<Figure>,
}

#[derive(Debug, Serialize)]
struct Report {
    dir: String,
    device_bytes: u64,
    chunk_bytes: u64,
    checksum_bytes: u64,
    threads: usize,
    memcpy_mib_s: f64,
    layouts: Vec<LayoutReport>,
}

const MIB: f64 = 1024.0 * 1024.0;

#[allow(clippy::cast_precision_loss)]
fn mib_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB / elapsed.as_secs_f64().max(1e-9)
}

/// CPU seconds (user + system) this process has used so far, from `/proc/self/stat`
/// (clock ticks of 1/100 s); `None` where that file is not there.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / 100.0)
}

/// Time `work`, returning its result, the wall time and the CPU seconds it used.
fn timed<R>(work: impl FnOnce() -> R) -> (R, Duration, Option<f64>) {
    let cpu = cpu_seconds();
    let started = Instant::now();
    let result = work();
    let elapsed = started.elapsed();
    let used = cpu.zip(cpu_seconds()).map(|(a, b)| b - a);
    (result, elapsed, used)
}

/// Progress on stderr (also with `--json`, whose report goes to stdout).
fn progress(_json: bool, message: &str) {
    eprintln!("  {message}");
}

/// memcpy of 64 MiB, one thread: the per-core ceiling for moving bytes.
fn memcpy_mib_s() -> f64 {
    let source = vec![0x5Au8; 64 << 20];
    let mut target = vec![0u8; 64 << 20];
    let mut best = Vec::new();
    for _ in 0..5 {
        let ((), elapsed, _) = timed(|| {
            std::hint::black_box(&mut target).copy_from_slice(std::hint::black_box(&source));
        });
        best.push(mib_s(source.len() as u64, elapsed));
    }
    best.sort_by(f64::total_cmp);
    best[best.len() / 2]
}

/// Run `work(i)` for every device index on its own thread; all at once.
fn on_all<R: Send>(count: usize, work: impl Fn(usize) -> R + Sync) -> Vec<R> {
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = (0..count).map(|i| scope.spawn(move || work(i))).collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// The raw figures of `devices`, each device used over `bytes`.
fn measure_raw(
    devices: &[SharedDevice],
    bytes: u64,
    args: &BenchArgs,
) -> Result<Raw, Box<dyn std::error::Error>> {
    let requests = bytes / SEQ_REQUEST as u64;
    let total = requests * SEQ_REQUEST as u64 * devices.len() as u64;
    let write_all = || {
        on_all(devices.len(), |i| -> Result<(), String> {
            let mut buf = AlignedBuf::zeroed(SEQ_REQUEST);
            ChaCha8Rng::seed_from_u64(i as u64).fill_bytes(&mut buf);
            for r in 0..requests {
                devices[i]
                    .write_at(r * SEQ_REQUEST as u64, &buf)
                    .map_err(|e| e.to_string())?;
            }
            devices[i].flush().map_err(|e| e.to_string())
        })
    };
    // The first pass allocates the files' blocks; the pool overwrites allocated blocks, so the
    // second pass is the comparable one.
    write_all()
        .into_iter()
        .collect::<Result<Vec<()>, String>>()?;
    let (written, elapsed, _) = timed(write_all);
    written.into_iter().collect::<Result<Vec<()>, String>>()?;
    let seq_write = mib_s(total, elapsed);
    progress(
        args.json,
        &format!(
            "raw sequential write: {seq_write:.0} MiB/s on {} devices",
            devices.len()
        ),
    );
    let (read, elapsed, _) = timed(|| {
        on_all(devices.len(), |i| -> Result<(), String> {
            let mut buf = AlignedBuf::zeroed(SEQ_REQUEST);
            for r in 0..requests {
                devices[i]
                    .read_at(r * SEQ_REQUEST as u64, &mut buf)
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    });
    read.into_iter().collect::<Result<Vec<()>, String>>()?;
    let seq_read = mib_s(total, elapsed);
    progress(
        args.json,
        &format!("raw sequential read: {seq_read:.0} MiB/s"),
    );
    let blocks = bytes / RANDOM_REQUEST as u64;
    let iops = random_reads(args, |rng, buf| {
        let device = &devices[rng.gen_range(0..devices.len())];
        let offset = rng.gen_range(0..blocks) * RANDOM_REQUEST as u64;
        device.read_at(offset, buf).map_err(|e| e.to_string())
    })?;
    progress(
        args.json,
        &format!(
            "raw random 4 KiB read: {iops:.0} IOPS ({} threads)",
            args.threads
        ),
    );
    Ok(Raw {
        devices: devices.len(),
        backend: devices
            .first()
            .map_or("none", |d| d.io_backend())
            .to_string(),
        seq_write_mib_s: seq_write,
        seq_read_mib_s: seq_read,
        random_read_iops: iops,
    })
}

/// `args.threads` threads each doing `read` with its own seeded generator and aligned buffer
/// for `args.random_seconds`; returns reads per second.
fn random_reads(
    args: &BenchArgs,
    read: impl Fn(&mut ChaCha8Rng, &mut [u8]) -> Result<(), String> + Sync,
) -> Result<f64, Box<dyn std::error::Error>> {
    let done = AtomicU64::new(0);
    let deadline = Duration::from_secs_f64(args.random_seconds);
    let started = Instant::now();
    let results = on_all(args.threads.max(1), |t| -> Result<(), String> {
        let mut rng = ChaCha8Rng::seed_from_u64(100 + t as u64);
        let mut buf = AlignedBuf::zeroed(RANDOM_REQUEST);
        while started.elapsed() < deadline {
            read(&mut rng, &mut buf)?;
            done.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    let elapsed = started.elapsed();
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    #[allow(clippy::cast_precision_loss)]
    Ok(done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}

/// Sequential I/O over the first `bytes` of the volume: `threads` threads, each on its own
/// contiguous part, in requests of `request` bytes.
fn pool_sequential(
    pool: &Pool,
    bytes: u64,
    request: usize,
    write: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let threads = 4usize;
    let requests = bytes / request as u64;
    let per_thread = requests.div_ceil(threads as u64);
    let results = on_all(threads, |t| -> Result<(), String> {
        let mut buf = AlignedBuf::zeroed(request);
        ChaCha8Rng::seed_from_u64(200 + t as u64).fill_bytes(&mut buf);
        let first = t as u64 * per_thread;
        for r in first..(first + per_thread).min(requests) {
            let offset = r * request as u64;
            if write {
                pool.write_at(offset, &buf).map_err(|e| e.to_string())?;
            } else {
                pool.read_at(offset, &mut buf).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    });
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    if write {
        pool.flush()?;
    }
    Ok(())
}

/// The share of device bandwidth that carries user data, and a name for it.
fn data_share(layout: Layout) -> (f64, String) {
    match layout {
        Layout::Mirror { copies } | Layout::Raid10 { copies } => {
            #[allow(clippy::cast_precision_loss)]
            let share = 1.0 / copies as f64;
            (share, format!("1/{copies}"))
        }
        Layout::ReedSolomon { data, parity } => {
            #[allow(clippy::cast_precision_loss)]
            let share = data as f64 / (data + parity) as f64;
            (share, format!("{data}/{}", data + parity))
        }
    }
}

fn figure(
    metric: &'static str,
    value: f64,
    unit: &'static str,
    bound: f64,
    bound_is: String,
    cpu: Option<f64>,
    bytes: u64,
) -> Figure {
    #[allow(clippy::cast_precision_loss)]
    let per_core = cpu.filter(|c| *c > 0.0).map(|c| bytes as f64 / MIB / c);
    Figure {
        metric,
        value,
        unit,
        bound,
        bound_is,
        ratio: value / bound.max(1e-9),
        per_core_mib_s: if unit == "IOPS" { None } else { per_core },
    }
}

fn bench_layout(
    layout: Layout,
    dir: &Path,
    args: &BenchArgs,
) -> Result<LayoutReport, Box<dyn std::error::Error>> {
    let count = super::demo::device_count(layout);
    let paths: Vec<PathBuf> = if args.devices.is_empty() {
        (0..=count)
            .map(|i| dir.join(format!("bench{i}.img")))
            .collect()
    } else if args.devices.len() > count {
        args.devices[..=count].to_vec()
    } else {
        return Err(format!(
            "{layout} needs {} devices ({count} and a spare), {} given",
            count + 1,
            args.devices.len()
        )
        .into());
    };
    let (members, spare) = paths.split_at(count);
    let size = args.devices.is_empty().then_some(args.device_bytes);
    let devices: Vec<SharedDevice> = members
        .iter()
        .map(|p| open_device(p, size))
        .collect::<Result<_, _>>()?;
    let device_bytes = devices.iter().map(|d| d.size()).min().unwrap_or(0);
    progress(
        args.json,
        &format!(
            "{layout}: {count} devices of {} MiB ({})",
            device_bytes >> 20,
            devices[0].io_backend()
        ),
    );
    let raw = measure_raw(&devices, device_bytes.min(args.device_bytes), args)?;
    drop(devices);

    let mut options = CreateOptions::new(layout);
    options.chunk_bytes = args.chunk_bytes;
    options.checksum_bytes = args.checksum_bytes;
    options.device_bytes = Some(device_bytes);
    options.force = true;
    options.open.background_rebuild = false;
    options.open.auto_replace = false;
    let pool = Pool::create_paths(members, spare, &options)?;
    let stripe = usize::try_from(pool.geometry().stripe_data_bytes())?;
    let request = SEQ_REQUEST.div_ceil(stripe) * stripe;
    let volume = pool.size() / request as u64 * request as u64;
    let (share, share_name) = data_share(layout);
    let mut figures = Vec::new();
    let mut record = |metric: &'static str, value: f64, bound: (f64, String), cpu, bytes| {
        let unit = if bytes == 0 { "IOPS" } else { "MiB/s" };
        progress(args.json, &format!("{layout}: {metric} {value:.0} {unit}"));
        figures.push(figure(metric, value, unit, bound.0, bound.1, cpu, bytes));
    };
    let sequential = |write: bool| -> Result<(f64, Option<f64>), Box<dyn std::error::Error>> {
        let (result, elapsed, cpu) = timed(|| pool_sequential(&pool, volume, request, write));
        result?;
        Ok((mib_s(volume, elapsed), cpu))
    };
    let raw_read = || (raw.seq_read_mib_s, "raw read".to_string());

    let (value, cpu) = sequential(true)?;
    let bound = raw.seq_write_mib_s * share;
    record(
        "seq_write",
        value,
        (bound, format!("raw write x {share_name}")),
        cpu,
        volume,
    );
    let (value, cpu) = sequential(false)?;
    record("seq_read", value, raw_read(), cpu, volume);

    let blocks = volume / RANDOM_REQUEST as u64;
    let iops = random_reads(args, |rng, buf| {
        let offset = rng.gen_range(0..blocks) * RANDOM_REQUEST as u64;
        pool.read_at(offset, buf).map_err(|e| e.to_string())
    })?;
    let bound = (raw.random_read_iops, "raw random read".to_string());
    record("random_read_4k", iops, bound, None, 0);

    pool.offline(&members[0].display().to_string())?;
    let (value, cpu) = sequential(false)?;
    record("degraded_read", value, raw_read(), cpu, volume);

    let old = members[0].display().to_string();
    pool.replace_with_spare(&old, &spare[0].display().to_string())?;
    let (rebuilt, elapsed, cpu) = timed(|| pool.run_rebuilds(|_| {}));
    let total = rebuilt?.first().map_or(0, |p| p.done_bytes);
    #[allow(clippy::cast_precision_loss)]
    let per_device = raw.seq_write_mib_s / count as f64;
    let bound = (per_device, "raw write of one device".to_string());
    record("rebuild", mib_s(total, elapsed), bound, cpu, total);

    // Scrub reads every shard: its rate is in bytes read from the devices.
    let (report, elapsed, cpu) = timed(|| pool.scrub());
    let physical = report?.bytes_read_this_run;
    record("scrub", mib_s(physical, elapsed), raw_read(), cpu, physical);
    let volume_bytes = pool.size();
    pool.close()?;
    if args.devices.is_empty() {
        for path in &paths {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(LayoutReport {
        layout: layout.to_string(),
        devices: count,
        volume_bytes,
        raw,
        pool: figures,
    })
}

/// `stripestore bench`.
pub fn run(args: &BenchArgs) -> CliResult {
    if !args.devices.is_empty() && !args.force {
        let names: Vec<String> = args
            .devices
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        return Err(format!(
            "bench --device overwrites {} (raw writes, then pools); nothing was written. Add --force if their contents may be destroyed",
            names.join(", ")
        )
        .into());
    }
    let layouts: Vec<Layout> = args
        .layouts
        .iter()
        .map(|l| l.parse::<Layout>())
        .collect::<Result<_, _>>()?;
    let (dir, _temp) = super::work_dir(args.dir.as_deref(), Path::new("/var/tmp"))?;
    progress(args.json, "memcpy baseline (64 MiB, one thread)");
    let memcpy = memcpy_mib_s();
    progress(args.json, &format!("memcpy: {memcpy:.0} MiB/s"));
    let mut reports = Vec::new();
    for layout in layouts {
        reports.push(bench_layout(layout, &dir, args)?);
    }
    let report = Report {
        dir: dir.display().to_string(),
        device_bytes: args.device_bytes,
        chunk_bytes: args.chunk_bytes,
        checksum_bytes: args.checksum_bytes,
        threads: args.threads,
        memcpy_mib_s: memcpy,
        layouts: reports,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "\nmemcpy {:.0} MiB/s (one core); random reads with {} threads; chunk {} KiB, checksum per {} KiB\n",
        report.memcpy_mib_s,
        report.threads,
        report.chunk_bytes >> 10,
        report.checksum_bytes >> 10
    );
    println!(
        "{:<9} {:<15} {:>10} {:>6} {:>10}  {:<26} {:>6} {:>12}",
        "layout", "metric", "value", "unit", "bound", "bound is", "ratio", "MiB/s/core"
    );
    for layout in &report.layouts {
        println!(
            "{:<9} {:<15} {:>10.0} {:>6} {:>10}  {:<26} {:>6} {:>12}",
            layout.layout,
            format!("raw x{}", layout.raw.devices),
            layout.raw.seq_write_mib_s,
            "MiB/s",
            "",
            format!(
                "write; read {:.0}; {:.0} IOPS",
                layout.raw.seq_read_mib_s, layout.raw.random_read_iops
            ),
            "",
            layout.raw.backend
        );
        for f in &layout.pool {
            println!(
                "{:<9} {:<15} {:>10.0} {:>6} {:>10.0}  {:<26} {:>6.2} {:>12}",
                layout.layout,
                f.metric,
                f.value,
                f.unit,
                f.bound,
                f.bound_is,
                f.ratio,
                f.per_core_mib_s
                    .map_or_else(String::new, |c| format!("{c:.0}"))
            );
        }
    }
    Ok(())
}
