//! The pool's history, kept in the superblock JSON: a bounded event log (what happened to the
//! pool and its members, newest last) and cumulative counters (errors, repairs, bytes rebuilt,
//! scrubs) that survive closing and reopening.
//!
//! Both ride in the superblock (optional, `serde(default)`), so superblocks written before
//! them still decode and older builds, which ignore unknown JSON fields, still read the
//! superblock: no new on-disk area and no new format version. The log is bounded
//! ([`MAX_EVENTS`], texts cut at [`MAX_TEXT_BYTES`]) so the superblock stays well under its
//! 64 KiB; [`History::trim_oldest`] drops the oldest events if a superblock would not fit.
//!
//! Owns: the event and counter records and their bounds. No I/O, no clock reading (times are
//! given).

use serde::{Deserialize, Serialize};

/// Events kept; older ones are dropped first.
pub const MAX_EVENTS: usize = 64;
/// Bytes (UTF-8) kept of an event's device and of its detail: with 64 events the log stays
/// under 24 KiB of JSON (40 KiB if every character needed escaping).
pub const MAX_TEXT_BYTES: usize = 128;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Opened read-write (consecutive opens are one event with a count).
    Open,
    /// A member was taken out of service by a failure.
    Fault,
    /// A member was marked degraded (in service, too many errors).
    Degraded,
    /// Errors cleared (`clear`).
    Clear,
    /// A member taken out of service by an administrator.
    Offline,
    /// A member brought back (`online`): it is resynced.
    Online,
    /// A spare added.
    SpareAdded,
    /// A spare removed.
    SpareRemoved,
    /// A rebuild started onto a device.
    RebuildStart,
    /// A rebuild finished: the device took over its position.
    RebuildFinish,
    /// A member is being replaced by hand (`replace`).
    Replace,
    /// A scrub finished or was canceled.
    ScrubFinish,
    /// A member was found at another path than the one recorded.
    MemberMoved,
    /// A kind this build does not know (written by a newer one).
    #[serde(other)]
    Other,
}

impl EventKind {
    /// The name used in JSON and text (`spare_added` ...).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Fault => "fault",
            Self::Degraded => "degraded",
            Self::Clear => "clear",
            Self::Offline => "offline",
            Self::Online => "online",
            Self::SpareAdded => "spare_added",
            Self::SpareRemoved => "spare_removed",
            Self::RebuildStart => "rebuild_start",
            Self::RebuildFinish => "rebuild_finish",
            Self::Replace => "replace",
            Self::ScrubFinish => "scrub_finish",
            Self::MemberMoved => "member_moved",
            Self::Other => "other",
        }
    }
}

fn one() -> u64 {
    1
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_one(count: &u64) -> bool {
    *count == 1
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When (UTC, RFC 3339); for a repeated event, the last time.
    pub time: String,
    /// What.
    pub kind: EventKind,
    /// The device it concerns (its path at the time), if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device: String,
    /// Details (the reason of a fault, what a scrub found ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// How many times in a row it happened (only `open` repeats).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u64,
}

impl Event {
    /// An event at `unix_secs`, its texts cut to [`MAX_TEXT_BYTES`] (control characters
    /// become spaces).
    #[must_use]
    pub fn new(unix_secs: u64, kind: EventKind, device: &str, detail: &str) -> Self {
        Self {
            time: crate::types::rfc3339(unix_secs),
            kind,
            device: cut(device),
            detail: cut(detail),
            count: 1,
        }
    }
}

/// `text` with control characters as spaces (JSON would escape each in 6 bytes), cut to at
/// most [`MAX_TEXT_BYTES`] bytes on a character boundary (an ellipsis marks the cut).
fn cut(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.len() <= MAX_TEXT_BYTES {
        return clean;
    }
    let mut out = String::new();
    for c in clean.chars() {
        if out.len() + c.len_utf8() > MAX_TEXT_BYTES - '…'.len_utf8() {
            break;
        }
        out.push(c);
    }
    out.push('…');
    out
}

/// Cumulative counters of the pool since it was created (as far as they were persisted: a
/// crash loses what was counted since the last superblock write).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolCounters {
    /// Reads that failed with an I/O error, on any member.
    #[serde(default)]
    pub read_errors: u64,
    /// Writes or flushes that failed, on any member.
    #[serde(default)]
    pub write_errors: u64,
    /// Chunks whose content did not match its checksum, on any member.
    #[serde(default)]
    pub checksum_errors: u64,
    /// Chunks rewritten with reconstructed content (self-heal on read, and scrub repairs).
    #[serde(default)]
    pub repaired_chunks: u64,
    /// Bytes written to replacements by rebuilds.
    #[serde(default)]
    pub rebuilt_bytes: u64,
    /// Scrubs that finished (completed or canceled).
    #[serde(default)]
    pub scrubs: u64,
}

