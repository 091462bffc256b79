//! `stripestore bench-metadata`: the paged map of format version 4 (`stripestore::meta`) at
//! volume sizes up to 16 TiB on sparse files: create and open time, peak RSS of each phase in
//! a process of its own, bytes a flush writes, pages a sync writes after one 4 KiB write, open
//! after a kill (log replay), and random lookups with a cold and a warm page cache.
//!
//! What it measures is the map alone: data blocks are named in the map (rows noted with their
//! crcs, as the pool will) but no data bytes are written, and the pool does not use this map
//! yet. Each phase runs in a child process (`--phase`) so its peak RSS (`VmHWM`) is its own.

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use stripestore::device::{DeviceIo, FileDevice, Metered, SharedDevice};
use stripestore::geometry::{Geometry, Layout};
use stripestore::meta::{CommitReport, MapOptions, MapStore, RadixTree};
use stripestore::testing::MetaWriter;
use stripestore::types::parse_size;

const POOL: [u8; 16] = *b"bench-metadata\0\0";
const TIMELINE: u64 = 0x6265_6e63_6800;
const MEMBERS: usize = 6;
const UBERBLOCK_SLOTS: u64 = 128;
const LOG_HALF: u64 = 8 << 20;
const CHUNK: u64 = 16 << 10;

/// Arguments of `stripestore bench-metadata`.
#[derive(clap::Args, Debug)]
pub struct BenchMetadataArgs {
    /// Volume sizes (rs:4+2 on six sparse files of a quarter of it each), comma-separated.
    #[arg(long, default_value = "1T,4T,16T", value_delimiter = ',')]
    volume: Vec<String>,
    /// Random 4 KiB writes named in the map (uniform over the volume: the worst case for
    /// metadata), with a flush every 32.
    #[arg(long, default_value = "4096")]
    writes: u64,
    /// Random lookups per read measurement.
    #[arg(long, default_value = "20000")]
    lookups: u64,
    /// Page cache of the map (the warm case; the cold case gets a tenth of the map written).
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    map_cache: u64,
    /// Where the sparse files go (default: a temporary directory under /var/tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Internal: run one phase in this process on `--dir` and print its JSON.
    #[arg(long, hide = true)]
    phase: Option<String>,
}

/// What one phase reports.
#[derive(Serialize, serde::Deserialize, Debug, Default, Clone)]
struct Phase {
    millis: f64,
    peak_rss_kib: u64,
    bytes_written: u64,
    bytes_read: u64,
    flushes: u64,
    /// Phase-specific figures.
    #[serde(default)]
    extra: std::collections::BTreeMap<String, f64>,
}

/// The report for one volume size.
#[derive(Serialize, Debug)]
struct VolumeReport {
    volume: String,
    volume_bytes: u64,
    map_depth: u8,
    summary_depth: u8,
    usage_depth: u8,
    segments: u64,
    create: Phase,
    open_empty: Phase,
    write: Phase,
    open_after_kill: Phase,
    open_clean: Phase,
    reads: Phase,
}

fn geometry(device_bytes: u64) -> stripestore::Result<Geometry> {
    let layout: Layout = "rs:4+2"
        .parse()
        .map_err(|e| stripestore::Error::InvalidConfig(format!("{e}")))?;
    Geometry::new_v4(
        layout,
        MEMBERS,
        CHUNK,
        device_bytes,
        UBERBLOCK_SLOTS,
        LOG_HALF,
    )
}

/// Member size for a volume of `volume` bytes: a quarter of it (rs:4+2 carries 4 data chunks
/// in 6) plus the fixed areas, rounded to 64 KiB.
fn member_bytes(volume: u64) -> u64 {
    let fixed = 2 * 64 * 1024 + 2 * UBERBLOCK_SLOTS * 4096 + 2 * LOG_HALF + 64 * 1024;
    (volume / 4 + fixed).div_ceil(64 * 1024) * 64 * 1024
}

fn options(geometry: &Geometry, cache: u64) -> MapOptions {
    let blocks = geometry.slots * geometry.data_chunks() as u64 * (CHUNK / 4096);
    MapOptions {
        cache_bytes: usize::try_from(cache).unwrap_or(usize::MAX),
        depth: RadixTree::depth_for(blocks, 10),
        ..MapOptions::default()
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// A small seeded generator, so that every phase sees the same keys.
struct Keys(u64);
impl Keys {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) % below
    }
}

fn open_members(
    dir: &Path,
    size: Option<u64>,
    io: &Arc<DeviceIo>,
) -> stripestore::Result<Vec<Option<SharedDevice>>> {
    (0..MEMBERS)
        .map(|i| {
            let file = FileDevice::open_or_create(&dir.join(format!("member{i}")), size)?;
            Ok(Some(Metered::wrap(Arc::new(file), io)))
        })
        .collect()
}

