//! Throughput through NBD against direct library access to the same pool, in one run:
//! `cargo bench --bench nbd`.
//!
//! Both sides issue the same requests with the same concurrency: direct access from 8 threads,
//! NBD from one loopback TCP connection with 8 requests in flight (the shape of `nbdcopy` and
//! `fio --iodepth=8`). The pool is `rs:4+2` on in-memory devices, so the difference is the
//! protocol, the sockets and the server's threads. Report the ratio, not absolute numbers.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::Rng;
use std::net::TcpStream;
use std::sync::Arc;
use stripestore::nbd::client::Client;
use stripestore::nbd::proto::cmd;
use stripestore::nbd::ServeOptions;
use stripestore::testing::nbd::BackgroundServer;
use stripestore::testing::{mem_devices, random_bytes, rng, shared};
use stripestore::{CreateOptions, Layout, Pool};

const DEVICE_BYTES: u64 = 64 << 20;
const TOTAL_BYTES: u64 = 32 << 20;
const DEPTH: usize = 8;

/// (offset, length) of each request of a workload.
type Requests = Vec<(u64, u32)>;

fn sequential(piece: u32) -> Requests {
    (0..TOTAL_BYTES / u64::from(piece))
        .map(|i| (i * u64::from(piece), piece))
        .collect()
}

fn random(piece: u32, count: usize, volume: u64) -> Requests {
    let mut rng = rng(7);
    (0..count)
        .map(|_| {
            let slots = volume / u64::from(piece);
            (rng.gen_range(0..slots) * u64::from(piece), piece)
        })
        .collect()
}

/// The requests split over `DEPTH` threads, each doing its share in order.
fn direct(pool: &Pool, requests: &Requests, data: &[u8], write: bool) {
    std::thread::scope(|scope| {
        for lane in 0..DEPTH {
            scope.spawn(move || {
                let mut buf = vec![0u8; data.len()];
                for &(offset, length) in requests.iter().skip(lane).step_by(DEPTH) {
                    let length = length as usize;
                    if write {
                        pool.write_at(offset, &data[..length]).unwrap();
                    } else {
                        pool.read_at(offset, &mut buf[..length]).unwrap();
                    }
                }
            });
        }
    });
    if write {
        pool.flush().unwrap();
    }
}

/// The requests over one connection, `DEPTH` in flight.
fn through_nbd(client: &mut Client<TcpStream>, requests: &Requests, data: &[u8], write: bool) {
    let mut in_flight = 0;
    for &(offset, length) in requests {
        if in_flight == DEPTH {
            assert_eq!(client.receive().unwrap().errno, 0);
            in_flight -= 1;
        }
        if write {
            let payload = &data[..length as usize];
            client.send(cmd::WRITE, 0, offset, length, payload).unwrap();
        } else {
            client.send(cmd::READ, 0, offset, length, &[]).unwrap();
        }
        in_flight += 1;
    }
    for _ in 0..in_flight {
        assert_eq!(client.receive().unwrap().errno, 0);
    }
    if write {
        client.flush().unwrap();
    }
}

fn nbd_vs_direct(c: &mut Criterion) {
    let mems = mem_devices(6, DEVICE_BYTES);
    let layout: Layout = "rs:4+2".parse().unwrap();
    let mut options = CreateOptions::new(layout);
    options.open.background_rebuild = false;
    let pool = Arc::new(Pool::create(shared(&mems), vec![], &options).unwrap());
    let server = BackgroundServer::start(Arc::clone(&pool), ServeOptions::default()).unwrap();
    let stream = TcpStream::connect(server.addr).unwrap();
    let mut client = Client::connect(stream, "").unwrap();

    let data = random_bytes(&mut rng(1), 1 << 20);
    let sequential_1m = sequential(1 << 20);
    // Fill the volume's first TOTAL_BYTES so reads are of written stripes.
    direct(&pool, &sequential_1m, &data, true);
    let random_4k = random(4096, 4096, TOTAL_BYTES);
    let workloads: [(&str, &Requests, bool); 3] = [
        ("write_1MiB_seq_then_flush", &sequential_1m, true),
        ("read_1MiB_seq", &sequential_1m, false),
        ("read_4KiB_random", &random_4k, false),
    ];
    for (name, requests, write) in workloads {
        let bytes: u64 = requests.iter().map(|&(_, l)| u64::from(l)).sum();
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(bytes));
        group.sample_size(10);
        group.measurement_time(std::time::Duration::from_secs(4));
        group.bench_function(BenchmarkId::new("direct", "8_threads"), |b| {
            b.iter(|| direct(&pool, requests, &data, write))
        });
        group.bench_function(BenchmarkId::new("nbd", "1_conn_depth_8"), |b| {
            b.iter(|| through_nbd(&mut client, requests, &data, write))
        });
        group.finish();
    }
    drop(client);
    server.stop().unwrap();
}

criterion_group!(benches, nbd_vs_direct);
criterion_main!(benches);
