//! A filesystem made through the attach path, a file tree copied in, snapshot while
//! mounted, clone, attach the clone: the clone holds exactly the tree as it was at the
//! snapshot, whatever the source does afterwards. Real FUSE, loop, mkfs and mount.

mod common;
use common::*;
use std::time::Duration;

fn roundtrip(fs: &str) {
    if !can_attach() || !have(&format!("mkfs.{fs}")) {
        return;
    }
    let store = TestStore::new();
    store.ok(&["volume", "create", "src", "--size", "320M"]);
    let src_mp = store.mountpoint("src");
    store.ok(&[
        "volume",
        "attach",
        "src",
        src_mp.to_str().unwrap(),
        "--mkfs",
        fs,
    ]);
    let tree = write_tree(&src_mp, 7, 60);

    store.ok(&["volume", "snapshot", "src", "snap"]);
    // After the snapshot: change, add and delete on the source.
    std::fs::write(src_mp.join(&tree[0].0), b"changed after the snapshot").unwrap();
    std::fs::write(src_mp.join("after.txt"), b"new").unwrap();
    std::fs::remove_file(src_mp.join(&tree[1].0)).unwrap();
    std::process::Command::new("sync").status().unwrap();

    store.ok(&["volume", "clone", "snap", "c1", "--rate", "20"]);
    let c_mp = store.mountpoint("c1");
    store.ok(&["volume", "attach", "c1", c_mp.to_str().unwrap()]);
    check_tree(&c_mp, &tree);
    assert!(!c_mp.join("after.txt").exists());

    // The clone is writable and its writes stay its own.
    std::fs::write(c_mp.join("clone-only.txt"), b"mine").unwrap();
    assert!(!src_mp.join("clone-only.txt").exists());

    // While clones depend on it, the snapshot cannot go.
    let err = store.fails(&["volume", "delete", "snap"]);
    assert!(err.contains("c1"), "{err}");

    // Background hydration finishes and the clone says it is independent.
    let independent = wait_until(Duration::from_secs(120), || {
        store.json(&["volume", "status", "c1"])["independent"] == true
    });
    assert!(independent, "clone never became independent");
    store.ok(&["volume", "detach", "c1"]);
    store.ok(&["volume", "delete", "snap"]);

    // Reattach after the snapshot is gone: the clone stands alone.
    store.ok(&["volume", "attach", "c1", c_mp.to_str().unwrap()]);
    let mut expect = tree.clone();
    expect.push(("clone-only.txt".into(), sha256_bytes(b"mine")));
    check_tree(&c_mp, &expect);
    store.ok(&["volume", "detach", "c1"]);
    store.ok(&["volume", "detach", "src"]);
    let list = store.json(&["volume", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}

#[test]
fn ext4_tree_survives_snapshot_and_clone() {
    roundtrip("ext4");
}

#[test]
fn xfs_tree_survives_snapshot_and_clone() {
    roundtrip("xfs");
}

#[test]
fn failed_attach_leaves_nothing_behind() {
    if !can_attach() {
        return;
    }
    let store = TestStore::new();
    store.ok(&["volume", "create", "v", "--size", "64M"]);
    let mp = store.mountpoint("v");
    // No filesystem on a fresh volume: mount fails, everything is undone.
    let err = store.fails(&["volume", "attach", "v", mp.to_str().unwrap()]);
    assert!(err.contains("mount"), "{err}");
    assert!(!store.path().join("run/v.attach.json").exists());
    assert!(!store.path().join("run/v.fuse").exists());
    let st = store.json(&["volume", "status", "v"]);
    assert!(st["open_by_pid"].is_null(), "export left running: {st}");
    // And it can be attached properly right after.
    store.ok(&[
        "volume",
        "attach",
        "v",
        mp.to_str().unwrap(),
        "--mkfs",
        "ext4",
    ]);
    let err = store.fails(&["volume", "attach", "v", mp.to_str().unwrap()]);
    assert!(err.contains("already attached"), "{err}");
    store.ok(&["volume", "detach", "v"]);
}
