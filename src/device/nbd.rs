//! A device whose storage is an NBD export on another host (or behind a Unix socket), so a pool
//! member can be `nbd://HOST[:PORT]/EXPORT` or `nbd+unix:///EXPORT?socket=PATH` wherever a path
//! is accepted (the URI forms of the NBD project's `doc/uri.md`).
//!
//! What it owns: parsing the URI ([`NbdUri`]), the connections to the server, sending requests
//! and handing each reply to the thread that waits for it, request timeouts, and the link's
//! health (up, or down until the next reconnect attempt). What it must not touch: anything
//! above a device (stripes, checksums, other members, the pool's fault policy); it reports
//! an outage as [`DeviceError::Unavailable`] (and [`Device::is_unreachable`] says so while
//! it is down) and lets the pool decide.
//!
//! The wire protocol is the project's own client ([`crate::nbd_wire::client`] and
//! [`crate::nbd_wire::proto`]), not libnbd: libnbd's Rust bindings need libnbd-dev and bindgen
//! (a C dependency and a C toolchain at build time), while our client is pure Rust and already
//! tested against our own server (`tests/command/nbd.rs`) as well as against nbdkit here.
//!
//! **Pipelining.** [`Device`] is called from many threads at once. Each connection has one
//! writer mutex (a request's header and payload go out whole) and one reader thread, which
//! receives replies in whatever order the server sends them and hands each one, by cookie, to
//! the caller waiting for it on a channel of its own. Many requests are in flight on one
//! connection; no caller holds the connection for a whole round trip.
//!
//! **Multi-conn.** When the server advertises `NBD_FLAG_CAN_MULTI_CONN`, up to
//! [`NbdOptions::connections`] connections are opened and requests go to them in turn; a flush
//! is sent on one only, since the flag promises that a flush on one connection covers the writes
//! completed on all of them. Without the flag: one connection.
//!
//! **Block sizes.** The server's `NBD_INFO_BLOCK_SIZE` is honoured: a request is split into
//! pieces no longer than the maximum payload (all pieces in flight together), and one not
//! aligned to the minimum is refused before anything is sent.
//!
//! **Outages.** Every request has a timeout ([`NbdOptions::timeout`]). When a request times out
//! or a connection is lost, every request in flight on the device fails with
//! [`DeviceError::Unavailable`], the sockets are shut and the device is *down*. While it is
//! down, a request tries to reconnect at most once per backoff interval (100 ms, doubling up to
//! 5 s) and otherwise fails at once, never waiting out a timeout on a server known to be gone;
//! [`NbdDevice::reconnect_now`] tries at once (for a thread that probes members). A reconnect
//! must find the export as it was (same size, still writable if opened so), else the device
//! stays down.
//!
//! **Not here:** no `flock` (it is a local file's lock; nothing stops two pools from using one
//! export, so serve each export to one pool only), no creating or growing (the server decides
//! the size), no TLS (`nbds://` is refused), no FUA (writes are made durable by `flush`).

use super::{Access, Device, DeviceError, ReadWithin};
use crate::error::{Error, Result};
use crate::nbd_wire::client::{self, ClientError, ConnectOptions};
use crate::nbd_wire::proto::{self, cmd, flag, ExportInfo, Request};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// == URIs ==

/// The NBD port assigned by IANA, used when a `nbd://` URI names none.
pub const DEFAULT_PORT: u16 = 10809;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddress {
    /// `nbd://HOST[:PORT]`: TCP (a host name, an IPv4 address or a bracketed IPv6 literal).
    Tcp {
        /// The host, without brackets for an IPv6 literal.
        host: String,
        /// The port.
        port: u16,
    },
    /// `nbd+unix:///…?socket=PATH`: a Unix domain socket.
    Unix {
        /// The socket's path.
        socket: PathBuf,
    },
}

/// A parsed NBD URI: where the server is, and which export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    /// Where the server listens.
    pub address: NbdAddress,
    /// The export name (the URI's path without its leading `/`, percent-decoded; may be empty).
    pub export: String,
}

/// Why a URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// A valid URI asking for something this client does not do (TLS, vsock, another scheme).
    #[error("{uri}: {what} is not supported")]
    NotSupported {
        /// The URI as given.
        uri: String,
        /// What it asks for.
        what: String,
    },
    /// Not a well-formed NBD URI.
    #[error("{uri}: {reason}")]
    Malformed {
        /// The URI as given.
        uri: String,
        /// What is wrong.
        reason: String,
    },
}

