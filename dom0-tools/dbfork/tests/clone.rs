//! `dbfork clone` against real MariaDB servers on real volumes: consistency under a
//! write load, clones in a row and of a clone, destroy and kill during hydration,
//! engine crashes mid-clone, and bad input. Each test has its own store; the guard
//! destroys every instance it made, even when the test fails.

mod common;
use common::cluster::*;
use common::*;
use dbfork::clone::CloneOpts;
use dbfork::registry::Registry;
use dbinstance::{Instance, InstanceConfig};
use std::time::Duration;
use substrate::{DomainState, PageTableService};

#[test]
fn clones_under_write_load_converge_and_so_does_a_clone_of_a_clone() {
    let Some(c) = Cluster::new() else { return };
    c.source("src");
    load(&c, "src", 2, 5000);
    let writer = write_load(&c, "src", 12);
    let src = c.inst("src");
    for r in ["r1", "r2", "r3"] {
        let rec = c.clone("src", r, &[]);
        assert!(rec["clone"]["first_query_ms"].as_u64().unwrap() > 0);
    }
    // A clone of a clone replicates from its parent.
    let rec = c.clone("r1", "r1a", &[]);
    assert_eq!(rec["clone"]["parent"], "r1");
    let res = writer.wait().unwrap();
    assert!(res.transactions > 0);

    let want = checksums(&c, "src");
    let src_gtid = src.gtid_binlog_pos().unwrap();
    for r in ["r1", "r2", "r3"] {
        dbinstance::wait_caught_up(&c.inst(r), &src, Duration::from_secs(120)).unwrap();
    }
    dbinstance::wait_caught_up(&c.inst("r1a"), &c.inst("r1"), Duration::from_secs(120)).unwrap();
    for r in ["r1", "r2", "r3", "r1a"] {
        assert_eq!(checksums(&c, r), want, "{r} differs from the source");
        let applied = c.inst(r).gtid_slave_pos().unwrap();
        assert!(
            applied.covers(&src_gtid) && src_gtid.covers(&applied),
            "{r}: applied {applied}, source {src_gtid}"
        );
    }
    let st = c.store.json(&["status", "r2"]);
    assert_eq!(st["role"], "replica");
    assert_eq!(st["lag_secs"], 0, "{st}");
    // The running server's memory, read from its process; a local server has no
    // domain memory of its own.
    let pss = st["memory"]["server"]["pss_kib"].as_u64().unwrap_or(0);
    let rss = st["memory"]["server"]["rss_kib"].as_u64().unwrap_or(0);
    assert!(pss > 0 && pss <= rss, "{st}");
    assert!(st["memory"]["domain"].is_null(), "{st}");
    // r1 was cloned while it replicated without an fsync per transaction, and r1a
    // still converged above: the consistent point's snapshot holds what r1 committed.
    let durability: Option<u64> = c
        .inst("r1")
        .query_scalar("SELECT @@GLOBAL.innodb_flush_log_at_trx_commit")
        .unwrap();
    assert_eq!(durability, Some(2));
}

#[test]
fn destroy_during_hydration_and_source_killed_during_hydration() {
    let Some(c) = Cluster::new() else { return };
    c.source("src");
    load(&c, "src", 1, 5000);
    // Slow hydration: both events land while the clone still depends on the snapshot.
    c.clone("src", "r1", &["--rate", "1"]);
    let st = c.store.json(&["status", "r1"]);
    assert_eq!(st["volume"]["independent"], false, "{st}");
    c.store.ok(&["destroy", "r1"]);
    c.assert_gone("r1");

    c.clone("src", "r2", &["--rate", "16"]);
    let before = checksums(&c, "src");
    let mut src = c.inst("src");
    src.kill().unwrap();
    // The replica keeps answering from its own volume and says what is wrong.
    assert_eq!(checksums(&c, "r2"), before);
    // The IO thread passes through other states on its way (MariaDB shows
    // "Preparing" while it restarts); what counts is that status ends up saying it
    // cannot connect.
    let mut text = String::new();
    let broken = wait_until(Duration::from_secs(60), || {
        text = c.store.ok(&["status", "r2"]);
        text.contains("io Connecting") || text.contains("PROBLEM")
    });
    assert!(broken, "replica never said its source is gone: {text}");
    // Its hydration does not need the source server: it finishes.
    assert!(wait_until(Duration::from_secs(240), || {
        c.store.json(&["status", "r2"])["volume"]["independent"] == true
    }));
    // The source comes back with its data as it was and replication resumes.
    c.start_again("src", &c.cfg("src"));
    assert_eq!(checksums(&c, "src"), before);
    src.exec("INSERT INTO sbtest.sbtest1 (k, c, pad) VALUES (1, 'after', 'restart')")
        .unwrap();
    dbinstance::wait_caught_up(&c.inst("r2"), &src, Duration::from_secs(120)).unwrap();
    assert_eq!(checksums(&c, "r2"), checksums(&c, "src"));
}

