//! The command on a pool whose members are NBD exports: `create --layout rs:4+2 URI...`, then
//! `write`, `read` and `status` given the URIs (nbdkit's memory plugin on Unix sockets).
//! nbdkit missing: SKIPPED (a failure with `STRIPESTORE_REQUIRE_TOOLS=1`).

use crate::common;
use crate::nbdkit;

use nbdkit::{have_nbdkit, Nbdkit};
use std::process::Output;

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let out = common::run_program(common::stripestore_command("error"), args, stdin);
    assert!(
        out.status.success(),
        "stripestore {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn create_write_read_status_on_six_nbd_members() {
    let test = "create_write_read_status_on_six_nbd_members";
    if !have_nbdkit(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let servers: Vec<Nbdkit> = (0..6)
        .map(|i| Nbdkit::start(&dir.path().join(format!("s{i}")), &["memory", "64M"]))
        .collect();
    let uris: Vec<String> = servers.iter().map(|s| s.uri("")).collect();
    let with_uris = |head: &[&str]| -> Vec<String> {
        head.iter()
            .map(|s| s.to_string())
            .chain(uris.iter().cloned())
            .collect()
    };
    let args = with_uris(&["create", "--layout", "rs:4+2"]);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>(), None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("created pool") && text.contains("6 devices"),
        "{text}"
    );

    let data: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let args = with_uris(&["write", "--offset", "65536"]);
    run(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        Some(&data),
    );
    let args = with_uris(&["read", "--offset", "65536", "--length", "262144"]);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>(), None);
    assert!(out.stdout == data, "read back differs");

    let args = with_uris(&["status"]);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>(), None);
    let text = String::from_utf8_lossy(&out.stdout);
    for uri in &uris {
        assert!(text.contains(uri.as_str()), "{uri} not in:\n{text}");
    }
    assert!(text.contains("io: nbd"), "{text}");
    assert!(!text.contains("FAULTED"), "{text}");
}

/// `bench-members` measures both kinds in one run and says so in its JSON: every figure
/// present and positive for local and NBD members, with the ratio of each run.
#[test]
fn bench_members_reports_local_and_nbd_figures() {
    let test = "bench_members_reports_local_and_nbd_figures";
    if !have_nbdkit(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &[
            "bench-members",
            "--member-size",
            "64M",
            "--bytes",
            "16M",
            "--seconds",
            "1",
            "--runs",
            "1",
            "--threads",
            "2",
            "--dir",
            dir.path().to_str().unwrap(),
            "--json",
        ],
        None,
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{report}");
    for row in rows {
        for kind in ["local", "nbd", "ratio"] {
            let median = row[kind]["median"].as_f64().unwrap();
            assert!(median > 0.0, "{kind} of {}: {report}", row["figure"]);
        }
    }
    // The work directory is left empty (its member files and sockets are removed).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
