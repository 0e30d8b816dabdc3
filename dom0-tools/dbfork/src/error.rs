//! The dbfork library's one error type. Every error keeps what caused it as its
//! source, so the CLI prints the whole chain ("clone r1: replica start: ...: port
//! in use") and scripts get it in `--json`.

use crate::step::Step;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- names and the store
    #[error("invalid name {0:?}: use 1-48 of A-Z a-z 0-9 - _, not starting with '-'")]
    InvalidName(String),
    #[error("an instance named {0} already exists (see `dbfork list`)")]
    InstanceExists(String),
    #[error("a volume named {0} already exists in the store (dbfork volume list)")]
    VolumeExists(String),
    #[error("opening the volume store {}", dir.display())]
    Store {
        dir: PathBuf,
        #[source]
        source: lazyvol::Error,
    },
    #[error("not enough disk in {}: needs up to {needed}, {free} free", dir.display())]
    NoSpace {
        dir: PathBuf,
        needed: String,
        free: String,
    },

    // ---- instance records
    #[error("no database instance named {0:?} (see `dbfork list`)")]
    UnknownInstance(String),
    #[error("instance record {}", path.display())]
    RecordIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("instance record {} is corrupt", path.display())]
    RecordCorrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    // ---- instance verbs
    #[error("the server at {} cannot be adopted as {name}:\n  - {}", socket.display(), refusals.join("\n  - "))]
    AdoptRefused {
        name: String,
        socket: PathBuf,
        refusals: Vec<String>,
    },
    #[error("adopting {name}: {what}")]
    Adopt {
        name: String,
        what: String,
        #[source]
        source: Box<Error>,
    },
    #[error("{0}")]
    AdoptUsage(String),
    #[error("`{command}` failed ({status}): {output}")]
    ServerControl {
        command: String,
        status: String,
        output: String,
    },
    #[error("{0}")]
    ServerWait(String),
    #[error("the server did not answer at {} within {secs} s after {after}", socket.display())]
    ServerSilent {
        socket: PathBuf,
        secs: u64,
        after: String,
        #[source]
        source: Box<dbinstance::Error>,
    },
    #[error("{0} was not taken over: release gives back a server `dbfork source adopt --take-over` took (`dbfork destroy {0}` removes an instance)")]
    NotTakenOver(String),
    #[error("{0} is your own server, taken over: its data lives on its dbfork volume only, which destroy would delete; `dbfork source release {0}` gives it back to its datadir")]
    TakenOverNotDestroyed(String),
    #[error("{name}'s datadir is back at {} but the server did not start the way you run it; start it yourself (dbfork's volume {name} holds the same data: `dbfork start {name}` runs it under dbfork again)", datadir.display())]
    Released {
        name: String,
        datadir: PathBuf,
        #[source]
        source: Box<Error>,
    },
    #[error("cancelled (a signal: Ctrl-C, SIGTERM or SIGHUP) while {0}; what this run made was taken back")]
    Cancelled(String),
    #[error("catching up with the server: {0} (see SHOW SLAVE STATUS on the base)")]
    CatchUp(String),
    #[error("{0} is not running; start it first (its datadir must be live to clone)")]
    NotRunning(String),
    #[error("a Xen source's database disk is a block volume: leave --volume-engine out (or say lazy); reflink volumes are directories on dom0's file system, which a domU cannot mount")]
    ReflinkNotADisk,
    #[error("{name} cannot be a replication source")]
    NotASource {
        name: String,
        #[source]
        source: Box<substrate::Error>,
    },
    #[error("{name} runs, but {problems}; bring it back with `dbfork restart {name}`")]
    Unhealthy { name: String, problems: String },
    #[error("{name} runs with innodb_flush_log_at_trx_commit=0: its commits reach the redo log file up to a second late, so a snapshot could miss transactions its GTID position says it has; run SET GLOBAL innodb_flush_log_at_trx_commit=1 on {name} (2 also works) and clone again")]
    LazyRedo { name: String },
    #[error("{name} has replicas ({replicas}); destroy them first or pass --with-replicas")]
    HasReplicas { name: String, replicas: String },
    #[error("{instance}: {step}")]
    Step {
        instance: String,
        step: Step,
        #[source]
        source: Box<Error>,
    },
    #[error("{instance}: {what}")]
    Doing {
        instance: String,
        what: &'static str,
        #[source]
        source: Box<Error>,
    },
    #[error("the source's agent did not offer its warm set within {secs} s (see its error log)")]
    ScanTimeout { secs: u64 },

    // ---- volumes and their export processes
    #[error("{0} is attached or exported; detach it first (dbfork volume detach {0})")]
    VolumeInUse(String),
    #[error("range {offset}+{length} is outside {volume} (size {size})")]
    RangeOutside {
        volume: String,
        offset: u64,
        length: u64,
        size: u64,
    },
    #[error("hydration of {volume} made no progress for {secs} s (check its export: dbfork volume status {volume})")]
    HydrationStalled { volume: String, secs: u64 },
    #[error("no export process answers on {} (is the volume exported or attached?)", path.display())]
    NoExport {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed reply from the export process")]
    BadReply(#[source] serde_json::Error),
    #[error("the export process refused: {0}")]
    Refused(String),
    #[error("exporting over NBD")]
    Nbd(#[from] nbd_export::NbdError),
    #[error("final flush of {volume} failed")]
    Flush {
        volume: String,
        #[source]
        source: std::io::Error,
    },

    // ---- below the orchestration
    // Boxed: these carry database driver errors, large beside every other variant.
    #[error(transparent)]
    Substrate(Box<substrate::Error>),
    #[error(transparent)]
    Volume(#[from] lazyvol::Error),
    #[error(transparent)]
    Db(Box<dbinstance::Error>),
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// This error as the cause of `what` failing for `instance`.
    pub(crate) fn doing(self, instance: &str, what: &'static str) -> Error {
        Error::Doing {
            instance: instance.to_string(),
            what,
            source: Box::new(self),
        }
    }
}

impl From<substrate::Error> for Error {
    fn from(e: substrate::Error) -> Self {
        Error::Substrate(Box::new(e))
    }
}

impl From<dbinstance::Error> for Error {
    fn from(e: dbinstance::Error) -> Self {
        Error::Db(Box::new(e))
    }
}

impl Error {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }

    /// The chain as one line, for a record field or a log line that keeps a reason.
    pub fn chain(&self) -> String {
        chain(self)
    }
}

pub use substrate::error::chain;
