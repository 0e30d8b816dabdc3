//! dbfork's own ends of a Xen vchan, relayed to a Unix socket.
//!
//! Xen 4.17's vchan-socket-proxy loses requests: its server end waits for a client by
//! consuming event-channel events and then sleeps in `select` before it looks at the
//! ring, so a client whose connect and first write arrive as one event is never read
//! (dbfork's page-table lookups from a replica's agent failed this way under load),
//! and it exits on the first write to a ring its client has closed. This relay keeps
//! one rule instead: the ring is read before every sleep, and reading it arms the
//! notification the sleep waits for, so no event can be consumed unseen. A closed peer
//! ends one conversation, never the relay; a server end is set up afresh after each
//! one, so a new client never reads an old conversation's bytes.
//!
//! [`Ring`] is the seam: [`vchan::Vchan`] is the real vchan (libxenvchan, LGPL,
//! linked dynamically); the unit tests drive [`pump`] with an in-memory ring.

mod ffi;
pub mod relay;
pub mod vchan;

pub use relay::{pump, Ended, Ring, RingState};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot set up the vchan's {side} end at {path} for domain {domid} (is this a Xen domain with /dev/xen/gntdev, /dev/xen/gntalloc and /dev/xen/evtchn, and may it write that xenstore path?)")]
    Init {
        side: &'static str,
        domid: u32,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("vchan path {0:?} holds a NUL byte")]
    BadPath(String),
    #[error("vchan {op}")]
    Ring {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("relay socket {op}")]
    Socket {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;
