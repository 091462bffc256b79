//! Operators' tools end to end: `scrub` exit codes and a scrub killed midway then resumed,
//! `check` in every state, Prometheus metrics accepted by `promtool` (printed and over HTTP).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use stripestore::device::{FileDevice, SharedDevice};
use stripestore::pool::{FormatVersion, ShardLocation, V4Options};
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

/// An rs:4+2 pool on six files holding the first `fill` bytes of [`pieces`] from offset 0,
/// closed. Format version 4, what `create` makes: its scrub counts rows and metadata pages
/// verified and "places" (4 KiB shard-blocks, page copies) found bad, repaired or
/// unrepairable, and lists lost 4 KiB blocks as volume ranges (docs/FORMAT.md V4.13).
fn file_pool(dir: &Path, device_size: u64, fill: u64) -> Vec<PathBuf> {
    file_pool_of(
        dir,
        device_size,
        fill,
        FormatVersion::V4(V4Options::default()),
    )
}

/// [`file_pool`] on format version `format`. This build makes no version-3 pool and opens
/// one read-only: the test machinery's switch lets this thread make one (and open it for
/// writing), as an older build did.
fn file_pool_of(dir: &Path, device_size: u64, fill: u64, format: FormatVersion) -> Vec<PathBuf> {
    let paths: Vec<PathBuf> = (0..6).map(|i| dir.join(format!("d{i}.img"))).collect();
    let mut options = CreateOptions::new("rs:4+2".parse().unwrap());
    options.device_bytes = Some(device_size);
    if format == FormatVersion::V3 {
        stripestore::testing::allow_format_3_writes(true);
    }
    options.format = format;
    let pool = Pool::create_paths(&paths, &[], &options).unwrap();
    for (offset, data) in pieces(fill) {
        pool.write_at(offset, &data).unwrap();
    }
    pool.close().unwrap();
    paths
}

/// What [`file_pool`] writes: seeded random pieces of 4 MiB (the last one shorter), each with
/// its volume offset, `fill` bytes in all.
fn pieces(fill: u64) -> impl Iterator<Item = (u64, Vec<u8>)> {
    let mut rng = stripestore::testing::rng(9000);
    let piece: u64 = 4 << 20;
    (0..fill.div_ceil(piece)).map(move |i| {
        let offset = i * piece;
        let len = piece.min(fill - offset);
        (
            offset,
            stripestore::testing::random_bytes(&mut rng, len as usize),
        )
    })
}

/// The 4 KiB block at volume byte `offset` as [`file_pool`] wrote it (`fill` bytes).
fn written_block(fill: u64, offset: u64) -> Vec<u8> {
    let (start, data) = pieces(fill)
        .find(|(start, data)| offset < start + data.len() as u64)
        .expect("the block is written");
    let at = (offset - start) as usize;
    data[at..at + 4096].to_vec()
}

/// Where the pool's shards holding volume byte `offset` are (`Pool::block_locations`): on
/// version 4 the six 4 KiB shard-blocks of the row holding its block, on version 3 the six
/// chunks of its stripe. Opened read-only: looking writes nothing.
fn locations(paths: &[PathBuf], offset: u64) -> Vec<ShardLocation> {
    let devices: Vec<SharedDevice> = paths
        .iter()
        .map(|p| Arc::new(FileDevice::open(p).unwrap()) as SharedDevice)
        .collect();
    let options = OpenOptions {
        background_rebuild: false,
        read_only: true,
        ..OpenOptions::default()
    };
    let pool = Pool::open(devices, &options).unwrap();
    let shards = pool.block_locations(offset);
    pool.close().unwrap();
    shards
}

