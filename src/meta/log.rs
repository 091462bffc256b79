//! The intent log of format version 4 (docs/FORMAT.md, V4.8 "Intent log record", "Recovery at
//! open"): two halves per member; a commit appends one record at the same offset of the current
//! half on every member in service; a tree sync switches to the other half, whose chain starts
//! with `prev` = the sync's own sequence.
//!
//! Owns: where the next record goes, the fit check (a record never crosses the end of its half
//! or exceeds `record_max`), appending, reading the chains back (each member's chain, the
//! longest one, the valid records the chain cannot reach), and copying the winning chain
//! verbatim onto members whose chain is shorter.
//!
//! Does not own: what the entries mean (the map applies them, `map.rs`), the uberblocks
//! (`ring.rs`), membership and fault policy (errors name the member; the caller decides).

use std::sync::Arc;

use crate::device::{flush_each, run_batch, BatchOp, DeviceError, SharedDevice};
use crate::error::{Error, Result};
use crate::format::v4::{LogEntry, LogRecord, LOG_BLOCK_BYTES};
use crate::geometry::Geometry;
use crate::types::DeviceIndex;

/// Where the next record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    /// The half (0 or 1).
    pub half: u8,
    /// Byte offset inside the half.
    pub offset: u64,
    /// The sequence the next record names as `prev`.
    pub last: u64,
}

/// The appending side of the log.
#[derive(Debug, Clone)]
pub struct IntentLog {
    pool: [u8; 16],
    timeline: u64,
    width: usize,
    halves: [u64; 2],
    half_bytes: u64,
    record_max: usize,
    position: LogPosition,
    /// Planted bug `record_without_fit_check`.
    #[cfg(feature = "testing")]
    skip_fit_check: bool,
}

impl IntentLog {
    /// The log of a pool on `geometry`, appending at `position`.
    #[must_use]
    pub fn new(
        pool: [u8; 16],
        timeline: u64,
        geometry: &Geometry,
        record_max: usize,
        position: LogPosition,
    ) -> Self {
        Self {
            pool,
            timeline,
            width: geometry.width(),
            halves: geometry.log_halves(),
            half_bytes: geometry.log_half_bytes(),
            record_max,
            position,
            #[cfg(feature = "testing")]
            skip_fit_check: false,
        }
    }

    /// Plant `record_without_fit_check`: records are written even where they do not fit.
    #[cfg(feature = "testing")]
    #[must_use]
    pub fn with_planted_skip_fit_check(mut self) -> Self {
        self.skip_fit_check = true;
        self
    }

    /// Largest record, bytes.
    #[must_use]
    pub fn record_max(&self) -> usize {
        self.record_max
    }

    /// Where the next record goes.
    #[must_use]
    pub fn position(&self) -> LogPosition {
        self.position
    }

    /// Whether a record of `bytes` (padded) may be appended now.
    #[must_use]
    pub fn fits(&self, bytes: usize) -> bool {
        bytes <= self.record_max && self.position.offset + bytes as u64 <= self.half_bytes
    }

    /// Append the record of commit `sequence` on every member in service and flush them.
    /// `Ok(false)`: it does not fit (nothing written; the caller runs a tree sync instead).
    ///
    /// # Errors
    /// An entry a correct pool never writes, or a member that cannot be written or flushed
    /// (the record may then be on some members: the caller must not acknowledge the commit).
    pub fn append(
        &mut self,
        devices: &[Option<SharedDevice>],
        sequence: u64,
        entries: Vec<LogEntry>,
    ) -> Result<bool> {
        self.append_tolerating(devices, sequence, entries, &|_, _, _| false)
    }

