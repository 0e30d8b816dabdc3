//! The Xen frame stores: a source's pool granted to its replicas, and a replica's view
//! of what it was granted.
//!
//! Source (`XenSourceStore`): the family's pool is the `local` one (`pool::Pool`, a file
//! of 16 KiB slots written once and never changed, with its record file), kept in the
//! source domU. The source maps its own slots over its buffer-pool frames exactly as in
//! local mode. What Xen adds: the pool file is mapped shared into the agent (the
//! module's pool window), and every slot is granted read-only to every replica domain
//! of the family (`add_grantee`), each grant a frame of its own in the page table,
//! `Frame::XenGrant { issuer, grantee, gref }`: a replica is only ever handed the
//! grants issued to it (pagetabled serves a grant to its grantee alone). Grants are
//! made when the directory asks for the offer log, so a slot is granted once per
//! grantee whether it was offered before or after the replica came.
//!
//! Since slots never change, a grant's bytes never change while it is mapped
//! (DESIGN.md invariant 2) and no grant has to be ended while its grantee lives. When
//! the guest side names a replica no longer (it stopped or was destroyed), the grants
//! issued to it are ended, those it still maps at a later sync (`Revoked::StillMapped`
//! keeps the pin); all end when the device closes (the module retries the ones still
//! mapped).
//!
//! Replica (`XenReplicaStore`): maps a grant issued to its own domid over a buffer-pool
//! frame (`grant::map_over`: read-only, made private on the first write or before a read
//! into it) and copies one in copy mode. It cannot see the source's records: the page
//! table's entry (registered over the source's own channel) and the agent's check of
//! the mapped bytes (identity, LSN, checksum) stand for them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use pagetable::Frame;
use parking_lot::Mutex;

use super::issuer::Revoked;
use super::{GrantDevice, GrantRef, GRANTS_PER_FRAME};
use crate::error::{AgentError, Result};
use crate::frame_store::{FrameRecord, FrameStore, StoredFrame, FRAME_SIZE};
use crate::pool::Pool;

/// What grants a source's pool frames: `/dev/dbfork_gnt` (`issuer::DbforkGnt`), or a
/// fake in tests.
pub trait GrantIssuer: Send + Sync {
    /// Names the pool window once: every frame granted lies in `[addr, addr + len)`.
    fn set_pool(&self, addr: usize, len: usize) -> Result<()>;
    /// Grants the frame at `addr` read-only to `domid`; returns its first reference
    /// (its pages have consecutive ones).
    fn grant_frame(&self, addr: usize, domid: u16) -> Result<u32>;
    /// Ends one grant (a reference), unless its grantee still maps it.
    fn revoke(&self, gref: u32) -> Result<Revoked>;
    fn describe(&self) -> String;
}

/// Most replica domains a source grants to: offer-log positions interleave them.
pub const MAX_GRANTEES: u64 = 64;

/// The grants made so far.
#[derive(Default)]
struct GrantBook {
    /// In the order they were added: a grantee's index is its place in a slot's run of
    /// log positions.
    grantees: Vec<u16>,
    /// (slot, grantee) -> first reference.
    by_slot: HashMap<(u64, u16), u32>,
    /// (grantee, first reference) -> slot.
    by_ref: HashMap<(u16, u32), u64>,
    /// References of grantees that went, not ended yet (still mapped when last asked).
    retiring: Vec<u32>,
}

pub struct XenSourceStore {
    pool: Pool,
    issuer: Box<dyn GrantIssuer>,
    /// This domain's Xen domid (the issuer of every grant).
    own: u16,
    /// The pool file mapped shared: the module pins and grants its pages.
    window: usize,
    window_len: usize,
    book: Mutex<GrantBook>,
    epoch: AtomicU64,
}

