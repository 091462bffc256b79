//! The bodies of the fuzz targets in `fuzz/`, kept in the library so that `cargo test` can
//! replay the committed seed inputs (`fuzz/seeds/<target>/`) on the stable toolchain, and the
//! fuzzers and the tests check exactly the same properties.
//!
//! Each function takes arbitrary bytes and panics only when a property is broken (which is
//! what a fuzzer reports as a crash). Not part of the stable API.

use crate::codec::Codec;
use crate::device::{MemDevice, SharedDevice};
use crate::format::{
    decode_checkpoint, decode_log_record, encode_checkpoint, encode_log_record, CheckpointHeader,
    MapEntry, PoolUuid, StripeMap, Superblock,
};
use crate::geometry::{Geometry, Layout};
use crate::types::{Generation, SlotId};
use crate::{CreateOptions, Error, OpenOptions, Pool};
use std::sync::{Arc, OnceLock};

/// Reads little-endian integers from the fuzz input, yielding zeros once it runs out.
struct Input<'a> {
    bytes: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((first, rest)) => {
                self.bytes = rest;
                *first
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Target `format_decode`: arbitrary bytes as a superblock, a checkpoint and a log record must
/// never panic the decoders; whatever decodes re-encodes to the same thing. Then a map built
/// from the input is encoded, one input-chosen bit of the encoding is flipped, and the decoders
/// must either refuse it or return exactly the original map (a flip in padding): a corrupt
/// record is never accepted.
pub fn format_decode(data: &[u8]) {
    if let Ok(superblock) = Superblock::decode(data) {
        if let Ok(bytes) = superblock.encode() {
            assert_eq!(Superblock::decode(&bytes).ok(), Some(superblock));
        }
    }
    // The same input as the JSON body of a superblock, past the header's crc (which random
    // bytes almost never pass): the member records (domains, the away state, a resync's
    // boundary) and the map parameters' gates are decoded from arbitrary JSON too, and what
    // decodes re-encodes to the same thing.
    if let Ok(superblock) = serde_json::from_slice::<Superblock>(data) {
        if let Ok(bytes) = superblock.encode() {
            assert_eq!(Superblock::decode(&bytes).ok(), Some(superblock));
        }
    }
    let pool = PoolUuid([7; 16]);
    let _ = decode_checkpoint(pool, data, &mut StripeMap::new(64, 6));
    let sequence = data.get(24..32).map_or(0, |b| {
        u64::from_le_bytes(<[u8; 8]>::try_from(b).unwrap_or([0; 8]))
    });
    let _ = decode_log_record(pool, sequence, data, &mut StripeMap::new(64, 6));

    // Structured half: a map from the input, encoded, corrupted by one bit.
    let mut input = Input { bytes: data };
    let width = 1 + usize::from(input.byte() % 8);
    let stripes = 1 + u64::from(input.byte() % 48);
    let mut map = StripeMap::new(stripes, width);
    let mut touched = Vec::new();
    while !input.is_empty() && touched.len() < 64 {
        let stripe = u64::from(input.byte()) % stripes;
        let entry = MapEntry {
            slot: Some(SlotId(u64::from(input.u32()))),
            generation: Generation(input.u64()),
            crcs: (0..width).map(|_| input.u32()).collect(),
        };
        map.set(crate::types::StripeId(stripe), &entry);
        touched.push(stripe);
    }
    let flip = u64::from(input.u32());
    let header = CheckpointHeader {
        sequence: 3,
        next_generation: 99,
    };

    let checkpoint = encode_checkpoint(pool, header, &map);
    let mut decoded = StripeMap::new(stripes, width);
    assert_eq!(
        decode_checkpoint(pool, &checkpoint, &mut decoded),
        Ok(header)
    );
    assert_eq!(decoded, map, "checkpoint round trip");
    let mut bad = checkpoint.clone();
    flip_bit(&mut bad, flip);
    let mut decoded = StripeMap::new(stripes, width);
    if let Ok(found) = decode_checkpoint(pool, &bad, &mut decoded) {
        assert_eq!(found, header, "a corrupt checkpoint header was accepted");
        assert_eq!(decoded, map, "a corrupt checkpoint body was accepted");
    }

    touched.sort_unstable();
    touched.dedup();
    let touched: Vec<crate::types::StripeId> =
        touched.into_iter().map(crate::types::StripeId).collect();
    let record = encode_log_record(pool, 5, 77, &map, &touched);
    let mut replayed = StripeMap::new(stripes, width);
    let decoded = decode_log_record(pool, 5, &record, &mut replayed);
    assert!(
        matches!(decoded, Ok(Some(r)) if r.next_generation == 77 && r.padded_bytes == record.len() as u64)
    );
    assert_eq!(replayed, map, "log record round trip");
    let mut bad = record.clone();
    flip_bit(&mut bad, flip);
    let mut replayed = StripeMap::new(stripes, width);
    if let Ok(Some(found)) = decode_log_record(pool, 5, &bad, &mut replayed) {
        assert_eq!(
            found.next_generation, 77,
            "a corrupt log header was accepted"
        );
        assert_eq!(replayed, map, "a corrupt log record was accepted");
    }
}

fn flip_bit(bytes: &mut [u8], bit: u64) {
    let len = bytes.len() as u64;
    if len > 0 {
        let at = (bit / 8) % len;
        bytes[usize::try_from(at).unwrap_or(0)] ^= 1 << (bit % 8);
    }
}

/// Target `codec_roundtrip`: a layout, a chunk size and data from the input; any erasure of at
/// most the layout's tolerance (erased shards filled with garbage) must reconstruct to exactly
/// the encoded shards, and one erasure more than the code can bear must be refused.
pub fn codec_roundtrip(data: &[u8]) {
    let mut input = Input { bytes: data };
    let pick = input.byte();
    let shape = input.byte();
    let (layout, devices) = match pick % 3 {
        0 => {
            let data = 1 + usize::from(shape % 10);
            let parity = 1 + usize::from((shape / 10) % 4);
            (Layout::ReedSolomon { data, parity }, data + parity)
        }
        1 => {
            let copies = 2 + usize::from(shape % 3);
            (Layout::Mirror { copies }, copies)
        }
        _ => {
            let copies = 2 + usize::from(shape % 2);
            (
                Layout::Raid10 { copies },
                copies * (2 + usize::from((shape / 2) % 2)),
            )
        }
    };
    let Ok(codec) = Codec::new(layout, devices) else {
        return;
    };
    let chunk = 64 * (1 + usize::from(input.byte() % 8));
    let data_chunks = layout.data_chunks(devices);
    let fill = input.bytes.to_vec();
    let stripe: Vec<u8> = (0..data_chunks * chunk)
        .map(|i| fill.get(i % fill.len().max(1)).copied().unwrap_or(0) ^ (i as u8))
        .collect();
    let shards: Vec<Vec<u8>> = match layout {
        Layout::ReedSolomon { .. } => stripe
            .chunks(chunk)
            .map(<[u8]>::to_vec)
            .chain(codec.encode_parity(&stripe, chunk))
            .collect(),
        Layout::Mirror { copies } | Layout::Raid10 { copies } => (0..devices)
            .map(|shard| stripe[(shard / copies) * chunk..(shard / copies + 1) * chunk].to_vec())
            .collect(),
    };
    assert_eq!(shards.len(), layout.width(devices));

    // Erase up to `tolerance` shards chosen by the input.
    let tolerance = layout.tolerance();
    let mut present = vec![true; shards.len()];
    let erasures = usize::from(input.byte()) % (tolerance + 1);
    for _ in 0..erasures {
        let at = usize::from(input.byte()) % shards.len();
        present[at] = false;
    }
    let mut damaged = shards.clone();
    for (shard, ok) in damaged.iter_mut().zip(&present) {
        if !ok {
            shard
                .iter_mut()
                .for_each(|b| *b = b.wrapping_mul(31).wrapping_add(7));
        }
    }
    let mut flags = present.clone();
    assert!(
        codec.reconstruct(&mut damaged, &mut flags),
        "{layout}: reconstruction refused with {} erasures",
        present.iter().filter(|p| !**p).count()
    );
    assert_eq!(
        damaged, shards,
        "{layout}: reconstruction returned wrong bytes"
    );

    // One erasure too many: every copy of one chunk, or parity + 1 shards.
    let mut too_many = vec![true; shards.len()];
    match layout {
        Layout::ReedSolomon { parity, .. } => {
            let first = usize::from(input.byte()) % shards.len();
            for i in 0..=parity {
                too_many[(first + i) % shards.len()] = false;
            }
        }
        Layout::Mirror { copies } | Layout::Raid10 { copies } => {
            let group = usize::from(input.byte()) % data_chunks;
            too_many[group * copies..(group + 1) * copies].fill(false);
        }
    }
    let mut lost = shards.clone();
    assert!(
        !codec.reconstruct(&mut lost, &mut too_many),
        "{layout}: reconstruction claimed success beyond the tolerance"
    );
}

/// A small pool after a few commits: the device images, and the volume after each commit.
struct LogFixture {
    geometry: Geometry,
    images: Vec<Vec<u8>>,
    /// The volume after create (all zeros) and after each flush, in order.
    snapshots: Vec<Vec<u8>>,
}

const FIXTURE_DEVICES: usize = 3;
const FIXTURE_DEVICE_BYTES: u64 = 512 * 1024;

fn log_fixture() -> Option<&'static LogFixture> {
    static FIXTURE: OnceLock<Option<LogFixture>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            let mems: Vec<Arc<MemDevice>> = (0..FIXTURE_DEVICES)
                .map(|i| Arc::new(MemDevice::new(format!("fuzz{i}"), FIXTURE_DEVICE_BYTES)))
                .collect();
            let mut options = CreateOptions::new(Layout::ReedSolomon { data: 2, parity: 1 });
            // Two 4 KiB checksum blocks per chunk: map entries carry several crcs per shard.
            options.chunk_bytes = 8192;
            options.checksum_bytes = 4096;
            // Version 3's map log, which this fixture replays.
            // A version-3 pool (its own engine): the test machinery's switch.
            crate::testing::allow_format_3_writes(true);
            options.format = crate::pool::FormatVersion::V3;
            options.open.background_rebuild = false;
            let shared: Vec<SharedDevice> =
                mems.iter().map(|m| Arc::clone(m) as SharedDevice).collect();
            let pool = Pool::create(shared, vec![], &options).ok()?;
            let size = pool.size();
            let stripe = pool.geometry().stripe_data_bytes();
            let mut volume = vec![0u8; usize::try_from(size).ok()?];
            let mut snapshots = vec![volume.clone()];
            for commit in 0..6u64 {
                for k in 0..3u64 {
                    let offset = ((commit * 7 + k * 5) % (size / stripe)) * stripe + commit * 100;
                    let len = usize::try_from(stripe).ok()? + 300;
                    let len = len.min(usize::try_from(size - offset).ok()?);
                    let bytes: Vec<u8> = (0..len)
                        .map(|i| (i as u64 * 13 + commit * 31 + k) as u8)
                        .collect();
                    pool.write_at(offset, &bytes).ok()?;
                    let at = usize::try_from(offset).ok()?;
                    volume[at..at + len].copy_from_slice(&bytes);
                }
                pool.flush().ok()?;
                snapshots.push(volume.clone());
            }
            let geometry = pool.geometry().clone();
            pool.simulate_power_loss();
            Some(LogFixture {
                geometry,
                images: mems.iter().map(|m| m.image()).collect(),
                snapshots,
            })
        })
        .as_ref()
}

