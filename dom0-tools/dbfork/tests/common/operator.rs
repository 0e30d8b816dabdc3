//! A MariaDB server as an operator runs it, outside any store: started the way
//! Debian's `mariadb` service starts it (its own my.cnf with a `[mariadbd]` group, a
//! datadir like /var/lib/mysql, the socket and pid file under a run/mysqld dir, root
//! logging in by unix_socket, its binary log in a log dir), in a temp dir, as a daemon
//! of its own (not this process's child: a take-over stops it and a release starts it
//! with the commands this gives). Stopped on drop.

use dbinstance::{Instance, InstanceConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

pub struct OperatorServer {
    pub dir: tempfile::TempDir,
    pub cnf: PathBuf,
    pub datadir: PathBuf,
    pub port: u16,
    /// The same server as dbinstance sees it (socket and pid file where Debian's are
    /// named: run/mysqld/mysqld.sock, run/mysqld/mysqld.pid), for SQL and sysbench.
    pub instance: Instance,
}

impl OperatorServer {
    /// Debian's layout and settings with `server_id`, the binary log on, and
    /// `extra` lines added to its `[mariadbd]` group.
    pub fn debian(server_id: u32, extra: &[&str]) -> OperatorServer {
        let dir = experiments_support::testing::short_tempdir("ops-").unwrap();
        let t = dir.path();
        for d in [
            "etc/mysql",
            "var/lib/mysql",
            "run/mysqld",
            "var/log/mysql",
            "tmp",
        ] {
            std::fs::create_dir_all(t.join(d)).unwrap();
        }
        let port = dbinstance::free_port().unwrap();
        let cnf = t.join("etc/mysql/my.cnf");
        let datadir = t.join("var/lib/mysql");
        let text = format!(
            "# as Debian's /etc/mysql/mariadb.conf.d/50-server.cnf, in a temp dir\n\
             [client-server]\nsocket = {t}/run/mysqld/mysqld.sock\n\n\
             [mariadbd]\nuser = root\npid-file = {t}/run/mysqld/mysqld.pid\nbasedir = /usr\n\
             datadir = {t}/var/lib/mysql\ntmpdir = {t}/tmp\nbind-address = 127.0.0.1\n\
             port = {port}\nlog_error = {t}/var/log/mysql/error.log\n\
             log_bin = {t}/var/log/mysql/mysql-bin.log\nserver_id = {server_id}\n\
             expire_logs_days = 10\ncharacter-set-server = utf8mb4\n\
             collation-server = utf8mb4_general_ci\ninnodb_buffer_pool_size = 64M\n\
             innodb_log_file_size = 16M\n{}\n",
            extra.join("\n"),
            t = t.display()
        );
        std::fs::write(&cnf, text).unwrap();
        let out = Command::new("mariadb-install-db")
            .arg(format!("--defaults-file={}", cnf.display()))
            .arg("--auth-root-authentication-method=socket")
            .arg("--skip-test-db")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cfg = InstanceConfig::in_dir("ops", &t.join("run/mysqld"), port, server_id);
        cfg.datadir = datadir.clone();
        let server = OperatorServer {
            cnf,
            datadir,
            port,
            instance: Instance::open(cfg).unwrap(),
            dir,
        };
        server.start();
        server
    }

    /// Starts it as its start command does and waits until it answers.
    pub fn start(&self) {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(self.start_command())
            .status()
            .unwrap()
            .success();
        assert!(ok, "{}", self.start_command());
        let answered = super::wait_until(Duration::from_secs(120), || self.instance.conn().is_ok());
        assert!(
            answered,
            "the operator's server did not come up: {}",
            std::fs::read_to_string(self.path("var/log/mysql/error.log")).unwrap_or_default()
        );
    }

    /// What starts it: a daemon in its own session, as a service manager would run it.
    pub fn start_command(&self) -> String {
        format!(
            "setsid mariadbd --defaults-file={} </dev/null >/dev/null 2>&1 &",
            self.cnf.display()
        )
    }

    /// What stops it: SIGTERM to the pid its pid file names (mariadbd shuts down).
    pub fn stop_command(&self) -> String {
        format!("kill $(cat {})", self.pid_file().display())
    }

    fn pid_file(&self) -> PathBuf {
        self.path("run/mysqld/mysqld.pid")
    }

    /// The pid of the server its pid file names, while that process runs.
    pub fn pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        substrate::process::process_alive(pid).then_some(pid)
    }

    pub fn socket(&self) -> PathBuf {
        self.instance.config().socket_path()
    }

    pub fn socket_arg(&self) -> String {
        self.socket().display().to_string()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Whether its own process still runs and answers (dbfork must never stop it).
    pub fn running(&self) -> bool {
        self.pid().is_some() && self.instance.conn().is_ok()
    }

    /// The datadir's file names (what dbfork must never change).
    pub fn datadir_entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.datadir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    pub fn datadir_path(&self) -> &Path {
        &self.datadir
    }
}

impl Drop for OperatorServer {
    fn drop(&mut self) {
        // Whichever server its pid file names now: its own, or one a release started.
        if let Some(pid) = self.pid() {
            substrate::process::signal(pid, libc::SIGTERM);
            if !super::wait_until(Duration::from_secs(60), || {
                !substrate::process::process_alive(pid)
            }) {
                substrate::process::signal(pid, libc::SIGKILL);
            }
        }
    }
}
