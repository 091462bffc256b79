//! A whole volume copied from one pool into a new one (`create --copy-from`): the way out of
//! format version 3 into version 4 (docs/FORMAT.md V4.12), and a change of layout, chunk size
//! or disks by copy.
//!
//! Owns: the walk over the source's written extents, the copy in windows, and the check of
//! each window, read back after the target's flush, against what was read from the source.
//! Does not own: opening or creating either pool (the caller: the CLI opens the source
//! read-only, so the copy changes no byte of it), the reads and writes themselves (the
//! public `Pool` API on both sides).

use super::Pool;
use crate::error::{Error, Result};

/// Bytes of the volume copied, then flushed and read back, at a time: bounds the crcs kept.
const WINDOW_BYTES: u64 = 256 << 20;
/// The largest single read and write of the copy.
const PIECE_BYTES: u64 = 1 << 20;
/// Pieces in flight at once (a pool's read of a piece waits on its members one row at a time).
const COPY_THREADS: usize = 4;

/// Where a copy is, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyProgress {
    /// Volume bytes walked (copied or found unwritten), in volume order.
    pub done_bytes: u64,
    /// The source volume's size.
    pub total_bytes: u64,
    /// Written bytes copied, flushed and read back so far.
    pub copied_bytes: u64,
}

/// What a finished copy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct CopyReport {
    /// The source volume's size (the target's is at least this).
    pub volume_bytes: u64,
    /// Written bytes copied; each was read back from the target after its flush and matched
    /// what the source returned.
    pub copied_bytes: u64,
    /// Bytes the source holds no data for (never written, or discarded): left unwritten in the
    /// target, where they read as zeros as they did in the source.
    pub unwritten_bytes: u64,
    /// Runs of written data copied.
    pub extents: u64,
}

impl Pool {
    /// Copy every written byte of `source`'s volume into this pool at the same offsets, a
    /// window at a time: copy, flush this pool, read the window back and compare it with what
    /// the source returned. This pool must be new (no written data) and at least as large.
    /// Nothing is written to `source`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when this pool is smaller or holds data (checked before any
    /// byte is copied); [`Error::ReadOnly`]; a source read that fails (an unrecoverable block
    /// names its volume offset) or a target write or flush that fails stops the copy, as does
    /// a window that reads back differently ([`Error::CopyMismatch`]). What was copied before
    /// stays in this pool, flushed.
    pub fn copy_from(
        &self,
        source: &Pool,
        progress: impl FnMut(&CopyProgress),
    ) -> Result<CopyReport> {
        self.copy_in_windows(source, WINDOW_BYTES, progress)
    }

    /// [`Pool::copy_from`] with windows of `window_bytes` (tests: several windows on a small
    /// volume).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn copy_from_in_windows(
        &self,
        source: &Pool,
        window_bytes: u64,
        progress: impl FnMut(&CopyProgress),
    ) -> Result<CopyReport> {
        self.copy_in_windows(source, window_bytes.max(1), progress)
    }

    fn copy_in_windows(
        &self,
        source: &Pool,
        window_bytes: u64,
        mut progress: impl FnMut(&CopyProgress),
    ) -> Result<CopyReport> {
        self.inner.writable("copy")?;
        let total = source.size();
        if self.size() < total {
            return Err(Error::InvalidConfig(format!(
                "the new pool's volume ({} bytes) is smaller than the volume to copy ({total} bytes)",
                self.size()
            )));
        }
        let held = self.status().allocated_bytes;
        if held != 0 {
            return Err(Error::InvalidConfig(format!(
                "the pool to copy into holds {held} bytes of data already: a copy goes into a new pool"
            )));
        }
        let mut report = CopyReport {
            volume_bytes: total,
            ..CopyReport::default()
        };
        let mut start = 0;
        // Where the last written run seen ended: one that goes on into the next window is
        // one run.
        let mut run_end = None;
        while start < total {
            let end = total.min(start.saturating_add(window_bytes));
            let pieces = written_pieces(source, start..end, &mut run_end, &mut report)?;
            // A window with nothing written is neither flushed nor read back (a 16 TiB volume
            // has 65,536 windows).
            if !pieces.is_empty() {
                report.copied_bytes += self.copy_window(source, &pieces)?;
            }
            progress(&CopyProgress {
                done_bytes: end,
                total_bytes: total,
                copied_bytes: report.copied_bytes,
            });
            start = end;
        }
        tracing::info!(
            copied = report.copied_bytes,
            unwritten = report.unwritten_bytes,
            "volume copied and read back"
        );
        Ok(report)
    }
}

impl Pool {
    /// Copy `pieces` (volume offset, length) from `source`, flush, read them back and compare
    /// each with the crc32c of what the source returned; the bytes copied.
    fn copy_window(&self, source: &Pool, pieces: &[(u64, u64)]) -> Result<u64> {
        let copied: Vec<Result<(u64, u64, u32)>> =
            crate::parallel::pulled(pieces, COPY_THREADS, |&(offset, length)| {
                let mut buf = vec![0u8; piece_len(length)];
                source.read_at(offset, &mut buf)?;
                self.write_at(offset, &buf)?;
                Ok((offset, length, crc32c::crc32c(&buf)))
            });
        let copied: Vec<(u64, u64, u32)> = copied.into_iter().collect::<Result<_>>()?;
        self.flush()?;
        let checked: Vec<Result<()>> =
            crate::parallel::pulled(&copied, COPY_THREADS, |&(offset, length, crc)| {
                let mut buf = vec![0u8; piece_len(length)];
                self.read_at(offset, &mut buf)?;
                if crc32c::crc32c(&buf) == crc {
                    Ok(())
                } else {
                    Err(Error::CopyMismatch { offset, length })
                }
            });
        checked.into_iter().collect::<Result<Vec<()>>>()?;
        Ok(pieces.iter().map(|&(_, length)| length).sum())
    }
}

fn piece_len(length: u64) -> usize {
    usize::try_from(length).unwrap_or(usize::MAX)
}

/// The written runs of `source` in `range`, cut into pieces of at most [`PIECE_BYTES`];
/// counts the unwritten bytes and the runs (one that starts at `run_end` continues one) into
/// `report`.
fn written_pieces(
    source: &Pool,
    range: std::ops::Range<u64>,
    run_end: &mut Option<u64>,
    report: &mut CopyReport,
) -> Result<Vec<(u64, u64)>> {
    let mut pieces = Vec::new();
    let (mut at, end) = (range.start, range.end);
    while at < end {
        // A v4 pool answers for a prefix of a long range: ask again from where it stopped.
        let extents = source.allocation(at, end - at)?;
        let Some(last) = extents.last() else {
            return Err(Error::corrupt_metadata(format!(
                "the allocation of [{at}, {end}) came back empty"
            )));
        };
        let reached = last.offset + last.length;
        for extent in extents {
            if !extent.allocated {
                report.unwritten_bytes += extent.length;
                continue;
            }
            let stop = extent.offset + extent.length;
            if *run_end != Some(extent.offset) {
                report.extents += 1;
            }
            *run_end = Some(stop);
            let mut offset = extent.offset;
            while offset < stop {
                let length = PIECE_BYTES.min(stop - offset);
                pieces.push((offset, length));
                offset += length;
            }
        }
        if reached <= at {
            return Err(Error::corrupt_metadata(format!(
                "the allocation of [{at}, {end}) did not advance"
            )));
        }
        at = reached;
    }
    Ok(pieces)
}
