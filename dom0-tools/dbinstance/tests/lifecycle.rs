//! Real mariadbd processes: init, start (as the local substrate starts them), stop,
//! kill, refusals.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use dbinstance::{Error, GtidPos, Instance};
use experiments_support::testing::{start, test_config, test_launch, InstanceGuard};
use substrate::local::server::{self, Launch};

#[test]
fn init_start_query_stop_restart() {
    let mut src = InstanceGuard::source("life", 11).unwrap();
    assert!(src.is_running());
    let v: String = src.query_scalar("SELECT VERSION()").unwrap().unwrap();
    assert!(v.contains("MariaDB"), "{v}");
    assert_eq!(
        src.query_scalar::<i64>("SELECT @@server_id").unwrap(),
        Some(11)
    );
    assert_eq!(
        src.query_scalar::<i64>("SELECT @@innodb_use_native_aio")
            .unwrap(),
        Some(0)
    );
    assert!(src.has_binlog().unwrap());
    assert!(src.gtid_binlog_pos().unwrap().is_empty());

    src.exec("CREATE DATABASE d").unwrap();
    src.exec("CREATE TABLE d.t (id INT PRIMARY KEY) ENGINE=InnoDB")
        .unwrap();
    src.exec("INSERT INTO d.t VALUES (1),(2)").unwrap();
    let pos = src.gtid_binlog_pos().unwrap();
    assert_eq!(pos, GtidPos::parse("0-11-3").unwrap());
    assert_eq!(src.gtid_current_pos().unwrap(), pos);

    // The replication secret is private and the account works over TCP.
    let secret = src.config().repl_secret_path();
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let creds = src.repl_credentials().unwrap();
    let mut c = src.conn_tcp(&creds.user, &creds.password).unwrap();
    assert_eq!(
        dbinstance::sql::scalar::<String>(&mut c, "t", "SELECT CURRENT_USER()")
            .unwrap()
            .unwrap(),
        "dbfork_repl@%"
    );
    assert!(src.conn_tcp(&creds.user, "wrong").is_err());

    let pid = src.pid().unwrap();
    src.stop().unwrap();
    assert!(!src.is_running());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    src.stop().unwrap(); // idempotent

    src.restart().unwrap();
    assert_eq!(
        src.query_scalar::<i64>("SELECT COUNT(*) FROM d.t").unwrap(),
        Some(2)
    );
    assert_eq!(src.gtid_binlog_pos().unwrap(), pos);
}

#[test]
fn kill_then_restart_recovers() {
    let mut src = InstanceGuard::source("kill", 12).unwrap();
    src.exec("CREATE DATABASE d").unwrap();
    src.exec("CREATE TABLE d.t (id INT PRIMARY KEY) ENGINE=InnoDB")
        .unwrap();
    src.exec("INSERT INTO d.t VALUES (1),(2),(3)").unwrap();
    src.kill().unwrap();
    assert!(!src.is_running());
    assert!(src.conn().is_err());
    src.restart().unwrap();
    assert_eq!(
        src.query_scalar::<i64>("SELECT COUNT(*) FROM d.t").unwrap(),
        Some(3)
    );
}

#[test]
fn refuses_port_in_use_before_start() {
    let (cfg, dir) = test_config("port", 13).unwrap();
    let holder = TcpListener::bind(("127.0.0.1", cfg.port)).unwrap();
    let port = cfg.port;
    let inst = Instance::init(cfg).unwrap();
    let g = InstanceGuard::adopt(inst, Some(dir));
    let err = start(&g).unwrap_err();
    assert!(
        matches!(err, substrate::Error::Db(Error::PortInUse { port: p, .. }) if p == port),
        "{err}"
    );
    assert!(err.to_string().contains(&format!("port {port}")), "{err}");
    assert!(!g.is_running());
    drop(holder);
    start(&g).unwrap();
}

#[test]
fn refuses_datadir_of_live_server_and_double_start() {
    let src = InstanceGuard::source("busy", 14).unwrap();
    let err = start(&src).unwrap_err();
    assert!(
        matches!(err, substrate::Error::Db(Error::AlreadyRunning(_))),
        "{err}"
    );

    // A second config (other run dir, other port) pointing at the same datadir.
    let (mut other, other_dir) = test_config("busy2", 15).unwrap();
    other.datadir = src.config().datadir.clone();
    let intruder = InstanceGuard::adopt(Instance::open(other).unwrap(), Some(other_dir));
    let err = start(&intruder).unwrap_err();
    match &err {
        substrate::Error::Db(Error::DatadirInUse { pid, .. }) => assert_eq!(Some(*pid), src.pid()),
        _ => panic!("expected DatadirInUse, got {err}"),
    }
    assert!(!intruder.is_running());
    assert!(src.is_running());
}

