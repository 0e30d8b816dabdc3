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
//! Page sharing between domUs (grants) and read limits are not built for Xen: a
//! replica reads its own disk.

use crate::error::{Error, Result};
use crate::xen::control::DomainControl;
use crate::xen::domain::{self, XenDomain, GUEST_STATE, KEY_FORMAT, KEY_INSTANCE};
use crate::xen::guest::GuestEndpoint;
use crate::{
    DomainState, Endpoint, FsType, Health, Host, Kind, NewDomain, Quiesced, RunDir, StartRequest,
    Stop, Substrate, Swept, WarmSet,
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
    /// connection.
    fn guest(&self, name: &str, d: &XenDomain) -> Result<GuestEndpoint> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = channels.get(&d.channel) {
            return Ok(g.clone());
        }
        let g = GuestEndpoint::connect(name, &d.channel)?;
        channels.insert(d.channel.clone(), g.clone());
        Ok(g)
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

    /// Starts the domain (created paused, its server config handed over, unpaused)
    /// and opens dom0's end of its channel; returns the channel proxy's pid.
    fn boot(&self, config: &InstanceConfig, d: &XenDomain, timeout: Duration) -> Result<u32> {
        let domid = self
            .control
            .create_paused(&self.config_file(&d.vm), &d.vm)?;
        let booted = (|| {
            let guest = serde_json::to_string(&domain::guest_instance(config))
                .map_err(|e| Error::CorruptRecord(config.name.clone(), e.to_string()))?;
            self.control.write_for_guest(domid, KEY_INSTANCE, &guest)?;
            if let Some(fs) = d.format {
                self.control
                    .write_for_guest(domid, KEY_FORMAT, fs_name(fs))?;
            }
            self.control.unpause(domid)?;
            self.wait_ready(&d.vm, domid, timeout)?;
            let log = self.run_dir().path().join(format!("{}.channel.log", d.vm));
            self.control.open_channel(domid, &d.channel, &log)
        })();
        if booted.is_err() {
            if let Err(e) = self.control.destroy(&d.vm) {
                tracing::warn!("destroying {} after a failed start: {e}", d.vm);
            }
        }
        booted
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

fn stop_proxy(d: &XenDomain) {
    if let Some(pid) = d.proxy_pid {
        let is_proxy = crate::process::cmdline(pid)
            .is_some_and(|a| a.iter().any(|x| x.ends_with("vchan-socket-proxy")));
        if is_proxy && !crate::process::stop_process(pid) {
            tracing::warn!("the channel proxy of {} (pid {pid}) did not exit", d.vm);
        }
    }
    let _ = std::fs::remove_file(&d.channel);
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
        for note in &derived.notes {
            tracing::info!("{name}'s xl config: {note}");
        }
        let export_pid = self.spawn_export(volume)?;
        Ok(DomainState::Xen(XenDomain {
            vm: name.to_string(),
            xl_config: derived.config.render(),
            vdev,
            channel: self.run_dir().path().join(format!("{name}.chan")),
            export_pid: Some(export_pid),
            proxy_pid: None,
            format,
        }))
    }

    fn detach(&self, volume: &str, domain: &DomainState) -> Result<()> {
        let d = xen(domain);
        stop_proxy(d);
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
        d.proxy_pid = None;
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
        if running && !d.proxy_pid.is_some_and(crate::process::process_alive) {
            problems.push(format!(
                "dom0's end of {}'s channel is gone: dbfork cannot reach its database",
                d.vm
            ));
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

    fn start(&self, req: &StartRequest<'_>, domain: &mut DomainState) -> Result<()> {
        if req.read_iops.is_some() {
            return Err(Error::NotForSubstrate {
                what: "a read limit (--read-iops)".into(),
                substrate: Kind::Xen,
                fix: "clone without --read-iops (a domU's disk is limited with Xen's own tools)",
            });
        }
        if req.agent.is_some() {
            return Err(Error::SharingUnavailable(XEN_SHARING.into()));
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
        let file = self.config_file(&d.vm);
        self.run_dir()
            .ensure()
            .map_err(Error::io("creating the run dir", self.run_dir().path()))?;
        std::fs::write(&file, &d.xl_config).map_err(Error::io("writing the xl config", &file))?;
        self.forget_channel(d);
        // A domU boots its kernel and OS before its server (and a new source makes its
        // file system and datadir first): more than a server process's start.
        let proxy = self.boot(req.config, d, req.timeout.max(self.min_boot))?;
        d.proxy_pid = Some(proxy);
        d.format = None;
        // The channel answers, or the start failed.
        if let Err(e) = self.guest(&req.config.name, d) {
            stop_proxy(d);
            let _ = self.control.destroy(&d.vm);
            return Err(e);
        }
        Ok(())
    }

    fn stop(&self, _config: &InstanceConfig, domain: &DomainState, how: Stop) -> Result<()> {
        let d = xen(domain);
        self.forget_channel(d);
        match how {
            Stop::Kill => self.control.destroy(&d.vm)?,
            Stop::Clean(timeout) => self.control.shutdown(&d.vm, timeout)?,
        }
        stop_proxy(d);
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

    fn persist_agent_state(&self, _domain: &DomainState) -> Result<()> {
        Ok(())
    }

    fn sharing_available(&self) -> Result<()> {
        Err(Error::SharingUnavailable(XEN_SHARING.into()))
    }

    fn publish_clone_lsn(&self, _family: u32, _lsn: u64) -> Result<()> {
        Err(Error::SharingUnavailable(XEN_SHARING.into()))
    }

    fn clone_lsn(&self, _family: u32) -> Option<u64> {
        None
    }

    fn agent_counters(&self, _domain: &DomainState) -> Option<serde_json::Value> {
        None
    }

    fn leave_family(&self, _domain: u32) {}

    fn destroy_family(&self, _family: u32) {}

    fn sweep(&self) -> Swept {
        Swept::default()
    }

    fn release_store(&self) {}
}

/// The least a domU's start is given, from `xl create` to its server answering.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

/// Why a domU shares no pages yet.
const XEN_SHARING: &str =
    "buffer-pool pages are not shared between Xen domUs yet (grant sharing is not built): \
     each replica reads its own disk";
