//! The Xen backend of the substrate: a domain is a PV domU whose database disk is a
//! dbfork volume served by dom0.
//!
//! - attach: the volume's export process in dom0, and the domU's xl config: the
//!   operator's for a source (its database disk through `block-dbfork` to the export),
//!   derived from the parent's for a clone (new name, no uuid, fresh MACs, the clone's
//!   export, memory and vCPUs as asked). The config is kept in the domain's state and
//!   written out for each `xl create`.
//! - start: `xl create -p`, the guest's server config written into its xenstore
//!   directory (readable by that domain only), unpause, wait until the guest side
//!   reports its server ready (or why not), then dom0's end of its channel.
//! - the database is reached only through the guest side on that channel
//!   ([`GuestEndpoint`]): dom0 holds no SQL password of the guest and needs no network
//!   to it. Snapshots freeze the guest's datadir file system through it.
//! - stop: `xl shutdown` (the guest stops its server cleanly) with a bounded wait, or
//!   `xl destroy`.
//!
//! Page sharing (docs/xen.md): the store's page table runs in dom0; a domain whose
//! server shares gets its agent's setup in xenstore and dom0's end of a channel to the
//! page table before it runs (the page table knows the domain by that channel's
//! relay); a replica is added to its source's grantees before it runs, and taken off
//! when it stops. What dom0 keeps of a family is in [`family`]. Read limits are not
//! built for Xen.

use crate::error::{Error, Result};
use crate::page_table::PageTableService;
use crate::xen::budget::{self, HypervisorLimits};
use crate::xen::control::DomainControl;
use crate::xen::domain::{
    self, XenAgent, XenDomain, GUEST_STATE, KEY_AGENT, KEY_FORMAT, KEY_INSTANCE, VCHAN_RELAY,
};
use crate::xen::family::{self, FamilySource, XenFamily};
use crate::xen::guest::GuestEndpoint;
use crate::{
    AgentRole, AgentSpec, DomainState, Endpoint, FsType, Health, Host, Identity, Kind, MemoryUse,
    NewDomain, Quiesced, RunDir, StartRequest, Stop, Substrate, Swept, WarmSet,
};
use dbinstance::InstanceConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use xlcfg::replica::{replica_config, source_config, ReplicaSpec, SourceSpec};
use xlcfg::XlConfig;

/// Xen domUs, driven from dom0.
pub struct Xen {
    host: Host,
    control: Box<dyn DomainControl>,
    page_table: PageTableService,
    /// One channel per domU and dbfork process: the guest side's channel carries one
    /// connection at a time, and a clone's commit hold and freeze must share it.
    channels: Mutex<HashMap<PathBuf, GuestEndpoint>>,
    /// The least a start is given (see [`BOOT_TIMEOUT`]).
    min_boot: Duration,
}

#[cfg(feature = "xen")]
impl Xen {
    /// The backend on this host's Xen.
    pub fn new(host: Host) -> Xen {
        Xen::with_control(host, Box::<crate::xen::control::XenControl>::default())
    }
}

impl Xen {
    /// The backend on the given Xen mechanisms (a fake, in tests).
    pub fn with_control(host: Host, control: Box<dyn DomainControl>) -> Xen {
        Xen {
            page_table: PageTableService::new(&host.store_dir, &host.dbfork_exe),
            host,
            control,
            channels: Mutex::new(HashMap::new()),
            min_boot: BOOT_TIMEOUT,
        }
    }

    /// Starts get only what each start request says (tests with a fake Xen).
    pub fn without_boot_allowance(mut self) -> Xen {
        self.min_boot = Duration::ZERO;
        self
    }

    fn run_dir(&self) -> RunDir {
        RunDir::new(&self.host.store_dir)
    }

    /// Starts `volume`'s export process; its pid.
    fn spawn_export(&self, volume: &str) -> Result<u32> {
        crate::export::spawn(&self.host.store_dir, volume, &self.host.dbfork_exe)
            .map(|(pid, _)| pid)
    }

