//! Interoperability with QEMU's NBD client (qemu-img, qemu-io) over nbd+unix:// and
//! nbd://127.0.0.1:PORT.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;
use nbd_export::{BlockDevice, FileDevice, MemDevice};

fn server(tcp: bool, exports: Vec<(&str, Arc<dyn BlockDevice>)>) -> TestServer {
    if tcp {
        TestServer::tcp(exports)
    } else {
        TestServer::unix(exports)
    }
}

fn qemu_img_info(tcp: bool) {
    if !have("qemu-img") {
        return;
    }
    let srv = server(tcp, vec![("vol", mem(5 << 20))]);
    let out = run_ok(Command::new("qemu-img").args([
        "info",
        "--output=json",
        "--image-opts",
        &format!("driver=raw,file.driver=nbd,file.{}", opts(&srv, "vol")),
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["virtual-size"], 5 << 20, "{out}");
}

/// qemu's option syntax for the same export, to cover that path as well as URIs.
fn opts(srv: &TestServer, name: &str) -> String {
    match srv.handle.local_addr() {
        Some(a) => format!(
            "server.type=inet,file.server.host={},file.server.port={},file.export={name}",
            a.ip(),
            a.port()
        ),
        None => format!(
            "server.type=unix,file.server.path={},file.export={name}",
            srv.socket.display()
        ),
    }
}

#[test]
fn qemu_img_info_unix() {
    qemu_img_info(false);
}

#[test]
fn qemu_img_info_tcp() {
    qemu_img_info(true);
}

fn qemu_img_convert(tcp: bool) {
    if !have("qemu-img") {
        return;
    }
    const SIZE: usize = 8 << 20;
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = image(dir.path(), "src.raw", SIZE, 7);
    let target_path = dir.path().join("t.raw");
    let target = Arc::new(FileDevice::create(&target_path, SIZE as u64).unwrap());
    let srv = server(tcp, vec![("t", target)]);
    let uri = srv.uri("t");
    // -n: the target exists (it is the export); -W: out-of-order writes, several
    // requests in flight on one connection.
    run_ok(Command::new("qemu-img").args([
        "convert",
        "-n",
        "-W",
        "-f",
        "raw",
        "-O",
        "raw",
        src.to_str().unwrap(),
        &uri,
    ]));
    let want = std::fs::read(&src).unwrap();
    assert!(
        std::fs::read(&target_path).unwrap() == want,
        "export differs from source"
    );
    let back = dir.path().join("back.raw");
    run_ok(Command::new("qemu-img").args([
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        &uri,
        back.to_str().unwrap(),
    ]));
    assert!(
        std::fs::read(&back).unwrap() == want,
        "converted copy differs"
    );
    run_ok(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        &uri,
        src.to_str().unwrap(),
    ]));
}

#[test]
fn qemu_img_convert_to_and_from_unix() {
    qemu_img_convert(false);
}

#[test]
fn qemu_img_convert_to_and_from_tcp() {
    qemu_img_convert(true);
}

fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(uri);
    let out = run_ok(&mut c);
    assert!(
        !out.contains("verification failed") && !out.contains("failed"),
        "qemu-io reported a failure:\n{out}"
    );
    out
}

fn qemu_io_commands(tcp: bool) {
    if !have("qemu-io") {
        return;
    }
    let dev = Arc::new(MemDevice::from_vec(vec![0x5a; 4 << 20]));
    let srv = server(tcp, vec![("vol", dev.clone())]);
    let uri = srv.uri("vol");
    qemu_io(
        &uri,
        &[
            "write -P 0xab 0 64k",
            "write -f -P 0xcd 1m 4k",
            "writev -P 0x11 128k 4k 8k 512",
            "write -z 256k 64k",
            "write -z -u 512k 64k",
            "discard 1m 4k",
            "flush",
            "read -P 0xab 0 64k",
            "readv -P 0x11 128k 4k 8k 512",
            "read -P 0 256k 64k",
            "read -P 0 512k 64k",
            "read -P 0x5a 2m 1m",
            // Unaligned: the server advertises minimum block size 1.
            "write -P 0x77 3001 333",
            "read -P 0x77 3001 333",
        ],
    );
    // A second qemu-io process sees the first one's data: it reached the device.
    qemu_io(&uri, &["read -P 0xab 4k 60k", "read -P 0x11 128k 12800"]);
    let c = dev.contents();
    assert!(c[..3001].iter().all(|&b| b == 0xab));
    assert!(c[3001..3334].iter().all(|&b| b == 0x77));
    assert!(c[128 << 10..(128 << 10) + 12800].iter().all(|&b| b == 0x11));
    assert!(c[256 << 10..320 << 10].iter().all(|&b| b == 0));
    assert!(
        c[1 << 20..(1 << 20) + 4096].iter().all(|&b| b == 0),
        "discard zeroes MemDevice"
    );
    assert!(c[2 << 20..].iter().all(|&b| b == 0x5a));
}

#[test]
fn qemu_io_patterns_unix() {
    qemu_io_commands(false);
}

#[test]
fn qemu_io_patterns_tcp() {
    qemu_io_commands(true);
}

#[test]
fn qemu_io_against_file_device_with_holes() {
    if !have("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (path, dev) = image(dir.path(), "img.raw", 4 << 20, 5);
    let srv = TestServer::unix(vec![("f", dev)]);
    let uri = srv.uri("f");
    // Punched (write -z -u: may unmap), allocated zeroes, and a discard.
    qemu_io(
        &uri,
        &[
            "write -z -u 0 1m",
            "write -z 1m 64k",
            "discard 2m 1m",
            "write -P 0x42 3m 4k",
            "flush",
            "read -P 0 0 1m",
            "read -P 0 1m 64k",
            "read -P 0x42 3m 4k",
        ],
    );
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 4 << 20, "size kept");
    assert!(bytes[..(1 << 20) + (64 << 10)].iter().all(|&b| b == 0));
    assert!(bytes[3 << 20..(3 << 20) + 4096].iter().all(|&b| b == 0x42));
    let orig = pattern(4 << 20, 5);
    assert!(bytes[(3 << 20) + 4096..] == orig[(3 << 20) + 4096..]);
}
