//! Random layouts, data and erasures within tolerance must round-trip through the erasure codec;
//! one erasure too many must be refused. The property lives in
//! `stripestore::fuzzing::codec_roundtrip` (shared with `tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stripestore::fuzzing::codec_roundtrip(data));
