//! The DBMS-native replica path, and the baseline dbfork is measured against:
//! mariadb-backup --backup, --prepare, --copy-back, start, replicate. The server starts
//! the way the local substrate starts dbfork's replicas (`substrate::local::server`),
//! so both paths are measured with the same start; errors are the substrate's, whose
//! `Db` variant carries the instance operations' and MariaDB tools' own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dbinstance::instance::{clear_dir, prepare_empty_dir};
use dbinstance::tools::run;
use dbinstance::{configure_replica, Error, GtidPos, Instance, InstanceConfig, ReplicationSource};
use serde::{Deserialize, Serialize};
use substrate::local::server::{self, Launch};
use substrate::Result;

/// Wall time of each phase.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeCloneTimings {
    pub backup_ms: u64,
    pub prepare_ms: u64,
    pub copy_back_ms: u64,
    /// Server start until the first query answers.
    pub start_ms: u64,
    pub configure_ms: u64,
    pub total_ms: u64,
}

/// A running replica made the native way.
#[derive(Debug)]
pub struct NativeClone {
    pub instance: Instance,
    /// The position the backup is consistent with (replication starts after it).
    pub gtid: GtidPos,
    pub timings: NativeCloneTimings,
}

/// Clones `source` into the (empty or missing) datadir of `new_cfg` with
/// mariadb-backup, starts it as `launch` says, and makes it a read-only replica.
/// The backup is staged in `new_cfg.run_dir/backup` and removed afterwards.
pub fn native_clone(
    source: &Instance,
    new_cfg: InstanceConfig,
    launch: &Launch<'_>,
) -> Result<NativeClone> {
    new_cfg.validate()?;
    source.require_binlog()?;
    if new_cfg.server_id == source.config().server_id {
        return Err(Error::InvalidConfig(format!(
            "clone {} needs a server_id other than its source's ({})",
            new_cfg.name, new_cfg.server_id
        ))
        .into());
    }
    prepare_empty_dir(&new_cfg.datadir)?;
    let t_all = Instant::now();
    let staging = new_cfg.run_dir.join("backup");
    if staging.exists() {
        return Err(Error::InvalidConfig(format!(
            "backup staging dir {} already exists",
            staging.display()
        ))
        .into());
    }
    let _cleanup = RemoveDirOnDrop(staging.clone());
    let datadir = new_cfg.datadir.clone();
    let mut started: Option<Instance> = None;
    let res = clone_steps(source, new_cfg, launch, &staging, &mut started);
    match res {
        Ok((gtid, mut t)) => {
            let instance = started.expect("set when the steps succeed");
            t.total_ms = ms(t_all.elapsed());
            tracing::info!(clone = instance.name(), gtid = %gtid, ?t, "native clone ready");
            Ok(NativeClone {
                instance,
                gtid,
                timings: t,
            })
        }
        Err(e) => {
            // No half-made replica: no server left running, the datadir empty again.
            if let Some(mut inst) = started {
                let _ = inst.kill();
            }
            if let Err(ce) = clear_dir(&datadir) {
                tracing::warn!("cleaning {} after a failed clone: {ce}", datadir.display());
            }
            Err(e)
        }
    }
}

fn clone_steps(
    source: &Instance,
    new_cfg: InstanceConfig,
    launch: &Launch<'_>,
    staging: &Path,
    started: &mut Option<Instance>,
) -> Result<(GtidPos, NativeCloneTimings)> {
    let mut t = NativeCloneTimings::default();
    let log = new_cfg.run_dir.join("mariadb-backup.log");

    let t0 = Instant::now();
    let mut cmd = mariadb_backup(&defaults_file(source.config()), "--backup", staging);
    cmd.arg(format!(
        "--socket={}",
        source.config().socket_path().display()
    ))
    .arg("--user=root");
    run_logged(&mut cmd, "mariadb-backup --backup", &log)?;
    t.backup_ms = ms(t0.elapsed());

    let t0 = Instant::now();
    let mut cmd = mariadb_backup("--no-defaults", "--prepare", staging);
    run_logged(&mut cmd, "mariadb-backup --prepare", &log)?;
    t.prepare_ms = ms(t0.elapsed());

    let gtid = read_backup_gtid(staging)?;

    let instance = Instance::open(new_cfg)?;
    let t0 = Instant::now();
    let mut cmd = mariadb_backup(&defaults_file(instance.config()), "--copy-back", staging);
    run_logged(&mut cmd, "mariadb-backup --copy-back", &log)?;
    t.copy_back_ms = ms(t0.elapsed());
    instance.adopt_repl_secret(source.config())?;

    let instance = started.insert(instance);
    let t0 = Instant::now();
    server::launch(instance, launch)?;
    t.start_ms = ms(t0.elapsed());

    let t0 = Instant::now();
    configure_replica(instance, &ReplicationSource::of(source)?, &gtid)?;
    t.configure_ms = ms(t0.elapsed());
    Ok((gtid, t))
}

