//! The scrub's drivers: `run` runs the step machine over slots (format version 3) from a
//! checkpoint to its end, a reader thread reading ahead (one step in the channel, one being
//! read) while this thread verifies, so the devices are never idle waiting for checksums;
//! `run_segments` runs a scrub over segments (version 4) chunk by chunk through the target's
//! [`SegmentScrub`]. Between steps or chunks both honour pause, cancel and the rate limit,
//! yield to foreground I/O, and checkpoint about once a second.
//!
//! Owns: the phases of one run (start, steps, end) and what is persisted at each. Must not
//! touch: pool internals (everything goes through [`ScrubTarget`]); the tally (the step
//! machine keeps it).

use super::step::{read_step, ReadStep, Scrubber};
use super::{
    report_of, summary_of, ChunkBudget, RecordChange, ScrubControl, ScrubEnd, ScrubOptions,
    ScrubProgress, ScrubReport, ScrubTarget, SegmentScrub, FOREGROUND_BACKOFF, SLOTS_PER_STEP,
};
use crate::error::Result;
use crate::format::{ScrubCheckpoint, ScrubOutcome};
use crate::maintenance::Pacer;
use crate::types::SlotId;
use std::time::{Duration, Instant};

/// Run a claimed scrub from `checkpoint` to its end (or until paused/canceled).
pub(super) fn run(
    target: &impl ScrubTarget,
    control: &ScrubControl,
    options: &ScrubOptions,
    checkpoint: ScrubCheckpoint,
    observe: &mut dyn FnMut(&ScrubProgress),
) -> Result<ScrubReport> {
    let span = tracing::info_span!("scrub", pool = %target.pool_uuid(), repair = checkpoint.repair);
    let _span = span.enter();
    let mut scrubber = start(target, checkpoint)?;
    let end = steps(target, control, options, &mut scrubber, observe)?;
    finish(target, scrubber, end)
}

/// Phase 1: log the start and record the checkpoint the run starts from.
fn start(target: &impl ScrubTarget, checkpoint: ScrubCheckpoint) -> Result<Scrubber> {
    let remaining = target.live_bytes_from(SlotId(checkpoint.next_slot));
    tracing::info!(
        from_slot = checkpoint.next_slot,
        bytes = remaining,
        "scrub started"
    );
    target.persist_scrub(RecordChange::Checkpoint(checkpoint.clone()))?;
    Ok(Scrubber::new(checkpoint, remaining))
}

/// Phase 2: step until the end of the slots or a request to stop, with a reader thread one
/// step ahead. Dropping the receiver stops the reader at its next step.
fn steps<T: ScrubTarget>(
    target: &T,
    control: &ScrubControl,
    options: &ScrubOptions,
    scrubber: &mut Scrubber,
    observe: &mut dyn FnMut(&ScrubProgress),
) -> Result<ScrubEnd> {
    let slots = target.geometry().slots;
    let first = scrubber.checkpoint.next_slot;
    let interval = options
        .checkpoint_interval
        .unwrap_or(crate::maintenance::CHECKPOINT_INTERVAL);
    let mut pacer = Pacer::default();
    std::thread::scope(|scope| -> Result<ScrubEnd> {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<ReadStep>(1);
        let sequential = crate::parallel::is_sequential();
        scope.spawn(move || {
            crate::parallel::set_sequential(sequential);
            let mut from = first;
            while from < slots {
                let to = (from + SLOTS_PER_STEP).min(slots);
                if sender
                    .send(read_step(target, SlotId(from), SlotId(to)))
                    .is_err()
                {
                    return;
                }
                from = to;
            }
        });
        loop {
            if let Some(end) = control.requested_end() {
                return Ok(end);
            }
            let step_started = Instant::now();
            let Ok(read) = receiver.recv() else {
                return Ok(ScrubEnd::Completed);
            };
            let stepped = scrubber.step(target, &read);
            control.show(stepped.progress.clone());
            observe(&stepped.progress);
            if pacer.checkpoint_due_every(interval) {
                checkpoint(target, scrubber)?;
            }
            pace(
                target,
                control,
                &mut pacer,
                stepped.bytes_read,
                step_started,
            );
        }
    })
}

