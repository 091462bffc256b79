//! The NBD export, tested with real clients (nbdinfo, qemu-io, nbdcopy, fio, nbdfuse + ext4)
//! and with a raw protocol client for what real clients never send.
//!
//! Servers bind 127.0.0.1:0 or a Unix socket in a temporary directory, so tests run in
//! parallel. A test that needs a missing tool (or root, for loop devices and mounts) prints a
//! SKIPPED line and returns, unless `STRIPESTORE_REQUIRE_TOOLS=1`, where it fails.

use crate::common;

use rand::Rng;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stripestore::device::MemDevice;
use stripestore::nbd::client::{Client, ClientError, ConnectOptions};
use stripestore::nbd::proto::{self, cmd, cmd_flag, errno, opt, rep};
use stripestore::nbd::ServeOptions;
use stripestore::testing::nbd::BackgroundServer;
use stripestore::testing::{mem_devices, random_bytes, shared, Model};
use stripestore::{CreateOptions, Layout, OpenOptions, Pool};

// == Helpers ==

/// Whether `tool` can be run; otherwise SKIPPED (or a failure when tools are required).
fn have(tool: &str, test: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        skip(test, &format!("{tool} is not installed"));
    }
    found
}

fn is_root(test: &str) -> bool {
    let uid = Command::new("id").arg("-u").output().map(|o| o.stdout);
    let root = uid.is_ok_and(|out| out.trim_ascii() == b"0");
    if !root {
        skip(test, "needs root (loop devices, mount)");
    }
    root
}

fn skip(test: &str, why: &str) {
    if std::env::var("STRIPESTORE_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("{test}: {why}, and STRIPESTORE_REQUIRE_TOOLS=1");
    }
    println!("SKIPPED {test}: {why}");
}

/// Run a command, fail the test with its output if it fails; returns stdout.
fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn pool_options(layout: &str, chunk_bytes: u64) -> CreateOptions {
    let layout: Layout = layout.parse().unwrap();
    let mut options = CreateOptions::new(layout);
    options.chunk_bytes = chunk_bytes;
    options
}

/// [`pool_options`] on format version 3, for tests whose expectations are in whole stripes
/// (trims and holes of a stripe, a stripe's shard locations). Version 4 trims and reports
/// holes per 4 KiB block: tests/discard.rs and the v4 suites check those.
fn v3_pool_options(layout: &str, chunk_bytes: u64) -> CreateOptions {
    let mut options = pool_options(layout, chunk_bytes);
    stripestore::testing::allow_format_3_writes(true);
    options.format = stripestore::pool::FormatVersion::V3;
    options
}

/// A server on in-memory devices, in this process; stopped and joined on drop.
struct InProcess {
    pool: Arc<Pool>,
    mems: Vec<Arc<MemDevice>>,
    server: BackgroundServer,
}

impl InProcess {
    fn start(layout: &str, devices: usize, device_bytes: u64, options: ServeOptions) -> Self {
        Self::start_with(
            pool_options(layout, 16 * 1024),
            devices,
            device_bytes,
            options,
        )
    }

    fn start_with(
        create: CreateOptions,
        devices: usize,
        device_bytes: u64,
        options: ServeOptions,
    ) -> Self {
        let mems = mem_devices(devices, device_bytes);
        let pool = Pool::create(shared(&mems), vec![], &create).unwrap();
        let pool = Arc::new(pool);
        let server = BackgroundServer::start(Arc::clone(&pool), options).unwrap();
        Self { pool, mems, server }
    }

    fn default(layout: &str, devices: usize, device_bytes: u64) -> Self {
        Self::start(layout, devices, device_bytes, ServeOptions::default())
    }

    /// [`InProcess::default`] on format version 3 (see [`v3_pool_options`]).
    fn default_v3(layout: &str, devices: usize, device_bytes: u64) -> Self {
        let create = v3_pool_options(layout, 16 * 1024);
        Self::start_with(create, devices, device_bytes, ServeOptions::default())
    }

    fn uri(&self) -> String {
        self.server.uri()
    }

    fn client(&self) -> Client<TcpStream> {
        Client::connect(self.stream(), "").unwrap()
    }

    fn stream(&self) -> TcpStream {
        let stream = TcpStream::connect(self.server.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream
    }

    fn pool_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.pool.read_at(offset, &mut buf).unwrap();
        buf
    }
}

/// `stripestore serve` as a child process on files in a temporary directory; killed on drop
/// if still running.
struct Served {
    child: Child,
    uri: String,
    dir: tempfile::TempDir,
    paths: Vec<PathBuf>,
}

impl Served {
    fn create_pool(layout: &str, devices: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
        Self::create_pool_with(pool_options(layout, 16 * 1024), devices)
    }

    fn create_pool_with(
        mut options: CreateOptions,
        devices: usize,
    ) -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..devices)
            .map(|i| dir.path().join(format!("d{i}")))
            .collect();
        options.device_bytes = Some(32 << 20);
        Pool::create_paths(&paths, &[], &options)
            .unwrap()
            .close()
            .unwrap();
        (dir, paths)
    }

    fn start(dir: tempfile::TempDir, paths: Vec<PathBuf>, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stripestore"))
            .arg("serve")
            .arg(&paths[0])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let uri = line
            .trim()
            .rsplit(" at ")
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(uri.starts_with("nbd"), "unexpected serve output {line:?}");
        Self {
            child,
            uri,
            dir,
            paths,
        }
    }

    fn tcp_addr(&self) -> SocketAddr {
        self.uri.trim_start_matches("nbd://").parse().unwrap()
    }

    fn signal(&self, signal: &str) {
        run(Command::new("kill").args([signal, &self.child.id().to_string()]));
    }

    /// Wait (at most a minute) for the exit a signal asked for: (success, stderr, the
    /// directory and paths of the pool).
    fn wait(mut self) -> (bool, String, tempfile::TempDir, Vec<PathBuf>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "serve did not stop on the signal"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (
            status.success(),
            stderr,
            dir,
            std::mem::take(&mut self.paths),
        )
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

/// A free loopback address for a server's metrics endpoint (the port is released just before
/// the server binds it).
fn free_loopback_address() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

fn nbd_errno(result: Result<impl Sized, ClientError>) -> u32 {
    match result {
        Err(ClientError::Request { errno }) => errno,
        Err(other) => panic!("expected an NBD error reply, got {other}"),
        Ok(_) => panic!("expected an NBD error reply, got success"),
    }
}

/// Whether the server has closed `stream` (reads end of input, or the connection resets).
fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
}

// == Real clients ==

#[test]
fn nbdinfo_lists_the_export_with_its_size_and_flags() {
    let test = "nbdinfo_lists_the_export_with_its_size_and_flags";
    if !have("nbdinfo", test) {
        return;
    }
    let (dir, paths) = Served::create_pool("rs:4+2", 6);
    let size = Pool::open_paths(&paths[..1], &OpenOptions::default())
        .unwrap()
        .size();
    let served = Served::start(dir, paths, &["--listen", "127.0.0.1:0", "--export", "vol1"]);
    let json = run(Command::new("nbdinfo").args(["--json", &format!("{}/vol1", served.uri)]));
    let info: serde_json::Value = serde_json::from_str(&json).unwrap();
    let export = &info["exports"][0];
    assert_eq!(export["export-name"], "vol1");
    assert_eq!(export["export-size"], size);
    for (key, value) in [
        ("is_read_only", false),
        ("can_flush", true),
        ("can_fua", true),
        ("can_multi_conn", true),
        ("can_zero", true),
        ("can_trim", true),
    ] {
        assert_eq!(export[key], value, "{key} in {json}");
    }
    assert_eq!(export["block_size_minimum"], 1);
    assert_eq!(export["block_size_preferred"], 65536);
    assert_eq!(export["block_size_maximum"], 32 << 20);
    let list = run(Command::new("nbdinfo").args(["--list", "--json", &served.uri]));
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["exports"][0]["export-name"], "vol1");
    served.signal("-TERM");
    let (ok, stderr, _, _) = served.wait();
    assert!(ok, "{stderr}");
}

