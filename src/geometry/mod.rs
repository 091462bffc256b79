//! Placement arithmetic: where every superblock, map and chunk byte lives on every device.
//! Pure functions, no I/O, no mutable state.
//!
//! Device layout (all offsets 4 KiB aligned, see `docs/FORMAT.md`):
//! ```text
//! [superblock A 64K][checkpoint 0][checkpoint 1][map log][data rows ...][superblock B 64K]
//! ```
//! The data area is cut into *cells* of `chunk_bytes`. Physical slot `s` of a stripe of width
//! `W` uses cells `s*W .. s*W+W` of a virtual row-major grid over the `D` devices; for Reed-Solomon
//! each row is rotated by its row number so parity moves across devices. Mirror and raid10 use
//! one row per slot without rotation so raid10's mirror groups stay fixed pairs of devices.

mod domains;
mod layout;

pub use domains::{check_domain_name, check_domains, DOMAIN_NAME_MAX};
pub use layout::Layout;

use crate::error::{Error, Result};
use crate::types::{round_up, DeviceIndex, ShardIndex, SlotId, SECTOR_BYTES};

/// Bytes reserved for each superblock copy.
pub const SUPERBLOCK_BYTES: u64 = 64 * 1024;
/// Bytes of the header that starts a checkpoint.
pub const CHECKPOINT_HEADER_BYTES: u64 = SECTOR_BYTES;
/// Smallest and largest map log.
const LOG_BYTES_MIN: u64 = 64 * 1024;
const LOG_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// The pool's complete placement description, derived from layout, device count, chunk size
/// and device size. Two pools with the same inputs have the same geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// Redundancy scheme.
    pub layout: Layout,
    /// Number of data member devices (spares excluded).
    pub devices: usize,
    /// Bytes per chunk (one shard of one stripe on one device).
    pub chunk_bytes: u64,
    /// Bytes per checksum block: each shard has one crc32c per block (divides the chunk).
    pub checksum_bytes: u64,
    /// Bytes used on each device (the smallest member's size).
    pub device_bytes: u64,
    /// Offsets of the two checkpoint areas.
    pub checkpoint_offsets: [u64; 2],
    /// Bytes of one checkpoint area.
    pub checkpoint_bytes: u64,
    /// Offset of the map log.
    pub log_offset: u64,
    /// Bytes of the map log.
    pub log_bytes: u64,
    /// Offset of the first data row.
    pub data_offset: u64,
    /// Chunk rows per device.
    pub rows: u64,
    /// Physical stripe slots.
    pub slots: u64,
    /// Logical stripes (slots minus the copy-on-write reserve).
    pub stripes: u64,
    /// Format version 4: uberblock slots in each of the two rings (0 for versions 1–3).
    pub uberblock_slots: u64,
}

/// Bytes of one uberblock slot (format version 4).
pub const UBERBLOCK_SLOT_BYTES: u64 = 4096;

