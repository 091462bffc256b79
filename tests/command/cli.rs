//! The `stripestore` command end to end: create, write, read, status (text and JSON), scrub,
//! the demo, and clear failures for bad input.

use crate::common;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    common::stripestore_command("error")
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    common::run_program(bin(), args, stdin)
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
    assert_eq!(out.status.code(), Some(2), "a bad layout is a usage error");
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

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn create_args<'a>(layout: &'a str, extra: &[&'a str], paths: &'a [PathBuf]) -> Vec<&'a str> {
    let mut args = vec!["create", "--layout", layout, "--device-size", "8M"];
    args.extend(extra);
    args.extend(paths.iter().map(|d| p(d)));
    args
}

/// Bad --layout, --chunk-size and --checksum-size are usage errors (exit 2, as the README
/// says), caught before any file is created; a create that fails later removes its files.
#[test]
fn bad_layout_and_sizes_exit_2_and_a_failed_create_leaves_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 3);
    for extra in [
        &["--chunk-size", "1000"][..],
        &["--chunk-size", "6K"],
        &["--chunk-size", "32M"],
        &["--checksum-size", "5K"],
        &["--checksum-size", "32K"],
        &["--chunk-size", "12K", "--checksum-size", "8K"],
    ] {
        let out = run(&create_args("rs:2+1", extra, &devs), None);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("size"), "{extra:?}: {}", stderr(&out));
    }
    let out = run(&create_args("rs:4", &[], &devs), None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(devs.iter().all(|d| !d.exists()), "no file created");
    // rs:4+2 on three devices: refused after the files were created; they are removed again.
    let out = run(&create_args("rs:4+2", &[], &devs), None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs at least 6 devices"),
        "{}",
        stderr(&out)
    );
    assert!(devs.iter().all(|d| !d.exists()), "created files removed");
}

