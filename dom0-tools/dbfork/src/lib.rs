//! The `dbfork` library: what the CLI does, so tests and other tools can call it.
//!
//! Orchestration, the same for every substrate: `source` (create), `clone` (the named
//! steps of a fork), `lifecycle` (start, stop, restart), `destroy`, `status`, `sharing` (who shares with whom, the
//! warm-set offer), over `ctx` (the store and its substrate) and `registry` (the
//! instance records). The substrate itself (local processes today, Xen domUs later)
//! is the `substrate` crate's. Volume plane: `volumes` (verbs through a volume's
//! export process), `control` (its control socket). Data plane: `export` (NBD serving
//! of one volume).

pub mod adopt;
pub mod clone;
pub mod control;
pub mod ctx;
pub mod destroy;
pub mod error;
pub mod export;
pub mod lifecycle;
pub mod registry;
pub mod sharing;
pub mod source;
pub mod status;
pub mod step;
pub mod takeover;
pub mod undo;
pub mod units;
pub mod volumes;

pub use error::{Error, Result};
