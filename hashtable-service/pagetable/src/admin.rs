//! The control protocol of the admin socket: one JSON object per line each way.
//! Rare, small, human-debuggable (`socat - UNIX:/run/pagetabled/admin.sock`), so serde
//! is fine here, unlike on the lookup path.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::ids::{DomainId, FamilyId};
use crate::stats::FamilyStats;

/// Longest admin line accepted, in bytes.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    /// Connections from `pid` act as `domain` (the domain must be in a family).
    BindPid {
        pid: u32,
        domain: DomainId,
    },
    UnbindPid {
        pid: u32,
    },
    FamilyCreate {
        family: FamilyId,
    },
    /// Drops the family, its members and all their entries.
    FamilyDestroy {
        family: FamilyId,
    },
    FamilyAdd {
        family: FamilyId,
        domain: DomainId,
    },
    FamilyRemove {
        family: FamilyId,
        domain: DomainId,
    },
    /// Drops the domain's entries, its membership and its pid bindings.
    RemoveDomain {
        domain: DomainId,
    },
    Stats,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AdminReply {
    Ok,
    Removed { entries: usize },
    Stats(StatsReport),
    Error { message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    pub generation: u64,
    /// Client connections open now.
    pub connections: usize,
    pub families: Vec<FamilyStats>,
}

/// A blocking admin connection.
pub struct AdminClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl AdminClient {
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path)
            .map_err(|e| Error::io(format!("connecting to {}", path.display()), e))?;
        let timeout = Some(Duration::from_secs(10));
        stream
            .set_read_timeout(timeout)
            .and_then(|_| stream.set_write_timeout(timeout))
            .map_err(|e| Error::io("setting socket timeouts", e))?;
        let writer = stream
            .try_clone()
            .map_err(|e| Error::io("cloning the admin socket", e))?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends one request; a refusal comes back as `Error::Admin`.
    pub fn call(&mut self, req: &AdminRequest) -> Result<AdminReply> {
        let mut line = serde_json::to_vec(req).map_err(Error::AdminJson)?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .map_err(|e| Error::io("sending an admin request", e))?;
        let mut reply = String::new();
        let n = self
            .reader
            .read_line(&mut reply)
            .map_err(|e| Error::io("reading an admin reply", e))?;
        if n == 0 {
            return Err(Error::Admin("daemon closed the admin connection".into()));
        }
        match serde_json::from_str(&reply).map_err(Error::AdminJson)? {
            AdminReply::Error { message } => Err(Error::Admin(message)),
            r => Ok(r),
        }
    }

    pub fn stats(&mut self) -> Result<StatsReport> {
        match self.call(&AdminRequest::Stats)? {
            AdminReply::Stats(s) => Ok(s),
            other => Err(Error::Admin(format!("unexpected reply {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_readable_json() {
        let r = AdminRequest::BindPid {
            pid: 42,
            domain: DomainId(7),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"bind_pid","pid":42,"domain":7}"#);
        assert_eq!(serde_json::from_str::<AdminRequest>(&s).unwrap(), r);
        assert!(serde_json::from_str::<AdminRequest>(r#"{"op":"bind_pid","pid":1}"#).is_err());
        assert!(serde_json::from_str::<AdminRequest>(r#"{"op":"format_disk"}"#).is_err());
    }
}
