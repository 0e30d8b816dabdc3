//! The Xen backend's logic against the fake Xen (no hypervisor): what a source's and a
//! replica's domain are made from, the order of a start (created paused, the guest's
//! config written before it runs, unpaused, ready, channel), what a failed start
//! leaves (nothing running), stops, and what `health` says. The real mechanisms are
//! exercised in the Xen lab (experiments/xen-lab).

use dbinstance::InstanceConfig;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use substrate::xen::{Xen, XenDomain};
use substrate::{DomainState, FsType, Host, NewDomain, StartRequest, Stop, Substrate};
use substrate_fake::xen::{FakeXen, GuestBehaviour};

/// A stand-in for `dbfork volume export NAME --nbd unix:PATH`: listens on PATH until
/// killed (the backend checks an export by its command line and its socket). Debian's
/// python3 by its path: a python3 found on PATH may be a wrapper (pyenv's shim) whose
/// pid is not the listener's, so killing the recorded pid would leave the socket served.
const FAKE_EXPORT: &str = r#"#!/usr/bin/python3
import os, socket, sys, time
path = sys.argv[sys.argv.index("--nbd") + 1].removeprefix("unix:")
if os.path.exists(path):
    os.unlink(path)
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(8)
while True:
    time.sleep(3600)
"#;

const SOURCE_CFG: &str = r#"name = "db"
type = "pv"
kernel = "/boot/vmlinuz"
memory = 512
vif = [ 'mac=00:16:3e:00:10:02, bridge=xenbr0' ]
disk = [ 'phy:/dev/vg0/os,xvda,r', 'vdev=xvdb, access=rw, target=/dev/vg0/db' ]
"#;

struct Lab {
    dir: tempfile::TempDir,
    xen: FakeXen,
    backend: Xen,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("fake-export");
        std::fs::write(&exe, FAKE_EXPORT).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let xen = FakeXen::default();
        let backend = Xen::with_control(
            Host {
                store_dir: dir.path().join("store"),
                dbfork_exe: exe,
            },
            Box::new(xen.clone()),
        )
        .without_boot_allowance();
        Lab { dir, xen, backend }
    }

    fn source_config(&self) -> PathBuf {
        let p = self.dir.path().join("db.cfg");
        std::fs::write(&p, SOURCE_CFG).unwrap();
        p
    }

    fn attach_source(&self) -> DomainState {
        let cfg = self.source_config();
        self.backend
            .attach(
                "db",
                "db",
                &NewDomain::Source {
                    fs: FsType::Ext4,
                    domain_config: Some(&cfg),
                    database_vdev: "xvdb",
                },
            )
            .unwrap()
    }
}

fn xen(d: &DomainState) -> &XenDomain {
    match d {
        DomainState::Xen(x) => x,
        other => panic!("not a xen domain: {other:?}"),
    }
}

fn instance(name: &str, server_id: u32) -> InstanceConfig {
    InstanceConfig::in_dir(name, Path::new("/unused"), 3306, server_id)
}

fn start(lab: &Lab, domain: &mut DomainState, cfg: &InstanceConfig) -> substrate::Result<()> {
    lab.backend.start(
        &StartRequest {
            config: cfg,
            volume: &cfg.name,
            agent: None,
            read_iops: None,
            timeout: Duration::from_secs(5),
        },
        domain,
    )
}

fn stop_export(d: &DomainState) {
    if let Some(pid) = xen(d).export_pid {
        kill9(pid);
    }
}

fn kill9(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
}

#[test]
fn a_source_domain_serves_its_database_disk_from_the_volume_and_boots_in_order() {
    let lab = Lab::new();
    let mut d = lab.attach_source();
    let x = xen(&d).clone();
    assert_eq!((x.vm.as_str(), x.vdev.as_str()), ("db", "xvdb"));
    assert_eq!(x.format, Some(FsType::Ext4));
    assert!(
        x.xl_config.contains("script=block-dbfork"),
        "{}",
        x.xl_config
    );
    assert!(x.xl_config.contains("nbd+unix:///db?socket="));
    assert!(x.xl_config.contains("phy:/dev/vg0/os,xvda,r"));
    assert!(x.xl_config.contains("dbfork_role = \"source\""));

    let cfg = instance("db", 1);
    start(&lab, &mut d, &cfg).unwrap();
    {
        let w = lab.xen.world();
        // Created paused, handed its config and its first-boot format, then unpaused,
        // and only then its channel.
        assert_eq!(
            w.calls,
            [
                "create db",
                "write 1 instance",
                "write 1 format",
                "unpause 1",
                "channel 1"
            ]
        );
        let dom = &w.domains["db"];
        assert_eq!(dom.config, x.xl_config);
        let guest: InstanceConfig = serde_json::from_str(&dom.keys["instance"]).unwrap();
        assert_eq!(guest.server_id, 1);
        assert_eq!(guest.datadir, Path::new("/var/lib/dbfork/data"));
        assert_eq!(dom.keys["format"], "ext4");
    }
    // The first boot formatted the disk: the next does not.
    assert_eq!(xen(&d).format, None);
    assert!(lab.backend.running(&cfg, &d));
    assert!(lab.backend.health(&cfg, "db", &d).problems.is_empty());
    // The database is reached through the channel.
    let db = lab.backend.endpoint(&cfg, &d).unwrap();
    db.require_binlog().unwrap();

    lab.backend
        .stop(&cfg, &d, Stop::Clean(Duration::from_secs(1)))
        .unwrap();
    assert!(!lab.backend.running(&cfg, &d));
    lab.xen.world().calls.clear();
    start(&lab, &mut d, &cfg).unwrap();
    assert!(!lab.xen.world().calls.iter().any(|c| c.contains("format")));
    lab.backend.stop(&cfg, &d, Stop::Kill).unwrap();
    assert_eq!(lab.xen.world().calls.last().unwrap(), "destroy db");
    lab.backend.detach("db", &d).unwrap();
    assert!(!substrate::export::is_export_of(
        xen(&d).export_pid.unwrap(),
        "db"
    ));
}

