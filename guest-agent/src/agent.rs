//! The agent's decisions, independent of the FFI edge: the hooks in `hooks.rs` call
//! these with a closure that performs the real libc call, so this module is tested in
//! process with real files and mappings.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::{Config, Role};
use crate::directory::{DirEntry, PageDirectory, PageTableDirectory, PoolIndex};
use crate::error::{AgentError, Result};
use crate::fdtable::{is_data_file, FdState, FdTable, Ident};
use crate::page::{self, MIN_HEADER};
use crate::pool::{anon_over, Pool, PoolRecord, POOL_PAGE};
use crate::share::{may_share, Decline};
use crate::stats::{Stats, StatsSnapshot};

const OS_PAGE: usize = 4096;

pub struct Agent {
    pub config: Config,
    pub fds: FdTable,
    pub stats: Stats,
    pool: Option<Arc<Pool>>,
    dir: Mutex<Option<Box<dyn PageDirectory>>>,
    /// Pages this process wrote, as space_id << 32 | page_no: never shared again.
    written: Mutex<HashSet<u64>>,
    epoch: Option<File>,
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
            written: Mutex::new(HashSet::new()),
            epoch: None,
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
        let pool = Arc::new(Pool::open(&path, self.config.role == Role::Source)?);
        if let Some(ep) = &self.config.epoch_file {
            let f = File::open(ep)
                .map_err(|e| AgentError::io(format!("opening epoch file {}", ep.display()), e))?;
            self.epoch = Some(f);
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
        match page::space_info(page0) {
            Ok(info) => {
                Stats::inc(&self.stats.files_identified);
                self.fds.set_identified(fd, Ident::from(info));
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
                    self.count_verified(page::verify_identity(bytes, id.format, id.space_id, page_no).is_ok());
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

    /// The family clone-LSN counter, read fresh each time (it is a few bytes).
    fn read_epoch(&self) -> Option<u64> {
        let f = self.epoch.as_ref()?;
        let mut b = [0u8; 32];
        let n = f.read_at(&mut b, 0).ok()?;
        std::str::from_utf8(&b[..n]).ok()?.trim().parse().ok()
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
        let rec = PoolRecord { space_id: id.space_id, page_no, lsn: h.lsn, valid_from };
        let off = match pool.append(bytes, rec) {
            Ok(off) => off,
            Err(e) => {
                Stats::inc(&self.stats.fallback_errors);
                self.disable_sharing(&format!("pool append failed: {}", error_chain(&e)));
                return;
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
                tracing::error!("dbfork agent: restoring a frame failed: {}", error_chain(&r));
            }
            self.disable_sharing(&map_failure_reason(&e));
            return;
        }
        Stats::inc(&self.stats.pages_pooled);
        let entry = DirEntry { pool_offset: off, lsn: h.lsn, valid_from };
        let mut dir = self.dir.lock();
        match dir.as_mut().map(|d| d.register(id.space_id, page_no, entry)) {
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
        let found = self.dir.lock().as_mut()?.lookup(id.space_id, page_no, s);
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
    pub fn on_pwrite(&self, fd: i32, count: usize, off: i64) {
        let FdState::Identified(id) = self.fds.get(fd) else { return };
        if count == 0 || off < 0 {
            return;
        }
        Stats::inc(&self.stats.writes_data);
        let ps = u64::from(id.page_size);
        let first = off as u64 / ps;
        let last = (off as u64 + count as u64 - 1) / ps;
        let mut w = self.written.lock();
        for p in first..=last.min(u64::from(u32::MAX)) {
            w.insert(key(id.space_id, p as u32));
        }
        Stats::add(&self.stats.pages_written, last - first + 1);
    }

    pub fn written_by_me(&self, space: u32, page: u32) -> bool {
        self.written.lock().contains(&key(space, page))
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

fn map_failure_reason(e: &AgentError) -> String {
    let enomem = matches!(e, AgentError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOMEM));
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
pub(crate) struct AlignedPage(Box<Aligned>);

#[repr(C, align(4096))]
struct Aligned([u8; POOL_PAGE]);

impl AlignedPage {
    pub fn new() -> Self {
        AlignedPage(Box::new(Aligned([0; POOL_PAGE])))
    }
    pub fn bytes(&mut self) -> &mut [u8] {
        &mut self.0 .0
    }
}
