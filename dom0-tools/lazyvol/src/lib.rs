//! Planned: see the README of this crate.
