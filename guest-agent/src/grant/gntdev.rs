//! Linux's gntdev, the real `GrantDevice`.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::{GrantDevice, GrantRef, GRANTS_PER_FRAME, XEN_PAGE};
use crate::error::Result;

/// Linux's gntdev (`/dev/xen/gntdev`): maps grants of other domains.
pub struct Gntdev {
    file: File,
}

pub const GNTDEV_PATH: &str = "/dev/xen/gntdev";

/// `struct ioctl_gntdev_grant_ref` of xen/gntdev.h.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct GntdevGrantRef {
    domid: u32,
    gref: u32,
}

/// `struct ioctl_gntdev_map_grant_ref` with room for one frame's grants (the kernel
/// reads `count` entries from `refs`).
#[repr(C)]
#[derive(Default)]
struct GntdevMap {
    count: u32,
    pad: u32,
    index: u64,
    refs: [GntdevGrantRef; GRANTS_PER_FRAME],
}

/// `struct ioctl_gntdev_unmap_grant_ref`.
#[repr(C)]
struct GntdevUnmap {
    index: u64,
    count: u32,
    pad: u32,
}

/// `_IOC(_IOC_NONE, 'G', nr, size)`: the ioctl numbers are built from the size of the
/// one-grant struct, whatever `count` is.
const fn gntdev_ioc(nr: u64, size: u64) -> u64 {
    (size << 16) | ((b'G' as u64) << 8) | nr
}
const IOCTL_GNTDEV_MAP_GRANT_REF: u64 = gntdev_ioc(0, 24);
const IOCTL_GNTDEV_UNMAP_GRANT_REF: u64 = gntdev_ioc(1, 16);

impl Gntdev {
    /// Opens gntdev at its usual place.
    pub fn open() -> Result<Gntdev> {
        Self::open_at(Path::new(GNTDEV_PATH))
    }

    pub fn open_at(path: &Path) -> Result<Gntdev> {
        let file = super::open_device(path, "a Xen domain with the xen_gntdev module loaded?")?;
        Ok(Gntdev { file })
    }

    fn unmap_index(&self, index: u64, count: usize) -> io::Result<()> {
        let op = GntdevUnmap {
            index,
            count: count as u32,
            pad: 0,
        };
        // SAFETY: an ioctl of gntdev with a struct of the size its number names.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                IOCTL_GNTDEV_UNMAP_GRANT_REF as _,
                &op as *const GntdevUnmap,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl GrantDevice for Gntdev {
    unsafe fn map_read_only(&self, refs: &[GrantRef], dst: *mut u8) -> io::Result<()> {
        if refs.is_empty() || refs.len() > GRANTS_PER_FRAME {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let mut op = GntdevMap {
            count: refs.len() as u32,
            ..GntdevMap::default()
        };
        for (o, r) in op.refs.iter_mut().zip(refs) {
            *o = GntdevGrantRef {
                domid: u32::from(r.domid),
                gref: r.gref,
            };
        }
        // SAFETY: gntdev's map ioctl reads `count` refs and writes `index` of our struct.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                IOCTL_GNTDEV_MAP_GRANT_REF as _,
                &mut op as *mut GntdevMap,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        let len = refs.len() * XEN_PAGE;
        // SAFETY: the caller owns [dst, dst + len); read-only and shared is how gntdev
        // maps a read-only grant (a writable mapping of one fails).
        let p = unsafe {
            libc::mmap(
                dst.cast(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_FIXED,
                self.file.as_raw_fd(),
                op.index as libc::off_t,
            )
        };
        let mapped = if p == libc::MAP_FAILED {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        };
        // The mapping holds its own reference to the grants: releasing the index now
        // ties their lifetime to the mapping alone (and frees the index at once if
        // the mmap failed).
        let released = self.unmap_index(op.index, refs.len());
        mapped.and(released)
    }

    fn describe(&self) -> String {
        format!("gntdev (fd {})", self.file.as_raw_fd())
    }
}