/// Run one phase in this process (the child side).
fn run_phase(phase: &str, dir: &Path, args: &BenchMetadataArgs) -> stripestore::Result<Phase> {
    let volume = parse_size(&args.volume[0]).map_err(stripestore::Error::InvalidConfig)?;
    let device_bytes = member_bytes(volume);
    let geometry = geometry(device_bytes)?;
    let io = Arc::new(DeviceIo::default());
    let devices = open_members(dir, Some(device_bytes), &io)?;
    let keys_in_volume = geometry.slots * 4 * (CHUNK / 4096);
    let open = |options: &MapOptions| MapStore::open(&devices, POOL, &geometry, TIMELINE, options);
    let mut report = Phase::default();
    let started = Instant::now();
    match phase {
        "create" => {
            MapStore::create(
                &devices,
                POOL,
                &geometry,
                TIMELINE,
                &options(&geometry, args.map_cache),
            )?;
        }
        "open" => {
            let look = MapOptions {
                read_only: true,
                ..options(&geometry, args.map_cache)
            };
            let map = open(&look)?;
            let opened = map.open_report();
            report
                .extra
                .insert("records_replayed".into(), opened.records_replayed as f64);
            report
                .extra
                .insert("usage_leaves_read".into(), opened.usage_leaves_read as f64);
        }
        "write" => {
            let mut map = open(&options(&geometry, args.map_cache))?;
            let mut writer = MetaWriter::new(&geometry);
            let mut keys = Keys(1);
            let mut log_bytes = 0u64;
            let mut commits = 0u64;
            for i in 0..args.writes {
                writer.write(&mut map, &devices, &[keys.next(keys_in_volume)])?;
                if i % 32 == 31 {
                    let before = io.write_bytes.load(Ordering::Relaxed);
                    if let CommitReport::Logged { .. } = map.commit(&devices)? {
                        log_bytes += io.write_bytes.load(Ordering::Relaxed) - before;
                        commits += 1;
                    }
                }
            }
            map.commit(&devices)?;
            let sync = map.sync(&devices)?;
            report.extra.insert("flushes_logged".into(), commits as f64);
            report.extra.insert(
                "bytes_per_flush".into(),
                log_bytes as f64 / commits.max(1) as f64,
            );
            report
                .extra
                .insert("sync_pages_after_writes".into(), sync.pages_written as f64);
            // One 4 KiB write, a flush, and a sync: the pages of one path per tree.
            writer.write(&mut map, &devices, &[keys.next(keys_in_volume)])?;
            let before = io.write_bytes.load(Ordering::Relaxed);
            map.commit(&devices)?;
            report.extra.insert(
                "one_write_flush_bytes".into(),
                (io.write_bytes.load(Ordering::Relaxed) - before) as f64,
            );
            let before = io.write_bytes.load(Ordering::Relaxed);
            let one = map.sync(&devices)?;
            report
                .extra
                .insert("one_write_sync_pages".into(), one.pages_written as f64);
            report.extra.insert(
                "one_write_sync_bytes".into(),
                (io.write_bytes.load(Ordering::Relaxed) - before) as f64,
            );
            // Then flushes without a sync, and a kill: the next open replays them.
            for i in 0..256u64 {
                writer.write(&mut map, &devices, &[keys.next(keys_in_volume)])?;
                if i % 32 == 31 {
                    map.commit(&devices)?;
                }
            }
            // Killed: no close, no sync (the map writes nothing when dropped).
            std::mem::forget(map);
        }
        "settle" => {
            // A writable open drains the replayed log with one sync.
            let mut map = open(&options(&geometry, args.map_cache))?;
            map.sync(&devices)?;
            map.check_usage(&devices)?;
        }
        "reads" => {
            // The keys the write phase set (its first `writes`), looked up at random.
            let mut keys = Keys(1);
            let written: Vec<u64> = (0..args.writes)
                .map(|_| keys.next(keys_in_volume))
                .collect();
            let leaves = written.len() as u64 * 16384;
            for (name, cache) in [
                ("cold", (leaves / 10).max(4 * 16384)),
                ("warm", args.map_cache),
            ] {
                let look = MapOptions {
                    read_only: true,
                    ..options(&geometry, cache)
                };
                let map = open(&look)?;
                // One pass over every key to load what fits, then the measured one.
                for key in &written {
                    map.get(&devices, *key)?;
                }
                let mut pick = Keys(7);
                let read_before = io.reads.load(Ordering::Relaxed);
                let t = Instant::now();
                for _ in 0..args.lookups {
                    map.get(&devices, written[pick.next(written.len() as u64) as usize])?;
                }
                let secs = t.elapsed().as_secs_f64();
                report
                    .extra
                    .insert(format!("{name}_lookups_per_s"), args.lookups as f64 / secs);
                report.extra.insert(
                    format!("{name}_page_reads_per_lookup"),
                    (io.reads.load(Ordering::Relaxed) - read_before) as f64 / args.lookups as f64,
                );
            }
        }
        other => {
            return Err(stripestore::Error::InvalidConfig(format!(
                "unknown phase {other}"
            )))
        }
    }
    report.millis = started.elapsed().as_secs_f64() * 1000.0;
    report.peak_rss_kib = peak_rss_kib();
    report.bytes_written = io.write_bytes.load(Ordering::Relaxed);
    report.bytes_read = io.read_bytes.load(Ordering::Relaxed);
    report.flushes = io.flushes.load(Ordering::Relaxed);
    Ok(report)
}

