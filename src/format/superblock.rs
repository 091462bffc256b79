//! The superblock: who this device is and what pool it belongs to. Two copies per device (first
//! and last 64 KiB); the newest valid copy wins, so one torn or rotten copy is survivable.
//!
//! Encoding: `magic(8) version(u32) json_len(u32) crc32c(u32) zero(12) json`, where the crc
//! covers every byte of header and JSON except the crc field itself. JSON (through serde) keeps it inspectable with `head -c`.

use crate::geometry::SUPERBLOCK_BYTES;
use serde::{Deserialize, Serialize};
use std::fmt;

const MAGIC: &[u8; 8] = b"STRIPSB\0";
const HEADER_BYTES: usize = 32;
/// Newest on-disk format version this build reads and writes. A superblock says 1 when the pool
/// has one checksum per chunk (what every build reads) and 2 when its checksum blocks are
/// smaller than the chunk, so a build that predates checksum blocks refuses the pool with
/// "format version 2" instead of misreading it; 3 while a member is recorded `Degraded` (a
/// state older builds do not know), back to 1 or 2 once it is cleared or replaced. 4 for a
/// pool of the paged map and rows (docs/FORMAT.md V4.12), whatever its members' states: it is
/// told apart by its `map` object, which only version 4 has.
pub const FORMAT_VERSION: u32 = 4;

/// The map parameters of a format-version-4 pool (docs/FORMAT.md V4.2, V4.12), chosen at
/// create and checked at open against their allowed ranges (not against this build's
/// defaults, so test pools with small values open with the same code).
/// A field this build does not know is refused (`deny_unknown_fields`): a later build that
/// records more about the map makes this one refuse the pool by name, never drop the field
/// when it rewrites the superblocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapParams {
    /// Metadata page size (16 KiB).
    pub page_bytes: u64,
    /// Slots per segment.
    pub segment_slots: u64,
    /// Bytes of each intent-log half.
    pub log_half_bytes: u64,
    /// Largest log record.
    pub record_max: u64,
    /// Slots of each uberblock ring.
    pub uberblock_slots: u64,
    /// Most pages one tree sync writes of map and summary (sizes the hard reserve).
    pub sync_pages_max: u64,
    /// Depth of the map tree.
    pub min_depth: u8,
    /// Copies of every metadata page (the layout's tolerance + 1).
    pub metadata_copies: u64,
    /// The map's timeline (a new one after each rewind).
    pub timeline: u64,
    /// The pool has (or had) recovery points (docs/FORMAT.md V4.10a, "Older builds"):
    /// written on every member before the first is taken, so that a build that does not keep
    /// them refuses the pool by this field's name (`deny_unknown_fields`) instead of writing
    /// holes over them. Absent (false) otherwise, so such pools stay open to older builds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovery_points: bool,
    /// The pool has (or had) a receive (docs/FORMAT.md V4.10d): tree 3 may hold a receive
    /// record (kind 3) and received recovery points (flags bit 1). Written on every member
    /// before the first receive writes anything, so that a build with recovery points but
    /// without receive refuses the pool by this field's name rather than as corrupt.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub received_streams: bool,
    /// The pool keeps the live count of named blocks in its uberblocks (docs/FORMAT.md
    /// V4.10f), which a build without it would skip as unreadable: written at create, so
    /// that such a build refuses the pool by this field's name instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub referenced_counts: bool,
    /// Tree 3 may hold recovery points being deleted in the background (state 1, docs/
    /// FORMAT.md V4.10e): written on every member before the first is asked for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paced_deletes: bool,
    /// Members and spares carry failure domains (docs/FORMAT.md V4.16): written at create,
    /// so that a build that would attach a spare ignoring them refuses the pool by name.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failure_domains: bool,
    /// The map's leaves are sectored (docs/FORMAT.md V4.17: 15-byte records, a seeded crc
    /// per 4 KiB sector): written at create, so that a build that reads 16-byte leaf records
    /// refuses the pool by this field's name. Absent (false): 16-byte records, as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sectored_leaves: bool,
}

