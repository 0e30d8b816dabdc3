//! The preload inside real mariadbd processes.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{checksum_query, install_datadir, load_table, require_mariadb, wait_for, Server, ServerOpts};
use dbfork_agent::stats::StatsSnapshot;

fn stats(path: &Path) -> StatsSnapshot {
    StatsSnapshot::read_from(path).unwrap_or_default()
}

fn wait_stats(path: &Path, what: &str, cond: impl Fn(&StatsSnapshot) -> bool) -> StatsSnapshot {
    wait_for(Duration::from_secs(30), what, || cond(&stats(path)));
    stats(path)
}

#[test]
fn role_off_identifies_data_files_and_counts_verified_page_reads() {
    require_mariadb!();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    install_datadir(&data);
    let s = Server::start(&data, &tmp.path().join("run0"), ServerOpts::plain());
    load_table(&s, "a", 5000);
    let want = s.sql(&checksum_query("a"));
    s.shutdown();

    let st = tmp.path().join("stats.json");
    let mut opts = ServerOpts::agent(&[("DBFORK_AGENT_STATS", st.display().to_string())]);
    opts.extra_args.push("--innodb-buffer-pool-load-at-startup=0".into());
    let s = Server::start(&data, &tmp.path().join("run1"), opts);
    assert_eq!(s.sql(&checksum_query("a")), want);
    let snap = wait_stats(&st, "page reads in stats", |x| x.pages_read_verified >= 20);
    assert_eq!(snap.role, "off");
    assert!(snap.files_identified >= 2, "{snap:?}"); // ibdata1 + t/a.ibd at least
    assert_eq!(snap.files_declined, 0, "{snap:?}");
    assert!(snap.reads_page_sized >= snap.pages_read_verified, "{snap:?}");
    assert_eq!(snap.shared + snap.pages_pooled, 0, "role off never shares: {snap:?}");
    s.shutdown();
    // The exit handler wrote the final numbers.
    let last = stats(&st);
    assert!(last.pages_read_verified >= snap.pages_read_verified);
}
