//! The family's clone LSN: the LSN of the family's newest complete snapshot, which
//! dbfork publishes only AFTER the snapshot is complete. The source agent reads it
//! before every read it may offer to the family, and that value becomes the frame's
//! `valid_from` (the share rule, `frame_store::FrameRecord::valid_from`); a larger
//! value than before also starts the clone-time scan of the buffer pool.
//!
//! Where it comes from is the substrate's business: a file today
//! (`DBFORK_CLONE_LSN_FILE`), xenstore later. The agent only sees `CloneLsnSource`.

use std::path::{Path, PathBuf};

use crate::error::{AgentError, Result};

pub trait CloneLsnSource: Send + Sync {
    /// The clone LSN now, or None if it cannot be read (then nothing is offered: a
    /// frame without a valid_from can never be shared safely).
    fn current(&self) -> Option<u64>;
    /// For logs: where the value comes from.
    fn describe(&self) -> String;
}

/// A file holding the clone LSN as a decimal u64 (surrounding whitespace allowed).
pub struct CloneLsnFile {
    path: PathBuf,
}

impl CloneLsnFile {
    /// Checks once that the file is there, so a wrong path is a clear configuration
    /// error at startup rather than sharing that silently never starts.
    pub fn open(path: &Path) -> Result<CloneLsnFile> {
        std::fs::metadata(path)
            .map_err(|e| AgentError::io(format!("opening clone LSN file {}", path.display()), e))?;
        Ok(CloneLsnFile {
            path: path.to_owned(),
        })
    }
}

impl CloneLsnSource for CloneLsnFile {
    /// Read fresh each time by path. dbfork replaces the file with rename(2), so every
    /// read sees one whole value, old or new: reading an fd kept open while the file is
    /// rewritten in place could return a torn mix of two values, possibly larger than
    /// either, and a too-large valid_from would let a stale frame serve a later
    /// snapshot.
    fn current(&self) -> Option<u64> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        text.trim().parse().ok()
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_read_fresh_and_anything_unreadable_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clone_lsn");
        assert!(CloneLsnFile::open(&path).is_err(), "missing at startup");
        std::fs::write(&path, "1000\n").unwrap();
        let src = CloneLsnFile::open(&path).unwrap();
        assert_eq!(src.current(), Some(1000));
        let tmp = dir.path().join("clone_lsn.tmp");
        std::fs::write(&tmp, "2000").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(src.current(), Some(2000), "a replaced file is seen");
        std::fs::write(&path, "20x0").unwrap();
        assert_eq!(src.current(), None);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(src.current(), None);
    }
}
