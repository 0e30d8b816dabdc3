//! The orchestration (source create, the clone's steps, destroy, the records) on the
//! in-memory substrate: no root, MariaDB, FUSE or hypervisor needed, so every failure
//! path is driven, not only the ones a real host can be made to hit. The volume
//! engine under it is the real one, in a temporary store.

use dbfork::clone::{CloneOpts, Step};
use dbfork::ctx::Ctx;
use dbfork::registry::{InstanceRecord, Registry, Role};
use dbfork::source::SourceOptions;
use dbfork::Error;
use std::collections::BTreeSet;
use substrate::FsType;
use substrate_fake::Fake;

struct Harness {
    dir: tempfile::TempDir,
    fake: Fake,
    ctx: Ctx,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fake = Fake::new(dir.path());
        let ctx = Ctx::with_substrate(dir.path(), Box::new(fake.clone()));
        Harness { dir, fake, ctx }
    }
    fn source(&self, name: &str) -> InstanceRecord {
        dbfork::source::create(
            &self.ctx,
            name,
            &SourceOptions {
                size: 64 << 20,
                buffer_pool: 64 << 20,
                fs: FsType::Ext4,
                port: None,
                region_size: lazyvol::DEFAULT_REGION_SIZE,
                engine: dbfork::source::VolumeEngine::Lazy,
                domain_config: None,
                database_vdev: "xvdb".into(),
            },
        )
        .unwrap()
    }
    fn clone(&self, src: &str, new: &str) -> dbfork::Result<InstanceRecord> {
        self.clone_with(src, new, &CloneOpts::default())
    }
    fn clone_with(&self, src: &str, new: &str, opts: &CloneOpts) -> dbfork::Result<InstanceRecord> {
        dbfork::clone::clone(&self.ctx, src, new, opts, &|_| {})
    }
    fn destroy(&self, name: &str, with_replicas: bool) -> dbfork::Result<()> {
        dbfork::destroy::destroy(&self.ctx, name, with_replicas, &|_| {})
    }
    fn registry(&self) -> Registry {
        self.ctx.registry()
    }
    fn volumes(&self) -> BTreeSet<String> {
        self.ctx
            .store()
            .unwrap()
            .list()
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect()
    }
    /// Nothing of instance `name` (domain `domain_id`) is left anywhere: no record, run
    /// dir, volume, snapshot, attachment, server or family membership.
    fn assert_gone(&self, name: &str, domain_id: Option<u32>) {
        assert!(!self.registry().exists(name), "record of {name} left");
        assert!(
            !self.registry().run_dir(name).exists(),
            "run dir of {name} left"
        );
        let vols = self.volumes();
        assert!(
            !vols
                .iter()
                .any(|v| v == name || v.ends_with(&format!(".at.{name}"))),
            "volumes of {name} left: {vols:?}"
        );
        let w = self.fake.world();
        assert!(!w.attached.contains_key(name), "{name} still attached");
        assert!(!w.running.contains_key(name), "{name} still running");
        assert!(
            w.frozen.is_empty(),
            "a filesystem left frozen: {:?}",
            w.frozen
        );
        if let Some(d) = domain_id {
            assert!(
                w.families.values().all(|f| !f.members.contains(&d)),
                "{name} still in its family"
            );
        }
    }
}

fn step_of(e: &Error) -> Option<Step> {
    match e {
        Error::Step { step, .. } => Some(*step),
        _ => None,
    }
}

