//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while managing a server instance.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid instance config: {0}")]
    InvalidConfig(String),

    #[error("port {port} on {addr} is already in use; pick another port or stop whatever holds it{detail}")]
    PortInUse {
        addr: String,
        port: u16,
        /// Extra context, e.g. the server's own log line when the bind failed at start.
        detail: String,
    },

    #[error("datadir {} is in use by live process {pid}", datadir.display())]
    DatadirInUse { datadir: PathBuf, pid: i32 },

    #[error("datadir {} is not empty; refusing to initialise over existing data", .0.display())]
    DatadirNotEmpty(PathBuf),

    #[error("datadir {} holds no initialised database (no ibdata1/mysql); run init first", .0.display())]
    DatadirNotInitialised(PathBuf),

    #[error("{tool} not found or not executable; install the Debian package `{package}`")]
    ToolMissing { tool: String, package: &'static str },

    #[error(
        "mariadb-backup waited {secs} s to start its copy and gave up: sessions of the \
         server held LOCK TABLES (or another backup ran) all that time. End them (SHOW \
         PROCESSLIST lists them) and adopt again, or let it wait longer with --lock-wait \
         SECONDS"
    )]
    BackupLockWait { secs: u64 },

    #[error("{what} failed ({status}); output tail:\n{output_tail}")]
    CommandFailed {
        what: String,
        status: String,
        output_tail: String,
    },

    #[error("server {name} exited during startup ({status}); error log tail:\n{log_tail}")]
    StartupExited {
        name: String,
        status: String,
        log_tail: String,
    },

    #[error(
        "server {name} did not accept connections within {secs}s and was stopped; error log tail:\n{log_tail}"
    )]
    StartupTimeout {
        name: String,
        secs: u64,
        log_tail: String,
    },

    #[error("server {name} (pid {pid}) did not exit within {secs}s")]
    StopTimeout { name: String, pid: i32, secs: u64 },

    #[error(
        "server {name} did not answer {what} in time: is it stopped (SIGSTOP), \
         swapping or wedged? Check its process state and error log"
    )]
    Unresponsive { name: String, what: String },
    #[error("server {0} is not running")]
    NotRunning(String),

    #[error("server {0} is already running")]
    AlreadyRunning(String),

    #[error("I/O on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("SQL on {name}: {context}")]
    Sql {
        name: String,
        context: String,
        #[source]
        source: mysql::Error,
    },

    #[error("unexpected result from {name}: {detail}")]
    UnexpectedResult { name: String, detail: String },

    #[error("server {0} has no binary log (log_bin=OFF); it cannot be a replication source")]
    NoBinlog(String),

    #[error("bad GTID position {text:?}: {reason}")]
    BadGtid { text: String, reason: String },

    #[error("replication on {name} is broken: {detail}")]
    ReplicationBroken { name: String, detail: String },

    #[error("replica {name} did not catch up within {secs}s: replica gtid_slave_pos={replica_pos:?}, source gtid_binlog_pos={source_pos:?}")]
    CatchUpTimeout {
        name: String,
        secs: u64,
        replica_pos: String,
        source_pos: String,
    },

    #[error("timed out after {secs}s waiting for {what}")]
    Timeout { what: String, secs: u64 },

    #[error("malformed buffer pool dump {} line {line}: {reason}", path.display())]
    BadBufferPoolDump {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    #[error("FS_IOC_FIEMAP on {}: {source}", path.display())]
    Fiemap {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("could not parse {what}: {detail}")]
    Parse { what: String, detail: String },
}

/// Crate-wide result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path` (also for the crates that work on instances beside
    /// this one, such as the native clone).
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sql(name: &str, context: impl Into<String>, source: mysql::Error) -> Self {
        Error::Sql {
            name: name.to_string(),
            context: context.into(),
            source,
        }
    }
}
