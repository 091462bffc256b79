//! Recovery-point records (tree 3, docs/FORMAT.md V4.10a): 256 bytes each, 64 per 16 KiB leaf.
//! Key 0 holds the live line (the head and `S_head`); keys `1..` hold recovery points.
//!
//! ```text
//! 0        kind u8: 0 free, 1 recovery point, 2 live line (key 0 only),
//!          3 an unfinished receive (V4.10d; at most one, key 1..)
//! 1        state u8: 0, or 1 = being deleted (kind 1 only; V4.10e)
//! 2..4     flags u16 (bit 0: taken automatically; bit 1: received from a stream; bit 2:
//!          counter 0 holds its referenced blocks, V4.10f)
//! 4..8     holds u32
//! 8..16    guid u64 (kind 3: the guid of the recovery point being received)
//! 16..24   S_X (kind 1) or S_head (kind 2, and kind 3 at its start)
//! 24..32   txg of the sync that wrote it (kind 1; 0 for kind 2)
//! 32..40   created, seconds since the Unix epoch
//! 40..48   parent key (kind 1) or head key (kind 2, and kind 3: its base); u64::MAX: none
//! 48..56   parent guid (0: none)
//! 56..72   map root pointer
//! 72       map depth u8
//! 73..80   zero
//! 80..88   delete cursor (state 1: positions wholly below it are decided; else 0)
//! 88..112  counters u64 × 3: referenced blocks, unique blocks, unique pages (state 1: the
//!          blocks and pages the delete has freed so far)
//! 112..128 deadlist root pointer (a hole)
//! 128      name length u8 (1..=63; 0 for kind 2)
//! 129..192 name, zero padded
//! 192..256 zero
//! ```

use super::{le, BlockPointer};

/// Bytes of one record.
pub const RECOVERY_RECORD_BYTES: usize = 256;
/// Longest name, bytes.
pub const RECOVERY_NAME_MAX: usize = 63;
/// "None" in a key field.
pub const NO_KEY: u64 = u64::MAX;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryKind {
    /// A frozen version of the map.
    Point = 1,
    /// The live tree's line (key 0): its head.
    Live = 2,
    /// A receive not finished (FORMAT.md V4.10d): the recovery point it will create, and
    /// its base (the head when it began).
    Receive = 3,
}

/// Flags bit 0: the recovery point was taken automatically (before a rollback).
pub const FLAG_AUTOMATIC: u16 = 1;
/// Flags bit 1: the recovery point was received from a stream (its guid and created are
/// the sender's).
pub const FLAG_RECEIVED: u16 = 2;
/// Flags bit 2: counter 0 is the live map's named blocks when it was taken (docs/FORMAT.md
/// V4.10f: its referenced blocks); without it they are unknown.
pub const FLAG_REFERENCED: u16 = 4;

/// One tree-3 record (a free record is `None` when decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryRecord {
    /// Recovery point or live line.
    pub kind: RecoveryKind,
    /// Bit 0: taken automatically.
    pub flags: u16,
    /// Holds (a held recovery point is never removed by a retention policy).
    pub holds: u32,
    /// Never reused.
    pub guid: u64,
    /// `S_X` for a recovery point, `S_head` for the live line.
    pub sequence: u64,
    /// The txg of the sync that wrote a recovery point (0 for the live line).
    pub txg: u64,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Parent key (recovery point) or head key (live line); [`NO_KEY`]: none.
    pub parent: u64,
    /// The parent's guid (0: none).
    pub parent_guid: u64,
    /// The map's root as of the recovery point (a hole for the live line).
    pub root: BlockPointer,
    /// The map's depth.
    pub depth: u8,
    /// Referenced blocks, unique blocks, unique pages (0 until counted); while it is being
    /// deleted, `[1]` and `[2]` are the blocks and pages freed so far.
    pub counters: [u64; 3],
    /// Being deleted (state 1, FORMAT.md V4.10e): its cursor (keys below it are decided).
    pub deleting: Option<u64>,
    /// The name (empty for the live line).
    pub name: String,
}

