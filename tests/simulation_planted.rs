//! The simulation can fail: with one protection switched off through a test-only switch
//! (`testing::planted`: shard reads stop verifying checksums), a bounded set of seeds must
//! catch wrong bytes being returned. Its own test binary, because the switch is process-wide.

use std::time::Duration;
use stripestore::sim::{self, SimConfig, LAYOUTS};
use stripestore::testing::planted::plant_skip_checksum_verification;

/// How many seeds the simulation may need to notice.
const SEEDS_MAX: u64 = 20;

#[test]
fn skipping_checksum_verification_is_caught_within_a_few_seeds() {
    plant_skip_checksum_verification(true);
    let mut caught = None;
    for seed in 0..SEEDS_MAX {
        let (layout, devices) = LAYOUTS[(seed as usize) % LAYOUTS.len()];
        let mut config = SimConfig::new(seed, layout.parse().unwrap(), devices);
        config.ops = 200;
        let ops = sim::generate(&config);
        let report = sim::run(&config, &ops).unwrap();
        if let Some(violation) = report.violation {
            caught = Some((config, ops, violation));
            break;
        }
    }
    let (config, ops, violation) = caught
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
    plant_skip_checksum_verification(false);
    assert!(sim::run(&config, &ops).unwrap().violation.is_none());
}
