//! `import`: which pools the devices at some locations belong to, like `zpool import` without
//! importing. Reads superblocks only and writes nothing: each pool is looked at through a
//! read-only open of the devices found for it.
//!
//! Owns: grouping found devices by pool and describing each pool. Must not touch: any device
//! byte (every open here is read-only), the pool's own open logic (it calls [`Pool::open`]).

use super::open::{candidates, probe};
use super::{OpenOptions, Pool, PoolHealth};
use crate::format::{MemberState, PoolUuid, Role, Superblock};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A pool found by [`find_pools`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FoundPool {
    /// Pool UUID.
    pub pool: String,
    /// Layout, from the newest superblock found.
    pub layout: String,
    /// Health as a read-only open sees it with the devices found, or `UNAVAILABLE`.
    pub state: String,
    /// Why it cannot be opened with the devices found, if it cannot.
    pub error: Option<String>,
    /// Newest superblock generation found.
    pub generation: u64,
    /// Every member the newest superblock records, and where it was found.
    pub devices: Vec<FoundDevice>,
}

/// One member of a [`FoundPool`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FoundDevice {
    /// Data position (`None` for a spare).
    pub index: Option<usize>,
    /// `data`, `replacement` or `spare`.
    pub role: String,
    /// Device UUID.
    pub uuid: String,
    /// State the newest superblock records (`ONLINE`, `FAULTED`, `OFFLINE`, `DEGRADED`,
    /// `REBUILDING`), or `MISSING` when no device carrying it was found.
    pub state: String,
    /// Where it was found.
    pub path: Option<String>,
    /// The path the superblock records.
    pub recorded_path: String,
}

/// Every pool with a device among the files and block devices at `locations` (a directory's
/// entries, not recursively, or the path itself), in order of pool UUID. Nothing is written.
#[must_use]
pub fn find_pools(locations: &[PathBuf]) -> Vec<FoundPool> {
    let mut pools: BTreeMap<[u8; 16], Vec<(PathBuf, Superblock)>> = BTreeMap::new();
    for path in candidates(locations) {
        if let Some(superblock) = probe(&path) {
            pools
                .entry(superblock.pool_uuid.0)
                .or_default()
                .push((path, superblock));
        }
    }
    pools
        .into_iter()
        .filter_map(|(uuid, found)| describe(PoolUuid(uuid), &found))
        .collect()
}

fn describe(uuid: PoolUuid, found: &[(PathBuf, Superblock)]) -> Option<FoundPool> {
    let newest = found
        .iter()
        .map(|(_, sb)| sb)
        .max_by_key(|sb| sb.generation)?;
    let options = OpenOptions {
        read_only: true,
        background_rebuild: false,
        auto_replace: false,
        ..OpenOptions::default()
    };
    let paths: Vec<PathBuf> = found.iter().map(|(path, _)| path.clone()).collect();
    let (state, error) = match open_found(&paths, &options) {
        Ok(pool) => {
            let health = pool.status().health;
            drop(pool);
            (health_text(health), None)
        }
        Err(err) => ("UNAVAILABLE".to_string(), Some(err.to_string())),
    };
    let devices = newest
        .members
        .iter()
        .map(|member| {
            let at = found
                .iter()
                .find(|(_, sb)| sb.device_uuid == member.uuid)
                .map(|(path, _)| crate::device::canonical_path(path).display().to_string());
            let (index, role) = match (member.role, &member.state) {
                (Role::Data { index }, MemberState::Rebuilding { .. }) => {
                    (Some(index), "replacement")
                }
                (Role::Data { index }, _) => (Some(index), "data"),
                (Role::Spare, _) => (None, "spare"),
            };
            let state = match (&member.state, &at) {
                (_, None) => "MISSING",
                (MemberState::Online, _) => "ONLINE",
                (MemberState::Faulted { reason }, _) if reason == super::admin::OFFLINE_REASON => {
                    "OFFLINE"
                }
                (MemberState::Faulted { .. }, _) => "FAULTED",
                (MemberState::Degraded { .. }, _) => "DEGRADED",
                (MemberState::Rebuilding { .. }, _) => "REBUILDING",
            };
            FoundDevice {
                index,
                role: role.to_string(),
                uuid: member.uuid.to_string(),
                state: state.to_string(),
                path: at,
                recorded_path: member.path.clone(),
            }
        })
        .collect();
    Some(FoundPool {
        pool: uuid.to_string(),
        layout: newest.layout.clone(),
        state,
        error,
        generation: newest.generation,
        devices,
    })
}

/// A read-only open of the pool on exactly the devices found (no discovery elsewhere).
fn open_found(paths: &[PathBuf], options: &OpenOptions) -> crate::error::Result<Pool> {
    let devices = paths
        .iter()
        .map(|path| crate::device::open_device_for(path, options.access()))
        .collect::<crate::error::Result<Vec<_>>>()?;
    Pool::open(devices, options)
}

fn health_text(health: PoolHealth) -> String {
    health.to_string()
}
