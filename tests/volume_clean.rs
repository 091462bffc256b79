//! The data cleaner of format version 4 (`Volume`, docs/FORMAT.md V4.6 "Cleaner"), checked
//! against a model that records which version of each block was written last (the bytes of
//! a version are a pattern no other key or version shares):
//! * a volume filled to 90 % and to 100 % of its blocks, then overwritten at random many times
//!   its size, never runs out of space, and reads back exactly, before and after a reopen;
//! * a power cut at every device operation of a write that runs the cleaner (and its flush)
//!   loses nothing flushed, and the volume goes on cleaning afterwards;
//! * cleaning copies verified bytes: rot in blocks the cleaner moves is rebuilt, not copied;
//! * the planted `cleaner_install_without_cas` (old bytes of overwritten blocks come back)
//!   and `skip_block_verification` while cleaning (rot copied as good data) are caught.

use crate::meta;
use meta::{Lcg, PowerMembers};
use stripestore::device::{Device, SharedDevice};
use stripestore::geometry::{Geometry, Layout};
use stripestore::meta::MapOptions;
use stripestore::types::{ShardIndex, SlotId};
use stripestore::volume::{Volume, VolumeOptions, BLOCK_BYTES};

const POOL: [u8; 16] = [0x3c; 16];
const TIMELINE: u64 = 0x7100;
const DEVICE_BYTES: u64 = 8 << 20;
const B: usize = BLOCK_BYTES;

const LAYOUTS: [(&str, usize); 4] = meta::VOLUME_LAYOUTS;

fn geometry(layout: &str, members: usize) -> Geometry {
    meta::volume_geometry(layout, members, DEVICE_BYTES)
}

fn options() -> VolumeOptions {
    meta::volume_options()
}

fn pattern(key: u64, version: u64) -> Vec<u8> {
    meta::block_pattern(key, version)
}

/// A volume on memory members behind a power switch, and the version each block was last
/// written with (`flushed`: as of the last flush; `newest`: including what followed).
struct Rig {
    geometry: Geometry,
    members: PowerMembers,
    options: VolumeOptions,
    volume: Option<Volume>,
    flushed: Vec<u64>,
    newest: Vec<u64>,
    version: u64,
}

impl Rig {
    fn new(layout: &str, members: usize, options: VolumeOptions) -> Self {
        let geometry = geometry(layout, members);
        let members = PowerMembers::new(members, DEVICE_BYTES);
        let volume = Volume::create(&members.devices, POOL, &geometry, TIMELINE, &options).unwrap();
        let blocks = (volume.volume_bytes() / B as u64) as usize;
        Self {
            geometry,
            members,
            options,
            volume: Some(volume),
            flushed: vec![0; blocks],
            newest: vec![0; blocks],
            version: 0,
        }
    }

    fn volume(&mut self) -> &mut Volume {
        self.volume.as_mut().unwrap()
    }

    fn blocks(&self) -> u64 {
        self.flushed.len() as u64
    }

    /// Write a new version of `count` blocks from `first`.
    fn write(&mut self, first: u64, count: u64) -> stripestore::Result<()> {
        let mut data = Vec::with_capacity(count as usize * B);
        for key in first..first + count {
            self.version += 1;
            self.newest[key as usize] = self.version;
            data.extend_from_slice(&pattern(key, self.version));
        }
        let devices = self.members.devices.clone();
        self.volume().write(&devices, first * B as u64, &data)
    }

    fn flush(&mut self) -> stripestore::Result<()> {
        let devices = self.members.devices.clone();
        self.volume().flush(&devices)?;
        self.flushed.clone_from(&self.newest);
        Ok(())
    }

