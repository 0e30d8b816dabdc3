//! The start gate of a local server (`Launch::before_run`, `Launch::preload`), on real
//! servers.

use dbinstance::Instance;
use experiments_support::testing::{start, test_config, test_launch, InstanceGuard};
use std::path::Path;
use std::sync::Mutex;
use substrate::local::server::{launch, Launch};

#[test]
fn the_hook_sees_the_servers_own_pid_before_it_runs() {
    let (cfg, dir) = test_config("gate", 31).unwrap();
    let inst = Instance::init(cfg.clone()).unwrap();
    drop(inst);
    let seen = Mutex::new(None);
    let hook = |pid: u32| {
        // The process exists and is still the gate (no server socket yet). Its
        // executable, not its cmdline: spawn may return while the exec is still laying
        // out the new arguments (a vfork parent wakes once the old memory is released,
        // and the exe link is set before that), so cmdline can read empty here.
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        *seen.lock().unwrap() = Some((pid, exe));
        Ok(())
    };
    let opts = Launch {
        // The preload must reach mariadbd through the gate, not the gate's shell: a
        // library that reports which process loaded it (libc's own is harmless and
        // always there).
        preload: Some(Path::new("/lib/x86_64-linux-gnu/libc.so.6")),
        before_run: Some(&hook),
        ..test_launch()
    };
    let inst = Instance::open(cfg).unwrap();
    launch(&inst, &opts).unwrap();
    let guard = InstanceGuard::adopt(inst, Some(dir));
    let (pid, exe) = seen.lock().unwrap().clone().unwrap();
    let shell = std::fs::canonicalize("/bin/sh").unwrap();
    assert_eq!(exe, shell, "hook ran after the exec of the server");
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
    let hook = |_| Err("page table unreachable".into());
    let opts = Launch {
        before_run: Some(&hook),
        ..test_launch()
    };
    let inst = Instance::open(cfg).unwrap();
    let err = launch(&inst, &opts).unwrap_err();
    let chain = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    assert!(chain.contains("page table unreachable"), "{chain}");
    assert!(!inst.is_running());
    // And it starts fine without the hook afterwards.
    start(&inst).unwrap();
    let _guard = InstanceGuard::adopt(inst, Some(dir));
}
