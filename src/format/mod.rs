//! On-disk bytes: superblocks and the stripe map (checkpoints and log records).
//! Explicit little-endian encodings, each with a magic, a version and a crc32c. No I/O here.
//! The byte-by-byte description, and why it is shaped this way, is in `docs/FORMAT.md`.

mod history;
mod map;
mod scrub;
mod superblock;
pub mod v4;

pub use history::{Event, EventKind, History, PoolCounters, MAX_EVENTS, MAX_TEXT_BYTES};
pub use map::{
    decode_checkpoint, decode_log_record, encode_checkpoint, encode_log_record, log_record_bytes,
    CheckpointHeader, LogRecord, MapEntry, StripeMap,
};
pub use scrub::{
    DamagedRange, DeviceScrubCounters, ScrubCheckpoint, ScrubOutcome, ScrubRecord, ScrubSummary,
    ScrubTally, SegmentCursor, MAX_RECORDED_RANGES,
};
pub use superblock::{
    Fork, MapParams, Member, MemberState, PoolUuid, Role, Superblock, Unavailable, FORMAT_VERSION,
};
