//! The 16-byte block pointer, used by every tree, log entry and uberblock of version 4, and the
//! seeded checksum of a data row's shard-block (docs/FORMAT.md, V4.3).
//!
//! ```text
//! 0..5    address u40: pbn (level 0) or mpn (level >= 1); 0xFF_FFFF_FFFF = hole
//! 5..11   birth u48: the commit sequence that wrote what is pointed at
//! 11      kind u8: bits 0..3 level pointed at, bit 4 "zero", bits 5..7 zero
//! 12..16  crc32c u32 of the block or page, seeded (row_checksum, page_checksum)
//! ```

use super::{le, U40_MAX, U48_MAX};

/// The address that means "nothing here": a hole, or a block written as zeros.
pub const ADDRESS_HOLE: u64 = U40_MAX;
/// Largest address a pointer can name (pbn or mpn).
pub const MAX_ADDRESS: u64 = U40_MAX - 1;
/// Largest birth a pointer can carry.
pub const MAX_BIRTH: u64 = U48_MAX;

const ZERO_FLAG: u8 = 1 << 4;
const LEVEL_MASK: u8 = 0x0f;

/// The trees of a version-4 pool, by the id their page seeds and uberblock slots use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tree {
    /// Logical 4 KiB block → block pointer.
    Map = 0,
    /// Slot of a data segment → slot record.
    SlotSummary = 1,
    /// Segment → usage record.
    SegmentUsage = 2,
    /// Recovery point id → its roots and counters (issue 15).
    RecoveryPoints = 3,
    /// Deadlists and the free backlog.
    Deadlists = 4,
    /// Segment → forwarding directory record.
    Forwarding = 5,
}

impl Tree {
    /// Every tree, in id order (the order of the uberblock's root pointers).
    pub const ALL: [Tree; 6] = [
        Tree::Map,
        Tree::SlotSummary,
        Tree::SegmentUsage,
        Tree::RecoveryPoints,
        Tree::Deadlists,
        Tree::Forwarding,
    ];

    /// The tree with this id.
    #[must_use]
    pub fn from_id(id: u8) -> Option<Tree> {
        Tree::ALL.get(usize::from(id)).copied()
    }

    /// The id written in seeds and used as the uberblock's root index.
    #[must_use]
    pub fn id(self) -> u8 {
        self as u8
    }
}

/// Where a block or page is, when it was written and what its checksum is.
///
/// Three shapes, each with one encoding: a **hole** (never written: address hole, birth 0, crc
/// 0), a **zero** block (written as zeros or trimmed: address hole, zero flag, the birth of that
/// write, crc 0) and a **written** pointer (an address, birth >= 1, the crc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockPointer {
    address: u64,
    birth: u64,
    level: u8,
    zero: bool,
    crc: u32,
}

impl BlockPointer {
    /// Bytes of an encoded pointer.
    pub const BYTES: usize = 16;

    /// A hole pointing at `level`: nothing was ever written below it.
    #[must_use]
    pub fn hole(level: u8) -> Self {
        debug_assert!(level <= LEVEL_MASK);
        Self {
            address: ADDRESS_HOLE,
            birth: 0,
            level,
            zero: false,
            crc: 0,
        }
    }

    /// A block written as zeros (or trimmed) at `birth`: reads zeros, occupies no space.
    ///
    /// # Panics
    /// If `birth` is 0 or does not fit 48 bits (a caller bug).
    #[must_use]
    pub fn zeroed(level: u8, birth: u64) -> Self {
        assert!(
            (1..=MAX_BIRTH).contains(&birth),
            "birth {birth} out of range"
        );
        Self {
            address: ADDRESS_HOLE,
            birth,
            level,
            zero: true,
            crc: 0,
        }
    }

    /// A written block (`level` 0) or page (`level` >= 1).
    ///
    /// # Panics
    /// If a field does not fit its width (a caller bug, never data from a device).
    #[must_use]
    pub fn written(address: u64, birth: u64, level: u8, crc: u32) -> Self {
        assert!(address <= MAX_ADDRESS, "address {address} out of range");
        assert!(
            (1..=MAX_BIRTH).contains(&birth),
            "birth {birth} out of range"
        );
        assert!(level <= LEVEL_MASK, "level {level} out of range");
        Self {
            address,
            birth,
            level,
            zero: false,
            crc,
        }
    }

