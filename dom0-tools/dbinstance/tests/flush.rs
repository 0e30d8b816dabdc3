//! The pre-clone flush, on a real server.

use dbinstance::flush_dirty_pages;
use experiments_support::testing::InstanceGuard;
use std::time::Duration;

#[test]
fn flush_cleans_the_buffer_pool_and_restores_the_settings() {
    let src = InstanceGuard::source("flush", 33).unwrap();
    src.exec("CREATE DATABASE d").unwrap();
    src.exec("CREATE TABLE d.t (id INT PRIMARY KEY, v CHAR(200)) ENGINE=InnoDB")
        .unwrap();
    src.exec("INSERT INTO d.t SELECT seq, REPEAT('x', 200) FROM d.seq_1_to_20000")
        .unwrap();
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
