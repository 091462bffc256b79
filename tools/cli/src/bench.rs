//! `stripestore bench-rebuild`: rebuild throughput as a ratio of the spare device's raw write
//! throughput, both measured in the same run on the same filesystem.
//!
//! Each run: create a pool on files, fill the whole volume, lose one device; write the same
//! number of bytes the rebuild will write to a fresh file sequentially and fdatasync it (the raw
//! baseline: fio with the `io_uring` engine, 1 MiB requests at depth 8, direct I/O where the
//! filesystem allows it, as `bench` measures the spare; this command's own buffered writer,
//! said in the report, only when fio cannot be used); then rebuild onto the spare, timed to
//! the final flush. Caches are dropped before
//! each timed part when running as root, so both read from and write to the disk alike.
//! `--spare-dir` puts the spare (and the baseline's file) elsewhere: devices in memory and
//! the spare on a disk measure the rebuild where its sources are not the bottleneck.

use super::bench_pool::{Baseline, SEQ_DEPTH, SEQ_REQUEST};
use super::fio::{self, Pattern, Target};
use super::CliResult;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;
use stripestore::types::human_bytes;
use stripestore::{CreateOptions, Layout, OpenOptions, Pool};

#[derive(Debug, Serialize)]
struct Run {
    rebuilt_bytes: u64,
    read_bytes: u64,
    raw_bytes_per_s: f64,
    rebuild_bytes_per_s: f64,
    ratio: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    layout: String,
    device_bytes: u64,
    /// What measured the spare's raw write.
    baseline: String,
    /// What fio's raw write read from: huge pages, or 4 KiB pages and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_buffers: Option<String>,
    runs: Vec<Run>,
    median_ratio: f64,
    min_ratio: f64,
    max_ratio: f64,
}

pub(crate) fn drop_caches() {
    // Root only; harmless to fail (then both parts see a warm cache alike).
    if std::env::var_os("STRIPESTORE_BENCH_WARM").is_none() {
        let _ = std::fs::write("/proc/sys/vm/drop_caches", b"3\n");
    }
}

/// The spare's raw sequential write of `bytes` onto a fresh file at `path` (sparse, as the
/// spare is when its rebuild starts), flushed at the end: fio when `baseline` says it can be
/// used, else this command's own buffered writer.
fn raw_write(
    path: &Path,
    bytes: u64,
    baseline: &Baseline,
) -> Result<f64, Box<dyn std::error::Error>> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.set_len(bytes)?;
    if let Baseline::Fio(_) = baseline {
        // O_DIRECT where the filesystem takes it (not on tmpfs), as the pool opens the spare.
        let direct = stripestore::device::open_device(path, None)?
            .io_backend()
            .contains("O_DIRECT");
        drop(file);
        drop_caches();
        let job = fio::Job {
            pattern: Pattern::SeqWrite,
            block_bytes: SEQ_REQUEST as u64,
            queue_depth: SEQ_DEPTH,
            target: Target::EachFile {
                paths: vec![path.to_path_buf()],
                span_bytes: bytes,
                direct,
            },
            seconds: None,
            mixed_with: None,
        };
        let scratch = path.parent().unwrap_or_else(|| Path::new("."));
        return Ok(job.run(scratch)?.bytes_per_s);
    }
    let mut buf = vec![0u8; 4 << 20];
    ChaCha8Rng::seed_from_u64(1).fill_bytes(&mut buf);
    drop_caches();
    let started = Instant::now();
    let mut offset = 0;
    while offset < bytes {
        let n = usize::try_from((bytes - offset).min(buf.len() as u64))?;
        file.write_all_at(&buf[..n], offset)?;
        offset += n as u64;
    }
    file.sync_data()?;
    #[allow(clippy::cast_precision_loss)]
    Ok(bytes as f64 / started.elapsed().as_secs_f64())
}

