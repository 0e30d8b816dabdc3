//! What every instance verb works with: the store (volumes, records, runtime files)
//! and the substrate its domains run on.

use crate::error::{Error, Result};
use crate::registry::Registry;
use lazyvol::Store;
use std::path::{Path, PathBuf};
use substrate::{Host, Kind, RunDir, Substrate};

pub struct Ctx {
    pub store_dir: PathBuf,
    substrate: Box<dyn Substrate>,
    /// The host, to make the backend of a domain recorded on another substrate.
    host: Option<Host>,
    /// That backend, made when first needed.
    other: std::sync::OnceLock<Box<dyn Substrate>>,
}

impl Ctx {
    /// The store at `store_dir` on the substrate asked for (or the one this host calls
    /// for), with this `dbfork` binary running the volume exports.
    pub fn new(store_dir: &Path, substrate: Option<Kind>) -> Result<Self> {
        let dbfork_exe = std::env::current_exe()
            .map_err(Error::io("locating the dbfork binary", "/proc/self/exe"))?;
        Self::on(store_dir, &dbfork_exe, substrate)
    }

    /// As [`Ctx::new`] with the `dbfork` binary named (tests and tools that are not
    /// the binary themselves).
    pub fn on(store_dir: &Path, dbfork_exe: &Path, substrate: Option<Kind>) -> Result<Self> {
        let host = Host {
            store_dir: store_dir.to_path_buf(),
            dbfork_exe: dbfork_exe.to_path_buf(),
        };
        let mut ctx = Self::with_substrate(store_dir, substrate::detect(substrate, &host)?);
        ctx.host = Some(host);
        Ok(ctx)
    }

    /// The store with a given substrate (a test double, or one already made).
    pub fn with_substrate(store_dir: &Path, substrate: Box<dyn Substrate>) -> Self {
        Ctx {
            store_dir: store_dir.to_path_buf(),
            substrate,
            host: None,
            other: std::sync::OnceLock::new(),
        }
    }

    /// The substrate new domains are made on.
    pub fn substrate(&self) -> &dyn Substrate {
        self.substrate.as_ref()
    }

    /// The backend of a recorded domain: the one its state names (a store can hold
    /// local instances and domUs).
    pub fn substrate_for(&self, domain: &substrate::DomainState) -> Result<&dyn Substrate> {
        if domain.kind() == self.substrate.kind() {
            return Ok(self.substrate.as_ref());
        }
        let Some(host) = &self.host else {
            // A context made around one given substrate (a test double) has no other.
            return Ok(self.substrate.as_ref());
        };
        if self.other.get().is_none() {
            let made = substrate::for_domain(domain, host)?;
            let _ = self.other.set(made);
        }
        match self.other.get() {
            Some(s) if s.kind() == domain.kind() => Ok(s.as_ref()),
            // Substrates are two: a store's other one is the one made above.
            _ => Ok(self.substrate.as_ref()),
        }
    }

    pub fn store(&self) -> Result<Store> {
        Store::open(&self.store_dir).map_err(|source| Error::Store {
            dir: self.store_dir.clone(),
            source,
        })
    }

    /// Deletes an instance's volume and the log of its export process (a stop keeps
    /// that log; nothing of a deleted volume stays in the store).
    pub fn delete_volume(&self, name: &str) -> std::result::Result<(), lazyvol::Error> {
        let store = Store::open(&self.store_dir)?;
        store.delete(name)?;
        let _ = std::fs::remove_file(self.run_dir().export_log(name));
        Ok(())
    }

    pub fn registry(&self) -> Registry {
        Registry::new(&self.store_dir)
    }

    pub fn run_dir(&self) -> RunDir {
        RunDir::new(&self.store_dir)
    }

    /// A name no instance or volume of the store has, and that is safe in paths and in
    /// SQL identifiers of replication users.
    pub fn check_free(&self, name: &str) -> Result<()> {
        check_name(name)?;
        if self.registry().exists(name) {
            return Err(Error::InstanceExists(name.to_string()));
        }
        if self.store()?.status(name).is_ok() {
            return Err(Error::VolumeExists(name.to_string()));
        }
        Ok(())
    }

    /// Bytes free on the store's file system (or where it will be made: its nearest
    /// existing parent's).
    pub fn free_bytes(&self) -> Result<u64> {
        let existing = self
            .store_dir
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(&self.store_dir);
        free_bytes(existing)
    }

    /// A lazy clone grows to its full size as it hydrates; refused up front when the
    /// store's filesystem cannot hold that, instead of failing halfway with ENOSPC.
    pub fn check_space(&self, needed: u64) -> Result<()> {
        std::fs::create_dir_all(&self.store_dir)
            .map_err(Error::io("creating the store", &self.store_dir))?;
        let free = free_bytes(&self.store_dir)?;
        if free < needed {
            return Err(Error::NoSpace {
                dir: self.store_dir.clone(),
                needed: crate::units::human(needed),
                free: crate::units::human(free),
            });
        }
        Ok(())
    }

    /// Why page sharing is off for new instances, if it is: turned off for the store's
    /// user (`DBFORK_SHARING=off`) or unavailable on the substrate.
    pub fn sharing_off(&self) -> Option<String> {
        if std::env::var("DBFORK_SHARING").is_ok_and(|v| v == "off") {
            return Some("turned off by DBFORK_SHARING=off".into());
        }
        self.substrate.sharing_available().err().map(|e| match e {
            substrate::Error::SharingUnavailable(why) => why,
            other => crate::error::chain(&other),
        })
    }
}

/// Instance and volume names share one namespace and must be safe in paths and SQL
/// identifiers of replication users.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// Free bytes on the filesystem holding `path`.
/// Bytes free on the file system of `path`.
pub fn free_bytes(path: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| {
        Error::io("statvfs", path)(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    })?;
    // SAFETY: statvfs writes into the zeroed struct we own; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; both pointers are valid for the call.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(Error::io("statvfs", path)(std::io::Error::last_os_error()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["a", "shop-r1", "A_9"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "-x", "a b", "a/b", "é", &"x".repeat(49)] {
            assert!(
                matches!(check_name(bad), Err(Error::InvalidName(_))),
                "{bad:?}"
            );
        }
    }
}
