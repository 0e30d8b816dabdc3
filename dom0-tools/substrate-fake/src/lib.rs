//! An in-memory substrate for unit tests of the orchestration, and a wrapper that
//! injects faults into a real one. See README.md.

mod faulty;
pub mod xen;
pub use faulty::Faulty;

use dbinstance::{FlushReport, GtidPos, InstanceConfig, PageId, ReplicationSource};
use dbinstance::{ReplicationStatus, TablespaceFile};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use substrate::local::LocalDomain;
use substrate::{
    AgentSpec, CommitHold, DomainState, Endpoint, Error, Health, Kind, NewDomain, Quiesced,
    ReadLimit, Result, StartRequest, Stop, Substrate, Swept, WarmSet,
};

/// A server running in the fake.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub pid: u32,
    pub volume: String,
    pub agent: Option<AgentSpec>,
    pub read_iops: Option<u32>,
    /// What it replicates from, after `replicate_from`.
    pub replicating: Option<(ReplicationSource, GtidPos)>,
    /// Commits it has made (each hold reads it as its GTID sequence number).
    pub commits: u64,
}

/// A page-sharing family in the fake's page table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Family {
    pub clone_lsn: Option<u64>,
    pub members: BTreeSet<u32>,
    /// Scans of its source's agent (one per clone LSN published).
    pub scans: u64,
}

/// Everything the fake holds.
#[derive(Debug, Default)]
pub struct World {
    /// Volume -> the domain it is attached to.
    pub attached: BTreeMap<String, String>,
    /// Domains whose datadir was initialised or came with a cloned volume.
    pub datadirs: BTreeSet<String>,
    pub running: BTreeMap<String, Server>,
    pub families: BTreeMap<u32, Family>,
    /// Volumes whose filesystem is held still now.
    pub frozen: BTreeSet<String>,
    /// Every call, in order ("attach r1", "start r1", "endpoint:hold_commits src", ...).
    pub calls: Vec<String>,
    /// Sharing is refused with this reason when set.
    pub sharing_off: Option<String>,
    pub sweeps: usize,
    /// Replication as each replica's datadir remembers it (survives its server).
    pub replica_of: BTreeMap<String, (ReplicationSource, GtidPos)>,
    /// Domains whose disk stopped serving (`lose_disk`).
    pub lost_disks: BTreeSet<String>,
    /// What every server answers for innodb_flush_log_at_trx_commit (default 1).
    pub redo_flush_at_commit: Option<u32>,
    /// Domains whose agent state was made durable, in order.
    pub persisted: Vec<String>,
    pub released: usize,
    fault: Option<(String, usize)>,
    next_pid: u32,
    next_port: u16,
}

impl World {
    /// The calls whose method is `method` (the word before the name).
    pub fn calls_of(&self, method: &str) -> usize {
        self.calls
            .iter()
            .filter(|c| c.split(' ').next() == Some(method))
            .count()
    }
}

/// The fake substrate. Clones share one world.
#[derive(Clone)]
pub struct Fake {
    world: Arc<Mutex<World>>,
    root: PathBuf,
}