/// The history part of a superblock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The newest [`MAX_EVENTS`] events, oldest first.
    #[serde(default)]
    pub events: Vec<Event>,
    /// Cumulative counters.
    #[serde(default)]
    pub counters: PoolCounters,
}

impl History {
    /// Whether there is nothing to record (then the superblock leaves the field out).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.counters == PoolCounters::default()
    }

    /// Append `event`, dropping the oldest beyond [`MAX_EVENTS`]. An `open` right after an
    /// `open` only bumps that one's count and time, so routine opens cannot push the faults and
    /// rebuilds out of the log.
    pub fn push(&mut self, event: Event) {
        if let Some(last) = self.events.last_mut() {
            if event.kind == EventKind::Open && last.kind == EventKind::Open {
                last.count = last.count.saturating_add(1);
                last.time = event.time;
                return;
            }
        }
        self.events.push(event);
        let excess = self.events.len().saturating_sub(MAX_EVENTS);
        self.events.drain(..excess);
    }

    /// Drop the oldest event; `false` if there was none. For a superblock that would not fit.
    pub fn trim_oldest(&mut self) -> bool {
        if self.events.is_empty() {
            return false;
        }
        self.events.remove(0);
        true
    }

    /// The last `count` events, newest last.
    #[must_use]
    pub fn last(&self, count: usize) -> &[Event] {
        &self.events[self.events.len().saturating_sub(count)..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_bounded_opens_coalesce_and_texts_are_cut() {
        let mut history = History::default();
        history.push(Event::new(0, EventKind::Open, "", ""));
        history.push(Event::new(60, EventKind::Open, "", ""));
        assert_eq!(history.events.len(), 1);
        assert_eq!(history.events[0].count, 2);
        assert_eq!(history.events[0].time, "1970-01-01T00:01:00Z");
        for i in 0..100 {
            history.push(Event::new(i, EventKind::Fault, "d", &"x".repeat(500)));
        }
        assert_eq!(history.events.len(), MAX_EVENTS);
        assert_eq!(
            history.events[0].time,
            crate::types::rfc3339(100 - MAX_EVENTS as u64)
        );
        assert_eq!(history.events[0].detail.len(), MAX_TEXT_BYTES);
        assert!(history.events[0].detail.ends_with('…'));
        let multibyte = Event::new(0, EventKind::Fault, "\u{1F4BE}\n".repeat(100).as_str(), "");
        assert!(multibyte.device.len() <= MAX_TEXT_BYTES);
        assert!(multibyte.device.starts_with("\u{1F4BE} \u{1F4BE}"));
        assert_eq!(history.last(5).len(), 5);
        assert_eq!(history.last(5)[4].time, crate::types::rfc3339(99));
    }

    #[test]
    fn unknown_kinds_and_missing_fields_decode() {
        let event: Event =
            serde_json::from_str(r#"{"time":"2030-01-01T00:00:00Z","kind":"teleported"}"#).unwrap();
        assert_eq!(event.kind, EventKind::Other);
        assert_eq!(event.count, 1);
        let history: History = serde_json::from_str("{}").unwrap();
        assert!(history.is_empty());
    }
}
