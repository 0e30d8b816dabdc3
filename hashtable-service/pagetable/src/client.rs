//! The blocking client the guest agent uses from inside mariadbd: no runtime, no
//! threads, one socket. Every failure is a value; every socket operation has a
//! timeout, so a hung daemon costs the database one bounded wait and a disk read
//! (DESIGN.md invariant 6), never a hang.
//!
//! After any I/O or protocol error the connection is dropped (a half-read reply would
//! desynchronise the stream); calls then fail with `Error::NotConnected` until the
//! caller runs `reconnect`, which tells whether the daemon restarted (a new
//! generation), in which case the caller re-registers its frames.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::ids::{DomainId, Entry, FamilyId, Frame};
use crate::wire::{
    self, ErrorCode, ReadError, Reply, ReplyMsg, Request, RequestMsg, WireRegistration,
};

/// Default bound on each socket read or write.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

pub struct Client {
    path: PathBuf,
    timeout: Duration,
    stream: Option<UnixStream>,
    generation: u64,
    domain: DomainId,
    family: FamilyId,
    next_id: u32,
    out: Vec<u8>,
    inp: Vec<u8>,
}

impl Client {
    /// Connects and introduces itself; fails if the daemon does not know this process
    /// (admin `bind_pid`) or is not running.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with_timeout(path, DEFAULT_TIMEOUT)
    }

    pub fn connect_with_timeout(path: impl AsRef<Path>, timeout: Duration) -> Result<Self> {
        let mut c = Client {
            path: path.as_ref().to_owned(),
            timeout,
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
        let stream = UnixStream::connect(&self.path)
            .map_err(|e| Error::io(format!("connecting to {}", self.path.display()), e))?;
        let timeout = Some(self.timeout);
        stream
            .set_read_timeout(timeout)
            .and_then(|_| stream.set_write_timeout(timeout))
            .map_err(|e| Error::io("setting socket timeouts", e))?;
        self.stream = Some(stream);
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
