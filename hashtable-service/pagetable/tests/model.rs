//! The table against a plain BTreeMap model, sequentially and under concurrency.

use pagetable::{
    DomainId, Entry, Error, FamilyId, FamilyStats, Frame, PageKey, PageTable, Registration,
    TableConfig,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const QUOTA: usize = 6;

#[derive(Debug, Clone)]
enum Op {
    CreateFamily(u32),
    DestroyFamily(u32),
    Add(u32, u32),
    RemoveFrom(u32, u32),
    RemoveDomain(u32),
    ClearDomain(u32),
    Register(u32, Vec<Registration>),
    Lookup(u32, PageKey, u64),
    LookupMany(u32, Vec<PageKey>, u64),
    Invalidate(u32, Frame),
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        4 => (0u64..6).prop_map(|o| Frame::LocalPool { offset: o * 16384 }),
        1 => (0u64..3).prop_map(|gfn| Frame::XenGfn { gfn }),
        // Domain d of the model is Xen domid d: grants by and to domains 1..5.
        2 => (1u16..6, 1u16..6, 0u32..2).prop_map(|(issuer, grantee, gref)| Frame::XenGrant { issuer, grantee, gref }),
    ]
}

fn key() -> impl Strategy<Value = PageKey> {
    (1u32..3, 0u32..2, 0u32..4).prop_map(|(f, s, p)| PageKey::new(FamilyId(f), s, p))
}

/// In the range of the lookups' max_lsn (0..22), so both bounds of the rule matter.
fn valid_from() -> impl Strategy<Value = u64> {
    prop_oneof![6 => 0u64..24, 1 => Just(u64::MAX)]
}

fn registration() -> impl Strategy<Value = Registration> {
    (
        key(),
        frame(),
        0u64..20,
        valid_from(),
        prop_oneof![10 => Just(16384u32), 1 => Just(4096), 1 => Just(1000)],
    )
        .prop_map(|(key, frame, lsn, valid_from, page_size)| Registration {
            key,
            frame,
            lsn,
            valid_from,
            page_size,
        })
}

fn op() -> impl Strategy<Value = Op> {
    let d = 1u32..5;
    let f = 1u32..3;
    prop_oneof![
        2 => f.clone().prop_map(Op::CreateFamily),
        1 => f.clone().prop_map(Op::DestroyFamily),
        3 => (f.clone(), d.clone()).prop_map(|(f, d)| Op::Add(f, d)),
        1 => (f.clone(), d.clone()).prop_map(|(f, d)| Op::RemoveFrom(f, d)),
        1 => d.clone().prop_map(Op::RemoveDomain),
        1 => d.clone().prop_map(Op::ClearDomain),
        8 => (d.clone(), prop::collection::vec(registration(), 1..5)).prop_map(|(d, r)| Op::Register(d, r)),
        6 => (d.clone(), key(), 0u64..22).prop_map(|(d, k, l)| Op::Lookup(d, k, l)),
        2 => (d.clone(), prop::collection::vec(key(), 0..4), 0u64..22).prop_map(|(d, k, l)| Op::LookupMany(d, k, l)),
        3 => (d, frame()).prop_map(|(d, f)| Op::Invalidate(d, f)),
    ]
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
struct Counters {
    lookups: u64,
    hits: u64,
    misses: u64,
    invalidations: u64,
}

/// What the model knows about one (owner, frame).
#[derive(Debug, Clone, Copy)]
struct Held {
    key: PageKey,
    lsn: u64,
    valid_from: u64,
    page_size: u32,
}

fn entry(owner: DomainId, frame: Frame, h: &Held) -> Entry {
    Entry {
        owner,
        frame,
        lsn: h.lsn,
        valid_from: h.valid_from,
        page_size: h.page_size,
    }
}

/// The obviously-correct version of the table.
#[derive(Default)]
struct Model {
    families: BTreeMap<FamilyId, (BTreeSet<DomainId>, Counters)>,
    member_of: BTreeMap<DomainId, FamilyId>,
    held: BTreeMap<(DomainId, Frame), Held>,
}

/// Errors compared by kind only; messages are the table's business.
fn kind<T>(r: &Result<T, Error>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(Error::UnknownFamily(_)) => "unknown family",
        Err(Error::FamilyExists(_)) => "family exists",
        Err(Error::UnknownDomain(_)) => "unknown domain",
        Err(Error::NotInFamily { .. }) => "not in family",
        Err(Error::AlreadyInFamily { .. }) => "already in family",
        Err(Error::QuotaExceeded { .. }) => "quota",
        Err(Error::InvalidPageSize(_)) => "page size",
        Err(Error::ForeignGrant { .. }) => "foreign grant",
        Err(_) => "other",
    }
}