impl XenSourceStore {
    /// The source's store over `pool` (opened for writing, capped: the cap is the
    /// window granted from), granting through `issuer` as domain `own`.
    pub fn open(pool: Pool, issuer: Box<dyn GrantIssuer>, own: u16) -> Result<XenSourceStore> {
        let slots = pool.max_slots().ok_or_else(|| AgentError::Config {
            var: "DBFORK_POOL_MAX_BYTES",
            msg: "a pool shared through Xen grants needs a cap (the grant budget)".into(),
        })?;
        let window_len = usize::try_from(slots).unwrap_or(usize::MAX) * FRAME_SIZE;
        if window_len == 0 {
            return Err(AgentError::Config {
                var: "DBFORK_POOL_MAX_BYTES",
                msg: format!("below one {FRAME_SIZE}-byte frame: nothing could be shared"),
            });
        }
        // SAFETY: a new shared mapping of the pool file, ours; the pages past its end
        // are never touched (only appended slots are granted).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                window_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                pool.fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(AgentError::last_os("mapping the pool for grants"));
        }
        let store = XenSourceStore {
            pool,
            issuer,
            own,
            window: p as usize,
            window_len,
            book: Mutex::new(GrantBook::default()),
            epoch: AtomicU64::new(0),
        };
        store.issuer.set_pool(store.window, window_len)?;
        Ok(store)
    }

    /// Grants every slot, offered so far and from now on, to replica domain `domid` as
    /// well. The offer log starts again (`epoch`) so the directory registers the
    /// grants of the slots offered before.
    pub fn add_grantee(&self, domid: u16) -> Result<()> {
        let mut book = self.book.lock();
        if book.grantees.contains(&domid) {
            return Ok(());
        }
        if book.grantees.len() as u64 >= MAX_GRANTEES {
            return Err(AgentError::Config {
                var: "grantees",
                msg: format!("a source grants to at most {MAX_GRANTEES} replica domains"),
            });
        }
        if domid == self.own {
            return Err(AgentError::Config {
                var: "grantees",
                msg: format!("domain {domid} is the source itself"),
            });
        }
        book.grantees.push(domid);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Stops granting to replica domain `domid` (it went): the grants issued to it
    /// end, now or at a later sync for those it still maps; the offer log starts again
    /// without it.
    pub fn remove_grantee(&self, domid: u16) {
        let mut book = self.book.lock();
        let Some(i) = book.grantees.iter().position(|&d| d == domid) else {
            return;
        };
        book.grantees.remove(i);
        let mut refs: Vec<u32> = book
            .by_slot
            .iter()
            .filter(|((_, g), _)| *g == domid)
            .flat_map(|(_, &first)| (0..GRANTS_PER_FRAME as u32).map(move |k| first + k))
            .collect();
        refs.sort_unstable();
        book.by_slot.retain(|(_, g), _| *g != domid);
        book.by_ref.retain(|(g, _), _| *g != domid);
        book.retiring.extend(refs);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.end_retiring(&mut book);
    }

    /// Ends what it can of the grants of grantees that went.
    fn end_retiring(&self, book: &mut GrantBook) {
        book.retiring
            .retain(|&gref| match self.issuer.revoke(gref) {
                Ok(Revoked::Ended) => false,
                Ok(Revoked::StillMapped) => true,
                Err(e) => {
                    // Not ours to end (any more): nothing left to retry.
                    tracing::warn!("dbfork agent: ending grant {gref}: {e}");
                    false
                }
            });
    }

    /// Grants of grantees that went, not ended yet.
    pub fn retiring(&self) -> usize {
        self.book.lock().retiring.len()
    }

    /// The replica domains granted to, in the order they were added.
    pub fn grantees(&self) -> Vec<u16> {
        self.book.lock().grantees.clone()
    }

    /// The first reference of `slot` granted to `grantee`, granting it now if needed.
    fn granted(&self, book: &mut GrantBook, slot: u64, grantee: u16) -> Result<u32> {
        if let Some(&gref) = book.by_slot.get(&(slot, grantee)) {
            return Ok(gref);
        }
        let off = usize::try_from(slot)
            .unwrap_or(usize::MAX)
            .saturating_mul(FRAME_SIZE);
        if off >= self.window_len {
            return Err(AgentError::PoolFull { slots: slot });
        }
        let gref = self.issuer.grant_frame(self.window + off, grantee)?;
        book.by_slot.insert((slot, grantee), gref);
        book.by_ref.insert((grantee, gref), slot);
        Ok(gref)
    }

    /// The pool slot a frame of this store names.
    fn slot_of(&self, frame: Frame) -> Result<u64> {
        match frame {
            Frame::LocalPool { offset } if offset % FRAME_SIZE as u64 == 0 => {
                Ok(offset / FRAME_SIZE as u64)
            }
            Frame::XenGrant {
                issuer,
                grantee,
                gref,
            } if issuer == self.own => self
                .book
                .lock()
                .by_ref
                .get(&(grantee, gref))
                .copied()
                .ok_or(AgentError::ForeignFrame(frame)),
            other => Err(AgentError::ForeignFrame(other)),
        }
    }

    fn local(&self, frame: Frame) -> Result<Frame> {
        Ok(Frame::LocalPool {
            offset: self.slot_of(frame)? * FRAME_SIZE as u64,
        })
    }
}

impl Drop for XenSourceStore {
    fn drop(&mut self) {
        // SAFETY: our own window mapping; the module holds its own pins of granted pages.
        unsafe { libc::munmap(self.window as *mut libc::c_void, self.window_len) };
    }
}

impl FrameStore for XenSourceStore {
    fn offer(&self, page: &[u8], record: FrameRecord) -> Result<Frame> {
        self.pool.offer(page, record)
    }

    fn record(&self, frame: Frame) -> Result<Option<FrameRecord>> {
        self.pool.record(self.local(frame)?)
    }

    fn read(&self, frame: Frame, dst: &mut [u8]) -> Result<()> {
        self.pool.read(self.local(frame)?, dst)
    }

