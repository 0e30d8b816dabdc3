//! Drives sysbench's OLTP loads against a MariaDB instance and parses what sysbench
//! prints: the load of `dbfork demo`, of the tests and of the experiments.
//! See README.md for what this crate owns and what it does not.

pub mod sysbench;

pub use sysbench::{IntervalSample, RunningSysbench, SysbenchOptions, SysbenchResult};
