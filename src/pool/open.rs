//! Creating and opening pools: superblock discovery and validation, and map recovery.
//!
//! Members are found by identity (pool UUID + device UUID); recorded paths are hints, tried
//! first, then the directories of the given and recorded paths and any scan locations. A
//! member found elsewhere is used there; only a read-write open records its new path.
//!
//! Format versions 1 to 3 (the stripe map) are earlier formats: this build opens them
//! read-only (to read, check, serve read-only and copy into a version-4 pool with
//! `Pool::copy_from`) and neither creates them nor opens them for writing (docs/FORMAT.md,
//! "Earlier versions"). The test machinery alone may switch that off, per thread
//! (`testing::allow_format_3_writes`), for the tests and the simulation that still drive
//! version 3's own engine and make version-3 pools to copy from.

use super::{
    CreateOptions, FormatVersion, MapState, MetaCursor, OpenOptions, PoolInner, STRIPE_LOCKS,
};
use crate::codec::Codec;
use crate::device::canonical_path;
use crate::device::{Device, SharedDevice};
use crate::error::{Error, Result};
use crate::format::{
    decode_checkpoint, decode_log_record, Member, MemberState, PoolUuid, Role, StripeMap,
    Superblock, FORMAT_VERSION,
};
use crate::geometry::{Geometry, Layout, SUPERBLOCK_BYTES};
use crate::pool::{Identity, MemberDevice, Members, Replacement, Spare};
use crate::types::SECTOR_BYTES;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[cfg(feature = "testing")]
thread_local! {
    static STRIPE_MAP_WRITES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread may create a version-3 pool or open one for writing (test machinery
/// only; never in a build without the `testing` feature).
fn stripe_map_writes_allowed() -> bool {
    #[cfg(feature = "testing")]
    {
        STRIPE_MAP_WRITES.with(std::cell::Cell::get)
    }
    #[cfg(not(feature = "testing"))]
    {
        false
    }
}

/// Let this thread create version-3 pools and open them for writing (`on`), or not.
#[cfg(feature = "testing")]
pub(crate) fn allow_stripe_map_writes(on: bool) {
    STRIPE_MAP_WRITES.with(|allowed| allowed.set(on));
}

/// The refusal of a write access to a pool of an earlier format version (`version`, 1 to 3),
/// naming the device it was found on and the way out.
fn earlier_version_refused(operation: &str, version: u32, device: &str) -> Error {
    Error::Unsupported {
        operation: operation.into(),
        version,
        reason: format!(
            "{device} belongs to a format-version-{version} pool (the stripe map); this build \
             writes format version {FORMAT_VERSION} only and opens earlier versions read-only: \
             read, check or serve it read-only, or copy it into a new version-{FORMAT_VERSION} \
             pool with `stripestore create --copy-from {device} NEW-DEVICES...` \
             (Pool::copy_from)"
        ),
    }
}

/// Offset of the second superblock copy: the last 64 KiB of the device, wherever the data ends,
/// so it can be found without trusting the first copy.
pub(crate) fn superblock_b_offset(device: &dyn Device) -> u64 {
    (device.size() - device.size() % SECTOR_BYTES).saturating_sub(SUPERBLOCK_BYTES)
}

/// Read both superblock copies and return the newest valid one.
pub(crate) fn read_superblock(device: &dyn Device) -> std::result::Result<Superblock, String> {
    let mut best: Option<Superblock> = None;
    let mut reasons = Vec::new();
    if device.size() < 2 * SUPERBLOCK_BYTES {
        return Err(format!("device is only {} bytes", device.size()));
    }
    for offset in [0, superblock_b_offset(device)] {
        let mut bytes = vec![0u8; usize::try_from(SUPERBLOCK_BYTES).unwrap_or(0)];
        let decoded = device
            .read_at(offset, &mut bytes)
            .map_err(|e| format!("read at {offset}: {e}"))
            .and_then(|()| Superblock::decode(&bytes));
        match decoded {
            Ok(sb) if best.as_ref().is_none_or(|b| sb.generation > b.generation) => best = Some(sb),
            Ok(_) => {}
            Err(reason) => reasons.push(format!("copy at {offset}: {reason}")),
        }
    }
    best.ok_or_else(|| reasons.join("; "))
}

/// The pool a device's superblock names, if it has one; a superblock that cannot be read (damaged
/// copies, or a newer format) still counts, as an unknown pool.
pub(super) fn superblock_owner(device: &dyn Device) -> Option<String> {
    if let Ok(superblock) = read_superblock(device) {
        return Some(superblock.pool_uuid.to_string());
    }
    if device.size() < 2 * SUPERBLOCK_BYTES {
        return None;
    }
    [0, superblock_b_offset(device)].into_iter().find_map(|offset| {
        let mut magic = [0u8; 8];
        device.read_at(offset, &mut magic).ok()?;
        Superblock::has_magic(&magic).then(|| {
            format!("unknown (a stripestore superblock at byte {offset} that cannot be read: damaged, or from a newer format)")
        })
    })
}

/// The stripestore label of a device (its newest valid superblock copy), for tools that look at
/// a device on its own (`labelclear`): `Ok(None)` if it carries no stripestore superblock at
/// all.
///
/// # Errors
/// [`Error::NotAMember`] if a superblock is there but no copy can be read (damaged, or from a
/// newer format).
pub fn read_label(device: &dyn Device) -> Result<Option<Superblock>> {
    match read_superblock(device) {
        Ok(superblock) => Ok(Some(superblock)),
        Err(reason) => match superblock_owner(device) {
            Some(_) => Err(Error::NotAMember {
                device: device.name(),
                reason,
            }),
            None => Ok(None),
        },
    }
}

/// Wipe both stripestore superblock copies of a device (at byte 0 and in its last 64 KiB) with
/// zeros, then flush: the device no longer names any pool, and `create` or `spare add` take it
/// without force. Nothing else on the device is touched. Whether the device may be wiped (it
/// must not be a member in service) is the caller's decision.
///
/// # Errors
/// [`Error::Io`] if a write or the flush fails; [`Error::DeviceTooSmall`] for a device too
/// small to hold the two copies.
pub fn clear_label(device: &dyn Device) -> Result<()> {
    if device.size() < 2 * SUPERBLOCK_BYTES {
        return Err(Error::DeviceTooSmall {
            device: device.name(),
            size: device.size(),
            needed: 2 * SUPERBLOCK_BYTES,
        });
    }
    let zeros = vec![0u8; usize::try_from(SUPERBLOCK_BYTES).unwrap_or(0)];
    let io = |offset: Option<u64>| {
        move |err: crate::device::DeviceError| Error::Io {
            device: device.name(),
            offset,
            source: err.into_io(),
        }
    };
    for offset in [0, superblock_b_offset(device)] {
        device.write_at(offset, &zeros).map_err(io(Some(offset)))?;
    }
    device.flush().map_err(io(None))
}

use crate::types::now_unix_secs;

fn new_inner(
    geometry: Geometry,
    uuid: PoolUuid,
    members: Members,
    state: MapState,
    meta: MetaCursor,
    options: &OpenOptions,
    rows: Option<super::rows::RowsEngine>,
) -> Result<PoolInner> {
    Ok(PoolInner {
        rows,
        codec: Codec::new(geometry.layout, geometry.devices)?,
        geometry,
        uuid,
        members,
        map: Mutex::new(state),
        meta: Mutex::new(meta),
        stripe_locks: (0..STRIPE_LOCKS).map(|_| Mutex::new(())).collect(),
        rebuild: crate::rebuild::RebuildControl::new(
            options.rebuild_rate_bytes_per_s,
            options.auto_replace,
            options.background_rebuild && !options.read_only,
        ),
        attach_lock: parking_lot::RwLock::new(()),
        scrub: super::scrub::ScrubControl::default(),
        requests: super::RequestMetrics::default(),
        flushes: super::flush_group::FlushGroup::default(),
        policy: Mutex::new(None),
        reclaim_wake: std::sync::Arc::new(super::reclaim::Wake::default()),
    })
}

/// Devices `create` must not label: one given twice, and (unless forced) one that holds a
/// pool's superblock or another known signature. Checked before any byte is written.
fn refuse_for_create(all: &[&SharedDevice], force: bool) -> Result<()> {
    let mut names: Vec<String> = all.iter().map(|d| d.name()).collect();
    names.sort();
    if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::InvalidConfig(format!("{} is given twice", pair[0])));
    }
    if !force {
        for device in all {
            if let Some(pool) = superblock_owner(device.as_ref()) {
                return Err(Error::DeviceInUse {
                    device: device.name(),
                    pool,
                });
            }
            crate::device::refuse_signature(device.as_ref())?;
        }
    }
    Ok(())
}

