//! The blocking client the guest agent uses from inside mariadbd: no runtime, no
//! threads, one socket. Every failure is a value; every socket operation has a
//! timeout, so a hung daemon costs the database one bounded wait and a disk read
//! (DESIGN.md invariant 6), never a hang.
//!
//! After any I/O or protocol error the connection is dropped (a half-read reply would
//! desynchronise the stream); calls then fail with `Error::NotConnected` until the
//! caller runs `reconnect`, which tells whether the daemon restarted (a new
//! generation), in which case the caller re-registers its frames.
//!
//! The client is generic over how it reaches the daemon (`connector::Connector`);
//! `Client::connect(path)` is the Unix socket of the `local` substrate.

use std::path::Path;
use std::time::Duration;

use crate::connector::{Connector, UnixConnector};
use crate::error::{Error, Result};
use crate::ids::{DomainId, Entry, FamilyId, Frame};
use crate::wire::{
    self, ErrorCode, ReadError, Reply, ReplyMsg, Request, RequestMsg, WireRegistration,
};

/// Default bound on each socket read or write.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

pub struct Client<C: Connector = UnixConnector> {
    connector: C,
    stream: Option<C::Stream>,
    generation: u64,
    domain: DomainId,
    family: FamilyId,
    next_id: u32,
    out: Vec<u8>,
    inp: Vec<u8>,
}

impl Client<UnixConnector> {
    /// Connects to the daemon's Unix socket and introduces itself; fails if the daemon
    /// does not know this process (admin `bind_pid`) or is not running.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with_timeout(path, DEFAULT_TIMEOUT)
    }

    /// `connect` with `timeout` on each socket read and write instead of the default.
    pub fn connect_with_timeout(path: impl AsRef<Path>, timeout: Duration) -> Result<Self> {
        Client::with_connector(UnixConnector::new(path).with_timeout(timeout))
    }
}

impl<C: Connector> Client<C> {
    /// Connects through `connector` and introduces itself. Every reconnect opens a new
    /// stream through the same connector, so its bounds (timeouts) hold for all of them.
    pub fn with_connector(connector: C) -> Result<Self> {
        let mut c = Client {
            connector,
            stream: None,
            generation: 0,
            domain: DomainId(0),
            family: FamilyId(0),
            next_id: 1,
            out: Vec::with_capacity(512),
            inp: Vec::with_capacity(512),
        };
        c.hello()?;
        Ok(c)
    }

    fn hello(&mut self) -> Result<()> {
        self.stream = Some(self.connector.connect()?);
        let reply = self.call_msg(Request::Hello)?;
        match reply.reply {
            Reply::Hello { domain, family } => {
                self.domain = domain;
                self.family = family;
                self.generation = reply.generation;
                Ok(())
            }
            other => Err(self.unexpected(&other)),
        }
    }

    /// Drops the connection and connects again. Returns true if the daemon's
    /// generation changed (it restarted and lost every registration).
    pub fn reconnect(&mut self) -> Result<bool> {
        self.stream = None;
        let old = self.generation;
        self.hello()?;
        Ok(self.generation != old)
    }

    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    /// The daemon generation seen in the last reply.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The domain the daemon bound this process to.
    pub fn domain(&self) -> DomainId {
        self.domain
    }

    pub fn family(&self) -> FamilyId {
        self.family
    }

    /// Where this client connects, for logs.
    pub fn describe(&self) -> String {
        self.connector.describe()
    }

    /// Registers frames of this process under keys of its family, in batches of at
    /// most `wire::MAX_BATCH`. Returns how many were registered.
    pub fn register_many(&mut self, items: &[WireRegistration]) -> Result<u32> {
        let mut total = 0;
        for chunk in items.chunks(wire::MAX_BATCH) {
            let req = Request::Register {
                family: self.family,
                items: chunk.to_vec(),
            };
            match self.call(req)? {
                Reply::Registered { count } => total += count,
                other => return Err(self.unexpected(&other)),
            }
        }
        Ok(total)
    }

    pub fn register(&mut self, item: WireRegistration) -> Result<()> {
        self.register_many(std::slice::from_ref(&item)).map(|_| ())
    }

    /// The frame of (space_id, page_no) in this family that may serve a replica whose
    /// snapshot LSN is `max_lsn`: the newest with `lsn <= max_lsn`, and only if its
    /// `valid_from >= max_lsn` (`PageTable::lookup`).
    pub fn lookup(&mut self, space_id: u32, page_no: u32, max_lsn: u64) -> Result<Option<Entry>> {
        let mut v = self.lookup_many(&[(space_id, page_no)], max_lsn)?;
        Ok(v.pop().flatten())
    }

    /// `lookup` for many (space_id, page_no) pairs; results in the same order.
    pub fn lookup_many(
        &mut self,
        pages: &[(u32, u32)],
        max_lsn: u64,
    ) -> Result<Vec<Option<Entry>>> {
        let mut out = Vec::with_capacity(pages.len());
        for chunk in pages.chunks(wire::MAX_BATCH) {
            let req = Request::Lookup {
                family: self.family,
                max_lsn,
                pages: chunk.to_vec(),
            };
            match self.call(req)? {
                Reply::Found(found) if found.len() == chunk.len() => out.extend(found),
                other => return Err(self.unexpected(&other)),
            }
        }
        Ok(out)
    }

    /// Withdraws frames of this process. Returns how many were registered.
    pub fn invalidate_many(&mut self, frames: &[Frame]) -> Result<u32> {
        let mut total = 0;
        for chunk in frames.chunks(wire::MAX_BATCH) {
            match self.call(Request::Invalidate {
                frames: chunk.to_vec(),
            })? {
                Reply::Invalidated { count } => total += count,
                other => return Err(self.unexpected(&other)),
            }
        }
        Ok(total)
    }

