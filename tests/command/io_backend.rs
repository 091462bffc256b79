//! The io_uring backend under the pool: every layout on files, random writes against the model,
//! reopen, lose a device, corrupt chunks behind the pool's back; the same workload with the
//! fallback forced; `status` naming the backend in use; and the devices the command brings into
//! a pool (`online`, `replace`) opened on the same backend.

use crate::common;

use common::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use stripestore::device::{open_device_with, Backend, SharedDevice};
use stripestore::testing::Model;
use stripestore::{OpenOptions, Pool};

fn real_probe() -> std::io::Result<()> {
    io_uring::IoUring::new(2).map(drop)
}

/// Whether io_uring works here; if not, print SKIPPED (or fail under STRIPESTORE_REQUIRE_TOOLS).
fn uring_available(test: &str) -> bool {
    match real_probe() {
        Ok(()) => true,
        Err(err) if std::env::var("STRIPESTORE_REQUIRE_TOOLS").as_deref() == Ok("1") => {
            panic!("{test}: io_uring unavailable ({err}) and STRIPESTORE_REQUIRE_TOOLS=1")
        }
        Err(err) => {
            println!("SKIPPED {test}: io_uring unavailable ({err})");
            false
        }
    }
}

fn file_devices(
    dir: &Path,
    count: usize,
    backend: Backend,
    probe: fn() -> std::io::Result<()>,
) -> (Vec<PathBuf>, Vec<SharedDevice>) {
    let paths: Vec<PathBuf> = (0..count).map(|i| dir.join(format!("d{i}.img"))).collect();
    let devices = paths
        .iter()
        .map(|p| open_device_with(p, Some(DEVICE_BYTES), backend, probe).unwrap())
        .collect();
    (paths, devices)
}

/// Random writes, verify; reopen by path, overwrite the first member's whole data region with
/// garbage behind the pool's back and verify (detected through the batched reads, healed,
/// counted), scrub; delete the second member's file, reopen without it and verify (reconstruction).
fn workload(
    layout: &str,
    devices: Vec<SharedDevice>,
    paths: &[PathBuf],
    rng: &mut rand_chacha::ChaCha8Rng,
    backend: &str,
) {
    let pool = Pool::create(devices, vec![], &options(layout)).unwrap();
    assert_eq!(pool.status().io_backend, backend, "{layout}");
    assert!(
        pool.status()
            .to_string()
            .contains(&format!("io: {backend}")),
        "{layout}: status must show the backend"
    );
    let mut model = Model::new(pool.size());
    random_writes(&pool, &mut model, rng, 40);
    verify(&pool, &model);
    pool.close().unwrap();

    let open = OpenOptions {
        background_rebuild: false,
        force: true,
        // Every chunk of one device is damaged on purpose: heal it, do not fault it.
        error_threshold: u64::MAX,
        ..OpenOptions::default()
    };
    let pool = Pool::open_paths(&paths[..1], &open).unwrap();
    verify(&pool, &model);
    let data_offset = pool.geometry().data_offset;
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&paths[0])
            .unwrap();
        let garbage = vec![0xA5u8; (DEVICE_BYTES - data_offset) as usize];
        file.write_all_at(&garbage, data_offset).unwrap();
        file.sync_data().unwrap();
    }
    verify(&pool, &model);
    let status = pool.status();
    assert!(
        status.total_checksum_errors() > 0,
        "{layout}: damage unseen"
    );
    assert!(status.total_repaired() > 0, "{layout}: damage not healed");
    // Parity and second copies no read touched: scrub heals them, and a second scrub is clean.
    let scrub = pool.scrub().unwrap();
    assert!(scrub.unrepairable_stripes == 0, "{layout}: {scrub:?}");
    let again = pool.scrub().unwrap();
    assert!(!again.found_damage(), "{layout}: {again:?}");
    verify(&pool, &model);
    pool.close().unwrap();

    std::fs::remove_file(&paths[1]).unwrap();
    let pool = Pool::open_paths(&paths[..1], &open).unwrap();
    verify(&pool, &model);
    random_writes(&pool, &mut model, rng, 10);
    verify(&pool, &model);
    pool.close().unwrap();
}

#[test]
fn every_layout_on_io_uring_files_matches_the_model() {
    if !uring_available("every_layout_on_io_uring_files_matches_the_model") {
        return;
    }
    each_layout(
        7000,
        "every_layout_on_io_uring_files_matches_the_model",
        |layout, count, rng, _seed| {
            let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
            let (paths, devices) = file_devices(dir.path(), count, Backend::Auto, real_probe);
            let backend = devices[0].io_backend();
            assert!(backend.starts_with("io_uring"), "{backend}");
            workload(layout, devices, &paths, rng, backend);
        },
    );
}

