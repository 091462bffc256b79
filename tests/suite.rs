//! Most of the library's integration tests, in one test binary: each module is one file of
//! tests/ (see its header). One binary rather than one per file: each test binary links the
//! whole library and its dependencies again, and `cargo test` runs binaries one after another,
//! so a binary's last long test left a core idle (CI took 1,420 s of its 25 minutes). Kept as
//! binaries of their own (Cargo.toml): tests that measure the process (its allocations, its
//! resident set), set its environment, or depend on timing (deadlines, delays, sleeps), so that
//! a busy neighbour from another file cannot change what they see.

mod common;
#[path = "common/meta.rs"]
mod meta;

mod checksum_blocks;
mod commit_regressions;
mod crash_consistency;
mod crash_sweep;
mod discard;
mod failure_domains;
mod fault_injection;
mod full_volume;
mod fuzz_corpus;
mod layering;
mod layouts;
mod meta_log;
mod meta_pages;
mod meta_tree;
mod pool_copy;
mod pool_send;
mod read_fills;
mod read_many;
mod scrub;
mod sectored_leaves;
mod simulation;
mod simulation_planted;
mod volume_clean;
mod volume_recovery;
