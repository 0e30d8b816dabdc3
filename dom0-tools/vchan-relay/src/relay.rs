//! Moving bytes between one vchan conversation and one Unix-socket connection, and
//! the two ways a relay gets its conversations (offering a vchan, or connecting to
//! one for each local client).

use crate::{Error, Result};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Where a vchan conversation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingState {
    /// A server's ring no client has connected to yet.
    Waiting,
    Open,
    /// The peer closed its end.
    Closed,
}

/// One end of a vchan. `readable` and `writable` also ask the peer for an event on its
/// next write or read, so checking them right before sleeping on `event_fd` cannot
/// miss that event.
pub trait Ring {
    fn state(&mut self) -> RingState;
    fn readable(&mut self) -> usize;
    fn writable(&mut self) -> usize;
    /// Reads what is there, up to `buf.len()`, without blocking.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize>;
    /// Writes what fits, without blocking.
    fn write(&mut self, buf: &[u8]) -> Result<usize>;
    /// Readable when the peer sent an event.
    fn event_fd(&self) -> RawFd;
    /// Takes the event `event_fd` announced and re-arms the next.
    fn ack_event(&mut self) -> Result<()>;
}

/// Why a conversation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The vchan's peer closed; what it was still owed is dropped.
    PeerClosed,
    /// The socket's other end closed; what it sent was passed on first.
    SocketClosed,
}

const BUF: usize = 64 * 1024;

/// Relays between `ring` and `sock` until one side closes. `tick` bounds each sleep:
/// the ring is looked at again at least that often even if no event comes.
pub fn pump<R: Ring>(ring: &mut R, sock: &mut UnixStream, tick: Duration) -> Result<Ended> {
    sock.set_nonblocking(true).map_err(|source| Error::Socket {
        op: "set non-blocking",
        source,
    })?;
    let mut to_sock: Vec<u8> = Vec::with_capacity(BUF);
    let mut to_ring: Vec<u8> = Vec::with_capacity(BUF);
    let mut chunk = vec![0u8; BUF];
    let mut sock_eof = false;
    loop {
        // The ring first, every time round: this is what the stock proxy skipped.
        while to_sock.len() < BUF {
            let n = ring.read(&mut chunk[..BUF - to_sock.len()])?;
            if n == 0 {
                break;
            }
            to_sock.extend_from_slice(&chunk[..n]);
        }
        if !flush(sock, &mut to_sock)? {
            return Ok(Ended::SocketClosed);
        }
        if !to_ring.is_empty() && ring.state() == RingState::Open {
            match ring.write(&to_ring) {
                Ok(n) => {
                    to_ring.drain(..n);
                }
                Err(_) if ring.state() == RingState::Closed => return Ok(Ended::PeerClosed),
                Err(e) => return Err(e),
            }
        }
        if ring.state() == RingState::Closed {
            return Ok(Ended::PeerClosed);
        }
        if sock_eof && to_ring.is_empty() {
            return Ok(Ended::SocketClosed);
        }
        let want_in = !sock_eof && to_ring.len() < BUF;
        let [ev, so] = wait(
            ring.event_fd(),
            sock.as_raw_fd(),
            want_in,
            !to_sock.is_empty(),
            tick,
        )?;
        if ev {
            ring.ack_event()?;
        }
        if so && want_in {
            match sock.read(&mut chunk[..BUF - to_ring.len()]) {
                Ok(0) => sock_eof = true,
                Ok(n) => to_ring.extend_from_slice(&chunk[..n]),
                Err(e) if transient(&e) => {}
                Err(e) if gone(&e) => return Ok(Ended::SocketClosed),
                Err(source) => return Err(Error::Socket { op: "read", source }),
            }
        }
    }
}

/// Writes what the socket takes now; false when its other end is gone.
fn flush(sock: &mut UnixStream, buf: &mut Vec<u8>) -> Result<bool> {
    while !buf.is_empty() {
        match sock.write(buf) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                buf.drain(..n);
            }
            Err(e) if transient(&e) => break,
            Err(e) if gone(&e) => return Ok(false),
            Err(source) => {
                return Err(Error::Socket {
                    op: "write",
                    source,
                })
            }
        }
    }
    Ok(true)
}

fn transient(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted)
}

fn gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
    )
}