impl MapParams {
    /// The least `sync_pages_max` a pool may record.
    pub const MIN_SYNC_PAGES: u64 = 8;

    /// Refuse a value outside its allowed range, naming the field (`metadata_copies` is
    /// checked against the layout by the pool, which knows it).
    ///
    /// # Errors
    /// A message naming the field, its value and the range.
    pub fn check(&self) -> Result<(), String> {
        let checks: [(&str, u64, u64, u64); 8] = [
            ("page_bytes", self.page_bytes, 16384, 16384),
            ("segment_slots", self.segment_slots, 1, 1 << 16),
            ("log_half_bytes", self.log_half_bytes, 16384, 1 << 30),
            ("record_max", self.record_max, 4096, 1 << 30),
            ("uberblock_slots", self.uberblock_slots, 4, 4096),
            (
                "sync_pages_max",
                self.sync_pages_max,
                Self::MIN_SYNC_PAGES,
                1 << 20,
            ),
            ("min_depth", u64::from(self.min_depth), 1, 6),
            ("metadata_copies", self.metadata_copies, 1, 16),
        ];
        for (name, value, low, high) in checks {
            if !(low..=high).contains(&value) {
                return Err(format!(
                    "map parameter {name} = {value} is outside {low}..={high}"
                ));
            }
        }
        if self.record_max > self.log_half_bytes || !self.log_half_bytes.is_multiple_of(4096) {
            return Err(format!(
                "map parameters: log half of {} bytes with records up to {} bytes",
                self.log_half_bytes, self.record_max
            ));
        }
        Ok(())
    }
}

/// A 128-bit random identifier for pools and devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PoolUuid(pub [u8; 16]);

impl PoolUuid {
    /// A fresh random identifier from the operating system's generator.
    #[must_use]
    pub fn random() -> Self {
        use rand::RngCore;
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }
}

impl fmt::Display for PoolUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                write!(f, "-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// A device's role in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Data member at this position in the layout.
    Data {
        /// Position (0-based).
        index: usize,
    },
    /// A spare: holds a superblock, no data, until a rebuild uses it.
    Spare,
}

/// What the pool last knew about a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// In use.
    Online,
    /// Taken out of service; its data is outdated from this superblock generation on.
    Faulted {
        /// Why.
        reason: String,
    },
    /// In service, but it had too many errors (or a write failed while the pool could not lose
    /// it): kept because it still serves what it holds correctly, shown until `clear`.
    /// Needs format version 3.
    Degraded {
        /// Why.
        reason: String,
    },
    /// Being filled to take over its data position (a rebuild in progress).
    Rebuilding {
        /// Rebuild watermark: every live physical slot below it is on the device.
        next_slot: u64,
        /// Stripes written at or after this generation were written to it directly.
        start_generation: u64,
        /// Format version 4: a member that was away, resynced (docs/FORMAT.md V4.16): only
        /// rows and pages born at or after this sequence are copied onto it. Absent for a
        /// rebuild, and ignored by older builds (which copy everything: safe).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resync_from_sequence: Option<u64>,
    },
}

impl MemberState {
    /// Whether a member in this state serves data: `Online`, and `Degraded` (kept in service
    /// despite its errors). Such a member receives every write, so one missing at open may
    /// hold newer data than the members present.
    #[must_use]
    pub fn in_service(&self) -> bool {
        matches!(self, Self::Online | Self::Degraded { .. })
    }
}

/// One entry of the member list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Device UUID.
    pub uuid: PoolUuid,
    /// Role.
    pub role: Role,
    /// Last known state.
    pub state: MemberState,
    /// Last known path (a hint for finding it again; identity is the UUID).
    pub path: String,
    /// Its failure domain (docs/FORMAT.md V4.16): a host, a rack; absent in pools without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// With state `faulted`: it stopped answering and is expected back (docs/FORMAT.md V4.16
    /// §3, §7). Older builds ignore it and see a faulted member (they copy it in full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<Unavailable>,
}

