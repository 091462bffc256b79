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

/// `--plant` switches one protection off in the simulated pool: the run fails with the damage
/// it lets through, the saved replay keeps the planted bug (so it fails again), the same run
/// without it passes, and an unknown bug name is refused.
#[test]
fn a_planted_bug_is_caught_and_its_replay_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        stripestore()
            .current_dir(dir.path())
            .args([
                "simulate",
                "--seed",
                "1",
                "--ops",
                "200",
                "--layout",
                "mirror:2",
                "--shrink-seconds",
                "5",
                // Version 3's read path is the one this bug switches off in this seed.
                "--format",
                "3",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let caught = run(&["--plant", "skip-checksum-verification"]);
    let stderr = String::from_utf8_lossy(&caught.stderr);
    assert!(!caught.status.success(), "{stderr}");
    assert!(stderr.contains("WRONG BYTES"), "{stderr}");
    assert!(
        stderr.contains("--plant skip-checksum-verification"),
        "{stderr}"
    );
    let saved = dir.path().join("stripestore-sim-1.json");
    let replay: Replay = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(replay.planted, ["skip-checksum-verification"]);
    let again = stripestore()
        .args(["simulate", "--replay"])
        .arg(&saved)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && stderr.contains("WRONG BYTES"),
        "{stderr}"
    );
    assert!(run(&[]).status.success());
    let unknown = run(&["--plant", "no-such-bug"]);
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success(), "{stderr}");
    assert!(
        stderr.contains("unknown planted bug 'no-such-bug'"),
        "{stderr}"
    );
}

