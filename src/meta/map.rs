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
//! Trees kept: 0 (the map), 1 (the slot summary), 2 (the usage table, whose records are
//! resident and give allocation without a walk at open) and 3 (recovery points, FORMAT.md
//! V4.10a: frozen map roots; a pointer the live tree drops with birth ≤ `S_head` is held, not
//! counted off). Trees 4 and 5 (deadlists, forwarding) are refused at open, and log entries
//! of kinds the map does not write (segment states, forwarding, subtree trims, kind 4) at
//! replay.

use super::cache::PageCache;
use super::log::{replay, IntentLog, LogPosition, Replay};
use super::ring::{write_uberblock, Rings};
use super::segments::{ReleaseRule, SegmentShape, SegmentTable, SUT_LEAF_BITS};
use super::store::{PageRef, PageStore};
use super::tree::{PageKey, RadixTree, SeenPages, SetError};
use crate::device::{flush_each, DeviceError, SharedDevice};
use crate::error::{Error, Result};
use crate::format::v4::{
    check_recovery_name, BlockPointer, LeafFormat, LogEntry, RecoveryKind, RecoveryRecord,
    SegmentState, SlotRecord, SlotShape, Tree, Uberblock, ADDRESS_HOLE, FLAG_AUTOMATIC,
    FLAG_RECEIVED, FLAG_REFERENCED, NO_KEY, PAGE_BYTES, RECOVERY_RECORD_BYTES, TREES,
};
use crate::geometry::Geometry;
use crate::types::{DeviceIndex, ShardIndex};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

mod diff;
mod receive;
pub use diff::DiffRun;
pub use receive::IncomingPoint;

/// What tree 3 holds at open: the recovery points by key, the live line's head
/// `(key, S_head)`, an unfinished receive.
type Loaded = (
    BTreeMap<u64, RecoveryRecord>,
    (u64, u64),
    Option<(u64, RecoveryRecord)>,
);

/// How a map is kept.
#[derive(Debug, Clone)]
pub struct MapOptions {
    /// Bytes of pages the cache may hold (clean, dirty and frozen).
    pub cache_bytes: usize,
    /// Depth of the map tree (keys: 1024^depth).
    pub depth: u8,
    /// Slots per segment (the unit of allocation: 64 by default, 4 at the test minimum).
    pub segment_slots: u64,
    /// Most pages one sync writes of map and summary (`None`: `min(8192, pages of all trees
    /// at full use / 8)`, at least 16); sizes the hard reserve.
    pub sync_pages_max: Option<usize>,
    /// When freed pages may be reused (planted bugs choose an earlier one).
    pub release: ReleaseRule,
    /// Largest log record, bytes (`None`: min(1 MiB, half / 8), at least 4 KiB).
    pub record_max: Option<usize>,
    /// Open without writing anything (no log re-replication); a sync or commit is refused.
    pub read_only: bool,
    /// How the map's leaves are encoded (docs/FORMAT.md V4.17): sectored for a pool made
    /// now, plain for one whose map parameters do not say `sectored_leaves`. Must be what
    /// the pool was made with: a pool's parameters decide it, never this default.
    pub leaf_format: LeafFormat,
    /// The time an uberblock records as written at, seconds since the Unix epoch (the wall
    /// clock by default). A test that compares two pools byte for byte fixes it: two syncs
    /// either side of a second's turn would otherwise differ in these eight bytes alone.
    pub clock: fn() -> u64,
    /// Planted bug `skip_page_checksum_verification`.
    #[cfg(feature = "testing")]
    pub skip_page_verification: bool,
    /// Planted bug `record_without_fit_check`.
    #[cfg(feature = "testing")]
    pub skip_record_fit_check: bool,
    /// Planted bug `rewind_without_log_invalidation`.
    #[cfg(feature = "testing")]
    pub rewind_without_log_invalidation: bool,
    /// Planted bug `foreground_into_reserve`: data may take the last free segments, which
    /// only syncs may use.
    #[cfg(feature = "testing")]
    pub foreground_into_reserve: bool,
    /// Planted bug `sut_decrement_at_write_time`: a dropped block's count falls in the
    /// resident table when the pointer changes (and its segment is freed at 0), not at the
    /// sync that makes the change durable.
    #[cfg(feature = "testing")]
    pub sut_decrement_at_write_time: bool,
    /// Planted bug `release_held_segment`: a segment holding rows of a write unit still on
    /// the devices is released like any other (see [`MapStore::hold_slots`]).
    #[cfg(feature = "testing")]
    pub release_held_segment: bool,
    /// Planted bug `free_shared_page`: a map page a sync replaces is counted off whatever
    /// its birth, so pages a recovery point still names are reused (FORMAT.md V4.10a).
    #[cfg(feature = "testing")]
    pub free_shared_page: bool,
    /// Planted bug `drop_held_block`: a block the live tree drops is counted off whatever its
    /// birth (at runtime and at replay).
    #[cfg(feature = "testing")]
    pub drop_held_block: bool,
    /// Planted bug `replay_drops_held_block`: the hold rule is kept at runtime, not when the
    /// log is replayed at open.
    #[cfg(feature = "testing")]
    pub replay_drops_held_block: bool,
    /// Planted bug `recovery_point_in_live_cache`: a recovery point's tree is read through
    /// the live map's cache (whose keys name a position, not a version).
    #[cfg(feature = "testing")]
    pub recovery_point_in_live_cache: bool,
    /// Planted bug `pin_only_on_hold`: metadata victims are not checked against the live
    /// trees before they are moved (a segment of pages only a recovery point names is
    /// chosen at every sync and never empties).
    #[cfg(feature = "testing")]
    pub pin_only_on_hold: bool,
    /// Planted bug `delete_ignores_child`: a delete frees what its recovery point does not
    /// share with its parent, without comparing with its child (or the live map).
    #[cfg(feature = "testing")]
    pub delete_ignores_child: bool,
    /// Planted bug `rollback_keeps_live_cache`: a rollback gives the live map the recovery
    /// point's root but leaves the pages it cached of the tree it replaces.
    #[cfg(feature = "testing")]
    pub rollback_keeps_live_cache: bool,
    /// Planted bug `abort_keeps_blocks`: an aborted receive puts the head's root back but
    /// counts off nothing it wrote (a leak).
    #[cfg(feature = "testing")]
    pub abort_keeps_blocks: bool,
    /// Planted bug `receive_reads_live`: while a receive is unfinished, reads see the live
    /// map (the partial receive), not its base.
    #[cfg(feature = "testing")]
    pub receive_reads_live: bool,
    /// Planted bug `delete_cursor_ignored`: the hold rule ignores a head delete's cursor (a
    /// block the live map drops at a position the delete already decided stays held: a leak).
    #[cfg(feature = "testing")]
    pub delete_cursor_ignored: bool,
    /// Planted bug `live_count_ignores_trim`: a trim does not lower the live count of named
    /// blocks (FORMAT.md V4.10f).
    #[cfg(feature = "testing")]
    pub live_count_ignores_trim: bool,
    /// Planted bug `allocation_hint_late`: [`MapStore::next_visible`] looks from one key
    /// after the one asked.
    #[cfg(feature = "testing")]
    pub allocation_hint_late: bool,
    /// Planted bug `stale_sectors`: a cached sector of a leaf is used without comparing the
    /// pointer it was read through with the parent's pointer now (docs/FORMAT.md V4.17).
    #[cfg(feature = "testing")]
    pub stale_sectors: bool,
}

/// The planted bugs of the hold rule (all off in a build without `testing`).
#[derive(Debug, Clone, Copy, Default)]
struct PlantedHolds {
    free_shared_page: bool,
    drop_held_block: bool,
    replay_drops_held_block: bool,
    in_live_cache: bool,
    pin_only_on_hold: bool,
    delete_ignores_child: bool,
    rollback_keeps_live_cache: bool,
    abort_keeps_blocks: bool,
    receive_reads_live: bool,
    delete_cursor_ignored: bool,
    live_count_ignores_trim: bool,
    allocation_hint_late: bool,
}

impl PlantedHolds {
    fn of(options: &MapOptions) -> Self {
        #[cfg(feature = "testing")]
        return Self {
            free_shared_page: options.free_shared_page,
            drop_held_block: options.drop_held_block,
            replay_drops_held_block: options.replay_drops_held_block,
            in_live_cache: options.recovery_point_in_live_cache,
            pin_only_on_hold: options.pin_only_on_hold,
            delete_ignores_child: options.delete_ignores_child,
            rollback_keeps_live_cache: options.rollback_keeps_live_cache,
            abort_keeps_blocks: options.abort_keeps_blocks,
            receive_reads_live: options.receive_reads_live,
            delete_cursor_ignored: options.delete_cursor_ignored,
            live_count_ignores_trim: options.live_count_ignores_trim,
            allocation_hint_late: options.allocation_hint_late,
        };
        #[cfg(not(feature = "testing"))]
        {
            let _ = options;
            Self::default()
        }
    }
}

impl Default for MapOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 512 << 20,
            depth: 4,
            segment_slots: 64,
            sync_pages_max: None,
            release: ReleaseRule::AfterTwoSyncs,
            record_max: None,
            read_only: false,
            leaf_format: LeafFormat::Sectored,
            clock: crate::types::now_unix_secs,
            #[cfg(feature = "testing")]
            skip_page_verification: false,
            #[cfg(feature = "testing")]
            skip_record_fit_check: false,
            #[cfg(feature = "testing")]
            rewind_without_log_invalidation: false,
            #[cfg(feature = "testing")]
            sut_decrement_at_write_time: false,
            #[cfg(feature = "testing")]
            foreground_into_reserve: false,
            #[cfg(feature = "testing")]
            release_held_segment: false,
            #[cfg(feature = "testing")]
            free_shared_page: false,
            #[cfg(feature = "testing")]
            drop_held_block: false,
            #[cfg(feature = "testing")]
            replay_drops_held_block: false,
            #[cfg(feature = "testing")]
            recovery_point_in_live_cache: false,
            #[cfg(feature = "testing")]
            pin_only_on_hold: false,
            #[cfg(feature = "testing")]
            delete_ignores_child: false,
            #[cfg(feature = "testing")]
            rollback_keeps_live_cache: false,
            #[cfg(feature = "testing")]
            abort_keeps_blocks: false,
            #[cfg(feature = "testing")]
            receive_reads_live: false,
            #[cfg(feature = "testing")]
            delete_cursor_ignored: false,
            #[cfg(feature = "testing")]
            live_count_ignores_trim: false,
            #[cfg(feature = "testing")]
            allocation_hint_late: false,
            #[cfg(feature = "testing")]
            stale_sectors: false,
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

    fn planted_into_reserve(&self) -> bool {
        #[cfg(feature = "testing")]
        return self.foreground_into_reserve;
        #[cfg(not(feature = "testing"))]
        false
    }

    fn planted_sut_at_write(&self) -> bool {
        #[cfg(feature = "testing")]
        return self.sut_decrement_at_write_time;
        #[cfg(not(feature = "testing"))]
        false
    }

    fn planted_release_held(&self) -> bool {
        #[cfg(feature = "testing")]
        return self.release_held_segment;
        #[cfg(not(feature = "testing"))]
        false
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
    /// Pages of the previous tree it stopped referencing (and counted off: pages a
    /// recovery point still names are not).
    pub pages_freed: usize,
    /// Metadata segments the cleaner emptied into this sync's pages.
    pub metadata_victims: usize,
    /// Of those, segments still referenced after it (pages no live tree names: none when
    /// the victims are chosen right; pinned from then on).
    pub victims_left: usize,
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
    /// Members that did not hold the opened uberblock and received it.
    pub uberblock_restored: Vec<DeviceIndex>,
    /// Members whose chain was shorter and received the winner's copy.
    pub rereplicated: Vec<DeviceIndex>,
    /// Members the uberblock or the chain could not be written to, with the error (the
    /// caller's fault policy decides: the pool takes them out of service or refuses the open).
    pub rereplication_failed: Vec<(DeviceIndex, String)>,
    /// Segments freed by the newest syncs and held back from reuse until two more syncs are
    /// durable (so a rewind can still open the tree before the newest).
    pub pending_segments: u64,
    /// Usage-table leaves read (none for an empty pool: open reads no tree).
    pub usage_leaves_read: usize,
    /// Every sequence committed before this open (a sync's uberblock, a log record of the
    /// chain, or any valid record found on the members read) is below this: what an away
    /// member's `since_sequence` is judged against (docs/FORMAT.md V4.16 §3, "Away members
    /// that hold every commit"). Not [`MapStore::next_sequence`], which skips one more (a
    /// sync may have taken it without its uberblock becoming durable).
    pub committed_below: u64,
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

impl RowInfo {
    /// Its shard crcs as a slot record holds them: 0 for the never-written data chunks
    /// `n..K` of a narrow row.
    fn recorded_crcs(&self, geometry: &Geometry) -> Vec<u32> {
        let (k, n) = (geometry.data_chunks(), self.owners.len());
        self.crcs
            .iter()
            .enumerate()
            .map(|(s, crc)| {
                let unwritten = geometry
                    .shard_data_chunk(ShardIndex(s))
                    .is_some_and(|j| j >= n && j < k);
                if unwritten {
                    0
                } else {
                    *crc
                }
            })
            .collect()
    }
}

/// The trees a sync writes with pages counted in the usage table as it goes.
#[derive(Debug, Clone, Copy)]
enum TreeChoice {
    Map,
    Summary,
    RecoveryPoints,
}

/// A written row of a data slot, as the map records it (scrub and rebuild).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenRow {
    /// The row in the slot.
    pub row: u16,
    /// Its birth (the sequence that wrote it).
    pub birth: u64,
    /// Data blocks written (`n < K`: a narrow row, chunks `n..K` never written).
    pub n: usize,
    /// The crc of every shard-block, in shard order (0 for never-written ones).
    pub crcs: Vec<u32>,
    /// `(owner, pointer)` of each data block, the pointer being the one its owner was given
    /// when the row was written (FORMAT.md V4.6, "Cleaner": the block is live iff the owner's
    /// pointer is still exactly this one). Blocks written as forwarding targets are left out.
    pub blocks: Vec<(u64, BlockPointer)>,
}

/// The durable, paged map of one pool.
#[derive(Debug)]
pub struct MapStore {
    pool: [u8; 16],
    timeline: u64,
    geometry: Geometry,
    map: RadixTree,
    /// Tree 2: the usage table's pages (records resident in `segments`).
    sut: RadixTree,
    segments: SegmentTable,
    txg: u64,
    next_sequence: u64,
    log: IntentLog,
    /// Keys changed by replayed records and not yet drained into the tree: the newest pointer,
    /// and what the tree must hold under it (checked when drained).
    overlay: BTreeMap<u64, (BlockPointer, BlockPointer)>,
    pending: BTreeMap<u64, Pending>,
    rows: BTreeMap<(u64, u16), RowInfo>,
    /// Tree 1: the slot summary (a record per data slot: rows, owners, every shard crc).
    summary: RadixTree,
    /// Rows noted (or replayed) since the last sync, which the next sync adds to the summary.
    unsummarized: BTreeMap<(u64, u16), RowInfo>,
    /// The slot rows are being handed out from, and its next row (none after an open: a
    /// slot's rows are always written from row 0 in one process).
    open_row: Option<(u64, u64)>,
    /// Data slots handed out at row 0 whose rows are not noted yet (a write on the devices,
    /// or one that failed). A sync records each with no rows, so that after a crash the
    /// record of the slot's earlier use (its segment was freed and taken again) does not
    /// describe the places the new rows overwrote (FORMAT.md V4.6, "Several groups on the
    /// devices").
    fresh_slots: BTreeSet<u64>,
    read_only: bool,
    /// [`MapOptions::clock`].
    clock: fn() -> u64,
    failed: bool,
    opened: OpenReport,
    planted_sut_at_write: bool,
    tolerate: Option<Tolerate>,
    /// [`MapStore::set_states_recorded`].
    states_gate: Option<StatesRecorded>,
    /// Tree 3: the recovery-point records (resident in `points`; FORMAT.md V4.10a).
    points_tree: RadixTree,
    /// Recovery points by key (`1..`), as of the last sync.
    points: BTreeMap<u64, RecoveryRecord>,
    /// The live line's head: its key ([`NO_KEY`]: none) and `S_head` (0: none). A pointer the
    /// live tree drops with birth ≤ `S_head` is held by a recovery point, not counted off.
    head: (u64, u64),
    /// What the running sync does to recovery points besides writing the trees.
    /// An unfinished receive: its key and record in tree 3 (FORMAT.md V4.10d).
    receiving: Option<(u64, RecoveryRecord)>,
    /// What readers see while a receive is unfinished: its base's map (`None` inside: an
    /// empty volume). `None`: no receive is unfinished, readers see the live map.
    receive_base: Option<Option<RecoveryPointMap>>,
    staged: Staged,
    /// Metadata segments in which the hold rule kept a page: the metadata cleaner cannot
    /// empty them (FORMAT.md V4.10a), so it does not pick them (this process).
    pinned_metadata: BTreeSet<u64>,
    planted_holds: PlantedHolds,
    /// The options the map was opened with (a recovery point's tree is read with them).
    options: MapOptions,
    /// The live map's data blocks that name a block (FORMAT.md V4.10f), in memory (changes
    /// since the last sync included); `None` for a pool that does not count them.
    live_blocks: Option<u64>,
}