/// What the pool recorded when a member stopped answering (docs/FORMAT.md V4.16 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unavailable {
    /// Its content is exact for every row and page born before this sequence.
    pub since_sequence: u64,
    /// When it was marked (the grace period counts from here).
    pub since_unix_secs: u64,
    /// The superblock generation it had then: a device coming back with another is not
    /// trusted to hold that content (copied in full).
    pub generation: u64,
}

/// The superblock contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superblock {
    /// Format version.
    pub format_version: u32,
    /// The pool.
    pub pool_uuid: PoolUuid,
    /// This device.
    pub device_uuid: PoolUuid,
    /// Bumped on every membership or state change; the newest copy wins.
    pub generation: u64,
    /// Layout text, e.g. `rs:4+2`.
    pub layout: String,
    /// Chunk size.
    pub chunk_bytes: u64,
    /// Bytes per checksum block (absent in pools made before per-block checksums: one
    /// checksum per chunk). See [`Superblock::checksum_block_bytes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_bytes: Option<u64>,
    /// Bytes used on each device.
    pub device_bytes: u64,
    /// Logical volume size.
    pub volume_bytes: u64,
    /// Every member, data and spare.
    pub members: Vec<Member>,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix_secs: u64,
    /// Scrub checkpoint and last result (absent in superblocks written before scrubs were
    /// recorded).
    #[serde(default)]
    pub scrub: super::ScrubRecord,
    /// Event log and cumulative counters (absent in superblocks written before they were
    /// kept; older builds ignore the field).
    #[serde(default, skip_serializing_if = "super::History::is_empty")]
    pub history: super::History,
    /// The map parameters of a format-version-4 pool (absent on versions 1 to 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapParams>,
    /// Each forced open that went on without members that could have been current
    /// (docs/FORMAT.md, "Forks"): from which generation, and which of them have not rejoined.
    /// Empty (absent) otherwise; older builds ignore it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forks: Vec<Fork>,
}

/// Where a forced open forked the pool's history: the members it went on without (recorded in
/// service, not found) and the generation it started from. One of them found later at a newer
/// generation went on too: the two sides diverged (a split brain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    /// The newest superblock generation the forced open found.
    pub from_generation: u64,
    /// Members left out that have not rejoined since (their device UUIDs).
    pub left_out: Vec<PoolUuid>,
}

impl Fork {
    /// Drop the members `members` records in service or being resynced under the same UUID
    /// (they rejoined: whether they had gone on was judged when they did); `None` when none is
    /// left. A member replaced, or given back under a new UUID (`clear`, `online`), stays: its
    /// old device, found again past the fork, is a branch.
    #[must_use]
    pub fn still_away(mut self, members: &[Member]) -> Option<Self> {
        self.left_out.retain(|uuid| {
            !members.iter().any(|m| {
                m.uuid == *uuid
                    && (m.state.in_service() || matches!(m.state, MemberState::Rebuilding { .. }))
            })
        });
        (!self.left_out.is_empty()).then_some(self)
    }

    /// Whether a device `uuid` whose own superblock is at `generation` went on after this
    /// fork left it out.
    #[must_use]
    pub fn diverged(&self, uuid: PoolUuid, generation: u64) -> bool {
        self.left_out.contains(&uuid) && generation > self.from_generation
    }
}

/// crc32c of a superblock's header and JSON, skipping the crc field itself (bytes 16..20).
fn checksum(header_and_json: &[u8]) -> u32 {
    let head = crc32c::crc32c(&header_and_json[..16]);
    crc32c::crc32c_append(head, &header_and_json[20..])
}

impl Superblock {
    /// The format version this superblock needs (see [`FORMAT_VERSION`]).
    #[must_use]
    pub fn required_version(&self) -> u32 {
        if self.map.is_some() {
            4
        } else if self
            .members
            .iter()
            .any(|m| matches!(m.state, MemberState::Degraded { .. }))
        {
            3
        } else if self.checksum_block_bytes() == self.chunk_bytes {
            1
        } else {
            2
        }
    }

