//! The one error type of the `pagetable` crate.

use crate::ids::{DomainId, FamilyId, Frame};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} does not exist")]
    UnknownFamily(FamilyId),
    #[error("{0} already exists")]
    FamilyExists(FamilyId),
    #[error("{0} is not a member of any family")]
    UnknownDomain(DomainId),
    #[error("{domain} is not a member of {family}")]
    NotInFamily { domain: DomainId, family: FamilyId },
    #[error("{domain} is already a member of {family}")]
    AlreadyInFamily { domain: DomainId, family: FamilyId },
    #[error("{domain} holds {quota} entries, its quota; register fewer pages or raise --quota")]
    QuotaExceeded { domain: DomainId, quota: usize },
    #[error("the page table of {family} is full (2^28 entries in one of its 16 shards)")]
    TableFull { family: FamilyId },
    #[error("{key:?} already has {max} frames registered in its family; invalidate some first")]
    PageCrowded {
        key: crate::ids::PageKey,
        max: usize,
    },
    #[error("page size {0} is not a power of two between 512 and 65536")]
    InvalidPageSize(u32),
    #[error("frame {0:?} is out of the representable range (offsets and gfns below 2^58; grants: domids below 2^15, references below 2^28)")]
    FrameOutOfRange(Frame),
    #[error("{domain} registered {frame:?}, a grant it did not issue (it is Xen domain {caller:?}): a domain registers only its own grants")]
    ForeignGrant {
        domain: DomainId,
        frame: Frame,
        caller: Option<u16>,
    },
    #[error("protocol: {0}")]
    Protocol(#[from] crate::wire::DecodeError),
    #[error("daemon refused the request: {0}")]
    Remote(crate::wire::RemoteError),
    #[error("i/o on {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not connected to the daemon (call reconnect)")]
    NotConnected,
    #[error("daemon sent an unexpected reply: {0}")]
    UnexpectedReply(String),
    #[error("admin request failed: {0}")]
    Admin(String),
    #[error("admin message is not valid JSON")]
    AdminJson(#[source] serde_json::Error),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
