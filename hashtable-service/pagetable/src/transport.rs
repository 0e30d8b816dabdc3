//! How connections reach the daemon (the daemon's half of the seam; a client's half
//! is `connector`). The table and the protocol only see a byte stream and a peer
//! identity, so the Xen substrate can add a libxenvchan transport (planned, not built)
//! without touching them.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// Who is on the other end of a connection, as the kernel (or hypervisor) says.
/// The daemon maps each kind to a table domain through its own admin bindings
/// (`bind_pid`, `bind_domid`); a peer never names its domain itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerIdentity {
    /// A local process, from SO_PEERCRED at connect time.
    Unix { pid: u32, uid: u32, gid: u32 },
    /// A Xen guest, by the domid the hypervisor reports for the connection's other
    /// end (a libxenvchan transport; planned, not built).
    Xen { domid: u32 },
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerIdentity::Unix { pid, .. } => write!(f, "process {pid}"),
            PeerIdentity::Xen { domid } => write!(f, "xen domain {domid}"),
        }
    }
}

/// One accepted connection.
pub trait Connection: Read + Write + Send + 'static {
    fn peer(&self) -> PeerIdentity;
    /// Bounds each read and each write; `None` blocks forever.
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> std::io::Result<()>;
    /// Ends the connection in both directions (unblocks a reader in another thread).
    fn shutdown(&self);
    /// A second handle to the same connection, for a watcher thread.
    fn try_clone_conn(&self) -> std::io::Result<Self>
    where
        Self: Sized;
}

/// A source of connections.
pub trait Transport: Send + Sync + 'static {
    type Conn: Connection;
    fn accept(&self) -> std::io::Result<Self::Conn>;
    /// For logs: where this transport listens.
    fn describe(&self) -> String;
}

/// A listening Unix stream socket.
pub struct UnixTransport {
    listener: UnixListener,
    path: PathBuf,
}

impl UnixTransport {
    /// Binds `path` with permissions `mode`. A stale socket file left by a killed
    /// daemon is replaced; any other existing file is an error.
    pub fn bind(path: &Path, mode: u32) -> Result<Self> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
                .map_err(|e| Error::io(format!("removing stale socket {}", path.display()), e))?,
            Ok(_) => {
                return Err(Error::io(
                    format!("binding {}", path.display()),
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "path exists and is not a socket",
                    ),
                ))
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(path)
            .map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(format!("chmod {:o} {}", mode, path.display()), e))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Transport for UnixTransport {
    type Conn = UnixConn;

    fn accept(&self) -> std::io::Result<UnixConn> {
        let (stream, _) = self.listener.accept()?;
        let peer = peer_identity(&stream)?;
        Ok(UnixConn { stream, peer })
    }

    fn describe(&self) -> String {
        format!("unix:{}", self.path.display())
    }
}

pub struct UnixConn {
    stream: UnixStream,
    peer: PeerIdentity,
}

impl Read for UnixConn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for UnixConn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

impl Connection for UnixConn {
    fn peer(&self) -> PeerIdentity {
        self.peer
    }

    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> std::io::Result<()> {
        self.stream.set_read_timeout(read)?;
        self.stream.set_write_timeout(write)
    }

    fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    fn try_clone_conn(&self) -> std::io::Result<Self> {
        Ok(UnixConn {
            stream: self.stream.try_clone()?,
            peer: self.peer,
        })
    }
}

/// The credentials the kernel recorded when the peer connected (SO_PEERCRED).
pub fn peer_identity(stream: &UnixStream) -> std::io::Result<PeerIdentity> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a live, writable ucred and `len` holds its exact size, which is
    // what getsockopt(SO_PEERCRED) requires; the fd is owned by `stream` and open.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(PeerIdentity::Unix {
        pid: cred.pid as u32,
        uid: cred.uid,
        gid: cred.gid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_credentials_name_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let t = UnixTransport::bind(&path, 0o600).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _c = UnixStream::connect(&path).unwrap();
        let conn = t.accept().unwrap();
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        assert_eq!(
            conn.peer(),
            PeerIdentity::Unix {
                pid: std::process::id(),
                uid,
                // SAFETY: getgid has no preconditions.
                gid: unsafe { libc::getgid() },
            }
        );
    }

    #[test]
    fn stale_socket_is_replaced_but_other_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        drop(UnixTransport::bind(&path, 0o666).unwrap());
        UnixTransport::bind(&path, 0o666).expect("stale socket replaced");
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(UnixTransport::bind(&file, 0o666).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }
}
