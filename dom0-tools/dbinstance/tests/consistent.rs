//! BACKUP STAGE BLOCK_COMMIT holds commits on a real server, and always lets go.

use dbinstance::sql::exec;
use dbinstance::{ConsistentPoint, Error, GtidPos, Instance};
use experiments_support::testing::{
    test_config, wait_for_backup_lock as wait_for_blocked, InstanceGuard,
};

fn count(src: &Instance) -> i64 {
    src.query_scalar("SELECT COUNT(*) FROM d.t")
        .unwrap()
        .unwrap()
}

#[test]
fn block_commit_holds_concurrent_insert_and_records_position() {
    let src = InstanceGuard::source("cp", 21).unwrap();
    src.exec("CREATE DATABASE d").unwrap();
    src.exec("CREATE TABLE d.t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB")
        .unwrap();
    src.exec("INSERT INTO d.t VALUES (1,'a'),(2,'b')").unwrap();
    let before = src.gtid_binlog_pos().unwrap();

    let cp = ConsistentPoint::begin(&src).unwrap();
    assert_eq!(
        cp.gtid(),
        &before,
        "position read under the hold is the source's position"
    );
    let lsn = cp.lsn();
    assert!(lsn > 0);

    let mut writer = src.conn().unwrap();
    let inserter = std::thread::spawn(move || {
        exec(&mut writer, "w", "SET SESSION lock_wait_timeout = 60").unwrap();
        exec(&mut writer, "w", "INSERT INTO d.t VALUES (3,'held')")
    });
    let state = wait_for_blocked(&src, "INSERT INTO d.t VALUES (3");
    assert!(state.to_lowercase().contains("backup lock"), "{state}");
    assert_eq!(count(&src), 2, "a held commit is not visible");
    assert_eq!(
        src.gtid_binlog_pos().unwrap(),
        before,
        "nothing reached the binlog while held"
    );
    assert!(!inserter.is_finished());

    let held_ms = cp.finish().unwrap();
    inserter.join().unwrap().unwrap();
    let lsn_after = dbinstance::consistent::innodb_lsn(&mut src.conn().unwrap(), "t").unwrap();
    assert!(
        lsn_after > lsn,
        "the released insert wrote redo after the point"
    );
    assert!(
        held_ms >= 1,
        "the hold lasted at least as long as we watched it"
    );
    assert_eq!(count(&src), 3);
    let after = src.gtid_binlog_pos().unwrap();
    assert!(after.covers(&before) && after != before);
    assert_eq!(
        after.get(0).unwrap().seq_no,
        before.get(0).unwrap().seq_no + 1
    );
}

#[test]
fn drop_releases_the_hold_and_no_binlog_is_refused() {
    let src = InstanceGuard::source("cpdrop", 22).unwrap();
    src.exec("CREATE DATABASE d").unwrap();
    src.exec("CREATE TABLE d.t (id INT PRIMARY KEY) ENGINE=InnoDB")
        .unwrap();
    {
        let cp = ConsistentPoint::begin(&src).unwrap();
        assert_eq!(cp.gtid(), &GtidPos::parse("0-22-2").unwrap());
        // Dropped without finish, as on an error path of a clone.
    }
    let mut c = src.conn().unwrap();
    exec(&mut c, "t", "SET SESSION lock_wait_timeout = 10").unwrap();
    exec(&mut c, "t", "INSERT INTO d.t VALUES (1)").unwrap();
    assert_eq!(count(&src), 1);

    // Two points in a row on the same source both work.
    let cp = ConsistentPoint::begin(&src).unwrap();
    assert_eq!(cp.gtid(), &GtidPos::parse("0-22-3").unwrap());
    cp.finish().unwrap();

    let (mut cfg, dir) = test_config("cpnobin", 23).unwrap();
    cfg.binlog = false;
    let nobin = InstanceGuard::init_and_start(cfg, dir).unwrap();
    let err = ConsistentPoint::begin(&nobin).err().unwrap();
    assert!(matches!(err, Error::NoBinlog(_)), "{err}");
}
