//! `snapshot create|list|delete|hold|release` and `read --snapshot` (docs/FORMAT.md V4.10a,
//! V4.10b): a recovery point reads back what was written before it while the live volume
//! moves on; `list` and `read --snapshot` write no byte; a held one is not deleted; bad names,
//! unknown ones and a version-3 pool are refused with a message and nothing changed.

use crate::common;
use std::path::{Path, PathBuf};
use std::process::Output;

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    common::run_program(common::stripestore_command("warn"), args, stdin)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// Refused: a nonzero exit and `says` in the error.
fn refused(out: &Output, says: &str) {
    assert!(!out.status.success(), "not refused: {}", text(&out.stdout));
    assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
}

fn images(devs: &[PathBuf]) -> Vec<Vec<u8>> {
    devs.iter().map(|d| std::fs::read(d).unwrap()).collect()
}

fn pool(dir: &Path, format: &str) -> Vec<PathBuf> {
    let devs: Vec<PathBuf> = (0..6).map(|i| dir.join(format!("d{i}"))).collect();
    let mut args = vec![
        "create",
        "--layout",
        "rs:4+2",
        "--device-size",
        "16M",
        "--format",
        format,
    ];
    args.extend(devs.iter().map(|d| p(d)));
    ok(&run(&args, None));
    devs
}

/// `read` of `length` bytes at 0 of recovery point `name`.
fn read_point(d0: &str, length: usize, name: &str) -> Output {
    let length = length.to_string();
    run(
        &[
            "read",
            d0,
            "--offset",
            "0",
            "--length",
            &length,
            "--snapshot",
            name,
        ],
        None,
    )
}

