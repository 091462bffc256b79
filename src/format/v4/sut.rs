//! Segment usage records (tree 2, also kept whole in memory): 8 bytes per segment saying how
//! many of its blocks (or pages) are still referenced and what the segment is used for
//! (docs/FORMAT.md, V4.4).
//!
//! ```text
//! 0..4    referenced u32
//! 4       state u8: 0 free, 1 open-data, 2 full-data, 3 open-metadata, 4 full-metadata,
//!                   5 being cleaned, 6 free-pending
//! 5       slots used u8 (0..=segment_slots)
//! 6..8    state 6 only: txg of the sync that freed it, mod 2^16; 0 otherwise
//! ```

use super::le;

/// Bytes of one record.
pub const SUT_RECORD_BYTES: usize = 8;
/// Records in one 16 KiB SUT leaf page.
pub const SUT_RECORDS_PER_PAGE: usize = super::PAGE_BYTES / SUT_RECORD_BYTES;

/// What a segment is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentState {
    /// Allocatable.
    Free = 0,
    /// Data being written into it.
    OpenData = 1,
    /// Data, no longer written into.
    FullData = 2,
    /// Metadata pages being written into it.
    OpenMetadata = 3,
    /// Metadata pages, no longer written into.
    FullMetadata = 4,
    /// Its referenced blocks are being moved out by the cleaner.
    BeingCleaned = 5,
    /// No longer referenced; allocatable two tree syncs after the one that freed it.
    FreePending = 6,
}

impl SegmentState {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Self::Free,
            1 => Self::OpenData,
            2 => Self::FullData,
            3 => Self::OpenMetadata,
            4 => Self::FullMetadata,
            5 => Self::BeingCleaned,
            6 => Self::FreePending,
            _ => return None,
        })
    }
}

/// One segment's usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SutRecord {
    /// Blocks (or pages) of the segment not yet freed.
    pub referenced: u32,
    /// What it is used for.
    pub state: SegmentState,
    /// The fill pointer of an open segment, in slots.
    pub slots_used: u8,
    /// For a free-pending segment: the freeing sync's txg mod 2^16; 0 otherwise.
    pub freed_txg_low: u16,
}

impl SutRecord {
    /// A free segment.
    pub const FREE: SutRecord = SutRecord {
        referenced: 0,
        state: SegmentState::Free,
        slots_used: 0,
        freed_txg_low: 0,
    };

    /// The 8 bytes of this record.
    #[must_use]
    pub fn encode(&self) -> [u8; SUT_RECORD_BYTES] {
        let mut bytes = [0u8; SUT_RECORD_BYTES];
        le::put(&mut bytes, 0, 4, u64::from(self.referenced));
        bytes[4] = self.state as u8;
        bytes[5] = self.slots_used;
        le::put(&mut bytes, 6, 2, u64::from(self.freed_txg_low));
        bytes
    }

    /// The record in `bytes` (8 of them) of a pool whose segments have `segment_slots` slots.
    ///
    /// # Errors
    /// A reason when a field is out of range or contradicts the state.
    pub fn decode(bytes: &[u8], segment_slots: usize) -> Result<Self, String> {
        if bytes.len() != SUT_RECORD_BYTES {
            return Err(format!("usage record is {} bytes, not 8", bytes.len()));
        }
        let record = Self {
            referenced: le::u32_at(bytes, 0),
            state: SegmentState::from_byte(bytes[4])
                .ok_or_else(|| format!("segment state {}", bytes[4]))?,
            slots_used: bytes[5],
            freed_txg_low: le::get(bytes, 6, 2) as u16,
        };
        if usize::from(record.slots_used) > segment_slots {
            return Err(format!(
                "{} slots used of a {segment_slots}-slot segment",
                record.slots_used
            ));
        }
        let unused = matches!(record.state, SegmentState::Free | SegmentState::FreePending);
        if unused && (record.referenced != 0 || record.slots_used != 0) {
            return Err(format!(
                "{:?} segment with {} referenced and {} slots used",
                record.state, record.referenced, record.slots_used
            ));
        }
        if record.state != SegmentState::FreePending && record.freed_txg_low != 0 {
            return Err(format!("{:?} segment carries a freeing txg", record.state));
        }
        Ok(record)
    }

    /// A 16 KiB SUT leaf of `records` (at most 2048; the rest are free segments).
    ///
    /// # Panics
    /// If more than 2048 records are given (a caller bug).
    #[must_use]
    pub fn encode_page(records: &[SutRecord]) -> Vec<u8> {
        assert!(
            records.len() <= SUT_RECORDS_PER_PAGE,
            "records per SUT page"
        );
        let mut page = vec![0u8; super::PAGE_BYTES];
        for (record, slot) in records.iter().zip(page.chunks_exact_mut(SUT_RECORD_BYTES)) {
            slot.copy_from_slice(&record.encode());
        }
        page
    }

    /// The 2048 records of a SUT leaf.
    ///
    /// # Errors
    /// A reason naming the first record that does not decode.
    pub fn decode_page(page: &[u8], segment_slots: usize) -> Result<Vec<SutRecord>, String> {
        if page.len() != super::PAGE_BYTES {
            return Err(format!("SUT page is {} bytes", page.len()));
        }
        page.chunks_exact(SUT_RECORD_BYTES)
            .enumerate()
            .map(|(i, bytes)| {
                Self::decode(bytes, segment_slots).map_err(|e| format!("record {i}: {e}"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip_and_a_page_of_zeros_is_all_free() {
        let records = [
            SutRecord::FREE,
            SutRecord {
                referenced: 1024,
                state: SegmentState::FullData,
                slots_used: 64,
                freed_txg_low: 0,
            },
            SutRecord {
                referenced: 0,
                state: SegmentState::FreePending,
                slots_used: 0,
                freed_txg_low: 0xfffe,
            },
        ];
        let page = SutRecord::encode_page(&records);
        let decoded = SutRecord::decode_page(&page, 64).unwrap();
        assert_eq!(&decoded[..3], &records);
        assert!(decoded[3..].iter().all(|r| *r == SutRecord::FREE));
        assert_eq!(records[1].encode(), [0, 4, 0, 0, 2, 64, 0, 0]);
    }

    #[test]
    fn contradictions_are_refused() {
        for bytes in [
            [0, 0, 0, 0, 7, 0, 0, 0],  // no such state
            [1, 0, 0, 0, 0, 0, 0, 0],  // free with a reference
            [0, 0, 0, 0, 1, 65, 0, 0], // more slots than the segment has
            [5, 0, 0, 0, 2, 1, 1, 0],  // a freeing txg on a full segment
            [0, 0, 0, 0, 6, 3, 0, 0],  // free-pending with slots used
        ] {
            assert!(SutRecord::decode(&bytes, 64).is_err(), "{bytes:?}");
        }
        let mut page = SutRecord::encode_page(&[]);
        page[8 * 100 + 4] = 9;
        assert!(SutRecord::decode_page(&page, 64)
            .unwrap_err()
            .starts_with("record 100"));
    }
}
