//! Hostile and broken clients, driven byte by byte over a raw socket: the server must
//! answer with NBD errors or close, never panic, hang, or change the device.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nbd_export::proto::*;
use nbd_export::{BlockDevice, MemDevice};

struct Raw(UnixStream);

impl Raw {
    fn connect(srv: &TestServer) -> Raw {
        let s = UnixStream::connect(&srv.socket).unwrap();
        // Bounds every read in these tests: a server that hangs fails, not blocks.
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw(s)
    }

    fn send(&mut self, b: &[u8]) {
        self.0.write_all(b).unwrap();
    }

    fn recv(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.0.read_exact(&mut v).unwrap();
        v
    }

    /// Read the greeting and answer with fixed newstyle + no zeroes.
    fn greet(&mut self) {
        let g = self.recv(18);
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(u16::from_be_bytes([g[16], g[17]]), 3);
        self.send(&3u32.to_be_bytes());
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        let mut b = Vec::new();
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.send(&b);
    }

    /// (option, reply type, data)
    fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let h = self.recv(20);
        assert_eq!(
            u64::from_be_bytes(h[..8].try_into().unwrap()),
            OPTION_REPLY_MAGIC
        );
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let ty = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        (opt, ty, self.recv(len as usize))
    }

    fn go(&mut self, name: &str) {
        self.option(OPT_GO, &info_data(name));
        loop {
            let (opt, ty, _) = self.option_reply();
            assert_eq!(opt, OPT_GO);
            match ty {
                REP_INFO => continue,
                REP_ACK => return,
                other => panic!("GO failed with {other:#x}"),
            }
        }
    }

    fn request(
        &mut self,
        command: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        let r = encode_request(&Request {
            flags,
            command,
            cookie,
            offset,
            len,
        });
        self.send(&r);
        self.send(payload);
    }

    /// (error, cookie)
    fn reply(&mut self) -> (u32, u64) {
        let h: [u8; 16] = self.recv(16).try_into().unwrap();
        let r = parse_simple_reply(&h).unwrap();
        (r.error, r.cookie)
    }

    /// The server closes: EOF (or a reset, if our unread bytes were still queued).
    fn expect_closed(&mut self) {
        let mut b = [0u8; 64];
        loop {
            match self.0.read(&mut b) {
                Ok(0) => return,
                // Leftover reply bytes before the close are fine.
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
                Err(e) => panic!("expected close, got {e}"),
            }
        }
    }
}

fn info_data(name: &str) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    d
}

fn meta_data(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(export.len() as u32).to_be_bytes());
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

fn server_with(data: Vec<u8>) -> (TestServer, Arc<MemDevice>) {
    let dev = Arc::new(MemDevice::from_vec(data));
    let srv = TestServer::unix(vec![("vol", dev.clone() as Arc<dyn BlockDevice>)]);
    (srv, dev)
}

/// After a bad client, a good one still gets served.
fn assert_server_alive(srv: &TestServer) {
    let mut c = nbd_export::client::Client::connect_unix(&srv.socket, "vol").unwrap();
    let mut b = [0u8; 16];
    c.read(0, &mut b).unwrap();
    c.disconnect().unwrap();
}

#[test]
fn garbage_handshake_closes_connection() {
    let (srv, _) = server_with(vec![0; 4096]);
    let mut r = Raw::connect(&srv);
    r.greet();
    r.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    r.expect_closed();
    assert_server_alive(&srv);
}

#[test]
fn unknown_client_flags_close_connection() {
    let (srv, _) = server_with(vec![0; 4096]);
    let mut r = Raw::connect(&srv);
    r.recv(18);
    r.send(&0xffff_fffcu32.to_be_bytes());
    r.expect_closed();
    assert_server_alive(&srv);
}

#[test]
fn truncated_option_then_hangup_is_handled() {
    let (srv, _) = server_with(vec![0; 4096]);
    let mut r = Raw::connect(&srv);
    r.greet();
    let mut b = Vec::new();
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&OPT_GO.to_be_bytes());
    b.extend_from_slice(&100u32.to_be_bytes());
    b.extend_from_slice(&[0; 10]);
    r.send(&b);
    r.0.shutdown(std::net::Shutdown::Write).unwrap();
    r.expect_closed();
    assert_server_alive(&srv);
}

