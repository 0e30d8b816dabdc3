//! The Xen mechanisms the backend drives, behind one narrow trait so that its logic
//! (what is created, written, waited for and torn down, in which order) is tested
//! without a hypervisor: `xl` for domains, xenstore for what dom0 hands a guest and
//! what the guest reports, and the channel relay that makes a domU's vchan a Unix
//! socket in dom0.

use crate::error::Result;
use crate::xen::domain::VCHAN_RELAY;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the Xen backend asks of the host's Xen.
pub trait DomainControl {
    /// Creates the domain `name` from `config`, paused (nothing of it runs until
    /// `unpause`), and returns its domid.
    fn create_paused(&self, config: &Path, name: &str) -> Result<u32>;
    fn unpause(&self, domid: u32) -> Result<()>;
    /// The domid of `name`, `None` when there is no such domain.
    fn domid(&self, name: &str) -> Result<Option<u32>>;
    /// Asks `name` to shut down, waits up to `timeout`, destroys it if it is still there.
    fn shutdown(&self, name: &str, timeout: Duration) -> Result<()>;
    /// Destroys `name` at once; a domain that is gone is fine.
    fn destroy(&self, name: &str) -> Result<()>;
    /// Writes `value` at `KEY` of the domain's dbfork directory, readable by that domain
    /// (and dom0) only.
    fn write_for_guest(&self, domid: u32, key: &str, value: &str) -> Result<()>;
    /// What the domain wrote at `path` under its own directory (`data/...`).
    fn read_from_guest(&self, domid: u32, path: &str) -> Result<Option<String>>;
    /// Starts dom0's end of the domain's channel: a Unix socket at `socket` whose
    /// connections reach the guest side's vchan. Returns the relay's pid.
    fn open_channel(&self, domid: u32, socket: &Path, log: &Path) -> Result<u32>;
    /// Starts dom0's end of the channel between the domain's agent and the page table:
    /// a vchan dom0 serves (the guest connects to it), each of whose connections
    /// reaches the page table's Unix socket `page_table`. Returns the relay's pid (the
    /// page table knows the domain by it).
    fn open_page_table_channel(&self, domid: u32, page_table: &Path, log: &Path) -> Result<u32>;
    /// What `xl info` prints (the hypervisor's command line among it).
    fn xl_info(&self) -> Result<String>;
    /// The end of the domain's console log, for messages.
    fn console_tail(&self, name: &str, lines: usize) -> Vec<String>;
}

/// dom0's end of a domU's vchans: dbfork's relay (`dbfork-vchan-relay`, next to the
/// running binary, or `DBFORK_VCHAN_RELAY`). Xen's own vchan-socket-proxy leaves a
/// first request unread when it arrives with the connect (docs/xen.md).
pub fn vchan_relay() -> PathBuf {
    std::env::var_os("DBFORK_VCHAN_RELAY")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.join(VCHAN_RELAY)))
        })
        .unwrap_or_else(|| PathBuf::from(VCHAN_RELAY))
}

#[cfg(feature = "xen")]
pub use real::{guest_dir, guest_perms, XenControl};

#[cfg(feature = "xen")]
mod real {
    use super::*;
    use crate::error::Error;
    use crate::process::{spawn_helper, STARTUP_TIMEOUT};
    use crate::xen::domain::{GUEST_KEYS, GUEST_VCHAN, PAGE_TABLE_VCHAN};
    use crate::xen::toolstack::Xl;
    use std::process::Command;
    use xenstore::{Perm, Xenstore};

    /// The host's Xen: `xl`, xenstored, dbfork's vchan relay, xenconsoled's logs.
    pub struct XenControl {
        xl: Xl,
        xs: std::sync::OnceLock<Xenstore>,
    }

    /// Where xenconsoled writes guests' consoles (when started with --log=guest).
    const CONSOLE_LOGS: &str = "/var/log/xen/console";

    impl Default for XenControl {
        fn default() -> Self {
            XenControl {
                xl: Xl::default(),
                xs: std::sync::OnceLock::new(),
            }
        }
    }

    impl XenControl {
        fn xs(&self) -> Result<&Xenstore> {
            if let Some(xs) = self.xs.get() {
                return Ok(xs);
            }
            let xs = Xenstore::open()?;
            Ok(self.xs.get_or_init(|| xs))
        }
    }

    /// The directory dom0 writes a domain's keys in.
    pub fn guest_dir(domid: u32) -> String {
        format!("/local/domain/{domid}/{GUEST_KEYS}")
    }

