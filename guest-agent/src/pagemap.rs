//! Which of this process's pages it has written since they were mapped, from
//! `/proc/self/pagemap` (one 64-bit entry per 4 KiB page of the address space; a
//! process may read its own entries' flags without privileges).
//!
//! A frame the source mapped from the family's frame store (`MAP_PRIVATE` over the
//! store's file) stays the file's page until the process writes to it: the first write
//! gives it a private anonymous copy (copy-on-write). So a frame whose pages are all
//! either not in memory or still file pages holds exactly the stored bytes, and the
//! page it held when mapped has not changed since: the clone-time offer revalidates
//! such frames without copying them (see `agent/source.rs`). An anonymous page
//! dropped with madvise(DONTNEED) would read as the file's page again; the agent
//! forgets a frame as soon as the server calls madvise on it, so this never counts.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const PAGE: usize = 4096;
const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
const FILE_OR_SHARED: u64 = 1 << 61;

pub struct Pagemap {
    file: File,
}

impl Pagemap {
    pub fn open() -> io::Result<Pagemap> {
        Ok(Pagemap {
            file: File::open("/proc/self/pagemap")?,
        })
    }

    /// Whether no page of `[addr, addr + len)` (page aligned) was written by this
    /// process since it was mapped: each is absent, or present as a file page.
    pub fn untouched(&self, addr: usize, len: usize) -> io::Result<bool> {
        let pages = len.div_ceil(PAGE);
        let mut raw = vec![0u8; pages * 8];
        self.file
            .read_exact_at(&mut raw, (addr / PAGE * 8) as u64)?;
        Ok(raw.chunks_exact(8).all(|e| {
            let v = u64::from_le_bytes(e.try_into().expect("8 bytes"));
            if v & SWAPPED != 0 {
                return false; // only private anonymous pages of a file mapping swap
            }
            v & PRESENT == 0 || v & FILE_OR_SHARED != 0
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A private mapping of a file: untouched while only read, touched after a write
    /// (copy-on-write), per page.
    #[test]
    fn a_written_page_of_a_private_file_mapping_is_touched() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(4 * PAGE as u64).unwrap();
        f.write_all_at(&[7u8; 4 * PAGE], 0).unwrap();
        // SAFETY: a fresh private mapping of a file we own, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let addr = p as usize;
        let pm = Pagemap::open().unwrap();
        assert!(pm.untouched(addr, 4 * PAGE).unwrap(), "never accessed");
        // SAFETY: inside the mapping.
        let read = unsafe { std::ptr::read_volatile((addr + PAGE) as *const u8) };
        assert_eq!(read, 7);
        assert!(pm.untouched(addr, 4 * PAGE).unwrap(), "read only");
        // SAFETY: inside the writable mapping.
        unsafe { std::ptr::write_volatile((addr + 2 * PAGE) as *mut u8, 1) };
        assert!(!pm.untouched(addr, 4 * PAGE).unwrap(), "written");
        assert!(pm.untouched(addr, 2 * PAGE).unwrap(), "the other pages");
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(p, 4 * PAGE) };
    }
}