/// Whether `text` is a URI (`scheme://…`) rather than a path: such a member is opened by
/// [`NbdDevice`] (which refuses schemes other than `nbd` and `nbd+unix`), and is compared as a
/// string, never looked up on the filesystem.
#[must_use]
pub fn is_uri(text: &str) -> bool {
    text.split_once("://").is_some_and(|(scheme, _)| {
        let mut chars = scheme.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

impl NbdUri {
    /// Parse `nbd://HOST[:PORT][/EXPORT]` or `nbd+unix:///[EXPORT]?socket=PATH`.
    ///
    /// # Errors
    /// [`UriError::NotSupported`] for `nbds`/`nbds+unix` (TLS), vsock, other schemes, user
    /// info and TLS query parameters; [`UriError::Malformed`] for anything that is not a
    /// well-formed NBD URI: no host for TCP, a host for a Unix socket, a port that is not a
    /// number from 1 to 65535, no `socket=` for `nbd+unix`, an unknown or repeated query
    /// parameter, a fragment, bad percent-encoding, an export name that is not UTF-8 or
    /// holds a NUL.
    pub fn parse(text: &str) -> std::result::Result<Self, UriError> {
        let malformed = |reason: String| UriError::Malformed {
            uri: text.to_string(),
            reason,
        };
        let unsupported = |what: &str| UriError::NotSupported {
            uri: text.to_string(),
            what: what.to_string(),
        };
        let Some((scheme, rest)) = text.split_once("://").filter(|_| is_uri(text)) else {
            return Err(malformed(
                "not a URI (expected nbd://… or nbd+unix://…)".into(),
            ));
        };
        let unix = match scheme.to_ascii_lowercase().as_str() {
            "nbd" => false,
            "nbd+unix" => true,
            "nbds" | "nbds+unix" | "nbds+vsock" => {
                return Err(unsupported(&format!("{scheme}:// (NBD over TLS)")))
            }
            "nbd+vsock" => return Err(unsupported("nbd+vsock:// (NBD over vsock)")),
            other => {
                return Err(unsupported(&format!(
                    "the scheme {other}:// (only nbd:// and nbd+unix:// are)"
                )))
            }
        };
        if rest.contains('#') {
            return Err(malformed(
                "a fragment (#…) has no meaning in an NBD URI".into(),
            ));
        }
        let (hier, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = hier.find('/').map_or((hier, ""), |at| hier.split_at(at));
        let export = percent_decode(path.strip_prefix('/').unwrap_or(path)).map_err(&malformed)?;
        let export = String::from_utf8(export)
            .map_err(|_| malformed("the export name is not UTF-8".into()))?;
        if export.contains('\0') {
            return Err(malformed("the export name holds a NUL".into()));
        }
        if export.len() > proto::MAX_NAME_BYTES {
            return Err(malformed(format!(
                "the export name is longer than {} bytes",
                proto::MAX_NAME_BYTES
            )));
        }
        let mut socket = None;
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = String::from_utf8(percent_decode(key).map_err(&malformed)?)
                .map_err(|_| malformed("a query parameter's name is not UTF-8".into()))?;
            if key.starts_with("tls") {
                return Err(unsupported(&format!("the parameter {key} (TLS)")));
            }
            if key != "socket" || !unix {
                return Err(malformed(format!("unknown query parameter {key:?}")));
            }
            if socket.is_some() {
                return Err(malformed("socket= is given twice".into()));
            }
            socket = Some(percent_decode(value).map_err(&malformed)?);
        }
        if authority.contains('@') {
            return Err(unsupported(
                "user info (user@, used only for TLS authentication)",
            ));
        }
        let address = if unix {
            if !authority.is_empty() {
                return Err(malformed(format!(
                    "nbd+unix:// takes no host (found {authority:?}); the socket is given by ?socket=PATH"
                )));
            }
            let socket = socket
                .filter(|s| !s.is_empty())
                .ok_or_else(|| malformed("nbd+unix:// needs ?socket=PATH".into()))?;
            if socket.first() == Some(&0) {
                return Err(unsupported("a socket in the abstract namespace"));
            }
            let socket = String::from_utf8(socket)
                .map_err(|_| malformed("the socket path is not UTF-8".into()))?;
            NbdAddress::Unix {
                socket: PathBuf::from(socket),
            }
        } else {
            let (host, port) = split_host_port(authority).map_err(&malformed)?;
            NbdAddress::Tcp { host, port }
        };
        Ok(Self { address, export })
    }
}

/// `HOST[:PORT]` or `[IPV6][:PORT]`: the host (brackets removed) and the port (default 10809).
fn split_host_port(authority: &str) -> std::result::Result<(String, u16), String> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("an IPv6 address without its closing ]")?;
        let port = match after {
            "" => None,
            after => Some(
                after
                    .strip_prefix(':')
                    .ok_or("text after the IPv6 address's ]")?,
            ),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("nbd:// needs a host (nbd://HOST[:PORT]/EXPORT)".into());
    }
    let port = match port {
        // RFC 3986 allows an empty port: the default.
        None | Some("") => DEFAULT_PORT,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0 && port.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("port {port:?} is not a number from 1 to 65535"))?,
    };
    Ok((host.to_string(), port))
}

/// RFC 3986 percent-decoding (`+` stays `+`).
fn percent_decode(text: &str) -> std::result::Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = bytes
                .get(at + 1..at + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding at byte {at} of {text:?}"))?;
            out.push(hex);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    Ok(out)
}

// == Options ==

/// The environment variable that sets [`NbdOptions::timeout`] in milliseconds (for tests).
pub const TIMEOUT_ENV: &str = "STRIPESTORE_NBD_TIMEOUT_MS";

/// How an [`NbdDevice`] talks to its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdOptions {
    /// How long a request (and connecting with its negotiation) may take before the device is
    /// declared down. Default 30 s.
    pub timeout: Duration,
    /// The most connections to open when the server advertises `NBD_FLAG_CAN_MULTI_CONN`
    /// (at least 1). Default 4.
    pub connections: usize,
    /// The first wait before a reconnect attempt once down; doubled after each failed
    /// attempt. Default 100 ms.
    pub backoff_first: Duration,
    /// The longest wait between reconnect attempts. Default 5 s.
    pub backoff_max: Duration,
}

impl Default for NbdOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            connections: 4,
            backoff_first: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

impl NbdOptions {
    /// The defaults, with the timeout from [`TIMEOUT_ENV`] if it is set to a number of
    /// milliseconds (anything else is ignored with a warning).
    #[must_use]
    pub fn from_env() -> Self {
        let mut options = Self::default();
        if let Ok(text) = std::env::var(TIMEOUT_ENV) {
            match text.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => options.timeout = Duration::from_millis(ms),
                _ => {
                    tracing::warn!(value = %text, "{TIMEOUT_ENV} is not a positive number of milliseconds; ignored")
                }
            }
        }
        options
    }
}

