//! The compact in-memory form of entries. Memory per entry is a design target
//! (<= 64 bytes), so the map never stores the public `Entry` type: a frame is packed
//! into one u64 and the page size into a byte-sized enum whose spare values give
//! `Slot` a niche, so a single-entry slot costs no discriminant.

use crate::error::{Error, Result};
use crate::ids::{DomainId, Entry, Frame};

const TAG_SHIFT: u32 = 62;
const PAYLOAD_MASK: u64 = (1 << TAG_SHIFT) - 1;
const TAG_LOCAL: u64 = 0;
const TAG_GFN: u64 = 1;
const TAG_GRANT: u64 = 2;

/// A `Frame` in one u64: two tag bits on top, the payload below.
pub(crate) fn pack_frame(frame: Frame) -> Result<u64> {
    let (tag, payload) = match frame {
        Frame::LocalPool { offset } => (TAG_LOCAL, offset),
        Frame::XenGfn { gfn } => (TAG_GFN, gfn),
        Frame::XenGrant { domid, gref } => (TAG_GRANT, (u64::from(domid) << 32) | u64::from(gref)),
    };
    if payload > PAYLOAD_MASK {
        return Err(Error::FrameOutOfRange(frame));
    }
    Ok((tag << TAG_SHIFT) | payload)
}

pub(crate) fn unpack_frame(bits: u64) -> Frame {
    let payload = bits & PAYLOAD_MASK;
    match bits >> TAG_SHIFT {
        TAG_LOCAL => Frame::LocalPool { offset: payload },
        TAG_GFN => Frame::XenGfn { gfn: payload },
        // pack_frame never produces tag 3; treat it like a grant rather than panic.
        _ => Frame::XenGrant {
            domid: (payload >> 32) as u16,
            gref: payload as u32,
        },
    }
}

/// log2 of the page size; only the valid sizes are representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum PageShift {
    B512 = 9,
    K1 = 10,
    K2 = 11,
    K4 = 12,
    K8 = 13,
    K16 = 14,
    K32 = 15,
    K64 = 16,
}

impl PageShift {
    pub(crate) fn from_size(size: u32) -> Result<Self> {
        Ok(match size {
            512 => Self::B512,
            1024 => Self::K1,
            2048 => Self::K2,
            4096 => Self::K4,
            8192 => Self::K8,
            16384 => Self::K16,
            32768 => Self::K32,
            65536 => Self::K64,
            other => return Err(Error::InvalidPageSize(other)),
        })
    }

