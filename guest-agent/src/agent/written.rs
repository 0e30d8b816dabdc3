//! The pages a replica wrote itself (share rule: never served from the family again),
//! kept in a file so a restarted replica remembers them, and the poison file that
//! turns sharing off for good when a write could not be recorded.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::{error_chain, key, Agent};
use crate::error::{AgentError, Result};

/// Marks a written-page file that missed a write (sharing is off for good).
pub fn poison_path(writes: &Path) -> PathBuf {
    let mut s = writes.as_os_str().to_owned();
    s.push(".poisoned");
    s.into()
}

/// The set of pages this replica wrote, mirrored in an append-only file of u64 keys
/// (little endian) so it survives a restart. A key is appended before the page write
/// is issued; a torn last entry (crash mid-append) is ignored on load, which is safe
/// because the page write it preceded had not been issued yet.
#[derive(Default)]
pub struct WrittenSet {
    keys: HashSet<u64>,
    file: Option<File>,
}

impl WrittenSet {
    pub fn open(path: &Path) -> Result<WrittenSet> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                AgentError::io(format!("opening written-page file {}", path.display()), e)
            })?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| AgentError::io("reading the written-page file", e))?;
        let keys = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok(WrittenSet {
            keys,
            file: Some(file),
        })
    }

    /// `open`, refused when an earlier run poisoned the file: that run missed a write,
    /// so the set is incomplete and the datadir must never be shared again.
    pub fn open_unpoisoned(path: &Path) -> Result<WrittenSet> {
        let poison = poison_path(path);
        if poison.exists() {
            return Err(AgentError::Config {
                var: "DBFORK_REPLICA_WRITES",
                msg: format!(
                    "{} exists: an earlier run could not record a write, so this \
                     datadir is never shared again",
                    poison.display()
                ),
            });
        }
        WrittenSet::open(path)
    }

    pub fn contains(&self, k: &u64) -> bool {
        self.keys.contains(k)
    }

    pub fn insert(&mut self, keys: &[u64]) -> Result<()> {
        use std::io::Write;
        let new: Vec<u8> = keys
            .iter()
            .filter(|k| self.keys.insert(**k))
            .flat_map(|k| k.to_le_bytes())
            .collect();
        if let (Some(f), false) = (self.file.as_mut(), new.is_empty()) {
            f.write_all(&new)
                .map_err(|e| AgentError::io("appending to the written-page file", e))?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl Agent {
    /// Records pages the server is about to write. Without a durable record a
    /// restarted replica could be served a stale copy of such a page: if recording
    /// fails, sharing stops now, and for every later run too (the poison file).
    pub(super) fn record_written(&self, keys: &[u64]) {
        let Err(e) = self.written.lock().insert(keys) else {
            return;
        };
        self.written_set_incomplete(&format!(
            "recording written pages failed: {}",
            error_chain(&e)
        ));
    }

    /// The server wrote pages this replica cannot name (a data file it could not
    /// identify, a record that failed): sharing stops now, and the poison file keeps
    /// it off for every later run of this datadir (a restart would otherwise trust a
    /// set that misses those pages).
    pub(super) fn written_set_incomplete(&self, why: &str) {
        if let Some(w) = &self.config.writes_file {
            if let Err(pe) = File::create(poison_path(w)) {
                tracing::error!(
                    "dbfork agent: cannot mark {} as incomplete: {pe}; do not share this datadir again",
                    w.display()
                );
            }
        }
        self.disable_sharing(why);
    }

    pub fn written_by_me(&self, space: u32, page: u32) -> bool {
        self.written.lock().contains(&key(space, page))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use crate::frame_store::FRAME_SIZE;
    use std::os::unix::io::AsRawFd;

    #[test]
    fn replica_writes_are_remembered_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let arena = Arena::new();
        std::fs::write(dir.path().join("clone_lsn"), "1000").unwrap();
        let file = dir.path().join("t.ibd");
        tablespace(&file, 3, 900);
        let src = agent(dir.path(), "source", 0);
        arena.show(&src);
        let f = open_tracked(&src, &file);
        let fr = arena.frame();
        for n in 0..3 {
            read(&src, &f, &fr, n);
        }
        let rep = agent(dir.path(), "replica", 1000);
        arena.show(&rep);
        let rf = open_tracked(&rep, &file);
        rep.on_pwrite(rf.as_raw_fd(), FRAME_SIZE, FRAME_SIZE as i64, &[]); // page 1
        assert!(rep.written_by_me(SPACE, 1));
        read(&rep, &rf, &fr, 1);
        read(&rep, &rf, &fr, 2);
        let s = rep.snapshot();
        assert_eq!((s.shared, s.declined_written), (1, 1));
        drop(rep);
        let again = agent(dir.path(), "replica", 1000);
        arena.show(&again);
        assert!(again.written_by_me(SPACE, 1));
        assert!(!again.written_by_me(SPACE, 2));
    }

    #[test]
    fn a_failed_write_record_poisons_the_datadir_for_later_runs() {
        let dir = tempfile::tempdir().unwrap();
        let arena = Arena::new();
        std::fs::write(dir.path().join("clone_lsn"), "1000").unwrap();
        let file = dir.path().join("t.ibd");
        tablespace(&file, 2, 900);
        let src = agent(dir.path(), "source", 0);
        arena.show(&src);
        let rep = agent(dir.path(), "replica", 1000);
        arena.show(&rep);
        let rf = open_tracked(&rep, &file);
        // The writes file becomes unwritable (a read-only fd stands in for a full disk).
        let writes = dir.path().join("replica.writes");
        rep.written.lock().file = Some(File::open(&writes).unwrap());
        rep.on_pwrite(rf.as_raw_fd(), FRAME_SIZE, FRAME_SIZE as i64, &[]);
        assert!(!rep.sharing_on());
        assert!(poison_path(&writes).exists());
        let again = agent(dir.path(), "replica", 1000);
        assert!(!again.sharing_on());
        assert!(again
            .snapshot()
            .sharing_off_reason
            .unwrap()
            .contains("poisoned"));
    }

    #[test]
    fn a_write_to_an_unidentified_data_file_poisons_the_datadir_for_later_runs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("clone_lsn"), "1000").unwrap();
        // A data file whose page 0 is zeros when opened (being created): a candidate
        // the agent cannot name yet.
        let file = dir.path().join("new.ibd");
        std::fs::write(&file, vec![0u8; 4 * FRAME_SIZE]).unwrap();
        let _src = agent(dir.path(), "source", 0); // makes the family's pool
        let rep = agent(dir.path(), "replica", 1000);
        let rf = open_tracked(&rep, &file);
        assert!(rep.sharing_on());
        // Written past page 0 first: which space it is stays unknown.
        rep.on_pwrite(rf.as_raw_fd(), FRAME_SIZE, 2 * FRAME_SIZE as i64, &[]);
        assert!(!rep.sharing_on());
        let writes = dir.path().join("replica.writes");
        assert!(
            poison_path(&writes).exists(),
            "the datadir must stay unshared"
        );
        drop(rep);
        let again = agent(dir.path(), "replica", 1000);
        assert!(!again.sharing_on(), "a restart trusted an incomplete set");
    }

    #[test]
    fn pages_written_into_a_file_without_page_0_yet_are_named_by_their_headers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("clone_lsn"), "1000").unwrap();
        // Empty when opened (recovery or the server fills it page by page, page 0
        // last): nothing to identify it by at the open.
        let file = dir.path().join("gtid_slave_pos.ibd");
        std::fs::write(&file, b"").unwrap();
        let _src = agent(dir.path(), "source", 0);
        let rep = agent(dir.path(), "replica", 1000);
        let rf = open_tracked(&rep, &file);
        let page = crate::page::testpage::full_crc32_page(SPACE, 3, 1200);
        rep.on_pwrite(rf.as_raw_fd(), FRAME_SIZE, 3 * FRAME_SIZE as i64, &page);
        assert!(rep.sharing_on(), "{:?}", rep.snapshot().sharing_off_reason);
        assert!(rep.written_by_me(SPACE, 3));
        // Two pages in one write: both recorded.
        let page = crate::page::testpage::full_crc32_page(SPACE, 5, 1200);
        rep.on_pwrite(rf.as_raw_fd(), 2 * FRAME_SIZE, 5 * FRAME_SIZE as i64, &page);
        assert!(rep.written_by_me(SPACE, 5) && rep.written_by_me(SPACE, 6));
        drop(rep);
        let again = agent(dir.path(), "replica", 1000);
        assert!(again.written_by_me(SPACE, 3) && again.written_by_me(SPACE, 6));
        // A header that does not match where it is written names nothing: poisoned.
        let rf = open_tracked(&again, &file);
        let wrong = crate::page::testpage::full_crc32_page(SPACE, 3, 1200);
        again.on_pwrite(rf.as_raw_fd(), FRAME_SIZE, 7 * FRAME_SIZE as i64, &wrong);
        assert!(!again.sharing_on());
        assert!(poison_path(&dir.path().join("replica.writes")).exists());
    }
}
