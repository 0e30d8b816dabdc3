//! Test support: instances in temp dirs that are stopped (or killed) and removed on
//! Drop, also when the test panics. Used by the tests and benches of dbinstance and
//! workload, and by the experiments' tests.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use dbinstance::{free_port, Error, Instance, InstanceConfig, Result};
use substrate::local::server::{self, Launch};

/// How long Drop waits for a clean shutdown before SIGKILL.
const DROP_STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Copies a running instance's datadir into the empty dir `dest` as an atomic volume
/// snapshot would see it: the server is SIGSTOPped for the copy, so no file changes
/// mid-copy. Like a snapshot, the copy is crash-consistent (it needs crash recovery
/// when started). Returns how long the server was stopped. Stand-in for the volume
/// snapshot in tests that must not depend on the volume engine.
pub fn frozen_datadir_copy(source: &Instance, dest: &Path) -> Result<Duration> {
    let pid = source
        .pid()
        .ok_or_else(|| Error::NotRunning(source.name().to_string()))?;
    std::fs::create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
    let t0 = std::time::Instant::now();
    // SAFETY: kill(2) with integers only.
    if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
        return Err(Error::io(
            format!("/proc/{pid}"),
            std::io::Error::last_os_error(),
        ));
    }
    struct Cont(i32);
    impl Drop for Cont {
        fn drop(&mut self) {
            // SAFETY: as above; the server must never stay stopped, even on error.
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }
    let _cont = Cont(pid);
    let src = format!("{}/.", source.config().datadir.display());
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(dest)
        .output()
        .map_err(|e| Error::io("cp", e))?;
    if !out.status.success() {
        return Err(Error::CommandFailed {
            what: format!("cp -a {src} {}", dest.display()),
            status: out.status.to_string(),
            output_tail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(t0.elapsed())
}

/// Owns an [`Instance`] and its temp dir. Deref gives the instance.
pub struct InstanceGuard {
    instance: Instance,
    dir: Option<TempDir>,
}

/// How test servers run: as the local substrate runs them, but they die with the
/// test process.
pub fn test_launch() -> Launch<'static> {
    Launch {
        die_with_parent: true,
        ..Launch::default()
    }
}

/// Starts `inst`'s server as a test server (see [`test_launch`]).
pub fn start(inst: &Instance) -> substrate::Result<()> {
    server::launch(inst, &test_launch()).map(drop)
}

/// How long bringing up a replica took.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplicaStart {
    /// Server start (crash recovery included) until the first query answers.
    pub start_ms: u64,
    pub configure_ms: u64,
}

/// Brings up a read-only replica of `source` from a datadir that already holds a
/// consistent copy of it at `gtid` (a snapshot), as a test server: the source's
/// replication account, the start, replication from right after `gtid`. On failure
/// the server is killed again.
pub fn start_replica(
    source: &Instance,
    new_cfg: InstanceConfig,
    gtid: &dbinstance::GtidPos,
) -> substrate::Result<(Instance, ReplicaStart)> {
    if new_cfg.server_id == source.config().server_id {
        return Err(Error::InvalidConfig(format!(
            "replica {} needs a server_id other than its source's ({})",
            new_cfg.name, new_cfg.server_id
        ))
        .into());
    }
    let mut inst = Instance::open(new_cfg)?;
    inst.adopt_repl_secret(source.config())?;
    let mut t = ReplicaStart::default();
    let t0 = std::time::Instant::now();
    start(&inst)?;
    t.start_ms = t0.elapsed().as_millis() as u64;
    let t0 = std::time::Instant::now();
    let configured = dbinstance::ReplicationSource::of(source)
        .and_then(|s| dbinstance::configure_replica(&inst, &s, gtid));
    if let Err(e) = configured {
        let _ = inst.kill();
        return Err(e.into());
    }
    t.configure_ms = t0.elapsed().as_millis() as u64;
    Ok((inst, t))
}

/// A new temp dir with a short path (sockets have a 107-byte limit).
pub fn short_tempdir(prefix: &str) -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .map_err(|e| Error::io("/tmp", e))
}

/// A config in a fresh temp dir with a free port and small, test-sized settings
/// (64 MiB pool, 16 MiB redo log).
pub fn test_config(name: &str, server_id: u32) -> Result<(InstanceConfig, TempDir)> {
    let dir = short_tempdir(&format!("dbi-{name}-"))?;
    let mut cfg = InstanceConfig::in_dir(name, dir.path(), free_port()?, server_id);
    cfg.extra
        .insert("innodb_log_file_size".into(), "16M".into());
    Ok((cfg, dir))
}