#[test]
fn option_length_4gib_is_refused_and_closed_without_waiting_for_data() {
    let (srv, _) = server_with(vec![0; 4096]);
    let mut r = Raw::connect(&srv);
    r.greet();
    let mut b = Vec::new();
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&OPT_INFO.to_be_bytes());
    b.extend_from_slice(&u32::MAX.to_be_bytes());
    r.send(&b);
    // The answer comes at once, before any of the claimed 4 GiB is sent: the server
    // neither waited for nor allocated it.
    let (opt, ty, _) = r.option_reply();
    assert_eq!((opt, ty), (OPT_INFO, REP_ERR_TOO_BIG));
    r.expect_closed();
    assert_server_alive(&srv);
}

#[test]
fn unknown_and_malformed_options_get_errors_and_haggling_continues() {
    let (srv, _) = server_with(vec![7; 4096]);
    let mut r = Raw::connect(&srv);
    r.greet();
    r.option(99, b"abc");
    assert_eq!(r.option_reply().1, REP_ERR_UNSUP);
    r.option(OPT_STRUCTURED_REPLY, b"x");
    assert_eq!(r.option_reply().1, REP_ERR_INVALID);
    // Meta contexts need structured replies first.
    r.option(
        OPT_SET_META_CONTEXT,
        &meta_data("vol", &["base:allocation"]),
    );
    assert_eq!(r.option_reply().1, REP_ERR_INVALID);
    r.option(OPT_STARTTLS, &[]);
    assert_eq!(r.option_reply().1, REP_ERR_UNSUP);
    r.option(OPT_LIST, b"x");
    assert_eq!(r.option_reply().1, REP_ERR_INVALID);
    r.option(OPT_INFO, &[0, 0, 0, 200, b'v']);
    assert_eq!(r.option_reply().1, REP_ERR_INVALID);
    r.option(OPT_INFO, &info_data("nope"));
    assert_eq!(r.option_reply().1, REP_ERR_UNKNOWN);
    r.option(OPT_INFO, &info_data("vol"));
    let (_, ty, info) = r.option_reply();
    assert_eq!(ty, REP_INFO);
    assert_eq!(info[..2], INFO_EXPORT.to_be_bytes());
    assert_eq!(u64::from_be_bytes(info[2..10].try_into().unwrap()), 4096);
    while r.option_reply().1 != REP_ACK {}
    r.go("vol");
    r.request(CMD_READ, 0, 5, 0, 4, &[]);
    assert_eq!(r.reply(), (0, 5));
    assert_eq!(r.recv(4), vec![7; 4]);
}

#[test]
fn export_name_for_unknown_export_closes() {
    let (srv, _) = server_with(vec![0; 4096]);
    let mut r = Raw::connect(&srv);
    r.greet();
    r.option(OPT_EXPORT_NAME, b"missing");
    r.expect_closed();
}

#[test]
fn export_name_enters_transmission_without_zero_padding() {
    let (srv, _) = server_with(vec![9; 4096]);
    let mut r = Raw::connect(&srv);
    r.greet();
    r.option(OPT_EXPORT_NAME, b"vol");
    let h = r.recv(10);
    assert_eq!(u64::from_be_bytes(h[..8].try_into().unwrap()), 4096);
    assert_eq!(u16::from_be_bytes([h[8], h[9]]), transmission_flags(false));
    // The next bytes are a reply to our request, not 124 zeroes.
    r.request(CMD_READ, 0, 77, 100, 2, &[]);
    assert_eq!(r.reply(), (0, 77));
    assert_eq!(r.recv(2), vec![9, 9]);
}

#[test]
fn abort_is_acknowledged() {
    let (srv, _) = server_with(vec![0; 4096]);
    let mut r = Raw::connect(&srv);
    r.greet();
    r.option(OPT_ABORT, &[]);
    assert_eq!(r.option_reply(), (OPT_ABORT, REP_ACK, vec![]));
    r.expect_closed();
}

