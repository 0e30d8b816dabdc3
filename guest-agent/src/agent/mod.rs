//! The agent's decisions, independent of the FFI edge: the hooks in `hooks.rs` call
//! these with a closure that performs the real libc call, so this module is tested in
//! process with real files and mappings.
//!
//! This file is the dispatch: the `Agent`, its setup, and the entry points the hooks
//! call (`on_open`, `on_pread`, `on_pwrite`, `on_close`, `on_mmap`, `tick`, ...),
//! which hand each read to the side of the family this process plays:
//! - `source`: offer clean page reads to the family's frame store, register them,
//!   scan the buffer pool when a new clone LSN is published;
//! - `replica`: look a page up, check the share rule, map and verify, or decline;
//! - `written`: the pages a replica wrote itself, kept across restarts.

mod replica;
mod source;
#[cfg(test)]
mod testkit;
mod written;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::clone_lsn::{CloneLsnFile, CloneLsnSource};
use crate::config::{Config, Role};
use crate::directory::{PageDirectory, PageTableDirectory, StoreIndex};
use crate::error::{AgentError, Result};
use crate::fdtable::{is_data_file, FdState, FdTable, Ident};
pub use crate::frame_store::AlignedPage;
use crate::frame_store::{FrameStore, FRAME_SIZE};
use crate::page::{self, MIN_HEADER};
use crate::scan::Regions;
use crate::stats::{Stats, StatsSnapshot};
use pagetable::Frame;

use source::SourceState;
pub use written::{poison_path, WrittenSet};

/// How the agent answers in `DBFORK_RELEASE_FILE` once it let go of its source.
pub const RELEASED: &str = "released";

/// Why a replica shares no more once its source went (`DBFORK_RELEASE_FILE`).
pub const SOURCE_RELEASED: &str =
    "its source is going away: the frames mapped from it were copied into this server's own memory";

const OS_PAGE: usize = 4096;
/// Longest a read waits for the directory while another thread uses it.
const DIR_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

pub struct Agent {
    pub config: Config,
    pub fds: FdTable,
    pub stats: Stats,
    store: Option<Arc<dyn FrameStore>>,
    dir: Mutex<Option<Box<dyn PageDirectory>>>,
    /// Where the family's clone LSN is read (source role; a replica may have one too).
    clone_lsn_source: Option<Box<dyn CloneLsnSource>>,
    /// Pages this replica wrote, as space_id << 32 | page_no: never shared again.
    written: Mutex<WrittenSet>,
    /// Buffer-pool candidates: the only frames ever remapped, and what the clone-time
    /// scan reads.
    pub regions: Regions,
    /// What the source side remembers between reads.
    source: SourceState,
    sharing_off: AtomicBool,
    off_reason: Mutex<Option<String>>,
    /// Source role: whether the scan moves private frames onto their stored copies
    /// (only once `crate::fault`'s handler is installed).
    moves_frames: AtomicBool,
    /// Start addresses of the frames mapped from the store (until made private memory
    /// again or unmapped): a madvise that drops such a page would bring back the
    /// stored bytes, where the server expects the zeros of anonymous memory.
    file_backed: Mutex<BTreeSet<usize>>,
    /// The grantees file as last admitted (Xen source).
    grantees_seen: Mutex<Option<String>>,
}

/// A page's key in the agent's maps and in the written-page file.
fn key(space: u32, page: u32) -> u64 {
    (u64::from(space) << 32) | u64::from(page)
}

impl Agent {
    /// Builds the agent; a failure to set up sharing turns sharing off (with the reason
    /// logged and in the stats), it never fails the server.
    pub fn new(config: Config) -> Agent {
        let mut agent = Agent {
            config: config.clone(),
            fds: FdTable::default(),
            stats: Stats::default(),
            store: None,
            dir: Mutex::new(None),
            clone_lsn_source: None,
            written: Mutex::new(WrittenSet::default()),
            regions: Regions::default(),
            source: SourceState::default(),
            sharing_off: AtomicBool::new(config.role == Role::Off),
            off_reason: Mutex::new(None),
            moves_frames: AtomicBool::new(false),
            file_backed: Mutex::new(BTreeSet::new()),
            grantees_seen: Mutex::new(None),
        };
        if config.role == Role::Off {
            return agent;
        }
        if let Err(e) = agent.setup_sharing() {
            agent.disable_sharing(&format!("setup failed: {}", error_chain(&e)));
        }
        agent
    }

