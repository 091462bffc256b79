//! The paged map of a pool as one durable state (docs/FORMAT.md, V4.8): the map tree, the
//! intent log, the page allocator and the uberblock rings.
//!
//! A commit (`commit`) appends one log record with what changed since the previous one (the
//! block runs, trims and the rows their pointers come from) and flushes; when it would not fit,
//! it becomes a tree sync. A sync drains the replay overlay into the tree, writes the dirty
//! pages (copies on distinct members), flushes every member, writes uberblock `txg + 1` into both
//! rings of every member with the log switched to the other half, flushes again, and only then
//! lets the allocator release pages, by its rule. Open takes the newest valid uberblock of the
//! timeline and replays the log chain after it into an in-memory overlay (no leaf is read).
//!
//! Step 4 of the plan: only tree 0 (the map) is kept; the other roots stay holes. Segments and
//! the usage table are step 5; until then the allocator is rebuilt at open by walking the tree,
//! which is proportional to the map's pages, and entries of kinds the map does not write yet
//! (recovery points, segment states, forwarding, subtree trims) are refused at replay.

use super::alloc::{MpnAllocator, ReleaseRule};
use super::cache::PageCache;
use super::log::{replay, IntentLog, LogPosition, Replay};
use super::ring::{write_uberblock, Rings};
use super::store::PageStore;
use super::tree::{PageKey, RadixTree, SetError};
use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::format::v4::{BlockPointer, LogEntry, Tree, Uberblock, ADDRESS_HOLE, TREES};
use crate::geometry::Geometry;
use crate::types::{DeviceIndex, ShardIndex};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;

/// How a map is kept.
#[derive(Debug, Clone)]
pub struct MapOptions {
    /// Bytes of pages the cache may hold (clean, dirty and frozen).
    pub cache_bytes: usize,
    /// Depth of the map tree (keys: 1024^depth).
    pub depth: u8,
    /// The page numbers metadata may use (`None`: the whole data area).
    pub pages: Option<Range<u64>>,
    /// When freed pages may be reused (planted bugs choose an earlier one).
    pub release: ReleaseRule,
    /// Largest log record, bytes (`None`: min(1 MiB, half / 8), at least 4 KiB).
    pub record_max: Option<usize>,
    /// Open without writing anything (no log re-replication); a sync or commit is refused.
    pub read_only: bool,
    /// Planted bug `skip_page_checksum_verification`.
    #[cfg(feature = "testing")]
    pub skip_page_verification: bool,
    /// Planted bug `record_without_fit_check`.
    #[cfg(feature = "testing")]
    pub skip_record_fit_check: bool,
    /// Planted bug `rewind_without_log_invalidation`.
    #[cfg(feature = "testing")]
    pub rewind_without_log_invalidation: bool,
}

impl Default for MapOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 512 << 20,
            depth: 4,
            pages: None,
            release: ReleaseRule::AfterTwoSyncs,
            record_max: None,
            read_only: false,
            #[cfg(feature = "testing")]
            skip_page_verification: false,
            #[cfg(feature = "testing")]
            skip_record_fit_check: false,
            #[cfg(feature = "testing")]
            rewind_without_log_invalidation: false,
        }
    }
}

impl MapOptions {
    fn record_max(&self, geometry: &Geometry) -> usize {
        let half = usize::try_from(geometry.log_half_bytes()).unwrap_or(usize::MAX);
        self.record_max
            .unwrap_or_else(|| (1 << 20).min(half / 8))
            .max(crate::format::v4::LOG_BLOCK_BYTES)
    }

    fn planted_rewind(&self) -> bool {
        #[cfg(feature = "testing")]
        return self.rewind_without_log_invalidation;
        #[cfg(not(feature = "testing"))]
        false
    }
}

/// What one sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// The txg of the uberblock it wrote.
    pub txg: u64,
    /// Pages written (each as `tolerance + 1` copies).
    pub pages_written: usize,
    /// Pages of the previous tree it stopped referencing.
    pub pages_freed: usize,
}

/// What one commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitReport {
    /// Nothing changed since the previous commit.
    Nothing,
    /// A log record of `bytes` (padded) with sequence `sequence` on every member.
    Logged {
        /// The record's sequence.
        sequence: u64,
        /// Its bytes in the log.
        bytes: usize,
    },
    /// The record would not fit its half or `record_max`: a tree sync made it durable.
    Synced(SyncReport),
}

/// What an open found in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The txg of the uberblock opened.
    pub txg: u64,
    /// Records replayed into the overlay.
    pub records_replayed: usize,
    /// Keys the overlay holds.
    pub overlay_keys: usize,
    /// Bytes read from the log areas, per member.
    pub log_bytes_read: Vec<(DeviceIndex, u64)>,
    /// Members whose chain was shorter and received the winner's copy.
    pub rereplicated: Vec<DeviceIndex>,
    /// Lagging members the copy could not be written to, with the error (the caller's fault
    /// policy decides; the open does not fail for them).
    pub rereplication_failed: Vec<(DeviceIndex, String)>,
    /// Pages of the tree before the newest held back from reuse until the next sync is durable
    /// (so a rewind can still open that tree).
    pub previous_tree_pages: usize,
}

