//! What a device already holds: a small prober for the signatures that say "this device is in
//! use" (filesystems, swap, encrypted volumes, volume managers, partition tables), so that
//! `create`, `replace`, `spare add` and `online` can refuse to overwrite them without force.
//!
//! It only reads, through [`Device::read_at`], a few hundred KiB at most, and knows each format
//! only by its magic numbers at their documented offsets (as blkid does), plus the little
//! extra needed to tell versions apart and to keep an all-zero device or random bytes from
//! looking like something.

use super::{Device, DeviceError};
use crate::error::{Error, Result};

/// A recognised signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// What it is, as a phrase to put after "holds": `an ext4 filesystem`.
    pub what: String,
    /// Byte offset on the device of the magic that identified it.
    pub offset: u64,
}

impl Signature {
    fn new(what: impl Into<String>, offset: u64) -> Self {
        Self {
            what: what.into(),
            offset,
        }
    }
}

/// How much of the device's start is read in one go: covers every fixed-offset signature
/// below (btrfs at 64 KiB, swap up to 64 KiB pages, ISO 9660 at 32 KiB) and ZFS label 0.
const HEAD_BYTES: u64 = 256 * 1024;
/// ZFS: each of the four vdev labels is 256 KiB; its uberblock array is the second half.
const ZFS_LABEL_BYTES: u64 = 256 * 1024;
const ZFS_UBERBLOCK_ARRAY: u64 = 128 * 1024;
/// Uberblocks are at least 1 KiB apart (more with a larger ashift, always a multiple of 1 KiB).
const ZFS_UBERBLOCK_STEP: u64 = 1024;
const ZFS_UBERBLOCK_MAGIC: u64 = 0x00ba_b10c;
/// Where LUKS2 may keep its secondary header (its primary may have been wiped).
const LUKS2_SECONDARY: [u64; 9] = [
    0x4000, 0x8000, 0x1_0000, 0x2_0000, 0x4_0000, 0x8_0000, 0x10_0000, 0x20_0000, 0x40_0000,
];

/// The device's first [`HEAD_BYTES`], read once; other places are read on demand.
struct Reader<'a> {
    device: &'a dyn Device,
    head: Vec<u8>,
}

impl<'a> Reader<'a> {
    fn new(device: &'a dyn Device) -> Result<Self, DeviceError> {
        let len = HEAD_BYTES.min(device.size());
        let mut head = vec![0u8; usize::try_from(len).unwrap_or(0)];
        device.read_at(0, &mut head)?;
        Ok(Self { device, head })
    }

    /// `len` bytes at `offset`, or `None` past the end of the device.
    fn bytes(&self, offset: u64, len: usize) -> Result<Option<Vec<u8>>, DeviceError> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|end| end > self.device.size()) {
            return Ok(None);
        }
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if let Some(bytes) = self.head.get(start..start.saturating_add(len)) {
            return Ok(Some(bytes.to_vec()));
        }
        let mut bytes = vec![0u8; len];
        self.device.read_at(offset, &mut bytes)?;
        Ok(Some(bytes))
    }

    /// Whether the device holds `magic` at `offset`.
    fn is(&self, offset: u64, magic: &[u8]) -> Result<bool, DeviceError> {
        Ok(self.bytes(offset, magic.len())?.as_deref() == Some(magic))
    }

    fn le16(&self, offset: u64) -> Result<Option<u16>, DeviceError> {
        Ok(self
            .bytes(offset, 2)?
            .map(|b| u16::from_le_bytes([b[0], b[1]])))
    }

    fn le32(&self, offset: u64) -> Result<u32, DeviceError> {
        Ok(self
            .bytes(offset, 4)?
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
    }
}

/// What one format's probe found.
type Probed = Result<Option<Signature>, DeviceError>;

