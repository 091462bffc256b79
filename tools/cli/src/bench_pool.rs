//! `stripestore bench`: the pool against the raw devices it sits on, in one run; with `--nbd`,
//! the mounted volume (the pool served over NBD, driven by fio's `nbd` engine) against them.
//!
//! For each layout and each of `--runs` runs: make (or take) the devices, then alternate raw
//! and pool figures: raw sequential write (after one unmeasured pass that allocates the
//! files' blocks) and the spare's raw write alone; create the pool; pool sequential write; raw
//! sequential read, pool sequential read; raw random 4 KiB read, pool random read; then
//! degraded (one member offline), rebuild onto the spare and scrub (library) or reads during
//! the rebuild (NBD).
//!
//! **Baselines.** The raw figures come from fio with the `io_uring` engine, direct I/O where the
//! filesystem allows it, over each whole device, at the block size and queue depth of the
//! pool's own run: sequential 1 MiB at depth [`SEQ_DEPTH`] on every device at once (the
//! aggregate the devices can deliver), random 4 KiB reads at depth `--threads` spread over all
//! devices. That is what a user measures their disks with; a weaker reader would flatter the
//! pool. Without fio the command says so and falls back to its own threads of synchronous
//! requests through the device backend, labelled as the weaker baseline it is.
//!
//! **Pool side.** Library: [`SEQ_DEPTH`] threads of 1 MiB requests (rounded to whole stripes)
//! over the whole volume, `--threads` threads of random 4 KiB reads. NBD (`--nbd`): the pool
//! served in this process on a Unix socket in the work directory, fio's `nbd` engine at the
//! same block sizes and depths, with completion latency p50/p99 from fio's report.
//!
//! **A reference on the mounted path** (`--nbd`, when nbdkit is installed): right after the
//! pool's reads, the same two fio `nbd` jobs against nbdkit's `file` plugin serving the first
//! member file (`cache=none`, read-only), each as a ratio to raw fio on that one file at the
//! same block size and depth (`nbdkit_seq_read`, `nbdkit_random_read_4k`): what a common
//! server reading the same disk gets through this client, to read the pool's figures beside.
//! It is not a bound: its reads are buffered (read-ahead, pages evicted after each request),
//! not `O_DIRECT`, and the pool may serve more.
//!
//! Each figure is the median over the runs with its spread (min–max), as a ratio to the raw
//! figure that bounds it measured in the same run, and per core for the library (bytes per
//! CPU-second of this process, which on memory-backed devices compares with memcpy).

use super::fio::{self, Outcome, Pattern, Target};
use super::CliResult;
use crate::served::Served;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stripestore::device::{open_device, AlignedBuf, SharedDevice};
use stripestore::{CreateOptions, Layout, Pool};

/// Bytes per sequential request.
pub(crate) const SEQ_REQUEST: usize = 1 << 20;
/// Sequential requests in flight (threads of the library client, fio's iodepth).
pub(crate) const SEQ_DEPTH: u32 = 8;
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
    /// Random 4 KiB reads in flight: threads of the library client, fio's iodepth for the raw
    /// devices and over NBD.
    #[arg(long, default_value = "16")]
    pub threads: usize,
    /// Seconds each time-based phase runs (random reads; reads during a rebuild).
    #[arg(long, default_value = "1.5")]
    pub random_seconds: f64,
    /// Runs per layout; figures are the median with the min–max spread (raw and pool
    /// alternate within each run).
    #[arg(long, default_value = "3")]
    pub runs: usize,
    /// Measure the mounted volume: serve each pool over NBD on a Unix socket and drive it
    /// with fio's nbd engine (needs fio); adds degraded random reads and reads during a
    /// rebuild, with latency p50/p99, and, when nbdkit is installed, the server's per-request
    /// cost against nbdkit's memory plugin and nbdkit's `file` plugin read the same way as a
    /// reference for the mounted path.
    #[arg(long)]
    pub nbd: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// One measured figure in one run.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    metric: &'static str,
    /// MiB/s (IOPS for random reads).
    value: f64,
    unit: &'static str,
    /// The raw figure that bounds it, in the same unit.
    bound: f64,
    /// How the bound was derived.
    bound_is: String,
    /// MiB per CPU-second of this process (all threads), for throughput figures.
    per_core_mib_s: Option<f64>,
    /// fio's completion latency (NBD figures), microseconds.
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    /// The same for the bound.
    bound_p50_us: Option<f64>,
    bound_p99_us: Option<f64>,
    /// Anything the reader must know about this figure.
    note: Option<String>,
}

