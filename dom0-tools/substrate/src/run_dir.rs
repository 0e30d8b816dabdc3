//! Where dbfork keeps runtime files under a store directory.

use std::path::{Path, PathBuf};

/// Default store when neither `--store` nor `DBFORK_STORE` is given.
pub const DEFAULT_STORE: &str = "/var/lib/dbfork";

/// The runtime files of a store: sockets and logs of live exports, and each
/// backend's own records of what it attached.
/// They live beside the volumes so that two stores on one host never collide.
#[derive(Debug, Clone)]
pub struct RunDir {
    dir: PathBuf,
}

impl RunDir {
    pub fn new(store: &Path) -> Self {
        RunDir {
            dir: store.join("run"),
        }
    }
    pub fn path(&self) -> &Path {
        &self.dir
    }
    pub fn ensure(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)
    }
    /// NBD socket of the volume's export process.
    pub fn nbd_socket(&self, volume: &str) -> PathBuf {
        self.dir.join(format!("{volume}.nbd"))
    }
    /// Control socket of the volume's export process.
    pub fn control_socket(&self, volume: &str) -> PathBuf {
        self.dir.join(format!("{volume}.ctl"))
    }
    /// Log of a detached export process.
    pub fn export_log(&self, volume: &str) -> PathBuf {
        self.dir.join(format!("{volume}.log"))
    }
}
