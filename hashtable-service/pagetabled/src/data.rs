//! The data plane: one thread per client connection speaking `pagetable::wire`.
//!
//! A connection acts as the domain its peer pid is bound to, resolved at its first
//! message; an unbound peer gets `NotBound` and is closed. Undecodable, truncated or
//! oversized input gets a `Malformed`/`TooLarge` reply and the connection is closed
//! (the stream cannot be trusted to be in step any more); other clients are unaffected.

use pagetable::transport::{Connection, PeerIdentity, Transport};
use pagetable::wire::{self, ErrorCode, ReadError, RemoteError, Reply, ReplyMsg, Request};
use pagetable::{DomainHandle, DomainId, Error, PageKey, PageTable, Registration};
use std::sync::Arc;
use std::time::Duration;

use crate::daemon::Daemon;

/// A client that does not read its replies for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection may stay silent before it is bound to a domain. Bound
/// agents may idle forever; anyone else could otherwise park a thread per connection.
pub struct Limits {
    pub unbound_timeout: Duration,
}

pub fn serve<T: Transport>(
    transport: T,
    daemon: Arc<Daemon>,
    limits: Limits,
) -> anyhow::Result<()> {
    let unbound_timeout = limits.unbound_timeout;
    tracing::info!(on = %transport.describe(), generation = daemon.generation, "serving clients");
    loop {
        match transport.accept() {
            Ok(conn) => {
                let daemon = daemon.clone();
                let spawned = std::thread::Builder::new()
                    .name("pagetable-conn".into())
                    .spawn(move || handle(conn, &daemon, unbound_timeout));
                // Out of threads: this client gets a closed socket (and reads from
                // disk); everyone already connected keeps being served.
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot start a connection thread");
                }
            }
            // A peer that vanished between connect and accept, or fd exhaustion: log
            // and keep serving the others.
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn handle(mut conn: impl Connection, daemon: &Daemon, unbound_timeout: Duration) {
    daemon.connection_opened();
    let PeerIdentity::Unix { pid, .. } = conn.peer();
    let mut session = Session {
        domain: None,
        handle: None,
        pid,
    };
    if let Err(e) = conn.set_timeouts(Some(unbound_timeout), Some(WRITE_TIMEOUT)) {
        tracing::warn!(pid, error = %e, "cannot set socket timeouts");
    }
    let mut idle_allowed = false;
    let mut inp = Vec::new();
    let mut out = Vec::new();
    loop {
        let (id, reply, close) = match wire::read_message(&mut conn, &mut inp) {
            Err(ReadError::Closed) => break,
            Err(ReadError::Io(e)) => {
                tracing::debug!(pid, error = %e, "connection failed");
                break;
            }
            Err(ReadError::Bad(e)) => {
                let code = match e {
                    wire::DecodeError::TooLarge(_) => ErrorCode::TooLarge,
                    _ => ErrorCode::Malformed,
                };
                (0, refusal(code, e.to_string()), true)
            }
            Ok(()) => match wire::decode_request(&inp) {
                Err(e) => (0, refusal(ErrorCode::Malformed, e.to_string()), true),
                Ok(msg) => {
                    let (reply, close) = session.answer(daemon, msg.request);
                    if session.domain.is_some() && !idle_allowed {
                        idle_allowed = conn.set_timeouts(None, Some(WRITE_TIMEOUT)).is_ok();
                    }
                    (msg.id, reply, close)
                }
            },
        };
        if close {
            tracing::info!(pid, ?reply, "closing connection");
        }
        let msg = ReplyMsg {
            id,
            generation: daemon.generation,
            reply,
        };
        wire::encode_reply(&msg, &mut out);
        if wire::write_message(&mut conn, &out).is_err() || close {
            break;
        }
    }
    conn.shutdown();
    if let Some(d) = session.domain {
        daemon.domain_detached(d);
    }
    daemon.connection_closed();
}

fn refusal(code: ErrorCode, message: String) -> Reply {
    Reply::Error(RemoteError { code, message })
}

struct Session {
    domain: Option<DomainId>,
    /// Cached for lookups (no domain-map lock); refreshed when it goes stale.
    handle: Option<DomainHandle>,
    pid: u32,
}

impl Session {
    /// The reply, and whether to close the connection after sending it.
    fn answer(&mut self, daemon: &Daemon, request: Request) -> (Reply, bool) {
        let domain = match self.domain {
            Some(d) => d,
            None => match daemon.domain_of_pid(self.pid) {
                Some(d) => {
                    daemon.domain_attached(d);
                    self.domain = Some(d);
                    d
                }
                None => {
                    let msg = format!("process {} is not bound to a domain", self.pid);
                    return (refusal(ErrorCode::NotBound, msg), true);
                }
            },
        };
        let t = &daemon.table;
        let reply = match request {
            Request::Hello => t
                .family_of(domain)
                .map(|family| Reply::Hello { domain, family })
                .ok_or(Error::UnknownDomain(domain)),
            Request::Register { family, items } => {
                let regs: Vec<Registration> = items
                    .iter()
                    .map(|r| Registration {
                        key: PageKey::new(family, r.space_id, r.page_no),
                        frame: r.frame,
                        lsn: r.lsn,
                        valid_from: r.valid_from,
                        page_size: r.page_size,
                    })
                    .collect();
                t.register_many(domain, &regs)
                    .map(|n| Reply::Registered { count: n as u32 })
            }
            Request::Lookup {
                family,
                max_lsn,
                pages,
            } => {
                let keys: Vec<PageKey> = pages
                    .iter()
                    .map(|(s, p)| PageKey::new(family, *s, *p))
                    .collect();
                self.lookup(t, domain, &keys, max_lsn).map(Reply::Found)
            }
            Request::Invalidate { frames } => {
                let mut count = 0;
                frames
                    .iter()
                    .try_for_each(|f| t.invalidate(domain, *f).map(|hit| count += hit as u32))
                    .map(|_| Reply::Invalidated { count })
            }
        };
        match reply {
            Ok(r) => (r, false),
            Err(e) => (refusal(code_of(&e), e.to_string()), false),
        }
    }
}

impl Session {
    fn lookup(
        &mut self,
        t: &PageTable,
        domain: DomainId,
        keys: &[PageKey],
        max_lsn: u64,
    ) -> Result<Vec<Option<pagetable::Entry>>, Error> {
        if let Some(h) = &self.handle {
            match h.lookup_many(keys, max_lsn) {
                // The domain left its family; it may have been added again.
                Err(Error::UnknownDomain(_)) => self.handle = None,
                other => return other,
            }
        }
        let h = self.handle.insert(t.handle(domain)?);
        h.lookup_many(keys, max_lsn)
    }
}

fn code_of(e: &Error) -> ErrorCode {
    match e {
        Error::UnknownFamily(_) => ErrorCode::UnknownFamily,
        Error::UnknownDomain(_) => ErrorCode::UnknownDomain,
        Error::NotInFamily { .. } => ErrorCode::NotInFamily,
        Error::QuotaExceeded { .. } | Error::TableFull { .. } | Error::PageCrowded { .. } => {
            ErrorCode::QuotaExceeded
        }
        Error::InvalidPageSize(_) | Error::FrameOutOfRange(_) => ErrorCode::InvalidArgument,
        _ => ErrorCode::Internal,
    }
}