/// Target `log_replay`: the stripe-map log and checkpoints of a real pool, overwritten or
/// XOR-corrupted by the input on one device or on all of them, then the pool is opened (which
/// replays the log). Opening must not panic. Corruption on one device must not change anything
/// (the others hold the map). Corruption everywhere may roll the pool back to an earlier commit
/// or fail cleanly, but every stripe that reads must match one and the same commit: a corrupt
/// record is never applied.
///
/// # Panics
/// When a property is broken, or the fixture pool cannot be built.
pub fn log_replay(data: &[u8]) {
    let Some(fixture) = log_fixture() else {
        panic!("the log replay fixture pool could not be built");
    };
    let geometry = &fixture.geometry;
    let mut input = Input { bytes: data };
    let control = input.byte();
    let target = usize::from(control % 4); // 0..3: one device; 3: all of them
    let overwrite = control & 4 != 0;
    let areas = [
        (geometry.log_offset, geometry.log_bytes),
        (geometry.checkpoint_offsets[0], geometry.checkpoint_bytes),
        (geometry.checkpoint_offsets[1], geometry.checkpoint_bytes),
    ];
    let (area_offset, area_bytes) = areas[usize::from((control >> 3) % 3)];
    let mut images = fixture.images.clone();
    let start = u64::from(input.u16()) % area_bytes;
    let edits: Vec<(u64, u8)> = if overwrite {
        let mut edits = Vec::new();
        let mut at = start;
        while !input.is_empty() && at < area_bytes {
            edits.push((at, input.byte()));
            at += 1;
        }
        edits
    } else {
        let mut edits = Vec::new();
        while !input.is_empty() {
            let at = (start + u64::from(input.u16())) % area_bytes;
            edits.push((at, input.byte().max(1)));
        }
        edits
    };
    for (index, image) in images.iter_mut().enumerate() {
        if target != FIXTURE_DEVICES && index != target {
            continue;
        }
        for (at, value) in &edits {
            let Ok(at) = usize::try_from(area_offset + at) else {
                continue;
            };
            if let Some(byte) = image.get_mut(at) {
                *byte = if overwrite { *value } else { *byte ^ *value };
            }
        }
    }
    let devices: Vec<SharedDevice> = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let mem = MemDevice::new(format!("fuzz{i}"), FIXTURE_DEVICE_BYTES);
            mem.poke(0, image);
            Arc::new(mem) as SharedDevice
        })
        .collect();
    let options = OpenOptions {
        background_rebuild: false,
        ..OpenOptions::default()
    };
    let pool = match Pool::open(devices, &options) {
        Ok(pool) => pool,
        Err(err) => {
            assert!(
                target == FIXTURE_DEVICES,
                "corrupt metadata on one device only made open fail: {err}"
            );
            return;
        }
    };
    let stripe = usize::try_from(geometry.stripe_data_bytes()).unwrap_or(1);
    let final_state = fixture.snapshots.len() - 1;
    // Commits every readable stripe so far agrees with.
    let mut candidates: Vec<usize> = if target == FIXTURE_DEVICES {
        (0..fixture.snapshots.len()).collect()
    } else {
        vec![final_state]
    };
    let mut buf = vec![0u8; stripe];
    for (index, start) in (0..fixture.snapshots[0].len()).step_by(stripe).enumerate() {
        match pool.read_at(start as u64, &mut buf) {
            Ok(()) => {
                candidates.retain(|k| fixture.snapshots[*k][start..start + stripe] == buf[..]);
                assert!(
                    !candidates.is_empty(),
                    "stripe {index} reads as no committed version (corrupt metadata applied)"
                );
            }
            Err(Error::Unrecoverable { .. }) if target == FIXTURE_DEVICES => {}
            Err(err) => panic!("stripe {index}: unexpected error {err}"),
        }
    }
    pool.simulate_power_loss();
}

