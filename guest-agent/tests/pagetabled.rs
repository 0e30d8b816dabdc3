//! Source and replica sharing through the real page table daemon, and the replica
//! surviving the daemon's death.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use dbfork_agent::stats::StatsSnapshot;
use pagetable::admin::AdminRequest;
use pagetable::{DomainId, FamilyId};

fn stats(path: &Path) -> StatsSnapshot {
    StatsSnapshot::read_from(path).unwrap_or_default()
}

#[test]
fn replica_shares_through_pagetabled_and_keeps_serving_when_it_dies() {
    require_mariadb!();
    let tmp = tempfile::tempdir().unwrap();
    let shm = pool_dir();
    let pool = shm.path().join("pool");
    let epoch = tmp.path().join("epoch");

    let src = tmp.path().join("source");
    install_datadir(&src);
    let s = Server::start(&src, &tmp.path().join("run0"), ServerOpts::plain());
    load_table(&s, "a", 20000);
    let want = s.sql(&checksum_query("a"));
    s.shutdown();
    let rep = tmp.path().join("replica");
    copy_datadir(&src, &rep);
    let s_lsn = max_page_lsn(&rep);
    std::fs::write(&epoch, s_lsn.to_string()).unwrap();

    let mut daemon = Daemon::start(tmp.path());
    daemon.admin(AdminRequest::FamilyCreate {
        family: FamilyId(1),
    });
    for d in [1, 2] {
        daemon.admin(AdminRequest::FamilyAdd {
            family: FamilyId(1),
            domain: DomainId(d),
        });
    }
    let env = |role: &str, st: &Path| {
        let mut e = vec![
            ("DBFORK_AGENT_ROLE", role.to_string()),
            ("DBFORK_POOL_PATH", pool.display().to_string()),
            ("DBFORK_FAMILY_EPOCH_FILE", epoch.display().to_string()),
            ("DBFORK_AGENT_STATS", st.display().to_string()),
            (
                "DBFORK_PAGETABLE_SOCKET",
                daemon.socket.display().to_string(),
            ),
        ];
        if role == "replica" {
            e.push(("DBFORK_SNAPSHOT_LSN", s_lsn.to_string()));
            e.push((
                "DBFORK_REPLICA_WRITES",
                tmp.path().join("writes").display().to_string(),
            ));
        }
        e
    };
    let src_st = tmp.path().join("src.json");
    let mut opts = ServerOpts::agent(&env("source", &src_st));
    opts.extra_args
        .push("--innodb-buffer-pool-load-at-startup=0".into());
    let source = Server::start(&src, &tmp.path().join("run1"), opts);
    daemon.admin(AdminRequest::BindPid {
        pid: source.pid(),
        domain: DomainId(1),
    });
    assert_eq!(source.sql(&checksum_query("a")), want);
    // Registration catches up from the pool once the daemon knows the process.
    wait_for(Duration::from_secs(30), "entries in the daemon", || {
        daemon.entries() >= 100
    });

    let rep_st = tmp.path().join("rep.json");
    let mut opts = ServerOpts::agent(&env("replica", &rep_st));
    // A small pool makes every scan read from "disk" again.
    opts.extra_args.push("--innodb-buffer-pool-size=6M".into());
    let replica = Server::start(&rep, &tmp.path().join("run2"), opts);
    daemon.admin(AdminRequest::BindPid {
        pid: replica.pid(),
        domain: DomainId(2),
    });
    wait_for(
        Duration::from_secs(60),
        "pages shared via the daemon",
        || {
            assert_eq!(replica.sql(&checksum_query("a")), want);
            stats(&rep_st).shared >= 50
        },
    );

    // The daemon dies mid-workload: the replica keeps answering, from disk.
    daemon.kill();
    let before = stats(&rep_st);
    for _ in 0..3 {
        assert_eq!(
            replica.sql(&checksum_query("a")),
            want,
            "replica without the daemon"
        );
    }
    wait_for(Duration::from_secs(10), "lookup errors counted", || {
        stats(&rep_st).lookup_errors > before.lookup_errors
    });
    let s = stats(&rep_st);
    assert_eq!(
        s.sharing_off_reason, None,
        "a dead daemon is not a reason to stop: {s:?}"
    );

    // Restarted with its state file, the daemon gets the source's frames again and the
    // replica shares again.
    daemon.restart();
    wait_for(Duration::from_secs(30), "re-registration", || {
        daemon.entries() >= 100
    });
    let shared_before = stats(&rep_st).shared;
    wait_for(Duration::from_secs(60), "sharing resumes", || {
        assert_eq!(replica.sql(&checksum_query("a")), want);
        stats(&rep_st).shared > shared_before
    });
    assert_eq!(stats(&rep_st).declined_verify, 0);
    replica.shutdown();
    source.shutdown();
}
