//! Test support: a throwaway store, the real `dbfork` binary, and guards that detach,
//! unmount and kill whatever a test started, even when it panics.
#![allow(dead_code)]

pub mod cluster;
pub mod operator;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const DBFORK: &str = env!("CARGO_BIN_EXE_dbfork");

/// The Python that has libnbd's bindings (Debian's python3-libnbd), whatever `python3`
/// on PATH is.
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// A temporary store; on drop, detaches every volume still attached in it.
pub struct TestStore {
    pub dir: tempfile::TempDir,
    /// The file system the store is on, when the test made one (dropped after `dir`).
    _fs: Option<XfsMount>,
    /// Environment every `dbfork` run of this store gets (its cleanup's too).
    env: std::cell::RefCell<Vec<(String, String)>>,
}

impl TestStore {
    pub fn new() -> Self {
        TestStore {
            dir: tempfile::Builder::new()
                .prefix("dbfork-test-")
                .tempdir()
                .unwrap(),
            _fs: None,
            env: Default::default(),
        }
    }
    /// A store on a fresh XFS with reflink (a loop image with direct IO), as on a host
    /// whose store file system shares extents. `None` (and why, printed) when this
    /// machine cannot make one.
    pub fn on_xfs() -> Option<Self> {
        let fs = match XfsMount::new(4 << 30) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("SKIP: no XFS store: {e}");
                return None;
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("dbfork-test-")
            .tempdir_in(fs.path())
            .unwrap();
        Some(TestStore {
            dir,
            _fs: Some(fs),
            env: Default::default(),
        })
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// Sets `key` in the environment of every later `dbfork` run of this store.
    pub fn set_env(&self, key: &str, value: &str) {
        self.env.borrow_mut().push((key.into(), value.into()));
    }
    /// Runs `dbfork --store STORE args...`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }
    /// As [`TestStore::run`], with extra environment (DBFORK_SHARING).
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(DBFORK)
            .arg("--store")
            .arg(self.path())
            .args(args)
            .envs(
                self.env
                    .borrow()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "dbfork {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    /// Runs and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "dbfork {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        let p = self.path().join("mnt").join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let run = self.path().join("run");
        let Ok(entries) = std::fs::read_dir(&run) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(vol) = name.strip_suffix(".attach.json") {
                let _ = self.run(&["volume", "detach", vol]);
            }
        }
    }
}

/// A foreground `dbfork volume export` child; killed on drop.
pub struct ExportProc {
    pub child: Child,
    pub socket: PathBuf,
}

impl ExportProc {
    pub fn start(store: &TestStore, volume: &str) -> Self {
        let socket = store.path().join(format!("{volume}.test.nbd"));
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::File::create(store.path().join(format!("{volume}.export.log"))).unwrap();
        let child = Command::new(DBFORK)
            .arg("--store")
            .arg(store.path())
            .args(["volume", "export", volume, "--nbd"])
            .arg(format!("unix:{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut p = ExportProc { child, socket };
        let up = wait_until(Duration::from_secs(30), || {
            matches!(p.child.try_wait(), Ok(None))
                && std::os::unix::net::UnixStream::connect(&p.socket).is_ok()
        });
        if !up {
            let log = std::fs::read_to_string(store.path().join(format!("{volume}.export.log")))
                .unwrap_or_default();
            let _ = p.child.kill();
            panic!("export of {volume} did not come up: {log}");
        }
        p
    }
    pub fn uri(&self, volume: &str) -> String {
        format!("nbd+unix:///{volume}?socket={}", self.socket.display())
    }
    /// kill -9, as a crash.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    /// SIGTERM: flush and exit; asserts a clean exit.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "export exited with {status}");
    }
}

impl Drop for ExportProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ready()
}

/// Is a host tool present? Prints why a test skips when not.
pub fn have(tool: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIP: {tool} is not installed (scripts/install-deps installs it)");
    }
    ok
}

/// Can this process mount (root, /dev/fuse, loop devices)?
pub fn can_attach() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: attach needs root (mount, losetup)");
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        eprintln!("SKIP: no /dev/fuse on this machine");
        return false;
    }
    if !Path::new("/dev/loop-control").exists() {
        eprintln!("SKIP: no loop devices on this machine");
        return false;
    }
    have("nbdfuse") && have("losetup")
}

pub fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    format!("{:x}", h.finalize())
}

/// A deterministic pseudo-random file tree: (relative path, sha256) of every file.
pub fn write_tree(root: &Path, seed: u64, files: usize) -> Vec<(String, String)> {
    use rand::{Rng, RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for i in 0..files {
        let dir = root.join(format!("d{}", i % 7));
        std::fs::create_dir_all(&dir).unwrap();
        let len = rng.gen_range(0..300_000);
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        let rel = format!("d{}/f{i}.bin", i % 7);
        std::fs::write(root.join(&rel), &data).unwrap();
        out.push((rel, sha256_bytes(&data)));
    }
    out
}

pub fn sha256_bytes(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(b))
}

pub fn check_tree(root: &Path, expect: &[(String, String)]) {
    for (rel, sum) in expect {
        let got = sha256_file(&root.join(rel));
        assert_eq!(&got, sum, "{rel} differs under {}", root.display());
    }
}

/// An XFS file system with reflink on a sparse image in /var/tmp, mounted in a temp
/// dir through a loop device with direct IO; unmounted and removed on drop.
pub struct XfsMount {
    mnt: tempfile::TempDir,
    image: tempfile::TempDir,
    loop_dev: String,
}

impl XfsMount {
    pub fn new(size: u64) -> Result<Self, String> {
        let run = |cmd: &mut Command| -> Result<String, String> {
            let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            if !out.status.success() {
                return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)));
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let image = tempfile::Builder::new()
            .prefix("dbfork-xfs-")
            .tempdir_in("/var/tmp")
            .map_err(|e| e.to_string())?;
        let img = image.path().join("store.xfs");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(size))
            .map_err(|e| e.to_string())?;
        run(Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&img))?;
        let loop_dev = run(Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(&img))?;
        let mnt = tempfile::Builder::new()
            .prefix("dbfork-xfs-mnt-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        if let Err(e) = run(Command::new("mount").arg(&loop_dev).arg(mnt.path())) {
            let _ = Command::new("losetup").args(["-d", &loop_dev]).status();
            return Err(e);
        }
        Ok(XfsMount {
            mnt,
            image,
            loop_dev,
        })
    }
    pub fn path(&self) -> &Path {
        self.mnt.path()
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        let mp = self.mnt.path();
        let unmounted = Command::new("umount")
            .arg(mp)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(mp).status();
        }
        let _ = Command::new("losetup")
            .args(["-d", &self.loop_dev])
            .status();
        let _ = &self.image;
    }
}
