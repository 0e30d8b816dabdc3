//! Drives the real `dbfork` binary the way a user or script would: `--store DIR
//! --json`, one process per verb, each with a deadline.

use anyhow::{anyhow, bail, Context, Result};
use dbinstance::InstanceConfig;
use serde::Serialize;
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Deadline for any single verb; a clone of a 1 GB source takes seconds, so a
/// verb still running after this is hung, not slow.
const VERB_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct Dbfork {
    pub exe: PathBuf,
    pub store: PathBuf,
}

/// What one `dbfork clone` reported, plus the wall time of the command.
#[derive(Clone, Debug, Serialize)]
pub struct CloneRun {
    pub name: String,
    /// `dbfork clone` started to exited (includes replication setup).
    pub command_ms: u64,
    /// dbfork's own figure: clone began (after the hot-page dump) to first query.
    pub first_query_ms: u64,
    pub hold_ms: u64,
    /// Dirty-page flush before the consistent point (0 from dbforks without it).
    pub flush_ms: u64,
    pub consistent_point_ms: u64,
    /// Waiting for the source's warm-set offer (page sharing; 0 when off or absent).
    pub share_scan_ms: u64,
    pub clone_and_attach_ms: u64,
    pub prefetch_ms: u64,
    pub start_ms: u64,
    pub replication_ms: u64,
    pub hot_pages: u64,
    #[serde(skip)]
    pub config: InstanceConfig,
}

impl Dbfork {
    /// The binary next to this one (same target dir), else `dbfork` on PATH.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
        if let Some(p) = explicit {
            if !p.is_file() {
                bail!("--dbfork {}: no such file", p.display());
            }
            return Ok(p.to_path_buf());
        }
        let me = std::env::current_exe().context("locating clonebench")?;
        if let Some(sibling) = me.parent().map(|d| d.join("dbfork")) {
            if sibling.is_file() {
                return Ok(sibling);
            }
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        for dir in std::env::split_paths(&path) {
            let cand = dir.join("dbfork");
            if cand.is_file() {
                return Ok(cand);
            }
        }
        bail!(
            "no dbfork binary next to {} or on PATH; build it with \
             `cargo build --release -p dbfork` into the same target dir, or pass --dbfork",
            me.display()
        )
    }

    /// Runs `dbfork --store S --json ARGS` and parses its stdout as JSON.
    pub fn run_json(&self, args: &[&str]) -> Result<Value> {
        let out = self.run(args, VERB_TIMEOUT)?;
        if out.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(out.trim())
            .with_context(|| format!("dbfork {}: stdout is not JSON: {out}", args.join(" ")))
    }

    fn run(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let what = format!("dbfork {}", args.join(" "));
        let mut child = Command::new(&self.exe)
            .arg("--store")
            .arg(&self.store)
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
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
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{what}: still running after {} s, killed",
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = t_out.join().unwrap_or_default();
        let stderr = t_err.join().unwrap_or_default();
        if !status.success() {
            return Err(anyhow!(
                "{what}: {status}\nstdout: {}\nstderr: {}",
                stdout.trim(),
                stderr.trim()
            ));
        }
        Ok(stdout)
    }

    pub fn source_create(
        &self,
        name: &str,
        size: &str,
        pool: &str,
        region_size: &str,
    ) -> Result<InstanceConfig> {
        let v = self.run_json(&[
            "source",
            "create",
            name,
            "--size",
            size,
            "--buffer-pool",
            pool,
            "--region-size",
            region_size,
        ])?;
        config_of(&v)
    }

    pub fn clone(&self, src: &str, new: &str) -> Result<CloneRun> {
        let t = Instant::now();
        let v = self.run_json(&["clone", src, new])?;
        let command_ms = t.elapsed().as_millis() as u64;
        parse_clone(new, command_ms, &v)
    }

    pub fn destroy(&self, name: &str) -> Result<()> {
        self.run_json(&["destroy", name, "--with-replicas"])?;
        Ok(())
    }

