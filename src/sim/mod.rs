//! Deterministic disk-failure simulation.
//!
//! Given a seed, [`generate`] draws a workload — writes, discards, reads, flushes, reopens, power cuts,
//! device failures and silent corruption, spares, rebuilds and scrubs — and [`run`] plays it
//! against a pool on fault-injecting in-memory devices, checking after every step against the
//! reference model ([`crate::testing::CrashModel`]):
//!
//! * no read ever returns bytes the model does not hold (at any damage level);
//! * while at most `tolerance` member positions are damaged, every operation succeeds and
//!   nothing flushed is lost, across crashes and reopens; after a crash, every block holds one
//!   of the versions written to it since the last flush;
//! * beyond the tolerance (the optional last step fails one position too many), errors are the
//!   clear ones (`Unrecoverable`, `PoolUnavailable`), and every stripe with at most
//!   `tolerance` shards on damaged positions still reads back exactly.
//!
//! Faults are injected only where the budget allows (like TigerBeetle's fault atlas): a device
//! counts as damaged from its first injected fault until a rebuild replaces it, and no fault is
//! placed on a new device while `tolerance` positions are damaged. So any data loss within the
//! tolerance is a bug, not bad luck.
//!
//! The same seed gives the same workload and the same faults (decisions are keyed on the
//! request, not on thread timing; see [`crate::device::FaultPlan`]). A failure reports the
//! seed, the step and, after [`shrink`], a short op list that still fails, which
//! `stripestore simulate --replay FILE` runs again.

mod world;

use crate::device::FaultKind;
use crate::error::{Error, Result};
use crate::geometry::Layout;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// The layouts a campaign cycles through, with a device count for each.
pub const LAYOUTS: [(&str, usize); 7] = [
    ("mirror:2", 2),
    ("mirror:3", 3),
    ("raid10:2", 4),
    ("rs:2+1", 3),
    ("rs:4+2", 6),
    ("rs:4+2", 7),
    ("rs:3+3", 6),
];

/// Which faults a simulation may inject: device fault kinds, plus power cuts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSet {
    /// Device fault kinds.
    pub kinds: Vec<FaultKind>,
    /// Power cuts (crashes with unflushed writes dropped).
    pub crash: bool,
}

impl FaultSet {
    /// Every fault kind and crashes.
    #[must_use]
    pub fn all() -> Self {
        Self {
            kinds: FaultKind::ALL.to_vec(),
            crash: true,
        }
    }
    /// Nothing at all (the workload alone).
    #[must_use]
    pub fn none() -> Self {
        Self {
            kinds: Vec::new(),
            crash: false,
        }
    }
    fn has(&self, kind: FaultKind) -> bool {
        self.kinds.contains(&kind)
    }
}

impl fmt::Display for FaultSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::all() {
            return f.write_str("all");
        }
        let mut names: Vec<&str> = self.kinds.iter().map(|k| k.name()).collect();
        if self.crash {
            names.push("crash");
        }
        if names.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&names.join(","))
    }
}

impl std::str::FromStr for FaultSet {
    type Err = Error;
    fn from_str(input: &str) -> Result<Self> {
        match input {
            "all" => return Ok(Self::all()),
            "none" | "" => return Ok(Self::none()),
            _ => {}
        }
        let mut set = Self::none();
        for name in input.split(',').map(str::trim) {
            if name == "crash" {
                set.crash = true;
            } else if let Some(kind) = FaultKind::from_name(name) {
                if !set.kinds.contains(&kind) {
                    set.kinds.push(kind);
                }
            } else {
                let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                return Err(Error::InvalidConfig(format!(
                    "unknown fault {name:?}; known: all, none, crash, {}",
                    known.join(", ")
                )));
            }
        }
        Ok(set)
    }
}

/// One simulation run's parameters.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of the workload and of every fault.
    pub seed: u64,
    /// Number of operations to generate.
    pub ops: usize,
    /// Redundancy layout.
    pub layout: Layout,
    /// Data devices.
    pub devices: usize,
    /// Faults allowed.
    pub faults: FaultSet,
    /// Size of each simulated device.
    pub device_bytes: u64,
    /// Chunk size of the pool.
    pub chunk_bytes: u64,
    /// End with one failed position more than the layout tolerates, and check that errors are
    /// clear and unaffected stripes still read.
    pub beyond_tolerance: bool,
    /// Let faults land anywhere on a device (superblocks, map checkpoints and log), not only
    /// in the data area.
    pub metadata_faults: bool,
    /// Protections switched off in the pool under test, to prove the simulation notices.
    pub planted: crate::testing::PlantedBugs,
    /// Run the pool on format version 4 (rows and the paged map, with the test minimums of
    /// docs/FORMAT.md V4.2: segments of 4 slots, rings of 4, log halves of 16 KiB, a map
    /// cache of 32 pages). Local damage and the healthy replace cut inside a v3 swap-in are
    /// not drawn (their checks are stripe-shaped); devices must be at least 8 MiB.
    pub format4: bool,
    /// Format version 4: create the pool with failure domains (docs/FORMAT.md V4.16 §2; see
    /// `world::domains_for`), give every spare a domain, check after every step that spares
    /// sit only where the placement rule allows, and draw whole-domain losses.
    pub domains: bool,
    /// Format version 4: a grace period of zero for members away (docs/FORMAT.md V4.16 §3):
    /// the first watch over them faults them and spares take over (a minute after an open,
    /// as the pool guarantees). Otherwise the default (600 s: no run outlasts it).
    pub short_grace: bool,
    /// Reads in pieces taken together (`Pool::read_many`) about half the time: format
    /// version 4 campaigns since 2026-12-07. Off in replays recorded before (their reads,
    /// and so the faults drawn on them, stay as they were).
    pub reads_together: bool,
}

