//! A tiny HTTP/1.0 endpoint: Prometheus scrapes (`GET /metrics`), and whatever else the handler
//! given to [`MetricsServer::start`] answers (the pool's status and, when enabled, scrub
//! control; see `pool::endpoint`). One thread, one connection at a time: a scrape or a status
//! query every few seconds needs nothing more. Request bodies are not read.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest request head accepted; a scraper sends a few hundred bytes.
const MAX_HEAD_BYTES: usize = 8192;
/// A client that sends nothing for this long is dropped (it would block the one thread).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The running endpoint; stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// One request, as a handler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// `GET`, `POST`, ... (anything the client sent; garbage included).
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// What follows `?`, or empty.
    pub query: &'a str,
}

impl Request<'_> {
    /// The value of `name` in the query (`name=value`), or `Some("")` for a bare `name`.
    #[must_use]
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }
}

/// A handler's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Response {
    /// A plain-text answer.
    #[must_use]
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
    /// A JSON answer.
    #[must_use]
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: body.into(),
        }
    }
    /// The Prometheus text exposition.
    #[must_use]
    pub fn metrics(body: String) -> Self {
        Self {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

impl MetricsServer {
    /// Listen on `address` and answer every request with `handler`.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn start(
        address: SocketAddr,
        handler: impl Fn(&Request<'_>) -> Response + Send + 'static,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address)?;
        let address = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("stripestore-metrics".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if flag.load(Ordering::Acquire) {
                        break;
                    }
                    match stream {
                        Ok(stream) => {
                            if let Err(err) = answer(stream, &handler) {
                                tracing::debug!(%err, "metrics client");
                            }
                        }
                        Err(err) => tracing::debug!(%err, "metrics accept"),
                    }
                }
            })?;
        tracing::info!(%address, "serving metrics at http://{address}/metrics");
        Ok(Self {
            address,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address (useful with port 0).
    #[must_use]
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(stream: TcpStream, handler: &dyn Fn(&Request<'_>) -> Response) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader
        .by_ref()
        .take(MAX_HEAD_BYTES as u64)
        .read_line(&mut request_line)?;
    // Drain the header lines (bounded), so the client sees a clean close.
    let mut seen = request_line.len();
    loop {
        let mut line = String::new();
        let n = reader
            .by_ref()
            .take((MAX_HEAD_BYTES.saturating_sub(seen)) as u64)
            .read_line(&mut line)?;
        seen += n;
        if n == 0 || line == "\r\n" || line == "\n" || seen >= MAX_HEAD_BYTES {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let response = handler(&Request {
        method,
        path,
        query,
    });
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.0 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    )?;
    stream.write_all(response.body.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(address: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn serves_metrics_and_refuses_the_rest() {
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), |request| {
            match (request.method, request.path) {
                ("GET", "/metrics") => Response::metrics("up 1\n".to_string()),
                ("GET", _) => Response::text(404, "not found\n"),
                _ => Response::text(405, "only GET\n"),
            }
        })
        .unwrap();
        let address = server.address();
        let ok = get(address, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nup 1\n"), "{ok}");
        assert!(get(address, "GET /other HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 404"));
        assert!(get(address, "POST /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 405"));
        // Garbage and an early hang-up do not stop the server.
        assert!(get(address, "\0\0\0\r\n\r\n").starts_with("HTTP/1.0 405"));
        drop(TcpStream::connect(address).unwrap());
        assert!(get(address, "GET /metrics HTTP/1.0\r\n\r\n").contains("up 1"));
        drop(server);
    }

    #[test]
    fn query_parameters() {
        let request = Request {
            method: "POST",
            path: "/scrub",
            query: "check-only&rate=100&x=",
        };
        assert_eq!(request.param("check-only"), Some(""));
        assert_eq!(request.param("rate"), Some("100"));
        assert_eq!(request.param("x"), Some(""));
        assert_eq!(request.param("y"), None);
    }
}
