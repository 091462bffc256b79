//! Bad input gets a clear error and loses nothing: foreign devices, mixed pools, missing
//! members, corrupt superblocks and maps, out-of-range I/O, unknown layouts.

use crate::common;

use common::*;
use std::path::{Path, PathBuf};
use stripestore::device::{Device, FileDevice};
use stripestore::testing::{random_bytes, rng, Model};
use stripestore::{CreateOptions, Error, OpenOptions, Pool};

fn paths(dir: &Path, prefix: &str, count: usize) -> Vec<PathBuf> {
    (0..count)
        .map(|i| dir.join(format!("{prefix}{i}.img")))
        .collect()
}

fn file_options(layout: &str) -> CreateOptions {
    let mut opts = options(layout);
    opts.device_bytes = Some(DEVICE_BYTES);
    opts
}

fn snapshot(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// A file pool with some data, closed; returns the model.
fn file_pool(paths: &[PathBuf], layout: &str, seed: u64) -> Model {
    file_pool_with(paths, &file_options(layout), seed)
}

/// As [`file_pool`], created with `opts`.
fn file_pool_with(paths: &[PathBuf], opts: &CreateOptions, seed: u64) -> Model {
    let pool = Pool::create_paths(paths, &[], opts).unwrap();
    let mut model = Model::new(pool.size());
    let mut rng = rng(seed);
    random_writes(&pool, &mut model, &mut rng, 20);
    pool.close().unwrap();
    model
}

#[test]
fn create_refuses_a_device_of_another_pool_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let a = paths(dir.path(), "a", 3);
    let model = file_pool(&a, "rs:2+1", 1);
    let b = create_is_refused(dir.path(), &a, 1, &["a1.img", "--force"]);
    let pool = Pool::open_paths(&a[..1], &OpenOptions::default()).unwrap();
    verify(&pool, &model);
    drop(pool);
    create_forced(&b);
}

/// `create` of a new pool on two fresh files and `a[victim]` is refused with `DeviceInUse`
/// naming every piece of `expect`, and none of `a` is touched. Returns the new pool's paths.
fn create_is_refused(dir: &Path, a: &[PathBuf], victim: usize, expect: &[&str]) -> Vec<PathBuf> {
    let before = snapshot(a);
    let b = vec![dir.join("b0.img"), dir.join("b1.img"), a[victim].clone()];
    let err = Pool::create_paths(&b, &[], &file_options("rs:2+1")).unwrap_err();
    assert!(matches!(err, Error::DeviceInUse { .. }), "{err}");
    for piece in expect {
        assert!(err.to_string().contains(piece), "{piece} in: {err}");
    }
    assert_eq!(snapshot(a), before, "nothing of the other pool was touched");
    b
}

/// With force, `create` on `paths` is allowed.
fn create_forced(paths: &[PathBuf]) {
    let mut forced = file_options("rs:2+1");
    forced.force = true;
    Pool::create_paths(paths, &[], &forced)
        .unwrap()
        .close()
        .unwrap();
}

/// A superblock this build cannot read (both copies damaged, or written by a newer format)
/// still marks the device as another pool's: `create` refuses it without force.
#[test]
fn create_refuses_a_device_with_an_unreadable_superblock_without_force() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let a = paths(dir.path(), "a", 3);
    file_pool(&a, "rs:2+1", 2);
    let size = std::fs::metadata(&a[2]).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&a[2]).unwrap();
    // A newer format version in copy A, a damaged JSON in copy B.
    file.write_all_at(&99u32.to_le_bytes(), 8).unwrap();
    file.write_all_at(b"#", size - 64 * 1024 + 40).unwrap();
    drop(file);
    let b = create_is_refused(dir.path(), &a, 2, &["a2.img", "cannot be read"]);
    create_forced(&b);
}

