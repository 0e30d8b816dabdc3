//! The page table itself: per-family stores plus a per-domain reverse index.
//!
//! Layout and locking, and why:
//! - Each family owns its own `Store` (sharded records + page index, see `store`).
//!   The family wall (DESIGN.md invariant 3) is structural: a lookup can only reach
//!   the store of the caller's family.
//! - Each domain owns its reverse index frame -> record behind its own mutex: a swiss
//!   table of u32 record refs, hashed by the frame read from the record. Only the
//!   domain's own registrations and invalidations, and its removal, take that mutex, so
//!   every change to a domain's entries is serialised, and the store and reverse index
//!   agree whenever the mutex is free. Different domains never contend. Lock order:
//!   domain mutex, then one store shard lock at a time (inside `Store` calls).
//! - A lookup takes no mutex: two shard read locks (domain map, family store shard)
//!   and striped counters.
//! - Hashing is aHash with a per-table random seed: several times cheaper than SipHash
//!   on these u64 keys, and clients still cannot precompute colliding keys.
//! - Membership changes (family create/add/remove/destroy, remove_domain) are rare and
//!   take one control mutex, so they cannot interleave with each other.

use ahash::RandomState;
use dashmap::DashMap;
use hashbrown::HashTable;
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::ids::{DomainId, Entry, FamilyId, Frame, PageKey, Registration};
use crate::packed::{pack_frame, unpack_frame, PageShift, Record};
use crate::stats::{FamilyCounters, FamilyStats};
use crate::store::{Full, Ref, Store, MAX_FRAMES_PER_PAGE};

/// Settings of a table.
#[derive(Debug, Clone, Copy)]
pub struct TableConfig {
    /// Most entries one domain may hold at once; registering more fails with
    /// `Error::QuotaExceeded`.
    pub quota_per_domain: usize,
}

impl Default for TableConfig {
    fn default() -> Self {
        // A 64 GiB buffer pool of 16 KiB pages.
        Self {
            quota_per_domain: 4 << 20,
        }
    }
}

struct FamilyState {
    id: FamilyId,
    store: Store,
    /// Guarded in practice by `PageTable::control`; the mutex only satisfies Sync.
    members: Mutex<BTreeSet<DomainId>>,
    counters: FamilyCounters,
}

struct DomainState {
    id: DomainId,
    family: Arc<FamilyState>,
    frames: Mutex<DomainFrames>,
    /// Mirrors `frames.removed` for `DomainHandle` lookups, which take no lock.
    gone: AtomicBool,
}

#[derive(Default)]
struct DomainFrames {
    /// The domain's records in its family's store, found by frame
    /// (`Store::frame_hash` of the record's frame).
    by_frame: HashTable<Ref>,
    /// Set once the domain left its family; later registrations must fail instead of
    /// leaving entries nobody will remove.
    removed: bool,
}

impl DomainFrames {
    /// The record of `frame` (packed), if this domain registered it.
    fn find(&self, store: &Store, frame: u64) -> Option<(Ref, Record)> {
        let mut found = None;
        self.by_frame.find(store.frame_hash(frame), |&r| {
            let rec = store.record(r);
            let hit = rec.frame() == frame;
            if hit {
                found = Some((r, rec));
            }
            hit
        })?;
        found
    }

    fn insert(&mut self, store: &Store, frame: u64, r: Ref) {
        // Growth rehashes by reading each record's frame; `Store` takes its locks per
        // call, and no store lock is held here.
        self.by_frame
            .insert_unique(store.frame_hash(frame), r, |&x| {
                store.frame_hash(store.record(x).frame())
            });
    }

    fn remove(&mut self, store: &Store, frame: u64, r: Ref) {
        if let Ok(e) = self
            .by_frame
            .find_entry(store.frame_hash(frame), |&x| x == r)
        {
            e.remove();
        }
    }

    fn contains(&self, store: &Store, frame: u64, r: Ref) -> bool {
        self.by_frame
            .find(store.frame_hash(frame), |&x| x == r)
            .is_some()
    }
}