#[test]
fn failures_mid_clone_leave_nothing_half_made() {
    let Some(c) = Cluster::new() else { return };
    c.source("src");
    load(&c, "src", 1, 2000);
    // Before the server starts (volume cloned, attached, its hydration queued) and
    // after it started (replication not set up yet).
    for (method, step) in [("start", "replica start"), ("endpoint", "replication")] {
        let err = c
            .clone_faulty("src", "bad", &CloneOpts::default(), |f| {
                f.fail_before(method, "bad")
            })
            .unwrap_err();
        let err = dbfork::error::chain(&err);
        assert!(
            err.contains("injected failure") && err.contains(&format!("bad: {step}")),
            "{method}: {err}"
        );
        c.assert_gone("bad");
    }
    // The engine serving the new volume dies right after attach: the clone either
    // completes (all it needed was cached) or fails clearly; never half-made.
    let store = c.store.path().to_path_buf();
    let out = c.clone_faulty("src", "crashy", &CloneOpts::default(), |f| {
        f.after("attach", "crashy", move || kill_export(&store, "crashy"))
    });
    match out {
        Ok(_) => {
            let st = c.store.json(&["status", "crashy"]);
            assert_eq!(st["state"], "running", "{st}");
            c.store.ok(&["destroy", "crashy"]);
        }
        Err(e) => {
            let err = dbfork::error::chain(&e);
            assert!(err.contains("crashy"), "unclear error: {err}");
        }
    }
    c.assert_gone("crashy");
    // And the source is untouched by all of that: a clean clone still works.
    c.clone("src", "good", &[]);
    dbinstance::wait_caught_up(&c.inst("good"), &c.inst("src"), Duration::from_secs(60)).unwrap();
    assert_eq!(checksums(&c, "good"), checksums(&c, "src"));
}

/// A server that joined its family at the start gate and then did not come up leaves
/// no member behind in the page table (a later instance would reuse its domain id).
#[test]
fn a_server_that_fails_after_its_gate_leaves_no_family_member() {
    use substrate::{AgentRole, AgentSpec, StartRequest, Substrate};
    let Some(c) = Cluster::new() else { return };
    require_sharing_artifacts();
    c.source("src");
    let family = Registry::new(c.store.path())
        .load("src")
        .unwrap()
        .sharing
        .expect("the source shares")
        .family_id;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = InstanceConfig::in_dir("ghost", dir.path(), dbinstance::free_port().unwrap(), 99);
    Instance::init(cfg.clone()).unwrap();
    cfg.extra.insert("innodb_no_such_option".into(), "1".into());
    let mut domain = DomainState::Local(substrate::local::LocalDomain {
        mountpoint: dir.path().to_path_buf(),
        directory: false,
        agent: None,
        io_limit: None,
    });
    let agent = AgentSpec {
        family,
        domain: 99,
        role: AgentRole::Replica { snapshot_lsn: 1 },
    };
    let err = c
        .local()
        .start(
            &StartRequest {
                config: &cfg,
                volume: "none",
                agent: Some(&agent),
                read_iops: None,
                timeout: Duration::from_secs(60),
            },
            &mut domain,
        )
        .unwrap_err();
    assert!(
        substrate::error::chain(&err).contains("innodb_no_such_option"),
        "{err}"
    );
    let admin = c.store.path().join("run/pagetabled.admin");
    let stats = pagetable::admin::AdminClient::connect(admin)
        .unwrap()
        .stats()
        .unwrap();
    let f = stats
        .families
        .iter()
        .find(|f| f.family.0 == family)
        .unwrap();
    assert_eq!(f.domains, 1, "only the source is left in the family: {f:?}");
}

