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

/// Write `uberblock` into both rings of one member that lacks it and flush: a writable open
/// brings every member in service up to the uberblock it opened (docs/FORMAT.md V4.8,
/// "Recovery at open", step 4), so that none of them can later, alone, open an older tree.
///
/// # Errors
/// The member's write or flush error, naming it and the byte offset.
pub fn restore_uberblock(
    device: &SharedDevice,
    geometry: &Geometry,
    uberblock: &Uberblock,
) -> Result<()> {
    let bytes = uberblock.encode();
    let places = uberblock_places(geometry, uberblock.txg);
    for offset in places {
        device
            .write_at(offset, &bytes)
            .map_err(|e| super::device_error(device, Some(offset), e))?;
    }
    device
        .flush()
        .map_err(|e| super::device_error(device, Some(places[0]), e))
}

/// One valid uberblock found: the member, the byte offset, the uberblock and its bytes.
type Found = (DeviceIndex, u64, Uberblock, Vec<u8>);

/// Every valid uberblock of one pool in both rings of every member in service (any timeline),
/// read once; open and rewind ask it what they need.
#[derive(Debug, Clone)]
pub struct Rings {
    found: Vec<Found>,
    names: Vec<Option<String>>,
}

impl Rings {
    /// Read both rings of every member in service. Writes nothing.
    ///
    /// # Errors
    /// A ring larger than memory.
    pub fn read(
        devices: &[Option<SharedDevice>],
        geometry: &Geometry,
        pool: [u8; 16],
    ) -> Result<Self> {
        let ring_bytes = usize::try_from(geometry.uberblock_slots * UBERBLOCK_SLOT_BYTES)
            .map_err(|_| Error::corrupt_metadata("uberblock ring larger than memory"))?;
        let mut found = Vec::new();
        let mut ring = vec![0u8; ring_bytes];
        for (index, device) in devices.iter().enumerate() {
            let Some(device) = device else { continue };
            for start in geometry.uberblock_rings() {
                if device.read_at(start, &mut ring).is_err() {
                    // A ring that cannot be read holds nothing usable; the other ring and the
                    // other members answer.
                    continue;
                }
                for (slot, bytes) in ring.chunks_exact(UBERBLOCK_BYTES).enumerate() {
                    let Ok(uberblock) = Uberblock::decode(bytes, pool) else {
                        continue;
                    };
                    if uberblock.txg % geometry.uberblock_slots != slot as u64 {
                        continue;
                    }
                    let offset = start + (slot * UBERBLOCK_BYTES) as u64;
                    found.push((DeviceIndex(index), offset, uberblock, bytes.to_vec()));
                }
            }
        }
        let names = devices
            .iter()
            .map(|d| d.as_ref().map(|d| d.name()))
            .collect();
        Ok(Self { found, names })
    }

    /// The newest valid uberblock of `timeline`, and the members that hold it. `None` when
    /// there is none.
    ///
    /// # Errors
    /// [`Error::CorruptMetadata`] when two valid uberblocks of the timeline carry the same txg
    /// with different bytes (a split timeline: never picked between silently).
    pub fn newest(&self, timeline: u64) -> Result<Option<(Uberblock, Vec<DeviceIndex>)>> {
        let mut newest: Option<(&Uberblock, &[u8], Vec<DeviceIndex>)> = None;
        for (index, offset, found, bytes) in &self.found {
            if found.timeline != timeline {
                continue;
            }
            match &mut newest {
                Some((best, best_bytes, holders)) if best.txg == found.txg => {
                    if *best_bytes != bytes.as_slice() {
                        return Err(Error::CorruptMetadata {
                            device: self.names.get(index.0).cloned().flatten(),
                            offset: Some(*offset),
                            reason: format!(
                                "split timeline: two different uberblocks claim txg {} (member {})",
                                found.txg, index.0
                            ),
                        });
                    }
                    if !holders.contains(index) {
                        holders.push(*index);
                    }
                }
                Some((best, _, _)) if best.txg > found.txg => {}
                _ => newest = Some((found, bytes, vec![*index])),
            }
        }
        Ok(newest.map(|(uberblock, _, holders)| (uberblock.clone(), holders)))
    }

    /// The valid uberblock `txg` of `timeline`, if any member still holds it.
    #[must_use]
    pub fn at(&self, timeline: u64, txg: u64) -> Option<Uberblock> {
        self.found
            .iter()
            .find(|(_, _, u, _)| u.timeline == timeline && u.txg == txg)
            .map(|(_, _, u, _)| u.clone())
    }

    /// The highest txg of any valid uberblock in any timeline (a rewind's floor).
    #[must_use]
    pub fn highest_txg(&self) -> u64 {
        self.found
            .iter()
            .map(|(_, _, u, _)| u.txg)
            .max()
            .unwrap_or(0)
    }
}
