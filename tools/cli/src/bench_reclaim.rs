//! `stripestore bench-reclaim`: foreground random 4 KiB reads while a large recovery point
//! is deleted in the background (issue 15: "foreground random reads during a large delete
//! ≥ 0.8 of idle"), against the same reads with nothing being deleted, in one run.
//!
//! A v4 pool (rs:4+2) is created on six sparse member files; one 4 KiB block is written in
//! every map leaf of the volume (`--member-size`: the volume is about four of them), so a
//! recovery point of them differs from the live map in every leaf. Each round: write those
//! blocks, take recovery point `r`, write them all again (so `r` alone holds one block and
//! one map leaf per leaf of the volume), time random reads of the written blocks for
//! `--seconds` (idle), then ask for `r` to be deleted and time the same reads until the
//! pool's reclaim thread has freed it (during). Reported: reads/s idle and during (median,
//! min, max over the rounds), their ratio, and how long the deletes took.

use crate::bench::spread;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stripestore::pool::{CreateOptions, FormatVersion, OpenOptions, Pool, V4Options};
use stripestore::types::parse_size;

const BLOCK: u64 = 4096;
/// Blocks one map leaf names (a 16 KiB page of 16-byte pointers).
const LEAF_BLOCKS: u64 = 1024;

/// Arguments of `stripestore bench-reclaim`.
#[derive(clap::Args, Debug)]
pub struct BenchReclaimArgs {
    /// Size of each of the six sparse member files.
    #[arg(long, default_value = "16G", value_parser = parse_size)]
    member_size: u64,
    /// Blocks to write, spread evenly over the volume, one per map leaf at most (default:
    /// one in every leaf).
    #[arg(long)]
    blocks: Option<u64>,
    /// Seconds of idle reads per round.
    #[arg(long, default_value = "3")]
    seconds: u64,
    /// Reader threads.
    #[arg(long, default_value = "1")]
    threads: usize,
    /// Rounds (each takes and deletes a recovery point anew).
    #[arg(long, default_value = "3")]
    rounds: usize,
    /// The reclaim thread's pace: it sleeps this many times what a step took.
    #[arg(long, default_value = "8")]
    pace: u32,
    /// Where the sparse files go (default: a temporary directory under /var/tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Debug)]
struct Rates {
    reads_per_s: Vec<f64>,
    median: f64,
    min: f64,
    max: f64,
}

impl Rates {
    fn of(rates: Vec<f64>) -> Self {
        let (median, min, max) = spread(&rates);
        Self {
            reads_per_s: rates,
            median,
            min,
            max,
        }
    }
}

#[derive(Serialize, Debug)]
struct Report {
    volume_bytes: u64,
    leaves: u64,
    threads: usize,
    pace: u32,
    idle: Rates,
    during_delete: Rates,
    during_over_idle: f64,
    delete_seconds: Vec<f64>,
}

/// Run the benchmark.
///
/// # Errors
/// A file, pool or thread that cannot be made; a read that does not return its block.
pub fn run(args: &BenchReclaimArgs) -> Result<(), Box<dyn std::error::Error>> {
    let base = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let dir = tempfile::Builder::new()
        .prefix("stripestore-bench-reclaim-")
        .tempdir_in(base)?;
    let paths: Vec<PathBuf> = (0..6).map(|i| dir.path().join(format!("m{i}"))).collect();
    for path in &paths {
        std::fs::File::create(path)?.set_len(args.member_size)?;
    }
    let mut options = CreateOptions::new("rs:4+2".parse()?);
    options.chunk_bytes = 16384;
    options.format = FormatVersion::V4(V4Options::default());
    options.open = OpenOptions {
        background_rebuild: true,
        ..OpenOptions::default()
    };
    let pool = Arc::new(Pool::create_paths(&paths, &[], &options)?);
    pool.set_reclaim_pace(args.pace);
    let volume_bytes = pool.size();
    let all_leaves = (volume_bytes / BLOCK).div_ceil(LEAF_BLOCKS);
    let leaves = args.blocks.unwrap_or(all_leaves).clamp(1, all_leaves);
    let stride = all_leaves / leaves;
    let mut rng = ChaCha8Rng::seed_from_u64(0x2ec1);
    let blocks: Vec<u64> = (0..leaves)
        .map(|i| i * stride * LEAF_BLOCKS + rng.gen_range(0..LEAF_BLOCKS))
        .filter(|b| *b < volume_bytes / BLOCK)
        .collect();
    let (mut idle, mut during, mut took) = (Vec::new(), Vec::new(), Vec::new());
    let mut version = 0u64;
    for round in 0..args.rounds {
        for _ in 0..2 {
            version += 1;
            for (i, block) in blocks.iter().enumerate() {
                pool.write_at(block * BLOCK, &pattern(*block, version))?;
                if i % 256 == 255 {
                    pool.flush()?;
                }
            }
            pool.flush()?;
            if pool.recovery_point_names().is_empty() {
                pool.create_recovery_point("r")?;
            }
        }
        let reads = Readers::start(&pool, &blocks, version, args.threads, round as u64);
        std::thread::sleep(Duration::from_secs(args.seconds));
        let idle_rate = reads.rate_since_start();
        let started = Instant::now();
        let mark = reads.mark();
        pool.request_delete("r")?;
        while !pool.deletes().is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
        let seconds = started.elapsed().as_secs_f64();
        let during_rate = reads.rate_since(mark, seconds);
        reads.stop()?;
        if !args.json {
            println!(
                "round {round}: idle {idle_rate:>8.0} reads/s; during a delete of {leaves} \
                 leaves ({seconds:.2} s) {during_rate:>8.0} reads/s ({:.2})",
                during_rate / idle_rate.max(1.0)
            );
        }
        idle.push(idle_rate);
        during.push(during_rate);
        took.push(seconds);
    }
    let idle = Rates::of(idle);
    let during = Rates::of(during);
    let report = Report {
        volume_bytes,
        leaves,
        threads: args.threads,
        pace: args.pace,
        during_over_idle: if idle.median > 0.0 {
            during.median / idle.median
        } else {
            0.0
        },
        idle,
        during_delete: during,
        delete_seconds: took,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "volume {} GiB, one block in each of {} map leaves, {} reader thread(s), pace {}\n\
             idle:            {:.0} reads/s (min {:.0}, max {:.0})\n\
             during a delete: {:.0} reads/s (min {:.0}, max {:.0})\n\
             during / idle = {:.2} (goal >= 0.8); deletes took {:?} s",
            report.volume_bytes >> 30,
            report.leaves,
            report.threads,
            report.pace,
            report.idle.median,
            report.idle.min,
            report.idle.max,
            report.during_delete.median,
            report.during_delete.min,
            report.during_delete.max,
            report.during_over_idle,
            report
                .delete_seconds
                .iter()
                .map(|s| (s * 100.0).round() / 100.0)
                .collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// The bytes block `block` holds at `version`.
fn pattern(block: u64, version: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; BLOCK as usize];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(block ^ version.rotate_left(40) ^ (i as u64)).to_le_bytes());
    }
    bytes
}

