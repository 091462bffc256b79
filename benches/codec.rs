//! Codec micro-benchmarks, one core: crc32c, and erasure encode and reconstruct for both coders
//! (`reed-solomon-erasure` and `reed-solomon-simd`) at rs:4+2, rs:8+3, rs:10+4 with 4 KiB,
//! 64 KiB and 1 MiB chunks. Throughput is bytes of *data* (k chunks) per call. memcpy of the
//! same bytes runs in the same group as the baseline.
//!
//! `cargo bench --bench codec` (all), or filter: `cargo bench --bench codec -- encode/rs:4+2`.
//! Reconstruct loses the first m data shards (the most work). `decode_cache` checks that the
//! library's per-pattern decode-matrix cache works: one repeated pattern against a rotation
//! through more patterns than the cache holds.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use stripestore::codec::{ErasureCoder, RseCoder, RssCoder};
use stripestore::testing::{random_bytes, rng};

const GEOMETRIES: [(usize, usize); 3] = [(4, 2), (8, 3), (10, 4)];
const CHUNKS: [usize; 3] = [4 << 10, 64 << 10, 1 << 20];
const PAGE: usize = 4096;

/// `count` page-aligned shards of `len` bytes inside one allocation (FACTS: alignment matters
/// to some kernels), filled with seeded random bytes.
struct Shards {
    backing: Vec<u8>,
    start: usize,
    len: usize,
    count: usize,
}

impl Shards {
    fn new(count: usize, len: usize, seed: u64) -> Self {
        let mut backing = random_bytes(&mut rng(seed), count * len + PAGE);
        let start = (PAGE - backing.as_ptr() as usize % PAGE) % PAGE;
        backing.truncate(start + count * len);
        Self {
            backing,
            start,
            len,
            count,
        }
    }
    fn views(&mut self) -> Vec<&mut [u8]> {
        self.backing[self.start..self.start + self.count * self.len]
            .chunks_mut(self.len)
            .collect()
    }
}

fn coders(k: usize, m: usize) -> Vec<Box<dyn ErasureCoder>> {
    vec![
        Box::new(RseCoder::new(k, m).unwrap()),
        Box::new(RssCoder::new(k, m).unwrap()),
    ]
}

fn configure<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_millis(1200));
    group.sample_size(20);
    group
}

fn crc(c: &mut Criterion) {
    let mut group = configure(c, "crc32c");
    for len in [4 << 10, 64 << 10, 1 << 20] {
        let data = random_bytes(&mut rng(1), len);
        let mut sink = vec![0u8; len];
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("crc32c", len), &data, |b, data| {
            b.iter(|| crc32c::crc32c(std::hint::black_box(data)))
        });
        group.bench_with_input(
            BenchmarkId::new("baseline_memcpy", len),
            &data,
            |b, data| b.iter(|| sink.copy_from_slice(std::hint::black_box(data))),
        );
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    for (k, m) in GEOMETRIES {
        let mut group = configure(c, &format!("encode/rs:{k}+{m}"));
        for chunk in CHUNKS {
            group.throughput(Throughput::Bytes((k * chunk) as u64));
            let mut shards = Shards::new(k + m, chunk, 2);
            let mut views = shards.views();
            let (data, parity) = views.split_at_mut(k);
            let data: Vec<&[u8]> = data.iter().map(|d| &**d).collect();
            for coder in coders(k, m) {
                group.bench_function(BenchmarkId::new(coder.name(), chunk), |b| {
                    b.iter(|| coder.encode(&data, parity).unwrap())
                });
            }
            let mut sink = vec![0u8; k * chunk];
            let source = random_bytes(&mut rng(3), k * chunk);
            group.bench_function(BenchmarkId::new("baseline_memcpy", chunk), |b| {
                b.iter(|| sink.copy_from_slice(std::hint::black_box(&source)))
            });
        }
        group.finish();
    }
}

fn reconstruct(c: &mut Criterion) {
    for (k, m) in GEOMETRIES {
        let mut group = configure(c, &format!("reconstruct_{m}_lost/rs:{k}+{m}"));
        for chunk in CHUNKS {
            group.throughput(Throughput::Bytes((k * chunk) as u64));
            for coder in coders(k, m) {
                let mut shards = Shards::new(k + m, chunk, 4);
                let mut views = shards.views();
                {
                    let (data, parity) = views.split_at_mut(k);
                    let data: Vec<&[u8]> = data.iter().map(|d| &**d).collect();
                    coder.encode(&data, parity).unwrap();
                }
                let expected: Vec<Vec<u8>> = views.iter().map(|v| v.to_vec()).collect();
                let present: Vec<bool> = (0..k + m).map(|i| i >= m).collect();
                group.bench_function(BenchmarkId::new(coder.name(), chunk), |b| {
                    b.iter(|| coder.reconstruct(&mut views, &present).unwrap())
                });
                // The benchmark must measure a correct reconstruction.
                for (view, want) in views.iter().zip(&expected) {
                    assert_eq!(&**view, &want[..]);
                }
            }
        }
        group.finish();
    }
}

/// All patterns of `lost` erasures among `width` shards.
fn patterns(width: usize, lost: usize) -> Vec<Vec<bool>> {
    (0u64..1 << width)
        .filter(|p| p.count_ones() as usize == lost)
        .map(|p| (0..width).map(|i| p & (1 << i) == 0).collect())
        .collect()
}

fn decode_cache(c: &mut Criterion) {
    let (k, m, chunk) = (10, 4, 4 << 10);
    let mut group = configure(c, "decode_cache/rs:10+4");
    group.throughput(Throughput::Bytes((k * chunk) as u64));
    let coder = RseCoder::new(k, m).unwrap();
    let mut shards = Shards::new(k + m, chunk, 5);
    let mut views = shards.views();
    {
        let (data, parity) = views.split_at_mut(k);
        let data: Vec<&[u8]> = data.iter().map(|d| &**d).collect();
        coder.encode(&data, parity).unwrap();
    }
    // 1001 patterns of four losses; the library's cache holds 254, so a rotation always misses.
    let all = patterns(k + m, m);
    group.bench_function("one_pattern_cached", |b| {
        b.iter(|| coder.reconstruct(&mut views, &all[0]).unwrap())
    });
    let mut next = 0;
    group.bench_function("rotating_1001_patterns_uncached", |b| {
        b.iter(|| {
            next = (next + 1) % all.len();
            coder.reconstruct(&mut views, &all[next]).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, crc, encode, reconstruct, decode_cache);
criterion_main!(benches);