    fn setup_sharing(&mut self) -> Result<()> {
        let store = open_family_store(&self.config)?;
        if let Some(w) = &self.config.writes_file {
            *self.written.lock() = WrittenSet::open_unpoisoned(w)?;
        }
        if let Some(path) = &self.config.clone_lsn_file {
            self.clone_lsn_source = Some(Box::new(CloneLsnFile::open(path)?));
        }
        let dir: Box<dyn PageDirectory> = match &self.config.pagetable_socket {
            Some(sock) => Box::new(PageTableDirectory::new(sock, store.clone())),
            None => Box::new(StoreIndex::new(store.clone())),
        };
        tracing::info!(
            role = ?self.config.role,
            frames = %store.describe(),
            directory = dir.describe(),
            clone_lsn = ?self.clone_lsn_source.as_ref().map(|s| s.describe()),
            snapshot_lsn = ?self.config.snapshot_lsn,
            "dbfork agent: sharing on"
        );
        *self.dir.lock() = Some(dir);
        self.store = Some(store);
        // Frames resident at start were read under the current clone LSN already.
        *self.source.scanned_clone_lsn.lock() = self.clone_lsn();
        Ok(())
    }

    /// The family's clone LSN now (see `clone_lsn`); None without a source or when it
    /// cannot be read.
    fn clone_lsn(&self) -> Option<u64> {
        self.clone_lsn_source.as_ref()?.current()
    }

    /// Turns sharing off for the rest of the process; reads and writes go to disk.
    pub fn disable_sharing(&self, why: &str) {
        if !self.sharing_off.swap(true, Ordering::AcqRel) || self.off_reason.lock().is_none() {
            tracing::warn!("dbfork agent: sharing is off: {why}");
            *self.off_reason.lock() = Some(why.to_string());
        }
    }

    pub fn sharing_on(&self) -> bool {
        !self.sharing_off.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let unshared = [
            (
                &self.stats.unshared_on_write,
                crate::unshare::unshared_on_write(),
            ),
            (
                &self.stats.unshared_before_io,
                crate::unshare::unshared_before_io(),
            ),
        ];
        for (counter, n) in unshared {
            counter.store(n as u64, Ordering::Relaxed);
        }
        let role = match self.config.role {
            Role::Off => "off",
            Role::Source => "source",
            Role::Replica => "replica",
        };
        self.stats.snapshot(role, self.off_reason.lock().clone())
    }

    pub fn write_stats(&self) {
        if let Some(p) = &self.config.stats_path {
            if let Err(e) = self.snapshot().write_to(p) {
                tracing::debug!("dbfork agent: writing stats to {}: {e}", p.display());
            }
        }
    }

    /// After a successful open: remember InnoDB data files and identify them from
    /// page 0 when it can be read now. `read` performs a real pread on the new fd.
    pub fn on_open(&self, fd: i32, path: &[u8], read: impl Fn(&mut [u8], i64) -> isize) {
        if fd < 0 || !is_data_file(path) {
            return;
        }
        Stats::inc(&self.stats.files_opened);
        self.fds.set_candidate(fd);
        // O_DIRECT needs an aligned buffer; 16 KiB holds page 0's header at any size.
        let mut buf = AlignedPage::new();
        let n = read(buf.bytes(), 0);
        if n >= MIN_HEADER as isize {
            self.identify(fd, &buf.bytes()[..n as usize], path);
        } else {
            let err = std::io::Error::last_os_error();
            tracing::debug!(file = %String::from_utf8_lossy(path), n, %err, "dbfork agent: page 0 unreadable at open");
        }
    }

    fn identify(&self, fd: i32, page0: &[u8], path: &[u8]) {
        // A zero-filled start (a file being extended before page 0 is written) would
        // decode as space 0 with default flags; wait for the real page 0.
        if page0.iter().take(MIN_HEADER).all(|&b| b == 0) {
            tracing::debug!(file = %String::from_utf8_lossy(path), "dbfork agent: page 0 zeros at open");
            return;
        }
        match page::space_info(page0) {
            Ok(info) => {
                Stats::inc(&self.stats.files_identified);
                self.fds.set_identified(fd, Ident::from(info));
                if info.page_size as usize == FRAME_SIZE {
                    self.source.note_space(info.space_id, info.format);
                }
                if info.page_size as usize != FRAME_SIZE {
                    tracing::info!(
                        file = %String::from_utf8_lossy(path),
                        page_size = info.page_size,
                        "dbfork agent: page size is not 16 KiB; this file is never shared"
                    );
                }
            }
            Err(e) => {
                Stats::inc(&self.stats.files_declined);
                self.fds.clear(fd);
                tracing::info!(file = %String::from_utf8_lossy(path), "dbfork agent: not shared: {e}");
            }
        }
    }

