//! The listener: accepts clients on a TCP address (loopback unless told otherwise) or a Unix
//! socket, runs each on a thread of its own, and shuts down gracefully.
//!
//! Shutdown: [`StopHandle::stop`] (or the flag given to [`Server::with_stop_flag`], which the
//! CLI's signal handler sets) stops accepting; then every open socket's read side is shut, so
//! each connection's reader sees end of input, the requests it already read finish and are
//! answered (sockets get a write timeout so a client that stopped reading cannot hold the
//! shutdown), and [`Server::run`] returns once every connection thread has ended. The caller
//! then closes the pool, which flushes it.

use super::connection::{serve_stream, ConnectionEnd, ExportConfig};
use crate::pool::Pool;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(20);
/// How long a reply may block on a client that does not read, once stopping.
const STOP_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address (`127.0.0.1:10809` by default; port 0 picks a free port).
    Tcp(SocketAddr),
    /// A Unix socket path (a stale socket file there is replaced; any other file is refused).
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "nbd://{addr}"),
            Listen::Unix(path) => write!(f, "nbd+unix:///?socket={}", path.display()),
        }
    }
}

/// Server settings. (The `serve` command's `--metrics` address will join these.)
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The export's name (the empty name also selects it, as the default export).
    pub export_name: String,
    /// Refuse writes (`EPERM`) and announce the export read-only.
    pub read_only: bool,
    /// Clients served at once; more are closed at once with a warning.
    pub max_connections: usize,
    /// Export this recovery point, read-only, instead of the live volume.
    pub recovery_point: Option<String>,
    /// Also export every recovery point, read-only, under its own name.
    pub recovery_point_exports: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            export_name: String::new(),
            read_only: false,
            max_connections: 64,
            recovery_point: None,
            recovery_point_exports: false,
        }
    }
}

/// What a server did, returned by [`Server::run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeReport {
    /// Clients accepted.
    pub connections: u64,
    /// Clients refused because `max_connections` were open.
    pub refused: u64,
}

/// Stops a running [`Server`] from another thread.
#[derive(Debug, Clone)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// Stop accepting, let requests in flight finish, and make [`Server::run`] return.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// One accepted socket, either kind.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    /// Make the connection's reader see end of input, and bound how long replies may block.
    fn stop_reading(&self) {
        // Errors mean the socket is already closed, which is what we want.
        let _ = match self {
            Stream::Tcp(s) => s
                .set_write_timeout(Some(STOP_WRITE_TIMEOUT))
                .and_then(|()| s.shutdown(Shutdown::Read)),
            Stream::Unix(s) => s
                .set_write_timeout(Some(STOP_WRITE_TIMEOUT))
                .and_then(|()| s.shutdown(Shutdown::Read)),
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
        Ok(())
    }
}

