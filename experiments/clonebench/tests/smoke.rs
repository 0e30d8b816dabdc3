//! The whole bench against the real dbfork binary and real servers, on a tiny
//! dataset: it must produce the ratios and leave nothing behind.

use std::path::PathBuf;
use std::process::Command;

/// The dbfork binary: $CLONEBENCH_DBFORK, else one built into this target dir
/// (debug or release).
fn dbfork_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CLONEBENCH_DBFORK") {
        return Some(PathBuf::from(p));
    }
    let me = PathBuf::from(env!("CARGO_BIN_EXE_clonebench"));
    let profile_dir = me.parent()?;
    let target = profile_dir.parent()?;
    [profile_dir.join("dbfork"), target.join("release/dbfork")]
        .into_iter()
        .find(|p| p.is_file())
}

#[test]
fn quick_run_reports_ratios_and_cleans_up() {
    let Some(dbfork) = dbfork_binary() else {
        eprintln!(
            "skipped: no dbfork binary in this target dir; build it first \
             (cargo build --release -p dbfork with the same CARGO_TARGET_DIR) \
             or set CLONEBENCH_DBFORK"
        );
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let out = base.path().join("results.md");
    let res = Command::new(env!("CARGO_BIN_EXE_clonebench"))
        .arg("--quick")
        .args([
            "--sizes",
            "2x1000",
            "--tests",
            "none",
            "--volume-size",
            "1G",
        ])
        .args(["--buffer-pool", "64M"])
        .arg("--dbfork")
        .arg(&dbfork)
        .arg("--base-dir")
        .arg(base.path())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "clonebench failed:\n{stderr}");
    let md = std::fs::read_to_string(&out).unwrap();
    let line = md
        .lines()
        .find(|l| l.contains("time to first query, native / dbfork, 2 x 1k rows"))
        .unwrap_or_else(|| panic!("no ratio line in:\n{md}"));
    let value = line.split('|').nth(2).unwrap().trim();
    let x: f64 = value
        .trim_end_matches('x')
        .parse()
        .unwrap_or_else(|_| panic!("{line}"));
    assert!(x > 0.0, "{line}");
    assert!(md.contains("| dbfork clone |") && md.contains("| native (mariadb-backup) |"));
    // Everything the run made lived in a cb-* dir under the base dir; it is gone.
    let left: Vec<_> = std::fs::read_dir(base.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cb-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_bad_plan_fails_before_touching_anything() {
    let base = tempfile::tempdir().unwrap();
    let res = Command::new(env!("CARGO_BIN_EXE_clonebench"))
        .args(["--quick", "--dbfork", "/nonexistent/dbfork", "--base-dir"])
        .arg(base.path())
        .output()
        .unwrap();
    assert!(!res.status.success());
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(stderr.contains("/nonexistent/dbfork"), "{stderr}");
    assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0);
}
