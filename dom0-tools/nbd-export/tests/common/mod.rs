//! Shared test scaffolding: an in-process server on a temp socket, and a runner for
//! external clients that kills them on timeout.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nbd_export::{BlockDevice, FileDevice, MemDevice, Server, ServerHandle};

/// Is `name` on PATH? If not, the caller prints why and skips.
pub fn have(name: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIP: {name} not installed");
    }
    ok
}

/// nbdsh runs `python3 -m nbd`; the Debian module lives with /usr/bin/python3, which
/// a pyenv python earlier on PATH would hide. Returns None (and says why) if absent.
pub fn nbdsh() -> Option<Command> {
    if !have("nbdsh") {
        return None;
    }
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    let ok = Command::new("nbdsh")
        .env("PATH", &path)
        .args(["-c", "pass"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIP: nbdsh present but python3-libnbd not importable");
        return None;
    }
    let mut c = Command::new("nbdsh");
    c.env("PATH", path);
    Some(c)
}

/// Kills the child if the test ends early.
struct ChildGuard(Option<Child>);
impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Run `cmd` to completion with a deadline; panic (after killing it) on timeout.
pub fn run(cmd: &mut Command) -> Output {
    run_with_timeout(cmd, Duration::from_secs(60))
}

pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let pid = child.id();
    let mut guard = ChildGuard(Some(child));
    let deadline = Instant::now() + timeout;
    // Reading the pipes to EOF in threads lets a chatty child never block on them.
    let mut c = guard.0.take().unwrap();
    let mut out = c.stdout.take().unwrap();
    let mut err = c.stderr.take().unwrap();
    guard.0 = Some(c);
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).ok();
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut v).ok();
        v
    });
    let status = loop {
        if let Some(s) = guard.0.as_mut().unwrap().try_wait().unwrap() {
            guard.0 = None;
            break s;
        }
        if Instant::now() > deadline {
            drop(guard);
            panic!("{desc} (pid {pid}) timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// Run and require success, returning stdout as text.
pub fn run_ok(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let o = run(cmd);
    assert!(
        o.status.success(),
        "{desc} failed: {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A server on a Unix socket in a temp dir, shut down and removed on drop.
pub struct TestServer {
    pub handle: ServerHandle,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl TestServer {
    pub fn unix(exports: Vec<(&str, Arc<dyn BlockDevice>)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nbd.sock");
        let mut server = Server::new();
        for (name, dev) in exports {
            server = server.export(name, dev).unwrap();
        }
        let handle = server.serve_unix(&socket).unwrap();
        TestServer {
            handle,
            dir,
            socket,
        }
    }

    pub fn tcp(exports: Vec<(&str, Arc<dyn BlockDevice>)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Server::new();
        for (name, dev) in exports {
            server = server.export(name, dev).unwrap();
        }
        let handle = server.serve_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        TestServer {
            handle,
            socket: PathBuf::new(),
            dir,
        }
    }

    pub fn uri(&self, name: &str) -> String {
        self.handle.listen_addr().uri(name)
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn mem(size: usize) -> Arc<MemDevice> {
    Arc::new(MemDevice::new(size))
}

/// A raw image file in `dir` filled with `pattern(size, seed)`.
pub fn image(dir: &Path, name: &str, size: usize, seed: u64) -> (PathBuf, Arc<FileDevice>) {
    let p = dir.join(name);
    std::fs::write(&p, pattern(size, seed)).unwrap();
    let dev = Arc::new(FileDevice::open(&p, false).unwrap());
    (p, dev)
}

pub fn poll_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