#[test]
fn read_only_export_is_announced_and_refuses_writes() {
    let test = "read_only_export_is_announced_and_refuses_writes";
    // The raw part runs without any tool.
    let server = InProcess::start(
        "mirror:2",
        2,
        8 << 20,
        ServeOptions {
            read_only: true,
            ..ServeOptions::default()
        },
    );
    let before = server.pool_bytes(0, 8192);
    let mut client = server.client();
    assert_ne!(client.export().flags & proto::flag::READ_ONLY, 0);
    assert_eq!(
        nbd_errno(client.write(0, &[0xee; 8192], false)),
        errno::EPERM
    );
    assert_eq!(nbd_errno(client.write_zeroes(0, 8192)), errno::EPERM);
    assert_eq!(client.read(0, 8192).unwrap(), before);
    client.flush().unwrap();
    assert_eq!(server.pool_bytes(0, 8192), before);
    if !have("nbdinfo", test) || !have("qemu-io", test) {
        return;
    }
    let json = run(Command::new("nbdinfo").args(["--json", &server.uri()]));
    let info: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(info["exports"][0]["is_read_only"], true);
    let output = Command::new("qemu-io")
        .args(["-f", "raw", &server.uri(), "-c", "write -P 0xab 0 4k"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        !text.contains("wrote 4096/4096"),
        "qemu-io wrote to a read-only export: {text}"
    );
    assert_eq!(server.pool_bytes(0, 8192), before);
}

/// `serve --snapshot NAME`: the export is the recovery point, read-only, while the live
/// volume moves on; a recovery point the pool lacks is refused before anything is served.
#[test]
fn a_recovery_point_is_served_read_only_while_the_volume_moves_on() {
    let server = InProcess::start(
        "mirror:2",
        2,
        8 << 20,
        ServeOptions {
            recovery_point: Some("then".into()),
            ..ServeOptions::default()
        },
    );
    // The point does not exist yet: a read names it.
    let mut client = server.client();
    assert_ne!(nbd_errno(client.read(0, 4096)), 0);
    drop(client);
    server.pool.write_at(0, &[0x11; 65536]).unwrap();
    server.pool.create_recovery_point("then").unwrap();
    server.pool.write_at(4096, &[0x22; 8192]).unwrap();
    let mut client = server.client();
    assert_ne!(client.export().flags & proto::flag::READ_ONLY, 0);
    assert_eq!(client.read(0, 65536).unwrap(), vec![0x11; 65536]);
    assert_eq!(
        nbd_errno(client.write(0, &[0xee; 4096], false)),
        errno::EPERM
    );
    assert_eq!(server.pool_bytes(4096, 4096), vec![0x22; 4096]);
    client.flush().unwrap();
}

/// `serve --snapshot-exports`: the live volume under its name and every recovery point under
/// its own, read-only, side by side; a name the pool lacks is refused.
#[test]
fn recovery_points_are_exported_beside_the_volume_under_their_names() {
    let test = "recovery_points_are_exported_beside_the_volume_under_their_names";
    let server = InProcess::start(
        "mirror:2",
        2,
        8 << 20,
        ServeOptions {
            recovery_point_exports: true,
            ..ServeOptions::default()
        },
    );
    server.pool.write_at(0, &[0x11; 8192]).unwrap();
    server.pool.create_recovery_point("mon").unwrap();
    server.pool.write_at(0, &[0x22; 8192]).unwrap();
    server.pool.create_recovery_point("tue").unwrap();
    server.pool.write_at(0, &[0x33; 8192]).unwrap();
    let mut live = server.client();
    assert_eq!(live.export().flags & proto::flag::READ_ONLY, 0);
    assert_eq!(live.read(0, 8192).unwrap(), vec![0x33; 8192]);
    for (name, byte) in [("mon", 0x11u8), ("tue", 0x22)] {
        let mut client = Client::connect(server.stream(), name).unwrap();
        assert_ne!(client.export().flags & proto::flag::READ_ONLY, 0, "{name}");
        assert_eq!(client.read(0, 8192).unwrap(), vec![byte; 8192], "{name}");
        assert_eq!(nbd_errno(client.write(0, &[0; 4096], false)), errno::EPERM);
    }
    assert!(Client::connect(server.stream(), "wed").is_err());
    assert_eq!(live.read(0, 8192).unwrap(), vec![0x33; 8192]);
    if have("nbdinfo", test) {
        let out = run(Command::new("nbdinfo").args(["--list", &server.uri()]));
        assert!(out.contains("mon") && out.contains("tue"), "{out}");
    }
}

/// While a receive into the served pool is unfinished, the export reads as before and a
/// write gets `EPERM` (the volume is read-only until the receive is finished or aborted).
#[test]
fn a_served_pool_with_an_unfinished_receive_reads_as_before_and_refuses_writes() {
    let server = InProcess::default("mirror:2", 2, 8 << 20);
    let source = Pool::create(
        shared(&mem_devices(2, 8 << 20)),
        vec![],
        &pool_options("mirror:2", 16 * 1024),
    )
    .unwrap();
    for i in 0..40u64 {
        source.write_at(i * 65_536, &[0x5a; 8192]).unwrap();
    }
    source.create_recovery_point("full").unwrap();
    let mut stream = Vec::new();
    source.send("full", None, &mut stream, &mut |_| {}).unwrap();
    // The check passes; the apply meets a changed byte near the end and stops.
    let at = stream.len() - 100;
    let mut seeks = 0;
    let mut cursor = std::io::Cursor::new(stream);
    struct Changing<'a>(&'a mut std::io::Cursor<Vec<u8>>, &'a mut usize, usize);
    impl std::io::Read for Changing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl std::io::Seek for Changing<'_> {
        fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
            if matches!(to, std::io::SeekFrom::Start(_)) {
                *self.1 += 1;
                if *self.1 == 1 {
                    self.0.get_mut()[self.2] ^= 1;
                }
            }
            self.0.seek(to)
        }
    }
    let mut changing = Changing(&mut cursor, &mut seeks, at);
    assert!(server.pool.receive(&mut changing, &mut |_, _| {}).is_err());
    assert!(server.pool.unfinished_receive().is_some());
    let mut client = server.client();
    assert_eq!(client.read(0, 8192).unwrap(), vec![0; 8192]);
    assert_eq!(nbd_errno(client.write(0, &[1; 4096], false)), errno::EPERM);
}

#[test]
fn qemu_io_writes_and_reads_patterns_back() {
    if !have("qemu-io", "qemu_io_writes_and_reads_patterns_back") {
        return;
    }
    let server = InProcess::default("rs:4+2", 6, 16 << 20);
    let out = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        &server.uri(),
        "-c",
        "write -P 0xab 0 1M",
        "-c",
        "write -P 0xcd 1234567 100k",
        "-c",
        "read -P 0xab 0 1M",
        "-c",
        "read -P 0xcd 1234567 100k",
        "-c",
        "flush",
    ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert_eq!(out.matches("read ").count(), 2, "{out}");
    // Independently of the client: the pool holds the patterns.
    assert!(server.pool_bytes(0, 1 << 20).iter().all(|&b| b == 0xab));
    assert!(server
        .pool_bytes(1_234_567, 100 << 10)
        .iter()
        .all(|&b| b == 0xcd));
    assert_eq!(server.pool_bytes(1_234_567 + (100 << 10), 1), vec![0]);
}

#[test]
fn nbdcopy_copies_a_random_file_in_and_out_byte_exact() {
    let test = "nbdcopy_copies_a_random_file_in_and_out_byte_exact";
    if !have("nbdcopy", test) {
        return;
    }
    let seed = stripestore::testing::seed(6001);
    let _guard = stripestore::testing::SeedGuard { seed, name: test };
    let server = InProcess::default("rs:4+2", 6, 16 << 20);
    let dir = tempfile::tempdir().unwrap();
    let size = usize::try_from(server.pool.size()).unwrap();
    let data = random_bytes(&mut stripestore::testing::rng(seed), size);
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    std::fs::write(&input, &data).unwrap();
    run(Command::new("nbdcopy").arg(&input).arg(server.uri()));
    assert!(
        server.pool_bytes(0, size) == data,
        "the pool differs from the file"
    );
    run(Command::new("nbdcopy").arg(server.uri()).arg(&output));
    assert!(std::fs::read(&output).unwrap() == data, "copy out differs");
}

#[test]
fn fio_mixed_random_workload_verifies_crc32c() {
    let test = "fio_mixed_random_workload_verifies_crc32c";
    if !have("fio", test) {
        return;
    }
    let server = InProcess::default("rs:4+2", 6, 16 << 20);
    let out = run(Command::new("fio").args([
        "--name=nbd-randrw",
        "--ioengine=nbd",
        &format!("--uri={}", server.uri()),
        "--rw=randrw",
        "--bsrange=4k-64k",
        "--size=24M",
        "--iodepth=16",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--randseed=6002",
        // No verify-state file left in the working directory.
        "--verify_state_save=0",
    ]));
    assert!(out.contains("err= 0"), "{out}");
    assert!(!out.contains("verify:"), "{out}");
}

// == A filesystem on top, with a device killed midway ==

/// Mount points, loop device and nbdfuse process of the filesystem test: released on drop in
/// reverse order, even when the test fails.
struct FsStack {
    fuse_dir: PathBuf,
    mount_dir: PathBuf,
    nbdfuse: Option<Child>,
    loop_device: Option<String>,
    mounted: bool,
}

