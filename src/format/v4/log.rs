//! Intent-log records of version 4 (docs/FORMAT.md, V4.8): what one commit (a `flush`) changed,
//! appended 4 KiB-aligned in the current log half of every online data member.
//!
//! ```text
//! 0..8    magic "STRIPL4\0"          8..24   pool UUID
//! 24..32  sequence u64               32..40  prev u64 (previous record, or the S_sync that began the half)
//! 40..48  timeline u64               48..52  entry bytes n u32          52..56  entry count u32
//! 56..60  crc32c of bytes 0..56, 60..64 and the entries
//! 60      log half u8 (0/1)          61..64  zero
//! 64..    entries, then zero padding to a multiple of 4 KiB
//! ```
//!
//! Entry kinds, by the byte that starts them (every entry that drops a pointer carries the old
//! pointer's pbn and birth; 0xFF_FFFF_FFFF with birth 0 = the old pointer was a hole):
//!
//! ```text
//! 1 block run      first logical u40 ‖ count u16 ‖ count × (new pbn u40 ‖ old pbn u40 ‖ old birth u48)
//! 2 short trim     first logical u40 ‖ count u16 (1..=1023) ‖ count × (old pbn u40 ‖ old birth u48)
//! 3 row            slot u40 ‖ row u16 ‖ n u8 ‖ birth u48 ‖ n × owner u40 ‖ width × crc u32
//! 4 recovery point length u16 ‖ length bytes (issue 15 defines them)
//! 5 segment state  segment u40 ‖ state u8 ‖ evacuation sequence u48 (state 5 only, else 0)
//! 6 forwarding     source pbn u40 ‖ evacuated-at u48 ‖ target block pointer (16)
//! 7 subtree trim   level u8 ‖ first key u40 ‖ old subtree pointer (16)
//! 8 fresh run      first logical u40 ‖ count u32 ‖ first new pbn u40 (consecutive; old pointers holes)
//! ```

use super::pointer::{BlockPointer, ADDRESS_HOLE};
use super::{le, Reader, U40_MAX};

/// The first 8 bytes of every record.
pub const LOG_MAGIC: &[u8; 8] = b"STRIPL4\0";
/// Bytes of the record header.
pub const LOG_HEADER_BYTES: usize = 64;
/// Records are padded to whole blocks of this size.
pub const LOG_BLOCK_BYTES: usize = 4096;

/// One change a commit made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEntry {
    /// Blocks `first..first + changes.len()` now point at new pbns: `(new, old pbn, old birth)`.
    BlockRun {
        /// First logical block.
        first: u64,
        /// Per block: new pbn, old pbn (hole address for none), old birth.
        changes: Vec<(u64, u64, u64)>,
    },
    /// Blocks `first..first + count` written into consecutive fresh pbns from `first_new`, every
    /// old pointer a hole.
    FreshRun {
        /// First logical block.
        first: u64,
        /// Blocks in the run.
        count: u32,
        /// pbn of the first block.
        first_new: u64,
    },
    /// Blocks `first..first + olds.len()` trimmed: `(old pbn, old birth)` each.
    ShortTrim {
        /// First logical block.
        first: u64,
        /// The old pointers.
        olds: Vec<(u64, u64)>,
    },
    /// A row written in this commit: its birth, owners and every shard-block crc.
    Row {
        /// Slot.
        slot: u64,
        /// Row within the slot.
        row: u16,
        /// The row's birth.
        birth: u64,
        /// Owner of each written data block (the logical block, or a source pbn).
        owners: Vec<u64>,
        /// crc of each shard-block in chunk order (`width` of them).
        crcs: Vec<u32>,
    },
    /// A recovery-point event (contents defined by issue 15).
    RecoveryPoint(Vec<u8>),
    /// A segment changed state.
    SegmentState {
        /// Segment.
        segment: u64,
        /// New state (SUT state byte).
        state: u8,
        /// Evacuation sequence (state 5 only).
        evacuation: u64,
    },
    /// A block moved by the cleaner while shared: its new place.
    Forwarding {
        /// The pbn it was at.
        source: u64,
        /// The evacuation sequence.
        evacuated_at: u64,
        /// Where it is now.
        target: BlockPointer,
    },
    /// A whole aligned subtree trimmed: the parent pointer became a hole.
    SubtreeTrim {
        /// Level of the subtree's page.
        level: u8,
        /// Its first key.
        first_key: u64,
        /// The pointer it had.
        old: BlockPointer,
    },
}

