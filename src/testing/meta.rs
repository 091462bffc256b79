//! A stand-in for the data path of format version 4 in the map tests and the `meta_recovery`
//! fuzz target: each call "writes" rows of data blocks (fresh rows of slots the map's open
//! data segment hands out, row-major), notes them in the map with their birth and shard crcs,
//! and points the keys at them, as the pool's packer will. No data bytes are written.

use crate::device::SharedDevice;
use crate::format::v4::BlockPointer;
use crate::geometry::Geometry;
use crate::meta::MapStore;

/// Hands out rows of fresh data blocks.
#[derive(Debug, Clone)]
pub struct MetaWriter {
    k: u64,
    width: usize,
    rows_per_chunk: u64,
}

impl MetaWriter {
    /// A writer for a map on `geometry`.
    #[must_use]
    pub fn new(geometry: &Geometry) -> Self {
        Self {
            k: geometry.data_chunks() as u64,
            width: geometry.width(),
            rows_per_chunk: (geometry.chunk_bytes / 4096).max(1),
        }
    }

    /// Point each key at a new data block (rows of up to K keys, in order); the pointers set.
    ///
    /// # Errors
    /// What [`MapStore::note_row`] and [`MapStore::set`] return.
    pub fn write(
        &mut self,
        map: &mut MapStore,
        devices: &[Option<SharedDevice>],
        keys: &[u64],
    ) -> crate::Result<Vec<BlockPointer>> {
        let mut set = Vec::with_capacity(keys.len());
        for row_keys in keys.chunks(usize::try_from(self.k).unwrap_or(1)) {
            let first = self.note(map, row_keys)?;
            for (j, key) in row_keys.iter().enumerate() {
                set.push(map.set(devices, *key, first + j as u64)?);
            }
        }
        Ok(set)
    }

    /// Note the next row as owned by `row_keys` (at most K), with made-up crcs; its first
    /// data block.
    fn note(&self, map: &mut MapStore, row_keys: &[u64]) -> crate::Result<u64> {
        let (slot, row) = map.next_row()?;
        let first = slot * self.k * self.rows_per_chunk + u64::from(row) * self.k;
        let birth = map.next_sequence();
        let crcs: Vec<u32> = (0..self.width)
            .map(|s| (first as u32).wrapping_mul(2_654_435_761) ^ (birth as u32) ^ s as u32)
            .collect();
        map.note_row(slot, row, birth, row_keys.to_vec(), crcs)?;
        Ok(first)
    }

    /// [`MetaWriter::write`] for the consecutive keys `first .. first + count`, every row
    /// noted first and then the whole run pointed at once with [`MapStore::set_run`]; the
    /// data blocks set.
    ///
    /// # Errors
    /// What [`MapStore::note_row`] and [`MapStore::set_run`] return.
    pub fn write_run(
        &mut self,
        map: &mut MapStore,
        devices: &[Option<SharedDevice>],
        first: u64,
        count: u64,
    ) -> crate::Result<Vec<u64>> {
        let keys: Vec<u64> = (first..first + count).collect();
        let mut pbns = Vec::with_capacity(keys.len());
        for row_keys in keys.chunks(usize::try_from(self.k).unwrap_or(1)) {
            let at = self.note(map, row_keys)?;
            pbns.extend((0..row_keys.len() as u64).map(|j| at + j));
        }
        map.set_run(devices, first, &pbns)?;
        Ok(pbns)
    }
}
