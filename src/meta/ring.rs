//! The uberblock rings (docs/FORMAT.md, V4.8): slot `txg mod U` of ring A (after superblock A)
//! and of ring B (before superblock B) on every member. The newest valid uberblock of the pool's
//! timeline names every tree root.

use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::format::v4::{Uberblock, UBERBLOCK_BYTES};
use crate::geometry::{Geometry, UBERBLOCK_SLOT_BYTES};
use crate::types::DeviceIndex;

/// Byte offsets of uberblock `txg`'s two places on a member.
#[must_use]
pub fn uberblock_places(geometry: &Geometry, txg: u64) -> [u64; 2] {
    let slot = txg % geometry.uberblock_slots.max(1);
    geometry
        .uberblock_rings()
        .map(|ring| ring + slot * UBERBLOCK_SLOT_BYTES)
}

/// Write `uberblock` into both rings of every member in service. Returns the members whose
/// writes failed, with the error; the caller decides whether enough landed.
pub fn write_uberblock(
    devices: &[Option<SharedDevice>],
    geometry: &Geometry,
    uberblock: &Uberblock,
) -> Vec<(DeviceIndex, String)> {
    let bytes = uberblock.encode();
    let mut failed = Vec::new();
    for (index, device) in devices.iter().enumerate() {
        let Some(device) = device else { continue };
        for offset in uberblock_places(geometry, uberblock.txg) {
            if let Err(e) = device.write_at(offset, &bytes) {
                failed.push((
                    DeviceIndex(index),
                    format!("uberblock at byte offset {offset}: {e}"),
                ));
            }
        }
    }
    failed
}

/// The newest valid uberblock of pool `pool` on timeline `timeline` across both rings of every
/// member in service, and how many members hold it. `None` when there is none.
///
/// # Errors
/// [`Error::CorruptMetadata`] when two valid uberblocks of the timeline carry the same txg with
/// different bytes (a split timeline: never picked between silently).
pub fn read_newest(
    devices: &[Option<SharedDevice>],
    geometry: &Geometry,
    pool: [u8; 16],
    timeline: u64,
) -> Result<Option<(Uberblock, usize)>> {
    let ring_bytes = usize::try_from(geometry.uberblock_slots * UBERBLOCK_SLOT_BYTES)
        .map_err(|_| Error::corrupt_metadata("uberblock ring larger than memory"))?;
    let mut newest: Option<(Uberblock, Vec<u8>, usize)> = None;
    let mut ring = vec![0u8; ring_bytes];
    for (index, device) in devices.iter().enumerate() {
        let Some(device) = device else { continue };
        let mut seen_here: Vec<u64> = Vec::new();
        for start in geometry.uberblock_rings() {
            if device.read_at(start, &mut ring).is_err() {
                // A ring that cannot be read holds nothing usable; the other ring and the
                // other members answer.
                continue;
            }
            for (slot, bytes) in ring.chunks_exact(UBERBLOCK_BYTES).enumerate() {
                let Ok(found) = Uberblock::decode(bytes, pool) else {
                    continue;
                };
                if found.timeline != timeline || found.txg % geometry.uberblock_slots != slot as u64
                {
                    continue;
                }
                match &mut newest {
                    Some((best, best_bytes, holders)) if best.txg == found.txg => {
                        if best_bytes.as_slice() != bytes {
                            return Err(Error::CorruptMetadata {
                                device: Some(device.name()),
                                offset: Some(start + (slot * UBERBLOCK_BYTES) as u64),
                                reason: format!(
                                    "split timeline: two different uberblocks claim txg {} (member {index})",
                                    found.txg
                                ),
                            });
                        }
                        if !seen_here.contains(&found.txg) {
                            *holders += 1;
                        }
                    }
                    Some((best, _, _)) if best.txg > found.txg => {}
                    _ => newest = Some((found.clone(), bytes.to_vec(), 1)),
                }
                seen_here.push(found.txg);
            }
        }
    }
    Ok(newest.map(|(uberblock, _, holders)| (uberblock, holders)))
}
