//! `pagetable`: which instance of a family holds which InnoDB page in memory.
//!
//! - [`PageTable`]: the in-process table (what `pagetabled` serves).
//! - [`wire`]: the binary data-plane protocol.
//! - [`transport`]: how connections reach the daemon (Unix socket now, Xen vchan planned).
//! - [`connector`]: how a client opens its connection (the client side of the same seam).
//! - [`client::Client`]: the blocking client the guest agent uses.
//! - [`admin`]: the JSON-lines control protocol of the admin socket and its client.

pub mod admin;
pub mod client;
pub mod connector;
mod error;
mod ids;
mod packed;
mod stats;
mod store;
mod table;
pub mod transport;
pub mod wire;

pub use error::{Error, Result};
pub use ids::{DomainId, Entry, FamilyId, Frame, PageKey, Registration};
pub use stats::FamilyStats;
pub use store::MAX_FRAMES_PER_PAGE;
pub use table::{DomainHandle, PageTable, TableConfig};
