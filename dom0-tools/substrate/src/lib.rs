//! Where dbfork's database servers run: the seam between the orchestration (sources,
//! clones, destroy) and the substrate that hosts them.
//!
//! One narrow trait, [`Substrate`], says what differs between a server that is a host
//! process (`local`, this crate's [`local`] module) and one that is a Xen domU (`xen`,
//! [`xen`]): attaching a volume to a domain, quiescing it for a snapshot, starting
//! and stopping the domain with its page-table membership, agent and read limit in
//! place before the server's first instruction, reaching its database ([`Endpoint`]),
//! publishing the family's clone LSN, reading the agent's counters, and sweeping what
//! deleted stores left behind. What a backend must remember about a domain lives in
//! [`DomainState`], a serde enum the orchestration keeps in the instance record.
//!
//! Everything above the seam (volumes, page identity, the share rule, replica setup,
//! the CLI) is the same code for every substrate. The volume engine and its export
//! process ([`export`]) are dom0 services that every backend uses.

pub mod error;
pub mod export;
pub mod local;
pub mod page_table;
pub mod process;
mod run_dir;
pub mod xen;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dbinstance::{FlushReport, GtidPos, InstanceConfig, PageId, ReplicationSource};
use dbinstance::{ReplicationStatus, TablespaceFile};
use serde::{Deserialize, Serialize};

pub use error::{BoxError, Error, Result};
pub use page_table::PageTableService;
pub use run_dir::{RunDir, DEFAULT_STORE};

/// An instance record (JSON) as this version reads it: a record written before the
/// substrate seam (all of them local instances, the backend's state in the record
/// itself) gets its `domain`; any other is returned as it is.
pub fn upgrade_record(v: serde_json::Value) -> serde_json::Value {
    local::legacy_record::upgrade_record(v)
}

/// Which substrate hosts a store's domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Server processes on this Linux host.
    Local,
    /// Xen domUs, with dbfork in dom0.
    Xen,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Local => "local",
            Kind::Xen => "xen",
        })
    }
}

/// What every backend is given about the host side: the store (volumes, records,
/// runtime files) and the `dbfork` binary (it runs the volume export processes).
#[derive(Debug, Clone)]
pub struct Host {
    pub store_dir: PathBuf,
    pub dbfork_exe: PathBuf,
}

/// Picks the backend: the one asked for, or the one this host calls for.
pub fn detect(requested: Option<Kind>, host: &Host) -> Result<Box<dyn Substrate>> {
    match requested {
        Some(Kind::Xen) => xen_backend(host),
        Some(Kind::Local) | None => Ok(Box::new(local::Local::new(host.clone()))),
    }
}

#[cfg(feature = "xen")]
fn xen_backend(host: &Host) -> Result<Box<dyn Substrate>> {
    Ok(Box::new(xen::Xen::new(host.clone())))
}

#[cfg(not(feature = "xen"))]
fn xen_backend(_host: &Host) -> Result<Box<dyn Substrate>> {
    Err(Error::NotBuilt {
        substrate: "xen",
        hint: "this dbfork was built without the `xen` feature (it links libxenstore); \
               build it with the default features on a host with libxen-dev",
    })
}

/// A Xen dom0 says so in its capabilities file.
pub fn is_xen_dom0() -> bool {
    std::fs::read_to_string("/proc/xen/capabilities").is_ok_and(|c| c.contains("control_d"))
}

/// The backend for a domain already recorded (a verb on an existing instance uses the
/// substrate the instance was made on).
pub fn for_domain(state: &DomainState, host: &Host) -> Result<Box<dyn Substrate>> {
    detect(Some(state.kind()), host)
}

/// What a backend remembers about one domain, kept in the instance record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "substrate", rename_all = "lowercase")]
pub enum DomainState {
    Local(local::LocalDomain),
    Xen(xen::XenDomain),
}

impl DomainState {
    pub fn kind(&self) -> Kind {
        match self {
            DomainState::Local(_) => Kind::Local,
            DomainState::Xen(_) => Kind::Xen,
        }
    }

    /// Where the domain's volume is attached, for people.
    pub fn attached_at(&self) -> String {
        match self {
            DomainState::Local(d) => d.mountpoint.display().to_string(),
            DomainState::Xen(d) => format!("domU {} as {}", d.vm, d.vdev),
        }
    }
}

