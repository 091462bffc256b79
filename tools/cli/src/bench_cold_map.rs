//! `stripestore bench-cold-map`: random 4 KiB reads on a format-version-4 *pool* whose map
//! is larger than its page cache (issue 13, "Cold map"), against the same reads with the
//! whole map cached, in one run.
//!
//! A v4 pool (rs:4+2) is created on six sparse member files and `--blocks` random 4 KiB
//! blocks are written uniformly over the volume (each lands in its own map leaf, the worst
//! case for the map), then the pool is closed. For each run and each cache, the pool is
//! opened with that `--map-cache`, every block is read once (the cache fills as it would in
//! service), and then `--reads` random reads of written blocks are timed on `--threads`
//! threads. Reported: reads/s (median, min, max over the runs), the cold/warm ratio, and the
//! bytes read from the members per read beyond the 4 KiB of data, in map pages (16 KiB): the
//! cost of a cache miss, which must stay at most one page.
//!
//! `--nbd`: the mounted path. The first `--span` bytes of the volume are written whole (every
//! 4 KiB block, so every read finds data and every leaf of that span is in the map), then per
//! run and per cache the pool is opened with that `--map-cache`, served on a Unix socket, and
//! fio's `nbd` engine reads random 4 KiB blocks of the span at `--depth` for `--seconds`. The
//! warm case first looks every block of the span up (`Pool::allocation`), so its whole map is
//! cached before the timing; the cold case starts with whatever its cap keeps. Reported as
//! above, with fio's completion latency p50/p99.
//!
//! With `--nbd`, each run also measures the devices' own limits in the same minutes, fio
//! `io_uring` direct at the same depth over the member files' written extent (a quarter of
//! the span each, rs:4+2): random 4 KiB reads (what a warm read costs the disk), and the
//! cold reads' mix, 4 KiB reads with the measured share of 16 KiB page reads (one data read
//! and `p` page reads per cold read), reported as cold reads/s the disk can serve at most.
//! That ceiling over the warm rate bounds the cold/warm ratio of any map whose miss reads
//! what this one reads, whatever its CPU path: a 4 KiB sector of the leaf (docs/FORMAT.md
//! V4.17, the default) or, with `--plain-leaves` (a pool as builds before V4.17 made it),
//! the whole 16 KiB leaf.

use crate::bench::spread;
use crate::fio::{self, Pattern, Target};
use crate::served::Served;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use stripestore::pool::{CreateOptions, FormatVersion, OpenOptions, Pool, V4Options};
use stripestore::types::parse_size;

const BLOCK: u64 = 4096;
const PAGE: u64 = 16384;
/// Blocks one map leaf names (a 16 KiB page of 16-byte pointers).
const LEAF_BLOCKS: u64 = 1024;

/// Arguments of `stripestore bench-cold-map`.
#[derive(clap::Args, Debug)]
pub struct BenchColdMapArgs {
    /// Size of each of the six sparse member files (rs:4+2: the volume is about four of
    /// them).
    #[arg(long, default_value = "64G", value_parser = parse_size)]
    member_size: u64,
    /// Random 4 KiB blocks written before the reads (the map then has about one leaf each).
    #[arg(long, default_value = "20000")]
    blocks: u64,
    /// Timed random reads per measurement.
    #[arg(long, default_value = "20000")]
    reads: u64,
    /// Map cache of the cold case (default: a tenth of the map's leaves).
    #[arg(long, value_parser = parse_size)]
    cold_cache: Option<u64>,
    /// Reader threads.
    #[arg(long, default_value = "4")]
    threads: u64,
    /// Runs (each opens the pool anew, once per cache).
    #[arg(long, default_value = "3")]
    runs: usize,
    /// Where the sparse files go (default: a temporary directory under /var/tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Measure the mounted path: random reads through NBD (fio's `nbd` engine) over a span
    /// written whole, instead of reader threads over scattered blocks.
    #[arg(long)]
    nbd: bool,
    /// With `--nbd`: bytes at the start of the volume written whole and read at random.
    #[arg(long, default_value = "8G", value_parser = parse_size)]
    span: u64,
    /// With `--nbd`: fio's queue depth.
    #[arg(long, default_value = "16")]
    depth: u32,
    /// With `--nbd`: seconds of random reads per measurement.
    #[arg(long, default_value = "10")]
    seconds: f64,
    /// Make the pool with 16-byte leaf records read whole, as builds before sectored
    /// leaves did (docs/FORMAT.md V4.17), to measure the difference.
    #[arg(long)]
    plain_leaves: bool,
}

