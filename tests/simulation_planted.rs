//! The simulation can fail: with one protection switched off in the simulated pool
//! (`OpenOptions::planted`, feature `testing`), a bounded set of seeds must catch the damage.
//! The switches belong to one pool, so these tests run side by side with everything else.

use std::time::Duration;
use stripestore::sim::{self, SimConfig, LAYOUTS};
use stripestore::testing::PlantedBugs;

/// How many seeds the simulation may need to notice.
const SEEDS_MAX: u64 = 20;
/// On format version 4 the workload draws more families (the healthy replace with its power
/// cut, the scrub beside writes), so a crash right after an unflushed commit comes a little
/// later (2026-12-04: `release-before-root-durable` at seed 48, `skip-commit-data-flush` at 44).
const SEEDS_MAX_V4: u64 = 64;

/// The first of seeds `0..SEEDS_MAX` (cycling through the layouts) whose run breaks a rule.
fn first_violation(
    planted: PlantedBugs,
    ops: usize,
    faults: &str,
) -> Option<(SimConfig, Vec<sim::Op>, sim::Violation)> {
    (0..SEEDS_MAX).find_map(|seed| {
        let (layout, devices) = LAYOUTS[(seed as usize) % LAYOUTS.len()];
        let mut config = SimConfig::new(seed, layout.parse().unwrap(), devices);
        config.ops = ops;
        config.faults = faults.parse().unwrap();
        config.planted = planted;
        let workload = sim::generate(&config);
        let report = sim::run(&config, &workload).unwrap();
        report
            .violation
            .map(|violation| (config, workload, violation))
    })
}

/// Shard reads that skip checksum verification must be caught returning wrong bytes, and the
/// failure must shrink to a short replay.
#[test]
fn skipping_checksum_verification_is_caught_within_a_few_seeds() {
    let planted = PlantedBugs {
        skip_checksum_verification: true,
        ..PlantedBugs::default()
    };
    let caught = first_violation(planted, 200, "all");
    let (mut config, ops, violation) = caught
        .unwrap_or_else(|| panic!("{SEEDS_MAX} seeds missed a read path that skips checksums"));
    assert!(
        violation.message.contains("WRONG BYTES"),
        "caught, but not as wrong bytes: {violation}"
    );
    // The failure shrinks to a short replay that still fails the same way.
    let (shrunk, found) = sim::shrink(&config, &ops, Duration::from_secs(20));
    let found = found.expect("the shrunk workload still fails");
    eprintln!(
        "caught with seed {} ({}) at step {}: {}\nminimal replay ({} of {} ops):",
        config.seed,
        config.command_line(),
        violation.step,
        violation.message,
        shrunk.len(),
        ops.len()
    );
    for op in &shrunk {
        eprintln!("  {op:?}");
    }
    assert!(found.message.contains("WRONG BYTES"));
    assert!(shrunk.len() < ops.len());
    // And with the protection back on, the same workload passes.
    config.planted = PlantedBugs::default();
    assert!(sim::run(&config, &ops).unwrap().violation.is_none());
}

/// A commit that writes the map before the data it names is durable must be caught losing
/// flushed data at a power cut (with crashes as the only fault).
#[test]
fn skipping_the_data_flush_before_commit_is_caught_within_a_few_seeds() {
    let planted = PlantedBugs {
        skip_commit_data_flush: true,
        ..PlantedBugs::default()
    };
    let caught = first_violation(planted, 300, "crash");
    let (mut config, _, violation) = caught
        .unwrap_or_else(|| panic!("{SEEDS_MAX} seeds missed commits that skip the data flush"));
    eprintln!("caught with {}: {violation}", config.command_line());
    // Seen at the crash itself, or by a later open (a read-only look) reading what it lost.
    assert!(
        violation.message.contains("after a crash") || violation.message.contains("read-only"),
        "caught, but not at a crash: {violation}"
    );
    config.planted = PlantedBugs::default();
    assert!(sim::run_seed(&config).unwrap().violation.is_none());
}

/// The fault policy before issue 11 (data errors past the threshold fault the device) must be
/// caught by the localized-damage op: damage beyond the tolerance on a few stripes would then
/// fault healthy members instead of costing those stripes only.
#[test]
fn faulting_on_data_errors_is_caught_within_a_few_seeds() {
    let planted = PlantedBugs {
        fault_on_data_errors: true,
        ..PlantedBugs::default()
    };
    let caught = first_violation(planted, 200, "all");
    let (mut config, _, violation) =
        caught.unwrap_or_else(|| panic!("{SEEDS_MAX} seeds missed data errors faulting members"));
    eprintln!("caught with {}: {violation}", config.command_line());
    assert!(
        violation.message.contains("faulted"),
        "caught, but not as a fault: {violation}"
    );
    config.planted = PlantedBugs::default();
    assert!(sim::run_seed(&config).unwrap().violation.is_none());
}