#[test]
fn open_refuses_mixed_pools_and_foreign_devices() {
    let dir = tempfile::tempdir().unwrap();
    let a = paths(dir.path(), "a", 2);
    let b = paths(dir.path(), "b", 2);
    file_pool(&a, "mirror:2", 2);
    file_pool(&b, "mirror:2", 3);
    let (before_a, before_b) = (snapshot(&a), snapshot(&b));
    let err = Pool::open_paths(&[a[0].clone(), b[1].clone()], &OpenOptions::default()).unwrap_err();
    assert!(matches!(err, Error::MixedPools { .. }), "{err}");
    assert!(err.to_string().contains("b1.img"), "{err}");
    // A file that was never a member.
    let stranger = dir.path().join("stranger.img");
    std::fs::write(&stranger, vec![0x5a; 1 << 20]).unwrap();
    let err =
        Pool::open_paths(std::slice::from_ref(&stranger), &OpenOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NotAMember { .. }), "{err}");
    assert!(err.to_string().contains("stranger.img"), "{err}");
    // A path that does not exist.
    let err =
        Pool::open_paths(&[dir.path().join("nope.img")], &OpenOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{err}");
    assert_eq!(snapshot(&a), before_a);
    assert_eq!(snapshot(&b), before_b);
    assert_eq!(std::fs::read(&stranger).unwrap(), vec![0x5a; 1 << 20]);
}

#[test]
fn missing_members_degrade_within_tolerance_and_refuse_beyond_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let a = paths(dir.path(), "a", 6);
    let model = file_pool(&a, "rs:4+2", 4);
    // Two members missing: opens degraded through the recorded paths, data intact.
    // Out of the pool's directory: members moved within it would be found by their identity.
    std::fs::create_dir(dir.path().join("hidden")).unwrap();
    let hidden: Vec<PathBuf> = a[..3]
        .iter()
        .map(|p| dir.path().join("hidden").join(p.file_name().unwrap()))
        .collect();
    std::fs::rename(&a[0], &hidden[0]).unwrap();
    std::fs::rename(&a[1], &hidden[1]).unwrap();
    {
        let pool = Pool::open_paths(&a[2..3], &OpenOptions::default()).unwrap();
        verify(&pool, &model);
        let status = pool.status();
        assert_eq!(status.devices[0].state, "FAULTED");
        assert!(
            status.devices[0]
                .reason
                .as_deref()
                .unwrap()
                .contains("missing"),
            "{status}"
        );
        pool.close().unwrap();
    }
    // A third one missing: a clear error, and nothing is written to the survivors.
    std::fs::rename(&a[2], &hidden[2]).unwrap();
    let before = snapshot(&a[3..]);
    let err = Pool::open_paths(&a[3..4], &OpenOptions::default()).unwrap_err();
    assert!(matches!(err, Error::PoolUnavailable { .. }), "{err}");
    for name in ["a0.img", "a1.img", "a2.img"] {
        assert!(err.to_string().contains(name), "error names {name}: {err}");
    }
    assert_eq!(snapshot(&a[3..]), before, "a refused open writes nothing");
    // The two first-missing devices come back: they are stale (faulted while away).
    std::fs::rename(&hidden[0], &a[0]).unwrap();
    std::fs::rename(&hidden[2], &a[2]).unwrap();
    // Named on the command line (what a user types), they do not make the pool unusable: it
    // opens without them, showing them faulted, and their outdated content is not used.
    let pool = Pool::open_paths(&[a[0].clone(), a[3].clone()], &OpenOptions::default()).unwrap();
    let status = pool.status();
    assert_eq!(status.devices[0].state, "FAULTED", "{status}");
    assert_eq!(status.devices[1].state, "FAULTED", "{status}");
    // a2 went missing only during the refused open, which recorded nothing: it is current.
    assert_eq!(status.devices[2].state, "ONLINE", "{status}");
    drop(pool);
    // Naming only a stale device: its own outdated member list must not vouch for it. The
    // members it records are found, their newer superblocks say it is faulted, and the pool
    // opens without it, serving the newest data.
    let pool = Pool::open_paths(&a[0..1], &OpenOptions::default()).unwrap();
    assert_eq!(pool.status().devices[0].state, "FAULTED");
    verify(&pool, &model);
    drop(pool);
    // Without naming the stale one, the pool opens degraded and correct.
    let pool = Pool::open_paths(&a[3..4], &OpenOptions::default()).unwrap();
    verify(&pool, &model);
}

