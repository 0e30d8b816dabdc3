//! `dbfork source adopt --check` against real servers the store does not manage (an
//! operator's own): what it reads, each refusal with its fix, and nothing made in
//! the store either way.

mod common;

use common::cluster::Cluster;
use common::{have, TestStore};
use experiments_support::testing::{test_config, InstanceGuard};

fn adopt_check(socket: &str) -> Vec<String> {
    vec![
        "source".into(),
        "adopt".into(),
        "base".into(),
        "--socket".into(),
        socket.into(),
        "--check".into(),
    ]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The store holds nothing: the preflight changes nothing.
fn assert_store_empty(store: &TestStore) {
    assert_eq!(store.json(&["list"]), serde_json::json!([]));
    assert_eq!(store.json(&["volume", "list"]), serde_json::json!([]));
}

#[test]
fn the_preflight_reads_the_operators_server_and_names_what_keeps_it_from_adoption() {
    let Some(c) = Cluster::new() else { return };
    let store = &c.store;
    let server = InstanceGuard::source("ops", 41).unwrap();
    let socket = server.config().socket_path().display().to_string();

    let v = store.json(&args(&adopt_check(&socket)));
    assert_eq!(v["refusals"], serde_json::json!([]), "{v}");
    assert_eq!(v["server_id"], 41);
    assert_eq!(v["log_bin"], true);
    assert!(v["version"].as_str().unwrap().contains("MariaDB"), "{v}");
    let text = store.ok(&args(&adopt_check(&socket)));
    assert!(text.contains("passes the preflight"), "{text}");

    // The server's id is one the store's instances use: replication would skip events.
    c.source("db");
    let names = |what: &[&str]| -> Vec<String> {
        store
            .json(what)
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].to_string())
            .collect()
    };
    let before = (names(&["list"]), names(&["volume", "list"]));
    let db_id = c.cfg("db").server_id;
    server
        .exec(&format!("SET GLOBAL server_id = {db_id}"))
        .unwrap();
    let err = store.fails(&args(&adopt_check(&socket)));
    assert!(err.contains("dbfork instance db's"), "{err}");
    assert!(err.contains("set another server_id"), "{err}");
    server.exec("SET GLOBAL server_id = 41").unwrap();

    // A socket with no server behind it.
    let err = store.fails(&args(&adopt_check("/nonexistent/mysqld.sock")));
    assert!(err.contains("no server socket"), "{err}");
    // Nothing was made or changed in the store.
    assert_eq!((names(&["list"]), names(&["volume", "list"])), before);
    store.ok(&["destroy", "db"]);
}

#[test]
fn a_server_without_a_binary_log_is_refused_with_the_setting_to_change() {
    assert!(
        have("mariadbd"),
        "MariaDB's server is needed (CI installs it)"
    );
    let store = TestStore::new();
    let (mut cfg, dir) = test_config("nobin", 42).unwrap();
    cfg.binlog = false;
    let server = InstanceGuard::init_and_start(cfg, dir).unwrap();
    let socket = server.config().socket_path().display().to_string();
    let v = store.run(&[
        "--json", "source", "adopt", "base", "--socket", &socket, "--check",
    ]);
    assert!(!v.status.success());
    let err = String::from_utf8_lossy(&v.stderr);
    assert!(
        err.contains("binary log is off") && err.contains("log_bin"),
        "{err}"
    );
    assert_store_empty(&store);
}