impl SimConfig {
    /// Defaults for one seed and layout: 1 MiB devices, every fault, and 4 KiB chunks for
    /// even seeds, 16 KiB for odd ones (the checksum block is always 4 KiB, so odd seeds read
    /// parts of chunks and verify single blocks, even seeds whole chunks).
    #[must_use]
    pub fn new(seed: u64, layout: Layout, devices: usize) -> Self {
        Self {
            seed,
            ops: 200,
            layout,
            devices,
            faults: FaultSet::all(),
            device_bytes: 1 << 20,
            chunk_bytes: if seed.is_multiple_of(2) { 4096 } else { 16384 },
            beyond_tolerance: true,
            metadata_faults: true,
            planted: crate::testing::PlantedBugs::default(),
            format4: false,
            domains: false,
            short_grace: false,
            reads_together: false,
        }
    }

    /// As [`SimConfig::new`], on format version 4 (8 MiB devices, 16 KiB chunks); one seed in
    /// three with failure domains, one in four with a grace period of zero for members away.
    #[must_use]
    pub fn new_v4(seed: u64, layout: Layout, devices: usize) -> Self {
        Self {
            device_bytes: 8 << 20,
            chunk_bytes: 16384,
            format4: true,
            domains: seed % 3 == 1,
            short_grace: seed % 4 == 2,
            reads_together: true,
            ..Self::new(seed, layout, devices)
        }
    }

    /// The command line that replays this run.
    #[must_use]
    pub fn command_line(&self) -> String {
        format!(
            "stripestore simulate --seed {} --ops {} --layout {} --devices {} --faults {}{}{}{}{}",
            self.seed,
            self.ops,
            self.layout,
            self.devices,
            self.faults,
            if self.beyond_tolerance {
                ""
            } else {
                " --within-tolerance"
            },
            if self.metadata_faults {
                ""
            } else {
                " --data-faults-only"
            },
            planted_flags(&self.planted),
            if self.format4 {
                // (Domains and the short grace follow from the seed: `SimConfig::new_v4`.)
                format!(" --format 4 --device-size {}", self.device_bytes)
            } else {
                " --format 3".to_string()
            }
        )
    }
}

/// The names `simulate --plant` takes, each with the protection it switches off.
pub const PLANTABLE: [&str; 16] = [
    "skip-checksum-verification",
    "skip-commit-data-flush",
    "fault-on-data-errors",
    "skip-discard-log",
    "skip-page-checksum-verification",
    "release-before-root-durable",
    "encode-without-parity",
    "drop-held-block",
    "abort-keeps-blocks",
    "receive-reads-live",
    "delete-cursor-ignored",
    "resync-since-late",
    "domains-ignored",
    "allocation-hint-late",
    "stale-sectors",
    "revive-behind",
];

/// Switch on the planted bug called `name` (one of [`PLANTABLE`]).
///
/// # Errors
/// An unknown name.
pub fn plant(
    bugs: &mut crate::testing::PlantedBugs,
    name: &str,
) -> std::result::Result<(), String> {
    match name {
        "skip-checksum-verification" => bugs.skip_checksum_verification = true,
        "skip-commit-data-flush" => bugs.skip_commit_data_flush = true,
        "fault-on-data-errors" => bugs.fault_on_data_errors = true,
        "skip-discard-log" => bugs.skip_discard_log = true,
        "skip-page-checksum-verification" => bugs.skip_page_checksum_verification = true,
        "release-before-root-durable" => bugs.release_before_root_durable = true,
        "encode-without-parity" => bugs.encode_without_parity = true,
        "drop-held-block" => bugs.drop_held_block = true,
        "abort-keeps-blocks" => bugs.abort_keeps_blocks = true,
        "receive-reads-live" => bugs.receive_reads_live = true,
        "delete-cursor-ignored" => bugs.delete_cursor_ignored = true,
        "resync-since-late" => bugs.resync_since_late = true,
        "domains-ignored" => bugs.domains_ignored = true,
        "allocation-hint-late" => bugs.allocation_hint_late = true,
        "stale-sectors" => bugs.stale_sectors = true,
        "revive-behind" => bugs.revive_behind = true,
        other => {
            return Err(format!(
                "unknown planted bug '{other}' (one of: {})",
                PLANTABLE.join(", ")
            ))
        }
    }
    Ok(())
}