/// What a rewind will record in the superblocks before it writes (the caller persists it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewindPlan {
    /// The timeline rewound from.
    pub from_timeline: u64,
    /// The new timeline.
    pub to_timeline: u64,
    /// The uberblock rewound to (the newest minus one).
    pub to_txg: u64,
    /// Every txg from now on is at least this.
    pub txg_floor: u64,
    /// Every sequence from now on is at least this.
    pub seq_floor: u64,
}

/// What a rewind did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewindReport {
    /// The newest uberblock, abandoned.
    pub abandoned_txg: u64,
    /// The plan the superblocks recorded.
    pub plan: RewindPlan,
    /// Records replayed onto the older tree (commits kept).
    pub records_replayed: usize,
    /// Valid records beyond a break in the chain (commits dropped), by sequence.
    pub dropped_sequences: Vec<u64>,
}

/// A change since the previous commit: the pointer as of that commit, and the newest.
#[derive(Debug, Clone, Copy)]
struct Pending {
    old: BlockPointer,
    new: BlockPointer,
}

/// A row of data blocks (a kind-3 entry) the log names pointers by.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RowInfo {
    birth: u64,
    owners: Vec<u64>,
    crcs: Vec<u32>,
}

/// The durable, paged map of one pool.
#[derive(Debug)]
pub struct MapStore {
    pool: [u8; 16],
    timeline: u64,
    geometry: Geometry,
    map: RadixTree,
    alloc: MpnAllocator,
    txg: u64,
    next_sequence: u64,
    log: IntentLog,
    /// Keys changed by replayed records and not yet drained into the tree: the newest pointer,
    /// and what the tree must hold under it (checked when drained).
    overlay: BTreeMap<u64, (BlockPointer, BlockPointer)>,
    pending: BTreeMap<u64, Pending>,
    rows: BTreeMap<(u64, u16), RowInfo>,
    read_only: bool,
    failed: bool,
    opened: OpenReport,
}

fn flush_all(devices: &[Option<SharedDevice>]) -> Result<()> {
    for device in devices.iter().flatten() {
        device.flush().map_err(|e| Error::Io {
            device: device.name(),
            offset: None,
            source: e.into_io(),
        })?;
    }
    Ok(())
}

/// Where a data block's row is: `(slot, row, data block j within the row)`.
fn row_of(geometry: &Geometry, pbn: u64) -> (u64, u16, usize) {
    let k = geometry.data_chunks() as u64;
    let rows_per_chunk = (geometry.chunk_bytes / crate::format::v4::LOG_BLOCK_BYTES as u64).max(1);
    let per_slot = k * rows_per_chunk;
    let slot = pbn / per_slot;
    let within = pbn % per_slot;
    (
        slot,
        u16::try_from(within / k).unwrap_or(u16::MAX),
        (within % k) as usize,
    )
}

/// The crc a data block's pointer carries: that of the first shard carrying its data chunk.
fn pointer_crc(geometry: &Geometry, crcs: &[u32], j: usize) -> Option<u32> {
    (0..geometry.width())
        .find(|s| geometry.shard_data_chunk(ShardIndex(*s)) == Some(j))
        .and_then(|s| crcs.get(s).copied())
}

/// The `(pbn, birth)` a log entry records for an old pointer (zero and hole both log as a hole).
fn old_of(pointer: &BlockPointer) -> (u64, u64) {
    match pointer.address() {
        Some(pbn) => (pbn, pointer.birth()),
        None => (ADDRESS_HOLE, 0),
    }
}

fn same_old(pointer: &BlockPointer, old: (u64, u64)) -> bool {
    old_of(pointer) == old
}

impl MapStore {
    fn store(pool: [u8; 16], geometry: &Geometry, options: &MapOptions) -> Result<PageStore> {
        let store = PageStore::new(pool, geometry.clone())?;
        let store = if options.read_only {
            store.without_healing()
        } else {
            store
        };
        #[cfg(feature = "testing")]
        let store = if options.skip_page_verification {
            store.with_planted_skip_verification()
        } else {
            store
        };
        Ok(store)
    }

    fn page_range(geometry: &Geometry, options: &MapOptions) -> Range<u64> {
        options
            .pages
            .clone()
            .unwrap_or(0..geometry.metadata_pages())
    }

    fn intent_log(
        pool: [u8; 16],
        timeline: u64,
        geometry: &Geometry,
        options: &MapOptions,
        position: LogPosition,
    ) -> IntentLog {
        let log = IntentLog::new(
            pool,
            timeline,
            geometry,
            options.record_max(geometry),
            position,
        );
        #[cfg(feature = "testing")]
        let log = if options.skip_record_fit_check {
            log.with_planted_skip_fit_check()
        } else {
            log
        };
        log
    }

