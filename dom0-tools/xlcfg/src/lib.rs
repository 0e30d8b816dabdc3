//! xl domain configuration files (`xl.cfg(5)`), as dbfork reads a source domU's and
//! writes a replica's: `KEY = VALUE` settings (strings, numbers, lists of them),
//! comments, `+=` appends. Parsing keeps every line's text, so a file written back
//! after edits is the original file but the settings that were changed: unknown keys,
//! comments and order survive (`config`). `disk` and `vif` read and edit the entries of
//! those lists (`xl-disk-configuration(5)`, `xl-network-configuration(5)`); `replica`
//! derives a replica's config from its source's; `info` reads what `xl info` says of
//! the hypervisor's boot options.

pub mod config;
pub mod disk;
pub mod error;
pub mod info;
pub mod replica;
pub mod value;
pub mod vif;

pub use config::XlConfig;
pub use error::{Error, Result};
pub use value::Value;