/// The row of a version-4 pool holding the block at volume byte `offset` (written by
/// [`file_pool`] with `fill` bytes): the block's own shard-block, the data one whose bytes on
/// its member are the block as written, and the row's two parity shard-blocks. Damage to the
/// own one alone loses nothing (the row rebuilds it from four good ones); damage to all three
/// leaves three good shard-blocks of six, one fewer than rs:4+2 needs, and loses this block
/// alone (the row's other data blocks still verify on their own).
struct Row {
    own: ShardLocation,
    parity: Vec<ShardLocation>,
}

fn row_of(paths: &[PathBuf], fill: u64, offset: u64) -> Row {
    let row = locations(paths, offset);
    assert_eq!(
        row.len(),
        6,
        "block at {offset}: one shard-block per member: {row:?}"
    );
    let members: std::collections::BTreeSet<usize> = row.iter().map(|s| s.device).collect();
    assert_eq!(members.len(), 6, "six members: {row:?}");
    let block = written_block(fill, offset);
    let own: Vec<ShardLocation> = row
        .iter()
        .filter(|s| s.data_chunk.is_some() && read_place(paths, s) == block)
        .copied()
        .collect();
    assert_eq!(own.len(), 1, "block at {offset}: its shard-block: {row:?}");
    let parity: Vec<ShardLocation> = row
        .iter()
        .filter(|s| s.data_chunk.is_none())
        .copied()
        .collect();
    assert_eq!(parity.len(), 2, "{row:?}");
    Row {
        own: own[0],
        parity,
    }
}

/// The 4 KiB at a shard's place on its member.
fn read_place(paths: &[PathBuf], shard: &ShardLocation) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut bytes = vec![0u8; 4096];
    std::fs::File::open(&paths[shard.device])
        .unwrap()
        .read_exact_at(&mut bytes, shard.offset)
        .unwrap();
    bytes
}

/// Flip one byte of each shard in `shards`, behind the pool's back.
fn rot(paths: &[PathBuf], shards: &[ShardLocation]) {
    use std::os::unix::fs::FileExt;
    for shard in shards {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&paths[shard.device])
            .unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, shard.offset + 11).unwrap();
        byte[0] ^= 0x40;
        file.write_all_at(&byte, shard.offset + 11).unwrap();
    }
}