    /// As [`IntentLog::append`], but a member whose write or flush fails is left behind when
    /// `tolerate(member, offset, error)` says so (the owner took it out of service, so no
    /// open will read this half from it); any other failure fails the append.
    ///
    /// # Errors
    /// As [`IntentLog::append`].
    pub fn append_tolerating(
        &mut self,
        devices: &[Option<SharedDevice>],
        sequence: u64,
        entries: Vec<LogEntry>,
        tolerate: &dyn Fn(usize, u64, &DeviceError) -> bool,
    ) -> Result<bool> {
        let record = LogRecord {
            pool: self.pool,
            sequence,
            prev: self.position.last,
            timeline: self.timeline,
            half: self.position.half,
            entries,
        };
        let bytes = record
            .encode(self.width)
            .map_err(|e| Error::corrupt_metadata(format!("log record {sequence}: {e}")))?;
        #[cfg(feature = "testing")]
        let checked = !self.skip_fit_check;
        #[cfg(not(feature = "testing"))]
        let checked = true;
        if checked && !self.fits(bytes.len()) {
            return Ok(false);
        }
        let at = self.halves[usize::from(self.position.half)] + self.position.offset;
        // The record goes to every member in service in one batch (side by side on io_uring;
        // in member order otherwise), then every member that took it is flushed (side by side
        // on real devices: `flush_each`).
        let members: Vec<(usize, &SharedDevice)> = devices
            .iter()
            .enumerate()
            .filter_map(|(member, device)| Some((member, device.as_ref()?)))
            .collect();
        let mut batch: Vec<BatchOp<'_>> = members
            .iter()
            .map(|&(_, device)| BatchOp::write(device.as_ref(), at, &bytes))
            .collect();
        run_batch(&mut batch);
        let mut took: Vec<Option<SharedDevice>> = vec![None; devices.len()];
        for ((member, device), op) in members.into_iter().zip(batch) {
            match op.result {
                Ok(()) => took[member] = Some(Arc::clone(device)),
                Err(e) => {
                    if !tolerate(member, at, &e) {
                        return Err(super::device_error(device, Some(at), e));
                    }
                }
            }
        }
        for (member, outcome) in flush_each(&took).into_iter().enumerate() {
            let (Some(device), Some(Err(e))) = (&took[member], outcome) else {
                continue;
            };
            if !tolerate(member, at, &e) {
                return Err(super::device_error(device, Some(at), e));
            }
        }
        self.position.offset += bytes.len() as u64;
        self.position.last = sequence;
        Ok(true)
    }

    /// A tree sync with its own sequence `s_sync` took the boundary: the next record goes at the
    /// start of the other half, naming `s_sync` as `prev`.
    pub fn switch(&mut self, s_sync: u64) {
        self.position = LogPosition {
            half: self.position.half ^ 1,
            offset: 0,
            last: s_sync,
        };
    }
}

/// One record of a chain and where it is.
#[derive(Debug, Clone)]
pub struct ChainRecord {
    /// The record.
    pub record: LogRecord,
    /// Its half.
    pub half: u8,
    /// Its byte offset inside the half.
    pub offset: u64,
    /// Its bytes, padding included.
    pub bytes: u64,
}

/// What the log holds after the durable uberblock: the longest chain and what it cannot reach.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The winning chain, oldest first.
    pub chain: Vec<ChainRecord>,
    /// Where the next record goes after it.
    pub end: LogPosition,
    /// The member whose chain won (`None` when no member is in service).
    pub winner: Option<DeviceIndex>,
    /// Members whose own chain is shorter than the winner's.
    pub lagging: Vec<DeviceIndex>,
    /// Valid records of the timeline above the chain's end: `(member, half, offset, sequence)`.
    pub beyond: Vec<(DeviceIndex, u8, u64, u64)>,
    /// Each member's own chain, by sequence (to tell whether a holder of a record beyond the
    /// winner's chain reaches it through its own chain).
    pub own_chains: Vec<(DeviceIndex, Vec<u64>)>,
    /// Bytes read from the log areas, per member in service.
    pub bytes_read: Vec<(DeviceIndex, u64)>,
    /// The highest sequence of any valid record of the pool in any timeline, on any member (a
    /// rewind's floor).
    pub highest_sequence: u64,
    /// The winner's two halves as read (for copying the chain verbatim).
    winner_halves: [Vec<u8>; 2],
}

fn decode_at(
    bytes: &[u8],
    offset: u64,
    pool: [u8; 16],
    width: usize,
) -> Option<(LogRecord, usize)> {
    let start = usize::try_from(offset).ok()?;
    LogRecord::decode(bytes.get(start..)?, pool, width).ok()
}