/// Target `meta_page` (format version 4): arbitrary bytes given to every version-4 decoder must
/// never panic, and whatever decodes must re-encode to exactly the bytes it came from (one
/// encoding per value: a decoder that accepts a second spelling accepts damage). Then a pointer
/// page, a slot record and a log record are built from the input, one input-chosen bit of each is
/// flipped, and the flipped bytes must fail verification or decoding: damage is never accepted.
pub fn meta_page(data: &[u8]) {
    use crate::format::v4::{
        page_checksum, seal_leaf, verify_leaf, verify_page, verify_sector, BlockPointer,
        ForwardRecord, LeafFormat, LogEntry, LogRecord, PageSeed, PointerPage, SlotRecord,
        SlotShape, SutRecord, Tree, Uberblock, PAGE_BYTES, SECTORS_PER_LEAF, SECTOR_BYTES,
        UBERBLOCK_BYTES,
    };
    const POOL: [u8; 16] = [0x44; 16];
    const RS42: SlotShape = SlotShape {
        data_chunks: 4,
        width: 6,
        rows: 4,
        copies: 1,
    };

    // 1. Raw bytes, padded with zeros to each structure's size.
    let padded = |len: usize| {
        let mut bytes = data.to_vec();
        bytes.resize(len.max(data.len()), 0);
        bytes.truncate(len);
        bytes
    };
    if let Ok(pointer) = BlockPointer::decode(data) {
        assert_eq!(&pointer.encode()[..], &data[..16], "pointer re-encodes");
    }
    let page = padded(PAGE_BYTES);
    for level in 1..=4 {
        if let Ok(decoded) = PointerPage::decode(&page, level) {
            assert_eq!(decoded.encode(), page, "pointer page re-encodes");
        }
    }
    // A sectored leaf (docs/FORMAT.md V4.17): its records re-encode to the same bytes (the
    // four sector crcs aside, which only a seal with the leaf's seed writes).
    if let Ok(entries) = LeafFormat::Sectored.entries(&page) {
        let mut again = LeafFormat::Sectored.empty_leaf();
        for (index, pointer) in entries.iter().enumerate() {
            LeafFormat::Sectored.set_entry(&mut again, index, pointer);
        }
        for (sector, (a, b)) in again
            .chunks(SECTOR_BYTES)
            .zip(page.chunks(SECTOR_BYTES))
            .enumerate()
        {
            assert_eq!(
                a[..SECTOR_BYTES - 4],
                b[..SECTOR_BYTES - 4],
                "sector {sector} of a sectored leaf re-encodes"
            );
        }
    }
    if let Ok(records) = SutRecord::decode_page(&page, 64) {
        assert_eq!(
            SutRecord::encode_page(&records),
            page,
            "SUT page re-encodes"
        );
    }
    // rs, and raid10:2 on four members (copies of a chunk on several shards: which crcs a
    // narrow row may carry depends on `copies`).
    for shape in [
        RS42,
        SlotShape {
            data_chunks: 2,
            width: 4,
            rows: 4,
            copies: 2,
        },
    ] {
        let record = padded(shape.record_bytes());
        if let Ok(Some(slot)) = SlotRecord::decode(shape, &record) {
            assert_eq!(slot.encode(), record, "slot record re-encodes");
        }
    }
    let forward = padded(128);
    if let Ok(decoded) = ForwardRecord::decode(&forward) {
        assert_eq!(
            &decoded.encode()[..],
            &forward[..],
            "forwarding record re-encodes"
        );
    }
    let recovery = padded(crate::format::v4::RECOVERY_RECORD_BYTES);
    if let Ok(Some(decoded)) = crate::format::v4::RecoveryRecord::decode(&recovery) {
        assert_eq!(
            &decoded.encode()[..],
            &recovery[..],
            "recovery-point record re-encodes"
        );
    }
    let uber = padded(UBERBLOCK_BYTES);
    if let Ok(decoded) = Uberblock::decode(&uber, POOL) {
        assert_eq!(decoded.encode(), uber, "uberblock re-encodes");
    }
    if let Ok((decoded, used)) = LogRecord::decode(data, POOL, 6) {
        assert_eq!(
            decoded.encode(6).ok().as_deref(),
            Some(&data[..used]),
            "record re-encodes"
        );
    }

    // 2. Structures built from the input, one bit flipped.
    let mut input = Input { bytes: data };
    let flip = input.u64();
    let mut leaf = PointerPage::empty(1);
    while !input.is_empty() {
        let index = usize::from(input.u16()) % 1024;
        let address = input.u64() % (1 << 40);
        let birth = 1 + input.u64() % (1 << 47);
        let pointer = match input.byte() % 3 {
            0 => BlockPointer::hole(0),
            1 => BlockPointer::zeroed(0, birth),
            _ if address < crate::format::v4::MAX_ADDRESS => {
                BlockPointer::written(address, birth, 0, input.u32())
            }
            _ => BlockPointer::hole(0),
        };
        leaf.set(index, pointer);
        if index % 7 == 0 {
            break;
        }
    }
    let bytes = leaf.encode();
    let seed = PageSeed {
        pool: POOL,
        mpn: 5,
        birth: 9,
        tree: Tree::Map,
        level: 1,
        first_key: 1024,
    };
    let parent = BlockPointer::written(5, 9, 1, page_checksum(&seed, &bytes));
    assert_eq!(verify_page(POOL, &parent, Tree::Map, 1024, &bytes), Ok(()));
    assert_eq!(PointerPage::decode(&bytes, 1).as_ref(), Ok(&leaf));
    let mut bad = bytes.clone();
    flip_bit(&mut bad, flip);
    assert!(
        verify_page(POOL, &parent, Tree::Map, 1024, &bad).is_err(),
        "a page with a flipped bit verified"
    );
    // The same leaf sectored and sealed: it decodes to the same entries, verifies whole and
    // by sector; with one bit flipped anywhere (a sector crc field included, which the
    // parent's crc reads as zero but the whole leaf's check reads too), the whole leaf fails,
    // and so does the sector holding it, alone.
    let mut sectored = LeafFormat::Sectored.empty_leaf();
    for (index, pointer) in leaf.pointers().iter().enumerate() {
        LeafFormat::Sectored.set_entry(&mut sectored, index, pointer);
    }
    let sealed_parent = BlockPointer::written(5, 9, 1, seal_leaf(&seed, &mut sectored));
    assert_eq!(
        LeafFormat::Sectored.entries(&sectored).as_deref(),
        Ok(leaf.pointers())
    );
    assert_eq!(
        verify_leaf(POOL, &sealed_parent, Tree::Map, 1024, &sectored),
        Ok(())
    );
    let mut bad = sectored.clone();
    flip_bit(&mut bad, flip);
    let flipped_sector = bad
        .chunks(SECTOR_BYTES)
        .zip(sectored.chunks(SECTOR_BYTES))
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    assert!(
        verify_leaf(POOL, &sealed_parent, Tree::Map, 1024, &bad).is_err(),
        "a sectored leaf with a flipped bit"
    );
    for sector in 0..SECTORS_PER_LEAF {
        let bytes = &bad[sector * SECTOR_BYTES..(sector + 1) * SECTOR_BYTES];
        assert_eq!(
            verify_sector(POOL, &sealed_parent, Tree::Map, 1024, sector, bytes).is_ok(),
            sector != flipped_sector,
            "sector {sector} of a leaf with a bit flipped in sector {flipped_sector}"
        );
    }

    let mut slot = SlotRecord::new(RS42);
    let rows = 1 + usize::from(input.byte()) % 4;
    for row in 0..rows {
        let n = 1 + usize::from(input.byte()) % 4;
        let owners: Vec<(Option<u64>, bool)> = (0..n)
            .map(|_| (Some(input.u32().into()), input.byte() & 1 == 1))
            .collect();
        let crcs: Vec<u32> = (0..6).map(|_| input.u32()).collect();
        let birth = 1 + u64::from(input.u32());
        assert!(slot.add_row(row, birth, &owners, &crcs).is_ok());
    }
    let encoded = slot.encode();
    assert_eq!(SlotRecord::decode(RS42, &encoded), Ok(Some(slot.clone())));

    let entries = vec![
        LogEntry::FreshRun {
            first: input.u32().into(),
            count: 1 + u32::from(input.u16()),
            first_new: input.u32().into(),
        },
        LogEntry::Row {
            slot: input.u32().into(),
            row: input.u16() % 4,
            birth: 1 + u64::from(input.u32()),
            owners: vec![input.u32().into(); 1 + usize::from(input.byte() % 4)],
            crcs: (0..6).map(|_| input.u32()).collect(),
        },
    ];
    let record = LogRecord {
        pool: POOL,
        sequence: input.u64(),
        prev: input.u64(),
        timeline: input.u64(),
        half: input.byte() & 1,
        entries,
    };
    let Ok(encoded) = record.encode(6) else {
        panic!("a valid record did not encode");
    };
    assert_eq!(
        LogRecord::decode(&encoded, POOL, 6),
        Ok((record, encoded.len()))
    );
    let used = 64
        + crate::format::v4::LogEntry::encoded_len(&LogEntry::FreshRun {
            first: 0,
            count: 1,
            first_new: 0,
        });
    let mut bad = encoded.clone();
    // Flip a bit inside the header or the entries (not the zero padding after them, which a
    // decoder also refuses, checked by the unit tests).
    let span = (used + 80) as u64 * 8;
    flip_bit(&mut bad[..(used + 80).min(encoded.len())], flip % span);
    assert!(
        LogRecord::decode(&bad, POOL, 6).is_err(),
        "a record with a flipped bit decoded"
    );
    held_sectors(data);
}

