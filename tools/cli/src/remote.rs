//! `--url`: `status`, `check` and `scrub` against a pool another process holds open
//! (`stripestore serve --metrics ADDR [--control]`), through its HTTP endpoint. The device locks
//! keep a second process from opening a served pool, so this is how an operator watches it
//! and scrubs it at night.

use super::scrub::{exit_code, render, ScrubArgs};
use super::Progress;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use stripestore::format::ScrubOutcome;
use stripestore::{PoolStatus, ScrubEnd, ScrubReport};

/// How long to wait for the endpoint to answer one request.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How often a scrub's progress is polled.
const POLL: Duration = Duration::from_millis(500);

type Failure = Box<dyn std::error::Error>;

/// A pool's HTTP endpoint, from `http://HOST:PORT[/...]` or `HOST:PORT`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    address: String,
}

impl Endpoint {
    /// Parse `url`.
    ///
    /// # Errors
    /// A message for anything but plain `http://` with a host and port.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        if rest.contains("://") {
            return Err(format!("{url}: only http:// endpoints are supported"));
        }
        let address = rest.split('/').next().unwrap_or("");
        if !address.contains(':') {
            return Err(format!(
                "{url}: give host and port, e.g. http://127.0.0.1:9640"
            ));
        }
        Ok(Self {
            address: address.to_string(),
        })
    }

    /// One request; the status code and body.
    ///
    /// # Errors
    /// The endpoint cannot be reached or answers something that is not HTTP.
    pub fn request(&self, method: &str, path: &str) -> Result<(u16, String), Failure> {
        let fail = |e: &dyn std::fmt::Display| format!("http://{}{path}: {e}", self.address);
        let mut stream = TcpStream::connect(&self.address).map_err(|e| fail(&e))?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
            self.address
        )
        .map_err(|e| fail(&e))?;
        let mut response = String::new();
        stream.read_to_string(&mut response).map_err(|e| fail(&e))?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| fail(&"not an HTTP response"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| fail(&"not an HTTP response"))?;
        Ok((status, body.to_string()))
    }

    /// `request`, failing unless the status is one of `ok` (the body says why).
    fn expect(&self, method: &str, path: &str, ok: &[u16]) -> Result<String, Failure> {
        let (status, body) = self.request(method, path)?;
        if ok.contains(&status) {
            Ok(body)
        } else {
            Err(format!(
                "http://{}{path}: {status}: {}",
                self.address,
                body.trim_end()
            )
            .into())
        }
    }

    /// The pool's status.
    ///
    /// # Errors
    /// Unreachable, or not a pool's status.
    pub fn status(&self) -> Result<PoolStatus, Failure> {
        let body = self.expect("GET", "/status.json", &[200])?;
        serde_json::from_str(&body)
            .map_err(|e| format!("http://{}/status.json: {e}", self.address).into())
    }

    /// The pool's status as `stripestore status` prints it (`json`: as JSON).
    ///
    /// # Errors
    /// Unreachable, or an error answer.
    pub fn status_text(&self, json: bool) -> Result<String, Failure> {
        self.expect("GET", if json { "/status.json" } else { "/status" }, &[200])
    }
}

/// An administration verb (`offline`, `online`, `replace`, `clear`, `spare add|remove` with
/// `--url`) done by the process serving the pool: `POST route?name=value...` (values
/// percent-encoded, `force` added when set); prints the answer (what was done, then the
/// pool's status).
///
/// # Errors
/// Unreachable endpoint, control not enabled (403, said so), or the pool refused (the
/// serving process's message).
pub fn admin(
    url: &str,
    route: &str,
    params: &[(&str, Option<String>)],
    force: bool,
) -> Result<(), Failure> {
    let endpoint = Endpoint::parse(url)?;
    let mut query: Vec<String> = params
        .iter()
        .filter_map(|(name, value)| {
            value
                .as_ref()
                .map(|v| format!("{name}={}", stripestore::endpoint::percent_encode(v)))
        })
        .collect();
    if force {
        query.push("force".to_string());
    }
    let path = if query.is_empty() {
        route.to_string()
    } else {
        format!("{route}?{}", query.join("&"))
    };
    let (status, body) = endpoint.request("POST", &path)?;
    match status {
        200 => {
            print!("{body}");
            Ok(())
        }
        403 => Err(format!("{url} refuses administration: {}", body.trim_end()).into()),
        _ => Err(body.trim_end().to_string().into()),
    }
}

/// A member or spare name for the serving process: a path that exists here is sent absolute
/// (that process may run in another directory); an index, UUID or other name as it is.
#[must_use]
pub fn name(name: &str) -> String {
    let path = std::path::Path::new(name);
    if path.exists() {
        absolute(path)
    } else {
        name.to_string()
    }
}

