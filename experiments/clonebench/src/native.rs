//! The DBMS-native replica path (experiments_support::native_clone: mariadb-backup --backup,
//! --prepare, --copy-back, start, replicate) into a plain temp dir, as the baseline.

use anyhow::{Context, Result};
use dbinstance::{Instance, InstanceConfig};
use experiments_support::{native_clone, NativeCloneTimings};
use std::path::Path;
use std::time::Duration;
use substrate::local::server::Launch;
use tempfile::TempDir;

/// A native replica that is stopped and whose directory is removed on Drop.
pub struct NativeReplica {
    pub instance: Instance,
    pub timings: NativeCloneTimings,
    _dir: TempDir,
}

impl Drop for NativeReplica {
    fn drop(&mut self) {
        if self.instance.is_running() {
            if let Err(e) = self.instance.stop_with_timeout(Duration::from_secs(60)) {
                tracing::warn!(
                    "stopping native replica {}: {e}; killing it",
                    self.instance.name()
                );
                let _ = self.instance.kill();
            }
        }
    }
}

/// The config of a native replica of `source` in a new dir under `base`: same buffer
/// pool as the source, its own port and server_id.
pub fn replica_config(
    source: &InstanceConfig,
    base: &Path,
    name: &str,
    server_id: u32,
) -> Result<(InstanceConfig, TempDir)> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(base)
        .with_context(|| format!("temp dir in {}", base.display()))?;
    let mut cfg = InstanceConfig::in_dir(name, dir.path(), dbinstance::free_port()?, server_id);
    cfg.buffer_pool_size = source.buffer_pool_size;
    Ok((cfg, dir))
}

/// Clones `source` the native way. The server dies with the calling thread if
/// the bench is killed (the guard stops it on a normal exit).
pub fn clone_native(source: &Instance, cfg: InstanceConfig, dir: TempDir) -> Result<NativeReplica> {
    let launch = Launch {
        die_with_parent: true,
        ..Launch::default()
    };
    let name = cfg.name.clone();
    let c = native_clone(source, cfg, &launch).with_context(|| format!("native clone {name}"))?;
    Ok(NativeReplica {
        instance: c.instance,
        timings: c.timings,
        _dir: dir,
    })
}

/// What the native path costs until its server can answer: everything before and
/// including the server start (replication setup comes after the first query).
pub fn until_first_query_ms(t: &NativeCloneTimings) -> u64 {
    t.backup_ms + t.prepare_ms + t.copy_back_ms + t.start_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use experiments_support::testing::InstanceGuard;

    #[test]
    fn native_replica_answers_replicates_and_is_gone_after_drop() {
        let src = InstanceGuard::source("nsrc", 41).unwrap();
        src.exec("CREATE DATABASE d").unwrap();
        src.exec("CREATE TABLE d.t (id INT PRIMARY KEY) ENGINE=InnoDB")
            .unwrap();
        src.exec("INSERT INTO d.t VALUES (1), (2)").unwrap();
        let base = tempfile::tempdir().unwrap();
        let (cfg, dir) = replica_config(src.config(), base.path(), "nrep", 4001).unwrap();
        assert_eq!(cfg.buffer_pool_size, src.config().buffer_pool_size);
        let run_dir = cfg.run_dir.clone();
        let rep = clone_native(&src, cfg, dir).unwrap();
        let n: Option<u64> = rep
            .instance
            .query_scalar("SELECT COUNT(*) FROM d.t")
            .unwrap();
        assert_eq!(n, Some(2));
        let t = &rep.timings;
        assert_eq!(
            until_first_query_ms(t),
            t.backup_ms + t.prepare_ms + t.copy_back_ms + t.start_ms
        );
        assert!(until_first_query_ms(t) <= t.total_ms);
        let pid = rep.instance.pid().expect("running");
        drop(rep);
        assert!(!run_dir.exists(), "replica dir left behind");
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid));
    }

    fn is_zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    }

    #[test]
    fn a_source_without_binlog_is_refused_and_leaves_nothing() {
        let (mut cfg, dir) = experiments_support::testing::test_config("nobin", 42).unwrap();
        cfg.binlog = false;
        let src = InstanceGuard::init_and_start(cfg, dir).unwrap();
        let base = tempfile::tempdir().unwrap();
        let (cfg, dir) = replica_config(src.config(), base.path(), "nrep2", 4002).unwrap();
        let datadir = cfg.datadir.clone();
        let err = clone_native(&src, cfg, dir)
            .err()
            .expect("no binlog, no replica");
        let msg = format!("{err:#}").to_lowercase();
        assert!(
            msg.contains("binary log") || msg.contains("binlog"),
            "{msg}"
        );
        let left = std::fs::read_dir(&datadir).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "half-made datadir left behind");
    }
}