    /// The xl config file written for the next `xl create` of `vm`.
    fn config_file(&self, vm: &str) -> PathBuf {
        self.run_dir().path().join(format!("{vm}.xl.cfg"))
    }

    /// The channel of the domain's guest side: the one this process opened, or a new
    /// connection (also when the one opened failed out of step).
    fn guest(&self, name: &str, d: &XenDomain) -> Result<GuestEndpoint> {
        self.guest_at(name, &d.channel)
    }

    fn guest_at(&self, name: &str, channel: &Path) -> Result<GuestEndpoint> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = channels.get(channel).filter(|g| !g.is_broken()) {
            return Ok(g.clone());
        }
        let g = GuestEndpoint::connect(name, channel)?;
        channels.insert(channel.to_path_buf(), g.clone());
        Ok(g)
    }

    /// Asks the family's source (its guest side) to do `what`.
    fn tell_source(
        &self,
        f: &XenFamily,
        what: impl FnOnce(&GuestEndpoint) -> Result<()>,
    ) -> Result<()> {
        let Some(src) = &f.source else {
            return Err(Error::SharingUnavailable(
                "the family's source does not run with its agent now (start it, with sharing on)"
                    .into(),
            ));
        };
        what(&self.guest_at(&src.vm, &src.channel)?)
    }

    /// Fits a domain's sharing into the hypervisor's grant limits (`budget`): a
    /// source's pool is capped at what its grant table holds for the planned replicas
    /// (the cap, if any, said in the log) and its config asks for that table; a
    /// replica's config asks for a maptrack that holds every frame of its source's pool.
    fn fit_budget(&self, spec: &mut AgentSpec, d: &mut XenDomain) -> Result<()> {
        let text = self.control.xl_info()?;
        let limits = HypervisorLimits::from_xl_info(&text)
            .map_err(|e| Error::SharingUnavailable(format!("reading xl info: {e}")))?;
        let in_config = |source| Error::XlConfig {
            file: PathBuf::from(format!("{}'s generated config", d.vm)),
            source,
        };
        let store = &self.host.store_dir;
        match &mut spec.role {
            AgentRole::Source { pool_max_bytes } => {
                let wanted = (*pool_max_bytes / budget::FRAME_BYTES).max(1);
                let plan = budget::plan(limits, wanted, budget::PLANNED_REPLICAS)
                    .map_err(|e| Error::SharingUnavailable(e.to_string()))?;
                if let Some(why) = &plan.capped {
                    tracing::warn!("{}: {why}", d.vm);
                }
                *pool_max_bytes = plan.frames * budget::FRAME_BYTES;
                d.xl_config = budget::raise_setting(
                    &d.xl_config,
                    "max_grant_frames",
                    plan.source_max_grant_frames,
                    limits.gnttab_max_frames,
                )
                .map_err(in_config)?;
                family::update(store, spec.family, |f| f.pool_frames = Some(plan.frames))?;
            }
            AgentRole::Replica { .. } => {
                let frames = family::load(store, spec.family)?.pool_frames.unwrap_or(0);
                if frames > 0 {
                    let plan = budget::plan(limits, frames, 1)
                        .map_err(|e| Error::SharingUnavailable(e.to_string()))?;
                    d.xl_config = budget::raise_setting(
                        &d.xl_config,
                        "max_maptrack_frames",
                        plan.replica_max_maptrack_frames,
                        limits.gnttab_max_maptrack_frames,
                    )
                    .map_err(in_config)?;
                }
            }
        }
        Ok(())
    }

    /// Hands a domain (created, paused) its agent: the setup in its xenstore
    /// directory, dom0's end of its channel to the page table, its membership in the
    /// family bound to that channel; a replica goes into its source's grantees before
    /// its first instruction (the source grants it every frame from then on).
    fn setup_agent(&self, spec: &AgentSpec, d: &XenDomain, domid: u32) -> Result<XenAgent> {
        let store = &self.host.store_dir;
        let role = match spec.role {
            AgentRole::Source { pool_max_bytes } => {
                let f = family::update(store, spec.family, |f| {
                    f.source = None;
                    f.clone_lsn.get_or_insert(0);
                })?;
                guest_channel::AgentRole::Source {
                    pool_max_bytes,
                    clone_lsn: f.clone_lsn.unwrap_or(0),
                    grantees: f.grantees(),
                }
            }
            AgentRole::Replica { snapshot_lsn } => {
                guest_channel::AgentRole::Replica { snapshot_lsn }
            }
        };
        let source = matches!(role, guest_channel::AgentRole::Source { .. });
        let setup = guest_channel::AgentSetup {
            family: spec.family,
            domain: spec.domain,
            role,
        };
        let json = serde_json::to_string(&setup)
            .map_err(|e| Error::CorruptRecord(d.vm.clone(), e.to_string()))?;
        self.control.write_for_guest(domid, KEY_AGENT, &json)?;
        self.page_table.ensure_running()?;
        let log = self
            .run_dir()
            .path()
            .join(format!("{}.pagetable.log", d.vm));
        let relay =
            self.control
                .open_page_table_channel(domid, &self.page_table.data_socket(), &log)?;
        let agent = XenAgent {
            family: spec.family,
            domain: spec.domain,
            source,
            domid,
            page_table_relay: relay,
        };
        let joined = self
            .page_table
            .join(
                spec.family,
                spec.domain,
                Identity::XenChannel { pid: relay, domid },
            )
            .and_then(|()| {
                if source {
                    return Ok(());
                }
                let f = family::update(store, spec.family, |f| {
                    f.replicas.insert(d.vm.clone(), domid);
                })?;
                self.tell_source(&f, |g| g.set_grantees(f.grantees()))
            });
        if let Err(e) = joined {
            self.end_agent(d, &agent);
            self.page_table.leave(spec.domain);
            return Err(match e {
                Error::SharingUnavailable(_) => e,
                other => Error::SharingUnavailable(crate::error::chain(&other)),
            });
        }
        Ok(agent)
    }

    /// Before a source goes: each of its running replicas copies what it maps from it
    /// (they keep running on their own memory, and the source's memory is freed with
    /// it rather than held by their mappings). Best effort: a replica that cannot be
    /// reached keeps its mappings, which Xen keeps valid until it lets go.
    fn release_replicas(&self, d: &XenDomain, agent: &XenAgent) {
        let f = match family::load(&self.host.store_dir, agent.family) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("reading {}'s family: {}", d.vm, crate::error::chain(&e));
                return;
            }
        };
        for name in f.replicas.keys() {
            match self
                .guest_at(name, &self.channel_path(name))
                .and_then(|g| g.release_source())
            {
                Ok(n) => tracing::info!("{name} copied the {n} frames it mapped from {}", d.vm),
                Err(e) => tracing::warn!(
                    "{name} could not let go of {}'s frames: {}",
                    d.vm,
                    crate::error::chain(&e)
                ),
            }
        }
    }

    /// dom0's end of a domain's guest channel.
    fn channel_path(&self, vm: &str) -> PathBuf {
        self.run_dir().path().join(format!("{vm}.chan"))
    }

    /// Ends a domain's part in its family's sharing (its server stopped or did not
    /// start): a replica leaves its source's grantees (the source ends the grants it
    /// issued to it), a source stops being reachable for clones, the page table's
    /// channel closes. Best effort: what cannot be told now is told at the next start.
    fn end_agent(&self, d: &XenDomain, agent: &XenAgent) {
        let store = &self.host.store_dir;
        let updated = family::update(store, agent.family, |f| {
            if agent.source {
                f.source = None;
            } else {
                f.replicas.remove(&d.vm);
            }
        });
        match updated {
            Ok(f) if !agent.source => {
                if let Err(e) = self.tell_source(&f, |g| g.set_grantees(f.grantees())) {
                    tracing::warn!(
                        "telling {}'s source to end its grants: {}",
                        d.vm,
                        crate::error::chain(&e)
                    );
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("updating {}'s family: {}", d.vm, crate::error::chain(&e)),
        }
        stop_helper(agent.page_table_relay, &d.vm, "page table channel relay");
    }

    fn forget_channel(&self, d: &XenDomain) {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&d.channel);
    }

    /// Waits until the guest side of `vm` (domid `domid`) reports its server ready.
    fn wait_ready(&self, vm: &str, domid: u32, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let failed = |what: String| Error::Domain {
            name: vm.to_string(),
            what: format!(
                "{what}; its console's last lines: {}",
                self.control.console_tail(vm, 5).join(" | ")
            ),
        };
        let mut misses = 0;
        loop {
            match self.control.read_from_guest(domid, GUEST_STATE)?.as_deref() {
                Some("ready") => return Ok(()),
                Some(s) if s.starts_with("failed") => {
                    return Err(failed(format!("its guest side reported: {s}")))
                }
                _ => {}
            }
            // A domain that is gone stays gone; a query that fails once under load
            // (xl times out on a busy xenstored) is asked again.
            match self.control.domid(vm) {
                Ok(Some(d)) if d == domid => misses = 0,
                _ => misses += 1,
            }
            if misses >= 3 {
                return Err(failed("the domU died while starting".into()));
            }
            if Instant::now() >= deadline {
                return Err(failed(format!(
                    "its guest side did not report a running server within {timeout:?}"
                )));
            }
            // The guest writes its state once per phase; nothing to wake us sooner.
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Starts the domain (created paused, its server config and agent handed over,
    /// unpaused) and opens dom0's end of its channel; returns the channel relay's pid
    /// and the agent.
    fn boot(
        &self,
        config: &InstanceConfig,
        d: &XenDomain,
        agent: Option<&AgentSpec>,
        timeout: Duration,
    ) -> Result<(u32, Option<XenAgent>)> {
        let domid = self
            .control
            .create_paused(&self.config_file(&d.vm), &d.vm)?;
        let mut set_up = None;
        let booted = (|| {
            let guest = serde_json::to_string(&domain::guest_instance(config))
                .map_err(|e| Error::CorruptRecord(config.name.clone(), e.to_string()))?;
            self.control.write_for_guest(domid, KEY_INSTANCE, &guest)?;
            if let Some(fs) = d.format {
                self.control
                    .write_for_guest(domid, KEY_FORMAT, fs_name(fs))?;
            }
            if let Some(spec) = agent {
                set_up = Some(self.setup_agent(spec, d, domid)?);
            }
            self.control.unpause(domid)?;
            self.wait_ready(&d.vm, domid, timeout)?;
            let log = self.run_dir().path().join(format!("{}.channel.log", d.vm));
            self.control.open_channel(domid, &d.channel, &log)
        })();
        match booted {
            Ok(relay) => {
                if let (Some(a), Some(spec)) = (&set_up, agent) {
                    if a.source {
                        // Clones reach the source's agent from now on.
                        family::update(&self.host.store_dir, spec.family, |f| {
                            f.source = Some(FamilySource {
                                vm: d.vm.clone(),
                                channel: d.channel.clone(),
                            })
                        })?;
                    }
                }
                Ok((relay, set_up))
            }
            Err(e) => {
                if let Err(e) = self.control.destroy(&d.vm) {
                    tracing::warn!("destroying {} after a failed start: {e}", d.vm);
                }
                if let Some(a) = &set_up {
                    self.end_agent(d, a);
                    self.page_table.leave(a.domain);
                }
                Err(e)
            }
        }
    }
}

fn fs_name(fs: FsType) -> &'static str {
    match fs {
        FsType::Ext4 => "ext4",
        FsType::Xfs => "xfs",
    }
}

/// The Xen part of a domain's state. The orchestration picks a domain's backend by the
/// state's own kind (`for_domain`), so the Xen backend is never handed another's.
fn xen(domain: &DomainState) -> &XenDomain {
    match domain {
        DomainState::Xen(d) => d,
        other => unreachable!("the xen substrate was handed a {} domain", other.kind()),
    }
}

fn xen_mut(domain: &mut DomainState) -> &mut XenDomain {
    match domain {
        DomainState::Xen(d) => d,
        other => unreachable!("the xen substrate was handed a {} domain", other.kind()),
    }
}

/// The domain's export process, if it still serves `volume` (a pid recorded before a
/// crash or a reboot may name anything now).
fn live_export(d: &XenDomain, volume: &str) -> Option<u32> {
    d.export_pid
        .filter(|p| crate::export::is_export_of(*p, volume))
}

/// Stops the relay of the domain's guest channel (the page table's channel relay is
/// its agent's, stopped when the agent's part ends: `end_agent`).
fn stop_channel_relay(d: &XenDomain) {
    if let Some(pid) = d.relay_pid {
        stop_helper(pid, &d.vm, "channel relay");
    }
    let _ = std::fs::remove_file(&d.channel);
}

/// Stops one of a domain's channel relays (a pid recorded before a reboot may name
/// anything now: only a relay is stopped; vchan-socket-proxy is what dbfork ran
/// before it had its own, and may still run for a domain set up then).
fn stop_helper(pid: u32, vm: &str, what: &str) {
    let is_relay = crate::process::cmdline(pid).is_some_and(|a| {
        a.first()
            .is_some_and(|x| x.ends_with(VCHAN_RELAY) || x.ends_with("vchan-socket-proxy"))
    });
    if is_relay && !crate::process::stop_process(pid) {
        tracing::warn!("the {what} of {vm} (pid {pid}) did not exit");
    }
}

impl Substrate for Xen {
    fn kind(&self) -> Kind {
        Kind::Xen
    }

    fn preflight(&self) -> Result<()> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::XenHostLacks(
                "creating domUs and serving their disks needs root in dom0".into(),
            ));
        }
        if !crate::is_xen_dom0() {
            return Err(Error::XenHostLacks(
                "this is not a Xen dom0 (/proc/xen/capabilities has no control_d): run dbfork \
                 in dom0, or use --substrate local"
                    .into(),
            ));
        }
        let script = Path::new("/etc/xen/scripts/block-dbfork");
        if !script.exists() {
            return Err(Error::XenHostLacks(format!(
                "{} is missing: install dbfork's hotplug script there (dom0-tools/substrate/xen-scripts/block-dbfork)",
                script.display()
            )));
        }
        let relay = crate::xen::control::vchan_relay();
        if !relay.exists() {
            return Err(Error::XenHostLacks(format!(
                "{} is missing: it is dom0's end of each domU's channels; install it next to \
                 dbfork (cargo build --release --workspace builds it, scripts/install-units \
                 installs it) or name it with DBFORK_VCHAN_RELAY",
                relay.display()
            )));
        }
        for (tool, pkg) in [("xl", "xen-utils-4.17"), ("nbd-client", "nbd-client")] {
            if !crate::local::on_path(tool) {
                return Err(Error::XenHostLacks(format!(
                    "{tool} is missing: install the Debian package {pkg}"
                )));
            }
        }
        Ok(())
    }

    fn attach(&self, name: &str, volume: &str, what: &NewDomain<'_>) -> Result<DomainState> {
        let socket = self.run_dir().nbd_socket(volume);
        let target = domain::disk_target(volume, &socket);
        let (derived, vdev, format) = match *what {
            NewDomain::Source {
                fs,
                domain_config,
                database_vdev,
            } => {
                let file = domain_config.ok_or_else(|| Error::NotForSubstrate {
                    what: "a source without a domain config".into(),
                    substrate: Kind::Xen,
                    fix: "a Xen source is a domU: name its xl config with --domain-config FILE \
                          (its database disk's vdev with --database-vdev, default xvdb)",
                })?;
                let text = std::fs::read_to_string(file)
                    .map_err(Error::io("reading the domain config", file))?;
                let in_file = |source| Error::XlConfig {
                    file: file.to_path_buf(),
                    source,
                };
                let cfg = XlConfig::parse(&text).map_err(in_file)?;
                let spec = SourceSpec {
                    name,
                    database_vdev,
                    database_target: &target,
                };
                let derived = source_config(&cfg, &spec).map_err(in_file)?;
                (derived, database_vdev.to_string(), Some(fs))
            }
            NewDomain::CloneOf {
                parent_name,
                family,
                parent,
                memory_mib,
                vcpus,
            } => {
                let DomainState::Xen(p) = parent else {
                    return Err(Error::NotForSubstrate {
                        what: format!("a clone of {parent_name} (a {} instance)", parent.kind()),
                        substrate: Kind::Xen,
                        fix: "a clone runs where its parent runs; leave --substrate out",
                    });
                };
                let in_record = |source| Error::XlConfig {
                    file: PathBuf::from(format!("{parent_name}'s recorded config")),
                    source,
                };
                let cfg = XlConfig::parse(&p.xl_config).map_err(in_record)?;
                let spec = ReplicaSpec {
                    name,
                    parent: parent_name,
                    family,
                    database_vdev: &p.vdev,
                    database_target: &target,
                    memory_mib,
                    vcpus,
                };
                let derived = replica_config(&cfg, &spec).map_err(in_record)?;
                (derived, p.vdev.clone(), None)
            }
        };
        // Each note is something the operator's config does not get as written (or a
        // clone it will not get): shown without -v.
        for note in &derived.notes {
            tracing::warn!("{name}'s xl config: {note}");
        }
        let export_pid = self.spawn_export(volume)?;
        Ok(DomainState::Xen(XenDomain {
            vm: name.to_string(),
            xl_config: derived.config.render(),
            vdev,
            channel: self.channel_path(name),
            export_pid: Some(export_pid),
            relay_pid: None,
            format,
            agent: None,
        }))
    }

    fn detach(&self, volume: &str, domain: &DomainState) -> Result<()> {
        let d = xen(domain);
        stop_channel_relay(d);
        // A domain detached without a stop before (its dbfork went down with it) may
        // still have its page table's channel relay.
        if let Some(a) = &d.agent {
            stop_helper(a.page_table_relay, &d.vm, "page table channel relay");
        }
        self.forget_channel(d);
        if let Some(pid) = live_export(d, volume) {
            if !crate::process::stop_process(pid) {
                return Err(Error::Domain {
                    name: d.vm.clone(),
                    what: format!("the export process of volume {volume} (pid {pid}) did not exit"),
                });
            }
        }
        let _ = std::fs::remove_file(self.config_file(&d.vm));
        Ok(())
    }

    fn reattach(&self, _name: &str, volume: &str, domain: &DomainState) -> Result<DomainState> {
        let mut d = xen(domain).clone();
        d.relay_pid = None;
        d.agent = None;
        if live_export(&d, volume).is_none() {
            d.export_pid = Some(self.spawn_export(volume)?);
        }
        Ok(DomainState::Xen(d))
    }

    fn health(&self, _config: &InstanceConfig, volume: &str, domain: &DomainState) -> Health {
        let d = xen(domain);
        let mut problems = Vec::new();
        let running = matches!(self.control.domid(&d.vm), Ok(Some(_)));
        if let Some(pid) = d.export_pid.filter(|_| live_export(d, volume).is_none()) {
            problems.push(format!(
                "the export process of volume {volume} (pid {pid}) is gone: the domU's database disk went with it"
            ));
        }
        if running && !d.relay_pid.is_some_and(crate::process::process_alive) {
            problems.push(format!(
                "dom0's end of {}'s channel is gone: dbfork cannot reach its database",
                d.vm
            ));
        }
        if let Some(a) = d.agent.as_ref().filter(|_| running) {
            if !crate::process::process_alive(a.page_table_relay) {
                problems.push(format!(
                    "dom0's end of {}'s page table channel is gone: its agent shares no pages \
                     until it is restarted (dbfork restart {})",
                    d.vm, d.vm
                ));
            }
        }
        Health {
            problems,
            log_tail: self.control.console_tail(&d.vm, 5),
        }
    }

    fn datadir(&self, _domain: &DomainState) -> PathBuf {
        Path::new(domain::GUEST_MOUNT).join("data")
    }

    fn quiesce(
        &self,
        _volume: &str,
        config: &InstanceConfig,
        domain: &DomainState,
    ) -> Result<Quiesced> {
        let frozen = self.guest(&config.name, xen(domain))?.freeze_fs()?;
        Ok(Quiesced::new(move || drop(frozen)))
    }

    fn hydration_order(
        &self,
        _domain: &DomainState,
        _parent_datadir: &Path,
        _warm: &WarmSet,
    ) -> Vec<(u64, u64)> {
        // The datadir's files are mapped to volume ranges through the mounted file
        // system (FIEMAP), which dom0 does not mount for a domU: hydration is in
        // volume order and on demand.
        Vec::new()
    }

    fn sql_port(&self, requested: Option<u16>) -> Result<u16> {
        // Each domU has its own address: the conventional port is free in it.
        Ok(requested.unwrap_or(3306))
    }

    fn init_datadir(&self, _config: &InstanceConfig) -> Result<()> {
        // The guest makes the file system and a fresh datadir at its first boot (the
        // domain state says so until then): dom0 does not mount a domU's disk.
        Ok(())
    }

    fn restore_datadir(
        &self,
        _config: &InstanceConfig,
        _stream: &mut dyn std::io::Read,
        _copied: &mut dyn FnMut(u64),
    ) -> Result<dbinstance::backup::Restored> {
        Err(Error::NotForSubstrate {
            what: "adopting a server you run (a copy of its data into a domU)".into(),
            substrate: Kind::Xen,
            fix: "adopt it on the local substrate (dbfork source adopt without --substrate xen)",
        })
    }

    fn import_datadir(
        &self,
        _config: &InstanceConfig,
        _from: &Path,
        _copied: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        Err(Error::NotForSubstrate {
            what: "taking over a server you run (its datadir into a domU)".into(),
            substrate: Kind::Xen,
            fix: "take it over on the local substrate",
        })
    }

    fn export_datadir(
        &self,
        _config: &InstanceConfig,
        _to: &Path,
        _copied: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        Err(Error::NotForSubstrate {
            what: "releasing a server taken over (a domU's datadir)".into(),
            substrate: Kind::Xen,
            fix: "only a server taken over on the local substrate is released",
        })
    }

    fn start(&self, req: &StartRequest<'_>, domain: &mut DomainState) -> Result<()> {
        if req.read_iops.is_some() {
            return Err(Error::NotForSubstrate {
                what: "a read limit (--read-iops)".into(),
                substrate: Kind::Xen,
                fix: "clone without --read-iops (a domU's disk is limited with Xen's own tools)",
            });
        }
        let d = xen_mut(domain);
        if live_export(d, req.volume).is_none() {
            return Err(Error::NotAttached(req.volume.to_string()));
        }
        if let Some(domid) = self.control.domid(&d.vm)? {
            return Err(Error::Domain {
                name: d.vm.clone(),
                what: format!("a domain of that name is already running (domid {domid})"),
            });
        }
        let mut agent = req.agent.cloned();
        if let Some(spec) = agent.as_mut() {
            self.fit_budget(spec, d).map_err(|e| match e {
                Error::SharingUnavailable(_) => e,
                other => Error::SharingUnavailable(crate::error::chain(&other)),
            })?;
        }
        let file = self.config_file(&d.vm);
        self.run_dir()
            .ensure()
            .map_err(Error::io("creating the run dir", self.run_dir().path()))?;
        std::fs::write(&file, &d.xl_config).map_err(Error::io("writing the xl config", &file))?;
        self.forget_channel(d);
        // A domU boots its kernel and OS before its server (and a new source makes its
        // file system and datadir first): more than a server process's start.
        let (relay, agent) = self.boot(
            req.config,
            d,
            agent.as_ref(),
            req.timeout.max(self.min_boot),
        )?;
        d.relay_pid = Some(relay);
        d.agent = agent;
        d.format = None;
        // The channel answers, or the start failed.
        if let Err(e) = self.guest(&req.config.name, d) {
            let _ = self.control.destroy(&d.vm);
            // As when the domain did not come up at all: out of its family too.
            if let Some(a) = &d.agent {
                self.end_agent(d, a);
                self.page_table.leave(a.domain);
            }
            stop_channel_relay(d);
            return Err(e);
        }
        Ok(())
    }

    fn stop(&self, _config: &InstanceConfig, domain: &DomainState, how: Stop) -> Result<()> {
        let d = xen(domain);
        if let Some(a) = d.agent.as_ref().filter(|a| a.source) {
            self.release_replicas(d, a);
        }
        self.forget_channel(d);
        match how {
            Stop::Kill => self.control.destroy(&d.vm)?,
            Stop::Clean(timeout) => self.control.shutdown(&d.vm, timeout)?,
        }
        // The domain is gone, and with it every grant mapping it held: its source
        // may end the grants it issued to it.
        if let Some(a) = &d.agent {
            self.end_agent(d, a);
        }
        stop_channel_relay(d);
        Ok(())
    }

    fn running(&self, _config: &InstanceConfig, domain: &DomainState) -> bool {
        matches!(self.control.domid(&xen(domain).vm), Ok(Some(_)))
    }

    fn read_limit(&self, _domain: &DomainState) -> Option<crate::ReadLimit> {
        None
    }

    fn endpoint(&self, config: &InstanceConfig, domain: &DomainState) -> Result<Box<dyn Endpoint>> {
        Ok(Box::new(self.guest(&config.name, xen(domain))?))
    }

    fn memory_use(&self, config: &InstanceConfig, domain: &DomainState) -> Option<MemoryUse> {
        match self
            .guest(&config.name, xen(domain))
            .and_then(|g| g.memory_use())
        {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::debug!("{}'s memory: {}", config.name, crate::error::chain(&e));
                None
            }
        }
    }

    fn persist_agent_state(&self, _domain: &DomainState) -> Result<()> {
        Ok(())
    }

    fn sharing_available(&self) -> Result<()> {
        self.page_table.available()
    }

    fn publish_clone_lsn(&self, family: u32, lsn: u64) -> Result<()> {
        let store = &self.host.store_dir;
        let f = family::load(store, family)?;
        self.tell_source(&f, |g| g.publish_clone_lsn(lsn))?;
        family::update(store, family, |f| f.clone_lsn = Some(lsn)).map(|_| ())
    }

    fn clone_lsn(&self, family: u32) -> Option<u64> {
        family::load(&self.host.store_dir, family).ok()?.clone_lsn
    }

    fn agent_counters(&self, domain: &DomainState) -> Option<serde_json::Value> {
        let d = xen(domain);
        d.agent.as_ref()?;
        match self.guest(&d.vm, d).and_then(|g| g.agent_counters()) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("{}'s agent counters: {}", d.vm, crate::error::chain(&e));
                None
            }
        }
    }

    fn leave_family(&self, domain: u32) {
        self.page_table.leave(domain);
    }

    fn destroy_family(&self, family: u32) {
        self.page_table.destroy_family(family);
        family::remove(&self.host.store_dir, family);
    }

    fn sweep(&self) -> Swept {
        Swept::default()
    }

    fn release_store(&self) {
        self.page_table.stop();
    }
}

/// The least a domU's start is given, from `xl create` to its server answering.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
