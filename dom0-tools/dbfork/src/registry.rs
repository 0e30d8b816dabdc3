//! The database instances dbfork manages: one JSON record each under
//! `STORE/instances/NAME/record.json`, beside the instance's run dir (my.cnf, socket,
//! logs). The record is written last when something is made and removed first when it
//! is destroyed, so a record always names a complete instance.
//!
//! What the substrate must remember about the instance's domain (where its volume is
//! attached, its agent, its read limit) is the record's `domain`, a tagged enum
//! (`{"substrate": "local", ...}`); everything else is the same for every substrate.

use crate::error::{Error, Result};
use dbinstance::{GtidPos, InstanceConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use substrate::DomainState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Source,
    Replica,
}

/// What a clone recorded about its consistent point and how long each phase took.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneReport {
    pub parent: String,
    pub snapshot: String,
    /// Replication starts after this GTID position of the parent.
    pub gtid: String,
    /// Durable redo LSN of the parent at the snapshot: the replica's share bound.
    pub snapshot_lsn: u64,
    /// How long commits on the parent were held.
    pub hold_ms: u64,
    pub hot_pages: usize,
    /// Frames the source's agent offered for sharing under this snapshot before the
    /// replica started, by revalidating what it maps from the family's frame store unchanged
    /// (0: the warm set offered at the same LSN before still serves); None when no
    /// offer was made or it failed (sharing then starts cold). What it has to copy
    /// follows in the background.
    #[serde(default)]
    pub warm_set_frames: Option<u64>,
    pub prefetch_ranges: usize,
    pub phase_ms: PhaseTimes,
    /// From `dbfork clone` starting to the replica answering its first query.
    pub first_query_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTimes {
    /// Flushing the parent's dirty pages before the consistent point.
    #[serde(default)]
    pub flush: u64,
    pub consistent_point: u64,
    /// Waiting for the source's agent to offer its warm set under the new snapshot (its
    /// copies of frames it does not map from the frame store follow in the background).
    #[serde(default)]
    pub share_scan: u64,
    pub clone_and_attach: u64,
    pub prefetch: u64,
    pub start: u64,
    pub replication: u64,
}

/// How an instance takes part in page sharing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The family: its source's server_id.
    pub family_id: u32,
    /// The instance's domain in the family's page table: its server_id.
    pub domain_id: u32,
    /// "source" or "replica".
    pub role: String,
}

/// How the instance's server last started and stopped: whether what its agent keeps
/// across restarts (a replica's written-page set) can be trusted at the next start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// The host boot (Linux's boot_id) the server last started in.
    pub boot_id: String,
    /// `dbfork stop` stopped it and made its agent's state durable since.
    pub stopped_cleanly: bool,
}

impl RunState {
    /// A server that just started in this boot.
    pub fn started_now() -> Self {
        RunState {
            boot_id: boot_id(),
            stopped_cleanly: false,
        }
    }
}

/// This boot of the host (empty when the kernel does not say: then never "this boot").
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The operator's server an adopted source (its base instance) replicates from: dbfork
/// reads it, never changes or stops it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// Its Unix socket, as given to `source adopt`.
    pub socket: PathBuf,
    /// The option file the adoption logged in with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults_file: Option<PathBuf>,
    /// Where the base replicates from.
    pub host: String,
    pub port: u16,
    /// Its server_id at the adoption.
    pub server_id: u32,
    /// The replication account on it (`user@host`).
    pub account: String,
    /// Whether dbfork made that account (and so names it for removal when the base
    /// goes).
    pub account_made: bool,
    /// Its datadir (for `status`; never touched).
    pub datadir: PathBuf,
    /// The GTID position the copy was taken at.
    pub adopted_at: String,
}

impl Upstream {
    /// The copy's GTID position as people read it (a server that never logged a
    /// transaction has none).
    pub fn adopted_at_text(&self) -> &str {
        if self.adopted_at.is_empty() {
            "(none)"
        } else {
            &self.adopted_at
        }
    }
}

