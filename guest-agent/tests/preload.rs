//! The preload inside real mariadbd processes.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    checksum_query, install_datadir, load_table, require_mariadb, wait_for, Server, ServerOpts,
};
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
    opts.extra_args
        .push("--innodb-buffer-pool-load-at-startup=0".into());
    let s = Server::start(&data, &tmp.path().join("run1"), opts);
    assert_eq!(s.sql(&checksum_query("a")), want);
    let snap = wait_stats(&st, "page reads in stats", |x| x.pages_read_verified >= 20);
    assert_eq!(snap.role, "off");
    assert!(snap.files_identified >= 2, "{snap:?}"); // ibdata1 + t/a.ibd at least
    assert_eq!(snap.files_declined, 0, "{snap:?}");
    assert!(
        snap.reads_page_sized >= snap.pages_read_verified,
        "{snap:?}"
    );
    assert_eq!(
        snap.shared + snap.pages_pooled,
        0,
        "role off never shares: {snap:?}"
    );
    s.shutdown();
    // The exit handler wrote the final numbers.
    let last = stats(&st);
    assert!(last.pages_read_verified >= snap.pages_read_verified);
}

/// With native AIO the server's reads and writes bypass the preload; the agent must
/// notice and keep sharing off, and the server must work normally.
#[test]
fn native_aio_turns_sharing_off_with_a_reason() {
    require_mariadb!();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    install_datadir(&data);
    let s = Server::start(&data, &tmp.path().join("run0"), ServerOpts::plain());
    load_table(&s, "a", 3000);
    let want = s.sql(&checksum_query("a"));
    s.shutdown();

    let shm = common::pool_dir();
    let st = tmp.path().join("stats.json");
    let clone_lsn = tmp.path().join("clone_lsn");
    std::fs::write(&clone_lsn, "1").unwrap();
    let mut opts = ServerOpts::agent(&[
        ("DBFORK_AGENT_ROLE", "source".to_string()),
        (
            "DBFORK_POOL_PATH",
            shm.path().join("pool").display().to_string(),
        ),
        ("DBFORK_CLONE_LSN_FILE", clone_lsn.display().to_string()),
        ("DBFORK_AGENT_STATS", st.display().to_string()),
    ]);
    opts.extra_args.push("--innodb-use-native-aio=1".into());
    let s = Server::start(&data, &tmp.path().join("run1"), opts);
    assert_eq!(s.sql(&checksum_query("a")), want);
    let snap = wait_stats(&st, "sharing off reason", |x| {
        x.sharing_off_reason.is_some()
    });
    let why = snap.sharing_off_reason.clone().unwrap();
    assert!(why.contains("innodb_use_native_aio=0"), "{why}");
    assert!(
        s.log_text().contains("sharing is off"),
        "the error log says why"
    );
    s.shutdown();
    let last = stats(&st);
    assert_eq!(last.pages_pooled, 0, "{last:?}");
}

/// Bad configurations never take the server down: it runs normally, sharing stays
/// off, and the error log and stats say why.
#[test]
fn bad_configuration_leaves_the_server_running_with_a_reason() {
    require_mariadb!();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    install_datadir(&data);
    let s = Server::start(&data, &tmp.path().join("run0"), ServerOpts::plain());
    load_table(&s, "a", 2000);
    let want = s.sql(&checksum_query("a"));
    s.shutdown();

    let missing = tmp.path().join("no/such/dir/pool").display().to_string();
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        // A replica without its snapshot LSN.
        (
            vec![
                ("DBFORK_AGENT_ROLE", "replica".into()),
                ("DBFORK_POOL_PATH", missing.clone()),
            ],
            "DBFORK_SNAPSHOT_LSN",
        ),
        // A source whose pool cannot be created.
        (
            vec![
                ("DBFORK_AGENT_ROLE", "source".into()),
                ("DBFORK_POOL_PATH", missing.clone()),
                ("DBFORK_CLONE_LSN_FILE", "/dev/null".into()),
            ],
            "opening pool file",
        ),
        (
            vec![("DBFORK_AGENT_ROLE", "leader".into())],
            "DBFORK_AGENT_ROLE",
        ),
    ];
    for (i, (env, expect)) in cases.into_iter().enumerate() {
        let st = tmp.path().join(format!("stats{i}.json"));
        let mut env = env;
        env.push(("DBFORK_AGENT_STATS", st.display().to_string()));
        let s = Server::start(
            &data,
            &tmp.path().join(format!("run{}", i + 1)),
            ServerOpts::agent(&env),
        );
        assert_eq!(s.sql(&checksum_query("a")), want, "case {i}");
        let snap = wait_stats(&st, "a reason in stats", |x| x.sharing_off_reason.is_some());
        let why = snap.sharing_off_reason.unwrap();
        assert!(why.contains(expect), "case {i}: {why}");
        assert!(
            s.log_text().contains("sharing is off"),
            "case {i}: log says why"
        );
        assert_eq!(snap.pages_pooled + snap.shared, 0);
        s.shutdown();
    }
}