/// `stripestore bench-metadata` on a 64 GiB volume (six sparse files in a temporary
/// directory): every phase reports, a flush writes one 4 KiB log block per member, one write
/// and a sync write one path per tree (map, slot summary and usage-table depths), create writes
/// only the first uberblocks, and an open after the kill replays the flushes it left.
#[test]
fn bench_metadata_reports_every_phase_with_the_expected_costs() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = succeed([
        "bench-metadata",
        "--volume",
        "64G",
        "--writes",
        "96",
        "--lookups",
        "200",
        "--map-cache",
        "64M",
        "--json",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let r = &report[0];
    let depths = r["map_depth"].as_f64().unwrap()
        + r["summary_depth"].as_f64().unwrap()
        + r["usage_depth"].as_f64().unwrap();
    assert_eq!(
        r["write"]["extra"]["one_write_sync_pages"].as_f64(),
        Some(depths)
    );
    assert_eq!(
        r["write"]["extra"]["bytes_per_flush"].as_f64(),
        Some(6.0 * 4096.0)
    );
    assert_eq!(
        r["create"]["bytes_written"].as_u64(),
        Some(6 * 2 * 4096),
        "uberblock 0 in both rings of six members"
    );
    assert!(
        r["open_after_kill"]["extra"]["records_replayed"]
            .as_f64()
            .unwrap()
            >= 8.0
    );
    assert_eq!(
        r["open_clean"]["extra"]["records_replayed"].as_f64(),
        Some(0.0)
    );
    assert!(
        r["reads"]["extra"]["cold_page_reads_per_lookup"]
            .as_f64()
            .unwrap()
            <= 1.0
    );
    assert_eq!(
        r["reads"]["extra"]["warm_page_reads_per_lookup"].as_f64(),
        Some(0.0)
    );
    assert_eq!(
        r["open_empty"]["bytes_written"].as_u64(),
        Some(0),
        "looking never writes"
    );
}

/// The benches that measure the disk run one at a time: one bench's writes must not starve
/// another's reads. In CI (2026-12-07) `bench-cold-map --nbd` beside `bench-smallwrite`, which
/// writes its member files whole at depth 8 each before measuring, got 30 reads per second
/// (p50 99 ms), too few reads for its pages-per-read figure to leave the cold start.
static DISK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Hold the disk for one bench test (released when the guard drops).
fn disk_to_myself() -> std::sync::MutexGuard<'static, ()> {
    DISK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether fio is missing (the test then prints SKIPPED and passes, except where
/// `STRIPESTORE_REQUIRE_TOOLS` says the tools must be there, as in CI).
fn fio_missing() -> bool {
    if std::process::Command::new("fio")
        .arg("--version")
        .output()
        .is_ok()
    {
        return false;
    }
    assert!(
        std::env::var_os("STRIPESTORE_REQUIRE_TOOLS").is_none(),
        "fio is required"
    );
    eprintln!("SKIPPED: fio is not installed (apt-get install it, or run .ci/run)");
    true
}

/// `stripestore bench-smallwrite` on small preallocated members: fio's baseline and the
/// volume's groups both report, and so does a v4 pool on the same members written by fio
/// over NBD (`--nbd`); rs rows are full (a group of 8 is two rows of 4; a group
/// that drew one key twice packs 7 blocks, so a few rows are narrow), the sample read back
/// matched (the command fails otherwise), and the flush case is measured too.
#[test]
fn bench_smallwrite_reports_raw_and_volume_iops_with_full_rows() {
    if fio_missing() {
        return;
    }
    let _disk = disk_to_myself();
    let dir = tempfile::tempdir().unwrap();
    let stdout = succeed([
        "bench-smallwrite",
        "--layouts",
        "rs:4+2,mirror:2",
        "--member-size",
        "96M",
        "--span",
        "8M",
        "--seconds",
        "0.3",
        "--runs",
        "1",
        "--fsync-every",
        "0,32",
        "--nbd",
        "--json",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4, "{report}");
    // nbdkit's file plugin on the raw member file is measured beside the pool whenever nbdkit
    // is installed (CI installs it and requires the tools).
    let nbdkit = std::process::Command::new("nbdkit")
        .arg("--version")
        .output()
        .is_ok();
    assert!(
        nbdkit || std::env::var_os("STRIPESTORE_REQUIRE_TOOLS").is_none(),
        "nbdkit is required"
    );
    assert_eq!(report["nbdkit"].is_string(), nbdkit, "{report}");
    for case in cases {
        assert!(case["raw_iops"][0].as_f64().unwrap() > 0.0, "{case}");
        // The mounted path: a v4 pool on the same members, served and written over NBD.
        assert!(case["nbd"][0]["iops"].as_f64().unwrap() > 0.0, "{case}");
        let reference = case["nbdkit_file"].as_array().unwrap();
        assert_eq!(reference.len(), usize::from(nbdkit), "{case}");
        for run in reference {
            assert!(run["iops"].as_f64().unwrap() > 0.0, "{case}");
            // fio's syncs over NBD are counted against nbdkit too.
            assert_eq!(
                run["writes_per_sync"].is_number(),
                case["fsync_every"] != 0,
                "{case}"
            );
        }
        // What fio's --fsync issued is counted, not assumed: syncs only when asked for, and
        // never fewer than one per 32 writes.
        let per_sync = [
            case["raw_writes_per_sync"][0].as_f64(),
            case["nbd"][0]["writes_per_sync"].as_f64(),
        ];
        if case["fsync_every"] == 0 {
            assert_eq!(per_sync, [None, None], "{case}");
        } else {
            for writes in per_sync {
                let writes = writes.unwrap();
                assert!(writes > 0.0 && writes <= 32.5, "{case}");
            }
        }
        let run = &case["library"][0];
        assert!(run["iops"].as_f64().unwrap() > 0.0, "{case}");
        let per_row = run["blocks_per_row"].as_f64().unwrap();
        match case["layout"].as_str().unwrap() {
            "rs:4+2" if case["fsync_every"] == 0 => assert!(per_row > 3.9, "{case}"),
            "mirror:2" => assert_eq!(per_row, 1.0, "{case}"),
            _ => assert!(per_row > 1.0, "{case}"),
        }
    }
}

#[test]
fn bench_smallwrite_soak_overwrites_a_filled_volume_with_the_cleaner_and_reads_it_all_back() {
    if fio_missing() {
        return;
    }
    let _disk = disk_to_myself();
    let dir = tempfile::tempdir().unwrap();
    let stdout = succeed([
        "bench-smallwrite",
        "--layouts",
        "mirror:2",
        "--member-size",
        "48M",
        "--fill",
        "90",
        "--seconds",
        "2",
        "--interval",
        "0.5",
        "--runs",
        "1",
        "--fsync-every",
        "32",
        "--json",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let run = &report["cases"][0]["library"][0];
    // Two seconds of overwrites are many times the free space of a 48 MiB mirror: the
    // cleaner must have moved blocks, and every block of the span was read back.
    assert!(run["relocated_per_write"].as_f64().unwrap() > 0.0, "{run}");
    // 90 % of the 3,088 blocks of this volume (3,632 before its cleaning headroom had a floor
    // of 4 segments: docs/FORMAT.md V4.2).
    assert!(run["checked_blocks"].as_u64().unwrap() >= 2779, "{run}");
    assert!(
        !run["interval_iops"].as_array().unwrap().is_empty(),
        "{run}"
    );
}

/// `stripestore bench-cold-map --nbd` on a small pool: the whole map cached costs (almost) no
/// map page per read, a cache of 4 of the span's 16 leaves costs at most one page per read
/// (issue 13's "at most one extra metadata read") and about the misses' share, and the
/// disk's own limits (random 4 KiB reads, the cold pattern's mix) are measured beside it.
#[test]
fn bench_cold_map_over_nbd_reports_pages_per_read_and_the_disks_ceiling() {
    if fio_missing() {
        return;
    }
    let _disk = disk_to_myself();
    let dir = tempfile::tempdir().unwrap();
    let stdout = succeed([
        "bench-cold-map",
        "--nbd",
        "--member-size",
        "256M",
        "--span",
        "64M",
        "--seconds",
        "0.5",
        "--runs",
        "1",
        "--depth",
        "4",
        "--json",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // 64 MiB of volume: 16 leaves of 16 KiB.
    assert_eq!(report["map_leaf_bytes"], 16 * 16384, "{report}");
    let warm = report["warm"]["pages_per_read"].as_f64().unwrap();
    assert!(warm < 0.05, "the whole map was cached: {report}");
    // The cold cache holds 4 leaves' worth of bytes (64 KiB). Whole sectors would fill it
    // with 16 of the 64 and three reads in four would miss; the span was written in order,
    // so its sectors are held compact (docs/FORMAT.md V4.17a: 19 units of 64 bytes, not 67)
    // and about 53 fit: about one read in six misses, each miss one 4 KiB sector (a quarter
    // of a page).
    assert_eq!(report["map_read_bytes"], 4096, "{report}");
    let cold = report["cold"]["pages_per_read"].as_f64().unwrap();
    assert!((0.01..0.125).contains(&cold), "{report}");
    let devices = &report["devices"];
    assert!(devices["random_4k"][0].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        devices["cold_pattern"][0].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        devices["ceiling_over_warm"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}