const KIND_BLOCK_RUN: u8 = 1;
const KIND_SHORT_TRIM: u8 = 2;
const KIND_ROW: u8 = 3;
const KIND_RECOVERY_POINT: u8 = 4;
const KIND_SEGMENT_STATE: u8 = 5;
const KIND_FORWARDING: u8 = 6;
const KIND_SUBTREE_TRIM: u8 = 7;
const KIND_FRESH_RUN: u8 = 8;
const MAX_SHORT_TRIM: usize = 1023;

fn put(out: &mut Vec<u8>, width: usize, value: u64) {
    let at = out.len();
    out.resize(at + width, 0);
    le::put(out, at, width, value);
}

fn check_run(first: u64, count: u64) -> Result<(), String> {
    if count == 0 || first.checked_add(count).is_none_or(|end| end > U40_MAX) {
        return Err(format!("run of {count} blocks from {first}"));
    }
    Ok(())
}

fn check_old(pbn: u64, birth: u64) -> Result<(), String> {
    if pbn == ADDRESS_HOLE && birth != 0 {
        return Err(format!("old hole pointer with birth {birth}"));
    }
    if pbn != ADDRESS_HOLE && birth == 0 {
        return Err(format!("old pointer to {pbn} with birth 0"));
    }
    Ok(())
}

