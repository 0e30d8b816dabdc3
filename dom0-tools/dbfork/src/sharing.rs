//! Page sharing for managed instances on the local substrate: the guest agent preloaded
//! into every server, one page table daemon per store, one page pool per family.
//!
//! Sharing is an optimisation (DESIGN invariant 6): when the agent library or the
//! daemon cannot be found or started, instances run without it and `dbfork status`
//! says why. Family and domain ids are server_ids: unique within a store.

use crate::lifecycle::Ctx;
use crate::tools::{self, wait_until};
use anyhow::{anyhow, bail, Context, Result};
use pagetable::admin::{AdminClient, AdminReply, AdminRequest};
use pagetable::{DomainId, FamilyId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub const AGENT_LIB: &str = "libdbfork_agent.so";

/// How an instance takes part in sharing, kept in its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharingRecord {
    pub family_id: u32,
    pub domain_id: u32,
    /// "source" or "replica".
    pub role: String,
    pub pool: PathBuf,
    pub stats: PathBuf,
}

/// Where the pieces are. `DBFORK_AGENT_LIB` and `DBFORK_PAGETABLED` override the
/// default, which is next to the `dbfork` binary (how a cargo build lays them out);
/// `DBFORK_SHARING=off` turns sharing off.
pub struct Sharing {
    pub agent_lib: PathBuf,
    pub pagetabled: PathBuf,
}

impl Sharing {
    pub fn detect(ctx: &Ctx) -> Result<Sharing, String> {
        if std::env::var("DBFORK_SHARING").is_ok_and(|v| v == "off") {
            return Err("turned off by DBFORK_SHARING=off".into());
        }
        let dir = ctx
            .dbfork_exe
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let find = |var: &str, name: &str| -> Result<PathBuf, String> {
            let p = std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.join(name));
            if p.exists() {
                Ok(p)
            } else {
                Err(format!(
                    "{} not found (build the workspace: cargo build --release, or set {var})",
                    p.display()
                ))
            }
        };
        Ok(Sharing {
            agent_lib: find("DBFORK_AGENT_LIB", AGENT_LIB)?,
            pagetabled: find("DBFORK_PAGETABLED", "pagetabled")?,
        })
    }

    /// Starts the store's page table daemon unless it already answers.
    pub fn ensure_daemon(&self, ctx: &Ctx) -> Result<()> {
        let run = ctx.run_dir();
        run.ensure()?;
        if AdminClient::connect(admin_socket(ctx)).is_ok() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run.path().join("pagetabled.log"))?;
        let mut child = Command::new(&self.pagetabled)
            .arg("serve")
            .arg("--socket")
            .arg(data_socket(ctx))
            .arg("--admin-socket")
            .arg(admin_socket(ctx))
            .arg("--state-file")
            .arg(run.path().join("pagetabled.state"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", self.pagetabled.display()))?;
        let up = wait_until(Duration::from_secs(20), || {
            matches!(child.try_wait(), Ok(None)) && AdminClient::connect(admin_socket(ctx)).is_ok()
        });
        if !up {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "pagetabled did not start; see {}",
                run.path().join("pagetabled.log").display()
            );
        }
        std::fs::write(run.path().join("pagetabled.pid"), child.id().to_string())?;
        // It outlives this command; `stop_daemon` ends it when the store is empty.
        std::mem::forget(child);
        Ok(())
    }

    /// Preload and environment for a source server of `family`.
    pub fn source_env(
        &self,
        ctx: &Ctx,
        family: u32,
        run_dir: &Path,
        buffer_pool: u64,
    ) -> Result<(Vec<PathBuf>, BTreeMap<String, String>, SharingRecord)> {
        let epoch = epoch_file(ctx, family);
        std::fs::create_dir_all(epoch.parent().expect("epoch file has a parent"))?;
        if !epoch.exists() {
            publish_epoch(ctx, family, 0)?;
        }
        let pool = pool_path(ctx, family);
        // The pool outlives nothing but the store: claimed, so a store deleted by hand
        // has its pools swept by the next source created on this host.
        if let Err(e) = crate::orphans::claim(Path::new(crate::orphans::SHM), &ctx.store_dir) {
            tracing::warn!("recording the store as owner of its pools: {e}");
        }
        let stats = run_dir.join("agent-stats.json");
        let mut env = self.common_env(ctx, &pool, &stats);
        env.insert("DBFORK_AGENT_ROLE".into(), "source".into());
        env.insert(
            "DBFORK_FAMILY_EPOCH_FILE".into(),
            epoch.display().to_string(),
        );
        // Pool slots live until the family is destroyed: cap them.
        env.insert(
            "DBFORK_POOL_MAX_BYTES".into(),
            (2 * buffer_pool).to_string(),
        );
        Ok((
            vec![self.agent_lib.clone()],
            env,
            SharingRecord {
                family_id: family,
                domain_id: 0,
                role: "source".into(),
                pool,
                stats,
            },
        ))
    }

    /// Preload and environment for a replica with snapshot LSN `lsn`.
    pub fn replica_env(
        &self,
        ctx: &Ctx,
        family: u32,
        run_dir: &Path,
        lsn: u64,
    ) -> (Vec<PathBuf>, BTreeMap<String, String>, SharingRecord) {
        let pool = pool_path(ctx, family);
        let stats = run_dir.join("agent-stats.json");
        let mut env = self.common_env(ctx, &pool, &stats);
        env.insert("DBFORK_AGENT_ROLE".into(), "replica".into());
        env.insert("DBFORK_SNAPSHOT_LSN".into(), lsn.to_string());
        env.insert(
            "DBFORK_REPLICA_WRITES".into(),
            run_dir.join("replica-writes").display().to_string(),
        );
        (
            vec![self.agent_lib.clone()],
            env,
            SharingRecord {
                family_id: family,
                domain_id: 0,
                role: "replica".into(),
                pool,
                stats,
            },
        )
    }

    fn common_env(&self, ctx: &Ctx, pool: &Path, stats: &Path) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("DBFORK_POOL_PATH".to_string(), pool.display().to_string()),
            (
                "DBFORK_PAGETABLE_SOCKET".to_string(),
                data_socket(ctx).display().to_string(),
            ),
            (
                "DBFORK_AGENT_STATS".to_string(),
                stats.display().to_string(),
            ),
        ])
    }
}