/// `path` as an absolute path (the serving process may run in another directory).
#[must_use]
pub fn absolute(path: &std::path::Path) -> String {
    if stripestore::device::is_uri_path(path) {
        // An NBD member's URI is the same from any directory.
        return path.display().to_string();
    }
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// `scrub --url`: start a scrub in the serving process (or cancel one), follow it with a
/// progress bar, print the report and return the exit code, as `scrub` does on a pool it opens.
///
/// # Errors
/// Unreachable endpoint, control not enabled, a scrub already running.
pub fn scrub(endpoint: &Endpoint, args: &ScrubArgs) -> Result<u8, Failure> {
    if args.cancel {
        let (status, body) = endpoint.request("POST", "/scrub/cancel")?;
        match status {
            200 => eprintln!("scrub: canceled"),
            409 => eprintln!("scrub: no scrub to cancel"),
            _ => return Err(format!("scrub --cancel: {status}: {}", body.trim_end()).into()),
        }
        return Ok(super::scrub::exit::CLEAN);
    }
    let mut query = Vec::new();
    if args.check_only {
        query.push("check-only".to_string());
    }
    if let Some(rate) = args.rate {
        query.push(format!("rate={rate}"));
    }
    if args.resume {
        query.push("resume".to_string());
    }
    let path = if query.is_empty() {
        "/scrub".to_string()
    } else {
        format!("/scrub?{}", query.join("&"))
    };
    let started = endpoint.expect("POST", &path, &[202])?;
    let started: Option<stripestore::ScrubProgress> = serde_json::from_str(&started)?;
    let started_at = started.as_ref().map_or(0, |p| p.started_unix_secs);
    let mut bar: Option<Progress> = None;
    let began = Instant::now();
    let status = loop {
        std::thread::sleep(POLL);
        let status = endpoint.status()?;
        match &status.scrub {
            Some(progress) if progress.running => {
                let bar =
                    bar.get_or_insert_with(|| Progress::new("scrubbing", progress.total_bytes));
                bar.set_total(progress.total_bytes);
                bar.set_done(progress.scanned_bytes);
            }
            // Paused (by someone else), or finished: its summary is recorded.
            _ => break status,
        }
        if began.elapsed() > Duration::from_secs(7 * 24 * 3600) {
            return Err("scrub: still running after a week; stopped following it".into());
        }
    };
    if let Some(bar) = bar {
        bar.finish();
    }
    let report = report_of(&status, started_at)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(exit_code(&report))
}

/// The report of the scrub that started at `started_at`, from the status once it stopped
/// running: paused, or finished (completed or canceled) with its summary recorded.
///
/// # Errors
/// It stopped without being paused (an error in the serving process, or the pool closing):
/// the tally is only part of the pool, so no report stands for it.
fn report_of(status: &PoolStatus, started_at: u64) -> Result<ScrubReport, Failure> {
    let path = |index: usize| {
        status
            .devices
            .iter()
            .find(|d| d.index == Some(index) && d.replacing.is_none())
            .map_or_else(|| format!("position {index}"), |d| d.path.clone())
    };
    let report = match (&status.scrub, &status.last_scrub) {
        (Some(paused), _) if paused.paused => {
            ScrubReport::from_tally(ScrubEnd::Paused, paused.repair, 0, &paused.tally, path)
        }
        (Some(stopped), _) => {
            return Err(format!(
                "scrub: stopped at {} of {} bytes without finishing (see the serving process's log); `scrub --url ... --resume` continues it",
                stopped.scanned_bytes, stopped.total_bytes
            )
            .into())
        }
        (None, Some(last)) if last.started_unix_secs >= started_at => ScrubReport::from_tally(
            match last.outcome {
                ScrubOutcome::Completed => ScrubEnd::Completed,
                ScrubOutcome::Canceled => ScrubEnd::Canceled,
            },
            last.repair,
            last.scan_secs,
            &last.tally,
            path,
        ),
        _ => return Err("scrub: it ended but the pool recorded no result".into()),
    };
    // A version-4 pool (its status lists recovery points; version 3's does not) counts rows,
    // page copies and places, which its report says by having a segment cursor: where the
    // pass stands if it is paused, the start of a pass otherwise.
    Ok(if status.recovery_points.is_some() {
        ScrubReport {
            resumed_from_segment: Some(
                status
                    .scrub
                    .as_ref()
                    .and_then(|s| s.next_segment)
                    .unwrap_or(0),
            ),
            ..report
        }
    } else {
        report
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:9640/metrics")
                .unwrap()
                .address,
            "127.0.0.1:9640"
        );
        assert_eq!(
            Endpoint::parse("localhost:1").unwrap().address,
            "localhost:1"
        );
        assert!(Endpoint::parse("https://x:1").is_err());
        assert!(Endpoint::parse("http://x").is_err());
    }

    /// A scrub that stopped without a pause (an error in the serving process, or the pool
    /// closing) has verified only part of the pool: no clean report (exit 0) for it.
    #[test]
    fn a_scrub_stopped_without_a_pause_is_not_reported_clean() {
        let mems = stripestore::testing::mem_devices(3, 4 << 20);
        let mut options = stripestore::CreateOptions::new("mirror:3".parse().unwrap());
        options.open.background_rebuild = false;
        let pool = stripestore::Pool::create(stripestore::testing::shared(&mems), vec![], &options)
            .unwrap();
        pool.write_at(0, &[7; 4096]).unwrap();
        pool.flush().unwrap();
        pool.start_scrub(&stripestore::ScrubOptions::default())
            .unwrap();
        let mut progress = pool.scrub_progress().unwrap();
        pool.wait_scrub().unwrap().unwrap();
        let mut status = pool.status();
        status.last_scrub = None;
        progress.running = false;
        progress.paused = false;
        status.scrub = Some(progress.clone());
        assert!(report_of(&status, progress.started_unix_secs).is_err());
        progress.paused = true;
        status.scrub = Some(progress.clone());
        let paused = report_of(&status, progress.started_unix_secs).unwrap();
        assert_eq!(paused.end, ScrubEnd::Paused);
    }
}
