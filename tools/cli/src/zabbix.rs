//! `zabbix discovery|status POOL...|--url URL`: what the Zabbix agent's UserParameters
//! (`tools/zabbix/userparameter_stripestore.conf`) print.
//!
//! - `discovery`: low-level discovery JSON, one object per device (data members, replacements
//!   being rebuilt, spares): `{#DEVICE}` (path), `{#INDEX}` (data position, `spare` for a
//!   spare), `{#ROLE}` (`data`, `replacement`, `spare`), `{#UUID}` and `{#SECTION}` (the status
//!   JSON array that holds it: `devices` or `spares`, for the item prototypes' JSONPath).
//! - `status`: the status JSON (`status --json`, fields unchanged) plus one object `zabbix` of
//!   scalars the template reads without arithmetic: rebuild progress, last scrub age,
//!   unrepairable stripes and damaged ranges, and `error` (`null`, or why the pool could not be
//!   looked at; the pool's `health` is then `UNAVAILABLE`).
//!
//! Both only look: a local pool is opened read-only ([`super::open_pool_to_look`]), a served
//! one is asked through its endpoint. Both write JSON to standard output and nothing to
//! standard error (the agent captures both), and exit 0 when they printed JSON.

use serde_json::{json, Value};
use std::path::PathBuf;

/// `stripestore zabbix ...`.
#[derive(clap::Args, Debug)]
pub struct ZabbixArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand, Debug)]
enum What {
    /// Low-level discovery JSON of the pool's devices.
    Discovery(Target),
    /// The status JSON with a `zabbix` object of derived values, for dependent items.
    Status(Target),
}

#[derive(clap::Args, Debug)]
struct Target {
    /// One or more member paths, or one served pool's `http://HOST:PORT` (as with --url, so
    /// the agent's key takes either in the same place). Empty arguments are ignored.
    #[arg(required_unless_present = "url", conflicts_with = "url")]
    pool: Vec<PathBuf>,
    /// Ask the process serving the pool instead (its `serve --metrics` address).
    #[arg(long)]
    url: Option<String>,
}

type Failure = Box<dyn std::error::Error>;

/// Run `zabbix discovery` or `zabbix status`.
///
/// # Errors
/// Only when standard output cannot be written (or, for discovery, the pool cannot be
/// looked at: discovery must not replace the devices with an empty list).
pub fn run(args: &ZabbixArgs) -> Result<(), Failure> {
    let output = match &args.what {
        What::Discovery(target) => discovery(&status_of(target)?),
        What::Status(target) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            match status_of(target) {
                Ok(status) => with_summary(status, now),
                Err(err) => unavailable(&err.to_string()),
            }
        }
    };
    println!("{}", serde_json::to_string(&output)?);
    Ok(())
}

/// The pool's status as JSON, looked at read-only or asked of the serving process.
fn status_of(target: &Target) -> Result<Value, Failure> {
    let url = target
        .url
        .as_deref()
        .or_else(|| match target.pool.as_slice() {
            [only] => only.to_str().filter(|p| p.starts_with("http://")),
            _ => None,
        });
    if let Some(url) = url {
        let endpoint = super::remote::Endpoint::parse(url)?;
        return Ok(serde_json::from_str(&endpoint.status_text(true)?)?);
    }
    let paths: Vec<PathBuf> = target
        .pool
        .iter()
        .filter(|p| !p.as_os_str().is_empty())
        .cloned()
        .collect();
    if paths.is_empty() {
        return Err("no member path given".into());
    }
    let pool = super::open_pool_to_look(&paths)?;
    let status = serde_json::to_value(pool.status())?;
    pool.close()?;
    Ok(status)
}