impl FsStack {
    fn attach(uri: &str, root: &Path) -> Self {
        let fuse_dir = root.join("fuse");
        let mount_dir = root.join("mnt");
        std::fs::create_dir_all(&fuse_dir).unwrap();
        std::fs::create_dir_all(&mount_dir).unwrap();
        let mut stack = Self {
            fuse_dir,
            mount_dir,
            nbdfuse: None,
            loop_device: None,
            mounted: false,
        };
        stack.nbdfuse = Some(
            Command::new("nbdfuse")
                .arg(stack.fuse_dir.join("disk"))
                .arg(uri)
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let disk = stack.fuse_dir.join("disk");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !disk.exists() {
            assert!(Instant::now() < deadline, "nbdfuse did not expose the disk");
            std::thread::sleep(Duration::from_millis(20));
        }
        let device = run(Command::new("losetup").args(["-f", "--show"]).arg(&disk));
        stack.loop_device = Some(device.trim().to_string());
        stack
    }

    fn device(&self) -> &str {
        self.loop_device.as_deref().unwrap()
    }

    fn mount(&mut self, options: &str) {
        run(Command::new("mount")
            .args(["-o", options, self.device()])
            .arg(&self.mount_dir));
        self.mounted = true;
    }

    fn unmount(&mut self) {
        if self.mounted {
            run(Command::new("umount").arg(&self.mount_dir));
            self.mounted = false;
        }
    }

    fn release(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.mount_dir).status();
            self.mounted = false;
        }
        if let Some(device) = self.loop_device.take() {
            let _ = Command::new("losetup").args(["-d", &device]).status();
        }
        if let Some(mut child) = self.nbdfuse.take() {
            let _ = Command::new("umount").arg(&self.fuse_dir).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for FsStack {
    fn drop(&mut self) {
        self.release();
    }
}

#[test]
fn ext4_on_nbdfuse_stays_clean_when_a_device_dies_midway() {
    let test = "ext4_on_nbdfuse_stays_clean_when_a_device_dies_midway";
    if !is_root(test)
        || !["nbdfuse", "losetup", "mkfs.ext4", "fsck.ext4", "mount"]
            .iter()
            .all(|tool| have(tool, test))
    {
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        skip(test, "no /dev/fuse");
        return;
    }
    let seed = stripestore::testing::seed(6003);
    let _guard = stripestore::testing::SeedGuard { seed, name: test };
    let mut rng = stripestore::testing::rng(seed);
    let server = InProcess::default("rs:4+2", 6, 24 << 20);
    let root = tempfile::tempdir().unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..16)
        .map(|i| {
            let len = rng.gen_range(1..(2 << 20));
            (format!("file{i}"), random_bytes(&mut rng, len))
        })
        .collect();
    {
        let mut stack = FsStack::attach(&server.uri(), root.path());
        run(Command::new("mkfs.ext4").args(["-q", "-F", stack.device()]));
        stack.mount("rw");
        for (i, (name, bytes)) in files.iter().enumerate() {
            if i == files.len() / 2 {
                // Sync what is written so far, then kill a device: the rest is written and
                // everything read back degraded.
                run(Command::new("sync").arg("-f").arg(&stack.mount_dir));
                server.mems[2].set_gone(true);
            }
            std::fs::write(stack.mount_dir.join(name), bytes).unwrap();
        }
        run(Command::new("sync").arg("-f").arg(&stack.mount_dir));
        stack.unmount();
        stack.release();
    }
    let status = server.pool.status();
    assert!(
        status
            .devices
            .iter()
            .any(|d| d.index == Some(2) && d.state == "FAULTED"),
        "the killed device should be faulted: {status}"
    );
    // A fresh nbdfuse and loop device, so every block is read from the server again.
    let mut stack = FsStack::attach(&server.uri(), root.path());
    run(Command::new("fsck.ext4").args(["-fn", stack.device()]));
    stack.mount("ro");
    for (name, bytes) in &files {
        let back = std::fs::read(stack.mount_dir.join(name)).unwrap();
        assert!(&back == bytes, "{name} differs after the device loss");
    }
}

#[test]
fn fstrim_on_ext4_over_nbdfuse_gives_the_space_back_and_the_filesystem_stays_clean() {
    let test = "fstrim_on_ext4_over_nbdfuse_gives_the_space_back_and_the_filesystem_stays_clean";
    if !is_root(test)
        || ![
            "nbdfuse",
            "losetup",
            "mkfs.ext4",
            "fsck.ext4",
            "mount",
            "fstrim",
        ]
        .iter()
        .all(|tool| have(tool, test))
    {
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        skip(test, "no /dev/fuse");
        return;
    }
    let seed = stripestore::testing::seed(6005);
    let _guard = stripestore::testing::SeedGuard { seed, name: test };
    let mut rng = stripestore::testing::rng(seed);
    let server = InProcess::default("rs:4+2", 6, 24 << 20);
    let root = tempfile::tempdir().unwrap();
    let big = random_bytes(&mut rng, 24 << 20);
    let small = random_bytes(&mut rng, 100_000);
    let mut stack = FsStack::attach(&server.uri(), root.path());
    run(Command::new("mkfs.ext4").args(["-q", "-F", stack.device()]));
    stack.mount("rw");
    std::fs::write(stack.mount_dir.join("big"), &big).unwrap();
    std::fs::write(stack.mount_dir.join("small"), &small).unwrap();
    run(Command::new("sync").arg("-f").arg(&stack.mount_dir));
    let with_file = server.pool.status().allocated_bytes;
    std::fs::remove_file(stack.mount_dir.join("big")).unwrap();
    run(Command::new("sync").arg("-f").arg(&stack.mount_dir));
    run(Command::new("fstrim").arg(&stack.mount_dir));
    let trimmed = server.pool.status().allocated_bytes;
    assert!(
        trimmed + (20 << 20) <= with_file,
        "fstrim gave back {} bytes of a deleted 24 MiB file ({with_file} -> {trimmed})",
        with_file.saturating_sub(trimmed)
    );
    stack.unmount();
    stack.release();
    // The trimmed space reads as zeros through the stack; what remains is intact and clean.
    let mut stack = FsStack::attach(&server.uri(), root.path());
    run(Command::new("fsck.ext4").args(["-fn", stack.device()]));
    stack.mount("ro");
    assert!(std::fs::read(stack.mount_dir.join("small")).unwrap() == small);
}

// == Faults ==

#[test]
fn a_device_lost_during_a_workload_is_invisible_to_the_client() {
    let test = "a_device_lost_during_a_workload_is_invisible_to_the_client";
    let seed = stripestore::testing::seed(6004);
    let _guard = stripestore::testing::SeedGuard { seed, name: test };
    let mut rng = stripestore::testing::rng(seed);
    let server = InProcess::default("rs:4+2", 6, 8 << 20);
    let size = server.pool.size();
    let mut model = Model::new(size);
    let mut client = server.client();
    for round in 0..200 {
        if round == 100 {
            server.mems[4].set_gone(true);
        }
        let len = rng.gen_range(1..(200 << 10));
        let offset = rng.gen_range(0..size - len as u64);
        if rng.gen_bool(0.5) {
            let data = random_bytes(&mut rng, len);
            client
                .write(offset, &data, rng.gen_bool(0.1))
                .unwrap_or_else(|e| panic!("round {round}: write failed: {e}"));
            model.write(offset, &data);
        } else {
            let back = client
                .read(offset, len as u32)
                .unwrap_or_else(|e| panic!("round {round}: read failed: {e}"));
            assert!(back == model.read(offset, len), "round {round}: wrong data");
        }
    }
    client.flush().unwrap();
    common::verify(&server.pool, &model);
}

#[test]
fn beyond_tolerance_reads_fail_with_eio_never_wrong_data() {
    let test = "beyond_tolerance_reads_fail_with_eio_never_wrong_data";
    let server = InProcess::default("rs:2+1", 3, 8 << 20);
    let mut client = server.client();
    client.write(0, &[0x5a; 256 << 10], false).unwrap();
    client.flush().unwrap();
    server.mems[0].set_gone(true);
    assert_eq!(client.read(0, 4096).unwrap(), vec![0x5a; 4096]);
    server.mems[1].set_gone(true);
    assert_eq!(nbd_errno(client.read(0, 4096)), errno::EIO);
    assert_eq!(nbd_errno(client.read(100_000, 65536)), errno::EIO);
    assert_eq!(nbd_errno(client.write(0, &[1; 4096], true)), errno::EIO);
    if !have("qemu-io", test) {
        return;
    }
    let output = Command::new("qemu-io")
        .args(["-f", "raw", &server.uri(), "-c", "read -P 0x5a 0 64k"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("Input/output error"), "{text}");
    assert!(!text.contains("read 65536/65536"), "{text}");
}

// == Concurrency ==

#[test]
fn many_clients_with_many_requests_in_flight() {
    let test = "many_clients_with_many_requests_in_flight";
    let seed = stripestore::testing::seed(6005);
    let _guard = stripestore::testing::SeedGuard { seed, name: test };
    let server = InProcess::default("rs:4+2", 6, 8 << 20);
    let clients = 6u64;
    let region = server.pool.size() / clients;
    std::thread::scope(|scope| {
        for c in 0..clients {
            let server = &server;
            scope.spawn(move || {
                let mut rng = stripestore::testing::rng(seed + c);
                let base = c * region;
                let mut model = Model::new(region);
                let mut client = server.client();
                // Pipelined writes: 32 in flight, then pipelined reads of the same places.
                let mut writes = Vec::new();
                for _ in 0..32 {
                    let len = rng.gen_range(1..(64 << 10));
                    let offset = rng.gen_range(0..region - len as u64);
                    let data = random_bytes(&mut rng, len);
                    // Overlapping writes in flight have no defined order: keep them apart.
                    if writes.iter().any(|&(o, l): &(u64, usize)| {
                        offset < o + l as u64 && o < offset + len as u64
                    }) {
                        continue;
                    }
                    client
                        .send(cmd::WRITE, 0, base + offset, len as u32, &data)
                        .unwrap();
                    model.write(offset, &data);
                    writes.push((offset, len));
                }
                for _ in 0..writes.len() {
                    let reply = client.receive().unwrap();
                    assert_eq!(reply.errno, 0);
                }
                let mut expected = std::collections::HashMap::new();
                for &(offset, len) in &writes {
                    let cookie = client
                        .send(cmd::READ, 0, base + offset, len as u32, &[])
                        .unwrap();
                    expected.insert(cookie, model.read(offset, len).to_vec());
                }
                for _ in 0..writes.len() {
                    let reply = client.receive().unwrap();
                    assert_eq!(reply.errno, 0);
                    assert!(
                        reply.data == expected[&reply.cookie],
                        "client {c}: wrong data"
                    );
                }
                client.flush().unwrap();
            });
        }
    });
}

// == Malformed input (raw protocol) ==

/// Greeting read, client flags sent: ready for options.
fn negotiating(server: &InProcess) -> TcpStream {
    let mut stream = server.stream();
    let mut greeting = [0u8; proto::GREETING_BYTES];
    stream.read_exact(&mut greeting).unwrap();
    assert_eq!(proto::decode_greeting(&greeting).unwrap(), 3);
    stream
        .write_all(&proto::CLIENT_FIXED_NEWSTYLE.to_be_bytes())
        .unwrap();
    stream
}

/// Read one option reply: (reply type, data).
fn option_reply(stream: &mut TcpStream) -> (u32, Vec<u8>) {
    let mut header = [0u8; proto::OPTION_REPLY_BYTES];
    stream.read_exact(&mut header).unwrap();
    let header = proto::decode_option_reply(&header).unwrap();
    let mut data = vec![0u8; header.length as usize];
    stream.read_exact(&mut data).unwrap();
    (header.reply, data)
}

#[test]
fn negotiation_rejects_malformed_and_unknown_options() {
    let server = InProcess::default("mirror:2", 2, 8 << 20);
    let mut s = negotiating(&server);
    // Unknown option: not supported, negotiation goes on.
    s.write_all(&proto::encode_option(4242, b"whatever"))
        .unwrap();
    assert_eq!(option_reply(&mut s).0, rep::ERR_UNSUP);
    // Structured replies take no data; meta contexts need structured replies first. (Both
    // refused here, so this session stays with simple replies.)
    s.write_all(&proto::encode_option(opt::STRUCTURED_REPLY, b"x"))
        .unwrap();
    assert_eq!(option_reply(&mut s).0, rep::ERR_INVALID);
    let query = proto::encode_meta_context_request(b"", &[b"base:allocation"]);
    for option in [opt::LIST_META_CONTEXT, opt::SET_META_CONTEXT] {
        s.write_all(&proto::encode_option(option, &query)).unwrap();
        assert_eq!(option_reply(&mut s).0, rep::ERR_INVALID);
    }
    // LIST with data is invalid; LIST without lists the one export.
    s.write_all(&proto::encode_option(opt::LIST, b"x")).unwrap();
    assert_eq!(option_reply(&mut s).0, rep::ERR_INVALID);
    s.write_all(&proto::encode_option(opt::LIST, &[])).unwrap();
    assert_eq!(
        option_reply(&mut s),
        (rep::SERVER, proto::encode_list_entry(""))
    );
    assert_eq!(option_reply(&mut s).0, rep::ACK);
    // INFO/GO with inconsistent lengths, and for an unknown export.
    let mut bad = proto::encode_info_request(b"", &[3]);
    bad.push(0);
    s.write_all(&proto::encode_option(opt::GO, &bad)).unwrap();
    assert_eq!(option_reply(&mut s).0, rep::ERR_INVALID);
    s.write_all(&proto::encode_option(opt::GO, &[0, 0, 0xff, 0xff, 0]))
        .unwrap();
    assert_eq!(option_reply(&mut s).0, rep::ERR_INVALID);
    let unknown = proto::encode_info_request(b"nope", &[]);
    s.write_all(&proto::encode_option(opt::INFO, &unknown))
        .unwrap();
    assert_eq!(option_reply(&mut s).0, rep::ERR_UNKNOWN);
    // INFO works and does not end negotiation; GO then does.
    let good = proto::encode_info_request(b"", &[proto::info::BLOCK_SIZE]);
    s.write_all(&proto::encode_option(opt::INFO, &good))
        .unwrap();
    assert_eq!(option_reply(&mut s).0, rep::INFO);
    assert_eq!(option_reply(&mut s).0, rep::INFO);
    assert_eq!(option_reply(&mut s).0, rep::ACK);
    s.write_all(&proto::encode_option(opt::GO, &good)).unwrap();
    assert_eq!(option_reply(&mut s).0, rep::INFO);
    assert_eq!(option_reply(&mut s).0, rep::INFO);
    assert_eq!(option_reply(&mut s).0, rep::ACK);
    s.write_all(&proto::encode_request(&proto::Request {
        flags: 0,
        command: cmd::READ,
        cookie: 9,
        offset: 0,
        length: 4,
    }))
    .unwrap();
    let mut reply = [0u8; 20];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(proto::decode_reply(&reply[..16]).unwrap(), (0, 9));

    // ABORT is acknowledged, then the connection closes.
    let mut s = negotiating(&server);
    s.write_all(&proto::encode_option(opt::ABORT, &[])).unwrap();
    assert_eq!(option_reply(&mut s).0, rep::ACK);
    assert!(closed(&mut s));
    // A huge option length closes the connection without reading it.
    let mut s = negotiating(&server);
    let mut huge = proto::encode_option(opt::GO, &[]);
    huge[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&huge).unwrap();
    assert!(closed(&mut s));
    // A bad option magic closes it too.
    let mut s = negotiating(&server);
    s.write_all(b"IHAVEOPX\0\0\0\x07\0\0\0\0").unwrap();
    assert!(closed(&mut s));
    // Unknown client flags.
    let mut s = server.stream();
    let mut greeting = [0u8; proto::GREETING_BYTES];
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&0x8000_0001u32.to_be_bytes()).unwrap();
    assert!(closed(&mut s));
    // Old-style EXPORT_NAME with an unknown name: no error path, the connection closes.
    let mut s = negotiating(&server);
    s.write_all(&proto::encode_option(opt::EXPORT_NAME, b"nope"))
        .unwrap();
    assert!(closed(&mut s));
    // EXPORT_NAME with the right name: size, flags, 124 zero bytes.
    let mut s = negotiating(&server);
    s.write_all(&proto::encode_option(opt::EXPORT_NAME, b""))
        .unwrap();
    let mut answer = [0u8; 134];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(
        u64::from_be_bytes(answer[..8].try_into().unwrap()),
        server.pool.size()
    );
    assert!(answer[10..].iter().all(|&b| b == 0));
    // The server is unharmed by all of this.
    let mut client = server.client();
    client.write(0, b"still here", true).unwrap();
    assert_eq!(client.read(0, 10).unwrap(), b"still here");
}

#[test]
fn malformed_requests_get_errors_and_never_write_outside_their_range() {
    let server = InProcess::default("rs:2+1", 3, 8 << 20);
    let size = server.pool.size();
    let mut client = server.client();
    let tail = vec![0x77u8; 64 << 10];
    client.write(size - tail.len() as u64, &tail, true).unwrap();
    // Reads past the end or overflowing: EINVAL. Writes past the end: ENOSPC, and the part
    // that would have fitted is not written either.
    assert_eq!(nbd_errno(client.read(size - 10, 20)), errno::EINVAL);
    assert_eq!(nbd_errno(client.read(u64::MAX - 5, 20)), errno::EINVAL);
    assert_eq!(
        nbd_errno(client.write(size - 10, &[1; 20], false)),
        errno::ENOSPC
    );
    assert_eq!(
        nbd_errno(client.write(u64::MAX - 5, &[1; 20], false)),
        errno::ENOSPC
    );
    assert_eq!(nbd_errno(client.write_zeroes(size - 10, 20)), errno::ENOSPC);
    // Longer than the maximum read: EINVAL, the connection stays usable.
    assert_eq!(nbd_errno(client.read(0, (32 << 20) + 1)), errno::EINVAL);
    // Unknown commands, block status without a negotiated context, unknown flags: EINVAL.
    for (command, flags) in [
        (cmd::BLOCK_STATUS, 0),
        (77, 0),
        (cmd::READ, 1 << 9),
        (cmd::WRITE, 0x40),
    ] {
        let payload: &[u8] = if command == cmd::WRITE { &[9; 16] } else { &[] };
        client
            .send(command, flags, 0, payload.len().max(16) as u32, payload)
            .unwrap();
        assert_eq!(
            client.receive().unwrap().errno,
            errno::EINVAL,
            "command {command}"
        );
    }
    // Zero-length requests do nothing and succeed.
    assert_eq!(client.read(0, 0).unwrap(), Vec::<u8>::new());
    client.write(5, &[], false).unwrap();
    assert_eq!(
        client
            .read(size - tail.len() as u64, tail.len() as u32)
            .unwrap(),
        tail
    );
    // A write announcing 4 GiB: refused, and the connection is closed rather than swallowing
    // the payload; nothing is written.
    client
        .send(cmd::WRITE, 0, 0, u32::MAX, &[0xee; 4096])
        .unwrap();
    assert_eq!(client.receive().unwrap().errno, errno::EINVAL);
    assert!(closed(client.stream_mut()));
    assert_eq!(server.pool_bytes(0, 4096), b"\0".repeat(4096));

    // A bad request magic closes the connection.
    let mut client = server.client();
    client
        .stream_mut()
        .write_all(&[0x25, 0x60, 0x95, 0x14])
        .unwrap();
    client.stream_mut().write_all(&[0; 24]).unwrap();
    assert!(closed(client.stream_mut()));
    // A write whose payload is cut short by a disconnect writes nothing.
    let mut client = server.client();
    client
        .send(cmd::WRITE, cmd_flag::FUA, 1 << 20, 8192, &[0xab; 4096])
        .unwrap();
    drop(client);
    // A header cut short.
    let mut client = server.client();
    client.stream_mut().write_all(&[0x25, 0x60, 0x95]).unwrap();
    drop(client);
    // The server serves the next client, and the cut write left nothing behind.
    let mut client = server.client();
    assert_eq!(client.read(1 << 20, 8192).unwrap(), vec![0; 8192]);
    let mut stream = client.disconnect().unwrap();
    assert!(closed(&mut stream));
}

#[test]
fn stored_fuzz_inputs_replay_through_the_parser_and_server() {
    // These tests belong to the command's package (tools/cli); the stored inputs are the
    // workspace's, two levels up.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/nbd_request");
    // Every input against both pools: version 3, and version 4, whose small writes the
    // server queues (the fuzz target picks one by a bit of the first byte).
    let pools = [
        stripestore::testing::nbd::nbd_fuzz_pool(),
        stripestore::testing::nbd::nbd_fuzz_pool_v4(),
    ];
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        println!("replaying {}", path.display());
        for pool in &pools {
            stripestore::testing::nbd::exercise_nbd_input(&data, pool);
        }
        replayed += 1;
    }
    assert!(replayed >= 5, "stored inputs missing in {}", dir.display());
}

