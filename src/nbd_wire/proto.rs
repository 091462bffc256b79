//! The NBD wire protocol: constants, and pure decoding and encoding of the fixed newstyle
//! handshake and of transmission-phase requests and simple replies.
//!
//! No I/O and no state here, so the fuzz target (`fuzz/fuzz_targets/nbd_request.rs`) and the
//! malformed-request tests call exactly what the server calls. Every decoder takes untrusted
//! bytes and returns a typed [`ProtoError`]; nothing here panics on any input. All integers on
//! the wire are big-endian.
//!
//! Reference: the NBD protocol document (`doc/proto.md` of the NBD project). Only what this
//! server implements is named here: fixed newstyle negotiation with `NBD_OPT_EXPORT_NAME`,
//! `ABORT`, `LIST`, `INFO`, `GO`, `STRUCTURED_REPLY`, `LIST_META_CONTEXT` and
//! `SET_META_CONTEXT` (one context: `base:allocation`); simple replies, and structured replies
//! once negotiated; the commands `READ`, `WRITE`, `DISC`, `FLUSH`, `TRIM`, `WRITE_ZEROES` (with
//! `NO_HOLE`) and `BLOCK_STATUS` (with `REQ_ONE`), with `FUA` on every command.

/// `NBDMAGIC`: the first eight bytes a server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle magic, also the prefix of every client option.
pub const OPTION_MAGIC: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefix of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefix of every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Prefix of every structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// The one metadata context this server offers: which ranges hold data.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// The id this server gives `base:allocation` when a client selects it.
pub const ALLOCATION_CONTEXT_ID: u32 = 1;

/// Handshake flag: the server speaks fixed newstyle.
pub const HANDSHAKE_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag: the server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const HANDSHAKE_NO_ZEROES: u16 = 2;
/// Client flag: the client speaks fixed newstyle.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1;
/// Client flag: the client does not want the 124 zero bytes.
pub const CLIENT_NO_ZEROES: u32 = 2;

