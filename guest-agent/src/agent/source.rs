//! The source side: every verified page the server reads into a buffer-pool frame is
//! offered to the family's frame store and the stored frame is mapped back over the
//! server's frame (so source and replicas share one copy), then registered with the
//! directory. When dbfork publishes a new clone LSN, the whole buffer pool is scanned
//! and offered too (`scan`), so a new replica finds the source's warm set.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use pagetable::Frame;
use parking_lot::Mutex;

use super::{error_chain, key, map_failure_reason, Agent, AlignedPage, DIR_WAIT};
use crate::directory::DirEntry;
use crate::error::AgentError;
use crate::fdtable::Ident;
use crate::frame_store::{FrameRecord, FRAME_SIZE};
use crate::page::{self, SpaceFormat};
use crate::scan::Visit;
use crate::stats::Stats;

/// A page version this source offered: reused instead of offered again.
#[derive(Debug, Clone, Copy)]
struct Offered {
    lsn: u64,
    valid_from: u64,
    frame: Frame,
}

/// A buffer-pool frame the source mapped from the frame store, and what it held then.
#[derive(Debug, Clone, Copy)]
struct Mapped {
    frame: Frame,
    space_id: u32,
    page_no: u32,
    lsn: u64,
}

/// What the source side remembers between reads.
#[derive(Default)]
pub(super) struct SourceState {
    /// Buffer-pool address -> the stored frame mapped there. Forgotten when the
    /// server reads into the address again, unmaps it or madvises it (an anonymous
    /// page it drops would read as the stored page again, see `pagemap`).
    mapped: Mutex<HashMap<usize, Mapped>>,
    /// Open 16 KiB tablespaces: which checksum layout a scanned frame must verify in.
    spaces: Mutex<HashMap<u32, SpaceFormat>>,
    /// Page key -> the newest version offered, to map an existing frame instead of
    /// offering the same page version again.
    offered: Mutex<HashMap<u64, Offered>>,
    /// The clone LSN the last scan ran for.
    pub(super) scanned_clone_lsn: Mutex<Option<u64>>,
    /// This process's page map, opened at the first offer.
    pagemap: Mutex<Option<crate::pagemap::Pagemap>>,
}

/// The calling thread at the lowest CPU priority (nice 19) until dropped.
struct LowPriority(Option<libc::c_int>);

impl LowPriority {
    fn enter() -> LowPriority {
        // SAFETY: gettid has no arguments and cannot fail.
        let tid = unsafe { libc::gettid() } as libc::id_t;
        // getpriority returns -1 both as a value and as an error: errno tells.
        // SAFETY: errno is thread-local; plain syscalls on this thread.
        let before = unsafe {
            *libc::__errno_location() = 0;
            let p = libc::getpriority(libc::PRIO_PROCESS, tid);
            (*libc::__errno_location() == 0).then_some(p)
        };
        // SAFETY: lowering this thread's own priority.
        let lowered = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 19) } == 0;
        LowPriority(before.filter(|_| lowered))
    }
}

impl Drop for LowPriority {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            // SAFETY: as in `enter`. Raising it back may be refused without
            // CAP_SYS_NICE (then the thread stays low: it only does background work).
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, p) };
        }
    }
}

impl SourceState {
    /// Whether the frame at `addr` is recorded as a mapping of `frame`.
    fn maps(&self, addr: usize, frame: Frame) -> bool {
        self.mapped
            .lock()
            .get(&addr)
            .is_some_and(|m| m.frame == frame)
    }

    /// Forgets the mapped frames in `[addr, addr + len)`.
    pub(super) fn forget_mapped(&self, addr: usize, len: usize) {
        let end = addr.saturating_add(len);
        let mut m = self.mapped.lock();
        if m.is_empty() {
            return;
        }
        // Frames are FRAME_SIZE-aligned in the buffer pool: a short range is looked up
        // frame by frame, a long one (a whole chunk going away) swept once.
        let first = addr - addr % FRAME_SIZE;
        if (end - first) / FRAME_SIZE <= 4096 {
            for a in (first..end).step_by(FRAME_SIZE) {
                m.remove(&a);
            }
        } else {
            m.retain(|&a, _| a + FRAME_SIZE <= addr || a >= end);
        }
    }

    pub(super) fn note_space(&self, space_id: u32, format: SpaceFormat) {
        self.spaces.lock().insert(space_id, format);
    }

    /// The stored frame of version `lsn` of page `k`, if offered, and its valid_from.
    fn offered_version(&self, k: u64, lsn: u64) -> Option<(Frame, u64)> {
        match self.offered.lock().get(&k) {
            Some(o) if o.lsn == lsn => Some((o.frame, o.valid_from)),
            _ => None,
        }
    }

    /// The frame already holding this page version, if its valid_from serves at least
    /// as much as `valid_from` would.
    fn reusable(&self, k: u64, lsn: u64, valid_from: u64) -> Option<Frame> {
        self.offered_version(k, lsn)
            .filter(|&(_, vf)| vf >= valid_from)
            .map(|(frame, _)| frame)
    }

    fn remember(&self, k: u64, lsn: u64, valid_from: u64, frame: Frame) {
        self.offered.lock().insert(
            k,
            Offered {
                lsn,
                valid_from,
                frame,
            },
        );
    }
}

/// Frames the scan copied and will move onto their stored copies, consecutive in the
/// server's memory.
#[derive(Default)]
struct PendingRun {
    start: usize,
    frames: Vec<Mapped>,
    /// The frames' bytes as copied, `FRAME_SIZE` each.
    copies: Vec<u8>,
}

