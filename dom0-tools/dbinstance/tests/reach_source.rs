//! A new replica reaching its source: tried again while the network does not answer
//! (a domU that just booted), not when the source refuses.

use dbinstance::{connect_to_source, ReplicationSource};
use std::time::{Duration, Instant};

fn source_at(host: &str, port: u16) -> ReplicationSource {
    ReplicationSource {
        host: host.into(),
        port,
        user: "repl".into(),
        password: "x".into(),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}

/// A listening socket whose accept queue is full: the kernel drops new SYNs, as a
/// network that does not answer yet would. The returned stream fills the queue.
fn silent_listener() -> (std::os::fd::OwnedFd, std::net::TcpStream, u16) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a socket we own; the sockaddr is a local value.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut a: libc::sockaddr_in = std::mem::zeroed();
        a.sin_family = libc::AF_INET as u16;
        a.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &a as *const _ as *const libc::sockaddr, len),
            0
        );
        // A backlog of 0: one connection fills the accept queue.
        assert_eq!(libc::listen(fd, 0), 0);
        let mut got: libc::sockaddr_in = std::mem::zeroed();
        let mut glen = len;
        libc::getsockname(fd, &mut got as *mut _ as *mut libc::sockaddr, &mut glen);
        let port = u16::from_be(got.sin_port);
        let filler = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        (owned, filler, port)
    }
}

#[test]
fn a_source_the_network_does_not_answer_for_is_tried_again_until_the_window_ends() {
    let (_listener, _filler, port) = silent_listener();
    let t = Instant::now();
    let err = connect_to_source("r1", &source_at("127.0.0.1", port), Duration::from_secs(3))
        .expect_err("the SYN is dropped");
    let msg = chain(&err);
    assert!(
        msg.contains(&format!(
            "connect to replication source 127.0.0.1:{port} as repl"
        )),
        "{msg}"
    );
    assert!(msg.contains(" attempts in "), "tried more than once: {msg}");
    assert!(
        t.elapsed() >= Duration::from_secs(3),
        "the whole window: {msg}"
    );
}

#[test]
fn a_refusal_is_not_tried_again() {
    // A port nobody listens on: the host answers with a refusal at once.
    let port = dbinstance::free_port().unwrap();
    let err = connect_to_source("r1", &source_at("127.0.0.1", port), Duration::from_secs(30))
        .expect_err("nobody listens there");
    let msg = chain(&err);
    assert!(
        msg.contains(&format!("connect to replication source 127.0.0.1:{port}")),
        "{msg}"
    );
    assert!(!msg.contains("attempts"), "one attempt: {msg}");
}
