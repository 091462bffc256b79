//! Recovery-point policies (issue 15): recovery points taken at fixed times (every `every`,
//! on the boundaries of that period in UTC) and before events (a replace), and a retention
//! that keeps, of the policy's own recovery points, the newest `last`, the newest of each of
//! the last `hourly` hours, `daily` days and `weekly` weeks that have one, and the `events`
//! newest taken before an event. Retention never deletes a held recovery point, nor one the
//! policy did not take (another name, a rollback's, a received one).
//!
//! The policy lives in the process that set it (`Pool::set_snapshot_policy`, `serve
//! --snapshot-every`): nothing is written for it but the recovery points themselves.
//!
//! Owns: the schedule thread, the names it gives and the retention rule. Does not own: taking
//! and deleting (the pool's recovery-point entry points, with their locks and refusals).

use super::{Pool, PoolInner};
use crate::error::{Error, Result};
use crate::types::rfc3339;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How many of the policy's recovery points are kept (see the module header).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// The newest, whatever their times.
    pub last: u32,
    /// The newest of each of the last this many hours that have one.
    pub hourly: u32,
    /// Days, as hours.
    pub daily: u32,
    /// Weeks (from Monday 00:00 UTC), as hours.
    pub weekly: u32,
    /// The newest taken before an event.
    pub events: u32,
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let classes = [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("events", self.events),
        ];
        let parts: Vec<String> = classes
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| format!("{c}={n}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for Retention {
    type Err = String;

    /// `hourly=24,daily=7,weekly=4` (also `last=N`, `events=N`); at least one nonzero.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let mut keep = Self::default();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (class, count) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected CLASS=COUNT, e.g. hourly=24"))?;
            let count: u32 = count
                .parse()
                .map_err(|_| format!("{part:?}: the count is not a number"))?;
            match class {
                "last" => keep.last = count,
                "hourly" => keep.hourly = count,
                "daily" => keep.daily = count,
                "weekly" => keep.weekly = count,
                "events" => keep.events = count,
                other => {
                    return Err(format!(
                        "{other:?}: the classes are last, hourly, daily, weekly and events"
                    ))
                }
            }
        }
        if keep.last + keep.hourly + keep.daily + keep.weekly == 0 {
            return Err(format!(
                "{text:?} keeps none of the scheduled recovery points: give last, hourly, daily \
                 or weekly"
            ));
        }
        Ok(keep)
    }
}

/// A policy: a recovery point every `every`, named `PREFIX-2026-12-05T16:00:00Z`, and (with
/// `before_events`) one named `PREFIX-before-replace-…` before each replace; `keep` says which
/// of them stay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// The period (at least a second); recovery points are taken on its boundaries.
    pub every: Duration,
    /// Which are kept.
    pub keep: Retention,
    /// The names' prefix (letters, digits and `. _ : -`, at most 30 bytes).
    pub prefix: String,
    /// Also take one before each replace.
    pub before_events: bool,
}

impl SnapshotPolicy {
    /// `every` with retention `keep`, prefix `auto`, before events.
    #[must_use]
    pub fn new(every: Duration, keep: Retention) -> Self {
        Self {
            every,
            keep,
            prefix: "auto".into(),
            before_events: true,
        }
    }

    fn check(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::InvalidConfig(reason));
        if self.every < Duration::from_secs(1) {
            return bad("a snapshot policy's period is at least one second".into());
        }
        if self.prefix.is_empty()
            || self.prefix.len() > 30
            || crate::format::v4::check_recovery_name(&self.prefix).is_err()
        {
            return bad(format!(
                "snapshot policy prefix {:?}: 1 to 30 letters, digits and . _ : -",
                self.prefix
            ));
        }
        Ok(())
    }

    fn scheduled(&self, name: &str) -> bool {
        name.strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    }

    fn event(&self, name: &str) -> bool {
        name.strip_prefix(&self.prefix)
            .is_some_and(|rest| rest.starts_with("-before-"))
    }
}

/// A recovery point as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyPoint {
    /// Its name.
    pub name: String,
    /// When it was taken, seconds since the Unix epoch.
    pub created: u64,
    /// Held (never deleted).
    pub held: bool,
}

/// The bucket a time falls in (an hour, a day, a week).
type Bucket = fn(u64) -> u64;

