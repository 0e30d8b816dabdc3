//! The `local` frame store: the family page pool, a file (on tmpfs, /dev/shm) of
//! 16 KiB slots holding clean page bytes, mapped MAP_PRIVATE over buffer-pool frames of
//! the source and the replicas, plus a record file (`<pool>.meta`, 32 bytes per slot)
//! saying what each slot holds and from when it is valid. A slot's `Frame` is
//! `Frame::LocalPool { offset }`, its byte offset in the pool file.
//!
//! Why a named file and not a memfd: the replicas are separate processes started by
//! dbfork, not children of the source, and the page table daemon does not pass fds;
//! a path in /dev/shm is reachable by every member and removable by dbfork.
//!
//! Lifetime rule: a slot is written once (before it is registered) and never changed,
//! punched or truncated; the pool only grows. dbfork unlinks the pool and its record
//! file when it destroys the family; mappers keep the pages alive after the unlink (a
//! tmpfs inode lives until its last mapping is gone), so no live process ever sees a
//! page change or turn to zeros under it.
//!
//! One writer: only the source appends (its agent owns the slot counter, resumed from
//! the file sizes when a source restarts).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use pagetable::Frame;

use crate::error::{AgentError, Result};
use crate::frame_store::{FrameRecord, FrameStore, StoredFrame, FRAME_SIZE};

/// Every pool slot is one shared frame.
pub const POOL_PAGE: usize = FRAME_SIZE;
pub const RECORD_LEN: usize = 32;
const RECORD_MAGIC: u32 = 0xDBF0_0001;