/// The first known signature on `device`, if any. Reads, never writes.
///
/// # Errors
/// A read of the device failed.
pub fn probe(device: &dyn Device) -> Result<Option<Signature>, DeviceError> {
    let reader = Reader::new(device)?;
    let probes: [fn(&Reader<'_>) -> Probed; 14] = [
        stripestore,
        luks,
        xfs,
        ext,
        btrfs,
        ntfs_or_exfat,
        fat,
        iso9660,
        lvm2,
        swap,
        zfs,
        gpt,
        mbr,
        luks2_secondary,
    ];
    for probe in probes {
        if let Some(found) = probe(&reader)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Refuse `device` if [`probe`] finds a signature on it.
///
/// # Errors
/// [`Error::ForeignSignature`] naming what was found and where; [`Error::Io`] if the device
/// cannot be read.
pub fn refuse_signature(device: &dyn Device) -> Result<()> {
    match probe(device) {
        Ok(None) => Ok(()),
        Ok(Some(found)) => Err(Error::ForeignSignature {
            device: device.name(),
            found: found.what,
            offset: found.offset,
        }),
        Err(err) => Err(Error::Io {
            device: device.name(),
            offset: None,
            source: err.into_io(),
        }),
    }
}

fn found_if(condition: bool, what: &str, offset: u64) -> Probed {
    Ok(condition.then(|| Signature::new(what, offset)))
}

/// Copy A of our own superblock (copy B and its pool are the pool's business: see
/// `pool::open::superblock_owner`).
fn stripestore(r: &Reader<'_>) -> Probed {
    let magic = r.bytes(0, 8)?;
    found_if(
        magic.is_some_and(|m| crate::format::Superblock::has_magic(&m)),
        "a stripestore superblock",
        0,
    )
}

/// LUKS1 and LUKS2 share the magic `LUKS\xba\xbe`; a big-endian version follows.
fn luks(r: &Reader<'_>) -> Probed {
    if !r.is(0, b"LUKS\xba\xbe")? {
        return Ok(None);
    }
    let version = r
        .bytes(6, 2)?
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    let what = match version {
        1 => "a LUKS1 encrypted volume".to_string(),
        2 => "a LUKS2 encrypted volume".to_string(),
        v => format!("a LUKS encrypted volume (version {v})"),
    };
    Ok(Some(Signature::new(what, 0)))
}

/// LUKS2 keeps a second header (magic `SKUL\xba\xbe`) at one of a few fixed offsets.
fn luks2_secondary(r: &Reader<'_>) -> Probed {
    for offset in LUKS2_SECONDARY {
        if r.is(offset, b"SKUL\xba\xbe")? {
            return found_if(true, "a LUKS2 encrypted volume (secondary header)", offset);
        }
    }
    Ok(None)
}

fn xfs(r: &Reader<'_>) -> Probed {
    found_if(r.is(0, b"XFSB")?, "an XFS filesystem", 0)
}

/// ext2/3/4: superblock at 1024, magic 0xEF53 at its byte 56. The feature flags tell the
/// versions apart: a journal makes ext3, features ext3 lacks make ext4.
fn ext(r: &Reader<'_>) -> Probed {
    const SUPER: u64 = 1024;
    if r.le16(SUPER + 56)? != Some(0xEF53) {
        return Ok(None);
    }
    // s_log_block_size: blocks of 1 KiB << n, at most 64 KiB. Anything else is not ext.
    if r.le32(SUPER + 24)? > 6 {
        return Ok(None);
    }
    let compat = r.le32(SUPER + 0x5C)?;
    let incompat = r.le32(SUPER + 0x60)?;
    let ro_compat = r.le32(SUPER + 0x64)?;
    // What ext3 knows: filetype, recover, journal_dev, meta_bg / sparse_super, large_file,
    // btree_dir. Any other feature is ext4's.
    const EXT3_INCOMPAT: u32 = 0x2 | 0x4 | 0x8 | 0x10;
    const EXT3_RO_COMPAT: u32 = 0x1 | 0x2 | 0x4;
    const HAS_JOURNAL: u32 = 0x4;
    let what = if incompat & !EXT3_INCOMPAT != 0 || ro_compat & !EXT3_RO_COMPAT != 0 {
        "an ext4 filesystem"
    } else if compat & HAS_JOURNAL != 0 {
        "an ext3 filesystem"
    } else {
        "an ext2 filesystem"
    };
    found_if(true, what, SUPER + 56)
}

fn btrfs(r: &Reader<'_>) -> Probed {
    const OFFSET: u64 = 0x1_0000 + 0x40;
    found_if(r.is(OFFSET, b"_BHRfS_M")?, "a btrfs filesystem", OFFSET)
}

fn ntfs_or_exfat(r: &Reader<'_>) -> Probed {
    if r.is(3, b"NTFS    ")? {
        return found_if(true, "an NTFS filesystem", 3);
    }
    found_if(r.is(3, b"EXFAT   ")?, "an exFAT filesystem", 3)
}

/// FAT12/16 name their type at byte 54 of the boot sector, FAT32 at byte 82; the sector ends
/// with 0x55AA (which an MBR has too, so this runs first).
fn fat(r: &Reader<'_>) -> Probed {
    if !r.is(510, &[0x55, 0xAA])? {
        return Ok(None);
    }
    if r.is(82, b"FAT32   ")? {
        return found_if(true, "a FAT32 filesystem", 82);
    }
    for name in [&b"FAT12   "[..], b"FAT16   ", b"FAT     "] {
        if r.is(54, name)? {
            return found_if(true, "a FAT filesystem", 54);
        }
    }
    Ok(None)
}

fn iso9660(r: &Reader<'_>) -> Probed {
    const OFFSET: u64 = 32769;
    found_if(r.is(OFFSET, b"CD001")?, "an ISO 9660 filesystem", OFFSET)
}

/// An LVM2 physical volume: `LABELONE` in one of the first four 512-byte sectors, with the
/// label type `LVM2 001` 24 bytes further.
fn lvm2(r: &Reader<'_>) -> Probed {
    for sector in 0..4u64 {
        let offset = sector * 512;
        if r.is(offset, b"LABELONE")? && r.is(offset + 24, b"LVM2 001")? {
            return found_if(true, "an LVM2 physical volume", offset);
        }
    }
    Ok(None)
}

/// Linux swap: its signature ends the first page, whatever the page size (4 KiB to 64 KiB).
fn swap(r: &Reader<'_>) -> Probed {
    for page in [4096u64, 8192, 16384, 32768, 65536] {
        let offset = page - 10;
        if r.is(offset, b"SWAPSPACE2")? {
            return found_if(true, "a Linux swap area", offset);
        }
        if r.is(offset, b"SWAP-SPACE")? {
            return found_if(true, "a Linux swap area (version 1)", offset);
        }
    }
    Ok(None)
}

/// ZFS: an uberblock magic (either byte order) in the uberblock array of any of the four vdev
/// labels, two at the start of the device and two at its end.
fn zfs(r: &Reader<'_>) -> Probed {
    let size = r.device.size() - r.device.size() % ZFS_LABEL_BYTES;
    let mut labels = vec![0, ZFS_LABEL_BYTES];
    if size >= 4 * ZFS_LABEL_BYTES {
        labels.extend([size - 2 * ZFS_LABEL_BYTES, size - ZFS_LABEL_BYTES]);
    }
    let len = usize::try_from(ZFS_LABEL_BYTES - ZFS_UBERBLOCK_ARRAY).unwrap_or(0);
    let step = usize::try_from(ZFS_UBERBLOCK_STEP).unwrap_or(1024);
    for label in labels {
        let array = label + ZFS_UBERBLOCK_ARRAY;
        let Some(bytes) = r.bytes(array, len)? else {
            continue;
        };
        for (i, uberblock) in bytes.chunks_exact(step).enumerate() {
            let mut magic = [0u8; 8];
            magic.copy_from_slice(&uberblock[..8]);
            if u64::from_le_bytes(magic) == ZFS_UBERBLOCK_MAGIC
                || u64::from_be_bytes(magic) == ZFS_UBERBLOCK_MAGIC
            {
                return found_if(
                    true,
                    "a ZFS vdev label",
                    array + i as u64 * ZFS_UBERBLOCK_STEP,
                );
            }
        }
    }
    Ok(None)
}

/// GPT: the header `EFI PART` at LBA 1, for 512-byte or 4 KiB logical blocks.
fn gpt(r: &Reader<'_>) -> Probed {
    for offset in [512u64, 4096] {
        if r.is(offset, b"EFI PART")? {
            return found_if(true, "a GPT partition table", offset);
        }
    }
    Ok(None)
}

/// An MBR: 0x55AA at 510, every entry's boot flag 0x00 or 0x80, and at least one entry in use
/// (a partition type other than 0). An all-zero device has none of it.
fn mbr(r: &Reader<'_>) -> Probed {
    if !r.is(510, &[0x55, 0xAA])? {
        return Ok(None);
    }
    let Some(table) = r.bytes(446, 64)? else {
        return Ok(None);
    };
    let entries: Vec<&[u8]> = table.chunks_exact(16).collect();
    if entries.iter().any(|e| e[0] != 0 && e[0] != 0x80) {
        return Ok(None);
    }
    let types: Vec<u8> = entries.iter().map(|e| e[4]).filter(|t| *t != 0).collect();
    if types.is_empty() {
        return Ok(None);
    }
    let what = if types.contains(&0xEE) {
        "a protective MBR of a GPT partition table (the GPT header is missing)"
    } else {
        "an MBR partition table"
    };
    found_if(true, what, 510)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;

    const SIZE: u64 = 4 << 20;

    fn device_with(pieces: &[(u64, &[u8])]) -> MemDevice {
        let device = MemDevice::new("e0", SIZE);
        for (offset, bytes) in pieces {
            device.write_at(*offset, bytes).unwrap();
        }
        device
    }

    fn found(pieces: &[(u64, &[u8])]) -> Option<Signature> {
        probe(&device_with(pieces)).unwrap()
    }

    fn assert_found(pieces: &[(u64, &[u8])], what: &str, offset: u64) {
        assert_eq!(
            found(pieces),
            Some(Signature::new(what, offset)),
            "{pieces:?}"
        );
    }

    #[test]
    fn an_all_zero_device_and_random_bytes_hold_nothing() {
        assert_eq!(found(&[]), None);
        let mut rng = crate::testing::rng(7);
        let noise = crate::testing::random_bytes(&mut rng, SIZE as usize);
        assert_eq!(found(&[(0, &noise)]), None);
        // Smaller than any offset probed: nothing, and no error.
        assert_eq!(probe(&MemDevice::new("tiny", 100)).unwrap(), None);
    }

    #[test]
    fn the_stripestore_superblock_is_recognised() {
        let mems = crate::testing::mem_devices(2, SIZE);
        let layout = "mirror:2".parse().unwrap();
        let pool = crate::Pool::create(
            crate::testing::shared(&mems),
            vec![],
            &crate::CreateOptions::new(layout),
        )
        .unwrap();
        pool.close().unwrap();
        assert_eq!(
            probe(mems[1].as_ref()).unwrap(),
            Some(Signature::new("a stripestore superblock", 0))
        );
    }

    #[test]
    fn ext2_ext3_and_ext4_are_told_apart() {
        let magic = 0xEF53u16.to_le_bytes();
        assert_found(&[(1080, &magic)], "an ext2 filesystem", 1080);
        let journal = 0x4u32.to_le_bytes();
        assert_found(
            &[(1080, &magic), (1024 + 0x5C, &journal)],
            "an ext3 filesystem",
            1080,
        );
        let extents = 0x40u32.to_le_bytes();
        assert_found(
            &[
                (1080, &magic),
                (1024 + 0x5C, &journal),
                (1024 + 0x60, &extents),
            ],
            "an ext4 filesystem",
            1080,
        );
        let metadata_csum = 0x400u32.to_le_bytes();
        assert_found(
            &[(1080, &magic), (1024 + 0x64, &metadata_csum)],
            "an ext4 filesystem",
            1080,
        );
        // The magic with an impossible block size is not ext.
        assert_eq!(
            found(&[(1080, &magic), (1024 + 24, &40u32.to_le_bytes())]),
            None
        );
    }

    #[test]
    fn xfs_btrfs_iso9660_ntfs_exfat_are_recognised() {
        assert_found(&[(0, b"XFSB")], "an XFS filesystem", 0);
        assert_found(&[(0x10040, b"_BHRfS_M")], "a btrfs filesystem", 0x10040);
        assert_found(&[(32769, b"CD001")], "an ISO 9660 filesystem", 32769);
        assert_found(&[(3, b"NTFS    ")], "an NTFS filesystem", 3);
        assert_found(&[(3, b"EXFAT   ")], "an exFAT filesystem", 3);
    }

    #[test]
    fn fat_needs_its_name_and_the_boot_signature() {
        let boot = [0x55u8, 0xAA];
        assert_found(&[(54, b"FAT16   "), (510, &boot)], "a FAT filesystem", 54);
        assert_found(&[(82, b"FAT32   "), (510, &boot)], "a FAT32 filesystem", 82);
        assert_eq!(found(&[(54, b"FAT16   ")]), None);
    }

    #[test]
    fn swap_is_found_for_every_page_size_and_both_versions() {
        for page in [4096u64, 8192, 16384, 32768, 65536] {
            assert_found(
                &[(page - 10, b"SWAPSPACE2")],
                "a Linux swap area",
                page - 10,
            );
            assert_found(
                &[(page - 10, b"SWAP-SPACE")],
                "a Linux swap area (version 1)",
                page - 10,
            );
        }
        // Not at a page end: nothing.
        assert_eq!(found(&[(4000, b"SWAPSPACE2")]), None);
    }

    #[test]
    fn luks1_and_luks2_are_recognised_also_by_the_secondary_header() {
        assert_found(
            &[(0, b"LUKS\xba\xbe\x00\x01")],
            "a LUKS1 encrypted volume",
            0,
        );
        assert_found(
            &[(0, b"LUKS\xba\xbe\x00\x02")],
            "a LUKS2 encrypted volume",
            0,
        );
        assert_found(
            &[(0x4000, b"SKUL\xba\xbe\x00\x02")],
            "a LUKS2 encrypted volume (secondary header)",
            0x4000,
        );
        // Beyond the first 256 KiB: read on demand.
        assert_found(
            &[(0x20_0000, b"SKUL\xba\xbe\x00\x02")],
            "a LUKS2 encrypted volume (secondary header)",
            0x20_0000,
        );
    }

    #[test]
    fn an_lvm2_label_is_found_in_any_of_the_first_four_sectors() {
        for sector in 0..4u64 {
            let at = sector * 512;
            assert_found(
                &[(at, b"LABELONE"), (at + 24, b"LVM2 001")],
                "an LVM2 physical volume",
                at,
            );
        }
        assert_eq!(found(&[(512, b"LABELONE")]), None);
    }

    #[test]
    fn a_zfs_uberblock_is_found_in_any_label_in_either_byte_order() {
        let little = ZFS_UBERBLOCK_MAGIC.to_le_bytes();
        let big = ZFS_UBERBLOCK_MAGIC.to_be_bytes();
        let slot = 5 * 1024;
        for label in [
            0,
            ZFS_LABEL_BYTES,
            SIZE - 2 * ZFS_LABEL_BYTES,
            SIZE - ZFS_LABEL_BYTES,
        ] {
            let at = label + ZFS_UBERBLOCK_ARRAY + slot;
            assert_found(&[(at, &little)], "a ZFS vdev label", at);
            assert_found(&[(at, &big)], "a ZFS vdev label", at);
        }
        // Not at an uberblock boundary: nothing.
        assert_eq!(found(&[(ZFS_UBERBLOCK_ARRAY + 8, &little)]), None);
    }

    #[test]
    fn partition_tables_need_a_used_entry_and_gpt_wins_over_its_protective_mbr() {
        let boot = [0x55u8, 0xAA];
        // Signature alone, all entries empty: not a partition table.
        assert_eq!(found(&[(510, &boot)]), None);
        let mut linux = [0u8; 16];
        linux[4] = 0x83;
        assert_found(
            &[(446 + 16, &linux), (510, &boot)],
            "an MBR partition table",
            510,
        );
        // A bad boot flag: not an MBR.
        let mut bad = linux;
        bad[0] = 0x12;
        assert_eq!(found(&[(446, &bad), (510, &boot)]), None);
        let mut protective = [0u8; 16];
        protective[4] = 0xEE;
        assert_found(
            &[(446, &protective), (510, &boot), (512, b"EFI PART")],
            "a GPT partition table",
            512,
        );
        assert_found(&[(4096, b"EFI PART")], "a GPT partition table", 4096);
        assert_found(
            &[(446, &protective), (510, &boot)],
            "a protective MBR of a GPT partition table (the GPT header is missing)",
            510,
        );
    }

    #[test]
    fn refusal_names_the_device_what_and_where_and_reads_only() {
        let device = device_with(&[(0x10040, b"_BHRfS_M")]);
        let before = device.image();
        let err = refuse_signature(&device).unwrap_err();
        assert_eq!(
            err.to_string(),
            "e0 holds a btrfs filesystem (magic at byte 65600); use --force to overwrite"
        );
        assert_eq!(device.image(), before);
        refuse_signature(&MemDevice::new("blank", SIZE)).unwrap();
    }
}
