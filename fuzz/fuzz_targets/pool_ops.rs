//! Arbitrary sequences of writes, reads, flushes, device losses and bit rot against the
//! reference model: every successful read must match, and with at most `tolerance` devices
//! damaged, no read may fail.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use stripestore::testing::{mem_devices, shared, Model};
use stripestore::{CreateOptions, Pool};

#[derive(Arbitrary, Debug)]
enum Op {
    Write { offset: u32, len: u16, byte: u8 },
    Read { offset: u32, len: u16 },
    Flush,
    Rot { device: u8, offset: u32 },
    Lose { device: u8 },
    Reopen,
}

fuzz_target!(|ops: Vec<Op>| {
    let mems = mem_devices(6, 2 << 20);
    let mut options = CreateOptions::new("rs:4+2".parse().unwrap());
    options.chunk_bytes = 4096;
    // Version 3's stripes on 2 MiB members (version 4's pool ops: the simulation).
    stripestore::testing::allow_format_3_writes(true);
    options.format = stripestore::pool::FormatVersion::V3;
    let mut pool = Pool::create(shared(&mems), vec![], &options).unwrap();
    let mut model = Model::new(pool.size());
    let size = pool.size();
    let mut damaged = std::collections::BTreeSet::new();
    let mut lost = std::collections::BTreeSet::new();
    for op in ops.into_iter().take(64) {
        match op {
            Op::Write { offset, len, byte } => {
                let offset = u64::from(offset) % size;
                let len = (u64::from(len)).min(size - offset) as usize;
                let data = vec![byte; len];
                if pool.write_at(offset, &data).is_ok() {
                    model.write(offset, &data);
                }
            }
            Op::Read { offset, len } => {
                let offset = u64::from(offset) % size;
                let len = (u64::from(len)).min(size - offset) as usize;
                let mut buf = vec![0u8; len];
                match pool.read_at(offset, &mut buf) {
                    Ok(()) => assert_eq!(buf, model.read(offset, len)),
                    Err(err) => assert!(damaged.len() + lost.len() > 2, "read failed within tolerance: {err}"),
                }
            }
            Op::Flush => {
                let _ = pool.flush();
            }
            Op::Rot { device, offset } => {
                let device = usize::from(device) % 6;
                if damaged.len() + lost.len() < 2 || damaged.contains(&device) {
                    damaged.insert(device);
                    let at = pool.geometry().data_offset + u64::from(offset) % (pool.geometry().data_end() - pool.geometry().data_offset);
                    mems[device].flip_bit(at, 3);
                }
            }
            Op::Lose { device } => {
                let device = usize::from(device) % 6;
                if damaged.len() + lost.len() < 2 && !damaged.contains(&device) {
                    lost.insert(device);
                    mems[device].set_gone(true);
                }
            }
            Op::Reopen => {
                if pool.flush().is_ok() {
                    drop(pool);
                    let alive: Vec<_> = mems.iter().enumerate().filter(|(i, _)| !lost.contains(i)).map(|(_, m)| m.clone()).collect();
                    pool = Pool::open(shared(&alive), &Default::default()).unwrap();
                } else {
                    return;
                }
            }
        }
    }
});
