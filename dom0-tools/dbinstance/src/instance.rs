//! One MariaDB server process: init its datadir, start, stop, kill, observe.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::distributions::Alphanumeric;
use rand::Rng;

use crate::config::InstanceConfig;
use crate::error::{Error, Result};
use crate::preflight::{check_port_free, datadir_lock_holder, process_alive, process_matches};
use crate::tools::{run, tail_lines, tail_of_file};

/// The replication account every initialised instance carries (and so every clone).
pub const REPL_USER: &str = "dbfork_repl";

const POLL: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Startup includes crash recovery of a cloned datadir; generous by default.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(180);
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// How to start the server process.
#[derive(Clone, Debug)]
pub struct StartOptions {
    pub timeout: Duration,
    /// Kill the server when the thread that started it exits (PR_SET_PDEATHSIG).
    /// For tests, so a killed test run leaves no servers behind; never for the CLI,
    /// whose servers must outlive it.
    pub die_with_parent: bool,
    /// Called with the server's pid before the server runs a single instruction of its
    /// own (it waits at a gate until this returns). dbfork binds the pid to a domain of
    /// the page table here, so the agent inside is known from its first read.
    pub before_run: Option<PidHook>,
}

/// See [`StartOptions::before_run`].
#[derive(Clone)]
pub struct PidHook(
    pub std::sync::Arc<dyn Fn(u32) -> std::result::Result<(), String> + Send + Sync>,
);

impl std::fmt::Debug for PidHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PidHook")
    }
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            timeout: DEFAULT_START_TIMEOUT,
            die_with_parent: false,
            before_run: None,
        }
    }
}

/// Credentials for the replication account, as stored next to the datadir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplCredentials {
    pub user: String,
    pub password: String,
}

/// A MariaDB server described by an [`InstanceConfig`]. The process, when running,
/// is independent of this value: dropping an `Instance` never stops the server.
#[derive(Debug)]
pub struct Instance {
    cfg: InstanceConfig,
    child: Option<Child>,
}

impl Instance {
    /// Creates a fresh datadir with `mariadb-install-db` (root authenticates by
    /// unix_socket; a `dbfork_repl` user gets a generated password stored 0600 in
    /// the run dir), writes the my.cnf, and leaves the server stopped.
    pub fn init(cfg: InstanceConfig) -> Result<Instance> {
        cfg.validate()?;
        prepare_empty_dir(&cfg.datadir)?;
        fs::create_dir_all(&cfg.run_dir).map_err(|e| Error::io(&cfg.run_dir, e))?;
        let inst = Instance { cfg, child: None };
        inst.write_cnf()?;

        let password: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        let sql_path = inst.cfg.run_dir.join("init-extra.sql");
        let _remove_sql = RemoveOnDrop(&sql_path);
        // Bootstrap runs with grant tables skipped; FLUSH PRIVILEGES loads them so
        // CREATE USER works. One statement per line: bootstrap splits on ";\n".
        let sql = format!(
            "FLUSH PRIVILEGES;\nCREATE USER '{REPL_USER}'@'%' IDENTIFIED BY '{password}';\nGRANT REPLICATION SLAVE, REPLICATION CLIENT, SELECT ON *.* TO '{REPL_USER}'@'%';\n"
        );
        write_private(&sql_path, &sql)?;
        let mut cmd = Command::new("mariadb-install-db");
        cmd.arg(format!("--defaults-file={}", inst.cfg.cnf_path().display()))
            .arg("--skip-test-db")
            .arg("--auth-root-authentication-method=socket")
            .arg(format!("--extra-file={}", sql_path.display()))
            .stdin(Stdio::null());
        run(
            &mut cmd,
            "mariadb-install-db",
            "mariadb-server",
            Some(&inst.cfg.error_log()),
        )?;
        write_private(
            &inst.cfg.repl_secret_path(),
            &format!("{REPL_USER}\n{password}\n"),
        )?;
        tracing::info!(name = %inst.cfg.name, datadir = %inst.cfg.datadir.display(), "initialised datadir");
        Ok(inst)
    }

    /// An instance whose datadir already exists (initialised earlier, or a clone).
    /// Writes the my.cnf for `cfg`. If the server is already running it is adopted
    /// through its pid file.
    pub fn open(cfg: InstanceConfig) -> Result<Instance> {
        cfg.validate()?;
        fs::create_dir_all(&cfg.run_dir).map_err(|e| Error::io(&cfg.run_dir, e))?;
        let inst = Instance { cfg, child: None };
        if !inst.is_running() {
            inst.write_cnf()?;
        }
        Ok(inst)
    }

