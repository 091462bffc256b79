//! Slot records (tree 1, the slot summary): for each slot of a data segment, which rows were
//! written, when, by how many data blocks, which logical block each data block belongs to, and
//! the crc of every shard-block (docs/FORMAT.md, V4.4). The reverse map for the cleaner and
//! rebuild, and the checksums that let scrub and rebuild verify every block of a slot, live or
//! dead, data or parity.
//!
//! ```text
//! 0        kind u8: 0 free (every byte of the record zero), 1 data
//! 1        zero
//! 2..4     rows written u16 (0..=B)
//! 4..24    zero
//! 24..     per row r < B: birth u48 ‖ data blocks n u8 ‖ zero u8                        8 B each
//!          owner of each data block, K·B × u40, row-major (pbn order); 0xFF_FFFF_FFFF = none
//!          crc32c of every shard-block, width·B × u32, shard-major: crc[j·B + r]
//!          forwarding-target bitmap, K·B bits
//! rest     zero, up to R = the smallest power of two that holds the above
//! ```
//!
//! A row not yet written has birth 0, n 0, no owners, crcs 0 and no bits. Within a written narrow
//! row (n < K), data blocks j >= n were never written: no owner, no bit, and every shard carrying
//! such a chunk has crc 0 (shard j for rs; the N shards jN.. of chunk j for mirror and raid10).

use super::le;

const NO_OWNER: u64 = super::U40_MAX;
const HEADER_BYTES: usize = 24;

/// The shape of a layout's slots, which sizes its slot record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotShape {
    /// Data chunks per slot (K; 1 for mirror:N, groups for raid10).
    pub data_chunks: usize,
    /// Shards per slot (K + M for rs, N for mirror:N, N·groups for raid10).
    pub width: usize,
    /// Rows per slot: chunk bytes / 4 KiB.
    pub rows: usize,
    /// Shards carrying each data chunk: 1 for rs (shard `j < K` carries chunk `j`, the rest
    /// are parity), N for mirror:N and raid10:N (shards `jN .. jN + N - 1` carry chunk `j`).
    pub copies: usize,
}

impl SlotShape {
    fn owners_at(&self) -> usize {
        HEADER_BYTES + 8 * self.rows
    }
    fn crcs_at(&self) -> usize {
        self.owners_at() + 5 * self.data_chunks * self.rows
    }
    fn bitmap_at(&self) -> usize {
        self.crcs_at() + 4 * self.width * self.rows
    }
    fn used_bytes(&self) -> usize {
        self.bitmap_at() + (self.data_chunks * self.rows).div_ceil(8)
    }
    /// Bytes of one record (R): a power of two, so records never straddle a page.
    #[must_use]
    pub fn record_bytes(&self) -> usize {
        self.used_bytes().next_power_of_two()
    }
    /// Data blocks in a slot (K·B).
    #[must_use]
    pub fn data_blocks(&self) -> usize {
        self.data_chunks * self.rows
    }
    /// The data chunk shard `shard` carries (`None` for parity).
    #[must_use]
    pub fn data_chunk_of(&self, shard: usize) -> Option<usize> {
        if self.copies > 1 {
            Some(shard / self.copies)
        } else {
            (shard < self.data_chunks).then_some(shard)
        }
    }
    /// Whether shard `shard` of a row of `n` data blocks was never written (it carries a data
    /// chunk `n..K` of a narrow row).
    fn unwritten(&self, shard: usize, n: usize) -> bool {
        self.data_chunk_of(shard).is_some_and(|j| j >= n)
    }
    /// Whether the shape is one a pool can have (every count in range, the record fits a page).
    #[must_use]
    pub fn is_valid(&self) -> bool {
        (1..=255).contains(&self.copies)
            && (self.copies == 1 || self.width == self.data_chunks * self.copies)
            && (1..=255).contains(&self.data_chunks)
            && self.width > self.data_chunks.saturating_sub(1)
            && self.width <= 255
            && (1..=u16::MAX as usize).contains(&self.rows)
            && self.used_bytes() <= super::PAGE_BYTES
    }
}

/// One row of a slot: its birth and how many data blocks it carries (0 = not written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RowRecord {
    /// The sequence of the commit the row was written in (0 = not written).
    pub birth: u64,
    /// Data blocks written in the row (1..=K), the rest count as zeros in its parity.
    pub data_blocks: u8,
}

