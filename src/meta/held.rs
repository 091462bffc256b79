//! A verified sector of a map leaf as the page cache holds it (docs/FORMAT.md V4.17 "The
//! cache", V4.17a "Compact cached sectors"): either the 4 KiB as read (**whole**), or, when
//! smaller, its 256 records as runs of consecutive addresses with one birth followed by the
//! written records' crcs (**compact**): about a quarter of the bytes for a sector whose blocks
//! were written in order, a few dozen bytes for a sector of holes with a block or two. Either
//! form ends with the 16-byte leaf pointer it was verified through, which alone decides
//! whether it is still current.
//!
//! Owns: the in-memory encoding of a held sector and the lookup of one record in it. Must not
//! read devices, verify a sector's crc (the page store did, before anything is held) or know
//! the cache's policy. Nothing here is ever written to a device.

use crate::format::v4::{
    record_is_valid, record_pointer, sector_entry, sector_fields, BlockPointer, ADDRESS_HOLE,
    RECORDS_PER_SECTOR, SECTOR_BYTES,
};

/// Bytes of one run of a compact form.
const RUN_BYTES: usize = 16;
/// Runs a compact form may have: past this the sector stays whole (at 128 runs of written
/// blocks the compact form would still be 3 KiB of 4).
const MAX_RUNS: usize = 128;
/// Bytes of the two counts that end a compact form's body.
const COUNTS_BYTES: usize = 4;
/// Length of a held sector in the whole form: the sector, then its leaf pointer.
pub const WHOLE_BYTES: usize = SECTOR_BYTES + BlockPointer::BYTES;

/// One run while building: records from `first` share `birth`, and their addresses count up
/// from `address` (or are all the hole).
#[derive(Debug, Clone, Copy)]
struct Run {
    first: usize,
    crc_base: usize,
    address: u64,
    birth: u64,
}

/// What the cache keeps for `verified`, a sector as [`PageStore::read_sector`] returns it
/// (4 KiB then its leaf pointer): the compact form when it is shorter and decodes to the same
/// 256 pointers, else `verified` itself. A record that is no valid spelling keeps the whole
/// form, so it is reported as before.
///
/// [`PageStore::read_sector`]: crate::meta::PageStore::read_sector
#[must_use]
pub fn hold(verified: Vec<u8>) -> Vec<u8> {
    match compact(&verified) {
        Some(compact) if same_records(&verified, &compact) => compact,
        _ => verified,
    }
}

/// The compact form of a whole held sector, if every record decodes and it is shorter.
/// Not checked against the whole form ([`hold`] does that).
fn compact(whole: &[u8]) -> Option<Vec<u8>> {
    if whole.len() != WHOLE_BYTES {
        return None;
    }
    let (sector, pointer) = whole.split_at(SECTOR_BYTES);
    let mut runs: Vec<Run> = Vec::with_capacity(16);
    let mut crcs: Vec<u32> = Vec::with_capacity(RECORDS_PER_SECTOR);
    // The form's length so far: a sector that cannot come out shorter is left at once.
    let mut length = COUNTS_BYTES + pointer.len();
    for index in 0..RECORDS_PER_SECTOR {
        let (address, birth, crc) = sector_fields(sector, index);
        if !record_is_valid(address, birth, crc) {
            return None;
        }
        let extends = runs.last().is_some_and(|run| {
            run.birth == birth
                && if address == ADDRESS_HOLE {
                    run.address == ADDRESS_HOLE
                } else {
                    run.address != ADDRESS_HOLE
                        && run.address + (index - run.first) as u64 == address
                }
        });
        if !extends {
            if runs.len() == MAX_RUNS {
                // Blocks written out of order: the form would save little, and a miss
                // would pay for the whole pass.
                return None;
            }
            length += RUN_BYTES;
            runs.push(Run {
                first: index,
                crc_base: if address == ADDRESS_HOLE {
                    0
                } else {
                    crcs.len()
                },
                address,
                birth,
            });
        }
        if address != ADDRESS_HOLE {
            length += 4;
            crcs.push(crc);
        }
        if length >= whole.len() {
            return None;
        }
    }
    let mut out = Vec::with_capacity(length);
    for run in &runs {
        out.extend_from_slice(&u16::try_from(run.first).ok()?.to_le_bytes());
        out.extend_from_slice(&u16::try_from(run.crc_base).ok()?.to_le_bytes());
        out.extend_from_slice(&run.address.to_le_bytes()[..5]);
        out.extend_from_slice(&run.birth.to_le_bytes()[..6]);
        out.push(0);
    }
    for crc in &crcs {
        out.extend_from_slice(&crc.to_le_bytes());
    }
    out.extend_from_slice(&u16::try_from(runs.len()).ok()?.to_le_bytes());
    out.extend_from_slice(&u16::try_from(crcs.len()).ok()?.to_le_bytes());
    out.extend_from_slice(pointer);
    Some(out)
}

