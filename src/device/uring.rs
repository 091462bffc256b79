//! An io_uring device backend, and batched submission across devices.
//!
//! [`UringDevice`] is a file or block device driven through io_uring. It opens the path twice:
//! with `O_DIRECT` where the filesystem allows it (probed with an aligned read at open; tmpfs,
//! for one, refuses), and buffered. Requests whose offset and length are 4 KiB multiples go
//! through the direct descriptor; the caller's buffer is used as it is when its address is
//! 4 KiB aligned too (see [`AlignedBuf`]), else through an aligned bounce buffer. Anything
//! unaligned uses the buffered descriptor with plain `pread`/`pwrite` (the pool never issues such
//! requests: its whole format is 4 KiB aligned). `flush` is `fdatasync`.
//!
//! [`run_batch`] issues many requests on many devices with one `io_uring_enter`: the pool gives
//! it every shard of a stripe, so the members work in parallel without a thread per device (and
//! without a thread waiting on other pool work while it holds a stripe lock). Requests on devices
//! that are not io_uring devices (memory devices, fault-injection decorators) run one after
//! another through the [`Device`] trait while the kernel works on the rest.
//!
//! Each thread has its own ring, made on first use; io_uring unavailable → [`open_device`] picks
//! [`FileDevice`] instead ([`Backend::Auto`]), and a ring that cannot be made later makes the
//! batch fall back to `pread`/`pwrite`. Registered buffers are not used: buffers belong to the
//! callers and change per request, so registering them would cost more than it saves.
#![allow(unsafe_code)]

use super::{
    Access, Batched, Device, DeviceError, FileDevice, NbdDevice, NbdOptions, SharedDevice,
};
use crate::error::Result;
use io_uring::{opcode, types, IoUring};
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

/// Alignment of offsets, lengths and buffer addresses for `O_DIRECT`.
pub const DIRECT_ALIGN: usize = 4096;
/// Entries of each thread's ring: the most requests in flight per batch round.
const RING_ENTRIES: u32 = 64;
/// Most pieces one `writev` takes (Linux's `UIO_MAXIOV`); a vectored write of more is joined.
const IOV_MAX: usize = 1024;

/// Which I/O backend to use for file and block devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// io_uring when the kernel offers it, else `pread`/`pwrite`.
    #[default]
    Auto,
    /// Always `pread`/`pwrite` ([`FileDevice`]).
    Pread,
}

impl Backend {
    /// The backend from `STRIPESTORE_IO` (`pread` forces the fallback; anything else: auto).
    #[must_use]
    pub fn from_env() -> Self {
        match std::env::var("STRIPESTORE_IO").as_deref() {
            Ok("pread") => Backend::Pread,
            _ => Backend::Auto,
        }
    }
}

/// Open (creating a regular file of `size` bytes if needed, see
/// [`FileDevice::open_or_create`]) a file or block device with the best backend `backend`
/// allows: io_uring if `probe_uring` says the kernel offers it, else `pread`/`pwrite`.
///
/// A URI (`nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`) opens an
/// [`NbdDevice`] instead: nothing is created, and an export smaller than `size` is refused.
///
/// # Errors
/// [`crate::Error::Open`] if the path cannot be opened at all (for a URI: malformed or
/// unsupported, unreachable, read-only, or smaller than `size`).
pub fn open_device_with(
    path: &Path,
    size: Option<u64>,
    backend: Backend,
    probe_uring: impl FnOnce() -> std::io::Result<()>,
) -> Result<SharedDevice> {
    if let Some(uri) = uri_of(path) {
        // An NBD export: no file to create (the server sets the size; `size` is checked
        // against it) and no local backend to choose.
        return open_uri(uri, Access::ReadWrite, size);
    }
    let file = FileDevice::open_or_create(path, size)?;
    with_backend(file, path, backend, probe_uring)
}

fn with_backend(
    file: FileDevice,
    path: &Path,
    backend: Backend,
    probe_uring: impl FnOnce() -> std::io::Result<()>,
) -> Result<SharedDevice> {
    if backend == Backend::Pread {
        return Ok(Arc::new(file));
    }
    if let Err(err) = probe_uring() {
        tracing::info!(device = %path.display(), %err, "io_uring unavailable; using pread/pwrite");
        return Ok(Arc::new(file));
    }
    Ok(Arc::new(UringDevice::new(file, path)))
}

/// [`open_device_with`] with the real probe and `STRIPESTORE_IO`.
///
/// # Errors
/// As for [`open_device_with`].
pub fn open_device(path: &Path, size: Option<u64>) -> Result<SharedDevice> {
    open_device_with(path, size, Backend::from_env(), probe_read_write)
}

/// Open an existing file or block device for `access` (see [`FileDevice::open_with`]) with
/// the best backend; a read-only device refuses writes in the kernel (`O_RDONLY`). A URI
/// opens an [`NbdDevice`] for `access` (a read-only one refuses writes itself).
///
/// # Errors
/// [`crate::Error::Open`] if the path cannot be opened so.
pub fn open_device_for(path: &Path, access: Access) -> Result<SharedDevice> {
    if let Some(uri) = uri_of(path) {
        return open_uri(uri, access, None);
    }
    let file = FileDevice::open_with(path, access)?;
    with_backend(file, path, Backend::from_env(), probe_read_write)
}

/// `path` as a URI (`nbd://…`, `nbd+unix://…`, or another scheme to refuse), if it is one.
fn uri_of(path: &Path) -> Option<&str> {
    path.to_str().filter(|text| super::is_uri(text))
}

/// Open the NBD export `uri` names, with the options of the environment (see
/// [`NbdOptions::from_env`]).
fn open_uri(uri: &str, access: Access, size: Option<u64>) -> Result<SharedDevice> {
    let device = NbdDevice::open(uri, access, size, &NbdOptions::from_env())?;
    Ok(Arc::new(device))
}