    pub fn on_close(&self, fd: i32) {
        self.fds.clear(fd);
    }

    /// A pread by the server. `real` performs the real call into `buf`.
    ///
    /// # Safety
    /// `buf` must be valid for `count` bytes of writes, as for pread itself.
    pub unsafe fn on_pread(
        &self,
        fd: i32,
        buf: *mut u8,
        count: usize,
        off: i64,
        real: impl FnOnce() -> isize,
    ) -> isize {
        Stats::inc(&self.stats.reads_total);
        // A frame being moved onto the store is read-only for a moment: the kernel
        // would fail a read into it rather than fault. The read waits for the move, and
        // keeps its buffer from starting one until it is done.
        let _reading = (self.moves_frames() && self.regions.overlaps(buf as usize, count))
            .then(|| crate::fault::begin_read(buf as usize, count));
        // A frame mapped from another domain's grants is read-only too, for good: it
        // becomes private memory before the kernel writes into it.
        if let Err(e) = crate::unshare::before_io(buf as usize, count) {
            tracing::error!("dbfork agent: {}", error_chain(&e));
            // SAFETY: errno is this thread's.
            unsafe { *libc::__errno_location() = libc::ENOMEM };
            return -1;
        }
        match self.fds.get(fd) {
            FdState::Untracked => real(),
            FdState::Candidate => {
                let n = real();
                if off == 0 && n >= MIN_HEADER as isize {
                    // SAFETY: the real pread just filled n bytes of buf.
                    let page0 = unsafe { std::slice::from_raw_parts(buf, n as usize) };
                    self.identify(fd, page0, b"(identified on first read)");
                }
                n
            }
            // SAFETY: forwarded from the caller.
            FdState::Identified(id) => unsafe { self.data_read(id, buf, count, off, real) },
        }
    }

    unsafe fn data_read(
        &self,
        id: Ident,
        buf: *mut u8,
        count: usize,
        off: i64,
        real: impl FnOnce() -> isize,
    ) -> isize {
        Stats::inc(&self.stats.reads_data);
        let page_sized = id.page_size as usize == FRAME_SIZE
            && count == FRAME_SIZE
            && off >= 0
            && off as u64 % FRAME_SIZE as u64 == 0
            && buf as usize % OS_PAGE == 0;
        if !page_sized {
            return real();
        }
        Stats::inc(&self.stats.reads_page_sized);
        // Only buffer-pool frames are ever remapped: a heap buffer that happens to be
        // aligned could be handed back to malloc with a file page under it.
        // A page of a data file read into a region makes it a buffer-pool chunk.
        if self.config.role != Role::Off && !self.regions.note_page_read(buf as usize) {
            Stats::inc(&self.stats.reads_outside_pool);
            return real();
        }
        let page_no = match u32::try_from(off as u64 / FRAME_SIZE as u64) {
            Ok(p) => p,
            Err(_) => return real(),
        };
        match self.config.role {
            Role::Off => {
                let n = real();
                if n == FRAME_SIZE as isize {
                    // SAFETY: the real pread filled the whole page.
                    let bytes = unsafe { std::slice::from_raw_parts(buf, FRAME_SIZE) };
                    self.count_verified(
                        page::verify_identity(bytes, id.format, id.space_id, page_no).is_ok(),
                    );
                }
                n
            }
            Role::Source => {
                // The frame is read into again: whatever was mapped there is gone.
                self.source.forget_mapped(buf as usize, FRAME_SIZE);
                if !self.sharing_on() {
                    return real();
                }
                // valid_from is read BEFORE the read starts (the share rule).
                let valid_from = self.clone_lsn();
                let n = real();
                if n == FRAME_SIZE as isize {
                    // SAFETY: buf holds the page just read; InnoDB owns the frame until we return.
                    unsafe { self.offer_read_frame(id, buf, page_no, valid_from) };
                }
                n
            }
            Role::Replica => {
                if self.sharing_on() {
                    // SAFETY: forwarded; buf is aligned and one page long (checked above).
                    if let Some(n) = unsafe { self.try_share(id, buf, page_no) } {
                        return n;
                    }
                }
                real()
            }
        }
    }