fn planted_names(bugs: &crate::testing::PlantedBugs) -> Vec<String> {
    let on = [
        bugs.skip_checksum_verification,
        bugs.skip_commit_data_flush,
        bugs.fault_on_data_errors,
        bugs.skip_discard_log,
        bugs.skip_page_checksum_verification,
        bugs.release_before_root_durable,
        bugs.encode_without_parity,
        bugs.drop_held_block,
        bugs.abort_keeps_blocks,
        bugs.receive_reads_live,
        bugs.delete_cursor_ignored,
        bugs.resync_since_late,
        bugs.domains_ignored,
        bugs.allocation_hint_late,
        bugs.stale_sectors,
        bugs.revive_behind,
    ];
    PLANTABLE
        .iter()
        .zip(on)
        .filter(|(_, on)| *on)
        .map(|(name, _)| (*name).to_string())
        .collect()
}

fn planted_flags(bugs: &crate::testing::PlantedBugs) -> String {
    planted_names(bugs)
        .iter()
        .map(|name| format!(" --plant {name}"))
        .collect()
}

/// One step of a workload. Device numbers are taken modulo the layout's positions; a step the
/// current state does not allow (a fault beyond the damage budget, a rebuild with no spare) is
/// skipped, so any subsequence of a workload is itself a valid workload (which [`shrink`] needs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Write `len` bytes drawn from `data_seed` at `offset` (both wrapped into the volume).
    Write {
        /// Volume offset.
        offset: u64,
        /// Length.
        len: u32,
        /// Seed of the bytes.
        data_seed: u64,
    },
    /// Several writes queued together, as concurrent writers' would be, then carried in
    /// groups: on version 4, through the writer's pipeline (docs/FORMAT.md V4.6, "Several
    /// groups on the devices"). Each `(offset, len, data_seed)` as [`Op::Write`].
    WriteTogether {
        /// The writes, in order (a later one wins where two overlap).
        writes: Vec<(u64, u32, u64)>,
    },
    /// Discard (TRIM) `len` bytes at `offset` (both wrapped into the volume): the model reads
    /// zeros there.
    Discard {
        /// Volume offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Read a range and compare it with the model.
    Read {
        /// Volume offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Flush (commit).
    Flush,
    /// Read the whole volume and compare it with the model.
    Verify,
    /// Close the pool cleanly and open it again.
    Reopen,
    /// Power cut: optionally a burst of writes and flushes with the power failing after
    /// `cut_after` device requests, then every device loses a seeded subset of its unflushed
    /// writes, and the pool is opened again.
    Crash {
        /// Seed of the burst and of what the devices lose.
        seed: u64,
        /// Device requests before the power fails inside the burst (`None`: no burst).
        cut_after: Option<u32>,
    },
    /// The device at this position vanishes.
    FailStop {
        /// Position.
        device: u8,
    },
    /// Flip random bits at rest on the device at this position.
    Rot {
        /// Position.
        device: u8,
        /// Bits.
        count: u8,
    },
    /// Place latent sector errors at random on the device at this position.
    LatentErrors {
        /// Position.
        device: u8,
        /// Ranges.
        count: u8,
    },
    /// Give the device at this position a random fault configuration (silent write faults,
    /// read flips, latency, maybe a delayed fail-stop) drawn from `seed`.
    Configure {
        /// Position.
        device: u8,
        /// Seed of the configuration.
        seed: u64,
    },
    /// Add a fresh spare.
    AddSpare,
    /// Replace the device at this position (a damaged one first, if any) with a spare.
    ReplaceWithSpare {
        /// Position.
        device: u8,
    },
    /// One rebuild step (attaches spares to faulted positions first).
    RebuildStep,
    /// Run every rebuild to completion, then verify.
    Rebuild,
    /// Scrub, then verify.
    Scrub,
    /// Format version 4: a repairing scrub in chunks with `writes` random writes (from
    /// `seed`) and a flush made between its chunk `pause_after` and the next, after its walk (so segments
    /// it walked are freed and taken again beside it); with `reopen`, it is paused one chunk
    /// later, the pool reopened, and the pass resumed from its cursor. Then verify.
    ScrubBeside {
        /// Chunks before the writes (1..=4).
        pause_after: u8,
        /// Writes (1..=12).
        writes: u8,
        /// Pause, reopen and resume after the writes.
        reopen: bool,
        /// Seed of the writes.
        seed: u64,
    },
    /// Last step: fail positions until one more than the tolerance is damaged, then check that
    /// errors are clear and unaffected stripes are intact.
    BeyondTolerance {
        /// Seed of the positions to fail.
        seed: u64,
    },
    /// Localized damage beyond the tolerance: overwrite the chunks of a few adjacent stripes on
    /// more members than the layout tolerates (bypassing the pool), so exactly those stripes
    /// are lost. Reads there fail with `Unrecoverable` (never bytes), everything else stays
    /// exact (also across a reopen), no member is faulted for it, a scrub lists exactly those
    /// stripes as damaged ranges (merged, with device names, tallies adding up); then the
    /// stripes are rewritten and read back.
    LocalDamage {
        /// First stripe (wrapped into the volume).
        stripe: u64,
        /// Adjacent stripes (1..=3).
        count: u8,
        /// Seed of the victims and of the new content.
        seed: u64,
    },
    /// Replace a healthy member with a fresh device, rebuild, and cut the power `cut_after`
    /// device requests into the last rebuild step (the swap-in: flush, commit, superblocks,
    /// swap) or the write and flush right after it; reopen and check every flushed byte, also
    /// with `tolerance` members lost.
    ReplaceHealthy {
        /// Position to replace.
        device: u8,
        /// Requests that still land once the swap-in has started (`None`: no cut there, a
        /// crash after the next write).
        cut_after: Option<u32>,
        /// Seed of the post-swap write, the crash and the members lost afterwards.
        seed: u64,
    },
    /// `online`, `replace` or `spare add` given a device the pool must refuse: another pool's
    /// member, a spare of this pool, an active member of this pool, or a device too small. The
    /// call must fail and change no byte of that device nor of the pool's devices.
    AdminWithBadDevice {
        /// 0: online, 1: replace, 2: spare add (modulo 3).
        action: u8,
        /// 0: foreign, 1: spare, 2: active member, 3: too small (modulo 4).
        kind: u8,
        /// Position the action names (and the active member given, one further).
        device: u8,
    },
    /// Close and reopen with the devices given in a seeded order and as a seeded subset: faulted,
    /// stale and former members thrown in, healthy members left out within the damage budget
    /// (or, sometimes, too many, which must be refused without changing a byte).
    OpenSubset {
        /// Seed of the order and the subset.
        seed: u64,
    },
    /// Close, open the same devices read-only, look (verify, status, a refused write, a
    /// check-only scrub), close, compare every device byte for byte with before, reopen.
    ReadOnlyLook {
        /// Seed of the device order.
        seed: u64,
    },
    /// Format version 4: take a recovery point (at most four are kept); the model keeps a
    /// copy of the volume as it is.
    RecoveryPointCreate,
    /// Delete the `pick`-th recovery point that is not held (modulo their number).
    RecoveryPointDelete {
        /// Which one.
        pick: u8,
    },
    /// Hold the `pick`-th recovery point, or release it if held (a held one must refuse a
    /// delete first).
    RecoveryPointHold {
        /// Which one.
        pick: u8,
    },
    /// Roll the volume back to the `pick`-th recovery point: the model's volume becomes its
    /// copy, and the state before a new (automatic) recovery point when the pool takes one.
    RecoveryPointRollback {
        /// Which one.
        pick: u8,
    },
    /// Read a range of the `pick`-th recovery point and compare it with the model's copy.
    RecoveryPointRead {
        /// Which one.
        pick: u8,
        /// Volume offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Send the `pick`-th recovery point to a replica pool of another layout (from the
    /// replica's newest when the pool still has it, else whole into a new replica) and
    /// receive it there; with `cut`, the replica's power is cut after that many device
    /// operations of the receive, and an unfinished receive is resumed (`seed` odd) or
    /// aborted.
    Replicate {
        /// Which one.
        pick: u8,
        /// Device operations of the receive before the replica's power is cut.
        cut: Option<u16>,
        /// Seed of the crash (what each replica member keeps) and of resume or abort.
        seed: u64,
    },
    /// Format version 4: the member at this position stops answering (its device unreachable,
    /// as a remote host cut off: docs/FORMAT.md V4.16 §3) within the damage budget, and
    /// `writes` random writes follow at once (rows of the sequence in flight miss it). It
    /// stays away across the ops that follow (crashes and reopens included) until [`Op::Back`].
    Away {
        /// Position.
        device: u8,
        /// Writes right after (0..=4).
        writes: u8,
        /// Seed of the writes.
        seed: u64,
    },
    /// Format version 4: the `pick`-th device the simulation made unreachable answers again;
    /// the pool's watch over members away resyncs it (reopened with it when the pool was
    /// opened without it), or faults it when the grace period has ended (spares take over),
    /// or a member faulted as missing at an open is cleared with it; half the time the
    /// resync then runs to its end. Once it is back in service, `tolerance` other members
    /// are lost and every byte must read back.
    Back {
        /// Which one.
        pick: u8,
        /// Seed of the choices.
        seed: u64,
    },
    /// Format version 4, with a member away: more members stop answering than the layout
    /// tolerates; writes and flushes may fail (clearly) but what they acknowledge is kept;
    /// then they answer again, the power is cut, and after the reopen every block holds a
    /// version written since the last acknowledged flush.
    AwayBeyond {
        /// Position to start from.
        device: u8,
        /// Seed of the writes and the power cut.
        seed: u64,
    },
    /// Format version 4 with failure domains: every member of one domain stops answering at
    /// once; writes, a flush, maybe a power cut, and the whole volume must read back exactly;
    /// then they answer again, are resynced, and every byte is checked.
    DomainLoss {
        /// Which domain (among the members').
        pick: u8,
        /// Seed of the writes and choices.
        seed: u64,
    },
}

impl Op {
    /// A short name, for statistics.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Op::Write { .. } => "write",
            Op::WriteTogether { .. } => "write-together",
            Op::Discard { .. } => "discard",
            Op::Read { .. } => "read",
            Op::Flush => "flush",
            Op::Verify => "verify",
            Op::Reopen => "reopen",
            Op::Crash { .. } => "crash",
            Op::FailStop { .. } => "fail-stop",
            Op::Rot { .. } => "rot",
            Op::LatentErrors { .. } => "latent-errors",
            Op::Configure { .. } => "configure-faults",
            Op::AddSpare => "add-spare",
            Op::ReplaceWithSpare { .. } => "replace",
            Op::RebuildStep => "rebuild-step",
            Op::Rebuild => "rebuild",
            Op::Scrub => "scrub",
            Op::ScrubBeside { .. } => "scrub-beside-writes",
            Op::BeyondTolerance { .. } => "beyond-tolerance",
            Op::LocalDamage { .. } => "local-damage",
            Op::ReplaceHealthy { .. } => "replace-healthy",
            Op::AdminWithBadDevice { .. } => "admin-bad-device",
            Op::OpenSubset { .. } => "open-subset",
            Op::ReadOnlyLook { .. } => "read-only-look",
            Op::RecoveryPointCreate => "recovery-point-create",
            Op::RecoveryPointDelete { .. } => "recovery-point-delete",
            Op::RecoveryPointHold { .. } => "recovery-point-hold",
            Op::RecoveryPointRead { .. } => "recovery-point-read",
            Op::RecoveryPointRollback { .. } => "recovery-point-rollback",
            Op::Replicate { .. } => "replicate",
            Op::Away { .. } => "away",
            Op::Back { .. } => "back",
            Op::AwayBeyond { .. } => "away-beyond-tolerance",
            Op::DomainLoss { .. } => "domain-loss",
        }
    }
}

