//! `stripestore serve`: export a pool over NBD until SIGINT or SIGTERM.
//!
//! Signals: `signal-hook` sets an atomic flag that the server's accept loop watches (no code
//! runs inside the handler, which is the one async-signal-safe way to react, and the crate
//! does the `sigaction` registration so this crate stays free of `unsafe`). `ctrlc` would
//! also do, but it covers SIGTERM only behind a feature and offers no second-signal exit. A
//! second SIGINT/SIGTERM while the first shutdown is still draining exits at once (status 1);
//! writes not yet flushed are then lost, as after a crash, but nothing flushed is.

use super::{CliResult, FORCE_DEGRADED};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use stripestore::nbd::{Listen, ServeOptions, Server};
use stripestore::types::human_bytes;
use stripestore::OpenOptions;

/// Arguments of `serve` (new flags, such as a metrics address, belong here).
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// One or more member paths.
    #[arg(required = true)]
    pool: Vec<PathBuf>,
    /// TCP address to listen on (loopback by default; give 0.0.0.0:10809 to serve other
    /// machines).
    #[arg(long, default_value = "127.0.0.1:10809", conflicts_with = "socket")]
    listen: SocketAddr,
    /// Listen on a Unix socket instead of TCP.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Export name (the empty name, the default export, selects it too).
    #[arg(long, default_value = "")]
    export: String,
    /// Refuse writes.
    #[arg(long)]
    read_only: bool,
    /// Export this recovery point (`snapshot list`), read-only, instead of the live volume.
    #[arg(long, conflicts_with = "snapshot_every")]
    snapshot: Option<String>,
    /// Also export every recovery point, read-only, under its own name, beside the volume
    /// (`nbdinfo --list` shows them; a client names one, e.g. nbd://127.0.0.1:10809/monday).
    #[arg(long)]
    snapshot_exports: bool,
    /// Take a recovery point on every boundary of this period (UTC), e.g. 15m, 1h, 1d,
    /// named `auto-2026-12-05T16:00:00Z`, and one before each replace
    /// (`auto-before-replace-…`); `--keep` says which stay.
    #[arg(long, value_parser = crate::parse_age)]
    snapshot_every: Option<u64>,
    /// Which of the policy's recovery points stay: the newest of each of the last N hours,
    /// days and weeks, the `last` N, and the `events` N newest taken before a replace. Held
    /// ones, and ones of other names, are never deleted.
    #[arg(
        long,
        default_value = "hourly=24,daily=7,weekly=4,events=10",
        requires = "snapshot_every"
    )]
    keep: stripestore::pool::Retention,
    /// Clients served at once.
    #[arg(long, default_value = "64")]
    max_connections: usize,
    /// Also serve Prometheus metrics (`GET /metrics`) and the pool's status (`GET /status`,
    /// `/status.json`; what `status --url` and `check --url` read) at this address, e.g.
    /// 127.0.0.1:9640.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Accept control on the --metrics address: scrubs (`scrub --url`: start, pause,
    /// cancel) and administration (`offline`, `online`, `replace`, `clear`, `spare add|remove`
    /// with --url). Anyone who can reach the address can then change the pool and make this
    /// process open or create files at paths it names.
    #[arg(long, requires = "metrics")]
    control: bool,
    /// Do not rebuild onto a spare by itself when a member faults (rebuilds started by
    /// `replace`, `online` or `clear` still run).
    #[arg(long)]
    no_auto_replace: bool,
    /// Rebuild rate limit, e.g. 200M (per second; default: as fast as the devices allow,
    /// yielding to client I/O).
    #[arg(long, value_parser = stripestore::types::parse_size)]
    rebuild_rate: Option<u64>,
    /// How long a member that stops answering (a remote export whose host is cut off) stays
    /// UNAVAILABLE, expected back and then resynced by what changed, before it is faulted and
    /// a spare takes over: e.g. 90s, 10m (Ceph's down → out interval).
    #[arg(long, default_value = "10m", value_parser = grace_arg)]
    grace: std::time::Duration,
}

