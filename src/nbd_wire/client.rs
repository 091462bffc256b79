//! A minimal NBD client over any byte stream: fixed newstyle negotiation with `NBD_OPT_GO`
//! (optionally structured replies and the `base:allocation` metadata context first, see
//! [`negotiate`] and [`Client::connect_with`]), then requests one at a time or pipelined
//! ([`Client::send`] / [`Client::receive`]), their replies simple or structured.
//!
//! [`Client`] serves the tests and the benchmark (the real clients are libnbd, qemu and the
//! kernel). [`negotiate`] and [`read_simple_reply_header`] are also the wire half of
//! `device::nbd`, the pool member kept on an NBD export, which sends requests from many
//! threads and receives replies on a thread of its own. Everything here checks what it
//! receives as strictly as the server checks what it is sent.

use super::proto::{
    self, cmd, cmd_flag, info, opt, rep, reply_flag, reply_type, ExportInfo, ProtoError, Request,
};
use std::collections::HashMap;
use std::io::{self, Read, Write};

/// What can go wrong on the client side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The transport failed or closed.
    #[error("NBD transport: {0}")]
    Io(#[from] io::Error),
    /// The server broke the protocol.
    #[error("NBD protocol: {0}")]
    Protocol(String),
    /// The server refused an option during negotiation (`NBD_REP_ERR_*`).
    #[error("NBD server refused option {option}: reply type {reply:#x}")]
    Refused {
        /// The option.
        option: u32,
        /// The error reply type.
        reply: u32,
    },
    /// The server answered a request with an error (`NBD_E*`, e.g. 5 = `EIO`).
    #[error("NBD request failed with error {errno}")]
    Request {
        /// The error number.
        errno: u32,
    },
}

impl From<ProtoError> for ClientError {
    fn from(err: ProtoError) -> Self {
        ClientError::Protocol(err.to_string())
    }
}

/// A reply as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The request's cookie.
    pub cookie: u64,
    /// `0` or an `NBD_E*` error number.
    pub errno: u32,
    /// A successful read's data (empty otherwise).
    pub data: Vec<u8>,
    /// A successful block status's descriptors: (length, status flags).
    pub status: Vec<(u32, u32)>,
    /// Whether the reply came as structured chunks.
    pub structured: bool,
}

/// What to negotiate before `NBD_OPT_GO`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Ask for structured replies.
    pub structured_replies: bool,
    /// Metadata context queries to select (needs structured replies), e.g. `base:allocation`.
    pub meta_contexts: Vec<String>,
}

/// A connected client in the transmission phase.
#[derive(Debug)]
pub struct Client<S> {
    stream: S,
    export: ExportInfo,
    next_cookie: u64,
    /// Reads in flight: cookie → (offset, length) of the data a successful reply carries.
    pending_reads: HashMap<u64, (u64, usize)>,
    /// Structured replies were negotiated.
    structured: bool,
    /// The id the server gave `base:allocation`, if selected.
    allocation_context: Option<u32>,
}

impl<S: Read + Write> Client<S> {
    /// Negotiate on `stream` and select `export_name` with `NBD_OPT_GO`.
    ///
    /// # Errors
    /// Transport errors, protocol errors, or the server refusing the export.
    pub fn connect(stream: S, export_name: &str) -> Result<Self, ClientError> {
        Self::connect_with(stream, export_name, &ConnectOptions::default())
    }

    /// As [`Client::connect`], negotiating `options` first.
    ///
    /// # Errors
    /// Transport errors, protocol errors, or the server refusing an option or the export.
    pub fn connect_with(
        mut stream: S,
        export_name: &str,
        options: &ConnectOptions,
    ) -> Result<Self, ClientError> {
        let negotiated = negotiate(&mut stream, export_name, options)?;
        Ok(Self {
            stream,
            export: negotiated.export,
            next_cookie: 1,
            pending_reads: HashMap::new(),
            structured: negotiated.structured,
            allocation_context: negotiated.allocation_context,
        })
    }

    /// The export as the server described it.
    #[must_use]
    pub fn export(&self) -> &ExportInfo {
        &self.export
    }

    /// The id the server gave `base:allocation`, if it was selected.
    #[must_use]
    pub fn allocation_context(&self) -> Option<u32> {
        self.allocation_context
    }