    /// Every block of `0..span` reads exactly its newest version.
    fn exact(&self, span: u64) -> Result<(), String> {
        let volume = self.volume.as_ref().unwrap();
        let mut all = vec![0u8; span as usize * B];
        volume
            .read(&self.members.devices, 0, &mut all)
            .map_err(|e| format!("read: {e}"))?;
        for key in 0..span {
            let want = match self.newest[key as usize] {
                0 => vec![0u8; B],
                v => pattern(key, v),
            };
            if all[key as usize * B..(key as usize + 1) * B] != want[..] {
                return Err(format!(
                    "block {key} does not read version {}",
                    self.newest[key as usize]
                ));
            }
        }
        Ok(())
    }

    fn reopen(&mut self) {
        self.volume = None;
        self.volume = Some(
            Volume::open(
                &self.members.devices,
                POOL,
                &self.geometry,
                TIMELINE,
                &self.options,
            )
            .unwrap(),
        );
    }

    /// Cut the power (members keep a random part of what they did not flush) and reopen:
    /// every block reads its flushed version or the one written after it, which becomes the
    /// model's state.
    fn crash_and_settle(&mut self, seed: u64) -> Result<(), String> {
        self.volume = None;
        self.members.crash(seed);
        let volume = Volume::open(
            &self.members.devices,
            POOL,
            &self.geometry,
            TIMELINE,
            &self.options,
        )
        .map_err(|e| format!("reopen: {e}"))?;
        for key in 0..self.blocks() {
            let mut found = vec![0u8; B];
            volume
                .read(&self.members.devices, key * B as u64, &mut found)
                .map_err(|e| format!("block {key}: {e}"))?;
            let version_bytes = |v: u64| {
                if v == 0 {
                    vec![0u8; B]
                } else {
                    pattern(key, v)
                }
            };
            let (flushed, newest) = (self.flushed[key as usize], self.newest[key as usize]);
            let now = if found == version_bytes(flushed) {
                flushed
            } else if found == version_bytes(newest) {
                newest
            } else {
                return Err(format!(
                    "block {key} reads neither its flushed version {flushed} nor the newer {newest}"
                ));
            };
            self.flushed[key as usize] = now;
            self.newest[key as usize] = now;
        }
        self.volume = Some(volume);
        Ok(())
    }

    /// Device and offset of the first shard-block carrying block `key`'s data.
    fn place_of(&self, key: u64) -> (usize, u64) {
        let volume = self.volume.as_ref().unwrap();
        let pointer = volume.map().get(&self.members.devices, key).unwrap();
        let pbn = pointer.address().expect("a written block");
        let k = self.geometry.data_chunks() as u64;
        let rows = self.geometry.chunk_bytes / B as u64;
        let (slot, row, chunk) = (pbn / (k * rows), (pbn % (k * rows)) / k, pbn % k);
        let shard = (0..self.geometry.width())
            .find(|s| self.geometry.shard_data_chunk(ShardIndex(*s)) == Some(chunk as usize))
            .unwrap();
        let (device, at) = self
            .geometry
            .shard_location(SlotId(slot), ShardIndex(shard));
        (device.0, at + row * B as u64)
    }
}

/// Fill `span` blocks, then overwrite random runs of 1–8 blocks (`writes` of them) with a
/// flush every 32: the volume never refuses a write and reads back exactly throughout.
fn soak(rig: &mut Rig, span: u64, writes: usize, seed: u64) -> Result<(), String> {
    let step = 256.min(span);
    let mut first = 0;
    while first < span {
        let count = step.min(span - first);
        rig.write(first, count)
            .map_err(|e| format!("fill at block {first}: {e}"))?;
        first += count;
    }
    rig.flush().map_err(|e| format!("flush after fill: {e}"))?;
    let mut rng = Lcg(seed);
    for i in 0..writes {
        let count = 1 + rng.next() % 8;
        let first = rng.next() % (span - count + 1);
        rig.write(first, count)
            .map_err(|e| format!("write {i} of blocks {first}+{count}: {e}"))?;
        if i % 32 == 31 {
            rig.flush()
                .map_err(|e| format!("flush at write {i}: {e}"))?;
        }
        if i % 1000 == 999 {
            rig.exact(span)
                .map_err(|e| format!("after write {i}: {e}"))?;
        }
    }
    rig.flush().map_err(|e| format!("last flush: {e}"))?;
    rig.exact(span)
}

