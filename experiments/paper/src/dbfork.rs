//! Drives the real `dbfork` binary the way a user would: `--store S --json VERB`,
//! one process per verb, each with a deadline.

use anyhow::{anyhow, bail, Context, Result};
use dbinstance::InstanceConfig;
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A verb still running after this is hung, not slow (a hydrate-first clone of the
/// small dataset takes seconds).
const VERB_TIMEOUT: Duration = Duration::from_secs(900);

#[derive(Clone, Debug)]
pub struct Dbfork {
    pub exe: PathBuf,
    pub store: PathBuf,
}

impl Dbfork {
    /// `dbfork` next to this binary (the release dir `experiments/run` builds), else PATH.
    pub fn locate() -> Result<PathBuf> {
        let me = std::env::current_exe().context("locating paperrun")?;
        if let Some(p) = me.parent().map(|d| d.join("dbfork")) {
            if p.is_file() {
                return Ok(p);
            }
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join("dbfork"))
            .find(|p| p.is_file())
            .ok_or_else(|| anyhow!("no dbfork next to {} or on PATH", me.display()))
    }

    pub fn json(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Value> {
        let what = format!("dbfork {}", args.join(" "));
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--store")
            .arg(&self.store)
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.exe.display()))?;
        // Drain both pipes on their own threads so a chatty child never blocks.
        let mut so = child.stdout.take().expect("piped");
        let mut se = child.stderr.take().expect("piped");
        let t_out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = so.read_to_string(&mut s);
            s
        });
        let t_err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = se.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + VERB_TIMEOUT;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{what}: still running after {} s, killed",
                    VERB_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = t_out.join().unwrap_or_default();
        let err = t_err.join().unwrap_or_default();
        if !status.success() {
            bail!(
                "{what}: {status}\nstdout: {}\nstderr: {}",
                out.trim(),
                err.trim()
            );
        }
        if out.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(out.trim())
            .with_context(|| format!("{what}: stdout is not JSON: {out}"))
    }

    pub fn source_create(&self, name: &str, size: &str, pool: &str) -> Result<InstanceConfig> {
        let v = self.json(
            &[
                "source",
                "create",
                name,
                "--size",
                size,
                "--buffer-pool",
                pool,
            ],
            &[],
        )?;
        config_of(&v)
    }

    pub fn destroy(&self, name: &str) -> Result<()> {
        self.json(&["destroy", name, "--with-replicas"], &[])?;
        Ok(())
    }

    pub fn status(&self, name: &str) -> Result<Value> {
        self.json(&["status", name], &[])
    }
}

pub fn config_of(record: &Value) -> Result<InstanceConfig> {
    serde_json::from_value(record["config"].clone())
        .with_context(|| format!("no instance config in dbfork's record: {record}"))
}

/// Pid of a server from its pid file.
pub fn pid_of(pid_file: &Path) -> Option<i32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}
