//! NBD wire format: constants, pure parsers and encoders, and the request planner.
//!
//! Nothing here touches a socket: every function maps bytes to values or values to
//! bytes, so the fuzz targets and property tests exercise exactly what the server runs.
//! Numbers follow doc/proto.md of the NetworkBlockDevice project (all big-endian).

use crate::NbdError;

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

// Information types for OPT_INFO / OPT_GO.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

// Structured replies.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;
pub const STRUCTURED_HEADER_LEN: usize = 20;

/// The one metadata context this server offers, and the id it gets.
pub const BASE_ALLOCATION: &str = "base:allocation";
pub const BASE_ALLOCATION_ID: u32 = 1;
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;
/// Descriptors per block-status reply at most (the spec asks for no more than 2^20;
/// far fewer keeps one reply small and clients simply ask again).
pub const MAX_EXTENTS: usize = 1 << 12;

// Error values carried in simple replies.
pub const NBD_EPERM: u32 = 1;
pub const NBD_EIO: u32 = 5;
pub const NBD_EINVAL: u32 = 22;
pub const NBD_ENOSPC: u32 = 28;

/// Block size constraints advertised in NBD_INFO_BLOCK_SIZE. Minimum 1: the server
/// handles unaligned requests itself, so clients need not read-modify-write.
pub const MIN_BLOCK_SIZE: u32 = 1;
pub const PREFERRED_BLOCK_SIZE: u32 = 4096;
/// Largest READ/WRITE payload; also what the spec says every server should accept.
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// Longest option data this server reads. The largest legitimate option is INFO/GO
/// with a 4096-byte name; anything far beyond is refused without allocating it.
pub const MAX_OPTION_LEN: u32 = 16 << 10;
/// Longest export name the spec allows.
pub const MAX_NAME_LEN: usize = 4096;

pub const OPTION_HEADER_LEN: usize = 16;
pub const REQUEST_LEN: usize = 28;
pub const SIMPLE_REPLY_LEN: usize = 16;

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// The server's opening: NBDMAGIC, IHAVEOPT, handshake flags.
pub fn encode_greeting() -> [u8; 18] {
    let mut out = [0u8; 18];
    out[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

/// What the client answered to the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    pub fixed_newstyle: bool,
    pub no_zeroes: bool,
}

/// Parse the client's 32-bit flags; unknown bits end the session (spec: the server
/// MUST close if it sees flags it does not understand).
pub fn parse_client_flags(b: [u8; 4]) -> Result<ClientFlags, NbdError> {
    let v = u32::from_be_bytes(b);
    if v & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(NbdError::UnknownClientFlags(v));
    }
    Ok(ClientFlags {
        fixed_newstyle: v & FLAG_C_FIXED_NEWSTYLE != 0,
        no_zeroes: v & FLAG_C_NO_ZEROES != 0,
    })
}

/// The fixed part of a client option: which option and how much data follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

pub fn parse_option_header(b: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, NbdError> {
    let magic = be_u64(&b[..8]);
    if magic != IHAVEOPT {
        return Err(NbdError::BadMagic {
            what: "option",
            got: magic,
        });
    }
    Ok(OptionHeader {
        option: be_u32(&b[8..12]),
        len: be_u32(&b[12..16]),
    })
}

/// Export names are UTF-8 without NUL, at most 4096 bytes (spec "Conventions").
pub fn parse_name(b: &[u8]) -> Result<String, NbdError> {
    if b.len() > MAX_NAME_LEN {
        return Err(NbdError::Malformed {
            what: "export name longer than 4096 bytes",
        });
    }
    if b.contains(&0) {
        return Err(NbdError::Malformed {
            what: "export name containing NUL",
        });
    }
    String::from_utf8(b.to_vec()).map_err(|_| NbdError::Malformed {
        what: "export name not UTF-8",
    })
}

/// The data of NBD_OPT_INFO / NBD_OPT_GO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub requests: Vec<u16>,
}

