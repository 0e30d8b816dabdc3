//! One family's entries, laid out for memory per entry (target <= 64 bytes).
//!
//! Layout, and why:
//! - 16 shards, chosen by bits of the page hash that the hash tables inside do not
//!   use. A lookup takes one shard read lock; shards sit on their own cache lines so
//!   two cores rarely write the same lock word.
//! - In each shard, records (36 bytes, `packed::Record`) live in one vector that grows
//!   by 1/16 at a time (not by doubling), so at most ~6% of it is spare; growth of a
//!   large vector is an `mremap` in glibc, not a copy. One vector rather than chunks,
//!   because a lookup is then one dependent load (index -> record) fewer. Freed slots
//!   are chained through their `lsn` field and reused.
//! - The page index holds only a u32 slot number per entry (4 bytes + 1 control byte
//!   in a swiss table); the key is read from the record on a probe, and the table's
//!   7-bit tags make that read rare for other keys. A page held by several frames is
//!   several index entries under the same hash (a multi-map), so a record needs no
//!   "next" field. Hash tables double, so an index costs 5.7 to 11.4 bytes/entry.
//! - Every record is read and written under its shard's lock; nothing here is
//!   `unsafe`.

use ahash::RandomState;
use hashbrown::HashTable;
use parking_lot::RwLock;

use crate::ids::Entry;
use crate::packed::{serving, usable_by, Record};

const SHARD_BITS: u32 = 4;
const SHARDS: usize = 1 << SHARD_BITS;
const SLOT_BITS: u32 = u32::BITS - SHARD_BITS;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
/// Smallest growth step of an arena, in records.
const MIN_GROWTH: usize = 64;
const NO_SLOT: u32 = u32::MAX;

/// Most records one page may have: every frame of the family that holds some
/// version of it. Far above what a family uses (members x versions kept), and it
/// bounds the walk over a page's records that lookups of shared pages and every
/// insert do, which one domain could otherwise make as long as its quota.
pub const MAX_FRAMES_PER_PAGE: usize = 1024;

/// Why a record could not be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// The shard ran out of slot numbers (2^28 records).
    Shard,
    /// The page already has `MAX_FRAMES_PER_PAGE` records.
    Page,
}

/// A record's address in the store: shard in the top bits, arena slot below. Stable
/// while the record lives (a record that moves to another shard gets a new one).
pub(crate) type Ref = u32;

fn split(r: Ref) -> (usize, u32) {
    ((r >> SLOT_BITS) as usize, r & SLOT_MASK)
}

fn join(shard: usize, slot: u32) -> Ref {
    ((shard as u32) << SLOT_BITS) | slot
}

/// Bits 32.. of the hash: the swiss tables use the low bits for the bucket and the
/// top 7 as the tag, so the shard choice does not thin out either.
fn shard_of(hash: u64) -> usize {
    (hash >> 32) as usize & (SHARDS - 1)
}

struct Arena {
    /// Slots handed out so far (live or free); `records.len()`.
    records: Vec<Record>,
    /// Head of the free list, threaded through the free records' `lsn`.
    free: u32,
    live: u32,
}

impl Arena {
    fn new() -> Self {
        Arena {
            records: Vec::new(),
            free: NO_SLOT,
            live: 0,
        }
    }

    fn get(&self, slot: u32) -> Record {
        self.records[slot as usize]
    }

    fn get_mut(&mut self, slot: u32) -> &mut Record {
        &mut self.records[slot as usize]
    }

    fn used(&self) -> u32 {
        self.records.len() as u32
    }

    /// Stores `rec` and returns its slot; None if the shard has no slot numbers left.
    fn alloc(&mut self, rec: Record) -> Option<u32> {
        let slot = if self.free != NO_SLOT {
            let slot = self.free;
            self.free = self.get(slot).lsn as u32;
            *self.get_mut(slot) = rec;
            slot
        } else {
            let slot = self.used();
            if slot > SLOT_MASK {
                return None;
            }
            if self.records.len() == self.records.capacity() {
                let step = (self.records.len() / 16).max(MIN_GROWTH);
                self.records.reserve_exact(step);
            }
            self.records.push(rec);
            slot
        };
        self.live += 1;
        Some(slot)
    }

    fn release(&mut self, slot: u32) {
        let mut rec = Record::FREE;
        rec.lsn = u64::from(self.free);
        *self.get_mut(slot) = rec;
        self.free = slot;
        self.live -= 1;
        if self.live == 0 {
            // An emptied shard (its domains left) gives its memory back.
            *self = Arena::new();
        }
    }
}

