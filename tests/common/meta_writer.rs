//! A stand-in for the data path of format version 4 in the map tests: each call "writes" rows
//! of data blocks (fresh, consecutive pbns, row-major), notes them in the map with their birth
//! and shard crcs, and points the keys at them, as the pool's packer will.
#![allow(dead_code)]

use stripestore::device::SharedDevice;
use stripestore::format::v4::BlockPointer;
use stripestore::geometry::Geometry;
use stripestore::meta::MapStore;

/// Hands out rows of fresh data blocks.
pub struct Writer {
    next_pbn: u64,
    k: u64,
    width: usize,
}

impl Writer {
    pub fn new(geometry: &Geometry) -> Self {
        Self {
            next_pbn: 0,
            k: geometry.data_chunks() as u64,
            width: geometry.width(),
        }
    }

    /// Point each key at a new data block (rows of up to K keys, in order); the pointers set.
    pub fn write(
        &mut self,
        map: &mut MapStore,
        devices: &[Option<SharedDevice>],
        keys: &[u64],
        rows_per_chunk: u64,
    ) -> stripestore::Result<Vec<BlockPointer>> {
        let mut set = Vec::with_capacity(keys.len());
        for row_keys in keys.chunks(self.k as usize) {
            let first = self.next_pbn;
            self.next_pbn += self.k;
            let per_slot = self.k * rows_per_chunk;
            let slot = first / per_slot;
            let row = ((first % per_slot) / self.k) as u16;
            let birth = map.next_sequence();
            let crcs: Vec<u32> = (0..self.width)
                .map(|s| (first as u32).wrapping_mul(2654435761) ^ (birth as u32) ^ s as u32)
                .collect();
            map.note_row(slot, row, birth, row_keys.to_vec(), crcs)?;
            for (j, key) in row_keys.iter().enumerate() {
                set.push(map.set(devices, *key, first + j as u64)?);
            }
        }
        Ok(set)
    }
}
