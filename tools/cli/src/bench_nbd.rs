//! `stripestore bench --nbd`, the server's own cost: small random reads (and sequential 1 MiB
//! reads) over NBD from a pool on memory-backed members against nbdkit's `memory` plugin, in
//! the same run, through the same client (fio's `nbd` engine on a Unix socket).
//!
//! Owns: the memory-backed pool and its server, the nbdkit child process (started here,
//! killed here by its handle), and the alternation of the two per workload and run. With no
//! disk under either, the figure is what one request costs the server: parsing, dispatch,
//! the pool's lookup and checksum, the reply. Both volumes are written whole first, so
//! neither answers reads from holes.

use super::bench_pool::{progress, BenchArgs, SEQ_DEPTH};
use super::fio::{self, Outcome, Pattern, Target};
use crate::nbdkit::{self, Nbdkit};
use crate::served::Served;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use stripestore::device::{MemDevice, SharedDevice};
use stripestore::{CreateOptions, Layout, Pool};

/// (pattern, queue depth per connection, connections) of each workload: random 4 KiB reads,
/// and sequential 1 MiB reads at the bench's depth (with no disk under either server, what
/// the client and the socket carry, beside what the pool reads from its devices).
const WORKLOADS: [(Pattern, u32, u32); 4] = [
    (Pattern::RandRead, 16, 1),
    (Pattern::RandRead, 64, 1),
    (Pattern::RandRead, 16, 4),
    (Pattern::SeqRead, SEQ_DEPTH, 1),
];

/// One workload over the runs.
#[derive(Debug, Clone, Serialize)]
pub struct CostRow {
    workload: String,
    /// `IOPS` (4 KiB reads) or `MiB/s` (1 MiB reads): the unit of the rates below.
    unit: &'static str,
    queue_depth: u32,
    connections: u32,
    /// Requests per second (`unit`; 1 MiB requests per second are MiB/s): median, min, max
    /// over the runs.
    ours_iops: (f64, f64, f64),
    ours_p50_us: f64,
    ours_p99_us: f64,
    nbdkit_iops: Option<(f64, f64, f64)>,
    nbdkit_p50_us: Option<f64>,
    nbdkit_p99_us: Option<f64>,
    /// ours / nbdkit per run: median, min, max.
    ratio: Option<(f64, f64, f64)>,
}

/// The server-cost section of the report.
#[derive(Debug, Clone, Serialize)]
pub struct ServerCost {
    layout: String,
    members: String,
    volume_bytes: u64,
    /// nbdkit's version, or why it was not measured.
    nbdkit: String,
    rows: Vec<CostRow>,
}

fn fio_job(
    socket: &Path,
    span: u64,
    pattern: Pattern,
    depth: u32,
    connections: u32,
    seconds: Option<f64>,
) -> fio::Job {
    let random = pattern == Pattern::RandRead;
    fio::Job {
        pattern,
        block_bytes: if random { 4096 } else { 1 << 20 },
        queue_depth: depth,
        target: Target::Nbd {
            socket: socket.to_path_buf(),
            span_bytes: span,
            connections,
        },
        seconds,
        mixed_with: None,
    }
}