fn valid_size(s: u32) -> bool {
    s.is_power_of_two() && (512..=65536).contains(&s)
}

impl Model {
    fn drop_domain_entries(&mut self, d: DomainId) -> usize {
        let before = self.held.len();
        self.held.retain(|(o, _), _| *o != d);
        before - self.held.len()
    }

    fn remove_domain(&mut self, d: DomainId) -> usize {
        if let Some(f) = self.member_of.remove(&d) {
            self.families.get_mut(&f).unwrap().0.remove(&d);
        }
        self.drop_domain_entries(d)
    }

    /// The table's lookup rule spelled out: the newest entry with lsn <= max_lsn (ties:
    /// largest valid_from, then smallest (owner, frame)), a hit only if its
    /// valid_from >= max_lsn. Only frames the caller can use count (`xen`: its Xen
    /// domid; a grant serves only its grantee).
    fn best(&self, k: PageKey, max_lsn: u64, xen: Option<u16>) -> Option<Entry> {
        self.held
            .iter()
            .filter(|((_, frame), h)| h.key == k && h.lsn <= max_lsn && frame.usable_by(xen))
            .max_by_key(|(holder, h)| (h.lsn, h.valid_from, std::cmp::Reverse(**holder)))
            .filter(|(_, h)| h.valid_from >= max_lsn)
            .map(|((owner, frame), h)| entry(*owner, *frame, h))
    }

    fn register(
        &mut self,
        d: DomainId,
        regs: &[Registration],
        quota: usize,
        xen: Option<u16>,
    ) -> Result<usize, &'static str> {
        let f = *self.member_of.get(&d).ok_or("unknown domain")?;
        for r in regs {
            if r.key.family != f {
                return Err("not in family");
            }
            if matches!(r.frame, Frame::XenGrant { issuer, .. } if xen != Some(issuer)) {
                return Err("foreign grant");
            }
            if !valid_size(r.page_size) {
                return Err("page size");
            }
        }
        for r in regs {
            let count = self.held.keys().filter(|(o, _)| *o == d).count();
            if !self.held.contains_key(&(d, r.frame)) && count >= quota {
                return Err("quota");
            }
            self.held.insert(
                (d, r.frame),
                Held {
                    key: r.key,
                    lsn: r.lsn,
                    valid_from: r.valid_from,
                    page_size: r.page_size,
                },
            );
        }
        Ok(regs.len())
    }

    fn count_lookup(&mut self, f: FamilyId, hits: u64, n: u64) {
        let c = &mut self.families.get_mut(&f).unwrap().1;
        c.lookups += n;
        c.hits += hits;
        c.misses += n - hits;
    }

    fn stats(&self) -> Vec<FamilyStats> {
        self.families
            .iter()
            .map(|(f, (members, c))| FamilyStats {
                family: *f,
                domains: members.len(),
                entries: self.held.values().filter(|h| h.key.family == *f).count() as u64,
                lookups: c.lookups,
                hits: c.hits,
                misses: c.misses,
                invalidations: c.invalidations,
            })
            .collect()
    }

    fn dump(&self) -> Vec<(PageKey, Entry)> {
        let mut v: Vec<_> = self
            .held
            .iter()
            .map(|((owner, frame), h)| (h.key, entry(*owner, *frame, h)))
            .collect();
        v.sort_by_key(|(k, e)| (*k, e.owner, e.frame));
        v
    }
}