/// Draw the workload of `config.seed`.
#[must_use]
pub fn generate(config: &SimConfig) -> Vec<Op> {
    let mut rng = crate::testing::rng(config.seed ^ 0x5157_0001);
    let faults = &config.faults;
    // (weight, enabled) per op family, in a fixed order.
    let table: [(u32, bool); 34] = [
        (300, true),                            // write
        (220, true),                            // read
        (100, true),                            // flush
        (20, true),                             // verify
        (15, true),                             // reopen
        (30, faults.crash),                     // crash
        (12, faults.has(FaultKind::FailStop)),  // fail-stop
        (25, faults.has(FaultKind::RotAtRest)), // rot
        (20, faults.has(FaultKind::ReadError)), // latent errors
        (30, !faults.kinds.is_empty()),         // configure
        (20, true),                             // add spare
        (20, true),                             // replace
        (30, true),                             // rebuild step
        (20, true),                             // rebuild
        (20, true),                             // scrub
        (8, true),                              // local damage
        (8, true),                              // replace healthy (power cut if crashes on)
        (10, true),                             // admin with a bad device
        (8, true),                              // open with a subset, in any order
        (8, true),                              // read-only look
        (60, true),                             // discard
        (12, config.format4), // scrub beside writes (v4 only: v3 seeds keep their ops)
        (120, config.format4), // whole-row writes, encoded before the lock (v4 only, as above)
        (60, config.format4), // writes queued together, through the pipeline (v4 only)
        (10, config.format4), // recovery point create (v4 only)
        (7, config.format4),  // recovery point delete
        (5, config.format4),  // recovery point hold or release
        (30, config.format4), // recovery point read
        (4, config.format4),  // rollback to a recovery point
        (12, config.format4), // send and receive into a replica
        (10, config.format4), // a member goes away (unreachable)
        (14, config.format4), // a member away answers again
        (3, config.format4),  // more members away than the tolerance
        (6, config.format4 && config.domains), // a whole failure domain lost
    ];
    // What is drawn for v3 only: local damage (it overwrites whole stripes' chunks, a v3
    // shape). On v4 the healthy replace's power cut starts counting at the new device's
    // first flush (its map areas cleared at the attach), so it lands in the attach, a chunk
    // or the swap-in.
    let mut table = table;
    if config.format4 {
        table[15].1 = false;
    }
    let total: u32 = table.iter().filter(|(_, on)| *on).map(|(w, _)| w).sum();
    let stripe = config.chunk_bytes * config.layout.data_chunks(config.devices) as u64;
    let mut ops = Vec::with_capacity(config.ops);
    while ops.len() < config.ops {
        let mut pick = rng.gen_range(0..total);
        let mut family = 0;
        for (i, (weight, on)) in table.iter().enumerate() {
            if !on {
                continue;
            }
            if pick < *weight {
                family = i;
                break;
            }
            pick -= weight;
        }
        let device = rng.gen_range(0..=u8::MAX);
        let op = match family {
            0 => Op::Write {
                offset: rng.gen_range(0..u64::from(u32::MAX)),
                len: match rng.gen_range(0..4) {
                    0 => rng.gen_range(1..512),
                    1 => rng.gen_range(1..3 * stripe as u32),
                    2 => stripe as u32,
                    _ => rng.gen_range(1..64 * 1024),
                },
                data_seed: rng.gen(),
            },
            1 => Op::Read {
                offset: rng.gen_range(0..u64::from(u32::MAX)),
                len: rng.gen_range(1..3 * stripe as u32),
            },
            2 => Op::Flush,
            3 => Op::Verify,
            4 => Op::Reopen,
            5 => Op::Crash {
                seed: rng.gen(),
                cut_after: rng.gen_bool(0.7).then(|| rng.gen_range(1..300)),
            },
            6 => Op::FailStop { device },
            7 => Op::Rot {
                device,
                count: rng.gen_range(1..8),
            },
            8 => Op::LatentErrors {
                device,
                count: rng.gen_range(1..4),
            },
            9 => Op::Configure {
                device,
                seed: rng.gen(),
            },
            10 => Op::AddSpare,
            11 => Op::ReplaceWithSpare { device },
            12 => Op::RebuildStep,
            13 => Op::Rebuild,
            14 => Op::Scrub,
            15 => Op::LocalDamage {
                stripe: rng.gen_range(0..u64::from(u32::MAX)),
                count: rng.gen_range(1..=3),
                seed: rng.gen(),
            },
            16 => Op::ReplaceHealthy {
                device,
                cut_after: (faults.crash && rng.gen_bool(0.8)).then(|| rng.gen_range(0..160)),
                seed: rng.gen(),
            },
            17 => Op::AdminWithBadDevice {
                action: rng.gen_range(0..3),
                kind: rng.gen_range(0..4),
                device,
            },
            18 => Op::OpenSubset { seed: rng.gen() },
            19 => Op::ReadOnlyLook { seed: rng.gen() },
            // Block-aligned, a multiple of K blocks (cut short only at the volume's end): the
            // writes a v4 pool encodes on the writer's thread (docs/FORMAT.md V4.6, "Large
            // writes").
            22 => Op::Write {
                offset: rng.gen_range(0..u64::from(u32::MAX)) & !4095,
                len: u32::try_from(
                    rng.gen_range(1..=12u64)
                        * config.layout.data_chunks(config.devices) as u64
                        * 4096,
                )
                .unwrap_or(4096),
                data_seed: rng.gen(),
            },
            // Two to eight writes at once: mostly whole rows (pipelined), some of any shape
            // (which the pipeline writes the plain way, after landing what is in flight).
            23 => Op::WriteTogether {
                writes: (0..rng.gen_range(2..=8))
                    .map(|_| {
                        let k = config.layout.data_chunks(config.devices) as u64;
                        let offset = rng.gen_range(0..u64::from(u32::MAX));
                        let seed = rng.gen();
                        if rng.gen_range(0..5) == 0 {
                            (offset, rng.gen_range(1..3 * stripe as u32), seed)
                        } else {
                            let len = rng.gen_range(1..=16u64) * k * 4096;
                            (offset & !4095, u32::try_from(len).unwrap_or(4096), seed)
                        }
                    })
                    .collect(),
            },
            24 => Op::RecoveryPointCreate,
            28 => Op::RecoveryPointRollback { pick: rng.gen() },
            29 => Op::Replicate {
                pick: rng.gen(),
                cut: rng.gen_bool(0.5).then(|| rng.gen_range(1..400)),
                seed: rng.gen(),
            },
            30 => Op::Away {
                device,
                writes: rng.gen_range(0..=4),
                seed: rng.gen(),
            },
            31 => Op::Back {
                pick: rng.gen(),
                seed: rng.gen(),
            },
            32 => Op::AwayBeyond {
                device,
                seed: rng.gen(),
            },
            33 => Op::DomainLoss {
                pick: rng.gen(),
                seed: rng.gen(),
            },
            25 => Op::RecoveryPointDelete { pick: rng.gen() },
            26 => Op::RecoveryPointHold { pick: rng.gen() },
            27 => Op::RecoveryPointRead {
                pick: rng.gen(),
                offset: rng.gen_range(0..u64::from(u32::MAX)),
                len: rng.gen_range(1..3 * stripe as u32),
            },
            21 => Op::ScrubBeside {
                pause_after: rng.gen_range(1..=4),
                writes: rng.gen_range(1..=12),
                reopen: rng.gen_bool(0.3),
                seed: rng.gen(),
            },
            _ => Op::Discard {
                // Half of them stripe-aligned (the volume is whole stripes, so wrapping the
                // offset into it keeps the alignment): whole stripes unmapped, no edges.
                offset: if rng.gen_bool(0.5) {
                    rng.gen_range(0..u64::from(u32::MAX) / stripe) * stripe
                } else {
                    rng.gen_range(0..u64::from(u32::MAX))
                },
                len: match rng.gen_range(0..3) {
                    0 => rng.gen_range(1..stripe as u32),
                    1 => rng.gen_range(1..6 * stripe as u32),
                    _ => stripe as u32 * rng.gen_range(1..4),
                },
            },
        };
        ops.push(op);
    }
    if config.beyond_tolerance && faults.has(FaultKind::FailStop) {
        if let Some(last) = ops.last_mut() {
            *last = Op::BeyondTolerance { seed: rng.gen() };
        }
    }
    ops
}

