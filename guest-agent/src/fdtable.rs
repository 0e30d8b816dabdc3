//! fd -> tablespace identity, lock-free: one atomic word per fd number.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::page::{SpaceFormat, SpaceInfo};

/// fds at or above this are never tracked (InnoDB's are small numbers).
pub const MAX_FD: usize = 1 << 16;

const CANDIDATE: u64 = 1 << 62;
const IDENTIFIED: u64 = 1 << 63;
const FULL_CRC32: u64 = 1 << 61;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdState {
    Untracked,
    /// An InnoDB data file whose page 0 has not been read successfully yet.
    Candidate,
    Identified(Ident),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ident {
    pub space_id: u32,
    pub page_size: u32,
    pub format: SpaceFormat,
}

impl From<SpaceInfo> for Ident {
    fn from(i: SpaceInfo) -> Self {
        Ident {
            space_id: i.space_id,
            page_size: i.page_size,
            format: i.format,
        }
    }
}

pub struct FdTable {
    slots: Box<[AtomicU64]>,
}

impl Default for FdTable {
    fn default() -> Self {
        FdTable {
            slots: (0..MAX_FD).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl FdTable {
    fn slot(&self, fd: i32) -> Option<&AtomicU64> {
        usize::try_from(fd).ok().and_then(|i| self.slots.get(i))
    }

    pub fn get(&self, fd: i32) -> FdState {
        let Some(s) = self.slot(fd) else {
            return FdState::Untracked;
        };
        let v = s.load(Ordering::Acquire);
        if v & IDENTIFIED != 0 {
            FdState::Identified(Ident {
                space_id: v as u32,
                page_size: 1 << ((v >> 32) & 0xff),
                format: if v & FULL_CRC32 != 0 {
                    SpaceFormat::FullCrc32
                } else {
                    SpaceFormat::Legacy
                },
            })
        } else if v & CANDIDATE != 0 {
            FdState::Candidate
        } else {
            FdState::Untracked
        }
    }

    pub fn set_candidate(&self, fd: i32) {
        if let Some(s) = self.slot(fd) {
            s.store(CANDIDATE, Ordering::Release);
        }
    }

    pub fn set_identified(&self, fd: i32, id: Ident) {
        if let Some(s) = self.slot(fd) {
            let fmt = if id.format == SpaceFormat::FullCrc32 {
                FULL_CRC32
            } else {
                0
            };
            let shift = u64::from(id.page_size.trailing_zeros());
            s.store(
                IDENTIFIED | fmt | (shift << 32) | u64::from(id.space_id),
                Ordering::Release,
            );
        }
    }

    pub fn clear(&self, fd: i32) {
        if let Some(s) = self.slot(fd) {
            s.store(0, Ordering::Release);
        }
    }
}

/// Whether a path names an InnoDB data file: *.ibd, ibdata<N>, undo<N>.
pub fn is_data_file(path: &[u8]) -> bool {
    let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
    let digits_after = |prefix: &[u8]| {
        name.len() > prefix.len()
            && name.starts_with(prefix)
            && name[prefix.len()..].iter().all(u8::is_ascii_digit)
    };
    name.ends_with(b".ibd") || digits_after(b"ibdata") || digits_after(b"undo")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_file_names() {
        for yes in ["./t/x.ibd", "ibdata1", "/d/ibdata12", "undo001", "/x/undo3"] {
            assert!(is_data_file(yes.as_bytes()), "{yes}");
        }
        for no in [
            "ib_logfile0",
            "x.frm",
            "ibdata",
            "undo",
            "undo1x",
            "ibd",
            "/t/ibdata1/x",
        ] {
            assert!(!is_data_file(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn states_round_trip() {
        let t = FdTable::default();
        assert_eq!(t.get(5), FdState::Untracked);
        assert_eq!(t.get(-1), FdState::Untracked);
        assert_eq!(t.get(MAX_FD as i32), FdState::Untracked);
        t.set_candidate(5);
        assert_eq!(t.get(5), FdState::Candidate);
        let id = Ident {
            space_id: u32::MAX - 1,
            page_size: 65536,
            format: SpaceFormat::FullCrc32,
        };
        t.set_identified(5, id);
        assert_eq!(t.get(5), FdState::Identified(id));
        let id2 = Ident {
            space_id: 0,
            page_size: 4096,
            format: SpaceFormat::Legacy,
        };
        t.set_identified(6, id2);
        assert_eq!(t.get(6), FdState::Identified(id2));
        t.clear(5);
        assert_eq!(t.get(5), FdState::Untracked);
    }
}
