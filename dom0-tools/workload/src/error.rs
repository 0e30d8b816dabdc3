//! The crate's one error type.

/// What can go wrong while driving sysbench.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{tool} not found or not executable; install the Debian package `{package}`")]
    ToolMissing { tool: String, package: &'static str },

    #[error("{what} failed ({status}); output tail:\n{output_tail}")]
    CommandFailed {
        what: String,
        status: String,
        output_tail: String,
    },

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("could not parse sysbench output: {detail}")]
    Parse { detail: String },

    /// The SQL side: creating the database on the instance.
    #[error(transparent)]
    Instance(#[from] dbinstance::Error),
}

/// Crate-wide result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
