//! Uberblocks (docs/FORMAT.md, V4.8): 4 KiB, written at the end of every tree sync into slot
//! `txg mod U` of two rings on every member; the valid one with the highest txg names the roots
//! of every tree, the log half that continues the chain, and the numbers never to reuse.
//!
//! ```text
//! 0..8      magic "STRIPUB4"        8..12   format version u32 = 4     12..16  zero
//! 16..32    pool UUID               32..40  txg u64                    40..48  S_sync u64
//! 48        log half u8 (0/1)       49..56  zero                       56..64  written at, unix s
//! 64..160   root pointers of trees 0..5 (16 B each)
//! 160..168  next sequence u64       168..176 timeline u64
//! 176..182  depth of trees 0..5 (u8 each)   182 unlogged u8 (0/1)   183 zero
//! 184..216  open stripe, small-write, cleaner and metadata segments u64 each (hints; u64::MAX none)
//! 216..224  live named blocks u64 (V4.10f)   224 1 when they are counted, else 0 (216..225 zero)
//! 225..4092 zero                    4092..4096 crc32c of bytes 0..4092
//! ```

use super::le;
use super::pointer::BlockPointer;

/// Bytes of an uberblock.
pub const UBERBLOCK_BYTES: usize = 4096;
/// The first 8 bytes of every uberblock.
pub const UBERBLOCK_MAGIC: &[u8; 8] = b"STRIPUB4";
/// Trees whose roots an uberblock holds.
pub const TREES: usize = 6;
const ROOTS_AT: usize = 64;
const CRC_AT: usize = UBERBLOCK_BYTES - 4;
/// Deepest tree an uberblock may name (16 TiB needs 4; the simulation asks for a few more).
const MAX_DEPTH: u8 = 8;

/// What a tree sync made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uberblock {
    /// The pool.
    pub pool: [u8; 16],
    /// Tree-sync number.
    pub txg: u64,
    /// The sync's own sequence; the log chain after it starts with `prev = s_sync`.
    pub s_sync: u64,
    /// The log half that chain is in.
    pub log_half: u8,
    /// When it was written (unix seconds).
    pub written_at: u64,
    /// Root pointer of each tree, by tree id.
    pub roots: [BlockPointer; TREES],
    /// The next sequence to use (above every sequence this sync knew).
    pub next_sequence: u64,
    /// The pool's timeline.
    pub timeline: u64,
    /// Depth of each tree (levels of pages; a root pointer points at this level).
    pub depths: [u8; TREES],
    /// Open segments: stripe, small-write, cleaner, metadata (hints; `None` if none).
    pub open_segments: [Option<u64>; 4],
    /// The sync made durable changes no log record holds (a commit that did not fit the log):
    /// a rewind to the tree before this one cannot replay past this sync.
    pub unlogged: bool,
    /// The live map's data blocks that name a block (docs/FORMAT.md V4.10f), when the pool
    /// counts them (created by a build that does).
    pub live_blocks: Option<u64>,
}

