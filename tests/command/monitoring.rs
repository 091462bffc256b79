//! Operators' tools end to end: `scrub` exit codes and a scrub killed midway then resumed,
//! `check` in every state, Prometheus metrics accepted by `promtool` (printed and over HTTP).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use stripestore::device::{FileDevice, SharedDevice};
use stripestore::pool::{FormatVersion, V4Options};
use stripestore::{CreateOptions, OpenOptions, Pool};

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stripestore"));
    cmd.env("STRIPESTORE_LOG", "error");
    cmd
}

fn run(args: &[&str]) -> Output {
    bin().args(args).stdin(Stdio::null()).output().unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A tool the test needs: present, or the test is skipped (failed under CI, which installs it).
fn tool(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("STRIPESTORE_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "{name} is required (STRIPESTORE_REQUIRE_TOOLS=1) but not installed"
        );
        eprintln!("SKIPPED: {name} is not installed (apt-get install it, or run .ci/run)");
    }
    found
}

/// An rs:4+2 pool on six files, `fill` bytes written with a seeded pattern, closed. Format
/// version 3: most of these tests count stripes (version 4's scrub tallies and lost ranges:
/// tests/pool_v4_scrub.rs and tests/command/looking.rs); `check` runs on both.
fn file_pool(dir: &Path, device_size: u64, fill: u64) -> Vec<PathBuf> {
    file_pool_of(dir, device_size, fill, FormatVersion::V3)
}

/// [`file_pool`] on format version `format`.
fn file_pool_of(dir: &Path, device_size: u64, fill: u64, format: FormatVersion) -> Vec<PathBuf> {
    let paths: Vec<PathBuf> = (0..6).map(|i| dir.join(format!("d{i}.img"))).collect();
    let mut options = CreateOptions::new("rs:4+2".parse().unwrap());
    options.device_bytes = Some(device_size);
    if format == FormatVersion::V3 {
        stripestore::testing::allow_format_3_writes(true);
    }
    options.format = format;
    let pool = Pool::create_paths(&paths, &[], &options).unwrap();
    let mut rng = stripestore::testing::rng(9000);
    let piece = 4 << 20;
    let mut offset = 0;
    while offset < fill {
        let len = piece.min(fill - offset);
        let data = stripestore::testing::random_bytes(&mut rng, len as usize);
        pool.write_at(offset, &data).unwrap();
        offset += len;
    }
    pool.close().unwrap();
    paths
}

/// Flip one byte in `count` shards holding the first block of logical stripe `stripe` (64 KiB
/// of volume), behind the pool's back: the stripe's chunks on version 3, the shard-blocks of
/// the block's row on version 4 (`Pool::block_locations`).
fn rot_stripe(paths: &[PathBuf], stripe: u64, count: usize) {
    let devices: Vec<SharedDevice> = paths
        .iter()
        .map(|p| Arc::new(FileDevice::open(p).unwrap()) as SharedDevice)
        .collect();
    let options = OpenOptions {
        background_rebuild: false,
        ..OpenOptions::default()
    };
    let pool = Pool::open(devices, &options).unwrap();
    let shards = pool.block_locations(stripe * pool.geometry().stripe_data_bytes());
    assert!(shards.len() >= count, "stripe {stripe} is written");
    pool.close().unwrap();
    for shard in shards.into_iter().take(count) {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&paths[shard.device])
            .unwrap();
        use std::io::{Seek, SeekFrom};
        let mut byte = [0u8];
        file.seek(SeekFrom::Start(shard.offset + 11)).unwrap();
        file.read_exact(&mut byte).unwrap();
        byte[0] ^= 0x40;
        file.seek(SeekFrom::Start(shard.offset + 11)).unwrap();
        file.write_all(&byte).unwrap();
    }
}

#[test]
fn scrub_exit_codes_clean_repaired_unrepairable_and_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let paths = file_pool(dir.path(), 8 << 20, 8 << 20);
    let out = run(&["scrub", p(&paths[0])]);
    assert_eq!(code(&out), 0, "clean: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 checksum errors"));

    rot_stripe(&paths, 3, 2);
    let out = run(&["scrub", p(&paths[0]), "--check-only", "--json"]);
    assert_eq!(code(&out), 1, "found, check only: {}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["totals"]["checksum_errors"], 2);
    assert_eq!(json["totals"]["repaired"], 0);
    let out = run(&["scrub", p(&paths[0])]);
    assert_eq!(code(&out), 1, "repaired: {}", text(&out));
    let out = run(&["scrub", p(&paths[0])]);
    assert_eq!(code(&out), 0, "clean after repair: {}", text(&out));

    // One shard more than rs:4+2 survives, in stripe 5: reported with its volume offset.
    rot_stripe(&paths, 5, 3);
    let out = run(&["scrub", p(&paths[0]), "--json"]);
    assert_eq!(code(&out), 2, "unrepairable: {}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["unrepairable_stripes"], 1);
    assert_eq!(json["damaged"][0]["volume_offset"], 5 * 4 * 16384);
    let out = run(&["scrub", p(&paths[0])]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("offset {}", 5 * 4 * 16384)),
        "{}",
        text(&out)
    );

    // Could not run: not a pool, bad flag, conflicting flags.
    let stranger = dir.path().join("stranger.img");
    std::fs::write(&stranger, vec![0u8; 1 << 20]).unwrap();
    assert_eq!(code(&run(&["scrub", p(&stranger)])), 3);
    assert_eq!(code(&run(&["scrub", p(&paths[0]), "--bogus"])), 3);
    assert_eq!(
        code(&run(&["scrub", p(&paths[0]), "--repair", "--check-only"])),
        3
    );
}

