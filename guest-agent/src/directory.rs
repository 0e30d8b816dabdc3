//! Where the replica finds which stored frame holds a page. One narrow trait, three
//! implementations: in-process (tests), the frame store's own offer log (no daemon
//! needed), and the page table daemon (`pagetable::client::Client`).
//!
//! `valid_from` travels both in the daemon's entries (wire version 2; the daemon applies
//! the whole LSN part of the share rule) and in the frame store's record of the frame
//! (`frame_store::FrameRecord`); on a daemon hit the two must agree, except that the
//! source may have revalidated the frame for a newer snapshot since it stored it (the
//! entry's `valid_from` is then the larger).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pagetable::client::Client;
use pagetable::wire::WireRegistration;
use pagetable::Frame;

use crate::error::{AgentError, Result};
use crate::frame_store::{FrameStore, FRAME_SIZE};

/// A frame holding a version of a page, as a directory knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntry {
    /// The frame store's reference (what the page table stores).
    pub frame: Frame,
    pub lsn: u64,
    /// See `frame_store::FrameRecord::valid_from`.
    pub valid_from: u64,
}

pub trait PageDirectory: Send {
    fn register(&mut self, space: u32, page: u32, entry: DirEntry) -> Result<()>;
    /// A frame of (space, page) that can satisfy snapshot S, preferring one that passes
    /// the whole share rule; None if there is none.
    fn lookup(&mut self, space: u32, page: u32, snapshot_lsn: u64) -> Result<Option<DirEntry>>;
    /// Declares stored frames valid from a newer clone LSN than their record says (the
    /// source found them unchanged in its buffer pool after that snapshot). Returns
    /// whether the directory keeps such declarations; one that serves from the frame
    /// store's records alone cannot.
    fn revalidate(&mut self, _entries: &[(u32, u32, DirEntry)]) -> Result<bool> {
        Ok(false)
    }
    /// Background catch-up (off the read path); nothing to do for most directories.
    fn sync(&mut self) -> Result<()> {
        Ok(())
    }
    fn describe(&self) -> &'static str;
}

/// Best candidate for S among versions: one that passes lsn <= S <= valid_from, else
/// the newest with lsn <= S (the caller's rule check then declines it and counts why).
fn best(cands: &[DirEntry], s: u64) -> Option<DirEntry> {
    cands
        .iter()
        .filter(|e| e.lsn <= s)
        .max_by_key(|e| (e.valid_from >= s, e.lsn, e.valid_from))
        .copied()
}

/// In-process map: for unit tests and single-process use.
#[derive(Default)]
pub struct MemoryDirectory {
    map: HashMap<(u32, u32), Vec<DirEntry>>,
}

impl PageDirectory for MemoryDirectory {
    fn register(&mut self, space: u32, page: u32, entry: DirEntry) -> Result<()> {
        self.map.entry((space, page)).or_default().push(entry);
        Ok(())
    }

    fn lookup(&mut self, space: u32, page: u32, s: u64) -> Result<Option<DirEntry>> {
        Ok(self.map.get(&(space, page)).and_then(|v| best(v, s)))
    }

    fn revalidate(&mut self, entries: &[(u32, u32, DirEntry)]) -> Result<bool> {
        for &(space, page, e) in entries {
            let v = self.map.entry((space, page)).or_default();
            match v.iter_mut().find(|x| x.frame == e.frame) {
                Some(x) => x.valid_from = x.valid_from.max(e.valid_from),
                None => v.push(e),
            }
        }
        Ok(true)
    }

    fn describe(&self) -> &'static str {
        "in-process map"
    }
}

/// The frame store's offer log as the directory: registration is the offer itself;
/// lookups first index any frames offered since the last lookup.
pub struct StoreIndex {
    store: Arc<dyn FrameStore>,
    next: u64,
    map: MemoryDirectory,
}

impl StoreIndex {
    pub fn new(store: Arc<dyn FrameStore>) -> Self {
        StoreIndex {
            store,
            next: 0,
            map: MemoryDirectory::default(),
        }
    }

    fn refresh(&mut self) -> Result<()> {
        loop {
            let offered = self.store.offered_since(self.next, 256)?;
            let n = offered.len();
            for f in offered {
                let r = f.record;
                let e = DirEntry {
                    frame: f.frame,
                    lsn: r.lsn,
                    valid_from: r.valid_from,
                };
                self.map.register(r.space_id, r.page_no, e)?;
                self.next = f.seq + 1;
            }
            if n < 256 {
                return Ok(());
            }
        }
    }
}

impl PageDirectory for StoreIndex {
    fn register(&mut self, _space: u32, _page: u32, _entry: DirEntry) -> Result<()> {
        Ok(())
    }