    /// Send one request (with its payload for a write) without waiting; returns its cookie.
    ///
    /// # Errors
    /// Transport errors.
    pub fn send(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> Result<u64, ClientError> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let request = Request {
            flags,
            command,
            cookie,
            offset,
            length,
        };
        self.stream.write_all(&proto::encode_request(&request))?;
        self.stream.write_all(payload)?;
        if command == cmd::READ {
            self.pending_reads
                .insert(cookie, (offset, usize::try_from(length).unwrap_or(0)));
        }
        Ok(cookie)
    }

    /// Receive the next reply (in whatever order the server sends them), simple or structured
    /// (all chunks of one reply, which this client expects back to back).
    ///
    /// # Errors
    /// Transport errors; a reply with an unknown cookie, a structured reply that was not
    /// negotiated, a simple reply to a read once it was, or malformed chunks are protocol errors.
    pub fn receive(&mut self) -> Result<Reply, ClientError> {
        let mut magic = [0u8; 4];
        self.stream.read_exact(&mut magic)?;
        if u32::from_be_bytes(magic) == proto::STRUCTURED_REPLY_MAGIC {
            return self.receive_structured(magic);
        }
        let mut header = [0u8; proto::REPLY_BYTES];
        header[..4].copy_from_slice(&magic);
        self.stream.read_exact(&mut header[4..])?;
        let (errno, cookie) = proto::decode_reply(&header)?;
        let mut data = Vec::new();
        if let Some((_, length)) = self.pending_reads.remove(&cookie) {
            if self.structured {
                return Err(ClientError::Protocol(format!(
                    "simple reply to read {cookie} after structured replies were negotiated"
                )));
            }
            if errno == 0 {
                data = vec![0u8; length];
                self.stream.read_exact(&mut data)?;
            }
        } else {
            self.known_cookie(cookie)?;
        }
        Ok(Reply {
            cookie,
            errno,
            data,
            status: Vec::new(),
            structured: false,
        })
    }

    fn known_cookie(&self, cookie: u64) -> Result<(), ClientError> {
        if cookie == 0 || cookie >= self.next_cookie {
            return Err(ClientError::Protocol(format!(
                "reply for unknown cookie {cookie}"
            )));
        }
        Ok(())
    }

    /// The chunks of one structured reply, the first one's magic already read.
    fn receive_structured(&mut self, magic: [u8; 4]) -> Result<Reply, ClientError> {
        let bad = |what: String| ClientError::Protocol(what);
        if !self.structured {
            return Err(bad("structured reply that was not negotiated".into()));
        }
        let mut magic = Some(magic);
        let mut reply: Option<Reply> = None;
        let mut read = None;
        for _ in 0..1 << 16 {
            let mut header = [0u8; proto::STRUCTURED_REPLY_BYTES];
            match magic.take() {
                Some(first) => {
                    header[..4].copy_from_slice(&first);
                    self.stream.read_exact(&mut header[4..])?;
                }
                None => self.stream.read_exact(&mut header)?,
            }
            let chunk = proto::decode_chunk_header(&header)?;
            if chunk.length > proto::MAX_OPTION_BYTES.max(33 << 20) {
                return Err(bad(format!("chunk of {} bytes", chunk.length)));
            }
            let mut payload = vec![0u8; usize::try_from(chunk.length).unwrap_or(0)];
            self.stream.read_exact(&mut payload)?;
            let current = reply.get_or_insert_with(|| Reply {
                cookie: chunk.cookie,
                errno: 0,
                data: Vec::new(),
                status: Vec::new(),
                structured: true,
            });
            if current.cookie != chunk.cookie {
                return Err(bad("chunks of two replies interleaved".into()));
            }
            if read.is_none() {
                read = self.pending_reads.remove(&chunk.cookie);
                if read.is_none() {
                    self.known_cookie(chunk.cookie)?;
                }
                if let Some((_, length)) = read {
                    current.data = vec![0u8; length];
                }
            }
            apply_chunk(current, read, chunk.kind, &payload)?;
            if chunk.flags & reply_flag::DONE != 0 {
                return reply.ok_or_else(|| bad("empty reply".into()));
            }
        }
        Err(bad("structured reply did not end".into()))
    }

    fn call(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let cookie = self.send(command, flags, offset, length, payload)?;
        let reply = self.receive()?;
        if reply.cookie != cookie {
            return Err(ClientError::Protocol(format!(
                "reply for cookie {} while waiting for {cookie}",
                reply.cookie
            )));
        }
        if reply.errno != 0 {
            return Err(ClientError::Request { errno: reply.errno });
        }
        Ok(reply.data)
    }

    /// Read `length` bytes at `offset`.
    ///
    /// # Errors
    /// Transport errors, or the server's error number.
    pub fn read(&mut self, offset: u64, length: u32) -> Result<Vec<u8>, ClientError> {
        self.call(cmd::READ, 0, offset, length, &[])
    }