#[test]
fn corrupt_superblock_copies_and_maps_are_survived_or_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let a = paths(dir.path(), "a", 3);
    let model = file_pool(&a, "rs:2+1", 5);
    let rot = |path: &Path, offset: u64, len: usize| {
        let dev = FileDevice::open(path).unwrap();
        let mut rng = rng(offset);
        dev.write_at(offset, &random_bytes(&mut rng, len)).unwrap();
    };
    let size = std::fs::metadata(&a[0]).unwrap().len();
    // Copy A torn on every device, copy B on one: still opens.
    for path in &a {
        rot(path, 100, 300);
    }
    rot(&a[1], size - 64 * 1024 + 40, 100);
    let pool = Pool::open_paths(&a, &OpenOptions::default()).unwrap_err();
    assert!(
        matches!(pool, Error::NotAMember { .. }),
        "both copies bad on a1 given explicitly: {pool}"
    );
    assert!(
        pool.to_string().contains("checksum") || pool.to_string().contains("magic"),
        "{pool}"
    );
    let pool = Pool::open_paths(&[a[0].clone(), a[2].clone()], &OpenOptions::default()).unwrap();
    verify(&pool, &model);
    drop(pool);

    // Format version 3's stripe map: a checkpoint corrupted on one device is survived from
    // the others. (Checkpoint areas exist only on version 3: a v3 pool is made for this part.)
    let dir2 = tempfile::tempdir().unwrap();
    let b = paths(dir2.path(), "b", 3);
    let mut v3 = v3_options("rs:2+1");
    v3.device_bytes = Some(DEVICE_BYTES);
    let model = file_pool_with(&b, &v3, 6);
    let geometry = {
        let pool = Pool::open_paths(&b, &OpenOptions::default()).unwrap();
        pool.geometry().clone()
    };
    assert!(
        geometry.checkpoint_bytes > 0,
        "a version 3 pool has checkpoints"
    );
    for offset in geometry.checkpoint_offsets {
        rot(&b[0], offset + 10, 4000);
    }
    let pool = Pool::open_paths(&b, &OpenOptions::default()).unwrap();
    verify(&pool, &model);
    drop(pool);
    // On every device: refused with a clear error.
    for path in &b {
        for offset in geometry.checkpoint_offsets {
            rot(path, offset + 10, 4000);
        }
    }
    let err = Pool::open_paths(&b, &OpenOptions::default()).unwrap_err();
    assert!(matches!(err, Error::CorruptMetadata { .. }), "{err}");

    // Format version 4 (what `create` makes) has no checkpoints: the newest durable state is
    // found from the uberblocks, two rings of them on every member (docs/FORMAT.md V4.2, V4.8),
    // followed by the intent log. Both rings and both log halves rotten on one member: the
    // others give the newest uberblock, and the data reads back exactly.
    let dir3 = tempfile::tempdir().unwrap();
    let c = paths(dir3.path(), "c", 3);
    let model = file_pool(&c, "rs:2+1", 7);
    let geometry = {
        let pool = Pool::open_paths(&c, &OpenOptions::default()).unwrap();
        pool.geometry().clone()
    };
    assert!(
        geometry.uberblock_slots > 0,
        "a version 4 pool has uberblock rings"
    );
    let ring_bytes = geometry.uberblock_slots * 4096;
    let rot_rings_and_log = |path: &Path| {
        for start in geometry.uberblock_rings() {
            rot(path, start, ring_bytes as usize);
        }
        for start in geometry.log_halves() {
            rot(path, start, geometry.log_half_bytes() as usize);
        }
    };
    rot_rings_and_log(&c[0]);
    let pool = Pool::open_paths(&c, &OpenOptions::default()).unwrap();
    verify(&pool, &model);
    pool.close().unwrap();
    // On every member: no uberblock is left to find the trees from, refused with a clear
    // error naming what is missing.
    for path in &c {
        rot_rings_and_log(path);
    }
    let err = Pool::open_paths(&c, &OpenOptions::default()).unwrap_err();
    assert!(matches!(err, Error::CorruptMetadata { .. }), "{err}");
    assert!(err.to_string().contains("uberblock"), "{err}");
}

