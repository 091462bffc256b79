//! The send stream (docs/FORMAT.md V4.10d): a 512-byte header naming the recovery point sent
//! and its base, then records (48-byte head, then the payload of a data record), closed by an
//! end record. Every part carries a crc32c, and each record head a chain crc over all before it,
//! so a stream is taken whole or refused.
//!
//! Owns: the bytes of the stream and every check a reader makes on them. Does not own: what
//! goes in (the pool's send reads a recovery point) nor where it lands (the pool's receive).

use super::{check_recovery_name, le};
use std::io::{Read, Write};

/// The header's first bytes.
pub const STREAM_MAGIC: [u8; 8] = *b"STRPSEND";
/// This build's stream version.
pub const STREAM_VERSION: u32 = 1;
/// Bytes of the header.
pub const STREAM_HEADER_BYTES: usize = 512;
/// Bytes of a record head.
pub const RECORD_HEAD_BYTES: usize = 48;
/// A record head's first bytes.
pub const RECORD_MAGIC: [u8; 4] = *b"SREC";
/// The largest payload of a data record.
pub const RECORD_DATA_MAX: u64 = 1 << 20;
/// The block size ranges are aligned to.
pub const STREAM_BLOCK: u64 = 4096;

/// What a stream says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    /// Bytes of the source volume (every range lies inside it).
    pub volume_bytes: u64,
    /// The source pool's id.
    pub pool: [u8; 16],
    /// The guid of the recovery point sent.
    pub guid: u64,
    /// Its created time, seconds since the Unix epoch.
    pub created: u64,
    /// The guid of the base (0: a full stream).
    pub base_guid: u64,
    /// Its name.
    pub name: String,
}

impl StreamHeader {
    /// The 512 bytes of the header.
    #[must_use]
    pub fn encode(&self) -> [u8; STREAM_HEADER_BYTES] {
        let mut bytes = [0u8; STREAM_HEADER_BYTES];
        bytes[0..8].copy_from_slice(&STREAM_MAGIC);
        le::put(&mut bytes, 8, 4, u64::from(STREAM_VERSION));
        le::put(&mut bytes, 12, 4, STREAM_HEADER_BYTES as u64);
        le::put(&mut bytes, 16, 8, self.volume_bytes);
        le::put(&mut bytes, 24, 4, STREAM_BLOCK);
        bytes[32..48].copy_from_slice(&self.pool);
        le::put(&mut bytes, 48, 8, self.guid);
        le::put(&mut bytes, 56, 8, self.created);
        le::put(&mut bytes, 64, 8, self.base_guid);
        let name = self.name.as_bytes();
        let len = name.len().min(63);
        bytes[72] = len as u8;
        bytes[73..73 + len].copy_from_slice(&name[..len]);
        let crc = crc32c::crc32c(&bytes[..508]);
        le::put(&mut bytes, 508, 4, u64::from(crc));
        bytes
    }

    /// Decode and check a header.
    ///
    /// # Errors
    /// Why the bytes are not a header this build reads.
    pub fn decode(bytes: &[u8; STREAM_HEADER_BYTES]) -> Result<Self, String> {
        if bytes[0..8] != STREAM_MAGIC {
            return Err("not a stripestore send stream (bad magic)".into());
        }
        if crc32c::crc32c(&bytes[..508]) != le::u32_at(bytes, 508) {
            return Err("the header's crc does not match".into());
        }
        let version = le::u32_at(bytes, 8);
        if version != STREAM_VERSION {
            return Err(format!(
                "stream version {version}; this build reads version {STREAM_VERSION}"
            ));
        }
        if le::u32_at(bytes, 12) as usize != STREAM_HEADER_BYTES
            || u64::from(le::u32_at(bytes, 24)) != STREAM_BLOCK
        {
            return Err("a header or block size this build does not write".into());
        }
        let len = usize::from(bytes[72]);
        if len > 63
            || bytes[28..32]
                .iter()
                .chain(&bytes[73 + len..508])
                .any(|b| *b != 0)
        {
            return Err("nonzero reserved bytes in the header".into());
        }
        let name = std::str::from_utf8(&bytes[73..73 + len])
            .map_err(|_| "a name that is not UTF-8".to_string())?
            .to_string();
        check_recovery_name(&name)?;
        let header = Self {
            volume_bytes: le::u64_at(bytes, 16),
            pool: bytes[32..48].try_into().unwrap_or([0; 16]),
            guid: le::u64_at(bytes, 48),
            created: le::u64_at(bytes, 56),
            base_guid: le::u64_at(bytes, 64),
            name,
        };
        if header.guid == 0 || header.guid == header.base_guid {
            return Err("a guid of 0, or equal to the base's".into());
        }
        if header.volume_bytes == 0 || !header.volume_bytes.is_multiple_of(STREAM_BLOCK) {
            return Err(format!(
                "a volume of {} bytes (not a positive multiple of 4 KiB)",
                header.volume_bytes
            ));
        }
        Ok(header)
    }
}

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// The range's bytes follow.
    Data = 1,
    /// The range reads zeros.
    Zeros = 2,
    /// The stream's end.
    End = 3,
}

