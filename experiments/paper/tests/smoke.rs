//! paperrun end to end on a tiny plan: both scenarios' code paths are the same, so
//! scenario R on both storage models with one native and two dbfork configurations
//! (the cold anchor included) against real servers. It must write the CSVs, the
//! summary with the ratio table and, with gnuplot installed, the figures; and it must
//! leave no server, mount, loop device, IO group or pool behind.

use std::path::Path;
use std::process::Command;

/// Mounts under `base`, and IO groups of paperrun process `pid` (native replicas'
/// groups; dbfork's own are checked by dbfork's tests).
fn ours_left(base: &Path, pid: u32) -> Vec<String> {
    let mut left: Vec<String> = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&*base.to_string_lossy()))
        .map(str::to_string)
        .collect();
    for root in ["/sys/fs/cgroup/blkio", "/sys/fs/cgroup"] {
        if let Ok(rd) = std::fs::read_dir(root) {
            left.extend(
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("paperrun-{pid}-"))),
            );
        }
    }
    left
}

#[test]
fn tiny_matrix_writes_every_output_and_cleans_up() {
    let dbfork = Path::new(env!("CARGO_BIN_EXE_paperrun"))
        .parent()
        .unwrap()
        .join("dbfork");
    if !dbfork.is_file() {
        eprintln!(
            "SKIP tiny_matrix_writes_every_output_and_cleans_up: no {} (cargo build --workspace first)",
            dbfork.display()
        );
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/sbin/mariadbd").exists() {
        eprintln!(
            "SKIP tiny_matrix_writes_every_output_and_cleans_up: needs root and mariadb-server"
        );
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let out = base.path().join("out");
    let results = base.path().join("results.md");
    let run = Command::new(env!("CARGO_BIN_EXE_paperrun"))
        .args([
            "--scale",
            "small",
            "--scenario",
            "r",
            "--storage",
            "both",
            "--configs",
            "default,lazy_share,cold",
            "--lead",
            "3",
            "--interval",
            "12",
            "--replicas",
            "1",
            "--anchor-replicas",
            "1",
            "--tables",
            "1",
            "--rows",
            "2000",
        ])
        .arg("--base-dir")
        .arg(base.path())
        .arg("--out")
        .arg(&out)
        .arg("--results")
        .arg(&results)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = run.id();
    let run = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "paperrun failed:\n{stderr}");
    // One progress line per run when stderr is not a terminal.
    for k in 1..=6 {
        assert!(stderr.contains(&format!("run {k}/6")), "{stderr}");
    }

    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    let appended = std::fs::read_to_string(&results).unwrap();
    assert!(appended.trim_end().ends_with(summary.trim()), "{appended}");
    for storage in ["plain", "throttled"] {
        assert!(
            summary.contains(&format!("#### Scenario R, {storage} storage")),
            "{summary}"
        );
    }
    for row in ["| default |", "| lazy_share |", "| cold |"] {
        assert_eq!(
            summary.matches(row).count(),
            2,
            "{row} once per storage:\n{summary}"
        );
    }
    assert!(
        summary.contains("| creation: default / lazy_share, first query | 18x"),
        "{summary}"
    );
    assert!(!summary.contains("FAILED"), "{summary}");

    // Every replica has a first-query time, and each instance a tps and PSS series.
    let replicas = std::fs::read_to_string(out.join("replicas.csv")).unwrap();
    let rows: Vec<Vec<&str>> = replicas
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 6, "{replicas}");
    for r in &rows {
        let first_query: f64 = r[4].parse().unwrap();
        assert!(first_query > 0.0, "{replicas}");
    }
    let tps = std::fs::read_to_string(out.join("tps.csv")).unwrap();
    let mem = std::fs::read_to_string(out.join("memory.csv")).unwrap();
    for (storage, config) in [
        ("plain", "default"),
        ("throttled", "cold"),
        ("plain", "lazy_share"),
    ] {
        for inst in ["src", "r1"] {
            let key = format!("R,{storage},{config},");
            let has = |text: &str| {
                text.lines()
                    .any(|l| l.starts_with(&key) && l.split(',').nth(4) == Some(inst))
            };
            assert!(has(&tps), "no tps of {inst} in {storage}/{config}");
            assert!(has(&mem), "no PSS of {inst} in {storage}/{config}");
        }
    }
    // dbfork replicas report hydration; native ones do not.
    let hyd = std::fs::read_to_string(out.join("hydration.csv")).unwrap();
    assert!(
        hyd.lines().any(|l| l.starts_with("R,plain,lazy_share,")),
        "{hyd}"
    );
    assert!(
        !hyd.lines().any(|l| l.starts_with("R,plain,default,")),
        "{hyd}"
    );

    if Command::new("gnuplot").arg("--version").output().is_ok() {
        for f in [
            "fig3-R-plain.png",
            "fig4-R-throttled.png",
            "warmup-R-throttled.png",
        ] {
            let p = out.join(f);
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            assert!(len > 1000, "{} missing or empty", p.display());
        }
    } else {
        eprintln!("no gnuplot: figures not checked (scripts/install-deps installs gnuplot-nox)");
    }

    // Nothing left: the stores under base are gone, no mounts or groups of ours.
    let stores: Vec<_> = std::fs::read_dir(base.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("paper-"))
        .collect();
    assert!(stores.is_empty(), "stores left: {stores:?}");
    let left = ours_left(base.path(), pid);
    assert!(left.is_empty(), "left behind: {left:?}");
}