    /// `hydrated_percent` of an instance's volume.
    pub fn hydrated_percent(&self, name: &str) -> Result<f64> {
        let v = self.run_json(&["status", name])?;
        v["hydrated_percent"]
            .as_f64()
            .ok_or_else(|| anyhow!("dbfork status {name}: no hydrated_percent in {v}"))
    }

    /// Names of the sources in the store (for cleanup).
    pub fn sources(&self) -> Result<Vec<String>> {
        let v = self.run_json(&["list"])?;
        let rows = v.as_array().cloned().unwrap_or_default();
        Ok(rows
            .iter()
            .filter(|r| r["role"] == "source")
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect())
    }
}

fn config_of(record: &Value) -> Result<InstanceConfig> {
    serde_json::from_value(record["config"].clone())
        .with_context(|| format!("no instance config in dbfork's record: {record}"))
}

pub fn parse_clone(name: &str, command_ms: u64, v: &Value) -> Result<CloneRun> {
    let c = &v["clone"];
    let num = |path: &[&str]| -> Result<u64> {
        let mut x = c;
        for p in path {
            x = &x[*p];
        }
        x.as_u64()
            .ok_or_else(|| anyhow!("dbfork clone --json: no clone.{} in {v}", path.join(".")))
    };
    Ok(CloneRun {
        name: name.to_string(),
        command_ms,
        first_query_ms: num(&["first_query_ms"])?,
        hold_ms: num(&["hold_ms"])?,
        flush_ms: c["phase_ms"]["flush"].as_u64().unwrap_or(0),
        consistent_point_ms: num(&["phase_ms", "consistent_point"])?,
        share_scan_ms: c["phase_ms"]["share_scan"].as_u64().unwrap_or(0),
        clone_and_attach_ms: num(&["phase_ms", "clone_and_attach"])?,
        prefetch_ms: num(&["phase_ms", "prefetch"])?,
        start_ms: num(&["phase_ms", "start"])?,
        replication_ms: num(&["phase_ms", "replication"])?,
        hot_pages: num(&["hot_pages"])?,
        config: config_of(v)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Value {
        let cfg = InstanceConfig::in_dir("r1", Path::new("/tmp/x/instances/r1"), 3307, 2);
        serde_json::json!({
            "name": "r1",
            "config": cfg,
            "clone": {
                "first_query_ms": 1200, "hold_ms": 15, "hot_pages": 300,
                "phase_ms": {"consistent_point": 40, "clone_and_attach": 500,
                              "prefetch": 10, "start": 650, "replication": 30}
            }
        })
    }

    #[test]
    fn parses_a_clone_record() {
        let r = parse_clone("r1", 1500, &record()).unwrap();
        assert_eq!(r.first_query_ms, 1200);
        assert_eq!(r.hold_ms, 15);
        assert_eq!(r.start_ms, 650);
        assert_eq!(r.command_ms, 1500);
        assert_eq!(r.config.port, 3307);
        assert_eq!(r.flush_ms, 0, "older dbforks have no flush phase");
        let mut v = record();
        v["clone"]["phase_ms"]["flush"] = 25.into();
        v["clone"]["phase_ms"]["share_scan"] = 7.into();
        let r = parse_clone("r1", 1500, &v).unwrap();
        assert_eq!((r.flush_ms, r.share_scan_ms), (25, 7));
    }

    #[test]
    fn missing_fields_are_named() {
        let mut v = record();
        v["clone"]["phase_ms"]
            .as_object_mut()
            .unwrap()
            .remove("start");
        let err = parse_clone("r1", 1, &v).unwrap_err().to_string();
        assert!(err.contains("clone.phase_ms.start"), "{err}");
        assert!(parse_clone("r1", 1, &Value::Null).is_err());
    }

    #[test]
    fn a_failing_verb_reports_status_and_stderr() {
        // /bin/false stands in for a dbfork that exits non-zero.
        let d = Dbfork {
            exe: "/bin/false".into(),
            store: "/nonexistent".into(),
        };
        let err = d.run_json(&["list"]).unwrap_err().to_string();
        assert!(
            err.contains("dbfork list") && err.contains("exit status"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_binary_is_a_clear_error() {
        let err = Dbfork::locate(Some(Path::new("/nonexistent/dbfork")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such file"), "{err}");
    }
}