/// `mariadb-backup DEFAULTS OP --target-dir=STAGING`: the defaults option first, as
/// mariadb-backup requires.
fn mariadb_backup(defaults: &str, op: &str, staging: &Path) -> Command {
    let mut cmd = Command::new("mariadb-backup");
    cmd.arg(defaults)
        .arg(op)
        .arg(format!("--target-dir={}", staging.display()))
        .stdin(Stdio::null());
    cmd
}

fn defaults_file(cfg: &InstanceConfig) -> String {
    format!("--defaults-file={}", cfg.cnf_path().display())
}

fn run_logged(cmd: &mut Command, what: &str, log: &Path) -> dbinstance::Result<()> {
    let out = run(cmd, what, "mariadb-backup", None)?;
    // mariadb-backup reports on stderr even on success; keep it for post-mortems.
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.insert_str(0, &format!("=== {what}\n"));
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = f.write_all(text.as_bytes());
    }
    Ok(())
}

/// The GTID position recorded by mariadb-backup (file name differs by version).
pub fn read_backup_gtid(backup_dir: &Path) -> dbinstance::Result<GtidPos> {
    for name in ["mariadb_backup_binlog_info", "xtrabackup_binlog_info"] {
        let path = backup_dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => return parse_binlog_info(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    Err(Error::Parse {
        what: backup_dir.display().to_string(),
        detail:
            "no mariadb_backup_binlog_info or xtrabackup_binlog_info: was the source's binlog on?"
                .into(),
    })
}

/// `file<TAB>offset[<TAB>gtid_pos]`; no GTID field means an empty position.
pub fn parse_binlog_info(text: &str, path: &Path) -> dbinstance::Result<GtidPos> {
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| Error::Parse {
            what: path.display().to_string(),
            detail: "empty file".into(),
        })?;
    let fields: Vec<&str> = line.split('\t').collect();
    if fields.len() < 2 || fields[1].trim().parse::<u64>().is_err() {
        return Err(Error::Parse {
            what: path.display().to_string(),
            detail: format!("expected file<TAB>offset[<TAB>gtid], got {line:?}"),
        });
    }
    GtidPos::parse(fields.get(2).copied().unwrap_or(""))
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

struct RemoveDirOnDrop(PathBuf);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binlog_info_variants() {
        let p = Path::new("x");
        assert_eq!(
            parse_binlog_info("binlog.000002\t1234\t0-1-17\n", p).unwrap(),
            GtidPos::parse("0-1-17").unwrap()
        );
        assert_eq!(
            parse_binlog_info("binlog.000002\t1234\t0-1-17,3-2-5", p)
                .unwrap()
                .to_string(),
            "0-1-17,3-2-5"
        );
        assert!(parse_binlog_info("binlog.000001\t329\n", p)
            .unwrap()
            .is_empty());
        assert!(parse_binlog_info("binlog.000001\t329\t\n", p)
            .unwrap()
            .is_empty());
        assert!(parse_binlog_info("", p).is_err());
        assert!(parse_binlog_info("garbage", p).is_err());
        assert!(parse_binlog_info("f\tnotanumber\t0-1-1", p).is_err());
        assert!(parse_binlog_info("f\t1\tzz", p).is_err());
    }
}
