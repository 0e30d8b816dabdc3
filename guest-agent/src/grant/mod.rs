//! A replica's side of grant sharing on Xen: mapping the pages another domain granted
//! read-only over a buffer-pool frame, and giving the frame back to private memory.
//!
//! The mapping goes through `GrantDevice` (gntdev in a domU, a memfd in unit tests).
//! A grant mapping lives exactly as long as its mapping in this process: `Gntdev`
//! releases its index right after `mmap`, so replacing the frame (`crate::unshare` on
//! a write or before IO, `restore_private` when the bytes do not verify) or the
//! process dying lets go of the grants, and the granting domain can end them.
//!
//! Xen pages are 4 KiB: a 16 KiB frame is four grants.

mod gntdev;
pub mod issuer;
pub mod store;
#[cfg(test)]
mod store_tests;
#[cfg(test)]
mod tests;

use std::io;

use crate::error::{AgentError, Result};
use crate::frame_store::FRAME_SIZE;

/// Xen's page size: what one grant covers.
pub const XEN_PAGE: usize = 4096;
/// Grants per shared frame.
pub const GRANTS_PER_FRAME: usize = FRAME_SIZE / XEN_PAGE;

/// One page granted by `domid` as `gref`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantRef {
    pub domid: u16,
    pub gref: u32,
}

impl GrantRef {
    /// The grants of a frame granted by `domid` as one run from `first` (dbfork_gnt
    /// grants a frame's pages under consecutive references, so one names it).
    pub fn frame(domid: u16, first: u32) -> [GrantRef; GRANTS_PER_FRAME] {
        std::array::from_fn(|i| GrantRef {
            domid,
            gref: first.wrapping_add(i as u32),
        })
    }
}

/// What maps other domains' grants into this process.
pub trait GrantDevice: Send + Sync {
    /// Maps the pages granted as `refs` read-only at `dst` (`refs.len()` Xen pages,
    /// replacing what was there), until that mapping is replaced or unmapped.
    ///
    /// # Safety
    /// `dst` must be `XEN_PAGE`-aligned and `refs.len() * XEN_PAGE` bytes the caller
    /// owns; nobody may use them while they are replaced.
    unsafe fn map_read_only(&self, refs: &[GrantRef], dst: *mut u8) -> io::Result<()>;

    /// For logs.
    fn describe(&self) -> String;
}

/// Maps `refs` (one frame's grants) read-only over the frame at `dst`, recorded as
/// shared so that a write to it or a read into it makes it private first.
///
/// # Safety
/// `dst` is a `FRAME_SIZE`-aligned frame of `FRAME_SIZE` bytes the caller owns (nobody
/// else uses it while it is replaced), in memory the server may write.
pub unsafe fn map_over(dev: &dyn GrantDevice, refs: &[GrantRef], dst: *mut u8) -> Result<()> {
    check_frame(refs, dst)?;
    crate::unshare::mark_shared(dst as usize)?;
    // SAFETY: the caller's contract, checked for size and alignment above.
    if let Err(e) = unsafe { dev.map_read_only(refs, dst) } {
        // SAFETY: as above; the mapping may be half in place: replaced entirely.
        let _ = unsafe { restore_private(dst) };
        return Err(AgentError::io(
            format!("mapping grants {refs:?} with {}", dev.describe()),
            e,
        ));
    }
    Ok(())
}

/// Copy mode (no frame sharing): maps `refs` into a scratch area, copies the bytes
/// into `dst`, and lets go of the grants at once. Warm-up without disk IO, no memory
/// saved.
///
/// # Safety
/// `dst` must be valid for `FRAME_SIZE` bytes of writes.
pub unsafe fn copy_from(dev: &dyn GrantDevice, refs: &[GrantRef], dst: *mut u8) -> Result<()> {
    if refs.len() != GRANTS_PER_FRAME {
        return Err(bad_frame(refs, dst));
    }
    // SAFETY: a new private mapping chosen by the kernel, ours alone.
    let scratch = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            FRAME_SIZE,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if scratch == libc::MAP_FAILED {
        return Err(AgentError::last_os(
            "reserving a scratch frame for a grant copy",
        ));
    }
    // SAFETY: our own scratch area, page-aligned, FRAME_SIZE bytes.
    let mapped = unsafe { dev.map_read_only(refs, scratch as *mut u8) };
    if mapped.is_ok() {
        // SAFETY: the grants are mapped readable at scratch; dst is the caller's.
        unsafe { std::ptr::copy_nonoverlapping(scratch as *const u8, dst, FRAME_SIZE) };
    }
    // SAFETY: our own scratch mapping (and whatever grant mapping replaced it).
    unsafe { libc::munmap(scratch, FRAME_SIZE) };
    mapped.map_err(|e| {
        AgentError::io(
            format!("mapping grants {refs:?} with {}", dev.describe()),
            e,
        )
    })
}

/// Makes the frame at `dst` private anonymous memory again (its contents undefined:
/// the caller refills it), letting go of any grants mapped there.
///
/// # Safety
/// As for `map_over`.
pub unsafe fn restore_private(dst: *mut u8) -> Result<()> {
    // SAFETY: the caller owns the frame (this function's contract).
    unsafe { crate::pool::anon_over(dst, FRAME_SIZE) }?;
    crate::unshare::mark_private(dst as usize);
    Ok(())
}

fn check_frame(refs: &[GrantRef], dst: *mut u8) -> Result<()> {
    if refs.len() != GRANTS_PER_FRAME || dst.is_null() || dst as usize % FRAME_SIZE != 0 {
        return Err(bad_frame(refs, dst));
    }
    Ok(())
}

fn bad_frame(refs: &[GrantRef], dst: *mut u8) -> AgentError {
    AgentError::io(
        format!(
            "a frame is {GRANTS_PER_FRAME} grants at a {FRAME_SIZE}-byte aligned address, not {} at {dst:p}",
            refs.len()
        ),
        io::Error::from(io::ErrorKind::InvalidInput),
    )
}

pub use gntdev::{Gntdev, GNTDEV_PATH};

/// Opens a character device for reading and writing; an error says `fix`.
fn open_device(path: &std::path::Path, fix: &str) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| AgentError::io(format!("opening {} ({fix})", path.display()), e))
}
