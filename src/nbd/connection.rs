//! One NBD client: fixed newstyle negotiation, then the transmission phase.
//!
//! Owns: one connection's protocol state, its serving threads and its in-flight bounds. Uses the
//! pool only through its public API (`read_at`, `read_many`, `write_at`, `flush`, ...); must
//! not touch pool internals or other connections (the listener is `server.rs`).
//!
//! Invariants:
//! * A write reaches the pool only after its whole payload has arrived, and only inside the
//!   range the request names (checked by [`proto::classify`] before anything is read). A client
//!   that disconnects mid-payload leaves nothing written.
//! * A write is acknowledged only after it landed: `Pool::write_at` returned, or the pool told
//!   a write queued with `Pool::write_queued` its outcome; with `FUA` (always written with
//!   `write_at`) only after `Pool::flush` returned too. `FLUSH` commits every write acknowledged before it, on every
//!   connection (the pool is shared), which is why the export announces `CAN_MULTI_CONN`.
//! * A read that the pool cannot verify is answered with `EIO` and no data; never with bytes
//!   the pool did not return.
//! * `TRIM`, and `WRITE_ZEROES` without `NO_HOLE`, discard ([`Pool::discard`](crate::Pool::discard)):
//!   the range reads as zeros afterwards, whole stripes give their space back. `BLOCK_STATUS`
//!   answers from [`Pool::allocation`](crate::Pool::allocation) in the `base:allocation`
//!   context, only after the client negotiated structured replies and selected that context.
//! * With structured replies negotiated, reads and every error are answered with structured
//!   chunks (a read must never get a simple reply then); other successes with simple replies,
//!   which the protocol allows.
//! * Requests in flight are bounded in number and in bytes; the reader waits for room before
//!   it reads the next payload, so a client cannot make the server buffer without limit.
//! * Errors on the socket end the connection; they never panic and never touch the pool.
//! * Replies go out whole (never interleaved), in any order: the protocol matches them to
//!   requests by cookie.
//!
//! Threads (leader/follower, as nbdkit's parallel model): the thread holding the stream reads
//! one request, hands the stream on and executes the request itself, so a request costs no
//! hand-off between threads; see [`serve_requests`]. Small reads the connection has received
//! already go with the read a thread takes (up to 16, on a format-version-4 pool): one pool
//! call reads all their blocks in one batch, one thread and one submission for all
//! ([`buffered_read`], [`execute_reads`]). Replies finished together are combined into one
//! write ([`Replies`]). A write the pool queues (a small write on a format-version-4
//! pool) is not executed by a thread of the connection: the reading thread queues it and reads
//! on, keeping the stream; the pool's write leader carries it in a group; the connection's
//! answering thread replies to every write told together in one message
//! ([`answer_queued_writes`]); and when a queued write finds nobody leading, the office goes
//! to the connection's leading thread ([`lead_writes`]), so the reading thread never leads.
//! Measured (fio's `nbd` engine, 4 KiB random writes at depth 16, mirror:2 on two files): a
//! thread per write parked until its group landed gave 25–28k IOPS; queued writes 32–36k.

use super::proto::{self, errno, info, opt, rep, Action, ExportInfo, Session};
use crate::error::Error;
use crate::pool::Pool;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The largest request payload (and read reply) the server accepts: 32 MiB, as most servers.
pub const MAX_REQUEST_BYTES: u32 = 32 << 20;
/// Threads serving one connection at most (requests beyond wait in the socket).
const MAX_WORKERS: usize = 16;
/// A serving thread keeps a buffer up to this size for the next request; larger ones (a big
/// read or write) are given back. Room for a read of up to one huge page placed on a huge
/// page boundary after its reply's header ([`aligned_reply_room`]): a thread serving 1 MiB
/// reads (fio's, QEMU's) keeps its buffer instead of allocating and zeroing one per read.
const KEEP_BUFFER_BYTES: usize = 2 * crate::device::HUGE_PAGE + 8192;
/// Reads of at least this size are read into huge pages ([`crate::device::huge_aligned_room`]):
/// each of their device requests is then one segment, not one per 4 KiB page. The cost: the
/// serving thread's kept buffer grows to up to 4 MiB (2 MiB of huge page resident, and the
/// bytes before the boundary, zeroed once, and again after a write or a smaller request
/// shortened the buffer).
const HUGE_READ_MIN: usize = crate::device::HUGE_IO_MIN;
/// Replies up to this size may wait in the outbox for the thread writing (see [`Replies`]).
const COMBINE_MAX_BYTES: usize = 64 << 10;
/// The outbox takes no more once it holds this much; senders then wait for the socket.
const OUTBOX_MAX_BYTES: usize = 1 << 20;
/// A bound on negotiation round trips before the client must pick an export.
const MAX_OPTIONS: usize = 4096;
/// `WRITE_ZEROES` writes at most this much per pool call.
const ZERO_PIECE_BYTES: u64 = 1 << 20;
/// Bytes of a connection's input read from the socket at once.
const INPUT_BUFFER_BYTES: usize = 64 << 10;
/// Reads taken together by one serving thread at most ([`buffered_read`]), and the largest
/// read that joins such a batch: small reads are where a request's own cost (a system call
/// to submit, a wake-up, a device notification) is most of the work; a large read already
/// keeps the devices busy on its own thread.
const READS_TOGETHER: usize = 16;
const READ_TOGETHER_BYTES: u32 = 64 << 10;
/// Descriptors in one `BLOCK_STATUS` reply at most (the protocol lets a server return fewer
/// than the whole range needs; the client asks again for the rest).
const MAX_STATUS_DESCRIPTORS: usize = 1024;

/// What one connection serves, and how much it may have in flight.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// Name, size, flags and block sizes as announced.
    pub export: ExportInfo,
    /// Requests executing at once on one connection.
    pub max_requests_in_flight: usize,
    /// Payload and reply bytes buffered at once on one connection.
    pub max_bytes_in_flight: u64,
    /// Serve this recovery point (docs/FORMAT.md V4.10a), read-only, instead of the live
    /// volume: reads come from it, block status says data everywhere (it is not walked).
    pub recovery_point: Option<String>,
    /// Also export every recovery point, read-only, under its own name, beside this export
    /// (a client names one; `NBD_OPT_LIST` lists them).
    pub recovery_point_exports: bool,
}

