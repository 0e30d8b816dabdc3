//! The agent's decisions, independent of the FFI edge: the hooks in `hooks.rs` call
//! these with a closure that performs the real libc call, so this module is tested in
//! process with real files and mappings.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::{Config, Role};
use crate::directory::{DirEntry, PageDirectory, PageTableDirectory, PoolIndex};
use crate::error::{AgentError, Result};
use crate::fdtable::{is_data_file, FdState, FdTable, Ident};
use crate::page::{self, MIN_HEADER};
use crate::pool::{anon_over, Pool, PoolRecord, POOL_PAGE};
use crate::scan::Regions;
use crate::share::{may_share, Decline};
use crate::stats::{Stats, StatsSnapshot};

const OS_PAGE: usize = 4096;
/// Longest a read waits for the directory while another thread uses it.
const DIR_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

pub struct Agent {
    pub config: Config,
    pub fds: FdTable,
    pub stats: Stats,
    pool: Option<Arc<Pool>>,
    dir: Mutex<Option<Box<dyn PageDirectory>>>,
    /// Pages this replica wrote, as space_id << 32 | page_no: never shared again.
    written: Mutex<WrittenSet>,
    /// Buffer-pool candidates (source role), for the scan at clone time.
    pub regions: Regions,
    /// Open 16 KiB tablespaces: which checksum layout a scanned frame must verify in.
    spaces: Mutex<HashMap<u32, page::SpaceFormat>>,
    /// What this source pooled: page key -> (lsn, valid_from, pool offset), to reuse
    /// a slot instead of appending the same page version again.
    pooled: Mutex<HashMap<u64, (u64, u64, u64)>>,
    /// The clone counter value the last scan ran for.
    scanned_epoch: Mutex<Option<u64>>,
    sharing_off: AtomicBool,
    off_reason: Mutex<Option<String>>,
}

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
            pool: None,
            dir: Mutex::new(None),
            written: Mutex::new(WrittenSet::default()),
            regions: Regions::default(),
            spaces: Mutex::new(HashMap::new()),
            pooled: Mutex::new(HashMap::new()),
            scanned_epoch: Mutex::new(None),
            sharing_off: AtomicBool::new(config.role == Role::Off),
            off_reason: Mutex::new(None),
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
        let path = self.config.pool_path.clone().expect("checked by Config");
        let pool = Arc::new(
            Pool::open(&path, self.config.role == Role::Source)?
                .with_limit(self.config.pool_max_bytes),
        );
        if let Some(w) = &self.config.writes_file {
            if poison_path(w).exists() {
                return Err(AgentError::Config {
                    var: "DBFORK_REPLICA_WRITES",
                    msg: format!(
                        "{} exists: an earlier run could not record a write, so this \
                         datadir is never shared again",
                        poison_path(w).display()
                    ),
                });
            }
            *self.written.lock() = WrittenSet::open(w)?;
        }
        if let Some(ep) = &self.config.epoch_file {
            // Checked once here so a missing file is a clear config error; read by path
            // afterwards (see read_epoch).
            std::fs::metadata(ep)
                .map_err(|e| AgentError::io(format!("opening epoch file {}", ep.display()), e))?;
        }
        let dir: Box<dyn PageDirectory> = match &self.config.pagetable_socket {
            Some(sock) => Box::new(PageTableDirectory::new(sock, pool.clone())),
            None => Box::new(PoolIndex::new(pool.clone())),
        };
        tracing::info!(
            role = ?self.config.role,
            pool = %path.display(),
            directory = dir.describe(),
            snapshot_lsn = ?self.config.snapshot_lsn,
            "dbfork agent: sharing on"
        );
        *self.dir.lock() = Some(dir);
        self.pool = Some(pool);
        // Frames resident at start were read under the current counter already.
        *self.scanned_epoch.lock() = self.read_epoch();
        Ok(())
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
        }
    }

    fn identify(&self, fd: i32, page0: &[u8], path: &[u8]) {
        // A zero-filled start (a file being extended before page 0 is written) would
        // decode as space 0 with default flags; wait for the real page 0.
        if page0.iter().take(MIN_HEADER).all(|&b| b == 0) {
            return;
        }
        match page::space_info(page0) {
            Ok(info) => {
                Stats::inc(&self.stats.files_identified);
                self.fds.set_identified(fd, Ident::from(info));
                if info.page_size as usize == POOL_PAGE {
                    self.spaces.lock().insert(info.space_id, info.format);
                }
                if info.page_size as usize != POOL_PAGE {
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
        let page_sized = id.page_size as usize == POOL_PAGE
            && count == POOL_PAGE
            && off >= 0
            && off as u64 % POOL_PAGE as u64 == 0
            && buf as usize % OS_PAGE == 0;
        if !page_sized {
            return real();
        }
        Stats::inc(&self.stats.reads_page_sized);
        // Only buffer-pool frames are ever remapped: a heap buffer that happens to be
        // aligned could be handed back to malloc with a file page under it.
        if self.config.role != Role::Off && !self.regions.contains(buf as usize, POOL_PAGE) {
            Stats::inc(&self.stats.reads_outside_pool);
            return real();
        }
        let page_no = match u32::try_from(off as u64 / POOL_PAGE as u64) {
            Ok(p) => p,
            Err(_) => return real(),
        };
        match self.config.role {
            Role::Off => {
                let n = real();
                if n == POOL_PAGE as isize {
                    // SAFETY: the real pread filled the whole page.
                    let bytes = unsafe { std::slice::from_raw_parts(buf, POOL_PAGE) };
                    self.count_verified(
                        page::verify_identity(bytes, id.format, id.space_id, page_no).is_ok(),
                    );
                }
                n
            }
            Role::Source => {
                if !self.sharing_on() {
                    return real();
                }
                // valid_from is read BEFORE the read starts (the share rule).
                let valid_from = self.read_epoch();
                let n = real();
                if n == POOL_PAGE as isize {
                    // SAFETY: buf holds the page just read; InnoDB owns the frame until we return.
                    unsafe { self.pool_frame(id, buf, page_no, valid_from) };
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

    /// The family clone-LSN counter, read fresh each time by path. dbfork replaces the
    /// file with rename(2), so every read sees one whole value, old or new: reading
    /// an fd kept open while the file is rewritten in place could return a torn mix
    /// of two values, possibly larger than either, and a too-large valid_from would
    /// let a stale frame serve a later snapshot.
    fn read_epoch(&self) -> Option<u64> {
        let path = self.config.epoch_file.as_ref()?;
        let text = std::fs::read_to_string(path).ok()?;
        text.trim().parse().ok()
    }

    /// Source: copy a verified page into the pool, map the pool page over the frame,
    /// register it.
    unsafe fn pool_frame(&self, id: Ident, buf: *mut u8, page_no: u32, valid_from: Option<u64>) {
        // SAFETY: caller guarantees buf holds POOL_PAGE readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buf, POOL_PAGE) };
        let h = match page::verify_identity(bytes, id.format, id.space_id, page_no) {
            Ok(h) => h,
            Err(_) => return self.count_verified(false),
        };
        self.count_verified(true);
        let Some(valid_from) = valid_from else {
            Stats::inc(&self.stats.register_errors);
            return;
        };
        let pool = self.pool.as_ref().expect("sharing on implies a pool");
        let k = key(id.space_id, page_no);
        // A re-read of a page version already pooled (evicted, read again) maps the
        // existing slot: same bytes, and its valid_from serves at least as much.
        let existing = match self.pooled.lock().get(&k) {
            Some(&(lsn, vf, off)) if lsn == h.lsn && vf >= valid_from => Some(off),
            _ => None,
        };
        let reuse = existing.filter(|&off| {
            let mut slot = AlignedPage::new();
            pool.read_slot(off, slot.bytes()).is_ok() && slot.bytes() == bytes
        });
        let off = match reuse {
            Some(off) => off,
            None => {
                let rec = PoolRecord {
                    space_id: id.space_id,
                    page_no,
                    lsn: h.lsn,
                    valid_from,
                };
                match pool.append(bytes, rec) {
                    Ok(off) => off,
                    Err(e @ AgentError::PoolFull { .. }) => {
                        // Sharing what is pooled goes on; new reads stay private.
                        let before = self
                            .stats
                            .pool_full_drops
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        if let Err(e) = unsafe { pool.map_over(buf, off) } {
            Stats::inc(&self.stats.map_errors);
            // A failed MAP_FIXED may leave the range unmapped: restore private memory
            // and the bytes (the pool slot holds exactly them).
            // SAFETY: as above.
            let restored = unsafe { anon_over(buf, POOL_PAGE) }.and_then(|_| {
                // SAFETY: buf is mapped again, POOL_PAGE writable bytes.
                let dst = unsafe { std::slice::from_raw_parts_mut(buf, POOL_PAGE) };
                pool.read_slot(off, dst)
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
            return; // registered when it was appended
        }
        Stats::inc(&self.stats.pages_pooled);
        self.pooled.lock().insert(k, (h.lsn, valid_from, off));
        let entry = DirEntry {
            pool_offset: off,
            lsn: h.lsn,
            valid_from,
        };
        // Never queue behind another thread's slow daemon call: the background sync
        // registers from the pool record file anyway.
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

    /// Replica: serve the read from the pool if the share rule allows; None = do the
    /// real read (the frame is then plain private memory again).
    unsafe fn try_share(&self, id: Ident, buf: *mut u8, page_no: u32) -> Option<isize> {
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
            Stats::inc(match d {
                Decline::NewerThanSnapshot => &self.stats.declined_newer,
                Decline::ReadBeforeSnapshot => &self.stats.declined_before_snapshot,
                Decline::WrittenByReplica => &self.stats.declined_written,
            });
            return None;
        }
        let pool = self.pool.as_ref()?;
        // SAFETY: buf is InnoDB's frame for this read, aligned, one pool page.
        if let Err(e) = unsafe { pool.map_over(buf, entry.pool_offset) } {
            Stats::inc(&self.stats.map_errors);
            // SAFETY: as above; the real read refills the frame.
            if let Err(r) = unsafe { anon_over(buf, POOL_PAGE) } {
                tracing::error!("dbfork agent: {}", error_chain(&r));
            }
            self.disable_sharing(&map_failure_reason(&e));
            return None;
        }
        // SAFETY: the frame is mapped, POOL_PAGE readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buf, POOL_PAGE) };
        match page::verify_identity(bytes, id.format, id.space_id, page_no) {
            Ok(h) if h.lsn == entry.lsn => {
                Stats::inc(&self.stats.shared);
                Some(POOL_PAGE as isize)
            }
            _ => {
                Stats::inc(&self.stats.declined_verify);
                // SAFETY: as above.
                if let Err(r) = unsafe { anon_over(buf, POOL_PAGE) } {
                    tracing::error!("dbfork agent: {}", error_chain(&r));
                }
                None
            }
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
                        // A write to a data file of unknown space: the written set
                        // cannot say which pages are now this replica's own.
                        if self.config.role == Role::Replica {
                            self.disable_sharing(
                                "write to a data file that could not be identified",
                            );
                        }
                        return;
                    }
                }
            }
        };
        Stats::inc(&self.stats.writes_data);
        let ps = u64::from(id.page_size);
        let first = off as u64 / ps;
        let last = (off as u64 + count as u64 - 1) / ps;
        let keys: Vec<u64> = (first..=last.min(u64::from(u32::MAX)))
            .map(|p| key(id.space_id, p as u32))
            .collect();
        Stats::add(&self.stats.pages_written, keys.len() as u64);
        if let Err(e) = self.written.lock().insert(&keys) {
            // Without a durable record a restarted replica could be served a stale
            // copy of this page: stop sharing now, and for every later run too.
            if let Some(w) = &self.config.writes_file {
                if let Err(pe) = File::create(poison_path(w)) {
                    tracing::error!(
                        "dbfork agent: cannot mark {} as incomplete: {pe}; do not share this datadir again",
                        w.display()
                    );
                }
            }
            self.disable_sharing(&format!(
                "recording written pages failed: {}",
                error_chain(&e)
            ));
        }
    }

    pub fn written_by_me(&self, space: u32, page: u32) -> bool {
        self.written.lock().contains(&key(space, page))
    }

    /// Periodic work off the read path (the background thread): catch the directory
    /// up with the pool (registration after a reconnect or a daemon restart).
    pub fn tick(&self) {
        if self.config.role != Role::Source || !self.sharing_on() {
            return;
        }
        if let Some(d) = self.dir.lock().as_mut() {
            if let Err(e) = d.sync() {
                tracing::debug!("dbfork agent: directory sync: {}", error_chain(&e));
            }
        }
        // A new snapshot was published: offer the whole warm set to its replicas.
        let Some(epoch) = self.read_epoch() else {
            return;
        };
        let due = {
            let mut last = self.scanned_epoch.lock();
            let due = last.is_none_or(|l| epoch > l);
            if due {
                *last = Some(epoch);
            }
            due
        };
        if due {
            self.scan_buffer_pool(epoch);
        }
    }

    /// Pools every clean resident frame (see `scan`); `valid_from` was read before.
    pub fn scan_buffer_pool(&self, valid_from: u64) {
        let Some(pool) = self.pool.clone() else {
            return;
        };
        Stats::inc(&self.stats.scans);
        let spaces = self.spaces.lock().clone();
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
            if let Some(&(lsn, vf, _)) = self.pooled.lock().get(&k) {
                if lsn == h.lsn && vf >= valid_from {
                    return;
                }
            }
            let rec = PoolRecord {
                space_id: h.space_id,
                page_no: h.page_no,
                lsn: h.lsn,
                valid_from,
            };
            let off = match pool.append(bytes, rec) {
                Ok(off) => off,
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
            self.pooled.lock().insert(k, (h.lsn, valid_from, off));
            found += 1;
            let entry = DirEntry {
                pool_offset: off,
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

    /// After a successful mmap by the server: remember buffer-pool candidates (the
    /// only memory the agent ever remaps, and what the clone-time scan reads).
    pub fn on_mmap(&self, addr: usize, len: usize, prot: i32, flags: i32, fd: i32) {
        if self.config.role != Role::Off {
            self.regions.on_mmap(addr, len, prot, flags, fd);
        }
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

/// Marks a written-page file that missed a write (sharing is off for good).
pub fn poison_path(writes: &std::path::Path) -> std::path::PathBuf {
    let mut s = writes.as_os_str().to_owned();
    s.push(".poisoned");
    s.into()
}

/// The set of pages this replica wrote, mirrored in an append-only file of u64 keys
/// (little endian) so it survives a restart. A key is appended before the page write
/// is issued; a torn last entry (crash mid-append) is ignored on load, which is safe
/// because the page write it preceded had not been issued yet.
#[derive(Default)]
pub struct WrittenSet {
    keys: HashSet<u64>,
    file: Option<File>,
}

impl WrittenSet {
    pub fn open(path: &std::path::Path) -> Result<WrittenSet> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                AgentError::io(format!("opening written-page file {}", path.display()), e)
            })?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| AgentError::io("reading the written-page file", e))?;
        let keys = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok(WrittenSet {
            keys,
            file: Some(file),
        })
    }

    pub fn contains(&self, k: &u64) -> bool {
        self.keys.contains(k)
    }

    pub fn insert(&mut self, keys: &[u64]) -> Result<()> {
        use std::io::Write;
        let new: Vec<u8> = keys
            .iter()
            .filter(|k| self.keys.insert(**k))
            .flat_map(|k| k.to_le_bytes())
            .collect();
        if let (Some(f), false) = (self.file.as_mut(), new.is_empty()) {
            f.write_all(&new)
                .map_err(|e| AgentError::io("appending to the written-page file", e))?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

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

/// A 16 KiB buffer aligned for O_DIRECT.
pub struct AlignedPage(Box<Aligned>);

#[repr(C, align(4096))]
struct Aligned([u8; POOL_PAGE]);

impl Default for AlignedPage {
    fn default() -> Self {
        Self::new()
    }
}

impl AlignedPage {
    pub fn new() -> Self {
        AlignedPage(Box::new(Aligned([0; POOL_PAGE])))
    }
    pub fn bytes(&mut self) -> &mut [u8] {
        &mut self.0 .0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::testpage::{full_crc32_page, raw, seal_full_crc32};
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    use std::path::Path;

    /// A buffer pool: one large anonymous mapping, as InnoDB makes it.
    struct Arena(*mut u8, std::cell::Cell<usize>);
    const ARENA: usize = crate::scan::MIN_REGION;
    impl Arena {
        fn new() -> Arena {
            // SAFETY: fresh anonymous mapping owned by this value.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    ARENA,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            Arena(p.cast(), std::cell::Cell::new(0))
        }
        /// Tells an agent this is a buffer pool, as the mmap hook would.
        fn show(&self, a: &Agent) {
            let rw = libc::PROT_READ | libc::PROT_WRITE;
            a.on_mmap(
                self.0 as usize,
                ARENA,
                rw,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
            );
        }
        fn frame(&self) -> Frame {
            // The arena's start is page aligned; frames are 16 KiB aligned within it
            // relative to that start, which is all mmap needs.
            let i = self.1.get();
            self.1.set(i + 1);
            assert!((i + 1) * POOL_PAGE <= ARENA);
            // SAFETY: inside our mapping.
            Frame(unsafe { self.0.add(i * POOL_PAGE) })
        }
    }
    impl Drop for Arena {
        fn drop(&mut self) {
            // SAFETY: our own mapping.
            unsafe { libc::munmap(self.0.cast(), ARENA) };
        }
    }

    /// A page-aligned frame inside an arena, like a buffer-pool block.
    struct Frame(*mut u8);
    impl Frame {
        #[allow(clippy::mut_from_ref)] // a test frame, like InnoDB's: raw memory
        fn bytes(&self) -> &mut [u8] {
            // SAFETY: our live mapping.
            unsafe { std::slice::from_raw_parts_mut(self.0, POOL_PAGE) }
        }
    }

    const SPACE: u32 = 42;

    /// A tablespace file: page 0 with full_crc32 16K flags, then pages at `lsn`.
    fn tablespace(path: &Path, pages: u32, lsn: u64) -> Vec<Vec<u8>> {
        let mut p0 = raw(POOL_PAGE, SPACE, 0, lsn, 0);
        p0[page::FSP_SPACE_FLAGS..page::FSP_SPACE_FLAGS + 4]
            .copy_from_slice(&0x15u32.to_be_bytes());
        seal_full_crc32(&mut p0);
        let mut all = vec![p0];
        all.extend((1..pages).map(|n| full_crc32_page(SPACE, n, lsn)));
        std::fs::write(path, all.concat()).unwrap();
        all
    }

    fn agent(dir: &Path, role: &str, s: u64) -> Agent {
        let pool = dir.join("pool").display().to_string();
        let epoch = dir.join("epoch").display().to_string();
        let writes = dir.join(format!("{role}.writes")).display().to_string();
        let s = s.to_string();
        let cfg = Config::from_lookup(|k| match k {
            "DBFORK_AGENT_ROLE" => Some(role.to_string()),
            "DBFORK_POOL_PATH" => Some(pool.clone()),
            "DBFORK_FAMILY_EPOCH_FILE" => Some(epoch.clone()),
            "DBFORK_SNAPSHOT_LSN" => Some(s.clone()),
            "DBFORK_REPLICA_WRITES" => Some(writes.clone()),
            _ => None,
        })
        .unwrap();
        Agent::new(cfg)
    }

    fn read(a: &Agent, file: &File, frame: &Frame, page_no: u32) -> isize {
        let fd = file.as_raw_fd();
        let off = i64::from(page_no) * POOL_PAGE as i64;
        let buf = frame.0;
        // SAFETY: frame is a live POOL_PAGE mapping.
        unsafe {
            a.on_pread(fd, buf, POOL_PAGE, off, || {
                libc::pread(fd, buf.cast(), POOL_PAGE, off) as isize
            })
        }
    }

    fn open_tracked(a: &Agent, path: &Path) -> File {
        let f = File::open(path).unwrap();
        let fd = f.as_raw_fd();
        a.on_open(fd, path.as_os_str().as_encoded_bytes(), |buf, off| {
            // SAFETY: buf is a live slice.
            unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), off) as isize }
        });
        f
    }

    #[test]
    fn source_pools_and_replica_shares_then_declines_by_rule() {
        let dir = tempfile::tempdir().unwrap();
        let arena = Arena::new();
        std::fs::write(dir.path().join("epoch"), "1000").unwrap();
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
            assert_eq!(read(&src, &f, fr, n as u32), POOL_PAGE as isize);
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
        assert_eq!(read(&rep, &rf, &fr, 2), POOL_PAGE as isize);
        assert_eq!(fr.bytes(), &pages[2][..]);
        assert_eq!(rep.snapshot().shared, 1);

        // Replica at S = 1001: the frames were read before that snapshot.
        let late = agent(dir.path(), "replica", 1001);
        arena.show(&late);
        let lf = open_tracked(&late, &rep_file);
        assert_eq!(read(&late, &lf, &fr, 1), POOL_PAGE as isize);
        assert_eq!(fr.bytes(), &pages[1][..]);
        let s = late.snapshot();
        assert_eq!((s.shared, s.declined_before_snapshot), (0, 1));

        // Replica at S = 899: the frames are newer than its snapshot.
        let early = agent(dir.path(), "replica", 899);
        arena.show(&early);
        let ef = open_tracked(&early, &rep_file);
        assert_eq!(read(&early, &ef, &fr, 1), POOL_PAGE as isize);
        assert_eq!(early.snapshot().shared, 0);
        assert_eq!(early.snapshot().lookup_misses, 1);
    }

    #[test]
    fn replica_writes_are_remembered_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let arena = Arena::new();
        std::fs::write(dir.path().join("epoch"), "1000").unwrap();
        let file = dir.path().join("t.ibd");
        tablespace(&file, 3, 900);
        let src = agent(dir.path(), "source", 0);
        arena.show(&src);
        let f = open_tracked(&src, &file);
        let fr = arena.frame();
        for n in 0..3 {
            read(&src, &f, &fr, n);
        }
        let rep = agent(dir.path(), "replica", 1000);
        arena.show(&rep);
        let rf = open_tracked(&rep, &file);
        rep.on_pwrite(rf.as_raw_fd(), POOL_PAGE, POOL_PAGE as i64, &[]); // page 1
        assert!(rep.written_by_me(SPACE, 1));
        read(&rep, &rf, &fr, 1);
        read(&rep, &rf, &fr, 2);
        let s = rep.snapshot();
        assert_eq!((s.shared, s.declined_written), (1, 1));
        drop(rep);
        let again = agent(dir.path(), "replica", 1000);
        arena.show(&again);
        assert!(again.written_by_me(SPACE, 1));
        assert!(!again.written_by_me(SPACE, 2));
    }

    #[test]
    fn a_damaged_pool_slot_is_undone_and_read_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let arena = Arena::new();
        std::fs::write(dir.path().join("epoch"), "1000").unwrap();
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
        assert_eq!(read(&rep, &rf, &rfr, 1), POOL_PAGE as isize);
        assert_eq!(
            rfr.bytes(),
            &pages[1][..],
            "disk bytes, not the damaged slot"
        );
        let s = rep.snapshot();
        assert_eq!((s.shared, s.declined_verify), (0, 1));
    }

    #[test]
    fn unaligned_or_odd_sized_reads_pass_through_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let arena = Arena::new();
        std::fs::write(dir.path().join("epoch"), "1000").unwrap();
        let file = dir.path().join("t.ibd");
        tablespace(&file, 2, 900);
        let src = agent(dir.path(), "source", 0);
        arena.show(&src);
        let f = open_tracked(&src, &file);
        let mut buf = vec![0u8; 3 * POOL_PAGE];
        let fd = f.as_raw_fd();
        let p = buf.as_mut_ptr();
        // SAFETY: buf is a live Vec of 3 pages.
        let n = unsafe {
            src.on_pread(fd, p, 2 * POOL_PAGE, 0, || {
                libc::pread(fd, p.cast(), 2 * POOL_PAGE, 0) as isize
            })
        };
        assert_eq!(n, 2 * POOL_PAGE as isize);
        assert_eq!(src.snapshot().pages_pooled, 0);
        assert_eq!(src.snapshot().reads_data, 1);
    }

    #[test]
    fn frames_outside_the_buffer_pool_are_never_remapped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("epoch"), "1000").unwrap();
        let file = dir.path().join("t.ibd");
        let pages = tablespace(&file, 2, 900);
        let src = agent(dir.path(), "source", 0);
        let f = open_tracked(&src, &file);
        let arena = Arena::new(); // not shown to the agent: not a buffer pool
        let fr = arena.frame();
        assert_eq!(read(&src, &f, &fr, 1), POOL_PAGE as isize);
        assert_eq!(fr.bytes(), &pages[1][..]);
        let s = src.snapshot();
        assert_eq!((s.pages_pooled, s.reads_outside_pool), (0, 1));
    }

    #[test]
    fn a_re_read_page_version_maps_its_existing_slot() {
        let dir = tempfile::tempdir().unwrap();
        let arena = Arena::new();
        std::fs::write(dir.path().join("epoch"), "1000").unwrap();
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
        std::fs::write(dir.path().join("epoch"), "2000").unwrap();
        read(&src, &f, &a, 1);
        assert_eq!(src.snapshot().pages_pooled, 2);
    }

    #[test]
    fn a_failed_write_record_poisons_the_datadir_for_later_runs() {
        let dir = tempfile::tempdir().unwrap();
        let arena = Arena::new();
        std::fs::write(dir.path().join("epoch"), "1000").unwrap();
        let file = dir.path().join("t.ibd");
        tablespace(&file, 2, 900);
        let src = agent(dir.path(), "source", 0);
        arena.show(&src);
        let rep = agent(dir.path(), "replica", 1000);
        arena.show(&rep);
        let rf = open_tracked(&rep, &file);
        // The writes file becomes unwritable (a read-only fd stands in for a full disk).
        let writes = dir.path().join("replica.writes");
        rep.written.lock().file = Some(File::open(&writes).unwrap());
        rep.on_pwrite(rf.as_raw_fd(), POOL_PAGE, POOL_PAGE as i64, &[]);
        assert!(!rep.sharing_on());
        assert!(poison_path(&writes).exists());
        let again = agent(dir.path(), "replica", 1000);
        assert!(!again.sharing_on());
        assert!(again
            .snapshot()
            .sharing_off_reason
            .unwrap()
            .contains("poisoned"));
    }
}
