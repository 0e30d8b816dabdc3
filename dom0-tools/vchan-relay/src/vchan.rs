//! One end of a vchan through libxenvchan.
//!
//! Reads and writes are only ever asked for what the ring holds or has room for: the
//! library's `blocking` flag is left unset by its init functions (it is a bit of a
//! malloc'd struct), so a larger request could block on the ring.

use crate::ffi;
use crate::relay::{Ring, RingState};
use crate::{Error, Result};
use std::ffi::CString;
use std::os::fd::RawFd;
use std::ptr::NonNull;

pub struct Vchan {
    ctrl: NonNull<ffi::Libxenvchan>,
    server: bool,
}

impl Vchan {
    /// Offers a vchan to `domid` at `path` (ring-ref and event-channel are written
    /// there, readable by that domain only; the path is removed again on drop).
    pub fn serve(domid: u32, path: &str) -> Result<Self> {
        let c = c_path(path)?;
        // SAFETY: FFI call with a valid NUL-terminated path; a null logger is allowed
        // (the library then logs nothing); 0 sizes pick the one-page rings.
        let p = unsafe {
            ffi::libxenvchan_server_init(std::ptr::null_mut(), domid as i32, c.as_ptr(), 0, 0)
        };
        Self::from_init(p, true, domid, path)
    }

    /// Connects to the vchan `domid` offers at `path`; fails while it offers none.
    pub fn connect(domid: u32, path: &str) -> Result<Self> {
        let c = c_path(path)?;
        // SAFETY: FFI call with a valid NUL-terminated path; a null logger is allowed.
        let p =
            unsafe { ffi::libxenvchan_client_init(std::ptr::null_mut(), domid as i32, c.as_ptr()) };
        Self::from_init(p, false, domid, path)
    }

    fn from_init(p: *mut ffi::Libxenvchan, server: bool, domid: u32, path: &str) -> Result<Self> {
        match NonNull::new(p) {
            Some(ctrl) => Ok(Vchan { ctrl, server }),
            None => Err(Error::Init {
                side: if server { "server" } else { "client" },
                domid,
                path: path.to_string(),
                source: std::io::Error::last_os_error(),
            }),
        }
    }

    fn ring_err(op: &'static str) -> Error {
        Error::Ring {
            op,
            source: std::io::Error::last_os_error(),
        }
    }
}

fn c_path(path: &str) -> Result<CString> {
    CString::new(path).map_err(|_| Error::BadPath(path.to_string()))
}

impl Ring for Vchan {
    fn state(&mut self) -> RingState {
        // SAFETY: ctrl is a live handle from init, owned by self.
        let s = unsafe { ffi::libxenvchan_is_open(self.ctrl.as_ptr()) };
        match (self.server, s) {
            // A server's ring says 2 until its first client arrives.
            (true, 2) => RingState::Waiting,
            (_, 0) => RingState::Closed,
            _ => RingState::Open,
        }
    }

    fn readable(&mut self) -> usize {
        // SAFETY: ctrl is live; data_ready also asks the peer to notify on its next
        // write, which is what makes reading before sleeping race-free.
        let n = unsafe { ffi::libxenvchan_data_ready(self.ctrl.as_ptr()) };
        n.max(0) as usize
    }

    fn writable(&mut self) -> usize {
        // SAFETY: ctrl is live; buffer_space also asks for a notification on the
        // peer's next read.
        let n = unsafe { ffi::libxenvchan_buffer_space(self.ctrl.as_ptr()) };
        n.max(0) as usize
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let want = buf.len().min(self.readable());
        if want == 0 {
            return Ok(0);
        }
        // SAFETY: ctrl is live and buf is valid for `want` bytes; want is at most what
        // the ring holds, so the call does not block.
        let n = unsafe { ffi::libxenvchan_read(self.ctrl.as_ptr(), buf.as_mut_ptr().cast(), want) };
        if n < 0 {
            return Err(Self::ring_err("read"));
        }
        Ok(n as usize)
    }

    fn write(&mut self, buf: &[u8]) -> Result<usize> {
        let want = buf.len().min(self.writable());
        if want == 0 {
            return Ok(0);
        }
        // SAFETY: ctrl is live and buf is valid for `want` bytes; want is at most the
        // ring's free space, so the call does not block.
        let n = unsafe { ffi::libxenvchan_write(self.ctrl.as_ptr(), buf.as_ptr().cast(), want) };
        if n < 0 {
            return Err(Self::ring_err("write"));
        }
        Ok(n as usize)
    }

    fn event_fd(&self) -> RawFd {
        // SAFETY: ctrl is live; the fd stays the handle's until close.
        unsafe { ffi::libxenvchan_fd_for_select(self.ctrl.as_ptr()) }
    }

    fn ack_event(&mut self) -> Result<()> {
        // SAFETY: ctrl is live; called only when the event fd polled readable, so
        // the read inside does not block. It unmasks the port for the next event.
        if unsafe { ffi::libxenvchan_wait(self.ctrl.as_ptr()) } < 0 {
            return Err(Self::ring_err("event wait"));
        }
        Ok(())
    }
}

impl Drop for Vchan {
    fn drop(&mut self) {
        // SAFETY: ctrl came from init and is closed once, here; the library marks the
        // ring closed for the peer, notifies it, and (server) removes the xenstore path.
        unsafe { ffi::libxenvchan_close(self.ctrl.as_ptr()) }
    }
}
