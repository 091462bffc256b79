//! `stripestore simulate`: run deterministic disk-failure simulation campaigns (see
//! `stripestore::sim`) with a progress line and a summary of faults injected and outcomes. On a
//! violation: the seed, the failing step, a shrunk op list saved for `--replay`, exit code 1.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use stripestore::sim::{self, FaultSet, Op, Replay, SimConfig, Stats, LAYOUTS};
use stripestore::types::parse_size;
use stripestore::Layout;

/// Arguments of `stripestore simulate`.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// First seed; run N uses seed + N.
    #[arg(long, default_value = "1")]
    seed: u64,
    /// Number of runs (seeds); with --duration, runs go on until the time is up.
    #[arg(long)]
    runs: Option<u64>,
    /// Operations per run.
    #[arg(long, default_value = "300")]
    ops: usize,
    /// Layout (mirror:N, raid10:N, rs:K+M), or `all` to cycle through every layout.
    #[arg(long, default_value = "all")]
    layout: String,
    /// Data devices (default: the layout's smallest count).
    #[arg(long)]
    devices: Option<usize>,
    /// Faults to inject: `all`, `none`, or a comma list of lost, torn, misdirected,
    /// write-error, read-error, read-flip, rot, fail-stop, slow, crash.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Run for this long (e.g. 30s, 10m, 2h), as many runs as fit.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Never go beyond the layout's tolerance (skip the final over-tolerance check).
    #[arg(long)]
    within_tolerance: bool,
    /// Inject faults only into the data area (not superblocks, map checkpoints and log).
    #[arg(long)]
    data_faults_only: bool,
    /// Switch one protection off in the simulated pool, to watch the simulation catch it:
    /// skip-checksum-verification, skip-commit-data-flush, fault-on-data-errors,
    /// skip-discard-log, and on --format 4 skip-page-checksum-verification,
    /// release-before-root-durable (repeatable).
    #[arg(long, value_name = "BUG")]
    plant: Vec<String>,
    /// Size of each simulated device (default 1M; 8M with --format 4).
    #[arg(long, value_parser = parse_size)]
    device_size: Option<u64>,
    /// On-disk format of the simulated pool: 4 (what `create` makes) or 3. A replay line
    /// names the format of its run.
    #[arg(long, default_value = "4", value_parser = clap::builder::PossibleValuesParser::new(["3", "4"]))]
    format: String,
    /// Replay a workload saved by a failing run (JSON), instead of generating one.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Time allowed to shrink a failing workload.
    #[arg(long, default_value = "60")]
    shrink_seconds: u64,
    /// Machine-readable summary on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_duration(input: &str) -> Result<Duration, String> {
    crate::parse_age(input).map(Duration::from_secs)
}

/// Smallest device count that suits `layout`.
fn default_devices(layout: Layout) -> usize {
    match layout {
        Layout::Mirror { copies } => copies,
        Layout::Raid10 { copies } => 2 * copies,
        Layout::ReedSolomon { data, parity } => data + parity,
    }
}

/// The configuration of run number `index`.
fn config_for(
    args: &SimulateArgs,
    faults: &FaultSet,
    index: u64,
) -> Result<SimConfig, stripestore::Error> {
    let (layout, devices) = if args.layout == "all" {
        let (name, devices) = LAYOUTS[usize::try_from(index).unwrap_or(0) % LAYOUTS.len()];
        (name.parse::<Layout>()?, devices)
    } else {
        let layout: Layout = args.layout.parse()?;
        (
            layout,
            args.devices.unwrap_or_else(|| default_devices(layout)),
        )
    };
    let mut config = if args.format == "4" {
        SimConfig::new_v4(args.seed + index, layout, devices)
    } else {
        SimConfig::new(args.seed + index, layout, devices)
    };
    config.ops = args.ops;
    config.faults = faults.clone();
    if let Some(bytes) = args.device_size {
        config.device_bytes = bytes;
    }
    config.beyond_tolerance = !args.within_tolerance;
    config.metadata_faults = !args.data_faults_only;
    for name in &args.plant {
        sim::plant(&mut config.planted, name).map_err(stripestore::Error::InvalidConfig)?;
    }
    Ok(config)
}