#[test]
fn bad_input_is_named_and_changes_nothing() {
    let Some(c) = Cluster::new() else { return };
    c.source("src");
    let err = c.store.fails(&["clone", "ghost", "x"]);
    assert!(
        err.contains("no database instance named \"ghost\""),
        "{err}"
    );
    let err = c.store.fails(&["clone", "src", "src"]);
    assert!(err.contains("already exists"), "{err}");
    c.store.ok(&["volume", "create", "taken", "--size", "16M"]);
    let err = c.store.fails(&["clone", "src", "taken"]);
    assert!(err.contains("volume named taken already exists"), "{err}");
    let err = c.store.fails(&["clone", "src", "bad/name"]);
    assert!(err.contains("invalid name"), "{err}");
    let err = c.store.fails(&["source", "create", "src"]);
    assert!(err.contains("already exists"), "{err}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let err = c.store.fails(&["clone", "src", "p", "--port", &port]);
    assert!(err.contains(&format!("port {port} is in use")), "{err}");
    c.assert_gone("p");

    // A source that lost its binlog cannot feed a replica.
    let mut cfg = c.cfg("src");
    let mut inst = Instance::open(cfg.clone()).unwrap();
    inst.stop().unwrap();
    cfg.binlog = false;
    c.start_again("src", &cfg);
    let err = c.store.fails(&["clone", "src", "nb"]);
    assert!(
        err.to_lowercase().contains("binlog") || err.to_lowercase().contains("binary log"),
        "{err}"
    );
    c.assert_gone("nb");

    // Not enough disk: the store lives on a small tmpfs.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let small = tempfile::tempdir().unwrap();
        let mnt = small.path().join("fs");
        std::fs::create_dir(&mnt).unwrap();
        assert!(std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=700m", "tmpfs"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success());
        struct Unmount(std::path::PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.0)
                    .status();
            }
        }
        let _u = Unmount(mnt.clone());
        let store = mnt.join("store");
        let run = |args: &[&str]| {
            std::process::Command::new(DBFORK)
                .arg("--store")
                .arg(&store)
                .args(args)
                .output()
                .unwrap()
        };
        let out = run(&["source", "create", "big", "--size", "1G"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not enough disk"), "{err}");
        let list = String::from_utf8_lossy(&run(&["--json", "volume", "list"]).stdout).to_string();
        assert_eq!(list.trim(), "[]", "{list}");
    }
    let all = c.store.json(&["list"]);
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["src"]);
}

/// The agent and daemon must sit next to the dbfork binary under test (scripts/test
/// builds the workspace first). Missing them is a failure, not a skip: CI must run this.
fn require_sharing_artifacts() {
    let dir = std::path::Path::new(DBFORK).parent().unwrap();
    for f in ["libdbfork_agent.so", "pagetabled"] {
        assert!(
            dir.join(f).exists(),
            "{} missing: build the workspace first (cargo build --workspace)",
            dir.join(f).display()
        );
    }
}

fn agent_counter(c: &Cluster, name: &str, key: &str) -> u64 {
    let st = c.store.json(&["status", name]);
    st["sharing"][key].as_u64().unwrap_or(0)
}

