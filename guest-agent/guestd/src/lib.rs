//! The dbfork side of a guest. It holds what dom0 must not: a session to the guest's
//! own MariaDB (root over its Unix socket) and the replication account it stored, and
//! it answers dom0's requests over the guest's channel (`guest-channel`). On Xen,
//! dbfork-vchan-relay bridges the domU's vchan to the Unix socket this listens on.
//!
//! One request at a time per connection; a malformed request gets an error reply and
//! the connection goes on; a connection that ends releases what it held (commits held
//! for a consistent point), so a dom0 that dies mid-clone never leaves the guest's
//! database blocked.

pub mod agent;

use agent::GuestAgent;
use dbinstance::{ConsistentPoint, GtidPos, Instance, ReplCredentials, ReplicationSource};
use guest_channel::{read_line, write_message, Reply, Request, Source, MAX_REQUEST, VERSION};
use std::io::{Read, Write};
use std::time::Duration;

/// How long a replica's agent gets to copy what it maps from its source.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest flush dom0 may ask for.
const MAX_FLUSH: Duration = Duration::from_secs(600);

/// One connection's state: the commits it holds and the file system it froze, if any
/// (both let go when the connection ends).
struct Session<'a> {
    inst: &'a Instance,
    agent: Option<&'a GuestAgent>,
    hold: Option<ConsistentPoint>,
    frozen: Option<Frozen>,
}

/// A file system frozen with FIFREEZE (fsfreeze); thawed when dropped.
struct Frozen {
    mountpoint: std::path::PathBuf,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(e) = fsfreeze("-u", &self.mountpoint) {
            tracing::error!("thawing {}: {e}", self.mountpoint.display());
        }
    }
}