struct Shard {
    /// Arena slots, hashed by their record's page.
    index: HashTable<u32>,
    arena: Arena,
}

#[repr(align(128))]
struct Padded(RwLock<Shard>);

/// The entries of one family. Every method takes and releases its shard locks
/// inside, one at a time, so callers may hold their own locks around calls.
pub(crate) struct Store {
    shards: Box<[Padded]>,
    hasher: RandomState,
}

impl Store {
    pub(crate) fn new() -> Self {
        Store {
            shards: (0..SHARDS)
                .map(|_| {
                    Padded(RwLock::new(Shard {
                        index: HashTable::new(),
                        arena: Arena::new(),
                    }))
                })
                .collect(),
            hasher: RandomState::new(),
        }
    }

    fn page_hash(&self, page: u64) -> u64 {
        self.hasher.hash_one(page)
    }

    /// The hash reverse indexes use for a packed frame.
    pub(crate) fn frame_hash(&self, frame: u64) -> u64 {
        // A different input domain than pages, so the two kinds of key never line up.
        self.hasher.hash_one((frame, 1u8))
    }

    /// The entry that may serve `page` to a snapshot at `max_lsn` (`packed::serving`),
    /// among the frames the caller can use (`xen`: its Xen domid; a grant serves only
    /// its grantee). Leaving frames out only loses hits: each record that passes both
    /// bounds of the rule holds the page's version at the snapshot on its own.
    pub(crate) fn serving(&self, page: u64, max_lsn: u64, xen: Option<u16>) -> Option<Entry> {
        let h = self.page_hash(page);
        let g = self.shards[shard_of(h)].0.read();
        let first = g
            .arena
            .get(*g.index.find(h, |&s| g.arena.get(s).page == page)?);
        let usable = |r: &Record| usable_by(r.frame(), xen);
        if !first.shared() {
            return serving(std::iter::once(first).filter(usable), max_lsn).map(|r| r.unpack());
        }
        let candidates = g
            .index
            .iter_hash(h)
            .map(|&slot| g.arena.get(slot))
            .filter(|r| r.page == page)
            .filter(usable);
        serving(candidates, max_lsn).map(|r| r.unpack())
    }

    /// A copy of a live record.
    pub(crate) fn record(&self, r: Ref) -> Record {
        let (shard, slot) = split(r);
        self.shards[shard].0.read().arena.get(slot)
    }

    /// Stores and indexes a new record.
    pub(crate) fn insert(&self, rec: Record) -> Result<Ref, Full> {
        let h = self.page_hash(rec.page);
        let shard = shard_of(h);
        let mut g = self.shards[shard].0.write();
        let Shard { index, arena } = &mut *g;
        if records_of(index, arena, h, rec.page) >= MAX_FRAMES_PER_PAGE {
            return Err(Full::Page);
        }
        let slot = arena.alloc(rec).ok_or(Full::Shard)?;
        let hasher = &self.hasher;
        index.insert_unique(h, slot, |&s| hasher.hash_one(arena.get(s).page));
        flag_shared(index, arena, h, rec.page);
        Ok(join(shard, slot))
    }

    /// Replaces record `r` by `rec` (same owner and frame, maybe another page) and
    /// returns its ref, which changes if the page moved to another shard. On an error
    /// `r` is unchanged.
    pub(crate) fn replace(&self, r: Ref, rec: Record) -> Result<Ref, Full> {
        let (shard, slot) = split(r);
        let h = self.page_hash(rec.page);
        if shard_of(h) != shard {
            let moved = self.insert(rec)?;
            self.remove(r);
            return Ok(moved);
        }
        let mut g = self.shards[shard].0.write();
        let Shard { index, arena } = &mut *g;
        let old = arena.get(slot);
        if old.page != rec.page {
            if records_of(index, arena, h, rec.page) >= MAX_FRAMES_PER_PAGE {
                return Err(Full::Page);
            }
            let old_hash = self.page_hash(old.page);
            unindex(index, old_hash, slot);
            flag_shared(index, arena, old_hash, old.page);
            *arena.get_mut(slot) = rec;
            let hasher = &self.hasher;
            index.insert_unique(h, slot, |&s| hasher.hash_one(arena.get(s).page));
        } else {
            *arena.get_mut(slot) = rec;
        }
        flag_shared(index, arena, h, rec.page);
        Ok(r)
    }

    /// Unindexes and frees record `r`.
    pub(crate) fn remove(&self, r: Ref) {
        let (shard, slot) = split(r);
        let mut g = self.shards[shard].0.write();
        let Shard { index, arena } = &mut *g;
        let page = arena.get(slot).page;
        let h = self.page_hash(page);
        unindex(index, h, slot);
        arena.release(slot);
        flag_shared(index, arena, h, page);
    }

