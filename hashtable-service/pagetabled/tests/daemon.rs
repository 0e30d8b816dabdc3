//! `pagetabled` driven as a real process by real client processes.

mod common;

use common::{Daemon, Probe};
use pagetable::admin::{AdminReply, AdminRequest};
use pagetable::wire::{self, ErrorCode, Reply};
use pagetable::{DomainId, FamilyId};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn family(daemon: &Daemon, f: u32, domains: &[u32]) {
    daemon.admin(AdminRequest::FamilyCreate {
        family: FamilyId(f),
    });
    for d in domains {
        daemon.admin(AdminRequest::FamilyAdd {
            family: FamilyId(f),
            domain: DomainId(*d),
        });
    }
}

/// A probe bound to `domain` and connected.
fn client(daemon: &Daemon, domain: u32) -> Probe {
    let mut p = Probe::spawn();
    daemon.admin(AdminRequest::BindPid {
        pid: p.pid(),
        domain: DomainId(domain),
    });
    let hello = p.ok(&format!("connect {}", daemon.socket.display()));
    assert!(hello.contains(&format!("domain={domain} ")), "{hello}");
    p
}

#[test]
fn families_are_walls_between_processes() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    family(&d, 1, &[10, 11]);
    family(&d, 2, &[20]);
    let mut a = client(&d, 10);
    let mut sibling = client(&d, 11);
    let mut b = client(&d, 20);

    a.ok("register 5 7 16384 100");
    // Same family: visible, with the owner and frame the source registered.
    assert_eq!(
        sibling.cmd("lookup 5 7 1000"),
        "hit owner=10 offset=16384 lsn=100 valid_from=max"
    );
    // LSN rule: a replica whose snapshot predates the page must not get it.
    assert_eq!(sibling.cmd("lookup 5 7 99"), "miss");
    // Other family: not visible in its own family, and cannot name family 1.
    assert_eq!(b.cmd("lookup 5 7 1000"), "miss");
    let e = b.cmd("lookup_in 1 5 7 1000");
    assert!(e.starts_with("err") && e.contains("NotInFamily"), "{e}");
    let e = b.cmd("register_in 1 5 8 0 1");
    assert!(e.starts_with("err") && e.contains("NotInFamily"), "{e}");
    // The refusal does not cost b its connection; its own family still works.
    b.ok("register 5 7 0 200");
    assert_eq!(
        b.cmd("lookup 5 7 1000"),
        "hit owner=20 offset=0 lsn=200 valid_from=max"
    );
    assert_eq!(
        sibling.cmd("lookup 5 7 1000"),
        "hit owner=10 offset=16384 lsn=100 valid_from=max"
    );
    assert_eq!(d.family_entries(1), 1);
    assert_eq!(d.family_entries(2), 1);
    let s = d.stats();
    let f1 = s.families.iter().find(|f| f.family.0 == 1).unwrap();
    assert_eq!((f1.lookups, f1.hits, f1.misses), (3, 2, 1));
}

/// The share rule's second bound travels over the socket: valid_from goes in with
/// the registration, comes back in the reply, and stops a frame read before a
/// snapshot from serving it.
#[test]
fn valid_from_bounds_lookups_over_ipc() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    family(&d, 1, &[10, 11]);
    let mut source = client(&d, 10);
    let mut replica = client(&d, 11);
    // Read at LSN 100 while the clone LSN was 120.
    source.ok("register 3 3 0 100 120");
    assert_eq!(
        replica.cmd("lookup 3 3 120"),
        "hit owner=10 offset=0 lsn=100 valid_from=120"
    );
    assert_eq!(replica.cmd("lookup 3 3 121"), "miss");
    // Read again (same version) after snapshot 300 was published.
    source.ok("register 3 3 16384 100 300");
    assert_eq!(
        replica.cmd("lookup 3 3 121"),
        "hit owner=10 offset=16384 lsn=100 valid_from=300"
    );
    // Equal LSNs: the later read wins also where both would pass.
    assert_eq!(
        replica.cmd("lookup 3 3 110"),
        "hit owner=10 offset=16384 lsn=100 valid_from=300"
    );
    assert_eq!(replica.cmd("lookup 3 3 301"), "miss");
}

