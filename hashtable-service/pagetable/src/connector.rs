//! How a client reaches the daemon: the client-side half of the transport seam
//! (`transport` is the daemon's half). `Client` and `AdminClient` speak their protocols
//! over whatever stream a `Connector` opens, so the Xen substrate adds a libxenvchan
//! connector (planned, not built) without touching either client.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// Opens connections to one daemon endpoint. Called again for every reconnect, so an
/// implementation holds the address, not a connection.
pub trait Connector {
    type Stream: Read + Write;
    /// A new connection, with whatever bounds on reads and writes the connector was
    /// built with already applied (a client must never hang on a dead daemon).
    fn connect(&self) -> Result<Self::Stream>;
    /// For logs and errors: where this connector connects.
    fn describe(&self) -> String;
}

/// A Unix stream socket by path (the `local` substrate).
#[derive(Debug, Clone)]
pub struct UnixConnector {
    path: PathBuf,
    timeout: Option<Duration>,
}

impl UnixConnector {
    /// Connects to `path` with no timeout on reads and writes.
    pub fn new(path: impl AsRef<Path>) -> Self {
        UnixConnector {
            path: path.as_ref().to_owned(),
            timeout: None,
        }
    }

    /// Bounds each read and each write on the connections this opens.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Connector for UnixConnector {
    type Stream = UnixStream;

    fn connect(&self) -> Result<UnixStream> {
        let stream = UnixStream::connect(&self.path)
            .map_err(|e| Error::io(format!("connecting to {}", self.path.display()), e))?;
        stream
            .set_read_timeout(self.timeout)
            .and_then(|_| stream.set_write_timeout(self.timeout))
            .map_err(|e| Error::io("setting socket timeouts", e))?;
        Ok(stream)
    }

    fn describe(&self) -> String {
        format!("unix:{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn unix_connector_applies_its_timeout_to_every_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        // Whole seconds: the kernel keeps socket timeouts in jiffies.
        let c = UnixConnector::new(&path).with_timeout(Duration::from_secs(2));
        assert_eq!(c.describe(), format!("unix:{}", path.display()));
        for _ in 0..2 {
            let s = c.connect().unwrap();
            assert_eq!(s.read_timeout().unwrap(), Some(Duration::from_secs(2)));
            assert_eq!(s.write_timeout().unwrap(), Some(Duration::from_secs(2)));
        }
        let untimed = UnixConnector::new(&path).connect().unwrap();
        assert_eq!(untimed.read_timeout().unwrap(), None);
    }

    #[test]
    fn a_missing_socket_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody.sock");
        let err = UnixConnector::new(&path).connect().unwrap_err();
        match err {
            Error::Io { what, source } => {
                assert!(what.contains(&path.display().to_string()), "{what}");
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected an i/o error, got {other:?}"),
        }
    }
}
