//! `stripestore bench-members`: the pool on members served over NBD against the same pool on
//! local member files, in one run (issue 18: "a measurement of throughput with NBD members
//! against local members in the same run").
//!
//! Per run and per kind (local, then NBD), six member files of `--member-size` are made in a
//! work directory under /var/tmp; for NBD each is served by its own `nbdkit file` on a Unix
//! socket and the pool is created on the `nbd+unix://` URIs (the project's `NbdDevice`,
//! pipelined, up to four connections when nbdkit offers multi-conn). Through the library:
//! a sequential write of `--bytes` in 1 MiB requests from `--threads` writers (then a flush),
//! a sequential read of the same, and `--seconds` of random 4 KiB reads from `--threads`
//! readers. Reported: MiB/s and reads/s for both kinds, median (min–max) over the runs, and the
//! ratio NBD / local of each run.

use crate::bench::spread;
use crate::nbdkit::Nbdkit;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stripestore::pool::{CreateOptions, Pool};
use stripestore::types::parse_size;

/// One figure of a run.
type Pick = dyn Fn(&Figures) -> f64;

/// Arguments of `stripestore bench-members`.
#[derive(clap::Args, Debug)]
pub struct BenchMembersArgs {
    /// Layout (six members for rs:4+2; the layout's smallest device count otherwise).
    #[arg(long, default_value = "rs:4+2")]
    layout: String,
    /// Size of each member file.
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    member_size: u64,
    /// Bytes written (then read) sequentially.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    bytes: u64,
    /// Seconds of random 4 KiB reads.
    #[arg(long, default_value = "5")]
    seconds: u64,
    /// Writer and reader threads.
    #[arg(long, default_value = "8")]
    threads: usize,
    /// Runs (each makes both pools anew).
    #[arg(long, default_value = "3")]
    runs: usize,
    /// nbdkit's `file` plugin cache mode: `default` (its reads and writes go through the page
    /// cache, where local members use O_DIRECT) or `none` (it drops what it touched from the
    /// cache after each request).
    #[arg(long, default_value = "default", value_parser = ["default", "none"])]
    nbdkit_cache: String,
    /// Where the member files go (default: a temporary directory under /var/tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Debug, Default, Clone, Copy)]
struct Figures {
    write_mib_s: f64,
    read_mib_s: f64,
    random_reads_per_s: f64,
}

#[derive(Serialize, Debug)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Self {
        let (median, min, max) = spread(values);
        Self { median, min, max }
    }
}

#[derive(Serialize, Debug)]
struct Row {
    figure: &'static str,
    local: Spread,
    nbd: Spread,
    ratio: Spread,
}

#[derive(Serialize, Debug)]
struct Report {
    layout: String,
    member_bytes: u64,
    bytes: u64,
    threads: usize,
    runs: Vec<(Figures, Figures)>,
    rows: Vec<Row>,
}

/// Serve each of `files` with `nbdkit file` on a socket beside it; the servers (stopped on
/// drop) and their URIs.
fn serve(
    files: &[PathBuf],
    cache: &str,
) -> Result<(Vec<Nbdkit>, Vec<PathBuf>), Box<dyn std::error::Error>> {
    let mut servers = Vec::new();
    let mut uris = Vec::new();
    for file in files {
        let socket = file.with_extension("sock");
        servers.push(
            Nbdkit::start(
                &socket,
                &[
                    "file".into(),
                    file.clone().into_os_string(),
                    format!("cache={cache}").into(),
                ],
            )
            .map_err(|e| format!("{e} (needed to serve the members)"))?,
        );
        uris.push(PathBuf::from(format!(
            "nbd+unix:///?socket={}",
            socket.display()
        )));
    }
    Ok((servers, uris))
}

