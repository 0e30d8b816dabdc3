//! `dbfork-agent`: a preload for mariadbd that knows the identity of every InnoDB
//! page read and shares clean pages between the instances of a family. See README.md.

pub mod agent;
pub mod clone_lsn;
pub mod config;
pub mod directory;
pub mod error;
pub mod fault;
pub mod fdtable;
pub mod frame_store;
mod futex;
pub mod grant;
pub mod page;
pub mod pagemap;
pub mod pool;
pub mod scan;
pub mod share;
pub mod stats;
pub mod unshare;

#[cfg(all(feature = "preload", not(test)))]
mod hooks;

pub use error::{AgentError, Result};
