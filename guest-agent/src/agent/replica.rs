//! The replica side: before a page read from disk, look the page up in the directory,
//! check the share rule (`share`), map the stored frame over the buffer-pool frame and
//! verify the mapped bytes; on any doubt undo the mapping and decline, so the real
//! read happens (DESIGN.md invariants 1 and 6).

use super::{error_chain, key, map_failure_reason, Agent, DIR_WAIT};
use crate::fdtable::Ident;
use crate::frame_store::FRAME_SIZE;
use crate::page;
use crate::share::{may_share, Decline};
use crate::stats::Stats;

impl Agent {
    /// Replica: serve the read from the frame store if the share rule allows; None =
    /// do the real read (the frame is then plain private memory again).
    ///
    /// # Safety
    /// `buf` is the server's buffer-pool frame for this read: page-aligned,
    /// `FRAME_SIZE` bytes, untouched by the server until this returns.
    pub(super) unsafe fn try_share(&self, id: Ident, buf: *mut u8, page_no: u32) -> Option<isize> {
        let s = self.config.snapshot_lsn?;
        if self.written.lock().contains(&key(id.space_id, page_no)) {
            Stats::inc(&self.stats.declined_written);
            return None;
        }
        Stats::inc(&self.stats.lookups);
        // A thread stuck in a slow daemon call must not stall every other read: after
        // a short wait, read from disk instead.
        let Some(mut dir) = self.dir.try_lock_for(DIR_WAIT) else {
            Stats::inc(&self.stats.lookup_busy);
            return None;
        };
        let found = dir.as_mut()?.lookup(id.space_id, page_no, s);
        drop(dir);
        let entry = match found {
            Ok(Some(e)) => e,
            Ok(None) => {
                Stats::inc(&self.stats.lookup_misses);
                return None;
            }
            Err(_) => {
                Stats::inc(&self.stats.lookup_errors);
                return None;
            }
        };
        if let Err(d) = may_share(&entry, s, false) {
            self.count_decline(d);
            return None;
        }
        let store = self.store.as_ref()?;
        // SAFETY: buf is InnoDB's frame for this read, aligned, one frame long.
        if let Err(e) = unsafe { self.map_frame(store.as_ref(), entry.frame, buf) } {
            Stats::inc(&self.stats.map_errors);
            // SAFETY: as above; the real read refills the frame.
            if let Err(r) = unsafe { self.unmap_frame(store.as_ref(), buf) } {
                tracing::error!("dbfork agent: {}", error_chain(&r));
            }
            self.disable_sharing(&map_failure_reason(&e));
            return None;
        }
        // SAFETY: the frame is mapped, FRAME_SIZE readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buf, FRAME_SIZE) };
        match page::verify_identity(bytes, id.format, id.space_id, page_no) {
            Ok(h) if h.lsn == entry.lsn => {
                Stats::inc(&self.stats.shared);
                Some(FRAME_SIZE as isize)
            }
            _ => {
                Stats::inc(&self.stats.declined_verify);
                // SAFETY: as above.
                if let Err(r) = unsafe { self.unmap_frame(store.as_ref(), buf) } {
                    tracing::error!("dbfork agent: {}", error_chain(&r));
                }
                None
            }
        }
    }