    /// Withdraws one frame; false if it was not registered.
    pub fn invalidate(&mut self, frame: Frame) -> Result<bool> {
        Ok(self.invalidate_many(&[frame])? == 1)
    }

    /// Sends any request and returns the daemon's answer; a refusal is
    /// `Error::Remote`. For tools and tests that need a request the typed methods do
    /// not make (for example one naming another family).
    pub fn call(&mut self, request: Request) -> Result<Reply> {
        Ok(self.call_msg(request)?.reply)
    }

    fn call_msg(&mut self, request: Request) -> Result<ReplyMsg> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        wire::encode_request(&RequestMsg { id, request }, &mut self.out);
        let result = self.round_trip(id);
        match &result {
            // The daemon closes the connection after these; so do we.
            Err(Error::Remote(e))
                if matches!(e.code, ErrorCode::Malformed | ErrorCode::TooLarge) =>
            {
                self.stream = None
            }
            Err(Error::Remote(_)) | Ok(_) => {}
            Err(_) => self.stream = None,
        }
        result
    }

    fn round_trip(&mut self, id: u32) -> Result<ReplyMsg> {
        let stream = self.stream.as_mut().ok_or(Error::NotConnected)?;
        wire::write_message(stream, &self.out).map_err(|e| Error::io("sending a request", e))?;
        wire::read_message(stream, &mut self.inp).map_err(|e| match e {
            ReadError::Closed => Error::io(
                "reading a reply",
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "daemon closed the connection",
                ),
            ),
            ReadError::Io(e) => Error::io("reading a reply", e),
            ReadError::Bad(d) => Error::Protocol(d),
        })?;
        let reply = wire::decode_reply(&self.inp)?;
        if reply.id != id {
            return Err(Error::UnexpectedReply(format!(
                "reply id {} to request {id}",
                reply.id
            )));
        }
        self.generation = reply.generation;
        match reply.reply {
            Reply::Error(e) => Err(Error::Remote(e)),
            _ => Ok(reply),
        }
    }

    fn unexpected(&mut self, reply: &Reply) -> Error {
        self.stream = None;
        Error::UnexpectedReply(format!("{reply:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    #[test]
    fn absent_daemon_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Client::connect(dir.path().join("nobody.sock"))
            .err()
            .unwrap();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }

    /// A daemon that accepts and then never answers must not hold the caller.
    #[test]
    fn silent_daemon_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut b = [0u8; 64];
            let _ = s.read(&mut b);
            // Hold the connection open, silent, until the client has given up.
            let _ = rx.recv();
        });
        let err = Client::connect_with_timeout(&path, Duration::from_millis(50))
            .err()
            .expect("connect must fail");
        match &err {
            Error::Io { source, .. } => assert!(
                matches!(
                    source.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{err:?}"
            ),
            other => panic!("expected a timeout, got {other:?}"),
        }
        tx.send(()).unwrap();
        server.join().unwrap();
    }

    /// A connector that counts its connections, over a Unix socket.
    struct Counting {
        inner: UnixConnector,
        connects: std::cell::Cell<u32>,
    }

    impl Connector for Counting {
        type Stream = std::os::unix::net::UnixStream;
        fn connect(&self) -> Result<Self::Stream> {
            self.connects.set(self.connects.get() + 1);
            self.inner.connect()
        }
        fn describe(&self) -> String {
            format!("counting {}", self.inner.describe())
        }
    }

    /// Every (re)connect goes through the client's connector; a daemon answering
    /// with a new generation on the second connection is reported as a restart.
    #[test]
    fn reconnects_go_through_the_connector() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hello.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            for generation in [7u64, 8] {
                let (mut s, _) = listener.accept().unwrap();
                let mut inp = Vec::new();
                wire::read_message(&mut s, &mut inp).unwrap();
                let req = wire::decode_request(&inp).unwrap();
                assert_eq!(req.request, Request::Hello);
                let mut out = Vec::new();
                let reply = ReplyMsg {
                    id: req.id,
                    generation,
                    reply: Reply::Hello {
                        domain: DomainId(3),
                        family: FamilyId(4),
                    },
                };
                wire::encode_reply(&reply, &mut out);
                wire::write_message(&mut s, &out).unwrap();
            }
        });
        let connector = Counting {
            inner: UnixConnector::new(&path).with_timeout(Duration::from_secs(5)),
            connects: std::cell::Cell::new(0),
        };
        let mut c = Client::with_connector(connector).unwrap();
        assert_eq!(
            (c.domain(), c.family(), c.generation()),
            (DomainId(3), FamilyId(4), 7)
        );
        assert!(
            c.describe().starts_with("counting unix:"),
            "{}",
            c.describe()
        );
        assert!(c.reconnect().unwrap(), "generation 7 -> 8 is a restart");
        assert_eq!(c.connector.connects.get(), 2);
        server.join().unwrap();
    }

    /// A daemon speaking nonsense is a protocol error, and the client disconnects.
    #[test]
    fn garbage_reply_is_a_protocol_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("liar.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut b = [0u8; 64];
            let _ = s.read(&mut b);
            std::io::Write::write_all(&mut s, &[3, 0, 0, 0, 1, 2, 3]).unwrap();
        });
        let err = Client::connect(&path).err().expect("connect must fail");
        assert!(matches!(err, Error::Protocol(_)), "{err:?}");
        server.join().unwrap();
    }
}