/// A broken rule: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Index of the failing op.
    pub step: usize,
    /// The op.
    pub op: Op,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {} ({:?}): {}", self.step, self.op, self.message)
    }
}

/// Counters of one run, or of many added together.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Runs.
    pub runs: u64,
    /// Operations executed, by op name.
    pub ops: BTreeMap<String, u64>,
    /// Operations skipped because the state did not allow them (damage budget, no spare).
    pub skipped: u64,
    /// Faults injected, by kind name (from the devices' records), plus `crash` and
    /// `power-cut` (a crash that cut power inside a burst of writes).
    pub faults: BTreeMap<String, u64>,
    /// Opens that needed `force` (members missing that might be newer).
    pub forced_opens: u64,
    /// Damaged devices the pool refused at open and the simulator left out.
    pub refused_at_open: u64,
    /// Rebuilds completed.
    pub rebuilds_completed: u64,
    /// Bad shards found (and healed) by scrubs.
    pub scrub_bad_shards: u64,
    /// Reads and verifications whose bytes were checked.
    pub checked_reads: u64,
    /// Beyond-tolerance phase: stripes checked that must read, and did.
    pub unaffected_stripes_ok: u64,
    /// Beyond-tolerance phase: stripes that failed with a clear error.
    pub affected_stripes_failed_clearly: u64,
    /// Checks of the fault classes (local damage, swap-in cuts, refused devices, subset and
    /// read-only opens), by name: how often each was exercised.
    pub classes: BTreeMap<String, u64>,
    /// Runs with a violation.
    pub violations: u64,
}

