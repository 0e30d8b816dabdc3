//! The database of a domU, as the orchestration uses it (`Endpoint`), reached through
//! the domU's guest side (`dbfork-guestd`) over its channel: dom0 never holds the
//! guest's SQL passwords nor needs its network. The channel is the domain's identity:
//! one per domU (on Xen, the Unix socket dbfork-vchan-relay makes for that domU's
//! vchan); nothing a guest sends can claim to be another domain.

use crate::error::{Error, Result};
use crate::{CommitHold, Endpoint, WarmSet};
use dbinstance::{FlushReport, GtidPos, ReplicationSource, ReplicationStatus};
use guest_channel::{unexpected, Client, Reply, Request, Source};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long dom0 waits on a guest: for the first answer of a new connection (and how
/// many connections it tries), for one reply (a flush or a commit hold can take a
/// while; a guest that stops answering must not hang a clone forever), and for one
/// reply to a question `dbfork status` asks.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    pub hello: Duration,
    pub connections: u32,
    pub reply: Duration,
    pub status_reply: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Patience {
            // The guest's side answers a hello at once; 20 s is a TCG guest under load.
            // As many connections as make a reply's wait: the channel carries one
            // connection at a time, and another dbfork command's may hold it that long.
            hello: Duration::from_secs(20),
            connections: 45,
            reply: Duration::from_secs(900),
            status_reply: Duration::from_secs(120),
        }
    }
}

type Channel = Arc<Mutex<Client<UnixStream>>>;

#[derive(Clone)]
pub struct GuestEndpoint {
    name: String,
    channel: Channel,
    patience: Patience,
}

impl GuestEndpoint {
    /// Connects to `name`'s guest side on its channel's socket and checks it speaks
    /// this version of the protocol.
    pub fn connect(name: &str, socket: &Path) -> Result<GuestEndpoint> {
        GuestEndpoint::connect_with(name, socket, Patience::default())
    }

    /// `connect`, waiting on the guest as `patience` says.
    ///
    /// A first request left unanswered is asked again on a new connection: a
    /// guest's end of a vchan that is Xen's vchan-socket-proxy (server mode, what
    /// dbfork's guests ran before dbfork-vchan-relay) can miss the
    /// request that comes with a new connection. Its wait for the connection consumes
    /// the event that announced both when dom0's first write follows the connect
    /// before the guest runs, and it then waits for an event that never comes, the
    /// request in its ring, until dom0 closes (seen in the lab: a `dbfork status`
    /// waiting out the whole reply timeout). Closing wakes it; the next connection
    /// goes through.
    pub fn connect_with(name: &str, socket: &Path, patience: Patience) -> Result<GuestEndpoint> {
        let guest = |source| Error::Guest {
            name: name.to_string(),
            source,
        };
        let io = |e| guest(guest_channel::Error::Io(e));
        let mut attempt = 1;
        let client = loop {
            let stream = UnixStream::connect(socket).map_err(io)?;
            stream.set_read_timeout(Some(patience.hello)).map_err(io)?;
            match Client::new(stream) {
                Ok(c) => break c,
                Err(e) if hello_missed(&e) => {
                    if attempt >= patience.connections {
                        return Err(guest(guest_channel::Error::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "no answer to a hello on {} connections ({} s each, or closed \
                                 unanswered): another dbfork command may hold its channel \
                                 (one connection at a time), or dbfork-guestd or its channel \
                                 relay does not run in the domU (see its console)",
                                patience.connections,
                                patience.hello.as_secs_f32()
                            ),
                        ))));
                    }
                    let said = format!(
                        "{name}'s guest side did not answer a new connection within {:.1} s \
                         or closed it ({e}; attempt {attempt} of {}): connecting again",
                        patience.hello.as_secs_f32(),
                        patience.connections
                    );
                    if attempt == 1 {
                        tracing::warn!("{said}");
                    } else {
                        tracing::debug!("{said}");
                    }
                    attempt += 1;
                }
                Err(e) => return Err(guest(e)),
            }
        };
        client
            .stream()
            .set_read_timeout(Some(patience.reply))
            .map_err(io)?;
        Ok(GuestEndpoint {
            name: name.to_string(),
            channel: Arc::new(Mutex::new(client)),
            patience,
        })
    }

    /// Whether a request failed with the channel out of step: a new connection is
    /// needed.
    pub fn is_broken(&self) -> bool {
        lock(&self.channel).is_broken()
    }

    fn call(&self, req: &Request) -> Result<Reply> {
        call(&self.channel, &self.name, req)
    }

    /// A question `dbfork status` asks: answered within `patience.status_reply`.
    fn call_for_status(&self, req: &Request) -> Result<Reply> {
        let mut c = lock(&self.channel);
        let guest = |source| Error::Guest {
            name: self.name.clone(),
            source,
        };
        let io = |e| guest(guest_channel::Error::Io(e));
        c.stream()
            .set_read_timeout(Some(self.patience.status_reply))
            .map_err(io)?;
        let reply = c.call(req);
        c.stream()
            .set_read_timeout(Some(self.patience.reply))
            .map_err(io)?;
        reply.map_err(guest)
    }
}

