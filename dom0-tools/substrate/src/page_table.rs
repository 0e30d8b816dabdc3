//! The store's page table service: one `pagetabled` per store, started on demand in
//! dom0, stopped when the store's last instance is gone. Every backend binds its
//! domains' servers to family domains through it (a pid here, a domid on Xen).

use crate::error::{Error, Result};
use crate::process::{spawn_helper, stop_process};
use crate::{Identity, RunDir};
use pagetable::admin::{AdminClient, AdminRequest};
use pagetable::{DomainId, FamilyId};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long the daemon gets to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a store's daemon keeps its sockets and files.
#[derive(Debug, Clone)]
pub struct PageTableService {
    run: RunDir,
    daemon: PathBuf,
}

impl PageTableService {
    /// The service of `store`, run by the `pagetabled` next to the `dbfork` binary (or
    /// `DBFORK_PAGETABLED`).
    pub fn new(store: &Path, dbfork_exe: &Path) -> Self {
        let daemon = std::env::var_os("DBFORK_PAGETABLED")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                dbfork_exe
                    .parent()
                    .map(|d| d.join("pagetabled"))
                    .unwrap_or_else(|| PathBuf::from("pagetabled"))
            });
        PageTableService {
            run: RunDir::new(store),
            daemon,
        }
    }

    /// Whether the daemon can be run at all; the error says what to do.
    pub fn available(&self) -> Result<()> {
        if self.daemon.exists() {
            Ok(())
        } else {
            Err(Error::SharingUnavailable(format!(
                "{} not found (build the workspace: cargo build --release, or set DBFORK_PAGETABLED)",
                self.daemon.display()
            )))
        }
    }

    /// The data socket agents connect to.
    pub fn data_socket(&self) -> PathBuf {
        self.run.path().join("pagetabled.sock")
    }

    fn admin_socket(&self) -> PathBuf {
        self.run.path().join("pagetabled.admin")
    }

    fn pid_file(&self) -> PathBuf {
        self.run.path().join("pagetabled.pid")
    }

    fn log(&self) -> PathBuf {
        self.run.path().join("pagetabled.log")
    }

    /// Every file the daemon leaves in the run dir.
    fn files(&self) -> [PathBuf; 5] {
        [
            self.data_socket(),
            self.admin_socket(),
            self.pid_file(),
            self.log(),
            self.run.path().join("pagetabled.state"),
        ]
    }

    /// Starts the daemon unless it already answers. A daemon that died is started
    /// again; its state file brings the families back.
    pub fn ensure_running(&self) -> Result<()> {
        self.available()?;
        self.run
            .ensure()
            .map_err(Error::io("creating the run dir", self.run.path()))?;
        if AdminClient::connect(self.admin_socket()).is_ok() {
            return Ok(());
        }
        let log_path = self.log();
        let mut cmd = Command::new(&self.daemon);
        cmd.arg("serve")
            .arg("--socket")
            .arg(self.data_socket())
            .arg("--admin-socket")
            .arg(self.admin_socket())
            .arg("--state-file")
            .arg(self.run.path().join("pagetabled.state"));
        let what = format!("{} serve", self.daemon.display());
        let up = spawn_helper(cmd, &what, &log_path, START_TIMEOUT, || {
            AdminClient::connect(self.admin_socket()).is_ok()
        })?;
        let Some(pid) = up else {
            return Err(Error::SharingUnavailable(format!(
                "pagetabled did not start; see {}",
                log_path.display()
            )));
        };
        let pid_file = self.pid_file();
        // It outlives this command; `stop` ends it when the store is empty.
        std::fs::write(&pid_file, pid.to_string()).map_err(Error::io("writing", &pid_file))
    }

    fn admin(&self, req: AdminRequest) -> Result<()> {
        let mut c = AdminClient::connect(self.admin_socket())?;
        c.call(&req)?;
        Ok(())
    }

    /// Makes `domain` a member of `family` (created if needed) and binds the server
    /// with `identity` to it, starting the daemon if it is not running.
    pub fn join(&self, family: u32, domain: u32, identity: Identity) -> Result<()> {
        self.ensure_running()?;
        // A family that exists already is fine (a restarted daemon restores its state).
        let _ = self.admin(AdminRequest::FamilyCreate {
            family: FamilyId(family),
        });
        self.admin(AdminRequest::FamilyAdd {
            family: FamilyId(family),
            domain: DomainId(domain),
        })?;
        match identity {
            Identity::Process { pid } => self.admin(AdminRequest::BindPid {
                pid,
                domain: DomainId(domain),
            }),
            Identity::XenChannel { pid, domid } => self.admin(AdminRequest::BindChannel {
                pid,
                domid,
                domain: DomainId(domain),
            }),
        }
    }

    /// Drops a domain's entries, membership and bindings (best effort: the daemon may
    /// be gone, and then so are they).
    pub fn leave(&self, domain: u32) {
        if let Err(e) = self.admin(AdminRequest::RemoveDomain {
            domain: DomainId(domain),
        }) {
            tracing::debug!("leaving the page table: {e}");
        }
    }

    /// Drops a family and everything registered in it (best effort, as `leave`).
    pub fn destroy_family(&self, family: u32) {
        if let Err(e) = self.admin(AdminRequest::FamilyDestroy {
            family: FamilyId(family),
        }) {
            tracing::debug!("destroying the family in the page table: {e}");
        }
    }

    /// Every entry of `family` (checks from outside and debugging; walks the table).
    pub fn family_entries(&self, family: u32) -> Result<Vec<pagetable::admin::EntryDump>> {
        let mut c = AdminClient::connect(self.admin_socket())?;
        match c.call(&AdminRequest::FamilyEntries {
            family: FamilyId(family),
        })? {
            pagetable::admin::AdminReply::Entries { entries } => Ok(entries),
            other => Err(Error::SharingUnavailable(format!(
                "unexpected reply from pagetabled: {other:?}"
            ))),
        }
    }

    /// The daemon's pid, when it runs.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
    }

    /// Stops the daemon and removes its files (the store has no instance left).
    pub fn stop(&self) {
        if let Some(pid) = self.pid() {
            if !stop_process(pid) {
                crate::process::signal(pid, libc::SIGKILL);
            }
        }
        for f in self.files() {
            let _ = std::fs::remove_file(f);
        }
    }
}