pub(super) fn create(
    devices: Vec<SharedDevice>,
    spares: Vec<SharedDevice>,
    options: &CreateOptions,
) -> Result<PoolInner> {
    if options.format == FormatVersion::V3 && !stripe_map_writes_allowed() {
        return Err(Error::Unsupported {
            operation: "create".into(),
            version: 3,
            reason: format!(
                "this build creates format version {FORMAT_VERSION} pools only \
                 (FormatVersion::V4); version 3 is opened read-only, to copy it"
            ),
        });
    }
    let all: Vec<&SharedDevice> = devices.iter().chain(&spares).collect();
    refuse_for_create(&all, options.force)?;
    let smallest = devices
        .iter()
        .map(|d| d.size())
        .min()
        .ok_or_else(|| Error::InvalidConfig("a pool needs at least one data device".into()))?;
    let device_bytes = options.device_bytes.unwrap_or(smallest);
    for device in &all {
        if device.size() < device_bytes {
            return Err(Error::DeviceTooSmall {
                device: device.name(),
                size: device.size(),
                needed: device_bytes,
            });
        }
    }
    let (geometry, fitted) = match &options.format {
        FormatVersion::V3 => (
            Geometry::new(
                options.layout,
                devices.len(),
                options.chunk_bytes,
                options.checksum_bytes,
                device_bytes,
            )?,
            None,
        ),
        FormatVersion::V4(v4) => {
            let (geometry, fitted) =
                super::rows::geometry(options, v4, devices.len(), device_bytes)?;
            (geometry, Some(fitted))
        }
    };
    let domains = create_domains(&geometry, fitted.is_some(), spares.len(), options)?;
    let uuid = PoolUuid::random();
    let member_records: Vec<Member> = devices
        .iter()
        .enumerate()
        .map(|(index, d)| (Role::Data { index }, d))
        .chain(spares.iter().map(|d| (Role::Spare, d)))
        .enumerate()
        .map(|(i, (role, device))| Member {
            uuid: PoolUuid::random(),
            role,
            state: MemberState::Online,
            path: device.name(),
            domain: domains.get(i).cloned(),
            unavailable: None,
        })
        .collect();
    let template = Superblock {
        format_version: FORMAT_VERSION,
        pool_uuid: uuid,
        device_uuid: uuid,
        generation: 0,
        layout: options.layout.to_string(),
        chunk_bytes: geometry.chunk_bytes,
        checksum_bytes: Some(geometry.checksum_bytes),
        device_bytes: geometry.device_bytes,
        volume_bytes: geometry.volume_bytes(),
        members: member_records.clone(),
        created_unix_secs: now_unix_secs(),
        scrub: crate::format::ScrubRecord::default(),
        history: crate::format::History::default(),
        map: None,
        forks: Vec::new(),
    };
    // A v4 pool's map goes down before its superblocks: a crash in between leaves devices
    // without a superblock of this pool, which nothing opens (create again).
    let (template, rows) = match &fitted {
        None => (template, None),
        Some(v4) => {
            let present: Vec<Option<SharedDevice>> = devices.iter().cloned().map(Some).collect();
            let (volume, params) =
                super::rows::create(&present, uuid, &geometry, v4, &options.open)?;
            let params = crate::format::MapParams {
                failure_domains: !domains.is_empty(),
                ..params
            };
            let template = Superblock {
                volume_bytes: volume.volume_bytes(),
                checksum_bytes: Some(crate::volume::BLOCK_BYTES as u64),
                map: Some(params),
                ..template
            };
            let rows = super::rows::RowsEngine::new(volume, params);
            (template, Some(rows))
        }
    };
    let handles: Vec<SharedDevice> = devices.into_iter().chain(spares).collect();
    let mut data = Vec::new();
    let mut spare_members = Vec::new();
    for (record, device) in member_records.iter().zip(handles) {
        match record.role {
            Role::Data { index } => data.push(MemberDevice::new(index, record, Some(device), "")),
            Role::Spare => spare_members.push(Spare {
                identity: Identity {
                    uuid: record.uuid,
                    path: record.path.clone(),
                    domain: record.domain.clone(),
                },
                device: Some(device),
                fault: None,
            }),
        }
    }
    let members = Members::new(
        data,
        spare_members,
        template,
        options.layout,
        options.open.fault_policy(),
    );
    let failures = members.write_superblocks()?;
    if let Some((device, err)) = failures.into_iter().next() {
        return Err(Error::Io {
            device,
            offset: None,
            source: err.into_io(),
        });
    }
    if rows.is_some() {
        let inner = new_inner(
            geometry.clone(),
            uuid,
            members,
            empty_map_state(&geometry),
            empty_meta(&geometry),
            &options.open,
            rows,
        )?;
        tracing::info!(pool = %uuid, layout = %options.layout, volume_bytes = inner.volume_bytes(), format_version = 4, "pool created");
        return Ok(inner);
    }
    let state = MapState::new(
        StripeMap::new(geometry.stripes, geometry.crcs_per_entry()),
        geometry.slots,
        0,
        (0..geometry.slots).rev().collect(),
    );
    let meta = empty_meta(&geometry);
    let inner = new_inner(geometry, uuid, members, state, meta, &options.open, None)?;
    {
        let mut meta = inner.meta.lock();
        inner.write_checkpoint(&mut meta, 0)?;
    }
    tracing::info!(pool = %uuid, layout = %options.layout, volume_bytes = inner.geometry.volume_bytes(), "pool created");
    Ok(inner)
}

/// The v3 map state of a pool that has none (format version 4: its map is the volume's).
fn empty_map_state(geometry: &Geometry) -> MapState {
    MapState::new(
        StripeMap::new(0, geometry.crcs_per_entry()),
        0,
        0,
        Vec::new(),
    )
}

/// A v3 metadata cursor at its start.
fn empty_meta(geometry: &Geometry) -> MetaCursor {
    MetaCursor {
        sequence: 0,
        log_used: 0,
        next_checkpoint: vec![0; geometry.devices],
    }
}

/// What to do with a found device, judged against the newest superblock.
enum Problem {
    /// Use it.
    None,
    /// Leave it out, with a warning saying why and what to do (stale, faulted, detached).
    Left(String),
    /// Leave it out, saying so only in the debug log: a member an administrator took offline
    /// (`status` shows it OFFLINE; it is not news on every command).
    Offline(String),
    /// Unusable: an error if the caller named it, a warning if it was found by its path.
    Refused(Error),
}

struct Found {
    device: SharedDevice,
    superblock: Superblock,
    /// Named by the caller (errors are fatal) rather than found by a recorded path.
    given: bool,
}