/// One cache size's figures.
#[derive(Serialize, Debug)]
struct CacheReport {
    cache_bytes: u64,
    reads_per_s: Vec<f64>,
    median: f64,
    min: f64,
    max: f64,
    /// Bytes of map read from the members per timed read (beyond the data), in 16 KiB pages
    /// (a 4 KiB sector counts a quarter), median.
    pages_per_read: f64,
    /// With `--nbd`: fio's completion latency, microseconds, medians over the runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p99_us: Option<f64>,
}

#[derive(Serialize, Debug)]
struct Report {
    volume_bytes: u64,
    blocks: u64,
    map_leaf_bytes: u64,
    /// Bytes one map read of a miss takes: 4096 (a sector) or 16384 (a plain leaf).
    map_read_bytes: u64,
    warm: CacheReport,
    cold: CacheReport,
    cold_over_warm: f64,
    /// With `--nbd`: the devices' limits measured beside each run.
    #[serde(skip_serializing_if = "Option::is_none")]
    devices: Option<DeviceReport>,
}

/// The member files' own limits at the same depth (fio `io_uring`, direct), per run.
#[derive(Serialize, Debug)]
struct DeviceReport {
    /// Random 4 KiB reads/s.
    random_4k: Vec<f64>,
    /// Cold reads/s the disk serves at most: requests/s of the mix of 4 KiB reads and the
    /// cold run's share of 16 KiB page reads, divided by (1 + page reads per read).
    cold_pattern: Vec<f64>,
    /// Median of `cold_pattern` over the median warm rate: the highest cold/warm ratio the
    /// disk allows.
    ceiling_over_warm: f64,
    /// Median cold rate over the median of `cold_pattern`: how near the disk's limit the cold
    /// path runs.
    cold_over_ceiling: f64,
}

