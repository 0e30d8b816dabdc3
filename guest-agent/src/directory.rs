//! Where the replica finds which pool slot holds a page. One narrow trait, three
//! implementations: in-process (tests), the pool's own record file (no daemon needed),
//! and the page table daemon (`pagetable::client::Client`).
//!
//! The daemon's entries have no `valid_from`; the agent keeps it in the pool record of
//! the slot (`pool::PoolRecord`) and joins the two on lookup, checking that the record
//! names the same page and LSN as the entry.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pagetable::client::Client;
use pagetable::wire::WireRegistration;
use pagetable::Frame;

use crate::error::{AgentError, Result};
use crate::pool::{Pool, POOL_PAGE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntry {
    pub pool_offset: u64,
    pub lsn: u64,
    pub valid_from: u64,
}

pub trait PageDirectory: Send {
    fn register(&mut self, space: u32, page: u32, entry: DirEntry) -> Result<()>;
    /// A frame of (space, page) that can satisfy snapshot S, preferring one that passes
    /// the whole share rule; None if there is none.
    fn lookup(&mut self, space: u32, page: u32, snapshot_lsn: u64) -> Result<Option<DirEntry>>;
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

    fn describe(&self) -> &'static str {
        "in-process map"
    }
}

/// The pool's record file as the directory: registration is the pool append itself;
/// lookups first index any records appended since the last lookup.
pub struct PoolIndex {
    pool: Arc<Pool>,
    next: u64,
    map: MemoryDirectory,
}

impl PoolIndex {
    pub fn new(pool: Arc<Pool>) -> Self {
        PoolIndex {
            pool,
            next: 0,
            map: MemoryDirectory::default(),
        }
    }

    fn refresh(&mut self) -> Result<()> {
        loop {
            let recs = self.pool.records_from(self.next, 256)?;
            let n = recs.len();
            for (slot, r) in recs {
                let e = DirEntry {
                    pool_offset: slot * POOL_PAGE as u64,
                    lsn: r.lsn,
                    valid_from: r.valid_from,
                };
                self.map.register(r.space_id, r.page_no, e)?;
                self.next = slot + 1;
            }
            if n < 256 {
                return Ok(());
            }
        }
    }
}

impl PageDirectory for PoolIndex {
    fn register(&mut self, _space: u32, _page: u32, _entry: DirEntry) -> Result<()> {
        Ok(())
    }

    fn lookup(&mut self, space: u32, page: u32, s: u64) -> Result<Option<DirEntry>> {
        self.refresh()?;
        self.map.lookup(space, page, s)
    }

    fn describe(&self) -> &'static str {
        "pool record file"
    }
}

/// The page table daemon. A lost connection is retried at most once per second;
/// meanwhile lookups miss (reads go to disk) and registrations are dropped.
pub struct PageTableDirectory {
    path: PathBuf,
    client: Option<Client>,
    last_attempt: Option<Instant>,
    pool: Arc<Pool>,
}

const RECONNECT_EVERY: Duration = Duration::from_secs(1);

impl PageTableDirectory {
    pub fn new(path: &Path, pool: Arc<Pool>) -> Self {
        PageTableDirectory {
            path: path.to_owned(),
            client: None,
            last_attempt: None,
            pool,
        }
    }

    fn client(&mut self) -> Result<&mut Client> {
        let connected = self.client.as_ref().is_some_and(|c| c.is_connected());
        if !connected {
            if self.last_attempt.is_some_and(|t| t.elapsed() < RECONNECT_EVERY) {
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
            let c = c.map_err(|source| AgentError::PageTable { what: "connecting", source })?;
            self.client = Some(c);
        }
        Ok(self.client.as_mut().expect("set above"))
    }
}

impl PageDirectory for PageTableDirectory {
    fn register(&mut self, space: u32, page: u32, entry: DirEntry) -> Result<()> {
        let item = WireRegistration {
            space_id: space,
            page_no: page,
            frame: Frame::LocalPool { offset: entry.pool_offset },
            lsn: entry.lsn,
            page_size: POOL_PAGE as u32,
        };
        self.client()?
            .register(item)
            .map_err(|source| AgentError::PageTable { what: "registering", source })
    }

    fn lookup(&mut self, space: u32, page: u32, s: u64) -> Result<Option<DirEntry>> {
        let found = self
            .client()?
            .lookup(space, page, s)
            .map_err(|source| AgentError::PageTable { what: "looking up", source })?;
        let Some(entry) = found else { return Ok(None) };
        let Frame::LocalPool { offset } = entry.frame else {
            return Err(AgentError::ForeignFrame(entry.frame));
        };
        let rec = self.pool.record_at(offset)?;
        match rec {
            Some(r) if r.space_id == space && r.page_no == page && r.lsn == entry.lsn => {
                Ok(Some(DirEntry { pool_offset: offset, lsn: r.lsn, valid_from: r.valid_from }))
            }
            _ => Err(AgentError::PoolRecord { slot: offset / POOL_PAGE as u64 }),
        }
    }

    fn describe(&self) -> &'static str {
        "page table daemon"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::testpage::full_crc32_page;
    use crate::pool::PoolRecord;

    #[test]
    fn memory_directory_prefers_a_frame_that_passes_the_rule() {
        let mut d = MemoryDirectory::default();
        let old = DirEntry { pool_offset: 0, lsn: 50, valid_from: 10 };
        let fresh = DirEntry { pool_offset: 16384, lsn: 50, valid_from: 200 };
        let newer = DirEntry { pool_offset: 32768, lsn: 300, valid_from: 250 };
        for e in [old, fresh, newer] {
            d.register(1, 2, e).unwrap();
        }
        assert_eq!(d.lookup(1, 2, 100).unwrap(), Some(fresh));
        assert_eq!(d.lookup(1, 2, 400).unwrap(), Some(newer));
        assert_eq!(d.lookup(1, 2, 40).unwrap(), None);
        assert_eq!(d.lookup(1, 3, 400).unwrap(), None);
    }

    #[test]
    fn pool_index_sees_appends_made_after_it_was_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool");
        let writer = Arc::new(Pool::open(&path, true).unwrap());
        let reader = Arc::new(Pool::open(&path, false).unwrap());
        let mut idx = PoolIndex::new(reader);
        assert_eq!(idx.lookup(4, 1, 100).unwrap(), None);
        for p in 0..300u32 {
            let rec = PoolRecord { space_id: 4, page_no: p, lsn: 90, valid_from: 100 };
            writer.append(&full_crc32_page(4, p, 90), rec).unwrap();
        }
        let e = idx.lookup(4, 299, 100).unwrap().unwrap();
        assert_eq!(e.pool_offset, 299 * POOL_PAGE as u64);
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