    fn lookup(&mut self, space: u32, page: u32, s: u64) -> Result<Option<DirEntry>> {
        self.refresh()?;
        self.map.lookup(space, page, s)
    }

    fn describe(&self) -> &'static str {
        "frame store's own records"
    }
}

/// The page table daemon.
///
/// Registration is a sync of the frame store's offer log, not of single reads: the
/// store is the truth (its frames outlive the source process), and the daemon drops a
/// domain's entries when its last connection closes or the daemon restarts. So after
/// every (re)connect the whole log is registered again, and each `register` (and
/// `sync` from the agent's background thread) sends whatever was offered since.
///
/// When a page is pooled again unchanged (same LSN, larger `valid_from`), the older
/// frame is withdrawn: the newer one can serve every snapshot the older one could.
///
/// A lost connection is retried at most once per second; meanwhile lookups miss and
/// registration waits.
pub struct PageTableDirectory {
    path: PathBuf,
    client: Option<Client>,
    last_attempt: Option<Instant>,
    store: Arc<dyn FrameStore>,
    /// Frames below this position of the offer log are registered with the daemon.
    synced: u64,
    /// (page key, audience) -> (lsn, valid_from, frame) of the registered frame per
    /// page version and audience (`audience`: a Xen source publishes each slot once
    /// per replica domain, and one grantee's frame never supersedes another's).
    latest: HashMap<(u64, u32), (u64, u64, Frame)>,
    /// The store's `epoch` the registrations belong to.
    epoch: u64,
    /// Frames revalidated for a newer clone LSN than their record: the `valid_from` to
    /// register them with, also after a reconnect (the record keeps the old one).
    revalidated: HashMap<Frame, u64>,
    /// Daemon generation our registrations belong to.
    generation: u64,
    last_ping: Option<Instant>,
    /// Capacity refusals are logged once, not on every batch that meets them.
    told_refused: bool,
}

const RECONNECT_EVERY: Duration = Duration::from_secs(1);
const SYNC_BATCH: usize = 1024;

impl PageTableDirectory {
    pub fn new(path: &Path, store: Arc<dyn FrameStore>) -> Self {
        let epoch = store.epoch();
        PageTableDirectory {
            path: path.to_owned(),
            client: None,
            last_attempt: None,
            store,
            synced: 0,
            latest: HashMap::new(),
            epoch,
            revalidated: HashMap::new(),
            generation: 0,
            last_ping: None,
            told_refused: false,
        }
    }

    fn client(&mut self) -> Result<&mut Client> {
        let connected = self.client.as_ref().is_some_and(|c| c.is_connected());
        if !connected {
            if self
                .last_attempt
                .is_some_and(|t| t.elapsed() < RECONNECT_EVERY)
            {
                return Err(AgentError::PageTable {
                    what: "not connected (retrying later)",
                    source: pagetable::Error::NotConnected,
                });
            }
            self.last_attempt = Some(Instant::now());
            let c = match self.client.take() {
                Some(mut c) => c.reconnect().map(|_| c),
                None => Client::connect(&self.path),
            };
            let c = c.map_err(|source| AgentError::PageTable {
                what: "connecting",
                source,
            })?;
            tracing::info!(domain = %c.domain(), family = %c.family(), "dbfork agent: page table connected");
            self.generation = c.generation();
            self.client = Some(c);
            // A new connection holds none of our entries: register everything again.
            self.resync();
        }
        Ok(self.client.as_mut().expect("set above"))
    }

    fn resync(&mut self) {
        self.synced = 0;
        self.latest.clear();
    }

    /// After any reply: a new daemon generation lost every registration.
    fn check_generation(&mut self) {
        if let Some(g) = self.client.as_ref().map(|c| c.generation()) {
            if g != self.generation {
                self.generation = g;
                self.resync();
            }
        }
    }

    fn fail<T>(&mut self, what: &'static str, source: pagetable::Error) -> Result<T> {
        Err(AgentError::PageTable { what, source })
    }

    /// With nothing to register, a cheap request once a second notices a dead or
    /// restarted daemon (its generation changes), so registration resumes by itself.
    fn ping_if_idle(&mut self) -> Result<()> {
        if self
            .last_ping
            .is_some_and(|t| t.elapsed() < RECONNECT_EVERY)
        {
            return Ok(());
        }
        self.last_ping = Some(Instant::now());
        let client = self.client.as_mut().expect("connected by caller");
        if let Err(e) = client.lookup(0, 0, 0) {
            return self.fail("pinging", e);
        }
        self.check_generation();
        Ok(())
    }