/// Measure the server's per-request cost (see the module header). `layout`: the pool's
/// layout (`rs:4+2` if none).
///
/// # Errors
/// The pool cannot be created or served, or fio fails.
pub fn server_cost(
    layout: Option<Layout>,
    dir: &Path,
    args: &BenchArgs,
) -> Result<ServerCost, Box<dyn std::error::Error>> {
    let layout = match layout {
        Some(layout) => layout,
        None => "rs:4+2".parse()?,
    };
    let count = super::demo::device_count(layout);
    let devices: Vec<SharedDevice> = (0..count)
        .map(|i| Arc::new(MemDevice::new(format!("mem{i}"), args.device_bytes)) as SharedDevice)
        .collect();
    let mut options = CreateOptions::new(layout);
    options.chunk_bytes = args.chunk_bytes;
    options.checksum_bytes = args.checksum_bytes;
    options.open.background_rebuild = false;
    let pool = Arc::new(Pool::create(devices, vec![], &options)?);
    let span = pool.size() / (1 << 20) * (1 << 20);
    let ours: PathBuf = dir.join("bench-cost.sock");
    let served = Served::start(&pool, &ours, "bench-cost-server")?;
    let theirs = dir.join("bench-nbdkit.sock");
    let (kit, version) = match nbdkit::version() {
        Ok(version) => (
            Some(Nbdkit::start(
                &theirs,
                &["memory".into(), span.to_string().into()],
            )?),
            version,
        ),
        Err(why) => {
            eprintln!("warning: {why}; the server cost is measured without nbdkit's reference");
            (None, why)
        }
    };
    progress(&format!(
        "server cost: {layout} on {count} memory devices of {} MiB, against nbdkit memory ({version})",
        args.device_bytes >> 20
    ));
    let fill =
        |socket: &Path| fio_job(socket, span, Pattern::SeqWrite, SEQ_DEPTH, 1, None).run(dir);
    fill(&ours)?;
    if kit.is_some() {
        fill(&theirs)?;
    }
    let mut results: Vec<(Vec<Outcome>, Vec<Outcome>)> =
        vec![(Vec::new(), Vec::new()); WORKLOADS.len()];
    for run in 0..args.runs.max(1) {
        for (w, &(pattern, depth, connections)) in WORKLOADS.iter().enumerate() {
            let job = |socket: &Path| {
                fio_job(
                    socket,
                    span,
                    pattern,
                    depth,
                    connections,
                    Some(args.random_seconds),
                )
                .run(dir)
            };
            let mine = job(&ours)?;
            progress(&format!(
                "server cost, run {}: {pattern:?} depth {depth} x {connections} connection(s): ours {:.0} requests/s",
                run + 1,
                mine.iops
            ));
            results[w].0.push(mine);
            if kit.is_some() {
                let reference = job(&theirs)?;
                progress(&format!("  nbdkit memory {:.0} requests/s", reference.iops));
                results[w].1.push(reference);
            }
        }
    }
    drop(kit);
    served.finish()?;
    let volume_bytes = pool.size();
    match Arc::try_unwrap(pool) {
        Ok(pool) => pool.close()?,
        Err(_) => return Err("the pool is still shared after the server stopped".into()),
    }
    let spread = |values: Vec<f64>| super::bench::spread(&values);
    let rows = WORKLOADS
        .iter()
        .zip(results)
        .map(|(&(pattern, depth, connections), (mine, reference))| {
            let have_reference = !reference.is_empty();
            let what = if pattern == Pattern::RandRead {
                "4 KiB random read"
            } else {
                "1 MiB seq. read (MiB/s)"
            };
            CostRow {
                workload: format!("{what}, depth {depth} x {connections} connection(s)"),
                unit: if pattern == Pattern::RandRead {
                    "IOPS"
                } else {
                    "MiB/s"
                },
                queue_depth: depth,
                connections,
                ours_iops: spread(mine.iter().map(|o| o.iops).collect()),
                ours_p50_us: spread(mine.iter().map(|o| o.p50_us).collect()).0,
                ours_p99_us: spread(mine.iter().map(|o| o.p99_us).collect()).0,
                nbdkit_iops: have_reference
                    .then(|| spread(reference.iter().map(|o| o.iops).collect())),
                nbdkit_p50_us: have_reference
                    .then(|| spread(reference.iter().map(|o| o.p50_us).collect()).0),
                nbdkit_p99_us: have_reference
                    .then(|| spread(reference.iter().map(|o| o.p99_us).collect()).0),
                ratio: have_reference.then(|| {
                    spread(
                        mine.iter()
                            .zip(&reference)
                            .map(|(m, r)| m.iops / r.iops.max(1e-9))
                            .collect(),
                    )
                }),
            }
        })
        .collect();
    Ok(ServerCost {
        layout: layout.to_string(),
        members: format!(
            "{count} memory devices (MemDevice) of {} bytes",
            args.device_bytes
        ),
        volume_bytes,
        nbdkit: version,
        rows,
    })
}

/// The server-cost section as text.
pub fn print_server_cost(cost: &ServerCost) {
    println!(
        "\nserver cost: {} on {}, against nbdkit memory ({})",
        cost.layout, cost.members, cost.nbdkit
    );
    println!(
        "{:<48} {:>24} {:>12} {:>24} {:>12} {:>18}",
        "workload", "ours per s", "p50/p99 us", "nbdkit per s", "p50/p99 us", "ratio"
    );
    let cell = |s: (f64, f64, f64)| format!("{:.0} ({:.0}-{:.0})", s.0, s.1, s.2);
    for row in &cost.rows {
        println!(
            "{:<48} {:>24} {:>12} {:>24} {:>12} {:>18}",
            row.workload,
            cell(row.ours_iops),
            format!("{:.0}/{:.0}", row.ours_p50_us, row.ours_p99_us),
            row.nbdkit_iops.map_or_else(|| "-".into(), cell),
            row.nbdkit_p50_us
                .zip(row.nbdkit_p99_us)
                .map_or_else(|| "-".into(), |(a, b)| format!("{a:.0}/{b:.0}")),
            row.ratio.map_or_else(
                || "-".into(),
                |r| format!("{:.2} ({:.2}-{:.2})", r.0, r.1, r.2)
            ),
        );
    }
}