/// Option codes (`NBD_OPT_*`).
pub mod opt {
    /// Choose an export by name and go straight to transmission (old style, no error path).
    pub const EXPORT_NAME: u32 = 1;
    /// End negotiation.
    pub const ABORT: u32 = 2;
    /// List the exports.
    pub const LIST: u32 = 3;
    /// Upgrade to TLS (not supported).
    pub const STARTTLS: u32 = 5;
    /// Ask about an export.
    pub const INFO: u32 = 6;
    /// Ask about an export and go to transmission.
    pub const GO: u32 = 7;
    /// Structured replies (needed for `BLOCK_STATUS`).
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List the metadata contexts a query matches. (An early draft of the protocol had 10
    /// here; libnbd and qemu use 9.)
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select the metadata contexts `BLOCK_STATUS` reports.
    pub const SET_META_CONTEXT: u32 = 10;
}

/// Option reply types (`NBD_REP_*`).
pub mod rep {
    /// The option succeeded (end of its replies).
    pub const ACK: u32 = 1;
    /// One export of a list.
    pub const SERVER: u32 = 2;
    /// Information about the export.
    pub const INFO: u32 = 3;
    /// One metadata context: its id, its name.
    pub const META_CONTEXT: u32 = 4;
    /// The option is not known or not supported.
    pub const ERR_UNSUP: u32 = 0x8000_0001;
    /// The option's data is malformed.
    pub const ERR_INVALID: u32 = 0x8000_0003;
    /// No export by that name.
    pub const ERR_UNKNOWN: u32 = 0x8000_0006;
    /// The server is shutting down.
    pub const ERR_SHUTDOWN: u32 = 0x8000_0007;
    /// The option's data is too large.
    pub const ERR_TOO_BIG: u32 = 0x8000_0009;
}

/// Information types requested by `NBD_OPT_INFO`/`GO` (`NBD_INFO_*`).
pub mod info {
    /// Size and transmission flags (always sent).
    pub const EXPORT: u16 = 0;
    /// The export's name.
    pub const NAME: u16 = 1;
    /// A human-readable description.
    pub const DESCRIPTION: u16 = 2;
    /// Block size constraints.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags (`NBD_FLAG_*`), sent with the export's size.
pub mod flag {
    /// Always set.
    pub const HAS_FLAGS: u16 = 1;
    /// Writes are refused.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_CMD_FLUSH` is supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_FUA` is supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `NBD_CMD_TRIM` is supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_CMD_WRITE_ZEROES` is supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// A flush on one connection covers writes completed on every connection.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
}

/// Command types (`NBD_CMD_*`).
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write (payload follows the request).
    pub const WRITE: u16 = 1;
    /// Disconnect after the requests in flight.
    pub const DISC: u16 = 2;
    /// Make completed writes durable.
    pub const FLUSH: u16 = 3;
    /// Discard: the range reads as zeros afterwards (this server's promise; the protocol
    /// promises nothing).
    pub const TRIM: u16 = 4;
    /// Write zeroes (no payload).
    pub const WRITE_ZEROES: u16 = 6;
    /// Report the status of a range in the selected metadata contexts.
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags (`NBD_CMD_FLAG_*`).
pub mod cmd_flag {
    /// Force unit access: the write is durable when acknowledged.
    pub const FUA: u16 = 1;
    /// `WRITE_ZEROES` must not punch holes: the zeros are written (the range stays allocated).
    pub const NO_HOLE: u16 = 1 << 1;
    /// `READ` must come back in one chunk (not offered: refused).
    pub const DF: u16 = 1 << 2;
    /// `BLOCK_STATUS` wants one extent only.
    pub const REQ_ONE: u16 = 1 << 3;
    /// `WRITE_ZEROES` must fail rather than be slow (not offered: refused).
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Structured reply chunk types (`NBD_REPLY_TYPE_*`).
pub mod reply_type {
    /// No payload; ends a reply.
    pub const NONE: u16 = 0;
    /// Read data: offset, bytes.
    pub const OFFSET_DATA: u16 = 1;
    /// A hole in read data: offset, length (reads as zeros).
    pub const OFFSET_HOLE: u16 = 2;
    /// Block status: context id, descriptors.
    pub const BLOCK_STATUS: u16 = 5;
    /// An error: errno, message.
    pub const ERROR: u16 = 0x8001;
    /// An error at an offset: errno, message, offset.
    pub const ERROR_OFFSET: u16 = 0x8002;
}

/// Structured reply chunk flags (`NBD_REPLY_FLAG_*`).
pub mod reply_flag {
    /// The last chunk of a reply.
    pub const DONE: u16 = 1;
}

/// Status flags of the `base:allocation` context (`NBD_STATE_*`).
pub mod state {
    /// Not allocated: no storage holds the range.
    pub const HOLE: u32 = 1;
    /// Reads as zeros.
    pub const ZERO: u32 = 2;
}

/// Error numbers carried in replies (`NBD_E*`, the Linux errno values).
pub mod errno {
    /// Operation not permitted (a write to a read-only export).
    pub const EPERM: u32 = 1;
    /// Input/output error (data lost beyond the layout's tolerance, pool unavailable).
    pub const EIO: u32 = 5;
    /// Out of memory.
    pub const ENOMEM: u32 = 12;
    /// Invalid argument (bad flags, unknown command, read past the end, too long).
    pub const EINVAL: u32 = 22;
    /// No space (a write past the end).
    pub const ENOSPC: u32 = 28;
    /// Value too large.
    pub const EOVERFLOW: u32 = 75;
    /// Not supported.
    pub const ENOTSUP: u32 = 95;
    /// The server is shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// Length of the server's first message: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub const GREETING_BYTES: usize = 18;
/// Length of an option header: `IHAVEOPT`, option, data length.
pub const OPTION_HEADER_BYTES: usize = 16;
/// Length of a transmission request header.
pub const REQUEST_BYTES: usize = 28;
/// Length of a simple reply header.
pub const REPLY_BYTES: usize = 16;
/// Length of a structured reply chunk header.
pub const STRUCTURED_REPLY_BYTES: usize = 20;
/// The most metadata-context queries one option may carry.
pub const MAX_META_QUERIES: usize = 64;
/// The largest option payload this server reads; longer options close the connection (the
/// longest legitimate one is a 4096-byte export name plus a few info requests).
pub const MAX_OPTION_BYTES: u32 = 64 * 1024;
/// The longest export name the server accepts (the protocol's own limit).
pub const MAX_NAME_BYTES: usize = 4096;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// Fewer bytes than the structure needs.
    #[error("truncated {what}: {got} bytes, need {need}")]
    Truncated {
        /// What was being decoded.
        what: &'static str,
        /// Bytes available.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A magic number is wrong (the stream is out of sync or not NBD).
    #[error("bad {what} magic {found:#x}")]
    BadMagic {
        /// Which magic.
        what: &'static str,
        /// What was found.
        found: u64,
    },
    /// An option's data is longer than the server accepts.
    #[error("option {option} carries {length} bytes, more than the {max} accepted")]
    OptionTooLong {
        /// The option code.
        option: u32,
        /// Its announced length.
        length: u32,
        /// The limit.
        max: u32,
    },
    /// An option's data is inconsistent with its own length fields.
    #[error("malformed option data: {0}")]
    Malformed(&'static str),
}

fn be_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let raw = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([raw[0], raw[1]]))
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at.checked_add(4)?)?;
    let mut out = [0u8; 4];
    out.copy_from_slice(raw);
    Some(u32::from_be_bytes(out))
}

fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let raw = bytes.get(at..at.checked_add(8)?)?;
    let mut out = [0u8; 8];
    out.copy_from_slice(raw);
    Some(u64::from_be_bytes(out))
}

fn need(what: &'static str, bytes: &[u8], need: usize) -> Result<(), ProtoError> {
    if bytes.len() < need {
        return Err(ProtoError::Truncated {
            what,
            got: bytes.len(),
            need,
        });
    }
    Ok(())
}

// == Handshake ==

/// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
#[must_use]
pub fn encode_greeting(handshake_flags: u16) -> [u8; GREETING_BYTES] {
    let mut out = [0u8; GREETING_BYTES];
    out[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&OPTION_MAGIC.to_be_bytes());
    out[16..].copy_from_slice(&handshake_flags.to_be_bytes());
    out
}

/// Decode a server greeting (client side): the handshake flags.
///
/// # Errors
/// [`ProtoError::Truncated`] or [`ProtoError::BadMagic`].
pub fn decode_greeting(bytes: &[u8]) -> Result<u16, ProtoError> {
    need("greeting", bytes, GREETING_BYTES)?;
    let magic = be_u64(bytes, 0).unwrap_or(0);
    if magic != NBD_MAGIC {
        return Err(ProtoError::BadMagic {
            what: "NBDMAGIC",
            found: magic,
        });
    }
    let newstyle = be_u64(bytes, 8).unwrap_or(0);
    if newstyle != OPTION_MAGIC {
        return Err(ProtoError::BadMagic {
            what: "IHAVEOPT",
            found: newstyle,
        });
    }
    Ok(be_u16(bytes, 16).unwrap_or(0))
}

/// An option header sent by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option code (`NBD_OPT_*`).
    pub option: u32,
    /// Length of the option data that follows.
    pub length: u32,
}

