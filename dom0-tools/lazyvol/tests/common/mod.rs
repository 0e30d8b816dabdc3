//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// A mounted file system, unmounted (lazily, if busy) on drop.
pub struct Mount {
    dir: tempfile::TempDir,
    // Keeps a loop image alive as long as the mount.
    _image_dir: Option<tempfile::TempDir>,
}

impl Mount {
    pub fn new(args: &[&str]) -> Result<Mount, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(args)
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(Mount {
            dir,
            _image_dir: None,
        })
    }

    /// A fresh XFS with reflink on a sparse loop image.
    pub fn xfs_reflink() -> Result<Mount, String> {
        let work = tempfile::tempdir().map_err(|e| e.to_string())?;
        let img = work.path().join("xfs.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(320 << 20))
            .map_err(|e| e.to_string())?;
        let out = Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&img)
            .output()
            .map_err(|e| format!("mkfs.xfs unavailable ({e})"))?;
        if !out.status.success() {
            return Err(format!(
                "mkfs.xfs failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let mut m = Mount::new(&["-o", "loop", img.to_str().unwrap()])?;
        m._image_dir = Some(work);
        Ok(m)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Bytes in use on the file system holding `path`.
pub fn used_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: statvfs fills the struct on success; we read it only then.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    // SAFETY: initialised by the successful call above.
    let st = unsafe { st.assume_init() };
    (st.f_blocks - st.f_bfree) * st.f_frsize
}
