//! The crate's one error type. Control-plane calls return [`Error`]; the IO methods of
//! [`crate::Volume`] return `io::Result` (the shape the NBD layer wants) and carry the
//! same information in the `io::Error` (ENOSPC stays ENOSPC).

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the volume engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown volume {0:?}")]
    UnknownVolume(String),
    #[error("a volume named {0:?} already exists")]
    NameClash(String),
    #[error("invalid volume name {0:?} (use 1-64 of A-Z a-z 0-9 . _ -, not starting with '.')")]
    InvalidName(String),
    #[error("disk full while {context}")]
    DiskFull {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("snapshot {snapshot:?} is in use by clones that still depend on it: {}", clones.join(", "))]
    SnapshotInUse {
        snapshot: String,
        clones: Vec<String>,
    },
    #[error("volume {name:?} is open in another process{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    VolumeBusy { name: String, pid: Option<u32> },
    #[error("{0:?} is not a snapshot; clone a snapshot (dbfork volume snapshot VOL SNAP first)")]
    NotASnapshot(String),
    #[error("volume {0:?} is read-only")]
    ReadOnly(String),
    #[error("invalid region size {0}: must be a power of two, at least 4096")]
    InvalidRegionSize(u64),
    #[error("invalid volume size {0}: must be greater than zero")]
    InvalidSize(u64),
    #[error("{name:?} is a directory volume: it has no blocks to open or serve over NBD")]
    NotBlockVolume { name: String },
    #[error("{name:?} is a block volume, not a directory volume")]
    NotDirectoryVolume { name: String },
    #[error("the store's file system cannot share extents ({}); directory volumes need XFS with reflink or btrfs", path.display())]
    NoReflink {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt metadata {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("metadata {path} is not valid JSON")]
    BadJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn is_enospc(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT)
}

/// Attaches context to an `io::Error`, turning ENOSPC into [`Error::DiskFull`].
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| {
            let context = context();
            if is_enospc(&source) {
                Error::DiskFull { context, source }
            } else {
                Error::Io { context, source }
            }
        })
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind_errno = match &e {
            Error::DiskFull { .. } => Some(libc::ENOSPC),
            Error::ReadOnly(_) => Some(libc::EROFS),
            Error::VolumeBusy { .. } => Some(libc::EBUSY),
            Error::UnknownVolume(_) => Some(libc::ENOENT),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        };
        match kind_errno {
            Some(errno) => {
                let base = io::Error::from_raw_os_error(errno);
                io::Error::new(base.kind(), format!("{e} ({base})"))
            }
            None => io::Error::other(e.to_string()),
        }
    }
}
