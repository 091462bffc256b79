//! Diff, send and receive of recovery points (docs/FORMAT.md V4.10d): the changed ranges
//! between two recovery points, a stream of one (whole, or what changed since a base), and a
//! receive that checks the whole stream before it writes a byte, then applies it through the
//! pool's ordinary write path, so the target may have any layout.
//!
//! Owns: the order of a receive (check, begin, apply, finish) and what it reports. Does not
//! own: the stream's bytes and checks (`format::v4::stream`), the receive record and the exact
//! abort (the map's), the refusal of other writes meanwhile (the volume's).

use super::{Pool, PoolInner};
use crate::error::{Error, Result};
use crate::format::v4::stream::{
    RecordKind, StreamError, StreamHeader, StreamReader, StreamWriter, RECORD_DATA_MAX,
};
use crate::meta::{IncomingPoint, PointUsage};
use crate::volume::BLOCK_BYTES;
use std::io::{Read, Seek, SeekFrom, Write};

/// A receive commits after this many records (at most 16 MiB of data).
const COMMIT_RECORDS: u64 = 16;

/// A byte range of the volume whose content may differ between two recovery points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ChangedRange {
    /// Byte offset.
    pub offset: u64,
    /// Bytes.
    pub length: u64,
    /// The range reads zeros in the newer recovery point.
    pub zeros: bool,
}

/// What a send wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SendReport {
    /// The recovery point sent.
    pub name: String,
    /// Its guid.
    pub guid: u64,
    /// The base's guid (0: a full stream).
    pub base_guid: u64,
    /// Records, the end record excluded.
    pub records: u64,
    /// Bytes of data carried.
    pub data_bytes: u64,
    /// Bytes the stream says read zeros.
    pub zero_bytes: u64,
    /// Bytes of the stream.
    pub stream_bytes: u64,
}

/// What a receive did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReceiveReport {
    /// The recovery point received (now the newest on the live line).
    pub name: String,
    /// Its guid (the sender's).
    pub guid: u64,
    /// The base's guid (0: a full stream).
    pub base_guid: u64,
    /// Records applied.
    pub records: u64,
    /// Bytes of data written.
    pub data_bytes: u64,
    /// Bytes made to read zeros.
    pub zero_bytes: u64,
    /// It finished a receive a crash or an error had left unfinished.
    pub resumed: bool,
}

/// A phase of a receive, for progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceivePhase {
    /// Reading the whole stream and checking it (nothing written yet).
    Checking,
    /// Writing it into the volume.
    Applying,
}

fn stream_error(e: StreamError) -> Error {
    Error::Stream {
        at: e.at,
        reason: e.reason,
    }
}

fn output_error(e: std::io::Error) -> Error {
    Error::Io {
        device: "the stream".into(),
        offset: None,
        source: e,
    }
}

impl PoolInner {
    /// See [`Pool::diff_recovery_points`].
    fn diff_recovery_points(
        &self,
        from: Option<&str>,
        to: &str,
        visit: &mut dyn FnMut(ChangedRange) -> Result<()>,
    ) -> Result<()> {
        let rows = self.recovery_engine("a diff of recovery points")?;
        let volume = rows.read_volume();
        let block = BLOCK_BYTES as u64;
        volume.diff_recovery_points(&self.volume_devices(), from, to, &mut |run| {
            visit(ChangedRange {
                offset: run.first * block,
                length: run.blocks * block,
                zeros: run.zeros,
            })
        })
    }

