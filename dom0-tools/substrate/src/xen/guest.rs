//! The database of a domU, as the orchestration uses it (`Endpoint`), reached through
//! the domU's guest side (`dbfork-guestd`) over its channel: dom0 never holds the
//! guest's SQL passwords nor needs its network. The channel is the domain's identity:
//! one per domU (on Xen, the Unix socket vchan-socket-proxy makes for that domU's
//! vchan); nothing a guest sends can claim to be another domain.

use crate::error::{Error, Result};
use crate::{CommitHold, Endpoint, WarmSet};
use dbinstance::{FlushReport, GtidPos, ReplicationSource, ReplicationStatus};
use guest_channel::{unexpected, Client, Reply, Request, Source};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long dom0 waits for one reply (a flush or a commit hold can take a while;
/// a guest that stops answering must not hang a clone forever).
const REPLY_TIMEOUT: Duration = Duration::from_secs(900);

type Channel = Arc<Mutex<Client<UnixStream>>>;

#[derive(Clone)]
pub struct GuestEndpoint {
    name: String,
    channel: Channel,
}

impl GuestEndpoint {
    /// Connects to `name`'s guest side on its channel's socket and checks it speaks
    /// this version of the protocol.
    pub fn connect(name: &str, socket: &Path) -> Result<GuestEndpoint> {
        let guest = |source| Error::Guest {
            name: name.to_string(),
            source,
        };
        let stream = UnixStream::connect(socket).map_err(|e| guest(guest_channel::Error::Io(e)))?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| guest(guest_channel::Error::Io(e)))?;
        Ok(GuestEndpoint {
            name: name.to_string(),
            channel: Arc::new(Mutex::new(Client::new(stream).map_err(guest)?)),
        })
    }

    fn call(&self, req: &Request) -> Result<Reply> {
        call(&self.channel, &self.name, req)
    }
}

fn call(channel: &Channel, name: &str, req: &Request) -> Result<Reply> {
    let mut c = channel.lock().unwrap_or_else(|p| p.into_inner());
    c.call(req).map_err(|source| Error::Guest {
        name: name.to_string(),
        source,
    })
}

impl GuestEndpoint {
    /// Freezes the file system of the guest's datadir until the guard drops (around a
    /// snapshot of its disk at dom0); the guest also thaws it if the channel closes.
    pub fn freeze_fs(&self) -> Result<GuestFreeze> {
        match self.call(&Request::FreezeFs)? {
            Reply::Frozen { mountpoint } => Ok(GuestFreeze {
                name: self.name.clone(),
                channel: self.channel.clone(),
                mountpoint,
            }),
            other => Err(self.unexpected("freeze_fs", other)),
        }
    }

    /// Tells the source's agent a snapshot at `lsn` is complete.
    pub fn publish_clone_lsn(&self, lsn: u64) -> Result<()> {
        self.expect_ok(&Request::PublishCloneLsn { lsn }, "publish_clone_lsn")
    }

    /// Tells the source's agent which replica domains to grant to.
    pub fn set_grantees(&self, domids: Vec<u32>) -> Result<()> {
        self.expect_ok(&Request::SetGrantees { domids }, "set_grantees")
    }

    /// The agent's live counters, if its server runs with one.
    pub fn agent_counters(&self) -> Result<Option<serde_json::Value>> {
        match self.call(&Request::AgentCounters)? {
            Reply::Counters { counters } => Ok(counters),
            other => Err(self.unexpected("agent_counters", other)),
        }
    }

    /// Tells a replica its source is going: it copies what it maps from it. How many
    /// frames it copied.
    pub fn release_source(&self) -> Result<u64> {
        match self.call(&Request::ReleaseSource)? {
            Reply::SourceReleased { frames } => Ok(frames),
            other => Err(self.unexpected("release_source", other)),
        }
    }

    /// What the guest's server and the guest use of memory.
    pub fn memory_use(&self) -> Result<crate::MemoryUse> {
        match self.call(&Request::MemoryUse)? {
            Reply::Memory { server, guest } => Ok(crate::MemoryUse {
                server,
                domain: guest,
            }),
            other => Err(self.unexpected("memory_use", other)),
        }
    }

    fn expect_ok(&self, req: &Request, asked: &'static str) -> Result<()> {
        match self.call(req)? {
            Reply::Ok => Ok(()),
            other => Err(self.unexpected(asked, other)),
        }
    }

    fn unexpected(&self, asked: &'static str, got: Reply) -> Error {
        Error::Guest {
            name: self.name.clone(),
            source: unexpected(asked, got),
        }
    }
}

