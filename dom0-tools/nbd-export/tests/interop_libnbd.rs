//! Interoperability with libnbd's tools (nbdinfo, nbdcopy, nbdsh): clients nobody
//! here wrote, against the server running in this process.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;
use nbd_export::{BlockDevice, FileDevice, MemDevice, Server};

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("bad JSON {e}: {out}"))
}

#[test]
fn nbdinfo_json_reports_size_and_flags() {
    if !have("nbdinfo") {
        return;
    }
    let srv = TestServer::unix(vec![("vol", mem(3 << 20))]);
    let out = run_ok(Command::new("nbdinfo").args(["--json", &srv.uri("vol")]));
    let v = json(&out);
    let e = &v["exports"][0];
    assert_eq!(v["protocol"], "newstyle-fixed");
    assert_eq!(e["export-name"], "vol");
    assert_eq!(e["export-size"], 3 << 20);
    for flag in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_multi_conn",
    ] {
        assert_eq!(e[flag], true, "{flag} in {out}");
    }
    assert_eq!(e["is_read_only"], false);
    assert_eq!(e["block_size_minimum"], 1);
    assert_eq!(e["block_size_preferred"], 4096);
    assert_eq!(e["block_size_maximum"], 32 << 20);
}

#[test]
fn nbdinfo_over_tcp_sees_read_only_export() {
    if !have("nbdinfo") {
        return;
    }
    let ro: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(1 << 20).read_only());
    let srv = TestServer::tcp(vec![("ro", ro)]);
    let uri = srv.uri("ro");
    assert!(uri.starts_with("nbd://127.0.0.1:"), "{uri}");
    let v = json(&run_ok(Command::new("nbdinfo").args(["--json", &uri])));
    assert_eq!(v["exports"][0]["is_read_only"], true);
    assert_eq!(v["exports"][0]["export-size"], 1 << 20);
}

