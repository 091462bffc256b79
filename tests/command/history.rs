//! The pool's history (issue 17): the event log and cumulative counters kept in the
//! superblocks, `events`, the last events and the last rebuild in `status`, the warning when a
//! rebuild used the last spare, and Prometheus counters that never go down when a member is
//! replaced.

use crate::common;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use stripestore::device::SharedDevice;
use stripestore::testing::{mem_devices, shared};
use stripestore::types::StripeId;
use stripestore::{CreateOptions, OpenOptions, Pool};

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

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(&run(args))).unwrap()
}

/// A mirror:3 pool on d0..d2 with spare s0 in `dir`, 256 KiB written.
fn pool_with_spare(dir: &Path) -> (Vec<PathBuf>, PathBuf) {
    let devs: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("d{i}"))).collect();
    let spare = dir.join("s0");
    ok(&run(&[
        "create",
        "--layout",
        "mirror:3",
        "--device-size",
        "8M",
        "--spare",
        p(&spare),
        p(&devs[0]),
        p(&devs[1]),
        p(&devs[2]),
    ]));
    let data: Vec<u8> = (0..256 << 10).map(|i: u32| (i % 251) as u8).collect();
    ok(&common::run_program(
        common::stripestore_command("warn"),
        &["write", p(&devs[0]), "--offset", "0"],
        Some(&data),
    ));
    (devs, spare)
}

fn kinds(events: &serde_json::Value) -> Vec<String> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

/// Offline, online (a resync), a scrub: each is an event with a UTC time, kept across
/// reopening with the counters; `status` shows the last five and the last rebuild; `events`
/// only looks.
#[test]
fn events_and_counters_are_kept_in_the_superblocks_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, _) = pool_with_spare(dir.path());
    ok(&run(&["offline", p(&devs[0]), p(&devs[1])]));
    ok(&run(&["online", p(&devs[0]), p(&devs[1])]));
    ok(&run(&["scrub", p(&devs[0])]));

    let before: Vec<Vec<u8>> = devs.iter().map(|d| std::fs::read(d).unwrap()).collect();
    let history = json(&["events", p(&devs[2]), "--json"]);
    let after: Vec<Vec<u8>> = devs.iter().map(|d| std::fs::read(d).unwrap()).collect();
    assert!(before == after, "`events` wrote to a member");
    let all = kinds(&history["events"]);
    let wanted = [
        "offline",
        "online",
        "rebuild_start",
        "rebuild_finish",
        "scrub_finish",
    ];
    let mut at = 0;
    for kind in &all {
        if at < wanted.len() && kind == wanted[at] {
            at += 1;
        }
    }
    assert_eq!(at, wanted.len(), "{wanted:?} in order in {all:?}");
    let offline = &history["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "offline")
        .unwrap();
    assert!(
        offline["device"].as_str().unwrap().ends_with("d1"),
        "{offline}"
    );
    let time = offline["time"].as_str().unwrap();
    assert!(
        time.len() == 20 && time.ends_with('Z') && &time[10..11] == "T",
        "{time}"
    );
    let counters = &history["counters"];
    assert_eq!(counters["scrubs"], 1, "{counters}");
    assert!(
        counters["rebuilt_bytes"].as_u64().unwrap() > 0,
        "{counters}"
    );

    // `status` (another process, reading the superblocks): the last five, and the last rebuild.
    let status = json(&["status", "--json", p(&devs[0])]);
    let last: Vec<serde_json::Value> =
        history["events"].as_array().unwrap()[all.len().saturating_sub(5)..].to_vec();
    assert_eq!(status["events"], serde_json::Value::Array(last), "{status}");
    assert_eq!(status["counters"], *counters);
    assert_eq!(status["last_rebuild"]["kind"], "rebuild_finish");
    let text = ok(&run(&["status", p(&devs[0])]));
    assert!(text.contains("rebuild: last finished "), "{text}");
    assert!(text.contains("events: (the last 5;"), "{text}");
    assert!(text.contains("scrub_finish"), "{text}");
    // An offline member is OFFLINE, never faulted, and is not news on every command.
    ok(&run(&["offline", p(&devs[0]), p(&devs[1])]));
    let out = run(&["status", p(&devs[0])]);
    let text = ok(&out);
    assert!(text.contains("OFFLINE"), "{text}");
    assert!(!text.contains("FAULTED"), "{text}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("outdated data"), "{said}");
}

/// After a rebuild onto the last spare, the pool is whole again but cannot take another
/// failure unattended: `status` and `check` say so (WARNING) until a spare is added.
#[test]
fn a_rebuild_that_used_the_last_spare_warns_until_one_is_added() {
    let dir = tempfile::tempdir().unwrap();
    let (devs, spare) = pool_with_spare(dir.path());
    let check = || {
        let out = run(&["check", p(&devs[0])]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(check().0, Some(0), "{}", check().1);
    let away = dir.path().join("away");
    std::fs::create_dir(&away).unwrap();
    std::fs::rename(&devs[2], away.join("d2")).unwrap();
    // (A mirror missing a member cannot prove the others are current: the test accepts it.)
    ok(&run(&["rebuild", "--force-degraded", p(&devs[0])]));
    let status = json(&["status", "--json", p(&devs[0])]);
    assert_eq!(status["health"], "ONLINE", "{status}");
    assert_eq!(status["no_spare_left"], true, "{status}");
    assert!(status["last_rebuild"]["detail"]
        .as_str()
        .unwrap()
        .contains("from the spares"));
    assert_eq!(
        status["devices"][2]["path"].as_str().map(PathBuf::from),
        Some(std::fs::canonicalize(&spare).unwrap())
    );
    let text = ok(&run(&["status", p(&devs[0])]));
    assert!(text.contains("no spare is left"), "{text}");
    let (code, line) = check();
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.starts_with("STRIPESTORE WARNING") && line.contains("no spare is left"),
        "{line}"
    );
    assert!(line.contains("last rebuild"), "{line}");

    ok(&run(&[
        "spare",
        "add",
        p(&devs[0]),
        "--device",
        p(&dir.path().join("s1")),
    ]));
    let status = json(&["status", "--json", p(&devs[0])]);
    assert_eq!(status["no_spare_left"], false, "{status}");
    assert_eq!(check().0, Some(0), "{}", check().1);
}

/// Every `_total` series in a Prometheus text, with its value.
fn totals(exposition: &str) -> BTreeMap<String, u64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            name.ends_with("_total")
                .then(|| (series.to_string(), value.parse::<u64>().unwrap()))
        })
        .collect()
}

