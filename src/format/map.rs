//! The stripe map: for each logical stripe, the physical slot holding it, the generation it was
//! written at, and one crc32c per checksum block of every shard (see `codec::ShardSums`). It is the only source of truth for what is on the disks.
//!
//! Persisted on every data device as two alternating **checkpoints** (the whole table) plus a
//! **log** of commit records since the newest checkpoint. A checkpoint is
//! `header(4 KiB) entries`; a log record is `header(64 B) (stripe, entry)* padding-to-4KiB`.
//! Every header carries the pool UUID and a sequence number, and a crc32c over everything, so a
//! torn, stale or foreign record is recognised and replay stops there.

use super::PoolUuid;
use crate::types::{Generation, SlotId, StripeId};

const CHECKPOINT_MAGIC: &[u8; 8] = b"STRIPCK\0";
const LOG_MAGIC: &[u8; 8] = b"STRIPLG\0";
const LOG_HEADER_BYTES: usize = 64;
const UNWRITTEN: u64 = u64::MAX;

/// One map entry, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    /// Where the stripe lives, or `None` if it was never written (reads as zeros).
    pub slot: Option<SlotId>,
    /// Generation it was written at.
    pub generation: Generation,
    /// Expected checksum of every checksum block of every shard, shard by shard.
    pub crcs: Vec<u32>,
}

/// The in-memory stripe map, stored flat (three vectors) to keep it small: 16 + 4*width bytes
/// per stripe, where `width` is the number of checksums per entry (shards × blocks per shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeMap {
    width: usize,
    slots: Vec<u64>,
    generations: Vec<u64>,
    crcs: Vec<u32>,
}

impl StripeMap {
    /// A map of `stripes` unwritten stripes of `width` checksums each.
    #[must_use]
    pub fn new(stripes: u64, width: usize) -> Self {
        let count = usize::try_from(stripes).unwrap_or(0);
        Self {
            width,
            slots: vec![UNWRITTEN; count],
            generations: vec![0; count],
            crcs: vec![0; count * width],
        }
    }
    /// Number of stripes.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.slots.len() as u64
    }
    /// True when the map has no stripes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
    /// Checksums per entry.
    #[must_use]
    pub fn width(&self) -> usize {
        self.width
    }
    /// The entry of `stripe`.
    #[must_use]
    pub fn get(&self, stripe: StripeId) -> MapEntry {
        let i = usize::try_from(stripe.0).unwrap_or(usize::MAX);
        MapEntry {
            slot: (self.slots[i] != UNWRITTEN).then_some(SlotId(self.slots[i])),
            generation: Generation(self.generations[i]),
            crcs: self.crcs[i * self.width..(i + 1) * self.width].to_vec(),
        }
    }
    /// The slot of `stripe`, without copying the checksums.
    #[must_use]
    pub fn slot(&self, stripe: StripeId) -> Option<SlotId> {
        let raw = self.slots[usize::try_from(stripe.0).unwrap_or(usize::MAX)];
        (raw != UNWRITTEN).then_some(SlotId(raw))
    }
    /// Replace the entry of `stripe`.
    pub fn set(&mut self, stripe: StripeId, entry: &MapEntry) {
        assert_eq!(entry.crcs.len(), self.width, "one crc per checksum block");
        let i = usize::try_from(stripe.0).unwrap_or(usize::MAX);
        self.slots[i] = entry.slot.map_or(UNWRITTEN, |s| s.0);
        self.generations[i] = entry.generation.0;
        self.crcs[i * self.width..(i + 1) * self.width].copy_from_slice(&entry.crcs);
    }
    /// Slots referenced by the map.
    pub fn used_slots(&self) -> impl Iterator<Item = SlotId> + '_ {
        self.slots
            .iter()
            .filter(|s| **s != UNWRITTEN)
            .map(|s| SlotId(*s))
    }
    /// Stripes that hold data.
    pub fn written_stripes(&self) -> impl Iterator<Item = StripeId> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| **s != UNWRITTEN)
            .map(|(i, _)| StripeId(i as u64))
    }
    /// Largest generation in the map.
    #[must_use]
    pub fn max_generation(&self) -> u64 {
        self.generations.iter().copied().max().unwrap_or(0)
    }

    fn encode_entry(&self, stripe: u64, out: &mut Vec<u8>) {
        let i = usize::try_from(stripe).unwrap_or(usize::MAX);
        out.extend_from_slice(&self.slots[i].to_le_bytes());
        out.extend_from_slice(&self.generations[i].to_le_bytes());
        for crc in &self.crcs[i * self.width..(i + 1) * self.width] {
            out.extend_from_slice(&crc.to_le_bytes());
        }
    }

    fn decode_entry(&mut self, stripe: u64, bytes: &[u8]) -> Result<(), String> {
        let i = usize::try_from(stripe).unwrap_or(usize::MAX);
        if i >= self.slots.len() {
            return Err(format!("entry for stripe {stripe} beyond the map"));
        }
        self.slots[i] = read_u64(bytes, 0);
        self.generations[i] = read_u64(bytes, 8);
        for shard in 0..self.width {
            self.crcs[i * self.width + shard] = read_u32(bytes, 16 + 4 * shard);
        }
        Ok(())
    }

    fn entry_bytes(&self) -> usize {
        16 + 4 * self.width
    }
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

