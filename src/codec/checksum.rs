//! The shard checksums: one crc32c per *checksum block* of a shard (4 KiB by default), each
//! seeded with the shard's physical slot, shard index, block index and write generation.
//!
//! The checksums are stored in the stripe map, never next to the data. Binding the address means
//! a chunk that lands in the wrong place (misdirected write) cannot verify there; binding the
//! generation means old, self-consistent content left by a lost write cannot verify either.
//!
//! Why per block and not per chunk: a read must verify every byte it returns, and with one crc
//! per chunk a 4 KiB read had to fetch the whole chunk (16× the bytes at 64 KiB chunks). With a
//! crc per 4 KiB block it fetches and verifies only the blocks it returns, as btrfs and Ceph
//! BlueStore do. The price is map memory: 4 bytes per block (see the README's limits).

use crate::types::{Generation, ShardIndex, SlotId};
use std::ops::Range;

/// crc32c of one checksum block, seeded with where and when it was written. Block 0 of a shard
/// whose checksum block is the whole chunk gives the same value as the per-chunk checksum of
/// pools created before blocks existed, so those pools still verify.
#[must_use]
pub fn block_checksum(
    slot: SlotId,
    shard: ShardIndex,
    block: usize,
    generation: Generation,
    bytes: &[u8],
) -> u32 {
    let mut seed = [0u8; 24];
    seed[..8].copy_from_slice(&slot.0.to_le_bytes());
    let shard_and_block = shard.0 as u64 | ((block as u64) << 32);
    seed[8..16].copy_from_slice(&shard_and_block.to_le_bytes());
    seed[16..].copy_from_slice(&generation.0.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&seed), bytes)
}

/// A block whose content does not match its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SumMismatch {
    /// Byte offset of the block within the shard.
    pub offset: usize,
    /// The checksum the map holds.
    pub expected: u32,
    /// The checksum of what was read.
    pub found: u32,
}

/// How a pool's shards are checksummed: chunk size and checksum block size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSums {
    block: usize,
    per_shard: usize,
}

impl ShardSums {
    /// How the shards of `geometry` are checksummed.
    #[must_use]
    pub fn of_geometry(geometry: &crate::geometry::Geometry) -> Self {
        Self::new(
            usize::try_from(geometry.chunk_bytes).unwrap_or(0),
            usize::try_from(geometry.checksum_bytes).unwrap_or(0),
        )
    }