#[test]
fn a_replica_reads_the_sources_warm_pages_from_shared_memory() {
    let Some(c) = Cluster::new() else { return };
    require_sharing_artifacts();
    c.source("src");
    load(&c, "src", 2, 20_000);
    // Warm the source: its buffer pool holds the tables.
    let src = c.inst("src");
    let want = checksums(&c, "src");

    let rec = c.clone("src", "shared", &[]);
    assert!(
        rec["sharing"].is_object(),
        "sharing off: {}",
        rec["sharing_off"]
    );
    assert!(
        rec["clone"]["warm_set_frames"].as_u64().unwrap() > 0,
        "{rec}"
    );
    // A second clone right away, likely at the same LSN: the warm set offered for the
    // first still serves it, and the offer must not wait for a scan that never comes.
    let again = c.clone("src", "again", &[]);
    assert!(again["clone"]["warm_set_frames"].is_u64(), "{again}");
    // Reading every row makes the replica read pages it has not loaded yet.
    assert_eq!(checksums(&c, "shared"), want);
    let served = agent_counter(&c, "shared", "shared");
    assert!(
        served > 0,
        "no read was served from shared memory: {}",
        c.store.json(&["status", "shared"])["sharing"]
    );
    assert_eq!(agent_counter(&c, "shared", "declined_verify"), 0);

    // The same clone without sharing returns the same data and shares nothing.
    let out = c.store.run_env(
        &["--json", "clone", "src", "private", "--hydrate-first"],
        &[("DBFORK_SHARING", "off")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = c.store.json(&["status", "private"]);
    // A full copy before start: independent of the snapshot from its first query.
    assert_eq!(st["volume"]["independent"], true, "{st}");
    assert!(
        st["sharing_off"]
            .as_str()
            .unwrap()
            .contains("DBFORK_SHARING"),
        "{st}"
    );
    assert_eq!(checksums(&c, "private"), want);

    // Writes on the source after the clones flow to both; both still agree.
    src.exec("UPDATE sbtest.sbtest1 SET k = k + 1 WHERE id <= 500")
        .unwrap();
    for r in ["shared", "private"] {
        dbinstance::wait_caught_up(&c.inst(r), &src, Duration::from_secs(60)).unwrap();
        assert_eq!(checksums(&c, r), checksums(&c, "src"), "{r}");
    }
    // Destroying the family's source removes its pool.
    let pool = rec["domain"]["agent"]["pool"].as_str().unwrap().to_string();
    assert!(std::path::Path::new(&pool).exists());
    c.store.ok(&["destroy", "src", "--with-replicas"]);
    assert!(
        !std::path::Path::new(&pool).exists(),
        "pool {pool} left behind"
    );
}

#[test]
fn pagetabled_killed_during_a_clone_is_restarted_and_the_clone_completes() {
    let Some(c) = Cluster::new() else { return };
    require_sharing_artifacts();
    c.source("src");
    load(&c, "src", 1, 5000);
    let service = PageTableService::new(c.store.path(), std::path::Path::new(DBFORK));
    c.clone_faulty("src", "r", &CloneOpts::default(), |f| {
        f.after("attach", "r", move || {
            kill_and_wait(service.pid().expect("the source started the daemon"))
        })
    })
    .unwrap();
    // The replica is whole, registered, and shares through the restarted daemon.
    let st = c.store.json(&["status", "r"]);
    assert_eq!(st["state"], "running", "{st}");
    assert!(st["sharing_off"].is_null(), "{st}");
    assert_eq!(checksums(&c, "r"), checksums(&c, "src"));
    assert!(
        agent_counter(&c, "r", "lookups") > 0,
        "the replica never asked the restarted daemon: {}",
        st["sharing"]
    );
}

/// `--read-iops`, `--no-buffer-pool-load`, `--no-sharing` (the experiment harness's
/// HDD model and cold anchor): the server sits in an IO group limited on its own
/// volume's device from its first read, starts with an empty buffer pool and shares
/// nothing; destroy, and a clone that fails after the group was made, remove it.
#[test]
fn a_replica_can_start_cold_unshared_and_with_its_reads_limited() {
    use substrate::local::io_limit;
    let Some(c) = Cluster::new() else { return };
    if let Err(e) = io_limit::detect(std::path::Path::new(io_limit::CGROUP_ROOT)) {
        eprintln!("SKIP a_replica_can_start_cold_unshared_and_with_its_reads_limited: {e}");
        return;
    }
    c.source("src");
    load(&c, "src", 1, 20000);
    let flags = [
        "--read-iops",
        "400",
        "--no-buffer-pool-load",
        "--no-sharing",
    ];
    c.clone("src", "slow", &flags);
    let rec = Registry::new(c.store.path()).load("slow").unwrap();
    let DomainState::Local(domain) = &rec.domain else {
        panic!("a local domain expected");
    };
    let l = domain.io_limit.clone().expect("the read limit is recorded");
    assert_eq!(l.read_iops, 400);
    let attach: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(c.store.path().join("run/slow.attach.json")).unwrap(),
    )
    .unwrap();
    let node = attach["loop_device"].as_str().unwrap();
    assert_eq!(
        io_limit::device_number(std::path::Path::new(node)).unwrap(),
        l.device,
        "the limit is on the replica's own block device"
    );
    let limits = std::fs::read_to_string(l.cgroup.join(match l.controller {
        io_limit::Controller::V1 => "blkio.throttle.read_iops_device",
        io_limit::Controller::V2 => "io.max",
    }))
    .unwrap();
    assert!(
        limits.contains(&l.device) && limits.contains("400"),
        "{limits}"
    );
    let inst = c.inst("slow");
    let pid = inst.pid().unwrap();
    let procs = std::fs::read_to_string(l.cgroup.join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|p| p == pid.to_string()),
        "server {pid} not in the group: {procs}"
    );
    // Cold: the server did not load the dump, so counting the table reads its pages
    // from the volume, and those reads are the group's.
    let load_at_start: Option<i64> = inst
        .query_scalar("SELECT @@innodb_buffer_pool_load_at_startup")
        .unwrap();
    assert_eq!(load_at_start, Some(0));
    let before = io_limit::reads_serviced(&l).unwrap();
    let n: Option<i64> = inst
        .query_scalar("SELECT COUNT(*) FROM sbtest.sbtest1 FORCE INDEX (PRIMARY)")
        .unwrap();
    assert_eq!(n, Some(20000));
    let after = io_limit::reads_serviced(&l).unwrap();
    assert!(
        after > before,
        "the scan's reads were not counted against the limit ({before} -> {after})"
    );
    let st = c.store.json(&["status", "slow"]);
    assert!(st["sharing"].is_null(), "{st}");
    assert!(
        st["sharing_off"]
            .as_str()
            .unwrap_or("")
            .contains("--no-sharing"),
        "{st}"
    );
    c.store.ok(&["destroy", "slow"]);
    assert!(!l.cgroup.exists(), "{} left", l.cgroup.display());
    c.assert_gone("slow");

    // A clone that fails once the limited server runs removes the group too.
    let opts = CloneOpts {
        read_iops: Some(400),
        cold_buffer_pool: true,
        sharing: false,
        ..CloneOpts::default()
    };
    let out = c.clone_faulty("src", "bad", &opts, |f| f.fail_before("endpoint", "bad"));
    assert!(out.is_err(), "the injected fault should fail the clone");
    let group = io_limit::group_name(c.store.path(), "bad");
    let root = std::path::Path::new(io_limit::CGROUP_ROOT);
    assert!(!root.join("blkio").join(&group).exists() && !root.join(&group).exists());
    c.assert_gone("bad");
}