impl Endpoint for GuestEndpoint {
    fn name(&self) -> &str {
        &self.name
    }
    fn make_replication_account(&self, _user: &str) -> Result<()> {
        // A domU's datadir is always dbfork's own (its guest made the account).
        Err(Error::NotForSubstrate {
            what: "a replication account on a server dbfork did not make".into(),
            substrate: crate::Kind::Xen,
            fix: "only local sources are taken over",
        })
    }
    fn require_binlog(&self) -> Result<()> {
        self.expect_ok(&Request::RequireBinlog, "require_binlog")
    }
    fn flush_dirty_pages(&self, target: u64, timeout: Duration) -> Result<FlushReport> {
        match self.call(&Request::FlushDirtyPages {
            target,
            timeout_ms: timeout.as_millis() as u64,
        })? {
            Reply::Flushed { report } => Ok(report),
            other => Err(self.unexpected("flush_dirty_pages", other)),
        }
    }
    fn warm_set(&self) -> Result<WarmSet> {
        match self.call(&Request::WarmSet)? {
            Reply::WarmSet { hot, spaces } => Ok(WarmSet {
                hot,
                spaces: spaces.into_iter().map(|t| (t.space_id, t)).collect(),
            }),
            other => Err(self.unexpected("warm_set", other)),
        }
    }
    fn rotate_binlog(&self) -> Result<()> {
        self.expect_ok(&Request::RotateBinlog, "rotate_binlog")
    }
    fn hold_commits(&self) -> Result<Box<dyn CommitHold>> {
        match self.call(&Request::HoldCommits)? {
            Reply::Held { gtid, lsn } => {
                let gtid: GtidPos = gtid.parse().map_err(|e: dbinstance::Error| {
                    // Whatever happens, the guest lets go: released on the way out.
                    let _ = self.call(&Request::ReleaseCommits);
                    Error::from(e)
                })?;
                Ok(Box::new(GuestHold {
                    name: self.name.clone(),
                    channel: self.channel.clone(),
                    gtid,
                    lsn,
                    released: false,
                }))
            }
            other => Err(self.unexpected("hold_commits", other)),
        }
    }
    fn replication_source(&self) -> Result<ReplicationSource> {
        match self.call(&Request::ReplicationSource)? {
            Reply::Source { source } => Ok(ReplicationSource {
                host: source.host,
                port: source.port,
                user: source.user,
                password: source.password,
            }),
            other => Err(self.unexpected("replication_source", other)),
        }
    }
    fn replicate_from(&self, source: &ReplicationSource, after: &GtidPos) -> Result<()> {
        self.expect_ok(
            &Request::ReplicateFrom {
                source: Source {
                    host: source.host.clone(),
                    port: source.port,
                    user: source.user.clone(),
                    password: source.password.clone(),
                },
                after: after.to_string(),
            },
            "replicate_from",
        )
    }
    fn resume_replication(&self, host: &str, port: u16, may_reset_binlog: bool) -> Result<()> {
        self.expect_ok(
            &Request::ResumeReplication {
                host: host.to_string(),
                port,
                may_reset_binlog,
            },
            "resume_replication",
        )
    }
    fn redo_flush_at_commit(&self) -> Result<u32> {
        match self.call(&Request::RedoFlushAtCommit)? {
            Reply::Durability { value } => Ok(value),
            other => Err(self.unexpected("redo_flush_at_commit", other)),
        }
    }
    fn replication_status(&self) -> Result<Option<ReplicationStatus>> {
        match self.call(&Request::ReplicationStatus)? {
            Reply::Replication { status } => status
                .map(ReplicationStatus::try_from)
                .transpose()
                .map_err(|source| Error::Guest {
                    name: self.name.clone(),
                    source,
                }),
            other => Err(self.unexpected("replication_status", other)),
        }
    }
}

/// The guest's datadir file system, frozen until dropped.
pub struct GuestFreeze {
    name: String,
    channel: Channel,
    /// Where the guest froze it (for messages).
    pub mountpoint: String,
}

impl Drop for GuestFreeze {
    fn drop(&mut self) {
        if let Err(e) = call(&self.channel, &self.name, &Request::ThawFs) {
            tracing::warn!(
                "thawing {}'s {}: {}",
                self.name,
                self.mountpoint,
                crate::error::chain(&e)
            );
        }
    }
}

/// Commits held in the guest; released by `release`, or when dropped (the guest also
/// releases them when the channel closes).
struct GuestHold {
    name: String,
    channel: Channel,
    gtid: GtidPos,
    lsn: u64,
    released: bool,
}

impl CommitHold for GuestHold {
    fn gtid(&self) -> &GtidPos {
        &self.gtid
    }
    fn lsn(&self) -> u64 {
        self.lsn
    }
    fn release(mut self: Box<Self>) -> Result<u64> {
        self.released = true;
        match call(&self.channel, &self.name, &Request::ReleaseCommits)? {
            Reply::Released { hold_ms } => Ok(hold_ms),
            other => Err(Error::Guest {
                name: self.name.clone(),
                source: unexpected("release_commits", other),
            }),
        }
    }
}

impl Drop for GuestHold {
    fn drop(&mut self) {
        if !self.released {
            if let Err(e) = call(&self.channel, &self.name, &Request::ReleaseCommits) {
                tracing::warn!(
                    "releasing {}'s commits: {}",
                    self.name,
                    crate::error::chain(&e)
                );
            }
        }
    }
}
