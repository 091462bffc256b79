//! Devices written by the real tools (mkfs.ext4, mkfs.btrfs, mkfs.vfat, mkswap, sfdisk,
//! sgdisk, cryptsetup, pvcreate) are recognised: `create`, `spare add`, `replace` and `online`
//! refuse each one without `--force`, naming what was found and where, and leave it
//! byte-for-byte unchanged; `create --force` then takes it.
//!
//! A test whose tool is missing prints a SKIPPED line and returns, unless
//! `STRIPESTORE_REQUIRE_TOOLS=1` (CI installs them all), where it fails.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn stripestore(args: &[&str]) -> Output {
    common::run_program(common::stripestore_command("error"), args, None)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Run a tool, failing the test with its output if it fails.
fn tool(program: &str, args: &[&str], stdin: Option<&[u8]>) {
    let path = common::find_tool(program).unwrap();
    let out = common::run_program(Command::new(path), args, stdin);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A sparse file of `size` bytes.
fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    path
}

fn assert_refused(out: &Output, expect: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    assert!(
        stderr.contains(expect) && stderr.contains("use --force to overwrite"),
        "{what}: expected {expect:?} in: {stderr}"
    );
}

/// `img` (made by a tool) is refused by create, spare add, replace and online without force,
/// naming `expect`, and is unchanged after each; then `create --force` takes it.
fn refused_everywhere_then_forced(dir: &Path, img: &Path, expect: &str) {
    let size = std::fs::metadata(img).unwrap().len();
    let original = std::fs::read(img).unwrap();
    let unchanged = |what: &str| {
        assert!(
            std::fs::read(img).unwrap() == original,
            "{what} changed {}",
            img.display()
        );
    };
    let expect = format!("{} holds {expect}", img.display());
    // A pool to add it to, with member 1 offline (for online).
    let members = [dir.join("p0.img"), dir.join("p1.img")];
    let out = stripestore(&[
        "create",
        "--layout",
        "mirror:2",
        "--device-size",
        "16M",
        p(&members[0]),
        p(&members[1]),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = stripestore(&["offline", p(&members[0]), "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let blank = image(dir, "blank.img", size);
    let create = ["create", "--layout", "mirror:2", p(img), p(&blank)];
    assert_refused(&stripestore(&create), &expect, "create");
    unchanged("create");
    assert!(
        std::fs::read(&blank).unwrap().iter().all(|b| *b == 0),
        "the refused create wrote nothing to the other device either"
    );
    let out = stripestore(&["spare", "add", p(&members[0]), "--device", p(img)]);
    assert_refused(&out, &expect, "spare add");
    unchanged("spare add");
    let out = stripestore(&["replace", p(&members[0]), "--old", "0", "--new", p(img)]);
    assert_refused(&out, &expect, "replace");
    unchanged("replace");
    let out = stripestore(&["online", p(&members[0]), "1", "--path", p(img)]);
    assert_refused(&out, &expect, "online");
    unchanged("online");

    let mut forced = create.to_vec();
    forced.push("--force");
    let out = stripestore(&forced);
    assert!(
        out.status.success(),
        "create --force: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = stripestore(&["status", p(img), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ext4_is_refused_unless_forced() {
    if !common::tools_or_skip("ext4_is_refused_unless_forced", &["mkfs.ext4"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "e0.img", 32 << 20);
    tool("mkfs.ext4", &["-q", "-F", p(&img)], None);
    refused_everywhere_then_forced(dir.path(), &img, "an ext4 filesystem (magic at byte 1080)");
}

#[test]
fn btrfs_is_refused_unless_forced() {
    if !common::tools_or_skip("btrfs_is_refused_unless_forced", &["mkfs.btrfs"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // mkfs.btrfs wants about 114 MiB at least.
    let img = image(dir.path(), "b0.img", 128 << 20);
    tool("mkfs.btrfs", &["-q", "-f", p(&img)], None);
    refused_everywhere_then_forced(dir.path(), &img, "a btrfs filesystem (magic at byte 65600)");
}

#[test]
fn fat_is_refused_unless_forced() {
    if !common::tools_or_skip("fat_is_refused_unless_forced", &["mkfs.vfat"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "f0.img", 32 << 20);
    tool("mkfs.vfat", &[p(&img)], None);
    refused_everywhere_then_forced(dir.path(), &img, "a FAT filesystem (magic at byte 54)");
}

#[test]
fn swap_is_refused_unless_forced() {
    if !common::tools_or_skip("swap_is_refused_unless_forced", &["mkswap"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "s0.img", 32 << 20);
    // Page size 4K everywhere this runs; 64K pages are covered by the unit tests.
    tool("mkswap", &["-p", "4096", p(&img)], None);
    refused_everywhere_then_forced(dir.path(), &img, "a Linux swap area (magic at byte 4086)");
}

#[test]
fn an_mbr_partition_table_is_refused_unless_forced() {
    let test = "an_mbr_partition_table_is_refused_unless_forced";
    if !common::tools_or_skip(test, &["sfdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "m0.img", 32 << 20);
    tool("sfdisk", &["-q", p(&img)], Some(b"start=2048, type=83\n"));
    refused_everywhere_then_forced(
        dir.path(),
        &img,
        "an MBR partition table (magic at byte 510)",
    );
}

#[test]
fn a_gpt_partition_table_is_refused_unless_forced() {
    let test = "a_gpt_partition_table_is_refused_unless_forced";
    if !common::tools_or_skip(test, &["sgdisk"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "g0.img", 32 << 20);
    tool("sgdisk", &["-n", "1:0:0", p(&img)], None);
    refused_everywhere_then_forced(
        dir.path(),
        &img,
        "a GPT partition table (magic at byte 512)",
    );
}

#[test]
fn luks1_and_luks2_are_refused_unless_forced() {
    if !common::tools_or_skip("luks1_and_luks2_are_refused_unless_forced", &["cryptsetup"]) {
        return;
    }
    for (version, size) in [("luks1", 32u64 << 20), ("luks2", 32 << 20)] {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), "l0.img", size);
        // A cheap key derivation: the test is about the header, not its strength.
        let mut args = vec!["luksFormat", "-q", "--batch-mode", "--type", version];
        args.extend(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]);
        args.extend(["--key-file", "-", p(&img)]);
        tool("cryptsetup", &args, Some(b"not a secret"));
        let expect = format!(
            "a {} encrypted volume (magic at byte 0)",
            version.to_uppercase()
        );
        refused_everywhere_then_forced(dir.path(), &img, &expect);
    }
}

#[test]
fn an_lvm2_physical_volume_is_refused_unless_forced() {
    let test = "an_lvm2_physical_volume_is_refused_unless_forced";
    if !common::tools_or_skip(test, &["pvcreate", "losetup"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "v0.img", 32 << 20);
    // pvcreate wants a block device: a loop device over the file (needs root).
    let attach = Command::new(common::find_tool("losetup").unwrap())
        .args(["-f", "--show", p(&img)])
        .output()
        .unwrap();
    if !attach.status.success() {
        let why = String::from_utf8_lossy(&attach.stderr);
        common::skip_or_fail(test, &format!("no loop device: {}", why.trim()));
        return;
    }
    let loop_device = String::from_utf8_lossy(&attach.stdout).trim().to_string();
    let created = Command::new(common::find_tool("pvcreate").unwrap())
        .args(["-q", "-y", "-ff", &loop_device])
        .output()
        .unwrap();
    let detached = Command::new(common::find_tool("losetup").unwrap())
        .args(["-d", &loop_device])
        .status()
        .unwrap();
    assert!(
        created.status.success(),
        "pvcreate: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert!(detached.success(), "losetup -d {loop_device}");
    refused_everywhere_then_forced(
        dir.path(),
        &img,
        "an LVM2 physical volume (magic at byte 512)",
    );
}
