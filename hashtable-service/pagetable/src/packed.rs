//! The compact in-memory form of entries. Memory per entry is a design target
//! (<= 64 bytes, docs/results-pagetable.md), so the table never stores the public
//! `Entry` type: an entry is a 36-byte `Record` (page key, LSN, valid_from, frame with
//! the page size folded into spare bits, owner), and the indexes point at records by
//! a u32 (see `store`).

use crate::error::{Error, Result};
use crate::ids::{DomainId, Entry, Frame, MAX_GRANT_REF, MAX_XEN_DOMID};

const TAG_SHIFT: u32 = 62;
const SIZE_SHIFT: u32 = 59;
/// Set on every record of a page that has more than one record (see `store`).
const SHARED_BIT: u64 = 1 << 58;
/// Frame payloads (offsets, gfns, domid+gref) fit below the record's flag bits.
const PAYLOAD_MASK: u64 = SHARED_BIT - 1;
/// A packed frame without the page size and flag: the identity of a frame.
const FRAME_MASK: u64 = !((0b111 << SIZE_SHIFT) | SHARED_BIT);
const TAG_LOCAL: u64 = 0;
const TAG_GFN: u64 = 1;
const TAG_GRANT: u64 = 2;
/// A grant's payload: issuer (15 bits), grantee (15 bits), first reference (28 bits).
const GRANT_GRANTEE_SHIFT: u32 = 28;
const GRANT_ISSUER_SHIFT: u32 = 43;

/// A `Frame` in one u64: two tag bits on top, four bits left free for a record's
/// page size and flag, the payload below.
pub(crate) fn pack_frame(frame: Frame) -> Result<u64> {
    let (tag, payload) = match frame {
        Frame::LocalPool { offset } => (TAG_LOCAL, offset),
        Frame::XenGfn { gfn } => (TAG_GFN, gfn),
        Frame::XenGrant {
            issuer,
            grantee,
            gref,
        } => {
            if issuer >= MAX_XEN_DOMID || grantee >= MAX_XEN_DOMID || gref >= MAX_GRANT_REF {
                return Err(Error::FrameOutOfRange(frame));
            }
            let payload = (u64::from(issuer) << GRANT_ISSUER_SHIFT)
                | (u64::from(grantee) << GRANT_GRANTEE_SHIFT)
                | u64::from(gref);
            (TAG_GRANT, payload)
        }
    };
    if payload > PAYLOAD_MASK {
        return Err(Error::FrameOutOfRange(frame));
    }
    Ok((tag << TAG_SHIFT) | payload)
}

/// Whether the packed frame `bits` is usable by the Xen domain `xen` (None: not a
/// Xen domain): `Frame::usable_by` without unpacking.
pub(crate) fn usable_by(bits: u64, xen: Option<u16>) -> bool {
    match (bits >> TAG_SHIFT) & 0b11 {
        TAG_LOCAL => xen.is_none(),
        TAG_GFN => xen.is_some(),
        _ => {
            let grantee =
                ((bits & PAYLOAD_MASK) >> GRANT_GRANTEE_SHIFT) as u16 & (MAX_XEN_DOMID - 1);
            xen == Some(grantee)
        }
    }
}

