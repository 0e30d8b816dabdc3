//! sysbench against a real server: prepare, run, parsed figures.

use experiments_support::testing::InstanceGuard;
use workload::sysbench::{prepare, run, start, SysbenchOptions};

#[test]
fn prepare_and_run_read_only_and_write_only() {
    let src = InstanceGuard::source("sb", 61).unwrap();
    let opts = SysbenchOptions {
        tables: 2,
        table_size: 5000,
        threads: 2,
        secs: 3,
        report_interval: 1,
        ..SysbenchOptions::default()
    };
    prepare(&src, &opts).unwrap();
    let rows: i64 = src
        .query_scalar("SELECT COUNT(*) FROM sbtest.sbtest2")
        .unwrap()
        .unwrap();
    assert_eq!(rows, 5000);

    let r = run(&src, &opts).unwrap();
    assert!(r.transactions > 0 && r.tps > 0.0, "{r:?}");
    // oltp_read_only issues many queries per transaction.
    assert!(r.qps > r.tps, "{r:?}");
    assert!(r.latency_p95_ms > 0.0 && r.latency_p95_ms.is_finite());
    assert!(r.intervals.len() >= 2, "{r:?}");
    // Every interval reports the run's threads; the last one may end as they finish
    // (on a loaded machine sysbench reports it with fewer).
    let (last, rest) = r.intervals.split_last().unwrap();
    assert!(rest.iter().all(|i| i.threads == 2), "{r:?}");
    assert!(last.threads <= 2, "{r:?}");

    let before = src.gtid_binlog_pos().unwrap();
    let w = SysbenchOptions {
        test: "oltp_write_only".into(),
        secs: 2,
        report_interval: 0,
        ..opts.clone()
    };
    let r = start(&src, &w).unwrap().wait().unwrap();
    let after = src.gtid_binlog_pos().unwrap();
    let committed = after.get(0).unwrap().seq_no - before.get(0).map_or(0, |g| g.seq_no);
    assert_eq!(
        committed, r.transactions,
        "every sysbench transaction is one GTID"
    );
    assert!(r.intervals.is_empty());
}