impl PendingRun {
    /// The most frames moved at once (1 MiB: a scan chunk).
    const MAX: usize = 64;

    /// Adds the frame at `addr`; moves the run first if `addr` does not continue it or
    /// it is full. Returns how many frames that moved.
    ///
    /// # Safety
    /// As for `move_all`, and `addr` is a frame of the same kind.
    unsafe fn add(
        &mut self,
        agent: &Agent,
        store: &dyn crate::frame_store::FrameStore,
        addr: usize,
        m: Mapped,
        bytes: &[u8],
    ) -> u64 {
        let continues = addr == self.start + self.frames.len() * FRAME_SIZE;
        let moved = if self.frames.is_empty() || (continues && self.frames.len() < Self::MAX) {
            0
        } else {
            // SAFETY: the caller's contract.
            unsafe { self.move_all(agent, store) }
        };
        if self.frames.is_empty() {
            self.start = addr;
        }
        self.frames.push(m);
        self.copies.extend_from_slice(bytes);
        moved
    }

    /// Moves the frames added so far (see `Agent::move_run`) and starts a new run.
    ///
    /// # Safety
    /// The frames added are still mapped in a live buffer-pool region, and
    /// `crate::fault` is installed.
    unsafe fn move_all(
        &mut self,
        agent: &Agent,
        store: &dyn crate::frame_store::FrameStore,
    ) -> u64 {
        if self.frames.is_empty() {
            return 0;
        }
        // SAFETY: the caller's contract.
        let moved = unsafe { agent.move_run(store, self.start, &self.frames, &self.copies) };
        self.frames.clear();
        self.copies.clear();
        moved as u64
    }
}

impl Agent {
    /// Source: offer a verified page read to the frame store, map the stored frame
    /// over the server's frame, register it. `valid_from` is the clone LSN read before
    /// the read was issued.
    ///
    /// # Safety
    /// `buf` holds `FRAME_SIZE` bytes just read, in a buffer-pool frame the server
    /// does not touch until this returns (InnoDB io-fixes it for the read).
    pub(super) unsafe fn offer_read_frame(
        &self,
        id: Ident,
        buf: *mut u8,
        page_no: u32,
        valid_from: Option<u64>,
    ) {
        // SAFETY: caller guarantees buf holds FRAME_SIZE readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buf, FRAME_SIZE) };
        let h = match page::verify_identity(bytes, id.format, id.space_id, page_no) {
            Ok(h) => h,
            Err(_) => return self.count_verified(false),
        };
        self.count_verified(true);
        let Some(valid_from) = valid_from else {
            Stats::inc(&self.stats.register_errors);
            return;
        };
        let store = self
            .store
            .as_ref()
            .expect("sharing on implies a frame store");
        let k = key(id.space_id, page_no);
        // A re-read of a page version already offered (evicted, read again) maps the
        // existing frame: same bytes, and its valid_from serves at least as much.
        let reuse = self.source.reusable(k, h.lsn, valid_from).filter(|&frame| {
            let mut stored = AlignedPage::new();
            store.read(frame, stored.bytes()).is_ok() && stored.bytes() == bytes
        });
        let frame = match reuse {
            Some(frame) => frame,
            None => {
                let rec = FrameRecord {
                    space_id: id.space_id,
                    page_no,
                    lsn: h.lsn,
                    valid_from,
                };
                match store.offer(bytes, rec) {
                    Ok(frame) => frame,
                    Err(e @ AgentError::PoolFull { .. }) => {
                        // Sharing what is stored goes on; new reads stay private.
                        let before = self.stats.pool_full_drops.fetch_add(1, Ordering::Relaxed);
                        if before == 0 {
                            tracing::warn!("dbfork agent: {e}");
                        }
                        return;
                    }
                    Err(e) => {
                        Stats::inc(&self.stats.fallback_errors);
                        self.disable_sharing(&format!("pool append failed: {}", error_chain(&e)));
                        return;
                    }
                }
            }
        };
        // SAFETY: the frame is InnoDB's, io-fixed for this read until we return.
        if let Err(e) = unsafe { self.map_frame(store.as_ref(), frame, buf) } {
            Stats::inc(&self.stats.map_errors);
            // A failed mapping may leave the range unmapped: restore private memory
            // and the bytes (the stored frame holds exactly them).
            // SAFETY: as above.
            let restored = unsafe { self.unmap_frame(store.as_ref(), buf) }.and_then(|_| {
                // SAFETY: buf is mapped again, FRAME_SIZE writable bytes.
                let dst = unsafe { std::slice::from_raw_parts_mut(buf, FRAME_SIZE) };
                store.read(frame, dst)
            });
            if let Err(r) = restored {
                tracing::error!(
                    "dbfork agent: restoring a frame failed: {}",
                    error_chain(&r)
                );
            }
            self.disable_sharing(&map_failure_reason(&e));
            return;
        }
        self.source.mapped.lock().insert(
            buf as usize,
            Mapped {
                frame,
                space_id: id.space_id,
                page_no,
                lsn: h.lsn,
            },
        );
        if reuse.is_some() {
            Stats::inc(&self.stats.pages_remapped);
            return; // registered when it was offered
        }
        Stats::inc(&self.stats.pages_pooled);
        self.source.remember(k, h.lsn, valid_from, frame);
        let entry = DirEntry {
            frame,
            lsn: h.lsn,
            valid_from,
        };
        // Never queue behind another thread's slow daemon call: the background sync
        // registers from the frame store's offer log anyway.
        let Some(mut dir) = self.dir.try_lock_for(DIR_WAIT) else {
            Stats::inc(&self.stats.register_deferred);
            return;
        };
        match dir
            .as_mut()
            .map(|d| d.register(id.space_id, page_no, entry))
        {
            Some(Ok(())) => Stats::inc(&self.stats.pages_registered),
            Some(Err(e)) => {
                if self.stats.register_errors.load(Ordering::Relaxed) == 0 {
                    tracing::warn!("dbfork agent: registering failed: {}", error_chain(&e));
                }
                Stats::inc(&self.stats.register_errors);
            }
            None => {}
        }
    }

