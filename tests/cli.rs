//! The `stripestore` command end to end: create, write, read, status (text and JSON), scrub,
//! the demo, and clear failures for bad input.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stripestore"));
    cmd.env("STRIPESTORE_LOG", "error");
    cmd
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(data) = stdin {
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn devices(dir: &Path, count: usize) -> Vec<PathBuf> {
    (0..count).map(|i| dir.join(format!("d{i}.img"))).collect()
}

#[test]
fn create_write_read_status_scrub_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 6);
    let spare = dir.path().join("spare.img");
    let mut args = vec![
        "create",
        "--layout",
        "rs:4+2",
        "--device-size",
        "8M",
        "--spare",
        p(&spare),
    ];
    args.extend(devs.iter().map(|d| p(d)));
    let out = run(&args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created pool"));

    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let out = run(&["write", p(&devs[0]), "--offset", "12345"], Some(&payload));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Read back through a different member path: the others are found by recorded paths.
    let out = run(
        &[
            "read",
            p(&devs[3]),
            "--offset",
            "12345",
            "--length",
            &payload.len().to_string(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, payload);

    // From an input file to an output file.
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    std::fs::write(&input, &payload[..5000]).unwrap();
    assert!(run(
        &["write", p(&devs[1]), "--offset", "0", "--input", p(&input)],
        None
    )
    .status
    .success());
    assert!(run(
        &[
            "read",
            p(&devs[1]),
            "--offset",
            "0",
            "--length",
            "5000",
            "--output",
            p(&output)
        ],
        None
    )
    .status
    .success());
    assert_eq!(std::fs::read(&output).unwrap(), &payload[..5000]);

    let out = run(&["status", p(&devs[0])], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("state: ONLINE") && text.contains("spares") && text.contains("AVAIL"),
        "{text}"
    );

    let out = run(&["status", p(&devs[0]), "--json"], None);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["health"], "ONLINE");
    assert_eq!(json["layout"], "rs:4+2");
    assert_eq!(json["devices"].as_array().unwrap().len(), 6);
    assert_eq!(json["spares"].as_array().unwrap().len(), 1);

    // Lose a device: status says DEGRADED and names it, reads stay exact.
    std::fs::remove_file(&devs[2]).unwrap();
    let out = run(&["status", p(&devs[0]), "--json"], None);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["health"], "DEGRADED");
    assert_eq!(json["devices"][2]["state"], "FAULTED");
    let out = run(
        &[
            "read",
            p(&devs[0]),
            "--offset",
            "12345",
            "--length",
            &payload.len().to_string(),
        ],
        None,
    );
    assert_eq!(out.stdout, payload);
    let out = run(&["scrub", p(&devs[0]), "--json"], None);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["bad_shards"], 0);
}

#[test]
fn bad_input_fails_with_clear_messages_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 3);
    let out = run(
        &[
            "create",
            "--layout",
            "raid5:3",
            "--device-size",
            "8M",
            p(&devs[0]),
            p(&devs[1]),
            p(&devs[2]),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid layout \"raid5:3\""));

    let out = run(
        &[
            "create",
            "--layout",
            "rs:2+1",
            "--device-size",
            "lots",
            p(&devs[0]),
        ],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "bad flag value is a usage error"
    );

    let args = [
        "create",
        "--layout",
        "rs:2+1",
        "--device-size",
        "8M",
        p(&devs[0]),
        p(&devs[1]),
        p(&devs[2]),
    ];
    assert!(run(&args, None).status.success());
    let before = std::fs::read(&devs[0]).unwrap();
    let out = run(&args, None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already holds a superblock") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&devs[0]).unwrap(),
        before,
        "refused create wrote nothing"
    );

    let out = run(
        &["read", p(&devs[0]), "--offset", "1G", "--length", "10"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of range"));

    let out = run(&["status", p(&dir.path().join("missing.img"))], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.img"));
}

#[test]
fn demo_runs_the_whole_story() {
    let out = run(&["demo", "--device-size", "16M"], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("read back byte-exact"), "{stdout}");
    assert!(stdout.contains("second scrub: 0 bad shards"), "{stdout}");
    assert!(stdout.contains("pool is ONLINE again"), "{stdout}");
    assert!(stdout.contains("lose device 0 too"), "{stdout}");
}

#[test]
fn lifecycle_commands_offline_online_replace_spare_add_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 3);
    let mut args = vec!["create", "--layout", "rs:2+1", "--device-size", "8M"];
    args.extend(devs.iter().map(|d| p(d)));
    assert!(run(&args, None).status.success());
    let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    assert!(
        run(&["write", p(&devs[0]), "--offset", "0"], Some(&payload))
            .status
            .success()
    );
    let read_back = |from: &Path| {
        let out = run(
            &[
                "read",
                p(from),
                "--offset",
                "0",
                "--length",
                &payload.len().to_string(),
            ],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == payload, "payload differs");
    };
    let json = |from: &Path| -> serde_json::Value {
        serde_json::from_slice(&run(&["status", p(from), "--json"], None).stdout).unwrap()
    };

    // offline, then online: rebuilt and back in service.
    let out = run(&["offline", p(&devs[0]), "1"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&devs[0])["devices"][1]["state"], "OFFLINE");
    let out = run(&["offline", p(&devs[0]), "2"], None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a second offline would lose data"
    );
    let out = run(&["online", p(&devs[0]), p(&devs[1])], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&devs[0])["health"], "ONLINE");
    read_back(&devs[0]);

    // replace a healthy member with a new file.
    let new = dir.path().join("new.img");
    let out = run(
        &[
            "replace",
            p(&devs[0]),
            "--old",
            p(&devs[2]),
            "--new",
            p(&new),
            "--rebuild-rate",
            "1G",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = json(&devs[0]);
    assert_eq!(status["devices"][2]["path"], p(&new));
    assert_eq!(status["health"], "ONLINE");
    read_back(&new);

    // spare add, lose a member, rebuild onto the spare.
    let spare = dir.path().join("spare.img");
    let out = run(&["spare", "add", p(&devs[0]), "--device", p(&spare)], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&devs[0])["spares"][0]["state"], "AVAIL");
    std::fs::remove_file(&new).unwrap();
    let out = run(&["rebuild", p(&devs[0])], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = json(&devs[0]);
    assert_eq!(status["devices"][2]["path"], p(&spare));
    assert_eq!(status["health"], "ONLINE");
    assert_eq!(status["spares"].as_array().unwrap().len(), 0);
    read_back(&spare);

    // Errors name what is wrong.
    let out = run(
        &[
            "replace",
            p(&devs[0]),
            "--old",
            "nosuch",
            "--new",
            p(&dir.path().join("x.img")),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no data member \"nosuch\""));
}

#[test]
fn a_pool_created_with_relative_paths_opens_from_another_directory() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..3).map(|i| format!("r{i}.img")).collect();
    let mut create = bin();
    create
        .current_dir(dir.path())
        .args(["create", "--layout", "rs:2+1", "--device-size", "4M"])
        .args(&names);
    let out = create.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // From elsewhere, naming one member: the others are found by their recorded paths.
    let out = run(&["status", p(&dir.path().join("r0.img")), "--json"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["health"], "ONLINE");
    let recorded = status["devices"][1]["path"].as_str().unwrap();
    assert!(Path::new(recorded).is_absolute(), "{recorded}");
}

#[test]
fn bench_refuses_to_overwrite_given_devices_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious.img");
    let content: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&precious, &content).unwrap();
    let out = run(
        &["bench", "--layouts", "mirror:2", "--device", p(&precious)],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--force") && stderr.contains("nothing was written"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&precious).unwrap(), content);
}
