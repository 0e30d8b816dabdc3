//! A store of real instances for the integration tests: its instances are destroyed
//! on drop (before the store's volumes are detached), even when a test fails.

use super::*;
use dbfork::clone::CloneOpts;
use dbfork::ctx::Ctx;
use dbfork::registry::{InstanceRecord, Registry};
use dbinstance::{Instance, InstanceConfig};
use std::time::Duration;
use substrate::local::Local;
use substrate::{Host, RunDir};
use substrate_fake::Faulty;

/// A store whose instances are destroyed on drop (before the volumes are detached).
pub struct Cluster {
    pub store: TestStore,
}

impl Cluster {
    pub fn new() -> Option<Self> {
        if !can_attach() || !have("mariadbd") || !have("mkfs.ext4") {
            return None;
        }
        Some(Cluster {
            store: TestStore::new(),
        })
    }
    /// A cluster whose store is on XFS with reflink.
    pub fn on_xfs() -> Option<Self> {
        if !can_attach() || !have("mariadbd") || !have("mkfs.xfs") {
            return None;
        }
        Some(Cluster {
            store: TestStore::on_xfs()?,
        })
    }
    pub fn cfg(&self, name: &str) -> InstanceConfig {
        Registry::new(self.store.path()).load(name).unwrap().config
    }
    pub fn inst(&self, name: &str) -> Instance {
        Instance::open(self.cfg(name)).unwrap()
    }
    pub fn source(&self, name: &str) {
        self.store.ok(&[
            "source",
            "create",
            name,
            "--size",
            "512M",
            "--buffer-pool",
            "64M",
        ]);
    }
    pub fn clone(&self, src: &str, new: &str, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["clone", src, new];
        args.extend_from_slice(extra);
        self.store.json(&args)
    }
    /// The local substrate of this store, as the `dbfork` binary under test runs it.
    pub fn local(&self) -> Local {
        Local::new(Host {
            store_dir: self.store.path().to_path_buf(),
            dbfork_exe: DBFORK.into(),
        })
    }
    /// Starts `name`'s server again from its record, with `config` (on the local
    /// substrate, in its family as before), as a restart after a crash does.
    pub fn start_again(&self, name: &str, config: &InstanceConfig) {
        use substrate::{AgentRole, AgentSpec, StartRequest, Substrate};
        let rec = Registry::new(self.store.path()).load(name).unwrap();
        let agent = rec.sharing.as_ref().map(|m| AgentSpec {
            family: m.family_id,
            domain: m.domain_id,
            role: AgentRole::Source {
                pool_max_bytes: 2 * config.buffer_pool_size,
            },
        });
        let mut domain = rec.domain.clone();
        self.local()
            .start(
                &StartRequest {
                    config,
                    volume: &rec.volume,
                    agent: agent.as_ref(),
                    read_iops: None,
                    timeout: Duration::from_secs(180),
                },
                &mut domain,
            )
            .unwrap();
    }
    /// A clone run in this process, on the local substrate with faults injected.
    pub fn clone_faulty(
        &self,
        src: &str,
        new: &str,
        opts: &CloneOpts,
        faults: impl FnOnce(Faulty<Local>) -> Faulty<Local>,
    ) -> dbfork::Result<InstanceRecord> {
        let sub = faults(Faulty::new(self.local()));
        let ctx = Ctx::with_substrate(self.store.path(), Box::new(sub));
        dbfork::clone::clone(&ctx, src, new, opts, &|_| {})
    }
    /// Nothing named `name` is left: no record, volume, mount, server, snapshot.
    pub fn assert_gone(&self, name: &str) {
        let reg = Registry::new(self.store.path());
        assert!(!reg.exists(name), "record of {name} left");
        let vols = self.store.json(&["volume", "list"]);
        for v in vols.as_array().unwrap() {
            let n = v["name"].as_str().unwrap();
            assert!(
                n != name && !n.ends_with(&format!(".at.{name}")),
                "volume {n} left behind: {vols}"
            );
        }
        let mp = self.store.path().join("mnt").join(name);
        assert!(
            !substrate::local::is_mount_point(&mp),
            "{} still mounted",
            mp.display()
        );
        assert!(
            !self
                .store
                .path()
                .join("run")
                .join(format!("{name}.attach.json"))
                .exists(),
            "attach record of {name} left"
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let reg = Registry::new(self.store.path());
        if let Ok(all) = reg.list() {
            for r in all.iter().filter(|r| r.parent().is_none()) {
                if r.taken_over.is_some() {
                    // A server taken over goes back to its owner (after its replicas).
                    for c in reg.children(&r.name).unwrap_or_default() {
                        let _ = self.store.run(&["destroy", &c.name, "--with-replicas"]);
                    }
                    let released = self.store.run(&["source", "release", &r.name]);
                    if !released.status.success() {
                        // A failed test may leave no way to give it back (its
                        // operator's server gone first): its server and volume still
                        // go, the data with them.
                        let ctx = Ctx::with_substrate(self.store.path(), Box::new(self.local()));
                        if let Err(e) = dbfork::destroy::forget_released(&ctx, &r.name) {
                            eprintln!("cleanup: {} left behind: {e}", r.name);
                        }
                    }
                    continue;
                }
                let _ = self.store.run(&["destroy", &r.name, "--with-replicas"]);
            }
        }
    }
}

/// oltp_write_only on `src` (2 x 5000 rows, loaded by `load`) for `secs`, returned
/// once writes are really flowing (its binlog position moved).
pub fn write_load(c: &Cluster, src: &str, secs: u32) -> workload::sysbench::RunningSysbench {
    let writer = workload::sysbench::start(
        &c.inst(src),
        &workload::sysbench::SysbenchOptions {
            test: "oltp_write_only".into(),
            tables: 2,
            table_size: 5000,
            threads: 2,
            secs,
            report_interval: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let inst = c.inst(src);
    let gtid0 = inst.gtid_binlog_pos().unwrap();
    assert!(wait_until(Duration::from_secs(30), || inst
        .gtid_binlog_pos()
        .unwrap()
        .to_string()
        != gtid0.to_string()));
    writer
}

pub fn load(c: &Cluster, src: &str, tables: u32, rows: u64) {
    let opts = workload::sysbench::SysbenchOptions {
        tables,
        table_size: rows,
        ..Default::default()
    };
    workload::sysbench::prepare(&c.inst(src), &opts).unwrap();
}

pub fn checksums(c: &Cluster, name: &str) -> std::collections::BTreeMap<String, Option<u64>> {
    dbinstance::checksum_all_tables(&c.inst(name), &["sbtest"]).unwrap()
}

/// Kills the export process serving `volume` and waits until it is gone.
pub fn kill_export(store: &std::path::Path, volume: &str) {
    let rec = substrate::local::attach::load_record(&RunDir::new(store), volume)
        .unwrap()
        .expect("the volume is attached");
    kill_and_wait(rec.export_pid);
}

/// Kills `pid` and waits until every thread of it has exited (`process_alive` looks at
/// them all: a killed server's datadir lock outlives its zombie main thread).
pub fn kill_and_wait(pid: u32) {
    substrate::process::signal(pid, libc::SIGKILL);
    assert!(wait_until(Duration::from_secs(10), || {
        !substrate::process::process_alive(pid)
    }));
}
