//! A pool served over NBD on a Unix socket for the length of one measurement: what the benches
//! that drive the mounted path with fio (`bench --nbd`, `bench-cold-map --nbd`,
//! `bench-smallwrite --nbd`, the server-cost section) start and stop around each fio run.
//!
//! Owns: the server's thread (named, so a profile tells it apart) and its stop. Knows nothing
//! of what is measured.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use stripestore::nbd::{Listen, ServeOptions, ServeReport, Server, StopHandle};
use stripestore::Pool;

/// A server running on its own thread.
pub struct Served {
    stop: StopHandle,
    thread: JoinHandle<std::io::Result<ServeReport>>,
}

impl Served {
    /// Serve `pool` (default options) on `socket` (a stale socket file there is removed first)
    /// from a thread called `name`.
    ///
    /// # Errors
    /// The socket cannot be bound or the thread started.
    pub fn start(
        pool: &Arc<Pool>,
        socket: &Path,
        name: &str,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let _ = std::fs::remove_file(socket);
        let server = Server::bind(
            &Listen::Unix(socket.to_path_buf()),
            Arc::clone(pool),
            ServeOptions::default(),
        )?;
        let stop = server.stop_handle();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || server.run())?;
        Ok(Self { stop, thread })
    }

    /// Stop the server and wait for it: the requests it read are answered first.
    ///
    /// # Errors
    /// What the server ended with; a panic of its thread is resumed here.
    pub fn finish(self) -> Result<ServeReport, Box<dyn std::error::Error>> {
        self.stop.stop();
        match self.thread.join() {
            Ok(report) => Ok(report?),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}