#[test]
fn a_clone_runs_its_steps_in_order_and_records_a_replica_of_its_parent() {
    let h = Harness::new();
    let src = h.source("src");
    assert_eq!(src.role, Role::Source);
    let m = src.sharing.clone().expect("the source shares");
    assert_eq!(
        (m.family_id, m.domain_id),
        (src.config.server_id, src.config.server_id)
    );

    let calls0 = h.fake.world().calls.len();
    let r1 = h.clone("src", "r1").unwrap();
    let calls: Vec<String> = h.fake.world().calls[calls0..].to_vec();
    // The order that makes a clone consistent and warm: commits held around the
    // quiesced snapshot, the clone LSN published after it, the volume attached before
    // its hydration is ordered, the server started before replication.
    let pos = |c: &str| {
        calls
            .iter()
            .position(|x| x == c)
            .unwrap_or_else(|| panic!("{c} not called: {calls:?}"))
    };
    assert!(pos("endpoint:hold_commits src") < pos("quiesce src"));
    assert!(pos("quiesce src") < pos(&format!("publish_clone_lsn {}", m.family_id)));
    assert!(pos(&format!("publish_clone_lsn {}", m.family_id)) < pos("attach r1"));
    assert!(pos("attach r1") < pos("hydration_order r1"));
    assert!(pos("hydration_order r1") < pos("start r1"));
    assert!(pos("start r1") < pos("endpoint:replicate_from r1"));

    let w = h.fake.world();
    let server = &w.running["r1"];
    let (from, after) = server.replicating.clone().expect("r1 replicates");
    assert_eq!(from.port, src.config.port);
    let report = r1.clone.clone().unwrap();
    assert_eq!(after.to_string(), report.gtid);
    assert_eq!(report.parent, "src");
    assert_eq!(report.snapshot, "src.at.r1");
    assert_eq!(report.hot_pages, 4);
    assert_eq!(report.warm_set_frames, Some(10));
    let agent = server.agent.clone().expect("r1 shares");
    assert_eq!(agent.family, m.family_id);
    assert_eq!(
        agent.role,
        substrate::AgentRole::Replica {
            snapshot_lsn: report.snapshot_lsn
        }
    );
    assert!(w.families[&m.family_id]
        .members
        .contains(&r1.config.server_id));
    assert_eq!(
        w.families[&m.family_id].clone_lsn,
        Some(report.snapshot_lsn)
    );
    drop(w);
    assert!(r1.config.read_only);
    assert_ne!(r1.config.server_id, src.config.server_id);
    assert_eq!(r1.config.datadir, h.dir.path().join("mnt/r1/data"));
    // What was returned is what was recorded, and it reads back whole.
    assert_eq!(h.registry().load("r1").unwrap(), r1);
    assert!(h.volumes().contains("src.at.r1"));
}