    /// A new clone LSN was published (a new snapshot): offer the whole warm set to
    /// its replicas, once per clone LSN.
    pub(super) fn scan_if_new_clone_lsn(&self) {
        let Some(clone_lsn) = self.clone_lsn() else {
            return;
        };
        let due = {
            let mut last = self.source.scanned_clone_lsn.lock();
            let due = last.is_none_or(|l| clone_lsn > l);
            if due {
                *last = Some(clone_lsn);
            }
            due
        };
        if due {
            self.offer_warm_set(clone_lsn);
        }
    }

    /// Offers the warm set for the snapshot at clone LSN `valid_from` (read before):
    /// first every frame still mapped from the frame store and unchanged since
    /// (revalidated: the page it held is its latest version now, after the snapshot;
    /// no bytes copied), then, in the same background pass, a copy of every other
    /// clean resident frame (see `scan`).
    pub fn offer_warm_set(&self, valid_from: u64) {
        let revalidated = self.revalidate_mapped(valid_from);
        Stats::add(&self.stats.frames_revalidated, revalidated);
        Stats::inc(&self.stats.offers);
        // dbfork waits for this before the replica starts; the copy may take long.
        self.write_stats();
        tracing::info!(
            valid_from,
            frames = revalidated,
            "dbfork agent: warm set revalidated"
        );
        // The copies are background work: the server's own threads come first (a
        // clone should cost the source little), the replica reads from disk meanwhile.
        let _lowered = LowPriority::enter();
        self.scan_buffer_pool(valid_from);
    }

    /// Moves the server's private frame at `addr` (whose bytes were `copy` a moment
    /// ago) onto `m.frame`, the stored copy of them (see `move_run`). False, and the
    /// frame as it was, if the bytes changed or the mapping failed.
    ///
    /// # Safety
    /// As for `move_run`.
    #[cfg(test)]
    unsafe fn move_onto(
        &self,
        store: &dyn crate::frame_store::FrameStore,
        addr: usize,
        m: Mapped,
        copy: &[u8],
    ) -> bool {
        // SAFETY: the caller's contract.
        unsafe { self.move_run(store, addr, &[m], copy) == 1 }
    }

    /// Moves the server's consecutive private frames from `start` (frame `i` held
    /// `copies[i * FRAME_SIZE..]` a moment ago) onto `run[i].frame`, the stored copies
    /// of them: read-only first (a writer waits in the fault handler), the bytes
    /// compared, then the stored frames mapped over the ones that did not change, as
    /// few mappings as the store allows. Returns how many moved; the others are left
    /// as they were, writable, with their bytes.
    ///
    /// # Safety
    /// `[start, start + run.len() * FRAME_SIZE)` are frames of a live buffer-pool
    /// region that stays mapped meanwhile, and `crate::fault` is installed.
    unsafe fn move_run(
        &self,
        store: &dyn crate::frame_store::FrameStore,
        start: usize,
        run: &[Mapped],
        copies: &[u8],
    ) -> usize {
        let n = run.len();
        let at = |i: usize| start + i * FRAME_SIZE;
        let copy = |i: usize| &copies[i * FRAME_SIZE..(i + 1) * FRAME_SIZE];
        // A read into one of the frames in flight (evicted and being reused: no longer
        // the page copied): the others move one by one.
        let Some(moving) = crate::fault::Moving::try_begin(start, n) else {
            return if n > 1 {
                (0..n)
                    // SAFETY: the caller's contract, frame by frame.
                    .map(|i| unsafe { self.move_run(store, at(i), &run[i..=i], copy(i)) })
                    .sum()
            } else {
                0
            };
        };
        // SAFETY: the caller's frames stay mapped and readable whatever their protection;
        // once read-only (below), nobody can change them.
        let live = |i: usize| unsafe { std::slice::from_raw_parts(at(i) as *const u8, FRAME_SIZE) };
        // Frame `i` back to the server as it is now: writable, with its current bytes.
        // SAFETY: the caller's frame, still mapped; no writer runs while it is read-only.
        let give_back =
            |i: usize| unsafe { self.restore_writable(store, at(i), live(i).to_vec().as_slice()) };
        let p = start as *mut libc::c_void;
        // SAFETY: the caller's frames; writes now fault and wait for `moving` to end.
        if unsafe { libc::mprotect(p, n * FRAME_SIZE, libc::PROT_READ) } != 0 {
            // Part of the range may be read-only already (one mapping after another).
            (0..n).for_each(give_back);
            return 0;
        }
        let mut moved = 0;
        let mut i = 0;
        while i < n {
            if live(i) != copy(i) {
                give_back(i);
                i += 1;
                continue;
            }
            let j = (i + 1..n).find(|&j| live(j) != copy(j)).unwrap_or(n);
            let frames: Vec<Frame> = run[i..j].iter().map(|m| m.frame).collect();
            // SAFETY: frames i..j are held still and the stored frames hold their bytes.
            match unsafe { self.map_run(store, &frames, at(i) as *mut u8) } {
                Ok(()) => {
                    let mut mapped = self.source.mapped.lock();
                    for (k, m) in run.iter().enumerate().take(j).skip(i) {
                        mapped.insert(at(k), *m);
                    }
                    moved += j - i;
                    i = j;
                }
                Err(e) => {
                    for k in i..j {
                        // SAFETY: as above; frame k held copy(k) when the mapping was
                        // tried.
                        unsafe { self.restore_writable(store, at(k), copy(k)) };
                    }
                    (j..n).for_each(give_back);
                    Stats::inc(&self.stats.map_errors);
                    self.disable_sharing(&map_failure_reason(&e));
                    break;
                }
            }
        }
        drop(moving);
        moved
    }