#[test]
fn unbound_process_is_refused_until_bound() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    family(&d, 1, &[10]);
    let mut p = Probe::spawn();
    let e = p.cmd(&format!("connect {}", d.socket.display()));
    assert!(e.starts_with("err") && e.contains("NotBound"), "{e}");
    d.admin(AdminRequest::BindPid {
        pid: p.pid(),
        domain: DomainId(10),
    });
    p.ok(&format!("connect {}", d.socket.display()));
    d.admin(AdminRequest::UnbindPid { pid: p.pid() });
    // The open connection keeps its identity; a new one is refused.
    p.ok("register 1 1 0 1");
    let e = p.cmd(&format!("connect {}", d.socket.display()));
    assert!(e.contains("NotBound"), "{e}");
}

#[test]
fn killed_client_domain_is_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    family(&d, 1, &[10, 11, 12]);
    let mut source = client(&d, 10);
    let mut replica = client(&d, 11);
    for p in 0..3 {
        source.ok(&format!("register 1 {p} {} 50", p * 16384));
    }
    assert_eq!(
        replica.cmd("lookup 1 2 50"),
        "hit owner=10 offset=32768 lsn=50 valid_from=max"
    );
    source.kill9();
    d.wait_for("entries of the killed domain to go", |d| {
        d.family_entries(1) == 0
    });
    assert_eq!(replica.cmd("lookup 1 2 50"), "miss");
    // Membership survives a disconnect, so a restarted process can be bound again.
    let mut again = client(&d, 10);
    again.ok("register 1 2 0 60");
    assert_eq!(
        replica.cmd("lookup 1 2 60"),
        "hit owner=10 offset=0 lsn=60 valid_from=max"
    );

    // The admin path: remove_domain drops entries, membership and bindings.
    let mut third = client(&d, 12);
    third.ok("register 9 9 0 1");
    third.ok("register 9 8 16384 1");
    assert_eq!(
        d.admin(AdminRequest::RemoveDomain {
            domain: DomainId(12)
        }),
        AdminReply::Removed { entries: 2 }
    );
    let e = third.cmd("lookup 9 9 1");
    assert!(e.contains("UnknownDomain"), "{e}");
    assert_eq!(replica.cmd("lookup 9 9 1"), "miss");
    assert_eq!(d.stats().families[0].domains, 2);
}

#[test]
fn restarted_daemon_is_noticed_and_repopulated() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let mut d = Daemon::start(dir.path(), &["--state-file", state.to_str().unwrap()]);
    family(&d, 1, &[10, 11]);
    let mut source = client(&d, 10);
    let mut replica = client(&d, 11);
    source.ok("register 3 4 16384 70");
    assert_eq!(
        replica.cmd("lookup 3 4 70"),
        "hit owner=10 offset=16384 lsn=70 valid_from=max"
    );
    let old_gen = d.generation.clone();
    let old_seen = replica.ok("gen");
    assert_eq!(old_seen, format!("ok {old_gen}"));

    d.kill9_and_restart();
    assert_ne!(d.generation, old_gen);
    // The old connection is dead; the client gets an error, not a hang.
    let e = replica.cmd("lookup 3 4 70");
    assert!(e.starts_with("err"), "{e}");
    let r = replica.ok("reconnect");
    assert_eq!(r, format!("ok changed=true gen={}", d.generation));
    // Families and bindings came back from the state file; entries did not.
    assert_eq!(replica.cmd("lookup 3 4 70"), "miss");
    assert_eq!(
        source.ok("reconnect"),
        format!("ok changed=true gen={}", d.generation)
    );
    source.ok("register 3 4 16384 70");
    assert_eq!(
        replica.cmd("lookup 3 4 70"),
        "hit owner=10 offset=16384 lsn=70 valid_from=max"
    );
}

/// Sends raw bytes from this (unbound) process and returns the decoded reply, after
/// checking that the daemon then closed the connection.
fn raw_exchange(d: &Daemon, bytes: &[u8], half_close: bool) -> Reply {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(common::WAIT)).unwrap();
    s.write_all(bytes).unwrap();
    if half_close {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut body = Vec::new();
    wire::read_message(&mut s, &mut body).expect("an error reply");
    let reply = wire::decode_reply(&body).unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        s.read_to_end(&mut rest).unwrap(),
        0,
        "connection not closed"
    );
    reply.reply
}

