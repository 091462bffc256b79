//! Map leaves (level-1 pages of block pointers) in their two encodings (docs/FORMAT.md V4.17):
//! **plain**, 1024 block pointers of 16 bytes as every other pointer page (pools made before
//! V4.17), and **sectored**, four 4 KiB sectors of 256 records of 15 bytes (the pointer
//! without its kind byte, which a leaf implies) and a crc32c per sector seeded with what the
//! parent pointer names, its crc included, so that one sector can be read and verified alone.
//! The parent's crc of a sectored leaf is computed with the four sector crcs read as zero: a
//! crc over bytes followed by their own crc no longer depends on those bytes (review of V4.17,
//! finding 1), so it must not cover them.
//!
//! This module owns the byte layout of a leaf and of a sector, their seeds and checks. It does
//! not read or write devices and knows nothing of caches: the tree (`meta::tree`) and the page
//! store (`meta::store`) decide when a sector is enough.

use super::page::{PageMismatch, PageSeed, PAGE_BYTES, POINTERS_PER_PAGE};
use super::pointer::{BlockPointer, Tree, ADDRESS_HOLE, MAX_ADDRESS, MAX_BIRTH};

/// Bytes of one sector of a sectored leaf.
pub const SECTOR_BYTES: usize = 4096;
/// Sectors of a leaf.
pub const SECTORS_PER_LEAF: usize = PAGE_BYTES / SECTOR_BYTES;
/// Records (entries) of one sector.
pub const RECORDS_PER_SECTOR: usize = POINTERS_PER_PAGE / SECTORS_PER_LEAF;
/// Bytes of one record of a sectored leaf.
pub const LEAF_RECORD_BYTES: usize = 15;
/// Where a sector's records end and its zero padding begins.
const RECORDS_END: usize = RECORDS_PER_SECTOR * LEAF_RECORD_BYTES;
/// Where a sector's crc is.
const CRC_AT: usize = SECTOR_BYTES - 4;
/// The seed byte that tells a sector's seed from its page's (V4.17, "Sector seed").
const SECTOR_MARK: u8 = 0x80;

/// How a pool encodes its map leaves (recorded in its map parameters; no default: a reader
/// must take it from the pool it reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafFormat {
    /// 1024 block pointers of 16 bytes; verified only whole, against the parent's crc.
    Plain,
    /// Four sectors of 256 records of 15 bytes, each with its own seeded crc.
    Sectored,
}

impl LeafFormat {
    /// Entry `index` (< 1024) of a leaf in this format.
    ///
    /// # Errors
    /// A reason naming the entry when its bytes are no valid spelling.
    pub fn entry(self, leaf: &[u8], index: usize) -> Result<BlockPointer, String> {
        match self {
            LeafFormat::Plain => {
                let at = index * BlockPointer::BYTES;
                leaf.get(at..at + BlockPointer::BYTES)
                    .ok_or_else(|| format!("entry {index} beyond a leaf of {} bytes", leaf.len()))
                    .and_then(|bytes| {
                        let pointer = BlockPointer::decode(bytes)
                            .map_err(|e| format!("entry {index}: {e}"))?;
                        if pointer.level() == 0 {
                            Ok(pointer)
                        } else {
                            Err(format!(
                                "entry {index} points at level {} from a leaf",
                                pointer.level()
                            ))
                        }
                    })
            }
            LeafFormat::Sectored => {
                let sector = index / RECORDS_PER_SECTOR;
                let at = sector * SECTOR_BYTES;
                let bytes = leaf.get(at..at + SECTOR_BYTES).ok_or_else(|| {
                    format!("entry {index} beyond a leaf of {} bytes", leaf.len())
                })?;
                sector_entry(bytes, index % RECORDS_PER_SECTOR)
                    .map_err(|e| format!("entry {index}: {e}"))
            }
        }
    }

