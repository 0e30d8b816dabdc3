//! Guards that leave nothing behind, also when a measurement fails halfway: the
//! dbfork store (every source destroyed with its replicas, then the temp dir
//! removed) and single dbfork replicas.

use crate::dbfork_cli;
use experiments_support::Dbfork;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// Owns the bench's temp dir and the dbfork store inside it.
pub struct StoreGuard {
    pub dbfork: Dbfork,
    dir: Option<TempDir>,
}

impl StoreGuard {
    pub fn new(dbfork_exe: PathBuf, base: &Path) -> std::io::Result<StoreGuard> {
        std::fs::create_dir_all(base)?;
        let dir = tempfile::Builder::new().prefix("cb-").tempdir_in(base)?;
        let store = dir.path().join("store");
        std::fs::create_dir_all(&store)?;
        Ok(StoreGuard {
            dbfork: Dbfork::new(dbfork_exe, store),
            dir: Some(dir),
        })
    }

    /// Where native replicas and other scratch go.
    pub fn scratch(&self) -> &Path {
        self.dir.as_ref().expect("present until drop").path()
    }
}

impl Drop for StoreGuard {
    fn drop(&mut self) {
        match dbfork_cli::sources(&self.dbfork) {
            Ok(sources) => {
                for s in sources {
                    if let Err(e) = self.dbfork.destroy(&s) {
                        eprintln!("clonebench: cleanup: destroying {s}: {e:#}");
                    }
                }
            }
            Err(e) => eprintln!("clonebench: cleanup: listing the store: {e:#}"),
        }
        let Some(dir) = self.dir.take() else { return };
        let left = mounts_under(dir.path());
        if left.is_empty() {
            if let Err(e) = dir.close() {
                eprintln!("clonebench: cleanup: removing the temp dir: {e}");
            }
        } else {
            // Removing files through a live mount would delete a volume's content
            // behind its export's back; leave it for a person to look at.
            let kept = dir.keep();
            eprintln!(
                "clonebench: cleanup: {} still has mounts ({}); left in place",
                kept.display(),
                left.join(", ")
            );
        }
    }
}

/// Destroys one dbfork replica on Drop.
pub struct ReplicaGuard<'a> {
    pub dbfork: &'a Dbfork,
    pub name: String,
}

impl Drop for ReplicaGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.dbfork.destroy(&self.name) {
            eprintln!("clonebench: cleanup: destroying {}: {e:#}", self.name);
        }
    }
}

/// Mount points at or below `dir`, from /proc/self/mounts.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts_in(&text, dir)
}

fn mounts_in(mounts: &str, dir: &Path) -> Vec<String> {
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        // /proc/self/mounts escapes spaces and the like as octal; our paths have none.
        .filter(|mp| Path::new(mp).starts_with(dir))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mounts_below_a_dir_only() {
        let text = "/dev/vda / ext4 rw 0 0\n\
                    /dev/loop3 /tmp/cb-x/store/mnt/src ext4 rw 0 0\n\
                    nbdfuse /tmp/cb-x/store/run/src.fuse fuse rw 0 0\n\
                    /dev/loop4 /tmp/cb-xy/mnt ext4 rw 0 0\n";
        let got = mounts_in(text, Path::new("/tmp/cb-x"));
        assert_eq!(
            got,
            vec!["/tmp/cb-x/store/mnt/src", "/tmp/cb-x/store/run/src.fuse"]
        );
        assert!(mounts_in(text, Path::new("/nowhere")).is_empty());
    }

    #[test]
    fn an_empty_store_is_removed() {
        // A dbfork that lists nothing: `true` prints nothing and succeeds.
        let base = tempfile::tempdir().unwrap();
        let g = StoreGuard::new("/bin/true".into(), base.path()).unwrap();
        let dir = g.scratch().to_path_buf();
        assert!(dir.is_dir());
        drop(g);
        assert!(!dir.exists());
    }
}