#[test]
fn nbdinfo_list_shows_every_export_with_description() {
    if !have("nbdinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let h = Server::new()
        .export("alpha", mem(1 << 20))
        .unwrap()
        .export_described("beta", "the second one", mem(2 << 20))
        .unwrap()
        .serve_unix(&sock)
        .unwrap();
    let out = run_ok(Command::new("nbdinfo").args(["--list", "--json", &h.listen_addr().uri("")]));
    let v = json(&out);
    let exports = v["exports"].as_array().unwrap();
    assert_eq!(exports.len(), 2, "{out}");
    assert_eq!(exports[0]["export-name"], "alpha");
    assert_eq!(exports[0]["export-size"], 1 << 20);
    assert_eq!(exports[1]["export-name"], "beta");
    assert_eq!(exports[1]["description"], "the second one");
    assert_eq!(exports[1]["export-size"], 2 << 20);
}

#[test]
fn nbdinfo_unknown_export_fails_cleanly() {
    if !have("nbdinfo") {
        return;
    }
    let srv = TestServer::unix(vec![("vol", mem(1 << 20))]);
    let o = run(Command::new("nbdinfo").arg(srv.uri("nope")));
    assert!(!o.status.success());
    // The server is still fine for the next client.
    run_ok(Command::new("nbdinfo").arg(srv.uri("vol")));
}

fn nbdcopy_roundtrip(tcp: bool) {
    if !have("nbdcopy") {
        return;
    }
    const SIZE: usize = 16 << 20;
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = image(dir.path(), "src.raw", SIZE, 42);
    let target_path = dir.path().join("target.raw");
    let target = Arc::new(FileDevice::create(&target_path, SIZE as u64).unwrap());
    let exports: Vec<(&str, Arc<dyn BlockDevice>)> = vec![("t", target)];
    let srv = if tcp {
        TestServer::tcp(exports)
    } else {
        TestServer::unix(exports)
    };
    // nbdcopy opens several connections (we advertise CAN_MULTI_CONN) and flushes.
    run_ok(Command::new("nbdcopy").args([src.to_str().unwrap(), &srv.uri("t")]));
    let want = std::fs::read(&src).unwrap();
    assert!(
        std::fs::read(&target_path).unwrap() == want,
        "target differs from source"
    );
    let back = dir.path().join("back.raw");
    run_ok(Command::new("nbdcopy").args([&srv.uri("t"), back.to_str().unwrap()]));
    assert!(
        std::fs::read(&back).unwrap() == want,
        "copy back differs from source"
    );
}

#[test]
fn nbdcopy_both_directions_unix() {
    nbdcopy_roundtrip(false);
}

#[test]
fn nbdcopy_both_directions_tcp() {
    nbdcopy_roundtrip(true);
}

/// libnbd checks ranges itself unless strict mode is off; turn it off so the
/// requests really reach the server.
const NBDSH_PRELUDE: &str = "
import errno, sys
h.set_strict_mode(0)
";

#[test]
fn nbdsh_out_of_range_requests_fail_and_connection_survives() {
    let Some(mut sh) = nbdsh() else { return };
    let data = pattern(1 << 20, 9);
    let dev = Arc::new(MemDevice::from_vec(data.clone()));
    let srv = TestServer::unix(vec![("vol", dev.clone())]);
    let script = format!(
        "{NBDSH_PRELUDE}
h.connect_uri({uri:?})
size = h.get_size()
def expect_err(f, code):
    try:
        f()
    except nbd.Error as e:
        # python3-libnbd gives the errno name (older) or number (newer).
        assert e.errno in (code, errno.errorcode[code]), (e.errno, e.string)
    else:
        raise AssertionError('no error')
expect_err(lambda: h.pread(4096, size - 512), errno.EINVAL)
expect_err(lambda: h.pread(1, size), errno.EINVAL)
expect_err(lambda: h.pwrite(b'x' * 4096, size - 100), errno.ENOSPC)
expect_err(lambda: h.trim(4096, size), errno.EINVAL)
expect_err(lambda: h.zero(8192, size - 4096), errno.ENOSPC)
# Still in sync: a valid read returns the right bytes.
buf = h.pread(4096, size - 4096)
sys.stdout.buffer.write(buf)
h.shutdown()
",
        uri = srv.uri("vol")
    );
    let o = run(sh.args(["-c", &script]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout == data[data.len() - 4096..], "tail read differs");
    assert!(
        dev.contents() == data,
        "device changed by rejected requests"
    );
}

#[test]
fn nbdsh_read_only_export_refuses_writes_with_eperm() {
    let Some(mut sh) = nbdsh() else { return };
    let data = pattern(64 << 10, 3);
    let dev = Arc::new(MemDevice::from_vec(data.clone()).read_only());
    let srv = TestServer::unix(vec![("ro", dev.clone())]);
    let script = format!(
        "{NBDSH_PRELUDE}
h.connect_uri({uri:?})
assert h.is_read_only()
for f in (lambda: h.pwrite(b'y' * 512, 0), lambda: h.zero(512, 0), lambda: h.trim(512, 0)):
    try:
        f()
    except nbd.Error as e:
        assert e.errno in (errno.EPERM, 'EPERM'), e.errno
    else:
        raise AssertionError('write accepted')
assert h.pread(512, 0) == {head:?}
h.flush()
h.shutdown()
",
        uri = srv.uri("ro"),
        head = PyBytes(&data[..512])
    );
    let o = run(sh.args(["-c", &script]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dev.contents() == data);
}

#[test]
fn nbdsh_write_fua_zero_trim_flush_reach_the_device() {
    let Some(mut sh) = nbdsh() else { return };
    let dev = Arc::new(MemDevice::from_vec(vec![0xee; 1 << 20]));
    let srv = TestServer::unix(vec![("vol", dev.clone())]);
    let script = format!(
        "h.connect_uri({uri:?})
h.pwrite(b'\\x01' * 4096, 0, nbd.CMD_FLAG_FUA)
h.zero(4096, 8192, nbd.CMD_FLAG_NO_HOLE)
h.zero(4096, 12288, nbd.CMD_FLAG_FUA)
h.trim(4096, 16384)
h.flush()
assert h.pread(4096, 0) == b'\\x01' * 4096
assert h.pread(8192, 8192) == bytes(8192)
h.shutdown()
",
        uri = srv.uri("vol")
    );
    let o = run(sh.args(["-c", &script]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = dev.contents();
    assert!(c[..4096].iter().all(|&b| b == 1));
    assert!(c[4096..8192].iter().all(|&b| b == 0xee));
    assert!(c[8192..16384].iter().all(|&b| b == 0));
    assert!(c[20480..].iter().all(|&b| b == 0xee));
}

#[test]
fn nbdsh_concurrent_connections_see_each_others_writes() {
    if nbdsh().is_none() {
        return;
    }
    const CLIENTS: usize = 4;
    const REGION: usize = 1 << 20;
    let dev = mem(CLIENTS * REGION);
    let srv = TestServer::unix(vec![("vol", dev.clone())]);
    let uri = srv.uri("vol");
    // Each process writes its region, flushes, then waits until every other region
    // is written (polled with a deadline) and checks it: this only passes if the
    // connections are served at the same time and share one device.
    let handles: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let uri = uri.clone();
            std::thread::spawn(move || {
                let script = format!(
                    "import time
h.connect_uri({uri:?})
me = {i}
h.pwrite(bytes([me + 1]) * {REGION}, me * {REGION})
h.flush()
deadline = time.monotonic() + 30
for other in range({CLIENTS}):
    want = bytes([other + 1]) * 4096
    while h.pread(4096, other * {REGION} + {REGION} - 4096) != want:
        assert time.monotonic() < deadline, 'region %d never written' % other
        time.sleep(0.01)
h.shutdown()
"
                );
                run(nbdsh().unwrap().args(["-c", &script]))
            })
        })
        .collect();
    for h in handles {
        let o = h.join().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let c = dev.contents();
    for i in 0..CLIENTS {
        assert!(c[i * REGION..(i + 1) * REGION]
            .iter()
            .all(|&b| b == i as u8 + 1));
    }
}

/// Records NBD_CMD_CACHE hints.
struct CacheSpy {
    inner: MemDevice,
    hints: parking_lot::Mutex<Vec<(u64, u64)>>,
}

impl BlockDevice for CacheSpy {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> std::io::Result<()> {
        self.inner.write_at(buf, offset, fua)
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.trim(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> std::io::Result<()> {
        self.inner.write_zeroes(offset, len, fua)
    }
    fn cache(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.hints.lock().push((offset, len));
        Ok(())
    }
    fn block_status(&self, offset: u64, len: u64) -> std::io::Result<Vec<nbd_export::Extent>> {
        self.inner.block_status(offset, len)
    }
}

#[test]
fn nbdsh_cache_hints_reach_the_device_and_block_status_works() {
    let Some(mut sh) = nbdsh() else { return };
    let mut data = vec![7u8; 1 << 20];
    data[65536..131072].fill(0);
    let dev = Arc::new(CacheSpy {
        inner: MemDevice::from_vec(data),
        hints: Default::default(),
    });
    let srv = TestServer::unix(vec![("vol", dev.clone() as Arc<dyn BlockDevice>)]);
    let script = format!(
        "h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri({uri:?})
assert h.can_cache()
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.cache(8192, 4096)
seen = []
def cb(metacontext, offset, entries, err):
    assert metacontext == nbd.CONTEXT_BASE_ALLOCATION
    seen.extend(entries)
h.block_status(1 << 20, 0, cb)
assert seen[:6] == [65536, 0, 65536, nbd.STATE_ZERO, (1 << 20) - 131072, 0], seen
h.shutdown()
",
        uri = srv.uri("vol")
    );
    let o = run(sh.args(["-c", &script]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(*dev.hints.lock(), vec![(4096, 8192)]);
}

/// Formats bytes as a Python bytes literal.
struct PyBytes<'a>(&'a [u8]);
impl std::fmt::Debug for PyBytes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("b'")?;
        for b in self.0 {
            write!(f, "\\x{b:02x}")?;
        }
        f.write_str("'")
    }
}
