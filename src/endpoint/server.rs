//! The HTTP server under the endpoint: accepts connections, parses requests and writes
//! responses, handing each request to a handler as a plain [`Request`] and sending back its
//! [`Response`].
//!
//! Served by `hyper` 1.x (HTTP/1 only) on a current-thread `tokio` runtime: hyper's parser
//! (httparse) is the most used and most fuzzed HTTP/1 parser in Rust, and unlike `tiny_http`
//! (used before: no read or write timeout, no bound on a request head) it lets every resource a
//! client can hold be bounded. The limits, for a loopback or trusted-network monitoring address
//! (`serve` warns when it is not loopback) that must not be held by a slow or hostile client:
//!
//! - a request head (request line and headers) must arrive within 5 s of the connection
//!   opening or of the previous answer ([`Limits::header_read_timeout`], hyper's
//!   `header_read_timeout`): a client that trickles a head (slowloris) or sits idle on a
//!   kept-alive connection is disconnected without an answer;
//! - a request head is at most 16 KiB and 100 headers ([`Limits::max_head_bytes`], hyper's
//!   `max_header_size` and `max_buf_size`, so the read buffer cannot grow past it either):
//!   beyond, hyper answers 431 and closes;
//! - a request body is at most 4 KiB ([`MAX_BODY_BYTES`]; no route reads one): beyond, 413;
//! - a connection lives at most 30 s in all ([`Limits::connection_timeout`]), so a client that
//!   asks for a large answer and stops reading it, or sends a body slowly, is cut off;
//! - at most 64 connections at once ([`Limits::max_connections`]); further ones wait in the
//!   listening socket's backlog until one ends (which the limits above bound).
//!
//! HTTP/1.1 connections are kept alive unless the client says `Connection: close`; HTTP/1.0
//! requests, as `status --url` sends, are answered in HTTP/1.0 and closed. Garbage in a request
//! line gets hyper's own 400. Header names are written in title case (`Content-Type`), as before.
//!
//! Owns: the listening socket and the one thread (`stripestore-http`) that runs the runtime:
//! it accepts, reads and writes every connection, and calls the handler, one request at a time
//! (the handler is neither `Sync` nor async, and routes answer from memory). Dropping the
//! [`HttpServer`] stops it: the listening socket and every open connection are closed, an
//! answer being written is cut short, and the thread is joined. Must not touch: the pool (the
//! handler given to [`HttpServer::start`] decides every answer), routes.

use super::{Request, Response};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{oneshot, Semaphore};

/// The largest request body read (and thrown away: no route takes one); larger gets 413.
pub const MAX_BODY_BYTES: usize = 4 << 10;

/// How long the accept loop pauses after a failed accept (out of file descriptors, ...).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a client may hold (see the module header for why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Time for a whole request head, from the connection's start or the previous answer.
    pub header_read_timeout: Duration,
    /// Bytes of a request head, and of the connection's read buffer (at least 8 KiB).
    pub max_head_bytes: usize,
    /// The whole life of a connection.
    pub connection_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            max_head_bytes: 16 << 10,
            connection_timeout: Duration::from_secs(30),
            max_connections: 64,
        }
    }
}