/// What a new domain's volume is for.
#[derive(Debug, Clone, Copy)]
pub enum NewDomain<'a> {
    /// A new source's: the volume is formatted with `fs`. On Xen the domain is the
    /// operator's domU, described by `domain_config` (an xl config) whose disk at
    /// `database_vdev` becomes the volume.
    Source {
        fs: FsType,
        domain_config: Option<&'a Path>,
        database_vdev: &'a str,
    },
    /// A clone of the instance `parent_name` (of `family`), whose domain is `parent`;
    /// on Xen with this much memory and this many vCPUs (default: the parent's).
    CloneOf {
        parent_name: &'a str,
        family: &'a str,
        parent: &'a DomainState,
        memory_mib: Option<u64>,
        vcpus: Option<u32>,
    },
}

impl NewDomain<'_> {
    /// The filesystem to format the volume with (a new source's).
    pub fn format(&self) -> Option<FsType> {
        match self {
            NewDomain::Source { fs, .. } => Some(*fs),
            NewDomain::CloneOf { .. } => None,
        }
    }
}

/// Filesystems a new volume can be formatted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Xfs,
}

/// How the page table knows a domain's server: the identity its connections carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// A host process (local): the page table sees its pid on a Unix socket.
    Process { pid: u32 },
    /// A Xen domU: its connections reach the page table through the dom0 process that
    /// carries its channel (`pid`), which speaks for that domain (`domid`) alone.
    XenChannel { pid: u32, domid: u32 },
}

/// The agent's part in page sharing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentRole {
    /// Offers its clean pages to the family; the pool it fills is capped.
    Source { pool_max_bytes: u64 },
    /// Reads from the family what the share rule allows under its snapshot LSN.
    Replica { snapshot_lsn: u64 },
}

/// The agent a domain's server runs with: its family, its domain in the family's page
/// table, its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSpec {
    pub family: u32,
    pub domain: u32,
    pub role: AgentRole,
}

/// How to start a domain's server.
pub struct StartRequest<'a> {
    pub config: &'a InstanceConfig,
    /// The volume attached to the domain as its data disk.
    pub volume: &'a str,
    /// The agent, when the domain shares pages: the server is a member of the family
    /// in the page table before its first instruction, and the agent's record goes
    /// into the domain's state. `None` starts the server without one.
    pub agent: Option<&'a AgentSpec>,
    /// Limit the server's reads on its volume to this many per second.
    pub read_iops: Option<u32>,
    /// Startup (crash recovery included) until the first query answers.
    pub timeout: Duration,
}

/// How to stop a domain's server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A clean shutdown, waiting up to this long, then a kill.
    Clean(Duration),
    /// At once, as a crash would.
    Kill,
}

/// The pages a new replica should have first (its parent's buffer pool, hottest
/// first) and where the parent keeps their tablespaces.
#[derive(Debug, Clone, Default)]
pub struct WarmSet {
    pub hot: Vec<PageId>,
    pub spaces: BTreeMap<u32, TablespaceFile>,
}

/// A domain's filesystem held still; released when dropped, whatever happened.
pub struct Quiesced {
    thaw: Option<Box<dyn FnOnce()>>,
}

impl Quiesced {
    pub fn new(thaw: impl FnOnce() + 'static) -> Self {
        Quiesced {
            thaw: Some(Box::new(thaw)),
        }
    }
    /// Nothing to hold (the volume is not mounted anywhere).
    pub fn nothing() -> Self {
        Quiesced { thaw: None }
    }
}

impl Drop for Quiesced {
    fn drop(&mut self) {
        if let Some(thaw) = self.thaw.take() {
            thaw();
        }
    }
}

/// A domain's read limit as `dbfork status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadLimit {
    pub read_iops: u32,
    /// The limited device ("MAJ:MIN" of its block device on the host).
    pub device: String,
    /// Reads counted against the limit so far, when the counter can be read.
    pub reads: Option<u64>,
}

/// What keeps a domain's server from running, or from running well, as `status` and
/// `start` tell it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// What no longer serves of what the server needs (its volume's export process,
    /// its mount, its tree), each a sentence. Empty when all of it serves (or the
    /// volume is simply not attached: a stopped domain).
    pub problems: Vec<String>,
    /// The last lines of the server's error log.
    pub log_tail: Vec<String>,
}

/// What a domain's server uses of memory, and for a domain with memory of its own (a
/// domU) what the domain uses, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryUse {
    pub server: Option<dbinstance::memory::ProcessMemory>,
    pub domain: Option<dbinstance::memory::SystemMemory>,
}

