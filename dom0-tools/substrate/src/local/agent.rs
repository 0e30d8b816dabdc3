//! The process side of page sharing on this host: the guest agent is a preload library
//! in every server process, configured by environment; the family's frames live in a
//! pool file in shared memory (/dev/shm), mapped copy-on-write over buffer-pool frames;
//! the family's clone LSN is a small file the source's agent reads by path.

use super::orphans;
use crate::error::{Error, Result};
use crate::{AgentRole, AgentSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The agent library's file name next to the `dbfork` binary (how a cargo build lays
/// the workspace's artefacts out).
pub const AGENT_LIB: &str = "libdbfork_agent.so";

/// The agent a server process runs with: what to preload and the environment that
/// configures it, plus the files dbfork reads or removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalAgent {
    pub library: PathBuf,
    pub env: BTreeMap<String, String>,
    /// The family's pool of shared frames.
    pub pool: PathBuf,
    /// Where the agent writes its counters.
    pub stats: PathBuf,
}

/// Finds the agent library: `DBFORK_AGENT_LIB`, else next to the `dbfork` binary.
pub fn find_library(dbfork_exe: &Path) -> Result<PathBuf> {
    let p = std::env::var_os("DBFORK_AGENT_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            dbfork_exe
                .parent()
                .map(|d| d.join(AGENT_LIB))
                .unwrap_or_else(|| PathBuf::from(AGENT_LIB))
        });
    if p.exists() {
        Ok(p)
    } else {
        Err(Error::SharingUnavailable(format!(
            "{} not found (build the workspace: cargo build --release, or set DBFORK_AGENT_LIB)",
            p.display()
        )))
    }
}

/// The family's pool, in shared memory so its pages are shared. The store's tag
/// (device and inode) keeps two stores on one host apart.
pub fn pool_path(store_dir: &Path, family: u32) -> PathBuf {
    let tag = orphans::store_tag(store_dir);
    Path::new(orphans::SHM).join(format!("dbfork-{tag}-family-{family}.pool"))
}

fn family_dir(store_dir: &Path, family: u32) -> PathBuf {
    store_dir.join("families").join(family.to_string())
}

/// The file holding the family's clone LSN (decimal).
pub fn clone_lsn_file(store_dir: &Path, family: u32) -> PathBuf {
    family_dir(store_dir, family).join("clone_lsn")
}

/// Replaces the family's clone LSN with rename(2): the source's agent reads it by path
/// at any time and must never see half a number.
pub fn publish_clone_lsn(store_dir: &Path, family: u32, lsn: u64) -> Result<()> {
    let path = clone_lsn_file(store_dir, family);
    let dir = family_dir(store_dir, family);
    std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{lsn}\n")).map_err(Error::io("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(Error::io("publishing", &path))
}