/// How the operator's server is stopped and started outside dbfork.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "lowercase")]
pub enum ServerControl {
    /// `systemctl stop|start UNIT`.
    Service { unit: String },
    /// Shell commands of the operator's.
    Commands { stop: String, start: String },
}

/// A server of the operator's that dbfork took over: it runs from a dbfork volume, with
/// its own options, port and server_id, until `dbfork source release` gives it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakenOver {
    /// Where its datadir was, and goes back to.
    pub datadir: PathBuf,
    /// The datadir's owner and mode, given back with it.
    pub owner: (u32, u32),
    pub mode: u32,
    /// Its socket path, a link to the server's socket under dbfork while there was
    /// nothing else at that path.
    pub socket: PathBuf,
    pub socket_linked: bool,
    /// Where its binary log files are (outside the datadir they stay in place).
    pub log_bin_basename: Option<PathBuf>,
    /// The option file the take-over logged in with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults_file: Option<PathBuf>,
    pub control: ServerControl,
    /// The replication account dbfork made on it for its replicas.
    pub account: String,
    /// The release put its datadir back and started it: what is left is forgetting
    /// dbfork's volume and record (a release run again does only that).
    #[serde(default)]
    pub released: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub name: String,
    pub role: Role,
    /// The source at the root of this instance's family (itself for a source).
    pub family: String,
    pub volume: String,
    pub config: InstanceConfig,
    pub clone: Option<CloneReport>,
    /// Page sharing, when on.
    #[serde(default)]
    pub sharing: Option<Membership>,
    /// Why sharing is off, when it is.
    #[serde(default)]
    pub sharing_off: Option<String>,
    /// What the substrate remembers about the instance's domain.
    pub domain: DomainState,
    /// How its server last started and stopped (absent in records of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunState>,
    /// The operator's server an adopted source replicates from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
    /// The operator's server itself, when this source is it, taken over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_over: Option<TakenOver>,
}

impl InstanceRecord {
    pub fn parent(&self) -> Option<&str> {
        self.clone.as_ref().map(|c| c.parent.as_str())
    }
    pub fn gtid(&self) -> Option<GtidPos> {
        self.clone.as_ref().and_then(|c| c.gtid.parse().ok())
    }
}

pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    pub fn new(store: &Path) -> Self {
        Registry {
            dir: store.join("instances"),
        }
    }
    /// The instance's run dir: my.cnf, socket, pid file, logs, replication secret.
    pub fn run_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("record.json")
    }
    pub fn exists(&self, name: &str) -> bool {
        self.record_path(name).exists()
    }
    pub fn load(&self, name: &str) -> Result<InstanceRecord> {
        let path = self.record_path(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::UnknownInstance(name.to_string()))
            }
            Err(source) => return Err(Error::RecordIo { path, source }),
        };
        let corrupt = |source| Error::RecordCorrupt {
            path: path.clone(),
            source,
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(corrupt)?;
        serde_json::from_value(substrate::upgrade_record(value)).map_err(corrupt)
    }
    pub fn save(&self, rec: &InstanceRecord) -> Result<()> {
        let path = self.record_path(&rec.name);
        let io = |source| Error::RecordIo {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(path.parent().expect("record has a parent")).map_err(io)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(rec).expect("serializable")).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
    /// Forgets the record (the run dir with logs stays until `purge`).
    pub fn remove(&self, name: &str) -> Result<()> {
        match std::fs::remove_file(self.record_path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::RecordIo {
                path: self.record_path(name),
                source,
            }),
        }
    }
    /// Removes the run dir of an instance that has no record any more.
    pub fn purge(&self, name: &str) {
        let _ = std::fs::remove_dir_all(self.run_dir(name));
    }
    pub fn list(&self) -> Result<Vec<InstanceRecord>> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(out);
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if self.exists(&name) {
                out.push(self.load(&name)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
    /// Replicas whose parent is `name`.
    pub fn children(&self, name: &str) -> Result<Vec<InstanceRecord>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|r| r.parent() == Some(name))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use substrate::local::LocalDomain;

    fn record() -> InstanceRecord {
        let mut config = InstanceConfig::in_dir("r1", Path::new("/s/instances/r1"), 3307, 2);
        config.datadir = "/s/mnt/r1/data".into();
        InstanceRecord {
            name: "r1".into(),
            role: Role::Replica,
            family: "src".into(),
            volume: "r1".into(),
            config,
            clone: Some(CloneReport {
                parent: "src".into(),
                snapshot: "src.at.r1".into(),
                gtid: "0-1-5".into(),
                snapshot_lsn: 777,
                ..Default::default()
            }),
            sharing: Some(Membership {
                family_id: 1,
                domain_id: 2,
                role: "replica".into(),
            }),
            sharing_off: None,
            domain: DomainState::Local(LocalDomain {
                mountpoint: "/s/mnt/r1".into(),
                directory: false,
                agent: None,
                io_limit: None,
            }),
            run: Some(RunState {
                boot_id: "b1".into(),
                stopped_cleanly: true,
            }),
            upstream: None,
            taken_over: None,
        }
    }

    #[test]
    fn a_record_round_trips_with_its_domain_tagged_by_substrate() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        let rec = record();
        reg.save(&rec).unwrap();
        assert_eq!(reg.load("r1").unwrap(), rec);
        let text = std::fs::read_to_string(dir.path().join("instances/r1/record.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["domain"]["substrate"], "local", "{text}");
        assert_eq!(v["domain"]["mountpoint"], "/s/mnt/r1");
        assert_eq!(reg.list().unwrap(), vec![rec]);
        assert_eq!(reg.children("src").unwrap().len(), 1);
    }

    #[test]
    fn a_record_of_an_earlier_dbfork_is_read_into_its_local_domain() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        let mut old = serde_json::to_value(record()).unwrap();
        let o = old.as_object_mut().unwrap();
        o.remove("domain");
        o.insert("mountpoint".into(), "/s/mnt/r1".into());
        o.insert(
            "io_limit".into(),
            serde_json::json!({"controller": "v1", "cgroup": "/cg/blkio/g",
                               "device": "7:3", "read_iops": 150}),
        );
        o["sharing"]["pool"] = "/shm/p.pool".into();
        o["sharing"]["stats"] = "/s/instances/r1/agent-stats.json".into();
        o["config"]["preload"] = serde_json::json!(["/usr/lib/libdbfork_agent.so"]);
        o["config"]["env"] = serde_json::json!({"DBFORK_AGENT_ROLE": "source",
                                                "DBFORK_FAMILY_EPOCH_FILE": "/s/f/1/clone_lsn"});
        std::fs::create_dir_all(reg.run_dir("r1")).unwrap();
        std::fs::write(reg.record_path("r1"), serde_json::to_vec(&old).unwrap()).unwrap();

        let rec = reg.load("r1").unwrap();
        let DomainState::Local(d) = &rec.domain else {
            panic!("a local domain expected");
        };
        assert_eq!(d.mountpoint, Path::new("/s/mnt/r1"));
        assert_eq!(d.io_limit.as_ref().unwrap().read_iops, 150);
        let agent = d.agent.as_ref().unwrap();
        assert_eq!(agent.library, Path::new("/usr/lib/libdbfork_agent.so"));
        assert_eq!(agent.pool, Path::new("/shm/p.pool"));
        assert_eq!(agent.env["DBFORK_CLONE_LSN_FILE"], "/s/f/1/clone_lsn");
        assert!(!agent.env.contains_key("DBFORK_FAMILY_EPOCH_FILE"));
        assert_eq!(rec.sharing, record().sharing);
        assert_eq!(rec.clone, record().clone);
    }

    #[test]
    fn unknown_and_corrupt_records_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(dir.path());
        let e = reg.load("ghost").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no database instance named \"ghost\" (see `dbfork list`)"
        );
        std::fs::create_dir_all(reg.run_dir("bad")).unwrap();
        std::fs::write(reg.record_path("bad"), b"{\"name\":").unwrap();
        let e = reg.load("bad").unwrap_err();
        assert!(matches!(e, Error::RecordCorrupt { .. }), "{e}");
        assert!(crate::error::chain(&e).contains("corrupt"), "{e}");
    }
}
