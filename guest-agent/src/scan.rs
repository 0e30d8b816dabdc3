//! Buffer-pool scan at clone time (source role): after dbfork publishes a new snapshot
//! (the family's clone LSN grows), offer a copy of every clean resident frame to the
//! family's frame store and register it, so a replica finds the source's whole warm
//! set.
//!
//! The frames stay the source's own anonymous memory: remapping a live frame could lose
//! a concurrent change by the server. Each frame is copied first and the copy verified
//! (checksum, trailer LSN, and a space this server has open); a frame being changed
//! while copied fails the checksum and is skipped. valid_from is the clone LSN read
//! before the scan started (the share rule).
//!
//! Where the buffer pool is: the server's large anonymous private mappings, seen by the
//! mmap hook, that InnoDB has read a data-file page into. Size alone does not say it (a
//! log buffer or a heap arena is as large, and a stale page image there would verify);
//! what only the buffer pool receives is the server's own page reads. munmap of a region
//! takes the write side of a lock the scan holds while it reads, so the scan never
//! touches memory that is going away.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

use crate::frame_store::FRAME_SIZE;

/// Smallest anonymous mapping treated as a buffer pool candidate.
pub const MIN_REGION: usize = 4 << 20;

/// What `Regions::visit_frames` reports.
pub enum Visit<'a> {
    /// A private copy of the frame at `addr`.
    Frame { addr: usize, bytes: &'a [u8] },
    /// The frames visited since the last chunk end may be unmapped once this returns.
    ChunkEnd,
}

/// A large anonymous mapping of the server.
struct Region {
    start: usize,
    len: usize,
    /// The server has read a data-file page into it: a buffer-pool chunk.
    pool: AtomicBool,
}

#[derive(Default)]
pub struct Regions {
    list: RwLock<Vec<Region>>,
}

impl Regions {
    /// After a successful mmap by the server.
    pub fn on_mmap(&self, addr: usize, len: usize, prot: i32, flags: i32, fd: i32) {
        let anon_private = flags & libc::MAP_ANONYMOUS != 0 && flags & libc::MAP_PRIVATE != 0;
        let rw = prot & (libc::PROT_READ | libc::PROT_WRITE) == libc::PROT_READ | libc::PROT_WRITE;
        if fd == -1 && anon_private && rw && len >= MIN_REGION {
            self.list.write().push(Region {
                start: addr,
                len,
                pool: AtomicBool::new(false),
            });
        }
    }

