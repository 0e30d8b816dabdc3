//! Replicas made from real servers: the native mariadb-backup path, and the dbfork
//! path (consistent point + atomic datadir snapshot + crash recovery), both under a
//! concurrent write load; after catch-up, checksums and GTID positions match.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use dbinstance::sql::exec;
use dbinstance::{
    checksum_all_tables, configure_replica, replication_status, wait_caught_up, ConsistentPoint,
    Error, Instance, ReplicationSource,
};
use experiments_support::native_clone;
use experiments_support::testing::{
    frozen_datadir_copy, start, start_replica, test_config, test_launch, InstanceGuard,
};

const CATCH_UP: Duration = Duration::from_secs(60);

fn seed(src: &Instance) {
    src.exec("CREATE DATABASE app").unwrap();
    src.exec("CREATE TABLE app.accounts (id INT PRIMARY KEY, balance BIGINT, note VARCHAR(64)) ENGINE=InnoDB")
        .unwrap();
    src.exec("CREATE TABLE app.events (id BIGINT AUTO_INCREMENT PRIMARY KEY, account INT, amount INT) ENGINE=InnoDB")
        .unwrap();
    src.exec("CREATE TABLE app.tags (k VARCHAR(16) PRIMARY KEY, v INT) ENGINE=Aria")
        .unwrap();
    src.exec(
        "INSERT INTO app.accounts SELECT seq, seq * 10, CONCAT('acct-', seq) FROM mysql.seq_1_to_2000",
    )
    .unwrap();
    src.exec("INSERT INTO app.tags VALUES ('a',1),('b',2)")
        .unwrap();
}

