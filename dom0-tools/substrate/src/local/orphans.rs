//! Host resources a store owns outside its directory: family pools in /dev/shm (RAM)
//! and replicas' IO groups, all named `dbfork-<store tag>-...`, the tag being the
//! store directory's device and inode (`d<dev>i<ino>`). `dbfork destroy` removes them;
//! a store deleted by hand (rm -rf) would leave them forever. Each store claims its tag
//! in a small owner file (`dbfork-<tag>.store`, holding the store's path) next to its
//! pools, and a sweep removes what belongs to a store that is gone.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where family pools live (shared memory).
pub const SHM: &str = "/dev/shm";

/// The tag that names a store's host resources: its directory's device and inode. An
/// inode number alone repeats across file systems (every fresh XFS gives its first
/// directories the same numbers), and two stores with one tag would share family pools
/// and sweep each other's.
pub fn store_tag(store_dir: &Path) -> String {
    std::fs::metadata(store_dir)
        .map(|m| tag(m.dev(), m.ino()))
        .unwrap_or_else(|_| tag(0, 0))
}

fn tag(dev: u64, ino: u64) -> String {
    format!("d{dev}i{ino}")
}

/// Whether `s` is a tag as `store_tag` makes them (owner files of other forms, such as
/// the inode-only ones of earlier versions, are never swept).
fn is_tag(s: &str) -> bool {
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    s.strip_prefix('d')
        .and_then(|r| r.split_once('i'))
        .is_some_and(|(d, i)| digits(d) && digits(i))
}

fn owner_file(shm: &Path, tag: &str) -> PathBuf {
    shm.join(format!("dbfork-{tag}.store"))
}

/// Records that `store_dir` owns the resources named after its tag.
pub fn claim(shm: &Path, store_dir: &Path) -> std::io::Result<()> {
    let tag = store_tag(store_dir);
    let path = std::fs::canonicalize(store_dir)?;
    let file = owner_file(shm, &tag);
    if std::fs::read(&file).ok().as_deref() == Some(path.as_os_str().as_encoded_bytes()) {
        return Ok(());
    }
    std::fs::write(file, path.as_os_str().as_encoded_bytes())
}

/// Drops the store's claim once nothing named after it is left (its last source was
/// destroyed), so a destroyed store leaves no owner file behind.
pub fn release(shm: &Path, store_dir: &Path, group_roots: &[PathBuf]) {
    let tag = store_tag(store_dir);
    let none_left = named_after(shm, &tag).is_empty()
        && group_roots.iter().all(|r| named_after(r, &tag).is_empty());
    if none_left {
        let _ = std::fs::remove_file(owner_file(shm, &tag));
    }
}