/// Make a small ring and ask the kernel whether it supports the Read and Write opcodes used
/// here: kernels 5.1–5.5 create rings but would fail every such request with EINVAL (and the
/// pool would fault healthy devices). Kernels without the probe call lack the opcodes too.
fn probe_read_write() -> std::io::Result<()> {
    let ring = IoUring::new(2)?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    if probe.is_supported(opcode::Read::CODE) && probe.is_supported(opcode::Write::CODE) {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "the kernel's io_uring lacks the Read/Write opcodes",
        ))
    }
}

/// A file or block device driven through io_uring (see the module docs).
#[derive(Debug)]
pub struct UringDevice {
    buffered: FileDevice,
    direct: Option<File>,
}

impl UringDevice {
    fn new(buffered: FileDevice, path: &Path) -> Self {
        let direct = OpenOptions::new()
            .read(true)
            .write(!buffered.is_read_only())
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()
            .filter(|file| {
                // Some filesystems accept the flag at open and refuse the I/O: probe it.
                buffered.size() < DIRECT_ALIGN as u64 || {
                    let mut probe = AlignedBuf::zeroed(DIRECT_ALIGN);
                    file.read_exact_at(&mut probe, 0).is_ok()
                }
            });
        Self { buffered, direct }
    }

    /// Whether `O_DIRECT` is in use.
    #[must_use]
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The descriptor for a request at `offset` of `len` bytes, and whether it is the direct one.
    fn descriptor(&self, offset: u64, len: usize) -> Option<(i32, bool)> {
        let aligned =
            offset.is_multiple_of(DIRECT_ALIGN as u64) && len.is_multiple_of(DIRECT_ALIGN);
        match &self.direct {
            Some(file) if aligned => Some((file.as_raw_fd(), true)),
            Some(_) => None, // unaligned on a direct device: plain pread/pwrite, buffered
            None => Some((self.buffered.file().as_raw_fd(), false)),
        }
    }
}

impl Device for UringDevice {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), DeviceError> {
        let mut ops = [BatchOp::read(self, offset, buf)];
        run_batch(&mut ops);
        let [op] = ops;
        op.result
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> std::result::Result<(), DeviceError> {
        let mut ops = [BatchOp::write(self, offset, buf)];
        run_batch(&mut ops);
        let [op] = ops;
        op.result
    }
    fn flush(&self) -> std::result::Result<(), DeviceError> {
        self.buffered.flush()
    }
    fn size(&self) -> u64 {
        self.buffered.size()
    }
    fn name(&self) -> String {
        self.buffered.name()
    }
    fn io_backend(&self) -> &'static str {
        if self.is_direct() {
            "io_uring+O_DIRECT"
        } else {
            "io_uring"
        }
    }
    fn as_uring(&self) -> Option<&UringDevice> {
        Some(self)
    }
}

/// The size and alignment of a transparent huge page (x86-64, and arm64 with 4 KiB pages).
pub const HUGE_PAGE: usize = 2 << 20;

/// Buffers for device requests from this size go in huge pages ([`AlignedBuf::for_io`], the
/// NBD server's read replies): from here a request into 4 KiB pages takes 64 ring
/// descriptors or more on a disk without indirect descriptors (see [`huge_aligned_room`]),
/// while a huge page's memory (2 MiB once touched) is at most 8 times the buffer's.
pub const HUGE_IO_MIN: usize = 256 << 10;

/// Make room in `buffer` for `prefix` bytes followed by `len` bytes that start on a
/// [`HUGE_PAGE`] boundary, and ask the kernel to back those huge pages with transparent huge
/// pages (`MADV_HUGEPAGE`). Returns where the prefix starts in `buffer`, and whether the kernel
/// took the advice; `buffer`'s length and contents are left as they are (its capacity grows).
///
/// The advice changes no byte, but it is not free: where THP's `defrag` setting is `madvise`
/// (Debian's default) a first touch of an advised range may compact memory before it returns,
/// the advice stays on the address range after the buffer is freed (the allocator may reuse
/// it for anything), and pages touched before the advice stay 4 KiB pages. So it is meant for a
/// buffer kept and reused by one thread, advised when it is allocated.
///
/// Why: a request's memory reaches a device as one segment per physically contiguous run of
/// it, and a virtio disk without indirect descriptors (this project's test machines: feature
/// bits without `VIRTIO_RING_F_INDIRECT_DESC`, `max_segments` 254, which suggests a ring of
/// 256 descriptors) spends a ring descriptor per segment: a 256 KiB read into scattered 4 KiB
/// pages takes 66 of them (64 pages, a header and a status), so a fourth such request does not
/// fit and waits for the block layer's worker to dispatch it. Measured with fio on two member
/// files (1 MiB sequential reads, depth 8 each, 2026-12-07 18:31): 689 MiB/s from `malloc`ed
/// buffers, 3,502 MiB/s from huge pages (a hugetlbfs mount).
///
/// # Panics
/// As [`Vec::reserve_exact`], if the room (`prefix + len` and up to two huge pages) exceeds
/// `isize::MAX` bytes.
pub fn huge_aligned_room(buffer: &mut Vec<u8>, prefix: usize, len: usize) -> (usize, bool) {
    let pages = whole_huge_pages(len);
    // Capacity for any placement: up to HUGE_PAGE - 1 bytes before the first boundary that
    // leaves room for the prefix, then the whole huge pages.
    let room = prefix.saturating_add(HUGE_PAGE).saturating_add(pages);
    buffer.reserve_exact(room.saturating_sub(buffer.len()));
    let skip = buffer.as_ptr().wrapping_add(prefix).align_offset(HUGE_PAGE);
    let data = prefix + skip;
    assert!(skip < HUGE_PAGE && data + pages <= buffer.capacity());
    // SAFETY: `data + pages <= capacity` (asserted above), so the pointer `add` makes stays
    // inside `buffer`'s allocation and `madvise` is given a range of it, page-aligned (a huge
    // page boundary) and a whole number of huge pages long; `buffer` is held by `&mut` and its
    // allocation does not change here. `MADV_HUGEPAGE` is advice about how to back the range:
    // it neither changes its bytes nor unmaps it, so no Rust value is affected.
    let advised = unsafe {
        libc::madvise(
            buffer.as_mut_ptr().add(data).cast::<libc::c_void>(),
            pages,
            libc::MADV_HUGEPAGE,
        )
    } == 0;
    (data - prefix, advised)
}