/// Commits small transactions on the source until stopped; returns how many.
struct Writer {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(src: &Instance) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let mut c = src.conn().unwrap();
        let (s, d) = (stop.clone(), done.clone());
        let handle = std::thread::spawn(move || {
            let mut i: u64 = 0;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let acct = (i % 2000) + 1;
                exec(&mut c, "writer", "BEGIN").unwrap();
                exec(
                    &mut c,
                    "writer",
                    &format!("INSERT INTO app.events (account, amount) VALUES ({acct}, {i})"),
                )
                .unwrap();
                exec(
                    &mut c,
                    "writer",
                    &format!("UPDATE app.accounts SET balance = balance + {i} WHERE id = {acct}"),
                )
                .unwrap();
                exec(&mut c, "writer", "COMMIT").unwrap();
                d.fetch_add(1, Ordering::Relaxed);
            }
        });
        Writer {
            stop,
            done,
            handle: Some(handle),
        }
    }

    /// Waits (with a deadline) until at least `n` more transactions committed.
    fn wait_progress(&self, n: u64) {
        let target = self.done.load(Ordering::Relaxed) + n;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.done.load(Ordering::Relaxed) < target {
            assert!(
                std::time::Instant::now() < deadline,
                "writer made no progress"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap();
        self.done.load(Ordering::Relaxed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn assert_same_data(src: &Instance, replica: &Instance) {
    let a = checksum_all_tables(src, &["app", "mysql"]).unwrap();
    let b = checksum_all_tables(replica, &["app"]).unwrap();
    let a_app: std::collections::BTreeMap<_, _> = a
        .into_iter()
        .filter(|(k, _)| k.starts_with("app."))
        .collect();
    assert_eq!(a_app.len(), 3, "{a_app:?}");
    assert!(a_app.values().all(|v| v.is_some()));
    assert_eq!(a_app, b);
    let events: i64 = src
        .query_scalar("SELECT COUNT(*) FROM app.events")
        .unwrap()
        .unwrap();
    let events_r: i64 = replica
        .query_scalar("SELECT COUNT(*) FROM app.events")
        .unwrap()
        .unwrap();
    assert_eq!(events, events_r);
}

#[test]
fn native_clone_under_write_load_catches_up() {
    let src = InstanceGuard::source("nsrc", 31).unwrap();
    seed(&src);

    let (same_id, _d) = test_config("nsame", 31).unwrap();
    let err = native_clone(&src, same_id, &test_launch()).unwrap_err();
    assert!(
        matches!(err, substrate::Error::Db(Error::InvalidConfig(_))),
        "{err}"
    );

    // A failure after the copy (the new port is taken) leaves no half-made replica.
    let (busy, _busy_dir) = test_config("nbusy", 33).unwrap();
    let holder = std::net::TcpListener::bind(("127.0.0.1", busy.port)).unwrap();
    let err = native_clone(&src, busy.clone(), &test_launch()).unwrap_err();
    assert!(
        matches!(err, substrate::Error::Db(Error::PortInUse { .. })),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&busy.datadir).unwrap().count(),
        0,
        "datadir emptied"
    );
    assert!(!busy.run_dir.join("backup").exists());
    assert!(!Instance::open(busy).unwrap().is_running());
    drop(holder);

    let writer = Writer::start(&src);
    writer.wait_progress(20);
    let (cfg, dir) = test_config("nrep", 32).unwrap();
    let res = native_clone(&src, cfg.clone(), &test_launch());
    let n = match res {
        Ok(clone) => {
            let replica = InstanceGuard::adopt(clone.instance, Some(dir));
            writer.wait_progress(20);
            let n = writer.finish();
            assert!(n >= 40);
            assert!(!clone.gtid.is_empty());
            assert!(
                clone.timings.backup_ms > 0 && clone.timings.total_ms >= clone.timings.backup_ms
            );
            assert!(!cfg.run_dir.join("backup").exists(), "staging dir removed");

            src.exec("DELETE FROM app.accounts WHERE id <= 10").unwrap();
            src.exec("UPDATE app.tags SET v = v + 1").unwrap();
            let pos = wait_caught_up(&replica, &src, CATCH_UP).unwrap();
            assert_eq!(pos, src.gtid_binlog_pos().unwrap());
            assert_same_data(&src, &replica);

            let st = replication_status(&replica).unwrap().unwrap();
            assert_eq!(st.io_running, "Yes");
            assert!(st.sql_running);
            assert_eq!(st.master_port, src.config().port);
            assert_eq!(st.gtid_slave_pos, src.gtid_binlog_pos().unwrap());
            assert_eq!(
                replica.query_scalar::<i64>("SELECT @@read_only").unwrap(),
                Some(1)
            );
            assert_eq!(
                replica.query_scalar::<i64>("SELECT @@server_id").unwrap(),
                Some(32)
            );
            // log_slave_updates: the replica's own binlog carries the source's GTIDs.
            assert_eq!(
                replica.gtid_binlog_pos().unwrap(),
                src.gtid_binlog_pos().unwrap()
            );
            n
        }
        Err(e) => panic!("native clone failed: {e}"),
    };
    assert!(n > 0);
}

#[test]
fn snapshot_clone_under_write_load_and_clone_of_clone() {
    let src = InstanceGuard::source("ssrc", 41).unwrap();
    seed(&src);
    let writer = Writer::start(&src);
    writer.wait_progress(20);

    // The dbfork path: hold commits, snapshot, release.
    let (cfg, dir) = test_config("srep", 42).unwrap();
    let cp = ConsistentPoint::begin(&src).unwrap();
    let gtid = cp.gtid().clone();
    frozen_datadir_copy(&src, &cfg.datadir).unwrap();
    let held_ms = cp.finish().unwrap();
    eprintln!("commits held for {held_ms} ms at {gtid}");
    writer.wait_progress(20);

    let replica = Instance::open(cfg).unwrap();
    replica.adopt_repl_secret(src.config()).unwrap();
    let replica = InstanceGuard::adopt(replica, Some(dir));
    start(&replica).unwrap();
    // The snapshot carries the source's binlog up to exactly the held position.
    assert_eq!(replica.gtid_binlog_pos().unwrap(), gtid);

    let mut bad = ReplicationSource::of(&src).unwrap();
    bad.password.push('x');
    let err = configure_replica(&replica, &bad, &gtid).unwrap_err();
    assert!(
        err.to_string().contains("connect to replication source"),
        "{err}"
    );

    configure_replica(&replica, &ReplicationSource::of(&src).unwrap(), &gtid).unwrap();
    writer.wait_progress(20);
    writer.finish();
    wait_caught_up(&replica, &src, CATCH_UP).unwrap();
    assert_same_data(&src, &replica);
    assert_eq!(
        replica.gtid_slave_pos().unwrap(),
        src.gtid_binlog_pos().unwrap()
    );

    // A clone of the clone, replicating from the clone (chained).
    let (cfg2, dir2) = test_config("srep2", 43).unwrap();
    let cp = ConsistentPoint::begin(&replica).unwrap();
    let gtid2 = cp.gtid().clone();
    frozen_datadir_copy(&replica, &cfg2.datadir).unwrap();
    cp.finish().unwrap();
    let mut same_id = cfg2.clone();
    same_id.server_id = replica.config().server_id;
    let err = start_replica(&replica, same_id, &gtid2).unwrap_err();
    assert!(
        matches!(err, substrate::Error::Db(Error::InvalidConfig(_))),
        "{err}"
    );
    let (grand, t) = start_replica(&replica, cfg2, &gtid2).unwrap();
    let grand = InstanceGuard::adopt(grand, Some(dir2));
    eprintln!(
        "clone of clone: start {} ms, configure {} ms",
        t.start_ms, t.configure_ms
    );
    src.exec("INSERT INTO app.accounts VALUES (5001, 1, 'after-chain')")
        .unwrap();
    wait_caught_up(&replica, &src, CATCH_UP).unwrap();
    wait_caught_up(&grand, &replica, CATCH_UP).unwrap();
    assert_same_data(&src, &grand);
    let st = replication_status(&grand).unwrap().unwrap();
    assert_eq!(st.master_port, replica.config().port);
}