    /// Write `data` at `offset`, durably before returning if `fua`.
    ///
    /// # Errors
    /// Transport errors, or the server's error number.
    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<(), ClientError> {
        let length = u32::try_from(data.len())
            .map_err(|_| ClientError::Protocol("write longer than 4 GiB".into()))?;
        let flags = if fua { cmd_flag::FUA } else { 0 };
        self.call(cmd::WRITE, flags, offset, length, data).map(drop)
    }

    /// Zero `length` bytes at `offset`.
    ///
    /// # Errors
    /// Transport errors, or the server's error number.
    pub fn write_zeroes(&mut self, offset: u64, length: u32) -> Result<(), ClientError> {
        self.call(cmd::WRITE_ZEROES, 0, offset, length, &[])
            .map(drop)
    }

    /// Zero `length` bytes at `offset` with command flags (`NO_HOLE`, `FUA`).
    ///
    /// # Errors
    /// Transport errors, or the server's error number.
    pub fn write_zeroes_with(
        &mut self,
        offset: u64,
        length: u32,
        flags: u16,
    ) -> Result<(), ClientError> {
        self.call(cmd::WRITE_ZEROES, flags, offset, length, &[])
            .map(drop)
    }

    /// Discard `length` bytes at `offset`, durably before returning if `fua`.
    ///
    /// # Errors
    /// Transport errors, or the server's error number.
    pub fn trim(&mut self, offset: u64, length: u32, fua: bool) -> Result<(), ClientError> {
        let flags = if fua { cmd_flag::FUA } else { 0 };
        self.call(cmd::TRIM, flags, offset, length, &[]).map(drop)
    }

    /// The `base:allocation` status of `length` bytes at `offset`: (length, status flags) per
    /// descriptor. `flags`: `REQ_ONE` or 0.
    ///
    /// # Errors
    /// Transport errors, or the server's error number.
    pub fn block_status(
        &mut self,
        offset: u64,
        length: u32,
        flags: u16,
    ) -> Result<Vec<(u32, u32)>, ClientError> {
        let cookie = self.send(cmd::BLOCK_STATUS, flags, offset, length, &[])?;
        let reply = self.receive()?;
        if reply.cookie != cookie {
            return Err(ClientError::Protocol(format!(
                "reply for cookie {} while waiting for {cookie}",
                reply.cookie
            )));
        }
        if reply.errno != 0 {
            return Err(ClientError::Request { errno: reply.errno });
        }
        Ok(reply.status)
    }

    /// Make every completed write durable.
    ///
    /// # Errors
    /// Transport errors, or the server's error number.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.call(cmd::FLUSH, 0, 0, 0, &[]).map(drop)
    }

    /// Send `DISC` and give the stream back.
    ///
    /// # Errors
    /// Transport errors.
    pub fn disconnect(mut self) -> Result<S, ClientError> {
        self.send(cmd::DISC, 0, 0, 0, &[])?;
        Ok(self.stream)
    }

    /// The raw stream, to send malformed bytes in tests.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}

/// What a negotiation agreed with the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The export as the server described it (size, flags, block sizes).
    pub export: ExportInfo,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// The id the server gave `base:allocation`, if selected.
    pub allocation_context: Option<u32>,
}