/// Part of `meta_page`: a sector as the page cache holds it (docs/FORMAT.md V4.17a) answers
/// every record exactly as the sector it came from, in whichever form it is held; and bytes
/// that are no held form are never read as a pointer by panicking.
fn held_sectors(data: &[u8]) {
    use crate::format::v4::{sector_entry, BlockPointer, RECORDS_PER_SECTOR, SECTOR_BYTES};
    use crate::meta::held;
    let check = |whole: Vec<u8>| {
        let held_form = held::hold(whole.clone());
        for index in 0..RECORDS_PER_SECTOR {
            assert_eq!(
                held::entry(&held_form, index),
                sector_entry(&whole[..SECTOR_BYTES], index),
                "record {index} of a held sector of {} bytes",
                held_form.len()
            );
        }
    };
    // The input's own bytes as a sector (rarely compact), and as a held form.
    let mut raw = data.to_vec();
    raw.resize(SECTOR_BYTES + BlockPointer::BYTES, 0);
    check(raw);
    for index in [0, 1, 255, 256] {
        let _ = held::entry(data, index);
    }
    // A sector of runs the input draws: holes, zero blocks, written blocks counting up with
    // jumps, births that change inside runs.
    let mut input = Input { bytes: data };
    let mut records = Vec::with_capacity(RECORDS_PER_SECTOR);
    let mut address = u64::from(input.u32()) << u32::from(input.byte() % 9);
    let mut birth = 1 + u64::from(input.u16());
    while records.len() < RECORDS_PER_SECTOR {
        let shape = input.byte();
        let run = 1 + usize::from(input.byte() % 80);
        if shape & 0x10 != 0 {
            birth += 1;
        }
        for _ in 0..run.min(RECORDS_PER_SECTOR - records.len()) {
            records.push(match shape % 3 {
                0 => BlockPointer::hole(0),
                1 => BlockPointer::zeroed(0, birth),
                _ => {
                    address = (address + 1) % crate::format::v4::MAX_ADDRESS;
                    BlockPointer::written(address, birth, 0, input.u32())
                }
            });
        }
        address += u64::from(shape >> 6);
    }
    let mut leaf = crate::format::v4::LeafFormat::Sectored.empty_leaf();
    for (index, pointer) in records.iter().enumerate() {
        crate::format::v4::LeafFormat::Sectored.set_entry(&mut leaf, index, pointer);
    }
    let mut whole = leaf[..SECTOR_BYTES].to_vec();
    whole.extend_from_slice(&BlockPointer::written(3, 4, 1, 5).encode());
    check(whole);
}

