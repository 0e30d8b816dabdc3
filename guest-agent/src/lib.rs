//! Planned (issue 5): see the README of this crate.
