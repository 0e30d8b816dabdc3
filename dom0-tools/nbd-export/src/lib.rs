//! NBD server (fixed newstyle) over a small block-device trait.
//!
//! The data plane of dbfork's volumes: a `BlockDevice` supplies "handle this IO",
//! the request loop here does everything else (handshake, option haggling, request
//! parsing, reply framing). See README.md.

use std::io::{self, Read, Write};

pub mod client;
mod error;
mod exports;
mod file_device;
mod listen;
mod mem_device;
mod negotiate;
pub mod proto;
mod server;
mod transmit;

pub use error::NbdError;
pub use exports::{Export, Exports};
pub use file_device::FileDevice;
pub use listen::ListenAddr;
pub use mem_device::MemDevice;
pub use negotiate::{negotiate, Negotiated, Session};
pub use proto::Extent;
pub use server::{Server, ServerHandle, DEFAULT_TCP_ADDR};
pub use transmit::transmit;

/// What an NBD export serves. Implemented by the volume engine (through an adapter in
/// the `dbfork` crate) and by `MemDevice` for tests.
///
/// Offsets and lengths are already validated against `size()` by the server. Calls
/// come from several threads at once (connections, and requests within one).
pub trait BlockDevice: Send + Sync {
    /// Size in bytes; fixed for the life of an export.
    fn size(&self) -> u64;
    /// Fill `buf` with the bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write `buf` at `offset`; with `fua`, durable before returning.
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()>;
    /// Make every acknowledged write durable, whichever connection made it: the server
    /// advertises NBD_FLAG_CAN_MULTI_CONN.
    fn flush(&self) -> io::Result<()>;
    /// The range's content becomes unspecified (a hint; may be a no-op).
    fn trim(&self, offset: u64, len: u64) -> io::Result<()>;
    /// The range reads as zeroes afterwards.
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> io::Result<()>;
    /// Like `write_zeroes`, for NBD_CMD_FLAG_NO_HOLE: the range must stay allocated.
    /// The default writes zero buffers through `write_at`, which never punches holes.
    fn write_zeroes_no_hole(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeroes = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done);
            self.write_at(&zeroes[..n as usize], offset + done, false)?;
            done += n;
        }
        if fua {
            self.flush()?;
        }
        Ok(())
    }
    /// NBD_CMD_CACHE: the client will read this range soon. A hint (a lazy clone
    /// can hydrate the range ahead of the reads); the default does nothing.
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// Allocation of the bytes from `offset` (up to `len` of them), for NBD block status
    /// (`base:allocation`): consecutive extents starting at `offset`. Reporting less
    /// than `len` is fine (clients ask again); reporting nothing, or this default of
    /// "all allocated data", is always correct, just less useful to copy tools.
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let _ = offset;
        Ok(vec![Extent {
            len,
            hole: false,
            zero: false,
        }])
    }
    /// Read-only exports refuse writes with EPERM.
    fn read_only(&self) -> bool {
        false
    }
}

/// One whole connection on any pair of byte streams: handshake, then transmission
/// with one request at a time. The server runs the two halves itself (to change socket
/// timeouts in between and to serve several requests at once); this is the same
/// sequence for in-memory streams, the session fuzz target and embedders.
pub fn serve_session<R, W>(mut r: R, mut w: W, exports: &Exports) -> Result<(), NbdError>
where
    R: Read + Send,
    W: Write + Send,
{
    match negotiate(&mut r, &mut w, exports)? {
        Negotiated::Transmit(session) => transmit(r, w, &session, 1),
        Negotiated::Aborted => Ok(()),
    }
}