/// Reader threads: random reads of the written blocks, each checked, counted.
struct Readers {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    started: Instant,
    handles: Vec<std::thread::JoinHandle<Result<(), String>>>,
}

impl Readers {
    fn start(pool: &Arc<Pool>, blocks: &[u64], version: u64, threads: usize, seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let handles = (0..threads)
            .map(|t| {
                let (pool, stop, done) = (Arc::clone(pool), Arc::clone(&stop), Arc::clone(&done));
                let blocks = blocks.to_vec();
                std::thread::spawn(move || {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed * 1000 + t as u64);
                    let mut buf = vec![0u8; BLOCK as usize];
                    while !stop.load(Ordering::Relaxed) {
                        let block = blocks[rng.gen_range(0..blocks.len())];
                        pool.read_at(block * BLOCK, &mut buf)
                            .map_err(|e| format!("read of block {block}: {e}"))?;
                        if buf != pattern(block, version) {
                            return Err(format!("block {block} read wrong bytes"));
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        Self {
            stop,
            done,
            started: Instant::now(),
            handles,
        }
    }

    fn rate_since_start(&self) -> f64 {
        self.done.load(Ordering::Relaxed) as f64 / self.started.elapsed().as_secs_f64()
    }

    fn mark(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    fn rate_since(&self, mark: u64, seconds: f64) -> f64 {
        (self.done.load(Ordering::Relaxed) - mark) as f64 / seconds.max(1e-9)
    }

    fn stop(self) -> Result<(), Box<dyn std::error::Error>> {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.handles {
            handle
                .join()
                .map_err(|_| "a reader thread panicked")?
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