impl ExportConfig {
    /// The export of `pool` under `name`: flush, FUA, trim and write-zeroes supported, multi-conn
    /// (a flush covers every connection's completed writes), read-only if asked. Block sizes:
    /// any byte granularity is accepted (the pool does read-modify-write), the preferred size
    /// is the largest power of two dividing the stripe's data bytes (whole-stripe writes skip
    /// the read), at most [`MAX_REQUEST_BYTES`] per request.
    #[must_use]
    pub fn for_pool(pool: &Pool, name: &str, read_only: bool) -> Self {
        let mut flags = proto::flag::HAS_FLAGS
            | proto::flag::SEND_FLUSH
            | proto::flag::SEND_FUA
            | proto::flag::CAN_MULTI_CONN;
        if read_only {
            flags |= proto::flag::READ_ONLY;
        } else {
            flags |= proto::flag::SEND_WRITE_ZEROES | proto::flag::SEND_TRIM;
        }
        let stripe = pool.geometry().stripe_data_bytes();
        let preferred =
            (1u64 << stripe.trailing_zeros().min(31)).clamp(4096, u64::from(MAX_REQUEST_BYTES));
        Self {
            export: ExportInfo {
                name: name.to_string(),
                size_bytes: pool.size(),
                flags,
                block_min_bytes: 1,
                block_preferred_bytes: u32::try_from(preferred).unwrap_or(4096),
                block_max_bytes: MAX_REQUEST_BYTES,
            },
            max_requests_in_flight: 64,
            max_bytes_in_flight: 256 << 20,
            recovery_point: None,
            recovery_point_exports: false,
        }
    }

    /// The export of recovery point `point` of `pool` under `name`: read-only, its reads
    /// through the verified read path of the recovery point.
    #[must_use]
    pub fn for_recovery_point(pool: &Pool, name: &str, point: &str) -> Self {
        let mut config = Self::for_pool(pool, name, true);
        config.recovery_point = Some(point.to_string());
        config
    }

    /// Whether a client's export name picks this export (the empty name is the default
    /// export, as in other servers).
    fn matches(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.export.name.as_bytes()
    }

    /// The export a client's name picks: this one, or (with `recovery_point_exports`) the
    /// recovery point of that name, read-only; `None` for any other name.
    fn resolve(&self, pool: &Pool, name: &[u8]) -> Option<Self> {
        if self.matches(name) {
            return Some(self.clone());
        }
        let name = std::str::from_utf8(name).ok()?;
        if !self.recovery_point_exports || pool.read_recovery_point(name, 0, &mut []).is_err() {
            return None;
        }
        let mut point = Self::for_recovery_point(pool, name, name);
        point.max_requests_in_flight = self.max_requests_in_flight;
        point.max_bytes_in_flight = self.max_bytes_in_flight;
        Some(point)
    }

    /// The names a client may pick: this export's, then the recovery points' when exported.
    fn names(&self, pool: &Pool) -> Vec<String> {
        let mut names = vec![self.export.name.clone()];
        if self.recovery_point_exports {
            names.extend(pool.recovery_point_names());
        }
        names
    }
}

/// How a connection ended (for logs and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEnd {
    /// The client aborted the negotiation or sent `DISC`.
    Disconnected,
    /// The input ended (the client went away, or the server shut the read side to stop).
    Eof,
    /// The server was stopping during negotiation.
    ShuttingDown,
    /// The client broke the protocol; the connection was closed.
    ProtocolError(String),
}

/// Serve one client on `reader`/`writer` (the two halves of one socket, or anything else that
/// carries bytes: the fuzz target uses a byte slice and a sink) until it disconnects, breaks
/// the protocol or input ends. Returns after every accepted request has been answered.
///
/// `stop` set during negotiation refuses the client with `NBD_REP_ERR_SHUTDOWN`.
///
/// # Errors
/// Only an I/O error of the transport during negotiation; errors of the transmission phase
/// end the connection and are reported as [`ConnectionEnd`].
pub fn serve_stream<R: Read + Send, W: Write + Send>(
    reader: R,
    mut writer: W,
    pool: &Pool,
    config: &ExportConfig,
    stop: &AtomicBool,
) -> io::Result<ConnectionEnd> {
    // Buffered here, not by the caller: the serving threads look at what has arrived to
    // take several reads at once ([`buffered_read`]).
    let mut reader = io::BufReader::with_capacity(INPUT_BUFFER_BYTES, reader);
    match negotiate(&mut reader, &mut writer, pool, config, stop)? {
        Negotiated::Transmission(session, chosen) => {
            Ok(transmission(reader, writer, pool, &chosen, session))
        }
        Negotiated::End(end) => Ok(end),
    }
}

enum Negotiated {
    /// The session and the export the client chose.
    Transmission(Session, Box<ExportConfig>),
    End(ConnectionEnd),
}

