//! The channel between dom0 and the dbfork side of a guest (`dbfork-guestd`): what
//! dom0 asks of the guest's database server for a clone (a consistent point, the warm
//! set, replication setup) without knowing the guest's SQL passwords or reaching its
//! network.
//!
//! One request, one reply, each one JSON object on one line. dom0 reaches each guest
//! through its own channel (on Xen: a vchan per domU, bridged to a Unix socket in dom0
//! by dbfork-vchan-relay), so which domain answers is known from the channel it came
//! on, never from anything in a message. Both directions are bounded: a request at
//! most `MAX_REQUEST` bytes (the guest reads dom0's), a reply at most `MAX_REPLY` (dom0
//! reads what an untrusted guest sends), and a reply that does not decode is an error,
//! never a panic (the decoders are fuzzed).

use dbinstance::memory::{ProcessMemory, SystemMemory};
use dbinstance::{FlushReport, PageId, ReplicationStatus, TablespaceFile};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};

/// The protocol's version: a guest answers `Hello` with its own, and dom0 refuses a
/// guest that speaks another.
pub const VERSION: u32 = 2;
pub const MAX_REQUEST: usize = 64 * 1024;
/// The warm set of an 8 GB buffer pool (half a million pages) fits with room to spare.
pub const MAX_REPLY: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the channel to the guest")]
    Io(#[from] std::io::Error),
    #[error("the channel closed")]
    Closed,
    #[error("a line longer than {max} bytes")]
    TooLong { max: usize },
    #[error("a message that does not decode")]
    Decode(#[source] serde_json::Error),
    #[error(
        "the guest speaks protocol {guest}, dom0 {dom0}: install the same dbfork version in both"
    )]
    Version { guest: u32, dom0: u32 },
    #[error("the guest answered {got} to {asked}")]
    Unexpected { asked: &'static str, got: String },
    #[error("the guest: {0}")]
    Guest(String),
    #[error("the channel failed on an earlier request (its reply may still come): connect again")]
    Broken,
}

pub type Result<T> = std::result::Result<T, Error>;

/// What dom0 asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Hello {
        version: u32,
    },
    RequireBinlog,
    FlushDirtyPages {
        target: u64,
        timeout_ms: u64,
    },
    WarmSet,
    RotateBinlog,
    /// Holds commits (BACKUP STAGE BLOCK_COMMIT) until `ReleaseCommits` or until the
    /// channel closes, whichever comes first.
    HoldCommits,
    ReleaseCommits,
    /// Freezes the file system holding the datadir (FIFREEZE) until `ThawFs` or until
    /// the channel closes: what a snapshot of the disk at dom0 must see still.
    FreezeFs,
    ThawFs,
    ReplicationSource,
    ReplicateFrom {
        source: Source,
        after: String,
    },
    ResumeReplication {
        host: String,
        port: u16,
        may_reset_binlog: bool,
    },
    RedoFlushAtCommit,
    ReplicationStatus,
    /// (A source sharing pages) a snapshot at `lsn` is complete: the agent offers its
    /// frames as valid for clones at or after it.
    PublishCloneLsn {
        lsn: u64,
    },
    /// (A source sharing pages) the replica domains its agent grants its frames to;
    /// a domain left out is a replica that went.
    SetGrantees {
        domids: Vec<u32>,
    },
    /// The agent's live counters (`None` when the server runs without one, or it has
    /// written none yet).
    AgentCounters,
    /// What the server and the guest use of memory.
    MemoryUse,
    /// (A replica sharing pages) its source is going away: every frame mapped from it
    /// is copied into the replica's own memory, and it maps nothing more from it.
    ReleaseSource,
}

/// What a guest's agent does in its family: dom0 hands it over at boot (JSON at
/// `dbfork/agent` in the domain's xenstore directory) and the guest side configures
/// the agent it preloads into the server from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSetup {
    /// The family's id in dom0's page table.
    pub family: u32,
    /// This domain's id in the family.
    pub domain: u32,
    pub role: AgentRole,
}

/// The agent's part in page sharing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentRole {
    /// Grants its pool's frames to the family's replicas: the pool is capped at
    /// `pool_max_bytes`; `clone_lsn` is the family's last published (0 before the
    /// first clone), `grantees` the replica domains running now.
    Source {
        pool_max_bytes: u64,
        clone_lsn: u64,
        grantees: Vec<u32>,
    },
    /// Maps what the share rule allows under its snapshot LSN.
    Replica { snapshot_lsn: u64 },
}