fn payload(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

#[test]
fn a_snapshot_reads_back_while_the_volume_moves_on_and_looking_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let devs = pool(dir.path(), "4");
    let d0 = p(&devs[0]);
    let first = payload(300_000, 1);
    let second = payload(300_000, 2);
    ok(&run(&["write", d0, "--offset", "0"], Some(&first)));
    let said = ok(&run(&["snapshot", "create", d0, "--name", "before"], None));
    assert!(said.contains("recovery point before taken"), "{said}");
    ok(&run(&["write", d0, "--offset", "0"], Some(&second)));

    let before = images(&devs);
    let listed = ok(&run(&["snapshot", "list", d0], None));
    assert!(
        listed.contains("before") && listed.contains("UTC"),
        "{listed}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&run(&["snapshot", "list", d0, "--json"], None))).unwrap();
    assert_eq!(json[0]["name"], "before");
    // Everything the second write overwrote is the snapshot's alone: 300,000 bytes span 74
    // blocks of 4 KiB (the last one partly).
    assert_eq!(json[0]["unique_data_bytes"], 74 * 4096, "{json}");
    // It names the 74 blocks written before it (docs/FORMAT.md V4.10f), and holds them all
    // beyond what the live volume names.
    assert_eq!(json[0]["referenced_data_bytes"], 74 * 4096, "{json}");
    let status: serde_json::Value =
        serde_json::from_str(&ok(&run(&["status", d0, "--json"], None))).unwrap();
    assert_eq!(
        status["recovery_points"]["held_data_bytes"],
        74 * 4096,
        "{status}"
    );
    assert!(ok(&run(&["status", d0], None)).contains("296.0 KiB of data held by them"));
    assert!(
        ok(&run(&["metrics", d0], None)).contains("\nstripestore_recovery_points_held_data_bytes{")
    );
    let length = first.len().to_string();
    let old = read_point(d0, first.len(), "before");
    assert!(old.status.success(), "{}", text(&old.stderr));
    assert!(
        old.stdout == first,
        "the snapshot does not read what was written before it"
    );
    let now = run(&["read", d0, "--offset", "0", "--length", &length], None);
    assert!(now.stdout == second);
    assert!(images(&devs) == before, "list or read --snapshot wrote");

    ok(&run(&["snapshot", "hold", d0, "--name", "before"], None));
    refused(
        &run(&["snapshot", "delete", d0, "--name", "before"], None),
        "held",
    );
    ok(&run(&["snapshot", "release", d0, "--name", "before"], None));
    let deleted = ok(&run(&["snapshot", "delete", d0, "--name", "before"], None));
    assert!(
        deleted.contains("deleted") && deleted.contains("background"),
        "{deleted}"
    );
    // Gone from the list at once; its space comes back with `reclaim` (no server runs it).
    let listed = ok(&run(&["snapshot", "list", d0], None));
    assert!(
        listed.contains("no recovery points") && listed.contains("being deleted: before"),
        "{listed}"
    );
    let status = ok(&run(&["status", d0], None));
    assert!(
        status.contains("reclaim: recovery point before being deleted"),
        "{status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&run(&["status", d0, "--json"], None))).unwrap();
    assert_eq!(json["recovery_points"]["deleting"][0]["name"], "before");
    let metrics = ok(&run(&["metrics", d0], None));
    assert!(
        metrics.contains("\nstripestore_recovery_points_deleting{") && metrics.contains("} 1\n"),
        "{metrics}"
    );
    refused(
        &run(&["snapshot", "create", d0, "--name", "before"], None),
        "being deleted",
    );
    let reclaimed = ok(&run(&["snapshot", "reclaim", d0], None));
    assert!(
        reclaimed.contains("recovery point before deleted: 296.0 KiB of data"),
        "{reclaimed}"
    );
    assert!(!ok(&run(&["snapshot", "list", d0], None)).contains("being deleted"));
    assert!(!ok(&run(&["status", d0], None)).contains("reclaim:"));
    assert!(ok(&run(&["snapshot", "reclaim", d0], None)).contains("no recovery point is being"));
    let now = run(&["read", d0, "--offset", "0", "--length", &length], None);
    assert!(now.stdout == second);
    // `--wait` frees the space before it returns.
    ok(&run(&["snapshot", "create", d0, "--name", "again"], None));
    ok(&run(&["write", d0, "--offset", "0"], Some(&first)));
    let waited = ok(&run(
        &["snapshot", "delete", d0, "--name", "again", "--wait"],
        None,
    ));
    assert!(
        waited.contains("recovery point again deleted: 296.0 KiB of data"),
        "{waited}"
    );
    assert!(!ok(&run(&["status", d0], None)).contains("reclaim:"));
}

#[test]
fn bad_names_unknown_snapshots_and_version_3_pools_are_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let devs = pool(dir.path(), "4");
    let d0 = p(&devs[0]);
    ok(&run(
        &["write", d0, "--offset", "0"],
        Some(&payload(8192, 3)),
    ));
    ok(&run(&["snapshot", "create", d0, "--name", "a"], None));
    let before = images(&devs);
    refused(
        &run(&["snapshot", "create", d0, "--name", "no/slash"], None),
        "'/'",
    );
    refused(
        &run(&["snapshot", "create", d0, "--name", "a"], None),
        "taken",
    );
    refused(
        &run(&["snapshot", "delete", d0, "--name", "nope"], None),
        "no recovery point of that name",
    );
    refused(
        &read_point(d0, 4096, "nope"),
        "no recovery point of that name",
    );
    refused(
        &run(
            &[
                "read",
                d0,
                "--offset",
                "16G",
                "--length",
                "4096",
                "--snapshot",
                "a",
            ],
            None,
        ),
        "out of range",
    );
    assert!(images(&devs) == before, "a refused command wrote");

    // A version-3 pool: this build makes none and opens one read-only, so the test machinery
    // makes and writes it in this process (its switch), as an older build did.
    let dir3 = tempfile::tempdir().unwrap();
    let devs3: Vec<PathBuf> = (0..6).map(|i| dir3.path().join(format!("d{i}"))).collect();
    let written3 = payload(8192, 4);
    {
        stripestore::testing::allow_format_3_writes(true);
        let mut options = stripestore::CreateOptions::new("rs:4+2".parse().unwrap());
        options.format = stripestore::pool::FormatVersion::V3;
        options.device_bytes = Some(16 << 20);
        let pool = stripestore::Pool::create_paths(&devs3, &[], &options).unwrap();
        pool.write_at(0, &written3).unwrap();
        pool.close().unwrap();
        stripestore::testing::allow_format_3_writes(false);
    }
    let d3 = p(&devs3[0]);
    let before = images(&devs3);
    // It keeps no recovery points: taking, holding, releasing, deleting one and rolling back
    // to one are refused naming the version.
    for args in [
        vec!["snapshot", "create", d3, "--name", "x"],
        vec!["snapshot", "hold", d3, "--name", "x"],
        vec!["snapshot", "release", d3, "--name", "x"],
        vec!["snapshot", "delete", d3, "--name", "x"],
        vec!["rollback", d3, "--to", "x"],
    ] {
        refused(&run(&args, None), "format version 4");
    }
    // Send, diff and receive too: a version-3 pool has no recovery points to send, and no
    // tree to receive one into; a stream from a version-4 pool is refused naming the version.
    let stream = run(&["send", d0, "--snapshot", "a"], None);
    assert!(stream.status.success(), "{}", text(&stream.stderr));
    refused(
        &run(&["receive", p(&devs3[0])], Some(&stream.stdout)),
        "format version 4",
    );
    refused(
        &run(&["send", p(&devs3[0]), "--snapshot", "a"], None),
        "format version 4",
    );
    refused(
        &run(&["snapshot", "diff", p(&devs3[0]), "--to", "a"], None),
        "format version 4",
    );
    assert!(images(&devs3) == before, "a refused request wrote");
    // What only looks still works on it, and writes nothing either.
    let status: serde_json::Value =
        serde_json::from_str(&ok(&run(&["status", d3, "--json"], None))).unwrap();
    assert_eq!(status["health"], "ONLINE", "{status}");
    let read = run(&["read", d3, "--offset", "0", "--length", "8192"], None);
    assert!(read.status.success(), "{}", text(&read.stderr));
    assert!(read.stdout == written3, "the version-3 pool reads back");
    assert!(images(&devs3) == before, "looking wrote");
}

/// `status`, `status --json`, `metrics` and `check --snapshot-max-age` show the recovery
/// points: how many, how many held, the newest and its age (a WARNING when it is older than
/// the limit, or when there is none).
#[test]
fn status_metrics_and_check_show_the_recovery_points_and_the_newest_ones_age() {
    let dir = tempfile::tempdir().unwrap();
    let devs = pool(dir.path(), "4");
    let d0 = p(&devs[0]);
    let none = run(&["check", d0, "--snapshot-max-age", "1h"], None);
    assert_eq!(none.status.code(), Some(1), "{}", text(&none.stdout));
    assert!(text(&none.stdout).contains("no recovery point"));
    ok(&run(
        &["write", d0, "--offset", "0"],
        Some(&payload(8192, 5)),
    ));
    ok(&run(&["snapshot", "create", d0, "--name", "nightly"], None));
    ok(&run(&["snapshot", "hold", d0, "--name", "nightly"], None));
    let status = ok(&run(&["status", d0], None));
    assert!(
        status.contains("points: 1 recovery point (1 held), newest nightly"),
        "{status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&run(&["status", d0, "--json"], None))).unwrap();
    assert_eq!(json["recovery_points"]["count"], 1);
    assert_eq!(json["recovery_points"]["held"], 1);
    assert_eq!(json["recovery_points"]["newest"], "nightly");
    let metrics = ok(&run(&["metrics", d0], None));
    assert!(
        metrics.contains("\nstripestore_recovery_points{"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nstripestore_recovery_points_held{"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nstripestore_recovery_point_newest_timestamp_seconds{"),
        "{metrics}"
    );
    let fresh = run(&["check", d0, "--snapshot-max-age", "1h"], None);
    assert_eq!(fresh.status.code(), Some(0), "{}", text(&fresh.stdout));
    assert!(text(&fresh.stdout).contains("recovery_points=1"));
    assert!(
        text(&fresh.stdout).contains(" recovery_points_held=0B;;;0;"),
        "{}",
        text(&fresh.stdout)
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let old = run(&["check", d0, "--snapshot-max-age", "1s"], None);
    assert_eq!(old.status.code(), Some(1), "{}", text(&old.stdout));
    assert!(
        text(&old.stdout).contains("newest recovery point"),
        "{}",
        text(&old.stdout)
    );
    refused(
        &run(&["check", d0, "--snapshot-max-age", "1w"], None),
        "unit",
    );
}

/// `rollback --to NAME`: the volume reads what it did when the recovery point was taken, the
/// state before is kept as an automatic recovery point (listed with "(auto)") and reads back,
/// and a rollback to a name that does not exist is refused with nothing changed.
#[test]
fn rollback_restores_a_recovery_point_and_keeps_the_state_before() {
    let dir = tempfile::tempdir().unwrap();
    let devs = pool(dir.path(), "4");
    let d0 = p(&devs[0]);
    let first = payload(100_000, 7);
    let second = payload(100_000, 8);
    ok(&run(&["write", d0, "--offset", "0"], Some(&first)));
    ok(&run(&["snapshot", "create", d0, "--name", "good"], None));
    ok(&run(&["write", d0, "--offset", "0"], Some(&second)));
    let before = images(&devs);
    refused(
        &run(&["rollback", d0, "--to", "nope"], None),
        "no recovery point",
    );
    assert!(images(&devs) == before, "a refused rollback wrote");
    let said = ok(&run(&["rollback", d0, "--to", "good"], None));
    assert!(said.contains("rolled back to good"), "{said}");
    let length = first.len().to_string();
    let now = run(&["read", d0, "--offset", "0", "--length", &length], None);
    assert!(
        now.stdout == first,
        "the volume does not read the recovery point"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&run(&["snapshot", "list", d0, "--json"], None))).unwrap();
    let auto = json
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["automatic"] == true)
        .expect("no automatic recovery point");
    let name = auto["name"].as_str().unwrap();
    assert!(ok(&run(&["snapshot", "list", d0], None)).contains("(auto)"));
    let old = read_point(d0, first.len(), name);
    assert!(
        old.stdout == second,
        "the state before the rollback was not kept"
    );
}

fn pool_of(dir: &Path, prefix: &str, layout: &str, members: usize, size: &str) -> Vec<PathBuf> {
    let devs: Vec<PathBuf> = (0..members)
        .map(|i| dir.join(format!("{prefix}{i}")))
        .collect();
    let mut args = vec![
        "create",
        "--layout",
        layout,
        "--device-size",
        size,
        "--format",
        "4",
    ];
    args.extend(devs.iter().map(|d| p(d)));
    ok(&run(&args, None));
    devs
}

/// `send` to a file and through a pipe, `receive` into a pool of another layout, `snapshot
/// diff`; a corrupt stream is refused with the target's bytes unchanged; `receive --abort`
/// with nothing unfinished is refused.
#[test]
fn send_and_receive_carry_recovery_points_to_a_pool_of_another_layout() {
    let dir = tempfile::tempdir().unwrap();
    let src = pool_of(dir.path(), "s", "rs:4+2", 6, "16M");
    let dst = pool_of(dir.path(), "t", "mirror:2", 2, "96M");
    let (s0, t0) = (p(&src[0]), p(&dst[0]));
    let first = payload(1 << 20, 5);
    let second = payload(200_000, 6);
    ok(&run(&["write", s0, "--offset", "0"], Some(&first)));
    ok(&run(&["snapshot", "create", s0, "--name", "a"], None));
    ok(&run(&["write", s0, "--offset", "409600"], Some(&second)));
    ok(&run(&["snapshot", "create", s0, "--name", "b"], None));
    // The diff: the 49 blocks the second write touched (200,000 bytes from 409,600).
    let json: serde_json::Value = serde_json::from_str(&ok(&run(
        &["snapshot", "diff", s0, "--from", "a", "--to", "b", "--json"],
        None,
    )))
    .unwrap();
    assert_eq!(json["changed_data_bytes"], 49 * 4096, "{json}");
    assert_eq!(json["ranges"][0]["offset"], 409_600, "{json}");
    let listed = ok(&run(
        &["snapshot", "diff", s0, "--from", "a", "--to", "b"],
        None,
    ));
    assert!(
        listed.contains("409600") && listed.contains("data"),
        "{listed}"
    );

    let full = dir.path().join("a.stream");
    let out = run(&["send", s0, "--snapshot", "a", "--output", p(&full)], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("full"), "{}", text(&out.stderr));
    let said = ok(&run(&["receive", t0, "--input", p(&full)], None));
    assert!(said.contains("received a"), "{said}");
    // The incremental through a pipe: stdout of send, stdin of receive.
    let stream = run(&["send", s0, "--snapshot", "b", "--from", "a"], None);
    assert!(stream.status.success(), "{}", text(&stream.stderr));
    let mut bad = stream.stdout.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 1;
    let before = images(&dst);
    refused(&run(&["receive", t0], Some(&bad)), "stream, at byte");
    refused(&run(&["receive", t0], Some(&bad[..middle])), "truncated");
    assert!(images(&dst) == before, "a refused stream wrote");
    let said = ok(&run(&["receive", t0, "--json"], Some(&stream.stdout)));
    let report: serde_json::Value = serde_json::from_str(&said).unwrap();
    assert_eq!(report["name"], "b", "{said}");
    let mut expected = first.clone();
    expected[409_600..409_600 + second.len()].copy_from_slice(&second);
    let length = expected.len().to_string();
    let now = run(&["read", t0, "--offset", "0", "--length", &length], None);
    assert!(now.stdout == expected, "the received volume differs");
    let old = read_point(t0, first.len(), "a");
    assert!(old.stdout == first, "the received recovery point a differs");
    let names = ok(&run(&["snapshot", "list", t0], None));
    assert!(names.contains("a") && names.contains("b"), "{names}");
    refused(&run(&["receive", t0, "--abort"], None), "nothing to abort");
}

/// A stream whose byte `at` changes after the first pass through it (the check passes, the
/// apply stops there): how an unfinished receive is made on purpose.
struct ChangesAfterCheck {
    bytes: Vec<u8>,
    at: usize,
    pos: usize,
    seeks: usize,
}

impl std::io::Read for ChangesAfterCheck {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.bytes.len() - self.pos);
        buf[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl std::io::Seek for ChangesAfterCheck {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        match to {
            std::io::SeekFrom::Start(to) => {
                self.seeks += 1;
                if self.seeks == 1 {
                    self.bytes[self.at] ^= 1;
                }
                self.pos = usize::try_from(to).unwrap();
            }
            std::io::SeekFrom::Current(0) => {}
            _ => return Err(std::io::Error::other("unsupported")),
        }
        Ok(self.pos as u64)
    }
}

/// An unfinished receive: `status` says so, `check` warns, a `write` is refused naming it,
/// and `receive --abort` brings the volume back; `receive` of the same stream finishes it.
#[test]
fn an_unfinished_receive_is_shown_warned_about_refuses_writes_and_can_be_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let src = pool_of(dir.path(), "s", "mirror:2", 2, "16M");
    let dst = pool_of(dir.path(), "t", "mirror:2", 2, "16M");
    let (s0, t0) = (p(&src[0]), p(&dst[0]));
    let data = payload(3 << 20, 9);
    ok(&run(&["write", s0, "--offset", "0"], Some(&data)));
    ok(&run(&["snapshot", "create", s0, "--name", "full"], None));
    let stream = run(&["send", s0, "--snapshot", "full"], None);
    assert!(stream.status.success(), "{}", text(&stream.stderr));
    {
        let pool =
            stripestore::Pool::open_paths(&dst, &stripestore::OpenOptions::default()).unwrap();
        let at = stream.stdout.len() - 1000;
        let mut changing = ChangesAfterCheck {
            bytes: stream.stdout.clone(),
            at,
            pos: 0,
            seeks: 0,
        };
        assert!(pool.receive(&mut changing, &mut |_, _| {}).is_err());
        assert!(pool.unfinished_receive().is_some());
        pool.close().unwrap();
    }
    let status = ok(&run(&["status", t0], None));
    assert!(
        status.contains("receive of recovery point full is unfinished"),
        "{status}"
    );
    let check = run(&["check", t0], None);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check.stdout));
    assert!(
        text(&check.stdout).contains("unfinished"),
        "{}",
        text(&check.stdout)
    );
    refused(
        &run(&["write", t0, "--offset", "0"], Some(&payload(4096, 1))),
        "unfinished",
    );
    // As before: zeros (a full stream into an empty pool).
    let now = run(&["read", t0, "--offset", "0", "--length", "65536"], None);
    assert!(
        now.stdout.iter().all(|b| *b == 0),
        "the unfinished receive shows"
    );
    let said = ok(&run(&["receive", t0, "--abort"], None));
    assert!(said.contains("aborted"), "{said}");
    assert!(!ok(&run(&["status", t0], None)).contains("unfinished"));
    let said = ok(&run(&["receive", t0], Some(&stream.stdout)));
    assert!(said.contains("received full"), "{said}");
    let length = data.len().to_string();
    let now = run(&["read", t0, "--offset", "0", "--length", &length], None);
    assert!(now.stdout == data);
}