/// One LLD object per device, in the order of the status.
fn discovery(status: &Value) -> Value {
    let mut rows = Vec::new();
    for section in ["devices", "spares"] {
        for device in status[section].as_array().into_iter().flatten() {
            let role = if section == "spares" {
                "spare"
            } else if device["replacing"].is_null() {
                "data"
            } else {
                "replacement"
            };
            let index = device["index"]
                .as_u64()
                .map_or_else(|| "spare".to_string(), |i| i.to_string());
            rows.push(json!({
                "{#DEVICE}": device["path"],
                "{#INDEX}": index,
                "{#ROLE}": role,
                "{#UUID}": device["uuid"],
                "{#SECTION}": section,
                "{#POOLUUID}": status["pool"],
                "{#LAYOUT}": status["layout"],
            }));
        }
    }
    Value::Array(rows)
}

/// `status` with the `zabbix` object added (see the module documentation).
fn with_summary(mut status: Value, now: u64) -> Value {
    let rebuilds = status["rebuilds"].as_array().cloned().unwrap_or_default();
    let sum = |field: &str| -> u64 { rebuilds.iter().filter_map(|r| r[field].as_u64()).sum() };
    let (done, total) = (sum("done_bytes"), sum("total_bytes"));
    // 100 when nothing is being rebuilt; two decimals.
    let rebuild_percent = match (rebuilds.is_empty(), total) {
        (true, _) => 100.0,
        (false, 0) => 0.0,
        (false, total) => {
            // Display only: precision lost above 2^53 bytes does not matter.
            #[allow(clippy::cast_precision_loss)]
            let percent = 100.0 * done as f64 / total as f64;
            (percent * 100.0).round() / 100.0
        }
    };
    let last = &status["last_scrub"];
    let finished = last["finished_unix_secs"].as_u64();
    let summary = json!({
        "error": Value::Null,
        "rebuilding": rebuilds.len(),
        "rebuild_done_bytes": done,
        "rebuild_total_bytes": total,
        "rebuild_percent": rebuild_percent,
        "scrub_running": u8::from(status["scrub"]["running"].as_bool().unwrap_or(false)),
        "last_scrub_finished_unix_secs": finished.unwrap_or(0),
        // -1: the pool was never scrubbed.
        "last_scrub_age_secs": finished.map_or(-1, |f| i64::try_from(now.saturating_sub(f)).unwrap_or(i64::MAX)),
        "last_scrub_unrepairable_stripes": last["tally"]["unrepairable_stripes"].as_u64().unwrap_or(0),
        "last_scrub_damaged_ranges": last["tally"]["damaged"].as_array().map_or(0, Vec::len),
        "spares_available": status["spares"].as_array().map_or(0, |s| s.iter().filter(|d| d["state"] == "AVAIL").count()),
    });
    if let Some(object) = status.as_object_mut() {
        object.insert("zabbix".to_string(), summary);
    }
    status
}

/// What `status` prints when the pool cannot be looked at: enough for the pool items and an
/// "unavailable" trigger; the per-device items find nothing.
fn unavailable(error: &str) -> Value {
    json!({
        "health": "UNAVAILABLE",
        "devices": [],
        "spares": [],
        "rebuilds": [],
        "zabbix": { "error": error },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_a_rebuild_and_a_scrub() {
        let status = json!({
            "rebuilds": [{"done_bytes": 25, "total_bytes": 100}],
            "last_scrub": {"finished_unix_secs": 1000, "tally": {"unrepairable_stripes": 2, "damaged": [{}, {}]}},
            "spares": [{"state": "AVAIL"}, {"state": "FAULTED"}],
        });
        let z = &with_summary(status, 1600)["zabbix"];
        assert_eq!(z["rebuild_percent"], 25.0);
        assert_eq!(z["last_scrub_age_secs"], 600);
        assert_eq!(z["last_scrub_unrepairable_stripes"], 2);
        assert_eq!(z["last_scrub_damaged_ranges"], 2);
        assert_eq!(z["spares_available"], 1);
        let z = &with_summary(json!({}), 5)["zabbix"];
        assert_eq!(z["last_scrub_age_secs"], -1);
        assert_eq!(z["rebuild_percent"], 100.0);
    }
}
