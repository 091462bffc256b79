//! Where the blocks of a version-4 data row are (docs/FORMAT.md, V4.2 and V4.3): a data block
//! number (pbn) ↔ its slot, row and data chunk; the shards that carry a chunk; the device and
//! byte offset of one shard-block; the seed of its crc; and the merging of 4 KiB pieces into
//! one request per contiguous run of a device.
//!
//! Pure arithmetic over [`Geometry`]: no I/O, no map.

use crate::format::v4::row_checksum;
use crate::geometry::{Geometry, Layout};
use crate::types::{DeviceIndex, ShardIndex, SlotId};
use std::ops::Range;

/// Bytes of a logical block, a row's shard-block and a checksum block in version 4.
pub const BLOCK_BYTES: usize = 4096;
const BLOCK: u64 = BLOCK_BYTES as u64;

/// Largest request one merged run may make (bytes).
const RUN_MAX_BYTES: u64 = 1 << 20;

/// A data block's place: its slot, its row in the slot and the data chunk `j < K` it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct BlockPlace {
    pub(crate) slot: u64,
    pub(crate) row: u16,
    pub(crate) chunk: usize,
}

/// Row arithmetic of one pool.
#[derive(Debug, Clone)]
pub(crate) struct Rows {
    geometry: Geometry,
    k: u64,
    rows_per_chunk: u64,
    copies: usize,
}

impl Rows {
    pub(crate) fn new(geometry: &Geometry) -> Self {
        let copies = match geometry.layout {
            Layout::Mirror { copies } | Layout::Raid10 { copies } => copies,
            Layout::ReedSolomon { .. } => 1,
        };
        Self {
            geometry: geometry.clone(),
            k: geometry.data_chunks() as u64,
            rows_per_chunk: (geometry.chunk_bytes / BLOCK).max(1),
            copies,
        }
    }

    pub(crate) fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Data chunks per row (K).
    pub(crate) fn k(&self) -> usize {
        usize::try_from(self.k).unwrap_or(1)
    }

    /// Rows per slot (B).
    #[cfg(test)]
    pub(crate) fn rows_per_slot(&self) -> u64 {
        self.rows_per_chunk
    }

    /// The place of data block `pbn` (row-major: a row's K blocks are consecutive pbns).
    pub(crate) fn place(&self, pbn: u64) -> BlockPlace {
        let per_slot = self.k * self.rows_per_chunk;
        let within = pbn % per_slot;
        BlockPlace {
            slot: pbn / per_slot,
            row: u16::try_from(within / self.k).unwrap_or(u16::MAX),
            chunk: usize::try_from(within % self.k).unwrap_or(0),
        }
    }

    /// The pbn of data chunk `chunk` of row `row` of `slot`.
    pub(crate) fn pbn(&self, slot: u64, row: u16, chunk: usize) -> u64 {
        slot * self.k * self.rows_per_chunk + u64::from(row) * self.k + chunk as u64
    }

    /// The shards that carry data chunk `chunk` (one for rs, N copies for mirror and raid10).
    pub(crate) fn shards_of(&self, chunk: usize) -> Range<usize> {
        chunk * self.copies..(chunk + 1) * self.copies
    }

    /// The data chunk shard `shard` carries (`None`: parity).
    pub(crate) fn chunk_of(&self, shard: usize) -> Option<usize> {
        self.geometry.shard_data_chunk(ShardIndex(shard))
    }

    /// The chunk index `q` that seeds a shard-block's crc: the shard for rs, the data chunk the
    /// copy carries for mirror and raid10 (so every copy of a block has the same crc).
    pub(crate) fn seed_chunk(&self, shard: usize) -> u32 {
        let q = if self.copies > 1 {
            shard / self.copies
        } else {
            shard
        };
        u32::try_from(q).unwrap_or(u32::MAX)
    }

    /// crc of shard `shard`'s block of row `row` of `slot`, born at `birth`.
    pub(crate) fn crc(&self, slot: u64, shard: usize, row: u16, birth: u64, bytes: &[u8]) -> u32 {
        row_checksum(slot, self.seed_chunk(shard), u32::from(row), birth, bytes)
    }

