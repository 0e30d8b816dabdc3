//! `dbfork start|stop|restart` against real servers, volumes and processes: a family
//! stopped and started keeps its data and replication, a dead export process or server
//! is named by `status` and brought back, and a host reboot (every process, mount and
//! shared-memory pool gone) is survived by `start --all`.

mod common;
use common::cluster::*;
use common::*;
use dbfork::registry::Registry;
use std::time::Duration;
use substrate::RunDir;

/// The rows of `sbtest.sbtest1` on `name`.
fn rows(c: &Cluster, name: &str) -> u64 {
    c.inst(name)
        .query_scalar("SELECT COUNT(*) FROM sbtest.sbtest1")
        .unwrap()
        .unwrap()
}

/// A row written on `src` reaches `replica` (replication runs).
fn replicates(c: &Cluster, src: &str, replica: &str, tag: &str) {
    c.inst(src)
        .exec(&format!(
            "INSERT INTO sbtest.sbtest1 (k, c, pad) VALUES (7, '{tag}', '{tag}')"
        ))
        .unwrap();
    dbinstance::wait_caught_up(&c.inst(replica), &c.inst(src), Duration::from_secs(120)).unwrap();
    assert_eq!(
        checksums(c, replica),
        checksums(c, src),
        "{replica} after {tag}"
    );
}

#[test]
fn a_family_stopped_and_started_keeps_its_data_replication_and_sharing() {
    let Some(c) = Cluster::new() else { return };
    c.source("src");
    // The sources dbfork makes write every commit to the redo file (the clone's
    // consistent point relies on it).
    let durability: Option<u64> = c
        .inst("src")
        .query_scalar("SELECT @@GLOBAL.innodb_flush_log_at_trx_commit")
        .unwrap();
    assert_eq!(durability, Some(1));
    load(&c, "src", 1, 3000);
    // Set to 0 by hand, the source is refused as a parent, with the fix named.
    c.inst("src")
        .exec("SET GLOBAL innodb_flush_log_at_trx_commit = 0")
        .unwrap();
    let e = c.store.fails(&["clone", "src", "r1"]);
    assert!(
        e.contains("innodb_flush_log_at_trx_commit=0") && e.contains("SET GLOBAL"),
        "{e}"
    );
    c.inst("src")
        .exec("SET GLOBAL innodb_flush_log_at_trx_commit = 1")
        .unwrap();
    // status --json shows a sharing source's membership, not null.
    let st = c.store.json(&["status", "src"]);
    assert_eq!(st["sharing"]["role"], "source", "{st}");
    c.clone("src", "r1", &[]);
    let shared = Registry::new(c.store.path()).load("r1").unwrap().sharing;
    assert!(shared.is_some());

    // Stopped: no server, the volume released (no export, no mount), says how back.
    c.store.ok(&["stop", "r1"]);
    let st = c.store.json(&["status", "r1"]);
    assert_eq!(st["state"], "stopped", "{st}");
    assert_eq!(st["fix"], "dbfork start r1", "{st}");
    assert!(!RunDir::new(c.store.path())
        .path()
        .join("r1.attach.json")
        .exists());
    assert!(!substrate::local::is_mount_point(
        &c.store.path().join("mnt").join("r1")
    ));
    // The source goes on; its writes wait for r1.
    c.inst("src")
        .exec("INSERT INTO sbtest.sbtest1 (k, c, pad) VALUES (1, 'while', 'stopped')")
        .unwrap();

    let started = c.store.json(&["start", "r1"]);
    assert_eq!(started["started"], true, "{started}");
    assert_eq!(c.store.json(&["start", "r1"])["started"], false);
    let rec = Registry::new(c.store.path()).load("r1").unwrap();
    assert_eq!(rec.sharing, shared, "same family and domain after a start");
    assert_eq!(c.store.json(&["status", "r1"])["state"], "running");
    dbinstance::wait_caught_up(&c.inst("r1"), &c.inst("src"), Duration::from_secs(120)).unwrap();
    assert_eq!(checksums(&c, "r1"), checksums(&c, "src"));
    // It still reads the source's pages from shared memory after the start.
    let served = |c: &Cluster| {
        c.store.json(&["status", "r1"])["sharing"]["shared"]
            .as_u64()
            .unwrap_or(0)
    };
    c.inst("r1").exec("FLUSH LOCAL TABLES").unwrap();
    assert_eq!(rows(&c, "r1"), rows(&c, "src"));
    assert!(
        wait_until(Duration::from_secs(30), || served(&c) > 0),
        "no read of the restarted replica was served from shared memory: {}",
        c.store.json(&["status", "r1"])
    );

    // The source stops and starts; the replica keeps answering and reconnects.
    let text = c.store.ok(&["stop", "src"]);
    assert!(text.contains("keep serving reads"), "{text}");
    assert_eq!(rows(&c, "r1"), rows(&c, "r1"));
    c.store.ok(&["start", "src"]);
    let src = Registry::new(c.store.path()).load("src").unwrap();
    assert!(
        src.sharing.is_some() && src.sharing_off.is_none(),
        "{src:?}"
    );
    replicates(&c, "src", "r1", "after-source-restart");

    c.store.ok(&["restart", "r1"]);
    replicates(&c, "src", "r1", "after-restart");
}

