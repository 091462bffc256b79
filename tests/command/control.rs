//! Repair while serving (issue 17): `offline`, `online`, `replace`, `clear` and `spare
//! add|remove` with `--url` do their work in the process serving the pool when it runs with
//! `--control`, are refused without it, and an administrator's `offline` never makes the
//! server rebuild onto a spare.

use crate::common;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

fn run(args: &[&str]) -> Output {
    common::run_program(common::stripestore_command("warn"), args, None)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `stripestore serve` on a pool, with its metrics URL; its stderr is collected in a thread.
struct Served {
    child: Child,
    url: String,
    log: std::thread::JoinHandle<String>,
}

impl Served {
    fn start(member: &Path, dir: &Path, extra: &[&str]) -> Self {
        let mut child = common::stripestore_command("warn")
            .arg("serve")
            .arg(member)
            .args([
                "--socket",
                p(&dir.join("nbd.sock")),
                "--metrics",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut url = None;
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(rest) = line.trim().strip_prefix("metrics at ") {
                url = rest.strip_suffix("/metrics").map(str::to_string);
                break;
            }
            line.clear();
        }
        let Some(url) = url else {
            let _ = child.kill();
            panic!("serve did not print its metrics address: {line}");
        };
        let log = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
            rest
        });
        Self { child, url, log }
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&ok(&run(&["status", "--url", &self.url, "--json"]))).unwrap()
    }

    /// Wait (at most a minute) until `done` holds for the served status.
    fn wait_for(&self, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "{what}: {status}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop it with SIGTERM; its log.
    fn stop(mut self) -> String {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        let log = std::mem::replace(&mut self.log, std::thread::spawn(String::new))
            .join()
            .unwrap();
        assert!(status.success(), "serve: {log}");
        log
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A mirror:2 pool on d0, d1 with spare s0, 256 KiB written.
fn pool(dir: &Path) -> (Vec<PathBuf>, PathBuf) {
    let devs: Vec<PathBuf> = (0..2).map(|i| dir.join(format!("d{i}"))).collect();
    let spare = dir.join("s0");
    ok(&run(&[
        "create",
        "--layout",
        "mirror:2",
        "--device-size",
        "8M",
        "--spare",
        p(&spare),
        p(&devs[0]),
        p(&devs[1]),
    ]));
    let data: Vec<u8> = (0..256 << 10).map(|i: u32| (i % 241) as u8).collect();
    ok(&common::run_program(
        common::stripestore_command("warn"),
        &["write", p(&devs[0]), "--offset", "0"],
        Some(&data),
    ));
    (devs, spare)
}

fn ends_with(value: &serde_json::Value, suffix: &str) -> bool {
    value.as_str().is_some_and(|s| s.ends_with(suffix))
}

#[test]
fn every_admin_verb_works_through_the_url_of_a_served_pool() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, _) = pool(dir.path());
    let served = Served::start(
        &devs[0],
        dir.path(),
        &["--control", "--rebuild-rate", "512M"],
    );
    let url = served.url.clone();

    // offline: OFFLINE, and the server (auto-replace on) leaves the spare alone.
    let said = ok(&run(&["offline", "--url", &url, p(&devs[1])]));
    assert!(said.contains("d1: offline"), "{said}");
    let status = served.status();
    assert_eq!(status["devices"][1]["state"], "OFFLINE", "{status}");
    std::thread::sleep(Duration::from_millis(1500));
    let status = served.status();
    assert_eq!(
        status["spares"][0]["state"], "AVAIL",
        "auto-replaced an offline member: {status}"
    );
    assert!(
        status["rebuilds"].as_array().unwrap().is_empty(),
        "{status}"
    );
    assert_eq!(status["devices"].as_array().unwrap().len(), 2, "{status}");

    // online: resynced by the server's background rebuild.
    ok(&run(&["online", "--url", &url, p(&devs[1])]));
    served.wait_for("online", |s| {
        s["health"] == "ONLINE" && s["rebuilds"].as_array().is_some_and(Vec::is_empty)
    });

    // spare add (a new file, created at the pool's size by the server) and spare remove.
    let extra = dir.path().join("s1");
    ok(&run(&[
        "spare",
        "add",
        "--url",
        &url,
        "--device",
        p(&extra),
    ]));
    let status = served.status();
    assert_eq!(status["spares"].as_array().unwrap().len(), 2, "{status}");
    assert_eq!(std::fs::metadata(&extra).unwrap().len(), 8 << 20);
    ok(&run(&["spare", "remove", "--url", &url, p(&extra)]));
    assert_eq!(served.status()["spares"].as_array().unwrap().len(), 1);

    // replace onto the spare, rebuilt in the background.
    let s0 = dir.path().join("s0");
    ok(&run(&[
        "replace",
        "--url",
        &url,
        "--old",
        "1",
        "--new",
        p(&s0),
    ]));
    let status = served.wait_for("replace", |s| {
        s["health"] == "ONLINE" && ends_with(&s["devices"][1]["path"], "/s0")
    });
    assert!(status["spares"].as_array().unwrap().is_empty(), "{status}");

    // clear: nothing to clear is fine; an unknown member is refused (404, exit 1).
    ok(&run(&["clear", "--url", &url]));
    let out = run(&["clear", "--url", &url, "--device", "nothing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing"));

    let events: Vec<String> = served.status()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(events.contains(&"replace".to_string()), "{events:?}");
    let log = served.stop();
    assert!(!log.contains("outdated data"), "{log}");
    // The server closed the pool cleanly: the replacement is recorded.
    let status: serde_json::Value =
        serde_json::from_str(&ok(&run(&["status", "--json", p(&devs[0])]))).unwrap();
    assert!(ends_with(&status["devices"][1]["path"], "/s0"), "{status}");
}

