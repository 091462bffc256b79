//! The HTTP front end of a pool: its metrics (`GET /metrics`, the Prometheus exposition of
//! [`exposition`]), its status (`GET /status`, `GET /status.json`) for anyone who can reach the
//! address, and, when the operator turns it on, control: scrubs (`POST /scrub...`) and the
//! administration verbs (`admin.rs`: offline, online, replace, clear, spare add/remove). This is how
//! a pool held open by a long-running process (`stripestore serve`) is watched and scrubbed:
//! the device locks keep a second process from opening it.
//!
//! Owns: the routes and what each answers, [`Request`] and [`Response`]. Built on the public
//! `Pool` API only ([`Pool::handle`], [`PoolRef`]): it holds a handle that does not keep the
//! pool open, so a closed pool answers 503. Must not touch: pool internals (the pool never
//! depends on this module), the HTTP wire format (`server.rs`).

mod admin;
pub mod exposition;
mod server;

pub use admin::{percent_decode, percent_encode};

pub use exposition::render;
pub use server::HttpServer;

use crate::pool::{PoolHandle, PoolRef};
use crate::{Pool, ScrubOptions};

/// The pool's metrics in the Prometheus text exposition format (what `GET /metrics` answers).
#[must_use]
pub fn metrics_text(pool: &Pool) -> String {
    render(&pool.status(), &pool.device_io(), pool.request_metrics())
}

fn metrics_of(pool: &PoolRef) -> String {
    render(&pool.status(), &pool.device_io(), pool.request_metrics())
}

/// Serve [`metrics_text`] (`GET /metrics`) and the status (`GET /status`, `GET /status.json`)
/// over HTTP at `address` until the returned server is dropped. Use a loopback address unless
/// the network is trusted.
///
/// # Errors
/// The address cannot be bound.
pub fn serve_metrics(pool: &Pool, address: std::net::SocketAddr) -> std::io::Result<HttpServer> {
    serve(pool, address, false)
}

/// As [`serve_metrics`], and with `control` also scrub control: `POST /scrub`
/// (`?check-only`, `?rate=BYTES_PER_S`, `?resume`), `POST /scrub/pause`, `POST /scrub/cancel`.
/// Anyone who can reach the address can then start and stop scrubs (no data is readable or
/// writable through it). The server does not keep the pool open: once it is closed, every
/// route answers 503.
///
/// # Errors
/// The address cannot be bound.
pub fn serve(
    pool: &Pool,
    address: std::net::SocketAddr,
    control: bool,
) -> std::io::Result<HttpServer> {
    let pool = pool.handle();
    HttpServer::start(address, move |request| answer(&pool, control, request))
}

/// One request, as a route sees it.
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

const ROUTES: &str = "GET /metrics, GET /status, GET /status.json; with control on: \
POST /scrub[?check-only][&rate=BYTES_PER_S][&resume], POST /scrub/pause, POST /scrub/cancel, \
and the administration routes (see admin.rs)\n";

/// Answer one request.
#[must_use]
pub fn answer(pool: &PoolHandle, control: bool, request: &Request<'_>) -> Response {
    let Some(pool) = pool.upgrade() else {
        return Response::text(503, "the pool is closed\n");
    };
    match (request.method, request.path) {
        ("GET", "/metrics") => Response::metrics(metrics_of(&pool)),
        ("GET", "/status") => Response::text(200, pool.status().to_string()),
        ("GET", "/status.json") => json(200, &pool.status()),
        ("POST", "/scrub" | "/scrub/pause" | "/scrub/cancel") if !control => Response::text(
            403,
            "scrub control is off here (stripestore serve --control turns it on)\n",
        ),
        ("POST", path) if admin::is_admin_route(path) && !control => Response::text(
            403,
            "control is off here: start the server with `stripestore serve --metrics ADDRESS --control` to administer the pool through it\n",
        ),
        ("POST", path) if admin::is_admin_route(path) => admin::answer(&pool, request),
        ("POST", "/scrub") => start_scrub(&pool, request),
        ("POST", "/scrub/pause") => {
            if pool.pause_scrub() {
                json(200, &pool.scrub_progress())
            } else {
                Response::text(409, "no scrub is running\n")
            }
        }
        ("POST", "/scrub/cancel") => match pool.cancel_scrub() {
            Ok(true) => Response::text(200, "canceled\n"),
            Ok(false) => Response::text(409, "no scrub to cancel\n"),
            Err(err) => Response::text(500, format!("{err}\n")),
        },
        ("GET" | "POST", _) => Response::text(404, format!("not found; routes: {ROUTES}")),
        _ => Response::text(405, format!("method not allowed; routes: {ROUTES}")),
    }
}

