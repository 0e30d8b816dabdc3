//! The local substrate: "domains" are database server processes on this Linux host.
//!
//! A volume reaches its server through the export process (NBD on a Unix socket),
//! nbdfuse (the export as one file), a loop device and a mount under the store
//! (`attach`); the host has no nbd or ublk module. Snapshots freeze the mounted
//! filesystem (`freeze`). Servers start behind a gate (`server`) that puts them into
//! their read limit (`io_limit`, the kernel's IO controller) and their page-table
//! family before their first instruction, with the agent preloaded (`agent`; the
//! family's frames in a shared-memory pool). `orphans` sweeps what stores deleted by
//! hand left in shared memory and the IO controller. `hydration_order` maps datadir
//! files and pages to volume ranges with FIEMAP on the mounted filesystem.

pub mod agent;
pub mod attach;
pub mod endpoint;
pub mod freeze;
pub mod hydration_order;
pub mod io_limit;
pub mod legacy_record;
pub mod orphans;
pub mod server;
pub mod tools;

use crate::error::{BoxError, Error, Result};
use crate::{
    DomainState, Endpoint, Health, Host, Identity, Kind, NewDomain, PageTableService, Quiesced,
    RunDir, StartRequest, Stop, Substrate, Swept, WarmSet,
};
use dbinstance::{Instance, InstanceConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use agent::LocalAgent;
pub use io_limit::{DiskReadLimit, IoLimitRecord};
pub use tools::is_mount_point;

/// How long a stopped server's process may take to let go of its mount.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the local substrate remembers about a domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalDomain {
    /// Where the volume's filesystem is mounted on this host (for a directory volume:
    /// its tree).
    pub mountpoint: PathBuf,
    /// The volume is a directory on the store's own file system, not a mounted block
    /// volume: nothing to hydrate, unmount or freeze.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub directory: bool,
    /// The agent the server runs with, when it shares pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<LocalAgent>,
    /// The read limit on the volume (`clone --read-iops`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_limit: Option<IoLimitRecord>,
}

/// Server processes on this host.
pub struct Local {
    host: Host,
    page_table: PageTableService,
}

impl Local {
    pub fn new(host: Host) -> Self {
        Local {
            page_table: PageTableService::new(&host.store_dir, &host.dbfork_exe),
            host,
        }
    }

    fn store(&self) -> &Path {
        &self.host.store_dir
    }

    fn mountpoint(&self, name: &str) -> PathBuf {
        self.store().join("mnt").join(name)
    }

    /// The tree of `volume` when it is a directory volume (a datadir on the store's own
    /// file system), `None` for a block volume.
    fn directory_of(&self, volume: &str) -> Result<Option<PathBuf>> {
        let store = lazyvol::Store::open(self.store()).map_err(Error::Volume)?;
        match store.status(volume).map_err(Error::Volume)?.layout {
            lazyvol::VolumeLayout::Directory => {
                Ok(Some(store.directory(volume).map_err(Error::Volume)?))
            }
            lazyvol::VolumeLayout::Blocks => Ok(None),
        }
    }

    /// The agent for a server that shares as `spec` says, with the page table service
    /// running.
    fn agent_for(
        &self,
        spec: &crate::AgentSpec,
        run_dir: &Path,
        buffer_pool: u64,
    ) -> Result<LocalAgent> {
        self.page_table.ensure_running()?;
        dbinstance::preflight::ensure_map_count(buffer_pool);
        agent::configure(
            self.store(),
            agent::find_library(&self.host.dbfork_exe)?,
            spec,
            &self.page_table.data_socket(),
            run_dir,
        )
    }