fn data_socket(ctx: &Ctx) -> PathBuf {
    ctx.run_dir().path().join("pagetabled.sock")
}

fn admin_socket(ctx: &Ctx) -> PathBuf {
    ctx.run_dir().path().join("pagetabled.admin")
}

fn epoch_file(ctx: &Ctx, family: u32) -> PathBuf {
    ctx.store_dir
        .join("families")
        .join(family.to_string())
        .join("clone_lsn")
}

/// The family's pool, in /dev/shm so its pages are shared memory. The store's inode
/// number keeps two stores on one host apart.
fn pool_path(ctx: &Ctx, family: u32) -> PathBuf {
    let tag = crate::orphans::store_tag(&ctx.store_dir);
    Path::new(crate::orphans::SHM).join(format!("dbfork-{tag}-family-{family}.pool"))
}

/// Publishes a snapshot's LSN to the family's source agent. Called after the snapshot
/// is complete; replaced with rename(2) because the agent reads it by path at any time
/// and must never see half a number.
pub fn publish_epoch(ctx: &Ctx, family: u32, lsn: u64) -> Result<()> {
    let path = epoch_file(ctx, family);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{lsn}\n"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// How long a clone waits for the source's agent to register its warm set.
const SCAN_TIMEOUT: Duration = Duration::from_secs(15);

/// Publishes the snapshot LSN and waits until the source's agent has scanned its
/// buffer pool under it (its `scans` counter moves), so the replica finds the warm
/// set from its first read. Returns the frames the scan pooled.
pub fn offer_warm_set(ctx: &Ctx, source: &SharingRecord, lsn: u64) -> Result<u64> {
    let counter = |k: &str| agent_stats(source).and_then(|v| v[k].as_u64()).unwrap_or(0);
    // The agent scans when the counter grows. A snapshot at the LSN already published
    // (nothing was written since the last clone) finds the warm set registered under
    // it still valid (valid_from >= S): nothing to publish, nothing to wait for.
    let published = std::fs::read_to_string(epoch_file(ctx, source.family_id))
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    if published.is_some_and(|p| lsn <= p) {
        return Ok(0);
    }
    let (scans0, frames0) = (counter("scans"), counter("scan_frames_pooled"));
    publish_epoch(ctx, source.family_id, lsn)?;
    if !wait_until(SCAN_TIMEOUT, || counter("scans") > scans0) {
        bail!(
            "the source's agent did not scan its buffer pool within {} s (see its error log)",
            SCAN_TIMEOUT.as_secs()
        );
    }
    Ok(counter("scan_frames_pooled").saturating_sub(frames0))
}

fn admin(ctx: &Ctx, req: AdminRequest) -> Result<()> {
    let mut c =
        AdminClient::connect(admin_socket(ctx)).map_err(|e| anyhow!("page table daemon: {e}"))?;
    match c
        .call(&req)
        .map_err(|e| anyhow!("page table daemon: {e}"))?
    {
        AdminReply::Error { message } => {
            Err(anyhow!("page table daemon refused {req:?}: {message}"))
        }
        _ => Ok(()),
    }
}

/// Makes `domain` (server `pid`) a member of `family`, creating the family if needed.
pub fn join(ctx: &Ctx, family: u32, domain: u32, pid: u32) -> Result<()> {
    // A family that exists already is fine (a restarted daemon restores its state).
    let _ = admin(
        ctx,
        AdminRequest::FamilyCreate {
            family: FamilyId(family),
        },
    );
    admin(
        ctx,
        AdminRequest::FamilyAdd {
            family: FamilyId(family),
            domain: DomainId(domain),
        },
    )?;
    admin(
        ctx,
        AdminRequest::BindPid {
            pid,
            domain: DomainId(domain),
        },
    )
}

/// Drops a domain's entries, membership and bindings (best effort: the daemon may be gone).
pub fn leave(ctx: &Ctx, domain: u32) {
    if let Err(e) = admin(
        ctx,
        AdminRequest::RemoveDomain {
            domain: DomainId(domain),
        },
    ) {
        tracing::debug!("leave: {e:#}");
    }
}

/// Destroys a family: table entries, the pool (live mappings keep their pages until
/// unmapped), the clone-LSN counter.
pub fn destroy_family(ctx: &Ctx, rec: &SharingRecord) {
    if let Err(e) = admin(
        ctx,
        AdminRequest::FamilyDestroy {
            family: FamilyId(rec.family_id),
        },
    ) {
        tracing::debug!("family destroy: {e:#}");
    }
    let _ = std::fs::remove_file(&rec.pool);
    let mut meta = rec.pool.clone().into_os_string();
    meta.push(".meta");
    let _ = std::fs::remove_file(PathBuf::from(meta));
    let _ = std::fs::remove_dir_all(epoch_file(ctx, rec.family_id).parent().expect("has parent"));
}

/// Stops the store's daemon (when no instance is left).
pub fn stop_daemon(ctx: &Ctx) {
    let pidfile = ctx.run_dir().path().join("pagetabled.pid");
    if let Some(pid) = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        if crate::attach::stop_process(pid) {
            let _ = std::fs::remove_file(&pidfile);
        } else {
            tools::signal(pid, libc::SIGKILL);
        }
    }
}

/// The agent's live counters for an instance, if it writes any.
pub fn agent_stats(rec: &SharingRecord) -> Option<serde_json::Value> {
    let bytes = std::fs::read(&rec.stats).ok()?;
    serde_json::from_slice(&bytes).ok()
}
