//! The stripe-map log and checkpoints of a real pool, corrupted by the input, then replayed by
//! opening the pool. The property lives in `stripestore::fuzzing::log_replay` (shared with the
//! corpus-replay test `tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stripestore::fuzzing::log_replay(data));