/// A discard that unmaps stripes without recording the unmapping in the commit must be caught:
/// after a crash or a reopen the map names the old slots again (the old data back, or slots
/// reused since that no longer verify).
#[test]
fn discards_left_out_of_the_commit_are_caught_within_a_few_seeds() {
    let planted = PlantedBugs {
        skip_discard_log: true,
        ..PlantedBugs::default()
    };
    let caught = first_violation(planted, 200, "crash");
    let (mut config, _, violation) = caught
        .unwrap_or_else(|| panic!("{SEEDS_MAX} seeds missed discards that are never committed"));
    eprintln!("caught with {}: {violation}", config.command_line());
    config.planted = PlantedBugs::default();
    assert!(sim::run_seed(&config).unwrap().violation.is_none());
}

/// On format version 4 too: reads that skip checksum verification, commits that do not flush
/// the rows first, and the two bugs of the metadata path issue 13 names (pages read without
/// checking them against their parent's checksum; segments released before the root that
/// frees them is durable), and rows encoded before the lock without parity (issue 14), are
/// caught within a few seeds.
#[test]
fn planted_bugs_are_caught_on_format_v4() {
    for (name, planted, expect) in [
        (
            "skip-checksum-verification",
            PlantedBugs {
                skip_checksum_verification: true,
                ..PlantedBugs::default()
            },
            // Wrong bytes, seen by a read or by the check after a crash.
            "WRONG BYTES|never written",
        ),
        (
            "skip-commit-data-flush",
            PlantedBugs {
                skip_commit_data_flush: true,
                ..PlantedBugs::default()
            },
            "",
        ),
        (
            // Issue 13: the metadata path's own checks.
            "skip-page-checksum-verification",
            PlantedBugs {
                skip_page_checksum_verification: true,
                ..PlantedBugs::default()
            },
            "",
        ),
        (
            "release-before-root-durable",
            PlantedBugs {
                release_before_root_durable: true,
                ..PlantedBugs::default()
            },
            "",
        ),
        (
            // Issue 14: rows encoded before the volume's lock without their parity read
            // fine until a shard must be rebuilt from one.
            "encode-without-parity",
            PlantedBugs {
                encode_without_parity: true,
                ..PlantedBugs::default()
            },
            "",
        ),
        (
            // Issue 15: blocks recovery points hold counted off when the live volume drops
            // them (the hold rule, docs/FORMAT.md V4.10a).
            "drop-held-block",
            PlantedBugs {
                drop_held_block: true,
                ..PlantedBugs::default()
            },
            "",
        ),
        (
            // Issue 15: the hold rule without a head delete's cursor (docs/FORMAT.md V4.10e):
            // what the live volume drops where the delete has passed stays counted.
            "delete-cursor-ignored",
            PlantedBugs {
                delete_cursor_ignored: true,
                ..PlantedBugs::default()
            },
            "LEAK",
        ),
        (
            // Issue 16: the map's next-written hint one block late: a written block right
            // after an unwritten one is reported unwritten (a copy would skip it).
            "allocation-hint-late",
            PlantedBugs {
                allocation_hint_late: true,
                ..PlantedBugs::default()
            },
            "HOLE OVER DATA",
        ),
    ] {
        let caught = (0..SEEDS_MAX_V4).find_map(|seed| {
            let (layout, devices) = LAYOUTS[(seed as usize) % LAYOUTS.len()];
            let mut config = SimConfig::new_v4(seed, layout.parse().unwrap(), devices);
            config.ops = 200;
            config.planted = planted;
            let workload = sim::generate(&config);
            let report = sim::run(&config, &workload).unwrap();
            report.violation.map(|violation| (config, violation))
        });
        let (config, violation) =
            caught.unwrap_or_else(|| panic!("{SEEDS_MAX_V4} v4 seeds missed {name}"));
        assert!(
            expect.split('|').any(|e| violation.message.contains(e)),
            "{name}: {violation}"
        );
        eprintln!(
            "{name} on v4 caught with seed {} at step {}: {}",
            config.seed, violation.step, violation.message
        );
    }
}

/// Two replications whose receives are cut after `cut` device operations, then aborted
/// (`seed` even) or resumed (odd): a full stream, then (from the first, when it was resumed)
/// an incremental one over large writes.
fn replication_cut(cut: u16, seed: u64) -> Vec<sim::Op> {
    use sim::Op;
    let write = |offset: u64, len: u32, data_seed: u64| Op::Write {
        offset,
        len,
        data_seed,
    };
    // Many separate runs, so that each stream has many records and a receive commits
    // several times before it ends (what a cut then leaves is durable, for the abort to free).
    let mut ops: Vec<Op> = (0..48u64).map(|i| write(i * 65_536, 8192, 1 + i)).collect();
    ops.extend([
        Op::RecoveryPointCreate,
        Op::Replicate {
            pick: 0,
            cut: Some(cut),
            seed,
        },
    ]);
    ops.extend((0..48u64).map(|i| write(i * 65_536 + 32_768, 8192, 100 + i)));
    ops.extend([
        Op::RecoveryPointCreate,
        Op::Replicate {
            pick: 1,
            cut: Some(cut),
            seed,
        },
        Op::Verify,
    ]);
    ops
}

