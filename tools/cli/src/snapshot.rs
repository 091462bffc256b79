//! `snapshot create|list|delete|hold|release|diff` and `read --snapshot`: the pool's recovery
//! points (docs/FORMAT.md V4.10a, V4.10b) from the command line. Each command opens the pool,
//! does one thing and closes it; `list` and `read` open it read-only (looking never writes).

use crate::{open_pool, open_pool_to_look, CliResult};
use clap::Subcommand;
use std::path::PathBuf;
use stripestore::types::{human_bytes, utc_time};

#[derive(Subcommand, Debug)]
pub(crate) enum SnapshotAction {
    /// Take a recovery point of everything written so far (instant: nothing is copied).
    Create {
        /// One or more member paths.
        #[arg(required_unless_present = "url", conflicts_with = "url")]
        pool: Vec<PathBuf>,
        /// Take it in the process serving the pool (`serve --metrics ADDR --control`), e.g.
        /// http://127.0.0.1:9640: `POST /snapshot?name=NAME`.
        #[arg(long)]
        url: Option<String>,
        /// Its name: 1 to 63 letters, digits and . _ : -
        #[arg(long)]
        name: String,
    },
    /// List the recovery points, oldest first: name, created (UTC), holds, the data each
    /// names (referenced), and the bytes deleting each frees (unique).
    List {
        /// One or more member paths.
        #[arg(required = true)]
        pool: Vec<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Delete a recovery point (refused while held): it is gone from the list at once, and
    /// the space only it held comes back in the background, paced, wherever the pool is
    /// open for writing (`serve`), or now with `snapshot reclaim` or --wait. A crash
    /// loses no progress.
    Delete {
        /// One or more member paths.
        #[arg(required_unless_present = "url", conflicts_with = "url")]
        pool: Vec<PathBuf>,
        /// Delete it in the process serving the pool (`serve --metrics ADDR --control`),
        /// whose reclaim thread frees the space: `POST /snapshot/delete?name=NAME`.
        #[arg(long, conflicts_with = "wait")]
        url: Option<String>,
        /// Its name.
        #[arg(long)]
        name: String,
        /// Free its space now, with progress, before returning.
        #[arg(long)]
        wait: bool,
    },
    /// Free the space of every recovery point being deleted, now, with progress.
    Reclaim {
        /// One or more member paths.
        #[arg(required = true)]
        pool: Vec<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Put a hold on a recovery point: it is not deleted until released.
    Hold {
        /// One or more member paths.
        #[arg(required = true)]
        pool: Vec<PathBuf>,
        /// Its name.
        #[arg(long)]
        name: String,
    },
    /// The byte ranges whose content may differ between two recovery points (what an
    /// incremental `send` carries): `OFFSET LENGTH data|zeros` per line, or --json.
    Diff {
        /// One or more member paths.
        #[arg(required = true)]
        pool: Vec<PathBuf>,
        /// The older recovery point (default: an empty volume).
        #[arg(long)]
        from: Option<String>,
        /// The newer recovery point.
        #[arg(long)]
        to: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Take a hold off a recovery point.
    Release {
        /// One or more member paths.
        #[arg(required = true)]
        pool: Vec<PathBuf>,
        /// Its name.
        #[arg(long)]
        name: String,
    },
}

pub(crate) fn run(action: SnapshotAction) -> CliResult {
    if let SnapshotAction::Create {
        url: Some(url),
        name,
        ..
    } = &action
    {
        return crate::remote::admin(url, "/snapshot", &[("name", Some(name.clone()))], false);
    }
    if let SnapshotAction::Delete {
        url: Some(url),
        name,
        ..
    } = &action
    {
        return crate::remote::admin(
            url,
            "/snapshot/delete",
            &[("name", Some(name.clone()))],
            false,
        );
    }
    if let SnapshotAction::Create { pool, .. }
    | SnapshotAction::Delete { pool, .. }
    | SnapshotAction::Reclaim { pool, .. }
    | SnapshotAction::Hold { pool, .. }
    | SnapshotAction::Release { pool, .. } = &action
    {
        // A pool that cannot keep recovery points is refused before it is opened for
        // writing (an open for writing records itself in the superblocks).
        let look = open_pool_to_look(pool)?;
        look.recovery_points_supported()?;
        look.close()?;
    }
    match action {
        SnapshotAction::Create { pool, name, .. } => {
            let pool = open_pool(&pool)?;
            let started = std::time::Instant::now();
            let point = pool.create_recovery_point(&name)?;
            let took = started.elapsed();
            println!(
                "recovery point {} taken at {} (sequence {}) in {:.1} ms",
                point.name,
                utc_time(point.created),
                point.sequence,
                took.as_secs_f64() * 1000.0
            );
            pool.close()?;
        }
        SnapshotAction::List { pool, json } => {
            let pool = open_pool_to_look(&pool)?;
            let points = pool.recovery_points()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&points)?);
            } else if points.is_empty() {
                println!("no recovery points");
            } else {
                println!(
                    "{:<32} {:<23} {:>5} {:>12} {:>12} {:>12}",
                    "NAME", "CREATED (UTC)", "HOLDS", "REFERENCED", "UNIQUE DATA", "UNIQUE META"
                );
                for p in &points {
                    let name = if p.automatic {
                        format!("{} (auto)", p.name)
                    } else {
                        p.name.clone()
                    };
                    println!(
                        "{:<32} {:<23} {:>5} {:>12} {:>12} {:>12}",
                        name,
                        utc_time(p.created),
                        p.holds,
                        p.referenced_data_bytes.map_or("-".into(), human_bytes),
                        p.unique_data_bytes.map_or("pending".into(), human_bytes),
                        p.unique_metadata_bytes
                            .map_or("pending".into(), human_bytes)
                    );
                }
            }
            if !json {
                for d in pool.deletes() {
                    println!(
                        "being deleted: {} ({:.0}% walked, {} of data freed so far)",
                        d.name,
                        d.percent(),
                        human_bytes(d.freed_data_bytes)
                    );
                }
            }
            pool.close()?;
        }
        SnapshotAction::Delete {
            pool, name, wait, ..
        } => {
            let pool = open_pool(&pool)?;
            pool.request_delete(&name)?;
            if wait {
                reclaim(&pool, false)?;
            } else {
                println!(
                    "recovery point {name} deleted: its space comes back in the background \
                     where the pool is open for writing (`serve`), or now with `snapshot \
                     reclaim`; `status` shows the progress"
                );
            }
            pool.close()?;
        }
        SnapshotAction::Reclaim { pool, json } => {
            let pool = open_pool(&pool)?;
            reclaim(&pool, json)?;
            pool.close()?;
        }
        SnapshotAction::Diff {
            pool,
            from,
            to,
            json,
        } => crate::send::diff(&pool, from.as_deref(), &to, json)?,
        SnapshotAction::Hold { pool, name } => hold(&pool, &name, true)?,
        SnapshotAction::Release { pool, name } => hold(&pool, &name, false)?,
    }
    Ok(())
}

