//! Source + replica mariadbd processes sharing pages through the family pool.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use dbfork_agent::stats::StatsSnapshot;
use pagetable::admin::AdminRequest;
use pagetable::{DomainId, FamilyId};

fn stats(path: &Path) -> StatsSnapshot {
    StatsSnapshot::read_from(path).unwrap_or_default()
}

struct Family {
    tmp: tempfile::TempDir,
    _shm: tempfile::TempDir,
    pool: PathBuf,
    clone_lsn: PathBuf,
    runs: u32,
    /// With a daemon, the directory is pagetabled (family 1); without, the pool index.
    daemon: Option<Daemon>,
    domains: Vec<PathBuf>,
}

impl Family {
    fn new() -> Family {
        let tmp = tempfile::tempdir().unwrap();
        let shm = pool_dir();
        let pool = shm.path().join("pool");
        let clone_lsn = tmp.path().join("clone_lsn");
        Family {
            tmp,
            _shm: shm,
            pool,
            clone_lsn,
            runs: 0,
            daemon: None,
            domains: vec![],
        }
    }

    fn with_daemon() -> Family {
        let mut f = Family::new();
        let d = Daemon::start(f.tmp.path());
        d.admin(AdminRequest::FamilyCreate {
            family: FamilyId(1),
        });
        f.daemon = Some(d);
        f
    }