/// An NBD server exporting one pool.
pub struct Server {
    listener: Listener,
    pool: Arc<Pool>,
    config: ExportConfig,
    options: ServeOptions,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listen", &self.local_addr().ok())
            .field("export", &self.config.export)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Bind to `listen` and prepare to export `pool`.
    ///
    /// # Errors
    /// The address cannot be bound, or the socket path holds something other than a socket.
    pub fn bind(listen: &Listen, pool: Arc<Pool>, options: ServeOptions) -> io::Result<Self> {
        let listener = match listen {
            Listen::Tcp(addr) => Listener::Tcp(TcpListener::bind(addr)?),
            Listen::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    use std::os::unix::fs::FileTypeExt;
                    if !meta.file_type().is_socket() {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!("{} exists and is not a socket", path.display()),
                        ));
                    }
                    std::fs::remove_file(path)?;
                }
                Listener::Unix(UnixListener::bind(path)?, path.clone())
            }
        };
        match &listener {
            Listener::Tcp(l) => l.set_nonblocking(true)?,
            Listener::Unix(l, _) => l.set_nonblocking(true)?,
        }
        let mut config = match &options.recovery_point {
            Some(point) => ExportConfig::for_recovery_point(&pool, &options.export_name, point),
            None => ExportConfig::for_pool(&pool, &options.export_name, options.read_only),
        };
        config.recovery_point_exports = options.recovery_point_exports;
        Ok(Self {
            listener,
            pool,
            config,
            options,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Use `flag` as the stop flag (a signal handler sets it).
    #[must_use]
    pub fn with_stop_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = flag;
        self
    }

    /// A handle that stops [`Server::run`].
    #[must_use]
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.stop))
    }

    /// Where the server listens (with the real port when bound to port 0).
    ///
    /// # Errors
    /// The socket's address cannot be read.
    pub fn local_addr(&self) -> io::Result<Listen> {
        Ok(match &self.listener {
            Listener::Tcp(l) => Listen::Tcp(l.local_addr()?),
            Listener::Unix(_, path) => Listen::Unix(path.clone()),
        })
    }

    /// The export as announced to clients.
    #[must_use]
    pub fn export(&self) -> &super::proto::ExportInfo {
        &self.config.export
    }

    /// Serve until stopped; returns after every connection has ended.
    ///
    /// # Errors
    /// None today beyond what `accept` reports persistently; transient accept errors are
    /// logged and retried.
    pub fn run(self) -> io::Result<ServeReport> {
        let mut report = ServeReport::default();
        let open: Arc<Mutex<HashMap<u64, Stream>>> = Arc::new(Mutex::new(HashMap::new()));
        let next_id = AtomicU64::new(0);
        let mut threads: Vec<std::thread::JoinHandle<()>> = Vec::new();
        while !self.stop.load(Ordering::SeqCst) {
            let accepted = match &self.listener {
                Listener::Tcp(l) => l.accept().and_then(|(s, peer)| {
                    s.set_nonblocking(false)?;
                    // Replies are small and latency-bound: no Nagle delay.
                    s.set_nodelay(true)?;
                    Ok((Stream::Tcp(s), peer.to_string()))
                }),
                Listener::Unix(l, _) => l.accept().and_then(|(s, _)| {
                    s.set_nonblocking(false)?;
                    room_for_replies(&socket2::SockRef::from(&s));
                    Ok((Stream::Unix(s), "unix socket".to_string()))
                }),
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(ACCEPT_POLL);
                    continue;
                }
                Err(err) => {
                    tracing::warn!(%err, "NBD accept failed");
                    std::thread::sleep(ACCEPT_POLL);
                    continue;
                }
            };
            threads.retain(|t| !t.is_finished());
            if threads.len() >= self.options.max_connections {
                tracing::warn!(%peer, max = self.options.max_connections, "NBD client refused: too many connections");
                report.refused += 1;
                continue;
            }
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            let (reader, writer) = match (stream.try_clone(), stream.try_clone()) {
                (Ok(reader), Ok(writer)) => (reader, writer),
                (Err(err), _) | (_, Err(err)) => {
                    tracing::warn!(%err, %peer, "NBD client dropped: socket cannot be shared");
                    continue;
                }
            };
            open.lock().insert(id, stream);
            report.connections += 1;
            let pool = Arc::clone(&self.pool);
            let config = self.config.clone();
            let stop = Arc::clone(&self.stop);
            let open_for_thread = Arc::clone(&open);
            let spawned = std::thread::Builder::new()
                .name(format!("nbd-conn-{id}"))
                .spawn(move || {
                    tracing::info!(%peer, "NBD client connected");
                    match serve_stream(reader, writer, &pool, &config, &stop) {
                        Ok(ConnectionEnd::ProtocolError(why)) => {
                            tracing::warn!(%peer, %why, "NBD client closed for a protocol error");
                        }
                        Ok(end) => tracing::info!(%peer, ?end, "NBD client disconnected"),
                        Err(err) => tracing::info!(%peer, %err, "NBD client lost"),
                    }
                    open_for_thread.lock().remove(&id);
                });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(err) => {
                    tracing::warn!(%err, "NBD client dropped: no thread");
                    open.lock().remove(&id);
                }
            }
        }
        tracing::info!(
            connections = threads.len(),
            "NBD server stopping: finishing requests in flight"
        );
        for stream in open.lock().values() {
            stream.stop_reading();
        }
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("an NBD connection thread panicked");
            }
        }
        if let Listener::Unix(_, path) = &self.listener {
            let _ = std::fs::remove_file(path);
        }
        Ok(report)
    }
}

/// Ask a Unix socket for a send buffer that holds a few 1 MiB replies (the kernel caps it at
/// `net.core.wmem_max`): with Linux's default (208 KiB) a thread sending a 1 MiB read's reply
/// sleeps five times until the client has taken it. Not on TCP: setting `SO_SNDBUF` there
/// switches off the kernel's send-buffer auto-tuning (up to `tcp_wmem`'s 4 MiB), and a stock
/// `wmem_max` would then hold every connection at 416 KiB.
fn room_for_replies(socket: &socket2::SockRef<'_>) {
    const SEND_BUFFER_BYTES: usize = 4 << 20;
    if let Err(err) = socket.set_send_buffer_size(SEND_BUFFER_BYTES) {
        tracing::debug!(%err, "NBD socket keeps its default send buffer");
    }
}