/// One record, as a reader returns it (a data record's bytes are in the reader's buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Data or zeros (a reader consumes the end record itself).
    pub kind: RecordKind,
    /// Byte offset in the volume.
    pub offset: u64,
    /// Bytes.
    pub length: u64,
}

fn head_bytes(
    kind: RecordKind,
    index: u64,
    offset: u64,
    length: u64,
    payload_crc: u32,
    chain: u32,
) -> ([u8; RECORD_HEAD_BYTES], u32) {
    let mut head = [0u8; RECORD_HEAD_BYTES];
    head[0..4].copy_from_slice(&RECORD_MAGIC);
    le::put(&mut head, 4, 4, kind as u64);
    le::put(&mut head, 8, 8, index);
    le::put(&mut head, 16, 8, offset);
    le::put(&mut head, 24, 8, length);
    le::put(&mut head, 32, 4, u64::from(payload_crc));
    let next = crc32c::crc32c_append(crc32c::crc32c(&chain.to_le_bytes()), &head[..40]);
    le::put(&mut head, 40, 4, u64::from(next));
    let own = crc32c::crc32c(&head[..44]);
    le::put(&mut head, 44, 4, u64::from(own));
    (head, next)
}

/// Writes a stream: the header at once, then records in ascending order, then the end.
#[derive(Debug)]
pub struct StreamWriter<W: Write> {
    out: W,
    chain: u32,
    index: u64,
    data_bytes: u64,
    written: u64,
}

impl<W: Write> StreamWriter<W> {
    /// Start a stream with `header`.
    ///
    /// # Errors
    /// What writing to `out` returns.
    pub fn new(mut out: W, header: &StreamHeader) -> std::io::Result<Self> {
        let bytes = header.encode();
        out.write_all(&bytes)?;
        Ok(Self {
            out,
            chain: le::u32_at(&bytes, 508),
            index: 0,
            data_bytes: 0,
            written: STREAM_HEADER_BYTES as u64,
        })
    }

    fn record(
        &mut self,
        kind: RecordKind,
        offset: u64,
        length: u64,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let crc = if payload.is_empty() {
            0
        } else {
            crc32c::crc32c(payload)
        };
        let (head, chain) = head_bytes(kind, self.index, offset, length, crc, self.chain);
        self.out.write_all(&head)?;
        self.out.write_all(payload)?;
        self.chain = chain;
        self.index += 1;
        self.written += (RECORD_HEAD_BYTES + payload.len()) as u64;
        Ok(())
    }

    /// A data record: `data` (a 4 KiB multiple, at most 1 MiB) for the range at `offset`.
    ///
    /// # Errors
    /// What writing returns.
    pub fn data(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.data_bytes += data.len() as u64;
        self.record(RecordKind::Data, offset, data.len() as u64, data)
    }

    /// A zeros record for `length` bytes at `offset`.
    ///
    /// # Errors
    /// What writing returns.
    pub fn zeros(&mut self, offset: u64, length: u64) -> std::io::Result<()> {
        self.record(RecordKind::Zeros, offset, length, &[])
    }

    /// Close the stream with its end record and flush; returns the output and the bytes
    /// written.
    ///
    /// # Errors
    /// What writing returns.
    pub fn finish(mut self) -> std::io::Result<(W, u64)> {
        let (records, data) = (self.index, self.data_bytes);
        self.record(RecordKind::End, data, records, &[])?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}

/// Reads a stream, checking every part as it goes: [`StreamReader::next`] returns the records
/// in order and `Ok(None)` only after an end record that matches everything before it, with
/// nothing after it.
#[derive(Debug)]
pub struct StreamReader<R: Read> {
    input: R,
    header: StreamHeader,
    chain: u32,
    index: u64,
    next_offset: u64,
    data_bytes: u64,
    at: u64,
    ended: bool,
}

/// Why a stream is refused, and where.
#[derive(Debug)]
pub struct StreamError {
    /// Byte position in the stream.
    pub at: u64,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at byte {}: {}", self.at, self.reason)
    }
}

fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