impl Stats {
    /// Add another run's counters.
    pub fn merge(&mut self, other: &Stats) {
        self.runs += other.runs;
        for (k, v) in &other.ops {
            *self.ops.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.faults {
            *self.faults.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.classes {
            *self.classes.entry(k.clone()).or_default() += v;
        }
        self.skipped += other.skipped;
        self.forced_opens += other.forced_opens;
        self.refused_at_open += other.refused_at_open;
        self.rebuilds_completed += other.rebuilds_completed;
        self.scrub_bad_shards += other.scrub_bad_shards;
        self.checked_reads += other.checked_reads;
        self.unaffected_stripes_ok += other.unaffected_stripes_ok;
        self.affected_stripes_failed_clearly += other.affected_stripes_failed_clearly;
        self.violations += other.violations;
    }
    /// Operations executed in total.
    #[must_use]
    pub fn total_ops(&self) -> u64 {
        self.ops.values().sum()
    }
    /// Faults injected in total.
    #[must_use]
    pub fn total_faults(&self) -> u64 {
        self.faults.values().sum()
    }
}

/// What one run found.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Counters.
    pub stats: Stats,
    /// The first broken rule, if any (the run stops there).
    pub violation: Option<Violation>,
}

/// Play `ops` under `config` and check every step.
///
/// # Errors
/// Only when the simulation cannot be set up (an impossible layout or device size); broken
/// rules are reported in [`RunReport::violation`].
pub fn run(config: &SimConfig, ops: &[Op]) -> Result<RunReport> {
    // One worker thread: the pool's parallel paths then run in a fixed order.
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|err| {
            Error::InvalidConfig(format!("cannot start the simulation thread: {err}"))
        })?;
    // Device-parallel work (commits, superblock writes, rebuild and scrub reads) runs in order
    // too: the devices share one power-cut countdown, so the interleaving of their requests
    // decides what a power cut keeps.
    threads.install(|| crate::pool::run_sequentially(|| world::run(config, ops)))
}