#[test]
fn init_refuses_non_empty_datadir_and_start_needs_init() {
    let (cfg, _dir) = test_config("full", 16).unwrap();
    std::fs::create_dir_all(&cfg.datadir).unwrap();
    std::fs::write(cfg.datadir.join("junk"), b"x").unwrap();
    let err = Instance::init(cfg.clone()).unwrap_err();
    assert!(matches!(err, Error::DatadirNotEmpty(_)), "{err}");

    let mut empty = cfg.clone();
    empty.datadir = cfg.run_dir.join("empty");
    std::fs::create_dir_all(&empty.datadir).unwrap();
    let err = start(&Instance::open(empty).unwrap()).unwrap_err();
    assert!(
        matches!(err, substrate::Error::Db(Error::DatadirNotInitialised(_))),
        "{err}"
    );
}

#[test]
fn startup_failure_carries_log_tail() {
    let (mut cfg, dir) = test_config("badopt", 17).unwrap();
    let inst = Instance::init(cfg.clone()).unwrap();
    drop(inst);
    cfg.extra.insert("innodb_no_such_option".into(), "1".into());
    let g = InstanceGuard::adopt(Instance::open(cfg).unwrap(), Some(dir));
    let err = start(&g).unwrap_err();
    assert!(
        matches!(err, substrate::Error::Db(Error::StartupExited { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("innodb_no_such_option")
            || err.to_string().contains("unknown variable"),
        "{err}"
    );
}

#[test]
fn source_without_binlog_is_reported() {
    let (mut cfg, dir) = test_config("nobin", 18).unwrap();
    cfg.binlog = false;
    let src = InstanceGuard::init_and_start(cfg, dir).unwrap();
    assert!(!src.has_binlog().unwrap());
    let err = src.require_binlog().unwrap_err();
    assert!(matches!(err, Error::NoBinlog(_)), "{err}");
    assert!(err.to_string().contains("no binary log"));
}

/// The CLI's case: one process starts the server, a later one (no child handle)
/// finds it through the pid file, stops it, and starts it again.
#[test]
fn another_handle_adopts_stops_and_restarts_via_pid_file() {
    let src = InstanceGuard::source("adopt", 19).unwrap();
    let pid = src.pid().unwrap();
    let mut other = Instance::open(src.config().clone()).unwrap();
    assert!(other.is_running());
    assert_eq!(other.pid(), Some(pid));
    assert_eq!(
        other.query_scalar::<i64>("SELECT @@server_id").unwrap(),
        Some(19)
    );
    other.stop().unwrap();
    assert!(!other.is_running());
    assert!(!src.is_running());
    start(&other).unwrap();
    assert!(
        src.is_running(),
        "the guard sees the new process through the pid file"
    );
    assert_ne!(src.pid(), Some(pid));
    // A stale pid file naming some unrelated live process is not taken as the server.
    other.kill().unwrap();
    std::fs::write(src.config().pid_file(), format!("{}\n", std::process::id())).unwrap();
    assert!(!src.is_running());
}

/// A server that stops answering (SIGSTOP) makes status reads fail with an error that
/// names it, instead of hanging the caller (`dbfork status`, a catch-up wait); once it
/// runs again the same reads work.
#[test]
fn status_reads_of_a_stopped_server_fail_clearly_instead_of_hanging() {
    let src = InstanceGuard::source("stopped", 15).unwrap();
    let pid = src.pid().unwrap();
    // SAFETY: plain kill(2) on the test's own child server.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let e = dbinstance::replication_status(&src).unwrap_err();
    // SAFETY: as above; resumes it whatever the assertions below do.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(matches!(e, dbinstance::Error::Unresponsive { .. }), "{e:?}");
    assert!(e.to_string().contains("stopped"), "{e}");
    assert!(dbinstance::replication_status(&src).unwrap().is_none());
}

/// A server that is not up within the start timeout is stopped before the error
/// returns: the caller unwinds (unmount, delete) and must not find it still running.
#[test]
fn a_start_that_times_out_leaves_no_server_running() {
    let (cfg, _dir) = experiments_support::testing::test_config("slowstart", 16).unwrap();
    let inst = Instance::init(cfg.clone()).unwrap();
    let opts = Launch {
        timeout: Duration::from_millis(1),
        ..test_launch()
    };
    let e = server::launch(&inst, &opts).unwrap_err();
    assert!(
        matches!(
            e,
            substrate::Error::Db(dbinstance::Error::StartupTimeout { .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("was stopped"), "{e}");
    let cnf = cfg.cnf_path().display().to_string();
    let running: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&cnf))
        .collect();
    assert!(running.is_empty(), "still running: {running:?}");
    assert!(!inst.is_running());
}