    fn uberblock(&self, txg: u64, s_sync: u64, log_half: u8, unlogged: bool) -> Uberblock {
        let depths = [self.map_depth(), 1, 1, 1, 1, 1];
        let mut roots = depths.map(BlockPointer::hole);
        roots[0] = self.map.root();
        Uberblock {
            pool: self.pool,
            txg,
            s_sync,
            log_half,
            written_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            roots,
            next_sequence: s_sync + 1,
            timeline: self.timeline,
            depths,
            open_segments: [None; 4],
            unlogged,
        }
    }

    fn map_depth(&self) -> u8 {
        self.map.root().level()
    }

    /// A new, empty map: uberblock 0 (every root a hole) in both rings of every member.
    ///
    /// # Errors
    /// A bad depth or page range, or a member that cannot be written.
    pub fn create(
        devices: &[Option<SharedDevice>],
        pool: [u8; 16],
        geometry: &Geometry,
        timeline: u64,
        options: &MapOptions,
    ) -> Result<Self> {
        let cache = Arc::new(PageCache::<PageKey>::new(options.cache_bytes));
        let store = Self::store(pool, geometry, options)?;
        let range = Self::page_range(geometry, options);
        if range.is_empty() || range.end > geometry.metadata_pages() {
            return Err(Error::InvalidConfig(format!(
                "metadata pages {range:?} outside the data area's {}",
                geometry.metadata_pages()
            )));
        }
        let map = RadixTree::new(
            pool,
            Tree::Map,
            options.depth,
            BlockPointer::hole(options.depth),
            cache,
            store,
        )?;
        // Uberblock 0 has S_sync 1 and names half 0, whose chain starts with prev = 1.
        let position = LogPosition {
            half: 0,
            offset: 0,
            last: 1,
        };
        let this = Self {
            pool,
            timeline,
            geometry: geometry.clone(),
            map,
            alloc: MpnAllocator::new(range, options.release),
            txg: 0,
            next_sequence: 2,
            log: Self::intent_log(pool, timeline, geometry, options, position),
            overlay: BTreeMap::new(),
            pending: BTreeMap::new(),
            rows: BTreeMap::new(),
            read_only: false,
            failed: false,
            opened: OpenReport::default(),
        };
        let failed = write_uberblock(devices, geometry, &this.uberblock(0, 1, 0, false));
        if let Some((device, why)) = failed.first() {
            return Err(Error::corrupt_metadata(format!("member {device}: {why}")));
        }
        flush_all(devices)?;
        Ok(this)
    }

    /// The map of uberblock `uberblock` with the log chain `replay` applied to its overlay.
    /// The pages of `previous` (the uberblock before it, when still in the rings) that the
    /// newest tree no longer uses are held back until the next sync is durable: a rewind may
    /// need them (released by the same rule as if this process had run that sync).
    fn assemble(
        devices: &[Option<SharedDevice>],
        geometry: &Geometry,
        timeline: u64,
        options: &MapOptions,
        uberblock: &Uberblock,
        previous: Option<&Uberblock>,
        replay: &Replay,
    ) -> Result<Self> {
        let pool = uberblock.pool;
        let cache = Arc::new(PageCache::<PageKey>::new(options.cache_bytes));
        let store = Self::store(pool, geometry, options)?;
        let depth = uberblock.depths[0];
        let map = RadixTree::new(pool, Tree::Map, depth, uberblock.roots[0], cache, store)?;
        let mut alloc = MpnAllocator::new(Self::page_range(geometry, options), options.release);
        for mpn in map.referenced_pages(devices)? {
            if !alloc.mark_used(mpn) {
                return Err(Error::corrupt_metadata(format!(
                    "metadata page {mpn} referenced twice or outside the metadata area"
                )));
            }
        }
        let mut held = Vec::new();
        if let Some(previous) = previous {
            // Its own small cache: pages are cached by place in the tree, not by number, so
            // the newest tree's cached pages must not answer for it.
            let cache = Arc::new(PageCache::<PageKey>::new(16 * RadixTree::page_bytes()));
            let store = Self::store(pool, geometry, options)?.without_healing();
            let older = RadixTree::new(
                pool,
                Tree::Map,
                previous.depths[0],
                previous.roots[0],
                cache,
                store,
            );
            // A tree that no longer reads protects nothing; the newest one is what opens.
            if let Ok(pages) = older.and_then(|tree| tree.referenced_pages(devices)) {
                held = pages
                    .into_iter()
                    .filter(|mpn| alloc.mark_used(*mpn))
                    .collect();
            }
        }
        let previous_tree_pages = held.len();
        if let Some(previous) = previous {
            alloc.free_after(previous.txg, held);
        }
        debug_assert_eq!(TREES, 6);
        let mut this = Self {
            pool,
            timeline,
            geometry: geometry.clone(),
            map,
            alloc,
            txg: uberblock.txg,
            // `end + 1` may have been taken by a sync whose uberblock never became durable.
            next_sequence: uberblock.next_sequence.max(replay.end.last + 2),
            log: Self::intent_log(pool, timeline, geometry, options, replay.end),
            overlay: BTreeMap::new(),
            pending: BTreeMap::new(),
            rows: BTreeMap::new(),
            read_only: options.read_only,
            failed: false,
            opened: OpenReport {
                txg: uberblock.txg,
                records_replayed: replay.chain.len(),
                overlay_keys: 0,
                log_bytes_read: replay.bytes_read.clone(),
                rereplicated: Vec::new(),
                rereplication_failed: Vec::new(),
                previous_tree_pages: 0,
            },
        };
        this.opened.previous_tree_pages = previous_tree_pages;
        this.apply_chain(replay)?;
        this.opened.overlay_keys = this.overlay.len();
        Ok(this)
    }