/// A hello left unanswered on its connection: it timed out, or the connection closed
/// without an answer (dom0's relay closes a connection when the domU offers no ring in
/// time, the domU's relay when its guest side does not accept).
fn hello_missed(e: &guest_channel::Error) -> bool {
    match e {
        guest_channel::Error::Io(e) => {
            timed_out(e)
                || matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                )
        }
        guest_channel::Error::Closed => true,
        _ => false,
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn lock(channel: &Channel) -> std::sync::MutexGuard<'_, Client<UnixStream>> {
    channel.lock().unwrap_or_else(|p| p.into_inner())
}

fn call(channel: &Channel, name: &str, req: &Request) -> Result<Reply> {
    lock(channel).call(req).map_err(|source| Error::Guest {
        name: name.to_string(),
        source,
    })
}

impl GuestEndpoint {
    /// Freezes the file system of the guest's datadir until the guard drops (around a
    /// snapshot of its disk at dom0); the guest also thaws it if the channel closes.
    pub fn freeze_fs(&self) -> Result<GuestFreeze> {
        match self.call(&Request::FreezeFs)? {
            Reply::Frozen { mountpoint } => Ok(GuestFreeze {
                name: self.name.clone(),
                channel: self.channel.clone(),
                mountpoint,
            }),
            other => Err(self.unexpected("freeze_fs", other)),
        }
    }

    /// Tells the source's agent a snapshot at `lsn` is complete.
    pub fn publish_clone_lsn(&self, lsn: u64) -> Result<()> {
        self.expect_ok(&Request::PublishCloneLsn { lsn }, "publish_clone_lsn")
    }

    /// Tells the source's agent which replica domains to grant to.
    pub fn set_grantees(&self, domids: Vec<u32>) -> Result<()> {
        self.expect_ok(&Request::SetGrantees { domids }, "set_grantees")
    }

    /// The agent's live counters, if its server runs with one.
    pub fn agent_counters(&self) -> Result<Option<serde_json::Value>> {
        match self.call_for_status(&Request::AgentCounters)? {
            Reply::Counters { counters } => Ok(counters),
            other => Err(self.unexpected("agent_counters", other)),
        }
    }

    /// Tells a replica its source is going: it copies what it maps from it. How many
    /// frames it copied.
    pub fn release_source(&self) -> Result<u64> {
        match self.call(&Request::ReleaseSource)? {
            Reply::SourceReleased { frames } => Ok(frames),
            other => Err(self.unexpected("release_source", other)),
        }
    }

    /// What the guest's server and the guest use of memory.
    pub fn memory_use(&self) -> Result<crate::MemoryUse> {
        match self.call_for_status(&Request::MemoryUse)? {
            Reply::Memory { server, guest } => Ok(crate::MemoryUse {
                server,
                domain: guest,
            }),
            other => Err(self.unexpected("memory_use", other)),
        }
    }

    fn expect_ok(&self, req: &Request, asked: &'static str) -> Result<()> {
        match self.call(req)? {
            Reply::Ok => Ok(()),
            other => Err(self.unexpected(asked, other)),
        }
    }

    fn unexpected(&self, asked: &'static str, got: Reply) -> Error {
        Error::Guest {
            name: self.name.clone(),
            source: unexpected(asked, got),
        }
    }
}