/// Every call a clone makes to the substrate, failed in turn: the clone either carries
/// on (the call was a hint: a flush, the warm set, the clone LSN) or fails naming its
/// step, and then nothing of the new instance is left.
#[test]
fn a_failure_at_every_step_of_a_clone_leaves_nothing_and_names_the_step() {
    let h = Harness::new();
    let family = h.source("src").sharing.unwrap().family_id;
    let calls0 = h.fake.world().calls.len();
    h.clone("src", "probe").unwrap();
    let calls: Vec<String> = h.fake.world().calls[calls0..].to_vec();
    h.destroy("probe", false).unwrap();

    let mut failed_steps = BTreeSet::new();
    for (i, call) in calls.iter().enumerate() {
        let method = call.split(' ').next().unwrap().to_string();
        // The same method may be called more than once in a clone: fail this one.
        let nth = calls[..=i]
            .iter()
            .filter(|c| c.split(' ').next() == Some(method.as_str()))
            .count();
        h.fake.fail_at(&method, nth);
        let out = h.clone("src", "bad");
        h.fake.clear_fault();
        match out {
            Ok(rec) => {
                // Only hints may fail without failing the clone.
                assert!(
                    [
                        "endpoint:flush_dirty_pages",
                        "endpoint:warm_set",
                        "endpoint:rotate_binlog",
                        "publish_clone_lsn",
                        "hydration_order",
                        "leave_family",
                    ]
                    .contains(&method.as_str()),
                    "{call}: the clone succeeded although it failed"
                );
                if method == "publish_clone_lsn" {
                    assert_eq!(rec.clone.unwrap().warm_set_frames, None, "{call}");
                }
                h.destroy("bad", false).unwrap();
            }
            Err(e) => {
                let text = dbfork::error::chain(&e);
                assert!(text.contains("injected failure"), "{call}: {text}");
                match step_of(&e) {
                    Some(step) => {
                        assert!(text.starts_with(&format!("bad: {step}")), "{call}: {text}");
                        failed_steps.insert(step.to_string());
                    }
                    // The checks before anything is made.
                    None => assert!(
                        [
                            "endpoint",
                            "endpoint:require_binlog",
                            "endpoint:redo_flush_at_commit",
                            "sql_port"
                        ]
                        .contains(&method.as_str()),
                        "{call}: failed outside a step: {text}"
                    ),
                }
            }
        }
        h.assert_gone("bad", None);
        // The source and its family are untouched by every one of them.
        let w = h.fake.world();
        assert!(w.running.contains_key("src"), "{call}");
        assert_eq!(
            w.families[&family].members,
            BTreeSet::from([family]),
            "{call}: a member left in the family"
        );
    }
    let want: BTreeSet<String> = [
        Step::ConsistentSnapshot,
        Step::LazyClone,
        Step::ReplicaStart,
        Step::Replication,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(failed_steps, want);
    // And the source still clones.
    h.clone("src", "good").unwrap();
}

#[test]
fn a_failed_source_create_leaves_nothing() {
    for method in ["attach", "init_datadir", "start"] {
        let h = Harness::new();
        h.fake.fail_at(method, 1);
        let e = dbfork::source::create(
            &h.ctx,
            "src",
            &SourceOptions {
                size: 64 << 20,
                buffer_pool: 64 << 20,
                fs: FsType::Xfs,
                port: None,
                region_size: lazyvol::DEFAULT_REGION_SIZE,
                engine: dbfork::source::VolumeEngine::Lazy,
                domain_config: None,
                database_vdev: "xvdb".into(),
            },
        )
        .unwrap_err();
        assert!(dbfork::error::chain(&e).contains(method), "{e}");
        h.assert_gone("src", Some(1));
        assert!(h.fake.world().families.is_empty(), "{method}");
    }
}

#[test]
fn destroy_takes_a_family_apart_in_every_state() {
    let h = Harness::new();
    let src = h.source("src");
    let family = src.sharing.as_ref().unwrap().family_id;
    let r1 = h.clone("src", "r1").unwrap();
    let r2 = h.clone("src", "r2").unwrap();
    let r1a = h.clone("r1", "r1a").unwrap();
    // A replica of a replica does not share (its LSNs are its own).
    assert!(r1a.sharing.is_none());
    assert!(r1a.sharing_off.unwrap().contains("r1 is a replica"));

    // A source with replicas is refused unless told, and nothing changes.
    let e = h.destroy("src", false).unwrap_err();
    assert!(e.to_string().contains("has replicas (r1, r2)"), "{e}");
    assert_eq!(h.registry().list().unwrap().len(), 4);

    // A crashed replica (its server gone, its volume still attached) goes.
    h.fake.crash("r2");
    h.destroy("r2", false).unwrap();
    h.assert_gone("r2", Some(r2.config.server_id));
    // Its snapshot went with it; r1's stays while r1 needs it.
    assert!(!h.volumes().contains("src.at.r2"));
    assert!(h.volumes().contains("src.at.r1"));

    // A destroy that fails halfway keeps the record, and runs again to the end.
    h.fake.fail_at("detach", 1);
    assert!(h.destroy("r1a", false).is_err());
    assert!(h.registry().exists("r1a"));
    h.destroy("r1a", false).unwrap();
    h.assert_gone("r1a", None);

    // The source crashed with a replica left: everything goes, the family too.
    h.fake.crash("src");
    h.destroy("src", true).unwrap();
    h.assert_gone("r1", Some(r1.config.server_id));
    h.assert_gone("src", Some(src.config.server_id));
    let w = h.fake.world();
    assert!(!w.families.contains_key(&family));
    assert!(w.attached.is_empty() && w.running.is_empty());
    assert_eq!(
        w.released, 1,
        "the empty store's services are released once"
    );
    drop(w);
    assert!(h.volumes().is_empty(), "{:?}", h.volumes());
    assert!(h.registry().list().unwrap().is_empty());
}

#[test]
fn sharing_is_an_optimisation_and_says_why_it_is_off() {
    let h = Harness::new();
    h.fake.world().sharing_off = Some("no agent library here".into());
    let src = h.source("src");
    assert!(src.sharing.is_none());
    assert!(src
        .sharing_off
        .as_deref()
        .unwrap()
        .contains("no agent library here"));
    let r = h.clone("src", "r").unwrap();
    assert!(r.sharing.is_none());
    assert!(r
        .sharing_off
        .as_deref()
        .unwrap()
        .contains("no agent library here"));
    assert!(h.fake.world().running["r"].agent.is_none());

    // With sharing on, a replica may still be asked to go without.
    h.fake.world().sharing_off = None;
    let h = Harness::new();
    h.source("src");
    let r = h
        .clone_with(
            "src",
            "cold",
            &CloneOpts {
                sharing: false,
                read_iops: Some(150),
                ..CloneOpts::default()
            },
        )
        .unwrap();
    assert!(r.sharing_off.unwrap().contains("--no-sharing"));
    assert_eq!(r.clone.unwrap().warm_set_frames, None, "no offer was made");
    let st = dbfork::status::status_of(&h.ctx, &h.registry().load("cold").unwrap());
    assert_eq!(st.io_limit.unwrap().read_iops, 150);
    assert_eq!(st.state, "running");
    assert_eq!(
        st.replication.unwrap().master_port,
        h.registry().load("src").unwrap().config.port
    );
}

#[test]
fn a_stopped_parent_and_taken_names_are_refused_before_anything_is_made() {
    let h = Harness::new();
    h.source("src");
    let before = h.fake.world().calls.len();
    for (new, want) in [("src", "already exists"), ("bad/name", "invalid name")] {
        let e = h.clone("src", new).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
    let e = h.clone("ghost", "x").unwrap_err();
    assert!(matches!(e, Error::UnknownInstance(_)), "{e}");
    h.fake.crash("src");
    let e = h.clone("src", "r").unwrap_err();
    assert!(e.to_string().contains("src is not running"), "{e}");
    // Nothing was attached or started for any of them.
    let w = h.fake.world();
    assert!(w.calls[before..]
        .iter()
        .all(|c| !c.starts_with("attach") && !c.starts_with("start")));
}

#[test]
fn a_clone_flushes_its_parent_before_the_hold_unless_told_not_to() {
    let h = Harness::new();
    h.source("src");
    let calls0 = h.fake.world().calls.len();
    h.clone("src", "r1").unwrap();
    let calls: Vec<String> = h.fake.world().calls[calls0..].to_vec();
    let flush = calls
        .iter()
        .position(|c| c == "endpoint:flush_dirty_pages src");
    let hold = calls.iter().position(|c| c == "endpoint:hold_commits src");
    assert!(flush.is_some() && flush < hold, "{calls:?}");

    let calls0 = h.fake.world().calls.len();
    h.clone_with(
        "src",
        "r2",
        &CloneOpts {
            flush: false,
            ..CloneOpts::default()
        },
    )
    .unwrap();
    let calls: Vec<String> = h.fake.world().calls[calls0..].to_vec();
    assert!(
        calls.iter().any(|c| c == "endpoint:hold_commits src"),
        "{calls:?}"
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("endpoint:flush_dirty_pages")),
        "{calls:?}"
    );
}

fn start(h: &Harness, name: &str) -> dbfork::Result<dbfork::lifecycle::Started> {
    dbfork::lifecycle::start(&h.ctx, name, &|_| {})
}

fn stop(h: &Harness, name: &str) -> dbfork::Result<dbfork::lifecycle::Stopped> {
    dbfork::lifecycle::stop(&h.ctx, name, &|_| {})
}

#[test]
fn stop_and_start_bring_an_instance_back_in_its_family_replicating() {
    use dbfork::lifecycle::{Started, Stopped};
    let h = Harness::new();
    h.source("src");
    let r1 = h.clone("src", "r1").unwrap();
    let m = r1.sharing.clone().unwrap();

    assert_eq!(stop(&h, "r1").unwrap(), Stopped::Stopped);
    {
        let w = h.fake.world();
        assert!(!w.running.contains_key("r1"));
        assert!(!w.attached.contains_key("r1"), "a stop releases the volume");
        // The agent's state is made durable after the server stopped, before the detach.
        let at = |c: &str| w.calls.iter().position(|x| x == c).unwrap();
        assert!(at("stop r1") < at("persist_agent_state r1"));
        assert!(at("persist_agent_state r1") < at("detach r1"));
    }
    assert!(
        h.registry()
            .load("r1")
            .unwrap()
            .run
            .unwrap()
            .stopped_cleanly
    );
    assert_eq!(stop(&h, "r1").unwrap(), Stopped::AlreadyStopped);

    assert_eq!(start(&h, "r1").unwrap(), Started::Started);
    let again = h.registry().load("r1").unwrap();
    assert_eq!(again.sharing, Some(m.clone()), "same family, same domain");
    assert!(!again.run.unwrap().stopped_cleanly);
    {
        let w = h.fake.world();
        let server = &w.running["r1"];
        assert!(
            matches!(
                server.agent.as_ref().map(|a| &a.role),
                Some(substrate::AgentRole::Replica { snapshot_lsn })
                    if *snapshot_lsn == r1.clone.as_ref().unwrap().snapshot_lsn
            ),
            "the agent in its role, under its snapshot LSN: {:?}",
            server.agent
        );
        assert!(server.replicating.is_some(), "replication resumed");
        assert!(w.families[&m.family_id].members.contains(&m.domain_id));
    }
    assert_eq!(start(&h, "r1").unwrap(), Started::AlreadyRunning);

    // A source stopped and started keeps its family (its replica stays a member).
    stop(&h, "src").unwrap();
    start(&h, "src").unwrap();
    let src = h.registry().load("src").unwrap();
    assert!(src.sharing.is_some() && src.sharing_off.is_none());
    assert!(h.fake.world().running.contains_key("r1"));
}

#[test]
fn a_replica_without_its_agent_once_never_shares_again() {
    let h = Harness::new();
    h.source("src");
    let r1 = h.clone("src", "r1").unwrap();
    let m = r1.sharing.clone().unwrap();
    h.fake.crash("r1");
    // The host cannot run the agent at this start: the replica starts without it,
    // and its written-page set misses what it writes now, so it leaves for good.
    h.fake.world().sharing_off = Some("agent library gone".into());
    start(&h, "r1").unwrap();
    let rec = h.registry().load("r1").unwrap();
    assert!(rec.sharing.is_none());
    assert!(
        rec.sharing_off
            .as_deref()
            .unwrap()
            .starts_with("off for good"),
        "{:?}",
        rec.sharing_off
    );
    assert!(!h.fake.world().families[&m.family_id]
        .members
        .contains(&m.domain_id));
    // The agent is back on the host: still no agent for this replica.
    h.fake.world().sharing_off = None;
    h.fake.crash("r1");
    start(&h, "r1").unwrap();
    assert!(h.fake.world().running["r1"].agent.is_none());
}

#[test]
fn a_replica_that_ran_when_the_host_went_down_stops_sharing() {
    let h = Harness::new();
    h.source("src");
    h.clone("src", "r1").unwrap();
    h.clone("src", "r2").unwrap();
    // r1 was stopped cleanly before the reboot; r2 was running when the host went
    // down (its record names an earlier boot, not stopped cleanly).
    stop(&h, "r1").unwrap();
    let reg = h.registry();
    for name in ["r1", "r2", "src"] {
        let mut rec = reg.load(name).unwrap();
        rec.run.as_mut().unwrap().boot_id = "an-earlier-boot".into();
        reg.save(&rec).unwrap();
        h.fake.crash(name);
    }
    let out = dbfork::lifecycle::start_all(&h.ctx, &|_| {}).unwrap();
    let order: Vec<&str> = out.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(order, ["src", "r1", "r2"], "sources before their replicas");
    assert!(out.iter().all(|o| o.result.is_ok()), "{out:?}");
    let w = h.fake.world();
    assert!(
        w.running["r1"].agent.is_some(),
        "its set was synced at its stop"
    );
    assert!(w.running["r2"].agent.is_none());
    assert!(w.running["src"].agent.is_some());
    drop(w);
    let r2 = reg.load("r2").unwrap();
    assert!(r2.sharing.is_none());
    assert!(r2.sharing_off.unwrap().contains("host went down"));
}

#[test]
fn a_clone_of_a_source_whose_commits_skip_the_redo_file_is_refused() {
    let h = Harness::new();
    h.source("src");
    h.fake.world().redo_flush_at_commit = Some(0);
    let e = h.clone("src", "r1").unwrap_err();
    let text = dbfork::error::chain(&e);
    assert!(
        text.contains("innodb_flush_log_at_trx_commit=0") && text.contains("SET GLOBAL"),
        "{text}"
    );
    h.assert_gone("r1", None);
    h.fake.world().redo_flush_at_commit = Some(2);
    h.clone("src", "r1").unwrap();
}

#[test]
fn start_of_a_running_instance_whose_disk_is_gone_says_restart() {
    let h = Harness::new();
    h.source("src");
    h.clone("src", "r1").unwrap();
    // The fake's lost disk takes the server with it; as on the real host, where a
    // server may keep running on a dead disk, start is refused while it runs.
    h.fake.lose_disk("r1");
    let st = dbfork::status::status_of(&h.ctx, &h.registry().load("r1").unwrap());
    assert_eq!(st.state, "down");
    assert_eq!(st.fix.as_deref(), Some("dbfork start r1"));
    start(&h, "r1").unwrap();
    let st = dbfork::status::status_of(&h.ctx, &h.registry().load("r1").unwrap());
    assert_eq!(st.state, "running");
    assert!(st.problems.is_empty() && st.fix.is_none());
    let sharing = st.sharing.unwrap();
    assert_eq!(sharing["role"], "replica", "{sharing}");
}