// == Connections ==

/// The longest piece sent in one request, whatever the server accepts: the payload the
/// protocol recommends clients keep to.
const MAX_PIECE_BYTES: u32 = 32 << 20;

/// A connected socket, TCP or Unix.
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn connect(address: &NbdAddress, timeout: Duration) -> io::Result<Self> {
        match address {
            NbdAddress::Tcp { host, port } => {
                let mut last = None;
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(stream) => {
                            // Small requests go out at once rather than waiting for more.
                            stream.set_nodelay(true)?;
                            return Ok(Stream::Tcp(stream));
                        }
                        Err(err) => last = Some(err),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"))
                }))
            }
            NbdAddress::Unix { socket } => UnixStream::connect(socket).map(Stream::Unix),
        }
    }

    fn try_clone(&self) -> io::Result<Self> {
        match self {
            Stream::Tcp(s) => s.try_clone().map(Stream::Tcp),
            Stream::Unix(s) => s.try_clone().map(Stream::Unix),
        }
    }

    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
            Stream::Unix(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
        }
    }

    /// Make the last close of this socket drop whatever it has not delivered (a reset, not a
    /// graceful end): a request the pool gave up on must not reach the server later, when
    /// TCP retransmits it after the link returns (a superblock or a block landing after the
    /// member was resynced). A Unix socket delivers at once or never: nothing to do.
    fn discard_unsent_on_close(&self) {
        if let Stream::Tcp(s) = self {
            if let Err(err) = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO)) {
                tracing::debug!(%err, "SO_LINGER not set");
            }
        }
    }

    fn shutdown(&self) {
        // Already shut or reset: nothing more to do.
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// How a request ended, as the reader thread (or the end of the session) reports it.
#[derive(Debug)]
enum Outcome {
    /// Success; a read's data.
    Done(Vec<u8>),
    /// The server answered with this `NBD_E*` error.
    Errno(u32),
    /// The connection ended before the reply came.
    Lost(String),
}

/// One request waiting for its reply.
#[derive(Debug)]
struct Waiter {
    /// A read's length (its data follows a successful reply); `None` for other commands.
    read_bytes: Option<usize>,
    reply: SyncSender<Outcome>,
    /// When it was sent: a request its caller gave up on as late
    /// ([`Device::read_at_within`]) and still unanswered after the timeout takes the link
    /// down at the next request ([`Session::overdue`]).
    sent: Instant,
}

/// The requests in flight on one connection.
#[derive(Debug, Default)]
struct InFlight {
    next_cookie: u64,
    waiting: HashMap<u64, Waiter>,
    /// Set once the session ended: no request is taken any more.
    closed: Option<String>,
}

/// One connection: a writer shared by the callers, a reader thread of its own.
#[derive(Debug)]
struct Connection {
    writer: Mutex<Stream>,
    inflight: Mutex<InFlight>,
    /// A handle on the socket to shut it down from any thread.
    control: Stream,
}

/// The connections of one link to the server: all up, or all torn down together.
#[derive(Debug)]
struct Session {
    connections: Vec<Connection>,
    export: ExportInfo,
    ended: Mutex<Option<String>>,
    readers: Mutex<Vec<JoinHandle<()>>>,
}

impl Session {
    /// Connect (up to `options.connections` connections if the server allows several) and
    /// start a reader thread per connection.
    fn open(target: &NbdUri, options: &NbdOptions) -> std::result::Result<Arc<Self>, String> {
        let (first, export) = connect_one(target, options)?;
        let mut streams = vec![first];
        if export.flags & flag::CAN_MULTI_CONN != 0 {
            for _ in 1..options.connections.max(1) {
                let (stream, again) = connect_one(target, options)?;
                if again.size_bytes != export.size_bytes || again.flags != export.flags {
                    return Err(format!(
                        "a second connection saw another export ({} bytes, flags {:#x}, against {} bytes, flags {:#x})",
                        again.size_bytes, again.flags, export.size_bytes, export.flags
                    ));
                }
                streams.push(stream);
            }
        }
        let mut connections = Vec::with_capacity(streams.len());
        let mut readers = Vec::with_capacity(streams.len());
        for stream in streams {
            let control = stream.try_clone().map_err(|e| e.to_string())?;
            let reader = stream.try_clone().map_err(|e| e.to_string())?;
            connections.push(Connection {
                writer: Mutex::new(stream),
                inflight: Mutex::new(InFlight {
                    next_cookie: 1,
                    ..InFlight::default()
                }),
                control,
            });
            readers.push(reader);
        }
        let session = Arc::new(Self {
            connections,
            export,
            ended: Mutex::new(None),
            readers: Mutex::new(Vec::new()),
        });
        for (index, reader) in readers.into_iter().enumerate() {
            let for_thread = Arc::clone(&session);
            let spawned = std::thread::Builder::new()
                .name(format!("nbd-replies-{index}"))
                .spawn(move || receive_replies(&for_thread, index, reader));
            match spawned {
                Ok(handle) => session.readers.lock().push(handle),
                Err(err) => {
                    let why = format!("cannot start a reply thread: {err}");
                    session.end(&why);
                    return Err(why);
                }
            }
        }
        Ok(session)
    }

    fn ended(&self) -> Option<String> {
        self.ended.lock().clone()
    }

    /// How long the oldest request in flight has waited, if longer than `timeout`: a request
    /// nobody waits for any more (given up on as late) that the server never answered.
    fn overdue(&self, timeout: Duration) -> Option<Duration> {
        self.connections
            .iter()
            .filter_map(|c| {
                c.inflight
                    .lock()
                    .waiting
                    .values()
                    .map(|w| w.sent.elapsed())
                    .max()
            })
            .max()
            .filter(|age| *age > timeout)
    }

    /// Tear the session down after a failure (once; later calls do nothing): shut every
    /// socket, fail every request in flight with `why`, and let no request still unsent reach
    /// the server later.
    fn end(&self, why: &str) {
        self.end_with(why, true);
    }

    /// [`Session::end`], with what is unsent discarded (a failure) or delivered (a polite
    /// close, whose goodbye must arrive).
    fn end_with(&self, why: &str, discard_unsent: bool) {
        {
            let mut ended = self.ended.lock();
            if ended.is_some() {
                return;
            }
            *ended = Some(why.to_string());
        }
        for connection in &self.connections {
            let waiting = {
                let mut inflight = connection.inflight.lock();
                inflight.closed = Some(why.to_string());
                std::mem::take(&mut inflight.waiting)
            };
            if discard_unsent {
                connection.control.discard_unsent_on_close();
            }
            connection.control.shutdown();
            for (_, waiter) in waiting {
                // A caller that stopped waiting has dropped its receiver: nothing to tell.
                let _ = waiter.reply.try_send(Outcome::Lost(why.to_string()));
            }
        }
    }

    /// Send one request on connection `index`; the receiver gets its outcome.
    fn send(
        &self,
        index: usize,
        command: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> std::result::Result<Receiver<Outcome>, String> {
        let connection = &self.connections[index % self.connections.len()];
        let (reply, receiver) = mpsc::sync_channel(1);
        let read_bytes = (command == cmd::READ).then(|| usize::try_from(length).unwrap_or(0));
        let cookie = {
            let mut inflight = connection.inflight.lock();
            if let Some(why) = &inflight.closed {
                return Err(why.clone());
            }
            let cookie = inflight.next_cookie;
            inflight.next_cookie += 1;
            inflight.waiting.insert(
                cookie,
                Waiter {
                    read_bytes,
                    reply,
                    sent: Instant::now(),
                },
            );
            cookie
        };
        let header = proto::encode_request(&Request {
            flags: 0,
            command,
            cookie,
            offset,
            length,
        });
        let sent = {
            let mut writer = connection.writer.lock();
            writer
                .write_all(&header)
                .and_then(|()| writer.write_all(payload))
        };
        if let Err(err) = sent {
            let why = format!("sending a request failed: {err}");
            self.end(&why);
            return Err(why);
        }
        Ok(receiver)
    }
}

/// Connect and negotiate one connection, within `options.timeout`.
fn connect_one(
    target: &NbdUri,
    options: &NbdOptions,
) -> std::result::Result<(Stream, ExportInfo), String> {
    let mut stream =
        Stream::connect(&target.address, options.timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_timeouts(Some(options.timeout), Some(options.timeout))
        .map_err(|e| e.to_string())?;
    let negotiated = client::negotiate(&mut stream, &target.export, &ConnectOptions::default())
        .map_err(|err| match err {
            ClientError::Refused { reply, .. } if reply == proto::rep::ERR_UNKNOWN => {
                format!("the server has no export {:?}", target.export)
            }
            ClientError::Io(err) if is_timeout(&err) => format!(
                "the server did not finish negotiating within {:?}",
                options.timeout
            ),
            other => format!("negotiation: {other}"),
        })?;
    // The reader thread waits as long as it takes: a request's own timeout decides when the
    // server is too slow. Writes keep theirs, so a server that stopped reading cannot hold a
    // sender forever.
    stream
        .set_timeouts(None, Some(options.timeout))
        .map_err(|e| e.to_string())?;
    Ok((stream, negotiated.export))
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The reader thread of connection `index`: hand each reply to its waiter by cookie, until the
/// connection ends; then end the session (failing every request in flight).
fn receive_replies(session: &Session, index: usize, mut stream: Stream) {
    let connection = &session.connections[index];
    let why = loop {
        let (errno, cookie) = match client::read_simple_reply_header(&mut stream) {
            Ok(header) => header,
            Err(ClientError::Io(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                break "the server closed the connection".to_string()
            }
            Err(err) => break format!("receiving a reply failed: {err}"),
        };
        let Some(waiter) = connection.inflight.lock().waiting.remove(&cookie) else {
            break format!("the server replied to cookie {cookie}, which no request in flight has");
        };
        let outcome = match waiter.read_bytes {
            Some(length) if errno == 0 => {
                let mut data = vec![0u8; length];
                if let Err(err) = stream.read_exact(&mut data) {
                    let why = format!("receiving read data failed: {err}");
                    let _ = waiter.reply.try_send(Outcome::Lost(why.clone()));
                    break why;
                }
                Outcome::Done(data)
            }
            _ if errno == 0 => Outcome::Done(Vec::new()),
            _ => Outcome::Errno(errno),
        };
        // The waiter may have timed out and gone (the session is ending then).
        let _ = waiter.reply.try_send(outcome);
    };
    if session.ended().is_none() {
        tracing::warn!(connection = index, reason = %why, "NBD connection lost");
    }
    session.end(&why);
}

// == The device ==

/// The link's state: a live session, or down until `retry_at`.
#[derive(Debug)]
struct Link {
    session: Option<Arc<Session>>,
    /// Why it is down (when `session` is `None`).
    down: String,
    retry_at: Instant,
    backoff: Duration,
}

/// A device whose storage is an NBD export (see the module docs).
pub struct NbdDevice {
    uri: String,
    target: NbdUri,
    options: NbdOptions,
    writable: bool,
    /// The export as first negotiated: every reconnect must find the same size.
    export: ExportInfo,
    link: Mutex<Link>,
    /// Held by the one thread that reconnects; others fail at once meanwhile.
    reconnecting: Mutex<()>,
    next_connection: AtomicUsize,
}

impl std::fmt::Debug for NbdDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let link = self.link.lock();
        f.debug_struct("NbdDevice")
            .field("uri", &self.uri)
            .field("size_bytes", &self.export.size_bytes)
            .field("writable", &self.writable)
            .field(
                "connections",
                &link.session.as_ref().map_or(0, |s| s.connections.len()),
            )
            .finish_non_exhaustive()
    }
}

impl NbdDevice {
    /// Connect to the export `uri` names, for `access`. `size`, if given, is the size the
    /// caller needs: the export must hold at least that much (it cannot be created or grown
    /// from here).
    ///
    /// # Errors
    /// [`Error::Open`] naming the URI: a malformed or unsupported URI, a server that cannot
    /// be reached or refuses the export, a read-only export opened for writing, or an export
    /// smaller than `size`.
    pub fn open(
        uri: &str,
        access: Access,
        size: Option<u64>,
        options: &NbdOptions,
    ) -> Result<Self> {
        let open_error = |kind: io::ErrorKind, why: String| Error::Open {
            path: PathBuf::from(uri),
            source: io::Error::new(kind, why),
        };
        let target = NbdUri::parse(uri)
            .map_err(|e| open_error(io::ErrorKind::InvalidInput, e.to_string()))?;
        let session = Session::open(&target, options)
            .map_err(|why| open_error(io::ErrorKind::NotConnected, why))?;
        let export = session.export.clone();
        let writable = access == Access::ReadWrite;
        let refuse = |kind, why: String| {
            session.end("refused at open");
            Err(open_error(kind, why))
        };
        if writable && export.read_only() {
            return refuse(
                io::ErrorKind::PermissionDenied,
                "the export is read-only (NBD_FLAG_READ_ONLY) and cannot be opened for writing"
                    .into(),
            );
        }
        if let Some(needed) = size.filter(|needed| *needed > export.size_bytes) {
            return refuse(
                io::ErrorKind::InvalidInput,
                format!(
                    "the export holds {} bytes, fewer than the {needed} requested (an NBD export's size is set by its server)",
                    export.size_bytes
                ),
            );
        }
        Ok(Self {
            uri: uri.to_string(),
            target,
            options: options.clone(),
            writable,
            export,
            link: Mutex::new(Link {
                session: Some(session),
                down: String::new(),
                retry_at: Instant::now(),
                backoff: options.backoff_first,
            }),
            reconnecting: Mutex::new(()),
            next_connection: AtomicUsize::new(0),
        })
    }

    /// The URI it was opened with.
    #[must_use]
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The export as the server described it at open (size, flags, block sizes).
    #[must_use]
    pub fn export(&self) -> &ExportInfo {
        &self.export
    }

    /// How many connections are up (0 while the device is down).
    #[must_use]
    pub fn connections(&self) -> usize {
        let link = self.link.lock();
        link.session
            .as_ref()
            .filter(|s| s.ended().is_none())
            .map_or(0, |s| s.connections.len())
    }

    /// Reconnect now if the device is down, whatever the backoff says (for a thread that
    /// probes members); waits for a reconnect another thread is making.
    ///
    /// # Errors
    /// [`DeviceError::Unavailable`] if the server cannot be reached, or the export changed
    /// (another size, or read-only while opened for writing).
    pub fn reconnect_now(&self) -> std::result::Result<(), DeviceError> {
        let _one_at_a_time = self.reconnecting.lock();
        if self.live_session().is_some() {
            return Ok(());
        }
        self.reconnect().map(drop)
    }

    /// The session if it is up; marks the device down if its session ended meanwhile.
    fn live_session(&self) -> Option<Arc<Session>> {
        let mut link = self.link.lock();
        let session = link.session.clone()?;
        match session.ended() {
            None => Some(session),
            Some(why) => {
                self.mark_down_locked(&mut link, &session, &why);
                None
            }
        }
    }

    /// The session to send on: the live one, or a new one if the device is down and the
    /// backoff allows an attempt (one thread at a time); otherwise fail at once.
    fn session(&self) -> std::result::Result<Arc<Session>, DeviceError> {
        if let Some(session) = self.live_session() {
            return Ok(session);
        }
        {
            let link = self.link.lock();
            let now = Instant::now();
            if now < link.retry_at {
                return Err(self.unavailable(&format!(
                    "down ({}); next reconnect attempt in {} ms",
                    link.down,
                    (link.retry_at - now).as_millis()
                )));
            }
        }
        let Some(_one_at_a_time) = self.reconnecting.try_lock() else {
            return Err(self.unavailable("down; another thread is reconnecting"));
        };
        // Another thread may have reconnected between the two checks.
        if let Some(session) = self.live_session() {
            return Ok(session);
        }
        self.reconnect()
    }

    /// Try once to reconnect (the caller holds `reconnecting`): install the new session, or
    /// stay down with the backoff doubled.
    fn reconnect(&self) -> std::result::Result<Arc<Session>, DeviceError> {
        let attempt = Session::open(&self.target, &self.options).and_then(|session| {
            let now = &session.export;
            let changed = if now.size_bytes != self.export.size_bytes {
                Some(format!(
                    "the export's size changed from {} to {} bytes",
                    self.export.size_bytes, now.size_bytes
                ))
            } else if self.writable && now.read_only() {
                Some("the export became read-only".to_string())
            } else {
                None
            };
            match changed {
                Some(why) => {
                    session.end(&why);
                    Err(why)
                }
                None => Ok(session),
            }
        });
        let mut link = self.link.lock();
        match attempt {
            Ok(session) => {
                tracing::info!(device = %self.uri, "NBD member reconnected");
                link.session = Some(Arc::clone(&session));
                link.backoff = self.options.backoff_first;
                Ok(session)
            }
            Err(why) => {
                link.backoff = (link.backoff * 2).min(self.options.backoff_max);
                link.retry_at = Instant::now() + link.backoff;
                link.down = format!("reconnect failed: {why}");
                Err(self.unavailable(&link.down))
            }
        }
    }

    /// `session` failed with `why`: end it, and mark the device down if it is still the
    /// current one.
    fn mark_down(&self, session: &Arc<Session>, why: &str) {
        session.end(why);
        let mut link = self.link.lock();
        self.mark_down_locked(&mut link, session, why);
    }

    fn mark_down_locked(&self, link: &mut Link, session: &Arc<Session>, why: &str) {
        if link
            .session
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, session))
        {
            tracing::warn!(device = %self.uri, reason = %why, "NBD member down");
            link.session = None;
            link.down = why.to_string();
            link.retry_at = Instant::now() + link.backoff;
        }
    }

    fn unavailable(&self, why: &str) -> DeviceError {
        DeviceError::Unavailable(format!("{}: {why}", self.uri))
    }

    /// Run one command over `[offset, offset + length)`, split into pieces the server
    /// accepts, all in flight together. `payload` is a write's data; a read's data goes to
    /// `read_into`.
    fn run(
        &self,
        command: u16,
        offset: u64,
        length: usize,
        payload: &[u8],
        mut read_into: Option<&mut [u8]>,
        within: Option<Duration>,
    ) -> std::result::Result<ReadWithin, DeviceError> {
        let what = if command == cmd::READ {
            "read"
        } else {
            "write"
        };
        let refused = |kind: io::ErrorKind, why: String| {
            DeviceError::Io(io::Error::new(
                kind,
                format!(
                    "{}: {what} of {length} bytes at offset {offset}: {why}",
                    self.uri
                ),
            ))
        };
        if command == cmd::WRITE && !self.writable {
            let why = if self.export.read_only() {
                "the export is read-only"
            } else {
                "opened read-only"
            };
            return Err(refused(io::ErrorKind::PermissionDenied, why.into()));
        }
        let length_bytes = u64::try_from(length).unwrap_or(u64::MAX);
        if offset
            .checked_add(length_bytes)
            .is_none_or(|end| end > self.export.size_bytes)
        {
            return Err(refused(
                io::ErrorKind::UnexpectedEof,
                format!("past the export's end ({} bytes)", self.export.size_bytes),
            ));
        }
        let min = u64::from(self.export.block_min_bytes.max(1));
        if !offset.is_multiple_of(min) || !length_bytes.is_multiple_of(min) {
            return Err(refused(
                io::ErrorKind::InvalidInput,
                format!("not aligned to the server's minimum block size of {min} bytes"),
            ));
        }
        if length == 0 {
            return Ok(ReadWithin::Done);
        }
        let hedge_at = within.map(|within| Instant::now() + within);
        let session = self.session()?;
        if let Some(age) = session.overdue(self.options.timeout) {
            // Reads given up on as late do not wait out the timeout themselves: a server that
            // stopped answering is found here, as a request that waited would have found it.
            let why = format!(
                "a request has had no reply for {} ms (timeout {} ms)",
                age.as_millis(),
                self.options.timeout.as_millis()
            );
            self.mark_down(&session, &why);
            return Err(self.unavailable(&format!(
                "{what} of {length} bytes at offset {offset}: {why}"
            )));
        }
        // Pieces no longer than the server's maximum, and a multiple of its minimum.
        let most = u64::from(self.export.block_max_bytes.min(MAX_PIECE_BYTES));
        let piece_bytes = usize::try_from((most / min * min).max(min)).unwrap_or(usize::MAX);
        let mut pending = Vec::with_capacity(length.div_ceil(piece_bytes));
        for start in (0..length).step_by(piece_bytes) {
            let end = (start + piece_bytes).min(length);
            let piece_offset = offset + u64::try_from(start).unwrap_or(u64::MAX);
            let piece_length = u32::try_from(end - start).unwrap_or(u32::MAX);
            let data = if command == cmd::WRITE {
                &payload[start..end]
            } else {
                &[]
            };
            let index = self.next_connection.fetch_add(1, Ordering::Relaxed);
            match session.send(index, command, piece_offset, piece_length, data) {
                Ok(receiver) => pending.push((start..end, piece_offset, receiver)),
                Err(why) => {
                    self.mark_down(&session, &why);
                    return Err(self.unavailable(&format!(
                        "{what} of {length} bytes at offset {offset}: {why}"
                    )));
                }
            }
        }
        for (range, piece_offset, receiver) in pending {
            let Some(data) = self.wait(
                &session,
                &receiver,
                what,
                piece_offset,
                range.len(),
                hedge_at,
            )?
            else {
                // Late: the requests stay in flight on the connection, and the reader thread
                // throws their replies away (their receivers are dropped here). The caller's
                // buffer is only ever written on this thread, from the reply's own bytes.
                return Ok(ReadWithin::Late);
            };
            if let Some(buf) = read_into.as_deref_mut() {
                if data.len() != range.len() {
                    return Err(refused(
                        io::ErrorKind::InvalidData,
                        format!("{} bytes came back for {}", data.len(), range.len()),
                    ));
                }
                buf[range].copy_from_slice(&data);
            }
        }
        Ok(ReadWithin::Done)
    }

    /// Wait for one request's outcome, at most the timeout, and not past `hedge_at` if given
    /// and sooner: `None` then (late, not an error: the link is not marked down).
    fn wait(
        &self,
        session: &Arc<Session>,
        receiver: &Receiver<Outcome>,
        what: &str,
        offset: u64,
        length: usize,
        hedge_at: Option<Instant>,
    ) -> std::result::Result<Option<Vec<u8>>, DeviceError> {
        let hedge = hedge_at
            .map(|at| at.saturating_duration_since(Instant::now()))
            .filter(|left| *left < self.options.timeout);
        if let Some(left) = hedge {
            match receiver.recv_timeout(left) {
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Ok(outcome) => return self.outcome(session, Ok(outcome), what, offset, length),
                Err(RecvTimeoutError::Disconnected) => {
                    return self.outcome(
                        session,
                        Err(RecvTimeoutError::Disconnected),
                        what,
                        offset,
                        length,
                    )
                }
            }
        }
        let outcome = receiver.recv_timeout(self.options.timeout);
        self.outcome(session, outcome, what, offset, length)
    }

    /// What one request's outcome means for the caller and the link.
    fn outcome(
        &self,
        session: &Arc<Session>,
        outcome: std::result::Result<Outcome, RecvTimeoutError>,
        what: &str,
        offset: u64,
        length: usize,
    ) -> std::result::Result<Option<Vec<u8>>, DeviceError> {
        let request = format!("{what} of {length} bytes at offset {offset}");
        match outcome {
            Ok(Outcome::Done(data)) => Ok(Some(data)),
            Ok(Outcome::Errno(errno)) if errno == proto::errno::ESHUTDOWN => {
                let why = "the server is shutting down (ESHUTDOWN)";
                self.mark_down(session, why);
                Err(self.unavailable(&format!("{request}: {why}")))
            }
            Ok(Outcome::Errno(errno)) => {
                let os = io::Error::from_raw_os_error(i32::try_from(errno).unwrap_or(i32::MAX));
                Err(DeviceError::Io(io::Error::new(
                    os.kind(),
                    format!("{}: {request} failed on the server: {os}", self.uri),
                )))
            }
            Ok(Outcome::Lost(why)) => {
                self.mark_down(session, &why);
                Err(self.unavailable(&format!("{request}: {why}")))
            }
            Err(RecvTimeoutError::Timeout) => {
                let why = format!("no reply within {} ms", self.options.timeout.as_millis());
                self.mark_down(session, &why);
                Err(self.unavailable(&format!("{request}: {why}")))
            }
            Err(RecvTimeoutError::Disconnected) => {
                let why = "the reply was lost";
                self.mark_down(session, why);
                Err(self.unavailable(&format!("{request}: {why}")))
            }
        }
    }
}

impl Device for NbdDevice {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), DeviceError> {
        let length = buf.len();
        self.run(cmd::READ, offset, length, &[], Some(buf), None)
            .map(drop)
    }

    /// The read's requests are sent as by `read_at`; when `within` passes before every reply
    /// came, [`ReadWithin::Late`]: the requests stay in flight (the connection is not torn
    /// down, the link not marked down) and their replies are thrown away when they come.
    fn read_at_within(
        &self,
        offset: u64,
        buf: &mut [u8],
        within: Duration,
    ) -> std::result::Result<ReadWithin, DeviceError> {
        let length = buf.len();
        self.run(cmd::READ, offset, length, &[], Some(buf), Some(within))
    }

    fn reads_within(&self) -> bool {
        true
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> std::result::Result<(), DeviceError> {
        self.run(cmd::WRITE, offset, buf.len(), buf, None, None)
            .map(drop)
    }

    fn flush(&self) -> std::result::Result<(), DeviceError> {
        if self.export.flags & flag::SEND_FLUSH == 0 {
            // The server does not take NBD_CMD_FLUSH: it writes through (a write is durable
            // when acknowledged), so there is nothing to flush.
            return Ok(());
        }
        let session = self.session()?;
        // One connection is enough: with several, the server promised (CAN_MULTI_CONN) that
        // a flush on one covers the writes completed on all.
        let index = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let receiver = match session.send(index, cmd::FLUSH, 0, 0, &[]) {
            Ok(receiver) => receiver,
            Err(why) => {
                self.mark_down(&session, &why);
                return Err(self.unavailable(&format!("flush: {why}")));
            }
        };
        self.wait(&session, &receiver, "flush", 0, 0, None)
            .map(drop)
    }

    fn size(&self) -> u64 {
        self.export.size_bytes
    }

    fn name(&self) -> String {
        self.uri.clone()
    }

    fn io_backend(&self) -> &'static str {
        "nbd"
    }

    /// True while the device is down (a request timed out or the connection was lost, and no
    /// reconnect has succeeded since): the pool then marks the member away rather than failed.
    fn is_unreachable(&self) -> bool {
        let link = self.link.lock();
        link.session.as_ref().is_none_or(|s| s.ended().is_some())
    }
}