pub fn parse_info_request(data: &[u8]) -> Result<InfoRequest, NbdError> {
    const TRUNC: NbdError = NbdError::Malformed {
        what: "INFO/GO option data",
    };
    if data.len() < 6 {
        return Err(TRUNC);
    }
    let name_len = be_u32(&data[..4]) as usize;
    let rest = &data[4..];
    if name_len > rest.len().saturating_sub(2) {
        return Err(TRUNC);
    }
    let name = parse_name(&rest[..name_len])?;
    let rest = &rest[name_len..];
    let count = be_u16(&rest[..2]) as usize;
    let rest = &rest[2..];
    if rest.len() != count * 2 {
        return Err(TRUNC);
    }
    let requests = rest.chunks_exact(2).map(be_u16).collect();
    Ok(InfoRequest { name, requests })
}

/// The data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub export: String,
    pub queries: Vec<String>,
}

pub fn parse_meta_context_request(data: &[u8]) -> Result<MetaContextRequest, NbdError> {
    const BAD: NbdError = NbdError::Malformed {
        what: "META_CONTEXT option data",
    };
    fn take<'a>(d: &mut &'a [u8], n: usize) -> Result<&'a [u8], NbdError> {
        if d.len() < n {
            return Err(BAD);
        }
        let (head, tail) = d.split_at(n);
        *d = tail;
        Ok(head)
    }
    let mut d = data;
    let name_len = be_u32(take(&mut d, 4)?) as usize;
    let export = parse_name(take(&mut d, name_len)?)?;
    let count = be_u32(take(&mut d, 4)?) as usize;
    // Each query takes at least 4 bytes: a count beyond that is a lie, and checking
    // it first keeps the Vec below from being sized by the client.
    if count > d.len() / 4 {
        return Err(BAD);
    }
    let mut queries = Vec::with_capacity(count);
    for _ in 0..count {
        let len = be_u32(take(&mut d, 4)?) as usize;
        queries.push(parse_name(take(&mut d, len)?)?);
    }
    if !d.is_empty() {
        return Err(BAD);
    }
    Ok(MetaContextRequest { export, queries })
}

/// The data of an NBD_REP_META_CONTEXT reply.
pub fn encode_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// One option reply: magic, option, type, length, data.
pub fn encode_option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The data of an NBD_REP_SERVER reply to NBD_OPT_LIST.
pub fn encode_list_entry(name: &str, description: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    if let Some(d) = description {
        out.extend_from_slice(d.as_bytes());
    }
    out
}

pub fn encode_info_export(size: u64, tflags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&tflags.to_be_bytes());
    out
}

pub fn encode_info_string(info: u16, s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + s.len());
    out.extend_from_slice(&info.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    out
}

pub fn encode_info_block_size() -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    for v in [MIN_BLOCK_SIZE, PREFERRED_BLOCK_SIZE, MAX_PAYLOAD] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

/// Reply to NBD_OPT_EXPORT_NAME: size, flags, and 124 zeroes unless NO_ZEROES.
pub fn encode_export_name_reply(size: u64, tflags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(134);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&tflags.to_be_bytes());
    if !no_zeroes {
        out.resize(out.len() + 124, 0);
    }
    out
}

/// Transmission flags for an export: everything this server implements, plus
/// CAN_MULTI_CONN because a device's flush covers writes from every connection.
pub fn transmission_flags(read_only: bool) -> u16 {
    let mut f = TFLAG_HAS_FLAGS
        | TFLAG_SEND_FLUSH
        | TFLAG_SEND_FUA
        | TFLAG_SEND_TRIM
        | TFLAG_SEND_WRITE_ZEROES
        | TFLAG_SEND_CACHE
        | TFLAG_CAN_MULTI_CONN;
    if read_only {
        f |= TFLAG_READ_ONLY;
    }
    f
}

/// A transmission-phase request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

pub fn parse_request(b: &[u8; REQUEST_LEN]) -> Result<Request, NbdError> {
    let magic = be_u32(&b[..4]);
    if magic != REQUEST_MAGIC {
        return Err(NbdError::BadMagic {
            what: "request",
            got: magic.into(),
        });
    }
    Ok(Request {
        flags: be_u16(&b[4..6]),
        command: be_u16(&b[6..8]),
        cookie: be_u64(&b[8..16]),
        offset: be_u64(&b[16..24]),
        len: be_u32(&b[24..28]),
    })
}