#[test]
fn a_volume_overwritten_many_times_its_size_at_90_and_100_percent_never_runs_out() {
    for (layout, members) in LAYOUTS {
        for percent in [90u64, 100] {
            let mut rig = Rig::new(layout, members, options());
            let span = rig.blocks() * percent / 100;
            let writes = (span * 3 / 4) as usize;
            soak(&mut rig, span, writes, percent ^ 0x77)
                .unwrap_or_else(|e| panic!("{layout} {percent} %: {e}"));
            let counters = rig.volume().counters();
            let shape = rig.volume().map().segments().shape();
            eprintln!(
                "{layout} {percent} %: {} blocks in {} segments, {} written, {} relocated \
                 (write amplification {:.2}), {} segments cleaned, {} syncs waited for",
                rig.blocks(),
                shape.segments,
                counters.blocks_written,
                counters.relocated_blocks,
                counters.blocks_written as f64
                    / (counters.blocks_written - counters.relocated_blocks) as f64,
                counters.cleaned_segments,
                counters.cleaner_syncs
            );
            // The writes are several times what the segments hold: without the cleaner the
            // volume would have refused them.
            assert!(
                counters.blocks_written > 2 * shape.segments * shape.blocks_per_segment,
                "{layout} {percent} %: the soak did not wrap the segments"
            );
            assert!(
                counters.cleaned_segments > 0 && counters.relocated_blocks > 0,
                "{layout} {percent} %: the cleaner never ran"
            );
            rig.reopen();
            rig.exact(span)
                .unwrap_or_else(|e| panic!("{layout} {percent} % after reopen: {e}"));
            rig.volume
                .as_ref()
                .unwrap()
                .map()
                .check_usage(&rig.members.devices)
                .unwrap_or_else(|e| panic!("{layout} {percent} %: usage after reopen: {e}"));
        }
    }
}

#[test]
fn planted_cleaner_install_without_cas_is_caught() {
    let planted = VolumeOptions {
        cleaner_install_without_cas: true,
        ..options()
    };
    // Every write that cleans is followed by a full read-back, so that the planted bug shows
    // as wrong bytes before the space its extra copies waste runs out.
    let run = |options: VolumeOptions| -> Result<u64, String> {
        let mut rig = Rig::new("rs:4+2", 6, options);
        let span = rig.blocks() * 9 / 10;
        soak(&mut rig, span, 0, 5)?;
        let mut rng = Lcg(5);
        for i in 0..600 {
            let relocated = rig.volume().counters().relocated_blocks;
            let count = 1 + rng.next() % 8;
            let first = rng.next() % (span - count + 1);
            rig.write(first, count)
                .map_err(|e| format!("write {i}: {e}"))?;
            if rig.volume().counters().relocated_blocks > relocated {
                rig.exact(span)
                    .map_err(|e| format!("after write {i}: {e}"))?;
            }
        }
        Ok(rig.volume().counters().relocated_blocks)
    };
    let caught = run(planted);
    eprintln!("caught: {caught:?}");
    assert!(
        caught
            .as_ref()
            .is_err_and(|e| e.contains("does not read version")),
        "a cleaner that installs without comparing the owner's pointer went unnoticed: \
         {caught:?}"
    );
    // The same run without the bug passes.
    assert!(run(options()).unwrap() > 0);
}