/// Run the deletes asked for to their end, a bar per recovery point on stderr; what each
/// freed on stdout.
fn reclaim(pool: &stripestore::Pool, json: bool) -> CliResult {
    let mut bar: Option<(String, crate::progress::Progress)> = None;
    let report = pool.reclaim(&mut |point| {
        if bar.as_ref().is_none_or(|(name, _)| *name != point.name) {
            if let Some((_, done)) = bar.take() {
                done.finish();
            }
            let label = format!("reclaim {}", point.name);
            bar = Some((
                point.name.clone(),
                crate::progress::Progress::new(&label, point.blocks),
            ));
        }
        if let Some((_, progress)) = &mut bar {
            progress.set_done(point.blocks_walked);
        }
    })?;
    if let Some((_, done)) = bar.take() {
        done.finish();
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.deleted.is_empty() {
        println!("no recovery point is being deleted");
    } else {
        for (name, data, metadata) in &report.deleted {
            println!(
                "recovery point {name} deleted: {} of data and {} of metadata freed",
                human_bytes(*data),
                human_bytes(*metadata)
            );
        }
    }
    Ok(())
}

/// `rollback POOL --to NAME`.
pub(crate) fn rollback(pool: &[PathBuf], to: &str) -> CliResult {
    let look = open_pool_to_look(pool)?;
    look.recovery_points_supported()?;
    look.close()?;
    let pool = open_pool(pool)?;
    match pool.rollback_to(to)? {
        Some(before) => println!(
            "rolled back to {to}; the state before is recovery point {}",
            before.name
        ),
        None => println!(
            "rolled back to {to}; the state before was already a recovery point (the newest on the live line)"
        ),
    }
    pool.close()?;
    Ok(())
}

fn hold(pool: &[PathBuf], name: &str, hold: bool) -> CliResult {
    let pool = open_pool(pool)?;
    let holds = pool.hold_recovery_point(name, hold)?;
    println!("recovery point {name}: {holds} hold(s)");
    pool.close()?;
    Ok(())
}

/// `read --snapshot NAME`: `length` bytes at `offset` of the recovery point, to `output`
/// (or stdout).
pub(crate) fn read(
    pool: &[PathBuf],
    name: &str,
    offset: u64,
    length: u64,
    output: Option<PathBuf>,
) -> CliResult {
    use std::io::Write;
    let pool = open_pool_to_look(pool)?;
    crate::check_request(offset, length, pool.size())?;
    let mut writer: Box<dyn Write> = match &output {
        Some(path) => {
            Box::new(std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let piece = 8u64 << 20;
    let mut buf = vec![0u8; usize::try_from(piece.min(length))?];
    let mut done = 0u64;
    while done < length {
        let n = usize::try_from(piece.min(length - done))?;
        pool.read_recovery_point(name, offset + done, &mut buf[..n])?;
        writer.write_all(&buf[..n])?;
        done += n as u64;
    }
    writer.flush()?;
    pool.close()?;
    Ok(())
}
