//! A source's side of grant sharing: `/dev/dbfork_gnt` (guest-kmod/), which pins pages
//! of the caller's pool and grants them read-only to another domain. The interface is
//! guest-kmod/dbfork_gnt.h, version 2; `tests/grant_abi.rs` checks this file's numbers
//! and layouts against that header.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::{GrantRef, GRANTS_PER_FRAME};
use crate::error::{AgentError, Result};

pub const DBFORK_GNT_PATH: &str = "/dev/dbfork_gnt";
/// The interface version this agent speaks.
pub const IFACE_VERSION: u32 = 2;

/// `struct dbfork_gnt_pool`.
#[repr(C)]
pub struct PoolArg {
    pub addr: u64,
    pub len: u64,
}

/// `struct dbfork_gnt_grant`.
#[repr(C)]
pub struct GrantArg {
    pub addr: u64,
    pub domid: u32,
    pub gref: u32,
    pub count: u32,
    pub pad: u32,
}

/// `struct dbfork_gnt_revoke`.
#[repr(C)]
pub struct RevokeArg {
    pub gref: u32,
    pub pad: u32,
}

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | ((b'G' as u64) << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
pub const DBFORK_GNT_VERSION: u64 = ioc(IOC_READ, 0, std::mem::size_of::<u32>());
pub const DBFORK_GNT_SET_POOL: u64 = ioc(IOC_WRITE, 1, std::mem::size_of::<PoolArg>());
pub const DBFORK_GNT_GRANT: u64 = ioc(IOC_READ | IOC_WRITE, 2, std::mem::size_of::<GrantArg>());
pub const DBFORK_GNT_REVOKE: u64 = ioc(IOC_WRITE, 3, std::mem::size_of::<RevokeArg>());

/// What ending a grant did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// Ended; the page is unpinned.
    Ended,
    /// The other domain still maps it: the pin stays, ask again later.
    StillMapped,
}

/// An open `/dev/dbfork_gnt`: the grants made through it end when it is closed (or as
/// soon as their mappers let go).
pub struct DbforkGnt {
    file: File,
    domid_of_self: Option<u16>,
}

impl DbforkGnt {
    /// Opens the device and checks that it speaks this agent's interface version.
    pub fn open() -> Result<DbforkGnt> {
        Self::open_at(Path::new(DBFORK_GNT_PATH))
    }

    pub fn open_at(path: &Path) -> Result<DbforkGnt> {
        let file = super::open_device(
            path,
            "load dbfork's guest module: insmod dbfork_gnt.ko, built from guest-kmod/ for \
             this domU's kernel",
        )?;
        let gnt = DbforkGnt {
            file,
            domid_of_self: None,
        };
        let mut version = 0u32;
        gnt.ioctl(
            DBFORK_GNT_VERSION,
            &mut version as *mut u32 as *mut libc::c_void,
        )
        .map_err(|e| AgentError::io(format!("asking {} its version", path.display()), e))?;
        if version != IFACE_VERSION {
            return Err(AgentError::io(
                format!(
                    "{} speaks interface version {version}, this agent version {IFACE_VERSION} \
                     (load the module built from the same checkout as the agent)",
                    path.display()
                ),
                io::Error::from(io::ErrorKind::Unsupported),
            ));
        }
        Ok(gnt)
    }

    fn ioctl(&self, req: u64, arg: *mut libc::c_void) -> io::Result<()> {
        // SAFETY: an ioctl of dbfork_gnt; every caller passes a struct of the size its
        // request number names.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), req as _, arg) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Names the pool, `[addr, addr + len)` of this process (page-aligned), once: every
    /// page granted must lie in it.
    pub fn set_pool(&self, addr: usize, len: usize) -> Result<()> {
        let mut arg = PoolArg {
            addr: addr as u64,
            len: len as u64,
        };
        self.ioctl(DBFORK_GNT_SET_POOL, (&mut arg as *mut PoolArg).cast())
            .map_err(|e| AgentError::io(format!("setting the grant pool {addr:#x}+{len}"), e))
    }

    /// Grants the `pages` consecutive Xen pages from `addr` (in the pool) read-only to
    /// `domid`, under consecutive references; returns the first (page i has first + i).
    pub fn grant_run(&self, addr: usize, pages: usize, domid: u16) -> Result<u32> {
        let mut arg = GrantArg {
            addr: addr as u64,
            domid: u32::from(domid),
            gref: 0,
            count: pages as u32,
            pad: 0,
        };
        self.ioctl(DBFORK_GNT_GRANT, (&mut arg as *mut GrantArg).cast())
            .map_err(|e| {
                AgentError::io(
                    format!("granting {pages} pages at {addr:#x} to domain {domid}"),
                    e,
                )
            })?;
        Ok(arg.gref)
    }

    /// Grants the frame at `addr` to `domid`: one reference names it (its pages'
    /// references are consecutive, `GrantRef::frame`).
    pub fn grant_frame(&self, addr: usize, domid: u16) -> Result<[GrantRef; GRANTS_PER_FRAME]> {
        let first = self.grant_run(addr, GRANTS_PER_FRAME, domid)?;
        Ok(GrantRef::frame(self.domid_of_self.unwrap_or(0), first))
    }

    /// The domain id the grant refs of `grant_frame` are marked with (this domain's, as
    /// the mapper needs it); 0 until set.
    pub fn with_own_domid(mut self, domid: u16) -> DbforkGnt {
        self.domid_of_self = Some(domid);
        self
    }

    /// Ends the grant `gref` made through this file.
    pub fn revoke(&self, gref: u32) -> Result<Revoked> {
        let mut arg = RevokeArg { gref, pad: 0 };
        match self.ioctl(DBFORK_GNT_REVOKE, (&mut arg as *mut RevokeArg).cast()) {
            Ok(()) => Ok(Revoked::Ended),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(Revoked::StillMapped),
            Err(e) => Err(AgentError::io(format!("ending grant {gref}"), e)),
        }
    }
}

impl super::store::GrantIssuer for DbforkGnt {
    fn set_pool(&self, addr: usize, len: usize) -> Result<()> {
        DbforkGnt::set_pool(self, addr, len)
    }

    fn grant_frame(&self, addr: usize, domid: u16) -> Result<u32> {
        self.grant_run(addr, GRANTS_PER_FRAME, domid)
    }

    fn revoke(&self, gref: u32) -> Result<Revoked> {
        DbforkGnt::revoke(self, gref)
    }

    fn describe(&self) -> String {
        format!("{DBFORK_GNT_PATH} (interface {IFACE_VERSION})")
    }
}