/// Bytes of the whole huge pages that hold `len` bytes from a boundary (at least one).
fn whole_huge_pages(len: usize) -> usize {
    len.div_ceil(HUGE_PAGE).max(1) * HUGE_PAGE
}

/// A byte buffer whose start is [`DIRECT_ALIGN`]-aligned, so `O_DIRECT` can use it in place.
/// Safe code only: it over-allocates and starts at the first aligned byte. A large one can come
/// from huge pages ([`AlignedBuf::huge`]).
pub struct AlignedBuf {
    backing: Backing,
    start: usize,
    len: usize,
    /// Where the usable bytes of the backing end (capacity is `end - start`).
    end: usize,
}

/// Where an [`AlignedBuf`]'s bytes live.
enum Backing {
    Heap(Vec<u8>),
    /// An anonymous mapping whose range from the buffer's start is advised to be transparent
    /// huge pages (memmap2: the mapping, its advice and its unmapping without `unsafe` here).
    Huge(memmap2::MmapMut),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Heap(v) => v,
            Backing::Huge(m) => m,
        }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Backing::Heap(v) => v,
            Backing::Huge(m) => m,
        }
    }
}

impl Clone for AlignedBuf {
    /// A copy on the heap (a huge-page buffer's copy is an ordinary one of the same bytes).
    fn clone(&self) -> Self {
        let mut copy = Self::zeroed(self.len);
        copy.copy_from_slice(self);
        copy
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

impl AlignedBuf {
    /// `len` bytes that `fill` appends to an empty vector whose next byte is aligned (cut or
    /// padded with zeros to `len`): no zeroing of what is written anyway.
    #[must_use]
    pub fn filled_by(len: usize, fill: impl FnOnce(&mut Vec<u8>)) -> Self {
        let mut backing: Vec<u8> = Vec::with_capacity(len + DIRECT_ALIGN);
        let start = backing.as_ptr().align_offset(DIRECT_ALIGN);
        backing.resize(start, 0);
        fill(&mut backing);
        backing.resize(start + len, 0);
        let this = Self {
            end: backing.len(),
            backing: Backing::Heap(backing),
            start,
            len,
        };
        if this.as_ptr().align_offset(DIRECT_ALIGN) == 0 {
            return this;
        }
        // `fill` appended more than asked, and the vector moved: copy into an aligned one.
        let mut aligned = Self::zeroed(len);
        aligned.copy_from_slice(&this);
        aligned
    }

    /// No bytes, and no allocation (what a buffer given away leaves behind).
    #[must_use]
    pub const fn empty() -> Self {
        Self {
            backing: Backing::Heap(Vec::new()),
            start: 0,
            len: 0,
            end: 0,
        }
    }

    /// Bytes this buffer can hold without a new allocation.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.end - self.start
    }

    /// Make this `len` bytes in the allocation it has, holding whatever they held; `false`
    /// (and unchanged) when `len` exceeds its [`AlignedBuf::capacity`].
    pub fn reuse(&mut self, len: usize) -> bool {
        if len > self.capacity() {
            return false;
        }
        self.len = len;
        true
    }

    /// `len` zero bytes.
    #[must_use]
    pub fn zeroed(len: usize) -> Self {
        let backing = vec![0u8; len + DIRECT_ALIGN];
        let start = backing.as_ptr().align_offset(DIRECT_ALIGN);
        Self {
            end: backing.len(),
            backing: Backing::Heap(backing),
            start,
            len,
        }
    }

    /// `len` zero bytes starting on a [`HUGE_PAGE`] boundary of an anonymous mapping whose
    /// whole huge pages from there (its [`capacity`](AlignedBuf::capacity)) are advised to be
    /// transparent huge pages, so that a device request into any part of it is one segment per
    /// 2 MiB rather than one per 4 KiB page (see [`huge_aligned_room`] for why that matters).
    /// For buffers a thread keeps and reuses: each takes at least one huge page of memory
    /// once touched, and the first touch may compact memory. Where the mapping or the advice
    /// fails (no THP), an ordinary [`AlignedBuf::zeroed`]; [`AlignedBuf::is_huge`] tells which.
    #[must_use]
    pub fn huge(len: usize) -> Self {
        let pages = whole_huge_pages(len);
        let Ok(map) = memmap2::MmapMut::map_anon(pages + HUGE_PAGE) else {
            return Self::zeroed(len);
        };
        let start = map.as_ptr().align_offset(HUGE_PAGE);
        // The mapping is page aligned, so the boundary is within the first huge page and the
        // advised range ends inside the mapping. Its bytes are zero until written (anonymous
        // memory), and nothing touched them before the advice.
        if start >= HUGE_PAGE
            || map
                .advise_range(memmap2::Advice::HugePage, start, pages)
                .is_err()
        {
            return Self::zeroed(len);
        }
        // Capacity is the advised range only, so a reuse never reaches the unadvised tail.
        Self {
            backing: Backing::Huge(map),
            start,
            len,
            end: start + pages,
        }
    }

    /// `len` zero bytes for device requests: in huge pages from [`HUGE_IO_MIN`]
    /// ([`AlignedBuf::huge`]), else ordinary ones ([`AlignedBuf::zeroed`]).
    #[must_use]
    pub fn for_io(len: usize) -> Self {
        if len >= HUGE_IO_MIN {
            Self::huge(len)
        } else {
            Self::zeroed(len)
        }
    }

    /// Of the `kept` buffers, take the smallest that holds `len` bytes (best fit, so a small
    /// request does not take the large buffer the next large one needs), made `len` bytes
    /// long with whatever it held.
    pub fn take_fitting(kept: &mut Vec<Self>, len: usize) -> Option<Self> {
        let (at, _) = kept
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())?;
        let mut buf = kept.swap_remove(at);
        buf.reuse(len);
        Some(buf)
    }