/// Where and as whom a replica connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

/// What the guest answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    Hello {
        version: u32,
    },
    Ok,
    Flushed {
        report: FlushReport,
    },
    WarmSet {
        hot: Vec<PageId>,
        spaces: Vec<TablespaceFile>,
    },
    Held {
        gtid: String,
        lsn: u64,
    },
    Released {
        hold_ms: u64,
    },
    Frozen {
        mountpoint: String,
    },
    Source {
        source: Source,
    },
    Durability {
        value: u32,
    },
    Replication {
        status: Option<Replication>,
    },
    Counters {
        counters: Option<serde_json::Value>,
    },
    Memory {
        server: Option<ProcessMemory>,
        guest: Option<SystemMemory>,
    },
    SourceReleased {
        frames: u64,
    },
    Error {
        message: String,
    },
}

/// A replica's status on the wire: dbinstance's `ReplicationStatus` with its GTID
/// position as text (an internally tagged reply cannot carry a map with number keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replication {
    pub io_running: String,
    pub sql_running: bool,
    pub seconds_behind_master: Option<u64>,
    pub last_io_errno: u32,
    pub last_io_error: String,
    pub last_sql_errno: u32,
    pub last_sql_error: String,
    pub gtid_slave_pos: String,
    pub master_host: String,
    pub master_port: u16,
}

impl From<ReplicationStatus> for Replication {
    fn from(s: ReplicationStatus) -> Self {
        Replication {
            io_running: s.io_running,
            sql_running: s.sql_running,
            seconds_behind_master: s.seconds_behind_master,
            last_io_errno: s.last_io_errno,
            last_io_error: s.last_io_error,
            last_sql_errno: s.last_sql_errno,
            last_sql_error: s.last_sql_error,
            gtid_slave_pos: s.gtid_slave_pos.to_string(),
            master_host: s.master_host,
            master_port: s.master_port,
        }
    }
}

impl TryFrom<Replication> for ReplicationStatus {
    type Error = Error;
    fn try_from(r: Replication) -> Result<Self> {
        Ok(ReplicationStatus {
            gtid_slave_pos: r
                .gtid_slave_pos
                .parse()
                .map_err(|e: dbinstance::Error| Error::Guest(format!("a replica position: {e}")))?,
            io_running: r.io_running,
            sql_running: r.sql_running,
            seconds_behind_master: r.seconds_behind_master,
            last_io_errno: r.last_io_errno,
            last_io_error: r.last_io_error,
            last_sql_errno: r.last_sql_errno,
            last_sql_error: r.last_sql_error,
            master_host: r.master_host,
            master_port: r.master_port,
        })
    }
}

impl Request {
    pub fn decode(line: &[u8]) -> Result<Request> {
        if line.len() > MAX_REQUEST {
            return Err(Error::TooLong { max: MAX_REQUEST });
        }
        serde_json::from_slice(line).map_err(Error::Decode)
    }
}

impl AgentSetup {
    /// Reads what dom0 wrote (at most a xenstore value's 4 KiB).
    pub fn decode(text: &[u8]) -> Result<AgentSetup> {
        if text.len() > 4096 {
            return Err(Error::TooLong { max: 4096 });
        }
        serde_json::from_slice(text).map_err(Error::Decode)
    }
}

impl Reply {
    pub fn decode(line: &[u8]) -> Result<Reply> {
        if line.len() > MAX_REPLY {
            return Err(Error::TooLong { max: MAX_REPLY });
        }
        serde_json::from_slice(line).map_err(Error::Decode)
    }
}

/// Reads one line of at most `max` bytes (without its newline); `None` at a clean end.
pub fn read_line(r: &mut impl BufRead, max: usize) -> Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = std::io::Read::take(&mut *r, max as u64 + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > max {
        return Err(Error::TooLong { max });
    }
    Ok(Some(line))
}

/// Writes one message as a line.
pub fn write_message(w: &mut impl Write, msg: &impl Serialize) -> Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(Error::Decode)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()?;
    Ok(())
}