    /// The address (pbn or mpn), or `None` for a hole or a zero block.
    #[must_use]
    pub fn address(&self) -> Option<u64> {
        (self.address != ADDRESS_HOLE).then_some(self.address)
    }
    /// The commit sequence that wrote what this points at (0 for a hole).
    #[must_use]
    pub fn birth(&self) -> u64 {
        self.birth
    }
    /// Level of what is pointed at: 0 a data block, 1 a leaf page, 2.. interior pages.
    #[must_use]
    pub fn level(&self) -> u8 {
        self.level
    }
    /// The checksum of what is pointed at (0 for holes and zero blocks).
    #[must_use]
    pub fn crc(&self) -> u32 {
        self.crc
    }
    /// Never written.
    #[must_use]
    pub fn is_hole(&self) -> bool {
        self.address == ADDRESS_HOLE && !self.zero
    }
    /// Written as zeros (reads zeros, no space).
    #[must_use]
    pub fn is_zero(&self) -> bool {
        self.zero
    }
    /// Reads as zeros without any I/O (a hole or a zero block).
    #[must_use]
    pub fn reads_zeros(&self) -> bool {
        self.address == ADDRESS_HOLE
    }

    /// The 16 bytes of this pointer.
    #[must_use]
    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut bytes = [0u8; Self::BYTES];
        le::put(&mut bytes, 0, 5, self.address);
        le::put(&mut bytes, 5, 6, self.birth);
        bytes[11] = self.level | if self.zero { ZERO_FLAG } else { 0 };
        le::put(&mut bytes, 12, 4, u64::from(self.crc));
        bytes
    }

    /// The pointer in `bytes` (at least 16), refused if a correct encoder could not have written
    /// it.
    ///
    /// # Errors
    /// A reason naming the field that is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < Self::BYTES {
            return Err(format!("block pointer is {} bytes, not 16", bytes.len()));
        }
        let address = le::get(bytes, 0, 5);
        let birth = le::get(bytes, 5, 6);
        let kind = bytes[11];
        let crc = le::u32_at(bytes, 12);
        if kind & !(LEVEL_MASK | ZERO_FLAG) != 0 {
            return Err(format!(
                "block pointer kind {kind:#04x} has reserved bits set"
            ));
        }
        let zero = kind & ZERO_FLAG != 0;
        let level = kind & LEVEL_MASK;
        if address == ADDRESS_HOLE {
            if crc != 0 {
                return Err(format!("hole pointer carries crc {crc:#010x}"));
            }
            if zero != (birth != 0) {
                return Err(if zero {
                    "zero-block pointer has birth 0".to_string()
                } else {
                    format!("hole pointer has birth {birth}")
                });
            }
        } else {
            if zero {
                return Err(format!("zero-block pointer has address {address}"));
            }
            if birth == 0 {
                return Err(format!("pointer to {address} has birth 0"));
            }
        }
        Ok(Self {
            address,
            birth,
            level,
            zero,
            crc,
        })
    }
}

/// crc32c of one 4 KiB shard-block of a data row, seeded with its slot, chunk `q` (the chunk
/// index: shard index for rs, the data chunk the copy carries for mirrors), row and the row's
/// birth. Same construction as versions 1–3's block checksum, with the chunk index and birth.
#[must_use]
pub fn row_checksum(slot: u64, chunk: u32, row: u32, birth: u64, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(row_seed_crc(slot, chunk, row, birth), bytes)
}

/// [`row_checksum`] of a 4 KiB block from the block's plain `crc32c` (computed before the
/// block had a place): `crc32c(block) ⊕ Z(crc32c(seed))`, where `Z` advances the CRC register
/// over 4096 zero bytes (docs/FORMAT.md V4.6, "Large writes").
#[must_use]
pub fn row_checksum_of_block_crc(slot: u64, chunk: u32, row: u32, birth: u64, block: u32) -> u32 {
    block ^ advance_4k(row_seed_crc(slot, chunk, row, birth))
}

/// crc32c of a row checksum's 24-byte seed.
fn row_seed_crc(slot: u64, chunk: u32, row: u32, birth: u64) -> u32 {
    let mut seed = [0u8; 24];
    seed[..8].copy_from_slice(&slot.to_le_bytes());
    let chunk_and_row = u64::from(chunk) | (u64::from(row) << 32);
    seed[8..16].copy_from_slice(&chunk_and_row.to_le_bytes());
    seed[16..].copy_from_slice(&birth.to_le_bytes());
    crc32c::crc32c(&seed)
}

