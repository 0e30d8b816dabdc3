//! Connections and the small SQL helpers everything else is built from.

use std::time::Duration;

use mysql::prelude::{FromValue, Queryable};
use mysql::{Conn, OptsBuilder};

use crate::config::InstanceConfig;
use crate::error::{Error, Result};
use crate::gtid::GtidPos;
use crate::instance::Instance;

/// root over the instance's Unix socket (unix_socket authentication).
pub(crate) fn connect_socket(cfg: &InstanceConfig) -> Result<Conn> {
    connect_socket_opts(cfg, None)
}

/// As [`connect_socket`], with read/write timeouts so a hung (e.g. stopped) server
/// cannot block a readiness probe past its deadline.
pub(crate) fn connect_socket_opts(
    cfg: &InstanceConfig,
    io_timeout: Option<Duration>,
) -> Result<Conn> {
    let opts = OptsBuilder::new()
        .socket(Some(cfg.socket_path().to_string_lossy().into_owned()))
        .user(Some("root"))
        .prefer_socket(true)
        .read_timeout(io_timeout)
        .write_timeout(io_timeout);
    Conn::new(opts).map_err(|e| read_error(&cfg.name, "connect over socket", e))
}

/// How long a status read (replication state, GTID positions) may wait for the server:
/// a stopped (SIGSTOP) or wedged server then gives an error naming it instead of
/// hanging `dbfork status` or a catch-up wait forever.
pub const STATUS_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A statement's error; a read or write that timed out says the server did not answer.
pub(crate) fn read_error(name: &str, what: &str, e: mysql::Error) -> Error {
    if timed_out(&e) {
        Error::Unresponsive {
            name: name.to_string(),
            what: what.to_string(),
        }
    } else {
        Error::sql(name, what, e)
    }
}

/// Whether a client error is the socket read/write timing out.
fn timed_out(e: &mysql::Error) -> bool {
    use std::error::Error as _;
    // A socket timeout is EAGAIN on this platform, TimedOut elsewhere.
    let io_timeout = |io: &std::io::Error| {
        matches!(
            io.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    match e {
        mysql::Error::IoError(io) => io_timeout(io),
        // The packet codec's error wraps the socket's (its type is not exported).
        mysql::Error::CodecError(c) => c
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(io_timeout),
        mysql::Error::DriverError(mysql::DriverError::ConnectTimeout) => true,
        _ => false,
    }
}

pub(crate) fn ping(conn: &mut Conn) -> bool {
    conn.query_first::<u8, _>("SELECT 1")
        .is_ok_and(|v| v == Some(1))
}

/// First column of the first row; `None` for no row or SQL NULL.
pub fn scalar<T: FromValue>(conn: &mut Conn, name: &str, sql: &str) -> Result<Option<T>> {
    let v: Option<Option<T>> = conn
        .query_first(sql)
        .map_err(|e| read_error(name, sql, e))?;
    Ok(v.flatten())
}

/// Runs statements whose results are not needed.
pub fn exec(conn: &mut Conn, name: &str, sql: &str) -> Result<()> {
    conn.query_drop(sql).map_err(|e| read_error(name, sql, e))
}

/// Reads a GTID position variable such as `@@gtid_binlog_pos`.
pub fn gtid_var(conn: &mut Conn, name: &str, var: &str) -> Result<GtidPos> {
    let text: Option<String> = scalar(conn, name, &format!("SELECT @@GLOBAL.{var}"))?;
    GtidPos::parse(text.as_deref().unwrap_or(""))
}

/// Quotes a string literal for statements that take no placeholders (CHANGE MASTER).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Quotes an identifier (schema or table name).
pub fn quote_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

impl Instance {
    /// A new root session over the socket.
    pub fn conn(&self) -> Result<Conn> {
        connect_socket(self.config())
    }

    /// A root session whose reads and writes give up after `timeout` (for status
    /// reads; long statements such as CHECKSUM TABLE use [`Instance::conn`]).
    pub fn conn_bounded(&self, timeout: Duration) -> Result<Conn> {
        connect_socket_opts(self.config(), Some(timeout))
    }

    /// A session as `user` over TCP, as a replica or remote client would connect.
    pub fn conn_tcp(&self, user: &str, password: &str) -> Result<Conn> {
        let cfg = self.config();
        let opts = OptsBuilder::new()
            .ip_or_hostname(Some(cfg.bind_address.clone()))
            .tcp_port(cfg.port)
            .user(Some(user))
            .pass(Some(password))
            .prefer_socket(false);
        Conn::new(opts).map_err(|e| Error::sql(&cfg.name, format!("connect over TCP as {user}"), e))
    }

    pub fn query_scalar<T: FromValue>(&self, sql: &str) -> Result<Option<T>> {
        scalar(&mut self.conn()?, self.name(), sql)
    }

    pub fn exec(&self, sql: &str) -> Result<()> {
        exec(&mut self.conn()?, self.name(), sql)
    }

    pub fn gtid_binlog_pos(&self) -> Result<GtidPos> {
        gtid_var(&mut self.conn()?, self.name(), "gtid_binlog_pos")
    }

    pub fn gtid_current_pos(&self) -> Result<GtidPos> {
        gtid_var(&mut self.conn()?, self.name(), "gtid_current_pos")
    }

    pub fn gtid_slave_pos(&self) -> Result<GtidPos> {
        gtid_var(&mut self.conn()?, self.name(), "gtid_slave_pos")
    }

    /// Whether the server writes a binary log (a replication source must).
    pub fn has_binlog(&self) -> Result<bool> {
        let v: Option<i64> = self.query_scalar("SELECT @@GLOBAL.log_bin")?;
        Ok(v == Some(1))
    }

    /// `Err(NoBinlog)` unless the server can feed replicas.
    pub fn require_binlog(&self) -> Result<()> {
        if self.has_binlog()? {
            Ok(())
        } else {
            Err(Error::NoBinlog(self.name().to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("a'b\\c"), "'a\\'b\\\\c'");
        assert_eq!(quote_ident("we`ird"), "`we``ird`");
    }
}
