//! A commit whose record is written with the volume's lock let go (docs/FORMAT.md V4.8, "A
//! commit's I/O outside the volume's lock"): [`MapStore::seal_commit`] takes, under the lock,
//! everything the record names (its sequence, entries and place in the log) and leaves the map
//! ready for the next writes; [`SealedCommit::write`] then flushes the members (the rows the
//! record names are on them: they were written before the seal) and writes and flushes the
//! record, while writers go on. At most one record is in flight: the [`LogGate`] makes anything
//! else that writes the log or an uberblock (another commit, a tree sync) wait for it, and a
//! record that failed fails the map.
//!
//! Owns: the gate and the sealed record's I/O. Must not touch: the map's trees or pending
//! changes (the seal did, under the lock).

use super::{Error, MapStore, Result, SharedDevice, Tolerate};
use crate::device::{flush_each, DeviceError};
use std::sync::{Arc, Condvar, Mutex};

/// Whether a sealed record is on its way to the members, and whether one failed.
#[derive(Debug, Default)]
pub struct LogGate {
    state: Mutex<GateState>,
    idle: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    busy: bool,
    failed: bool,
}

impl LogGate {
    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn begin(&self) {
        let mut state = self.state();
        debug_assert!(!state.busy, "one sealed record at a time");
        state.busy = true;
    }

    fn end(&self, ok: bool) {
        let mut state = self.state();
        state.busy = false;
        state.failed |= !ok;
        self.idle.notify_all();
    }

    /// Wait until no sealed record is in flight. Whether one failed.
    pub(super) fn settle(&self) -> bool {
        let mut state = self.state();
        while state.busy {
            state = self
                .idle
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        state.failed
    }

    /// Whether a sealed record failed (without waiting for one in flight).
    pub(super) fn failed(&self) -> bool {
        self.state().failed
    }
}

/// What a flush has left to do once the volume's lock is let go.
#[derive(Debug)]
pub enum Sealed {
    /// Nothing changed since the last commit: the members are flushed (rows written since may
    /// be on them), no record.
    Nothing(MemberFlush),
    /// The record did not fit: a tree sync made everything durable, under the lock.
    Synced(super::SyncReport),
    /// A record to write.
    Record(SealedCommit),
}

/// A flush of every member in service, a failure left behind when the owner tolerates it.
#[derive(Debug)]
pub struct MemberFlush {
    tolerate: Option<Tolerate>,
    /// Planted bug `skip_commit_data_flush` (the volume's `commit_before_rows_durable`).
    skip: bool,
}

impl MemberFlush {
    pub(super) fn new(tolerate: Option<Tolerate>) -> Self {
        Self {
            tolerate,
            skip: false,
        }
    }

    /// Flush the members. Returns, per member, whether it was flushed.
    ///
    /// # Errors
    /// [`Error::Io`] naming the first member whose failure is not tolerated.
    pub fn run(&self, devices: &[Option<SharedDevice>]) -> Result<Vec<bool>> {
        if self.skip {
            return Ok(devices.iter().map(Option::is_some).collect());
        }
        flush_members_with(devices, self.tolerate.as_ref())
    }
}

/// Flush every member in service; one that fails is left behind if `tolerate` says so.
/// Returns, per member, whether it was flushed.
///
/// # Errors
/// [`Error::Io`] naming the first member whose failure is not tolerated.
pub(super) fn flush_members_with(
    devices: &[Option<SharedDevice>],
    tolerate: Option<&Tolerate>,
) -> Result<Vec<bool>> {
    let outcomes = flush_each(devices);
    let mut flushed: Vec<bool> = devices.iter().map(Option::is_some).collect();
    for (member, (device, outcome)) in devices.iter().zip(outcomes).enumerate() {
        let (Some(device), Some(Err(e))) = (device, outcome) else {
            continue;
        };
        flushed[member] = false;
        if !tolerate.is_some_and(|t| (t.0)(member, None, &e)) {
            return Err(super::super::device_error(device, None, e));
        }
    }
    Ok(flushed)
}

/// A commit's record, sealed: written by [`SealedCommit::write`] (or, if dropped unwritten, a
/// failure: the map must be reopened).
#[derive(Debug)]
pub struct SealedCommit {
    gate: Arc<LogGate>,
    members: MemberFlush,
    at: u64,
    bytes: Vec<u8>,
    sequence: u64,
    done: bool,
}

impl SealedCommit {
    /// The commit's sequence.
    #[must_use]
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Bytes of the record.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The same record without the members' flush first (planted bug `skip_commit_data_flush`).
    #[must_use]
    pub fn without_member_flush(mut self) -> Self {
        self.members.skip = true;
        self
    }

    /// Round 1, the members flushed (the rows the record names are durable); round 2, the
    /// record written on every member in service and flushed (FORMAT.md V4.8). Returns, per
    /// member, whether it took both rounds: on those, every row born before the sequence after
    /// this record's is durable.
    ///
    /// # Errors
    /// A member that cannot be flushed or written and is not tolerated: the map is then
    /// failed (every later change, commit and sync refused until it is reopened).
    pub fn write(mut self, devices: &[Option<SharedDevice>]) -> Result<Vec<bool>> {
        let tolerate = self.members.tolerate.clone();
        let log_tolerate = move |member: usize, offset: u64, error: &DeviceError| {
            tolerate
                .as_ref()
                .is_some_and(|t| (t.0)(member, Some(offset), error))
        };
        let result = self.members.run(devices).and_then(|flushed| {
            let took =
                super::super::log::write_record(devices, self.at, &self.bytes, &log_tolerate)?;
            Ok(flushed.iter().zip(took).map(|(a, b)| *a && b).collect())
        });
        self.done = true;
        self.gate.end(result.is_ok());
        result
    }
}

impl Drop for SealedCommit {
    fn drop(&mut self) {
        if !self.done {
            // Never written (a panic on the way): what it named is not durable and no longer
            // pending, so the map must not go on.
            self.gate.end(false);
        }
    }
}

impl MapStore {
    /// The first half of a commit, under the volume's lock: wait for a record in flight, then
    /// take what changed since the previous commit into a sealed record with its sequence and
    /// place in the log (the map goes on at the next sequence, nothing pending), or run the
    /// tree sync when it does not fit, or find nothing to commit.
    ///
    /// # Errors
    /// A failed map (or a sealed record that failed); the sync's errors.
    pub fn seal_commit(&mut self, devices: &[Option<SharedDevice>]) -> Result<Sealed> {
        self.settle_log()?;
        self.usable()?;
        if self.pending.is_empty() && self.rows.is_empty() {
            return Ok(Sealed::Nothing(MemberFlush::new(self.tolerate.clone())));
        }
        let sequence = self.next_sequence;
        let entries = self.entries();
        match self.log.prepare(sequence, entries) {
            Ok(Some((at, bytes))) => {
                self.next_sequence += 1;
                self.pending.clear();
                self.rows.clear();
                self.gate.begin();
                Ok(Sealed::Record(SealedCommit {
                    gate: Arc::clone(&self.gate),
                    members: MemberFlush::new(self.tolerate.clone()),
                    at,
                    bytes,
                    sequence,
                    done: false,
                }))
            }
            Ok(None) => Ok(Sealed::Synced(self.sync(devices)?)),
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// Wait for a sealed record in flight; a failed one fails the map.
    ///
    /// # Errors
    /// When a sealed record failed.
    pub(super) fn settle_log(&mut self) -> Result<()> {
        if self.gate.settle() {
            self.failed = true;
            return Err(Error::corrupt_metadata(
                "a commit's log record could not be written: reopen the map",
            ));
        }
        Ok(())
    }
}
