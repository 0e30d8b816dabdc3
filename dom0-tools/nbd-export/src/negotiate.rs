//! Handshake phase: greeting, client flags, option haggling.

use std::io::{self, Read, Write};

use tracing::debug;

use crate::exports::{Export, Exports};
use crate::proto::*;
use crate::NbdError;

/// What transmission needs from the handshake.
#[derive(Debug, Clone)]
pub struct Session {
    pub export: Export,
    /// The client negotiated NBD_OPT_STRUCTURED_REPLY: reads get structured replies.
    pub structured_replies: bool,
    /// The client selected `base:allocation` for this export: block status allowed.
    pub base_allocation: bool,
}

/// How option haggling ended.
#[derive(Debug)]
pub enum Negotiated {
    /// The client chose an export; transmission starts on the same stream.
    Transmit(Session),
    /// The client sent NBD_OPT_ABORT (or left before choosing).
    Aborted,
}

/// Run the handshake, reading from `r` and answering on `w`, until the client enters
/// transmission or leaves. Protocol violations the spec lets a server end the session
/// for come back as errors; the caller closes the connection.
pub fn negotiate<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    exports: &Exports,
) -> Result<Negotiated, NbdError> {
    send(w, &encode_greeting())?;
    let mut flags = [0u8; 4];
    if !read_or_eof(r, &mut flags, "reading client flags")? {
        return Ok(Negotiated::Aborted);
    }
    let mut h = Haggle {
        w,
        exports,
        client: parse_client_flags(flags)?,
        structured: false,
        meta_export: None,
    };
    loop {
        let mut header = [0u8; OPTION_HEADER_LEN];
        if !read_or_eof(r, &mut header, "reading option header")? {
            return Ok(Negotiated::Aborted);
        }
        let OptionHeader { option, len } = parse_option_header(&header)?;
        if len > MAX_OPTION_LEN {
            // Never allocate or drain what the client claims: say so and hang up.
            if h.client.fixed_newstyle {
                let _ = h.reply(option, REP_ERR_TOO_BIG, b"option data too large");
            }
            return Err(NbdError::OptionTooLarge {
                option,
                len,
                max: MAX_OPTION_LEN,
            });
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data)
            .map_err(NbdError::io("reading option data"))?;
        debug!(option, len, "option");
        if let Some(done) = h.option(option, &data)? {
            return Ok(done);
        }
    }
}

/// Fill `buf`; `false` if the client hung up first: leaving between messages is the
/// client's right, not a server error.
fn read_or_eof<R: Read>(r: &mut R, buf: &mut [u8], what: &'static str) -> Result<bool, NbdError> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(NbdError::io(what)(e)),
    }
}

fn send<W: Write>(w: &mut W, bytes: &[u8]) -> Result<(), NbdError> {
    w.write_all(bytes)
        .map_err(NbdError::io("writing handshake reply"))
}

/// Option-haggling state of one connection.
struct Haggle<'a, W> {
    w: &'a mut W,
    exports: &'a Exports,
    client: ClientFlags,
    /// NBD_OPT_STRUCTURED_REPLY was acknowledged.
    structured: bool,
    /// The export name the last SET_META_CONTEXT selected base:allocation for.
    meta_export: Option<String>,
}