/// Fill to 90 % and flush, rot the first shard-block of every fifth block (within every
/// layout's tolerance: at most one per row), then overwrite until the cleaner has moved many
/// blocks, with `options` while overwriting; reopened with the correct options, the volume
/// must read back exactly.
fn rot_then_clean(layout: &str, members: usize, options: &VolumeOptions) -> Result<u64, String> {
    let mut rig = Rig::new(layout, members, self::options());
    let span = rig.blocks() * 9 / 10;
    soak(&mut rig, span, 0, 1)?;
    for key in (0..span).step_by(5) {
        let (device, at) = rig.place_of(key);
        rig.members.mems[device]
            .write_at(at, &vec![0xA5u8; B])
            .unwrap();
    }
    rig.options = options.clone();
    rig.reopen();
    let mut rng = Lcg(99);
    let mut i = 0;
    while rig.volume().counters().relocated_blocks < span / 4 {
        let first = rng.next() % (span - 4);
        rig.write(first, 4).map_err(|e| format!("write {i}: {e}"))?;
        if i % 32 == 31 {
            rig.flush().map_err(|e| format!("flush {i}: {e}"))?;
        }
        i += 1;
    }
    rig.flush().map_err(|e| format!("last flush: {e}"))?;
    let bad = rig.volume().counters().bad_shard_blocks;
    rig.options = self::options();
    rig.reopen();
    rig.exact(span)?;
    Ok(bad)
}

#[test]
fn the_cleaner_copies_verified_bytes_and_never_rot() {
    for (layout, members) in LAYOUTS {
        let bad =
            rot_then_clean(layout, members, &options()).unwrap_or_else(|e| panic!("{layout}: {e}"));
        assert!(bad > 0, "{layout}: the cleaner met no rotten block");
    }
    let planted = VolumeOptions {
        skip_block_verification: true,
        ..options()
    };
    let caught = rot_then_clean("rs:4+2", 6, &planted);
    eprintln!("caught: {caught:?}");
    assert!(
        caught.is_err(),
        "a cleaner that copies blocks without verifying them went unnoticed"
    );
}

/// Bring a volume to the point where the next write runs the cleaner; the write's index.
fn until_cleaning(rig: &mut Rig, span: u64, rng: &mut Lcg) -> usize {
    soak(rig, span, 0, 1).unwrap();
    let mut i = 0;
    loop {
        let relocated = rig.volume().counters().relocated_blocks;
        let count = 1 + rng.next() % 8;
        let first = rng.next() % (span - count + 1);
        rig.write(first, count).unwrap();
        rig.flush().unwrap();
        if rig.volume().counters().relocated_blocks > relocated {
            return i;
        }
        i += 1;
    }
}

#[test]
fn a_power_cut_at_every_operation_of_a_cleaning_write_keeps_every_flushed_block() {
    for (layout, members) in [("rs:4+2", 6), ("mirror:2", 2)] {
        // The write that first cleans, found on a run without cuts (the runs are
        // deterministic), then repeated with the power cut after 1, 2, … operations of it
        // and its flush, until one completes.
        let mut probe = Rig::new(layout, members, options());
        let span = probe.blocks() * 9 / 10;
        let at = until_cleaning(&mut probe, span, &mut Lcg(7));
        let mut cut = 1i64;
        loop {
            let mut rig = Rig::new(layout, members, options());
            let mut rng = Lcg(7);
            soak(&mut rig, span, 0, 1).unwrap();
            for _ in 0..at {
                let count = 1 + rng.next() % 8;
                let first = rng.next() % (span - count + 1);
                rig.write(first, count).unwrap();
                rig.flush().unwrap();
            }
            let relocated = rig.volume().counters().relocated_blocks;
            rig.members.cut_after(cut);
            let count = 1 + rng.next() % 8;
            let first = rng.next() % (span - count + 1);
            // A flush after the cut is not acknowledged: the writes it made were dropped.
            let devices = rig.members.devices.clone();
            let outcome = rig
                .write(first, count)
                .and_then(|()| rig.volume().flush(&devices).map(|_| ()));
            if !rig.members.power_was_cut() {
                outcome.unwrap();
                assert!(
                    rig.volume().counters().relocated_blocks > relocated,
                    "{layout}: the write did not clean"
                );
                break;
            }
            rig.crash_and_settle(cut as u64)
                .unwrap_or_else(|e| panic!("{layout} cut after {cut} operations: {e}"));
            // The volume goes on: more overwrites (cleaning again), read back exactly.
            for _ in 0..64 {
                let count = 1 + rng.next() % 8;
                let first = rng.next() % (span - count + 1);
                rig.write(first, count)
                    .unwrap_or_else(|e| panic!("{layout} cut {cut}, after the crash: {e}"));
            }
            rig.flush().unwrap();
            rig.exact(span)
                .unwrap_or_else(|e| panic!("{layout} cut {cut}, after the crash: {e}"));
            cut += 1;
        }
        assert!(
            cut > 10,
            "{layout}: the cleaning write had only {cut} operations"
        );
        eprintln!("{layout}: cut at each of {cut} operations");
    }
}

