//! `status`: a snapshot of health, devices and counters, serialisable as JSON. Its text, like
//! `zpool status`, is written by `crate::report` (presentation is not the pool's business).

use super::PoolInner;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::Ordering;

/// Overall health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PoolHealth {
    /// Every data member online.
    Online,
    /// Some members lost, data still fully available.
    Degraded,
    /// More members lost than the layout tolerates: some data cannot be read.
    Faulted,
}

/// One device's line in the status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Layout position (`None` for a spare).
    pub index: Option<usize>,
    /// Last known path.
    pub path: String,
    /// Device UUID.
    pub uuid: String,
    /// `ONLINE`, `DEGRADED` (in service, but too many errors: see the fault policy),
    /// `FAULTED`, `OFFLINE` (taken out on purpose), `UNAVAILABLE` (stopped answering,
    /// expected back), `RESYNCING` (back, being given what changed while away),
    /// `REBUILDING`, or for spares `AVAIL` / `FAULTED`.
    pub state: String,
    /// Why it is faulted, offline or degraded.
    pub reason: Option<String>,
    /// Read I/O errors.
    pub read_errors: u64,
    /// Write/flush errors.
    pub write_errors: u64,
    /// Checksum mismatches.
    pub checksum_errors: u64,
    /// Chunks healed on this device.
    pub repaired_chunks: u64,
    /// Hedged reads of its position given up on as late (docs/FORMAT.md V4.16 §7): answered
    /// from the rest of the row instead; not errors.
    #[serde(default)]
    pub late_reads: u64,
    /// For a device being rebuilt: the device it replaces.
    pub replacing: Option<String>,
    /// Its failure domain (pools with domains only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// `UNAVAILABLE` or `RESYNCING` (docs/FORMAT.md V4.16): seconds since it stopped
    /// answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub away_secs: Option<u64>,
    /// `UNAVAILABLE`: seconds left before it is faulted and replaced if it does not return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_left_secs: Option<u64>,
}

/// A snapshot of the pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Pool UUID.
    pub pool: String,
    /// Health.
    pub health: PoolHealth,
    /// Layout.
    pub layout: String,
    /// Volume size.
    pub volume_bytes: u64,
    /// Bytes of the volume that have been written (stripe granularity).
    pub allocated_bytes: u64,
    /// Chunk size.
    pub chunk_bytes: u64,
    /// Checksum block size (what one crc32c covers).
    pub checksum_bytes: u64,
    /// Device losses the layout tolerates.
    pub tolerance: usize,
    /// Further device losses the pool survives in its current state (0: redundancy exhausted).
    pub remaining_tolerance: usize,
    /// Last durable commit sequence.
    pub commit_sequence: u64,
    /// Superblock generation.
    pub superblock_generation: u64,
    /// Data members.
    pub devices: Vec<DeviceStatus>,
    /// Spares.
    pub spares: Vec<DeviceStatus>,
    /// Rebuilds in progress.
    pub rebuilds: Vec<super::RebuildProgress>,
    /// I/O backends of the members in service (`io_uring+O_DIRECT`, `io_uring`, `pread`, ...).
    pub io_backend: String,
    /// A scrub running, paused or interrupted.
    pub scrub: Option<super::ScrubProgress>,
    /// The last scrub that finished or was canceled.
    pub last_scrub: Option<crate::format::ScrubSummary>,
    /// Cumulative counters since the pool was created (persisted in the superblocks, plus
    /// this process's counts); they never go down while the pool is open.
    #[serde(default)]
    pub counters: crate::format::PoolCounters,
    /// The last events of the pool's log (up to [`STATUS_EVENTS`]), newest last.
    #[serde(default)]
    pub events: Vec<crate::format::Event>,
    /// The last rebuild that finished, from the event log.
    #[serde(default)]
    pub last_rebuild: Option<crate::format::Event>,
    /// Redundancy was restored by a rebuild onto a spare, and no spare is left for the next
    /// failure.
    #[serde(default)]
    pub no_spare_left: bool,
    /// Devices swapped out of a position while this process had the pool open, with their
    /// counters then (so metrics series of replaced devices never go down).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<super::RetiredDevice>,
    /// Recovery points (format version 4; absent on version 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_points: Option<RecoveryPointsStatus>,
}