pub(crate) fn unpack_frame(bits: u64) -> Frame {
    let payload = bits & PAYLOAD_MASK;
    match bits >> TAG_SHIFT {
        TAG_LOCAL => Frame::LocalPool { offset: payload },
        TAG_GFN => Frame::XenGfn { gfn: payload },
        // pack_frame never produces tag 3; treat it like a grant rather than panic.
        _ => Frame::XenGrant {
            issuer: ((payload >> GRANT_ISSUER_SHIFT) as u16) & (MAX_XEN_DOMID - 1),
            grantee: ((payload >> GRANT_GRANTEE_SHIFT) as u16) & (MAX_XEN_DOMID - 1),
            gref: (payload as u32) & (MAX_GRANT_REF - 1),
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

    #[cfg(test)]
    pub(crate) fn size(self) -> u32 {
        1 << (self as u8)
    }

    /// 0..=7, to fit three bits.
    fn code(self) -> u64 {
        u64::from(self as u8 - 9)
    }
}

/// One entry as stored. `packed(4)` keeps it at 36 bytes instead of 40: the u64
/// fields are only ever copied out, never borrowed, so no unaligned reference exists
/// (the compiler rejects one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(4))]
pub(crate) struct Record {
    /// `PageKey::page_bits` (the family is the store's).
    pub(crate) page: u64,
    pub(crate) lsn: u64,
    pub(crate) valid_from: u64,
    /// `pack_frame` with the page size code in bits 59..62 and `SHARED_BIT`.
    frame_and_size: u64,
    pub(crate) owner: u32,
}

const _: () = assert!(std::mem::size_of::<Record>() == 36);

impl Record {
    /// A record for a frame packed by `pack_frame`.
    pub(crate) fn new(
        page: u64,
        frame: u64,
        lsn: u64,
        valid_from: u64,
        owner: u32,
        shift: PageShift,
    ) -> Self {
        Record {
            page,
            lsn,
            valid_from,
            frame_and_size: (frame & FRAME_MASK) | (shift.code() << SIZE_SHIFT),
            owner,
        }
    }

    /// The free-slot filler of the arena; never reachable from an index.
    pub(crate) const FREE: Record = Record {
        page: 0,
        lsn: 0,
        valid_from: 0,
        frame_and_size: 0,
        owner: 0,
    };

    /// The frame as `pack_frame` packs it (without the page size).
    pub(crate) fn frame(&self) -> u64 {
        self.frame_and_size & FRAME_MASK
    }

    /// Whether other records of the same page exist (kept by `store`).
    pub(crate) fn shared(&self) -> bool {
        self.frame_and_size & SHARED_BIT != 0
    }

    pub(crate) fn set_shared(&mut self, shared: bool) {
        if shared {
            self.frame_and_size |= SHARED_BIT;
        } else {
            self.frame_and_size &= !SHARED_BIT;
        }
    }

    /// The record without its flag, as `Record::new` builds it.
    pub(crate) fn unflagged(mut self) -> Self {
        self.set_shared(false);
        self
    }

    pub(crate) fn page_size(&self) -> u32 {
        1 << (((self.frame_and_size >> SIZE_SHIFT) & 0b111) + 9)
    }

    pub(crate) fn unpack(&self) -> Entry {
        Entry {
            owner: DomainId(self.owner),
            frame: unpack_frame(self.frame()),
            lsn: self.lsn,
            valid_from: self.valid_from,
            page_size: self.page_size(),
        }
    }

    fn holder(&self) -> (u32, u64) {
        (self.owner, self.frame())
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
/// snapshot S was complete (the clone LSN reaches S only then), and it returned the
/// page's latest version at that time (InnoDB reads only pages it does not hold, and
/// a frame whose checksum verifies is clean). But N's bytes carry LSN `N.lsn <= S`:
/// that version was written before the snapshot, and page LSNs only grow, so any
/// read after the snapshot returns LSN >= N.lsn > E.lsn. Contradiction: E cannot be
/// valid. The argument relies on honest registrations; if an agent breaks it, the
/// rule still never returns an entry that fails either bound, it only misses (a
/// disk read). `tests/model.rs` (`share_rule_matches_naive_rule_on_real_histories`)
/// checks this against the naive rule over every entry.
pub(crate) fn serving(records: impl Iterator<Item = Record>, max_lsn: u64) -> Option<Record> {
    let mut best: Option<Record> = None;
    for r in records {
        if r.lsn > max_lsn {
            continue;
        }
        best = match best {
            Some(b) if rank(&b) >= rank(&r) => Some(b),
            _ => Some(r),
        };
    }
    best.filter(|b| b.valid_from >= max_lsn)
}

/// Order of preference among entries that pass `lsn <= S`.
fn rank(e: &Record) -> (u64, u64, std::cmp::Reverse<(u32, u64)>) {
    (e.lsn, e.valid_from, std::cmp::Reverse(e.holder()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(owner: u32, frame: u64, lsn: u64, valid_from: u64) -> Record {
        Record::new(7, frame, lsn, valid_from, owner, PageShift::K16)
    }

    fn best(records: &[Record], s: u64) -> Option<(u32, u64)> {
        serving(records.iter().copied(), s).map(|r| r.holder())
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
                issuer: MAX_XEN_DOMID - 1,
                grantee: 1,
                gref: MAX_GRANT_REF - 1,
            },
            Frame::XenGrant {
                issuer: 0,
                grantee: MAX_XEN_DOMID - 1,
                gref: 0,
            },
        ] {
            let bits = pack_frame(f).unwrap();
            assert_eq!(unpack_frame(bits), f);
            for xen in [None, Some(0), Some(1), Some(MAX_XEN_DOMID - 1)] {
                assert_eq!(usable_by(bits, xen), f.usable_by(xen), "{f:?} {xen:?}");
            }
        }
        for f in [
            Frame::XenGfn { gfn: 1 << 58 },
            Frame::LocalPool { offset: u64::MAX },
            Frame::XenGrant {
                issuer: MAX_XEN_DOMID,
                grantee: 1,
                gref: 0,
            },
            Frame::XenGrant {
                issuer: 1,
                grantee: u16::MAX,
                gref: 0,
            },
            Frame::XenGrant {
                issuer: 1,
                grantee: 2,
                gref: MAX_GRANT_REF,
            },
        ] {
            assert!(matches!(pack_frame(f), Err(Error::FrameOutOfRange(_))));
        }
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
    fn records_keep_every_field() {
        for size in [512u32, 2048, 16384, 65536] {
            for f in [
                Frame::LocalPool {
                    offset: PAYLOAD_MASK,
                },
                Frame::XenGrant {
                    issuer: MAX_XEN_DOMID - 1,
                    grantee: 3,
                    gref: 9,
                },
            ] {
                let bits = pack_frame(f).unwrap();
                let mut r = Record::new(
                    u64::MAX,
                    bits,
                    1,
                    u64::MAX,
                    u32::MAX,
                    PageShift::from_size(size).unwrap(),
                );
                assert_eq!(r.frame(), bits, "the size bits do not leak into the frame");
                assert!(!r.shared());
                r.set_shared(true);
                assert!(r.shared());
                assert_eq!(r.frame(), bits, "nor does the flag");
                let (flagged, unflagged) = (r.frame_and_size, r.unflagged().frame_and_size);
                assert_eq!(unflagged, flagged & !SHARED_BIT);
                let e = r.unpack();
                assert_eq!(
                    (e.frame, e.page_size, e.lsn, e.valid_from, e.owner),
                    (f, size, 1, u64::MAX, DomainId(u32::MAX))
                );
            }
        }
    }

    #[test]
    fn picks_newest_visible() {
        let s = [
            rec(1, 10, 100, u64::MAX),
            rec(2, 20, 200, u64::MAX),
            rec(3, 30, 150, u64::MAX),
        ];
        assert_eq!(best(&s, u64::MAX), Some((2, 20)));
        assert_eq!(best(&s, 199), Some((3, 30)));
        assert_eq!(best(&s, 120), Some((1, 10)));
        assert_eq!(best(&s, 99), None);
    }

    #[test]
    fn ties_go_to_smallest_holder() {
        let s = [
            rec(5, 1, 100, u64::MAX),
            rec(2, 9, 100, u64::MAX),
            rec(2, 3, 100, u64::MAX),
        ];
        assert_eq!(best(&s, 100), Some((2, 3)));
    }

    #[test]
    fn valid_from_bounds_the_answer() {
        // Read at LSN 100 before snapshot 150 was complete: it may be stale for 150.
        let mut s = vec![rec(1, 1, 100, 120)];
        assert_eq!(best(&s, 120), Some((1, 1)));
        assert_eq!(best(&s, 121), None, "valid_from < S is a miss");
        assert_eq!(best(&s, 99), None, "lsn > S is a miss");
        // The same version read again after snapshot 200: serves 150 and 200.
        s.push(rec(2, 2, 100, 200));
        assert_eq!(best(&s, 150), Some((2, 2)));
        assert_eq!(best(&s, 110), Some((2, 2)), "equal LSN: largest valid_from");
        assert_eq!(best(&s, 201), None);
        // A newer version that is itself stale for S shadows older ones: a miss. (This
        // history is impossible for honest agents: owner 2 read after snapshot 200 yet
        // saw LSN 100 < 180. The rule errs towards a miss.)
        s.push(rec(3, 3, 180, 180));
        assert_eq!(best(&s, 190), None);
        assert_eq!(best(&s, 180), Some((3, 3)));
        assert_eq!(best(&s, 170), Some((2, 2)));
    }
}