impl Geometry {
    /// Compute the geometry.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad chunk or checksum block size or device count for the
    /// layout, [`Error::DeviceTooSmall`] when not even one stripe fits.
    pub fn new(
        layout: Layout,
        devices: usize,
        chunk_bytes: u64,
        checksum_bytes: u64,
        device_bytes: u64,
    ) -> Result<Self> {
        layout.check_device_count(devices)?;
        if chunk_bytes < SECTOR_BYTES
            || !chunk_bytes.is_multiple_of(SECTOR_BYTES)
            || chunk_bytes > 16 * 1024 * 1024
        {
            return Err(Error::InvalidConfig(format!(
                "chunk size {chunk_bytes} must be a multiple of 4096 between 4 KiB and 16 MiB"
            )));
        }
        if checksum_bytes < SECTOR_BYTES
            || !checksum_bytes.is_multiple_of(SECTOR_BYTES)
            || !chunk_bytes.is_multiple_of(checksum_bytes)
        {
            return Err(Error::InvalidConfig(format!(
                "checksum block {checksum_bytes} must be a multiple of 4096 that divides the chunk size {chunk_bytes}"
            )));
        }
        let device_bytes = device_bytes - device_bytes % SECTOR_BYTES;
        let width = layout.width(devices) as u64;
        let crcs_per_entry =
            layout.width(devices) * usize::try_from(chunk_bytes / checksum_bytes).unwrap_or(0);
        let entry_bytes = Self::entry_bytes_for(crcs_per_entry);
        // Upper bound on stripes, ignoring metadata: sizes the checkpoint generously.
        let raw_rows = device_bytes.saturating_sub(2 * SUPERBLOCK_BYTES) / chunk_bytes;
        let stripes_upper = raw_rows * devices as u64 / width;
        let checkpoint_bytes = round_up(
            CHECKPOINT_HEADER_BYTES + stripes_upper * entry_bytes,
            SECTOR_BYTES,
        );
        let log_bytes =
            round_up(checkpoint_bytes / 2, SECTOR_BYTES).clamp(LOG_BYTES_MIN, LOG_BYTES_MAX);
        let checkpoint_offsets = [SUPERBLOCK_BYTES, SUPERBLOCK_BYTES + checkpoint_bytes];
        let log_offset = SUPERBLOCK_BYTES + 2 * checkpoint_bytes;
        let data_offset = round_up(log_offset + log_bytes, SUPERBLOCK_BYTES);
        let data_end = device_bytes.saturating_sub(SUPERBLOCK_BYTES);
        let rows = data_end.saturating_sub(data_offset) / chunk_bytes;
        let slots = rows * devices as u64 / width;
        // Copy-on-write needs free slots to write into before the old ones are released.
        let reserve = (slots / 32).max(8).min(slots / 2);
        let stripes = slots - reserve;
        if stripes == 0 {
            let needed = data_offset + SUPERBLOCK_BYTES + 16 * width * chunk_bytes;
            return Err(Error::DeviceTooSmall {
                device: "smallest member".into(),
                size: device_bytes,
                needed,
            });
        }
        let geometry = Self {
            layout,
            devices,
            chunk_bytes,
            checksum_bytes,
            device_bytes,
            checkpoint_offsets,
            checkpoint_bytes,
            log_offset,
            log_bytes,
            data_offset,
            rows,
            slots,
            stripes,
            uberblock_slots: 0,
        };
        assert!(
            CHECKPOINT_HEADER_BYTES + stripes * geometry.entry_bytes() <= checkpoint_bytes,
            "checkpoint area must hold every map entry"
        );
        Ok(geometry)
    }

    fn entry_bytes_for(crcs: usize) -> u64 {
        16 + 4 * crcs as u64
    }

    /// Shards per stripe.
    #[must_use]
    pub fn width(&self) -> usize {
        self.layout.width(self.devices)
    }
    /// Data chunks per stripe.
    #[must_use]
    pub fn data_chunks(&self) -> usize {
        self.layout.data_chunks(self.devices)
    }
    /// Device losses the layout always survives.
    #[must_use]
    pub fn tolerance(&self) -> usize {
        self.layout.tolerance()
    }
    /// Bytes of user data per stripe.
    #[must_use]
    pub fn stripe_data_bytes(&self) -> u64 {
        self.data_chunks() as u64 * self.chunk_bytes
    }
    /// Bytes of the logical volume.
    #[must_use]
    pub fn volume_bytes(&self) -> u64 {
        self.stripes * self.stripe_data_bytes()
    }
    /// Bytes of one encoded map entry: slot, generation and one crc per checksum block of
    /// every shard.
    #[must_use]
    pub fn entry_bytes(&self) -> u64 {
        Self::entry_bytes_for(self.crcs_per_entry())
    }
    /// Checksums in one map entry: one per checksum block of every shard.
    #[must_use]
    pub fn crcs_per_entry(&self) -> usize {
        self.width() * self.checksum_blocks_per_chunk()
    }
    /// Checksum blocks in one chunk (one shard).
    #[must_use]
    pub fn checksum_blocks_per_chunk(&self) -> usize {
        usize::try_from(self.chunk_bytes / self.checksum_bytes.max(1)).unwrap_or(0)
    }
    /// End of the data area (the last 64 KiB of `device_bytes` are kept for superblock B, and
    /// in format version 4 uberblock ring B sits just below it).
    #[must_use]
    pub fn data_end(&self) -> u64 {
        self.device_bytes - SUPERBLOCK_BYTES - self.uberblock_slots * UBERBLOCK_SLOT_BYTES
    }