    fn count_verified(&self, ok: bool) {
        if ok {
            Stats::inc(&self.stats.pages_read_verified);
        } else {
            Stats::inc(&self.stats.pages_read_unverified);
        }
    }

    /// Before a pwrite by the server: the pages it covers are this process's own from
    /// now on (recorded before the write, so no read can be shared in between).
    /// `head` is the start of the data being written (up to a page), used to identify
    /// a data file whose page 0 could not be read when it was opened (a new file).
    pub fn on_pwrite(&self, fd: i32, count: usize, off: i64, head: &[u8]) {
        if count == 0 || off < 0 {
            return;
        }
        let id = match self.fds.get(fd) {
            FdState::Untracked => return,
            FdState::Identified(id) => id,
            FdState::Candidate => {
                if off == 0 && head.len() >= MIN_HEADER {
                    self.identify(fd, head, b"(identified on first write)");
                }
                match self.fds.get(fd) {
                    FdState::Identified(id) => id,
                    _ => {
                        // A data file whose page 0 is not there yet (an empty file the
                        // server fills page by page): the written page names its space.
                        match page::space_of_written(head, off as u64) {
                            Some((space_id, page_size)) => {
                                self.record_pages_written(space_id, page_size, count, off);
                            }
                            // The written set cannot say which pages are now this
                            // replica's own.
                            None if self.config.role == Role::Replica => {
                                let path = std::fs::read_link(format!("/proc/self/fd/{fd}"))
                                    .map(|p| p.display().to_string())
                                    .unwrap_or_else(|_| format!("fd {fd}"));
                                self.written_set_incomplete(&format!(
                                    "write to a data file that could not be identified ({path} at offset {off})"
                                ));
                            }
                            None => {}
                        }
                        return;
                    }
                }
            }
        };
        self.record_pages_written(id.space_id, id.page_size, count, off);
    }

    /// The pages `count` bytes written at `off` cover: this process's own from now on.
    fn record_pages_written(&self, space_id: u32, page_size: u32, count: usize, off: i64) {
        Stats::inc(&self.stats.writes_data);
        let ps = u64::from(page_size);
        let first = off as u64 / ps;
        let last = (off as u64 + count as u64 - 1) / ps;
        let keys: Vec<u64> = (first..=last.min(u64::from(u32::MAX)))
            .map(|p| key(space_id, p as u32))
            .collect();
        Stats::add(&self.stats.pages_written, keys.len() as u64);
        self.record_written(&keys);
    }

    /// Periodic work off the read path (the background thread): catch the directory
    /// up with the frame store (registration after a reconnect or a daemon restart),
    /// and scan the buffer pool when a new clone LSN was published.
    pub fn tick(&self) {
        if self.config.role == Role::Replica {
            self.release_if_source_goes();
            return;
        }
        if self.config.role != Role::Source || !self.sharing_on() {
            return;
        }
        self.admit_grantees();
        if let Some(d) = self.dir.lock().as_mut() {
            if let Err(e) = d.sync() {
                tracing::debug!("dbfork agent: directory sync: {}", error_chain(&e));
            }
        }
        self.scan_if_new_clone_lsn();
    }

    /// Replica: once the guest side says the source is going (its release file), no
    /// frame is mapped from it any more and every one mapped is made private, so the
    /// source's memory goes with it and this server runs on its own copies.
    fn release_if_source_goes(&self) {
        let Some(path) = &self.config.release_file else {
            return;
        };
        match std::fs::read_to_string(path) {
            Ok(t) if !t.starts_with(RELEASED) => {}
            // Not asked, or answered already.
            _ => return,
        }
        // First no new mapping, then every mapping there is: a lookup that mapped a
        // frame just before sharing went off is caught by the next pass.
        self.disable_sharing(SOURCE_RELEASED);
        let mut released = 0;
        for _ in 0..100 {
            match crate::unshare::unshare_all() {
                Ok(n) => released += n,
                Err(e) => {
                    tracing::warn!("dbfork agent: releasing the source's frames: {e}");
                    return;
                }
            }
            if crate::unshare::shared_now() == 0 {
                break;
            }
            std::thread::yield_now();
        }
        Stats::add(&self.stats.frames_released, released as u64);
        if let Err(e) = std::fs::write(path, format!("{RELEASED} {released}\n")) {
            tracing::warn!("dbfork agent: answering {}: {e}", path.display());
        }
    }

