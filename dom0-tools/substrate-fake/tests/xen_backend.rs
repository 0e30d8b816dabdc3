//! The Xen backend's logic against the fake Xen (no hypervisor): what a source's and a
//! replica's domain are made from, the order of a start (created paused, the guest's
//! config written before it runs, unpaused, ready, channel), what a failed start
//! leaves (nothing running), stops, and what `health` says; with page sharing, what
//! each domain's agent is handed and what the family's source is told, against the
//! real page table daemon. The real mechanisms are exercised in the Xen lab
//! (experiments/xen-lab).

use dbinstance::InstanceConfig;
use guest_channel::{AgentSetup, Request};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use substrate::xen::{Xen, XenDomain};
use substrate::{
    AgentRole, AgentSpec, DomainState, FsType, Host, NewDomain, StartRequest, Stop, Substrate,
};
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
        Lab::make(false)
    }

    /// With the real page table daemon beside the `dbfork` binary, as an install has it.
    fn sharing() -> Lab {
        Lab::make(true)
    }

    fn make(sharing: bool) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("fake-export");
        if sharing {
            let daemon = experiments_support::testing::workspace_binary("pagetabled", "pagetabled");
            std::os::unix::fs::symlink(daemon, dir.path().join("pagetabled")).unwrap();
        }
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
        self.attach_source_from(&self.source_config())
    }

    fn attach_source_from(&self, cfg: &Path) -> DomainState {
        self.backend
            .attach(
                "db",
                "db",
                &NewDomain::Source {
                    fs: FsType::Ext4,
                    domain_config: Some(cfg),
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

impl Drop for Lab {
    fn drop(&mut self) {
        // The page table daemon, if a test started it.
        self.backend.release_store();
        // The fake exports this lab's domains left (a test that failed before its
        // teardown leaves them running).
        let exe = self.dir.path().join("fake-export");
        let exe = exe.to_string_lossy();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if substrate::process::cmdline(pid).is_some_and(|c| c.iter().any(|a| *a == exe)) {
                kill9(pid);
            }
        }
    }
}

fn start(lab: &Lab, domain: &mut DomainState, cfg: &InstanceConfig) -> substrate::Result<()> {
    start_with(lab, domain, cfg, None)
}

fn start_with(
    lab: &Lab,
    domain: &mut DomainState,
    cfg: &InstanceConfig,
    agent: Option<&AgentSpec>,
) -> substrate::Result<()> {
    lab.backend.start(
        &StartRequest {
            config: cfg,
            volume: &cfg.name,
            agent,
            read_iops: None,
            timeout: Duration::from_secs(5),
        },
        domain,
    )
}

/// Asserts the fake Xen saw call `a`, then later call `b`.
fn assert_called_before(lab: &Lab, a: &str, b: &str) {
    let calls = lab.xen.world().calls.clone();
    let pos = |c: &str| {
        calls
            .iter()
            .position(|x| x == c)
            .unwrap_or_else(|| panic!("{c} in {calls:?}"))
    };
    assert!(pos(a) < pos(b), "{a} before {b}: {calls:?}");
}

fn stop_export(d: &DomainState) {
    let x = xen(d);
    // Only while it is the export still: pids are reused (this machine has 32768), and
    // a stale one may be another test's export by now.
    if let Some(pid) = x
        .export_pid
        .filter(|p| substrate::export::is_export_of(*p, &x.vm))
    {
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

fn attach_replica(lab: &Lab, name: &str, parent: &DomainState) -> DomainState {
    lab.backend
        .attach(
            name,
            name,
            &NewDomain::CloneOf {
                parent_name: "db",
                family: "db",
                parent,
                memory_mib: None,
                vcpus: None,
            },
        )
        .unwrap()
}

/// The source's agent in family 1, asking for a 64 MiB pool.
fn source_agent() -> AgentSpec {
    AgentSpec {
        family: 1,
        domain: 1,
        role: AgentRole::Source {
            pool_max_bytes: 64 << 20,
        },
    }
}

fn agent_setup(lab: &Lab, vm: &str) -> AgentSetup {
    AgentSetup::decode(lab.xen.world().domains[vm].keys["agent"].as_bytes()).unwrap()
}

/// The calls made for domain `domid` (and its name), in order.
fn calls_of(lab: &Lab, domid: u32, name: &str) -> Vec<String> {
    lab.xen
        .world()
        .calls
        .iter()
        .filter(|c| {
            let mut w = c.split(' ');
            let (_, who) = (w.next(), w.next());
            who == Some(&domid.to_string()) || who == Some(name)
        })
        .cloned()
        .collect()
}

#[test]
fn a_sharing_family_hands_each_agent_its_setup_and_keeps_the_source_told() {
    let lab = Lab::sharing();
    lab.backend.sharing_available().unwrap();
    let mut src = lab.attach_source();
    let src_cfg = instance("db", 1);
    let source_agent = source_agent();
    start_with(&lab, &mut src, &src_cfg, Some(&source_agent)).unwrap();
    // The agent's setup and the page table's channel are in place before it runs.
    assert_eq!(
        calls_of(&lab, 1, "db"),
        [
            "create db",
            "write 1 instance",
            "write 1 format",
            "write 1 agent",
            "pagetable 1",
            "unpause 1",
            "channel 1"
        ]
    );
    let setup = agent_setup(&lab, "db");
    assert_eq!((setup.family, setup.domain), (1, 1));
    // Under Xen's default grant tables (64 frames a domain, 8 kept for the source's
    // own devices) two replicas of 64 MiB do not fit: the pool is capped at 56 MiB.
    assert_eq!(
        setup.role,
        guest_channel::AgentRole::Source {
            pool_max_bytes: 56 << 20,
            clone_lsn: 0,
            grantees: vec![]
        }
    );
    assert_eq!(lab.backend.clone_lsn(1), Some(0));

    // A clone's LSN reaches the source's agent, whose counters dom0 reads back.
    lab.backend.publish_clone_lsn(1, 500).unwrap();
    assert_eq!(lab.backend.clone_lsn(1), Some(500));
    assert!(lab
        .xen
        .world()
        .asked
        .contains(&(1, Request::PublishCloneLsn { lsn: 500 })));
    assert_eq!(lab.backend.agent_counters(&src).unwrap()["offers"], 1);

    // A replica is its source's grantee before its first instruction, and no longer
    // once it stopped.
    let mut r1 = attach_replica(&lab, "r1", &src);
    let r1_cfg = instance("r1", 2);
    let replica_agent = AgentSpec {
        family: 1,
        domain: 2,
        role: AgentRole::Replica { snapshot_lsn: 500 },
    };
    start_with(&lab, &mut r1, &r1_cfg, Some(&replica_agent)).unwrap();
    assert_called_before(&lab, "ask 1 set_grantees", "unpause 2");
    assert_called_before(&lab, "pagetable 2", "unpause 2");
    assert_eq!(
        agent_setup(&lab, "r1").role,
        guest_channel::AgentRole::Replica { snapshot_lsn: 500 }
    );
    let grantees = |lab: &Lab| {
        lab.xen
            .world()
            .asked
            .iter()
            .rev()
            .find_map(|(d, r)| match r {
                Request::SetGrantees { domids } if *d == 1 => Some(domids.clone()),
                _ => None,
            })
    };
    assert_eq!(grantees(&lab), Some(vec![2]));
    // The replica's config asks for a maptrack holding all of the source's frames:
    // Xen's default (1024 frames) does, so it is left as it was.
    assert!(!lab.xen.world().domains["r1"]
        .config
        .contains("max_maptrack_frames"));

    // The source stopped while its replica runs: the replica first copies what it
    // maps from it.
    lab.backend.stop(&src_cfg, &src, Stop::Kill).unwrap();
    assert_called_before(&lab, "ask 2 release_source", "destroy db");
    // Stopped, its agent cannot be told anything: a clone now shares nothing, and
    // says why.
    let e = lab.backend.publish_clone_lsn(1, 600).unwrap_err();
    assert!(matches!(e, substrate::Error::SharingUnavailable(_)), "{e}");
    assert!(e.to_string().contains("start it"), "{e}");
    // Restarted, it is handed the clone LSN published last and its running replica.
    start_with(&lab, &mut src, &src_cfg, Some(&source_agent)).unwrap();
    assert!(matches!(
        agent_setup(&lab, "db").role,
        guest_channel::AgentRole::Source { clone_lsn: 500, ref grantees, .. } if grantees == &[2]
    ));
    let src_domid = lab.xen.world().domains["db"].domid;
    lab.backend
        .stop(&r1_cfg, &r1, Stop::Clean(Duration::from_secs(1)))
        .unwrap();
    assert!(lab
        .xen
        .world()
        .asked
        .contains(&(src_domid, Request::SetGrantees { domids: vec![] })));

    // The family's end takes dom0's record of it.
    lab.backend.stop(&src_cfg, &src, Stop::Kill).unwrap();
    lab.backend.destroy_family(1);
    assert_eq!(lab.backend.clone_lsn(1), None);
    for d in [&src, &r1] {
        lab.backend.detach(&xen(d).vm, d).unwrap();
    }
}

#[test]
fn a_replica_whose_source_cannot_be_told_starts_no_domain_and_says_why() {
    let lab = Lab::sharing();
    let src = lab.attach_source();
    let mut r1 = attach_replica(&lab, "r1", &src);
    let r1_cfg = instance("r1", 2);
    let e = start_with(
        &lab,
        &mut r1,
        &r1_cfg,
        Some(&AgentSpec {
            family: 1,
            domain: 2,
            role: AgentRole::Replica { snapshot_lsn: 9 },
        }),
    )
    .unwrap_err();
    // Sharing is unavailable (the orchestration starts it again without), and the
    // domain it created is gone.
    assert!(matches!(e, substrate::Error::SharingUnavailable(_)), "{e}");
    assert!(lab.xen.world().domains.is_empty());
    assert!(!lab
        .xen
        .world()
        .calls
        .iter()
        .any(|c| c.starts_with("unpause")));
    // Started without the agent, it runs.
    start(&lab, &mut r1, &r1_cfg).unwrap();
    assert!(xen(&r1).agent.is_none());
    lab.backend.stop(&r1_cfg, &r1, Stop::Kill).unwrap();
    for d in [&src, &r1] {
        lab.backend.detach(&xen(d).vm, d).unwrap();
    }
}

#[test]
fn a_sources_grant_table_is_sized_to_its_pool_and_an_operators_low_limit_raised() {
    let lab = Lab::sharing();
    // Xen booted with room for it: nothing is capped, and the operator's own
    // max_grant_frames (too small for the plan) is raised to the table the pool needs.
    lab.xen.world().xen_commandline = "placeholder gnttab_max_frames=256".into();
    let cfg_file = lab.dir.path().join("db-low.cfg");
    std::fs::write(&cfg_file, format!("{SOURCE_CFG}max_grant_frames = 16\n")).unwrap();
    let mut src = lab.attach_source_from(&cfg_file);
    let src_cfg = instance("db", 1);
    let spec = source_agent();
    start_with(&lab, &mut src, &src_cfg, Some(&spec)).unwrap();
    assert!(matches!(
        agent_setup(&lab, "db").role,
        guest_channel::AgentRole::Source { pool_max_bytes, .. } if pool_max_bytes == 64 << 20
    ));
    // 4096 frames x 4 grants x 2 replicas = 64 table frames, plus 8 of its own.
    let created = lab.xen.world().domains["db"].config.clone();
    assert!(created.contains("max_grant_frames = 72"), "{created}");
    lab.backend.stop(&src_cfg, &src, Stop::Kill).unwrap();

    // Xen booted with a table too small to share anything: sharing is unavailable,
    // naming the boot option to set, and no domain was created.
    lab.xen.world().xen_commandline = "placeholder gnttab_max_frames=8".into();
    lab.xen.world().calls.clear();
    let e = start_with(&lab, &mut src, &src_cfg, Some(&spec)).unwrap_err();
    assert!(matches!(e, substrate::Error::SharingUnavailable(_)), "{e}");
    assert!(e.to_string().contains("gnttab_max_frames="), "{e}");
    assert!(
        lab.xen.world().calls.is_empty(),
        "{:?}",
        lab.xen.world().calls
    );
    lab.backend.detach("db", &src).unwrap();
}
