//! What the experiments and the tests of the product crates share, kept out of the
//! product crates: instances in temp dirs for tests and benches (`testing`), the
//! DBMS-native replica path measured as the baseline (`native_clone`).
//! See README.md for what this crate owns and what it does not.

pub mod native_clone;
pub mod testing;

pub use native_clone::{native_clone, NativeClone, NativeCloneTimings};
