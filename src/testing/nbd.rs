//! The NBD fuzz harness, shared by the fuzz target (`fuzz/fuzz_targets/nbd_request.rs`) and the
//! stable-Rust test that replays stored inputs (`tests/command/nbd.rs`), so both run the same
//! checks.

use crate::nbd::proto::{self, cmd, Action};
use crate::nbd::{serve_stream, ExportConfig};
use crate::{CreateOptions, Layout, Pool};
use std::sync::atomic::AtomicBool;

/// A small pool for the harness: `rs:2+1`, 4 KiB chunks, three 1 MiB in-memory devices (a
/// small volume keeps the before/after comparison cheap).
///
/// # Panics
/// If the pool cannot be created (a bug, not an input).
#[must_use]
pub fn nbd_fuzz_pool() -> Pool {
    let layout: Layout = "rs:2+1".parse().unwrap_or(Layout::Mirror { copies: 2 });
    let mut options = CreateOptions::new(layout);
    options.chunk_bytes = 4096;
    // A version-3 pool (its own engine): the test machinery's switch.
    crate::testing::allow_format_3_writes(true);
    options.format = crate::pool::FormatVersion::V3;
    options.open.background_rebuild = false;
    let devices = super::mem_devices(3, 1 << 20);
    match Pool::create(super::shared(&devices), vec![], &options) {
        Ok(pool) => pool,
        Err(err) => panic!("fuzz pool: {err}"),
    }
}

/// The same on format version 4 (`rs:2+1`, 16 KiB chunks, the test minimums): its small
/// writes are queued by the server (`Pool::write_queued`), carried by the pool's leader on the
/// connection's leading thread and answered by its answering thread.
///
/// # Panics
/// If the pool cannot be created (a bug, not an input).
#[must_use]
pub fn nbd_fuzz_pool_v4() -> Pool {
    let layout: Layout = "rs:2+1".parse().unwrap_or(Layout::Mirror { copies: 2 });
    let mut options = CreateOptions::new(layout);
    options.chunk_bytes = 16384;
    options.format = crate::pool::FormatVersion::V4(super::small_v4());
    options.open.background_rebuild = false;
    let devices = super::mem_devices(3, 8 << 20);
    match Pool::create(super::shared(&devices), vec![], &options) {
        Ok(pool) => pool,
        Err(err) => panic!("fuzz pool (v4): {err}"),
    }
}

/// Run one input through the protocol decoders and through a whole server connection.
///
/// The first byte picks how the rest is fed: even, the client flags and an `NBD_OPT_GO` for
/// the default export are put in front, so the rest is transmission-phase requests; odd, the
/// rest is the whole client stream from the client flags on. Checks:
/// * decoders never panic, and whatever decodes re-encodes to the same bytes;
/// * [`proto::classify`] only lets through requests inside the export and within the maximum;
/// * after the connection, the volume differs from before only inside the ranges of `WRITE`,
///   `WRITE_ZEROES` and `TRIM` requests of the input (no byte is written outside a request's
///   range).
///
/// # Panics
/// When a check fails: that is the finding.
pub fn exercise_nbd_input(data: &[u8], pool: &Pool) {
    let config = ExportConfig::for_pool(pool, "fuzz", false);
    check_decoders(data, &config);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut stream = Vec::with_capacity(rest.len() + 64);
    let prefixed = mode % 2 == 0;
    if prefixed {
        stream.extend_from_slice(&proto::CLIENT_FIXED_NEWSTYLE.to_be_bytes());
        let go = proto::encode_info_request(b"", &[]);
        stream.extend_from_slice(&proto::encode_option(proto::opt::GO, &go));
    }
    stream.extend_from_slice(rest);
    let size = usize::try_from(pool.size()).unwrap_or(0);
    let mut before = vec![0u8; if prefixed { size } else { 0 }];
    let readable = pool.read_at(0, &mut before).is_ok();
    let stop = AtomicBool::new(false);
    let mut replies = Vec::new();
    let outcome = serve_stream(&stream[..], &mut replies, pool, &config, &stop);
    assert!(outcome.is_ok(), "in-memory transport failed: {outcome:?}");
    assert!(
        replies.starts_with(&proto::encode_greeting(
            proto::HANDSHAKE_FIXED_NEWSTYLE | proto::HANDSHAKE_NO_ZEROES
        )),
        "the server must greet first"
    );
    if !(prefixed && readable) {
        return;
    }
    let allowed = write_ranges(rest);
    let mut after = vec![0u8; size];
    if pool.read_at(0, &mut after).is_err() {
        return;
    }
    // Compare 4 KiB pieces as slices first (one memcmp each: byte loops are slow under the
    // fuzzer's comparison tracing), bytes only inside a piece that changed.
    let piece = 4096;
    for (index, (old, new)) in before.chunks(piece).zip(after.chunks(piece)).enumerate() {
        if old == new {
            continue;
        }
        for (within, (a, b)) in old.iter().zip(new).enumerate() {
            let at = (index * piece + within) as u64;
            assert!(
                a == b || allowed.iter().any(|r| r.contains(&at)),
                "byte {at} changed outside every write request's range"
            );
        }
    }
}