    /// Apply the records of a chain to the overlay, checking each old pointer against the
    /// newest one the chain already gave the key.
    fn apply_chain(&mut self, replay: &Replay) -> Result<()> {
        let mut rows: HashMap<(u64, u16), RowInfo> = HashMap::new();
        for link in &replay.chain {
            let record = &link.record;
            let refuse = |why: String| Error::CorruptMetadata {
                device: None,
                offset: None,
                reason: format!(
                    "log record {} (half {}, byte offset {}): {why}",
                    record.sequence, link.half, link.offset
                ),
            };
            for entry in &record.entries {
                if let LogEntry::Row {
                    slot,
                    row,
                    birth,
                    owners,
                    crcs,
                } = entry
                {
                    rows.insert(
                        (*slot, *row),
                        RowInfo {
                            birth: *birth,
                            owners: owners.clone(),
                            crcs: crcs.clone(),
                        },
                    );
                }
            }
            let geometry = self.geometry.clone();
            let pointer_at = |key: u64, pbn: u64| -> Result<BlockPointer> {
                let (slot, row, j) = row_of(&geometry, pbn);
                let info = rows
                    .get(&(slot, row))
                    .ok_or_else(|| refuse(format!("block {pbn} of a row the log does not name")))?;
                if info.owners.get(j) != Some(&key) {
                    return Err(refuse(format!(
                        "block {pbn} is not owned by logical block {key} in its row"
                    )));
                }
                let crc = pointer_crc(&geometry, &info.crcs, j)
                    .ok_or_else(|| refuse(format!("no crc for block {pbn}")))?;
                Ok(BlockPointer::written(pbn, info.birth, 0, crc))
            };
            for entry in &record.entries {
                match entry {
                    LogEntry::Row { .. } => {}
                    LogEntry::BlockRun { first, changes } => {
                        for (i, (new, old_pbn, old_birth)) in changes.iter().enumerate() {
                            let key = first + i as u64;
                            let pointer = pointer_at(key, *new)?;
                            self.replay_change(key, pointer, (*old_pbn, *old_birth))
                                .map_err(&refuse)?;
                        }
                    }
                    LogEntry::FreshRun {
                        first,
                        count,
                        first_new,
                    } => {
                        for i in 0..u64::from(*count) {
                            let pointer = pointer_at(first + i, first_new + i)?;
                            self.replay_change(first + i, pointer, (ADDRESS_HOLE, 0))
                                .map_err(&refuse)?;
                        }
                    }
                    LogEntry::ShortTrim { first, olds } => {
                        for (i, old) in olds.iter().enumerate() {
                            let pointer = BlockPointer::zeroed(0, record.sequence);
                            self.replay_change(first + i as u64, pointer, *old)
                                .map_err(&refuse)?;
                        }
                    }
                    other => {
                        return Err(refuse(format!(
                            "entry {other:?} is of a kind this build does not write"
                        )))
                    }
                }
            }
        }
        Ok(())
    }

    fn replay_change(
        &mut self,
        key: u64,
        pointer: BlockPointer,
        old: (u64, u64),
    ) -> std::result::Result<(), String> {
        if key >= self.map.keys() {
            return Err(format!("logical block {key} beyond the map"));
        }
        match self.overlay.get_mut(&key) {
            Some((newest, _)) => {
                if !same_old(newest, old) {
                    return Err(format!(
                        "logical block {key}: old pointer {old:?}, the chain gave {newest:?}"
                    ));
                }
                *newest = pointer;
            }
            None => {
                // What the tree must hold is checked when the key is drained.
                let expected = if old.0 == ADDRESS_HOLE {
                    BlockPointer::hole(0)
                } else {
                    BlockPointer::written(old.0, old.1.max(1), 0, 0)
                };
                self.overlay.insert(key, (pointer, expected));
            }
        }
        Ok(())
    }