/// Members of the `meta_recovery` fixture (rs:4+2) and their size.
const META_MEMBERS: usize = 6;
const META_DEVICE_BYTES: u64 = 4 << 20;

/// A format-version-4 map with history: member images after the last commit, and the map
/// after every commit and sync (keys → pointers), oldest first.
struct MetaFixture {
    geometry: Geometry,
    options: crate::meta::MapOptions,
    images: Vec<Vec<u8>>,
    states: Vec<std::collections::BTreeMap<u64, crate::format::v4::BlockPointer>>,
    pages: std::ops::Range<u64>,
    /// Records after the newest sync (replayed by every open).
    logged: usize,
}

const META_POOL: [u8; 16] = [0x3c; 16];
const META_TIMELINE: u64 = 0x00c0_ffee;

fn meta_fixture() -> Option<&'static MetaFixture> {
    static FIXTURE: OnceLock<Option<MetaFixture>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            let layout: Layout = "rs:4+2".parse().ok()?;
            let geometry =
                Geometry::new_v4(layout, META_MEMBERS, 16384, META_DEVICE_BYTES, 4, 16384).ok()?;
            // The first six segments, where the metadata segments are (taken lowest first).
            let pages = 0..48;
            let options = crate::meta::MapOptions {
                depth: 2,
                cache_bytes: 32 * 16384,
                segment_slots: 4,
                record_max: Some(4096),
                ..crate::meta::MapOptions::default()
            };
            let mems: Vec<Arc<MemDevice>> = (0..META_MEMBERS)
                .map(|i| Arc::new(MemDevice::new(format!("meta{i}"), META_DEVICE_BYTES)))
                .collect();
            let devices: Vec<Option<SharedDevice>> = mems
                .iter()
                .map(|m| Some(Arc::clone(m) as SharedDevice))
                .collect();
            let mut map = crate::meta::MapStore::create(
                &devices,
                META_POOL,
                &geometry,
                META_TIMELINE,
                &options,
            )
            .ok()?;
            let mut writer = crate::testing::MetaWriter::new(&geometry);
            let mut state = std::collections::BTreeMap::new();
            let mut states = vec![state.clone()];
            // Nine rounds of three commits, keys spread over leaves, a sync after rounds 1, 4
            // and 7 (and whenever a record does not fit its half): the last round's commits
            // are only in the log.
            let mut logged = 0;
            for round in 0..9u64 {
                for commit in 0..3u64 {
                    let keys: Vec<u64> = (0..5u64)
                        .map(|i| (round * 37 + commit * 11 + i * 1031) % 20_000)
                        .collect();
                    for (key, pointer) in keys
                        .iter()
                        .zip(writer.write(&mut map, &devices, &keys).ok()?)
                    {
                        state.insert(*key, pointer);
                    }
                    if commit == 2 && round % 3 == 0 {
                        let key = round * 1031 % 20_000;
                        state.insert(key, map.trim(&devices, key).ok()?);
                    }
                    match map.commit(&devices).ok()? {
                        crate::meta::CommitReport::Logged { .. } => logged += 1,
                        _ => logged = 0,
                    }
                    states.push(state.clone());
                }
                if round % 3 == 1 {
                    map.sync(&devices).ok()?;
                    logged = 0;
                }
            }
            drop(map);
            if logged == 0 {
                return None;
            }
            Some(MetaFixture {
                geometry,
                options,
                images: mems.iter().map(|m| m.image()).collect(),
                states,
                pages,
                logged,
            })
        })
        .as_ref()
}