#[test]
fn a_dead_export_or_server_is_named_and_brought_back() {
    let Some(c) = Cluster::new() else { return };
    c.source("src");
    load(&c, "src", 1, 2000);
    // Slow hydration: the export dies mid-hydration.
    c.clone("src", "r1", &["--rate", "4"]);
    let hydrated = |c: &Cluster| {
        c.store.json(&["volume", "status", "r1"])["hydrated_bytes"]
            .as_u64()
            .unwrap()
    };
    let before = hydrated(&c);
    assert_eq!(
        c.store.json(&["status", "r1"])["volume"]["independent"],
        false
    );

    // The export process dies: its server lost its disk. Status names it and the fix;
    // no dead pid is shown as holding the volume.
    kill_export(c.store.path(), "r1");
    let st = c.store.json(&["status", "r1"]);
    let problems = st["problems"].to_string();
    assert!(problems.contains("export process of volume r1"), "{st}");
    assert!(
        st["state"] == "broken" || st["state"] == "down",
        "{}",
        st["state"]
    );
    assert!(st["volume"]["open_by_pid"].is_null(), "{st}");
    let vol = c.store.json(&["volume", "status", "r1"]);
    assert!(vol["open_by_pid"].is_null(), "{vol}");
    if st["state"] == "broken" {
        assert_eq!(st["fix"], "dbfork restart r1");
        let e = c.store.fails(&["start", "r1"]);
        assert!(e.contains("dbfork restart r1"), "{e}");
    }
    c.store.ok(&["restart", "r1"]);
    assert_eq!(c.store.json(&["status", "r1"])["state"], "running");
    // What it had hydrated stayed, and hydration goes on from there.
    let after = hydrated(&c);
    assert!(after >= before, "hydrated {before} before, {after} after");
    assert!(
        wait_until(Duration::from_secs(60), || hydrated(&c) > after),
        "hydration did not resume"
    );
    replicates(&c, "src", "r1", "after-export-death");

    // The server dies (kill -9): down, with its log's last lines and the fix.
    let pid = c.inst("r1").pid().unwrap();
    kill_and_wait(pid as u32);
    let st = c.store.json(&["status", "r1"]);
    assert_eq!(st["state"], "down", "{st}");
    assert!(
        st["problems"].to_string().contains("killed or crashed"),
        "{st}"
    );
    assert_eq!(st["fix"], "dbfork start r1");
    assert!(!st["log_tail"].as_array().unwrap().is_empty(), "{st}");
    let text = c.store.ok(&["status", "r1"]);
    assert!(text.contains("bring it back: dbfork start r1"), "{text}");
    c.store.ok(&["start", "r1"]);
    replicates(&c, "src", "r1", "after-server-death");

    // The page table daemon dies: the next start runs it again, sharing on.
    let daemon = substrate::PageTableService::new(c.store.path(), DBFORK.as_ref())
        .pid()
        .unwrap();
    kill_and_wait(daemon);
    c.store.ok(&["restart", "r1"]);
    let rec = Registry::new(c.store.path()).load("r1").unwrap();
    assert!(
        rec.sharing.is_some() && rec.sharing_off.is_none(),
        "{rec:?}"
    );
    replicates(&c, "src", "r1", "after-daemon-death");
}