pub fn encode_request(r: &Request) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    out[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&r.flags.to_be_bytes());
    out[6..8].copy_from_slice(&r.command.to_be_bytes());
    out[8..16].copy_from_slice(&r.cookie.to_be_bytes());
    out[16..24].copy_from_slice(&r.offset.to_be_bytes());
    out[24..28].copy_from_slice(&r.len.to_be_bytes());
    out
}

pub fn encode_simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_LEN];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// The header of one structured reply chunk; `len` bytes of payload follow.
pub fn encode_structured_header(
    flags: u16,
    ty: u16,
    cookie: u64,
    len: u32,
) -> [u8; STRUCTURED_HEADER_LEN] {
    let mut out = [0u8; STRUCTURED_HEADER_LEN];
    out[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&ty.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..20].copy_from_slice(&len.to_be_bytes());
    out
}

/// A final NBD_REPLY_TYPE_ERROR chunk (no message).
pub fn encode_structured_error(error: u32, cookie: u64) -> [u8; STRUCTURED_HEADER_LEN + 6] {
    let mut out = [0u8; STRUCTURED_HEADER_LEN + 6];
    out[..STRUCTURED_HEADER_LEN].copy_from_slice(&encode_structured_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        cookie,
        6,
    ));
    out[STRUCTURED_HEADER_LEN..STRUCTURED_HEADER_LEN + 4].copy_from_slice(&error.to_be_bytes());
    out
}

/// One extent of a block-status answer, as a device reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    /// Not allocated in the backing store.
    pub hole: bool,
    /// Reads as zeroes.
    pub zero: bool,
}

/// A final NBD_REPLY_TYPE_BLOCK_STATUS chunk for the request `offset..offset+len`
/// from whatever `extents` the device reported: clipped to the request, merged where
/// neighbours share a status, at most one with REQ_ONE, at most MAX_EXTENTS, and never
/// empty (a device that says nothing gets "allocated data" for the whole range).
pub fn encode_block_status(cookie: u64, len: u32, req_one: bool, extents: &[Extent]) -> Vec<u8> {
    let mut descs: Vec<(u32, u32)> = Vec::new();
    let mut left = len;
    for e in extents {
        if left == 0 || descs.len() >= MAX_EXTENTS {
            break;
        }
        let n = e.len.min(u64::from(left)) as u32;
        if n == 0 {
            continue;
        }
        let flags = if e.hole { STATE_HOLE } else { 0 } | if e.zero { STATE_ZERO } else { 0 };
        match descs.last_mut() {
            Some((l, f)) if *f == flags => *l += n,
            _ => descs.push((n, flags)),
        }
        left -= n;
    }
    if descs.is_empty() {
        descs.push((len, 0));
    }
    if req_one {
        descs.truncate(1);
    }
    let payload = 4 + 8 * descs.len();
    let mut out = Vec::with_capacity(STRUCTURED_HEADER_LEN + payload);
    out.extend_from_slice(&encode_structured_header(
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        cookie,
        payload as u32,
    ));
    out.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
    for (l, f) in descs {
        out.extend_from_slice(&l.to_be_bytes());
        out.extend_from_slice(&f.to_be_bytes());
    }
    out
}

/// A simple reply as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    pub error: u32,
    pub cookie: u64,
}

pub fn parse_simple_reply(b: &[u8; SIMPLE_REPLY_LEN]) -> Result<SimpleReply, NbdError> {
    let magic = be_u32(&b[..4]);
    if magic != SIMPLE_REPLY_MAGIC {
        return Err(NbdError::BadMagic {
            what: "reply",
            got: magic.into(),
        });
    }
    Ok(SimpleReply {
        error: be_u32(&b[4..8]),
        cookie: be_u64(&b[8..16]),
    })
}

/// What the server does with one request, decided before touching the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
    },
    Cache {
        offset: u64,
        len: u32,
    },
    Disconnect,
    /// Read and drop `skip` payload bytes, then reply with `error`.
    Reject {
        error: u32,
        skip: u32,
    },
    /// Reply with `error`, then close: the payload is too large to skip sensibly.
    RejectAndClose {
        error: u32,
    },
}