/// `source create --region-size`: a source whose volume copies up 16 KiB (one InnoDB
/// page) after a snapshot, cloned into a replica whose volume uses the store's own
/// region size, converges to the same data; a size the engine cannot use is refused
/// by name before anything is made.
#[test]
fn a_source_with_page_sized_regions_clones_and_converges() {
    let Some(c) = Cluster::new() else { return };
    let err = c.store.fails(&[
        "source",
        "create",
        "odd",
        "--size",
        "512M",
        "--region-size",
        "3K",
    ]);
    assert!(err.contains("region size"), "{err}");
    c.assert_gone("odd");
    c.store.ok(&[
        "source",
        "create",
        "src",
        "--size",
        "512M",
        "--buffer-pool",
        "64M",
        "--region-size",
        "16K",
    ]);
    let st = c.store.json(&["volume", "status", "src"]);
    assert_eq!(st["region_size"], 16384, "{st}");
    load(&c, "src", 2, 5000);
    let binlogs = |c: &Cluster| {
        let mut v: Vec<String> = std::fs::read_dir(&c.cfg("src").datadir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("binlog.0"))
            .collect();
        v.sort();
        v
    };
    let before = binlogs(&c);
    c.clone("src", "r1", &["--hydrate-first"]);
    // The clone rotated the source's binary log, so the replica's crash recovery scans
    // a last binlog file holding only the moment before the snapshot, not the load.
    let after = binlogs(&c);
    assert_eq!(after.len(), before.len() + 1, "{before:?} -> {after:?}");

    // A full copy moves what the source's filesystem wrote, not the volume's size
    // (mkfs must not discard the new volume: that would mark every region written).
    let st = c.store.json(&["status", "r1"]);
    let copied = st["volume"]["fetched_bytes"].as_u64().unwrap();
    assert!(
        copied > 0 && copied < (512 << 20) / 2,
        "copied {copied} bytes: {st}"
    );
    c.inst("src")
        .exec("UPDATE sbtest.sbtest1 SET k = k + 1 WHERE id <= 500")
        .unwrap();
    dbinstance::wait_caught_up(&c.inst("r1"), &c.inst("src"), Duration::from_secs(60)).unwrap();
    assert_eq!(checksums(&c, "r1"), checksums(&c, "src"));
    // Destroyed, the store leaves nothing in shared memory: no pool, no owner file.
    let tag = substrate::local::orphans::store_tag(c.store.path());
    c.store.ok(&["destroy", "src", "--with-replicas"]);
    let left: Vec<String> = std::fs::read_dir(substrate::local::orphans::SHM)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("dbfork-{tag}-")) || *n == format!("dbfork-{tag}.store"))
        .collect();
    assert!(left.is_empty(), "left in shared memory: {left:?}");
}