/// Generate and run `config.seed`'s workload.
///
/// # Errors
/// As [`run`].
pub fn run_seed(config: &SimConfig) -> Result<RunReport> {
    run(config, &generate(config))
}

/// Shrink a failing workload: drop ever smaller chunks of ops while the run still fails,
/// within `budget` of time. Returns the shortest failing workload found and its violation.
#[must_use]
pub fn shrink(config: &SimConfig, ops: &[Op], budget: Duration) -> (Vec<Op>, Option<Violation>) {
    let started = Instant::now();
    let fails = |candidate: &[Op]| -> Option<Violation> {
        run(config, candidate)
            .ok()
            .and_then(|report| report.violation)
    };
    let mut current = ops.to_vec();
    let Some(mut violation) = fails(&current) else {
        return (current, None);
    };
    // Nothing after the failing step matters.
    current.truncate(violation.step + 1);
    let mut chunk = current.len().div_ceil(2).max(1);
    while chunk >= 1 && started.elapsed() < budget {
        let mut start = 0;
        let mut removed_any = false;
        while start < current.len() && started.elapsed() < budget {
            let end = (start + chunk).min(current.len());
            let candidate: Vec<Op> = current[..start]
                .iter()
                .chain(&current[end..])
                .cloned()
                .collect();
            match fails(&candidate) {
                Some(found) if !candidate.is_empty() => {
                    current = candidate;
                    current.truncate(found.step + 1);
                    violation = found;
                    removed_any = true;
                }
                _ => start += chunk,
            }
        }
        if chunk == 1 && !removed_any {
            break;
        }
        chunk = (chunk / 2).max(1);
    }
    (current, Some(violation))
}

