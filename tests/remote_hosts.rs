//! Members on other hosts, with real network separation (issue 18; docs/FORMAT.md V4.16): three
//! network namespaces ("hosts" a, b, c), each reached from the root namespace over its own veth
//! pair and serving two member files with nbdkit's `file` plugin; the pool (rs:4+2, domains
//! a/b/c, two spares in domain "local") lives in the root namespace and is served over NBD by
//! this process, and a client writes through that export the whole time.
//!
//! 1. Host b's link goes down: its two members stop answering and are UNAVAILABLE; the export
//!    keeps serving, byte-exact.
//! 2. The link comes back within the grace period: both members are resynced, and the resync
//!    copies about what was written meanwhile (bytes counted), not the devices.
//! 3. Host b's server is killed and stays dead past the grace period: its members are faulted
//!    and rebuilt onto the spares (another domain).
//! 4. Then host a is cut as well: the volume still reads back exactly (the placement kept
//!    every stripe within what a domain may lose).
//!
//! A second test cuts one host's link while a write is in flight and checks, on the host's
//! file, that the write given up on never lands once the member answers again.
//!
//! Needs root, `ip` (iproute2) and nbdkit: SKIPPED otherwise (a failure with
//! `STRIPESTORE_REQUIRE_TOOLS=1`, as in CI, which runs as root).

#[path = "common/nbdkit.rs"]
mod nbdkit;

use rand::Rng;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stripestore::device::{Access, Device, NbdDevice, NbdOptions};
use stripestore::testing::nbd::BackgroundServer;
use stripestore::testing::{random_bytes, rng, Model};
use stripestore::{CreateOptions, OpenOptions, Pool};

const MEMBER_BYTES: u64 = 64 << 20;
/// Written sequentially before the client's random writes start.
const PREFILL_BYTES: u64 = 96 << 20;
const BLOCK: usize = 64 << 10;

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this test can run here; `false` (SKIPPED) or a panic under
/// `STRIPESTORE_REQUIRE_TOOLS=1`.
fn can_run(test: &str) -> bool {
    let required = std::env::var("STRIPESTORE_REQUIRE_TOOLS").is_ok_and(|v| v == "1");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let missing = if !root {
        Some("root (network namespaces)")
    } else if run(&["ip", "netns", "list"]).is_err() {
        Some("ip netns (iproute2)")
    } else if run(&["nbdkit", "--version"]).is_err() {
        Some("nbdkit")
    } else {
        None
    };
    match missing {
        None => true,
        Some(what) if required => panic!("{test}: needs {what}"),
        Some(what) => {
            eprintln!("SKIPPED {test}: needs {what}");
            false
        }
    }
}

/// One "host": a network namespace linked to the root namespace by a veth pair, serving the
/// files of a directory with nbdkit on its own address. Torn down on drop.
struct Host {
    ns: String,
    outside: String,
    inside: String,
    address: String,
    dir: PathBuf,
    server: Option<Child>,
}

