//! Listening sockets, one thread per connection, and shutdown.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tracing::{debug, info, warn};

use crate::exports::{Export, Exports};
use crate::listen::ListenAddr;
use crate::negotiate::{negotiate, Negotiated};
use crate::transmit::transmit;
use crate::{BlockDevice, NbdError};

/// The NBD port on loopback: what `dbfork volume export --nbd tcp:` means by default.
pub const DEFAULT_TCP_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10809));

/// Builder for an NBD server: add exports, then `serve_*` to start listening.
pub struct Server {
    exports: Exports,
    max_connections: usize,
    handshake_timeout: Option<Duration>,
    workers: usize,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            exports: Exports::default(),
            max_connections: 256,
            handshake_timeout: Some(Duration::from_secs(30)),
            workers: 4,
        }
    }
}

impl Server {
    pub fn new() -> Self {
        Self::default()
    }

    /// Offer `device` under `name`. Names are unique; "" is allowed and is the default
    /// export (with exactly one export, any client asking for "" gets that one).
    pub fn export(
        self,
        name: impl Into<String>,
        device: Arc<dyn BlockDevice>,
    ) -> Result<Self, NbdError> {
        self.exports.add(Export {
            name: name.into(),
            description: None,
            device,
        })?;
        Ok(self)
    }

    /// As `export`, with a description shown by `nbdinfo --list`.
    pub fn export_described(
        self,
        name: impl Into<String>,
        description: impl Into<String>,
        device: Arc<dyn BlockDevice>,
    ) -> Result<Self, NbdError> {
        self.exports.add(Export {
            name: name.into(),
            description: Some(description.into()),
            device,
        })?;
        Ok(self)
    }

    /// Connections beyond this many are closed on accept (default 256).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// How long a client may stay silent during the handshake (default 30 s; `None`
    /// waits forever). Transmission has no timeout: idle clients are legitimate there.
    pub fn handshake_timeout(mut self, t: Option<Duration>) -> Self {
        self.handshake_timeout = t;
        self
    }

    /// Requests served at once per connection (default 4; 1 serves strictly in order).
    /// Each connection in transmission holds this many threads.
    pub fn workers_per_connection(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Listen where `addr` says.
    pub fn serve(self, addr: &ListenAddr) -> Result<ServerHandle, NbdError> {
        match addr {
            ListenAddr::Unix(p) => self.serve_unix(p),
            ListenAddr::Tcp(a) => self.serve_tcp(*a),
        }
    }

    /// Listen on a Unix socket at `path`. A stale socket file (nobody listening) is
    /// replaced; a live one or a non-socket file is an error. The file is removed again
    /// on shutdown.
    pub fn serve_unix(self, path: impl AsRef<Path>) -> Result<ServerHandle, NbdError> {
        let path = path.as_ref();
        let bind_err = |source| NbdError::Bind {
            addr: format!("unix:{}", path.display()),
            source,
        };
        remove_stale_socket(path).map_err(|e| match e {
            StaleCheck::Occupied => NbdError::SocketPathOccupied(path.display().to_string()),
            StaleCheck::Io(source) => bind_err(source),
        })?;
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        self.start(
            Listener::Unix(listener),
            ListenAddr::Unix(path.to_path_buf()),
            Some(path.to_path_buf()),
        )
    }

    /// Listen on TCP at exactly `addr` (use `DEFAULT_TCP_ADDR` or another loopback
    /// address unless the export is meant to leave this host; port 0 picks a free port,
    /// see `ServerHandle::local_addr`).
    pub fn serve_tcp(self, addr: SocketAddr) -> Result<ServerHandle, NbdError> {
        let bind_err = |source| NbdError::Bind {
            addr: format!("tcp:{addr}"),
            source,
        };
        let listener = TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        self.start(Listener::Tcp(listener), ListenAddr::Tcp(local), None)
    }

    fn start(
        self,
        listener: Listener,
        addr: ListenAddr,
        unix_path: Option<PathBuf>,
    ) -> Result<ServerHandle, NbdError> {
        let (wake_rx, wake_tx) = UnixStream::pair().map_err(NbdError::io("creating wake pipe"))?;
        let shared = Arc::new(Shared {
            exports: self.exports,
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            max_connections: self.max_connections,
            handshake_timeout: self.handshake_timeout,
            workers: self.workers,
            stopped: Mutex::new(false),
            stopped_cv: Condvar::new(),
        });
        info!(%addr, "NBD server listening");
        let s = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("nbd-accept".into())
            .spawn(move || accept_loop(listener, wake_rx, s))
            .map_err(NbdError::io("spawning accept thread"))?;
        Ok(ServerHandle {
            shared,
            addr,
            unix_path,
            wake_tx,
            accept: Mutex::new(Some(accept)),
        })
    }
}

enum StaleCheck {
    Occupied,
    Io(io::Error),
}

fn remove_stale_socket(path: &Path) -> Result<(), StaleCheck> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StaleCheck::Io(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(StaleCheck::Occupied);
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(StaleCheck::Io(io::Error::from(io::ErrorKind::AddrInUse))),
        Err(_) => std::fs::remove_file(path).map_err(StaleCheck::Io),
    }
}