pub fn read_clone_lsn(store_dir: &Path, family: u32) -> Option<u64> {
    std::fs::read_to_string(clone_lsn_file(store_dir, family))
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

/// The agent for a server whose run dir is `run_dir`, as `spec` says.
pub fn configure(
    store_dir: &Path,
    library: PathBuf,
    spec: &AgentSpec,
    page_table: &Path,
    run_dir: &Path,
) -> Result<LocalAgent> {
    let pool = pool_path(store_dir, spec.family);
    let stats = run_dir.join("agent-stats.json");
    let mut env = BTreeMap::from([
        ("DBFORK_POOL_PATH".to_string(), pool.display().to_string()),
        (
            "DBFORK_PAGETABLE_SOCKET".to_string(),
            page_table.display().to_string(),
        ),
        (
            "DBFORK_AGENT_STATS".to_string(),
            stats.display().to_string(),
        ),
    ]);
    match spec.role {
        AgentRole::Source { pool_max_bytes } => {
            // The clone LSN starts at 0 (nothing cloned yet); kept across restarts.
            if read_clone_lsn(store_dir, spec.family).is_none() {
                publish_clone_lsn(store_dir, spec.family, 0)?;
            }
            // The pool outlives nothing but the store: claimed, so a store deleted by
            // hand has its pools swept by the next source created on this host.
            if let Err(e) = orphans::claim(Path::new(orphans::SHM), store_dir) {
                tracing::warn!("recording the store as owner of its pools: {e}");
            }
            env.insert("DBFORK_AGENT_ROLE".into(), "source".into());
            env.insert(
                "DBFORK_CLONE_LSN_FILE".into(),
                clone_lsn_file(store_dir, spec.family).display().to_string(),
            );
            // Pool slots live until the family is destroyed: capped.
            env.insert("DBFORK_POOL_MAX_BYTES".into(), pool_max_bytes.to_string());
        }
        AgentRole::Replica { snapshot_lsn } => {
            env.insert("DBFORK_AGENT_ROLE".into(), "replica".into());
            env.insert("DBFORK_SNAPSHOT_LSN".into(), snapshot_lsn.to_string());
            // The pages this replica wrote: never shared to it again, across restarts.
            env.insert(
                "DBFORK_REPLICA_WRITES".into(),
                run_dir.join("replica-writes").display().to_string(),
            );
        }
    }
    Ok(LocalAgent {
        library,
        env,
        pool,
        stats,
    })
}

/// The agent's live counters, if it has written any.
pub fn counters(agent: &LocalAgent) -> Option<serde_json::Value> {
    let bytes = std::fs::read(&agent.stats).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Removes the family's pool (live mappings keep their pages until unmapped), its
/// record file and its clone LSN.
pub fn destroy_family(store_dir: &Path, family: u32) {
    let pool = pool_path(store_dir, family);
    let _ = std::fs::remove_file(&pool);
    let mut meta = pool.into_os_string();
    meta.push(".meta");
    let _ = std::fs::remove_file(PathBuf::from(meta));
    let _ = std::fs::remove_dir_all(family_dir(store_dir, family));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(role: AgentRole) -> AgentSpec {
        AgentSpec {
            family: 7,
            domain: 9,
            role,
        }
    }

    #[test]
    fn a_source_gets_its_clone_lsn_and_a_replica_its_snapshot_lsn() {
        let store = tempfile::tempdir().unwrap();
        let run = store.path().join("run-src");
        let src = configure(
            store.path(),
            "/lib/agent.so".into(),
            &spec(AgentRole::Source {
                pool_max_bytes: 1 << 20,
            }),
            Path::new("/run/pt.sock"),
            &run,
        )
        .unwrap();
        assert_eq!(src.env["DBFORK_AGENT_ROLE"], "source");
        assert_eq!(src.env["DBFORK_PAGETABLE_SOCKET"], "/run/pt.sock");
        assert_eq!(read_clone_lsn(store.path(), 7), Some(0));
        assert_eq!(
            Path::new(&src.env["DBFORK_CLONE_LSN_FILE"]),
            clone_lsn_file(store.path(), 7)
        );
        publish_clone_lsn(store.path(), 7, 4242).unwrap();
        // A restarted source keeps the clone LSN published before.
        configure(
            store.path(),
            "/lib/agent.so".into(),
            &spec(AgentRole::Source { pool_max_bytes: 1 }),
            Path::new("/run/pt.sock"),
            &run,
        )
        .unwrap();
        assert_eq!(read_clone_lsn(store.path(), 7), Some(4242));

        let rep = configure(
            store.path(),
            "/lib/agent.so".into(),
            &spec(AgentRole::Replica { snapshot_lsn: 99 }),
            Path::new("/run/pt.sock"),
            &store.path().join("run-r"),
        )
        .unwrap();
        assert_eq!(rep.env["DBFORK_SNAPSHOT_LSN"], "99");
        assert_eq!(rep.pool, src.pool, "one pool per family");
        assert!(!rep.env.contains_key("DBFORK_CLONE_LSN_FILE"));
        destroy_family(store.path(), 7);
        assert_eq!(read_clone_lsn(store.path(), 7), None);
        orphans::release(
            Path::new(orphans::SHM),
            store.path(),
            &crate::local::io_limit::group_roots(),
        );
    }
}