/// Whether `name` may name a recovery point: 1 to 63 bytes of `[A-Za-z0-9._:-]`.
///
/// # Errors
/// Why not.
pub fn check_recovery_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > RECOVERY_NAME_MAX {
        return Err(format!(
            "a recovery point's name is 1 to {RECOVERY_NAME_MAX} bytes, {:?} has {}",
            name,
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(format!(
            "a recovery point's name is made of letters, digits and . _ : - ; {name:?} has {bad:?}"
        ));
    }
    Ok(())
}

impl RecoveryRecord {
    /// The 256 bytes of this record.
    #[must_use]
    pub fn encode(&self) -> [u8; RECOVERY_RECORD_BYTES] {
        let mut bytes = [0u8; RECOVERY_RECORD_BYTES];
        bytes[0] = self.kind as u8;
        if let Some(cursor) = self.deleting {
            bytes[1] = 1;
            le::put(&mut bytes, 80, 8, cursor);
        }
        le::put(&mut bytes, 2, 2, u64::from(self.flags));
        le::put(&mut bytes, 4, 4, u64::from(self.holds));
        le::put(&mut bytes, 8, 8, self.guid);
        le::put(&mut bytes, 16, 8, self.sequence);
        le::put(&mut bytes, 24, 8, self.txg);
        le::put(&mut bytes, 32, 8, self.created);
        le::put(&mut bytes, 40, 8, self.parent);
        le::put(&mut bytes, 48, 8, self.parent_guid);
        bytes[56..72].copy_from_slice(&self.root.encode());
        bytes[72] = self.depth;
        for (i, counter) in self.counters.iter().enumerate() {
            le::put(&mut bytes, 88 + 8 * i, 8, *counter);
        }
        bytes[112..128].copy_from_slice(&BlockPointer::hole(0).encode());
        let name = self.name.as_bytes();
        let len = name.len().min(RECOVERY_NAME_MAX);
        bytes[128] = len as u8;
        bytes[129..129 + len].copy_from_slice(&name[..len]);
        bytes
    }

    /// Decode a record: `None` for a free one (all zeros).
    ///
    /// # Errors
    /// A reason naming the field, for anything a correct encoder could not have written.
    pub fn decode(bytes: &[u8]) -> Result<Option<Self>, String> {
        if bytes.len() != RECOVERY_RECORD_BYTES {
            return Err(format!(
                "recovery-point record of {} bytes, not {RECOVERY_RECORD_BYTES}",
                bytes.len()
            ));
        }
        let kind = match bytes[0] {
            0 => {
                return if bytes.iter().all(|b| *b == 0) {
                    Ok(None)
                } else {
                    Err("a free recovery-point record with nonzero bytes".into())
                }
            }
            1 => RecoveryKind::Point,
            2 => RecoveryKind::Live,
            3 => RecoveryKind::Receive,
            other => return Err(format!("recovery-point record of kind {other}")),
        };
        let deleting = match (bytes[1], kind) {
            (0, _) => None,
            (1, RecoveryKind::Point) => Some(le::u64_at(bytes, 80)),
            (state, _) => {
                return Err(format!(
                    "recovery-point record of kind {} in state {state}",
                    bytes[0]
                ))
            }
        };
        let zero = |range: std::ops::Range<usize>, what: &str| {
            if bytes[range].iter().any(|b| *b != 0) {
                Err(format!("recovery-point record: {what} is not zero"))
            } else {
                Ok(())
            }
        };
        zero(73..80, "bytes 73..80 (reserved)")?;
        if deleting.is_none() {
            zero(80..88, "the delete cursor of a record not being deleted")?;
        }
        zero(192..256, "bytes 192..256 (reserved)")?;
        let flags = le::get(bytes, 2, 2) as u16;
        if flags & !(FLAG_AUTOMATIC | FLAG_RECEIVED | FLAG_REFERENCED) != 0 {
            return Err(format!("recovery-point record: flags {flags:#x}"));
        }
        let root = BlockPointer::decode(&bytes[56..72])
            .map_err(|e| format!("recovery-point record: root: {e}"))?;
        let deadlist = BlockPointer::decode(&bytes[112..128])
            .map_err(|e| format!("recovery-point record: deadlist root: {e}"))?;
        if deadlist.encode() != BlockPointer::hole(0).encode() {
            return Err("recovery-point record: a deadlist root (this build keeps none)".into());
        }
        let depth = bytes[72];
        let len = usize::from(bytes[128]);
        if len > RECOVERY_NAME_MAX {
            return Err(format!("recovery-point record: a name of {len} bytes"));
        }
        zero(129 + len..192, "the name's padding")?;
        let name = std::str::from_utf8(&bytes[129..129 + len])
            .map_err(|_| "recovery-point record: a name that is not UTF-8".to_string())?
            .to_string();
        let record = Self {
            kind,
            flags,
            holds: le::u32_at(bytes, 4),
            guid: le::u64_at(bytes, 8),
            sequence: le::u64_at(bytes, 16),
            txg: le::u64_at(bytes, 24),
            created: le::u64_at(bytes, 32),
            parent: le::u64_at(bytes, 40),
            parent_guid: le::u64_at(bytes, 48),
            root,
            depth,
            counters: [
                le::u64_at(bytes, 88),
                le::u64_at(bytes, 96),
                le::u64_at(bytes, 104),
            ],
            name,
            deleting,
        };
        if record.counters[0] != 0 && flags & FLAG_REFERENCED == 0 {
            return Err("recovery-point record: a referenced count without its flag".into());
        }
        match kind {
            RecoveryKind::Point => {
                check_recovery_name(&record.name)
                    .map_err(|e| format!("recovery-point record: {e}"))?;
                if record.sequence == 0 {
                    return Err("recovery point with sequence 0".into());
                }
                if !(1..=5).contains(&depth) || root.level() != depth || root.is_zero() {
                    return Err(format!(
                        "recovery point {:?}: root at level {} for depth {depth}",
                        record.name,
                        root.level()
                    ));
                }
            }
            RecoveryKind::Receive => {
                check_recovery_name(&record.name).map_err(|e| format!("receive record: {e}"))?;
                if depth != 0 || !root.is_hole() || root.level() != 0 || record.guid == 0 {
                    return Err("receive record with a depth or root, or no guid".into());
                }
                if record.flags != 0 || record.holds != 0 {
                    return Err("receive record with flags or holds".into());
                }
            }
            RecoveryKind::Live => {
                if len != 0 || depth != 0 || !root.is_hole() || root.level() != 0 {
                    return Err("live-line record with a name, depth or root".into());
                }
                if record.txg != 0 || record.flags != 0 || record.holds != 0 {
                    return Err("live-line record with a txg, flags or holds".into());
                }
            }
        }
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point() -> RecoveryRecord {
        RecoveryRecord {
            kind: RecoveryKind::Point,
            flags: FLAG_AUTOMATIC | FLAG_REFERENCED,
            holds: 2,
            guid: 0x1234_5678_9abc_def0,
            sequence: 77,
            txg: 9,
            created: 1_790_000_000,
            parent: NO_KEY,
            parent_guid: 0,
            root: BlockPointer::written(1234, 77, 3, 0xfeed),
            depth: 3,
            counters: [1, 2, 3],
            deleting: None,
            name: "hourly-2026-12-05T12:00".into(),
        }
    }

    #[test]
    fn records_round_trip_and_a_free_one_is_none() {
        let record = point();
        assert_eq!(
            RecoveryRecord::decode(&record.encode()).unwrap(),
            Some(record)
        );
        let live = RecoveryRecord {
            kind: RecoveryKind::Live,
            flags: 0,
            holds: 0,
            guid: 0,
            sequence: 77,
            txg: 0,
            created: 0,
            parent: 1,
            parent_guid: 5,
            root: BlockPointer::hole(0),
            depth: 0,
            counters: [0; 3],
            deleting: None,
            name: String::new(),
        };
        assert_eq!(RecoveryRecord::decode(&live.encode()).unwrap(), Some(live));
        let receive = RecoveryRecord {
            kind: RecoveryKind::Receive,
            flags: 0,
            holds: 0,
            guid: 0x77,
            sequence: 77,
            txg: 10,
            created: 1_790_000_000,
            parent: 1,
            parent_guid: 5,
            root: BlockPointer::hole(0),
            depth: 0,
            counters: [0; 3],
            deleting: None,
            name: "daily".into(),
        };
        assert_eq!(
            RecoveryRecord::decode(&receive.encode()).unwrap(),
            Some(receive.clone())
        );
        let mut nameless = receive;
        nameless.name = String::new();
        assert!(RecoveryRecord::decode(&nameless.encode()).is_err());
        assert_eq!(RecoveryRecord::decode(&[0u8; 256]).unwrap(), None);
    }

    #[test]
    fn a_recovery_point_being_deleted_keeps_its_cursor_and_tallies() {
        let mut deleting = point();
        deleting.deleting = Some(1 << 40);
        deleting.counters = [0, 12, 3];
        let bytes = deleting.encode();
        assert_eq!(bytes[1], 1);
        assert_eq!(
            RecoveryRecord::decode(&bytes).unwrap(),
            Some(deleting.clone())
        );
        deleting.deleting = Some(0);
        assert_eq!(
            RecoveryRecord::decode(&deleting.encode()).unwrap(),
            Some(deleting)
        );
        // Only a recovery point is ever deleted this way.
        let mut live = point().encode();
        live[0] = 2;
        live[1] = 1;
        assert!(RecoveryRecord::decode(&live)
            .unwrap_err()
            .contains("state 1"));
    }

    #[test]
    fn what_no_encoder_writes_is_refused_naming_the_field() {
        let good = point().encode();
        let refused = |at: usize, value: u8, says: &str| {
            let mut bytes = good;
            bytes[at] = value;
            let e = RecoveryRecord::decode(&bytes).unwrap_err();
            assert!(e.contains(says), "byte {at} = {value}: {e}");
        };
        refused(0, 4, "kind 4");
        refused(1, 2, "state 2");
        refused(2, 1, "without its flag");
        refused(82, 1, "delete cursor");
        refused(2, 8, "flags");
        refused(75, 1, "reserved");
        refused(200, 1, "reserved");
        refused(72, 2, "level 3 for depth 2");
        refused(128, 64, "64 bytes");
        refused(129, b' ', "' '");
        refused(129 + 40, 1, "padding");
        let mut no_sequence = point();
        no_sequence.sequence = 0;
        assert!(RecoveryRecord::decode(&no_sequence.encode()).is_err());
        assert!(RecoveryRecord::decode(&good[..255]).is_err());
        let mut stray = [0u8; 256];
        stray[9] = 1;
        assert!(RecoveryRecord::decode(&stray).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_recovery_name("a").is_ok());
        assert!(check_recovery_name(&"x".repeat(63)).is_ok());
        assert!(check_recovery_name("").is_err());
        assert!(check_recovery_name(&"x".repeat(64)).is_err());
        assert!(check_recovery_name("a/b").is_err());
        assert!(check_recovery_name("é").is_err());
    }
}