    /// Replace entry `index` (< 1024) of a leaf in this format. A sectored leaf's sector crcs
    /// are stale until [`seal_leaf`] (a sync seals what it writes).
    ///
    /// # Panics
    /// If `pointer` is not a level-0 pointer or `index` is beyond the leaf (caller bugs).
    pub fn set_entry(self, leaf: &mut [u8], index: usize, pointer: &BlockPointer) {
        assert_eq!(pointer.level(), 0, "a leaf holds level-0 pointers");
        let encoded = pointer.encode();
        match self {
            LeafFormat::Plain => {
                leaf[index * BlockPointer::BYTES..(index + 1) * BlockPointer::BYTES]
                    .copy_from_slice(&encoded);
            }
            LeafFormat::Sectored => {
                let at = (index / RECORDS_PER_SECTOR) * SECTOR_BYTES
                    + (index % RECORDS_PER_SECTOR) * LEAF_RECORD_BYTES;
                leaf[at..at + 11].copy_from_slice(&encoded[..11]);
                leaf[at + 11..at + LEAF_RECORD_BYTES].copy_from_slice(&encoded[12..16]);
            }
        }
    }

    /// A leaf whose every entry is a hole, in this format (a sectored one unsealed).
    #[must_use]
    pub fn empty_leaf(self) -> Vec<u8> {
        let mut leaf = vec![0u8; PAGE_BYTES];
        let hole = BlockPointer::hole(0);
        for index in 0..POINTERS_PER_PAGE {
            self.set_entry(&mut leaf, index, &hole);
        }
        leaf
    }

    /// Every entry of a leaf in this format, checking a sectored leaf's padding too.
    ///
    /// # Errors
    /// As [`LeafFormat::entry`]; non-zero padding in a sector.
    pub fn entries(self, leaf: &[u8]) -> Result<Vec<BlockPointer>, String> {
        if leaf.len() != PAGE_BYTES {
            return Err(format!("leaf is {} bytes, not {PAGE_BYTES}", leaf.len()));
        }
        if self == LeafFormat::Sectored {
            for (sector, bytes) in leaf.chunks_exact(SECTOR_BYTES).enumerate() {
                check_padding(bytes).map_err(|e| format!("sector {sector}: {e}"))?;
            }
        }
        (0..POINTERS_PER_PAGE)
            .map(|index| self.entry(leaf, index))
            .collect()
    }
}

/// Record `index` (< 256) of one sector of a sectored leaf.
///
/// # Errors
/// A reason when the record is no valid spelling: an address that is the hole with a crc,
/// a written address with birth 0.
pub fn sector_entry(sector: &[u8], index: usize) -> Result<BlockPointer, String> {
    if sector.len() != SECTOR_BYTES || index >= RECORDS_PER_SECTOR {
        return Err(format!(
            "record {index} of a sector of {} bytes",
            sector.len()
        ));
    }
    let (address, birth, crc) = sector_fields(sector, index);
    record_pointer(address, birth, crc)
}

/// The three fields of record `index` (< 256) of a 4 KiB sector as stored: address, birth
/// and crc, unchecked.
///
/// # Panics
/// If `sector` is shorter than its records or `index` >= 256 (caller bugs).
#[must_use]
pub fn sector_fields(sector: &[u8], index: usize) -> (u64, u64, u32) {
    let at = index * LEAF_RECORD_BYTES;
    let record = &sector[at..at + LEAF_RECORD_BYTES];
    let mut field = [0u8; 8];
    field[..5].copy_from_slice(&record[..5]);
    let address = u64::from_le_bytes(field);
    let mut field = [0u8; 8];
    field[..6].copy_from_slice(&record[5..11]);
    let birth = u64::from_le_bytes(field);
    let crc = u32::from_le_bytes([record[11], record[12], record[13], record[14]]);
    (address, birth, crc)
}

/// Whether a record's three fields are a valid spelling ([`record_pointer`] gives a pointer
/// exactly then): the hole address carries no crc, a written address a birth.
#[must_use]
pub fn record_is_valid(address: u64, birth: u64, crc: u32) -> bool {
    if address == ADDRESS_HOLE {
        crc == 0
    } else {
        birth != 0 && address <= MAX_ADDRESS && birth <= MAX_BIRTH
    }
}

