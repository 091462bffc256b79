//! The rings, log halves or metadata pages of a format-version-4 map with history, damaged by
//! the input on one member or on all of them, then opened (replay) and synced (drain). The
//! property lives in `stripestore::fuzzing::meta_recovery` (shared with the corpus-replay test
//! `tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stripestore::fuzzing::meta_recovery(data));