impl LogEntry {
    /// Bytes this entry takes in a record.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::BlockRun { changes, .. } => 8 + 16 * changes.len(),
            Self::FreshRun { .. } => 15,
            Self::ShortTrim { olds, .. } => 8 + 11 * olds.len(),
            Self::Row { owners, crcs, .. } => 15 + 5 * owners.len() + 4 * crcs.len(),
            Self::RecoveryPoint(bytes) => 3 + bytes.len(),
            Self::SegmentState { .. } => 13,
            Self::Forwarding { .. } => 28,
            Self::SubtreeTrim { .. } => 23,
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Self::BlockRun { first, changes } => {
                out.push(KIND_BLOCK_RUN);
                put(out, 5, *first);
                put(out, 2, changes.len() as u64);
                for (new, old, old_birth) in changes {
                    put(out, 5, *new);
                    put(out, 5, *old);
                    put(out, 6, *old_birth);
                }
            }
            Self::FreshRun {
                first,
                count,
                first_new,
            } => {
                out.push(KIND_FRESH_RUN);
                put(out, 5, *first);
                put(out, 4, u64::from(*count));
                put(out, 5, *first_new);
            }
            Self::ShortTrim { first, olds } => {
                out.push(KIND_SHORT_TRIM);
                put(out, 5, *first);
                put(out, 2, olds.len() as u64);
                for (old, old_birth) in olds {
                    put(out, 5, *old);
                    put(out, 6, *old_birth);
                }
            }
            Self::Row {
                slot,
                row,
                birth,
                owners,
                crcs,
            } => {
                out.push(KIND_ROW);
                put(out, 5, *slot);
                put(out, 2, u64::from(*row));
                out.push(owners.len() as u8);
                put(out, 6, *birth);
                for owner in owners {
                    put(out, 5, *owner);
                }
                for crc in crcs {
                    put(out, 4, u64::from(*crc));
                }
            }
            Self::RecoveryPoint(bytes) => {
                out.push(KIND_RECOVERY_POINT);
                put(out, 2, bytes.len() as u64);
                out.extend_from_slice(bytes);
            }
            Self::SegmentState {
                segment,
                state,
                evacuation,
            } => {
                out.push(KIND_SEGMENT_STATE);
                put(out, 5, *segment);
                out.push(*state);
                put(out, 6, *evacuation);
            }
            Self::Forwarding {
                source,
                evacuated_at,
                target,
            } => {
                out.push(KIND_FORWARDING);
                put(out, 5, *source);
                put(out, 6, *evacuated_at);
                out.extend_from_slice(&target.encode());
            }
            Self::SubtreeTrim {
                level,
                first_key,
                old,
            } => {
                out.push(KIND_SUBTREE_TRIM);
                out.push(*level);
                put(out, 5, *first_key);
                out.extend_from_slice(&old.encode());
            }
        }
    }

    /// Check what an encoder must never write (a caller bug if it happens on encode; corruption
    /// if it is found on decode).
    fn validate(&self, width: usize) -> Result<(), String> {
        match self {
            Self::BlockRun { first, changes } => {
                check_run(*first, changes.len() as u64)?;
                if changes.len() > usize::from(u16::MAX) {
                    return Err(format!("block run of {} entries", changes.len()));
                }
                for (new, old, old_birth) in changes {
                    if *new >= ADDRESS_HOLE {
                        return Err("block run names a hole as the new block".to_string());
                    }
                    check_old(*old, *old_birth)?;
                }
            }
            Self::FreshRun {
                first,
                count,
                first_new,
            } => {
                check_run(*first, u64::from(*count))?;
                check_run(*first_new, u64::from(*count))?;
            }
            Self::ShortTrim { first, olds } => {
                check_run(*first, olds.len() as u64)?;
                if olds.len() > MAX_SHORT_TRIM {
                    return Err(format!("short trim of {} blocks", olds.len()));
                }
                for (old, old_birth) in olds {
                    check_old(*old, *old_birth)?;
                }
            }
            Self::Row {
                slot,
                birth,
                owners,
                crcs,
                ..
            } => {
                if *slot >= U40_MAX || *birth == 0 || *birth > super::U48_MAX {
                    return Err(format!("row of slot {slot} with birth {birth}"));
                }
                if owners.is_empty() || owners.len() > 255 || crcs.len() != width {
                    return Err(format!(
                        "row with {} owners and {} crcs in a pool of width {width}",
                        owners.len(),
                        crcs.len()
                    ));
                }
            }
            Self::RecoveryPoint(bytes) => {
                if bytes.len() > usize::from(u16::MAX) {
                    return Err(format!("recovery-point event of {} bytes", bytes.len()));
                }
            }
            Self::SegmentState {
                segment,
                state,
                evacuation,
            } => {
                if *segment >= U40_MAX || *state > 6 {
                    return Err(format!("segment {segment} state {state}"));
                }
                if (*state == 5) != (*evacuation != 0) || *evacuation > super::U48_MAX {
                    return Err(format!(
                        "state {state} with evacuation sequence {evacuation}"
                    ));
                }
            }
            Self::Forwarding {
                source,
                evacuated_at,
                target,
            } => {
                if *source >= U40_MAX || *evacuated_at == 0 || *evacuated_at > super::U48_MAX {
                    return Err(format!("forwarding of {source} at {evacuated_at}"));
                }
                if target.address().is_none() || target.level() != 0 {
                    return Err("forwarding target is not a data block".to_string());
                }
            }
            Self::SubtreeTrim {
                level,
                first_key,
                old,
            } => {
                if *level == 0 || *first_key >= U40_MAX || old.level() != *level {
                    return Err(format!("subtree trim at level {level} of {first_key}"));
                }
            }
        }
        Ok(())
    }

    fn decode_from(input: &mut Reader<'_>, width: usize) -> Result<Self, String> {
        let kind = input.field(1, "entry kind")? as u8;
        let entry = match kind {
            KIND_BLOCK_RUN => {
                let first = input.field(5, "block run")?;
                let count = input.field(2, "block run")?;
                let mut changes = Vec::new();
                for _ in 0..count {
                    let new = input.field(5, "block run")?;
                    let old = input.field(5, "block run")?;
                    changes.push((new, old, input.field(6, "block run")?));
                }
                Self::BlockRun { first, changes }
            }
            KIND_FRESH_RUN => Self::FreshRun {
                first: input.field(5, "fresh run")?,
                count: input.field(4, "fresh run")? as u32,
                first_new: input.field(5, "fresh run")?,
            },
            KIND_SHORT_TRIM => {
                let first = input.field(5, "short trim")?;
                let count = input.field(2, "short trim")?;
                let mut olds = Vec::new();
                for _ in 0..count.min(MAX_SHORT_TRIM as u64 + 1) {
                    let old = input.field(5, "short trim")?;
                    olds.push((old, input.field(6, "short trim")?));
                }
                Self::ShortTrim { first, olds }
            }
            KIND_ROW => {
                let slot = input.field(5, "row")?;
                let row = input.field(2, "row")? as u16;
                let n = input.field(1, "row")?;
                let birth = input.field(6, "row")?;
                let mut owners = Vec::new();
                for _ in 0..n {
                    owners.push(input.field(5, "row owner")?);
                }
                let mut crcs = Vec::new();
                for _ in 0..width {
                    crcs.push(input.field(4, "row crc")? as u32);
                }
                Self::Row {
                    slot,
                    row,
                    birth,
                    owners,
                    crcs,
                }
            }
            KIND_RECOVERY_POINT => {
                let len = input.field(2, "recovery-point event")? as usize;
                Self::RecoveryPoint(input.take(len, "recovery-point event")?.to_vec())
            }
            KIND_SEGMENT_STATE => Self::SegmentState {
                segment: input.field(5, "segment state")?,
                state: input.field(1, "segment state")? as u8,
                evacuation: input.field(6, "segment state")?,
            },
            KIND_FORWARDING => {
                let source = input.field(5, "forwarding")?;
                let evacuated_at = input.field(6, "forwarding")?;
                let target = BlockPointer::decode(input.take(16, "forwarding")?)?;
                Self::Forwarding {
                    source,
                    evacuated_at,
                    target,
                }
            }
            KIND_SUBTREE_TRIM => {
                let level = input.field(1, "subtree trim")? as u8;
                let first_key = input.field(5, "subtree trim")?;
                let old = BlockPointer::decode(input.take(16, "subtree trim")?)?;
                Self::SubtreeTrim {
                    level,
                    first_key,
                    old,
                }
            }
            other => return Err(format!("unknown log entry kind {other}")),
        };
        entry.validate(width)?;
        Ok(entry)
    }
}