#[test]
fn unknown_command_and_flags_get_einval_and_connection_survives() {
    let data = pattern(8192, 1);
    let (srv, dev) = server_with(data.clone());
    let mut r = Raw::connect(&srv);
    r.greet();
    r.go("vol");
    r.request(99, 0, 1, 0, 0, &[]);
    assert_eq!(r.reply(), (NBD_EINVAL, 1));
    // Unknown flag on a write: its payload is still consumed.
    r.request(CMD_WRITE, 1 << 9, 2, 0, 16, &[0xff; 16]);
    assert_eq!(r.reply(), (NBD_EINVAL, 2));
    r.request(CMD_READ, 0, 3, 0, 16, &[]);
    assert_eq!(r.reply(), (0, 3));
    assert_eq!(r.recv(16), data[..16]);
    assert!(dev.contents() == data);
}

#[test]
fn write_past_end_errors_and_leaves_device_unchanged() {
    let data = pattern(8192, 2);
    let (srv, dev) = server_with(data.clone());
    let mut r = Raw::connect(&srv);
    r.greet();
    r.go("vol");
    r.request(CMD_WRITE, 0, 10, 8192 - 512, 1024, &[0xaa; 1024]);
    assert_eq!(r.reply(), (NBD_ENOSPC, 10));
    r.request(CMD_WRITE, 0, 11, u64::MAX - 10, 100, &[0xaa; 100]);
    assert_eq!(r.reply(), (NBD_ENOSPC, 11));
    r.request(CMD_WRITE_ZEROES, 0, 12, 8000, 4096, &[]);
    assert_eq!(r.reply(), (NBD_ENOSPC, 12));
    r.request(CMD_TRIM, 0, 13, 8192, 1, &[]);
    assert_eq!(r.reply(), (NBD_EINVAL, 13));
    r.request(CMD_READ, 0, 14, 8191, 2, &[]);
    assert_eq!(r.reply(), (NBD_EINVAL, 14));
    // In sync: a valid request after all that.
    r.request(CMD_READ, 0, 15, 8192 - 4, 4, &[]);
    assert_eq!(r.reply(), (0, 15));
    assert_eq!(r.recv(4), data[8188..]);
    assert!(dev.contents() == data, "device changed");
}

#[test]
fn oversized_write_is_refused_and_closed() {
    let data = pattern(4096, 3);
    let (srv, dev) = server_with(data.clone());
    let mut r = Raw::connect(&srv);
    r.greet();
    r.go("vol");
    let mut b = encode_request(&Request {
        flags: 0,
        command: CMD_WRITE,
        cookie: 20,
        offset: 0,
        len: MAX_PAYLOAD + 1,
    })
    .to_vec();
    b.extend_from_slice(&[0xbb; 4096]);
    // The server may hang up before it has read all we send: EPIPE is expected.
    match r.0.write_all(&b) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
        Err(e) => panic!("{e}"),
    }
    assert_eq!(r.reply(), (NBD_EINVAL, 20));
    r.expect_closed();
    assert!(dev.contents() == data);
    assert_server_alive(&srv);
}

#[test]
fn oversized_read_is_refused_and_connection_survives() {
    let (srv, _) = server_with(vec![1; 4096]);
    let mut r = Raw::connect(&srv);
    r.greet();
    r.go("vol");
    r.request(CMD_READ, 0, 21, 0, u32::MAX, &[]);
    assert_eq!(r.reply(), (NBD_EINVAL, 21));
    r.request(CMD_READ, 0, 22, 0, 1, &[]);
    assert_eq!(r.reply(), (0, 22));
    assert_eq!(r.recv(1), vec![1]);
}

#[test]
fn bad_request_magic_closes() {
    let (srv, _) = server_with(vec![0; 4096]);
    let mut r = Raw::connect(&srv);
    r.greet();
    r.go("vol");
    r.send(&[0x55; REQUEST_LEN]);
    r.expect_closed();
    assert_server_alive(&srv);
}

#[test]
fn read_only_export_rejects_write_with_eperm_and_consumes_payload() {
    let data = pattern(4096, 4);
    let dev = Arc::new(MemDevice::from_vec(data.clone()).read_only());
    let srv = TestServer::unix(vec![("vol", dev.clone() as Arc<dyn BlockDevice>)]);
    let mut r = Raw::connect(&srv);
    r.greet();
    r.go("vol");
    r.request(CMD_WRITE, 0, 30, 0, 512, &[0; 512]);
    assert_eq!(r.reply(), (NBD_EPERM, 30));
    r.request(CMD_TRIM, 0, 31, 0, 512, &[]);
    assert_eq!(r.reply(), (NBD_EPERM, 31));
    r.request(CMD_FLUSH, 0, 32, 0, 0, &[]);
    assert_eq!(r.reply(), (0, 32));
    assert!(dev.contents() == data);
}