/// One figure over all runs: medians, with the spread.
#[derive(Debug, Clone, Serialize)]
struct Figure {
    /// What was measured.
    metric: &'static str,
    /// Median over the runs: MiB/s (IOPS for random reads).
    value: f64,
    value_min: f64,
    value_max: f64,
    /// `MiB/s` or `IOPS`.
    unit: &'static str,
    /// Median of the raw figure that bounds it, in the same unit.
    bound: f64,
    bound_min: f64,
    bound_max: f64,
    /// How the bound was derived.
    bound_is: String,
    /// Median of the runs' value / bound, and its spread.
    ratio: f64,
    ratio_min: f64,
    ratio_max: f64,
    /// MiB per CPU-second of this process (median), for throughput figures.
    per_core_mib_s: Option<f64>,
    /// Completion latency medians over the runs, microseconds (NBD and its bound).
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    bound_p50_us: Option<f64>,
    bound_p99_us: Option<f64>,
    /// Notes of the runs, if any.
    notes: Vec<String>,
    /// Every run's sample.
    runs: Vec<Sample>,
}

/// The raw devices' figures of one run.
#[derive(Debug, Clone, Serialize)]
struct RawRun {
    seq_write_mib_s: f64,
    spare_write_mib_s: f64,
    seq_read_mib_s: f64,
    random_read_iops: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Raw {
    devices: usize,
    backend: String,
    /// Medians over the runs.
    seq_write_mib_s: f64,
    spare_write_mib_s: f64,
    seq_read_mib_s: f64,
    random_read_iops: f64,
    runs: Vec<RawRun>,
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
    seq_depth: u32,
    runs: usize,
    /// How the raw figures were measured.
    baseline: String,
    /// What fio's raw jobs read and wrote from: huge pages, or 4 KiB pages and why (then the
    /// baseline may be below the device's best; see the fio module).
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_buffers: Option<String>,
    /// `library` or `nbd`.
    client: &'static str,
    memcpy_mib_s: f64,
    layouts: Vec<LayoutReport>,
    /// `--nbd`: the server's per-request cost on memory-backed members against nbdkit.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_cost: Option<super::bench_nbd::ServerCost>,
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
pub(crate) fn progress(message: &str) {
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

/// Run `work(i)` for every index on its own thread; all at once.
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

/// What measures the raw devices.
#[derive(Debug, Clone)]
pub(crate) enum Baseline {
    /// fio (its version) with the io_uring engine.
    Fio(String),
    /// This command's own threads of synchronous requests, because fio cannot be used (why).
    Own(String),
}

impl Baseline {
    pub(crate) fn detect() -> Self {
        match fio::available(&["io_uring"]) {
            Ok(version) => Baseline::Fio(version),
            Err(why) => Baseline::Own(why),
        }
    }

    /// How the spare's raw write is measured (`bench-rebuild`).
    pub(crate) fn describe_spare(&self) -> String {
        match self {
            Baseline::Fio(version) => format!(
                "{version}, io_uring engine, 1 MiB sequential writes at depth {SEQ_DEPTH} over a fresh file of the rebuild's bytes, direct where the filesystem allows, fdatasync at the end"
            ),
            Baseline::Own(why) => format!(
                "WEAKER BASELINE: {why}; the spare's raw write comes from this command's own buffered writer and fdatasync"
            ),
        }
    }

    fn describe(&self) -> String {
        match self {
            Baseline::Fio(version) => format!(
                "{version}, io_uring engine, each whole device, same block size and queue depth as the pool's run"
            ),
            Baseline::Own(why) => format!(
                "WEAKER BASELINE: {why}; raw figures come from this command's own threads of synchronous requests, below what the devices can do"
            ),
        }
    }
}

/// The raw devices of one layout: the members and the spare, each used over `span` bytes.
pub(crate) struct RawDevices<'a> {
    pub members: &'a [PathBuf],
    pub spare: &'a Path,
    pub span: u64,
    /// `O_DIRECT` works on them (not on tmpfs).
    pub direct: bool,
    pub baseline: &'a Baseline,
    pub scratch: &'a Path,
    pub random_depth: u32,
    pub seconds: f64,
}

impl RawDevices<'_> {
    fn fio(
        &self,
        pattern: Pattern,
        paths: &[PathBuf],
    ) -> Result<Outcome, Box<dyn std::error::Error>> {
        let random = pattern == Pattern::RandRead;
        let job = fio::Job {
            pattern,
            block_bytes: if random { RANDOM_REQUEST } else { SEQ_REQUEST } as u64,
            queue_depth: if random { self.random_depth } else { SEQ_DEPTH },
            target: if random {
                Target::AcrossFiles {
                    paths: paths.to_vec(),
                    span_bytes: self.span,
                    direct: self.direct,
                }
            } else {
                Target::EachFile {
                    paths: paths.to_vec(),
                    span_bytes: self.span,
                    direct: self.direct,
                }
            },
            seconds: random.then_some(self.seconds),
            mixed_with: None,
        };
        job.run(self.scratch)
    }

    fn own(
        &self,
        pattern: Pattern,
        paths: &[PathBuf],
    ) -> Result<Outcome, Box<dyn std::error::Error>> {
        let devices: Vec<SharedDevice> = paths
            .iter()
            .map(|p| open_device(p, None))
            .collect::<Result<_, _>>()?;
        own_measure(
            &devices,
            self.span,
            pattern,
            self.random_depth,
            self.seconds,
        )
    }

    /// Measure `pattern` on the members (or, `spare_only`, on the spare alone).
    pub(crate) fn measure(
        &self,
        pattern: Pattern,
        spare_only: bool,
    ) -> Result<Outcome, Box<dyn std::error::Error>> {
        let spare = [self.spare.to_path_buf()];
        let paths = if spare_only { &spare[..] } else { self.members };
        match self.baseline {
            Baseline::Fio(_) => self.fio(pattern, paths),
            Baseline::Own(_) => self.own(pattern, paths),
        }
    }
}

/// The fallback raw measurement: one thread per device for sequential 1 MiB requests, or
/// `depth` threads of random 4 KiB reads across the devices. No latency figures.
fn own_measure(
    devices: &[SharedDevice],
    span: u64,
    pattern: Pattern,
    depth: u32,
    seconds: f64,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let requests = span / SEQ_REQUEST as u64;
    let total = requests * SEQ_REQUEST as u64 * devices.len() as u64;
    let sequential = |write: bool| {
        on_all(devices.len(), |i| -> Result<(), String> {
            let mut buf = AlignedBuf::zeroed(SEQ_REQUEST);
            ChaCha8Rng::seed_from_u64(i as u64).fill_bytes(&mut buf);
            for r in 0..requests {
                let offset = r * SEQ_REQUEST as u64;
                if write {
                    devices[i]
                        .write_at(offset, &buf)
                        .map_err(|e| e.to_string())?;
                } else {
                    devices[i]
                        .read_at(offset, &mut buf)
                        .map_err(|e| e.to_string())?;
                }
            }
            if write {
                devices[i].flush().map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .into_iter()
        .collect::<Result<Vec<()>, String>>()
    };
    let bytes_per_s = |elapsed: Duration| mib_s(total, elapsed) * MIB;
    let outcome = match pattern {
        Pattern::SeqWrite | Pattern::SeqRead => {
            let (done, elapsed, _) = timed(|| sequential(pattern == Pattern::SeqWrite));
            done?;
            let rate = bytes_per_s(elapsed);
            Outcome {
                bytes_per_s: rate,
                iops: rate / SEQ_REQUEST as f64,
                ..Outcome::default()
            }
        }
        Pattern::RandRead => {
            let blocks = span / RANDOM_REQUEST as u64;
            let iops = random_reads(depth as usize, seconds, |rng, buf| {
                let device = &devices[rng.gen_range(0..devices.len())];
                let offset = rng.gen_range(0..blocks) * RANDOM_REQUEST as u64;
                device.read_at(offset, buf).map_err(|e| e.to_string())
            })?;
            Outcome {
                bytes_per_s: iops * RANDOM_REQUEST as f64,
                iops,
                ..Outcome::default()
            }
        }
        Pattern::RandWrite { .. } => {
            return Err(
                "the weaker baseline has no random writes (bench-smallwrite uses fio)".into(),
            )
        }
    };
    Ok(outcome)
}

/// `threads` threads each doing `read` with its own seeded generator and aligned buffer
/// for `seconds`; returns reads per second.
fn random_reads(
    threads: usize,
    seconds: f64,
    read: impl Fn(&mut ChaCha8Rng, &mut [u8]) -> Result<(), String> + Sync,
) -> Result<f64, Box<dyn std::error::Error>> {
    let done = AtomicU64::new(0);
    let deadline = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let results = on_all(threads.max(1), |t| -> Result<(), String> {
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

/// Sequential I/O over the first `bytes` of the volume: [`SEQ_DEPTH`] threads, each on its own
/// contiguous part, in requests of `request` bytes.
fn pool_sequential(
    pool: &Pool,
    bytes: u64,
    request: usize,
    write: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let threads = SEQ_DEPTH as usize;
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

/// How the pool is driven: by threads calling it, or by fio over NBD.
enum Client<'a> {
    Library(&'a Pool),
    Nbd {
        socket: &'a Path,
        span: u64,
        scratch: &'a Path,
    },
}

/// A pool measurement: the rate (MiB/s or IOPS), the CPU seconds it used, fio's latencies.
struct Measured {
    value: f64,
    cpu: Option<f64>,
    bytes: u64,
    latency: Option<(f64, f64)>,
}

impl Client<'_> {
    /// Sequential reads over NBD for `seconds` (looping over the volume).
    fn run_for(
        &self,
        pattern: Pattern,
        request: usize,
        volume: u64,
        seconds: f64,
    ) -> Result<Measured, Box<dyn std::error::Error>> {
        let Client::Nbd {
            socket,
            span,
            scratch,
        } = self
        else {
            return self.run(pattern, request, volume, 1, seconds);
        };
        let job = fio::Job {
            pattern,
            block_bytes: SEQ_REQUEST as u64,
            queue_depth: SEQ_DEPTH,
            target: Target::Nbd {
                socket: socket.to_path_buf(),
                span_bytes: *span,
                connections: 1,
            },
            seconds: Some(seconds),
            mixed_with: None,
        };
        let outcome = job.run(scratch)?;
        Ok(Measured {
            value: outcome.bytes_per_s / MIB,
            cpu: None,
            bytes: *span,
            latency: Some((outcome.p50_us, outcome.p99_us)),
        })
    }

    fn run(
        &self,
        pattern: Pattern,
        request: usize,
        volume: u64,
        random_depth: usize,
        seconds: f64,
    ) -> Result<Measured, Box<dyn std::error::Error>> {
        match self {
            Client::Library(pool) => match pattern {
                Pattern::SeqWrite | Pattern::SeqRead => {
                    let write = pattern == Pattern::SeqWrite;
                    let (result, elapsed, cpu) =
                        timed(|| pool_sequential(pool, volume, request, write));
                    result?;
                    Ok(Measured {
                        value: mib_s(volume, elapsed),
                        cpu,
                        bytes: volume,
                        latency: None,
                    })
                }
                Pattern::RandRead => {
                    let blocks = volume / RANDOM_REQUEST as u64;
                    let iops = random_reads(random_depth, seconds, |rng, buf| {
                        let offset = rng.gen_range(0..blocks) * RANDOM_REQUEST as u64;
                        pool.read_at(offset, buf).map_err(|e| e.to_string())
                    })?;
                    Ok(Measured {
                        value: iops,
                        cpu: None,
                        bytes: 0,
                        latency: None,
                    })
                }
                Pattern::RandWrite { .. } => {
                    Err("random writes of the pool are measured by bench-smallwrite".into())
                }
            },
            Client::Nbd {
                socket,
                span,
                scratch,
            } => {
                let random = pattern == Pattern::RandRead;
                let job = fio::Job {
                    pattern,
                    block_bytes: if random { RANDOM_REQUEST } else { SEQ_REQUEST } as u64,
                    queue_depth: if random {
                        u32::try_from(random_depth)?
                    } else {
                        SEQ_DEPTH
                    },
                    target: Target::Nbd {
                        socket: socket.to_path_buf(),
                        span_bytes: *span,
                        connections: 1,
                    },
                    seconds: random.then_some(seconds),
                    mixed_with: None,
                };
                let (outcome, _, cpu) = timed(|| job.run(scratch));
                let outcome = outcome?;
                Ok(Measured {
                    value: if random {
                        outcome.iops
                    } else {
                        outcome.bytes_per_s / MIB
                    },
                    cpu,
                    bytes: if random { 0 } else { *span },
                    latency: Some((outcome.p50_us, outcome.p99_us)),
                })
            }
        }
    }
}

/// One reference figure: its metric, nbdkit's measurement, the raw bound and what it is.
type Reference = (&'static str, Measured, (f64, Option<(f64, f64)>), String);

/// `bench --nbd`'s reference on the mounted path: nbdkit's `file` plugin (`cache=none`:
/// buffered reads, pages evicted after each request, so reads meet the disk; read-only)
/// serving `member` on a Unix socket, read by fio's `nbd` engine exactly as the pool is
/// (sequential 1 MiB at depth [`SEQ_DEPTH`], random 4 KiB at depth `--threads`), each against
/// raw fio on that one file at the same block size and depth, measured just before it.
fn nbdkit_reference(
    raw: &RawDevices<'_>,
    member: &Path,
    dir: &Path,
    args: &BenchArgs,
) -> Result<Vec<Reference>, Box<dyn std::error::Error>> {
    let socket = dir.join("bench-nbdkit-file.sock");
    let kit = super::nbdkit::Nbdkit::start(
        &socket,
        &[
            "-r".into(),
            "file".into(),
            member.as_os_str().to_owned(),
            "cache=none".into(),
        ],
    )?;
    let client = Client::Nbd {
        socket: &socket,
        span: raw.span,
        scratch: dir,
    };
    let one = [member.to_path_buf()];
    let raw_seq = raw.fio(Pattern::SeqRead, &one)?;
    let mut seq = client.run(Pattern::SeqRead, SEQ_REQUEST, raw.span, args.threads, 0.0)?;
    // This process's CPU time says nothing of nbdkit's.
    seq.cpu = None;
    let raw_random = raw.fio(Pattern::RandRead, &one)?;
    let random = client.run(
        Pattern::RandRead,
        RANDOM_REQUEST,
        raw.span,
        args.threads,
        args.random_seconds,
    )?;
    drop(kit);
    Ok(vec![
        (
            "nbdkit_seq_read",
            seq,
            as_bound(&raw_seq, false),
            "raw read of that one file".into(),
        ),
        (
            "nbdkit_random_read_4k",
            random,
            as_bound(&raw_random, true),
            format!("raw random read of that one file, depth {}", args.threads),
        ),
    ])
}

/// A raw outcome as the bound of a figure: the value in the figure's unit, and the latency.
fn as_bound(outcome: &Outcome, iops: bool) -> (f64, Option<(f64, f64)>) {
    let value = if iops {
        outcome.iops
    } else {
        outcome.bytes_per_s / MIB
    };
    let latency = (outcome.p50_us > 0.0).then_some((outcome.p50_us, outcome.p99_us));
    (value, latency)
}

/// One run of one layout: the raw figures, the pool's samples, the devices' backend and the
/// volume's size.
type LayoutRun = (RawRun, Vec<Sample>, String, u64);

/// One run of one layout (see the module header for the order of the figures).
#[allow(clippy::too_many_lines)]
fn bench_layout_once(
    layout: Layout,
    dir: &Path,
    args: &BenchArgs,
    baseline: &Baseline,
    reference: bool,
) -> Result<LayoutRun, Box<dyn std::error::Error>> {
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
    // Opened once to create the files (and learn the sizes and the backend), then closed:
    // the raw measurements open them themselves.
    let devices: Vec<SharedDevice> = paths
        .iter()
        .map(|p| open_device(p, size))
        .collect::<Result<_, _>>()?;
    let device_bytes = devices.iter().map(|d| d.size()).min().unwrap_or(0);
    let backend = devices[0].io_backend().to_string();
    drop(devices);
    progress(&format!(
        "{layout}: {count} devices of {} MiB ({backend})",
        device_bytes >> 20
    ));
    let span = device_bytes / SEQ_REQUEST as u64 * SEQ_REQUEST as u64;
    let random_depth = u32::try_from(args.threads.max(1))?;
    let raw = RawDevices {
        members,
        spare: &spare[0],
        span,
        direct: backend.contains("O_DIRECT"),
        baseline,
        scratch: dir,
        random_depth,
        seconds: args.random_seconds,
    };

    // Raw writes first (they would destroy a pool): one pass to allocate the blocks (the pool
    // overwrites allocated blocks, so the second pass is the comparable one).
    raw.measure(Pattern::SeqWrite, false)?;
    let raw_write = raw.measure(Pattern::SeqWrite, false)?;
    raw.measure(Pattern::SeqWrite, true)?;
    let spare_write = raw.measure(Pattern::SeqWrite, true)?;
    progress(&format!(
        "{layout}: raw sequential write {:.0} MiB/s on {count} devices; the spare alone {:.0} MiB/s",
        raw_write.bytes_per_s / MIB,
        spare_write.bytes_per_s / MIB
    ));

    let mut options = CreateOptions::new(layout);
    options.chunk_bytes = args.chunk_bytes;
    options.checksum_bytes = args.checksum_bytes;
    options.device_bytes = Some(device_bytes);
    options.force = true;
    options.open.background_rebuild = false;
    options.open.auto_replace = false;
    options.format = stripestore::pool::FormatVersion::V4(stripestore::pool::V4Options::default());
    let pool = Arc::new(Pool::create_paths(members, spare, &options)?);
    let stripe = usize::try_from(pool.geometry().stripe_data_bytes())?;
    let request = SEQ_REQUEST.div_ceil(stripe) * stripe;
    let volume = pool.size() / request as u64 * request as u64;
    let (share, share_name) = data_share(layout);

    let socket = dir.join("bench-nbd.sock");
    let server = if args.nbd {
        Some(Served::start(&pool, &socket, "bench-nbd-server")?)
    } else {
        None
    };
    let client = if args.nbd {
        Client::Nbd {
            socket: &socket,
            span: volume,
            scratch: dir,
        }
    } else {
        Client::Library(&pool)
    };
    let measure =
        |pattern: Pattern| client.run(pattern, request, volume, args.threads, args.random_seconds);
    let mut samples = Vec::new();
    let mut record = |metric: &'static str,
                      measured: &Measured,
                      bound: (f64, Option<(f64, f64)>),
                      bound_is: String,
                      note: Option<String>| {
        let unit = if measured.bytes == 0 { "IOPS" } else { "MiB/s" };
        progress(&format!(
            "{layout}: {metric} {:.0} {unit} (bound {:.0}: {bound_is})",
            measured.value, bound.0
        ));
        #[allow(clippy::cast_precision_loss)]
        let per_core = measured
            .cpu
            .filter(|c| *c > 0.0 && measured.bytes > 0)
            .map(|c| measured.bytes as f64 / MIB / c);
        samples.push(Sample {
            metric,
            value: measured.value,
            unit,
            bound: bound.0,
            bound_is,
            per_core_mib_s: per_core,
            p50_us: measured.latency.map(|l| l.0),
            p99_us: measured.latency.map(|l| l.1),
            bound_p50_us: bound.1.map(|l| l.0),
            bound_p99_us: bound.1.map(|l| l.1),
            note,
        });
    };

    let written = measure(Pattern::SeqWrite)?;
    let (bound, latency) = as_bound(&raw_write, false);
    record(
        "seq_write",
        &written,
        (bound * share, latency),
        format!("raw write x {share_name}"),
        None,
    );
    let raw_read = raw.measure(Pattern::SeqRead, false)?;
    let read = measure(Pattern::SeqRead)?;
    record(
        "seq_read",
        &read,
        as_bound(&raw_read, false),
        "raw read".into(),
        None,
    );
    let raw_random = raw.measure(Pattern::RandRead, false)?;
    let random = measure(Pattern::RandRead)?;
    let random_bound_is = format!("raw random read, depth {}", args.threads);
    record(
        "random_read_4k",
        &random,
        as_bound(&raw_random, true),
        random_bound_is.clone(),
        None,
    );
    if reference {
        // The same two reads through the same client, served by nbdkit's `file` plugin
        // (buffered, pages evicted after each request, read-only) from one member file, against
        // raw fio on that file at the same depth: a common server on the same disk and path,
        // beside the pool's own figures (a reference, not a bound).
        let member = &members[0];
        let reference = nbdkit_reference(&raw, member, dir, args)?;
        for (metric, measured, bound, bound_is) in reference {
            record(metric, &measured, bound, bound_is, None);
        }
    }

    pool.offline(&members[0].display().to_string())?;
    let degraded = measure(Pattern::SeqRead)?;
    record(
        "degraded_read",
        &degraded,
        as_bound(&raw_read, false),
        "raw read".into(),
        None,
    );
    if args.nbd {
        let degraded = measure(Pattern::RandRead)?;
        record(
            "degraded_random_read_4k",
            &degraded,
            as_bound(&raw_random, true),
            random_bound_is,
            None,
        );
    }

    let old = members[0].display().to_string();
    pool.replace_with_spare(&old, &spare[0].display().to_string())?;
    let spare_bound = as_bound(&spare_write, false);
    let spare_bound_is = "raw write of the spare alone".to_string();
    if args.nbd {
        // Reads during the rebuild: the rebuild runs on its own thread while fio reads.
        let rebuilder = Arc::clone(&pool);
        let rebuild = std::thread::Builder::new()
            .name("bench-rebuild".into())
            .spawn(move || {
                let started = Instant::now();
                let done = rebuilder.run_rebuilds(|_| {});
                (done, started, Instant::now())
            })?;
        let read_started = Instant::now();
        // Time-based (looping over the volume), so the read overlaps the rebuild.
        let during = client.run_for(Pattern::SeqRead, request, volume, args.random_seconds)?;
        let read_ended = Instant::now();
        let (rebuilt, started, ended) = match rebuild.join() {
            Ok(done) => done,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let elapsed = ended.duration_since(started);
        let total = rebuilt?.first().map_or(0, |p| p.done_bytes);
        let read_for = read_ended.duration_since(read_started).as_secs_f64();
        let overlapped = ended
            .min(read_ended)
            .saturating_duration_since(read_started)
            .as_secs_f64();
        let note = (ended < read_ended).then(|| {
            format!(
                "the rebuild ended before the read: it ran during {overlapped:.1} of the read's {read_for:.1} s"
            )
        });
        record(
            "read_during_rebuild",
            &during,
            as_bound(&raw_read, false),
            "raw read".into(),
            note,
        );
        let measured = Measured {
            value: mib_s(total, elapsed),
            cpu: None,
            bytes: total,
            latency: None,
        };
        record(
            "rebuild",
            &measured,
            spare_bound,
            spare_bound_is,
            Some("while a client read sequentially".into()),
        );
    } else {
        let (rebuilt, elapsed, cpu) = timed(|| pool.run_rebuilds(|_| {}));
        let total = rebuilt?.first().map_or(0, |p| p.done_bytes);
        let measured = Measured {
            value: mib_s(total, elapsed),
            cpu,
            bytes: total,
            latency: None,
        };
        record("rebuild", &measured, spare_bound, spare_bound_is, None);
        // Scrub reads every shard: its rate is in bytes read from the devices.
        let (report, elapsed, cpu) = timed(|| pool.scrub());
        let physical = report?.bytes_read_this_run;
        let measured = Measured {
            value: mib_s(physical, elapsed),
            cpu,
            bytes: physical,
            latency: None,
        };
        record(
            "scrub",
            &measured,
            as_bound(&raw_read, false),
            "raw read".into(),
            None,
        );
    }
    if let Some(served) = server {
        served.finish()?;
    }
    let volume_bytes = pool.size();
    match Arc::try_unwrap(pool) {
        Ok(pool) => pool.close()?,
        Err(_) => return Err("the pool is still shared after the server stopped".into()),
    }
    if args.devices.is_empty() {
        for path in &paths {
            let _ = std::fs::remove_file(path);
        }
    }
    let raw_run = RawRun {
        seq_write_mib_s: raw_write.bytes_per_s / MIB,
        spare_write_mib_s: spare_write.bytes_per_s / MIB,
        seq_read_mib_s: raw_read.bytes_per_s / MIB,
        random_read_iops: raw_random.iops,
    };
    Ok((raw_run, samples, backend, volume_bytes))
}

/// Median, min and max (see `bench::spread`).
fn spread_of(values: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    super::bench::spread(&values.collect::<Vec<_>>())
}

fn median_of(values: impl Iterator<Item = f64>) -> f64 {
    spread_of(values).0
}

/// Optional medians: `None` unless every run has the value.
fn median_opt(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let values: Option<Vec<f64>> = values.collect();
    values
        .filter(|v| !v.is_empty())
        .map(|v| median_of(v.into_iter()))
}

fn bench_layout(
    layout: Layout,
    dir: &Path,
    args: &BenchArgs,
    baseline: &Baseline,
    reference: bool,
) -> Result<LayoutReport, Box<dyn std::error::Error>> {
    let mut raw_runs = Vec::new();
    let mut sample_runs: Vec<Vec<Sample>> = Vec::new();
    let mut backend = String::new();
    let mut volume_bytes = 0;
    for run in 0..args.runs.max(1) {
        progress(&format!(
            "{layout}: run {} of {}",
            run + 1,
            args.runs.max(1)
        ));
        let (raw, samples, used, volume) =
            bench_layout_once(layout, dir, args, baseline, reference)?;
        raw_runs.push(raw);
        sample_runs.push(samples);
        backend = used;
        volume_bytes = volume;
    }
    let raw = Raw {
        devices: super::demo::device_count(layout),
        backend,
        seq_write_mib_s: median_of(raw_runs.iter().map(|r| r.seq_write_mib_s)),
        spare_write_mib_s: median_of(raw_runs.iter().map(|r| r.spare_write_mib_s)),
        seq_read_mib_s: median_of(raw_runs.iter().map(|r| r.seq_read_mib_s)),
        random_read_iops: median_of(raw_runs.iter().map(|r| r.random_read_iops)),
        runs: raw_runs,
    };
    let metrics = sample_runs.first().map_or(0, Vec::len);
    let mut figures = Vec::new();
    for m in 0..metrics {
        let runs: Vec<Sample> = sample_runs
            .iter()
            .filter_map(|r| r.get(m).cloned())
            .collect();
        // Every run measures the same figures in the same order (a mislabelled median would
        // be worse than no report).
        if runs.len() != sample_runs.len() || runs.iter().any(|r| r.metric != runs[0].metric) {
            return Err(format!("{layout}: the runs measured different figures").into());
        }
        let (value, value_min, value_max) = spread_of(runs.iter().map(|s| s.value));
        let (bound, bound_min, bound_max) = spread_of(runs.iter().map(|s| s.bound));
        let (ratio, ratio_min, ratio_max) =
            spread_of(runs.iter().map(|s| s.value / s.bound.max(1e-9)));
        let first = &runs[0];
        figures.push(Figure {
            metric: first.metric,
            value,
            value_min,
            value_max,
            unit: first.unit,
            bound,
            bound_min,
            bound_max,
            bound_is: first.bound_is.clone(),
            ratio,
            ratio_min,
            ratio_max,
            per_core_mib_s: median_opt(runs.iter().map(|s| s.per_core_mib_s)),
            p50_us: median_opt(runs.iter().map(|s| s.p50_us)),
            p99_us: median_opt(runs.iter().map(|s| s.p99_us)),
            bound_p50_us: median_opt(runs.iter().map(|s| s.bound_p50_us)),
            bound_p99_us: median_opt(runs.iter().map(|s| s.bound_p99_us)),
            notes: runs.iter().filter_map(|s| s.note.clone()).collect(),
            runs,
        });
    }
    Ok(LayoutReport {
        layout: layout.to_string(),
        devices: super::demo::device_count(layout),
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
    if args.nbd {
        fio::available(&["nbd"])
            .map_err(|why| format!("bench --nbd drives the export with fio's nbd engine: {why}"))?;
    }
    let baseline = Baseline::detect();
    if let Baseline::Own(why) = &baseline {
        eprintln!(
            "warning: {why}; the raw baseline falls back to this command's own threads, which is WEAKER than fio io_uring (ratios are flattered)"
        );
    }
    // The mounted path's reference (nbdkit's file plugin read like the pool), decided once so
    // that every run measures the same figures.
    let reference = args.nbd
        && match (&baseline, super::nbdkit::version()) {
            (Baseline::Fio(_), Ok(_)) => true,
            (Baseline::Own(_), _) => {
                eprintln!("warning: without fio's io_uring baseline, the mounted path's nbdkit reference is not measured");
                false
            }
            (_, Err(why)) => {
                eprintln!("warning: {why}; the mounted path's nbdkit reference is not measured");
                false
            }
        };
    let (dir, _temp) = super::work_dir(args.dir.as_deref(), Path::new("/var/tmp"))?;
    progress("memcpy baseline (64 MiB, one thread)");
    let memcpy = memcpy_mib_s();
    progress(&format!("memcpy: {memcpy:.0} MiB/s"));
    let mut reports = Vec::new();
    for layout in &layouts {
        reports.push(bench_layout(*layout, &dir, args, &baseline, reference)?);
    }
    let server_cost = if args.nbd {
        Some(super::bench_nbd::server_cost(
            layouts.first().copied(),
            &dir,
            args,
        )?)
    } else {
        None
    };
    let report = Report {
        dir: dir.display().to_string(),
        device_bytes: args.device_bytes,
        chunk_bytes: args.chunk_bytes,
        checksum_bytes: args.checksum_bytes,
        threads: args.threads,
        seq_depth: SEQ_DEPTH,
        runs: args.runs.max(1),
        baseline: baseline.describe(),
        raw_buffers: fio::raw_buffers(),
        client: if args.nbd { "nbd" } else { "library" },
        memcpy_mib_s: memcpy,
        layouts: reports,
        server_cost,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print_report(&report);
    Ok(())
}

fn print_report(report: &Report) {
    let client = if report.client == "nbd" {
        "over NBD (fio nbd engine, Unix socket)"
    } else {
        "through the library"
    };
    println!(
        "\npool {client}; raw: {}\nsequential 1 MiB at depth {}, random 4 KiB reads at depth {}; chunk {} KiB, checksum per {} KiB; {} run(s): median (min-max); memcpy {:.0} MiB/s (one core)\n",
        report.baseline,
        report.seq_depth,
        report.threads,
        report.chunk_bytes >> 10,
        report.checksum_bytes >> 10,
        report.runs,
        report.memcpy_mib_s,
    );
    if let Some(buffers) = &report.raw_buffers {
        println!("raw jobs' buffers: {buffers}\n");
    }
    println!(
        "{:<9} {:<24} {:>22} {:>6} {:>10}  {:<28} {:>18} {:>16}",
        "layout", "metric", "value", "unit", "bound", "bound is", "ratio", "p50/p99 us"
    );
    for layout in &report.layouts {
        println!(
            "{:<9} {:<24} {:>22} {:>6} {:>10}  {:<28} {:>18} {:>16}",
            layout.layout,
            format!("raw x{} ({})", layout.raw.devices, layout.raw.backend),
            format!("{:.0}", layout.raw.seq_write_mib_s),
            "MiB/s",
            "",
            format!(
                "write; read {:.0}; {:.0} IOPS",
                layout.raw.seq_read_mib_s, layout.raw.random_read_iops
            ),
            "",
            ""
        );
        for f in &layout.pool {
            let latency = match (f.p50_us, f.p99_us) {
                (Some(p50), Some(p99)) => format!("{p50:.0}/{p99:.0}"),
                _ => String::new(),
            };
            println!(
                "{:<9} {:<24} {:>22} {:>6} {:>10.0}  {:<28} {:>18} {:>16}",
                layout.layout,
                f.metric,
                format!("{:.0} ({:.0}-{:.0})", f.value, f.value_min, f.value_max),
                f.unit,
                f.bound,
                f.bound_is,
                format!("{:.2} ({:.2}-{:.2})", f.ratio, f.ratio_min, f.ratio_max),
                latency
            );
            for note in &f.notes {
                println!("{:<9}   note: {note}", "");
            }
        }
    }
    if let Some(cost) = &report.server_cost {
        super::bench_nbd::print_server_cost(cost);
    }
}