/// A workload saved for replay: the run's parameters and its ops.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Replay {
    /// Seed (of the original run: faults not yet drawn still come from it).
    pub seed: u64,
    /// Layout.
    pub layout: String,
    /// Data devices.
    pub devices: usize,
    /// Fault set, as on the command line.
    pub faults: String,
    /// Device size.
    pub device_bytes: u64,
    /// Chunk size.
    pub chunk_bytes: u64,
    /// Faults may land on metadata too.
    #[serde(default)]
    pub metadata_faults: bool,
    /// Planted bugs, by their `--plant` names.
    #[serde(default)]
    pub planted: Vec<String>,
    /// The pool ran on format version 4.
    #[serde(default)]
    pub format4: bool,
    /// The pool had failure domains.
    #[serde(default)]
    pub domains: bool,
    /// Members away had a grace period of zero.
    #[serde(default)]
    pub short_grace: bool,
    /// Reads were taken together in pieces about half the time (absent in replays recorded
    /// before 2026-12-07: off).
    #[serde(default)]
    pub reads_together: bool,
    /// The ops.
    pub ops: Vec<Op>,
}

impl Replay {
    /// Record `ops` run under `config`.
    #[must_use]
    pub fn new(config: &SimConfig, ops: &[Op]) -> Self {
        Self {
            seed: config.seed,
            layout: config.layout.to_string(),
            devices: config.devices,
            faults: config.faults.to_string(),
            device_bytes: config.device_bytes,
            chunk_bytes: config.chunk_bytes,
            metadata_faults: config.metadata_faults,
            planted: planted_names(&config.planted),
            format4: config.format4,
            domains: config.domains,
            short_grace: config.short_grace,
            reads_together: config.reads_together,
            ops: ops.to_vec(),
        }
    }
    /// The configuration to run the ops under.
    ///
    /// # Errors
    /// [`Error::InvalidLayout`]/[`Error::InvalidConfig`] for a bad layout or fault list.
    pub fn config(&self) -> Result<SimConfig> {
        let mut config = SimConfig::new(self.seed, self.layout.parse()?, self.devices);
        config.faults = self.faults.parse()?;
        config.device_bytes = self.device_bytes;
        config.chunk_bytes = self.chunk_bytes;
        config.metadata_faults = self.metadata_faults;
        config.format4 = self.format4;
        config.domains = self.domains;
        config.short_grace = self.short_grace;
        config.reads_together = self.reads_together;
        config.ops = self.ops.len();
        for name in &self.planted {
            plant(&mut config.planted, name).map_err(Error::InvalidConfig)?;
        }
        Ok(config)
    }
}
