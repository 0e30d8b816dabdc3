//! The `dbfork volume ...` verbs volbench times, driven as a user would through
//! `experiments_support::dbfork` (one process per verb, `--json`, a deadline).

use crate::procs::{self, ChildGuard};
use anyhow::Result;
use experiments_support::Dbfork;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The store's volumes, through the CLI; background exports log into `logs`.
pub struct Volumes {
    pub cli: Dbfork,
    pub logs: PathBuf,
}

/// What a clone is made with.
#[derive(Clone, Copy)]
pub struct CloneSpec {
    pub hydrate: bool,
    pub region_size: Option<u64>,
}

impl Volumes {
    pub fn store(&self) -> &Path {
        &self.cli.store
    }

    fn verb(&self, args: &[&str]) -> Result<serde_json::Value> {
        let args: Vec<&str> = ["volume"].iter().chain(args).copied().collect();
        Ok(self.cli.json(&args)?)
    }

    pub fn import(&self, name: &str, file: &Path) -> Result<serde_json::Value> {
        self.verb(&["import", name, &file.display().to_string()])
    }

    pub fn snapshot(&self, volume: &str, snap: &str) -> Result<()> {
        self.verb(&["snapshot", volume, snap]).map(drop)
    }

    pub fn clone_of(&self, snap: &str, new: &str, spec: CloneSpec) -> Result<()> {
        let rs = spec.region_size.map(|b| format!("{}K", b / 1024));
        let mut args = vec!["clone", snap, new];
        if !spec.hydrate {
            args.push("--no-hydrate");
        }
        if let Some(rs) = rs.as_deref() {
            args.extend(["--region-size", rs]);
        }
        self.verb(&args).map(drop)
    }

    pub fn delete(&self, name: &str) -> Result<()> {
        self.verb(&["delete", name]).map(drop)
    }

    pub fn status(&self, name: &str) -> Result<serde_json::Value> {
        self.verb(&["status", name])
    }

    /// `dbfork volume export NAME --nbd unix:SOCK` in the background. Returns once
    /// spawned; callers wait for the socket themselves (that wait is what they time).
    pub fn export(&self, name: &str, sock: &Path) -> Result<ChildGuard> {
        let mut c = self.cli.command();
        c.args(["volume", "export", name, "--nbd"])
            .arg(format!("unix:{}", sock.display()));
        ChildGuard::spawn(
            &format!("dbfork export {name}"),
            c,
            &self.logs.join(format!("export-{name}.log")),
        )
    }

    /// Poll `status --json` until the clone says it is independent.
    pub fn wait_independent(
        &self,
        name: &str,
        export: &mut ChildGuard,
    ) -> Result<serde_json::Value> {
        procs::poll(
            &format!("{name} to become independent"),
            Duration::from_secs(600),
            Duration::from_millis(20),
            || {
                export.check_alive()?;
                let st = self.status(name)?;
                Ok((st["independent"] == true).then_some(st))
            },
        )
    }
}