#[test]
fn admin_through_the_url_is_refused_without_control() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, _) = pool(dir.path());
    let served = Served::start(&devs[0], dir.path(), &["--no-auto-replace"]);
    let url = served.url.clone();
    let before = served.status();
    let s1 = dir.path().join("s1");
    for args in [
        vec!["offline", "--url", &url, "1"],
        vec!["online", "--url", &url, "1"],
        vec!["replace", "--url", &url, "--old", "1", "--new", p(&s1)],
        vec!["clear", "--url", &url],
        vec!["spare", "add", "--url", &url, "--device", p(&s1)],
        vec!["spare", "remove", "--url", &url, "s0"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("serve --metrics ADDRESS --control"),
            "{args:?}: {said}"
        );
    }
    assert!(!s1.exists(), "a refused spare add created its file");
    let after = served.status();
    assert_eq!(before["devices"], after["devices"]);
    assert_eq!(before["spares"], after["spares"]);
    assert_eq!(
        before["superblock_generation"],
        after["superblock_generation"]
    );
    served.stop();
}

/// A member missing when `serve` opens the pool is faulted: with a spare, the server rebuilds
/// onto it by itself, unless `--no-auto-replace` leaves that to the operator.
#[test]
fn serve_no_auto_replace_leaves_a_faulted_member_to_the_operator() {
    for auto in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (devs, _) = pool(dir.path());
        let away = dir.path().join("away");
        std::fs::create_dir(&away).unwrap();
        std::fs::rename(&devs[1], away.join("d1")).unwrap();
        let mut extra = vec!["--force-degraded"];
        if !auto {
            extra.push("--no-auto-replace");
        }
        let served = Served::start(&devs[0], dir.path(), &extra);
        if auto {
            let status = served.wait_for("auto-replace", |s| {
                s["health"] == "ONLINE" && ends_with(&s["devices"][1]["path"], "/s0")
            });
            assert!(status["spares"].as_array().unwrap().is_empty(), "{status}");
        } else {
            std::thread::sleep(Duration::from_millis(1500));
            let status = served.status();
            assert_eq!(status["devices"][1]["state"], "FAULTED", "{status}");
            assert_eq!(status["spares"][0]["state"], "AVAIL", "{status}");
            assert!(
                status["rebuilds"].as_array().unwrap().is_empty(),
                "{status}"
            );
        }
        served.stop();
    }
}

/// A recovery point taken on an event: `snapshot create --url` (`POST /snapshot?name=N` with
/// control on) takes it in the serving process, which then lists it; a taken name is refused
/// with 409 and the name; after the server stops, the recovery point reads back what was
/// written before it.
#[test]
fn a_recovery_point_is_taken_through_the_url_of_a_served_pool() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, _) = pool(dir.path());
    let served = Served::start(&devs[0], dir.path(), &["--control"]);
    let url = served.url.clone();
    let said = ok(&run(&[
        "snapshot", "create", "--url", &url, "--name", "event-1",
    ]));
    assert!(said.contains("recovery point event-1 taken"), "{said}");
    let status = served.status();
    assert_eq!(status["recovery_points"]["count"], 1, "{status}");
    assert_eq!(status["recovery_points"]["newest"], "event-1", "{status}");
    let again = run(&["snapshot", "create", "--url", &url, "--name", "event-1"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("taken"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    served.stop();
    let data: Vec<u8> = (0..256 << 10).map(|i: u32| (i % 241) as u8).collect();
    let read = run(&[
        "read",
        p(&devs[0]),
        "--offset",
        "0",
        "--length",
        "256K",
        "--snapshot",
        "event-1",
    ]);
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert!(
        read.stdout == data,
        "the recovery point does not read what was written"
    );
}

/// `snapshot delete --url` (`POST /snapshot/delete?name=N`): the serving process takes the
/// recovery point off its list at once and its reclaim thread frees the space in the
/// background (the backlog shows in `status` until then); an unknown name is refused.
#[test]
fn a_recovery_point_deleted_through_the_url_is_reclaimed_by_the_served_pool() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, _) = pool(dir.path());
    let served = Served::start(&devs[0], dir.path(), &["--control"]);
    let url = served.url.clone();
    for name in ["old", "new"] {
        ok(&run(&["snapshot", "create", "--url", &url, "--name", name]));
    }
    let said = ok(&run(&[
        "snapshot", "delete", "--url", &url, "--name", "old",
    ]));
    assert!(said.contains("recovery point old deleted"), "{said}");
    let mut waited = 0;
    loop {
        let status = served.status();
        if status["recovery_points"]["deleting"].is_null() {
            assert_eq!(status["recovery_points"]["count"], 1, "{status}");
            assert_eq!(status["recovery_points"]["newest"], "new", "{status}");
            break;
        }
        waited += 1;
        assert!(waited < 600, "the served pool did not reclaim: {status}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let nope = run(&["snapshot", "delete", "--url", &url, "--name", "nope"]);
    assert!(!nope.status.success());
    assert!(
        String::from_utf8_lossy(&nope.stderr).contains("no recovery point of that name"),
        "{}",
        String::from_utf8_lossy(&nope.stderr)
    );
    served.stop();
}
