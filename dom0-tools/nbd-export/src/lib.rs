//! NBD server (fixed newstyle) over a small block-device trait.
//!
//! The data plane of dbfork's volumes: a `BlockDevice` supplies "handle this IO",
//! the request loop here does everything else (handshake, option haggling, request
//! parsing, reply framing). See README.md.

use std::io;

/// What an NBD export serves. Implemented by the volume engine (through an adapter in
/// the `dbfork` crate) and by `MemDevice` for tests.
///
/// Offsets and lengths are already validated against `size()` by the server.
pub trait BlockDevice: Send + Sync {
    /// Size in bytes; fixed for the life of an export.
    fn size(&self) -> u64;
    /// Fill `buf` with the bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write `buf` at `offset`; with `fua`, durable before returning.
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()>;
    /// Make every acknowledged write durable.
    fn flush(&self) -> io::Result<()>;
    /// The range's content becomes unspecified (a hint; may be a no-op).
    fn trim(&self, offset: u64, len: u64) -> io::Result<()>;
    /// The range reads as zeroes afterwards.
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> io::Result<()>;
    /// Read-only exports refuse writes with EPERM.
    fn read_only(&self) -> bool {
        false
    }
}
