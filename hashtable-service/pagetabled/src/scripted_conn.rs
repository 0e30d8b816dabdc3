//! A scripted in-memory `Connection` for unit tests: the peer's bytes are fixed up
//! front, the daemon's answers are collected. It stands in for transports this host
//! cannot open (a Xen guest's vchan), so the daemon's handling of every kind of
//! `PeerIdentity` is tested without one.

use std::io::{Cursor, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use pagetable::transport::{Connection, PeerIdentity};
use parking_lot::Mutex;

pub struct ScriptedConn {
    peer: PeerIdentity,
    input: Arc<Mutex<Cursor<Vec<u8>>>>,
    output: Arc<Mutex<Vec<u8>>>,
}

impl ScriptedConn {
    /// A connection from `peer` that sends `input` and then closes its side.
    pub fn new(peer: PeerIdentity, input: Vec<u8>) -> Self {
        ScriptedConn {
            peer,
            input: Arc::new(Mutex::new(Cursor::new(input))),
            output: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Everything the daemon wrote, shared with every clone of this connection.
    pub fn output(&self) -> Arc<Mutex<Vec<u8>>> {
        self.output.clone()
    }
}

impl Read for ScriptedConn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.lock().read(buf)
    }
}

impl Write for ScriptedConn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Connection for ScriptedConn {
    fn peer(&self) -> PeerIdentity {
        self.peer
    }

    fn set_timeouts(&self, _: Option<Duration>, _: Option<Duration>) -> std::io::Result<()> {
        Ok(())
    }

    fn shutdown(&self) {}

    fn try_clone_conn(&self) -> std::io::Result<Self> {
        Ok(ScriptedConn {
            peer: self.peer,
            input: self.input.clone(),
            output: self.output.clone(),
        })
    }
}