/// Whether every record of `compact`, found as [`entry`] finds it, has the same three
/// fields as in `whole` (equal fields make equal pointers: both go through
/// [`record_pointer`]). Integer compares only: this runs on every miss.
fn same_records(whole: &[u8], compact: &[u8]) -> bool {
    let sector = &whole[..SECTOR_BYTES];
    let Some(counts) = counts(compact) else {
        return false;
    };
    (0..RECORDS_PER_SECTOR)
        .all(|index| compact_fields(compact, counts, index) == Some(sector_fields(sector, index)))
}

/// Whether `held` (either form) was verified through `pointer`, the leaf pointer its parent
/// holds now (a leaf rewritten by a sync has a new page number or birth: V4.17 "The cache").
#[must_use]
pub fn verified_through(held: &[u8], pointer: &BlockPointer) -> bool {
    held.len() > BlockPointer::BYTES && held[held.len() - BlockPointer::BYTES..] == pointer.encode()
}

/// Record `index` (< 256) of a held sector, in either form.
///
/// # Errors
/// A reason when the record is no valid spelling (whole form: as [`sector_entry`]) or the
/// held bytes are no form at all (a program fault: the cache holds only what [`hold`] made).
pub fn entry(held: &[u8], index: usize) -> Result<BlockPointer, String> {
    if held.len() == WHOLE_BYTES {
        return sector_entry(&held[..SECTOR_BYTES], index);
    }
    if index >= RECORDS_PER_SECTOR {
        return Err(format!("record {index} of a sector"));
    }
    let malformed = || format!("a held sector of {} bytes is no form", held.len());
    let counts = counts(held).ok_or_else(malformed)?;
    let (address, birth, crc) = compact_fields(held, counts, index).ok_or_else(malformed)?;
    record_pointer(address, birth, crc)
}

/// The numbers of runs and of crcs of a compact form, when its length agrees with them.
fn counts(held: &[u8]) -> Option<(usize, usize)> {
    let body_end = held.len().checked_sub(BlockPointer::BYTES + COUNTS_BYTES)?;
    let runs = u16_at(held, body_end);
    let crcs = u16_at(held, body_end + 2);
    (runs > 0 && runs * RUN_BYTES + crcs * 4 == body_end).then_some((runs, crcs))
}

/// The three fields of record `index` (< 256) of a compact form with `counts`: found in the
/// last run whose first record is at or before it. `None` when the bytes are no form.
fn compact_fields(
    held: &[u8],
    (runs, crcs): (usize, usize),
    index: usize,
) -> Option<(u64, u64, u32)> {
    let first_of = |r: usize| u16_at(held, r * RUN_BYTES);
    let (mut low, mut high) = (0, runs);
    while high - low > 1 {
        let middle = (low + high) / 2;
        if first_of(middle) <= index {
            low = middle;
        } else {
            high = middle;
        }
    }
    let at = low * RUN_BYTES;
    let first = first_of(low);
    if first > index {
        return None;
    }
    let crc_base = u16_at(held, at + 2);
    let start = uint_at(held, at + 4, 5);
    let birth = uint_at(held, at + 9, 6);
    let offset = index - first;
    if start == ADDRESS_HOLE {
        return Some((ADDRESS_HOLE, birth, 0));
    }
    let address = start + offset as u64;
    let crc_index = crc_base + offset;
    if address >= ADDRESS_HOLE || crc_index >= crcs {
        return None;
    }
    let crc = u32::try_from(uint_at(held, runs * RUN_BYTES + crc_index * 4, 4)).ok()?;
    Some((address, birth, crc))
}