impl<W: Write> Haggle<'_, W> {
    fn reply(&mut self, option: u32, reply: u32, data: &[u8]) -> Result<(), NbdError> {
        send(self.w, &encode_option_reply(option, reply, data))
    }

    /// Answer one option; `Some` when haggling is over.
    fn option(&mut self, option: u32, data: &[u8]) -> Result<Option<Negotiated>, NbdError> {
        if !self.client.fixed_newstyle && option != OPT_EXPORT_NAME {
            // Old newstyle clients cannot parse option replies; the spec's only
            // answer for them is to close.
            return Err(NbdError::Malformed {
                what: "option other than EXPORT_NAME from a non-fixed-newstyle client",
            });
        }
        match option {
            OPT_EXPORT_NAME => self.export_name(data).map(Some),
            OPT_ABORT => {
                // The client may already be gone; the ACK is a courtesy.
                let _ = self.reply(option, REP_ACK, &[]);
                Ok(Some(Negotiated::Aborted))
            }
            OPT_LIST => self.list(data).map(|()| None),
            OPT_INFO | OPT_GO => self.info_or_go(option, data),
            OPT_STRUCTURED_REPLY => self.structured_reply(data).map(|()| None),
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                self.meta_context(option, data).map(|()| None)
            }
            _ => self
                .reply(option, REP_ERR_UNSUP, b"option not supported")
                .map(|()| None),
        }
    }

    fn session(&self, export: Export, requested_name: &str) -> Negotiated {
        Negotiated::Transmit(Session {
            export,
            structured_replies: self.structured,
            base_allocation: self.meta_export.as_deref() == Some(requested_name),
        })
    }

    fn export_name(&mut self, data: &[u8]) -> Result<Negotiated, NbdError> {
        let name = parse_name(data)?;
        // The spec leaves no error reply here: an unknown name ends the session.
        let export = self.exports.lookup(&name).ok_or(NbdError::Malformed {
            what: "EXPORT_NAME for an unknown export",
        })?;
        let dev = &export.device;
        let reply = encode_export_name_reply(
            dev.size(),
            transmission_flags(dev.read_only()),
            self.client.no_zeroes,
        );
        send(self.w, &reply)?;
        Ok(self.session(export, &name))
    }

    fn list(&mut self, data: &[u8]) -> Result<(), NbdError> {
        if !data.is_empty() {
            return self.reply(OPT_LIST, REP_ERR_INVALID, b"LIST takes no data");
        }
        for e in self.exports.list() {
            let entry = encode_list_entry(&e.name, e.description.as_deref());
            self.reply(OPT_LIST, REP_SERVER, &entry)?;
        }
        self.reply(OPT_LIST, REP_ACK, &[])
    }

    fn info_or_go(&mut self, option: u32, data: &[u8]) -> Result<Option<Negotiated>, NbdError> {
        let Ok(req) = parse_info_request(data) else {
            self.reply(option, REP_ERR_INVALID, b"malformed INFO/GO data")?;
            return Ok(None);
        };
        let Some(export) = self.exports.lookup(&req.name) else {
            self.reply(option, REP_ERR_UNKNOWN, b"no such export")?;
            return Ok(None);
        };
        let dev = &export.device;
        let info = encode_info_export(dev.size(), transmission_flags(dev.read_only()));
        self.reply(option, REP_INFO, &info)?;
        // Sent unasked too (the spec allows it): clients that do not ask fall back to
        // defaults our limits already cover.
        self.reply(option, REP_INFO, &encode_info_block_size())?;
        if req.requests.contains(&INFO_NAME) {
            self.reply(
                option,
                REP_INFO,
                &encode_info_string(INFO_NAME, &export.name),
            )?;
        }
        if let (true, Some(d)) = (
            req.requests.contains(&INFO_DESCRIPTION),
            export.description.as_deref(),
        ) {
            self.reply(option, REP_INFO, &encode_info_string(INFO_DESCRIPTION, d))?;
        }
        self.reply(option, REP_ACK, &[])?;
        Ok((option == OPT_GO).then(|| self.session(export, &req.name)))
    }

    fn structured_reply(&mut self, data: &[u8]) -> Result<(), NbdError> {
        if !data.is_empty() {
            let msg = b"STRUCTURED_REPLY takes no data";
            return self.reply(OPT_STRUCTURED_REPLY, REP_ERR_INVALID, msg);
        }
        self.structured = true;
        self.reply(OPT_STRUCTURED_REPLY, REP_ACK, &[])
    }

    fn meta_context(&mut self, option: u32, data: &[u8]) -> Result<(), NbdError> {
        let set = option == OPT_SET_META_CONTEXT;
        if set {
            // Every SET replaces the selection, even one that fails.
            self.meta_export = None;
        }
        if !self.structured {
            let msg = b"negotiate structured replies first";
            return self.reply(option, REP_ERR_INVALID, msg);
        }
        let Ok(req) = parse_meta_context_request(data) else {
            return self.reply(option, REP_ERR_INVALID, b"malformed META_CONTEXT data");
        };
        if self.exports.lookup(&req.export).is_none() {
            return self.reply(option, REP_ERR_UNKNOWN, b"no such export");
        }
        let matches = |q: &String| q == BASE_ALLOCATION || (!set && q == "base:");
        // LIST without queries lists everything; SET without queries selects nothing.
        let selected = (!set && req.queries.is_empty()) || req.queries.iter().any(matches);
        if selected {
            // LIST replies carry id 0 (spec: reserved, clients ignore it).
            let id = if set { BASE_ALLOCATION_ID } else { 0 };
            let ctx = encode_meta_context(id, BASE_ALLOCATION);
            self.reply(option, REP_META_CONTEXT, &ctx)?;
            if set {
                self.meta_export = Some(req.export);
            }
        }
        self.reply(option, REP_ACK, &[])
    }
}