    /// A read limit on the block device `volume` is attached through: its loop device,
    /// or for a directory volume the disk its tree is on.
    fn limit_reads(&self, name: &str, volume: &str, iops: u32) -> Result<IoLimitRecord> {
        let dev = match self.directory_of(volume)? {
            Some(tree) => io_limit::disk_of(&tree)?,
            None => {
                let rec = attach::load_record(&RunDir::new(self.store()), volume)?
                    .ok_or_else(|| Error::NotAttached(volume.to_string()))?;
                let node = rec.loop_device.ok_or_else(|| Error::NoBlockDevice {
                    volume: volume.to_string(),
                })?;
                io_limit::device_number(Path::new(&node))?
            }
        };
        if let Err(e) = orphans::claim(Path::new(orphans::SHM), self.store()) {
            tracing::warn!("recording the store as owner of its IO groups: {e}");
        }
        io_limit::create(
            Path::new(io_limit::CGROUP_ROOT),
            &io_limit::group_name(self.store(), name),
            &dev,
            iops,
        )
    }

    /// The volume attached at the domain's mount point (formatted first when `format`
    /// is given), or its tree when it is a directory volume.
    fn attach_volume(
        &self,
        name: &str,
        volume: &str,
        format: Option<crate::FsType>,
    ) -> Result<DomainState> {
        if let Some(tree) = self.directory_of(volume)? {
            // On the store's own file system already: nothing to export or mount (and
            // nothing to format: the store's file system is the datadir's).
            return Ok(DomainState::Local(LocalDomain {
                mountpoint: tree,
                directory: true,
                agent: None,
                io_limit: None,
            }));
        }
        let mp = self.mountpoint(name);
        std::fs::create_dir_all(&mp).map_err(Error::io("creating the mount point", &mp))?;
        let attached = attach::attach(&attach::AttachRequest {
            store: self.store(),
            volume,
            mountpoint: &mp,
            mkfs: format,
            read_only: false,
            dbfork_exe: &self.host.dbfork_exe,
        });
        match attached {
            Ok(_) => Ok(DomainState::Local(LocalDomain {
                mountpoint: mp,
                directory: false,
                agent: None,
                io_limit: None,
            })),
            Err(e) => {
                let _ = std::fs::remove_dir(&mp);
                Err(e)
            }
        }
    }
}

/// The local part of a domain's state. The orchestration picks a domain's backend by
/// the state's own kind (`for_domain`), so a local backend is never handed another's.
fn local(domain: &DomainState) -> &LocalDomain {
    match domain {
        DomainState::Local(d) => d,
        other => unreachable!("the local substrate was handed a {} domain", other.kind()),
    }
}

/// Freezes the filesystem `volume` is mounted with on this host, if it is; a volume
/// not mounted here has nothing to hold.
pub fn quiesce_volume(store: &Path, volume: &str) -> Result<Quiesced> {
    let mounted = attach::load_record(&RunDir::new(store), volume)?
        .filter(|r| r.mounted && is_mount_point(&r.mountpoint))
        .map(|r| r.mountpoint);
    match mounted {
        Some(mp) => freeze::freeze(&mp),
        None => Ok(Quiesced::nothing()),
    }
}

impl Substrate for Local {
    fn kind(&self) -> Kind {
        Kind::Local
    }