/// Where to look for members that were not given (see [`discover_members`]).
pub(super) enum Discover<'a> {
    /// Nowhere: the devices given are the pool.
    No,
    /// At the recorded paths, then in their directories and in these locations.
    Scan(&'a [PathBuf]),
}

pub(super) fn open(
    devices: Vec<SharedDevice>,
    discover: Discover<'_>,
    options: &OpenOptions,
) -> Result<PoolInner> {
    let mut found = read_given(devices)?;
    // Why recorded members could not be opened (the real error, for status).
    let mut unopened: BTreeMap<[u8; 16], String> = BTreeMap::new();
    if let Discover::Scan(scan) = discover {
        discover_members(&mut found, scan, options.access(), &mut unopened);
    }
    // The newest superblock among everything found decides membership and staleness, so a
    // stale device cannot vouch for itself with its own outdated member list.
    let (newest, newest_device) = found
        .iter()
        .max_by_key(|f| f.superblock.generation)
        .map(|f| (f.superblock.clone(), f.device.name()))
        .ok_or_else(|| Error::InvalidConfig("no devices given".into()))?;
    // An earlier format is refused for writing before anything else is looked at.
    if newest.map.is_none() && !options.read_only && !stripe_map_writes_allowed() {
        return Err(earlier_version_refused(
            "opening for writing",
            newest.required_version(),
            &newest_device,
        ));
    }
    let sorted = sort_found(found, &newest, options.force, &mut unopened)?;
    let assembled = assemble(&newest, &newest_device, sorted.by_uuid, &unopened, options)?;
    // Members recorded away put back in service because they hold every commit.
    let mut revived = false;
    let inner = match newest.map {
        None => {
            let (state, meta) =
                recover_map(&assembled.geometry, newest.pool_uuid, &assembled.members)?;
            let inner = new_inner(
                assembled.geometry,
                newest.pool_uuid,
                assembled.members,
                state,
                meta,
                options,
                None,
            )?;
            let fork = check_openable(&inner, &assembled.suspects, newest.generation, options)?;
            inner.members.note_fork(fork);
            inner
        }
        Some(params) => {
            // Checked before the map is read: a pool that cannot serve stays untouched.
            let inner = new_inner(
                assembled.geometry.clone(),
                newest.pool_uuid,
                assembled.members,
                empty_map_state(&assembled.geometry),
                empty_meta(&assembled.geometry),
                options,
                None,
            )?;
            revived = revive_current_away(&inner, &assembled.suspects, params, options);
            let fork = check_openable(&inner, &assembled.suspects, newest.generation, options)?;
            inner.members.note_fork(fork);
            let devices = inner.volume_devices();
            let rows = super::rows::RowsEngine::open(
                &devices,
                newest.pool_uuid,
                &inner.geometry,
                params,
                options,
            )?;
            // The recorded size is the authority (a later build may compute reserves
            // differently; the size a filesystem was made on never changes under it).
            if !rows.limit_bytes(newest.volume_bytes) {
                return Err(Error::Unsupported {
                    operation: "open".into(),
                    version: 4,
                    reason: format!(
                        "the superblock says the volume is {} bytes, but this build leaves room \
                         for only {} with the pool's map parameters (a build that computes \
                         its reserves differently); open it with the build that created it",
                        newest.volume_bytes,
                        rows.volume_bytes()
                    ),
                });
            }
            let inner = PoolInner {
                rows: Some(rows),
                ..inner
            };
            if !options.read_only {
                settle_open_repairs(&inner)?;
                inner.rows_restart_rebuilds();
            }
            inner
        }
    };
    for member in &inner.members.data {
        if let Some(replacement) = member.replacement() {
            inner.estimate_total(member.index, &replacement);
        }
    }
    if options.read_only {
        // Looking never writes: the state found is shown as it is, and nothing is recorded.
        for member in inner.members.data.iter().filter(|m| !m.is_online()) {
            if let Some(reason) = member.fault_reason() {
                tracing::info!(device = %member.path(), %reason, "member out of service (read-only open: nothing recorded)");
            }
        }
        for moved in &assembled.relocated {
            tracing::warn!(
                "{moved}; used there, not recorded (read-only open: a read-write open records it)"
            );
        }
        return Ok(inner);
    }
    if assembled.newly_missing && !options.force {
        away_at_open(&inner);
    }
    record_open(
        &inner,
        sorted.members_disagree,
        revived,
        assembled.newly_missing,
        &assembled.relocated,
    )?;
    Ok(inner)
}

/// docs/FORMAT.md V4.16 §3, "Away members that hold every commit": when the pool is
/// unavailable with the members in service, the members recorded away that were found at open
/// as themselves with the content they left with (the watch's test) and hold every commit (the
/// map, read without writing over the members in service and them, finds every commit below
/// the sequence each left at) are put back in service, in memory. Writes nothing;
/// `true` when one was. Anything less (no such member, not enough of them, the map not read)
/// leaves the members as they were, and the open fails as it did.
fn revive_current_away(
    inner: &PoolInner,
    suspects: &[(String, PoolUuid)],
    params: crate::format::MapParams,
    options: &OpenOptions,
) -> bool {
    // Only where the open would be refused: unavailable, or unable to prove the members
    // present current (`check_openable`); never forced (a forced open forks rather than
    // proves, and the proof below needs its refusal).
    let present = inner.members.data.iter().filter(|m| m.is_online()).count();
    let unproven =
        !suspects.is_empty() && present + inner.codec.shards_needed() <= inner.geometry.devices;
    if options.force || (inner.available_without(None) && !unproven) {
        return false;
    }
    let candidates: Vec<(crate::types::DeviceIndex, SharedDevice, u64)> = inner
        .members
        .data
        .iter()
        .filter_map(|member| {
            let away = member.away()?;
            let since = away.record.since_sequence;
            if member.replacement().is_some() || since == 0 {
                return None;
            }
            let device = away.device.clone()?;
            match inner.returning(device.as_ref(), member.index, &away) {
                Ok(true) => Some((member.index, device, since)),
                Ok(false) => None,
                Err(why) => {
                    tracing::info!(device = %member.path(), %why, "recorded away; not taken as the member at open");
                    None
                }
            }
        })
        .collect();
    if candidates.is_empty() {
        return false;
    }
    let mut devices = inner.volume_devices();
    for (index, device, _) in &candidates {
        devices[index.0] = Some(device.clone());
    }
    let in_service: Vec<bool> = devices.iter().map(Option::is_some).collect();
    if !inner.geometry.layout.available_with(&in_service) {
        return false;
    }
    // Fail closed: a ring or a log half skipped for a read error could hide the commit that
    // makes a candidate behind.
    let failed = Arc::new(AtomicBool::new(false));
    let watched: Vec<Option<SharedDevice>> = devices
        .iter()
        .map(|d| {
            d.as_ref().map(|device| {
                Arc::new(ReadsWatched {
                    device: device.clone(),
                    failed: failed.clone(),
                }) as SharedDevice
            })
        })
        .collect();
    let looking = OpenOptions {
        read_only: true,
        ..options.clone()
    };
    let below = match super::rows::RowsEngine::open(
        &watched,
        inner.uuid,
        &inner.geometry,
        params,
        &looking,
    ) {
        Ok(_) if failed.load(Ordering::Acquire) => {
            tracing::info!("a read failed while the map was read with the members recorded away; they stay away");
            return false;
        }
        Ok(rows) => rows.read_volume().map().open_report().committed_below,
        Err(err) => {
            tracing::info!(%err, "the map could not be read with the members recorded away; they stay away");
            return false;
        }
    };
    #[cfg(feature = "testing")]
    let below = if options.planted.revive_behind {
        0
    } else {
        below
    };
    let mut revived = false;
    for (index, device, since) in candidates {
        let path = inner.members.get(index).path();
        if below > since {
            tracing::info!(device = %path, since, below, "recorded away at sequence {since}, and a commit of sequence {} is on the members: behind, stays away", below - 1);
            continue;
        }
        let detail = format!(
            "recorded away since sequence {since}; every commit found is below it (below {below}): back in service at open, nothing to copy"
        );
        tracing::warn!(device = %path, index = index.0, "{detail}");
        if !options.read_only {
            inner.note(crate::format::EventKind::Online, &path, &detail);
        }
        inner.members.revive_at_open(index, device);
        revived = true;
    }
    revived
}