    /// Source: hands the replica domains the guest side names to the frame store (a Xen
    /// source grants them its frames), when the file changed.
    fn admit_grantees(&self) {
        let (Some(path), Some(store)) = (&self.config.grantees_file, &self.store) else {
            return;
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            // Not written yet: no replica so far.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!("dbfork agent: reading {}: {e}", path.display());
                return;
            }
        };
        let mut last = self.grantees_seen.lock();
        if last.as_deref() == Some(text.as_str()) {
            return;
        }
        match crate::config::parse_grantees(&text).and_then(|ids| store.admit(&ids)) {
            Ok(()) => *last = Some(text),
            Err(e) => tracing::warn!(
                "dbfork agent: replica domains from {}: {}",
                path.display(),
                error_chain(&e)
            ),
        }
    }

    /// Whether the frames this process maps fault on its first write to them (then the
    /// agent's SIGSEGV handler must be installed to make them private).
    pub fn needs_fault_handler(&self) -> bool {
        self.sharing_on() && self.store.as_ref().is_some_and(|s| s.writes_fault())
    }

    /// After a successful mmap by the server: remember buffer-pool candidates (the
    /// only memory the agent ever remaps, and what the clone-time scan reads).
    pub fn on_mmap(&self, addr: usize, len: usize, prot: i32, flags: i32, fd: i32) {
        if self.config.role != Role::Off {
            self.regions.on_mmap(addr, len, prot, flags, fd);
        }
    }

    /// Before a munmap by the server (under the regions' write lock): the frames in
    /// the range are gone; `in_pool`: the range overlapped a buffer-pool region.
    pub fn on_unmap(&self, addr: usize, len: usize, in_pool: bool) {
        if self.config.role == Role::Source && in_pool {
            self.source.forget_mapped(addr, len);
        }
        crate::unshare::forget(addr, len);
        let end = addr.saturating_add(len);
        let mut fb = self.file_backed.lock();
        let gone: Vec<usize> = fb
            .range(addr.saturating_sub(FRAME_SIZE - 1)..end)
            .copied()
            .collect();
        for a in gone {
            fb.remove(&a);
        }
    }

    /// Around a madvise by the server that may drop pages (DONTNEED, FREE, REMOVE);
    /// `f` makes the real call. The frames in the range are no longer what the source
    /// mapped there; the ones mapped from the store become anonymous memory first (a
    /// dropped page of a private file mapping reads as the file's bytes again: a page
    /// version the server may have replaced since, which the clone-time scan would
    /// take for a resident page). A move of a frame in the range is waited for, and
    /// none starts meanwhile.
    pub fn dropping<R>(&self, addr: usize, len: usize, f: impl FnOnce() -> R) -> R {
        let _reading = (self.moves_frames() && self.regions.overlaps(addr, len))
            .then(|| crate::fault::begin_read(addr, len));
        if self.config.role == Role::Source && self.regions.overlaps(addr, len) {
            self.source.forget_mapped(addr, len);
        }
        self.make_private(addr, len);
        f()
    }

    /// Makes the store-mapped frames overlapping `[addr, addr + len)` private memory
    /// again, keeping their bytes outside the range (the range itself is being
    /// dropped by the caller).
    fn make_private(&self, addr: usize, len: usize) {
        let end = addr.saturating_add(len);
        let frames: Vec<usize> = self
            .file_backed
            .lock()
            .range(addr.saturating_sub(FRAME_SIZE - 1)..end)
            .copied()
            .collect();
        let Some(store) = self.store.clone() else {
            return;
        };
        let mut saved = crate::frame_store::AlignedPage::new();
        for a in frames {
            let lo = addr.saturating_sub(a).min(FRAME_SIZE);
            let hi = end.saturating_sub(a).min(FRAME_SIZE);
            // SAFETY: a mapped frame of the server's buffer pool, FRAME_SIZE bytes.
            saved
                .bytes()
                .copy_from_slice(unsafe { std::slice::from_raw_parts(a as *const u8, FRAME_SIZE) });
            // SAFETY: the server is dropping (part of) this frame: nobody uses it.
            match unsafe { self.unmap_frame(store.as_ref(), a as *mut u8) } {
                Ok(()) => {
                    // SAFETY: private memory again, FRAME_SIZE writable bytes.
                    let f = unsafe { std::slice::from_raw_parts_mut(a as *mut u8, FRAME_SIZE) };
                    f[..lo].copy_from_slice(&saved.bytes()[..lo]);
                    f[hi..].copy_from_slice(&saved.bytes()[hi..]);
                }
                Err(e) => tracing::error!(
                    "dbfork agent: making a dropped frame private failed: {}",
                    error_chain(&e)
                ),
            }
        }
    }

    /// Maps the stored `frame` over the server's frame at `dst` (see
    /// `FrameStore::map_over`), recorded as mapped from the store.
    ///
    /// # Safety
    /// As for `FrameStore::map_over`.
    unsafe fn map_frame(&self, store: &dyn FrameStore, frame: Frame, dst: *mut u8) -> Result<()> {
        // Recorded even on failure: part of the range may be mapped; the caller's
        // `unmap_frame` clears it.
        self.file_backed.lock().insert(dst as usize);
        // SAFETY: the caller's contract.
        unsafe { store.map_over(frame, dst) }
    }

    /// Maps the stored `frames` over the server's consecutive frames from `dst` (see
    /// `FrameStore::map_run_over`), each recorded as mapped from the store.
    ///
    /// # Safety
    /// As for `FrameStore::map_run_over`.
    unsafe fn map_run(&self, store: &dyn FrameStore, frames: &[Frame], dst: *mut u8) -> Result<()> {
        // Recorded even on failure, as in `map_frame`.
        self.file_backed
            .lock()
            .extend((0..frames.len()).map(|i| dst as usize + i * FRAME_SIZE));
        // SAFETY: the caller's contract.
        unsafe { store.map_run_over(frames, dst) }
    }

    /// Makes the frame at `dst` private memory again (see
    /// `FrameStore::restore_private`).
    ///
    /// # Safety
    /// As for `FrameStore::restore_private`.
    unsafe fn unmap_frame(&self, store: &dyn FrameStore, dst: *mut u8) -> Result<()> {
        // SAFETY: the caller's contract.
        let r = unsafe { store.restore_private(dst) };
        if r.is_ok() {
            self.file_backed.lock().remove(&(dst as usize));
        }
        r
    }

    /// Source role, once `crate::fault`'s SIGSEGV handler is installed: the clone-time
    /// scan moves the private frames it copies onto their stored copies.
    pub fn enable_frame_moves(&self) {
        if self.config.role == Role::Source && crate::fault::installed() {
            self.moves_frames.store(true, Ordering::Release);
        }
    }

    fn moves_frames(&self) -> bool {
        self.moves_frames.load(Ordering::Acquire)
    }

    /// Called when the server starts native AIO: its reads and writes would bypass
    /// the agent, so the written set would be incomplete.
    pub fn on_native_aio(&self, which: &str) {
        if self.config.role != Role::Off {
            self.disable_sharing(&format!(
                "the server uses {which}; start it with innodb_use_native_aio=0"
            ));
        }
    }
}