/// Run the fixed newstyle handshake on `stream` up to the transmission phase: negotiate
/// `options`, then select `export_name` with `NBD_OPT_GO` (asking for its block sizes). Used by
/// [`Client`] and by the pipelined device backend, which splits the stream afterwards.
///
/// # Errors
/// Transport errors, protocol errors (block sizes that break the protocol's rules among
/// them), or the server refusing an option or the export ([`ClientError::Refused`]).
pub fn negotiate<S: Read + Write>(
    stream: &mut S,
    export_name: &str,
    options: &ConnectOptions,
) -> Result<Negotiated, ClientError> {
    let mut greeting = [0u8; proto::GREETING_BYTES];
    stream.read_exact(&mut greeting)?;
    let flags = proto::decode_greeting(&greeting)?;
    if flags & proto::HANDSHAKE_FIXED_NEWSTYLE == 0 {
        return Err(ClientError::Protocol("server is not fixed newstyle".into()));
    }
    stream.write_all(&proto::CLIENT_FIXED_NEWSTYLE.to_be_bytes())?;
    if options.structured_replies {
        stream.write_all(&proto::encode_option(opt::STRUCTURED_REPLY, &[]))?;
        let (reply, _) = option_reply(stream, opt::STRUCTURED_REPLY)?;
        if reply != rep::ACK {
            return Err(ClientError::Protocol(format!(
                "structured replies answered with {reply:#x}"
            )));
        }
    }
    let mut allocation_context = None;
    if !options.meta_contexts.is_empty() {
        let queries: Vec<&[u8]> = options.meta_contexts.iter().map(|q| q.as_bytes()).collect();
        let data = proto::encode_meta_context_request(export_name.as_bytes(), &queries);
        stream.write_all(&proto::encode_option(opt::SET_META_CONTEXT, &data))?;
        for _ in 0..64 {
            match option_reply(stream, opt::SET_META_CONTEXT)? {
                (rep::ACK, _) => break,
                (rep::META_CONTEXT, payload) => {
                    let id = payload.get(..4).ok_or_else(|| {
                        ClientError::Protocol("short NBD_REP_META_CONTEXT".into())
                    })?;
                    if &payload[4..] == proto::BASE_ALLOCATION.as_bytes() {
                        allocation_context = Some(u32::from_be_bytes([id[0], id[1], id[2], id[3]]));
                    }
                }
                (reply, _) => {
                    return Err(ClientError::Protocol(format!(
                        "meta context answered with {reply:#x}"
                    )))
                }
            }
        }
    }
    let data = proto::encode_info_request(export_name.as_bytes(), &[info::BLOCK_SIZE, info::NAME]);
    stream.write_all(&proto::encode_option(opt::GO, &data))?;
    // The protocol's defaults when the server gives no block sizes: any alignment, 4 KiB
    // preferred, and requests of at most 32 MiB for interoperability.
    let mut export = ExportInfo {
        name: export_name.to_string(),
        size_bytes: 0,
        flags: 0,
        block_min_bytes: 1,
        block_preferred_bytes: 4096,
        block_max_bytes: 32 << 20,
    };
    let mut have_size = false;
    for _ in 0..64 {
        let mut header = [0u8; proto::OPTION_REPLY_BYTES];
        stream.read_exact(&mut header)?;
        let header = proto::decode_option_reply(&header)?;
        if header.option != opt::GO {
            return Err(ClientError::Protocol(format!(
                "option reply for {} while waiting for NBD_OPT_GO",
                header.option
            )));
        }
        if header.length > proto::MAX_OPTION_BYTES {
            return Err(ClientError::Protocol("option reply too long".into()));
        }
        let mut payload = vec![0u8; usize::try_from(header.length).unwrap_or(0)];
        stream.read_exact(&mut payload)?;
        match header.reply {
            rep::ACK if have_size => {
                return Ok(Negotiated {
                    export,
                    structured: options.structured_replies,
                    allocation_context,
                })
            }
            rep::ACK => return Err(ClientError::Protocol("GO acknowledged with no size".into())),
            rep::INFO => {
                parse_info(&payload, &mut export)?;
                have_size |= payload.get(..2) == Some(&info::EXPORT.to_be_bytes()[..]);
            }
            reply if reply & 0x8000_0000 != 0 => {
                return Err(ClientError::Refused {
                    option: header.option,
                    reply,
                })
            }
            _ => {}
        }
    }
    Err(ClientError::Protocol("negotiation did not end".into()))
}

/// Read the header of one simple reply from `stream`: (error number, cookie). For a successful
/// read, the data follows; only the caller knows its length (the request's), so it reads it.
///
/// # Errors
/// Transport errors; a structured reply chunk (never negotiated by a caller of this) or any
/// other magic is a protocol error.
pub fn read_simple_reply_header(stream: &mut impl Read) -> Result<(u32, u64), ClientError> {
    let mut header = [0u8; proto::REPLY_BYTES];
    stream.read_exact(&mut header)?;
    if header[..4] == proto::STRUCTURED_REPLY_MAGIC.to_be_bytes() {
        return Err(ClientError::Protocol(
            "structured reply that was not negotiated".into(),
        ));
    }
    Ok(proto::decode_reply(&header)?)
}

/// Read one option reply to `option`: (reply type, data).
fn option_reply(stream: &mut impl Read, option: u32) -> Result<(u32, Vec<u8>), ClientError> {
    let mut header = [0u8; proto::OPTION_REPLY_BYTES];
    stream.read_exact(&mut header)?;
    let header = proto::decode_option_reply(&header)?;
    if header.option != option || header.length > proto::MAX_OPTION_BYTES {
        return Err(ClientError::Protocol(format!(
            "option reply for {} ({} bytes) while waiting for {option}",
            header.option, header.length
        )));
    }
    let mut payload = vec![0u8; usize::try_from(header.length).unwrap_or(0)];
    stream.read_exact(&mut payload)?;
    Ok((header.reply, payload))
}