    /// See [`Pool::send`].
    fn send(
        &self,
        to: &str,
        from: Option<&str>,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<SendReport> {
        let rows = self.recovery_engine("a send")?;
        let volume = rows.read_volume();
        let devices = self.volume_devices();
        let points = volume.recovery_points();
        let find = |name: &str| {
            points
                .iter()
                .find(|p| p.name == name)
                .cloned()
                .ok_or_else(|| Error::RecoveryPoint {
                    name: name.to_string(),
                    reason: "there is no recovery point of that name".into(),
                })
        };
        let point = find(to)?;
        let base_guid = match from {
            Some(name) => find(name)?.guid,
            None => 0,
        };
        let header = StreamHeader {
            volume_bytes: self.volume_bytes(),
            pool: self.uuid.0,
            guid: point.guid,
            created: point.created,
            base_guid,
            name: point.name.clone(),
        };
        let map = volume.recovery_point_map(to)?;
        let mut writer = StreamWriter::new(out, &header).map_err(output_error)?;
        let mut report = SendReport {
            name: point.name,
            guid: point.guid,
            base_guid,
            records: 0,
            data_bytes: 0,
            zero_bytes: 0,
            stream_bytes: 0,
        };
        let mut buf = vec![0u8; usize::try_from(RECORD_DATA_MAX).unwrap_or(1 << 20)];
        let block = BLOCK_BYTES as u64;
        volume.diff_recovery_points(&devices, from, to, &mut |run| {
            let (mut offset, end) = (run.first * block, (run.first + run.blocks) * block);
            if run.zeros {
                writer.zeros(offset, end - offset).map_err(output_error)?;
                report.records += 1;
                report.zero_bytes += end - offset;
                return Ok(());
            }
            while offset < end {
                let n = (end - offset).min(RECORD_DATA_MAX);
                let chunk = &mut buf[..usize::try_from(n).unwrap_or(0)];
                volume.read_point_map(&devices, &map, offset, chunk)?;
                writer.data(offset, chunk).map_err(output_error)?;
                report.records += 1;
                report.data_bytes += n;
                offset += n;
                progress(report.data_bytes);
            }
            Ok(())
        })?;
        report.stream_bytes = writer.finish().map_err(output_error)?.1;
        Ok(report)
    }

    /// See [`Pool::receive`].
    fn receive(
        &self,
        stream: &mut dyn ReadSeek,
        progress: &mut dyn FnMut(ReceivePhase, u64),
    ) -> Result<ReceiveReport> {
        self.writable("receive")?;
        let rows = self.recovery_engine("a receive")?;
        self.check_available()?;
        // Pass 1: the whole stream is read and checked before anything is written.
        let start = stream.stream_position().map_err(|e| Error::Stream {
            at: 0,
            reason: format!("cannot tell the stream's position: {e}"),
        })?;
        let mut reader = StreamReader::new(&mut *stream).map_err(stream_error)?;
        let header = reader.header().clone();
        let size = self.volume_bytes();
        if header.volume_bytes > size {
            return Err(Error::Stream {
                at: 16,
                reason: format!(
                    "the stream is of a volume of {} bytes; this pool's holds {size}",
                    header.volume_bytes
                ),
            });
        }
        let incoming = IncomingPoint {
            name: header.name.clone(),
            guid: header.guid,
            base_guid: header.base_guid,
            created: header.created,
        };
        let resumed = {
            let volume = rows.read_volume();
            volume.check_receivable(&incoming)?;
            volume.unfinished_receive().is_some()
        };
        let mut payload = Vec::new();
        while reader.next(&mut payload).map_err(stream_error)?.is_some() {
            progress(ReceivePhase::Checking, reader.position());
        }
        // Pass 2: begin (the receive record), apply every record again checked, finish.
        stream
            .seek(SeekFrom::Start(start))
            .map_err(|e| Error::Stream {
                at: 0,
                reason: format!("cannot read the stream a second time: {e}"),
            })?;
        let mut reader = StreamReader::new(&mut *stream).map_err(stream_error)?;
        if reader.header() != &header {
            return Err(Error::Stream {
                at: 0,
                reason: "the stream changed between its check and its apply".into(),
            });
        }
        self.members.enable_received_streams()?;
        {
            let mut volume = rows.write_volume();
            let begun = volume.begin_receive(&self.write_devices(), &incoming);
            self.unavailable_if_failed(&volume, begun)?;
        }
        let mut report = ReceiveReport {
            name: header.name.clone(),
            guid: header.guid,
            base_guid: header.base_guid,
            records: 0,
            data_bytes: 0,
            zero_bytes: 0,
            resumed,
        };
        // Each record under the volume's lock, as the receive's own write: nothing else
        // changes the volume's content meanwhile (a client's write is refused, not mixed in).
        let devices = self.write_devices();
        while let Some(record) = reader.next(&mut payload).map_err(stream_error)? {
            let mut volume = rows.write_volume();
            let written = match record.kind {
                RecordKind::Data => {
                    report.data_bytes += record.length;
                    volume.receive_write(&devices, record.offset, &payload)
                }
                _ => {
                    report.zero_bytes += record.length;
                    volume.receive_discard(&devices, record.offset, record.length)
                }
            };
            self.unavailable_if_failed(&volume, written)?;
            report.records += 1;
            // A commit every few records bounds what a crash takes back (the pending map
            // changes too): the applied part stays, for an abort to free or a resume to write
            // again.
            if report.records.is_multiple_of(COMMIT_RECORDS) {
                let committed = volume.flush(&devices).map(|_| ());
                self.unavailable_if_failed(&volume, committed)?;
            }
            progress(ReceivePhase::Applying, reader.position());
        }
        let mut volume = rows.write_volume();
        let finished = volume.finish_receive(&self.write_devices());
        self.unavailable_if_failed(&volume, finished)?;
        Ok(report)
    }

    /// See [`Pool::abort_receive`].
    fn abort_receive(&self) -> Result<PointUsage> {
        self.writable("abort a receive")?;
        let rows = self.recovery_engine("aborting a receive")?;
        self.check_available()?;
        let mut volume = rows.write_volume();
        let result = volume.abort_receive(&self.write_devices());
        self.unavailable_if_failed(&volume, result)
    }
}

/// A stream a receive can read twice.
pub trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

impl Pool {
    /// Call `visit` with every byte range whose content may differ between recovery point
    /// `from` (`None`: an empty volume) and recovery point `to`, in ascending order, merged.
    /// Walks only the map pages that differ; writes nothing. A range rewritten with the same
    /// bytes is reported (pointers are compared, not bytes).
    ///
    /// # Errors
    /// [`Error::Unsupported`] on a version-3 pool; [`Error::RecoveryPoint`] when either does
    /// not exist; a page that cannot be read; what `visit` returns.
    pub fn diff_recovery_points(
        &self,
        from: Option<&str>,
        to: &str,
        visit: &mut dyn FnMut(ChangedRange) -> Result<()>,
    ) -> Result<()> {
        self.inner.diff_recovery_points(from, to, visit)
    }