/// Which of `points` retention deletes under `policy`: of the policy's scheduled recovery
/// points, those no class keeps; of its event ones, all but the `events` newest. Never a held
/// one, never one of another name. A pure function of its arguments.
#[must_use]
pub fn expired(points: &[PolicyPoint], policy: &SnapshotPolicy) -> Vec<String> {
    let keep = &policy.keep;
    let mut scheduled: Vec<&PolicyPoint> = points
        .iter()
        .filter(|p| policy.scheduled(&p.name))
        .collect();
    scheduled.sort_by(|a, b| b.created.cmp(&a.created).then(b.name.cmp(&a.name)));
    let mut kept = vec![false; scheduled.len()];
    for k in kept.iter_mut().take(keep.last as usize) {
        *k = true;
    }
    // Monday 00:00 UTC: 1970-01-01 was a Thursday.
    let classes: [(u32, Bucket); 3] = [
        (keep.hourly, |t| t / 3600),
        (keep.daily, |t| t / 86_400),
        (keep.weekly, |t| (t / 86_400 + 3) / 7),
    ];
    for (count, bucket) in classes {
        let mut seen = 0;
        let mut last = None;
        for (i, point) in scheduled.iter().enumerate() {
            if seen >= count {
                break;
            }
            let b = bucket(point.created);
            if last != Some(b) {
                last = Some(b);
                seen += 1;
                kept[i] = true;
            }
        }
    }
    let mut gone: Vec<String> = scheduled
        .iter()
        .zip(&kept)
        .filter(|(p, k)| !**k && !p.held)
        .map(|(p, _)| p.name.clone())
        .collect();
    let mut events: Vec<&PolicyPoint> = points.iter().filter(|p| policy.event(&p.name)).collect();
    events.sort_by(|a, b| b.created.cmp(&a.created).then(b.name.cmp(&a.name)));
    gone.extend(
        events
            .iter()
            .skip(keep.events as usize)
            .filter(|p| !p.held)
            .map(|p| p.name.clone()),
    );
    gone
}

/// The schedule's thread: stopped by its flag, or when the pool is gone.
pub(crate) struct PolicyThread {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<()>,
}

