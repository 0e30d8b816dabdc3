//! Golden tests: a replica's config derived from real-looking source configs (ours in
//! `tests/golden/`, and Debian's `xlexample.*` from xen-utils-common, which
//! scripts/install-deps extracts into target/xen-examples) is compared with the
//! expected file beside each. `UPDATE_GOLDEN=1` writes the expected files anew (review
//! the diff). Every source key but the ones a replica must change survives.

use std::path::{Path, PathBuf};
use xlcfg::replica::{replica_config, ReplicaSpec};
use xlcfg::XlConfig;

/// The replica of `file` as text: its config and notes, or the error.
fn derive(file: &Path, database_vdev: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let src = XlConfig::parse(&text).unwrap();
    // Reading and writing back changes nothing.
    assert_eq!(src.render(), text, "{} does not round-trip", file.display());
    let spec = ReplicaSpec {
        name: "r1",
        parent: "src",
        family: "src",
        database_vdev,
        database_target: "unix:/var/lib/dbfork/run/r1.nbd",
        memory_mib: Some(1024),
        vcpus: Some(2),
    };
    match replica_config(&src, &spec) {
        Ok(r) => {
            let out = r.config.render();
            let again = XlConfig::parse(&out).unwrap();
            // Keys the replica keeps are the source's (unknown ones too).
            for key in src.keys() {
                if [
                    "name", "uuid", "disk", "vif", "memory", "maxmem", "vcpus", "maxvcpus",
                ]
                .contains(&key)
                {
                    continue;
                }
                assert_eq!(again.get(key), src.get(key), "{key} in {}", file.display());
            }
            assert_eq!(again.get_str("name").as_deref(), Some("r1"));
            assert!(again.get("uuid").is_none());
            let mut s = out;
            for n in r.notes {
                s.push_str(&format!("# note: {n}\n"));
            }
            s
        }
        Err(e) => format!("refused: {e}\n"),
    }
}

fn check(file: &Path, database_vdev: &str, expected: &Path) {
    let got = derive(file, database_vdev);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(expected, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(expected)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", expected.display()));
    assert_eq!(
        got,
        want,
        "{} differs from {}",
        file.display(),
        expected.display()
    );
}

#[test]
fn replicas_of_our_configs_match_their_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "cfg")
            && !p.to_string_lossy().ends_with(".replica.cfg")
        {
            let vdev = if p.to_string_lossy().contains("legacy") {
                "xvda2"
            } else {
                "xvdb"
            };
            check(&p, vdev, &p.with_extension("replica.cfg"));
            n += 1;
        }
    }
    assert_eq!(n, 6);
}

fn debian_examples() -> PathBuf {
    std::env::var_os("XEN_EXAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/xen-examples/etc/xen")
        })
}

#[test]
fn replicas_of_debians_example_configs_match_their_golden_files() {
    let dir = debian_examples();
    if !dir.join("xlexample.pvlinux").exists() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "{} is missing: scripts/install-deps extracts Debian's xl examples there",
                dir.display()
            );
        }
        eprintln!(
            "SKIP: no Debian xl examples at {} (scripts/install-deps extracts them)",
            dir.display()
        );
        return;
    }
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/debian");
    for name in ["xlexample.pvlinux", "xlexample.pvhlinux", "xlexample.hvm"] {
        check(
            &dir.join(name),
            "xvda",
            &golden.join(format!("{name}.replica.cfg")),
        );
    }
}

/// A source's config keeps everything but its database disk (now dbfork's) and gains
/// dbfork's keys; a source with a writable OS disk is accepted with a note (its
/// replicas are refused at clone time), HVM and PCI passthrough are refused at once.
#[test]
fn source_configs_serve_the_database_disk_through_dbfork() {
    use xlcfg::replica::{source_config, SourceSpec};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let spec = |name| SourceSpec {
        name,
        database_vdev: "xvdb",
        database_target: "nbd+unix:///db?socket=/s/db.nbd",
    };
    let read = |f: &str| XlConfig::parse(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap();

    let src = read("pv-writable-os.cfg");
    let out = source_config(&src, &spec("db")).unwrap();
    let again = XlConfig::parse(&out.config.render()).unwrap();
    assert_eq!(again.get_str("name").as_deref(), Some("db"));
    assert!(
        out.notes.iter().any(|n| n.contains("name set")),
        "{:?}",
        out.notes
    );
    let disks: Vec<String> = again
        .get("disk")
        .unwrap()
        .as_list()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(disks[0], "/srv/xen/rw-os.img,raw,xvda,rw");
    assert!(
        disks[1].contains("script=block-dbfork") && disks[1].contains("nbd+unix:///db"),
        "{disks:?}"
    );
    assert_eq!(again.get_str("dbfork_role").as_deref(), Some("source"));
    assert_eq!(again.get("bootloader"), src.get("bootloader"));

    // Named after the instance already: only the writable disk's note.
    let same = source_config(&src, &spec("rw-os")).unwrap();
    assert_eq!(same.notes.len(), 1, "{:?}", same.notes);
    assert!(
        same.notes[0].contains("disk xvda is writable")
            && same.notes[0].contains("clones are refused"),
        "{:?}",
        same.notes
    );
    // A read-only OS disk: no note at all.
    let ro = XlConfig::parse(&src.render().replace("xvda,rw", "xvda,ro")).unwrap();
    let out = source_config(&ro, &spec("rw-os")).unwrap();
    assert!(out.notes.is_empty(), "{:?}", out.notes);

    for refused in ["hvm.cfg", "pv-pci.cfg"] {
        let e = source_config(&read(refused), &spec("db")).unwrap_err();
        assert!(
            matches!(e, xlcfg::Error::Unsupported { .. }),
            "{refused}: {e}"
        );
    }
    let e = source_config(
        &src,
        &SourceSpec {
            database_vdev: "xvdz",
            ..spec("db")
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("xvda, xvdb"), "{e}");
}