// == Shutdown, the CLI, Unix sockets ==

#[test]
fn sigterm_finishes_requests_in_flight_and_closes_the_pool_cleanly() {
    let test = "sigterm_finishes_requests_in_flight_and_closes_the_pool_cleanly";
    let seed = stripestore::testing::seed(6006);
    let _guard = stripestore::testing::SeedGuard { seed, name: test };
    let mut rng = stripestore::testing::rng(seed);
    let (dir, paths) = Served::create_pool("rs:4+2", 6);
    let served = Served::start(dir, paths, &["--listen", "127.0.0.1:0"]);
    let stream = TcpStream::connect(served.tcp_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut client = Client::connect(stream, "").unwrap();
    // Pipelined writes, none flushed or FUA; the signal arrives while they are in flight.
    let piece = 256u64 << 10;
    let mut sent = std::collections::HashMap::new();
    for i in 0..48u64 {
        let data = random_bytes(&mut rng, piece as usize);
        let cookie = client
            .send(cmd::WRITE, 0, i * piece, piece as u32, &data)
            .unwrap();
        sent.insert(cookie, (i * piece, data));
    }
    served.signal("-TERM");
    let mut acked = Vec::new();
    while let Ok(reply) = client.receive() {
        assert_eq!(reply.errno, 0);
        acked.push(sent.remove(&reply.cookie).unwrap());
    }
    let (ok, stderr, _dir, paths) = served.wait();
    assert!(ok, "serve failed: {stderr}");
    assert!(stderr.contains("pool closed cleanly"), "{stderr}");
    assert!(
        !acked.is_empty(),
        "no write was acknowledged before the shutdown"
    );
    // Every acknowledged write survived the shutdown (the pool was flushed and closed).
    let pool = Pool::open_paths(&paths[..1], &OpenOptions::default()).unwrap();
    for (offset, data) in &acked {
        let mut back = vec![0u8; data.len()];
        pool.read_at(*offset, &mut back).unwrap();
        assert!(&back == data, "acknowledged write at {offset} lost");
    }
    let status = pool.status();
    assert_eq!(status.total_checksum_errors(), 0, "{status}");
    pool.close().unwrap();
}

#[test]
fn serves_a_unix_socket_read_only_and_stops_on_sigint() {
    let test = "serves_a_unix_socket_read_only_and_stops_on_sigint";
    let (dir, paths) = Served::create_pool("mirror:2", 2);
    let socket = dir.path().join("nbd.sock");
    let socket_arg = socket.display().to_string();
    let served = Served::start(dir, paths, &["--socket", &socket_arg, "--read-only"]);
    assert!(served.uri.starts_with("nbd+unix"), "{}", served.uri);
    let stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let mut client = Client::connect(stream, "").unwrap();
    assert_ne!(client.export().flags & proto::flag::READ_ONLY, 0);
    assert_eq!(nbd_errno(client.write(0, b"x", false)), errno::EPERM);
    assert_eq!(client.read(0, 16).unwrap(), vec![0; 16]);
    drop(client);
    if have("nbdinfo", test) {
        let uri = format!("nbd+unix:///?socket={socket_arg}");
        let out = run(Command::new("nbdinfo").arg(&uri));
        assert!(out.contains("is_read_only: true"), "{out}");
    }
    served.signal("-INT");
    let (ok, stderr, _dir, _) = served.wait();
    assert!(ok, "{stderr}");
    assert!(!socket.exists(), "the socket file is left behind");
}

/// `serve --snapshot-every 1s --keep last=2`: recovery points are taken while the pool is
/// served, and no more than two of them stay; after the server stops, `snapshot list` shows
/// them.
#[test]
fn serve_takes_recovery_points_on_a_schedule_and_keeps_the_newest() {
    let (dir, paths) = Served::create_pool("mirror:2", 2);
    let served = Served::start(dir, paths, &["--snapshot-every", "1s", "--keep", "last=2"]);
    std::thread::sleep(Duration::from_millis(4500));
    served.signal("-INT");
    let (ok, stderr, dir, paths) = served.wait();
    assert!(ok, "{stderr}");
    let listed = Command::new(env!("CARGO_BIN_EXE_stripestore"))
        .args(["snapshot", "list", "--json"])
        .arg(&paths[0])
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let points: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let names: Vec<&str> = points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        (1..=2).contains(&names.len()) && names.iter().all(|n| n.starts_with("auto-20")),
        "{names:?}"
    );
    drop(dir);
}