/// What a checkpoint header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointHeader {
    /// Commit sequence number the checkpoint is at.
    pub sequence: u64,
    /// Next write generation to hand out.
    pub next_generation: u64,
}

/// Encode a whole-map checkpoint, padded to a multiple of 4 KiB.
#[must_use]
pub fn encode_checkpoint(pool: PoolUuid, header: CheckpointHeader, map: &StripeMap) -> Vec<u8> {
    let mut body = Vec::with_capacity(map.slots.len() * map.entry_bytes());
    for stripe in 0..map.len() {
        map.encode_entry(stripe, &mut body);
    }
    let mut out = vec![0u8; 4096];
    out[..8].copy_from_slice(CHECKPOINT_MAGIC);
    out[8..24].copy_from_slice(&pool.0);
    out[24..32].copy_from_slice(&header.sequence.to_le_bytes());
    out[32..40].copy_from_slice(&header.next_generation.to_le_bytes());
    out[40..48].copy_from_slice(&map.len().to_le_bytes());
    out[48..52].copy_from_slice(&u32::try_from(map.width).unwrap_or(0).to_le_bytes());
    out[52..56].copy_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    let header_crc = crc32c::crc32c(&out[..56]);
    out[56..60].copy_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(&body);
    out.resize(out.len().div_ceil(4096) * 4096, 0);
    out
}

/// Decode the 4 KiB header of a checkpoint; returns the header and the body length to read.
///
/// # Errors
/// A message if the magic, pool, shape or header crc is wrong.
pub fn decode_checkpoint(
    pool: PoolUuid,
    bytes: &[u8],
    map: &mut StripeMap,
) -> Result<CheckpointHeader, String> {
    if bytes.len() < 4096 || &bytes[..8] != CHECKPOINT_MAGIC {
        return Err("no checkpoint magic".into());
    }
    if read_u32(bytes, 56) != crc32c::crc32c(&bytes[..56]) {
        return Err("checkpoint header checksum mismatch".into());
    }
    if bytes[8..24] != pool.0 {
        return Err("checkpoint belongs to another pool".into());
    }
    let count = read_u64(bytes, 40);
    let width = read_u32(bytes, 48) as usize;
    if count != map.len() || width != map.width {
        return Err(format!(
            "checkpoint shape {count}x{width} does not match the pool's {}x{}",
            map.len(),
            map.width
        ));
    }
    let body_len = usize::try_from(count).unwrap_or(usize::MAX) * map.entry_bytes();
    let body = bytes
        .get(4096..4096 + body_len)
        .ok_or("checkpoint body truncated")?;
    if crc32c::crc32c(body) != read_u32(bytes, 52) {
        return Err("checkpoint body checksum mismatch".into());
    }
    let entry_bytes = map.entry_bytes();
    for (stripe, entry) in body.chunks_exact(entry_bytes).enumerate() {
        map.decode_entry(stripe as u64, entry)?;
    }
    Ok(CheckpointHeader {
        sequence: read_u64(bytes, 24),
        next_generation: read_u64(bytes, 32),
    })
}

/// A decoded log record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRecord {
    /// Commit sequence number.
    pub sequence: u64,
    /// Next generation after this commit.
    pub next_generation: u64,
    /// Bytes the record occupies in the log (a multiple of 4 KiB).
    pub padded_bytes: u64,
}

/// Encode one commit: the entries of `stripes`, as they are in `map`.
#[must_use]
pub fn encode_log_record(
    pool: PoolUuid,
    sequence: u64,
    next_generation: u64,
    map: &StripeMap,
    stripes: &[StripeId],
) -> Vec<u8> {
    let mut out = vec![0u8; LOG_HEADER_BYTES];
    for stripe in stripes {
        out.extend_from_slice(&stripe.0.to_le_bytes());
        map.encode_entry(stripe.0, &mut out);
    }
    let body_len = out.len() - LOG_HEADER_BYTES;
    out[..8].copy_from_slice(LOG_MAGIC);
    out[8..24].copy_from_slice(&pool.0);
    out[24..32].copy_from_slice(&sequence.to_le_bytes());
    out[32..40].copy_from_slice(&next_generation.to_le_bytes());
    out[40..44].copy_from_slice(&u32::try_from(stripes.len()).unwrap_or(0).to_le_bytes());
    out[44..48].copy_from_slice(&u32::try_from(body_len).unwrap_or(0).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[..48]), &out[LOG_HEADER_BYTES..]);
    out[48..52].copy_from_slice(&crc.to_le_bytes());
    out.resize(out.len().div_ceil(4096) * 4096, 0);
    out
}

/// Bytes a log record for `count` stripes occupies.
#[must_use]
pub fn log_record_bytes(count: usize, width: usize) -> u64 {
    ((LOG_HEADER_BYTES + count * (8 + 16 + 4 * width)).div_ceil(4096) * 4096) as u64
}

