//! The `block-dbfork` hotplug script's logic, run by bash against fakes of what libxl
//! gives it (block-common.sh's helpers, xenstore-read) and of nbd-client and sysfs:
//! the target it accepts and refuses, the first free NBD device it connects, what it
//! records, what it disconnects on remove, and its errors. The real script runs in the
//! Xen lab (experiments/xen-lab), where libxl calls it for every replica.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/xen-scripts/block-dbfork");

/// What libxl's block-common.sh defines, recording into $LOG.
const COMMON: &str = r#"
fatal() { echo "FATAL $*" >>"$LOG"; echo "$*" >&2; exit 1; }
log() { echo "log $*" >>"$LOG"; }
claim_lock() { echo "claim $1" >>"$LOG"; }
release_lock() { echo "release $1" >>"$LOG"; }
xenstore_write() { echo "xenstore_write $*" >>"$LOG"; }
xenstore_read_default() { if [ -f "$FAKE/node" ]; then cat "$FAKE/node"; else echo "$2"; fi; }
write_dev() { echo "write_dev $1" >>"$LOG"; }
"#;

struct Hotplug {
    dir: tempfile::TempDir,
}

impl Hotplug {
    /// A scripts dir with block-dbfork and a fake block-common.sh, fake tools on PATH,
    /// a fake sysfs with nbd0 connected and nbd1, nbd2 free, and a live socket.
    fn new() -> Hotplug {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir_all(p.join("scripts")).unwrap();
        std::fs::copy(SCRIPT, p.join("scripts/block-dbfork")).unwrap();
        std::fs::write(p.join("scripts/block-common.sh"), COMMON).unwrap();
        std::fs::create_dir_all(p.join("bin")).unwrap();
        exe(
            &p.join("bin/xenstore-read"),
            "#!/bin/sh\ncat \"$FAKE/params\"\n",
        );
        exe(
            &p.join("bin/nbd-client"),
            "#!/bin/sh\necho \"nbd-client $*\" >>\"$LOG\"\n[ -f \"$FAKE/nbd-fails\" ] && { echo 'Negotiation failed' >&2; exit 1; }\nexit 0\n",
        );
        exe(
            &p.join("bin/modprobe"),
            "#!/bin/sh\necho \"modprobe $*\" >>\"$LOG\"\n",
        );
        for d in ["nbd0", "nbd1", "nbd2"] {
            std::fs::create_dir_all(p.join("sys/block").join(d)).unwrap();
        }
        std::fs::write(p.join("sys/block/nbd0/pid"), "123").unwrap();
        std::fs::create_dir_all(p.join("sys/module/nbd")).unwrap();
        std::fs::create_dir_all(p.join("fake")).unwrap();
        let sock = p.join("r1.nbd");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::mem::forget(listener);
        let h = Hotplug { dir };
        h.target(&format!("nbd+unix:///r1?socket={}", sock.display()));
        h
    }

    fn target(&self, t: &str) {
        std::fs::write(self.dir.path().join("fake/params"), t).unwrap();
    }

    /// Runs `block-dbfork COMMAND`; returns (success, stderr, log).
    fn run(&self, command: &str) -> (bool, String, String) {
        let p = self.dir.path();
        let log = p.join("log");
        let _ = std::fs::remove_file(&log);
        let out = Command::new("bash")
            .arg(p.join("scripts/block-dbfork"))
            .arg(command)
            .env("PATH", format!("{}:/usr/bin:/bin", p.join("bin").display()))
            .env("XENBUS_PATH", "backend/vbd/5/51728")
            .env("DBFORK_SYSFS", p.join("sys"))
            .env("FAKE", p.join("fake"))
            .env("LOG", &log)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            std::fs::read_to_string(&log).unwrap_or_default(),
        )
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

fn exe(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn add_connects_the_first_free_nbd_device_to_the_volumes_export_and_records_it() {
    let h = Hotplug::new();
    let (ok, err, log) = h.run("add");
    assert!(ok, "{err}\n{log}");
    let sock = h.path("r1.nbd");
    assert!(
        log.contains(&format!(
            "nbd-client -unix {} /dev/nbd1 -N r1 -b 4096",
            sock.display()
        )),
        "{log}"
    );
    assert!(
        log.contains("xenstore_write backend/vbd/5/51728/node /dev/nbd1"),
        "{log}"
    );
    assert!(log.contains("write_dev /dev/nbd1"), "{log}");
    // The lock is taken around the choice of device and given back.
    let claim = log.find("claim block-dbfork").unwrap();
    let release = log.find("release block-dbfork").unwrap();
    let connect = log.find("nbd-client -unix").unwrap();
    assert!(claim < connect && connect < release, "{log}");
    assert!(!log.contains("modprobe"), "nbd is loaded already: {log}");
}

#[test]
fn remove_disconnects_the_recorded_device() {
    let h = Hotplug::new();
    std::fs::write(h.path("fake/node"), "/dev/nbd1").unwrap();
    let (ok, err, log) = h.run("remove");
    assert!(ok, "{err}\n{log}");
    assert!(log.contains("nbd-client -d /dev/nbd1"), "{log}");
    // Nothing recorded: nothing to disconnect.
    std::fs::remove_file(h.path("fake/node")).unwrap();
    let (ok, _, log) = h.run("remove");
    assert!(ok);
    assert!(!log.contains("nbd-client"), "{log}");
}

#[test]
fn what_cannot_be_connected_fails_with_why() {
    // A target that is not an export of a dbfork volume.
    let h = Hotplug::new();
    h.target("/dev/vg0/db");
    let (ok, err, _) = h.run("add");
    assert!(!ok);
    assert!(
        err.contains("is not nbd+unix:///VOLUME?socket=/PATH"),
        "{err}"
    );

    // The export is not running.
    let h = Hotplug::new();
    h.target("nbd+unix:///r9?socket=/nonexistent/r9.nbd");
    let (ok, err, _) = h.run("add");
    assert!(!ok);
    assert!(err.contains("no export of r9"), "{err}");

    // Every device is connected: the lock is given back.
    let h = Hotplug::new();
    for d in ["nbd1", "nbd2"] {
        std::fs::write(h.path(&format!("sys/block/{d}/pid")), "1").unwrap();
    }
    let (ok, err, log) = h.run("add");
    assert!(!ok);
    assert!(err.contains("no free NBD device"), "{err}");
    assert!(log.contains("release block-dbfork"), "{log}");

    // nbd-client fails: its words are passed on, the lock is given back, nothing recorded.
    let h = Hotplug::new();
    std::fs::write(h.path("fake/nbd-fails"), "").unwrap();
    let (ok, err, log) = h.run("add");
    assert!(!ok);
    assert!(err.contains("Negotiation failed"), "{err}");
    assert!(log.contains("release block-dbfork"), "{log}");
    assert!(!log.contains("write_dev"), "{log}");
}