/// dom0's end of one guest's channel.
pub struct Client<S: std::io::Read + Write> {
    reader: std::io::BufReader<S>,
    /// A request failed with the stream out of step (a read timed out, a line was cut):
    /// the next line read could answer an earlier request, so no more are sent.
    broken: bool,
}

impl<S: std::io::Read + Write> Client<S> {
    /// Greets the guest and checks it speaks this protocol.
    pub fn new(stream: S) -> Result<Self> {
        let mut c = Client {
            reader: std::io::BufReader::new(stream),
            broken: false,
        };
        match c.call(&Request::Hello { version: VERSION })? {
            Reply::Hello { version } if version == VERSION => Ok(c),
            Reply::Hello { version } => Err(Error::Version {
                guest: version,
                dom0: VERSION,
            }),
            other => Err(unexpected("hello", other)),
        }
    }

    /// One request, its reply; a guest's error reply is an `Error::Guest`. After a
    /// request whose reply was not read whole, every call is `Error::Broken`.
    pub fn call(&mut self, req: &Request) -> Result<Reply> {
        if self.broken {
            return Err(Error::Broken);
        }
        let line = write_message(self.reader.get_mut(), req)
            .and_then(|()| read_line(&mut self.reader, MAX_REPLY)?.ok_or(Error::Closed))
            .inspect_err(|_| self.broken = true)?;
        match Reply::decode(&line)? {
            Reply::Error { message } => Err(Error::Guest(message)),
            r => Ok(r),
        }
    }

    /// Whether a request failed with the stream out of step (see `call`).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The stream under the client (for its timeouts).
    pub fn stream(&self) -> &S {
        self.reader.get_ref()
    }
}

/// The error for a reply that does not answer what was asked.
pub fn unexpected(asked: &'static str, got: Reply) -> Error {
    let got = serde_json::to_string(&got).unwrap_or_else(|_| "?".into());
    Error::Unexpected {
        asked,
        got: got.chars().take(200).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_ones_are_errors() {
        let r = Request::ReplicateFrom {
            source: Source {
                host: "10.0.0.2".into(),
                port: 3306,
                user: "dbfork_repl".into(),
                password: "p\"w".into(),
            },
            after: "0-1-5".into(),
        };
        let line = serde_json::to_vec(&r).unwrap();
        assert_eq!(Request::decode(&line).unwrap(), r);
        for bad in [
            &b"{}"[..],
            b"{\"op\":\"format_disk\"}",
            b"{\"op\":\"flush_dirty_pages\",\"target\":\"x\",\"timeout_ms\":1}",
            b"\xff",
        ] {
            assert!(Request::decode(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            Request::decode(&vec![b' '; MAX_REQUEST + 1]),
            Err(Error::TooLong { .. })
        ));
        let mut long = std::io::Cursor::new(vec![b'x'; 100]);
        assert!(matches!(
            read_line(&mut long, 10),
            Err(Error::TooLong { max: 10 })
        ));
        let mut two = std::io::Cursor::new(b"a\nb".to_vec());
        assert_eq!(read_line(&mut two, 10).unwrap().unwrap(), b"a");
        assert_eq!(read_line(&mut two, 10).unwrap().unwrap(), b"b");
        assert_eq!(read_line(&mut two, 10).unwrap(), None);
    }

    #[test]
    fn an_agent_setup_round_trips_and_refuses_what_it_does_not_know() {
        let s = AgentSetup {
            family: 3,
            domain: 5,
            role: AgentRole::Source {
                pool_max_bytes: 1 << 26,
                clone_lsn: 77,
                grantees: vec![6, 9],
            },
        };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<AgentSetup>(&text).unwrap(), s);
        for bad in [
            r#"{"family":3,"domain":5,"role":{"role":"boss"}}"#,
            r#"{"family":3,"domain":5,"role":{"role":"replica"}}"#,
            r#"{"family":3,"domain":5,"role":{"role":"replica","snapshot_lsn":1},"x":1}"#,
        ] {
            assert!(serde_json::from_str::<AgentSetup>(bad).is_err(), "{bad}");
        }
        let c = Reply::Counters {
            counters: Some(serde_json::json!({"offers": 2})),
        };
        let line = serde_json::to_vec(&c).unwrap();
        assert_eq!(Reply::decode(&line).unwrap(), c);
    }
}