impl<R: Read> StreamReader<R> {
    /// Read and check the header.
    ///
    /// # Errors
    /// A header that is short, or not one this build reads.
    pub fn new(mut input: R) -> Result<Self, StreamError> {
        let mut bytes = [0u8; STREAM_HEADER_BYTES];
        let got = read_full(&mut input, &mut bytes).map_err(|e| StreamError {
            at: 0,
            reason: format!("reading the header: {e}"),
        })?;
        if got < STREAM_HEADER_BYTES {
            return Err(StreamError {
                at: got as u64,
                reason: format!("truncated: the header is {STREAM_HEADER_BYTES} bytes"),
            });
        }
        let header =
            StreamHeader::decode(&bytes).map_err(|reason| StreamError { at: 0, reason })?;
        Ok(Self {
            input,
            chain: le::u32_at(&bytes, 508),
            header,
            index: 0,
            next_offset: 0,
            data_bytes: 0,
            at: STREAM_HEADER_BYTES as u64,
            ended: false,
        })
    }

    /// The stream's header.
    #[must_use]
    pub fn header(&self) -> &StreamHeader {
        &self.header
    }

    /// Bytes read so far.
    #[must_use]
    pub fn position(&self) -> u64 {
        self.at
    }

    fn refuse<T>(&self, reason: impl Into<String>) -> Result<T, StreamError> {
        Err(StreamError {
            at: self.at,
            reason: reason.into(),
        })
    }

