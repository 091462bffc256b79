//! Command-line front end: argument parsing, logging setup, output formats and exit codes.
//! Exit codes: 0 success, 1 operation failed (message on stderr), 2 bad usage.
//!
//! Owns: the commands and their dispatch ([`execute`] hands each to a function of its own).
//! Uses the library's public API only, and opens every member, replacement and spare through
//! the library's opener (`open_device_for`, `CreatedFiles::open_device`), so the I/O backend
//! (`STRIPESTORE_IO`, io_uring or pread) is chosen in one place. Must not touch: pool internals,
//! the on-disk format.

mod bench;
mod bench_cold_map;
mod bench_members;
mod bench_metadata;
mod bench_nbd;
mod bench_pool;
mod bench_reclaim;
mod bench_scrub;
mod bench_smallwrite;
mod demo;
mod fio;
mod import;
mod monitor;
mod nbdkit;
mod progress;
mod remote;
mod scrub;
mod send;
mod serve;
mod served;
mod simulate;
mod snapshot;
mod zabbix;

use clap::{Parser, Subcommand};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use stripestore::device::{canonical_path, is_uri_path, open_device_for, Access, CreatedFiles};
use stripestore::types::{human_bytes, parse_size};
use stripestore::{CreateOptions, Layout, OpenOptions, Pool};

pub use progress::Progress;

