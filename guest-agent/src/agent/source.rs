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

/// What the source side remembers between reads.
#[derive(Default)]
pub(super) struct SourceState {
    /// Open 16 KiB tablespaces: which checksum layout a scanned frame must verify in.
    spaces: Mutex<HashMap<u32, SpaceFormat>>,
    /// Page key -> the newest version offered, to map an existing frame instead of
    /// offering the same page version again.
    offered: Mutex<HashMap<u64, Offered>>,
    /// The clone LSN the last scan ran for.
    pub(super) scanned_clone_lsn: Mutex<Option<u64>>,
}

impl SourceState {
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
            self.scan_buffer_pool(clone_lsn);
        }
    }

    /// Offers every clean resident frame (see `scan`); `valid_from` was read before.
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
}