    /// Open the map from the newest valid uberblock of `timeline` on the members and replay
    /// the log chain after it. A writable open copies the longest chain onto members whose
    /// chain is shorter; a read-only one writes nothing.
    ///
    /// # Errors
    /// [`Error::CorruptMetadata`] when no member holds a valid uberblock, two disagree about
    /// one txg, a referenced page is named twice, a replayed record contradicts the chain, or
    /// a valid record of the timeline lies beyond the chain (a commit that cannot be replayed:
    /// `open --rewind` decides); [`Error::MetadataLost`] when the root or a page under it is
    /// lost on every copy.
    pub fn open(
        devices: &[Option<SharedDevice>],
        pool: [u8; 16],
        geometry: &Geometry,
        timeline: u64,
        options: &MapOptions,
    ) -> Result<Self> {
        let rings = Rings::read(devices, geometry, pool)?;
        let Some((uberblock, _holders)) = rings.newest(timeline)? else {
            return Err(Error::corrupt_metadata(
                "no valid uberblock of this pool on any member",
            ));
        };
        let replay = replay(
            devices,
            geometry,
            pool,
            timeline,
            uberblock.log_half,
            uberblock.s_sync,
            false,
        )?;
        if let Some((member, half, offset, sequence)) = replay.beyond.first() {
            return Err(Error::CorruptMetadata {
                device: devices
                    .get(member.0)
                    .and_then(|d| d.as_ref().map(|d| d.name())),
                offset: Some(geometry.log_halves()[usize::from(*half)] + offset),
                reason: format!(
                    "log record {sequence} is valid but does not follow the chain, which ends at \
                     {} after txg {}: a commit that cannot be replayed; `open --rewind` drops it",
                    replay.end.last, uberblock.txg
                ),
            });
        }
        let previous = uberblock
            .txg
            .checked_sub(1)
            .and_then(|txg| rings.at(timeline, txg));
        let mut this = Self::assemble(
            devices,
            geometry,
            timeline,
            options,
            &uberblock,
            previous.as_ref(),
            &replay,
        )?;
        if !options.read_only {
            let failed = replay.rereplicate(devices, geometry);
            this.opened.rereplicated = replay
                .lagging
                .iter()
                .filter(|m| failed.iter().all(|(f, _)| f != *m))
                .copied()
                .collect();
            this.opened.rereplication_failed = failed
                .into_iter()
                .map(|(member, e)| (member, e.to_string()))
                .collect();
        }
        Ok(this)
    }

    /// Open the tree before the newest (its pages are intact by the deferred release) with the
    /// log chain that follows it replayed, in a new timeline (docs/FORMAT.md, "`open
    /// --rewind`"). `persist` must make the plan durable in the superblocks before anything is
    /// written; a crash later is recovered by running the same rewind again.
    ///
    /// # Errors
    /// When there is no older uberblock, the older tree is unreadable, `persist` fails, or the
    /// sync into the new timeline fails.
    pub fn rewind(
        devices: &[Option<SharedDevice>],
        pool: [u8; 16],
        geometry: &Geometry,
        from_timeline: u64,
        to_timeline: u64,
        options: &MapOptions,
        persist: &mut dyn FnMut(&RewindPlan) -> Result<()>,
    ) -> Result<(Self, RewindReport)> {
        if options.read_only {
            return Err(Error::InvalidConfig(
                "a rewind writes: not read-only".into(),
            ));
        }
        let rings = Rings::read(devices, geometry, pool)?;
        let Some((newest, _)) = rings.newest(from_timeline)? else {
            return Err(Error::corrupt_metadata(
                "no valid uberblock of the timeline to rewind from",
            ));
        };
        let older = newest
            .txg
            .checked_sub(1)
            .and_then(|txg| rings.at(from_timeline, txg));
        let Some(older) = older else {
            return Err(Error::corrupt_metadata(format!(
                "no uberblock before txg {} is left to rewind to",
                newest.txg
            )));
        };
        let replay = replay(
            devices,
            geometry,
            pool,
            from_timeline,
            older.log_half,
            older.s_sync,
            // The chain after the older tree goes on into the newest's half only when the
            // newest sync logged every change it made durable; else what follows is dropped.
            !newest.unlogged,
        )?;
        let planted = options.planted_rewind();
        let plan = RewindPlan {
            from_timeline,
            to_timeline: if planted { from_timeline } else { to_timeline },
            to_txg: older.txg,
            txg_floor: if planted {
                older.txg + 1
            } else {
                rings.highest_txg() + 1
            },
            seq_floor: if planted {
                older.next_sequence
            } else {
                (replay.highest_sequence + 1)
                    .max(newest.next_sequence)
                    .max(replay.end.last + 2)
            },
        };
        let mut dropped: Vec<u64> = replay.beyond.iter().map(|b| b.3).collect();
        dropped.sort_unstable();
        dropped.dedup();
        let mut this = Self::assemble(
            devices,
            geometry,
            plan.to_timeline,
            options,
            &older,
            None,
            &replay,
        )?;
        // Every replayed change must fit the older tree before anything is written.
        this.check_overlay(devices)?;
        persist(&plan)?;
        this.txg = plan.txg_floor - 1;
        this.next_sequence = plan.seq_floor;
        let report = RewindReport {
            abandoned_txg: newest.txg,
            plan,
            records_replayed: replay.chain.len(),
            dropped_sequences: dropped,
        };
        this.sync(devices)?;
        Ok((this, report))
    }

