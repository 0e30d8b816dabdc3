//! The crate's one error type: what can go wrong attaching volumes to domains,
//! starting and stopping them, and reaching their database servers.

use std::path::PathBuf;
use std::time::Duration;

/// An error a caller's hook raised (the orchestration binding a domain to its page
/// table family before the server runs); kept whole so its chain survives.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the {substrate} substrate is not built yet; {hint}")]
    NotBuilt {
        substrate: &'static str,
        hint: &'static str,
    },
    #[error("{what} is not for the {substrate} substrate: {fix}")]
    NotForSubstrate {
        what: String,
        substrate: crate::Kind,
        fix: &'static str,
    },
    #[error("this host cannot run Xen domains: {0}")]
    XenHostLacks(String),
    #[error("xl config {}", file.display())]
    XlConfig {
        file: PathBuf,
        #[source]
        source: xlcfg::Error,
    },
    #[error("domain {name}: {what}")]
    Domain { name: String, what: String },
    #[error("this host cannot run local domains: {0}")]
    HostLacks(String),
    #[cfg(feature = "xen")]
    #[error("xenstore")]
    Xenstore(#[from] xenstore::Error),
    #[error("{name}'s guest side")]
    Guest {
        name: String,
        #[source]
        source: guest_channel::Error,
    },

    // --- host tools
    #[error("`{program}` is not installed (install the Debian package {package}, or run scripts/install-deps)")]
    ToolMissing {
        program: String,
        package: &'static str,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    ToolFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("could not run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    // --- attach
    #[error("volume {0} is already attached at {1} (detach it first: dbfork volume detach {0})")]
    AlreadyAttached(String, String),
    #[error("volume {0} is not attached")]
    NotAttached(String),
    #[error("mount point {0} does not exist or is not a directory (create it first)")]
    BadMountPoint(String),
    #[error("mount point {0} is already in use by another mount")]
    MountPointBusy(String),
    #[error("the export process for {volume} did not come up: {log}")]
    ExportFailed { volume: String, log: String },
    #[error("the volume's file did not appear within {0:?} (is /dev/fuse available?)")]
    FuseTimeout(Duration),
    #[error("{mountpoint} is busy: a process still uses it (see `fuser -vm {mountpoint}`); stop it, then detach again")]
    Busy { mountpoint: String },
    #[error("attach record {0} is corrupt: {1}")]
    CorruptRecord(String, String),
    #[error("{volume} is attached without a block device; cannot limit its reads")]
    NoBlockDevice { volume: String },

    // --- read limits
    #[error(
        "no kernel IO controller to limit reads: {detail}; mount one, or clone without --read-iops"
    )]
    NoIoController { detail: String },
    #[error("--read-iops must be at least 1 (without a limit, leave the option out)")]
    ZeroIops,
    #[error("{0} is not a block device; cannot limit reads on it")]
    NotBlockDevice(String),

    // --- servers
    #[error("{name}: not started, a step before its first instruction failed")]
    BeforeRun {
        name: String,
        #[source]
        source: BoxError,
    },
    #[error("{name}: not started, adding its server to the read limit failed")]
    JoinLimit {
        name: String,
        #[source]
        source: Box<Error>,
    },
    #[error("port {0} is in use on 127.0.0.1; pick another with --port or leave it out")]
    PortInUse(u16),
    #[error("page sharing is unavailable: {0}")]
    SharingUnavailable(String),
    #[error("server {name} (pid {pid}) has not exited; try again once it has")]
    StillRunning { name: String, pid: i32 },
    #[error(transparent)]
    Db(#[from] dbinstance::Error),
    #[error(transparent)]
    Volume(lazyvol::Error),
    #[error("page table service")]
    PageTable(#[from] pagetable::Error),

    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its sources, joined by ": ", each said once.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

impl Error {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}
