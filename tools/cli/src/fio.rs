//! Running fio and reading its JSON report: the raw baselines of `stripestore bench` and the
//! mounted-path figures of `bench --nbd` come from it.
//!
//! Owns: building one fio command line (global options, then one job section per target),
//! running it with `--output-format=json --output=FILE`, and turning the report into an
//! [`Outcome`] (bytes/s, IOPS, completion latency p50/p99). Knows nothing about pools; the
//! caller says what to read or write and where.
//!
//! fio is the reference a user measures their disks with; with the `io_uring` engine and direct
//! I/O at the same block size and queue depth it is the physical limit a pool on those devices
//! is judged against. Its `nbd` engine (libnbd) is what a user runs against a mounted export.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What fio does in a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Sequential writes, with an fsync (NBD: a flush) at the end, inside the timing.
    SeqWrite,
    /// Sequential reads.
    SeqRead,
    /// Uniformly random reads.
    RandRead,
    /// Uniformly random writes, with an fsync (NBD: a flush) after every `fsync_every` writes
    /// when set.
    RandWrite { fsync_every: Option<u32> },
}

impl Pattern {
    fn rw(self) -> &'static str {
        match self {
            Pattern::SeqWrite => "write",
            Pattern::SeqRead => "read",
            Pattern::RandRead => "randread",
            Pattern::RandWrite { .. } => "randwrite",
        }
    }

    fn writes(self) -> bool {
        matches!(self, Pattern::SeqWrite | Pattern::RandWrite { .. })
    }
}

/// Where the I/O goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// Files or block devices through `io_uring`, one job per path, all at once (the aggregate
    /// of all devices), each over its whole `span_bytes`. `direct`: `O_DIRECT`.
    EachFile {
        paths: Vec<PathBuf>,
        span_bytes: u64,
        direct: bool,
    },
    /// One job spreading its requests over all `paths` (random reads across the devices at
    /// one total queue depth, as a client of the pool has).
    AcrossFiles {
        paths: Vec<PathBuf>,
        span_bytes: u64,
        direct: bool,
    },
    /// An NBD export on a Unix socket, through fio's `nbd` engine; `connections` jobs, each
    /// its own connection at the full queue depth.
    Nbd {
        socket: PathBuf,
        span_bytes: u64,
        connections: u32,
    },
}

/// One fio run.
#[derive(Debug, Clone)]
pub struct Job {
    pub pattern: Pattern,
    pub block_bytes: u64,
    pub queue_depth: u32,
    pub target: Target,
    /// Run for this long (time-based, looping over the span) instead of once over the span.
    pub seconds: Option<f64>,
    /// Make this share of the requests another size: `(bytes, percent of requests)`, the
    /// rest `block_bytes` (fio's `bssplit`). How a device serves a mix of reads of two sizes,
    /// e.g. the data reads and map page reads of a pool whose map is not all cached.
    pub mixed_with: Option<(u64, u32)>,
}

/// What fio measured (sums over jobs; latencies are the worst job's).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Outcome {
    pub bytes_per_s: f64,
    pub iops: f64,
    /// Completion latency, median, microseconds.
    pub p50_us: f64,
    /// Completion latency, 99th percentile, microseconds.
    pub p99_us: f64,
    /// Writes per sync (fsync, or an NBD flush) fio actually issued, when it issued any: with
    /// `--fsync=N` at a depth above 1, fio 3.33 syncs far more often than every N writes
    /// (one per 3.6 writes at depth 16, measured), so the figure is reported, not assumed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes_per_sync: Option<f64>,
}

/// fio's version, or why it cannot be used (not installed, no `io_uring` or `nbd` engine).
pub fn available(engines: &[&str]) -> Result<String, String> {
    let version = Command::new("fio")
        .arg("--version")
        .output()
        .map_err(|err| format!("fio is not installed ({err})"))?;
    let help = Command::new("fio")
        .arg("--enghelp")
        .output()
        .map_err(|err| format!("fio --enghelp failed ({err})"))?;
    let listed = String::from_utf8_lossy(&help.stdout).to_string();
    for engine in engines {
        if !listed.split_whitespace().any(|e| e == *engine) {
            return Err(format!("this fio has no {engine} engine"));
        }
    }
    Ok(String::from_utf8_lossy(&version.stdout).trim().to_string())
}