// == Durability: FUA and FLUSH reach the disks ==

/// Serve a fresh pool on in-memory devices, let `client_work` run against it, then cut the
/// power (no flush on the way out; each device keeps a random part of its cache) and reopen.
fn serve_then_power_cut(seed: u64, client_work: impl FnOnce(&mut Client<TcpStream>)) -> Pool {
    let mems = mem_devices(6, 8 << 20);
    let pool = Pool::create(shared(&mems), vec![], &pool_options("rs:4+2", 16 * 1024)).unwrap();
    pool.flush().unwrap();
    let pool = Arc::new(pool);
    let server = BackgroundServer::start(Arc::clone(&pool), ServeOptions::default()).unwrap();
    let mut client = Client::connect(TcpStream::connect(server.addr).unwrap(), "").unwrap();
    client_work(&mut client);
    drop(client);
    server.stop().unwrap();
    Arc::try_unwrap(pool).unwrap().simulate_power_loss();
    for (i, mem) in mems.iter().enumerate() {
        mem.crash(seed + i as u64);
    }
    Pool::open(shared(&mems), &OpenOptions::default()).unwrap()
}

#[test]
fn fua_and_flush_writes_survive_a_power_cut_right_after_the_reply() {
    let test = "fua_and_flush_writes_survive_a_power_cut_right_after_the_reply";
    let seed = stripestore::testing::seed(6007);
    let _guard = stripestore::testing::SeedGuard { seed, name: test };
    let mut rng = stripestore::testing::rng(seed);
    // Unaligned, multi-stripe pieces, then 1 MiB never flushed (it may or may not survive; it
    // must not damage the rest). FUA alone in one run, FLUSH alone in the other.
    let durable: Vec<(u64, Vec<u8>)> = (0..4u64)
        .map(|i| (i * 400_000 + 17, random_bytes(&mut rng, 300_001)))
        .collect();
    let volatile = random_bytes(&mut rng, 1 << 20);
    for fua in [true, false] {
        let pool = serve_then_power_cut(seed, |client| {
            for (offset, data) in &durable {
                client.write(*offset, data, fua).unwrap();
            }
            if !fua {
                client.flush().unwrap();
            }
            client.write(4 << 20, &volatile, false).unwrap();
        });
        for (offset, data) in &durable {
            let mut back = vec![0u8; data.len()];
            pool.read_at(*offset, &mut back).unwrap();
            let how = if fua { "FUA" } else { "flushed" };
            assert!(&back == data, "{how} write at {offset} lost");
        }
    }
}

