//! What dom0 keeps of a Xen family's page sharing: how its source's guest side is
//! reached (the clone LSN and the replicas to grant to go to it over its channel), the
//! clone LSN last published, and the replicas running now with their domids (what
//! the source grants to). One JSON file per family in the store, changed under a lock
//! (two dbfork commands may start replicas of one source at once) and replaced whole.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XenFamily {
    /// The source's domain, while it runs with its agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<FamilySource>,
    /// The clone LSN published last (kept across the source's restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_lsn: Option<u64>,
    /// The frames the source may share (its pool cap under the grant budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_frames: Option<u64>,
    /// Replicas running with their agent: name -> domid.
    #[serde(default)]
    pub replicas: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilySource {
    pub vm: String,
    /// dom0's end of its guest channel.
    pub channel: PathBuf,
}

impl XenFamily {
    /// The domains the source grants to: its running replicas.
    pub fn grantees(&self) -> Vec<u32> {
        self.replicas.values().copied().collect()
    }
}

fn dir(store: &Path, family: u32) -> PathBuf {
    store.join("families").join(family.to_string())
}

fn file(store: &Path, family: u32) -> PathBuf {
    dir(store, family).join("xen.json")
}

/// The family's record (empty when there is none).
pub fn load(store: &Path, family: u32) -> Result<XenFamily> {
    let path = file(store, family);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Error::CorruptRecord(path.display().to_string(), e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(XenFamily::default()),
        Err(e) => Err(Error::io("reading", &path)(e)),
    }
}

/// Changes the family's record under its lock; returns it as saved.
pub fn update(store: &Path, family: u32, change: impl FnOnce(&mut XenFamily)) -> Result<XenFamily> {
    let dir = dir(store, family);
    std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
    let lock_path = dir.join("xen.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(Error::io("opening", &lock_path))?;
    // SAFETY: flock on a descriptor we own; released when `lock` closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(Error::io("locking", &lock_path)(
            std::io::Error::last_os_error(),
        ));
    }
    let mut f = load(store, family)?;
    change(&mut f);
    let path = file(store, family);
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec_pretty(&f)
        .map_err(|e| Error::CorruptRecord(path.display().to_string(), e.to_string()))?;
    std::fs::write(&tmp, text).map_err(Error::io("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(Error::io("replacing", &path))?;
    Ok(f)
}

/// Removes the family's record.
pub fn remove(store: &Path, family: u32) {
    let _ = std::fs::remove_dir_all(dir(store, family));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_keeps_its_source_replicas_and_clone_lsn_until_removed() {
        let store = tempfile::tempdir().unwrap();
        assert_eq!(load(store.path(), 3).unwrap(), XenFamily::default());
        update(store.path(), 3, |f| {
            f.source = Some(FamilySource {
                vm: "db".into(),
                channel: "/run/db.chan".into(),
            });
            f.replicas.insert("r2".into(), 9);
            f.replicas.insert("r1".into(), 7);
        })
        .unwrap();
        let f = update(store.path(), 3, |f| f.clone_lsn = Some(42)).unwrap();
        assert_eq!(f.grantees(), vec![7, 9]);
        assert_eq!(load(store.path(), 3).unwrap(), f);
        // Another family is another record.
        assert_eq!(load(store.path(), 4).unwrap(), XenFamily::default());
        remove(store.path(), 3);
        assert_eq!(load(store.path(), 3).unwrap(), XenFamily::default());
    }

    #[test]
    fn a_damaged_record_is_an_error_not_an_empty_family() {
        let store = tempfile::tempdir().unwrap();
        update(store.path(), 3, |_| {}).unwrap();
        std::fs::write(file(store.path(), 3), b"{not json").unwrap();
        assert!(matches!(
            load(store.path(), 3),
            Err(Error::CorruptRecord(..))
        ));
    }
}