    /// Registers the frames offered since the last sync. Returns how many.
    pub fn sync(&mut self) -> Result<u64> {
        let mut total = 0;
        let epoch = self.store.epoch();
        if epoch != self.epoch {
            // Frames offered before are in the log again under new references.
            self.epoch = epoch;
            self.synced = 0;
        }
        loop {
            self.client()?;
            let offered = self.store.offered_since(self.synced, SYNC_BATCH)?;
            let Some(last) = offered.last().map(|f| f.seq) else {
                self.ping_if_idle()?;
                return Ok(total);
            };
            let mut regs = Vec::with_capacity(offered.len());
            let mut superseded = Vec::new();
            for f in &offered {
                let mut r = f.record;
                if let Some(&vf) = self.revalidated.get(&self.store.own_frame(f.frame)) {
                    r.valid_from = r.valid_from.max(vf);
                }
                let k = (
                    (u64::from(r.space_id) << 32) | u64::from(r.page_no),
                    audience(f.frame),
                );
                match self.latest.get(&k) {
                    Some(&(lsn, vf, _)) if lsn == r.lsn && vf > r.valid_from => continue,
                    // The same frame again (a batch sent before) is not its own successor.
                    Some(&(lsn, _, old)) if lsn == r.lsn && old != f.frame => superseded.push(old),
                    _ => {}
                }
                self.latest.insert(k, (r.lsn, r.valid_from, f.frame));
                regs.push(WireRegistration {
                    space_id: r.space_id,
                    page_no: r.page_no,
                    frame: f.frame,
                    lsn: r.lsn,
                    valid_from: r.valid_from,
                    page_size: FRAME_SIZE as u32,
                });
            }
            let client = self.client.as_mut().expect("connected above");
            if let Err(e) = client.register_many(&regs) {
                if !refused_for_capacity(&e) {
                    return self.fail("registering", e);
                }
                // The table took the batch up to a frame it has no room for (quota,
                // crowded page, full shard) and will refuse that frame every time: one
                // at a time, skipping what it refuses, so the rest still gets shared.
                let mut refused = 0u64;
                for reg in &regs {
                    match client.register_many(std::slice::from_ref(reg)) {
                        Ok(_) => {}
                        Err(e) if refused_for_capacity(&e) => refused += 1,
                        Err(e) => return self.fail("registering", e),
                    }
                }
                if !self.told_refused {
                    self.told_refused = true;
                    tracing::warn!(
                        refused,
                        "dbfork agent: the page table had no room for some pages; they stay private"
                    );
                }
            }
            if client.generation() != self.generation {
                // The daemon restarted under us: start over on the new one.
                self.check_generation();
                continue;
            }
            // Frames registered in this same batch and superseded in it are withdrawn
            // too; the daemon answers unknown frames with a count, not an error.
            if !superseded.is_empty() {
                if let Err(e) = client.invalidate_many(&superseded) {
                    return self.fail("invalidating superseded frames", e);
                }
            }
            total += regs.len() as u64;
            self.synced = last + 1;
            if offered.len() < SYNC_BATCH {
                return Ok(total);
            }
        }
    }
}

/// Who a frame is published for: its grantee for a grant, everyone otherwise.
fn audience(frame: Frame) -> u32 {
    match frame {
        Frame::XenGrant { grantee, .. } => u32::from(grantee),
        _ => u32::MAX,
    }
}

/// The daemon's answer for a registration it has no room for (it sends quota, full
/// table and crowded page alike as QuotaExceeded): retrying the same frame cannot help.
fn refused_for_capacity(e: &pagetable::Error) -> bool {
    matches!(e, pagetable::Error::Remote(r) if r.code == pagetable::wire::ErrorCode::QuotaExceeded)
}

impl PageDirectory for PageTableDirectory {
    fn register(&mut self, _space: u32, _page: u32, _entry: DirEntry) -> Result<()> {
        self.sync().map(|_| ())
    }

    fn revalidate(&mut self, entries: &[(u32, u32, DirEntry)]) -> Result<bool> {
        for &(_, _, e) in entries {
            let vf = self.revalidated.entry(e.frame).or_insert(e.valid_from);
            *vf = (*vf).max(e.valid_from);
        }
        // Frames registered already get the new valid_from now (re-registering a frame
        // updates its entry), under each frame the store publishes them as; the rest
        // when the log reaches them (`sync` maps the log's frames back to the store's).
        let mut regs = Vec::with_capacity(entries.len());
        for &(space_id, page_no, e) in entries {
            for frame in self.store.published(e.frame) {
                regs.push(WireRegistration {
                    space_id,
                    page_no,
                    frame,
                    lsn: e.lsn,
                    valid_from: e.valid_from,
                    page_size: FRAME_SIZE as u32,
                });
                let k = (
                    (u64::from(space_id) << 32) | u64::from(page_no),
                    audience(frame),
                );
                if let Some(l) = self.latest.get_mut(&k) {
                    if l.2 == frame {
                        l.1 = l.1.max(e.valid_from);
                    }
                }
            }
        }
        let client = self.client()?;
        for chunk in regs.chunks(SYNC_BATCH) {
            match client.register_many(chunk) {
                Ok(_) => {}
                // What the table has no room for stays valid only for older snapshots.
                Err(e) if refused_for_capacity(&e) => {}
                Err(e) => return self.fail("revalidating", e),
            }
        }
        self.check_generation();
        Ok(true)
    }