/// Decode an option header. The length is checked against [`MAX_OPTION_BYTES`] so the caller
/// never allocates what a hostile client announces.
///
/// # Errors
/// [`ProtoError::Truncated`], [`ProtoError::BadMagic`], [`ProtoError::OptionTooLong`].
pub fn decode_option_header(bytes: &[u8]) -> Result<OptionHeader, ProtoError> {
    need("option header", bytes, OPTION_HEADER_BYTES)?;
    let magic = be_u64(bytes, 0).unwrap_or(0);
    if magic != OPTION_MAGIC {
        return Err(ProtoError::BadMagic {
            what: "option",
            found: magic,
        });
    }
    let header = OptionHeader {
        option: be_u32(bytes, 8).unwrap_or(0),
        length: be_u32(bytes, 12).unwrap_or(0),
    };
    if header.length > MAX_OPTION_BYTES {
        return Err(ProtoError::OptionTooLong {
            option: header.option,
            length: header.length,
            max: MAX_OPTION_BYTES,
        });
    }
    Ok(header)
}

/// Encode an option header (client side).
#[must_use]
pub fn encode_option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OPTION_HEADER_BYTES + data.len());
    out.extend_from_slice(&OPTION_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The data of an `NBD_OPT_INFO` or `NBD_OPT_GO`: an export name and the information types
/// the client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// The export name (raw bytes; compared byte for byte).
    pub name: Vec<u8>,
    /// Requested `NBD_INFO_*` types.
    pub requests: Vec<u16>,
}

/// Decode the data of `NBD_OPT_INFO`/`NBD_OPT_GO`: u32 name length, name, u16 count, count ×
/// u16 information types. Trailing bytes are an error.
///
/// # Errors
/// [`ProtoError::Malformed`] when the lengths do not add up or the name is too long.
pub fn decode_info_request(data: &[u8]) -> Result<InfoRequest, ProtoError> {
    let name_len = be_u32(data, 0).ok_or(ProtoError::Malformed("no name length"))?;
    let name_len = usize::try_from(name_len).map_err(|_| ProtoError::Malformed("name length"))?;
    if name_len > MAX_NAME_BYTES {
        return Err(ProtoError::Malformed("export name longer than 4096 bytes"));
    }
    let name = data
        .get(4..4 + name_len)
        .ok_or(ProtoError::Malformed("name runs past the option data"))?
        .to_vec();
    let count_at = 4 + name_len;
    let count = be_u16(data, count_at).ok_or(ProtoError::Malformed("no request count"))?;
    let list_at = count_at + 2;
    let expected = list_at + 2 * usize::from(count);
    if data.len() != expected {
        return Err(ProtoError::Malformed(
            "information request count does not match the option length",
        ));
    }
    let requests = (0..usize::from(count))
        .filter_map(|i| be_u16(data, list_at + 2 * i))
        .collect();
    Ok(InfoRequest { name, requests })
}

