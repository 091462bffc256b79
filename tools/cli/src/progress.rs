//! Progress of a long operation on stderr: an `indicatif` bar on a terminal, a plain line every
//! 25% otherwise (so logs of CI runs and captured output stay short and readable).
//!
//! Owns: how progress is shown and the whole-operation rate [`Progress::finish`] returns. Must
//! not touch: stdout (scripts parse it), the pool (callers pass byte counts).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;
use stripestore::types::human_bytes;

/// The bar drawn on a terminal: label, bar, percentage, rate, time left.
const TEMPLATE: &str = "  {prefix:<22} [{bar:30}] {percent:>3}%  {binary_bytes_per_sec}  ETA {eta}";

/// Progress of one long operation measured in bytes.
pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    /// Work already done when tracking started (a resumed operation): not part of the rate.
    initial: Option<u64>,
    started: Instant,
    /// The bar, on a terminal; `None`: a line every quarter.
    bar: Option<ProgressBar>,
    last_quarter: u64,
}

impl Progress {
    /// Start tracking `total` bytes of work.
    pub fn new(label: &str, total: u64) -> Self {
        let total = total.max(1);
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
                bar.set_style(style.progress_chars("#>-"));
            }
            bar.set_prefix(label.to_string());
            bar
        });
        Self {
            label: label.to_string(),
            total,
            done: 0,
            initial: None,
            started: Instant::now(),
            bar,
            last_quarter: 0,
        }
    }

    /// Change the amount of work (an estimate that was refined).
    pub fn set_total(&mut self, total: u64) {
        self.total = total.max(self.done).max(1);
        if let Some(bar) = &self.bar {
            bar.set_length(self.total);
        }
    }

    /// Set the finished work to `done` bytes and redraw. The first call sets the starting
    /// point (work done before, e.g. by an interrupted run), which the rate does not count.
    pub fn set_done(&mut self, done: u64) {
        if self.initial.is_none() {
            self.initial = Some(done);
            self.last_quarter = done * 4 / self.total;
            if let Some(bar) = &self.bar {
                bar.set_position(done.min(self.total));
                bar.reset_eta();
            }
        }
        self.advance(done.saturating_sub(self.done));
    }

    /// Add `bytes` of finished work and redraw.
    pub fn advance(&mut self, bytes: u64) {
        self.done = (self.done + bytes).min(self.total);
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
            return;
        }
        let quarter = self.done * 4 / self.total;
        if quarter > self.last_quarter {
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
        if let Some(bar) = &self.bar {
            bar.finish();
            // indicatif leaves the cursor on the bar's line; what follows starts on its own.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_is_valid() {
        assert!(ProgressStyle::with_template(TEMPLATE).is_ok());
    }
}