    fn lookup(&mut self, space: u32, page: u32, s: u64) -> Result<Option<DirEntry>> {
        let found = match self.client()?.lookup(space, page, s) {
            Ok(f) => f,
            Err(e) => return self.fail("looking up", e),
        };
        self.check_generation();
        let Some(entry) = found else { return Ok(None) };
        if !self.store.records_visible() {
            // The entry came from the family's source over its own channel; the bytes
            // are checked once mapped.
            return Ok(Some(DirEntry {
                frame: entry.frame,
                lsn: entry.lsn,
                valid_from: entry.valid_from,
            }));
        }
        // The store's record is the agent's own account of the frame; the daemon's
        // entry must agree with it (a stale or foreign entry is an error, not a hit),
        // but for a valid_from the source may have raised since (revalidation: both
        // come from the family's source, the only domain that registers frames).
        match self.store.record(entry.frame)? {
            Some(r)
                if r.space_id == space
                    && r.page_no == page
                    && r.lsn == entry.lsn
                    && r.valid_from <= entry.valid_from =>
            {
                Ok(Some(DirEntry {
                    frame: entry.frame,
                    lsn: r.lsn,
                    valid_from: entry.valid_from,
                }))
            }
            _ => Err(AgentError::RecordMismatch { frame: entry.frame }),
        }
    }

    fn sync(&mut self) -> Result<()> {
        PageTableDirectory::sync(self).map(|_| ())
    }

    fn describe(&self) -> &'static str {
        "page table daemon"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame_store::FrameRecord;
    use crate::page::testpage::full_crc32_page;
    use crate::pool::Pool;

    #[test]
    fn memory_directory_prefers_a_frame_that_passes_the_rule() {
        let mut d = MemoryDirectory::default();
        let old = DirEntry {
            frame: Frame::LocalPool { offset: 0 },
            lsn: 50,
            valid_from: 10,
        };
        let fresh = DirEntry {
            frame: Frame::LocalPool { offset: 16384 },
            lsn: 50,
            valid_from: 200,
        };
        let newer = DirEntry {
            frame: Frame::LocalPool { offset: 32768 },
            lsn: 300,
            valid_from: 250,
        };
        for e in [old, fresh, newer] {
            d.register(1, 2, e).unwrap();
        }
        assert_eq!(d.lookup(1, 2, 100).unwrap(), Some(fresh));
        assert_eq!(d.lookup(1, 2, 400).unwrap(), Some(newer));
        assert_eq!(d.lookup(1, 2, 40).unwrap(), None);
        assert_eq!(d.lookup(1, 3, 400).unwrap(), None);
    }

    #[test]
    fn store_index_sees_frames_offered_after_it_was_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool");
        let writer = Arc::new(Pool::open(&path, true).unwrap());
        let reader = Arc::new(Pool::open(&path, false).unwrap());
        let mut idx = StoreIndex::new(reader);
        assert_eq!(idx.lookup(4, 1, 100).unwrap(), None);
        for p in 0..300u32 {
            let rec = FrameRecord {
                space_id: 4,
                page_no: p,
                lsn: 90,
                valid_from: 100,
            };
            writer.append(&full_crc32_page(4, p, 90), rec).unwrap();
        }
        let e = idx.lookup(4, 299, 100).unwrap().unwrap();
        assert_eq!(
            e.frame,
            Frame::LocalPool {
                offset: 299 * FRAME_SIZE as u64
            }
        );
        assert_eq!((e.lsn, e.valid_from), (90, 100));
    }

    #[test]
    fn page_table_directory_without_daemon_fails_cleanly_and_backs_off() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Arc::new(Pool::open(&dir.path().join("pool"), true).unwrap());
        let mut d = PageTableDirectory::new(&dir.path().join("no.sock"), pool);
        assert!(d.lookup(1, 1, 1).is_err());
        let e = d.lookup(1, 1, 1).unwrap_err();
        assert!(e.to_string().contains("retrying later"), "{e}");
    }
}