    fn count_decline(&self, d: Decline) {
        Stats::inc(match d {
            Decline::NewerThanSnapshot => &self.stats.declined_newer,
            Decline::ReadBeforeSnapshot => &self.stats.declined_before_snapshot,
            Decline::WrittenByReplica => &self.stats.declined_written,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use crate::fdtable::FdState;
    use crate::frame_store::FRAME_SIZE;
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;

    /// A source at clone LSN 1000 that pooled the 4 pages (LSN 900) of a tablespace;
    /// the replica's copy of that tablespace and the pages.
    fn pooled_tablespace(
        dir: &std::path::Path,
        arena: &Arena,
    ) -> (std::path::PathBuf, Vec<Vec<u8>>) {
        std::fs::write(dir.join("clone_lsn"), "1000").unwrap();
        let src_file = dir.join("src.ibd");
        let pages = tablespace(&src_file, 4, 900);
        let rep_file = dir.join("rep.ibd");
        std::fs::copy(&src_file, &rep_file).unwrap();
        let src = agent(dir, "source", 0);
        arena.show(&src);
        let f = open_tracked(&src, &src_file);
        for n in 0..4 {
            assert_eq!(read(&src, &f, &arena.frame(), n), FRAME_SIZE as isize);
        }
        (rep_file, pages)
    }

    #[test]
    fn source_pools_and_replica_shares_then_declines_by_rule() {
        let dir = tempfile::tempdir().unwrap();
        let arena = Arena::new();
        std::fs::write(dir.path().join("clone_lsn"), "1000").unwrap();
        let src_file = dir.path().join("src.ibd");
        let pages = tablespace(&src_file, 4, 900);
        let rep_file = dir.path().join("rep.ibd");
        std::fs::copy(&src_file, &rep_file).unwrap();

        let src = agent(dir.path(), "source", 0);

        arena.show(&src);
        let f = open_tracked(&src, &src_file);
        assert!(matches!(src.fds.get(f.as_raw_fd()), FdState::Identified(_)));
        let frames: Vec<Frame> = (0..4).map(|_| arena.frame()).collect();
        for (n, fr) in frames.iter().enumerate() {
            assert_eq!(read(&src, &f, fr, n as u32), FRAME_SIZE as isize);
            assert_eq!(fr.bytes(), &pages[n][..]);
        }
        assert_eq!(src.snapshot().pages_pooled, 4);
        // The source changes its frame; the pool must not see it.
        frames[2].bytes()[500] ^= 0xff;

        // Replica at S = 1000: lsn 900 <= S, valid_from 1000 >= S: shared.
        let rep = agent(dir.path(), "replica", 1000);
        arena.show(&rep);
        let rf = open_tracked(&rep, &rep_file);
        let fr = arena.frame();
        assert_eq!(read(&rep, &rf, &fr, 2), FRAME_SIZE as isize);
        assert_eq!(fr.bytes(), &pages[2][..]);
        assert_eq!(rep.snapshot().shared, 1);

        // Replica at S = 1001: the frames were read before that snapshot.
        let late = agent(dir.path(), "replica", 1001);
        arena.show(&late);
        let lf = open_tracked(&late, &rep_file);
        assert_eq!(read(&late, &lf, &fr, 1), FRAME_SIZE as isize);
        assert_eq!(fr.bytes(), &pages[1][..]);
        let s = late.snapshot();
        assert_eq!((s.shared, s.declined_before_snapshot), (0, 1));

        // Replica at S = 899: the frames are newer than its snapshot.
        let early = agent(dir.path(), "replica", 899);
        arena.show(&early);
        let ef = open_tracked(&early, &rep_file);
        assert_eq!(read(&early, &ef, &fr, 1), FRAME_SIZE as isize);
        assert_eq!(early.snapshot().shared, 0);
        assert_eq!(early.snapshot().lookup_misses, 1);
    }

    #[test]
    fn a_replica_whose_source_goes_maps_nothing_more_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let arena = Arena::new();
        let (rep_file, pages) = pooled_tablespace(dir.path(), &arena);
        let rep = agent(dir.path(), "replica", 1000);
        arena.show(&rep);
        let rf = open_tracked(&rep, &rep_file);
        assert_eq!(read(&rep, &rf, &arena.frame(), 2), FRAME_SIZE as isize);
        assert_eq!(rep.snapshot().shared, 1);

        // Nothing happens until the guest side says the source is going.
        rep.tick();
        assert!(rep.sharing_on());
        std::fs::write(dir.path().join("release"), "release\n").unwrap();
        rep.tick();
        let answer = std::fs::read_to_string(dir.path().join("release")).unwrap();
        assert_eq!(
            answer, "released 0\n",
            "a local pool maps nothing from grants"
        );
        let s = rep.snapshot();
        assert_eq!(
            s.sharing_off_reason.as_deref(),
            Some(super::super::SOURCE_RELEASED)
        );
        // What it reads now comes from its own disk.
        let fr = arena.frame();
        assert_eq!(read(&rep, &rf, &fr, 1), FRAME_SIZE as isize);
        assert_eq!(fr.bytes(), &pages[1][..]);
        assert_eq!(rep.snapshot().shared, 1);
    }

    #[test]
    fn a_damaged_pool_slot_is_undone_and_read_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let arena = Arena::new();
        std::fs::write(dir.path().join("clone_lsn"), "1000").unwrap();
        let file = dir.path().join("t.ibd");
        let pages = tablespace(&file, 2, 900);
        let src = agent(dir.path(), "source", 0);
        arena.show(&src);
        let f = open_tracked(&src, &file);
        let fr = arena.frame();
        read(&src, &f, &fr, 1);
        // Corrupt the pool slot behind the agents' backs.
        let pool = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("pool"))
            .unwrap();
        pool.write_all_at(&[0xee; 16], 4000).unwrap();
        let rep = agent(dir.path(), "replica", 1000);
        arena.show(&rep);
        let rf = open_tracked(&rep, &file);
        let rfr = arena.frame();
        assert_eq!(read(&rep, &rf, &rfr, 1), FRAME_SIZE as isize);
        assert_eq!(
            rfr.bytes(),
            &pages[1][..],
            "disk bytes, not the damaged slot"
        );
        let s = rep.snapshot();
        assert_eq!((s.shared, s.declined_verify), (0, 1));
    }
}
