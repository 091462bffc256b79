//! nbdkit servers on Unix sockets for the tests of pool members kept on NBD exports
//! (`tests/nbd_member.rs`, `tests/command/nbd_member.rs`).
//!
//! A test that needs nbdkit and cannot find it prints a SKIPPED line and returns, unless
//! `STRIPESTORE_REQUIRE_TOOLS=1`, where it fails (as `tests/command/nbd.rs` does).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether nbdkit can be run; otherwise SKIPPED (or a failure when tools are required).
pub fn have_nbdkit(test: &str) -> bool {
    let found = Command::new("nbdkit")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("STRIPESTORE_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{test}: nbdkit is not installed, and STRIPESTORE_REQUIRE_TOOLS=1");
        }
        println!("SKIPPED {test}: nbdkit is not installed");
    }
    found
}

/// One nbdkit process serving one export on a Unix socket; killed when dropped.
pub struct Nbdkit {
    child: Child,
    socket: PathBuf,
    args: Vec<String>,
}

impl Nbdkit {
    /// `nbdkit --exit-with-parent -f -U SOCKET ARGS...` (ARGS: filters, plugin and its
    /// parameters), once the socket accepts connections.
    pub fn start(socket: &Path, args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let child = spawn(socket, &args);
        let server = Self {
            child,
            socket: socket.to_path_buf(),
            args,
        };
        server.wait_ready();
        server
    }

    /// `nbd+unix:///EXPORT?socket=SOCKET` for this server.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// The process id (for `kill -STOP`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -SIG PID`; for `STOP`, returns once every thread of the server is stopped (the
    /// signal is delivered asynchronously: on a loaded machine a request sent right after
    /// `kill` returns could still be served).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.pid());
        if signal == "STOP" {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !self.all_threads_stopped() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "nbdkit {} did not stop",
                    self.pid()
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }

    /// Whether every thread of the server is in state `T` (stopped by a signal).
    fn all_threads_stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return false;
        };
        tasks.flatten().all(|task| {
            std::fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|stat| {
                    // The state follows the command name's closing parenthesis.
                    let after = stat.rsplit_once(')')?.1;
                    after.split_whitespace().next().map(|s| s == "T")
                })
                .unwrap_or(false)
        })
    }

    /// Kill it (SIGKILL: no goodbye to clients) and wait for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kill it and start the same server again on the same socket.
    pub fn restart(&mut self) {
        self.restart_with(&self.args.clone());
    }

    /// Kill it and start nbdkit with `args` on the same socket.
    pub fn restart_with(&mut self, args: &[String]) {
        self.kill();
        // A killed nbdkit cannot remove its socket; a new one would refuse to bind it.
        let _ = std::fs::remove_file(&self.socket);
        self.args = args.to_vec();
        self.child = spawn(&self.socket, &self.args);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "nbdkit {:?} did not listen on {}",
                self.args,
                self.socket.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn spawn(socket: &Path, args: &[String]) -> Child {
    Command::new("nbdkit")
        .args(["--exit-with-parent", "-f", "-U"])
        .arg(socket)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start nbdkit {args:?}: {e}"))
}

impl Drop for Nbdkit {
    fn drop(&mut self) {
        // A stopped server must be continued to die cleanly.
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.pid().to_string())
            .stderr(Stdio::null())
            .status();
        self.kill();
        let _ = std::fs::remove_file(&self.socket);
    }
}