    /// Check every replayed change against the tree it will be drained into (reads leaves).
    fn check_overlay(&self, devices: &[Option<SharedDevice>]) -> Result<()> {
        for (&key, (_, expected)) in &self.overlay {
            self.check_drain(devices, key, expected)?;
        }
        Ok(())
    }

    fn check_drain(
        &self,
        devices: &[Option<SharedDevice>],
        key: u64,
        expected: &BlockPointer,
    ) -> Result<()> {
        let found = self.map.get(devices, key)?;
        if same_old(&found, old_of(expected)) {
            Ok(())
        } else {
            Err(Error::corrupt_metadata(format!(
                "log replay: logical block {key} holds {found:?} in the tree, the log says \
                 {expected:?}"
            )))
        }
    }

    /// The txg of the newest durable uberblock.
    #[must_use]
    pub fn txg(&self) -> u64 {
        self.txg
    }
    /// The sequence the next commit takes: the birth of rows written for it.
    #[must_use]
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }
    /// Logical blocks the map can hold.
    #[must_use]
    pub fn keys(&self) -> u64 {
        self.map.keys()
    }
    /// Metadata pages in use or waiting for release.
    #[must_use]
    pub fn pages_in_use(&self) -> u64 {
        self.alloc.in_use()
    }
    /// What the open found in the log.
    #[must_use]
    pub fn open_report(&self) -> &OpenReport {
        &self.opened
    }
    /// The map tree's root as of the last sync.
    #[must_use]
    pub fn root(&self) -> BlockPointer {
        self.map.root()
    }
    /// Where the next log record goes.
    #[must_use]
    pub fn log_position(&self) -> LogPosition {
        self.log.position()
    }

    /// The pointer of logical block `key`.
    ///
    /// # Errors
    /// See [`RadixTree::get`].
    pub fn get(&self, devices: &[Option<SharedDevice>], key: u64) -> Result<BlockPointer> {
        if let Some((pointer, _)) = self.overlay.get(&key) {
            return Ok(*pointer);
        }
        self.map.get(devices, key)
    }

    fn usable(&self) -> Result<()> {
        if self.failed {
            return Err(Error::corrupt_metadata(
                "an earlier commit or sync of this map failed: reopen it",
            ));
        }
        if self.read_only {
            return Err(Error::InvalidConfig("the map was opened read-only".into()));
        }
        Ok(())
    }

    /// Note a row of data blocks written for the next commit (its birth is that commit's
    /// sequence or, after a sync the row was written before, the sync's). The pointers of
    /// its blocks may then be set.
    ///
    /// # Errors
    /// A row a correct pool never writes.
    pub fn note_row(
        &mut self,
        slot: u64,
        row: u16,
        birth: u64,
        owners: Vec<u64>,
        crcs: Vec<u32>,
    ) -> Result<()> {
        self.usable()?;
        if owners.is_empty()
            || owners.len() > self.geometry.data_chunks()
            || crcs.len() != self.geometry.width()
        {
            return Err(Error::corrupt_metadata(format!(
                "row {row} of slot {slot}: {} owners and {} crcs",
                owners.len(),
                crcs.len()
            )));
        }
        self.rows.insert(
            (slot, row),
            RowInfo {
                birth,
                owners,
                crcs,
            },
        );
        Ok(())
    }

    /// Map logical block `key` to data block `pbn` of a noted row (durable at the next commit).
    ///
    /// # Errors
    /// A block of a row not noted since the last commit, or not owned by `key` in it; see
    /// [`MapStore::sync`].
    pub fn set(
        &mut self,
        devices: &[Option<SharedDevice>],
        key: u64,
        pbn: u64,
    ) -> Result<BlockPointer> {
        self.usable()?;
        let (slot, row, j) = row_of(&self.geometry, pbn);
        let Some(info) = self.rows.get(&(slot, row)) else {
            return Err(Error::corrupt_metadata(format!(
                "block {pbn}: row {row} of slot {slot} was not noted"
            )));
        };
        if info.owners.get(j) != Some(&key) {
            return Err(Error::corrupt_metadata(format!(
                "block {pbn} is not owned by logical block {key} in its row"
            )));
        }
        let crc = pointer_crc(&self.geometry, &info.crcs, j)
            .ok_or_else(|| Error::corrupt_metadata(format!("no crc for block {pbn}")))?;
        let pointer = BlockPointer::written(pbn, info.birth, 0, crc);
        self.install(devices, key, Some(pointer))
    }

    /// Make logical block `key` read zeros (a trim; durable at the next commit). `None` in
    /// `install` stands for this zero pointer, whose birth is known only after any sync.
    ///
    /// # Errors
    /// See [`MapStore::sync`].
    pub fn trim(&mut self, devices: &[Option<SharedDevice>], key: u64) -> Result<BlockPointer> {
        self.usable()?;
        // The birth is the sequence of the record that will carry the trim, read after any
        // sync `install` runs first.
        self.install(devices, key, None)
    }

    fn install(
        &mut self,
        devices: &[Option<SharedDevice>],
        key: u64,
        written: Option<BlockPointer>,
    ) -> Result<BlockPointer> {
        if key >= self.map.keys() {
            return Err(Error::corrupt_metadata(format!(
                "logical block {key} beyond the map ({} blocks)",
                self.map.keys()
            )));
        }
        for attempt in 0..2 {
            let new = written.unwrap_or_else(|| BlockPointer::zeroed(0, self.next_sequence));
            let old = self.get(devices, key)?;
            match self.map.set(devices, key, new) {
                Ok(()) => {
                    self.overlay.remove(&key);
                    self.pending
                        .entry(key)
                        .and_modify(|p| p.new = new)
                        .or_insert(Pending { old, new });
                    return Ok(new);
                }
                Err(SetError::Failed(e)) => return Err(e),
                Err(SetError::NeedsSync(_)) if attempt == 0 => {
                    // The sync makes every change so far durable; the rows stay noted for
                    // the pointers still to come.
                    self.sync_keeping_rows(devices)?;
                }
                Err(SetError::NeedsSync(_)) => break,
            }
        }
        Err(Error::corrupt_metadata(
            "the page cache is too small for one path of the map",
        ))
    }

    /// The log entries of the changes since the previous commit.
    fn entries(&self) -> Vec<LogEntry> {
        let mut entries: Vec<LogEntry> = self
            .rows
            .iter()
            .map(|((slot, row), info)| LogEntry::Row {
                slot: *slot,
                row: *row,
                birth: info.birth,
                owners: info.owners.clone(),
                crcs: info.crcs.clone(),
            })
            .collect();
        let mut run: Option<LogEntry> = None;
        let flush_run = |run: &mut Option<LogEntry>, entries: &mut Vec<LogEntry>| {
            if let Some(entry) = run.take() {
                entries.push(entry);
            }
        };
        for (key, change) in &self.pending {
            let old = old_of(&change.old);
            let extended = match (&mut run, change.new.address()) {
                (
                    Some(LogEntry::FreshRun {
                        first,
                        count,
                        first_new,
                    }),
                    Some(pbn),
                ) if old.0 == ADDRESS_HOLE
                    && *first + u64::from(*count) == *key
                    && *first_new + u64::from(*count) == pbn
                    && *count < u32::MAX =>
                {
                    *count += 1;
                    true
                }
                (Some(LogEntry::BlockRun { first, changes }), Some(pbn))
                    if *first + changes.len() as u64 == *key
                        && changes.len() < usize::from(u16::MAX) =>
                {
                    changes.push((pbn, old.0, old.1));
                    true
                }
                (Some(LogEntry::ShortTrim { first, olds }), None)
                    if *first + olds.len() as u64 == *key && olds.len() < 1023 =>
                {
                    olds.push(old);
                    true
                }
                _ => false,
            };
            if extended {
                continue;
            }
            flush_run(&mut run, &mut entries);
            run = Some(match change.new.address() {
                Some(pbn) if old.0 == ADDRESS_HOLE => LogEntry::FreshRun {
                    first: *key,
                    count: 1,
                    first_new: pbn,
                },
                Some(pbn) => LogEntry::BlockRun {
                    first: *key,
                    changes: vec![(pbn, old.0, old.1)],
                },
                None => LogEntry::ShortTrim {
                    first: *key,
                    olds: vec![old],
                },
            });
        }
        flush_run(&mut run, &mut entries);
        entries
    }

    /// Make every change so far durable (a `flush`): one log record on every member when it
    /// fits, else a tree sync.
    ///
    /// # Errors
    /// When the record or the sync cannot be written; the map must then be reopened.
    pub fn commit(&mut self, devices: &[Option<SharedDevice>]) -> Result<CommitReport> {
        self.usable()?;
        if self.pending.is_empty() && self.rows.is_empty() {
            return Ok(CommitReport::Nothing);
        }
        let sequence = self.next_sequence;
        // A trim logged in this record reads as zeros born at its sequence.
        debug_assert!(self
            .pending
            .values()
            .all(|p| !p.new.is_zero() || p.new.birth() == sequence));
        let entries = self.entries();
        let before = self.log.position();
        match self.log.append(devices, sequence, entries) {
            Ok(true) => {
                let bytes = (self.log.position().offset - before.offset) as usize;
                self.next_sequence += 1;
                self.pending.clear();
                self.rows.clear();
                Ok(CommitReport::Logged { sequence, bytes })
            }
            Ok(false) => Ok(CommitReport::Synced(self.sync(devices)?)),
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// Make every change durable by a tree sync: drain the overlay into the tree, write the
    /// dirty pages, flush, write uberblock `txg + 1` to both rings of every member with the log
    /// switched to the other half, flush, then release what the older trees no longer need.
    ///
    /// # Errors
    /// When pages or the uberblock cannot be written or a member cannot be flushed. The
    /// previous uberblock then stays the newest durable one and the map must be reopened.
    pub fn sync(&mut self, devices: &[Option<SharedDevice>]) -> Result<SyncReport> {
        let report = self.sync_keeping_rows(devices)?;
        self.rows.clear();
        Ok(report)
    }

    fn sync_keeping_rows(&mut self, devices: &[Option<SharedDevice>]) -> Result<SyncReport> {
        self.usable()?;
        let outcome = self.sync_inner(devices);
        if outcome.is_err() {
            self.failed = true;
        }
        outcome
    }

    fn sync_inner(&mut self, devices: &[Option<SharedDevice>]) -> Result<SyncReport> {
        // Changes not in any record yet are logged first when they fit, so that the chain
        // after the previous tree holds everything this sync commits and a rewind over it
        // loses nothing; if they do not fit, the uberblock says so.
        // The record goes first even when nothing is pending: it makes the sequence before
        // the sync's own durable, so a sync cut before its uberblock cannot have its sequence
        // handed out again after a restart (review finding 5; only a full half skips it).
        let sequence = self.next_sequence;
        let mut unlogged = false;
        if self.log.append(devices, sequence, self.entries())? {
            self.next_sequence += 1;
            self.pending.clear();
        } else {
            unlogged = !self.pending.is_empty();
        }
        let birth = self.next_sequence;
        let mut pages_written = 0;
        let mut freed = Vec::new();
        // Drain the overlay; when the cache cannot take more dirty pages, write the ones it
        // holds (pages of no durable tree yet) and go on.
        while let Some((&key, &(pointer, expected))) = self.overlay.iter().next() {
            self.check_drain(devices, key, &expected)?;
            match self.map.set(devices, key, pointer) {
                Ok(()) => {
                    self.overlay.remove(&key);
                }
                Err(SetError::Failed(e)) => return Err(e),
                Err(SetError::NeedsSync(_)) => {
                    let part = self.write_pages(devices, birth)?;
                    if part.0 == 0 {
                        return Err(Error::corrupt_metadata(
                            "the page cache is too small for one path of the map",
                        ));
                    }
                    pages_written += part.0;
                    freed.extend(part.1);
                }
            }
        }
        let last = self.write_pages(devices, birth)?;
        pages_written += last.0;
        freed.extend(last.1);
        flush_all(devices)?;
        let txg = self.txg + 1;
        let half = self.log.position().half ^ 1;
        let uberblock = self.uberblock(txg, birth, half, unlogged);
        let failed = write_uberblock(devices, &self.geometry, &uberblock);
        // Every member in service must hold it: a member without it would, alone, open the
        // older tree and lose this commit (the caller's fault policy takes such a member out
        // of service and syncs again).
        if !failed.is_empty() {
            return Err(Error::corrupt_metadata(format!(
                "uberblock {txg} not written on every member: {}",
                failed
                    .iter()
                    .map(|(d, why)| format!("member {d}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        flush_all(devices)?;
        let pages_freed = freed.len();
        self.alloc.free_after(self.txg, freed);
        self.txg = txg;
        self.next_sequence = birth + 1;
        self.log.switch(birth);
        self.pending.clear();
        self.alloc.durable(txg);
        Ok(SyncReport {
            txg,
            pages_written,
            pages_freed,
        })
    }

    /// Write the tree's dirty pages with birth `birth`: `(pages written, pages freed)`.
    fn write_pages(
        &mut self,
        devices: &[Option<SharedDevice>],
        birth: u64,
    ) -> Result<(usize, Vec<u64>)> {
        let alloc = std::cell::RefCell::new(&mut self.alloc);
        let outcome = self.map.sync(
            devices,
            birth,
            &mut || alloc.borrow_mut().alloc(),
            &mut |mpn| alloc.borrow_mut().dropped_in_sync(mpn),
        )?;
        // Every copy on a member in service must be written: a page short of copies would be
        // lost by fewer failures than the pool tolerates.
        if let Some(fault) = outcome.copy_faults.first() {
            return Err(Error::corrupt_metadata(format!(
                "metadata page copy not written: {fault}"
            )));
        }
        Ok((outcome.pages_written, outcome.freed))
    }
}