/// What a host reboot leaves: no process, mount, loop device or shared memory of the
/// store; only its files.
fn reboot(c: &Cluster) {
    let store = c.store.path();
    let reg = Registry::new(store);
    for rec in reg.list().unwrap() {
        if let Some(pid) = c.inst(&rec.name).pid() {
            kill_and_wait(pid as u32);
        }
    }
    let run = RunDir::new(store);
    for rec in reg.list().unwrap() {
        if let Ok(Some(a)) = substrate::local::attach::load_record(&run, &rec.volume) {
            kill_and_wait(a.export_pid);
            let mp = a.mountpoint.display().to_string();
            let _ = std::process::Command::new("umount")
                .args(["-l", &mp])
                .status();
            if let Some(dev) = &a.loop_device {
                let _ = std::process::Command::new("losetup")
                    .args(["-d", dev])
                    .status();
            }
            let fuse = a.fuse_dir.display().to_string();
            let _ = std::process::Command::new("umount")
                .args(["-l", &fuse])
                .status();
            if let Some(p) = a.nbdfuse_pid {
                kill_and_wait(p);
            }
        }
    }
    let pt = substrate::PageTableService::new(store, DBFORK.as_ref());
    if let Some(pid) = pt.pid() {
        kill_and_wait(pid);
    }
    // /dev/shm is empty after a boot.
    let tag = format!("dbfork-{}-", substrate::local::orphans::store_tag(store));
    for e in std::fs::read_dir(substrate::local::orphans::SHM).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with(&tag) {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    // The records name the boot that is over.
    for mut rec in reg.list().unwrap() {
        if let Some(r) = rec.run.as_mut() {
            r.boot_id = "the-boot-before".into();
        }
        reg.save(&rec).unwrap();
    }
}

/// The instances an `--all` verb went through, in order; every one of them succeeded.
fn all_names(out: &serde_json::Value) -> Vec<&str> {
    let rows = out.as_array().unwrap();
    assert!(rows.iter().all(|o| o["ok"] == true), "{out}");
    rows.iter().map(|o| o["name"].as_str().unwrap()).collect()
}

#[test]
fn a_host_reboot_is_survived_by_start_all() {
    let Some(c) = Cluster::new() else { return };
    c.source("src");
    load(&c, "src", 1, 2000);
    c.clone("src", "r1", &[]);
    c.clone("src", "r2", &[]);
    // r1 was stopped cleanly before the reboot (the unit's ExecStop); r2 was running.
    c.store.ok(&["stop", "r1"]);
    let before = checksums(&c, "src");
    reboot(&c);
    let out = c.store.json(&["start", "--all"]);
    assert_eq!(all_names(&out), ["src", "r1", "r2"], "{out}");
    assert_eq!(checksums(&c, "src"), before);
    let reg = Registry::new(c.store.path());
    // The cleanly stopped replica keeps sharing; the one the host took down cannot
    // vouch for its written-page set, and says so.
    assert!(reg.load("r1").unwrap().sharing.is_some());
    let r2 = reg.load("r2").unwrap();
    assert!(r2.sharing.is_none());
    assert!(
        r2.sharing_off
            .as_deref()
            .unwrap()
            .contains("host went down"),
        "{:?}",
        r2.sharing_off
    );
    replicates(&c, "src", "r1", "after-reboot");
    replicates(&c, "src", "r2", "after-reboot");
    // And everything stops cleanly for the next shutdown, replicas first.
    let out = c.store.json(&["stop", "--all"]);
    assert_eq!(all_names(&out), ["r2", "r1", "src"], "{out}");
    for n in ["src", "r1", "r2"] {
        assert_eq!(c.store.json(&["status", n])["state"], "stopped");
    }
}

#[test]
fn the_systemd_units_verify() {
    if !have("systemd-analyze") {
        eprintln!("SKIP: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let units = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd");
    for unit in ["dbfork.service", "dbfork@.service"] {
        let text = std::fs::read_to_string(format!("{units}/{unit}")).unwrap();
        assert!(text.contains("/usr/local/bin/dbfork"), "{unit}");
        // Checked against the binary under test (verify wants the ExecStart to exist).
        std::fs::write(
            dir.path().join(unit),
            text.replace("/usr/local/bin/dbfork", DBFORK),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("dbfork@.service", dir.path().join("dbfork@r1.service")).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "dbfork.service", "dbfork@r1.service"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "warnings: {stderr}");
}

/// Every file and non-empty directory under the store, but the store's own files
/// (what the README says stays after the last instance is gone).
fn leftovers(store: &std::path::Path) -> Vec<String> {
    fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                walk(&p, root, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(store, store, &mut out);
    out.retain(|p| !["store.json", "store.lock", "reserve"].contains(&p.as_str()));
    out.sort();
    out
}

#[test]
fn a_failed_create_and_a_full_destroy_leave_only_the_store_itself() {
    let Some(c) = Cluster::new() else { return };
    let err = c.store.fails(&[
        "source",
        "create",
        "huge",
        "--buffer-pool",
        "0",
        "--volume-engine",
        "lazy",
    ]);
    assert!(err.contains("buffer_pool_size"), "{err}");
    assert_eq!(leftovers(c.store.path()), Vec::<String>::new());
    assert!(!c.store.path().join("mnt").join("huge").exists());

    c.source("src");
    c.clone("src", "r1", &[]);
    c.clone("r1", "r1a", &[]);
    c.store.ok(&["stop", "r1a"]);
    c.store.ok(&["destroy", "src", "--with-replicas"]);
    assert_eq!(leftovers(c.store.path()), Vec::<String>::new());
    let tag = format!(
        "dbfork-{}-",
        substrate::local::orphans::store_tag(c.store.path())
    );
    let shm: Vec<String> = std::fs::read_dir(substrate::local::orphans::SHM)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&tag))
        .collect();
    assert!(shm.is_empty(), "{shm:?}");
}
