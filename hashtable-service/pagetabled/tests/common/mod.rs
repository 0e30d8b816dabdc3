//! Real processes for the daemon tests: the `pagetabled` binary and
//! `pagetabled-probe` clients, each killed by a Drop guard even if a test fails.

#![allow(dead_code)]

use pagetable::admin::{AdminClient, AdminReply, AdminRequest, StatsReport};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(20);

/// Lines of a child's stdout, read on a thread so that waits can time out.
fn line_reader(stdout: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

pub struct Daemon {
    child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub admin: PathBuf,
    pub metrics: Option<String>,
    pub generation: String,
    args: Vec<String>,
}

impl Daemon {
    /// Starts `pagetabled serve` with its sockets in `dir`, plus `extra` arguments, and
    /// waits for its ready line.
    pub fn start(dir: &Path, extra: &[&str]) -> Daemon {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut d = Daemon {
            child: Command::new("true").spawn().unwrap(),
            dir: dir.to_owned(),
            socket: dir.join("pagetable.sock"),
            admin: dir.join("admin.sock"),
            metrics: None,
            generation: String::new(),
            args,
        };
        let _ = d.child.wait();
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pagetabled"))
            .arg("serve")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--admin-socket")
            .arg(&self.admin)
            .arg("--foreground")
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn pagetabled");
        let lines = line_reader(child.stdout.take().unwrap());
        self.child = child;
        let ready = lines
            .recv_timeout(WAIT)
            .expect("pagetabled did not print its ready line");
        assert!(ready.starts_with("pagetabled ready "), "{ready}");
        for field in ready.split_whitespace() {
            if let Some(g) = field.strip_prefix("generation=") {
                self.generation = g.to_owned();
            }
            if let Some(m) = field.strip_prefix("metrics=") {
                self.metrics = Some(m.to_owned());
            }
        }
    }

    /// kill -9, then start again with the same arguments.
    pub fn kill9_and_restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn admin(&self, req: AdminRequest) -> AdminReply {
        AdminClient::connect(&self.admin)
            .and_then(|mut a| a.call(&req))
            .unwrap_or_else(|e| panic!("admin {req:?}: {e}"))
    }

    pub fn admin_err(&self, req: AdminRequest) -> String {
        match AdminClient::connect(&self.admin).unwrap().call(&req) {
            Ok(r) => panic!("admin {req:?} succeeded: {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    pub fn stats(&self) -> StatsReport {
        AdminClient::connect(&self.admin).unwrap().stats().unwrap()
    }

    pub fn family_entries(&self, family: u32) -> u64 {
        self.stats()
            .families
            .iter()
            .find(|f| f.family.0 == family)
            .map(|f| f.entries)
            .unwrap_or_else(|| panic!("family {family} missing"))
    }

    /// Polls `cond` until it holds or WAIT passes.
    pub fn wait_for(&self, what: &str, mut cond: impl FnMut(&Daemon) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::yield_now();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `pagetabled-probe` client process.
pub struct Probe {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Probe {
    pub fn spawn() -> Probe {
        Self::spawn_with(|_| {})
    }

    pub fn spawn_with(setup: impl FnOnce(&mut Command)) -> Probe {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pagetabled-probe"));
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        setup(&mut cmd);
        let mut child = cmd.spawn().expect("spawn pagetabled-probe");
        let stdin = child.stdin.take().unwrap();
        let lines = line_reader(child.stdout.take().unwrap());
        Probe {
            child,
            stdin,
            lines,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command and returns its answer line.
    pub fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("probe stdin");
        self.stdin.flush().unwrap();
        self.lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("probe did not answer {line:?}"))
    }

    /// Sends a command that must succeed (answer not starting with `err`).
    pub fn ok(&mut self, line: &str) -> String {
        let a = self.cmd(line);
        assert!(!a.starts_with("err"), "{line:?} -> {a}");
        a
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.kill9();
    }
}
