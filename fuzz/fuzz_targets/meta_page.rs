//! Arbitrary bytes as every format-version-4 metadata structure (pointers, pages, slot, usage,
//! forwarding and recovery-point records, log records, uberblocks), and structures built from
//! the input with one bit flipped. The property lives in `stripestore::fuzzing::meta_page` (shared with the
//! corpus-replay test `tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| stripestore::fuzzing::meta_page(data));