fn apply(t: &PageTable, m: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match op {
        Op::CreateFamily(f) => {
            let f = FamilyId(*f);
            let r = t.create_family(f);
            let want = if m.families.contains_key(&f) {
                "family exists"
            } else {
                "ok"
            };
            m.families.entry(f).or_default();
            prop_assert_eq!(kind(&r), want);
        }
        Op::DestroyFamily(f) => {
            let f = FamilyId(*f);
            let r = t.destroy_family(f);
            match m.families.remove(&f) {
                None => prop_assert_eq!(kind(&r), "unknown family"),
                Some((members, _)) => {
                    prop_assert_eq!(kind(&r), "ok");
                    for d in members {
                        m.member_of.remove(&d);
                        m.drop_domain_entries(d);
                    }
                }
            }
        }
        Op::Add(f, d) => {
            let (f, d) = (FamilyId(*f), DomainId(*d));
            let r = t.add_to_family(f, d);
            let want = match (m.families.get_mut(&f), m.member_of.entry(d)) {
                (None, _) => "unknown family",
                (Some(_), std::collections::btree_map::Entry::Occupied(_)) => "already in family",
                (Some((members, _)), std::collections::btree_map::Entry::Vacant(v)) => {
                    v.insert(f);
                    members.insert(d);
                    "ok"
                }
            };
            prop_assert_eq!(kind(&r), want);
        }
        Op::RemoveFrom(f, d) => {
            let (f, d) = (FamilyId(*f), DomainId(*d));
            let r = t.remove_from_family(f, d);
            match m.member_of.get(&d) {
                None => prop_assert_eq!(kind(&r), "unknown domain"),
                Some(g) if *g != f => prop_assert_eq!(kind(&r), "not in family"),
                Some(_) => prop_assert_eq!(r.unwrap(), m.remove_domain(d)),
            }
        }
        Op::RemoveDomain(d) => {
            let d = DomainId(*d);
            let r = t.remove_domain(d);
            if m.member_of.contains_key(&d) {
                prop_assert_eq!(r.unwrap(), m.remove_domain(d));
            } else {
                prop_assert_eq!(kind(&r), "unknown domain");
            }
        }
        Op::ClearDomain(d) => {
            let d = DomainId(*d);
            let r = t.clear_domain(d);
            if m.member_of.contains_key(&d) {
                prop_assert_eq!(r.unwrap(), m.drop_domain_entries(d));
            } else {
                prop_assert_eq!(kind(&r), "unknown domain");
            }
        }
        Op::Register(d, regs) => {
            let d = DomainId(*d);
            // Every other batch comes over a Xen domain's connection (domain d is Xen
            // domid d), the others from a local process, which may register no grant.
            let xen = (regs.len() % 2 == 0).then_some(d.0 as u16);
            let r = t.register_many_as(d, xen, regs);
            match m.register(d, regs, QUOTA, xen) {
                Ok(n) => prop_assert_eq!(r.unwrap(), n),
                Err(want) => prop_assert_eq!(kind(&r), want),
            }
        }
        Op::Lookup(d, k, max_lsn) => {
            let d = DomainId(*d);
            // Both paths must agree with the model; alternate between them.
            let (r, xen) = match max_lsn % 3 {
                0 => (t.lookup(d, *k, *max_lsn), None),
                1 => (t.handle(d).and_then(|h| h.lookup(*k, *max_lsn)), None),
                _ => {
                    let xen = Some(d.0 as u16);
                    (
                        t.handle_as(d, xen).and_then(|h| h.lookup(*k, *max_lsn)),
                        xen,
                    )
                }
            };
            match m.member_of.get(&d).copied() {
                None => prop_assert_eq!(kind(&r), "unknown domain"),
                Some(f) if f != k.family => prop_assert_eq!(kind(&r), "not in family"),
                Some(f) => {
                    let want = m.best(*k, *max_lsn, xen);
                    m.count_lookup(f, want.is_some() as u64, 1);
                    prop_assert_eq!(r.unwrap(), want);
                }
            }
        }
        Op::LookupMany(d, keys, max_lsn) => {
            let d = DomainId(*d);
            let r = t.lookup_many(d, keys, *max_lsn);
            match m.member_of.get(&d).copied() {
                None => prop_assert_eq!(kind(&r), "unknown domain"),
                Some(f) if keys.iter().any(|k| k.family != f) => {
                    prop_assert_eq!(kind(&r), "not in family")
                }
                Some(f) => {
                    let want: Vec<_> = keys.iter().map(|k| m.best(*k, *max_lsn, None)).collect();
                    let hits = want.iter().filter(|e| e.is_some()).count() as u64;
                    m.count_lookup(f, hits, keys.len() as u64);
                    prop_assert_eq!(r.unwrap(), want);
                }
            }
        }
        Op::Invalidate(d, frame) => {
            let d = DomainId(*d);
            let r = t.invalidate(d, *frame);
            match m.member_of.get(&d).copied() {
                None => prop_assert_eq!(kind(&r), "unknown domain"),
                Some(f) => {
                    let removed = m.held.remove(&(d, *frame)).is_some();
                    if removed {
                        m.families.get_mut(&f).unwrap().1.invalidations += 1;
                    }
                    prop_assert_eq!(r.unwrap(), removed);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn table_matches_model(ops in prop::collection::vec(op(), 1..80)) {
        let t = PageTable::new(TableConfig { quota_per_domain: QUOTA });
        let mut m = Model::default();
        for op in &ops {
            apply(&t, &mut m, op)?;
            prop_assert_eq!(t.check_consistency(), Ok(()));
        }
        prop_assert_eq!(t.dump(), m.dump());
        prop_assert_eq!(t.stats(), m.stats());
    }
}

/// Per-thread work in the concurrent test: one domain's own operations.
#[derive(Debug, Clone)]
enum DomOp {
    Register(Vec<Registration>),
    Invalidate(Frame),
    Clear,
    Lookup(PageKey, u64),
}

fn dom_op(family: u32) -> impl Strategy<Value = DomOp> {
    let key = (0u32..2, 0u32..6).prop_map(move |(s, p)| PageKey::new(FamilyId(family), s, p));
    let reg =
        (key.clone(), frame(), 0u64..20, valid_from()).prop_map(|(key, frame, lsn, valid_from)| {
            Registration {
                key,
                frame,
                lsn,
                valid_from,
                page_size: 16384,
            }
        });
    prop_oneof![
        6 => prop::collection::vec(reg, 1..4).prop_map(DomOp::Register),
        2 => frame().prop_map(DomOp::Invalidate),
        1 => Just(DomOp::Clear),
        6 => (key, 0u64..22).prop_map(|(k, l)| DomOp::Lookup(k, l)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Four domains of one family work at once, a fifth domain is removed while its
    /// thread is registering. Domains only change their own entries, so the final
    /// table must equal each domain's sequential model merged, whatever the
    /// interleaving; concurrent lookups must only ever see legal entries.
    #[test]
    fn concurrent_domains_match_merged_models(
        plans in prop::collection::vec(prop::collection::vec(dom_op(1), 1..60), 4),
        doomed in prop::collection::vec(dom_op(1), 1..60),
        remove_after in 0usize..60,
    ) {
        let t = PageTable::new(TableConfig { quota_per_domain: QUOTA });
        let fam = FamilyId(1);
        t.create_family(fam).unwrap();
        for d in 1..=5 {
            t.add_to_family(fam, DomainId(d)).unwrap();
        }
        let doomed_id = DomainId(5);
        let lookups: u64 = plans.iter().flatten().filter(|o| matches!(o, DomOp::Lookup(..))).count() as u64;
        let bad_lookup = std::sync::Mutex::new(None::<String>);
        std::thread::scope(|s| {
            for (i, plan) in plans.iter().enumerate() {
                let (t, bad) = (&t, &bad_lookup);
                s.spawn(move || {
                    let d = DomainId(i as u32 + 1);
                    let xen = Some(d.0 as u16);
                    let h = t.handle_as(d, xen).unwrap();
                    for op in plan {
                        match op {
                            DomOp::Register(r) => { let _ = t.register_many_as(d, xen, r); }
                            DomOp::Invalidate(f) => { t.invalidate(d, *f).unwrap(); }
                            DomOp::Clear => { t.clear_domain(d).unwrap(); }
                            DomOp::Lookup(k, max) => {
                                if let Some(e) = h.lookup(*k, *max).unwrap() {
                                    if e.lsn > *max || e.valid_from < *max || e.owner.0 == 0 || e.owner.0 > 5
                                        || !e.frame.usable_by(xen) {
                                        *bad.lock().unwrap() = Some(format!("{k:?} {max} -> {e:?}"));
                                    }
                                }
                            }
                        }
                    }
                });
            }
            let t = &t;
            let doomed = &doomed;
            s.spawn(move || {
                for op in doomed {
                    if let DomOp::Register(r) = op {
                        let _ = t.register_many(doomed_id, r);
                    }
                }
            });
            for _ in 0..remove_after {
                std::thread::yield_now();
            }
            t.remove_domain(doomed_id).unwrap();
        });
        prop_assert_eq!(bad_lookup.into_inner().unwrap(), None);
        prop_assert_eq!(t.check_consistency(), Ok(()));

        let mut m = Model::default();
        m.families.entry(fam).or_default();
        for (i, plan) in plans.iter().enumerate() {
            let d = DomainId(i as u32 + 1);
            m.member_of.insert(d, fam);
            m.families.get_mut(&fam).unwrap().0.insert(d);
            for op in plan {
                match op {
                    DomOp::Register(r) => { let _ = m.register(d, r, QUOTA, Some(d.0 as u16)); }
                    DomOp::Invalidate(f) => {
                        if m.held.remove(&(d, *f)).is_some() {
                            m.families.get_mut(&fam).unwrap().1.invalidations += 1;
                        }
                    }
                    DomOp::Clear => { m.drop_domain_entries(d); }
                    DomOp::Lookup(..) => {}
                }
            }
        }
        prop_assert_eq!(t.dump(), m.dump());
        let st = t.family_stats(fam).unwrap();
        prop_assert_eq!(st.lookups, lookups);
        prop_assert_eq!(st.hits + st.misses, lookups);
        prop_assert_eq!(st.domains, 4);
        prop_assert_eq!(st.entries, m.held.len() as u64);
        prop_assert_eq!(st.invalidations, m.families[&fam].1.invalidations);
    }
}

#[test]
fn frame_moves_between_keys_and_quota_names_the_domain() {
    let t = PageTable::new(TableConfig {
        quota_per_domain: 2,
    });
    let f = FamilyId(9);
    t.create_family(f).unwrap();
    t.add_to_family(f, DomainId(1)).unwrap();
    let frame = Frame::LocalPool { offset: 0 };
    let reg = |page, frame, lsn| Registration {
        key: PageKey::new(f, 0, page),
        frame,
        lsn,
        valid_from: u64::MAX,
        page_size: 16384,
    };
    t.register(DomainId(1), reg(1, frame, 10)).unwrap();
    t.register(DomainId(1), reg(2, frame, 11)).unwrap();
    assert_eq!(
        t.lookup(DomainId(1), PageKey::new(f, 0, 1), u64::MAX)
            .unwrap(),
        None
    );
    assert_eq!(
        t.lookup(DomainId(1), PageKey::new(f, 0, 2), u64::MAX)
            .unwrap()
            .unwrap()
            .lsn,
        11
    );
    t.register(DomainId(1), reg(3, Frame::LocalPool { offset: 16384 }, 1))
        .unwrap();
    let err = t
        .register(DomainId(1), reg(4, Frame::LocalPool { offset: 32768 }, 1))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::QuotaExceeded {
                domain: DomainId(1),
                quota: 2
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("quota"), "{err}");
    assert_eq!(t.domain_entries(DomainId(1)).unwrap(), 2);
    assert!(matches!(
        t.register(DomainId(1), reg(4, Frame::XenGfn { gfn: u64::MAX }, 1)),
        Err(Error::FrameOutOfRange(_))
    ));
}

#[test]
fn handle_stops_working_when_its_domain_leaves() {
    let t = PageTable::default();
    let f = FamilyId(1);
    t.create_family(f).unwrap();
    t.add_to_family(f, DomainId(1)).unwrap();
    let key = PageKey::new(f, 1, 1);
    let reg = Registration {
        key,
        frame: Frame::LocalPool { offset: 5 * 16384 },
        lsn: 3,
        valid_from: 3,
        page_size: 4096,
    };
    t.register(DomainId(1), reg).unwrap();
    let h = t.handle(DomainId(1)).unwrap();
    assert_eq!((h.domain(), h.family()), (DomainId(1), f));
    assert_eq!(
        h.lookup(key, 3).unwrap().unwrap().frame,
        Frame::LocalPool { offset: 5 * 16384 }
    );
    assert!(matches!(
        h.lookup_many(&[PageKey::new(FamilyId(2), 1, 1)], 3),
        Err(Error::NotInFamily { .. })
    ));
    t.remove_domain(DomainId(1)).unwrap();
    assert!(matches!(h.lookup(key, 3), Err(Error::UnknownDomain(_))));
    t.add_to_family(f, DomainId(1)).unwrap();
    assert!(
        matches!(h.lookup(key, 3), Err(Error::UnknownDomain(_))),
        "stale handle"
    );
    assert_eq!(t.handle(DomainId(1)).unwrap().lookup(key, 3).unwrap(), None);
}

/// One event in the life of a family, as the share rule sees it (architecture.md).
#[derive(Debug, Clone)]
enum History {
    /// The source changes a page in memory: a new version with a new LSN. Frames
    /// registered earlier keep their bytes (kernel copy-on-write).
    Modify { page: u32, step: u64 },
    /// dbfork takes a snapshot at the current LSN...
    Snapshot,
    /// ...and, later, publishes the newest one as the family's clone LSN.
    Publish,
    /// A source domain reads a page from disk into `frame` and registers it.
    /// `stale` clone LSN values back: the agent read the clone LSN before the read and
    /// maybe well before (a smaller valid_from is always allowed).
    Read {
        domain: u32,
        page: u32,
        frame: u64,
        stale: usize,
    },
    /// A source domain evicts a frame.
    Evict { domain: u32, frame: u64 },
    /// A replica of one of the snapshots taken so far looks a page up.
    Lookup {
        page: u32,
        snapshot: prop::sample::Index,
    },
}

fn history() -> impl Strategy<Value = History> {
    prop_oneof![
        4 => (0u32..3, 1u64..3).prop_map(|(page, step)| History::Modify { page, step }),
        2 => Just(History::Snapshot),
        2 => Just(History::Publish),
        6 => (1u32..3, 0u32..3, 0u64..5, 0usize..3).prop_map(|(domain, page, frame, stale)| {
            History::Read { domain, page, frame, stale }
        }),
        1 => (1u32..3, 0u64..5).prop_map(|(domain, frame)| History::Evict { domain, frame }),
        6 => (0u32..3, any::<prop::sample::Index>())
            .prop_map(|(page, snapshot)| History::Lookup { page, snapshot }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Over histories that real agents can produce, the table's rule (newest entry
    /// with lsn <= S, then valid_from >= S) answers exactly like the naive rule over
    /// every entry, and whatever it serves is the page as it was at the snapshot.
    #[test]
    fn share_rule_matches_naive_rule_on_real_histories(
        events in prop::collection::vec(history(), 1..120),
    ) {
        let f = FamilyId(1);
        let t = PageTable::default();
        t.create_family(f).unwrap();
        for d in 1..=3 {
            t.add_to_family(f, DomainId(d)).unwrap();
        }
        let replica = DomainId(3);
        let mut lsn = 10u64;
        let mut version = [lsn; 3];
        // (S, page versions at S) for every snapshot taken.
        let mut snapshots: Vec<(u64, [u64; 3])> = Vec::new();
        let mut clone_lsn_history = vec![0u64];
        // What the naive rule sees: every registered (owner, frame).
        let mut held: BTreeMap<(DomainId, Frame), Held> = BTreeMap::new();
        for ev in &events {
            match ev {
                History::Modify { page, step } => {
                    lsn += step;
                    version[*page as usize] = lsn;
                }
                History::Snapshot => snapshots.push((lsn, version)),
                History::Publish => {
                    if let Some((s, _)) = snapshots.last() {
                        let c = *clone_lsn_history.last().unwrap();
                        clone_lsn_history.push(c.max(*s));
                    }
                }
                History::Read { domain, page, frame, stale } => {
                    let i = clone_lsn_history.len().saturating_sub(1 + stale);
                    let reg = Registration {
                        key: PageKey::new(f, 0, *page),
                        frame: Frame::LocalPool { offset: frame * 16384 },
                        lsn: version[*page as usize],
                        valid_from: clone_lsn_history[i],
                        page_size: 16384,
                    };
                    t.register(DomainId(*domain), reg).unwrap();
                    held.insert((DomainId(*domain), reg.frame), Held {
                        key: reg.key,
                        lsn: reg.lsn,
                        valid_from: reg.valid_from,
                        page_size: reg.page_size,
                    });
                }
                History::Evict { domain, frame } => {
                    let frame = Frame::LocalPool { offset: frame * 16384 };
                    let was = held.remove(&(DomainId(*domain), frame)).is_some();
                    prop_assert_eq!(t.invalidate(DomainId(*domain), frame).unwrap(), was);
                }
                History::Lookup { page, snapshot } => {
                    if snapshots.is_empty() {
                        continue;
                    }
                    let (s, at_snapshot) = snapshots[snapshot.index(snapshots.len())];
                    let key = PageKey::new(f, 0, *page);
                    let got = t.lookup(replica, key, s).unwrap();
                    let naive = held
                        .iter()
                        .filter(|(_, h)| h.key == key && h.lsn <= s && h.valid_from >= s)
                        .max_by_key(|(holder, h)| (h.lsn, h.valid_from, std::cmp::Reverse(**holder)))
                        .map(|((o, fr), h)| entry(*o, *fr, h));
                    prop_assert_eq!(got, naive, "S={} page {}", s, page);
                    if let Some(e) = got {
                        prop_assert_eq!(e.lsn, at_snapshot[*page as usize], "stale page served");
                    }
                }
            }
        }
    }
}

/// The case the rule exists for: a frame read before the snapshot, whose page then
/// changed before the snapshot, must not serve that snapshot; a re-read after the
/// snapshot (clone LSN published) serves it; the newer in-memory version does not.
#[test]
fn frame_read_before_a_snapshot_does_not_serve_it() {
    let f = FamilyId(1);
    let t = PageTable::default();
    t.create_family(f).unwrap();
    t.add_to_family(f, DomainId(1)).unwrap();
    t.add_to_family(f, DomainId(2)).unwrap();
    let key = PageKey::new(f, 4, 7);
    let reg = |offset, lsn, valid_from| Registration {
        key,
        frame: Frame::LocalPool { offset },
        lsn,
        valid_from,
        page_size: 16384,
    };
    // Counter 0; the source reads the page at LSN 100 into frame 0.
    t.register(DomainId(1), reg(0, 100, 0)).unwrap();
    // The source changes the page (LSN 150, a private copy), then snapshot S = 200.
    // Frame 0 still holds LSN 100 and would pass `lsn <= S`, but it is stale.
    assert_eq!(t.lookup(DomainId(2), key, 200).unwrap(), None);
    // Before the snapshot it was fine for older snapshots it was read after (none
    // here: valid_from 0 serves only S = 0).
    assert!(
        t.lookup(DomainId(2), key, 0).unwrap().is_none(),
        "lsn 100 > S 0"
    );
    // Counter published as 200; the page is evicted and read again: LSN 150.
    t.register(DomainId(1), reg(16384, 150, 200)).unwrap();
    let e = t.lookup(DomainId(2), key, 200).unwrap().unwrap();
    assert_eq!(
        (e.frame, e.lsn, e.valid_from),
        (Frame::LocalPool { offset: 16384 }, 150, 200)
    );
    // A later snapshot (250) needs a frame read after it was published.
    assert_eq!(t.lookup(DomainId(2), key, 250).unwrap(), None);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Many frames of few pages: every page has several records, which the store
    /// keeps under one hash with a `shared` flag. After each change, every snapshot
    /// LSN must get the model's answer and the table must stay consistent.
    #[test]
    fn crowded_pages_match_model(
        steps in prop::collection::vec(
            (1u32..4, 0u32..2, 0u64..8, 0u64..10, 0u64..12, prop::bool::weighted(0.8)),
            1..60,
        ),
    ) {
        let f = FamilyId(1);
        let t = PageTable::default();
        t.create_family(f).unwrap();
        let mut m = Model::default();
        m.families.entry(f).or_default();
        for d in 1..4 {
            t.add_to_family(f, DomainId(d)).unwrap();
            m.member_of.insert(DomainId(d), f);
        }
        for (d, page, frame, lsn, valid_from, register) in steps {
            let d = DomainId(d);
            let frame = Frame::LocalPool { offset: frame * 16384 };
            if register {
                let reg = Registration {
                    key: PageKey::new(f, 0, page),
                    frame,
                    lsn,
                    valid_from,
                    page_size: 16384,
                };
                t.register(d, reg).unwrap();
                m.register(d, &[reg], usize::MAX, None).unwrap();
            } else {
                let was = m.held.remove(&(d, frame)).is_some();
                prop_assert_eq!(t.invalidate(d, frame).unwrap(), was);
            }
            prop_assert_eq!(t.check_consistency(), Ok(()));
            for page in 0..2 {
                let key = PageKey::new(f, 0, page);
                for s in 0..13 {
                    prop_assert_eq!(t.lookup(DomainId(1), key, s).unwrap(), m.best(key, s, None));
                }
            }
        }
    }
}

/// One page cannot collect more than MAX_FRAMES_PER_PAGE frames: the next
/// registration is refused by name, moving a frame onto the page too, and the page
/// and the rest of the table keep working.
#[test]
fn crowded_page_is_refused_with_a_clear_error() {
    let f = FamilyId(1);
    let t = PageTable::default();
    t.create_family(f).unwrap();
    t.add_to_family(f, DomainId(1)).unwrap();
    t.add_to_family(f, DomainId(2)).unwrap();
    let key = PageKey::new(f, 3, 3);
    let reg = |key, offset: u64, lsn| Registration {
        key,
        frame: Frame::LocalPool { offset },
        lsn,
        valid_from: u64::MAX,
        page_size: 16384,
    };
    let regs: Vec<_> = (0..pagetable::MAX_FRAMES_PER_PAGE as u64)
        .map(|i| reg(key, i * 16384, i))
        .collect();
    t.register_many(DomainId(1), &regs).unwrap();
    let err = t.register(DomainId(2), reg(key, 0, 1_000)).unwrap_err();
    assert!(
        matches!(err, Error::PageCrowded { max, .. } if max == pagetable::MAX_FRAMES_PER_PAGE),
        "{err}"
    );
    assert!(err.to_string().contains("invalidate"), "{err}");
    // Moving another frame onto the crowded page is refused the same way and leaves
    // that frame where it was.
    let other = PageKey::new(f, 3, 4);
    t.register(DomainId(2), reg(other, 0, 5)).unwrap();
    assert!(matches!(
        t.register(DomainId(2), reg(key, 0, 5)),
        Err(Error::PageCrowded { .. })
    ));
    assert_eq!(
        t.lookup(DomainId(2), other, 5).unwrap().unwrap().owner,
        DomainId(2)
    );
    let newest = pagetable::MAX_FRAMES_PER_PAGE as u64 - 1;
    assert_eq!(
        t.lookup(DomainId(2), key, u64::MAX).unwrap().unwrap().lsn,
        newest
    );
    // Room again after an invalidation.
    assert!(t
        .invalidate(DomainId(1), Frame::LocalPool { offset: 0 })
        .unwrap());
    t.register(DomainId(2), reg(key, 0, 1_000)).unwrap();
    assert_eq!(t.check_consistency(), Ok(()));
}