    /// Who may read what dom0 hands a domain: dom0 owns it (the owner may do
    /// anything, so the default for everyone else is nothing), and that domain may
    /// read it; no other domain sees it, none may write it.
    pub fn guest_perms(domid: u32) -> [Perm; 2] {
        [
            Perm {
                domid: 0,
                read: false,
                write: false,
            },
            Perm {
                domid,
                read: true,
                write: false,
            },
        ]
    }

    impl DomainControl for XenControl {
        fn create_paused(&self, config: &Path, name: &str) -> Result<u32> {
            self.xl.create_paused(config, name)
        }
        fn unpause(&self, domid: u32) -> Result<()> {
            self.xl.unpause(domid)
        }
        fn domid(&self, name: &str) -> Result<Option<u32>> {
            self.xl.domid(name)
        }
        fn shutdown(&self, name: &str, timeout: Duration) -> Result<()> {
            self.xl.shutdown(name, timeout)
        }
        fn destroy(&self, name: &str) -> Result<()> {
            self.xl.destroy(name)
        }
        fn write_for_guest(&self, domid: u32, key: &str, value: &str) -> Result<()> {
            let xs = self.xs()?;
            let dir = guest_dir(domid);
            let path = format!("{dir}/{key}");
            xs.write(&path, value.as_bytes())?;
            let perms = guest_perms(domid);
            xs.set_permissions(&dir, &perms)?;
            xs.set_permissions(&path, &perms)?;
            Ok(())
        }
        fn read_from_guest(&self, domid: u32, path: &str) -> Result<Option<String>> {
            Ok(self
                .xs()?
                .read_string(&format!("/local/domain/{domid}/{path}"))?)
        }
        fn open_channel(&self, domid: u32, socket: &Path, log: &Path) -> Result<u32> {
            let _ = std::fs::remove_file(socket);
            let relay = vchan_relay();
            let mut cmd = Command::new(&relay);
            cmd.args(["connect", &domid.to_string()])
                .arg(format!("/local/domain/{domid}/{GUEST_VCHAN}"))
                .arg(socket);
            let what = format!("{} connect {domid}", relay.display());
            spawn_helper(cmd, &what, log, STARTUP_TIMEOUT, || socket.exists())?.ok_or_else(|| {
                Error::Domain {
                    name: format!("domid {domid}"),
                    what: format!(
                        "the channel relay did not come up: {}",
                        dbinstance::tools::tail_of_file(log, 3).replace('\n', " | ")
                    ),
                }
            })
        }
        fn xl_info(&self) -> Result<String> {
            self.xl.info()
        }
        fn open_page_table_channel(
            &self,
            domid: u32,
            page_table: &Path,
            log: &Path,
        ) -> Result<u32> {
            let xs = self.xs()?;
            let path = format!("/local/domain/{domid}/{PAGE_TABLE_VCHAN}");
            let relay = vchan_relay();
            let mut cmd = Command::new(&relay);
            cmd.args(["serve", &domid.to_string(), &path])
                .arg(page_table);
            let what = format!("{} serve {domid} {path}", relay.display());
            // Up once the vchan's ring is published for the guest to connect to.
            let ring = format!("{path}/ring-ref");
            let up = || matches!(xs.read_string(&ring), Ok(Some(_)));
            spawn_helper(cmd, &what, log, STARTUP_TIMEOUT, up)?.ok_or_else(|| Error::Domain {
                name: format!("domid {domid}"),
                what: format!(
                    "the page table's channel relay did not come up: {}",
                    dbinstance::tools::tail_of_file(log, 3).replace('\n', " | ")
                ),
            })
        }
        fn console_tail(&self, name: &str, lines: usize) -> Vec<String> {
            let log = PathBuf::from(CONSOLE_LOGS).join(format!("guest-{name}.log"));
            dbinstance::tools::tail_of_file(&log, lines)
                .lines()
                .map(|l| l.trim_end_matches('\r').to_string())
                .filter(|l| !l.trim().is_empty())
                .collect()
        }
    }
}

#[cfg(all(test, feature = "xen"))]
mod tests {
    use super::*;

    #[test]
    fn a_guests_keys_are_dom0s_and_readable_by_that_domain_only() {
        assert_eq!(guest_dir(7), "/local/domain/7/dbfork");
        let [owner, reader] = guest_perms(7);
        // The first entry is the owner and everyone's default.
        assert_eq!((owner.domid, owner.read, owner.write), (0, false, false));
        assert_eq!((reader.domid, reader.read, reader.write), (7, true, false));
        // What the guest side reads and writes under its own directory.
        assert_eq!(crate::xen::domain::GUEST_STATE, "data/dbfork-state");
        assert_eq!(crate::xen::domain::GUEST_VCHAN, "data/dbfork");
    }
}