/// The reason sharing goes off after a failed mapping.
fn map_failure_reason(e: &AgentError) -> String {
    let enomem =
        matches!(e, AgentError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOMEM));
    if enomem {
        "mmap failed with ENOMEM (vm.max_map_count reached?)".into()
    } else {
        format!("mapping a pool page failed: {}", error_chain(e))
    }
}

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// How much a Xen replica maps from grants at most, without DBFORK_POOL_MAX_BYTES (it
/// sizes the table of shared frames the fault handler reads: 16 bytes per frame).
const XEN_REPLICA_DEFAULT_MAP: u64 = 4 << 30;

/// The family's frame store for this process: the local pool at `DBFORK_POOL_PATH`
/// (created by the source, opened read-only by replicas), or with `DBFORK_XEN_DOMID`
/// the Xen stores (the source's pool granted to its replicas, a replica's grants).
fn open_family_store(config: &Config) -> Result<Arc<dyn FrameStore>> {
    use crate::grant::store::{XenReplicaStore, XenSourceStore};
    let pool = |create: bool| -> Result<crate::pool::Pool> {
        let path = config.pool_path.as_ref().expect("checked by Config");
        Ok(crate::pool::Pool::open(path, create)?.with_limit(config.pool_max_bytes))
    };
    Ok(match (config.xen_domid, config.role) {
        (Some(domid), Role::Source) => {
            let issuer = crate::grant::issuer::DbforkGnt::open()?.with_own_domid(domid);
            Arc::new(XenSourceStore::open(pool(true)?, Box::new(issuer), domid)?)
        }
        (Some(domid), _) => {
            let cap = config.pool_max_bytes.unwrap_or(XEN_REPLICA_DEFAULT_MAP);
            crate::unshare::init(usize::try_from(cap / FRAME_SIZE as u64).unwrap_or(usize::MAX));
            let dev = crate::grant::Gntdev::open()?;
            Arc::new(XenReplicaStore::new(Box::new(dev), domid))
        }
        (None, role) => Arc::new(pool(role == Role::Source)?),
    })
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use std::os::unix::io::AsRawFd;

    /// A Xen domain whose grant devices are missing (this host is no domU) runs its
    /// server unshared and says which device and what to do.
    #[test]
    fn a_xen_domain_without_its_grant_devices_shares_nothing_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let p = |f: &str| dir.path().join(f).display().to_string();
        let common = [
            ("DBFORK_XEN_DOMID", "6".to_string()),
            ("DBFORK_PAGETABLE_SOCKET", p("pt.sock")),
        ];
        let replica = [
            ("DBFORK_AGENT_ROLE", "replica".to_string()),
            ("DBFORK_SNAPSHOT_LSN", "1000".to_string()),
            ("DBFORK_REPLICA_WRITES", p("writes")),
        ];
        let source = [
            ("DBFORK_AGENT_ROLE", "source".to_string()),
            ("DBFORK_POOL_PATH", p("pool")),
            ("DBFORK_POOL_MAX_BYTES", "1048576".to_string()),
            ("DBFORK_CLONE_LSN_FILE", p("clone_lsn")),
            ("DBFORK_XEN_GRANTEES_FILE", p("grantees")),
        ];
        for (role, device) in [
            (&replica[..], "/dev/xen/gntdev"),
            (&source[..], "/dev/dbfork_gnt"),
        ] {
            if std::path::Path::new(device).exists() {
                eprintln!("SKIP: {device} exists here (a Xen domain): the lab covers it");
                continue;
            }
            let env: std::collections::HashMap<&str, String> =
                common.iter().chain(role).cloned().collect();
            let config = Config::from_lookup(|k| env.get(k).cloned()).unwrap();
            let agent = Agent::new(config);
            assert!(!agent.sharing_on());
            assert!(!agent.needs_fault_handler());
            let why = agent.snapshot().sharing_off_reason.unwrap_or_default();
            assert!(why.contains(device), "{why}");
        }
    }

    #[test]
    fn unaligned_or_odd_sized_reads_pass_through_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let arena = Arena::new();
        std::fs::write(dir.path().join("clone_lsn"), "1000").unwrap();
        let file = dir.path().join("t.ibd");
        tablespace(&file, 2, 900);
        let src = agent(dir.path(), "source", 0);
        arena.show(&src);
        let f = open_tracked(&src, &file);
        let mut buf = vec![0u8; 3 * FRAME_SIZE];
        let fd = f.as_raw_fd();
        let p = buf.as_mut_ptr();
        // SAFETY: buf is a live Vec of 3 pages.
        let n = unsafe {
            src.on_pread(fd, p, 2 * FRAME_SIZE, 0, || {
                libc::pread(fd, p.cast(), 2 * FRAME_SIZE, 0) as isize
            })
        };
        assert_eq!(n, 2 * FRAME_SIZE as isize);
        assert_eq!(src.snapshot().pages_pooled, 0);
        assert_eq!(src.snapshot().reads_data, 1);
    }

    #[test]
    fn frames_outside_the_buffer_pool_are_never_remapped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("clone_lsn"), "1000").unwrap();
        let file = dir.path().join("t.ibd");
        let pages = tablespace(&file, 2, 900);
        let src = agent(dir.path(), "source", 0);
        let f = open_tracked(&src, &file);
        let arena = Arena::new(); // not shown to the agent: not a buffer pool
        let fr = arena.frame();
        assert_eq!(read(&src, &f, &fr, 1), FRAME_SIZE as isize);
        assert_eq!(fr.bytes(), &pages[1][..]);
        let s = src.snapshot();
        assert_eq!((s.pages_pooled, s.reads_outside_pool), (0, 1));
    }
}