#[test]
fn forced_fallback_runs_the_same_workload_on_pread() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = stripestore::testing::rng(stripestore::testing::seed(7100));
    let no_uring = || -> std::io::Result<()> { Err(std::io::Error::other("disabled by the test")) };
    let (paths, devices) = file_devices(dir.path(), 6, Backend::Auto, no_uring);
    assert!(devices.iter().all(|d| d.as_uring().is_none()));
    workload("rs:4+2", devices, &paths, &mut rng, "pread");
}

#[test]
fn mixed_backends_in_one_pool_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = stripestore::testing::rng(stripestore::testing::seed(7200));
    let mut devices: Vec<SharedDevice> = file_devices(dir.path(), 2, Backend::Pread, real_probe).1;
    devices.push(Arc::new(stripestore::device::MemDevice::new(
        "mem",
        DEVICE_BYTES,
    )));
    let pool = Pool::create(devices, vec![], &options("mirror:3")).unwrap();
    assert_eq!(pool.status().io_backend, "memory, pread");
    let mut model = Model::new(pool.size());
    random_writes(&pool, &mut model, &mut rng, 20);
    verify(&pool, &model);
}

/// `stripestore bench` runs end to end and reports every figure with its bound (a smoke test
/// of the command and its JSON, on tiny devices; no timing is checked).
#[test]
fn bench_command_reports_every_figure_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_stripestore"))
        .args([
            "bench",
            "--layouts",
            "mirror:2,rs:2+1",
            "--device-size",
            "8M",
        ])
        .args([
            "--random-seconds",
            "0.1",
            "--threads",
            "2",
            "--runs",
            "2",
            "--json",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let layouts = report["layouts"].as_array().unwrap();
    assert_eq!(layouts.len(), 2);
    for layout in layouts {
        let metrics: Vec<&str> = layout["pool"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["metric"].as_str().unwrap())
            .collect();
        assert_eq!(
            metrics,
            [
                "seq_write",
                "seq_read",
                "random_read_4k",
                "degraded_read",
                "rebuild",
                "scrub"
            ]
        );
        for figure in layout["pool"].as_array().unwrap() {
            assert!(figure["value"].as_f64().unwrap() > 0.0, "{figure}");
            assert!(figure["bound"].as_f64().unwrap() > 0.0, "{figure}");
            // Medians with their spread over the two runs.
            assert!(figure["value_min"].as_f64().unwrap() <= figure["value"].as_f64().unwrap());
            assert!(figure["ratio_max"].as_f64().unwrap() >= figure["ratio"].as_f64().unwrap());
            assert_eq!(figure["runs"].as_array().unwrap().len(), 2, "{figure}");
        }
        assert_eq!(layout["raw"]["runs"].as_array().unwrap().len(), 2);
    }
    // The baseline says what measured it: fio io_uring, or a labelled weaker fallback.
    let baseline = report["baseline"].as_str().unwrap();
    assert!(
        baseline.contains("io_uring engine") || baseline.contains("WEAKER BASELINE"),
        "{baseline}"
    );
    assert_eq!(report["client"], "library");
    // Progress went to stderr while it ran.
    assert!(String::from_utf8_lossy(&output.stderr).contains("seq_write"));
}

/// The command opens every device it brings into a pool through the library's opener, so a
/// replacement or a member brought back online runs on the same backend as the others (they
/// ran on `pread` when the command opened them itself). Seen in the status each command
/// prints while the pool is still open.
#[test]
fn devices_the_command_brings_in_run_on_the_chosen_backend() {
    if !uring_available("devices_the_command_brings_in_run_on_the_chosen_backend") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let devs: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("d{i}.img")))
        .collect();
    let new = dir.path().join("new.img");
    let p = |path: &Path| path.to_str().unwrap().to_string();
    let run = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = common::run_program(common::stripestore_command("error"), &args, None);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let backend_line = |status: &str| {
        status
            .lines()
            .find(|line| line.trim_start().starts_with("io:"))
            .unwrap_or_default()
            .to_string()
    };
    let mut create: Vec<String> = ["create", "--layout", "mirror:3", "--device-size", "8M"]
        .map(String::from)
        .to_vec();
    create.extend(devs.iter().map(|d| p(d)));
    run(&create);

    run(&["offline".into(), p(&devs[0]), "1".into()]);
    let online = run(&["online".into(), p(&devs[0]), p(&devs[1])]);
    let line = backend_line(&online);
    assert!(
        line.contains("io_uring") && !line.contains("pread"),
        "online: {line}\n{online}"
    );

    let replaced = run(&[
        "replace".into(),
        p(&devs[0]),
        "--old".into(),
        p(&devs[2]),
        "--new".into(),
        p(&new),
    ]);
    let line = backend_line(&replaced);
    assert!(
        line.contains("io_uring") && !line.contains("pread"),
        "replace: {line}\n{replaced}"
    );
}