/// The recovery points of a version-4 pool, as `status` shows them (no page is read for it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryPointsStatus {
    /// How many there are.
    pub count: usize,
    /// How many are held.
    pub held: usize,
    /// The newest one taken on request (not automatically, before a rollback): its
    /// creation time, seconds since the Unix epoch.
    pub newest_created: Option<u64>,
    /// Its name.
    pub newest: Option<String>,
    /// The recovery point an unfinished receive was bringing (docs/FORMAT.md V4.10d): the
    /// volume reads as before it, and refuses writes, until it is finished or aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfinished_receive: Option<String>,
    /// The reclaim backlog (docs/FORMAT.md V4.10e): recovery points being deleted, in the
    /// order their space comes back, with their progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleting: Vec<super::DeletingPoint>,
    /// Data held by recovery points and not yet given back by deletes: the blocks the
    /// usage table counts beyond those the live volume names (docs/FORMAT.md V4.10f).
    /// `None` on a pool made before the live count was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_data_bytes: Option<u64>,
}

/// Events shown by `status`.
pub const STATUS_EVENTS: usize = 5;

/// How a finished rebuild's event says it came from the spares (see
/// [`PoolStatus::no_spare_left`]).
pub(crate) const FROM_SPARES: &str = " from the spares";

impl PoolStatus {
    /// Sum of checksum errors over all devices.
    #[must_use]
    pub fn total_checksum_errors(&self) -> u64 {
        self.devices.iter().map(|d| d.checksum_errors).sum()
    }
    /// Sum of healed chunks over all devices.
    #[must_use]
    pub fn total_repaired(&self) -> u64 {
        self.devices.iter().map(|d| d.repaired_chunks).sum()
    }
}

