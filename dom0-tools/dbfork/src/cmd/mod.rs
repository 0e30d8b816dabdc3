//! The command line: parsing (`cli`), output (`output`) and the verbs.

pub mod adopt;
pub mod cli;
pub mod demo;
pub mod instance;
pub mod output;
pub mod volume;
