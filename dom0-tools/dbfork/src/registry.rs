//! The database instances dbfork manages: one JSON record each under
//! `STORE/instances/NAME/record.json`, beside the instance's run dir (my.cnf, socket,
//! logs). The record is written last when something is made and removed first when it
//! is destroyed, so a record always names a complete instance.

use dbinstance::{GtidPos, InstanceConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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
    /// Frames the source's agent offered for sharing under this snapshot (0: the warm
    /// set offered at the same LSN before still serves); None when no offer was made
    /// or it failed (sharing then starts cold).
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
    /// Waiting for the source's agent to offer its warm set under the new snapshot.
    #[serde(default)]
    pub share_scan: u64,
    pub clone_and_attach: u64,
    pub prefetch: u64,
    pub start: u64,
    pub replication: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub name: String,
    pub role: Role,
    /// The source at the root of this instance's family (itself for a source).
    pub family: String,
    pub volume: String,
    pub mountpoint: PathBuf,
    pub config: InstanceConfig,
    pub clone: Option<CloneReport>,
    /// Page sharing, when on.
    #[serde(default)]
    pub sharing: Option<crate::sharing::SharingRecord>,
    /// Why sharing is off, when it is.
    #[serde(default)]
    pub sharing_off: Option<String>,
    /// The read-IOPS limit on the instance's volume (`clone --read-iops`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_limit: Option<crate::io_limit::IoLimitRecord>,
}

impl InstanceRecord {
    pub fn parent(&self) -> Option<&str> {
        self.clone.as_ref().map(|c| c.parent.as_str())
    }
    pub fn gtid(&self) -> Option<GtidPos> {
        self.clone.as_ref().and_then(|c| c.gtid.parse().ok())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no database instance named {0:?} (see `dbfork list`)")]
    Unknown(String),
    #[error("instance record {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("instance record {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
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
    pub fn load(&self, name: &str) -> Result<InstanceRecord, RegistryError> {
        let path = self.record_path(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RegistryError::Unknown(name.to_string()))
            }
            Err(source) => {
                return Err(RegistryError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }
    pub fn save(&self, rec: &InstanceRecord) -> Result<(), RegistryError> {
        let path = self.record_path(&rec.name);
        let io = |source| RegistryError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(path.parent().expect("record has a parent")).map_err(io)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(rec).expect("serializable")).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
    /// Forgets the record (the run dir with logs stays until `purge`).
    pub fn remove(&self, name: &str) -> Result<(), RegistryError> {
        match std::fs::remove_file(self.record_path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RegistryError::Io {
                path: self.record_path(name).display().to_string(),
                source,
            }),
        }
    }
    /// Removes the run dir of an instance that has no record any more.
    pub fn purge(&self, name: &str) {
        let _ = std::fs::remove_dir_all(self.run_dir(name));
    }
    pub fn list(&self) -> Result<Vec<InstanceRecord>, RegistryError> {
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
    pub fn children(&self, name: &str) -> Result<Vec<InstanceRecord>, RegistryError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|r| r.parent() == Some(name))
            .collect())
    }
}