/// `Z(c) = crc32c_append(c, 4096 zeros) ⊕ crc32c_append(0, 4096 zeros)`: linear over GF(2),
/// so the XOR of its values on the bytes of `c`, from four tables of 256 built once.
fn advance_4k(c: u32) -> u32 {
    static TABLES: std::sync::OnceLock<[[u32; 256]; 4]> = std::sync::OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        let zeros = [0u8; 4096];
        let base = crc32c::crc32c_append(0, &zeros);
        let unit: Vec<u32> = (0..32)
            .map(|bit| crc32c::crc32c_append(1 << bit, &zeros) ^ base)
            .collect();
        let mut tables = [[0u32; 256]; 4];
        for (byte, table) in tables.iter_mut().enumerate() {
            for (value, entry) in table.iter_mut().enumerate() {
                *entry = (0..8)
                    .filter(|b| value >> b & 1 == 1)
                    .fold(0, |acc, b| acc ^ unit[byte * 8 + b]);
            }
        }
        tables
    });
    c.to_le_bytes()
        .iter()
        .zip(tables)
        .fold(0, |acc, (byte, table)| acc ^ table[usize::from(*byte)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_checksum_follows_from_the_plain_crc_of_its_block() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..64 {
            let block: Vec<u8> = (0..4096).map(|_| next() as u8).collect();
            let (slot, chunk, row, birth) = (
                next() >> 20,
                next() as u32 % 64,
                next() as u32 % 16,
                next() >> 16,
            );
            assert_eq!(
                row_checksum_of_block_crc(slot, chunk, row, birth, crc32c::crc32c(&block)),
                row_checksum(slot, chunk, row, birth, &block)
            );
        }
        let zeros = [0u8; 4096];
        assert_eq!(
            row_checksum_of_block_crc(0, 0, 0, 1, crc32c::crc32c(&zeros)),
            row_checksum(0, 0, 0, 1, &zeros)
        );
    }

    #[test]
    fn the_three_shapes_roundtrip_byte_for_byte() {
        for pointer in [
            BlockPointer::hole(0),
            BlockPointer::hole(3),
            BlockPointer::zeroed(0, 7),
            BlockPointer::written(0, 1, 0, 0),
            BlockPointer::written(MAX_ADDRESS, MAX_BIRTH, 15, u32::MAX),
            BlockPointer::written(0x12_3456_789a, 0xbcde_f012_3456, 2, 0xdead_beef),
        ] {
            let bytes = pointer.encode();
            assert_eq!(BlockPointer::decode(&bytes), Ok(pointer));
        }
    }

    #[test]
    fn the_documented_bytes() {
        let bytes =
            BlockPointer::written(0x01_0203_0405, 0x0607_0809_0a0b, 2, 0x0c0d_0e0f).encode();
        assert_eq!(
            bytes,
            [5, 4, 3, 2, 1, 0x0b, 0x0a, 9, 8, 7, 6, 2, 0x0f, 0x0e, 0x0d, 0x0c]
        );
        let hole = BlockPointer::hole(1).encode();
        assert_eq!(
            hole,
            [0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
        );
        let zero = BlockPointer::zeroed(0, 3).encode();
        assert_eq!(zero[11], 0x10);
        assert!(BlockPointer::decode(&zero).is_ok_and(|p| p.is_zero() && p.reads_zeros()));
    }

    #[test]
    fn what_no_encoder_writes_is_refused() {
        let mut reserved = BlockPointer::written(1, 1, 0, 0).encode();
        reserved[11] |= 0x20;
        assert!(BlockPointer::decode(&reserved).is_err());
        let mut hole_with_crc = BlockPointer::hole(0).encode();
        hole_with_crc[12] = 1;
        assert!(BlockPointer::decode(&hole_with_crc).is_err());
        let mut hole_with_birth = BlockPointer::hole(0).encode();
        hole_with_birth[5] = 1;
        assert!(BlockPointer::decode(&hole_with_birth).is_err());
        let mut zero_without_birth = BlockPointer::hole(0).encode();
        zero_without_birth[11] = ZERO_FLAG;
        assert!(BlockPointer::decode(&zero_without_birth).is_err());
        let mut zero_with_address = BlockPointer::written(9, 1, 0, 0).encode();
        zero_with_address[11] |= ZERO_FLAG;
        assert!(BlockPointer::decode(&zero_with_address).is_err());
        // All zeros: address 0 with birth 0 is not a pointer any encoder writes.
        assert!(BlockPointer::decode(&[0u8; 16]).is_err());
        assert!(BlockPointer::decode(&[0u8; 15]).is_err());
    }

    #[test]
    fn the_row_checksum_binds_place_and_birth() {
        let block = [0x5au8; 4096];
        let base = row_checksum(10, 2, 1, 5, &block);
        assert_ne!(base, row_checksum(11, 2, 1, 5, &block), "slot");
        assert_ne!(base, row_checksum(10, 3, 1, 5, &block), "chunk");
        assert_ne!(base, row_checksum(10, 2, 0, 5, &block), "row");
        assert_ne!(base, row_checksum(10, 2, 1, 6, &block), "birth");
        assert_eq!(base, row_checksum(10, 2, 1, 5, &block));
    }
}