impl PolicyThread {
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        if self.handle.join().is_err() {
            tracing::error!("the snapshot policy thread panicked");
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn run(inner: &Weak<PoolInner>, policy: &SnapshotPolicy, stop: &AtomicBool) {
    let every = policy.every.as_secs().max(1);
    loop {
        let next = (now() / every + 1) * every;
        while now() < next {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.policy_tick(policy, next);
    }
}

impl PoolInner {
    /// Take the scheduled recovery point of time `at`, then apply retention.
    fn policy_tick(&self, policy: &SnapshotPolicy, at: u64) {
        let name = format!("{}-{}", policy.prefix, rfc3339(at));
        match self.create_recovery_point(&name) {
            Ok(_) => tracing::info!(%name, "scheduled recovery point taken"),
            Err(err) => tracing::warn!(%name, %err, "scheduled recovery point not taken"),
        }
        self.apply_retention(policy);
    }

    /// Delete what retention says under `policy`; returns the names deleted (a refusal, a
    /// recovery point where lines part, say, is logged and skipped).
    pub(crate) fn apply_retention(&self, policy: &SnapshotPolicy) -> Vec<String> {
        let Some(rows) = self.rows() else {
            return Vec::new();
        };
        let points: Vec<PolicyPoint> = rows
            .read_volume()
            .recovery_points()
            .into_iter()
            .map(|p| PolicyPoint {
                name: p.name,
                created: p.created,
                held: p.holds > 0,
            })
            .collect();
        let mut deleted = Vec::new();
        for name in expired(&points, policy) {
            // Asked for: the reclaim thread frees the space, paced (FORMAT.md V4.10e).
            match self.request_delete(&name) {
                Ok(()) => deleted.push(name),
                Err(err) => tracing::warn!(%name, %err, "retention could not delete"),
            }
        }
        deleted
    }

    /// Before `event` (a replace): the policy's recovery point, when it asks for one. A
    /// failure is logged and does not stop the event (restoring redundancy comes first).
    pub(crate) fn before_event(&self, event: &str) {
        let policy = self.policy.lock().clone();
        let Some(policy) = policy.filter(|p| p.before_events) else {
            return;
        };
        let name = format!("{}-before-{event}-{}", policy.prefix, rfc3339(now()));
        match self.create_recovery_point(&name) {
            Ok(_) => tracing::info!(%name, "recovery point taken before {event}"),
            Err(err) => tracing::warn!(%name, %err, "no recovery point before {event}"),
        }
        self.apply_retention(&policy);
    }
}

impl Pool {
    /// Take recovery points by `policy` from now on (replacing any policy set before), or
    /// stop (`None`). A thread takes one on each boundary of the period and applies the
    /// retention; with `before_events`, a replace takes one first. The policy lasts as long as
    /// this `Pool`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a period under a second or a bad prefix;
    /// [`Error::Unsupported`] on a version-3 pool; [`Error::ReadOnly`].
    pub fn set_snapshot_policy(&self, policy: Option<SnapshotPolicy>) -> Result<()> {
        if let Some(policy) = &policy {
            policy.check()?;
            self.inner.writable("take recovery points by a policy")?;
            self.inner.recovery_points_supported()?;
        }
        if let Some(thread) = self.policy_thread.lock().take() {
            thread.stop();
        }
        self.inner.policy.lock().clone_from(&policy);
        if let Some(policy) = policy {
            let stop = Arc::new(AtomicBool::new(false));
            let inner = Arc::downgrade(&self.inner);
            let flag = Arc::clone(&stop);
            let handle = std::thread::Builder::new()
                .name("snapshot-policy".into())
                .spawn(move || run(&inner, &policy, &flag))
                .map_err(|e| Error::InvalidConfig(format!("no thread for the policy: {e}")))?;
            *self.policy_thread.lock() = Some(PolicyThread { stop, handle });
        }
        Ok(())
    }

    /// Apply the current policy's retention now; returns what it deleted.
    #[must_use]
    pub fn apply_snapshot_retention(&self) -> Vec<String> {
        let policy = self.inner.policy.lock().clone();
        policy.map_or_else(Vec::new, |p| self.inner.apply_retention(&p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(keep: &str) -> SnapshotPolicy {
        SnapshotPolicy::new(Duration::from_secs(3600), keep.parse().unwrap())
    }

    fn point(name: &str, created: u64) -> PolicyPoint {
        PolicyPoint {
            name: name.into(),
            created,
            held: false,
        }
    }

    /// Hourly points over 20 days: hourly=24 keeps the last 24 hours, daily=7 the newest of
    /// each of the last 7 days, weekly=2 the newest of the last 2 weeks; the rest go, except
    /// a held one and the points of other names.
    #[test]
    fn retention_keeps_the_newest_of_each_bucket_and_never_a_held_or_foreign_one() {
        let start = 1_790_000_000 / 3600 * 3600;
        let mut points: Vec<PolicyPoint> = (0..480u64)
            .map(|h| {
                point(
                    &format!("auto-{}", rfc3339(start + h * 3600)),
                    start + h * 3600,
                )
            })
            .collect();
        points[3].held = true;
        points.push(point("before-upgrade", start));
        points.push(point("auto-before-replace-x", start));
        points.push(point("before-rollback-7", start));
        let p = policy("hourly=24,daily=7,weekly=2,events=1");
        let gone = expired(&points, &p);
        let kept: Vec<&PolicyPoint> = points.iter().filter(|q| !gone.contains(&q.name)).collect();
        let newest = start + 479 * 3600;
        // Model: the newest per hour for 24 hours, per day for 7 days, per week for 2 weeks.
        let mut want = std::collections::BTreeSet::new();
        for q in points.iter().filter(|q| q.name.starts_with("auto-1")) {
            let newest_in = |bucket: fn(u64) -> u64| {
                points
                    .iter()
                    .filter(|r| {
                        r.name.starts_with("auto-1") && bucket(r.created) == bucket(q.created)
                    })
                    .all(|r| r.created <= q.created)
            };
            let age_h = (newest - q.created) / 3600;
            let in_days = (newest / 86_400 - q.created / 86_400) < 7;
            let in_weeks = ((newest / 86_400 + 3) / 7 - (q.created / 86_400 + 3) / 7) < 2;
            if age_h < 24
                || (in_days && newest_in(|t| t / 86_400))
                || (in_weeks && newest_in(|t| (t / 86_400 + 3) / 7))
                || q.held
            {
                want.insert(q.name.clone());
            }
        }
        let got: std::collections::BTreeSet<String> = kept
            .iter()
            .filter(|q| q.name.starts_with("auto-1"))
            .map(|q| q.name.clone())
            .collect();
        assert_eq!(got, want);
        for other in [
            "before-upgrade",
            "auto-before-replace-x",
            "before-rollback-7",
        ] {
            assert!(!gone.contains(&other.to_string()), "{other} deleted");
        }
        assert!(!gone.contains(&points[3].name), "a held one was deleted");
    }

    #[test]
    fn event_points_keep_the_newest_n_and_last_keeps_the_newest() {
        let points: Vec<PolicyPoint> = (0..5u64)
            .map(|i| point(&format!("auto-before-replace-{i}"), 100 + i))
            .chain((0..5u64).map(|i| point(&format!("auto-2026-12-0{i}T00:00:00Z"), 200 + i)))
            .collect();
        let gone = expired(&points, &policy("last=2,events=3"));
        let mut gone = gone;
        gone.sort();
        assert_eq!(
            gone,
            [
                "auto-2026-12-00T00:00:00Z",
                "auto-2026-12-01T00:00:00Z",
                "auto-2026-12-02T00:00:00Z",
                "auto-before-replace-0",
                "auto-before-replace-1",
            ]
        );
    }

    #[test]
    fn retention_specs_are_checked() {
        assert!("hourly=24,daily=7,weekly=4".parse::<Retention>().is_ok());
        assert!("events=3".parse::<Retention>().is_err());
        assert!("monthly=3".parse::<Retention>().is_err());
        assert!("hourly".parse::<Retention>().is_err());
        assert!("hourly=x".parse::<Retention>().is_err());
    }
}
