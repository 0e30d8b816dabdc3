//! A small safe binding to libxenstore, the stable library dom0 tools talk to
//! xenstored with (Xen's own C library, LGPL, linked dynamically; the GPL Rust crates
//! for xenstore are not an option for an Apache-2.0 dom0 binary, see docs/xen.md).
//!
//! What the Xen substrate needs of xenstore: read and write nodes, list directories,
//! set permissions (a domain may read only what it is given), transactions, and
//! watches (`@releaseDomain` tells dom0 a domain died). A connection goes to
//! xenstored's socket, or the xenbus device in a domain; `XENSTORED_PATH` names
//! another socket (the tests run a real xenstored on one).

mod ffi;

use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::ptr::NonNull;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach xenstore: this is not a Xen dom0 with xenstored running, or XENSTORED_PATH names no socket (xenstored: `systemctl start xenstored`, or Debian's xen-utils)")]
    Unreachable(#[source] std::io::Error),
    #[error("xenstore {op} {path}")]
    Op {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("xenstore path {0:?} holds a NUL byte")]
    BadPath(String),
    #[error("waiting for a xenstore watch event")]
    Poll(#[source] std::io::Error),
    #[error("xenstore transaction kept conflicting ({tries} tries)")]
    Busy { tries: u32 },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Who may do what with a node: the first entry is its owner (and everyone's
/// default), the others exceptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    pub domid: u32,
    pub read: bool,
    pub write: bool,
}

/// A fired watch: the node that changed (or `@releaseDomain`) and the watch's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

/// One connection to xenstored.
pub struct Xenstore {
    h: NonNull<ffi::XsHandle>,
}

// SAFETY: libxenstore serialises use of a handle opened with xs_open(0) with its own
// mutexes (it is built with pthreads), so the handle may move between threads.
unsafe impl Send for Xenstore {}

/// How many times a transaction that conflicts with another writer is run again.
const TRANSACTION_TRIES: u32 = 16;

fn cstr(path: &str) -> Result<CString> {
    CString::new(path).map_err(|_| Error::BadPath(path.to_string()))
}

fn op(op: &'static str, path: &str) -> Error {
    Error::Op {
        op,
        path: path.to_string(),
        source: std::io::Error::last_os_error(),
    }
}

fn enoent() -> bool {
    std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT)
}

/// Takes a library-allocated vector of `n` C strings (one allocation, as
/// libxenstore returns them) into owned strings and frees it.
///
/// # Safety
/// `v` is a non-null pointer returned by libxenstore holding `n` valid C strings,
/// and nothing else uses it.
unsafe fn take_strings(v: *mut *mut c_char, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: the caller's contract: v[i] is a valid C string for i < n.
        let s = unsafe { CStr::from_ptr(*v.add(i)) };
        out.push(s.to_string_lossy().into_owned());
    }
    // SAFETY: one malloc'ed block (the strings live inside it), ours to free.
    unsafe { libc::free(v.cast()) };
    out
}

impl Xenstore {
    /// Connects to xenstored.
    pub fn open() -> Result<Xenstore> {
        // SAFETY: xs_open has no preconditions; NULL means failure with errno set.
        let h = unsafe { ffi::xs_open(0) };
        NonNull::new(h)
            .map(|h| Xenstore { h })
            .ok_or_else(|| Error::Unreachable(std::io::Error::last_os_error()))
    }

    fn raw(&self) -> *mut ffi::XsHandle {
        self.h.as_ptr()
    }

    /// A node's value; `None` when it does not exist.
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.read_in(ffi::XBT_NULL, path)
    }

    fn read_in(&self, t: ffi::XsTransaction, path: &str) -> Result<Option<Vec<u8>>> {
        let p = cstr(path)?;
        let mut len: u32 = 0;
        // SAFETY: a live handle, a NUL-terminated path, a place for the length.
        let v = unsafe { ffi::xs_read(self.raw(), t, p.as_ptr(), &mut len) };
        if v.is_null() {
            return if enoent() {
                Ok(None)
            } else {
                Err(op("read", path))
            };
        }
        // SAFETY: libxenstore returns `len` bytes (plus a NUL) in a block we own.
        let bytes = unsafe { std::slice::from_raw_parts(v.cast::<u8>(), len as usize) }.to_vec();
        // SAFETY: the block is ours and no longer used.
        unsafe { libc::free(v) };
        Ok(Some(bytes))
    }

    /// A node's value as text (lossy UTF-8); `None` when it does not exist.
    pub fn read_string(&self, path: &str) -> Result<Option<String>> {
        Ok(self
            .read(path)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Writes a node (and its missing parents).
    pub fn write(&self, path: &str, value: &[u8]) -> Result<()> {
        self.write_in(ffi::XBT_NULL, path, value)
    }

    fn write_in(&self, t: ffi::XsTransaction, path: &str, value: &[u8]) -> Result<()> {
        let p = cstr(path)?;
        let len = u32::try_from(value.len()).map_err(|_| Error::Op {
            op: "write",
            path: path.to_string(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        // SAFETY: a live handle, a NUL-terminated path, `len` readable bytes.
        if unsafe { ffi::xs_write(self.raw(), t, p.as_ptr(), value.as_ptr().cast(), len) } {
            Ok(())
        } else {
            Err(op("write", path))
        }
    }

    pub fn mkdir(&self, path: &str) -> Result<()> {
        let p = cstr(path)?;
        // SAFETY: a live handle and a NUL-terminated path.
        if unsafe { ffi::xs_mkdir(self.raw(), ffi::XBT_NULL, p.as_ptr()) } {
            Ok(())
        } else {
            Err(op("mkdir", path))
        }
    }

    /// Removes a node and everything under it; a node that is not there is fine.
    pub fn rm(&self, path: &str) -> Result<()> {
        let p = cstr(path)?;
        // SAFETY: a live handle and a NUL-terminated path.
        if unsafe { ffi::xs_rm(self.raw(), ffi::XBT_NULL, p.as_ptr()) } || enoent() {
            Ok(())
        } else {
            Err(op("rm", path))
        }
    }

    /// The names of a node's children (none when it does not exist).
    pub fn directory(&self, path: &str) -> Result<Vec<String>> {
        let p = cstr(path)?;
        let mut n: u32 = 0;
        // SAFETY: a live handle, a NUL-terminated path, a place for the count.
        let v = unsafe { ffi::xs_directory(self.raw(), ffi::XBT_NULL, p.as_ptr(), &mut n) };
        if v.is_null() {
            return if enoent() {
                Ok(Vec::new())
            } else {
                Err(op("directory", path))
            };
        }
        // SAFETY: libxenstore returned `n` strings in one block we own.
        Ok(unsafe { take_strings(v, n as usize) })
    }

    pub fn permissions(&self, path: &str) -> Result<Vec<Perm>> {
        let p = cstr(path)?;
        let mut n: u32 = 0;
        // SAFETY: a live handle, a NUL-terminated path, a place for the count.
        let v = unsafe { ffi::xs_get_permissions(self.raw(), ffi::XBT_NULL, p.as_ptr(), &mut n) };
        if v.is_null() {
            return Err(op("get permissions", path));
        }
        // SAFETY: `n` entries in a block we own, freed right after the copy.
        let perms = unsafe { std::slice::from_raw_parts(v, n as usize) }
            .iter()
            .map(|p| Perm {
                domid: p.id,
                read: p.perms & ffi::XS_PERM_READ != 0,
                write: p.perms & ffi::XS_PERM_WRITE != 0,
            })
            .collect();
        // SAFETY: ours, no longer used.
        unsafe { libc::free(v.cast()) };
        Ok(perms)
    }

    pub fn set_permissions(&self, path: &str, perms: &[Perm]) -> Result<()> {
        let p = cstr(path)?;
        let mut raw: Vec<ffi::XsPermissions> = perms
            .iter()
            .map(|p| ffi::XsPermissions {
                id: p.domid,
                perms: ffi::XS_PERM_NONE
                    | if p.read { ffi::XS_PERM_READ } else { 0 }
                    | if p.write { ffi::XS_PERM_WRITE } else { 0 },
            })
            .collect();
        // SAFETY: a live handle, a NUL-terminated path, `raw.len()` entries.
        let ok = unsafe {
            ffi::xs_set_permissions(
                self.raw(),
                ffi::XBT_NULL,
                p.as_ptr(),
                raw.as_mut_ptr(),
                raw.len() as u32,
            )
        };
        if ok {
            Ok(())
        } else {
            Err(op("set permissions", path))
        }
    }

    /// Watches `path` (a node and everything under it, or `@releaseDomain` /
    /// `@introduceDomain`); events carry `token`. xenstored fires one event at once.
    pub fn watch(&self, path: &str, token: &str) -> Result<()> {
        let (p, t) = (cstr(path)?, cstr(token)?);
        // SAFETY: a live handle and two NUL-terminated strings.
        if unsafe { ffi::xs_watch(self.raw(), p.as_ptr(), t.as_ptr()) } {
            Ok(())
        } else {
            Err(op("watch", path))
        }
    }

    pub fn unwatch(&self, path: &str, token: &str) -> Result<()> {
        let (p, t) = (cstr(path)?, cstr(token)?);
        // SAFETY: a live handle and two NUL-terminated strings.
        if unsafe { ffi::xs_unwatch(self.raw(), p.as_ptr(), t.as_ptr()) } {
            Ok(())
        } else {
            Err(op("unwatch", path))
        }
    }

    /// The next watch event, waiting up to `timeout` (`None`: none came).
    pub fn next_event(&self, timeout: Duration) -> Result<Option<WatchEvent>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            // SAFETY: a live handle; xs_check_watch does not block.
            let v = unsafe { ffi::xs_check_watch(self.raw()) };
            if !v.is_null() {
                // SAFETY: an event is a vector of at least path and token, one block.
                let mut parts = unsafe { take_strings(v, ffi::XS_WATCH_TOKEN + 1) };
                let token = parts.pop().unwrap_or_default();
                let path = parts.swap_remove(ffi::XS_WATCH_PATH);
                return Ok(Some(WatchEvent { path, token }));
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EAGAIN) {
                return Err(Error::Poll(e));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                // SAFETY: a live handle.
                fd: unsafe { ffi::xs_fileno(self.raw()) },
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one pollfd we own.
            if unsafe { libc::poll(&mut pfd, 1, ms) } < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(Error::Poll(e));
                }
            }
        }
    }

    /// Runs `f` in a transaction, again while it conflicts with another writer.
    pub fn transaction<R>(&self, mut f: impl FnMut(&Transaction<'_>) -> Result<R>) -> Result<R> {
        for _ in 0..TRANSACTION_TRIES {
            // SAFETY: a live handle; 0 means failure with errno set.
            let t = unsafe { ffi::xs_transaction_start(self.raw()) };
            if t == ffi::XBT_NULL {
                return Err(op("transaction start", "/"));
            }
            let tx = Transaction { xs: self, t };
            match f(&tx) {
                Ok(r) => {
                    // SAFETY: a live handle and a transaction it started.
                    if unsafe { ffi::xs_transaction_end(self.raw(), t, false) } {
                        return Ok(r);
                    }
                    if std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
                        return Err(op("transaction end", "/"));
                    }
                }
                Err(e) => {
                    // SAFETY: as above; the abort's own failure changes nothing.
                    unsafe { ffi::xs_transaction_end(self.raw(), t, true) };
                    return Err(e);
                }
            }
        }
        Err(Error::Busy {
            tries: TRANSACTION_TRIES,
        })
    }
}

/// Reads and writes inside one transaction.
pub struct Transaction<'a> {
    xs: &'a Xenstore,
    t: ffi::XsTransaction,
}

impl Transaction<'_> {
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.xs.read_in(self.t, path)
    }
    pub fn write(&self, path: &str, value: &[u8]) -> Result<()> {
        self.xs.write_in(self.t, path, value)
    }
}

impl Drop for Xenstore {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and used by nothing after this.
        unsafe { ffi::xs_close(self.raw()) };
    }
}