/// What answers a request; called on the server's thread only.
type Handler = dyn Fn(&Request<'_>) -> Response;

/// The running HTTP server; stops when dropped.
pub struct HttpServer {
    address: SocketAddr,
    /// Sent (or dropped) to stop the server's thread.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// Listen on `address` and answer every request with `handler`.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn start(
        address: SocketAddr,
        handler: impl Fn(&Request<'_>) -> Response + Send + 'static,
    ) -> std::io::Result<Self> {
        Self::start_with(address, Limits::default(), handler)
    }

    /// [`HttpServer::start`] with other limits (the tests shorten the timeouts).
    pub(crate) fn start_with(
        address: SocketAddr,
        limits: Limits,
        handler: impl Fn(&Request<'_>) -> Response + Send + 'static,
    ) -> std::io::Result<Self> {
        // Bound here, so a bind failure is the socket's own error (address in use, ...).
        let listener = std::net::TcpListener::bind(address)?;
        let address = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let listener = {
            let _context = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("stripestore-http".into())
            .spawn(move || {
                let handler: Rc<Handler> = Rc::new(handler);
                let connections = tokio::task::LocalSet::new();
                connections.block_on(&runtime, until(stopped, accept(listener, limits, handler)));
                // The listener went with the accept loop; the connections go here, then the
                // runtime.
                drop(connections);
                drop(runtime);
            })?;
        tracing::info!(%address, "serving metrics at http://{address}/metrics");
        Ok(Self {
            address,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The bound address (useful with port 0).
    #[must_use]
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // An error means the thread already ended: nothing to stop.
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Run `work` until `stop` is sent or dropped.
async fn until(mut stop: oneshot::Receiver<()>, work: impl Future<Output = ()>) {
    let mut work = pin!(work);
    std::future::poll_fn(|cx| {
        if std::pin::Pin::new(&mut stop).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        work.as_mut().poll(cx)
    })
    .await;
}

/// Accept connections for ever, each served by a task of its own within `limits`.
async fn accept(listener: tokio::net::TcpListener, limits: Limits, handler: Rc<Handler>) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_head_bytes)
        // hyper refuses (panics on) less than 8 KiB.
        .max_buf_size(limits.max_head_bytes.max(8 << 10))
        .keep_alive(true)
        .title_case_headers(true);
    loop {
        // Wait for a free slot before accepting: the next clients wait in the backlog.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return; // the semaphore is never closed
        };
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                tracing::warn!(%err, "http server: cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let handler = Rc::clone(&handler);
        let connection = http.serve_connection(
            TokioIo::new(stream),
            service_fn(move |request| answer(Rc::clone(&handler), request)),
        );
        tokio::task::spawn_local(async move {
            match tokio::time::timeout(limits.connection_timeout, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::debug!(%err, "http client"),
                Err(_) => tracing::debug!(
                    "http client: connection closed after {:?}",
                    limits.connection_timeout
                ),
            }
            drop(slot);
        });
    }
}

/// Answer one request: its body read (up to [`MAX_BODY_BYTES`]) and dropped, then the handler.
async fn answer(
    handler: Rc<Handler>,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (head, body) = request.into_parts();
    let too_large = || {
        Response::text(
            413,
            format!("request bodies are limited to {MAX_BODY_BYTES} bytes\n"),
        )
    };
    let response = if body.size_hint().lower() > MAX_BODY_BYTES as u64 {
        too_large()
    } else {
        match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(_) => handler(&Request {
                method: head.method.as_str(),
                path: head.uri.path(),
                query: head.uri.query().unwrap_or(""),
            }),
            Err(err) if err.is::<LengthLimitError>() => too_large(),
            Err(err) => Response::text(400, format!("cannot read the request body: {err}\n")),
        }
    };
    Ok(encode(response))
}

/// A handler's answer as hyper sends it (hyper adds `Content-Length` and `Date`).
fn encode(response: Response) -> hyper::Response<Full<Bytes>> {
    let mut reply = hyper::Response::new(Full::new(Bytes::from(response.body)));
    *reply.status_mut() = StatusCode::from_u16(response.status).unwrap_or_else(|_| {
        tracing::warn!(status = response.status, "not a valid HTTP status");
        StatusCode::INTERNAL_SERVER_ERROR
    });
    match HeaderValue::from_str(response.content_type) {
        Ok(value) => {
            reply.headers_mut().insert(CONTENT_TYPE, value);
        }
        Err(_) => tracing::warn!(
            content_type = response.content_type,
            "not a valid header value"
        ),
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    /// Short timeouts, so the tests see them act.
    fn quick() -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(400),
            connection_timeout: Duration::from_secs(2),
            ..Limits::default()
        }
    }

    fn server(limits: Limits) -> HttpServer {
        HttpServer::start_with("127.0.0.1:0".parse().unwrap(), limits, |request| {
            match (request.method, request.path) {
                ("GET", "/metrics") => Response::metrics("up 1\n".to_string()),
                ("GET", "/big") => Response::text(200, "x".repeat(64 << 20)),
                ("GET", "/query") => Response::text(200, format!("{}\n", request.query)),
                ("GET", _) => Response::text(404, "not found\n"),
                _ => Response::text(405, "only GET\n"),
            }
        })
        .unwrap()
    }

    fn connect(address: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
    }

    /// Send `request`, read until the server closes.
    fn get(address: SocketAddr, request: &str) -> String {
        let mut stream = connect(address);
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        String::from_utf8_lossy(&response).into_owned()
    }

    /// Read until the server closes (or resets) the connection; the time it took and the bytes.
    fn until_closed(stream: &mut TcpStream) -> (Duration, Vec<u8>) {
        let start = Instant::now();
        let mut read = Vec::new();
        let mut buf = [0u8; 1 << 16];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => read.extend_from_slice(&buf[..n]),
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(err) => panic!("{err} after {:?}", start.elapsed()),
            }
        }
        (start.elapsed(), read)
    }

    #[test]
    fn serves_metrics_and_refuses_the_rest() {
        let server = server(Limits::default());
        let address = server.address();
        let ok = get(address, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(ok.ends_with("\r\n\r\nup 1\n"), "{ok}");
        let kept = get(
            address,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(kept.starts_with("HTTP/1.1 200 OK\r\n"), "{kept}");
        assert!(get(address, "GET /other HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 404"));
        assert!(get(address, "POST /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 405"));
        let query = get(address, "GET /query?a=1&b HTTP/1.0\r\n\r\n");
        assert!(query.ends_with("\r\n\r\na=1&b\n"), "{query}");
        // An absolute URI is routed by its path.
        let absolute = get(address, "GET http://x/metrics HTTP/1.0\r\n\r\n");
        assert!(absolute.ends_with("up 1\n"), "{absolute}");
        // Garbage and an early hang-up do not stop the server.
        for garbage in [
            "\0\0\0\r\n\r\n",
            "HELLO\r\n\r\n",
            "GET / HTTP/9.9\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
        ] {
            let answer = get(address, garbage);
            assert!(answer.starts_with("HTTP/1.1 400"), "{garbage:?}: {answer}");
        }
        drop(TcpStream::connect(address).unwrap());
        assert!(get(address, "GET /metrics HTTP/1.0\r\n\r\n").contains("up 1"));
        drop(server);
        assert!(TcpStream::connect(address).is_err(), "still listening");
    }

    /// HTTP/1.1 without `Connection: close` keeps the connection for the next request.
    #[test]
    fn http_1_1_keeps_the_connection_alive() {
        let server = server(Limits::default());
        let mut stream = connect(server.address());
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /query?two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let (_, answers) = until_closed(&mut stream);
        let answers = String::from_utf8(answers).unwrap();
        assert_eq!(
            answers.matches("HTTP/1.1 200 OK\r\n").count(),
            2,
            "{answers}"
        );
        assert!(
            answers.contains("up 1\n") && answers.ends_with("two\n"),
            "{answers}"
        );
    }

    /// Request bodies are read up to MAX_BODY_BYTES; beyond, 413 (announced or not).
    #[test]
    fn request_bodies_are_bounded() {
        let server = server(Limits::default());
        let address = server.address();
        let small = get(
            address,
            "POST /scrub HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello",
        );
        assert!(small.starts_with("HTTP/1.0 405"), "{small}");
        let announced = get(
            address,
            "POST /scrub HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n",
        );
        assert!(announced.starts_with("HTTP/1.1 413"), "{announced}");
        let chunk = "x".repeat(MAX_BODY_BYTES + 1);
        let chunked = get(
            address,
            &format!(
                "POST /scrub HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
                chunk.len()
            ),
        );
        assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    }

    /// A client that sends part of a request head and stalls (slowloris), or sits idle on a
    /// kept-alive connection, is disconnected after the header timeout, while the others are
    /// served.
    #[test]
    fn a_stalled_request_head_is_cut_off_and_others_are_served() {
        // The connection timeout far away, so only the header timeout can close them in time.
        let limits = Limits {
            connection_timeout: Duration::from_secs(30),
            ..quick()
        };
        let server = server(limits);
        let address = server.address();
        let start = Instant::now();
        let mut stalled = connect(address);
        stalled
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
        let mut idle = connect(address);
        idle.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut silent = connect(address);
        // Served meanwhile.
        for _ in 0..3 {
            assert!(get(address, "GET /metrics HTTP/1.0\r\n\r\n").ends_with("up 1\n"));
        }
        let (_, read) = until_closed(&mut stalled);
        assert!(read.is_empty(), "{}", String::from_utf8_lossy(&read));
        let (_, read) = until_closed(&mut idle);
        let read = String::from_utf8(read).unwrap();
        assert!(
            read.starts_with("HTTP/1.1 200 OK") && read.ends_with("up 1\n"),
            "answered, then closed when idle: {read}"
        );
        let (_, read) = until_closed(&mut silent);
        assert!(read.is_empty());
        let waited = start.elapsed();
        assert!(
            waited >= limits.header_read_timeout && waited < Duration::from_secs(5),
            "all closed after {waited:?}"
        );
        assert!(get(address, "GET /metrics HTTP/1.0\r\n\r\n").ends_with("up 1\n"));
    }

    /// A request head over the cap is refused with 431 and the connection closed; one that
    /// goes on for ever is cut off at the cap (the server buffers no more of it).
    #[test]
    fn an_oversized_request_head_is_refused() {
        let limits = Limits::default();
        let server = server(limits);
        let address = server.address();
        // Exactly the cap and no end of head: the server reads it all, so its close is clean.
        let mut head = String::from("GET /metrics HTTP/1.1\r\nHost: x\r\n");
        while head.len() < limits.max_head_bytes {
            head.push_str("X-Filler: yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n");
        }
        head.truncate(limits.max_head_bytes);
        let answer = get(address, &head);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        // Too many headers, well under the byte cap.
        let many = "X-A: b\r\n".repeat(200);
        let answer = get(address, &format!("GET /metrics HTTP/1.1\r\n{many}\r\n"));
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        // An endless head: the server closes (or resets) once it has the cap, long before the
        // writer is done.
        let mut endless = connect(address);
        let writer = {
            let mut endless = endless.try_clone().unwrap();
            std::thread::spawn(move || {
                let line = b"X-Filler: yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n";
                let mut sent = endless.write_all(b"GET / HTTP/1.1\r\n").map(|()| 0);
                while let Ok(bytes) = sent {
                    if bytes >= 256 << 20 {
                        break;
                    }
                    sent = endless.write_all(line).map(|()| bytes + line.len());
                }
                sent
            })
        };
        let _ = until_closed(&mut endless);
        let sent = writer.join().unwrap();
        assert!(
            sent.is_err(),
            "the server took 256 MiB of request head: {sent:?}"
        );
        assert!(get(address, "GET /metrics HTTP/1.0\r\n\r\n").ends_with("up 1\n"));
    }

    /// A client that asks and never reads a large answer holds neither the next client nor the
    /// server's shutdown, and is cut off after the connection timeout.
    #[test]
    fn a_client_that_does_not_read_blocks_nobody() {
        let limits = quick();
        let server = server(limits);
        let address = server.address();
        let mut stuck = connect(address);
        stuck.write_all(b"GET /big HTTP/1.0\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(get(address, "GET /metrics HTTP/1.0\r\n\r\n").ends_with("up 1\n"));
        std::thread::sleep(limits.connection_timeout + Duration::from_millis(500));
        let (_, read) = until_closed(&mut stuck);
        assert!(
            read.starts_with(b"HTTP/1.0 200 OK\r\n") && read.len() < 64 << 20,
            "{} bytes",
            read.len()
        );

        let mut stuck = connect(address);
        stuck.write_all(b"GET /big HTTP/1.0\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let start = Instant::now();
        drop(server);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        let (_, read) = until_closed(&mut stuck);
        assert!(read.len() < 64 << 20);
    }

    /// Beyond `max_connections`, a client waits for a slot (here freed by the header timeout).
    #[test]
    fn connections_beyond_the_cap_wait_for_a_slot() {
        let limits = Limits {
            max_connections: 2,
            ..quick()
        };
        let server = server(limits);
        let address = server.address();
        let held: Vec<TcpStream> = (0..2).map(|_| connect(address)).collect();
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        assert!(get(address, "GET /metrics HTTP/1.0\r\n\r\n").ends_with("up 1\n"));
        let waited = start.elapsed();
        assert!(
            waited >= limits.header_read_timeout / 2 && waited < limits.connection_timeout,
            "served after {waited:?}"
        );
        drop(held);
    }

    /// Servers start and stop promptly, with connections open or not.
    #[test]
    fn servers_stop_promptly() {
        let start = Instant::now();
        for _ in 0..50 {
            let server = server(Limits::default());
            let _open = connect(server.address());
            let mut half = connect(server.address());
            half.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
            drop(server);
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
    }
}
