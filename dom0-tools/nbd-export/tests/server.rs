//! Server lifecycle: listeners, concurrency, shutdown, limits.

mod common;

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nbd_export::client::Client;
use nbd_export::{BlockDevice, Export, ListenAddr, MemDevice, NbdError, Server};

/// Reads until EOF/reset; the read timeout makes a hang a failure.
fn assert_closed_by_server(s: &mut impl Read) {
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("expected the server to close, got {e}"),
        }
    }
}

#[test]
fn shutdown_closes_connections_and_removes_socket() {
    let srv = TestServer::unix(vec![("vol", mem(1 << 20))]);
    // One client idle in transmission, one idle before its handshake.
    let mut c = Client::connect_unix(&srv.socket, "vol").unwrap();
    c.write(0, b"hello", true).unwrap();
    let mut idle = UnixStream::connect(&srv.socket).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut greeting = [0u8; 18];
    idle.read_exact(&mut greeting).unwrap();
    assert_eq!(srv.handle.connection_count(), 2);
    srv.handle.shutdown();
    assert_eq!(srv.handle.connection_count(), 0);
    assert!(!srv.socket.exists(), "socket file left behind");
    assert_closed_by_server(&mut idle);
    let mut b = [0u8; 5];
    assert!(c.read(0, &mut b).is_err(), "connection survived shutdown");
    // Idempotent, and wait() returns once stopped.
    srv.handle.shutdown();
    srv.handle.wait();
}

#[test]
fn idle_and_slow_clients_do_not_block_others() {
    let srv = TestServer::unix(vec![("vol", mem(1 << 20))]);
    // A client that connects and never speaks, and one that stalls mid-option.
    let _silent = UnixStream::connect(&srv.socket).unwrap();
    let mut stalled = UnixStream::connect(&srv.socket).unwrap();
    let mut g = [0u8; 18];
    stalled.read_exact(&mut g).unwrap();
    std::io::Write::write_all(&mut stalled, &[0, 0, 0, 3, b'I', b'H']).unwrap();
    let mut c = Client::connect_unix(&srv.socket, "vol").unwrap();
    c.write(4096, &[5; 4096], false).unwrap();
    let mut b = [0u8; 4096];
    c.read(4096, &mut b).unwrap();
    assert_eq!(b, [5; 4096]);
}

#[test]
fn many_clients_in_parallel_on_one_export() {
    const N: usize = 8;
    const REGION: usize = 256 << 10;
    let dev = mem(N * REGION);
    let srv = TestServer::unix(vec![("vol", dev.clone())]);
    let sock = srv.socket.clone();
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect_unix(&sock, "vol").unwrap();
                let data = pattern(REGION, i as u64 + 100);
                for (k, chunk) in data.chunks(16 << 10).enumerate() {
                    c.write((i * REGION + k * (16 << 10)) as u64, chunk, false)
                        .unwrap();
                }
                c.flush().unwrap();
                let mut back = vec![0u8; REGION];
                c.read((i * REGION) as u64, &mut back).unwrap();
                assert!(back == data);
                c.disconnect().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let contents = dev.contents();
    for i in 0..N {
        assert!(contents[i * REGION..(i + 1) * REGION] == pattern(REGION, i as u64 + 100)[..]);
    }
}

#[test]
fn tcp_port_zero_reports_real_port_on_loopback() {
    let srv = TestServer::tcp(vec![("vol", mem(65536))]);
    let addr = srv.handle.local_addr().unwrap();
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);
    let mut c = Client::connect_tcp(addr, "vol").unwrap();
    assert_eq!(c.size(), 65536);
    c.write(1, b"abc", false).unwrap();
    let mut b = [0u8; 3];
    c.read(1, &mut b).unwrap();
    assert_eq!(&b, b"abc");
    srv.handle.shutdown();
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening after shutdown"
    );
}

#[test]
fn default_tcp_spec_binds_loopback() {
    let a: ListenAddr = "tcp:0".parse().unwrap();
    let h = Server::new()
        .export("v", mem(512))
        .unwrap()
        .serve(&a)
        .unwrap();
    assert!(h.local_addr().unwrap().ip().is_loopback());
    assert_eq!(nbd_export::DEFAULT_TCP_ADDR.to_string(), "127.0.0.1:10809");
}