    /// Device and byte offset of shard `shard`'s block of row `row` of `slot`.
    pub(crate) fn shard_block(&self, slot: u64, shard: usize, row: u16) -> (DeviceIndex, u64) {
        let (device, chunk_at) = self
            .geometry
            .shard_location(SlotId(slot), ShardIndex(shard));
        (device, chunk_at + u64::from(row) * BLOCK)
    }

    /// Whether shard `shard` of a row of `n` data blocks was never written (it carries a data
    /// chunk `n..K` of a narrow row: those count as zeros).
    pub(crate) fn unwritten(&self, shard: usize, n: usize) -> bool {
        self.chunk_of(shard).is_some_and(|j| j >= n)
    }
}

/// A 4 KiB piece of device I/O: the device, its byte offset, and which buffer block it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Piece {
    pub(crate) device: usize,
    pub(crate) offset: u64,
    pub(crate) index: usize,
}

/// Pieces merged into requests: each run is pieces of one device at consecutive offsets, in
/// order, at most 1 MiB.
pub(crate) fn runs(mut pieces: Vec<Piece>) -> Vec<Vec<Piece>> {
    pieces.sort_unstable();
    let mut runs: Vec<Vec<Piece>> = Vec::new();
    for piece in pieces {
        if let Some(run) = runs.last_mut() {
            if let Some(last) = run.last() {
                if last.device == piece.device
                    && last.offset + BLOCK == piece.offset
                    && (run.len() as u64 + 1) * BLOCK <= RUN_MAX_BYTES
                {
                    run.push(piece);
                    continue;
                }
            }
        }
        runs.push(vec![piece]);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(layout: &str, members: usize) -> Rows {
        let layout: Layout = layout.parse().unwrap();
        Rows::new(&Geometry::new_v4(layout, members, 16384, 64 << 20, 4, 16384).unwrap())
    }

    #[test]
    fn pbn_and_place_are_inverse_and_row_major() {
        for (layout, members) in [
            ("rs:4+2", 6),
            ("mirror:2", 2),
            ("raid10:2", 4),
            ("rs:2+1", 5),
        ] {
            let rows = rows(layout, members);
            for pbn in [0, 1, 3, 4, 15, 16, 17, 1000, 4095] {
                let place = rows.place(pbn);
                assert_eq!(
                    rows.pbn(place.slot, place.row, place.chunk),
                    pbn,
                    "{layout}"
                );
                assert!(place.chunk < rows.k());
                assert!(u64::from(place.row) < rows.rows_per_slot());
            }
            // A row's K blocks are consecutive pbns.
            let k = rows.k() as u64;
            assert_eq!(rows.place(k).row, 1, "{layout}");
        }
    }

    #[test]
    fn copies_of_a_chunk_share_a_seed_and_sit_on_distinct_devices() {
        for (layout, members) in [
            ("mirror:3", 3),
            ("raid10:2", 4),
            ("raid10:3", 6),
            ("rs:4+2", 6),
        ] {
            let rows = rows(layout, members);
            for chunk in 0..rows.k() {
                let shards = rows.shards_of(chunk);
                let seeds: Vec<u32> = shards.clone().map(|s| rows.seed_chunk(s)).collect();
                assert!(seeds.iter().all(|q| *q == seeds[0]), "{layout}");
                for s in shards.clone() {
                    assert_eq!(rows.chunk_of(s), Some(chunk), "{layout}");
                }
                let mut devices: Vec<usize> =
                    shards.map(|s| rows.shard_block(5, s, 1).0 .0).collect();
                devices.sort_unstable();
                devices.dedup();
                assert_eq!(devices.len(), rows.shards_of(chunk).len(), "{layout}");
            }
        }
    }

    #[test]
    fn runs_merge_consecutive_blocks_of_one_device_only() {
        let piece = |device, offset, index| Piece {
            device,
            offset,
            index,
        };
        let merged = runs(vec![
            piece(1, 8192, 2),
            piece(0, 0, 0),
            piece(1, 4096, 1),
            piece(0, 8192, 3),
            piece(2, 4096, 4),
        ]);
        let shape: Vec<Vec<usize>> = merged
            .iter()
            .map(|r| r.iter().map(|p| p.index).collect())
            .collect();
        assert_eq!(shape, vec![vec![0], vec![3], vec![1, 2], vec![4]]);
    }
}