    pub(crate) fn size(self) -> u32 {
        1 << (self as u8)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PackedEntry {
    pub(crate) lsn: u64,
    pub(crate) valid_from: u64,
    pub(crate) frame: u64,
    pub(crate) owner: u32,
    pub(crate) shift: PageShift,
}

impl PackedEntry {
    pub(crate) fn unpack(&self) -> Entry {
        Entry {
            owner: DomainId(self.owner),
            frame: unpack_frame(self.frame),
            lsn: self.lsn,
            valid_from: self.valid_from,
            page_size: self.shift.size(),
        }
    }

    fn holder(&self) -> (u32, u64) {
        (self.owner, self.frame)
    }
}

/// All frames holding one page. Almost always one, so that case is inline.
#[derive(Debug)]
pub(crate) enum Slot {
    One(PackedEntry),
    // Boxed so that the variant is one pointer and fits beside the niche; a bare Vec
    // would make every slot 32 bytes.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<PackedEntry>>),
}

// The niche in PageShift must absorb the discriminant, or memory per entry grows by 8.
const _: () = assert!(std::mem::size_of::<Slot>() == 32);

impl Slot {
    pub(crate) fn entries(&self) -> &[PackedEntry] {
        match self {
            Slot::One(e) => std::slice::from_ref(e),
            Slot::Many(v) => v,
        }
    }

    /// Inserts or replaces the entry of the same (owner, frame).
    pub(crate) fn upsert(&mut self, new: PackedEntry) {
        match self {
            Slot::One(e) if e.holder() == new.holder() => *e = new,
            Slot::One(e) => *self = Slot::Many(Box::new(vec![*e, new])),
            Slot::Many(v) => match v.iter_mut().find(|e| e.holder() == new.holder()) {
                Some(e) => *e = new,
                None => v.push(new),
            },
        }
    }

    /// Removes the entry of (owner, frame); returns true when the slot is now empty.
    pub(crate) fn remove(&mut self, owner: u32, frame: u64) -> bool {
        match self {
            Slot::One(e) => e.holder() == (owner, frame),
            Slot::Many(v) => {
                v.retain(|e| e.holder() != (owner, frame));
                if v.len() == 1 {
                    *self = Slot::One(v[0]);
                }
                v_is_empty(self)
            }
        }
    }

    /// The entry that may serve a replica whose snapshot LSN is `max_lsn`; see
    /// [`serving`].
    pub(crate) fn best(&self, max_lsn: u64) -> Option<&PackedEntry> {
        serving(self.entries(), max_lsn)
    }
}

/// The share rule of docs/architecture.md: an entry may serve snapshot `S` only if
/// `lsn <= S` and `valid_from >= S`. This picks the *newest* entry with `lsn <= S`
/// (among equal LSNs the largest `valid_from`, then the smallest (owner, frame), so
/// the answer does not depend on registration order) and returns it only if its
/// `valid_from >= S`; otherwise a miss.
///
/// Why a failing newest entry means no entry can pass. Let `N` be the chosen entry.
/// Entries with a larger LSN fail `lsn <= S`; entries with N's LSN have a
/// `valid_from` no larger than N's, so they fail too. Take an entry `E` with
/// `E.lsn < N.lsn <= S`. If `E.valid_from >= S`, the read that produced E began after
/// snapshot S was complete (the counter reaches S only then), and it returned the
/// page's latest version at that time (InnoDB reads only pages it does not hold, and
/// a frame whose checksum verifies is clean). But N's bytes carry LSN `N.lsn <= S`:
/// that version was written before the snapshot, and page LSNs only grow, so any
/// read after the snapshot returns LSN >= N.lsn > E.lsn. Contradiction: E cannot be
/// valid. The argument relies on honest registrations; if an agent breaks it, the
/// rule still never returns an entry that fails either bound, it only misses (a
/// disk read). `tests/model.rs` (`share_rule_matches_naive_rule_on_real_histories`)
/// checks this against the naive rule over every entry.
pub(crate) fn serving(entries: &[PackedEntry], max_lsn: u64) -> Option<&PackedEntry> {
    let mut best: Option<&PackedEntry> = None;
    for e in entries {
        if e.lsn > max_lsn {
            continue;
        }
        best = match best {
            Some(b) if rank(b) >= rank(e) => Some(b),
            _ => Some(e),
        };
    }
    best.filter(|b| b.valid_from >= max_lsn)
}

/// Order of preference among entries that pass `lsn <= S`.
fn rank(e: &PackedEntry) -> (u64, u64, std::cmp::Reverse<(u32, u64)>) {
    (e.lsn, e.valid_from, std::cmp::Reverse(e.holder()))
}

fn v_is_empty(slot: &Slot) -> bool {
    matches!(slot, Slot::Many(v) if v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pe(owner: u32, frame: u64, lsn: u64) -> PackedEntry {
        PackedEntry {
            lsn,
            valid_from: u64::MAX,
            frame,
            owner,
            shift: PageShift::K16,
        }
    }

    #[test]
    fn frames_round_trip_and_reject_overflow() {
        for f in [
            Frame::LocalPool { offset: 0 },
            Frame::LocalPool {
                offset: PAYLOAD_MASK,
            },
            Frame::XenGfn { gfn: 12345 },
            Frame::XenGrant {
                domid: u16::MAX,
                gref: u32::MAX,
            },
        ] {
            assert_eq!(unpack_frame(pack_frame(f).unwrap()), f);
        }
        assert!(matches!(
            pack_frame(Frame::XenGfn { gfn: 1 << 62 }),
            Err(Error::FrameOutOfRange(_))
        ));
    }

    #[test]
    fn page_sizes() {
        for s in [512u32, 1024, 4096, 16384, 65536] {
            assert_eq!(PageShift::from_size(s).unwrap().size(), s);
        }
        for s in [0u32, 1, 511, 3000, 131072] {
            assert!(PageShift::from_size(s).is_err());
        }
    }

    #[test]
    fn slot_grows_shrinks_and_picks_newest_visible() {
        let mut s = Slot::One(pe(1, 10, 100));
        s.upsert(pe(2, 20, 200));
        s.upsert(pe(3, 30, 150));
        assert_eq!(s.entries().len(), 3);
        assert_eq!(s.best(u64::MAX).unwrap().owner, 2);
        assert_eq!(s.best(199).unwrap().owner, 3);
        assert_eq!(s.best(120).unwrap().owner, 1);
        assert!(s.best(99).is_none());
        s.upsert(pe(2, 20, 50));
        assert_eq!(s.best(99).unwrap().owner, 2);
        assert!(!s.remove(2, 20));
        assert!(!s.remove(3, 30));
        assert!(matches!(s, Slot::One(_)));
        assert!(!s.remove(9, 9), "removing an absent holder keeps the slot");
        assert!(s.remove(1, 10));
    }

    #[test]
    fn ties_go_to_smallest_holder() {
        let mut s = Slot::One(pe(5, 1, 100));
        s.upsert(pe(2, 9, 100));
        s.upsert(pe(2, 3, 100));
        let b = s.best(100).unwrap();
        assert_eq!((b.owner, b.frame), (2, 3));
    }

    #[test]
    fn valid_from_bounds_the_answer() {
        let with_vf = |owner, lsn, valid_from| PackedEntry {
            valid_from,
            ..pe(owner, u64::from(owner), lsn)
        };
        // Read at LSN 100 before snapshot 150 was complete: it may be stale for 150.
        let mut s = Slot::One(with_vf(1, 100, 120));
        assert_eq!(s.best(120).unwrap().owner, 1);
        assert!(s.best(121).is_none(), "valid_from < S is a miss");
        assert!(s.best(99).is_none(), "lsn > S is a miss");
        // The same version read again after snapshot 200: serves 150 and 200.
        s.upsert(with_vf(2, 100, 200));
        assert_eq!(s.best(150).unwrap().owner, 2);
        assert_eq!(
            s.best(110).unwrap().owner,
            2,
            "equal LSN: largest valid_from"
        );
        assert!(s.best(201).is_none());
        // A newer version that is itself stale for S shadows older ones: a miss. (This
        // history is impossible for honest agents: owner 2 read after snapshot 200 yet
        // saw LSN 100 < 180. The rule errs towards a miss.)
        s.upsert(with_vf(3, 180, 180));
        assert!(s.best(190).is_none());
        assert_eq!(s.best(180).unwrap().owner, 3);
        assert_eq!(s.best(170).unwrap().owner, 2);
    }
}
