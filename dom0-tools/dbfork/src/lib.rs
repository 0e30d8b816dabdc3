//! The `dbfork` library: everything the CLI does, so tests and other tools can call it.
//!
//! Control plane: `volume_cmd` (the `dbfork volume` verbs), `control` (the control
//! socket of a running export). Data plane: `export` (NBD serving of one volume).
//! Host plumbing: `attach` (nbdfuse + loop + mount), `tools` (running host commands).

pub mod attach;
pub mod cli;
pub mod control;
pub mod demo;
pub mod export;
pub mod instance_cmd;
pub mod io_limit;
pub mod lifecycle;
pub mod orphans;
pub mod output;
pub mod paths;
pub mod prefetch;
pub mod registry;
pub mod sharing;
pub mod tools;
pub mod undo;
pub mod units;
pub mod volume_cmd;