fn one_run(
    layout: Layout,
    device_bytes: u64,
    dir: &Path,
    spare_dir: Option<&Path>,
    baseline: &Baseline,
) -> Result<Run, Box<dyn std::error::Error>> {
    let spare_dir = spare_dir.unwrap_or(dir);
    let count = super::demo::device_count(layout);
    let paths: Vec<PathBuf> = (0..count)
        .map(|i| dir.join(format!("bench{i}.img")))
        .collect();
    let spare = spare_dir.join("bench-spare.img");
    for path in paths.iter().chain([&spare]) {
        let _ = std::fs::remove_file(path);
    }
    let options = bench_create_options(layout, device_bytes);
    let pool = Pool::create_paths(&paths, std::slice::from_ref(&spare), &options)?;
    fill(&pool)?;
    pool.close()?;
    std::fs::remove_file(&paths[1])?;
    // Forced: the benchmark deleted the device itself.
    let open = OpenOptions {
        background_rebuild: false,
        auto_replace: true,
        force: true,
        ..OpenOptions::default()
    };
    let pool = Pool::open_paths(&paths[..1], &open)?;
    // Attach the spare (nothing copied yet), so the total is known before timing.
    pool.attach_spares();
    let total = pool.rebuild_progress().first().map_or(0, |p| p.total_bytes);
    drop(pool);
    let raw = raw_write(&spare_dir.join("bench-raw.img"), total, baseline)?;
    std::fs::remove_file(spare_dir.join("bench-raw.img"))?;
    let pool = Pool::open_paths(&paths[..1], &open)?;
    drop_caches();
    let started = Instant::now();
    let mut last = None;
    pool.run_rebuilds(|progress| {
        if let Some(p) = progress.first() {
            last = Some((p.done_bytes, p.read_bytes));
        }
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let (rebuilt, read) = last.unwrap_or((total, 0));
    pool.close()?;
    for path in paths.iter().chain([&spare]) {
        let _ = std::fs::remove_file(path);
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = rebuilt.max(total) as f64 / elapsed;
    Ok(Run {
        rebuilt_bytes: rebuilt.max(total),
        read_bytes: read,
        raw_bytes_per_s: raw,
        rebuild_bytes_per_s: rate,
        ratio: rate / raw,
    })
}

/// Write the whole volume with seeded random data.
pub(crate) fn fill(pool: &Pool) -> CliResult {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut buf = vec![0u8; 8 << 20];
    let mut offset = 0;
    while offset < pool.size() {
        let n = usize::try_from((pool.size() - offset).min(buf.len() as u64))?;
        rng.fill_bytes(&mut buf[..n]);
        pool.write_at(offset, &buf[..n])?;
        offset += n as u64;
    }
    Ok(())
}

/// Median, min and max of `values`.
pub(crate) fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    (median, sorted[0], sorted[n - 1])
}

/// The work shared by the repeated benchmarks: parse the layout, make the work directory (under
/// /var/tmp: on disk, where /tmp may be a RAM filesystem), and run `one_run` `runs` times in it,
/// printing `describe(result)` after each run unless `json`.
pub(crate) fn repeat<R>(
    layout: &str,
    dir: Option<&Path>,
    runs: usize,
    json: bool,
    one_run: impl Fn(Layout, &Path) -> Result<R, Box<dyn std::error::Error>>,
    describe: impl Fn(&R) -> String,
) -> Result<(Layout, Vec<R>), Box<dyn std::error::Error>> {
    let layout: Layout = layout.parse()?;
    let (dir, _temp) = super::work_dir(dir, Path::new("/var/tmp"))?;
    let mut results = Vec::new();
    for run in 0..runs.max(1) {
        let result = one_run(layout, &dir)?;
        if !json {
            println!("run {}: {}", run + 1, describe(&result));
            std::io::stdout().flush()?;
        }
        results.push(result);
    }
    Ok((layout, results))
}

pub fn run(
    layout: &str,
    device_bytes: u64,
    runs: usize,
    dir: Option<&Path>,
    spare_dir: Option<&Path>,
    json: bool,
) -> CliResult {
    let baseline = Baseline::detect();
    if !json {
        println!("raw baseline: {}", baseline.describe_spare());
    }
    let (layout, results) = repeat(
        layout,
        dir,
        runs,
        json,
        |layout, dir| one_run(layout, device_bytes, dir, spare_dir, &baseline),
        |result| {
            format!(
                "rebuilt {} at {}/s; raw write of the same bytes {}/s; ratio {:.2}",
                human_bytes(result.rebuilt_bytes),
                human_bytes(result.rebuild_bytes_per_s as u64),
                human_bytes(result.raw_bytes_per_s as u64),
                result.ratio
            )
        },
    )?;
    let ratios: Vec<f64> = results.iter().map(|r| r.ratio).collect();
    let (median, min, max) = spread(&ratios);
    let report = Report {
        layout: layout.to_string(),
        device_bytes,
        baseline: baseline.describe_spare(),
        raw_buffers: super::fio::raw_buffers(),
        median_ratio: median,
        min_ratio: min,
        max_ratio: max,
        runs: results,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "rebuild / raw write throughput: median {:.2} (min {:.2}, max {:.2}) over {} runs, {} on {} devices",
            report.median_ratio,
            report.min_ratio,
            report.max_ratio,
            report.runs.len(),
            report.layout,
            human_bytes(device_bytes)
        );
    }
    Ok(())
}

/// A benchmark pool of `layout` on files of `device_bytes` (no background work), on format
/// version 4 (the only one this build creates).
pub fn bench_create_options(layout: Layout, device_bytes: u64) -> CreateOptions {
    let mut options = CreateOptions::new(layout);
    options.device_bytes = Some(device_bytes);
    options.open.background_rebuild = false;
    options.format = stripestore::pool::FormatVersion::V4(stripestore::pool::V4Options::default());
    options
}