#[test]
fn a_killed_scrub_resumes_without_rereading_what_it_verified() {
    let dir = tempfile::tempdir().unwrap();
    let paths = file_pool(dir.path(), 48 << 20, 150 << 20);
    // Slow enough to be killed midway; checkpoints land about once a second. Kill it 1.2 s
    // after its first progress line (25%, about 1.4 s in), not at a fixed time after the
    // start: opening the pool can take a while on a loaded machine.
    let mut child = bin()
        .args(["scrub", p(&paths[0]), "--rate", "40M"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut progress = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains('%') {
        line.clear();
        let read = std::io::BufRead::read_line(&mut progress, &mut line).unwrap();
        assert!(read > 0, "the scrub ended without a progress line");
    }
    std::thread::sleep(std::time::Duration::from_millis(1200));
    child.kill().unwrap();
    child.wait().unwrap();

    let out = run(&["status", p(&paths[0]), "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let scrub = &status["scrub"];
    assert_eq!(scrub["running"], false, "{status}");
    let verified = scrub["scanned_bytes"].as_u64().unwrap();
    let total = scrub["total_bytes"].as_u64().unwrap();
    assert!(verified > 0 && verified < total, "{scrub}");
    let human = run(&["status", p(&paths[0])]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("scrub interrupted"),
        "{}",
        text(&human)
    );

    let out = run(&["scrub", p(&paths[0]), "--resume", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["end"], "completed");
    assert!(report["resumed_from_slot"].as_u64().unwrap() > 0);
    assert_eq!(report["totals"]["bytes_scanned"].as_u64().unwrap(), total);
    assert_eq!(
        report["bytes_read_this_run"].as_u64().unwrap(),
        total - verified,
        "the resumed run reads exactly what was not verified before the kill"
    );
    let out = run(&["status", p(&paths[0])]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("scan: scrub repaired 0 chunks"),
        "{}",
        text(&out)
    );
}

#[test]
fn check_reports_every_state_with_its_exit_code() {
    check_reports_every_state(FormatVersion::V3, 8 << 20);
    check_reports_every_state(FormatVersion::V4(V4Options::default()), 16 << 20);
}

fn check_reports_every_state(format: FormatVersion, device_size: u64) {
    let dir = tempfile::tempdir().unwrap();
    let paths = file_pool_of(dir.path(), device_size, 4 << 20, format);
    let check = |extra: &[&str]| {
        let mut args = vec!["check", p(&paths[0])];
        args.extend_from_slice(extra);
        let out = run(&args);
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(line.lines().count(), 1, "one line: {line}");
        assert!(line.contains(" | devices_online="), "perfdata: {line}");
        (code(&out), line)
    };
    let (c, line) = check(&[]);
    assert_eq!(c, 0, "{line}");
    assert!(line.starts_with("STRIPESTORE OK - rs:4+2 ONLINE"), "{line}");
    let (c, line) = check(&["--scrub-max-age-days", "7"]);
    assert_eq!(c, 1, "never scrubbed: {line}");
    assert!(line.contains("never scrubbed"));

    rot_stripe(&paths, 2, 1);
    assert_eq!(code(&run(&["scrub", p(&paths[0])])), 1);
    let (c, line) = check(&["--scrub-max-age-days", "7"]);
    assert_eq!(c, 1, "repaired by the last scrub: {line}");
    assert!(line.starts_with("STRIPESTORE WARNING"), "{line}");
    assert_eq!(code(&run(&["scrub", p(&paths[0])])), 0);
    let (c, line) = check(&["--scrub-max-age-days", "7"]);
    assert_eq!(c, 0, "clean scrub: {line}");

    // One device gone: degraded, survives one more. (Out of the pool's directory: a member
    // moved within it would be found there by its identity.)
    let away = dir.path().join("away");
    std::fs::create_dir(&away).unwrap();
    std::fs::rename(&paths[5], away.join("away5")).unwrap();
    let (c, line) = check(&[]);
    assert_eq!(c, 1, "{line}");
    assert!(
        line.contains("DEGRADED") && line.contains("survives 1 more"),
        "{line}"
    );
    // Two gone: redundancy exhausted.
    std::fs::rename(&paths[4], away.join("away4")).unwrap();
    let (c, line) = check(&[]);
    assert_eq!(c, 2, "{line}");
    assert!(
        line.starts_with("STRIPESTORE CRITICAL") && line.contains("exhausted"),
        "{line}"
    );
    // Back: `check` only looks (it recorded nothing and nothing was written while they were
    // away), so they are current members again at once.
    std::fs::rename(away.join("away4"), &paths[4]).unwrap();
    std::fs::rename(away.join("away5"), &paths[5]).unwrap();
    let (c, line) = check(&[]);
    assert_eq!(c, 0, "whole again: {line}");
    // Then unrepairable damage found by a scrub: critical until dealt with.
    rot_stripe(&paths, 1, 3);
    assert_eq!(code(&run(&["scrub", p(&paths[0])])), 2);
    let (c, line) = check(&[]);
    assert_eq!(c, 2, "{line}");
    assert!(line.contains("unrepairable"), "{line}");

    // Unknown: not a pool; bad usage.
    let stranger = dir.path().join("stranger.img");
    std::fs::write(&stranger, vec![0u8; 1 << 20]).unwrap();
    let out = run(&["check", p(&stranger)]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("STRIPESTORE UNKNOWN"));
    assert_eq!(code(&run(&["check"])), 3);
}

fn promtool_accepts(exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejected the metrics: {}\n{exposition}",
        text(&out)
    );
}

#[test]
fn prometheus_metrics_are_valid_and_served_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let paths = file_pool(dir.path(), 8 << 20, 4 << 20);
    assert_eq!(code(&run(&["scrub", p(&paths[0])])), 0);
    let out = run(&["metrics", p(&paths[0])]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let printed = String::from_utf8(out.stdout).unwrap();
    for family in [
        "stripestore_pool_state{",
        "stripestore_device_errors_total{",
        "stripestore_device_read_bytes_total{",
        "stripestore_request_duration_seconds_bucket{",
        "stripestore_device_read_duration_seconds_bucket{",
        "stripestore_checksum_repairs_total{",
        "stripestore_scrub_scanned_bytes{",
        "stripestore_last_scrub_unrepairable_stripes{",
        "stripestore_last_scrub_segments_skipped{",
    ] {
        assert!(printed.contains(family), "{family} missing:\n{printed}");
    }
    assert!(printed.contains("state=\"online\"} 1"), "{printed}");

    // From the library, over HTTP, with traffic, a device fault and a repair on record.
    let devices: Vec<SharedDevice> = paths
        .iter()
        .map(|p| Arc::new(FileDevice::open(p).unwrap()) as SharedDevice)
        .collect();
    let pool = Pool::open(devices, &OpenOptions::default()).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    pool.read_at(0, &mut buf).unwrap();
    pool.write_at(4096, &buf[..8192]).unwrap();
    pool.flush().unwrap();
    pool.fault_device(2, "pulled for the test");
    pool.read_at(0, &mut buf).unwrap();
    let server =
        stripestore::endpoint::serve_metrics(&pool, "127.0.0.1:0".parse().unwrap()).unwrap();
    let mut stream = std::net::TcpStream::connect(server.address()).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    // HTTP/1.1 is answered in HTTP/1.1 (and kept alive unless the client says close).
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(body.contains("state=\"degraded\"} 1"), "{body}");
    assert!(body.contains("stripestore_read_bytes_total{"), "{body}");
    assert!(
        body.contains(&format!(
            "stripestore_request_duration_seconds_count{{pool=\"{}\",op=\"read\"}} 2",
            pool.status().pool
        )),
        "{body}"
    );
    assert!(body.contains("stripestore_pool_remaining_tolerance{"));
    if tool("promtool") {
        promtool_accepts(&printed);
        promtool_accepts(body);
    }
    drop(server);
    pool.close().unwrap();
}

#[test]
fn logging_is_quiet_by_default_and_rust_log_shows_faults_and_repairs_with_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let paths = file_pool(dir.path(), 8 << 20, 4 << 20);
    rot_stripe(&paths, 2, 1);
    let quiet = bin()
        .env_remove("STRIPESTORE_LOG")
        .env_remove("RUST_LOG")
        .args(["scrub", p(&paths[0]), "--check-only"])
        .output()
        .unwrap();
    assert_eq!(code(&quiet), 1);
    let stderr = String::from_utf8_lossy(&quiet.stderr);
    assert!(!stderr.contains("INFO"), "quiet by default: {stderr}");
    assert!(
        stderr.contains("WARN") && stderr.contains("scrub found damage"),
        "{stderr}"
    );

    let verbose = bin()
        .env_remove("STRIPESTORE_LOG")
        .env("RUST_LOG", "stripestore=info")
        .args(["scrub", p(&paths[0])])
        .output()
        .unwrap();
    assert_eq!(code(&verbose), 1);
    let stderr = String::from_utf8_lossy(&verbose.stderr);
    for needed in [
        "device error",
        "kind=Checksum",
        "offset=",
        "healed shard",
        "scrub: damaged chunk",
        "scrub started",
        "scrub{",
    ] {
        assert!(stderr.contains(needed), "{needed} missing: {stderr}");
    }
}