/// Run the command.
pub fn run(args: &SimulateArgs) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(path) = &args.replay {
        return replay(path);
    }
    let faults: FaultSet = args.faults.parse()?;
    let started = Instant::now();
    let runs = match (args.runs, args.duration) {
        (Some(runs), _) => runs,
        (None, Some(_)) => u64::MAX,
        (None, None) => 1,
    };
    let mut by_layout: BTreeMap<String, Stats> = BTreeMap::new();
    let mut total = Stats::default();
    let tty = std::io::stderr().is_terminal();
    let mut last_line = Instant::now();
    let mut failure = None;
    for index in 0..runs {
        if args
            .duration
            .is_some_and(|limit| started.elapsed() >= limit)
        {
            break;
        }
        let config = config_for(args, &faults, index)?;
        let ops = sim::generate(&config);
        let report = sim::run(&config, &ops)?;
        let label = format!("{} on {}", config.layout, config.devices);
        by_layout.entry(label).or_default().merge(&report.stats);
        total.merge(&report.stats);
        if let Some(violation) = report.violation {
            failure = Some((config, ops, violation));
            break;
        }
        if tty || last_line.elapsed() >= Duration::from_secs(10) {
            last_line = Instant::now();
            let line = format!(
                "  [{:>6.0}s] runs {}  ops {}  faults {}  crashes {}  violations 0  (seed {})",
                started.elapsed().as_secs_f64(),
                total.runs,
                total.total_ops(),
                total.total_faults(),
                total.faults.get("crash").copied().unwrap_or(0),
                config.seed
            );
            if tty {
                eprint!("\r{line}");
                let _ = std::io::stderr().flush();
            } else {
                eprintln!("{line}");
            }
        }
    }
    if tty {
        eprintln!();
    }
    let elapsed = started.elapsed();
    if args.json {
        let summary = serde_json::json!({
            "elapsed_s": elapsed.as_secs_f64(),
            "first_seed": args.seed,
            "faults": args.faults,
            "total": total,
            "by_layout": by_layout,
            "violation": failure.as_ref().map(|(config, _, v)| serde_json::json!({
                "seed": config.seed, "step": v.step, "message": v.message,
                "replay": config.command_line(),
            })),
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&by_layout, &total, elapsed, args.seed);
    }
    match failure {
        None => Ok(()),
        Some((config, ops, violation)) => {
            report_failure(
                &config,
                &ops,
                &violation,
                Duration::from_secs(args.shrink_seconds),
            )?;
            Err(format!("violation in seed {}: {}", config.seed, violation.message).into())
        }
    }
}

fn report_failure(
    config: &SimConfig,
    ops: &[Op],
    violation: &sim::Violation,
    budget: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    eprintln!(
        "VIOLATION in seed {} ({} on {} devices)",
        config.seed, config.layout, config.devices
    );
    eprintln!("  {violation}");
    eprintln!("  replay the whole run: {}", config.command_line());
    eprintln!("  shrinking (up to {}s)...", budget.as_secs());
    let (shrunk, found) = sim::shrink(config, ops, budget);
    let path = PathBuf::from(format!("stripestore-sim-{}.json", config.seed));
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&Replay::new(config, &shrunk))?,
    )?;
    eprintln!(
        "  minimal replay: {} ops (of {}), saved to {}:",
        shrunk.len(),
        ops.len(),
        path.display()
    );
    for (i, op) in shrunk.iter().enumerate() {
        eprintln!("    {i:>4}: {op:?}");
    }
    if let Some(found) = found {
        eprintln!("  it fails with: {}", found.message);
    }
    eprintln!(
        "  replay it: stripestore simulate --replay {}",
        path.display()
    );
    Ok(())
}

fn replay(path: &PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    let replay: Replay = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let config = replay.config()?;
    let report = sim::run(&config, &replay.ops)?;
    eprintln!(
        "replayed {} ops of seed {} ({} on {} devices)",
        replay.ops.len(),
        config.seed,
        config.layout,
        config.devices
    );
    match report.violation {
        None => {
            println!("no violation");
            Ok(())
        }
        Some(violation) => Err(format!("violation: {violation}").into()),
    }
}

fn print_summary(by_layout: &BTreeMap<String, Stats>, total: &Stats, elapsed: Duration, seed: u64) {
    let last_seed = seed + total.runs.saturating_sub(1);
    println!(
        "simulation: {} runs (seeds {seed}..={last_seed}), {} operations, {:.1}s",
        total.runs,
        total.total_ops(),
        elapsed.as_secs_f64()
    );
    println!();
    println!(
        "{:<16} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10}",
        "layout", "runs", "ops", "faults", "crashes", "rebuilt", "over-tol", "violations"
    );
    for (layout, stats) in by_layout
        .iter()
        .chain(std::iter::once((&"total".to_string(), total)))
    {
        println!(
            "{:<16} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10}",
            layout,
            stats.runs,
            stats.total_ops(),
            stats.total_faults(),
            stats.faults.get("crash").copied().unwrap_or(0),
            stats.rebuilds_completed,
            stats.ops.get("beyond-tolerance").copied().unwrap_or(0),
            stats.violations
        );
    }
    println!();
    println!("{:<16} {:>10}", "fault injected", "count");
    for (kind, count) in &total.faults {
        println!("{kind:<16} {count:>10}");
    }
    println!();
    println!("{:<16} {:>10}", "operation", "count");
    for (op, count) in &total.ops {
        println!("{op:<16} {count:>10}");
    }
    if !total.classes.is_empty() {
        println!();
        println!("{:<34} {:>10}", "fault-class check", "count");
        for (class, count) in &total.classes {
            println!("{class:<34} {count:>10}");
        }
    }
    println!();
    println!(
        "checked reads {}, scrub bad shards healed {}, skipped ops (budget) {}, forced opens {}, damaged devices refused at open {}",
        total.checked_reads,
        total.scrub_bad_shards,
        total.skipped,
        total.forced_opens,
        total.refused_at_open
    );
    println!(
        "beyond tolerance: {} unaffected stripes read back exactly, {} affected stripes failed with a clear error",
        total.unaffected_stripes_ok, total.affected_stripes_failed_clearly
    );
}