/// Encode the data of `NBD_OPT_INFO`/`NBD_OPT_GO` (client side).
#[must_use]
pub fn encode_info_request(name: &[u8], requests: &[u16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + name.len() + 2 * requests.len());
    out.extend_from_slice(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(
        &u16::try_from(requests.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    for request in requests {
        out.extend_from_slice(&request.to_be_bytes());
    }
    out
}

/// The data of `NBD_OPT_LIST_META_CONTEXT`/`NBD_OPT_SET_META_CONTEXT`: an export name and
/// queries (context names, or a namespace prefix such as `base:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    /// The export name (raw bytes).
    pub name: Vec<u8>,
    /// The queries (raw bytes; each at most [`MAX_NAME_BYTES`]).
    pub queries: Vec<Vec<u8>>,
}

/// Decode the data of a meta-context option: u32 name length, name, u32 query count, then per
/// query u32 length and bytes. Trailing bytes are an error.
///
/// # Errors
/// [`ProtoError::Malformed`] when the lengths do not add up, or a name or query is too long,
/// or there are more than [`MAX_META_QUERIES`] queries.
pub fn decode_meta_context_request(data: &[u8]) -> Result<MetaContextRequest, ProtoError> {
    let string_at = |at: usize, what: &'static str| -> Result<(Vec<u8>, usize), ProtoError> {
        let len = be_u32(data, at).ok_or(ProtoError::Malformed(what))?;
        let len = usize::try_from(len).map_err(|_| ProtoError::Malformed(what))?;
        if len > MAX_NAME_BYTES {
            return Err(ProtoError::Malformed(
                "name or query longer than 4096 bytes",
            ));
        }
        let start = at + 4;
        let bytes = data
            .get(start..start + len)
            .ok_or(ProtoError::Malformed("string runs past the option data"))?;
        Ok((bytes.to_vec(), start + len))
    };
    let (name, mut at) = string_at(0, "no name length")?;
    let count = be_u32(data, at).ok_or(ProtoError::Malformed("no query count"))?;
    at += 4;
    if !usize::try_from(count).is_ok_and(|c| c <= MAX_META_QUERIES) {
        return Err(ProtoError::Malformed("too many metadata context queries"));
    }
    let mut queries = Vec::new();
    for _ in 0..count {
        let (query, next) = string_at(at, "no query length")?;
        queries.push(query);
        at = next;
    }
    if at != data.len() {
        return Err(ProtoError::Malformed(
            "metadata context queries do not match the option length",
        ));
    }
    Ok(MetaContextRequest { name, queries })
}

/// Encode the data of a meta-context option (client side).
#[must_use]
pub fn encode_meta_context_request(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(
        &u32::try_from(queries.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for query in queries {
        out.extend_from_slice(&u32::try_from(query.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(query);
    }
    out
}

/// Whether a meta-context query selects `base:allocation`: the exact name, or its namespace
/// alone (`base:`, which selects every context of that namespace).
#[must_use]
pub fn query_selects_allocation(query: &[u8]) -> bool {
    query == BASE_ALLOCATION.as_bytes() || query == b"base:"
}

/// `NBD_REP_META_CONTEXT` data: context id, name.
#[must_use]
pub fn encode_meta_context_reply(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// An option reply: magic, the option it answers, the reply type, length, data.
#[must_use]
pub fn encode_option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// A decoded option reply header (client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option answered.
    pub option: u32,
    /// `NBD_REP_*`.
    pub reply: u32,
    /// Length of the data that follows.
    pub length: u32,
}

/// Length of an option reply header.
pub const OPTION_REPLY_BYTES: usize = 20;

/// Decode an option reply header (client side).
///
/// # Errors
/// [`ProtoError::Truncated`] or [`ProtoError::BadMagic`].
pub fn decode_option_reply(bytes: &[u8]) -> Result<OptionReplyHeader, ProtoError> {
    need("option reply", bytes, OPTION_REPLY_BYTES)?;
    let magic = be_u64(bytes, 0).unwrap_or(0);
    if magic != OPTION_REPLY_MAGIC {
        return Err(ProtoError::BadMagic {
            what: "option reply",
            found: magic,
        });
    }
    Ok(OptionReplyHeader {
        option: be_u32(bytes, 8).unwrap_or(0),
        reply: be_u32(bytes, 12).unwrap_or(0),
        length: be_u32(bytes, 16).unwrap_or(0),
    })
}

/// What the server tells clients about its export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// The export's name.
    pub name: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Transmission flags (`NBD_FLAG_*`).
    pub flags: u16,
    /// Smallest request granularity the server accepts.
    pub block_min_bytes: u32,
    /// The size that performs best (the pool's stripe, or a power of two dividing it).
    pub block_preferred_bytes: u32,
    /// The longest request payload the server accepts.
    pub block_max_bytes: u32,
}

impl ExportInfo {
    /// Whether the export refuses writes.
    #[must_use]
    pub fn read_only(&self) -> bool {
        self.flags & flag::READ_ONLY != 0
    }
}

/// `NBD_INFO_EXPORT` data: type, size, flags.
#[must_use]
pub fn encode_info_export(export: &ExportInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&info::EXPORT.to_be_bytes());
    out.extend_from_slice(&export.size_bytes.to_be_bytes());
    out.extend_from_slice(&export.flags.to_be_bytes());
    out
}

/// `NBD_INFO_BLOCK_SIZE` data: type, minimum, preferred, maximum.
#[must_use]
pub fn encode_info_block_size(export: &ExportInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    out.extend_from_slice(&export.block_min_bytes.to_be_bytes());
    out.extend_from_slice(&export.block_preferred_bytes.to_be_bytes());
    out.extend_from_slice(&export.block_max_bytes.to_be_bytes());
    out
}

/// `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION` data: type, text.
#[must_use]
pub fn encode_info_text(kind: u16, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + text.len());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

/// `NBD_REP_SERVER` data for `NBD_OPT_LIST`: name length, name.
#[must_use]
pub fn encode_list_entry(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// The server's answer to `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zero bytes unless the
/// client asked to omit them.
#[must_use]
pub fn encode_export_name_reply(export: &ExportInfo, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(134);
    out.extend_from_slice(&export.size_bytes.to_be_bytes());
    out.extend_from_slice(&export.flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
    out
}

// == Transmission ==

/// A decoded request header. The command and flags are kept raw so that unknown values can be
/// answered with `EINVAL` rather than dropping the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// `NBD_CMD_FLAG_*` bits.
    pub flags: u16,
    /// `NBD_CMD_*`.
    pub command: u16,
    /// Opaque client handle, echoed in the reply.
    pub cookie: u64,
    /// Byte offset in the export.
    pub offset: u64,
    /// Length in bytes (of the payload for `WRITE`, of the reply data for `READ`).
    pub length: u32,
}

impl Request {
    /// Whether the request is followed by `length` payload bytes on the wire (only `WRITE`).
    #[must_use]
    pub fn has_payload(&self) -> bool {
        self.command == cmd::WRITE
    }
}

/// Decode a 28-byte request header.
///
/// # Errors
/// [`ProtoError::Truncated`] or [`ProtoError::BadMagic`] (the stream cannot be resynchronised:
/// close the connection).
pub fn decode_request(bytes: &[u8]) -> Result<Request, ProtoError> {
    need("request", bytes, REQUEST_BYTES)?;
    let magic = be_u32(bytes, 0).unwrap_or(0);
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadMagic {
            what: "request",
            found: u64::from(magic),
        });
    }
    Ok(Request {
        flags: be_u16(bytes, 4).unwrap_or(0),
        command: be_u16(bytes, 6).unwrap_or(0),
        cookie: be_u64(bytes, 8).unwrap_or(0),
        offset: be_u64(bytes, 16).unwrap_or(0),
        length: be_u32(bytes, 24).unwrap_or(0),
    })
}

/// Encode a request header (client side).
#[must_use]
pub fn encode_request(request: &Request) -> [u8; REQUEST_BYTES] {
    let mut out = [0u8; REQUEST_BYTES];
    out[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&request.flags.to_be_bytes());
    out[6..8].copy_from_slice(&request.command.to_be_bytes());
    out[8..16].copy_from_slice(&request.cookie.to_be_bytes());
    out[16..24].copy_from_slice(&request.offset.to_be_bytes());
    out[24..].copy_from_slice(&request.length.to_be_bytes());
    out
}

/// A simple reply header: magic, error, cookie. For a successful `READ`, `length` data bytes
/// follow.
#[must_use]
pub fn encode_reply(error: u32, cookie: u64) -> [u8; REPLY_BYTES] {
    let mut out = [0u8; REPLY_BYTES];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// Decode a simple reply header (client side): (error, cookie).
///
/// # Errors
/// [`ProtoError::Truncated`] or [`ProtoError::BadMagic`].
pub fn decode_reply(bytes: &[u8]) -> Result<(u32, u64), ProtoError> {
    need("reply", bytes, REPLY_BYTES)?;
    let magic = be_u32(bytes, 0).unwrap_or(0);
    if magic != SIMPLE_REPLY_MAGIC {
        return Err(ProtoError::BadMagic {
            what: "reply",
            found: u64::from(magic),
        });
    }
    Ok((be_u32(bytes, 4).unwrap_or(0), be_u64(bytes, 8).unwrap_or(0)))
}

/// A structured reply chunk header: magic, flags, type, cookie, payload length.
#[must_use]
pub fn encode_chunk_header(
    flags: u16,
    kind: u16,
    cookie: u64,
    length: u32,
) -> [u8; STRUCTURED_REPLY_BYTES] {
    let mut out = [0u8; STRUCTURED_REPLY_BYTES];
    out[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&kind.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..].copy_from_slice(&length.to_be_bytes());
    out
}

/// A decoded structured reply chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// `NBD_REPLY_FLAG_*`.
    pub flags: u16,
    /// `NBD_REPLY_TYPE_*`.
    pub kind: u16,
    /// The request's cookie.
    pub cookie: u64,
    /// Payload bytes that follow.
    pub length: u32,
}

/// Decode a structured reply chunk header (client side).
///
/// # Errors
/// [`ProtoError::Truncated`] or [`ProtoError::BadMagic`].
pub fn decode_chunk_header(bytes: &[u8]) -> Result<ChunkHeader, ProtoError> {
    need("structured reply", bytes, STRUCTURED_REPLY_BYTES)?;
    let magic = be_u32(bytes, 0).unwrap_or(0);
    if magic != STRUCTURED_REPLY_MAGIC {
        return Err(ProtoError::BadMagic {
            what: "structured reply",
            found: u64::from(magic),
        });
    }
    Ok(ChunkHeader {
        flags: be_u16(bytes, 4).unwrap_or(0),
        kind: be_u16(bytes, 6).unwrap_or(0),
        cookie: be_u64(bytes, 8).unwrap_or(0),
        length: be_u32(bytes, 16).unwrap_or(0),
    })
}

/// A final `NBD_REPLY_TYPE_ERROR` chunk: errno, message length, message.
#[must_use]
pub fn encode_error_chunk(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    let message = &message.as_bytes()[..message.len().min(1024)];
    let length = 6 + message.len();
    let mut out = Vec::with_capacity(STRUCTURED_REPLY_BYTES + length);
    out.extend_from_slice(&encode_chunk_header(
        reply_flag::DONE,
        reply_type::ERROR,
        cookie,
        u32::try_from(length).unwrap_or(0),
    ));
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&u16::try_from(message.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// A final `NBD_REPLY_TYPE_BLOCK_STATUS` chunk: context id, then (length, status flags) per
/// descriptor.
#[must_use]
pub fn encode_block_status_chunk(cookie: u64, context: u32, descriptors: &[(u32, u32)]) -> Vec<u8> {
    let length = 4 + 8 * descriptors.len();
    let mut out = Vec::with_capacity(STRUCTURED_REPLY_BYTES + length);
    out.extend_from_slice(&encode_chunk_header(
        reply_flag::DONE,
        reply_type::BLOCK_STATUS,
        cookie,
        u32::try_from(length).unwrap_or(0),
    ));
    out.extend_from_slice(&context.to_be_bytes());
    for (length, status) in descriptors {
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&status.to_be_bytes());
    }
    out
}

/// What was negotiated on a connection, as far as checking requests goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Session {
    /// `NBD_OPT_STRUCTURED_REPLY` was acknowledged.
    pub structured_replies: bool,
    /// `base:allocation` was selected with `NBD_OPT_SET_META_CONTEXT` (its id).
    pub allocation_context: Option<u32>,
}

/// What the server must do with a decoded request, after checking it against the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read `length` bytes at `offset`.
    Read {
        /// Byte offset.
        offset: u64,
        /// Bytes.
        length: u32,
    },
    /// Write the payload at `offset`; flush before replying if `fua`.
    Write {
        /// Byte offset.
        offset: u64,
        /// Payload bytes.
        length: u32,
        /// Durable before the reply.
        fua: bool,
    },
    /// Write `length` zero bytes at `offset`: as zeros written if `no_hole`, else as a discard
    /// (whole stripes unmapped; they read as zeros).
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Bytes.
        length: u32,
        /// Durable before the reply.
        fua: bool,
        /// The client asked that no hole be punched.
        no_hole: bool,
    },
    /// Discard `length` bytes at `offset` (they read as zeros afterwards).
    Trim {
        /// Byte offset.
        offset: u64,
        /// Bytes.
        length: u32,
        /// Durable before the reply.
        fua: bool,
    },
    /// Report the allocation of `[offset, offset + length)` in context `context`.
    BlockStatus {
        /// Byte offset.
        offset: u64,
        /// Bytes (never zero).
        length: u32,
        /// The context id to answer with.
        context: u32,
        /// One descriptor only.
        req_one: bool,
    },
    /// Make every completed write durable.
    Flush,
    /// Finish what is in flight, then close.
    Disconnect,
    /// Answer with this error at once. If the request carries a payload, it has to be read
    /// (and dropped) first when `payload_readable`, or the connection must be closed after the
    /// reply when not (the payload is too long to swallow).
    Reject {
        /// `NBD_E*`.
        error: u32,
        /// Whether the payload (if any) can be read and discarded to stay in sync.
        payload_readable: bool,
    },
}