#[test]
fn serve_with_metrics_exposes_the_clients_traffic_over_http() {
    let (dir, paths) = Served::create_pool("rs:4+2", 6);
    let metrics = free_loopback_address();
    let served = Served::start(
        dir,
        paths,
        &["--listen", "127.0.0.1:0", "--metrics", &metrics],
    );
    let stream = TcpStream::connect(served.tcp_addr()).unwrap();
    let mut client = Client::connect(stream, "").unwrap();
    let data = vec![0x3cu8; 128 << 10];
    let cookie = client
        .send(cmd::WRITE, 0, 4096, data.len() as u32, &data)
        .unwrap();
    let reply = client.receive().unwrap();
    assert_eq!((reply.cookie, reply.errno), (cookie, 0));
    // One flush alone: one commit (flushes arriving together would share one).
    let cookie = client.send(cmd::FLUSH, 0, 0, 0, &[]).unwrap();
    let reply = client.receive().unwrap();
    assert_eq!((reply.cookie, reply.errno), (cookie, 0));
    let mut http = TcpStream::connect(&metrics).unwrap();
    http.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.0 200 OK"), "{response}");
    let written = response
        .lines()
        .find(|l| l.starts_with("stripestore_written_bytes_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert_eq!(written, data.len() as u64, "the client's write is counted");
    assert!(
        response
            .lines()
            .any(|l| l.starts_with("stripestore_flush_commits_total{") && l.ends_with(" 1")),
        "{response}"
    );
    assert!(response.contains("state=\"online\"} 1"));
    drop(client);
    served.signal("-TERM");
    let (ok, stderr, _dir, _paths) = served.wait();
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(&format!("metrics at http://{metrics}/metrics")),
        "{stderr}"
    );
}

/// The pool a server holds open (its devices locked against a second process) is watched and
/// scrubbed through the server's endpoint: `status --url`, `check --url`, and `scrub --url`
/// with `--control`, which finds exactly the shard-blocks rotted on disk, repairs them, and
/// exits 1; a second scrub exits 0; the data is intact afterwards. (Format version 4, what
/// `create` makes: a scrub counts places, 4 KiB shard-blocks, where version 3 counted chunks.)
#[test]
fn a_served_pool_is_watched_and_scrubbed_through_its_endpoint() {
    use std::os::unix::fs::FileExt;
    let (dir, paths) = Served::create_pool("rs:4+2", 6);
    let (model, rotted) = {
        let pool = Pool::open_paths(&paths[..1], &OpenOptions::default()).unwrap();
        let mut rng = stripestore::testing::rng(77);
        let data = random_bytes(&mut rng, 4 << 20);
        pool.write_at(0, &data).unwrap();
        let mut model = Model::new(pool.size());
        model.write(0, &data);
        // One shard-block of each of the rows holding the blocks at 64 KiB, 256 KiB and
        // 576 KiB, on chosen shards of the row (`Pool::block_locations`): three rows, one
        // place each, each within what rs:4+2 repairs.
        let rows: Vec<Vec<stripestore::pool::ShardLocation>> = [1u64, 4, 9]
            .iter()
            .map(|at| pool.block_locations(at * 65536))
            .collect();
        for row in &rows {
            assert_eq!(row.len(), 6, "one shard-block per member: {row:?}");
        }
        assert!(
            rows[0] != rows[1] && rows[1] != rows[2] && rows[0] != rows[2],
            "three rows: {rows:?}"
        );
        let rotted: Vec<(usize, u64)> = rows
            .iter()
            .zip([0usize, 3, 5])
            .map(|(row, shard)| {
                let l = row.iter().find(|l| l.shard == shard).unwrap();
                (l.device, l.offset)
            })
            .collect();
        pool.close().unwrap();
        (model, rotted)
    };
    for (device, offset) in &rotted {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&paths[*device])
            .unwrap();
        file.write_all_at(&[0xa5; 64], offset + 1000).unwrap();
    }
    let metrics = free_loopback_address();
    let url = format!("http://{metrics}");
    let served = Served::start(
        dir,
        paths.clone(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            &metrics,
            "--control",
        ],
    );
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_stripestore"))
            .args(args)
            .output()
            .unwrap()
    };
    // The devices are held: opening the pool from here is refused, the endpoint answers.
    let refused = cli(&["status", paths[0].to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("in use"));
    let status = cli(&["status", "--url", &url]);
    assert!(status.status.success(), "{status:?}");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("ONLINE") && text.contains("rs:4+2"), "{text}");
    let json = cli(&["status", "--url", &url, "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["health"], "ONLINE");

    let scrub = cli(&["scrub", "--url", &url]);
    let report = String::from_utf8_lossy(&scrub.stdout).into_owned();
    assert_eq!(scrub.status.code(), Some(1), "repaired: {scrub:?}");
    assert!(report.contains("3 checksum errors"), "{report}");
    assert!(
        report.contains("3 places (4K shard-blocks, page copies) repaired")
            && report.contains(", 0 places unrepairable"),
        "{report}"
    );
    for (device, path) in paths.iter().enumerate() {
        let expected = rotted.iter().filter(|(d, _)| *d == device).count();
        let line = report
            .lines()
            .find(|l| l.trim_start().starts_with(path.to_str().unwrap()))
            .unwrap_or_else(|| panic!("device {device} in {report}"));
        let counts: Vec<&str> = line.split_whitespace().collect();
        // ... CKSUM IO REPAIRED UNREPAIRABLE
        let n = counts.len();
        assert_eq!(counts[n - 4], expected.to_string(), "CKSUM of {line}");
        assert_eq!(counts[n - 2], expected.to_string(), "REPAIRED of {line}");
    }
    let check = cli(&["check", "--url", &url]);
    let line = String::from_utf8_lossy(&check.stdout).into_owned();
    assert_eq!(check.status.code(), Some(1), "{line}");
    assert!(line.starts_with("STRIPESTORE WARNING"), "{line}");
    let again = cli(&["scrub", "--url", &url, "--json"]);
    assert_eq!(again.status.code(), Some(0), "{again:?}");
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["end"], "completed");
    assert_eq!(again["bad_shards"], 0);

    served.signal("-TERM");
    let (ok, stderr, _dir, paths) = served.wait();
    assert!(ok, "{stderr}");
    let pool = Pool::open_paths(&paths[..1], &OpenOptions::default()).unwrap();
    let mut back = vec![0u8; 4 << 20];
    pool.read_at(0, &mut back).unwrap();
    assert!(back == model.read(0, back.len()), "data intact");
    assert_eq!(pool.status().total_checksum_errors(), 0);
    pool.close().unwrap();
    // Without a server, --url reports a clear failure: UNKNOWN for check, 3 for scrub.
    let check = cli(&["check", "--url", &url]);
    assert_eq!(check.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&check.stdout).starts_with("STRIPESTORE UNKNOWN"));
    assert_eq!(cli(&["scrub", "--url", &url]).status.code(), Some(3));
}

// == Thin volumes: trim, write-zeroes, block status ==

/// A client that negotiated structured replies and `base:allocation`.
fn thin_client(server: &InProcess) -> Client<TcpStream> {
    let options = ConnectOptions {
        structured_replies: true,
        meta_contexts: vec![proto::BASE_ALLOCATION.to_string()],
    };
    let client = Client::connect_with(server.stream(), "", &options).unwrap();
    assert_eq!(
        client.allocation_context(),
        Some(proto::ALLOCATION_CONTEXT_ID)
    );
    client
}

const HOLE: u32 = proto::state::HOLE | proto::state::ZERO;

