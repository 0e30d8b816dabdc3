//! The data plane: one thread per client connection speaking `pagetable::wire`.
//!
//! A connection acts as the domain its peer is bound to (a local process by pid, a
//! Xen guest by domid; `Daemon::domain_of_peer`), resolved at its first message; an
//! unbound peer gets `NotBound` and is closed. Undecodable, truncated or
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
    let peer = conn.peer();
    let mut session = Session::new(peer);
    if let Err(e) = conn.set_timeouts(Some(unbound_timeout), Some(WRITE_TIMEOUT)) {
        tracing::warn!(%peer, error = %e, "cannot set socket timeouts");
    }
    let mut idle_allowed = false;
    let mut inp = Vec::new();
    let mut out = Vec::new();
    loop {
        let (id, reply, close) = match wire::read_message(&mut conn, &mut inp) {
            Err(ReadError::Closed) => break,
            Err(ReadError::Io(e)) => {
                tracing::debug!(%peer, error = %e, "connection failed");
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
            tracing::info!(%peer, ?reply, "closing connection");
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
    /// The Xen domain the connection comes from (`Daemon::xen_domid_of_peer`), fixed
    /// with `domain` at the first message.
    xen: Option<u16>,
    /// Cached for lookups (no domain-map lock); refreshed when it goes stale.
    handle: Option<DomainHandle>,
    peer: PeerIdentity,
}

impl Session {
    fn new(peer: PeerIdentity) -> Session {
        Session {
            domain: None,
            xen: None,
            handle: None,
            peer,
        }
    }

    /// The reply, and whether to close the connection after sending it.
    fn answer(&mut self, daemon: &Daemon, request: Request) -> (Reply, bool) {
        let domain = match self.domain {
            Some(d) => d,
            None => match daemon.domain_of_peer(self.peer) {
                Some(d) => {
                    daemon.domain_attached(d);
                    self.domain = Some(d);
                    self.xen = daemon.xen_domid_of_peer(self.peer);
                    d
                }
                None => {
                    let msg = format!("{} is not bound to a domain", self.peer);
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
                t.register_many_as(domain, self.xen, &regs)
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
        let h = self.handle.insert(t.handle_as(domain, self.xen)?);
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
        Error::InvalidPageSize(_) | Error::FrameOutOfRange(_) | Error::ForeignGrant { .. } => {
            ErrorCode::InvalidArgument
        }
        _ => ErrorCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripted_conn::ScriptedConn;
    use pagetable::admin::{AdminReply, AdminRequest};
    use pagetable::wire::{RequestMsg, WireRegistration};
    use pagetable::{FamilyId, Frame, TableConfig};

    fn admin(d: &Daemon, req: AdminRequest) {
        assert_eq!(d.admin(&req), AdminReply::Ok, "{req:?}");
    }

    /// Family 1 = domains 10 and 11, family 2 = domain 20; Xen guests 5, 6, 7 are
    /// bound to them by domid.
    fn two_families_of_xen_guests() -> Daemon {
        let d = Daemon::new(TableConfig::default(), None).unwrap();
        for (f, doms) in [(1, &[10, 11][..]), (2, &[20][..])] {
            admin(
                &d,
                AdminRequest::FamilyCreate {
                    family: FamilyId(f),
                },
            );
            for &dom in doms {
                admin(
                    &d,
                    AdminRequest::FamilyAdd {
                        family: FamilyId(f),
                        domain: DomainId(dom),
                    },
                );
            }
        }
        for (domid, dom) in [(5, 10), (6, 11), (7, 20)] {
            admin(
                &d,
                AdminRequest::BindDomid {
                    domid,
                    domain: DomainId(dom),
                },
            );
        }
        d
    }

    fn xen(domid: u32) -> PeerIdentity {
        PeerIdentity::Xen { domid }
    }

    fn lookup(family: u32) -> Request {
        Request::Lookup {
            family: FamilyId(family),
            max_lsn: 1000,
            pages: vec![(3, 4)],
        }
    }

    fn refused_with(reply: &(Reply, bool), code: ErrorCode) -> bool {
        matches!(reply, (Reply::Error(e), _) if e.code == code)
    }

    #[test]
    fn a_xen_guest_acts_as_the_domain_its_domid_is_bound_to() {
        let d = two_families_of_xen_guests();
        let mut source = Session::new(xen(5));
        assert_eq!(
            source.answer(&d, Request::Hello),
            (
                Reply::Hello {
                    domain: DomainId(10),
                    family: FamilyId(1)
                },
                false
            )
        );
        let frame = Frame::XenGrant {
            issuer: 5,
            grantee: 6,
            gref: 9,
        };
        let reg = WireRegistration {
            space_id: 3,
            page_no: 4,
            frame,
            lsn: 100,
            valid_from: 1000,
            page_size: 16384,
        };
        let registered = source.answer(
            &d,
            Request::Register {
                family: FamilyId(1),
                items: vec![reg],
            },
        );
        assert_eq!(registered, (Reply::Registered { count: 1 }, false));

        // A sibling in the same family finds the frame, owned by domain 10.
        let mut sibling = Session::new(xen(6));
        match sibling.answer(&d, lookup(1)) {
            (Reply::Found(found), false) => {
                let e = found[0].expect("a hit");
                assert_eq!((e.owner, e.frame), (DomainId(10), frame));
            }
            other => panic!("{other:?}"),
        }
        // Families are walls: another family's guest sees nothing in its own family
        // and is refused when it names family 1.
        let mut stranger = Session::new(xen(7));
        assert_eq!(
            stranger.answer(&d, lookup(2)),
            (Reply::Found(vec![None]), false)
        );
        assert!(refused_with(
            &stranger.answer(&d, lookup(1)),
            ErrorCode::NotInFamily
        ));
    }

    fn register_grant(s: &mut Session, d: &Daemon, issuer: u16, grantee: u16) -> (Reply, bool) {
        let reg = WireRegistration {
            space_id: 3,
            page_no: 4,
            frame: Frame::XenGrant {
                issuer,
                grantee,
                gref: 40 + u32::from(grantee),
            },
            lsn: 100,
            valid_from: 1000,
            page_size: 16384,
        };
        s.answer(
            d,
            Request::Register {
                family: FamilyId(1),
                items: vec![reg],
            },
        )
    }

    fn found_frame(s: &mut Session, d: &Daemon) -> Option<Frame> {
        match s.answer(d, lookup(1)) {
            (Reply::Found(found), false) => found[0].map(|e| e.frame),
            other => panic!("{other:?}"),
        }
    }

    /// A replica may map only grants the source issued to its own domid, and a
    /// domain registers only grants it issued itself (its domid from the connection).
    #[test]
    fn a_grant_serves_only_its_grantee_and_only_its_issuer_registers_it() {
        let d = two_families_of_xen_guests();
        // A third member of family 1: domain 12, Xen domid 8.
        for req in [
            AdminRequest::FamilyAdd {
                family: FamilyId(1),
                domain: DomainId(12),
            },
            AdminRequest::BindDomid {
                domid: 8,
                domain: DomainId(12),
            },
        ] {
            admin(&d, req);
        }
        let mut source = Session::new(xen(5));
        let (mut r6, mut r8) = (Session::new(xen(6)), Session::new(xen(8)));
        assert_eq!(
            register_grant(&mut source, &d, 5, 6),
            (Reply::Registered { count: 1 }, false)
        );
        assert_eq!(
            found_frame(&mut r6, &d),
            Some(Frame::XenGrant {
                issuer: 5,
                grantee: 6,
                gref: 46
            })
        );
        assert_eq!(found_frame(&mut r8, &d), None, "granted to 6, not to 8");
        // Once the source grants the page to 8 as well, each gets its own grant.
        register_grant(&mut source, &d, 5, 8);
        assert!(matches!(
            found_frame(&mut r8, &d),
            Some(Frame::XenGrant { grantee: 8, .. })
        ));
        assert!(matches!(
            found_frame(&mut r6, &d),
            Some(Frame::XenGrant { grantee: 6, .. })
        ));
        // A grant another domain issued cannot be registered: not by a guest naming
        // someone else as issuer, nor by a local process.
        assert!(refused_with(
            &register_grant(&mut r6, &d, 5, 6),
            ErrorCode::InvalidArgument
        ));
        let local = PeerIdentity::Unix {
            pid: std::process::id(),
            uid: 0,
            gid: 0,
        };
        admin(
            &d,
            AdminRequest::BindPid {
                pid: std::process::id(),
                domain: DomainId(11),
            },
        );
        assert!(refused_with(
            &register_grant(&mut Session::new(local), &d, 5, 6),
            ErrorCode::InvalidArgument
        ));
        assert_eq!(
            found_frame(&mut Session::new(local), &d),
            None,
            "no grant for it"
        );

        // A dom0 process bound as the carrier of domain 6's channel (its vchan proxy)
        // speaks for domain 6: it is served 6's grants and registers 6's own.
        admin(
            &d,
            AdminRequest::BindChannel {
                pid: std::process::id(),
                domid: 6,
                domain: DomainId(11),
            },
        );
        let mut proxy = Session::new(local);
        assert!(matches!(
            found_frame(&mut proxy, &d),
            Some(Frame::XenGrant { grantee: 6, .. })
        ));
        assert_eq!(
            register_grant(&mut proxy, &d, 6, 8),
            (Reply::Registered { count: 1 }, false)
        );
        assert!(refused_with(
            &register_grant(&mut proxy, &d, 5, 8),
            ErrorCode::InvalidArgument
        ));
    }

    #[test]
    fn an_unbound_peer_gets_nothing() {
        let d = two_families_of_xen_guests();
        // An unbound domid, and a local process whose pid equals a bound domid: pids
        // and domids are different peers.
        for peer in [
            xen(8),
            PeerIdentity::Unix {
                pid: 5,
                uid: 0,
                gid: 0,
            },
        ] {
            let reply = Session::new(peer).answer(&d, lookup(1));
            assert!(
                refused_with(&reply, ErrorCode::NotBound),
                "{peer}: {reply:?}"
            );
            assert!(reply.1, "the connection is closed");
        }
        // Unbinding, removing the domain or destroying the family ends a binding.
        admin(&d, AdminRequest::UnbindDomid { domid: 5 });
        assert!(d.admin(&AdminRequest::UnbindDomid { domid: 5 }) != AdminReply::Ok);
        d.admin(&AdminRequest::RemoveDomain {
            domain: DomainId(11),
        });
        d.admin(&AdminRequest::FamilyDestroy {
            family: FamilyId(2),
        });
        for domid in [5, 6, 7] {
            assert_eq!(d.domain_of_peer(xen(domid)), None, "domid {domid}");
            let reply = Session::new(xen(domid)).answer(&d, Request::Hello);
            assert!(refused_with(&reply, ErrorCode::NotBound), "{reply:?}");
        }
    }

    /// The whole connection loop over a scripted connection: a bound guest is
    /// answered, an unbound one is told why and closed.
    #[test]
    fn connections_from_xen_peers_are_served_by_the_same_loop() {
        let d = two_families_of_xen_guests();
        let mut input = Vec::new();
        for (id, request) in [(1, Request::Hello), (2, lookup(1))] {
            let mut b = Vec::new();
            wire::encode_request(&RequestMsg { id, request }, &mut b);
            wire::write_message(&mut input, &b).unwrap();
        }
        let answers = |peer| {
            let conn = ScriptedConn::new(peer, input.clone());
            let out = conn.output();
            handle(conn, &d, Duration::from_secs(1));
            let out = out.lock().clone();
            let mut r = &out[..];
            let mut replies = Vec::new();
            let mut buf = Vec::new();
            while wire::read_message(&mut r, &mut buf).is_ok() {
                replies.push(wire::decode_reply(&buf).unwrap());
            }
            replies
        };
        let bound = answers(xen(6));
        assert_eq!(bound.len(), 2);
        assert_eq!(
            bound[0].reply,
            Reply::Hello {
                domain: DomainId(11),
                family: FamilyId(1)
            }
        );
        assert_eq!(
            (bound[1].id, &bound[1].reply),
            (2, &Reply::Found(vec![None]))
        );
        let unbound = answers(xen(9));
        assert_eq!(unbound.len(), 1, "closed after the refusal");
        match &unbound[0].reply {
            Reply::Error(e) => {
                assert_eq!(e.code, ErrorCode::NotBound);
                assert_eq!(e.message, "xen domain 9 is not bound to a domain");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d.connections(), 0);
    }
}