/// One commit's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The pool it belongs to.
    pub pool: [u8; 16],
    /// Commit sequence (the birth of every row it makes durable).
    pub sequence: u64,
    /// Sequence of the previous record in the chain, or the sync that began the half.
    pub prev: u64,
    /// Timeline: records of another timeline are invalid for the pool.
    pub timeline: u64,
    /// The log half it was written in (0 or 1).
    pub half: u8,
    /// What the commit changed.
    pub entries: Vec<LogEntry>,
}

impl LogRecord {
    /// Bytes the record takes in the log, padding included.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        let entries: usize = self.entries.iter().map(LogEntry::encoded_len).sum();
        (LOG_HEADER_BYTES + entries).div_ceil(LOG_BLOCK_BYTES) * LOG_BLOCK_BYTES
    }

    /// The bytes of the record, padded to 4 KiB, in a pool of shard `width`.
    ///
    /// # Errors
    /// When an entry is not one a correct pool writes (a caller bug reported, not encoded).
    pub fn encode(&self, width: usize) -> Result<Vec<u8>, String> {
        if self.half > 1 {
            return Err(format!("log half {}", self.half));
        }
        let mut bytes = vec![0u8; LOG_HEADER_BYTES];
        for entry in &self.entries {
            entry.validate(width)?;
            entry.encode_into(&mut bytes);
        }
        let entry_bytes = bytes.len() - LOG_HEADER_BYTES;
        bytes[..8].copy_from_slice(LOG_MAGIC);
        bytes[8..24].copy_from_slice(&self.pool);
        le::put(&mut bytes, 24, 8, self.sequence);
        le::put(&mut bytes, 32, 8, self.prev);
        le::put(&mut bytes, 40, 8, self.timeline);
        le::put(&mut bytes, 48, 4, entry_bytes as u64);
        le::put(&mut bytes, 52, 4, self.entries.len() as u64);
        bytes[60] = self.half;
        let crc = record_crc(&bytes);
        le::put(&mut bytes, 56, 4, u64::from(crc));
        bytes.resize(self.encoded_len(), 0);
        Ok(bytes)
    }

    /// The record at the start of `bytes` (the rest of a log half), in pool `pool` of shard
    /// `width`, and the bytes it takes (padding included).
    ///
    /// # Errors
    /// A reason when the bytes are not a whole, valid record of this pool (the end of a chain,
    /// a torn record, or damage; the caller decides which from where it is).
    pub fn decode(bytes: &[u8], pool: [u8; 16], width: usize) -> Result<(Self, usize), String> {
        if bytes.len() < LOG_HEADER_BYTES {
            return Err("no room for a record header".to_string());
        }
        if &bytes[..8] != LOG_MAGIC {
            return Err("no record magic".to_string());
        }
        if bytes[8..24] != pool {
            return Err("record of another pool".to_string());
        }
        let entry_bytes = le::u32_at(bytes, 48) as usize;
        let count = le::u32_at(bytes, 52) as usize;
        let end = LOG_HEADER_BYTES.saturating_add(entry_bytes);
        if end > bytes.len() {
            return Err(format!(
                "record of {entry_bytes} entry bytes runs past the log"
            ));
        }
        let stored = le::u32_at(bytes, 56);
        let computed = record_crc(&bytes[..end]);
        if stored != computed {
            return Err(format!(
                "record crc {stored:#010x}, computed {computed:#010x}"
            ));
        }
        if bytes[60] > 1 || bytes[61..64] != [0, 0, 0] {
            return Err("record header has a bad half or reserved bytes".to_string());
        }
        let padded = end.div_ceil(LOG_BLOCK_BYTES) * LOG_BLOCK_BYTES;
        if padded > bytes.len() || bytes[end..padded].iter().any(|b| *b != 0) {
            return Err("record padding is missing or not zero".to_string());
        }
        let mut input = Reader::new(&bytes[LOG_HEADER_BYTES..end]);
        let mut entries = Vec::new();
        while !input.is_empty() {
            if entries.len() == count {
                return Err(format!("entries past the {count} counted"));
            }
            entries.push(LogEntry::decode_from(&mut input, width)?);
        }
        if entries.len() != count {
            return Err(format!("{} entries, {count} counted", entries.len()));
        }
        let record = Self {
            pool,
            sequence: le::u64_at(bytes, 24),
            prev: le::u64_at(bytes, 32),
            timeline: le::u64_at(bytes, 40),
            half: bytes[60],
            entries,
        };
        Ok((record, padded))
    }
}