    /// Write a stream of recovery point `to` into `out`: every written block of it, or, with
    /// `from`, only the ranges that differ from recovery point `from` (an incremental stream,
    /// which a pool holding `from` as its newest recovery point receives). Blocks are read
    /// through the verified read path. `progress` gets the data bytes sent so far.
    ///
    /// # Errors
    /// [`Error::Unsupported`] on a version-3 pool; [`Error::RecoveryPoint`] when either does
    /// not exist; a block no redundancy can return; [`Error::Io`] writing `out`.
    pub fn send(
        &self,
        to: &str,
        from: Option<&str>,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<SendReport> {
        self.inner.send(to, from, out, progress)
    }

    /// Receive a stream written by [`Pool::send`] (FORMAT.md V4.10d): the whole stream is
    /// read and checked first, and a stream that is corrupt, truncated, for a base this pool
    /// does not have as its newest recovery point (or a full one for a pool with data) is
    /// refused with nothing written. Then it is applied through the ordinary write path (any
    /// layout) and becomes the newest recovery point, with the sender's name and guid; the
    /// live volume reads as it. A receive cut short (a crash, an error) leaves the volume
    /// reading as it was before, refusing other changes until the same stream is received
    /// again (it resumes) or [`Pool::abort_receive`] runs. Other writes are refused while
    /// it runs. The stream is read twice, from its position when called.
    ///
    /// # Errors
    /// [`Error::Stream`] naming the byte where the stream is wrong; [`Error::RecoveryPoint`]
    /// for a precondition that does not hold; [`Error::ReadOnly`]; what writes return.
    pub fn receive(
        &self,
        stream: &mut dyn ReadSeek,
        progress: &mut dyn FnMut(ReceivePhase, u64),
    ) -> Result<ReceiveReport> {
        self.inner.receive(stream, progress)
    }

    /// Abort the unfinished receive: what it wrote is freed, exactly, and the volume is as it
    /// was before it (durably when this returns). Returns what was freed.
    ///
    /// # Errors
    /// [`Error::RecoveryPoint`] when no receive is unfinished; [`Error::ReadOnly`].
    pub fn abort_receive(&self) -> Result<PointUsage> {
        self.inner.abort_receive()
    }

    /// The unfinished receive, if there is one (none on a version-3 pool).
    #[must_use]
    pub fn unfinished_receive(&self) -> Option<IncomingPoint> {
        self.inner
            .rows()
            .and_then(|rows| rows.read_volume().unfinished_receive())
    }
}