/// A recovery point as [`MapStore::recovery_points`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPoint {
    /// Its key in tree 3.
    pub key: u64,
    /// Its name.
    pub name: String,
    /// Never reused.
    pub guid: u64,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// `S_X`: the sequence of the sync that wrote it (its blocks are born before it).
    pub sequence: u64,
    /// The txg of that sync.
    pub txg: u64,
    /// The recovery point before it on its line (`None`: the first).
    pub parent: Option<u64>,
    /// Holds: a held recovery point is not deleted (by a command or a retention policy).
    pub holds: u32,
    /// Taken automatically (before a rollback), not asked for by name.
    pub automatic: bool,
    /// Received from a stream (its guid and created are the sender's).
    pub received: bool,
    /// The data blocks it names (shared or not; FORMAT.md V4.10f), when counted.
    pub referenced: Option<u64>,
}

impl RecoveryPoint {
    fn of(key: u64, record: &RecoveryRecord) -> Self {
        Self {
            key,
            name: record.name.clone(),
            guid: record.guid,
            created: record.created,
            sequence: record.sequence,
            txg: record.txg,
            parent: (record.parent != NO_KEY).then_some(record.parent),
            holds: record.holds,
            automatic: record.flags & FLAG_AUTOMATIC != 0,
            received: record.flags & FLAG_RECEIVED != 0,
            referenced: (record.flags & FLAG_REFERENCED != 0).then_some(record.counters[0]),
        }
    }
}

/// What a recovery point alone holds: blocks and pages no other tree names (FORMAT.md
/// V4.10b), which its delete frees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PointUsage {
    /// Data blocks (4 KiB each).
    pub blocks: u64,
    /// Metadata pages (16 KiB each, on `tolerance + 1` members).
    pub pages: u64,
}

/// How far a delete in the background has come (FORMAT.md V4.10e).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteProgress {
    /// Map keys below it are decided (0: not started).
    pub cursor: u64,
    /// The map's keys: where the cursor ends.
    pub keys: u64,
    /// What it has freed so far.
    pub freed: PointUsage,
}

/// What one [`MapStore::delete_step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteStep {
    /// The recovery point being deleted.
    pub name: String,
    /// What this step freed.
    pub freed: PointUsage,
    /// Where the delete stands after it.
    pub progress: DeleteProgress,
    /// The recovery point is gone.
    pub done: bool,
}

/// Pages of a recovery point one delete step reads, at most (then it stops at a leaf's end):
/// a step under the exclusive lock stays within milliseconds.
pub const DELETE_STEP_PAGES: usize = 128;

/// What a delete counts off: how many blocks and pages a recovery point alone names, per
/// segment (a count per touched segment, not a number per block: a full-churn recovery point
/// at 16 TiB names 2^32 blocks).
#[derive(Debug, Clone, Default)]
struct Unique {
    blocks: BTreeMap<u64, u64>,
    pages: BTreeMap<u64, u64>,
}

impl Unique {
    fn usage(&self) -> PointUsage {
        PointUsage {
            blocks: self.blocks.values().sum(),
            pages: self.pages.values().sum(),
        }
    }
}

/// The hold rule (FORMAT.md V4.10a, V4.10e): whether a block or page the live map drops is
/// still named by a recovery point, so not counted off.
#[derive(Debug, Clone, Copy)]
struct HoldRule {
    /// `S_head` (0: no recovery point on the live line).
    s_head: u64,
    /// While the head is being deleted: its parent's `S` and its cursor. A position wholly
    /// below the cursor is decided: the head no longer names what is born after its parent.
    released: Option<(u64, u64)>,
}

impl HoldRule {
    /// Whether a pointer born at `birth`, at a position whose key range ends at `end`, is
    /// held.
    fn holds(&self, birth: u64, end: u64) -> bool {
        if self.s_head == 0 || birth > self.s_head {
            return false;
        }
        match self.released {
            Some((s_parent, cursor)) => birth <= s_parent || end > cursor,
            None => true,
        }
    }
}

/// What a sync does to recovery points besides writing the trees: at most one of these is
/// set, by the call that runs the sync (create, delete, hold, rollback), and cleared after it.
#[derive(Debug, Default)]
struct Staged {
    /// A recovery point to record: `(name, created, taken automatically)`.
    creating: Option<NewPoint>,
    /// A recovery point to delete, with what it alone names (at the positions its last
    /// step decides).
    deleting: Option<(u64, Unique)>,
    /// A delete's step before its last: what it counts off (its record, with the cursor
    /// moved, is `amending`).
    freeing: Option<Unique>,
    /// A recovery point's record to rewrite (its holds changed).
    amending: Option<(u64, RecoveryRecord)>,
    /// The recovery point to roll the live map back to.
    rolling_back: Option<u64>,
    /// A receive begins: its record (FORMAT.md V4.10d), written at the lowest free key.
    receiving: Option<RecoveryRecord>,
    /// The unfinished receive's record is freed (it finished, or was aborted).
    ending_receive: bool,
    /// An aborted receive: what the live map alone names (counted off), and the live map
    /// goes back to the head's root.
    discarding: Option<Unique>,
}

/// A recovery point a sync is to record.
#[derive(Debug)]
struct NewPoint {
    name: String,
    created: u64,
    /// [`FLAG_AUTOMATIC`], [`FLAG_RECEIVED`].
    flags: u16,
    /// The sender's guid for a received recovery point; else one of this pool's.
    guid: Option<u64>,
}

/// A delete staged in the sync that makes it durable: the key removed, the child re-parented
/// (key and its new record), the live line's new head `(key, S_head)`.
#[derive(Debug)]
struct StagedDelete {
    key: u64,
    child: Option<(u64, RecoveryRecord)>,
    head: Option<(u64, u64)>,
}

/// The map of a recovery point, read-only, through a page cache of its own (FORMAT.md
/// V4.10a: never the live map's, whose keys name a position, not a version).
#[derive(Debug)]
pub struct RecoveryPointMap {
    tree: RadixTree,
}

impl RecoveryPointMap {
    /// The pointer logical block `key` had when the recovery point was taken.
    ///
    /// # Errors
    /// See [`RadixTree::get`].
    pub fn get(&self, devices: &[Option<SharedDevice>], key: u64) -> Result<BlockPointer> {
        self.tree.get(devices, key)
    }
}

/// A recovery point's guid (FORMAT.md V4.10a): `S_X` mixed by a bijection of 64-bit words
/// keyed by the pool's id, so it is never reused within a pool (`S_X` never repeats, a rewind
/// included) and differs across pools but for chance, and a replayed run gets the same.
fn point_guid(pool: &[u8; 16], s_x: u64) -> u64 {
    // The finalizer of SplitMix64: invertible (xor-shifts and odd multipliers).
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut halves = [0u64; 2];
    for (half, bytes) in halves.iter_mut().zip(pool.chunks_exact(8)) {
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        *half = u64::from_le_bytes(word);
    }
    mix(mix(halves[0] ^ mix(halves[1])) ^ s_x)
}

/// Depth of tree 3: 64 records per leaf, 1024 leaves, keys `0 .. 65,536`.
const POINTS_DEPTH: u8 = 2;
/// Leaf bits of tree 3 (256-byte records).
const POINTS_LEAF_BITS: u32 = (PAGE_BYTES / RECOVERY_RECORD_BYTES).trailing_zeros();
/// Pages a recovery point's own cache holds while it is read or walked.
const POINT_CACHE_PAGES: usize = 64;

/// The owner's decision about a member that failed a metadata write or flush: `true` when it
/// took the member out of service (durably, in its superblocks), so no later open reads
/// metadata from it and the map may go on without it; `false` fails the operation (and the
/// map must then be reopened). Without one, every failure fails the operation.
#[derive(Clone)]
pub struct Tolerate(pub Arc<TolerateFn>);

/// `(member, byte offset, error) -> tolerated`.
pub type TolerateFn = dyn Fn(usize, Option<u64>, &DeviceError) -> bool + Send + Sync;

/// The owner's check before anything is made durable (a log record or a tree sync): `Ok`
/// when every member that left service is recorded so in the superblocks of every member in
/// service (the owner writes that record now if it is owed), else the error to return, with
/// nothing written. A commit that went on without the record could, after a crash, let the
/// member that left open as current though it missed the commit (docs/FORMAT.md V4.16 §3,
/// review (5)): every commit checks, not only a flush's.
#[derive(Clone)]
pub struct StatesRecorded(pub Arc<StatesRecordedFn>);

/// `() -> Ok, or why nothing may be made durable now`.
pub type StatesRecordedFn = dyn Fn() -> Result<()> + Send + Sync;

impl std::fmt::Debug for StatesRecorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatesRecorded")
    }
}

impl std::fmt::Debug for Tolerate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tolerate")
    }
}

