//! nbdkit as a reference server for the benchmarks: started on a Unix socket, stopped on drop.
//!
//! Owns: the nbdkit child processes the benchmarks start (by their handles, never by name)
//! and the wait for their sockets. Used by `bench --nbd` (its `memory` plugin: the server's
//! own cost), `bench-members` (its `file` plugin serving members) and `bench-smallwrite
//! --nbd` (its `file` plugin on one member file: what the mounted path can carry at all).
//! Must not measure anything itself.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An nbdkit child serving one plugin on a Unix socket; killed and reaped on drop.
pub struct Nbdkit(Child);

impl Nbdkit {
    /// Start `nbdkit -f --exit-with-parent -U socket PLUGIN ARGS...` and wait (at most 10 s)
    /// until the socket accepts a connection.
    ///
    /// # Errors
    /// nbdkit cannot be run, or its socket does not accept within 10 s.
    pub fn start(socket: &Path, plugin: &[OsString]) -> Result<Self, String> {
        let _ = std::fs::remove_file(socket);
        let child = Command::new("nbdkit")
            .args(["-f", "--exit-with-parent", "-U"])
            .arg(socket)
            .args(plugin)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("nbdkit: {e}"))?;
        let kit = Nbdkit(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "nbdkit did not accept on {} within 10 s",
                    socket.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(kit)
    }
}

impl Drop for Nbdkit {
    fn drop(&mut self) {
        // Our own child, by its handle; it may have exited already.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nbdkit's version line, or why it cannot be run.
///
/// # Errors
/// nbdkit is not installed.
pub fn version() -> Result<String, String> {
    let out = Command::new("nbdkit")
        .arg("--version")
        .output()
        .map_err(|err| format!("nbdkit is not installed ({err})"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
