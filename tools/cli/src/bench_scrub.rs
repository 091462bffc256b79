//! `stripestore bench-scrub`: scrub throughput as a ratio of the devices' aggregate raw read
//! throughput, both measured in the same run on the same files.
//!
//! Each run: create a pool on files and fill the whole volume; then (caches dropped when root)
//! read every device file sequentially, all at once, one thread per device (the raw bound);
//! then (caches dropped again) scrub, and divide the bytes it read by its time.
//!
//! Last, the cost to foreground I/O: random 64 KiB reads through the pool from four threads for
//! two seconds, alone and then beside scrubs running back to back; the same with random 64 KiB
//! writes (a format-version-4 scrub holds writes back for a chunk at a time). This part runs on files in
//! `/dev/shm` (memory): on disk files the scrub fills the page cache and the foreground reads
//! get *faster* beside it, which measures the cache, not the throttle. In memory, scrub and
//! foreground compete for the two cores and memory bandwidth, as they would on fast disks.
//! (`MemDevice` is not used: its per-device lock would make them compete for that instead.)

use super::bench::{bench_create_options, drop_caches, fill, repeat, spread};
use super::CliResult;
use serde::Serialize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;
use stripestore::types::human_bytes;
use stripestore::{Layout, OpenOptions, Pool, ScrubOptions};

#[derive(Debug, Serialize)]
struct Run {
    scrub_read_bytes: u64,
    scrub_bytes_per_s: f64,
    raw_read_bytes: u64,
    raw_bytes_per_s: f64,
    ratio: f64,
    foreground_alone_bytes_per_s: f64,
    foreground_beside_scrub_bytes_per_s: f64,
    /// Share of its throughput the foreground keeps while a scrub runs.
    foreground_kept: f64,
    foreground_writes_alone_bytes_per_s: f64,
    foreground_writes_beside_scrub_bytes_per_s: f64,
    /// Share of its write throughput the foreground keeps while a scrub runs.
    foreground_writes_kept: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    layout: String,
    format: u32,
    device_bytes: u64,
    runs: Vec<Run>,
    median_ratio: f64,
    min_ratio: f64,
    max_ratio: f64,
    median_foreground_kept: f64,
    median_foreground_writes_kept: f64,
}

/// Random 64 KiB reads (or writes, then a flush) through the pool from four threads for two
/// seconds; bytes per second.
fn foreground_io(pool: &Pool, write: bool) -> Result<f64, Box<dyn std::error::Error>> {
    use rand::{Rng, SeedableRng};
    const PIECE: u64 = 64 << 10;
    let pieces = pool.size() / PIECE;
    let duration = std::time::Duration::from_secs(2);
    drop_caches();
    let started = Instant::now();
    let totals: Vec<Result<u64, stripestore::Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4u64)
            .map(|thread| {
                scope.spawn(move || -> Result<u64, stripestore::Error> {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(thread);
                    let mut buf = vec![0u8; usize::try_from(PIECE).unwrap_or(65_536)];
                    let mut bytes = 0;
                    while started.elapsed() < duration {
                        let at = rng.gen_range(0..pieces) * PIECE;
                        if write {
                            rng.fill(&mut buf[..]);
                            pool.write_at(at, &buf)?;
                        } else {
                            pool.read_at(at, &mut buf)?;
                        }
                        bytes += PIECE;
                    }
                    if write {
                        pool.flush()?;
                    }
                    Ok(bytes)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or(Err(stripestore::Error::ThreadPanicked { thread: "reader" }))
            })
            .collect()
    });
    let mut bytes = 0;
    for total in totals {
        bytes += total?;
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(bytes as f64 / started.elapsed().as_secs_f64())
}

/// Foreground random-read (or write) throughput on an in-memory pool, alone and beside
/// scrubs.
fn foreground_cost(
    layout: Layout,
    device_bytes: u64,
    count: usize,
    write: bool,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let (dir, _temp) = super::work_dir(None, Path::new("/dev/shm"))?;
    let paths: Vec<PathBuf> = (0..count).map(|i| dir.join(format!("fg{i}.img"))).collect();
    let pool = Pool::create_paths(&paths, &[], &bench_create_options(layout, device_bytes))?;
    fill(&pool)?;
    let alone = foreground_io(&pool, write)?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let beside = std::thread::scope(|scope| {
        let scrubber = scope.spawn(|| -> Result<(), stripestore::Error> {
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                pool.scrub_with(&ScrubOptions::default(), |_| {})?;
            }
            Ok(())
        });
        let beside = foreground_io(&pool, write);
        stop.store(true, std::sync::atomic::Ordering::Release);
        pool.cancel_scrub()?;
        scrubber
            .join()
            .unwrap_or(Err(stripestore::Error::ThreadPanicked { thread: "scrub" }))?;
        beside
    })?;
    pool.close()?;
    for path in &paths {
        let _ = std::fs::remove_file(path);
    }
    Ok((alone, beside))
}