/// On a store whose file system shares extents, a source's datadir is a directory on
/// it (no export process, no mount: the server's IO stays in the kernel), a clone is a
/// reflink copy taken while the source's process is held still, complete at once (no
/// hydration), and everything else holds as on block volumes: replicas share the
/// source's pages, follow a write load, converge with identical checksums, a clone of
/// a clone works, the read limit applies to the store's disk, destroy removes every
/// tree. `--volume-engine lazy` still gives a block volume there.
#[test]
fn on_a_reflink_store_datadirs_are_directories_and_clones_share_extents() {
    let Some(c) = Cluster::on_xfs() else { return };
    require_sharing_artifacts();
    c.source("src");
    let vol = c.store.json(&["volume", "status", "src"]);
    assert_eq!(vol["layout"], "directory", "{vol}");
    let datadir = c.cfg("src").datadir;
    assert!(
        datadir.starts_with(c.store.path().join("dirs/src")),
        "{}",
        datadir.display()
    );
    assert!(!c.store.path().join("run/src.attach.json").exists());
    load(&c, "src", 2, 5000);
    let writer = write_load(&c, "src", 10);
    let src = c.inst("src");
    let rec = c.clone("src", "r1", &["--read-iops", "400"]);
    let st = c.store.json(&["status", "r1"]);
    assert_eq!(st["volume"]["layout"], "directory", "{st}");
    assert_eq!(st["volume"]["independent"], true, "{st}");
    assert_eq!(st["hydrated_percent"], 100.0, "{st}");
    assert!(rec["sharing"].is_object(), "{rec}");
    // The read limit is on the disk the store's file system is on.
    let DomainState::Local(domain) = &Registry::new(c.store.path()).load("r1").unwrap().domain
    else {
        panic!("a local domain expected");
    };
    let limit = domain.io_limit.clone().expect("a read limit");
    assert_eq!(
        limit.device,
        substrate::local::io_limit::disk_of(c.store.path()).unwrap()
    );
    let procs = std::fs::read_to_string(limit.cgroup.join("cgroup.procs")).unwrap();
    let pid = c.inst("r1").pid().unwrap();
    assert!(procs.lines().any(|p| p == pid.to_string()), "{procs}");

    c.clone("r1", "r1a", &[]);
    let res = writer.wait().unwrap();
    assert!(res.transactions > 0);
    // The source was held still for the snapshot and runs on: it takes writes.
    src.exec("UPDATE sbtest.sbtest1 SET k = k + 1 WHERE id <= 100")
        .unwrap();
    let want = checksums(&c, "src");
    dbinstance::wait_caught_up(&c.inst("r1"), &src, Duration::from_secs(120)).unwrap();
    dbinstance::wait_caught_up(&c.inst("r1a"), &c.inst("r1"), Duration::from_secs(120)).unwrap();
    for r in ["r1", "r1a"] {
        assert_eq!(checksums(&c, r), want, "{r} differs from the source");
    }
    assert!(
        agent_counter(&c, "r1", "shared") > 0,
        "no read was served from the source's memory: {}",
        c.store.json(&["status", "r1"])["sharing"]
    );

    // A block volume on the same store when asked for.
    c.store.ok(&[
        "source",
        "create",
        "blk",
        "--size",
        "512M",
        "--buffer-pool",
        "64M",
        "--volume-engine",
        "lazy",
    ]);
    assert_eq!(
        c.store.json(&["volume", "status", "blk"])["layout"],
        "blocks"
    );
    c.store.ok(&["destroy", "blk"]);
    c.store.ok(&["destroy", "src", "--with-replicas"]);
    let dirs: Vec<_> = std::fs::read_dir(c.store.path().join("dirs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(dirs.is_empty(), "trees left: {dirs:?}");
    assert!(!limit.cgroup.exists());
}