impl Endpoint for GuestEndpoint {
    fn name(&self) -> &str {
        &self.name
    }
    fn make_replication_account(&self, _user: &str) -> Result<()> {
        // A domU's datadir is always dbfork's own (its guest made the account).
        Err(Error::NotForSubstrate {
            what: "a replication account on a server dbfork did not make".into(),
            substrate: crate::Kind::Xen,
            fix: "only local sources are taken over",
        })
    }
    fn require_binlog(&self) -> Result<()> {
        self.expect_ok(&Request::RequireBinlog, "require_binlog")
    }
    fn flush_dirty_pages(&self, target: u64, timeout: Duration) -> Result<FlushReport> {
        match self.call(&Request::FlushDirtyPages {
            target,
            timeout_ms: timeout.as_millis() as u64,
        })? {
            Reply::Flushed { report } => Ok(report),
            other => Err(self.unexpected("flush_dirty_pages", other)),
        }
    }
    fn warm_set(&self) -> Result<WarmSet> {
        match self.call(&Request::WarmSet)? {
            Reply::WarmSet { hot, spaces } => Ok(WarmSet {
                hot,
                spaces: spaces.into_iter().map(|t| (t.space_id, t)).collect(),
            }),
            other => Err(self.unexpected("warm_set", other)),
        }
    }
    fn rotate_binlog(&self) -> Result<()> {
        self.expect_ok(&Request::RotateBinlog, "rotate_binlog")
    }
    fn hold_commits(&self) -> Result<Box<dyn CommitHold>> {
        match self.call(&Request::HoldCommits)? {
            Reply::Held { gtid, lsn } => {
                let gtid: GtidPos = gtid.parse().map_err(|e: dbinstance::Error| {
                    // Whatever happens, the guest lets go: released on the way out.
                    let _ = self.call(&Request::ReleaseCommits);
                    Error::from(e)
                })?;
                Ok(Box::new(GuestHold {
                    name: self.name.clone(),
                    channel: self.channel.clone(),
                    gtid,
                    lsn,
                    released: false,
                }))
            }
            other => Err(self.unexpected("hold_commits", other)),
        }
    }
    fn replication_source(&self) -> Result<ReplicationSource> {
        match self.call(&Request::ReplicationSource)? {
            Reply::Source { source } => Ok(ReplicationSource {
                host: source.host,
                port: source.port,
                user: source.user,
                password: source.password,
            }),
            other => Err(self.unexpected("replication_source", other)),
        }
    }
    fn replicate_from(&self, source: &ReplicationSource, after: &GtidPos) -> Result<()> {
        self.expect_ok(
            &Request::ReplicateFrom {
                source: Source {
                    host: source.host.clone(),
                    port: source.port,
                    user: source.user.clone(),
                    password: source.password.clone(),
                },
                after: after.to_string(),
            },
            "replicate_from",
        )
    }
    fn resume_replication(&self, host: &str, port: u16, may_reset_binlog: bool) -> Result<()> {
        self.expect_ok(
            &Request::ResumeReplication {
                host: host.to_string(),
                port,
                may_reset_binlog,
            },
            "resume_replication",
        )
    }
    fn redo_flush_at_commit(&self) -> Result<u32> {
        match self.call(&Request::RedoFlushAtCommit)? {
            Reply::Durability { value } => Ok(value),
            other => Err(self.unexpected("redo_flush_at_commit", other)),
        }
    }
    fn replication_status(&self) -> Result<Option<ReplicationStatus>> {
        match self.call_for_status(&Request::ReplicationStatus)? {
            Reply::Replication { status } => status
                .map(ReplicationStatus::try_from)
                .transpose()
                .map_err(|source| Error::Guest {
                    name: self.name.clone(),
                    source,
                }),
            other => Err(self.unexpected("replication_status", other)),
        }
    }
}

/// The guest's datadir file system, frozen until dropped.
pub struct GuestFreeze {
    name: String,
    channel: Channel,
    /// Where the guest froze it (for messages).
    pub mountpoint: String,
}

impl Drop for GuestFreeze {
    fn drop(&mut self) {
        if let Err(e) = call(&self.channel, &self.name, &Request::ThawFs) {
            tracing::warn!(
                "thawing {}'s {}: {}",
                self.name,
                self.mountpoint,
                crate::error::chain(&e)
            );
        }
    }
}

/// Commits held in the guest; released by `release`, or when dropped (the guest also
/// releases them when the channel closes).
struct GuestHold {
    name: String,
    channel: Channel,
    gtid: GtidPos,
    lsn: u64,
    released: bool,
}

impl CommitHold for GuestHold {
    fn gtid(&self) -> &GtidPos {
        &self.gtid
    }
    fn lsn(&self) -> u64 {
        self.lsn
    }
    fn release(mut self: Box<Self>) -> Result<u64> {
        self.released = true;
        match call(&self.channel, &self.name, &Request::ReleaseCommits)? {
            Reply::Released { hold_ms } => Ok(hold_ms),
            other => Err(Error::Guest {
                name: self.name.clone(),
                source: unexpected("release_commits", other),
            }),
        }
    }
}

