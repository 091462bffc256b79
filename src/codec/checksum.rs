//! The chunk checksum: crc32c over the chunk, seeded with the chunk's physical slot, shard index
//! and write generation.
//!
//! The checksum is stored in the stripe map, never next to the chunk. Binding the address means a
//! chunk that lands in the wrong place (misdirected write) cannot verify there; binding the
//! generation means old, self-consistent content left by a lost write cannot verify either.

use crate::types::{Generation, ShardIndex, SlotId};

/// crc32c of `bytes`, seeded with where and when they were written.
#[must_use]
pub fn shard_checksum(
    slot: SlotId,
    shard: ShardIndex,
    generation: Generation,
    bytes: &[u8],
) -> u32 {
    let mut seed = [0u8; 24];
    seed[..8].copy_from_slice(&slot.0.to_le_bytes());
    seed[8..16].copy_from_slice(&(shard.0 as u64).to_le_bytes());
    seed[16..].copy_from_slice(&generation.0.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&seed), bytes)
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
    fn checksum_binds_address_and_generation() {
        let data = [7u8; 4096];
        let base = shard_checksum(SlotId(1), ShardIndex(2), Generation(3), &data);
        assert_ne!(
            base,
            shard_checksum(SlotId(2), ShardIndex(2), Generation(3), &data)
        );
        assert_ne!(
            base,
            shard_checksum(SlotId(1), ShardIndex(3), Generation(3), &data)
        );
        assert_ne!(
            base,
            shard_checksum(SlotId(1), ShardIndex(2), Generation(4), &data)
        );
        assert_eq!(
            base,
            shard_checksum(SlotId(1), ShardIndex(2), Generation(3), &data)
        );
    }
}
