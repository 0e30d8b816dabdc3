//! One MariaDB server: init its datadir, get ready to start (the process itself is
//! spawned by a substrate), wait until it answers, stop, kill, observe.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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

/// What [`Instance::prepare_start`] found ready: the command that runs the server and
/// where its output goes.
#[derive(Debug)]
pub struct StartPlan {
    pub program: std::path::PathBuf,
    pub args: Vec<String>,
    pub stdout: std::fs::File,
    pub stderr: std::fs::File,
    /// The error log's length before the start: what the server writes after it is
    /// this start's.
    pub log_offset: u64,
}

/// A password for an account dbfork makes (24 letters and digits).
pub fn new_password() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
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
}

impl Instance {
    /// Creates a fresh datadir with `mariadb-install-db` (root authenticates by
    /// unix_socket; a `dbfork_repl` user gets a generated password stored 0600 in
    /// the run dir), writes the my.cnf, and leaves the server stopped.
    pub fn init(cfg: InstanceConfig) -> Result<Instance> {
        cfg.validate()?;
        prepare_empty_dir(&cfg.datadir)?;
        fs::create_dir_all(&cfg.run_dir).map_err(|e| Error::io(&cfg.run_dir, e))?;
        let inst = Instance { cfg };
        inst.write_cnf()?;

        let password = new_password();
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
        let inst = Instance { cfg };
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

    /// Makes (or makes again, with a new password) the account `user`@'%' replicas of
    /// this server log in with, kept out of its binary log (its own replicas, if any,
    /// are not dbfork's), and stores its secret.
    pub fn make_repl_account(&self, user: &str) -> Result<()> {
        use crate::sql::{exec, quote};
        let name = self.name();
        let password = new_password();
        let account = format!("{}@'%'", quote(user));
        let mut c = self.conn()?;
        exec(&mut c, name, "SET SESSION sql_log_bin = 0")?;
        mysql::prelude::Queryable::query_drop(
            &mut c,
            format!(
                "CREATE OR REPLACE USER {account} IDENTIFIED BY {}",
                quote(&password)
            ),
        )
        .map_err(|e| Error::sql(name, format!("CREATE USER {account} (password elided)"), e))?;
        exec(
            &mut c,
            name,
            &format!("GRANT REPLICATION SLAVE ON *.* TO {account}"),
        )?;
        self.store_repl_credentials(&ReplCredentials {
            user: user.to_string(),
            password,
        })
    }

    /// Stores the replication account a replica uses to reach its source (and that a
    /// clone of its datadir carries, so it can be a source in turn).
    pub fn store_repl_credentials(&self, creds: &ReplCredentials) -> Result<()> {
        write_private(
            &self.cfg.repl_secret_path(),
            &format!("{}\n{}\n", creds.user, creds.password),
        )
    }

    /// Everything before the server process is made: refuses a running server, an
    /// uninitialised datadir, a datadir another live server holds and a bound port;
    /// writes the my.cnf; opens the output log. Whoever spawns the process runs
    /// `program args...` with the output in `stdout`/`stderr`, then [`Instance::wait_ready`].
    pub fn prepare_start(&self) -> Result<StartPlan> {
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
        Ok(StartPlan {
            program: cfg.mariadbd.clone(),
            args: vec![self.defaults_arg()],
            stdout: out,
            stderr: err,
            log_offset: fs::metadata(cfg.error_log()).map(|m| m.len()).unwrap_or(0),
        })
    }

    /// The error for a server binary that could not be run.
    pub fn spawn_error(&self, e: std::io::Error) -> Error {
        match e.kind() {
            std::io::ErrorKind::NotFound => Error::ToolMissing {
                tool: self.cfg.mariadbd.display().to_string(),
                package: "mariadb-server",
            },
            _ => Error::io(&self.cfg.mariadbd, e),
        }
    }

    /// Waits until the server that `child` runs answers on its socket. A server that
    /// exits first is an error with its log; one that is not up within `timeout` is
    /// killed, not left running: the caller unwinds (unmounts, deletes) and must not
    /// find it holding on.
    pub fn wait_ready(&self, child: &mut Child, timeout: Duration, log_offset: u64) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(self.startup_failure(status.to_string(), log_offset))
                }
                Ok(None) => {}
                Err(e) => return Err(Error::io(&self.cfg.mariadbd, e)),
            }
            if self.cfg.socket_path().exists() {
                if let Ok(mut c) = crate::sql::connect_socket_opts(&self.cfg, Some(PROBE_TIMEOUT)) {
                    if crate::sql::ping(&mut c) {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
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

    /// The server's pid, if it is running (found through its pid file).
    pub fn pid(&self) -> Option<i32> {
        running_pid(&self.cfg)
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
            return Ok(());
        };
        tracing::info!(name = %self.cfg.name, pid, "stopping mariadbd");
        signal(pid, libc::SIGTERM)?;
        self.wait_gone(pid, timeout)
    }

    /// SIGKILL, as a crash would; waits until the process is gone.
    pub fn kill(&mut self) -> Result<()> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        tracing::info!(name = %self.cfg.name, pid, "killing mariadbd");
        signal(pid, libc::SIGKILL)?;
        self.wait_gone(pid, Duration::from_secs(30))
    }

    fn wait_gone(&mut self, pid: i32, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            // A server this process started is its child: reaped here, it is gone
            // from /proc too (a zombie would keep its pid).
            // SAFETY: waitpid with WNOHANG on one pid; ECHILD when it is not ours.
            unsafe {
                libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
            }
            if !process_alive(pid) {
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
}

/// The pid of the server `cfg` describes, from its pid file, if that process runs it.
pub fn running_pid(cfg: &InstanceConfig) -> Option<i32> {
    let text = fs::read_to_string(cfg.pid_file()).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    // A stale pid file may name an unrelated process by now.
    let defaults = format!("--defaults-file={}", cfg.cnf_path().display());
    process_matches(pid, &defaults).then_some(pid)
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