/// Looking never writes: `devices` that refuse writes serve a read of a volume whose
/// cleaner has run.
#[test]
fn reading_a_cleaned_volume_writes_nothing() {
    let mut rig = Rig::new("rs:4+2", 6, options());
    let span = rig.blocks() * 9 / 10;
    soak(&mut rig, span, span as usize, 3).unwrap();
    assert!(rig.volume().counters().relocated_blocks > 0);
    let before = rig.members.images();
    let devices: Vec<Option<SharedDevice>> = rig.members.devices.clone();
    let read_only = VolumeOptions {
        map: MapOptions {
            read_only: true,
            ..options().map
        },
        ..options()
    };
    rig.volume = None;
    let volume = Volume::open(&devices, POOL, &rig.geometry, TIMELINE, &read_only).unwrap();
    let mut all = vec![0u8; span as usize * B];
    volume.read(&devices, 0, &mut all).unwrap();
    assert!(rig.members.images() == before, "a read changed a member");
}

/// A sync must not close a data segment whose last slot still has rows to hand out (a closed
/// segment may be cleaned, and once nothing references it, freed and taken for something
/// else): it stays open, is no victim, and is closed once its last slot is used up. Without
/// the first fix the rows went on into the closed segment (the cleaner found blocks written
/// into its victim while emptying it); ending the slot at each sync instead wasted its rows,
/// and with one slot per segment writes were refused at 95 % full (review finding 2).
#[test]
fn a_sync_keeps_a_full_segment_open_until_its_last_slot_is_used_up() {
    let mut rig = Rig::new("rs:4+2", 6, options());
    let mut key = 0;
    while rig.volume().map().segments().open_data_full().is_none() {
        rig.write(key, 1).unwrap();
        key += 1;
    }
    let full = rig.volume().map().segments().open_data_full().unwrap();
    let shape = rig.volume().map().segments().shape();
    let devices = rig.members.devices.clone();
    let mut in_full = 0;
    // Three blocks more: the last slot's other rows (4 rows per slot here) and the syncs
    // between them keep the segment open.
    for _ in 0..3 {
        rig.volume().sync(&devices).unwrap();
        let table = rig.volume().map().segments();
        assert_eq!(table.open_data_full(), Some(full), "closed with rows left");
        assert!(
            table.data_victim(&Default::default(), 1).map(|(s, _)| s) != Some(full),
            "an open segment was offered as a victim"
        );
        rig.write(key, 1).unwrap();
        let pointer = rig.volume().map().get(&devices, key).unwrap();
        if shape.of_block(pointer.address().unwrap()) == full {
            in_full += 1;
        }
        key += 1;
    }
    assert_eq!(in_full, 3, "the rows of the last slot were not used");
    // The slot is used up: the next write opens another segment, and a sync closes this one.
    rig.write(key, 1).unwrap();
    let pointer = rig.volume().map().get(&devices, key).unwrap();
    assert_ne!(shape.of_block(pointer.address().unwrap()), full);
    rig.volume().sync(&devices).unwrap();
    assert_ne!(rig.volume().map().segments().open_data_full(), Some(full));
    rig.flush().unwrap();
    rig.exact(key + 1).unwrap();
}

