//! Transmission phase: the request loop of one connection. Reads and block status get
//! structured replies when the client negotiated them; everything else simple replies
//! (the spec allows either for other commands).
//!
//! Several requests of one connection may be in flight at once (NBD allows replies in
//! any order, matched by cookie). `workers` threads take turns as the reader: the one
//! holding the read half parses one request and its payload, lets go, and serves that
//! request itself while the next thread waits for the next request. At queue depth 1
//! this is the plain sequential loop with no hand-off; at higher depth a slow request
//! (a lazy clone hydrating a region) does not hold up the others.
//!
//! Everything that keeps the byte stream in sync - parsing, payload consumption, the
//! decision to close - happens while holding the read half, so no thread ever reads a
//! payload as a header.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tracing::{debug, warn};

use crate::exports::Export;
use crate::negotiate::Session;
use crate::proto::*;
use crate::NbdError;

/// Serve requests for the session's export until the client disconnects, reading from
/// `r` and replying on `w`, with up to `workers` requests in flight (at least 1; with
/// 1 the loop runs on the calling thread).
pub fn transmit<R, W>(r: R, w: W, session: &Session, workers: usize) -> Result<(), NbdError>
where
    R: Read + Send,
    W: Write + Send,
{
    let conn = Conn {
        reader: Mutex::new(r),
        writer: Mutex::new(w),
        export: &session.export,
        structured: session.structured_replies,
        base_allocation: session.base_allocation,
        done: AtomicBool::new(false),
        error: Mutex::new(None),
    };
    if workers <= 1 {
        conn.worker();
    } else {
        std::thread::scope(|s| {
            for _ in 1..workers {
                s.spawn(|| conn.worker());
            }
            conn.worker();
        });
    }
    match conn.error.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct Conn<'e, R, W> {
    reader: Mutex<R>,
    writer: Mutex<W>,
    export: &'e Export,
    structured: bool,
    base_allocation: bool,
    /// Set once the session is over (DISC, EOF, fatal error): no more reads.
    done: AtomicBool,
    /// The first fatal error, reported by `transmit`.
    error: Mutex<Option<NbdError>>,
}

/// A request read off the wire, ready to run without the read half.
struct Job {
    req: Request,
    plan: Plan,
}

enum Next {
    Job(Job),
    /// Clean end: DISC or EOF.
    End,
}

