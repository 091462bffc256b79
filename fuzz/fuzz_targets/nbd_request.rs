//! Arbitrary bytes as an NBD client: through the request and option decoders, and through a
//! whole server connection on a small in-memory pool. Nothing may panic, decoders must
//! round-trip, and no byte of the volume may change outside a write request's range. The
//! checks live in `stripestore::testing::nbd` so `tests/nbd.rs` replays stored inputs
//! through the same code on stable Rust.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use stripestore::testing::nbd::{exercise_nbd_input, nbd_fuzz_pool};
use stripestore::Pool;

static POOL: OnceLock<Pool> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let pool = POOL.get_or_init(nbd_fuzz_pool);
    exercise_nbd_input(data, pool);
});