/// A record's form in the record file: space, page, LSN, valid_from, magic, CRC32C of
/// the first 28 bytes, all little endian.
pub fn encode_record(r: &FrameRecord) -> [u8; RECORD_LEN] {
    let mut b = [0u8; RECORD_LEN];
    b[0..4].copy_from_slice(&r.space_id.to_le_bytes());
    b[4..8].copy_from_slice(&r.page_no.to_le_bytes());
    b[8..16].copy_from_slice(&r.lsn.to_le_bytes());
    b[16..24].copy_from_slice(&r.valid_from.to_le_bytes());
    b[24..28].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    let crc = crc32c::crc32c(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

/// None for a slot whose record is not (completely) written yet or is damaged.
pub fn decode_record(b: &[u8]) -> Option<FrameRecord> {
    if b.len() < RECORD_LEN {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    if u32_at(24) != RECORD_MAGIC || u32_at(28) != crc32c::crc32c(&b[..28]) {
        return None;
    }
    Some(FrameRecord {
        space_id: u32_at(0),
        page_no: u32_at(4),
        lsn: u64_at(8),
        valid_from: u64_at(16),
    })
}

pub fn meta_path(pool: &Path) -> PathBuf {
    let mut s = pool.as_os_str().to_owned();
    s.push(".meta");
    PathBuf::from(s)
}

pub struct Pool {
    path: PathBuf,
    data: File,
    meta: File,
    next_slot: AtomicU64,
    max_slots: Option<u64>,
}

impl Pool {
    /// Opens (creating when `create`) the pool and its record file.
    pub fn open(path: &Path, create: bool) -> Result<Pool> {
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(create)
                .create(create)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(p)
                .map_err(|e| AgentError::io(format!("opening pool file {}", p.display()), e))
        };
        let data = open(path)?;
        let meta = open(&meta_path(path))?;
        let len = |f: &File| f.metadata().map(|m| m.len()).unwrap_or(0);
        // A source restarting after a crash resumes after every slot either file has
        // touched, so a half-appended slot is never reused.
        let next =
            (len(&data).div_ceil(POOL_PAGE as u64)).max(len(&meta).div_ceil(RECORD_LEN as u64));
        Ok(Pool {
            path: path.to_owned(),
            data,
            meta,
            next_slot: AtomicU64::new(next),
            max_slots: None,
        })
    }

    /// Caps the pool at `bytes` (rounded down to whole pages). Slots are never freed
    /// while the family lives, so without a cap a long-running source would grow the
    /// pool (RAM, in /dev/shm) with every page it ever reads.
    pub fn with_limit(mut self, bytes: Option<u64>) -> Self {
        self.max_slots = bytes.map(|b| b / POOL_PAGE as u64);
        self
    }

    /// The cap in slots (`with_limit`), if any.
    pub fn max_slots(&self) -> Option<u64> {
        self.max_slots
    }

    pub fn fd(&self) -> i32 {
        self.data.as_raw_fd()
    }

    pub fn slots_used(&self) -> u64 {
        self.next_slot.load(Ordering::Relaxed)
    }

    /// Appends a page and then its record; returns the slot's byte offset. The record
    /// is written last, so a reader that sees a valid record sees the whole page.
    pub fn append(&self, page: &[u8], rec: FrameRecord) -> Result<u64> {
        if page.len() != POOL_PAGE {
            return Err(AgentError::Config {
                var: "page size",
                msg: format!("pool holds {POOL_PAGE}-byte pages, got {}", page.len()),
            });
        }
        // Reserve a slot only below the cap, so a full pool stays exactly full.
        let slot = self
            .next_slot
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                match self.max_slots {
                    Some(max) if n >= max => None,
                    _ => Some(n + 1),
                }
            })
            .map_err(|n| AgentError::PoolFull { slots: n })?;
        let off = slot * POOL_PAGE as u64;
        self.data
            .write_all_at(page, off)
            .map_err(|e| AgentError::io("writing a page into the pool", e))?;
        self.meta
            .write_all_at(&encode_record(&rec), slot * RECORD_LEN as u64)
            .map_err(|e| AgentError::io("writing a pool record", e))?;
        Ok(off)
    }

    /// The record of the slot at byte offset `off`, if it is complete.
    pub fn record_at(&self, off: u64) -> Result<Option<FrameRecord>> {
        if off % POOL_PAGE as u64 != 0 {
            return Ok(None);
        }
        let slot = off / POOL_PAGE as u64;
        let mut b = [0u8; RECORD_LEN];
        match self.meta.read_exact_at(&mut b, slot * RECORD_LEN as u64) {
            Ok(()) => Ok(decode_record(&b)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(AgentError::io("reading a pool record", e)),
        }
    }

    /// Complete records from slot `from` on, stopping at the first incomplete one.
    pub fn records_from(&self, from: u64, max: usize) -> Result<Vec<(u64, FrameRecord)>> {
        let mut buf = vec![0u8; max * RECORD_LEN];
        let n = self
            .meta
            .read_at(&mut buf, from * RECORD_LEN as u64)
            .map_err(|e| AgentError::io("reading pool records", e))?;
        let mut out = Vec::new();
        for (i, chunk) in buf[..n].chunks_exact(RECORD_LEN).enumerate() {
            match decode_record(chunk) {
                Some(r) => out.push((from + i as u64, r)),
                None => break,
            }
        }
        Ok(out)
    }

    /// Copies the bytes of the slot at `off` into `dst`.
    pub fn read_slot(&self, off: u64, dst: &mut [u8]) -> Result<()> {
        self.data
            .read_exact_at(dst, off)
            .map_err(|e| AgentError::io("reading a pool slot", e))
    }

    /// Maps the pool slot at `off` copy-on-write over `dst` (one pool page).
    ///
    /// # Safety
    /// `dst` must be page-aligned, `POOL_PAGE` bytes long, and owned by the caller for
    /// the duration (no other thread may use those bytes while they are replaced).
    pub unsafe fn map_slot_over(&self, dst: *mut u8, off: u64) -> Result<()> {
        // SAFETY: the caller's contract, for one slot.
        unsafe { self.map_slots_over(dst, off, 1) }
    }

    /// Maps `n` consecutive pool slots from `off` copy-on-write over `dst` in one
    /// mapping, its page tables filled for reading at once (the server's next read of
    /// the frames then takes no fault).
    ///
    /// # Safety
    /// `dst` must be page-aligned, `n * POOL_PAGE` bytes long, and owned by the caller
    /// for the duration (no other thread may use those bytes while they are replaced).
    pub unsafe fn map_slots_over(&self, dst: *mut u8, off: u64, n: usize) -> Result<()> {
        // SAFETY: the caller owns [dst, dst + n * POOL_PAGE); MAP_FIXED replaces exactly
        // that range with a private view of the slots, whose bytes never change
        // (lifetime rule).
        let p = unsafe {
            libc::mmap(
                dst.cast(),
                n * POOL_PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                self.data.as_raw_fd(),
                off as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(AgentError::last_os("mapping a pool page over a frame"));
        }
        // Not MAP_POPULATE: on a writable private mapping it write-faults every page,
        // making private copies of them all. MADV_POPULATE_READ (Linux 5.14) maps the
        // shared pages read-only; where it is missing the frames fault in on use.
        // SAFETY: advice on the range just mapped; it changes no contents.
        unsafe { libc::madvise(p, n * POOL_PAGE, MADV_POPULATE_READ) };
        Ok(())
    }
}

/// madvise advice (uapi asm-generic/mman-common.h), not in every libc crate version.
const MADV_POPULATE_READ: libc::c_int = 22;

/// The slot offset a frame names; every other kind of frame belongs to another store.
fn slot_offset(frame: Frame) -> Result<u64> {
    match frame {
        Frame::LocalPool { offset } => Ok(offset),
        other => Err(AgentError::ForeignFrame(other)),
    }
}

impl FrameStore for Pool {
    fn offer(&self, page: &[u8], record: FrameRecord) -> Result<Frame> {
        let offset = self.append(page, record)?;
        Ok(Frame::LocalPool { offset })
    }

    fn record(&self, frame: Frame) -> Result<Option<FrameRecord>> {
        self.record_at(slot_offset(frame)?)
    }

    fn read(&self, frame: Frame, dst: &mut [u8]) -> Result<()> {
        self.read_slot(slot_offset(frame)?, dst)
    }

    fn offered_since(&self, from: u64, max: usize) -> Result<Vec<StoredFrame>> {
        Ok(self
            .records_from(from, max)?
            .into_iter()
            .map(|(slot, record)| StoredFrame {
                seq: slot,
                frame: Frame::LocalPool {
                    offset: slot * POOL_PAGE as u64,
                },
                record,
            })
            .collect())
    }

    unsafe fn map_over(&self, frame: Frame, dst: *mut u8) -> Result<()> {
        let off = slot_offset(frame)?;
        // SAFETY: the caller's contract is the same as map_slot_over's.
        unsafe { self.map_slot_over(dst, off) }
    }

    unsafe fn map_run_over(&self, frames: &[Frame], dst: *mut u8) -> Result<()> {
        // Slots appended one after the other (the scan copies frames in address order)
        // are mapped as one range each.
        let mut i = 0;
        while i < frames.len() {
            let first = slot_offset(frames[i])?;
            let mut n = 1;
            while i + n < frames.len()
                && slot_offset(frames[i + n])? == first + (n * POOL_PAGE) as u64
            {
                n += 1;
            }
            // SAFETY: the caller owns the run; frames i..i + n are its part at
            // dst + i * POOL_PAGE.
            unsafe { self.map_slots_over(dst.add(i * POOL_PAGE), first, n)? };
            i += n;
        }
        Ok(())
    }

    unsafe fn restore_private(&self, dst: *mut u8) -> Result<()> {
        // SAFETY: the caller owns [dst, dst + POOL_PAGE) (map_over's contract).
        unsafe { anon_over(dst, POOL_PAGE) }
    }

    fn describe(&self) -> String {
        format!("pool {}", self.path.display())
    }
}

/// Replaces a frame with fresh anonymous memory (undoing `map_slot_over`).
///
/// # Safety
/// As for `Pool::map_slot_over`.
pub unsafe fn anon_over(dst: *mut u8, len: usize) -> Result<()> {
    // SAFETY: the caller owns [dst, dst + len); the range becomes private zero pages.
    let p = unsafe {
        libc::mmap(
            dst.cast(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(AgentError::last_os(
            "replacing a frame with anonymous memory",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::testpage::full_crc32_page;

    /// A page-aligned anonymous buffer, unmapped on drop.
    pub(crate) struct AnonFrame(*mut u8, usize);
    impl AnonFrame {
        pub fn new(len: usize) -> AnonFrame {
            // SAFETY: fresh anonymous mapping, owned by this struct.
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
            AnonFrame(p.cast(), len)
        }
        pub fn bytes(&mut self) -> &mut [u8] {
            // SAFETY: the mapping is live and exclusively ours.
            unsafe { std::slice::from_raw_parts_mut(self.0, self.1) }
        }
    }
    impl Drop for AnonFrame {
        fn drop(&mut self) {
            // SAFETY: unmapping our own mapping.
            unsafe { libc::munmap(self.0.cast(), self.1) };
        }
    }

    #[test]
    fn a_capped_pool_refuses_appends_past_its_limit_and_keeps_its_slots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool");
        let pool = Pool::open(&path, true)
            .unwrap()
            .with_limit(Some(2 * POOL_PAGE as u64 + 100));
        let rec = |page_no| FrameRecord {
            space_id: 3,
            page_no,
            lsn: 100,
            valid_from: 1,
        };
        for n in 0..2 {
            let off = pool.append(&full_crc32_page(3, n, 100), rec(n)).unwrap();
            assert_eq!(off, u64::from(n) * POOL_PAGE as u64);
        }
        let err = pool
            .append(&full_crc32_page(3, 2, 100), rec(2))
            .unwrap_err();
        assert!(matches!(err, AgentError::PoolFull { slots: 2 }), "{err}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            2 * POOL_PAGE as u64
        );
        // Full stays full, and what is pooled is still readable.
        assert!(pool.append(&full_crc32_page(3, 3, 100), rec(3)).is_err());
        assert_eq!(pool.record_at(POOL_PAGE as u64).unwrap(), Some(rec(1)));
        // A reopened pool with the same cap is full too.
        let again = Pool::open(&path, true)
            .unwrap()
            .with_limit(Some(2 * POOL_PAGE as u64));
        assert!(again.append(&full_crc32_page(3, 4, 100), rec(4)).is_err());
    }

    #[test]
    fn records_round_trip_and_damage_is_detected() {
        let r = FrameRecord {
            space_id: 7,
            page_no: 9,
            lsn: 1 << 40,
            valid_from: 55,
        };
        let mut b = encode_record(&r);
        assert_eq!(decode_record(&b), Some(r));
        b[5] ^= 1;
        assert_eq!(decode_record(&b), None);
        assert_eq!(decode_record(&[0u8; 32]), None);
        assert_eq!(decode_record(&[0u8; 3]), None);
    }

    #[test]
    fn writes_to_a_mapped_frame_stay_private_and_the_pool_keeps_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool");
        let pool = Pool::open(&path, true).unwrap();
        let page = full_crc32_page(3, 4, 100);
        let rec = FrameRecord {
            space_id: 3,
            page_no: 4,
            lsn: 100,
            valid_from: 90,
        };
        let off = pool.append(&page, rec).unwrap();
        assert_eq!(pool.record_at(off).unwrap(), Some(rec));

        let mut a = AnonFrame::new(POOL_PAGE);
        let mut b = AnonFrame::new(POOL_PAGE);
        // SAFETY: both frames are ours, aligned, one pool page long.
        unsafe {
            pool.map_slot_over(a.0, off).unwrap();
            pool.map_slot_over(b.0, off).unwrap();
        }
        assert_eq!(a.bytes(), &page[..]);
        a.bytes()[100] ^= 0xff; // the "server" modifies its frame
        assert_ne!(a.bytes()[100], page[100]);
        assert_eq!(b.bytes(), &page[..], "other mapper sees its own bytes");
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[off as usize..off as usize + POOL_PAGE], &page[..]);

        // A reopened pool (a restarted source) appends after the existing slot.
        drop(pool);
        let pool = Pool::open(&path, true).unwrap();
        assert_eq!(pool.slots_used(), 1);
        let recs = pool.records_from(0, 8).unwrap();
        assert_eq!(recs, vec![(0, rec)]);

        // Unlinking the pool (family destroyed) does not change a live mapping.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(b.bytes(), &page[..]);
        // SAFETY: as above.
        unsafe { anon_over(b.0, POOL_PAGE).unwrap() };
        assert!(b.bytes().iter().all(|&x| x == 0));
    }

    #[test]
    fn the_pool_as_a_frame_store_speaks_in_local_pool_frames() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(&dir.path().join("pool"), true).unwrap();
        let store: &dyn FrameStore = &pool;
        let rec = |page_no| FrameRecord {
            space_id: 3,
            page_no,
            lsn: 100,
            valid_from: 90,
        };
        let pages: Vec<Vec<u8>> = (0..2).map(|n| full_crc32_page(3, n, 100)).collect();
        let frames: Vec<Frame> = (0..2)
            .map(|n| store.offer(&pages[n as usize], rec(n)).unwrap())
            .collect();
        assert_eq!(
            frames[1],
            Frame::LocalPool {
                offset: POOL_PAGE as u64
            }
        );
        assert_eq!(store.record(frames[1]).unwrap(), Some(rec(1)));
        let mut copy = vec![0u8; POOL_PAGE];
        store.read(frames[1], &mut copy).unwrap();
        assert_eq!(copy, pages[1]);
        let log = store.offered_since(1, 8).unwrap();
        assert_eq!(
            log,
            vec![StoredFrame {
                seq: 1,
                frame: frames[1],
                record: rec(1)
            }]
        );
        // Frames of another store are refused, not misread as an offset.
        let grant = Frame::XenGrant {
            issuer: 1,
            grantee: 3,
            gref: 2,
        };
        assert!(matches!(
            store.record(grant),
            Err(AgentError::ForeignFrame(_))
        ));
        let mut f = AnonFrame::new(POOL_PAGE);
        // SAFETY: f is ours, aligned, one frame long.
        unsafe {
            assert!(store.map_over(grant, f.0).is_err());
            store.map_over(frames[0], f.0).unwrap();
        }
        assert_eq!(f.bytes(), &pages[0][..]);
        // SAFETY: as above.
        unsafe { store.restore_private(f.0).unwrap() };
        assert!(f.bytes().iter().all(|&x| x == 0));
        assert_eq!(store.record(frames[0]).unwrap(), Some(rec(0)), "pool kept");
    }
}