/// A member's device as the revival reads the map through it: any failed read is noted (the
/// revival then fails closed), and it is never written (the read is a looking open's).
#[derive(Debug)]
struct ReadsWatched {
    device: SharedDevice,
    failed: Arc<AtomicBool>,
}

impl Device for ReadsWatched {
    fn read_at(
        &self,
        offset: u64,
        buf: &mut [u8],
    ) -> std::result::Result<(), crate::device::DeviceError> {
        let read = self.device.read_at(offset, buf);
        if read.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        read
    }
    fn write_at(
        &self,
        offset: u64,
        _buf: &[u8],
    ) -> std::result::Result<(), crate::device::DeviceError> {
        self.failed.store(true, Ordering::Release);
        Err(crate::device::DeviceError::Io(std::io::Error::other(
            format!(
                "{}: a write at byte {offset} during a read-only look at the map",
                self.device.name()
            ),
        )))
    }
    fn flush(&self) -> std::result::Result<(), crate::device::DeviceError> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.device.size()
    }
    fn name(&self) -> String {
        self.device.name()
    }
    fn is_unreachable(&self) -> bool {
        self.device.is_unreachable()
    }
}

/// Remote members (an NBD URI) recorded in service (and not degraded) that do not answer at a
/// writable v4 open are away, not faulted (docs/FORMAT.md V4.16 §7, review F9); a local disk
/// missing at open is a failure as before (unplugged, its spare takes over): every commit the
/// opened map
/// holds had their flush succeed (a commit goes on without a member only once the superblocks
/// record it out of service), so their content is exact below this open's first sequence,
/// and they are resynced by what changed when they answer. Not after a forced open: the
/// missing member may then hold a newer history than the one opened.
fn away_at_open(inner: &PoolInner) {
    let Some(rows) = inner.rows() else {
        return;
    };
    let since = rows.read_volume().map().next_sequence();
    for member in &inner.members.data {
        let missing = member
            .fault_reason()
            .is_some_and(|r| r.starts_with("missing: "));
        let remote = crate::device::is_uri_path(std::path::Path::new(&member.path()));
        if missing && remote && member.degraded_reason().is_none() && member.away().is_none() {
            inner.members.away_at_open(member.index, since);
        }
    }
}

/// Members a writable v4 open could not bring up to the state it opened (the uberblock or the
/// log chain could not be written: docs/FORMAT.md V4.8, "Recovery at open", step 4). Left in
/// service, one of them could later, alone, open an older state than this open serves. Each is
/// taken out of service when the pool can lose it, and that is recorded in the superblocks of
/// every member still in service before anything is served; otherwise the open is refused with
/// the error naming the members.
fn settle_open_repairs(inner: &PoolInner) -> Result<()> {
    let Some(rows) = inner.rows() else {
        return Ok(());
    };
    let failed = rows
        .read_volume()
        .map()
        .open_report()
        .rereplication_failed
        .clone();
    if failed.is_empty() {
        return Ok(());
    }
    for (member, why) in &failed {
        let device = inner.members.get(*member).path();
        tracing::warn!(%device, error = %why, "a member could not be brought up to date at open");
        let error = crate::device::DeviceError::Io(std::io::Error::other(why.clone()));
        inner
            .members
            .record_error(*member, None, super::DeviceFault::Write(&error));
        let reason = format!("not brought up to date at open: {why}");
        if !inner.members.fault_if_available(*member, &reason) {
            return Err(inner.unavailable_with([device]));
        }
    }
    if inner.members.record_everywhere() {
        Ok(())
    } else {
        Err(inner.unavailable_with(
            failed
                .iter()
                .map(|(member, _)| inner.members.get(*member).path()),
        ))
    }
}

/// Read the superblock of every device the caller gave; all must belong to the first one's
/// pool.
fn read_given(devices: Vec<SharedDevice>) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    for device in devices {
        let superblock = read_superblock(device.as_ref()).map_err(|reason| Error::NotAMember {
            device: device.name(),
            reason,
        })?;
        found.push(Found {
            device,
            superblock,
            given: true,
        });
    }
    let first = found
        .first()
        .ok_or_else(|| Error::InvalidConfig("no devices given".into()))?;
    let (pool_uuid, reference) = (first.superblock.pool_uuid, first.device.name());
    for f in &found {
        if f.superblock.pool_uuid != pool_uuid {
            return Err(Error::MixedPools {
                device: f.device.name(),
                found: f.superblock.pool_uuid.to_string(),
                other: reference.clone(),
                expected: pool_uuid.to_string(),
            });
        }
    }
    Ok(found)
}

/// The devices found, judged against the newest superblock.
struct Sorted {
    /// The devices to use, by device UUID.
    by_uuid: BTreeMap<[u8; 16], SharedDevice>,
    /// Members whose own superblock is older than the newest found (a superblock update cut
    /// short by a crash): rewritten so that each could vouch for the pool on its own.
    members_disagree: bool,
}

/// Judge every found device against `newest`: use it, leave it out with a warning (stale,
/// faulted, detached), or refuse it. Refused devices found by path go into `unopened`.
fn sort_found(
    found: Vec<Found>,
    newest: &Superblock,
    force: bool,
    unopened: &mut BTreeMap<[u8; 16], String>,
) -> Result<Sorted> {
    // A split brain: two devices each written by a pool opened without the other (a forced
    // open), so either may hold writes the other never saw. Neither can be trusted blindly,
    // and the newer generation proves nothing (either side may have recorded more changes).
    if !force {
        if let Some((x, y)) = split_brain(&found, newest) {
            return Err(Error::SplitBrain {
                device: x.device.name(),
                generation: x.superblock.generation,
                other: y.device.name(),
                other_generation: y.superblock.generation,
            });
        }
    }
    let mut sorted = Sorted {
        by_uuid: BTreeMap::new(),
        members_disagree: false,
    };
    for f in found {
        let problem = judge(&f, newest, &mut sorted.members_disagree);
        match (problem, f.given) {
            (Problem::Refused(err), true) => return Err(err),
            (Problem::Refused(err), false) => {
                tracing::warn!(%err, "recorded member not used");
                unopened.insert(f.superblock.device_uuid.0, err.to_string());
            }
            (Problem::Left(warning), _) => tracing::warn!("{warning}"),
            (Problem::Offline(note), _) => tracing::debug!("{note}"),
            (Problem::None, _) => {
                if sorted
                    .by_uuid
                    .insert(f.superblock.device_uuid.0, f.device)
                    .is_some()
                {
                    return Err(Error::InvalidConfig(format!(
                        "device {} is given twice",
                        f.superblock.device_uuid
                    )));
                }
            }
        }
    }
    Ok(sorted)
}

/// Two found devices in a split brain, if any: one records a fork (a forced open went on
/// without the other, which could have been current) and the other's generation is past the
/// fork's (it went on too: each side holds writes the other never saw); or the two claim the
/// newest generation with different member lists. Generations and member states alone cannot
/// tell a split brain from a member merely left behind (each records the other faulted in
/// both), so a forced open records where it forked.
fn split_brain<'a>(found: &'a [Found], newest: &Superblock) -> Option<(&'a Found, &'a Found)> {
    for x in found {
        for fork in &x.superblock.forks {
            if let Some(y) = found
                .iter()
                .find(|y| fork.diverged(y.superblock.device_uuid, y.superblock.generation))
            {
                return Some((x, y));
            }
        }
    }
    let tied = found.iter().find(|f| {
        f.superblock.generation == newest.generation && f.superblock.members != newest.members
    })?;
    let other = found.iter().find(|f| {
        f.superblock.generation == newest.generation && f.superblock.members == newest.members
    })?;
    Some((tied, other))
}