/// The level-0 pointer a record's three fields spell (the kind byte implied, V4.17).
///
/// # Errors
/// A reason when the fields are no valid spelling: the hole address with a crc, a written
/// address with birth 0.
pub fn record_pointer(address: u64, birth: u64, crc: u32) -> Result<BlockPointer, String> {
    if address == ADDRESS_HOLE {
        if crc != 0 {
            return Err(format!("hole record carries crc {crc:#010x}"));
        }
        Ok(if birth == 0 {
            BlockPointer::hole(0)
        } else {
            BlockPointer::zeroed(0, birth)
        })
    } else if birth == 0 {
        Err(format!("record of block {address} has birth 0"))
    } else {
        Ok(BlockPointer::written(address, birth, 0, crc))
    }
}

/// Refuse a sector whose padding (after its 256 records, before its crc) is not zero.
///
/// # Errors
/// The offset of the first non-zero byte.
pub fn check_padding(sector: &[u8]) -> Result<(), String> {
    match sector[RECORDS_END..CRC_AT].iter().position(|b| *b != 0) {
        None => Ok(()),
        Some(at) => Err(format!(
            "padding byte {} of a sector is not zero",
            RECORDS_END + at
        )),
    }
}

/// The 48 seed bytes of sector `sector` of the leaf written with `seed` whose parent holds
/// `leaf_crc`: the page's seed with byte 34 = `0x80 | sector` and bytes 35..39 = `leaf_crc`
/// (docs/FORMAT.md V4.17, "Sector seed"). The parent's crc binds the sector to the one
/// version of the leaf the parent names, even if a page number and birth were ever written
/// twice.
#[must_use]
pub fn sector_seed(seed: &PageSeed, sector: usize, leaf_crc: u32) -> [u8; 48] {
    let mut bytes = seed.bytes();
    bytes[34] = SECTOR_MARK | sector as u8;
    bytes[35..39].copy_from_slice(&leaf_crc.to_le_bytes());
    bytes
}

/// The crc sector `sector` of the leaf written with `seed`, whose parent holds `leaf_crc`,
/// must carry, over its first 4092 bytes.
#[must_use]
pub fn sector_checksum(seed: &PageSeed, sector: usize, leaf_crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(
        crc32c::crc32c(&sector_seed(seed, sector, leaf_crc)),
        &bytes[..CRC_AT],
    )
}

/// The crc the parent holds for a sectored leaf written with `seed`: over the page's 16 KiB
/// with the four sector crcs read as zero.
#[must_use]
pub fn leaf_checksum(seed: &PageSeed, leaf: &[u8]) -> u32 {
    let mut crc = crc32c::crc32c(&seed.bytes());
    for sector in leaf.chunks(SECTOR_BYTES) {
        let body = sector.len().min(CRC_AT);
        crc = crc32c::crc32c_append(crc, &sector[..body]);
        crc = crc32c::crc32c_append(crc, &[0u8; 4][..sector.len() - body]);
    }
    crc
}

/// The crc a sector carries.
fn stored_crc(sector: &[u8]) -> u32 {
    u32::from_le_bytes([
        sector[CRC_AT],
        sector[CRC_AT + 1],
        sector[CRC_AT + 2],
        sector[CRC_AT + 3],
    ])
}