fn child(phase: &str, dir: &Path, volume: &str, args: &BenchMetadataArgs) -> Result<Phase, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let output = Command::new(exe)
        .arg("bench-metadata")
        .arg("--phase")
        .arg(phase)
        .arg("--dir")
        .arg(dir)
        .arg("--volume")
        .arg(volume)
        .arg("--writes")
        .arg(args.writes.to_string())
        .arg("--lookups")
        .arg(args.lookups.to_string())
        .arg("--map-cache")
        .arg(args.map_cache.to_string())
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "phase {phase} at {volume}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("phase {phase}: {e}"))
}

/// Entry point of `stripestore bench-metadata`.
///
/// # Errors
/// When a phase fails.
pub fn run(args: &BenchMetadataArgs) -> Result<(), String> {
    if let Some(phase) = &args.phase {
        let dir = args.dir.as_ref().ok_or("--phase needs --dir")?;
        let report = run_phase(phase, dir, args).map_err(|e| e.to_string())?;
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    let mut reports = Vec::new();
    for volume in &args.volume {
        let bytes = parse_size(volume)?;
        let base = args
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/tmp"));
        let dir = tempfile::Builder::new()
            .prefix("stripestore-bench-metadata-")
            .tempdir_in(&base)
            .map_err(|e| format!("{}: {e}", base.display()))?;
        let geometry = geometry(member_bytes(bytes)).map_err(|e| e.to_string())?;
        let map_options = options(&geometry, args.map_cache);
        let segments = geometry.slots / map_options.segment_slots;
        eprintln!(
            "bench-metadata: {volume} (six sparse files of {})",
            member_bytes(bytes)
        );
        let path = dir.path();
        let report = VolumeReport {
            volume: volume.clone(),
            volume_bytes: bytes,
            map_depth: map_options.depth,
            // Slot records of 256 bytes for rs:4+2: 64 to a leaf.
            summary_depth: RadixTree::depth_for(geometry.slots, 6),
            usage_depth: RadixTree::depth_for(segments, 11),
            segments,
            create: child("create", path, volume, args)?,
            open_empty: child("open", path, volume, args)?,
            write: child("write", path, volume, args)?,
            open_after_kill: child("open", path, volume, args)?,
            open_clean: {
                child("settle", path, volume, args)?;
                child("open", path, volume, args)?
            },
            reads: child("reads", path, volume, args)?,
        };
        reports.push(report);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!(
        "{:<6} {:>5} {:>10} {:>12} {:>9} {:>10} {:>11} {:>10} {:>12} {:>13} {:>12} {:>12}",
        "volume",
        "depth",
        "create ms",
        "create bytes",
        "open ms",
        "open RSS",
        "kill+open",
        "flush B",
        "1-write sync",
        "sync pages",
        "cold get/s",
        "warm get/s"
    );
    for r in &reports {
        let extra = |phase: &Phase, key: &str| phase.extra.get(key).copied().unwrap_or(0.0);
        println!(
            "{:<6} {:>5} {:>10.1} {:>12} {:>9.1} {:>7} MiB {:>8.1} ms {:>10.0} {:>6} pages {:>13} {:>12.0} {:>12.0}",
            r.volume,
            r.map_depth,
            r.create.millis,
            r.create.bytes_written,
            r.open_empty.millis,
            r.open_clean.peak_rss_kib.max(r.open_after_kill.peak_rss_kib) / 1024,
            r.open_after_kill.millis,
            extra(&r.write, "bytes_per_flush"),
            extra(&r.write, "one_write_sync_pages"),
            extra(&r.write, "sync_pages_after_writes"),
            extra(&r.reads, "cold_lookups_per_s"),
            extra(&r.reads, "warm_lookups_per_s"),
        );
    }
    Ok(())
}