impl Host {
    fn new(tag: &str, name: &str, subnet: u8, dir: &Path) -> Self {
        let ns = format!("ss{tag}{name}");
        let host = Self {
            ns: ns.clone(),
            outside: format!("ss{tag}{name}o"),
            inside: format!("ss{tag}{name}i"),
            address: format!("10.218.{subnet}.2"),
            dir: dir.join(name),
            server: None,
        };
        std::fs::create_dir_all(&host.dir).unwrap();
        for d in ["d0", "d1"] {
            let file = std::fs::File::create(host.dir.join(d)).unwrap();
            file.set_len(MEMBER_BYTES).unwrap();
        }
        let steps: Vec<Vec<String>> = [
            format!("ip netns add {ns}"),
            format!(
                "ip link add {} type veth peer name {}",
                host.outside, host.inside
            ),
            format!("ip link set {} netns {ns}", host.inside),
            format!("ip addr add 10.218.{subnet}.1/24 dev {}", host.outside),
            format!("ip link set {} up", host.outside),
            format!(
                "ip netns exec {ns} ip addr add {}/24 dev {}",
                host.address, host.inside
            ),
            format!("ip netns exec {ns} ip link set {} up", host.inside),
            format!("ip netns exec {ns} ip link set lo up"),
        ]
        .iter()
        .map(|s| s.split(' ').map(String::from).collect())
        .collect();
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            run(&args).unwrap();
        }
        let mut host = host;
        host.start_server();
        host
    }

    /// nbdkit in the namespace, on this host's address only, serving `d0` and `d1`.
    fn start_server(&mut self) {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "nbdkit",
                "-f",
                "--exit-with-parent",
            ])
            .args(["-i", &self.address, "-p", "10809", "file"])
            .arg(format!("dir={}", self.dir.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.server = Some(child);
        // Ready once an export answers from the root namespace (over the veth link).
        let deadline = Instant::now() + Duration::from_secs(10);
        while NbdDevice::open(&self.uri("d0"), Access::ReadOnly, None, &quick()).is_err() {
            assert!(
                Instant::now() < deadline,
                "nbdkit in {} did not start",
                self.ns
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_server(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // `ip netns exec` may leave nbdkit behind its own exit.
        let pids = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        for pid in pids.split_whitespace() {
            let _ = run(&["kill", "-9", pid]);
        }
    }

    fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        run(&[
            "ip",
            "netns",
            "exec",
            &self.ns,
            "ip",
            "link",
            "set",
            &self.inside,
            state,
        ])
        .unwrap();
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd://{}:10809/{export}", self.address)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill_server();
        let _ = run(&["ip", "link", "del", &self.outside]);
        let _ = run(&["ip", "netns", "del", &self.ns]);
    }
}

/// Remove the namespaces (and with them their links) of an earlier run of this test that was
/// killed before it could clean up: they hold the same subnets, and a server started here
/// would not be reached. Only namespaces named as this test names them (`ss<pid><host>`) whose
/// process is gone.
fn clear_stale_hosts() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix("ss") else {
            continue;
        };
        let (pid, host) = rest.split_at(rest.len().saturating_sub(1));
        let ours = !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && host.bytes().all(|b| b.is_ascii_lowercase());
        if ours && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", name]);
            let _ = run(&["ip", "link", "del", &format!("{name}o")]);
        }
    }
}

fn quick() -> NbdOptions {
    NbdOptions {
        timeout: Duration::from_millis(800),
        connections: 1,
        ..NbdOptions::default()
    }
}

