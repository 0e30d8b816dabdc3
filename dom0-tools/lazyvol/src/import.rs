//! Bringing an existing raw image into the store as a full base layer: a reflink
//! (FICLONE) where the file system shares extents, a sparse-aware copy otherwise.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// How an import got its data into the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImportMethod {
    /// Extents shared with the source file (FICLONE); no data copied.
    Reflink,
    /// Data ranges copied (SEEK_DATA/SEEK_HOLE), holes left as holes.
    SparseCopy,
}

/// The outcome of [`crate::Store::import`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    pub method: ImportMethod,
    pub size: u64,
    /// Bytes physically copied (0 for a reflink).
    pub copied_bytes: u64,
}

/// Fills `dst` (empty, writable) with `src`'s content.
pub(crate) fn clone_or_copy(src: &File, dst: &File, size: u64) -> io::Result<ImportReport> {
    clone_or_copy_counted(src, dst, size, &mut |_| {})
}

/// As [`clone_or_copy`], telling `copied` the bytes of `src` done as they are (all at
/// once for a reflink).
fn clone_or_copy_counted(
    src: &File,
    dst: &File,
    size: u64,
    copied: &mut dyn FnMut(u64),
) -> io::Result<ImportReport> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors
    // are owned and open for the duration of the call.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        copied(size);
        return Ok(ImportReport {
            method: ImportMethod::Reflink,
            size,
            copied_bytes: 0,
        });
    }
    let err = io::Error::last_os_error();
    tracing::debug!(%err, "FICLONE unavailable, copying");
    dst.set_len(size)?;
    let n = sparse_copy(src, dst, size, copied)?;
    Ok(ImportReport {
        method: ImportMethod::SparseCopy,
        size,
        copied_bytes: n,
    })
}

fn seek(f: &File, off: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: lseek on an owned descriptor.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

/// Copies the data ranges of `src`, telling `done` how far into it the copy is.
fn sparse_copy(src: &File, dst: &File, size: u64, done: &mut dyn FnMut(u64)) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0;
    let mut pos = 0;
    while pos < size {
        let data = match seek(src, pos, libc::SEEK_DATA) {
            Ok(Some(d)) => d,
            Ok(None) => break,
            // File systems without SEEK_DATA: treat everything as data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => pos,
            Err(e) => return Err(e),
        };
        let hole = seek(src, data, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        let mut p = data;
        while p < hole {
            let n = ((hole - p) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], p)?;
            // Keep zero blocks sparse in the copy too.
            if buf[..n].iter().any(|&b| b != 0) {
                dst.write_all_at(&buf[..n], p)?;
            }
            copied += n as u64;
            p += n as u64;
            done(p);
        }
        pos = hole.max(pos + 1);
    }
    done(size);
    Ok(copied)
}

/// What [`copy_tree`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeCopy {
    pub files: u64,
    /// Bytes of the files (their sizes).
    pub bytes: u64,
    /// Files whose extents were shared (FICLONE) rather than copied.
    pub reflinked: u64,
}

/// The bytes of the regular files under `dir` (what [`copy_tree`] goes through).
pub fn tree_bytes(dir: &Path) -> io::Result<u64> {
    tree_bytes_of(dir, &|_| true)
}

/// `tree_bytes` of the entries `counted` keeps (a directory left out is left out
/// whole).
pub fn tree_bytes_of(dir: &Path, counted: &dyn Fn(&Path) -> bool) -> io::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        if !counted(&path) {
            continue;
        }
        let m = path.symlink_metadata()?;
        if m.is_dir() {
            total += tree_bytes_of(&path, counted)?;
        } else if m.is_file() {
            total += m.len();
        }
    }
    Ok(total)
}

/// Copies the directory tree `src` into `dst` (an existing, empty directory): files
/// reflinked where the file system shares extents and copied with their holes
/// otherwise, directories and symlinks made again, each with its owner and mode, every
/// file synced before this returns. Sockets, FIFOs and devices are left out (a
/// server's socket is its runtime's, not its data). `copied` hears the bytes of files
/// done so far.
pub fn copy_tree(src: &Path, dst: &Path, copied: &mut dyn FnMut(u64)) -> io::Result<TreeCopy> {
    let mut report = TreeCopy::default();
    copy_dir(src, dst, &mut report, copied)?;
    File::open(dst)?.sync_all()?;
    Ok(report)
}