/// Entries of `dir` named after the store tagged `tag` (`dbfork-<tag>-...`).
fn named_after(dir: &Path, tag: &str) -> Vec<PathBuf> {
    let prefix = format!("dbfork-{tag}-");
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|x| x.file_name().to_string_lossy().starts_with(&prefix))
                .map(|x| x.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the store recorded for `tag` still exists with that device and inode.
fn owner_alive(tag: &str, store: &Path) -> bool {
    store_tag(store) == tag
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub pools: Vec<PathBuf>,
    pub groups: Vec<PathBuf>,
}

/// Removes the pools (in `shm`) and IO groups (directly under each of `group_roots`)
/// of every store whose owner file names a store that no longer exists. Resources of
/// live stores and anything without an owner file are left alone. A group that still
/// holds a process cannot be removed and stays (the sweep runs again next time).
pub fn sweep(shm: &Path, group_roots: &[PathBuf]) -> Swept {
    let mut swept = Swept::default();
    let Ok(entries) = std::fs::read_dir(shm) else {
        return swept;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(tag) = name
            .to_str()
            .and_then(|n| n.strip_prefix("dbfork-"))
            .and_then(|n| n.strip_suffix(".store"))
            .filter(|n| is_tag(n))
        else {
            continue;
        };
        let Ok(store) = std::fs::read(e.path()) else {
            continue;
        };
        let store = PathBuf::from(std::ffi::OsStr::from_bytes(&store));
        if owner_alive(tag, &store) {
            continue;
        }
        for p in named_after(shm, tag) {
            if p.extension().is_some_and(|x| x == "pool") && std::fs::remove_file(&p).is_ok() {
                swept.pools.push(p);
            }
        }
        let mut groups_left = false;
        for root in group_roots {
            for g in named_after(root, tag) {
                if std::fs::remove_dir(&g).is_ok() {
                    swept.groups.push(g);
                } else {
                    groups_left = true;
                }
            }
        }
        if !groups_left {
            let _ = std::fs::remove_file(e.path());
        }
        tracing::info!(tag, store = %store.display(), "swept host resources of a store that is gone");
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gone_stores_pools_and_groups_are_swept_and_a_live_ones_kept() {
        let shm = tempfile::tempdir().unwrap();
        let groups = tempfile::tempdir().unwrap();
        let gone = tempfile::tempdir().unwrap();
        let live = tempfile::tempdir().unwrap();
        let make = |store: &Path| {
            claim(shm.path(), store).unwrap();
            let tag = store_tag(store);
            let pool = shm.path().join(format!("dbfork-{tag}-family-1.pool"));
            std::fs::write(&pool, b"pages").unwrap();
            let group = groups.path().join(format!("dbfork-{tag}-r1"));
            std::fs::create_dir(&group).unwrap();
            (pool, group)
        };
        let (gone_pool, gone_group) = make(gone.path());
        let (live_pool, live_group) = make(live.path());
        // Claiming again is idempotent.
        claim(shm.path(), live.path()).unwrap();
        // Unrelated files in shm are never touched, even with a similar name.
        let other = shm.path().join("dbfork-notanumber.store");
        std::fs::write(&other, "/nonexistent").unwrap();
        // Nor an inode-only owner file of an earlier version, or its pools.
        let legacy = shm.path().join("dbfork-131.store");
        std::fs::write(&legacy, "/nonexistent").unwrap();
        let legacy_pool = shm.path().join("dbfork-131-family-1.pool");
        std::fs::write(&legacy_pool, b"pages").unwrap();
        let gone_tag = store_tag(gone.path());
        drop(gone);

        let swept = sweep(shm.path(), &[groups.path().to_path_buf()]);
        assert_eq!(swept.pools, vec![gone_pool.clone()]);
        assert_eq!(swept.groups, vec![gone_group.clone()]);
        assert!(!gone_pool.exists() && !gone_group.exists());
        assert!(!owner_file(shm.path(), &gone_tag).exists());
        assert!(live_pool.exists() && live_group.exists() && other.exists());
        assert!(legacy.exists() && legacy_pool.exists());
        assert!(owner_file(shm.path(), &store_tag(live.path())).exists());
        // Nothing more to do the second time.
        assert_eq!(
            sweep(shm.path(), &[groups.path().to_path_buf()]),
            Swept::default()
        );
        // A live store releases its claim only once its pools and groups are gone.
        let roots = [groups.path().to_path_buf()];
        release(shm.path(), live.path(), &roots);
        assert!(owner_file(shm.path(), &store_tag(live.path())).exists());
        std::fs::remove_file(&live_pool).unwrap();
        std::fs::remove_dir(&live_group).unwrap();
        release(shm.path(), live.path(), &roots);
        assert!(!owner_file(shm.path(), &store_tag(live.path())).exists());
    }

    /// Two stores whose directories have the same inode number on different file
    /// systems (every fresh XFS numbers its first directories alike) get different
    /// tags, so neither shares nor sweeps the other's family pools.
    #[test]
    fn stores_on_different_file_systems_never_share_a_tag() {
        assert_ne!(tag(7, 131), tag(8, 131));
        assert_ne!(tag(1, 31), tag(13, 1), "no digits run together");
        let t = store_tag(Path::new("/"));
        let root = std::fs::metadata("/").unwrap();
        assert_eq!(t, format!("d{}i{}", root.dev(), root.ino()));
        assert!(is_tag(&t) && is_tag("d0i0"));
        for not in ["131", "notanumber", "d12", "di5", "d1i", "x1i2", "d1i2x"] {
            assert!(!is_tag(not), "{not}");
        }
    }

    #[test]
    fn a_group_that_cannot_be_removed_keeps_the_owner_file_for_the_next_sweep() {
        let shm = tempfile::tempdir().unwrap();
        let groups = tempfile::tempdir().unwrap();
        let gone = tempfile::tempdir().unwrap();
        claim(shm.path(), gone.path()).unwrap();
        let tag = store_tag(gone.path());
        // A non-empty directory stands for a group that still holds a process.
        let busy = groups.path().join(format!("dbfork-{tag}-r1"));
        std::fs::create_dir_all(busy.join("member")).unwrap();
        drop(gone);
        let swept = sweep(shm.path(), &[groups.path().to_path_buf()]);
        assert!(swept.groups.is_empty());
        assert!(owner_file(shm.path(), &tag).exists());
        std::fs::remove_dir(busy.join("member")).unwrap();
        let swept = sweep(shm.path(), &[groups.path().to_path_buf()]);
        assert_eq!(swept.groups, vec![busy]);
        assert!(!owner_file(shm.path(), &tag).exists());
    }
}
