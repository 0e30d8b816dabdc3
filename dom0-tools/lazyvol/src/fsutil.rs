//! Small file-system helpers: positional IO, hole punching, atomic replace, flock.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub(crate) fn read_exact_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<()> {
    f.read_exact_at(buf, off)
}

pub(crate) fn write_all_at(f: &File, buf: &[u8], off: u64) -> io::Result<()> {
    f.write_all_at(buf, off)
}

/// Makes `[off, off+len)` read as zeroes, freeing the blocks where the file system can.
/// Falls back to writing zeroes where punching is unsupported.
pub(crate) fn punch_zeroes(f: &File, off: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: fallocate on a file descriptor we own; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) => {
            let zero = vec![0u8; len.min(1 << 20) as usize];
            let mut pos = 0;
            while pos < len {
                let n = (len - pos).min(zero.len() as u64) as usize;
                f.write_all_at(&zero[..n], off + pos)?;
                pos += n as u64;
            }
            Ok(())
        }
        _ => Err(err),
    }
}

/// Makes `dst[dst_off..+len]` share `src[src_off..+len]`'s extents (FICLONERANGE).
/// Fails with EOPNOTSUPP/EXDEV/EINVAL where the file system cannot (or the range is
/// not block-aligned).
pub(crate) fn clone_range(
    src: &File,
    src_off: u64,
    len: u64,
    dst: &File,
    dst_off: u64,
) -> io::Result<()> {
    let arg = libc::file_clone_range {
        src_fd: i64::from(src.as_raw_fd()),
        src_offset: src_off,
        src_length: len,
        dest_offset: dst_off,
    };
    // SAFETY: FICLONERANGE reads one `file_clone_range` that lives across the call;
    // both descriptors are owned and open.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONERANGE, &arg) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether an error from `clone_range` means "this file system cannot", as opposed
/// to a real IO failure.
pub(crate) fn reflink_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP)
            | Some(libc::EXDEV)
            | Some(libc::EINVAL)
            | Some(libc::ENOTTY)
            | Some(libc::ENOSYS)
    )
}

/// Allocates `len` bytes of real blocks (not a sparse size).
pub(crate) fn allocate(f: &File, len: u64) -> io::Result<()> {
    // SAFETY: posix_fallocate on a descriptor we own.
    let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len as libc::off_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new
/// content, never a mix: write a temporary sibling, fsync it, rename it over, fsync
/// the directory (the rename itself is only durable once the directory is).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum LockMode {
    Shared,
    Exclusive,
}

/// An advisory `flock` held for the life of the value.
pub(crate) struct FileLock {
    // Held only for its descriptor: closing it releases the lock.
    _file: File,
}

impl FileLock {
    fn open(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    }

    /// Blocks until the lock is granted.
    pub fn acquire(path: &Path, mode: LockMode) -> io::Result<FileLock> {
        let file = Self::open(path)?;
        flock(&file, mode, false)?;
        Ok(FileLock { _file: file })
    }

    /// Returns `Ok(None)` if someone else holds a conflicting lock.
    pub fn try_acquire(path: &Path, mode: LockMode) -> io::Result<Option<FileLock>> {
        let file = Self::open(path)?;
        match flock(&file, mode, true) {
            Ok(()) => Ok(Some(FileLock { _file: file })),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn flock(f: &File, mode: LockMode, nonblocking: bool) -> io::Result<()> {
    let mut op = match mode {
        LockMode::Shared => libc::LOCK_SH,
        LockMode::Exclusive => libc::LOCK_EX,
    };
    if nonblocking {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}