/// Read exactly `buf.len()` bytes; `Ok(false)` if the input ended first (at any point).
fn read_exact_or_eof(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn negotiate<R: Read, W: Write>(
    reader: &mut R,
    writer: &mut W,
    pool: &Pool,
    config: &ExportConfig,
    stop: &AtomicBool,
) -> io::Result<Negotiated> {
    writer.write_all(&proto::encode_greeting(
        proto::HANDSHAKE_FIXED_NEWSTYLE | proto::HANDSHAKE_NO_ZEROES,
    ))?;
    writer.flush()?;
    let mut client_flags = [0u8; 4];
    if !read_exact_or_eof(reader, &mut client_flags)? {
        return Ok(Negotiated::End(ConnectionEnd::Eof));
    }
    let client_flags = u32::from_be_bytes(client_flags);
    if client_flags & !(proto::CLIENT_FIXED_NEWSTYLE | proto::CLIENT_NO_ZEROES) != 0 {
        return Ok(Negotiated::End(ConnectionEnd::ProtocolError(format!(
            "unknown client flags {client_flags:#x}"
        ))));
    }
    let no_zeroes = client_flags & proto::CLIENT_NO_ZEROES != 0;
    let mut session = Session::default();
    for _ in 0..MAX_OPTIONS {
        let mut header = [0u8; proto::OPTION_HEADER_BYTES];
        if !read_exact_or_eof(reader, &mut header)? {
            return Ok(Negotiated::End(ConnectionEnd::Eof));
        }
        let header = match proto::decode_option_header(&header) {
            Ok(header) => header,
            Err(err) => {
                return Ok(Negotiated::End(ConnectionEnd::ProtocolError(
                    err.to_string(),
                )))
            }
        };
        // The length was bounded by decode_option_header (64 KiB).
        let mut data = vec![0u8; usize::try_from(header.length).unwrap_or(0)];
        if !read_exact_or_eof(reader, &mut data)? {
            return Ok(Negotiated::End(ConnectionEnd::Eof));
        }
        let reply = |writer: &mut W, kind: u32, payload: &[u8]| -> io::Result<()> {
            writer.write_all(&proto::encode_option_reply(header.option, kind, payload))
        };
        if stop.load(Ordering::Relaxed) && header.option != opt::ABORT {
            reply(writer, rep::ERR_SHUTDOWN, &[])?;
            writer.flush()?;
            return Ok(Negotiated::End(ConnectionEnd::ShuttingDown));
        }
        match header.option {
            opt::EXPORT_NAME => {
                // No error path in this option: an unknown name closes the connection.
                let Some(chosen) = config.resolve(pool, &data) else {
                    return Ok(Negotiated::End(ConnectionEnd::ProtocolError(format!(
                        "unknown export {:?}",
                        String::from_utf8_lossy(&data)
                    ))));
                };
                writer.write_all(&proto::encode_export_name_reply(&chosen.export, no_zeroes))?;
                writer.flush()?;
                return Ok(Negotiated::Transmission(session, Box::new(chosen)));
            }
            opt::ABORT => {
                // The client may already have closed; the acknowledgement is best effort.
                let _ = reply(writer, rep::ACK, &[]).and_then(|()| writer.flush());
                return Ok(Negotiated::End(ConnectionEnd::Disconnected));
            }
            opt::LIST => {
                if data.is_empty() {
                    for name in config.names(pool) {
                        reply(writer, rep::SERVER, &proto::encode_list_entry(&name))?;
                    }
                    reply(writer, rep::ACK, &[])?;
                } else {
                    reply(writer, rep::ERR_INVALID, &[])?;
                }
            }
            opt::INFO | opt::GO => match proto::decode_info_request(&data) {
                Err(_) => reply(writer, rep::ERR_INVALID, &[])?,
                Ok(request) => {
                    let Some(chosen) = config.resolve(pool, &request.name) else {
                        reply(writer, rep::ERR_UNKNOWN, &[])?;
                        writer.flush()?;
                        continue;
                    };
                    let export = &chosen.export;
                    reply(writer, rep::INFO, &proto::encode_info_export(export))?;
                    // Block sizes are sent even unrequested: the minimum is 1, so a client
                    // that ignores them breaks no constraint.
                    reply(writer, rep::INFO, &proto::encode_info_block_size(export))?;
                    if request.requests.contains(&info::NAME) {
                        let name = proto::encode_info_text(info::NAME, &export.name);
                        reply(writer, rep::INFO, &name)?;
                    }
                    reply(writer, rep::ACK, &[])?;
                    if header.option == opt::GO {
                        writer.flush()?;
                        return Ok(Negotiated::Transmission(session, Box::new(chosen)));
                    }
                }
            },
            opt::STRUCTURED_REPLY => {
                if data.is_empty() {
                    session.structured_replies = true;
                    reply(writer, rep::ACK, &[])?;
                } else {
                    reply(writer, rep::ERR_INVALID, &[])?;
                }
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                meta_context(writer, header.option, &data, pool, config, &mut session)?;
            }
            // STARTTLS, extended headers and anything unknown: not supported, the client
            // falls back or gives up.
            _ => reply(writer, rep::ERR_UNSUP, &[])?,
        }
        writer.flush()?;
    }
    Ok(Negotiated::End(ConnectionEnd::ProtocolError(format!(
        "more than {MAX_OPTIONS} options without choosing an export"
    ))))
}

/// Answer `NBD_OPT_LIST_META_CONTEXT` or `NBD_OPT_SET_META_CONTEXT`. Only after structured
/// replies (else `ERR_INVALID`, as the protocol asks); malformed data `ERR_INVALID`; another
/// export's name `ERR_UNKNOWN`. The one context, `base:allocation`, is listed for an empty
/// query list or a query naming it or `base:`; `SET` replaces the selection (selecting nothing
/// is no error, but `BLOCK_STATUS` is then refused).
fn meta_context<W: Write>(
    writer: &mut W,
    option: u32,
    data: &[u8],
    pool: &Pool,
    config: &ExportConfig,
    session: &mut Session,
) -> io::Result<()> {
    let reply = |writer: &mut W, kind: u32, payload: &[u8]| -> io::Result<()> {
        writer.write_all(&proto::encode_option_reply(option, kind, payload))
    };
    if !session.structured_replies {
        return reply(writer, rep::ERR_INVALID, &[]);
    }
    let request = match proto::decode_meta_context_request(data) {
        Ok(request) => request,
        Err(_) => return reply(writer, rep::ERR_INVALID, &[]),
    };
    if config.resolve(pool, &request.name).is_none() {
        return reply(writer, rep::ERR_UNKNOWN, &[]);
    }
    let set = option == opt::SET_META_CONTEXT;
    let selected = if set {
        request
            .queries
            .iter()
            .any(|q| proto::query_selects_allocation(q))
    } else {
        request.queries.is_empty()
            || request
                .queries
                .iter()
                .any(|q| proto::query_selects_allocation(q))
    };
    if set {
        session.allocation_context = selected.then_some(proto::ALLOCATION_CONTEXT_ID);
    }
    if selected {
        // Ids in a list are reserved (zero); a selection names the id requests will carry.
        let id = if set { proto::ALLOCATION_CONTEXT_ID } else { 0 };
        let payload = proto::encode_meta_context_reply(id, proto::BASE_ALLOCATION);
        reply(writer, rep::META_CONTEXT, &payload)?;
    }
    reply(writer, rep::ACK, &[])
}

/// A mutex whose waiters sleep in the kernel at once (std's futex mutex). parking_lot's spins
/// with `sched_yield` before it sleeps: with up to 16 serving threads per connection on a
/// 2-core machine, that yielding took a quarter of the server's CPU time under 4 KiB reads
/// (perf). A panic while a guard is held cannot leave these structures half-changed in a way
/// that matters more than the panic itself, so poisoning is ignored.
struct Lock<T>(std::sync::Mutex<T>);

impl<T> Lock<T> {
    fn new(value: T) -> Self {
        Self(std::sync::Mutex::new(value))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Requests and bytes in flight, and how many threads wait for room.
#[derive(Default)]
struct Counts {
    requests: usize,
    bytes: u64,
    waiting: usize,
}

/// Counts requests and bytes in flight; the reader waits for room.
struct InFlight {
    state: Lock<Counts>,
    freed: std::sync::Condvar,
    max_requests: usize,
    max_bytes: u64,
}

struct Permit<'a> {
    in_flight: &'a InFlight,
    bytes: u64,
}

impl InFlight {
    fn new(config: &ExportConfig) -> Self {
        Self {
            state: Lock::new(Counts::default()),
            freed: std::sync::Condvar::new(),
            max_requests: config.max_requests_in_flight.max(1),
            max_bytes: config.max_bytes_in_flight.max(1),
        }
    }

    /// Wait until one more request of `bytes` fits (a request larger than the byte budget
    /// runs alone).
    fn acquire(&self, bytes: u64) -> Permit<'_> {
        let mut state = self.state.lock();
        while state.requests >= self.max_requests
            || (state.requests > 0 && state.bytes + bytes > self.max_bytes)
        {
            state.waiting += 1;
            state = self
                .freed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            state.waiting -= 1;
        }
        state.requests += 1;
        state.bytes += bytes;
        Permit {
            in_flight: self,
            bytes,
        }
    }
}

impl InFlight {
    /// One more request of `bytes` if it fits now, without waiting (a thread holding permits
    /// must not wait for room its own requests take).
    fn try_acquire(&self, bytes: u64) -> Option<Permit<'_>> {
        let mut state = self.state.lock();
        if state.requests >= self.max_requests
            || (state.requests > 0 && state.bytes + bytes > self.max_bytes)
        {
            return None;
        }
        state.requests += 1;
        state.bytes += bytes;
        Some(Permit {
            in_flight: self,
            bytes,
        })
    }
}