/// What a data slot holds; see the module header for the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRecord {
    shape: SlotShape,
    rows: Vec<RowRecord>,
    owners: Vec<Option<u64>>,
    crcs: Vec<u32>,
    forward_targets: Vec<bool>,
}

impl SlotRecord {
    /// A data slot with no row written.
    #[must_use]
    pub fn new(shape: SlotShape) -> Self {
        Self {
            shape,
            rows: vec![RowRecord::default(); shape.rows],
            owners: vec![None; shape.data_blocks()],
            crcs: vec![0; shape.width * shape.rows],
            forward_targets: vec![false; shape.data_blocks()],
        }
    }

    /// Rows written so far (rows are written in order).
    #[must_use]
    pub fn rows_written(&self) -> usize {
        self.rows.iter().take_while(|r| r.birth != 0).count()
    }
    /// Row `row`.
    #[must_use]
    pub fn row(&self, row: usize) -> RowRecord {
        self.rows[row]
    }
    /// Owner of data block `j` of row `row`: the logical block (or, for a forwarding target,
    /// the source pbn), `None` for padding.
    #[must_use]
    pub fn owner(&self, row: usize, j: usize) -> Option<u64> {
        self.owners[row * self.shape.data_chunks + j]
    }
    /// Whether data block `j` of row `row` was written by the cleaner as a forwarding target.
    #[must_use]
    pub fn is_forward_target(&self, row: usize, j: usize) -> bool {
        self.forward_targets[row * self.shape.data_chunks + j]
    }
    /// The crc of shard `j`'s block in row `row`.
    #[must_use]
    pub fn crc(&self, row: usize, shard: usize) -> u32 {
        self.crcs[shard * self.shape.rows + row]
    }

    /// Amend the record with the next row: `owners` of its `n` data blocks (each with whether it
    /// is a forwarding target) and the crc of every shard-block of the row, in shard order.
    ///
    /// # Errors
    /// When the row is not the next one, the slot is full, or a count is wrong (a caller bug
    /// reported rather than encoded).
    pub fn add_row(
        &mut self,
        row: usize,
        birth: u64,
        owners: &[(Option<u64>, bool)],
        crcs: &[u32],
    ) -> Result<(), String> {
        let k = self.shape.data_chunks;
        if row != self.rows_written() || row >= self.shape.rows {
            return Err(format!("row {row} is not the next row of the slot"));
        }
        if owners.is_empty() || owners.len() > k || crcs.len() != self.shape.width {
            return Err(format!(
                "row of {} blocks and {} crcs for a slot of K = {k}, width {}",
                owners.len(),
                crcs.len(),
                self.shape.width
            ));
        }
        if !(1..=super::U48_MAX).contains(&birth) {
            return Err(format!("row birth {birth}"));
        }
        if owners.iter().any(|(o, _)| o.is_some_and(|o| o >= NO_OWNER)) {
            return Err("owner out of range".to_string());
        }
        self.rows[row] = RowRecord {
            birth,
            data_blocks: owners.len() as u8,
        };
        for (j, (owner, target)) in owners.iter().enumerate() {
            self.owners[row * k + j] = *owner;
            self.forward_targets[row * k + j] = *target && owner.is_some();
        }
        for (j, crc) in crcs.iter().enumerate() {
            // A data block never written in a narrow row has no crc.
            self.crcs[j * self.shape.rows + row] = if self.shape.unwritten(j, owners.len()) {
                0
            } else {
                *crc
            };
        }
        Ok(())
    }

