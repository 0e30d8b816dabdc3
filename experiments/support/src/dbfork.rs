//! Drives the real `dbfork` binary the way a user or a script would:
//! `dbfork --store S --json VERB ...`, one process per verb, each with a deadline,
//! both pipes drained while it runs, stdout parsed as JSON. Every error names the
//! verb. What a verb's record means (a clone's phase times, a volume's hydration)
//! is each experiment's business: their typed helpers stay with them.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dbinstance::InstanceConfig;
use serde_json::Value;

/// A verb still running after this is hung, not slow: a hydrate-first clone of an
/// experiment's dataset or an import of a 4 GiB image takes seconds to minutes.
pub const VERB_TIMEOUT: Duration = Duration::from_secs(900);

/// The longest pause between two looks at a running verb; shorter ones (a tenth of
/// the time so far) keep the wait from inflating the quick verbs benchmarks time.
const MAX_POLL: Duration = Duration::from_millis(20);

/// What can go wrong while finding or running `dbfork`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("dbfork binary {}: no such file", .0.display())]
    NoSuchBinary(PathBuf),

    #[error(
        "no dbfork binary next to {}, in {} or on PATH; build it with \
         `cargo build --release -p dbfork` into the same target dir",
        next_to.display(),
        bench_dir.display()
    )]
    NotFound {
        next_to: PathBuf,
        bench_dir: PathBuf,
    },

    #[error("locating this program's own binary")]
    CurrentExe(#[source] std::io::Error),

    #[error("{verb}: spawning {}", exe.display())]
    Spawn {
        verb: String,
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{verb}: waiting for it")]
    Wait {
        verb: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{verb}: still running after {secs} s, killed")]
    Timeout { verb: String, secs: u64 },

    #[error("{verb}: {status}\nstdout: {stdout}\nstderr: {stderr}")]
    Failed {
        verb: String,
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },

    #[error("{verb}: stdout is not JSON: {stdout}")]
    NotJson {
        verb: String,
        stdout: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("no instance config in dbfork's record: {record}")]
    NoConfig {
        record: String,
        #[source]
        source: serde_json::Error,
    },
}

/// One store, one binary.
#[derive(Clone, Debug)]
pub struct Dbfork {
    pub exe: PathBuf,
    pub store: PathBuf,
}

impl Dbfork {
    pub fn new(exe: impl Into<PathBuf>, store: impl Into<PathBuf>) -> Dbfork {
        Dbfork {
            exe: exe.into(),
            store: store.into(),
        }
    }

    /// `explicit` when given (it must exist), else the `dbfork` next to this program
    /// (the same target dir), else the workspace's `target-bench/release/dbfork`,
    /// else the first on PATH.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, CliError> {
        if let Some(p) = explicit {
            return if p.is_file() {
                Ok(p.to_path_buf())
            } else {
                Err(CliError::NoSuchBinary(p.to_path_buf()))
            };
        }
        let me = std::env::current_exe().map_err(CliError::CurrentExe)?;
        let next_to = me.parent().unwrap_or(Path::new("/")).to_path_buf();
        let bench_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target-bench/release");
        let path = std::env::var_os("PATH").unwrap_or_default();
        [next_to.clone(), bench_dir.clone()]
            .into_iter()
            .chain(std::env::split_paths(&path))
            .map(|d| d.join("dbfork"))
            .find(|p| p.is_file())
            .ok_or(CliError::NotFound { next_to, bench_dir })
    }

    /// `dbfork --store S --json`, for a verb the caller runs itself (a server that
    /// stays in the background, such as `volume export`).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--store").arg(&self.store).arg("--json");
        cmd
    }

    /// Runs `dbfork --store S --json ARGS` to completion within [`VERB_TIMEOUT`]
    /// and parses its stdout (`Null` when it printed nothing).
    pub fn json(&self, args: &[&str]) -> Result<Value, CliError> {
        self.json_within(args, VERB_TIMEOUT)
    }

    /// [`Dbfork::json`] with another deadline; the verb is killed when it passes.
    pub fn json_within(&self, args: &[&str], timeout: Duration) -> Result<Value, CliError> {
        let verb = format!("dbfork {}", args.join(" "));
        let stdout = self.run(&verb, args, timeout)?;
        if stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(stdout.trim()).map_err(|source| CliError::NotJson {
            verb,
            stdout,
            source,
        })
    }

    fn run(&self, verb: &str, args: &[&str], timeout: Duration) -> Result<String, CliError> {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| CliError::Spawn {
                verb: verb.to_string(),
                exe: self.exe.clone(),
                source,
            })?;
        // Drained on their own threads so a chatty verb never blocks on a full pipe.
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let wait_err = |source| CliError::Wait {
            verb: verb.to_string(),
            source,
        };
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().map_err(wait_err)? {
                break st;
            }
            let elapsed = t0.elapsed();
            if elapsed > timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CliError::Timeout {
                    verb: verb.to_string(),
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep((elapsed / 10).clamp(Duration::from_millis(1), MAX_POLL));
        };
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        if !status.success() {
            return Err(CliError::Failed {
                verb: verb.to_string(),
                status,
                stdout: stdout.trim().to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        Ok(stdout)
    }

    /// `dbfork source create NAME --size SIZE --buffer-pool POOL EXTRA...`: the new
    /// source's instance config.
    pub fn source_create(
        &self,
        name: &str,
        size: &str,
        buffer_pool: &str,
        extra: &[&str],
    ) -> Result<InstanceConfig, CliError> {
        let mut args = vec![
            "source",
            "create",
            name,
            "--size",
            size,
            "--buffer-pool",
            buffer_pool,
        ];
        args.extend_from_slice(extra);
        config_of(&self.json(&args)?)
    }

    /// `dbfork destroy NAME --with-replicas`.
    pub fn destroy(&self, name: &str) -> Result<(), CliError> {
        self.json(&["destroy", name, "--with-replicas"])?;
        Ok(())
    }

    /// `dbfork status NAME`: the instance's record (lag, hydration, sharing).
    pub fn status(&self, name: &str) -> Result<Value, CliError> {
        self.json(&["status", name])
    }
}

/// The instance config in a record of `source create`, `clone` or `status`.
pub fn config_of(record: &Value) -> Result<InstanceConfig, CliError> {
    serde_json::from_value(record["config"].clone()).map_err(|source| CliError::NoConfig {
        record: record.to_string(),
        source,
    })
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in dbfork: a shell script that gets the same arguments.
    fn fake(dir: &Path, body: &str) -> Dbfork {
        let exe = dir.join("dbfork");
        std::fs::write(&exe, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        Dbfork::new(exe, dir.join("store"))
    }

    #[test]
    fn a_failing_verb_reports_status_and_stderr() {
        // /bin/false stands in for a dbfork that exits non-zero.
        let d = Dbfork {
            exe: "/bin/false".into(),
            store: "/nonexistent".into(),
        };
        let err = d.json(&["list"]).unwrap_err().to_string();
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

    #[test]
    fn passes_store_and_json_first_and_parses_stdout() {
        let dir = tempfile::tempdir().unwrap();
        let d = fake(dir.path(), r#"printf '{"args": "%s"}' "$*""#);
        let v = d.json(&["status", "src"]).unwrap();
        let want = format!("--store {} --json status src", d.store.display());
        assert_eq!(v["args"], want.as_str());
    }

    #[test]
    fn empty_stdout_is_null_and_other_text_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            fake(dir.path(), "true").json(&["list"]).unwrap(),
            Value::Null
        );
        let err = fake(dir.path(), "echo not json")
            .json(&["volume", "list"])
            .unwrap_err();
        assert!(matches!(err, CliError::NotJson { .. }), "{err}");
        assert!(err.to_string().contains("dbfork volume list"), "{err}");
    }

    #[test]
    fn a_hung_verb_is_killed_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let d = fake(dir.path(), "exec sleep 30");
        let t0 = Instant::now();
        let err = d
            .json_within(&["clone", "a", "b"], Duration::from_millis(200))
            .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert!(
            matches!(&err, CliError::Timeout { verb, .. } if verb == "dbfork clone a b"),
            "{err}"
        );
    }

    #[test]
    fn a_chatty_verb_does_not_block_on_its_pipes() {
        // More than a pipe buffer (64 KiB) on each stream before the JSON.
        let dir = tempfile::tempdir().unwrap();
        let d = fake(
            dir.path(),
            "head -c 300000 /dev/zero | tr '\\0' x >&2; printf '[1, 2]'",
        );
        let v = d.json_within(&["list"], Duration::from_secs(20)).unwrap();
        assert_eq!(v, serde_json::json!([1, 2]));
    }

    #[test]
    fn a_record_without_config_is_named() {
        let err = config_of(&serde_json::json!({"name": "r1"})).unwrap_err();
        assert!(err.to_string().contains("r1"), "{err}");
        let cfg = InstanceConfig::in_dir("r1", Path::new("/tmp/x/r1"), 3307, 2);
        let got = config_of(&serde_json::json!({ "config": cfg })).unwrap();
        assert_eq!(got.port, 3307);
    }
}