impl Permit<'_> {
    /// Keep the request counted after this permit is gone (its reply is sent by another
    /// thread, which gives it back with [`InFlight::release`]); its bytes.
    fn detach(self) -> u64 {
        let bytes = self.bytes;
        std::mem::forget(self);
        bytes
    }
}

impl InFlight {
    /// `requests` requests of `bytes` in all are answered.
    fn release(&self, requests: usize, bytes: u64) {
        let mut state = self.state.lock();
        state.requests -= requests;
        state.bytes -= bytes;
        // Waking costs a system call; only when someone waits.
        if state.waiting > 0 {
            self.freed.notify_all();
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.in_flight.release(1, self.bytes);
    }
}

/// Writes handed to the pool with nobody waiting ([`Pool::write_queued`]): the pool's write
/// leader tells each outcome here and the connection's answering thread
/// ([`answer_queued_writes`]) sends the replies, those told together in one message. A write
/// costs no thread of the connection while it is on the devices, and no wake-up of its own.
struct QueuedWrites {
    state: Lock<QueuedState>,
    told: std::sync::Condvar,
}

#[derive(Default)]
struct QueuedState {
    /// Writes handed over and not answered: tag → (cookie, payload bytes).
    open: std::collections::HashMap<u64, (u64, u64)>,
    next_tag: u64,
    /// Outcomes told and not answered yet.
    outcomes: Vec<(u64, crate::Result<()>)>,
    /// No more writes will be handed over: every serving thread has ended.
    closed: bool,
}

impl QueuedWrites {
    fn new() -> Self {
        Self {
            state: Lock::new(QueuedState::default()),
            told: std::sync::Condvar::new(),
        }
    }

    /// A write of `bytes` answering `cookie` is handed over: its tag.
    fn open(&self, cookie: u64, bytes: u64) -> u64 {
        let mut state = self.state.lock();
        let tag = state.next_tag;
        state.next_tag += 1;
        state.open.insert(tag, (cookie, bytes));
        tag
    }