/// Run the benchmark.
///
/// # Errors
/// A file, server, pool or thread that cannot be made; a read that does not return its data.
pub fn run(args: &BenchMembersArgs) -> Result<(), Box<dyn std::error::Error>> {
    let layout: stripestore::Layout = args.layout.parse()?;
    let devices = match layout {
        stripestore::Layout::Mirror { copies } => copies,
        stripestore::Layout::Raid10 { copies } => 2 * copies,
        stripestore::Layout::ReedSolomon { data, parity } => data + parity,
    };
    let base = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let mut runs = Vec::new();
    for run in 0..args.runs {
        let mut pair = [Figures::default(); 2];
        for (k, remote) in [false, true].into_iter().enumerate() {
            let dir = tempfile::Builder::new()
                .prefix("stripestore-bench-members-")
                .tempdir_in(&base)?;
            let files: Vec<PathBuf> = (0..devices)
                .map(|i| dir.path().join(format!("m{i}")))
                .collect();
            for file in &files {
                std::fs::File::create(file)?.set_len(args.member_size)?;
            }
            let (_servers, paths) = if remote {
                let (servers, uris) = serve(&files, &args.nbdkit_cache)?;
                (Some(servers), uris)
            } else {
                (None, files.clone())
            };
            pair[k] = measure(&paths, layout, args, dir.path())?;
            if !args.json {
                let f = pair[k];
                println!(
                    "run {run} {}: write {:.0} MiB/s, read {:.0} MiB/s, 4K random reads {:.0}/s",
                    if remote { "nbd  " } else { "local" },
                    f.write_mib_s,
                    f.read_mib_s,
                    f.random_reads_per_s
                );
            }
        }
        runs.push((pair[0], pair[1]));
    }
    let column = |f: &dyn Fn(&Figures) -> f64| -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let local: Vec<f64> = runs.iter().map(|(l, _)| f(l)).collect();
        let nbd: Vec<f64> = runs.iter().map(|(_, n)| f(n)).collect();
        let ratio = local
            .iter()
            .zip(&nbd)
            .map(|(l, n)| if *l > 0.0 { n / l } else { 0.0 })
            .collect();
        (local, nbd, ratio)
    };
    let figures: [(&'static str, &Pick); 3] = [
        ("sequential write MiB/s", &|f| f.write_mib_s),
        ("sequential read MiB/s", &|f| f.read_mib_s),
        ("random 4 KiB reads/s", &|f| f.random_reads_per_s),
    ];
    let rows: Vec<Row> = figures
        .iter()
        .map(|(figure, f)| {
            let (local, nbd, ratio) = column(*f);
            Row {
                figure,
                local: Spread::of(&local),
                nbd: Spread::of(&nbd),
                ratio: Spread::of(&ratio),
            }
        })
        .collect();
    let report = Report {
        layout: args.layout.clone(),
        member_bytes: args.member_size,
        bytes: args.bytes,
        threads: args.threads,
        runs,
        rows,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "\n| figure | local members | NBD members (nbdkit file, Unix sockets) | NBD / local |"
        );
        println!("|---|---|---|---|");
        for row in &report.rows {
            println!(
                "| {} | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) | **{:.2}** ({:.2}–{:.2}) |",
                row.figure,
                row.local.median,
                row.local.min,
                row.local.max,
                row.nbd.median,
                row.nbd.min,
                row.nbd.max,
                row.ratio.median,
                row.ratio.min,
                row.ratio.max
            );
        }
    }
    Ok(())
}

/// One pool on `paths`: sequential write and read of `args.bytes`, then random reads.
fn measure(
    paths: &[PathBuf],
    layout: stripestore::Layout,
    args: &BenchMembersArgs,
    _dir: &Path,
) -> Result<Figures, Box<dyn std::error::Error>> {
    let mut options = CreateOptions::new(layout);
    options.device_bytes = Some(args.member_size);
    options.open.background_rebuild = false;
    let pool = Arc::new(Pool::create_paths(paths, &[], &options)?);
    let mib = 1u64 << 20;
    let bytes = (args.bytes / mib * mib).min(pool.size() / mib * mib);
    let threads = args.threads.max(1) as u64;
    let chunks = bytes / mib;
    let parallel = |write: bool| -> Result<f64, String> {
        let started = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || -> Result<(), String> {
                    let mut buf = vec![0u8; mib as usize];
                    for chunk in (t..chunks).step_by(threads as usize) {
                        if write {
                            buf.fill((chunk % 251) as u8 + 1);
                            pool.write_at(chunk * mib, &buf)
                                .map_err(|e| e.to_string())?;
                        } else {
                            pool.read_at(chunk * mib, &mut buf)
                                .map_err(|e| e.to_string())?;
                            if buf.iter().any(|b| *b != (chunk % 251) as u8 + 1) {
                                return Err(format!("the MiB at {chunk} read back wrong"));
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| "a thread panicked".to_string())??;
        }
        if write {
            pool.flush().map_err(|e| e.to_string())?;
        }
        Ok((chunks as f64) / started.elapsed().as_secs_f64())
    };
    let write_mib_s = parallel(true)?;
    let read_mib_s = parallel(false)?;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (pool, stop, reads) = (Arc::clone(&pool), Arc::clone(&stop), Arc::clone(&reads));
            std::thread::spawn(move || -> Result<(), String> {
                let mut rng = ChaCha8Rng::seed_from_u64(0x18b0 + t);
                let mut buf = vec![0u8; 4096];
                let blocks = chunks * (mib / 4096);
                while !stop.load(Ordering::Acquire) {
                    let block = rng.gen_range(0..blocks);
                    pool.read_at(block * 4096, &mut buf)
                        .map_err(|e| e.to_string())?;
                    if buf[0] != ((block * 4096 / mib) % 251) as u8 + 1 {
                        return Err(format!("block {block} read back wrong"));
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(args.seconds));
    stop.store(true, Ordering::Release);
    for handle in handles {
        handle
            .join()
            .map_err(|_| "a reader panicked".to_string())??;
    }
    let random_reads_per_s = reads.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    if let Ok(pool) = Arc::try_unwrap(pool) {
        pool.close()?;
    }
    Ok(Figures {
        write_mib_s,
        read_mib_s,
        random_reads_per_s,
    })
}