    /// Whether this buffer's bytes are in an advised huge-page mapping.
    #[must_use]
    pub fn is_huge(&self) -> bool {
        matches!(self.backing, Backing::Huge(_))
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.backing.bytes()[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let (start, len) = (self.start, self.len);
        &mut self.backing.bytes_mut()[start..start + len]
    }
}

/// The buffer of one batched request.
#[derive(Debug)]
pub enum IoBuf<'a> {
    /// Fill this buffer.
    Read(&'a mut [u8]),
    /// Write this buffer.
    Write(&'a [u8]),
    /// Write these buffers one after another from the op's offset (one request: `writev`).
    WriteV(&'a [&'a [u8]]),
}

/// One request of a batch; `result` holds its outcome after [`run_batch`].
#[derive(Debug)]
pub struct BatchOp<'a> {
    /// The device.
    pub device: &'a dyn Device,
    /// Byte offset on the device.
    pub offset: u64,
    /// What to read into or write from.
    pub buf: IoBuf<'a>,
    /// The outcome (`Ok` until run).
    pub result: std::result::Result<(), DeviceError>,
}

impl<'a> BatchOp<'a> {
    /// A read of `buf.len()` bytes at `offset`.
    pub fn read(device: &'a dyn Device, offset: u64, buf: &'a mut [u8]) -> Self {
        Self {
            device,
            offset,
            buf: IoBuf::Read(buf),
            result: Ok(()),
        }
    }
    /// A write of `buf` at `offset`.
    pub fn write(device: &'a dyn Device, offset: u64, buf: &'a [u8]) -> Self {
        Self {
            device,
            offset,
            buf: IoBuf::Write(buf),
            result: Ok(()),
        }
    }

