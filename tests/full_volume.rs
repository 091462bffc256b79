//! A format-version-4 volume written whole can be overwritten at any size a pool can be made
//! at: its cleaning headroom is never smaller than what the open streams and the cleaner's own
//! margin take (docs/FORMAT.md V4.2, "never less than 4 segments"). Found when the shared suites
//! moved to version 4: on rs:2+1 with 4 MiB members, a sixteenth of the data area was under
//! six segments, and random overwrites of a full volume failed with `NoFreeSlot` while the
//! whole volume was logical space.

use crate::common;
use common::*;
use stripestore::pool::FormatVersion;
use stripestore::testing::{mem_devices, random_bytes, shared, Model};
use stripestore::Pool;

/// Every layout, members from the smallest a pool accepts up to 6 MiB, with the test
/// machinery's small segments and with the defaults `create` uses: the volume is written
/// whole, then overwritten by 600 random writes (flushed every 100), and read back exactly.
#[test]
fn a_full_volume_can_be_overwritten_at_every_size() {
    each_layout(
        8800,
        "a_full_volume_can_be_overwritten_at_every_size",
        |layout, devices, rng, _seed| {
            let mut made = 0;
            for mib in [2u64, 3, 4, 6] {
                for defaults in [false, true] {
                    let mems = mem_devices(devices, mib << 20);
                    let mut options = options(layout);
                    if defaults {
                        options.format = FormatVersion::V4(Default::default());
                    }
                    // Members too small for a pool are refused at create (tests/bad_input.rs).
                    let Ok(pool) = Pool::create(shared(&mems), vec![], &options) else {
                        continue;
                    };
                    made += 1;
                    let mut model = Model::new(pool.size());
                    let data = random_bytes(rng, usize::try_from(pool.size()).unwrap());
                    pool.write_at(0, &data).unwrap();
                    model.write(0, &data);
                    pool.flush().unwrap();
                    for _ in 0..6 {
                        random_writes(&pool, &mut model, rng, 100);
                        pool.flush()
                            .unwrap_or_else(|e| panic!("{layout} on {mib} MiB: {e}"));
                    }
                    verify(&pool, &model);
                }
            }
            assert!(made >= 4, "{layout}: only {made} pools could be made");
        },
    );
}
