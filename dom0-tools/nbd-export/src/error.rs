//! The crate's one error type.

use std::io;

/// Everything that can go wrong in the NBD server, its parsers and its test client.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// A socket or file operation failed; `context` says which.
    #[error("{context}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    /// Opening or sizing an image file for `FileDevice` failed.
    #[error("{op} {}", path.display())]
    Image {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    /// Binding a listening socket failed.
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// A magic number on the wire was not the one the protocol requires.
    #[error("bad {what} magic {got:#x}")]
    BadMagic { what: &'static str, got: u64 },
    /// The client set handshake flags this server does not know.
    #[error("unknown client handshake flags {0:#x}")]
    UnknownClientFlags(u32),
    /// An option's data is larger than any option this server accepts.
    #[error("option {option} carries {len} bytes, more than the {max} allowed")]
    OptionTooLarge { option: u32, len: u32, max: u32 },
    /// A message is shorter or longer than its own length fields say.
    #[error("malformed {what}")]
    Malformed { what: &'static str },
    /// An export name is not acceptable (empty, too long, contains NUL).
    #[error("invalid export name {name:?}: {reason}")]
    InvalidExportName { name: String, reason: &'static str },
    /// Two exports with one name.
    #[error("export {0:?} already exists")]
    DuplicateExport(String),
    /// A listen address string that is neither `unix:PATH` nor `tcp:[HOST:]PORT`.
    #[error("invalid listen address {spec:?}: {reason}")]
    InvalidListenAddr { spec: String, reason: &'static str },
    /// A Unix socket path is occupied by something that is not a socket.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    SocketPathOccupied(String),
    /// The server answered an option with an error reply (test client).
    #[error("server refused option {option} with reply {reply:#x}")]
    OptionRefused { option: u32, reply: u32 },
    /// The server answered a command with an NBD error (test client).
    #[error("server returned NBD error {errno} for command {command}")]
    CommandFailed { command: u16, errno: u32 },
}

impl NbdError {
    pub(crate) fn io(context: &'static str) -> impl FnOnce(io::Error) -> NbdError {
        move |source| NbdError::Io { context, source }
    }
}