impl<R: Read, W: Write> Conn<'_, R, W> {
    fn worker(&self) {
        // Per-worker buffer: grows to the largest request this worker served and is
        // reused, so steady-state requests cost no allocation and no zero-fill.
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let job = {
                let mut r = self.reader.lock();
                if self.done.load(Ordering::SeqCst) {
                    return;
                }
                match self.next(&mut *r, &mut buf) {
                    Ok(Next::Job(job)) => job,
                    Ok(Next::End) => {
                        self.done.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => {
                        self.done.store(true, Ordering::SeqCst);
                        self.fail(e);
                        return;
                    }
                }
            };
            if let Err(e) = self.run(&job, &mut buf) {
                self.done.store(true, Ordering::SeqCst);
                self.fail(e);
                return;
            }
        }
    }

    fn fail(&self, e: NbdError) {
        self.error.lock().get_or_insert(e);
    }

    /// Read one request (and its payload, into `buf`) while holding the read half.
    fn next(&self, r: &mut R, buf: &mut Vec<u8>) -> Result<Next, NbdError> {
        let mut h = [0u8; REQUEST_LEN];
        match r.read_exact(&mut h) {
            Ok(()) => {}
            // A client that hangs up without NBD_CMD_DISC is rude but not an error.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Next::End),
            Err(e) => return Err(NbdError::io("reading request")(e)),
        }
        let req = parse_request(&h)?;
        let dev = &self.export.device;
        let plan = plan_request(&req, dev.size(), dev.read_only(), self.base_allocation);
        match plan {
            Plan::Write { len, .. } | Plan::Reject { skip: len, .. } => {
                read_payload(r, buf, len)?;
            }
            Plan::Disconnect => {
                debug!(export = %self.export.name, "client disconnected");
                return Ok(Next::End);
            }
            Plan::RejectAndClose { error } => {
                // Stop reading first: the rest of the stream is an unread payload.
                self.done.store(true, Ordering::SeqCst);
                debug!(?req, error, "oversized request; closing");
                // Best effort: the client may still be busy sending its payload.
                let _ = self.reply(error, req.cookie);
                return Err(NbdError::Malformed {
                    what: "request payload larger than the maximum",
                });
            }
            _ => {}
        }
        Ok(Next::Job(Job { req, plan }))
    }

    /// Serve one request whose payload (if any) is in `buf`.
    fn run(&self, job: &Job, buf: &mut Vec<u8>) -> Result<(), NbdError> {
        let dev = &*self.export.device;
        let result = match job.plan {
            Plan::Read { len: 0, .. } if self.structured => {
                let none =
                    encode_structured_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, job.req.cookie, 0);
                return self.send(&none);
            }
            Plan::Read { offset, len } => {
                // Reply header and data leave in one write from one buffer.
                let head = if self.structured {
                    STRUCTURED_HEADER_LEN + 8
                } else {
                    SIMPLE_REPLY_LEN
                };
                let total = head + len as usize;
                if buf.len() < total {
                    buf.resize(total, 0);
                }
                match dev.read_at(&mut buf[head..total], offset) {
                    Ok(()) => {
                        if self.structured {
                            buf[..STRUCTURED_HEADER_LEN].copy_from_slice(
                                &encode_structured_header(
                                    REPLY_FLAG_DONE,
                                    REPLY_TYPE_OFFSET_DATA,
                                    job.req.cookie,
                                    8 + len,
                                ),
                            );
                            buf[STRUCTURED_HEADER_LEN..head].copy_from_slice(&offset.to_be_bytes());
                        } else {
                            buf[..head].copy_from_slice(&encode_simple_reply(0, job.req.cookie));
                        }
                        return self.send(&buf[..total]);
                    }
                    Err(e) => Err(e),
                }
            }
            Plan::BlockStatus {
                offset,
                len,
                req_one,
            } => match dev.block_status(offset, len.into()) {
                Ok(extents) => {
                    return self.send(&encode_block_status(job.req.cookie, len, req_one, &extents))
                }
                Err(e) => Err(e),
            },
            Plan::Write { offset, len, fua } => dev.write_at(&buf[..len as usize], offset, fua),
            Plan::Flush => dev.flush(),
            Plan::Cache { offset, len } => dev.cache(offset, len.into()),
            Plan::Trim { offset, len, fua } => {
                dev.trim(offset, len.into())
                    .and_then(|()| if fua { dev.flush() } else { Ok(()) })
            }
            Plan::WriteZeroes {
                offset,
                len,
                fua,
                no_hole,
            } => {
                if no_hole {
                    dev.write_zeroes_no_hole(offset, len.into(), fua)
                } else {
                    dev.write_zeroes(offset, len.into(), fua)
                }
            }
            Plan::Reject { error, .. } => {
                debug!(req = ?job.req, error, "request rejected");
                return self.reply_to(&job.req, error);
            }
            Plan::Disconnect | Plan::RejectAndClose { .. } => {
                unreachable!("handled while reading")
            }
        };
        let error = match result {
            Ok(()) => 0,
            Err(e) => {
                warn!(export = %self.export.name, req = ?job.req, error = %e, "device error");
                errno_for(&e)
            }
        };
        // A failed read sends no payload (spec: simple replies to errors carry none).
        self.reply_to(&job.req, error)
    }

    /// The data-less reply to `req`: structured for reads and block status once
    /// structured replies are on (the spec forbids simple replies to reads then).
    fn reply_to(&self, req: &Request, error: u32) -> Result<(), NbdError> {
        if self.structured && matches!(req.command, CMD_READ | CMD_BLOCK_STATUS) {
            if error == 0 {
                let none =
                    encode_structured_header(REPLY_FLAG_DONE, REPLY_TYPE_NONE, req.cookie, 0);
                return self.send(&none);
            }
            return self.send(&encode_structured_error(error, req.cookie));
        }
        self.reply(error, req.cookie)
    }

    fn reply(&self, error: u32, cookie: u64) -> Result<(), NbdError> {
        self.send(&encode_simple_reply(error, cookie))
    }

    fn send(&self, bytes: &[u8]) -> Result<(), NbdError> {
        self.writer
            .lock()
            .write_all(bytes)
            .map_err(NbdError::io("writing reply"))
    }
}

fn read_payload<R: Read>(r: &mut R, buf: &mut Vec<u8>, len: u32) -> Result<(), NbdError> {
    let len = len as usize;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    r.read_exact(&mut buf[..len])
        .map_err(NbdError::io("reading write payload"))
}
