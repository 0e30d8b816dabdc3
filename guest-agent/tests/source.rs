//! Source role in a real mariadbd: verified reads move into the family pool.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use dbfork_agent::page::{self, SpaceFormat};
use dbfork_agent::pool::{decode_record, meta_path, POOL_PAGE, RECORD_LEN};
use dbfork_agent::stats::StatsSnapshot;

fn stats(path: &Path) -> StatsSnapshot {
    StatsSnapshot::read_from(path).unwrap_or_default()
}

/// Every pool slot still holds exactly the page its record names.
fn check_pool(pool: &Path) -> usize {
    let data = std::fs::read(pool).unwrap();
    let meta = std::fs::read(meta_path(pool)).unwrap();
    let mut n = 0;
    for (slot, rec) in meta.chunks_exact(RECORD_LEN).enumerate() {
        let r = decode_record(rec).expect("complete record");
        let bytes = &data[slot * POOL_PAGE..(slot + 1) * POOL_PAGE];
        let h = page::verify_identity(bytes, SpaceFormat::FullCrc32, r.space_id, r.page_no)
            .unwrap_or_else(|e| panic!("slot {slot} ({r:?}): {e}"));
        assert_eq!(h.lsn, r.lsn, "slot {slot}");
        n += 1;
    }
    n
}

#[test]
fn source_pools_verified_reads_and_server_writes_stay_private() {
    require_mariadb!();
    let tmp = tempfile::tempdir().unwrap();
    let shm = pool_dir();
    let data = tmp.path().join("data");
    install_datadir(&data);
    let s = Server::start(&data, &tmp.path().join("run0"), ServerOpts::plain());
    load_table(&s, "a", 20000);
    let want = s.sql(&checksum_query("a"));
    s.shutdown();

    let pool = shm.path().join("pool");
    let clone_lsn = tmp.path().join("clone_lsn");
    std::fs::write(&clone_lsn, format!("{}\n", max_page_lsn(&data))).unwrap();
    let st = tmp.path().join("stats.json");
    let env = [
        ("DBFORK_AGENT_ROLE", "source".to_string()),
        ("DBFORK_POOL_PATH", pool.display().to_string()),
        ("DBFORK_CLONE_LSN_FILE", clone_lsn.display().to_string()),
        ("DBFORK_AGENT_STATS", st.display().to_string()),
    ];
    let mut opts = ServerOpts::agent(&env);
    opts.extra_args
        .push("--innodb-buffer-pool-load-at-startup=0".into());
    let s = Server::start(&data, &tmp.path().join("run1"), opts);
    assert_eq!(
        s.sql(&checksum_query("a")),
        want,
        "same results with the agent"
    );
    wait_for(Duration::from_secs(30), "pooled pages in stats", || {
        stats(&st).pages_pooled >= 100
    });
    let snap = stats(&st);
    assert_eq!(snap.sharing_off_reason, None, "{snap:?}");
    assert_eq!(
        snap.pages_registered + snap.register_deferred,
        snap.pages_pooled,
        "{snap:?}"
    );
    assert!(mappings_of(s.pid(), &pool) > 0, "frames map the pool");
    let before = check_pool(&pool);
    assert!(before >= 100);

    // The server now modifies most pooled frames in memory; kernel CoW must keep
    // every pool slot exactly as registered.
    s.sql("UPDATE t.a SET k = k + 1, pad = REPEAT('z', 200) WHERE id % 3 = 0");
    let after_update = s.sql(&checksum_query("a"));
    assert_ne!(after_update, want);
    s.sql("SET GLOBAL innodb_max_dirty_pages_pct = 0");
    assert!(check_pool(&pool) >= before);
    s.shutdown();
    assert!(check_pool(&pool) >= before);

    // What the agent-run server wrote is what a plain server reads back.
    let s = Server::start(&data, &tmp.path().join("run2"), ServerOpts::plain());
    assert_eq!(s.sql(&checksum_query("a")), after_update);
    s.shutdown();
}
