//! The data-plane wire protocol between guest agents and `pagetabled`.
//!
//! Hand-written little-endian encoding; no serde on the lookup path. Every message is
//! `u32 length` + body, with `0 < length <= MAX_MESSAGE`. A body starts with
//! `u8 version`, `u8 kind`, `u32 request id`; replies add `u64 generation` (chosen at
//! random when the daemon starts, so a client notices a restart and re-registers).
//!
//! ```text
//! request  kind  body after the header
//! Hello    0x01  -
//! Register 0x02  family u32, n u16,
//!                n x (space u32, page u32, frame, lsn u64, valid_from u64, size u32)
//! Lookup   0x03  family u32, max_lsn u64, n u16, n x (space u32, page u32)
//! Invalid. 0x04  n u16, n x frame
//! reply    kind  body after the header (version, kind, id, generation)
//! Hello    0x81  domain u32, family u32
//! Register 0x82  registered u32
//! Lookup   0x83  n u16,
//!                n x (u8 0 | u8 1, owner u32, frame, lsn u64, valid_from u64, size u32)
//! Invalid. 0x84  removed u32
//! Error    0xff  code u16, len u16, len bytes UTF-8 message
//! frame:   u8 tag; 1 = LocalPool offset u64, 2 = XenGfn gfn u64,
//!          3 = XenGrant issuer u16 grantee u16 gref u32
//! ```
//!
//! Decoding never panics and never allocates more than the message length implies.

use std::io::{Read, Write};

use crate::ids::{DomainId, Entry, FamilyId, Frame};

/// Version 2 added `valid_from` to registrations and lookup replies; version 3 the
/// grantee of a grant frame.
pub const VERSION: u8 = 3;
/// Largest body accepted, in bytes. A full batch of registrations is ~150 KiB.
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Most items in one batch; the client splits larger batches.
pub const MAX_BATCH: usize = 4096;
/// Longest error text in a reply, in bytes; longer texts are cut when encoding.
pub const MAX_ERROR_TEXT: usize = 1024;

const K_HELLO: u8 = 0x01;
const K_REGISTER: u8 = 0x02;
const K_LOOKUP: u8 = 0x03;
const K_INVALIDATE: u8 = 0x04;
const K_REPLY: u8 = 0x80;
const K_ERROR: u8 = 0xff;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message is empty")]
    Empty,
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE}")]
    TooLarge(usize),
    #[error("message truncated: needed {need} more bytes at offset {at}")]
    Truncated { at: usize, need: usize },
    #[error("{0} bytes left over after the message")]
    Trailing(usize),
    #[error("protocol version {0} is not supported (this side speaks {VERSION})")]
    Version(u8),
    #[error("unknown message kind {0:#04x}")]
    Kind(u8),
    #[error("unknown frame tag {0}")]
    FrameTag(u8),
    #[error("batch of {0} items exceeds the limit of {MAX_BATCH}")]
    BatchTooLarge(usize),
    #[error("presence byte {0} is neither 0 nor 1")]
    Presence(u8),
    #[error("error text of {0} bytes exceeds the limit of {MAX_ERROR_TEXT}")]
    ErrorTextTooLong(usize),
    #[error("error message is not UTF-8")]
    Utf8,
}

/// One registration as it travels; the family is per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireRegistration {
    pub space_id: u32,
    pub page_no: u32,
    pub frame: Frame,
    pub lsn: u64,
    /// The family's clone LSN read before the read that produced the frame
    /// (`Entry::valid_from`).
    pub valid_from: u64,
    pub page_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Hello,
    Register {
        family: FamilyId,
        items: Vec<WireRegistration>,
    },
    Lookup {
        family: FamilyId,
        max_lsn: u64,
        pages: Vec<(u32, u32)>,
    },
    Invalidate {
        frames: Vec<Frame>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestMsg {
    pub id: u32,
    pub request: Request,
}

/// Why the daemon refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The message could not be decoded; the daemon closes the connection.
    Malformed,
    /// The message exceeds `MAX_MESSAGE`; the daemon closes the connection.
    TooLarge,
    /// The calling process is not bound to a domain (admin `bind_pid`).
    NotBound,
    UnknownDomain,
    UnknownFamily,
    NotInFamily,
    QuotaExceeded,
    InvalidArgument,
    Internal,
    /// A code this side does not know (a newer daemon).
    Other(u16),
}

