//! Members are found by identity (pool UUID + device UUID), not by path (issue 17): disks
//! renamed among their paths, a member moved to another directory (`--scan`), `import`
//! listing every pool in a directory, relative member names in the admin commands, and (as
//! root, with losetup) loop devices attached again in another order.

use crate::common;
use std::path::{Path, PathBuf};
use std::process::Output;

fn run_in(dir: Option<&Path>, log: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut command = common::stripestore_command(log);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    common::run_program(command, args, stdin)
}

fn run(args: &[&str]) -> Output {
    run_in(None, "warn", args, None)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

fn json(out: &Output) -> serde_json::Value {
    ok(out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn snapshot(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn payload(bytes: usize) -> Vec<u8> {
    (0..bytes).map(|i| (i * 7 + i / 4096) as u8).collect()
}

/// An rs:2+1 pool on `names` in `dir`, holding `data` at offset 0.
fn pool_in(dir: &Path, names: &[&str], layout: &str, data: &[u8]) -> Vec<PathBuf> {
    let devs: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    let mut args = vec!["create", "--layout", layout, "--device-size", "8M"];
    args.extend(devs.iter().map(|d| p(d)));
    ok(&run(&args));
    ok(&run_in(
        None,
        "warn",
        &["write", p(&devs[0]), "--offset", "0"],
        Some(data),
    ));
    devs
}

fn read_back(member: &Path, length: usize) -> Vec<u8> {
    let out = run(&[
        "read",
        p(member),
        "--offset",
        "0",
        "--length",
        &length.to_string(),
    ]);
    ok(&out);
    out.stdout
}

/// `mv a t; mv b a; mv t b`: the pool opened by one path finds every member. Looking
/// (`status`) uses the found paths and says so without writing; the first read-write open
/// records the new paths, after which opening by that one path finds everything silently.
#[test]
fn members_swapped_among_their_paths_are_found_and_the_new_paths_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = payload(256 << 10);
    let devs = pool_in(dir.path(), &["a", "b", "c"], "rs:2+1", &data);
    let uuids: Vec<String> = {
        let status = json(&run(&["status", "--json", p(&devs[0])]));
        (0..3)
            .map(|i| status["devices"][i]["uuid"].as_str().unwrap().to_string())
            .collect()
    };
    let t = dir.path().join("t");
    std::fs::rename(&devs[0], &t).unwrap();
    std::fs::rename(&devs[1], &devs[0]).unwrap();
    std::fs::rename(&t, &devs[1]).unwrap();

    // Looking: every member found, said on stderr, nothing written.
    let before = snapshot(&devs);
    let out = run(&["status", "--json", p(&devs[0])]);
    let status = json(&out);
    assert_eq!(status["health"], "ONLINE", "{status}");
    let said = stderr(&out);
    assert!(
        said.contains(&format!(
            "member {} (data position 0) found at new path",
            uuids[0]
        )) && said.contains("not recorded"),
        "{said}"
    );
    let canonical = |path: &Path| std::fs::canonicalize(path).unwrap();
    let path_of = |status: &serde_json::Value, i: usize| {
        PathBuf::from(status["devices"][i]["path"].as_str().unwrap())
    };
    assert_eq!(path_of(&status, 0), canonical(&devs[1]), "{status}");
    assert_eq!(path_of(&status, 1), canonical(&devs[0]), "{status}");
    assert_eq!(snapshot(&devs), before, "status wrote to a member");

    // A read-write open records the new paths.
    let out = run_in(
        None,
        "warn",
        &["write", p(&devs[0]), "--offset", "0"],
        Some(&data[..4096]),
    );
    ok(&out);
    assert!(stderr(&out).contains("; recorded"), "{}", stderr(&out));

    // From then on, opening by that one path finds everything where it is, with no rescan.
    let out = run(&["status", "--json", p(&devs[0])]);
    let status = json(&out);
    assert_eq!(status["health"], "ONLINE", "{status}");
    assert!(
        !stderr(&out).contains("found at new path"),
        "{}",
        stderr(&out)
    );
    for (i, at) in [(0, 1), (1, 0), (2, 2)] {
        assert_eq!(status["devices"][i]["uuid"], uuids[i].as_str());
        assert_eq!(path_of(&status, i), canonical(&devs[at]), "{status}");
    }
    assert!(read_back(&devs[2], data.len()) == data);
}

/// A member moved to another directory is found with `--scan DIR` (and not without it: the
/// pool is then degraded); a read-write open with `--scan` records where it is.
#[test]
fn a_member_moved_elsewhere_is_found_with_scan_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let data = payload(128 << 10);
    let devs = pool_in(dir.path(), &["a", "b", "c"], "rs:2+1", &data);
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let moved = elsewhere.join("c-renamed");
    std::fs::rename(&devs[2], &moved).unwrap();

    let status = json(&run(&["status", "--json", p(&devs[0])]));
    assert_eq!(status["health"], "DEGRADED", "{status}");
    let status = json(&run(&[
        "status",
        "--json",
        "--scan",
        p(&elsewhere),
        p(&devs[0]),
    ]));
    assert_eq!(status["health"], "ONLINE", "{status}");

    // `rebuild` is a read-write open: it records the new path (nothing to rebuild).
    let out = run(&["rebuild", "--scan", p(&moved), p(&devs[1])]);
    ok(&out);
    assert!(
        stderr(&out).contains("found at new path"),
        "{}",
        stderr(&out)
    );
    let out = run(&["status", "--json", p(&devs[0])]);
    let status = json(&out);
    assert_eq!(status["health"], "ONLINE", "{status}");
    assert_eq!(
        PathBuf::from(status["devices"][2]["path"].as_str().unwrap()),
        std::fs::canonicalize(&moved).unwrap()
    );
    assert!(
        !stderr(&out).contains("found at new path"),
        "{}",
        stderr(&out)
    );
    assert!(read_back(&devs[0], data.len()) == data);
}

/// `import --scan DIR` lists every pool with a device in DIR, each member with where it was
/// found, and writes nothing; a stranger file is ignored.
#[test]
fn import_lists_every_pool_in_a_directory_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let first = pool_in(dir.path(), &["m0", "m1"], "mirror:2", &payload(8192));
    let second = pool_in(dir.path(), &["r0", "r1", "r2"], "rs:2+1", &payload(8192));
    std::fs::write(dir.path().join("stranger"), vec![0x5a; 1 << 20]).unwrap();
    let uuid_of = |member: &Path| {
        json(&run(&["status", "--json", p(member)]))["pool"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (first_uuid, second_uuid) = (uuid_of(&first[0]), uuid_of(&second[0]));
    let all: Vec<PathBuf> = first.iter().chain(&second).cloned().collect();
    let before = snapshot(&all);

    let pools = json(&run(&["import", "--scan", p(dir.path()), "--json"]));
    let pools = pools.as_array().unwrap();
    assert_eq!(pools.len(), 2, "{pools:?}");
    for (uuid, members, layout) in [
        (&first_uuid, &first, "mirror:2"),
        (&second_uuid, &second, "rs:2+1"),
    ] {
        let pool = pools
            .iter()
            .find(|pool| pool["pool"] == uuid.as_str())
            .unwrap_or_else(|| panic!("pool {uuid} not listed: {pools:?}"));
        assert_eq!(pool["layout"], layout);
        assert_eq!(pool["state"], "ONLINE", "{pool}");
        let devices = pool["devices"].as_array().unwrap();
        assert_eq!(devices.len(), members.len());
        for (device, member) in devices.iter().zip(members.iter()) {
            assert_eq!(
                PathBuf::from(device["path"].as_str().unwrap()),
                std::fs::canonicalize(member).unwrap(),
                "{pool}"
            );
            assert_eq!(device["state"], "ONLINE");
        }
    }
    // Text: both pools, and a member that went missing is shown as such.
    std::fs::remove_file(&second[2]).unwrap();
    let out = run(&["import", "--scan", p(dir.path())]);
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&first_uuid) && text.contains(&second_uuid),
        "{text}"
    );
    assert!(
        text.contains("MISSING") && text.contains("DEGRADED"),
        "{text}"
    );
    assert_eq!(snapshot(&all[..4]), before[..4], "import wrote to a device");
}

/// Admin commands take a member or spare by any name of its file: `d1`, `./d1` or the
/// absolute path, whatever was recorded.
#[test]
fn relative_member_names_match_in_offline_online_replace_and_spare_remove() {
    let dir = tempfile::tempdir().unwrap();
    let here = Some(dir.path());
    let cmd = |args: &[&str]| run_in(here, "warn", args, None);
    ok(&cmd(&[
        "create",
        "--layout",
        "mirror:3",
        "--device-size",
        "8M",
        "--spare",
        "./s0",
        "--spare",
        "s1",
        "d0",
        "./d1",
        "d2",
    ]));
    let status = |cmd: &dyn Fn(&[&str]) -> Output| json(&cmd(&["status", "--json", "d0"]));
    let abs = |name: &str| std::fs::canonicalize(dir.path().join(name)).unwrap();

    ok(&cmd(&["offline", "d0", "d1"]));
    assert_eq!(status(&cmd)["devices"][1]["state"], "OFFLINE");
    ok(&cmd(&["online", "d0", "./d1"]));
    assert_eq!(status(&cmd)["devices"][1]["state"], "ONLINE");
    ok(&cmd(&["offline", "d0", p(&abs("d2"))]));
    assert_eq!(status(&cmd)["devices"][2]["state"], "OFFLINE");
    ok(&cmd(&["replace", "d0", "--old", "./d2", "--new", "n2"]));
    let now = status(&cmd);
    assert_eq!(now["devices"][2]["state"], "ONLINE", "{now}");
    assert!(now["devices"][2]["path"].as_str().unwrap().ends_with("n2"));
    ok(&cmd(&["spare", "remove", "d0", "s0"]));
    ok(&cmd(&["spare", "remove", "d0", p(&abs("s1"))]));
    assert_eq!(status(&cmd)["spares"].as_array().unwrap().len(), 0);
    // A name that is no member is still refused.
    let out = cmd(&["offline", "d0", "./nothing"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

/// Loop devices detached and attached again in another order get each other's names: the
/// pool opened by one of them finds every member. Needs root and losetup; skipped otherwise.
#[test]
fn loop_devices_attached_in_another_order_are_found() {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    if !root {
        eprintln!("skipped loop_devices_attached_in_another_order_are_found: not root");
        return;
    }
    if !common::tools_or_skip(
        "loop_devices_attached_in_another_order_are_found",
        &["losetup"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("img{i}"))).collect();
    for file in &files {
        std::fs::write(file, vec![0u8; 8 << 20]).unwrap();
    }
    let mut loops = Loops(Vec::new());
    for file in &files {
        match loops.attach(file) {
            Ok(()) => {}
            Err(why) => {
                eprintln!("skipped loop_devices_attached_in_another_order_are_found: {why}");
                return;
            }
        }
    }
    let devs = loops.0.clone();
    let mut args = vec!["create", "--layout", "rs:2+1"];
    args.extend(devs.iter().map(|d| p(d)));
    ok(&run(&args));
    let data = payload(64 << 10);
    ok(&run_in(
        None,
        "warn",
        &["write", p(&devs[0]), "--offset", "0"],
        Some(&data),
    ));
    let before = json(&run(&["status", "--json", p(&devs[0])]));
    loops.detach_all();
    // Attached in reverse order: the first free loop device now holds the last image.
    for file in files.iter().rev() {
        loops.attach(file).unwrap();
    }
    let by_file = |i: usize| loops.0[2 - i].clone();
    assert_ne!(by_file(0), devs[0], "the loop devices did not change names");
    let out = run(&["status", "--json", p(&loops.0[0])]);
    let status = json(&out);
    assert_eq!(status["health"], "ONLINE", "{status}\n{}", stderr(&out));
    for i in 0..3 {
        assert_eq!(status["devices"][i]["uuid"], before["devices"][i]["uuid"]);
        assert_eq!(
            status["devices"][i]["path"].as_str().unwrap(),
            p(&by_file(i)),
            "{status}"
        );
    }
    assert!(read_back(&loops.0[1], data.len()) == data);
}

/// Loop devices this test attached; detached when dropped.
struct Loops(Vec<PathBuf>);

impl Loops {
    fn attach(&mut self, file: &Path) -> Result<(), String> {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show", p(file)])
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!("losetup: {}", stderr(&out).trim()));
        }
        self.0
            .push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        Ok(())
    }

    fn detach_all(&mut self) {
        for device in self.0.drain(..) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", p(&device)])
                .status();
        }
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        self.detach_all();
    }
}