/// Target `meta_recovery` (format version 4): the uberblock rings, the log halves or the
/// metadata pages of a map with history overwritten or XOR-corrupted by the input on one member
/// or on every member, then the map is opened (which replays the log) and synced (which drains
/// the replay into the tree). Nothing may panic. Damage on one member changes nothing: the open
/// and the sync succeed and every key reads exactly as last committed. Damage on every member
/// may refuse the open, roll back to an earlier commit, or report a page lost, but every key
/// that reads must agree with one and the same committed state: a corrupt record, uberblock or
/// page is never applied; after the sync the usage table equals a recount of its trees.
///
/// # Panics
/// When a property is broken, or the fixture cannot be built.
pub fn meta_recovery(data: &[u8]) {
    let Some(fixture) = meta_fixture() else {
        panic!("the meta_recovery fixture map could not be built");
    };
    let geometry = &fixture.geometry;
    let mut input = Input { bytes: data };
    let control = input.byte();
    let target = usize::from(control % 8).min(META_MEMBERS); // 6, 7: every member
    let overwrite = control & 8 != 0;
    let rings = geometry.uberblock_rings();
    let ring_bytes = geometry.uberblock_slots * crate::geometry::UBERBLOCK_SLOT_BYTES;
    let halves = geometry.log_halves();
    let first_page = geometry
        .page_copies(fixture.pages.start)
        .and_then(|copies| copies.iter().map(|(_, offset)| *offset).min())
        .unwrap_or(geometry.data_offset);
    let areas = [
        (rings[0], ring_bytes),
        (rings[1], ring_bytes),
        (halves[0], geometry.log_half_bytes()),
        (halves[1], geometry.log_half_bytes()),
        (first_page, 16 * 16384),
    ];
    let (area_offset, area_bytes) = areas[usize::from((control >> 4) % 5)];
    let start = u64::from(input.u32()) % area_bytes;
    let mut edits: Vec<(u64, u8)> = Vec::new();
    if overwrite {
        let mut at = start;
        while !input.is_empty() && at < area_bytes {
            edits.push((at, input.byte()));
            at += 1;
        }
    } else {
        while !input.is_empty() {
            let at = (start + u64::from(input.u16()) * 4) % area_bytes;
            edits.push((at, input.byte().max(1)));
        }
    }
    let devices: Vec<Option<SharedDevice>> = fixture
        .images
        .iter()
        .enumerate()
        .map(|(index, image)| {
            let mem = MemDevice::new(format!("meta{index}"), META_DEVICE_BYTES);
            mem.poke(0, image);
            if target == META_MEMBERS || index == target {
                for (at, value) in &edits {
                    let at = area_offset + at;
                    let byte = if overwrite {
                        *value
                    } else {
                        mem.peek(at, 1)[0] ^ *value
                    };
                    mem.poke(at, &[byte]);
                }
            }
            Some(Arc::new(mem) as SharedDevice)
        })
        .collect();
    let everywhere = target == META_MEMBERS;
    let opened = crate::meta::MapStore::open(
        &devices,
        META_POOL,
        geometry,
        META_TIMELINE,
        &fixture.options,
    );
    let mut map = match opened {
        Ok(map) => map,
        Err(err) => {
            assert!(
                everywhere,
                "damage on member {target} only made open fail: {err}"
            );
            return;
        }
    };
    let last = fixture.states.len() - 1;
    let keys: std::collections::BTreeSet<u64> = fixture
        .states
        .iter()
        .flat_map(|state| state.keys().copied())
        .collect();
    let check = |map: &crate::meta::MapStore, when: &str| {
        let mut candidates: Vec<usize> = if everywhere {
            (0..fixture.states.len()).collect()
        } else {
            vec![last]
        };
        for key in &keys {
            match map.get(&devices, *key) {
                Ok(found) => {
                    candidates.retain(|k| {
                        fixture.states[*k]
                            .get(key)
                            .copied()
                            .unwrap_or(crate::format::v4::BlockPointer::hole(0))
                            == found
                    });
                    assert!(
                        !candidates.is_empty(),
                        "{when}: key {key} reads {found:?}, in no committed state"
                    );
                }
                Err(Error::MetadataLost { .. }) if everywhere => {}
                Err(err) => panic!("{when}: key {key}: unexpected error {err}"),
            }
        }
    };
    assert!(
        everywhere || map.open_report().records_replayed == fixture.logged,
        "damage on member {target} only lost log records: {:?}",
        map.open_report()
    );
    check(&map, "after open");
    match map.sync(&devices) {
        Ok(_) => {
            check(&map, "after the sync that drains the replay");
            // The usage table the sync wrote must equal a recount of its trees (a page lost on
            // every copy may make the recount unreadable; never a wrong count otherwise).
            if let Err(err) = map.check_usage(&devices) {
                assert!(
                    everywhere && matches!(err, Error::MetadataLost { .. }),
                    "damage on member {target}: usage table wrong after the sync: {err}"
                );
            }
        }
        Err(err) => assert!(
            everywhere,
            "damage on member {target} only: sync failed: {err}"
        ),
    }
}