/// The chain of one member: from `start_half` at offset 0 with `prev` = `s_sync`, then, when
/// `into_other_half`, the other half from offset 0 while it continues (a first record whose
/// `prev` is above the chain's last sequence: the sync that switched to it). A normal open never
/// continues: a sync's uberblock is flushed on every member before any record of the new half,
/// so such records mean that uberblock was lost, and the tree it committed with it.
fn walk(
    halves: &[Vec<u8>; 2],
    pool: [u8; 16],
    timeline: u64,
    width: usize,
    start_half: u8,
    s_sync: u64,
    into_other_half: bool,
) -> (Vec<ChainRecord>, LogPosition) {
    let mut chain = Vec::new();
    let mut position = LogPosition {
        half: start_half,
        offset: 0,
        last: s_sync,
    };
    let mut switched = !into_other_half;
    loop {
        let here = &halves[usize::from(position.half)];
        let next = decode_at(here, position.offset, pool, width).filter(|(r, _)| {
            r.timeline == timeline
                && r.half == position.half
                && r.prev == position.last
                && r.sequence > r.prev
        });
        if let Some((record, bytes)) = next {
            position.offset += bytes as u64;
            position.last = record.sequence;
            chain.push(ChainRecord {
                record,
                half: position.half,
                offset: position.offset - bytes as u64,
                bytes: bytes as u64,
            });
            continue;
        }
        if switched {
            break;
        }
        switched = true;
        let other = position.half ^ 1;
        let first = decode_at(&halves[usize::from(other)], 0, pool, width).filter(|(r, _)| {
            r.timeline == timeline
                && r.half == other
                && r.prev > position.last
                && r.sequence > r.prev
        });
        let Some((record, bytes)) = first else {
            break;
        };
        position = LogPosition {
            half: other,
            offset: bytes as u64,
            last: record.sequence,
        };
        chain.push(ChainRecord {
            record,
            half: other,
            offset: 0,
            bytes: bytes as u64,
        });
    }
    (chain, position)
}

/// Every valid record of `pool` in `halves`, any timeline, as `(half, offset, sequence,
/// timeline)`: records start on 4 KiB boundaries.
fn valid_records(halves: &[Vec<u8>; 2], pool: [u8; 16], width: usize) -> Vec<(u8, u64, u64, u64)> {
    let mut found = Vec::new();
    for (half, bytes) in halves.iter().enumerate() {
        for offset in (0..bytes.len()).step_by(LOG_BLOCK_BYTES) {
            if bytes[offset..offset + 8] != crate::format::v4::LOG_MAGIC[..] {
                continue;
            }
            if let Some((record, _)) = decode_at(bytes, offset as u64, pool, width) {
                found.push((half as u8, offset as u64, record.sequence, record.timeline));
            }
        }
    }
    found
}

fn read_halves(device: &SharedDevice, geometry: &Geometry) -> Result<[Vec<u8>; 2]> {
    let bytes = usize::try_from(geometry.log_half_bytes())
        .map_err(|_| Error::corrupt_metadata("log half larger than memory"))?;
    let mut halves = [vec![0u8; bytes], vec![0u8; bytes]];
    for (half, start) in geometry.log_halves().into_iter().enumerate() {
        // A half that cannot be read holds no chain on this member; the others answer.
        if device.read_at(start, &mut halves[half]).is_err() {
            halves[half].fill(0);
        }
    }
    Ok(halves)
}

