//! A minimal progress line on stderr: a redrawn bar on a terminal, a line every 25% otherwise
//! (so logs of CI runs stay short).

use std::io::{IsTerminal, Write};
use std::time::Instant;
use stripestore::types::human_bytes;

/// Progress of one long operation measured in bytes.
pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    /// Work already done when tracking started (a resumed operation): not part of the rate.
    initial: Option<u64>,
    started: Instant,
    tty: bool,
    last_quarter: u64,
}

impl Progress {
    /// Start tracking `total` bytes of work.
    pub fn new(label: &str, total: u64) -> Self {
        Self {
            label: label.to_string(),
            total: total.max(1),
            done: 0,
            initial: None,
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            last_quarter: 0,
        }
    }

    /// Change the amount of work (an estimate that was refined).
    pub fn set_total(&mut self, total: u64) {
        self.total = total.max(self.done).max(1);
    }

    /// Set the finished work to `done` bytes and redraw. The first call sets the starting
    /// point (work done before, e.g. by an interrupted run), which the rate does not count.
    pub fn set_done(&mut self, done: u64) {
        if self.initial.is_none() {
            self.initial = Some(done);
            self.last_quarter = done * 4 / self.total;
        }
        self.advance(done.saturating_sub(self.done));
    }

    /// Add `bytes` of finished work and redraw.
    pub fn advance(&mut self, bytes: u64) {
        self.done = (self.done + bytes).min(self.total);
        let quarter = self.done * 4 / self.total;
        if self.tty {
            let width = 30;
            let filled = usize::try_from(self.done * width / self.total).unwrap_or(0);
            let bar: String =
                "#".repeat(filled) + &"-".repeat(usize::try_from(width).unwrap_or(0) - filled);
            eprint!(
                "\r  {:<22} [{bar}] {:>5.1}%  {}/s  {}  ",
                self.label,
                self.percent(),
                human_bytes(self.rate()),
                self.eta()
            );
            let _ = std::io::stderr().flush();
        } else if quarter > self.last_quarter {
            self.last_quarter = quarter;
            eprintln!(
                "  {:<22} {:>5.1}%  {}/s  {}",
                self.label,
                self.percent(),
                human_bytes(self.rate()),
                self.eta()
            );
        }
    }

    /// Finish the line; returns bytes per second over the whole operation.
    pub fn finish(self) -> u64 {
        if self.tty {
            eprintln!();
        }
        self.rate()
    }

    #[allow(clippy::cast_precision_loss)]
    fn percent(&self) -> f64 {
        self.done as f64 * 100.0 / self.total as f64
    }

    fn rate(&self) -> u64 {
        stripestore::types::bytes_per_s(
            self.done.saturating_sub(self.initial.unwrap_or(0)),
            self.started.elapsed(),
        )
    }

    /// "ETA 1m23s", or empty when there is no rate yet.
    fn eta(&self) -> String {
        let rate = self.rate();
        if rate == 0 || self.done >= self.total {
            return String::new();
        }
        let secs = (self.total - self.done) / rate;
        format!("ETA {}m{:02}s", secs / 60, secs % 60)
    }
}
