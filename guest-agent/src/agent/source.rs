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

impl SourceState {
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

    /// The frame already holding this page version, if its valid_from serves at least
    /// as much as `valid_from` would.
    fn reusable(&self, k: u64, lsn: u64, valid_from: u64) -> Option<Frame> {
        match self.offered.lock().get(&k) {
            Some(o) if o.lsn == lsn && o.valid_from >= valid_from => Some(o.frame),
            _ => None,
        }
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
        if let Err(e) = unsafe { store.map_over(frame, buf) } {
            Stats::inc(&self.stats.map_errors);
            // A failed mapping may leave the range unmapped: restore private memory
            // and the bytes (the stored frame holds exactly them).
            // SAFETY: as above.
            let restored = unsafe { store.restore_private(buf) }.and_then(|_| {
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
        self.scan_buffer_pool(valid_from);
    }

    /// Revalidates the mapped frames that are still the stored pages: registers them
    /// with `valid_from`. Returns how many.
    fn revalidate_mapped(&self, valid_from: u64) -> u64 {
        let mut pm = self.source.pagemap.lock();
        if pm.is_none() {
            match crate::pagemap::Pagemap::open() {
                Ok(p) => *pm = Some(p),
                Err(e) => {
                    tracing::warn!("dbfork agent: no pagemap, the warm set is copied: {e}");
                    return 0;
                }
            }
        }
        let pm = pm.as_ref().expect("opened above");
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
        self.regions.for_each_frame(|_, bytes| {
            let Ok(h) = page::header(bytes) else { return };
            let Some(&format) = spaces.get(&h.space_id) else {
                return;
            };
            if page::verify_identity(bytes, format, h.space_id, h.page_no).is_err() {
                return;
            }
            let k = key(h.space_id, h.page_no);
            if self.source.reusable(k, h.lsn, valid_from).is_some() {
                return;
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
        });
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
    use crate::directory::MemoryDirectory;

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
    /// wrote, or madvised, is not: it holds (or may hold) another version than its
    /// stored frame, and gets a copy of its own bytes if they are a clean page.
    #[test]
    fn unchanged_mapped_frames_are_revalidated_and_the_rest_copied() {
        let dir = tempfile::tempdir().unwrap();
        let arena = Arena::new();
        std::fs::write(dir.path().join("clone_lsn"), "1000").unwrap();
        let file = dir.path().join("t.ibd");
        let pages = tablespace(&file, 5, 900);
        let src = agent(dir.path(), "source", 0);
        *src.dir.lock() = Some(Box::new(MemoryDirectory::default()));
        arena.show(&src);
        let f = open_tracked(&src, &file);
        let frames: Vec<Frame> = (0..4).map(|_| arena.frame()).collect();
        for (n, fr) in frames.iter().enumerate() {
            read(&src, &f, fr, n as u32 + 1);
        }
        assert_eq!(src.snapshot().pages_pooled, 4);
        // Page 2: the server changes it (a new version, clean again after a flush).
        let newer = crate::page::testpage::full_crc32_page(SPACE, 2, 1500);
        frames[1].bytes().copy_from_slice(&newer);
        // Page 3: dropped by the server (as a buffer pool shrink would).
        src.on_unmap_or_drop(frames[2].0 as usize, crate::frame_store::FRAME_SIZE);

        std::fs::write(dir.path().join("clone_lsn"), "2000").unwrap();
        src.scan_if_new_clone_lsn();
        let s = src.snapshot();
        assert_eq!(s.offers, 1);
        assert_eq!(s.frames_revalidated, 2, "pages 1 and 4: {s:?}");
        let mut dir_guard = src.dir.lock();
        let d = dir_guard.as_mut().unwrap();
        for page in [1, 4] {
            let e = d.lookup(SPACE, page, 2000).unwrap().unwrap();
            assert_eq!((e.lsn, e.valid_from), (900, 2000), "page {page}");
        }
        // Page 2's new version was copied under the new clone LSN; its old stored frame
        // is not valid for the new snapshot.
        let e2 = d.lookup(SPACE, 2, 2000).unwrap().unwrap();
        assert_eq!((e2.lsn, e2.valid_from), (1500, 2000));
        // Page 3's frame was copied too (its bytes are still the clean page here), not
        // revalidated: a new stored frame, not its first one (slot 2 of pages 1..4).
        let e3 = d.lookup(SPACE, 3, 2000).unwrap().unwrap();
        assert_eq!(e3.valid_from, 2000);
        let first_slot_of_page_3 = pagetable::Frame::LocalPool {
            offset: 2 * crate::frame_store::FRAME_SIZE as u64,
        };
        assert_ne!(e3.frame, first_slot_of_page_3);
        drop(dir_guard);
        assert_eq!(s.scan_frames_pooled, 2, "pages 2 and 3 copied: {s:?}");
        assert_eq!(&frames[0].bytes()[..], &pages[1][..]);
    }
}