/// Target `send_stream` (docs/FORMAT.md V4.10d): arbitrary bytes read as a send stream never
/// panic the reader, and a stream it takes whole re-encodes to exactly its bytes (one spelling
/// per stream). Then a stream is built from the input (data and zeros records at input-chosen
/// places), read back record for record, and one input-chosen bit of it flipped: the flipped
/// stream must be refused (every bit is under a crc), and so must every cut of it.
pub fn send_stream(data: &[u8]) {
    use crate::format::v4::stream::{RecordKind, StreamHeader, StreamReader, StreamWriter};
    type Records = Vec<(RecordKind, u64, u64, Vec<u8>)>;
    fn read_all(bytes: &[u8]) -> Option<(StreamHeader, Records)> {
        let mut reader = StreamReader::new(bytes).ok()?;
        let header = reader.header().clone();
        let mut records = Vec::new();
        let mut payload = Vec::new();
        while let Some(record) = reader.next(&mut payload).ok()? {
            let bytes = if record.kind == RecordKind::Data {
                payload.clone()
            } else {
                Vec::new()
            };
            records.push((record.kind, record.offset, record.length, bytes));
        }
        Some((header, records))
    }
    fn write_all(header: &StreamHeader, records: &Records) -> Vec<u8> {
        let mut writer = StreamWriter::new(Vec::new(), header)
            .unwrap_or_else(|e| panic!("a Vec takes every write: {e}"));
        for (kind, offset, length, bytes) in records {
            match kind {
                RecordKind::Data => writer.data(*offset, bytes),
                _ => writer.zeros(*offset, *length),
            }
            .unwrap_or_else(|e| panic!("a Vec takes every write: {e}"));
        }
        writer
            .finish()
            .unwrap_or_else(|e| panic!("a Vec takes every write: {e}"))
            .0
    }
    if let Some((header, records)) = read_all(data) {
        assert_eq!(
            write_all(&header, &records),
            data,
            "a stream read whole does not re-encode to its bytes"
        );
    }
    if data.len() < 8 {
        return;
    }
    let word = u64::from_le_bytes(data[..8].try_into().unwrap_or([0; 8]));
    let header = StreamHeader {
        volume_bytes: 1 << 30,
        pool: [0x5a; 16],
        guid: word | 1,
        created: word >> 3,
        base_guid: 0,
        name: "fuzz".into(),
    };
    let mut records: Records = Vec::new();
    let mut offset = 0u64;
    for chunk in data[8..].chunks(64) {
        offset += u64::from(chunk[0] % 4) * 4096;
        let length = (chunk.len() as u64 % 3 + 1) * 4096;
        if chunk[0] & 1 == 1 {
            records.push((RecordKind::Zeros, offset, length, Vec::new()));
        } else {
            let bytes: Vec<u8> = chunk
                .iter()
                .copied()
                .cycle()
                .take(length as usize)
                .collect();
            records.push((RecordKind::Data, offset, length, bytes));
        }
        offset += length;
    }
    let stream = write_all(&header, &records);
    assert_eq!(
        read_all(&stream),
        Some((header, records)),
        "a stream does not read back as written"
    );
    let bit = usize::try_from(word % (stream.len() as u64 * 8)).unwrap_or(0);
    let mut flipped = stream.clone();
    flipped[bit / 8] ^= 1 << (bit % 8);
    assert!(
        read_all(&flipped).is_none(),
        "a stream with bit {bit} flipped was taken"
    );
    let cut = usize::try_from(word % stream.len() as u64).unwrap_or(0);
    assert!(
        read_all(&stream[..cut]).is_none(),
        "a stream cut at byte {cut} was taken"
    );
}