/// The names of the members holding `shards`, sorted, each once: how a scrub report names
/// the members a lost range was damaged on.
fn names(paths: &[PathBuf], shards: &[ShardLocation]) -> Vec<String> {
    let mut names: Vec<String> = shards
        .iter()
        .map(|s| p(&paths[s.device]).to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Per member, how many of `shards` it holds (what its CKSUM and REPAIRED counters show).
fn per_member(shards: &[ShardLocation]) -> Vec<u64> {
    (0..6)
        .map(|m| shards.iter().filter(|s| s.device == m).count() as u64)
        .collect()
}

/// `scrub`'s exit codes: 0 clean; 1 damage found (check only: counted, nothing repaired),
/// then repaired, then 0; 2 for data beyond its redundancy, listed with its volume offset;
/// 3 when it cannot run. On format version 4, counted in places: two shard-blocks of one row
/// are two checksum errors and two repairs; three of one row, one more than rs:4+2 survives,
/// are three places unrepairable, and cost exactly the block whose own shard-block is among
/// them.
#[test]
fn scrub_exit_codes_clean_repaired_unrepairable_and_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let fill = 8 << 20;
    let paths = file_pool(dir.path(), 8 << 20, fill);
    let out = run(&["scrub", p(&paths[0])]);
    assert_eq!(code(&out), 0, "clean: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 checksum errors"));

    // The block at 192 KiB: its own shard-block and a parity one of its row.
    let row = row_of(&paths, fill, 3 * 65536);
    let hit = [row.own, row.parity[0]];
    rot(&paths, &hit);
    let out = run(&["scrub", p(&paths[0]), "--check-only", "--json"]);
    assert_eq!(code(&out), 1, "found, check only: {}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["totals"]["checksum_errors"], 2, "{json}");
    assert_eq!(json["totals"]["repaired"], 0, "{json}");
    assert_eq!(json["unrepairable_stripes"], 0, "{json}");
    assert_eq!(json["lost_blocks"], 0, "{json}");
    for (member, count) in per_member(&hit).into_iter().enumerate() {
        assert_eq!(json["devices"][member]["checksum_errors"], count, "{json}");
    }
    let out = run(&["scrub", p(&paths[0]), "--json"]);
    assert_eq!(code(&out), 1, "repaired: {}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["totals"]["checksum_errors"], 2, "{json}");
    assert_eq!(json["totals"]["repaired"], 2, "{json}");
    assert_eq!(json["unrepairable_stripes"], 0, "{json}");
    for (member, count) in per_member(&hit).into_iter().enumerate() {
        assert_eq!(json["devices"][member]["repaired"], count, "{json}");
    }
    // Repaired in place: the block's shard-block holds the block again.
    assert!(read_place(&paths, &row.own) == written_block(fill, 3 * 65536));
    let out = run(&["scrub", p(&paths[0])]);
    assert_eq!(code(&out), 0, "clean after repair: {}", text(&out));

    // One shard-block more than rs:4+2 survives, in the row of the block at 320 KiB: that
    // block's own and both parity ones. Its row has three good shard-blocks of six: the three
    // places stay bad, and the block is lost, reported with its volume offset and members.
    let row = row_of(&paths, fill, 5 * 65536);
    let hit = [row.own, row.parity[0], row.parity[1]];
    rot(&paths, &hit);
    let out = run(&["scrub", p(&paths[0]), "--json"]);
    assert_eq!(code(&out), 2, "unrepairable: {}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["unrepairable_stripes"], 3, "three places: {json}");
    assert_eq!(json["lost_blocks"], 1, "{json}");
    assert_eq!(
        json["damaged"],
        serde_json::json!([{
            "volume_offset": 5 * 65536,
            "length": 4096,
            "devices": names(&paths, &hit),
        }]),
        "{json}"
    );
    for (member, count) in per_member(&hit).into_iter().enumerate() {
        assert_eq!(json["devices"][member]["unrepairable"], count, "{json}");
    }
    let out = run(&["scrub", p(&paths[0])]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!(
            "offset {} length 4096 (damaged on {})",
            5 * 65536,
            names(&paths, &hit).join(", ")
        )) && report.contains(", 3 places unrepairable"),
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
    // Version 4 resumes at a segment (version 3 at a slot, which stays 0 here).
    assert!(
        report["resumed_from_segment"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(report["resumed_from_slot"], 0, "{report}");
    // The resumed run reads exactly what was not verified before the kill. Measured against
    // a whole check-only pass after it: the two runs together verified what one pass
    // verifies, and the resumed one read what a whole pass reads less what the killed one
    // verified. (A version-4 pass reads the map's interior pages for its plan besides what
    // it verifies, once per run; its `total_bytes` is an estimate from the data rows alone,
    // a lower bound of what it verifies, which includes the metadata page copies.)
    let scanned = report["totals"]["bytes_scanned"].as_u64().unwrap();
    assert!(scanned >= total, "{report}");
    let out = run(&["status", p(&paths[0])]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("scan: scrub repaired 0 chunks"),
        "{}",
        text(&out)
    );
    let out = run(&["scrub", p(&paths[0]), "--check-only", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let whole: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        whole["totals"]["bytes_scanned"].as_u64().unwrap(),
        scanned,
        "the two runs verified what a whole pass verifies: {report}\n{whole}"
    );
    assert_eq!(
        report["bytes_read_this_run"].as_u64().unwrap(),
        whole["bytes_read_this_run"].as_u64().unwrap() - verified,
        "the resumed run reads exactly what was not verified before the kill: {report}\n{whole}"
    );
}

#[test]
fn check_reports_every_state_with_its_exit_code() {
    check_reports_every_state(FormatVersion::V4(V4Options::default()), 16 << 20);
    // `check` only looks: it reports on a pool of an earlier version as on any other.
    check_reports_every_state(FormatVersion::V3, 8 << 20);
}

fn images(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn check_reports_every_state(format: FormatVersion, device_size: u64) {
    let dir = tempfile::tempdir().unwrap();
    let fill = 4 << 20;
    let paths = file_pool_of(dir.path(), device_size, fill, format);
    let v3 = format == FormatVersion::V3;
    // Damage the data at volume byte `offset`, within what rs:4+2 survives (one shard) or one
    // shard beyond it (three): on version 4 the block's own shard-block (and its row's two
    // parity ones), on version 3 the first chunks of its stripe.
    let damage = |offset: u64, beyond: bool| {
        if v3 {
            let stripe = locations(&paths, offset);
            rot(&paths, &stripe[..if beyond { 3 } else { 1 }]);
        } else {
            let row = row_of(&paths, fill, offset);
            if beyond {
                rot(&paths, &[row.own, row.parity[0], row.parity[1]]);
            } else {
                rot(&paths, &[row.own]);
            }
        }
    };
    // A repairing scrub, and its exit code: the command's on version 4. The command refuses
    // to repair a version-3 pool (it opens it read-only) and changes nothing: there the
    // library scrubs it in this process (whose switch lets it write version 3), and the
    // command's codes are given to its report (2 data lost, 1 damage found, 0 clean).
    let scrub = || -> i32 {
        if !v3 {
            return code(&run(&["scrub", p(&paths[0])]));
        }
        let before = images(&paths);
        let out = run(&["scrub", p(&paths[0])]);
        assert_eq!(code(&out), 3, "version 3 is not repaired: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("format version 4"),
            "{}",
            text(&out)
        );
        assert!(images(&paths) == before, "a refused scrub wrote");
        let options = OpenOptions {
            background_rebuild: false,
            ..OpenOptions::default()
        };
        let pool = Pool::open_paths(&paths, &options).unwrap();
        let report = pool
            .scrub_with(&stripestore::pool::ScrubOptions::default(), |_| {})
            .unwrap();
        pool.close().unwrap();
        if report.found_data_loss() {
            2
        } else if report.found_damage() {
            1
        } else {
            0
        }
    };
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

    damage(2 * 65536, false);
    assert_eq!(scrub(), 1);
    let (c, line) = check(&["--scrub-max-age-days", "7"]);
    assert_eq!(c, 1, "repaired by the last scrub: {line}");
    assert!(line.starts_with("STRIPESTORE WARNING"), "{line}");
    assert_eq!(scrub(), 0);
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
    damage(65536, true);
    assert_eq!(scrub(), 2);
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
    let fill = 4 << 20;
    let paths = file_pool(dir.path(), 8 << 20, fill);
    // The block at 128 KiB: its own shard-block.
    let own = row_of(&paths, fill, 2 * 65536).own;
    rot(&paths, &[own]);
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
    for needed in ["scrub started", "scrub{"] {
        assert!(stderr.contains(needed), "{needed} missing: {stderr}");
    }
    // The finding: a device error of the scrub (in its span), with the member and the byte
    // offset of the rotten shard-block on it.
    let device = format!("device={}", p(&paths[own.device]));
    let offset = format!("offset={}", own.offset);
    assert!(
        stderr.lines().any(|l| l.contains("scrub{")
            && l.contains("device error")
            && l.contains(&device)
            && l.contains("kind=Checksum")
            && l.contains(&offset)),
        "the finding with its device and offset: {stderr}"
    );
    // The repair: a heal event with the same member and offset (README: "at info every device
    // error, heal and scrub finding is an event with its device and offset").
    assert!(
        stderr.lines().any(|l| l.contains("INFO")
            && (l.contains("heal") || l.contains("repaired"))
            && l.contains(&device)
            && l.contains(&offset)),
        "the heal with its device and offset: {stderr}"
    );
}