/// What to do with one found device; notes in `disagree` a usable member whose superblock is
/// behind the newest.
fn judge(f: &Found, newest: &Superblock, disagree: &mut bool) -> Problem {
    let member = newest
        .members
        .iter()
        .find(|m| m.uuid == f.superblock.device_uuid);
    match member {
        // Same pool, but no longer in its member list: replaced or detached earlier.
        None => Problem::Left(format!(
            "{} is a former member of pool {}: it is no longer in the member list (replaced or detached); opened without it. To use it again, add it as a new device (`spare add --force`, or `replace ... --force`)",
            f.device.name(),
            newest.pool_uuid
        )),
        // Away and expected back (FORMAT.md V4.16): kept for probing, out of service (its
        // member record says faulted, so the map never reads it).
        Some(m) if m.unavailable.is_some() && matches!(m.state, MemberState::Faulted { .. }) => {
            Problem::None
        }
        // Faulted (or offline) while the pool went on: it holds outdated data. Named on the
        // command line, it is what a user always types: open without it and say so.
        Some(m) if matches!(m.state, MemberState::Faulted { .. }) => {
            let reason = match &m.state {
                MemberState::Faulted { reason } => reason.clone(),
                _ => String::new(),
            };
            if reason == super::admin::OFFLINE_REASON {
                return Problem::Offline(format!(
                    "{} is offline in pool {} (taken out by an administrator); not used until `stripestore online POOL {}`",
                    f.device.name(),
                    newest.pool_uuid,
                    m.path
                ));
            }
            let back = format!("`stripestore clear POOL --device {}`", m.path);
            Problem::Left(format!(
                "{} is out of service in pool {} ({reason}; its superblock is at generation {}, the pool's at {}): it holds outdated data and is not used. Bring it back with {back} (resynced before use), or replace it",
                f.device.name(),
                newest.pool_uuid,
                f.superblock.generation,
                newest.generation,
            ))
        }
        Some(_) if f.device.size() < newest.device_bytes => Problem::Refused(Error::DeviceTooSmall {
            device: f.device.name(),
            size: f.device.size(),
            needed: newest.device_bytes,
        }),
        Some(_) => {
            *disagree |= f.superblock.generation != newest.generation;
            Problem::None
        }
    }
}

/// The pool's members as the newest superblock records them, with the devices found.
struct Assembled {
    geometry: Geometry,
    members: Members,
    /// A member recorded in service (online or degraded) or a replacement in progress was not
    /// found: the superblocks are rewritten to record it.
    newly_missing: bool,
    /// Members recorded in service (online or degraded) but not found (they may hold newer
    /// data): path and device UUID.
    suspects: Vec<(String, PoolUuid)>,
    /// Members (and spares, replacements) found at another path than the one recorded.
    relocated: Vec<Relocated>,
}

/// A member found at another path than the newest superblock records.
#[derive(Debug, Clone)]
pub(super) struct Relocated {
    /// What it is: `member <uuid> (data position N)`, `spare <uuid>` ...
    pub(super) what: String,
    /// Where it is now (canonical).
    pub(super) path: String,
    /// Where it was recorded.
    pub(super) was: String,
}

impl std::fmt::Display for Relocated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} found at new path {} (was {})",
            self.what, self.path, self.was
        )
    }
}

/// The failure domains `options` give (none, or one per data device then one per spare),
/// checked before anything is written: names, all or none, version 4 only, and the placement
/// rule (docs/FORMAT.md V4.16, section 2).
fn create_domains(
    geometry: &Geometry,
    v4: bool,
    spares: usize,
    options: &CreateOptions,
) -> Result<Vec<String>> {
    let domains = &options.domains;
    if domains.is_empty() {
        return Ok(Vec::new());
    }
    let bad = |why: String| Err(Error::InvalidConfig(why));
    if !v4 {
        return bad("failure domains need format version 4".into());
    }
    if domains.len() != geometry.devices + spares {
        return bad(format!(
            "failure domains: {} given for {} data devices and {spares} spares (every device \
             needs one, or none does)",
            domains.len(),
            geometry.devices
        ));
    }
    for name in domains {
        crate::geometry::check_domain_name(name).map_err(Error::InvalidConfig)?;
    }
    let data: Vec<&str> = domains[..geometry.devices]
        .iter()
        .map(String::as_str)
        .collect();
    crate::geometry::check_domains(geometry, &data).map_err(Error::InvalidConfig)?;
    Ok(domains.clone())
}

/// `record` with its path replaced by where `device` is, if that is elsewhere (noted in
/// `relocated`).
fn located(
    record: &Member,
    device: Option<&SharedDevice>,
    relocated: &mut Vec<Relocated>,
) -> Member {
    let Some(device) = device else {
        return record.clone();
    };
    let now = canonical_path(Path::new(&device.name()));
    if now == canonical_path(Path::new(&record.path)) {
        return record.clone();
    }
    let what = match record.role {
        Role::Data { index } if matches!(record.state, MemberState::Rebuilding { .. }) => {
            format!("replacement {} (data position {index})", record.uuid)
        }
        Role::Data { index } => format!("member {} (data position {index})", record.uuid),
        Role::Spare => format!("spare {}", record.uuid),
    };
    let path = now.display().to_string();
    relocated.push(Relocated {
        what,
        path: path.clone(),
        was: record.path.clone(),
    });
    Member {
        path,
        ..record.clone()
    }
}