/// The little-endian u16 at `at`, as a count.
fn u16_at(bytes: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

/// The little-endian unsigned integer of `width` (≤ 8) bytes at `at`.
fn uint_at(bytes: &[u8], at: usize, width: usize) -> u64 {
    let mut field = [0u8; 8];
    field[..width].copy_from_slice(&bytes[at..at + width]);
    u64::from_le_bytes(field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::v4::{LeafFormat, PAGE_BYTES};

    /// A held sector (whole form) whose records are `records` (256 of them).
    fn whole(records: &[BlockPointer]) -> Vec<u8> {
        assert_eq!(records.len(), RECORDS_PER_SECTOR);
        let mut leaf = LeafFormat::Sectored.empty_leaf();
        for (index, pointer) in records.iter().enumerate() {
            LeafFormat::Sectored.set_entry(&mut leaf, index, pointer);
        }
        let mut held = leaf[..SECTOR_BYTES].to_vec();
        held.extend_from_slice(&BlockPointer::written(77, 9, 1, 0xabcd).encode());
        assert_eq!(leaf.len(), PAGE_BYTES);
        held
    }

    /// Every record of `compact` (not passed through `hold`'s check) against the whole form.
    fn assert_same(whole: &[u8], compact: &[u8]) {
        for index in 0..RECORDS_PER_SECTOR {
            assert_eq!(
                entry(compact, index),
                sector_entry(&whole[..SECTOR_BYTES], index),
                "record {index}"
            );
        }
        assert!(entry(compact, RECORDS_PER_SECTOR).is_err());
    }

    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *state >> 24
    }

    #[test]
    fn a_sector_written_in_order_is_held_in_a_quarter_of_the_bytes() {
        let records: Vec<BlockPointer> = (0..256u64)
            .map(|i| BlockPointer::written(1_000 + i, 42, 0, (i as u32).wrapping_mul(0x9e37)))
            .collect();
        let whole = whole(&records);
        let compact = compact(&whole).expect("one run");
        assert_eq!(compact.len(), RUN_BYTES + 1024 + COUNTS_BYTES + 16);
        assert_same(&whole, &compact);
        assert_eq!(hold(whole.clone()), compact);
    }

    #[test]
    fn runs_break_where_the_birth_the_kind_or_the_next_address_changes() {
        let mut records = vec![BlockPointer::hole(0); 256];
        for (i, record) in records.iter_mut().enumerate().take(100).skip(10) {
            // Births change at 50; an address jumps at 70; a zero block at 80.
            let birth = if i < 50 { 3 } else { 4 };
            let address = if i < 70 {
                500 + i as u64
            } else {
                9_000 + i as u64
            };
            *record = BlockPointer::written(address, birth, 0, i as u32 + 1);
        }
        records[80] = BlockPointer::zeroed(0, 4);
        records[255] = BlockPointer::written(crate::format::v4::MAX_ADDRESS, 1, 0, 7);
        let whole = whole(&records);
        let compact = compact(&whole).expect("few runs");
        assert_same(&whole, &compact);
        // Runs: holes, 10..50, 50..70, 70..80, zero, 81..100, holes, the last block.
        let runs = usize::from(u16::from_le_bytes([
            compact[compact.len() - 20],
            compact[compact.len() - 19],
        ]));
        assert_eq!(runs, 8);
    }

    #[test]
    fn a_sparse_sector_is_held_in_a_few_dozen_bytes() {
        let mut records = vec![BlockPointer::hole(0); 256];
        records[137] = BlockPointer::written(123_456_789, 5, 0, 0xdead_beef);
        let whole = whole(&records);
        let held = hold(whole.clone());
        assert_eq!(held.len(), 3 * RUN_BYTES + 4 + COUNTS_BYTES + 16);
        assert_same(&whole, &held);
    }

    #[test]
    fn a_sector_written_at_random_stays_whole() {
        let mut state = 11;
        let records: Vec<BlockPointer> = (0..256)
            .map(|_| {
                BlockPointer::written(lcg(&mut state) % (1 << 38), 1 + lcg(&mut state) % 5, 0, 3)
            })
            .collect();
        let whole = whole(&records);
        assert!(compact(&whole).is_none());
        assert_eq!(hold(whole.clone()), whole);
        for (index, record) in records.iter().enumerate() {
            assert_eq!(entry(&whole, index), Ok(*record));
        }
    }

    #[test]
    fn mixed_sectors_decode_record_for_record() {
        let mut state = 5;
        let mut compacted = 0;
        for round in 0..200 {
            let mut records = Vec::with_capacity(256);
            let mut address = lcg(&mut state) % (1 << 39);
            let mut birth = 1 + lcg(&mut state) % 1000;
            while records.len() < 256 {
                let run = 1 + (lcg(&mut state) % 64) as usize;
                let kind = lcg(&mut state) % 4;
                if lcg(&mut state).is_multiple_of(3) {
                    birth += 1;
                }
                for _ in 0..run.min(256 - records.len()) {
                    records.push(match kind {
                        0 => BlockPointer::hole(0),
                        1 => BlockPointer::zeroed(0, birth),
                        _ => {
                            address += 1;
                            BlockPointer::written(address, birth, 0, lcg(&mut state) as u32)
                        }
                    });
                }
                if kind == 3 {
                    address += lcg(&mut state) % 5;
                }
            }
            let whole = whole(&records);
            let held = hold(whole.clone());
            assert_same(&whole, &held);
            if let Some(compact) = compact(&whole) {
                assert_same(&whole, &compact);
                assert!(compact.len() < whole.len(), "round {round}");
                compacted += 1;
            }
        }
        assert!(
            compacted > 100,
            "only {compacted} of 200 sectors were compact"
        );
    }

    #[test]
    fn a_record_that_is_no_valid_spelling_keeps_the_whole_form_and_its_error() {
        let records = vec![BlockPointer::hole(0); 256];
        let mut whole = whole(&records);
        // Record 9 becomes the hole address with a crc.
        whole[9 * 15 + 11] = 1;
        assert_eq!(hold(whole.clone()), whole);
        assert!(entry(&whole, 9).is_err());
        assert!(entry(&whole, 10).is_ok());
    }

    #[test]
    fn a_held_sector_is_current_only_through_the_pointer_it_was_read_through() {
        let records = vec![BlockPointer::hole(0); 256];
        let whole = whole(&records);
        let held = hold(whole.clone());
        let through = BlockPointer::written(77, 9, 1, 0xabcd);
        for form in [&whole, &held] {
            assert!(verified_through(form, &through));
            assert!(!verified_through(
                form,
                &BlockPointer::written(77, 10, 1, 0xabcd)
            ));
        }
    }

    #[test]
    fn bytes_that_are_no_form_are_refused_not_misread() {
        let records: Vec<BlockPointer> = (0..256u64)
            .map(|i| BlockPointer::written(10 + i, 2, 0, 1))
            .collect();
        let held = hold(whole(&records));
        assert!(held.len() < WHOLE_BYTES);
        // A count that does not match the body's length; a form cut short.
        let mut wrong = held.clone();
        let at = wrong.len() - 18;
        wrong[at] ^= 1;
        assert!(entry(&wrong, 3).is_err());
        // A compact form that decodes to other records is not held (the encoder's own
        // check): one crc changed.
        let whole = whole(&records);
        let mut other = held.clone();
        other[RUN_BYTES] ^= 1;
        assert!(entry(&other, 0).is_ok());
        assert!(same_records(&whole, &held) && !same_records(&whole, &other));
        assert!(entry(&held[..10], 3).is_err());
        assert!(entry(&[], 0).is_err());
    }
}