/// What a sweep of leftovers removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub items: Vec<PathBuf>,
}

/// The seam. Every method names a domain by its instance config (the database
/// server's settings) and its [`DomainState`]; none of them leaves half a thing
/// behind on error.
pub trait Substrate {
    fn kind(&self) -> Kind;
    /// What this host lacks to run domains, as an error that names the fix.
    fn preflight(&self) -> Result<()>;

    // ---- volumes and domains
    /// Makes `volume` (served by its export process) the data disk of a new domain
    /// `name`, as `what` says (a new source's, formatted; or a clone's).
    fn attach(&self, name: &str, volume: &str, what: &NewDomain<'_>) -> Result<DomainState>;
    /// Takes the volume away from the domain (its server must be stopped). Tolerates
    /// finding it detached already.
    fn detach(&self, volume: &str, domain: &DomainState) -> Result<()>;
    /// Attaches the volume of a domain that was attached before (after a stop, a crash
    /// or a host reboot), resuming from what the volume committed: an attach that still
    /// serves is kept, what is left of one that does not (a dead export process, a lost
    /// mount) is taken apart first. The server's datadir stays where it was.
    fn reattach(&self, name: &str, volume: &str, domain: &DomainState) -> Result<DomainState>;
    /// What no longer serves of the domain's disk, and the end of its server's log.
    fn health(&self, config: &InstanceConfig, volume: &str, domain: &DomainState) -> Health;
    /// Where the server's datadir is, as the server sees it.
    fn datadir(&self, domain: &DomainState) -> PathBuf;
    /// Holds what writes the domain's volume still, everything it acknowledged on the
    /// volume, until the guard drops (around a snapshot): its filesystem, or for a
    /// volume that is a directory on dom0's own file system, its server.
    fn quiesce(
        &self,
        volume: &str,
        config: &InstanceConfig,
        domain: &DomainState,
    ) -> Result<Quiesced>;
    /// Volume byte ranges to hydrate first, in order: what the server reads to boot,
    /// then the warm set's pages. A hint: what cannot be mapped is left out.
    fn hydration_order(
        &self,
        domain: &DomainState,
        parent_datadir: &Path,
        warm: &WarmSet,
    ) -> Vec<(u64, u64)>;

    // ---- servers
    /// The port the domain's server listens on (`requested`, or one that is free).
    fn sql_port(&self, requested: Option<u16>) -> Result<u16>;
    /// Makes a fresh datadir for a new source on its attached volume.
    fn init_datadir(&self, config: &InstanceConfig) -> Result<()>;
    /// Makes the datadir of a new source on its attached volume from a copy of another
    /// server's data (mariadb-backup's xbstream `stream`), prepared so a server can
    /// start on it; `copied` hears the bytes received so far.
    fn restore_datadir(
        &self,
        config: &InstanceConfig,
        stream: &mut dyn std::io::Read,
        copied: &mut dyn FnMut(u64),
    ) -> Result<dbinstance::backup::Restored>;
    /// Makes the datadir of a new source on its attached volume a copy of the
    /// (stopped) server's datadir at `from`, owners and modes kept; `copied` hears the
    /// bytes copied so far. Returns the bytes.
    fn import_datadir(
        &self,
        config: &InstanceConfig,
        from: &Path,
        copied: &mut dyn FnMut(u64),
    ) -> Result<u64>;
    /// Copies the (stopped) server's datadir off its volume into `to` (an empty
    /// directory on the host), owners and modes kept; `copied` as above.
    fn export_datadir(
        &self,
        config: &InstanceConfig,
        to: &Path,
        copied: &mut dyn FnMut(u64),
    ) -> Result<u64>;
    /// Starts the domain's server and waits until it answers.
    fn start(&self, req: &StartRequest<'_>, domain: &mut DomainState) -> Result<()>;
    /// Stops the domain's server and releases what it held besides its volume (its
    /// read limit). A stopped domain is fine.
    fn stop(&self, config: &InstanceConfig, domain: &DomainState, how: Stop) -> Result<()>;
    fn running(&self, config: &InstanceConfig, domain: &DomainState) -> bool;
    /// The domain's read limit, if it has one.
    fn read_limit(&self, domain: &DomainState) -> Option<ReadLimit>;
    /// The database in the domain, for what the orchestration asks of it.
    fn endpoint(&self, config: &InstanceConfig, domain: &DomainState) -> Result<Box<dyn Endpoint>>;
    /// What the domain's server (and the domain) use of memory, when it runs.
    fn memory_use(&self, config: &InstanceConfig, domain: &DomainState) -> Option<MemoryUse>;

    // ---- page sharing
    /// Makes durable what the domain's agent keeps across restarts (a replica's
    /// written-page set), once its server has stopped: a host that goes down after
    /// this loses none of it.
    fn persist_agent_state(&self, domain: &DomainState) -> Result<()>;
    /// Whether domains here can run the agent and its page table; the error says why
    /// not.
    fn sharing_available(&self) -> Result<()>;
    /// Tells the family's source agent that a snapshot at `lsn` is complete: what it
    /// offers from now on is valid for clones at or after it.
    fn publish_clone_lsn(&self, family: u32, lsn: u64) -> Result<()>;
    /// The clone LSN published last, if any.
    fn clone_lsn(&self, family: u32) -> Option<u64>;
    /// The agent's live counters (pages pooled, lookups, shared, ...).
    fn agent_counters(&self, domain: &DomainState) -> Option<serde_json::Value>;
    /// Takes a domain out of its family: its entries in the page table, its
    /// membership, its binding (best effort: a page table that is gone holds nothing).
    fn leave_family(&self, domain: u32);
    /// Removes the family: its page table entries, its shared frames (mapped frames
    /// stay alive for their mappers until unmapped) and its clone LSN.
    fn destroy_family(&self, family: u32);

    // ---- leftovers
    /// Removes host resources of stores that were deleted by hand.
    fn sweep(&self) -> Swept;
    /// The store has no instance left: stops its services and drops its claim on
    /// host resources.
    fn release_store(&self);
}

/// The database server of a domain, as the orchestration uses it: the consistent
/// point of a clone, the warm set, replication.
pub trait Endpoint {
    fn name(&self) -> &str;
    /// Refuses a server that cannot be a replication source (no binary log).
    fn require_binlog(&self) -> Result<()>;
    /// Flushes dirty pages until at most `target` are left, a plateau, or `timeout`.
    fn flush_dirty_pages(&self, target: u64, timeout: Duration) -> Result<FlushReport>;
    /// The buffer pool's pages, hottest first, and the tablespaces they belong to.
    fn warm_set(&self) -> Result<WarmSet>;
    /// Starts a new binary log file.
    fn rotate_binlog(&self) -> Result<()>;
    /// Holds commits at a consistent point (GTID position and durable LSN).
    fn hold_commits(&self) -> Result<Box<dyn CommitHold>>;
    /// Where and as whom a replica of this server connects.
    fn replication_source(&self) -> Result<ReplicationSource>;
    /// Makes (or makes again) the account `user` replicas of this server log in with,
    /// on a server whose datadir dbfork did not make, and keeps its secret where
    /// `replication_source` finds it.
    fn make_replication_account(&self, user: &str) -> Result<()>;
    /// Makes this server a read-only replica of `source` from right after `after`.
    fn replicate_from(&self, source: &ReplicationSource, after: &GtidPos) -> Result<()>;
    /// Starts replication again from where it stopped (a replica's server restarted:
    /// servers start with replication held, see dbinstance's `skip_slave_start`), from
    /// its source at `host:port` with the account it stored when it was set up. A
    /// binary log that a crash left ahead of the data is emptied when
    /// `may_reset_binlog` (nothing replicates from it), refused otherwise.
    fn resume_replication(&self, host: &str, port: u16, may_reset_binlog: bool) -> Result<()>;
    /// The server's `innodb_flush_log_at_trx_commit` (0 leaves commits out of the redo
    /// log file for up to a second: a snapshot would miss what its GTID position says
    /// it has).
    fn redo_flush_at_commit(&self) -> Result<u32>;
    /// `None` when the server is not a replica.
    fn replication_status(&self) -> Result<Option<ReplicationStatus>>;
}

/// Commits held on a source; released by `release` or when dropped.
pub trait CommitHold {
    fn gtid(&self) -> &GtidPos;
    /// The durable redo LSN at the hold: the replica's share bound.
    fn lsn(&self) -> u64;
    /// Lets commits go; returns how long they were held, in milliseconds.
    fn release(self: Box<Self>) -> Result<u64>;
}