impl Fake {
    /// A fake whose domains' paths lie under `root` (nothing is written there).
    pub fn new(root: &Path) -> Self {
        Fake {
            world: Arc::new(Mutex::new(World {
                next_pid: 1000,
                next_port: 40000,
                ..World::default()
            })),
            root: root.to_path_buf(),
        }
    }

    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world
            .lock()
            .expect("the fake's world is never poisoned")
    }

    /// The `nth` call (1-based) of `method` fails from now on; counting starts now.
    pub fn fail_at(&self, method: &str, nth: usize) {
        let mut w = self.world();
        let before = w.calls_of(method);
        w.fault = Some((method.to_string(), before + nth));
    }

    pub fn clear_fault(&self) {
        self.world().fault = None;
    }

    /// Kills a running server, as a crash would (its volume stays attached).
    /// The domain's disk stops serving (its export process died): its server goes too.
    pub fn lose_disk(&self, name: &str) {
        let mut w = self.world();
        w.lost_disks.insert(name.to_string());
        w.running.remove(name);
    }

    pub fn crash(&self, name: &str) {
        self.world().running.remove(name);
    }

    /// Logs a call of `method` on `what` and fails it if a fault is set there.
    fn enter(&self, method: &str, what: &str) -> Result<()> {
        let mut w = self.world();
        w.calls.push(format!("{method} {what}"));
        let n = w.calls_of(method);
        if w.fault
            .as_ref()
            .is_some_and(|(m, at)| m == method && *at == n)
        {
            return Err(injected(method));
        }
        Ok(())
    }

    fn name_of(domain: &DomainState) -> String {
        let d = fake_state(domain);
        d.mountpoint
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

fn injected(method: &str) -> Error {
    Error::Io {
        what: "injected failure in",
        path: PathBuf::from(method),
        source: std::io::Error::other("a fault the test asked for"),
    }
}

impl Substrate for Fake {
    fn kind(&self) -> Kind {
        Kind::Local
    }

    fn preflight(&self) -> Result<()> {
        self.enter("preflight", "-")
    }

    fn attach(&self, name: &str, volume: &str, _what: &NewDomain<'_>) -> Result<DomainState> {
        self.enter("attach", name)?;
        let mut w = self.world();
        if let Some(d) = w.attached.get(volume) {
            return Err(Error::AlreadyAttached(volume.to_string(), d.clone()));
        }
        w.attached.insert(volume.to_string(), name.to_string());
        Ok(DomainState::Local(LocalDomain {
            mountpoint: self.root.join("mnt").join(name),
            directory: false,
            agent: None,
            io_limit: None,
        }))
    }

    fn detach(&self, volume: &str, domain: &DomainState) -> Result<()> {
        let name = Self::name_of(domain);
        self.enter("detach", &name)?;
        let mut w = self.world();
        if w.running.contains_key(&name) {
            return Err(Error::Busy {
                mountpoint: format!("{name}: its server still runs"),
            });
        }
        w.attached.remove(volume);
        Ok(())
    }

    fn reattach(&self, name: &str, volume: &str, domain: &DomainState) -> Result<DomainState> {
        self.enter("reattach", name)?;
        let mut w = self.world();
        w.lost_disks.remove(name);
        match w.attached.get(volume) {
            Some(n) if n == name => Ok(domain.clone()),
            Some(other) => Err(Error::AlreadyAttached(volume.to_string(), other.clone())),
            None => {
                w.attached.insert(volume.to_string(), name.to_string());
                Ok(domain.clone())
            }
        }
    }

    fn health(&self, _config: &InstanceConfig, volume: &str, domain: &DomainState) -> Health {
        let name = Self::name_of(domain);
        let w = self.world();
        Health {
            problems: if w.lost_disks.contains(&name) {
                vec![format!("the export of volume {volume} is gone")]
            } else {
                Vec::new()
            },
            log_tail: Vec::new(),
        }
    }

    fn persist_agent_state(&self, domain: &DomainState) -> Result<()> {
        let name = Self::name_of(domain);
        self.enter("persist_agent_state", &name)?;
        self.world().persisted.push(name);
        Ok(())
    }

    fn datadir(&self, domain: &DomainState) -> PathBuf {
        fake_state(domain).mountpoint.join("data")
    }

    fn quiesce(
        &self,
        volume: &str,
        _config: &InstanceConfig,
        _domain: &DomainState,
    ) -> Result<Quiesced> {
        self.enter("quiesce", volume)?;
        self.world().frozen.insert(volume.to_string());
        let (world, volume) = (self.world.clone(), volume.to_string());
        Ok(Quiesced::new(move || {
            world.lock().expect("not poisoned").frozen.remove(&volume);
        }))
    }

    fn hydration_order(
        &self,
        domain: &DomainState,
        _parent_datadir: &Path,
        warm: &WarmSet,
    ) -> Vec<(u64, u64)> {
        let _ = self.enter("hydration_order", &Self::name_of(domain));
        warm.hot
            .iter()
            .map(|p| (u64::from(p.page_no) * 16384, 16384))
            .collect()
    }

    fn sql_port(&self, requested: Option<u16>) -> Result<u16> {
        self.enter("sql_port", "-")?;
        let mut w = self.world();
        w.next_port += 1;
        Ok(requested.unwrap_or(w.next_port))
    }

    fn init_datadir(&self, config: &InstanceConfig) -> Result<()> {
        self.enter("init_datadir", &config.name)?;
        self.world().datadirs.insert(config.name.clone());
        Ok(())
    }

    fn restore_datadir(
        &self,
        config: &InstanceConfig,
        stream: &mut dyn std::io::Read,
        copied: &mut dyn FnMut(u64),
    ) -> Result<dbinstance::backup::Restored> {
        self.enter("restore_datadir", &config.name)?;
        // The fake keeps no data: it takes the stream's length and a datadir.
        let mut sink = std::io::sink();
        let n = std::io::copy(stream, &mut sink).map_err(|source| Error::Io {
            what: "reading a copy's stream",
            path: config.datadir.clone(),
            source,
        })?;
        copied(n);
        self.world().datadirs.insert(config.name.clone());
        Ok(dbinstance::backup::Restored {
            gtid: Default::default(),
            options: Default::default(),
        })
    }

    fn import_datadir(
        &self,
        config: &InstanceConfig,
        _from: &std::path::Path,
        copied: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        self.enter("import_datadir", &config.name)?;
        copied(0);
        self.world().datadirs.insert(config.name.clone());
        Ok(0)
    }

    fn export_datadir(
        &self,
        config: &InstanceConfig,
        _to: &std::path::Path,
        copied: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        self.enter("export_datadir", &config.name)?;
        copied(0);
        Ok(0)
    }

    fn start(&self, req: &StartRequest<'_>, domain: &mut DomainState) -> Result<()> {
        let name = req.config.name.clone();
        self.enter("start", &name)?;
        let mut w = self.world();
        if w.attached.get(req.volume) != Some(&name) {
            return Err(Error::NotAttached(req.volume.to_string()));
        }
        if w.running.contains_key(&name) {
            return Err(dbinstance::Error::AlreadyRunning(name).into());
        }
        if let Some(a) = req.agent {
            if let Some(why) = &w.sharing_off {
                return Err(Error::SharingUnavailable(why.clone()));
            }
            w.families
                .entry(a.family)
                .or_default()
                .members
                .insert(a.domain);
        }
        drop(w);
        // A server that joined its family at the gate and then did not come up: as the
        // real backends do, the membership goes with it.
        if let Err(e) = self.enter("start:ready", &name) {
            if let Some(a) = req.agent {
                if let Some(f) = self.world().families.get_mut(&a.family) {
                    f.members.remove(&a.domain);
                }
            }
            return Err(e);
        }
        let mut w = self.world();
        w.next_pid += 1;
        let server = Server {
            pid: w.next_pid,
            volume: req.volume.to_string(),
            agent: req.agent.cloned(),
            read_iops: req.read_iops,
            replicating: None,
            commits: 0,
        };
        w.running.insert(name, server);
        let DomainState::Local(d) = domain else {
            panic!("the fake keeps its domains as local state");
        };
        d.mountpoint = self.root.join("mnt").join(&req.config.name);
        Ok(())
    }

    fn stop(&self, config: &InstanceConfig, _domain: &DomainState, _how: Stop) -> Result<()> {
        self.enter("stop", &config.name)?;
        self.world().running.remove(&config.name);
        Ok(())
    }

    fn running(&self, config: &InstanceConfig, _domain: &DomainState) -> bool {
        self.world().running.contains_key(&config.name)
    }

    fn read_limit(&self, domain: &DomainState) -> Option<ReadLimit> {
        let w = self.world();
        let iops = w.running.get(&Self::name_of(domain))?.read_iops?;
        Some(ReadLimit {
            read_iops: iops,
            device: "fake".into(),
            reads: Some(0),
        })
    }

    fn memory_use(
        &self,
        _config: &InstanceConfig,
        _domain: &DomainState,
    ) -> Option<substrate::MemoryUse> {
        None
    }

    fn endpoint(
        &self,
        config: &InstanceConfig,
        _domain: &DomainState,
    ) -> Result<Box<dyn Endpoint>> {
        self.enter("endpoint", &config.name)?;
        Ok(Box::new(FakeEndpoint {
            fake: self.clone(),
            name: config.name.clone(),
            port: config.port,
        }))
    }

    fn sharing_available(&self) -> Result<()> {
        match &self.world().sharing_off {
            Some(why) => Err(Error::SharingUnavailable(why.clone())),
            None => Ok(()),
        }
    }

    fn publish_clone_lsn(&self, family: u32, lsn: u64) -> Result<()> {
        self.enter("publish_clone_lsn", &family.to_string())?;
        let mut w = self.world();
        let f = w.families.entry(family).or_default();
        f.clone_lsn = Some(lsn);
        // The source's agent notices and scans its buffer pool.
        f.scans += 1;
        Ok(())
    }

    fn clone_lsn(&self, family: u32) -> Option<u64> {
        self.world().families.get(&family).and_then(|f| f.clone_lsn)
    }

    fn agent_counters(&self, domain: &DomainState) -> Option<serde_json::Value> {
        let name = Self::name_of(domain);
        let w = self.world();
        let agent = w.running.get(&name)?.agent.clone()?;
        let scans = w.families.get(&agent.family).map_or(0, |f| f.scans);
        Some(serde_json::json!({
            "scans": scans,
            "offers": scans,
            "frames_revalidated": scans * 10,
            "scan_frames_pooled": 0,
            "pages_pooled": scans * 10,
            "lookups": 0,
            "shared": 0,
        }))
    }

    fn leave_family(&self, domain: u32) {
        let _ = self.enter("leave_family", &domain.to_string());
        for f in self.world().families.values_mut() {
            f.members.remove(&domain);
        }
    }

    fn destroy_family(&self, family: u32) {
        let _ = self.enter("destroy_family", &family.to_string());
        self.world().families.remove(&family);
    }

    fn sweep(&self) -> Swept {
        self.world().sweeps += 1;
        Swept::default()
    }

    fn release_store(&self) {
        self.world().released += 1;
    }
}

/// A fake server's database.
struct FakeEndpoint {
    fake: Fake,
    name: String,
    port: u16,
}

impl FakeEndpoint {
    fn call(&self, method: &str) -> Result<()> {
        self.fake.enter(&format!("endpoint:{method}"), &self.name)?;
        if !self.fake.world().running.contains_key(&self.name) {
            return Err(dbinstance::Error::NotRunning(self.name.clone()).into());
        }
        Ok(())
    }
}

impl Endpoint for FakeEndpoint {
    fn name(&self) -> &str {
        &self.name
    }
    fn make_replication_account(&self, _user: &str) -> Result<()> {
        self.call("make_replication_account")
    }
    fn require_binlog(&self) -> Result<()> {
        self.call("require_binlog")
    }
    fn flush_dirty_pages(&self, _target: u64, _timeout: Duration) -> Result<FlushReport> {
        self.call("flush_dirty_pages")?;
        Ok(FlushReport::default())
    }
    fn warm_set(&self) -> Result<WarmSet> {
        self.call("warm_set")?;
        Ok(WarmSet {
            hot: (0..4)
                .map(|p| PageId {
                    space_id: 5,
                    page_no: p,
                })
                .collect(),
            spaces: BTreeMap::from([(
                5,
                TablespaceFile {
                    space_id: 5,
                    name: "db/t".into(),
                    path: PathBuf::from("/fake/db/t.ibd"),
                    page_size: 16384,
                },
            )]),
        })
    }
    fn rotate_binlog(&self) -> Result<()> {
        self.call("rotate_binlog")
    }
    fn hold_commits(&self) -> Result<Box<dyn CommitHold>> {
        self.call("hold_commits")?;
        let mut w = self.fake.world();
        let s = w.running.get_mut(&self.name).expect("checked running");
        s.commits += 1;
        let gtid = GtidPos::parse(&format!("0-1-{}", s.commits)).expect("a valid GTID");
        Ok(Box::new(FakeHold {
            gtid,
            lsn: 1000 * s.commits,
        }))
    }
    fn replication_source(&self) -> Result<ReplicationSource> {
        self.call("replication_source")?;
        Ok(ReplicationSource {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "dbfork_repl".into(),
            password: "fake".into(),
        })
    }
    fn replicate_from(&self, source: &ReplicationSource, after: &GtidPos) -> Result<()> {
        self.call("replicate_from")?;
        let mut w = self.fake.world();
        let s = w.running.get_mut(&self.name).expect("checked running");
        s.replicating = Some((source.clone(), after.clone()));
        w.replica_of
            .insert(self.name.clone(), (source.clone(), after.clone()));
        Ok(())
    }
    fn resume_replication(&self, _host: &str, _port: u16, _may_reset: bool) -> Result<()> {
        self.call("resume_replication")?;
        let mut w = self.fake.world();
        let remembered = w.replica_of.get(&self.name).cloned();
        let s = w.running.get_mut(&self.name).expect("checked running");
        s.replicating = remembered;
        Ok(())
    }
    fn redo_flush_at_commit(&self) -> Result<u32> {
        self.call("redo_flush_at_commit")?;
        Ok(self.fake.world().redo_flush_at_commit.unwrap_or(1))
    }
    fn replication_status(&self) -> Result<Option<ReplicationStatus>> {
        self.call("replication_status")?;
        let w = self.fake.world();
        Ok(w.running[&self.name]
            .replicating
            .as_ref()
            .map(|(src, pos)| ReplicationStatus {
                io_running: "Yes".into(),
                sql_running: true,
                seconds_behind_master: Some(0),
                last_io_errno: 0,
                last_io_error: String::new(),
                last_sql_errno: 0,
                last_sql_error: String::new(),
                gtid_slave_pos: pos.clone(),
                master_host: src.host.clone(),
                master_port: src.port,
            }))
    }
}

struct FakeHold {
    gtid: GtidPos,
    lsn: u64,
}

impl CommitHold for FakeHold {
    fn gtid(&self) -> &GtidPos {
        &self.gtid
    }
    fn lsn(&self) -> u64 {
        self.lsn
    }
    fn release(self: Box<Self>) -> Result<u64> {
        Ok(1)
    }
}

/// The fake keeps its domains' state in the local substrate's shape.
fn fake_state(domain: &DomainState) -> &LocalDomain {
    match domain {
        DomainState::Local(d) => d,
        DomainState::Xen(_) => panic!("the fake keeps its domains as local state"),
    }
}