    /// One write of `bufs`, one after another, at `offset` (the pieces of a run that lie in
    /// different places of memory).
    pub fn write_vectored(device: &'a dyn Device, offset: u64, bufs: &'a [&'a [u8]]) -> Self {
        Self {
            device,
            offset,
            buf: IoBuf::WriteV(bufs),
            result: Ok(()),
        }
    }

    /// Bytes it reads or writes.
    #[must_use]
    pub fn len(&self) -> usize {
        match &self.buf {
            IoBuf::Read(b) => b.len(),
            IoBuf::Write(b) => b.len(),
            IoBuf::WriteV(bufs) => bufs.iter().map(|b| b.len()).sum(),
        }
    }

    /// Whether it moves no byte.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Run this request synchronously through the `Device` trait (or the buffered descriptor).
    /// A vectored write is one request there too: its buffers joined.
    fn run_sync(&mut self) {
        let joined;
        let buf = match &mut self.buf {
            IoBuf::Read(buf) => {
                self.result = match self.device.as_uring() {
                    Some(uring) => uring.buffered.read_at(self.offset, buf),
                    None => self.device.read_at(self.offset, buf),
                };
                return;
            }
            IoBuf::Write(buf) => *buf,
            IoBuf::WriteV(bufs) => {
                joined = bufs.concat();
                &joined[..]
            }
        };
        self.result = match self.device.as_uring() {
            Some(uring) => uring.buffered.write_at(self.offset, buf),
            None => self.device.write_at(self.offset, buf),
        };
    }
}

thread_local! {
    /// This thread's ring (`None` until first use, or if it could not be made).
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

/// A request handed to the kernel: which op, and the bounce buffer if one is used.
struct InFlight {
    op: usize,
    bounce: Option<AlignedBuf>,
    /// A vectored write's buffers, as the kernel reads them: only kept alive here, until the
    /// request completes (their heap block does not move when the `InFlight` does).
    _iovecs: Vec<libc::iovec>,
    len: usize,
    submitted: std::time::Instant,
}

/// Run every request of `ops`: those on io_uring devices together through this thread's ring,
/// the others one after another through the `Device` trait meanwhile. Each op's `result` says
/// how it went; one failing does not stop the others.
pub fn run_batch(ops: &mut [BatchOp<'_>]) {
    run_batch_with(ops, None::<fn()>);
}

/// As [`run_batch`], running `meanwhile` on this thread while the first round of io_uring
/// requests is on the devices (submitted, not yet reaped): a writer stages its next rows
/// while the kernel writes the last ones. `meanwhile` runs exactly once; when no request is
/// on io_uring, before the others run. A batch run from inside `meanwhile` goes through the
/// `Device` trait (this thread's ring is busy).
pub fn run_batch_while<R>(ops: &mut [BatchOp<'_>], meanwhile: impl FnOnce() -> R) -> R {
    match run_batch_with(ops, Some(meanwhile)) {
        Some(outcome) => outcome,
        // `run_batch_with` runs the work it is given on every path.
        None => unreachable!("meanwhile did not run"),
    }
}

/// [`run_batch`] with `meanwhile` (if any) run once while the first round is on the devices;
/// its outcome. A panic in `meanwhile` is held until every request in flight completed (the
/// kernel may still use the buffers and this thread's ring), then raised again.
fn run_batch_with<R>(ops: &mut [BatchOp<'_>], meanwhile: Option<impl FnOnce() -> R>) -> Option<R> {
    let uring: Vec<usize> = (0..ops.len())
        .filter(|i| {
            let op = &ops[*i];
            op.device
                .as_uring()
                .is_some_and(|u| u.descriptor(op.offset, op.len()).is_some())
        })
        .collect();
    let mut meanwhile = meanwhile;
    let mut outcome = None;
    let mut panicked = None;
    let done = !uring.is_empty()
        && RING.with(|cell| {
            let Ok(mut slot) = cell.try_borrow_mut() else {
                return false;
            };
            if slot.is_none() {
                *slot = IoUring::new(RING_ENTRIES).ok();
            }
            let Some(ring) = slot.as_mut() else {
                return false;
            };
            for round in uring.chunks(RING_ENTRIES as usize) {
                let flights = push_round(ring, ops, round);
                if let Some(work) = meanwhile.take() {
                    // Start them now, so they run while `work` does; whatever this does not
                    // submit (an error: busy, interrupted), `reap_round` submits.
                    let _ = ring.submit();
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
                        Ok(done) => outcome = Some(done),
                        Err(panic) => panicked = Some(panic),
                    }
                }
                reap_round(ring, ops, flights);
                if panicked.is_some() {
                    break;
                }
            }
            true
        });
    if let Some(panic) = panicked {
        // Every request pushed has completed: nothing of this thread's is in flight.
        std::panic::resume_unwind(panic);
    }
    if let Some(work) = meanwhile.take() {
        outcome = Some(work());
    }
    // Requests io_uring could not take (no ring) and those on other devices, synchronously.
    for (index, op) in ops.iter_mut().enumerate() {
        if !done || uring.binary_search(&index).is_err() {
            op.run_sync();
        }
    }
    outcome
}

/// Flush `devices` (io_uring devices, at most the ring's size) together: one `fdatasync` request
/// each on this thread's ring, submitted at once, so that the kernel runs them side by side.
/// `None` when the ring is not usable here (none could be made, or a batch on this thread is
/// already using it): the caller then flushes them one by one.
pub(super) fn flush_together(
    devices: &[&UringDevice],
) -> Option<Vec<std::result::Result<(), DeviceError>>> {
    if devices.len() > RING_ENTRIES as usize {
        return None;
    }
    RING.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if slot.is_none() {
            *slot = IoUring::new(RING_ENTRIES).ok();
        }
        let ring = slot.as_mut()?;
        let mut pushed = 0usize;
        for (index, device) in devices.iter().enumerate() {
            let fd = device.buffered.file().as_raw_fd();
            let entry = opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(index as u64);
            // SAFETY: an fsync request names no memory, only a descriptor that `devices`
            // borrows (it stays open until this function returns, after every pushed request
            // has completed); the queue has room (at most RING_ENTRIES requests, and every
            // earlier batch of this thread was reaped completely).
            if unsafe { ring.submission().push(&entry) }.is_err() {
                break;
            }
            pushed += 1;
        }
        let results: Vec<Option<i32>> = wait_all(ring, pushed)
            .into_iter()
            .map(|r| r.map(|(code, _)| code))
            .collect();
        Some(
            devices
                .iter()
                .enumerate()
                .map(
                    |(index, device)| match results.get(index).copied().flatten() {
                        Some(code) if code >= 0 => Ok(()),
                        Some(code) if !matches!(-code, libc::EINTR | libc::EAGAIN) => {
                            Err(classify(std::io::Error::from_raw_os_error(-code)))
                        }
                        // Not pushed, or to be retried: the plain call.
                        _ => device.buffered.flush(),
                    },
                )
                .collect(),
        )
    })
}

/// Hand the requests `round` (at most the ring's size) to the kernel; what is in flight.
fn push_round(ring: &mut IoUring, ops: &mut [BatchOp<'_>], round: &[usize]) -> Vec<InFlight> {
    let mut flights: Vec<InFlight> = Vec::with_capacity(round.len());
    for &index in round {
        let op = &mut ops[index];
        let len = op.len();
        // The caller pushes only requests with a descriptor on io_uring; any other runs
        // through the plain call, so that its result is always its own.
        let Some(device) = op.device.as_uring() else {
            op.run_sync();
            continue;
        };
        let Some((fd, direct)) = device.descriptor(op.offset, len) else {
            op.run_sync();
            continue;
        };
        let Ok(len32) = u32::try_from(len) else {
            op.run_sync();
            continue;
        };
        // O_DIRECT needs an aligned address: bounce through an aligned copy otherwise (a
        // vectored write: every buffer's address and length aligned, else joined in one).
        let aligned = |b: &[u8]| !direct || b.as_ptr().align_offset(DIRECT_ALIGN) == 0;
        let mut bounce = None;
        let mut iovecs = Vec::new();
        let pointer: *mut u8 = match &mut op.buf {
            IoBuf::Read(buf) if aligned(buf) => buf.as_mut_ptr(),
            IoBuf::Write(buf) if aligned(buf) => buf.as_ptr().cast_mut(),
            IoBuf::WriteV(bufs)
                if bufs.len() <= IOV_MAX
                    && bufs.iter().all(|b| {
                        aligned(b) && (!direct || b.len().is_multiple_of(DIRECT_ALIGN))
                    }) =>
            {
                iovecs = bufs
                    .iter()
                    .map(|b| libc::iovec {
                        iov_base: b.as_ptr().cast_mut().cast(),
                        iov_len: b.len(),
                    })
                    .collect();
                std::ptr::null_mut()
            }
            IoBuf::Read(_) => bounce.insert(AlignedBuf::zeroed(len)).as_mut_ptr(),
            IoBuf::Write(buf) => {
                let copy = bounce.insert(AlignedBuf::zeroed(len));
                copy.copy_from_slice(buf);
                copy.as_mut_ptr()
            }
            IoBuf::WriteV(bufs) => {
                let copy = bounce.insert(AlignedBuf::zeroed(len));
                let mut at = 0;
                for b in bufs.iter() {
                    copy[at..at + b.len()].copy_from_slice(b);
                    at += b.len();
                }
                copy.as_mut_ptr()
            }
        };
        let user_data = flights.len() as u64;
        let entry = match op.buf {
            IoBuf::Read(_) => opcode::Read::new(types::Fd(fd), pointer, len32)
                .offset(op.offset)
                .build(),
            IoBuf::WriteV(_) if bounce.is_none() => match u32::try_from(iovecs.len()) {
                Ok(count) => opcode::Writev::new(types::Fd(fd), iovecs.as_ptr(), count)
                    .offset(op.offset)
                    .build(),
                Err(_) => {
                    op.run_sync();
                    continue;
                }
            },
            IoBuf::Write(_) | IoBuf::WriteV(_) => opcode::Write::new(types::Fd(fd), pointer, len32)
                .offset(op.offset)
                .build(),
        }
        .user_data(user_data);
        // SAFETY: `pointer` (or the buffers `iovecs` names) is valid for `len` bytes (a live
        // borrow in `ops`, or a bounce buffer kept in `flights`), for reads exclusively
        // borrowed; the iovec array itself is kept in `flights` too, its heap block never
        // moved. All outlive the request: the only caller, `run_batch_while`, keeps `ops`
        // borrowed and hands `flights` to `reap_round`, which does not return before every
        // pushed entry has completed; neither is touched in between (`meanwhile` cannot reach
        // `ops`, which the caller borrows). The descriptor belongs to a device that `ops`
        // borrows, so it stays open. The queue has room: a round is at most
        // RING_ENTRIES long and every earlier round was reaped completely.
        let pushed = unsafe { ring.submission().push(&entry) };
        if pushed.is_err() {
            op.run_sync();
            continue;
        }
        flights.push(InFlight {
            op: index,
            bounce,
            _iovecs: iovecs,
            len,
            submitted: std::time::Instant::now(),
        });
    }
    flights
}

/// Submit what is queued on `ring` and wait until the `count` requests with user data
/// `0..count` have completed: each one's result code and when it came.
fn wait_all(ring: &mut IoUring, count: usize) -> Vec<Option<(i32, std::time::Instant)>> {
    let mut pending = count;
    let mut results: Vec<Option<(i32, std::time::Instant)>> = vec![None; count];
    while pending > 0 {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) => {}
            Err(err) => {
                // The kernel may still own the buffers of requests in flight; returning now
                // would let the caller free or reuse memory the kernel writes to. This cannot
                // happen with a valid ring and descriptors, so stop the process.
                tracing::error!(%err, pending, "io_uring_enter failed with requests in flight");
                std::process::abort();
            }
        }
        for completion in ring.completion() {
            let Ok(slot) = usize::try_from(completion.user_data()) else {
                continue;
            };
            if let Some(result) = results.get_mut(slot) {
                if result.is_none() {
                    *result = Some((completion.result(), std::time::Instant::now()));
                    pending -= 1;
                }
            }
        }
    }
    results
}

/// Submit what `push_round` queued and wait for all of it; set each op's result.
fn reap_round(ring: &mut IoUring, ops: &mut [BatchOp<'_>], flights: Vec<InFlight>) {
    let results = wait_all(ring, flights.len());
    for (flight, result) in flights.into_iter().zip(results) {
        let (result, done) = result.unwrap_or((-libc::EIO, std::time::Instant::now()));
        let latency = done.saturating_duration_since(flight.submitted);
        let op = &mut ops[flight.op];
        finish(op, flight, result);
        op.device.batched(Batched {
            write: !matches!(op.buf, IoBuf::Read(_)),
            bytes: op.len() as u64,
            latency,
            ok: op.result.is_ok(),
        });
    }
}

/// Turn one completion into the op's result; copy a bounced read back; finish a short transfer
/// (or a retryable failure) synchronously through the buffered descriptor.
fn finish(op: &mut BatchOp<'_>, flight: InFlight, result: i32) {
    if result < 0 {
        if matches!(-result, libc::EINTR | libc::EAGAIN) {
            op.run_sync();
        } else {
            op.result = Err(classify(std::io::Error::from_raw_os_error(-result)));
        }
        return;
    }
    let done = usize::try_from(result).unwrap_or(0).min(flight.len);
    if let (IoBuf::Read(buf), Some(bounce)) = (&mut op.buf, &flight.bounce) {
        buf[..done].copy_from_slice(&bounce[..done]);
    }
    if done < flight.len {
        let offset = op.offset + done as u64;
        let Some(uring) = op.device.as_uring() else {
            return;
        };
        op.result = match &mut op.buf {
            IoBuf::Read(buf) => uring.buffered.read_at(offset, &mut buf[done..]),
            IoBuf::Write(buf) => uring.buffered.write_at(offset, &buf[done..]),
            IoBuf::WriteV(bufs) => uring.buffered.write_at(offset, &bufs.concat()[done..]),
        };
    } else {
        op.result = Ok(());
    }
}

fn classify(err: std::io::Error) -> DeviceError {
    super::file::classify(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_uring() -> std::io::Result<()> {
        Err(std::io::Error::other("io_uring disabled (test)"))
    }

    #[test]
    fn fallback_is_chosen_when_io_uring_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev");
        let dev = open_device_with(&path, Some(1 << 20), Backend::Auto, no_uring).unwrap();
        assert_eq!(dev.io_backend(), "pread");
        assert!(dev.as_uring().is_none());
        drop(dev); // the device lock is held while it is open
        let forced = open_device_with(&path, None, Backend::Pread, || Ok(())).unwrap();
        assert_eq!(forced.io_backend(), "pread");
    }

    /// Three member files are flushed together on the ring (each outcome in its place, `None`
    /// for an empty place, every flush counted by an observing decorator); with a memory
    /// device among them, or from inside a batch that holds the ring, one by one, and the
    /// memory device's writes survive its power cut.
    #[test]
    fn flushes_go_together_on_the_ring_or_one_by_one_and_each_outcome_is_in_its_place() {
        use crate::device::{flush_each, DeviceIo, MemDevice, Metered};
        let dir = tempfile::tempdir().unwrap();
        let io = Arc::new(DeviceIo::default());
        let mut devices: Vec<Option<SharedDevice>> = (0..3)
            .map(|i| {
                let device = open_device(&dir.path().join(format!("m{i}")), Some(1 << 20)).unwrap();
                device.write_at(0, &[i as u8 + 1; 4096]).unwrap();
                Some(Metered::wrap(device, &io))
            })
            .collect();
        devices.insert(1, None);
        let uring = devices.iter().flatten().all(|d| d.as_uring().is_some());
        let outcomes = flush_each(&devices);
        assert_eq!(outcomes.len(), 4);
        assert!(outcomes[1].is_none(), "an empty place has no outcome");
        for (place, outcome) in outcomes.iter().enumerate().filter(|(p, _)| *p != 1) {
            assert!(
                matches!(outcome, Some(Ok(()))),
                "place {place}: {outcome:?}"
            );
        }
        assert_eq!(io.flushes.load(std::sync::atomic::Ordering::Relaxed), 3);
        // From inside a batch (this thread's ring is busy): one by one, same outcomes.
        if uring {
            let mut buf = AlignedBuf::zeroed(4096);
            let probe = devices[0].clone().unwrap();
            let mut ops = [BatchOp::read(probe.as_ref(), 0, &mut buf)];
            let inner = run_batch_while(&mut ops, || flush_each(&devices));
            assert!(inner.iter().flatten().all(Result::is_ok));
            assert_eq!(io.flushes.load(std::sync::atomic::Ordering::Relaxed), 6);
            let [op] = ops;
            op.result.unwrap();
            assert_eq!(buf[0], 1);
        }
        // A memory device among them: one by one, and its flush is real.
        let memory = Arc::new(MemDevice::new("mem", 1 << 20));
        memory.write_at(0, &[9; 65536]).unwrap();
        devices[1] = Some(memory.clone());
        let outcomes = flush_each(&devices);
        assert!(outcomes.iter().all(|o| matches!(o, Some(Ok(())))));
        memory.crash(7);
        let mut back = vec![0u8; 65536];
        memory.read_at(0, &mut back).unwrap();
        assert_eq!(
            back,
            vec![9u8; 65536],
            "the memory device's flush was skipped"
        );
    }

    /// `filled_by` gives exactly `len` bytes at an aligned address: what `fill` appended,
    /// padded with zeros or cut, whether or not `fill` outgrew the room it was given.
    #[test]
    fn a_buffer_filled_by_appending_is_aligned_and_exact() {
        for (len, appended) in [(8192, 8192), (8192, 100), (4096, 20000), (0, 0)] {
            let buf = AlignedBuf::filled_by(len, |v| v.extend((0..appended).map(|i| i as u8)));
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_ptr().align_offset(DIRECT_ALIGN), 0);
            for (i, byte) in buf.iter().enumerate() {
                let expected = if i < appended { i as u8 } else { 0 };
                assert_eq!(*byte, expected, "byte {i} of {len} ({appended} appended)");
            }
        }
    }

    /// A 1 MiB file in `dir` opened with io_uring where the kernel has it.
    fn uring_file(dir: &std::path::Path) -> SharedDevice {
        open_device_with(&dir.join("dev"), Some(1 << 20), Backend::Auto, || Ok(())).unwrap()
    }

    #[test]
    fn a_vectored_write_lands_its_buffers_one_after_another_and_meanwhile_runs_once() {
        let dir = tempfile::tempdir().unwrap();
        let dev = uring_file(dir.path());
        let mem = crate::device::MemDevice::new("mem", 1 << 20);
        let mut first = AlignedBuf::zeroed(8192);
        first.fill(1);
        let mut second = AlignedBuf::zeroed(4096);
        second.fill(2);
        // Aligned pieces (one writev), and pieces in unaligned memory (joined, bounced).
        let unaligned: Vec<u8> = (0..4096 + 1).map(|i| (i % 253) as u8).collect();
        let aligned_parts: [&[u8]; 2] = [&first, &second];
        let unaligned_parts: [&[u8]; 2] = [&second, &unaligned[1..]];
        let devices: [&dyn Device; 2] = [dev.as_ref(), &mem];
        for device in devices {
            let mut ops = [
                BatchOp::write_vectored(device, 0, &aligned_parts),
                BatchOp::write_vectored(device, 65536, &unaligned_parts),
            ];
            let mut ran = 0;
            run_batch_while(&mut ops, || ran += 1);
            assert_eq!(ran, 1, "{}", device.name());
            assert!(ops.iter().all(|op| op.result.is_ok()), "{}", device.name());
            let mut back = vec![0u8; 12288];
            device.read_at(0, &mut back).unwrap();
            assert_eq!(
                back,
                [&first[..], &second[..]].concat(),
                "{}",
                device.name()
            );
            let mut back = vec![0u8; 8192];
            device.read_at(65536, &mut back).unwrap();
            assert_eq!(
                back,
                [&second[..], &unaligned[1..]].concat(),
                "{}",
                device.name()
            );
        }
    }

    /// `huge_aligned_room` puts the data on a huge page boundary after the prefix, within the
    /// buffer's capacity (whole huge pages), and keeps the buffer's length and bytes; a
    /// direct read into that place returns what was written.
    #[test]
    fn huge_aligned_room_places_data_on_a_huge_page_inside_the_buffer() {
        for (prefix, len) in [
            (16, 1 << 20),
            (32, 128 << 10),
            (0, HUGE_PAGE),
            (16, 3 << 20),
        ] {
            let mut buffer: Vec<u8> = b"kept".to_vec();
            let (lead, advised) = huge_aligned_room(&mut buffer, prefix, len);
            // Taken wherever the kernel has transparent huge pages (this one's setting may
            // be `never`: the advice is still accepted).
            if std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
                assert!(advised, "madvise refused the range");
            }
            assert_eq!(buffer, b"kept", "length and bytes unchanged");
            let data = lead + prefix;
            assert_eq!(buffer.as_ptr().wrapping_add(data) as usize % HUGE_PAGE, 0);
            assert!(data + len.div_ceil(HUGE_PAGE) * HUGE_PAGE <= buffer.capacity());
            // Kept: a second call on the same buffer finds the same place without growing it.
            let capacity = buffer.capacity();
            assert_eq!(huge_aligned_room(&mut buffer, prefix, len).0, lead);
            assert_eq!(buffer.capacity(), capacity);
        }
        let dir = tempfile::tempdir().unwrap();
        let dev = uring_file(dir.path());
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 13 % 251) as u8).collect();
        dev.write_at(0, &data).unwrap();
        let mut buffer = Vec::new();
        let (lead, _) = huge_aligned_room(&mut buffer, 16, 1 << 20);
        buffer.resize(lead + 16 + (1 << 20), 0);
        dev.read_at(0, &mut buffer[lead + 16..]).unwrap();
        assert!(buffer[lead + 16..] == data[..]);
    }

    #[test]
    fn huge_buffers_start_on_a_huge_page_hold_zeros_and_take_direct_reads() {
        let thp = std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists();
        for len in [HUGE_IO_MIN, 1 << 20, HUGE_PAGE, 3 << 20] {
            let mut buf = AlignedBuf::for_io(len);
            assert_eq!(buf.len(), len);
            assert!(buf.iter().all(|b| *b == 0), "{len}: zeros");
            if thp {
                assert!(
                    buf.is_huge(),
                    "{len}: the mapping or its advice was refused"
                );
            }
            if buf.is_huge() {
                assert_eq!(buf.as_ptr() as usize % HUGE_PAGE, 0, "{len}: on a boundary");
                // Capacity is the advised whole huge pages, and a reuse stays inside them.
                assert_eq!(buf.capacity(), len.div_ceil(HUGE_PAGE) * HUGE_PAGE);
                assert!(buf.reuse(buf.capacity()));
                assert!(!buf.reuse(buf.capacity() + 1));
                buf.reuse(len);
            }
            // A copy is an ordinary buffer of the same bytes.
            buf[len - 1] = 7;
            let copy = buf.clone();
            assert!(!copy.is_huge() && copy[..] == buf[..]);
        }
        // Below the threshold: ordinary pages.
        assert!(!AlignedBuf::for_io(HUGE_IO_MIN - 4096).is_huge());
        let dir = tempfile::tempdir().unwrap();
        let dev = uring_file(dir.path());
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 % 253) as u8).collect();
        dev.write_at(0, &data).unwrap();
        let mut buf = AlignedBuf::for_io(1 << 20);
        let mut ops = [BatchOp::read(dev.as_ref(), 0, &mut buf)];
        run_batch(&mut ops);
        assert!(ops[0].result.is_ok());
        drop(ops);
        assert!(buf[..] == data[..], "read into the huge buffer byte-exact");
    }

    #[test]
    fn a_panic_while_requests_are_in_flight_is_raised_after_they_complete() {
        let dir = tempfile::tempdir().unwrap();
        let dev = uring_file(dir.path());
        let mut block = AlignedBuf::zeroed(4096);
        block.fill(9);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut ops = [BatchOp::write(dev.as_ref(), 8192, &block)];
            run_batch_while(&mut ops, || panic!("planted"));
        }));
        assert!(caught.is_err(), "the panic reaches the caller");
        // The write completed before the panic went on, and the ring serves the next batch.
        let mut back = AlignedBuf::zeroed(4096);
        let mut ops = [BatchOp::read(dev.as_ref(), 8192, &mut back)];
        run_batch(&mut ops);
        assert!(ops[0].result.is_ok());
        drop(ops);
        assert!(back.iter().all(|b| *b == 9));
    }

    #[test]
    fn uring_device_roundtrips_aligned_unaligned_and_batched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev");
        let dev = open_device_with(&path, Some(1 << 20), Backend::Auto, || Ok(())).unwrap();
        let Some(uring) = dev.as_uring() else {
            panic!("expected an io_uring device")
        };
        eprintln!("backend: {}", dev.io_backend());
        // Aligned offset and length, unaligned memory (bounce path when direct).
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
        dev.write_at(4096, &data).unwrap();
        let mut back = vec![0u8; 8192];
        dev.read_at(4096, &mut back).unwrap();
        assert_eq!(back, data);
        // Aligned memory: used in place.
        let mut aligned = AlignedBuf::zeroed(4096);
        aligned.fill(0x5A);
        dev.write_at(65536, &aligned).unwrap();
        let mut read_back = AlignedBuf::zeroed(4096);
        dev.read_at(65536, &mut read_back).unwrap();
        assert!(read_back.iter().all(|b| *b == 0x5A));
        // Unaligned offset: the buffered path, coherent with the direct one.
        dev.write_at(4100, b"hello").unwrap();
        let mut page = vec![0u8; 4096];
        dev.read_at(4096, &mut page).unwrap();
        assert_eq!(&page[4..9], b"hello");
        assert_eq!(page[0..4], data[0..4]);
        // A batch across two devices and a memory device, more ops than the ring holds.
        let other = open_device_with(
            &dir.path().join("dev2"),
            Some(1 << 20),
            Backend::Auto,
            || Ok(()),
        )
        .unwrap();
        let mem = crate::device::MemDevice::new("mem", 1 << 20);
        let devices: [&dyn Device; 3] = [uring, other.as_ref(), &mem];
        let blocks: Vec<Vec<u8>> = (0..150u8).map(|i| vec![i; 4096]).collect();
        let mut ops: Vec<BatchOp<'_>> = blocks
            .iter()
            .enumerate()
            .map(|(i, b)| BatchOp::write(devices[i % 3], (i / 3) as u64 * 4096, b))
            .collect();
        run_batch(&mut ops);
        assert!(ops.iter().all(|op| op.result.is_ok()));
        let mut outs: Vec<Vec<u8>> = vec![vec![0u8; 4096]; 150];
        let mut ops: Vec<BatchOp<'_>> = outs
            .iter_mut()
            .enumerate()
            .map(|(i, b)| BatchOp::read(devices[i % 3], (i / 3) as u64 * 4096, b))
            .collect();
        run_batch(&mut ops);
        assert!(ops.iter().all(|op| op.result.is_ok()));
        drop(ops);
        assert_eq!(outs, blocks);
        // Past the end: an error, not a panic, and the other requests still succeed.
        let mut past = vec![0u8; 4096];
        let mut fine = vec![0u8; 4096];
        let mut ops = [
            BatchOp::read(uring, 1 << 20, &mut past),
            BatchOp::read(uring, 0, &mut fine),
        ];
        run_batch(&mut ops);
        assert!(ops[0].result.is_err());
        assert!(ops[1].result.is_ok());
        dev.flush().unwrap();
    }
}