#[test]
fn trim_write_zeroes_and_block_status_do_what_they_say_and_refuse_bad_requests() {
    let seed = stripestore::testing::seed(6101);
    let _guard = stripestore::testing::SeedGuard {
        seed,
        name: "trim_write_zeroes_and_block_status",
    };
    let server = InProcess::default_v3("rs:4+2", 6, 16 << 20);
    let size = server.pool.size();
    let stripe = server.pool.geometry().stripe_data_bytes();
    let s32 = |n: u64| u32::try_from(n * stripe).unwrap();
    let mut model = Model::new(size);
    let mut client = thin_client(&server);
    let data = random_bytes(&mut stripestore::testing::rng(seed), 16 * stripe as usize);
    client.write(0, &data, false).unwrap();
    model.write(0, &data);
    assert_eq!(
        client.block_status(0, s32(20), 0).unwrap(),
        vec![(s32(16), 0), (s32(4), HOLE)]
    );
    assert_eq!(
        client.block_status(0, s32(20), cmd_flag::REQ_ONE).unwrap(),
        vec![(s32(16), 0)]
    );
    // A trim over stripes 2..5 with partial stripes at both edges: the edges stay data
    // (zeroed), the stripes inside become a hole.
    client.trim(2 * stripe - 100, s32(3) + 200, false).unwrap();
    model.write(2 * stripe - 100, &vec![0u8; 3 * stripe as usize + 200]);
    assert_eq!(
        client.block_status(0, s32(8), 0).unwrap(),
        vec![(s32(2), 0), (s32(3), HOLE), (s32(3), 0)]
    );
    // WRITE_ZEROES punches a hole unless NO_HOLE; either way the range reads as zeros.
    client.write_zeroes_with(8 * stripe, s32(1), 0).unwrap();
    client
        .write_zeroes_with(10 * stripe, s32(1), cmd_flag::NO_HOLE | cmd_flag::FUA)
        .unwrap();
    model.write(8 * stripe, &vec![0u8; stripe as usize]);
    model.write(10 * stripe, &vec![0u8; stripe as usize]);
    assert_eq!(
        client.block_status(8 * stripe, s32(4), 0).unwrap(),
        vec![(s32(1), HOLE), (s32(3), 0)]
    );
    // An unaligned block status is clipped to the request.
    assert_eq!(
        client.block_status(3 * stripe + 5, s32(2), 0).unwrap(),
        vec![(s32(2) - 5, HOLE), (5, 0)]
    );
    assert!(client.read(0, s32(16)).unwrap() == model.read(0, 16 * stripe as usize));

    // Bad requests: the right error, as an error chunk (structured replies were negotiated),
    // and nothing changes.
    let end = size;
    for (command, flags, offset, length, expected) in [
        (cmd::TRIM, 0, end - 10, 20, errno::ENOSPC),
        (cmd::TRIM, 0, u64::MAX - 5, 20, errno::ENOSPC),
        (cmd::TRIM, cmd_flag::NO_HOLE, 0, 4096, errno::EINVAL),
        (cmd::TRIM, cmd_flag::REQ_ONE, 0, 4096, errno::EINVAL),
        (
            cmd::WRITE_ZEROES,
            cmd_flag::FAST_ZERO,
            0,
            4096,
            errno::EINVAL,
        ),
        (cmd::WRITE_ZEROES, 0, end - 10, 20, errno::ENOSPC),
        (cmd::BLOCK_STATUS, 0, end - 10, 20, errno::EINVAL),
        (cmd::BLOCK_STATUS, 0, u64::MAX - 5, 20, errno::EINVAL),
        (cmd::BLOCK_STATUS, 0, 0, 0, errno::EINVAL),
        (cmd::BLOCK_STATUS, cmd_flag::NO_HOLE, 0, 4096, errno::EINVAL),
        (cmd::READ, cmd_flag::DF, 0, 4096, errno::EINVAL),
        (cmd::READ, 0, end - 10, 20, errno::EINVAL),
    ] {
        client.send(command, flags, offset, length, &[]).unwrap();
        let reply = client.receive().unwrap();
        assert_eq!(
            (reply.errno, reply.structured),
            (expected, true),
            "command {command} flags {flags:#x} at {offset}+{length}"
        );
    }
    assert!(
        server.pool_bytes(0, size as usize) == model.read(0, size as usize),
        "a refused request changed the volume"
    );
    // Without structured replies or without the context, block status is refused (a simple
    // reply, or an error chunk); trim still works.
    let mut simple = server.client();
    assert_eq!(nbd_errno(simple.block_status(0, 4096, 0)), errno::EINVAL);
    simple.trim(12 * stripe, s32(1), true).unwrap();
    model.write(12 * stripe, &vec![0u8; stripe as usize]);
    let options = ConnectOptions {
        structured_replies: true,
        meta_contexts: vec![],
    };
    let mut no_context = Client::connect_with(server.stream(), "", &options).unwrap();
    no_context.send(cmd::BLOCK_STATUS, 0, 0, 4096, &[]).unwrap();
    let reply = no_context.receive().unwrap();
    assert_eq!((reply.errno, reply.structured), (errno::EINVAL, true));
    assert!(no_context.read(0, s32(16)).unwrap() == model.read(0, 16 * stripe as usize));

    // A read-only export refuses trims and zeroes with EPERM but answers block status.
    let options = ServeOptions {
        read_only: true,
        ..ServeOptions::default()
    };
    let read_only =
        InProcess::start_with(v3_pool_options("mirror:2", 16 * 1024), 2, 8 << 20, options);
    read_only.pool.write_at(0, &[5u8; 4096]).unwrap();
    let mut client = thin_client(&read_only);
    assert_eq!(nbd_errno(client.trim(0, 4096, false)), errno::EPERM);
    assert_eq!(nbd_errno(client.write_zeroes(0, 4096)), errno::EPERM);
    let stripe = read_only.pool.geometry().stripe_data_bytes();
    assert_eq!(
        client
            .block_status(0, u32::try_from(2 * stripe).unwrap(), 0)
            .unwrap(),
        vec![
            (u32::try_from(stripe).unwrap(), 0),
            (u32::try_from(stripe).unwrap(), HOLE)
        ]
    );
    assert_eq!(read_only.pool_bytes(0, 4096), vec![5u8; 4096]);
}

/// Read the option replies to one option until `NBD_REP_ACK` or an error: the
/// `NBD_REP_META_CONTEXT` payloads, and the final reply type.
fn meta_replies(stream: &mut TcpStream) -> (Vec<(u32, String)>, u32) {
    let mut contexts = Vec::new();
    loop {
        let (kind, data) = option_reply(stream);
        if kind != rep::META_CONTEXT {
            return (contexts, kind);
        }
        let id = u32::from_be_bytes(data[..4].try_into().unwrap());
        contexts.push((id, String::from_utf8(data[4..].to_vec()).unwrap()));
    }
}

#[test]
fn meta_context_negotiation_lists_and_selects_base_allocation_only() {
    let server = InProcess::default("mirror:2", 2, 8 << 20);
    let mut s = negotiating(&server);
    s.write_all(&proto::encode_option(opt::STRUCTURED_REPLY, &[]))
        .unwrap();
    assert_eq!(option_reply(&mut s).0, rep::ACK);
    let list = |s: &mut TcpStream, option, name: &[u8], queries: &[&[u8]]| {
        let data = proto::encode_meta_context_request(name, queries);
        s.write_all(&proto::encode_option(option, &data)).unwrap();
        meta_replies(s)
    };
    let allocation = vec![(0, proto::BASE_ALLOCATION.to_string())];
    assert_eq!(
        list(&mut s, opt::LIST_META_CONTEXT, b"", &[]),
        (allocation.clone(), rep::ACK)
    );
    assert_eq!(
        list(&mut s, opt::LIST_META_CONTEXT, b"", &[b"base:"]),
        (allocation.clone(), rep::ACK)
    );
    assert_eq!(
        list(
            &mut s,
            opt::LIST_META_CONTEXT,
            b"",
            &[b"qemu:dirty-bitmap:x"]
        ),
        (vec![], rep::ACK)
    );
    assert_eq!(
        list(&mut s, opt::LIST_META_CONTEXT, b"nope", &[]),
        (vec![], rep::ERR_UNKNOWN)
    );
    let mut bad = proto::encode_meta_context_request(b"", &[b"base:allocation"]);
    bad.pop();
    s.write_all(&proto::encode_option(opt::SET_META_CONTEXT, &bad))
        .unwrap();
    assert_eq!(meta_replies(&mut s), (vec![], rep::ERR_INVALID));
    // Selecting, then selecting nothing: block status is refused after GO.
    assert_eq!(
        list(&mut s, opt::SET_META_CONTEXT, b"", &[b"base:allocation"]),
        (
            vec![(
                proto::ALLOCATION_CONTEXT_ID,
                proto::BASE_ALLOCATION.to_string()
            )],
            rep::ACK
        )
    );
    assert_eq!(
        list(&mut s, opt::SET_META_CONTEXT, b"", &[b"x-other:thing"]),
        (vec![], rep::ACK)
    );
    let go = proto::encode_info_request(b"", &[]);
    s.write_all(&proto::encode_option(opt::GO, &go)).unwrap();
    loop {
        if option_reply(&mut s).0 == rep::ACK {
            break;
        }
    }
    s.write_all(&proto::encode_request(&proto::Request {
        flags: 0,
        command: cmd::BLOCK_STATUS,
        cookie: 3,
        offset: 0,
        length: 4096,
    }))
    .unwrap();
    let mut header = [0u8; proto::STRUCTURED_REPLY_BYTES];
    s.read_exact(&mut header).unwrap();
    let chunk = proto::decode_chunk_header(&header).unwrap();
    assert_eq!(
        (chunk.kind, chunk.cookie, chunk.flags),
        (proto::reply_type::ERROR, 3, proto::reply_flag::DONE)
    );
    let mut payload = vec![0u8; chunk.length as usize];
    s.read_exact(&mut payload).unwrap();
    assert_eq!(
        u32::from_be_bytes(payload[..4].try_into().unwrap()),
        errno::EINVAL
    );
}