    /// Gives the frame at `addr`, read-only or unmapped by a failed move, back to the
    /// server as writable memory holding `bytes`, before the move's writers are
    /// released (they would fault again on a frame left read-only, and the server's
    /// handler would take them for a crash). Tries its protection first (the old
    /// mapping intact), then fresh private memory with the bytes; retries both, since
    /// either can fail for a moment (ENOMEM while the map count is high).
    ///
    /// # Safety
    /// `[addr, addr + FRAME_SIZE)` is a buffer-pool frame this move holds (no writer
    /// runs), whose bytes were `bytes` when it was made read-only.
    unsafe fn restore_writable(
        &self,
        store: &dyn crate::frame_store::FrameStore,
        addr: usize,
        bytes: &[u8],
    ) {
        let p = addr as *mut libc::c_void;
        for attempt in 0..1000 {
            // SAFETY: the caller's frame; a mapping still in place keeps its bytes.
            if unsafe { libc::mprotect(p, FRAME_SIZE, libc::PROT_READ | libc::PROT_WRITE) } == 0 {
                return;
            }
            // The range is not (all) mapped: private memory with the bytes again.
            // SAFETY: as above.
            match unsafe { self.unmap_frame(store, addr as *mut u8) } {
                Ok(()) => {
                    // SAFETY: mapped again, FRAME_SIZE writable bytes.
                    unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, FRAME_SIZE) }
                        .copy_from_slice(bytes);
                    return;
                }
                Err(e) if attempt == 0 => tracing::error!(
                    "dbfork agent: restoring a frame failed, retrying: {}",
                    error_chain(&e)
                ),
                Err(_) => std::thread::yield_now(),
            }
        }
        tracing::error!("dbfork agent: a frame could not be restored after a failed move");
    }

    /// Declares the stored `frame` (holding the page of `h`) valid from `valid_from`;
    /// false if the directory keeps no such declarations or refused it.
    fn revalidate_one(&self, h: page::PageHeader, frame: Frame, valid_from: u64) -> bool {
        let e = DirEntry {
            frame,
            lsn: h.lsn,
            valid_from,
        };
        let ok = match self
            .dir
            .lock()
            .as_mut()
            .map(|d| d.revalidate(&[(h.space_id, h.page_no, e)]))
        {
            Some(Ok(true)) => true,
            Some(Ok(false)) | None => false,
            Some(Err(e)) => {
                tracing::warn!("dbfork agent: revalidating failed: {}", error_chain(&e));
                false
            }
        };
        if ok {
            self.source
                .remember(key(h.space_id, h.page_no), h.lsn, valid_from, frame);
            Stats::inc(&self.stats.frames_revalidated);
        }
        ok
    }

    /// Whether the frame at `addr` was not written since it was mapped (false if the
    /// page map cannot tell).
    fn untouched(&self, addr: usize) -> bool {
        self.pagemap()
            .is_ok_and(|p| p.untouched(addr, FRAME_SIZE).unwrap_or(false))
    }

    /// This process's page map, opened at the first use.
    fn pagemap(
        &self,
    ) -> std::io::Result<parking_lot::MappedMutexGuard<'_, crate::pagemap::Pagemap>> {
        let mut pm = self.source.pagemap.lock();
        if pm.is_none() {
            *pm = Some(crate::pagemap::Pagemap::open()?);
        }
        Ok(parking_lot::MutexGuard::map(pm, |p| {
            p.as_mut().expect("opened above")
        }))
    }

    /// Revalidates the mapped frames that are still the stored pages: registers them
    /// with `valid_from`. Returns how many.
    fn revalidate_mapped(&self, valid_from: u64) -> u64 {
        let pm = match self.pagemap() {
            Ok(pm) => pm,
            Err(e) => {
                tracing::warn!("dbfork agent: no pagemap, the warm set is copied: {e}");
                return 0;
            }
        };
        // Checked under the map's lock: a madvise forgets a frame before it runs, so a
        // frame found here was not dropped back to the stored bytes after a write.
        let fresh: Vec<(u32, u32, DirEntry)> = self
            .source
            .mapped
            .lock()
            .iter()
            .filter(|(&addr, _)| pm.untouched(addr, FRAME_SIZE).unwrap_or(false))
            .map(|(_, m)| {
                let e = DirEntry {
                    frame: m.frame,
                    lsn: m.lsn,
                    valid_from,
                };
                (m.space_id, m.page_no, e)
            })
            .collect();
        if fresh.is_empty() {
            return 0;
        }
        let accepted = match self.dir.lock().as_mut().map(|d| d.revalidate(&fresh)) {
            Some(Ok(true)) => true,
            Some(Ok(false)) | None => false,
            Some(Err(e)) => {
                tracing::warn!("dbfork agent: revalidating failed: {}", error_chain(&e));
                false
            }
        };
        if !accepted {
            return 0;
        }
        for (space, page, e) in &fresh {
            self.source
                .remember(key(*space, *page), e.lsn, valid_from, e.frame);
        }
        fresh.len() as u64
    }

    pub fn scan_buffer_pool(&self, valid_from: u64) {
        let Some(store) = self.store.clone() else {
            return;
        };
        Stats::inc(&self.stats.scans);
        let spaces = self.source.spaces.lock().clone();
        let mut found = 0u64;
        let can_move = self.moves_frames();
        let mut stored = crate::frame_store::AlignedPage::new();
        // Frames to move, consecutive in memory: moved together at a gap or a chunk's
        // end (the chunk stays mapped until then).
        let mut run = PendingRun::default();
        let mut moved = 0u64;
        self.regions.visit_frames(|visit| {
            let (addr, bytes) = match visit {
                Visit::Frame { addr, bytes } => (addr, bytes),
                Visit::ChunkEnd => {
                    // SAFETY: the chunk's frames are still mapped (see `visit_frames`)
                    // and the handler is installed (`can_move`).
                    moved += unsafe { run.move_all(self, store.as_ref()) };
                    return;
                }
            };
            let Ok(h) = page::header(bytes) else { return };
            let Some(&format) = spaces.get(&h.space_id) else {
                return;
            };
            if page::verify_identity(bytes, format, h.space_id, h.page_no).is_err() {
                return;
            }
            let k = key(h.space_id, h.page_no);
            let mapped = |frame| Mapped {
                frame,
                space_id: h.space_id,
                page_no: h.page_no,
                lsn: h.lsn,
            };
            // This version stored already (by a read, an earlier scan, pass 1): if the
            // frame holds those very bytes, that copy serves, declared valid from now
            // (same argument as for a fresh copy: the frame holds the page's latest
            // version), and the frame is moved onto it. No new copy in the store.
            if let Some((existing, vf)) = self.source.offered_version(k, h.lsn) {
                if vf >= valid_from && self.source.maps(addr, existing) && self.untouched(addr) {
                    return; // still that copy, revalidated by pass 1
                }
                let same = store.read(existing, stored.bytes()).is_ok() && stored.bytes() == bytes;
                if same && self.source.maps(addr, existing) && self.untouched(addr) {
                    // Already a mapping of that copy: nothing to move. Declared valid
                    // from now if the directory keeps such declarations; otherwise
                    // offered again below, under the new clone LSN.
                    if vf >= valid_from || self.revalidate_one(h, existing, valid_from) {
                        return;
                    }
                } else if same && (vf >= valid_from || self.revalidate_one(h, existing, valid_from))
                {
                    if can_move {
                        // SAFETY: as below.
                        moved +=
                            unsafe { run.add(self, store.as_ref(), addr, mapped(existing), bytes) };
                    }
                    return;
                }
                if vf >= valid_from {
                    return; // served as it is; this frame is another version's bytes
                }
            }
            let rec = FrameRecord {
                space_id: h.space_id,
                page_no: h.page_no,
                lsn: h.lsn,
                valid_from,
            };
            let frame = match store.offer(bytes, rec) {
                Ok(frame) => frame,
                Err(AgentError::PoolFull { .. }) => {
                    Stats::inc(&self.stats.pool_full_drops);
                    return;
                }
                Err(e) => {
                    Stats::inc(&self.stats.fallback_errors);
                    tracing::warn!("dbfork agent: scan: {}", error_chain(&e));
                    return;
                }
            };
            self.source.remember(k, h.lsn, valid_from, frame);
            found += 1;
            let entry = DirEntry {
                frame,
                lsn: h.lsn,
                valid_from,
            };
            if let Some(d) = self.dir.lock().as_mut() {
                match d.register(h.space_id, h.page_no, entry) {
                    Ok(()) => Stats::inc(&self.stats.pages_registered),
                    Err(_) => Stats::inc(&self.stats.register_errors),
                }
            }
            // One copy in memory: the source's own frame becomes a mapping of the one
            // just stored, if it did not change since it was copied.
            if can_move {
                // SAFETY: the scan holds the region's lock (no munmap meanwhile) and the
                // SIGSEGV handler that holds writers is installed.
                moved += unsafe { run.add(self, store.as_ref(), addr, mapped(frame), bytes) };
            }
        });
        Stats::add(&self.stats.frames_moved, moved);
        Stats::add(&self.stats.scan_frames_pooled, found);
        tracing::info!(
            valid_from,
            frames = found,
            "dbfork agent: buffer-pool scan done"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::Mapped;
    use crate::directory::MemoryDirectory;

    /// The clone-time scan reads only the buffer pool's own chunks: a page image in a
    /// large anonymous mapping no page was ever read into (a log buffer, a heap arena
    /// holding a stale copy) is never offered, whatever its checksum says; once the
    /// server reads a page into a mapping, that mapping is scanned.
    #[test]
    fn the_scan_reads_only_mappings_the_server_read_pages_into() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("clone_lsn"), "1000").unwrap();
        let file = dir.path().join("t.ibd");
        let pages = tablespace(&file, 3, 900);
        let src = agent(dir.path(), "source", 0);
        let (pool, other) = (Arena::new(), Arena::new());
        pool.show_unread(&src);
        other.show_unread(&src);
        let f = open_tracked(&src, &file);
        // A stale, checksum-valid image of page 2 in the other mapping.
        other.frame().bytes().copy_from_slice(&pages[2]);
        // The server reads page 1 into the pool: the pool is known from now on.
        read(&src, &f, &pool.frame(), 1);
        std::fs::write(dir.path().join("clone_lsn"), "2000").unwrap();
        src.scan_if_new_clone_lsn();
        let s = src.snapshot();
        assert_eq!(s.scans, 1);
        assert_eq!(
            s.scan_frames_pooled + s.frames_revalidated,
            1,
            "only the pool's page 1, never the stale page 2: {s:?}"
        );
        assert_eq!(src.regions.pool_count(), 1);
    }

    #[test]
    fn a_re_read_page_version_maps_its_existing_slot() {
        let dir = tempfile::tempdir().unwrap();
        let arena = Arena::new();
        std::fs::write(dir.path().join("clone_lsn"), "1000").unwrap();
        let file = dir.path().join("t.ibd");
        let pages = tablespace(&file, 2, 900);
        let src = agent(dir.path(), "source", 0);
        arena.show(&src);
        let f = open_tracked(&src, &file);
        let (a, b) = (arena.frame(), arena.frame());
        read(&src, &f, &a, 1);
        read(&src, &f, &b, 1); // evicted and read again into another frame
        assert_eq!(b.bytes(), &pages[1][..]);
        let s = src.snapshot();
        assert_eq!((s.pages_pooled, s.pages_remapped), (1, 1));
        // A new snapshot: the same version needs a slot with the newer valid_from.
        std::fs::write(dir.path().join("clone_lsn"), "2000").unwrap();
        read(&src, &f, &a, 1);
        assert_eq!(src.snapshot().pages_pooled, 2);
    }

    /// At a new snapshot the frames still mapped from the store and never written are
    /// offered again without a copy (valid from the new clone LSN); a frame the server
    /// wrote is not: it holds (or may hold) another version than its stored frame, and
    /// gets a copy of its own bytes if they are a clean page, or the stored frame is
    /// declared valid again if they are its very bytes. A frame the server madvised
    /// away becomes zeros, as anonymous memory would, not the stored page again.
    #[test]
    fn unchanged_mapped_frames_are_revalidated_and_the_rest_copied() {
        let dir = tempfile::tempdir().unwrap();
        let arena = Arena::new();
        std::fs::write(dir.path().join("clone_lsn"), "1000").unwrap();
        let file = dir.path().join("t.ibd");
        let pages = tablespace(&file, 6, 900);
        let src = agent(dir.path(), "source", 0);
        *src.dir.lock() = Some(Box::new(MemoryDirectory::default()));
        arena.show(&src);
        let f = open_tracked(&src, &file);
        let frames: Vec<Frame> = (0..5).map(|_| arena.frame()).collect();
        for (n, fr) in frames.iter().enumerate() {
            read(&src, &f, fr, n as u32 + 1);
        }
        assert_eq!(src.snapshot().pages_pooled, 5);
        // Page 2: the server changes it (a new version, clean again after a flush).
        let newer = crate::page::testpage::full_crc32_page(SPACE, 2, 1500);
        frames[1].bytes().copy_from_slice(&newer);
        // Page 3: dropped by the server (as a buffer pool shrink would).
        let fs = crate::frame_store::FRAME_SIZE;
        let p3 = frames[2].0;
        // SAFETY: the arena's frame; DONTNEED as the server would call it.
        let r = src.dropping(p3 as usize, fs, || unsafe {
            libc::madvise(p3.cast(), fs, libc::MADV_DONTNEED)
        });
        assert_eq!(r, 0);
        assert!(frames[2].bytes().iter().all(|&b| b == 0), "dropped: zeros");
        // Page 5: written, with its own bytes again (a private copy of the same page).
        frames[4].bytes()[100] ^= 1;
        frames[4].bytes()[100] ^= 1;

        std::fs::write(dir.path().join("clone_lsn"), "2000").unwrap();
        src.scan_if_new_clone_lsn();
        let s = src.snapshot();
        assert_eq!(s.offers, 1);
        assert_eq!(s.frames_revalidated, 3, "pages 1, 4, then 5: {s:?}");
        assert_eq!(s.scan_frames_pooled, 1, "page 2 copied: {s:?}");
        let mut dir_guard = src.dir.lock();
        let d = dir_guard.as_mut().unwrap();
        for page in [1, 4, 5] {
            let e = d.lookup(SPACE, page, 2000).unwrap().unwrap();
            assert_eq!((e.lsn, e.valid_from), (900, 2000), "page {page}");
        }
        // Page 5's first stored frame (slot 4 of pages 1..5) serves again.
        let e5 = d.lookup(SPACE, 5, 2000).unwrap().unwrap();
        assert_eq!(
            e5.frame,
            pagetable::Frame::LocalPool {
                offset: 4 * fs as u64
            }
        );
        // Page 2's new version was copied under the new clone LSN; its old stored frame
        // is not valid for the new snapshot.
        let e2 = d.lookup(SPACE, 2, 2000).unwrap().unwrap();
        assert_eq!((e2.lsn, e2.valid_from), (1500, 2000));
        // Page 3 is not offered for the new snapshot (only its old, earlier entry).
        let e3 = d.lookup(SPACE, 3, 2000).unwrap().unwrap();
        assert_eq!(e3.valid_from, 1000);
        drop(dir_guard);
        assert_eq!(&frames[0].bytes()[..], &pages[1][..]);
    }

    /// At a new snapshot the scan copies a clean private frame into the store and then
    /// maps the stored copy over it (one copy in memory); a frame the server changes
    /// meanwhile is not moved, and a write racing the move is never lost: it lands
    /// before the copy (no move), is held by the fault handler and retried on the new
    /// mapping, or lands after it.
    /// A move that fails after making the frame read-only (compare failed) or after
    /// the old mapping went (a failed MAP_FIXED) gives the server back a writable
    /// frame with its bytes, before its held writers go on: left read-only, their
    /// retries would reach the server's handler as a crash.
    #[test]
    fn a_failed_move_gives_the_frame_back_writable_with_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let arena = Arena::new();
        std::fs::write(dir.path().join("clone_lsn"), "1000").unwrap();
        let pages = tablespace(&dir.path().join("t.ibd"), 3, 900);
        let src = agent(dir.path(), "source", 0);
        let store = src.store.clone().unwrap();
        let fs = crate::frame_store::FRAME_SIZE;

        // Read-only, mapping intact.
        let d = arena.frame();
        d.bytes().copy_from_slice(&pages[2]);
        // SAFETY: d is a frame of the arena, live for the test.
        assert_eq!(
            unsafe { libc::mprotect(d.0.cast(), fs, libc::PROT_READ) },
            0
        );
        // SAFETY: as above; nothing writes d meanwhile.
        unsafe { src.restore_writable(store.as_ref(), d.0 as usize, &pages[2]) };
        d.bytes()[100] ^= 1; // would fault if still read-only
        d.bytes()[100] ^= 1;
        assert_eq!(&d.bytes()[..], &pages[2][..]);

        // The mapping gone.
        let e = arena.frame();
        e.bytes().copy_from_slice(&pages[1]);
        // SAFETY: as above; the arena unmaps its whole range at the end either way.
        assert_eq!(unsafe { libc::munmap(e.0.cast(), fs) }, 0);
        // SAFETY: as above.
        unsafe { src.restore_writable(store.as_ref(), e.0 as usize, &pages[1]) };
        assert_eq!(&e.bytes()[..], &pages[1][..]);
        e.bytes()[200] = 7;
        assert_eq!(e.bytes()[200], 7);
    }

    /// Consecutive frames move in one mapping of consecutive slots; a frame changed
    /// since its copy stays the server's own, writable, with its new bytes, and splits
    /// the run around it.
    #[test]
    fn a_run_moves_in_one_mapping_and_a_frame_changed_since_its_copy_stays() {
        crate::fault::install_for_tests();
        let dir = tempfile::tempdir().unwrap();
        let arena = Arena::new();
        std::fs::write(dir.path().join("clone_lsn"), "1000").unwrap();
        let pages = tablespace(&dir.path().join("t.ibd"), 9, 900);
        let src = agent(dir.path(), "source", 0);
        src.enable_frame_moves();
        let store = src.store.clone().unwrap();
        let pm = crate::pagemap::Pagemap::open().unwrap();
        let fs = crate::frame_store::FRAME_SIZE;
        let frs: Vec<Frame> = (0..8).map(|_| arena.frame()).collect();
        let mut run = Vec::new();
        let mut copies = Vec::new();
        for (i, fr) in frs.iter().enumerate() {
            let page = i as u32 + 1;
            fr.bytes().copy_from_slice(&pages[page as usize]);
            copies.extend_from_slice(fr.bytes());
            let rec = crate::frame_store::FrameRecord {
                space_id: SPACE,
                page_no: page,
                lsn: 900,
                valid_from: 1000,
            };
            run.push(Mapped {
                frame: store.offer(fr.bytes(), rec).unwrap(),
                space_id: SPACE,
                page_no: page,
                lsn: 900,
            });
        }
        frs[3].bytes()[77] ^= 1; // changed after its copy
        let start = frs[0].0 as usize;
        // SAFETY: consecutive live frames of the arena.
        let moved = unsafe { src.move_run(store.as_ref(), start, &run, &copies) };
        assert_eq!(moved, 7);
        for (i, fr) in frs.iter().enumerate() {
            let mut want = pages[i + 1].clone();
            if i == 3 {
                want[77] ^= 1;
            }
            assert!(fr.bytes() == &want[..], "frame {i}");
            assert_eq!(
                pm.untouched(fr.0 as usize, fs).unwrap(),
                i != 3,
                "frame {i}"
            );
        }
        frs[3].bytes()[78] = 1; // still writable
                                // Three mappings: frames 0-2 and 4-7 each one range of the pool, 3 anonymous.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let end = start + 8 * fs;
        let ranges: Vec<&str> = maps
            .lines()
            .filter(|l| {
                let (a, b) = l.split_once(' ').unwrap().0.split_once('-').unwrap();
                let (a, b) = (
                    usize::from_str_radix(a, 16).unwrap(),
                    usize::from_str_radix(b, 16).unwrap(),
                );
                a < end && b > start
            })
            .collect();
        assert_eq!(ranges.len(), 3, "{ranges:#?}");
        // The moved frames are the stored copies now: a write changes the server's only.
        frs[5].bytes()[100] ^= 0xff;
        let mut stored = vec![0u8; fs];
        store.read(run[5].frame, &mut stored).unwrap();
        assert_eq!(&stored[..], &pages[6][..]);
    }

    #[test]
    fn clean_private_frames_move_onto_their_stored_copy_and_racing_writes_survive() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        crate::fault::install_for_tests();
        let dir = tempfile::tempdir().unwrap();
        let arena = Arena::new();
        std::fs::write(dir.path().join("clone_lsn"), "1000").unwrap();
        let file = dir.path().join("t.ibd");
        let pages = tablespace(&file, 3, 900);
        let src = agent(dir.path(), "source", 0);
        *src.dir.lock() = Some(Box::new(MemoryDirectory::default()));
        src.enable_frame_moves();
        assert!(src.moves_frames());
        arena.show(&src);
        let _f = open_tracked(&src, &file);
        let pm = crate::pagemap::Pagemap::open().unwrap();
        let fs = crate::frame_store::FRAME_SIZE;

        // The scan: pages 1 and 2 built in the pool by the server (private memory).
        let (a, b) = (arena.frame(), arena.frame());
        a.bytes().copy_from_slice(&pages[1]);
        b.bytes().copy_from_slice(&pages[2]);
        assert!(!pm.untouched(a.0 as usize, fs).unwrap());
        std::fs::write(dir.path().join("clone_lsn"), "2000").unwrap();
        src.scan_if_new_clone_lsn();
        assert_eq!(src.snapshot().frames_moved, 2);
        for (fr, page) in [(&a, 1), (&b, 2)] {
            assert!(
                pm.untouched(fr.0 as usize, fs).unwrap(),
                "page {page} moved"
            );
            assert_eq!(&fr.bytes()[..], &pages[page][..]);
        }
        // A write after the move changes the server's copy only.
        a.bytes()[5000] ^= 0xff;
        assert!(!pm.untouched(a.0 as usize, fs).unwrap());
        let mut stored = vec![0u8; fs];
        let store = src.store.clone().unwrap();
        let e = src
            .dir
            .lock()
            .as_mut()
            .unwrap()
            .lookup(SPACE, 1, 2000)
            .unwrap()
            .unwrap();
        store.read(e.frame, &mut stored).unwrap();
        assert_eq!(&stored[..], &pages[1][..]);

        // A frame whose bytes differ from the copy given is left as it is.
        let c = arena.frame();
        c.bytes().copy_from_slice(&pages[1]);
        let mut other = pages[1].clone();
        other[6000] ^= 1;
        let m = Mapped {
            frame: e.frame,
            space_id: SPACE,
            page_no: 1,
            lsn: 900,
        };
        // SAFETY: c is a frame of the arena, live for the test.
        assert!(!unsafe { src.move_onto(store.as_ref(), c.0 as usize, m, &other) });
        c.bytes()[7000] = 7; // still writable
        assert!(!pm.untouched(c.0 as usize, fs).unwrap());

        // Racing writes: a writer changes a byte of one frame of a run being moved, at a
        // random moment around the move; the byte must hold the written value
        // afterwards, and no other byte of the run may change.
        let run: Vec<Mapped> = (0..4u32)
            .map(|i| {
                let page = 1 + i % 2;
                let rec = crate::frame_store::FrameRecord {
                    space_id: SPACE,
                    page_no: page,
                    lsn: 900,
                    valid_from: 2000,
                };
                Mapped {
                    frame: store.offer(&pages[page as usize], rec).unwrap(),
                    space_id: SPACE,
                    page_no: page,
                    lsn: 900,
                }
            })
            .collect();
        let target = AtomicUsize::new(0);
        let done = AtomicBool::new(false);
        let written = AtomicUsize::new(0);
        let rounds = 200;
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut rng = 0x9e3779b97f4a7c15u64;
                for _ in 0..rounds {
                    // Bounded: if the mover panics, the scope waits for this thread.
                    let since = std::time::Instant::now();
                    let at = loop {
                        let at = target.swap(0, Ordering::AcqRel);
                        if at != 0 {
                            break at;
                        }
                        if since.elapsed() > std::time::Duration::from_secs(20) {
                            return;
                        }
                        std::hint::spin_loop();
                    };
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    for _ in 0..(rng % 4_000) {
                        std::hint::spin_loop();
                    }
                    // SAFETY: a live frame of the arena; a volatile write as the server's.
                    unsafe { std::ptr::write_volatile(at as *mut u8, 0x5a) };
                    written.fetch_add(1, Ordering::AcqRel);
                }
                done.store(true, Ordering::Release);
            });
            let mut moved = 0;
            let mut rng = 0x2545f4914f6cdd1du64;
            // The same four frames every round: written again (private copies), then
            // moved again.
            let frs: Vec<Frame> = (0..4).map(|_| arena.frame()).collect();
            for round in 0..rounds {
                let mut copies = Vec::new();
                for (i, fr) in frs.iter().enumerate() {
                    fr.bytes().copy_from_slice(&pages[1 + i % 2]);
                    copies.extend_from_slice(fr.bytes());
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let (victim, offset) = ((rng % 4) as usize, 16 + (rng >> 8) as usize % (fs - 16));
                target.store(frs[victim].0 as usize + offset, Ordering::Release);
                // SAFETY: frs are consecutive live frames of the arena.
                moved += unsafe { src.move_run(store.as_ref(), frs[0].0 as usize, &run, &copies) };
                while written.load(Ordering::Acquire) <= round {
                    std::hint::spin_loop();
                }
                for (i, fr) in frs.iter().enumerate() {
                    let mut want = pages[1 + i % 2].clone();
                    if i == victim {
                        want[offset] = 0x5a;
                    }
                    assert!(
                        fr.bytes() == &want[..],
                        "round {round}, frame {i}: a write was lost or a byte changed"
                    );
                }
            }
            assert!(moved > 0, "no frame moved in {rounds} runs");
            eprintln!(
                "{moved} of {} frames moved, {} writes held by the fault handler",
                4 * rounds,
                crate::fault::held_writes()
            );
        });
        assert!(done.load(Ordering::Acquire));
    }
}