/// The page table. Cheap to share: put it in an `Arc`.
pub struct PageTable {
    families: DashMap<FamilyId, Arc<FamilyState>, RandomState>,
    domains: DashMap<DomainId, Arc<DomainState>, RandomState>,
    control: Mutex<()>,
    config: TableConfig,
}

impl Default for PageTable {
    fn default() -> Self {
        Self::new(TableConfig::default())
    }
}

impl PageTable {
    pub fn new(config: TableConfig) -> Self {
        Self {
            families: DashMap::with_hasher(RandomState::new()),
            // Every `PageTable::lookup` read-locks its domain's shard; more shards make
            // it rarer that two busy domains share a lock word.
            domains: DashMap::with_hasher_and_shard_amount(RandomState::new(), 64),
            control: Mutex::new(()),
            config,
        }
    }

    pub fn config(&self) -> TableConfig {
        self.config
    }

    // ---- control plane -------------------------------------------------------------

    pub fn create_family(&self, family: FamilyId) -> Result<()> {
        let _c = self.control.lock();
        if self.families.contains_key(&family) {
            return Err(Error::FamilyExists(family));
        }
        self.families.insert(
            family,
            Arc::new(FamilyState {
                id: family,
                store: Store::new(),
                members: Mutex::new(BTreeSet::new()),
                counters: FamilyCounters::default(),
            }),
        );
        Ok(())
    }

    /// Removes the family, its members' memberships and all its entries.
    pub fn destroy_family(&self, family: FamilyId) -> Result<()> {
        let _c = self.control.lock();
        let (_, fam) = self
            .families
            .remove(&family)
            .ok_or(Error::UnknownFamily(family))?;
        let members = std::mem::take(&mut *fam.members.lock());
        for d in members {
            if let Some((_, dom)) = self.domains.remove(&d) {
                self.drop_entries(&dom, true);
            }
        }
        fam.store.clear();
        Ok(())
    }

    /// Makes `domain` a member of `family`. A domain belongs to at most one family.
    pub fn add_to_family(&self, family: FamilyId, domain: DomainId) -> Result<()> {
        let _c = self.control.lock();
        let fam = self
            .families
            .get(&family)
            .map(|f| f.clone())
            .ok_or(Error::UnknownFamily(family))?;
        if let Some(existing) = self.domains.get(&domain) {
            return Err(Error::AlreadyInFamily {
                domain,
                family: existing.family.id,
            });
        }
        fam.members.lock().insert(domain);
        self.domains.insert(
            domain,
            Arc::new(DomainState {
                id: domain,
                family: fam,
                frames: Mutex::new(DomainFrames::default()),
                gone: AtomicBool::new(false),
            }),
        );
        Ok(())
    }

    /// Takes `domain` out of `family`, dropping its entries.
    pub fn remove_from_family(&self, family: FamilyId, domain: DomainId) -> Result<usize> {
        let _c = self.control.lock();
        match self.domains.get(&domain) {
            None => return Err(Error::UnknownDomain(domain)),
            Some(d) if d.family.id != family => return Err(Error::NotInFamily { domain, family }),
            Some(_) => {}
        }
        Ok(self.remove_domain_locked(domain))
    }

    /// Drops every entry of `domain` and its family membership.
    pub fn remove_domain(&self, domain: DomainId) -> Result<usize> {
        let _c = self.control.lock();
        if !self.domains.contains_key(&domain) {
            return Err(Error::UnknownDomain(domain));
        }
        Ok(self.remove_domain_locked(domain))
    }

    fn remove_domain_locked(&self, domain: DomainId) -> usize {
        let Some((_, dom)) = self.domains.remove(&domain) else {
            return 0;
        };
        dom.family.members.lock().remove(&domain);
        self.drop_entries(&dom, true)
    }

    /// Drops every entry of `domain` but keeps it in its family (a client that
    /// disconnected may come back and register again).
    pub fn clear_domain(&self, domain: DomainId) -> Result<usize> {
        let dom = self.domain(domain)?;
        Ok(self.drop_entries(&dom, false))
    }