    /// The R bytes of this record.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let shape = &self.shape;
        let mut bytes = vec![0u8; shape.record_bytes()];
        bytes[0] = 1;
        le::put(&mut bytes, 2, 2, self.rows_written() as u64);
        for (r, row) in self.rows.iter().enumerate() {
            le::put(&mut bytes, HEADER_BYTES + 8 * r, 6, row.birth);
            bytes[HEADER_BYTES + 8 * r + 6] = row.data_blocks;
        }
        for (i, owner) in self.owners.iter().enumerate() {
            le::put(
                &mut bytes,
                shape.owners_at() + 5 * i,
                5,
                owner.unwrap_or(NO_OWNER),
            );
        }
        for (i, crc) in self.crcs.iter().enumerate() {
            le::put(&mut bytes, shape.crcs_at() + 4 * i, 4, u64::from(*crc));
        }
        for (i, bit) in self.forward_targets.iter().enumerate() {
            if *bit {
                bytes[shape.bitmap_at() + i / 8] |= 1 << (i % 8);
            }
        }
        bytes
    }

    /// The record in `bytes` (exactly R of them): `None` for a free slot's all-zero record.
    ///
    /// # Errors
    /// A reason naming the field when the bytes are not what an encoder writes.
    pub fn decode(shape: SlotShape, bytes: &[u8]) -> Result<Option<Self>, String> {
        if !shape.is_valid() {
            return Err(format!("slot shape {shape:?} is not one a pool can have"));
        }
        if bytes.len() != shape.record_bytes() {
            return Err(format!(
                "slot record is {} bytes, not {}",
                bytes.len(),
                shape.record_bytes()
            ));
        }
        match bytes[0] {
            0 if bytes.iter().all(|b| *b == 0) => return Ok(None),
            0 => return Err("free slot record has non-zero bytes".to_string()),
            1 => {}
            kind => return Err(format!("slot record kind {kind}")),
        }
        if bytes[1] != 0 || bytes[4..HEADER_BYTES].iter().any(|b| *b != 0) {
            return Err("slot record header has reserved bytes set".to_string());
        }
        let k = shape.data_chunks;
        let rows_written = le::get(bytes, 2, 2) as usize;
        if rows_written > shape.rows {
            return Err(format!(
                "{rows_written} rows written in a slot of {}",
                shape.rows
            ));
        }
        let mut record = Self::new(shape);
        for r in 0..shape.rows {
            let at = HEADER_BYTES + 8 * r;
            let birth = le::get(bytes, at, 6);
            let n = bytes[at + 6];
            if bytes[at + 7] != 0 {
                return Err(format!("row {r}: reserved byte set"));
            }
            let written = r < rows_written;
            if written && (birth == 0 || n == 0 || usize::from(n) > k) {
                return Err(format!(
                    "row {r}: birth {birth}, {n} data blocks of K = {k}"
                ));
            }
            if !written && (birth != 0 || n != 0) {
                return Err(format!(
                    "row {r} is past the rows written but has birth {birth}"
                ));
            }
            record.rows[r] = RowRecord {
                birth,
                data_blocks: n,
            };
            for j in 0..k {
                let i = r * k + j;
                let owner = le::get(bytes, shape.owners_at() + 5 * i, 5);
                let bit = bytes[shape.bitmap_at() + i / 8] & (1 << (i % 8)) != 0;
                let block_written = j < usize::from(n);
                if !block_written && owner != NO_OWNER {
                    return Err(format!(
                        "row {r} block {j} was not written but has an owner"
                    ));
                }
                if bit && owner == NO_OWNER {
                    return Err(format!(
                        "row {r} block {j} is a forwarding target with no owner"
                    ));
                }
                record.owners[i] = (owner != NO_OWNER).then_some(owner);
                record.forward_targets[i] = bit;
            }
            for j in 0..shape.width {
                let crc = le::u32_at(bytes, shape.crcs_at() + 4 * (j * shape.rows + r));
                let never_written = !written || shape.unwritten(j, usize::from(n));
                if never_written && crc != 0 {
                    return Err(format!("row {r} shard {j} was never written but has a crc"));
                }
                record.crcs[j * shape.rows + r] = crc;
            }
        }
        let bits = shape.data_blocks();
        let last = bytes[shape.bitmap_at() + bits.div_ceil(8) - 1];
        if !bits.is_multiple_of(8) && last >> (bits % 8) != 0 {
            return Err("forwarding bitmap has bits past the last block".to_string());
        }
        if bytes[shape.used_bytes()..].iter().any(|b| *b != 0) {
            return Err("slot record padding is not zero".to_string());
        }
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RS42: SlotShape = SlotShape {
        data_chunks: 4,
        width: 6,
        rows: 4,
        copies: 1,
    };

    #[test]
    fn record_sizes_are_the_documented_ones() {
        assert_eq!(RS42.record_bytes(), 256);
        let mirror2 = SlotShape {
            data_chunks: 1,
            width: 2,
            rows: 4,
            copies: 2,
        };
        assert_eq!(mirror2.record_bytes(), 128);
        let rs83 = SlotShape {
            data_chunks: 8,
            width: 11,
            rows: 4,
            copies: 1,
        };
        assert_eq!(rs83.record_bytes(), 512);
    }

    #[test]
    fn rows_roundtrip_and_narrow_rows_have_no_unwritten_crcs() {
        let mut record = SlotRecord::new(RS42);
        record
            .add_row(
                0,
                5,
                &[
                    (Some(10), false),
                    (Some(11), false),
                    (Some(12), true),
                    (Some(13), false),
                ],
                &[1, 2, 3, 4, 5, 6],
            )
            .unwrap();
        record
            .add_row(1, 6, &[(Some(99), false)], &[7, 8, 9, 10, 11, 12])
            .unwrap();
        assert!(
            record.add_row(3, 7, &[(Some(1), false)], &[0; 6]).is_err(),
            "rows in order"
        );
        let bytes = record.encode();
        let decoded = SlotRecord::decode(RS42, &bytes).unwrap().unwrap();
        assert_eq!(decoded, record);
        assert_eq!(decoded.rows_written(), 2);
        assert_eq!(decoded.row(1).data_blocks, 1);
        assert_eq!(
            decoded.crc(1, 1),
            0,
            "block 1 of the narrow row was never written"
        );
        assert_eq!(decoded.crc(1, 4), 11, "parity is always written");
        assert!(decoded.is_forward_target(0, 2));
        assert_eq!(decoded.owner(1, 2), None);
        assert_eq!(SlotRecord::decode(RS42, &vec![0; 256]), Ok(None));
    }

    #[test]
    fn a_raid10_narrow_row_keeps_both_copies_of_its_chunk_and_none_of_the_unwritten_one() {
        // raid10:2 on four members: K = 2 groups, shards 0 and 1 carry chunk 0, 2 and 3 chunk 1.
        let raid10 = SlotShape {
            data_chunks: 2,
            width: 4,
            rows: 4,
            copies: 2,
        };
        let mut record = SlotRecord::new(raid10);
        record
            .add_row(0, 9, &[(Some(40), false)], &[21, 21, 0, 0])
            .unwrap();
        let decoded = SlotRecord::decode(raid10, &record.encode())
            .unwrap()
            .unwrap();
        assert_eq!((decoded.crc(0, 0), decoded.crc(0, 1)), (21, 21));
        assert_eq!((decoded.crc(0, 2), decoded.crc(0, 3)), (0, 0));
        // A crc on a copy of the unwritten chunk is not what an encoder writes.
        let mut bytes = record.encode();
        let at = raid10.crcs_at() + 4 * (3 * raid10.rows);
        bytes[at] = 1;
        assert!(SlotRecord::decode(raid10, &bytes).is_err());
        assert!(
            !SlotShape { copies: 2, ..RS42 }.is_valid(),
            "copies must tile the width"
        );
    }

    #[test]
    fn what_no_encoder_writes_is_refused() {
        let mut record = SlotRecord::new(RS42);
        record
            .add_row(0, 5, &[(Some(10), false)], &[1, 0, 0, 0, 5, 6])
            .unwrap();
        let good = record.encode();
        let mut flips = Vec::new();
        // A crc for a block the narrow row never wrote; an owner past the rows written; padding.
        let mut bad = good.clone();
        bad[RS42.crcs_at() + 4 * RS42.rows] = 1;
        flips.push(bad);
        let mut bad = good.clone();
        le::put(&mut bad, RS42.owners_at() + 5 * 4, 5, 3);
        flips.push(bad);
        let mut bad = good.clone();
        bad[255] = 1;
        flips.push(bad);
        let mut bad = good.clone();
        bad[2] = 5;
        flips.push(bad);
        let mut bad = good.clone();
        bad[0] = 2;
        flips.push(bad);
        for bad in flips {
            assert!(SlotRecord::decode(RS42, &bad).is_err());
        }
        assert!(SlotRecord::decode(RS42, &good[..128]).is_err());
    }
}