    /// The daemon domain of a datadir (one per instance, kept across restarts).
    fn domain_of(&mut self, data: &Path) -> DomainId {
        if let Some(i) = self.domains.iter().position(|d| d == data) {
            return DomainId(i as u32 + 1);
        }
        self.domains.push(data.to_owned());
        let d = DomainId(self.domains.len() as u32);
        self.daemon
            .as_ref()
            .unwrap()
            .admin(AdminRequest::FamilyAdd {
                family: FamilyId(1),
                domain: d,
            });
        d
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// dbfork's job after a snapshot: publish its LSN as the family's clone LSN.
    fn publish_snapshot(&self, s: u64) {
        std::fs::write(&self.clone_lsn, format!("{s}\n")).unwrap();
    }

    fn start(&mut self, data: &Path, role: &str, snapshot: Option<u64>) -> (Server, PathBuf) {
        self.start_with(data, role, snapshot, &[])
    }

    fn start_with(
        &mut self,
        data: &Path,
        role: &str,
        snapshot: Option<u64>,
        extra: &[&str],
    ) -> (Server, PathBuf) {
        self.runs += 1;
        let st = self.path(&format!("stats{}.json", self.runs));
        let mut env = vec![
            ("DBFORK_AGENT_ROLE", role.to_string()),
            ("DBFORK_POOL_PATH", self.pool.display().to_string()),
            (
                "DBFORK_CLONE_LSN_FILE",
                self.clone_lsn.display().to_string(),
            ),
            ("DBFORK_AGENT_STATS", st.display().to_string()),
        ];
        if let Some(s) = snapshot {
            env.push(("DBFORK_SNAPSHOT_LSN", s.to_string()));
            let writes = data.parent().unwrap().join(format!(
                "{}.writes",
                data.file_name().unwrap().to_string_lossy()
            ));
            env.push(("DBFORK_REPLICA_WRITES", writes.display().to_string()));
        }
        let mut bind = None;
        if self.daemon.is_some() {
            let domain = self.domain_of(data);
            let d = self.daemon.as_ref().unwrap();
            env.push(("DBFORK_PAGETABLE_SOCKET", d.socket.display().to_string()));
            let admin = d.admin.clone();
            bind = Some(move |pid: u32| {
                pagetable::admin::AdminClient::connect(&admin)
                    .unwrap()
                    .call(&AdminRequest::BindPid { pid, domain })
                    .unwrap();
            });
        }
        let mut opts = ServerOpts::agent(&env);
        if let Some(b) = bind {
            opts.before_exec = Some(Box::new(b));
        }
        opts.extra_args
            .push("--innodb-buffer-pool-load-at-startup=0".into());
        opts.extra_args.extend(extra.iter().map(|a| a.to_string()));
        let run = self.path(&format!("run{}", self.runs));
        (Server::start(data, &run, opts), st)
    }

    fn start_plain(&mut self, data: &Path) -> Server {
        self.runs += 1;
        let run = self.path(&format!("run{}", self.runs));
        Server::start(data, &run, ServerOpts::plain())
    }
}

/// A cleanly shut down datadir with table t.a, and its checksum.
fn seeded(f: &mut Family, rows: u32) -> (PathBuf, String) {
    let data = f.path("source");
    install_datadir(&data);
    let s = f.start_plain(&data);
    load_table(&s, "a", rows);
    let sum = s.sql(&checksum_query("a"));
    s.shutdown();
    (data, sum)
}

#[test]
fn replica_shares_source_pages_with_identical_results() {
    require_mariadb!();
    replica_shares(Family::new());
}

#[test]
fn replica_shares_source_pages_through_the_page_table_daemon() {
    require_mariadb!();
    replica_shares(Family::with_daemon());
}

fn replica_shares(mut f: Family) {
    let (src, want) = seeded(&mut f, 20000);
    let rep = f.path("replica");
    copy_datadir(&src, &rep);
    let s_lsn = max_page_lsn(&rep);
    f.publish_snapshot(s_lsn);

    let (source, src_st) = f.start(&src, "source", None);
    assert_eq!(source.sql(&checksum_query("a")), want);
    wait_for(Duration::from_secs(30), "source pooled pages", || {
        stats(&src_st).pages_pooled >= 100
    });

    let (replica, rep_st) = f.start(&rep, "replica", Some(s_lsn));
    assert_eq!(
        replica.sql(&checksum_query("a")),
        want,
        "replica with sharing"
    );
    assert_eq!(
        replica.sql("SELECT COUNT(*) FROM t.a FORCE INDEX(k) WHERE k < 500"),
        source.sql("SELECT COUNT(*) FROM t.a FORCE INDEX(k) WHERE k < 500")
    );
    wait_for(Duration::from_secs(30), "shared pages", || {
        stats(&rep_st).shared >= 50
    });
    let snap = stats(&rep_st);
    assert_eq!(snap.sharing_off_reason, None, "{snap:?}");
    assert_eq!(snap.declined_verify, 0, "{snap:?}");
    assert_eq!(
        snap.pages_pooled, 0,
        "a replica never adds to the pool: {snap:?}"
    );
    assert!(mappings_of(replica.pid(), &f.pool) > 0);

    // The source changes rows after the replica's snapshot. The replica must keep
    // returning its snapshot's rows, with its cache cold (restart) and warm.
    source.sql("UPDATE t.a SET k = k + 1000 WHERE id <= 10000");
    let changed = source.sql(&checksum_query("a"));
    assert_ne!(changed, want);
    source.shutdown(); // flushes the new versions
    let (source, src_st2) = f.start(&src, "source", None);
    assert_eq!(source.sql(&checksum_query("a")), changed); // re-reads (and pools) new versions
    wait_for(Duration::from_secs(30), "new versions pooled", || {
        stats(&src_st2).pages_pooled >= 100
    });
    assert_eq!(replica.sql(&checksum_query("a")), want, "warm replica");
    replica.shutdown();
    let (replica, rep_st2) = f.start(&rep, "replica", Some(s_lsn));
    assert_eq!(
        replica.sql(&checksum_query("a")),
        want,
        "cold replica after source change"
    );
    wait_for(Duration::from_secs(30), "shared pages", || {
        stats(&rep_st2).shared >= 50
    });
    replica.shutdown();

    // Sharing off: the same datadir read by a plain server gives the same rows.
    let plain = f.start_plain(&rep);
    assert_eq!(
        plain.sql(&checksum_query("a")),
        want,
        "replica without sharing"
    );
    plain.shutdown();
    source.shutdown();
}

/// The valid_from clause: frames the source read BEFORE a snapshot, and changed
/// before it, are registered with an LSN <= S but are stale; they must not be served.
#[test]
fn frames_read_before_the_snapshot_are_never_served() {
    require_mariadb!();
    let mut f = Family::new();
    let (src, want) = seeded(&mut f, 20000);
    f.publish_snapshot(max_page_lsn(&src)); // an earlier snapshot

    let (source, src_st) = f.start(&src, "source", None);
    assert_eq!(source.sql(&checksum_query("a")), want);
    wait_for(Duration::from_secs(30), "source pooled pages", || {
        stats(&src_st).pages_pooled >= 100
    });
    source.sql("UPDATE t.a SET k = k + 1000 WHERE id % 2 = 0");
    let changed = source.sql(&checksum_query("a"));
    source.shutdown();

    // The new snapshot: a copy of the changed source.
    let rep = f.path("replica");
    copy_datadir(&src, &rep);
    let s_lsn = max_page_lsn(&rep);
    f.publish_snapshot(s_lsn);

    let (replica, rep_st) = f.start(&rep, "replica", Some(s_lsn));
    assert_eq!(
        replica.sql(&checksum_query("a")),
        changed,
        "no stale frame served"
    );
    wait_for(Duration::from_secs(30), "declines counted", || {
        stats(&rep_st).declined_before_snapshot >= 50
    });
    let snap = stats(&rep_st);
    assert_eq!(
        snap.shared, 0,
        "every pooled frame predates the snapshot: {snap:?}"
    );
    replica.shutdown();

    // After the snapshot the source re-reads its pages; those frames are valid for S.
    let (source, src_st) = f.start(&src, "source", None);
    assert_eq!(source.sql(&checksum_query("a")), changed);
    wait_for(Duration::from_secs(30), "source pooled pages", || {
        stats(&src_st).pages_pooled >= 100
    });
    let (replica, rep_st) = f.start(&rep, "replica", Some(s_lsn));
    assert_eq!(replica.sql(&checksum_query("a")), changed);
    wait_for(Duration::from_secs(30), "shared pages", || {
        stats(&rep_st).shared >= 50
    });
    replica.shutdown();
    source.shutdown();
}

/// Pages the replica wrote itself are its own from then on, even if the pool holds a
/// valid frame for them.
#[test]
fn pages_written_by_the_replica_are_not_shared_again() {
    require_mariadb!();
    let mut f = Family::new();
    let (src, want) = seeded(&mut f, 20000);
    let rep = f.path("replica");
    copy_datadir(&src, &rep);
    let s_lsn = max_page_lsn(&rep);
    f.publish_snapshot(s_lsn);
    let (source, src_st) = f.start(&src, "source", None);
    assert_eq!(source.sql(&checksum_query("a")), want);
    wait_for(Duration::from_secs(30), "source pooled pages", || {
        stats(&src_st).pages_pooled >= 100
    });

    let (replica, rep_st) = f.start(&rep, "replica", Some(s_lsn));
    replica.sql("UPDATE t.a SET pad = REPEAT('r', 200) WHERE id % 5 = 0");
    let mine = replica.sql(&checksum_query("a"));
    // Flush the replica's changes and push its pages out of the buffer pool by
    // reading a larger table, so the next scan of t.a reads from "disk" again.
    replica.sql("SET GLOBAL innodb_max_dirty_pages_pct = 0");
    wait_for(Duration::from_secs(60), "replica flushed", || {
        replica
            .sql(
                "SELECT variable_value FROM information_schema.global_status \
                     WHERE variable_name = 'INNODB_BUFFER_POOL_PAGES_DIRTY'",
            )
            .trim()
            == "0"
    });
    let written = stats(&rep_st).pages_written;
    assert!(written > 0);
    assert_eq!(replica.sql(&checksum_query("a")), mine);
    replica.shutdown();

    // A restarted replica reads everything again; the pool still holds valid frames
    // (LSN <= S, read after S) for the pages the replica changed. Serving them would
    // silently undo the replica's own writes.
    let (replica, rep_st) = f.start(&rep, "replica", Some(s_lsn));
    assert_eq!(
        replica.sql(&checksum_query("a")),
        mine,
        "replica's own writes survive"
    );
    // Own pages declined, the others still shared (stats are dumped every 200 ms).
    wait_for(
        Duration::from_secs(10),
        "declines and shares counted",
        || {
            let snap = stats(&rep_st);
            snap.declined_written > 0 && snap.shared > 0
        },
    );
    replica.shutdown();
    source.shutdown();
}

/// Buffer pools far smaller than the table: frames mapped from the pool are evicted
/// and reused for other pages (real reads into mapped frames on the source, shared
/// maps over previously shared frames on the replica), scan after scan.
#[test]
fn small_buffer_pools_reuse_mapped_frames_correctly() {
    require_mariadb!();
    let mut f = Family::new();
    let (src, want) = seeded(&mut f, 60000); // ~20 MB of rows
    let rep = f.path("replica");
    copy_datadir(&src, &rep);
    let s_lsn = max_page_lsn(&rep);
    f.publish_snapshot(s_lsn);
    let small = ["--innodb-buffer-pool-size=6M"];
    let (source, src_st) = f.start_with(&src, "source", None, &small);
    let (replica, rep_st) = f.start_with(&rep, "replica", Some(s_lsn), &small);
    let bp = replica
        .sql("SELECT @@innodb_buffer_pool_size")
        .trim()
        .parse::<u64>()
        .unwrap();
    assert!(bp <= 8 << 20, "buffer pool is {bp}");
    for round in 0..3 {
        assert_eq!(
            source.sql(&checksum_query("a")),
            want,
            "source round {round}"
        );
        assert_eq!(
            replica.sql(&checksum_query("a")),
            want,
            "replica round {round}"
        );
        let q = "SELECT SUM(id) FROM t.a FORCE INDEX(k) WHERE k BETWEEN 100 AND 300";
        assert_eq!(replica.sql(q), source.sql(q), "index scan round {round}");
    }
    let pool_pages = 6 * 1024 * 1024 / 16384;
    // Stats are dumped every 200 ms: wait for the final counts of this workload.
    wait_for(Duration::from_secs(10), "workload counted", || {
        let (a, b) = (stats(&src_st), stats(&rep_st));
        a.pages_remapped > 0 && a.pages_pooled > pool_pages && b.shared > pool_pages
    });
    let (src_snap, rep_snap) = (stats(&src_st), stats(&rep_st));
    assert!(
        src_snap.pages_remapped > 0,
        "re-reads map existing slots: {src_snap:?}"
    );
    assert!(
        src_snap.pages_pooled > pool_pages,
        "frames were reused: {src_snap:?}"
    );
    assert!(
        rep_snap.shared > pool_pages,
        "shared frames were reused: {rep_snap:?}"
    );
    assert_eq!(rep_snap.declined_verify, 0, "{rep_snap:?}");
    assert_eq!(rep_snap.sharing_off_reason, None);
    replica.shutdown();
    source.shutdown();
}

/// At clone time the source offers its whole warm set: after dbfork publishes the new
/// snapshot, the source agent scans its buffer pool and pools every clean frame with
/// valid_from = the new clone LSN. Without the scan every pooled frame here predates the
/// snapshot and nothing could be shared.
#[test]
fn clone_time_scan_offers_the_warm_set_to_the_new_replica() {
    require_mariadb!();
    clone_time_scan(Family::new());
}

/// With the daemon the frames still mapped from the pool and unchanged are revalidated
/// under the new clone LSN instead of copied; the rest is re-pooled under the same LSN
/// (the daemon breaks such ties towards the older frame, so the agent withdraws it).
#[test]
fn clone_time_scan_through_the_page_table_daemon() {
    require_mariadb!();
    clone_time_scan(Family::with_daemon());
}

fn clone_time_scan(mut f: Family) {
    if !Path::new("/usr/bin/mariadb-backup").exists() {
        eprintln!("skipping: mariadb-backup is not installed");
        return;
    }
    let (src, want) = seeded(&mut f, 20000);
    f.publish_snapshot(max_page_lsn(&src)); // an earlier snapshot
    let (source, src_st) = f.start(&src, "source", None);
    assert_eq!(source.sql(&checksum_query("a")), want);
    wait_for(Duration::from_secs(30), "source pooled pages", || {
        stats(&src_st).pages_pooled >= 100
    });
    // Few rows change: most pages are re-pooled by the scan under an unchanged LSN.
    source.sql("UPDATE t.a SET k = k + 7 WHERE id <= 500");
    let changed = source.sql(&checksum_query("a"));
    // Clean frames are what the scan can verify; make every frame clean.
    source.sql("SET GLOBAL innodb_max_dirty_pages_pct = 0");
    wait_for(Duration::from_secs(60), "source flushed", || {
        source
            .sql(
                "SELECT variable_value FROM information_schema.global_status \
             WHERE variable_name = 'INNODB_BUFFER_POOL_PAGES_DIRTY'",
            )
            .trim()
            == "0"
    });
    assert_eq!(stats(&src_st).scans, 0);

    let rep = f.path("replica");
    let s_lsn = backup_running(&source, &rep);
    // The source keeps writing while the scan copies frames and moves them onto their
    // stored copies (a write to a frame being moved waits in the agent's fault
    // handler): no write may be lost.
    let sum_k = |s: &Server| {
        s.sql("SELECT SUM(k) FROM t.a")
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    let increments: i64 = source
        .sql("SELECT COUNT(*) FROM t.a WHERE id % 50 < 25")
        .trim()
        .parse()
        .unwrap();
    let before = sum_k(&source);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..25 {
                source.sql(&format!("UPDATE t.a SET k = k + 1 WHERE id % 50 = {i}"));
            }
        });
        f.publish_snapshot(s_lsn);
        wait_for(Duration::from_secs(30), "clone-time scan", || {
            stats(&src_st).scans >= 1
        });
    });
    assert_eq!(
        sum_k(&source),
        before + increments,
        "a write to the source was lost"
    );
    let s = stats(&src_st);
    // The copies made replace the source's own frames (one copy in memory).
    assert!(s.frames_moved > 0, "{s:?}");
    assert!(s.frames_moved <= s.scan_frames_pooled, "{s:?}");
    // Offered: revalidated where the frame is still the stored page (the daemon keeps
    // such declarations), a copy otherwise (always, with the pool index alone).
    assert!(s.frames_revalidated + s.scan_frames_pooled >= 100, "{s:?}");
    if f.daemon.is_some() {
        assert!(
            s.frames_revalidated >= 100,
            "unchanged pages copied again: {s:?}"
        );
    } else {
        assert_eq!(s.frames_revalidated, 0, "{s:?}");
    }

    let (replica, rep_st) = f.start(&rep, "replica", Some(s_lsn));
    assert_eq!(replica.sql(&checksum_query("a")), changed);
    wait_for(Duration::from_secs(30), "shared pages", || {
        stats(&rep_st).shared >= 100
    });
    assert_eq!(stats(&rep_st).declined_verify, 0);
    // Moved frames are the source's own pages still: it reads and changes them.
    source.sql("UPDATE t.a SET k = k - 1 WHERE id % 50 < 25");
    assert_eq!(sum_k(&source), before);
    replica.shutdown();
    source.shutdown();
}
