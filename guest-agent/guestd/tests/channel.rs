//! dom0's endpoint talking to a guest side over a real socket, against real MariaDB
//! servers: the consistent point holds commits until released (and until the channel
//! closes, whatever dom0 did), the warm set and durability are read, replication is set
//! up and reported through the channel, and garbage on the channel gets an error while
//! the guest side keeps serving.

use dbinstance::sql::exec;
use dbinstance::Instance;
use experiments_support::testing::{wait_for_backup_lock, InstanceGuard};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;
use substrate::xen::guest::GuestEndpoint;
use substrate::Endpoint;

/// A guest side for `inst` on a socket in `dir`, serving every connection.
fn guest_side(inst: &Instance, dir: &Path) -> PathBuf {
    let socket = dir.join("guest.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let inst = Instance::open(inst.config().clone()).unwrap();
    std::thread::spawn(move || {
        let inst = std::sync::Arc::new(inst);
        for conn in listener.incoming() {
            let inst = inst.clone();
            std::thread::spawn(move || {
                let _ = dbfork_guestd::serve(conn.unwrap(), &inst, None);
            });
        }
    });
    socket
}

fn insert_later(
    src: &Instance,
    sql: &'static str,
) -> std::thread::JoinHandle<dbinstance::Result<()>> {
    let mut c = src.conn().unwrap();
    std::thread::spawn(move || {
        exec(&mut c, "w", "SET SESSION lock_wait_timeout = 60")?;
        exec(&mut c, "w", sql)
    })
}

fn raw_call(r: &mut BufReader<UnixStream>, line: &[u8]) -> serde_json::Value {
    r.get_mut().write_all(line).unwrap();
    let mut reply = String::new();
    r.read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

#[test]
fn dom0_reaches_a_guests_database_only_through_its_channel() {
    let src = InstanceGuard::source("gsrc", 31).unwrap();
    src.exec("CREATE DATABASE d").unwrap();
    src.exec("CREATE TABLE d.t (id INT PRIMARY KEY) ENGINE=InnoDB")
        .unwrap();
    src.exec("INSERT INTO d.t VALUES (1),(2)").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = guest_side(&src, dir.path());
    let ep = GuestEndpoint::connect("gsrc", &socket).unwrap();

    ep.require_binlog().unwrap();
    assert_eq!(ep.redo_flush_at_commit().unwrap(), 1);
    let warm = ep.warm_set().unwrap();
    assert!(!warm.hot.is_empty() && !warm.spaces.is_empty());
    assert!(
        warm.spaces.values().any(|t| t.name == "d/t"),
        "{:?}",
        warm.spaces
    );
    ep.rotate_binlog().unwrap();
    assert_eq!(ep.replication_status().unwrap(), None);

    // What the server and the guest use of memory.
    let m = ep.memory_use().unwrap();
    let server = m.server.expect("the server's memory");
    assert!(
        server.pss_kib > 0 && server.pss_kib <= server.rss_kib,
        "{m:?}"
    );
    assert!(m.domain.expect("the guest's memory").available_kib > 0);
    // A server without a page-sharing agent: agent requests are refused with why,
    // and it has no counters.
    let e = substrate::error::chain(&ep.publish_clone_lsn(5).unwrap_err());
    assert!(e.contains("without a page-sharing agent"), "{e}");
    assert_eq!(ep.agent_counters().unwrap(), None);

    // The consistent point: commits wait while held, go on when released.
    let hold = ep.hold_commits().unwrap();
    assert_eq!(hold.gtid(), &src.gtid_binlog_pos().unwrap());
    assert!(hold.lsn() > 0);
    let ins = insert_later(&src, "INSERT INTO d.t VALUES (3)");
    wait_for_backup_lock(&src, "INSERT INTO d.t VALUES (3");
    hold.release().unwrap();
    ins.join().unwrap().unwrap();

    // A dom0 that goes away holding commits: the guest lets them go.
    {
        let mut raw = BufReader::new(UnixStream::connect(&socket).unwrap());
        let r = raw_call(&mut raw, b"{\"op\":\"hello\",\"version\":1}\n");
        assert_eq!(r["result"], "hello");
        let r = raw_call(&mut raw, b"{\"op\":\"hold_commits\"}\n");
        assert_eq!(r["result"], "held", "{r}");
        let ins = insert_later(&src, "INSERT INTO d.t VALUES (4)");
        wait_for_backup_lock(&src, "INSERT INTO d.t VALUES (4");
        drop(raw);
        ins.join().unwrap().unwrap();
    }

    // Garbage is answered with an error, and the channel goes on serving.
    {
        let mut raw = BufReader::new(UnixStream::connect(&socket).unwrap());
        for bad in [
            &b"garbage\n"[..],
            b"{\"op\":\"drop_database\"}\n",
            b"{\"op\":\"flush_dirty_pages\",\"target\":-1,\"timeout_ms\":1}\n",
            b"{\"op\":\"release_commits\"}\n",
        ] {
            let r = raw_call(&mut raw, bad);
            assert_eq!(r["result"], "error", "{r}");
        }
        let mut huge = vec![b'x'; guest_channel::MAX_REQUEST + 10];
        huge.push(b'\n');
        raw.get_mut().write_all(&huge).unwrap();
        raw.get_mut()
            .write_all(b"{\"op\":\"hello\",\"version\":1}\n")
            .unwrap();
        let mut answers = Vec::new();
        while answers
            .last()
            .map(|a: &serde_json::Value| a["result"] != "hello")
            .unwrap_or(true)
        {
            let mut line = String::new();
            raw.read_line(&mut line).unwrap();
            answers.push(serde_json::from_str(&line).unwrap());
            assert!(answers.len() <= 3, "{answers:?}");
        }
        assert_eq!(answers[0]["result"], "error");
    }

    // A replica set up and watched through its own channel.
    let rep = InstanceGuard::source("grep", 32).unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let rep_ep = GuestEndpoint::connect("grep", &guest_side(&rep, rdir.path())).unwrap();
    let source = ep.replication_source().unwrap();
    rep_ep
        .replicate_from(&source, &src.gtid_binlog_pos().unwrap())
        .unwrap();
    src.exec("CREATE DATABASE e").unwrap();
    src.exec("CREATE TABLE e.t (id INT PRIMARY KEY) ENGINE=InnoDB")
        .unwrap();
    src.exec("INSERT INTO e.t VALUES (1),(2),(3)").unwrap();
    dbinstance::wait_caught_up(&rep, &src, Duration::from_secs(60)).unwrap();
    let n: Option<i64> = rep.query_scalar("SELECT COUNT(*) FROM e.t").unwrap();
    assert_eq!(n, Some(3));
    let st = rep_ep.replication_status().unwrap().expect("a replica");
    assert!(st.sql_running && st.broken().is_none(), "{st:?}");
    rep_ep
        .resume_replication(&source.host, source.port, true)
        .unwrap();
}

/// An ext4 file system in a loop image, mounted; taken apart on drop (thawed first: a
/// frozen file system cannot be unmounted).
struct LoopFs {
    mnt: PathBuf,
    dev: String,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    fn new() -> Option<LoopFs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: mounting a file system needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(512 << 20)
            .unwrap();
        let run = |cmd: &str, args: &[&str]| {
            let out = std::process::Command::new(cmd).args(args).output().unwrap();
            assert!(
                out.status.success(),
                "{cmd} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        run("mkfs.ext4", &["-q", "-F", img.to_str().unwrap()]);
        let dev = run("losetup", &["--find", "--show", img.to_str().unwrap()]);
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let fs = LoopFs {
            mnt,
            dev,
            _dir: dir,
        };
        run("mount", &[&fs.dev, fs.mnt.to_str().unwrap()]);
        Some(fs)
    }
    /// Whether it is frozen now: a second freeze of a frozen file system is refused.
    fn frozen(&self) -> bool {
        let st = std::process::Command::new("fsfreeze")
            .args(["-f", self.mnt.to_str().unwrap()])
            .output()
            .unwrap();
        if st.status.success() {
            let _ = std::process::Command::new("fsfreeze")
                .args(["-u", self.mnt.to_str().unwrap()])
                .status();
            false
        } else {
            true
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let m = self.mnt.to_str().unwrap().to_string();
        let _ = std::process::Command::new("fsfreeze")
            .args(["-u", &m])
            .status();
        let _ = std::process::Command::new("umount").arg(&m).status();
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.dev])
            .status();
    }
}

#[test]
fn the_guest_freezes_its_datadirs_file_system_until_thawed_or_gone() {
    let Some(fs) = LoopFs::new() else { return };
    let (mut cfg, dir) = experiments_support::testing::test_config("gfz", 33).unwrap();
    cfg.datadir = fs.mnt.join("data");
    let db = InstanceGuard::init_and_start(cfg, dir).unwrap();
    let sdir = tempfile::tempdir().unwrap();
    let socket = guest_side(&db, sdir.path());
    let ep = GuestEndpoint::connect("gfz", &socket).unwrap();

    assert!(!fs.frozen());
    let freeze = ep.freeze_fs().unwrap();
    assert_eq!(
        Path::new(&freeze.mountpoint),
        fs.mnt.canonicalize().unwrap()
    );
    assert!(fs.frozen(), "the datadir's file system is not frozen");
    // A second freeze on the same channel is refused, the first stays.
    assert!(ep.freeze_fs().is_err());
    assert!(fs.frozen());
    drop(freeze);
    assert!(!fs.frozen(), "thaw did not thaw");

    // A dom0 that goes away with the file system frozen: the guest thaws it.
    let mut raw = BufReader::new(UnixStream::connect(&socket).unwrap());
    assert_eq!(
        raw_call(&mut raw, b"{\"op\":\"hello\",\"version\":1}\n")["result"],
        "hello"
    );
    let r = raw_call(&mut raw, b"{\"op\":\"freeze_fs\"}\n");
    assert_eq!(r["result"], "frozen", "{r}");
    assert!(fs.frozen());
    drop(raw);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fs.frozen() {
        assert!(
            std::time::Instant::now() < deadline,
            "still frozen after dom0 left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The server is fine: it writes again.
    db.exec("CREATE DATABASE after_thaw").unwrap();
}