    /// The next record, checked (a data record's bytes in `payload`); `None` after the end.
    ///
    /// # Errors
    /// Anything that is not the next record of a whole, correct stream.
    pub fn next(&mut self, payload: &mut Vec<u8>) -> Result<Option<Record>, StreamError> {
        if self.ended {
            return Ok(None);
        }
        let mut head = [0u8; RECORD_HEAD_BYTES];
        let got = read_full(&mut self.input, &mut head).map_err(|e| StreamError {
            at: self.at,
            reason: format!("reading: {e}"),
        })?;
        if got < RECORD_HEAD_BYTES {
            return self.refuse(format!(
                "truncated: {got} bytes where record {} begins, and no end record",
                self.index
            ));
        }
        if head[0..4] != RECORD_MAGIC {
            return self.refuse("not a record head (bad magic)");
        }
        if crc32c::crc32c(&head[..44]) != le::u32_at(&head, 44) {
            return self.refuse("a record head whose crc does not match");
        }
        let kind = match le::u32_at(&head, 4) {
            1 => RecordKind::Data,
            2 => RecordKind::Zeros,
            3 => RecordKind::End,
            other => return self.refuse(format!("a record of kind {other}")),
        };
        let index = le::u64_at(&head, 8);
        let offset = le::u64_at(&head, 16);
        let length = le::u64_at(&head, 24);
        let payload_crc = le::u32_at(&head, 32);
        if index != self.index {
            return self.refuse(format!(
                "record {index} where record {} comes (dropped, repeated or reordered)",
                self.index
            ));
        }
        if head[36..40].iter().any(|b| *b != 0) {
            return self.refuse("nonzero reserved bytes in a record head");
        }
        let (_, chain) = head_bytes(kind, index, offset, length, payload_crc, self.chain);
        if chain != le::u32_at(&head, 40) {
            return self.refuse(format!(
                "record {index} does not follow the records before it (chain crc)"
            ));
        }
        if kind == RecordKind::End {
            if offset != self.data_bytes || length != self.index || payload_crc != 0 {
                return self.refuse(format!(
                    "the end record counts {length} records and {offset} data bytes; the \
                     stream had {} and {}",
                    self.index, self.data_bytes
                ));
            }
            self.at += RECORD_HEAD_BYTES as u64;
            let mut more = [0u8; 1];
            if read_full(&mut self.input, &mut more).map_err(|e| StreamError {
                at: self.at,
                reason: format!("reading: {e}"),
            })? != 0
            {
                return self.refuse("bytes after the end record");
            }
            self.ended = true;
            return Ok(None);
        }
        let end = offset.checked_add(length);
        if !offset.is_multiple_of(STREAM_BLOCK)
            || !length.is_multiple_of(STREAM_BLOCK)
            || length == 0
            || end.is_none_or(|end| end > self.header.volume_bytes)
            || offset < self.next_offset
        {
            return self.refuse(format!(
                "record {index}: {length} bytes at {offset}: not 4 KiB aligned, empty, past \
                 the volume ({} bytes) or before the record ahead of it",
                self.header.volume_bytes
            ));
        }
        if kind == RecordKind::Data {
            if length > RECORD_DATA_MAX {
                return self.refuse(format!("record {index}: a data record of {length} bytes"));
            }
            let bytes = usize::try_from(length).unwrap_or(0);
            payload.resize(bytes, 0);
            let got = read_full(&mut self.input, payload).map_err(|e| StreamError {
                at: self.at,
                reason: format!("reading: {e}"),
            })?;
            if got < bytes {
                return self.refuse(format!(
                    "truncated inside record {index} ({got} of {bytes} bytes)"
                ));
            }
            if crc32c::crc32c(payload) != payload_crc {
                return self.refuse(format!("record {index}: its bytes' crc does not match"));
            }
            self.data_bytes += length;
            self.at += length;
        } else if payload_crc != 0 {
            return self.refuse(format!("record {index}: a zeros record with a crc"));
        }
        self.at += RECORD_HEAD_BYTES as u64;
        self.chain = chain;
        self.index += 1;
        self.next_offset = offset + length;
        Ok(Some(Record {
            kind,
            offset,
            length,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> StreamHeader {
        StreamHeader {
            volume_bytes: 1 << 24,
            pool: [7; 16],
            guid: 0xabc,
            created: 1_790_000_000,
            base_guid: 0,
            name: "daily".into(),
        }
    }

    fn stream() -> Vec<u8> {
        let mut w = StreamWriter::new(Vec::new(), &header()).unwrap();
        w.data(0, &[1u8; 8192]).unwrap();
        w.zeros(8192, 4096).unwrap();
        w.data(1 << 20, &[2u8; 4096]).unwrap();
        let (out, written) = w.finish().unwrap();
        assert_eq!(written, out.len() as u64);
        out
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(Record, Vec<u8>)>, StreamError> {
        let mut r = StreamReader::new(bytes)?;
        let mut out = Vec::new();
        let mut payload = Vec::new();
        while let Some(record) = r.next(&mut payload)? {
            out.push((record, payload.clone()));
        }
        Ok(out)
    }

    #[test]
    fn a_stream_reads_back_as_written() {
        let records = read_all(&stream()).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].0.offset, 0);
        assert_eq!(records[0].1, vec![1u8; 8192]);
        assert_eq!(records[1].0.kind, RecordKind::Zeros);
        assert_eq!(records[2].1, vec![2u8; 4096]);
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_refused() {
        let good = stream();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            assert!(read_all(&bad).is_err(), "a flip at byte {at} was taken");
        }
        for len in 0..good.len() {
            assert!(read_all(&good[..len]).is_err(), "a cut at {len} was taken");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(read_all(&longer).is_err());
    }

    /// A stream of another version, or a header of another size, is refused naming it, even
    /// with a crc that matches (a newer build's stream, read by this one).
    #[test]
    fn a_stream_of_another_version_is_refused_by_name() {
        let mut bytes = header().encode();
        le::put(&mut bytes, 8, 4, 2);
        let crc = crc32c::crc32c(&bytes[..508]);
        le::put(&mut bytes, 508, 4, u64::from(crc));
        let e = StreamHeader::decode(&bytes).unwrap_err();
        assert!(
            e.contains("stream version 2") && e.contains("reads version 1"),
            "{e}"
        );
        let mut wrong = bytes;
        wrong[0] = b'X';
        assert!(StreamHeader::decode(&wrong).unwrap_err().contains("magic"));
    }

    #[test]
    fn a_record_from_another_stream_or_out_of_order_is_refused() {
        let mut other_header = header();
        other_header.guid = 0xdef;
        let mut w = StreamWriter::new(Vec::new(), &other_header).unwrap();
        w.data(0, &[1u8; 8192]).unwrap();
        let other = w.out;
        let mut spliced = stream();
        // Record 0 of the other stream (same index, own crc right, other chain).
        let at = STREAM_HEADER_BYTES;
        spliced[at..at + RECORD_HEAD_BYTES].copy_from_slice(&other[at..at + RECORD_HEAD_BYTES]);
        let e = read_all(&spliced).unwrap_err();
        assert!(e.reason.contains("chain"), "{e}");
        let mut w = StreamWriter::new(Vec::new(), &header()).unwrap();
        w.data(8192, &[1u8; 4096]).unwrap();
        w.data(0, &[1u8; 4096]).unwrap();
        let e = read_all(&w.finish().unwrap().0).unwrap_err();
        assert!(e.reason.contains("before the record ahead"), "{e}");
        let mut w = StreamWriter::new(Vec::new(), &header()).unwrap();
        w.data((1 << 24) - 4096, &[1u8; 8192]).unwrap();
        let e = read_all(&w.finish().unwrap().0).unwrap_err();
        assert!(e.reason.contains("past"), "{e}");
    }
}