impl Uberblock {
    /// The 4 KiB of this uberblock.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; UBERBLOCK_BYTES];
        bytes[..8].copy_from_slice(UBERBLOCK_MAGIC);
        le::put(&mut bytes, 8, 4, u64::from(super::VERSION));
        bytes[16..32].copy_from_slice(&self.pool);
        le::put(&mut bytes, 32, 8, self.txg);
        le::put(&mut bytes, 40, 8, self.s_sync);
        bytes[48] = self.log_half;
        le::put(&mut bytes, 56, 8, self.written_at);
        for (i, root) in self.roots.iter().enumerate() {
            let at = ROOTS_AT + 16 * i;
            bytes[at..at + 16].copy_from_slice(&root.encode());
        }
        le::put(&mut bytes, 160, 8, self.next_sequence);
        le::put(&mut bytes, 168, 8, self.timeline);
        bytes[176..182].copy_from_slice(&self.depths);
        bytes[182] = u8::from(self.unlogged);
        for (i, segment) in self.open_segments.iter().enumerate() {
            le::put(&mut bytes, 184 + 8 * i, 8, segment.unwrap_or(u64::MAX));
        }
        if let Some(live) = self.live_blocks {
            le::put(&mut bytes, 216, 8, live);
            bytes[224] = 1;
        }
        let crc = crc32c::crc32c(&bytes[..CRC_AT]);
        le::put(&mut bytes, CRC_AT, 4, u64::from(crc));
        bytes
    }

    /// The uberblock in `bytes`, if it is one of pool `pool`.
    ///
    /// # Errors
    /// A reason when it is not a whole, valid uberblock of this pool (never written, torn,
    /// rotten, of another pool or another format version).
    pub fn decode(bytes: &[u8], pool: [u8; 16]) -> Result<Self, String> {
        if bytes.len() != UBERBLOCK_BYTES {
            return Err(format!("uberblock is {} bytes, not 4096", bytes.len()));
        }
        if &bytes[..8] != UBERBLOCK_MAGIC {
            return Err("no uberblock magic".to_string());
        }
        let stored = le::u32_at(bytes, CRC_AT);
        let computed = crc32c::crc32c(&bytes[..CRC_AT]);
        if stored != computed {
            return Err(format!(
                "uberblock crc {stored:#010x}, computed {computed:#010x}"
            ));
        }
        let version = le::u32_at(bytes, 8);
        if version != super::VERSION {
            return Err(format!("uberblock of format version {version}"));
        }
        if bytes[16..32] != pool {
            return Err("uberblock of another pool".to_string());
        }
        let zero_ranges = [12..16, 49..56, 183..184, 225..CRC_AT];
        if zero_ranges
            .iter()
            .any(|r| bytes[r.clone()].iter().any(|b| *b != 0))
        {
            return Err("uberblock has reserved bytes set".to_string());
        }
        if bytes[48] > 1 {
            return Err(format!("uberblock names log half {}", bytes[48]));
        }
        if bytes[182] > 1 {
            return Err(format!("uberblock unlogged flag {}", bytes[182]));
        }
        let live_blocks = match bytes[224] {
            0 if bytes[216..224].iter().all(|b| *b == 0) => None,
            1 => Some(le::u64_at(bytes, 216)),
            flag => {
                return Err(format!(
                    "uberblock live-count flag {flag} (or a count without it)"
                ))
            }
        };
        let mut depths = [0u8; TREES];
        depths.copy_from_slice(&bytes[176..182]);
        let mut roots = [BlockPointer::hole(0); TREES];
        for (i, root) in roots.iter_mut().enumerate() {
            let at = ROOTS_AT + 16 * i;
            *root =
                BlockPointer::decode(&bytes[at..at + 16]).map_err(|e| format!("root {i}: {e}"))?;
            if depths[i] == 0
                || depths[i] > MAX_DEPTH
                || root.level() != depths[i]
                || root.is_zero()
            {
                return Err(format!(
                    "root {i} at level {} of a tree of depth {}",
                    root.level(),
                    depths[i]
                ));
            }
        }
        let s_sync = le::u64_at(bytes, 40);
        let next_sequence = le::u64_at(bytes, 160);
        if next_sequence <= s_sync {
            return Err(format!(
                "next sequence {next_sequence} not above the sync's {s_sync}"
            ));
        }
        let mut open_segments = [None; 4];
        for (i, segment) in open_segments.iter_mut().enumerate() {
            let raw = le::u64_at(bytes, 184 + 8 * i);
            *segment = (raw != u64::MAX).then_some(raw);
        }
        Ok(Self {
            pool,
            txg: le::u64_at(bytes, 32),
            s_sync,
            log_half: bytes[48],
            written_at: le::u64_at(bytes, 56),
            roots,
            next_sequence,
            timeline: le::u64_at(bytes, 168),
            depths,
            open_segments,
            unlogged: bytes[182] == 1,
            live_blocks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: [u8; 16] = [1; 16];

    fn sample() -> Uberblock {
        let depths = [4, 4, 3, 1, 1, 1];
        let mut roots = depths.map(BlockPointer::hole);
        roots[0] = BlockPointer::written(1234, 40, 4, 0xabcd);
        Uberblock {
            pool: POOL,
            txg: 17,
            s_sync: 40,
            log_half: 1,
            written_at: 1_800_000_000,
            roots,
            next_sequence: 41,
            timeline: 0x0123_4567_89ab_cdef,
            depths,
            open_segments: [Some(3), None, Some(9), Some(0)],
            unlogged: true,
            live_blocks: Some(123_456),
        }
    }

    /// `bytes` with its crc made right again (a field changed past the encoder).
    fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
        let crc = crc32c::crc32c(&bytes[..CRC_AT]);
        bytes[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// The live count (V4.10f): kept with byte 224 = 1, absent with 216..225 zero; any
    /// other spelling refused.
    #[test]
    fn the_live_count_has_one_spelling() {
        for live_blocks in [None, Some(0), Some(u64::MAX)] {
            let ub = Uberblock {
                live_blocks,
                ..sample()
            };
            assert_eq!(Uberblock::decode(&ub.encode(), POOL), Ok(ub));
        }
        let mut flag = sample().encode();
        flag[224] = 2;
        assert!(Uberblock::decode(&reseal(flag), POOL)
            .unwrap_err()
            .contains("live-count flag 2"));
        let mut count_without = Uberblock {
            live_blocks: None,
            ..sample()
        }
        .encode();
        count_without[217] = 1;
        assert!(Uberblock::decode(&reseal(count_without), POOL).is_err());
        let mut beyond = sample().encode();
        beyond[225] = 1;
        assert!(Uberblock::decode(&reseal(beyond), POOL).is_err());
    }

    #[test]
    fn an_uberblock_roundtrips_and_every_flipped_bit_is_refused() {
        let bytes = sample().encode();
        assert_eq!(Uberblock::decode(&bytes, POOL), Ok(sample()));
        for bit in (0..UBERBLOCK_BYTES * 8).step_by(13) {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(Uberblock::decode(&bad, POOL).is_err(), "bit {bit}");
        }
        assert!(Uberblock::decode(&bytes, [2; 16]).is_err());
        assert!(Uberblock::decode(&vec![0; 4096], POOL).is_err());
    }

    #[test]
    fn inconsistent_fields_are_refused_even_with_a_good_crc() {
        let mut bad = sample();
        bad.next_sequence = bad.s_sync;
        assert!(Uberblock::decode(&bad.encode(), POOL).is_err());
        let mut bad = sample();
        bad.depths[0] = 3;
        assert!(
            Uberblock::decode(&bad.encode(), POOL).is_err(),
            "root level != depth"
        );
        let mut bad = sample();
        bad.log_half = 2;
        assert!(Uberblock::decode(&bad.encode(), POOL).is_err());
    }

    /// Byte 182 (`unlogged`, added in step 4 before any pool wrote version 4) has one spelling
    /// per value; byte 183 stays zero; another format version is refused by name.
    #[test]
    fn the_unlogged_byte_has_one_spelling_and_other_versions_are_refused() {
        for unlogged in [false, true] {
            let ub = Uberblock {
                unlogged,
                ..sample()
            };
            let bytes = ub.encode();
            assert_eq!(bytes[182], u8::from(unlogged));
            assert_eq!(Uberblock::decode(&bytes, POOL), Ok(ub));
        }
        let mut two = sample().encode();
        two[182] = 2;
        let said = Uberblock::decode(&reseal(two), POOL).unwrap_err();
        assert!(said.contains("unlogged"), "{said}");
        let mut reserved = sample().encode();
        reserved[183] = 1;
        assert!(Uberblock::decode(&reseal(reserved), POOL).is_err());
        let mut v3 = sample().encode();
        v3[8] = 3;
        let said = Uberblock::decode(&reseal(v3), POOL).unwrap_err();
        assert_eq!(said, "uberblock of format version 3");
    }
}
