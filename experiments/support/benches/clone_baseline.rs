//! The DBMS-native baseline and the consistent point's cost, on real servers.
//!
//! cargo bench -p experiments-support --bench clone_baseline
//! Env: DBI_BENCH_SIZES="4x10000,4x100000" (tables x rows per table),
//!      DBI_BENCH_POOL_MB=128, DBI_BENCH_SECS=10 (load duration per phase).
//! Prints one JSON line per measurement.

use std::time::{Duration, Instant};

use dbinstance::{wait_caught_up, ConsistentPoint};
use experiments_support::native_clone;
use experiments_support::testing::{frozen_datadir_copy, test_config, test_launch, InstanceGuard};
use workload::sysbench::{self, SysbenchOptions};

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

fn du_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("du")
        .arg("-sb")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes --bench; there are no other arguments.
    let sizes = env_or("DBI_BENCH_SIZES", "4x10000,4x100000");
    let pool_mb: u64 = env_or("DBI_BENCH_POOL_MB", "128").parse().unwrap();
    let secs: u32 = env_or("DBI_BENCH_SECS", "10").parse().unwrap();
    for size in sizes.split(',') {
        let (t, r) = size.split_once('x').expect("TABLESxROWS");
        let (tables, rows): (u32, u64) = (t.parse().unwrap(), r.parse().unwrap());
        bench_size(tables, rows, pool_mb, secs);
    }
}

fn bench_size(tables: u32, rows: u64, pool_mb: u64, secs: u32) {
    let (mut cfg, dir) = test_config("bsrc", 1).unwrap();
    cfg.buffer_pool_size = pool_mb << 20;
    let src = InstanceGuard::init_and_start(cfg, dir).unwrap();
    let sb = SysbenchOptions {
        tables,
        table_size: rows,
        threads: 2,
        secs,
        report_interval: 1,
        ..SysbenchOptions::default()
    };
    sysbench::prepare(&src, &sb).unwrap();
    let data_bytes = du_bytes(&src.config().datadir);

    // Source throughput alone, then while a native clone runs.
    let alone = sysbench::run(&src, &sb).unwrap();
    let load = sysbench::start(&src, &sb).unwrap();
    let (rcfg, rdir) = test_config("brep", 2).unwrap();
    let clone = native_clone(&src, rcfg, &test_launch()).unwrap();
    let during = load.wait().unwrap();
    let replica = InstanceGuard::adopt(clone.instance, Some(rdir));
    wait_caught_up(&replica, &src, Duration::from_secs(300)).unwrap();
    println!(
        "{}",
        serde_json::json!({
            "bench": "native_clone", "tables": tables, "rows_per_table": rows,
            "datadir_bytes": data_bytes, "timings_ms": clone.timings,
            "source_ro_tps_alone": alone.tps, "source_ro_tps_during_clone": during.tps,
        })
    );
    drop(replica);

    // Consistent point under a write load: acquire and hold with nothing in between,
    // and with a frozen datadir copy (SIGSTOP + cp -a) standing in for the snapshot.
    let w = SysbenchOptions {
        test: "oltp_write_only".into(),
        report_interval: 0,
        ..sb.clone()
    };
    let load = sysbench::start(&src, &w).unwrap();
    let t_end = Instant::now() + Duration::from_secs(u64::from(secs) / 2);
    let (mut acq, mut held) = (Vec::new(), Vec::new());
    while Instant::now() < t_end {
        let cp = ConsistentPoint::begin(&src).unwrap();
        acq.push(cp.acquire_time().as_secs_f64() * 1000.0);
        held.push(cp.finish().unwrap());
    }
    let (ccfg, cdir) = test_config("bcopy", 3).unwrap();
    let cp = ConsistentPoint::begin(&src).unwrap();
    let frozen = frozen_datadir_copy(&src, &ccfg.datadir).unwrap();
    let copy_held = cp.finish().unwrap();
    drop(cdir);
    let wres = load.wait().unwrap();
    acq.sort_by(|a, b| a.partial_cmp(b).unwrap());
    held.sort();
    println!(
        "{}",
        serde_json::json!({
            "bench": "consistent_point_under_write_load", "tables": tables, "rows_per_table": rows,
            "cycles": acq.len(),
            "acquire_ms_median": acq[acq.len() / 2], "acquire_ms_max": acq[acq.len() - 1],
            "hold_ms_median_empty": held[held.len() / 2], "hold_ms_max_empty": held[held.len() - 1],
            "hold_ms_with_frozen_cp_copy": copy_held, "frozen_ms": frozen.as_millis() as u64,
            "write_tps": wres.tps,
        })
    );
}