    /// `remove` for many records, one lock per shard.
    pub(crate) fn remove_many(&self, mut refs: Vec<Ref>) {
        refs.sort_unstable();
        for group in refs.chunk_by(|a, b| split(*a).0 == split(*b).0) {
            let mut g = self.shards[split(group[0]).0].0.write();
            let Shard { index, arena } = &mut *g;
            for &r in group {
                let slot = split(r).1;
                let page = arena.get(slot).page;
                let h = self.page_hash(page);
                unindex(index, h, slot);
                arena.release(slot);
                flag_shared(index, arena, h, page);
            }
            if index.is_empty() {
                *index = HashTable::new();
            }
        }
    }

    /// Drops every record.
    pub(crate) fn clear(&self) {
        for s in self.shards.iter() {
            let mut g = s.0.write();
            g.index = HashTable::new();
            g.arena = Arena::new();
        }
    }

    /// Calls `f` with every indexed record, shard by shard (each under its lock).
    pub(crate) fn for_each(&self, mut f: impl FnMut(Ref, Record)) {
        for (shard, s) in self.shards.iter().enumerate() {
            let g = s.0.read();
            for &slot in g.index.iter() {
                f(join(shard, slot), g.arena.get(slot));
            }
        }
    }

    /// Checks that each shard's index and arena agree: every indexed slot is live,
    /// hashes to this shard, and is indexed once; live counts match; the free list
    /// is as long as the arena says.
    pub(crate) fn check(&self) -> Result<(), String> {
        for (shard, s) in self.shards.iter().enumerate() {
            let g = s.0.read();
            let mut seen = std::collections::HashSet::new();
            for &slot in g.index.iter() {
                if slot >= g.arena.used() || !seen.insert(slot) {
                    return Err(format!("shard {shard}: slot {slot} bad or indexed twice"));
                }
                let rec = g.arena.get(slot);
                let h = self.page_hash(rec.page);
                if shard_of(h) != shard || !g.index.iter_hash(h).any(|&x| x == slot) {
                    return Err(format!("shard {shard}: slot {slot} not findable by page"));
                }
                let same_page = g
                    .index
                    .iter_hash(h)
                    .filter(|&&x| g.arena.get(x).page == rec.page)
                    .count();
                if rec.shared() != (same_page > 1) {
                    return Err(format!(
                        "shard {shard}: slot {slot} shared flag {} with {same_page} records",
                        rec.shared()
                    ));
                }
            }
            let mut free = 0u32;
            let mut at = g.arena.free;
            while at != NO_SLOT {
                if seen.contains(&at) || free > g.arena.used() {
                    return Err(format!("shard {shard}: free list reaches live slot {at}"));
                }
                free += 1;
                at = g.arena.get(at).lsn as u32;
            }
            let live = g.arena.live as usize;
            if live != seen.len() || free + g.arena.live != g.arena.used() {
                return Err(format!(
                    "shard {shard}: {} indexed, {live} live, {free} free, {} used",
                    seen.len(),
                    g.arena.used()
                ));
            }
        }
        Ok(())
    }
}

/// How many records `page` has, counting up to `MAX_FRAMES_PER_PAGE`.
fn records_of(index: &HashTable<u32>, arena: &Arena, hash: u64, page: u64) -> usize {
    index
        .iter_hash(hash)
        .filter(|&&s| arena.get(s).page == page)
        .take(MAX_FRAMES_PER_PAGE)
        .count()
}

/// Sets the `shared` flag of every record of `page` iff it has more than one.
fn flag_shared(index: &HashTable<u32>, arena: &mut Arena, hash: u64, page: u64) {
    let mut slots = [NO_SLOT; 2];
    let mut n = 0;
    for &s in index.iter_hash(hash) {
        if arena.get(s).page == page {
            if n < 2 {
                slots[n] = s;
            }
            n += 1;
        }
    }
    if n == 1 {
        arena.get_mut(slots[0]).set_shared(false);
    } else if n > 1 {
        // Usually only the newcomer lacks the flag, but which one it is costs a walk
        // either way; a page rarely has more than a few records.
        for &s in index.iter_hash(hash) {
            if arena.get(s).page == page {
                arena.get_mut(s).set_shared(true);
            }
        }
    }
}

fn unindex(index: &mut HashTable<u32>, hash: u64, slot: u32) {
    if let Ok(e) = index.find_entry(hash, |&s| s == slot) {
        e.remove();
    }
}