/// A path as fio's `filename=` wants it (`:` separates names, so it is escaped).
fn fio_path(path: &Path) -> String {
    path.display().to_string().replace(':', "\\:")
}

impl Job {
    /// The fio arguments of this job, its JSON report going to `output`.
    fn args(&self, output: &Path) -> Vec<String> {
        let mut args = vec![
            "--output-format=json".to_string(),
            format!("--output={}", output.display()),
            "--group_reporting".to_string(),
            format!("--rw={}", self.pattern.rw()),
            match self.mixed_with {
                Some((bytes, percent)) => format!(
                    "--bssplit={}/{}:{bytes}/{percent}",
                    self.block_bytes,
                    100 - percent.min(100)
                ),
                None => format!("--bs={}", self.block_bytes),
            },
            format!("--iodepth={}", self.queue_depth),
            "--randrepeat=0".to_string(),
            "--norandommap".to_string(),
        ];
        if self.pattern == Pattern::SeqWrite {
            args.push("--end_fsync=1".to_string());
        }
        if let Pattern::RandWrite {
            fsync_every: Some(n),
        } = self.pattern
        {
            args.push(format!("--fsync={n}"));
        }
        if let Some(seconds) = self.seconds {
            args.push("--time_based".to_string());
            args.push(format!(
                "--runtime={}ms",
                (seconds * 1000.0).round().max(1.0)
            ));
        }
        match &self.target {
            Target::EachFile {
                paths,
                span_bytes,
                direct,
            } => {
                args.push("--ioengine=io_uring".to_string());
                args.push(format!("--direct={}", u8::from(*direct)));
                args.push(format!("--size={span_bytes}"));
                for (i, path) in paths.iter().enumerate() {
                    args.push(format!("--name=dev{i}"));
                    args.push(format!("--filename={}", fio_path(path)));
                }
            }
            Target::AcrossFiles {
                paths,
                span_bytes,
                direct,
            } => {
                args.push("--ioengine=io_uring".to_string());
                args.push(format!("--direct={}", u8::from(*direct)));
                args.push(format!("--filesize={span_bytes}"));
                args.push("--file_service_type=random".to_string());
                args.push("--name=devices".to_string());
                let names: Vec<String> = paths.iter().map(|p| fio_path(p)).collect();
                args.push(format!("--filename={}", names.join(":")));
            }
            Target::Nbd {
                socket,
                span_bytes,
                connections,
            } => {
                args.push("--ioengine=nbd".to_string());
                args.push(format!("--uri=nbd+unix:///?socket={}", socket.display()));
                args.push(format!("--size={span_bytes}"));
                args.push(format!("--numjobs={}", (*connections).max(1)));
                args.push("--name=nbd".to_string());
            }
        }
        args
    }

    /// Run fio; its report is written to a file in `scratch`.
    ///
    /// # Errors
    /// fio failed to start, exited with an error (its stderr is in the message), or wrote no
    /// report that parses.
    pub fn run(&self, scratch: &Path) -> Result<Outcome, Box<dyn std::error::Error>> {
        let output = scratch.join("fio-report.json");
        let _ = std::fs::remove_file(&output);
        let args = self.args(&output);
        let ran = Command::new("fio").args(&args).output()?;
        if !ran.status.success() {
            return Err(format!(
                "fio {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&ran.stderr).trim(),
                String::from_utf8_lossy(&ran.stdout).trim()
            )
            .into());
        }
        let text = std::fs::read_to_string(&output)?;
        let _ = std::fs::remove_file(&output);
        parse_report(&text, self.pattern.writes())
            .map_err(|why| format!("fio {}: {why}", args.join(" ")).into())
    }
}

