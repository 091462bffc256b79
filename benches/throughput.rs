//! Pool throughput against its baselines, in one run: memcpy of the same bytes, and raw writes
//! of the same bytes straight to the in-memory devices. Report ratios, not absolute numbers:
//! `cargo bench --bench throughput`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;
use stripestore::device::{Device, MemDevice};
use stripestore::testing::{mem_devices, random_bytes, rng, shared};
use stripestore::{CreateOptions, Layout, Pool};

const DEVICE_BYTES: u64 = 96 << 20;
const IO_BYTES: usize = 16 << 20;

fn pool(layout: &str, devices: usize) -> (Pool, Vec<Arc<MemDevice>>) {
    let mems = mem_devices(devices, DEVICE_BYTES);
    let layout: Layout = layout.parse().unwrap();
    let pool = Pool::create(shared(&mems), vec![], &CreateOptions::new(layout)).unwrap();
    (pool, mems)
}

fn throughput(c: &mut Criterion) {
    let data = random_bytes(&mut rng(1), IO_BYTES);
    let mut group = c.benchmark_group("write_16MiB");
    group.throughput(Throughput::Bytes(IO_BYTES as u64));
    group.sample_size(10);
    let mut sink = vec![0u8; IO_BYTES];
    group.bench_function("baseline_memcpy", |b| {
        b.iter(|| sink.copy_from_slice(&data))
    });
    let raw = MemDevice::new("raw", DEVICE_BYTES);
    group.bench_function("baseline_raw_device", |b| {
        b.iter(|| {
            raw.write_at(0, &data).unwrap();
            raw.flush().unwrap();
        })
    });
    for (layout, devices) in [
        ("mirror:2", 2),
        ("raid10:2", 4),
        ("rs:4+2", 6),
        ("rs:8+3", 11),
    ] {
        let (pool, _mems) = pool(layout, devices);
        group.bench_with_input(
            BenchmarkId::new("pool_full_stripes", layout),
            &pool,
            |b, pool| {
                b.iter(|| {
                    pool.write_at(0, &data).unwrap();
                    pool.flush().unwrap();
                })
            },
        );
    }
    group.finish();

    let mut group = c.benchmark_group("read_16MiB");
    group.throughput(Throughput::Bytes(IO_BYTES as u64));
    group.sample_size(10);
    let mut buf = vec![0u8; IO_BYTES];
    group.bench_function("baseline_memcpy", |b| b.iter(|| buf.copy_from_slice(&data)));
    for (layout, devices) in [("mirror:2", 2), ("rs:4+2", 6)] {
        let (pool, mems) = pool(layout, devices);
        pool.write_at(0, &data).unwrap();
        pool.flush().unwrap();
        group.bench_with_input(
            BenchmarkId::new("pool_healthy", layout),
            &pool,
            |b, pool| b.iter(|| pool.read_at(0, &mut buf).unwrap()),
        );
        mems[0].set_gone(true);
        group.bench_with_input(
            BenchmarkId::new("pool_one_device_lost", layout),
            &pool,
            |b, pool| b.iter(|| pool.read_at(0, &mut buf).unwrap()),
        );
        pool.simulate_power_loss();
    }
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
