//! A minimal NBD client over any byte stream: fixed newstyle negotiation with `NBD_OPT_GO`,
//! then simple-reply requests, one at a time or pipelined ([`Client::send`] /
//! [`Client::receive`]). It exists for the tests and the benchmark (the real clients are
//! libnbd, qemu and the kernel), and it checks what it receives as strictly as the server checks
//! what it is sent.

use super::proto::{self, cmd, cmd_flag, info, opt, rep, ExportInfo, ProtoError, Request};
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
}

/// A connected client in the transmission phase.
#[derive(Debug)]
pub struct Client<S> {
    stream: S,
    export: ExportInfo,
    next_cookie: u64,
    /// Reads in flight: cookie → length of the data that follows a successful reply.
    pending_reads: HashMap<u64, usize>,
}

impl<S: Read + Write> Client<S> {
    /// Negotiate on `stream` and select `export_name` with `NBD_OPT_GO`.
    ///
    /// # Errors
    /// Transport errors, protocol errors, or the server refusing the export.
    pub fn connect(mut stream: S, export_name: &str) -> Result<Self, ClientError> {
        let mut greeting = [0u8; proto::GREETING_BYTES];
        stream.read_exact(&mut greeting)?;
        let flags = proto::decode_greeting(&greeting)?;
        if flags & proto::HANDSHAKE_FIXED_NEWSTYLE == 0 {
            return Err(ClientError::Protocol("server is not fixed newstyle".into()));
        }
        stream.write_all(&proto::CLIENT_FIXED_NEWSTYLE.to_be_bytes())?;
        let data =
            proto::encode_info_request(export_name.as_bytes(), &[info::BLOCK_SIZE, info::NAME]);
        stream.write_all(&proto::encode_option(opt::GO, &data))?;
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
            if header.length > proto::MAX_OPTION_BYTES {
                return Err(ClientError::Protocol("option reply too long".into()));
            }
            let mut payload = vec![0u8; usize::try_from(header.length).unwrap_or(0)];
            stream.read_exact(&mut payload)?;
            match header.reply {
                rep::ACK if have_size => {
                    return Ok(Self {
                        stream,
                        export,
                        next_cookie: 1,
                        pending_reads: HashMap::new(),
                    })
                }
                rep::ACK => {
                    return Err(ClientError::Protocol("GO acknowledged with no size".into()))
                }
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

    /// The export as the server described it.
    #[must_use]
    pub fn export(&self) -> &ExportInfo {
        &self.export
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
                .insert(cookie, usize::try_from(length).unwrap_or(0));
        }
        Ok(cookie)
    }

    /// Receive the next reply (in whatever order the server sends them).
    ///
    /// # Errors
    /// Transport errors; a reply with an unknown cookie is a protocol error.
    pub fn receive(&mut self) -> Result<Reply, ClientError> {
        let mut header = [0u8; proto::REPLY_BYTES];
        self.stream.read_exact(&mut header)?;
        let (errno, cookie) = proto::decode_reply(&header)?;
        let mut data = Vec::new();
        if let Some(length) = self.pending_reads.remove(&cookie) {
            if errno == 0 {
                data = vec![0u8; length];
                self.stream.read_exact(&mut data)?;
            }
        } else if cookie == 0 || cookie >= self.next_cookie {
            return Err(ClientError::Protocol(format!(
                "reply for unknown cookie {cookie}"
            )));
        }
        Ok(Reply {
            cookie,
            errno,
            data,
        })
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
            export.block_min_bytes = u32_at(2)?;
            export.block_preferred_bytes = u32_at(6)?;
            export.block_max_bytes = u32_at(10)?;
        }
        info::NAME => {
            export.name = String::from_utf8_lossy(field(2, payload.len() - 2)?).into_owned();
        }
        _ => {}
    }
    Ok(())
}