impl ErrorCode {
    fn to_u16(self) -> u16 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::TooLarge => 2,
            ErrorCode::NotBound => 3,
            ErrorCode::UnknownDomain => 4,
            ErrorCode::UnknownFamily => 5,
            ErrorCode::NotInFamily => 6,
            ErrorCode::QuotaExceeded => 7,
            ErrorCode::InvalidArgument => 8,
            ErrorCode::Internal => 9,
            ErrorCode::Other(c) => c,
        }
    }

    fn from_u16(c: u16) -> Self {
        match c {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::TooLarge,
            3 => ErrorCode::NotBound,
            4 => ErrorCode::UnknownDomain,
            5 => ErrorCode::UnknownFamily,
            6 => ErrorCode::NotInFamily,
            7 => ErrorCode::QuotaExceeded,
            8 => ErrorCode::InvalidArgument,
            9 => ErrorCode::Internal,
            c => ErrorCode::Other(c),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct RemoteError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Hello { domain: DomainId, family: FamilyId },
    Registered { count: u32 },
    Found(Vec<Option<Entry>>),
    Invalidated { count: u32 },
    Error(RemoteError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyMsg {
    pub id: u32,
    pub generation: u64,
    pub reply: Reply,
}

// ---- encoding ------------------------------------------------------------------------

fn put_frame(b: &mut Vec<u8>, f: Frame) {
    match f {
        Frame::LocalPool { offset } => {
            b.push(1);
            b.extend_from_slice(&offset.to_le_bytes());
        }
        Frame::XenGfn { gfn } => {
            b.push(2);
            b.extend_from_slice(&gfn.to_le_bytes());
        }
        Frame::XenGrant {
            issuer,
            grantee,
            gref,
        } => {
            b.push(3);
            b.extend_from_slice(&issuer.to_le_bytes());
            b.extend_from_slice(&grantee.to_le_bytes());
            b.extend_from_slice(&gref.to_le_bytes());
        }
    }
}

/// Starts a message in `b` (cleared) with a placeholder length.
fn begin(b: &mut Vec<u8>, kind: u8, id: u32) {
    b.clear();
    b.extend_from_slice(&[0; 4]);
    b.push(VERSION);
    b.push(kind);
    b.extend_from_slice(&id.to_le_bytes());
}

fn finish(b: &mut [u8]) {
    let len = (b.len() - 4) as u32;
    b[..4].copy_from_slice(&len.to_le_bytes());
}

fn count16(n: usize) -> [u8; 2] {
    // Callers keep batches within MAX_BATCH; clamp defensively instead of wrapping.
    (n.min(MAX_BATCH) as u16).to_le_bytes()
}

/// Encodes `msg` with its length prefix into `b` (cleared first). Batches must hold at
/// most `MAX_BATCH` items; extra items are not encoded.
pub fn encode_request(msg: &RequestMsg, b: &mut Vec<u8>) {
    match &msg.request {
        Request::Hello => begin(b, K_HELLO, msg.id),
        Request::Register { family, items } => {
            begin(b, K_REGISTER, msg.id);
            b.extend_from_slice(&family.0.to_le_bytes());
            b.extend_from_slice(&count16(items.len()));
            for r in items.iter().take(MAX_BATCH) {
                b.extend_from_slice(&r.space_id.to_le_bytes());
                b.extend_from_slice(&r.page_no.to_le_bytes());
                put_frame(b, r.frame);
                b.extend_from_slice(&r.lsn.to_le_bytes());
                b.extend_from_slice(&r.valid_from.to_le_bytes());
                b.extend_from_slice(&r.page_size.to_le_bytes());
            }
        }
        Request::Lookup {
            family,
            max_lsn,
            pages,
        } => {
            begin(b, K_LOOKUP, msg.id);
            b.extend_from_slice(&family.0.to_le_bytes());
            b.extend_from_slice(&max_lsn.to_le_bytes());
            b.extend_from_slice(&count16(pages.len()));
            for (s, p) in pages.iter().take(MAX_BATCH) {
                b.extend_from_slice(&s.to_le_bytes());
                b.extend_from_slice(&p.to_le_bytes());
            }
        }
        Request::Invalidate { frames } => {
            begin(b, K_INVALIDATE, msg.id);
            b.extend_from_slice(&count16(frames.len()));
            for f in frames.iter().take(MAX_BATCH) {
                put_frame(b, *f);
            }
        }
    }
    finish(b);
}

/// Encodes `msg` with its length prefix into `b` (cleared first).
pub fn encode_reply(msg: &ReplyMsg, b: &mut Vec<u8>) {
    let kind = match &msg.reply {
        Reply::Hello { .. } => K_REPLY | K_HELLO,
        Reply::Registered { .. } => K_REPLY | K_REGISTER,
        Reply::Found(_) => K_REPLY | K_LOOKUP,
        Reply::Invalidated { .. } => K_REPLY | K_INVALIDATE,
        Reply::Error(_) => K_ERROR,
    };
    begin(b, kind, msg.id);
    b.extend_from_slice(&msg.generation.to_le_bytes());
    match &msg.reply {
        Reply::Hello { domain, family } => {
            b.extend_from_slice(&domain.0.to_le_bytes());
            b.extend_from_slice(&family.0.to_le_bytes());
        }
        Reply::Registered { count } | Reply::Invalidated { count } => {
            b.extend_from_slice(&count.to_le_bytes());
        }
        Reply::Found(found) => {
            b.extend_from_slice(&count16(found.len()));
            for f in found.iter().take(MAX_BATCH) {
                match f {
                    None => b.push(0),
                    Some(e) => {
                        b.push(1);
                        b.extend_from_slice(&e.owner.0.to_le_bytes());
                        put_frame(b, e.frame);
                        b.extend_from_slice(&e.lsn.to_le_bytes());
                        b.extend_from_slice(&e.valid_from.to_le_bytes());
                        b.extend_from_slice(&e.page_size.to_le_bytes());
                    }
                }
            }
        }
        Reply::Error(e) => {
            b.extend_from_slice(&e.code.to_u16().to_le_bytes());
            // Cut the message at a char boundary so that it stays valid UTF-8.
            let mut end = e.message.len().min(MAX_ERROR_TEXT);
            while !e.message.is_char_boundary(end) {
                end -= 1;
            }
            b.extend_from_slice(&(end as u16).to_le_bytes());
            b.extend_from_slice(&e.message.as_bytes()[..end]);
        }
    }
    finish(b);
}

// ---- decoding ------------------------------------------------------------------------

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let left = self.b.len() - self.at;
        if left < n {
            return Err(DecodeError::Truncated {
                at: self.at,
                need: n - left,
            });
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let s = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }

    fn frame(&mut self) -> Result<Frame, DecodeError> {
        match self.u8()? {
            1 => Ok(Frame::LocalPool {
                offset: self.u64()?,
            }),
            2 => Ok(Frame::XenGfn { gfn: self.u64()? }),
            3 => Ok(Frame::XenGrant {
                issuer: self.u16()?,
                grantee: self.u16()?,
                gref: self.u32()?,
            }),
            t => Err(DecodeError::FrameTag(t)),
        }
    }

    /// A batch count, checked against MAX_BATCH and against the bytes left, so that a
    /// lying count cannot make us reserve memory the message does not contain.
    fn count(&mut self, min_item: usize) -> Result<usize, DecodeError> {
        let n = usize::from(self.u16()?);
        if n > MAX_BATCH {
            return Err(DecodeError::BatchTooLarge(n));
        }
        let left = self.b.len() - self.at;
        if n * min_item > left {
            return Err(DecodeError::Truncated {
                at: self.at,
                need: n * min_item - left,
            });
        }
        Ok(n)
    }

    fn end(&self) -> Result<(), DecodeError> {
        match self.b.len() - self.at {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

fn header(b: &[u8]) -> Result<(Cursor<'_>, u8, u32), DecodeError> {
    if b.is_empty() {
        return Err(DecodeError::Empty);
    }
    if b.len() > MAX_MESSAGE {
        return Err(DecodeError::TooLarge(b.len()));
    }
    let mut c = Cursor { b, at: 0 };
    let v = c.u8()?;
    if v != VERSION {
        return Err(DecodeError::Version(v));
    }
    let kind = c.u8()?;
    let id = c.u32()?;
    Ok((c, kind, id))
}

/// Decodes a request body (the bytes after the length prefix).
pub fn decode_request(body: &[u8]) -> Result<RequestMsg, DecodeError> {
    let (mut c, kind, id) = header(body)?;
    let request = match kind {
        K_HELLO => Request::Hello,
        K_REGISTER => {
            let family = FamilyId(c.u32()?);
            // The smallest frame encoding (a grant) is 7 bytes.
            let n = c.count(4 + 4 + 7 + 8 + 8 + 4)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(WireRegistration {
                    space_id: c.u32()?,
                    page_no: c.u32()?,
                    frame: c.frame()?,
                    lsn: c.u64()?,
                    valid_from: c.u64()?,
                    page_size: c.u32()?,
                });
            }
            Request::Register { family, items }
        }
        K_LOOKUP => {
            let family = FamilyId(c.u32()?);
            let max_lsn = c.u64()?;
            let n = c.count(8)?;
            let mut pages = Vec::with_capacity(n);
            for _ in 0..n {
                pages.push((c.u32()?, c.u32()?));
            }
            Request::Lookup {
                family,
                max_lsn,
                pages,
            }
        }
        K_INVALIDATE => {
            let n = c.count(7)?;
            let mut frames = Vec::with_capacity(n);
            for _ in 0..n {
                frames.push(c.frame()?);
            }
            Request::Invalidate { frames }
        }
        k => return Err(DecodeError::Kind(k)),
    };
    c.end()?;
    Ok(RequestMsg { id, request })
}

/// Decodes a reply body (the bytes after the length prefix).
pub fn decode_reply(body: &[u8]) -> Result<ReplyMsg, DecodeError> {
    let (mut c, kind, id) = header(body)?;
    let generation = c.u64()?;
    let reply = match kind {
        k if k == K_REPLY | K_HELLO => Reply::Hello {
            domain: DomainId(c.u32()?),
            family: FamilyId(c.u32()?),
        },
        k if k == K_REPLY | K_REGISTER => Reply::Registered { count: c.u32()? },
        k if k == K_REPLY | K_INVALIDATE => Reply::Invalidated { count: c.u32()? },
        k if k == K_REPLY | K_LOOKUP => {
            let n = c.count(1)?;
            let mut found = Vec::with_capacity(n);
            for _ in 0..n {
                found.push(match c.u8()? {
                    0 => None,
                    1 => Some(Entry {
                        owner: DomainId(c.u32()?),
                        frame: c.frame()?,
                        lsn: c.u64()?,
                        valid_from: c.u64()?,
                        page_size: c.u32()?,
                    }),
                    p => return Err(DecodeError::Presence(p)),
                });
            }
            Reply::Found(found)
        }
        K_ERROR => {
            let code = ErrorCode::from_u16(c.u16()?);
            let len = usize::from(c.u16()?);
            if len > MAX_ERROR_TEXT {
                return Err(DecodeError::ErrorTextTooLong(len));
            }
            let message = std::str::from_utf8(c.take(len)?)
                .map_err(|_| DecodeError::Utf8)?
                .to_owned();
            Reply::Error(RemoteError { code, message })
        }
        k => return Err(DecodeError::Kind(k)),
    };
    c.end()?;
    Ok(ReplyMsg {
        id,
        generation,
        reply,
    })
}

// ---- framing on a byte stream --------------------------------------------------------

/// Why reading one message from a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the stream cleanly between messages.
    #[error("peer closed the connection")]
    Closed,
    #[error("i/o")]
    Io(#[source] std::io::Error),
    /// The length prefix is 0 or above MAX_MESSAGE (the body was not read), or the
    /// stream ended inside a message.
    #[error(transparent)]
    Bad(DecodeError),
}

/// Reads one length-prefixed message into `buf` (resized to the body).
pub fn read_message(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<(), ReadError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(ReadError::Closed),
            Ok(0) => {
                return Err(ReadError::Bad(DecodeError::Truncated {
                    at: got,
                    need: 4 - got,
                }))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 {
        return Err(ReadError::Bad(DecodeError::Empty));
    }
    if len > MAX_MESSAGE {
        return Err(ReadError::Bad(DecodeError::TooLarge(len)));
    }
    buf.resize(len, 0);
    let mut got = 0;
    while got < len {
        match r.read(&mut buf[got..]) {
            // The peer half-closed mid-message; say so, so that it can be answered.
            Ok(0) => {
                return Err(ReadError::Bad(DecodeError::Truncated {
                    at: 4 + got,
                    need: len - got,
                }))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    Ok(())
}

/// Writes an already encoded message (with its prefix) in one call.
pub fn write_message(w: &mut impl Write, encoded: &[u8]) -> std::io::Result<()> {
    w.write_all(encoded)?;
    w.flush()
}

#[cfg(test)]
mod tests;
