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
//!
//! A raw job's buffers come from huge pages where the system can give them (see
//! [`HugePages`]): a disk that spends a ring descriptor per physically contiguous run of a
//! request's memory (virtio-blk without indirect descriptors, as on this project's test
//! machines) serves 1 MiB reads from scattered 4 KiB pages at a fraction of its speed, so a
//! baseline from `malloc`ed buffers would not be the device's best. The pool's large reads use
//! huge pages too (`stripestore::device::huge_aligned_room`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

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
        let pages = self.huge_pages_needed();
        if pages > 0 {
            match HugePages::lease(pages) {
                Ok(lease) => {
                    let ran = self.run_with(scratch, Some("shmhuge"));
                    drop(lease);
                    match ran {
                        Ok(outcome) => {
                            note_raw_buffers(None);
                            return Ok(outcome);
                        }
                        // The pages were counted free but fio could not have them (another
                        // user took them first): the same job from ordinary memory, and say
                        // so. Any other failure is that run's, returned as it is.
                        Err(err) if huge_pages_refused(&err.to_string()) => {
                            note_raw_buffers(Some(
                                "fio could not have the huge pages counted free".to_string(),
                            ));
                        }
                        Err(err) => return Err(err),
                    }
                }
                Err(why) => note_raw_buffers(Some(why)),
            }
        }
        self.run_with(scratch, None)
    }

    /// Huge pages a raw job's buffers take: fio allocates, per job section, its queue depth
    /// times its largest block plus a page, rounded up to whole huge pages, and one page more
    /// is counted per section (fio 3.33 with one section of 8 x 1 MiB failed with 5 surplus
    /// pages allowed and ran with 6; with direct I/O it adds a page of alignment once more
    /// before the segment is rounded up; two such sections ran with 10, fewer than counted).
    /// The count errs high, which costs nothing: surplus pages are made only when used. 0 for
    /// a job whose buffers do not reach a disk (the `nbd` engine's go to a socket).
    fn huge_pages_needed(&self) -> u64 {
        let sections = match &self.target {
            Target::EachFile { paths, .. } => paths.len() as u64,
            Target::AcrossFiles { .. } => 1,
            Target::Nbd { .. } => return 0,
        };
        let largest = self
            .mixed_with
            .map_or(self.block_bytes, |(bytes, _)| bytes.max(self.block_bytes));
        let per_section =
            (largest * u64::from(self.queue_depth.max(1)) + 4096).div_ceil(HUGE_PAGE) + 1;
        sections * per_section
    }

    fn run_with(
        &self,
        scratch: &Path,
        iomem: Option<&str>,
    ) -> Result<Outcome, Box<dyn std::error::Error>> {
        let output = scratch.join("fio-report.json");
        let _ = std::fs::remove_file(&output);
        let mut args = self.args(&output);
        if let Some(iomem) = iomem {
            args.push(format!("--iomem={iomem}"));
            // Counted in 2 MiB pages (fio's default size is another on some machines).
            args.push(format!("--hugepage-size={HUGE_PAGE}"));
        }
        let ran = Command::new("fio").args(&args).output()?;
        if !ran.status.success() {
            return Err(format!(
                "fio {} failed ({}): {}{}",
                args.join(" "),
                ran.status,
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

/// The huge page size fio's `shmhuge` memory is counted in (x86-64's; other sizes are not used).
const HUGE_PAGE: u64 = 2 << 20;

/// Whether fio's failure `message` says its huge-page buffers could not be had (fio 3.33:
/// "no huge pages available" and a failed `shmget`; it may then crash as well).
fn huge_pages_refused(message: &str) -> bool {
    message.contains("no huge pages available") || message.contains("func=shmget")
}

/// What raw jobs' buffers came from so far in this process: `None` before any ran, then
/// `Ok(())` while every one had huge pages, or why one did not.
static RAW_BUFFERS: Mutex<Option<Result<(), String>>> = Mutex::new(None);

fn note_raw_buffers(why_not: Option<String>) {
    let mut seen = RAW_BUFFERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match (why_not, seen.as_ref()) {
        (_, Some(Err(_))) => {}
        (Some(why), _) => {
            eprintln!(
                "warning: fio's raw baseline reads and writes from 4 KiB pages: {why}; on a disk that spends a ring descriptor per page (virtio-blk without indirect descriptors) it is then below the device's best (README: \"Large NBD reads into huge pages\")"
            );
            *seen = Some(Err(why));
        }
        (None, _) => *seen = Some(Ok(())),
    }
}

/// What the raw baselines' buffers came from, for a report: `None` when no raw job ran.
pub fn raw_buffers() -> Option<String> {
    let seen = RAW_BUFFERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    seen.as_ref().map(|seen| match seen {
        Ok(()) => "huge pages (fio --iomem=shmhuge)".to_string(),
        Err(why) => format!("4 KiB pages for some raw jobs: {why}"),
    })
}

/// Huge pages held available for one fio run. The system's free ones are used when enough;
/// otherwise, as root, `vm.nr_overcommit_hugepages` is raised by the shortfall for the run (the
/// kernel then makes surplus huge pages on demand and frees them when fio exits) and lowered
/// by as much when the lease drops (by as much, not back to a remembered value, so that
/// benches running at once leave it as they found it). Nothing is reserved for longer than the
/// run; a bench killed during one leaves the limit raised (which holds no memory by itself).
/// Another user can take the pages between the count and fio's start: the run then falls back
/// to ordinary memory ([`Job::run`]).
struct HugePages {
    /// How much the overcommit limit was raised.
    raised: Option<u64>,
}

const OVERCOMMIT: &str = "/proc/sys/vm/nr_overcommit_hugepages";

/// The system's limit of surplus huge pages, where it can be read.
fn overcommit_limit() -> Option<u64> {
    std::fs::read_to_string(OVERCOMMIT)
        .ok()
        .and_then(|text| text.trim().parse().ok())
}

impl HugePages {
    /// Room for `pages` huge pages, or why there is none.
    fn lease(pages: u64) -> Result<Self, String> {
        let _lock = OvercommitLock::take();
        let meminfo = std::fs::read_to_string("/proc/meminfo")
            .map_err(|err| format!("/proc/meminfo: {err}"))?;
        let overcommit = overcommit_limit().unwrap_or(0);
        let available = Self::available(&meminfo, overcommit)?;
        if available >= pages {
            return Ok(Self { raised: None });
        }
        let shortfall = pages - available;
        std::fs::write(OVERCOMMIT, (overcommit + shortfall).to_string()).map_err(|err| {
            format!(
                "{pages} huge pages needed, {available} available, and {OVERCOMMIT} cannot be raised ({err}; as root; otherwise reserve them with vm.nr_hugepages and allow this user SHM_HUGETLB: vm.hugetlb_shm_group)"
            )
        })?;
        Ok(Self {
            raised: Some(shortfall),
        })
    }

    /// Huge pages a new user can have: the free ones not promised to a mapping, and the
    /// surplus the overcommit limit still allows (from `/proc/meminfo`'s text).
    fn available(meminfo: &str, overcommit: u64) -> Result<u64, String> {
        let field = |name: &str| -> Option<u64> {
            meminfo
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        };
        match field("Hugepagesize") {
            None => return Err("this kernel has no huge pages (hugetlbfs)".to_string()),
            Some(kib) if kib != HUGE_PAGE >> 10 => {
                return Err(format!("this system's huge pages are {kib} KiB, not 2 MiB"))
            }
            Some(_) => {}
        }
        let free = field("HugePages_Free").unwrap_or(0);
        let reserved = field("HugePages_Rsvd").unwrap_or(0);
        let surplus = field("HugePages_Surp").unwrap_or(0);
        Ok(free.saturating_sub(reserved) + overcommit.saturating_sub(surplus))
    }
}

/// An exclusive lock on a file beside other benches' (held while the overcommit limit is read
/// and written, so that benches running at once raise and lower it by exact amounts; closing
/// the file releases it). Where the file cannot be made or locked, nothing is held: a race
/// then costs a fallback to ordinary memory, never a wrong figure.
struct OvercommitLock {
    _file: Option<std::fs::File>,
}

impl OvercommitLock {
    fn take() -> Self {
        let path = std::env::temp_dir().join("stripestore-bench-hugepages.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .ok()
            .filter(|file| file.lock().is_ok());
        Self { _file: file }
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let Some(raised) = self.raised else {
            return;
        };
        let _lock = OvercommitLock::take();
        let lowered = overcommit_limit()
            .ok_or_else(|| "it cannot be read".to_string())
            .and_then(|now| {
                std::fs::write(OVERCOMMIT, now.saturating_sub(raised).to_string())
                    .map_err(|err| err.to_string())
            });
        if let Err(why) = lowered {
            eprintln!("warning: could not lower {OVERCOMMIT} by {raised}: {why}");
        }
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
    fn raw_jobs_count_their_huge_pages_and_nbd_jobs_none() {
        let each = |paths: usize, block_bytes: u64, queue_depth: u32| Job {
            pattern: Pattern::SeqRead,
            block_bytes,
            queue_depth,
            target: Target::EachFile {
                paths: vec!["/a".into(); paths],
                span_bytes: 1 << 30,
                direct: true,
            },
            seconds: None,
            mixed_with: None,
        };
        // 8 x 1 MiB and a page: 5 huge pages per job section and one spare, one section per
        // file.
        assert_eq!(each(6, 1 << 20, 8).huge_pages_needed(), 36);
        // 16 x 4 KiB and a page fit one, and one spare.
        assert_eq!(each(1, 4096, 16).huge_pages_needed(), 2);
        let mut mixed = each(1, 4096, 16);
        mixed.target = Target::AcrossFiles {
            paths: vec!["/a".into(), "/b".into()],
            span_bytes: 1 << 30,
            direct: true,
        };
        mixed.mixed_with = Some((4 << 20, 10));
        assert_eq!(
            mixed.huge_pages_needed(),
            34,
            "the largest size counts, one section"
        );
        let mut nbd = each(1, 1 << 20, 8);
        nbd.target = Target::Nbd {
            socket: "/s".into(),
            span_bytes: 1 << 30,
            connections: 4,
        };
        assert_eq!(nbd.huge_pages_needed(), 0);
    }

    #[test]
    fn huge_pages_available_are_the_free_unpromised_and_the_overcommit_left() {
        let meminfo = "MemTotal: 1 kB\nHugePages_Total:     128\nHugePages_Free:      100\nHugePages_Rsvd:       10\nHugePages_Surp:        3\nHugepagesize:       2048 kB\n";
        assert_eq!(HugePages::available(meminfo, 0), Ok(90));
        assert_eq!(HugePages::available(meminfo, 8), Ok(95));
        assert_eq!(
            HugePages::available(meminfo, 2),
            Ok(90),
            "surplus beyond the limit"
        );
        let other = meminfo.replace("2048 kB", "1048576 kB");
        assert!(HugePages::available(&other, 0).is_err());
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