    /// No more writes will be handed over.
    fn close(&self) {
        self.state.lock().closed = true;
        self.told.notify_all();
    }
}

impl crate::pool::WriteDone for QueuedWrites {
    fn done(&self, tag: u64, outcome: crate::Result<()>) {
        let mut state = self.state.lock();
        let wake = state.outcomes.is_empty();
        state.outcomes.push((tag, outcome));
        drop(state);
        if wake {
            self.told.notify_one();
        }
    }
}

/// The answering thread of a connection: send the replies of queued writes as their outcomes
/// are told, until every serving thread has ended and every write handed over is answered.
fn answer_queued_writes<R, W: Write>(shared: &Shared<'_, R, W>) {
    let writes = &shared.writes;
    let mut message = Vec::new();
    let mut answered: Vec<(u64, u64, crate::Result<()>)> = Vec::new();
    loop {
        {
            let mut state = writes.state.lock();
            while state.outcomes.is_empty() && !(state.closed && state.open.is_empty()) {
                state = writes
                    .told
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if state.outcomes.is_empty() {
                return;
            }
            let state = &mut *state;
            for (tag, outcome) in state.outcomes.drain(..) {
                if let Some((cookie, bytes)) = state.open.remove(&tag) {
                    answered.push((cookie, bytes, outcome));
                }
            }
        }
        message.clear();
        let (mut requests, mut bytes) = (0usize, 0u64);
        for (cookie, length, outcome) in answered.drain(..) {
            requests += 1;
            bytes += length;
            match outcome {
                Ok(()) => message.extend_from_slice(&proto::encode_reply(0, cookie)),
                Err(err) => {
                    tracing::warn!(%err, length, "NBD write failed; replying with an error");
                    message
                        .extend_from_slice(&shared.replies.error_message(errno_for(&err), cookie));
                }
            }
        }
        shared.replies.send(&message);
        shared.in_flight.release(requests, bytes);
    }
}

/// The reply side: one writer, replies whole, never interleaved.
///
/// Replies are combined: a thread that finds another one writing leaves a reply of at most
/// [`COMBINE_MAX_BYTES`] in the outbox and goes on with its next request; the writing thread
/// sends the outbox before it lets go of the socket, so replies finished together leave in one
/// system call. A larger reply waits for the socket and is written from its own buffer.
struct Replies<W> {
    writer: Lock<W>,
    outbox: Lock<Outbox>,
    broken: AtomicBool,
    /// Structured replies were negotiated: errors and reads go as chunks.
    structured: bool,
}

/// Replies waiting for the thread that holds the socket.
struct Outbox {
    /// Whole replies, back to back.
    pending: Vec<u8>,
    /// The last batch's buffer, kept for its capacity.
    spare: Vec<u8>,
    /// A thread holds the writer and will send `pending` before it lets go.
    writing: bool,
}

impl<W: Write> Replies<W> {
    fn new(writer: W, structured: bool) -> Self {
        Self {
            writer: Lock::new(writer),
            outbox: Lock::new(Outbox {
                pending: Vec::new(),
                spare: Vec::new(),
                writing: false,
            }),
            broken: AtomicBool::new(false),
            structured,
        }
    }

    /// A send failed: the client is gone.
    fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Send a reply header and, for a successful read, its data (already placed after the
    /// header in `message`). After a failed send the connection is dead: later replies are
    /// dropped.
    fn send(&self, message: &[u8]) {
        if self.is_broken() {
            return;
        }
        {
            let mut outbox = self.outbox.lock();
            if outbox.writing
                && message.len() <= COMBINE_MAX_BYTES
                && outbox.pending.len() < OUTBOX_MAX_BYTES
            {
                outbox.pending.extend_from_slice(message);
                return;
            }
        }
        let mut writer = self.writer.lock();
        self.outbox.lock().writing = true;
        let mut result = writer.write_all(message);
        let mut batch = Vec::new();
        loop {
            let mut guard = self.outbox.lock();
            let outbox = &mut *guard;
            // The last batch's buffer goes back for its capacity.
            batch.clear();
            if outbox.spare.capacity() < batch.capacity() {
                std::mem::swap(&mut outbox.spare, &mut batch);
            }
            if outbox.pending.is_empty() || result.is_err() {
                outbox.pending.clear();
                outbox.writing = false;
                break;
            }
            std::mem::swap(&mut outbox.pending, &mut batch);
            std::mem::swap(&mut outbox.pending, &mut outbox.spare);
            drop(guard);
            result = writer.write_all(&batch);
        }
        if let Err(err) = result.and_then(|()| writer.flush()) {
            tracing::debug!(%err, "NBD reply could not be sent; the client is gone");
            self.broken.store(true, Ordering::Relaxed);
        }
    }

    /// A success without data: a simple reply (allowed with structured replies too, for
    /// every command but `READ`).
    fn success(&self, cookie: u64) {
        self.send(&proto::encode_reply(0, cookie));
    }

    /// An error: a final error chunk with structured replies (what a `READ` must get then),
    /// else a simple reply.
    fn error(&self, error: u32, cookie: u64) {
        self.send(&self.error_message(error, cookie));
    }

    /// The message answering `cookie` with `error`.
    fn error_message(&self, error: u32, cookie: u64) -> Vec<u8> {
        if self.structured {
            proto::encode_error_chunk(cookie, error, errno_name(error))
        } else {
            proto::encode_reply(error, cookie).to_vec()
        }
    }

    /// Bytes before a read's data in its reply: the simple reply header, or a chunk header and
    /// the chunk's offset.
    fn read_prefix_bytes(&self) -> usize {
        if self.structured {
            proto::STRUCTURED_REPLY_BYTES + 8
        } else {
            proto::REPLY_BYTES
        }
    }

    /// Fill in the header of a successful read's reply whose data follows it in `message`.
    fn read_header(&self, message: &mut [u8], cookie: u64, offset: u64) {
        if self.structured {
            let length = u32::try_from(message.len() - proto::STRUCTURED_REPLY_BYTES).unwrap_or(0);
            let header = proto::encode_chunk_header(
                proto::reply_flag::DONE,
                proto::reply_type::OFFSET_DATA,
                cookie,
                length,
            );
            message[..proto::STRUCTURED_REPLY_BYTES].copy_from_slice(&header);
            message[proto::STRUCTURED_REPLY_BYTES..proto::STRUCTURED_REPLY_BYTES + 8]
                .copy_from_slice(&offset.to_be_bytes());
        } else {
            message[..proto::REPLY_BYTES].copy_from_slice(&proto::encode_reply(0, cookie));
        }
    }
}

/// The message sent with an error chunk.
fn errno_name(error: u32) -> &'static str {
    match error {
        errno::EPERM => "read-only export",
        errno::EIO => "input/output error",
        errno::EINVAL => "invalid request",
        errno::ENOSPC => "beyond the end of the export",
        errno::ENOTSUP => "not supported",
        errno::ESHUTDOWN => "server shutting down",
        _ => "error",
    }
}

/// The NBD error for a pool error: everything the pool cannot do is an I/O error to the
/// client, except a range error (the server checks ranges first, so that one is a bug guard)
/// and a write refused while a receive is unfinished (the volume is read-only until it is
/// finished or aborted: `EPERM`, as a read-only export's).
fn errno_for(err: &Error) -> u32 {
    match err {
        Error::OutOfRange { .. } => errno::EINVAL,
        Error::ReceiveUnfinished { .. } => errno::EPERM,
        _ => errno::EIO,
    }
}

fn transmission<R: Read + Send, W: Write + Send>(
    reader: io::BufReader<R>,
    writer: W,
    pool: &Pool,
    config: &ExportConfig,
    session: Session,
) -> ConnectionEnd {
    let shared = Shared {
        input: Lock::new(Input { reader, end: None }),
        replies: Replies::new(writer, session.structured_replies),
        in_flight: InFlight::new(config),
        pool,
        config,
        session,
        threads: AtomicUsize::new(1),
        busy: AtomicUsize::new(0),
        max_threads: config.max_requests_in_flight.clamp(1, MAX_WORKERS),
        writes: std::sync::Arc::new(QueuedWrites::new()),
        lead: Lock::new(LeadSlot::default()),
        lead_given: std::sync::Condvar::new(),
    };
    let sink: std::sync::Arc<dyn crate::pool::WriteDone> = shared.writes.clone();
    std::thread::scope(|scope| {
        let answering = std::thread::Builder::new()
            .name("nbd-answer".into())
            .spawn_scoped(scope, || answer_queued_writes(&shared));
        let leading = std::thread::Builder::new()
            .name("nbd-lead".into())
            .spawn_scoped(scope, || lead_writes(&shared));
        // Without these two threads the connection writes as it did before queued writes.
        let sink = (answering.is_ok() && leading.is_ok()).then_some(&sink);
        serve_requests(scope, &shared, sink);
    });
    let end = shared.input.lock().end.take();
    end.unwrap_or(ConnectionEnd::Eof)
}

/// What a connection's threads share in the transmission phase.
struct Shared<'a, R, W> {
    /// The request stream: whoever holds it reads the next request (and its payload).
    input: Lock<Input<R>>,
    replies: Replies<W>,
    in_flight: InFlight,
    pool: &'a Pool,
    config: &'a ExportConfig,
    session: Session,
    /// Threads serving this connection (the connection's own thread included).
    threads: AtomicUsize,
    /// Threads executing a request (not reading or waiting to read).
    busy: AtomicUsize,
    max_threads: usize,
    /// Writes handed to the pool, answered by the connection's answering thread.
    writes: std::sync::Arc<QueuedWrites>,
    /// The pool's write leader's office when a queued write got it (see [`lead_writes`]).
    lead: Lock<LeadSlot<'a>>,
    lead_given: std::sync::Condvar,
}

/// The office of write leader, handed by the thread reading the stream to the connection's
/// leading thread.
#[derive(Default)]
struct LeadSlot<'a> {
    duty: Option<crate::pool::LeadDuty<'a>>,
    /// No more duties will come: every serving thread has ended.
    closed: bool,
}

