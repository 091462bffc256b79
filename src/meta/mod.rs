//! The metadata store of format version 4 (docs/FORMAT.md, V4.5, V4.9): metadata pages on the
//! member devices and the capped cache that holds them in memory.
//!
//! Owns: reading a page from its `tolerance + 1` copies, verified against the pointer that names
//! it, healing bad copies from a good one; writing every copy of a page; the page cache (a CLOCK
//! over clean pages, with dirty and frozen pages counted against the same cap).
//!
//! Does not own, and must not touch: which pages exist or what they mean (the trees, above), the
//! pool's membership and fault policy (the caller gets every bad copy reported and decides), data
//! rows, superblocks. Placement arithmetic is `geometry::Geometry::page_copies`; encodings are
//! `format::v4`.

mod cache;
pub(crate) mod held;
mod log;
mod map;
mod ring;
mod segments;
mod store;
mod tree;

pub use cache::{CacheFull, CacheStats, PageCache, PageState};
pub use log::{ChainRecord, IntentLog, LogPosition, Replay};
pub use map::{
    CommitReport, DeleteProgress, DeleteStep, DiffRun, IncomingPoint, MapOptions, MapStore,
    OpenReport, PointUsage, RecoveryPoint, RecoveryPointMap, RewindPlan, RewindReport,
    StatesRecorded, SyncReport, Tolerate, WrittenRow, DELETE_STEP_PAGES,
};
pub use ring::{uberblock_places, write_uberblock, Rings};
pub use segments::{
    slots_of, Openings, ReleaseRule, SegmentBits, SegmentShape, SegmentTable, SUT_LEAF_BITS,
};
pub use store::{CopiesRead, CopyFault, CopyProblem, PageRead, PageRef, PageStore};
pub use tree::{PageKey, RadixTree, SeenPages, SetError, SyncOutcome};

/// A member's failed request as the typed error naming the member and the byte offset.
fn device_error(
    device: &crate::device::SharedDevice,
    offset: Option<u64>,
    e: crate::device::DeviceError,
) -> crate::error::Error {
    crate::error::Error::Io {
        device: device.name(),
        offset,
        source: e.into_io(),
    }
}
