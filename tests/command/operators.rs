//! Operator commands (issue 17): `spare remove`, `labelclear`, `check --json`, `status --json`
//! on a pool that cannot be opened, completions and the man page, decimal sizes, and `bench
//! --device` taking several paths.

use crate::common;
use std::path::{Path, PathBuf};
use std::process::Output;

fn run(args: &[&str]) -> Output {
    common::run_program(common::stripestore_command("error"), args, None)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status_json(pool: &Path) -> serde_json::Value {
    let out = run(&["status", "--json", p(pool)]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A mirror:2 pool on d0, d1 with spares s0, s1 in `dir`.
fn mirror_with_spares(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let devs: Vec<PathBuf> = (0..2).map(|i| dir.join(format!("d{i}.img"))).collect();
    let spares: Vec<PathBuf> = (0..2).map(|i| dir.join(format!("s{i}.img"))).collect();
    let out = run(&[
        "create",
        "--layout",
        "mirror:2",
        "--device-size",
        "8M",
        "--spare",
        p(&spares[0]),
        "--spare",
        p(&spares[1]),
        p(&devs[0]),
        p(&devs[1]),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    (devs, spares)
}

#[test]
fn spare_remove_then_labelclear_a_removed_spare_and_a_replaced_member() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, spares) = mirror_with_spares(dir.path());
    // An unknown spare, and a data member, are not spares.
    for name in ["nonexistent", p(&devs[1])] {
        let out = run(&["spare", "remove", p(&devs[0]), name]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(stderr(&out).contains("no spare"), "{}", stderr(&out));
    }
    assert_eq!(status_json(&devs[0])["spares"].as_array().unwrap().len(), 2);

    // Remove s0 by its path (relative from the pool's directory works too).
    let out = common::run_program(
        {
            let mut c = common::stripestore_command("error");
            c.current_dir(dir.path());
            c
        },
        &["spare", "remove", "d0.img", "s0.img"],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let status = status_json(&devs[0]);
    let left: Vec<&str> = status["spares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert_eq!(left.len(), 1, "{status}");
    assert!(left[0].ends_with("s1.img"), "{left:?}");

    // Still a spare, still a member: refused, and the label is untouched.
    for (device, says) in [(&spares[1], "spare"), (&devs[1], "member in service")] {
        let before = std::fs::read(device).unwrap();
        let out = run(&["labelclear", p(device)]);
        assert_eq!(out.status.code(), Some(1), "{}", p(device));
        assert!(
            stderr(&out).contains("still") && stderr(&out).contains(says),
            "{}",
            stderr(&out)
        );
        assert_eq!(std::fs::read(device).unwrap(), before);
    }

    // The removed spare can be cleared, and then a new pool takes it without --force.
    let out = run(&["labelclear", p(&spares[0])]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["labelclear", p(&spares[0])]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no stripestore label"),
        "{}",
        stderr(&out)
    );

    // Replace d1 by a new device; the old d1 can then be cleared.
    let new = dir.path().join("n.img");
    let out = run(&[
        "replace",
        p(&devs[0]),
        "--old",
        p(&devs[1]),
        "--new",
        p(&new),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["labelclear", p(&devs[1])]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("cleared"), "{}", stderr(&out));
    // The pool is unharmed.
    assert_eq!(status_json(&devs[0])["health"], "ONLINE");

    let other: Vec<PathBuf> = vec![devs[1].clone(), spares[0].clone()];
    let out = run(&["create", "--layout", "mirror:2", p(&other[0]), p(&other[1])]);
    assert!(out.status.success(), "{}", stderr(&out));

    // --force wipes even an active member (here: of the new pool).
    let out = run(&["labelclear", p(&other[0])]);
    assert_eq!(out.status.code(), Some(1));
    let out = run(&["labelclear", "--force", p(&other[0])]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_spare_is_refused_by_create_until_labelcleared() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, spares) = mirror_with_spares(dir.path());
    let out = run(&["spare", "remove", p(&devs[0]), p(&spares[1])]);
    assert!(out.status.success(), "{}", stderr(&out));
    let fresh = dir.path().join("f.img");
    let args = [
        "create",
        "--layout",
        "mirror:2",
        "--device-size",
        "8M",
        p(&spares[1]),
        p(&fresh),
    ];
    let out = run(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert!(run(&["labelclear", p(&spares[1])]).status.success());
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn check_json_says_what_the_text_says_with_the_same_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, _spares) = mirror_with_spares(dir.path());
    let text = run(&["check", p(&devs[0])]);
    let json = run(&["check", "--json", p(&devs[0])]);
    assert_eq!(text.status.code(), Some(0));
    assert_eq!(json.status.code(), Some(0));
    let verdict: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(verdict["state"], "OK");
    assert_eq!(verdict["exit_code"], 0);
    assert_eq!(verdict["health"], "ONLINE");
    let line = stdout(&text);
    assert!(
        line.contains(verdict["summary"].as_str().unwrap()),
        "{line} / {verdict}"
    );

    // A warning: never scrubbed, with a limit on the scrub's age.
    let json = run(&["check", "--json", "--scrub-max-age-days", "7", p(&devs[0])]);
    assert_eq!(json.status.code(), Some(1));
    let verdict: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(verdict["state"], "WARNING");
    assert_eq!(verdict["exit_code"], 1);
    assert!(
        verdict["reasons"][0]["message"]
            .as_str()
            .unwrap()
            .contains("never scrubbed"),
        "{verdict}"
    );

    // Nothing to open: UNKNOWN (3), in JSON too.
    let missing = dir.path().join("missing.img");
    let text = run(&["check", p(&missing)]);
    let json = run(&["check", "--json", p(&missing)]);
    assert_eq!(text.status.code(), Some(3));
    assert_eq!(json.status.code(), Some(3));
    let verdict: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(verdict["state"], "UNKNOWN");
    assert_eq!(verdict["exit_code"], 3);
    assert!(verdict["perfdata"].is_null() && verdict["pool"].is_null());
}

#[test]
fn status_json_of_a_pool_that_cannot_be_opened_is_a_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.img");
    let out = run(&["status", "--json", p(&missing)]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["error"]["kind"], "Open", "{report}");
    assert!(report["error"]["message"]
        .as_str()
        .unwrap()
        .contains("missing.img"));

    // A file that is not a member.
    let plain = dir.path().join("plain.img");
    std::fs::write(&plain, vec![0u8; 1 << 20]).unwrap();
    let out = run(&["status", "--json", p(&plain)]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["error"]["kind"], "NotAMember", "{report}");

    // Without --json, no JSON: the message on stderr as before.
    let out = run(&["status", p(&plain)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("not a stripestore device"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn completions_and_man_page_come_from_the_command_definitions() {
    let out = run(&["completions", "bash"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let script = stdout(&out);
    for word in [
        "stripestore",
        "labelclear",
        "scrub",
        "completions",
        "--rebuild-rate",
    ] {
        assert!(script.contains(word), "bash completion lacks {word}");
    }
    for shell in ["zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        assert!(stdout(&out).contains("labelclear"), "{shell}");
    }
    let out = run(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));

    let out = run(&["man"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = stdout(&out);
    assert!(page.contains(".TH"), "{page}");
    assert!(page.contains("stripestore"), "{page}");
    assert!(page.contains("labelclear"), "{page}");
}

#[test]
fn decimal_sizes_are_accepted_and_unknown_suffixes_named() {
    let dir = tempfile::tempdir().unwrap();
    let devs: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("d{i}.img")))
        .collect();
    let out = run(&[
        "create",
        "--layout",
        "mirror:2",
        "--device-size",
        "8.5M",
        p(&devs[0]),
        p(&devs[1]),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&devs[0]).unwrap().len(), 17 << 19);
    let input = dir.path().join("in");
    std::fs::write(&input, vec![5u8; 1536]).unwrap();
    let out = run(&[
        "write",
        p(&devs[0]),
        "--offset",
        "1.5K",
        "--input",
        p(&input),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&[
        "read",
        p(&devs[0]),
        "--offset",
        "1.5k",
        "--length",
        "0.5KiB",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, vec![5u8; 512]);

    let out = run(&["read", p(&devs[0]), "--offset", "0", "--length", "64Q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown suffix") && stderr(&out).contains("K, M, G, T"),
        "{}",
        stderr(&out)
    );
    let out = run(&["read", p(&devs[0]), "--offset", "0", "--length", "1.3K"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("whole number of bytes"),
        "{}",
        stderr(&out)
    );
    let out = run(&["--help"]);
    assert!(
        stdout(&out).contains("1.5G"),
        "sizes are documented in --help"
    );
}

#[test]
fn bench_device_takes_several_paths_per_flag() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("b{i}.img")))
        .collect();
    for path in &paths {
        std::fs::write(path, vec![7u8; 1 << 20]).unwrap();
    }
    // Several per flag, and the flag repeated: parsed (no usage error), then refused for want of
    // --force before anything is written.
    let out = run(&[
        "bench",
        "--layouts",
        "mirror:2",
        "--device",
        p(&paths[0]),
        p(&paths[1]),
        "--device",
        p(&paths[2]),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    for path in &paths {
        assert_eq!(std::fs::read(path).unwrap(), vec![7u8; 1 << 20]);
    }
    let out = run(&["bench", "--help"]);
    assert!(
        stdout(&out).contains("--device <PATH>..."),
        "{}",
        stdout(&out)
    );
}