/// crc32c of a record's header (without its crc field) and entries.
fn record_crc(record: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&record[..56]);
    crc32c::crc32c_append(crc, &record[60..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: [u8; 16] = [9; 16];

    fn every_kind() -> LogRecord {
        LogRecord {
            pool: POOL,
            sequence: 12,
            prev: 11,
            timeline: 0xfeed,
            half: 1,
            entries: vec![
                LogEntry::BlockRun {
                    first: 100,
                    changes: vec![(7, ADDRESS_HOLE, 0), (8, 3, 4)],
                },
                LogEntry::FreshRun {
                    first: 4096,
                    count: 16,
                    first_new: 64,
                },
                LogEntry::ShortTrim {
                    first: 5,
                    olds: vec![(9, 2)],
                },
                LogEntry::Row {
                    slot: 3,
                    row: 1,
                    birth: 12,
                    owners: vec![100, 101],
                    crcs: vec![1, 2, 3, 4, 5, 6],
                },
                LogEntry::RecoveryPoint(b"hourly".to_vec()),
                LogEntry::SegmentState {
                    segment: 4,
                    state: 5,
                    evacuation: 12,
                },
                LogEntry::Forwarding {
                    source: 77,
                    evacuated_at: 12,
                    target: BlockPointer::written(900, 12, 0, 5),
                },
                LogEntry::SubtreeTrim {
                    level: 2,
                    first_key: 1 << 20,
                    old: BlockPointer::written(33, 8, 2, 6),
                },
            ],
        }
    }

    #[test]
    fn a_record_of_every_kind_roundtrips_with_the_documented_sizes() {
        let record = every_kind();
        let sizes: Vec<usize> = record.entries.iter().map(LogEntry::encoded_len).collect();
        assert_eq!(sizes, [40, 15, 19, 49, 9, 13, 28, 23]);
        let bytes = record.encode(6).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert_eq!(le::u32_at(&bytes, 48) as usize, sizes.iter().sum::<usize>());
        let (decoded, used) = LogRecord::decode(&bytes, POOL, 6).unwrap();
        assert_eq!(used, 4096);
        assert_eq!(decoded, record);
    }

    #[test]
    fn every_flipped_bit_of_a_record_is_refused() {
        let bytes = every_kind().encode(6).unwrap();
        let end = LOG_HEADER_BYTES + le::u32_at(&bytes, 48) as usize;
        for bit in (0..end * 8).step_by(7) {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(LogRecord::decode(&bad, POOL, 6).is_err(), "bit {bit}");
        }
        assert!(
            LogRecord::decode(&bytes, [8; 16], 6).is_err(),
            "another pool"
        );
        assert!(
            LogRecord::decode(&bytes[..end], POOL, 6).is_err(),
            "torn: padding missing"
        );
    }

    #[test]
    fn entries_no_pool_writes_are_refused_on_encode() {
        let mut record = every_kind();
        record.entries = vec![LogEntry::ShortTrim {
            first: 0,
            olds: vec![(1, 0)],
        }];
        assert!(record.encode(6).is_err(), "old pointer with birth 0");
        record.entries = vec![LogEntry::Row {
            slot: 1,
            row: 0,
            birth: 3,
            owners: vec![1],
            crcs: vec![0; 5],
        }];
        assert!(record.encode(6).is_err(), "row crcs of another width");
        record.entries = vec![LogEntry::FreshRun {
            first: U40_MAX - 1,
            count: 2,
            first_new: 0,
        }];
        assert!(record.encode(6).is_err(), "run past the key space");
    }

    #[test]
    fn a_large_record_spans_several_blocks() {
        let mut record = every_kind();
        record.entries = vec![LogEntry::BlockRun {
            first: 0,
            changes: (0..1000).map(|i| (i, ADDRESS_HOLE, 0)).collect(),
        }];
        let bytes = record.encode(6).unwrap();
        assert_eq!(bytes.len(), 4 * 4096);
        let mut half = bytes.clone();
        half.extend_from_slice(&[0u8; 4096]);
        let (decoded, used) = LogRecord::decode(&half, POOL, 6).unwrap();
        assert_eq!((decoded, used), (record, 4 * 4096));
        // A torn multi-block record: its last block never reached the device.
        let mut torn = bytes;
        torn[3 * 4096..].fill(0);
        assert!(LogRecord::decode(&torn, POOL, 6).is_err());
    }
}