/// A running server. Dropping it shuts the server down.
pub struct ServerHandle {
    shared: Arc<Shared>,
    addr: ListenAddr,
    unix_path: Option<PathBuf>,
    wake_tx: UnixStream,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl ServerHandle {
    /// The bound TCP address (with the real port when 0 was asked for); `None` for Unix.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self.addr {
            ListenAddr::Tcp(a) => Some(a),
            ListenAddr::Unix(_) => None,
        }
    }

    /// Where the server listens, with the real TCP port.
    pub fn listen_addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// The live export set: add or remove exports while serving.
    pub fn exports(&self) -> &Exports {
        &self.shared.exports
    }

    /// Connections currently open (handshake or transmission).
    pub fn connection_count(&self) -> usize {
        self.shared.conns.lock().len()
    }

    /// Stop accepting, close every connection and wait for their threads. Requests in
    /// flight finish their device call; their replies may be lost. Idempotent, callable
    /// from any thread.
    pub fn shutdown(&self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            self.wait();
            return;
        }
        let _ = (&self.wake_tx).write_all(&[1]);
        if let Some(t) = self.accept.lock().take() {
            let _ = t.join();
        }
        let conns: Vec<Conn> = self.shared.conns.lock().drain().map(|(_, c)| c).collect();
        for c in &conns {
            c.closer.close();
        }
        for c in conns {
            let _ = c.thread.join();
        }
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
        info!(addr = %self.addr, "NBD server stopped");
        *self.shared.stopped.lock() = true;
        self.shared.stopped_cv.notify_all();
    }

    /// Block until some thread has called `shutdown`.
    pub fn wait(&self) {
        let mut stopped = self.shared.stopped.lock();
        while !*stopped {
            self.shared.stopped_cv.wait(&mut stopped);
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Shared {
    exports: Exports,
    stopping: AtomicBool,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Conn>>,
    max_connections: usize,
    handshake_timeout: Option<Duration>,
    workers: usize,
    stopped: Mutex<bool>,
    stopped_cv: Condvar,
}

struct Conn {
    closer: Stream,
    thread: JoinHandle<()>,
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn fd(&self) -> RawFd {
        match self {
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Tcp(l) => l.as_raw_fd(),
        }
    }

    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                // Replies are written whole; Nagle would only add latency to them.
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
        }
    }
}

/// A connected socket of either family.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        match self {
            Stream::Unix(s) => s.try_clone().map(Stream::Unix),
            Stream::Tcp(s) => s.try_clone().map(Stream::Tcp),
        }
    }

    fn close(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }

    fn set_blocking_with_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(t)
            }
            Stream::Tcp(s) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(t)
            }
        }
    }
}

// Through shared references, like the std socket types: one thread may read while
// another writes.
impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => (&*s).read(buf),
            Stream::Tcp(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => (&*s).write(buf),
            Stream::Tcp(s) => (&*s).write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Wait until the listener or the wake socket is readable.
fn wait_readable(listener: RawFd, wake: RawFd) -> io::Result<()> {
    let mut fds = [
        libc::pollfd {
            fd: listener,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call,
        // and both descriptors are owned by the caller and stay open.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn accept_loop(listener: Listener, wake: UnixStream, shared: Arc<Shared>) {
    loop {
        if let Err(e) = wait_readable(listener.fd(), wake.as_raw_fd()) {
            warn!(error = %e, "poll on listener failed; server stops accepting");
            return;
        }
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Typically EMFILE or ECONNABORTED: this connection is lost, the
                // server is not. Back off briefly so a full fd table is not a busy loop.
                warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        spawn_connection(stream, &shared);
    }
}

fn spawn_connection(stream: Stream, shared: &Arc<Shared>) {
    let mut conns = shared.conns.lock();
    if conns.len() >= shared.max_connections {
        warn!(
            max = shared.max_connections,
            "too many connections; closing new one"
        );
        return;
    }
    let closer = match stream.try_clone() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot duplicate socket; closing connection");
            return;
        }
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let s = Arc::clone(shared);
    let thread = std::thread::Builder::new()
        .name(format!("nbd-conn-{id}"))
        .spawn(move || {
            run_connection(stream, &s);
            s.conns.lock().remove(&id);
        });
    match thread {
        Ok(thread) => {
            conns.insert(id, Conn { closer, thread });
        }
        Err(e) => warn!(error = %e, "cannot spawn connection thread"),
    }
}

fn run_connection(stream: Stream, shared: &Shared) {
    let result = (|| {
        stream
            .set_blocking_with_timeout(shared.handshake_timeout)
            .map_err(NbdError::io("configuring socket"))?;
        let session = match negotiate(&mut &stream, &mut &stream, &shared.exports)? {
            Negotiated::Transmit(s) => s,
            Negotiated::Aborted => return Ok(()),
        };
        stream
            .set_blocking_with_timeout(None)
            .map_err(NbdError::io("configuring socket"))?;
        debug!(export = %session.export.name, structured = session.structured_replies, "transmission");
        transmit(&stream, &stream, &session, shared.workers)
    })();
    if let Err(e) = result {
        if shared.stopping.load(Ordering::SeqCst) {
            debug!(error = %e, "connection closed by shutdown");
        } else {
            info!(error = %e, "connection ended with an error");
        }
    }
}
