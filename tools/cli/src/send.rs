//! `snapshot diff`, `send` and `receive` (docs/FORMAT.md V4.10d): what changed between two
//! recovery points, a stream of one, and a receive into another pool (any layout).
//!
//! Owns: the command lines, where a stream comes from and goes to (a file, stdin spooled to an
//! unnamed temporary file, stdout), and what is printed. Does not own: the stream's bytes and
//! checks (the library's).

use crate::{open_pool, open_pool_to_look, CliResult, Progress};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use stripestore::pool::{ChangedRange, ReceivePhase};
use stripestore::types::human_bytes;

/// `snapshot diff POOL --from A --to B [--json]`: the byte ranges whose content may differ.
pub(crate) fn diff(pool: &[PathBuf], from: Option<&str>, to: &str, json: bool) -> CliResult {
    let pool = open_pool_to_look(pool)?;
    pool.recovery_points_supported()?;
    let mut ranges: Vec<ChangedRange> = Vec::new();
    let (mut data, mut zeros) = (0u64, 0u64);
    let mut out = std::io::stdout().lock();
    pool.diff_recovery_points(from, to, &mut |range| {
        if range.zeros {
            zeros += range.length;
        } else {
            data += range.length;
        }
        if json {
            ranges.push(range);
        } else {
            // A closed pipe (`| head`) ends the listing, not the process with a panic.
            let _ = writeln!(
                out,
                "{:>16} {:>14} {}",
                range.offset,
                range.length,
                if range.zeros { "zeros" } else { "data" }
            );
        }
        Ok(())
    })?;
    if json {
        #[derive(serde::Serialize)]
        struct Diff<'a> {
            from: Option<&'a str>,
            to: &'a str,
            changed_data_bytes: u64,
            changed_to_zeros_bytes: u64,
            ranges: Vec<ChangedRange>,
        }
        let report = Diff {
            from,
            to,
            changed_data_bytes: data,
            changed_to_zeros_bytes: zeros,
            ranges,
        };
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprintln!(
            "{} → {to}: {} of data changed, {} now reads zeros",
            from.unwrap_or("(empty)"),
            human_bytes(data),
            human_bytes(zeros)
        );
    }
    pool.close()?;
    Ok(())
}

/// `send POOL --snapshot B [--from A] [--output F]`: the stream to a file or stdout; a
/// summary on stderr (stdout may be the stream).
pub(crate) fn send(
    pool: &[PathBuf],
    snapshot: &str,
    from: Option<&str>,
    output: Option<PathBuf>,
) -> CliResult {
    let to_stdout = output.is_none();
    if to_stdout && std::io::stdout().is_terminal() {
        return Err("send writes a binary stream: give --output FILE, or redirect stdout".into());
    }
    let pool = open_pool_to_look(pool)?;
    pool.recovery_points_supported()?;
    // The size of the changed data is not known before the walk: the bar counts data sent.
    let mut progress = Progress::new("sending", pool.size());
    let started = std::time::Instant::now();
    let mut out: Box<dyn Write> = match &output {
        Some(path) => Box::new(std::io::BufWriter::with_capacity(
            4 << 20,
            std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::with_capacity(
            4 << 20,
            std::io::stdout().lock(),
        )),
    };
    let report = pool.send(snapshot, from, &mut out, &mut |done| {
        progress.set_done(done)
    })?;
    out.flush()?;
    drop(out);
    if let Some(path) = &output {
        // Durable before the summary says sent (a regular file; /dev/null has nothing to sync).
        let file = std::fs::File::open(path)?;
        if file.metadata()?.is_file() {
            file.sync_all()?;
        }
    }
    progress.finish();
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "sent {} ({}): {} records, {} of data, {} as zeros, {} stream in {:.1} s ({}/s)",
        report.name,
        if report.base_guid == 0 {
            "full".to_string()
        } else {
            format!("incremental from {}", from.unwrap_or("?"))
        },
        report.records,
        human_bytes(report.data_bytes),
        human_bytes(report.zero_bytes),
        human_bytes(report.stream_bytes),
        secs,
        human_bytes((report.stream_bytes as f64 / secs) as u64)
    );
    pool.close()?;
    Ok(())
}

/// `receive POOL [--input F] [--json]` and `receive POOL --abort`.
pub(crate) fn receive(
    pool: &[PathBuf],
    input: Option<PathBuf>,
    abort: bool,
    json: bool,
) -> CliResult {
    // Refused before the pool is opened for writing: a version-3 pool.
    let look = open_pool_to_look(pool)?;
    look.recovery_points_supported()?;
    let unfinished = look.unfinished_receive();
    look.close()?;
    if abort {
        let Some(unfinished) = unfinished else {
            return Err("no receive is unfinished: there is nothing to abort".into());
        };
        let pool = open_pool(pool)?;
        let freed = pool.abort_receive()?;
        println!(
            "receive of {} aborted: the volume is as before it; {} of data and {} of \
             metadata freed",
            unfinished.name,
            human_bytes(freed.blocks * stripestore::volume::BLOCK_BYTES as u64),
            human_bytes(freed.pages * 16384)
        );
        pool.close()?;
        return Ok(());
    }
    let file = match &input {
        Some(path) => std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?,
        None => {
            if std::io::stdin().is_terminal() {
                return Err("receive reads a stream: give --input FILE, or redirect stdin".into());
            }
            // The stream is read twice (checked whole, then applied): a pipe is kept in an
            // unnamed temporary file ($TMPDIR) meanwhile.
            let mut spool = tempfile::tempfile()?;
            std::io::copy(&mut std::io::stdin().lock(), &mut spool)?;
            std::io::Seek::rewind(&mut spool)?;
            spool
        }
    };
    let total = file.metadata()?.len();
    let mut file = std::io::BufReader::with_capacity(4 << 20, file);
    let pool = open_pool(pool)?;
    let mut checking = Some(Progress::new("checking the stream", total));
    let mut applying: Option<Progress> = None;
    let started = std::time::Instant::now();
    let report = pool.receive(&mut file, &mut |phase, at| match phase {
        ReceivePhase::Checking => {
            if let Some(p) = &mut checking {
                p.set_done(at);
            }
        }
        ReceivePhase::Applying => {
            if let Some(p) = checking.take() {
                p.finish();
            }
            applying
                .get_or_insert_with(|| Progress::new("applying", total))
                .set_done(at);
        }
    });
    if let Some(p) = checking.take() {
        p.finish();
    }
    if let Some(p) = applying.take() {
        p.finish();
    }
    let report = report?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "received {}{}: {} records, {} of data, {} as zeros, in {:.1} s",
            report.name,
            if report.resumed {
                " (an unfinished receive, resumed)"
            } else {
                ""
            },
            report.records,
            human_bytes(report.data_bytes),
            human_bytes(report.zero_bytes),
            started.elapsed().as_secs_f64()
        );
    }
    pool.close()?;
    Ok(())
}