/// Read every file whole, concurrently; returns (bytes, bytes per second).
fn raw_read(paths: &[PathBuf]) -> Result<(u64, f64), Box<dyn std::error::Error>> {
    drop_caches();
    let started = Instant::now();
    let totals: Vec<std::io::Result<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = paths
            .iter()
            .map(|path| {
                scope.spawn(move || -> std::io::Result<u64> {
                    let file = std::fs::File::open(path)?;
                    let size = file.metadata()?.len();
                    let mut buf = vec![0u8; 4 << 20];
                    let mut offset = 0;
                    while offset < size {
                        let n = usize::try_from((size - offset).min(buf.len() as u64))
                            .unwrap_or(buf.len());
                        file.read_exact_at(&mut buf[..n], offset)?;
                        offset += n as u64;
                    }
                    Ok(size)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("reader panicked")))
            })
            .collect()
    });
    let mut bytes = 0;
    for total in totals {
        bytes += total?;
    }
    #[allow(clippy::cast_precision_loss)]
    Ok((bytes, bytes as f64 / started.elapsed().as_secs_f64()))
}

fn one_run(
    layout: Layout,
    device_bytes: u64,
    dir: &Path,
) -> Result<Run, Box<dyn std::error::Error>> {
    let count = super::demo::device_count(layout);
    let paths: Vec<PathBuf> = (0..count)
        .map(|i| dir.join(format!("scrub{i}.img")))
        .collect();
    for path in &paths {
        let _ = std::fs::remove_file(path);
    }
    let pool = Pool::create_paths(&paths, &[], &bench_create_options(layout, device_bytes))?;
    fill(&pool)?;
    pool.close()?;
    let (raw_bytes, raw_rate) = raw_read(&paths)?;
    let open = OpenOptions {
        background_rebuild: false,
        ..OpenOptions::default()
    };
    let pool = Pool::open_paths(&paths[..1], &open)?;
    drop_caches();
    let started = Instant::now();
    let report = pool.scrub_with(&ScrubOptions::default(), |_| {})?;
    let elapsed = started.elapsed().as_secs_f64();
    pool.close()?;
    let (alone, beside) = foreground_cost(layout, device_bytes, count, false)?;
    let (writes_alone, writes_beside) = foreground_cost(layout, device_bytes, count, true)?;
    for path in &paths {
        let _ = std::fs::remove_file(path);
    }
    if report.found_damage() {
        return Err(format!("the benchmark pool had damage: {report:?}").into());
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = report.bytes_read_this_run as f64 / elapsed;
    Ok(Run {
        scrub_read_bytes: report.bytes_read_this_run,
        scrub_bytes_per_s: rate,
        raw_read_bytes: raw_bytes,
        raw_bytes_per_s: raw_rate,
        ratio: rate / raw_rate,
        foreground_alone_bytes_per_s: alone,
        foreground_beside_scrub_bytes_per_s: beside,
        foreground_kept: beside / alone,
        foreground_writes_alone_bytes_per_s: writes_alone,
        foreground_writes_beside_scrub_bytes_per_s: writes_beside,
        foreground_writes_kept: writes_beside / writes_alone,
    })
}

pub fn run(
    layout: &str,
    device_bytes: u64,
    runs: usize,
    dir: Option<&Path>,
    json: bool,
) -> CliResult {
    let (layout, results) = repeat(
        layout,
        dir,
        runs,
        json,
        |layout, dir| one_run(layout, device_bytes, dir),
        |result| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let rate = |bytes_per_s: f64| human_bytes(bytes_per_s as u64);
            format!(
                "scrub read {} at {}/s; raw read of all devices at once {}/s; ratio {:.2}; foreground reads {}/s alone, {}/s beside a scrub ({:.2} kept); writes {}/s alone, {}/s beside ({:.2} kept)",
                human_bytes(result.scrub_read_bytes),
                rate(result.scrub_bytes_per_s),
                rate(result.raw_bytes_per_s),
                result.ratio,
                rate(result.foreground_alone_bytes_per_s),
                rate(result.foreground_beside_scrub_bytes_per_s),
                result.foreground_kept,
                rate(result.foreground_writes_alone_bytes_per_s),
                rate(result.foreground_writes_beside_scrub_bytes_per_s),
                result.foreground_writes_kept
            )
        },
    )?;
    let ratios: Vec<f64> = results.iter().map(|r| r.ratio).collect();
    let (median, min, max) = spread(&ratios);
    let kept: Vec<f64> = results.iter().map(|r| r.foreground_kept).collect();
    let (median_kept, min_kept, max_kept) = spread(&kept);
    let writes_kept: Vec<f64> = results.iter().map(|r| r.foreground_writes_kept).collect();
    let (median_writes_kept, min_writes_kept, max_writes_kept) = spread(&writes_kept);
    let report = Report {
        layout: layout.to_string(),
        format: 4,
        device_bytes,
        runs: results,
        median_ratio: median,
        min_ratio: min,
        max_ratio: max,
        median_foreground_kept: median_kept,
        median_foreground_writes_kept: median_writes_kept,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "scrub / raw aggregate read throughput: median {median:.2} (min {min:.2}, max {max:.2}) over {} runs, {} on {} devices, format {}",
            report.runs.len(),
            report.layout,
            human_bytes(device_bytes),
            report.format
        );
        println!(
            "foreground random-read throughput kept beside a scrub: median {median_kept:.2} (min {min_kept:.2}, max {max_kept:.2})"
        );
        println!(
            "foreground random-write throughput kept beside a scrub: median {median_writes_kept:.2} (min {min_writes_kept:.2}, max {max_writes_kept:.2})"
        );
    }
    Ok(())
}