/// The command flags a command accepts here: `FUA` on every command (the protocol asks a
/// server that offers it to accept it everywhere), `NO_HOLE` on `WRITE_ZEROES`, `REQ_ONE` on
/// `BLOCK_STATUS`. `DF` and `FAST_ZERO` are not offered, so never valid.
fn valid_flags(command: u16) -> u16 {
    match command {
        cmd::WRITE_ZEROES => cmd_flag::FUA | cmd_flag::NO_HOLE,
        cmd::BLOCK_STATUS => cmd_flag::FUA | cmd_flag::REQ_ONE,
        _ => cmd_flag::FUA,
    }
}

/// Check a request against the export and what was negotiated, and decide what to do. Pure:
/// the fuzz target and the malformed-request tests call this exactly as the server does.
///
/// Rules: unknown commands, and flags not valid for the command, get `EINVAL`; reads and block
/// status past the end `EINVAL`; writes, trims and write-zeroes past the end `ENOSPC` (per the
/// protocol); writes, trims and write-zeroes to a read-only export `EPERM`; requests longer
/// than the export's maximum `EINVAL` (and a too-long write payload is not read: the
/// connection is closed after the reply). `BLOCK_STATUS` without a selected metadata context,
/// or of zero length, gets `EINVAL`. A zero-length read, write, trim or write-zeroes succeeds
/// and does nothing.
#[must_use]
pub fn classify(request: &Request, export: &ExportInfo, session: &Session) -> Action {
    let known_flags = valid_flags(request.command);
    let length = request.length;
    let too_long = length > export.block_max_bytes;
    let past_end = request
        .offset
        .checked_add(u64::from(length))
        .is_none_or(|end| end > export.size_bytes);
    let reject = |error| Action::Reject {
        error,
        payload_readable: !(request.has_payload() && too_long),
    };
    if request.flags & !known_flags != 0 {
        return reject(errno::EINVAL);
    }
    let fua = request.flags & cmd_flag::FUA != 0;
    match request.command {
        cmd::READ => {
            if too_long || past_end {
                return reject(errno::EINVAL);
            }
            Action::Read {
                offset: request.offset,
                length,
            }
        }
        cmd::WRITE | cmd::WRITE_ZEROES | cmd::TRIM => {
            let payload = request.command == cmd::WRITE;
            if export.read_only() {
                return reject(errno::EPERM);
            }
            if too_long && payload {
                return reject(errno::EINVAL);
            }
            if past_end {
                return reject(errno::ENOSPC);
            }
            let offset = request.offset;
            match request.command {
                cmd::WRITE_ZEROES => Action::WriteZeroes {
                    offset,
                    length,
                    fua,
                    no_hole: request.flags & cmd_flag::NO_HOLE != 0,
                },
                cmd::TRIM => Action::Trim {
                    offset,
                    length,
                    fua,
                },
                _ => Action::Write {
                    offset,
                    length,
                    fua,
                },
            }
        }
        cmd::BLOCK_STATUS => {
            let Some(context) = session.allocation_context else {
                return reject(errno::EINVAL);
            };
            if past_end || length == 0 {
                return reject(errno::EINVAL);
            }
            Action::BlockStatus {
                offset: request.offset,
                length,
                context,
                req_one: request.flags & cmd_flag::REQ_ONE != 0,
            }
        }
        cmd::FLUSH => Action::Flush,
        cmd::DISC => Action::Disconnect,
        _ => reject(errno::EINVAL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(read_only: bool) -> ExportInfo {
        let mut flags = flag::HAS_FLAGS | flag::SEND_FLUSH | flag::SEND_FUA;
        if read_only {
            flags |= flag::READ_ONLY;
        }
        ExportInfo {
            name: "x".into(),
            size_bytes: 1 << 20,
            flags,
            block_min_bytes: 1,
            block_preferred_bytes: 4096,
            block_max_bytes: 1 << 16,
        }
    }

    fn request(command: u16, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            flags,
            command,
            cookie: 0xdead_beef,
            offset,
            length,
        }
    }

    #[test]
    fn request_round_trips_and_rejects_bad_magic_and_short_input() {
        let r = request(cmd::WRITE, cmd_flag::FUA, 12345, 4096);
        let bytes = encode_request(&r);
        assert_eq!(decode_request(&bytes), Ok(r));
        assert!(matches!(
            decode_request(&bytes[..27]),
            Err(ProtoError::Truncated { need: 28, .. })
        ));
        let mut bad = bytes;
        bad[0] ^= 1;
        assert!(matches!(
            decode_request(&bad),
            Err(ProtoError::BadMagic { .. })
        ));
    }

    #[test]
    fn classify_follows_the_protocol_rules() {
        let rw = export(false);
        let ro = export(true);
        let end = rw.size_bytes;
        assert_eq!(
            classify(&request(cmd::READ, 0, 0, 4096), &rw, &Session::default()),
            Action::Read {
                offset: 0,
                length: 4096
            }
        );
        assert_eq!(
            classify(&request(cmd::READ, 0, end - 1, 2), &rw, &Session::default()),
            Action::Reject {
                error: errno::EINVAL,
                payload_readable: true
            }
        );
        assert_eq!(
            classify(
                &request(cmd::WRITE, 0, end - 1, 2),
                &rw,
                &Session::default()
            ),
            Action::Reject {
                error: errno::ENOSPC,
                payload_readable: true
            }
        );
        assert_eq!(
            classify(
                &request(cmd::WRITE, 0, u64::MAX, 2),
                &rw,
                &Session::default()
            ),
            Action::Reject {
                error: errno::ENOSPC,
                payload_readable: true
            }
        );
        assert_eq!(
            classify(
                &request(cmd::WRITE, 0, 0, u32::MAX),
                &rw,
                &Session::default()
            ),
            Action::Reject {
                error: errno::EINVAL,
                payload_readable: false
            }
        );
        assert_eq!(
            classify(&request(cmd::WRITE, 0, 0, 10), &ro, &Session::default()),
            Action::Reject {
                error: errno::EPERM,
                payload_readable: true
            }
        );
        assert_eq!(
            classify(
                &request(cmd::WRITE_ZEROES, 0, 0, 10),
                &ro,
                &Session::default()
            ),
            Action::Reject {
                error: errno::EPERM,
                payload_readable: true
            }
        );
        assert_eq!(
            classify(
                &request(cmd::WRITE, 1 << 7, 0, 10),
                &rw,
                &Session::default()
            ),
            Action::Reject {
                error: errno::EINVAL,
                payload_readable: true
            }
        );
        assert_eq!(
            classify(&request(cmd::TRIM, 0, 0, 10), &rw, &Session::default()),
            Action::Trim {
                offset: 0,
                length: 10,
                fua: false
            }
        );
        assert_eq!(
            classify(
                &request(cmd::WRITE_ZEROES, cmd_flag::FUA, 0, 1 << 20),
                &rw,
                &Session::default()
            ),
            Action::WriteZeroes {
                offset: 0,
                length: 1 << 20,
                fua: true,
                no_hole: false
            }
        );
        assert_eq!(
            classify(&request(cmd::FLUSH, 0, 0, 0), &ro, &Session::default()),
            Action::Flush
        );
        assert_eq!(
            classify(&request(cmd::DISC, 0, 0, 0), &ro, &Session::default()),
            Action::Disconnect
        );
    }

    #[test]
    fn trim_zeroes_and_block_status_follow_the_protocol_rules() {
        let rw = export(false);
        let ro = export(true);
        let end = rw.size_bytes;
        let none = Session::default();
        let negotiated = Session {
            structured_replies: true,
            allocation_context: Some(ALLOCATION_CONTEXT_ID),
        };
        let einval = Action::Reject {
            error: errno::EINVAL,
            payload_readable: true,
        };
        let check = |command, flags, offset, length, session: &Session, export: &ExportInfo| {
            classify(&request(command, flags, offset, length), export, session)
        };
        // TRIM: past the end ENOSPC, read-only EPERM, longer than a payload may be is fine
        // (no payload), NO_HOLE is a WRITE_ZEROES flag only.
        assert_eq!(
            check(cmd::TRIM, 0, end - 1, 2, &none, &rw),
            Action::Reject {
                error: errno::ENOSPC,
                payload_readable: true
            }
        );
        assert_eq!(
            check(cmd::TRIM, 0, 0, 1, &none, &ro),
            Action::Reject {
                error: errno::EPERM,
                payload_readable: true
            }
        );
        assert_eq!(
            check(cmd::TRIM, cmd_flag::FUA, 0, 1 << 20, &none, &rw),
            Action::Trim {
                offset: 0,
                length: 1 << 20,
                fua: true
            }
        );
        assert_eq!(
            check(cmd::TRIM, cmd_flag::NO_HOLE, 0, 1, &none, &rw),
            einval
        );
        assert_eq!(
            check(cmd::WRITE_ZEROES, cmd_flag::NO_HOLE, 4, 8, &none, &rw),
            Action::WriteZeroes {
                offset: 4,
                length: 8,
                fua: false,
                no_hole: true
            }
        );
        assert_eq!(
            check(cmd::WRITE_ZEROES, cmd_flag::FAST_ZERO, 0, 8, &none, &rw),
            einval
        );
        assert_eq!(
            check(cmd::WRITE, cmd_flag::NO_HOLE, 0, 8, &none, &rw),
            einval
        );
        assert_eq!(check(cmd::READ, cmd_flag::DF, 0, 8, &none, &rw), einval);
        assert_eq!(
            check(cmd::READ, cmd_flag::REQ_ONE, 0, 8, &none, &rw),
            einval
        );
        // BLOCK_STATUS: only with a selected context, inside the export, not empty; fine on a
        // read-only export; REQ_ONE only here.
        assert_eq!(check(cmd::BLOCK_STATUS, 0, 0, 4096, &none, &rw), einval);
        let structured_only = Session {
            structured_replies: true,
            allocation_context: None,
        };
        assert_eq!(
            check(cmd::BLOCK_STATUS, 0, 0, 4096, &structured_only, &rw),
            einval
        );
        assert_eq!(
            check(
                cmd::BLOCK_STATUS,
                cmd_flag::REQ_ONE,
                0,
                4096,
                &negotiated,
                &ro
            ),
            Action::BlockStatus {
                offset: 0,
                length: 4096,
                context: ALLOCATION_CONTEXT_ID,
                req_one: true
            }
        );
        assert_eq!(
            check(cmd::BLOCK_STATUS, 0, end - 1, 2, &negotiated, &rw),
            einval
        );
        assert_eq!(
            check(cmd::BLOCK_STATUS, 0, u64::MAX, 2, &negotiated, &rw),
            einval
        );
        assert_eq!(check(cmd::BLOCK_STATUS, 0, 0, 0, &negotiated, &rw), einval);
        assert_eq!(
            check(cmd::BLOCK_STATUS, cmd_flag::NO_HOLE, 0, 1, &negotiated, &rw),
            einval
        );
    }

    #[test]
    fn meta_context_requests_check_every_length_and_chunks_encode() {
        let data = encode_meta_context_request(b"disk", &[b"base:allocation", b"x-a:b"]);
        assert_eq!(
            decode_meta_context_request(&data),
            Ok(MetaContextRequest {
                name: b"disk".to_vec(),
                queries: vec![b"base:allocation".to_vec(), b"x-a:b".to_vec()]
            })
        );
        for cut in 0..data.len() {
            assert!(
                decode_meta_context_request(&data[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut long = data.clone();
        long.push(0);
        assert!(decode_meta_context_request(&long).is_err());
        let mut many = encode_meta_context_request(b"", &[]);
        many[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_meta_context_request(&many).is_err());
        assert!(query_selects_allocation(b"base:"));
        assert!(query_selects_allocation(b"base:allocation"));
        assert!(!query_selects_allocation(b"base:allocation2"));
        assert!(!query_selects_allocation(b"qemu:dirty-bitmap:x"));
        let chunk = encode_block_status_chunk(7, 1, &[(4096, state::HOLE | state::ZERO), (512, 0)]);
        let header = decode_chunk_header(&chunk).unwrap();
        assert_eq!(
            header,
            ChunkHeader {
                flags: reply_flag::DONE,
                kind: reply_type::BLOCK_STATUS,
                cookie: 7,
                length: 20
            }
        );
        assert_eq!(chunk.len(), STRUCTURED_REPLY_BYTES + 20);
        let error = encode_error_chunk(9, errno::EINVAL, "bad");
        let header = decode_chunk_header(&error).unwrap();
        assert_eq!((header.kind, header.length), (reply_type::ERROR, 9));
        assert_eq!(&error[STRUCTURED_REPLY_BYTES..], b"\0\0\0\x16\0\x03bad");
    }

    #[test]
    fn info_request_decoding_checks_every_length() {
        let data = encode_info_request(b"disk", &[info::BLOCK_SIZE, info::NAME]);
        assert_eq!(
            decode_info_request(&data),
            Ok(InfoRequest {
                name: b"disk".to_vec(),
                requests: vec![info::BLOCK_SIZE, info::NAME]
            })
        );
        for cut in 0..data.len() {
            assert!(decode_info_request(&data[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = data.clone();
        long.push(0);
        assert!(decode_info_request(&long).is_err());
        let mut huge = data;
        huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_info_request(&huge).is_err());
    }

    #[test]
    fn option_headers_refuse_huge_lengths() {
        let mut bytes = encode_option(opt::GO, &[]);
        assert_eq!(
            decode_option_header(&bytes),
            Ok(OptionHeader {
                option: opt::GO,
                length: 0
            })
        );
        bytes[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode_option_header(&bytes),
            Err(ProtoError::OptionTooLong { .. })
        ));
    }

    #[test]
    fn greeting_and_replies_round_trip() {
        let greeting = encode_greeting(HANDSHAKE_FIXED_NEWSTYLE | HANDSHAKE_NO_ZEROES);
        assert_eq!(decode_greeting(&greeting), Ok(3));
        assert_eq!(decode_reply(&encode_reply(5, 77)), Ok((5, 77)));
        let reply = encode_option_reply(opt::GO, rep::ACK, &[]);
        assert_eq!(
            decode_option_reply(&reply),
            Ok(OptionReplyHeader {
                option: opt::GO,
                reply: rep::ACK,
                length: 0
            })
        );
    }
}