impl PoolInner {
    pub(crate) fn status(&self) -> PoolStatus {
        let counters = |errors: Option<&super::ErrorCounters>| {
            let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            errors.map_or((0, 0, 0, 0), |e| {
                (
                    load(&e.read),
                    load(&e.write),
                    load(&e.checksum),
                    load(&e.repaired),
                )
            })
        };
        let mut devices = Vec::new();
        for member in &self.members.data {
            let identity = member.identity();
            let away = member.away();
            let (state, reason) = match (member.fault_reason(), member.degraded_reason()) {
                (Some(reason), _) if away.is_some() => {
                    let resyncing = member
                        .replacement()
                        .is_some_and(|r| r.resync_from.is_some());
                    (
                        if resyncing {
                            "RESYNCING"
                        } else {
                            "UNAVAILABLE"
                        },
                        Some(reason),
                    )
                }
                (Some(reason), _) if reason == super::admin::OFFLINE_REASON => {
                    ("OFFLINE", Some(reason))
                }
                (Some(reason), _) => ("FAULTED", Some(reason)),
                // In service, but with too many errors: shown until `clear` or replacement.
                (None, Some(reason)) => ("DEGRADED", Some(reason)),
                // In service; errors it returned (and were healed) show in its counters.
                (None, None) => ("ONLINE", None),
            };
            let (read_errors, write_errors, checksum_errors, repaired_chunks) =
                counters(Some(&member.errors));
            devices.push(DeviceStatus {
                index: Some(member.index.0),
                path: identity.path,
                uuid: identity.uuid.to_string(),
                state: state.to_string(),
                reason,
                read_errors,
                write_errors,
                checksum_errors,
                repaired_chunks,
                late_reads: member
                    .io
                    .late_reads
                    .load(std::sync::atomic::Ordering::Relaxed),
                replacing: None,
                domain: identity.domain,
                away_secs: away.as_ref().map(|a| {
                    crate::types::now_unix_secs().saturating_sub(a.record.since_unix_secs)
                }),
                grace_left_secs: away.as_ref().map(|a| {
                    a.deadline
                        .saturating_duration_since(std::time::Instant::now())
                        .as_secs()
                }),
            });
            if let Some(replacement) = member.replacement() {
                devices.push(DeviceStatus {
                    index: Some(member.index.0),
                    path: replacement.identity.path.clone(),
                    uuid: replacement.identity.uuid.to_string(),
                    state: "REBUILDING".to_string(),
                    reason: None,
                    read_errors: 0,
                    write_errors: 0,
                    checksum_errors: 0,
                    repaired_chunks: 0,
                    late_reads: 0,
                    replacing: Some(member.path()),
                    domain: replacement.identity.domain.clone(),
                    away_secs: None,
                    grace_left_secs: None,
                });
            }
        }
        let health = if self.check_available().is_err() {
            PoolHealth::Faulted
        } else if self
            .members
            .data
            .iter()
            .any(|m| !m.is_online() || m.degraded_reason().is_some())
        {
            PoolHealth::Degraded
        } else {
            PoolHealth::Online
        };
        let spares: Vec<DeviceStatus> = self
            .members
            .spares()
            .into_iter()
            .map(|spare| DeviceStatus {
                index: None,
                path: spare.identity.path,
                uuid: spare.identity.uuid.to_string(),
                state: if spare.fault.is_some() {
                    "FAULTED"
                } else {
                    "AVAIL"
                }
                .to_string(),
                reason: spare.fault,
                read_errors: 0,
                write_errors: 0,
                checksum_errors: 0,
                repaired_chunks: 0,
                late_reads: 0,
                replacing: None,
                domain: spare.identity.domain,
                away_secs: None,
                grace_left_secs: None,
            })
            .collect();
        let recovery_points = self.rows().map(|rows| {
            // One read lock for every figure (a second one taken while a writer waits
            // would wait behind it), dropped before the backlog takes its own.
            let (points, unfinished_receive, held_data_bytes) = {
                let volume = rows.read_volume();
                let held = volume.map().live_blocks().map(|live| {
                    volume
                        .allocated_bytes()
                        .saturating_sub(live * crate::volume::BLOCK_BYTES as u64)
                });
                (
                    volume.recovery_points(),
                    volume.unfinished_receive().map(|r| r.name),
                    held,
                )
            };
            // The newest asked for: an automatic one (the state before a rollback) would
            // hide a schedule that stopped.
            let newest = points
                .iter()
                .filter(|p| !p.automatic)
                .max_by_key(|p| p.sequence);
            RecoveryPointsStatus {
                count: points.len(),
                held: points.iter().filter(|p| p.holds > 0).count(),
                newest_created: newest.map(|p| p.created),
                newest: newest.map(|p| p.name.clone()),
                unfinished_receive,
                deleting: self.deletes(),
                held_data_bytes,
            }
        });
        let allocated_bytes = match self.rows() {
            Some(rows) => rows.read_volume().allocated_bytes(),
            None => {
                self.map.lock().map.written_stripes().count() as u64
                    * self.geometry.stripe_data_bytes()
            }
        };
        let history = self.members.history();
        let last_rebuild = history
            .events
            .iter()
            .rev()
            .find(|e| e.kind == crate::format::EventKind::RebuildFinish)
            .cloned();
        let rebuilding = self.members.data.iter().any(|m| m.replacement().is_some());
        let no_spare_left = health == PoolHealth::Online
            && !rebuilding
            && last_rebuild
                .as_ref()
                .is_some_and(|e| e.detail.contains(FROM_SPARES))
            && !spares.iter().any(|s: &DeviceStatus| s.state == "AVAIL");
        PoolStatus {
            pool: self.uuid.to_string(),
            health,
            layout: self.geometry.layout.to_string(),
            volume_bytes: self.volume_bytes(),
            allocated_bytes,
            chunk_bytes: self.geometry.chunk_bytes,
            checksum_bytes: self.geometry.checksum_bytes,
            tolerance: self.geometry.tolerance(),
            remaining_tolerance: self.remaining_tolerance(),
            commit_sequence: match self.rows() {
                // The map's sequences start at 2 (FORMAT.md V4.8): the last one handed out.
                Some(rows) => rows.read_volume().map().next_sequence().saturating_sub(1),
                None => self.meta.lock().sequence,
            },
            superblock_generation: self.members.generation(),
            devices,
            spares,
            rebuilds: self.rebuild_progress(),
            io_backend: self.io_backends(),
            scrub: self
                .scrub
                .live_progress()
                .or_else(|| self.recorded_scrub_progress()),
            last_scrub: self.members.scrub_record().last,
            counters: history.counters,
            events: history.last(STATUS_EVENTS).to_vec(),
            last_rebuild,
            no_spare_left,
            retired: self.members.retired(),
            recovery_points,
        }
    }
}

impl fmt::Display for PoolHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PoolHealth::Online => "ONLINE",
            PoolHealth::Degraded => "DEGRADED",
            PoolHealth::Faulted => "FAULTED",
        })
    }
}