    /// The pool's log with each slot once per grantee (position `slot * MAX_GRANTEES +
    /// grantee index`), granted on the way.
    fn offered_since(&self, from: u64, max: usize) -> Result<Vec<StoredFrame>> {
        let (first_slot, first_grantee) = (from / MAX_GRANTEES, from % MAX_GRANTEES);
        let mut book = self.book.lock();
        if !book.retiring.is_empty() {
            self.end_retiring(&mut book);
        }
        if book.grantees.is_empty() || max == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (slot, record) in self.pool.records_from(first_slot, max)? {
            let start = if slot == first_slot { first_grantee } else { 0 };
            for gi in start as usize..book.grantees.len() {
                if out.len() >= max {
                    return Ok(out);
                }
                let grantee = book.grantees[gi];
                let gref = match self.granted(&mut book, slot, grantee) {
                    Ok(g) => g,
                    // What was granted so far is registered; the rest waits (the grant
                    // table is full, or the pool window ended).
                    Err(e) if !out.is_empty() => {
                        tracing::warn!("dbfork agent: granting pool slot {slot}: {e}");
                        return Ok(out);
                    }
                    Err(e) => return Err(e),
                };
                out.push(StoredFrame {
                    seq: slot * MAX_GRANTEES + gi as u64,
                    frame: Frame::XenGrant {
                        issuer: self.own,
                        grantee,
                        gref,
                    },
                    record,
                });
            }
        }
        Ok(out)
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn published(&self, own: Frame) -> Vec<Frame> {
        let Ok(slot) = self.slot_of(own) else {
            return Vec::new();
        };
        let book = self.book.lock();
        book.grantees
            .iter()
            .filter_map(|&grantee| {
                let gref = *book.by_slot.get(&(slot, grantee))?;
                Some(Frame::XenGrant {
                    issuer: self.own,
                    grantee,
                    gref,
                })
            })
            .collect()
    }

    fn own_frame(&self, published: Frame) -> Frame {
        self.local(published).unwrap_or(published)
    }

    fn admit(&self, domains: &[u16]) -> Result<()> {
        for gone in self.grantees().into_iter().filter(|d| !domains.contains(d)) {
            self.remove_grantee(gone);
        }
        domains.iter().try_for_each(|&d| self.add_grantee(d))
    }

    unsafe fn map_over(&self, frame: Frame, dst: *mut u8) -> Result<()> {
        let local = self.local(frame)?;
        // SAFETY: the caller's contract.
        unsafe { self.pool.map_over(local, dst) }
    }

    unsafe fn restore_private(&self, dst: *mut u8) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe { self.pool.restore_private(dst) }
    }

    fn describe(&self) -> String {
        format!(
            "{}, granted to domains {:?} through {} as domain {}",
            self.pool.describe(),
            self.grantees(),
            self.issuer.describe(),
            self.own
        )
    }
}

/// A replica domain's store: the grants issued to it.
pub struct XenReplicaStore {
    dev: Box<dyn GrantDevice>,
    /// This domain's Xen domid: only grants issued to it are mapped.
    own: u16,
}

impl XenReplicaStore {
    pub fn new(dev: Box<dyn GrantDevice>, own: u16) -> XenReplicaStore {
        XenReplicaStore { dev, own }
    }

    /// The grants of a frame issued to this domain.
    fn refs(&self, frame: Frame) -> Result<[GrantRef; super::GRANTS_PER_FRAME]> {
        match frame {
            Frame::XenGrant {
                issuer,
                grantee,
                gref,
            } if grantee == self.own => Ok(GrantRef::frame(issuer, gref)),
            other => Err(AgentError::ForeignFrame(other)),
        }
    }
}

impl FrameStore for XenReplicaStore {
    fn offer(&self, _page: &[u8], _record: FrameRecord) -> Result<Frame> {
        Err(AgentError::Config {
            var: "DBFORK_AGENT_ROLE",
            msg: "a replica's grant store offers no frames (only the source shares)".into(),
        })
    }

    /// Not visible from a replica (the records are the source's): the page table's
    /// entry and the check of the mapped bytes stand for them.
    fn record(&self, _frame: Frame) -> Result<Option<FrameRecord>> {
        Ok(None)
    }

    fn records_visible(&self) -> bool {
        false
    }

    fn writes_fault(&self) -> bool {
        true
    }

    fn read(&self, frame: Frame, dst: &mut [u8]) -> Result<()> {
        if dst.len() != FRAME_SIZE {
            return Err(AgentError::io(
                format!("reading a granted frame into {} bytes", dst.len()),
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        let refs = self.refs(frame)?;
        // SAFETY: dst is FRAME_SIZE writable bytes (checked above).
        unsafe { super::copy_from(self.dev.as_ref(), &refs, dst.as_mut_ptr()) }
    }

    fn offered_since(&self, _from: u64, _max: usize) -> Result<Vec<StoredFrame>> {
        Ok(Vec::new())
    }

    unsafe fn map_over(&self, frame: Frame, dst: *mut u8) -> Result<()> {
        let refs = self.refs(frame)?;
        // SAFETY: the caller's contract (a buffer-pool frame it owns).
        unsafe { super::map_over(self.dev.as_ref(), &refs, dst) }
    }

    unsafe fn restore_private(&self, dst: *mut u8) -> Result<()> {
        // SAFETY: the caller's contract.
        unsafe { super::restore_private(dst) }
    }

    fn describe(&self) -> String {
        format!(
            "grants to domain {} through {}",
            self.own,
            self.dev.describe()
        )
    }
}