#[derive(Parser, Debug)]
#[command(
    name = "stripestore",
    version,
    about = "Redundant block storage: mirror and Reed-Solomon striping with checksummed, self-healing reads",
    after_long_help = "Sizes (--device-size, --offset, --length, rates ...): a plain number of bytes, or a number with a suffix K, M, G or T, optionally followed by i, B or iB, in any case. Every suffix is binary: K = 1024, 64M = 64mb = 64MiB. A decimal fraction is taken when it makes a whole number of bytes: 1.5G, 0.5K."
)]
struct Cli {
    /// Open a pool even when members are missing and the ones present cannot prove they hold
    /// the newest data (a degraded mirror, typically). You accept that a missing member may
    /// have newer data.
    #[arg(long, global = true)]
    force_degraded: bool,
    /// Where else to look for members not at their recorded paths (repeatable): a directory
    /// (its files and block devices) or a device. The directories of the given and recorded
    /// paths are always looked in.
    #[arg(long = "scan", global = true, value_name = "DIR|DEVICE")]
    scan: Vec<PathBuf>,
    /// Format-version-4 pools: the most memory the map's page cache may hold (interior pages
    /// stay resident beyond it). Default 256M.
    #[arg(long = "map-cache", global = true, value_parser = parse_size, value_name = "SIZE")]
    map_cache: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum SpareAction {
    /// Add a spare device (a file is created at the pool's device size).
    Add {
        /// One or more member paths.
        #[arg(required_unless_present = "url", conflicts_with = "url")]
        pool: Vec<PathBuf>,
        /// Do it in the process serving the pool (`serve --metrics ADDR --control`), e.g.
        /// http://127.0.0.1:9640; device paths are then opened by that process.
        #[arg(long)]
        url: Option<String>,
        /// The new spare.
        #[arg(long = "device")]
        device: PathBuf,
        /// Its failure domain (a host, a rack): needed in a pool whose members have domains.
        #[arg(long)]
        domain: Option<String>,
        /// Use it even if it holds another pool's superblock, a filesystem, a partition table
        /// or another known signature.
        #[arg(long)]
        force: bool,
    },
    /// Remove a spare from the pool (refused while a rebuild is filling it). Its own label is
    /// left; wipe it with `labelclear` to use the device elsewhere without --force.
    Remove {
        /// One or more member paths, then the spare: its path (or any path to it) or UUID.
        /// With --url, the spare only.
        #[arg(required = true, value_name = "POOL... SPARE")]
        args: Vec<String>,
        /// Do it in the process serving the pool (`serve --metrics ADDR --control`), e.g.
        /// http://127.0.0.1:9640; device paths are then opened by that process.
        #[arg(long)]
        url: Option<String>,
    },
}

/// Shells `completions` can write a script for.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a pool on files or block devices (files are created with --device-size).
    Create {
        /// Layout: mirror:N, raid10:N or rs:K+M.
        #[arg(long, value_parser = layout_arg)]
        layout: Layout,
        /// A spare device (repeatable).
        #[arg(long = "spare")]
        spares: Vec<PathBuf>,
        /// Size of each device; files that do not exist are created at this size.
        #[arg(long, value_parser = parse_size)]
        device_size: Option<u64>,
        /// Chunk size (multiple of 4K, at most 16M; format 4: a multiple of 16K).
        #[arg(long, value_parser = chunk_size_arg, default_value = "16K")]
        chunk_size: u64,
        /// Checksum block: a multiple of 4K dividing the chunk size. The smallest piece a read
        /// fetches and verifies on its own; map memory is 4 bytes per block of every device.
        #[arg(long, value_parser = checksum_size_arg, default_value = "4K")]
        checksum_size: u64,
        /// On-disk format: 4, the only one this build creates (rows and the paged map). It
        /// needs a chunk size that is a multiple of 16K and checks every 4K block
        /// (--checksum-size 4K). Pools of versions 1 to 3 are opened read-only; move one into
        /// a new pool with --copy-from.
        #[arg(long, default_value = "4", value_parser = format_arg)]
        format: u32,
        /// Overwrite devices that hold another pool's superblock, a filesystem, a partition
        /// table or another known signature.
        #[arg(long)]
        force: bool,
        /// Failure domain NAME:PATH[,PATH...] (repeatable): the devices (data and spares) of
        /// one host or rack. Give every device a domain, or none; create refuses a set where
        /// losing one domain would lose data (e.g. rs:4+2 needs at most 2 members per domain).
        #[arg(long = "domain", value_name = "NAME:PATH,PATH")]
        domains: Vec<String>,
        /// Copy the volume of the pool this device is a member of (the others are found
        /// through the recorded paths) into the new pool: every written byte, read back after
        /// each 256 MiB window is flushed and compared with what was read. The source is
        /// opened read-only and left unchanged. The way from a format-3 pool to format 4, or
        /// to another layout or other disks.
        #[arg(long, value_name = "MEMBER")]
        copy_from: Option<PathBuf>,
        /// Data devices, in layout order.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Show pool health, devices and error counters.
    Status {
        /// One or more member paths (the others are found through the recorded paths).
        #[arg(required_unless_present = "url", conflicts_with = "url")]
        pool: Vec<PathBuf>,
        /// Ask the process serving the pool instead (its `serve --metrics` address, e.g.
        /// http://127.0.0.1:9640).
        #[arg(long)]
        url: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Zabbix agent UserParameters: `discovery` (low-level discovery of the devices) and
    /// `status` (the status JSON for dependent items); see tools/zabbix/.
    Zabbix(zabbix::ZabbixArgs),
    /// Write stdin (or --input) to the volume at --offset, then flush.
    Write {
        /// One or more member paths.
        #[arg(required = true)]
        pool: Vec<PathBuf>,
        /// Volume byte offset.
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        /// Input file (default: stdin).
        #[arg(long)]
        input: Option<PathBuf>,
    },
    /// Read --length bytes at --offset to stdout (or --output).
    Read {
        /// One or more member paths.
        #[arg(required = true)]
        pool: Vec<PathBuf>,
        /// Volume byte offset.
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        /// Bytes to read.
        #[arg(long, value_parser = parse_size)]
        length: u64,
        /// Output file (default: stdout).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Read this recovery point (`snapshot list`) instead of the live volume.
        #[arg(long)]
        snapshot: Option<String>,
    },
    /// Recovery points: instant, read-only states of the volume to read back or restore
    /// from (format version 4).
    Snapshot {
        #[command(subcommand)]
        action: snapshot::SnapshotAction,
    },
    /// Roll the volume back to a recovery point. Every recovery point is kept, newer ones
    /// too, and the state before becomes an automatic one (`snapshot list` shows it).
    Rollback {
        /// One or more member paths.
        #[arg(required = true)]
        pool: Vec<PathBuf>,
        /// The recovery point to roll back to.
        #[arg(long)]
        to: String,
    },
    /// Write a stream of a recovery point (all of it, or with --from only what changed since
    /// an older one) to a file or stdout, for `receive` into another pool.
    Send {
        /// One or more member paths.
        #[arg(required = true)]
        pool: Vec<PathBuf>,
        /// The recovery point to send.
        #[arg(long)]
        snapshot: String,
        /// Send only what changed since this recovery point (the receiving pool has it as
        /// its newest).
        #[arg(long)]
        from: Option<String>,
        /// The stream's file (default: stdout).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Receive a stream written by `send`: checked whole before anything is written, then
    /// applied; the pool's volume becomes the recovery point it carries (any layout). A
    /// receive cut short leaves the volume as before until it is received again or aborted.
    Receive {
        /// One or more member paths.
        #[arg(required = true)]
        pool: Vec<PathBuf>,
        /// The stream's file (default: stdin, kept in a temporary file while it is checked).
        #[arg(long, conflicts_with = "abort")]
        input: Option<PathBuf>,
        /// Abort an unfinished receive: the volume goes back to what it was, exactly.
        #[arg(long)]
        abort: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Verify every chunk of every written stripe (data, parity, all copies), check that
    /// parity and copies agree, and repair what fails. Exit code: 0 clean, 1 damage found and
    /// repaired (or repairable, with --check-only), 2 unrepairable data, 3 could not run.
    Scrub {
        /// One or more member paths.
        #[arg(required_unless_present = "url", conflicts_with = "url")]
        pool: Vec<PathBuf>,
        /// Scrub through the process serving the pool (`serve --metrics ADDR --control`), e.g.
        /// http://127.0.0.1:9640.
        #[arg(long)]
        url: Option<String>,
        /// Repair what fails verification (the default).
        #[arg(long, conflicts_with = "check_only")]
        repair: bool,
        /// Only count damage; write nothing but the scrub's own progress records.
        #[arg(long)]
        check_only: bool,
        /// Read rate limit, e.g. 200M (per second; default: as fast as the devices allow,
        /// yielding to other I/O).
        #[arg(long, value_parser = parse_size)]
        rate: Option<u64>,
        /// Continue the interrupted scrub recorded in the pool instead of starting over.
        #[arg(long, conflicts_with = "cancel")]
        resume: bool,
        /// Discard the interrupted scrub recorded in the pool.
        #[arg(long)]
        cancel: bool,
        /// Machine-readable final report.
        #[arg(long)]
        json: bool,
    },
    /// Monitoring plugin (Nagios/Icinga/Zabbix style): one status line with performance data.
    /// Exit code: 0 OK, 1 WARNING (degraded, rebuilding, errors repaired), 2 CRITICAL
    /// (redundancy exhausted, pool faulted, unrepairable data), 3 UNKNOWN (cannot tell).
    Check {
        /// One or more member paths.
        #[arg(required_unless_present = "url", conflicts_with = "url")]
        pool: Vec<PathBuf>,
        /// Ask the process serving the pool instead (its `serve --metrics` address).
        #[arg(long)]
        url: Option<String>,
        /// WARNING when the last scrub is older than this many days (or there was none).
        #[arg(long)]
        scrub_max_age_days: Option<u64>,
        /// WARNING when the newest recovery point (`snapshot create`) is older than this,
        /// e.g. 90m, 26h, 8d (or there is none).
        #[arg(long, value_parser = parse_age)]
        snapshot_max_age: Option<u64>,
        /// The same verdict as one JSON object on stdout (the exit code is unchanged).
        #[arg(long)]
        json: bool,
    },
    /// Prometheus metrics (text exposition format): printed once, or served over HTTP with
    /// --listen.
    Metrics {
        /// One or more member paths.
        #[arg(required = true)]
        pool: Vec<PathBuf>,
        /// Serve at this address (e.g. 127.0.0.1:9640) until killed, instead of printing once.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Replace a data member (by last known path, index or UUID) with a spare of the pool or a
    /// new device, and rebuild onto it with a progress bar. Works for a healthy member too
    /// (copy, then swap).
    Replace {
        /// One or more member paths.
        #[arg(required_unless_present = "url", conflicts_with = "url")]
        pool: Vec<PathBuf>,
        /// Do it in the process serving the pool (`serve --metrics ADDR --control`), e.g.
        /// http://127.0.0.1:9640; device paths are then opened by that process.
        #[arg(long)]
        url: Option<String>,
        /// The member to replace: last known path, index or UUID.
        #[arg(long)]
        old: String,
        /// A spare of the pool, or a new device (a file is created at the pool's device size).
        #[arg(long)]
        new: PathBuf,
        /// Use a new device even if it holds another pool's superblock, a filesystem, a
        /// partition table or another known signature.
        #[arg(long)]
        force: bool,
        /// Rebuild rate limit, e.g. 200MiB (per second).
        #[arg(long, value_parser = parse_size)]
        rebuild_rate: Option<u64>,
    },
    /// Take a data member out of service on purpose.
    Offline {
        /// One or more member paths, then the member: its last known path (or any path to
        /// it), index or UUID. With --url, the member only.
        #[arg(required = true, value_name = "POOL... DEVICE")]
        args: Vec<String>,
        /// Do it in the process serving the pool (`serve --metrics ADDR --control`), e.g.
        /// http://127.0.0.1:9640; device paths are then opened by that process.
        #[arg(long)]
        url: Option<String>,
    },
    /// Fault a member now: stop waiting for one that is UNAVAILABLE (its host cut off) before
    /// its grace period ends, or take one in service out for good. Spares take over (unlike
    /// `offline`, which means it comes back).
    Fault {
        /// One or more member paths, then the member: its last known path (or any path to
        /// it), index or UUID. With --url, the member only.
        #[arg(required = true, value_name = "POOL... DEVICE")]
        args: Vec<String>,
        /// Do it in the process serving the pool (`serve --metrics ADDR --control`), e.g.
        /// http://127.0.0.1:9640.
        #[arg(long)]
        url: Option<String>,
    },
    /// Forget members' errors (`zpool clear`): a DEGRADED member is ONLINE again at once; a
    /// member FAULTED by errors or a transient failure is resynced from redundancy (only live
    /// data is copied) before it serves again. OFFLINE members stay offline (use `online`).
    Clear {
        /// One or more member paths.
        #[arg(required_unless_present = "url", conflicts_with = "url")]
        pool: Vec<PathBuf>,
        /// Do it in the process serving the pool (`serve --metrics ADDR --control`), e.g.
        /// http://127.0.0.1:9640; device paths are then opened by that process.
        #[arg(long)]
        url: Option<String>,
        /// Only this member (last known path, index or UUID); default: every member.
        #[arg(long)]
        device: Option<String>,
        /// Where that faulted member's device is now (default: its last known path).
        #[arg(long, requires = "device")]
        path: Option<PathBuf>,
        /// Rebuild rate limit for the resync, e.g. 200MiB (per second).
        #[arg(long, value_parser = parse_size)]
        rebuild_rate: Option<u64>,
    },
    /// Bring an offline or faulted member back (it is rebuilt, then swapped in).
    Online {
        /// One or more member paths, then the member: its last known path (or any path to
        /// it), index or UUID. With --url, the member only.
        #[arg(required = true, value_name = "POOL... DEVICE")]
        args: Vec<String>,
        /// Do it in the process serving the pool (`serve --metrics ADDR --control`), e.g.
        /// http://127.0.0.1:9640; device paths are then opened by that process.
        #[arg(long)]
        url: Option<String>,
        /// Where the device is now (default: its last known path). It must be the member
        /// itself coming back, or a device without a signature.
        #[arg(long)]
        path: Option<PathBuf>,
        /// Use a device that holds another pool's superblock, a filesystem, a partition table
        /// or another known signature (never one of this pool's members or spares).
        #[arg(long)]
        force: bool,
        /// Rebuild rate limit, e.g. 200MiB (per second).
        #[arg(long, value_parser = parse_size)]
        rebuild_rate: Option<u64>,
    },
    /// Wipe the stripestore label (both superblock copies) of a device that is no longer a
    /// member of its pool: a replaced or detached member, a removed spare. Refused for a device
    /// its pool still uses, or whose pool cannot be opened to tell, unless --force.
    Labelclear {
        /// The device (or file).
        device: PathBuf,
        /// Wipe it even if its pool still uses it or cannot be opened to tell.
        #[arg(long)]
        force: bool,
    },
    /// Manage spares.
    Spare {
        #[command(subcommand)]
        action: SpareAction,
    },
    /// Attach spares to faulted members and run every pending rebuild (also resumes an
    /// interrupted one from its checkpoint), with a progress bar.
    Rebuild {
        /// One or more member paths.
        #[arg(required = true)]
        pool: Vec<PathBuf>,
        /// Rebuild rate limit, e.g. 200MiB (per second).
        #[arg(long, value_parser = parse_size)]
        rebuild_rate: Option<u64>,
    },
    /// Measure the pool against the raw devices under it, in one run: raw sequential write and
    /// read and random 4 KiB reads, then the pool's sequential write, sequential read, random
    /// read, degraded read, rebuild and scrub, for each layout, as MiB/s and ratios.
    Bench(bench_pool::BenchArgs),
    /// Measure rebuild throughput against the spare device's raw write throughput, on files.
    BenchRebuild(RebuildBench),
    /// Measure scrub throughput against the devices' aggregate raw read throughput, in the
    /// same run, on files.
    BenchScrub(ScrubBench),
    /// Measure the paged map of format version 4 at volume sizes up to 16 TiB on sparse files:
    /// create and open time, peak RSS, bytes per flush, pages per sync, open after a kill,
    /// cold and warm lookups (the map alone, without the pool around it).
    BenchMetadata(bench_metadata::BenchMetadataArgs),
    /// Measure random 4 KiB reads on a format-version-4 pool whose map page cache holds a
    /// tenth of the map, against the whole map cached, in one run (issue 13, "Cold map").
    BenchColdMap(bench_cold_map::BenchColdMapArgs),
    /// Measure 4 KiB random writes on the data path of format version 4 (the library, and
    /// with --nbd a v4 pool served over NBD) against fio's random writes on one member file,
    /// in one run, with and without a flush every 32 writes.
    BenchSmallwrite(bench_smallwrite::BenchSmallwriteArgs),
    /// Measure random 4 KiB reads while a large recovery point is deleted in the background
    /// against the same reads with nothing being deleted, in one run (issue 15).
    BenchReclaim(bench_reclaim::BenchReclaimArgs),
    /// Measure the pool on members served over NBD (nbdkit `file`, Unix sockets) against the
    /// same pool on local member files, in one run: sequential write and read, random 4 KiB
    /// reads.
    BenchMembers(bench_members::BenchMembersArgs),
    /// Run deterministic disk-failure simulations: seeded workloads with injected faults and
    /// crashes, checked against a model after every step.
    Simulate(simulate::SimulateArgs),
    /// Export a pool over NBD (nbdinfo, qemu, nbdcopy, nbdfuse, fio, nbd-client) until SIGINT
    /// or SIGTERM; then finish requests in flight, flush and close.
    Serve(serve::ServeArgs),
    /// Print a shell completion script (e.g. `stripestore completions bash >
    /// /etc/bash_completion.d/stripestore`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the manual page (roff; e.g. `stripestore man | man -l -`).
    Man,
    /// The pool's event log (faults, offline/online, spares, rebuilds, replaces, scrubs,
    /// members found at new paths, opens; the last 64) and its cumulative counters. Only looks.
    Events {
        /// One or more member paths.
        #[arg(required = true)]
        pool: Vec<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List the pools whose devices are in the --scan locations (default: the current
    /// directory), with their state and where each member was found. Writes nothing.
    Import {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run the whole story on temporary files: create, write, lose a device, read back,
    /// corrupt blocks, heal, report.
    Demo {
        /// Layout to demonstrate.
        #[arg(long, default_value = "rs:4+2", value_parser = layout_text_arg)]
        layout: String,
        /// Size of each of the temporary devices.
        #[arg(long, value_parser = parse_size, default_value = "64M")]
        device_size: u64,
        /// Keep the pool in this directory instead of a temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Arguments of the benchmarks that repeat one measurement on files and report the spread.
#[derive(clap::Args, Debug)]
struct RepeatedBench {
    /// Layout.
    #[arg(long, default_value = "rs:4+2", value_parser = layout_text_arg)]
    layout: String,
    /// Size of each device.
    #[arg(long, value_parser = parse_size, default_value = "256M")]
    device_size: u64,
    /// Runs (median and spread are reported).
    #[arg(long, default_value = "5")]
    runs: usize,
    /// Directory for the device files (default: a temporary directory under /var/tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// Arguments of `bench-scrub`: the repeated-bench ones.
#[derive(clap::Args, Debug)]
struct ScrubBench {
    #[command(flatten)]
    bench: RepeatedBench,
}

/// Arguments of `bench-rebuild`: the repeated-bench ones, and where the spare lives.
#[derive(clap::Args, Debug)]
struct RebuildBench {
    #[command(flatten)]
    bench: RepeatedBench,
    /// Directory for the spare and the raw-write baseline file (default: with the devices).
    /// With the devices in memory (`--dir /dev/shm/...`) and the spare on a disk, the
    /// sources are not the bottleneck and the rebuild is measured against the spare's disk.
    #[arg(long)]
    spare_dir: Option<PathBuf>,
}

/// Parse arguments, run, and map the outcome to an exit code.
pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(usage_exit_code())
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
    // A simulation injects thousands of faults on purpose: warnings would drown its progress.
    let quiet = matches!(cli.command, Command::Simulate(_));
    tracing_subscriber::fmt()
        .with_env_filter(
            // STRIPESTORE_LOG, else RUST_LOG (same syntax: `info`, `stripestore::pool=debug`);
            // quiet by default: warnings and errors only.
            tracing_subscriber::EnvFilter::try_from_env("STRIPESTORE_LOG")
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(if quiet { "error" } else { "warn" })
                }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    FORCE_DEGRADED.store(cli.force_degraded, std::sync::atomic::Ordering::Relaxed);
    if let Some(bytes) = cli.map_cache {
        MAP_CACHE.store(bytes, std::sync::atomic::Ordering::Relaxed);
    }
    let _ = SCAN.set(cli.scan);
    // `scrub` and `check` promise their own codes to scripts and monitoring: 3 = could not run.
    let failure = match &cli.command {
        Command::Scrub { .. } => scrub::exit::FAILED,
        Command::Check { .. } => monitor::Level::Unknown as u8,
        _ => 1,
    };
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.downcast_ref::<Exit>().is_some() => {
            ExitCode::from(err.downcast_ref::<Exit>().map_or(1, |exit| exit.0))
        }
        Err(err) => {
            eprintln!("stripestore: error: {err}");
            // Most errors already quote their cause: print a cause only if it says more.
            let mut shown = err.to_string();
            let mut source = std::error::Error::source(err.as_ref());
            while let Some(cause) = source {
                let text = cause.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                    shown.push_str(&text);
                }
                source = cause.source();
            }
            ExitCode::from(failure)
        }
    }
}

/// A command finished and wants this exit code (its output says why).
#[derive(Debug)]
struct Exit(u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// Exit code for bad usage: 2, except for commands whose codes 0-2 mean findings.
fn usage_exit_code() -> u8 {
    let subcommand = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    match subcommand.as_deref() {
        Some("scrub") => scrub::exit::FAILED,
        Some("check") => monitor::Level::Unknown as u8,
        _ => 2,
    }
}

pub(crate) type CliResult = Result<(), Box<dyn std::error::Error>>;

/// `--force-degraded`, set once from the command line.
static FORCE_DEGRADED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// `--map-cache` (bytes), for every open.
static MAP_CACHE: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(stripestore::pool::DEFAULT_MAP_CACHE_BYTES as u64);

/// The map cache every open of this command uses (`--map-cache`).
pub(crate) fn map_cache_bytes() -> usize {
    usize::try_from(MAP_CACHE.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(usize::MAX)
}

/// `--scan` locations, set once from the command line.
static SCAN: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();

/// Open a pool from member paths, looking for members elsewhere in the `--scan` locations too.
pub(crate) fn open_paths(
    paths: &[PathBuf],
    options: &OpenOptions,
) -> Result<Pool, stripestore::Error> {
    let scan = SCAN.get().map_or(&[][..], Vec::as_slice);
    Pool::open_paths_scanning(paths, scan, options)
}

fn execute(command: Command) -> CliResult {
    match command {
        Command::Create {
            layout,
            spares,
            device_size,
            chunk_size,
            checksum_size,
            // Checked by its parser: 4 is the only value it lets through.
            format: _,
            force,
            domains,
            copy_from,
            paths,
        } => create(
            layout,
            spares,
            device_size,
            (chunk_size, checksum_size),
            force,
            &domains,
            (paths, copy_from.as_deref()),
        ),
        Command::Status {
            url: Some(url),
            json,
            ..
        } => {
            print!("{}", remote::Endpoint::parse(&url)?.status_text(json)?);
            Ok(())
        }
        Command::Status { pool, json, .. } => status(&pool, json),
        Command::Zabbix(args) => zabbix::run(&args),
        Command::Labelclear { device, force } => labelclear(&device, force),
        Command::Completions { shell } => completions(shell),
        Command::Man => man(),
        Command::Events { pool, json } => events(&pool, json),
        Command::Import { json } => import::run(SCAN.get().map_or(&[][..], Vec::as_slice), json),
        Command::Write {
            pool,
            offset,
            input,
        } => write(&pool, offset, input),
        Command::Read {
            pool,
            offset,
            length,
            output,
            snapshot: None,
        } => read(&pool, offset, length, output),
        Command::Read {
            pool,
            offset,
            length,
            output,
            snapshot: Some(name),
        } => snapshot::read(&pool, &name, offset, length, output),
        Command::Snapshot { action } => snapshot::run(action),
        Command::Rollback { pool, to } => snapshot::rollback(&pool, &to),
        Command::Send {
            pool,
            snapshot,
            from,
            output,
        } => send::send(&pool, &snapshot, from.as_deref(), output),
        Command::Receive {
            pool,
            input,
            abort,
            json,
        } => send::receive(&pool, input, abort, json),
        Command::Scrub {
            pool,
            url,
            repair: _,
            check_only,
            rate,
            resume,
            cancel,
            json,
        } => scrub(
            url.as_deref(),
            &scrub::ScrubArgs {
                pool,
                check_only,
                rate,
                resume,
                cancel,
                json,
            },
        ),
        Command::Check {
            pool,
            url,
            scrub_max_age_days,
            snapshot_max_age,
            json,
        } => match monitor::check(
            &pool,
            url.as_deref(),
            monitor::Limits {
                scrub_max_age_days,
                recovery_point_max_age_secs: snapshot_max_age,
            },
            json,
        ) {
            monitor::Level::Ok => Ok(()),
            level => Err(Box::new(Exit(level as u8))),
        },
        Command::Metrics { pool, listen } => monitor::metrics(&pool, listen),
        Command::Replace {
            url: Some(url),
            old,
            new,
            force,
            ..
        } => remote::admin(
            &url,
            "/replace",
            &[
                ("old", Some(remote::name(&old))),
                ("new", Some(remote::absolute(&new))),
            ],
            force,
        ),
        Command::Replace {
            pool,
            old,
            new,
            force,
            rebuild_rate,
            ..
        } => replace(&pool, &old, &new, force, rebuild_rate),
        Command::Clear {
            url: Some(url),
            device,
            path,
            ..
        } => remote::admin(
            &url,
            "/clear",
            &[
                ("device", device.as_deref().map(remote::name)),
                ("path", path.as_deref().map(remote::absolute)),
            ],
            false,
        ),
        Command::Clear {
            pool,
            device,
            path,
            rebuild_rate,
            ..
        } => clear(&pool, device.as_deref(), path, rebuild_rate),
        Command::Offline { args, url } => match (pool_and_name(args, url.is_some())?, url) {
            ((_, device), Some(url)) => remote::admin(
                &url,
                "/offline",
                &[("device", Some(remote::name(&device)))],
                false,
            ),
            ((pool, device), None) => offline(&pool, &device),
        },
        Command::Fault { args, url } => match (pool_and_name(args, url.is_some())?, url) {
            ((_, device), Some(url)) => remote::admin(
                &url,
                "/fault",
                &[("device", Some(remote::name(&device)))],
                false,
            ),
            ((pool, device), None) => {
                let pool = open_pool(&pool)?;
                pool.fault_member(&device)?;
                print!("{}", pool.status());
                pool.close()?;
                Ok(())
            }
        },
        Command::Online {
            args,
            url,
            path,
            force,
            rebuild_rate,
        } => match (pool_and_name(args, url.is_some())?, url) {
            ((_, device), Some(url)) => remote::admin(
                &url,
                "/online",
                &[
                    ("device", Some(remote::name(&device))),
                    ("path", path.as_deref().map(remote::absolute)),
                ],
                force,
            ),
            ((pool, device), None) => online(&pool, &device, path, force, rebuild_rate),
        },
        Command::Spare {
            action:
                SpareAction::Add {
                    url: Some(url),
                    device,
                    domain,
                    force,
                    ..
                },
        } => remote::admin(
            &url,
            "/spare/add",
            &[
                ("device", Some(remote::absolute(&device))),
                ("domain", domain),
            ],
            force,
        ),
        Command::Spare {
            action:
                SpareAction::Add {
                    pool,
                    device,
                    domain,
                    force,
                    ..
                },
        } => spare_add(&pool, &device, force, domain.as_deref()),
        Command::Spare {
            action: SpareAction::Remove { args, url },
        } => match (pool_and_name(args, url.is_some())?, url) {
            ((_, spare), Some(url)) => remote::admin(
                &url,
                "/spare/remove",
                &[("spare", Some(remote::name(&spare)))],
                false,
            ),
            ((pool, spare), None) => spare_remove(&pool, &spare),
        },
        Command::Rebuild { pool, rebuild_rate } => rebuild(&pool, rebuild_rate),
        Command::Bench(args) => bench_pool::run(&args),
        Command::BenchRebuild(RebuildBench {
            bench: b,
            spare_dir,
        }) => bench::run(
            &b.layout,
            b.device_size,
            b.runs,
            b.dir.as_deref(),
            spare_dir.as_deref(),
            b.json,
        ),
        Command::BenchScrub(ScrubBench { bench: b }) => {
            bench_scrub::run(&b.layout, b.device_size, b.runs, b.dir.as_deref(), b.json)
        }
        Command::Demo {
            layout,
            device_size,
            dir,
        } => demo::run(&layout, device_size, dir.as_deref()),
        Command::Simulate(args) => simulate::run(&args),
        Command::BenchMetadata(args) => bench_metadata::run(&args).map_err(Into::into),
        Command::BenchColdMap(args) => bench_cold_map::run(&args),
        Command::BenchSmallwrite(args) => bench_smallwrite::run(&args).map_err(Into::into),
        Command::BenchReclaim(args) => bench_reclaim::run(&args),
        Command::BenchMembers(args) => bench_members::run(&args),
        Command::Serve(args) => serve::run(args),
    }
}

/// Split `POOL... NAME` (a member or spare named last): the member paths and the name. With
/// `--url` (`url`), only the name is given.
fn pool_and_name(
    mut args: Vec<String>,
    url: bool,
) -> Result<(Vec<PathBuf>, String), Box<dyn std::error::Error>> {
    let name = args
        .pop()
        .ok_or_else(|| usage_error("give one or more member paths, then the device"))?;
    match (url, args.is_empty()) {
        (true, false) => Err(usage_error(
            "with --url, give only the device: the serving process holds the pool",
        )),
        (false, true) => Err(usage_error(
            "give one or more member paths, then the device (or --url URL and the device)",
        )),
        _ => Ok((args.into_iter().map(PathBuf::from).collect(), name)),
    }
}

/// `status` of a pool opened here (read-only).
fn status(pool: &[PathBuf], json: bool) -> CliResult {
    let pool = match open_pool_to_look(pool) {
        Ok(pool) => pool,
        Err(err) if json => {
            // Scripts asked for JSON: they get an object saying why, and the usual failure.
            let report = serde_json::json!({
                "error": { "kind": error_kind(&err), "message": err.to_string() }
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
            eprintln!("stripestore: error: {err}");
            return Err(Box::new(Exit(1)));
        }
        Err(err) => return Err(err.into()),
    };
    let status = pool.status();
    let text = if json {
        format!("{}\n", serde_json::to_string_pretty(&status)?)
    } else {
        status.to_string()
    };
    // A reader that stops early (`status | head`) is not an error of the pool's.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => return Err(err.into()),
        _ => {}
    }
    pool.close()?;
    Ok(())
}

/// `events`: the event log and counters of a pool opened here (read-only).
fn events(pool: &[PathBuf], json: bool) -> CliResult {
    let pool = open_pool_to_look(pool)?;
    let history = pool.history();
    pool.close()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&history)?);
        return Ok(());
    }
    for event in &history.events {
        println!("{}", stripestore::report::event_line(event));
    }
    let c = history.counters;
    println!(
        "counters: {} read, {} write, {} checksum errors; {} chunks repaired; {} rebuilt; {} scrubs",
        c.read_errors,
        c.write_errors,
        c.checksum_errors,
        c.repaired_chunks,
        human_bytes(c.rebuilt_bytes),
        c.scrubs
    );
    Ok(())
}

/// `scrub`, here or (with `url`) in the process serving the pool; the exit code says what it
/// found.
fn scrub(url: Option<&str>, args: &scrub::ScrubArgs) -> CliResult {
    let code = match url {
        Some(url) => remote::scrub(&remote::Endpoint::parse(url)?, args)?,
        None => scrub::run(args)?,
    };
    if code == scrub::exit::CLEAN {
        Ok(())
    } else {
        Err(Box::new(Exit(code)))
    }
}

/// `clear`: error counts reset, faulted members resynced (see [`clear_members`]).
fn clear(
    pool: &[PathBuf],
    device: Option<&str>,
    path: Option<PathBuf>,
    rebuild_rate: Option<u64>,
) -> CliResult {
    let pool = open_pool(pool)?;
    pool.set_rebuild_rate(rebuild_rate);
    clear_members(&pool, device, path)?;
    run_rebuilds_with_progress(&pool)?;
    print!("{}", pool.status());
    pool.close()?;
    Ok(())
}

/// `offline`: take a member out of service by hand.
fn offline(pool: &[PathBuf], device: &str) -> CliResult {
    let pool = open_pool(pool)?;
    pool.offline(device)?;
    print!("{}", pool.status());
    pool.close()?;
    Ok(())
}

/// `rebuild`: attach spares to faulted positions and run every rebuild to the end.
fn rebuild(pool: &[PathBuf], rebuild_rate: Option<u64>) -> CliResult {
    let options = OpenOptions {
        background_rebuild: false,
        auto_replace: true,
        rebuild_rate_bytes_per_s: rebuild_rate,
        force: FORCE_DEGRADED.load(std::sync::atomic::Ordering::Relaxed),
        map_cache_bytes: map_cache_bytes(),
        ..OpenOptions::default()
    };
    let pool = open_paths(pool, &options)?;
    pool.attach_spares();
    run_rebuilds_with_progress(&pool)?;
    print!("{}", pool.status());
    pool.close()?;
    Ok(())
}

/// `create`: a new pool on `paths` (and `spares`).
fn create(
    layout: Layout,
    spares: Vec<PathBuf>,
    device_size: Option<u64>,
    (chunk_size, checksum_size): (u64, u64),
    force: bool,
    domains: &[String],
    (paths, copy_from): (Vec<PathBuf>, Option<&Path>),
) -> CliResult {
    if checksum_size != 4096 {
        return Err(usage_error(&format!(
            "--checksum-size {}: format 4 checks every 4K block",
            human_bytes(checksum_size)
        )));
    }
    if !chunk_size.is_multiple_of(16 << 10) {
        return Err(usage_error(&format!(
            "--chunk-size {}: format 4 needs a multiple of 16K (its metadata pages live in chunks)",
            human_bytes(chunk_size)
        )));
    }
    let mut options = CreateOptions::new(layout);
    options.chunk_bytes = chunk_size;
    options.checksum_bytes = checksum_size;
    options.device_bytes = device_size;
    options.force = force;
    options.domains = domains_of(domains, &paths, &spares)?;
    options.open.map_cache_bytes = map_cache_bytes();
    options.format = stripestore::pool::FormatVersion::V4(stripestore::pool::V4Options::default());
    // The pool to copy is opened (read-only) first: a wrong member path fails before the new
    // devices are touched.
    let source = copy_from
        .map(|member| open_pool_to_look(&[member.to_path_buf()]))
        .transpose()?;
    if let Some(source) = &source {
        // The new pool goes on other devices: naming one of the source's is a mistake to
        // say plainly (its lock would refuse it anyway, as "in use").
        let status = source.status();
        let members: Vec<PathBuf> = status
            .devices
            .iter()
            .map(|d| d.path.as_str())
            .chain(status.spares.iter().map(|s| s.path.as_str()))
            .map(|p| canonical_path(Path::new(p)))
            .collect();
        if let Some(taken) = paths
            .iter()
            .chain(&spares)
            .find(|p| members.contains(&canonical_path(p)))
        {
            return Err(usage_error(&format!(
                "{} belongs to the pool to copy (--copy-from): the new pool needs other devices",
                taken.display()
            )));
        }
    }
    let pool = Pool::create_paths(&paths, &spares, &options)?;
    let status = pool.status();
    println!(
        "created pool {} ({}) on {} devices and {} spares: {} usable",
        status.pool,
        status.layout,
        paths.len(),
        spares.len(),
        human_bytes(status.volume_bytes)
    );
    if let Some(source) = source {
        copy_volume(&pool, &source)?;
        source.close()?;
    }
    pool.close()?;
    Ok(())
}

/// `create --copy-from`: the source's volume into the pool just created, with progress.
fn copy_volume(pool: &Pool, source: &Pool) -> CliResult {
    let from = source.status();
    println!(
        "copying the volume of pool {} ({}, {} written of {})",
        from.pool,
        from.layout,
        human_bytes(from.allocated_bytes),
        human_bytes(from.volume_bytes)
    );
    if pool.size() < source.size() {
        // Devices scale the volume about linearly: the size that would have held it, rounded
        // up to a MiB, with a little room for the new pool's metadata.
        let device_bytes = pool.geometry().device_bytes;
        let needed = (u128::from(device_bytes) * u128::from(source.size()) * 21
            / (u128::from(pool.size()).max(1) * 20)) as u64;
        let needed = needed.div_ceil(1 << 20) << 20;
        return Err(format!(
            "the new pool's volume ({}) is smaller than the volume to copy ({}): nothing was \
             copied, and the source pool was not changed. Create the new pool again on larger \
             devices (about --device-size {}M or more for this layout), with --force since \
             they now hold this empty pool",
            human_bytes(pool.size()),
            human_bytes(source.size()),
            needed >> 20
        )
        .into());
    }
    let mut progress = long_transfer_progress("copying", source.size());
    let started = std::time::Instant::now();
    let report = pool
        .copy_from(source, |p| {
            if let Some(progress) = progress.as_mut() {
                progress.set_done(p.done_bytes);
            }
        })
        .map_err(|err| {
            format!(
                "the copy stopped: {err}. The source pool was not changed; the new pool holds \
                 what was copied before the error (create it again with --force to start over)"
            )
        })?;
    if let Some(progress) = progress {
        progress.finish();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "copied {} of written data in {} run{} ({:.1} s, {}/s); {} unwritten left as holes; \
         every copied byte read back and matched the source",
        human_bytes(report.copied_bytes),
        report.extents,
        if report.extents == 1 { "" } else { "s" },
        secs,
        human_bytes((report.copied_bytes as f64 / secs.max(1e-3)) as u64),
        human_bytes(report.unwritten_bytes)
    );
    Ok(())
}

/// `write`: `input` (a file, or standard input) into the volume at `offset`, then flush.
fn write(pool: &[PathBuf], offset: u64, input: Option<PathBuf>) -> CliResult {
    // The whole request is checked against the volume before any byte is written (the
    // pool is looked at read-only first: a read-write open writes a checkpoint), so the
    // input's length must be known first: a file's from its metadata; standard input is
    // spooled to a temporary file when it is not a regular file itself.
    let (mut reader, length) = input_with_length(input.as_deref())?;
    check_request(offset, length, open_pool_to_look(pool)?.size())?;
    let pool = open_pool(pool)?;
    let mut buf = vec![0u8; 8 << 20];
    let mut written = 0u64;
    let mut progress = long_transfer_progress("writing", length);
    loop {
        let n = read_full(&mut reader, &mut buf)?;
        if n == 0 {
            break;
        }
        pool.write_at(offset + written, &buf[..n])?;
        written += n as u64;
        if let Some(progress) = &mut progress {
            progress.advance(n as u64);
        }
    }
    if let Some(progress) = progress {
        progress.finish();
    }
    pool.close()?;
    eprintln!("wrote {written} bytes at offset {offset} (flushed)");
    Ok(())
}

/// `read`: `length` bytes of the volume at `offset` to `output` (or standard output).
fn read(pool: &[PathBuf], offset: u64, length: u64, output: Option<PathBuf>) -> CliResult {
    let pool = open_pool_to_look(pool)?;
    check_request(offset, length, pool.size())?;
    let mut writer: Box<dyn Write> = match &output {
        Some(path) => {
            Box::new(std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let piece = 8u64 << 20;
    let mut done = 0u64;
    let mut buf = vec![0u8; usize::try_from(piece.min(length))?];
    let mut progress = long_transfer_progress("reading", length);
    while done < length {
        let n = usize::try_from(piece.min(length - done))?;
        pool.read_at(offset + done, &mut buf[..n])?;
        writer.write_all(&buf[..n])?;
        done += n as u64;
        if let Some(progress) = &mut progress {
            progress.advance(n as u64);
        }
    }
    writer.flush()?;
    if let Some(progress) = progress {
        progress.finish();
    }
    pool.close()?;
    Ok(())
}

/// A progress bar for a `read` or `write` of `length` bytes: only when stderr is a terminal
/// and the transfer is long enough to be worth one (more than one 8 MiB piece); otherwise
/// nothing is printed, as before.
fn long_transfer_progress(label: &str, length: u64) -> Option<Progress> {
    (std::io::IsTerminal::is_terminal(&std::io::stderr()) && length > 8 << 20)
        .then(|| Progress::new(label, length))
}

/// `replace`: `old` by a spare of the pool, or by the device at `new`; then rebuild.
fn replace(
    pool: &[PathBuf],
    old: &str,
    new: &Path,
    force: bool,
    rebuild_rate: Option<u64>,
) -> CliResult {
    let pool = open_pool(pool)?;
    pool.set_rebuild_rate(rebuild_rate);
    let target = canonical_path(new);
    let spare = pool
        .status()
        .spares
        .into_iter()
        .find(|s| canonical_path(Path::new(&s.path)) == target);
    if let Some(spare) = spare {
        pool.replace_with_spare(old, &spare.path)?;
    } else {
        refuse_pool_device(&pool, new)?;
        // A refused replace leaves no file it created behind.
        let mut files = CreatedFiles::new();
        let device = files.open_device(new, Some(pool.geometry().device_bytes))?;
        pool.replace(old, device, force)?;
        files.keep();
    }
    run_rebuilds_with_progress(&pool)?;
    print!("{}", pool.status());
    pool.close()?;
    Ok(())
}

/// `online`: a faulted or offline member back in service from `path` (else its last known
/// path); then resync it.
fn online(
    pool: &[PathBuf],
    device: &str,
    path: Option<PathBuf>,
    force: bool,
    rebuild_rate: Option<u64>,
) -> CliResult {
    let pool = open_pool(pool)?;
    pool.set_rebuild_rate(rebuild_rate);
    let status = pool.status();
    let member = status
        .devices
        .iter()
        .find(|d| {
            d.replacing.is_none()
                && (d.path == device
                    || d.uuid == device
                    || d.index.map(|i| i.to_string()) == Some(device.to_string())
                    || canonical_path(Path::new(&d.path)) == canonical_path(Path::new(device)))
        })
        .ok_or_else(|| {
            format!("no data member {device:?} in this pool (give its last known path, its index or its UUID)")
        })?;
    if member.state != "FAULTED" && member.state != "OFFLINE" {
        return Err(format!("{device} is already online").into());
    }
    let path = path.unwrap_or_else(|| PathBuf::from(&member.path));
    refuse_pool_device(&pool, &path)?;
    let handle = open_device_for(&path, Access::ReadWrite)?;
    pool.online(device, handle, force)?;
    run_rebuilds_with_progress(&pool)?;
    print!("{}", pool.status());
    pool.close()?;
    Ok(())
}

/// `--domain NAME:PATH,PATH` arguments as one domain per device: the data `paths` in order,
/// then the `spares` (none at all when no `--domain` is given). Every device must be named
/// exactly once, as it is given on the command line.
fn domains_of(
    args: &[String],
    paths: &[PathBuf],
    spares: &[PathBuf],
) -> Result<Vec<String>, String> {
    if args.is_empty() {
        return Ok(Vec::new());
    }
    let mut of: std::collections::BTreeMap<String, String> = Default::default();
    for arg in args {
        let (name, devices) = arg
            .split_once(':')
            .ok_or_else(|| format!("--domain {arg:?}: expected NAME:PATH[,PATH...]"))?;
        for device in devices.split(',').filter(|d| !d.is_empty()) {
            if let Some(other) = of.insert(device.to_string(), name.to_string()) {
                return Err(format!(
                    "--domain: {device} is in two domains ({other} and {name})"
                ));
            }
        }
    }
    let all: Vec<String> = paths
        .iter()
        .chain(spares)
        .map(|p| p.display().to_string())
        .collect();
    if let Some(stray) = of.keys().find(|d| !all.contains(d)) {
        return Err(format!(
            "--domain names {stray}, which is not one of the devices given"
        ));
    }
    all.iter()
        .map(|d| {
            of.get(d).cloned().ok_or_else(|| {
                format!("--domain: {d} is in no domain (give every device one, or none)")
            })
        })
        .collect()
}

/// `spare add`: the device at `device` as a spare of the pool.
fn spare_add(pool: &[PathBuf], device: &Path, force: bool, domain: Option<&str>) -> CliResult {
    let pool = open_pool(pool)?;
    refuse_pool_device(&pool, device)?;
    let mut files = CreatedFiles::new();
    let handle = files.open_device(device, Some(pool.geometry().device_bytes))?;
    match domain {
        Some(domain) => pool.add_spare_in(handle, force, domain)?,
        None => pool.add_spare(handle, force)?,
    }
    files.keep();
    print!("{}", pool.status());
    pool.close()?;
    Ok(())
}

/// `spare remove`: the spare named `spare` (its path, as given or canonical, or its UUID) out
/// of the pool.
fn spare_remove(pool: &[PathBuf], spare: &str) -> CliResult {
    let pool = open_pool(pool)?;
    let target = canonical_path(Path::new(spare));
    let recorded = pool
        .status()
        .spares
        .into_iter()
        .find(|s| {
            s.uuid == spare || s.path == spare || canonical_path(Path::new(&s.path)) == target
        })
        .map_or_else(|| spare.to_string(), |s| s.uuid);
    pool.remove_spare(&recorded)?;
    eprintln!("{spare}: removed from the pool's spares (its label is left; `labelclear` wipes it)");
    print!("{}", pool.status());
    pool.close()?;
    Ok(())
}

/// `labelclear`: wipe both superblock copies of `device`, unless its pool (opened read-only
/// through the member paths its label records) still lists it as a member in service, a
/// replacement being rebuilt or an available spare; or the pool cannot be opened to tell.
/// `force` skips the check.
fn labelclear(device: &Path, force: bool) -> CliResult {
    let shown = device.display().to_string();
    let label = {
        let handle = open_device_for(device, Access::ReadOnly)?;
        stripestore::pool::read_label(handle.as_ref())
    };
    let label = match label {
        Ok(Some(label)) => Some(label),
        Ok(None) => {
            return Err(format!("{shown} holds no stripestore label; nothing to clear").into())
        }
        Err(err) if force => {
            eprintln!("{shown}: {err}; wiping anyway (--force)");
            None
        }
        Err(err) => {
            return Err(format!(
                "{err}; cannot tell whether its pool still uses it (use --force to wipe it anyway)"
            )
            .into())
        }
    };
    if let (Some(label), false) = (&label, force) {
        refuse_if_in_use(device, label)?;
    }
    let handle = open_device_for(device, Access::ReadWrite)?;
    stripestore::pool::clear_label(handle.as_ref())?;
    match &label {
        Some(label) => eprintln!(
            "{shown}: label of pool {} (device {}) cleared",
            label.pool_uuid, label.device_uuid
        ),
        None => eprintln!("{shown}: label cleared"),
    }
    Ok(())
}

/// Refuse to clear the label of `device` if its pool, opened read-only through the members its
/// label records, still uses it (or cannot be opened to tell).
fn refuse_if_in_use(device: &Path, label: &stripestore::format::Superblock) -> CliResult {
    let shown = device.display().to_string();
    let own = canonical_path(device);
    let mut paths: Vec<PathBuf> = label
        .members
        .iter()
        .map(|m| PathBuf::from(&m.path))
        .filter(|p| canonical_path(p) != own && (is_uri_path(p) || p.exists()))
        .collect();
    if paths.is_empty() {
        paths.push(device.to_path_buf());
    }
    let pool = open_pool_to_look(&paths).map_err(|err| {
        format!("{shown} belongs to pool {}, which cannot be opened to tell whether it still uses this device ({err}); use --force to wipe it anyway", label.pool_uuid)
    })?;
    let status = pool.status();
    pool.close()?;
    if status.pool != label.pool_uuid.to_string() {
        return Err(format!("{shown} belongs to pool {}, but its recorded members now belong to pool {}; cannot tell whether it is in use (use --force to wipe it anyway)", label.pool_uuid, status.pool).into());
    }
    let uuid = label.device_uuid.to_string();
    let role = status
        .devices
        .iter()
        .find(|d| d.uuid == uuid && d.state != "FAULTED" && d.state != "OFFLINE")
        .map(|d| match (d.index, &d.replacing) {
            (Some(i), Some(_)) => format!("the replacement being rebuilt for data position {i}"),
            (Some(i), None) => format!("a member in service (data position {i}, {})", d.state),
            (None, _) => "a member in service".to_string(),
        })
        .or_else(|| {
            status
                .spares
                .iter()
                .any(|s| s.uuid == uuid)
                .then(|| "a spare (remove it first with `spare remove`)".to_string())
        })
        .or_else(|| {
            status
                .devices
                .iter()
                .find(|d| d.uuid == uuid)
                .map(|d| format!("a member out of service ({}; `replace` it first)", d.state))
        });
    match role {
        Some(role) => Err(format!(
            "{shown} is still {role} of pool {}; refusing to clear its label (use --force to wipe it anyway)",
            status.pool
        )
        .into()),
        None => Ok(()),
    }
}

/// `completions`: a completion script for `shell`, generated from the command definitions.
fn completions(shell: Shell) -> CliResult {
    let mut command = <Cli as clap::CommandFactory>::command();
    let name = command.get_name().to_string();
    let mut out = std::io::stdout().lock();
    match shell {
        Shell::Bash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut command, name, &mut out)
        }
        Shell::Zsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut command, name, &mut out)
        }
        Shell::Fish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut command, name, &mut out)
        }
    }
    out.flush()?;
    Ok(())
}

/// `man`: the manual page (roff), generated from the command definitions.
fn man() -> CliResult {
    let command = <Cli as clap::CommandFactory>::command();
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(command).render(&mut out)?;
    out.flush()?;
    Ok(())
}

/// The name of a library error's variant (`PoolUnavailable`, `NotAMember` ...), for JSON.
fn error_kind(err: &stripestore::Error) -> String {
    let debug = format!("{err:?}");
    debug
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or("Error")
        .to_string()
}

/// `clear`: degraded members back to online; faulted ones resynced from their device (found at
/// `path`, else their last known path), each said on stderr.
fn clear_members(pool: &Pool, device: Option<&str>, path: Option<PathBuf>) -> CliResult {
    use stripestore::pool::ClearedState;
    for cleared in pool.clear(device)? {
        match cleared.state {
            ClearedState::Online => eprintln!("{}: errors cleared; ONLINE", cleared.path),
            ClearedState::StillOffline => eprintln!(
                "{}: offline by administrator; left offline (bring it back with `online`)",
                cleared.path
            ),
            ClearedState::NeedsDevice { reason } => {
                let at = path.clone().unwrap_or_else(|| PathBuf::from(&cleared.path));
                match open_device_for(&at, Access::ReadWrite) {
                    Ok(handle) => {
                        pool.clear_with(&cleared.index.to_string(), handle)?;
                        eprintln!(
                            "{}: was faulted ({reason}); resyncing it from redundancy",
                            at.display()
                        );
                    }
                    Err(err) if device.is_some() => return Err(err.into()),
                    Err(err) => eprintln!(
                        "{}: faulted ({reason}) and its device cannot be opened ({err}); give it with --device {} --path PATH, or replace it",
                        cleared.path, cleared.index
                    ),
                }
            }
        }
    }
    Ok(())
}

/// Open a pool to look at it (status, check, metrics, read, check-only scrub): read-only, so
/// not one byte of any member changes, and a write-protected member can still be examined.
pub(crate) fn open_pool_to_look(paths: &[PathBuf]) -> Result<Pool, stripestore::Error> {
    let options = OpenOptions {
        background_rebuild: false,
        auto_replace: false,
        read_only: true,
        force: FORCE_DEGRADED.load(std::sync::atomic::Ordering::Relaxed),
        map_cache_bytes: map_cache_bytes(),
        ..OpenOptions::default()
    };
    open_paths(paths, &options)
}

/// Refuse a request that reaches past the volume, naming the user's offset and length.
/// An age or a duration such as `90s`, `10m`, `26h` or `8d`, in seconds.
pub(crate) fn parse_age(input: &str) -> Result<u64, String> {
    let (number, unit) = input.split_at(
        input
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(input.len()),
    );
    let value: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {input:?} (e.g. 90s, 10m, 26h, 8d)"))?;
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid duration unit in {input:?} (s, m, h or d)")),
    };
    value
        .checked_mul(unit)
        .ok_or_else(|| format!("duration {input:?} is too large"))
}

pub(crate) fn check_request(offset: u64, length: u64, volume_bytes: u64) -> CliResult {
    if offset
        .checked_add(length)
        .is_none_or(|end| end > volume_bytes)
    {
        return Err(format!(
            "request out of range: offset {offset} + length {length} runs past the end of the volume ({volume_bytes} bytes); nothing was done"
        )
        .into());
    }
    Ok(())
}

/// The input of `write` (a file, else standard input) and its length in bytes. Standard input
/// that is not a regular file (a pipe, a terminal) is first copied to a temporary file.
fn input_with_length(
    input: Option<&Path>,
) -> Result<(Box<dyn Read>, u64), Box<dyn std::error::Error>> {
    use std::os::fd::AsFd;
    let name = |path: &Path| path.display().to_string();
    if let Some(path) = input {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", name(path)))?;
        let length = file
            .metadata()
            .map_err(|e| format!("{}: {e}", name(path)))?
            .len();
        return Ok((Box::new(file), length));
    }
    let stdin = std::io::stdin();
    let duplicate = stdin.as_fd().try_clone_to_owned()?;
    let file = std::fs::File::from(duplicate);
    if file.metadata().is_ok_and(|m| m.is_file()) {
        let position = std::io::Seek::stream_position(&mut &file).unwrap_or(0);
        let length = file.metadata()?.len().saturating_sub(position);
        return Ok((Box::new(file), length));
    }
    let mut spool = tempfile::tempfile()?;
    let length = std::io::copy(&mut stdin.lock(), &mut spool)?;
    std::io::Seek::rewind(&mut spool)?;
    Ok((Box::new(spool), length))
}

/// `--layout`: a usage error (exit 2) if it cannot be understood.
fn layout_arg(text: &str) -> Result<Layout, String> {
    text.parse()
        .map_err(|err: stripestore::Error| err.to_string())
}

/// `--layout` kept as text (for commands that pass it on), checked the same way.
fn layout_text_arg(text: &str) -> Result<String, String> {
    layout_arg(text).map(|_| text.to_string())
}

/// `--chunk-size`: a size, a multiple of 4K from 4K to 16M.
fn chunk_size_arg(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes < 4096 || !bytes.is_multiple_of(4096) || bytes > 16 << 20 {
        return Err(format!(
            "chunk size {bytes} must be a multiple of 4K between 4K and 16M"
        ));
    }
    Ok(bytes)
}

/// `create --format`: 4, the only version this build creates; an earlier one is refused
/// naming both and the way out.
fn format_arg(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(4) => Ok(4),
        Ok(version @ 1..=3) => Err(format!(
            "this build creates format version 4 pools only, not version {version}; it opens \
             pools of versions 1 to 3 read-only, and `create --copy-from MEMBER` moves one into \
             a new version-4 pool"
        )),
        _ => Err(format!(
            "{text:?} is not a format version this build knows (4)"
        )),
    }
}

/// `--checksum-size`: a size, a multiple of 4K (that it divides the chunk is checked after).
fn checksum_size_arg(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes < 4096 || !bytes.is_multiple_of(4096) {
        return Err(format!("checksum block {bytes} must be a multiple of 4K"));
    }
    Ok(bytes)
}

/// A usage error found after parsing (options that do not fit together): printed the way
/// clap prints its own, and the usage exit code.
fn usage_error(message: &str) -> Box<dyn std::error::Error> {
    let _ = <Cli as clap::CommandFactory>::command()
        .error(clap::error::ErrorKind::ArgumentConflict, message)
        .print();
    Box::new(Exit(usage_exit_code()))
}

/// Refuse `path` if the open pool already uses it (a member in service, a replacement being
/// rebuilt, an available spare), comparing canonical paths before it is opened: the pool holds
/// such a device open, so opening it again would only say "in use".
fn refuse_pool_device(pool: &Pool, path: &Path) -> Result<(), stripestore::Error> {
    let target = canonical_path(path);
    let same = |recorded: &str| canonical_path(Path::new(recorded)) == target;
    let status = pool.status();
    let data = status
        .devices
        .iter()
        .filter(|d| d.state != "FAULTED" && d.state != "OFFLINE" && same(&d.path))
        .map(|d| match (d.index, &d.replacing) {
            (Some(i), Some(_)) => format!("the replacement being rebuilt for data position {i}"),
            (Some(i), None) => format!("a member (data position {i})"),
            (None, _) => "a member".to_string(),
        });
    let spares = status
        .spares
        .iter()
        .filter(|s| s.state == "AVAIL" && same(&s.path))
        .map(|_| "a spare".to_string());
    match data.chain(spares).next() {
        Some(role) => Err(stripestore::Error::AlreadyMember {
            device: path.display().to_string(),
            role,
        }),
        None => Ok(()),
    }
}

/// Open a pool for one command: no background thread, no automatic spare attachment (the
/// `rebuild` command does that, in the foreground, with progress).
pub(crate) fn open_pool(paths: &[PathBuf]) -> Result<Pool, stripestore::Error> {
    let options = OpenOptions {
        background_rebuild: false,
        auto_replace: false,
        force: FORCE_DEGRADED.load(std::sync::atomic::Ordering::Relaxed),
        map_cache_bytes: map_cache_bytes(),
        ..OpenOptions::default()
    };
    open_paths(paths, &options)
}

/// Run pending rebuilds on this thread with a progress bar.
pub(crate) fn run_rebuilds_with_progress(pool: &Pool) -> CliResult {
    let total: u64 = pool.rebuild_progress().iter().map(|r| r.total_bytes).sum();
    if total == 0 && pool.rebuild_progress().is_empty() {
        return Ok(());
    }
    let mut progress = Progress::new("rebuilding", total);
    let mut shown = 0;
    pool.run_rebuilds(|rebuilds| {
        let done: u64 = rebuilds.iter().map(|r| r.done_bytes).sum();
        progress.advance(done.saturating_sub(shown));
        shown = shown.max(done);
    })?;
    progress.advance(total.saturating_sub(shown));
    let rate = progress.finish();
    eprintln!("  rebuild complete ({}/s)", human_bytes(rate));
    Ok(())
}

/// The directory to work in: `dir` if given (created if needed), else a new temporary directory
/// under `parent` that is removed when the returned guard drops.
pub(crate) fn work_dir(
    dir: Option<&Path>,
    parent: &Path,
) -> std::io::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            Ok((dir.to_path_buf(), None))
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("stripestore")
                .tempdir_in(parent)?;
            Ok((temp.path().to_path_buf(), Some(temp)))
        }
    }
}

/// Read until `buf` is full or input ends.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn main() -> ExitCode {
    run()
}
