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
    let clone_lsn = tmp.path().join("clone_lsn");

    let src = tmp.path().join("source");
    install_datadir(&src);
    let s = Server::start(&src, &tmp.path().join("run0"), ServerOpts::plain());
    load_table(&s, "a", 20000);
    let want = s.sql(&checksum_query("a"));
    s.shutdown();
    let rep = tmp.path().join("replica");
    copy_datadir(&src, &rep);
    let s_lsn = max_page_lsn(&rep);
    std::fs::write(&clone_lsn, s_lsn.to_string()).unwrap();

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
            ("DBFORK_CLONE_LSN_FILE", clone_lsn.display().to_string()),
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

/// One page the table refuses more frames for (PageCrowded: 1,024 per page and
/// family) must not hold back the pages registered after it. Before the fix the agent
/// resent the same refused batch on every sync, so nothing behind it was ever shared.
#[test]
fn a_refused_registration_does_not_block_the_pages_behind_it() {
    use dbfork_agent::directory::{PageDirectory, PageTableDirectory};
    use dbfork_agent::frame_store::FrameRecord;
    use dbfork_agent::pool::{Pool, POOL_PAGE};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let shm = pool_dir();
    let daemon = Daemon::start(tmp.path());
    daemon.admin(AdminRequest::FamilyCreate {
        family: FamilyId(1),
    });
    daemon.admin(AdminRequest::FamilyAdd {
        family: FamilyId(1),
        domain: DomainId(1),
    });
    daemon.admin(AdminRequest::BindPid {
        pid: std::process::id(),
        domain: DomainId(1),
    });
    let pool = Arc::new(Pool::open(&shm.path().join("pool"), true).unwrap());
    let page = vec![0u8; POOL_PAGE];
    let crowded = pagetable::MAX_FRAMES_PER_PAGE as u64 + 8;
    for lsn in 1..=crowded {
        let rec = FrameRecord {
            space_id: 5,
            page_no: 7,
            lsn,
            valid_from: 10_000,
        };
        pool.append(&page, rec).unwrap();
    }
    for p in 100..110 {
        let rec = FrameRecord {
            space_id: 5,
            page_no: p,
            lsn: 500,
            valid_from: 10_000,
        };
        pool.append(&page, rec).unwrap();
    }
    let mut dir = PageTableDirectory::new(&daemon.socket, pool);
    // Each sync returns (an error for the refused frames is fine); a few rounds give a
    // resending agent every chance to get through.
    for _ in 0..3 {
        let _ = dir.sync();
    }
    for p in 100..110 {
        let e = dir.lookup(5, p, 600).unwrap();
        assert!(
            e.is_some(),
            "page {p} behind the crowded one was never registered"
        );
    }
    let e = dir
        .lookup(5, 7, 600)
        .unwrap()
        .expect("the crowded page's first frames");
    assert!(e.lsn <= pagetable::MAX_FRAMES_PER_PAGE as u64, "{e:?}");
}