    fn preflight(&self) -> Result<()> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::HostLacks(
                "mounting volumes (FUSE, loop devices, mount) needs root".into(),
            ));
        }
        for (tool, pkg) in [
            ("mariadbd", "mariadb-server"),
            ("mariadb-install-db", "mariadb-server"),
            ("nbdfuse", "libnbd-bin"),
            ("mkfs.ext4", "e2fsprogs"),
            ("losetup", "util-linux"),
        ] {
            if !on_path(tool) {
                return Err(Error::HostLacks(format!(
                    "{tool} is missing: install the Debian package {pkg} (scripts/install-deps does)"
                )));
            }
        }
        if !Path::new("/dev/fuse").exists() {
            return Err(Error::HostLacks(
                "/dev/fuse is missing: this host cannot attach volumes locally".into(),
            ));
        }
        Ok(())
    }

    fn attach(&self, name: &str, volume: &str, what: &NewDomain<'_>) -> Result<DomainState> {
        if let NewDomain::Source {
            domain_config: Some(cfg),
            ..
        } = what
        {
            return Err(Error::NotForSubstrate {
                what: format!("a domain config ({})", cfg.display()),
                substrate: Kind::Local,
                fix: "local servers are host processes; --domain-config is for --substrate xen",
            });
        }
        self.attach_volume(name, volume, what.format())
    }

    fn detach(&self, volume: &str, domain: &DomainState) -> Result<()> {
        if attach::load_record(&RunDir::new(self.store()), volume)?.is_some() {
            attach::detach(self.store(), volume)?;
        }
        // The empty mount point of a block volume (a directory volume's tree is its
        // data and goes with the volume, not here).
        let d = local(domain);
        if !d.directory {
            let _ = std::fs::remove_dir(&d.mountpoint);
        }
        Ok(())
    }

    fn reattach(&self, name: &str, volume: &str, domain: &DomainState) -> Result<DomainState> {
        // What the next start sets again: the agent and the read limit.
        let kept = DomainState::Local(LocalDomain {
            agent: None,
            io_limit: None,
            ..local(domain).clone()
        });
        if let Some(tree) = self.directory_of(volume)? {
            if !tree.is_dir() {
                return Err(Error::io("finding the volume's tree", &tree)(
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
            return Ok(kept);
        }
        if let Some(rec) = attach::load_record(&RunDir::new(self.store()), volume)? {
            let broken = attach::problems(&rec);
            if broken.is_empty() && rec.mountpoint == local(domain).mountpoint {
                return Ok(kept);
            }
            tracing::info!(volume, ?broken, "taking apart what is left of an attach");
            attach::detach(self.store(), volume)?;
        }
        self.attach_volume(name, volume, None)
    }

    fn health(&self, config: &InstanceConfig, volume: &str, domain: &DomainState) -> Health {
        let d = local(domain);
        let problems = if d.directory {
            if d.mountpoint.is_dir() {
                Vec::new()
            } else {
                vec![format!(
                    "the datadir tree {} is gone",
                    d.mountpoint.display()
                )]
            }
        } else {
            match attach::load_record(&RunDir::new(self.store()), volume) {
                Ok(Some(rec)) => attach::problems(&rec),
                Ok(None) => Vec::new(),
                Err(e) => vec![crate::error::chain(&e)],
            }
        };
        let mut problems = problems;
        // A server that shut down removed its pid file; one that is still there names
        // a server that was killed or crashed.
        if let Some(pid) = std::fs::read_to_string(config.pid_file())
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        {
            if !crate::process::process_alive(pid) {
                problems.push(format!(
                    "mariadbd (pid {pid}) ended without shutting down: killed or crashed (see the last lines of its error log)"
                ));
            }
        }
        Health {
            problems,
            log_tail: {
                let end = dbinstance::tools::read_end(&config.error_log()).unwrap_or_default();
                let lines: Vec<&str> = end.lines().filter(|l| !l.trim().is_empty()).collect();
                lines[lines.len().saturating_sub(5)..]
                    .iter()
                    .map(|l| l.to_string())
                    .collect()
            },
        }
    }

    fn datadir(&self, domain: &DomainState) -> PathBuf {
        local(domain).mountpoint.join("data")
    }

    fn quiesce(
        &self,
        volume: &str,
        config: &InstanceConfig,
        _domain: &DomainState,
    ) -> Result<Quiesced> {
        if self.directory_of(volume)?.is_some() {
            return match dbinstance::running_pid(config) {
                Some(pid) => freeze::stop_process(pid as u32),
                None => Ok(Quiesced::nothing()),
            };
        }
        quiesce_volume(self.store(), volume)
    }

    fn hydration_order(
        &self,
        domain: &DomainState,
        parent_datadir: &Path,
        warm: &WarmSet,
    ) -> Vec<(u64, u64)> {
        let datadir = self.datadir(domain);
        if local(domain).directory {
            // Complete from the start: nothing to hydrate (and its files' extents are
            // not ranges of any volume).
            return Vec::new();
        }
        let mut ranges = hydration_order::boot_ranges(&datadir);
        ranges.extend(hydration_order::hot_page_ranges(
            &datadir,
            parent_datadir,
            &warm.spaces,
            &warm.hot,
        ));
        hydration_order::coalesce(ranges)
    }

    fn sql_port(&self, requested: Option<u16>) -> Result<u16> {
        match requested {
            Some(p) => match std::net::TcpListener::bind(("127.0.0.1", p)) {
                Ok(_) => Ok(p),
                Err(_) => Err(Error::PortInUse(p)),
            },
            None => Ok(dbinstance::free_port()?),
        }
    }

    fn init_datadir(&self, config: &InstanceConfig) -> Result<()> {
        Instance::init(config.clone())?;
        Ok(())
    }

    fn restore_datadir(
        &self,
        config: &InstanceConfig,
        stream: &mut dyn std::io::Read,
        copied: &mut dyn FnMut(u64),
    ) -> Result<dbinstance::backup::Restored> {
        let run = &config.run_dir;
        dbinstance::backup::receive(stream, &config.datadir, &run.join("restore.log"), copied)?;
        Ok(dbinstance::backup::prepare(
            &config.datadir,
            &run.join("prepare.log"),
        )?)
    }

    fn import_datadir(
        &self,
        config: &InstanceConfig,
        from: &Path,
        copied: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        dbinstance::instance::prepare_empty_dir(&config.datadir)?;
        copy_datadir(from, &config.datadir, copied)
    }

    fn export_datadir(
        &self,
        config: &InstanceConfig,
        to: &Path,
        copied: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        copy_datadir(&config.datadir, to, copied)
    }

    fn start(&self, req: &StartRequest<'_>, domain: &mut DomainState) -> Result<()> {
        let DomainState::Local(d) = domain else {
            unreachable!("the local substrate was handed a {} domain", domain.kind());
        };
        let inst = Instance::open(req.config.clone())?;
        // Sharing is an optimisation: whatever keeps the agent from being set up
        // before the server exists makes sharing unavailable, not the start fail.
        let agent = match req.agent {
            Some(spec) => Some(
                self.agent_for(spec, &req.config.run_dir, req.config.buffer_pool_size)
                    .map_err(|e| match e {
                        Error::SharingUnavailable(_) => e,
                        other => Error::SharingUnavailable(crate::error::chain(&other)),
                    })?,
            ),
            None => None,
        };
        let io_limit = match req.read_iops {
            Some(iops) => Some(self.limit_reads(&req.config.name, req.volume, iops)?),
            None => None,
        };
        // The server is its family's member before its first read (the warm-up reads
        // at startup are the valuable ones). A daemon that died since is started again.
        let join = |pid: u32| -> std::result::Result<(), BoxError> {
            if let Some(spec) = req.agent {
                self.page_table
                    .join(spec.family, spec.domain, Identity::Process { pid })?;
            }
            Ok(())
        };
        let no_env = Default::default();
        let launched = server::launch(
            &inst,
            &server::Launch {
                preload: agent.as_ref().map(|a| a.library.as_path()),
                env: agent.as_ref().map(|a| &a.env).unwrap_or(&no_env),
                io_limit: io_limit.as_ref(),
                before_run: Some(&join),
                timeout: req.timeout,
                die_with_parent: false,
            },
        );
        if let Err(e) = launched {
            // The gate may have run: the server was a member of its family and in its
            // IO group for a moment. Neither outlives a start that failed.
            if let Some(spec) = req.agent {
                self.page_table.leave(spec.domain);
            }
            if let Some(l) = &io_limit {
                if let Err(re) = io_limit::remove(l) {
                    tracing::warn!("removing the read limit of a server that did not start: {re}");
                }
            }
            return Err(e);
        }
        d.agent = agent;
        d.io_limit = io_limit;
        Ok(())
    }

    fn stop(&self, config: &InstanceConfig, domain: &DomainState, how: Stop) -> Result<()> {
        let mut inst = Instance::open(config.clone())?;
        let pid = inst.pid();
        if pid.is_some() {
            match how {
                Stop::Kill => inst.kill()?,
                Stop::Clean(timeout) => {
                    if let Err(e) = inst.stop_with_timeout(timeout) {
                        tracing::warn!("clean stop of {} failed ({e}); killing it", config.name);
                        inst.kill()?;
                    }
                }
            }
        }
        // The server says it is down before its process has let go of the mount.
        if let Some(pid) = pid {
            if !crate::process::wait_until(EXIT_TIMEOUT, || {
                !crate::process::process_alive(pid as u32)
            }) {
                return Err(Error::StillRunning {
                    name: config.name.clone(),
                    pid,
                });
            }
        }
        if let Some(l) = &local(domain).io_limit {
            io_limit::remove(l)?;
        }
        Ok(())
    }

    fn running(&self, config: &InstanceConfig, _domain: &DomainState) -> bool {
        dbinstance::running_pid(config).is_some()
    }

    fn read_limit(&self, domain: &DomainState) -> Option<crate::ReadLimit> {
        local(domain).io_limit.as_ref().map(|l| crate::ReadLimit {
            read_iops: l.read_iops,
            device: l.device.clone(),
            reads: io_limit::reads_serviced(l).ok(),
        })
    }

    fn endpoint(
        &self,
        config: &InstanceConfig,
        _domain: &DomainState,
    ) -> Result<Box<dyn Endpoint>> {
        Ok(Box::new(endpoint::SqlEndpoint::new(Instance::open(
            config.clone(),
        )?)))
    }

    fn memory_use(
        &self,
        config: &InstanceConfig,
        _domain: &DomainState,
    ) -> Option<crate::MemoryUse> {
        let pid = dbinstance::running_pid(config)?;
        Some(crate::MemoryUse {
            server: dbinstance::memory::process_memory(pid as u32),
            // The server is a process of this host: no memory of its own.
            domain: None,
        })
    }

    fn persist_agent_state(&self, domain: &DomainState) -> Result<()> {
        let Some(a) = &local(domain).agent else {
            return Ok(());
        };
        if let Some(writes) = a.env.get("DBFORK_REPLICA_WRITES").map(PathBuf::from) {
            match std::fs::File::open(&writes) {
                Ok(f) => f.sync_all().map_err(Error::io("syncing", &writes))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("opening", &writes)(e)),
            }
        }
        Ok(())
    }

    fn sharing_available(&self) -> Result<()> {
        agent::find_library(&self.host.dbfork_exe)?;
        self.page_table.available()
    }

    fn publish_clone_lsn(&self, family: u32, lsn: u64) -> Result<()> {
        agent::publish_clone_lsn(self.store(), family, lsn)
    }

    fn clone_lsn(&self, family: u32) -> Option<u64> {
        agent::read_clone_lsn(self.store(), family)
    }

    fn agent_counters(&self, domain: &DomainState) -> Option<serde_json::Value> {
        local(domain).agent.as_ref().and_then(agent::counters)
    }

    fn leave_family(&self, domain: u32) {
        self.page_table.leave(domain);
    }

    fn destroy_family(&self, family: u32) {
        self.page_table.destroy_family(family);
        agent::destroy_family(self.store(), family);
    }

    fn sweep(&self) -> Swept {
        let s = orphans::sweep(Path::new(orphans::SHM), &io_limit::group_roots());
        Swept {
            items: s.pools.into_iter().chain(s.groups).collect(),
        }
    }

    fn release_store(&self) {
        self.page_table.stop();
        orphans::release(
            Path::new(orphans::SHM),
            self.store(),
            &io_limit::group_roots(),
        );
    }
}

/// Whether `tool` is on PATH (or in the sbin directories root's PATH may lack).
pub(crate) fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|d| d.join(tool).exists())
        })
        .unwrap_or(false)
}

/// A datadir copied whole (lost+found of a volume's file system is the file system's).
fn copy_datadir(from: &Path, to: &Path, copied: &mut dyn FnMut(u64)) -> Result<u64> {
    let report = lazyvol::copy_tree(from, to, copied).map_err(|source| Error::Io {
        what: "copying a datadir into",
        path: to.to_path_buf(),
        source,
    })?;
    let _ = std::fs::remove_dir(to.join("lost+found"));
    Ok(report.bytes)
}