/// Run a claimed scrub over segments from `checkpoint` to its end (or until paused,
/// canceled, or failed: docs/FORMAT.md V4.13, stage 3). A pass is planned from one walk of
/// the map from the checkpoint's cursor, then checked chunk by chunk; an error of the walk or
/// of a chunk (the pool beyond its tolerance, a page no copy of which can be read) ends the
/// run paused at the last checkpoint it recorded (never past repairs not yet flushed), and
/// is returned.
pub(super) fn run_segments(
    target: &impl ScrubTarget,
    control: &ScrubControl,
    options: &ScrubOptions,
    checkpoint: ScrubCheckpoint,
    mut segments: Box<dyn SegmentScrub + '_>,
    budget: ChunkBudget,
    observe: &mut dyn FnMut(&ScrubProgress),
) -> Result<ScrubReport> {
    let span = tracing::info_span!("scrub", pool = %target.pool_uuid(), repair = checkpoint.repair);
    let _span = span.enter();
    let from = checkpoint.segments.map_or(0, |c| c.next_segment);
    let remaining = target.segment_bytes_from(from);
    tracing::info!(from_segment = from, bytes = remaining, "scrub started");
    target.persist_scrub(RecordChange::Checkpoint(checkpoint.clone()))?;
    let mut scrubber = Scrubber::new(checkpoint, remaining);
    let interval = options
        .checkpoint_interval
        .unwrap_or(crate::maintenance::CHECKPOINT_INTERVAL);
    let mut pacer = Pacer::default();
    let repair = scrubber.checkpoint.repair;
    // The last checkpoint recorded: where a failed run stays (never past repairs a power cut
    // could still lose).
    let mut recorded = scrubber.checkpoint.clone();
    let mut record = |scrubber: &Scrubber, segments: &mut Box<dyn SegmentScrub + '_>| {
        if repair {
            segments.settle()?;
        }
        target.persist_scrub(RecordChange::Checkpoint(scrubber.checkpoint.clone()))?;
        recorded = scrubber.checkpoint.clone();
        Ok::<(), crate::error::Error>(())
    };
    let ended = segments.plan(from).and_then(|()| loop {
        if let Some(end) = control.requested_end() {
            break Ok(end);
        }
        let chunk_started = Instant::now();
        let chunk = segments.chunk(repair, budget, &mut scrubber.checkpoint.tally)?;
        let stepped = scrubber.advance(target, chunk.bytes_read, chunk.next_segment);
        control.show(stepped.progress.clone());
        observe(&stepped.progress);
        if chunk.next_segment.is_none() {
            break Ok(ScrubEnd::Completed);
        }
        if pacer.checkpoint_due_every(interval) {
            record(&scrubber, &mut segments)?;
        }
        pace(
            target,
            control,
            &mut pacer,
            stepped.bytes_read,
            chunk_started,
        );
    });
    let ended = ended.and_then(|end| {
        if repair {
            segments.settle()?;
        }
        Ok(end)
    });
    match ended {
        Ok(end) => finish(target, scrubber, end),
        Err(err) => {
            // Paused at the last checkpoint recorded: an operator resumes it once the cause
            // is fixed (a pass that resumed itself at every open would meet the same wall).
            scrubber.note_time();
            recorded.paused = true;
            recorded.scan_secs = scrubber.checkpoint.scan_secs;
            if let Err(persist) = target.persist_scrub(RecordChange::Checkpoint(recorded)) {
                tracing::error!(%persist, "could not record where the failed scrub stopped");
            }
            tracing::error!(%err, "scrub stopped by an error; paused");
            Err(err)
        }
    }
}

/// Persist the scrub's checkpoint; stripes it rewrote are made durable first, as the
/// watermark must not pass them before.
fn checkpoint(target: &impl ScrubTarget, scrubber: &Scrubber) -> Result<()> {
    if scrubber.rewrote {
        target.commit()?;
    }
    target.persist_scrub(RecordChange::Checkpoint(scrubber.checkpoint.clone()))
}

/// Wait after a step or chunk that read `bytes` and began at `started`: as the rate asks, and
/// while foreground requests arrive [`FOREGROUND_BACKOFF`] times as long as it took.
fn pace(
    target: &impl ScrubTarget,
    control: &ScrubControl,
    pacer: &mut Pacer,
    bytes: u64,
    started: Instant,
) {
    let mut wait = pacer.after_step(control.rate(), target.foreground_recent(), bytes);
    if target.foreground_recent() {
        wait = wait.max(started.elapsed() * FOREGROUND_BACKOFF);
    }
    wait_unless_stopped(control, wait);
}

/// Wait `wait`, in slices, so a pause or cancel is honoured promptly even at a low rate.
fn wait_unless_stopped(control: &ScrubControl, wait: Duration) {
    let until = Instant::now() + wait;
    while control.running() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

/// Phase 3: make rewrites durable, record how the scrub ended, report and log it.
fn finish(target: &impl ScrubTarget, mut scrubber: Scrubber, end: ScrubEnd) -> Result<ScrubReport> {
    if scrubber.rewrote {
        target.commit()?;
    }
    scrubber.note_time();
    let checkpoint = &mut scrubber.checkpoint;
    match end {
        ScrubEnd::Paused | ScrubEnd::Interrupted => {
            checkpoint.paused = end == ScrubEnd::Paused;
            target.persist_scrub(RecordChange::Checkpoint(checkpoint.clone()))?;
        }
        ScrubEnd::Completed | ScrubEnd::Canceled => {
            let outcome = if end == ScrubEnd::Completed {
                ScrubOutcome::Completed
            } else {
                ScrubOutcome::Canceled
            };
            target.persist_scrub(RecordChange::Ended(summary_of(checkpoint, outcome)))?;
        }
    }
    let report = report_of(
        target,
        end,
        checkpoint,
        (scrubber.resumed_from_slot, scrubber.resumed_from_segment),
        scrubber.read_this_run,
    );
    log_end(&report, end);
    Ok(report)
}

/// The end of a scrub in the log: an error if data was lost, a warning if damage was found.
fn log_end(report: &ScrubReport, end: ScrubEnd) {
    let totals = &report.totals;
    if report.found_data_loss() {
        tracing::error!(
            ?end,
            checksum_errors = totals.checksum_errors,
            io_errors = totals.io_errors,
            repaired = totals.repaired,
            unrepairable_stripes = report.unrepairable_stripes,
            "scrub finished with damage left"
        );
    } else if report.found_damage() {
        tracing::warn!(
            repair = report.repair,
            ?end,
            checksum_errors = totals.checksum_errors,
            io_errors = totals.io_errors,
            repaired = totals.repaired,
            inconsistent = report.inconsistent_stripes,
            "scrub found damage; repaired unless check-only"
        );
    } else {
        tracing::info!(?end, bytes = totals.bytes_scanned, "scrub finished clean");
    }
}
