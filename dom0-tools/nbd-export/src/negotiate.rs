//! Handshake phase: greeting, client flags, option haggling.

use std::io::{Read, Write};

use tracing::debug;

use crate::exports::{Export, Exports};
use crate::proto::{self, *};
use crate::NbdError;

/// How option haggling ended.
#[derive(Debug)]
pub enum Negotiated {
    /// The client chose an export; transmission starts on the same stream.
    Transmit(Export),
    /// The client sent NBD_OPT_ABORT (or left before choosing).
    Aborted,
}

fn send<S: Write>(s: &mut S, bytes: &[u8]) -> Result<(), NbdError> {
    s.write_all(bytes)
        .map_err(NbdError::io("writing handshake reply"))
}

fn reply<S: Write>(s: &mut S, option: u32, reply: u32, data: &[u8]) -> Result<(), NbdError> {
    send(s, &encode_option_reply(option, reply, data))
}

/// Run the handshake, reading from `r` and answering on `w`, until the client enters
/// transmission or leaves. Protocol violations the spec lets a server end the session
/// for come back as errors; the caller closes the connection.
pub fn negotiate<R: Read, W: Write>(
    r: &mut R,
    s: &mut W,
    exports: &Exports,
) -> Result<Negotiated, NbdError> {
    send(s, &encode_greeting())?;
    let mut flags = [0u8; 4];
    match r.read_exact(&mut flags) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Negotiated::Aborted),
        Err(e) => return Err(NbdError::io("reading client flags")(e)),
    }
    let client = parse_client_flags(flags)?;
    loop {
        let mut h = [0u8; OPTION_HEADER_LEN];
        match r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(Negotiated::Aborted)
            }
            Err(e) => return Err(NbdError::io("reading option header")(e)),
        }
        let OptionHeader { option, len } = parse_option_header(&h)?;
        if len > MAX_OPTION_LEN {
            // Never allocate or drain what the client claims: say so and hang up.
            if client.fixed_newstyle {
                let _ = reply(s, option, REP_ERR_TOO_BIG, b"option data too large");
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
        if !client.fixed_newstyle && option != OPT_EXPORT_NAME {
            // Old newstyle clients cannot parse option replies; the spec's only
            // answer for them is to close.
            return Err(NbdError::Malformed {
                what: "option other than EXPORT_NAME from a non-fixed-newstyle client",
            });
        }
        match option {
            OPT_EXPORT_NAME => {
                let name = parse_name(&data)?;
                // The spec leaves no error reply here: an unknown name ends the session.
                let export = exports.lookup(&name).ok_or(NbdError::Malformed {
                    what: "EXPORT_NAME for an unknown export",
                })?;
                let dev = &export.device;
                send(
                    s,
                    &encode_export_name_reply(
                        dev.size(),
                        transmission_flags(dev.read_only()),
                        client.no_zeroes,
                    ),
                )?;
                return Ok(Negotiated::Transmit(export));
            }
            OPT_ABORT => {
                // The client may already be gone; its ACK is a courtesy.
                let _ = reply(s, option, REP_ACK, &[]);
                return Ok(Negotiated::Aborted);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    reply(s, option, REP_ERR_INVALID, b"LIST takes no data")?;
                    continue;
                }
                for e in exports.list() {
                    let entry = encode_list_entry(&e.name, e.description.as_deref());
                    reply(s, option, REP_SERVER, &entry)?;
                }
                reply(s, option, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                let Ok(req) = parse_info_request(&data) else {
                    reply(s, option, REP_ERR_INVALID, b"malformed INFO/GO data")?;
                    continue;
                };
                let Some(export) = exports.lookup(&req.name) else {
                    reply(s, option, REP_ERR_UNKNOWN, b"no such export")?;
                    continue;
                };
                send_info(s, option, &export, &req.requests)?;
                reply(s, option, REP_ACK, &[])?;
                if option == OPT_GO {
                    return Ok(Negotiated::Transmit(export));
                }
            }
            _ => reply(s, option, REP_ERR_UNSUP, b"option not supported")?,
        }
    }
}

fn send_info<S: Write>(
    s: &mut S,
    option: u32,
    export: &Export,
    requests: &[u16],
) -> Result<(), NbdError> {
    let dev = &export.device;
    let info = encode_info_export(dev.size(), transmission_flags(dev.read_only()));
    reply(s, option, REP_INFO, &info)?;
    // Sent unasked too (the spec allows it): our limits are generous, and clients
    // that do not ask fall back to the defaults anyway.
    reply(s, option, REP_INFO, &encode_info_block_size())?;
    if requests.contains(&INFO_NAME) {
        let name = encode_info_string(INFO_NAME, &export.name);
        reply(s, option, REP_INFO, &name)?;
    }
    if let (true, Some(d)) = (
        requests.contains(&INFO_DESCRIPTION),
        export.description.as_deref(),
    ) {
        reply(
            s,
            option,
            REP_INFO,
            &encode_info_string(proto::INFO_DESCRIPTION, d),
        )?;
    }
    Ok(())
}
