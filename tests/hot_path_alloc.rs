//! The hot path allocates no data buffers in steady state: after a warm-up, full-stripe writes
//! and healthy reads on io_uring file devices make no allocation of 4 KiB or more, on format
//! versions 3 and 4 (buffers are reused; what remains are small bookkeeping vectors).
//! Its own test binary, since it counts allocations process-wide.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use stripestore::device::{open_device, AlignedBuf, SharedDevice};
use stripestore::pool::FormatVersion;
use stripestore::{CreateOptions, Pool};

/// Counts allocations of at least `LARGE` bytes, passing everything to the system allocator.
struct Counting;

const LARGE: usize = 4096;
static LARGE_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds the GlobalAlloc
// contract; the counter is a side effect only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LARGE {
            LARGE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= LARGE {
            LARGE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn steady_state_reads_and_full_stripe_writes_allocate_no_data_buffers() {
    for format in [
        FormatVersion::V3,
        FormatVersion::V4(stripestore::pool::V4Options::default()),
    ] {
        steady_state(format);
    }
}

/// Version 3 reads into per-thread scratch buffers and writes whole stripes from them;
/// version 4 reads runs into buffers each thread keeps and encodes whole rows into buffers
/// that landed writes give back.
fn steady_state(format: FormatVersion) {
    if format == FormatVersion::V3 {
        // Version 3's own engine (a build refuses to write version 3): the machinery's switch.
        stripestore::testing::allow_format_3_writes(true);
    }
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let devices: Vec<SharedDevice> = (0..6)
        .map(|i| open_device(&dir.path().join(format!("d{i}")), Some(8 << 20)).unwrap())
        .collect();
    println!("backend: {}, {format:?}", devices[0].io_backend());
    let mut options = CreateOptions::new("rs:4+2".parse().unwrap());
    options.chunk_bytes = 16 * 1024;
    options.format = format;
    options.open.background_rebuild = false;
    let pool = Pool::create(devices, vec![], &options).unwrap();
    let stripe = pool.geometry().stripe_data_bytes() as usize;
    let mut data = AlignedBuf::zeroed(stripe);
    data.iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i * 13 % 251) as u8);
    let mut back = AlignedBuf::zeroed(stripe);
    let round = |pool: &Pool, back: &mut AlignedBuf| {
        for s in 0..8u64 {
            pool.write_at(s * stripe as u64, &data).unwrap();
            pool.read_at(s * stripe as u64, back).unwrap();
            pool.read_at(s * stripe as u64 + 4096, &mut back[..4096])
                .unwrap();
        }
    };
    // Warm-up: scratch buffers grow, free slots and map state settle. Commit in between so the
    // free list stays stocked.
    round(&pool, &mut back);
    pool.flush().unwrap();
    round(&pool, &mut back);
    pool.flush().unwrap();
    let before = LARGE_ALLOCATIONS.load(Ordering::Relaxed);
    round(&pool, &mut back);
    let after = LARGE_ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(
        after - before,
        0,
        "{format:?}: 8 full-stripe writes and 16 reads made {} allocations of >= {LARGE} bytes",
        after - before
    );
    assert_eq!(&back[..4096], &data[4096..8192]);
}