/// A served pool of `stripes_written` random stripes, with some discarded: returns the server
/// and the model of its volume.
fn sparse_served_pool(seed: u64) -> (InProcess, Model) {
    let server = InProcess::default_v3("rs:4+2", 6, 16 << 20);
    let size = server.pool.size();
    let stripe = server.pool.geometry().stripe_data_bytes();
    let mut model = Model::new(size);
    let mut rng = stripestore::testing::rng(seed);
    let data = random_bytes(&mut rng, 24 * stripe as usize);
    server.pool.write_at(0, &data).unwrap();
    model.write(0, &data);
    let far = size - 3 * stripe - 1000;
    let data = random_bytes(&mut rng, 2 * stripe as usize);
    server.pool.write_at(far, &data).unwrap();
    model.write(far, &data);
    for (offset, length) in [(4 * stripe, 6 * stripe), (15 * stripe + 77, 3 * stripe)] {
        server.pool.discard(offset, length).unwrap();
        model.write(offset, &vec![0u8; length as usize]);
    }
    server.pool.flush().unwrap();
    (server, model)
}

#[test]
fn nbdinfo_map_shows_holes_and_data_at_the_right_offsets() {
    let test = "nbdinfo_map_shows_holes_and_data_at_the_right_offsets";
    if !have("nbdinfo", test) {
        return;
    }
    let (server, _model) = sparse_served_pool(6201);
    let json = run(Command::new("nbdinfo").args(["--map", "--json", &server.uri()]));
    let map: serde_json::Value = serde_json::from_str(&json).unwrap();
    let got: Vec<(u64, u64, bool)> = map
        .as_array()
        .unwrap_or_else(|| panic!("nbdinfo --map --json: {json}"))
        .iter()
        .map(|e| {
            let kind = e["type"].as_u64().unwrap();
            assert!(kind == 0 || kind == 3, "type {kind} in {json}");
            (
                e["offset"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                kind == 0,
            )
        })
        .collect();
    let expected: Vec<(u64, u64, bool)> = server
        .pool
        .allocation(0, server.pool.size())
        .unwrap()
        .iter()
        .map(|e| (e.offset, e.length, e.allocated))
        .collect();
    let stripe = server.pool.geometry().stripe_data_bytes();
    // Data, the trimmed hole, data, the unaligned trim's whole stripes, data, the never
    // written middle, the far data (two stripes' worth crossing three), the end.
    assert_eq!(
        expected[..6],
        [
            (0, 4 * stripe, true),
            (4 * stripe, 6 * stripe, false),
            (10 * stripe, 6 * stripe, true),
            (16 * stripe, 2 * stripe, false),
            (18 * stripe, 6 * stripe, true),
            (24 * stripe, expected[6].0 - 24 * stripe, false),
        ]
    );
    assert_eq!(got, expected, "nbdinfo --map: {json}");
}

/// Copy the sparse export to a file with `command`; the file is byte-exact against the model,
/// and the client read (about) only the allocated part: it skipped the holes by block status.
fn copy_out_skips_holes(test: &str, tool: &str, command: impl FnOnce(&str, &Path) -> Command) {
    if !have(tool, test) {
        return;
    }
    let (server, model) = sparse_served_pool(6301);
    let size = server.pool.size();
    let allocated = server.pool.status().allocated_bytes;
    assert!(allocated * 4 < size, "the export is mostly holes");
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.img");
    let read_before = server
        .pool
        .request_metrics()
        .read_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    run(&mut command(&server.uri(), &output));
    let read = server
        .pool
        .request_metrics()
        .read_bytes
        .load(std::sync::atomic::Ordering::Relaxed)
        - read_before;
    let copy = std::fs::read(&output).unwrap();
    assert_eq!(copy.len() as u64, size);
    assert!(
        copy == model.read(0, size as usize),
        "{tool}: the copy differs"
    );
    assert!(
        read <= allocated + (1 << 20),
        "{tool} read {read} bytes of a {size}-byte export with {allocated} allocated"
    );
}

#[test]
fn nbdcopy_of_a_sparse_export_is_byte_exact_and_skips_the_holes() {
    copy_out_skips_holes(
        "nbdcopy_of_a_sparse_export_is_byte_exact_and_skips_the_holes",
        "nbdcopy",
        |uri, out| {
            let mut command = Command::new("nbdcopy");
            command.arg(uri).arg(out);
            command
        },
    );
}

#[test]
fn qemu_img_convert_of_a_sparse_export_is_byte_exact_and_skips_the_holes() {
    copy_out_skips_holes(
        "qemu_img_convert_of_a_sparse_export_is_byte_exact_and_skips_the_holes",
        "qemu-img",
        |uri, out| {
            let mut command = Command::new("qemu-img");
            command
                .args(["convert", "-f", "raw", "-O", "raw", uri])
                .arg(out);
            command
        },
    );
}

/// `stripestore bench --nbd` runs end to end on tiny files and reports, for a layout, every
/// mounted-path figure with its raw fio bound and fio's latencies, the same reads served by
/// nbdkit's file plugin against raw fio on that file, and the server's per-request cost against
/// nbdkit's memory plugin (a smoke test of the command and its JSON; no timing is checked).
#[test]
fn bench_nbd_reports_the_mounted_path_against_raw_fio_as_json() {
    let test = "bench_nbd_reports_the_mounted_path_against_raw_fio_as_json";
    if !have("fio", test) || !have("nbdkit", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_stripestore"))
        .args([
            "bench",
            "--nbd",
            "--layouts",
            "rs:2+1",
            "--device-size",
            "8M",
        ])
        .args(["--random-seconds", "0.2", "--runs", "1", "--json", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["client"], "nbd");
    assert!(
        report["baseline"]
            .as_str()
            .unwrap()
            .contains("io_uring engine"),
        "{}",
        report["baseline"]
    );
    // The report says what fio's raw jobs read into: huge pages, or 4 KiB pages and why. As
    // root on a kernel with 2 MiB huge pages (CI), the bench makes room for them, so it must
    // have had them: a count of fio's pages that falls short fails here.
    let buffers = report["raw_buffers"].as_str().unwrap_or_default();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let can_have_them =
        root && std::path::Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists();
    if can_have_them {
        assert_eq!(buffers, "huge pages (fio --iomem=shmhuge)");
    } else {
        assert!(
            buffers.starts_with("huge pages")
                || buffers.starts_with("4 KiB pages for some raw jobs: "),
            "{buffers:?}"
        );
    }
    let layout = &report["layouts"][0];
    assert_eq!(layout["layout"], "rs:2+1");
    let figures = layout["pool"].as_array().unwrap();
    let metrics: Vec<&str> = figures
        .iter()
        .map(|f| f["metric"].as_str().unwrap())
        .collect();
    assert_eq!(
        metrics,
        [
            "seq_write",
            "seq_read",
            "random_read_4k",
            // nbdkit's file plugin read the same way, against raw fio on that file.
            "nbdkit_seq_read",
            "nbdkit_random_read_4k",
            "degraded_read",
            "degraded_random_read_4k",
            "read_during_rebuild",
            "rebuild"
        ]
    );
    // The reference is read from one member file, its bound raw fio on that file.
    for (metric, unit) in [
        ("nbdkit_seq_read", "MiB/s"),
        ("nbdkit_random_read_4k", "IOPS"),
    ] {
        let figure = figures.iter().find(|f| f["metric"] == metric).unwrap();
        assert_eq!(figure["unit"], unit, "{figure}");
        assert!(
            figure["bound_is"]
                .as_str()
                .unwrap()
                .contains("that one file"),
            "{figure}"
        );
    }
    for figure in figures {
        assert!(figure["value"].as_f64().unwrap() > 0.0, "{figure}");
        assert!(figure["bound"].as_f64().unwrap() > 0.0, "{figure}");
        if figure["metric"] != "rebuild" {
            // fio's completion latencies, ours and the raw bound's.
            for key in ["p50_us", "p99_us", "bound_p50_us", "bound_p99_us"] {
                assert!(figure[key].as_f64().unwrap() > 0.0, "{key}: {figure}");
            }
            assert!(figure["p99_us"].as_f64() >= figure["p50_us"].as_f64());
        }
    }
    let cost = &report["server_cost"];
    let rows = cost["rows"].as_array().unwrap();
    // Random 4 KiB reads at depth 16 and 64 on one connection and 16 on four, then
    // sequential 1 MiB reads.
    assert_eq!(rows.len(), 4, "{cost}");
    let units: Vec<&str> = rows.iter().map(|r| r["unit"].as_str().unwrap()).collect();
    assert_eq!(units, ["IOPS", "IOPS", "IOPS", "MiB/s"], "{cost}");
    for row in rows {
        assert!(row["ours_iops"][0].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["nbdkit_iops"][0].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["ratio"][0].as_f64().unwrap() > 0.0, "{row}");
    }
}
