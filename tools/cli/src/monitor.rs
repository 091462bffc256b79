//! Monitoring front ends: `check` (a Nagios/Icinga/Zabbix-style plugin: one line, performance
//! data, exit 0 OK / 1 WARNING / 2 CRITICAL / 3 UNKNOWN) and `metrics` (Prometheus text, once
//! or served over HTTP).
//!
//! Owns: the check's levels and its one-line summary. Must not touch: the exposition format and
//! the HTTP server (the library's `stripestore::endpoint`).

use super::open_pool_to_look;
use std::path::PathBuf;
use stripestore::pool::PoolHealth;
use stripestore::PoolStatus;

/// Plugin states, as exit codes (the Nagios plugin convention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
            Level::Unknown => "UNKNOWN",
        }
    }
}

/// A check's verdict: the plugin state, the summary and what led to it.
#[derive(Debug)]
pub struct Verdict {
    pub level: Level,
    /// The status line's text before the performance data.
    pub summary: String,
    /// Every finding worth a warning or worse, the most severe first.
    pub reasons: Vec<(Level, String)>,
    /// Nagios performance data (`None` when the pool could not be looked at).
    pub perfdata: Option<String>,
    /// The pool's UUID, layout and health, when it could be looked at.
    pub pool: Option<(String, String, String)>,
}

impl Verdict {
    /// A verdict without a pool to look at (it could not be opened or asked).
    fn cannot_look(level: Level, message: String) -> Self {
        Self {
            level,
            summary: message.clone(),
            reasons: vec![(level, message)],
            perfdata: None,
            pool: None,
        }
    }

    /// The plugin's one line: `STRIPESTORE STATE - summary | perfdata`.
    #[must_use]
    pub fn line(&self) -> String {
        match &self.perfdata {
            Some(perfdata) => format!(
                "STRIPESTORE {} - {} | {perfdata}",
                self.level.name(),
                self.summary
            ),
            None => format!("STRIPESTORE {} - {}", self.level.name(), self.summary),
        }
    }

    /// The same verdict as JSON: `state` and `exit_code` are the plugin's, `summary` the
    /// line's text, `reasons` each finding with its level.
    #[must_use]
    pub fn json(&self) -> serde_json::Value {
        let (pool, layout, health) = match &self.pool {
            Some((pool, layout, health)) => (Some(pool), Some(layout), Some(health)),
            None => (None, None, None),
        };
        serde_json::json!({
            "state": self.level.name(),
            "exit_code": self.level as u8,
            "summary": self.summary,
            "reasons": self
                .reasons
                .iter()
                .map(|(level, message)| serde_json::json!({ "level": level.name(), "message": message }))
                .collect::<Vec<_>>(),
            "perfdata": self.perfdata,
            "pool": pool,
            "layout": layout,
            "health": health,
        })
    }
}

/// Run `check` on the pool at `pool`, or on the one served at `url`: print the status line
/// (or, with `json`, the verdict as a JSON object) and return the plugin state.
pub fn check(pool: &[PathBuf], url: Option<&str>, limits: Limits, json: bool) -> Level {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let verdict = match url {
        Some(url) => match super::remote::Endpoint::parse(url)
            .map_err(Into::into)
            .and_then(|e| e.status())
        {
            Ok(status) => judge(&status, now, limits),
            Err(err) => Verdict::cannot_look(
                Level::Unknown,
                format!("cannot ask the serving process: {err}"),
            ),
        },
        None => check_local(pool, now, limits),
    };
    if json {
        match serde_json::to_string_pretty(&verdict.json()) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                println!("{}", verdict.line());
                eprintln!("stripestore: error: cannot encode the verdict as JSON: {err}");
            }
        }
    } else {
        println!("{}", verdict.line());
    }
    verdict.level
}

/// The verdict for a pool this process opens itself.
fn check_local(pool: &[PathBuf], now: u64, limits: Limits) -> Verdict {
    match open_pool_to_look(pool) {
        Ok(pool) => {
            let status = pool.status();
            let verdict = judge(&status, now, limits);
            if let Err(err) = pool.close() {
                Verdict::cannot_look(
                    Level::Unknown,
                    format!("pool opened but could not be closed cleanly: {err}"),
                )
            } else {
                verdict
            }
        }
        Err(err) => {
            // Errors that mean "data is at risk or unreachable" are critical; anything else
            // (wrong path, not a pool, corrupt metadata everywhere) means we cannot tell.
            let level = match err {
                stripestore::Error::PoolUnavailable { .. }
                | stripestore::Error::CannotProveCurrent { .. }
                | stripestore::Error::Unrecoverable { .. } => Level::Critical,
                _ => Level::Unknown,
            };
            Verdict::cannot_look(level, format!("cannot open the pool: {err}"))
        }
    }
}