/// Build the geometry and the member table from `newest` and the devices in `by_uuid`.
fn assemble(
    newest: &Superblock,
    newest_device: &str,
    mut by_uuid: BTreeMap<[u8; 16], SharedDevice>,
    unopened: &BTreeMap<[u8; 16], String>,
    options: &OpenOptions,
) -> Result<Assembled> {
    let corrupt = |reason: String| Error::CorruptMetadata {
        device: Some(newest_device.to_string()),
        offset: None,
        reason,
    };
    let layout: Layout = newest.layout.parse()?;
    let data_count = newest
        .members
        .iter()
        .filter(|m| {
            matches!(m.role, Role::Data { .. })
                && !matches!(m.state, MemberState::Rebuilding { .. })
        })
        .count();
    let geometry = match &newest.map {
        Some(params) => super::rows::recorded_geometry(
            layout,
            data_count,
            newest.chunk_bytes,
            newest.device_bytes,
            params,
        )
        .map_err(|e| match e {
            Error::CorruptMetadata { reason, .. } => corrupt(reason),
            other => other,
        })?,
        None => Geometry::new(
            layout,
            data_count,
            newest.chunk_bytes,
            newest.checksum_block_bytes(),
            newest.device_bytes,
        )?,
    };
    if newest.map.is_none() && geometry.volume_bytes() != newest.volume_bytes {
        return Err(corrupt(format!(
            "superblock says volume is {} bytes but its geometry gives {}",
            newest.volume_bytes,
            geometry.volume_bytes()
        )));
    }
    let mut data: Vec<Option<MemberDevice>> = (0..data_count).map(|_| None).collect();
    let mut replacements = Vec::new();
    let mut spares = Vec::new();
    let mut newly_missing = false;
    let mut suspects = Vec::new();
    let why_missing = |uuid: &PoolUuid| {
        unopened
            .get(&uuid.0)
            .map_or("device not found at open", String::as_str)
            .to_string()
    };
    let mut relocated = Vec::new();
    for record in &newest.members {
        let device = by_uuid.remove(&record.uuid.0);
        let record = &located(record, device.as_ref(), &mut relocated);
        let identity = Identity {
            uuid: record.uuid,
            path: record.path.clone(),
            domain: record.domain.clone(),
        };
        match (record.role, &record.state) {
            (Role::Data { index }, MemberState::Rebuilding { .. }) => {
                replacements.push((index, record.state.clone(), identity, device));
            }
            (Role::Data { index }, _) if index < data_count && data[index].is_none() => {
                // Missing while recorded in service (online or degraded): it may have been
                // written after every member present, and is recorded faulted from now on.
                if device.is_none() && record.state.in_service() {
                    newly_missing = true;
                    suspects.push((record.path.clone(), record.uuid));
                }
                let missing = why_missing(&record.uuid);
                data[index] = Some(MemberDevice::new(index, record, device, &missing));
            }
            (Role::Data { index }, _) => {
                return Err(corrupt(format!(
                    "member list has a bad or repeated data index {index}"
                )))
            }
            (Role::Spare, state) => {
                let fault = match (state, &device) {
                    (MemberState::Faulted { reason }, _) => Some(reason.clone()),
                    (_, None) => Some(format!("missing: {}", why_missing(&record.uuid))),
                    _ => None,
                };
                spares.push(Spare {
                    identity,
                    device,
                    fault,
                });
            }
        }
    }
    let data: Vec<MemberDevice> = data.into_iter().flatten().collect();
    if data.len() != data_count {
        return Err(corrupt("member list lacks a data position".into()));
    }
    let members = Members::new(data, spares, newest.clone(), layout, options.fault_policy());
    newly_missing |= resume_replacements(&members, replacements, data_count);
    Ok(Assembled {
        geometry,
        members,
        newly_missing,
        suspects,
        relocated,
    })
}

/// Attach the replacements the superblock records as rebuilding, to resume from their
/// checkpoints. Returns whether any was recorded (the superblocks are then rewritten, so every
/// member agrees, or the rebuild starts over).
fn resume_replacements(
    members: &Members,
    replacements: Vec<(usize, MemberState, Identity, Option<SharedDevice>)>,
    data_count: usize,
) -> bool {
    let mut recorded = false;
    for (index, state, identity, device) in replacements {
        let MemberState::Rebuilding {
            next_slot,
            start_generation,
            resync_from_sequence,
        } = state
        else {
            continue;
        };
        recorded = true;
        match device {
            Some(device) if index < data_count => {
                tracing::info!(device = %identity.path, index, next_slot, "resuming rebuild from its checkpoint");
                members.attach_replacement(
                    crate::types::DeviceIndex(index),
                    std::sync::Arc::new(
                        Replacement::new(identity, device, next_slot, start_generation, false)
                            .resyncing_from(resync_from_sequence),
                    ),
                );
            }
            _ => {
                tracing::warn!(device = %identity.path, "replacement in progress not found; its rebuild will start over");
            }
        }
    }
    recorded
}

/// Refuse, before anything is written, a pool that cannot serve or cannot prove it is current.
/// A forced open that goes on where it could not prove it is current forks the pool's history
/// at `generation`: the fork to record (docs/FORMAT.md, "Forks").
fn check_openable(
    inner: &PoolInner,
    suspects: &[(String, PoolUuid)],
    generation: u64,
    options: &OpenOptions,
) -> Result<Option<crate::format::Fork>> {
    // A pool missing more than it tolerates stays untouched, so putting the missing device
    // back later is all it takes.
    inner.check_available()?;
    // A member the newest superblock found calls in service (online, or degraded: it still
    // receives every write) is missing. If the members present could all be ones that were
    // faulted while the missing ones went on without them, their newest superblock cannot show
    // it, and opening would roll back flushed writes. That is impossible when the present
    // members plus the shards a stripe needs outnumber the layout: any set of members able to
    // write would have included one of them.
    let present = inner.members.data.iter().filter(|m| m.is_online()).count();
    let needed = inner.codec.shards_needed();
    if suspects.is_empty() || present + needed > inner.geometry.devices {
        return Ok(None);
    }
    if !options.force {
        return Err(Error::CannotProveCurrent {
            present,
            total: inner.geometry.devices,
            missing: suspects.iter().map(|(path, _)| path.clone()).collect(),
        });
    }
    Ok(Some(crate::format::Fork {
        from_generation: generation,
        left_out: suspects.iter().map(|(_, uuid)| *uuid).collect(),
    }))
}

/// A read-write open records what it found: superblocks rewritten where members disagree,
/// went missing or were put back in service (`revived`), and the recovered map written as a
/// fresh checkpoint everywhere.
fn record_open(
    inner: &PoolInner,
    members_disagree: bool,
    revived: bool,
    newly_missing: bool,
    relocated: &[Relocated],
) -> Result<()> {
    inner.note(crate::format::EventKind::Open, "", "opened read-write");
    for moved in relocated {
        tracing::warn!("{moved}; recorded");
        inner.note(
            crate::format::EventKind::MemberMoved,
            &moved.path,
            &format!("{} (was {})", moved.what, moved.was),
        );
    }
    if members_disagree && !newly_missing {
        tracing::info!("members' superblocks disagree (an update was cut short); rewriting them");
    }
    if (members_disagree || !relocated.is_empty()) && !newly_missing && !revived {
        inner.members.write_superblocks()?;
    }
    if revived && !newly_missing {
        // Before anything is served: every member in service records them online (a member
        // whose superblock does not take it is faulted when the pool can lose it).
        inner.members.record_everywhere_or_name()?;
    }
    if newly_missing {
        for (i, member) in inner.members.data.iter().enumerate() {
            if !member.is_online() {
                tracing::warn!(device = %member.path(), index = i, "member missing at open; marked faulted");
            }
        }
        // A recorded change (and, after a forced open, the fork that must be on every member
        // that goes on: docs/FORMAT.md "Forks"): a member whose superblocks do not take it is
        // counted and faulted when the pool can lose it, and otherwise the open fails naming it.
        inner.members.record_everywhere_or_name()?;
    }
    if inner.rows().is_some() {
        // The volume's open re-replicated the log to members that lagged (FORMAT.md V4.8).
        return Ok(());
    }
    // Re-replicate the recovered map to every online device as a fresh checkpoint, so that
    // devices that missed the last commits agree again (and none of them can later bring back
    // an older map that names slots this open considers free), and restart the log.
    let mut meta = inner.meta.lock();
    let sequence = meta.sequence + 1;
    inner.write_checkpoint(&mut meta, sequence)?;
    meta.sequence = sequence;
    Ok(())
}