/// Run the benchmark.
///
/// # Errors
/// A file, pool or thread that cannot be made.
pub fn run(args: &BenchColdMapArgs) -> Result<(), Box<dyn std::error::Error>> {
    let base = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let dir = tempfile::Builder::new()
        .prefix("stripestore-bench-cold-map-")
        .tempdir_in(base)?;
    let paths: Vec<PathBuf> = (0..6).map(|i| dir.path().join(format!("m{i}"))).collect();
    for path in &paths {
        std::fs::File::create(path)?.set_len(args.member_size)?;
    }
    let mut options = CreateOptions::new("rs:4+2".parse()?);
    options.chunk_bytes = PAGE;
    options.format = FormatVersion::V4(V4Options {
        sectored_leaves: !args.plain_leaves,
        ..V4Options::default()
    });
    let map_read_bytes = if args.plain_leaves { PAGE } else { BLOCK };
    options.open.background_rebuild = false;
    let pool = Pool::create_paths(&paths, &[], &options)?;
    let volume_bytes = pool.size();
    let (blocks, map_leaf_bytes) = if args.nbd {
        fill_span(&pool, args.span.min(volume_bytes))?
    } else {
        write_scattered(&pool, args.blocks)?
    };
    pool.close()?;
    // Warm: the whole map (and room to spare); cold: a tenth of its leaves.
    let warm_cache = (2 * map_leaf_bytes).max(64 << 20);
    let cold_cache = args
        .cold_cache
        .unwrap_or((map_leaf_bytes / 10).max(4 * PAGE));
    let mut warm = Vec::new();
    let mut cold = Vec::new();
    let mut device_runs: Vec<(f64, f64)> = Vec::new();
    for run in 0..args.runs {
        for (cache, into) in [(warm_cache, &mut warm), (cold_cache, &mut cold)] {
            let measured = if args.nbd {
                measure_nbd(
                    &paths,
                    args.span.min(volume_bytes),
                    cache,
                    cache == warm_cache,
                    args,
                    dir.path(),
                )?
            } else {
                measure(&paths, &blocks, cache, args, run as u64)?
            };
            if !args.json {
                println!(
                    "run {run}: cache {:>7} KiB: {:>9.0} reads/s, {:.2} map pages read per read{}",
                    cache >> 10,
                    measured.rate,
                    measured.pages,
                    measured
                        .latency
                        .map_or_else(String::new, |(p50, p99)| format!(
                            ", p50 {p50:.0} us, p99 {p99:.0} us"
                        ))
                );
            }
            into.push(measured);
        }
        if args.nbd {
            let pages = cold.last().map_or(0.0, |c: &Sample| c.pages);
            let map_reads = pages * PAGE as f64 / map_read_bytes as f64;
            let (random_4k, cold_pattern) =
                measure_devices(&paths, args, map_reads, map_read_bytes, dir.path())?;
            if !args.json {
                println!(
                    "run {run}: devices at depth {}: {random_4k:>9.0} random 4 KiB reads/s, \
                     {cold_pattern:>9.0} cold reads/s at most (4 KiB + {map_reads:.2} x {} KiB)",
                    args.depth,
                    map_read_bytes >> 10
                );
            }
            device_runs.push((random_4k, cold_pattern));
        }
    }
    let summarize = |cache_bytes: u64, runs: &[Sample]| {
        let rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
        let (median, min, max) = spread(&rates);
        let pages: Vec<f64> = runs.iter().map(|r| r.pages).collect();
        let latency: Vec<(f64, f64)> = runs.iter().filter_map(|r| r.latency).collect();
        let p50: Vec<f64> = latency.iter().map(|l| l.0).collect();
        let p99: Vec<f64> = latency.iter().map(|l| l.1).collect();
        CacheReport {
            cache_bytes,
            reads_per_s: rates,
            median,
            min,
            max,
            pages_per_read: spread(&pages).0,
            p50_us: (!p50.is_empty()).then(|| spread(&p50).0),
            p99_us: (!p99.is_empty()).then(|| spread(&p99).0),
        }
    };
    let warm = summarize(warm_cache, &warm);
    let cold = summarize(cold_cache, &cold);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let devices = (!device_runs.is_empty()).then(|| {
        let random_4k: Vec<f64> = device_runs.iter().map(|d| d.0).collect();
        let cold_pattern: Vec<f64> = device_runs.iter().map(|d| d.1).collect();
        let ceiling = spread(&cold_pattern).0;
        DeviceReport {
            ceiling_over_warm: ratio(ceiling, warm.median),
            cold_over_ceiling: ratio(cold.median, ceiling),
            random_4k,
            cold_pattern,
        }
    });
    let report = Report {
        volume_bytes,
        blocks: blocks.len() as u64,
        map_leaf_bytes,
        map_read_bytes,
        cold_over_warm: ratio(cold.median, warm.median),
        warm,
        cold,
        devices,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}volume {} GiB, {} blocks written, map leaves {} MiB\n\
             warm (cache {} MiB): {:.0} reads/s (min {:.0}, max {:.0}), {:.2} pages/read\n\
             cold (cache {} KiB): {:.0} reads/s (min {:.0}, max {:.0}), {:.2} pages/read\n\
             cold / warm = {:.2} (goal >= 0.7)",
            if args.nbd {
                format!("over NBD, fio depth {}: ", args.depth)
            } else {
                format!("{} reader threads: ", args.threads)
            },
            report.volume_bytes >> 30,
            report.blocks,
            report.map_leaf_bytes >> 20,
            report.warm.cache_bytes >> 20,
            report.warm.median,
            report.warm.min,
            report.warm.max,
            report.warm.pages_per_read,
            report.cold.cache_bytes >> 10,
            report.cold.median,
            report.cold.min,
            report.cold.max,
            report.cold.pages_per_read,
            report.cold_over_warm
        );
        if let Some(devices) = &report.devices {
            let (random, _, _) = spread(&devices.random_4k);
            let (ceiling, low, high) = spread(&devices.cold_pattern);
            println!(
                "devices (fio io_uring, depth {}): random 4 KiB {random:.0} reads/s; \
                 cold pattern {ceiling:.0} cold reads/s at most (min {low:.0}, max {high:.0})\n\
                 ceiling / warm = {:.2} (the highest cold / warm the disk allows), \
                 cold / ceiling = {:.2}",
                args.depth, devices.ceiling_over_warm, devices.cold_over_ceiling
            );
        }
    }
    Ok(())
}