    /// Shards of `chunk_bytes`, one checksum per `block_bytes` (which divides the chunk).
    #[must_use]
    pub fn new(chunk_bytes: usize, block_bytes: usize) -> Self {
        assert!(
            block_bytes > 0 && chunk_bytes.is_multiple_of(block_bytes),
            "the checksum block divides the chunk"
        );
        Self {
            block: block_bytes,
            per_shard: chunk_bytes / block_bytes,
        }
    }
    /// Bytes per checksum block.
    #[must_use]
    pub fn block_bytes(&self) -> usize {
        self.block
    }
    /// Checksums per shard.
    #[must_use]
    pub fn per_shard(&self) -> usize {
        self.per_shard
    }
    /// The checksums of `shard` within a map entry's list (all shards' checksums in order).
    #[must_use]
    pub fn of<'a>(&self, crcs: &'a [u32], shard: usize) -> &'a [u32] {
        &crcs[shard * self.per_shard..(shard + 1) * self.per_shard]
    }
    /// The smallest block-aligned range of a shard holding bytes `start..start + len`.
    #[must_use]
    pub fn covering(&self, start: usize, len: usize) -> Range<usize> {
        let first = start / self.block * self.block;
        let end = (start + len).div_ceil(self.block) * self.block;
        first..end
    }
    /// Append the checksums of a whole shard to `out`.
    pub fn compute_into(
        &self,
        slot: SlotId,
        shard: ShardIndex,
        generation: Generation,
        bytes: &[u8],
        out: &mut Vec<u32>,
    ) {
        debug_assert_eq!(bytes.len(), self.block * self.per_shard, "a whole shard");
        out.extend(
            bytes
                .chunks(self.block)
                .enumerate()
                .map(|(block, data)| block_checksum(slot, shard, block, generation, data)),
        );
    }
    /// Verify `bytes`, which start `start` bytes into the shard (block-aligned, whole blocks),
    /// against the shard's checksums `expected` (from [`ShardSums::of`]).
    ///
    /// # Errors
    /// The first block that does not match.
    pub fn verify(
        &self,
        slot: SlotId,
        shard: ShardIndex,
        generation: Generation,
        start: usize,
        bytes: &[u8],
        expected: &[u32],
    ) -> Result<(), SumMismatch> {
        assert!(
            start.is_multiple_of(self.block) && bytes.len().is_multiple_of(self.block),
            "verification covers whole checksum blocks"
        );
        let first = start / self.block;
        for (i, data) in bytes.chunks(self.block).enumerate() {
            let block = first + i;
            let found = block_checksum(slot, shard, block, generation, data);
            if found != expected[block] {
                return Err(SumMismatch {
                    offset: block * self.block,
                    expected: expected[block],
                    found,
                });
            }
        }
        Ok(())
    }
    /// Whether a whole shard matches its checksums.
    #[must_use]
    pub fn matches(
        &self,
        slot: SlotId,
        shard: ShardIndex,
        generation: Generation,
        bytes: &[u8],
        expected: &[u32],
    ) -> bool {
        self.verify(slot, shard, generation, 0, bytes, expected)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vector() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn checksum_binds_address_block_and_generation() {
        let data = [7u8; 4096];
        let sum = |slot, shard, block, generation| {
            block_checksum(
                SlotId(slot),
                ShardIndex(shard),
                block,
                Generation(generation),
                &data,
            )
        };
        let base = sum(1, 2, 0, 3);
        assert_ne!(base, sum(2, 2, 0, 3));
        assert_ne!(base, sum(1, 3, 0, 3));
        assert_ne!(base, sum(1, 2, 1, 3));
        assert_ne!(base, sum(1, 2, 0, 4));
        assert_eq!(base, sum(1, 2, 0, 3));
    }

    /// Block 0 keeps the seed of the per-chunk checksum pools were created with before blocks.
    #[test]
    fn block_zero_is_the_old_chunk_checksum() {
        let data = [9u8; 8192];
        let mut seed = [0u8; 24];
        seed[..8].copy_from_slice(&5u64.to_le_bytes());
        seed[8..16].copy_from_slice(&1u64.to_le_bytes());
        seed[16..].copy_from_slice(&6u64.to_le_bytes());
        let old = crc32c::crc32c_append(crc32c::crc32c(&seed), &data);
        assert_eq!(
            old,
            block_checksum(SlotId(5), ShardIndex(1), 0, Generation(6), &data)
        );
    }

    #[test]
    fn verify_finds_the_damaged_block_and_checks_only_what_it_is_given() {
        let sums = ShardSums::new(16384, 4096);
        let mut shard: Vec<u8> = (0..16384u32).map(|i| (i * 31 % 251) as u8).collect();
        let (slot, index, generation) = (SlotId(3), ShardIndex(1), Generation(9));
        let mut crcs = vec![0xdead_beef; 4]; // shard 0's
        sums.compute_into(slot, index, generation, &shard, &mut crcs);
        let mine = sums.of(&crcs, 1);
        assert_eq!(mine.len(), 4);
        assert!(sums.matches(slot, index, generation, &shard, mine));
        shard[2 * 4096 + 17] ^= 0x40;
        let err = sums
            .verify(slot, index, generation, 0, &shard, mine)
            .unwrap_err();
        assert_eq!(err.offset, 8192);
        assert_eq!(err.expected, mine[2]);
        // The blocks around the damage still verify on their own.
        assert!(sums
            .verify(slot, index, generation, 4096, &shard[4096..8192], mine)
            .is_ok());
        assert!(sums
            .verify(slot, index, generation, 12288, &shard[12288..], mine)
            .is_ok());
        // A block verified at the wrong position fails (its index is in the seed).
        assert!(sums
            .verify(slot, index, generation, 0, &shard[4096..8192], mine)
            .is_err());
        assert_eq!(sums.covering(5000, 100), 4096..8192);
        assert_eq!(sums.covering(4096, 4096), 4096..8192);
        assert_eq!(sums.covering(4000, 200), 0..8192);
    }
}
