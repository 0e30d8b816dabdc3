//! Bringing an existing raw image into the store as a full base layer: a reflink
//! (FICLONE) where the file system shares extents, a sparse-aware copy otherwise.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

/// How an import got its data into the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImportMethod {
    /// Extents shared with the source file (FICLONE); no data copied.
    Reflink,
    /// Data ranges copied (SEEK_DATA/SEEK_HOLE), holes left as holes.
    SparseCopy,
}

/// The outcome of [`crate::Store::import`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    pub method: ImportMethod,
    pub size: u64,
    /// Bytes physically copied (0 for a reflink).
    pub copied_bytes: u64,
}

/// Fills `dst` (empty, writable) with `src`'s content.
pub(crate) fn clone_or_copy(src: &File, dst: &File, size: u64) -> io::Result<ImportReport> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors
    // are owned and open for the duration of the call.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        return Ok(ImportReport {
            method: ImportMethod::Reflink,
            size,
            copied_bytes: 0,
        });
    }
    let err = io::Error::last_os_error();
    tracing::debug!(%err, "FICLONE unavailable, copying");
    dst.set_len(size)?;
    let copied = sparse_copy(src, dst, size)?;
    Ok(ImportReport {
        method: ImportMethod::SparseCopy,
        size,
        copied_bytes: copied,
    })
}

fn seek(f: &File, off: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: lseek on an owned descriptor.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

fn sparse_copy(src: &File, dst: &File, size: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0;
    let mut pos = 0;
    while pos < size {
        let data = match seek(src, pos, libc::SEEK_DATA) {
            Ok(Some(d)) => d,
            Ok(None) => break,
            // File systems without SEEK_DATA: treat everything as data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => pos,
            Err(e) => return Err(e),
        };
        let hole = seek(src, data, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        let mut p = data;
        while p < hole {
            let n = ((hole - p) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], p)?;
            // Keep zero blocks sparse in the copy too.
            if buf[..n].iter().any(|&b| b != 0) {
                dst.write_all_at(&buf[..n], p)?;
            }
            copied += n as u64;
            p += n as u64;
        }
        pos = hole.max(pos + 1);
    }
    Ok(copied)
}