/// Find members that were not given. Identity is the device UUID; paths are hints. First the
/// recorded paths (a recorded path holding another member of this pool counts for that
/// member: disks renamed among themselves), then, for members still missing, every file and
/// block device in the candidate locations: the directories of the devices found and of the
/// recorded paths, plus `scan` (directories, or devices named one by one).
fn discover_members(
    found: &mut Vec<Found>,
    scan: &[PathBuf],
    access: crate::device::Access,
    unopened: &mut BTreeMap<[u8; 16], String>,
) {
    let pool = found[0].superblock.pool_uuid;
    let mut held: HashSet<PathBuf> = found
        .iter()
        .map(|f| canonical_path(Path::new(&f.device.name())))
        .collect();
    let recorded: Vec<Member> = found
        .iter()
        .flat_map(|f| f.superblock.members.clone())
        .collect();
    let is_known =
        |found: &[Found], uuid: PoolUuid| found.iter().any(|f| f.superblock.device_uuid == uuid);
    for member in &recorded {
        if is_known(found, member.uuid) {
            continue;
        }
        let path = Path::new(&member.path);
        let canonical = canonical_path(path);
        if held.contains(&canonical) {
            // Another member of this pool is there now; this one is looked for below.
            continue;
        }
        let device = match crate::device::open_device_for(path, access) {
            Ok(device) => device,
            Err(err) => {
                tracing::info!(path = %member.path, %err, "recorded member path cannot be opened");
                let reason = match &err {
                    Error::Open { source, .. } => format!("cannot open {}: {source}", member.path),
                    other => other.to_string(),
                };
                unopened.insert(member.uuid.0, reason);
                continue;
            }
        };
        match read_superblock(device.as_ref()) {
            Ok(sb) if sb.pool_uuid == pool && !is_known(found, sb.device_uuid) => {
                held.insert(canonical);
                found.push(Found {
                    device,
                    superblock: sb,
                    given: false,
                });
            }
            Ok(_) => {
                tracing::info!(path = %member.path, "recorded path now holds a different device");
                unopened.insert(
                    member.uuid.0,
                    format!("{} now holds a different device", member.path),
                );
            }
            Err(reason) => {
                tracing::info!(path = %member.path, %reason, "recorded path has no valid superblock");
                unopened.insert(
                    member.uuid.0,
                    format!("{} has no valid superblock: {reason}", member.path),
                );
            }
        }
    }
    // Still missing: members the newest superblock found so far does not record as faulted
    // (a faulted one would be left out anyway), spares included.
    let newest = found
        .iter()
        .max_by_key(|f| f.superblock.generation)
        .map(|f| f.superblock.members.clone())
        .unwrap_or_default();
    let mut missing: Vec<PoolUuid> = newest
        .iter()
        .filter(|m| !matches!(m.state, MemberState::Faulted { .. }))
        .map(|m| m.uuid)
        .filter(|uuid| !is_known(found, *uuid))
        .collect();
    if missing.is_empty() {
        return;
    }
    let mut locations: Vec<PathBuf> = found
        .iter()
        .map(|f| f.device.name())
        .chain(recorded.iter().map(|m| m.path.clone()))
        .filter(|name| !crate::device::is_uri(name))
        .filter_map(|name| {
            canonical_path(Path::new(&name))
                .parent()
                .map(Path::to_path_buf)
        })
        .collect();
    locations.extend(scan.iter().cloned());
    for candidate in candidates(&locations) {
        if missing.is_empty() {
            break;
        }
        let canonical = canonical_path(&candidate);
        if held.contains(&canonical) {
            continue;
        }
        let Some(superblock) = probe(&candidate) else {
            continue;
        };
        if superblock.pool_uuid != pool || !missing.contains(&superblock.device_uuid) {
            continue;
        }
        match crate::device::open_device_for(&canonical, access) {
            Ok(device) => {
                missing.retain(|uuid| *uuid != superblock.device_uuid);
                unopened.remove(&superblock.device_uuid.0);
                held.insert(canonical);
                found.push(Found {
                    device,
                    superblock,
                    given: false,
                });
            }
            Err(err) => {
                tracing::warn!(path = %candidate.display(), %err, "a member of this pool was found here but cannot be opened");
            }
        }
    }
    for uuid in &missing {
        if let Some(reason) = unopened.get(&uuid.0) {
            tracing::warn!(member = %uuid, %reason, "member not found at its recorded path nor in the locations looked in");
        }
    }
}

/// The files and block devices at `locations`: a directory's entries (not recursively), or
/// the path itself; in order, each once.
pub(super) fn candidates(locations: &[PathBuf]) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut add = |path: PathBuf| {
        let usable = std::fs::metadata(&path).is_ok_and(|m| {
            (m.is_file() && m.len() >= 2 * SUPERBLOCK_BYTES) || m.file_type().is_block_device()
        });
        if usable && seen.insert(canonical_path(&path)) {
            out.push(path);
        }
    };
    for location in locations {
        if crate::device::is_uri_path(location) {
            // An NBD member is reached at its URI only: it has no directory to look in, and
            // the filesystem knows nothing of it.
            continue;
        }
        if location.is_dir() {
            let Ok(entries) = std::fs::read_dir(location) else {
                continue;
            };
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for path in paths {
                add(path);
            }
        } else {
            add(location.clone());
        }
    }
    out
}

/// The superblock of the device at `path`, read through a read-only open; `None` if it cannot
/// be opened or carries no readable superblock.
pub(super) fn probe(path: &Path) -> Option<Superblock> {
    let device = crate::device::open_device_for(path, crate::device::Access::ReadOnly).ok()?;
    read_superblock(device.as_ref()).ok()
}

/// The newest map state one device holds: best checkpoint plus its log.
struct DeviceMap {
    sequence: u64,
    next_generation: u64,
    map: StripeMap,
    newest_area: usize,
}

fn load_device_map(geometry: &Geometry, pool: PoolUuid, device: &dyn Device) -> Option<DeviceMap> {
    let mut best: Option<DeviceMap> = None;
    for (area, offset) in geometry.checkpoint_offsets.iter().enumerate() {
        let mut bytes = vec![0u8; usize::try_from(geometry.checkpoint_bytes).ok()?];
        if device.read_at(*offset, &mut bytes).is_err() {
            continue;
        }
        let mut map = StripeMap::new(geometry.stripes, geometry.crcs_per_entry());
        match decode_checkpoint(pool, &bytes, &mut map) {
            Ok(header) if best.as_ref().is_none_or(|b| header.sequence > b.sequence) => {
                best = Some(DeviceMap {
                    sequence: header.sequence,
                    next_generation: header.next_generation,
                    map,
                    newest_area: area,
                });
            }
            Ok(_) => {}
            Err(reason) => {
                tracing::debug!(device = %device.name(), area, %reason, "checkpoint unusable")
            }
        }
    }
    let mut best = best?;
    let mut log = vec![0u8; usize::try_from(geometry.log_bytes).ok()?];
    if device.read_at(geometry.log_offset, &mut log).is_err() {
        return Some(best);
    }
    let mut position = 0usize;
    while position < log.len() {
        match decode_log_record(pool, best.sequence + 1, &log[position..], &mut best.map) {
            Ok(Some(record)) => {
                best.sequence = record.sequence;
                best.next_generation = record.next_generation;
                position += usize::try_from(record.padded_bytes).unwrap_or(log.len());
            }
            Ok(None) => break,
            Err(reason) => {
                tracing::warn!(device = %device.name(), %reason, "log replay stopped");
                break;
            }
        }
    }
    Some(best)
}

fn recover_map(
    geometry: &Geometry,
    pool: PoolUuid,
    members: &Members,
) -> Result<(MapState, MetaCursor)> {
    let mut best: Option<(DeviceMap, String)> = None;
    let mut next_checkpoint = vec![0; geometry.devices];
    for (i, member) in members.data.iter().enumerate() {
        let Some(device) = member.device() else {
            continue;
        };
        let Some(loaded) = load_device_map(geometry, pool, device.as_ref()) else {
            tracing::warn!(device = %member.path(), "no usable stripe map on this device");
            continue;
        };
        next_checkpoint[i] = 1 - loaded.newest_area;
        if best
            .as_ref()
            .is_none_or(|(b, _)| loaded.sequence > b.sequence)
        {
            best = Some((loaded, member.path()));
        }
    }
    let (best, source) = best.ok_or_else(|| {
        Error::corrupt_metadata("no online device holds a valid stripe map checkpoint")
    })?;
    // The map was read from `source`, starting at this checkpoint (then its log).
    let corrupt = |reason: String| Error::CorruptMetadata {
        device: Some(source.clone()),
        offset: geometry.checkpoint_offsets.get(best.newest_area).copied(),
        reason,
    };
    let mut used = vec![false; usize::try_from(geometry.slots).unwrap_or(0)];
    for slot in best.map.used_slots() {
        let Some(flag) = used.get_mut(usize::try_from(slot.0).unwrap_or(usize::MAX)) else {
            return Err(corrupt(format!(
                "map references slot {slot} beyond the pool"
            )));
        };
        if *flag {
            return Err(corrupt(format!("map references slot {slot} twice")));
        }
        *flag = true;
    }
    let free: Vec<u64> = (0..geometry.slots)
        .rev()
        .filter(|s| !used[usize::try_from(*s).unwrap_or(0)])
        .collect();
    let next_generation = best.next_generation.max(best.map.max_generation());
    Ok((
        MapState::new(best.map, geometry.slots, next_generation, free),
        MetaCursor {
            sequence: best.sequence,
            log_used: 0,
            next_checkpoint,
        },
    ))
}