/// Seal a sectored leaf about to be written with `seed`: compute the parent's crc, then fill
/// the four sector crcs seeded with it. Returns the parent's crc.
///
/// # Panics
/// If `leaf` is not 16 KiB (a caller bug).
pub fn seal_leaf(seed: &PageSeed, leaf: &mut [u8]) -> u32 {
    assert_eq!(leaf.len(), PAGE_BYTES, "a leaf is one page");
    let leaf_crc = leaf_checksum(seed, leaf);
    for (sector, bytes) in leaf.chunks_exact_mut(SECTOR_BYTES).enumerate() {
        let crc = sector_checksum(seed, sector, leaf_crc, bytes);
        bytes[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    }
    leaf_crc
}

/// Check a sectored leaf read whole against the pointer that names it: its records (the
/// parent's crc, [`verify_leaf_records`]), then each sector's own crc. The sector crcs are
/// checked too because the parent's crc does not cover them: a copy whose sector crc rotted
/// would pass whole while every read of that sector alone fails, and neither a read's healing
/// nor a scrub would see it (docs/FORMAT.md V4.17, "Verifying a whole leaf").
///
/// # Errors
/// [`PageMismatch`] as [`super::page::verify_page`] gives it, or as [`verify_sector`] gives it
/// for the first sector that fails.
pub fn verify_leaf(
    pool: [u8; 16],
    pointer: &BlockPointer,
    tree: Tree,
    first_key: u64,
    leaf: &[u8],
) -> Result<(), PageMismatch> {
    verify_leaf_records(pool, pointer, tree, first_key, leaf)?;
    for (sector, bytes) in leaf.chunks_exact(SECTOR_BYTES).enumerate() {
        verify_sector(pool, pointer, tree, first_key, sector, bytes)?;
    }
    Ok(())
}

/// Check the records of a sectored leaf read whole against the pointer that names it: the
/// parent's crc, over the page with its sector crcs read as zero. What decides whether the
/// leaf's records may be used; its sector crcs may still be wrong ([`verify_leaf`],
/// [`reseal_leaf`]).
///
/// # Errors
/// [`PageMismatch`] as [`super::page::verify_page`] gives it.
pub fn verify_leaf_records(
    pool: [u8; 16],
    pointer: &BlockPointer,
    tree: Tree,
    first_key: u64,
    leaf: &[u8],
) -> Result<(), PageMismatch> {
    super::page::verify_with(
        pool,
        pointer,
        tree,
        first_key,
        leaf,
        |level| level == 1,
        leaf_checksum,
    )
}

/// Recompute the sector crcs of a leaf whose records verify ([`verify_leaf_records`]): the
/// repair of a leaf whose only damage is in its sector crc fields, when no copy has them
/// right. The records are not touched (the parent's crc reads those fields as zero, so it
/// stays what the parent holds).
///
/// # Errors
/// [`PageMismatch`] when the records do not verify (nothing is changed then).
pub fn reseal_leaf(
    pool: [u8; 16],
    pointer: &BlockPointer,
    tree: Tree,
    first_key: u64,
    leaf: &mut [u8],
) -> Result<(), PageMismatch> {
    verify_leaf_records(pool, pointer, tree, first_key, leaf)?;
    let Some(seed) = PageSeed::of_pointer(pool, pointer, tree, first_key) else {
        return Err(PageMismatch {
            expected: pointer.crc(),
            found: 0,
        });
    };
    seal_leaf(&seed, leaf);
    Ok(())
}

/// Check sector `sector` (4 KiB read alone) of the leaf `pointer` names in `tree` at
/// `first_key`: its crc against the seed made from the pointer (its crc included), then its
/// padding.
///
/// # Errors
/// [`PageMismatch`] with the crc the seed expects and the one found (0 for a wrong length,
/// a pointer that names no leaf, or padding that is not zero).
pub fn verify_sector(
    pool: [u8; 16],
    pointer: &BlockPointer,
    tree: Tree,
    first_key: u64,
    sector: usize,
    bytes: &[u8],
) -> Result<(), PageMismatch> {
    let Some(seed) = PageSeed::of_pointer(pool, pointer, tree, first_key) else {
        return Err(PageMismatch {
            expected: 0,
            found: 0,
        });
    };
    if bytes.len() != SECTOR_BYTES || pointer.level() != 1 || sector >= SECTORS_PER_LEAF {
        return Err(PageMismatch {
            expected: 0,
            found: 0,
        });
    }
    let expected = sector_checksum(&seed, sector, pointer.crc(), bytes);
    let found = stored_crc(bytes);
    if expected != found {
        return Err(PageMismatch { expected, found });
    }
    check_padding(bytes).map_err(|_| PageMismatch { expected, found: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_valid_exactly_when_it_spells_a_pointer() {
        for address in [0, 1, MAX_ADDRESS, ADDRESS_HOLE] {
            for birth in [0, 1, MAX_BIRTH] {
                for crc in [0, 1, u32::MAX] {
                    assert_eq!(
                        record_is_valid(address, birth, crc),
                        record_pointer(address, birth, crc).is_ok(),
                        "{address} {birth} {crc}"
                    );
                }
            }
        }
    }

    const POOL: [u8; 16] = [7; 16];

    fn seed(mpn: u64, birth: u64) -> PageSeed {
        PageSeed {
            pool: POOL,
            mpn,
            birth,
            tree: Tree::Map,
            level: 1,
            first_key: 4096,
        }
    }

    fn sealed(entries: &[(usize, BlockPointer)], mpn: u64, birth: u64) -> (Vec<u8>, BlockPointer) {
        let mut leaf = LeafFormat::Sectored.empty_leaf();
        for (index, pointer) in entries {
            LeafFormat::Sectored.set_entry(&mut leaf, *index, pointer);
        }
        let seed = seed(mpn, birth);
        let crc = seal_leaf(&seed, &mut leaf);
        let parent = BlockPointer::written(mpn, birth, 1, crc);
        (leaf, parent)
    }

    fn sector(leaf: &[u8], s: usize) -> &[u8] {
        &leaf[s * SECTOR_BYTES..(s + 1) * SECTOR_BYTES]
    }

    #[test]
    fn every_shape_of_pointer_roundtrips_in_both_formats() {
        let pointers = [
            BlockPointer::hole(0),
            BlockPointer::zeroed(0, 77),
            BlockPointer::written(12345, 9, 0, 0xdead_beef),
            BlockPointer::written(ADDRESS_HOLE - 1, (1 << 48) - 1, 0, u32::MAX),
        ];
        for format in [LeafFormat::Plain, LeafFormat::Sectored] {
            let mut leaf = format.empty_leaf();
            assert!(format
                .entries(&leaf)
                .expect("empty leaf")
                .iter()
                .all(BlockPointer::is_hole));
            for (n, pointer) in pointers.iter().enumerate() {
                for index in [n, 255 - n, 256 + n, 1023 - n] {
                    format.set_entry(&mut leaf, index, pointer);
                    assert_eq!(
                        format.entry(&leaf, index),
                        Ok(*pointer),
                        "{format:?} {index}"
                    );
                }
            }
            // Neighbours stay holes.
            assert_eq!(format.entry(&leaf, 100), Ok(BlockPointer::hole(0)));
        }
    }

    #[test]
    fn records_with_a_second_spelling_are_refused() {
        let mut leaf = LeafFormat::Sectored.empty_leaf();
        // A hole address with a crc.
        leaf[11] = 1;
        assert!(LeafFormat::Sectored.entry(&leaf, 0).is_err());
        // A written address with birth 0.
        let mut leaf = LeafFormat::Sectored.empty_leaf();
        leaf[..5].copy_from_slice(&[1, 0, 0, 0, 0]);
        assert!(LeafFormat::Sectored.entry(&leaf, 0).is_err());
        // Non-zero padding: the leaf is refused whole.
        let mut leaf = LeafFormat::Sectored.empty_leaf();
        leaf[SECTOR_BYTES + RECORDS_END] = 1;
        assert!(LeafFormat::Sectored.entries(&leaf).is_err());
        assert!(check_padding(sector(&leaf, 1)).is_err());
        assert!(check_padding(sector(&leaf, 0)).is_ok());
    }

    #[test]
    fn a_sector_verifies_alone_where_and_when_it_was_written() {
        let written = BlockPointer::written(500, 3, 0, 42);
        let (leaf, parent) = sealed(&[(0, written), (700, written)], 77, 5);
        for s in 0..SECTORS_PER_LEAF {
            assert_eq!(
                verify_sector(POOL, &parent, Tree::Map, 4096, s, sector(&leaf, s)),
                Ok(())
            );
        }
        assert_eq!(sector_entry(sector(&leaf, 2), 700 - 512), Ok(written));
        assert_eq!(verify_leaf(POOL, &parent, Tree::Map, 4096, &leaf), Ok(()));
        // The sector's seed differs from the page's, between sectors and between versions.
        assert_ne!(sector_seed(&seed(77, 5), 0, 1), seed(77, 5).bytes());
        assert_ne!(
            sector_seed(&seed(77, 5), 1, 1),
            sector_seed(&seed(77, 5), 2, 1)
        );
        assert_ne!(
            sector_seed(&seed(77, 5), 1, 1),
            sector_seed(&seed(77, 5), 1, 2)
        );
    }

    #[test]
    fn the_parents_crc_depends_on_every_record_not_only_on_the_seed() {
        // Review of V4.17, finding 1: a crc over bytes followed by their own crc is the same
        // whatever the bytes; the parent's crc must not cover the sector crcs.
        let mut crcs = std::collections::HashSet::new();
        for (n, index) in [0usize, 255, 256, 600, 1023].into_iter().enumerate() {
            let p = BlockPointer::written(1000 + n as u64, 3, 0, 42);
            let (leaf, parent) = sealed(&[(index, p)], 77, 5);
            assert!(crcs.insert(parent.crc()), "leaf with entry {index}");
            // Any change of a record fails the whole-leaf check.
            let mut changed = leaf.clone();
            changed[(index / 256) * SECTOR_BYTES + (index % 256) * LEAF_RECORD_BYTES] ^= 1;
            assert!(verify_leaf(POOL, &parent, Tree::Map, 4096, &changed).is_err());
        }
        let (empty, parent) = sealed(&[], 77, 5);
        assert!(crcs.insert(parent.crc()));
        assert_eq!(verify_leaf(POOL, &parent, Tree::Map, 4096, &empty), Ok(()));
    }

    #[test]
    fn a_lost_misdirected_torn_or_foreign_sector_fails() {
        let old = BlockPointer::written(500, 3, 0, 42);
        let new = BlockPointer::written(501, 6, 0, 43);
        let (old_leaf, _) = sealed(&[(10, old)], 77, 5);
        let (new_leaf, parent) = sealed(&[(10, new)], 77, 6);
        // Lost write: the place still holds the older birth's sector.
        assert!(verify_sector(POOL, &parent, Tree::Map, 4096, 0, sector(&old_leaf, 0)).is_err());
        // Even a sector whose bytes did not change between the versions: its seed did.
        assert!(verify_sector(POOL, &parent, Tree::Map, 4096, 3, sector(&old_leaf, 3)).is_err());
        // Misdirected: the right bytes read at another page number, another sector index,
        // another key range, tree or pool.
        let elsewhere = BlockPointer::written(78, 6, 1, parent.crc());
        assert!(verify_sector(POOL, &elsewhere, Tree::Map, 4096, 0, sector(&new_leaf, 0)).is_err());
        assert!(verify_sector(POOL, &parent, Tree::Map, 4096, 1, sector(&new_leaf, 0)).is_err());
        assert!(verify_sector(POOL, &parent, Tree::Map, 0, 0, sector(&new_leaf, 0)).is_err());
        assert!(verify_sector(
            POOL,
            &parent,
            Tree::SlotSummary,
            4096,
            0,
            sector(&new_leaf, 0)
        )
        .is_err());
        assert!(verify_sector([8; 16], &parent, Tree::Map, 4096, 0, sector(&new_leaf, 0)).is_err());
        // Torn inside a sector: one byte of a record changed.
        let mut torn = sector(&new_leaf, 0).to_vec();
        torn[150] ^= 1;
        assert!(verify_sector(POOL, &parent, Tree::Map, 4096, 0, &torn).is_err());
        // A short read, a hole or an interior pointer never verifies.
        assert!(verify_sector(
            POOL,
            &parent,
            Tree::Map,
            4096,
            0,
            &sector(&new_leaf, 0)[1..]
        )
        .is_err());
        assert!(verify_sector(
            POOL,
            &BlockPointer::hole(1),
            Tree::Map,
            4096,
            0,
            sector(&new_leaf, 0)
        )
        .is_err());
        let interior = BlockPointer::written(77, 6, 2, parent.crc());
        assert!(verify_sector(POOL, &interior, Tree::Map, 4096, 0, sector(&new_leaf, 0)).is_err());
        // A leaf changed after sealing fails whole.
        let mut changed = new_leaf.clone();
        LeafFormat::Sectored.set_entry(&mut changed, 900, &old);
        assert!(verify_leaf(POOL, &parent, Tree::Map, 4096, &changed).is_err());
        // The same page number and birth written twice with other content (review of
        // V4.17, finding 2): the other version's sectors fail, because the parent's crc is
        // in their seed.
        let (twin, twin_parent) = sealed(&[(10, new), (11, old)], 77, 6);
        assert_eq!(
            (twin_parent.address(), twin_parent.birth()),
            (parent.address(), parent.birth())
        );
        for s in 0..SECTORS_PER_LEAF {
            assert!(verify_sector(POOL, &parent, Tree::Map, 4096, s, sector(&twin, s)).is_err());
        }
    }
}
