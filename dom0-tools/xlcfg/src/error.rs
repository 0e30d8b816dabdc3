//! Errors of this crate: where a file is malformed (line and column), and why a config
//! cannot become a replica's (what and how to fix it).

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("line {line}, column {column}: {what}")]
    Syntax {
        line: usize,
        column: usize,
        what: String,
    },
    #[error("{key}: {what}")]
    Entry { key: String, what: String },
    #[error("{what}: {fix}")]
    Unsupported { what: String, fix: String },
}

pub type Result<T> = std::result::Result<T, Error>;