/// Read both halves of every member in service once and find the chain after the uberblock
/// that names `start_half` and `s_sync` (docs/FORMAT.md, "Recovery at open", step 3), going on
/// into the other half only when `into_other_half` (a rewind over a sync that logged
/// everything). Reads exactly `2 × log_half_bytes` per member and writes nothing. The longest
/// chain wins; between equally long ones, the one ending at the higher sequence.
///
/// # Errors
/// A log half larger than memory.
pub fn replay(
    devices: &[Option<SharedDevice>],
    geometry: &Geometry,
    pool: [u8; 16],
    timeline: u64,
    start_half: u8,
    s_sync: u64,
    into_other_half: bool,
) -> Result<Replay> {
    let width = geometry.width();
    // The longest chain so far: its member, records, end and the member's halves.
    type Best = (DeviceIndex, Vec<ChainRecord>, LogPosition, [Vec<u8>; 2]);
    let mut best: Option<Best> = None;
    let mut lengths = Vec::new();
    let mut own_chains = Vec::new();
    let mut bytes_read = Vec::new();
    let mut all_valid = Vec::new();
    let mut highest_sequence = 0;
    for (index, device) in devices.iter().enumerate() {
        let Some(device) = device else { continue };
        let halves = read_halves(device, geometry)?;
        bytes_read.push((DeviceIndex(index), 2 * geometry.log_half_bytes()));
        let (chain, end) = walk(
            &halves,
            pool,
            timeline,
            width,
            start_half,
            s_sync,
            into_other_half,
        );
        lengths.push((DeviceIndex(index), chain.len()));
        own_chains.push((
            DeviceIndex(index),
            chain.iter().map(|c| c.record.sequence).collect(),
        ));
        let mut valid = valid_records(&halves, pool, width);
        for (_, _, sequence, _) in &valid {
            highest_sequence = highest_sequence.max(*sequence);
        }
        valid.retain(|(_, _, _, of)| *of == timeline);
        all_valid.push((DeviceIndex(index), valid));
        let better = best
            .as_ref()
            .is_none_or(|(_, b, e, _)| (chain.len(), end.last) > (b.len(), e.last));
        if better {
            best = Some((DeviceIndex(index), chain, end, halves));
        }
    }
    let Some((winner, chain, end, winner_halves)) = best else {
        return Ok(Replay {
            chain: Vec::new(),
            end: LogPosition {
                half: start_half,
                offset: 0,
                last: s_sync,
            },
            winner: None,
            lagging: Vec::new(),
            beyond: Vec::new(),
            own_chains,
            bytes_read,
            highest_sequence,
            winner_halves: [Vec::new(), Vec::new()],
        });
    };
    let lagging = lengths
        .iter()
        .filter(|(_, length)| *length < chain.len())
        .map(|(index, _)| *index)
        .collect();
    let beyond = all_valid
        .into_iter()
        .flat_map(|(index, records)| {
            records
                .into_iter()
                .filter(|(_, _, sequence, _)| *sequence > end.last)
                .map(move |(half, offset, sequence, _)| (index, half, offset, sequence))
        })
        .collect();
    Ok(Replay {
        chain,
        end,
        winner: Some(winner),
        lagging,
        beyond,
        own_chains,
        bytes_read,
        highest_sequence,
        winner_halves,
    })
}

impl Replay {
    /// Copy the winner's chain bytes verbatim onto every lagging member (records sit at the same
    /// offsets on every member), then flush them (docs/FORMAT.md, "Recovery at open", step 4).
    ///
    /// Returns the lagging members that could not be written or flushed, with the error: the
    /// caller's fault policy decides about them; the others are not held back.
    pub fn rereplicate(
        &self,
        devices: &[Option<SharedDevice>],
        geometry: &Geometry,
    ) -> Vec<(DeviceIndex, Error)> {
        let mut failed = Vec::new();
        for index in &self.lagging {
            let Some(Some(device)) = devices.get(index.0) else {
                continue;
            };
            if let Err(e) = self.copy_chain(device, geometry) {
                failed.push((*index, e));
            }
        }
        failed
    }

    fn copy_chain(&self, device: &SharedDevice, geometry: &Geometry) -> Result<()> {
        let starts = geometry.log_halves();
        for record in &self.chain {
            let half = usize::from(record.half);
            let from = usize::try_from(record.offset).unwrap_or(usize::MAX);
            let to = from.saturating_add(usize::try_from(record.bytes).unwrap_or(0));
            let Some(bytes) = self.winner_halves[half].get(from..to) else {
                continue;
            };
            let at = starts[half] + record.offset;
            device
                .write_at(at, bytes)
                .map_err(|e| super::device_error(device, Some(at), e))?;
        }
        device
            .flush()
            .map_err(|e| super::device_error(device, Some(starts[0]), e))
    }
}