    /// The geometry of a format-version-4 pool (docs/FORMAT.md, V4.2): superblock A, uberblock
    /// ring A, two intent-log halves of `log_half_bytes`, the data rows, uberblock ring B,
    /// superblock B. The fixed areas do not grow with the device. `stripes` is the number of
    /// slots (version 4 sizes the volume by blocks, above this layer).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a chunk that is not a multiple of 16 KiB, a ring of fewer
    /// than 4 slots or a log half that is not whole 4 KiB blocks of at least 16 KiB;
    /// [`Error::DeviceTooSmall`] when fewer than 16 slots fit.
    pub fn new_v4(
        layout: Layout,
        devices: usize,
        chunk_bytes: u64,
        device_bytes: u64,
        uberblock_slots: u64,
        log_half_bytes: u64,
    ) -> Result<Self> {
        layout.check_device_count(devices)?;
        if chunk_bytes == 0
            || !chunk_bytes.is_multiple_of(META_PAGE_BYTES)
            || chunk_bytes > 16 * 1024 * 1024
        {
            return Err(Error::InvalidConfig(format!(
                "chunk size {chunk_bytes} must be a multiple of 16 KiB, at most 16 MiB, for format version 4"
            )));
        }
        if !(4..=4096).contains(&uberblock_slots) {
            return Err(Error::InvalidConfig(format!(
                "{uberblock_slots} uberblock slots: between 4 and 4096"
            )));
        }
        if log_half_bytes < 4 * SECTOR_BYTES
            || !log_half_bytes.is_multiple_of(SECTOR_BYTES)
            || log_half_bytes > 1 << 30
        {
            return Err(Error::InvalidConfig(format!(
                "log half of {log_half_bytes} bytes: whole 4 KiB blocks, 16 KiB to 1 GiB"
            )));
        }
        let device_bytes = device_bytes - device_bytes % SECTOR_BYTES;
        let width = layout.width(devices) as u64;
        let ring_bytes = uberblock_slots * UBERBLOCK_SLOT_BYTES;
        let log_offset = SUPERBLOCK_BYTES + ring_bytes;
        let data_offset = round_up(log_offset + 2 * log_half_bytes, SUPERBLOCK_BYTES);
        let data_end = device_bytes.saturating_sub(SUPERBLOCK_BYTES + ring_bytes);
        let rows = data_end.saturating_sub(data_offset) / chunk_bytes;
        let slots = rows * devices as u64 / width;
        if slots < 16 {
            return Err(Error::DeviceTooSmall {
                device: "smallest member".into(),
                size: device_bytes,
                needed: data_offset + SUPERBLOCK_BYTES + ring_bytes + 16 * width * chunk_bytes,
            });
        }
        Ok(Self {
            layout,
            devices,
            chunk_bytes,
            checksum_bytes: SECTOR_BYTES,
            device_bytes,
            checkpoint_offsets: [0, 0],
            checkpoint_bytes: 0,
            log_offset,
            log_bytes: 2 * log_half_bytes,
            data_offset,
            rows,
            slots,
            stripes: slots,
            uberblock_slots,
        })
    }

    /// Byte offsets of uberblock rings A and B (format version 4).
    #[must_use]
    pub fn uberblock_rings(&self) -> [u64; 2] {
        [SUPERBLOCK_BYTES, self.data_end()]
    }