    /// Whether `bytes` start with a stripestore superblock's magic, readable or not (a
    /// damaged copy, or one from a newer format): `create` must not overwrite such a device
    /// without force.
    #[must_use]
    pub fn has_magic(bytes: &[u8]) -> bool {
        bytes.len() >= MAGIC.len() && &bytes[..MAGIC.len()] == MAGIC
    }
    /// Bytes per checksum block: the recorded value, or the chunk for older pools.
    #[must_use]
    pub fn checksum_block_bytes(&self) -> u64 {
        self.checksum_bytes.unwrap_or(self.chunk_bytes)
    }
    /// This device's own entry in the member list.
    #[must_use]
    pub fn own_member(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.uuid == self.device_uuid)
    }

    /// Encode into exactly `SUPERBLOCK_BYTES` bytes.
    ///
    /// # Errors
    /// A message if the JSON does not fit (too many members or very long paths).
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let version = self.required_version();
        let mut json = if self.format_version == version {
            serde_json::to_vec(self)
        } else {
            serde_json::to_vec(&Self {
                format_version: version,
                ..self.clone()
            })
        }
        .map_err(|e| e.to_string())?;
        let capacity = usize::try_from(SUPERBLOCK_BYTES).unwrap_or(0) - HEADER_BYTES;
        if json.len() > capacity && !self.history.events.is_empty() {
            // The event log gives way (oldest first) before a state change goes unrecorded.
            let mut smaller = Self {
                format_version: version,
                ..self.clone()
            };
            while json.len() > capacity && smaller.history.trim_oldest() {
                json = serde_json::to_vec(&smaller).map_err(|e| e.to_string())?;
            }
        }
        if json.len() > capacity {
            return Err(format!(
                "superblock is {} bytes, more than the {capacity} available",
                json.len()
            ));
        }
        let mut out = vec![0u8; usize::try_from(SUPERBLOCK_BYTES).unwrap_or(0)];
        out[..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&version.to_le_bytes());
        out[12..16].copy_from_slice(&u32::try_from(json.len()).unwrap_or(0).to_le_bytes());
        out[HEADER_BYTES..HEADER_BYTES + json.len()].copy_from_slice(&json);
        let crc = checksum(&out[..HEADER_BYTES + json.len()]);
        out[16..20].copy_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Decode one copy.
    ///
    /// # Errors
    /// A message saying what is wrong: no magic, unknown version, bad length, crc mismatch, bad JSON.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
            return Err("no stripestore superblock magic".into());
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version == 0 || version > FORMAT_VERSION {
            return Err(format!(
                "format version {version}, this build reads versions 1 to {FORMAT_VERSION} (a newer stripestore made this pool?)"
            ));
        }
        let len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
        if HEADER_BYTES + len > bytes.len() {
            return Err(format!("superblock length {len} is out of range"));
        }
        let json = &bytes[HEADER_BYTES..HEADER_BYTES + len];
        let stored = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        let actual = checksum(&bytes[..HEADER_BYTES + len]);
        if stored != actual {
            return Err(format!(
                "superblock checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
            ));
        }
        let superblock: Self =
            serde_json::from_slice(json).map_err(|e| format!("superblock JSON: {e}"))?;
        if superblock.required_version() != version {
            return Err(format!(
                "format version {version} does not match its content (needs version {}: a checksum block of {} bytes with {}-byte chunks{})",
                superblock.required_version(),
                superblock.checksum_block_bytes(),
                superblock.chunk_bytes,
                match superblock.required_version() {
                    3 => ", a degraded member",
                    4 => ", the map parameters of version 4",
                    _ => "",
                }
            ));
        }
        if let Some(map) = &superblock.map {
            map.check()?;
        }
        Ok(superblock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            format_version: 2, // what its content needs (checksum blocks, no degraded member)
            pool_uuid: PoolUuid([1; 16]),
            device_uuid: PoolUuid([2; 16]),
            generation: 5,
            layout: "rs:4+2".into(),
            chunk_bytes: 16384,
            checksum_bytes: Some(4096),
            device_bytes: 1 << 30,
            volume_bytes: 1 << 31,
            members: vec![Member {
                uuid: PoolUuid([2; 16]),
                role: Role::Data { index: 0 },
                state: MemberState::Online,
                path: "/dev/x".into(),
                domain: None,
                unavailable: None,
            }],
            created_unix_secs: 1,
            scrub: super::super::ScrubRecord::default(),
            history: super::super::History::default(),
            map: None,
            forks: Vec::new(),
        }
    }

    /// `sb` encoded with another version number in its header (crc recomputed).
    fn renumbered(sb: &Superblock, version: u32) -> Vec<u8> {
        let mut bytes = sb.encode().unwrap();
        bytes[8..12].copy_from_slice(&version.to_le_bytes());
        let len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let crc = checksum(&bytes[..32 + len]);
        bytes[16..20].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    fn map_params() -> MapParams {
        MapParams {
            page_bytes: 16384,
            segment_slots: 64,
            log_half_bytes: 8 << 20,
            record_max: 1 << 20,
            uberblock_slots: 128,
            sync_pages_max: 1024,
            min_depth: 4,
            metadata_copies: 3,
            timeline: 1,
            recovery_points: false,
            received_streams: false,
            referenced_counts: false,
            paced_deletes: false,
            failure_domains: false,
            sectored_leaves: false,
        }
    }

    /// The recovery-point gate (docs/FORMAT.md V4.10a, "Older builds") is written only when
    /// set, so a pool without recovery points stays open to older builds; set, it round-trips;
    /// and map parameters with a field a build does not know are refused naming it, which is
    /// what a build without recovery points does with the gate.
    #[test]
    fn the_recovery_point_gate_is_written_only_when_set_and_unknown_map_fields_are_refused() {
        let mut sb = sample();
        sb.map = Some(map_params());
        let json = |sb: &Superblock| {
            let bytes = sb.encode().unwrap();
            String::from_utf8_lossy(&bytes[HEADER_BYTES..]).to_string()
        };
        assert!(!json(&sb).contains("recovery_points"));
        sb.map.as_mut().unwrap().recovery_points = true;
        assert!(json(&sb).contains("\"recovery_points\":true"));
        let decoded = Superblock::decode(&sb.encode().unwrap()).unwrap();
        assert!(decoded.map.unwrap().recovery_points);
        assert!(!json(&sb).contains("received_streams"));
        sb.map.as_mut().unwrap().received_streams = true;
        assert!(json(&sb).contains("\"received_streams\":true"));
        for (gate, set) in [
            (
                "referenced_counts",
                &(|m: &mut MapParams| m.referenced_counts = true) as &dyn Fn(&mut MapParams),
            ),
            ("paced_deletes", &|m: &mut MapParams| m.paced_deletes = true),
            ("failure_domains", &|m: &mut MapParams| {
                m.failure_domains = true;
            }),
            // docs/FORMAT.md V4.17: an older build reads this pool's leaves as 16-byte records
            // unless it refuses it by this name (below: unknown fields are refused).
            ("sectored_leaves", &|m: &mut MapParams| {
                m.sectored_leaves = true;
            }),
        ] {
            assert!(!json(&sb).contains(gate));
            set(sb.map.as_mut().unwrap());
            assert!(json(&sb).contains(&format!("\"{gate}\":true")));
            let decoded = Superblock::decode(&sb.encode().unwrap()).unwrap();
            assert_eq!(decoded.map, sb.map);
        }
        let mut value = serde_json::to_value(map_params()).unwrap();
        value["deadlists"] = serde_json::Value::Bool(true);
        let refused = serde_json::from_value::<MapParams>(value).unwrap_err();
        assert!(refused.to_string().contains("deadlists"), "{refused}");
    }

    /// The member fields of docs/FORMAT.md V4.16 (`domain`, `unavailable`, a rebuild's
    /// `resync_from_sequence`) are written only when set and round-trip; a member record
    /// without them (every superblock written before them) decodes with them unset; and an
    /// away member reads as `faulted` to a reader that ignores the `unavailable` field, as an
    /// older build does (it copies the member in full).
    #[test]
    fn the_v4_16_member_fields_round_trip_and_older_records_decode() {
        let mut sb = sample();
        sb.map = Some(map_params());
        let plain = String::from_utf8_lossy(&sb.encode().unwrap()[HEADER_BYTES..]).to_string();
        for field in ["domain", "unavailable", "resync_from_sequence"] {
            assert!(!plain.contains(field), "{field} written unset");
        }
        sb.members[0].domain = Some("host-a".into());
        sb.members[0].state = MemberState::Faulted {
            reason: "unavailable: no answer".into(),
        };
        sb.members[0].unavailable = Some(Unavailable {
            since_sequence: 41,
            since_unix_secs: 1_790_000_000,
            generation: 7,
        });
        sb.members.push(Member {
            uuid: PoolUuid([3; 16]),
            role: Role::Data { index: 0 },
            state: MemberState::Rebuilding {
                next_slot: 0,
                start_generation: 0,
                resync_from_sequence: Some(41),
            },
            path: "/dev/y".into(),
            domain: Some("host-a".into()),
            unavailable: None,
        });
        let decoded = Superblock::decode(&sb.encode().unwrap()).unwrap();
        assert_eq!(decoded.members, sb.members);
        // A record as an older build wrote it, and as an older build reads this one.
        let old = serde_json::json!({
            "uuid": PoolUuid([4; 16]), "role": {"data": {"index": 1}},
            "state": {"rebuilding": {"next_slot": 3, "start_generation": 2}}, "path": "/dev/z"
        });
        let member: Member = serde_json::from_value(old).unwrap();
        assert_eq!(member.domain, None);
        assert_eq!(member.unavailable, None);
        assert!(matches!(
            member.state,
            MemberState::Rebuilding {
                resync_from_sequence: None,
                ..
            }
        ));
        let mut away = serde_json::to_value(&sb.members[0]).unwrap();
        away.as_object_mut().unwrap().remove("unavailable");
        let seen: Member = serde_json::from_value(away).unwrap();
        assert!(matches!(seen.state, MemberState::Faulted { .. }));
    }

    /// A version-4 superblock (one with map parameters) says 4 whatever its members'
    /// states, round-trips, and is refused with the field named when a parameter is out of
    /// range; a version-4 number on a superblock without map parameters, or a smaller number
    /// on one with them, is refused; version 5 is refused naming both numbers.
    #[test]
    fn version_4_is_the_one_with_map_parameters() {
        let mut v4 = sample();
        v4.map = Some(map_params());
        v4.members[0].state = MemberState::Degraded {
            reason: "too many errors".into(),
        };
        let bytes = v4.encode().unwrap();
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 4);
        let decoded = Superblock::decode(&bytes).unwrap();
        assert_eq!(decoded.format_version, 4);
        assert_eq!(decoded.map, Some(map_params()));
        // Each parameter out of range is refused by name.
        for (field, change) in [
            (
                "segment_slots",
                &(|m: &mut MapParams| m.segment_slots = 0) as &dyn Fn(&mut MapParams),
            ),
            ("uberblock_slots", &|m: &mut MapParams| {
                m.uberblock_slots = 3
            }),
            ("page_bytes", &|m: &mut MapParams| m.page_bytes = 4096),
            ("log_half_bytes", &|m: &mut MapParams| {
                m.log_half_bytes = 4096
            }),
            ("sync_pages_max", &|m: &mut MapParams| m.sync_pages_max = 1),
            ("min_depth", &|m: &mut MapParams| m.min_depth = 9),
        ] {
            let mut bad = sample();
            let mut params = map_params();
            change(&mut params);
            bad.map = Some(params);
            let err = Superblock::decode(&bad.encode().unwrap()).unwrap_err();
            assert!(err.contains(field), "{field}: {err}");
        }
        let err = Superblock::decode(&renumbered(&sample(), 4)).unwrap_err();
        assert!(err.contains("does not match its content"), "{err}");
        let err = Superblock::decode(&renumbered(&v4, 3)).unwrap_err();
        assert!(err.contains("needs version 4"), "{err}");
        let err = Superblock::decode(&renumbered(&v4, 5)).unwrap_err();
        assert!(
            err.contains("format version 5") && err.contains("versions 1 to 4"),
            "{err}"
        );
    }

    /// One checksum per chunk is version 1 (readable by builds before checksum blocks); smaller
    /// blocks are version 2; versions outside 1..=2, or one that does not match the blocks,
    /// are refused with the version in the message.
    #[test]
    fn the_version_follows_the_checksum_block() {
        let mut per_chunk = sample();
        per_chunk.checksum_bytes = Some(16384);
        let bytes = per_chunk.encode().unwrap();
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);
        assert_eq!(Superblock::decode(&bytes).unwrap().format_version, 1);
        let bytes = sample().encode().unwrap();
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 2);
        assert_eq!(Superblock::decode(&bytes).unwrap().format_version, 2);
        let with_version = |version: u32| renumbered(&sample(), version);
        for version in [0, 1, 3, 4, 5, u32::MAX] {
            let err = Superblock::decode(&with_version(version)).unwrap_err();
            assert!(err.contains(&format!("format version {version}")), "{err}");
        }
        assert!(Superblock::has_magic(&with_version(5)));
        // A degraded member needs version 3 (older builds do not know the state), and the
        // version goes back down once no member is degraded.
        let mut degraded = sample();
        degraded.members[0].state = MemberState::Degraded {
            reason: "too many errors".into(),
        };
        let bytes = degraded.encode().unwrap();
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 3);
        assert_eq!(
            Superblock::decode(&bytes).unwrap().members,
            degraded.members
        );
        degraded.members[0].state = MemberState::Online;
        let bytes = degraded.encode().unwrap();
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 2);
        assert!(!Superblock::has_magic(&[0u8; 64]));
    }

    /// A superblock written by this build for a pool with a degraded member (the committed fuzz
    /// seed, taken from a real pool after a scrub marked d1 degraded) decodes as version 3 with
    /// that state, and its scrub record carries the new tally fields.
    #[test]
    fn a_real_version_3_superblock_decodes_with_its_degraded_member() {
        let bytes = include_bytes!("../../fuzz/seeds/format_decode/superblock-degraded");
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 3);
        let mut padded = bytes.to_vec();
        padded.resize(SUPERBLOCK_BYTES as usize, 0);
        let sb = Superblock::decode(&padded).unwrap();
        assert_eq!(sb.format_version, 3);
        assert!(sb
            .members
            .iter()
            .any(|m| matches!(&m.state, MemberState::Degraded { reason } if reason.contains("too many errors"))));
        assert!(sb.scrub.last.is_some());
        // Re-encoded, it stays version 3; with the member online again, it is version 2.
        assert_eq!(Superblock::decode(&sb.encode().unwrap()).unwrap(), sb);
        let mut cleared = sb;
        for member in &mut cleared.members {
            if matches!(member.state, MemberState::Degraded { .. }) {
                member.state = MemberState::Online;
            }
        }
        let bytes = cleared.encode().unwrap();
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 2);
    }

    /// A superblock of a real 16 TiB version-4 pool (`create --format 4 --device-size 4T` on six
    /// sparse files; the committed fuzz seed, paths shortened) decodes as version 4 with its
    /// map parameters, and re-encodes to itself.
    #[test]
    fn a_real_version_4_superblock_decodes_with_its_map_parameters() {
        let bytes = include_bytes!("../../fuzz/seeds/format_decode/superblock-v4");
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 4);
        let mut padded = bytes.to_vec();
        padded.resize(SUPERBLOCK_BYTES as usize, 0);
        let sb = Superblock::decode(&padded).unwrap();
        assert_eq!(sb.format_version, 4);
        let map = sb.map.expect("map parameters");
        assert_eq!(map.segment_slots, 64);
        assert_eq!(map.uberblock_slots, 128);
        assert_eq!(map.log_half_bytes, 8 << 20);
        assert_eq!(map.metadata_copies, 3);
        assert_eq!(sb.volume_bytes, 15_937_905_098_752);
        assert_eq!(Superblock::decode(&sb.encode().unwrap()).unwrap(), sb);
    }

    /// The history rides in the JSON: a full event log with every text at its maximum length
    /// keeps a pool of 16 members with long paths well under the 64 KiB superblock; an older
    /// superblock without the field decodes with an empty history; and a superblock that
    /// would not fit drops its oldest events rather than failing.
    #[test]
    fn a_full_event_log_fits_well_under_the_superblock_and_gives_way_first() {
        use super::super::{Event, EventKind, History, MAX_EVENTS, MAX_TEXT_BYTES};
        let mut sb = sample();
        sb.members = (0..16u8)
            .map(|i| Member {
                uuid: PoolUuid([i; 16]),
                role: Role::Data {
                    index: usize::from(i),
                },
                state: MemberState::Faulted {
                    reason: "r".repeat(200),
                },
                path: format!("/dev/disk/by-id/{}-{i}", "x".repeat(120)),
                domain: None,
                unavailable: None,
            })
            .collect();
        let without = serde_json::to_vec(&sb).unwrap().len();
        let full_log = |device: &str, detail: &str| {
            let mut history = History::default();
            for i in 0..(MAX_EVENTS as u64 + 10) {
                history.push(Event::new(
                    4_000_000_000 + i,
                    EventKind::RebuildFinish,
                    &device.repeat(500),
                    &detail.repeat(500),
                ));
            }
            history.counters.rebuilt_bytes = u64::MAX;
            history
        };
        // Texts at their longest (multi-byte characters), then with every character escaped.
        for (device, detail, bound) in [("é", "\u{1F4BE}", 24 * 1024), ("\"", "\\", 40 * 1024)] {
            sb.history = full_log(device, detail);
            assert_eq!(sb.history.events.len(), MAX_EVENTS);
            assert!(sb.history.events[0].detail.len() + 3 > MAX_TEXT_BYTES);
            let json = serde_json::to_vec(&sb).unwrap().len();
            let log = json - without;
            assert!(log < bound, "a full log takes {log} bytes of JSON");
            assert!(json < 56 * 1024, "the superblock JSON is {json} bytes");
            let decoded = Superblock::decode(&sb.encode().unwrap()).unwrap();
            assert_eq!(decoded.history, sb.history, "every event kept");
        }
        // Written before the history existed: no field, an empty history.
        let mut old = sample();
        old.history = History::default();
        let bytes = old.encode().unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("history"));
        assert!(Superblock::decode(&bytes).unwrap().history.is_empty());
        // Members that leave too little room: the oldest events go, the state change stays.
        sb.members[0].state = MemberState::Faulted {
            reason: "y".repeat(30 * 1024),
        };
        let decoded = Superblock::decode(&sb.encode().unwrap()).unwrap();
        assert!(decoded.history.events.len() < MAX_EVENTS);
        assert!(!decoded.history.events.is_empty());
        assert_eq!(decoded.history.events.last(), sb.history.events.last());
        assert_eq!(decoded.members, sb.members);
    }

    /// Pools made before checksum blocks have no `checksum_bytes`: one checksum per chunk.
    #[test]
    fn a_superblock_without_checksum_bytes_means_one_checksum_per_chunk() {
        let mut old = sample();
        old.checksum_bytes = None;
        let bytes = old.encode().unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("checksum_bytes"));
        let decoded = Superblock::decode(&bytes).unwrap();
        assert_eq!(decoded.checksum_block_bytes(), 16384);
        assert_eq!(sample().checksum_block_bytes(), 4096);
    }

    #[test]
    fn roundtrip_and_every_corruption_is_detected() {
        let sb = sample();
        let bytes = sb.encode().unwrap();
        assert_eq!(Superblock::decode(&bytes).unwrap(), sb);
        let json_end = 32 + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        for position in (0..json_end).step_by(7) {
            let mut bad = bytes.clone();
            bad[position] ^= 0x10;
            assert!(
                Superblock::decode(&bad).is_err(),
                "flip at {position} undetected"
            );
        }
        assert!(Superblock::decode(&[0u8; 100]).is_err());
        assert_eq!(sb.own_member().unwrap().role, Role::Data { index: 0 });
        assert_eq!(
            PoolUuid([0xab; 16]).to_string(),
            "abababab-abab-abab-abab-abababababab"
        );
    }
}