fn check_decoders(data: &[u8], config: &ExportConfig) {
    if let Ok(request) = proto::decode_request(data) {
        assert_eq!(
            &proto::encode_request(&request)[..],
            &data[..proto::REQUEST_BYTES]
        );
        // As after a full negotiation, so block status requests get through too.
        let session = proto::Session {
            structured_replies: true,
            allocation_context: Some(proto::ALLOCATION_CONTEXT_ID),
        };
        match proto::classify(&request, &config.export, &session) {
            Action::Read { offset, length }
            | Action::Write { offset, length, .. }
            | Action::WriteZeroes { offset, length, .. }
            | Action::Trim { offset, length, .. }
            | Action::BlockStatus { offset, length, .. } => {
                let end = offset.checked_add(u64::from(length));
                assert!(end.is_some_and(|end| end <= config.export.size_bytes));
                assert!(request.command != cmd::WRITE || length <= config.export.block_max_bytes);
            }
            Action::Flush | Action::Disconnect | Action::Reject { .. } => {}
        }
    }
    if let Ok(header) = proto::decode_option_header(data) {
        assert!(header.length <= proto::MAX_OPTION_BYTES);
    }
    if let Ok(request) = proto::decode_info_request(data) {
        assert_eq!(
            proto::encode_info_request(&request.name, &request.requests),
            data
        );
    }
    if let Ok(request) = proto::decode_meta_context_request(data) {
        let queries: Vec<&[u8]> = request.queries.iter().map(Vec::as_slice).collect();
        assert_eq!(
            proto::encode_meta_context_request(&request.name, &queries),
            data
        );
    }
    if let Ok(flags) = proto::decode_greeting(data) {
        assert_eq!(
            &proto::encode_greeting(flags)[..],
            &data[..proto::GREETING_BYTES]
        );
    }
}

/// The byte ranges named by the `WRITE`, `WRITE_ZEROES` and `TRIM` requests of a transmission-phase
/// stream (walking headers and skipping write payloads, as the server reads them).
fn write_ranges(mut stream: &[u8]) -> Vec<std::ops::Range<u64>> {
    let mut ranges = Vec::new();
    while let Ok(request) = proto::decode_request(stream) {
        stream = &stream[proto::REQUEST_BYTES..];
        if matches!(request.command, cmd::WRITE | cmd::WRITE_ZEROES | cmd::TRIM) {
            let end = request.offset.saturating_add(u64::from(request.length));
            ranges.push(request.offset..end);
        }
        if request.has_payload() {
            let skip = usize::try_from(request.length).unwrap_or(usize::MAX);
            stream = stream.get(skip..).unwrap_or(&[]);
        }
    }
    ranges
}

/// An NBD server on 127.0.0.1 (a free port), running on a thread of its own: for tests and
/// benchmarks. Stopped and joined by [`BackgroundServer::stop`] or on drop.
#[derive(Debug)]
pub struct BackgroundServer {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    stop: crate::nbd::StopHandle,
    thread: Option<std::thread::JoinHandle<std::io::Result<crate::nbd::ServeReport>>>,
}

impl BackgroundServer {
    /// Bind and start serving `pool`.
    ///
    /// # Errors
    /// Binding or starting the thread failed.
    pub fn start(
        pool: std::sync::Arc<Pool>,
        options: crate::nbd::ServeOptions,
    ) -> std::io::Result<Self> {
        use crate::nbd::{Listen, Server};
        let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let server = Server::bind(&Listen::Tcp(any_port), pool, options)?;
        let addr = match server.local_addr()? {
            Listen::Tcp(addr) => addr,
            Listen::Unix(_) => any_port,
        };
        let stop = server.stop_handle();
        let thread = std::thread::Builder::new()
            .name("nbd-server".into())
            .spawn(move || server.run())?;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// `nbd://ADDR`.
    #[must_use]
    pub fn uri(&self) -> String {
        format!("nbd://{}", self.addr)
    }

    /// Stop, wait for every connection to finish, and return what the server reported.
    ///
    /// # Errors
    /// The server failed, or its thread panicked.
    pub fn stop(mut self) -> std::io::Result<crate::nbd::ServeReport> {
        self.join()
    }

    fn join(&mut self) -> std::io::Result<crate::nbd::ServeReport> {
        self.stop.stop();
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the NBD server thread panicked"))),
            None => Ok(crate::nbd::ServeReport::default()),
        }
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        if let Err(err) = self.join() {
            tracing::error!(%err, "NBD test server failed");
        }
    }
}
