//! The simulation can fail: with one protection switched off through a test-only switch
//! (`testing::planted`), a bounded set of seeds must catch the damage. Its own test binary,
//! because the switches are process-wide (and the tests here take turns).

use parking_lot::Mutex;
use std::time::Duration;
use stripestore::sim::{self, SimConfig, LAYOUTS};
use stripestore::testing::planted::{
    plant_fault_on_data_errors, plant_skip_checksum_verification, plant_skip_commit_data_flush,
};

/// How many seeds the simulation may need to notice.
const SEEDS_MAX: u64 = 20;

/// The first of seeds `0..SEEDS_MAX` (cycling through the layouts) whose run breaks a rule.
fn first_violation(ops: usize, faults: &str) -> Option<(SimConfig, Vec<sim::Op>, sim::Violation)> {
    (0..SEEDS_MAX).find_map(|seed| {
        let (layout, devices) = LAYOUTS[(seed as usize) % LAYOUTS.len()];
        let mut config = SimConfig::new(seed, layout.parse().unwrap(), devices);
        config.ops = ops;
        config.faults = faults.parse().unwrap();
        let workload = sim::generate(&config);
        let report = sim::run(&config, &workload).unwrap();
        report
            .violation
            .map(|violation| (config, workload, violation))
    })
}

/// One planted bug at a time.
static TURN: Mutex<()> = Mutex::new(());

/// Switches a planted bug on, and off again when dropped (even if the test panics).
struct Planted(fn(bool));

impl Planted {
    fn new(switch: fn(bool)) -> Self {
        switch(true);
        Self(switch)
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        (self.0)(false);
    }
}

/// Shard reads that skip checksum verification must be caught returning wrong bytes, and the
/// failure must shrink to a short replay.
#[test]
fn skipping_checksum_verification_is_caught_within_a_few_seeds() {
    let _turn = TURN.lock();
    let planted = Planted::new(plant_skip_checksum_verification);
    let caught = first_violation(200, "all");
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
    drop(planted);
    assert!(sim::run(&config, &ops).unwrap().violation.is_none());
}

/// A commit that writes the map before the data it names is durable must be caught losing
/// flushed data at a power cut (with crashes as the only fault).
#[test]
fn skipping_the_data_flush_before_commit_is_caught_within_a_few_seeds() {
    let _turn = TURN.lock();
    let planted = Planted::new(plant_skip_commit_data_flush);
    let caught = first_violation(300, "crash");
    drop(planted);
    let (config, _, violation) = caught
        .unwrap_or_else(|| panic!("{SEEDS_MAX} seeds missed commits that skip the data flush"));
    eprintln!("caught with {}: {violation}", config.command_line());
    // Seen at the crash itself, or by a later open (a read-only look) reading what it lost.
    assert!(
        violation.message.contains("after a crash") || violation.message.contains("read-only"),
        "caught, but not at a crash: {violation}"
    );
    assert!(sim::run_seed(&config).unwrap().violation.is_none());
}

/// The fault policy before issue 11 (data errors past the threshold fault the device) must be
/// caught by the localized-damage op: damage beyond the tolerance on a few stripes would then
/// fault healthy members instead of costing those stripes only.
#[test]
fn faulting_on_data_errors_is_caught_within_a_few_seeds() {
    let _turn = TURN.lock();
    let planted = Planted::new(plant_fault_on_data_errors);
    let caught = first_violation(200, "all");
    drop(planted);
    let (config, _, violation) =
        caught.unwrap_or_else(|| panic!("{SEEDS_MAX} seeds missed data errors faulting members"));
    eprintln!("caught with {}: {violation}", config.command_line());
    assert!(
        violation.message.contains("faulted"),
        "caught, but not as a fault: {violation}"
    );
    assert!(sim::run_seed(&config).unwrap().violation.is_none());
}