impl InstanceGuard {
    /// Initialised and running, binlog on.
    pub fn source(name: &str, server_id: u32) -> substrate::Result<Self> {
        let (cfg, dir) = test_config(name, server_id)?;
        let instance = Instance::init(cfg)?;
        let mut g = InstanceGuard {
            instance,
            dir: Some(dir),
        };
        g.restart()?;
        Ok(g)
    }

    /// Starts the server (again, after a stop or a kill). The port it had, free a
    /// moment ago, may be taken by another process before the server binds it (other
    /// test processes pick ports the same way, and clients' outgoing connections use
    /// ephemeral ports): then another is picked and the start retried.
    pub fn restart(&mut self) -> substrate::Result<()> {
        let mut attempts = 0;
        loop {
            match start(&self.instance) {
                Err(substrate::Error::Db(Error::PortInUse { .. })) if attempts < 3 => {
                    attempts += 1;
                    let mut cfg = self.instance.config().clone();
                    cfg.port = free_port()?;
                    self.instance.reconfigure(cfg)?;
                }
                other => return other,
            }
        }
    }

    /// Init `cfg` (whose dirs should be inside `dir`) and start it.
    pub fn init_and_start(cfg: InstanceConfig, dir: TempDir) -> substrate::Result<Self> {
        let instance = Instance::init(cfg)?;
        let g = InstanceGuard {
            instance,
            dir: Some(dir),
        };
        start(&g.instance)?;
        Ok(g)
    }

    /// Takes ownership of an instance (running or not) and the dir to remove.
    pub fn adopt(instance: Instance, dir: Option<TempDir>) -> Self {
        InstanceGuard { instance, dir }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path())
    }
}

impl Deref for InstanceGuard {
    type Target = Instance;
    fn deref(&self) -> &Instance {
        &self.instance
    }
}

impl DerefMut for InstanceGuard {
    fn deref_mut(&mut self) -> &mut Instance {
        &mut self.instance
    }
}

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        if self.instance.is_running() {
            // A panicking test may have left the server mid-anything; a clean stop is
            // polite, SIGKILL is the guarantee.
            let res = if std::thread::panicking() {
                self.instance.kill()
            } else {
                self.instance.stop_with_timeout(DROP_STOP_TIMEOUT)
            };
            if let Err(e) = res {
                eprintln!(
                    "InstanceGuard: stopping {} failed ({e}); killing",
                    self.instance.name()
                );
                let _ = self.instance.kill();
            }
        }
        // TempDir's own Drop removes the tree.
        self.dir.take();
    }
}

/// Waits (up to 30 s) until a session of `src` running a statement that starts with
/// `needle` waits for the backup lock (BACKUP STAGE BLOCK_COMMIT holds it); returns
/// that session's state. Panics when it never does: the hold did not hold.
pub fn wait_for_backup_lock(src: &Instance, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut c = src.conn().expect("a connection to the source");
    loop {
        let state: Option<String> = dbinstance::sql::scalar(
            &mut c,
            "t",
            &format!(
                "SELECT STATE FROM information_schema.PROCESSLIST WHERE INFO LIKE '{needle}%' AND STATE LIKE '%backup lock%'"
            ),
        )
        .expect("reading the process list");
        if let Some(s) = state {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{needle} never waited for the backup lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A binary of this workspace, built now into the calling test's target directory
/// (cargo builds only the package under test's own binaries for its tests).
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    // Built once per test process: tests running at once would otherwise each run
    // cargo, one replacing the binary while another starts it.
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let key = format!("{package}/{bin}");
    if let Some((_, path)) = built.iter().find(|(k, _)| *k == key) {
        return path.clone();
    }
    let path = build_workspace_binary(package, bin);
    built.push((key, path.clone()));
    path
}

fn build_workspace_binary(package: &str, bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test>: the profile directory is two up.
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test binary under target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("a target directory");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-p", package, "--bin", bin, "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml"))
        .env("CARGO_TARGET_DIR", target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let st = cmd.status().expect("running cargo build");
    assert!(st.success(), "building {bin} failed");
    profile_dir.join(bin)
}
