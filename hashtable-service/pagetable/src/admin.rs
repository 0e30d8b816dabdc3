//! The control protocol of the admin socket: one JSON object per line each way.
//! Rare, small, human-debuggable (`socat - UNIX:/run/pagetabled/admin.sock`), so serde
//! is fine here, unlike on the lookup path.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

use crate::connector::{Connector, UnixConnector};
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
    /// Connections from `pid` come from Xen domain `domid` and act as `domain`: a dom0
    /// process that carries that one domain's channel and nothing else (the
    /// dbfork-vchan-relay dbfork starts for it), so the domid comes from the channel,
    /// never from a message. Removed with `unbind_pid`.
    BindChannel {
        pid: u32,
        domid: u32,
        domain: DomainId,
    },
    /// Connections from Xen domain `domid` act as `domain` (the `xen` substrate's
    /// `bind_pid`: the peer identity is the domid the hypervisor reports for the
    /// connection). The binding lasts until it is unbound or the domain is removed;
    /// the toolstack unbinds a domU before destroying it, so a recycled domid never
    /// inherits a binding.
    BindDomid {
        domid: u32,
        domain: DomainId,
    },
    UnbindDomid {
        domid: u32,
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
    /// Drops the domain's entries, its membership and its pid and domid bindings.
    RemoveDomain {
        domain: DomainId,
    },
    Stats,
    /// Every entry of a family, for checks from outside (it walks the whole table:
    /// tests and debugging, not the serving path).
    FamilyEntries {
        family: FamilyId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AdminReply {
    Ok,
    Removed { entries: usize },
    Stats(StatsReport),
    Entries { entries: Vec<EntryDump> },
    Error { message: String },
}

/// One entry of a family as `FamilyEntries` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryDump {
    pub space_id: u32,
    pub page_no: u32,
    /// The domain whose memory the frame is.
    pub owner: u32,
    pub lsn: u64,
    pub valid_from: u64,
    /// For a `local` frame: its byte offset in the family's pool file.
    pub pool_offset: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    pub generation: u64,
    /// Client connections open now.
    pub connections: usize,
    pub families: Vec<FamilyStats>,
}

/// Bound on each admin read and write.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A blocking admin connection. The admin socket is dom0-local: the daemon refuses
/// peers that are not local processes, whatever connector reached it.
pub struct AdminClient<C: Connector = UnixConnector> {
    /// Reads are buffered (replies are lines); writes go to the same stream unbuffered,
    /// which is safe because each request is written whole before its reply is read.
    stream: BufReader<C::Stream>,
}

impl AdminClient<UnixConnector> {
    /// Connects to the admin socket at `path` (`ADMIN_TIMEOUT` on reads and writes).
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        Self::with_connector(&UnixConnector::new(path).with_timeout(ADMIN_TIMEOUT))
    }
}

impl<C: Connector> AdminClient<C> {
    /// Connects once through `connector`; an admin client does not reconnect, so it
    /// only borrows the connector.
    pub fn with_connector(connector: &C) -> Result<Self> {
        Ok(Self {
            stream: BufReader::new(connector.connect()?),
        })
    }

    /// Sends one request; a refusal comes back as `Error::Admin`.
    pub fn call(&mut self, req: &AdminRequest) -> Result<AdminReply> {
        let mut line = serde_json::to_vec(req).map_err(Error::AdminJson)?;
        line.push(b'\n');
        self.stream
            .get_mut()
            .write_all(&line)
            .map_err(|e| Error::io("sending an admin request", e))?;
        let mut reply = String::new();
        let n = self
            .stream
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
    use std::cell::RefCell;
    use std::io::Read;
    use std::rc::Rc;

    /// A stream that records what is written and answers with canned bytes.
    struct Canned {
        reply: std::io::Cursor<Vec<u8>>,
        sent: Rc<RefCell<Vec<u8>>>,
    }
    impl Read for Canned {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.reply.read(buf)
        }
    }
    impl Write for Canned {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.sent.borrow_mut().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    struct CannedConnector(&'static str, Rc<RefCell<Vec<u8>>>);
    impl Connector for CannedConnector {
        type Stream = Canned;
        fn connect(&self) -> Result<Canned> {
            Ok(Canned {
                reply: std::io::Cursor::new(self.0.as_bytes().to_vec()),
                sent: self.1.clone(),
            })
        }
        fn describe(&self) -> String {
            "canned".into()
        }
    }

    #[test]
    fn admin_client_speaks_json_lines_over_any_connector() {
        let sent = Rc::new(RefCell::new(Vec::new()));
        let c = CannedConnector(
            "{\"result\":\"ok\"}\n{\"result\":\"error\",\"message\":\"no\"}\n",
            sent.clone(),
        );
        let mut a = AdminClient::with_connector(&c).unwrap();
        let req = AdminRequest::FamilyCreate {
            family: FamilyId(9),
        };
        assert_eq!(a.call(&req).unwrap(), AdminReply::Ok);
        assert_eq!(
            &sent.borrow()[..],
            b"{\"op\":\"family_create\",\"family\":9}\n"
        );
        let e = a.call(&req).unwrap_err();
        assert!(matches!(&e, Error::Admin(m) if m == "no"), "{e:?}");
        let e = a.call(&req).unwrap_err();
        assert!(e.to_string().contains("closed"), "{e}");
    }

    #[test]
    fn requests_are_readable_json() {
        let r = AdminRequest::BindPid {
            pid: 42,
            domain: DomainId(7),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"bind_pid","pid":42,"domain":7}"#);
        assert_eq!(serde_json::from_str::<AdminRequest>(&s).unwrap(), r);
        let c = AdminRequest::BindChannel {
            pid: 42,
            domid: 3,
            domain: DomainId(7),
        };
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(s, r#"{"op":"bind_channel","pid":42,"domid":3,"domain":7}"#);
        assert_eq!(serde_json::from_str::<AdminRequest>(&s).unwrap(), c);
        assert!(serde_json::from_str::<AdminRequest>(r#"{"op":"bind_pid","pid":1}"#).is_err());
        assert!(serde_json::from_str::<AdminRequest>(r#"{"op":"format_disk"}"#).is_err());
        let x = AdminRequest::BindDomid {
            domid: 5,
            domain: DomainId(7),
        };
        let s = serde_json::to_string(&x).unwrap();
        assert_eq!(s, r#"{"op":"bind_domid","domid":5,"domain":7}"#);
        assert_eq!(serde_json::from_str::<AdminRequest>(&s).unwrap(), x);
        assert_eq!(
            serde_json::from_str::<AdminRequest>(r#"{"op":"unbind_domid","domid":5}"#).unwrap(),
            AdminRequest::UnbindDomid { domid: 5 }
        );
    }
}
