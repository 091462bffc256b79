//! The HTTP server under the endpoint: accepts connections, parses requests and writes
//! responses, handing each request to a handler as a plain [`Request`] and sending back its
//! [`Response`].
//!
//! Served by `tiny_http` 0.12: the most used synchronous HTTP/1.x server crate for Rust, safe
//! code, no async runtime, small enough to read, so the untrusted bytes are parsed by a widely
//! used parser instead of ours. Its limits, accepted for a loopback or trusted-network
//! monitoring address (`serve` warns when it is not loopback), and weaker than the
//! hand-written server it replaces (one thread, 8 KiB request heads, 5 s timeouts): every
//! connection gets a thread of tiny_http's pool; there is no read timeout, so an HTTP/1.1
//! connection stays open until the client closes it; a request head is not bounded in size
//! (tiny-http issue #56, pull request #232 still open). HTTP/1.0 requests, as `status --url`
//! sends, are answered and closed. Garbage in a request line gets tiny_http's own 400.
//!
//! Owns: the listening socket and the one thread that answers requests, one at a time; each
//! answer is written by a short-lived thread of its own, so a client that does not read (there
//! is no write timeout either) holds neither the other clients nor the server's shutdown. Must
//! not touch: the pool (the handler given to [`HttpServer::start`] decides every answer),
//! routes.

use super::{Request, Response};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The running HTTP server; stops when dropped.
pub struct HttpServer {
    address: SocketAddr,
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
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
        // Bound here, so a bind failure is the socket's own error (address in use, ...).
        let listener = TcpListener::bind(address)?;
        let address = listener.local_addr()?;
        let server = tiny_http::Server::from_listener(listener, None)
            .map_err(|err| std::io::Error::other(err.to_string()))?;
        let server = Arc::new(server);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let server = Arc::clone(&server);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("stripestore-http".into())
                .spawn(move || serve(&server, &stop, &handler))?
        };
        tracing::info!(%address, "serving metrics at http://{address}/metrics");
        Ok(Self {
            address,
            server,
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

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answer requests until `stop` is set.
fn serve(
    server: &tiny_http::Server,
    stop: &AtomicBool,
    handler: &dyn Fn(&Request<'_>) -> Response,
) {
    while !stop.load(Ordering::Acquire) {
        match server.recv() {
            Ok(request) => {
                if let Err(err) = answer(request, handler) {
                    tracing::debug!(%err, "http client");
                }
            }
            Err(err) if stop.load(Ordering::Acquire) => {
                tracing::debug!(%err, "http server stopping");
            }
            Err(err) => {
                // The accept thread ended (tiny_http stops accepting after an accept error).
                tracing::warn!(%err, "http server: cannot accept connections any more");
                return;
            }
        }
    }
}

/// Answer one request: the handler runs here, the reply is written by a thread of its own.
fn answer(
    request: tiny_http::Request,
    handler: &dyn Fn(&Request<'_>) -> Response,
) -> std::io::Result<()> {
    let url = request.url();
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let response = handler(&Request {
        method: request.method().as_str(),
        path,
        query,
    });
    let mut reply = tiny_http::Response::from_string(response.body)
        .with_status_code(tiny_http::StatusCode(response.status));
    match tiny_http::Header::from_bytes(&b"Content-Type"[..], response.content_type.as_bytes()) {
        Ok(header) => reply.add_header(header),
        Err(()) => tracing::warn!(
            content_type = response.content_type,
            "not a valid header value"
        ),
    }
    let (sender, receiver) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("stripestore-http-reply".into())
        .spawn(move || {
            if let Ok((request, reply)) = receiver.recv() {
                let request: tiny_http::Request = request;
                if let Err(err) = request.respond(reply) {
                    tracing::debug!(%err, "http client");
                }
            }
        });
    match spawned {
        Ok(_) => sender
            .send((request, reply))
            .map_err(|_| std::io::Error::other("the reply thread ended early")),
        // No thread: write it here rather than not at all.
        Err(_) => request.respond(reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn get(address: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn serves_metrics_and_refuses_the_rest() {
        let server = HttpServer::start("127.0.0.1:0".parse().unwrap(), |request| {
            match (request.method, request.path) {
                ("GET", "/metrics") => Response::metrics("up 1\n".to_string()),
                ("GET", _) => Response::text(404, "not found\n"),
                _ => Response::text(405, "only GET\n"),
            }
        })
        .unwrap();
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
        // Garbage and an early hang-up do not stop the server.
        assert!(get(address, "\0\0\0\r\n\r\n").starts_with("HTTP/1.1 400"));
        drop(TcpStream::connect(address).unwrap());
        assert!(get(address, "GET /metrics HTTP/1.0\r\n\r\n").contains("up 1"));
        drop(server);
    }

    /// A client that asks and never reads a large answer holds neither the next client nor the
    /// server's shutdown.
    #[test]
    fn a_client_that_does_not_read_blocks_nobody() {
        let server = HttpServer::start("127.0.0.1:0".parse().unwrap(), |request| {
            match request.path {
                "/big" => Response::text(200, "x".repeat(64 << 20)),
                _ => Response::text(200, "small\n"),
            }
        })
        .unwrap();
        let address = server.address();
        let mut stuck = TcpStream::connect(address).unwrap();
        stuck.write_all(b"GET /big HTTP/1.0\r\n\r\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(get(address, "GET /small HTTP/1.0\r\n\r\n").ends_with("small\n"));
        drop(server);
        drop(stuck);
    }
}
