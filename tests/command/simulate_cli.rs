//! `stripestore simulate` end to end: a short campaign with a JSON summary, and a saved workload
//! replayed with `--replay`.

use std::process::Command;
use stripestore::sim::{self, Replay, SimConfig};

fn stripestore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stripestore"))
}

/// Run `stripestore ARGS...`, require success, return stdout.
fn succeed<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    let output = stripestore().args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn short_campaign_reports_json_summary() {
    let stdout = succeed([
        "simulate", "--seed", "3", "--runs", "7", "--ops", "60", "--json",
    ]);
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["total"]["runs"], 7);
    assert_eq!(summary["total"]["violations"], 0);
    assert_eq!(summary["by_layout"].as_object().unwrap().len(), 7);
    assert!(summary["total"]["faults"]["crash"].as_u64().unwrap() > 0);
    assert!(summary["violation"].is_null());
}

#[test]
fn table_output_and_bad_fault_names() {
    let output = stripestore()
        .args([
            "simulate",
            "--runs",
            "1",
            "--ops",
            "40",
            "--layout",
            "rs:2+1",
            "--faults",
            "rot,crash",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("rs:2+1 on 3"), "{text}");
    assert!(text.contains("fault injected"), "{text}");
    let output = stripestore()
        .args(["simulate", "--faults", "gremlins"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown fault"));
}

#[test]
fn saved_workload_replays() {
    let config = SimConfig::new(9, "mirror:3".parse().unwrap(), 3);
    let ops: Vec<_> = sim::generate(&config).into_iter().take(40).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replay.json");
    std::fs::write(
        &path,
        serde_json::to_string(&Replay::new(&config, &ops)).unwrap(),
    )
    .unwrap();
    let stdout = succeed([
        std::ffi::OsStr::new("simulate"),
        "--replay".as_ref(),
        path.as_os_str(),
    ]);
    assert!(stdout.contains("no violation"));
}
