//! Every CLI error names the problem (and where it can, the fix), exits non-zero and
//! changes nothing.

mod common;
use common::*;

#[test]
fn errors_name_the_problem() {
    let store = TestStore::new();
    let err = store.fails(&["volume", "status", "ghost"]);
    assert!(
        err.contains("unknown volume") && err.contains("ghost"),
        "{err}"
    );

    store.ok(&["volume", "create", "a", "--size", "16M"]);
    let err = store.fails(&["volume", "create", "a", "--size", "16M"]);
    assert!(err.contains("already exists"), "{err}");

    let err = store.fails(&["volume", "create", "b", "--size", "12Q"]);
    assert!(err.contains("unknown unit"), "{err}");

    let err = store.fails(&["volume", "clone", "a", "c"]);
    assert!(err.contains("not a snapshot"), "{err}");

    store.ok(&["volume", "snapshot", "a", "s"]);
    store.ok(&["volume", "clone", "s", "c", "--no-hydrate"]);
    let err = store.fails(&["volume", "delete", "s"]);
    assert!(err.contains("in use") && err.contains('c'), "{err}");

    let err = store.fails(&["volume", "clone", "s", "c"]);
    assert!(err.contains("already exists"), "{err}");

    let err = store.fails(&["volume", "clone", "s", "d", "--region-size", "3000"]);
    assert!(err.contains("region size"), "{err}");

    let err = store.fails(&["volume", "clone", "s", "d", "--rate=0"]);
    assert!(err.contains("positive"), "{err}");

    let ranges = store.path().join("ranges.txt");
    std::fs::write(&ranges, "0 4K\nnonsense\n").unwrap();
    let err = store.fails(&[
        "volume",
        "prefetch",
        "c",
        "--ranges",
        ranges.to_str().unwrap(),
    ]);
    assert!(err.contains("line 2"), "{err}");
    std::fs::write(&ranges, "15M 2M\n").unwrap();
    let err = store.fails(&[
        "volume",
        "prefetch",
        "c",
        "--ranges",
        ranges.to_str().unwrap(),
    ]);
    assert!(err.contains("outside"), "{err}");

    let err = store.fails(&["volume", "import", "i", "/nonexistent/image.raw"]);
    assert!(err.contains("not a file"), "{err}");

    let err = store.fails(&["volume", "detach", "a"]);
    assert!(err.contains("not attached"), "{err}");

    let err = store.fails(&["volume", "export", "a", "--nbd", "ftp:x"]);
    assert!(err.contains("unix:PATH"), "{err}");

    // A Xen source needs a dom0 (and says so before anything is made); a domain config
    // is refused for a local source, with what it is for; a clone runs where its
    // parent runs.
    for args in [
        &["source", "create", "x", "--substrate", "xen"][..],
        &["source", "create", "x", "--domain-config", "/etc/xen/x.cfg"][..],
    ] {
        let err = store.fails(args);
        assert!(
            err.contains("not a Xen dom0") && err.contains("--substrate local"),
            "{err}"
        );
    }
    let err = store.fails(&[
        "source",
        "create",
        "x",
        "--substrate",
        "local",
        "--domain-config",
        "/etc/xen/x.cfg",
    ]);
    assert!(err.contains("--substrate xen"), "{err}");
    let err = store.fails(&["clone", "a", "x", "--substrate", "xen"]);
    assert!(err.contains("a"), "{err}");

    // --json errors are JSON too.
    let out = store.run(&["--json", "volume", "status", "ghost"]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("ghost"), "{v}");

    // None of that changed the store.
    let names: Vec<String> = store
        .json(&["volume", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["a", "c", "s"]);
}

#[test]
fn prefetch_of_a_closed_clone_hydrates_those_ranges() {
    let store = TestStore::new();
    let img = store.path().join("base.raw");
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i / 4096) as u8).collect();
    std::fs::write(&img, &data).unwrap();
    store.ok(&["volume", "import", "base", img.to_str().unwrap()]);
    store.ok(&["volume", "snapshot", "base", "s"]);
    store.ok(&[
        "volume",
        "clone",
        "s",
        "c",
        "--no-hydrate",
        "--region-size",
        "64K",
    ]);
    let before = store.json(&["volume", "status", "c"]);
    assert_eq!(before["hydrated_bytes"], 0, "{before}");
    let ranges = store.path().join("r.txt");
    std::fs::write(&ranges, "# two ranges\n0 64K\n1M 128K\n").unwrap();
    store.ok(&[
        "volume",
        "prefetch",
        "c",
        "--ranges",
        ranges.to_str().unwrap(),
    ]);
    let after = store.json(&["volume", "status", "c"]);
    assert_eq!(after["hydrated_bytes"], 3 * 65536, "{after}");
}

/// Runs `dbfork args...` with its stdout a pipe whose reader is already gone.
fn with_closed_stdout(args: &[&str]) -> std::process::Output {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) writes two fds into the array we own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both fds are fresh and owned here; the read end is closed at once.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    let child = std::process::Command::new(DBFORK)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn a_reader_that_went_away_is_not_a_panic() {
    let store = TestStore::new();
    store.ok(&["volume", "create", "a", "--size", "16M"]);
    let s = store.path().to_str().unwrap();
    for args in [
        &["--store", s, "volume", "list"][..],
        &["--store", s, "--json", "volume", "list"][..],
        &["--store", s, "volume", "status", "a"][..],
        &["--store", s, "--json", "volume", "status", "a"][..],
        &["--store", s, "list"][..],
        &["--store", s, "--json", "list"][..],
        &["--store", s, "--json", "status", "ghost"][..],
        &["--help"][..],
    ] {
        let out = with_closed_stdout(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_ne!(out.status.code(), Some(101), "{args:?}: {stderr}");
    }
}

#[test]
fn a_store_that_is_not_a_directory_and_bad_numbers_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let missing = dir.path().join("nothing-here");
    for (store, want) in [(&file, "not a directory"), (&missing, "no such directory")] {
        for verb in [&["list"][..], &["status", "x"], &["volume", "list"]] {
            let out = std::process::Command::new(DBFORK)
                .arg("--store")
                .arg(store)
                .args(verb)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{verb:?} on {}", store.display());
            assert!(err.contains(want) && err.contains("--store"), "{err}");
        }
    }
    // The verbs that make a store may find it missing; boot units find nothing to do.
    let out = std::process::Command::new(DBFORK)
        .arg("--store")
        .arg(&missing)
        .args(["start", "--all"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let store = TestStore::new();
    for (args, want) in [
        (
            &["source", "create", "x", "--size", "-5G"][..],
            "must be positive",
        ),
        (
            &["volume", "create", "x", "--size", "-1"][..],
            "must be positive",
        ),
        (
            &["clone", "a", "b", "--rate", "-1"][..],
            "positive number of MiB/s",
        ),
        (&["clone", "a", "b", "--read-iops", "-3"][..], "-3"),
        (
            &["source", "create", "x", "--buffer-pool", "-128M"][..],
            "must be positive",
        ),
    ] {
        let err = store.fails(args);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("unexpected argument"), "{args:?}: {err}");
    }
    assert!(!store.path().join("instances").join("x").exists());
}
