//! THE SHARE RULE (decided by the project lead; see README.md). A stored frame may stand
//! in for a replica's read of (space, page) only if
//!   entry.lsn <= S  AND  entry.valid_from >= S  AND  the replica has not written that
//!   page since the clone  AND  checksum + page_no + space_id of the mapped bytes verify.
//! S is the replica's snapshot LSN; valid_from is the family's clone LSN the source
//! read before the read that produced the bytes (`frame_store::FrameRecord`). The
//! bytes check is done by the caller on the mapped frame (`page::verify_identity`);
//! this module decides the rest.

use crate::directory::DirEntry;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decline {
    /// The frame is a newer version than the replica's snapshot.
    NewerThanSnapshot,
    /// The frame was read before the snapshot; it may have been superseded by then.
    ReadBeforeSnapshot,
    /// The replica wrote this page itself: its own version is on its disk.
    WrittenByReplica,
}

pub fn may_share(
    entry: &DirEntry,
    snapshot_lsn: u64,
    written_by_replica: bool,
) -> Result<(), Decline> {
    if written_by_replica {
        return Err(Decline::WrittenByReplica);
    }
    if entry.lsn > snapshot_lsn {
        return Err(Decline::NewerThanSnapshot);
    }
    if entry.valid_from < snapshot_lsn {
        return Err(Decline::ReadBeforeSnapshot);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(lsn: u64, valid_from: u64) -> DirEntry {
        DirEntry {
            frame: pagetable::Frame::LocalPool { offset: 0 },
            lsn,
            valid_from,
        }
    }

    #[test]
    fn each_clause_of_the_rule_can_decline() {
        let s = 1000;
        assert_eq!(may_share(&e(900, 1000), s, false), Ok(()));
        assert_eq!(may_share(&e(1000, 5000), s, false), Ok(()));
        assert_eq!(
            may_share(&e(1001, 5000), s, false),
            Err(Decline::NewerThanSnapshot)
        );
        assert_eq!(
            may_share(&e(900, 999), s, false),
            Err(Decline::ReadBeforeSnapshot)
        );
        assert_eq!(
            may_share(&e(900, 1000), s, true),
            Err(Decline::WrittenByReplica)
        );
    }
}