/// The leading thread of a connection: run each write leader's office a queued write got, so
/// that the thread reading the stream keeps it (a leader on the reading thread would hand
/// the stream to another thread for every leadership), until every serving thread has ended.
fn lead_writes<R, W>(shared: &Shared<'_, R, W>) {
    loop {
        let duty = {
            let mut slot = shared.lead.lock();
            loop {
                if let Some(duty) = slot.duty.take() {
                    break duty;
                }
                if slot.closed {
                    return;
                }
                slot = shared
                    .lead_given
                    .wait(slot)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        duty.run();
    }
}

/// A serving thread ending: the last one closes the queued writes (none will be handed over
/// any more), also when it ends by a panic.
struct Serving<'s, 'a, R, W>(&'s Shared<'a, R, W>);

impl<R, W> Drop for Serving<'_, '_, R, W> {
    fn drop(&mut self) {
        if self.0.threads.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.lead.lock().closed = true;
            self.0.lead_given.notify_all();
            self.0.writes.close();
        }
    }
}

/// The read side of a connection, and how it ended once it has.
struct Input<R> {
    reader: io::BufReader<R>,
    end: Option<ConnectionEnd>,
}

/// A request taken off the stream, ready to execute (a write's payload is in the thread's
/// buffer).
enum Work {
    Read {
        offset: u64,
        length: u32,
    },
    Write {
        offset: u64,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        length: u32,
        fua: bool,
        no_hole: bool,
    },
    Trim {
        offset: u64,
        length: u32,
        fua: bool,
    },
    BlockStatus {
        offset: u64,
        length: u32,
        context: u32,
        req_one: bool,
    },
    Flush,
}

impl Work {
    fn name(&self) -> &'static str {
        match self {
            Work::Read { .. } => "read",
            Work::Write { .. } => "write",
            Work::WriteZeroes { .. } => "write-zeroes",
            Work::Trim { .. } => "trim",
            Work::BlockStatus { .. } => "block-status",
            Work::Flush => "flush",
        }
    }
}

/// One serving thread (leader/follower): take the stream, read one request (and its payload
/// into this thread's buffer), hand the stream to the next thread, execute the request and
/// send its reply; again until the connection ends. Requests go from the socket to the pool on
/// the thread that read them (no queue, no hand-off), and a thread reuses its buffer for every
/// payload and reply. When every thread is busy after taking a request, one more is started
/// (up to `max_threads`), so one request at a time costs one thread and a deep queue gets
/// parallelism.
fn serve_requests<'scope, 'env, 'p: 'env, R: Read + Send, W: Write + Send>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    shared: &'env Shared<'p, R, W>,
    sink: Option<&'env std::sync::Arc<dyn crate::pool::WriteDone>>,
) {
    let _serving = Serving(shared);
    let mut buffer: Vec<u8> = Vec::new();
    let mut together: Vec<TakenRead<'env>> = Vec::new();
    loop {
        let (request, work, permit) = {
            let mut input = shared.input.lock();
            // The stream is kept while the requests read only need queueing: a write the
            // pool queues costs no hand-off between threads (the answering thread replies
            // once it has landed).
            loop {
                if input.end.is_some() {
                    return;
                }
                if shared.replies.is_broken() {
                    input.end = Some(ConnectionEnd::Eof);
                    return;
                }
                match take_request(&mut input.reader, shared, &mut buffer) {
                    Ok(Some((request, Work::Write { offset, fua: false }, permit))) => {
                        let queue = sink.filter(|_| shared.pool.queues_write(buffer.len()));
                        let Some(sink) = queue else {
                            break (request, Work::Write { offset, fua: false }, permit);
                        };
                        let bytes = permit.detach();
                        let tag = shared.writes.open(request.cookie, bytes);
                        // The payload goes to the pool's queue; a buffer much larger than it
                        // (kept for large reads: up to 4 MiB) stays with this thread, and the
                        // queue gets a copy of just the payload.
                        let data = if buffer.capacity() > 2 * buffer.len() + (64 << 10) {
                            buffer.clone()
                        } else {
                            std::mem::take(&mut buffer)
                        };
                        if let Some(duty) = shared.pool.write_queued(offset, data, sink, tag) {
                            let mut slot = shared.lead.lock();
                            slot.duty = Some(duty);
                            drop(slot);
                            shared.lead_given.notify_one();
                        }
                    }
                    Ok(Some(taken)) => {
                        // Reads that have arrived already go with this one.
                        if let Work::Read { length, .. } = taken.1 {
                            if length <= READ_TOGETHER_BYTES
                                && shared.config.recovery_point.is_none()
                                && shared.pool.reads_together()
                            {
                                while together.len() + 1 < READS_TOGETHER {
                                    match buffered_read(&mut input.reader, shared) {
                                        Some(read) => together.push(read),
                                        None => break,
                                    }
                                }
                            }
                        }
                        break taken;
                    }
                    Ok(None) => {}
                    Err(end) => {
                        input.end = Some(end);
                        return;
                    }
                }
            }
        };
        let busy = shared.busy.fetch_add(1, Ordering::AcqRel) + 1;
        let threads = shared.threads.load(Ordering::Acquire);
        if busy >= threads && threads < shared.max_threads {
            shared.threads.fetch_add(1, Ordering::AcqRel);
            let spawned = std::thread::Builder::new()
                .name("nbd-worker".into())
                .spawn_scoped(scope, move || serve_requests(scope, shared, sink));
            if let Err(err) = spawned {
                shared.threads.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!(%err, "NBD worker thread could not be started");
            }
        }
        match work {
            Work::Read { offset, length } if !together.is_empty() => {
                let first = (request.cookie, offset, length);
                let reads: Vec<(u64, u64, u32)> = std::iter::once(first)
                    .chain(together.iter().map(|t| (t.cookie, t.offset, t.length)))
                    .collect();
                execute_reads(shared, &reads, &mut buffer);
                // Their permits go with them.
                together.clear();
            }
            work => execute(shared, &request, work, &mut buffer),
        }
        drop(permit);
        shared.busy.fetch_sub(1, Ordering::AcqRel);
        // A thread that grew its buffer for one large request does not keep it.
        if buffer.capacity() > KEEP_BUFFER_BYTES {
            buffer = Vec::new();
        }
    }
}