fn code(r: &Reply) -> ErrorCode {
    match r {
        Reply::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn malformed_truncated_and_oversized_messages_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path(), &[]);
    family(&d, 1, &[10]);
    let mut good = client(&d, 10);
    good.ok("register 1 1 0 5");

    // Wrong version.
    let r = raw_exchange(&d, &[6, 0, 0, 0, 9, 1, 0, 0, 0, 0], false);
    assert_eq!(code(&r), ErrorCode::Malformed);
    // Unknown kind.
    let r = raw_exchange(&d, &[6, 0, 0, 0, 1, 0x55, 0, 0, 0, 0], false);
    assert_eq!(code(&r), ErrorCode::Malformed);
    // A lookup whose body is cut short inside a complete frame.
    let r = raw_exchange(&d, &[9, 0, 0, 0, 1, 3, 0, 0, 0, 0, 1, 0, 0], false);
    assert_eq!(code(&r), ErrorCode::Malformed);
    // The stream ends inside the body.
    let r = raw_exchange(&d, &[100, 0, 0, 0, 1, 1], true);
    assert_eq!(code(&r), ErrorCode::Malformed);
    // Zero length.
    let r = raw_exchange(&d, &[0, 0, 0, 0], false);
    assert_eq!(code(&r), ErrorCode::Malformed);
    // Oversized: refused from the prefix alone, the body is never read.
    let big = (wire::MAX_MESSAGE as u32 + 1).to_le_bytes();
    let r = raw_exchange(&d, &big, false);
    assert_eq!(code(&r), ErrorCode::TooLarge);
    // A well-formed message from an unbound process.
    let mut hello = Vec::new();
    wire::encode_request(
        &wire::RequestMsg {
            id: 3,
            request: wire::Request::Hello,
        },
        &mut hello,
    );
    let r = raw_exchange(&d, &hello, false);
    assert_eq!(code(&r), ErrorCode::NotBound);

    // Garbage of every shape; the daemon must keep answering.
    let mut seed = 0x9e3779b97f4a7c15u64;
    for i in 0..200 {
        let len = i % 64;
        let mut junk = Vec::with_capacity(len + 4);
        junk.extend_from_slice(&(len as u32).to_le_bytes());
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            junk.push(seed as u8);
        }
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.set_read_timeout(Some(common::WAIT)).unwrap();
        let _ = s.write_all(&junk);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).expect("daemon answers and closes");
    }
    assert!(d.is_running());
    assert_eq!(
        good.cmd("lookup 1 1 5"),
        "hit owner=10 offset=0 lsn=5 valid_from=max"
    );
}

#[test]
fn quota_is_enforced_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &["--quota", "2"]);
    family(&d, 1, &[10]);
    let mut p = client(&d, 10);
    p.ok("register 1 1 0 1");
    p.ok("register 1 2 16384 1");
    // Moving an already registered frame is not a new entry.
    p.ok("register 1 3 16384 1");
    let e = p.cmd("register 1 4 32768 1");
    assert!(e.contains("QuotaExceeded") && e.contains("quota"), "{e}");
    p.ok("invalidate 0");
    p.ok("register 1 4 32768 1");
    assert_eq!(d.family_entries(1), 2);
}