/// Wait until `done` holds, polling; panics with `what` after `limit`.
fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A client writing 64 KiB blocks at random through the pool's export, flushing every 8,
/// keeping the model; counts bytes written.
struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(client: Arc<NbdDevice>, model: Arc<Mutex<Model>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let (s, w, f) = (stop.clone(), written.clone(), failures.clone());
        let thread = std::thread::spawn(move || {
            let mut rng = rng(0x18_0000);
            let blocks = client.size() / BLOCK as u64;
            let mut n = 0u64;
            while !s.load(Ordering::Acquire) {
                let offset = rng.gen_range(0..blocks) * BLOCK as u64;
                let data = random_bytes(&mut rng, BLOCK);
                // The model is updated under its lock with the write, so a reader of the
                // model never sees a block the export has not taken.
                let mut model = model.lock().unwrap();
                match client.write_at(offset, &data) {
                    Ok(()) => {
                        model.write(offset, &data);
                        w.fetch_add(BLOCK as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(model);
                n += 1;
                if n.is_multiple_of(8) && client.flush().is_err() {
                    f.fetch_add(1, Ordering::Relaxed);
                }
                // About 1.5 MiB/s: an outage of seconds changes a small part of the volume.
                std::thread::sleep(Duration::from_millis(40));
            }
        });
        Self {
            stop,
            written,
            failures,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

/// Every byte the export serves against the model.
fn export_reads_as(client: &NbdDevice, model: &Model) {
    let piece = 1 << 20;
    let mut offset = 0;
    while offset < client.size() {
        let len = piece.min(client.size() - offset) as usize;
        let mut buf = vec![0u8; len];
        client
            .read_at(offset, &mut buf)
            .unwrap_or_else(|e| panic!("export read at {offset}: {e}"));
        assert!(
            buf == model.read(offset, len),
            "export differs in the MiB at {offset}"
        );
        offset += len as u64;
    }
}

#[test]
fn hosts_cut_off_come_back_resynced_or_are_replaced_and_a_domain_loss_reads_back() {
    let test = "hosts_cut_off_come_back_resynced_or_are_replaced_and_a_domain_loss_reads_back";
    if !can_run(test) {
        return;
    }
    // Member devices time out after 800 ms (what marks a cut host away).
    std::env::set_var("STRIPESTORE_NBD_TIMEOUT_MS", "800");
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("{}", std::process::id() % 100_000);
    clear_stale_hosts();
    let mut hosts: Vec<Host> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, name)| Host::new(&tag, name, 10 + i as u8, dir.path()))
        .collect();
    let members: Vec<PathBuf> = hosts
        .iter()
        .flat_map(|h| [h.uri("d0"), h.uri("d1")])
        .map(PathBuf::from)
        .collect();
    let spares: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("spare{i}")))
        .collect();
    let mut options = CreateOptions::new("rs:4+2".parse().unwrap());
    options.device_bytes = Some(MEMBER_BYTES);
    options.domains = ["a", "a", "b", "b", "c", "c", "local", "local"]
        .map(String::from)
        .to_vec();
    options.open = OpenOptions {
        unavailable_grace: Duration::from_secs(12),
        returning_quiet: Duration::from_secs(1),
        ..OpenOptions::default()
    };
    let pool = Arc::new(Pool::create_paths(&members, &spares, &options).unwrap());
    let server = BackgroundServer::start(pool.clone(), Default::default()).unwrap();
    let client_options = NbdOptions {
        timeout: Duration::from_secs(60),
        connections: 1,
        ..NbdOptions::default()
    };
    let client =
        Arc::new(NbdDevice::open(&server.uri(), Access::ReadWrite, None, &client_options).unwrap());
    let model = Arc::new(Mutex::new(Model::new(client.size())));
    {
        let mut model = model.lock().unwrap();
        let mut fill = rng(0x18_0001);
        for offset in (0..PREFILL_BYTES.min(client.size())).step_by(1 << 20) {
            let data = random_bytes(&mut fill, 1 << 20);
            client.write_at(offset, &data).unwrap();
            model.write(offset, &data);
        }
        client.flush().unwrap();
    }
    let writer = Writer::start(client.clone(), model.clone());
    std::thread::sleep(Duration::from_secs(3));
    let state = |i: usize| pool.status().devices[i].state.clone();

    // 1. Host b's link goes down.
    let before_cut = writer.written.load(Ordering::Relaxed);
    hosts[1].link(false);
    wait_for(Duration::from_secs(20), "host b's members away", || {
        state(2) == "UNAVAILABLE" && state(3) == "UNAVAILABLE"
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        writer.failures.load(Ordering::Relaxed),
        0,
        "the export failed a request"
    );
    export_reads_as(&client, &model.lock().unwrap());
    eprintln!("host b cut: {}", pool.status());

    // 2. Back within the grace period: resynced by what changed.
    let rebuilt_before = pool.status().counters.rebuilt_bytes;
    hosts[1].link(true);
    wait_for(Duration::from_secs(30), "host b's members resynced", || {
        state(2) == "ONLINE" && state(3) == "ONLINE" && pool.rebuild_progress().is_empty()
    });
    // Everything written from the cut to the end of the resync may be born after the
    // members left (what the resync attached before was written to them directly).
    let written_away = writer.written.load(Ordering::Relaxed) - before_cut;
    let resynced = pool.status().counters.rebuilt_bytes - rebuilt_before;
    let allocated = pool.status().allocated_bytes;
    eprintln!(
        "resync: {resynced} bytes onto host b's two members; {written_away} bytes written from \
         the cut to the end of the resync; {allocated} bytes allocated"
    );
    for event in &pool.history().events {
        eprintln!("event: {event:?}");
    }
    assert!(resynced > 0, "nothing resynced");
    // Each rs:4+2 position holds a quarter of what is written, so b's two get about half of
    // what was written meanwhile (plus page copies and the cleaner's moves); a full copy of
    // both would be half of what is allocated.
    assert!(
        resynced <= written_away && resynced < allocated / 4,
        "the resync copied {resynced} bytes ({written_away} written meanwhile, {allocated} \
         allocated): not only what changed"
    );
    assert_eq!(
        pool.status().spares.len(),
        2,
        "a spare was used for an outage"
    );
    export_reads_as(&client, &model.lock().unwrap());

    // 3. Host b's server dies for good: faulted after the grace period, rebuilt onto spares.
    hosts[1].kill_server();
    wait_for(
        Duration::from_secs(20),
        "host b's members away again",
        || state(2) == "UNAVAILABLE" && state(3) == "UNAVAILABLE",
    );
    wait_for(Duration::from_secs(60), "spares in host b's place", || {
        let status = pool.status();
        status.devices[2].state == "ONLINE"
            && status.devices[3].state == "ONLINE"
            && status.devices[2].domain.as_deref() == Some("local")
            && status.devices[3].domain.as_deref() == Some("local")
            && pool.rebuild_progress().is_empty()
    });
    assert_eq!(
        writer.failures.load(Ordering::Relaxed),
        0,
        "the export failed a request"
    );
    writer.stop();
    export_reads_as(&client, &model.lock().unwrap());

    // 4. Host a is cut as well: every stripe keeps what it needs.
    hosts[0].link(false);
    export_reads_as(&client, &model.lock().unwrap());
    let status = pool.status();
    eprintln!("host a cut after the replacement: {status}");
    drop(client);
    server.stop().unwrap();
    hosts[0].link(true);
    if let Ok(pool) = Arc::try_unwrap(pool) {
        let _ = pool.close();
    }
}

/// How long the kernel keeps packets for a neighbour it cannot resolve (a link that is down)
/// before it drops them: `mcast_solicit` tries `retrans_time_ms` apart (3 x 1 s by default).
fn neighbour_queue_lifetime() -> Duration {
    let read = |name: &str, default: u64| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/neigh/default/{name}"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(default)
    };
    Duration::from_millis(read("mcast_solicit", 3) * read("retrans_time_ms", 1000))
}

/// A request the client gave up on must not reach the server once the member answers again: a
/// write sent into a cut link times out, and when the link returns TCP would retransmit it
/// (seconds later, at its back-off pace) unless the torn-down connection dropped it; a pool
/// that resynced the member meanwhile would have a stale block or superblock land over what it
/// copied. The cut lasts past the kernel's neighbour queue (which would deliver what it holds
/// as soon as the link returns, before anything can answer: the quiet period covers that), and
/// the member's file is read directly on its host for ten seconds after the device answers.
#[test]
fn a_write_given_up_on_during_a_cut_does_not_land_after_the_member_answers_again() {
    let test = "a_write_given_up_on_during_a_cut_does_not_land_after_the_member_answers_again";
    if !can_run(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("{}", std::process::id() % 100_000);
    clear_stale_hosts();
    let host = Host::new(&tag, "d", 13, dir.path());
    let device = NbdDevice::open(&host.uri("d0"), Access::ReadWrite, None, &quick()).unwrap();
    let before = vec![0xa5u8; BLOCK];
    device.write_at(0, &before).unwrap();
    device.flush().unwrap();
    let on_host = || {
        let mut buf = vec![0u8; BLOCK];
        let file = std::fs::File::open(host.dir.join("d0")).unwrap();
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, 0).unwrap();
        buf
    };
    assert!(on_host() == before, "the first write is not on the host");

    host.link(false);
    let cut = Instant::now();
    let late = vec![0x5au8; BLOCK];
    let outcome = device.write_at(0, &late);
    assert!(outcome.is_err(), "a write into a cut link was acknowledged");
    std::thread::sleep(
        (neighbour_queue_lifetime() + Duration::from_secs(1)).saturating_sub(cut.elapsed()),
    );
    host.link(true);
    let mut buf = vec![0u8; BLOCK];
    wait_for(
        Duration::from_secs(10),
        "the device answering again",
        || device.read_at(0, &mut buf).is_ok(),
    );
    assert!(
        buf == before,
        "the write given up on landed before the device answered"
    );
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        assert!(
            on_host() == before,
            "the write given up on landed {:?} after the cut, after the device answered again",
            cut.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
