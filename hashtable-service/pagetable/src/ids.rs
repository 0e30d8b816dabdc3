//! Identities and values of the page table: who holds which page, in which frame.

use serde::{Deserialize, Serialize};

/// A family: the source instance and every replica cloned from it (DESIGN.md invariant 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FamilyId(pub u32);

/// A domain: one DBMS instance (a process for `local`, a domU for `xen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DomainId(pub u32);

impl std::fmt::Display for FamilyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "family {}", self.0)
    }
}

impl std::fmt::Display for DomainId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "domain {}", self.0)
    }
}

/// The data identity of an InnoDB page inside a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageKey {
    pub family: FamilyId,
    pub space_id: u32,
    pub page_no: u32,
}

impl PageKey {
    pub fn new(family: FamilyId, space_id: u32, page_no: u32) -> Self {
        Self {
            family,
            space_id,
            page_no,
        }
    }

    /// The key inside one family's map; the family is implied by the map.
    pub(crate) fn page_bits(&self) -> u64 {
        (u64::from(self.space_id) << 32) | u64::from(self.page_no)
    }

    pub(crate) fn from_page_bits(family: FamilyId, bits: u64) -> Self {
        Self::new(family, (bits >> 32) as u32, bits as u32)
    }
}

/// Where a page lives in memory, one variant per substrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Frame {
    /// `local`: byte offset of the frame inside the family page pool (a memfd).
    LocalPool { offset: u64 },
    /// `xen` with memory sharing: guest frame number in the owner's physmap.
    XenGfn { gfn: u64 },
    /// `xen` PV: the frame `issuer` granted read-only to `grantee` (Xen domids), its
    /// pages under consecutive references from `gref` (guest-kmod's dbfork_gnt). Only
    /// `grantee` can map it, so only `grantee` is ever given it by a lookup, and only
    /// `issuer` may register it. Domids are below 2^15 and references below 2^28
    /// (`MAX_GRANT_REF`): the three fit one record.
    XenGrant {
        issuer: u16,
        grantee: u16,
        gref: u32,
    },
}

/// Xen domids in a `Frame::XenGrant` are below this (DOMID_FIRST_RESERVED is 0x7ff0).
pub const MAX_XEN_DOMID: u16 = 1 << 15;
/// Grant references in a `Frame::XenGrant` are below this (a grant table of 2^28
/// entries would take 256 Ki frames; Xen's limit is far lower).
pub const MAX_GRANT_REF: u32 = 1 << 28;

impl Frame {
    /// Whether the Xen domain `domid` (None: a local process) can use this frame: a
    /// grant only its grantee, a local pool's frame only local processes (a domU cannot
    /// map dom0's files), a guest frame number any Xen domain.
    pub fn usable_by(&self, domid: Option<u16>) -> bool {
        match self {
            Frame::LocalPool { .. } => domid.is_none(),
            Frame::XenGfn { .. } => domid.is_some(),
            Frame::XenGrant { grantee, .. } => domid == Some(*grantee),
        }
    }
}

/// One frame that holds a copy of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The domain whose memory the frame is.
    pub owner: DomainId,
    pub frame: Frame,
    /// The InnoDB page LSN (FIL_PAGE_LSN) of the bytes in the frame.
    pub lsn: u64,
    /// The family's clone LSN as the owner read it before the read that produced
    /// the frame: the frame may serve a snapshot `S` only if `valid_from >= S`
    /// (docs/architecture.md, "The share rule").
    pub valid_from: u64,
    /// Page size in bytes, a power of two from 512 to 65536.
    pub page_size: u32,
}

/// A request to record that the calling domain holds `key` in `frame`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Registration {
    pub key: PageKey,
    pub frame: Frame,
    pub lsn: u64,
    /// See `Entry::valid_from`.
    pub valid_from: u64,
    pub page_size: u32,
}
