//! What the experiments and the tests of the product crates share, kept out of the
//! product crates: instances in temp dirs for tests and benches (`testing`), the
//! DBMS-native replica path measured as the baseline (`native_clone`), and the
//! driver of the `dbfork` CLI the experiments run (`dbfork`), the slow-disk model of
//! GB-scale runs (`io_model`).
//! See README.md for what this crate owns and what it does not.

pub mod dbfork;
pub mod io_model;
pub mod native_clone;
pub mod testing;

pub use dbfork::{CliError, Dbfork};
pub use native_clone::{native_clone, NativeClone, NativeCloneTimings};