/// An error's cause is printed once, not as the error and again as "caused by".
#[test]
fn an_error_prints_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.img");
    let out = run(&["status", p(&missing)], None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("missing.img") && err.contains("No such file"),
        "{err}"
    );
    assert!(
        !err.contains("caused by"),
        "the cause is already in the message: {err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Paths given twice and devices the pool already uses get a clear error, not "in use"; a
/// refused replace leaves no file behind and restores a file it grew.
#[test]
fn duplicate_paths_and_the_pools_own_devices_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 3);
    let twice = [devs[0].clone(), devs[1].clone(), devs[1].clone()];
    let out = run(&create_args("rs:2+1", &[], &twice), None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("d1.img is given twice"),
        "{}",
        stderr(&out)
    );
    assert!(!devs[0].exists() && !devs[1].exists(), "nothing created");

    assert!(run(&create_args("rs:2+1", &[], &devs), None)
        .status
        .success());
    let out = run(&["status", p(&devs[0]), p(&devs[0])], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("d0.img is given twice"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("in use"), "{}", stderr(&out));

    let out = run(
        &["spare", "add", p(&devs[0]), "--device", p(&devs[1])],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("d1.img is already a member (data position 1) of this pool"),
        "{err}"
    );
    assert!(!err.contains("in use"), "{err}");
    let spare = dir.path().join("s0.img");
    assert!(
        run(&["spare", "add", p(&devs[0]), "--device", p(&spare)], None)
            .status
            .success()
    );
    let out = run(
        &[
            "spare",
            "add",
            p(&devs[0]),
            "--device",
            p(&spare),
            "--force",
        ],
        None,
    );
    assert!(
        stderr(&out).contains("s0.img is already a spare of this pool"),
        "{}",
        stderr(&out)
    );
    let out = run(
        &[
            "replace",
            p(&devs[0]),
            "--old",
            "0",
            "--new",
            p(&devs[2]),
            "--force",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("d2.img is already a member (data position 2)"),
        "{}",
        stderr(&out)
    );

    // A replace refused after its new file was created removes it; one it grew is cut back.
    let new = dir.path().join("new.img");
    let out = run(
        &["replace", p(&devs[0]), "--old", "nosuch", "--new", p(&new)],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(!new.exists(), "the file replace created is removed");
    let small = dir.path().join("small.img");
    std::fs::write(&small, b"precious").unwrap();
    let out = run(
        &[
            "replace",
            p(&devs[0]),
            "--old",
            "nosuch",
            "--new",
            p(&small),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(&small).unwrap(), b"precious");
}

/// `online --path` takes the member itself back, and refuses another pool's member (which
/// keeps working), a spare or an active member of this pool, and a device with a filesystem,
/// without changing a byte of them.
#[test]
fn online_refuses_other_pools_spares_active_members_and_filesystems() {
    let dir = tempfile::tempdir().unwrap();
    let devs = devices(dir.path(), 3);
    assert!(run(&create_args("rs:2+1", &[], &devs), None)
        .status
        .success());
    let spare = dir.path().join("s0.img");
    assert!(
        run(&["spare", "add", p(&devs[0]), "--device", p(&spare)], None)
            .status
            .success()
    );
    let other = [dir.path().join("o0.img"), dir.path().join("o1.img")];
    assert!(run(&create_args("mirror:2", &[], &other), None)
        .status
        .success());
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 247) as u8).collect();
    assert!(
        run(&["write", p(&other[0]), "--offset", "0"], Some(&payload))
            .status
            .success()
    );
    let ext4 = dir.path().join("e0.img");
    let mut image = vec![0u8; 8 << 20];
    image[1080..1082].copy_from_slice(&0xEF53u16.to_le_bytes());
    image[1024 + 0x60] = 0x40;
    std::fs::write(&ext4, &image).unwrap();
    assert!(run(&["offline", p(&devs[0]), "1"], None).status.success());

    // (Opening the pool writes to its own members and spares, so only the devices outside
    // it are compared byte for byte.)
    for (path, force, expect) in [
        (&other[0], false, "already holds a superblock of pool"),
        (&spare, true, "s0.img is already a spare of this pool"),
        (
            &devs[2],
            true,
            "d2.img is already a member (data position 2) of this pool",
        ),
        (
            &ext4,
            false,
            "e0.img holds an ext4 filesystem (magic at byte 1080); use --force",
        ),
    ] {
        let outside = path == &other[0] || path == &ext4;
        let before = std::fs::read(path).unwrap();
        let mut args = vec!["online", p(&devs[0]), "1", "--path", p(path)];
        if force {
            args.push("--force");
        }
        let out = run(&args, None);
        assert_eq!(out.status.code(), Some(1), "{path:?}");
        assert!(stderr(&out).contains(expect), "{expect}: {}", stderr(&out));
        assert!(
            !outside || std::fs::read(path).unwrap() == before,
            "{path:?} unchanged"
        );
    }
    let out = run(
        &["read", p(&other[1]), "--offset", "0", "--length", "100000"],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == payload, "the other pool still reads back");

    let out = run(&["online", p(&devs[0]), "1"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["status", p(&devs[0]), "--json"], None);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["health"], "ONLINE");
    let out = run(&["online", p(&devs[0]), "1"], None);
    assert!(
        stderr(&out).contains("1 is already online"),
        "{}",
        stderr(&out)
    );
}

/// `create --copy-from`: a format-3 pool's volume into a new format-4 pool of another layout.
/// The copy reads back exactly (the written data and the holes); the source's files are
/// unchanged byte for byte (a write to the version-3 pool and `create --format 3` are refused);
/// a new pool too small for the volume copies nothing and says which
/// device size would do; naming one of the source's devices for the new pool, or a source that
/// is not a pool, fails before the new devices are made.
#[test]
fn create_copy_from_moves_a_v3_volume_into_a_v4_pool() {
    let dir = tempfile::tempdir().unwrap();
    let old: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("old{i}"))).collect();
    // This build makes no version-3 pool (`create --format 3` is gone): the test machinery
    // makes one, as an older build did.
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 37 % 253) as u8).collect();
    {
        stripestore::testing::allow_format_3_writes(true);
        let mut options = stripestore::CreateOptions::new("mirror:2".parse().unwrap());
        options.format = stripestore::pool::FormatVersion::V3;
        options.chunk_bytes = 64 << 10;
        options.device_bytes = Some(16 << 20);
        for path in &old {
            std::fs::File::create(path)
                .unwrap()
                .set_len(16 << 20)
                .unwrap();
        }
        let pool = stripestore::Pool::create_paths(&old, &[], &options).unwrap();
        pool.write_at(1_000_000, &payload).unwrap();
        pool.close().unwrap();
        stripestore::testing::allow_format_3_writes(false);
    }
    let read_all = |member: &Path, length: &str| {
        let out = run(
            &["read", p(member), "--offset", "0", "--length", length],
            None,
        );
        assert!(out.status.success(), "{}", stderr(&out));
        out.stdout
    };
    let images: Vec<Vec<u8>> = old.iter().map(|d| std::fs::read(d).unwrap()).collect();
    let volume = read_all(&old[0], "12M");
    assert_eq!(&volume[1_000_000..4_000_000], &payload[..]);
    // Writing to it, or making another, is refused naming both versions and the way out;
    // nothing changes.
    let out = run(&["write", p(&old[0]), "--offset", "0"], Some(&[7u8; 4096]));
    assert!(!out.status.success());
    let said = stderr(&out);
    // 64 KiB chunks checked per 4 KiB, nothing degraded: recorded as version 2 of the three
    // earlier ones.
    assert!(
        said.contains("format-version-2 pool")
            && said.contains("format version 4")
            && said.contains("--copy-from"),
        "{said}"
    );
    let never = dir.path().join("never");
    let out = run(
        &["create", "--format", "3", "--layout", "mirror:2", p(&never)],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--format"), "{}", stderr(&out));
    assert!(!never.exists(), "a refused create made a device");
    for (path, image) in old.iter().zip(&images) {
        assert!(
            std::fs::read(path).unwrap() == *image,
            "{} changed",
            path.display()
        );
    }

    let new = devices(dir.path(), 6);
    let from = format!("--copy-from={}", p(&old[0]));
    let out = run(&create_args("rs:4+2", &[&from], &new), None);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("copied 2.9 MiB"), "{text}");
    assert!(text.contains("read back and matched"), "{text}");
    assert!(read_all(&new[0], "12M") == volume, "the copy differs");
    // A mirror:2 create of `size` with `extra` options onto `paths`.
    let create_mirror = |size: &str, extra: &[&str], paths: &[PathBuf]| {
        let mut args = vec!["create", "--layout", "mirror:2", "--device-size", size];
        args.extend(extra);
        args.extend(paths.iter().map(|d| p(d)));
        run(&args, None)
    };
    let source_unchanged = || {
        for (path, image) in old.iter().zip(&images) {
            assert!(
                std::fs::read(path).unwrap() == *image,
                "{} changed",
                path.display()
            );
        }
    };
    source_unchanged();

    let small = [dir.path().join("s0"), dir.path().join("s1")];
    let out = create_mirror("4M", &[&from], &small);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("nothing was copied") && err.contains("--device-size"),
        "{err}"
    );

    // One of the source's own devices among the new ones: a usage error, nothing made.
    let mixed = [old[1].clone(), dir.path().join("u1")];
    let out = create_mirror("16M", &["--force", &from], &mixed);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("belongs to the pool to copy"),
        "{}",
        stderr(&out)
    );
    assert!(!mixed[1].exists(), "a new device was made");
    source_unchanged();

    let foreign = dir.path().join("foreign");
    std::fs::write(&foreign, vec![0u8; 1 << 20]).unwrap();
    let others = [dir.path().join("t0"), dir.path().join("t1")];
    let from = format!("--copy-from={}", p(&foreign));
    let out = create_mirror("16M", &[&from], &others);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("not a stripestore device"),
        "{}",
        stderr(&out)
    );
    assert!(
        others.iter().all(|d| !d.exists()),
        "the new devices were made"
    );
}