/// The member files' limits at `args.depth` over their written extent (a quarter of the span
/// each: rs:4+2 puts span × 6/4 bytes on six members): random 4 KiB reads/s, and the cold
/// reads/s of a mix of 4 KiB reads with `map_reads` reads of `map_read_bytes` per 4 KiB one
/// (one cold read).
fn measure_devices(
    paths: &[PathBuf],
    args: &BenchColdMapArgs,
    map_reads: f64,
    map_read_bytes: u64,
    scratch: &std::path::Path,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let span = args.span.min(args.member_size) / 4 / BLOCK * BLOCK;
    let job = |mixed_with| fio::Job {
        pattern: Pattern::RandRead,
        block_bytes: BLOCK,
        queue_depth: args.depth,
        target: Target::AcrossFiles {
            paths: paths.to_vec(),
            span_bytes: span,
            direct: true,
        },
        seconds: Some(args.seconds),
        mixed_with,
    };
    let random = job(None).run(scratch)?.iops;
    if map_read_bytes == BLOCK {
        // Map reads of 4 KiB: the mix is the random 4 KiB reads themselves.
        return Ok((random, random / (1.0 + map_reads)));
    }
    // The share of requests that are map reads: p of them per 1 data read.
    let percent = (100.0 * map_reads / (1.0 + map_reads))
        .round()
        .clamp(0.0, 100.0) as u32;
    let mix = job(Some((map_read_bytes, percent))).run(scratch)?.iops;
    let per_read = 100.0 / f64::from((100 - percent).max(1));
    Ok((random, mix / per_read))
}

/// One measurement: reads per second, map pages read per read beyond the data, and fio's
/// completion latency p50/p99 in microseconds (NBD only).
struct Sample {
    rate: f64,
    pages: f64,
    latency: Option<(f64, f64)>,
}

/// Write `count` random 4 KiB blocks uniformly over the volume (each in a leaf of its own,
/// mostly), flushing every 64. Returns the blocks written and the bytes of map leaves they use.
fn write_scattered(pool: &Pool, count: u64) -> Result<(Vec<u64>, u64), Box<dyn std::error::Error>> {
    let mut rng = ChaCha8Rng::seed_from_u64(0xc01d);
    let mut blocks: Vec<u64> = (0..count)
        .map(|_| rng.gen_range(0..pool.size() / BLOCK))
        .collect();
    blocks.sort_unstable();
    blocks.dedup();
    let mut leaves: Vec<u64> = blocks.iter().map(|b| b / LEAF_BLOCKS).collect();
    leaves.dedup();
    for (i, block) in blocks.iter().enumerate() {
        pool.write_at(block * BLOCK, &pattern(*block))?;
        if i % 64 == 63 {
            pool.flush()?;
        }
    }
    Ok((blocks, leaves.len() as u64 * PAGE))
}

/// Write the first `span` bytes of the volume whole, 4 MiB at a time (every block its own
/// pattern), and flush. Returns no block list (the reads are fio's) and the bytes of map
/// leaves the span uses.
fn fill_span(pool: &Pool, span: u64) -> Result<(Vec<u64>, u64), Box<dyn std::error::Error>> {
    let piece = LEAF_BLOCKS * BLOCK;
    let mut offset = 0;
    while offset < span {
        let length = piece.min(span - offset);
        let data: Vec<u8> = (offset / BLOCK..(offset + length) / BLOCK)
            .flat_map(pattern)
            .collect();
        pool.write_at(offset, &data)?;
        offset += length;
    }
    pool.flush()?;
    Ok((Vec::new(), span.div_ceil(piece) * PAGE))
}

/// The pool on `paths`, opened with `cache` bytes of map cache and no background work.
fn open_with_cache(paths: &[PathBuf], cache: u64) -> Result<Arc<Pool>, stripestore::Error> {
    let options = OpenOptions {
        map_cache_bytes: usize::try_from(cache).unwrap_or(usize::MAX),
        background_rebuild: false,
        ..OpenOptions::default()
    };
    Ok(Arc::new(Pool::open_paths(paths, &options)?))
}

