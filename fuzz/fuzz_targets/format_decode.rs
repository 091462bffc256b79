//! Arbitrary bytes as superblocks, checkpoints and log records: decoding must never panic, and
//! whatever decodes must re-encode to something that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stripestore::format::{decode_checkpoint, decode_log_record, PoolUuid, StripeMap, Superblock};

fuzz_target!(|data: &[u8]| {
    if let Ok(superblock) = Superblock::decode(data) {
        if let Ok(bytes) = superblock.encode() {
            assert_eq!(Superblock::decode(&bytes).ok(), Some(superblock));
        }
    }
    let pool = PoolUuid([7; 16]);
    let mut map = StripeMap::new(64, 6);
    let _ = decode_checkpoint(pool, data, &mut map);
    let sequence = data.get(24..32).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    let _ = decode_log_record(pool, sequence, data, &mut map);
});