/// The plugin state, summary and performance data for a status snapshot.
pub fn judge(status: &PoolStatus, now_unix_secs: u64, limits: Limits) -> Verdict {
    let tally = Tally::of(status, now_unix_secs);
    let reasons = reasons(status, &tally, limits, now_unix_secs);
    let level = reasons.iter().map(|(l, _)| *l).max().unwrap_or(Level::Ok);
    let Tally {
        online,
        members,
        device_errors,
        last_damage,
        last_unrepairable,
        last_age,
        ..
    } = tally;
    let mut sorted = reasons;
    sorted.sort_by_key(|reason| std::cmp::Reverse(reason.0));
    let summary = if sorted.is_empty() {
        format!(
            "{} {}: {online}/{members} devices online, survives {} more loss(es){}",
            status.layout,
            status.health,
            status.remaining_tolerance,
            if status.last_scrub.is_some() {
                ", last scrub clean"
            } else {
                ""
            }
        )
    } else {
        format!(
            "{} {}: {}",
            status.layout,
            status.health,
            sorted
                .iter()
                .map(|(_, reason)| reason.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        )
    };
    let mut perfdata = format!(
        "devices_online={online};;;0;{members} remaining_tolerance={};;1:;0;{} device_errors={device_errors}c last_scrub_damaged={last_damage};;;0; last_scrub_unrepairable={last_unrepairable};;0;0; last_scrub_age={}s",
        status.remaining_tolerance,
        status.tolerance,
        last_age.map_or_else(|| "U".to_string(), |a| a.to_string()),
    );
    // Recovery points (version 4, once there is one): how many, and the newest one's age.
    if let Some(points) = status
        .recovery_points
        .as_ref()
        .filter(|p| p.count > 0 || !p.deleting.is_empty())
    {
        perfdata.push_str(&format!(
            " recovery_points={};;;0; recovery_points_deleting={};;;0;{} newest_recovery_point_age={}s",
            points.count,
            points.deleting.len(),
            points
                .held_data_bytes
                .map_or_else(String::new, |b| format!(" recovery_points_held={b}B;;;0;")),
            points.newest_created.map_or_else(
                || "U".to_string(),
                |c| now_unix_secs.saturating_sub(c).to_string()
            )
        ));
    }
    Verdict {
        level,
        summary,
        reasons: sorted,
        perfdata: Some(perfdata),
        pool: Some((
            status.pool.clone(),
            status.layout.clone(),
            status.health.to_string(),
        )),
    }
}

/// What the check counts in a status, before judging it.
struct Tally<'a> {
    /// Members in service: ONLINE, or DEGRADED (too many errors, still serving).
    online: usize,
    /// Paths of the DEGRADED members.
    degraded: Vec<&'a str>,
    /// Members (replacements being rebuilt left out).
    members: usize,
    device_errors: u64,
    last_damage: u64,
    last_unrepairable: u64,
    /// Seconds since the last scrub finished, if there was one.
    last_age: Option<u64>,
}

impl<'a> Tally<'a> {
    fn of(status: &'a PoolStatus, now_unix_secs: u64) -> Self {
        let online = status
            .devices
            .iter()
            .filter(|d| d.replacing.is_none() && (d.state == "ONLINE" || d.state == "DEGRADED"))
            .count();
        let degraded: Vec<&str> = status
            .devices
            .iter()
            .filter(|d| d.replacing.is_none() && d.state == "DEGRADED")
            .map(|d| d.path.as_str())
            .collect();
        let members = status
            .devices
            .iter()
            .filter(|d| d.replacing.is_none())
            .count();
        let device_errors: u64 = status
            .devices
            .iter()
            .map(|d| d.read_errors + d.write_errors + d.checksum_errors)
            .sum();
        let (last_damage, last_unrepairable, last_age) =
            status.last_scrub.as_ref().map_or((0, 0, None), |last| {
                let totals = last.tally.totals();
                (
                    totals.checksum_errors + totals.io_errors + last.tally.inconsistent_stripes,
                    last.tally.unrepairable_stripes,
                    Some(now_unix_secs.saturating_sub(last.finished_unix_secs)),
                )
            });
        Self {
            online,
            degraded,
            members,
            device_errors,
            last_damage,
            last_unrepairable,
            last_age,
        }
    }
}