#[cfg(test)]
mod label_tests {
    use super::{clear_label, read_label, superblock_owner};
    use crate::device::SharedDevice;
    use crate::testing::{mem_devices, shared};
    use crate::{CreateOptions, Pool};

    #[test]
    fn a_cleared_label_is_gone_from_both_copies_and_nothing_else_changes() {
        let mems = mem_devices(2, 4 << 20);
        let mut options = CreateOptions::new("mirror:2".parse().unwrap());
        options.chunk_bytes = 16384;
        let pool = Pool::create(shared(&mems), vec![], &options).unwrap();
        pool.write_at(0, &[9u8; 65536]).unwrap();
        let uuid = pool.status().pool;
        pool.close().unwrap();
        let device: SharedDevice = mems[1].clone();
        let label = read_label(device.as_ref()).unwrap().unwrap();
        assert_eq!(label.pool_uuid.to_string(), uuid);
        let mut before = vec![0u8; usize::try_from(device.size()).unwrap()];
        device.read_at(0, &mut before).unwrap();
        clear_label(device.as_ref()).unwrap();
        assert!(read_label(device.as_ref()).unwrap().is_none());
        assert!(superblock_owner(device.as_ref()).is_none());
        let mut after = vec![0u8; before.len()];
        device.read_at(0, &mut after).unwrap();
        let b = usize::try_from(super::superblock_b_offset(device.as_ref())).unwrap();
        let sb = usize::try_from(crate::geometry::SUPERBLOCK_BYTES).unwrap();
        assert!(after[..sb].iter().all(|&x| x == 0));
        assert!(after[b..].iter().all(|&x| x == 0));
        assert_eq!(before[sb..b], after[sb..b], "only the two copies are wiped");
        // A device without a label reads as none.
        let blank = mem_devices(1, 1 << 20);
        assert!(read_label(blank[0].as_ref()).unwrap().is_none());
    }
}

#[cfg(test)]
mod split_brain_tests {
    use super::{split_brain, Found};
    use crate::format::{Fork, Member, MemberState, PoolUuid, Role, Superblock};
    use crate::testing::{mem_devices, shared};

    const X: PoolUuid = PoolUuid([2; 16]);
    const Y: PoolUuid = PoolUuid([3; 16]);

    /// Device `me`'s superblock at `generation`: itself online, the other faulted.
    fn superblock(me: PoolUuid, generation: u64, fork: Option<Fork>) -> Superblock {
        let member = |uuid: PoolUuid, index: usize, state: MemberState| Member {
            uuid,
            role: Role::Data { index },
            state,
            path: format!("/dev/{}", uuid.0[0]),
            domain: None,
            unavailable: None,
        };
        let faulted = MemberState::Faulted {
            reason: "gone".into(),
        };
        let (x_state, y_state) = if me == X {
            (MemberState::Online, faulted)
        } else {
            (faulted, MemberState::Online)
        };
        Superblock {
            format_version: 4,
            pool_uuid: PoolUuid([1; 16]),
            device_uuid: me,
            generation,
            layout: "mirror:2".into(),
            chunk_bytes: 16384,
            checksum_bytes: Some(4096),
            device_bytes: 4 << 20,
            volume_bytes: 1 << 20,
            members: vec![member(X, 0, x_state), member(Y, 1, y_state)],
            created_unix_secs: 1,
            scrub: crate::format::ScrubRecord::default(),
            history: crate::format::History::default(),
            map: None,
            forks: fork.into_iter().collect(),
        }
    }

    fn found(superblocks: [Superblock; 2]) -> Vec<Found> {
        let devices = shared(&mem_devices(2, 1 << 20));
        devices
            .into_iter()
            .zip(superblocks)
            .map(|(device, superblock)| Found {
                device,
                superblock,
                given: true,
            })
            .collect()
    }

    /// Each records the other faulted, generations apart, and no fork: a member left behind
    /// (y was faulted, came back, and x was faulted later while its superblock stayed old),
    /// not a split brain; with a fork that y's generation is past, a split brain; with a fork
    /// y did not go past (y stale, x went on), not one.
    #[test]
    fn a_split_brain_is_a_fork_the_other_side_went_past() {
        let newest = |f: &[Found]| {
            f.iter()
                .max_by_key(|f| f.superblock.generation)
                .map(|f| f.superblock.clone())
                .unwrap()
        };
        let left_behind = found([superblock(X, 5, None), superblock(Y, 9, None)]);
        assert!(split_brain(&left_behind, &newest(&left_behind)).is_none());

        let fork = |from| {
            Some(Fork {
                from_generation: from,
                left_out: vec![X],
            })
        };
        let diverged = found([superblock(X, 5, None), superblock(Y, 9, fork(3))]);
        let (forked, other) = split_brain(&diverged, &newest(&diverged)).unwrap();
        assert_eq!(forked.superblock.device_uuid, Y);
        assert_eq!(other.superblock.device_uuid, X);

        let stale = found([superblock(X, 5, None), superblock(Y, 9, fork(5))]);
        assert!(split_brain(&stale, &newest(&stale)).is_none());

        // Two forced opens are two forks, each with its own point: X left out at 3 and found at
        // 5 is a branch even when a later fork (at 7) left out another member too; X left out
        // only by the later fork and found at 5 is not.
        let mut two = superblock(Y, 9, fork(3));
        two.forks.push(Fork {
            from_generation: 7,
            left_out: vec![PoolUuid([4; 16])],
        });
        let both = found([superblock(X, 5, None), two]);
        assert!(split_brain(&both, &newest(&both)).is_some());
        let mut later = superblock(Y, 9, None);
        later.forks = vec![
            Fork {
                from_generation: 3,
                left_out: vec![PoolUuid([4; 16])],
            },
            Fork {
                from_generation: 7,
                left_out: vec![X],
            },
        ];
        let later = found([superblock(X, 5, None), later]);
        assert!(split_brain(&later, &newest(&later)).is_none());
    }

    /// A member left out stays in its fork until it rejoins under the same UUID (in service or
    /// being resynced); one replaced (gone from the list) or still faulted stays.
    #[test]
    fn a_fork_forgets_a_member_only_when_it_rejoins() {
        let fork = || Fork {
            from_generation: 3,
            left_out: vec![X, Y],
        };
        let mut members = superblock(X, 9, None).members;
        // X online, Y faulted: X rejoined, Y did not.
        assert_eq!(fork().still_away(&members).unwrap().left_out, vec![Y]);
        // Y replaced (a new UUID in its slot): still a branch if its old device turns up.
        members[1].uuid = PoolUuid([5; 16]);
        assert_eq!(fork().still_away(&members).unwrap().left_out, vec![Y]);
        members[1].uuid = Y;
        members[1].state = MemberState::Online;
        assert!(fork().still_away(&members).is_none());
    }
}