/// Review finding 2: with one slot per segment (legal, not a default), writes at 95 % full
/// were refused.
#[test]
fn one_slot_segments_at_95_percent_never_run_out() {
    let mut options = options();
    options.map.segment_slots = 1;
    let mut rig = Rig::new("rs:4+2", 6, options);
    let span = rig.blocks() * 95 / 100;
    soak(&mut rig, span, 4 * span as usize, 0x5f).unwrap();
}

/// The segment block `key` lives in.
fn segment_of(rig: &Rig, key: u64) -> Option<u64> {
    let volume = rig.volume.as_ref().unwrap();
    let pointer = volume.map().get(&rig.members.devices, key).unwrap();
    pointer
        .address()
        .map(|pbn| volume.map().segments().shape().of_block(pbn))
}

/// Review of step 7, finding 3: a block lost beyond the tolerance in the emptiest segment
/// (the greedy victim) made every later write that needed room fail, the overwrite of the
/// lost block itself included. Now the cleaner moves the rest, leaves that block (its reads
/// keep naming it) and chooses other victims.
#[test]
fn a_lost_block_in_the_victim_costs_that_block_and_nothing_else() {
    let mut rig = Rig::new("mirror:2", 2, options());
    let span = rig.blocks() * 9 / 10;
    soak(&mut rig, span, 0, 1).unwrap();
    let devices = rig.members.devices.clone();
    rig.volume().sync(&devices).unwrap();
    let victim = segment_of(&rig, span / 2).unwrap();
    let inside: Vec<u64> = (0..span)
        .filter(|key| segment_of(&rig, *key) == Some(victim))
        .collect();
    let lost = inside[0];
    // Every copy of `lost` rots; the other blocks of its segment are overwritten, so the
    // segment is the emptiest.
    let pointer = rig.volume().map().get(&devices, lost).unwrap();
    let pbn = pointer.address().unwrap();
    let rows = rig.geometry.chunk_bytes / B as u64;
    let k = rig.geometry.data_chunks() as u64;
    let (slot, row, chunk) = (pbn / (k * rows), (pbn % (k * rows)) / k, pbn % k);
    for shard in (0..rig.geometry.width())
        .filter(|s| rig.geometry.shard_data_chunk(ShardIndex(*s)) == Some(chunk as usize))
    {
        let (device, at) = rig.geometry.shard_location(SlotId(slot), ShardIndex(shard));
        rig.members.mems[device.0]
            .write_at(at + row * B as u64, &vec![0xA5u8; B])
            .unwrap();
    }
    for key in &inside[1..] {
        rig.write(*key, 1).unwrap();
    }
    rig.flush().unwrap();
    let mut rng = Lcg(5);
    for i in 0..3 * span {
        let key = rng.next() % span;
        if key == lost {
            continue;
        }
        rig.write(key, 1)
            .unwrap_or_else(|e| panic!("write {i} of block {key}: {e}"));
        if i % 32 == 31 {
            rig.flush().unwrap();
        }
    }
    rig.flush().unwrap();
    let counters = rig.volume().counters();
    assert!(counters.cleaned_segments > 0, "{counters:?}");
    // The lost block reads as lost, naming it; every other block reads its last version.
    let mut one = vec![0u8; B];
    let outcome = rig
        .volume
        .as_ref()
        .unwrap()
        .read(&devices, lost * B as u64, &mut one);
    assert!(
        matches!(outcome, Err(stripestore::Error::UnrecoverableBlock { .. })),
        "{outcome:?}"
    );
    for key in (0..span).filter(|key| *key != lost) {
        rig.volume
            .as_ref()
            .unwrap()
            .read(&devices, key * B as u64, &mut one)
            .unwrap();
        assert!(one == pattern(key, rig.newest[key as usize]), "block {key}");
    }
    // Overwriting the lost block gives it back.
    rig.write(lost, 1).unwrap();
    rig.flush().unwrap();
    rig.exact(span).unwrap();
}