fn promtool_accepts(exposition: &str) {
    use std::io::Write;
    let Some(promtool) = common::find_tool("promtool") else {
        eprintln!("promtool not installed: `promtool check metrics` not run");
        return;
    };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A member with checksum errors and repairs on record is faulted and replaced by a spare:
/// no `_total` series scraped before is missing or lower after (the replaced device's series
/// stay at their last value), the pool's totals go on from where they were, and they are
/// back after a close and reopen.
#[test]
fn prometheus_counters_never_go_down_when_a_member_is_replaced() {
    let size = 8 << 20;
    let mems = mem_devices(2, size);
    let spare = Arc::new(stripestore::device::MemDevice::new("spare", size));
    let mut options = CreateOptions::new("mirror:2".parse().unwrap());
    options.chunk_bytes = 4096;
    stripestore::testing::allow_format_3_writes(true);
    options.format = stripestore::pool::FormatVersion::V3;
    options.open.background_rebuild = false;
    let pool = Pool::create(
        shared(&mems),
        shared(std::slice::from_ref(&spare)),
        &options,
    )
    .unwrap();
    let data: Vec<u8> = (0..64 << 10).map(|i: u32| (i % 253) as u8).collect();
    pool.write_at(0, &data).unwrap();
    pool.flush().unwrap();
    // Rot mem0's copy of the first stripes: reads heal them from mem1.
    for stripe in 0..4 {
        let shard = pool
            .shard_locations(StripeId(stripe))
            .into_iter()
            .find(|s| s.device == 0)
            .unwrap();
        mems[0].flip_bit(shard.offset + 5, 3);
    }
    let mut back = vec![0u8; data.len()];
    pool.read_at(0, &mut back).unwrap();
    assert!(back == data);
    let first = stripestore::endpoint::metrics_text(&pool);
    let before = totals(&first);
    let pool_repairs = |m: &BTreeMap<String, u64>| {
        m.iter()
            .find(|(k, _)| k.starts_with("stripestore_checksum_repairs_total{"))
            .map(|(_, v)| *v)
            .unwrap()
    };
    assert!(pool_repairs(&before) >= 4, "{first}");
    let mem0_checksum = before
        .iter()
        .find(|(k, _)| k.contains("device=\"mem0\"") && k.contains("kind=\"checksum\""))
        .map(|(_, v)| *v)
        .unwrap();
    assert!(mem0_checksum >= 4, "{first}");

    pool.fault_device(0, "pulled for the test");
    pool.replace_with_spare("mem0", "spare").unwrap();
    pool.run_rebuilds(|_| {}).unwrap();
    assert_eq!(pool.status().devices[0].path, "spare");
    let second = stripestore::endpoint::metrics_text(&pool);
    let after = totals(&second);
    for (series, value) in &before {
        let now = after
            .get(series)
            .unwrap_or_else(|| panic!("{series} went missing after the replacement:\n{second}"));
        assert!(now >= value, "{series} went down from {value} to {now}");
    }
    assert_eq!(pool_repairs(&after), pool_repairs(&before));
    assert!(
        after
            .iter()
            .any(|(k, v)| k.starts_with("stripestore_pool_rebuilt_bytes_total{") && *v > 0),
        "{second}"
    );
    promtool_accepts(&first);
    promtool_accepts(&second);

    // Persisted: a new process (a reopen) starts from the recorded totals.
    let counters = pool.status().counters;
    assert!(counters.checksum_errors >= 4 && counters.repaired_chunks >= 4);
    pool.close().unwrap();
    let devices: Vec<SharedDevice> = vec![mems[1].clone(), spare];
    let options = OpenOptions {
        background_rebuild: false,
        ..OpenOptions::default()
    };
    let pool = Pool::open(devices, &options).unwrap();
    assert_eq!(pool.status().counters, counters);
    assert_eq!(
        pool_repairs(&totals(&stripestore::endpoint::metrics_text(&pool))),
        counters.repaired_chunks
    );
    pool.close().unwrap();
}

/// The fault → rebuild onto the last spare → no spare left sequence is in the log, in order,
/// and survives a power cut (unflushed writes torn at random) taken right after the rebuild,
/// without a clean close: a reopen reads the same events and warns that no spare is left.
#[test]
fn fault_rebuild_and_spare_exhaustion_survive_a_power_cut() {
    for seed in 0..8u64 {
        let size = 8 << 20;
        let mems = mem_devices(2, size);
        let spare = Arc::new(stripestore::device::MemDevice::new("spare", size));
        let mut options = CreateOptions::new("mirror:2".parse().unwrap());
        options.chunk_bytes = 4096;
        stripestore::testing::allow_format_3_writes(true);
        options.format = stripestore::pool::FormatVersion::V3;
        options.open.background_rebuild = false;
        let pool = Pool::create(
            shared(&mems),
            shared(std::slice::from_ref(&spare)),
            &options,
        )
        .unwrap();
        let data: Vec<u8> = (0..256 << 10).map(|i: u32| (i % 251) as u8).collect();
        pool.write_at(0, &data).unwrap();
        pool.flush().unwrap();
        pool.fault_device(0, "pulled for the test");
        pool.replace_with_spare("mem0", "spare").unwrap();
        pool.run_rebuilds(|_| {}).unwrap();
        let before = pool.history();
        let names: Vec<&str> = before.events.iter().map(|e| e.kind.name()).collect();
        let wanted = ["fault", "rebuild_start", "rebuild_finish"];
        let mut at = 0;
        for name in &names {
            if at < wanted.len() && *name == wanted[at] {
                at += 1;
            }
        }
        assert_eq!(at, wanted.len(), "{wanted:?} in order in {names:?}");
        let fault = before
            .events
            .iter()
            .find(|e| e.kind.name() == "fault")
            .unwrap();
        assert!(fault.detail.contains("pulled for the test"), "{fault:?}");
        assert!(pool.status().no_spare_left);

        // Power cut: no close; every member loses a random part of what it did not flush.
        for device in mems.iter().chain(std::iter::once(&spare)) {
            device.crash(seed);
        }
        std::mem::forget(pool);
        let devices: Vec<SharedDevice> = vec![mems[1].clone(), spare.clone()];
        let options = OpenOptions {
            background_rebuild: false,
            ..OpenOptions::default()
        };
        let pool = Pool::open(devices, &options).unwrap();
        let after = pool.history();
        let kept: Vec<(&str, &str, &str)> = after
            .events
            .iter()
            .filter(|e| e.kind.name() != "open")
            .map(|e| (e.kind.name(), e.device.as_str(), e.detail.as_str()))
            .collect();
        let had: Vec<(&str, &str, &str)> = before
            .events
            .iter()
            .filter(|e| e.kind.name() != "open")
            .map(|e| (e.kind.name(), e.device.as_str(), e.detail.as_str()))
            .collect();
        assert_eq!(
            kept, had,
            "seed {seed}: the log changed across the power cut"
        );
        assert_eq!(after.counters, before.counters, "seed {seed}");
        let status = pool.status();
        assert!(status.no_spare_left, "seed {seed}");
        let mut back = vec![0u8; data.len()];
        pool.read_at(0, &mut back).unwrap();
        assert!(back == data, "seed {seed}");
        pool.close().unwrap();
    }
}