#[test]
fn stale_socket_is_replaced_but_live_socket_and_files_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s");
    // A socket file nobody listens on (its listener was dropped).
    drop(std::os::unix::net::UnixListener::bind(&p).unwrap());
    assert!(p.exists());
    let h = Server::new()
        .export("v", mem(512))
        .unwrap()
        .serve_unix(&p)
        .unwrap();
    // Live: a second server on the same path is refused.
    let err = Server::new()
        .export("v", mem(512))
        .unwrap()
        .serve_unix(&p)
        .err()
        .unwrap();
    assert!(matches!(err, NbdError::Bind { .. }), "{err}");
    assert!(
        Client::connect_unix(&p, "v").is_ok(),
        "first server disturbed"
    );
    drop(h);
    let f = dir.path().join("plain");
    std::fs::write(&f, b"keep me").unwrap();
    let err = Server::new().serve_unix(&f).err().unwrap();
    assert!(matches!(err, NbdError::SocketPathOccupied(_)), "{err}");
    assert_eq!(std::fs::read(&f).unwrap(), b"keep me");
}

#[test]
fn duplicate_and_invalid_export_names_are_errors() {
    let e = Server::new()
        .export("a", mem(1))
        .unwrap()
        .export("a", mem(1))
        .err()
        .unwrap();
    assert!(matches!(e, NbdError::DuplicateExport(_)), "{e}");
    let e = Server::new().export("a\0b", mem(1)).err().unwrap();
    assert!(matches!(e, NbdError::InvalidExportName { .. }), "{e}");
}

#[test]
fn exports_can_be_added_and_removed_while_serving() {
    let srv = TestServer::unix(vec![("a", mem(512))]);
    assert!(Client::connect_unix(&srv.socket, "b").is_err());
    srv.handle
        .exports()
        .add(Export {
            name: "b".into(),
            description: None,
            device: Arc::new(MemDevice::new(1024)),
        })
        .unwrap();
    let mut c = Client::connect_unix(&srv.socket, "b").unwrap();
    assert_eq!(c.size(), 1024);
    srv.handle.exports().remove("b").unwrap();
    // An open connection keeps its device; new ones cannot find it.
    c.write(0, b"x", false).unwrap();
    let e = Client::connect_unix(&srv.socket, "b").err().unwrap();
    assert!(matches!(e, NbdError::OptionRefused { .. }), "{e}");
}

#[test]
fn empty_name_selects_the_only_export() {
    let srv = TestServer::unix(vec![("only", mem(4096))]);
    assert_eq!(Client::connect_unix(&srv.socket, "").unwrap().size(), 4096);
    let two = TestServer::unix(vec![("a", mem(1)), ("b", mem(2))]);
    assert!(
        Client::connect_unix(&two.socket, "").is_err(),
        "ambiguous default"
    );
}

#[test]
fn connections_over_the_limit_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s");
    let h = Server::new()
        .max_connections(1)
        .export("v", mem(512))
        .unwrap()
        .serve_unix(&p)
        .unwrap();
    let _first = Client::connect_unix(&p, "v").unwrap();
    let mut second = UnixStream::connect(&p).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_closed_by_server(&mut second);
    assert_eq!(h.connection_count(), 1);
}

#[test]
fn silent_client_is_dropped_after_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s");
    let h = Server::new()
        .handshake_timeout(Some(Duration::from_millis(200)))
        .export("v", mem(512))
        .unwrap()
        .serve_unix(&p)
        .unwrap();
    let mut s = UnixStream::connect(&p).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    assert_closed_by_server(&mut s);
    poll_until("connection reaped", Duration::from_secs(10), || {
        h.connection_count() == 0
    });
    // Transmission has no timeout: a client idle there stays connected.
    let mut c = Client::connect_unix(&p, "v").unwrap();
    // Elapsed time is the subject here, not a synchronisation: stay idle for twice
    // the handshake timeout.
    std::thread::sleep(Duration::from_millis(400));
    c.write(0, b"still here", false).unwrap();
}

#[test]
fn file_device_serves_a_real_file() {
    let dir = tempfile::tempdir().unwrap();
    let (path, dev) = image(dir.path(), "img", 1 << 20, 11);
    let srv = TestServer::unix(vec![("f", dev as Arc<dyn BlockDevice>)]);
    let mut c = Client::connect_unix(&srv.socket, "f").unwrap();
    c.write(4096, &[0xfe; 8192], true).unwrap();
    c.flush().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes[4096..12288].iter().all(|&b| b == 0xfe));
    assert!(bytes[..4096] == pattern(1 << 20, 11)[..4096]);
}
