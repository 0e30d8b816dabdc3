//! Real mariadbd processes for the integration tests: each in its own temp datadir
//! and socket, killed and removed on drop even when a test fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MARIADBD: &str = "/usr/sbin/mariadbd";

/// Why this machine cannot run the test, if it cannot.
pub fn missing_facility() -> Option<String> {
    for tool in [MARIADBD, "/usr/bin/mariadb-install-db", "/usr/bin/mariadb"] {
        if !Path::new(tool).exists() {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

#[allow(unused_macros)]
macro_rules! require_mariadb {
    () => {
        if let Some(why) = common::missing_facility() {
            eprintln!("skipping: {why}");
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_mariadb;

/// The cdylib under test. `cargo test` builds only the rlib for integration tests,
/// so the preload is (re)built here, once per test process, into the same target dir.
pub fn agent_so() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            // <target>/<profile>/deps/<test binary>
            let profile_dir = exe.parent().unwrap().parent().unwrap();
            let target_dir = profile_dir.parent().unwrap();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--lib", "-p", "dbfork-agent", "--manifest-path"])
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
                .env("CARGO_TARGET_DIR", target_dir);
            if profile_dir.file_name().unwrap() == "release" {
                cmd.arg("--release");
            }
            let st = cmd.status().expect("running cargo build for the preload");
            assert!(st.success(), "building libdbfork_agent.so failed");
            let so = profile_dir.join("libdbfork_agent.so");
            assert!(so.exists(), "{} not built", so.display());
            so
        })
        .clone()
}

/// Polls `cond` until it is true or `limit` passes.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh datadir made by mariadb-install-db.
pub fn install_datadir(datadir: &Path) {
    // A private tmpdir: bootstrap temp tables in a shared /tmp collided between
    // parallel test processes.
    let tmpdir = datadir.with_extension("tmp");
    std::fs::create_dir_all(&tmpdir).unwrap();
    let out = Command::new("/usr/bin/mariadb-install-db")
        .env("TMPDIR", &tmpdir)
        .args([
            "--no-defaults",
            &format!("--datadir={}", datadir.display()),
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ])
        .output()
        .expect("running mariadb-install-db");
    assert!(
        out.status.success(),
        "mariadb-install-db failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct ServerOpts {
    pub preload: bool,
    pub env: Vec<(String, String)>,
    pub extra_args: Vec<String>,
    /// Runs with the server's pid before mariadbd itself starts (the pid is a shell
    /// that then execs mariadbd), e.g. to bind the pid in the page table daemon
    /// before the agent first connects.
    pub before_exec: Option<Box<dyn FnOnce(u32)>>,
}

impl ServerOpts {
    pub fn plain() -> Self {
        ServerOpts {
            preload: false,
            env: vec![],
            extra_args: vec![],
            before_exec: None,
        }
    }

    pub fn agent(env: &[(&str, String)]) -> Self {
        ServerOpts {
            preload: true,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            extra_args: vec![],
            before_exec: None,
        }
    }
}

/// A running mariadbd. Dropping it kills the process.
pub struct Server {
    pub datadir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Server {
    pub fn start(datadir: &Path, rundir: &Path, mut opts: ServerOpts) -> Server {
        std::fs::create_dir_all(rundir).unwrap();
        let socket = rundir.join("mysqld.sock");
        let log = rundir.join("mysqld.err");
        let gate = opts.before_exec.take();
        let mut cmd = if gate.is_some() {
            // The shell waits for one line, then becomes mariadbd (same pid).
            let mut c = Command::new("/bin/sh");
            c.args(["-c", "read _ && exec \"$0\" \"$@\"", MARIADBD]);
            c
        } else {
            Command::new(MARIADBD)
        };
        cmd.args([
            "--no-defaults".to_string(),
            format!("--datadir={}", datadir.display()),
            format!("--socket={}", socket.display()),
            format!("--pid-file={}", rundir.join("mysqld.pid").display()),
            format!("--log-error={}", log.display()),
            "--skip-networking".to_string(),
            "--user=root".to_string(),
            "--innodb-use-native-aio=0".to_string(),
            "--innodb-buffer-pool-size=128M".to_string(),
            "--innodb-log-file-size=48M".to_string(),
            "--skip-log-bin".to_string(),
        ]);
        let tmpdir = rundir.join("tmp");
        std::fs::create_dir_all(&tmpdir).unwrap();
        cmd.arg(format!("--tmpdir={}", tmpdir.display()));
        cmd.args(&opts.extra_args);
        if opts.preload {
            cmd.env("LD_PRELOAD", agent_so());
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let stdin = if gate.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let stderr = std::fs::File::create(rundir.join("stderr.log")).unwrap();
        cmd.stdin(stdin).stdout(Stdio::null()).stderr(stderr);
        let mut child = cmd.spawn().expect("spawning mariadbd");
        if let Some(gate) = gate {
            gate(child.id());
            use std::io::Write;
            let mut w = child.stdin.take().unwrap();
            w.write_all(b"go\n").unwrap();
        }
        let mut server = Server {
            datadir: datadir.to_owned(),
            socket,
            log,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "mariadbd exited with {status} before accepting connections:\n{}",
                    server.log_text()
                );
            }
            if server.socket.exists() && server.try_sql("SELECT 1").is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not start:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        let stderr = self.log.with_file_name("stderr.log");
        std::fs::read_to_string(&self.log).unwrap_or_default()
            + &std::fs::read_to_string(stderr).unwrap_or_default()
    }

    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("/usr/bin/mariadb")
            .args([
                "--no-defaults",
                "-uroot",
                &format!("--socket={}", self.socket.display()),
                "-N",
                "-B",
                "-e",
                sql,
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql)
            .unwrap_or_else(|e| panic!("query {sql:?} failed: {e}\n{}", self.log_text()))
    }

    /// Clean shutdown (every dirty page flushed), waiting for the process to exit.
    pub fn shutdown(mut self) {
        let _ = self.try_sql("SHUTDOWN");
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mariadbd did not shut down");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Copies a cleanly shut down datadir (the crate's stand-in for a clone).
pub fn copy_datadir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .args(["-a", &from.display().to_string(), &to.display().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// A small table with deterministic contents spanning many pages.
pub fn load_table(server: &Server, name: &str, rows: u32) {
    server.sql(&format!(
        "CREATE DATABASE IF NOT EXISTS t; USE t; \
         CREATE TABLE t.{name} (id INT PRIMARY KEY, k INT, pad CHAR(200), KEY(k)) ENGINE=InnoDB; \
         INSERT INTO t.{name} SELECT seq, (seq * 7919) % 1000, REPEAT(CHAR(65 + seq % 26), 200) \
         FROM seq_1_to_{rows};"
    ));
}

pub fn checksum_query(name: &str) -> String {
    format!(
        "SELECT COUNT(*), SUM(k), SUM(CRC32(pad)), SUM(CRC32(CONCAT(id, k, pad))) FROM t.{name}"
    )
}

/// The newest page LSN on disk in a cleanly shut down datadir: no page version in it
/// is newer, and every later change gets a larger LSN. The tests use it as the
/// snapshot LSN S of a copy.
pub fn max_page_lsn(datadir: &Path) -> u64 {
    let mut max = 0;
    let mut stack = vec![datadir.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if !(name.ends_with(".ibd") || name.starts_with("ibdata") || name.starts_with("undo")) {
                continue;
            }
            let bytes = std::fs::read(&p).unwrap();
            for page in bytes.chunks_exact(16384) {
                if let Ok(h) = dbfork_agent::page::header(page) {
                    max = max.max(h.lsn);
                }
            }
        }
    }
    max
}

/// A directory for the family pool: tmpfs when the machine has /dev/shm.
pub fn pool_dir() -> tempfile::TempDir {
    if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

/// How many mappings of `file` the process has.
pub fn mappings_of(pid: u32, file: &Path) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let name = file.display().to_string();
    maps.lines().filter(|l| l.ends_with(&name)).count()
}

/// A consistent copy of a running server made the DBMS-native way (mariadb-backup
/// --backup, then --prepare). Returns the LSN the copy is consistent at.
pub fn backup_running(server: &Server, target: &Path) -> u64 {
    let run = |args: Vec<String>| {
        let out = Command::new("/usr/bin/mariadb-backup")
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mariadb-backup {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(vec![
        "--backup".into(),
        format!("--target-dir={}", target.display()),
        "--user=root".into(),
        format!("--socket={}", server.socket.display()),
        format!("--datadir={}", server.datadir.display()),
    ]);
    run(vec![
        "--prepare".into(),
        format!("--target-dir={}", target.display()),
    ]);
    let cp = std::fs::read_to_string(target.join("xtrabackup_checkpoints")).unwrap();
    cp.lines()
        .find_map(|l| l.strip_prefix("last_lsn = "))
        .expect("last_lsn in xtrabackup_checkpoints")
        .trim()
        .parse()
        .unwrap()
}

/// The page table daemon of this workspace, built into the test's target dir and run
/// with its sockets and state file in `dir`. Killed on drop.
pub struct Daemon {
    child: Option<Child>,
    bin: PathBuf,
    dir: PathBuf,
    pub socket: PathBuf,
    pub admin: PathBuf,
}

impl Daemon {
    pub fn build() -> PathBuf {
        experiments_support::testing::workspace_binary("pagetabled", "pagetabled")
    }

    pub fn start(dir: &Path) -> Daemon {
        let mut d = Daemon {
            child: None,
            bin: Self::build(),
            dir: dir.to_owned(),
            socket: dir.join("pt.sock"),
            admin: dir.join("pt-admin.sock"),
        };
        d.restart();
        d
    }

    /// Starts the daemon again (after `kill`), with the same state file.
    pub fn restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.admin);
        let child = Command::new(&self.bin)
            .arg("serve")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--admin-socket")
            .arg(&self.admin)
            .arg("--state-file")
            .arg(self.dir.join("pt-state.json"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting pagetabled");
        self.child = Some(child);
        let admin = self.admin.clone();
        wait_for(Duration::from_secs(20), "pagetabled admin socket", || {
            pagetable::admin::AdminClient::connect(&admin).is_ok()
        });
    }

    pub fn admin(&self, req: pagetable::admin::AdminRequest) {
        pagetable::admin::AdminClient::connect(&self.admin)
            .unwrap()
            .call(&req)
            .unwrap();
    }

    pub fn entries(&self) -> u64 {
        let Ok(mut c) = pagetable::admin::AdminClient::connect(&self.admin) else {
            return 0;
        };
        c.stats()
            .map(|s| s.families.iter().map(|f| f.entries).sum())
            .unwrap_or(0)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