#[test]
fn a_replica_domain_is_its_parents_with_a_new_identity_and_the_clones_disk() {
    let lab = Lab::new();
    let parent = lab.attach_source();
    let r = lab
        .backend
        .attach(
            "r1",
            "r1",
            &NewDomain::CloneOf {
                parent_name: "db",
                family: "db",
                parent: &parent,
                memory_mib: Some(768),
                vcpus: Some(2),
            },
        )
        .unwrap();
    let x = xen(&r);
    assert_eq!(
        (x.vm.as_str(), x.vdev.as_str(), x.format),
        ("r1", "xvdb", None)
    );
    assert!(x.xl_config.contains("name = \"r1\""));
    assert!(x.xl_config.contains("nbd+unix:///r1?socket="));
    assert!(
        !x.xl_config.contains("00:16:3e:00:10:02"),
        "{}",
        x.xl_config
    );
    assert!(x.xl_config.contains("memory = 768"));
    assert!(x.xl_config.contains("dbfork_parent = \"db\""));
    stop_export(&parent);
    stop_export(&r);
}

#[test]
fn a_failed_start_says_why_and_leaves_no_domain() {
    for (behaviour, expect) in [
        (
            GuestBehaviour::Fails("mkfs.ext4 /dev/xvdb: no space".into()),
            "mkfs.ext4 /dev/xvdb: no space",
        ),
        (GuestBehaviour::Dies, "died while starting"),
        (GuestBehaviour::Silent, "did not report a running server"),
    ] {
        let lab = Lab::new();
        let mut d = lab.attach_source();
        lab.xen.world().behaviour = behaviour;
        let e = start(&lab, &mut d, &instance("db", 1)).unwrap_err();
        let text = substrate::error::chain(&e);
        assert!(text.contains(expect), "{text}");
        assert!(text.contains("[console of db]"), "{text}");
        assert!(lab.xen.world().domains.is_empty());
        assert!(!lab
            .xen
            .world()
            .calls
            .iter()
            .any(|c| c.starts_with("channel")));
        // The first boot did not happen: the next start still formats.
        assert_eq!(xen(&d).format, Some(FsType::Ext4));
        stop_export(&d);
    }
}

#[test]
fn what_xen_domains_cannot_do_is_refused_with_the_fix() {
    let lab = Lab::new();
    let mut d = lab.attach_source();
    let cfg = instance("db", 1);
    let e = lab
        .backend
        .start(
            &StartRequest {
                config: &cfg,
                volume: "db",
                agent: None,
                read_iops: Some(100),
                timeout: Duration::from_secs(5),
            },
            &mut d,
        )
        .unwrap_err();
    assert!(e.to_string().contains("--read-iops"), "{e}");
    assert!(lab.xen.world().calls.is_empty());

    // A source without its domU's config.
    let e = lab
        .backend
        .attach(
            "x",
            "x",
            &NewDomain::Source {
                fs: FsType::Ext4,
                domain_config: None,
                database_vdev: "xvdb",
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("--domain-config"), "{e}");

    // A config without the named database disk.
    let cfg_file = lab.source_config();
    let e = lab
        .backend
        .attach(
            "y",
            "y",
            &NewDomain::Source {
                fs: FsType::Ext4,
                domain_config: Some(&cfg_file),
                database_vdev: "xvdq",
            },
        )
        .unwrap_err();
    assert!(
        substrate::error::chain(&e).contains("no disk with vdev xvdq"),
        "{}",
        substrate::error::chain(&e)
    );
    assert!(lab.backend.sharing_available().is_err());
    stop_export(&d);
}

#[test]
fn health_names_a_dead_export_and_reattach_brings_one_back() {
    let lab = Lab::new();
    let mut d = lab.attach_source();
    let cfg = instance("db", 1);
    start(&lab, &mut d, &cfg).unwrap();
    stop_export(&d);
    let pid = xen(&d).export_pid.unwrap();
    assert!(substrate::process::wait_until(
        Duration::from_secs(10),
        || {
            substrate::process::reap_if_child(pid);
            !substrate::export::is_export_of(pid, "db")
        }
    ));
    let h = lab.backend.health(&cfg, "db", &d);
    assert!(
        h.problems
            .iter()
            .any(|p| p.contains("export process of volume db")),
        "{:?}",
        h.problems
    );
    // A start needs the disk served.
    lab.backend.stop(&cfg, &d, Stop::Kill).unwrap();
    assert!(start(&lab, &mut d, &cfg).is_err());
    let mut again = lab.backend.reattach("db", "db", &d).unwrap();
    assert_ne!(xen(&again).export_pid, Some(pid));
    start(&lab, &mut again, &cfg).unwrap();
    stop_export(&again);
}