/// Everything worth a warning or worse, each with its level.
fn reasons(
    status: &PoolStatus,
    tally: &Tally<'_>,
    limits: Limits,
    now_unix_secs: u64,
) -> Vec<(Level, String)> {
    let Limits {
        scrub_max_age_days,
        recovery_point_max_age_secs,
    } = limits;
    let mut reasons: Vec<(Level, String)> = Vec::new();
    match status.health {
        PoolHealth::Faulted => reasons.push((
            Level::Critical,
            format!(
                "pool FAULTED: more devices lost than {} tolerates",
                status.layout
            ),
        )),
        PoolHealth::Degraded if status.remaining_tolerance == 0 => reasons.push((
            Level::Critical,
            "redundancy exhausted: one more device failure loses data".to_string(),
        )),
        PoolHealth::Degraded if tally.members > tally.online => reasons.push((
            Level::Warning,
            format!(
                "{} device(s) out of service, survives {} more",
                tally.members - tally.online,
                status.remaining_tolerance
            ),
        )),
        PoolHealth::Degraded | PoolHealth::Online => {}
    }
    // Away (a host cut off): named with the time away and the grace left (FORMAT.md V4.16).
    for d in status.devices.iter().filter(|d| d.state == "UNAVAILABLE") {
        reasons.push((
            Level::Warning,
            format!(
                "{} UNAVAILABLE for {} s (faulted and replaced in {} s unless it returns)",
                d.path,
                d.away_secs.unwrap_or(0),
                d.grace_left_secs.unwrap_or(0)
            ),
        ));
    }
    if !tally.degraded.is_empty() {
        reasons.push((
            Level::Warning,
            format!(
                "{} DEGRADED (too many errors; still serving; `clear` or replace)",
                tally.degraded.join(", ")
            ),
        ));
    }
    if tally.last_unrepairable > 0 {
        reasons.push((
            Level::Critical,
            format!(
                "last scrub found {} unrepairable stripe(s)",
                tally.last_unrepairable
            ),
        ));
    } else if tally.last_damage > 0 {
        reasons.push((
            Level::Warning,
            format!(
                "last scrub found and repaired {} damaged chunk(s)",
                tally.last_damage
            ),
        ));
    }
    if tally.device_errors > 0 {
        reasons.push((
            Level::Warning,
            format!("{} device error(s) since open", tally.device_errors),
        ));
    }
    for rebuild in &status.rebuilds {
        reasons.push((
            Level::Warning,
            format!("rebuilding {} onto {}", rebuild.replacing, rebuild.device),
        ));
    }
    if status.no_spare_left {
        let last = status.last_rebuild.as_ref().map_or_else(String::new, |e| {
            format!(" (last rebuild {}: {} {})", e.time, e.device, e.detail)
        });
        reasons.push((
            Level::Warning,
            format!("redundancy restored but no spare is left{last}; add one with `spare add`"),
        ));
    }
    if let Some(max_days) = scrub_max_age_days {
        match tally.last_age {
            Some(age) if age <= max_days * 86_400 => {}
            Some(age) => reasons.push((
                Level::Warning,
                format!("last scrub {} days ago (limit {max_days})", age / 86_400),
            )),
            None => reasons.push((Level::Warning, "never scrubbed".to_string())),
        }
    }
    if let Some(name) = status
        .recovery_points
        .as_ref()
        .and_then(|p| p.unfinished_receive.as_ref())
    {
        reasons.push((
            Level::Warning,
            format!("the receive of {name} is unfinished (writes refused)"),
        ));
    }
    if let Some(max) = recovery_point_max_age_secs {
        let newest = status
            .recovery_points
            .as_ref()
            .and_then(|p| p.newest_created);
        match newest {
            Some(created) if now_unix_secs.saturating_sub(created) <= max => {}
            Some(created) => reasons.push((
                Level::Warning,
                format!(
                    "newest recovery point {}s old (limit {max}s)",
                    now_unix_secs.saturating_sub(created)
                ),
            )),
            None => reasons.push((Level::Warning, "no recovery point".to_string())),
        }
    }
    reasons
}

/// What `check` holds the pool to beyond its health: the age of the last scrub and of the
/// newest recovery point.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// WARNING when the last scrub is older than this many days (or there was none).
    pub scrub_max_age_days: Option<u64>,
    /// WARNING when the newest recovery point is older than this many seconds (or there is
    /// none).
    pub recovery_point_max_age_secs: Option<u64>,
}

/// Run `metrics`: print the exposition once, or serve it until killed.
pub fn metrics(
    pool: &[PathBuf],
    listen: Option<std::net::SocketAddr>,
) -> Result<(), Box<dyn std::error::Error>> {
    let pool = open_pool_to_look(pool)?;
    let Some(address) = listen else {
        print!("{}", stripestore::endpoint::metrics_text(&pool));
        pool.close()?;
        return Ok(());
    };
    let server = stripestore::endpoint::serve_metrics(&pool, address)?;
    eprintln!(
        "serving metrics at http://{}/metrics (Ctrl-C to stop)",
        server.address()
    );
    loop {
        std::thread::park();
    }
}
