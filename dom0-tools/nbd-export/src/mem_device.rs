//! `MemDevice`: a block device in a `Vec`, for tests and as a baseline.

use std::io;

use parking_lot::RwLock;

use crate::{BlockDevice, Extent};

/// A block device held in memory. Reads share the lock, writes take it alone; flush is
/// a no-op because nothing here is durable anyway.
#[derive(Debug)]
pub struct MemDevice {
    data: RwLock<Vec<u8>>,
    read_only: bool,
}

impl MemDevice {
    /// `size` zero bytes.
    pub fn new(size: usize) -> Self {
        Self::from_vec(vec![0; size])
    }

    /// Serve `data` as it is.
    pub fn from_vec(data: Vec<u8>) -> Self {
        MemDevice {
            data: RwLock::new(data),
            read_only: false,
        }
    }

    /// The same device, refusing writes.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// A copy of the current contents.
    pub fn contents(&self) -> Vec<u8> {
        self.data.read().clone()
    }

    fn range(&self, offset: u64, len: u64) -> io::Result<std::ops::Range<usize>> {
        let size = self.data.read().len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.data.read().len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let r = self.range(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.data.read()[r]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, _fua: bool) -> io::Result<()> {
        let r = self.range(offset, buf.len() as u64)?;
        self.data.write()[r].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        // Trimmed bytes are unspecified; zero keeps tests deterministic.
        self.write_zeroes(offset, len, false)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _fua: bool) -> io::Result<()> {
        let r = self.range(offset, len)?;
        self.data.write()[r].fill(0);
        Ok(())
    }

    fn write_zeroes_no_hole(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.write_zeroes(offset, len, fua)
    }

    /// Nothing is ever a hole here; 4 KiB blocks of zeroes are reported as such, so
    /// tests can see block status change with writes.
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        const BLOCK: u64 = 4096;
        let r = self.range(offset, len)?;
        let data = self.data.read();
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = r.start as u64;
        while pos < r.end as u64 {
            // Align chunks to the block grid so reports do not depend on `offset`.
            let next = ((pos / BLOCK + 1) * BLOCK).min(r.end as u64);
            let zero = data[pos as usize..next as usize].iter().all(|&b| b == 0);
            match out.last_mut() {
                Some(e) if e.zero == zero => e.len += next - pos,
                _ => out.push(Extent {
                    len: next - pos,
                    hole: false,
                    zero,
                }),
            }
            pos = next;
        }
        Ok(out)
    }

    fn read_only(&self) -> bool {
        self.read_only
    }
}
