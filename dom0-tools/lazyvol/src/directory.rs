//! Directory volumes: a volume that is a directory tree on the store's own file
//! system instead of a stack of block layers. For stores on a file system that shares
//! extents (XFS with reflink, btrfs), a snapshot and a clone are a copy of the tree
//! whose files share their extents with the original (FICLONE per file): instant, no
//! data copied, and a clone is complete (independent) from its first read. A server
//! keeps its datadir in one and does its IO in the kernel, with no userspace hop.
//!
//! Consistency is the caller's: a snapshot copies the files one after the other, so
//! whoever writes the tree must be held still for its duration (dbfork stops the
//! server's process), like a filesystem freeze for a block snapshot.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Copies the tree `src` to `dst` (which must not exist) with every regular file's
/// extents shared (FICLONE). Directories and files keep their permission bits;
/// symlinks are recreated; sockets, fifos and devices are skipped (they are runtime
/// artefacts, not data). On error nothing of `dst` is left.
pub(crate) fn reflink_tree(src: &Path, dst: &Path) -> Result<()> {
    if dst.exists() {
        return Err(Error::Io {
            context: format!("copying {} to {}", src.display(), dst.display()),
            source: io::Error::from(io::ErrorKind::AlreadyExists),
        });
    }
    let res = copy_dir(src, dst);
    if res.is_err() {
        let _ = fs::remove_dir_all(dst);
    }
    res
}

fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(src).ctx(|| format!("reading {}", src.display()))?;
    fs::create_dir(dst).ctx(|| format!("creating {}", dst.display()))?;
    fs::set_permissions(dst, meta.permissions()).ctx(|| format!("chmod {}", dst.display()))?;
    for entry in fs::read_dir(src).ctx(|| format!("listing {}", src.display()))? {
        let entry = entry.ctx(|| format!("listing {}", src.display()))?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let ty = entry
            .file_type()
            .ctx(|| format!("reading {}", from.display()))?;
        if ty.is_dir() {
            copy_dir(&from, &to)?;
        } else if ty.is_file() {
            clone_file(&from, &to)?;
        } else if ty.is_symlink() {
            let target = fs::read_link(&from).ctx(|| format!("reading {}", from.display()))?;
            std::os::unix::fs::symlink(&target, &to)
                .ctx(|| format!("creating {}", to.display()))?;
        }
    }
    Ok(())
}

fn clone_file(from: &Path, to: &Path) -> Result<()> {
    let src = File::open(from).ctx(|| format!("opening {}", from.display()))?;
    let mode = src
        .metadata()
        .ctx(|| format!("reading {}", from.display()))?
        .mode();
    let dst = File::create_new(to).ctx(|| format!("creating {}", to.display()))?;
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors
    // are open for the duration of the call.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc != 0 {
        let source = io::Error::last_os_error();
        return Err(match source.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EXDEV) | Some(libc::EINVAL) => Error::NoReflink {
                path: to.to_path_buf(),
                source,
            },
            _ => Error::Io {
                context: format!(
                    "sharing the extents of {} with {}",
                    from.display(),
                    to.display()
                ),
                source,
            },
        });
    }
    fs::set_permissions(to, fs::Permissions::from_mode(mode & 0o7777))
        .ctx(|| format!("chmod {}", to.display()))
}

/// Bytes of the tree's regular files as the files say (holes and shared extents
/// count in full): the size a directory volume reports.
pub(crate) fn apparent_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => apparent_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_copy_refuses_an_existing_target_and_leaves_nothing_on_failure() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/f"), b"data").unwrap();
        let dst = d.path().join("dst");
        fs::create_dir(&dst).unwrap();
        assert!(reflink_tree(&src, &dst).is_err());
        fs::remove_dir(&dst).unwrap();
        // Where the file system cannot share extents (tmpfs, ext4) the copy fails by
        // name and leaves no half tree.
        match reflink_tree(&src, &dst) {
            Ok(()) => assert_eq!(fs::read(dst.join("sub/f")).unwrap(), b"data"),
            Err(Error::NoReflink { .. }) => assert!(!dst.exists()),
            Err(e) => panic!("{e}"),
        }
        assert_eq!(apparent_size(&src), 4);
    }
}