impl Drop for NbdDevice {
    fn drop(&mut self) {
        let session = self.link.get_mut().session.take();
        let Some(session) = session else {
            return;
        };
        if session.ended().is_none() {
            // A polite goodbye; the server finishes what it has and closes.
            let disconnect = proto::encode_request(&Request {
                flags: 0,
                command: cmd::DISC,
                cookie: 0,
                offset: 0,
                length: 0,
            });
            // A server that stopped reading must not hold the close for a whole timeout.
            let goodbye = Some(Duration::from_millis(100));
            for connection in &session.connections {
                let mut writer = connection.writer.lock();
                let _ = writer
                    .set_timeouts(None, goodbye)
                    .and_then(|()| writer.write_all(&disconnect));
            }
        }
        session.end_with("the device was closed", false);
        let readers = std::mem::take(&mut *session.readers.lock());
        for reader in readers {
            let _ = reader.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16, export: &str) -> NbdUri {
        NbdUri {
            address: NbdAddress::Tcp {
                host: host.into(),
                port,
            },
            export: export.into(),
        }
    }

    fn unix(socket: &str, export: &str) -> NbdUri {
        NbdUri {
            address: NbdAddress::Unix {
                socket: socket.into(),
            },
            export: export.into(),
        }
    }

    #[test]
    fn good_uris_parse() {
        let cases = [
            ("nbd://example.com/disk", tcp("example.com", 10809, "disk")),
            (
                "nbd://example.com:10810/disk",
                tcp("example.com", 10810, "disk"),
            ),
            ("nbd://example.com/", tcp("example.com", 10809, "")),
            ("nbd://example.com", tcp("example.com", 10809, "")),
            ("nbd://example.com:/x", tcp("example.com", 10809, "x")),
            (
                "nbd://example.com//disk",
                tcp("example.com", 10809, "/disk"),
            ),
            (
                "nbd://example.com/hello%20world",
                tcp("example.com", 10809, "hello world"),
            ),
            ("nbd://192.0.2.7:1/a+b", tcp("192.0.2.7", 1, "a+b")),
            ("nbd://[::1]:65535/e", tcp("::1", 65535, "e")),
            ("nbd://[fe80::1]/e", tcp("fe80::1", 10809, "e")),
            ("NBD://Example.com/E", tcp("Example.com", 10809, "E")),
            ("nbd+unix:///disk?socket=sock", unix("sock", "disk")),
            (
                "nbd+unix:///?socket=/tmp/a%20b.sock",
                unix("/tmp/a b.sock", ""),
            ),
            ("nbd+unix://?socket=/s", unix("/s", "")),
        ];
        for (text, expected) in cases {
            assert_eq!(NbdUri::parse(text), Ok(expected), "{text}");
            assert!(is_uri(text), "{text}");
        }
    }

    #[test]
    fn bad_uris_are_refused_with_the_reason() {
        let not_supported = [
            ("nbds://example.com/disk", "TLS"),
            ("nbds+unix:///disk?socket=s", "TLS"),
            ("nbd+vsock://1:2/", "vsock"),
            ("http://example.com/disk", "http"),
            ("file:///etc/passwd", "file"),
            ("nbd://user@example.com/disk", "user info"),
            ("nbd://example.com/disk?tls-type=x509", "TLS"),
            ("nbd+unix:///?socket=%00abstract", "abstract"),
        ];
        for (text, what) in not_supported {
            match NbdUri::parse(text) {
                Err(err @ UriError::NotSupported { .. }) => {
                    let message = err.to_string();
                    assert!(message.contains(what), "{text}: {message}");
                    assert!(message.contains("not supported"), "{text}: {message}");
                    assert!(message.starts_with(text), "{text}: {message}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        let malformed = [
            ("nbd://example.com:0/d", "port"),
            ("nbd://example.com:65536/d", "port"),
            ("nbd://example.com:http/d", "port"),
            ("nbd://example.com:+1/d", "port"),
            ("nbd://example.com:1:2/d", "port"),
            ("nbd://[::1/d", "]"),
            ("nbd://[::1]x/d", "]"),
            ("nbd:///disk", "needs a host"),
            ("nbd://:10809/disk", "needs a host"),
            ("nbd+unix:///disk", "socket="),
            ("nbd+unix:///disk?socket=", "socket="),
            ("nbd+unix://host/disk?socket=s", "no host"),
            ("nbd+unix:///d?socket=a&socket=b", "twice"),
            ("nbd+unix:///d?socket=s&x-foo=1", "unknown query parameter"),
            ("nbd://h/d?socket=s", "unknown query parameter"),
            ("nbd://h/d#frag", "fragment"),
            ("nbd://h/%zz", "percent"),
            ("nbd://h/%4", "percent"),
            ("nbd://h/a%00b", "NUL"),
            ("nbd://h/%ff", "UTF-8"),
        ];
        for (text, reason) in malformed {
            match NbdUri::parse(text) {
                Err(err @ UriError::Malformed { .. }) => {
                    let message = err.to_string();
                    assert!(message.contains(reason), "{text}: {message}");
                    assert!(message.starts_with(text), "{text}: {message}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn only_scheme_colon_slash_slash_is_a_uri() {
        for path in [
            "/dev/sdb",
            "d0.img",
            "nbd:foo",
            "./nbd://x",
            "a/nbd://x",
            "://x",
            "1nbd://x",
        ] {
            assert!(!is_uri(path), "{path}");
        }
        assert!(is_uri("nbd+unix:///x?socket=s"));
        assert!(is_uri("x-y.z://"));
    }

    /// The defaults, and the timeout from the environment (the only test that sets it).
    #[test]
    fn options_default_and_from_the_environment() {
        assert_eq!(NbdOptions::default().timeout, Duration::from_secs(30));
        assert_eq!(NbdOptions::default().connections, 4);
        std::env::set_var(TIMEOUT_ENV, "250");
        assert_eq!(NbdOptions::from_env().timeout, Duration::from_millis(250));
        for ignored in ["junk", "0", "-5"] {
            std::env::set_var(TIMEOUT_ENV, ignored);
            assert_eq!(NbdOptions::from_env(), NbdOptions::default(), "{ignored}");
        }
        std::env::remove_var(TIMEOUT_ENV);
        assert_eq!(NbdOptions::from_env(), NbdOptions::default());
    }
}
