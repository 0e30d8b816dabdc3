//! The pid gate (`StartOptions::before_run`) and the pre-clone flush, on real servers.

use dbinstance::{flush_dirty_pages, Instance, PidHook};
use experiments_support::testing::{test_config, test_start_options, InstanceGuard};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn the_hook_sees_the_servers_own_pid_before_it_runs() {
    let (mut cfg, dir) = test_config("gate", 31).unwrap();
    // The preload must reach mariadbd through the gate, not the gate's shell: a library
    // that reports which process loaded it (libc's own is harmless and always there).
    cfg.preload = vec!["/lib/x86_64-linux-gnu/libc.so.6".into()];
    let inst = Instance::init(cfg.clone()).unwrap();
    drop(inst);
    let seen = Arc::new(Mutex::new(None));
    let mut opts = test_start_options();
    {
        let seen = seen.clone();
        opts.before_run = Some(PidHook(Arc::new(move |pid| {
            // The process exists and is still the gate (no server socket yet).
            let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
            *seen.lock().unwrap() = Some((pid, cmd));
            Ok(())
        })));
    }
    let mut inst = Instance::open(cfg).unwrap();
    inst.start_with(&opts).unwrap();
    let guard = InstanceGuard::adopt(inst, Some(dir));
    let (pid, cmd) = seen.lock().unwrap().clone().unwrap();
    assert!(cmd.starts_with("/bin/sh"), "hook ran after exec: {cmd:?}");
    assert_eq!(guard.pid(), Some(pid as i32), "exec must keep the pid");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.contains("LD_PRELOAD=/lib/x86_64-linux-gnu/libc.so.6"),
        "{environ}"
    );
    assert!(!environ.contains("DBFORK_GATE_PRELOAD"), "{environ}");
    assert_eq!(guard.query_scalar::<i64>("SELECT 1").unwrap(), Some(1));
}

#[test]
fn a_failing_hook_leaves_no_server() {
    let (cfg, dir) = test_config("gatefail", 32).unwrap();
    drop(Instance::init(cfg.clone()).unwrap());
    let mut opts = test_start_options();
    opts.before_run = Some(PidHook(Arc::new(|_| Err("page table unreachable".into()))));
    let mut inst = Instance::open(cfg).unwrap();
    let err = inst.start_with(&opts).unwrap_err();
    assert!(err.to_string().contains("page table unreachable"), "{err}");
    assert!(!inst.is_running());
    // And it starts fine without the hook afterwards.
    inst.start_with(&test_start_options()).unwrap();
    let _guard = InstanceGuard::adopt(inst, Some(dir));
}

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
