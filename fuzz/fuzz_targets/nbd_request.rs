//! Arbitrary bytes as an NBD client: through the request and option decoders, and through a
//! whole server connection on a small in-memory pool. Nothing may panic, decoders must
//! round-trip, and no byte of the volume may change outside a write request's range. The
//! checks live in `stripestore::testing::nbd` so `tests/nbd.rs` replays stored inputs
//! through the same code on stable Rust.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use stripestore::testing::nbd::{exercise_nbd_input, nbd_fuzz_pool, nbd_fuzz_pool_v4};
use stripestore::Pool;

static POOL: OnceLock<Pool> = OnceLock::new();
static POOL_V4: OnceLock<Pool> = OnceLock::new();

// Bit 1 of the first byte picks the pool: format version 3, or version 4 (whose small writes
// the server queues); bit 0 is the harness's own (see `exercise_nbd_input`).
fuzz_target!(|data: &[u8]| {
    let pool = if data.first().is_some_and(|b| b & 2 != 0) {
        POOL_V4.get_or_init(nbd_fuzz_pool_v4)
    } else {
        POOL.get_or_init(nbd_fuzz_pool)
    };
    exercise_nbd_input(data, pool);
});