/// Sleeps until the ring's event fd or the socket is ready, or `tick` passes. Returns
/// which of the two is ready.
fn wait(
    event: RawFd,
    sock: RawFd,
    sock_in: bool,
    sock_out: bool,
    tick: Duration,
) -> Result<[bool; 2]> {
    let mut sock_events = 0;
    if sock_in {
        sock_events |= libc::POLLIN;
    }
    if sock_out {
        sock_events |= libc::POLLOUT;
    }
    let mut fds = [
        libc::pollfd {
            fd: event,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: if sock_events == 0 { -1 } else { sock },
            events: sock_events,
            revents: 0,
        },
    ];
    let ms = tick.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: fds is a valid array of two pollfd for the length passed; a negative fd
    // is ignored by poll(2).
    let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == ErrorKind::Interrupted {
            return Ok([false, false]);
        }
        return Err(Error::Ring {
            op: "poll",
            source: e,
        });
    }
    let hit = |p: &libc::pollfd| p.revents != 0;
    Ok([hit(&fds[0]), hit(&fds[1])])
}

/// Waits for a server ring's client; false if it came and went already.
fn await_client<R: Ring>(ring: &mut R, tick: Duration) -> Result<bool> {
    loop {
        match ring.state() {
            RingState::Open => return Ok(true),
            RingState::Closed => return Ok(false),
            RingState::Waiting => {}
        }
        let [ev, _] = wait(ring.event_fd(), -1, false, false, tick)?;
        if ev {
            ring.ack_event()?;
        }
    }
}

/// Server side: offers a ring (`offer`), and for each client that connects opens a
/// connection to `target` and relays. After each conversation the ring is dropped and
/// offered afresh. Returns only when a ring cannot be offered.
pub fn serve<R: Ring>(
    mut offer: impl FnMut() -> Result<R>,
    target: &Path,
    tick: Duration,
) -> Result<()> {
    loop {
        let mut ring = offer()?;
        if !await_client(&mut ring, tick)? {
            continue;
        }
        let mut sock = match UnixStream::connect(target) {
            Ok(s) => s,
            Err(e) => {
                // The client sees its ring closed and may try again; a pause keeps a
                // missing target from spinning the relay.
                tracing::warn!(target = %target.display(), error = %e, "cannot reach the relay's socket; closing the client's ring");
                drop(ring);
                std::thread::sleep(tick);
                continue;
            }
        };
        over(pump(&mut ring, &mut sock, tick));
    }
}

/// Logs how a conversation ended. A failure ends that conversation only: its ring and
/// connection are dropped, and the relay serves the next one.
fn over(ended: Result<Ended>) {
    match ended {
        Ok(ended) => tracing::debug!(?ended, "conversation over"),
        // As a `dyn Error`, the log line carries its causes too.
        Err(e) => tracing::warn!(
            error = &e as &dyn std::error::Error,
            "conversation failed; serving the next"
        ),
    }
}