fn grace_arg(input: &str) -> Result<std::time::Duration, String> {
    crate::parse_age(input).map(std::time::Duration::from_secs)
}

/// Open the pool (background rebuild on), serve it until a signal, then flush and close it.
pub fn run(args: ServeArgs) -> CliResult {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Order matters: the conditional exit is armed first, so it sees the flag as it was
        // before this signal (set only by an earlier one).
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop))?;
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let options = OpenOptions {
        background_rebuild: true,
        auto_replace: !args.no_auto_replace,
        rebuild_rate_bytes_per_s: args.rebuild_rate,
        force: FORCE_DEGRADED.load(Ordering::Relaxed),
        map_cache_bytes: super::map_cache_bytes(),
        unavailable_grace: args.grace,
        ..OpenOptions::default()
    };
    let pool = Arc::new(super::open_paths(&args.pool, &options)?);
    if let Some(every) = args.snapshot_every {
        pool.set_snapshot_policy(Some(stripestore::pool::SnapshotPolicy::new(
            std::time::Duration::from_secs(every),
            args.keep,
        )))?;
        eprintln!(
            "recovery points every {every} s (auto-…), keeping {}",
            args.keep
        );
    }
    let metrics = match args.metrics {
        Some(address) => {
            let server = stripestore::endpoint::serve(&pool, address, args.control)
                .map_err(|e| format!("cannot serve metrics on {address}: {e}"))?;
            if !address.ip().is_loopback() {
                eprintln!(
                    "warning: metrics and status are served to the network at {address}{}",
                    if args.control {
                        ", and anyone who can reach it can start and stop scrubs and administer the pool"
                    } else {
                        ""
                    }
                );
            }
            // On stderr: stdout carries the one line scripts parse for the NBD address.
            eprintln!("metrics at http://{}/metrics", server.address());
            Some(server)
        }
        None => None,
    };
    let listen = match args.socket {
        Some(path) => Listen::Unix(path),
        None => Listen::Tcp(args.listen),
    };
    if !args.listen.ip().is_loopback() && matches!(listen, Listen::Tcp(_)) {
        eprintln!(
            "warning: serving {} to the network: NBD has no authentication here and no TLS; \
             anyone who can reach this address can read and write the volume",
            args.listen
        );
    }
    let serve = ServeOptions {
        export_name: args.export,
        read_only: args.read_only,
        max_connections: args.max_connections,
        recovery_point: args.snapshot.clone(),
        recovery_point_exports: args.snapshot_exports,
    };
    if let Some(point) = &args.snapshot {
        // Refused before a client connects: a recovery point the pool does not have.
        let mut probe = [0u8; 0];
        pool.read_recovery_point(point, 0, &mut probe)?;
    }
    let server = Server::bind(&listen, Arc::clone(&pool), serve)
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?
        .with_stop_flag(stop);
    let export = server.export().clone();
    // One parseable line on stdout (tests and scripts read the address from it).
    println!(
        "serving {} ({}{}) at {}",
        if export.name.is_empty() {
            "the default export"
        } else {
            &export.name
        },
        human_bytes(export.size_bytes),
        match (&args.snapshot, export.read_only()) {
            (Some(point), _) => format!(", read-only, recovery point {point}"),
            (None, true) => ", read-only".to_string(),
            (None, false) => String::new(),
        },
        server.local_addr()?
    );
    let report = server.run()?;
    drop(metrics);
    eprintln!(
        "stopping: {} clients served; flushing and closing the pool",
        report.connections
    );
    match Arc::try_unwrap(pool) {
        Ok(pool) => pool.close()?,
        // Every connection thread has been joined, so this does not happen; dropping the
        // last reference would flush anyway.
        Err(pool) => pool.flush()?,
    }
    eprintln!("pool closed cleanly");
    Ok(())
}