/// A MemDevice whose reads at offset 0 wait until the test opens the gate.
struct Gated {
    inner: MemDevice,
    open: parking_lot::Mutex<bool>,
    cv: parking_lot::Condvar,
}

impl Gated {
    fn new(data: Vec<u8>) -> Arc<Self> {
        Arc::new(Gated {
            inner: MemDevice::from_vec(data),
            open: parking_lot::Mutex::new(false),
            cv: parking_lot::Condvar::new(),
        })
    }
    fn open(&self) {
        *self.open.lock() = true;
        self.cv.notify_all();
    }
}

impl BlockDevice for Gated {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if offset == 0 {
            let mut open = self.open.lock();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !*open {
                if self.cv.wait_until(&mut open, deadline).timed_out() {
                    return Err(std::io::Error::from_raw_os_error(libc::ETIMEDOUT));
                }
            }
        }
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
}

#[test]
fn slow_request_does_not_hold_up_others_on_the_same_connection() {
    let data = pattern(8192, 8);
    let dev = Gated::new(data.clone());
    let srv = TestServer::unix(vec![("vol", dev.clone() as Arc<dyn BlockDevice>)]);
    let mut r = Raw::connect(&srv);
    r.greet();
    r.go("vol");
    r.request(CMD_READ, 0, 1, 0, 16, &[]);
    // Both later requests complete while the first is stuck in the device. The read
    // waits for the write's reply: NBD orders nothing between requests in flight (two
    // sent at once were once answered read first, on a loaded CI machine).
    r.request(CMD_WRITE, 0, 2, 4096, 4, b"abcd");
    assert_eq!(r.reply(), (0, 2));
    r.request(CMD_READ, 0, 3, 4096, 4, &[]);
    assert_eq!(r.reply(), (0, 3));
    assert_eq!(r.recv(4), b"abcd");
    dev.open();
    assert_eq!(r.reply(), (0, 1));
    assert_eq!(r.recv(16), data[..16]);
}

#[test]
fn disconnect_waits_for_requests_in_flight() {
    let data = pattern(8192, 9);
    let dev = Gated::new(data.clone());
    let srv = TestServer::unix(vec![("vol", dev.clone() as Arc<dyn BlockDevice>)]);
    let mut r = Raw::connect(&srv);
    r.greet();
    r.go("vol");
    r.request(CMD_READ, 0, 1, 0, 32, &[]);
    r.request(CMD_DISC, 0, 2, 0, 0, &[]);
    dev.open();
    assert_eq!(r.reply(), (0, 1));
    assert_eq!(r.recv(32), data[..32]);
    r.expect_closed();
}

/// A device that fails with a chosen errno.
struct Failing(i32);
impl BlockDevice for Failing {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(self.0))
    }
    fn write_at(&self, _: &[u8], _: u64, _: bool) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(self.0))
    }
    fn flush(&self) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(self.0))
    }
    fn trim(&self, _: u64, _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(self.0))
    }
}

#[test]
fn device_errors_map_to_nbd_errors_without_read_payload() {
    for (errno, want) in [
        (libc::ENOSPC, NBD_ENOSPC),
        (libc::EDQUOT, NBD_ENOSPC),
        (libc::EIO, NBD_EIO),
        (libc::EBADF, NBD_EIO),
    ] {
        let srv = TestServer::unix(vec![(
            "vol",
            Arc::new(Failing(errno)) as Arc<dyn BlockDevice>,
        )]);
        let mut r = Raw::connect(&srv);
        r.greet();
        r.go("vol");
        r.request(CMD_WRITE, 0, 1, 0, 8, &[1; 8]);
        assert_eq!(r.reply(), (want, 1), "errno {errno}");
        r.request(CMD_FLUSH, 0, 2, 0, 0, &[]);
        assert_eq!(r.reply(), (want, 2));
        // A failed read sends no data: the next reply follows immediately.
        r.request(CMD_READ, 0, 3, 0, 4096, &[]);
        assert_eq!(r.reply(), (want, 3));
        r.request(CMD_TRIM, 0, 4, 0, 4096, &[]);
        assert_eq!(r.reply(), (0, 4));
    }
}
