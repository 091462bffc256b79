//! Arbitrary bytes as a send stream (docs/FORMAT.md V4.10d), and streams built from the input
//! with one bit flipped or cut short. The property lives in `stripestore::fuzzing::send_stream`
//! (shared with the corpus-replay test `tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stripestore::fuzzing::send_stream(data));
