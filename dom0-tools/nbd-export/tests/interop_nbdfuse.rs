//! nbdfuse over this server: the path `dbfork volume attach` builds on (the export as
//! a file through FUSE, then a loop device). Reads and writes through the FUSE file
//! must reach the device.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nbd_export::{BlockDevice, MemDevice};

/// Unmounts and reaps nbdfuse even when the test fails.
struct Mount {
    dir: PathBuf,
    child: Child,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mount(dir: &Path, uri: &str) -> Mount {
    let child = Command::new("nbdfuse")
        .arg(dir)
        .arg(uri)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let m = Mount {
        dir: dir.to_path_buf(),
        child,
    };
    let file = dir.join("nbd");
    poll_until("nbdfuse mount", Duration::from_secs(20), || file.exists());
    m
}

#[test]
fn nbdfuse_file_reads_and_writes_reach_the_device() {
    if !have("nbdfuse") || !have("fusermount3") {
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        eprintln!("SKIP: no /dev/fuse");
        return;
    }
    let data = pattern(8 << 20, 77);
    let dev = Arc::new(MemDevice::from_vec(data.clone()));
    let srv = TestServer::unix(vec![("vol", dev.clone() as Arc<dyn BlockDevice>)]);
    let mnt = tempfile::tempdir().unwrap();
    let m = mount(mnt.path(), &srv.uri("vol"));
    let path = mnt.path().join("nbd");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 << 20);
    assert!(
        std::fs::read(&path).unwrap() == data,
        "FUSE file differs from device"
    );
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0x3c; 65536], 1 << 20).unwrap();
    f.write_all_at(b"unaligned", 12345).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let c = dev.contents();
    assert!(c[1 << 20..(1 << 20) + 65536].iter().all(|&b| b == 0x3c));
    assert_eq!(&c[12345..12354], b"unaligned");
    assert!(c[(1 << 20) + 65536..] == data[(1 << 20) + 65536..]);
    drop(m);
}

#[test]
fn mkfs_and_fsck_through_nbdfuse() {
    if !have("nbdfuse") || !have("fusermount3") || !have("mkfs.ext4") || !have("e2fsck") {
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        eprintln!("SKIP: no /dev/fuse");
        return;
    }
    let dev = Arc::new(MemDevice::new(32 << 20));
    let srv = TestServer::unix(vec![("vol", dev.clone() as Arc<dyn BlockDevice>)]);
    let mnt = tempfile::tempdir().unwrap();
    let m = mount(mnt.path(), &srv.uri("vol"));
    let path = mnt.path().join("nbd");
    let p = path.to_str().unwrap();
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F", "-E", "nodiscard", p]));
    run_ok(Command::new("e2fsck").args(["-f", "-n", p]));
    drop(m);
    // The filesystem landed on the device: ext4 superblock magic at 1024 + 0x38.
    let c = dev.contents();
    assert_eq!(&c[1080..1082], &[0x53, 0xef]);
}