#[test]
fn stats_cli_metrics_endpoint_and_socket_modes() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &["--metrics-addr", "127.0.0.1:0"]);
    family(&d, 4, &[40]);
    let mut p = client(&d, 40);
    p.ok("register 1 1 0 1");
    p.cmd("lookup 1 1 1");
    p.cmd("lookup 1 2 1");
    p.ok("invalidate 0");

    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.admin), 0o600);
    assert_eq!(mode(&d.socket), 0o666);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pagetabled"))
        .args(["stats", "--json", "--admin-socket"])
        .arg(&d.admin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = &json["families"][0];
    assert_eq!(f["family"], 4);
    assert_eq!(
        (f["lookups"].as_u64(), f["hits"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(f["invalidations"], 1);
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_pagetabled"))
        .args(["stats", "--admin-socket"])
        .arg(&d.admin)
        .output()
        .unwrap();
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("invalidated") && text.contains(&d.generation),
        "{text}"
    );

    let addr = d
        .metrics
        .clone()
        .expect("metrics address in the ready line");
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    for line in [
        "pagetable_entries{family=\"4\"} 0",
        "pagetable_lookups_total{family=\"4\"} 2",
        "pagetable_hits_total{family=\"4\"} 1",
        "pagetable_misses_total{family=\"4\"} 1",
        "pagetable_invalidations_total{family=\"4\"} 1",
        "pagetabled_connections 1",
    ] {
        assert!(resp.lines().any(|l| l == line), "missing {line} in\n{resp}");
    }
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
}

#[test]
fn admin_refuses_bad_requests_and_non_root_peers() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let e = d.admin_err(AdminRequest::FamilyAdd {
        family: FamilyId(1),
        domain: DomainId(1),
    });
    assert!(e.contains("family 1 does not exist"), "{e}");
    let e = d.admin_err(AdminRequest::BindPid {
        pid: u32::MAX - 1,
        domain: DomainId(1),
    });
    assert!(e.contains("no process"), "{e}");

    let mut raw = UnixStream::connect(&d.admin).unwrap();
    raw.set_read_timeout(Some(common::WAIT)).unwrap();
    raw.write_all(b"{\"op\":\"rm_rf\"}\n").unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&raw), &mut line).unwrap();
    let reply: AdminReply = serde_json::from_str(&line).unwrap();
    assert!(matches!(reply, AdminReply::Error { .. }), "{reply:?}");

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping the non-root peer check: the test does not run as root");
        return;
    }
    // Defence in depth: even with the socket file opened up, uid 65534 is refused.
    std::fs::set_permissions(&d.admin, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut nobody = Probe::spawn_with(|c| {
        use std::os::unix::process::CommandExt;
        c.uid(65534).gid(65534);
    });
    let r = nobody.cmd(&format!("admin {} {{\"op\":\"stats\"}}", d.admin.display()));
    if r.contains("Permission denied") || r.contains("No such file") {
        eprintln!("skipping the non-root peer check: nobody cannot reach the socket ({r})");
        return;
    }
    assert!(
        r.starts_with("err") && r.contains("uid 65534 may not use"),
        "{r}"
    );
}

/// True when every thread of `pid` is in state T (stopped), per /proc.
fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            // The state follows the command name, which is in parentheses.
            .is_ok_and(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            })
    })
}

/// SIGSTOP the daemon: a client call returns an error after its socket timeout
/// instead of hanging the database server; after SIGCONT a reconnect works and the
/// generation is unchanged (same daemon, state intact).
#[test]
fn stopped_daemon_costs_a_bounded_wait_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    family(&d, 1, &[10, 11]);
    let mut source = client(&d, 10);
    let mut replica = client(&d, 11);
    source.ok("register 2 2 0 9");
    let pid = d.pid() as i32;
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    // kill returns before every thread has stopped; a request sent now could still
    // be answered. Wait until the kernel reports each thread stopped.
    d.wait_for("every daemon thread to stop", |_| all_threads_stopped(pid));
    let e = replica.cmd("lookup 2 2 9");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    assert!(e.starts_with("err") && e.contains("reading a reply"), "{e}");
    assert_eq!(
        replica.ok("reconnect"),
        format!("ok changed=false gen={}", d.generation)
    );
    assert_eq!(
        replica.cmd("lookup 2 2 9"),
        "hit owner=10 offset=0 lsn=9 valid_from=max"
    );
}

/// A process that connects and says nothing is dropped after --unbound-timeout-ms;
/// a bound agent may stay idle for longer.
#[test]
fn silent_unbound_connections_are_dropped_but_bound_ones_may_idle() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &["--unbound-timeout-ms", "200"]);
    family(&d, 1, &[10]);
    let mut agent = client(&d, 10);
    let mut silent = UnixStream::connect(&d.socket).unwrap();
    silent.set_read_timeout(Some(common::WAIT)).unwrap();
    let mut rest = Vec::new();
    // Returns (EOF) only because the daemon closed the connection.
    assert_eq!(silent.read_to_end(&mut rest).unwrap(), 0);
    d.wait_for("the dropped connection to be counted", |d| {
        d.stats().connections == 1
    });
    // The agent has now been idle longer than the unbound timeout.
    agent.ok("register 1 1 0 1");
    assert_eq!(
        agent.cmd("lookup 1 1 1"),
        "hit owner=10 offset=0 lsn=1 valid_from=max"
    );
}
