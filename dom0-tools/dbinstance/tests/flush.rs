//! The pre-clone flush, on a real server.

use dbinstance::flush_dirty_pages;
use experiments_support::testing::InstanceGuard;
use std::time::Duration;

/// A source whose buffer pool holds a freshly inserted table, not yet written.
fn with_dirty_pages(name: &str, server_id: u32) -> InstanceGuard {
    let src = InstanceGuard::source(name, server_id).unwrap();
    src.exec("CREATE DATABASE d").unwrap();
    src.exec("CREATE TABLE d.t (id INT PRIMARY KEY, v CHAR(200)) ENGINE=InnoDB")
        .unwrap();
    src.exec("INSERT INTO d.t SELECT seq, REPEAT('x', 200) FROM d.seq_1_to_20000")
        .unwrap();
    src
}

#[test]
fn flush_cleans_the_buffer_pool_and_restores_the_settings() {
    let src = with_dirty_pages("flush", 33);
    let before: Vec<(String, Option<String>)> = [
        "innodb_max_dirty_pages_pct",
        "innodb_io_capacity",
        "innodb_io_capacity_max",
    ]
    .iter()
    .map(|v| {
        (
            v.to_string(),
            src.query_scalar::<String>(&format!("SELECT @@GLOBAL.{v}"))
                .unwrap(),
        )
    })
    .collect();
    let r = flush_dirty_pages(&src, 16, Duration::from_secs(60)).unwrap();
    assert!(
        r.dirty_before > 16,
        "the insert left few dirty pages: {r:?}"
    );
    assert!(r.dirty_after <= 16, "{r:?}");
    for (v, old) in before {
        let now = src
            .query_scalar::<String>(&format!("SELECT @@GLOBAL.{v}"))
            .unwrap();
        assert_eq!(now, old, "{v} not restored");
    }
}

/// A server taking writes is not flushed: the load keeps dirtying pages, and on a slow
/// disk the flush's page writes would queue its commits behind them. Its settings are
/// not touched.
#[test]
fn a_server_taking_writes_is_not_flushed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let src = with_dirty_pages("flushbusy", 34);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                src.exec(&format!(
                    "UPDATE d.t SET v = REPEAT('{}', 200) WHERE id BETWEEN {} AND {}",
                    n % 10,
                    (n * 37) % 19_000,
                    (n * 37) % 19_000 + 50
                ))
                .unwrap();
            }
            n
        });
        let r = flush_dirty_pages(&src, 16, Duration::from_secs(60));
        stop.store(true, Ordering::Release);
        let updates = writer.join().unwrap();
        let r = r.unwrap();
        assert!(r.dirty_before > 16, "{r:?}");
        assert!(
            r.skipped_while_writing.is_some_and(|b| b > 0),
            "flushed during {updates} updates: {r:?}"
        );
    });
    let pct: Option<String> = src
        .query_scalar("SELECT @@GLOBAL.innodb_max_dirty_pages_pct")
        .unwrap();
    assert_ne!(pct.as_deref(), Some("0.000000"), "{pct:?}");
}