/// Validate a request against an export of `size` bytes (`block_status`: the client
/// negotiated `base:allocation` for it). Pure, total and cheap: every possible header
/// maps to a plan, and the payload of a WRITE is always accounted for so the byte
/// stream stays in sync after an error.
pub fn plan_request(r: &Request, size: u64, read_only: bool, block_status: bool) -> Plan {
    let payload = if r.command == CMD_WRITE { r.len } else { 0 };
    if payload > MAX_PAYLOAD {
        return Plan::RejectAndClose { error: NBD_EINVAL };
    }
    let reject = |error| Plan::Reject {
        error,
        skip: payload,
    };
    let allowed_flags = match r.command {
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        // FUA is valid on every command once SEND_FUA is advertised.
        CMD_READ | CMD_WRITE | CMD_DISC | CMD_FLUSH | CMD_TRIM | CMD_CACHE => CMD_FLAG_FUA,
        // Only for clients that selected a metadata context (spec: MUST NOT otherwise).
        CMD_BLOCK_STATUS if block_status => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
        _ => return reject(NBD_EINVAL),
    };
    if r.flags & !allowed_flags != 0 {
        return reject(NBD_EINVAL);
    }
    let fua = r.flags & CMD_FLAG_FUA != 0;
    let writes = matches!(r.command, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && read_only {
        return reject(NBD_EPERM);
    }
    let in_range = r
        .offset
        .checked_add(u64::from(r.len))
        .is_some_and(|end| end <= size);
    // FLUSH and DISC carry no range (their offset and length are meaningless).
    if !in_range && !matches!(r.command, CMD_FLUSH | CMD_DISC) {
        // Spec "Error values": writes past the end are ENOSPC, reads and trims EINVAL.
        let error = if matches!(r.command, CMD_WRITE | CMD_WRITE_ZEROES) {
            NBD_ENOSPC
        } else {
            NBD_EINVAL
        };
        return reject(error);
    }
    let (offset, len) = (r.offset, r.len);
    match r.command {
        CMD_READ if len > MAX_PAYLOAD => reject(NBD_EINVAL),
        CMD_READ => Plan::Read { offset, len },
        // Zero-length status is unspecified; an error is the answer that cannot be
        // misread as "no extents".
        CMD_BLOCK_STATUS if len == 0 => reject(NBD_EINVAL),
        CMD_BLOCK_STATUS => Plan::BlockStatus {
            offset,
            len,
            req_one: r.flags & CMD_FLAG_REQ_ONE != 0,
        },
        CMD_WRITE => Plan::Write { offset, len, fua },
        CMD_DISC => Plan::Disconnect,
        CMD_FLUSH => Plan::Flush,
        CMD_TRIM => Plan::Trim { offset, len, fua },
        CMD_CACHE => Plan::Cache { offset, len },
        CMD_WRITE_ZEROES => Plan::WriteZeroes {
            offset,
            len,
            fua,
            no_hole: r.flags & CMD_FLAG_NO_HOLE != 0,
        },
        _ => unreachable!("unknown commands were rejected above"),
    }
}

/// Map a device error to the NBD error a client sees.
pub fn errno_for(e: &std::io::Error) -> u32 {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => NBD_ENOSPC,
        Some(libc::EPERM | libc::EROFS | libc::EACCES) => NBD_EPERM,
        _ => NBD_EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(command: u16, flags: u16, offset: u64, len: u32) -> Request {
        Request {
            flags,
            command,
            cookie: 7,
            offset,
            len,
        }
    }

    #[test]
    fn request_roundtrip() {
        let r = req(CMD_WRITE, CMD_FLAG_FUA, 1 << 40, 4096);
        assert_eq!(parse_request(&encode_request(&r)).unwrap(), r);
    }

    #[test]
    fn request_bad_magic_is_an_error() {
        let mut b = encode_request(&req(CMD_READ, 0, 0, 1));
        b[0] ^= 0xff;
        assert!(matches!(parse_request(&b), Err(NbdError::BadMagic { .. })));
    }

    #[test]
    fn plan_in_range() {
        assert_eq!(
            plan_request(&req(CMD_READ, 0, 0, 512), 512, false, false),
            Plan::Read {
                offset: 0,
                len: 512
            }
        );
        assert_eq!(
            plan_request(
                &req(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 0, 512),
                512,
                false,
                false
            ),
            Plan::WriteZeroes {
                offset: 0,
                len: 512,
                fua: false,
                no_hole: true
            }
        );
    }

    #[test]
    fn plan_out_of_range_errors_and_consumes_write_payload() {
        assert_eq!(
            plan_request(&req(CMD_READ, 0, 1, 512), 512, false, false),
            Plan::Reject {
                error: NBD_EINVAL,
                skip: 0
            }
        );
        assert_eq!(
            plan_request(&req(CMD_WRITE, 0, 512, 100), 512, false, false),
            Plan::Reject {
                error: NBD_ENOSPC,
                skip: 100
            }
        );
        assert_eq!(
            plan_request(&req(CMD_TRIM, 0, u64::MAX, 2), 512, false, false),
            Plan::Reject {
                error: NBD_EINVAL,
                skip: 0
            }
        );
    }

    #[test]
    fn plan_unknown_command_and_flags() {
        assert_eq!(
            plan_request(&req(99, 0, 0, 0), 512, false, false),
            Plan::Reject {
                error: NBD_EINVAL,
                skip: 0
            }
        );
        assert_eq!(
            plan_request(&req(CMD_WRITE, CMD_FLAG_NO_HOLE, 0, 8), 512, false, false),
            Plan::Reject {
                error: NBD_EINVAL,
                skip: 8
            }
        );
    }

    #[test]
    fn plan_read_only_and_oversized() {
        assert_eq!(
            plan_request(&req(CMD_WRITE, 0, 0, 8), 512, true, false),
            Plan::Reject {
                error: NBD_EPERM,
                skip: 8
            }
        );
        assert_eq!(
            plan_request(
                &req(CMD_WRITE, 0, 0, MAX_PAYLOAD + 1),
                u64::MAX,
                false,
                false
            ),
            Plan::RejectAndClose { error: NBD_EINVAL }
        );
        assert_eq!(
            plan_request(
                &req(CMD_READ, 0, 0, MAX_PAYLOAD + 1),
                u64::MAX,
                false,
                false
            ),
            Plan::Reject {
                error: NBD_EINVAL,
                skip: 0
            }
        );
    }

    #[test]
    fn info_request_parses_and_rejects_bad_lengths() {
        let mut d = Vec::new();
        d.extend_from_slice(&3u32.to_be_bytes());
        d.extend_from_slice(b"vol");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&INFO_NAME.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        let r = parse_info_request(&d).unwrap();
        assert_eq!(r.name, "vol");
        assert_eq!(r.requests, vec![INFO_NAME, INFO_BLOCK_SIZE]);
        assert!(parse_info_request(&d[..d.len() - 1]).is_err());
        let mut long = d.clone();
        long[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_info_request(&long).is_err());
    }

    #[test]
    fn client_flags() {
        assert_eq!(
            parse_client_flags(3u32.to_be_bytes()).unwrap(),
            ClientFlags {
                fixed_newstyle: true,
                no_zeroes: true
            }
        );
        assert!(parse_client_flags(4u32.to_be_bytes()).is_err());
    }

    fn descs(reply: &[u8]) -> Vec<(u32, u32)> {
        reply[STRUCTURED_HEADER_LEN + 4..]
            .chunks_exact(8)
            .map(|c| (be_u32(&c[..4]), be_u32(&c[4..])))
            .collect()
    }

    #[test]
    fn block_status_encoding_clips_merges_and_never_is_empty() {
        let e = |len, hole, zero| Extent { len, hole, zero };
        let r = encode_block_status(
            9,
            100,
            false,
            &[
                e(30, false, false),
                e(30, false, false),
                e(1000, true, true),
            ],
        );
        assert_eq!(be_u32(&r[16..20]) as usize, r.len() - STRUCTURED_HEADER_LEN);
        assert_eq!(descs(&r), vec![(60, 0), (40, STATE_HOLE | STATE_ZERO)]);
        let r = encode_block_status(9, 100, true, &[e(30, false, false), e(70, true, true)]);
        assert_eq!(descs(&r), vec![(30, 0)]);
        assert_eq!(
            descs(&encode_block_status(9, 100, false, &[])),
            vec![(100, 0)]
        );
        assert_eq!(
            descs(&encode_block_status(9, 100, false, &[e(0, true, true)])),
            vec![(100, 0)]
        );
        let many: Vec<Extent> = (0..MAX_EXTENTS * 2)
            .map(|i| e(1, i % 2 == 0, false))
            .collect();
        assert_eq!(
            descs(&encode_block_status(9, u32::MAX, false, &many)).len(),
            MAX_EXTENTS
        );
    }

    #[test]
    fn meta_context_request_parses_and_rejects_lies() {
        let mut d = Vec::new();
        d.extend_from_slice(&3u32.to_be_bytes());
        d.extend_from_slice(b"vol");
        d.extend_from_slice(&2u32.to_be_bytes());
        for q in ["base:allocation", "base:"] {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        let r = parse_meta_context_request(&d).unwrap();
        assert_eq!(r.export, "vol");
        assert_eq!(r.queries, vec!["base:allocation", "base:"]);
        assert!(parse_meta_context_request(&d[..d.len() - 1]).is_err());
        let mut extra = d.clone();
        extra.push(0);
        assert!(parse_meta_context_request(&extra).is_err());
        let mut lie = d.clone();
        lie[7..11].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_meta_context_request(&lie).is_err());
    }

    #[test]
    fn block_status_needs_negotiation_and_range() {
        let bs = req(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 512);
        assert_eq!(
            plan_request(&bs, 512, false, false),
            Plan::Reject {
                error: NBD_EINVAL,
                skip: 0
            }
        );
        assert_eq!(
            plan_request(&bs, 512, true, true),
            Plan::BlockStatus {
                offset: 0,
                len: 512,
                req_one: true
            }
        );
        assert_eq!(
            plan_request(&bs, 511, false, true),
            Plan::Reject {
                error: NBD_EINVAL,
                skip: 0
            }
        );
    }

    proptest! {
        #[test]
        fn block_status_reply_is_well_formed(lens in proptest::collection::vec((0u64..5000, any::<bool>(), any::<bool>()), 0..20),
                                             len in 1u32..20000, req_one in any::<bool>()) {
            let ext: Vec<Extent> = lens.iter().map(|&(len, hole, zero)| Extent { len, hole, zero }).collect();
            let r = encode_block_status(1, len, req_one, &ext);
            let d = descs(&r);
            prop_assert!(!d.is_empty());
            prop_assert!(d.iter().all(|&(l, _)| l > 0));
            prop_assert!(d.iter().map(|&(l, _)| u64::from(l)).sum::<u64>() <= u64::from(len));
            prop_assert!(!req_one || d.len() == 1);
            prop_assert_eq!(be_u32(&r[16..20]) as usize, r.len() - STRUCTURED_HEADER_LEN);
        }
    }

    proptest! {
        // Random bytes never panic any parser, and every request maps to a plan
        // whose effect stays within the export.
        #[test]
        fn parsers_total_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                                          size in 0u64..(1 << 20), ro in any::<bool>(), bs in any::<bool>()) {
            let _ = parse_info_request(&bytes);
            let _ = parse_name(&bytes);
            let _ = parse_meta_context_request(&bytes);
            let mut h = [0u8; OPTION_HEADER_LEN];
            let n = bytes.len().min(OPTION_HEADER_LEN);
            h[..n].copy_from_slice(&bytes[..n]);
            let _ = parse_option_header(&h);
            let mut b = [0u8; REQUEST_LEN];
            let n = bytes.len().min(REQUEST_LEN);
            b[..n].copy_from_slice(&bytes[..n]);
            b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
            let r = parse_request(&b).unwrap();
            match plan_request(&r, size, ro, bs) {
                Plan::Read { offset, len } | Plan::Write { offset, len, .. }
                | Plan::Trim { offset, len, .. } | Plan::WriteZeroes { offset, len, .. }
                | Plan::BlockStatus { offset, len, .. } | Plan::Cache { offset, len } => {
                    prop_assert!(offset + u64::from(len) <= size);
                }
                Plan::Reject { skip, .. } => prop_assert!(skip <= MAX_PAYLOAD),
                Plan::Flush | Plan::Disconnect | Plan::RejectAndClose { .. } => {}
            }
        }
    }
}