fn flush_all(devices: &[Option<SharedDevice>]) -> Result<()> {
    for (device, outcome) in devices.iter().zip(flush_each(devices)) {
        if let (Some(device), Some(Err(e))) = (device, outcome) {
            return Err(super::device_error(device, None, e));
        }
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

/// Zero the first 4 KiB of each record `(member, half, offset, _)` of `beyond` on its member,
/// then flush each such member (so no later walk can reach it).
fn erase_records(
    devices: &[Option<SharedDevice>],
    geometry: &Geometry,
    beyond: &[(DeviceIndex, u8, u64, u64)],
) -> std::result::Result<(), String> {
    let zeros = vec![0u8; 4096];
    let mut touched: Vec<usize> = Vec::new();
    for (member, half, offset, sequence) in beyond {
        let Some(Some(device)) = devices.get(member.0) else {
            continue;
        };
        let at = geometry.log_halves()[usize::from(*half)] + offset;
        device
            .write_at(at, &zeros)
            .map_err(|e| format!("record {sequence} on {} at byte {at}: {e}", device.name()))?;
        touched.push(member.0);
    }
    touched.sort_unstable();
    touched.dedup();
    for member in touched {
        if let Some(Some(device)) = devices.get(member) {
            device
                .flush()
                .map_err(|e| format!("flush of {}: {e}", device.name()))?;
        }
    }
    Ok(())
}

fn same_old(pointer: &BlockPointer, old: (u64, u64)) -> bool {
    old_of(pointer) == old
}

impl MapStore {
    fn store(pool: [u8; 16], geometry: &Geometry, options: &MapOptions) -> Result<PageStore> {
        let store = PageStore::new(pool, geometry.clone())?.with_leaf_format(options.leaf_format);
        #[cfg(feature = "testing")]
        let store = if options.stale_sectors {
            store.with_planted_stale_sectors()
        } else {
            store
        };
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

    fn shape(geometry: &Geometry, options: &MapOptions) -> Result<SegmentShape> {
        let shape = SegmentShape::new(geometry, options.segment_slots)?;
        if shape.pages_per_segment == 0 {
            return Err(Error::InvalidConfig(format!(
                "chunks of {} bytes hold no 16 KiB metadata page",
                geometry.chunk_bytes
            )));
        }
        Ok(shape)
    }

    /// The usage tree of a pool of `shape` (its own cache: the records are resident in the
    /// table, so its leaves are held only while dirty), empty or with the root an uberblock
    /// names (refused when its depth is not the one the pool's segments need).
    fn usage_tree(
        pool: [u8; 16],
        geometry: &Geometry,
        options: &MapOptions,
        shape: &SegmentShape,
        root: Option<(u8, BlockPointer)>,
    ) -> Result<RadixTree> {
        let depth = RadixTree::depth_for(shape.segments, SUT_LEAF_BITS);
        let root = match root {
            Some((found, pointer)) if found == depth => pointer,
            Some((found, _)) => {
                return Err(Error::corrupt_metadata(format!(
                    "usage tree of depth {found}, the pool's {} segments need {depth}",
                    shape.segments
                )))
            }
            None => BlockPointer::hole(depth),
        };
        let leaves = usize::try_from(shape.segments.div_ceil(1 << SUT_LEAF_BITS)).unwrap_or(0);
        // Every leaf and its path may be dirty at once in one sync.
        let cache = Arc::new(PageCache::<PageKey>::new(
            (leaves + usize::from(depth) + 4) * 4 * RadixTree::page_bytes(),
        ));
        RadixTree::with_leaves(
            pool,
            Tree::SegmentUsage,
            SUT_LEAF_BITS,
            depth,
            root,
            cache,
            Self::store(pool, geometry, options)?,
        )
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

    /// `sync_pages_max` (FORMAT.md V4.2, V4.7): the most pages one sync writes, `min(8192,
    /// pages of all trees at full use / 8)`, at least 16, and raised towards 1,024 as far as
    /// three syncs of it fit in a sixteenth of the segments (a small pool would otherwise
    /// sync every hundred random writes: mirror:2 on two 1 GiB members had 96 and ran 6.2
    /// syncs per 1,000 writes); the cache lets map and summary dirty no more than this before
    /// a sync.
    fn sync_pages_max(geometry: &Geometry, options: &MapOptions, shape: &SegmentShape) -> usize {
        if let Some(pages) = options.sync_pages_max {
            return pages.max(8);
        }
        let blocks = shape.segments * shape.blocks_per_segment;
        let summary_leaves =
            geometry.slots / (PAGE_BYTES / Self::slot_shape(geometry).record_bytes()) as u64;
        let usage_leaves = shape.segments.div_ceil(1 << SUT_LEAF_BITS);
        let at_full_use = blocks / 1024 + summary_leaves + usage_leaves;
        // The most pages a sync may take while 3 × S_sync stays within segments / 16 (one
        // path per tree counted as 16 pages).
        let per_sync = shape.segments / 16 / 3;
        let affordable = per_sync
            .saturating_sub(1)
            .saturating_mul(shape.pages_per_segment)
            .saturating_sub(usage_leaves + 16);
        let pages = (at_full_use / 8).max(affordable.min(1024));
        usize::try_from(pages.clamp(16, 8192)).unwrap_or(8192)
    }

    /// The cache of the map and the slot summary: interior pages pinned, at most
    /// `sync_pages_max` dirty.
    fn page_cache(
        geometry: &Geometry,
        options: &MapOptions,
        shape: &SegmentShape,
    ) -> Arc<PageCache<PageKey>> {
        Arc::new(
            PageCache::<PageKey>::new(options.cache_bytes)
                .with_pinned(|key| key.1 >= 2)
                .with_dirty_limit(Self::sync_pages_max(geometry, options, shape)),
        )
    }

    /// The hard reserve (FORMAT.md V4.6): `3 × S_sync + S_victim + S_open + S_slop` segments,
    /// with `S_sync = ceil(D / pages per segment) + 1` for `D` the pages one sync may write:
    /// what the cache lets map and summary dirty (at most `sync_pages_max`), every usage leaf
    /// and one path per tree; `S_victim = 1`, `S_open = 4`, `S_slop = segments / 1024` between
    /// 8 and 1,024 (at most a sixteenth of a small pool's segments, at least 2).
    ///
    /// Returns the reserve and the syncs' share of it, `3 × S_sync`: the data cleaner may take
    /// the rest but for three open segments (`S_victim`, its own open segment, the slop).
    fn hard_reserve(
        options: &MapOptions,
        shape: &SegmentShape,
        dirty: usize,
        depths: u64,
    ) -> (u64, u64) {
        if options.planted_into_reserve() {
            return (0, 0);
        }
        let usage_leaves = shape.segments.div_ceil(1 << SUT_LEAF_BITS);
        let pages = dirty as u64 + usage_leaves + depths;
        let per_sync = pages.div_ceil(shape.pages_per_segment) + 1;
        let slop = (shape.segments / 1024)
            .clamp(8, 1024)
            .min(shape.segments / 16)
            .max(2);
        (3 * per_sync + 1 + 4 + slop, 3 * per_sync)
    }

    /// The shape of this pool's slot records.
    fn slot_shape(geometry: &Geometry) -> SlotShape {
        SlotShape {
            data_chunks: geometry.data_chunks(),
            width: geometry.width(),
            rows: usize::try_from(geometry.chunk_bytes / 4096).unwrap_or(1),
            copies: match geometry.layout {
                crate::geometry::Layout::ReedSolomon { .. } => 1,
                crate::geometry::Layout::Mirror { copies }
                | crate::geometry::Layout::Raid10 { copies } => copies,
            },
        }
    }

    /// Leaf fanout of the slot summary: as many records as fit a 16 KiB page.
    fn summary_leaf_bits(geometry: &Geometry) -> u32 {
        let per_leaf = PAGE_BYTES / Self::slot_shape(geometry).record_bytes();
        per_leaf.max(1).trailing_zeros()
    }

    /// The slot summary tree (sharing the map's cache).
    fn summary_tree(
        pool: [u8; 16],
        geometry: &Geometry,
        options: &MapOptions,
        cache: &Arc<PageCache<PageKey>>,
        root: Option<(u8, BlockPointer)>,
    ) -> Result<RadixTree> {
        let bits = Self::summary_leaf_bits(geometry);
        let depth = RadixTree::depth_for(geometry.slots, bits);
        let root = match root {
            Some((found, pointer)) if found == depth => pointer,
            Some((found, _)) => {
                return Err(Error::corrupt_metadata(format!(
                    "slot summary of depth {found}, the pool's {} slots need {depth}",
                    geometry.slots
                )))
            }
            None => BlockPointer::hole(depth),
        };
        RadixTree::with_leaves(
            pool,
            Tree::SlotSummary,
            bits,
            depth,
            root,
            Arc::clone(cache),
            Self::store(pool, geometry, options)?,
        )
    }

    /// Tree 3, the recovery points (its own small cache: the records are resident in the
    /// map, so its pages are held only while dirty), empty or with the root an uberblock
    /// names: depth 2, or a hole of depth 1 (what a pool made before recovery points writes).
    fn points_tree(
        pool: [u8; 16],
        geometry: &Geometry,
        options: &MapOptions,
        root: Option<(u8, BlockPointer)>,
    ) -> Result<RadixTree> {
        let root = match root {
            Some((POINTS_DEPTH, pointer)) => pointer,
            None => BlockPointer::hole(POINTS_DEPTH),
            Some((1, pointer)) if pointer.is_hole() => BlockPointer::hole(POINTS_DEPTH),
            Some((found, _)) => {
                return Err(Error::corrupt_metadata(format!(
                    "recovery-point tree of depth {found}, not {POINTS_DEPTH}"
                )))
            }
        };
        // Every page of the tree may be dirty in one sync (the metadata cleaner moves them
        // all); pages are held only as used.
        let pages = 4 * (2 + (1 << 16 >> POINTS_LEAF_BITS));
        let cache = Arc::new(PageCache::<PageKey>::new(pages * RadixTree::page_bytes()));
        RadixTree::with_leaves(
            pool,
            Tree::RecoveryPoints,
            POINTS_LEAF_BITS,
            POINTS_DEPTH,
            root,
            cache,
            Self::store(pool, geometry, options)?,
        )
    }

    /// Read every record of tree 3: the recovery points by key, the live line's head
    /// `(key, S_head)`, and an unfinished receive's record (at most one).
    fn load_points(tree: &RadixTree, devices: &[Option<SharedDevice>]) -> Result<Loaded> {
        let mut points = BTreeMap::new();
        let mut receiving = None;
        let mut head = (NO_KEY, 0);
        let mut head_guid = 0;
        let leaves = tree.leaves(devices)?;
        for (first, leaf) in &leaves {
            for (i, bytes) in leaf.chunks_exact(RECOVERY_RECORD_BYTES).enumerate() {
                let key = first + i as u64;
                let record = RecoveryRecord::decode(bytes).map_err(|e| {
                    Error::corrupt_metadata(format!("recovery-point record {key}: {e}"))
                })?;
                match (key, record) {
                    (_, None) => {}
                    (0, Some(live)) if live.kind == RecoveryKind::Live => {
                        head = (live.parent, live.sequence);
                        head_guid = live.parent_guid;
                    }
                    (1.., Some(point)) if point.kind == RecoveryKind::Point => {
                        points.insert(key, point);
                    }
                    (1.., Some(receive))
                        if receive.kind == RecoveryKind::Receive && receiving.is_none() =>
                    {
                        receiving = Some((key, receive));
                    }
                    (_, Some(other)) => {
                        return Err(Error::corrupt_metadata(format!(
                            "recovery-point record {key} of kind {:?}",
                            other.kind
                        )))
                    }
                }
            }
        }
        tree.forget_clean_leaves(leaves.iter().map(|(first, _)| *first));
        let named = |key: u64| {
            points
                .get(&key)
                .map(|p: &RecoveryRecord| (p.sequence, p.guid))
        };
        if head.0 != NO_KEY && named(head.0) != Some((head.1, head_guid)) {
            return Err(Error::corrupt_metadata(format!(
                "the live line's head is recovery point {} with S_head {}, which tree 3 does \
                 not hold so",
                head.0, head.1
            )));
        }
        if head.0 == NO_KEY && (head.1 != 0 || !points.is_empty()) {
            return Err(Error::corrupt_metadata(
                "recovery points without a head on the live line",
            ));
        }
        Self::check_line(&points)?;
        if let Some((key, receive)) = &receiving {
            // Its base is the head it began on: nothing but the receive wrote the live map
            // since, so the head cannot have moved.
            let base = (receive.parent, receive.parent_guid, receive.sequence);
            let head_now = (head.0, named(head.0).map_or(0, |(_, guid)| guid), head.1);
            if base != head_now {
                return Err(Error::corrupt_metadata(format!(
                    "the unfinished receive at tree-3 key {key} began on head {} (guid {:#x}, \
                     S {}), but the live line's head is {} (guid {:#x}, S {})",
                    base.0, base.1, base.2, head_now.0, head_now.1, head_now.2
                )));
            }
        }
        Ok((points, head, receiving))
    }

    /// The recovery points must form a tree of lines (rollback makes branches): each parent
    /// exists, is older and has the recorded guid. A delete relies on it (a parent it could
    /// not find would count as none, and free what the parent holds).
    fn check_line(points: &BTreeMap<u64, RecoveryRecord>) -> Result<()> {
        let mut names = BTreeSet::new();
        // Deletes (FORMAT.md V4.10e): one walk at a time, its cursor at a leaf's end, and
        // nothing held is being deleted (a corrupt cursor would free what a tree names, or
        // leak what it no longer does).
        let leaf = crate::format::v4::POINTERS_PER_PAGE as u64;
        let started: Vec<(&u64, u64)> = points
            .iter()
            .filter_map(|(key, p)| p.deleting.filter(|c| *c > 0).map(|c| (key, c)))
            .collect();
        if started.len() > 1 {
            return Err(Error::corrupt_metadata(format!(
                "tree 3: {} recovery points are half deleted (one walk runs at a time)",
                started.len()
            )));
        }
        for (key, point) in points {
            if let Some(cursor) = point.deleting {
                if cursor % leaf != 0 || point.holds > 0 {
                    return Err(Error::corrupt_metadata(format!(
                        "recovery point {key} in tree 3 is being deleted with cursor {cursor} \
                         (not at a leaf's end) or {} holds",
                        point.holds
                    )));
                }
            }
            if !names.insert(point.name.as_str()) {
                return Err(Error::corrupt_metadata(format!(
                    "recovery point {key} in tree 3: the name {:?} is another's too",
                    point.name
                )));
            }
            let fine = if point.parent == NO_KEY {
                point.parent_guid == 0
            } else {
                points.get(&point.parent).is_some_and(|parent| {
                    parent.guid == point.parent_guid && parent.sequence < point.sequence
                })
            };
            if !fine {
                return Err(Error::corrupt_metadata(format!(
                    "recovery point {key} in tree 3: its parent {} (guid {:#x}) is not an older \
                     recovery point",
                    point.parent, point.parent_guid
                )));
            }
        }
        Ok(())
    }

    /// The slot record of data slot `slot` as of the last sync (`None`: no row written).
    ///
    /// # Errors
    /// When its page cannot be read or the record does not decode.
    pub fn slot_record(
        &self,
        devices: &[Option<SharedDevice>],
        slot: u64,
    ) -> Result<Option<SlotRecord>> {
        let Some(bytes) = self.summary.get_record(devices, slot)? else {
            return Ok(None);
        };
        SlotRecord::decode(Self::slot_shape(&self.geometry), &bytes)
            .map_err(|e| Error::corrupt_metadata(format!("slot record of slot {slot}: {e}")))
    }

    /// Add the rows noted since the last sync to their slot records (read, amended, staged
    /// dirty in the summary tree). A row already recorded with the same birth is skipped (a
    /// chain replayed over a sync that recorded it); with another birth the summary and the
    /// log disagree.
    fn summarize(&mut self, devices: &[Option<SharedDevice>], birth: u64) -> Result<usize> {
        let mut written = 0;
        let rows = std::mem::take(&mut self.unsummarized);
        let shape = Self::slot_shape(&self.geometry);
        let mut slot_rows: BTreeMap<u64, Vec<(u16, RowInfo)>> = BTreeMap::new();
        for ((slot, row), info) in rows {
            slot_rows.entry(slot).or_default().push((row, info));
        }
        for slot in std::mem::take(&mut self.fresh_slots) {
            slot_rows.entry(slot).or_default();
        }
        for (slot, rows) in slot_rows {
            let mut record = self
                .slot_record(devices, slot)?
                .unwrap_or_else(|| SlotRecord::new(shape));
            if rows.is_empty() {
                // Handed out, nothing noted: it holds no row of this use.
                if record.rows_written() == 0 {
                    continue;
                }
                record = SlotRecord::new(shape);
            }
            for (row, info) in rows {
                let row = usize::from(row);
                if row == 0 && record.rows_written() > 0 && record.row(0).birth != info.birth {
                    // The slot's segment was freed and taken again: a new record (the old
                    // one described rows no tree references).
                    record = SlotRecord::new(shape);
                }
                if row < record.rows_written() {
                    if record.row(row).birth == info.birth {
                        continue;
                    }
                    return Err(Error::corrupt_metadata(format!(
                        "slot {slot} row {row}: recorded with birth {}, the log says {}",
                        record.row(row).birth,
                        info.birth
                    )));
                }
                let owners: Vec<(Option<u64>, bool)> =
                    info.owners.iter().map(|o| (Some(*o), false)).collect();
                record
                    .add_row(row, info.birth, &owners, &info.crcs)
                    .map_err(|e| Error::corrupt_metadata(format!("slot {slot}: {e}")))?;
            }
            match self.summary.set_record(devices, slot, &record.encode()) {
                Ok(()) => {}
                Err(SetError::Failed(e)) => return Err(e),
                Err(SetError::NeedsSync(_)) => {
                    // Write what the cache holds of the summary (pages of no durable tree
                    // yet) and go on.
                    written += self.write_dirty(devices, birth)?.0;
                    if let Err(e) = self.summary.set_record(devices, slot, &record.encode()) {
                        return Err(match e {
                            SetError::Failed(e) => e,
                            SetError::NeedsSync(_) => Error::corrupt_metadata(
                                "the page cache is too small for one path of the summary",
                            ),
                        });
                    }
                }
            }
        }
        Ok(written)
    }

    fn uberblock(&self, txg: u64, s_sync: u64, log_half: u8, unlogged: bool) -> Uberblock {
        let depths = [
            self.map_depth(),
            self.summary.root().level(),
            self.sut.root().level(),
            POINTS_DEPTH,
            1,
            1,
        ];
        let mut roots = depths.map(BlockPointer::hole);
        roots[0] = self.map.root();
        roots[1] = self.summary.root();
        roots[2] = self.sut.root();
        roots[3] = self.points_tree.root();
        let (data, meta) = self.segments.open_segments();
        Uberblock {
            pool: self.pool,
            txg,
            s_sync,
            log_half,
            written_at: (self.clock)(),
            roots,
            next_sequence: s_sync + 1,
            timeline: self.timeline,
            depths,
            open_segments: [data, None, None, meta],
            unlogged,
            live_blocks: self.live_blocks,
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
        let shape = Self::shape(geometry, options)?;
        let cache = Self::page_cache(geometry, options, &shape);
        let dirty = cache.dirty_limit();
        let store = Self::store(pool, geometry, options)?;
        let sut = Self::usage_tree(pool, geometry, options, &shape, None)?;
        let summary = Self::summary_tree(pool, geometry, options, &cache, None)?;
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
        let depths = u64::from(options.depth)
            + u64::from(summary.root().level())
            + u64::from(sut.root().level());
        let mut segments = SegmentTable::new(shape, options.release);
        segments.ignore_holds(options.planted_release_held());
        let (reserve, sync_share) = Self::hard_reserve(options, &shape, dirty, depths);
        segments.set_reserve(reserve, sync_share);
        let points_tree = Self::points_tree(pool, geometry, options, None)?;
        let this = Self {
            pool,
            timeline,
            geometry: geometry.clone(),
            map,
            summary,
            sut,
            segments,
            txg: 0,
            next_sequence: 2,
            log: Self::intent_log(pool, timeline, geometry, options, position),
            overlay: BTreeMap::new(),
            pending: BTreeMap::new(),
            rows: BTreeMap::new(),
            unsummarized: BTreeMap::new(),
            fresh_slots: BTreeSet::new(),
            open_row: None,
            read_only: false,
            clock: options.clock,
            failed: false,
            opened: OpenReport::default(),
            planted_sut_at_write: options.planted_sut_at_write(),
            tolerate: None,
            states_gate: None,
            points_tree,
            points: BTreeMap::new(),
            head: (NO_KEY, 0),
            receiving: None,
            receive_base: None,
            staged: Staged::default(),
            pinned_metadata: BTreeSet::new(),
            planted_holds: PlantedHolds::of(options),
            options: options.clone(),
            live_blocks: Some(0),
        };
        let failed = write_uberblock(devices, geometry, &this.uberblock(0, 1, 0, false));
        if let Some((device, why)) = failed.first() {
            return Err(Error::corrupt_metadata(format!("member {device}: {why}")));
        }
        flush_all(devices)?;
        Ok(this)
    }

    /// The map of uberblock `uberblock` with the log chain `replay` applied to its overlay.
    /// Allocation comes from the usage table the uberblock names (its leaves are read; no
    /// tree is walked): segments the last syncs freed stay held back by the release rule, so
    /// the tree before the newest stays intact for a rewind.
    fn assemble(
        devices: &[Option<SharedDevice>],
        geometry: &Geometry,
        timeline: u64,
        options: &MapOptions,
        uberblock: &Uberblock,
        replay: &Replay,
    ) -> Result<Self> {
        let pool = uberblock.pool;
        // Trees 4 and 5 (deadlists, forwarding: FORMAT.md V4.4) are not written by this
        // build. A pool whose uberblock names one was written by a later build: this one
        // would neither keep their blocks nor write their roots back (a sync writes holes
        // there), so it refuses the pool rather than destroy them.
        if let Some(tree) = (4..TREES).find(|&t| !uberblock.roots[t].is_hole()) {
            return Err(Error::Unsupported {
                operation: "opening".into(),
                version: 4,
                reason: format!(
                    "its uberblock (txg {}) names a root of tree {tree} ({}), which this build does not keep; open it with the build that wrote it",
                    uberblock.txg,
                    ["", "", "", "recovery points", "deadlists", "forwarding"][tree]
                ),
            });
        }
        let shape = Self::shape(geometry, options)?;
        let cache = Self::page_cache(geometry, options, &shape);
        let dirty = cache.dirty_limit();
        let store = Self::store(pool, geometry, options)?;
        let depth = uberblock.depths[0];
        let summary = Self::summary_tree(
            pool,
            geometry,
            options,
            &cache,
            Some((uberblock.depths[1], uberblock.roots[1])),
        )?;
        let map = RadixTree::new(pool, Tree::Map, depth, uberblock.roots[0], cache, store)?;
        // A root no copy verifies refuses the open (`open --rewind` decides).
        map.read_root(devices)?;
        summary.read_root(devices)?;
        let sut = Self::usage_tree(
            pool,
            geometry,
            options,
            &shape,
            Some((uberblock.depths[2], uberblock.roots[2])),
        )?;
        let leaves = sut.leaves(devices)?;
        let mut segments = SegmentTable::load(
            shape,
            options.release,
            uberblock.txg,
            geometry.pages_per_slot(),
            &leaves,
        )?;
        segments.ignore_holds(options.planted_release_held());
        let depths =
            u64::from(depth) + u64::from(summary.root().level()) + u64::from(sut.root().level());
        let (reserve, sync_share) = Self::hard_reserve(options, &shape, dirty, depths);
        segments.set_reserve(reserve, sync_share);
        sut.forget_clean_leaves(leaves.iter().map(|(first, _)| *first));
        let points_tree = Self::points_tree(
            pool,
            geometry,
            options,
            Some((uberblock.depths[3], uberblock.roots[3])),
        )?;
        let (points, head, receiving) = Self::load_points(&points_tree, devices)?;
        debug_assert_eq!(TREES, 6);
        let mut this = Self {
            pool,
            timeline,
            geometry: geometry.clone(),
            map,
            summary,
            sut,
            txg: uberblock.txg,
            // `end + 1` may have been taken by a sync whose uberblock never became durable.
            next_sequence: uberblock.next_sequence.max(replay.end.last + 2),
            log: Self::intent_log(pool, timeline, geometry, options, replay.end),
            overlay: BTreeMap::new(),
            pending: BTreeMap::new(),
            rows: BTreeMap::new(),
            unsummarized: BTreeMap::new(),
            fresh_slots: BTreeSet::new(),
            open_row: None,
            read_only: options.read_only,
            clock: options.clock,
            failed: false,
            opened: OpenReport {
                txg: uberblock.txg,
                records_replayed: replay.chain.len(),
                overlay_keys: 0,
                log_bytes_read: replay.bytes_read.clone(),
                uberblock_restored: Vec::new(),
                rereplicated: Vec::new(),
                rereplication_failed: Vec::new(),
                pending_segments: segments.pending_segments(),
                usage_leaves_read: leaves.len(),
                committed_below: uberblock
                    .next_sequence
                    .max(replay.end.last + 1)
                    .max(replay.highest_sequence + 1),
            },
            segments,
            planted_sut_at_write: options.planted_sut_at_write(),
            tolerate: None,
            states_gate: None,
            points_tree,
            points,
            head,
            receiving: None,
            receive_base: None,
            live_blocks: uberblock.live_blocks,
            staged: Staged::default(),
            pinned_metadata: BTreeSet::new(),
            planted_holds: PlantedHolds::of(options),
            options: options.clone(),
        };
        this.set_receiving(receiving)?;
        this.apply_chain(replay)?;
        this.opened.overlay_keys = this.overlay.len();
        this.resume_data_segment(uberblock, replay);
        Ok(this)
    }

    /// Go on filling the data segment that was open. Rows are handed out slot by slot from one
    /// segment at a time, so at most one segment the chain names is not full: the one the last
    /// record with rows wrote into, continued after its highest replayed slot (or its recorded
    /// fill, if higher). With no row in the chain, the uberblock's open data segment goes on at
    /// its recorded fill. Slots past that point hold no committed row.
    fn resume_data_segment(&mut self, uberblock: &Uberblock, replay: &Replay) {
        let per = self.segments.shape().segment_slots;
        let mut highest: BTreeMap<u64, u64> = BTreeMap::new();
        let mut last_record_segments = BTreeSet::new();
        for link in &replay.chain {
            let mut segments = BTreeSet::new();
            for entry in &link.record.entries {
                if let LogEntry::Row { slot, .. } = entry {
                    let at = highest.entry(slot / per).or_insert(0);
                    *at = (*at).max(slot % per);
                    segments.insert(slot / per);
                }
            }
            if !segments.is_empty() {
                last_record_segments = segments;
            }
        }
        let recorded = |segment: u64| {
            let record = self.segments.record(segment);
            if record.state == SegmentState::OpenData {
                u64::from(record.slots_used)
            } else {
                0
            }
        };
        let resume = if highest.is_empty() {
            uberblock.open_segments[0].map(|segment| (segment, recorded(segment)))
        } else {
            last_record_segments
                .iter()
                .map(|segment| (*segment, (highest[segment] + 1).max(recorded(*segment))))
                .find(|(_, next)| *next < per)
        };
        if let Some((segment, next)) = resume {
            if next < per
                && (!highest.is_empty()
                    || self.segments.record(segment).state == SegmentState::OpenData)
            {
                self.segments.resume_data(segment, next);
            }
        }
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
                    let info = RowInfo {
                        birth: *birth,
                        owners: owners.clone(),
                        crcs: crcs.clone(),
                    };
                    self.unsummarized.insert((*slot, *row), info.clone());
                    rows.insert((*slot, *row), info);
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
        // The usage journal is re-created from the chain: +1 for each new block, -1 for each
        // old one (an intermediate version's +1 and -1 cancel), but for one a recovery point
        // holds (`S_head` is the opened tree 3's: every change of it is a sync).
        self.count_live(old.0 != ADDRESS_HOLE, pointer.address().is_some());
        if let Some(pbn) = pointer.address() {
            self.segments.block_delta(pbn, 1);
        }
        if old.0 != ADDRESS_HOLE
            && (!self.hold_rule().holds(old.1, key + 1)
                || self.planted_holds.replay_drops_held_block)
        {
            self.segments.block_delta(old.0, -1);
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
        let Some((uberblock, holders)) = rings.newest(timeline)? else {
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
        // A record beyond the chain that too few members in service hold cannot have been
        // acknowledged (docs/FORMAT.md V4.8, "Recovery at open", step 3a): it is passed over,
        // and the next commit writes over it. Any other refuses the open.
        //
        // Had it been acknowledged, each member in service lacking it lost it silently, and
        // that comes on top of the faults the disks already show whatever the record was:
        // positions out of service, and holders whose own chain does not reach it (a record
        // is written only once the one before it is flushed on every member in service, so
        // such a holder lost one it had flushed). When the shown faults are within the
        // tolerance and the lacking members take the sum beyond it, only a cut commit fits
        // within the tolerance (simulation seed 1800030: mirror:3 with one position out of
        // service, the lone holder's chain broken; the count of lacking members alone can
        // never exceed a mirror's tolerance). Beyond the tolerance already, the lacking
        // members alone decide, as before.
        let in_service = devices.iter().filter(|d| d.is_some()).count();
        let out_of_service = devices.len() - in_service;
        let holding = |sequence: u64| {
            let mut members: Vec<usize> = replay
                .beyond
                .iter()
                .filter(|b| b.3 == sequence)
                .map(|b| b.0 .0)
                .collect();
            members.sort_unstable();
            members.dedup();
            members
        };
        let reaches = |member: usize, sequence: u64| {
            replay
                .own_chains
                .iter()
                .any(|(m, chain)| m.0 == member && chain.contains(&sequence))
        };
        let unacknowledged = |sequence: u64| {
            let holders = holding(sequence);
            let tolerance = geometry.tolerance();
            let lacking = in_service.saturating_sub(holders.len());
            let broken = holders.iter().filter(|&&m| !reaches(m, sequence)).count();
            let shown = out_of_service + broken;
            lacking > tolerance || (shown <= tolerance && shown + lacking > tolerance)
        };
        let refused = replay.beyond.iter().find(|b| !unacknowledged(b.3));
        if let Some(dropped) = replay.beyond.first().filter(|_| refused.is_none()) {
            tracing::warn!(
                sequence = dropped.3,
                chain_end = replay.end.last,
                records = replay.beyond.len(),
                "log records beyond the chain held by too few members to have been acknowledged \
                 (a commit cut by a power loss on a member whose own chain is broken): passed over"
            );
        }
        if let Some((member, half, offset, sequence)) = refused {
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
        if !options.read_only && !replay.beyond.is_empty() {
            // Erased, flushed, before the chain is copied onto the member that holds one: the
            // copy mends that member's chain, and the record would then follow it at the next
            // open (or in a rewind) and be replayed. A read-only open leaves it (the chain
            // stays broken there).
            erase_records(devices, geometry, &replay.beyond).map_err(|error| {
                Error::CorruptMetadata {
                    device: None,
                    offset: None,
                    reason: format!(
                        "log records beyond the chain (never acknowledged) could not be erased \
                         ({error}); `open --rewind` drops them"
                    ),
                }
            })?;
        }
        let mut this = Self::assemble(devices, geometry, timeline, options, &uberblock, &replay)?;
        if !options.read_only {
            this.bring_up_to_date(devices, geometry, &uberblock, &holders, &replay);
        }
        Ok(this)
    }

    /// Step 4 of "Recovery at open" (docs/FORMAT.md V4.8): every member in service that lacks
    /// the opened uberblock gets it (both rings, flushed), then every member whose chain is
    /// shorter gets the winner's chain (flushed). After a power cut during a sync's uberblock
    /// writes, or during a commit's record writes, the members disagree about the newest
    /// durable state; this open serves the newest, so each member must be able to vouch for
    /// it alone (simulation seed 7072: a member left at the older uberblock later opened it,
    /// alone, and brought back blocks older than what this open had served and reported
    /// durable). A member that cannot be written is reported, not skipped silently: the
    /// caller's fault policy takes it out of service or refuses the open.
    fn bring_up_to_date(
        &mut self,
        devices: &[Option<SharedDevice>],
        geometry: &Geometry,
        uberblock: &Uberblock,
        holders: &[DeviceIndex],
        replay: &Replay,
    ) {
        let mut failed = Vec::new();
        let mut writable = devices.to_vec();
        for (index, slot) in writable.iter_mut().enumerate() {
            let Some(device) = slot else { continue };
            if holders.contains(&DeviceIndex(index)) {
                continue;
            }
            match super::ring::restore_uberblock(device, geometry, uberblock) {
                Ok(()) => self.opened.uberblock_restored.push(DeviceIndex(index)),
                Err(e) => {
                    failed.push((DeviceIndex(index), e.to_string()));
                    *slot = None;
                }
            }
        }
        let copy_failed = replay.rereplicate(&writable, geometry);
        self.opened.rereplicated = replay
            .lagging
            .iter()
            .filter(|m| writable.get(m.0).is_some_and(Option::is_some))
            .filter(|m| copy_failed.iter().all(|(f, _)| f != *m))
            .copied()
            .collect();
        failed.extend(copy_failed.into_iter().map(|(m, e)| (m, e.to_string())));
        self.opened.rereplication_failed = failed;
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

    /// Let `tolerate` decide about members that fail a metadata write or flush (see
    /// [`Tolerate`]).
    pub fn set_tolerate(&mut self, tolerate: Tolerate) {
        self.tolerate = Some(tolerate);
    }

    /// Let `gate` decide whether anything may be made durable now (see [`StatesRecorded`]):
    /// asked by every commit and tree sync before it writes.
    pub fn set_states_recorded(&mut self, gate: StatesRecorded) {
        self.states_gate = Some(gate);
    }

    /// The owner's [`StatesRecorded`] answer (`Ok` without one).
    fn states_recorded(&self) -> Result<()> {
        self.states_gate.as_ref().map_or(Ok(()), |gate| (gate.0)())
    }

    /// The hook set by [`MapStore::set_tolerate`], if any.
    #[must_use]
    pub fn tolerate(&self) -> Option<Tolerate> {
        self.tolerate.clone()
    }

    /// The tolerance hook in the shape a log append takes (owning its own handle, so the log
    /// can be borrowed mutably beside it).
    fn log_tolerance(&self) -> impl Fn(usize, u64, &DeviceError) -> bool {
        let tolerate = self.tolerate.clone();
        move |member, offset, error| {
            tolerate
                .as_ref()
                .is_some_and(|t| (t.0)(member, Some(offset), error))
        }
    }

    /// Whether the owner took `member` out of service after it failed a write at `offset`.
    fn tolerated(&self, member: usize, offset: Option<u64>, error: &DeviceError) -> bool {
        self.tolerate
            .as_ref()
            .is_some_and(|t| (t.0)(member, offset, error))
    }

    /// Flush every member in service; one that fails is left behind if the owner tolerates
    /// it.
    ///
    /// # Errors
    /// [`Error::Io`] naming the first member whose failure is not tolerated.
    pub fn flush_members(&self, devices: &[Option<SharedDevice>]) -> Result<()> {
        let outcomes = flush_each(devices);
        for (member, (device, outcome)) in devices.iter().zip(outcomes).enumerate() {
            let (Some(device), Some(Err(e))) = (device, outcome) else {
                continue;
            };
            if !self.tolerated(member, None, &e) {
                return Err(super::device_error(device, None, e));
            }
        }
        Ok(())
    }

    /// Refuse unless every failure of `failures` (member, offset, what) is tolerated.
    fn absorb(
        &self,
        devices: &[Option<SharedDevice>],
        what: &str,
        failures: Vec<(usize, Option<u64>, String)>,
    ) -> Result<()> {
        for (member, offset, why) in failures {
            let error = DeviceError::Io(std::io::Error::other(why.clone()));
            if !self.tolerated(member, offset, &error) {
                return Err(Error::CorruptMetadata {
                    device: devices
                        .get(member)
                        .and_then(|d| d.as_ref().map(|d| d.name())),
                    offset,
                    reason: format!("{what} not written on member {member}: {why}"),
                });
            }
        }
        Ok(())
    }

    /// Refuse every change from now on, as after a failed metadata write: the owner can no
    /// longer vouch for the map's state in memory (a thread panicked while changing it).
    /// Reads go on; a reopen starts again from what is durable.
    pub fn fail(&mut self) {
        self.failed = true;
    }

    /// Whether a metadata write failed: the map must be reopened (every change is refused).
    #[must_use]
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Largest log record, bytes.
    #[must_use]
    pub fn record_max(&self) -> usize {
        self.log.record_max()
    }

    /// Most pages of map and summary one sync writes (sizes the hard reserve).
    #[must_use]
    pub fn sync_page_limit(&self) -> usize {
        self.map.cache().dirty_limit()
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
    /// Depths of the map, the slot summary and the usage table: one sync after one write
    /// writes their sum in pages (per copy).
    #[must_use]
    pub fn depths(&self) -> [u8; 3] {
        [
            self.map.root().level(),
            self.summary.root().level(),
            self.sut.root().level(),
        ]
    }

    /// The timeline this map was opened on (a rewind or a forced open starts a new one).
    #[must_use]
    pub fn timeline(&self) -> u64 {
        self.timeline
    }

    /// The usage table (segments, counts as of the last sync, free segments).
    #[must_use]
    pub fn segments(&self) -> &SegmentTable {
        &self.segments
    }

    /// Note, for one pass, which segments are taken from now on
    /// ([`SegmentTable::watch_openings`]).
    pub fn watch_openings(&mut self) -> super::segments::Openings {
        self.segments.watch_openings()
    }

    /// Recount from the trees of the last sync how many data blocks and metadata pages of
    /// each segment they reference, and compare with the usage table (FORMAT.md V4.4, "SUT@t =
    /// f(trees@t)"; `check --deep`). Reads every page of the trees.
    ///
    /// # Errors
    /// A description of the first disagreement; [`Error::InvalidConfig`] when pages are dirty
    /// (the trees in memory are then newer than the table: sync first).
    pub fn check_usage(&self, devices: &[Option<SharedDevice>]) -> Result<()> {
        if self.map.has_dirty()
            || self.summary.has_dirty()
            || self.sut.has_dirty()
            || self.points_tree.has_dirty()
        {
            return Err(Error::InvalidConfig(
                "pages changed since the last sync: sync before checking usage".into(),
            ));
        }
        let shape = self.segments.shape();
        // Distinct pages and blocks: one count per block however many pointers name it.
        let pages: BTreeSet<u64> = self.referenced_pages(devices)?.into_iter().collect();
        let mut blocks = BTreeSet::new();
        // Leaves of the live map, then those of each recovery point it does not share.
        let mut seen = SeenPages::new();
        let mut leaves = self.map.leaves_unseen(devices, &mut seen)?;
        // The live count (FORMAT.md V4.10f) against the live map's written pointers.
        if let Some(live) = self.live_blocks {
            let mut named = 0u64;
            for (_, leaf) in &leaves {
                for pointer in self.map.leaf_entries(leaf)? {
                    named += u64::from(pointer.address().is_some());
                }
            }
            if named != live {
                return Err(Error::corrupt_metadata(format!(
                    "the live map names {named} blocks, its count says {live}"
                )));
            }
        }
        for tree in self.point_trees()? {
            leaves.extend(tree.leaves_unseen(devices, &mut seen)?);
        }
        for (_, leaf) in leaves {
            for pointer in self.map.leaf_entries(&leaf)? {
                if let Some(pbn) = pointer.address() {
                    blocks.insert(pbn);
                }
            }
        }
        let mut counted: BTreeMap<u64, (u32, bool)> = BTreeMap::new();
        for mpn in &pages {
            counted.entry(shape.of_page(*mpn)).or_insert((0, true)).0 += 1;
        }
        for pbn in &blocks {
            let entry = counted.entry(shape.of_block(*pbn)).or_insert((0, false));
            if entry.1 {
                return Err(Error::corrupt_metadata(format!(
                    "segment {} holds metadata pages and data block {pbn}",
                    shape.of_block(*pbn)
                )));
            }
            entry.0 += 1;
        }
        for (segment, (count, metadata)) in &counted {
            let capacity = if *metadata {
                shape.pages_per_segment
            } else {
                shape.blocks_per_segment
            };
            if u64::from(*count) > capacity
                || self.segments.is_free(*segment)
                || self.segments.is_pending(*segment)
            {
                return Err(Error::corrupt_metadata(format!(
                    "segment {segment}: {count} referenced of {capacity}, free in memory: {}, \
                     waiting for release: {}",
                    self.segments.is_free(*segment),
                    self.segments.is_pending(*segment)
                )));
            }
        }
        let table: BTreeMap<u64, (u32, SegmentState)> = self
            .segments
            .in_use()
            .into_iter()
            .map(|(segment, count, state)| (segment, (count, state)))
            .collect();
        for (segment, (count, metadata)) in &counted {
            let Some((recorded, state)) = table.get(segment) else {
                return Err(Error::corrupt_metadata(format!(
                    "segment {segment}: {count} referenced by the trees, free in the usage table"
                )));
            };
            let kind_ok = if *metadata {
                matches!(
                    state,
                    SegmentState::OpenMetadata | SegmentState::FullMetadata
                )
            } else {
                matches!(state, SegmentState::OpenData | SegmentState::FullData)
            };
            if recorded != count || !kind_ok {
                return Err(Error::corrupt_metadata(format!(
                    "segment {segment}: {count} referenced by the trees (metadata: {metadata}), \
                     the usage table says {recorded} ({state:?})"
                )));
            }
        }
        for (segment, (recorded, state)) in &table {
            if *recorded > 0 && !counted.contains_key(segment) {
                return Err(Error::corrupt_metadata(format!(
                    "segment {segment}: the usage table says {recorded} ({state:?}), no tree \
                     references it"
                )));
            }
        }
        Ok(())
    }

    /// The next row to write data blocks into: `(slot, row)`, rows of a slot in order, a fresh
    /// slot of the open data segment when the slot is full (or after an open).
    ///
    /// # Errors
    /// [`Error::NoFreeSlot`] when no segment is free.
    pub fn next_row(&mut self) -> Result<(u64, u16)> {
        self.next_row_for(false)
    }

    /// The next row as [`MapStore::next_row`]; for the data cleaner (`cleaner`), a new
    /// segment may come from the hard reserve down to the syncs' share (FORMAT.md V4.6: the
    /// reserve holds one victim's live blocks, the cleaner's open segment and slop).
    ///
    /// # Errors
    /// [`Error::NoFreeSlot`] when no segment is free.
    pub fn next_row_for(&mut self, cleaner: bool) -> Result<(u64, u16)> {
        let rows = self.geometry.chunk_bytes / 4096;
        let (slot, row) = match self.open_row {
            Some((slot, row)) if row < rows => (slot, row),
            _ => {
                let slot = self.data_slot_for(cleaner)?;
                self.fresh_slots.insert(slot);
                (slot, 0)
            }
        };
        self.open_row = Some((slot, row + 1));
        Ok((slot, u16::try_from(row).unwrap_or(u16::MAX)))
    }

    /// Hold the segments of `slots` against release while rows handed out in them are on the
    /// devices and earlier writes land (their syncs see those rows as unreferenced: FORMAT.md
    /// V4.6, "Several groups on the devices"); the segments held, for
    /// [`MapStore::unhold_segments`] once the rows are noted or given up.
    pub fn hold_slots(&mut self, slots: impl IntoIterator<Item = u64>) -> Vec<u64> {
        let shape = self.segments.shape();
        let mut held: Vec<u64> = slots.into_iter().map(|s| shape.of_slot(s)).collect();
        held.dedup();
        held.sort_unstable();
        held.dedup();
        for segment in &held {
            self.segments.hold(*segment);
        }
        held
    }

    /// Drop the holds [`MapStore::hold_slots`] took.
    pub fn unhold_segments(&mut self, segments: &[u64]) {
        for segment in segments {
            self.segments.unhold(*segment);
        }
    }

    /// Stop handing out rows of the open slot: a row of it was handed out and not noted (its
    /// data write failed), so no later row of that slot may reach its record (a slot's rows
    /// are recorded in order). The next row starts a fresh slot; the rest of this one stays
    /// unused until its segment is freed.
    pub fn abandon_open_slot(&mut self) {
        self.open_row = None;
    }

    /// What a data row holds, for reading it whole (reconstruction, scrub): `(birth, data
    /// blocks written n, the crc of every shard-block in shard order)`, from the rows noted
    /// or replayed since the last sync, else from the slot summary. `None`: the row is not
    /// recorded. Shard-blocks of data chunks `n..K` of a narrow row were never written
    /// (they count as zeros) and have crc 0.
    ///
    /// # Errors
    /// When the summary page cannot be read or its record does not decode.
    pub fn row_crcs(
        &self,
        devices: &[Option<SharedDevice>],
        slot: u64,
        row: u16,
    ) -> Result<Option<(u64, usize, Vec<u32>)>> {
        if let Some(info) = self
            .rows
            .get(&(slot, row))
            .or_else(|| self.unsummarized.get(&(slot, row)))
        {
            let n = info.owners.len();
            let crcs = info.recorded_crcs(&self.geometry);
            return Ok(Some((info.birth, n, crcs)));
        }
        let Some(record) = self.slot_record(devices, slot)? else {
            return Ok(None);
        };
        let r = usize::from(row);
        if r >= record.rows_written() {
            return Ok(None);
        }
        let written = record.row(r);
        let crcs = (0..self.geometry.width())
            .map(|s| record.crc(r, s))
            .collect();
        Ok(Some((
            written.birth,
            usize::from(written.data_blocks),
            crcs,
        )))
    }

    /// A fresh slot of the open data segment for rows of data blocks (the pool's writers take
    /// their slots here).
    ///
    /// # Errors
    /// [`Error::NoFreeSlot`] when no segment is free.
    pub fn data_slot(&mut self) -> Result<u64> {
        self.data_slot_for(false)
    }

    fn data_slot_for(&mut self, cleaner: bool) -> Result<u64> {
        self.usable()?;
        let floor = if cleaner {
            self.segments.cleaner_floor()
        } else {
            self.segments.data_floor()
        };
        self.segments.data_slot_above(floor).ok_or_else(|| {
            Error::NoFreeSlot(format!(
                "no segment is free for data outside the hard reserve of {} segments, which \
                 only syncs may use ({} free)",
                self.segments.reserve(),
                self.segments.free_segments()
            ))
        })
    }

    /// Every metadata page the trees of the last sync reference (a walk: for checks and
    /// tests, never for allocation).
    ///
    /// # Errors
    /// When a page cannot be read.
    pub fn referenced_pages(&self, devices: &[Option<SharedDevice>]) -> Result<Vec<u64>> {
        let mut seen = SeenPages::new();
        let mut pages = Vec::new();
        for tree in [&self.map, &self.summary, &self.sut, &self.points_tree] {
            pages.extend(tree.referenced_pages_unseen(devices, &mut seen)?);
        }
        // Recovery points: what they do not share with the live map and each other.
        for tree in self.point_trees()? {
            pages.extend(tree.referenced_pages_unseen(devices, &mut seen)?);
        }
        Ok(pages)
    }

    /// Every metadata page the trees of the last sync reference, with the pointer its parent
    /// holds, and the bytes read to find them (scrub and rebuild, FORMAT.md V4.5). Reads
    /// interior pages from the members without healing or caching them.
    ///
    /// # Errors
    /// When a verified interior page does not decode.
    pub fn page_refs(&self, devices: &[Option<SharedDevice>]) -> Result<(Vec<PageRef>, u64)> {
        let mut seen = SeenPages::new();
        let (mut pages, mut bytes) = self.map.page_refs_unseen(devices, &mut seen)?;
        let points = self.point_trees()?;
        let trees = [&self.summary, &self.sut, &self.points_tree]
            .into_iter()
            .chain(points.iter());
        for tree in trees {
            let (more, read) = tree.page_refs_unseen(devices, &mut seen)?;
            pages.extend(more);
            bytes += read;
        }
        Ok((pages, bytes))
    }

    /// [`MapStore::page_refs`] handing each page to `visit` (the map's tree first, then the
    /// others, as listed there; `false` with an interior page whose subtree could not be
    /// walked: no copy verifies), remembering only interior pages: a leaf reached from two
    /// trees is visited twice, and the caller merges it (docs/FORMAT.md V4.13, "Plans in
    /// windows"). Returns the bytes read.
    ///
    /// # Errors
    /// As [`MapStore::page_refs`].
    pub fn visit_page_refs(
        &self,
        devices: &[Option<SharedDevice>],
        visit: &mut dyn FnMut(PageRef, bool),
    ) -> Result<u64> {
        let mut seen = SeenPages::new();
        let mut bytes = self.map.visit_page_refs(devices, &mut seen, false, visit)?;
        let points = self.point_trees()?;
        let trees = [&self.summary, &self.sut, &self.points_tree]
            .into_iter()
            .chain(points.iter());
        for tree in trees {
            bytes += tree.visit_page_refs(devices, &mut seen, false, visit)?;
        }
        Ok(bytes)
    }

    /// The page store pages are read and written through (verification as this map does it).
    #[must_use]
    pub fn page_store(&self) -> &PageStore {
        self.map.store()
    }

    /// Every row of data slot `slot` the map knows of, in row order, as [`MapStore::row_crcs`]
    /// gives each. A summary record left from an earlier use of the slot's segment (its row 0
    /// born otherwise than the row 0 noted since the last sync) is not part of it. Without
    /// `heal`, nothing is written (bad copies of summary pages met on the way are left as
    /// they are).
    ///
    /// # Errors
    /// As [`MapStore::row_crcs`].
    pub fn slot_rows(
        &self,
        devices: &[Option<SharedDevice>],
        slot: u64,
        heal: bool,
    ) -> Result<Vec<WrittenRow>> {
        let rows_per_slot = self.geometry.chunk_bytes / 4096;
        let pointer = |row: u16, j: usize, birth: u64, crcs: &[u32]| {
            let pbn = (slot * rows_per_slot + u64::from(row)) * self.geometry.data_chunks() as u64
                + j as u64;
            pointer_crc(&self.geometry, crcs, j)
                .map(|crc| BlockPointer::written(pbn, birth, 0, crc))
        };
        let mut found: BTreeMap<u16, WrittenRow> = BTreeMap::new();
        // As `row_crcs`: a row the log names wins over one only summarized later.
        let noted = self
            .unsummarized
            .range((slot, 0)..=(slot, u16::MAX))
            .chain(self.rows.range((slot, 0)..=(slot, u16::MAX)));
        for ((_, row), info) in noted {
            let n = info.owners.len();
            let crcs = info.recorded_crcs(&self.geometry);
            let blocks = info
                .owners
                .iter()
                .enumerate()
                .filter_map(|(j, owner)| Some((*owner, pointer(*row, j, info.birth, &info.crcs)?)))
                .collect();
            found.insert(
                *row,
                WrittenRow {
                    row: *row,
                    birth: info.birth,
                    n,
                    crcs,
                    blocks,
                },
            );
        }
        let bytes = if heal {
            self.summary.get_record(devices, slot)?
        } else {
            self.summary.get_record_without_healing(devices, slot)?
        };
        let record = match bytes {
            Some(bytes) => SlotRecord::decode(Self::slot_shape(&self.geometry), &bytes)
                .map_err(|e| Error::corrupt_metadata(format!("slot record of slot {slot}: {e}")))?,
            None => None,
        };
        if let Some(record) = record {
            let stale = record.rows_written() > 0
                && found
                    .get(&0)
                    .is_some_and(|written| written.birth != record.row(0).birth);
            if !stale {
                for r in 0..record.rows_written() {
                    let row = u16::try_from(r).unwrap_or(u16::MAX);
                    if found.contains_key(&row) {
                        continue;
                    }
                    let written = record.row(r);
                    let crcs: Vec<u32> = (0..self.geometry.width())
                        .map(|s| record.crc(r, s))
                        .collect();
                    let blocks = (0..usize::from(written.data_blocks))
                        .filter(|j| !record.is_forward_target(r, *j))
                        .filter_map(|j| {
                            Some((record.owner(r, j)?, pointer(row, j, written.birth, &crcs)?))
                        })
                        .collect();
                    found.insert(
                        row,
                        WrittenRow {
                            row,
                            birth: written.birth,
                            n: usize::from(written.data_blocks),
                            crcs,
                            blocks,
                        },
                    );
                }
            }
        }
        Ok(found.into_values().collect())
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
        let info = RowInfo {
            birth,
            owners,
            crcs,
        };
        self.fresh_slots.remove(&slot);
        self.unsummarized.insert((slot, row), info.clone());
        self.rows.insert((slot, row), info);
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
        let pointer = self.pointer_to(key, pbn)?;
        self.install(devices, key, Some(pointer))
    }

    /// The pointer that maps logical block `key` to data block `pbn` of a noted row.
    fn pointer_to(&self, key: u64, pbn: u64) -> Result<BlockPointer> {
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
        Ok(BlockPointer::written(pbn, info.birth, 0, crc))
    }

    /// Map the consecutive logical blocks `first ..` to the data blocks `pbns` of noted rows
    /// (block `first + i` to `pbns[i]`): what [`MapStore::set`] does for each, with one walk
    /// of the tree per leaf (durable at the next commit).
    ///
    /// # Errors
    /// As [`MapStore::set`]; the blocks before the one refused stay mapped.
    pub fn set_run(
        &mut self,
        devices: &[Option<SharedDevice>],
        first: u64,
        pbns: &[u64],
    ) -> Result<()> {
        self.usable()?;
        let count = pbns.len() as u64;
        if first
            .checked_add(count)
            .is_none_or(|end| end > self.map.keys())
        {
            return Err(Error::corrupt_metadata(format!(
                "logical blocks {first} + {count} beyond the map ({} blocks)",
                self.map.keys()
            )));
        }
        if !self.overlay.is_empty() {
            // Replayed changes not yet in the tree: the old pointer of a key may be in the
            // overlay (only until the first sync after an open), so each key goes alone.
            for (key, pbn) in (first..).zip(pbns) {
                self.set(devices, key, *pbn)?;
            }
            return Ok(());
        }
        let pointers = (first..)
            .zip(pbns)
            .map(|(key, pbn)| self.pointer_to(key, *pbn))
            .collect::<Result<Vec<_>>>()?;
        let leaf = self.map.leaf_keys();
        let mut at = 0usize;
        while at < pointers.len() {
            let key = first + at as u64;
            let in_leaf = usize::try_from(leaf - key % leaf).unwrap_or(usize::MAX);
            let run = &pointers[at..pointers.len().min(at + in_leaf)];
            let olds =
                self.changed_with_sync(devices, |this| this.map.swap_run(devices, key, run))?;
            for ((key, old), new) in (key..).zip(olds).zip(run) {
                self.account(key, old, *new);
            }
            at += run.len();
        }
        Ok(())
    }

    /// The usage and the pending log entry of `key` changed from `old` to `new` in the tree.
    fn account(&mut self, key: u64, old: BlockPointer, new: BlockPointer) {
        self.count_live(old.address().is_some(), new.address().is_some());
        if let Some(pbn) = new.address() {
            self.segments.block_delta(pbn, 1);
        }
        let rule = self.hold_rule();
        if let Some(pbn) = old.address().filter(|_| !rule.holds(old.birth(), key + 1)) {
            if self.planted_sut_at_write {
                // Planted bug `sut_decrement_at_write_time`.
                self.segments.decrement_now(pbn);
            } else {
                self.segments.block_delta(pbn, -1);
            }
        }
        self.pending
            .entry(key)
            .and_modify(|p| p.new = new)
            .or_insert(Pending { old, new });
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
        let (old, new) = self.changed_with_sync(devices, |this| {
            // The birth of a zero pointer is read after any sync the first attempt ran.
            let new = written.unwrap_or_else(|| BlockPointer::zeroed(0, this.next_sequence));
            let old = this.get(devices, key)?;
            this.map.set(devices, key, new)?;
            Ok((old, new))
        })?;
        self.overlay.remove(&key);
        self.account(key, old, new);
        Ok(new)
    }

    /// Run `change` of the map tree; when the cache cannot take its dirty pages, sync (every
    /// change so far becomes durable; the rows stay noted for the pointers still to come) and
    /// run it once more.
    fn changed_with_sync<T>(
        &mut self,
        devices: &[Option<SharedDevice>],
        mut change: impl FnMut(&mut Self) -> std::result::Result<T, SetError>,
    ) -> Result<T> {
        for attempt in 0..2 {
            match change(self) {
                Ok(done) => return Ok(done),
                Err(SetError::Failed(e)) => return Err(e),
                Err(SetError::NeedsSync(_)) if attempt == 0 => {
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
        // Refused before anything is written; the map stays usable (the next commit asks
        // again).
        self.states_recorded()?;
        let sequence = self.next_sequence;
        // A trim logged in this record reads as zeros born at its sequence.
        debug_assert!(self
            .pending
            .values()
            .all(|p| !p.new.is_zero() || p.new.birth() == sequence));
        let entries = self.entries();
        let before = self.log.position();
        let tolerating = self.log_tolerance();
        match self
            .log
            .append_tolerating(devices, sequence, entries, &tolerating)
        {
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
        // A sync refused by the owner fails the map as any failed sync does: its caller may
        // have changed the map in memory already (a recovery point staged, a write's
        // pointers), and no later commit may make that durable behind its back.
        let outcome = self
            .states_recorded()
            .and_then(|()| self.sync_inner(devices));
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
        // Round 1 (FORMAT.md V4.8, "What a tree sync does", step 1): the data rows the record
        // names are made durable before it, or a power cut after the record could leave
        // replayed pointers to rows that never landed (review of step 5b, B1).
        self.flush_members(devices)?;
        let sequence = self.next_sequence;
        let mut unlogged = false;
        let tolerating = self.log_tolerance();
        let entries = self.entries();
        if self
            .log
            .append_tolerating(devices, sequence, entries, &tolerating)?
        {
            self.next_sequence += 1;
            self.pending.clear();
        } else {
            unlogged = !self.pending.is_empty();
        }
        let birth = self.next_sequence;
        let txg = self.txg + 1;
        let mut pages_written = 0;
        let mut pages_freed = 0;
        // Empty mostly dead metadata segments (the metadata part of the cleaner): their live
        // pages are rewritten by this sync elsewhere, so they reach 0 and are freed. Paced so
        // that a sync frees one segment more than it fills: victims are taken, emptiest
        // first, until they outnumber the segments this sync's pages (its own and the moved
        // ones) take.
        let per_segment = self.segments.shape().pages_per_segment;
        let own = (self.map.planned_sync()?.0 + usize::from(self.sut.root().level()) + 1) as u64;
        let free = self.segments.free_segments();
        let mut moved = 0u64;
        let mut victims = Vec::new();
        // A delete's sync moves no page: what it counts off was found against the tree as it
        // stands, and no page born after the deleted recovery point's parent may change
        // under it (the hold rule still runs with the old `S_head` until its uberblock).
        let victims_found = if self.staged.deleting.is_some()
            || self.staged.freeing.is_some()
            || self.staged.rolling_back.is_some()
            || self.staged.discarding.is_some()
        {
            Vec::new()
        } else {
            self.segments.metadata_victims()
        };
        let unpinned = victims_found
            .into_iter()
            .filter(|(pages, _)| !self.pinned_metadata.contains(&(pages.start / per_segment)));
        for (victim, live) in unpinned {
            // Victims come back only two syncs later: the pages moved now must fit the free
            // segments beside this sync's own, with one to spare.
            let fills = (own + moved + live).div_ceil(per_segment) + 1;
            if victims.len() as u64 > (own + moved).div_ceil(per_segment) || fills + 1 > free {
                break;
            }
            moved += live;
            victims.push(victim);
        }
        if self.head.1 > 0 && !victims.is_empty() && !self.planted_holds.pin_only_on_hold {
            victims = self.movable_victims(devices, victims)?;
        }
        if !victims.is_empty() {
            let in_victim = |mpn: u64| victims.iter().any(|v| v.contains(&mpn));
            // A small cache takes the pages in parts: write what is dirty, walk again.
            while !(self.map.relocate(devices, &in_victim)?
                && self.summary.relocate(devices, &in_victim)?)
            {
                self.write_part(devices, birth, &mut pages_written, &mut pages_freed)?;
            }
            if !self.sut.relocate(devices, &in_victim)?
                || !self.points_tree.relocate(devices, &in_victim)?
            {
                return Err(Error::corrupt_metadata(
                    "the usage or recovery-point tree's cache cannot hold its pages",
                ));
            }
        }
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
                    self.write_part(devices, birth, &mut pages_written, &mut pages_freed)?;
                }
            }
        }
        let last = self.write_pages(devices, birth)?;
        pages_written += last.0;
        pages_freed += last.1;
        pages_written += self.summarize(devices, birth)?;
        let summary = self.write_tree(devices, TreeChoice::Summary, birth)?;
        pages_written += summary.0;
        pages_freed += summary.1;
        // A recovery point asked for: the map's tree as this sync wrote it, recorded in tree
        // 3 with the live line's new head, then tree 3's pages (before the usage table, whose
        // fixed point counts them). The uberblock below is its commit point.
        // A receive's record first: a finish frees it, and the received recovery point may
        // take its key (FORMAT.md V4.10d), written after it in this same sync.
        let receiving_changes = self.staged.receiving.is_some() || self.staged.ending_receive;
        let receive = self.stage_receive(devices)?;
        let created = match self.staged.creating.take() {
            Some(new) => {
                Some(self.record_point(devices, new, txg, birth, receive.after.as_ref())?)
            }
            None => None,
        };
        let deleted = match self.staged.deleting.take() {
            Some((key, unique)) => Some(self.stage_delete(devices, key, &unique)?),
            None => None,
        };
        let rolled = match self.staged.rolling_back {
            Some(key) => Some(self.stage_rollback(devices, key)?),
            None => None,
        };
        if let Some(unique) = self.staged.freeing.take() {
            self.count_off(&unique);
        }
        let amended = self.staged.amending.take();
        if let Some((key, record)) = &amended {
            self.set_point_records(devices, &[(*key, record.encode())])?;
        }
        let points = self.write_tree(devices, TreeChoice::RecoveryPoints, birth)?;
        pages_written += points.0;
        pages_freed += points.1;
        let usage = self.write_usage(devices, txg, birth)?;
        pages_written += usage.0;
        pages_freed += usage.1;
        // A rollback: the live map takes the recovery point's root in this uberblock, which
        // is unlogged (the records after it are relative to that tree: a rewind over it must
        // not replay them onto the tree before).
        let unlogged = match &rolled {
            Some((_, point)) => {
                self.map
                    .reset_root(point.root, self.planted_holds.rollback_keeps_live_cache)?;
                // The live map is N's: so is its count (unknown if N's is).
                self.live_blocks = self
                    .live_blocks
                    .and((point.flags & FLAG_REFERENCED != 0).then_some(point.counters[0]));
                true
            }
            None => unlogged,
        };
        // An aborted receive: the live map goes back to its head's tree, unlogged as a
        // rollback's switch (FORMAT.md V4.10d).
        // A receive's begin, finish and abort are unlogged as a rollback's switch: a rewind
        // over one must not replay, onto the tree before, records logged against the tree
        // after (the receive's writes, or the writes after it).
        let unlogged = if receive.discarded {
            let head = self.points.get(&self.head.0);
            let root = head.map_or(BlockPointer::hole(self.map_depth()), |head| head.root);
            // The live map is the base's again: so is its count (0 for an empty volume).
            let count = match head {
                Some(head) => (head.flags & FLAG_REFERENCED != 0).then_some(head.counters[0]),
                None => Some(0),
            };
            self.live_blocks = self.live_blocks.and(count);
            self.map.reset_root(root, false)?;
            true
        } else {
            unlogged || receiving_changes
        };
        self.flush_members(devices)?;
        let half = self.log.position().half ^ 1;
        let uberblock = self.uberblock(txg, birth, half, unlogged);
        let failed = write_uberblock(devices, &self.geometry, &uberblock);
        // Every member in service must hold it: a member without it would, alone, open the
        // older tree and lose this commit, unless the owner took it out of service (its
        // superblocks then say so, and no open reads the rings of a faulted member).
        self.absorb(
            devices,
            &format!("uberblock {txg}"),
            failed
                .into_iter()
                .map(|(d, why)| (d.0, None, why))
                .collect(),
        )?;
        self.flush_members(devices)?;
        self.txg = txg;
        self.next_sequence = birth + 1;
        self.log.switch(birth);
        self.pending.clear();
        self.segments.durable(txg);
        if let Some((key, record)) = created {
            self.head = (key, record.sequence);
            self.points.insert(key, record);
        }
        if let Some(staged) = deleted {
            self.points.remove(&staged.key);
            if let Some((key, record)) = staged.child {
                self.points.insert(key, record);
            }
            if let Some(head) = staged.head {
                self.head = head;
            }
            // Segments a deleted recovery point pinned may empty now.
            self.pinned_metadata.clear();
        }
        if let Some((key, record)) = amended {
            self.points.insert(key, record);
        }
        if let Some((key, point)) = rolled {
            self.head = (key, point.sequence);
            self.pinned_metadata.clear();
        }
        if receiving_changes {
            self.set_receiving(receive.after)?;
        }
        if receive.discarded {
            self.pinned_metadata.clear();
        }
        // A victim still referenced holds pages no live tree names: it is not chosen again.
        let per = self.segments.shape().pages_per_segment;
        let left: Vec<u64> = victims
            .iter()
            .map(|pages| pages.start / per)
            .filter(|segment| self.segments.referenced_now(*segment) > 0)
            .collect();
        self.pinned_metadata.extend(left.iter().copied());
        Ok(SyncReport {
            txg,
            pages_written,
            pages_freed,
            metadata_victims: victims.len(),
            victims_left: left.len(),
        })
    }

    /// The metadata victims the cleaner can empty (FORMAT.md V4.10a): a walk of the live
    /// trees counts each victim's pages; one holding fewer than its count (pages only a
    /// recovery point names) or a map page born at or before `S_head` (shared with one) is
    /// pinned and left out, before anything is dirtied.
    fn movable_victims(
        &mut self,
        devices: &[Option<SharedDevice>],
        victims: Vec<std::ops::Range<u64>>,
    ) -> Result<Vec<std::ops::Range<u64>>> {
        let per = self.segments.shape().pages_per_segment;
        let wanted: BTreeSet<u64> = victims.iter().map(|pages| pages.start / per).collect();
        let mut found: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
        let s_head = self.head.1;
        let mut seen = SeenPages::new();
        for (tree, shared_possible) in [
            (&self.map, true),
            (&self.summary, false),
            (&self.sut, false),
            (&self.points_tree, false),
        ] {
            tree.visit_pages(devices, &mut seen, &mut |_, _, pointer| {
                let Some(segment) = pointer.address().map(|mpn| mpn / per) else {
                    return;
                };
                if wanted.contains(&segment) {
                    let entry = found.entry(segment).or_insert((0, false));
                    entry.0 += 1;
                    entry.1 |= shared_possible && pointer.birth() <= s_head;
                }
            })?;
        }
        let mut movable = Vec::with_capacity(victims.len());
        for pages in victims {
            let segment = pages.start / per;
            let (live, shared) = found.get(&segment).copied().unwrap_or((0, false));
            if shared || live < self.segments.referenced_now(segment) {
                self.pinned_metadata.insert(segment);
            } else {
                movable.push(pages);
            }
        }
        Ok(movable)
    }

    /// Stage recovery point `name` in tree 3: the map's root as written by this sync (birth
    /// `s_x`, txg `txg`) at the lowest free key, and the live line's head moved to it.
    /// Returns the key and record, which the map takes up once the uberblock is durable.
    fn record_point(
        &mut self,
        devices: &[Option<SharedDevice>],
        new: NewPoint,
        txg: u64,
        s_x: u64,
        receiving: Option<&(u64, RecoveryRecord)>,
    ) -> Result<(u64, RecoveryRecord)> {
        let NewPoint {
            name,
            created,
            flags,
            guid,
        } = new;
        let guid = guid.unwrap_or_else(|| point_guid(&self.pool, s_x));
        let key = (1..self.points_tree.keys())
            .find(|k| !self.points.contains_key(k) && receiving.is_none_or(|(r, _)| r != k))
            .ok_or_else(|| Error::RecoveryPoint {
                name: name.clone(),
                reason: format!("all {} keys are taken", self.points_tree.keys() - 1),
            })?;
        let (parent, parent_guid) = match self.points.get(&self.head.0) {
            Some(head) => (self.head.0, head.guid),
            None => (NO_KEY, 0),
        };
        // The live count is the frozen map's (FORMAT.md V4.10f): nothing is in flight.
        let (flags, referenced) = match self.live_blocks {
            Some(live) => (flags | FLAG_REFERENCED, live),
            None => (flags, 0),
        };
        let record = RecoveryRecord {
            kind: RecoveryKind::Point,
            flags,
            holds: 0,
            guid,
            sequence: s_x,
            txg,
            created,
            parent,
            parent_guid,
            root: self.map.root(),
            depth: self.map_depth(),
            counters: [referenced, 0, 0],
            deleting: None,
            name,
        };
        let live = RecoveryRecord {
            kind: RecoveryKind::Live,
            flags: 0,
            holds: 0,
            guid: 0,
            sequence: s_x,
            txg: 0,
            created: 0,
            parent: key,
            parent_guid: guid,
            root: BlockPointer::hole(0),
            depth: 0,
            counters: [0; 3],
            deleting: None,
            name: String::new(),
        };
        self.set_point_records(devices, &[(key, record.encode()), (0, live.encode())])?;
        Ok((key, record))
    }

    /// A sync that does `staged` besides (see [`Staged`]); nothing is left staged after it,
    /// whatever its outcome.
    fn sync_staged(
        &mut self,
        devices: &[Option<SharedDevice>],
        staged: Staged,
    ) -> Result<SyncReport> {
        self.staged = staged;
        let outcome = self.sync(devices);
        self.staged = Staged::default();
        outcome
    }

    /// Stage a rollback to recovery point `key` in this sync: the live line's head becomes
    /// it (its `S` the hold threshold). The root itself changes just before the uberblock.
    fn stage_rollback(
        &mut self,
        devices: &[Option<SharedDevice>],
        key: u64,
    ) -> Result<(u64, RecoveryRecord)> {
        let point = self.points.get(&key).cloned().ok_or_else(|| {
            Error::corrupt_metadata(format!("no recovery point {key} to roll back to"))
        })?;
        let live = RecoveryRecord {
            kind: RecoveryKind::Live,
            flags: 0,
            holds: 0,
            guid: 0,
            sequence: point.sequence,
            txg: 0,
            created: 0,
            parent: key,
            parent_guid: point.guid,
            root: BlockPointer::hole(0),
            depth: 0,
            counters: [0; 3],
            deleting: None,
            name: String::new(),
        };
        self.set_point_records(devices, &[(0, live.encode())])?;
        Ok((key, point))
    }

    /// Write records of tree 3 (dirty until the sync writes the tree): `(key, bytes)`. The
    /// tree's cache holds the few paths a sync changes, or the map is corrupt.
    fn set_point_records(
        &mut self,
        devices: &[Option<SharedDevice>],
        writes: &[(u64, [u8; RECOVERY_RECORD_BYTES])],
    ) -> Result<()> {
        for (at, bytes) in writes {
            match self.points_tree.set_record(devices, *at, bytes) {
                Ok(()) => {}
                Err(SetError::Failed(e)) => return Err(e),
                Err(SetError::NeedsSync(_)) => {
                    return Err(Error::corrupt_metadata(format!(
                        "the recovery-point tree's cache cannot hold the paths of {} records",
                        writes.len()
                    )))
                }
            }
        }
        Ok(())
    }

    /// Roll the live volume back to recovery point `name` (FORMAT.md V4.10c): the state
    /// before is kept as an automatic recovery point (unless the live line's head already is
    /// that state), every newer recovery point is kept, and the live map becomes `name`'s
    /// tree. Three syncs at most (the changes made durable, the automatic recovery point, the
    /// switch); each is all or nothing. Returns the automatic recovery point, if one was
    /// taken.
    ///
    /// # Errors
    /// [`Error::RecoveryPoint`] when there is none of that name; [`Error::Busy`] with a write
    /// unit in flight; what [`MapStore::sync`] returns.
    pub fn rollback_to(
        &mut self,
        devices: &[Option<SharedDevice>],
        name: &str,
    ) -> Result<Option<RecoveryPoint>> {
        self.usable()?;
        self.not_receiving("roll back")?;
        self.point_key(name)?;
        if self.segments.any_held() {
            return Err(Error::Busy(
                "a rollback runs with no write unit on the devices".into(),
            ));
        }
        // A rollback's automatic recovery point and branch are only ever made of whole
        // trees (FORMAT.md V4.10e): the deletes asked for run to their end first.
        self.finish_deletes(devices)?;
        let key = self.point_key(name)?;
        // What the syncs below would find only after writing (and then fail the map): no
        // key for the automatic recovery point, a tree of another depth.
        self.free_key(name)?;
        if self.points[&key].depth != self.map_depth() {
            return Err(Error::corrupt_metadata(format!(
                "recovery point {name} has a map of depth {}, the live map {}",
                self.points[&key].depth,
                self.map_depth()
            )));
        }
        self.sync(devices)?;
        let unchanged = self
            .points
            .get(&self.head.0)
            .is_some_and(|head| head.root.encode() == self.map.root().encode());
        let automatic = if unchanged {
            None
        } else {
            // A name no recovery point has (a user may have taken this one).
            let mut before = format!("before-rollback-{}", self.next_sequence);
            let mut turn = 1;
            while self.points.values().any(|p| p.name == before) {
                turn += 1;
                before = format!("before-rollback-{}-{turn}", self.next_sequence);
            }
            self.sync_staged(
                devices,
                Staged {
                    creating: Some(NewPoint {
                        name: before.clone(),
                        created: (self.clock)(),
                        flags: FLAG_AUTOMATIC,
                        guid: None,
                    }),
                    ..Staged::default()
                },
            )?;
            let key = self.point_key(&before)?;
            Some(RecoveryPoint::of(key, &self.points[&key]))
        };
        self.sync_staged(
            devices,
            Staged {
                rolling_back: Some(key),
                ..Staged::default()
            },
        )?;
        Ok(automatic)
    }

    /// Stage the delete of recovery point `key` in this sync: count off what it alone names,
    /// free its record, re-parent its child (or move the live line's head to its parent).
    fn stage_delete(
        &mut self,
        devices: &[Option<SharedDevice>],
        key: u64,
        unique: &Unique,
    ) -> Result<StagedDelete> {
        let record =
            self.points.get(&key).cloned().ok_or_else(|| {
                Error::corrupt_metadata(format!("no recovery point {key} to delete"))
            })?;
        self.count_off(unique);
        let parent_sequence = self.points.get(&record.parent).map_or(0, |p| p.sequence);
        let child = self
            .points
            .iter()
            .find(|(_, p)| p.parent == key)
            .map(|(k, p)| {
                let mut p = p.clone();
                p.parent = record.parent;
                p.parent_guid = record.parent_guid;
                (*k, p)
            });
        let head = (self.head.0 == key).then_some(if record.parent == NO_KEY {
            (NO_KEY, 0)
        } else {
            (record.parent, parent_sequence)
        });
        let mut writes = vec![(key, [0u8; RECOVERY_RECORD_BYTES])];
        if let Some((k, p)) = &child {
            writes.push((*k, p.encode()));
        }
        if let Some((head_key, s_head)) = head {
            let live = if head_key == NO_KEY {
                [0u8; RECOVERY_RECORD_BYTES]
            } else {
                RecoveryRecord {
                    kind: RecoveryKind::Live,
                    flags: 0,
                    holds: 0,
                    guid: 0,
                    sequence: s_head,
                    txg: 0,
                    created: 0,
                    parent: head_key,
                    parent_guid: record.parent_guid,
                    root: BlockPointer::hole(0),
                    depth: 0,
                    counters: [0; 3],
                    deleting: None,
                    name: String::new(),
                }
                .encode()
            };
            writes.push((0, live));
        }
        self.set_point_records(devices, &writes)?;
        Ok(StagedDelete { key, child, head })
    }

    /// Count off, in the usage journal, blocks and pages no tree names any more (a delete's,
    /// an aborted receive's).
    fn count_off(&mut self, unique: &Unique) {
        let shape = self.segments.shape();
        for (segment, count) in &unique.blocks {
            let count = i64::try_from(*count).unwrap_or(i64::MAX);
            self.segments
                .block_delta(segment * shape.blocks_per_segment, -count);
        }
        for (segment, count) in &unique.pages {
            for _ in 0..*count {
                self.segments
                    .page_delta(segment * shape.pages_per_segment, -1);
            }
        }
    }

    /// The live map as of the last sync, through a cache of its own (a walk that compares it
    /// with a recovery point must not see pages changed since).
    fn durable_map(&self) -> Result<RadixTree> {
        RadixTree::new(
            self.pool,
            Tree::Map,
            self.map_depth(),
            self.map.root(),
            Arc::new(PageCache::<PageKey>::new(
                POINT_CACHE_PAGES * RadixTree::page_bytes(),
            )),
            Self::store(self.pool, &self.geometry, &self.options)?,
        )
    }

    /// What recovery point `key` alone names (FORMAT.md V4.10b): a walk of its tree beside
    /// its child's (the next recovery point on its line, or the live map as the next sync
    /// will write it when it is the head), position by position. A page or block born at or before its
    /// parent's `S` is its parent's too (sharing is positional: a position changes only to
    /// something born later); one equal to the child's at the same position is the child's.
    /// Subtrees shared either way are not descended into, so the walk reads what the
    /// recovery point changed, twice.
    fn unique_of(&self, devices: &[Option<SharedDevice>], key: u64) -> Result<Unique> {
        Ok(self.unique_in(devices, key, 0, usize::MAX)?.0)
    }

    /// [`MapStore::unique_of`] for the positions from key `from` (a leaf boundary) on,
    /// stopping at the end of the first leaf after `budget` pages of the recovery point were
    /// read (FORMAT.md V4.10e). Returns what it alone holds at the positions decided — every
    /// block in the leaves walked, and a page only when its key range ends by the stop — and
    /// the stop (`None`: the end of the map).
    fn unique_in(
        &self,
        devices: &[Option<SharedDevice>],
        key: u64,
        from: u64,
        budget: usize,
    ) -> Result<(Unique, Option<u64>)> {
        let record = self
            .points
            .get(&key)
            .ok_or_else(|| Error::corrupt_metadata(format!("no recovery point {key}")))?;
        let s_parent = self.points.get(&record.parent).map_or(0, |p| p.sequence);
        let mine = self.point_tree(record)?;
        // Its children: the recovery points that follow it (one per line that parts at it),
        // and the live map when it is the live line's head.
        let mut children: Vec<(RadixTree, bool)> = self
            .points
            .values()
            .filter(|p| p.parent == key)
            .map(|p| Ok((self.point_tree(p)?, false)))
            .collect::<Result<_>>()?;
        if self.head.0 == key {
            children.push((self.durable_map()?, true));
        }
        if self.planted_holds.delete_ignores_child {
            children.clear();
        }
        // The live map as it will be at the next sync: its durable pages, except where a
        // change since (a dirty page, or a replayed change not yet in the tree) lies under a
        // position; such a page is replaced at the next sync, and blocks under it are compared
        // with their current pointers.
        let changed = |live: bool, level: u8, first: u64, span: u64| {
            live && (self.map.is_dirty_at(level, first)
                || self.overlay.range(first..first + span).next().is_some())
        };
        let shape = self.segments.shape();
        let mut unique = Unique::default();
        // Pages it alone holds now, with the end of their key range: counted only when the
        // walk's stop is at or after it (a page is decided in the step its range ends in).
        let mut pages: Vec<(u64, u64)> = Vec::new();
        let mut read = 0usize;
        let mut stop = None;
        let roots: Vec<Option<BlockPointer>> =
            children.iter().map(|(t, _)| Some(t.root())).collect();
        let mut stack = vec![(mine.depth(), 0u64, record.root, roots)];
        while let Some((level, first, pointer, theirs)) = stack.pop() {
            let span = mine.span_of(level);
            if first.saturating_add(span) <= from {
                continue;
            }
            let Some(mpn) = pointer.address() else {
                continue;
            };
            let same_page = children.iter().zip(&theirs).any(|((_, live), t)| {
                t.is_some_and(|t| t.encode() == pointer.encode())
                    && !changed(*live, level, first, span)
            });
            if pointer.birth() <= s_parent || same_page {
                continue;
            }
            pages.push((first.saturating_add(span), shape.of_page(mpn)));
            let Some(entries) = mine.pointers_at(devices, level, first, &pointer)? else {
                continue;
            };
            read += 1;
            // Each child's entries at this position (none where it has a hole); the live
            // map's current pointers where it changed since the last sync.
            let mut others: Vec<Option<Vec<BlockPointer>>> = Vec::with_capacity(children.len());
            for ((tree, live), t) in children.iter().zip(&theirs) {
                let mut found = match t.filter(|t| t.address().is_some()) {
                    Some(t) => tree.pointers_at(devices, level, first, &t)?,
                    None => None,
                };
                if level == 1 && changed(*live, level, first, span) {
                    let mut current =
                        found.unwrap_or_else(|| vec![BlockPointer::hole(0); entries.len()]);
                    for (i, entry) in entries.iter().enumerate() {
                        if entry.address().is_some() {
                            current[i] = self.get(devices, first + i as u64)?;
                        }
                    }
                    found = Some(current);
                }
                others.push(found);
            }
            if level == 1 {
                for (i, entry) in entries.iter().enumerate() {
                    let shared = others
                        .iter()
                        .any(|o| o.as_ref().is_some_and(|o| o[i].encode() == entry.encode()));
                    if let Some(pbn) = entry.address().filter(|_| !shared) {
                        if entry.birth() > s_parent {
                            *unique.blocks.entry(shape.of_block(pbn)).or_insert(0) += 1;
                        }
                    }
                }
                if read >= budget {
                    stop = Some(first + span);
                    break;
                }
            } else {
                // In key order: the first child is popped first.
                for (i, entry) in entries.iter().enumerate().rev() {
                    let child_first = first + i as u64 * mine.span_of(level - 1);
                    let below = others.iter().map(|o| o.as_ref().map(|o| o[i])).collect();
                    stack.push((level - 1, child_first, *entry, below));
                }
            }
        }
        for (end, segment) in pages {
            if stop.is_none_or(|stop| end <= stop) {
                *unique.pages.entry(segment).or_insert(0) += 1;
            }
        }
        // The map's keys end within the root's span: a stop there is the end.
        Ok((unique, stop.filter(|stop| *stop < self.map.keys())))
    }

    /// What recovery point `name` alone holds now: what deleting it frees (a delete syncs
    /// first, then frees exactly this). Reads pages; writes nothing.
    ///
    /// # Errors
    /// [`Error::RecoveryPoint`] when there is none of that name; a page that cannot be read.
    pub fn recovery_point_usage(
        &self,
        devices: &[Option<SharedDevice>],
        name: &str,
    ) -> Result<PointUsage> {
        let key = self.point_key(name)?;
        // Next to a half-deleted recovery point the walk would compare with a tree whose
        // decided part is freed (its parent), or take what that one released for its own
        // (its child): the figure waits for the delete (FORMAT.md V4.10e).
        let point = &self.points[&key];
        if let Some(active) = self.points.iter().find(|(k, p)| {
            p.deleting.is_some_and(|c| c > 0) && (p.parent == key || point.parent == **k)
        }) {
            return Err(Error::RecoveryPoint {
                name: name.to_string(),
                reason: format!(
                    "what it alone holds is known once the delete of {:?}, next to it, is done",
                    active.1.name
                ),
            });
        }
        Ok(self.unique_of(devices, key)?.usage())
    }

    /// The key of recovery point `name`; one being deleted is refused (FORMAT.md V4.10e: it
    /// cannot be read, sent, held or rolled back to).
    fn point_key(&self, name: &str) -> Result<u64> {
        let key = self.any_point_key(name)?;
        if self.points[&key].deleting.is_some() {
            return Err(Error::RecoveryPoint {
                name: name.to_string(),
                reason: "it is being deleted (its space comes back in the background)".into(),
            });
        }
        Ok(key)
    }

    fn any_point_key(&self, name: &str) -> Result<u64> {
        self.points
            .iter()
            .find(|(_, p)| p.name == name)
            .map(|(key, _)| *key)
            .ok_or_else(|| Error::RecoveryPoint {
                name: name.to_string(),
                reason: "there is no recovery point of that name".into(),
            })
    }

    /// Whether recovery point `name` may be deleted (it exists, is not held or being deleted,
    /// and one line follows it, no receive is unfinished): its key. Writes nothing.
    ///
    /// # Errors
    /// [`Error::RecoveryPoint`] or [`Error::ReceiveUnfinished`] saying why not.
    pub fn deletable(&self, name: &str) -> Result<u64> {
        self.not_receiving("delete a recovery point")?;
        let key = self.point_key(name)?;
        if self.points[&key].holds > 0 {
            return Err(Error::RecoveryPoint {
                name: name.to_string(),
                reason: format!(
                    "it is held ({} holds): release it first",
                    self.points[&key].holds
                ),
            });
        }
        let children = self.points.values().filter(|p| p.parent == key).count()
            + usize::from(self.head.0 == key);
        if children > 1 {
            return Err(Error::RecoveryPoint {
                name: name.to_string(),
                reason: format!(
                    "{children} lines part at it (a rollback to it, or to one before it, kept \
                     the newer ones): delete the recovery points that follow it on all but one \
                     line first"
                ),
            });
        }
        Ok(key)
    }

    /// Ask for recovery point `name` to be deleted (FORMAT.md V4.10e): one sync records it
    /// as being deleted, and nothing is freed yet. [`MapStore::delete_step`] frees what it
    /// alone holds, a part at a time; until its last step it stays whole, unseen (it cannot
    /// be read, sent, held or rolled back to) and its name taken.
    ///
    /// # Errors
    /// [`Error::RecoveryPoint`] when there is none of that name, it is held, being deleted
    /// already, or lines part at it; [`Error::Busy`] with a write unit in flight; what
    /// [`MapStore::sync`] returns.
    pub fn request_delete(&mut self, devices: &[Option<SharedDevice>], name: &str) -> Result<()> {
        self.usable()?;
        let key = self.deletable(name)?;
        if self.segments.any_held() {
            return Err(Error::Busy(
                "a recovery point is deleted with no write unit on the devices".into(),
            ));
        }
        let mut record = self.points[&key].clone();
        record.deleting = Some(0);
        record.counters[1] = 0;
        record.counters[2] = 0;
        self.sync_staged(
            devices,
            Staged {
                amending: Some((key, record)),
                ..Staged::default()
            },
        )?;
        Ok(())
    }

    /// The delete that runs next (FORMAT.md V4.10e, one walk at a time): the one already
    /// started (cursor above 0, after a crash), else the oldest asked for.
    fn next_delete(&self) -> Option<u64> {
        let waiting = self.points.iter().filter(|(_, p)| p.deleting.is_some());
        waiting
            .clone()
            .find(|(_, p)| p.deleting.is_some_and(|cursor| cursor > 0))
            .or_else(|| waiting.min_by_key(|(_, p)| p.sequence))
            .map(|(key, _)| *key)
    }

    /// One step of the delete that runs next (FORMAT.md V4.10e): a sync, a walk of the
    /// positions from its cursor until `budget` pages of it were read (at a leaf's end), then
    /// one sync that counts off what it alone held there and moves the cursor, or, at the end
    /// of the map, frees its record and re-parents its child (or moves the live line's
    /// head). Each step's uberblock is its commit point: a crash before it loses the step,
    /// never a part of one. `None` when no delete is waiting.
    ///
    /// # Errors
    /// [`Error::Busy`] with a write unit in flight; a page that cannot be read; what
    /// [`MapStore::sync`] returns.
    pub fn delete_step(
        &mut self,
        devices: &[Option<SharedDevice>],
        budget: usize,
    ) -> Result<Option<DeleteStep>> {
        self.usable()?;
        let Some(key) = self.next_delete() else {
            return Ok(None);
        };
        if self.segments.any_held() {
            return Err(Error::Busy(
                "a recovery point is deleted with no write unit on the devices".into(),
            ));
        }
        self.sync(devices)?;
        debug_assert!(!self.map.has_dirty(), "a delete walks a clean live map");
        let record = self.points[&key].clone();
        let cursor = record.deleting.unwrap_or(0);
        let (unique, stop) = self.unique_in(devices, key, cursor, budget.max(1))?;
        let freed = unique.usage();
        let total = PointUsage {
            blocks: record.counters[1] + freed.blocks,
            pages: record.counters[2] + freed.pages,
        };
        let staged = match stop {
            Some(stop) => {
                let mut record = record.clone();
                record.deleting = Some(stop);
                record.counters[1] = total.blocks;
                record.counters[2] = total.pages;
                Staged {
                    freeing: Some(unique),
                    amending: Some((key, record)),
                    ..Staged::default()
                }
            }
            None => Staged {
                deleting: Some((key, unique)),
                ..Staged::default()
            },
        };
        self.sync_staged(devices, staged)?;
        Ok(Some(DeleteStep {
            name: record.name,
            freed,
            progress: DeleteProgress {
                cursor: stop.unwrap_or(self.map.keys()),
                keys: self.map.keys(),
                freed: total,
            },
            done: stop.is_none(),
        }))
    }

    /// Run every delete asked for to its end, in the caller's thread (a rollback and a
    /// receive do first, FORMAT.md V4.10e). Returns the steps run.
    ///
    /// # Errors
    /// What [`MapStore::delete_step`] returns.
    pub fn finish_deletes(&mut self, devices: &[Option<SharedDevice>]) -> Result<u64> {
        let mut steps = 0;
        while self.delete_step(devices, DELETE_STEP_PAGES)?.is_some() {
            steps += 1;
        }
        Ok(steps)
    }

    /// Delete recovery point `name` in the caller's thread: [`MapStore::request_delete`],
    /// then steps until it is gone (deletes asked for before it run first). Returns what it
    /// freed: what it alone held (V4.10b's figure; the segments come back by the release
    /// rule).
    ///
    /// # Errors
    /// What [`MapStore::request_delete`] and [`MapStore::delete_step`] return.
    pub fn delete_recovery_point(
        &mut self,
        devices: &[Option<SharedDevice>],
        name: &str,
    ) -> Result<PointUsage> {
        self.request_delete(devices, name)?;
        loop {
            match self.delete_step(devices, DELETE_STEP_PAGES)? {
                Some(step) if step.name == name && step.done => return Ok(step.progress.freed),
                Some(_) => {}
                None => {
                    return Err(Error::corrupt_metadata(format!(
                        "recovery point {name}: its delete ended without its last step"
                    )))
                }
            }
        }
    }

    /// The recovery points being deleted, in the order they run, with their progress.
    #[must_use]
    pub fn deletes(&self) -> Vec<(String, DeleteProgress)> {
        let mut waiting: Vec<(u64, &RecoveryRecord)> = self
            .points
            .iter()
            .filter(|(_, p)| p.deleting.is_some())
            .map(|(k, p)| (*k, p))
            .collect();
        let first = self.next_delete();
        waiting.sort_by_key(|(k, p)| (Some(*k) != first, p.sequence));
        waiting
            .into_iter()
            .map(|(_, p)| {
                (
                    p.name.clone(),
                    DeleteProgress {
                        cursor: p.deleting.unwrap_or(0),
                        keys: self.map.keys(),
                        freed: PointUsage {
                            blocks: p.counters[1],
                            pages: p.counters[2],
                        },
                    },
                )
            })
            .collect()
    }

    /// Put a hold on recovery point `name` (`hold`), or take one off: a held recovery point
    /// is not deleted. Durable when this returns (a sync). Returns its holds.
    ///
    /// # Errors
    /// [`Error::RecoveryPoint`] when there is none of that name, or a release finds no hold;
    /// what [`MapStore::sync`] returns.
    pub fn hold_recovery_point(
        &mut self,
        devices: &[Option<SharedDevice>],
        name: &str,
        hold: bool,
    ) -> Result<u32> {
        self.usable()?;
        self.not_receiving("hold or release a recovery point")?;
        let key = self.point_key(name)?;
        let mut record = self.points[&key].clone();
        record.holds = match (hold, record.holds) {
            (true, holds) => holds.checked_add(1).ok_or_else(|| Error::RecoveryPoint {
                name: name.to_string(),
                reason: "it holds as many holds as it can".into(),
            })?,
            (false, 0) => {
                return Err(Error::RecoveryPoint {
                    name: name.to_string(),
                    reason: "it is not held".into(),
                })
            }
            (false, holds) => holds - 1,
        };
        let holds = record.holds;
        self.sync_staged(
            devices,
            Staged {
                amending: Some((key, record)),
                ..Staged::default()
            },
        )?;
        Ok(holds)
    }

    /// Refuse, before any sync, a new recovery point for which tree 3 has no key left
    /// (`name` is what the request names).
    fn free_key(&self, name: &str) -> Result<()> {
        let keys = self.points_tree.keys() - 1;
        if self.points.len() as u64 >= keys {
            return Err(Error::RecoveryPoint {
                name: name.to_string(),
                reason: format!("all {keys} keys are taken: delete one first"),
            });
        }
        Ok(())
    }

    /// The live count (FORMAT.md V4.10f) after a pointer that named a block or not (`old`)
    /// became one that does or not (`new`).
    fn count_live(&mut self, old: bool, new: bool) {
        let old = old && (new || !self.planted_holds.live_count_ignores_trim);
        if let Some(live) = &mut self.live_blocks {
            *live = (*live + u64::from(new)).saturating_sub(u64::from(old));
        }
    }

    /// The live map's data blocks that name a block (FORMAT.md V4.10f), when counted.
    #[must_use]
    pub fn live_blocks(&self) -> Option<u64> {
        self.live_blocks
    }

    /// The hold rule as it stands (FORMAT.md V4.10a, with V4.10e's cursor when the live
    /// line's head is being deleted).
    fn hold_rule(&self) -> HoldRule {
        let released = self
            .points
            .get(&self.head.0)
            .and_then(|head| head.deleting.map(|cursor| (head.parent, cursor)))
            .filter(|_| !self.planted_holds.delete_cursor_ignored)
            .map(|(parent, cursor)| {
                let s_parent = self.points.get(&parent).map_or(0, |p| p.sequence);
                (s_parent, cursor)
            });
        HoldRule {
            s_head: if self.planted_holds.drop_held_block {
                0
            } else {
                self.head.1
            },
            released,
        }
    }

    /// Take recovery point `name`: a tree sync that freezes the map as it stands and records
    /// it in tree 3 (FORMAT.md V4.10a). It is durable, and complete, when this returns; a
    /// crash before leaves none. Nothing may be in flight: no write unit on the devices (its
    /// rows, pointed after the sync, would be born before it yet held by no tree).
    ///
    /// # Errors
    /// [`Error::RecoveryPoint`] for a name not allowed or taken, or no key left;
    /// [`Error::Busy`] with a write unit in flight; what [`MapStore::sync`] returns.
    pub fn create_recovery_point(
        &mut self,
        devices: &[Option<SharedDevice>],
        name: &str,
    ) -> Result<RecoveryPoint> {
        self.usable()?;
        self.not_receiving("create a recovery point")?;
        check_recovery_name(name).map_err(|reason| Error::RecoveryPoint {
            name: name.to_string(),
            reason,
        })?;
        if let Some(p) = self.points.values().find(|p| p.name == name) {
            return Err(Error::RecoveryPoint {
                name: name.to_string(),
                reason: if p.deleting.is_some() {
                    "the name is taken by a recovery point being deleted (free once it is gone)"
                        .into()
                } else {
                    "the name is taken".into()
                },
            });
        }
        self.free_key(name)?;
        if self.segments.any_held() {
            return Err(Error::Busy(
                "a recovery point is taken with no write unit on the devices".into(),
            ));
        }
        self.sync_staged(
            devices,
            Staged {
                creating: Some(NewPoint {
                    name: name.to_string(),
                    created: (self.clock)(),
                    flags: 0,
                    guid: None,
                }),
                ..Staged::default()
            },
        )?;
        self.points
            .iter()
            .find(|(_, p)| p.name == name)
            .map(|(key, p)| RecoveryPoint::of(*key, p))
            .ok_or_else(|| Error::corrupt_metadata("a recovery point synced but not recorded"))
    }

    /// The recovery points, by key (not those being deleted: [`MapStore::deletes`]).
    #[must_use]
    pub fn recovery_points(&self) -> Vec<RecoveryPoint> {
        self.points
            .iter()
            .filter(|(_, p)| p.deleting.is_none())
            .map(|(key, p)| RecoveryPoint::of(*key, p))
            .collect()
    }

    /// `S_head`: the sequence of the newest recovery point on the live line (0: none).
    #[must_use]
    pub fn recovery_head(&self) -> u64 {
        self.head.1
    }

    fn point_tree(&self, record: &RecoveryRecord) -> Result<RadixTree> {
        let cache = if self.planted_holds.in_live_cache {
            Arc::clone(self.map.cache())
        } else {
            Arc::new(PageCache::<PageKey>::new(
                POINT_CACHE_PAGES * RadixTree::page_bytes(),
            ))
        };
        Ok(RadixTree::new(
            self.pool,
            Tree::Map,
            record.depth,
            record.root,
            cache,
            Self::store(self.pool, &self.geometry, &self.options)?,
        )?
        .decided_below(record.deleting.unwrap_or(0)))
    }

    /// The map of recovery point `name`, for reading (its own page cache).
    ///
    /// # Errors
    /// [`Error::RecoveryPoint`] when there is none of that name.
    pub fn recovery_point_map(&self, name: &str) -> Result<RecoveryPointMap> {
        let record = self
            .points
            .values()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::RecoveryPoint {
                name: name.to_string(),
                reason: "there is no recovery point of that name".into(),
            })?;
        Ok(RecoveryPointMap {
            tree: self.point_tree(record)?,
        })
    }

    /// Every recovery point's map tree, in key order.
    /// The trees of the recovery points, for the walks that see every tree: the one being
    /// deleted last, so that a page it shares with its child, straddling its cursor, is walked
    /// whole through the child before its own walk passes over the decided positions.
    fn point_trees(&self) -> Result<Vec<RadixTree>> {
        let mut points: Vec<&RecoveryRecord> = self.points.values().collect();
        points.sort_by_key(|p| p.deleting.is_some_and(|cursor| cursor > 0));
        points.into_iter().map(|p| self.point_tree(p)).collect()
    }

    /// Write the map tree's dirty pages with birth `birth`: `(pages written, pages freed)`.
    fn write_pages(
        &mut self,
        devices: &[Option<SharedDevice>],
        birth: u64,
    ) -> Result<(usize, usize)> {
        self.write_tree(devices, TreeChoice::Map, birth)
    }

    /// Write the dirty pages of the map and the slot summary (they share the cache and its
    /// dirty limit): `(pages written, pages freed)`.
    fn write_dirty(
        &mut self,
        devices: &[Option<SharedDevice>],
        birth: u64,
    ) -> Result<(usize, usize)> {
        let map = self.write_tree(devices, TreeChoice::Map, birth)?;
        let summary = self.write_tree(devices, TreeChoice::Summary, birth)?;
        Ok((map.0 + summary.0, map.1 + summary.1))
    }

    /// Inside a sync whose cache took no more dirty pages: write those it holds (pages of no
    /// durable tree yet) and add them to the sync's counts; refused when there were none
    /// (one path does not fit the cache).
    fn write_part(
        &mut self,
        devices: &[Option<SharedDevice>],
        birth: u64,
        written: &mut usize,
        freed: &mut usize,
    ) -> Result<()> {
        let part = self.write_dirty(devices, birth)?;
        if part.0 == 0 {
            return Err(Error::corrupt_metadata(
                "the page cache is too small for one path of the map",
            ));
        }
        *written += part.0;
        *freed += part.1;
        Ok(())
    }

    /// Write one tree's dirty pages with birth `birth`, counting each page written (+1) and
    /// each replaced (-1) in its segment: `(pages written, pages freed)`.
    ///
    /// A map page born at or before `S_head` is named by a recovery point (FORMAT.md V4.10a,
    /// the hold rule): it is not counted off, and its segment is pinned against the metadata
    /// cleaner. Pages of the other trees are never shared.
    fn write_tree(
        &mut self,
        devices: &[Option<SharedDevice>],
        which: TreeChoice,
        birth: u64,
    ) -> Result<(usize, usize)> {
        let rule = self.hold_rule();
        let segments = std::cell::RefCell::new(&mut self.segments);
        let shape = segments.borrow().shape();
        let holds = matches!(which, TreeChoice::Map) && !self.planted_holds.free_shared_page;
        let pinned = &mut self.pinned_metadata;
        let mut held = 0;
        let tree = match which {
            TreeChoice::Map => &mut self.map,
            TreeChoice::Summary => &mut self.summary,
            TreeChoice::RecoveryPoints => &mut self.points_tree,
        };
        let outcome = tree.sync(
            devices,
            birth,
            &mut || {
                let mut segments = segments.borrow_mut();
                let mpn = segments.page()?;
                segments.page_delta(mpn, 1);
                Some(mpn)
            },
            &mut |old, end| {
                let Some(mpn) = old.address() else { return };
                if holds && rule.holds(old.birth(), end) {
                    held += 1;
                    pinned.insert(shape.of_page(mpn));
                } else {
                    segments.borrow_mut().page_delta(mpn, -1);
                }
            },
        )?;
        self.all_copies_written(devices, &outcome)?;
        Ok((outcome.pages_written, outcome.freed.len() - held))
    }

    /// Every copy on a member in service must be written: a page short of copies would be lost
    /// by fewer failures than the pool tolerates, unless the owner took that member out of
    /// service (the pool's tolerance then counts it as lost already).
    fn all_copies_written(
        &self,
        devices: &[Option<SharedDevice>],
        outcome: &super::tree::SyncOutcome,
    ) -> Result<()> {
        self.absorb(
            devices,
            "metadata page copy",
            outcome
                .copy_faults
                .iter()
                .map(|f| (f.device.0, Some(f.offset), f.to_string()))
                .collect(),
        )
    }

    /// Fold the usage journal at the boundary of sync `txg` and write the usage tree so that
    /// the records it writes describe the segments its own pages go into and come from (the
    /// fixed point of FORMAT.md V4.8 step 2): fold, stage the changed leaves, reserve the page
    /// numbers the usage sync will take and count them with the pages it replaces, and fold
    /// again until nothing changes; then write with exactly those page numbers.
    fn write_usage(
        &mut self,
        devices: &[Option<SharedDevice>],
        txg: u64,
        birth: u64,
    ) -> Result<(usize, usize)> {
        let per_slot = self.geometry.pages_per_slot();
        // The fold closes a full open data segment, but not while rows are still handed out
        // from its last slot: a closed segment can be cleaned, and once nothing references
        // it, freed and taken for something else, so it must get no more rows. It stays open
        // (and is no victim) until the map asks for a slot after it. Ending the slot instead
        // wasted its rows at every sync, and with one slot per segment the cleaner's copies
        // went round without giving space back (review of step 7, finding 2).
        let rows = self.geometry.chunk_bytes / 4096;
        let hold = match (self.open_row, self.segments.open_data_full()) {
            (Some((slot, row)), Some(full)) => {
                self.segments.shape().of_slot(slot) == full && row < rows
            }
            _ => false,
        };
        self.segments.hold_open_data(hold);
        let mut reserved: VecDeque<u64> = VecDeque::new();
        let mut replaced: BTreeSet<u64> = BTreeSet::new();
        let mut staged_leaves = BTreeSet::new();
        loop {
            for first in self.segments.fold(txg, per_slot)? {
                staged_leaves.insert(first);
                let leaf = self.segments.leaf_page(first);
                match self.sut.set_leaf(devices, first, &leaf) {
                    Ok(()) => {}
                    Err(SetError::Failed(e)) => return Err(e),
                    Err(SetError::NeedsSync(_)) => {
                        return Err(Error::corrupt_metadata(
                            "the usage tree's cache cannot hold its dirty leaves",
                        ))
                    }
                }
            }
            let (count, olds) = self.sut.planned_sync()?;
            let mut changed = false;
            while reserved.len() < count {
                let mpn = self
                    .segments
                    .page()
                    .ok_or_else(|| Error::NoFreeSlot("no free segment for metadata".into()))?;
                self.segments.page_delta(mpn, 1);
                reserved.push_back(mpn);
                changed = true;
            }
            for old in olds {
                if replaced.insert(old) {
                    self.segments.page_delta(old, -1);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let staged: Vec<u64> = reserved.iter().copied().collect();
        let outcome =
            self.sut
                .sync(devices, birth, &mut || reserved.pop_front(), &mut |_, _| {})?;
        self.all_copies_written(devices, &outcome)?;
        let freed: BTreeSet<u64> = outcome.freed.iter().copied().collect();
        if !reserved.is_empty() || freed != replaced {
            return Err(Error::corrupt_metadata(format!(
                "usage sync at txg {txg}: planned pages {staged:?} replacing {replaced:?}, \
                 wrote {} replacing {freed:?}",
                outcome.pages_written
            )));
        }
        // Leaves are resident as records; keep only the interior pages cached.
        self.sut.forget_clean_leaves(staged_leaves);
        Ok((outcome.pages_written, outcome.freed.len()))
    }
}