    pub fn config(&self) -> &InstanceConfig {
        &self.cfg
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// (Re)writes the my.cnf. Takes effect at the next start.
    pub fn write_cnf(&self) -> Result<()> {
        let tmp = self.cfg.tmp_dir();
        fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let path = self.cfg.cnf_path();
        fs::write(&path, self.cfg.render_cnf()).map_err(|e| Error::io(&path, e))
    }

    /// Replaces the config (e.g. to turn read_only or the preload on) and rewrites
    /// the my.cnf; refused while the server runs.
    pub fn reconfigure(&mut self, cfg: InstanceConfig) -> Result<()> {
        if self.is_running() {
            return Err(Error::AlreadyRunning(self.cfg.name.clone()));
        }
        cfg.validate()?;
        self.cfg = cfg;
        self.write_cnf()
    }

    /// The replication account's credentials from the run dir.
    pub fn repl_credentials(&self) -> Result<ReplCredentials> {
        let path = self.cfg.repl_secret_path();
        let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let mut lines = text.lines();
        match (lines.next(), lines.next()) {
            (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => Ok(ReplCredentials {
                user: u.to_string(),
                password: p.to_string(),
            }),
            _ => Err(Error::Parse {
                what: path.display().to_string(),
                detail: "expected a user line and a password line".into(),
            }),
        }
    }

    /// Copies another instance's replication secret (a clone carries the source's
    /// user table, so it has the source's password).
    pub fn adopt_repl_secret(&self, from: &InstanceConfig) -> Result<()> {
        let text = fs::read_to_string(from.repl_secret_path())
            .map_err(|e| Error::io(from.repl_secret_path(), e))?;
        write_private(&self.cfg.repl_secret_path(), &text)
    }

    pub fn start(&mut self) -> Result<()> {
        self.start_with(&StartOptions::default())
    }

    /// Spawns mariadbd (own process group, output to `mysqld.out`) and waits until a
    /// connection over the socket answers. Refuses when the port is bound or the
    /// datadir is locked by a live server.
    pub fn start_with(&mut self, opts: &StartOptions) -> Result<()> {
        let cfg = &self.cfg;
        if self.is_running() {
            return Err(Error::AlreadyRunning(cfg.name.clone()));
        }
        if !cfg.datadir.join("mysql").is_dir() {
            return Err(Error::DatadirNotInitialised(cfg.datadir.clone()));
        }
        if let Some(pid) = datadir_lock_holder(&cfg.datadir)? {
            return Err(Error::DatadirInUse {
                datadir: cfg.datadir.clone(),
                pid,
            });
        }
        check_port_free(&cfg.bind_address, cfg.port)?;
        self.write_cnf()?;

        let out_path = cfg.stdout_log();
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
            .map_err(|e| Error::io(&out_path, e))?;
        let err = out.try_clone().map_err(|e| Error::io(&out_path, e))?;
        // With a pid hook, a shell holds the process at a gate until the hook has run,
        // then becomes mariadbd (exec keeps the pid). LD_PRELOAD is only exported at
        // the exec, so the preload never loads into the shell.
        let gated = opts.before_run.is_some();
        let mut cmd = if gated {
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(r#"read -r _ || exit 111; if [ -n "$DBFORK_GATE_PRELOAD" ]; then export LD_PRELOAD="$DBFORK_GATE_PRELOAD"; fi; unset DBFORK_GATE_PRELOAD; exec "$0" "$@""#)
                .arg(&cfg.mariadbd)
                .stdin(Stdio::piped());
            c
        } else {
            let mut c = Command::new(&cfg.mariadbd);
            c.stdin(Stdio::null());
            c
        };
        cmd.arg(self.defaults_arg())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .envs(&cfg.env);
        if let Some(preload) = cfg.ld_preload() {
            cmd.env(
                if gated {
                    "DBFORK_GATE_PRELOAD"
                } else {
                    "LD_PRELOAD"
                },
                preload,
            );
        }
        if opts.die_with_parent {
            // SAFETY: runs in the forked child before exec; prctl is async-signal-safe
            // and touches no memory of ours.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let log_offset = fs::metadata(cfg.error_log()).map(|m| m.len()).unwrap_or(0);
        let child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::ToolMissing {
                tool: cfg.mariadbd.display().to_string(),
                package: "mariadb-server",
            },
            _ => Error::io(&cfg.mariadbd, e),
        })?;
        let mut child = child;
        if let Some(hook) = &opts.before_run {
            let opened = (hook.0)(child.id()).and_then(|()| {
                use std::io::Write;
                let mut gate = child.stdin.take().ok_or("no gate")?;
                gate.write_all(b"go\n").map_err(|e| e.to_string())
            });
            if let Err(why) = opened {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::InvalidConfig(format!(
                    "{}: not started, the pid hook failed: {why}",
                    cfg.name
                )));
            }
        }
        tracing::info!(name = %cfg.name, pid = child.id(), port = cfg.port, "started mariadbd");
        self.child = Some(child);
        self.wait_ready(opts.timeout, log_offset)
    }

    fn wait_ready(&mut self, timeout: Duration, log_offset: u64) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        self.child = None;
                        return Err(self.startup_failure(status.to_string(), log_offset));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(Error::io(&self.cfg.mariadbd, e)),
                }
            }
            if self.cfg.socket_path().exists() {
                if let Ok(mut c) = crate::sql::connect_socket_opts(&self.cfg, Some(PROBE_TIMEOUT)) {
                    if crate::sql::ping(&mut c) {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                // A server that is not up in time is stopped, not left running: the
                // caller unwinds (unmounts, deletes) and must not find it holding on.
                if let Some(mut child) = self.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(Error::StartupTimeout {
                    name: self.cfg.name.clone(),
                    secs: timeout.as_secs(),
                    log_tail: self.log_tail_since(log_offset, 30),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    fn startup_failure(&self, status: String, log_offset: u64) -> Error {
        let tail = self.log_tail_since(log_offset, 30);
        if let Some(line) = tail
            .lines()
            .find(|l| l.contains("Address already in use") || l.contains("Bind on TCP/IP port"))
        {
            return Error::PortInUse {
                addr: self.cfg.bind_address.clone(),
                port: self.cfg.port,
                detail: format!(" (server log: {})", line.trim()),
            };
        }
        Error::StartupExited {
            name: self.cfg.name.clone(),
            status,
            log_tail: tail,
        }
    }

    /// The error log written since `offset` plus the tail of the stdout log.
    fn log_tail_since(&self, offset: u64, n: usize) -> String {
        let log = fs::read(self.cfg.error_log()).unwrap_or_default();
        let start = (offset as usize).min(log.len());
        let mut text = tail_lines(&String::from_utf8_lossy(&log[start..]), n);
        let out = tail_of_file(&self.cfg.stdout_log(), 10);
        if !out.trim().is_empty() {
            text.push_str("\n--- mysqld.out ---\n");
            text.push_str(&out);
        }
        text
    }

    /// The last `n` lines of the server's error log.
    pub fn error_log_tail(&self, n: usize) -> String {
        tail_of_file(&self.cfg.error_log(), n)
    }

    fn defaults_arg(&self) -> String {
        format!("--defaults-file={}", self.cfg.cnf_path().display())
    }

    /// The server's pid, if it is running (spawned by us or found via the pid file).
    pub fn pid(&self) -> Option<i32> {
        if let Some(child) = &self.child {
            let pid = child.id() as i32;
            if process_alive(pid) {
                return Some(pid);
            }
        }
        let text = fs::read_to_string(self.cfg.pid_file()).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        // A stale pid file may name an unrelated process by now.
        process_matches(pid, &self.defaults_arg()).then_some(pid)
    }

    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    pub fn stop(&mut self) -> Result<()> {
        self.stop_with_timeout(DEFAULT_STOP_TIMEOUT)
    }

    /// Clean shutdown (SIGTERM) and wait until the process is gone. A stopped
    /// instance is fine.
    pub fn stop_with_timeout(&mut self, timeout: Duration) -> Result<()> {
        let Some(pid) = self.pid() else {
            self.reap();
            return Ok(());
        };
        tracing::info!(name = %self.cfg.name, pid, "stopping mariadbd");
        signal(pid, libc::SIGTERM)?;
        self.wait_gone(pid, timeout)
    }

    /// SIGKILL, as a crash would; waits until the process is gone.
    pub fn kill(&mut self) -> Result<()> {
        let Some(pid) = self.pid() else {
            self.reap();
            return Ok(());
        };
        tracing::info!(name = %self.cfg.name, pid, "killing mariadbd");
        signal(pid, libc::SIGKILL)?;
        self.wait_gone(pid, Duration::from_secs(30))
    }

    fn wait_gone(&mut self, pid: i32, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let gone = match self.child.as_mut() {
                Some(c) if c.id() as i32 == pid => matches!(c.try_wait(), Ok(Some(_)) | Err(_)),
                _ => !process_alive(pid),
            };
            if gone {
                self.child = None;
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::StopTimeout {
                    name: self.cfg.name.clone(),
                    pid,
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.try_wait();
        }
    }
}

fn signal(pid: i32, sig: libc::c_int) -> Result<()> {
    // SAFETY: kill(2) takes plain integers and has no memory effects on us.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // Already gone between the liveness check and the signal: that is success.
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(Error::io(format!("/proc/{pid}"), e));
        }
    }
    Ok(())
}

/// Creates `dir` if needed and insists it is empty (a fresh filesystem's lost+found
/// is tolerated).
pub fn prepare_empty_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let occupied = entries.any(|e| e.map(|e| e.file_name() != "lost+found").unwrap_or(true));
    if occupied {
        return Err(Error::DatadirNotEmpty(dir.to_path_buf()));
    }
    Ok(())
}

/// Removes everything inside `dir` (not `dir` itself: it may be a mount point),
/// keeping lost+found.
pub fn clear_dir(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.file_name() == "lost+found" {
            continue;
        }
        let path = entry.path();
        let res = if entry.file_type().map_err(|e| Error::io(&path, e))?.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        res.map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

pub(crate) fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    // An existing file keeps its old mode through truncate; force it.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))
}

struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}
