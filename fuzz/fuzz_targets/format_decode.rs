//! Arbitrary bytes as superblocks, checkpoints and log records; and encoded maps with one bit
//! flipped. The property lives in `stripestore::fuzzing::format_decode` (shared with the
//! corpus-replay test `tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stripestore::fuzzing::format_decode(data));