/// Read the next request off the stream and classify it. `Ok(None)`: it was answered already
/// (refused); `Err`: how the connection ends.
fn take_request<'env, 'p, R: Read, W: Write>(
    reader: &mut io::BufReader<R>,
    shared: &'env Shared<'p, R, W>,
    buffer: &mut Vec<u8>,
) -> Result<Option<(proto::Request, Work, Permit<'env>)>, ConnectionEnd> {
    let request = next_request(reader)?;
    let in_flight = &shared.in_flight;
    let taken = match proto::classify(&request, &shared.config.export, &shared.session) {
        Action::Disconnect => return Err(ConnectionEnd::Disconnected),
        Action::Reject {
            error,
            payload_readable,
        } => {
            reject(reader, &shared.replies, &request, error, payload_readable)?;
            return Ok(None);
        }
        Action::Read { offset, length } => {
            let permit = in_flight.acquire(u64::from(length));
            (Work::Read { offset, length }, permit)
        }
        Action::Write {
            offset,
            length,
            fua,
        } => {
            let permit = in_flight.acquire(u64::from(length));
            read_payload(reader, length, buffer)?;
            (Work::Write { offset, fua }, permit)
        }
        Action::WriteZeroes {
            offset,
            length,
            fua,
            no_hole,
        } => {
            let permit = in_flight.acquire(ZERO_PIECE_BYTES.min(u64::from(length)));
            (
                Work::WriteZeroes {
                    offset,
                    length,
                    fua,
                    no_hole,
                },
                permit,
            )
        }
        Action::Trim {
            offset,
            length,
            fua,
        } => {
            let permit = in_flight.acquire(ZERO_PIECE_BYTES.min(u64::from(length)));
            (
                Work::Trim {
                    offset,
                    length,
                    fua,
                },
                permit,
            )
        }
        Action::BlockStatus {
            offset,
            length,
            context,
            req_one,
        } => (
            Work::BlockStatus {
                offset,
                length,
                context,
                req_one,
            },
            in_flight.acquire(0),
        ),
        Action::Flush => (Work::Flush, in_flight.acquire(0)),
    };
    Ok(Some((request, taken.0, taken.1)))
}

/// Make `buffer` exactly `len` bytes for a read's reply, zeroing only bytes it never held: the
/// rest keeps an earlier request's bytes, which the pool's read overwrites whole (every read
/// writes every byte it returns: `tests/read_fills.rs`) and a failed read never sends.
/// Zeroing a 1 MiB reply per read was a fifth of the server's CPU under 1 MiB sequential reads
/// (`perf record`, 2026-12-07).
fn reply_room(buffer: &mut Vec<u8>, len: usize) {
    if buffer.len() >= len {
        buffer.truncate(len);
    } else {
        buffer.resize(len, 0);
    }
}

/// [`reply_room`] for a read's reply of `prefix` header bytes and `len` data bytes, placed in
/// `buffer` so that the data starts at a 4 KiB aligned address (a huge page boundary, in huge
/// pages, from [`HUGE_READ_MIN`] on): the pool then reads `O_DIRECT` members straight into it
/// instead of into a buffer of its own and copying (a copy of every byte served;
/// `Volume::read`). Where the reply starts in `buffer`.
fn aligned_reply_room(buffer: &mut Vec<u8>, prefix: usize, len: usize) -> usize {
    const ALIGN: usize = crate::device::DIRECT_ALIGN;
    if len >= HUGE_READ_MIN {
        // Large reads into huge pages (see `huge_aligned_room`): measured over NBD, 1 MiB
        // sequential reads of a mirror:2 pool at depth 8, 656-912 -> 1,449-1,539 MiB/s, and no
        // request left to the block layer's worker (README, 2026-12-07 evening).
        let (lead, _) = crate::device::huge_aligned_room(buffer, prefix, len);
        reply_room(buffer, lead + prefix + len);
        return lead;
    }
    // Exactly: a buffer grown past what a thread keeps would be given back after the request.
    buffer.reserve_exact((ALIGN + prefix + len).saturating_sub(buffer.len()));
    // The buffer does not move from here on: `reply_room` stays within its capacity.
    let lead = buffer.as_ptr().wrapping_add(prefix).align_offset(ALIGN) % ALIGN;
    reply_room(buffer, lead + prefix + len);
    lead
}

/// Execute one accepted request and answer it: a read's header and data (built in `buffer`),
/// a block status chunk, a success, or an error as its `NBD_E*` with no data.
fn execute<R, W: Write>(
    shared: &Shared<'_, R, W>,
    request: &proto::Request,
    work: Work,
    buffer: &mut Vec<u8>,
) {
    let pool = shared.pool;
    let replies = &shared.replies;
    let cookie = request.cookie;
    let what = work.name();
    let fua_flush = |fua: bool| if fua { pool.flush() } else { Ok(()) };
    let result: crate::Result<()> = match work {
        Work::Read { offset, length } => {
            let length = usize::try_from(length).unwrap_or(0);
            let prefix = replies.read_prefix_bytes();
            let lead = aligned_reply_room(buffer, prefix, length);
            let data = &mut buffer[lead + prefix..];
            match &shared.config.recovery_point {
                Some(point) => pool.read_recovery_point(point, offset, data),
                None => pool.read_at(offset, data),
            }
            .map(|()| {
                let message = &mut buffer[lead..];
                replies.read_header(message, cookie, offset);
                replies.send(message);
            })
        }
        Work::Write { offset, fua } => pool
            .write_at(offset, buffer)
            .and_then(|()| fua_flush(fua))
            .map(|()| replies.success(cookie)),
        Work::WriteZeroes {
            offset,
            length,
            fua,
            no_hole,
        } => if no_hole {
            write_zeroes(pool, offset, u64::from(length))
        } else {
            pool.discard(offset, u64::from(length))
        }
        .and_then(|()| fua_flush(fua))
        .map(|()| replies.success(cookie)),
        Work::Trim {
            offset,
            length,
            fua,
        } => pool
            .discard(offset, u64::from(length))
            .and_then(|()| fua_flush(fua))
            .map(|()| replies.success(cookie)),
        Work::BlockStatus {
            offset,
            length,
            context,
            req_one,
        } => {
            let max = if req_one { 1 } else { MAX_STATUS_DESCRIPTORS };
            match &shared.config.recovery_point {
                // Data everywhere: never a hole where the recovery point has bytes.
                Some(_) => Ok(vec![crate::pool::Extent {
                    offset,
                    length: u64::from(length),
                    allocated: true,
                }]),
                None => pool.allocation_limited(offset, u64::from(length), max),
            }
            .map(|extents| {
                let descriptors: Vec<(u32, u32)> = extents
                    .iter()
                    .map(|extent| {
                        let status = if extent.allocated {
                            0
                        } else {
                            proto::state::HOLE | proto::state::ZERO
                        };
                        // Within a request of at most 4 GiB - 1 bytes.
                        (u32::try_from(extent.length).unwrap_or(u32::MAX), status)
                    })
                    .collect();
                replies.send(&proto::encode_block_status_chunk(
                    cookie,
                    context,
                    &descriptors,
                ));
            })
        }
        Work::Flush => pool.flush().map(|()| replies.success(cookie)),
    };
    if let Err(err) = result {
        let (offset, length) = (request.offset, request.length);
        tracing::warn!(%err, offset, length, "NBD {what} failed; replying with an error");
        replies.error(errno_for(&err), cookie);
    }
}

