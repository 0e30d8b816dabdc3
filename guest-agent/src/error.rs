//! The one error type of this crate. Every error ends in a fallback to the real call.

use thiserror::Error;

use crate::page::PageError;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("page check failed")]
    Page(#[from] PageError),
    #[error("page table service: {what}")]
    PageTable {
        what: &'static str,
        #[source]
        source: pagetable::Error,
    },
    #[error("environment variable {var}: {msg}")]
    Config { var: &'static str, msg: String },
    #[error("the pool is full ({slots} pages, DBFORK_POOL_MAX_BYTES); new pages are not pooled")]
    PoolFull { slots: u64 },
    #[error(
        "the frame store's record of {frame:?} is missing or does not match the directory entry"
    )]
    RecordMismatch { frame: pagetable::Frame },
    #[error("shared frame")]
    Unshare(#[from] crate::unshare::UnshareError),
    #[error("frame {0:?} does not belong to this frame store")]
    ForeignFrame(pagetable::Frame),
}

impl AgentError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io {
            what: what.into(),
            source,
        }
    }

    pub fn last_os(what: impl Into<String>) -> Self {
        Self::io(what, std::io::Error::last_os_error())
    }
}

pub type Result<T> = std::result::Result<T, AgentError>;