    /// Byte offsets of intent-log halves 0 and 1 (format version 4).
    #[must_use]
    pub fn log_halves(&self) -> [u64; 2] {
        [self.log_offset, self.log_offset + self.log_half_bytes()]
    }

    /// Bytes of one intent-log half (format version 4).
    #[must_use]
    pub fn log_half_bytes(&self) -> u64 {
        self.log_bytes / 2
    }

    /// Which data chunk a shard carries (`None` for a parity shard).
    #[must_use]
    pub fn shard_data_chunk(&self, shard: ShardIndex) -> Option<usize> {
        match self.layout {
            Layout::Mirror { copies } | Layout::Raid10 { copies } => Some(shard.0 / copies),
            Layout::ReedSolomon { data, .. } => (shard.0 < data).then_some(shard.0),
        }
    }

    /// Device and byte offset of one shard of one physical slot.
    #[must_use]
    pub fn shard_location(&self, slot: SlotId, shard: ShardIndex) -> (DeviceIndex, u64) {
        let width = self.width() as u64;
        assert!(slot.0 < self.slots, "slot {slot} out of range");
        assert!((shard.0 as u64) < width, "shard out of range");
        let devices = self.devices as u64;
        let (device, row) = match self.layout {
            Layout::Mirror { .. } | Layout::Raid10 { .. } => (shard.0 as u64, slot.0),
            Layout::ReedSolomon { .. } => {
                // Widen to u128: slot * width can exceed u64 only for absurd sizes, but be exact.
                let cell = u128::from(slot.0) * u128::from(width) + shard.0 as u128;
                let row = cell / u128::from(devices);
                let device = (cell + row) % u128::from(devices);
                (
                    u64::try_from(device).unwrap_or(0),
                    u64::try_from(row).unwrap_or(u64::MAX),
                )
            }
        };
        assert!(row < self.rows, "row beyond the data area");
        (
            DeviceIndex(usize::try_from(device).unwrap_or(0)),
            self.data_offset + row * self.chunk_bytes,
        )
    }
}

/// Bytes of a metadata page of format version 4.
pub const META_PAGE_BYTES: u64 = 16 * 1024;

/// Where the copies of metadata pages live in a slot given to metadata (format version 4,
/// docs/FORMAT.md V4.2): each page is `copies = tolerance + 1` whole copies on distinct members,
/// never erasure-coded, so reading it is one 16 KiB device read.
impl Geometry {
    /// Copies of every metadata page: one more than the devices the layout may lose.
    #[must_use]
    pub fn metadata_copies(&self) -> usize {
        self.tolerance() + 1
    }

    /// Metadata pages one slot holds (0 when the chunk is not a multiple of 16 KiB, which a
    /// version-4 pool refuses at create).
    #[must_use]
    pub fn pages_per_slot(&self) -> u64 {
        if !self.chunk_bytes.is_multiple_of(META_PAGE_BYTES) {
            return 0;
        }
        (self.width() / self.metadata_copies()) as u64 * (self.chunk_bytes / META_PAGE_BYTES)
    }

    /// Metadata page numbers the data area can hold.
    #[must_use]
    pub fn metadata_pages(&self) -> u64 {
        self.slots.saturating_mul(self.pages_per_slot())
    }

