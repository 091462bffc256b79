//! Format version 4: the bytes of the paged map (docs/FORMAT.md, "Format version 4").
//!
//! Owns the encodings of every version-4 metadata structure: the 16-byte block pointer and the
//! seeded checksums it carries, map and interior pages, slot records, segment-usage records,
//! forwarding directory records, recovery-point records, intent-log records and uberblocks. Each encoder writes exactly the
//! bytes the design documents; each decoder refuses anything that a correct encoder could not have
//! written (a reserved bit set, a value out of range, a checksum that does not verify) with a reason
//! naming the field, so a caller can wrap it in `Error::CorruptMetadata` with the device and offset.
//!
//! No I/O, no caches, no pool state: the page store, trees and log that use these bytes live above.
//! Nothing here trusts its input: decoders never panic, whatever the bytes.

mod forward;
mod leaf;
mod log;
mod page;
mod pointer;
mod recovery;
mod slot;
pub mod stream;
mod sut;
mod uberblock;

pub use forward::{ForwardGeneration, ForwardRecord, FORWARD_GENERATIONS, FORWARD_RECORD_BYTES};
pub use leaf::{
    check_padding, leaf_checksum, record_is_valid, record_pointer, reseal_leaf, seal_leaf,
    sector_checksum, sector_entry, sector_fields, sector_seed, verify_leaf, verify_leaf_records,
    verify_sector, LeafFormat, LEAF_RECORD_BYTES, RECORDS_PER_SECTOR, SECTORS_PER_LEAF,
    SECTOR_BYTES,
};
pub use log::{LogEntry, LogRecord, LOG_BLOCK_BYTES, LOG_HEADER_BYTES, LOG_MAGIC};
pub use page::{
    page_checksum, verify_page, PageMismatch, PageSeed, PointerPage, PAGE_BYTES, POINTERS_PER_PAGE,
};
pub use pointer::{
    row_checksum, row_checksum_of_block_crc, BlockPointer, Tree, ADDRESS_HOLE, MAX_ADDRESS,
    MAX_BIRTH,
};
pub use recovery::{
    check_recovery_name, RecoveryKind, RecoveryRecord, FLAG_AUTOMATIC, FLAG_RECEIVED,
    FLAG_REFERENCED, NO_KEY, RECOVERY_NAME_MAX, RECOVERY_RECORD_BYTES,
};
pub use slot::{RowRecord, SlotRecord, SlotShape};
pub use sut::{SegmentState, SutRecord, SUT_RECORDS_PER_PAGE, SUT_RECORD_BYTES};
pub use uberblock::{Uberblock, TREES, UBERBLOCK_BYTES, UBERBLOCK_MAGIC};

/// The format version these structures belong to.
pub const VERSION: u32 = 4;

/// Largest value of a 40-bit field.
const U40_MAX: u64 = (1 << 40) - 1;
/// Largest value of a 48-bit field.
const U48_MAX: u64 = (1 << 48) - 1;

/// Little-endian field access on a byte slice whose length the caller has checked.
mod le {
    pub(super) fn get(bytes: &[u8], at: usize, width: usize) -> u64 {
        let mut value = 0u64;
        for (i, byte) in bytes[at..at + width].iter().enumerate() {
            value |= u64::from(*byte) << (8 * i);
        }
        value
    }
    pub(super) fn put(bytes: &mut [u8], at: usize, width: usize, value: u64) {
        debug_assert!(
            width == 8 || value < (1u64 << (8 * width)),
            "field overflow"
        );
        for (i, byte) in bytes[at..at + width].iter_mut().enumerate() {
            *byte = (value >> (8 * i)) as u8;
        }
    }
    pub(super) fn u32_at(bytes: &[u8], at: usize) -> u32 {
        get(bytes, at, 4) as u32
    }
    pub(super) fn u64_at(bytes: &[u8], at: usize) -> u64 {
        get(bytes, at, 8)
    }
}

/// A cursor that reads little-endian fields and reports running out as an error, for the
/// variable-length structures (log entries).
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }
    fn field(&mut self, width: usize, what: &str) -> Result<u64, String> {
        if self.bytes.len() - self.at < width {
            return Err(format!("{what} runs past the end (at byte {})", self.at));
        }
        let value = le::get(self.bytes, self.at, width);
        self.at += width;
        Ok(value)
    }
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], String> {
        if self.bytes.len() - self.at < len {
            return Err(format!("{what} runs past the end (at byte {})", self.at));
        }
        let slice = &self.bytes[self.at..self.at + len];
        self.at += len;
        Ok(slice)
    }
    fn is_empty(&self) -> bool {
        self.at == self.bytes.len()
    }
}