/// `POST /scrub[?check-only][&rate=BYTES_PER_S][&resume]`.
fn start_scrub(pool: &PoolRef, request: &Request<'_>) -> Response {
    let rate = match request.param("rate").map(str::parse::<u64>) {
        None => None,
        Some(Ok(rate)) if rate > 0 => Some(rate),
        Some(_) => return Response::text(400, "rate must be a positive number of bytes/s\n"),
    };
    let options = ScrubOptions {
        check_only: flag(request, "check-only"),
        rate_bytes_per_s: rate,
        resume: flag(request, "resume"),
        ..ScrubOptions::default()
    };
    match pool.start_scrub(&options) {
        Ok(()) => json(202, &pool.scrub_progress()),
        Err(_) if pool.is_closing() => Response::text(503, "the pool is closing\n"),
        Err(err) => Response::text(409, format!("{err}\n")),
    }
}

/// A boolean query parameter: present (bare, or with any value but `false` or `0`).
fn flag(request: &Request<'_>, name: &str) -> bool {
    request
        .param(name)
        .is_some_and(|value| value != "false" && value != "0")
}

fn json(status: u16, value: &impl serde::Serialize) -> Response {
    match serde_json::to_string_pretty(value) {
        Ok(body) => Response::json(status, body + "\n"),
        Err(err) => Response::text(500, format!("cannot encode: {err}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{mem_devices, shared};
    use crate::{CreateOptions, PoolStatus};
    use std::sync::Arc;

    fn request<'a>(method: &'a str, path: &'a str, query: &'a str) -> Request<'a> {
        Request {
            method,
            path,
            query,
        }
    }

    fn pool() -> Pool {
        let mems = mem_devices(6, 4 << 20);
        let mut options = CreateOptions::new("rs:4+2".parse().unwrap());
        options.chunk_bytes = 4096;
        // A version-3 pool (its own engine): the test machinery's switch.
        crate::testing::allow_format_3_writes(true);
        options.format = crate::pool::FormatVersion::V3;
        options.open.background_rebuild = false;
        let pool = Pool::create(shared(&mems), vec![], &options).unwrap();
        pool.write_at(0, &vec![0x42; pool.size() as usize]).unwrap();
        pool.flush().unwrap();
        pool
    }

    #[test]
    fn status_for_everyone_control_only_when_enabled() {
        let pool = pool();
        let handle = pool.handle();
        let ask =
            |control, method, path, query| answer(&handle, control, &request(method, path, query));
        let status = ask(false, "GET", "/status.json", "");
        assert_eq!(status.status, 200);
        let parsed: PoolStatus = serde_json::from_str(&status.body).unwrap();
        assert_eq!(parsed.layout, "rs:4+2");
        let text = ask(false, "GET", "/status", "");
        assert!(text.body.contains("ONLINE"), "{}", text.body);
        assert!(ask(false, "GET", "/metrics", "")
            .body
            .contains("stripestore_"));
        assert_eq!(ask(false, "POST", "/scrub", "").status, 403);
        assert_eq!(ask(false, "POST", "/scrub/cancel", "").status, 403);
        assert!(pool.scrub_progress().is_none(), "nothing started");
        assert_eq!(ask(false, "GET", "/nothing", "").status, 404);
        assert_eq!(ask(false, "DELETE", "/status", "").status, 405);

        for (query, set) in [
            ("check-only", true),
            ("check-only=1", true),
            ("check-only=false", false),
            ("check-only=0", false),
            ("", false),
        ] {
            assert_eq!(
                flag(&request("POST", "/scrub", query), "check-only"),
                set,
                "{query}"
            );
        }
        assert_eq!(ask(true, "POST", "/scrub", "rate=fast").status, 400);
        assert_eq!(ask(true, "POST", "/scrub", "rate=0").status, 400);
        assert_eq!(ask(true, "POST", "/scrub/pause", "").status, 409);
        let started = ask(true, "POST", "/scrub", "check-only&rate=1048576");
        assert_eq!(started.status, 202, "{}", started.body);
        assert_eq!(
            ask(true, "POST", "/scrub", "").status,
            409,
            "one scrub at a time"
        );
        assert_eq!(ask(true, "POST", "/scrub/pause", "").status, 200);
        let report = pool.wait_scrub().unwrap().unwrap();
        assert_eq!(report.end, crate::ScrubEnd::Paused);
        assert!(!report.repair, "check-only was passed on");
        assert!(pool.scrub_progress().is_some_and(|p| p.paused));
        assert_eq!(ask(true, "POST", "/scrub/cancel", "").status, 200);
        assert!(pool.scrub_progress().is_none());
        assert_eq!(ask(true, "POST", "/scrub/cancel", "").status, 409);
        drop(pool);
        let closed = answer(&handle, true, &request("GET", "/status", ""));
        assert_eq!(closed.status, 503);
    }

    /// A device whose reads wait while its gate is closed (writes go through).
    #[derive(Debug)]
    struct Gated {
        inner: Arc<crate::device::MemDevice>,
        closed: Arc<std::sync::atomic::AtomicBool>,
    }

    impl crate::device::Device for Gated {
        fn read_at(
            &self,
            offset: u64,
            buf: &mut [u8],
        ) -> std::result::Result<(), crate::device::DeviceError> {
            while self.closed.load(std::sync::atomic::Ordering::Acquire) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            self.inner.read_at(offset, buf)
        }
        fn write_at(
            &self,
            offset: u64,
            buf: &[u8],
        ) -> std::result::Result<(), crate::device::DeviceError> {
            self.inner.write_at(offset, buf)
        }
        fn flush(&self) -> std::result::Result<(), crate::device::DeviceError> {
            self.inner.flush()
        }
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn name(&self) -> String {
            self.inner.name()
        }
    }

    /// Opens the gate when dropped, so a failing assertion cannot leave the scrub thread (and
    /// the pool's close, which joins it) waiting forever.
    struct OpenOnDrop(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            self.0.store(false, std::sync::atomic::Ordering::Release);
        }
    }

    /// `scrub --url` decides the scrub ended when the status stops saying `running`: a scrub
    /// must be reported running from the moment `POST /scrub` answers, not only after its
    /// first step (256 slots of every device, seconds on a large pool).
    #[test]
    fn a_scrub_started_over_http_is_running_before_its_first_step_is_read() {
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let devices: Vec<crate::device::SharedDevice> = mem_devices(6, 4 << 20)
            .into_iter()
            .map(|inner| {
                Arc::new(Gated {
                    inner,
                    closed: Arc::clone(&closed),
                }) as crate::device::SharedDevice
            })
            .collect();
        let mut options = CreateOptions::new("rs:4+2".parse().unwrap());
        options.chunk_bytes = 4096;
        // A version-3 pool (its own engine): the test machinery's switch.
        crate::testing::allow_format_3_writes(true);
        options.format = crate::pool::FormatVersion::V3;
        options.open.background_rebuild = false;
        let pool = Pool::create(devices, vec![], &options).unwrap();
        pool.write_at(0, &vec![0x42; pool.size() as usize]).unwrap();
        pool.flush().unwrap();
        let gate = OpenOnDrop(Arc::clone(&closed));
        closed.store(true, std::sync::atomic::Ordering::Release);
        let handle = pool.handle();
        let ask = |method, path| answer(&handle, true, &request(method, path, ""));

        let started = ask("POST", "/scrub");
        assert_eq!(started.status, 202, "{}", started.body);
        let progress: Option<crate::ScrubProgress> = serde_json::from_str(&started.body).unwrap();
        assert!(
            progress.as_ref().is_some_and(|p| p.running && !p.paused),
            "the answer to POST /scrub shows the scrub it started: {progress:?}"
        );
        let status: PoolStatus = serde_json::from_str(&ask("GET", "/status.json").body).unwrap();
        assert!(
            status
                .scrub
                .as_ref()
                .is_some_and(|p| p.running && !p.paused),
            "running while its first step is read: {:?}",
            status.scrub
        );
        assert_eq!(
            progress.map(|p| p.started_unix_secs),
            status.scrub.map(|p| p.started_unix_secs)
        );

        drop(gate);
        let report = pool.wait_scrub().unwrap().unwrap();
        assert_eq!(report.end, crate::ScrubEnd::Completed);
        let status: PoolStatus = serde_json::from_str(&ask("GET", "/status.json").body).unwrap();
        assert!(status.scrub.is_none() && status.last_scrub.is_some());
    }

    /// The HTTP thread may hold the pool (an upgraded handle) while the pool is closed: a
    /// `POST /scrub` answered then must not start a scrub (the pool's own test checks no
    /// thread is left behind).
    #[test]
    fn no_scrub_starts_over_http_once_the_pool_is_closed() {
        let pool = pool();
        let handle = pool.handle();
        let held = handle.upgrade().unwrap(); // as the HTTP thread's upgrade would
        pool.close().unwrap();
        let late = answer(&handle, true, &request("POST", "/scrub", ""));
        assert_eq!(late.status, 503, "{}", late.body);
        assert!(held.scrub_progress().is_none());
        drop(held);
        let closed = answer(&handle, true, &request("GET", "/metrics", ""));
        assert_eq!(closed.status, 503, "{}", closed.body);
    }
}