/// The receive's cut, resume and abort are checked by the simulation's replica, and its
/// checks can fail: with no planted bug no cut breaks a rule; with `abort-keeps-blocks` (an
/// abort that frees nothing it wrote) or `receive-reads-live` (an unfinished receive read as
/// what it wrote so far) some cut does, saying so.
#[test]
fn receive_bugs_are_caught_by_the_replicas_checks() {
    // Each run's violation, lazily: a planted bug's search stops at the first it expects.
    let runs = |planted: PlantedBugs| {
        (1..400u16)
            .step_by(17)
            .flat_map(|cut| [(cut, 2u64), (cut, 3)])
            .filter_map(move |(cut, seed)| {
                let mut config = SimConfig::new_v4(7, "rs:4+2".parse().unwrap(), 6);
                config.planted = planted;
                // The cuts were chosen with reads in one piece.
                config.reads_together = false;
                let report = sim::run(&config, &replication_cut(cut, seed)).unwrap();
                report
                    .violation
                    .map(|v| format!("cut {cut}: {}", v.message))
            })
    };
    let clean: Vec<String> = runs(PlantedBugs::default()).collect();
    assert!(clean.is_empty(), "{clean:?}");
    for (name, planted, expect) in [
        (
            "abort-keeps-blocks",
            PlantedBugs {
                abort_keeps_blocks: true,
                ..PlantedBugs::default()
            },
            "LEAK",
        ),
        (
            "receive-reads-live",
            PlantedBugs {
                receive_reads_live: true,
                ..PlantedBugs::default()
            },
            "WRONG BYTES",
        ),
    ] {
        let mut caught = Vec::new();
        for message in runs(planted) {
            let expected = message.contains(expect);
            caught.push(message);
            if expected {
                break;
            }
        }
        assert!(
            caught.last().is_some_and(|m| m.contains(expect)),
            "{name} went unnoticed: {caught:?}"
        );
        eprintln!("{name}: {}", caught[caught.len() - 1]);
    }
}

/// Issue 18 (docs/FORMAT.md V4.16): the first v4 seed of `seeds` (cycling through the layouts)
/// whose run with `planted` breaks a rule, with the seeds tried.
fn first_v4_violation(
    planted: PlantedBugs,
    seeds: impl Iterator<Item = u64>,
) -> Option<(SimConfig, sim::Violation)> {
    seeds.take(SEEDS_MAX_V4 as usize).find_map(|seed| {
        let (layout, devices) = LAYOUTS[(seed as usize) % LAYOUTS.len()];
        let mut config = SimConfig::new_v4(seed, layout.parse().unwrap(), devices);
        config.ops = 300;
        config.planted = planted;
        let workload = sim::generate(&config);
        let report = sim::run(&config, &workload).unwrap();
        report.violation.map(|violation| (config, violation))
    })
}

/// Spares attached without the failure-domain rule (planted `domains_ignored`): on a seed with
/// domains, a member fails, the first spare (in a member's domain) is attached where its domain
/// would hold too many shards, and the check of the placement after every step says so.
#[test]
fn planted_domains_ignored_is_caught_by_the_simulation() {
    let planted = PlantedBugs {
        domains_ignored: true,
        ..PlantedBugs::default()
    };
    // Seeds with domains: `SimConfig::new_v4` gives them to one seed in three.
    let (mut config, violation) = first_v4_violation(planted, (0..).filter(|s| s % 3 == 1))
        .unwrap_or_else(|| panic!("{SEEDS_MAX_V4} v4 seeds with domains missed domains-ignored"));
    eprintln!(
        "domains-ignored caught with seed {} ({}) at step {}: {}",
        config.seed, config.layout, violation.step, violation.message
    );
    assert!(
        violation.message.contains("DOMAIN RULE BROKEN"),
        "{violation}"
    );
    config.planted = PlantedBugs::default();
    assert!(sim::run_seed(&config).unwrap().violation.is_none());
}

/// The resync boundary taken one sequence late (planted `resync_since_late`): rows written
/// after the member stopped answering and before the next flush are not copied to it; once it
/// is back in service and `tolerance` other members are lost, they fail to read.
#[test]
fn planted_resync_since_late_is_caught_by_the_simulation() {
    let planted = PlantedBugs {
        resync_since_late: true,
        ..PlantedBugs::default()
    };
    let (mut config, violation) = first_v4_violation(planted, 0..)
        .unwrap_or_else(|| panic!("{SEEDS_MAX_V4} v4 seeds missed resync-since-late"));
    eprintln!(
        "resync-since-late caught with seed {} ({}) at step {}: {}",
        config.seed, config.layout, violation.step, violation.message
    );
    assert!(
        violation.message.contains("resynced"),
        "caught, but not after a resync: {violation}"
    );
    config.planted = PlantedBugs::default();
    assert!(sim::run_seed(&config).unwrap().violation.is_none());
}