#[test]
fn out_of_range_io_is_refused_and_changes_nothing() {
    let (pool, _mems) = mem_pool("rs:4+2", 6);
    let size = pool.size();
    let mut model = Model::new(size);
    let mut rng = rng(11);
    random_writes(&pool, &mut model, &mut rng, 10);
    for (offset, len) in [
        (size, 1usize),
        (size - 10, 11),
        (u64::MAX - 2, 5),
        (size + 4096, 0),
    ] {
        let err = pool.write_at(offset, &vec![0xff; len]).unwrap_err();
        assert!(matches!(err, Error::OutOfRange { .. }), "{err}");
        let mut buf = vec![0u8; len];
        let err = pool.read_at(offset, &mut buf).unwrap_err();
        assert!(matches!(err, Error::OutOfRange { .. }), "{err}");
        assert!(err.to_string().contains("exceeds the volume size"), "{err}");
    }
    // Zero-length I/O at the very end is fine.
    pool.write_at(size, &[]).unwrap();
    verify(&pool, &model);
}

#[test]
fn unknown_layouts_and_bad_configurations_are_clear_errors() {
    for text in ["raid5:3", "rs:4", "rs:4+9", "mirror:1", "mirror:x", ""] {
        let err = text.parse::<stripestore::Layout>().unwrap_err();
        assert!(matches!(err, Error::InvalidLayout { .. }), "{text}: {err}");
        assert!(err.to_string().contains("expected mirror:N"), "{err}");
    }
    let mems = stripestore::testing::mem_devices(5, DEVICE_BYTES);
    let err = Pool::create(
        stripestore::testing::shared(&mems),
        vec![],
        &options("rs:4+2"),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    let err = Pool::create(
        stripestore::testing::shared(&mems[..3]),
        vec![],
        &options("mirror:2"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("exactly 2 devices"), "{err}");
    let mut small = options("mirror:2");
    small.chunk_bytes = 1000;
    let err = Pool::create(stripestore::testing::shared(&mems[..2]), vec![], &small).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    // Nothing was written to the devices by the refused creates.
    assert!(mems.iter().all(|m| m.image().iter().all(|b| *b == 0)));
}

#[test]
fn a_stale_member_alone_cannot_roll_back_flushed_data() {
    // The refusals are the pool's, not a format's: both formats must keep them (version 3
    // first, then version 4, what `create` makes).
    for opts in [v3_options("mirror:2"), options("mirror:2")] {
        stale_member_alone_cannot_roll_back_flushed_data(&opts);
    }
}

fn stale_member_alone_cannot_roll_back_flushed_data(opts: &CreateOptions) {
    // mirror:2 on A and B. B is faulted while A carries on; then B alone is offered.
    let mems = stripestore::testing::mem_devices(2, DEVICE_BYTES);
    let (a, b) = (mems[0].clone(), mems[1].clone());
    let pool = Pool::create(stripestore::testing::shared(&mems), vec![], opts).unwrap();
    pool.write_at(0, &[1u8; 4096]).unwrap();
    pool.flush().unwrap();
    pool.fault_device(1, "test: unplugged");
    pool.write_at(0, &[2u8; 4096]).unwrap();
    pool.close().unwrap();
    // B's own superblock still says both are online; it cannot know A went on without it.
    let err = Pool::open(vec![b.clone()], &OpenOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::CannotProveCurrent { .. }),
        "{:?}: {err}",
        opts.format
    );
    assert!(
        err.to_string().contains("mem0")
            && err.to_string().contains("--force-degraded")
            && err.to_string().contains("OpenOptions::force"),
        "{err}"
    );
    // With A present, B is recognised as stale and A's data is served.
    // (Named too, it is left out with a warning, not an error.)
    let pool = Pool::open(vec![a.clone(), b.clone()], &OpenOptions::default()).unwrap();
    assert_eq!(pool.status().devices[1].state, "FAULTED");
    let mut buf = [0u8; 4096];
    pool.read_at(0, &mut buf).unwrap();
    assert_eq!(
        buf, [2u8; 4096],
        "the stale member's old data is not served"
    );
    drop(pool);
    let pool = Pool::open(vec![a.clone()], &OpenOptions::default()).unwrap();
    let mut buf = [0u8; 4096];
    pool.read_at(0, &mut buf).unwrap();
    assert_eq!(buf, [2u8; 4096]);
    drop(pool);
    // Forcing B alone is the operator's explicit choice; afterwards each of the two records the
    // other as faulted (B's forced open could have taken writes A never saw), and opening both
    // is refused as a split brain instead of picking one silently. This must not depend on the
    // two superblock generations happening to be equal.
    let forced = OpenOptions {
        force: true,
        ..OpenOptions::default()
    };
    // The forced open records the fork on the member that goes on, or does not go on: with
    // B's superblock writes failing (B cannot be lost), it fails naming B and B is unchanged.
    let before = b.image();
    let (faulty, plan) = stripestore::device::FaultyDevice::new(b.clone(), 1);
    plan.lock()
        .arm(stripestore::device::FaultKind::WriteError, 8);
    let err = Pool::open(vec![std::sync::Arc::new(faulty)], &forced).unwrap_err();
    assert!(err.to_string().contains("mem1"), "{:?}: {err}", opts.format);
    assert!(b.image() == before, "{:?}: B changed", opts.format);
    let pool = Pool::open(vec![b.clone()], &forced).unwrap();
    pool.write_at(0, &[3u8; 4096]).unwrap();
    pool.flush().unwrap();
    drop(pool);
    let images = (a.image(), b.image());
    match Pool::open(vec![a.clone(), b.clone()], &OpenOptions::default()) {
        Err(err) => assert!(
            err.to_string().contains("split brain"),
            "{:?}: {err}",
            opts.format
        ),
        Ok(pool) => {
            let mut buf = [0u8; 4096];
            pool.read_at(0, &mut buf).unwrap();
            panic!(
                "{:?}: A and the forced B, each recording the other faulted, were opened \
                 together (the first byte read is {}): a split brain picked one silently",
                opts.format, buf[0]
            );
        }
    }
    assert!(
        (a.image(), b.image()) == images,
        "{:?}: the refused open changed a device",
        opts.format
    );
    // B's branch opens alone (it records A faulted); giving A back to it would resync A's
    // branch away: refused too, and A is left as it was.
    let pool = Pool::open(vec![b.clone()], &OpenOptions::default()).unwrap();
    let mut buf = [0u8; 4096];
    pool.read_at(0, &mut buf).unwrap();
    assert_eq!(buf, [3u8; 4096], "{:?}: B's flushed write", opts.format);
    let err = pool.clear_with("mem0", a.clone()).unwrap_err();
    assert!(
        matches!(err, Error::SplitBrain { .. }),
        "{:?}: {err}",
        opts.format
    );
    drop(pool);
    assert!(a.image() == images.0, "{:?}: A was changed", opts.format);
}

#[test]
fn a_pool_in_use_is_refused_to_a_second_opener_and_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths(dir.path(), "busy", 3);
    let mut model = file_pool(&paths, "rs:2+1", 77);
    let options = OpenOptions {
        background_rebuild: false,
        ..OpenOptions::default()
    };
    let first = Pool::open_paths(&paths[..1], &options).unwrap();
    let before = snapshot(&paths);
    // Another opener (here the same process; another process is refused the same way).
    let err = Pool::open_paths(&paths[..1], &options).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("in use"), "{message}: {cause}");
    assert_eq!(snapshot(&paths), before, "the refused open wrote nothing");
    // The CLI says so too, with a failure exit code.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stripestore"))
        .args(["status", paths[0].to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    // The first keeps working, and once closed the pool opens again.
    let data = vec![0xa5u8; 10_000];
    first.write_at(1234, &data).unwrap();
    model.write(1234, &data);
    first.close().unwrap();
    let again = Pool::open_paths(&paths[..1], &options).unwrap();
    verify(&again, &model);
}

/// A pool on memory devices that attaches no spare and rebuilds nothing on its own.
fn manual_pool(
    layout: &str,
    devices: usize,
) -> (Pool, Vec<std::sync::Arc<stripestore::device::MemDevice>>) {
    let mems = stripestore::testing::mem_devices(devices, DEVICE_BYTES);
    let mut opts = options(layout);
    opts.open.background_rebuild = false;
    opts.open.auto_replace = false;
    let pool = Pool::create(stripestore::testing::shared(&mems), vec![], &opts).unwrap();
    (pool, mems)
}

/// A memory device carrying a hand-built ext4 superblock magic (and nothing else).
fn ext4_lookalike(name: &str) -> std::sync::Arc<stripestore::device::MemDevice> {
    let device = stripestore::device::MemDevice::new(name, DEVICE_BYTES);
    device.write_at(1080, &0xEF53u16.to_le_bytes()).unwrap();
    device
        .write_at(1024 + 0x60, &0x40u32.to_le_bytes())
        .unwrap();
    std::sync::Arc::new(device)
}

/// `online` takes back the member itself or an unlabelled device; another pool's member, a
/// spare or an active member of this pool, or a device with a filesystem are refused, and not
/// one byte of them changes. Force overrides a foreign pool or signature, never this pool's own
/// devices.
#[test]
fn online_accepts_only_the_returning_member_or_an_unlabelled_device() {
    use stripestore::device::SharedDevice;
    let (pool, mems) = manual_pool("rs:2+1", 3);
    let mut model = Model::new(pool.size());
    let mut rng = rng(61);
    random_writes(&pool, &mut model, &mut rng, 20);
    let spare = std::sync::Arc::new(stripestore::device::MemDevice::new("spare", DEVICE_BYTES));
    pool.add_spare(spare.clone(), false).unwrap();
    // Another pool, with data of its own.
    let (other, other_mems) = mem_pool("mirror:2", 2);
    let mut other_model = Model::new(other.size());
    random_writes(&other, &mut other_model, &mut rng, 10);
    other.close().unwrap();
    pool.offline("mem1").unwrap();
    pool.flush().unwrap();

    let ext4 = ext4_lookalike("e0");
    let refused: Vec<(SharedDevice, bool, &str)> = vec![
        (
            other_mems[0].clone(),
            false,
            "already holds a superblock of pool",
        ),
        (spare.clone(), true, "spare is already a spare of this pool"),
        (
            mems[0].clone(),
            true,
            "mem0 is already a member (data position 0) of this pool",
        ),
        (
            mems[2].clone(),
            true,
            "mem2 is already a member (data position 2) of this pool",
        ),
        (
            ext4.clone(),
            false,
            "e0 holds an ext4 filesystem (magic at byte 1080); use --force",
        ),
    ];
    for (device, force, expect) in refused {
        let name = device.name();
        let before = snapshot_mem(&device);
        let err = pool.online("mem1", device.clone(), force).unwrap_err();
        assert!(err.to_string().contains(expect), "{name}: {err}");
        assert_eq!(snapshot_mem(&device), before, "{name} was not touched");
        assert!(pool.rebuild_progress().is_empty(), "nothing is rebuilding");
    }
    // The other pool still opens, with its data.
    let reopened = Pool::open(
        stripestore::testing::shared(&other_mems),
        &OpenOptions::default(),
    )
    .unwrap();
    verify(&reopened, &other_model);
    assert_eq!(
        reopened.status().health,
        stripestore::pool::PoolHealth::Online
    );
    reopened.close().unwrap();
    // The member itself comes back: accepted without force, rebuilt.
    pool.online("mem1", mems[1].clone(), false).unwrap();
    pool.run_rebuilds(|_| {}).unwrap();
    assert_eq!(pool.status().health, stripestore::pool::PoolHealth::Online);
    verify(&pool, &model);
    // Force takes a device with a filesystem.
    pool.offline("mem1").unwrap();
    pool.online("mem1", ext4.clone(), true).unwrap();
    pool.run_rebuilds(|_| {}).unwrap();
    assert_eq!(pool.status().health, stripestore::pool::PoolHealth::Online);
    random_writes(&pool, &mut model, &mut rng, 5);
    verify(&pool, &model);
}

fn snapshot_mem(device: &stripestore::device::SharedDevice) -> Vec<u8> {
    let mut bytes = vec![0u8; device.size() as usize];
    device.read_at(0, &mut bytes).unwrap();
    bytes
}

/// `replace` and `spare add` refuse this pool's own members and spares even with force, and a
/// device with a foreign signature unless forced.
#[test]
fn replace_and_spare_add_refuse_own_devices_always_and_signatures_unless_forced() {
    let (pool, mems) = manual_pool("rs:2+1", 3);
    let spare = std::sync::Arc::new(stripestore::device::MemDevice::new("spare", DEVICE_BYTES));
    pool.add_spare(spare.clone(), false).unwrap();
    for force in [false, true] {
        let err = pool.add_spare(mems[1].clone(), force).unwrap_err();
        assert!(matches!(err, Error::AlreadyMember { .. }), "{err}");
        assert!(
            err.to_string().contains("mem1 is already a member"),
            "{err}"
        );
        let err = pool.add_spare(spare.clone(), force).unwrap_err();
        assert!(
            err.to_string().contains("spare is already a spare"),
            "{err}"
        );
        let err = pool.replace("mem0", mems[2].clone(), force).unwrap_err();
        assert!(matches!(err, Error::AlreadyMember { .. }), "{err}");
    }
    let ext4 = ext4_lookalike("e1");
    let before = ext4.image();
    let err = pool.add_spare(ext4.clone(), false).unwrap_err();
    assert!(matches!(err, Error::ForeignSignature { .. }), "{err}");
    let err = pool.replace("mem0", ext4.clone(), false).unwrap_err();
    assert!(
        err.to_string()
            .contains("e1 holds an ext4 filesystem (magic at byte 1080)"),
        "{err}"
    );
    assert_eq!(ext4.image(), before);
    assert_eq!(pool.status().spares.len(), 1);
    pool.add_spare(ext4, true).unwrap();
    assert_eq!(pool.status().spares.len(), 2);
}

/// `create` refuses a device with a foreign signature and writes nothing to any device.
#[test]
fn create_refuses_a_foreign_signature_without_force() {
    let ext4 = ext4_lookalike("e0");
    let blank = std::sync::Arc::new(stripestore::device::MemDevice::new("b0", DEVICE_BYTES));
    let before = ext4.image();
    let devices: Vec<stripestore::device::SharedDevice> = vec![blank.clone(), ext4.clone()];
    let err = Pool::create(devices.clone(), vec![], &options("mirror:2")).unwrap_err();
    assert!(matches!(err, Error::ForeignSignature { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "e0 holds an ext4 filesystem (magic at byte 1080); use --force to overwrite"
    );
    assert_eq!(ext4.image(), before);
    assert!(blank.image().iter().all(|b| *b == 0));
    let mut forced = options("mirror:2");
    forced.force = true;
    Pool::create(devices, vec![], &forced)
        .unwrap()
        .close()
        .unwrap();
}

/// A failed `create` removes the files it created and cuts back the one it grew; it never
/// removes a file that was there before. Paths given twice are refused before anything is
/// opened or created.
#[test]
fn a_failed_create_leaves_no_file_behind_and_duplicates_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let new = paths(dir.path(), "n", 2);
    let old = dir.path().join("old.img");
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 249) as u8).collect();
    std::fs::write(&old, &content).unwrap();
    let given = vec![new[0].clone(), new[1].clone(), old.clone()];
    // rs:4+2 needs six devices: refused after the files were opened (and created).
    let err = Pool::create_paths(&given, &[], &file_options("rs:4+2")).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    assert!(
        !new[0].exists() && !new[1].exists(),
        "created files removed"
    );
    assert_eq!(std::fs::read(&old).unwrap(), content, "old file as it was");

    let twice = vec![new[0].clone(), dir.path().join(".").join("n0.img")];
    let err = Pool::create_paths(&twice, &[], &file_options("mirror:2")).unwrap_err();
    assert!(err.to_string().contains("n0.img is given twice"), "{err}");
    assert!(!new[0].exists(), "nothing created");
    let err = Pool::create_paths(&new, &[new[1].clone()], &file_options("rs:2+1")).unwrap_err();
    assert!(err.to_string().contains("n1.img is given twice"), "{err}");

    let a = paths(dir.path(), "a", 3);
    file_pool(&a, "rs:2+1", 8);
    let err = Pool::open_paths(&[a[0].clone(), a[0].clone()], &OpenOptions::default()).unwrap_err();
    assert!(err.to_string().contains("a0.img is given twice"), "{err}");
    assert!(!err.to_string().contains("in use"), "{err}");
}