/// Fold one structured chunk into `reply`. `read`: the request's (offset, length) if it was a
/// read.
fn apply_chunk(
    reply: &mut Reply,
    read: Option<(u64, usize)>,
    kind: u16,
    payload: &[u8],
) -> Result<(), ClientError> {
    let bad = |what: &str| ClientError::Protocol(format!("{what} (chunk type {kind:#x})"));
    let be32 = |at: usize| -> Result<u32, ClientError> {
        let raw = payload.get(at..at + 4).ok_or_else(|| bad("short chunk"))?;
        Ok(u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]))
    };
    let be64 = |at: usize| -> Result<u64, ClientError> {
        let raw = payload.get(at..at + 8).ok_or_else(|| bad("short chunk"))?;
        let mut out = [0u8; 8];
        out.copy_from_slice(raw);
        Ok(u64::from_be_bytes(out))
    };
    // Where `[offset, offset + len)` lies in the read's data, if inside it.
    let place = |offset: u64, len: usize| -> Result<std::ops::Range<usize>, ClientError> {
        let (start, total) = read.ok_or_else(|| bad("read data in a reply to no read"))?;
        let from = offset
            .checked_sub(start)
            .and_then(|d| usize::try_from(d).ok())
            .ok_or_else(|| bad("chunk before the read"))?;
        if from + len > total || len == 0 {
            return Err(bad("chunk outside the read"));
        }
        Ok(from..from + len)
    };
    match kind {
        reply_type::NONE if payload.is_empty() => {}
        reply_type::OFFSET_DATA => {
            let range = place(be64(0)?, payload.len().saturating_sub(8))?;
            reply.data[range].copy_from_slice(&payload[8..]);
        }
        reply_type::OFFSET_HOLE => {
            let length = usize::try_from(be32(8)?).unwrap_or(usize::MAX);
            let range = place(be64(0)?, length)?;
            reply.data[range].fill(0);
        }
        reply_type::BLOCK_STATUS => {
            if payload.len() < 12 || !(payload.len() - 4).is_multiple_of(8) {
                return Err(bad("block status length"));
            }
            for at in (4..payload.len()).step_by(8) {
                reply.status.push((be32(at)?, be32(at + 4)?));
            }
        }
        reply_type::ERROR | reply_type::ERROR_OFFSET => {
            let errno = be32(0)?;
            if errno == 0 {
                return Err(bad("error chunk with error 0"));
            }
            reply.errno = errno;
            reply.data.clear();
        }
        _ => return Err(bad("unexpected chunk")),
    }
    Ok(())
}

/// Fold one `NBD_REP_INFO` payload into `export`.
fn parse_info(payload: &[u8], export: &mut ExportInfo) -> Result<(), ClientError> {
    let bad = || ClientError::Protocol("malformed NBD_REP_INFO".into());
    let kind = payload.get(..2).ok_or_else(bad)?;
    let kind = u16::from_be_bytes([kind[0], kind[1]]);
    let field = |at: usize, len: usize| payload.get(at..at + len).ok_or_else(bad);
    match kind {
        info::EXPORT => {
            let size = field(2, 8)?;
            let flags = field(10, 2)?;
            let mut raw = [0u8; 8];
            raw.copy_from_slice(size);
            export.size_bytes = u64::from_be_bytes(raw);
            export.flags = u16::from_be_bytes([flags[0], flags[1]]);
        }
        info::BLOCK_SIZE => {
            let u32_at = |at: usize| -> Result<u32, ClientError> {
                let raw = field(at, 4)?;
                Ok(u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]))
            };
            let (min, preferred, max) = (u32_at(2)?, u32_at(6)?, u32_at(10)?);
            // The protocol's rules: powers of two for the minimum and the preferred size, and
            // neither above the maximum.
            if !min.is_power_of_two() || !preferred.is_power_of_two() || min > max {
                return Err(ClientError::Protocol(format!(
                    "block sizes that break the protocol: minimum {min}, preferred {preferred}, maximum {max}"
                )));
            }
            export.block_min_bytes = min;
            export.block_preferred_bytes = preferred;
            export.block_max_bytes = max;
        }
        info::NAME => {
            export.name = String::from_utf8_lossy(field(2, payload.len() - 2)?).into_owned();
        }
        _ => {}
    }
    Ok(())
}