/// Decode and apply the log record at the start of `bytes` if it is valid and has sequence
/// `expected_sequence`. `Ok(None)` means "not the next record": replay ends there.
///
/// # Errors
/// A message if a record with a valid crc does not fit the map (a sign of a format bug).
pub fn decode_log_record(
    pool: PoolUuid,
    expected_sequence: u64,
    bytes: &[u8],
    map: &mut StripeMap,
) -> Result<Option<LogRecord>, String> {
    if bytes.len() < LOG_HEADER_BYTES
        || &bytes[..8] != LOG_MAGIC
        || bytes[8..24] != pool.0
        || read_u64(bytes, 24) != expected_sequence
    {
        return Ok(None);
    }
    let count = read_u32(bytes, 40) as usize;
    let body_len = read_u32(bytes, 44) as usize;
    let Some(body) = bytes.get(LOG_HEADER_BYTES..LOG_HEADER_BYTES + body_len) else {
        return Ok(None);
    };
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..48]), body);
    if crc != read_u32(bytes, 48) {
        return Ok(None);
    }
    let record_bytes = 8 + map.entry_bytes();
    if body_len != count * record_bytes {
        return Err(format!(
            "log record {expected_sequence}: {count} entries in {body_len} bytes"
        ));
    }
    for record in body.chunks_exact(record_bytes) {
        map.decode_entry(read_u64(record, 0), &record[8..])?;
    }
    Ok(Some(LogRecord {
        sequence: expected_sequence,
        next_generation: read_u64(bytes, 32),
        padded_bytes: ((LOG_HEADER_BYTES + body_len).div_ceil(4096) * 4096) as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(slot: u64, generation: u64, width: usize) -> MapEntry {
        MapEntry {
            slot: Some(SlotId(slot)),
            generation: Generation(generation),
            crcs: (0..width as u32)
                .map(|i| i * 7 + generation as u32)
                .collect(),
        }
    }

    #[test]
    fn checkpoint_roundtrip_and_corruption() {
        let pool = PoolUuid([9; 16]);
        let mut map = StripeMap::new(100, 6);
        map.set(StripeId(3), &entry(50, 2, 6));
        map.set(StripeId(99), &entry(7, 9, 6));
        let header = CheckpointHeader {
            sequence: 4,
            next_generation: 10,
        };
        let bytes = encode_checkpoint(pool, header, &map);
        let mut decoded = StripeMap::new(100, 6);
        assert_eq!(decode_checkpoint(pool, &bytes, &mut decoded), Ok(header));
        assert_eq!(decoded, map);
        assert_eq!(decoded.get(StripeId(4)).slot, None);
        let mut bad = bytes.clone();
        bad[4096 + 30] ^= 1;
        assert!(decode_checkpoint(pool, &bad, &mut StripeMap::new(100, 6)).is_err());
        assert!(decode_checkpoint(PoolUuid([1; 16]), &bytes, &mut StripeMap::new(100, 6)).is_err());
        assert!(decode_checkpoint(pool, &bytes, &mut StripeMap::new(99, 6)).is_err());
    }

    #[test]
    fn an_unmapped_entry_in_a_log_record_replays_as_never_written() {
        // What a discard commits (docs/FORMAT.md, "Discard"): the entry with slot u64::MAX.
        let pool = PoolUuid([4; 16]);
        let mut live = StripeMap::new(10, 3);
        live.set(StripeId(2), &entry(5, 1, 3));
        let mut replay = live.clone();
        let unmapped = MapEntry {
            slot: None,
            generation: Generation(7),
            crcs: vec![0; 3],
        };
        live.set(StripeId(2), &unmapped);
        let bytes = encode_log_record(pool, 1, 8, &live, &[StripeId(2)]);
        assert_eq!(&bytes[64 + 8..64 + 16], &u64::MAX.to_le_bytes());
        decode_log_record(pool, 1, &bytes, &mut replay)
            .unwrap()
            .unwrap();
        assert_eq!(replay.slot(StripeId(2)), None);
        assert_eq!(replay.used_slots().count(), 0, "its old slot is free again");
        assert_eq!(replay, live);
    }

    #[test]
    fn log_record_roundtrip_sequence_and_torn_detection() {
        let pool = PoolUuid([9; 16]);
        let mut map = StripeMap::new(10, 3);
        map.set(StripeId(1), &entry(5, 1, 3));
        map.set(StripeId(8), &entry(6, 2, 3));
        let bytes = encode_log_record(pool, 7, 3, &map, &[StripeId(1), StripeId(8)]);
        assert_eq!(bytes.len() as u64, log_record_bytes(2, 3));
        let mut replay = StripeMap::new(10, 3);
        let record = decode_log_record(pool, 7, &bytes, &mut replay)
            .unwrap()
            .unwrap();
        assert_eq!(record.next_generation, 3);
        assert_eq!(replay, map);
        assert_eq!(decode_log_record(pool, 8, &bytes, &mut replay), Ok(None));
        let mut torn = bytes.clone();
        torn[70] ^= 0xff;
        assert_eq!(
            decode_log_record(pool, 7, &torn, &mut StripeMap::new(10, 3)),
            Ok(None)
        );
    }
}