    /// Device and byte offset of every copy of metadata page `mpn`, copy 0 first, or `None`
    /// when `mpn` is beyond the data area. Page `p` of slot `s` has copy `c` in shard
    /// `(p div pages-per-chunk) * copies + c` at `(p mod pages-per-chunk) * 16 KiB` into it.
    #[must_use]
    pub fn page_copies(&self, mpn: u64) -> Option<Vec<(DeviceIndex, u64)>> {
        let per_slot = self.pages_per_slot();
        if per_slot == 0 || mpn >= self.metadata_pages() {
            return None;
        }
        let (slot, page) = (mpn / per_slot, mpn % per_slot);
        let per_chunk = self.chunk_bytes / META_PAGE_BYTES;
        let copies = self.metadata_copies() as u64;
        Some(
            (0..copies)
                .map(|copy| {
                    let shard = usize::try_from((page / per_chunk) * copies + copy).unwrap_or(0);
                    let (device, offset) = self.shard_location(SlotId(slot), ShardIndex(shard));
                    (device, offset + (page % per_chunk) * META_PAGE_BYTES)
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn all_layouts() -> Vec<(Layout, usize)> {
        vec![
            ("mirror:2".parse().unwrap(), 2),
            ("mirror:3".parse().unwrap(), 3),
            ("raid10:2".parse().unwrap(), 4),
            ("raid10:2".parse().unwrap(), 6),
            ("rs:4+2".parse().unwrap(), 6),
            ("rs:4+2".parse().unwrap(), 7),
            ("rs:2+1".parse().unwrap(), 5),
            ("rs:8+3".parse().unwrap(), 11),
        ]
    }

    #[test]
    fn shards_of_a_slot_are_on_distinct_devices_and_cells_never_overlap() {
        for (layout, devices) in all_layouts() {
            let geometry = Geometry::new(layout, devices, 4096, 4096, 8 << 20).unwrap();
            let mut cells = HashSet::new();
            for slot in 0..geometry.slots {
                let mut used = HashSet::new();
                for shard in 0..geometry.width() {
                    let (device, offset) = geometry.shard_location(SlotId(slot), ShardIndex(shard));
                    assert!(used.insert(device), "{layout} slot {slot}: device reused");
                    assert!(cells.insert((device, offset)), "{layout}: cell used twice");
                    assert!(offset >= geometry.data_offset);
                    assert!(offset + geometry.chunk_bytes <= geometry.data_end());
                    assert_eq!(offset % 4096, 0);
                }
            }
        }
    }

    #[test]
    fn reed_solomon_parity_rotates() {
        let geometry = Geometry::new("rs:4+2".parse().unwrap(), 6, 4096, 4096, 8 << 20).unwrap();
        let mut parity_devices = HashSet::new();
        for slot in 0..12 {
            parity_devices.insert(geometry.shard_location(SlotId(slot), ShardIndex(4)).0);
        }
        assert_eq!(parity_devices.len(), 6);
    }

    #[test]
    fn raid10_keeps_mirror_groups_fixed() {
        let geometry = Geometry::new("raid10:2".parse().unwrap(), 4, 4096, 4096, 8 << 20).unwrap();
        for slot in 0..geometry.slots {
            assert_eq!(
                geometry.shard_location(SlotId(slot), ShardIndex(3)).0,
                DeviceIndex(3)
            );
        }
        assert_eq!(geometry.shard_data_chunk(ShardIndex(3)), Some(1));
        assert_eq!(geometry.data_chunks(), 2);
    }

    #[test]
    fn bad_configurations_are_errors() {
        let rs: Layout = "rs:4+2".parse().unwrap();
        assert!(Geometry::new(rs, 5, 4096, 4096, 8 << 20).is_err());
        assert!(Geometry::new(rs, 6, 1000, 4096, 8 << 20).is_err());
        assert!(matches!(
            Geometry::new(rs, 6, 4096, 4096, 200 * 1024),
            Err(Error::DeviceTooSmall { .. })
        ));
        // The checksum block must divide the chunk and be whole sectors.
        assert!(Geometry::new(rs, 6, 16384, 8192 + 4096, 8 << 20).is_err());
        assert!(Geometry::new(rs, 6, 16384, 2048, 8 << 20).is_err());
        assert!(Geometry::new(rs, 6, 16384, 32768, 8 << 20).is_err());
        let geometry = Geometry::new(rs, 6, 16384, 4096, 8 << 20).unwrap();
        assert_eq!(geometry.crcs_per_entry(), 24);
        assert_eq!(geometry.entry_bytes(), 16 + 4 * 24);
    }
    #[test]
    fn version_4_fixed_areas_do_not_grow_with_the_device_and_do_not_overlap() {
        let rs: Layout = "rs:4+2".parse().unwrap();
        let small = Geometry::new_v4(rs, 6, 16384, 64 << 20, 128, 8 << 20).unwrap();
        let big = Geometry::new_v4(rs, 6, 16384, 4 << 40, 128, 8 << 20).unwrap();
        assert_eq!(small.data_offset, big.data_offset);
        let fixed = big.data_offset + (big.device_bytes - big.data_end());
        assert!(fixed < 18 << 20, "fixed areas {fixed}");
        for g in [&small, &big] {
            let [a, b] = g.uberblock_rings();
            assert_eq!(a, SUPERBLOCK_BYTES);
            assert!(a + 128 * 4096 <= g.log_offset);
            assert!(g.log_offset + g.log_bytes <= g.data_offset);
            assert!(g.data_offset + g.rows * g.chunk_bytes <= b);
            assert_eq!(b + 128 * 4096 + SUPERBLOCK_BYTES, g.device_bytes);
        }
        assert!(Geometry::new_v4(rs, 6, 4096, 64 << 20, 128, 8 << 20).is_err());
        assert!(Geometry::new_v4(rs, 6, 16384, 64 << 20, 2, 8 << 20).is_err());
        assert!(Geometry::new_v4(rs, 6, 16384, 64 << 20, 4, 1000).is_err());
        assert!(matches!(
            Geometry::new_v4(rs, 6, 16384, 256 << 10, 4, 16384),
            Err(Error::DeviceTooSmall { .. })
        ));
    }

    #[test]
    fn metadata_page_copies_are_on_distinct_devices_and_never_overlap() {
        let mut layouts = all_layouts();
        layouts.extend([
            ("raid10:3".parse().unwrap(), 6),
            ("raid10:4".parse().unwrap(), 8),
            ("rs:4+2".parse().unwrap(), 9),
        ]);
        for (layout, devices) in layouts {
            for chunk in [16384, 32768] {
                let geometry = Geometry::new(layout, devices, chunk, 4096, 16 << 20).unwrap();
                let copies = geometry.metadata_copies();
                assert_eq!(copies, geometry.tolerance() + 1);
                assert!(
                    geometry.pages_per_slot() >= 1,
                    "{layout}: no page fits a slot"
                );
                let mut places = HashSet::new();
                for mpn in 0..geometry.metadata_pages() {
                    let found = geometry.page_copies(mpn).unwrap();
                    assert_eq!(found.len(), copies);
                    let devices: HashSet<_> = found.iter().map(|(d, _)| *d).collect();
                    assert_eq!(
                        devices.len(),
                        copies,
                        "{layout} page {mpn}: a device holds two copies"
                    );
                    for (device, offset) in found {
                        assert!(
                            places.insert((device, offset)),
                            "{layout}: two pages at one place"
                        );
                        assert!(offset >= geometry.data_offset);
                        assert!(offset + META_PAGE_BYTES <= geometry.data_end());
                    }
                }
                assert_eq!(geometry.page_copies(geometry.metadata_pages()), None);
            }
        }
        let rs42 = Geometry::new("rs:4+2".parse().unwrap(), 6, 16384, 4096, 16 << 20).unwrap();
        assert_eq!((rs42.metadata_copies(), rs42.pages_per_slot()), (3, 2));
        let rs83 = Geometry::new("rs:8+3".parse().unwrap(), 11, 16384, 4096, 16 << 20).unwrap();
        assert_eq!((rs83.metadata_copies(), rs83.pages_per_slot()), (4, 2));
        let mirror = Geometry::new("mirror:3".parse().unwrap(), 3, 16384, 4096, 16 << 20).unwrap();
        assert_eq!((mirror.metadata_copies(), mirror.pages_per_slot()), (3, 1));
        let small = Geometry::new("rs:4+2".parse().unwrap(), 6, 4096, 4096, 16 << 20).unwrap();
        assert_eq!((small.pages_per_slot(), small.page_copies(0)), (0, None));
    }
}