impl Drop for GuestHold {
    fn drop(&mut self) {
        if !self.released {
            if let Err(e) = call(&self.channel, &self.name, &Request::ReleaseCommits) {
                tracing::warn!(
                    "releasing {}'s commits: {}",
                    self.name,
                    crate::error::chain(&e)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The channel's patience against a guest end over a real socket that answers as
    //! each test needs (the guest side's answers themselves are tested against real
    //! servers in guestd's tests).
    use super::*;
    use guest_channel::{read_line, write_message, VERSION};
    use std::io::BufReader;
    use std::os::unix::net::UnixListener;
    use std::sync::mpsc;

    /// Short enough for the tests that wait a timeout out, long enough that a guest
    /// end's thread on a loaded machine (CI runs servers beside these) answers in it.
    fn quick() -> Patience {
        Patience {
            hello: Duration::from_secs(1),
            connections: 3,
            reply: Duration::from_secs(30),
            status_reply: Duration::from_secs(1),
        }
    }

    /// Reads one request; `None` once dom0 closed.
    fn request(r: &mut BufReader<UnixStream>) -> Option<Request> {
        let line = read_line(r, guest_channel::MAX_REQUEST).unwrap()?;
        Some(Request::decode(&line).unwrap())
    }

    /// What the guest end saw of one connection that never answered: its request,
    /// then dom0 closing it.
    fn swallow(conn: UnixStream) -> Request {
        let mut r = BufReader::new(conn);
        let first = request(&mut r).expect("a request");
        while request(&mut r).is_some() {}
        first
    }

    fn answer(conn: &mut UnixStream, reply: &Reply) {
        write_message(conn, reply).unwrap();
    }

    fn memory() -> Reply {
        Reply::Memory {
            server: None,
            guest: None,
        }
    }

    /// A guest end that answers every request on `conn` until dom0 closes it.
    fn answer_all(conn: UnixStream) {
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut w = conn;
        while let Some(req) = request(&mut r) {
            match req {
                Request::Hello { .. } => answer(&mut w, &Reply::Hello { version: VERSION }),
                _ => answer(&mut w, &memory()),
            }
        }
    }

    #[test]
    fn a_first_request_the_guests_end_missed_is_asked_again_on_a_new_connection() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("guest.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (seen, saw) = mpsc::channel();
        let guest = std::thread::spawn(move || {
            let mut conns = listener.incoming();
            // The first connection's request is never read (what Xen's vchan-socket-proxy did).
            seen.send(swallow(conns.next().unwrap().unwrap())).unwrap();
            answer_all(conns.next().unwrap().unwrap());
        });
        let ep = GuestEndpoint::connect_with("d1", &socket, quick()).unwrap();
        assert_eq!(
            saw.try_recv().unwrap(),
            Request::Hello { version: VERSION },
            "the first connection was closed before the second was answered"
        );
        let m = ep.memory_use().unwrap();
        assert!(m.server.is_none() && m.domain.is_none());
        drop(ep);
        guest.join().unwrap();
    }

    /// dom0's relay closes a connection whose domU offered no ring in time: the hello
    /// is asked again on a new connection, as for one left unanswered.
    #[test]
    fn a_connection_closed_before_its_hello_is_answered_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("guest.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let guest = std::thread::spawn(move || {
            let mut conns = listener.incoming();
            drop(conns.next().unwrap().unwrap());
            answer_all(conns.next().unwrap().unwrap());
        });
        let ep = GuestEndpoint::connect_with("d4", &socket, quick()).unwrap();
        assert!(ep.memory_use().unwrap().server.is_none());
        drop(ep);
        guest.join().unwrap();
    }

    #[test]
    fn a_guest_that_never_answers_is_given_up_after_its_connections_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("guest.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let guest = std::thread::spawn(move || {
            let mut hellos = 0;
            for _ in 0..3 {
                if let Request::Hello { .. } = swallow(listener.accept().unwrap().0) {
                    hellos += 1;
                }
            }
            hellos
        });
        let err = match GuestEndpoint::connect_with("d2", &socket, quick()) {
            Ok(_) => panic!("a guest that never answers connected"),
            Err(e) => crate::error::chain(&e),
        };
        assert!(
            err.contains("d2") && err.contains("no answer to a hello on 3 connections"),
            "{err}"
        );
        assert_eq!(guest.join().unwrap(), 3);
    }

    #[test]
    fn a_reply_that_comes_after_its_timeout_is_never_taken_for_a_later_request() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("guest.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (late, go) = mpsc::channel::<()>();
        let guest = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut w = conn;
            assert!(matches!(request(&mut r), Some(Request::Hello { .. })));
            answer(&mut w, &Reply::Hello { version: VERSION });
            assert_eq!(request(&mut r), Some(Request::AgentCounters));
            // Answered only once dom0 gave up on it, and wrongly for what comes next.
            // (dom0 may have closed by then.)
            go.recv().unwrap();
            let _ = write_message(&mut w, &Reply::Ok);
            // dom0 closing with that reply unread reads as a reset rather than an end.
            match read_line(&mut r, guest_channel::MAX_REQUEST) {
                Ok(None) => {}
                Err(guest_channel::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                other => panic!("dom0 sent more after giving up: {other:?}"),
            }
        });
        let ep = GuestEndpoint::connect_with("d3", &socket, quick()).unwrap();
        let err = crate::error::chain(&ep.agent_counters().unwrap_err());
        assert!(err.contains("d3"), "{err}");
        assert!(ep.is_broken());
        late.send(()).unwrap();
        let err = crate::error::chain(&ep.memory_use().unwrap_err());
        assert!(err.contains("failed on an earlier request"), "{err}");
        drop(ep);
        guest.join().unwrap();
    }
}