    fn drop_entries(&self, dom: &DomainState, mark_removed: bool) -> usize {
        let mut frames = dom.frames.lock();
        if mark_removed {
            frames.removed = true;
            dom.gone.store(true, Ordering::Relaxed);
        }
        let refs: Vec<Ref> = std::mem::take(&mut frames.by_frame).into_iter().collect();
        let n = refs.len();
        dom.family.store.remove_many(refs);
        dom.family
            .counters
            .entries
            .fetch_sub(n as i64, Ordering::Relaxed);
        n
    }

    // ---- data plane ----------------------------------------------------------------

    fn domain(&self, domain: DomainId) -> Result<Arc<DomainState>> {
        self.domains
            .get(&domain)
            .map(|d| d.clone())
            .ok_or(Error::UnknownDomain(domain))
    }

    pub fn register(&self, domain: DomainId, reg: Registration) -> Result<()> {
        self.register_many(domain, std::slice::from_ref(&reg))
            .map(|_| ())
    }

    /// Registers frames of `domain`, a caller that is not a Xen domain (it registers no
    /// grants). See `register_many_as`.
    pub fn register_many(&self, domain: DomainId, regs: &[Registration]) -> Result<usize> {
        self.register_many_as(domain, None, regs)
    }

    /// Registers frames of `domain`, whose connection comes from Xen domain `xen` (None:
    /// not a Xen domain; the caller's identity comes from its connection, never from
    /// a message). A grant frame must be one `xen` issued. Re-registering a frame moves
    /// it to the new key (or updates its LSN). The whole batch is validated first; only
    /// the quota can stop it midway, and then the entries before the failing one stay
    /// registered.
    pub fn register_many_as(
        &self,
        domain: DomainId,
        xen: Option<u16>,
        regs: &[Registration],
    ) -> Result<usize> {
        let dom = self.domain(domain)?;
        let family = dom.family.id;
        let mut records = Vec::with_capacity(regs.len());
        for r in regs {
            if r.key.family != family {
                return Err(Error::NotInFamily {
                    domain,
                    family: r.key.family,
                });
            }
            if let Frame::XenGrant { issuer, .. } = r.frame {
                if xen != Some(issuer) {
                    return Err(Error::ForeignGrant {
                        domain,
                        frame: r.frame,
                        caller: xen,
                    });
                }
            }
            records.push(Record::new(
                r.key.page_bits(),
                pack_frame(r.frame)?,
                r.lsn,
                r.valid_from,
                domain.0,
                PageShift::from_size(r.page_size)?,
            ));
        }
        let store = &dom.family.store;
        let mut frames = dom.frames.lock();
        if frames.removed {
            return Err(Error::UnknownDomain(domain));
        }
        let full = |why: Full, page: u64| match why {
            Full::Shard => Error::TableFull { family },
            Full::Page => Error::PageCrowded {
                key: PageKey::from_page_bits(family, page),
                max: MAX_FRAMES_PER_PAGE,
            },
        };
        for (done, rec) in records.into_iter().enumerate() {
            let frame = rec.frame();
            match frames.find(store, frame) {
                Some((_, old)) if old.unflagged() == rec => {}
                Some((r, _)) => {
                    let moved = store.replace(r, rec).map_err(|w| full(w, rec.page))?;
                    if moved != r {
                        frames.remove(store, frame, r);
                        frames.insert(store, frame, moved);
                    }
                }
                None => {
                    if frames.by_frame.len() >= self.config.quota_per_domain {
                        tracing::debug!(%domain, done, "quota stopped a registration batch");
                        return Err(Error::QuotaExceeded {
                            domain,
                            quota: self.config.quota_per_domain,
                        });
                    }
                    let r = store.insert(rec).map_err(|w| full(w, rec.page))?;
                    frames.insert(store, frame, r);
                    dom.family.counters.entries.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(regs.len())
    }

    /// The frame that may serve `key` to a replica whose snapshot LSN is `max_lsn`:
    /// the newest entry with `lsn <= max_lsn`, returned only if its
    /// `valid_from >= max_lsn` (the share rule, docs/architecture.md), else `None`.
    /// `domain` is the caller; it must be a member of `key.family`.
    pub fn lookup(&self, domain: DomainId, key: PageKey, max_lsn: u64) -> Result<Option<Entry>> {
        let dom = self
            .domains
            .get(&domain)
            .ok_or(Error::UnknownDomain(domain))?;
        lookup_in(&dom, None, key, max_lsn)
    }

    /// `lookup` for a batch of keys of one family; results in the order of `keys`.
    pub fn lookup_many(
        &self,
        domain: DomainId,
        keys: &[PageKey],
        max_lsn: u64,
    ) -> Result<Vec<Option<Entry>>> {
        let dom = self
            .domains
            .get(&domain)
            .ok_or(Error::UnknownDomain(domain))?;
        lookup_many_in(&dom, None, keys, max_lsn)
    }

    /// A handle for repeated lookups by one domain: it skips the domain map (a shard
    /// lock every caller shares) and checks membership with one relaxed load. It
    /// stops working (`UnknownDomain`) once the domain leaves its family; get a new
    /// one if the domain is added again.
    pub fn handle(&self, domain: DomainId) -> Result<DomainHandle> {
        self.handle_as(domain, None)
    }

    /// `handle` for a connection from Xen domain `xen`: its lookups return only grants
    /// issued to `xen` (and frames that are not grants).
    pub fn handle_as(&self, domain: DomainId, xen: Option<u16>) -> Result<DomainHandle> {
        Ok(DomainHandle {
            dom: self.domain(domain)?,
            xen,
        })
    }

    /// Removes the entry of `frame` of `domain` (its bytes are about to change or the
    /// frame is being evicted). Returns false if the frame was not registered.
    pub fn invalidate(&self, domain: DomainId, frame: Frame) -> Result<bool> {
        let dom = self.domain(domain)?;
        let bits = pack_frame(frame)?;
        let store = &dom.family.store;
        let mut frames = dom.frames.lock();
        let Some((r, _)) = frames.find(store, bits) else {
            return Ok(false);
        };
        frames.remove(store, bits, r);
        store.remove(r);
        let c = &dom.family.counters;
        c.entries.fetch_sub(1, Ordering::Relaxed);
        c.invalidations.add(1);
        Ok(true)
    }

    // ---- inspection ------------------------------------------------------------------

    pub fn family_of(&self, domain: DomainId) -> Option<FamilyId> {
        self.domains.get(&domain).map(|d| d.family.id)
    }

    pub fn families(&self) -> Vec<FamilyId> {
        let mut v: Vec<_> = self.families.iter().map(|f| *f.key()).collect();
        v.sort();
        v
    }

    pub fn members(&self, family: FamilyId) -> Result<Vec<DomainId>> {
        let fam = self
            .families
            .get(&family)
            .ok_or(Error::UnknownFamily(family))?;
        let members = fam.members.lock().iter().copied().collect();
        Ok(members)
    }

    /// Entries `domain` holds now (what the quota counts).
    pub fn domain_entries(&self, domain: DomainId) -> Result<usize> {
        Ok(self.domain(domain)?.frames.lock().by_frame.len())
    }

    pub fn family_stats(&self, family: FamilyId) -> Result<FamilyStats> {
        let fam = self
            .families
            .get(&family)
            .ok_or(Error::UnknownFamily(family))?;
        let members = fam.members.lock().len();
        Ok(fam.counters.snapshot(family, members))
    }

    /// Stats of every family, ordered by family id.
    pub fn stats(&self) -> Vec<FamilyStats> {
        self.families()
            .into_iter()
            .filter_map(|f| self.family_stats(f).ok())
            .collect()
    }

    /// Every entry, sorted; for tests and debugging (it walks the whole table).
    pub fn dump(&self) -> Vec<(PageKey, Entry)> {
        let mut out = Vec::new();
        for fam in self.families.iter() {
            fam.store.for_each(|_, rec| {
                out.push((PageKey::from_page_bits(fam.id, rec.page), rec.unpack()))
            });
        }
        out.sort_by_key(|(k, e)| (*k, e.owner, e.frame));
        out
    }

    /// Checks that forward map, reverse indexes, members and gauges agree. Meant for
    /// tests; call it when no operation is running.
    pub fn check_consistency(&self) -> std::result::Result<(), String> {
        let _c = self.control.lock();
        for fam in self.families.iter() {
            fam.store.check().map_err(|e| format!("{}: {e}", fam.id))?;
            // Collected first: checking takes domain mutexes, which must not be taken
            // under a store lock (lock order).
            let mut records = Vec::new();
            fam.store.for_each(|r, rec| records.push((r, rec)));
            let forward = records.len();
            for (r, rec) in records {
                let owner = DomainId(rec.owner);
                let dom = self.domains.get(&owner).ok_or_else(|| {
                    format!("{}: entry of {owner}, which is not a member", fam.id)
                })?;
                if dom.family.id != fam.id {
                    return Err(format!(
                        "{}: entry of {owner} from {}",
                        fam.id, dom.family.id
                    ));
                }
                if !dom.frames.lock().contains(&fam.store, rec.frame(), r) {
                    return Err(format!(
                        "{owner} frame {:?}: reverse index disagrees",
                        unpack_frame(rec.frame())
                    ));
                }
            }
            let mut reverse = 0usize;
            for d in fam.members.lock().iter() {
                let dom = self
                    .domains
                    .get(d)
                    .ok_or_else(|| format!("{}: member {d} has no state", fam.id))?;
                reverse += dom.frames.lock().by_frame.len();
            }
            let gauge = fam.counters.entries.load(Ordering::Relaxed);
            if forward != reverse || gauge != forward as i64 {
                return Err(format!(
                    "{}: forward {forward}, reverse {reverse}, gauge {gauge}",
                    fam.id
                ));
            }
        }
        for dom in self.domains.iter() {
            if !self.families.contains_key(&dom.family.id) {
                return Err(format!("{} belongs to a destroyed family", dom.id));
            }
        }
        Ok(())
    }
}

/// `xen`: the caller's Xen domid (None: not a Xen domain); a grant serves only its
/// grantee.
fn lookup_in(
    dom: &DomainState,
    xen: Option<u16>,
    key: PageKey,
    max_lsn: u64,
) -> Result<Option<Entry>> {
    let fam = &dom.family;
    if fam.id != key.family {
        return Err(Error::NotInFamily {
            domain: dom.id,
            family: key.family,
        });
    }
    let found = fam.store.serving(key.page_bits(), max_lsn, xen);
    let c = &fam.counters;
    c.lookups.add(1);
    if found.is_some() { &c.hits } else { &c.misses }.add(1);
    Ok(found)
}

fn lookup_many_in(
    dom: &DomainState,
    xen: Option<u16>,
    keys: &[PageKey],
    max_lsn: u64,
) -> Result<Vec<Option<Entry>>> {
    let fam = &dom.family;
    if let Some(k) = keys.iter().find(|k| k.family != fam.id) {
        return Err(Error::NotInFamily {
            domain: dom.id,
            family: k.family,
        });
    }
    let out: Vec<Option<Entry>> = keys
        .iter()
        .map(|k| fam.store.serving(k.page_bits(), max_lsn, xen))
        .collect();
    let hits = out.iter().filter(|e| e.is_some()).count() as u64;
    let c = &fam.counters;
    c.lookups.add(keys.len() as u64);
    c.hits.add(hits);
    c.misses.add(keys.len() as u64 - hits);
    Ok(out)
}

/// See `PageTable::handle`.
pub struct DomainHandle {
    dom: Arc<DomainState>,
    /// The Xen domid the handle's connection comes from (None: not a Xen domain).
    xen: Option<u16>,
}

impl DomainHandle {
    pub fn domain(&self) -> DomainId {
        self.dom.id
    }

    pub fn family(&self) -> FamilyId {
        self.dom.family.id
    }

    fn check(&self) -> Result<&DomainState> {
        if self.dom.gone.load(Ordering::Relaxed) {
            return Err(Error::UnknownDomain(self.dom.id));
        }
        Ok(&self.dom)
    }

    /// `PageTable::lookup` for this handle's domain.
    pub fn lookup(&self, key: PageKey, max_lsn: u64) -> Result<Option<Entry>> {
        lookup_in(self.check()?, self.xen, key, max_lsn)
    }

    /// `PageTable::lookup_many` for this handle's domain.
    pub fn lookup_many(&self, keys: &[PageKey], max_lsn: u64) -> Result<Vec<Option<Entry>>> {
        lookup_many_in(self.check()?, self.xen, keys, max_lsn)
    }
}