    /// The server reads a data-file page into [addr, addr + FRAME_SIZE): the region
    /// holding it is a buffer-pool chunk, which the clone-time scan may read. Whether
    /// such a region holds it (one look for both, on every page read).
    pub fn note_page_read(&self, addr: usize) -> bool {
        let end = addr.saturating_add(FRAME_SIZE);
        match self
            .list
            .read()
            .iter()
            .find(|r| addr >= r.start && end <= r.start + r.len)
        {
            Some(r) => {
                r.pool.store(true, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// How many regions are known buffer-pool chunks.
    pub fn pool_count(&self) -> usize {
        self.list
            .read()
            .iter()
            .filter(|r| r.pool.load(Ordering::Relaxed))
            .count()
    }

    /// Runs `unmap` (the real munmap) with every overlapping region forgotten first,
    /// under the write lock, so no scan is reading the range while it goes away.
    pub fn on_munmap<R>(&self, addr: usize, len: usize, unmap: impl FnOnce() -> R) -> R {
        let mut list = self.list.write();
        let end = addr.saturating_add(len);
        list.retain(|r| r.start + r.len <= addr || r.start >= end);
        unmap()
    }

    /// Whether [addr, addr + len) lies inside one recorded region.
    pub fn contains(&self, addr: usize, len: usize) -> bool {
        let end = addr.saturating_add(len);
        self.list
            .read()
            .iter()
            .any(|r| addr >= r.start && end <= r.start + r.len)
    }

    /// Whether [addr, addr + len) overlaps any recorded region.
    pub fn overlaps(&self, addr: usize, len: usize) -> bool {
        let end = addr.saturating_add(len);
        self.list
            .read()
            .iter()
            .any(|r| addr < r.start + r.len && end > r.start)
    }

    pub fn count(&self) -> usize {
        self.list.read().len()
    }

    /// Calls `frame` with a private copy of each 16 KiB-aligned frame of every
    /// buffer-pool chunk (a region the server has read a data-file page into).
    /// The read lock is taken per region chunk, so an munmap waits at most one chunk.
    pub fn for_each_frame(&self, mut frame: impl FnMut(usize, &[u8])) {
        self.visit_frames(|v| {
            if let Visit::Frame { addr, bytes } = v {
                frame(addr, bytes)
            }
        })
    }

    /// As `for_each_frame`, and told when a chunk ends: until then the frames visited
    /// in it stay mapped (munmap waits), so work on them can be batched up to there.
    pub fn visit_frames(&self, mut visit: impl FnMut(Visit<'_>)) {
        const CHUNK: usize = 1 << 20;
        let regions: Vec<(usize, usize)> = self
            .list
            .read()
            .iter()
            .filter(|r| r.pool.load(Ordering::Relaxed))
            .map(|r| (r.start, r.len))
            .collect();
        let mut copy = crate::frame_store::AlignedPage::new();
        for (start, len) in regions {
            let first = start.next_multiple_of(FRAME_SIZE);
            let end = start + len;
            let mut chunk_start = first;
            while chunk_start + FRAME_SIZE <= end {
                let guard = self.list.read();
                if !guard.iter().any(|r| r.start == start && r.len == len) {
                    break; // unmapped meanwhile
                }
                let chunk_end = (chunk_start + CHUNK).min(end);
                let mut at = chunk_start;
                while at + FRAME_SIZE <= chunk_end {
                    // SAFETY: [at, at + FRAME_SIZE) lies in a live mapping of the server
                    // (the region is still listed and munmap waits for our read lock).
                    // The server may write the frame meanwhile; the copy is then torn
                    // and fails verification, which is all the scan relies on.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            at as *const u8,
                            copy.bytes().as_mut_ptr(),
                            FRAME_SIZE,
                        )
                    };
                    visit(Visit::Frame {
                        addr: at,
                        bytes: copy.bytes(),
                    });
                    at += FRAME_SIZE;
                }
                visit(Visit::ChunkEnd);
                drop(guard);
                chunk_start = chunk_end;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_file_backed_and_read_only_mappings_are_not_regions() {
        let r = Regions::default();
        let anon = libc::MAP_ANONYMOUS | libc::MAP_PRIVATE;
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        r.on_mmap(0x10000, MIN_REGION - 1, rw, anon, -1);
        r.on_mmap(0x10000, MIN_REGION, rw, libc::MAP_PRIVATE, 5);
        r.on_mmap(0x10000, MIN_REGION, libc::PROT_READ, anon, -1);
        r.on_mmap(
            0x10000,
            MIN_REGION,
            rw,
            libc::MAP_ANONYMOUS | libc::MAP_SHARED,
            -1,
        );
        assert_eq!(r.count(), 0);
        r.on_mmap(0x100000, MIN_REGION, rw, anon, -1);
        assert_eq!(r.count(), 1);
        assert!(r.contains(0x100000, 16384));
        assert!(r.contains(0x100000 + MIN_REGION - 16384, 16384));
        assert!(!r.contains(0x100000 + MIN_REGION - 4096, 16384));
        assert!(!r.contains(0x100000 - 4096, 16384));
        assert_eq!(r.on_munmap(0x100000 + MIN_REGION, 4096, || 7), 7);
        assert_eq!(r.count(), 1, "an adjacent unmap leaves it");
        r.on_munmap(0x100000 + 4096, 4096, || ());
        assert_eq!(r.count(), 0, "a partial unmap drops it");
    }

    #[test]
    fn scan_visits_every_aligned_frame_of_a_real_mapping() {
        let len = MIN_REGION + FRAME_SIZE;
        // SAFETY: fresh anonymous mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let r = Regions::default();
        r.on_mmap(
            p as usize,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
        );
        let aligned_start = (p as usize).next_multiple_of(FRAME_SIZE);
        let marked_frame = aligned_start + FRAME_SIZE * 3;
        // Not a buffer-pool chunk until the server reads a page into it.
        let mut seen = 0;
        r.for_each_frame(|_, _| seen += 1);
        assert_eq!(seen, 0, "a mapping no page was read into is not scanned");
        r.note_page_read(aligned_start);
        assert_eq!(r.pool_count(), 1);
        // SAFETY: writing inside our mapping.
        unsafe { *((marked_frame + 5) as *mut u8) = 9 };
        let mut seen = 0;
        let mut marked = vec![];
        r.for_each_frame(|addr, bytes| {
            seen += 1;
            if bytes[5] == 9 {
                marked.push(addr);
            }
        });
        assert_eq!(seen, (p as usize + len - aligned_start) / FRAME_SIZE);
        assert_eq!(marked, vec![marked_frame]);
        // SAFETY: unmapping our mapping through the lock, as the hook does.
        r.on_munmap(p as usize, len, || unsafe { libc::munmap(p, len) });
        assert_eq!(r.count(), 0);
    }
}