fn fsfreeze(flag: &str, mountpoint: &std::path::Path) -> Result<(), String> {
    let out = std::process::Command::new("fsfreeze")
        .arg(flag)
        .arg(mountpoint)
        .output()
        .map_err(|e| format!("running fsfreeze (util-linux): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "fsfreeze {flag} {}: {}",
            mountpoint.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The mount point of the file system holding `path` (the longest mount point that
/// is a prefix of its canonical form).
fn mountpoint_of(path: &std::path::Path) -> Result<std::path::PathBuf, String> {
    let canon = path
        .canonicalize()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| std::path::PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| canon.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
        .ok_or_else(|| format!("no mount holds {}", canon.display()))
}

/// Serves one connection until it ends. `agent` is the server's page-sharing agent,
/// when it runs with one.
pub fn serve(
    stream: impl Read + Write,
    inst: &Instance,
    agent: Option<&GuestAgent>,
) -> guest_channel::Result<()> {
    let mut reader = std::io::BufReader::new(stream);
    let mut s = Session {
        inst,
        agent,
        hold: None,
        frozen: None,
    };
    loop {
        let reply = match read_line(&mut reader, MAX_REQUEST) {
            Ok(None) => return Ok(()),
            Ok(Some(line)) => match Request::decode(&line) {
                Ok(req) => s.handle(req),
                Err(e) => error(&e),
            },
            Err(guest_channel::Error::TooLong { max }) => {
                // The rest of that line is read away as lines come; answer and go on.
                error(&guest_channel::Error::TooLong { max })
            }
            Err(e) => return Err(e),
        };
        write_message(reader.get_mut(), &reply)?;
    }
}

/// How long the server's memory may take to read before the answer goes without it.
const MEMORY_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The server's memory, read off this connection's thread: walking its mappings takes
/// its address space's lock, which the server's own mapping changes may hold a while,
/// and a status request must not hang the channel meanwhile.
fn server_memory(pid: u32) -> Option<dbinstance::memory::ProcessMemory> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("memory-read".into())
        .spawn(move || {
            let _ = tx.send(dbinstance::memory::process_memory(pid));
        })
        .ok()?;
    match rx.recv_timeout(MEMORY_READ_TIMEOUT) {
        Ok(m) => m,
        Err(_) => {
            tracing::warn!(
                "reading the server's memory (pid {pid}) took over {MEMORY_READ_TIMEOUT:?}"
            );
            None
        }
    }
}

fn error(e: &dyn std::error::Error) -> Reply {
    let mut message = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !message.ends_with(&t) {
            message.push_str(": ");
            message.push_str(&t);
        }
        src = s.source();
    }
    Reply::Error { message }
}

impl Session<'_> {
    fn handle(&mut self, req: Request) -> Reply {
        match req {
            Request::PublishCloneLsn { lsn } => {
                self.with_source_agent(|a| a.publish_clone_lsn(lsn))
            }
            Request::SetGrantees { domids } => self.with_source_agent(|a| a.set_grantees(&domids)),
            Request::AgentCounters => Reply::Counters {
                counters: self.agent.and_then(GuestAgent::counters),
            },
            Request::ReleaseSource => match self.agent {
                Some(a) if !a.is_source() => match a.release_source(RELEASE_TIMEOUT) {
                    Ok(frames) => Reply::SourceReleased { frames },
                    Err(e) => error(&e),
                },
                _ => Reply::Error {
                    message: "this guest's server maps nothing from a source (no replica agent)"
                        .into(),
                },
            },
            Request::MemoryUse => Reply::Memory {
                server: self.inst.pid().and_then(|p| server_memory(p as u32)),
                guest: dbinstance::memory::system_memory(),
            },
            req => self.answer_sql(req),
        }
    }

    /// Rewrites one of the source agent's files; refused where there is none.
    fn with_source_agent(&self, f: impl FnOnce(&GuestAgent) -> std::io::Result<()>) -> Reply {
        match self.agent {
            Some(a) if a.is_source() => match f(a) {
                Ok(()) => Reply::Ok,
                Err(e) => error(&e),
            },
            Some(_) => Reply::Error {
                message: "this guest's server is a replica; only a family's source offers pages"
                    .into(),
            },
            None => Reply::Error {
                message: "this guest's server runs without a page-sharing agent (dom0 gave it \
                          none at boot: restart it with sharing on)"
                    .into(),
            },
        }
    }

    fn answer_sql(&mut self, req: Request) -> Reply {
        match self.answer(req) {
            Ok(r) => r,
            Err(e) => error(&e),
        }
    }

    fn answer(&mut self, req: Request) -> dbinstance::Result<Reply> {
        let inst = self.inst;
        Ok(match req {
            Request::Hello { .. } => Reply::Hello { version: VERSION },
            Request::RequireBinlog => {
                inst.require_binlog()?;
                Reply::Ok
            }
            Request::FlushDirtyPages { target, timeout_ms } => Reply::Flushed {
                report: dbinstance::flush_dirty_pages(
                    inst,
                    target,
                    Duration::from_millis(timeout_ms).min(MAX_FLUSH),
                )?,
            },
            Request::WarmSet => Reply::WarmSet {
                hot: dbinstance::dump_buffer_pool(inst)?,
                spaces: dbinstance::tablespace_files(inst)?.into_values().collect(),
            },
            Request::RotateBinlog => {
                inst.exec("FLUSH BINARY LOGS")?;
                Reply::Ok
            }
            Request::HoldCommits => {
                if self.hold.is_some() {
                    return Ok(Reply::Error {
                        message: "commits are held already (release them first)".into(),
                    });
                }
                let cp = ConsistentPoint::begin(inst)?;
                let reply = Reply::Held {
                    gtid: cp.gtid().to_string(),
                    lsn: cp.lsn(),
                };
                self.hold = Some(cp);
                reply
            }
            Request::ReleaseCommits => match self.hold.take() {
                Some(cp) => Reply::Released {
                    hold_ms: cp.finish()?,
                },
                None => Reply::Error {
                    message: "no commits are held".into(),
                },
            },
            Request::FreezeFs => {
                if let Some(f) = &self.frozen {
                    return Ok(Reply::Error {
                        message: format!(
                            "{} is frozen already (thaw it first)",
                            f.mountpoint.display()
                        ),
                    });
                }
                let mp = match mountpoint_of(&inst.config().datadir) {
                    Ok(mp) => mp,
                    Err(message) => return Ok(Reply::Error { message }),
                };
                if mp == std::path::Path::new("/") {
                    return Ok(Reply::Error {
                        message:
                            "the datadir is on the root file system: freezing it would freeze \
                                  the guest itself; put the datadir on its own disk"
                                .into(),
                    });
                }
                if let Err(message) = fsfreeze("-f", &mp) {
                    return Ok(Reply::Error { message });
                }
                let reply = Reply::Frozen {
                    mountpoint: mp.display().to_string(),
                };
                self.frozen = Some(Frozen { mountpoint: mp });
                reply
            }
            Request::ThawFs => match self.frozen.take() {
                // Thawed by the drop, which logs a failure; a failed thaw leaves the
                // file system frozen, which the next FreezeFs would say.
                Some(_) => Reply::Ok,
                None => Reply::Error {
                    message: "no file system is frozen".into(),
                },
            },
            Request::ReplicationSource => {
                let s = ReplicationSource::of(inst)?;
                Reply::Source {
                    source: Source {
                        host: s.host,
                        port: s.port,
                        user: s.user,
                        password: s.password,
                    },
                }
            }
            Request::ReplicateFrom { source, after } => {
                let after: GtidPos = after.parse()?;
                inst.store_repl_credentials(&ReplCredentials {
                    user: source.user.clone(),
                    password: source.password.clone(),
                })?;
                let source = ReplicationSource {
                    host: source.host,
                    port: source.port,
                    user: source.user,
                    password: source.password,
                };
                dbinstance::configure_replica(inst, &source, &after)?;
                Reply::Ok
            }
            Request::ResumeReplication {
                host,
                port,
                may_reset_binlog,
            } => {
                dbinstance::resume_replica(inst, &host, port, may_reset_binlog)?;
                Reply::Ok
            }
            Request::RedoFlushAtCommit => {
                let v: Option<u64> =
                    inst.query_scalar("SELECT @@GLOBAL.innodb_flush_log_at_trx_commit")?;
                Reply::Durability {
                    value: v.unwrap_or(1) as u32,
                }
            }
            Request::ReplicationStatus => Reply::Replication {
                status: dbinstance::replication_status(inst)?.map(Into::into),
            },
            // Answered by `handle`, never reaching here.
            Request::PublishCloneLsn { .. }
            | Request::SetGrantees { .. }
            | Request::AgentCounters
            | Request::ReleaseSource
            | Request::MemoryUse => Reply::Error {
                message: "an agent request reached the server's session".into(),
            },
        })
    }
}