/// The figures of fio's JSON report (`text` may carry lines before the JSON).
fn parse_report(text: &str, write: bool) -> Result<Outcome, String> {
    let start = text.find('{').ok_or("no JSON report")?;
    let report: serde_json::Value =
        serde_json::from_str(&text[start..]).map_err(|err| format!("bad JSON report: {err}"))?;
    let jobs = report["jobs"].as_array().ok_or("no jobs in the report")?;
    let side = if write { "write" } else { "read" };
    let mut outcome = Outcome::default();
    let (mut writes, mut syncs) = (0.0, 0.0);
    for job in jobs {
        if job["error"].as_i64().unwrap_or(0) != 0 {
            return Err(format!(
                "job {} failed: error {}",
                job["jobname"], job["error"]
            ));
        }
        let stats = &job[side];
        outcome.bytes_per_s += stats["bw_bytes"].as_f64().unwrap_or(0.0);
        outcome.iops += stats["iops"].as_f64().unwrap_or(0.0);
        let percentile = |p: &str| stats["clat_ns"]["percentile"][p].as_f64().unwrap_or(0.0) / 1e3;
        outcome.p50_us = outcome.p50_us.max(percentile("50.000000"));
        outcome.p99_us = outcome.p99_us.max(percentile("99.000000"));
        writes += job["write"]["total_ios"].as_f64().unwrap_or(0.0);
        syncs += job["sync"]["total_ios"].as_f64().unwrap_or(0.0);
    }
    if syncs > 0.0 {
        outcome.writes_per_sync = Some(writes / syncs);
    }
    if outcome.iops <= 0.0 {
        return Err(format!("no {side} I/O in the report"));
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_sums_jobs_and_takes_the_worst_latency() {
        let text = r#"fio: connected to NBD server
{"jobs": [
 {"jobname": "a", "error": 0, "read": {"bw_bytes": 100, "iops": 10,
   "clat_ns": {"percentile": {"50.000000": 2000, "99.000000": 9000}}}},
 {"jobname": "b", "error": 0, "read": {"bw_bytes": 50, "iops": 5,
   "clat_ns": {"percentile": {"50.000000": 3000, "99.000000": 4000}}}}]}"#;
        let outcome = parse_report(text, false).unwrap();
        assert!((outcome.bytes_per_s - 150.0).abs() < 1e-9);
        assert!((outcome.iops - 15.0).abs() < 1e-9);
        assert!((outcome.p50_us - 3.0).abs() < 1e-9);
        assert!((outcome.p99_us - 9.0).abs() < 1e-9);
        assert!(parse_report(text, true).is_err(), "no writes in it");
    }

    #[test]
    fn the_writes_per_sync_fio_issued_are_counted_from_its_report() {
        let text = r#"{"jobs": [
 {"jobname": "a", "error": 0, "write": {"bw_bytes": 100, "iops": 10, "total_ios": 360,
   "clat_ns": {"percentile": {"50.000000": 2000, "99.000000": 9000}}},
  "sync": {"total_ios": 100}}]}"#;
        let outcome = parse_report(text, true).unwrap();
        assert_eq!(outcome.writes_per_sync, Some(3.6));
        let none = r#"{"jobs": [{"jobname": "a", "error": 0, "write": {"bw_bytes": 1,
   "iops": 1, "total_ios": 5, "clat_ns": {"percentile": {}}}, "sync": {"total_ios": 0}}]}"#;
        assert_eq!(parse_report(none, true).unwrap().writes_per_sync, None);
    }

    #[test]
    fn colons_in_paths_are_escaped_and_jobs_name_every_file() {
        let job = Job {
            pattern: Pattern::SeqRead,
            block_bytes: 1 << 20,
            queue_depth: 8,
            target: Target::EachFile {
                paths: vec!["/a:b".into(), "/c".into()],
                span_bytes: 4096,
                direct: true,
            },
            seconds: None,
            mixed_with: None,
        };
        let args = job.args(Path::new("/out.json"));
        assert!(args.contains(&"--filename=/a\\:b".to_string()));
        assert!(args.contains(&"--name=dev1".to_string()));
        assert!(args.contains(&"--direct=1".to_string()));
        assert!(args.contains(&"--bs=1048576".to_string()));
    }

    #[test]
    fn a_mix_of_sizes_replaces_the_block_size_with_a_split_by_request_count() {
        let job = Job {
            pattern: Pattern::RandRead,
            block_bytes: 4096,
            queue_depth: 16,
            target: Target::AcrossFiles {
                paths: vec!["/a".into()],
                span_bytes: 1 << 30,
                direct: true,
            },
            seconds: Some(1.0),
            mixed_with: Some((16384, 47)),
        };
        let args = job.args(Path::new("/out.json"));
        assert!(args.contains(&"--bssplit=4096/53:16384/47".to_string()));
        assert!(!args.iter().any(|a| a.starts_with("--bs=")));
    }
}
