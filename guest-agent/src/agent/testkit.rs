//! Fixtures for the agent's unit tests: a buffer pool (a large anonymous mapping the
//! agent is shown, as the mmap hook would), tablespace files, and agents of each role
//! sharing one family store in a temp directory.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::Agent;
use crate::config::Config;
use crate::frame_store::FRAME_SIZE;
use crate::page::{
    self,
    testpage::{full_crc32_page, raw, seal_full_crc32},
};

/// A buffer pool: one large anonymous mapping, as InnoDB makes it.
pub struct Arena(*mut u8, std::cell::Cell<usize>);
const ARENA: usize = crate::scan::MIN_REGION;
impl Arena {
    /// A 16 KiB-aligned anonymous region, as InnoDB's buffer-pool chunks are.
    pub fn new() -> Arena {
        // SAFETY: fresh anonymous mapping; the unaligned head and tail are unmapped
        // below, the rest is owned by this value.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ARENA + FRAME_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as usize;
        let start = base.next_multiple_of(FRAME_SIZE);
        // SAFETY: trimming our own fresh mapping to [start, start + ARENA).
        unsafe {
            if start > base {
                libc::munmap(p, start - base);
            }
            let tail = base + ARENA + FRAME_SIZE - (start + ARENA);
            if tail > 0 {
                libc::munmap((start + ARENA) as *mut libc::c_void, tail);
            }
        }
        Arena(start as *mut u8, std::cell::Cell::new(0))
    }
    /// Tells an agent this is a buffer pool, as the mmap hook would and as the server's
    /// first page read into it does.
    pub fn show(&self, a: &Agent) {
        self.show_unread(a);
        a.regions.note_page_read(self.0 as usize);
    }
    /// Tells an agent of this mapping, as the mmap hook would, with no page read into
    /// it yet (any large anonymous mapping of the server).
    pub fn show_unread(&self, a: &Agent) {
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        a.on_mmap(
            self.0 as usize,
            ARENA,
            rw,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
        );
    }
    pub fn frame(&self) -> Frame {
        let i = self.1.get();
        self.1.set(i + 1);
        assert!((i + 1) * FRAME_SIZE <= ARENA);
        // SAFETY: inside our mapping.
        Frame(unsafe { self.0.add(i * FRAME_SIZE) })
    }
}
impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.0.cast(), ARENA) };
    }
}

/// A page-aligned frame inside an arena, like a buffer-pool block.
pub struct Frame(pub *mut u8);
impl Frame {
    #[allow(clippy::mut_from_ref)] // a test frame, like InnoDB's: raw memory
    pub fn bytes(&self) -> &mut [u8] {
        // SAFETY: our live mapping.
        unsafe { std::slice::from_raw_parts_mut(self.0, FRAME_SIZE) }
    }
}

pub const SPACE: u32 = 42;

/// A tablespace file: page 0 with full_crc32 16K flags, then pages at `lsn`.
pub fn tablespace(path: &Path, pages: u32, lsn: u64) -> Vec<Vec<u8>> {
    let mut p0 = raw(FRAME_SIZE, SPACE, 0, lsn, 0);
    p0[page::FSP_SPACE_FLAGS..page::FSP_SPACE_FLAGS + 4].copy_from_slice(&0x15u32.to_be_bytes());
    seal_full_crc32(&mut p0);
    let mut all = vec![p0];
    all.extend((1..pages).map(|n| full_crc32_page(SPACE, n, lsn)));
    std::fs::write(path, all.concat()).unwrap();
    all
}

pub fn agent(dir: &Path, role: &str, s: u64) -> Agent {
    let pool = dir.join("pool").display().to_string();
    let clone_lsn = dir.join("clone_lsn").display().to_string();
    let writes = dir.join(format!("{role}.writes")).display().to_string();
    let release = dir.join("release").display().to_string();
    let s = s.to_string();
    let cfg = Config::from_lookup(|k| match k {
        "DBFORK_AGENT_ROLE" => Some(role.to_string()),
        "DBFORK_POOL_PATH" => Some(pool.clone()),
        "DBFORK_CLONE_LSN_FILE" => Some(clone_lsn.clone()),
        "DBFORK_SNAPSHOT_LSN" => Some(s.clone()),
        "DBFORK_REPLICA_WRITES" => Some(writes.clone()),
        "DBFORK_RELEASE_FILE" => Some(release.clone()),
        _ => None,
    })
    .unwrap();
    Agent::new(cfg)
}

pub fn read(a: &Agent, file: &File, frame: &Frame, page_no: u32) -> isize {
    let fd = file.as_raw_fd();
    let off = i64::from(page_no) * FRAME_SIZE as i64;
    let buf = frame.0;
    // SAFETY: frame is a live FRAME_SIZE mapping.
    unsafe {
        a.on_pread(fd, buf, FRAME_SIZE, off, || {
            libc::pread(fd, buf.cast(), FRAME_SIZE, off) as isize
        })
    }
}

pub fn open_tracked(a: &Agent, path: &Path) -> File {
    let f = File::open(path).unwrap();
    let fd = f.as_raw_fd();
    a.on_open(fd, path.as_os_str().as_encoded_bytes(), |buf, off| {
        // SAFETY: buf is a live slice.
        unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), off) as isize }
    });
    f
}