fn copy_dir(
    src: &Path,
    dst: &Path,
    report: &mut TreeCopy,
    copied: &mut dyn FnMut(u64),
) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let context = |what: &str, p: &Path, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
    };
    for e in std::fs::read_dir(src).map_err(|e| context("reading", src, e))? {
        let e = e?;
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let m = from
            .symlink_metadata()
            .map_err(|e| context("reading", &from, e))?;
        if m.is_dir() {
            std::fs::create_dir(&to).map_err(|e| context("making", &to, e))?;
            copy_dir(&from, &to, report, copied)?;
            File::open(&to)?.sync_all()?;
        } else if m.is_file() {
            let s = File::open(&from).map_err(|e| context("opening", &from, e))?;
            let d = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&to)
                .map_err(|e| context("making", &to, e))?;
            let before = report.bytes;
            let r = clone_or_copy_counted(&s, &d, m.len(), &mut |n| copied(before + n))
                .map_err(|e| context("copying", &from, e))?;
            d.sync_all().map_err(|e| context("syncing", &to, e))?;
            report.files += 1;
            report.bytes += m.len();
            report.reflinked += u64::from(r.method == ImportMethod::Reflink);
        } else if m.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)
                .map_err(|e| context("making", &to, e))?;
            std::os::unix::fs::lchown(&to, Some(m.uid()), Some(m.gid()))?;
            continue;
        } else {
            continue;
        }
        std::os::unix::fs::chown(&to, Some(m.uid()), Some(m.gid()))
            .map_err(|e| context("setting the owner of", &to, e))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(m.mode() & 0o7777))
            .map_err(|e| context("setting the mode of", &to, e))?;
    }
    Ok(())
}

/// Gives everything under `dir` (and `dir`) to `uid`:`gid`.
pub fn chown_tree(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.symlink_metadata()?.is_dir() {
            chown_tree(&p, uid, gid)?;
        } else {
            std::os::unix::fs::lchown(&p, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn a_tree_is_copied_with_owners_modes_holes_and_links_and_without_sockets() {
        let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let s = src.path();
        std::fs::create_dir_all(s.join("db/sub")).unwrap();
        std::fs::write(s.join("ibdata1"), vec![7u8; 300_000]).unwrap();
        // A file with a hole: 1 MiB of nothing between two written ends.
        let f = File::create(s.join("db/sub/t.ibd")).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", 3 << 20).unwrap();
        std::os::unix::fs::symlink("../ibdata1", s.join("db/link")).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(s.join("mysqld.sock")).unwrap();
        let as_root = nix_is_root();
        if as_root {
            std::os::unix::fs::chown(s.join("db"), Some(1234), Some(5678)).unwrap();
        }
        std::fs::set_permissions(s.join("ibdata1"), std::fs::Permissions::from_mode(0o640))
            .unwrap();

        let total = tree_bytes(s).unwrap();
        assert_eq!(total, 300_000 + (3 << 20) + 4);
        let mut seen = Vec::new();
        let r = copy_tree(s, dst.path(), &mut |n| seen.push(n)).unwrap();
        assert_eq!((r.files, r.bytes), (2, total));
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert_eq!(seen.last(), Some(&total));

        let d = dst.path();
        assert_eq!(
            std::fs::read(d.join("ibdata1")).unwrap(),
            vec![7u8; 300_000]
        );
        let t = std::fs::read(d.join("db/sub/t.ibd")).unwrap();
        assert_eq!((&t[..4], &t[3 << 20..]), (&b"head"[..], &b"tail"[..]));
        assert!(t[4..3 << 20].iter().all(|&b| b == 0));
        assert_eq!(
            std::fs::read_link(d.join("db/link")).unwrap(),
            Path::new("../ibdata1")
        );
        assert!(!d.join("mysqld.sock").exists());
        let mode = d.join("ibdata1").metadata().unwrap().mode() & 0o777;
        assert_eq!(mode, 0o640);
        if as_root {
            let m = d.join("db").metadata().unwrap();
            assert_eq!((m.uid(), m.gid()), (1234, 5678));
            chown_tree(d, 42, 43).unwrap();
            let m = d.join("db/sub/t.ibd").metadata().unwrap();
            assert_eq!((m.uid(), m.gid()), (42, 43));
        } else {
            eprintln!("SKIP (owners): not root, cannot give files to other users");
        }
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}