/// Review of step 7, finding 4: after a reopen, free-pending segments whose content is not
/// recorded counted as parked metadata, lowering the floors for the same durable state. They
/// now count as data: the floors after a reopen are never lower than before it.
#[test]
fn a_reopen_never_lowers_the_floors_data_and_the_cleaner_must_leave() {
    let mut rig = Rig::new("rs:4+2", 6, options());
    let span = rig.blocks() * 9 / 10;
    soak(&mut rig, span, 0, 1).unwrap();
    let devices = rig.members.devices.clone();
    let mut rng = Lcg(11);
    for _ in 0..20_000 {
        let count = 1 + rng.next() % 8;
        let first = rng.next() % (span - count + 1);
        rig.write(first, count).unwrap();
        rig.flush().unwrap();
        if rig.volume().map().segments().pending_data_segments() > 0 {
            break;
        }
    }
    rig.volume().sync(&devices).unwrap();
    let floors = |rig: &mut Rig| {
        let table = rig.volume().map().segments();
        (
            table.pending_segments(),
            table.data_floor(),
            table.cleaner_floor(),
        )
    };
    let before = floors(&mut rig);
    rig.reopen();
    let after = floors(&mut rig);
    assert_eq!(before.0, after.0, "the same segments wait for release");
    assert!(
        after.1 >= before.1 && after.2 >= before.2,
        "(pending, data floor, cleaner floor) before {before:?}, after {after:?}"
    );
}

/// Review of step 7, finding 1: metadata segments freed by the newest sync come back only
/// after two more syncs, so they must not stand in for the next sync's pages. A sync that
/// frees `2 × S_sync` segments at once, then a cleaner that takes all its floor allows: the
/// next two syncs still find the segments they need.
#[test]
fn segments_the_newest_sync_freed_do_not_stand_in_for_the_next_syncs() {
    use stripestore::meta::{ReleaseRule, SegmentShape, SegmentTable};
    let layout: Layout = "rs:4+2".parse().unwrap();
    let geometry = Geometry::new_v4(layout, 6, 16384, 32 << 20, 4, 16384).unwrap();
    let shape = SegmentShape::new(&geometry, 4).unwrap();
    let per = shape.pages_per_segment;
    let pps = geometry.pages_per_slot();
    let s = 10u64;
    let mut table = SegmentTable::new(shape, ReleaseRule::AfterTwoSyncs);
    table.set_reserve(3 * s + 1 + 4 + 8, 3 * s);
    // Sync 1 fills 2 × S_sync metadata segments; sync 2 drops all but one page of each;
    // sync 3 frees nothing; sync 4 moves the last page of each (its metadata cleaning): they
    // are all free-pending at once, back when uberblock 6 is durable.
    let mut pages = Vec::new();
    for _ in 0..2 * s * per {
        let mpn = table.page().unwrap();
        table.page_delta(mpn, 1);
        pages.push(mpn);
    }
    table.fold(1, pps).unwrap();
    table.durable(1);
    let last: Vec<u64> = pages.iter().copied().filter(|m| m % per == 0).collect();
    for mpn in pages.iter().filter(|m| *m % per != 0) {
        table.page_delta(*mpn, -1);
    }
    table.fold(2, pps).unwrap();
    table.durable(2);
    table.fold(3, pps).unwrap();
    table.durable(3);
    for mpn in &last {
        let new = table.page().unwrap();
        table.page_delta(new, 1);
        table.page_delta(*mpn, -1);
    }
    table.fold(4, pps).unwrap();
    table.durable(4);
    while table.data_slot_above(table.cleaner_floor()).is_some() {}
    // Syncs 5 and 6 each write S_sync − 1 segments of pages.
    for txg in 5..=6 {
        for _ in 0..(s - 1) * per {
            let mpn = table
                .page()
                .unwrap_or_else(|| panic!("sync {txg} found no free segment for its pages"));
            table.page_delta(mpn, 1);
        }
        table.fold(txg, pps).unwrap();
        table.durable(txg);
    }
}