/// A read taken off the stream to go with another (see [`buffered_read`]).
struct TakenRead<'a> {
    cookie: u64,
    offset: u64,
    length: u32,
    /// Held until it is answered.
    _permit: Permit<'a>,
}

/// The next request if it is a read the connection has received whole already, accepted and
/// with room in flight now: taken off the stream to be executed with the read just taken.
/// `None` (nothing consumed) for anything else, which is then read as usual: a request not
/// all there yet, another command, a read to refuse or one too large to join a batch.
fn buffered_read<'env, R: Read, W>(
    reader: &mut io::BufReader<R>,
    shared: &'env Shared<'_, R, W>,
) -> Option<TakenRead<'env>> {
    let header = reader.buffer().get(..proto::REQUEST_BYTES)?;
    let request = proto::decode_request(header).ok()?;
    let Action::Read { offset, length } =
        proto::classify(&request, &shared.config.export, &shared.session)
    else {
        return None;
    };
    if length > READ_TOGETHER_BYTES {
        return None;
    }
    let permit = shared.in_flight.try_acquire(u64::from(length))?;
    io::BufRead::consume(reader, proto::REQUEST_BYTES);
    Some(TakenRead {
        cookie: request.cookie,
        offset,
        length,
        _permit: permit,
    })
}

/// Execute reads taken together, `(cookie, offset, length)` each, with one pool call
/// ([`Pool::read_many`]: their blocks go to the devices in one batch), and answer each: the
/// replies of those that succeeded leave in one message when all did; a read that failed
/// gets its error alone, as it would have by itself.
fn execute_reads<R, W: Write>(
    shared: &Shared<'_, R, W>,
    reads: &[(u64, u64, u32)],
    buffer: &mut Vec<u8>,
) {
    let replies = &shared.replies;
    let prefix = replies.read_prefix_bytes();
    let sizes: Vec<usize> = reads
        .iter()
        .map(|(_, _, length)| prefix + usize::try_from(*length).unwrap_or(0))
        .collect();
    reply_room(buffer, sizes.iter().sum());
    let outcomes = {
        let mut parts: Vec<(u64, &mut [u8])> = Vec::with_capacity(reads.len());
        let mut rest = &mut buffer[..];
        for ((_, offset, _), size) in reads.iter().zip(&sizes) {
            let (message, tail) = rest.split_at_mut(*size);
            parts.push((*offset, &mut message[prefix..]));
            rest = tail;
        }
        shared.pool.read_many(&mut parts)
    };
    let mut at = 0;
    for (((cookie, offset, _), size), outcome) in reads.iter().zip(&sizes).zip(&outcomes) {
        if outcome.is_ok() {
            replies.read_header(&mut buffer[at..at + size], *cookie, *offset);
        }
        at += size;
    }
    if outcomes.iter().all(Result::is_ok) {
        replies.send(buffer);
        return;
    }
    let mut at = 0;
    for (((cookie, offset, length), size), outcome) in reads.iter().zip(&sizes).zip(outcomes) {
        match outcome {
            Ok(()) => replies.send(&buffer[at..at + size]),
            Err(err) => {
                tracing::warn!(%err, offset, length, "NBD read failed; replying with an error");
                replies.error(errno_for(&err), *cookie);
            }
        }
        at += size;
    }
}

/// Read and decode the next request header; `Err`: how the connection ends.
fn next_request(reader: &mut impl Read) -> Result<proto::Request, ConnectionEnd> {
    let mut header = [0u8; proto::REQUEST_BYTES];
    match read_exact_or_eof(reader, &mut header) {
        Ok(true) => {}
        Ok(false) => return Err(ConnectionEnd::Eof),
        Err(err) => return Err(ConnectionEnd::ProtocolError(err.to_string())),
    }
    proto::decode_request(&header).map_err(|err| ConnectionEnd::ProtocolError(err.to_string()))
}

/// Answer a refused request with `error`, first reading past its payload (if it has one and it
/// is small enough to read; a larger one ends the connection, as its end cannot be found).
fn reject<R: Read, W: Write>(
    reader: &mut R,
    replies: &Replies<W>,
    request: &proto::Request,
    error: u32,
    payload_readable: bool,
) -> Result<(), ConnectionEnd> {
    if request.has_payload() {
        if !payload_readable {
            replies.error(error, request.cookie);
            return Err(ConnectionEnd::ProtocolError(format!(
                "write of {} bytes exceeds the maximum request size",
                request.length
            )));
        }
        let mut sink = io::sink();
        let copied = io::copy(&mut reader.take(u64::from(request.length)), &mut sink);
        if copied.ok() != Some(u64::from(request.length)) {
            return Err(ConnectionEnd::Eof);
        }
    }
    replies.error(error, request.cookie);
    Ok(())
}

/// Read a write's whole payload into `buffer`. A payload cut short is dropped whole: nothing
/// of it reaches the pool.
fn read_payload(
    reader: &mut impl Read,
    length: u32,
    buffer: &mut Vec<u8>,
) -> Result<(), ConnectionEnd> {
    buffer.clear();
    buffer.resize(usize::try_from(length).unwrap_or(0), 0);
    match read_exact_or_eof(reader, buffer) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ConnectionEnd::Eof),
        Err(err) => Err(ConnectionEnd::ProtocolError(err.to_string())),
    }
}

/// Write zeroes over `[offset, offset + length)` in pieces aligned to whole stripes where the
/// range allows (so the pool skips read-modify-write), never more than 1 MiB (rounded to
/// stripes) per call.
fn write_zeroes(pool: &Pool, offset: u64, length: u64) -> crate::Result<()> {
    let stripe = pool.geometry().stripe_data_bytes().max(1);
    let piece = (ZERO_PIECE_BYTES / stripe).max(1) * stripe;
    let zeroes = vec![0u8; usize::try_from(piece).unwrap_or(1 << 20)];
    let end = offset.saturating_add(length);
    let mut at = offset;
    while at < end {
        let next = ((at / piece + 1) * piece).min(end);
        let len = usize::try_from(next - at).unwrap_or(0);
        pool.write_at(at, &zeroes[..len])?;
        at = next;
    }
    Ok(())
}