/// The bytes read from the members since the pool was opened.
fn read_bytes(pool: &Pool) -> u64 {
    pool.device_io()
        .iter()
        .map(|(_, io)| io.read_bytes.load(Ordering::Relaxed))
        .sum()
}

/// Open the pool with `cache` bytes of map cache and serve it on a Unix socket; when `warm`,
/// look every block of the span up first (its whole map then cached). fio's `nbd` engine
/// reads random 4 KiB blocks of the span at `args.depth` for `args.seconds`.
fn measure_nbd(
    paths: &[PathBuf],
    span: u64,
    cache: u64,
    warm: bool,
    args: &BenchColdMapArgs,
    scratch: &std::path::Path,
) -> Result<Sample, Box<dyn std::error::Error>> {
    let pool = open_with_cache(paths, cache)?;
    if warm {
        let mut offset = 0;
        while offset < span {
            let runs = pool.allocation(offset, span - offset)?;
            offset = runs.last().map_or(span, |r| r.offset + r.length);
        }
    }
    let socket = scratch.join("cold-map.sock");
    let served = Served::start(&pool, &socket, "bench-cold-map-server")?;
    let before = read_bytes(&pool);
    let job = fio::Job {
        pattern: Pattern::RandRead,
        block_bytes: BLOCK,
        queue_depth: args.depth,
        target: Target::Nbd {
            socket,
            span_bytes: span,
            connections: 1,
        },
        seconds: Some(args.seconds),
        mixed_with: None,
    };
    let outcome = job.run(scratch);
    served.finish()?;
    let outcome = outcome?;
    let reads = outcome.iops * args.seconds;
    let extra = read_bytes(&pool).saturating_sub(before) as f64 - reads * BLOCK as f64;
    match Arc::try_unwrap(pool) {
        Ok(pool) => pool.close()?,
        Err(_) => return Err("the pool is still shared after the server stopped".into()),
    }
    Ok(Sample {
        rate: outcome.iops,
        pages: (extra / reads.max(1.0) / PAGE as f64).max(0.0),
        latency: Some((outcome.p50_us, outcome.p99_us)),
    })
}

/// The bytes block `block` holds.
fn pattern(block: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; BLOCK as usize];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(block ^ (i as u64).rotate_left(17)).to_le_bytes());
    }
    bytes
}

/// Open the pool with `cache` bytes of map cache, read every block once, then time
/// `args.reads` random reads of written blocks on `args.threads` threads, each checked.
/// Returns (reads per second, map pages read per read beyond the data).
fn measure(
    paths: &[PathBuf],
    blocks: &[u64],
    cache: u64,
    args: &BenchColdMapArgs,
    run: u64,
) -> Result<Sample, Box<dyn std::error::Error>> {
    let pool = open_with_cache(paths, cache)?;
    let mut buf = vec![0u8; BLOCK as usize];
    for block in blocks {
        pool.read_at(block * BLOCK, &mut buf)?;
    }
    let before = read_bytes(&pool);
    let per_thread = args.reads / args.threads.max(1);
    let started = Instant::now();
    let threads: Vec<_> = (0..args.threads.max(1))
        .map(|t| {
            let pool = Arc::clone(&pool);
            let blocks = blocks.to_vec();
            std::thread::spawn(move || -> Result<(), String> {
                let mut rng = ChaCha8Rng::seed_from_u64(run << 16 | t);
                let mut buf = vec![0u8; BLOCK as usize];
                for _ in 0..per_thread {
                    let block = blocks[rng.gen_range(0..blocks.len())];
                    pool.read_at(block * BLOCK, &mut buf)
                        .map_err(|e| e.to_string())?;
                    if buf != pattern(block) {
                        return Err(format!("block {block} read back wrong"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread.join().map_err(|_| "a reader panicked")??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let reads = per_thread * args.threads.max(1);
    let extra = read_bytes(&pool).saturating_sub(before) as f64 - (reads * BLOCK) as f64;
    drop(pool);
    Ok(Sample {
        rate: reads as f64 / seconds,
        pages: (extra / reads as f64 / PAGE as f64).max(0.0),
        latency: None,
    })
}