/// Client side: for each connection on `listener`, connects to the ring the peer
/// offers (`connect`, retried for up to `patience` while the peer offers none) and
/// relays. One connection at a time; a connection that finds no ring is closed.
pub fn accept_and_connect<R: Ring>(
    listener: &UnixListener,
    mut connect: impl FnMut() -> Result<R>,
    patience: Duration,
    tick: Duration,
) -> Result<()> {
    loop {
        let (mut sock, _) = listener.accept().map_err(|source| Error::Socket {
            op: "accept",
            source,
        })?;
        let start = Instant::now();
        let mut ring = loop {
            match connect() {
                Ok(r) => break Some(r),
                Err(e) if start.elapsed() >= patience => {
                    tracing::warn!(error = %e, "no vchan to connect to; closing the local connection");
                    break None;
                }
                // The peer re-offers its ring after each conversation: a short wait.
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        if let Some(ring) = ring.as_mut() {
            over(pump(ring, &mut sock, tick));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// An in-memory ring: `peer_*` is the far side, `event` a socket pair whose far
    /// end the test writes a byte to as the peer's event.
    struct FakeRing {
        shared: Arc<Mutex<Shared>>,
        event: UnixStream,
    }

    #[derive(Default)]
    struct Shared {
        from_peer: VecDeque<u8>,
        to_peer: Vec<u8>,
        room: usize,
        state: Option<RingState>,
        dropped: bool,
        /// Reads fail (as a ring whose event channel broke).
        broken: bool,
    }

    struct Peer {
        shared: Arc<Mutex<Shared>>,
        event: UnixStream,
    }

    impl Peer {
        fn with<T>(&self, f: impl FnOnce(&mut Shared) -> T) -> T {
            f(&mut self.shared.lock().unwrap())
        }
        fn notify(&mut self) {
            self.event.write_all(&[1]).unwrap();
        }
        /// Waits (bounded) until the relay has written `n` bytes to the peer.
        fn received(&self, n: usize) -> Vec<u8> {
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                let got = self.with(|s| s.to_peer.clone());
                if got.len() >= n || Instant::now() > until {
                    return got;
                }
                std::thread::yield_now();
            }
        }
    }

    fn fake(state: RingState, from_peer: &[u8]) -> (FakeRing, Peer) {
        let shared = Arc::new(Mutex::new(Shared {
            from_peer: from_peer.iter().copied().collect(),
            room: 4096,
            state: Some(state),
            ..Shared::default()
        }));
        let (a, b) = UnixStream::pair().unwrap();
        (
            FakeRing {
                shared: shared.clone(),
                event: a,
            },
            Peer { shared, event: b },
        )
    }

    impl Ring for FakeRing {
        fn state(&mut self) -> RingState {
            self.shared.lock().unwrap().state.unwrap()
        }
        fn readable(&mut self) -> usize {
            self.shared.lock().unwrap().from_peer.len()
        }
        fn writable(&mut self) -> usize {
            let s = self.shared.lock().unwrap();
            s.room - s.to_peer.len()
        }
        fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
            let mut s = self.shared.lock().unwrap();
            if s.broken {
                return Err(Error::Ring {
                    op: "read",
                    source: std::io::Error::from(ErrorKind::InvalidData),
                });
            }
            let n = buf.len().min(s.from_peer.len());
            for b in buf.iter_mut().take(n) {
                *b = s.from_peer.pop_front().unwrap();
            }
            Ok(n)
        }
        fn write(&mut self, buf: &[u8]) -> Result<usize> {
            let mut s = self.shared.lock().unwrap();
            if s.state == Some(RingState::Closed) {
                // As libxenvchan_write: -1 once the peer is gone.
                return Err(Error::Ring {
                    op: "write",
                    source: std::io::Error::from(ErrorKind::BrokenPipe),
                });
            }
            let n = buf.len().min(s.room - s.to_peer.len());
            s.to_peer.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn event_fd(&self) -> RawFd {
            self.event.as_raw_fd()
        }
        fn ack_event(&mut self) -> Result<()> {
            let mut b = [0u8; 64];
            let _ = self.event.read(&mut b).unwrap();
            Ok(())
        }
    }

    impl Drop for FakeRing {
        fn drop(&mut self) {
            self.shared.lock().unwrap().dropped = true;
        }
    }

    /// Long enough that only a missed look at the ring, never the tick, could stall.
    const NO_TICK: Duration = Duration::from_secs(600);

    fn read_exact_within(s: &mut UnixStream, n: usize) -> Vec<u8> {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).expect("relayed within 10 s");
        buf
    }

    fn accept_within(listener: &UnixListener) -> UnixStream {
        let l = listener.try_clone().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(l.accept().map(|(c, _)| c)));
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a connection within 10 s")
            .unwrap()
    }

    /// The stalls' case: the client's request is in the ring when the relay starts and
    /// no event is left to wake it. It is passed on anyway.
    #[test]
    fn data_in_the_ring_without_an_event_is_relayed() {
        let (mut ring, peer) = fake(RingState::Open, b"hello");
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || pump(&mut ring, &mut ours, NO_TICK));
        assert_eq!(read_exact_within(&mut theirs, 5), b"hello");
        // And the answer goes back, woken by the socket.
        theirs.write_all(b"world").unwrap();
        assert_eq!(peer.received(5), b"world");
        drop(theirs);
        assert_eq!(t.join().unwrap().unwrap(), Ended::SocketClosed);
    }

    /// The stock proxy exited when a reply met a closed ring; here the conversation ends.
    #[test]
    fn a_reply_to_a_closed_peer_ends_the_conversation_only() {
        let (mut ring, mut peer) = fake(RingState::Open, b"");
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || pump(&mut ring, &mut ours, NO_TICK));
        peer.with(|s| s.state = Some(RingState::Closed));
        theirs.write_all(b"late reply").unwrap();
        peer.notify();
        assert_eq!(t.join().unwrap().unwrap(), Ended::PeerClosed);
        assert!(peer.with(|s| s.to_peer.is_empty()));
    }

    /// What the socket sent before closing reaches the ring, even when the ring has
    /// room for it only after the peer reads.
    #[test]
    fn socket_eof_flushes_into_the_ring_first() {
        let (mut ring, mut peer) = fake(RingState::Open, b"");
        peer.with(|s| s.room = 4);
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(b"12345678").unwrap();
        drop(theirs);
        let t = std::thread::spawn(move || pump(&mut ring, &mut ours, NO_TICK));
        assert_eq!(peer.received(4), b"1234");
        peer.with(|s| {
            s.to_peer.clear();
            s.room = 4;
        });
        peer.notify();
        assert_eq!(t.join().unwrap().unwrap(), Ended::SocketClosed);
        assert_eq!(peer.with(|s| s.to_peer.clone()), b"5678");
    }

    /// A server offers a fresh ring after each conversation and opens a new socket
    /// connection for each client; a client that connects and writes at once (no
    /// event while the relay waited) is served.
    #[test]
    fn serve_offers_a_fresh_ring_per_conversation() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.sock");
        let listener = UnixListener::bind(&target).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<FakeRing>();
        let t = {
            let target = target.clone();
            std::thread::spawn(move || {
                serve(
                    || {
                        rx.recv().map_err(|_| Error::Ring {
                            op: "offer",
                            source: ErrorKind::NotFound.into(),
                        })
                    },
                    &target,
                    NO_TICK,
                )
            })
        };
        let mut peers = Vec::new();
        for (i, msg) in [b"first", b"again"].iter().enumerate() {
            let (ring, peer) = fake(RingState::Open, *msg);
            tx.send(ring).unwrap();
            let (mut conn, _) = listener.accept().unwrap();
            assert_eq!(read_exact_within(&mut conn, 5), *msg, "conversation {i}");
            conn.write_all(b"ok").unwrap();
            assert_eq!(peer.received(2), b"ok");
            // The client goes; the relay's socket connection is closed with it.
            peer.with(|s| s.state = Some(RingState::Closed));
            let mut p = peer;
            p.notify();
            let mut rest = Vec::new();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            conn.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty());
            peers.push(p);
        }
        drop(tx);
        assert!(t.join().unwrap().is_err());
        assert!(peers.iter().all(|p| p.with(|s| s.dropped)));
    }

    /// A conversation that fails (its ring broke) ends alone: the relay offers the
    /// next ring and serves its client.
    #[test]
    fn a_failed_conversation_is_not_the_relays_end() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.sock");
        let listener = UnixListener::bind(&target).unwrap();
        let (broken, broken_peer) = fake(RingState::Open, b"lost");
        broken_peer.with(|s| s.broken = true);
        let (good, _good_peer) = fake(RingState::Open, b"fine");
        let mut rings = vec![good, broken];
        std::thread::spawn(move || {
            serve(
                || {
                    rings.pop().ok_or(Error::Ring {
                        op: "offer",
                        source: ErrorKind::NotFound.into(),
                    })
                },
                &target,
                NO_TICK,
            )
        });
        let (mut first, _) = listener.accept().unwrap();
        let mut rest = Vec::new();
        first
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        first.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the broken ring relayed {rest:?}");
        let mut second = accept_within(&listener);
        assert_eq!(read_exact_within(&mut second, 4), b"fine");
        assert!(broken_peer.with(|s| s.dropped));
    }

    /// A client-side relay retries while the peer offers no ring, then relays.
    #[test]
    fn client_side_waits_for_the_offer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (ring, peer) = fake(RingState::Open, b"");
        let mut pending = Some(ring);
        let mut tries = 0;
        std::thread::spawn(move || {
            accept_and_connect(
                &listener,
                || {
                    tries += 1;
                    match tries {
                        1..=3 => Err(Error::BadPath("not yet".into())),
                        _ => pending.take().ok_or(Error::BadPath("once".into())),
                    }
                },
                Duration::from_secs(10),
                NO_TICK,
            )
        });
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(b"ping").unwrap();
        assert_eq!(peer.received(4), b"ping");
        peer.with(|s| s.from_peer.extend(b"pong"));
        let mut p = peer;
        p.notify();
        assert_eq!(read_exact_within(&mut c, 4), b"pong");
    }
}
